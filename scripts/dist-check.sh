#!/usr/bin/env bash
# Proves the packages `scripts/dist.sh` built (its --check runs this; so does `make
# test`): bash scripts/dist-check.sh DIST_DIR
#
# 1. Unpacked into a scratch root (dpkg-deb -x): `systemd-analyze verify --root` of
#    every unit is clean, the man pages and completions are where the units and the
#    README say, every binary's --version names version, commit and profile.
# 2. The journey with the packaged binaries: a packaged issuer and a packaged gateway
#    on ports of their own against the dev stack's Postgres and SoftHSM2 token (the
#    dev configs, ports changed), then scripts/demo.sh with the packaged algactl,
#    alga-appliance and alga-audit against that gateway.
# 3. In a Debian 12 chroot (debootstrap, minbase): install all packages with apt
#    (the system users and directories appear), edit a config, upgrade to a newer
#    package whose sample config changed (the edit is kept), remove (data kept),
#    purge (data and configs gone).
# Needs `make up`; root (or sudo) for the chroot. Bounded: each step has a timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="$(cd "${1:?usage: $0 DIST_DIR}" && pwd)"
DEV="${ALGA_DEV_DIR:-$ROOT/.dev}"
TOOLS_ROOT="${ALGA_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/alga-license/tools}"
WORK="$(mktemp -d /tmp/alga-dist-check.XXXXXX)"
PIDS=()

say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
run_privileged() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}
CHROOT=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$CHROOT" ]; then
        run_privileged umount "$CHROOT/proc" 2>/dev/null || true
        run_privileged rm -rf "$CHROOT"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -f "$DEV/env" ] || die "$DEV/env missing: run make up first"
set -a
# shellcheck source=/dev/null
. "$DEV/env"
set +a

