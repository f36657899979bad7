"""A throw-away PostgreSQL server for end-to-end tests (standard library only).

    with PostgresServer() as pg:
        url = pg.create_database("t1")        # postgresql://postgres@127.0.0.1:PORT/t1
        pg.psql("CREATE TABLE x (n int)", db="t1")
        rows = pg.query("SELECT n FROM x", db="t1")   # [["1"], ...]
        pg.halt(); ...; pg.start()            # down and up again, same port and data

The server is the one of Debian's postgresql package (initdb, postgres and
psql found under /usr/lib/postgresql/<version>/bin, newest version first);
the package's own cluster is neither used nor needed. Its data directory
and unix sockets live in a fresh temporary directory, it listens only on
127.0.0.1 on a free port, trusts every local connection, and runs with
fsync off. As root, the server runs as the `postgres` system user (which
owns the temporary directory); otherwise as the current user. stop() (also
on leaving the `with` block, and at interpreter exit for a server someone
forgot) stops it and removes everything it wrote.

Environment:
    ZG_PG_BIN      a directory holding initdb, postgres and psql instead
    ZG_E2E_KEEP=1  keep the temporary directory (server log, data)
"""

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

SUPERUSER = "postgres"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

_running = set()


def _version_key(path):
    #  /usr/lib/postgresql/15/bin -> (15,); "9.6" -> (9, 6)
    version = os.path.basename(os.path.dirname(path))
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def find_bin_dir():
    """The directory holding initdb, postgres and psql; SkipTest if none."""
    candidates = []
    if os.environ.get("ZG_PG_BIN"):
        candidates.append(os.environ["ZG_PG_BIN"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, name), os.X_OK)
               for name in ("initdb", "postgres", "psql")):
            return directory
    raise unittest.SkipTest("PostgreSQL is not installed (scripts/install-deps.sh test)")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_url(db="zgate"):
    """A URL on a loopback port where nothing listens: refused at once."""
    return "postgresql://%s@127.0.0.1:%d/%s" % (SUPERUSER, free_port(), db)


class PostgresError(Exception):
    pass


