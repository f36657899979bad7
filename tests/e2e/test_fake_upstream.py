"""End-to-end tests of the fake OpenAI upstream (fakeupstream/).

Every other end-to-end test and the benchmark stand on this server, so its
routes, stream framing, statistics, last-request record and faults are
checked here directly, over real sockets, without a gateway.

FAKE_UPSTREAM_BIN names the binary (ctest sets it); by hand it falls back
to build-fake/fakeupstream/fake_upstream.
"""

import http.client
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FALLBACK_BIN = os.path.join(_REPO, "build-fake", "fakeupstream", "fake_upstream")

#  Safety nets only: a passing run never waits for them.
START_TIMEOUT = 20.0
POLL_TIMEOUT = 20.0
IO_TIMEOUT = 20.0

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def fake_bin():
    return os.environ.get("FAKE_UPSTREAM_BIN") or FALLBACK_BIN


class Server:
    """One fake_upstream process on a port of its choosing."""

    def __init__(self, *args):
        self.stderr_file = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([fake_bin(), "--port", "0"] + list(args),
                                     stdout=subprocess.PIPE, stderr=self.stderr_file)
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline().decode() if ready else ""
        prefix = "fake_upstream listening on 127.0.0.1:"
        if not line.startswith(prefix):
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("no listening line, got %r\n%s" % (line, self.stderr()))
        self.port = int(line[len(prefix):].strip())

    def stderr(self):
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode("utf-8", "replace")

    def stop(self):
        """SIGTERM; returns (exit code, rest of stdout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        rest = self.proc.stdout.read().decode()
        self.proc.stdout.close()
        return code, rest

    def close(self):
        self.stderr_file.close()

    # HTTP helpers

    def request(self, method, path, body=None, headers=None, timeout=IO_TIMEOUT):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            hdrs = {"Content-Type": "application/json"} if body is not None else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def post(self, path, body, **kwargs):
        return self.request("POST", path, body=body, **kwargs)

    def json(self, method, path, body=None):
        status, _, data = self.request(method, path, body)
        assert status == 200, (status, data)
        return json.loads(data)

    def stats(self):
        return self.json("GET", "/stats")

    def wait_stats(self, predicate, what):
        deadline = time.monotonic() + POLL_TIMEOUT
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s: %r" % (what, stats))
            time.sleep(0.02)

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)


class RawReader:
    """Reads HTTP/1.1 responses off a socket, for pipelining and faults."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def until(self, marker):
        while marker not in self.buf:
            self._fill()
        at = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:at], self.buf[at:]
        return out

    def exactly(self, size):
        while len(self.buf) < size:
            self._fill()
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def head(self):
        lines = self.until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    def response(self):
        status, headers = self.head()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self.until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self.until(b"\r\n")
                    break
                body += self.exactly(size)
                self.exactly(2)
        else:
            body = self.exactly(int(headers.get("content-length", "0")))
        return status, headers, body