# ------------------------------------------------------------ 1. the unpacked packages
say "unpacking every package into a scratch root"
ROOTFS="$WORK/root"
# The root gets this machine's systemd units (the targets ours are ordered against), as
# any system they are installed on has them.
mkdir -p "$ROOTFS/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$ROOTFS/usr/lib/systemd/"
for deb in "$DIST"/*.deb; do dpkg-deb -x "$deb" "$ROOTFS"; done
BIN="$ROOTFS/usr/bin"
for b in alga-issuer alga-gateway algactl alga-audit alga-appliance; do
    [ -x "$BIN/$b" ] || die "no /usr/bin/$b in the packages"
    v="$("$BIN/$b" --version)"
    case "$v" in *" (commit "*", release build)") info "$v" ;; *) die "$b --version: '$v'" ;; esac
    [ -s "$ROOTFS/usr/share/man/man1/$b.1.gz" ] || die "no man page for $b"
    [ -s "$ROOTFS/usr/share/bash-completion/completions/$b" ] || die "no bash completion for $b"
done
for f in etc/alga-license/policy.toml etc/alga-license/issuer.toml etc/alga-license/gateway.toml \
    usr/share/doc/alga-license/README.md usr/lib/sysusers.d/alga-issuer.conf \
    usr/lib/sysusers.d/alga-gateway.conf usr/lib/sysusers.d/alga-appliance.conf; do
    [ -s "$ROOTFS/$f" ] || die "no /$f in the packages"
done
# The sample policy the package installs is a valid policy.
"$BIN/alga-gateway" check-policy --policy "$ROOTFS/etc/alga-license/policy.toml" >/dev/null \
    || die "the packaged policy does not load"

say "systemd-analyze verify --root of the packaged units"
units=()
for deb in "$DIST"/*.deb; do
    while read -r u; do units+=("/${u#./}"); done < <(dpkg-deb -c "$deb" | awk '{ print $6 }' \
        | grep -E '^\./usr/lib/systemd/system/[^/]+\.(service|timer)$' || true)
done
[ "${#units[@]}" -ge 4 ] || die "expected 4 units in the packages, found ${#units[@]}"
out="$(timeout 60 systemd-analyze verify --root="$ROOTFS" --man=no "${units[@]}" 2>&1)" \
    || { printf '%s\n' "$out" >&2; die "systemd-analyze verify failed"; }
# It reports problems as warnings on stderr with exit 0 too: none is accepted.
if [ -n "$out" ]; then printf '%s\n' "$out" >&2; die "systemd-analyze verify is not clean"; fi
info "clean: ${units[*]}"

# ------------------------------------------------------- 2. the journey, packaged binaries
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
IPORT="$(free_port)"; GPORT="$(free_port)"
say "the packaged issuer (127.0.0.1:$IPORT) and gateway (127.0.0.1:$GPORT) on the dev stack's Postgres and token"
mkdir -p "$WORK/issuer-log"
sed -e "s|^address = \"127.0.0.1:[0-9]*\"|address = \"127.0.0.1:$IPORT\"|" \
    -e "s|^directory = .*|directory = \"$WORK/issuer-log\"|" \
    "$DEV/issuer.toml" >"$WORK/issuer.toml"
# The API on its own port; a dev ops listener (if any) on a free port of its own.
sed -e "s|^address = \"127.0.0.1:$(echo "${ALGA_GATEWAY_URL##*:}")\"|address = \"127.0.0.1:$GPORT\"|" \
    -e "s|^public_url = .*|public_url = \"https://localhost:$GPORT\"|" \
    -e "s|^url = \"https://localhost:[0-9]*\"|url = \"https://localhost:$IPORT\"|" \
    "$DEV/gateway.toml" >"$WORK/gateway.toml"
if grep -q '^ops_address\|^\[ops\]' "$WORK/gateway.toml"; then
    OPORT="$(free_port)"
    sed -i -e "/^\[ops\]/,/^\[/ s|^address = \"127.0.0.1:[0-9]*\"|address = \"127.0.0.1:$OPORT\"|" "$WORK/gateway.toml"
fi
grep -q "127.0.0.1:$GPORT" "$WORK/gateway.toml" || die "could not move the gateway to its own port"
ALGA_LOG=warn "$BIN/alga-issuer" serve --config "$WORK/issuer.toml" >"$WORK/issuer.log" 2>&1 &
PIDS+=($!)
# The gateway fetches the appliance CA from the issuer at start (and every 2 s until it
# has it): start it once the issuer answers, as a unit ordered after it would.
for _ in $(seq 1 100); do
    curl -sf -o /dev/null --cacert "$ALGA_CA_BUNDLE" --cert "$ALGA_GATEWAY_CLIENT_CERT" \
        --key "$ALGA_GATEWAY_CLIENT_KEY" "https://localhost:$IPORT/healthz" && break
    sleep 0.2
done
RUST_LOG=warn "$BIN/alga-gateway" serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -sf -o /dev/null --cacert "$ALGA_CA_BUNDLE" "https://localhost:$GPORT/readyz" && break
    sleep 0.2
done
curl -sf -o /dev/null --cacert "$ALGA_CA_BUNDLE" "https://localhost:$GPORT/readyz" \
    || { tail -20 "$WORK/issuer.log" "$WORK/gateway.log" >&2; die "the packaged gateway is not ready"; }
# demo.sh reads its settings from an env file: the dev stack's, pointed at the packaged
# binaries and gateway.
sed -e "s|^export ALGA_BIN_DIR=.*|export ALGA_BIN_DIR='$BIN'|" \
    -e "s|^export ALGA_GATEWAY_URL=.*|export ALGA_GATEWAY_URL='https://localhost:$GPORT'|" \
    -e "s|^export ALGA_ISSUER_URL=.*|export ALGA_ISSUER_URL='https://localhost:$IPORT'|" \
    "$DEV/env" >"$WORK/env"
say "the journey (scripts/demo.sh) with the packaged algactl, alga-appliance and alga-audit"
ALGA_ENV_FILE="$WORK/env" timeout 600 bash "$ROOT/scripts/demo.sh" >"$WORK/demo.log" 2>&1 \
    || { tail -40 "$WORK/demo.log" >&2; die "the journey failed with the packaged binaries"; }
sed -n '/STEP *RESULT/,$p' "$WORK/demo.log" | sed 's/^/    /'
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
PIDS=()

# ------------------------------------------------- 3. install, upgrade, remove, purge
say "install, upgrade, remove and purge in a Debian 12 chroot"
# A minimal Debian 12, made once and kept as a tarball; each run unpacks a fresh copy.
BASE="$TOOLS_ROOT/bookworm-minbase.tar"
if [ ! -s "$BASE" ]; then
    info "debootstrap bookworm (minbase), one time"
    mkdir -p "$TOOLS_ROOT"
    run_privileged timeout 900 debootstrap --variant=minbase --make-tarball="$BASE.tmp" bookworm "$WORK/bootstrap" \
        http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap --make-tarball failed"; }
    run_privileged mv -f "$BASE.tmp" "$BASE"
fi
CHROOT="$WORK/chroot"
run_privileged timeout 900 debootstrap --variant=minbase --unpack-tarball="$BASE" bookworm "$CHROOT" \
    http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap from $BASE failed"; }
run_privileged mount -t proc proc "$CHROOT/proc"
run_privileged cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
in_chroot() { run_privileged chroot "$CHROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
mkdir -p "$WORK/pkgs"
cp "$DIST"/*.deb "$WORK/pkgs/"
run_privileged mkdir -p "$CHROOT/pkgs"
run_privileged cp "$WORK/pkgs/"*.deb "$CHROOT/pkgs/"

# A newer alga-gateway whose sample config changed: the same files, version +1, one
# more comment line in /etc/alga-license/gateway.toml.
old_deb="$(ls "$WORK/pkgs"/alga-gateway_*.deb)"
old_version="$(dpkg-deb -f "$old_deb" Version)"
new_version="${old_version%-*}-$(( ${old_version##*-} + 1 ))"
dpkg-deb -R "$old_deb" "$WORK/newer"
sed -i "s/^Version: .*/Version: $new_version/" "$WORK/newer/DEBIAN/control"
echo "# (a newer release's sample)" >>"$WORK/newer/etc/alga-license/gateway.toml"
(cd "$WORK/newer" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum >DEBIAN/md5sums)
fakeroot dpkg-deb -b "$WORK/newer" "$WORK/alga-gateway_newer.deb" >/dev/null
run_privileged cp "$WORK/alga-gateway_newer.deb" "$CHROOT/pkgs/newer.deb"

