"""End-to-end: deployments stored in the database (store_model_in_db).

A real PostgreSQL (zgpg.py), zgate with general_settings.store_model_in_db
and LITELLM_SALT_KEY, a config model and two fake upstreams. Rows of
"LiteLLM_ProxyModelTable" are written the way LiteLLM writes them: every
string of litellm_params encrypted with the salt key (v3:gcm, or the legacy
NaCl secretbox), by tests/tools/zg_seal since Python's standard library has
neither cipher; each change is followed by NOTIFY zgate_models. The router
must serve a new row within seconds, send its api_key upstream, follow an
update, forget a deleted row, skip a row it cannot decrypt (one ERROR line
naming it) while serving everything else, and keep serving what it has
while the database is down.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgpg  # noqa: E402
import zgtest  # noqa: E402
from zgtest import chat_body  # noqa: E402

SALT_KEY = "salt-key-for-the-models-e2e"
#  Within this many seconds a change must be served (NOTIFY makes it ~instant;
#  the bound is generous for loaded machines)
CHANGE_TIMEOUT = 20.0


def seal_bin():
    path = os.path.join(os.path.dirname(zgtest.zgate_bin()), "tests", "zg_seal")
    if not os.access(path, os.X_OK):
        raise unittest.SkipTest("no tests/zg_seal next to zgate")
    return path


def seal(value, form="v3", salt=SALT_KEY):
    out = subprocess.run([seal_bin(), form, salt, value], check=True,
                         stdout=subprocess.PIPE, timeout=30)
    return out.stdout.decode().strip()


def sql_text(value):
    return "'" + value.replace("'", "''") + "'"


class ModelsDbTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        seal_bin()
        cls.up = cls.upstream()
        cls.up2 = cls.upstream(name="upstream2")
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        cls.url = cls.pg.create_database("models")
        config = zgtest.make_config(
            [zgtest.deployment("cfg-model", cls.up.api_base)],
            general={"database_url": cls.url, "store_model_in_db": True})
        cls.gw = cls.gateway(config, num_workers=1, env={"LITELLM_SALT_KEY": SALT_KEY})
        zgtest.wait_until(lambda: cls.pg.table_exists("LiteLLM_ProxyModelTable", "models"),
                          60, message="the migrations")

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.pg.stop()

    # helpers

    def insert(self, model_id, model_name, params, form="v3", salt=SALT_KEY, info=None):
        stored = {k: seal(v, form, salt) if isinstance(v, str) else v for k, v in params.items()}
        model_info = dict(info or {}, id=model_id)
        self.pg.psql(
            'BEGIN; INSERT INTO "LiteLLM_ProxyModelTable" (model_id, model_name, litellm_params,'
            ' model_info, created_by, updated_by) VALUES (%s, %s, %s::jsonb, %s::jsonb,'
            " 'e2e', 'e2e'); NOTIFY zgate_models; COMMIT;"
            % (sql_text(model_id), sql_text(model_name), sql_text(json.dumps(stored)),
               sql_text(json.dumps(model_info))), db="models")
        self.addCleanup(self.delete, model_id)

    def delete(self, model_id):
        if self.pg.proc is None:
            return
        self.pg.psql('BEGIN; DELETE FROM "LiteLLM_ProxyModelTable" WHERE model_id = %s;'
                     ' NOTIFY zgate_models; COMMIT;' % sql_text(model_id), db="models")

    def chat(self, model):
        return self.gw.post("/chat/completions", chat_body(model=model))

    def wait_served(self, model):
        zgtest.wait_until(lambda: self.chat(model).status == 200, CHANGE_TIMEOUT, interval=0.1,
                          message="%s served" % model)

    def wait_unknown(self, model):
        zgtest.wait_until(lambda: self.chat(model).status == 400, CHANGE_TIMEOUT, interval=0.1,
                          message="%s unknown" % model)

    def params(self, key="sk-upstream-db-1", api_base=None):
        return {"model": "openai/fake-model", "api_key": key,
                "api_base": api_base or self.up.api_base, "rpm": 600}

    # tests

    def test_row_is_served_with_its_key_then_updated_then_deleted(self):
        self.assertEqual(self.chat("db-model").status, 400)
        self.insert("db-model-1", "db-model", self.params())
        self.wait_served("db-model")
        resp = self.chat("db-model")
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.headers.get("x-litellm-model-id"), "db-model-1")
        last = self.up.last_request()
        headers = {k.lower(): v for k, v in last["headers"].items()}
        self.assertEqual(headers.get("authorization"), "Bearer sk-upstream-db-1")
        self.assertEqual(json.loads(last["body"])["model"], "fake-model")

        #  An update (a new api_base) is followed
        stored = seal(self.up2.api_base)
        self.pg.psql('BEGIN; UPDATE "LiteLLM_ProxyModelTable" SET litellm_params ='
                     " jsonb_set(litellm_params, '{api_base}', to_jsonb(%s::text)),"
                     " updated_at = now() WHERE model_id = 'db-model-1'; NOTIFY zgate_models;"
                     " COMMIT;" % sql_text(stored), db="models")
        before = self.up2.stats().get("requests", 0)
        zgtest.wait_until(lambda: self.chat("db-model").status == 200
                          and self.up2.stats().get("requests", 0) > before,
                          CHANGE_TIMEOUT, interval=0.1, message="the new api_base used")

        #  The config's models are still there
        self.assertEqual(self.chat("cfg-model").status, 200)

        self.delete("db-model-1")
        self.wait_unknown("db-model")
        resp = self.chat("db-model")
        self.assertIn("Invalid model name passed in model=db-model", resp.json()["error"]["message"])

    def test_nacl_row_is_served(self):
        self.insert("nacl-1", "nacl-model", self.params(key="sk-upstream-nacl"), form="nacl")
        self.wait_served("nacl-model")
        last = self.up.last_request()
        headers = {k.lower(): v for k, v in last["headers"].items()}
        self.assertEqual(headers.get("authorization"), "Bearer sk-upstream-nacl")

    def test_row_of_another_salt_key_is_skipped(self):
        self.insert("wrong-salt-1", "wrong-salt-model", self.params(), salt="another-salt-key")
        self.insert("marker-1", "marker-model", self.params())
        #  Rows are read together: once the marker is served, the other was seen
        self.wait_served("marker-model")
        self.assertEqual(self.chat("wrong-salt-model").status, 400)
        self.assertEqual(self.chat("cfg-model").status, 200)
        zgtest.wait_until(lambda: "deployment wrong-salt-1 from the database is not served"
                          in self.gw.output(), 10, message="the error line")
        lines = [line for line in self.gw.output().splitlines() if "wrong-salt-1" in line]
        self.assertTrue(all("ERROR" in line for line in lines), lines)
        self.assertIn("salt key", lines[0])
        self.assertNotIn("sk-upstream", self.gw.output())

    def test_database_down_keeps_the_last_list(self):
        self.insert("keep-1", "keep-model", self.params())
        self.wait_served("keep-model")
        self.pg.halt()
        try:
            #  Well past a reload and a few reconnect attempts
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                self.assertEqual(self.chat("keep-model").status, 200)
                self.assertEqual(self.chat("cfg-model").status, 200)
                time.sleep(0.5)
        finally:
            self.pg.start()
        #  Back: a change is seen again
        self.delete("keep-1")
        self.wait_unknown("keep-model")


if __name__ == "__main__":
    unittest.main()
