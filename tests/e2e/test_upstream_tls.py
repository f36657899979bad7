"""End-to-end: an HTTPS upstream that offers HTTP/2 (nginx with TLS in front of
the fake upstream). The worker verifies the certificate against the CA named
by SSL_CERT_FILE, speaks HTTP/2 where the upstream offers it, and refuses an
upstream whose certificate it cannot verify."""

import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl")


def make_certificates(directory):
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    def run(*argv):
        subprocess.run([OPENSSL] + list(argv), cwd=directory, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=zgate test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    with open(os.path.join(directory, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return os.path.join(directory, "ca.pem")


@unittest.skipUnless(OPENSSL and os.path.exists(NGINX), "needs openssl and nginx")
class UpstreamTlsTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        tls_dir = os.path.join(cls.workdir, "tls")
        os.makedirs(tls_dir)
        cls.ca = make_certificates(tls_dir)
        cls.nginx_port = zgtest.free_port()
        cls.access_log = os.path.join(tls_dir, "access.log")
        conf = os.path.join(tls_dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""daemon off;
master_process off;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 256; }
http {
    log_format proto '$server_protocol $status';
    access_log %(log)s proto;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    server {
        listen 127.0.0.1:%(port)d ssl http2;
        ssl_certificate %(d)s/server.pem;
        ssl_certificate_key %(d)s/server.key;
        location / {
            proxy_pass http://127.0.0.1:%(up)d;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
""" % {"d": tls_dir, "log": cls.access_log, "port": cls.nginx_port, "up": cls.up.port})
        cls.nginx = zgtest.Process([NGINX, "-p", tls_dir, "-e", tls_dir + "/error.log", "-c", conf],
                                   cls.workdir, "nginx")
        zgtest.wait_until(lambda: os.path.exists(tls_dir + "/nginx.pid"), message="nginx started")
        api_base = "https://127.0.0.1:%d/v1" % cls.nginx_port
        config = zgtest.make_config([zgtest.deployment("gpt-4o", api_base)])
        cls.trusting = cls.gateway(config, num_workers=1, name="trusting",
                                   env={"SSL_CERT_FILE": cls.ca})
        cls.untrusting = cls.gateway(config, num_workers=1, name="untrusting")

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "nginx", None):
            cls.nginx.stop(timeout=10)
        super().tearDownClass()

    def test_http2_with_verified_certificate(self):
        resp = self.trusting.post("/v1/chat/completions", chat_body("gpt-4o"))
        self.assertEqual(resp.status, 200, "%r\n%s" % (resp, self.trusting.describe()))
        self.assertEqual(resp.json()["object"], "chat.completion")
        events = zgtest.sse_events(self.trusting.port, "/v1/chat/completions",
                                   chat_body("gpt-4o", stream=True),
                                   headers=zgtest.auth_headers())[2]
        self.assertEqual(events[-1], "[DONE]", events)
        zgtest.wait_until(lambda: os.path.exists(self.access_log)
                          and "HTTP/2.0 200" in zgtest.read_text(self.access_log),
                          message="nginx logged an HTTP/2 request")
        self.assertNotIn("HTTP/1.1", zgtest.read_text(self.access_log))

    def test_unverifiable_certificate_is_refused(self):
        resp = self.untrusting.post("/v1/chat/completions", chat_body("gpt-4o"))
        self.assertEqual(resp.status, 502, resp)
        error = resp.json()["error"]
        self.assertEqual(error["code"], "502", error)
        self.assertIn("certificate", error["message"].lower(), error)


if __name__ == "__main__":
    unittest.main(verbosity=2)
