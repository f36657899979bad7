"""End-to-end: spend records reach PostgreSQL, exactly once per call.

A real PostgreSQL (zgpg.py), one fresh database and one zgate per test,
proxy_batch_write_at: 1 and a priced deployment so that every call costs
something. Each test sends N requests, remembers the x-litellm-call-id of
every answer, and then polls (generous bounds) until "LiteLLM_SpendLogs"
holds exactly those call ids, with the master key's spend equal to their
sum. The faults: the spend actor SIGKILLed mid-way, PostgreSQL stopped
while the requests are sent, and zgate stopped right after the last one.
"""

import hashlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zgpg  # noqa: E402
import zgtest  # noqa: E402
from zgtest import MASTER_KEY, chat_body  # noqa: E402

N = 200
THREADS = 8
#  Rows must appear within this many seconds once the database is there
ROWS_TIMEOUT = 120.0
MASTER_HASH = hashlib.sha256(MASTER_KEY.encode()).hexdigest()


class SpendTest(zgtest.GatewayTestCase):

    @classmethod
    def start(cls):
        cls.up = cls.upstream()
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        cls.db_count = 0

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.pg.stop()

    def setUp(self):
        type(self).db_count += 1
        self.db = "spend%d" % self.db_count
        self.url = self.pg.create_database(self.db)
        self.spill_dir = os.path.join(self.workdir, "spill-" + self.db)
        self.config = zgtest.make_config(
            [zgtest.deployment("gpt-4o", self.up.api_base,
                               input_cost_per_token=0.000001, output_cost_per_token=0.000002)],
            general={"database_url": self.url, "proxy_batch_write_at": 1})
        self.gw = self.start_gateway("zgate-" + self.db)

    def start_gateway(self, name):
        env = {"ZGATE_SPILL_DIR": self.spill_dir, "ZGATE_SPEND_STOP_WAIT_MS": "2000"}
        gw = self.gateway(self.config, num_workers=1, name=name, env=env)
        self.addCleanup(self.stop_gateway, gw)
        return gw

    def stop_gateway(self, gw):
        if gw.proc.poll() is None:
            self.assertEqual(gw.stop(), [])
        self.assertEqual(gw.sanitizer_reports(), [])

    # helpers

    def send(self, count, on_progress=None):
        """count chat requests from THREADS threads; the call ids seen."""
        ids = []
        lock = threading.Lock()
        next_index = [0]

        def worker(_):
            while True:
                with lock:
                    if next_index[0] >= count:
                        return None
                    next_index[0] += 1
                    index = next_index[0]
                resp = self.gw.post("/chat/completions", chat_body(content="hi %d" % index))
                if resp.status != 200:
                    return AssertionError("request %d: %r" % (index, resp))
                call_id = resp.headers.get("x-litellm-call-id")
                if not call_id:
                    return AssertionError("request %d: no x-litellm-call-id" % index)
                with lock:
                    ids.append(call_id)
                    done = len(ids)
                if on_progress:
                    on_progress(done)

        results = zgtest.run_threads(THREADS, worker)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self.assertEqual(len(ids), count)
        self.assertEqual(len(set(ids)), count)
        return ids

    def rows(self):
        return [r[0] for r in self.pg.query(
            'SELECT request_id FROM "LiteLLM_SpendLogs"', db=self.db)]

    def row_count(self):
        try:
            return int(self.pg.scalar('SELECT count(*) FROM "LiteLLM_SpendLogs"', db=self.db))
        except Exception:
            return -1

    def assertAllWritten(self, ids, timeout=ROWS_TIMEOUT):
        zgtest.wait_until(lambda: self.row_count() >= len(ids), timeout, interval=0.2,
                          message="%d rows in LiteLLM_SpendLogs" % len(ids))
        self.assertEqual(sorted(self.rows()), sorted(ids))
        total = float(self.pg.scalar('SELECT sum(spend) FROM "LiteLLM_SpendLogs"', db=self.db))
        self.assertGreater(total, 0.0)
        zgtest.wait_until(lambda: self.key_spend() is not None, timeout, interval=0.2,
                          message="the master key's row")
        key_spend = self.key_spend()
        self.assertLessEqual(abs(key_spend - total), 1e-9 * total,
                             "key spend %r, rows %r" % (key_spend, total))
        statuses = {r[0] for r in self.pg.query(
            'SELECT DISTINCT status FROM "LiteLLM_SpendLogs"', db=self.db)}
        self.assertEqual(statuses, {"success"})
        # Each row's spend is the very double the worker computed (prompt x
        # input price + completion x output price), bit for bit
        for prompt, completion, bits in self.pg.query(
                "SELECT prompt_tokens, completion_tokens, encode(float8send(spend), 'hex')"
                ' FROM "LiteLLM_SpendLogs"', db=self.db):
            expected = int(prompt) * 0.000001 + int(completion) * 0.000002
            self.assertEqual(bits, struct.pack(">d", expected).hex(),
                             "spend of a row with %s + %s tokens" % (prompt, completion))
        self.assertEqual(self.pg.scalar(
            'SELECT count(*) FROM "LiteLLM_SpendLogs" WHERE api_key <> %s' % ("'" + MASTER_HASH + "'"),
            db=self.db), "0")

    def key_spend(self):
        value = self.pg.scalar('SELECT spend FROM "LiteLLM_VerificationToken" WHERE token = \'%s\''
                               % MASTER_HASH, db=self.db)
        return float(value) if value not in (None, "") else None

    def spend_pid(self):
        pids = self.gw.children("spend")
        return pids[0] if pids else None

    # tests

    def test_every_call_once(self):
        before = time.time()
        ids = self.send(N)
        after = time.time()
        self.assertAllWritten(ids)
        #  Times in UTC, to the millisecond, inside the sending window, the
        #  duration their difference
        bad = self.pg.scalar(
            'SELECT count(*) FROM "LiteLLM_SpendLogs" WHERE'
            ' extract (epoch FROM "startTime") < %f OR extract (epoch FROM "endTime") > %f'
            ' OR "endTime" < "startTime"'
            ' OR abs (extract (epoch FROM "endTime" - "startTime") * 1000 - request_duration_ms) > 1'
            ' OR "completionStartTime" NOT BETWEEN "startTime" AND "endTime"'
            % (before - 1, after + 1), db=self.db)
        self.assertEqual(bad, "0")
        name = self.pg.scalar('SELECT key_name FROM "LiteLLM_VerificationToken" WHERE token = \'%s\''
                              % MASTER_HASH, db=self.db)
        self.assertEqual(name, "sk-..." + MASTER_KEY[-4:])
        model, model_id, call_type = self.pg.query(
            'SELECT model_group, model_id, call_type FROM "LiteLLM_SpendLogs" LIMIT 1',
            db=self.db)[0]
        self.assertEqual((model, call_type), ("gpt-4o", "acompletion"))

    def test_failures_are_recorded(self):
        ok = self.send(5)
        failed = []
        for body in (chat_body(fake={"status": 400}), chat_body(model="no-such-model")):
            resp = self.gw.post("/chat/completions", body)
            self.assertEqual(resp.status, 400, resp)
            failed.append(resp.headers.get("x-litellm-call-id"))
        self.assertTrue(all(failed), failed)
        zgtest.wait_until(lambda: self.row_count() >= 7, ROWS_TIMEOUT, interval=0.2,
                          message="7 rows in LiteLLM_SpendLogs")
        rows = {r[0]: r[1:] for r in self.pg.query(
            'SELECT request_id, status, spend FROM "LiteLLM_SpendLogs"', db=self.db)}
        self.assertEqual(sorted(rows), sorted(ok + failed))
        for call_id in failed:
            self.assertEqual(rows[call_id], ["failure", "0"])
        errors = {r[0]: r[1] for r in self.pg.query(
            'SELECT request_id, status_code FROM "LiteLLM_ErrorLogs"', db=self.db)}
        self.assertEqual(errors, {call_id: "400" for call_id in failed})

    def test_text_is_written_as_sent(self):
        #  Strings reach PostgreSQL as their bytes (binary parameters):
        #  quotes, a backslash, control and non-ASCII characters come back
        #  as they were sent
        model = 'caf\u00e9 "q" \\ \t\u20ac\U0001f600'
        resp = self.gw.post("/chat/completions", chat_body(model=model))
        self.assertEqual(resp.status, 400, resp)
        call_id = resp.headers.get("x-litellm-call-id")
        self.assertTrue(call_id)
        zgtest.wait_until(lambda: self.row_count() >= 1, ROWS_TIMEOUT, interval=0.2,
                          message="the row of the call")
        rows = self.pg.query('SELECT request_id, model_group, status, spend'
                             ' FROM "LiteLLM_SpendLogs"', db=self.db)
        self.assertEqual(rows, [[call_id, model, "failure", "0"]])
        errors = self.pg.query('SELECT model_group, status_code FROM "LiteLLM_ErrorLogs"',
                               db=self.db)
        self.assertEqual(errors, [[model, "400"]])

    def test_usage_beyond_the_columns(self):
        #  An upstream's usage counts go to INTEGER columns: one beyond them
        #  (or negative) is recorded clamped (2^31-1, or 0), its spend
        #  computed from the count recorded, and the calls before and after
        #  it are written as usual (no batch stuck behind a refused row)
        limit = 2 ** 31 - 1
        before = self.send(5)
        told = [(3000000000, False), (-5, False), (3000000000, True), (10 ** 15 - 1, False)]
        odd = {}
        for prompt_tokens, stream in told:
            extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
            resp = self.gw.post("/chat/completions",
                                chat_body(fake={"prompt_tokens": prompt_tokens, "chunks": 3},
                                          **extra))
            self.assertEqual(resp.status, 200, resp)
            call_id = resp.headers.get("x-litellm-call-id")
            self.assertTrue(call_id)
            odd[call_id] = prompt_tokens
        after = self.send(5)
        self.assertAllWritten(before + list(odd) + after)
        rows = {r[0]: [int(v) for v in r[1:]] for r in self.pg.query(
            'SELECT request_id, prompt_tokens, completion_tokens, total_tokens'
            ' FROM "LiteLLM_SpendLogs"', db=self.db)}
        for call_id, prompt_tokens in odd.items():
            recorded = min(max(prompt_tokens, 0), limit)
            self.assertEqual(rows[call_id], [recorded, 3, min(recorded + 3, limit)],
                             "told %d prompt tokens" % prompt_tokens)
        for call_id in before + after:
            self.assertEqual(rows[call_id], [10, 8, 18])
        self.assertIn("recorded as %d prompt" % limit, self.gw.output())
        self.assertIn("recorded as 0 prompt", self.gw.output())

    def test_spend_actor_killed(self):
        zgtest.wait_until(lambda: self.spend_pid() is not None, 30, message="a spend actor")
        first = self.spend_pid()
        killed = []

        def progress(done):
            if done >= N // 3 and not killed:
                killed.append(True)
                os.kill(first, signal.SIGKILL)

        ids = self.send(N, on_progress=progress)
        self.assertTrue(killed)
        zgtest.wait_until(lambda: self.spend_pid() not in (None, first), 60,
                          message="the supervisor started a new spend actor")
        self.assertAllWritten(ids)

    def test_database_down(self):
        #  The key's row exists before the outage, as at any real start
        zgtest.wait_until(lambda: self.key_spend() is not None, 60, interval=0.2,
                          message="the master key's row")
        self.pg.halt()
        try:
            ids = self.send(N)
        finally:
            self.pg.start()
        self.assertAllWritten(ids)

    def test_stop_right_after_the_last_request(self):
        ids = self.send(N)
        problems = self.gw.stop()
        self.assertEqual(problems, [])
        self.assertEqual(sorted(self.rows()), sorted(ids))

    def test_unacked_records_survive_a_restart(self):
        zgtest.wait_until(lambda: self.key_spend() is not None, 60, interval=0.2,
                          message="the master key's row")
        self.pg.halt()
        try:
            ids = self.send(N)
            #  Nothing can be acked: the router saves its records on stop
            self.assertEqual(self.gw.stop(), [])
            spill = os.path.join(self.spill_dir, "spend.spill")
            self.assertTrue(os.path.exists(spill) and os.path.getsize(spill) > 0,
                            "no spill file after the stop")
            self.assertIn("saved for the next start", self.gw.output())
        finally:
            self.pg.start()
        self.assertEqual(self.row_count(), 0)
        self.start_gateway("zgate-%s-again" % self.db)
        self.assertAllWritten(ids)
        zgtest.wait_until(lambda: not os.path.exists(spill), 30,
                          message="the spill file removed once sent")


