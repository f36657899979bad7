"""End-to-end: virtual keys, budgets, rate limits and spend, against a real PostgreSQL.

One PostgreSQL (zgpg.py) and one zgate with database_url for most tests;
every test makes its own keys through POST /key/generate, so tests do not
see each other's keys. The fake upstream answers every chat call with
10 prompt and 8 completion tokens, priced 1e-6 and 2e-6 per token here, so
every call costs exactly COST. The outage tests have a PostgreSQL of their
own, since they stop it.

Lookups of unknown keys are counted where they land: the test database
logs every statement with its parameters (log_statement = all), and a
lookup is a statement whose parameter is the key's hash.
"""

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgpg  # noqa: E402
import zgtest  # noqa: E402
from zgtest import MASTER_KEY, chat_body  # noqa: E402

COST = 10 * 0.000001 + 8 * 0.000002
TOKENS = 18
ROWS_TIMEOUT = 60.0
ADMIN_ROUTES = [
    ("POST", "/key/generate"), ("GET", "/key/info?key=sk-x"), ("POST", "/key/update"),
    ("POST", "/key/delete"), ("GET", "/key/list"), ("POST", "/key/block"),
    ("POST", "/key/unblock"), ("POST", "/key/regenerate"), ("POST", "/key/sk-x/regenerate"),
    ("GET", "/spend/logs"), ("GET", "/global/spend"), ("POST", "/global/spend/reset"),
    ("POST", "/model/new"), ("POST", "/model/update"), ("POST", "/model/delete"),
]


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def tap_bin():
    path = os.path.join(os.path.dirname(zgtest.zgate_bin()), "tests", "zg_events_tap")
    if not os.access(path, os.X_OK):
        raise unittest.SkipTest("no tests/zg_events_tap next to zgate")
    return path


def tap_events(tap):
    return [json.loads(line) for line in tap.stdout().splitlines() if line.strip()]


def models(up):
    return [zgtest.deployment(name, up.api_base, input_cost_per_token=0.000001,
                              output_cost_per_token=0.000002)
            for name in ("gpt-4o", "gpt-4o-mini")]


class KeysCase(zgtest.GatewayTestCase):
    """Helpers shared by the classes below."""

    def admin(self, method, path, body=None, key=MASTER_KEY):
        headers = zgtest.auth_headers(key) if key else {}
        return self.gw.request(method, path, body=body, headers=headers)

    def generate(self, gw=None, **fields):
        resp = (gw or self.gw).post("/key/generate", fields)
        self.assertEqual(resp.status, 200, resp)
        answer = resp.json()
        self.assertTrue(answer["key"].startswith("sk-"), answer)
        return answer

    def chat(self, key, gw=None, **kwargs):
        return (gw or self.gw).post("/chat/completions", chat_body(**kwargs), key=key)

    def info(self, key):
        resp = self.admin("GET", "/key/info?key=" + urllib.parse.quote(key))
        self.assertEqual(resp.status, 200, resp)
        return resp.json()["info"]

    def db_spend(self, hash_):
        value = self.pg.scalar('SELECT spend FROM "LiteLLM_VerificationToken" WHERE token = \'%s\''
                               % hash_, db=self.db)
        return float(value) if value not in (None, "") else None

    def log_count(self, hash_):
        return self.pg.scalar('SELECT count(*) FROM "LiteLLM_SpendLogs" WHERE api_key = \'%s\''
                              % hash_, db=self.db)


