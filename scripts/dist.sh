#!/usr/bin/env bash
# `make dist`: the Debian packages of alga-license, built with the ecosystem's tools.
#
#   bash scripts/dist.sh            release builds (profile `dist`: LTO, one codegen unit,
#                                   line tables split into -dbgsym packages), man pages and
#                                   shell completions from each binary's clap definition,
#                                   the packages (cargo-deb), a CycloneDX SBOM per package
#                                   (cargo-cyclonedx) and SHA256SUMS, all into dist/
#   bash scripts/dist.sh --check    the same, then proves the packages: lintian (no error,
#                                   no warning but those overridden with a reason), the
#                                   packaged binaries unpacked into a scratch root and run
#                                   through the whole journey (scripts/demo.sh) against the
#                                   dev stack, `systemd-analyze verify` of the units inside
#                                   that root, and install, upgrade (an edited config kept),
#                                   remove (data kept) and purge in a Debian 12 chroot
#                                   (debootstrap). Needs `make up` (run by `make test`).
#
# The tools not from Debian (cargo-deb, cargo-cyclonedx) are pinned and installed into
# $ALGA_TOOLS_ROOT like alga-dev-s3, checked by their --version, never taken from PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CHECK=0
case "${1:-}" in
    --check) CHECK=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

CARGO_DEB_VERSION=3.8.0
CYCLONEDX_VERSION=0.5.9
TOOLS_ROOT="${ALGA_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/alga-license/tools}"
DIST="$ROOT/dist"
PROFILE=dist
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
OUT="$TARGET_DIR/$PROFILE"
GEN="$OUT/gen"
VERSION="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "alga-issuer"))')"
DEB_VERSION="$VERSION-1"
# crate directory : Debian package
PACKAGES=(policies:alga-license issuer:alga-issuer gateway:alga-gateway cli:alga-tools appliance:alga-appliance)
# crate : binary
BINARIES=(alga-issuer:alga-issuer alga-gateway:alga-gateway alga-cli:algactl alga-audit:alga-audit alga-appliance:alga-appliance)

say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
run_privileged() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

# --------------------------------------------------------------------------- tools

