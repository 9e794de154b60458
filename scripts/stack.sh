#!/usr/bin/env bash
# scripts/stack.sh: the local dev/test stack of alga-license (CONTRACT.md §8).
#
# Everything lives in .dev/ (gitignored), servers listen on 127.0.0.1 only, and every
# subcommand is idempotent: what is already there and healthy is reused.
#
#   deps            install missing Debian packages, build alga-dev-s3 (devtools/s3)
#   build           cargo build --workspace --bins
#   infra           deps + PKI, Postgres, SoftHSM2 conf/PINs, SMTP sink, S3, configs, .dev/env
#   services        token init, keys init, issuer, gateway migrate + serve (needs build)
#   up              deps + build + infra + services (ALGA_UP_SERVICES=0 skips services)
#   down            stop gateway, issuer, SMTP, S3, Postgres (keeps data)
#   clean-dev       down, then remove .dev/ entirely
#   test            up, then cargo test --workspace with .dev/env exported
#   demo            up, then walk the journey (scripts/demo.sh) ending in a summary table
#   status          show what is running
#   pg-start | pg-stop | smtp-start | smtp-stop | s3-start | s3-stop
#   issuer-start | issuer-stop | gateway-start | gateway-stop
#   env             rewrite .dev/env
#
# Secrets (PINs, passwords, S3 secret) are random, stored in .dev/secrets/ (0600) and
# passed to programs as files, environment or stdin, never on argv (the S3 server,
# alga-dev-s3 from devtools/s3, reads its keys from .dev/secrets/s3-credentials).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEV="$ROOT/.dev"
PKI="$DEV/pki"
SECRETS="$DEV/secrets"
RUN="$DEV/run"
LOGS="$DEV/logs"
MAIL_DIR="$DEV/mail"
S3_ROOT="$DEV/s3"
HSM_DIR="$DEV/softhsm"

# Ports: the environment wins, then the ports this .dev/ was last brought up with
# (.dev/ports), then the defaults.
SAVED_PG_PORT="" SAVED_SMTP_PORT="" SAVED_S3_PORT="" SAVED_GATEWAY_PORT="" SAVED_ISSUER_PORT=""
if [ -f "$DEV/ports" ]; then
    while IFS='=' read -r _k _v; do
        case "$_k" in
            PG_PORT|SMTP_PORT|S3_PORT|GATEWAY_PORT|ISSUER_PORT)
                [[ "$_v" =~ ^[0-9]+$ ]] && printf -v "SAVED_$_k" '%s' "$_v" ;;
        esac
    done <"$DEV/ports"
fi
PG_PORT="${ALGA_PG_PORT:-${SAVED_PG_PORT:-55432}}"
SMTP_PORT="${ALGA_SMTP_PORT:-${SAVED_SMTP_PORT:-2525}}"
S3_PORT="${ALGA_S3_PORT:-${SAVED_S3_PORT:-9000}}"
GATEWAY_PORT="${ALGA_GATEWAY_PORT:-${SAVED_GATEWAY_PORT:-8443}}"
ISSUER_PORT="${ALGA_ISSUER_PORT:-${SAVED_ISSUER_PORT:-9443}}"

TRUST_DOMAIN="alga.test"
HSM_TOKEN_LABEL="alga-dev"
S3_BUCKET="alga-iso"
S3_KEY="appliance/alga-appliance.iso"
S3_REGION="us-east-1"
PG_DB="alga"
SYS_PYTHON="/usr/bin/python3"   # Debian's python, the one with aiosmtpd

