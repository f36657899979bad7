"""End-to-end: readiness from real heartbeats, the separate health app,
GET /health, /metrics summed across processes, crash loops.

Processes are frozen with SIGSTOP (their heartbeat goes stale) and thawed
with SIGCONT; every check polls for the condition with generous bounds.
"""

import os
import re
import signal
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgpg  # noqa: E402
import zgtest  # noqa: E402
from zgtest import chat_body, wait_until  # noqa: E402

#  Heartbeats every 200 ms: stale after 600 ms, so freezes show quickly
FAST = {"heartbeat_ms": 200}


def readiness(port, timeout=5):
    return zgtest.http_request(port, "GET", "/health/readiness", timeout=timeout)


def wait_readiness(port, status, part=None, timeout=zgtest.POLL_TIMEOUT):
    """Polls until readiness answers status (and its body holds part)."""
    seen = []

    def check():
        try:
            resp = readiness(port)
        except OSError as exc:
            seen[:] = [exc]
            return False
        seen[:] = [resp]
        return resp.status == status and (part is None or part in resp.text())
    try:
        wait_until(check, timeout, interval=0.1)
    except AssertionError:
        raise AssertionError("readiness never answered %d%s; last: %r"
                             % (status, " with %r" % part if part else "", seen))
    return seen[0]


def with_id(entry, deployment_id):
    entry["model_info"] = {"id": deployment_id}
    return entry


def metric(text, name, **labels):
    """The value of one sample of the Prometheus text, or None."""
    for line in text.splitlines():
        found = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not found or found.group(1) != name:
            continue
        sample_labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                        found.group(2) or ""))
        if sample_labels == {k: str(v) for k, v in labels.items()}:
            return float(found.group(3))
    return None


