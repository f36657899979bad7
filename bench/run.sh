#!/usr/bin/env bash
# zgate's benchmark: the same load against the fake OpenAI upstream directly,
# against a bare nginx reverse proxy in front of it, and against zgate in
# front of it, so that zgate's cost is read against a known-good proxy hop.
# The vkey target is a second zgate with a PostgreSQL (started here, in the
# temp dir, on a free port) and spend logging on, called with a virtual key:
# its throughput is shown against the master-key run, and its spend rows
# are checked against the requests sent.
#
#   bench/run.sh [--quick] [BUILD_DIR]      (BUILD_DIR defaults to build)
#
# The servers under test and the fake upstream share CPU $SERVER_CPU; wrk runs
# alone on CPU $CLIENT_CPU. Every measured run is preceded by a warm-up,
# repeated $REPEAT times, and the table reports medians. A run where more
# than 0.1% of the responses are not 2xx (or lack the expected content) fails
# the benchmark instead of being reported as fast. See docs/PERFORMANCE.md.
#
# Environment (defaults in brackets):
#   DURATION [10]  seconds per measured run    REPEAT [3]     runs per figure
#   WARMUP [2]     seconds of warm-up per run  CONNECTIONS [64]
#   NUM_WORKERS [1] zgate --num_workers        FAKE_THREADS [1]
#   FAKE_ARGS []   more fake_upstream options (e.g. "--latency-ms 5")
#   SCENARIOS ["chat stream embeddings"]       TARGETS ["direct nginx zgate vkey"]
#   SERVER_CPU [0] CLIENT_CPU [1]              KEEP [0] 1 keeps the temp dir
# --quick is DURATION=3 REPEAT=1 WARMUP=1 (explicit settings still win).
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

quick=0
build=build
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "run.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) build=$arg ;;
  esac
done
if [ $quick -eq 1 ]; then
  : "${DURATION:=3}" "${REPEAT:=1}" "${WARMUP:=1}"
fi
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
NUM_WORKERS=${NUM_WORKERS:-1}
FAKE_THREADS=${FAKE_THREADS:-1}
FAKE_ARGS=${FAKE_ARGS:-}
SCENARIOS=${SCENARIOS:-chat stream embeddings}
TARGETS=${TARGETS:-direct nginx zgate vkey}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEEP=${KEEP:-0}

# Upper bounds on every wait; a healthy run never reaches them.
START_TIMEOUT=30
STOP_TIMEOUT=15
WRK_TIMEOUT=5s
# A run fails when errors exceed requests / MAX_ERROR_DIVISOR (0.1%).
MAX_ERROR_DIVISOR=1000
MASTER_KEY=sk-1234

# Targets the project holds itself to (see docs/PERFORMANCE.md)
TARGET_CHAT_RATIO=0.5
TARGET_RSS_MB=64

bench=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$bench/.." && pwd)
if [ -d "$build" ]; then build=$(cd "$build" && pwd)
elif [ -d "$top/$build" ]; then build=$(cd "$top/$build" && pwd)
else echo "run.sh: build directory '$build' not found (make bench builds it)" >&2; exit 2
fi

die() { echo "run.sh: $*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

for tool in wrk nginx taskset setsid timeout ps python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh bench installs it)"
done
fake_bin=$build/fakeupstream/fake_upstream
zgate_bin=$build/zgate
[ -x "$zgate_bin" ] || zgate_bin=$build/supervisor/zgate
[ -x "$fake_bin" ] || die "$fake_bin is not built"
zgate_pending=0
drop_target() {
  TARGETS=$(tr -s ' ' '\n' <<< "$TARGETS" | { grep -vx "$1" || true; } | tr '\n' ' ')
}
if [[ " $TARGETS " == *" zgate "* || " $TARGETS " == *" vkey "* ]] && [ ! -x "$zgate_bin" ]; then
  say "NOTE: no zgate binary in $build: the zgate rows are pending"
  zgate_pending=1
  drop_target zgate
  drop_target vkey