if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
        /*) BIN_DIR="$CARGO_TARGET_DIR/debug" ;;
        *) BIN_DIR="$ROOT/$CARGO_TARGET_DIR/debug" ;;
    esac
else
    BIN_DIR="$ROOT/target/debug"
fi

DEB_PACKAGES=(softhsm2 opensc postgresql python3-aiosmtpd python3-venv openssl nginx apache2-utils curl gettext-base jq)
# The HA topology (scripts/ha.sh, make ha-up; R23 runs in make test): Debian's own.
DEB_PACKAGES+=(patroni python3-etcd etcd-server etcd-client haproxy pgbouncer)

# ---------------------------------------------------------------------------- helpers

say()  { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

tail_log() {
    local f="$1"
    if [ -f "$f" ]; then
        printf -- '---- last 40 lines of %s ----\n' "$f" >&2
        tail -n 40 "$f" >&2 || true
        printf -- '---- end of %s ----\n' "$f" >&2
    else
        printf -- '(no log at %s)\n' "$f" >&2
    fi
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Serialize stack changes (several engineers may run make up in the same tree).
# Daemons are started with fd 9 closed so they never hold the lock.
take_lock() {
    [ -n "${ALGA_STACK_LOCKED:-}" ] && return 0
    mkdir -p "$DEV"
    exec 9>"$DEV/.lock"
    if ! flock -n 9; then
        say "waiting for another stack.sh in this tree to finish (lock $DEV/.lock)"
        flock -w 1800 9 || die "could not take $DEV/.lock within 30 minutes"
    fi
    ALGA_STACK_LOCKED=1
}

release_lock() {
    exec 9>&- || true
    unset ALGA_STACK_LOCKED
}

ensure_dirs() {
    mkdir -p "$DEV" "$PKI" "$RUN" "$LOGS" "$MAIL_DIR" "$S3_ROOT" "$HSM_DIR/tokens" "$DEV/issuer-log"
    mkdir -p -m 0700 "$SECRETS"
    chmod 0755 "$DEV"
    chmod 0700 "$SECRETS" "$HSM_DIR/tokens"
    printf 'PG_PORT=%s\nSMTP_PORT=%s\nS3_PORT=%s\nGATEWAY_PORT=%s\nISSUER_PORT=%s\n' \
        "$PG_PORT" "$SMTP_PORT" "$S3_PORT" "$GATEWAY_PORT" "$ISSUER_PORT" >"$DEV/ports"
}

# Random secret written straight to a 0600 file (hex, no trailing newline); kept if present.
gen_secret() {
    local f="$1" nbytes="${2:-24}"
    [ -s "$f" ] && { chmod 0600 "$f"; return 0; }
    ( umask 077; openssl rand -hex "$nbytes" | tr -d '\n' >"$f.tmp" && mv -f "$f.tmp" "$f" )
    chmod 0600 "$f"
    info "generated $f"
}

# Install $2 (a temp file) as $1 only if the content differs (keeps mtimes stable).
install_if_changed() {
    local dest="$1" tmp="$2" mode="${3:-0644}"
    chmod "$mode" "$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$dest"
    return 0
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid of service $1 if its pidfile points at a live process whose argv contains $2.
svc_pid() {
    local f="$RUN/$1.pid" pid
    [ -s "$f" ] || return 1
    pid="$(<"$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    # a zombie has an empty cmdline, so it counts as dead
    local cmdline
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ "$cmdline" == *"$2"* ]] || return 1
    printf '%s\n' "$pid"
}

# start_daemon NAME MARKER LOGFILE CMD... : detached (own session), fd 9 closed, pid in
# .dev/run; returns once the child has exec'd (its argv contains MARKER) or has died.
start_daemon() {
    local name="$1" marker="$2" log="$3" pid i; shift 3
    printf '\n===== %s: starting %s =====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" >>"$log"
    setsid "$@" >>"$log" 2>&1 </dev/null 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$RUN/$name.pid"
    for ((i = 0; i < 100; i++)); do
        [ -r "/proc/$pid/cmdline" ] || return 0
        svc_pid "$name" "$marker" >/dev/null && return 0
        sleep 0.05
    done
}

# stop_daemon NAME MARKER : TERM, wait up to 15 s, then KILL.
stop_daemon() {
    local name="$1" marker="$2" pid i
    if ! pid="$(svc_pid "$name" "$marker")"; then
        rm -f "$RUN/$name.pid"
        info "$name: not running"
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        svc_pid "$name" "$marker" >/dev/null || break
        sleep 0.1
    done
    if svc_pid "$name" "$marker" >/dev/null; then
        warn "$name did not stop within 15 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$RUN/$name.pid"
}

# daemon_alive NAME : the recorded pid is a live process (not a zombie), whatever its argv
# shows yet; a slow exec is still a start-up, not a death.
daemon_alive() {
    local pid state
    pid="$(cat "$RUN/$1.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(cat "/proc/$pid/stat" 2>/dev/null || true)"
    state="${state##*) }"   # the fields after "(comm) "; comm itself may hold spaces
    state="${state%% *}"
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# daemon_exit NAME : how a daemon this shell started ended (reaps it), for error messages.
daemon_exit() {
    local f="$RUN/$1.pid" pid rc=0
    pid="$(cat "$f" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || { printf 'no pid recorded'; return 0; }
    wait "$pid" 2>/dev/null || rc=$?
    if [ "$rc" -eq 127 ]; then
        printf 'pid %s, exit status unknown' "$pid"
    elif [ "$rc" -gt 128 ]; then
        printf 'pid %s, killed by signal %s (%s)' "$pid" "$((rc - 128))" "$(kill -l "$((rc - 128))" 2>/dev/null || echo '?')"
    else
        printf 'pid %s, exit status %s' "$pid" "$rc"
    fi
}

# wait_port NAME MARKER PORT LOG [SECONDS]
wait_port() {
    local name="$1" marker="$2" port="$3" log="$4" secs="${5:-20}" i
    for ((i = 0; i < secs * 10; i++)); do
        if ! svc_pid "$name" "$marker" >/dev/null && ! daemon_alive "$name"; then
            tail_log "$log"
            die "$name exited during start-up ($(daemon_exit "$name"); log: $log)"
        fi
        port_open 127.0.0.1 "$port" && return 0
        sleep 0.1
    done
    tail_log "$log"
    die "$name is not listening on 127.0.0.1:$port after ${secs} s (log: $log)"
}

# Refuse to start when something else already holds the port.
check_port_free() {
    local name="$1" port="$2" var="$3"
    if port_open 127.0.0.1 "$port"; then
        die "port 127.0.0.1:$port (for $name) is already taken by another process; stop it or set $var"
    fi
}

# ------------------------------------------------------------------------------- deps

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

run_privileged() {
    if is_root; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

install_debs() {
    local missing=() p created_policy=0
    for p in "${DEB_PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        info "Debian packages: all present (${DEB_PACKAGES[*]})"
        return 0
    fi
    say "installing missing Debian packages: ${missing[*]}"
    # Keep the packages' own services (a system Postgres on 5432, nginx on *:80) from
    # starting: this stack runs its own servers, on loopback only.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        run_privileged sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        created_policy=1
    fi
    local rc=0
    run_privileged env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
    if [ "$rc" -eq 0 ]; then
        run_privileged env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    fi
    if [ "$created_policy" -eq 1 ]; then
        run_privileged rm -f /usr/sbin/policy-rc.d
    fi
    [ "$rc" -eq 0 ] || die "apt-get failed (rc $rc)"
}

# The S3 server is our own alga-dev-s3 (devtools/s3: s3s and s3s-fs 0.14.1 as libraries,
# keys from a file, never on argv), its own cargo workspace so `cargo test` never builds
# it. It is installed into its own cargo install root with its committed Cargo.lock,
# checked by its --version and by the hash of the devtools/s3 tree it was built from
# (stored beside it), so a stale build, or an alga-dev-s3 elsewhere on PATH, is never the
# one started.
TOOLS_ROOT="${ALGA_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/alga-license/tools}"
DEV_S3_SRC="$ROOT/devtools/s3"

dev_s3_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$DEV_S3_SRC/Cargo.toml" | head -n 1; }

# sha256 over the path and content of every file of devtools/s3 but its target/
dev_s3_source_hash() {
    (cd "$DEV_S3_SRC" && find . -path ./target -prune -o -type f -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

dev_s3_bin() {
    local b="$TOOLS_ROOT/bin/alga-dev-s3" v
    [ -x "$b" ] && [ -s "$b" ] || return 1
    v="$("$b" --version 2>/dev/null </dev/null || true)"
    [ "$v" = "alga-dev-s3 $(dev_s3_version)" ] || return 1
    [ "$(cat "$b.source-sha256" 2>/dev/null || true)" = "$(dev_s3_source_hash)" ] || return 1
    printf '%s\n' "$b"
}

install_dev_s3() {
    local version hash b="$TOOLS_ROOT/bin/alga-dev-s3"
    version="$(dev_s3_version)"
    [ -n "$version" ] || die "no version in $DEV_S3_SRC/Cargo.toml"
    if dev_s3_bin >/dev/null; then
        info "alga-dev-s3 $version: present ($b, built from the current devtools/s3)"
        return 0
    fi
    # hashed before the build: a change made during it shows at the next check
    hash="$(dev_s3_source_hash)"
    say "building alga-dev-s3 $version from devtools/s3 into $TOOLS_ROOT (cargo install --locked; about 2 minutes the first time)"
    mkdir -p "$TOOLS_ROOT"
    rm -f "$b.source-sha256"
    (cd "$ROOT" && cargo install --path "$DEV_S3_SRC" --root "$TOOLS_ROOT" --locked --force \
        --target-dir "$TOOLS_ROOT/build/alga-dev-s3") || die "cargo install --path devtools/s3 failed"
    printf '%s\n' "$hash" >"$b.source-sha256.tmp"
    mv -f "$b.source-sha256.tmp" "$b.source-sha256"
    dev_s3_bin >/dev/null \
        || die "alga-dev-s3 installed in $TOOLS_ROOT/bin but it does not answer --version with 'alga-dev-s3 $version'"
}

cmd_deps() {
    [ -n "${DEPS_CHECKED:-}" ] && return 0
    say "checking dependencies"
    install_debs
    install_dev_s3
    bash "$ROOT/scripts/schemathesis.sh" --install-only
    DEPS_CHECKED=1
}

cmd_build() {
    say "building the workspace binaries (cargo build --workspace --bins)"
    (cd "$ROOT" && cargo build --workspace --bins)
    info "binaries in $BIN_DIR"
}

# -------------------------------------------------------------------------------- PKI

ca_ok() {
    [ -s "$PKI/service-ca.key" ] && [ -s "$PKI/service-ca.crt" ] || return 1
    openssl x509 -in "$PKI/service-ca.crt" -noout -checkend $((90 * 86400)) >/dev/null 2>&1 || return 1
    key_matches "$PKI/service-ca.crt" "$PKI/service-ca.key"
}

key_matches() {
    local a b
    a="$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null)" || return 1
    b="$(openssl pkey -in "$2" -pubout 2>/dev/null)" || return 1
    [ -n "$a" ] && [ "$a" = "$b" ]
}

gen_ec_key() {
    local f="$1"
    ( umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$f.tmp" 2>/dev/null && mv -f "$f.tmp" "$f" )
    chmod 0600 "$f"
}

pki_ca() {
    local cnf="$PKI/ext/service-ca.cnf"
    mkdir -p "$PKI/ext"
    cat >"$cnf.tmp" <<'EOF'
# dev service CA (generated by scripts/stack.sh)
[req]
distinguished_name = dn
prompt = no
[dn]
CN = alga-license dev service CA
O = alga-license (dev only)
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    install_if_changed "$cnf" "$cnf.tmp" || true
    if ca_ok; then
        info "dev service CA: reusing $PKI/service-ca.crt"
        return 0
    fi
    say "creating the dev service CA (EC P-256, 10 years)"
    gen_ec_key "$PKI/service-ca.key"
    openssl req -x509 -new -sha256 -days 3650 -key "$PKI/service-ca.key" \
        -config "$cnf" -extensions v3_ca -out "$PKI/service-ca.crt.tmp"
    mv -f "$PKI/service-ca.crt.tmp" "$PKI/service-ca.crt"
    chmod 0644 "$PKI/service-ca.crt"
    # every leaf must be re-issued under the new CA
    rm -f "$PKI"/*.leaf-ok
}

# pki_leaf NAME CN EKU SAN
pki_leaf() {
    local name="$1" cn="$2" eku="$3" san="$4"
    local cnf="$PKI/ext/$name.cnf" key="$PKI/$name.key" crt="$PKI/$name.crt"
    cat >"$cnf.tmp" <<EOF
# $name (generated by scripts/stack.sh)
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $cn
O = alga-license (dev only)
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $eku
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    local changed=0
    install_if_changed "$cnf" "$cnf.tmp" && changed=1
    if [ "$changed" -eq 0 ] && [ -s "$key" ] && [ -s "$crt" ] \
        && openssl verify -CAfile "$PKI/service-ca.crt" "$crt" >/dev/null 2>&1 \
        && openssl x509 -in "$crt" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 \
        && key_matches "$crt" "$key"; then
        info "$name: reusing $crt"
        return 0
    fi
    info "$name: issuing ($eku, $san)"
    [ -s "$key" ] || gen_ec_key "$key"
    openssl req -new -sha256 -key "$key" -config "$cnf" -out "$PKI/$name.csr"
    openssl x509 -req -sha256 -days 825 -in "$PKI/$name.csr" \
        -CA "$PKI/service-ca.crt" -CAkey "$PKI/service-ca.key" \
        -extfile "$cnf" -extensions leaf -out "$crt.tmp" 2>/dev/null
    rm -f "$PKI/$name.csr"
    mv -f "$crt.tmp" "$crt"
    chmod 0644 "$crt"
    chmod 0600 "$key"
    openssl verify -CAfile "$PKI/service-ca.crt" "$crt" >/dev/null || die "$crt does not verify under the dev CA"
}

cmd_pki() {
    say "dev PKI in $PKI (trust domain $TRUST_DOMAIN)"
    ensure_dirs
    pki_ca
    pki_leaf gateway-server "alga dev gateway server" serverAuth "DNS:localhost, IP:127.0.0.1"
    pki_leaf issuer-server "alga dev issuer server" serverAuth "DNS:localhost, IP:127.0.0.1"
    pki_leaf gateway-client "alga dev gateway client" clientAuth "URI:spiffe://$TRUST_DOMAIN/service/gateway"
    pki_leaf store "alga dev nm-store client" clientAuth "URI:spiffe://$TRUST_DOMAIN/service/nm-store"
    pki_leaf auditor "alga dev auditor client" clientAuth "URI:spiffe://$TRUST_DOMAIN/service/auditor"
    rm -f "$PKI"/*.srl
}

# --------------------------------------------------------------------------- Postgres

pg_bin_dir() {
    if [ -n "${ALGA_PG_BIN:-}" ] && [ -x "$ALGA_PG_BIN/pg_ctl" ]; then printf '%s\n' "$ALGA_PG_BIN"; return 0; fi
    if [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then printf '%s\n' /usr/lib/postgresql/15/bin; return 0; fi
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && { printf '%s\n' "$d"; return 0; }
    printf '%s\n' /usr/lib/postgresql/15/bin
}
PG_BIN="$(pg_bin_dir)"

# The OS user that owns and runs the private cluster (initdb refuses root).
pg_os_user() { if is_root; then printf 'postgres\n'; else id -un; fi; }

as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

ensure_pg_os_user() {
    is_root || return 0
    id -u postgres >/dev/null 2>&1 && return 0
    say "creating the postgres system user"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
        --shell /usr/sbin/nologin postgres
}

hash_of_root() { printf '%s' "$ROOT" | sha256sum | cut -c1-12; }

# .dev/pg, or, when the postgres user cannot reach the repo (e.g. a clone under /root),
# a directory under /var/tmp that .dev/pg links to (set up only with the argument "create").
resolve_pg_root() {
    if [ -L "$DEV/pg" ]; then
        PG_ROOT="$(readlink -f "$DEV/pg")"
    elif [ -s "$DEV/pg/data/PG_VERSION" ] || ! is_root || [ "${1:-}" != create ]; then
        PG_ROOT="$DEV/pg"
    elif as_pg test -x "$DEV" 2>/dev/null; then
        PG_ROOT="$DEV/pg"
    else
        PG_ROOT="/var/tmp/alga-dev-pg-$(hash_of_root)"
        warn "user postgres cannot reach $DEV; the cluster lives in $PG_ROOT (linked from $DEV/pg)"
        mkdir -p "$PG_ROOT"
        rmdir "$DEV/pg" 2>/dev/null || true
        ln -sfn "$PG_ROOT" "$DEV/pg"
    fi
    PG_DATA="$PG_ROOT/data"
    PG_LOG="$PG_ROOT/log/postgres.log"
    PG_SOCK="$PG_ROOT/sock"
    # a unix socket path must stay under 108 bytes
    if [ "${#PG_SOCK}" -gt 80 ]; then
        PG_SOCK="/tmp/alga-dev-pgsock-$(hash_of_root)"
    fi
}

pg_prepare_dirs() {
    mkdir -p "$PG_ROOT" "$PG_DATA" "$PG_ROOT/log" "$PG_SOCK"
    if is_root; then
        chown postgres:postgres "$PG_ROOT" "$PG_DATA" "$PG_ROOT/log" "$PG_SOCK"
    fi
    chmod 0700 "$PG_ROOT" "$PG_DATA" "$PG_ROOT/log" "$PG_SOCK"
}

pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }

pg_initdb() {
    [ -s "$PG_DATA/PG_VERSION" ] && return 0
    say "initializing the private Postgres cluster in $PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >"$PG_ROOT/initdb.log.tmp" 2>&1 || {
        cat "$PG_ROOT/initdb.log.tmp" >&2
        die "initdb failed"
    }
    mv -f "$PG_ROOT/initdb.log.tmp" "$LOGS/pg-initdb.log"
    printf "\n# local dev stack settings, rewritten on every start by scripts/stack.sh\ninclude_if_exists = 'alga.conf'\n" \
        | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

pg_write_conf() {
    local osuser; osuser="$(pg_os_user)"
    as_pg tee "$PG_DATA/alga.conf" >/dev/null <<EOF
# managed by scripts/stack.sh; rewritten on every start
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
unix_socket_permissions = 0700
max_connections = 300
# Room for the load bench's million-tenant registry (about 1.1 GB) to stay in memory.
shared_buffers = 1GB
password_encryption = 'scram-sha-256'
fsync = on
log_statement = 'none'
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
    as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<EOF
# managed by scripts/stack.sh
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer map=alga
host    all       all       127.0.0.1/32   scram-sha-256
EOF
    as_pg tee "$PG_DATA/pg_ident.conf" >/dev/null <<EOF
# managed by scripts/stack.sh
# MAPNAME  SYSTEM-USERNAME  PG-USERNAME
alga       $osuser          postgres
EOF
}

pg_psql_admin() {
    # SQL on stdin, over the unix socket, as the bootstrap superuser (peer auth)
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "${1:-postgres}" -f -
}

pg_sql_literal() { local s="$1"; printf "'%s'" "${s//\'/\'\'}"; }

pg_bootstrap() {
    info "roles alga_admin (superuser), alga_migrator (owns database $PG_DB), alga_gateway"
    local admin mig gw
    admin="$(<"$SECRETS/alga_admin.pw")"
    mig="$(<"$SECRETS/alga_migrator.pw")"
    gw="$(<"$SECRETS/alga_gateway.pw")"
    # Passwords go on psql's stdin; the session never logs statements.
    {
        cat <<'EOF'
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
SET log_min_duration_statement = -1;
SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY['alga_admin','alga_migrator','alga_gateway']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
EOF
        printf 'ALTER ROLE alga_admin WITH SUPERUSER LOGIN PASSWORD %s;\n' "$(pg_sql_literal "$admin")"
        printf 'ALTER ROLE alga_migrator WITH NOSUPERUSER NOCREATEDB NOCREATEROLE LOGIN PASSWORD %s;\n' "$(pg_sql_literal "$mig")"
        printf 'ALTER ROLE alga_gateway WITH NOSUPERUSER NOCREATEDB NOCREATEROLE LOGIN PASSWORD %s;\n' "$(pg_sql_literal "$gw")"
        cat <<EOF
SELECT 'CREATE DATABASE $PG_DB OWNER alga_migrator' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
ALTER DATABASE $PG_DB OWNER TO alga_migrator;
REVOKE ALL ON DATABASE $PG_DB FROM PUBLIC;
GRANT CONNECT ON DATABASE $PG_DB TO alga_gateway;
\connect $PG_DB
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
GRANT USAGE ON SCHEMA public TO alga_gateway;
EOF
    } | pg_psql_admin postgres || { tail_log "$PG_LOG"; die "could not create the Postgres roles and database"; }
}

cmd_pg_start() {
    ensure_dirs
    ensure_pg_os_user
    resolve_pg_root create
    pg_prepare_dirs
    gen_secret "$SECRETS/alga_admin.pw"
    gen_secret "$SECRETS/alga_migrator.pw"
    gen_secret "$SECRETS/alga_gateway.pw"
    pg_initdb
    pg_write_conf
    if pg_running; then
        local running_port
        running_port="$(sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
        if [ "$running_port" = "$PG_PORT" ]; then
            say "Postgres already running on 127.0.0.1:$PG_PORT (reusing)"
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" reload >/dev/null
        else
            say "Postgres running on port $running_port, restarting it on 127.0.0.1:$PG_PORT"
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
        fi
    fi
    if ! pg_running; then
        check_port_free Postgres "$PG_PORT" ALGA_PG_PORT
        say "starting Postgres on 127.0.0.1:$PG_PORT (data $PG_DATA, log $PG_LOG)"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null 9>&- || {
            tail_log "$PG_LOG"
            die "Postgres did not start"
        }
    fi
    pg_bootstrap
    pg_check
}

# Connect over TCP with each role's password (passed in the environment).
pg_check() {
    local role
    for role in alga_admin alga_migrator alga_gateway; do
        if ! PGPASSWORD="$(<"$SECRETS/$role.pw")" PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At \
            -h 127.0.0.1 -p "$PG_PORT" -U "$role" -d "$PG_DB" -c 'SELECT 1' >/dev/null; then
            tail_log "$PG_LOG"
            die "cannot connect to Postgres as $role on 127.0.0.1:$PG_PORT"
        fi
    done
    info "Postgres: alga_admin, alga_migrator and alga_gateway can log in to $PG_DB over 127.0.0.1:$PG_PORT"
}

cmd_pg_stop() {
    [ -e "$DEV/pg" ] || { info "Postgres: no cluster"; return 0; }
    resolve_pg_root
    if [ -s "$PG_DATA/PG_VERSION" ] && pg_running; then
        say "stopping Postgres"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null || {
            tail_log "$PG_LOG"
            die "pg_ctl stop failed"
        }
    else
        info "Postgres: not running"
    fi
}

# ---------------------------------------------------------------------------- SoftHSM

hsm_module() {
    if [ -n "${ALGA_HSM_MODULE:-}" ] && [ -f "$ALGA_HSM_MODULE" ]; then printf '%s\n' "$ALGA_HSM_MODULE"; return 0; fi
    local c
    for c in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
        /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
        [ -f "$c" ] && { printf '%s\n' "$c"; return 0; }
    done
    c="$(dpkg -L softhsm2 2>/dev/null | grep '/libsofthsm2\.so$' | head -n 1 || true)"
    [ -n "$c" ] && { printf '%s\n' "$c"; return 0; }
    printf '%s\n' /usr/lib/softhsm/libsofthsm2.so
}

cmd_hsm() {
    say "SoftHSM2 configuration in $HSM_DIR (token label $HSM_TOKEN_LABEL)"
    ensure_dirs
    local conf="$HSM_DIR/softhsm2.conf"
    cat >"$conf.tmp" <<EOF
# SoftHSM2 configuration of the local dev stack (generated by scripts/stack.sh)
directories.tokendir = $HSM_DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
    install_if_changed "$conf" "$conf.tmp" 0644 || true
    gen_secret "$SECRETS/hsm-pin" 16
    gen_secret "$SECRETS/hsm-so-pin" 16
    local module; module="$(hsm_module)"
    [ -f "$module" ] || die "SoftHSM2 module not found ($module); is softhsm2 installed?"
    info "module $module; the token is created by alga-issuer token init (make up)"
}

# ------------------------------------------------------------------------------- SMTP

smtp_marker="smtp_sink.py"

cmd_smtp_start() {
    ensure_dirs
    local pid log="$LOGS/smtp.log"
    if pid="$(svc_pid smtp "$smtp_marker")"; then
        if port_open 127.0.0.1 "$SMTP_PORT"; then
            say "SMTP sink already running on 127.0.0.1:$SMTP_PORT (pid $pid, reusing)"
            return 0
        fi
        stop_daemon smtp "$smtp_marker"
    fi
    [ -x "$SYS_PYTHON" ] || die "$SYS_PYTHON not found (install python3-aiosmtpd)"
    check_port_free "SMTP sink" "$SMTP_PORT" ALGA_SMTP_PORT
    say "starting the SMTP sink on 127.0.0.1:$SMTP_PORT (mail in $MAIL_DIR, log $log)"
    start_daemon smtp "$smtp_marker" "$log" "$SYS_PYTHON" -B "$ROOT/scripts/smtp_sink.py" \
        --host 127.0.0.1 --port "$SMTP_PORT" --maildir "$MAIL_DIR"
    wait_port smtp "$smtp_marker" "$SMTP_PORT" "$log" 20
}

cmd_smtp_stop() { stop_daemon smtp "$smtp_marker"; }

# --------------------------------------------------------------------------------- S3

s3_marker="alga-dev-s3"
# What the stack ran before devtools/s3 existed (s3s-fs), to stop it on the way.
s3_legacy_marker="s3s-fs"

s3_read_credentials() {
    local f="$SECRETS/s3-credentials" k v
    S3_ACCESS_KEY=""; S3_SECRET_KEY=""
    while IFS='=' read -r k v; do
        case "$k" in
            access_key_id) S3_ACCESS_KEY="$v" ;;
            secret_access_key) S3_SECRET_KEY="$v" ;;
        esac
    done <"$f"
    [ -n "$S3_ACCESS_KEY" ] && [ -n "$S3_SECRET_KEY" ] || die "$f must hold access_key_id=... and secret_access_key=... lines"
}

s3_credentials() {
    local f="$SECRETS/s3-credentials"
    [ -s "$f" ] && { chmod 0600 "$f"; return 0; }
    ( umask 077
      { printf 'access_key_id=alga-dev-%s\n' "$(openssl rand -hex 8)"
        printf 'secret_access_key=%s\n' "$(openssl rand -hex 20)"; } >"$f.tmp"
      mv -f "$f.tmp" "$f" )
    chmod 0600 "$f"
    info "generated $f"
}

s3_seed() {
    local obj="$S3_ROOT/$S3_BUCKET/$S3_KEY"
    mkdir -p "$(dirname "$obj")"
    [ -s "$obj" ] && return 0
    info "seeding s3://$S3_BUCKET/$S3_KEY (deterministic 512 KiB)"
    "$SYS_PYTHON" -B -c '
import hashlib, sys
out = bytearray(b"ALGA-DEV-APPLIANCE-ISO v1 (not a real ISO)\n")
i = 0
while len(out) < 512 * 1024:
    out += hashlib.sha256(b"alga-dev-iso:%d" % i).digest()
    i += 1
sys.stdout.buffer.write(bytes(out[: 512 * 1024]))
' >"$obj.tmp"
    mv -f "$obj.tmp" "$obj"
}

s3_verify() {
    local url="http://127.0.0.1:$S3_PORT/$S3_BUCKET/$S3_KEY" code
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$url" || true)"
    [ "$code" = "403" ] || { tail_log "$LOGS/s3.log"; die "unsigned GET $url answered $code, expected 403"; }
    s3_read_credentials
    # credentials go to curl through a config on stdin, not argv
    code="$(printf 'user = "%s:%s"\n' "$S3_ACCESS_KEY" "$S3_SECRET_KEY" \
        | curl -sS -K - --aws-sigv4 "aws:amz:$S3_REGION:s3" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -o /dev/null -w '%{http_code}' --max-time 10 "$url" || true)"
    [ "$code" = "200" ] || { tail_log "$LOGS/s3.log"; die "signed GET $url answered $code, expected 200"; }
    info "S3: unsigned GET refused (403), signed GET allowed (200)"
}

# The processes whose command line shows the S3 secret key (none: alga-dev-s3 reads it
# from its file). The key reaches grep through a pipe, never its argv.
s3_secret_shown_by() {
    s3_read_credentials
    printf '%s\n' "$S3_SECRET_KEY" | grep -l -a -F -f - /proc/[0-9]*/cmdline 2>/dev/null \
        | sed -n 's|^/proc/\([0-9]*\)/cmdline$|\1|p' || true
}

