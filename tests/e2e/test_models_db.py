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
        #  Another change: the row is not reported again
        self.insert("marker-2", "marker-model-2", self.params())
        self.wait_served("marker-model-2")
        self.assertEqual(self.gw.get("/model/info").status, 200)
        lines = [line for line in self.gw.output().splitlines() if "wrong-salt-1" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("ERROR", lines[0])
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
            #  The management routes need the keystore back too
            zgtest.wait_until(lambda: self.gw.get("/health/readiness").status == 200, 60,
                              interval=0.2, message="the database reachable again")
        #  Back: a change is seen again
        self.delete("keep-1")
        self.wait_unknown("keep-model")

    # the management routes

    def test_model_routes(self):
        new = {"model_name": "http-model",
               "litellm_params": {"model": "openai/fake-model", "api_key": "sk-upstream-http",
                                  "api_base": self.up.api_base, "rpm": 100},
               "model_info": {"id": "http-1", "max_tokens": 4096}}
        resp = self.gw.post("/model/new", new)
        self.assertEqual(resp.status, 200, resp)
        self.addCleanup(self.delete, "http-1")
        row = resp.json()
        self.assertEqual(row["model_id"], "http-1")
        self.assertTrue(row["litellm_params"]["api_key"].startswith("v3:gcm:"), row)
        self.assertEqual(row["litellm_params"]["rpm"], 100)

        #  At rest: no plaintext secret, every string encrypted
        stored = self.pg.scalar('SELECT litellm_params::text FROM "LiteLLM_ProxyModelTable"'
                                " WHERE model_id = 'http-1'", db="models")
        self.assertNotIn("sk-upstream-http", stored)
        self.assertNotIn(self.up.api_base, stored)
        self.assertTrue(json.loads(stored)["api_key"].startswith("v3:gcm:"))
        self.assertTrue(json.loads(stored)["model"].startswith("v3:gcm:"))

        #  Served within seconds, with its key
        self.wait_served("http-model")
        headers = {k.lower(): v for k, v in self.up.last_request()["headers"].items()}
        self.assertEqual(headers.get("authorization"), "Bearer sk-upstream-http")

        #  Listed by /model/info without the secret, with the config's models
        resp = self.gw.get("/model/info")
        self.assertEqual(resp.status, 200, resp)
        self.assertNotIn("sk-upstream-http", resp.text())
        entries = {e["model_info"]["id"]: e for e in resp.json()["data"]}
        entry = entries["http-1"]
        self.assertEqual(entry["model_name"], "http-model")
        self.assertTrue(entry["model_info"]["db_model"])
        self.assertEqual(entry["model_info"]["max_tokens"], 4096)
        self.assertNotIn("api_key", entry["litellm_params"])
        self.assertEqual(entry["litellm_params"]["api_base"], self.up.api_base)
        self.assertEqual(entry["litellm_params"]["model"], "openai/fake-model")
        self.assertIn("cfg-model", [e["model_name"] for e in resp.json()["data"]])

        #  An update changes api_base and keeps the key
        resp = self.gw.post("/model/update", {"model_info": {"id": "http-1"},
                                              "litellm_params": {"api_base": self.up2.api_base}})
        self.assertEqual(resp.status, 200, resp)
        stored = json.loads(self.pg.scalar('SELECT litellm_params::text FROM'
                                           ' "LiteLLM_ProxyModelTable" WHERE model_id = \'http-1\'',
                                           db="models"))
        self.assertTrue(stored["api_base"].startswith("v3:gcm:"))
        before = self.up2.stats().get("requests", 0)
        zgtest.wait_until(lambda: self.chat("http-model").status == 200
                          and self.up2.stats().get("requests", 0) > before,
                          CHANGE_TIMEOUT, interval=0.1, message="the updated api_base used")
        headers = {k.lower(): v for k, v in self.up2.last_request()["headers"].items()}
        self.assertEqual(headers.get("authorization"), "Bearer sk-upstream-http")

        #  A delete makes it unknown
        resp = self.gw.post("/model/delete", {"id": "http-1"})
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()["message"], "Model: http-1 deleted successfully")
        self.wait_unknown("http-model")

    def test_model_new_without_id_gets_one(self):
        resp = self.gw.post("/model/new", {"model_name": "anon-model",
                                           "litellm_params": {"model": "openai/fake-model",
                                                              "api_base": self.up.api_base}})
        self.assertEqual(resp.status, 200, resp)
        model_id = resp.json()["model_id"]
        self.addCleanup(self.delete, model_id)
        self.assertRegex(model_id, r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        self.assertEqual(resp.json()["model_info"]["id"], model_id)
        self.wait_served("anon-model")

    def test_model_route_errors(self):
        def post(path, body):
            resp = self.gw.post(path, body)
            self.assertIn("error", resp.json(), resp)
            return resp.status, resp.json()["error"]["message"]

        status, message = post("/model/new", {"litellm_params": {"model": "openai/x"}})
        self.assertEqual(status, 400)
        self.assertIn("model_name", message)
        status, message = post("/model/new", {"model_name": "m"})
        self.assertEqual((status, "litellm_params" in message), (400, True))
        status, message = post("/model/new", {"model_name": "m",
                                              "litellm_params": {"model": "azure/gpt-4o"}})
        self.assertEqual(status, 400)
        self.assertIn("provider 'azure' is not supported", message)
        status, message = post("/model/new", {"model_name": "m",
                                              "litellm_params": {"model": "openai/x", "rpm": "x"}})
        self.assertEqual(status, 400)
        self.assertIn("litellm_params.rpm", message)
        resp = self.gw.request("POST", "/model/new", body=b"{not json",
                               headers=dict(zgtest.auth_headers(),
                                            **{"Content-Type": "application/json"}))
        self.assertEqual(resp.status, 400, resp)

        self.insert("dup-1", "dup-model", self.params())
        status, message = post("/model/new", {"model_name": "m", "model_info": {"id": "dup-1"},
                                              "litellm_params": {"model": "openai/x"}})
        self.assertEqual(status, 400)
        self.assertIn("already exists", message)

        status, message = post("/model/update", {"model_info": {"id": "no-such-id"},
                                                 "litellm_params": {"rpm": 1}})
        self.assertEqual(status, 404)
        status, message = post("/model/update", {"litellm_params": {"rpm": 1}})
        self.assertEqual(status, 400)
        status, message = post("/model/delete", {"id": "no-such-id"})
        self.assertEqual(status, 404)
        self.assertIn("not found", message)
        status, message = post("/model/delete", {})
        self.assertEqual(status, 400)

        #  A row of another salt key cannot be updated: a clear error, nothing written
        self.insert("other-salt-1", "other-salt-model", self.params(), salt="another-salt-key")
        before = self.pg.scalar('SELECT litellm_params::text FROM "LiteLLM_ProxyModelTable"'
                                " WHERE model_id = 'other-salt-1'", db="models")
        status, message = post("/model/update", {"model_info": {"id": "other-salt-1"},
                                                 "litellm_params": {"rpm": 5}})
        self.assertEqual(status, 400)
        self.assertIn("salt key", message)
        after = self.pg.scalar('SELECT litellm_params::text FROM "LiteLLM_ProxyModelTable"'
                               " WHERE model_id = 'other-salt-1'", db="models")
        self.assertEqual(before, after)
        #  ... and a virtual key or no key may not manage models
        resp = self.gw.post("/model/delete", {"id": "dup-1"}, key="sk-not-a-key")
        self.assertIn(resp.status, (401, 403), resp)


    # GET /health and /models cover the database's deployments

    def health_entries(self):
        """GET /health as {model_id: entry} for healthy and unhealthy."""
        resp = self.gw.get("/health")
        self.assertEqual(resp.status, 200, resp)
        for secret in ("api_key", "sk-upstream"):
            self.assertNotIn(secret, resp.text())
        body = resp.json()
        self.assertEqual(body["healthy_count"], len(body["healthy_endpoints"]), body)
        self.assertEqual(body["unhealthy_count"], len(body["unhealthy_endpoints"]), body)
        return ({e["model_id"]: e for e in body["healthy_endpoints"]},
                {e["model_id"]: e for e in body["unhealthy_endpoints"]})

    def model_names(self, key=zgtest.MASTER_KEY, path="/v1/models"):
        resp = self.gw.get(path, key=key)
        self.assertEqual(resp.status, 200, resp)
        for secret in ("api_key", "sk-upstream"):
            self.assertNotIn(secret, resp.text())
        body = resp.json()
        self.assertEqual(body["object"], "list")
        for entry in body["data"]:
            self.assertEqual((entry["object"], entry["created"], entry["owned_by"]),
                             ("model", 1677610602, "openai"), entry)
        names = [entry["id"] for entry in body["data"]]
        self.assertEqual(len(names), len(set(names)), names)
        return names

    def test_get_health_checks_database_deployments(self):
        resp = self.gw.post("/model/new", {
            "model_name": "health-model",
            "litellm_params": {"model": "openai/fake-model", "api_key": "sk-upstream-health",
                               "api_base": self.up2.api_base},
            "model_info": {"id": "health-ok-1"}})
        self.assertEqual(resp.status, 200, resp)
        self.addCleanup(self.delete, "health-ok-1")
        closed = "http://127.0.0.1:%d/v1" % zgtest.closed_port()
        self.insert("health-down-1", "health-down", self.params(key="sk-upstream-down",
                                                                api_base=closed))
        self.insert("health-salt-1", "health-salt", self.params(key="sk-upstream-salt"),
                    salt="another-salt-key")
        seen = {}

        def all_checked():
            healthy, unhealthy = seen["last"] = self.health_entries()
            return ("health-ok-1" in healthy and "health-down-1" in unhealthy
                    and "health-salt-1" in unhealthy)

        zgtest.wait_until(all_checked, CHANGE_TIMEOUT, interval=0.2,
                          message="GET /health with the database's deployments")
        healthy, unhealthy = seen["last"]
        entry = healthy["health-ok-1"]
        self.assertEqual((entry["model_name"], entry["api_base"], entry["model"]),
                         ("health-model", self.up2.api_base, "openai/fake-model"), entry)
        self.assertIn("cfg-model", [e["model_name"] for e in healthy.values()])
        down = unhealthy["health-down-1"]
        self.assertEqual((down["model_name"], down["api_base"]), ("health-down", closed), down)
        self.assertTrue(down["error"], down)
        broken = unhealthy["health-salt-1"]
        self.assertEqual(broken["model_name"], "health-salt", broken)
        self.assertIn("cannot be used", broken["error"])
        self.assertIn("salt key", broken["error"])

        #  A real minimal request reached its upstream (the only deployment
        #  on up2) with the deployment's own key
        self.up2.reset_stats()
        healthy, _ = self.health_entries()
        self.assertIn("health-ok-1", healthy)
        self.assertEqual(self.up2.stats()["requests"], 1)
        sent = self.up2.last_request()
        headers = {k.lower(): v for k, v in sent["headers"].items()}
        self.assertEqual(headers.get("authorization"), "Bearer sk-upstream-health")
        self.assertIn('"max_tokens":1', sent["body"])

        #  Deleted: no longer checked
        resp = self.gw.post("/model/delete", {"id": "health-ok-1"})
        self.assertEqual(resp.status, 200, resp)
        zgtest.wait_until(lambda: "health-ok-1" not in self.health_entries()[0]
                          and "health-ok-1" not in self.health_entries()[1],
                          CHANGE_TIMEOUT, interval=0.2, message="the deleted deployment gone")
        healthy, unhealthy = self.health_entries()
        self.assertIn("health-down-1", unhealthy)

    def test_models_lists_database_models_for_each_key(self):
        resp = self.gw.post("/model/new", {
            "model_name": "listed-model",
            "litellm_params": {"model": "openai/fake-model", "api_key": "sk-upstream-listed",
                               "api_base": self.up.api_base},
            "model_info": {"id": "listed-1"}})
        self.assertEqual(resp.status, 200, resp)
        self.addCleanup(self.delete, "listed-1")
        #  A second deployment of the configuration's model name: listed once
        self.insert("cfg-model-db-1", "cfg-model", self.params())
        self.insert("listed-salt-1", "listed-broken", self.params(), salt="another-salt-key")
        zgtest.wait_until(lambda: "listed-model" in self.model_names(), CHANGE_TIMEOUT,
                          interval=0.1, message="the database's model in /v1/models")
        for path in ("/models", "/v1/models"):
            names = self.model_names(path=path)
            self.assertIn("cfg-model", names)
            self.assertIn("listed-model", names)
            #  A row the router cannot use names nothing it serves
            self.assertNotIn("listed-broken", names)

        def key_for(**fields):
            resp = self.gw.post("/key/generate", fields)
            self.assertEqual(resp.status, 200, resp)
            return resp.json()["key"]

        only_db = key_for(models=["listed-model"])
        only_cfg = key_for(models=["cfg-model", "never-deployed"])
        every = key_for()
        for path in ("/models", "/v1/models"):
            self.assertEqual(self.model_names(only_db, path), ["listed-model"])
            self.assertEqual(self.model_names(only_cfg, path), ["cfg-model"])
            self.assertEqual(sorted(self.model_names(every, path)),
                             sorted(self.model_names(path=path)))
        #  The restricted key may call its model and no other
        self.assertEqual(self.gw.post("/chat/completions", chat_body(model="listed-model"),
                                      key=only_db).status, 200)
        self.assertEqual(self.gw.post("/chat/completions", chat_body(model="cfg-model"),
                                      key=only_db).status, 403)

        resp = self.gw.post("/model/delete", {"id": "listed-1"})
        self.assertEqual(resp.status, 200, resp)
        zgtest.wait_until(lambda: "listed-model" not in self.model_names(), CHANGE_TIMEOUT,
                          interval=0.1, message="the deleted model gone from /v1/models")
        self.assertEqual(self.model_names(only_db), [])
        self.assertEqual(self.model_names(only_cfg), ["cfg-model"])


if __name__ == "__main__":
    unittest.main()
