#!/usr/bin/env bash
# The devicegate demo: builds the gateway, starts a development OpenID Connect provider
# (oidc-provider, which has no device flow of its own enabled) on 127.0.0.1:3000, puts the
# gateway in front of it at http://localhost:8080 with conf/devicegate.yaml, and runs a device
# client in this terminal. Open the URL it prints, approve, and log in with any user name and
# password: the tokens arrive in the terminal. Ctrl-C stops everything.
#
#   ./scripts/demo.sh
#
# Run as root on a fresh Debian machine, it installs what it needs first (cmake, a C
# toolchain, node and npm); otherwise it names the one command that does.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs), then run ./scripts/demo.sh again" >&2; exit 1; }
. scripts/lib/prerequisites.sh
need_packages ./scripts/demo.sh cmake build-essential pkg-config curl ca-certificates nodejs npm

[ -d tests/idp/node_modules/oidc-provider ] || npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
echo "==> building (the first build takes a few minutes)"
cargo build --quiet --bin devicegate --example device_client

export TV_APP_SECRET=${TV_APP_SECRET:-demo-secret-change-me}
logs=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

IDP_ISSUER=http://localhost:8080 IDP_PORT=3000 \
IDP_CLIENTS="[{\"client_id\":\"tv-app\",\"client_secret\":\"$TV_APP_SECRET\",\"redirect_uris\":[\"http://localhost:8080/device/callback\"]}]" \
  node tests/idp/idp.js >"$logs/idp.log" 2>&1 &
pids+=($!)
./target/debug/devicegate --config conf/devicegate.yaml >"$logs/gateway.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null http://localhost:8080/.well-known/openid-configuration 2>/dev/null; then break; fi
  sleep 0.2
done
curl -fsS -o /dev/null http://localhost:8080/.well-known/openid-configuration || {
  echo "the demo did not start; logs:" >&2; cat "$logs"/*.log >&2; exit 1; }
echo "==> IdP on 127.0.0.1:3000, devicegate on http://localhost:8080 (logs in $logs)"
# tv-app is a confidential client in conf/devicegate.yaml: the device authenticates with its secret.
DEVICE_CLIENT_SECRET=$TV_APP_SECRET \
  ./target/debug/examples/device_client http://localhost:8080 tv-app "openid profile offline_access"