fi
vkey_pending=0
if [[ " $TARGETS " == *" vkey "* ]] \
   && ! PYTHONPATH="$top/tests/e2e" python3 -c 'import zgpg; zgpg.find_bin_dir()' 2>/dev/null; then
  say "NOTE: PostgreSQL is not installed: the vkey rows are pending"
  vkey_pending=1
  drop_target vkey
fi
allowed=$(taskset -cp $$ | sed 's/.*: //')
for cpu in "$SERVER_CPU" "$CLIENT_CPU"; do
  python3 -c 'import os,sys; sys.exit(int(sys.argv[1]) not in os.sched_getaffinity(0))' "$cpu" \
    || die "CPU $cpu is not available to this shell (allowed: $allowed); set SERVER_CPU/CLIENT_CPU"
done
[ "$SERVER_CPU" != "$CLIENT_CPU" ] || die "SERVER_CPU and CLIENT_CPU must differ"

work=$(mktemp -d /tmp/zgbench.XXXXXX)
chmod 755 "$work"
groups=()          # process groups this script started, in start order
sampler_pid=
load_pid=          # the running wrk (under timeout)

# Stop one process group: SIGTERM to its leader, a bounded wait, then
# SIGKILL to whatever of the group is left.
stop_group() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  if [ -n "$load_pid" ]; then
    kill -TERM "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
  fi
  if [ -n "$sampler_pid" ]; then
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
  fi
  for ((i = ${#groups[@]} - 1; i >= 0; i--)); do stop_group "${groups[i]}"; done
  if [ $rc -ne 0 ]; then
    for log in "$work"/*.log "$work"/nginx/error.log; do
      [ -s "$log" ] || continue
      echo "---- last lines of $(basename "$log")" >&2
      tail -n 20 "$log" >&2
    done
  fi
  if [ "$KEEP" = 1 ]; then
    echo "run.sh: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start "$@" in its own session (so that its whole process tree can be
# stopped as one group) with output to $work/$name.log; sets started_pid.
start_group() {
  local name=$1; shift
  setsid "$@" >"$work/$name.log" 2>&1 </dev/null &
  started_pid=$!
  groups+=("$started_pid")
}

port_in_use() {
  local hex
  printf -v hex ':%04X ' "$1"
  grep -qs "$hex" /proc/net/tcp /proc/net/tcp6
}

# A port nothing uses now, below the ephemeral range wrk's sockets take.
free_port() {
  local port i
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 12000))
    port_in_use "$port" || { echo "$port"; return 0; }
  done
  die "no free port found"
}

# HTTP status of GET path on 127.0.0.1:port, or nothing; never blocks long.
http_status() {
  # shellcheck disable=SC2016  # $1 and $2 belong to the inner bash
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
    read -r -t 2 _ code _ <&3 && printf "%s" "$code"' _ "$1" "$2" 2>/dev/null || true
}

# Wait until GET path answers (with status $3, or any status when empty).
wait_http() {
  local name=$1 pid=$2 port=$3 path=$4 want=${5:-} i status
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during start-up"
    status=$(http_status "$port" "$path")
    if [ -n "$status" ] && { [ -z "$want" ] || [ "$status" = "$want" ]; }; then return 0; fi
    sleep 0.1
  done
  die "$name did not answer GET $path${want:+ with $want} within ${START_TIMEOUT}s (last: ${status:-none})"
}

# The pids of a process and all its descendants.
tree_pids() {
  local -A kids=()
  local pid ppid queue=("$1") found=()
  while read -r pid ppid; do kids[$ppid]+=" $pid"; done < <(ps -e -o pid=,ppid=)
  while [ ${#queue[@]} -gt 0 ]; do
    pid=${queue[0]}; queue=("${queue[@]:1}")
    [ -d "/proc/$pid" ] || continue
    found+=("$pid")
    # shellcheck disable=SC2206
    queue+=(${kids[$pid]:-})
  done
  echo "${found[*]}"
}

# One field of /proc/pid/status (or of /proc/pid/$3) in kB, 0 when the
# process is gone.
status_kb() {
  local key value _
  while read -r key value _; do
    [ "$key" = "$2:" ] && { echo "$value"; return 0; }
  done < "/proc/$1/${3:-status}" 2>/dev/null || true
  echo 0
}

sum_kb() {
  local total=0 pid
  for pid in $(tree_pids "$1"); do total=$((total + $(status_kb "$pid" "$2"))); done
  echo "$total"
}

role_of() {
  local -a argv
  mapfile -d '' -t argv < "/proc/$1/cmdline" 2>/dev/null || true
  case "${argv[1]:-}" in
    router|worker|frontend|spend|alerts|health) echo "${argv[1]}" ;;
    *) echo supervisor ;;
  esac
}

# ---------------------------------------------------------------------------
# Machine and parameters

say "zgate benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')  repository at commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), kernel $(uname -r)"
say "tools:   $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | sed 's/.*: //')"
if [ -x "$zgate_bin" ]; then
  say "binary:  $zgate_bin, built $(date -u -r "$zgate_bin" '+%Y-%m-%d %H:%M UTC') (from the work tree then)"
fi
# wrk runs under SCHED_FIFO where this script may set it (root), for every
# target alike. The vkey target's PostgreSQL shares wrk's CPU; at the same
# priority, or even under SCHED_IDLE, the scheduler let a spend batch keep
# that CPU for milliseconds while wrk had answers to read, so zgate's CPU sat
# idle waiting for requests (17-20% of a vkey run, measured with perf sched:
# wrk's scheduling delay of up to 3.6 ms while postgres ran). A load
# generator that always gets its CPU measures the gateway, as a database on a
# host of its own would let it; wrk sleeps in epoll between answers, so it
# never starves anything else.
WRK_PRIORITY=
if chrt -f 1 true 2>/dev/null; then
  WRK_PRIORITY="chrt -f 1"
fi

say "runs:    ${DURATION}s measured after ${WARMUP}s warm-up, x$REPEAT (medians), wrk -t1 -c$CONNECTIONS on CPU $CLIENT_CPU${WRK_PRIORITY:+ (SCHED_FIFO)}"
say "servers: fake upstream (--threads $FAKE_THREADS${FAKE_ARGS:+ $FAKE_ARGS}), nginx (1 worker), zgate (--num_workers $NUM_WORKERS), all on CPU $SERVER_CPU"
if [[ " $TARGETS " == *" vkey "* ]]; then
  say "         PostgreSQL for vkey on CPU $CLIENT_CPU, with wrk (the database is another host in production)"
fi
say ""

# ---------------------------------------------------------------------------
# Fake upstream

# shellcheck disable=SC2086
start_group fake taskset -c "$SERVER_CPU" "$fake_bin" --host 127.0.0.1 --port 0 \
  --threads "$FAKE_THREADS" $FAKE_ARGS
fake_pid=$started_pid
fake_port=
for ((i = 0; i < START_TIMEOUT * 10; i++)); do
  fake_port=$(sed -n 's/.*fake_upstream listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$work/fake.log" | head -n1)
  [ -n "$fake_port" ] && break
  kill -0 "$fake_pid" 2>/dev/null || die "fake upstream exited during start-up"
  sleep 0.1
done
[ -n "$fake_port" ] || die "fake upstream did not print its port within ${START_TIMEOUT}s"
wait_http "fake upstream" "$fake_pid" "$fake_port" /stats 200

# ---------------------------------------------------------------------------
# nginx: a bare reverse proxy with an upstream keep-alive pool. The stream
# scenario gets its own server block with proxy_buffering off, as a proxy
# for SSE would be configured; the others keep nginx's default buffering.

nginx_port=
nginx_stream_port=
start_nginx() {
  local dir=$work/nginx _
  mkdir -p "$dir"
  for _ in 1 2 3; do
    nginx_port=$(free_port)
    nginx_stream_port=$(free_port)
    [ "$nginx_port" != "$nginx_stream_port" ] || continue
    cat > "$dir/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 100000;
    upstream fake {
        server 127.0.0.1:$fake_port;
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$nginx_stream_port;
        location / {
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CONF
    nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$work/nginx-t.log" 2>&1 \
      || { cat "$work/nginx-t.log" >&2; die "nginx rejected the generated nginx.conf"; }
    start_group nginx taskset -c "$SERVER_CPU" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    nginx_pid=$started_pid
    if ( START_TIMEOUT=10; wait_http nginx "$nginx_pid" "$nginx_port" /stats 200 \
           && wait_http nginx "$nginx_pid" "$nginx_stream_port" /stats 200 ) 2>/dev/null; then
      return 0
    fi
    # Most likely a port taken between the check and the bind: try others.
    stop_group "$nginx_pid"
  done
  die "nginx did not start (see $dir/error.log)"
}

# ---------------------------------------------------------------------------
# zgate under taskset, so that every child it forks inherits CPU $SERVER_CPU

zgate_port=
zgate_pid=
vkey_port=
vkey_pid=
# start_zgate NAME [GENERAL_SETTINGS_LINES]: sets started_port, started_pid
start_zgate() {
  local name=$1 extra=${2:-} pid cpus _
  mkdir -p "$work/$name-run"
  cat > "$work/$name.yaml" <<YAML
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-up
      api_base: "http://127.0.0.1:$fake_port/v1"
  - model_name: text-embedding-3-small
    litellm_params:
      model: openai/text-embedding-3-small
      api_key: sk-up
      api_base: "http://127.0.0.1:$fake_port/v1"
general_settings:
  master_key: $MASTER_KEY
$extra
YAML
  local port= zpid=
  for _ in 1 2 3; do
    port=$(free_port)
    start_group "$name" taskset -c "$SERVER_CPU" env LITELLM_LOG=ERROR ZGATE_RUN_DIR="$work/$name-run" \
      "$zgate_bin" --config "$work/$name.yaml" --host 127.0.0.1 --port "$port" \
      --num_workers "$NUM_WORKERS"
    zpid=$started_pid
    if ( wait_http "$name" "$zpid" "$port" /health/readiness 200 ); then
      break
    fi
    stop_group "$zpid"
    zpid=
    grep -qi 'address already in use' "$work/$name.log" || die "$name did not become ready"
  done
  [ -n "$zpid" ] || die "$name did not become ready"
  # The memory figures start from this pid: it must be zgate itself.
  [ "$(cat "/proc/$zpid/comm")" = zgate ] || die "pid $zpid is not zgate"
  for pid in $(tree_pids "$zpid"); do
    cpus=$(taskset -cp "$pid" 2>/dev/null | sed 's/.*: //')
    [ "$cpus" = "$SERVER_CPU" ] || die "$name process $pid ($(role_of "$pid")) runs on CPUs '$cpus', not $SERVER_CPU"
  done
  started_port=$port
  started_pid=$zpid
}

# ---------------------------------------------------------------------------
# PostgreSQL for the vkey target: the end-to-end tests' throw-away server
# (tests/e2e/zgpg.py), in the temp dir, stopped with its process group.
# Pinned to the client's CPU (every process it forks inherits the pinning):
# in production the database runs on a host of its own, so its work must
# not be taken from the CPU of the gateway under test. zgate's spend actor,
# which feeds it, stays on the server CPU with the rest of zgate.

pg_url=
psql_bin=
start_postgres() {
  local i pid cpus
  start_group pg taskset -c "$CLIENT_CPU" env PYTHONPATH="$top/tests/e2e" ZG_PG_TMP="$work" python3 -u -c '
import os, signal, sys, tempfile, zgpg
tempfile.tempdir = os.environ["ZG_PG_TMP"]
pg = zgpg.PostgresServer(name="bench").start()
def stop(*_):
    pg.stop()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("psql=%s" % pg._bin("psql"))
print("url=%s" % pg.create_database("bench"))
signal.pause()
'
  pg_pid=$started_pid
  for ((i = 0; i < START_TIMEOUT * 20; i++)); do
    pg_url=$(sed -n 's/^url=//p' "$work/pg.log")
    [ -n "$pg_url" ] && break
    kill -0 "$pg_pid" 2>/dev/null || die "PostgreSQL did not start"
    sleep 0.1
  done
  [ -n "$pg_url" ] || die "PostgreSQL did not start within $((START_TIMEOUT * 2))s"
  psql_bin=$(sed -n 's/^psql=//p' "$work/pg.log")
  for pid in $(tree_pids "$pg_pid"); do
    cpus=$(taskset -cp "$pid" 2>/dev/null | sed 's/.*: //')
    [ -z "$cpus" ] || [ "$cpus" = "$CLIENT_CPU" ] || die "PostgreSQL process $pid runs on CPUs '$cpus', not $CLIENT_CPU"
  done
}

pg_scalar() {
  "$psql_bin" -X -q -At -d "$pg_url" -c "$1"
}

# A virtual key made through the vkey zgate's /key/generate
vkey_key=
make_virtual_key() {
  vkey_key=$(python3 - "$vkey_port" "$MASTER_KEY" <<'PY'
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
conn.request("POST", "/key/generate", body=json.dumps({"key_alias": "bench"}),
             headers={"Authorization": "Bearer " + sys.argv[2],
                      "Content-Type": "application/json"})
resp = conn.getresponse()
body = resp.read()
if resp.status != 200:
    sys.exit("POST /key/generate: %d %s" % (resp.status, body[:300]))
print(json.loads(body)["key"])
PY
) || die "cannot make a virtual key"
  vkey_hash=$(printf '%s' "$vkey_key" | sha256sum | cut -d' ' -f1)
}

if [[ " $TARGETS " == *" nginx "* ]]; then start_nginx; fi
if [[ " $TARGETS " == *" vkey "* ]]; then
  start_postgres
  start_zgate zgate-vkey "  database_url: $pg_url
  proxy_batch_write_at: 1"
  vkey_port=$started_port
  vkey_pid=$started_pid
  make_virtual_key
fi
if [[ " $TARGETS " == *" zgate "* ]]; then
  start_zgate zgate
  zgate_port=$started_port
  zgate_pid=$started_pid
  # Sum of the zgate processes' current RSS every second; keeps the maximum.
  (
    max=0
    while kill -0 "$zgate_pid" 2>/dev/null; do
      now=$(sum_kb "$zgate_pid" VmRSS)
      if [ "$now" -gt "$max" ]; then max=$now; echo "$max" > "$work/rss_max_kb"; fi
      sleep 1
    done
  ) &
  sampler_pid=$!
fi

say "listening: fake 127.0.0.1:$fake_port${nginx_port:+, nginx 127.0.0.1:$nginx_port (stream: $nginx_stream_port)}${zgate_port:+, zgate 127.0.0.1:$zgate_port ($(tree_pids "$zgate_pid" | wc -w) processes)}${vkey_port:+, zgate with PostgreSQL 127.0.0.1:$vkey_port}"
say ""

# ---------------------------------------------------------------------------
# Load

scenario_body() {
  case "$1" in
    chat) echo '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, how are you?"}]}' ;;
    stream) echo '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, how are you?"}],"stream":true}' ;;
    embeddings) echo '{"model":"text-embedding-3-small","input":"hello world"}' ;;
    *) die "unknown scenario $1 (chat, stream, embeddings)" ;;
  esac
}
scenario_path() {
  case "$1" in
    chat|stream) echo /v1/chat/completions ;;
    embeddings) echo /v1/embeddings ;;
  esac
}
# What every good response body contains: a cut stream lacks its [DONE].
scenario_expect() {
  case "$1" in
    chat) echo '"choices"' ;;
    stream) echo 'data: [DONE]' ;;
    embeddings) echo '"embedding"' ;;
  esac
}
target_port() {
  case "$1" in
    direct) echo "$fake_port" ;;
    nginx) if [ "$2" = stream ]; then echo "$nginx_stream_port"; else echo "$nginx_port"; fi ;;
    zgate) echo "$zgate_port" ;;
    vkey) echo "$vkey_port" ;;
    *) die "unknown target $1 (direct, nginx, zgate, vkey)" ;;
  esac
}

# run_load TARGET SCENARIO SECONDS OUT: one wrk run; checks its error rate.
run_load() {
  local target=$1 scenario=$2 seconds=$3 out=$4 line requests bad
  local key=
  [ "$target" = zgate ] && key=$MASTER_KEY
  [ "$target" = vkey ] && key=$vkey_key
  # In the background, so that a signal to this script is handled at once.
  ZGBENCH_PATH=$(scenario_path "$scenario") ZGBENCH_BODY=$(scenario_body "$scenario") \
    ZGBENCH_EXPECT=$(scenario_expect "$scenario") ZGBENCH_KEY=$key \
    timeout -k 5 $((seconds + 60)) taskset -c "$CLIENT_CPU" $WRK_PRIORITY \
    wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" --latency --timeout "$WRK_TIMEOUT" \
    -s "$bench/post.lua" "http://127.0.0.1:$(target_port "$target" "$scenario")" > "$out" 2>&1 &
  load_pid=$!
  if ! wait "$load_pid"; then
    load_pid=
    cat "$out" >&2
    die "wrk failed against $target ($scenario)"
  fi
  load_pid=
  line=$(grep '^ZGBENCH ' "$out" | tail -n1)
  [ -n "$line" ] || { cat "$out" >&2; die "wrk printed no summary against $target ($scenario)"; }
  local field requests=0 rps=0 p50_us=0 p99_us=0 bad_status=0 bad_body=0 socket_errors=0
  for field in ${line#ZGBENCH }; do
    case "$field" in
      requests=*) requests=${field#*=} ;;
      rps=*) rps=${field#*=} ;;
      p50_us=*) p50_us=${field#*=} ;;
      p99_us=*) p99_us=${field#*=} ;;
      bad_status=*) bad_status=${field#*=} ;;
      bad_body=*) bad_body=${field#*=} ;;
      socket_errors=*) socket_errors=${field#*=} ;;
    esac
  done
  bad=$((bad_status + bad_body + socket_errors))
  if [ "$requests" -eq 0 ] || [ $((bad * MAX_ERROR_DIVISOR)) -gt "$requests" ]; then
    cat "$out" >&2
    die "$target ($scenario): $bad bad responses out of $requests (non-2xx: $bad_status, unexpected body: $bad_body, socket errors: $socket_errors); over the 0.1% limit"
  fi
  result="$rps $p50_us $p99_us $requests $bad"
  if [ "$target" = vkey ]; then
    vkey_requests=$((vkey_requests + requests))
    vkey_runs=$((vkey_runs + 1))
  fi
}
vkey_requests=0
vkey_runs=0

ms() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

results=$work/results.tsv
: > "$results"
for scenario in $SCENARIOS; do
  for ((rep = 1; rep <= REPEAT; rep++)); do
    # Targets alternate within each repeat so that a slow spell of the
    # machine weighs on all of them rather than on one.
    for target in $TARGETS; do
      run_load "$target" "$scenario" "$WARMUP" "$work/warmup.out"
      run_load "$target" "$scenario" "$DURATION" "$work/run-$scenario-$target-$rep.out"
      read -r rps p50 p99 requests bad <<< "$result"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$target" "$rep" "$rps" "$p50" "$p99" "$requests" "$bad" >> "$results"
      printf '  %-10s %-6s run %d/%d: %10.0f req/s  p50 %7.2f ms  p99 %7.2f ms  (%d requests, %d bad)\n' \
        "$scenario" "$target" "$rep" "$REPEAT" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$requests" "$bad"
    done
  done
done

# ---------------------------------------------------------------------------
# The vkey runs' spend rows: one per call that reached the router. wrk
# counts the answers it read; the calls in flight when a run stopped were
# sent too (their clients gone: recorded as cancelled), at most
# CONNECTIONS per run.

vkey_check=
if [ "$vkey_runs" -gt 0 ]; then
  rows=-1
  stable=0
  for ((i = 0; i < 600; i++)); do
    last=$rows
    rows=$(pg_scalar "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE api_key = '$vkey_hash'" || echo -1)
    # Batches are written every second: the count above what wrk counted
    # and unchanged for 3 s is all of it
    if [ "$rows" -ge "$vkey_requests" ] && [ "$rows" = "$last" ]; then
      stable=$((stable + 1))
      [ "$stable" -ge 6 ] && break
    else
      stable=0
    fi
    sleep 0.5
  done
  ok_rows=$(pg_scalar "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE api_key = '$vkey_hash' AND status = 'success'")
  in_flight_max=$((vkey_runs * CONNECTIONS))
  vkey_check="spend rows of the virtual key: $rows ($ok_rows success) for $vkey_requests answers counted by wrk, + at most $in_flight_max in flight when runs stopped"
  if [ "$ok_rows" -lt "$vkey_requests" ] || [ "$rows" -gt $((vkey_requests + in_flight_max)) ]; then
    die "$vkey_check: they do not match"
  fi
fi

# ---------------------------------------------------------------------------
# Memory, read before anything is stopped

hwm_kb=0
pss_kb=0
rss_max_kb=0
breakdown=
if [ -n "$zgate_pid" ]; then
  kill -0 "$zgate_pid" 2>/dev/null || die "zgate exited during the benchmark"
  for pid in $(tree_pids "$zgate_pid"); do
    hwm=$(status_kb "$pid" VmHWM)
    hwm_kb=$((hwm_kb + hwm))
    pss_kb=$((pss_kb + $(status_kb "$pid" Pss smaps_rollup)))
    breakdown+="$(role_of "$pid"):$hwm "
  done
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=
  rss_max_kb=$(cat "$work/rss_max_kb" 2>/dev/null || echo 0)
fi

say ""
python3 - "$results" "$SCENARIOS" "$zgate_pending" "$hwm_kb" "$rss_max_kb" "$pss_kb" "$breakdown" \
  "$TARGET_CHAT_RATIO" "$TARGET_RSS_MB" "$REPEAT" "$vkey_pending" "$vkey_check" <<'PY'
import statistics, sys
(results, scenarios, pending, hwm_kb, rss_kb, pss_kb, breakdown, chat_target, rss_target, repeat,
 vkey_pending, vkey_check) = sys.argv[1:]
pending = pending == "1"
vkey_pending = vkey_pending == "1" or pending
hwm_kb, rss_kb, pss_kb = int(hwm_kb), int(rss_kb), int(pss_kb)
chat_target, rss_target = float(chat_target), float(rss_target)
# The virtual-key run may cost at most 10% of the master-key run's req/s
vkey_target = 0.90

runs = {}
for line in open(results):
    scenario, target, _rep, rps, p50, p99, _requests, _bad = line.split("\t")
    runs.setdefault((scenario, target), []).append((float(rps), int(p50), int(p99)))

def median(key, index):
    return statistics.median(run[index] for run in runs[key])

header = "| scenario   | target | req/s   |  p50 ms  |  p99 ms  | zgate/nginx | zgate/direct |"
print("Medians of %s run(s) each:" % repeat)
print()
print(header)
print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
ratios = {}
for scenario in scenarios.split():
    for target in ("direct", "nginx", "zgate", "vkey"):
        key = (scenario, target)
        if key not in runs:
            if (target == "zgate" and pending) or (target == "vkey" and vkey_pending):
                print("| %-10s | %-6s | %7s | %8s | %8s | %11s | %12s |"
                      % (scenario, target, "pending", "-", "-", "-", "-"))
            continue
        rps = median(key, 0)
        p50 = median(key, 1) / 1000.0
        p99 = median(key, 2) / 1000.0
        vs_nginx = vs_direct = "-"
        if target in ("zgate", "vkey"):
            if (scenario, "nginx") in runs:
                ratios[(scenario, target)] = rps / median((scenario, "nginx"), 0)
                vs_nginx = "%.2fx" % ratios[(scenario, target)]
            if (scenario, "direct") in runs:
                vs_direct = "%.2fx" % (rps / median((scenario, "direct"), 0))
        print("| %-10s | %-6s | %7.0f | %8.2f | %8.2f | %11s | %12s |"
              % (scenario, target, rps, p50, p99, vs_nginx, vs_direct))
print()
vkey_lines = ["  %-10s %.2fx" % (scenario, statistics.median(r[0] for r in runs[(scenario, "vkey")])
                                 / statistics.median(r[0] for r in runs[(scenario, "zgate")]))
              for scenario in scenarios.split()
              if (scenario, "vkey") in runs and (scenario, "zgate") in runs]
if vkey_lines:
    print("Virtual key and spend logging (vkey), req/s of the master-key run (zgate):")
    print("\n".join(vkey_lines))
if vkey_check:
    print("  " + vkey_check + ": match")
if vkey_lines or vkey_check:
    print()

if hwm_kb:
    parts = {}
    for item in breakdown.split():
        role, kb = item.split(":")
        parts.setdefault(role, []).append(int(kb))
    detail = ", ".join("%s %s MB" % (role if len(kbs) == 1 else "%d %ss" % (len(kbs), role),
                                     "+".join("%.1f" % (kb / 1024.0) for kb in kbs))
                       for role, kbs in parts.items())
    peak_mb = max(hwm_kb, rss_kb) / 1024.0
    print("zgate memory: sum of VmHWM %.1f MB (%s)" % (hwm_kb / 1024.0, detail))
    print("              max of the per-second sum of VmRSS %.1f MB" % (rss_kb / 1024.0))
    #  Pss shares each shared page among the processes that map it, so
    #  unlike the RSS sums it does not count the libraries once per process.
    print("              sum of Pss at the end %.1f MB (for information)" % (pss_kb / 1024.0))
    print()

print("Targets:")
if ("chat", "zgate") in ratios:
    ratio = ratios[("chat", "zgate")]
    print("  chat req/s, zgate >= %.1fx nginx:     %.2fx  %s"
          % (chat_target, ratio, "MET" if ratio >= chat_target else "MISSED"))
else:
    print("  chat req/s, zgate >= %.1fx nginx:     pending" % chat_target)
if hwm_kb:
    print("  zgate total peak RSS <= %d MB:        %.1f MB  %s"
          % (rss_target, peak_mb, "MET" if peak_mb <= rss_target else "MISSED"))
else:
    print("  zgate total peak RSS <= %d MB:        pending" % rss_target)
if ("chat", "vkey") in runs and ("chat", "zgate") in runs:
    ratio = median(("chat", "vkey"), 0) / median(("chat", "zgate"), 0)
    print("  chat req/s, vkey >= %.2fx zgate:     %.2fx  %s"
          % (vkey_target, ratio, "MET" if ratio >= vkey_target else "MISSED"))
PY