# An S3 server started by a stack.sh from before devtools/s3 (s3s-fs) would hold the
# port: stop it.
s3_stop_legacy() {
    svc_pid s3 "$s3_legacy_marker" >/dev/null || return 0
    say "stopping the S3 server of an earlier stack.sh (s3s-fs), replaced by alga-dev-s3"
    stop_daemon s3 "$s3_legacy_marker"
}

cmd_s3_start() {
    ensure_dirs
    s3_credentials
    s3_seed
    s3_stop_legacy
    local pid log="$LOGS/s3.log" bin shown
    bin="$(dev_s3_bin)" || die "alga-dev-s3 is not installed in $TOOLS_ROOT or not built from the current devtools/s3; run make deps"
    if pid="$(svc_pid s3 "$s3_marker")"; then
        if [ "$bin" -nt "$RUN/s3.pid" ]; then
            info "S3: alga-dev-s3 rebuilt since start"
        elif port_open 127.0.0.1 "$S3_PORT" && [ -z "$(s3_secret_shown_by)" ]; then
            say "S3 (alga-dev-s3) already running on 127.0.0.1:$S3_PORT (pid $pid, reusing)"
            s3_verify
            return 0
        fi
        stop_daemon s3 "$s3_marker"
    fi
    check_port_free "S3 (alga-dev-s3)" "$S3_PORT" ALGA_S3_PORT
    say "starting S3 (alga-dev-s3) on 127.0.0.1:$S3_PORT serving $S3_ROOT (log $log)"
    # The keys reach it as the 0600 file it reads itself, never as options or through
    # this shell's environment.
    RUST_LOG="${ALGA_S3_LOG:-info}" start_daemon s3 "$s3_marker" "$log" "$bin" \
        --host 127.0.0.1 --port "$S3_PORT" --root "$S3_ROOT" \
        --credentials-file "$SECRETS/s3-credentials"
    wait_port s3 "$s3_marker" "$S3_PORT" "$log" 20
    shown="$(s3_secret_shown_by)"
    [ -z "$shown" ] || { stop_daemon s3 "$s3_marker"; die "the S3 secret key is on the command line of pid(s) $shown"; }
    info "S3: the secret key is on no process's command line"
    s3_verify
}

