"""End-to-end: clients that go away, workers that die, many streams at once."""

import http.client
import json
import os
import signal
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402


class ClientDisconnectTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)]),
                             num_workers=1)

    def test_disconnect_mid_stream_cancels_upstream(self):
        before = self.up.stats()["client_disconnects"]
        body = chat_body(content="long stream", stream=True,
                         fake={"chunks": 50, "chunk_interval_ms": 100})
        stream = self.gw.stream("/chat/completions", body)
        try:
            self.assertEqual(stream.status, 200, stream.headers)
            for _ in range(3):
                event = stream.next_event()
                self.assertIsNotNone(event, "stream ended early")
                self.assertNotEqual(event, "[DONE]")
        finally:
            stream.abort()
        zgtest.wait_until(lambda: self.up.stats()["client_disconnects"] > before,
                          message="the upstream saw the gateway drop the stream")
        zgtest.wait_until(lambda: self.up.stats()["active"] == 0,
                          message="no upstream transfer left active")
        self.assertEqual(self.gw.post("/chat/completions", chat_body()).status, 200)

    def test_disconnect_while_waiting_cancels_upstream(self):
        self.up.reset_stats()
        sock = zgtest.send_and_abandon(
            self.gw.port, "/chat/completions",
            chat_body(content="slow answer", fake={"latency_ms": 5000}),
            headers=zgtest.auth_headers())
        try:
            zgtest.wait_until(lambda: self.up.stats()["active"] >= 1,
                              message="the request reached the upstream")
        finally:
            zgtest.abort_socket(sock)
        def ended():
            stats = self.up.stats()
            return stats if stats["client_disconnects"] + stats["completed"] >= 1 else None
        stats = zgtest.wait_until(ended, message="the upstream request ended")
        self.assertEqual(stats["client_disconnects"], 1,
                         "the upstream request was not cancelled: %r" % stats)
        self.assertEqual(stats["completed"], 0, stats)
        self.assertEqual(self.gw.post("/chat/completions", chat_body()).status, 200)


class WorkerCrashTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config(
            [zgtest.deployment("gpt-4o", cls.up.api_base)],
            zgate={"heartbeat_ms": 200}), num_workers=2)

    def test_worker_killed_with_requests_in_flight(self):
        workers = zgtest.wait_until(lambda: (lambda w: w if len(w) == 2 else None)(
            self.gw.children("worker")), message="two worker processes")
        self.up.reset_stats()

        def one(i):
            return self.gw.post("/chat/completions",
                                chat_body(content="in flight %d" % i, fake={"latency_ms": 3000}),
                                timeout=60)

        results = []
        runner = threading.Thread(target=lambda: results.extend(zgtest.run_threads(20, one)),
                                  daemon=True)
        runner.start()
        #  Each takes 3 s upstream: once 10 have arrived, both workers hold some.
        zgtest.wait_until(lambda: self.up.stats()["requests"] >= 10,
                          message="requests in flight at the upstream")
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        runner.join(150)
        self.assertFalse(runner.is_alive(), "in-flight requests did not all end")

        problems = []
        for i, resp in enumerate(results):
            if isinstance(resp, BaseException):
                problems.append("request %d: %r" % (i, resp))
            elif resp.status != 200:
                try:
                    self.assertErrorShape(resp, resp.status)
                except AssertionError as exc:
                    problems.append("request %d: %s" % (i, exc))
        self.assertFalse(problems, "\n".join(problems))

        #  The supervisor replaces the dead worker.
        zgtest.wait_until(
            lambda: (lambda w: len(w) == 2 and victim not in w)(self.gw.children("worker")),
            message="a new worker replaced the killed one")
        zgtest.wait_until(lambda: self.gw.request("GET", "/health/readiness").status == 200,
                          message="ready again")
        later = zgtest.run_threads(20, lambda i: self.gw.post(
            "/chat/completions", chat_body(content="after %d" % i), timeout=60))
        failed = [r for r in later if isinstance(r, BaseException) or r.status != 200]
        self.assertFalse(failed, "requests after the restart failed: %r" % failed)


    def test_worker_killed_during_streams(self):
        workers = zgtest.wait_until(lambda: (lambda w: w if len(w) == 2 else None)(
            self.gw.children("worker")), message="two worker processes")
        body = chat_body(content="long stream", stream=True,
                         fake={"chunks": 40, "chunk_interval_ms": 100})
        streams = [self.gw.stream("/chat/completions", body, timeout=60) for _ in range(6)]
        try:
            for stream in streams:
                self.assertEqual(stream.status, 200, stream.headers)
                self.assertIsNotNone(stream.next_event())
            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            outcomes = []
            for i, stream in enumerate(streams):
                try:
                    events = stream.events()
                except (OSError, http.client.HTTPException) as exc:
                    outcomes.append("stream %d broke: %r" % (i, exc))
                    continue
                if not events:
                    outcomes.append("stream %d ended without [DONE] or an error event" % i)
                elif events[-1] != "[DONE]" and not events[-1].startswith('{"error"'):
                    outcomes.append("stream %d ended with %r" % (i, events[-1][:200]))
                elif any(e.startswith('{"error"') for e in events):
                    error = json.loads([e for e in events if e.startswith('{"error"')][0])
                    if not all(k in error["error"] for k in ("message", "type", "param", "code")):
                        outcomes.append("stream %d: error event shape: %r" % (i, error))
            self.assertFalse(outcomes, "\n".join(outcomes))
        finally:
            for stream in streams:
                stream.abort()
        zgtest.wait_until(
            lambda: (lambda w: len(w) == 2 and victim not in w)(self.gw.children("worker")),
            message="a new worker replaced the killed one")
        zgtest.wait_until(lambda: self.gw.post("/chat/completions", chat_body()).status == 200,
                          message="a request succeeded after the restart")