class SpendWritesAgainstServer(unittest.TestCase):
    """The spend actor's write path (zg_spend's self test, in the test_spend
    binary) against a real PostgreSQL: records whose values the columns
    refuse (a token count beyond INTEGER, a time beyond timestamp) are put
    aside in LiteLLM_ErrorLogs and the log, every other record of their
    batch is written, re-sent records count once, and an outage or a
    missing table keeps the batch whole."""

    @classmethod
    def setUpClass(cls):
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()

    def test_refused_records_put_aside(self):
        binary = os.environ.get("ZG_TEST_SPEND_BIN") or os.path.join(
            os.path.dirname(zgtest.zgate_bin()), "tests", "test_spend")
        if not os.access(binary, os.X_OK):
            self.skipTest("no test_spend binary next to zgate")
        url = self.pg.create_database("spendwrites")
        env = dict(os.environ, ZG_TEST_DATABASE_URL=url)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        proc = subprocess.run([binary, "-v"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=ROWS_TIMEOUT)
        output = proc.stdout.decode("utf-8", "replace")
        self.assertEqual(proc.returncode, 0, output)
        self.assertIn("live: 12 records, 2 refused and put aside", output)
        self.assertRegex(output.rstrip().splitlines()[-1], r"^\d+ passed, 0 failed$", output)
        #  Each refused record named in the log with its reason
        self.assertIn("spend: call huge-tokens: the database refused this call's spend record"
                      " (integer out of range (SQLSTATE 22003))", output)
        self.assertIn("kept in LiteLLM_ErrorLogs as SpendLogRefused", output)
        self.assertIn("spend: call huge-3:", output)
        self.assertIn("not written (disable_error_logs is set)", output)


if __name__ == "__main__":
    unittest.main()