cmd_s3_stop() {
    s3_stop_legacy
    stop_daemon s3 "$s3_marker"
}

# ---------------------------------------------------------------------------- configs

render_template() {
    local src="$1" dest="$2"
    [ -f "$src" ] || die "template $src missing"
    ALGA_DEV_DIR="$DEV" ALGA_PG_PORT="$PG_PORT" ALGA_SMTP_PORT="$SMTP_PORT" ALGA_S3_PORT="$S3_PORT" \
    ALGA_GATEWAY_PORT="$GATEWAY_PORT" ALGA_ISSUER_PORT="$ISSUER_PORT" \
    ALGA_HSM_MODULE="$(hsm_module)" ALGA_HSM_TOKEN_LABEL="$HSM_TOKEN_LABEL" \
    ALGA_S3_BUCKET="$S3_BUCKET" ALGA_S3_KEY="$S3_KEY" ALGA_S3_REGION="$S3_REGION" ALGA_PG_DB="$PG_DB" \
        envsubst '${ALGA_DEV_DIR} ${ALGA_PG_PORT} ${ALGA_SMTP_PORT} ${ALGA_S3_PORT} ${ALGA_GATEWAY_PORT} ${ALGA_ISSUER_PORT} ${ALGA_HSM_MODULE} ${ALGA_HSM_TOKEN_LABEL} ${ALGA_S3_BUCKET} ${ALGA_S3_KEY} ${ALGA_S3_REGION} ${ALGA_PG_DB}' \
        <"$src" >"$dest.tmp"
    if install_if_changed "$dest" "$dest.tmp" 0644; then info "wrote $dest"; else info "$dest unchanged"; fi
}

