"""The frontend's database side (zg_keystore and the management jobs)
against a real PostgreSQL.

Runs the zg_keystore self test of the test_frontend binary with
ZG_TEST_DATABASE_URL pointing at a throw-away server (zgpg.py): every
management op's answers and refusals, the changes each emits to the key
table, NOTIFY from another connection, spend reloads and resets, unknown
keys, the bounded queue, a killed connection, and the server halted and
started again (the binary asks for it on stdout and waits for a line on
stdin). The HTTP routes are covered by the gateway's own tests.
"""

import os
import select
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zgpg  # noqa: E402
import zgtest  # noqa: E402

RUN_TIMEOUT = 200.0


def unit_binary():
    binary = os.environ.get("ZG_TEST_FRONTEND_BIN") or os.path.join(
        os.path.dirname(zgtest.zgate_bin()), "tests", "test_frontend")
    if not os.access(binary, os.X_OK):
        raise unittest.SkipTest("no test_frontend binary next to zgate")
    return binary


class KeystoreAgainstServer(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.pg = zgpg.PostgresServer(name=cls.__name__).start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()

    def test_keystore_self_test(self):
        url = self.pg.create_database("keystore")
        env = dict(os.environ, ZG_TEST_DATABASE_URL=url, ZG_TEST_DB_CONTROL="1")
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        proc = subprocess.Popen([unit_binary(), "-v", "zg_keystore"], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        output = []
        commands = []
        pending = b""
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while True:
                left = deadline - time.monotonic()
                self.assertGreater(left, 0, "the self test did not finish:\n" + "".join(output))
                #  os.read, not readline: a line kept in a reader's buffer
                #  would never wake select
                ready, _, _ = select.select([proc.stdout], [], [], left)
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    text = line.decode("utf-8", "replace") + "\n"
                    output.append(text)
                    #  The self test's requests: halt or start the server
                    if text.startswith("@@ZG_DB "):
                        command = text.split()[1]
                        commands.append(command)
                        if command == "halt":
                            self.pg.halt()
                        else:
                            self.pg.start()
                        proc.stdin.write(b"done\n")
                        proc.stdin.flush()
            output.append(pending.decode("utf-8", "replace"))
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.pg.start()
        text = "".join(output)
        self.assertEqual(proc.returncode, 0, text)
        self.assertEqual(commands, ["halt", "start"], text)
        self.assertNotIn("Sanitizer", text)
        self.assertNotIn("runtime error:", text)
        self.assertIn("lookups while busy", text)
        self.assertTrue(text.rstrip().endswith("1 passed, 0 failed"), text)


if __name__ == "__main__":
    unittest.main()
