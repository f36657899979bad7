"""End-to-end: Redis in /health/readiness and /metrics.

With Redis configured zgate watches it (connect, AUTH, PING every
redis_probe_interval_ms from a thread of the frontend) and reports what it
finds (the rate-limit counters it keeps there are test_ratelimit_redis.py's): "cache": "redis" and checks.redis in
readiness on the main port and on the separate health app, and
litellm_redis_latency / litellm_redis_fails in /metrics. A Redis down,
refusing the password or never answering is reported and keeps readiness
200: the gateway serves without it.

A real redis-server (Debian's redis-server package; skipped without it)
runs on a free loopback port with requirepass, in a temporary directory,
and is stopped at the end; a plain listening socket that never answers
stands for a hung Redis.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import chat_body, wait_until  # noqa: E402
from test_health import metric, readiness, wait_readiness  # noqa: E402

PASSWORD = "redis-e2e-pass-7f3a9"
#  Heartbeats and checks every 200 ms, a check waits at most 300 ms
FAST = {"heartbeat_ms": 200, "redis_probe_interval_ms": 200, "redis_timeout_ms": 300}


def redis_server_bin():
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)


class RedisServer:
    """redis-server on 127.0.0.1:port with requirepass, no persistence."""

    def __init__(self, workdir, password=PASSWORD):
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = zgtest.free_port()
        self.password = password
        self.proc = None
        self.start()

    def start(self):
        log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [redis_server_bin(), "--bind", "127.0.0.1", "--port", str(self.port),
             "--requirepass", self.password, "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_until(self.answers, zgtest.START_TIMEOUT, interval=0.05,
                   message="redis-server answers PING")

    def answers(self):
        if self.proc.poll() is not None:
            raise zgtest.GiveUp("redis-server exited with %s" % self.proc.poll())
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n"
                             % (len(self.password), self.password.encode()))
                answer = b""
                while b"PONG" not in answer:
                    data = sock.recv(256)
                    if not data:
                        return False
                    answer += data
                return True
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=zgtest.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class SilentServer:
    """Accepts connections and reads, never answers: a hung Redis."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def stop(self):
        self.stopping = True
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self.thread.join(timeout=5)


def redis_config(upstream, router=None, litellm=None):
    config = zgtest.make_config([zgtest.deployment("gpt-4o", upstream.api_base)],
                                litellm=litellm, zgate=FAST)
    if router:
        config["router_settings"] = router
    return config


class RedisCase(zgtest.GatewayTestCase):
    """Stops the servers a class started, whatever happened."""

    servers = ()

    @classmethod
    def _cleanup(cls, print_logs):
        problems = super()._cleanup(print_logs)
        for server in cls.servers:
            server.stop()
        cls.servers = ()
        return problems

    def assertServes(self, gw):
        resp = gw.post("/v1/chat/completions", chat_body())
        self.assertEqual(resp.status, 200, resp)

    def assertRedis(self, port, verdict_part, status=200):
        """Readiness on port answers status with checks.redis starting
        with verdict_part (polled)."""
        body = wait_readiness(port, status, '"redis":"' + verdict_part).json()
        self.assertEqual(body["cache"], "redis")
        self.assertTrue(body["checks"]["redis"].startswith(verdict_part), body)
        self.assertNotIn(PASSWORD, str(body))
        return body

    def assertPasswordNeverLogged(self, gw):
        #  After zgate exited, so that every line is in
        self.assertEqual(gw.stop(), [])
        self.assertNotIn(PASSWORD, gw.output())
        self.assertNotIn("wrong-" + PASSWORD, gw.output())


@unittest.skipUnless(redis_server_bin(), "redis-server is not installed (scripts/install-deps.sh test)")
class RedisHealthTest(RedisCase):
    """router_settings.redis_host/port/password from os.environ, as the
    production guide writes them; the separate health app on."""

    @classmethod
    def start(cls):
        cls.redis = RedisServer(cls.workdir)
        cls.servers = (cls.redis,)
        cls.up = cls.upstream()
        cls.health_port = zgtest.free_port()
        config = redis_config(cls.up, router={
            "redis_host": "os.environ/REDIS_HOST",
            "redis_port": "os.environ/REDIS_PORT",
            "redis_password": "os.environ/REDIS_PASSWORD"})
        cls.gw = cls.gateway(config, num_workers=1, env={
            "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(cls.redis.port),
            "REDIS_PASSWORD": PASSWORD,
            "SEPARATE_HEALTH_APP": "1", "SEPARATE_HEALTH_PORT": str(cls.health_port)})

    def setUp(self):
        if self.redis.proc is None:
            self.redis.start()

    def test_1_healthy_on_both_ports(self):
        for port in (self.gw.port, self.health_port):
            body = self.assertRedis(port, "healthy")
            self.assertEqual(body["checks"]["redis"], "healthy")
            self.assertEqual(body["status"], "healthy")
            self.assertGreaterEqual(body["checks"]["redis_ping_ms"], 0)
            self.assertLess(body["checks"]["redis_checked_ms_ago"], 10000)
        self.assertServes(self.gw)

        def latency_counted():
            text = self.gw.request("GET", "/metrics").text()
            return (metric(text, "litellm_redis_latency_count", redis="redis") or 0) >= 2
        wait_until(latency_counted, message="litellm_redis_latency counts the checks")
        text = self.gw.request("GET", "/metrics").text()
        self.assertIn("# TYPE litellm_redis_latency histogram", text)
        self.assertIn("# TYPE litellm_redis_fails counter", text)
        self.assertEqual(metric(text, "zgate_redis_up"), 1)
        self.assertEqual(metric(text, "litellm_redis_fails_total", redis="redis"), 0)
        self.assertIsNotNone(metric(text, "litellm_redis_latency_bucket", redis="redis", le="+Inf"))

    def test_2_stopped_then_restarted(self):
        self.assertRedis(self.gw.port, "healthy")
        self.redis.stop()
        for port in (self.gw.port, self.health_port):
            body = self.assertRedis(port, "unhealthy: ")
            self.assertEqual(body["status"], "healthy")
            self.assertRegex(body["checks"]["redis"],
                             "unhealthy: (connect: Connection refused|PING: .*)")
        #  The gateway serves without it, and counts the failed checks
        self.assertServes(self.gw)

        def fails_counted():
            text = self.gw.request("GET", "/metrics").text()
            return (metric(text, "litellm_redis_fails_total", redis="redis") or 0) >= 1
        wait_until(fails_counted, message="litellm_redis_fails counts the failed checks")
        self.assertEqual(metric(self.gw.request("GET", "/metrics").text(), "zgate_redis_up"), 0)

        self.redis.start()
        for port in (self.gw.port, self.health_port):
            body = self.assertRedis(port, "healthy")
            self.assertEqual(body["checks"]["redis"], "healthy")
        self.assertServes(self.gw)

    def test_3_password_never_logged(self):
        self.assertRedis(self.gw.port, "healthy")
        self.assertPasswordNeverLogged(self.gw)


