#!/usr/bin/env bash
# The benchmark command: reproduces every table of BENCHMARKS.md on this machine.
#
#   sudo ./scripts/bench.sh          # ~7 minutes on 2 cores once built (the first release build
#                                    # takes ~7 more); everything runs on 127.0.0.1
#
# 1. installs what is missing with apt-get (Debian): nginx, redis-server, wrk, jq, python3,
#    curl, node/npm, cmake and a C compiler (Pingora's build), and the test IdP's npm packages
#    (from tests/idp/package-lock.json);
# 2. builds the gateway and the load generator in release mode;
# 3. runs the five scenarios (benches/run.sh; results and logs in target/bench/<date>/);
# 4. rewrites the generated part of BENCHMARKS.md from the results (benches/report.py).
#
# Environment: BENCH_ONLY=1,3 runs some scenarios only (BENCHMARKS.md is then left alone
# unless BENCH_REPORT=1); see benches/run.sh for the others. benches/README.md explains each
# scenario; benches/profile.sh profiles the hot paths (not run here).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

# --- 1. Prerequisites -------------------------------------------------------------------------
missing=()
for tool in nginx:nginx-light redis-server:redis-server wrk:wrk jq:jq python3:python3 \
  curl:curl node:nodejs npm:npm cmake:cmake cc:build-essential; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${missing[*]}; run as root (or apt-get install them)" >&2
    exit 1
  fi
  echo "==> apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] ||
  { echo "node $(node --version) is too old for oidc-provider 9: install node 20 or newer" >&2; exit 1; }
[ -d tests/idp/node_modules/oidc-provider ] || npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error

# --- 2. Build ---------------------------------------------------------------------------------
echo "==> cargo build --release (gateway, load generator, bare Pingora proxy)" >&2
cargo build --release --quiet --bin devicegate --example loadgen --example bare_proxy

# --- 3. Run -----------------------------------------------------------------------------------
out=${BENCH_OUT:-$PWD/target/bench/$(date +%Y%m%d-%H%M%S)}
BENCH_OUT=$out benches/run.sh

# --- 4. Report --------------------------------------------------------------------------------
if [ -z "${BENCH_ONLY:-}" ] || [ -n "${BENCH_REPORT:-}" ]; then
  python3 benches/report.py "$out/results.jsonl" BENCHMARKS.md \
    --command "sudo ./scripts/bench.sh" --wall-seconds $((SECONDS - start))
fi
echo "==> done in $((SECONDS - start)) s; results in $out" >&2
