#!/usr/bin/env python3
"""CPU time of every zgate thread per request, A/B between builds.

    bench/cpu.py [--rounds 3] [--seconds 4] [--scenario chat] [--vkey] [vkey:]BUILD [...]

Each BUILD is a build directory (zgate and fakeupstream/fake_upstream in
it) or a directory holding both binaries. For each, a fake upstream and a
zgate (--num_workers 1) are started on CPU 0 as bench/run.sh places them,
and wrk loads them from CPU 1. Every round runs each build in turn (a warm-up
second, then SECONDS measured), so that a busy spell of a shared machine
weighs on all of them alike. Per thread it reads from /proc, before and
after, the time on CPU (schedstat), the user time and the voluntary and
involuntary context switches, and divides by the requests wrk counted.
requests/s move with whatever else runs on the machine; CPU per request
much less, which is what makes a change of a microsecond visible.

With --vkey (or for a BUILD given as vkey:BUILD), each zgate gets a database of its own on one PostgreSQL (the
end-to-end tests' tests/e2e/zgpg.py, pinned to CPU 1 with wrk as bench/run.sh
places it) and spend logging on (proxy_batch_write_at: 1), and is called
with a virtual key made through its /key/generate: the vkey target of
bench/run.sh. At the end each build's spend rows are counted against the
answers wrk counted.

A line per build and round, then the medians:
    frontend:zgate        the frontend's main thread (libmicrohttpd)
    frontend:zgate-t      its router thread
    */ZMQbg/IO/0-t        ZeroMQ's I/O threads
    worker:zgate          the worker (libcurl)
    fake:fake_upstream-t  the fake upstream's serving thread
  each as us(uUSER,vVOLUNTARY,nINVOLUNTARY switches) per request.
"""
import argparse
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
SCENARIOS = {
    "chat": ("/v1/chat/completions",
             '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, how are you?"}]}',
             '"choices"'),
    "stream": ("/v1/chat/completions",
               '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, how are you?"}],'
               '"stream":true}', "data: [DONE]"),
    "embeddings": ("/v1/embeddings", '{"model":"text-embedding-3-small","input":"hello world"}',
                   '"embedding"'),
}
CONFIG = """model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-up
      api_base: "http://127.0.0.1:%(port)d/v1"
  - model_name: text-embedding-3-small
    litellm_params:
      model: openai/text-embedding-3-small
      api_key: sk-up
      api_base: "http://127.0.0.1:%(port)d/v1"
general_settings:
  master_key: sk-1234
"""
MASTER_KEY = "sk-1234"
CLIENT_CPU = 1
# wrk under SCHED_FIFO where allowed, as bench/run.sh runs it (see there):
# the vkey runs' PostgreSQL shares its CPU and must not delay it
WRK_PRIORITY = (["chrt", "-f", "1"]
                if subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode == 0
                else [])


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def binary(build, name):
    for candidate in (os.path.join(build, name), os.path.join(build, "fakeupstream", name)):
        if os.access(candidate, os.X_OK):
            return candidate
    sys.exit("no %s in %s" % (name, build))


def children(pid):
    found = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found += children(int(entry))
    return found


def role(pid):
    try:
        with open("/proc/%d/cmdline" % pid) as cmdline:
            argv = cmdline.read().split("\0")
    except OSError:
        return "?"
    if "fake_upstream" in argv[0]:
        return "fake"
    return argv[1] if len(argv) > 1 and argv[1] in ("frontend", "worker", "router", "spend") \
        else "supervisor"


