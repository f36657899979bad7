"""End-to-end: access lines, log levels, JSON logs, and no secret in any log.

Absence checks (no access line, no secret) read the logs only after zgate
has exited, so that nothing can still be on its way to the file."""

import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import MASTER_KEY, UPSTREAM_KEY, chat_body  # noqa: E402

ACCESS_RE = re.compile(r'INFO:     127\.0\.0\.1:\d+ - "POST /chat/completions HTTP/1\.1" 200 OK')
ANY_ACCESS_RE = re.compile(r'127\.0\.0\.1:\d+ - "[A-Z]+ [^"]* HTTP/1\.[01]" \d{3}')


def json_messages(text):
    """The message of every line of text that is a JSON object with one."""
    messages = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            messages.append(obj["message"])
    return messages


class LogCase(zgtest.GatewayTestCase):

    LOG_LEVEL = None
    LITELLM_SETTINGS = None

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        env = {"LITELLM_LOG": cls.LOG_LEVEL} if cls.LOG_LEVEL else {}
        cls.gw = cls.gateway(zgtest.make_config(
            [zgtest.deployment("gpt-4o", cls.up.api_base),
             zgtest.deployment("flaky", cls.up.api_base)],
            litellm=cls.LITELLM_SETTINGS), num_workers=1, env=env)

    def stop_gateway(self):
        """Stop zgate and return its whole output (stdout, stderr)."""
        problems = self.gw.stop()
        self.assertFalse(problems, problems)
        return self.gw.proc.stdout(), self.gw.proc.stderr()


class InfoLogTest(LogCase):

    LOG_LEVEL = "INFO"

    def test_access_line(self):
        resp = self.gw.post("/chat/completions", chat_body())
        self.assertEqual(resp.status, 200, resp)
        zgtest.wait_until(lambda: ACCESS_RE.search(self.gw.output()),
                          message="an access line for POST /chat/completions 200")
        lines = [l for l in self.gw.output().splitlines() if ACCESS_RE.search(l)]
        #  The access line is the whole line (after an optional log prefix
        #  the reference does not have, none is allowed).
        self.assertTrue(any(ACCESS_RE.fullmatch(l) for l in lines), lines)


class ErrorLevelLogTest(LogCase):

    LOG_LEVEL = "ERROR"

    def test_no_access_lines(self):
        for _ in range(3):
            self.assertEqual(self.gw.post("/chat/completions", chat_body()).status, 200)
        self.assertEqual(self.gw.post("/chat/completions", chat_body(model="nope")).status, 400)
        self.assertEqual(self.gw.request("GET", "/health/readiness").status, 200)
        stdout, stderr = self.stop_gateway()
        access = [l for l in (stdout + stderr).splitlines() if ANY_ACCESS_RE.search(l)]
        self.assertFalse(access, "access lines at LITELLM_LOG=ERROR: %r" % access[:5])


class JsonLogTest(LogCase):

    LOG_LEVEL = "INFO"
    LITELLM_SETTINGS = {"json_logs": True}

    def test_json_lines(self):
        self.assertEqual(self.gw.post("/chat/completions", chat_body()).status, 200)
        self.assertEqual(self.gw.post("/chat/completions", chat_body(model="nope")).status, 400)
        zgtest.wait_until(lambda: any(ACCESS_RE.search(m) for m in json_messages(self.gw.output())),
                          message="the access line, as a JSON message")
        stdout, stderr = self.stop_gateway()
        lines = [l for l in (stdout + "\n" + stderr).splitlines() if l.strip()]
        self.assertTrue(lines, "no log output at all")
        bad = []
        access = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                bad.append("not JSON: %r" % line)
                continue
            if not isinstance(obj, dict):
                bad.append("not an object: %r" % line)
                continue
            missing = [k for k in ("message", "level", "timestamp") if k not in obj]
            if missing:
                bad.append("missing %s: %r" % (missing, line))
                continue
            if ACCESS_RE.search(obj["message"]):
                access.append(obj)
        self.assertFalse(bad, "\n".join(bad[:10]))
        self.assertTrue(access, "no access line among the JSON messages")
        self.assertEqual(access[0]["level"], "INFO", access[0])
        self.assertRegex(access[0]["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class SecretsNotLoggedTest(LogCase):

    LOG_LEVEL = "DEBUG"

    def test_keys_never_logged(self):
        wrong_key = "sk-wrong-client-key-123456"
        self.assertEqual(self.gw.post("/chat/completions", chat_body()).status, 200)
        self.assertEqual(self.gw.post("/chat/completions", chat_body(), key=None,
                                      headers={"x-api-key": MASTER_KEY}).status, 200)
        self.assertEqual(self.gw.post("/chat/completions", chat_body(), key=None,
                                      headers={"API-Key": MASTER_KEY}).status, 200)
        status, _, events = zgtest.sse_events(
            self.gw.port, "/chat/completions", chat_body(stream=True),
            headers=zgtest.auth_headers())
        self.assertEqual((status, events[-1:]), (200, ["[DONE]"]), events)
        self.assertEqual(self.gw.post("/chat/completions", chat_body(), key=wrong_key).status, 401)
        self.assertEqual(self.gw.post("/chat/completions",
                                      chat_body(model="flaky", fake={"status": 500})).status, 500)
        self.assertEqual(self.gw.get("/model/info").status, 200)
        stdout, stderr = self.stop_gateway()
        output = stdout + stderr
        self.assertTrue(output.strip(), "no log output at DEBUG")
        for secret in (MASTER_KEY, UPSTREAM_KEY, wrong_key):
            leaked = [l for l in output.splitlines() if secret in l]
            self.assertFalse(leaked, "%s appears in the logs: %r" % (secret, leaked[:5]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
