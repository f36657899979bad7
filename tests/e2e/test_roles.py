"""End-to-end: each actor run alone (`zgate router|worker|frontend`), joined by
tcp:// endpoints from zgate_settings, as one container per actor would run
them; and the production guide's config.yaml loading unchanged."""

import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402

GUIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared",
                     "reference", "litellm-production-guide.md")


class StandaloneRolesTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.port = zgtest.free_port()
        frontend_ep = "tcp://127.0.0.1:%d" % zgtest.free_port()
        worker_ep = "tcp://127.0.0.1:%d" % zgtest.free_port()
        config = zgtest.make_config([zgtest.deployment("gpt-4o", cls.up.api_base)],
                                    zgate={"frontend_endpoint": frontend_ep,
                                           "worker_endpoint": worker_ep})
        cls.config_path = os.path.join(cls.workdir, "roles.yaml")
        with open(cls.config_path, "w") as f:
            f.write(zgtest.to_yaml(config) + "\n")
        binary = zgtest.zgate_bin()
        cls.actors = []
        #  Started in the "wrong" order on purpose: ZeroMQ reconnects, so
        #  containers may come up in any order
        for role, extra in (("frontend", ["--host", "127.0.0.1", "--port", str(cls.port)]),
                            ("worker", ["--name", "worker-a"]),
                            ("router", [])):
            argv = [binary, role, "--config", cls.config_path] + extra
            cls.actors.append(zgtest.Process(argv, cls.workdir, role))

    @classmethod
    def tearDownClass(cls):
        for actor in reversed(getattr(cls, "actors", [])):
            actor.stop(timeout=30)
        super().tearDownClass()

    def test_request_crosses_tcp_endpoints(self):
        def ready():
            return zgtest.http_request(self.port, "GET", "/health/readiness", timeout=5).status == 200
        zgtest.wait_until(ready, message="frontend ready through the tcp router")
        resp = zgtest.http_request(self.port, "POST", "/v1/chat/completions", body=chat_body("gpt-4o"),
                                   headers=zgtest.auth_headers())
        self.assertEqual(resp.status, 200, "%r\n%s" % (resp, "\n".join(a.describe() for a in self.actors)))
        self.assertEqual(resp.json()["object"], "chat.completion")
        self.assertEqual(self.up.last_request()["headers"]["authorization"],
                         "Bearer " + zgtest.UPSTREAM_KEY)


def production_config_text():
    """The YAML block of section 1 of the production guide, without the
    documentation's ':::warning ... :::' admonition that sits inside it."""
    with open(GUIDE) as f:
        text = f.read()
    block = re.search(r"## 1\. Use this config.yaml.*?```yaml\n(.*?)```", text, re.S).group(1)
    lines, skipping = [], False
    for line in block.splitlines():
        if line.startswith(":::"):
            #  ":::warning" opens the admonition, a bare ":::" closes it
            skipping = line.strip() != ":::"
            continue
        if not skipping:
            lines.append(line)
    return "\n".join(lines) + "\n"


@unittest.skipUnless(os.path.exists(GUIDE), "the production guide is not beside the checkout")
class ProductionConfigTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.gw = cls.gateway(None, config_text=production_config_text(), num_workers=1,
                             env={"SLACK_WEBHOOK_URL": "http://127.0.0.1:9/unused"})

    def test_loads_and_serves(self):
        resp = self.gw.request("GET", "/health/liveliness")
        self.assertEqual(resp.status, 200, resp)
        models = self.gw.get("/v1/models", key="sk-1234")
        self.assertEqual(models.status, 200, models)
        self.assertEqual([m["id"] for m in models.json()["data"]], ["fake-openai-endpoint"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
