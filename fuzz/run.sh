#!/usr/bin/env bash
# Runs every fuzz target (or the ones named as arguments) for FUZZ_SECONDS seconds each.
#   FUZZ_SECONDS=60    seconds per target (default 60)
#   FUZZ_SANITIZER=    address (default) or none, passed to `cargo fuzz run --sanitizer`
#   FUZZ_JOBS=1        libFuzzer -jobs/-workers (default 1)
# Stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(form_params user_code config_yaml discovery_rewrite)
fi

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    extra=()
    if [ -f "dicts/$t.dict" ]; then
        extra+=("-dict=$PWD/dicts/$t.dict")
    fi
    echo "=== $t: ${FUZZ_SECONDS}s (sanitizer: $FUZZ_SANITIZER)"
    # New inputs go to corpus/<t>; seeds/<t> is read only. -- passes flags to libFuzzer.
    if ! cargo fuzz run --fuzz-dir . --sanitizer "$FUZZ_SANITIZER" "$t" \
        "$PWD/corpus/$t" "$PWD/seeds/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 "${extra[@]}"; then
        echo "!!! $t failed: see artifacts/$t/" >&2
        status=1
    fi
    echo "=== $t: corpus/$t holds $(find "corpus/$t" -type f | wc -l) inputs"
done
exit $status
