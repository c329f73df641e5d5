#!/usr/bin/env bash
# Profiles devicegate's hot paths with valgrind (callgrind: instructions per function; massif:
# heap by allocation site), on the release binary with a short, fixed load:
#
#   device   3000 device authorization requests (POST /device/code), 4 connections
#   poll     2000 pending grants, each polled at its interval (5.1 s) for 12 s
#   pass     4000 GETs of a 300-byte file (pass-small), then 1000 of a 100 KB file (pass-100k),
#            from nginx through the gateway in its default configuration (no token_path), and
#            the same through a bare Pingora proxy (bare-small, bare-100k: examples/bare_proxy.rs),
#            and through it without Pingora's default downstream module (bare-no-modules-*)
#   memory   the heap after 50 000 pending grants (massif), to see what one grant costs
#
# Instructions are counted only while the load runs (callgrind_control -i on/off), so start-up
# is left out. Not part of scripts/bench.sh (valgrind is ~50x slower); takes ~3 minutes.
#
#   benches/profile.sh [device|poll|pass|memory ...]    (default: all four)
#
# Writes $OUT/<name>.callgrind (open with kcachegrind or callgrind_annotate) and
# $OUT/<name>.txt: the top functions by exclusive and by inclusive instructions.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/target/release/devicegate
LOADGEN=$ROOT/target/release/examples/loadgen
BARE=$ROOT/target/release/examples/bare_proxy
OUT=${BENCH_OUT:-$ROOT/target/bench/profile-$(date +%Y%m%d-%H%M%S)}
BASE=${BENCH_PORT_BASE:-19100}
GATE_PORT=$BASE
ADMIN_PORT=$((BASE + 1))
STATIC_PORT=$((BASE + 4))
DEAD_PORT=$((BASE + 9))
GATE=http://127.0.0.1:$GATE_PORT
DEVICE_BODY='client_id=tv-app&scope=openid%20profile'
mkdir -p "$OUT"
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

# gate TOOL NAME UPSTREAM_PORT [valgrind options]: devicegate under valgrind, pinned to CPU 1,
# with $GATE_CONF (gate-memory.yaml unless set), or the bare Pingora proxy when $GATE_CONF is
# "bare" (Pingora's default downstream module) or "bare-no-modules" (none, as devicegate).
gate() {
  local tool=$1 name=$2 upstream=$3
  shift 3
  local cmd=("$BIN" --config "benches/conf/${GATE_CONF:-gate-memory.yaml}")
  if [ "${GATE_CONF:-}" = bare ]; then cmd=("$BARE" "127.0.0.1:$GATE_PORT" "127.0.0.1:$upstream" 1); fi
  if [ "${GATE_CONF:-}" = bare-no-modules ]; then
    cmd=("$BARE" "127.0.0.1:$GATE_PORT" "127.0.0.1:$upstream" 1 no-modules)
  fi
  env BENCH_LISTEN="127.0.0.1:$GATE_PORT" BENCH_PUBLIC_URL="$GATE" BENCH_UPSTREAM="127.0.0.1:$upstream" \
    BENCH_ADMIN="127.0.0.1:$ADMIN_PORT" BENCH_UPGRADE_SOCK="$OUT/upgrade.sock" \
    taskset -c 1 valgrind --tool="$tool" "$@" "${cmd[@]}" \
    >"$OUT/$name.log" 2>&1 &
  GATE_PID=$!
  PIDS+=("$GATE_PID")
  wait_port "$GATE_PORT"
}

stop_gate() {
  kill -TERM "$GATE_PID"
  wait "$GATE_PID" 2>/dev/null || true
}

loadgen() { taskset -c 0 "$LOADGEN" "$@" >/dev/null; }