class PostgresServer:
    def __init__(self, name="pg"):
        self.bin_dir = find_bin_dir()
        self.name = name
        self.port = None
        self.proc = None
        self.workdir = None
        self.run_as = None              # (uid, gid) when root, else None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise unittest.SkipTest("running as root and there is no postgres user "
                                        "to run the server as")
            self.run_as = (entry.pw_uid, entry.pw_gid)

    # ----------------------------------------------------------------------
    # Paths and commands

    def _bin(self, name):
        return os.path.join(self.bin_dir, name)

    @property
    def data_dir(self):
        return os.path.join(self.workdir, "data")

    @property
    def socket_dir(self):
        return os.path.join(self.workdir, "sockets")

    @property
    def log_path(self):
        return os.path.join(self.workdir, "postgres.log")

    def _as_server_user(self):
        """Popen arguments that run a command as the server's user. initdb and
        postgres refuse to run as root; cwd must be a directory that user can
        read, or they fail to find their own executable."""
        kwargs = {"cwd": self.workdir, "stdin": subprocess.DEVNULL}
        if self.run_as:
            kwargs.update(user=self.run_as[0], group=self.run_as[1], extra_groups=[])
        return kwargs

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    # ----------------------------------------------------------------------
    # Life cycle

    def start(self):
        """initdb on first use, then start the server and wait until it
        answers. Returns self."""
        if self.proc is not None:
            return self
        if self.workdir is None:
            self._init()
        attempts = 3
        for attempt in range(attempts):
            if self.port is None:
                self.port = free_port()
            try:
                self._launch()
                break
            except PostgresError:
                #  Someone took the free port between the check and the
                #  bind: try another one (only while the port is not yet
                #  part of a URL handed out)
                if attempt == attempts - 1 or "could not bind" not in self.log() \
                        or getattr(self, "_urls_given", False):
                    raise
                self.port = None
        _running.add(self)
        return self

    def _init(self):
        #  Directly under the system's temporary directory: the server's
        #  user must be able to reach it, which a 0700 test directory of
        #  another user's would forbid
        self.workdir = tempfile.mkdtemp(prefix="zgpg-%s-" % self.name, dir="/tmp")
        os.mkdir(self.socket_dir)
        if self.run_as:
            for path in (self.workdir, self.socket_dir):
                os.chown(path, *self.run_as)
        try:
            with open(os.path.join(self.workdir, "initdb.log"), "wb") as out:
                if self.run_as:
                    os.fchown(out.fileno(), *self.run_as)
                code = subprocess.call(
                    [self._bin("initdb"), "-D", self.data_dir, "-U", SUPERUSER,
                     "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
                    stdout=out, stderr=subprocess.STDOUT, timeout=START_TIMEOUT,
                    **self._as_server_user())
            if code != 0:
                raise PostgresError("initdb failed (%s):\n%s" % (
                    code, open(os.path.join(self.workdir, "initdb.log")).read()))
        except BaseException:
            self._remove()
            raise

    def _launch(self):
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": self.socket_dir,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "100",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        argv = [self._bin("postgres"), "-D", self.data_dir]
        for key, value in settings.items():
            argv += ["-c", "%s=%s" % (key, value)]
        log = open(self.log_path, "ab")
        try:
            if self.run_as:
                os.fchown(log.fileno(), *self.run_as)
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         **self._as_server_user())
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise PostgresError("postgres exited with %s while starting:\n%s"
                                    % (code, self.log()[-4000:]))
            if self._answers():
                return
            if time.monotonic() >= deadline:
                self._halt_process()
                raise PostgresError("postgres did not answer within %.0f s:\n%s"
                                    % (START_TIMEOUT, self.log()[-4000:]))
            time.sleep(0.05)

    def _answers(self):
        result = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", SUPERUSER, "-d", "postgres", "-c", "SELECT 1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=10, env=self._client_env())
        return result.returncode == 0 and result.stdout.strip() == b"1"

    def halt(self):
        """Stop the server and keep its data and port: start() brings the
        same database back on the same URL (for database-down tests)."""
        self._halt_process()
        _running.discard(self)

    def _halt_process(self):
        if self.proc is None:
            return
        #  SIGINT is PostgreSQL's fast shutdown: sessions end, no waiting
        for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5), (signal.SIGKILL, 10)):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def stop(self):
        """Stop the server and remove everything it wrote."""
        self.halt()
        self._remove()

    def _remove(self):
        if self.workdir is None:
            return
        if os.environ.get("ZG_E2E_KEEP") == "1":
            print("kept %s" % self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # ----------------------------------------------------------------------
    # Using it

    def url(self, db="postgres"):
        self._urls_given = True
        return "postgresql://%s@127.0.0.1:%d/%s" % (SUPERUSER, self.port, db)

    def _client_env(self):
        env = dict(os.environ)
        for name in ("PGPASSWORD", "PGSERVICE", "PGOPTIONS", "PGHOST", "PGPORT", "PGDATABASE"):
            env.pop(name, None)
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    def psql(self, sql, db="postgres", check=True):
        """Run SQL (several statements allowed) and return psql's output:
        unaligned, tuples only, fields separated by '|'. With check, an SQL
        error raises PostgresError."""
        result = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", db, "-c", sql],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=60, env=self._client_env())
        if check and result.returncode != 0:
            raise PostgresError("psql failed (%s) on %r:\n%s" % (
                result.returncode, sql[:500], result.stderr.decode("utf-8", "replace")))
        return result.stdout.decode("utf-8", "replace")

    def query(self, sql, db="postgres"):
        """Rows of one SELECT as lists of strings (NULL reads as '')."""
        separator = "\x1f"
        result = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-At", "-F", separator, "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", db, "-c", sql],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=60, env=self._client_env())
        if result.returncode != 0:
            raise PostgresError("psql failed (%s) on %r:\n%s" % (
                result.returncode, sql[:500], result.stderr.decode("utf-8", "replace")))
        text = result.stdout.decode("utf-8", "replace")
        return [line.split(separator) for line in text.split("\n") if line != ""]

    def scalar(self, sql, db="postgres"):
        rows = self.query(sql, db=db)
        return rows[0][0] if rows else None

    def create_database(self, name):
        """A new empty database; returns its URL."""
        self.psql('CREATE DATABASE "%s"' % name.replace('"', '""'))
        return self.url(name)

    def table_exists(self, table, db):
        return self.scalar("SELECT to_regclass('\"%s\"') IS NOT NULL" % table, db=db) == "t"


@atexit.register
def _stop_forgotten():
    for server in list(_running):
        server.stop()
