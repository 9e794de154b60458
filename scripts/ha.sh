#!/usr/bin/env bash
# scripts/ha.sh: the HA topology on loopback (RELIABILITY.md R23; README
# "Running more than one machine").
#
#   three etcd 3.4 members       → Patroni's DCS
#   two or three Patroni 3.0 nodes, Postgres 15, synchronous replication
#   two alga-issuer processes    on the dev stack's one SoftHSM2 token
#   two alga-gateway processes   database URL: every Postgres node, read-write wanted
#   HAProxy 2.6 (TCP mode)       in front of the gateways and of the issuers
#
# Reused from the dev stack (make up, scripts/stack.sh): the PKI, the HSM token and its
# keys, the SMTP sink, the S3 server and the binaries. Everything else is this
# topology's own: ports from ALGA_HA_PORT_BASE, files under ALGA_HA_DIR, listening on
# 127.0.0.1 only; it never touches the dev stack's Postgres.
#
#   up                    install missing Debian packages, then start all of it (idempotent)
#   down                  stop everything this topology runs (data kept)
#   clean                 down, then remove ALGA_HA_DIR
#   status                what runs, and `patronictl list`
#   start|stop|kill NAME  one process: etcdN, pgN (Patroni with its Postgres), issuerN,
#                         gatewayN, haproxy (kill = SIGKILL)
#   pause|resume NAME     SIGSTOP / SIGCONT (an etcd member cut off from the others)
#   primary               the name of the Postgres primary (pgN)
#   kill-pg-primary       SIGKILL the primary's postmaster; prints its node's name
#   etcd-leader           the name of etcd's leader member (etcdN)
#   haproxy-cmd 'CMD'     a command to HAProxy's runtime API (e.g. 'set server
#                         gateways/gateway2 state maint')
#   env                   rewrite ALGA_HA_DIR/env
#
#   ALGA_HA_DIR        default .dev-ha in the repository
#   ALGA_HA_PORT_BASE  default 56400: etcd 01-03 (peers 11-13), Postgres 21-23,
#                      Patroni REST 31-33, HAProxy 40 (gateways) 41 (issuers) 42 (stats),
#                      gateways 51-52 (operations listeners 56-57), issuers 61-62
#   ALGA_HA_PG_NODES   2 or 3 (default 3)
#   ALGA_HA_POLICY     the policy file of the issuers and gateways (default: a copy of
#                      the dev stack's)
#
# Secrets (Postgres superuser, replication, rewind and role passwords) are random, in
# ALGA_HA_DIR/secrets (0600); Patroni reads its own from its 0600 configuration file.
# None is ever on a command line.
set -euo pipefail

HA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# The dev stack's helpers (start_daemon, stop_daemon, install_debs, pg_bootstrap, …).
ALGA_STACK_SOURCED=1
# shellcheck source=scripts/stack.sh
. "$HA_ROOT/scripts/stack.sh"

# The dev stack's environment: exported already, or its .dev/env (starting anything
# needs it; stopping does not).
if [ -z "${ALGA_DEV_DIR:-}" ] && [ -f "$DEV/env" ]; then
    set -a
    # shellcheck source=/dev/null
    . "$DEV/env"
    set +a
fi
need_dev_env() {
    [ -n "${ALGA_DEV_DIR:-}" ] || die "no $DEV/env: run make up first (the HA topology reuses its PKI, HSM token, SMTP and S3)"
}

