"""End-to-end: the OpenAI-compatible routes, as a LiteLLM client sees them."""

import http.client
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import MASTER_KEY, UPSTREAM_KEY, UPSTREAM_MODEL, chat_body  # noqa: E402


class GatewayRoutesTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.config = zgtest.make_config([
            zgtest.deployment("gpt-4o", cls.up.api_base),
            zgtest.deployment("text-embedding-3-small", cls.up.api_base),
        ])
        cls.gw = cls.gateway(cls.config, num_workers=2)

    # -- helpers

    def direct_events(self, path, body):
        """The upstream's own stream for body (sent straight to it), as the
        reference the gateway's stream must match."""
        direct = dict(body)
        direct["model"] = UPSTREAM_MODEL
        status, _, events = zgtest.sse_events(self.up.port, path, direct,
                                              headers=zgtest.auth_headers(UPSTREAM_KEY))
        self.assertEqual(status, 200, events)
        return events

    def assertForwarded(self, path):
        """The upstream's last request was a POST on path, with the
        deployment's key and model."""
        last = self.up.last_request()
        self.assertEqual(last["method"], "POST", last)
        self.assertEqual(last["path"], path, last)
        self.assertEqual(last["headers"].get("authorization"), "Bearer " + UPSTREAM_KEY, last)
        self.assertEqual(json.loads(last["body"])["model"], UPSTREAM_MODEL, last)
        return last

    # -- build

    def test_every_process_runs_the_allocator_the_build_reports(self):
        #  The allocator is chosen at link time (ZG_MIMALLOC); a linker that
        #  dropped the library would leave glibc's malloc in place unseen
        done = subprocess.run([zgtest.zgate_bin(), "--version"], capture_output=True,
                              text=True, timeout=30)
        self.assertEqual(done.returncode, 0, done)
        lines = done.stdout.splitlines()
        self.assertTrue(lines and lines[0].startswith("zgate "), done.stdout)
        allocator = [line for line in lines if line.startswith("allocator: ")]
        self.assertEqual(len(allocator), 1, done.stdout)
        expect_mimalloc = allocator[0].startswith("allocator: mimalloc ")
        pids = [self.gw.pid] + zgtest.child_pids(self.gw.pid)
        self.assertGreaterEqual(len(pids), 3, pids)
        for pid in pids:
            with open("/proc/%d/maps" % pid) as f:
                mapped = "/libmimalloc.so" in f.read()
            self.assertEqual(mapped, expect_mimalloc,
                             "pid %d (%s): %s" % (pid, zgtest.process_argv(pid), allocator[0]))

    # -- chat

    def test_chat_json(self):
        #  Unusual spacing and key order: the body must be forwarded as
        #  bytes, with only the model value spliced.
        sent = ('{ "messages":[{"role":"user","content":"hi \\u00e9 there"}],\n'
                '  "model" :  "gpt-4o",  "temperature":0.25, "max_tokens": 17,'
                ' "user":"e2e", "fake": {"chunks": 5} }')
        resp = self.gw.post("/chat/completions", sent)
        self.assertEqual(resp.status, 200, resp)
        body = resp.json()
        self.assertEqual(body.get("object"), "chat.completion", resp)
        self.assertTrue(body["choices"][0]["message"]["content"], resp)
        self.assertEqual(body["usage"]["prompt_tokens"], 10, resp)
        self.assertEqual(body["usage"]["completion_tokens"], 5, resp)

        for header in ("x-litellm-call-id", "x-litellm-model-id", "x-litellm-version",
                       "llm_provider-x-request-id"):
            self.assertTrue(resp.headers.get(header), "missing %s: %r" % (header, resp))
        self.assertEqual(resp.headers.get("x-litellm-model-group"), "gpt-4o", resp)
        self.assertEqual(resp.headers.get("x-litellm-model-api-base"), self.up.api_base, resp)
        self.assertTrue(resp.headers.get("content-type", "").startswith("application/json"), resp)
        #  The upstream's framing headers describe its connection, not the answer
        self.assertEqual(resp.headers.get("llm_provider-openai-processing-ms"), "0", resp)
        self.assertNotIn("llm_provider-content-length", resp.headers, resp)

        last = self.assertForwarded("/v1/chat/completions")
        expected = sent.replace('"model" :  "gpt-4o"', '"model" :  "fake-model"')
        self.assertEqual(last["body"], expected,
                         "body not forwarded byte for byte (model value replaced only)")

    def test_chat_json_body_is_the_upstreams(self):
        sent = chat_body(content="same answer", fake={"chunks": 3})
        resp = self.gw.post("/v1/chat/completions", sent)
        self.assertEqual(resp.status, 200, resp)
        via_gateway = resp.json()
        direct = dict(sent, model=UPSTREAM_MODEL)
        ref = self.up.request("POST", "/v1/chat/completions", direct,
                              headers=zgtest.auth_headers(UPSTREAM_KEY))
        self.assertEqual(ref.status, 200, ref)
        reference = ref.json()
        #  Ids and timestamps vary per call; the rest must be identical.
        for volatile in ("id", "created"):
            via_gateway.pop(volatile, None)
            reference.pop(volatile, None)
        self.assertEqual(via_gateway, reference)

    def test_v1_and_plain_paths(self):
        for path in ("/chat/completions", "/v1/chat/completions"):
            with self.subTest(path=path):
                resp = self.gw.post(path, chat_body())
                self.assertEqual(resp.status, 200, resp)
                self.assertForwarded("/v1/chat/completions")
        for path in ("/completions", "/v1/completions"):
            with self.subTest(path=path):
                resp = self.gw.post(path, {"model": "gpt-4o", "prompt": "say hi"})
                self.assertEqual(resp.status, 200, resp)
                self.assertForwarded("/v1/completions")
        for path in ("/embeddings", "/v1/embeddings"):
            with self.subTest(path=path):
                resp = self.gw.post(path, {"model": "text-embedding-3-small", "input": "x"})
                self.assertEqual(resp.status, 200, resp)
                self.assertForwarded("/v1/embeddings")
        for path in ("/models", "/v1/models"):
            with self.subTest(path=path):
                resp = self.gw.get(path)
                self.assertEqual(resp.status, 200, resp)

    def test_chat_stream_without_usage(self):
        body = chat_body(content="stream me", stream=True, fake={"chunks": 6})
        reference = self.direct_events("/v1/chat/completions", body)
        status, headers, events = zgtest.sse_events(
            self.gw.port, "/chat/completions", body, headers=zgtest.auth_headers())
        self.assertEqual(status, 200, events)
        self.assertTrue(headers.get("content-type", "").startswith("text/event-stream"), headers)
        self.assertTrue(headers.get("x-litellm-call-id"), headers)
        self.assertEqual(headers.get("x-litellm-model-group"), "gpt-4o", headers)
        self.assertTrue(events, "no events")
        self.assertEqual(events[-1], "[DONE]", events)
        self.assertEqual(events.count("[DONE]"), 1, events)
        chunks = zgtest.json_events(events)
        self.assertFalse([c for c in chunks if "error" in c], events)
        self.assertFalse([c for c in chunks if zgtest.is_usage_chunk(c)],
                         "usage chunk reached a client that did not ask for it: %r" % events)
        ref_chunks = zgtest.json_events(reference)
        self.assertEqual(len(chunks), len(ref_chunks), (events, reference))
        self.assertEqual(zgtest.content_of(chunks), zgtest.content_of(ref_chunks))
        self.assertTrue(zgtest.content_of(chunks))
        for chunk in chunks:
            self.assertEqual(chunk.get("object"), "chat.completion.chunk", chunk)

    def test_chat_stream_with_usage(self):
        body = chat_body(content="stream usage", stream=True,
                         stream_options={"include_usage": True}, fake={"chunks": 4})
        reference = self.direct_events("/v1/chat/completions", body)
        status, headers, events = zgtest.sse_events(
            self.gw.port, "/v1/chat/completions", body, headers=zgtest.auth_headers())
        self.assertEqual(status, 200, events)
        self.assertTrue(headers.get("content-type", "").startswith("text/event-stream"), headers)
        self.assertEqual(events[-1], "[DONE]", events)
        chunks = zgtest.json_events(events)
        usage = [c for c in chunks if zgtest.is_usage_chunk(c)]
        self.assertEqual(len(usage), 1, events)
        self.assertIs(chunks[-1], usage[0], "the usage chunk comes last, before [DONE]")
        self.assertEqual(usage[0]["usage"]["prompt_tokens"], 10, usage)
        self.assertEqual(usage[0]["usage"]["completion_tokens"], 4, usage)
        ref_chunks = zgtest.json_events(reference)
        self.assertEqual(len(chunks), len(ref_chunks), (events, reference))
        self.assertEqual(zgtest.content_of(chunks), zgtest.content_of(ref_chunks))

    # -- completions and embeddings

    def test_completions_json(self):
        sent = '{"model": "gpt-4o", "prompt": "once upon", "max_tokens": 5, "fake": {"chunks": 3}}'
        resp = self.gw.post("/v1/completions", sent)
        self.assertEqual(resp.status, 200, resp)
        body = resp.json()
        self.assertEqual(body.get("object"), "text_completion", resp)
        self.assertIn("text", body["choices"][0], resp)
        self.assertEqual(resp.headers.get("x-litellm-model-group"), "gpt-4o", resp)
        last = self.assertForwarded("/v1/completions")
        self.assertEqual(last["body"], sent.replace('"gpt-4o"', '"fake-model"'))

    def test_completions_stream(self):
        body = {"model": "gpt-4o", "prompt": "once upon", "stream": True, "fake": {"chunks": 5}}
        reference = self.direct_events("/v1/completions", body)
        status, headers, events = zgtest.sse_events(
            self.gw.port, "/completions", body, headers=zgtest.auth_headers())
        self.assertEqual(status, 200, events)
        self.assertTrue(headers.get("content-type", "").startswith("text/event-stream"), headers)
        self.assertEqual(events[-1], "[DONE]", events)
        chunks = zgtest.json_events(events)
        ref_chunks = zgtest.json_events(reference)
        self.assertEqual(len(chunks), len(ref_chunks), (events, reference))
        self.assertEqual(zgtest.content_of(chunks), zgtest.content_of(ref_chunks))
        self.assertTrue(zgtest.content_of(chunks))

    def test_embeddings(self):
        sent = '{"model": "text-embedding-3-small", "input": ["alpha", "beta"]}'
        resp = self.gw.post("/v1/embeddings", sent)
        self.assertEqual(resp.status, 200, resp)
        body = resp.json()
        self.assertEqual(body.get("object"), "list", resp)
        self.assertTrue(body["data"], resp)
        self.assertIsInstance(body["data"][0]["embedding"], list, resp)
        self.assertEqual(resp.headers.get("x-litellm-model-group"), "text-embedding-3-small", resp)
        last = self.assertForwarded("/v1/embeddings")
        self.assertEqual(last["body"], sent.replace('"text-embedding-3-small"', '"fake-model"'))

    # -- model listing

    def test_models(self):
        resp = self.gw.get("/v1/models")
        self.assertEqual(resp.status, 200, resp)
        body = resp.json()
        self.assertEqual(body.get("object"), "list", resp)
        names = sorted(m["id"] for m in body["data"])
        self.assertEqual(names, ["gpt-4o", "text-embedding-3-small"], resp)
        for model in body["data"]:
            self.assertEqual(model.get("object"), "model", model)
            self.assertIsInstance(model.get("created"), int, model)
            self.assertIsInstance(model.get("owned_by"), str, model)

    def test_model_info_hides_keys(self):
        resp = self.gw.get("/model/info")
        self.assertEqual(resp.status, 200, resp)
        text = resp.text()
        self.assertNotIn("api_key", text, resp)
        self.assertNotIn(UPSTREAM_KEY, text, resp)
        self.assertNotIn(MASTER_KEY, text, resp)
        body = resp.json()
        names = sorted(m["model_name"] for m in body["data"])
        self.assertEqual(names, ["gpt-4o", "text-embedding-3-small"], resp)
        for entry in body["data"]:
            self.assertIn("litellm_params", entry, entry)
            self.assertIn("model_info", entry, entry)
            self.assertTrue(entry["model_info"].get("id"), entry)

    # -- health

    def test_liveliness_and_liveness(self):
        for path in ("/health/liveliness", "/health/liveness"):
            with self.subTest(path=path):
                resp = self.gw.request("GET", path)
                self.assertEqual(resp.status, 200, resp)
                self.assertEqual(resp.json(), "I'm alive!", resp)

    def test_readiness(self):
        resp = self.gw.request("GET", "/health/readiness")
        self.assertEqual(resp.status, 200, resp)
        body = resp.json()
        self.assertIsInstance(body, dict, resp)
        self.assertEqual(body.get("status"), "healthy", resp)

    # -- request id and auth headers

    def test_call_id_echoed(self):
        resp = self.gw.post("/chat/completions", chat_body(),
                            headers={"x-litellm-call-id": "e2e-call-id-42"})
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.headers.get("x-litellm-call-id"), "e2e-call-id-42", resp)

    def test_call_ids_are_unique(self):
        first = self.gw.post("/chat/completions", chat_body())
        second = self.gw.post("/chat/completions", chat_body())
        self.assertEqual((first.status, second.status), (200, 200), (first, second))
        self.assertNotEqual(first.headers.get("x-litellm-call-id"),
                            second.headers.get("x-litellm-call-id"))

    def test_auth_headers(self):
        for header, value in (("Authorization", "Bearer " + MASTER_KEY),
                              ("x-api-key", MASTER_KEY),
                              ("API-Key", MASTER_KEY)):
            with self.subTest(header=header):
                resp = self.gw.post("/chat/completions", chat_body(), key=None,
                                    headers={header: value})
                self.assertEqual(resp.status, 200, resp)
                #  The client's key is never what the upstream sees.
                last = self.up.last_request()
                self.assertEqual(last["headers"].get("authorization"), "Bearer " + UPSTREAM_KEY)
                self.assertNotIn(MASTER_KEY, json.dumps(last["headers"]))

    def test_chunked_request_body(self):
        sent = json.dumps(chat_body(content="sent in chunks")).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=zgtest.HTTP_TIMEOUT)
        try:
            pieces = iter([sent[:10], sent[10:25], sent[25:]])
            conn.request("POST", "/chat/completions", body=pieces, encode_chunked=True,
                         headers={"Authorization": "Bearer " + MASTER_KEY,
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            self.assertEqual(resp.status, 200, payload)
        finally:
            conn.close()
        last = self.assertForwarded("/v1/chat/completions")
        self.assertEqual(last["body"], sent.decode().replace('"gpt-4o"', '"fake-model"'))

    def test_body_spliced_at_the_frontends_spans(self):
        #  The frontend sends where the model and stream_options are; the
        #  worker splices there. Bodies it locates nothing in (a model or
        #  stream_options of another type) are scanned by the worker: the
        #  upstream gets the same bytes either way.
        messages = '"messages":[{"role":"user","content":"say \\"model\\": \\"x\\""}]'
        usage = '"stream_options":{"include_usage":true}'
        cases = [
            ("/chat/completions",
             ' { %s ,\n\t"model"  :  "gpt-4o" , "n":1 }\n' % messages,
             ' { %s ,\n\t"model"  :  "fake-model" , "n":1 }\n' % messages),
            ("/chat/completions",
             '{"model":"gpt-4o",%s,"stream":true}' % messages,
             '{"model":"fake-model",%s,"stream":true,%s}' % (messages, usage)),
            ("/chat/completions",
             '{"stream_options": {"include_usage": false}, "model":"gpt-4o",%s,"stream":true}'
             % messages,
             '{"stream_options": {"include_usage": true}, "model":"fake-model",%s,"stream":true}'
             % messages),
            ("/chat/completions",
             '{"model":"gpt-4o",%s,"stream":true,"stream_options":{ }}' % messages,
             '{"model":"fake-model",%s,"stream":true,"stream_options":{"include_usage":true }}'
             % messages),
            ("/chat/completions",
             '{"model":"gpt-4o",%s,"stream":true,%s}' % (messages, usage),
             '{"model":"fake-model",%s,"stream":true,%s}' % (messages, usage)),
            ("/openai/deployments/gpt-4o/chat/completions",
             '{%s}' % messages, '{"model":"fake-model",%s}' % messages),
            #  Not located: scanned by the worker
            ("/chat/completions",
             '{"model":"gpt-4o",%s,"stream":true,"stream_options":null}' % messages,
             '{"model":"fake-model",%s,"stream":true,%s}' % (messages, usage)),
            ("/openai/deployments/gpt-4o/chat/completions",
             '{"model":7,%s}' % messages, '{"model":"fake-model",%s}' % messages),
        ]
        for path, sent, expected in cases:
            with self.subTest(sent=sent):
                json.loads(sent)
                resp = self.gw.post(path, sent)
                self.assertEqual(resp.status, 200, resp)
                last = self.assertForwarded("/v1/chat/completions")
                self.assertEqual(last["body"], expected)

    def test_large_body_forwarded_intact(self):
        #  Well above any single read or message buffer, below the 32 MB default.
        content = "".join("line %06d of a long prompt\n" % i for i in range(20000))
        sent = json.dumps(chat_body(content=content, fake={"chunks": 2}))
        resp = self.gw.post("/chat/completions", sent)
        self.assertEqual(resp.status, 200, resp)
        last = self.assertForwarded("/v1/chat/completions")
        self.assertEqual(len(last["body"]), len(sent.replace('"gpt-4o"', '"fake-model"')))
        self.assertEqual(last["body"], sent.replace('"gpt-4o"', '"fake-model"'))

    def test_stream_headers(self):
        body = chat_body(stream=True, fake={"chunks": 2})
        with self.gw.stream("/chat/completions", body,
                            headers={"x-litellm-call-id": "e2e-stream-id"}) as stream:
            self.assertEqual(stream.status, 200, stream.headers)
            headers = stream.headers
            events = stream.events()
        self.assertEqual(events[-1], "[DONE]", events)
        self.assertEqual(headers.get("x-litellm-call-id"), "e2e-stream-id", headers)
        self.assertEqual(headers.get("x-litellm-model-api-base"), self.up.api_base, headers)
        self.assertTrue(headers.get("x-litellm-model-id"), headers)
        self.assertTrue(headers.get("x-litellm-version"), headers)
        zgtest.wait_until(lambda: self.up.stats()["active"] == 0,
                          message="the upstream finished every transfer")

    def test_keep_alive_connection_serves_several_requests(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=zgtest.HTTP_TIMEOUT)
        try:
            for i in range(3):
                conn.request("POST", "/chat/completions", body=json.dumps(chat_body()),
                             headers={"Authorization": "Bearer " + MASTER_KEY,
                                      "Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                self.assertEqual(resp.status, 200, payload)
        finally:
            conn.close()

    def test_get_routes_keep_the_connection_alive(self):
        """Probes and clients polling /models reuse one connection: every GET
        is answered without `Connection: close` on the same socket."""
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=zgtest.HTTP_TIMEOUT)
        try:
            paths = ["/v1/models", "/v1/models", "/model/info", "/health/liveliness",
                     "/health/liveness", "/health/readiness"]
            local_port = None
            for path in paths:
                conn.request("GET", path, headers={"Authorization": "Bearer " + MASTER_KEY})
                resp = conn.getresponse()
                payload = resp.read()
                self.assertEqual(resp.status, 200, (path, payload))
                self.assertNotEqual((resp.getheader("Connection") or "").lower(), "close",
                                    (path, resp.getheaders()))
                self.assertFalse(resp.will_close, (path, resp.getheaders()))
                self.assertIsNotNone(conn.sock, path)
                port = conn.sock.getsockname()[1]
                if local_port is None:
                    local_port = port
                self.assertEqual(port, local_port, "%s was sent on a new connection" % path)
        finally:
            conn.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
