"""End-to-end: a deployment without prices is priced from the built-in table.

A real PostgreSQL (zgpg.py) for the spend rows. Two deployments on the fake
upstream: one asks the upstream for gpt-4o-mini-2024-07-18 and sets no
price (the table's gpt-4o-mini price applies), one asks for a model the
table does not know (its calls cost nothing). The spend row of each call
shows the cost the worker computed; so does x-litellm-response-cost when
the frontend sends it.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgpg  # noqa: E402
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402

#  LiteLLM's gpt-4o-mini price, USD per token (workers/zg_prices.c)
INPUT_COST = 1.5e-07
OUTPUT_COST = 6e-07
ROWS_TIMEOUT = 60.0


class PricesTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        cls.url = cls.pg.create_database("prices")
        config = zgtest.make_config(
            [zgtest.deployment("mini", cls.up.api_base, model="gpt-4o-mini-2024-07-18"),
             zgtest.deployment("unpriced", cls.up.api_base, model="fake-model")],
            general={"database_url": cls.url, "proxy_batch_write_at": 1})
        cls.gw = cls.gateway(config, num_workers=1)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.pg.stop()

    def spend_of(self, call_id):
        def row():
            rows = self.pg.query('SELECT spend, prompt_tokens, completion_tokens '
                                 'FROM "LiteLLM_SpendLogs" WHERE request_id = \'%s\'' % call_id,
                                 db="prices")
            return rows[0] if rows else None
        zgtest.wait_until(lambda: row() is not None, ROWS_TIMEOUT, interval=0.2,
                          message="the spend row of %s" % call_id)
        spend, prompt, completion = row()
        return float(spend), int(prompt), int(completion)

    def test_table_price(self):
        resp = self.gw.post("/chat/completions", chat_body(model="mini"))
        self.assertEqual(resp.status, 200, resp)
        usage = resp.json()["usage"]
        expected = usage["prompt_tokens"] * INPUT_COST + usage["completion_tokens"] * OUTPUT_COST
        self.assertGreater(expected, 0)
        spend, prompt, completion = self.spend_of(resp.headers["x-litellm-call-id"])
        self.assertEqual((prompt, completion), (usage["prompt_tokens"], usage["completion_tokens"]))
        self.assertAlmostEqual(spend, expected, delta=1e-12)
        header = resp.headers.get("x-litellm-response-cost")
        if header is not None:
            self.assertAlmostEqual(float(header), expected, delta=1e-12)

    def test_unknown_model_costs_nothing(self):
        resp = self.gw.post("/chat/completions", chat_body(model="unpriced"))
        self.assertEqual(resp.status, 200, resp)
        spend, _, _ = self.spend_of(resp.headers["x-litellm-call-id"])
        self.assertEqual(spend, 0.0)


if __name__ == "__main__":
    unittest.main()
