#!/usr/bin/env bash
# Runs the benchmark scenarios of BENCHMARKS.md against real processes on 127.0.0.1 and appends
# one JSON line per measurement to $OUT/results.jsonl. scripts/bench.sh installs the tools,
# builds, calls this, then renders BENCHMARKS.md with benches/report.py.
#
# CPU placement (2-core machine): every process under test (devicegate, redis-server, the
# oidc-provider IdP, both nginx) runs pinned to CPU $BENCH_SERVER_CPU (default 1), each with
# one worker; the load generator (wrk or loadgen) runs pinned to CPU $BENCH_CLIENT_CPU
# (default 0). Server and client never compete for a core, and every peer gets the same one.
#
# Environment (all optional):
#   BENCH_ONLY=1,3      run only these scenarios (default: 1,2,3,4,5,6)
#   BENCH_SECONDS=10    length of each throughput run (wrk), seconds
#   BENCH_GRANTS=1000000  pending grants in scenario 4
#   BENCH_OUT=DIR       where results and logs go (default: target/bench/<date>)
#   BENCH_PORT_BASE=19100  first of the 10 loopback ports used
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=$ROOT/target/release/devicegate
LOADGEN=$ROOT/target/release/examples/loadgen
BARE=$ROOT/target/release/examples/bare_proxy
SERVER_CPU=${BENCH_SERVER_CPU:-1}
CLIENT_CPU=${BENCH_CLIENT_CPU:-0}
ONLY=${BENCH_ONLY:-1,2,3,4,5,6}
SECS=${BENCH_SECONDS:-10}
GRANTS=${BENCH_GRANTS:-1000000}
OUT=${BENCH_OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
RESULTS=$OUT/results.jsonl

BASE=${BENCH_PORT_BASE:-19100}
GATE_PORT=$BASE
ADMIN_PORT=$((BASE + 1))
IDP_PORT=$((BASE + 2))
REDIS_PORT=$((BASE + 3))
STATIC_PORT=$((BASE + 4))
PROXY_PORT=$((BASE + 5))
BARE_PORT=$((BASE + 6))
DEAD_PORT=$((BASE + 9)) # nothing listens: the "IdP" of scenarios that never reach it
GATE=http://127.0.0.1:$GATE_PORT
IDP=http://127.0.0.1:$IDP_PORT

mkdir -p "$OUT"
: >"$RESULTS"
log() { printf '==> %s\n' "$*" >&2; }

# Something else listening on one of the ports would be measured instead: refuse to start.
for port in "$GATE_PORT" "$ADMIN_PORT" "$IDP_PORT" "$REDIS_PORT" "$STATIC_PORT" "$PROXY_PORT" "$DEAD_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: stop what listens there or set BENCH_PORT_BASE" >&2
    exit 1
  fi
done

# Other work on the machine should perturb the figures as little as possible: with the kernel's
# autogroup scheduling, this session (this script and every process it starts) gets nice -20
# as a group while the benchmarks run (root only; put back on exit).
AUTOGROUP_NICE=
if [ -w "/proc/$$/autogroup" ]; then
  AUTOGROUP_NICE=$(awk '{print $3}' "/proc/$$/autogroup")
  echo -20 >"/proc/$$/autogroup" 2>/dev/null || AUTOGROUP_NICE=
fi

# ---------------------------------------------------------------------------------------------
# Processes. Everything started here is remembered by PID and stopped by PID.

declare -A PID=()
start() { # start NAME COMMAND...: runs COMMAND on the server CPU, output in $OUT/NAME.log
  local name=$1
  shift
  taskset -c "$SERVER_CPU" "$@" >"$OUT/$name.log" 2>&1 &
  PID[$name]=$!
}
stop_all() {
  local p
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PID[@]}"; do wait "$p" 2>/dev/null || true; done
  PID=()
}
finish() {
  stop_all
  if [ -n "$AUTOGROUP_NICE" ]; then echo "$AUTOGROUP_NICE" >"/proc/$$/autogroup" 2>/dev/null || true; fi
}
trap finish EXIT

wait_port() { # wait_port PORT NAME: until something accepts on 127.0.0.1:PORT (30 s at most)
  local i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if [ -n "${2:-}" ] && ! kill -0 "${PID[$2]}" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "$2 did not listen on port $1; its log:" >&2
  tail -20 "$OUT/$2.log" >&2
  exit 1
}