cmd_configs() {
    say "writing configs (.dev/issuer.toml, .dev/gateway.toml, .dev/policy.toml)"
    ensure_dirs
    render_template "$ROOT/config/dev/issuer.toml.in" "$DEV/issuer.toml"
    render_template "$ROOT/config/dev/gateway.toml.in" "$DEV/gateway.toml"
    local sample="$ROOT/config/policy.sample.toml"
    if [ -f "$sample" ]; then
        cp "$sample" "$DEV/policy.toml.tmp"
        if install_if_changed "$DEV/policy.toml" "$DEV/policy.toml.tmp" 0644; then
            info "wrote $DEV/policy.toml from config/policy.sample.toml"
        else
            info "$DEV/policy.toml unchanged"
        fi
    else
        warn "config/policy.sample.toml does not exist yet: $DEV/policy.toml not written"
    fi
}

# -------------------------------------------------------------------------------- env

env_line() { local v="$2"; printf "export %s='%s'\n" "$1" "${v//\'/\'\\\'\'}"; }

cmd_env() {
    ensure_dirs
    local admin mig gw sha=""
    admin="$(<"$SECRETS/alga_admin.pw")"
    mig="$(<"$SECRETS/alga_migrator.pw")"
    gw="$(<"$SECRETS/alga_gateway.pw")"
    [ -s "$S3_ROOT/$S3_BUCKET/$S3_KEY" ] && sha="$(sha256sum <"$S3_ROOT/$S3_BUCKET/$S3_KEY" | cut -d' ' -f1)"
    local pgdata="$DEV/pg/data"
    [ -L "$DEV/pg" ] && pgdata="$(readlink -f "$DEV/pg")/data"
    local tmp; tmp="$(mktemp "$DEV/.env.XXXXXX")"
    {
        echo "# alga-license local dev stack: generated by scripts/stack.sh; dev-only passwords inside."
        echo "# Use:  set -a; . .dev/env; set +a"
        env_line ALGA_DEV_DIR "$DEV"
        env_line ALGA_BIN_DIR "$BIN_DIR"
        env_line ALGA_STACK_SCRIPT "$ROOT/scripts/stack.sh"
        env_line ALGA_GATEWAY_URL "https://localhost:$GATEWAY_PORT"
        env_line ALGA_ISSUER_URL "https://localhost:$ISSUER_PORT"
        env_line ALGA_CA_BUNDLE "$PKI/service-ca.crt"
        env_line ALGA_TRUST_ROOT "$PKI/trust-root.pem"
        env_line ALGA_STORE_CERT "$PKI/store.crt"
        env_line ALGA_STORE_KEY "$PKI/store.key"
        env_line ALGA_AUDITOR_CERT "$PKI/auditor.crt"
        env_line ALGA_AUDITOR_KEY "$PKI/auditor.key"
        env_line ALGA_GATEWAY_CLIENT_CERT "$PKI/gateway-client.crt"
        env_line ALGA_GATEWAY_CLIENT_KEY "$PKI/gateway-client.key"
        env_line ALGA_ISSUER_SERVER_CERT "$PKI/issuer-server.crt"
        env_line ALGA_ISSUER_SERVER_KEY "$PKI/issuer-server.key"
        env_line ALGA_GATEWAY_SERVER_CERT "$PKI/gateway-server.crt"
        env_line ALGA_GATEWAY_SERVER_KEY "$PKI/gateway-server.key"
        env_line ALGA_MAIL_DIR "$MAIL_DIR"
        env_line ALGA_SMTP_PORT "$SMTP_PORT"
        env_line DATABASE_URL "postgres://alga_admin:$admin@127.0.0.1:$PG_PORT/$PG_DB"
        env_line ALGA_MIGRATOR_DATABASE_URL "postgres://alga_migrator:$mig@127.0.0.1:$PG_PORT/$PG_DB"
        env_line ALGA_GATEWAY_DATABASE_URL "postgres://alga_gateway:$gw@127.0.0.1:$PG_PORT/$PG_DB"
        env_line ALGA_PG_BIN "$PG_BIN"
        env_line ALGA_PG_DATA "$pgdata"
        env_line ALGA_PG_PORT "$PG_PORT"
        env_line SOFTHSM2_CONF "$HSM_DIR/softhsm2.conf"
        env_line ALGA_HSM_MODULE "$(hsm_module)"
        env_line ALGA_HSM_TOKEN_LABEL "$HSM_TOKEN_LABEL"
        env_line ALGA_HSM_PIN_FILE "$SECRETS/hsm-pin"
        env_line ALGA_HSM_SO_PIN_FILE "$SECRETS/hsm-so-pin"
        env_line ALGA_POLICY "$DEV/policy.toml"
        env_line ALGA_ISSUER_CONFIG "$DEV/issuer.toml"
        env_line ALGA_GATEWAY_CONFIG "$DEV/gateway.toml"
        env_line ALGA_S3_ENDPOINT "http://127.0.0.1:$S3_PORT"
        env_line ALGA_DEV_S3_BIN "$(dev_s3_bin || true)"
        env_line ALGA_S3_REGION "$S3_REGION"
        env_line ALGA_S3_BUCKET "$S3_BUCKET"
        env_line ALGA_S3_KEY "$S3_KEY"
        env_line ALGA_S3_CREDENTIALS_FILE "$SECRETS/s3-credentials"
        env_line ALGA_S3_OBJECT_SHA256 "$sha"
    } >"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$DEV/env"
    info "wrote $DEV/env (mode 0600)"
}