def http_bytes(method, path, body=b"", headers=None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    hdrs = {"Host": "127.0.0.1", "Content-Length": str(len(body))}
    if not body and method == "GET":
        del hdrs["Content-Length"]
    hdrs.update(headers or {})
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    head += "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
    return head.encode() + body


def sse_events(body):
    """The data of each SSE event in a stream body."""
    events = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(block[len("data: "):])
    return events


def chat(content="hello", model="gpt-4o", fake=None, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    if fake is not None:
        body["fake"] = fake
    return body


class FakeUpstreamTest(unittest.TestCase):

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.up = Server()

    @classmethod
    def tearDownClass(cls):
        code, rest = cls.up.stop()
        stderr = cls.up.stderr()
        cls.up.close()
        problems = [line for line in stderr.splitlines()
                    if any(m in line for m in SANITIZER_MARKERS)]
        if code != 0 or rest or problems:
            raise AssertionError("unclean stop: code %s, stdout %r\n%s" % (code, rest, stderr))

    def assertError(self, status, data, expected_status, error_type=None):
        self.assertEqual(status, expected_status, data)
        error = json.loads(data)["error"]
        self.assertEqual(set(error), {"message", "type", "param", "code"}, error)
        self.assertEqual(error["code"], str(expected_status))
        self.assertIsNone(error["param"])
        if error_type:
            self.assertEqual(error["type"], error_type)
        return error

    # -- routes

    def test_chat_json(self):
        for path in ("/chat/completions", "/v1/chat/completions"):
            with self.subTest(path=path):
                status, headers, data = self.up.post(path, chat(model="my-model",
                                                                fake={"chunks": 5}))
                self.assertEqual(status, 200, data)
                self.assertTrue(headers["content-type"].startswith("application/json"))
                self.assertTrue(headers["x-request-id"].startswith("req-fake-"), headers)
                self.assertEqual(headers["openai-processing-ms"], "0")
                body = json.loads(data)
                self.assertEqual(body["id"], "chatcmpl-fake-" + headers["x-request-id"][9:])
                self.assertEqual(body["object"], "chat.completion")
                self.assertEqual(body["model"], "my-model")
                self.assertIsInstance(body["created"], int)
                choice = body["choices"][0]
                self.assertEqual(choice["index"], 0)
                self.assertEqual(choice["message"]["role"], "assistant")
                self.assertEqual(len(choice["message"]["content"].split()), 5)
                self.assertEqual(choice["finish_reason"], "stop")
                self.assertEqual(body["usage"], {"prompt_tokens": 10, "completion_tokens": 5,
                                                 "total_tokens": 15})

    def test_chat_default_chunks_is_eight(self):
        body = self.up.json("POST", "/v1/chat/completions", chat())
        self.assertEqual(body["usage"]["completion_tokens"], 8)

    def stream(self, path, body):
        status, headers, data = self.up.post(path, body)
        self.assertEqual(status, 200, data)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"), headers)
        self.assertEqual(headers.get("transfer-encoding"), "chunked", headers)
        events = sse_events(data)
        self.assertEqual(events[-1], "[DONE]", events)
        self.assertEqual(events.count("[DONE]"), 1)
        return [json.loads(e) for e in events[:-1]]

    def test_chat_stream_without_usage(self):
        chunks = self.stream("/chat/completions", chat(stream=True, fake={"chunks": 4}))
        self.assertEqual(len(chunks), 4, chunks)
        self.assertEqual(chunks[0]["choices"][0]["delta"].get("role"), "assistant")
        for chunk in chunks:
            self.assertEqual(chunk["object"], "chat.completion.chunk")
            self.assertEqual(chunk["model"], "gpt-4o")
            self.assertEqual(chunk["id"], chunks[0]["id"])
            self.assertNotIn("usage", chunk)
        for chunk in chunks[1:]:
            self.assertIn("tok", chunk["choices"][0]["delta"]["content"])
        self.assertEqual([c["choices"][0]["finish_reason"] for c in chunks],
                         [None, None, None, "stop"])
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        json_text = self.up.json("POST", "/chat/completions",
                                 chat(fake={"chunks": 4}))["choices"][0]["message"]["content"]
        self.assertEqual(text, json_text)

    def test_chat_stream_with_usage(self):
        chunks = self.stream("/v1/chat/completions",
                             chat(stream=True, stream_options={"include_usage": True},
                                  fake={"chunks": 3}))
        self.assertEqual(len(chunks), 4, chunks)
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 10, "completion_tokens": 3,
                                               "total_tokens": 13})
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")

    def test_prompt_tokens_as_told(self):
        #  Any count, beyond 32 bits or negative, as a gateway may be sent
        for told in (3000000000, -5, 0):
            with self.subTest(told=told):
                body = self.up.json("POST", "/v1/chat/completions",
                                    chat(fake={"chunks": 2, "prompt_tokens": told}))
                self.assertEqual(body["usage"], {"prompt_tokens": told, "completion_tokens": 2,
                                                 "total_tokens": told + 2})
        chunks = self.stream("/v1/chat/completions",
                             chat(stream=True, stream_options={"include_usage": True},
                                  fake={"chunks": 1, "prompt_tokens": 999999999999999}))
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 999999999999999,
                                               "completion_tokens": 1,
                                               "total_tokens": 1000000000000000})

    def test_stream_options_false_means_no_usage(self):
        chunks = self.stream("/v1/chat/completions",
                             chat(stream=True, stream_options={"include_usage": False}))
        self.assertEqual(len(chunks), 8)
        self.assertFalse([c for c in chunks if "usage" in c])

    def test_completions(self):
        for path in ("/completions", "/v1/completions"):
            with self.subTest(path=path):
                body = self.up.json("POST", path, {"model": "m", "prompt": "say",
                                                   "fake": {"chunks": 2}})
                self.assertEqual(body["object"], "text_completion")
                self.assertEqual(body["model"], "m")
                self.assertEqual(body["choices"][0]["text"], "tok tok")
                self.assertEqual(body["choices"][0]["finish_reason"], "stop")
                self.assertEqual(body["usage"]["total_tokens"], 12)
        chunks = self.stream("/v1/completions",
                             {"model": "m", "prompt": "say", "stream": True,
                              "stream_options": {"include_usage": True}, "fake": {"chunks": 3}})
        self.assertEqual(len(chunks), 4)
        self.assertTrue(all(c["object"] == "text_completion" for c in chunks))
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks[:3]), "tok tok tok")
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 3)

    def test_embeddings(self):
        for given, count in (("one", 1), (["a", "b", "c"], 3), ([1, 2, 3], 1),
                             ([[1, 2], [3]], 2)):
            with self.subTest(input=given):
                body = self.up.json("POST", "/v1/embeddings",
                                    {"model": "text-embedding-3-small", "input": given})
                self.assertEqual(body["object"], "list")
                self.assertEqual(body["model"], "text-embedding-3-small")
                self.assertEqual(len(body["data"]), count)
                for i, item in enumerate(body["data"]):
                    self.assertEqual(item["object"], "embedding")
                    self.assertEqual(item["index"], i)
                    self.assertEqual(len(item["embedding"]), 8)
                    self.assertTrue(all(isinstance(x, float) for x in item["embedding"]))
                self.assertEqual(body["usage"], {"prompt_tokens": 10, "total_tokens": 10})
        status, _, data = self.up.post("/embeddings", {"model": "e"})
        self.assertError(status, data, 400)

    def test_models(self):
        for path in ("/models", "/v1/models"):
            self.assertEqual(self.up.json("GET", path),
                             {"object": "list", "data": [{"id": "fake", "object": "model",
                                                          "created": 0, "owned_by": "fake"}]})

    def test_unknown_route_and_wrong_method(self):
        status, headers, data = self.up.request("GET", "/v1/nothing/here")
        self.assertError(status, data, 404, "invalid_request_error")
        self.assertTrue(headers["content-type"].startswith("application/json"))
        for method, path in (("GET", "/v1/chat/completions"), ("PUT", "/completions"),
                             ("POST", "/v1/models"), ("DELETE", "/stats")):
            with self.subTest(method=method, path=path):
                status, _, data = self.up.request(method, path)
                self.assertError(status, data, 405)

    def test_bad_bodies(self):
        for body in ("", "not json", "[1,2]", '{"model": "x",', '{"model": 5}',
                     '{"messages": []}', '{"model":"x"} trailing',
                     '{"model":"x","fake":{"chunks":-1}}', '{"model":"x","fake":{"status":99}}',
                     '{"model":"x","fake":{"fault":"explode"}}', "{" * 10000,
                     '{"model":"x","fake":{"prompt_tokens":1.5}}',
                     '{"model":"x","fake":{"prompt_tokens":"5"}}',
                     '{"model":"x","fake":{"prompt_tokens":-1000000000000000}}'):
            with self.subTest(body=body[:40]):
                status, _, data = self.up.post("/v1/chat/completions", body)
                self.assertError(status, data, 400, "invalid_request_error")

    # -- statistics and the last request

    def test_stats_count_llm_requests_only(self):
        self.up.json("POST", "/stats/reset")
        self.up.json("POST", "/v1/chat/completions", chat())
        self.up.json("POST", "/v1/embeddings", {"model": "e", "input": "x"})
        self.up.post("/v1/chat/completions", chat(stream=True))
        self.up.json("GET", "/v1/models")
        self.up.request("GET", "/missing")
        self.assertEqual(self.up.stats(), {"requests": 3, "completed": 3,
                                           "client_disconnects": 0, "active": 0})
        reset = self.up.json("POST", "/v1/stats/reset")
        self.assertEqual(reset["requests"], 0)
        self.assertEqual(self.up.stats()["completed"], 0)

    def test_last_request(self):
        sent = ('{ "messages":[{"role":"user","content":"hi \\u00e9 \xe9 there"}],\n'
                '  "model" :  "fake-model",  "temperature":0.25 }')
        status, _, _ = self.up.post("/v1/chat/completions?api-version=1", sent.encode(),
                                    headers={"Authorization": "Bearer sk-upstream",
                                             "X-Custom-Header": "  spaced value "})
        self.assertEqual(status, 200)
        last = self.up.json("GET", "/last_request")
        self.assertEqual(last["method"], "POST")
        self.assertEqual(last["path"], "/v1/chat/completions?api-version=1")
        self.assertEqual(last["headers"]["authorization"], "Bearer sk-upstream")
        self.assertEqual(last["headers"]["x-custom-header"], "spaced value")
        self.assertEqual(last["headers"]["content-type"], "application/json")
        self.assertEqual(last["headers"]["content-length"], str(len(sent.encode())))
        self.assertEqual(last["body"], sent)
        #  Non-LLM requests do not replace it.
        self.up.json("GET", "/v1/models")
        self.assertEqual(self.up.json("GET", "/v1/last_request"), last)

    def test_last_request_binary_body_is_still_json(self):
        body = b'{"model":"x","junk":"\xff\xfe\x00"}'
        status, _, _ = self.up.post("/v1/chat/completions", body)
        self.assertEqual(status, 400)
        last = self.up.json("GET", "/last_request")
        self.assertEqual(last["body"], body.decode("latin-1"))

    # -- per-request control and faults

    def test_error_statuses(self):
        for code, kind in ((500, "server_error"), (503, "server_error"),
                           (400, "invalid_request_error"), (401, "invalid_request_error"),
                           (429, "invalid_request_error")):
            with self.subTest(status=code):
                status, headers, data = self.up.post("/v1/chat/completions",
                                                     chat(fake={"status": code}))
                error = self.assertError(status, data, code, kind)
                self.assertEqual(error["message"], "fake upstream error %d" % code)
                self.assertEqual(headers.get("retry-after"), "1" if code == 429 else None)
                self.assertTrue(headers["x-request-id"].startswith("req-fake-"))
        status, _, data = self.up.post("/v1/chat/completions",
                                       chat(stream=True, fake={"status": 502}))
        self.assertError(status, data, 502)

    def test_latency(self):
        started = time.monotonic()
        status, headers, _ = self.up.post("/v1/chat/completions", chat(fake={"latency_ms": 300}))
        self.assertEqual(status, 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.29)
        self.assertEqual(headers["openai-processing-ms"], "300")

    def test_chunk_interval(self):
        started = time.monotonic()
        chunks = self.stream("/v1/chat/completions",
                             chat(stream=True, fake={"chunks": 4, "chunk_interval_ms": 100}))
        self.assertGreaterEqual(time.monotonic() - started, 0.29)
        self.assertEqual(len(chunks), 4)

    def test_fault_reset(self):
        sock = self.up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions",
                                    chat(fake={"fault": "reset"})))
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.assertEqual(data, b"")
        finally:
            sock.close()
        self.up.wait_stats(lambda s: s["active"] == 0, "the reset request to leave")

    def test_fault_hang_counts_a_client_disconnect(self):
        before = self.up.stats()["client_disconnects"]
        sock = self.up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions",
                                    chat(fake={"fault": "hang"})))
            sock.settimeout(0.5)
            with self.assertRaises(socket.timeout):
                sock.recv(1)
            self.up.wait_stats(lambda s: s["active"] >= 1, "the hanging request")
        finally:
            sock.close()
        self.up.wait_stats(lambda s: s["client_disconnects"] > before and s["active"] == 0,
                           "the hang to be counted as a client disconnect")

    def test_fault_slow_arrives_in_pieces(self):
        before = self.up.stats()["client_disconnects"]
        sock = self.up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions",
                                    chat(fake={"fault": "slow", "chunks": 1})))
            reader = RawReader(sock)
            status, headers = reader.head()
            self.assertEqual(status, 200)
            length = int(headers["content-length"])
            self.assertGreater(length, 10)
            pieces = [reader.buf] if reader.buf else []
            reader.buf = b""
            started = time.monotonic()
            while sum(len(p) for p in pieces) < 6:
                pieces.append(sock.recv(65536))
                self.assertTrue(pieces[-1], "closed early")
            #  A lower bound only: six bytes 100 ms apart cannot come sooner.
            self.assertGreaterEqual(time.monotonic() - started, 0.45)
            self.assertGreaterEqual(len(pieces), 2, pieces)
            self.assertTrue(b"".join(pieces).startswith(b'{"id"'), pieces)
        finally:
            sock.close()
        self.up.wait_stats(lambda s: s["client_disconnects"] > before and s["active"] == 0,
                           "the abandoned slow answer to be counted")

    def read_until_reset(self, sock):
        data = b""
        reset = False
        while True:
            try:
                got = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not got:
                break
            data += got
        return data, reset

    def test_fault_reset_mid_stream(self):
        sock = self.up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions",
                                    chat(stream=True, fake={"fault": "reset_mid_stream",
                                                            "chunks": 6,
                                                            "chunk_interval_ms": 10})))
            data, reset = self.read_until_reset(sock)
        finally:
            sock.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)
        self.assertEqual(data.count(b"data: {"), 3, data)
        self.assertNotIn(b"[DONE]", data)
        self.assertNotIn(b"\r\n0\r\n\r\n", data)
        self.assertTrue(reset or not data.endswith(b"0\r\n\r\n"))
        #  Not streamed: half the JSON body, then the reset.
        sock = self.up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions",
                                    chat(fake={"fault": "reset_mid_stream"})))
            data, _ = self.read_until_reset(sock)
        finally:
            sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        length = int([l for l in head.split(b"\r\n") if l.startswith(b"content-length")][0]
                     .split(b":")[1])
        self.assertLess(len(body), length)
        self.up.wait_stats(lambda s: s["active"] == 0, "reset requests to leave")

    def test_client_closing_mid_stream_is_counted(self):
        before = self.up.stats()["client_disconnects"]
        sock = self.up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions",
                                    chat(stream=True, fake={"chunks": 50,
                                                            "chunk_interval_ms": 50})))
            reader = RawReader(sock)
            self.assertEqual(reader.head()[0], 200)
            reader.until(b"\n\n")
            reader.until(b"\n\n")
            self.up.wait_stats(lambda s: s["active"] >= 1, "the stream in flight")
        finally:
            sock.close()
        self.up.wait_stats(lambda s: s["client_disconnects"] == before + 1 and s["active"] == 0,
                           "the closed stream to be counted")

    def test_client_closing_while_waiting_is_counted(self):
        self.up.json("POST", "/stats/reset")
        sock = self.up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions",
                                    chat(fake={"latency_ms": 5000})))
            self.up.wait_stats(lambda s: s["active"] >= 1, "the waiting request")
        finally:
            sock.close()
        stats = self.up.wait_stats(lambda s: s["active"] == 0, "the waiting request to end")
        self.assertEqual(stats["client_disconnects"], 1, stats)
        self.assertEqual(stats["completed"], 0, stats)

    # -- connection handling

    def test_keep_alive(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.up.port, timeout=IO_TIMEOUT)
        try:
            conn.connect()
            first_socket = conn.sock
            for i in range(5):
                stream = i % 2 == 1
                conn.request("POST", "/v1/chat/completions",
                             body=json.dumps(chat(content=str(i), stream=stream)),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                self.assertEqual(resp.status, 200, data)
                self.assertIsNone(resp.getheader("connection"))
            conn.request("GET", "/v1/models")
            self.assertEqual(conn.getresponse().read()[:1], b"{")
            self.assertIs(conn.sock, first_socket, "the connection was not kept")
        finally:
            conn.close()

    def test_pipelined_requests(self):
        chunked_body = (b"7\r\n{\"model\r\n"
                        b"a;ext=1\r\n\":\"piped\"}\r\n"
                        b"0\r\nx-trailer: t\r\n\r\n")
        requests = (
            http_bytes("POST", "/v1/chat/completions", chat(model="first",
                                                             fake={"latency_ms": 50}))
            + http_bytes("GET", "/v1/models")
            + http_bytes("POST", "/v1/chat/completions", chat(model="second", stream=True,
                                                              fake={"chunks": 2}))
            + b"POST /chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + chunked_body
            + http_bytes("POST", "/embeddings", {"model": "last", "input": "x"}))
        sock = self.up.connect()
        try:
            #  In two uneven pieces, splitting a request in the middle.
            sock.sendall(requests[:100])
            sock.sendall(requests[100:])
            reader = RawReader(sock)
            answers = [reader.response() for _ in range(5)]
        finally:
            sock.close()
        self.assertEqual([a[0] for a in answers], [200] * 5)
        self.assertEqual(json.loads(answers[0][2])["model"], "first")
        self.assertEqual(json.loads(answers[1][2])["object"], "list")
        self.assertEqual(sse_events(answers[2][2])[-1], "[DONE]")
        self.assertEqual(json.loads(answers[3][2])["model"], "piped")
        self.assertEqual(json.loads(answers[4][2])["model"], "last")

    def test_deep_pipeline_with_a_reader_that_lags(self):
        #  Far more answers than the server buffers for one connection: it
        #  must pause and resume, answering every request in order.
        count = 3000
        wire = b"".join(http_bytes("POST", "/v1/chat/completions",
                                   chat(model="m%d" % i, stream=i % 3 == 0,
                                        fake={"chunks": 20}))
                        for i in range(count))
        sock = self.up.connect()
        try:
            sock.sendall(wire)
            reader = RawReader(sock)
            for i in range(count):
                status, _, data = reader.response()
                self.assertEqual(status, 200)
                if i % 3 == 0:
                    self.assertIn(b'"model":"m%d"' % i, data)
                else:
                    self.assertEqual(json.loads(data)["model"], "m%d" % i)
        finally:
            sock.close()

    def test_chunked_request_body_byte_by_byte(self):
        body = json.dumps(chat(model="dribbled")).encode()
        wire = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 7):
            piece = body[i:i + 7]
            wire += b"%x\r\n" % len(piece) + piece + b"\r\n"
        wire += b"0\r\n\r\n"
        sock = self.up.connect()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(wire), 13):
                sock.sendall(wire[i:i + 13])
            status, _, data = RawReader(sock).response()
        finally:
            sock.close()
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["model"], "dribbled")
        self.assertEqual(self.up.json("GET", "/last_request")["body"], body.decode())

    def test_expect_continue(self):
        body = json.dumps(chat(model="continued")).encode()
        sock = self.up.connect()
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            reader = RawReader(sock)
            self.assertEqual(reader.head()[0], 100)
            sock.sendall(body)
            status, _, data = reader.response()
        finally:
            sock.close()
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(data)["model"], "continued")

    def test_http10_stream_ends_with_close(self):
        body = json.dumps(chat(stream=True, fake={"chunks": 2})).encode()
        sock = self.up.connect()
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
            data, _ = self.read_until_reset(sock)
        finally:
            sock.close()
        head, _, rest = data.partition(b"\r\n\r\n")
        self.assertNotIn(b"chunked", head)
        self.assertIn(b"connection: close", head)
        self.assertEqual(sse_events(rest)[-1], "[DONE]")

    def test_garbage_is_answered_400_and_the_server_keeps_serving(self):
        for garbage in (b"\x00\x01\x02garbage\r\n\r\n", b"GET\r\n\r\n",
                        b"GET / HTTP/9.9\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"zz\r\n"):
            with self.subTest(garbage=garbage):
                sock = self.up.connect()
                try:
                    sock.sendall(garbage)
                    status, headers, data = RawReader(sock).response()
                finally:
                    sock.close()
                self.assertIn(status, (400, 505))
                self.assertEqual(headers.get("connection"), "close")
                self.assertError(status, data, status)
        #  Random bytes, many connections: nothing may crash the server.
        rng = random.Random(1234)
        seeds = [b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}",
                 b"GET /stats HTTP/1.1\r\n\r\n", b"\r\n\r\n"]
        for _ in range(150):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            sock = self.up.connect()
            try:
                sock.sendall(bytes(data))
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(5)
                try:
                    while sock.recv(65536):
                        pass
                except (ConnectionResetError, socket.timeout):
                    pass
            finally:
                sock.close()
        self.assertEqual(self.up.json("POST", "/v1/chat/completions", chat())["object"],
                         "chat.completion")

    def test_too_large(self):
        sock = self.up.connect()
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n{" % (8 * 1024 * 1024 + 1))
            status, headers, data = RawReader(sock).response()
        finally:
            sock.close()
        self.assertError(status, data, 413)
        self.assertEqual(headers.get("connection"), "close")
        #  A chunked body growing past 8 MB.
        sock = self.up.connect()
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            piece = b"x" * (1024 * 1024)
            reader = RawReader(sock)
            try:
                for _ in range(9):
                    sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            status, _, data = reader.response()
        finally:
            sock.close()
        self.assertError(status, data, 413)
        #  Exactly 8 MB is accepted (and is not JSON).
        status, _, data = self.up.post("/v1/chat/completions", b" " * (8 * 1024 * 1024))
        self.assertError(status, data, 400)


class CommandLineTest(unittest.TestCase):
    """Options set the defaults that a request's "fake" object overrides."""

    def run_server(self, *args):
        server = Server(*args)
        self.addCleanup(server.close)
        self.addCleanup(lambda: self.assertEqual(server.stop(), (0, "")))
        return server

    def test_defaults_from_options(self):
        up = self.run_server("--threads", "2", "--chunks", "3", "--latency-ms", "100",
                             "--status", "503")
        started = time.monotonic()
        status, headers, data = up.post("/v1/chat/completions", chat())
        self.assertGreaterEqual(time.monotonic() - started, 0.09)
        self.assertEqual(status, 503, data)
        self.assertEqual(headers["openai-processing-ms"], "100")
        body = up.json("POST", "/v1/chat/completions",
                       chat(fake={"status": 200, "latency_ms": 0}))
        self.assertEqual(body["usage"]["completion_tokens"], 3)
        for _ in range(20):
            up.post("/v1/chat/completions", chat(fake={"status": 200, "latency_ms": 0}))
        self.assertEqual(up.stats()["completed"], 22)

    def test_prompt_tokens_option(self):
        up = self.run_server("--prompt-tokens", "-3000000000")
        body = up.json("POST", "/v1/chat/completions", chat(fake={"chunks": 1}))
        self.assertEqual(body["usage"], {"prompt_tokens": -3000000000, "completion_tokens": 1,
                                         "total_tokens": -2999999999})
        body = up.json("POST", "/v1/chat/completions",
                       chat(fake={"chunks": 1, "prompt_tokens": 7}))
        self.assertEqual(body["usage"]["prompt_tokens"], 7)

    def test_fault_option(self):
        up = self.run_server("--fault", "reset")
        sock = up.connect()
        try:
            sock.sendall(http_bytes("POST", "/v1/chat/completions", chat()))
            try:
                self.assertEqual(sock.recv(100), b"")
            except ConnectionResetError:
                pass
        finally:
            sock.close()
        body = up.json("POST", "/v1/chat/completions", chat(fake={"fault": "none"}))
        self.assertEqual(body["object"], "chat.completion")

    def test_bad_options_exit_non_zero(self):
        for args in (["--port", "x"], ["--fault", "explode"], ["--bogus", "1"], ["--threads"],
                     ["--prompt-tokens", "1e3"], ["--prompt-tokens", "9999999999999999"]):
            with self.subTest(args=args):
                proc = subprocess.run([fake_bin()] + args, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, timeout=START_TIMEOUT)
                self.assertNotEqual(proc.returncode, 0)
                self.assertEqual(proc.stdout, b"")

    def test_sigint_exits_zero(self):
        server = Server()
        server.proc.send_signal(signal.SIGINT)
        self.assertEqual(server.proc.wait(timeout=START_TIMEOUT), 0)
        server.stop()
        server.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
