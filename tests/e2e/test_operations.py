"""End-to-end: running zgate in production.

Worker recycling under load (no request fails, every spend record reaches
PostgreSQL once), a replacement that never registers, SIGKILL of each actor
kind in turn, the stop (a second signal and SUPERVISORD_STOPWAITSECS end a
hanging request), a run as a non-root user, and a run with a read-only root
filesystem.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgpg  # noqa: E402
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402

NOBODY_UID = 65534


def load(port, count, threads, stream_every=0):
    """count chat requests over `threads` keep-alive connections (every
    stream_every-th one a stream). Returns (call ids, failures)."""
    ids, failures = [], []
    lock = threading.Lock()
    next_index = [0]
    headers = dict(zgtest.auth_headers(), **{"Content-Type": "application/json"})

    def one(conn, index):
        stream = bool(stream_every) and index % stream_every == 0
        body = chat_body(content="load %d" % index, stream=stream)
        conn.request("POST", "/chat/completions", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return None, "request %d: %d %r" % (index, resp.status, data[:300])
        if stream and not data.rstrip().endswith(b"data: [DONE]"):
            return None, "stream %d did not end with [DONE]: %r" % (index, data[-300:])
        return resp.getheader("x-litellm-call-id"), None

    def worker(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=zgtest.HTTP_TIMEOUT)
        try:
            while True:
                with lock:
                    if next_index[0] >= count:
                        return
                    next_index[0] += 1
                    index = next_index[0]
                try:
                    call_id, failure = one(conn, index)
                except (OSError, http.client.HTTPException) as exc:
                    call_id, failure = None, "request %d: %r" % (index, exc)
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port,
                                                      timeout=zgtest.HTTP_TIMEOUT)
                with lock:
                    if failure:
                        failures.append(failure)
                    else:
                        ids.append(call_id)
        finally:
            conn.close()

    for result in zgtest.run_threads(threads, worker, timeout=240):
        if isinstance(result, BaseException):
            failures.append(repr(result))
    return ids, failures


def refuses_connections(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            #  A connection the kernel queued before the socket was shut
            #  down is reset, which is a refusal too
            sock.settimeout(0.5)
            try:
                return sock.recv(1) == b""
            except socket.timeout:
                return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return True


def uid_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def assert_serves_as_nobody(test):
    """A chat answer and a whole stream from test.gw, every process of which
    runs as nobody; returns their pids"""
    test.assertEqual(test.gw.post("/chat/completions", chat_body()).status, 200)
    status, _, events = zgtest.sse_events(test.gw.port, "/chat/completions",
                                          chat_body(stream=True),
                                          headers=zgtest.auth_headers())
    test.assertEqual((status, events[-1]), (200, "[DONE]"))
    pids = [test.gw.pid] + zgtest.child_pids(test.gw.pid)
    test.assertEqual({uid_of(pid) for pid in pids}, {NOBODY_UID})
    return pids


class RecycleTest(zgtest.GatewayTestCase):
    """Recycling every 50 requests (plus jitter) with two workers and a
    database: thousands of requests, none fails, one spend row each."""

    REQUESTS = 3000
    THREADS = 24

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        cls.db = "recycle"
        url = cls.pg.create_database(cls.db)
        config = zgtest.make_config(
            [zgtest.deployment("gpt-4o", cls.up.api_base,
                               input_cost_per_token=0.000001, output_cost_per_token=0.000002)],
            general={"database_url": url, "proxy_batch_write_at": 1},
            zgate={"heartbeat_ms": 200})
        env = {"ZGATE_SPILL_DIR": os.path.join(cls.workdir, "spill")}
        cls.gw = cls.gateway(config, num_workers=2, env=env,
                             extra_args=["--max_requests_before_restart", "50", "--run_gunicorn"])
        cls.sent = []

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.pg.stop()

    def rows(self):
        return [r[0] for r in self.pg.query('SELECT request_id FROM "LiteLLM_SpendLogs"',
                                            db=self.db)]

    def row_count(self):
        try:
            return int(self.pg.scalar('SELECT count(*) FROM "LiteLLM_SpendLogs"', db=self.db))
        except Exception:
            return -1

    def assertRowsAre(self, ids):
        zgtest.wait_until(lambda: self.row_count() >= len(ids), 120, interval=0.2,
                          message="%d rows in LiteLLM_SpendLogs" % len(ids))
        self.assertEqual(sorted(self.rows()), sorted(ids))

    def test_1_recycling_under_load(self):
        self.assertIn("--run_gunicorn is accepted and changes nothing", self.gw.output())
        ids, failures = load(self.gw.port, self.REQUESTS, self.THREADS, stream_every=10)
        self.assertFalse(failures, "%d failed, first: %r" % (len(failures), failures[:5]))
        self.assertEqual(len(ids), self.REQUESTS)
        self.assertEqual(len(set(ids)), self.REQUESTS)
        type(self).sent += ids
        recycles = self.gw.output().count("zgate:INFO: recycling worker-")
        self.assertGreater(recycles, 0, "no worker was recycled")
        #  Every worker told to go finished what it held and exited 0
        zgtest.wait_until(
            lambda: self.gw.output().count(") retired\n") >= 2 * recycles,
            message="the %d recycled workers retired (router and supervisor)" % recycles)
        self.assertNotIn("while retiring", self.gw.output())
        self.assertNotIn("while being recycled", self.gw.output())
        zgtest.wait_until(lambda: len(self.gw.children("worker")) == 2,
                          message="two workers once the recycling settled")
        self.assertRowsAre(type(self).sent)
        sys.stderr.write("\n  %d requests, %d recycles\n" % (self.REQUESTS, recycles))

    def test_2_kill_each_actor_in_turn(self):
        #  The router keeps a record until the spend actor commits it; a
        #  SIGKILLed frontend takes the router thread with it, so each kill
        #  waits until what was sent is written
        for role in ("spend", "worker", "frontend"):
            self.assertRowsAre(type(self).sent)
            victims = zgtest.wait_until(lambda: self.gw.children(role),
                                        message="a %s process" % role)
            os.kill(victims[0], signal.SIGKILL)
            zgtest.wait_until(lambda: victims[0] not in self.gw.children(role)
                              and self.gw.children(role),
                              message="a new %s replaced the killed one" % role)
            first = zgtest.wait_until(
                lambda: (lambda r: r if r.status == 200 else None)(
                    self.gw.post("/chat/completions", chat_body(content="after " + role),
                                 timeout=10)),
                message="a request answered after the %s was killed" % role)
            ids, failures = load(self.gw.port, 100, 8)
            self.assertFalse(failures, "after killing the %s: %r" % (role, failures[:5]))
            type(self).sent += ids + [first.headers["x-litellm-call-id"]]
        self.assertRowsAre(type(self).sent)


class RecycleReplacementNotReadyTest(zgtest.GatewayTestCase):
    """A replacement that does not register in time: the old worker serves
    on, and the supervisor tries again later."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)]),
                             num_workers=1,
                             env={"MAX_REQUESTS_BEFORE_RESTART": "10",
                                  "ZGATE_RECYCLE_READY_MS": "1"})

    def test_old_worker_serves_on(self):
        original = zgtest.wait_until(lambda: self.gw.children("worker"), message="a worker")[0]
        for index in range(40):
            resp = self.gw.post("/chat/completions", chat_body(content="n %d" % index))
            self.assertEqual(resp.status, 200, resp)
        zgtest.wait_until(lambda: "did not register within 1 ms" in self.gw.output(),
                          message="the late replacement reported")
        self.assertIn("pid %d serves on" % original, self.gw.output())
        self.assertTrue(zgtest.is_alive(original))
        self.assertNotIn("zgate:INFO: recycling worker-", self.gw.output())
        resp = self.gw.post("/chat/completions", chat_body(content="still served"))
        self.assertEqual(resp.status, 200, resp)