# ------------------------------------------------------------------ issuer and gateway

need_bin() {
    local b="$BIN_DIR/$1"
    [ -x "$b" ] || die "$b not built yet (make build), or use ALGA_UP_SERVICES=0 make up / make infra"
    printf '%s\n' "$b"
}

# wait_https NAME MARKER PORT LOG URL [curl args...]
wait_https() {
    local name="$1" marker="$2" port="$3" log="$4" url="$5"; shift 5
    local i code=""
    for ((i = 0; i < 300; i++)); do
        if ! svc_pid "$name" "$marker" >/dev/null && ! daemon_alive "$name"; then
            tail_log "$log"
            die "$name exited during start-up ($(daemon_exit "$name"); log: $log)"
        fi
        code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 --resolve "localhost:$port:127.0.0.1" \
            --cacert "$PKI/service-ca.crt" "$@" "$url" 2>/dev/null || true)"
        [ "$code" = "200" ] && { info "$name: $url answers 200"; return 0; }
        sleep 0.1
    done
    tail_log "$log"
    die "$name: $url did not answer 200 within 30 s (last status '$code'; log: $log)"
}

# true if the service runs and neither its binary nor its config changed since it started
svc_current() {
    local name="$1" marker="$2" bin="$3" conf="$4" pidf="$RUN/$1.pid"
    svc_pid "$name" "$marker" >/dev/null || return 1
    [ "$bin" -nt "$pidf" ] && { info "$name: binary rebuilt since start"; return 1; }
    [ "$conf" -nt "$pidf" ] && { info "$name: config changed since start"; return 1; }
    [ -f "$DEV/policy.toml" ] && [ "$DEV/policy.toml" -nt "$pidf" ] && { info "$name: policy changed since start"; return 1; }
    return 0
}

