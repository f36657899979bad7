"""zgate migrate and migrations at start-up, against a real PostgreSQL.

One server per class (zgpg.py), one fresh database per test. `zgate
migrate` runs as a process with DATABASE_URL; start-up migrations run
through a supervised zgate (zgtest.Gateway).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zgpg  # noqa: E402
import zgtest  # noqa: E402

MIGRATIONS_DIR = os.path.join(zgtest._REPO, "db", "migrations")
LITELLM_TABLES = ("LiteLLM_VerificationToken", "LiteLLM_UserTable", "LiteLLM_TeamTable",
                  "LiteLLM_SpendLogs", "LiteLLM_ErrorLogs", "LiteLLM_ProxyModelTable")
MIGRATE_TIMEOUT = 120.0


def source_migrations():
    """(version, name, file name, sha256 hex) of db/migrations, in order."""
    result = []
    for file_name in sorted(os.listdir(MIGRATIONS_DIR)):
        if not file_name.endswith(".sql"):
            continue
        with open(os.path.join(MIGRATIONS_DIR, file_name), "rb") as f:
            checksum = hashlib.sha256(f.read()).hexdigest()
        version, name = file_name[:-4].split("_", 1)
        result.append((int(version), name, file_name, checksum))
    return result


class MigrationTestCase(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="zg-e2e-%s-" % cls.__name__)
        try:
            cls.pg = zgpg.PostgresServer(name=cls.__name__).start()
        except BaseException:
            shutil.rmtree(cls.workdir, ignore_errors=True)
            raise
        cls.db_count = 0

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()
        if os.environ.get("ZG_E2E_KEEP") != "1":
            shutil.rmtree(cls.workdir, ignore_errors=True)

    def setUp(self):
        type(self).db_count += 1
        self.db = "t%d_%s" % (self.db_count, self._testMethodName[5:40])
        self.url = self.pg.create_database(self.db)
        self.outputs = []

    # helpers

    def migrate(self, env=None, url=None, config=None, timeout=MIGRATE_TIMEOUT):
        """Run `zgate migrate` to its end: (exit code, stdout + stderr)."""
        full_env = dict(os.environ)
        full_env.pop("LITELLM_MIGRATION_DIR", None)
        full_env.pop("DISABLE_SCHEMA_UPDATE", None)
        full_env["DATABASE_URL"] = url or self.url
        full_env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        full_env.update(env or {})
        argv = [zgtest.zgate_bin(), "migrate"]
        if config:
            argv += ["--config", config]
        proc = subprocess.run(argv, env=full_env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        output = proc.stdout.decode("utf-8", "replace")
        self.outputs.append("---- zgate migrate (exit %d) ----\n%s" % (proc.returncode, output))
        self.assertNotIn("Sanitizer", output)
        self.assertNotIn("runtime error:", output)
        return proc.returncode, output

    def recorded(self):
        return self.pg.query('SELECT "version", "name", "checksum", "applied_at" '
                             'FROM "zgate_migrations" ORDER BY "version"', db=self.db)

    def copy_migrations(self, name):
        directory = os.path.join(self.workdir, "%s-%s" % (self.db, name))
        shutil.copytree(MIGRATIONS_DIR, directory)
        return directory

    def assertApplied(self, expected):
        rows = self.recorded()
        self.assertEqual([(int(r[0]), r[1], r[2]) for r in rows],
                         [(v, n, c) for v, n, _, c in expected])


class MigrateCommand(MigrationTestCase):

    def test_fresh_database(self):
        code, output = self.migrate()
        self.assertEqual(code, 0, output)
        for table in LITELLM_TABLES:
            self.assertTrue(self.pg.table_exists(table, self.db), table)
        self.assertApplied(source_migrations())
        for _, _, file_name, _ in source_migrations():
            self.assertIn("applied migration %s" % file_name, output)

        columns = {row[0]: row[1:] for row in self.pg.query(
            "SELECT column_name, data_type, column_default, is_nullable "
            "FROM information_schema.columns WHERE table_name = 'LiteLLM_VerificationToken'",
            db=self.db)}
        for name in ("token", "key_name", "key_alias", "spend", "max_budget", "budget_duration",
                     "budget_reset_at", "expires", "models", "tpm_limit", "rpm_limit",
                     "max_parallel_requests", "metadata", "user_id", "team_id", "blocked",
                     "soft_budget", "created_at", "updated_at"):
            self.assertIn(name, columns)
        self.assertEqual(columns["spend"][0], "double precision")
        self.assertEqual(columns["tpm_limit"][0], "bigint")
        self.assertEqual(columns["rpm_limit"][0], "bigint")
        self.assertEqual(columns["max_parallel_requests"][0], "integer")
        self.assertEqual(columns["metadata"][0], "jsonb")
        self.assertEqual(columns["models"][0], "ARRAY")
        self.assertEqual(columns["blocked"][0], "boolean")

        spend_columns = {row[0] for row in self.pg.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'LiteLLM_SpendLogs'", db=self.db)}
        for name in ("request_id", "call_type", "api_key", "spend", "total_tokens",
                     "prompt_tokens", "completion_tokens", "startTime", "endTime",
                     "completionStartTime", "request_duration_ms", "model", "model_id",
                     "model_group", "custom_llm_provider", "api_base", "user", "team_id",
                     "metadata", "cache_hit", "status"):
            self.assertIn(name, spend_columns)
        indexes = {row[0] for row in self.pg.query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'LiteLLM_SpendLogs'", db=self.db)}
        for name in ("LiteLLM_SpendLogs_pkey", "LiteLLM_SpendLogs_startTime_idx",
                     "LiteLLM_SpendLogs_startTime_request_id_idx",
                     "LiteLLM_SpendLogs_end_user_idx", "LiteLLM_SpendLogs_session_id_idx"):
            self.assertIn(name, indexes)

        #  Defaults a writer relies on
        self.pg.psql("INSERT INTO \"LiteLLM_VerificationToken\" (token) VALUES ('abc')", db=self.db)
        self.assertEqual(self.pg.query(
            "SELECT spend, models, metadata::text FROM \"LiteLLM_VerificationToken\"",
            db=self.db), [["0", "{}", "{}"]])

    def test_rerun_is_a_no_op(self):
        code, output = self.migrate()
        self.assertEqual(code, 0, output)
        before = self.recorded()
        code, output = self.migrate()
        self.assertEqual(code, 0, output)
        self.assertNotIn("applied migration", output)
        self.assertIn("all %d migrations were applied before" % len(source_migrations()), output)
        self.assertEqual(self.recorded(), before)

    def test_concurrent_runs_apply_each_migration_once(self):
        #  A slow migration that would count twice if it ran twice holds
        #  the lock long enough for the other processes to queue behind it
        directory = self.copy_migrations("concurrent")
        with open(os.path.join(directory, "9001_slow_counter.sql"), "w") as f:
            f.write("CREATE TABLE IF NOT EXISTS zg_runs (n int);\n"
                    "INSERT INTO zg_runs VALUES (1);\n"
                    "SELECT pg_sleep(1);\n")
        env = dict(os.environ, DATABASE_URL=self.url, LITELLM_MIGRATION_DIR=directory)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        procs = [subprocess.Popen([zgtest.zgate_bin(), "migrate"], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for _ in range(4)]
        outputs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=MIGRATE_TIMEOUT)
            outputs.append((proc.returncode, out.decode("utf-8", "replace")))
            self.outputs.append("---- exit %d ----\n%s" % outputs[-1])
        for code, output in outputs:
            self.assertEqual(code, 0, output)
        expected = source_migrations()
        for _, _, file_name, _ in expected + [(9001, "", "9001_slow_counter.sql", "")]:
            count = sum(output.count("applied migration %s " % file_name) for _, output in outputs)
            self.assertEqual(count, 1, file_name)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM zg_runs", db=self.db), "1")
        self.assertEqual(len(self.recorded()), len(expected) + 1)
        self.assertTrue(any("waiting for it" in output for _, output in outputs))

    def test_changed_migration_is_refused(self):
        directory = self.copy_migrations("tampered")
        code, output = self.migrate(env={"LITELLM_MIGRATION_DIR": directory})
        self.assertEqual(code, 0, output)
        first = source_migrations()[0]
        path = os.path.join(directory, first[2])
        with open(path, "ab") as f:
            f.write(b"\n-- changed after it was applied\n")
        with open(path, "rb") as f:
            new_checksum = hashlib.sha256(f.read()).hexdigest()
        #  and a new migration after it, which must not run
        with open(os.path.join(directory, "9002_after.sql"), "w") as f:
            f.write("CREATE TABLE zg_after (n int);\n")

        start = time.monotonic()
        code, output = self.migrate(env={"LITELLM_MIGRATION_DIR": directory})
        self.assertNotEqual(code, 0, output)
        self.assertIn("migration %s was changed after it was applied" % first[2], output)
        self.assertIn(first[3], output)
        self.assertIn(new_checksum, output)
        self.assertLess(time.monotonic() - start, 30)
        self.assertFalse(self.pg.table_exists("zg_after", self.db))
        self.assertApplied(source_migrations())

    def test_extra_migration_in_litellm_migration_dir(self):
        code, output = self.migrate()
        self.assertEqual(code, 0, output)
        directory = self.copy_migrations("extra")
        with open(os.path.join(directory, "9003_extra_table.sql"), "w") as f:
            f.write("CREATE TABLE zg_extra (n int);\nINSERT INTO zg_extra VALUES (7);\n")
        code, output = self.migrate(env={"LITELLM_MIGRATION_DIR": directory})
        self.assertEqual(code, 0, output)
        self.assertIn("applied migration 9003_extra_table.sql", output)
        self.assertEqual(self.pg.scalar("SELECT n FROM zg_extra", db=self.db), "7")
        rows = self.recorded()
        self.assertEqual((rows[-1][0], rows[-1][1]), ("9003", "extra_table"))

    def test_failing_migration_is_rolled_back(self):
        directory = self.copy_migrations("failing")
        with open(os.path.join(directory, "9004_broken.sql"), "w") as f:
            f.write("CREATE TABLE zg_half (n int);\nSELECT no_such_function();\n")
        code, output = self.migrate(env={"LITELLM_MIGRATION_DIR": directory})
        self.assertNotEqual(code, 0, output)
        self.assertIn("migration 9004_broken.sql failed and was rolled back", output)
        self.assertIn("no_such_function", output)
        self.assertFalse(self.pg.table_exists("zg_half", self.db))
        self.assertApplied(source_migrations())

    def test_empty_litellm_migration_dir_uses_built_in(self):
        directory = os.path.join(self.workdir, self.db + "-empty")
        os.mkdir(directory)
        code, output = self.migrate(env={"LITELLM_MIGRATION_DIR": directory,
                                         "USE_PRISMA_MIGRATE": "True", "LITELLM_LOG": "DEBUG"})
        self.assertEqual(code, 0, output)
        self.assertIn("USE_PRISMA_MIGRATE is accepted", output)
        self.assertApplied(source_migrations())

    def test_litellm_database_keeps_its_rows(self):
        #  Tables as an older LiteLLM proxy left them: fewer columns, rows in
        #  them, its own indexes
        self.pg.psql("""
            CREATE TABLE "LiteLLM_VerificationToken" (
                "token" TEXT NOT NULL, "key_name" TEXT, "key_alias" TEXT,
                "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0, "expires" TIMESTAMP(3),
                "models" TEXT[], "user_id" TEXT, "team_id" TEXT,
                "metadata" JSONB NOT NULL DEFAULT '{}', "max_budget" DOUBLE PRECISION,
                "tpm_limit" BIGINT, "rpm_limit" BIGINT,
                CONSTRAINT "LiteLLM_VerificationToken_pkey" PRIMARY KEY ("token"));
            INSERT INTO "LiteLLM_VerificationToken"
                (token, key_name, spend, models, metadata, max_budget, tpm_limit)
                VALUES ('9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08',
                        'sk-...abcd', 12.5, ARRAY['gpt-4o'], '{"team": "a"}', 100, 5000);
            CREATE TABLE "LiteLLM_SpendLogs" (
                "request_id" TEXT NOT NULL, "call_type" TEXT NOT NULL,
                "api_key" TEXT NOT NULL DEFAULT '', "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
                "startTime" TIMESTAMP(3) NOT NULL, "endTime" TIMESTAMP(3) NOT NULL,
                "model" TEXT NOT NULL DEFAULT '',
                CONSTRAINT "LiteLLM_SpendLogs_pkey" PRIMARY KEY ("request_id"));
            CREATE INDEX "LiteLLM_SpendLogs_startTime_idx" ON "LiteLLM_SpendLogs"("startTime");
            INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend,
                "startTime", "endTime", model)
                VALUES ('chatcmpl-1', 'acompletion', 'abc', 0.25, '2026-01-01', '2026-01-01', 'gpt-4o');
            CREATE TABLE "LiteLLM_UserTable" ("user_id" TEXT NOT NULL PRIMARY KEY,
                "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0, "max_budget" DOUBLE PRECISION);
            INSERT INTO "LiteLLM_UserTable" VALUES ('ishaan', 3.5, 10);
            CREATE TABLE "LiteLLM_BudgetTable" ("budget_id" TEXT PRIMARY KEY);
            INSERT INTO "LiteLLM_BudgetTable" VALUES ('b1');
        """, db=self.db)
        code, output = self.migrate()
        self.assertEqual(code, 0, output)
        self.assertNotIn("NOTICE", output)
        self.assertEqual(self.pg.query(
            'SELECT key_name, spend, models, metadata::text, max_budget, tpm_limit, '
            'soft_budget IS NULL, allowed_routes FROM "LiteLLM_VerificationToken"', db=self.db),
            [["sk-...abcd", "12.5", "{gpt-4o}", '{"team": "a"}', "100", "5000", "t", "{}"]])
        self.assertEqual(self.pg.query(
            'SELECT request_id, spend, model, status IS NULL, cache_hit FROM "LiteLLM_SpendLogs"',
            db=self.db), [["chatcmpl-1", "0.25", "gpt-4o", "t", ""]])
        self.assertEqual(self.pg.query('SELECT user_id, spend FROM "LiteLLM_UserTable"',
                                       db=self.db), [["ishaan", "3.5"]])
        self.assertEqual(self.pg.scalar('SELECT count(*) FROM "LiteLLM_BudgetTable"', db=self.db),
                         "1")
        #  LiteLLM's index is recognised by name, not built a second time
        self.assertEqual(self.pg.scalar(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'LiteLLM_SpendLogs' "
            "AND indexdef LIKE '%(\"startTime\")'", db=self.db), "1")
        for table in LITELLM_TABLES:
            self.assertTrue(self.pg.table_exists(table, self.db), table)
        self.assertApplied(source_migrations())

    def test_unreachable_database_fails_fast(self):
        start = time.monotonic()
        code, output = self.migrate(url=zgpg.unreachable_url())
        self.assertNotEqual(code, 0, output)
        self.assertIn("cannot connect to postgresql://postgres@127.0.0.1:", output)
        self.assertLess(time.monotonic() - start, 20)

    def test_no_database_configured(self):
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        proc = subprocess.run([zgtest.zgate_bin(), "migrate"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=MIGRATE_TIMEOUT)
        output = proc.stdout.decode("utf-8", "replace")
        self.assertNotEqual(proc.returncode, 0, output)
        self.assertIn("no database configured", output)

    def test_database_url_from_config(self):
        config = os.path.join(self.workdir, self.db + ".yaml")
        with open(config, "w") as f:
            f.write(zgtest.to_yaml(zgtest.make_config(
                [], general={"database_url": self.url})) + "\n")
        code, output = self.migrate(url=zgpg.unreachable_url(), config=config)
        self.assertEqual(code, 0, output)
        self.assertApplied(source_migrations())

    def test_db_library_against_a_server(self):
        #  zg_db's own test (connections, parameters, non-blocking queries
        #  collected from a poller, the pool's bounds) with a live server
        binary = os.environ.get("ZG_TEST_DB_BIN") or os.path.join(
            os.path.dirname(zgtest.zgate_bin()), "tests", "test_db")
        if not os.access(binary, os.X_OK):
            self.skipTest("no test_db binary next to zgate")
        env = dict(os.environ, ZG_TEST_DATABASE_URL=self.url)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        proc = subprocess.run([binary, "-v"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=MIGRATE_TIMEOUT)
        output = proc.stdout.decode("utf-8", "replace")
        self.assertEqual(proc.returncode, 0, output)
        self.assertIn("non-blocking query collected", output)
        self.assertTrue(output.rstrip().endswith("3 passed, 0 failed"), output)


class MigrationsAtStart(MigrationTestCase):
    """The supervisor applies pending migrations before it starts anything,
    unless DISABLE_SCHEMA_UPDATE=true; a database that is down does not
    keep zgate from starting; a changed migration does."""

    def gateway(self, database_url, env=None, wait_ready=True):
        config = zgtest.make_config([], general={"database_url": database_url})
        full_env = {"LITELLM_MIGRATION_DIR": "", "DISABLE_SCHEMA_UPDATE": ""}
        full_env.update(env or {})
        gw = zgtest.Gateway(self.workdir, config, num_workers=1, env=full_env,
                            name="zgate-" + self.db, wait_ready=wait_ready)
        self.addCleanup(self.stop_gateway, gw)
        return gw

    def stop_gateway(self, gw):
        exited = gw.proc.poll() is not None
        problems = [p for p in gw.stop() if not (exited and "after SIGTERM" in p)]
        problems += gw.sanitizer_reports()
        self.outputs.append(gw.describe())
        self.assertEqual(problems, [])

    def live(self, gw):
        """Wait until zgate answers at all: readiness is 503 while the
        database cannot be used (without allow_requests_on_db_unavailable)"""
        zgtest.wait_until(lambda: gw.proc.poll() is None and
                          gw.request("GET", "/health/liveliness", timeout=5).status == 200,
                          zgtest.START_TIMEOUT, interval=0.1, message="GET /health/liveliness")

    def test_starts_and_serves_with_the_database_down(self):
        gw = self.gateway(zgpg.unreachable_url(), wait_ready=False)
        self.live(gw)
        self.assertIn("database migrations skipped: cannot connect to", gw.output())
        #  It serves the master key; readiness says the database is down
        zgtest.wait_until(lambda: gw.get("/health/readiness", key=None).json().get("db")
                          == "disconnected", 30, interval=0.1, message="db disconnected")
        self.assertEqual(gw.get("/health/readiness", key=None).status, 503)
        self.assertEqual(gw.get("/models").status, 200)

    def test_applies_pending_migrations_at_start(self):
        gw = self.gateway(self.url)
        self.assertEqual(gw.get("/health/liveliness").status, 200)
        self.assertApplied(source_migrations())

    def test_disable_schema_update(self):
        #  Without its tables the database cannot check keys: zgate is live,
        #  not ready
        gw = self.gateway(self.url, env={"DISABLE_SCHEMA_UPDATE": "true"}, wait_ready=False)
        self.live(gw)
        self.assertFalse(self.pg.table_exists("zgate_migrations", self.db))
        self.assertFalse(self.pg.table_exists("LiteLLM_VerificationToken", self.db))
        self.assertIn("DISABLE_SCHEMA_UPDATE=true", gw.output())

    def test_changed_migration_stops_start_up(self):
        directory = self.copy_migrations("start-tampered")
        code, output = self.migrate(env={"LITELLM_MIGRATION_DIR": directory})
        self.assertEqual(code, 0, output)
        with open(os.path.join(directory, source_migrations()[-1][2]), "ab") as f:
            f.write(b"\n-- edited\n")
        gw = self.gateway(self.url, env={"LITELLM_MIGRATION_DIR": directory}, wait_ready=False)
        code = gw.proc.wait(timeout=zgtest.START_TIMEOUT)
        self.assertIsNotNone(code, "zgate kept running with a changed migration")
        self.assertNotEqual(code, 0)
        self.assertIn("was changed after it was applied", gw.output())


if __name__ == "__main__":
    unittest.main()