class StopTest(zgtest.GatewayTestCase):
    """A request that hangs upstream: the first SIGTERM waits for it, a
    second signal or the stop deadline ends it."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()

    def start_gateway(self, name, env=None):
        gw = self.gateway(zgtest.make_config([zgtest.deployment("gpt-4o", self.up.api_base)]),
                          num_workers=1, name=name, env=env)
        outcome = []

        def hang():
            try:
                outcome.append(gw.post("/chat/completions",
                                       chat_body(content="hang", fake={"latency_ms": 120000}),
                                       timeout=100))
            except (OSError, http.client.HTTPException) as exc:
                outcome.append(exc)

        before = self.up.stats()["active"]
        thread = threading.Thread(target=hang, daemon=True)
        thread.start()
        zgtest.wait_until(lambda: self.up.stats()["active"] > before,
                          message="the request reached the upstream")
        return gw, thread, outcome

    def assertEnded(self, gw, thread, outcome):
        thread.join(30)
        self.assertFalse(thread.is_alive(), "the hanging request did not end")
        self.assertTrue(isinstance(outcome[0], BaseException) or outcome[0].status != 200,
                        outcome)
        self.assertEqual(gw.proc.wait(30), 0, "zgate did not exit 0")
        self.assertEqual(gw.sanitizer_reports(), [])

    def test_second_signal_ends_hanging_request(self):
        gw, thread, outcome = self.start_gateway("zgate-second")
        gw.proc.popen.send_signal(signal.SIGTERM)
        zgtest.wait_until(lambda: refuses_connections(gw.port),
                          message="new connections refused while draining")
        #  It can only end by itself after 120 s
        self.assertTrue(thread.is_alive(), "the first SIGTERM did not wait for the request")
        gw.proc.popen.send_signal(signal.SIGINT)
        self.assertEnded(gw, thread, outcome)
        self.assertIn("second SIGINT: ending the requests in flight now", gw.output())

    def test_stop_deadline_ends_hanging_request(self):
        gw, thread, outcome = self.start_gateway("zgate-deadline",
                                                 env={"SUPERVISORD_STOPWAITSECS": "2"})
        signalled = time.monotonic()
        gw.proc.popen.send_signal(signal.SIGTERM)
        self.assertEnded(gw, thread, outcome)
        self.assertGreaterEqual(time.monotonic() - signalled, 2.0)
        self.assertIn("requests still running 2 s after the stop signal", gw.output())


def _nobody_available():
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _read_only_root_available():
    script = "mount --make-rprivate / && mount -o remount,bind,ro / && ! touch /zg-ro-probe"
    try:
        return subprocess.run(["unshare", "--mount", "--", "sh", "-c", script],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@unittest.skipUnless(_nobody_available(), "needs root to start zgate as nobody")
class NonRootTest(zgtest.GatewayTestCase):
    """zgate started as nobody, in a working directory it cannot write, with
    its run directory the only place it may write."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        os.chmod(cls.workdir, 0o755)
        cls.cwd = os.path.join(cls.workdir, "cwd")
        os.mkdir(cls.cwd, 0o755)
        cls.run_dir = os.path.join(cls.workdir, "run")
        os.mkdir(cls.run_dir, 0o700)
        os.chown(cls.run_dir, NOBODY_UID, NOBODY_UID)
        cls.started = time.time()
        cls.cwd_before = sorted(os.listdir(cls.cwd))
        cls.gw = cls.gateway(zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)]),
                             num_workers=1, cwd=cls.cwd, run_dir=cls.run_dir, wrapper=AS_NOBODY,
                             env={"LITELLM_NON_ROOT": "true"})

    def test_serves_as_nobody_and_writes_only_its_run_dir(self):
        pids = assert_serves_as_nobody(self)
        self.assertGreaterEqual(len(pids), 3)
        self.assertIn("LITELLM_NON_ROOT=true: accepted", self.gw.output())
        self.assertEqual(self.gw.stop(), [])
        self.assertEqual(sorted(os.listdir(self.cwd)), self.cwd_before)
        created = [name for name in os.listdir("/tmp")
                   if os.lstat(os.path.join("/tmp", name)).st_uid == NOBODY_UID
                   and os.lstat(os.path.join("/tmp", name)).st_ctime >= self.started]
        self.assertEqual(created, [], "zgate wrote to /tmp")
        self.assertNotIn("Permission denied", self.gw.output())


