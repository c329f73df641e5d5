#!/usr/bin/env bash
# Installs every prerequisite on a Debian machine and runs devicegate's whole test suite:
# formatting, clippy, a RustSec audit of Cargo.lock, unit tests, and the end-to-end tests
# against a real OpenID Connect provider (oidc-provider on node) with a real headless Chromium
# and a real redis-server (standalone, a 3-primary cluster, and a primary with a replica and
# three redis-sentinels).
#
#   sudo ./scripts/test.sh        (as root: runs apt-get update, then installs what is missing)
#
# Needs a Rust toolchain (rustup) already on the machine; everything else it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake build-essential pkg-config curl nodejs npm chromium redis-server redis-sentinel nginx-light openssl python3-pip python3-venv ca-certificates oidc-agent-cli jq glewlwyd)
. scripts/lib/prerequisites.sh
need_packages ./scripts/test.sh "${packages[@]}"

fail() { echo "ERROR: $*" >&2; exit 1; }
command -v cargo >/dev/null || fail "cargo not found: install Rust with rustup (https://rustup.rs)"
command -v cmake >/dev/null || fail "cmake not found: apt-get install cmake (Pingora builds zlib-ng with it)"
command -v node >/dev/null || fail "node not found: apt-get install nodejs npm"
command -v chromium >/dev/null || fail "chromium not found: apt-get install chromium"
command -v redis-server >/dev/null || fail "redis-server not found: apt-get install redis-server"
command -v redis-sentinel >/dev/null || fail "redis-sentinel not found: apt-get install redis-sentinel (the failover tests run three)"
command -v redis-cli >/dev/null || fail "redis-cli not found: apt-get install redis-tools (the cluster tests create and reshard with it)"
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || fail "nginx not found: apt-get install nginx-light (the trusted-proxy test puts it in front)"
command -v openssl >/dev/null || fail "openssl not found: apt-get install openssl (the Redis TLS test makes its certificates with it)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "node $(node --version) is too old for oidc-provider 9: install node 20 or newer"

echo "==> npm ci (test IdPs and browser driver, from tests/idp{,2}/package-lock.json)"
npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
npm ci --prefix tests/idp2 --no-audit --no-fund --loglevel=error

echo "==> Python device clients (Authlib, oauthlib) in tests/clients/.venv, hash-pinned"
command -v oidc-gen >/dev/null || fail "oidc-agent not found: apt-get install oidc-agent-cli"
command -v jq >/dev/null || fail "jq not found: apt-get install jq"
[ -x /usr/bin/glewlwyd ] || fail "glewlwyd not found: apt-get install glewlwyd (a real IdP of the e2e suite, tests/idp4)"
[ -x tests/clients/.venv/bin/python ] || python3 -m venv tests/clients/.venv \
  || fail "python3 -m venv failed: apt-get install python3-venv"
tests/clients/.venv/bin/pip install --quiet --disable-pip-version-check --require-hashes \
  -r tests/clients/requirements.txt

echo "==> the third test IdP (django-oauth-toolkit) in tests/idp3/.venv, hash-pinned"
[ -x tests/idp3/.venv/bin/python ] || python3 -m venv tests/idp3/.venv \
  || fail "python3 -m venv failed: apt-get install python3-venv"
tests/idp3/.venv/bin/pip install --quiet --disable-pip-version-check --require-hashes \
  -r tests/idp3/requirements.txt

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo audit (RustSec snapshot in .ci/advisory-db.tar.gz)"
./scripts/audit.sh
echo "==> cargo build --example device_client (the demo client, run by an e2e test)"
cargo build --locked --example device_client
echo "==> cargo test"
cargo test --locked --all-targets
