#!/usr/bin/env bash
# make lint (and the first phase of make test): the rules of ARCHITECTURE.md that a tool
# can check, each failing the run on the first violation.
#   1. formatting         cargo fmt --all --check
#   2. clippy             cargo clippy --workspace --all-targets -- -D warnings
#                         (warnings are errors; clippy.toml's disallowed methods/types)
#   3. dependency rules   cargo deny check bans                 (deny.toml: one TLS provider)
#                         cargo deny --manifest-path issuer/Cargo.toml check bans
#                                                               (issuer/deny.toml: isolation)
# cargo-deny is pinned and installed once into the tools root (cargo install --locked,
# about four minutes on two cores the first time).
#
# Environment: ALGA_TOOLS_ROOT (default ~/.cache/alga-license/tools).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_ROOT="${ALGA_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/alga-license/tools}"
CARGO_DENY_VERSION=0.20.2

say() { printf '==> lint: %s\n' "$*"; }
die() { printf '==> lint: FAILED: %s\n' "$*" >&2; exit 1; }

cargo_deny() {
    local b="$TOOLS_ROOT/bin/cargo-deny" want="cargo-deny $CARGO_DENY_VERSION" v
    v="$("$b" deny --version 2>/dev/null </dev/null || true)"
    if [ "$v" != "$want" ]; then
        say "installing cargo-deny@$CARGO_DENY_VERSION into $TOOLS_ROOT (cargo install --locked, one time)" >&2
        mkdir -p "$TOOLS_ROOT"
        cargo install --root "$TOOLS_ROOT" --force --locked "cargo-deny@$CARGO_DENY_VERSION" \
            >&2 || die "cargo install cargo-deny@$CARGO_DENY_VERSION failed"
        v="$("$b" deny --version 2>/dev/null </dev/null || true)"
        [ "$v" = "$want" ] || die "cargo-deny in $TOOLS_ROOT/bin answers --version with '$v', not '$want'"
    fi
    printf '%s\n' "$b"
}

cd "$ROOT"
say "formatting (cargo fmt --all --check)"
cargo fmt --all --check || die "formatting differs: run cargo fmt --all"
say "clippy (cargo clippy --workspace --all-targets -- -D warnings)"
cargo clippy --workspace --all-targets --quiet -- -D warnings || die "clippy"
deny="$(cargo_deny)"
say "dependency rules of the workspace (deny.toml)"
"$deny" deny --log-level error check bans || die "deny.toml"
say "dependency rules of the isolated issuer (issuer/deny.toml)"
"$deny" deny --log-level error --manifest-path "$ROOT/issuer/Cargo.toml" check bans || die "issuer/deny.toml"
say "ok"