class ActorRestartTest(zgtest.GatewayTestCase):
    """The supervisor restarts the frontend, whose process also runs the
    router as a thread; the listening socket outlives the frontend, and
    the workers register again with the new router."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config(
            [zgtest.deployment("gpt-4o", cls.up.api_base)],
            zgate={"heartbeat_ms": 200}), num_workers=1)

    def _kill_and_recover(self, role):
        old = zgtest.wait_until(lambda: self.gw.children(role), message="a %s process" % role)
        self.assertEqual(len(old), 1, old)
        os.kill(old[0], signal.SIGKILL)
        zgtest.wait_until(lambda: (lambda c: len(c) == 1 and old[0] not in c)(
            self.gw.children(role)), message="a new %s replaced the killed one" % role)
        zgtest.wait_until(
            lambda: self.gw.post("/chat/completions", chat_body(), timeout=10).status == 200,
            message="a request succeeded after the %s restart" % role)
        later = zgtest.run_threads(10, lambda i: self.gw.post("/chat/completions", chat_body()))
        failed = [r for r in later if isinstance(r, BaseException) or r.status != 200]
        self.assertFalse(failed, failed)

    def test_router_killed(self):
        #  The router is a thread of the frontend's process: killing that
        #  process kills the router too. The workers are not restarted:
        #  they must find the new router and register again, or no
        #  request could be answered.
        self.assertEqual(self.gw.children("router"), [], "the router runs inside the frontend")
        workers = zgtest.wait_until(lambda: self.gw.children("worker"), message="a worker")
        self._kill_and_recover("frontend")
        self.assertEqual(self.gw.children("worker"), workers,
                         "the worker was restarted instead of registering again")

    def test_frontend_killed(self):
        self._kill_and_recover("frontend")


class ManyStreamsTest(zgtest.GatewayTestCase):

    STREAMS = 200
    CHUNKS = 8

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)]),
                             num_workers=2)

    def test_200_concurrent_streams(self):
        body = chat_body(content="many", stream=True,
                         fake={"chunks": self.CHUNKS, "chunk_interval_ms": 20})
        status, _, reference = zgtest.sse_events(
            self.up.port, "/v1/chat/completions", dict(body, model=zgtest.UPSTREAM_MODEL),
            headers=zgtest.auth_headers(zgtest.UPSTREAM_KEY))
        self.assertEqual(status, 200, reference)
        expected_chunks = len(zgtest.json_events(reference))
        expected_text = zgtest.content_of(zgtest.json_events(reference))

        def one(i):
            status, _, events = zgtest.sse_events(self.gw.port, "/chat/completions", body,
                                                  headers=zgtest.auth_headers(), timeout=120)
            if status != 200:
                return "status %d: %r" % (status, events)
            if not events or events[-1] != "[DONE]":
                return "no [DONE]: %r" % events[-3:]
            chunks = zgtest.json_events(events)
            if len(chunks) != expected_chunks or zgtest.content_of(chunks) != expected_text:
                return "got %d chunks %r, expected %d %r" % (
                    len(chunks), zgtest.content_of(chunks), expected_chunks, expected_text)
            return None

        results = zgtest.run_threads(self.STREAMS, one, timeout=200)
        failures = [(i, r) for i, r in enumerate(results) if r is not None]
        self.assertFalse(failures, "%d of %d streams failed, first: %r"
                         % (len(failures), self.STREAMS, failures[:5]))


class GracefulStopTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)]),
                             num_workers=1)

    def test_sigterm_finishes_in_flight_stream(self):
        body = chat_body(content="drain me", stream=True,
                         fake={"chunks": 20, "chunk_interval_ms": 50})
        events = []
        with self.gw.stream("/chat/completions", body) as stream:
            self.assertEqual(stream.status, 200, stream.headers)
            events.append(stream.next_event())
            self.gw.proc.popen.send_signal(signal.SIGTERM)
            #  The listening socket refuses new connections while the stream runs
            zgtest.wait_until(lambda: self._refused(), message="new connections refused")
            try:
                events += stream.events()
            except (OSError, http.client.HTTPException) as exc:
                self.fail("stream cut by SIGTERM (%r) after %d events" % (exc, len(events)))
        self.assertEqual(events[-1], "[DONE]", "stream cut by SIGTERM: %r" % events[-3:])
        self.assertEqual(len(zgtest.json_events(events)), 20, events)
        code = self.gw.proc.wait(zgtest.STOP_TIMEOUT)
        self.assertEqual(code, 0, "zgate did not exit cleanly after draining")
        #  Every child exited 0 too
        output = self.gw.output()
        for role in ("frontend", "worker"):
            self.assertRegex(output, r"zgate:INFO: %s \(pid \d+\) stopped" % role)
        self.assertNotIn("while stopping", output)

    def _refused(self):
        try:
            with socket.create_connection(("127.0.0.1", self.gw.port), timeout=5):
                return False
        except (ConnectionRefusedError, ConnectionResetError):
            return True


if __name__ == "__main__":
    unittest.main(verbosity=2)
