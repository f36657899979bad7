"""End-to-end: every failure reaches the client as the reference's error JSON
with the right status, and the gateway keeps serving afterwards."""

import http.client
import json
import os
import socket
import sys
import tempfile
import shutil
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402


class ErrorCase(zgtest.GatewayTestCase):

    def assertStillServing(self, gw=None):
        gw = gw or self.gw
        resp = gw.post("/chat/completions", chat_body(content="still there?"))
        self.assertEqual(resp.status, 200, "gateway stopped serving: %r" % (resp,))


class GatewayErrorsTest(ErrorCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.dead_port = zgtest.closed_port()
        cls.gw = cls.gateway(zgtest.make_config([
            zgtest.deployment("gpt-4o", cls.up.api_base),
            #  Separate groups, so that failures (and any cooldown they
            #  cause) never touch gpt-4o.
            zgtest.deployment("flaky", cls.up.api_base),
            zgtest.deployment("slow", cls.up.api_base, timeout=0.5),
            zgtest.deployment("dead", "http://127.0.0.1:%d/v1" % cls.dead_port),
        ]), num_workers=2)

    # -- authentication

    def test_401_missing_key(self):
        resp = self.gw.post("/chat/completions", chat_body(), key=None)
        error = self.assertErrorShape(resp, 401)
        self.assertEqual(error["type"], "auth_error", resp)
        self.assertStillServing()

    def test_401_wrong_key(self):
        resp = self.gw.post("/chat/completions", chat_body(), key="sk-not-the-master-key")
        error = self.assertErrorShape(resp, 401)
        self.assertEqual(error["type"], "auth_error", resp)
        self.assertNotIn("sk-not-the-master-key", resp.text(), "the key is echoed unmasked")
        resp = self.gw.post("/chat/completions", chat_body(), key=None,
                            headers={"x-api-key": "sk-wrong"})
        self.assertErrorShape(resp, 401)
        self.assertStillServing()

    # -- bad requests

    def test_400_unknown_model(self):
        resp = self.gw.post("/chat/completions", chat_body(model="no-such-model"))
        error = self.assertErrorShape(resp, 400, "Invalid model name passed in model=")
        self.assertIn("no-such-model", error["message"], resp)
        self.assertStillServing()

    def test_400_malformed_json(self):
        resp = self.gw.post("/chat/completions", '{"model": "gpt-4o", "messages": [')
        self.assertErrorShape(resp, 400)
        resp = self.gw.post("/chat/completions", "not json at all")
        self.assertErrorShape(resp, 400)
        self.assertStillServing()

    def test_400_missing_model(self):
        resp = self.gw.post("/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
        self.assertErrorShape(resp, 400)
        self.assertStillServing()

    def test_431_head_too_large(self):
        #  The whole head must fit in the connection's memory beside the
        #  reply: past the limit the answer is a 431, never a closed socket
        for headers in ({"x-big": "b" * 13000},
                        dict(("x-many-%d" % index, "m" * 80) for index in range(80))):
            resp = self.gw.post("/chat/completions", chat_body(), headers=headers)
            self.assertErrorShape(resp, 431)
        #  Beyond what the connection's memory holds at all, libmicrohttpd
        #  answers 431 itself
        resp = self.gw.post("/chat/completions", chat_body(), headers={"x-big": "b" * 20000})
        self.assertEqual(resp.status, 431, resp)
        resp = self.gw.post("/chat/completions", chat_body(), headers={"x-big": "b" * 8000})
        self.assertEqual(resp.status, 200, resp)
        self.assertStillServing()

    def test_large_upstream_headers(self):
        #  Upstream headers that would not fit beside a large request head
        #  are dropped; the answer itself always goes out
        for head_size, padding in ((0, 4000), (8000, 15000), (11000, 15000)):
            resp = self.gw.post("/chat/completions", chat_body(fake={"header_bytes": padding}),
                                headers={"x-big": "b" * head_size} if head_size else None)
            self.assertEqual(resp.status, 200, resp)
            self.assertEqual(resp.json()["object"], "chat.completion", resp)
            self.assertTrue(resp.headers.get("llm_provider-x-request-id"), resp)
            if head_size == 0:
                self.assertEqual(len(resp.headers.get("llm_provider-x-fake-padding", "")),
                                 padding, resp)
        self.assertStillServing()

    def test_404_unknown_route(self):
        resp = self.gw.get("/v1/no/such/route")
        self.assertErrorShape(resp, 404)
        resp = self.gw.post("/v1/no-such-thing", chat_body())
        self.assertErrorShape(resp, 404)
        self.assertStillServing()

    def test_405_wrong_method(self):
        resp = self.gw.get("/chat/completions")
        self.assertErrorShape(resp, 405)
        self.assertStillServing()

    # -- upstream failures

    def test_408_upstream_timeout(self):
        resp = self.gw.post("/chat/completions", chat_body(model="slow", fake={"latency_ms": 5000}))
        self.assertErrorShape(resp, 408)
        self.assertStillServing()

    def test_upstream_500_passed_through(self):
        self._passthrough(500)

    def test_upstream_429_passed_through(self):
        self._passthrough(429)

    def _passthrough(self, status):
        sent = chat_body(model="flaky", fake={"status": status})
        ref = self.up.request("POST", "/v1/chat/completions", dict(sent, model=zgtest.UPSTREAM_MODEL),
                              headers=zgtest.auth_headers(zgtest.UPSTREAM_KEY))
        self.assertEqual(ref.status, status, ref)
        resp = self.gw.post("/chat/completions", sent)
        error = self.assertErrorShape(resp, status)
        #  The upstream's own error message reaches the client.
        upstream_message = ref.json()["error"]["message"]
        self.assertIn(upstream_message, error["message"], (resp, ref))
        self.assertStillServing()

    def test_502_upstream_unreachable(self):
        resp = self.gw.post("/chat/completions", chat_body(model="dead"))
        self.assertErrorShape(resp, 502)
        self.assertStillServing()

    def test_stream_reset_mid_stream(self):
        body = chat_body(model="flaky", stream=True,
                         fake={"fault": "reset_mid_stream", "chunks": 10, "chunk_interval_ms": 20})
        events = []
        with self.gw.stream("/chat/completions", body) as stream:
            self.assertEqual(stream.status, 200, stream.headers)
            try:
                while True:
                    event = stream.next_event()
                    if event is None:
                        break
                    events.append(event)
            except (OSError, http.client.HTTPException) as exc:
                self.fail("the client's stream broke (%r) instead of ending with an error "
                          "event; received: %r" % (exc, events))
        self.assertTrue(events, "no events")
        errors = [e for e in events if e.startswith('{"error"')]
        self.assertEqual(len(errors), 1, "expected one in-stream error event: %r" % events)
        error = json.loads(errors[0])["error"]
        for key in ("message", "type", "param", "code"):
            self.assertIn(key, error, errors[0])
        #  Nothing but [DONE] may follow the error event.
        after = events[events.index(errors[0]) + 1:]
        self.assertIn(after, ([], ["[DONE]"]), events)
        self.assertStillServing()


class RequestSizeLimitTest(ErrorCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config(
            [zgtest.deployment("gpt-4o", cls.up.api_base)],
            general={"max_request_size_mb": 0.001}), num_workers=1)

    def test_413_body_too_large(self):
        big = chat_body(content="x" * 4096)
        resp = self.gw.post("/chat/completions", big)
        self.assertErrorShape(resp, 413)
        self.assertEqual(self.up.stats()["requests"], 0, "an over-size body reached the upstream")
        self.assertStillServing()

    def test_413_chunked_body_too_large(self):
        #  No Content-Length: the limit must hold on the bytes received.
        data = json.dumps(chat_body(content="y" * 8192)).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=zgtest.HTTP_TIMEOUT)
        try:
            conn.request("POST", "/chat/completions",
                         body=iter([data[i:i + 512] for i in range(0, len(data), 512)]),
                         encode_chunked=True,
                         headers={"Authorization": "Bearer " + zgtest.MASTER_KEY,
                                  "Content-Type": "application/json"})
            raw = conn.getresponse()
            resp = zgtest.Response(raw.status, raw.reason, dict(raw.getheaders()), raw.read())
        except (ConnectionError, http.client.HTTPException) as exc:
            self.fail("connection broken instead of a 413 answer: %r" % (exc,))
        finally:
            conn.close()
        self.assertErrorShape(resp, 413)
        self.assertStillServing()


class NoWorkerAvailableTest(ErrorCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config(
            [zgtest.deployment("gpt-4o", cls.up.api_base)],
            zgate={"worker_capacity": 1, "queue_timeout_ms": 300}), num_workers=1)

    def test_503_no_worker_available(self):
        self.up.reset_stats()
        hanging = zgtest.send_and_abandon(
            self.gw.port, "/chat/completions", chat_body(content="hang", fake={"fault": "hang"}),
            headers=zgtest.auth_headers())
        try:
            #  The only worker's only slot is taken once the upstream has it.
            zgtest.wait_until(lambda: self.up.stats()["requests"] >= 1,
                              message="the hanging request reached the upstream")
            resp = self.gw.post("/chat/completions", chat_body(content="second"))
            self.assertErrorShape(resp, 503)
        finally:
            zgtest.abort_socket(hanging)
        #  Dropping the hanging client frees the slot: the gateway serves again.
        zgtest.wait_until(
            lambda: self.gw.post("/chat/completions", chat_body(content="again")).status == 200,
            message="a request succeeded after the hanging client went away")


class ConfigErrorsTest(unittest.TestCase):
    """A wrong configuration stops zgate at once, naming file:line: key."""

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="zg-e2e-config-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def run_config(self, name, text, extra_env=None):
        path = os.path.join(self.workdir, name + ".yaml")
        with open(path, "w") as f:
            f.write(text)
        port = zgtest.free_port()
        env = {"ZGATE_RUN_DIR": tempfile.mkdtemp(dir=self.workdir)}
        env.update(extra_env or {})
        proc = zgtest.Process([zgtest.zgate_bin(), "--config", path, "--host", "127.0.0.1",
                               "--port", str(port), "--num_workers", "1"],
                              self.workdir, name, env=env)
        code = proc.wait(zgtest.START_TIMEOUT)
        if code is None:
            proc.stop()
            self.fail("zgate kept running with a wrong config\n" + proc.describe())
        return path, code, proc

    def assertNamesLine(self, name, text, key, line):
        path, code, proc = self.run_config(name, text)
        output = proc.output()
        self.assertNotEqual(code, 0, proc.describe())
        prefix = "%s:%d:" % (path, line)
        hits = [l for l in output.splitlines() if prefix in l]
        self.assertTrue(hits, "no message naming %s\n%s" % (prefix, proc.describe()))
        self.assertTrue(any(key in l[l.index(prefix):] for l in hits),
                        "message names %s but not the key %s: %r" % (prefix, key, hits))

    def test_bad_type(self):
        text = ("model_list:\n"
                "  - model_name: gpt-4o\n"
                "    litellm_params:\n"
                "      model: openai/fake-model\n"
                "      api_base: http://127.0.0.1:9/v1\n"
                "      rpm: fast\n"
                "general_settings:\n"
                "  master_key: sk-1234\n")
        self.assertNamesLine("bad_type", text, "rpm", 6)

    def test_bad_type_in_settings(self):
        text = ("model_list:\n"
                "  - model_name: gpt-4o\n"
                "    litellm_params:\n"
                "      model: openai/fake-model\n"
                "      api_base: http://127.0.0.1:9/v1\n"
                "general_settings:\n"
                "  master_key: sk-1234\n"
                "litellm_settings:\n"
                "  request_timeout: soon\n")
        self.assertNamesLine("bad_timeout", text, "request_timeout", 9)

    def test_master_key_without_sk(self):
        text = ("model_list:\n"
                "  - model_name: gpt-4o\n"
                "    litellm_params:\n"
                "      model: openai/fake-model\n"
                "      api_base: http://127.0.0.1:9/v1\n"
                "general_settings:\n"
                "  master_key: not-a-proper-key\n")
        self.assertNamesLine("master_key", text, "master_key", 7)

    def test_unknown_provider(self):
        text = ("general_settings:\n"
                "  master_key: sk-1234\n"
                "model_list:\n"
                "  - model_name: gpt-4o\n"
                "    litellm_params:\n"
                "      model: azure/x\n"
                "      api_base: http://127.0.0.1:9/v1\n")
        self.assertNamesLine("provider", text, "model", 6)

    def test_busy_port(self):
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            holder.bind(("127.0.0.1", 0))
            holder.listen(8)
            port = holder.getsockname()[1]
            config = os.path.join(self.workdir, "busy.yaml")
            with open(config, "w") as f:
                f.write(zgtest.to_yaml(zgtest.make_config(
                    [zgtest.deployment("gpt-4o", "http://127.0.0.1:9/v1")])) + "\n")
            env = {"ZGATE_RUN_DIR": tempfile.mkdtemp(dir=self.workdir)}
            proc = zgtest.Process([zgtest.zgate_bin(), "--config", config, "--host", "127.0.0.1",
                                   "--port", str(port), "--num_workers", "1"],
                                  self.workdir, "busy", env=env)
            code = proc.wait(zgtest.START_TIMEOUT)
            if code is None:
                #  Still running: it must not have moved to another port.
                proc.stop()
                self.fail("zgate kept running although port %d is busy\n%s"
                          % (port, proc.describe()))
            self.assertNotEqual(code, 0, proc.describe())
            self.assertIn(str(port), proc.output(), proc.describe())
            #  The port's owner is untouched: it still accepts connections.
            probe = socket.create_connection(("127.0.0.1", port), timeout=5)
            probe.close()
        finally:
            holder.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
