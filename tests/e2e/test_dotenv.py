"""End-to-end: the `.env` file in the working directory is loaded at start-up
unless LITELLM_MODE=PRODUCTION, and never overrides the environment."""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402

DOTENV = """# keys for the e2e test
export ZG_DOTENV_MASTER="sk-from-dotenv"
ZG_DOTENV_UPSTREAM_KEY = 'sk-upstream-from-dotenv'  # a comment
ZG_DOTENV_ALREADY_SET=from-dotenv
this line is not an assignment
"""


class DotenvTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.dir = tempfile.mkdtemp(prefix="dotenv-", dir=cls.workdir)
        with open(os.path.join(cls.dir, ".env"), "w") as f:
            f.write(DOTENV)
        deployment = zgtest.deployment("gpt-4o", cls.up.api_base,
                                       api_key="os.environ/ZG_DOTENV_UPSTREAM_KEY")
        cls.config = zgtest.make_config([deployment], master_key="os.environ/ZG_DOTENV_MASTER")

    def test_loaded_in_dev_mode(self):
        gw = self.gateway(self.config, num_workers=1, cwd=self.dir, name="dev",
                          env={"LITELLM_MODE": "DEV", "ZG_DOTENV_ALREADY_SET": "from-environment"})
        resp = gw.post("/v1/chat/completions", chat_body("gpt-4o"), key="sk-from-dotenv")
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(self.up.last_request()["headers"]["authorization"],
                         "Bearer sk-upstream-from-dotenv")
        self.assertEqual(gw.post("/v1/chat/completions", chat_body("gpt-4o"), key="sk-1234").status, 401)
        #  The malformed line is named, not fatal
        zgtest.wait_until(lambda: ".env:5" in gw.output(), message="warning for line 5")

    def test_not_read_in_production(self):
        gw = self.gateway(self.config, num_workers=1, cwd=self.dir, name="prod", wait_ready=False,
                          env={"LITELLM_MODE": "PRODUCTION"})
        code = gw.proc.wait(timeout=30)
        #  It exited on purpose: not a shutdown problem for tearDownClass
        self._gateways.remove(gw)
        self.assertNotEqual(code, 0, gw.describe())
        self.assertRegex(gw.output(), r"environment variable ZG_DOTENV_\w+ is not set")


if __name__ == "__main__":
    unittest.main(verbosity=2)
