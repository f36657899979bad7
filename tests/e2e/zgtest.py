"""Shared helpers for zgate's end-to-end tests.

Everything here uses the Python standard library only. Each test module
starts its own fake upstream(s) and gateway on loopback ports, waits for
conditions by polling (never sleep-then-assert), and stops every process it
started, even when a test fails. Process output goes to one file per
process so that a failing test can print it.

Environment:
    ZGATE_BIN          the zgate binary
    FAKE_UPSTREAM_BIN  the fake OpenAI upstream binary
    ZG_E2E_KEEP=1      keep temporary directories (for post-mortems)
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

MASTER_KEY = "sk-1234"
UPSTREAM_KEY = "sk-upstream-key"
UPSTREAM_MODEL = "fake-model"

#  Upper bounds for polling: generous, because sanitizer builds on two
#  cores are slow; a passing run never waits for them to expire.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
POLL_TIMEOUT = 30.0
HTTP_TIMEOUT = 60.0

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "ERROR: UndefinedBehaviorSanitizer",
)


# --------------------------------------------------------------------------
# Binaries


def _find_bin(env_name, names):
    path = os.environ.get(env_name)
    if path:
        return path
    #  Convenience for running a module by hand: look in build directories.
    for build in sorted(os.listdir(_REPO)):
        if not build.startswith("build"):
            continue
        for sub in ("", "supervisor", "fakeupstream", "tests"):
            for name in names:
                candidate = os.path.join(_REPO, build, sub, name)
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                    return candidate
    raise unittest.SkipTest("%s is not set and no built binary was found" % env_name)


def zgate_bin():
    return _find_bin("ZGATE_BIN", ["zgate"])


def fake_upstream_bin():
    return _find_bin("FAKE_UPSTREAM_BIN", ["fake_upstream"])


# --------------------------------------------------------------------------
# Small utilities


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port():
    """A port with no listener: connecting to it is refused."""
    return free_port()


class GiveUp(Exception):
    """Raised by a wait_until condition that can never become true."""


def wait_until(cond, timeout=POLL_TIMEOUT, interval=0.05, message=None):
    """Poll cond() until it returns a truthy value, and return that value.
    Raise AssertionError (with message, and the last exception cond raised,
    if any) when timeout seconds pass first. A GiveUp from cond ends the
    wait at once."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = cond()
            if value:
                return value
            last_error = None
        except GiveUp:
            raise
        except Exception as exc:  # the condition may fail while things start
            last_error = exc
        if time.monotonic() >= deadline:
            text = message or "condition not met"
            if last_error is not None:
                text += " (last error: %r)" % (last_error,)
            raise AssertionError("%s within %.0f s" % (text, timeout))
        time.sleep(interval)


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def yaml_scalar(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    #  A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(str(value))


def to_yaml(value, indent=0):
    """Block-style YAML for dicts, lists and scalars (enough for configs)."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append("%s%s:" % (pad, key))
                lines.append(to_yaml(item, indent + 1))
            elif isinstance(item, dict):
                lines.append("%s%s: {}" % (pad, key))
            elif isinstance(item, list):
                lines.append("%s%s: []" % (pad, key))
            else:
                lines.append("%s%s: %s" % (pad, key, yaml_scalar(item)))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                inner = to_yaml(item, indent + 1).split("\n")
                #  First key goes on the dash line.
                lines.append("%s- %s" % (pad, inner[0].lstrip()))
                lines.extend(inner[1:])
            elif isinstance(item, list) and item:
                lines.append("%s-" % pad)
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append("%s- %s" % (pad, yaml_scalar(item)))
    else:
        lines.append(pad + yaml_scalar(value))
    return "\n".join(lines)


def deployment(model_name, api_base, model=UPSTREAM_MODEL, api_key=UPSTREAM_KEY, **params):
    """One model_list entry on an OpenAI-compatible upstream."""
    litellm_params = {"model": "openai/" + model, "api_key": api_key, "api_base": api_base}
    litellm_params.update(params)
    return {"model_name": model_name, "litellm_params": litellm_params}


def make_config(model_list, master_key=MASTER_KEY, general=None, litellm=None, zgate=None):
    general_settings = {"master_key": master_key} if master_key else {}
    general_settings.update(general or {})
    litellm_settings = {"request_timeout": 600}
    litellm_settings.update(litellm or {})
    config = {"model_list": model_list, "general_settings": general_settings,
              "litellm_settings": litellm_settings}
    if zgate:
        config["zgate_settings"] = dict(zgate)
    return config


# --------------------------------------------------------------------------
# HTTP


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        #  Lower-case names; repeated headers are joined with ", ".
        self.headers = headers
        self.body = body

    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        body = self.text()
        if len(body) > 600:
            body = body[:600] + "..."
        return "<HTTP %d %s headers=%r body=%s>" % (self.status, self.reason, self.headers, body)


def _headers_dict(msg):
    result = {}
    for name, value in msg.items():
        key = name.lower()
        result[key] = result[key] + ", " + value if key in result else value
    return result


def auth_headers(key=MASTER_KEY):
    return {"Authorization": "Bearer " + key}


def _encode_body(body):
    if body is None:
        return None
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def http_request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT,
                 host="127.0.0.1"):
    """One request on a fresh connection. body: bytes, str or a JSON-able
    object. Returns a Response with the whole body read."""
    data = _encode_body(body)
    hdrs = dict(headers or {})
    if data is not None and not any(k.lower() == "content-type" for k in hdrs):
        hdrs["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        return Response(resp.status, resp.reason, _headers_dict(resp.msg), payload)
    finally:
        conn.close()


class SSEStream:
    """A streaming response read event by event.

    Use as a context manager; close() (or abort()) shuts the socket down so
    that the server sees the client go away at once."""

    def __init__(self, port, path, body, headers=None, timeout=HTTP_TIMEOUT, method="POST"):
        data = _encode_body(body)
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request(method, path, body=data, headers=hdrs)
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = _headers_dict(self.resp.msg)
        self.raw = bytearray()

    def next_event(self):
        """The data of the next event as a str (several data lines joined
        by newlines), or None at the end of the body."""
        data_lines = []
        saw_field = False
        while True:
            line = self.resp.readline()
            if not line:
                return "\n".join(data_lines) if saw_field else None
            self.raw += line
            line = line.decode("utf-8", "replace").rstrip("\r\n")
            if line == "":
                if saw_field:
                    return "\n".join(data_lines)
                continue
            saw_field = True
            if line.startswith("data:"):
                value = line[5:]
                if value.startswith(" "):
                    value = value[1:]
                data_lines.append(value)

    def events(self):
        """All remaining events' data, to the end of the body."""
        result = []
        while True:
            event = self.next_event()
            if event is None:
                return result
            result.append(event)

    def read_body(self):
        return self.resp.read()

    def abort(self):
        """Go away like a client that crashed: shut the socket down."""
        try:
            if self.sock is not None:
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.resp.close()
        except Exception:
            pass
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()
        return False


def sse_events(port, path, body, headers=None, timeout=HTTP_TIMEOUT):
    """(status, headers, [event data...]) of a whole streaming response."""
    with SSEStream(port, path, body, headers=headers, timeout=timeout) as stream:
        if stream.status != 200:
            return stream.status, stream.headers, [stream.read_body().decode("utf-8", "replace")]
        return stream.status, stream.headers, stream.events()


def json_events(events):
    """Parse the data of every event but the final [DONE]."""
    return [json.loads(e) for e in events if e != "[DONE]"]


def content_of(chunks, key="content"):
    """The text carried by chat (delta.content) or completion (text) chunks."""
    parts = []
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            if "delta" in choice:
                parts.append((choice.get("delta") or {}).get(key) or "")
            elif "text" in choice:
                parts.append(choice.get("text") or "")
    return "".join(parts)


def is_usage_chunk(chunk):
    return chunk.get("choices") == [] and chunk.get("usage") is not None


def connect_raw(port):
    return socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT)