cmd_issuer_start() {
    local bin log="$LOGS/issuer.log" conf="$DEV/issuer.toml"
    bin="$(need_bin alga-issuer)"
    [ -f "$conf" ] || die "$conf missing (make infra)"
    export SOFTHSM2_CONF="$HSM_DIR/softhsm2.conf"
    export RUST_LOG="${RUST_LOG:-info}"
    if svc_current issuer alga-issuer "$bin" "$conf"; then
        say "issuer already running (pid $(svc_pid issuer alga-issuer), reusing)"
    else
        stop_daemon issuer alga-issuer
        say "HSM token '$HSM_TOKEN_LABEL': alga-issuer token init"
        "$bin" token init --config "$conf" --so-pin-file "$SECRETS/hsm-so-pin" </dev/null 9>&- \
            || die "alga-issuer token init failed"
        say "HSM keys: alga-issuer keys init --if-missing"
        "$bin" keys init --config "$conf" --if-missing </dev/null 9>&- || die "alga-issuer keys init failed"
        check_port_free issuer "$ISSUER_PORT" ALGA_ISSUER_PORT
        say "starting the issuer on 127.0.0.1:$ISSUER_PORT (log $log)"
        start_daemon issuer alga-issuer "$log" "$bin" serve --config "$conf"
    fi
    # The file every appliance pins (what an operator bakes into the appliance image).
    "$bin" keys trust-root --config "$conf" --out "$PKI/trust-root.pem" </dev/null 9>&- \
        || die "alga-issuer keys trust-root failed"
    wait_https issuer alga-issuer "$ISSUER_PORT" "$log" "https://localhost:$ISSUER_PORT/healthz" \
        --cert "$PKI/gateway-client.crt" --key "$PKI/gateway-client.key"
}

