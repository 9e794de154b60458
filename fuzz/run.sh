#!/usr/bin/env bash
# make fuzz: builds the cargo-fuzz targets (RUSTC_BOOTSTRAP=1 lets the installed stable
# toolchain accept libFuzzer's nightly flags) and runs each for FUZZ_SECONDS (default
# 300), bounded, then reports crashes per target. Needs `cargo install cargo-fuzz`.
# Sanitizer "none": every crate forbids unsafe, so the fuzzers look for panics, hangs
# and out-of-memory, and run several times faster without ASan.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECS="${FUZZ_SECONDS:-300}"
TARGETS="${FUZZ_TARGETS:-install_code csr api_bodies audit_export}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
timeout 1800 cargo fuzz build -s none -O
status=0
for t in $TARGETS; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "fuzz: $t for ${SECS}s…"
    log="$(mktemp)"
    if timeout --kill-after=30 $((SECS + 60)) cargo fuzz run -s none -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
        echo "fuzz: $t: 0 crashes; $(grep -E '^#[0-9]+.*DONE|^Done' "$log" | tail -1)"
    else
        echo "fuzz: $t: CRASH or failure (log $log, artifacts in fuzz/artifacts/$t)"
        grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 || true
        status=1
    fi
done
exit "$status"