def send_and_abandon(port, path, body, headers=None):
    """Send a request and return the open socket without reading anything."""
    data = _encode_body(body)
    hdrs = {"Host": "127.0.0.1:%d" % port, "Content-Type": "application/json",
            "Content-Length": str(len(data)), "Connection": "close"}
    hdrs.update(headers or {})
    head = "%s %s HTTP/1.1\r\n" % ("POST", path)
    head += "".join("%s: %s\r\n" % (k, v) for k, v in hdrs.items()) + "\r\n"
    sock = connect_raw(port)
    sock.sendall(head.encode() + data)
    return sock


def abort_socket(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------
# Processes


def child_pids(pid):
    """Direct children of pid."""
    children = set()
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                    children.update(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    if children:
        return sorted(children)
    #  Kernels without the children file: scan every process's ppid.
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        #  The command name is in parentheses and may contain spaces.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.add(int(entry))
    return sorted(children)


def process_argv(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def process_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        return stat[stat.rfind(")") + 2:].split()[0]
    except OSError:
        return None


def is_alive(pid):
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def children_by_role(pid, role):
    """Live children of pid whose argv[1] is role."""
    result = []
    for child in child_pids(pid):
        argv = process_argv(child)
        if len(argv) > 1 and argv[1] == role and is_alive(child):
            result.append(child)
    return result


class Process:
    """A child process whose stdout and stderr go to files."""

    def __init__(self, argv, workdir, name, env=None, cwd=None):
        self.argv = list(argv)
        self.name = name
        self.stdout_path = os.path.join(workdir, name + ".stdout.log")
        self.stderr_path = os.path.join(workdir, name + ".stderr.log")
        full_env = dict(os.environ)
        full_env.update(env or {})
        #  Sanitizer reports must be visible; do not abort the whole tree on
        #  a leak report so that the report itself reaches the log.
        full_env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, env=full_env, cwd=cwd)
        self.pid = self.popen.pid

    def stdout(self):
        return read_text(self.stdout_path)

    def stderr(self):
        return read_text(self.stderr_path)

    def output(self):
        return self.stdout() + self.stderr()

    def poll(self):
        return self.popen.poll()

    def wait(self, timeout=STOP_TIMEOUT):
        """The exit code, or None if it did not exit in time."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait (bounded), then SIGKILL. Returns (exit code,
        whether it stopped on SIGTERM)."""
        if self.popen.poll() is not None:
            return self.popen.returncode, True
        try:
            self.popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        code = self.wait(timeout)
        if code is not None:
            return code, True
        self.kill()
        return self.popen.returncode, False

    def kill(self):
        try:
            self.popen.kill()
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

    def describe(self):
        return "---- %s (%s) stdout ----\n%s\n---- %s stderr ----\n%s" % (
            self.name, " ".join(self.argv), _tail(self.stdout()), self.name, _tail(self.stderr()))


def _tail(text, limit=20000):
    if len(text) > limit:
        return "[... %d bytes cut ...]\n%s" % (len(text) - limit, text[-limit:])
    return text


class FakeUpstream:
    """The fake OpenAI upstream, on a port of its own choosing."""

    LISTEN_RE = re.compile(r"fake_upstream listening on 127\.0\.0\.1:(\d+)")

    def __init__(self, workdir, name="upstream", args=()):
        self.proc = Process([fake_upstream_bin(), "--port", "0"] + list(args), workdir, name)
        try:
            match = wait_until(lambda: self._listening(), START_TIMEOUT,
                               message="fake upstream printed its port")
        except (AssertionError, GiveUp) as exc:
            self.proc.kill()
            raise AssertionError("fake upstream did not start: %s\n%s" % (exc, self.proc.describe()))
        self.port = int(match.group(1))
        self.api_base = "http://127.0.0.1:%d/v1" % self.port

    def _listening(self):
        match = self.LISTEN_RE.search(self.proc.stdout())
        if match:
            return match
        if self.proc.poll() is not None:
            raise GiveUp("fake upstream exited with %s" % self.proc.poll())
        return None

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        return http_request(self.port, method, path, body=body, headers=headers, timeout=timeout)

    def stats(self):
        resp = self.request("GET", "/stats")
        assert resp.status == 200, resp
        return resp.json()

    def reset_stats(self):
        resp = self.request("POST", "/stats/reset")
        assert resp.status in (200, 204), resp

    def last_request(self):
        resp = self.request("GET", "/last_request")
        assert resp.status == 200, resp
        return resp.json()

    def stop(self):
        self.proc.stop(timeout=10)


class Gateway:
    """A zgate supervisor tree on a free loopback port."""

    def __init__(self, workdir, config, num_workers=2, env=None, name="zgate",
                 extra_args=(), wait_ready=True, config_text=None, cwd=None, wrapper=(),
                 run_dir=None):
        self.workdir = workdir
        self.name = name
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="run-", dir=workdir)
        self.config_path = os.path.join(workdir, name + ".config.yaml")
        with open(self.config_path, "w") as f:
            f.write(config_text if config_text is not None else to_yaml(config) + "\n")
        self.port = free_port()
        self.num_workers = num_workers
        full_env = {"ZGATE_RUN_DIR": self.run_dir}
        full_env.update(env or {})
        #  wrapper: a command that ends by executing the rest (setpriv,
        #  unshare), so that the process started is zgate's supervisor
        argv = list(wrapper) + [
            zgate_bin(), "--config", self.config_path, "--host", "127.0.0.1",
            "--port", str(self.port), "--num_workers", str(num_workers)] + list(extra_args)
        self.proc = Process(argv, workdir, name, env=full_env, cwd=cwd)
        self.pid = self.proc.pid
        self.known_children = set()
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=START_TIMEOUT):
        def ready():
            if self.proc.poll() is not None:
                raise GiveUp("zgate exited with %s" % self.proc.poll())
            self._remember_children()
            return self.request("GET", "/health/readiness", timeout=5).status == 200
        try:
            wait_until(ready, timeout, interval=0.1, message="GET /health/readiness answered 200")
        except (AssertionError, GiveUp) as exc:
            self.stop()
            raise AssertionError("zgate did not become ready: %s\n%s" % (exc, self.proc.describe()))

    def _remember_children(self):
        for child in child_pids(self.pid):
            self.known_children.add(child)

    def children(self, role):
        return children_by_role(self.pid, role)

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        return http_request(self.port, method, path, body=body, headers=headers, timeout=timeout)

    def post(self, path, body, key=MASTER_KEY, headers=None, timeout=HTTP_TIMEOUT):
        hdrs = auth_headers(key) if key else {}
        hdrs.update(headers or {})
        return self.request("POST", path, body=body, headers=hdrs, timeout=timeout)

    def get(self, path, key=MASTER_KEY, headers=None, timeout=HTTP_TIMEOUT):
        hdrs = auth_headers(key) if key else {}
        hdrs.update(headers or {})
        return self.request("GET", path, headers=hdrs, timeout=timeout)

    def stream(self, path, body, key=MASTER_KEY, headers=None, timeout=HTTP_TIMEOUT):
        hdrs = auth_headers(key) if key else {}
        hdrs.update(headers or {})
        return SSEStream(self.port, path, body, headers=hdrs, timeout=timeout)

    def output(self):
        return self.proc.output()

    def describe(self):
        return self.proc.describe()

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM the supervisor and wait for it and every child it had.
        Returns a list of problems (empty when the stop was clean)."""
        self._remember_children()
        problems = []
        code, graceful = self.proc.stop(timeout)
        if not graceful:
            problems.append("zgate did not exit within %.0f s of SIGTERM" % timeout)
        elif code != 0:
            problems.append("zgate exited with %s after SIGTERM" % code)
        for child in sorted(self.known_children):
            try:
                wait_until(lambda: not is_alive(child), timeout, interval=0.1)
            except AssertionError:
                problems.append("child %d (%s) still alive after zgate exited"
                                % (child, " ".join(process_argv(child))))
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
        return problems

    def sanitizer_reports(self):
        text = self.output()
        return [line for line in text.splitlines() if any(m in line for m in SANITIZER_MARKERS)]


# --------------------------------------------------------------------------
# Test case base


class GatewayTestCase(unittest.TestCase):
    """Base class: a temporary directory per class, processes stopped in
    tearDownClass, their output printed when a test of the class failed."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="zg-e2e-%s-" % cls.__name__)
        cls._upstreams = []
        cls._gateways = []
        cls._failed = False
        try:
            cls.start()
        except BaseException:
            cls._cleanup(print_logs=True)
            raise

    @classmethod
    def start(cls):
        """Override: start what the class needs."""

    @classmethod
    def upstream(cls, name="upstream", args=()):
        up = FakeUpstream(cls.workdir, name=name, args=args)
        cls._upstreams.append(up)
        return up

    @classmethod
    def gateway(cls, config, **kwargs):
        gw = Gateway(cls.workdir, config, **kwargs)
        cls._gateways.append(gw)
        return gw

    @classmethod
    def _cleanup(cls, print_logs):
        problems = []
        for gw in cls._gateways:
            problems += ["%s: %s" % (gw.name, p) for p in gw.stop()]
            problems += ["%s: sanitizer: %s" % (gw.name, r) for r in gw.sanitizer_reports()]
        for up in cls._upstreams:
            up.stop()
        if print_logs or problems:
            for gw in cls._gateways:
                sys.stderr.write("\n" + gw.describe() + "\n")
            for up in cls._upstreams:
                sys.stderr.write("\n" + up.proc.describe() + "\n")
        if os.environ.get("ZG_E2E_KEEP") != "1":
            shutil.rmtree(cls.workdir, ignore_errors=True)
        else:
            sys.stderr.write("kept %s\n" % cls.workdir)
        cls._gateways = []
        cls._upstreams = []
        return problems

    @classmethod
    def tearDownClass(cls):
        problems = cls._cleanup(print_logs=cls._failed)
        if problems:
            raise AssertionError("shutdown problems:\n  " + "\n  ".join(problems))

    def run(self, result=None):
        result = result if result is not None else self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        outcome = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            type(self)._failed = True
        return outcome

    # Assertions shared by the modules

    def assertErrorShape(self, resp, status, message_part=None):
        """resp has status and the reference's error JSON with code == str(status)."""
        self.assertEqual(resp.status, status, resp)
        try:
            body = resp.json()
        except ValueError:
            self.fail("error body is not JSON: %r" % (resp,))
        self.assertIsInstance(body, dict, resp)
        self.assertIn("error", body, resp)
        error = body["error"]
        self.assertIsInstance(error, dict, resp)
        for key in ("message", "type", "param", "code"):
            self.assertIn(key, error, "error.%s missing: %r" % (key, resp))
        self.assertIsInstance(error["message"], str, resp)
        self.assertEqual(error["code"], str(status), resp)
        if message_part is not None:
            self.assertIn(message_part, error["message"], resp)
        return error


def chat_body(model="gpt-4o", content="hello", fake=None, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    if fake:
        body["fake"] = fake
    return body


def run_threads(count, target, timeout=HTTP_TIMEOUT * 2):
    """Run target(i) in count threads; return the list of results (or the
    exceptions they raised). Every thread is bounded by its own HTTP
    timeouts; join is bounded too."""
    results = [None] * count

    def body(i):
        try:
            results[i] = target(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for i, t in enumerate(threads):
        if t.is_alive():
            results[i] = AssertionError("thread %d still running after %.0f s" % (i, timeout))
    return results