# callgrind NAME UPSTREAM_PORT WARMUP_CMD LOAD_CMD: collects instructions during LOAD_CMD only
# (LOAD_CMD may switch collection on itself, then WARMUP_CMD is empty).
callgrind() {
  local name=$1 upstream=$2 warmup=$3 load=$4
  echo "==> callgrind: $name" >&2
  gate callgrind "$name" "$upstream" --instr-atstart=no --callgrind-out-file="$OUT/$name.callgrind"
  eval "$warmup"
  if [ -n "$warmup" ]; then callgrind_control -i on "$GATE_PID" >/dev/null; fi
  eval "$load"
  callgrind_control -i off "$GATE_PID" >/dev/null
  stop_gate
  {
    echo "# $name: exclusive instructions (self cost)"
    callgrind_annotate --inclusive=no "$OUT/$name.callgrind" 2>/dev/null | sed -n '1,60p'
    echo
    echo "# $name: inclusive instructions"
    callgrind_annotate --inclusive=yes "$OUT/$name.callgrind" 2>/dev/null | sed -n '1,90p'
  } >"$OUT/$name.txt"
  echo "    $OUT/$name.txt" >&2
}

profile_device() {
  callgrind device "$DEAD_PORT" \
    'loadgen http --url "$GATE" --method POST --path /device/code --body "$DEVICE_BODY" --concurrency 4 --requests 300' \
    'loadgen http --url "$GATE" --method POST --path /device/code --body "$DEVICE_BODY" --concurrency 4 --requests 3000'
}

profile_poll() {
  callgrind poll "$DEAD_PORT" '' \
    'loadgen poll --url "$GATE" --grants 2000 --connections 20 --duration 12 --warmup 0 --after-create "callgrind_control -i on $GATE_PID >/dev/null"'
}

profile_pass() {
  mkdir -p "$OUT/www" "$OUT/nginx-tmp"
  head -c 300 /dev/zero | tr '\0' 'x' >"$OUT/www/small.json"
  head -c 102400 /dev/urandom >"$OUT/www/100k.bin"
  # The IdP's discovery document, as the gateway in its default configuration (no
  # upstream.token_path) loads it once from its upstream.
  mkdir -p "$OUT/www/.well-known"
  printf '{"issuer":"%s","authorization_endpoint":"%s/auth","token_endpoint":"%s/token","jwks_uri":"%s/jwks"}\n' \
    "$GATE" "$GATE" "$GATE" "$GATE" >"$OUT/www/.well-known/openid-configuration"
  chmod -R a+rX "$OUT/www"
  sed -e "s|@DIR@|$OUT|g" -e "s|@PORT@|$STATIC_PORT|g" benches/conf/nginx-static.conf >"$OUT/nginx-static.conf"
  taskset -c 0 nginx -e "$OUT/nginx.error.log" -p "$OUT" -c "$OUT/nginx-static.conf" &
  local nginx=$!
  PIDS+=("$nginx")
  wait_port "$STATIC_PORT"
  local conf prefix
  for conf in gate-default.yaml bare bare-no-modules; do
    prefix=pass
    [ "$conf" = bare ] && prefix=bare
    [ "$conf" = bare-no-modules ] && prefix=bare-no-modules
    GATE_CONF=$conf callgrind "$prefix-small" "$STATIC_PORT" \
      'loadgen http --url "$GATE" --path /small.json --concurrency 4 --requests 300' \
      'loadgen http --url "$GATE" --path /small.json --concurrency 4 --requests 4000'
    GATE_CONF=$conf callgrind "$prefix-100k" "$STATIC_PORT" \
      'loadgen http --url "$GATE" --path /100k.bin --concurrency 4 --requests 100' \
      'loadgen http --url "$GATE" --path /100k.bin --concurrency 4 --requests 1000'
  done
  kill "$nginx"
  wait "$nginx" 2>/dev/null || true
}

profile_memory() {
  echo "==> massif: 50 000 pending grants" >&2
  gate massif memory "$DEAD_PORT" --threshold=0.5 --max-snapshots=30 --massif-out-file="$OUT/memory.massif"
  loadgen http --url "$GATE" --method POST --path /device/code --body "$DEVICE_BODY" --concurrency 8 --requests 50000
  sleep 1
  stop_gate
  ms_print --threshold=0.5 "$OUT/memory.massif" >"$OUT/memory.txt"
  echo "    $OUT/memory.txt" >&2
}

for p in "${@:-device poll pass memory}"; do
  for q in $p; do "profile_$q"; done
done