class KeysTest(KeysCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        cls.db = "keys"
        cls.url = cls.pg.create_database(cls.db)
        #  Every statement and its parameters in the server log, to count lookups
        cls.pg.psql("ALTER DATABASE %s SET log_statement = 'all'" % cls.db)
        #  A long full-reload period: a change seen by another instance
        #  within seconds came through NOTIFY
        cls.config = zgtest.make_config(
            models(cls.up),
            general={"database_url": cls.url, "proxy_batch_write_at": 1,
                     "user_api_key_cache_ttl": 600})
        cls.gw = cls.gateway(cls.config, num_workers=1, name="zgate-keys")

    @classmethod
    def tearDownClass(cls):
        try:
            #  The frontend reports calls finished twice when it stops
            cls.gw.stop()
            output = cls.gw.output()
            super().tearDownClass()
            if "finished twice" in output:
                raise AssertionError("calls finished twice in the key table")
        finally:
            cls.pg.stop()

    # ------------------------------------------------------------------
    # Management routes

    def test_generate_with_each_field(self):
        fields = {"key_alias": "alias-%d" % time.monotonic_ns(), "duration": "1h",
                  "models": ["gpt-4o"], "max_budget": 12.5, "user_id": "user-gen",
                  "team_id": "team-gen", "max_parallel_requests": 7,
                  "metadata": {"owner": "tests"}, "tpm_limit": 1000, "rpm_limit": 100,
                  "budget_duration": "30d", "soft_budget": 5.0}
        answer = self.generate(**fields)
        key = answer["key"]
        self.assertEqual(answer["key_name"], "sk-..." + key[-4:])
        info = self.info(key)
        for name, value in fields.items():
            if name != "duration":
                self.assertEqual(info[name], value, name)
        self.assertIsNotNone(info["expires"])
        self.assertIsNotNone(info["budget_reset_at"])
        row = self.pg.query('SELECT key_alias, max_budget, rpm_limit, tpm_limit, user_id, team_id'
                            ' FROM "LiteLLM_VerificationToken" WHERE token = \'%s\'' % sha(key),
                            db=self.db)
        self.assertEqual(row, [[fields["key_alias"], "12.5", "100", "1000", "user-gen", "team-gen"]])
        #  A key of the caller's choosing
        custom = "sk-custom-%d" % time.monotonic_ns()
        self.assertEqual(self.generate(key=custom)["key"], custom)
        self.assertEqual(self.chat(custom).status, 200)
        #  A bad field is the handler's 400
        resp = self.gw.post("/key/generate", {"max_budget": "lots"})
        self.assertErrorShape(resp, 400)

    def test_new_key_works_at_once(self):
        key = self.generate()["key"]
        resp = self.chat(key)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(self.gw.get("/models", key=key).status, 200)
        self.assertEqual(self.gw.get("/model/info", key=key).status, 200)

    def test_update_info_delete_list(self):
        key = self.generate(max_budget=1.0)["key"]
        resp = self.gw.post("/key/update", {"key": key, "max_budget": 2.0, "models": ["gpt-4o-mini"],
                                            "metadata": {"v": 2}})
        self.assertEqual(resp.status, 200, resp)
        info = self.info(key)
        self.assertEqual((info["max_budget"], info["models"], info["metadata"]),
                         (2.0, ["gpt-4o-mini"], {"v": 2}))
        #  The table follows at once: the old model is refused now
        self.assertEqual(self.chat(key, model="gpt-4o").status, 403)
        self.assertEqual(self.chat(key, model="gpt-4o-mini").status, 200)
        #  ... and /models names only its model; the master key sees all
        for path in ("/models", "/v1/models"):
            names = [m["id"] for m in self.gw.get(path, key=key).json()["data"]]
            self.assertEqual(names, ["gpt-4o-mini"])
            names = [m["id"] for m in self.gw.get(path).json()["data"]]
            self.assertEqual(names, ["gpt-4o", "gpt-4o-mini"])
        listed = self.admin("GET", "/key/list")
        self.assertEqual(listed.status, 200, listed)
        self.assertIn(sha(key), json.dumps(listed.json()))
        resp = self.gw.post("/key/delete", {"keys": [key]})
        self.assertEqual(resp.status, 200, resp)
        self.assertIn("deleted_keys", resp.json())
        self.assertErrorShape(self.chat(key), 401)
        self.assertErrorShape(self.admin("GET", "/key/info?key=" + key), 404)

    def test_block_unblock(self):
        key = self.generate()["key"]
        self.assertEqual(self.chat(key).status, 200)
        self.assertEqual(self.gw.post("/key/block", {"key": key}).status, 200)
        error = self.assertErrorShape(self.chat(key), 401, "blocked")
        self.assertEqual(self.gw.post("/key/unblock", {"key": key}).status, 200)
        self.assertEqual(self.chat(key).status, 200, error)

    def test_regenerate(self):
        for route in ("/key/regenerate", "/key/{key}/regenerate"):
            old = self.generate(max_budget=3.0)["key"]
            self.assertEqual(self.chat(old).status, 200)
            if "{key}" in route:
                resp = self.gw.post(route.format(key=old), {})
            else:
                resp = self.gw.post(route, {"key": old})
            self.assertEqual(resp.status, 200, resp)
            new = resp.json()["key"]
            self.assertNotEqual(new, old)
            self.assertErrorShape(self.chat(old), 401)
            self.assertEqual(self.chat(new).status, 200)
            self.assertEqual(self.info(new)["max_budget"], 3.0)

    def test_management_is_the_master_keys(self):
        key = self.generate()["key"]
        for method, path in ADMIN_ROUTES:
            body = {} if method == "POST" else None
            self.assertErrorShape(self.admin(method, path, body, key=None), 401,
                                  "No api key passed in")
            self.assertErrorShape(self.admin(method, path, body, key=key), 403, "Admin-only")
            self.assertErrorShape(self.admin(method, path, body, key="sk-not-a-key-1234"), 401)
        #  Not under /v1, and the wrong method is told apart
        self.assertEqual(self.gw.post("/v1/key/generate", {}).status, 404)
        resp = self.admin("GET", "/key/generate")
        self.assertEqual(resp.status, 405)
        self.assertEqual(resp.headers.get("allow"), "POST")

    # ------------------------------------------------------------------
    # Refusals on the data path

    def test_unknown_key(self):
        resp = self.chat("sk-unknown-key-abcd")
        error = self.assertErrorShape(resp, 401, "Invalid proxy server token")
        self.assertIn("sk-...abcd", error["message"])
        self.assertNotIn("unknown-key", error["message"])
        self.assertErrorShape(self.gw.get("/models", key="sk-unknown-key-abcd"), 401)

    def test_expired_key(self):
        key = self.generate(duration="1s")["key"]

        def refused():
            resp = self.chat(key)
            if resp.status == 200:
                return False
            self.assertErrorShape(resp, 401, "Expired Key")
            self.assertEqual(resp.json()["error"]["type"], "expired_key")
            return True
        zgtest.wait_until(refused, 30, interval=0.2, message="the key refused as expired")

    def test_model_not_allowed(self):
        key = self.generate(models=["gpt-4o-mini"])["key"]
        error = self.assertErrorShape(self.chat(key, model="gpt-4o"), 403,
                                      "key not allowed to access model")
        self.assertEqual(error["type"], "key_model_access_denied")
        #  Named by the path too
        resp = self.gw.post("/engines/gpt-4o/chat/completions", chat_body(model="x"), key=key)
        self.assertErrorShape(resp, 403)
        self.assertEqual(self.chat(key, model="gpt-4o-mini").status, 200)

    def test_max_budget(self):
        #  Two calls fit below the budget; the second crosses it
        key = self.generate(max_budget=COST * 1.5)["key"]
        self.assertEqual(self.chat(key).status, 200)
        self.assertEqual(self.chat(key).status, 200)
        error = self.assertErrorShape(self.chat(key), 429, "Budget has been exceeded")
        self.assertEqual(error["type"], "budget_exceeded")
        #  Raising the budget lets it in again
        self.assertEqual(self.gw.post("/key/update", {"key": key, "max_budget": 1.0}).status, 200)
        self.assertEqual(self.chat(key).status, 200)

    def test_budget_duration_resets_spend(self):
        #  A budget of one call per period of 2 s: refused once spent, let in
        #  again when the period ends, and the database's spend and next
        #  reset are written back (as /key/info shows)
        key = self.generate(max_budget=COST * 0.5, budget_duration="2s")
        first_reset = key["budget_reset_at"]
        self.assertEqual(self.chat(key["key"]).status, 200)
        zgtest.wait_until(lambda: (self.db_spend(key["token"]) or 0) > 0, 30, interval=0.2,
                          message="the call's spend written")
        zgtest.wait_until(lambda: self.chat(key["key"]).status == 429, 30, interval=0.2,
                          message="the key refused over its budget")
        zgtest.wait_until(lambda: self.chat(key["key"]).status == 200, 30, interval=0.2,
                          message="the key let in again in a new budget period")

        def written_back():
            info = self.info(key["key"])
            return info["budget_reset_at"] != first_reset and info["spend"] <= COST * 1.01
        zgtest.wait_until(written_back, 30, interval=0.2,
                          message="the database's spend reset and budget_reset_at moved on")

    def test_rpm_limit(self):
        key = self.generate(rpm_limit=2)["key"]
        self.assertEqual(self.chat(key).status, 200)
        self.assertEqual(self.chat(key).status, 200)
        resp = self.chat(key)
        error = self.assertErrorShape(resp, 429, "Rate limit exceeded")
        self.assertIn("Limit type: requests", error["message"])
        retry = int(resp.headers["retry-after"])
        self.assertTrue(1 <= retry <= 60, retry)
        self.assertEqual(resp.headers.get("rate_limit_type"), "requests")
        self.assertTrue(resp.headers.get("reset_at"))

    def test_rpm_limit_zero_refuses_all(self):
        key = self.generate(rpm_limit=0)["key"]
        self.assertErrorShape(self.chat(key), 429)

    def test_tpm_limit(self):
        #  18 tokens a call: the third call finds 36 >= 30 used
        key = self.generate(tpm_limit=30)["key"]
        self.assertEqual(self.chat(key).status, 200)
        self.assertEqual(self.chat(key).status, 200)
        resp = self.chat(key)
        error = self.assertErrorShape(resp, 429, "Limit type: tokens")
        self.assertTrue(int(resp.headers["retry-after"]) >= 1, error)

    def test_max_parallel_requests(self):
        key = self.generate(max_parallel_requests=2)["key"]
        self.up.reset_stats()
        headers = zgtest.auth_headers(key)
        hanging = [zgtest.send_and_abandon(self.gw.port, "/chat/completions",
                                           chat_body(fake={"fault": "hang"}), headers=headers)
                   for _ in range(2)]
        try:
            zgtest.wait_until(lambda: self.up.stats()["active"] >= 2, 30,
                              message="two calls hanging upstream")
            resp = self.chat(key)
            error = self.assertErrorShape(resp, 429, "max_parallel_requests")
            self.assertEqual(resp.headers.get("retry-after"), "1", error)
        finally:
            for sock in hanging:
                zgtest.abort_socket(sock)
        #  The clients left: their slots free up
        zgtest.wait_until(lambda: self.chat(key).status == 200, 30, interval=0.2,
                          message="a call admitted once the hanging ones were cancelled")

    def test_many_bad_keys_cost_bounded_lookups(self):
        #  The same unknown key 1000 times: the database is asked once
        #  (twice if the flood outlasts the negative cache's 10 s)
        bad = "sk-flood-same-%d" % time.monotonic_ns()
        started = time.monotonic()
        statuses = self.flood([bad] * 1000)
        elapsed = time.monotonic() - started
        self.assertEqual(statuses, {401: 1000})
        self.assertLessEqual(self.lookups(sha(bad)), 1 + int(elapsed // 10))
        #  1000 different unknown keys: at most one lookup each
        keys = ["sk-flood-%d-%d" % (time.monotonic_ns(), i) for i in range(1000)]
        self.assertEqual(self.flood(keys), {401: 1000})
        log = self.pg.log()
        total = sum(log.count(sha(k)) for k in keys)
        self.assertLessEqual(total, 1000)
        self.assertGreater(total, 0, "lookups are not in the server log")

    def flood(self, keys):
        statuses = {}
        lock = threading.Lock()
        index = [0]

        def worker(_):
            while True:
                with lock:
                    if index[0] >= len(keys):
                        return
                    key = keys[index[0]]
                    index[0] += 1
                resp = self.chat(key)
                with lock:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        for result in zgtest.run_threads(16, worker):
            if isinstance(result, BaseException):
                raise result
        return statuses

    def lookups(self, hash_):
        return self.pg.log().count(hash_)

    # ------------------------------------------------------------------
    # Headers

    def test_headers(self):
        key = self.generate(rpm_limit=100, tpm_limit=10000, max_budget=10.0)["key"]
        resp = self.chat(key)
        self.assertEqual(resp.status, 200, resp)
        h = resp.headers
        self.assertEqual(h["x-ratelimit-limit-requests"], "100")
        self.assertEqual(h["x-ratelimit-remaining-requests"], "99")
        self.assertEqual(h["x-ratelimit-limit-tokens"], "10000")
        self.assertEqual(h["x-ratelimit-remaining-tokens"], str(10000 - TOKENS))
        self.assertEqual(float(h["x-litellm-key-max-budget"]), 10.0)
        self.assertAlmostEqual(float(h["x-litellm-response-cost"]), COST, places=12)
        #  key spend = the key's spend including this call
        self.assertAlmostEqual(float(h["x-litellm-key-spend"]), COST, places=12)
        resp = self.chat(key)
        self.assertAlmostEqual(float(resp.headers["x-litellm-key-spend"]), 2 * COST, places=12)
        self.assertEqual(resp.headers["x-ratelimit-remaining-requests"], "98")
        #  A stream: the key's headers as the stream starts, no cost yet
        with self.gw.stream("/chat/completions", chat_body(stream=True), key=key) as stream:
            self.assertEqual(stream.status, 200)
            self.assertEqual(stream.headers["x-ratelimit-remaining-requests"], "97")
            self.assertNotIn("x-litellm-response-cost", stream.headers)
            stream.read_body()
        #  The master key's answers carry the cost, and no key headers
        resp = self.chat(MASTER_KEY)
        self.assertAlmostEqual(float(resp.headers["x-litellm-response-cost"]), COST, places=12)
        self.assertNotIn("x-litellm-key-spend", resp.headers)
        self.assertNotIn("x-ratelimit-limit-requests", resp.headers)

    def test_keys_change_on_one_connection(self):
        """A keep-alive connection remembers the key it presented last with
        its hash: each call is still decided by the key it presents."""
        first = self.generate()["key"]
        second = self.generate()["key"]
        self.assertEqual(len(first), len(second))
        unknown = first[:-1] + ("A" if first[-1] != "A" else "B")
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=zgtest.HTTP_TIMEOUT)

        def call(key):
            conn.request("POST", "/chat/completions", body=json.dumps(chat_body()),
                         headers={"Authorization": "Bearer " + key,
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

        try:
            status, headers, _ = call(first)
            self.assertEqual(status, 200)
            sock = conn.sock
            self.assertAlmostEqual(float(headers["x-litellm-key-spend"]), COST, places=12)
            status, headers, _ = call(first)
            self.assertAlmostEqual(float(headers["x-litellm-key-spend"]), 2 * COST, places=12)
            status, headers, _ = call(second)
            self.assertEqual(status, 200)
            self.assertAlmostEqual(float(headers["x-litellm-key-spend"]), COST, places=12)
            #  Same length, one character apart: refused, named as presented
            status, headers, body = call(unknown)
            self.assertEqual(status, 401, body)
            self.assertIn("sk-..." + unknown[-4:], json.loads(body)["error"]["message"])
            self.assertNotIn("x-litellm-key-spend", headers)
            status, headers, _ = call(MASTER_KEY)
            self.assertEqual(status, 200)
            self.assertNotIn("x-litellm-key-spend", headers)
            status, headers, _ = call(first)
            self.assertEqual(status, 200)
            self.assertAlmostEqual(float(headers["x-litellm-key-spend"]), 3 * COST, places=12)
            self.assertIs(conn.sock, sock, "the calls did not share one connection")
        finally:
            conn.close()

    # ------------------------------------------------------------------
    # Several instances

    def test_second_instance_sees_changes_through_notify(self):
        gw2 = self.gateway(self.config, num_workers=1, name="zgate-keys-2")
        try:
            zgtest.wait_until(lambda: "key table loaded" in gw2.output(), 30,
                              message="the second instance loaded its keys")
            key = self.generate()["key"]
            #  Known there at once (pushed, not looked up on a miss)
            zgtest.wait_until(lambda: self.chat(key, gw=gw2).status == 200, 5, interval=0.05,
                              message="the key works through the second instance")
            self.assertEqual(self.gw.post("/key/block", {"key": key}).status, 200)
            #  Only NOTIFY can tell gw2 before its 600 s reload
            zgtest.wait_until(lambda: self.chat(key, gw=gw2).status == 401, 5, interval=0.05,
                              message="the block seen by the second instance")
            self.assertEqual(self.gw.post("/key/unblock", {"key": key}).status, 200)
            zgtest.wait_until(lambda: self.chat(key, gw=gw2).status == 200, 5, interval=0.05,
                              message="the unblock seen by the second instance")
        finally:
            self.assertEqual(gw2.stop(), [])
            self.assertEqual(gw2.sanitizer_reports(), [])
            self._gateways.remove(gw2)

    # ------------------------------------------------------------------
    # Spend

    def test_spend_rows_match_the_key(self):
        n = 40
        key = self.generate(user_id="spender", team_id="team-spend")["key"]
        hash_ = sha(key)
        ids = []
        for i in range(n):
            resp = self.chat(key, content="spend %d" % i)
            self.assertEqual(resp.status, 200, resp)
            ids.append(resp.headers["x-litellm-call-id"])
        zgtest.wait_until(lambda: self.log_count(hash_) == str(n), ROWS_TIMEOUT, interval=0.2,
                          message="%d rows for the key" % n)
        rows = self.pg.query('SELECT request_id, spend, "user", team_id FROM "LiteLLM_SpendLogs"'
                             ' WHERE api_key = \'%s\'' % hash_, db=self.db)
        self.assertEqual(sorted(r[0] for r in rows), sorted(ids))
        self.assertEqual({(r[2], r[3]) for r in rows}, {("spender", "team-spend")})
        total = sum(float(r[1]) for r in rows)
        self.assertAlmostEqual(total, n * COST, places=12)
        zgtest.wait_until(lambda: abs(self.db_spend(hash_) - total) < 1e-12, ROWS_TIMEOUT,
                          interval=0.2, message="the key's spend in the table")
        self.assertAlmostEqual(self.info(key)["spend"], total, places=12)
        #  /spend/logs filters
        logs = self.admin("GET", "/spend/logs?api_key=" + hash_)
        self.assertEqual(logs.status, 200, logs)
        self.assertEqual(sorted(r["request_id"] for r in logs.json()), sorted(ids))
        one = self.admin("GET", "/spend/logs?request_id=" + ids[0]).json()
        self.assertEqual([r["request_id"] for r in one], [ids[0]])
        by_user = self.admin("GET", "/spend/logs?user_id=spender").json()
        self.assertEqual(len(by_user), n)
        #  The master key's calls stay the master key's
        resp = self.chat(MASTER_KEY)
        master_id = resp.headers["x-litellm-call-id"]
        zgtest.wait_until(lambda: self.pg.scalar(
            'SELECT api_key FROM "LiteLLM_SpendLogs" WHERE request_id = \'%s\'' % master_id,
            db=self.db) == sha(MASTER_KEY), ROWS_TIMEOUT, interval=0.2,
            message="the master key's row")

    def test_global_spend_and_reset(self):
        key = self.generate()["key"]
        for _ in range(3):
            self.assertEqual(self.chat(key).status, 200)
        zgtest.wait_until(lambda: (self.db_spend(sha(key)) or 0) > 0, ROWS_TIMEOUT, interval=0.2,
                          message="the key's spend written")
        spend = self.admin("GET", "/global/spend")
        self.assertEqual(spend.status, 200, spend)
        self.assertGreaterEqual(spend.json()["spend"], 3 * COST)
        resp = self.gw.post("/global/spend/reset", {})
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json(), {"message": "Spend for all API Keys and Teams reset "
                                                  "successfully", "status": "success"})
        self.assertEqual(self.db_spend(sha(key)), 0.0)
        self.assertEqual(self.info(key)["spend"], 0.0)
        #  The table forgot the spend too: the header says so
        resp = self.chat(key)
        self.assertAlmostEqual(float(resp.headers["x-litellm-key-spend"]), COST, places=12)

    def test_budget_overshoot_is_bounded(self):
        #  Calls of 0.3 s from 8 clients at once against a budget of 3
        #  calls, with at most 4 in flight: the spend ends below
        #  max_budget + 4 calls (README: "How far a budget can be overshot")
        parallel = 4
        budget = 3 * COST
        key = self.generate(max_budget=budget, max_parallel_requests=parallel)["key"]
        statuses = {}
        lock = threading.Lock()

        def worker(_):
            for _ in range(6):
                resp = self.chat(key, fake={"latency_ms": 300})
                with lock:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        for result in zgtest.run_threads(8, worker):
            if isinstance(result, BaseException):
                raise result
        self.assertIn(429, statuses)
        ok = statuses.get(200, 0)
        self.assertGreaterEqual(ok, 3)
        self.assertLess(ok * COST, budget + parallel * COST + 1e-12, statuses)
        hash_ = sha(key)
        zgtest.wait_until(lambda: self.log_count(hash_) == str(ok), ROWS_TIMEOUT, interval=0.2,
                          message="%d rows" % ok)
        zgtest.wait_until(lambda: abs(self.db_spend(hash_) - ok * COST) < 1e-12, ROWS_TIMEOUT,
                          interval=0.2, message="the key's spend")

    def test_soft_budget_crossing_is_logged(self):
        answer = self.generate(soft_budget=COST * 1.5)
        key, name = answer["key"], answer["key_name"]
        for _ in range(3):
            self.assertEqual(self.chat(key).status, 200)

        def warnings():
            return [line for line in self.gw.output().splitlines()
                    if "crossed its soft budget" in line and name in line]
        zgtest.wait_until(lambda: warnings(), 10, message="the soft budget warning")
        self.assertEqual(len(warnings()), 1, warnings())
        self.assertNotIn(key, self.gw.output())

    def probe_event(self, tap):
        """A key with soft_budget 0 crosses it at its first call: waits for
        that event on the tap. Every event published before it has then
        reached the tap too (one PUB connection keeps order). False if it
        did not come (the subscription was not through yet)."""
        probe = self.generate(soft_budget=0)["key"]
        self.assertEqual(self.chat(probe).status, 200)
        try:
            zgtest.wait_until(lambda: any(e.get("key_hash") == sha(probe) for e in tap_events(tap)),
                              3, message="the probe's event")
            return True
        except AssertionError:
            return False

    def test_soft_budget_crossing_is_published(self):
        endpoint = "ipc://%s/events.ipc" % self.gw.run_dir
        tap = zgtest.Process([tap_bin(), endpoint], self.workdir, "tap-%d" % time.monotonic_ns())
        try:
            #  A subscription reaches the publisher a little after the tap
            #  connects: probe until one event is seen (PUB drops what
            #  nobody subscribed to yet)
            zgtest.wait_until(lambda: self.probe_event(tap), 60, interval=0,
                              message="an event through the tap")
            alias = "events-%d" % time.monotonic_ns()
            started_us = time.time_ns() // 1000
            answer = self.generate(soft_budget=COST * 1.5, max_budget=1.0, key_alias=alias,
                                   user_id="user-events", team_id="team-events")
            key, name, hash_ = answer["key"], answer["key_name"], sha(answer["key"])
            for _ in range(4):
                self.assertEqual(self.chat(key).status, 200)
            #  The events of the four calls are all in when a later one is
            self.assertTrue(zgtest.wait_until(lambda: self.probe_event(tap), 60, interval=0))
            mine = [e for e in tap_events(tap) if e.get("key_hash") == hash_]
            self.assertEqual(len(mine), 1, tap.stdout())
            event = mine[0]
            self.assertEqual(event["type"], "BUDGET")
            self.assertEqual(event["kind"], "soft_budget_crossed")
            self.assertEqual((event["key_name"], event["key_alias"], event["user_id"],
                              event["team_id"]), (name, alias, "user-events", "team-events"))
            self.assertEqual(event["soft_budget"], COST * 1.5)
            self.assertEqual(event["max_budget"], 1.0)
            #  The second call crossed it
            self.assertAlmostEqual(event["spend"], 2 * COST, delta=1e-12)
            self.assertGreaterEqual(event["at_us"], started_us)
            self.assertLessEqual(event["at_us"], time.time_ns() // 1000)
            self.assertNotIn(key, tap.stdout())
        finally:
            code, graceful = tap.stop()
        self.assertEqual((code, graceful), (0, True), tap.describe())
        self.assertNotIn("Sanitizer", tap.stderr())
        #  The log line stays, once
        warnings = [line for line in self.gw.output().splitlines()
                    if "crossed its soft budget" in line and name in line]
        self.assertEqual(len(warnings), 1, warnings)

    def lock_keys(self):
        """A session holding an exclusive lock on the keys table: every
        statement of the keystore waits until release_keys."""
        proc = subprocess.Popen(
            [self.pg._bin("psql"), "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(self.pg.port),
             "-U", zgpg.SUPERUSER, "-d", self.db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self.pg._client_env())
        proc.stdin.write(b'BEGIN; LOCK TABLE "LiteLLM_VerificationToken" IN ACCESS EXCLUSIVE MODE;'
                         b" SELECT 'locked';\n")
        proc.stdin.flush()
        self.assertEqual(proc.stdout.readline().strip(), b"locked")
        return proc

    def release_keys(self, proc):
        proc.stdin.write(b"ROLLBACK;\n")
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()

    def test_slow_database(self):
        known = self.generate()["key"]
        self.assertEqual(self.chat(known).status, 200)
        lock = self.lock_keys()
        try:
            #  A known key never waits on the database
            self.assertEqual(self.chat(known).status, 200)
            #  An unknown key waits for its lookup, boundedly
            started = time.monotonic()
            error = self.assertErrorShape(self.chat("sk-slow-database-unknown-1"), 503,
                                          "temporarily unreachable")
            self.assertEqual(error["type"], "no_db_connection")
            self.assertLess(time.monotonic() - started, 30)
            #  Clients that leave while their key is looked up or their job runs
            socks = [zgtest.send_and_abandon(self.gw.port, "/chat/completions", chat_body(),
                                             headers=zgtest.auth_headers("sk-slow-database-2")),
                     zgtest.send_and_abandon(self.gw.port, "/key/generate", {},
                                             headers=zgtest.auth_headers(MASTER_KEY))]
            time.sleep(0.5)
            for sock in socks:
                zgtest.abort_socket(sock)
        finally:
            self.release_keys(lock)
        self.assertEqual(self.chat(known).status, 200)
        self.assertEqual(self.chat(self.generate()["key"]).status, 200)
        self.assertErrorShape(self.chat("sk-slow-database-unknown-1"), 401)

    def test_readiness_reports_the_database(self):
        resp = self.gw.get("/health/readiness", key=None)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()["db"], "connected")


class NoDatabaseTest(KeysCase):
    """Without a database, virtual keys are off and management refuses."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.gw = cls.gateway(zgtest.make_config(models(cls.up)), num_workers=1)

    def test_management_needs_a_database(self):
        for method, path in ADMIN_ROUTES:
            resp = self.admin(method, path, {} if method == "POST" else None)
            self.assertErrorShape(resp, 500, "DB not connected")

    def test_only_the_master_key(self):
        self.assertEqual(self.chat(MASTER_KEY).status, 200)
        self.assertErrorShape(self.chat("sk-any-virtual-key"), 401)
        ready = self.gw.get("/health/readiness", key=None).json()
        self.assertEqual(ready["db"], "Not connected")


class DatabaseDownTest(KeysCase):
    """PostgreSQL stops under two instances: one strict, one with
    allow_requests_on_db_unavailable."""

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        cls.db = "down"
        cls.url = cls.pg.create_database(cls.db)
        general = {"database_url": cls.url, "proxy_batch_write_at": 1}
        cls.gw = cls.gateway(zgtest.make_config(models(cls.up), general=general),
                             num_workers=1, name="zgate-strict")
        general = dict(general, allow_requests_on_db_unavailable=True)
        cls.lenient = cls.gateway(zgtest.make_config(models(cls.up), general=general),
                                  num_workers=1, name="zgate-lenient")

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.pg.stop()

    def readiness(self, gw):
        resp = gw.request("GET", "/health/readiness")
        return resp.status, resp.json()

    def test_outage(self):
        key = self.generate()["key"]
        for gw in (self.gw, self.lenient):
            self.assertEqual(self.chat(key, gw=gw).status, 200)
            self.assertEqual(self.readiness(gw)[1]["db"], "connected")
        self.pg.halt()
        try:
            zgtest.wait_until(lambda: self.readiness(self.gw)[0] == 503, 30, interval=0.2,
                              message="the strict instance unready")
            status, body = self.readiness(self.gw)
            self.assertEqual(body["db"], "disconnected")
            zgtest.wait_until(lambda: self.readiness(self.lenient)[1]["db"] == "disconnected",
                              30, interval=0.2, message="the lenient instance sees the outage")
            self.assertEqual(self.readiness(self.lenient)[0], 200)
            for gw in (self.gw, self.lenient):
                #  Known keys keep working
                self.assertEqual(self.chat(key, gw=gw).status, 200)
                self.assertEqual(self.chat(MASTER_KEY, gw=gw).status, 200)
            #  An unknown key: refused, or let in as nobody in particular
            error = self.assertErrorShape(self.chat("sk-unknown-in-outage", gw=self.gw), 503,
                                          "authentication database")
            self.assertEqual(error["type"], "no_db_connection")
            resp = self.chat("sk-unknown-in-outage", gw=self.lenient)
            self.assertEqual(resp.status, 200, resp)
            self.assertNotIn("x-litellm-key-spend", resp.headers)
            #  ...never as an admin
            resp = self.lenient.post("/key/generate", {}, key="sk-unknown-in-outage")
            self.assertIn(resp.status, (401, 403, 503), resp)
            self.assertNotEqual(resp.status, 200)
            #  Management needs the database
            self.assertErrorShape(self.gw.post("/key/generate", {}), 503)
        finally:
            self.pg.start()
        zgtest.wait_until(lambda: self.readiness(self.gw)[0] == 200, 60, interval=0.2,
                          message="the strict instance ready again")
        self.assertEqual(self.readiness(self.gw)[1]["db"], "connected")
        #  The unknown key is asked about again, and refused
        zgtest.wait_until(lambda: self.chat("sk-unknown-in-outage", gw=self.lenient).status == 401,
                          30, interval=0.2, message="the unknown key refused once the database is back")


if __name__ == "__main__":
    unittest.main()