class HealthAppTest(zgtest.GatewayTestCase):
    """One zgate with SEPARATE_HEALTH_APP=1, a good and an unreachable
    deployment."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.health_port = zgtest.free_port()
        config = zgtest.make_config(
            [with_id(zgtest.deployment("gpt-4o", cls.up.api_base), "good-1"),
             with_id(zgtest.deployment("down", "http://127.0.0.1:%d/v1" % zgtest.closed_port()),
                     "down-1")],
            zgate=FAST)
        cls.gw = cls.gateway(config, num_workers=2,
                             env={"SEPARATE_HEALTH_APP": "1",
                                  "SEPARATE_HEALTH_PORT": str(cls.health_port)})
        wait_readiness(cls.health_port, 200)

    def tearDown(self):
        #  Whatever a test froze is running again for the next one
        for role in ("frontend", "worker", "health"):
            for pid in self.gw.children(role):
                os.kill(pid, signal.SIGCONT)

    def test_readiness_on_both_ports(self):
        for port in (self.gw.port, self.health_port):
            body = wait_readiness(port, 200, '"workers_alive":2').json()
            self.assertEqual(body["status"], "healthy")
            self.assertIn("litellm_version", body)
            self.assertEqual(body["checks"]["router"], "healthy")
            self.assertEqual(body["checks"]["frontend"], "healthy")
            self.assertEqual(body["checks"]["health"], "healthy")
            self.assertEqual(body["checks"]["workers_alive"], 2)
            for path in ("/health/liveliness", "/health/liveness"):
                resp = zgtest.http_request(port, "GET", path)
                self.assertEqual((resp.status, resp.json()), (200, "I'm alive!"))

    def test_no_worker_alive_is_unready(self):
        workers = self.gw.children("worker")
        self.assertEqual(len(workers), 2)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        resp = wait_readiness(self.gw.port, 503, "no worker alive")
        self.assertIn("Service Unhealthy", resp.json()["detail"])
        wait_readiness(self.health_port, 503, "no worker alive")
        #  One is enough
        os.kill(workers[0], signal.SIGCONT)
        wait_readiness(self.gw.port, 200)
        os.kill(workers[1], signal.SIGCONT)
        body = wait_readiness(self.health_port, 200, '"workers_alive":2').json()
        self.assertEqual(body["status"], "healthy")

    def test_health_app_answers_while_frontend_is_stopped(self):
        frontend = self.gw.children("frontend")
        self.assertEqual(len(frontend), 1)
        os.kill(frontend[0], signal.SIGSTOP)
        resp = wait_readiness(self.health_port, 503, "frontend not heartbeating")
        self.assertEqual(resp.json()["checks"]["frontend"], "not heartbeating")
        resp = zgtest.http_request(self.health_port, "GET", "/health/liveliness")
        self.assertEqual(resp.status, 200)
        #  The main port hangs: the kernel still accepts, nobody answers
        with self.assertRaises(OSError):
            zgtest.http_request(self.gw.port, "GET", "/health/liveliness", timeout=1)
        os.kill(frontend[0], signal.SIGCONT)
        wait_readiness(self.health_port, 200)
        wait_readiness(self.gw.port, 200)

    def test_get_health_checks_every_deployment(self):
        resp = self.gw.get("/health", key=None)
        self.assertErrorShape(resp, 401)
        self.up.reset_stats()
        resp = self.gw.get("/health")
        self.assertEqual(resp.status, 200, resp)
        body = resp.json()
        self.assertEqual((body["healthy_count"], body["unhealthy_count"]), (1, 1), body)
        healthy, unhealthy = body["healthy_endpoints"][0], body["unhealthy_endpoints"][0]
        self.assertEqual((healthy["model_name"], healthy["model_id"]), ("gpt-4o", "good-1"))
        self.assertEqual(healthy["api_base"], self.up.api_base)
        self.assertEqual((unhealthy["model_name"], unhealthy["model_id"]), ("down", "down-1"))
        self.assertTrue(unhealthy["error"])
        self.assertNotIn(zgtest.UPSTREAM_KEY, resp.text())
        #  A real minimal request reached the good deployment
        self.assertEqual(self.up.stats()["requests"], 1)
        sent = self.up.last_request()
        self.assertEqual(sent["path"], "/v1/chat/completions")
        self.assertIn('"max_tokens":1', sent["body"])

    def test_metrics_are_public(self):
        resp = self.gw.request("GET", "/metrics")
        self.assertEqual(resp.status, 200)
        self.assertIn("text/plain", resp.headers.get("content-type", ""))
        self.assertEqual(metric(resp.text(), "zgate_workers_alive"), 2)
        self.assertEqual(metric(resp.text(), "litellm_deployment_state", litellm_model_name="gpt-4o",
                                model_id="good-1", api_base=self.up.api_base,
                                api_provider="openai"), 0)


class MetricsTest(zgtest.GatewayTestCase):
    """/metrics totals equal what was sent, across two workers."""

    N = 40
    M = 7

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        config = zgtest.make_config(
            [zgtest.deployment("gpt-4o", cls.up.api_base,
                               input_cost_per_token=0.001, output_cost_per_token=0.002)],
            litellm={"require_auth_for_metrics_endpoint": True})
        cls.gw = cls.gateway(config, num_workers=2)

    def test_totals(self):
        before = self.gw.get("/metrics").text()

        def send(i):
            if i < self.N:
                stream = i % 4 == 0
                if stream:
                    with self.gw.stream("/v1/chat/completions",
                                        chat_body(stream=True)) as s:
                        list(s.events())
                        return s.status
                return self.gw.post("/v1/chat/completions", chat_body()).status
            return self.gw.post("/v1/chat/completions",
                                chat_body(fake={"status": 500})).status
        statuses = zgtest.run_threads(self.N + self.M, send)
        self.assertEqual(sorted(statuses), [200] * self.N + [500] * self.M, statuses)

        self.assertErrorShape(self.gw.request("GET", "/metrics"), 401)
        resp = self.gw.get("/metrics")
        self.assertEqual(resp.status, 200)
        after = resp.text()

        def added(name, **labels):
            """What the requests of this test added"""
            return ((metric(after, name, **labels) or 0)
                    - (metric(before, name, **labels) or 0))
        group = {"requested_model": "gpt-4o"}
        self.assertEqual(added("litellm_proxy_total_requests_metric_total",
                              status_code="2xx", **group), self.N, after)
        self.assertEqual(added("litellm_proxy_total_requests_metric_total",
                              status_code="5xx", **group), self.M)
        self.assertEqual(added("litellm_proxy_failed_requests_metric_total",
                              status_code="5xx", **group), self.M)
        self.assertIsNone(metric(after, "litellm_proxy_failed_requests_metric_total",
                                 status_code="2xx", **group))
        #  The fake upstream's usage: 10 prompt tokens, 8 completion tokens
        self.assertEqual(added("litellm_input_tokens_metric_total", **group), 10 * self.N)
        self.assertEqual(added("litellm_output_tokens_metric_total", **group), 8 * self.N)
        self.assertEqual(added("litellm_total_tokens_metric_total", **group), 18 * self.N)
        self.assertAlmostEqual(added("litellm_spend_metric_total", **group),
                               self.N * (10 * 0.001 + 8 * 0.002), places=6)
        #  Latencies are of the successful calls, as the reference's
        self.assertEqual(added("litellm_request_total_latency_metric_count", **group), self.N)
        self.assertEqual(added("litellm_request_total_latency_metric_bucket",
                               le="+Inf", **group), self.N)
        self.assertEqual(added("litellm_overhead_latency_metric_count", **group), self.N)
        self.assertEqual(added("litellm_llm_api_latency_metric_count", **group), self.N)
        self.assertEqual(added("litellm_llm_api_time_to_first_token_metric_count",
                              **group), self.N // 4)
        self.assertEqual(metric(after, "litellm_in_flight_requests"), 0)
        self.assertEqual(metric(after, "zgate_router_queue_depth"), 0)
        self.assertEqual(metric(after, "zgate_workers_alive"), 2)

    def test_answer_headers(self):
        resp = self.gw.post("/v1/chat/completions", chat_body())
        self.assertEqual(resp.status, 200)
        for name in ("x-litellm-call-id", "x-litellm-model-id", "x-litellm-model-group",
                     "x-litellm-model-api-base", "x-litellm-version",
                     "x-litellm-response-duration-ms", "x-litellm-overhead-duration-ms",
                     "llm_provider-x-request-id"):
            self.assertIn(name, resp.headers, resp)
        self.assertEqual(resp.headers["x-litellm-attempted-retries"], "0")
        #  make_config's request_timeout
        self.assertEqual(float(resp.headers["x-litellm-timeout"]), 600)
        overhead = float(resp.headers["x-litellm-overhead-duration-ms"])
        self.assertLessEqual(overhead, float(resp.headers["x-litellm-response-duration-ms"]))


class SpendHeartbeatTest(zgtest.GatewayTestCase):
    """With a database, a frozen spend actor makes the gateway unready."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        url = cls.pg.create_database("health")
        config = zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)],
                                    general={"database_url": url}, zgate=FAST)
        cls.gw = cls.gateway(config, num_workers=1)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.pg.stop()

    def test_spend_actor_stale(self):
        body = wait_readiness(self.gw.port, 200, '"db":"connected"').json()
        self.assertEqual(body["checks"]["spend"], "healthy")
        spend = self.gw.children("spend")
        self.assertEqual(len(spend), 1)
        os.kill(spend[0], signal.SIGSTOP)
        try:
            resp = wait_readiness(self.gw.port, 503, "spend not heartbeating")
            self.assertEqual(resp.json()["checks"]["spend"], "not heartbeating")
        finally:
            os.kill(spend[0], signal.SIGCONT)
        wait_readiness(self.gw.port, 200)