cmd_gateway_start() {
    local bin log="$LOGS/gateway.log" conf="$DEV/gateway.toml"
    bin="$(need_bin alga-gateway)"
    [ -f "$conf" ] || die "$conf missing (make infra)"
    export RUST_LOG="${RUST_LOG:-info}"
    say "database migrations: alga-gateway migrate"
    "$bin" migrate --config "$conf" </dev/null 9>&- || die "alga-gateway migrate failed"
    if svc_current gateway alga-gateway "$bin" "$conf"; then
        say "gateway already running (pid $(svc_pid gateway alga-gateway), reusing)"
    else
        stop_daemon gateway alga-gateway
        check_port_free gateway "$GATEWAY_PORT" ALGA_GATEWAY_PORT
        say "starting the gateway on 127.0.0.1:$GATEWAY_PORT (log $log)"
        start_daemon gateway alga-gateway "$log" "$bin" serve --config "$conf"
    fi
    wait_https gateway alga-gateway "$GATEWAY_PORT" "$log" "https://localhost:$GATEWAY_PORT/healthz"
}

cmd_issuer_stop() { stop_daemon issuer alga-issuer; }
cmd_gateway_stop() { stop_daemon gateway alga-gateway; }

# --------------------------------------------------------------------------- commands

cmd_infra() {
    take_lock
    cmd_deps
    cmd_pki
    cmd_pg_start
    cmd_hsm
    cmd_smtp_start
    cmd_s3_start
    cmd_configs
    cmd_env
    say "infrastructure is up (Postgres :$PG_PORT, SMTP :$SMTP_PORT, S3 :$S3_PORT); env in $DEV/env"
}

cmd_services() {
    take_lock
    cmd_issuer_start
    cmd_gateway_start
}

cmd_up() {
    take_lock
    cmd_deps
    cmd_build
    cmd_infra
    if [ "${ALGA_UP_SERVICES:-1}" = "0" ]; then
        say "ALGA_UP_SERVICES=0: not starting issuer and gateway"
    else
        cmd_services
    fi
    say "stack is up; load it with:  set -a; . $DEV/env; set +a"
}

cmd_down() {
    take_lock
    say "stopping the local stack (data kept in $DEV)"
    [ -d "$DEV" ] || { info "nothing to stop: $DEV does not exist"; return 0; }
    mkdir -p "$RUN"
    cmd_gateway_stop
    cmd_issuer_stop
    cmd_smtp_stop
    cmd_s3_stop
    cmd_pg_stop
}

cmd_clean_dev() {
    cmd_down
    local ext=""
    [ -L "$DEV/pg" ] && ext="$(readlink -f "$DEV/pg")"
    say "removing $DEV"
    rm -rf "$DEV"
    [ -n "$ext" ] && case "$ext" in /var/tmp/alga-dev-pg-*) rm -rf "$ext" ;; esac
    rm -rf "/tmp/alga-dev-pgsock-$(hash_of_root)"
}

test_report() {
    local rc="$1" t=$((SECONDS - TEST_START))
    if [ "$rc" -eq 0 ]; then
        say "make test: PASSED in $((t / 60))m$((t % 60))s"
    elif [ -n "${TEST_PHASE:-}" ]; then
        say "make test: FAILED ($TEST_PHASE, exit $rc) after $((t / 60))m$((t % 60))s"
    fi
}

cmd_test() {
    TEST_START=$SECONDS
    trap 'test_report $?' EXIT
    TEST_PHASE="lint (scripts/lint.sh: rustfmt, clippy -D warnings, cargo-deny bans)"
    bash "$ROOT/scripts/lint.sh"
    TEST_PHASE="bringing the stack up"
    cmd_up
    release_lock
    TEST_PHASE="cargo test"
    say "running the tests: cargo test --workspace --no-fail-fast"
    (
        set -a
        # shellcheck source=/dev/null
        . "$DEV/env"
        set +a
        cd "$ROOT"
        exec cargo test --workspace --no-fail-fast
    )
    TEST_PHASE="R7 schemathesis against the stack's gateway (scripts/schemathesis.sh, fast mode)"
    SCHEMATHESIS_MODE=fast bash "$ROOT/scripts/schemathesis.sh"
    TEST_PHASE="benchmark smoke run (scripts/bench.sh --smoke: the harness runs; no timing asserted)"
    bash "$ROOT/scripts/bench.sh" --smoke
    TEST_PHASE="the Debian packages (scripts/dist.sh --check: build, lintian, the journey with the packaged binaries, install/upgrade/purge in a chroot)"
    bash "$ROOT/scripts/dist.sh" --check
}

cmd_demo() {
    cmd_up
    release_lock
    say "the guided journey: scripts/demo.sh"
    bash "$ROOT/scripts/demo.sh"
}

cmd_status() {
    local name marker pid
    for name in gateway:alga-gateway issuer:alga-issuer smtp:$smtp_marker s3:$s3_marker; do
        marker="${name#*:}"; name="${name%%:*}"
        if pid="$(svc_pid "$name" "$marker" 2>/dev/null)"; then
            printf '  %-8s running (pid %s)\n' "$name" "$pid"
        else
            printf '  %-8s stopped\n' "$name"
        fi
    done
    if [ -e "$DEV/pg" ]; then
        resolve_pg_root
        if [ -s "$PG_DATA/PG_VERSION" ] && pg_running; then
            printf '  %-8s running (127.0.0.1:%s, data %s)\n' postgres "$(sed -n 4p "$PG_DATA/postmaster.pid")" "$PG_DATA"
        else
            printf '  %-8s stopped\n' postgres
        fi
    else
        printf '  %-8s not initialized\n' postgres
    fi
}

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        deps) cmd_deps ;;
        build) cmd_build ;;
        pki) take_lock; cmd_pki ;;
        infra) cmd_infra ;;
        services) cmd_services ;;
        up) cmd_up ;;
        down) cmd_down ;;
        clean-dev) cmd_clean_dev ;;
        test) cmd_test ;;
        demo) cmd_demo ;;
        status) cmd_status ;;
        env) take_lock; cmd_env ;;
        configs) take_lock; cmd_configs ;;
        pg-start) take_lock; cmd_pg_start ;;
        pg-stop) take_lock; cmd_pg_stop ;;
        smtp-start) take_lock; cmd_smtp_start ;;
        smtp-stop) take_lock; cmd_smtp_stop ;;
        s3-start) take_lock; cmd_s3_start ;;
        s3-stop) take_lock; cmd_s3_stop ;;
        issuer-start) take_lock; cmd_issuer_start ;;
        issuer-stop) take_lock; cmd_issuer_stop ;;
        gateway-start) take_lock; cmd_gateway_start ;;
        gateway-stop) take_lock; cmd_gateway_stop ;;
        -h|--help|help|"") usage ;;
        *) usage >&2; die "unknown subcommand: $cmd" ;;
    esac
}

# scripts/ha.sh sources this file for its helpers (ALGA_STACK_SOURCED=1): no command then.
[ -n "${ALGA_STACK_SOURCED:-}" ] || main "$@"