@unittest.skipUnless(_nobody_available() and _read_only_root_available(),
                     "needs root and a private mount namespace")
class ReadOnlyRootTest(zgtest.GatewayTestCase):
    """zgate as nobody in a mount namespace where / is read-only and only
    ZGATE_RUN_DIR (a tmpfs) is writable."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        os.chmod(cls.workdir, 0o755)
        cls.run_dir = os.path.join(cls.workdir, "run")
        os.mkdir(cls.run_dir, 0o755)
        script = ('mount --make-rprivate / && mount -o remount,bind,ro / && '
                  'mount -t tmpfs -o mode=0700,uid=%d,gid=%d zgate-run "$0" && exec "$@"'
                  % (NOBODY_UID, NOBODY_UID))
        wrapper = ["unshare", "--mount", "--", "sh", "-c", script, cls.run_dir] + AS_NOBODY
        cls.gw = cls.gateway(zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)]),
                             num_workers=1, cwd=cls.workdir, run_dir=cls.run_dir,
                             wrapper=wrapper)

    def test_serves_with_a_read_only_root(self):
        assert_serves_as_nobody(self)
        with open("/proc/%d/mountinfo" % self.gw.pid) as f:
            root = [line.split() for line in f if line.split()[4] == "/"]
        self.assertTrue(root and "ro" in root[0][5].split(","), root)
        self.assertEqual(self.gw.stop(), [])
        self.assertNotIn("Read-only file system", self.gw.output())
        #  The tmpfs went with the namespace: nothing was left on the disk
        self.assertEqual(os.listdir(self.run_dir), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