class CrashLoopTest(zgtest.GatewayTestCase):
    """Crash loops: reported, or the end of zgate with a separate health app."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.config = zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)],
                                        zgate=FAST)

    def exited(self, gw, code):
        """gw ended on its own with code; it is no longer the class's to stop"""
        self.assertEqual(gw.proc.wait(), code, gw.describe())
        type(self)._gateways.remove(gw)
        self.assertEqual(gw.stop(), ["zgate exited with %d after SIGTERM" % code])
        self.assertEqual(gw.sanitizer_reports(), [])

    def kill_until(self, gw, role, done):
        """SIGKILL the role's process each time one runs, until done()."""
        killed = set()

        def step():
            if done():
                return True
            for pid in gw.children(role):
                if pid not in killed:
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
            return False
        wait_until(step, zgtest.POLL_TIMEOUT * 2, interval=0.05)
        return killed

    def test_worker_crash_loop_in_readiness_and_log(self):
        gw = self.gateway(self.config, num_workers=1, name="zgate-loop")
        killed = self.kill_until(gw, "worker", lambda: "crash-looping" in readiness(gw.port).text())
        self.assertGreaterEqual(len(killed), 5)
        resp = readiness(gw.port)
        self.assertEqual(resp.status, 503)
        self.assertIn("workers crash-looping", resp.json()["detail"])
        self.assertIn("worker processes are crash-looping", gw.output())
        text = gw.request("GET", "/metrics").text()
        self.assertEqual(metric(text, "zgate_crash_loop", role="worker"), 1)
        self.assertGreaterEqual(metric(text, "zgate_restarts_total", role="worker"), 5)

    def test_health_app_or_frontend_death_stops_zgate(self):
        for role in ("health", "frontend"):
            port = zgtest.free_port()
            gw = self.gateway(self.config, num_workers=1, name="zgate-%s-dies" % role,
                              env={"SEPARATE_HEALTH_APP": "1", "SEPARATE_HEALTH_PORT": str(port)})
            wait_readiness(port, 200)
            self.kill_until(gw, role, lambda: gw.proc.poll() is not None)
            self.exited(gw, 1)
            self.assertIn("with SEPARATE_HEALTH_APP=1 this stops zgate", gw.output())

    def test_busy_health_port_is_an_error(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        try:
            port = busy.getsockname()[1]
            gw = self.gateway(self.config, num_workers=1, name="zgate-busy", wait_ready=False,
                              env={"SEPARATE_HEALTH_APP": "1", "SEPARATE_HEALTH_PORT": str(port)})
            self.exited(gw, 1)
            self.assertIn("health app (SEPARATE_HEALTH_PORT): cannot listen on 127.0.0.1:%d"
                          % port, gw.output())
        finally:
            busy.close()


class DrainTest(zgtest.GatewayTestCase):
    """SIGTERM: readiness is 503 at once while a stream still runs."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.health_port = zgtest.free_port()
        config = zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)])
        cls.gw = cls.gateway(config, num_workers=1,
                             env={"SEPARATE_HEALTH_APP": "1",
                                  "SEPARATE_HEALTH_PORT": str(cls.health_port)})

    def test_readiness_503_while_draining(self):
        wait_readiness(self.health_port, 200)
        body = chat_body(stream=True, fake={"chunks": 20, "chunk_interval_ms": 200})
        with self.gw.stream("/v1/chat/completions", body) as stream:
            self.assertEqual(stream.status, 200)
            stream.next_event()
            os.kill(self.gw.pid, signal.SIGTERM)
            resp = wait_readiness(self.health_port, 503, "shutting down")
            self.assertEqual(resp.json()["status"], "shutting_down")
            events = [stream.next_event()] + list(stream.events())
            self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(self.gw.proc.wait(), 0)


if __name__ == "__main__":
    unittest.main()