@unittest.skipUnless(redis_server_bin(), "redis-server is not installed (scripts/install-deps.sh test)")
class RedisWrongPasswordTest(RedisCase):
    """redis_url with a wrong password: refused by Redis, reported, never
    shown; the gateway serves."""

    @classmethod
    def start(cls):
        cls.redis = RedisServer(cls.workdir)
        cls.servers = (cls.redis,)
        cls.up = cls.upstream()
        config = redis_config(cls.up, router={
            "redis_url": "redis://:wrong-%s@127.0.0.1:%d/0" % (PASSWORD, cls.redis.port)})
        cls.gw = cls.gateway(config, num_workers=1)

    def test_auth_refused(self):
        body = self.assertRedis(self.gw.port, "unhealthy: AUTH refused: WRONGPASS")
        self.assertEqual(body["status"], "healthy")
        self.assertServes(self.gw)

        def fails_counted():
            text = self.gw.request("GET", "/metrics").text()
            return (metric(text, "litellm_redis_fails_total", redis="redis") or 0) >= 2
        wait_until(fails_counted, message="litellm_redis_fails counts the refused checks")
        self.assertPasswordNeverLogged(self.gw)
        self.assertIn("AUTH refused: WRONGPASS", self.gw.output())


class RedisUrlTest(RedisCase):
    """redis_url with the right password answers; a hung Redis (accepts,
    never answers) is a timeout, and readiness still answers at once."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.silent = SilentServer()
        cls.servers = (cls.silent,)
        if redis_server_bin():
            cls.redis = RedisServer(cls.workdir)
            cls.servers = (cls.silent, cls.redis)
        cls.health_port = zgtest.free_port()
        #  A redis cache (cache_params), pointed at the silent server
        config = redis_config(cls.up, litellm={
            "cache": True,
            "cache_params": {"type": "redis", "host": "127.0.0.1", "port": cls.silent.port,
                             "password": PASSWORD}})
        cls.hung = cls.gateway(config, num_workers=1, name="hung", env={
            "SEPARATE_HEALTH_APP": "1", "SEPARATE_HEALTH_PORT": str(cls.health_port)})

    def test_hung_redis_is_a_timeout(self):
        for port in (self.hung.port, self.health_port):
            body = self.assertRedis(port, "unhealthy: AUTH: no answer within 300 ms")
            self.assertEqual(body["status"], "healthy")
        #  Every readiness answer comes from memory: none waits on Redis
        for _ in range(20):
            for port in (self.hung.port, self.health_port):
                started = time.monotonic()
                resp = readiness(port, timeout=5)
                self.assertEqual(resp.status, 200, resp)
                self.assertLess(time.monotonic() - started, 2.0)
        self.assertServes(self.hung)
        text = self.hung.request("GET", "/metrics").text()
        self.assertGreaterEqual(metric(text, "litellm_redis_fails_total", redis="redis"), 1)
        self.assertEqual(metric(text, "zgate_redis_up"), 0)

    @unittest.skipUnless(redis_server_bin(), "redis-server is not installed")
    def test_url_with_the_right_password(self):
        config = redis_config(self.up, router={
            "redis_url": "redis://:%s@127.0.0.1:%d/1" % (PASSWORD, self.redis.port)})
        gw = self.gateway(config, num_workers=1, name="url")
        body = self.assertRedis(gw.port, "healthy")
        self.assertEqual(body["checks"]["redis"], "healthy")
        self.assertServes(gw)
        self.assertPasswordNeverLogged(gw)


class RedisConfigErrorTest(unittest.TestCase):
    """rediss:// is refused at start with file, line and key, never the
    password."""

    def test_rediss_refused(self):
        workdir = zgtest.tempfile.mkdtemp(prefix="zg-e2e-rediss-")
        try:
            up_port = zgtest.closed_port()
            config = zgtest.make_config(
                [zgtest.deployment("gpt-4o", "http://127.0.0.1:%d/v1" % up_port)])
            config["router_settings"] = {"redis_url": "rediss://:%s@127.0.0.1:6380" % PASSWORD}
            gw = zgtest.Gateway(workdir, config, num_workers=1, wait_ready=False)
            code = gw.proc.wait(timeout=zgtest.STOP_TIMEOUT)
            output = gw.output()
            self.assertNotEqual(code, 0, output)
            self.assertRegex(output, r"zgate\.config\.yaml:\d+: router_settings\.redis_url: "
                                     r"rediss:// \(Redis over TLS\) is not supported")
            self.assertNotIn(PASSWORD, output)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