start_gate() { # start_gate NAME CONFIG UPSTREAM_PORT: devicegate with a benches/conf file (or a path)
  local conf=benches/conf/$2
  [[ $2 == /* ]] && conf=$2
  start "$1" env BENCH_LISTEN="127.0.0.1:$GATE_PORT" BENCH_PUBLIC_URL="$GATE" \
    BENCH_UPSTREAM="127.0.0.1:$3" BENCH_ADMIN="127.0.0.1:$ADMIN_PORT" \
    BENCH_UPGRADE_SOCK="$OUT/upgrade.sock" BENCH_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
    "$BIN" --config "$conf"
  wait_port "$GATE_PORT" "$1"
}

start_redis() {
  start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no
  wait_port "$REDIS_PORT" redis
}

start_idp() { # start_idp ISSUER DEVICE_FLOW(0|1): the npm oidc-provider the tests use
  start idp env IDP_ISSUER="$1" IDP_PORT="$IDP_PORT" IDP_DEVICE_FLOW="$2" \
    IDP_CLIENTS="[{\"client_id\":\"tv-app\",\"redirect_uris\":[\"$1/device/callback\"]}]" \
    node tests/idp/idp.js
  wait_port "$IDP_PORT" idp
}

start_nginx() { # start_nginx NAME PORT [UPSTREAM_PORT]: benches/conf/NAME.conf
  sed -e "s|@DIR@|$OUT|g" -e "s|@PORT@|$2|g" -e "s|@UPSTREAM@|127.0.0.1:${3:-0}|g" \
    "benches/conf/$1.conf" >"$OUT/$1.conf"
  start "$1" nginx -e "$OUT/$1.error.log" -p "$OUT" -c "$OUT/$1.conf"
  wait_port "$2" "$1"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
redis_used() { redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
pending() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^devicegate_pending_grants / {print $2}'; }

# ---------------------------------------------------------------------------------------------
# Load generators (on the client CPU) and results.

# Interference, so a reader can tell a slow figure from a busy machine: for each measurement,
# the share of the server CPU (/proc/stat) not used by the processes under test (nor their
# children: nginx workers), and the share of the client CPU not used by the load generator
# (bash's `times` of the finished child). It is other jobs on the machine, plus interrupts and
# kernel work not charged to a process.
core_ticks() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
ours_ticks() {
  local p c t=0
  for p in "${PID[@]}"; do
    for c in $p $(pgrep -P "$p"); do
      t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
  done
  echo "$t"
}
# CPU time of this shell's finished children: `times` must run in this shell, not in $(...).
children_ticks() {
  times >"$OUT/.times"
  awk 'END {split($0, f, /[ms ]+/); printf "%d", (f[1] * 60 + f[2] + f[3] * 60 + f[4]) * 100}' "$OUT/.times"
}
with_others() { # with_others COMMAND...: COMMAND's JSON output, plus others_pct and client_others_pct
  local s0 o0 c0 g0 t0 out s1 o1 c1 g1 t1
  children_ticks >"$OUT/.ticks"
  s0=$(core_ticks "$SERVER_CPU") o0=$(ours_ticks) c0=$(core_ticks "$CLIENT_CPU") g0=$(<"$OUT/.ticks") t0=$(date +%s%N)
  out=$("$@")
  children_ticks >"$OUT/.ticks"
  s1=$(core_ticks "$SERVER_CPU") o1=$(ours_ticks) c1=$(core_ticks "$CLIENT_CPU") g1=$(<"$OUT/.ticks") t1=$(date +%s%N)
  pct() { awk -v t="$1" -v ns=$((t1 - t0)) 'BEGIN {p = t * 1e9 / ns; printf "%.1f", (p < 0 ? 0 : p)}'; }
  jq -c --argjson s "$(pct $((s1 - s0 - o1 + o0)))" --argjson c "$(pct $((c1 - c0 - g1 + g0)))" \
    '. + {others_pct: $s, client_others_pct: $c}' <<<"$out"
}

wrk_json() { # wrk_json CONNECTIONS SECONDS URL [METHOD BODY] → the WRK_JSON summary
  local out
  out=$(WRK_METHOD=${4:-} WRK_BODY=${5:-} taskset -c "$CLIENT_CPU" \
    wrk -t1 -c"$1" -d"$2"s --timeout 10s -s benches/wrk/report.lua "$3")
  sed -n 's/^WRK_JSON //p' <<<"$out"
}
wrk_run() { with_others wrk_json "$@"; }
loadgen() { taskset -c "$CLIENT_CPU" "$LOADGEN" "$@"; }

record() { # record SCENARIO TARGET JSON [KEY=NUMBER...]: one line of results.jsonl
  local scenario=$1 target=$2 json=$3 extra='{}' kv
  shift 3
  for kv in "$@"; do
    extra=$(jq -c --arg k "${kv%%=*}" --argjson v "${kv#*=}" '. + {($k): $v}' <<<"$extra")
  done
  jq -cn --arg s "$scenario" --arg t "$target" --argjson r "$json" --argjson x "$extra" \
    '{scenario: $s, target: $t, result: $r} + $x' >>"$RESULTS"
}

want() { [[ ",$ONLY," == *",$1,"* ]]; }

DEVICE_BODY='client_id=tv-app&scope=openid%20profile'

# ---------------------------------------------------------------------------------------------
# The machine and the versions, for the report.

record env machine "$(jq -n \
  --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  --arg nproc "$(nproc)" \
  --arg mem "$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
  --arg kernel "$(uname -r)" \
  --arg os "$(. /etc/os-release && echo "$PRETTY_NAME")" \
  --arg load_before "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+uncommitted src changes')" \
  --arg rustc "$(rustc -V)" \
  --arg node "$(node --version)" \
  --arg oidc_provider "$(node -p "require('./tests/idp/node_modules/oidc-provider/package.json').version")" \
  --arg nginx "$(nginx -v 2>&1 | sed 's/^nginx version: //')" \
  --arg redis "$(redis-server --version | awk '{print $3}' | sed 's/v=//')" \
  --arg wrk "$(wrk -v 2>&1 | head -1 | awk '{print $2}')" \
  --arg server_cpu "$SERVER_CPU" --arg client_cpu "$CLIENT_CPU" \
  --arg autogroup "$(cat "/proc/$$/autogroup" 2>/dev/null)" \
  '$ARGS.named')"

# ---------------------------------------------------------------------------------------------
# 1. Device authorization: requests/s and latency at 32 connections, after a warm-up run.
# "floor" is the gateway answering the same path with no work behind it (GET → 405): what one
# request costs in Pingora and the routing, whatever the endpoint does.

scenario_1() {
  local name
  for name in memory redis oidc-provider floor; do
    log "1. device authorization: $name"
    local url=$GATE/device/code method=POST body=$DEVICE_BODY
    case $name in
    memory) start_gate gate gate-memory.yaml "$DEAD_PORT" ;;
    redis) start_redis && start_gate gate gate-redis.yaml "$DEAD_PORT" ;;
    oidc-provider)
      start_idp "$IDP" 1
      url=$IDP/device/auth
      ;;
    floor)
      start_gate gate gate-memory.yaml "$DEAD_PORT"
      method=GET body=
      ;;
    esac
    wrk_run 32 3 "$url" "$method" "$body" >/dev/null # warm-up (JIT, connections, caches)
    record 1 "$name" "$(wrk_run 32 "$SECS" "$url" "$method" "$body")"
    stop_all
  done
}

# ---------------------------------------------------------------------------------------------
# 2. Polling: 10k pending grants, each polled at its interval (5 s + 100 ms), 25 s of polling of
# which the first 5 s are left out; CPU time of the server processes over the measured window.

scenario_2() {
  local name
  for name in memory redis oidc-provider; do
    log "2. polling 10k pending grants: $name"
    local args=(--url "$GATE" --device-path /device/code)
    case $name in
    memory) start_gate gate gate-memory.yaml "$DEAD_PORT" ;;
    redis) start_redis && start_gate gate gate-redis.yaml "$DEAD_PORT" ;;
    oidc-provider)
      start_idp "$IDP" 1
      args=(--url "$IDP" --device-path /device/auth)
      ;;
    esac
    local pids=()
    for p in "${PID[@]}"; do pids+=(--cpu-pid "$p"); done
    record 2 "$name" "$(with_others loadgen poll "${args[@]}" --scope openid --grants 10000 \
      --connections 100 --duration 25 --warmup 5 "${pids[@]}")"
    stop_all
  done
}

# ---------------------------------------------------------------------------------------------
# 3. Pass-through: a small and a 100 KB file from nginx, directly, through nginx as a reverse
# proxy, through a bare Pingora proxy (examples/bare_proxy.rs: the same Pingora and ServerConf,
# no hooks: the ceiling of the engine) and through devicegate. Throughput at 64 connections;
# latency at 1 connection.

# The files nginx serves in scenarios 3 and 6: a small JSON document (a typical IdP answer:
# ~300 bytes), 100 KB of random bytes, and the IdP's discovery document, as the gateway in its
# default configuration (no upstream.token_path) loads it once from its upstream.
make_www() {
  [ -f "$OUT/www/small.json" ] && return 0
  mkdir -p "$OUT/www/.well-known" "$OUT/nginx-tmp"
  printf '{"keys":[{"kty":"RSA","kid":"bench","use":"sig","alg":"RS256","n":"%s","e":"AQAB"}]}\n' \
    "$(head -c 165 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=')" >"$OUT/www/small.json"
  head -c 102400 /dev/urandom >"$OUT/www/100k.bin"
  printf '{"issuer":"%s","authorization_endpoint":"%s/auth","token_endpoint":"%s/token","jwks_uri":"%s/jwks"}\n' \
    "$GATE" "$GATE" "$GATE" "$GATE" >"$OUT/www/.well-known/openid-configuration"
  chmod -R a+rX "$OUT/www"
}

scenario_3() {
  log "3. pass-through: nginx (static), nginx (proxy), bare Pingora, devicegate"
  make_www
  start_nginx nginx-static "$STATIC_PORT"
  start_nginx nginx-proxy "$PROXY_PORT" "$STATIC_PORT"
  start bare "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$STATIC_PORT" 1
  wait_port "$BARE_PORT" bare
  # The default configuration: no upstream.token_path (every deployment learns it from
  # discovery), unlike the other scenarios' gate-memory.yaml.
  start_gate gate gate-default.yaml "$STATIC_PORT"
  local file target port
  for file in small.json 100k.bin; do
    for target in direct nginx bare devicegate; do
      case $target in
      direct) port=$STATIC_PORT ;;
      nginx) port=$PROXY_PORT ;;
      bare) port=$BARE_PORT ;;
      devicegate) port=$GATE_PORT ;;
      esac
      local url=http://127.0.0.1:$port/$file
      log "   $file via $target"
      wrk_run 64 2 "$url" >/dev/null
      local thr lat
      thr=$(wrk_run 64 "$SECS" "$url")
      lat=$(wrk_run 1 5 "$url")
      record 3 "$target" "$(jq -cn --argjson t "$thr" --argjson l "$lat" '{throughput: $t, single: $l}')" \
        "bytes=$(stat -c %s "$OUT/www/$file")"
    done
  done
  stop_all
}

# ---------------------------------------------------------------------------------------------
# 4. Memory per pending grant: RSS (and Redis used_memory) from 1 to $GRANTS pending grants;
# device-endpoint latency at 1 connection (20k requests) at ~1k and at $GRANTS pending. A
# latency probe during which other jobs took more than 10% of the server CPU is taken again
# (twice at most; each probe adds its 20k grants, recorded as pending_before).

device() { loadgen http --url "$GATE" --method POST --path /device/code --body "$DEVICE_BODY" "$@"; }
probe() {
  local attempt before r
  for attempt in 1 2 3; do
    before=$(pending)
    r=$(with_others device --concurrency 1 --requests 20000)
    r=$(jq -c --argjson p "$before" --argjson a "$attempt" '. + {pending_before: $p, attempt: $a}' <<<"$r")
    if [ "$(jq '.others_pct < 10' <<<"$r")" = true ]; then break; fi
  done
  echo "$r"
}

scenario_4() {
  local name
  for name in memory redis; do
    log "4. $GRANTS pending grants: $name store"
    local redis_pid=
    if [ "$name" = redis ]; then
      start_redis
      redis_pid=${PID[redis]}
      start_gate gate gate-redis.yaml "$DEAD_PORT"
    else
      start_gate gate gate-memory.yaml "$DEAD_PORT"
    fi
    local gate_pid=${PID[gate]}
    device --concurrency 1 --requests 1 >/dev/null
    local rss0 used0=0
    rss0=$(rss_kb "$gate_pid")
    [ -n "$redis_pid" ] && used0=$(redis_used)
    device --concurrency 8 --requests 999 >/dev/null
    local at_1k fill
    at_1k=$(probe)
    fill=$(device --concurrency 32 --requests $((GRANTS - $(pending))))
    local rss1 used1=0 count
    rss1=$(rss_kb "$gate_pid")
    [ -n "$redis_pid" ] && used1=$(redis_used)
    count=$(pending)
    local at_full
    at_full=$(probe)
    record 4 "$name" "$(jq -cn --argjson a "$at_1k" --argjson f "$fill" --argjson b "$at_full" \
      '{at_1k: $a, fill: $f, at_full: $b}')" \
      "pending=$count" "rss0_kb=$rss0" "rss1_kb=$rss1" "redis_used0=$used0" "redis_used1=$used1" \
      "redis_rss_kb=$([ -n "$redis_pid" ] && rss_kb "$redis_pid" || echo 0)"
    stop_all
  done
}

# ---------------------------------------------------------------------------------------------
# 5. End-to-end: complete device flows, approved over HTTP through the real IdP (4 flows at a
# time, 20 s, the first 3 s left out); the gateway's /metrics split the callback's time.

scenario_5() {
  log "5. end-to-end device flows through the IdP"
  start_idp "$GATE" 0
  start_gate gate gate-memory.yaml "$IDP_PORT"
  local result
  result=$(with_others loadgen e2e --url "$GATE" --client-id tv-app --scope 'openid profile' \
    --concurrency 4 --duration 20 --warmup 3)
  # Mean back-channel time per operation over the run (the code exchange and the JWKS fetch
  # happen inside the callback step), from the gateway's Prometheus histograms.
  local upstream
  upstream=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | python3 -c '
import json, re, sys
acc = {}
for line in sys.stdin:
    m = re.match(r"devicegate_upstream_request_seconds_(sum|count)[{]operation=\"(\w+)\",result=\"(\w+)\"[}] (\S+)", line)
    if m:
        acc.setdefault(m[2] + "/" + m[3], {})[m[1]] = float(m[4])
print(json.dumps(acc))')
  record 5 gateway+idp "$result" "upstream=$upstream"
  stop_all
}

# ---------------------------------------------------------------------------------------------
# 6. Scaling with server.threads: the device endpoint (memory and Redis stores) and a small
# pass-through GET, with the gateway at 1 and at 2 worker threads. Both runs use the same
# placement: the gateway may run on both CPUs, wrk stays on the client CPU, redis-server and
# nginx on the server CPU. With only 2 cores the second thread competes with wrk and the
# helpers; benches/README.md explains what the figures say about N cores.

scenario_6() {
  make_www
  local threads what
  for threads in 1 2; do
    for what in memory redis pass; do
      log "6. server.threads $threads: $what"
      local conf=gate-memory.yaml upstream=$DEAD_PORT url=$GATE/device/code method=POST body=$DEVICE_BODY conns=32
      case $what in
      redis) start_redis && conf=gate-redis.yaml ;;
      pass)
        start_nginx nginx-static "$STATIC_PORT"
        conf=gate-default.yaml upstream=$STATIC_PORT url=$GATE/small.json method= body= conns=64
        ;;
      esac
      sed "s/^  threads: 1 .*/  threads: $threads/" "benches/conf/$conf" >"$OUT/threads-$conf"
      SERVER_CPU=0,1 start_gate gate "$OUT/threads-$conf" "$upstream"
      wrk_run "$conns" 3 "$url" "$method" "$body" >/dev/null
      record 6 "$what" "$(wrk_run "$conns" "$SECS" "$url" "$method" "$body")" "threads=$threads"
      stop_all
    done
  done
}

for s in 1 2 3 4 5 6; do
  if want "$s"; then "scenario_$s"; fi
done
record env after "$(jq -n --arg load_after "$(cut -d' ' -f1-3 /proc/loadavg)" '$ARGS.named')"
log "results: $RESULTS"