install_debs() {
    local missing=() p
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "installing missing Debian packages: ${missing[*]}"
    run_privileged env DEBIAN_FRONTEND=noninteractive apt-get update -q
    run_privileged env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# cargo_tool NAME VERSION VERSION_LINE: the pinned cargo subcommand in TOOLS_ROOT.
cargo_tool() {
    local name="$1" version="$2" want="$3" b="$TOOLS_ROOT/bin/$1" v
    v="$("$b" "${name#cargo-}" --version 2>/dev/null </dev/null || true)"
    if [ "$v" != "$want" ]; then
        say "installing $name@$version into $TOOLS_ROOT (cargo install, one time)"
        mkdir -p "$TOOLS_ROOT"
        cargo install --root "$TOOLS_ROOT" --force --locked "$name@$version"
        v="$("$b" "${name#cargo-}" --version 2>/dev/null </dev/null || true)"
        [ "$v" = "$want" ] || die "$name installed in $TOOLS_ROOT/bin but it answers --version with '$v', not '$want'"
    fi
    info "$name $version: $b"
}

# ----------------------------------------------------------------------------- build

build() {
    say "release builds (cargo build --profile $PROFILE --locked): LTO, one codegen unit"
    local args=() pair
    for pair in "${BINARIES[@]}"; do args+=(-p "${pair%%:*}" --bin "${pair#*:}"); done
    cargo build --profile "$PROFILE" --locked "${args[@]}"
    for pair in "${BINARIES[@]}"; do
        local b="${pair#*:}" v
        v="$("$OUT/$b" --version)"
        case "$v" in
            "$b $VERSION (commit "*", release build)") info "$v" ;;
            *) die "$b --version says '$v': expected the version, the commit and the profile" ;;
        esac
    done
}

# Man pages (gzipped, as Debian wants them) and bash, zsh and fish completions, from
# each binary's own clap definition (its hidden `generate` subcommand).
generate() {
    say "man pages and completions (each binary's \`generate\`)"
    rm -rf "$GEN"
    local pair b n
    for pair in "${BINARIES[@]}"; do
        b="${pair#*:}"
        mkdir -p "$GEN/$b/man" "$GEN/$b/completions"
        "$OUT/$b" generate man --out "$GEN/$b/man" >/dev/null
        gzip -9n "$GEN/$b/man/"*.1
        for sh in bash zsh fish; do
            "$OUT/$b" generate completion "$sh" --out "$GEN/$b/completions" >/dev/null
        done
        n="$(find "$GEN/$b/man" -name '*.1.gz' | wc -l)"
        info "$b: $n man pages, 3 completion scripts"
    done
}

packages() {
    say "Debian packages (cargo-deb $CARGO_DEB_VERSION, -dbgsym packages beside them)"
    rm -rf "$DIST"
    mkdir -p "$DIST"
    local pair crate pkg
    for pair in "${PACKAGES[@]}"; do
        crate="${pair%%:*}"; pkg="${pair#*:}"
        # alga-license carries no program, so nothing to split.
        local dbg=(--dbgsym)
        [ "$pkg" = alga-license ] && dbg=()
        "$TOOLS_ROOT/bin/cargo-deb" deb --no-build --locked --profile "$PROFILE" \
            --manifest-path "$crate/Cargo.toml" "${dbg[@]}" --output "$DIST/" >/dev/null
        info "$(cd "$DIST" && ls "${pkg}_"*.deb)"
    done
}

sboms() {
    say "CycloneDX SBOMs (cargo-cyclonedx $CYCLONEDX_VERSION), one per package"
    # One run describes every crate of the workspace, each into its own directory.
    local name="alga-sbom-$$"
    "$TOOLS_ROOT/bin/cargo-cyclonedx" cyclonedx --manifest-path "$ROOT/Cargo.toml" \
        --format json --spec-version 1.5 --no-build-deps -q --override-filename "$name" >/dev/null
    local pair crate pkg
    for pair in "${PACKAGES[@]}"; do
        crate="${pair%%:*}"; pkg="${pair#*:}"
        [ -s "$crate/$name.json" ] || die "cargo-cyclonedx wrote no $crate/$name.json"
        mv -f "$crate/$name.json" "$DIST/${pkg}_${DEB_VERSION}.cdx.json"
    done
    # alga-tools carries alga-audit too: that crate's dependencies, in an SBOM of its own.
    mv -f "audit/$name.json" "$DIST/alga-tools_${DEB_VERSION}.alga-audit.cdx.json"
    find "$ROOT" -path "$ROOT/target" -prune -o -name "$name.json" -type f -exec rm -f {} +
    (cd "$DIST" && sha256sum -- *.deb *.ddeb *.cdx.json >SHA256SUMS)
    info "$(wc -l <"$DIST/SHA256SUMS") files in $DIST/SHA256SUMS"
}

# ------------------------------------------------------------------------------ check

lint() {
    say "lintian (every error and warning fails, but those overridden with a reason in packaging/lintian/)"
    local deb out rc=0
    for deb in "$DIST"/*.deb; do
        # (Lintian notes that it runs as root, as CI does; that line is not a finding.)
        out="$(lintian --fail-on error,warning --tag-display-limit 0 "$deb" 2>&1)" || rc=1
        out="$(printf '%s\n' "$out" | grep -v '^running with root privileges' || true)"
        if [ -n "$out" ]; then
            printf '%s\n' "$out" | sed 's/^/    /'
            info "$(basename "$deb"): lintian findings above"
        else
            info "$(basename "$deb"): lintian clean"
        fi
    done
    [ "$rc" = 0 ] || die "lintian failed"
}

main() {
    # (liblzma-dev and pkg-config: cargo-deb links the system liblzma.)
    install_debs dpkg-dev binutils fakeroot liblzma-dev pkg-config
    cargo_tool cargo-deb "$CARGO_DEB_VERSION" "cargo-deb $CARGO_DEB_VERSION"
    cargo_tool cargo-cyclonedx "$CYCLONEDX_VERSION" "cargo-cyclonedx-cyclonedx $CYCLONEDX_VERSION"
    build
    generate
    packages
    sboms
    if [ "$CHECK" = 1 ]; then
        install_debs lintian debootstrap systemd
        lint
        bash "$ROOT/scripts/dist-check.sh" "$DIST"
    fi
    say "dist: $(cd "$DIST" && ls | tr '\n' ' ')"
}

main