in_chroot apt-get update -q >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; die "apt-get update in the chroot failed"; }
# shellcheck disable=SC2046
in_chroot apt-get install -y -q --no-install-recommends $(cd "$WORK/pkgs" && printf '/pkgs/%s ' *.deb) \
    >>"$WORK/apt.log" 2>&1 || { tail -30 "$WORK/apt.log" >&2; die "apt-get install of the packages failed"; }
for u in alga-issuer alga-gateway alga-appliance; do
    in_chroot getent passwd "$u" >/dev/null || die "the package did not create system user $u"
done
perm="$(in_chroot stat -c '%U:%G %a' /var/lib/alga-license/issuer)"
[ "$perm" = "alga-issuer:alga-issuer 700" ] || die "/var/lib/alga-license/issuer is $perm, not alga-issuer:alga-issuer 700"
perm="$(in_chroot stat -c '%U:%G %a' /etc/alga-license/secrets)"
[ "$perm" = "root:root 700" ] || die "/etc/alga-license/secrets is $perm, not root:root 700"
in_chroot /usr/bin/alga-issuer --version >/dev/null || die "the installed alga-issuer does not run in the chroot"
info "installed: users alga-issuer, alga-gateway, alga-appliance; /var/lib/alga-license/issuer alga-issuer 0700"

# The operator edits a config; the upgrade keeps it (the sample changed too: dpkg keeps
# the operator's, as apt does by default on a non-interactive upgrade).
in_chroot sh -c 'echo "# edited by the operator" >>/etc/alga-license/gateway.toml'
in_chroot dpkg -i --force-confdef --force-confold /pkgs/newer.deb >>"$WORK/apt.log" 2>&1 \
    || { tail -20 "$WORK/apt.log" >&2; die "the upgrade failed"; }
[ "$(in_chroot dpkg-query -W -f='${Version}' alga-gateway)" = "$new_version" ] || die "alga-gateway was not upgraded"
in_chroot grep -q '^# edited by the operator$' /etc/alga-license/gateway.toml \
    || die "the upgrade overwrote the operator's /etc/alga-license/gateway.toml"
info "upgraded alga-gateway $old_version -> $new_version: the edited config kept"

# Remove keeps data and configs; purge deletes them.
in_chroot sh -c 'mkdir -p /var/lib/alga-license/issuer/signlog && echo x >/var/lib/alga-license/issuer/signlog/evidence'
in_chroot apt-get remove -y -q alga-issuer >>"$WORK/apt.log" 2>&1 || die "apt-get remove failed"
in_chroot test -s /var/lib/alga-license/issuer/signlog/evidence || die "remove deleted the signing log"
in_chroot test -s /etc/alga-license/issuer.toml || die "remove deleted the issuer's config"
in_chroot apt-get purge -y -q alga-issuer >>"$WORK/apt.log" 2>&1 || die "apt-get purge failed"
in_chroot test ! -e /var/lib/alga-license/issuer || die "purge left /var/lib/alga-license/issuer"
in_chroot test ! -e /etc/alga-license/issuer.toml || die "purge left /etc/alga-license/issuer.toml"
info "remove kept the signing log and the config; purge deleted both"
say "dist check: passed"
