#!/usr/bin/env bash
# make fuzz: builds the cargo-fuzz targets (RUSTC_BOOTSTRAP=1 lets the installed stable
# toolchain accept libFuzzer's nightly flags) and runs each for FUZZ_SECONDS (default
# 300), bounded, then reports crashes per target. cargo-fuzz is pinned and installed
# once into the tools root, as `scripts/lint.sh` installs cargo-deny (environment:
# ALGA_TOOLS_ROOT, default ~/.cache/alga-license/tools).
# Sanitizer "none": every crate forbids unsafe, so the fuzzers look for panics, hangs
# and out-of-memory, and run several times faster without ASan.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECS="${FUZZ_SECONDS:-300}"
TARGETS="${FUZZ_TARGETS:-install_code csr api_bodies audit_export offline_files}"
TOOLS_ROOT="${ALGA_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/alga-license/tools}"
CARGO_FUZZ_VERSION=0.13.2
if [ "$("$TOOLS_ROOT/bin/cargo-fuzz" --version 2>/dev/null </dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "fuzz: installing cargo-fuzz@$CARGO_FUZZ_VERSION into $TOOLS_ROOT (one time)" >&2
    cargo install --root "$TOOLS_ROOT" --force --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
export PATH="$TOOLS_ROOT/bin:$PATH"
export RUSTC_BOOTSTRAP=1
timeout 1800 cargo fuzz build -s none -O
# Run the binaries just built: `cargo fuzz run` would rebuild first whenever a crate
# changed meanwhile, and the time bound below would then count compiling, not fuzzing.
BIN_DIR="target/$(rustc -vV | sed -n 's/^host: //p')/release"
status=0
for t in $TARGETS; do
    mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
    [ -x "$BIN_DIR/$t" ] || { echo "fuzz: $t: no binary at $BIN_DIR/$t"; status=1; continue; }
    echo "fuzz: $t for ${SECS}s…"
    log="$(mktemp)"
    rc=0
    timeout --kill-after=30 $((SECS + 120)) "$BIN_DIR/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 "corpus/$t" "seeds/$t" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ] && grep -q '^Done ' "$log"; then
        echo "fuzz: $t: 0 crashes; $(grep -E '^Done ' "$log" | tail -1)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "fuzz: $t: did not stop within ${SECS}+120 s (log $log)"
        status=1
    else
        echo "fuzz: $t: CRASH or failure, exit $rc (log $log, artifacts in fuzz/artifacts/$t)"
        grep -E 'panicked|ERROR|SUMMARY|deadly signal' "$log" | head -5 || true
        status=1
    fi
done
exit "$status"