def snapshot(pids):
    """(role, thread name) -> [cpu ns, user ticks, voluntary, involuntary], summed"""
    totals = {}
    for pid in pids:
        who = role(pid)
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            base = "/proc/%d/task/%s/" % (pid, tid)
            try:
                with open(base + "comm") as comm:
                    name = comm.read().strip()
                with open(base + "stat") as stat:
                    user = int(stat.read().rsplit(")", 1)[1].split()[11])
                with open(base + "schedstat") as schedstat:
                    cpu_ns = int(schedstat.read().split()[0])
                with open(base + "status") as status:
                    text = status.read()
            except OSError:
                continue
            voluntary = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
            involuntary = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
            #  Threads other than the main one are told apart by "-t"
            key = (who, name + ("" if int(tid) == pid else "-t"), tid)
            totals[key] = [cpu_ns, user, voluntary, involuntary]
    return totals


class Target:
    """A fake upstream and a zgate in front of it, both on CPU 0"""

    def __init__(self, name, work, database_url=None):
        self.build = name
        build = name[len("vkey:"):] if name.startswith("vkey:") else name
        self.groups = []
        self.key = MASTER_KEY
        self.requests = 0
        self.loads = 0
        fake = subprocess.Popen(
            ["taskset", "-c", "0", binary(build, "fake_upstream"), "--host", "127.0.0.1",
             "--port", "0", "--threads", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
        self.groups.append(fake)
        match = re.search(r"127\.0\.0\.1:(\d+)", fake.stdout.readline())
        if not match:
            self.stop()
            sys.exit("the fake upstream of %s did not start" % build)
        self.fake_pid = fake.pid
        config = tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=work, delete=False)
        config.write(CONFIG % {"port": int(match.group(1))})
        if database_url:
            config.write("  database_url: %s\n  proxy_batch_write_at: 1\n" % database_url)
        config.close()
        self.port = free_port()
        env = dict(os.environ, LITELLM_LOG="ERROR", ZGATE_RUN_DIR=tempfile.mkdtemp(dir=work))
        self.log = open(os.path.join(work, "zgate-%d.log" % self.port), "w")
        zgate = subprocess.Popen(
            ["taskset", "-c", "0", binary(build, "zgate"), "--config", config.name,
             "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.groups.append(zgate)
        self.zgate_pid = zgate.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                probe.request("GET", "/health/readiness")
                if probe.getresponse().status == 200:
                    if database_url:
                        self.key = self.generate_key()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit("zgate of %s was not ready within 30 s" % build)

    def generate_key(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", "/key/generate", body=json.dumps({"key_alias": "bench"}),
                     headers={"Authorization": "Bearer " + MASTER_KEY,
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            self.stop()
            sys.exit("%s: POST /key/generate: %d %s" % (self.build, resp.status, body[:300]))
        return json.loads(body)["key"]

    def pids(self):
        return children(self.zgate_pid) + [self.fake_pid]

    def stop(self):
        for group in reversed(self.groups):
            try:
                os.killpg(group.pid, signal.SIGTERM)
            except OSError:
                pass
        for group in self.groups:
            try:
                group.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(group.pid, signal.SIGKILL)
                group.wait()
        self.log.close()


def load(port, seconds, scenario, key=MASTER_KEY):
    path, body, expect = SCENARIOS[scenario]
    env = dict(os.environ, ZGBENCH_PATH=path, ZGBENCH_BODY=body, ZGBENCH_EXPECT=expect,
               ZGBENCH_KEY=key)
    out = subprocess.run(
        WRK_PRIORITY + ["taskset", "-c", "1", "wrk", "-t1", "-c64", "-d%ds" % seconds, "--latency",
         "-s", os.path.join(TOP, "bench", "post.lua"), "http://127.0.0.1:%d" % port],
        env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    lines = [line for line in out.splitlines() if line.startswith("ZGBENCH ")]
    if not lines:
        sys.exit("wrk printed no summary:\n" + out)
    fields = dict(item.split("=", 1) for item in lines[-1].split()[1:])
    bad = int(fields["bad_status"]) + int(fields["bad_body"]) + int(fields["socket_errors"])
    return int(fields["requests"]), float(fields["rps"]), bad


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--scenario", default="chat", choices=sorted(SCENARIOS))
    parser.add_argument("--vkey", action="store_true",
                        help="a virtual key and spend logging to PostgreSQL (bench/run.sh's vkey)")
    parser.add_argument("builds", nargs="+")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="zgcpu.")
    targets = []
    results = {build: [] for build in args.builds}
    pg = None
    try:
        if args.vkey or any(build.startswith("vkey:") for build in args.builds):
            pg = start_postgres(work)
        for number, build in enumerate(args.builds):
            vkey = args.vkey or build.startswith("vkey:")
            url = pg.create_database("zgcpu%d" % number) if vkey else None
            targets.append(Target(build, work, url))
        for round_number in range(1, args.rounds + 1):
            for target in targets:
                warm, _, _ = load(target.port, 1, args.scenario, target.key)
                pids = target.pids()
                before = snapshot(pids)
                requests, rps, bad = load(target.port, args.seconds, args.scenario, target.key)
                after = snapshot(pids)
                target.requests += warm + requests
                target.loads += 2
                if requests == 0 or bad * 1000 > requests:
                    sys.exit("%s: %d bad answers out of %d" % (target.build, bad, requests))
                per = {}
                for key, now in after.items():
                    then = before.get(key, [0, 0, 0, 0])
                    name = key[0] + ":" + key[1]
                    sums = per.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                    sums[0] += (now[0] - then[0]) / 1000.0 / requests
                    sums[1] += (now[1] - then[1]) * 1e6 / TICK / requests
                    sums[2] += (now[2] - then[2]) / requests
                    sums[3] += (now[3] - then[3]) / requests
                total = sum(sums[0] for sums in per.values())
                results[target.build].append((total, rps, per))
                print("round %d %-24s %8.0f req/s  %6.2f us/req | %s" % (
                    round_number, target.build, rps, total,
                    " ".join("%s=%.2f(u%.1f,v%.2f,n%.2f)" % (name, *sums)
                             for name, sums in sorted(per.items()) if sums[0] >= 0.05)),
                    flush=True)
        print()
        for build, runs in results.items():
            names = sorted({name for _, _, per in runs for name in per})
            medians = {name: statistics.median(per.get(name, [0])[0] for _, _, per in runs)
                       for name in names}
            print("%-24s median %6.2f us/req, %8.0f req/s | %s" % (
                build, statistics.median(total for total, _, _ in runs),
                statistics.median(rps for _, rps, _ in runs),
                " ".join("%s=%.2f" % (name, value) for name, value in medians.items()
                         if value >= 0.05)))
        if pg:
            for number, target in enumerate(targets):
                if target.key != MASTER_KEY:
                    check_spend_rows(pg, "zgcpu%d" % number, target)
    finally:
        for target in targets:
            target.stop()
        if pg:
            pg.stop()


def start_postgres(work):
    """One PostgreSQL on the client CPU (every process it forks inherits the
    pinning): in production the database runs on a host of its own"""
    sys.path.insert(0, os.path.join(TOP, "tests", "e2e"))
    import zgpg
    tempfile.tempdir = work
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        return zgpg.PostgresServer(name="zgcpu").start()
    finally:
        os.sched_setaffinity(0, mine)


def check_spend_rows(pg, database, target):
    """Every answer wrk counted has its row (the spend actor writes within
    a second or so of the call); at most the calls in flight when each load
    stopped have a row wrk did not count."""
    key_hash = hashlib.sha256(target.key.encode()).hexdigest()
    query = "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE api_key = '%s'" % key_hash
    deadline = time.monotonic() + 30
    rows = last = -1
    while time.monotonic() < deadline:
        rows = int(pg.scalar(query, db=database))
        if rows >= target.requests and rows == last:
            break
        last = rows
        time.sleep(1)
    in_flight = 64 * target.loads
    verdict = "match" if target.requests <= rows <= target.requests + in_flight else "DO NOT MATCH"
    print("%-24s spend rows %d for %d answers counted by wrk: %s"
          % (target.build, rows, target.requests, verdict))


if __name__ == "__main__":
    main()