HA_DIR="${ALGA_HA_DIR:-$HA_ROOT/.dev-ha}"
case "$HA_DIR" in /*) ;; *) HA_DIR="$PWD/$HA_DIR" ;; esac
# When the Postgres OS user cannot reach the repository (a clone under /root), the
# files live under /var/tmp, linked from .dev-ha (as the dev stack's cluster does).
if [ -L "$HA_DIR" ]; then
    HA_DIR="$(readlink -f "$HA_DIR")"
elif [ ! -d "$HA_DIR" ] && is_root && id -u postgres >/dev/null 2>&1 \
    && ! runuser -u postgres -- test -x "$(dirname "$HA_DIR")" 2>/dev/null; then
    _real="/var/tmp/alga-ha-$(printf '%s' "$HA_DIR" | sha256sum | cut -c1-12)"
    mkdir -p "$_real"
    ln -sfn "$_real" "$HA_DIR"
    HA_DIR="$_real"
fi
# The port base: the environment, else the one this directory was made with, else 56400.
# etcd's members know each other by address: a directory keeps its base.
SAVED_BASE="$(cat "$HA_DIR/port-base" 2>/dev/null || true)"
BASE="${ALGA_HA_PORT_BASE:-${SAVED_BASE:-56400}}"
check_base() {
    if [ -n "$SAVED_BASE" ] && [ "$SAVED_BASE" != "$BASE" ] && [ -d "$HA_DIR/etcd1" ]; then
        die "$HA_DIR was made with ALGA_HA_PORT_BASE=$SAVED_BASE: use that, or remove it first (bash scripts/ha.sh clean)"
    fi
}
[[ "$BASE" =~ ^[0-9]+$ ]] && [ "$BASE" -ge 1024 ] && [ "$BASE" -le 65400 ] \
    || die "ALGA_HA_PORT_BASE must be a port number between 1024 and 65400"
PG_NODES="${ALGA_HA_PG_NODES:-3}"
[[ "$PG_NODES" =~ ^[23]$ ]] || die "ALGA_HA_PG_NODES must be 2 or 3"
ETCD_NODES=3
GATEWAYS=2
ISSUERS=2
HA_SCOPE="alga-ha"

etcd_port() { echo $((BASE + $1)); }
etcd_peer_port() { echo $((BASE + 10 + $1)); }
pg_port() { echo $((BASE + 20 + $1)); }
rest_port() { echo $((BASE + 30 + $1)); }
GW_FRONT_PORT=$((BASE + 40))
ISSUER_FRONT_PORT=$((BASE + 41))
STATS_PORT=$((BASE + 42))
gw_port() { echo $((BASE + 50 + $1)); }
gw_ops_port() { echo $((BASE + 55 + $1)); }
issuer_port() { echo $((BASE + 60 + $1)); }

# The binaries: ALGA_HA_BIN_DIR, else the dev stack's (CARGO_TARGET_DIR or target/).
BIN_DIR="${ALGA_HA_BIN_DIR:-$BIN_DIR}"
# The dev stack's helpers keep pids and logs here.
RUN="$HA_DIR/run"
LOGS="$HA_DIR/logs"
HA_SECRETS="$HA_DIR/secrets"
HA_POLICY="${ALGA_HA_POLICY:-$HA_DIR/policy.toml}"
ETCD_BIN="$(command -v etcd || echo /usr/bin/etcd)"
ETCDCTL_BIN="$(command -v etcdctl || echo /usr/bin/etcdctl)"
PATRONI_BIN="$(command -v patroni || echo /usr/bin/patroni)"
PATRONICTL_BIN="$(command -v patronictl || echo /usr/bin/patronictl)"
HAPROXY_BIN="$(command -v haproxy || echo /usr/sbin/haproxy)"
HA_DEB_PACKAGES=(patroni python3-etcd etcd-server etcd-client haproxy pgbouncer postgresql-15 jq curl gettext-base)

etcd_hosts() {
    local i out=""
    for ((i = 1; i <= ETCD_NODES; i++)); do out+="${out:+,}127.0.0.1:$(etcd_port "$i")"; done
    echo "$out"
}
etcd_endpoints() {
    local i out=""
    for ((i = 1; i <= ETCD_NODES; i++)); do out+="${out:+,}http://127.0.0.1:$(etcd_port "$i")"; done
    echo "$out"
}
pg_hosts() {
    local i out=""
    for ((i = 1; i <= PG_NODES; i++)); do out+="${out:+,}127.0.0.1:$(pg_port "$i")"; done
    echo "$out"
}

pg_data() { echo "$HA_DIR/pg$1/data"; }
# A unix socket path must stay under 108 bytes.
pg_sock() {
    local d="$HA_DIR/sock/pg$1"
    [ "${#d}" -le 80 ] || d="/tmp/alga-ha-$(printf '%s' "$HA_DIR" | sha256sum | cut -c1-12)/pg$1"
    echo "$d"
}

# Runs a program as the Postgres OS user without a fork in between (so a recorded pid
# is the program's own and SIGKILL reaches it).
PG_EXEC=()
is_root && PG_EXEC=(setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$HA_DIR")
as_pg_exec() { "${PG_EXEC[@]}" "$@"; }

pg_owned_dir() {
    mkdir -p "$1"
    is_root && chown postgres:postgres "$1"
    chmod 0700 "$1"
}

# ------------------------------------------------------------------------ preparation

ha_deps() {
    local saved=("${DEB_PACKAGES[@]}")
    DEB_PACKAGES=("${HA_DEB_PACKAGES[@]}")
    install_debs
    DEB_PACKAGES=("${saved[@]}")
    local b
    for b in "$ETCD_BIN" "$ETCDCTL_BIN" "$PATRONI_BIN" "$PATRONICTL_BIN" "$HAPROXY_BIN" "$PG_BIN/postgres"; do
        [ -x "$b" ] || die "$b missing after installing ${HA_DEB_PACKAGES[*]}"
    done
}

ha_dirs() {
    ensure_pg_os_user
    mkdir -p "$HA_DIR" "$RUN" "$LOGS"
    printf '%s\n' "$BASE" >"$HA_DIR/port-base"
    # The Postgres OS user must reach its directories inside.
    chmod 0755 "$HA_DIR" "$RUN" "$LOGS"
    mkdir -p -m 0700 "$HA_SECRETS"
    chmod 0700 "$HA_SECRETS"
    pg_owned_dir "$HA_DIR/archive"
    local i
    for ((i = 1; i <= PG_NODES; i++)); do
        pg_owned_dir "$HA_DIR/pg$i"
        mkdir -p "$(dirname "$(pg_sock "$i")")"
        chmod 0755 "$(dirname "$(pg_sock "$i")")"
        pg_owned_dir "$(pg_sock "$i")"
    done
    for ((i = 1; i <= ISSUERS; i++)); do mkdir -p "$HA_DIR/issuer-log-$i"; done
}

ha_secrets() {
    local s
    for s in postgres replicator rewinder alga_admin alga_migrator alga_gateway; do
        gen_secret "$HA_SECRETS/$s.pw" >/dev/null
    done
}

ha_policy() {
    [ -n "${ALGA_HA_POLICY:-}" ] && { [ -f "$HA_POLICY" ] || die "ALGA_HA_POLICY=$HA_POLICY does not exist"; return 0; }
    [ -f "$HA_POLICY" ] || cp "$ALGA_POLICY" "$HA_POLICY"
}

# render SRC DEST [MODE]: envsubst with the HA_* and ALGA_* variables only.
render() {
    local src="$1" dest="$2" mode="${3:-0644}" vars
    vars="$(grep -o '\${\(HA\|ALGA\)_[A-Z0-9_]*}' "$src" | sort -u | tr '\n' ' ')"
    ( umask 077; envsubst "$vars" <"$src" >"$dest.tmp" )
    chmod "$mode" "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
}

# ----------------------------------------------------------------------------- etcd

etcd_start() {
    local i="$1" name="etcd$1" cluster="" j log="$LOGS/etcd$1.log"
    if svc_pid "$name" "$ETCD_BIN" >/dev/null; then info "$name: running"; return 0; fi
    check_port_free "$name" "$(etcd_port "$i")" ALGA_HA_PORT_BASE
    for ((j = 1; j <= ETCD_NODES; j++)); do cluster+="${cluster:+,}etcd$j=http://127.0.0.1:$(etcd_peer_port "$j")"; done
    local state=new
    [ -d "$HA_DIR/etcd$i/member" ] && state=existing
    mkdir -p "$HA_DIR/etcd$i"
    chmod 0700 "$HA_DIR/etcd$i"
    say "starting $name on 127.0.0.1:$(etcd_port "$i") (peer $(etcd_peer_port "$i"))"
    start_daemon "$name" "$ETCD_BIN" "$log" "$ETCD_BIN" --name "$name" --data-dir "$HA_DIR/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$(etcd_port "$i")" \
        --advertise-client-urls "http://127.0.0.1:$(etcd_port "$i")" \
        --listen-peer-urls "http://127.0.0.1:$(etcd_peer_port "$i")" \
        --initial-advertise-peer-urls "http://127.0.0.1:$(etcd_peer_port "$i")" \
        --initial-cluster "$cluster" --initial-cluster-token "$HA_SCOPE-$BASE" \
        --initial-cluster-state "$state" \
        --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-level warn
}

etcd_wait() {
    local i
    for ((i = 0; i < 300; i++)); do
        if "$ETCDCTL_BIN" --endpoints "$(etcd_endpoints)" --command-timeout 2s endpoint health >/dev/null 2>&1; then
            info "etcd: all $ETCD_NODES members healthy"
            return 0
        fi
        sleep 0.1
    done
    tail_log "$LOGS/etcd1.log"
    die "etcd: the cluster is not healthy after 30 s"
}

etcd_leader() {
    local i s
    for ((i = 1; i <= ETCD_NODES; i++)); do
        s="$("$ETCDCTL_BIN" --endpoints "http://127.0.0.1:$(etcd_port "$i")" --command-timeout 2s \
            endpoint status -w json 2>/dev/null || true)"
        [ -n "$s" ] || continue
        if [ "$(jq -r '.[0].Status.leader == .[0].Status.header.member_id' <<<"$s")" = true ]; then
            echo "etcd$i"
            return 0
        fi
    done
    return 1
}

# -------------------------------------------------------------------- Patroni/Postgres

patroni_conf() { echo "$HA_DIR/pg$1/patroni.yml"; }

pg_node_start() {
    local i="$1" name="pg$1" log="$LOGS/pg$1.log" conf
    conf="$(patroni_conf "$i")"
    if svc_pid "$name" "$PATRONI_BIN" >/dev/null; then info "$name: Patroni running"; return 0; fi
    # A Postgres left running by a Patroni that was killed: stop it first (Patroni
    # starts its own).
    pg_orphan_stop "$i"
    check_port_free "$name (Postgres)" "$(pg_port "$i")" ALGA_HA_PORT_BASE
    check_port_free "$name (Patroni REST)" "$(rest_port "$i")" ALGA_HA_PORT_BASE
    # Passwords reach envsubst through its environment, and the file is 0600.
    HA_SCOPE="$HA_SCOPE" HA_NODE="$name" HA_REST_PORT="$(rest_port "$i")" HA_ETCD_HOSTS="$(etcd_hosts)" \
    HA_ARCHIVE="$HA_DIR/archive" HA_PG_PORT="$(pg_port "$i")" HA_PG_DATA="$(pg_data "$i")" \
    HA_PG_BIN="$PG_BIN" HA_PGPASS="$HA_DIR/pg$i/pgpass" HA_PG_SOCK="$(pg_sock "$i")" \
    HA_SUPERUSER_PW="$(<"$HA_SECRETS/postgres.pw")" HA_REPLICATION_PW="$(<"$HA_SECRETS/replicator.pw")" \
    HA_REWIND_PW="$(<"$HA_SECRETS/rewinder.pw")" \
        render "$HA_ROOT/config/ha/patroni.yml.in" "$conf" 0600
    is_root && chown postgres:postgres "$conf"
    say "starting $name: Patroni, Postgres on 127.0.0.1:$(pg_port "$i"), REST on $(rest_port "$i")"
    start_daemon "$name" "$PATRONI_BIN" "$log" "${PG_EXEC[@]}" "$PATRONI_BIN" "$conf"
}

# The postmaster's pid of node i, if it runs.
pg_postmaster_pid() {
    local f pid
    f="$(pg_data "$1")/postmaster.pid"
    [ -s "$f" ] || return 1
    pid="$(head -n 1 "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    grep -q postgres "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

pg_orphan_stop() {
    local pid
    pid="$(pg_postmaster_pid "$1")" || return 0
    warn "pg$1: a Postgres (pid $pid) runs without its Patroni; stopping it"
    (cd / && as_pg_exec "$PG_BIN/pg_ctl" -D "$(pg_data "$1")" -m fast -w -t 30 stop >/dev/null 2>&1) \
        || kill -KILL "$pid" 2>/dev/null || true
}

pg_node_stop() {
    stop_daemon "pg$1" "$PATRONI_BIN"
    pg_orphan_stop "$1"
}

# GET a Patroni REST path of node i: prints the status code.
rest_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$(rest_port "$1")$2" 2>/dev/null || true
}

pg_primary() {
    local i
    for ((i = 1; i <= PG_NODES; i++)); do
        [ "$(rest_code "$i" /primary)" = 200 ] && { echo "pg$i"; return 0; }
    done
    return 1
}

# Waits until one node is the primary, another its synchronous standby and every node
# runs (bounded).
pg_wait_cluster() {
    local secs="${1:-180}" i t primary sync running
    for ((t = 0; t < secs * 5; t++)); do
        primary="" sync="" running=0
        for ((i = 1; i <= PG_NODES; i++)); do
            [ "$(rest_code "$i" /primary)" = 200 ] && primary="pg$i"
            [ "$(rest_code "$i" /sync)" = 200 ] && sync="pg$i"
            [ "$(rest_code "$i" /health)" = 200 ] && running=$((running + 1))
        done
        if [ -n "$primary" ] && [ -n "$sync" ] && [ "$running" = "$PG_NODES" ]; then
            info "Patroni: primary $primary, synchronous standby $sync, $running nodes running"
            return 0
        fi
        for ((i = 1; i <= PG_NODES; i++)); do
            if ! daemon_alive "pg$i"; then
                tail_log "$LOGS/pg$i.log"
                die "pg$i (Patroni) exited ($(daemon_exit "pg$i"))"
            fi
        done
        sleep 0.2
    done
    for ((i = 1; i <= PG_NODES; i++)); do tail_log "$LOGS/pg$i.log"; done
    die "Patroni: no primary with a synchronous standby and $PG_NODES running nodes after ${secs} s"
}

# Roles and database, through the primary's unix socket as postgres (stack.sh's
# pg_bootstrap, pointed at this cluster's primary and secrets).
pg_roles() {
    local p n
    p="$(pg_primary)" || die "no Postgres primary"
    n="${p#pg}"
    (
        SECRETS="$HA_SECRETS" PG_SOCK="$(pg_sock "$n")" PG_PORT="$(pg_port "$n")" PG_DB=alga
        PG_LOG="$LOGS/$p.log"
        pg_bootstrap
    )
}

# ----------------------------------------------------------------- issuers, gateways

issuer_start() {
    local i="$1" name="issuer$1" bin conf="$HA_DIR/issuer$1.toml" log="$LOGS/issuer$1.log"
    bin="$(need_bin alga-issuer)"
    if svc_pid "$name" alga-issuer >/dev/null; then info "$name: running"; return 0; fi
    check_port_free "$name" "$(issuer_port "$i")" ALGA_HA_PORT_BASE
    HA_ISSUER_PORT="$(issuer_port "$i")" HA_POLICY="$HA_POLICY" HA_DIR="$HA_DIR" HA_ISSUER_N="$i" \
        render "$HA_ROOT/config/ha/issuer.toml.in" "$conf"
    say "starting $name on 127.0.0.1:$(issuer_port "$i") (token $ALGA_HSM_TOKEN_LABEL)"
    SOFTHSM2_CONF="$SOFTHSM2_CONF" RUST_LOG="${RUST_LOG:-info}" \
        start_daemon "$name" alga-issuer "$log" "$bin" serve --config "$conf"
}

issuer_wait() {
    wait_https "issuer$1" alga-issuer "$(issuer_port "$1")" "$LOGS/issuer$1.log" \
        "https://localhost:$(issuer_port "$1")/healthz" \
        --cacert "$ALGA_CA_BUNDLE" --cert "$ALGA_GATEWAY_CLIENT_CERT" --key "$ALGA_GATEWAY_CLIENT_KEY"
}

gateway_conf() {
    local i="$1" conf="$HA_DIR/gateway$1.toml"
    HA_GW_PORT="$(gw_port "$i")" HA_GW_OPS_PORT="$(gw_ops_port "$i")" HA_GW_FRONT_PORT="$GW_FRONT_PORT" \
    HA_ISSUER_FRONT_PORT="$ISSUER_FRONT_PORT" HA_PG_HOSTS="$(pg_hosts)" HA_DIR="$HA_DIR" \
    HA_POLICY="$HA_POLICY" \
        render "$HA_ROOT/config/ha/gateway.toml.in" "$conf"
    echo "$conf"
}

gateway_migrate() {
    local bin conf
    bin="$(need_bin alga-gateway)"
    conf="$(gateway_conf 1)"
    say "database migrations: alga-gateway migrate (through the multi-host URL)"
    "$bin" migrate --config "$conf" </dev/null 9>&- >>"$LOGS/migrate.log" 2>&1 || {
        tail_log "$LOGS/migrate.log"
        die "alga-gateway migrate failed"
    }
}

gateway_start() {
    local i="$1" name="gateway$1" bin conf log="$LOGS/gateway$1.log"
    bin="$(need_bin alga-gateway)"
    if svc_pid "$name" alga-gateway >/dev/null; then info "$name: running"; return 0; fi
    check_port_free "$name" "$(gw_port "$i")" ALGA_HA_PORT_BASE
    conf="$(gateway_conf "$i")"
    say "starting $name on 127.0.0.1:$(gw_port "$i") (operations $(gw_ops_port "$i"))"
    RUST_LOG="${RUST_LOG:-info}" start_daemon "$name" alga-gateway "$log" "$bin" serve --config "$conf"
}

gateway_wait() {
    wait_https "gateway$1" alga-gateway "$(gw_port "$1")" "$LOGS/gateway$1.log" \
        "https://localhost:$(gw_port "$1")/healthz" --cacert "$ALGA_CA_BUNDLE"
}

# ------------------------------------------------------------------------------ HAProxy

haproxy_start() {
    local log="$LOGS/haproxy.log" conf="$HA_DIR/haproxy.cfg" i gws="" iss=""
    if svc_pid haproxy "$HAPROXY_BIN" >/dev/null; then info "haproxy: running"; return 0; fi
    for ((i = 1; i <= GATEWAYS; i++)); do
        gws+="    server gateway$i 127.0.0.1:$(gw_port "$i") check port $(gw_ops_port "$i")"$'\n'
    done
    for ((i = 1; i <= ISSUERS; i++)); do
        iss+="    server issuer$i 127.0.0.1:$(issuer_port "$i") check"$'\n'
    done
    HA_GW_FRONT_PORT="$GW_FRONT_PORT" HA_ISSUER_FRONT_PORT="$ISSUER_FRONT_PORT" HA_STATS_PORT="$STATS_PORT" \
    HA_GW_SERVERS="$gws" HA_ISSUER_SERVERS="$iss" HA_DIR="$HA_DIR" render "$HA_ROOT/config/ha/haproxy.cfg.in" "$conf"
    "$HAPROXY_BIN" -c -q -f "$conf" || die "haproxy -c rejects $conf"
    check_port_free "haproxy (gateways)" "$GW_FRONT_PORT" ALGA_HA_PORT_BASE
    say "starting HAProxy: gateways on 127.0.0.1:$GW_FRONT_PORT, issuers on $ISSUER_FRONT_PORT, stats on $STATS_PORT"
    start_daemon haproxy "$HAPROXY_BIN" "$log" "$HAPROXY_BIN" -db -f "$conf"
    wait_port haproxy "$HAPROXY_BIN" "$GW_FRONT_PORT" "$log" 20
}

# ---------------------------------------------------------------------------------- env

ha_env() {
    local tmp admin i gws="" iss=""
    admin="$(<"$HA_SECRETS/alga_admin.pw")"
    for ((i = 1; i <= GATEWAYS; i++)); do gws+="${gws:+ }https://localhost:$(gw_port "$i")"; done
    for ((i = 1; i <= ISSUERS; i++)); do iss+="${iss:+ }https://localhost:$(issuer_port "$i")"; done
    tmp="$(mktemp "$HA_DIR/.env.XXXXXX")"
    {
        echo "# The HA topology (scripts/ha.sh); dev-only passwords inside."
        env_line ALGA_HA_DIR "$HA_DIR"
        env_line ALGA_HA_SCRIPT "$HA_ROOT/scripts/ha.sh"
        env_line ALGA_HA_PORT_BASE "$BASE"
        env_line ALGA_HA_PG_NODES "$PG_NODES"
        env_line ALGA_HA_GATEWAY_URL "https://localhost:$GW_FRONT_PORT"
        env_line ALGA_HA_ISSUER_URL "https://localhost:$ISSUER_FRONT_PORT"
        env_line ALGA_HA_STATS_URL "http://127.0.0.1:$STATS_PORT/"
        env_line ALGA_HA_GATEWAYS "$gws"
        env_line ALGA_HA_ISSUERS "$iss"
        env_line ALGA_HA_ISSUER_LOGS "$(for ((i = 1; i <= ISSUERS; i++)); do printf '%s ' "$HA_DIR/issuer-log-$i"; done)"
        env_line ALGA_HA_DATABASE_URL "postgres://alga_admin:$admin@$(pg_hosts)/alga?target_session_attrs=read-write"
        env_line ALGA_HA_POLICY "$HA_POLICY"
        env_line ALGA_HA_ETCD_ENDPOINTS "$(etcd_endpoints)"
    } >"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$HA_DIR/env"
    info "wrote $HA_DIR/env (mode 0600)"
}

# ----------------------------------------------------------------------------- commands

ha_up() {
    local i t0=$SECONDS
    need_dev_env
    check_base
    say "HA topology in $HA_DIR (ports from $BASE)"
    ha_deps
    ha_dirs
    ha_secrets
    ha_policy
    for ((i = 1; i <= ETCD_NODES; i++)); do etcd_start "$i"; done
    etcd_wait
    for ((i = 1; i <= PG_NODES; i++)); do pg_node_start "$i"; done
    pg_wait_cluster 180
    pg_roles
    for ((i = 1; i <= ISSUERS; i++)); do issuer_start "$i"; issuer_wait "$i"; done
    # HAProxy before the gateways: they reach the issuers through it from their start.
    haproxy_start
    gateway_migrate
    for ((i = 1; i <= GATEWAYS; i++)); do gateway_start "$i"; done
    for ((i = 1; i <= GATEWAYS; i++)); do gateway_wait "$i"; done
    ha_env
    wait_https haproxy "$HAPROXY_BIN" "$GW_FRONT_PORT" "$LOGS/haproxy.log" \
        "https://localhost:$GW_FRONT_PORT/healthz" --cacert "$ALGA_CA_BUNDLE"
    say "HA topology is up in $((SECONDS - t0)) s: gateways through https://localhost:$GW_FRONT_PORT, primary $(pg_primary); env in $HA_DIR/env"
}

ha_down() {
    local i
    [ -d "$HA_DIR" ] || { info "nothing to stop: $HA_DIR does not exist"; return 0; }
    mkdir -p "$RUN"
    say "stopping the HA topology in $HA_DIR (data kept)"
    # A paused member would never stop.
    for ((i = 1; i <= ETCD_NODES; i++)); do svc_signal "etcd$i" CONT 2>/dev/null || true; done
    stop_daemon haproxy "$HAPROXY_BIN"
    for ((i = 1; i <= GATEWAYS; i++)); do stop_daemon "gateway$i" alga-gateway; done
    for ((i = 1; i <= ISSUERS; i++)); do stop_daemon "issuer$i" alga-issuer; done
    for ((i = 1; i <= 3; i++)); do [ -d "$HA_DIR/pg$i" ] && pg_node_stop "$i"; done
    for ((i = 1; i <= ETCD_NODES; i++)); do stop_daemon "etcd$i" "$ETCD_BIN"; done
}

ha_clean() {
    ha_down
    say "removing $HA_DIR"
    rm -rf "$HA_DIR"
    [ -L "${ALGA_HA_DIR:-$HA_ROOT/.dev-ha}" ] && rm -f "${ALGA_HA_DIR:-$HA_ROOT/.dev-ha}"
    rm -rf "/tmp/alga-ha-$(printf '%s' "$HA_DIR" | sha256sum | cut -c1-12)"
}

ha_status() {
    local name marker pid i
    for name in etcd1 etcd2 etcd3 pg1 pg2 pg3 issuer1 issuer2 gateway1 gateway2 haproxy; do
        case "$name" in
            etcd*) marker="$ETCD_BIN" ;; pg*) marker="$PATRONI_BIN" ;; issuer*) marker=alga-issuer ;;
            gateway*) marker=alga-gateway ;; haproxy) marker="$HAPROXY_BIN" ;;
        esac
        if pid="$(svc_pid "$name" "$marker" 2>/dev/null)"; then
            printf '  %-9s running (pid %s)\n' "$name" "$pid"
        else
            printf '  %-9s stopped\n' "$name"
        fi
    done
    if [ -s "$(patroni_conf 1)" ]; then
        as_pg_exec "$PATRONICTL_BIN" -c "$(patroni_conf 1)" list 2>/dev/null || true
    fi
}

# Marker of a named process.
marker_of() {
    case "$1" in
        etcd[1-3]) echo "$ETCD_BIN" ;; pg[1-3]) echo "$PATRONI_BIN" ;; issuer[1-2]) echo alga-issuer ;;
        gateway[1-2]) echo alga-gateway ;; haproxy) echo "$HAPROXY_BIN" ;;
        *) die "no process named $1 (etcdN, pgN, issuerN, gatewayN, haproxy)" ;;
    esac
}

svc_signal() {
    local pid
    pid="$(svc_pid "$1" "$(marker_of "$1")")" || die "$1 is not running"
    kill -"$2" "$pid"
    echo "$pid"
}

ha_start_one() {
    case "$1" in
        etcd[1-3]) etcd_start "${1#etcd}" ;;
        pg[1-3]) pg_node_start "${1#pg}" ;;
        issuer[1-2]) issuer_start "${1#issuer}"; issuer_wait "${1#issuer}" ;;
        gateway[1-2]) gateway_start "${1#gateway}"; gateway_wait "${1#gateway}" ;;
        haproxy) haproxy_start ;;
        *) marker_of "$1" >/dev/null ;;
    esac
}

ha_stop_one() {
    case "$1" in
        pg[1-3]) pg_node_stop "${1#pg}" ;;
        *) stop_daemon "$1" "$(marker_of "$1")" ;;
    esac
}

# SIGKILL; for a Postgres node, Patroni and then its postmaster (the node is lost).
ha_kill_one() {
    local pid
    svc_signal "$1" KILL >/dev/null
    if [[ "$1" == pg* ]] && pid="$(pg_postmaster_pid "${1#pg}")"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

haproxy_cmd() {
    "$SYS_PYTHON" -B -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
' "$HA_DIR/run/haproxy.sock" "$1"
}

ha_kill_pg_primary() {
    local p pid
    p="$(pg_primary)" || die "no Postgres primary"
    pid="$(pg_postmaster_pid "${p#pg}")" || die "$p: no postmaster running"
    kill -KILL "$pid"
    echo "$p"
}

ha_main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        up) ha_up ;;
        down) ha_down ;;
        clean) ha_clean ;;
        status) ha_status ;;
        env) ha_env ;;
        start) need_dev_env; ha_start_one "${1:?start NAME}" ;;
        stop) ha_stop_one "${1:?stop NAME}" ;;
        kill) ha_kill_one "${1:?kill NAME}" ;;
        pause) svc_signal "${1:?pause NAME}" STOP >/dev/null ;;
        resume) svc_signal "${1:?resume NAME}" CONT >/dev/null ;;
        primary) pg_primary ;;
        kill-pg-primary) ha_kill_pg_primary ;;
        etcd-leader) etcd_leader ;;
        haproxy-cmd) haproxy_cmd "${1:?haproxy-cmd 'COMMAND'}" ;;
        -h | --help | help | "") sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
        *) die "unknown subcommand: $cmd (see scripts/ha.sh help)" ;;
    esac
}

ha_main "$@"
