#!/usr/bin/env bash
# scripts/schemathesis.sh: reliability scenario R7's API part (RELIABILITY.md):
# schemathesis, generating requests from the gateway's own GET /openapi.json, against
# the stack's gateway with a client identity (the store's by default). The run passes
# when no request got a 5xx, no check failed, schemathesis hit no error and every
# request had an answer, and the gateway still answers /healthz with no panic logged.
#
#   SCHEMATHESIS_MODE=fast  (default; make test) 10 examples per operation, a fixed
#                           seed, store identity; bounded by SCHEMATHESIS_TIMEOUT
#                           (default 300 s); about 20 s
#   SCHEMATHESIS_MODE=long  (make soak) 100 examples per operation, then fuzzing and
#                           stateful phases repeated until SCHEMATHESIS_MAX_TIME
#                           (default 120 s), a fresh seed (printed), with the store
#                           identity, then the auditor's on its own routes (/audit/*,
#                           /tenants/*) for half that time; about 190 s in all
#
#   SCHEMATHESIS_SEED=N             reproduce a run (the seed is printed)
#   SCHEMATHESIS_EXAMPLES=N         examples per operation
#   SCHEMATHESIS_IDENTITIES="store auditor"   identities to run with, in turn
#   SCHEMATHESIS_SOURCES=relay|direct         see "Source addresses" below
#   ALGA_TOOLS_ROOT=DIR             where the venv lives (default
#                                   ${XDG_CACHE_HOME:-~/.cache}/alga-license/tools)
#   scripts/schemathesis.sh --install-only    only make sure the pinned venv is there
#
# Prints one line per identity (R7 schemathesis (…): operations, requests, seconds, 5xx,
# check failures, errors), the statuses per operation, and exits non-zero on any 5xx,
# failure, error or crash.
#
# Needs `make up` (.dev/env and the gateway). Installs schemathesis (pinned, from PyPI)
# into its own venv made by Debian's /usr/bin/python3 -m venv (package python3-venv),
# reused while the pinned version is there. The client key goes to schemathesis as a
# file path; no secret is put on a command line.
#
# Side effects on the dev database (tests use their own tenants, so they do not mind):
# tenants with generated names, their codes reissued, their queued mails, and audit
# records of every refusal.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SYS_PYTHON="/usr/bin/python3"
TOOLS="${ALGA_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/alga-license/tools}"
VENV="$TOOLS/schemathesis-venv"
MODE="${SCHEMATHESIS_MODE:-fast}"

say() { printf 'schemathesis: %s\n' "$*"; }
die() { printf 'schemathesis: ERROR: %s\n' "$*" >&2; exit 2; }

case "$MODE" in
    fast)
        EXAMPLES="${SCHEMATHESIS_EXAMPLES:-10}"
        SEED="${SCHEMATHESIS_SEED:-20261123}"
        BOUND="${SCHEMATHESIS_TIMEOUT:-300}"
        IDENTITIES="${SCHEMATHESIS_IDENTITIES:-store}"
        MAX_TIME=""
        ;;
    long)
        EXAMPLES="${SCHEMATHESIS_EXAMPLES:-100}"
        SEED="${SCHEMATHESIS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
        MAX_TIME="${SCHEMATHESIS_MAX_TIME:-120}"
        IDENTITIES="${SCHEMATHESIS_IDENTITIES:-store auditor}"
        # schemathesis stops itself at --max-time; the wall-clock bound is a backstop.
        BOUND="${SCHEMATHESIS_TIMEOUT:-$((MAX_TIME + 90))}"
        ;;
    *) die "SCHEMATHESIS_MODE must be fast or long (got '$MODE')" ;;
esac
for v in EXAMPLES SEED BOUND ${MAX_TIME:+MAX_TIME}; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
done

# ------------------------------------------------------------------ the pinned venv
installed_version() {
    [ -x "$VENV/bin/schemathesis" ] || return 1
    "$VENV/bin/schemathesis" --version 2>/dev/null | sed -n 's/^schemathesis, version //p'
}

ensure_schemathesis() {
    mkdir -p "$TOOLS"
    # One installer at a time (several engineers share this cache).
    exec 8>"$TOOLS/.schemathesis.lock"
    flock -w 600 8 || die "could not lock $TOOLS/.schemathesis.lock within 10 minutes"
    if [ "$(installed_version || true)" = "$SCHEMATHESIS_VERSION" ] &&
        [ "$(cat "$VENV/.alga-pinned" 2>/dev/null)" = "$SCHEMATHESIS_VERSION" ]; then
        say "using schemathesis $SCHEMATHESIS_VERSION in $VENV"
        exec 8>&-
        return
    fi
    [ -x "$SYS_PYTHON" ] || die "$SYS_PYTHON is missing: apt-get install python3 python3-venv"
    if ! dpkg -s python3-venv >/dev/null 2>&1 || ! "$SYS_PYTHON" -c 'import ensurepip' 2>/dev/null; then
        die "Debian's python3-venv package is missing (needed for '$SYS_PYTHON -m venv'): apt-get install python3-venv"
    fi
    say "installing schemathesis $SCHEMATHESIS_VERSION (PyPI) into $VENV"
    rm -rf "$VENV"
    "$SYS_PYTHON" -m venv "$VENV" || die "'$SYS_PYTHON -m venv $VENV' failed"
    if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        "schemathesis==$SCHEMATHESIS_VERSION" >"$TOOLS/schemathesis-install.log" 2>&1; then
        tail -20 "$TOOLS/schemathesis-install.log" >&2
        rm -rf "$VENV"
        die "pip install schemathesis==$SCHEMATHESIS_VERSION failed (log: $TOOLS/schemathesis-install.log)"
    fi
    [ "$(installed_version || true)" = "$SCHEMATHESIS_VERSION" ] ||
        die "schemathesis --version does not say $SCHEMATHESIS_VERSION after the install"
    printf '%s' "$SCHEMATHESIS_VERSION" >"$VENV/.alga-pinned"
    exec 8>&-
}

ensure_schemathesis
[ "${1:-}" = "--install-only" ] && exit 0

# ------------------------------------------------------------------ the stack
cd "$ROOT"
[ -f .dev/env ] || die "no .dev/env: run make up first"
set -a
# shellcheck disable=SC1091
. .dev/env
set +a
for v in ALGA_GATEWAY_URL ALGA_CA_BUNDLE ALGA_STORE_CERT ALGA_STORE_KEY; do
    [ -n "${!v:-}" ] || die "$v is not set in .dev/env"
done

OUT="$(mktemp -d /tmp/alga-schemathesis.XXXXXX)"
CURL_TLS=(--cacert "$ALGA_CA_BUNDLE" --cert "$ALGA_STORE_CERT" --key "$ALGA_STORE_KEY")
curl -sS --max-time 10 -o /dev/null "${CURL_TLS[@]}" "$ALGA_GATEWAY_URL/healthz" ||
    die "the gateway at $ALGA_GATEWAY_URL does not answer: make up (or scripts/stack.sh gateway-start)"
curl -sS --fail --max-time 10 "${CURL_TLS[@]}" -o "$OUT/openapi.json" "$ALGA_GATEWAY_URL/openapi.json" ||
    die "GET $ALGA_GATEWAY_URL/openapi.json failed"

# Source addresses. /register is rate-limited per source (10 a minute in the dev
# policy): straight from 127.0.0.1, every well-formed generated redeem past the tenth a
# minute gets 429 before the appliance-field, CSR and code checks, and 127.0.0.1's
# bucket stays empty for a minute for everyone else (make demo). So by default they go
# through a small TCP relay (TLS passes through untouched, mTLS stays end to end) that
# connects to the gateway from 127.77.x.y, a new address per connection, with
# `Connection: close` on every request. SCHEMATHESIS_SOURCES=direct sends from 127.0.0.1.
SOURCES="${SCHEMATHESIS_SOURCES:-relay}"
TARGET_URL="$ALGA_GATEWAY_URL"
EXTRA_ARGS=()
RELAY_PID=""
stop_relay() { [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null; RELAY_PID=""; }
trap stop_relay EXIT
trap 'exit 143' TERM INT
case "$SOURCES" in
    direct) ;;
    relay)
        hostport="${ALGA_GATEWAY_URL#https://}"
        hostport="${hostport%%/*}"
        gw_port="${hostport##*:}"
        [[ "$gw_port" =~ ^[0-9]+$ ]] || die "no port in ALGA_GATEWAY_URL=$ALGA_GATEWAY_URL"
        cat >"$OUT/relay.py" <<'PY'
import asyncio, sys

gw_port, port_file = int(sys.argv[1]), sys.argv[2]
counter = 0

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass

async def handle(c_reader, c_writer):
    global counter
    counter += 1
    n = counter % 65000 + 1  # 127.77.0.1 .. 127.77.253.232
    source = f"127.77.{n // 256}.{n % 256}"
    try:
        g_reader, g_writer = await asyncio.open_connection("127.0.0.1", gw_port, local_addr=(source, 0))
    except OSError:
        c_writer.close()
        return
    await asyncio.gather(pipe(c_reader, g_writer), pipe(g_reader, c_writer))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    with open(port_file, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
        "$VENV/bin/python" "$OUT/relay.py" "$gw_port" "$OUT/relay.port" >"$OUT/relay.log" 2>&1 &
        RELAY_PID=$!
        for _ in $(seq 1 50); do [ -s "$OUT/relay.port" ] && break; sleep 0.1; done
        [ -s "$OUT/relay.port" ] || die "the source relay did not start (log: $OUT/relay.log)"
        TARGET_URL="https://localhost:$(cat "$OUT/relay.port")"
        curl -sS --fail --max-time 10 -o /dev/null "${CURL_TLS[@]}" "$TARGET_URL/healthz" ||
            die "the gateway does not answer through the source relay (log: $OUT/relay.log)"
        EXTRA_ARGS+=(--header "Connection: close")
        say "sending from 127.77.x.y through a relay on 127.0.0.1:$(cat "$OUT/relay.port") (SCHEMATHESIS_SOURCES=direct: from 127.0.0.1)"
        ;;
    *) die "SCHEMATHESIS_SOURCES must be relay or direct (got '$SOURCES')" ;;
esac

GW_LOG="${ALGA_DEV_DIR:-$ROOT/.dev}/logs/gateway.log"
LOG_START=$(stat -c %s "$GW_LOG" 2>/dev/null || echo 0)
START=$(date +%s)
FAILED=0

# run_one NAME CERT KEY MAX_TIME [SCHEMATHESIS ARGS…]: one schemathesis run with that
# identity; figures to $OUT/NAME.
run_one() {
    local name="$1" cert="$2" key="$3" max_time="$4" dir="$OUT/$1"
    shift 4
    mkdir -p "$dir"
    local args=(
        run "$OUT/openapi.json"
        --url "$TARGET_URL"
        --request-cert "$cert" --request-cert-key "$key"
        --tls-verify "$ALGA_CA_BUNDLE"
        --checks not_a_server_error
        --max-examples "$EXAMPLES"
        --seed "$SEED"
        --workers 1
        --request-timeout 30
        --generation-database none
        --no-color
        --report ndjson,junit --report-dir "$dir"
        --report-ndjson-path "$dir/events.ndjson" --report-junit-path "$dir/junit.xml"
    )
    [ -n "$max_time" ] && args+=(--max-time "$max_time")
    args+=("${EXTRA_ARGS[@]}" "$@")
    say "$name identity: $MODE mode, seed $SEED, $EXAMPLES examples per operation${max_time:+, at most $max_time s}, bound ${BOUND}s${*:+, $*} (log: $dir/run.log)"
    local t0 rc=0
    t0=$(date +%s)
    (cd "$dir" && timeout --kill-after=10 "$BOUND" "$VENV/bin/schemathesis" "${args[@]}") >"$dir/run.log" 2>&1 || rc=$?
    echo "$(($(date +%s) - t0))" >"$dir/seconds"
    echo "$rc" >"$dir/rc"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        say "$name: stopped by the ${BOUND}s bound"
    fi
    "$VENV/bin/python" - "$dir" "$name" "$rc" <<'PY' || FAILED=1
import collections, json, pathlib, sys

d, name, rc = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ops, statuses = collections.defaultdict(collections.Counter), collections.Counter()
failures, errors, server_errors, no_response = [], [], [], 0
engine = {}
events = d / "events.ndjson"
lines = events.read_text().splitlines() if events.exists() else []
for line in lines:
    e = json.loads(line)
    kind, body = next(iter(e.items()))
    if kind == "EngineFinished":
        engine = body
    if "Error" in kind:
        errors.append(f"{kind}: {json.dumps(body)[:400]}")
    if kind != "ScenarioFinished":
        continue
    rec = body["recorder"]
    label = rec.get("label", "?")
    if body.get("phase") == "stateful":
        label = "(stateful sequences)"
    if body.get("status") == "error":
        errors.append(f"{label} ({body.get('phase')}): scenario error")
    for inter in rec.get("interactions", {}).values():
        resp = inter.get("response")
        if resp is None:
            no_response += 1
            ops[label]["no response"] += 1
            continue
        st = resp["status_code"]
        ops[label][st] += 1
        statuses[st] += 1
        if st >= 500:
            req = inter["request"]
            server_errors.append(f"{st} {req['method']} {req['uri']}")
    for checks in rec.get("checks", {}).values():
        for c in checks:
            if c.get("status") == "failure":
                failures.append(f"{label}: {c.get('name')}")
requests = sum(statuses.values()) + no_response
fivexx = sum(n for s, n in statuses.items() if s >= 500)
secs = (d / "seconds").read_text().strip()
tested = len([o for o in ops if not o.startswith("(")])
print(f"R7 schemathesis ({name} identity): {tested} operations tested, {requests} requests "
      f"in {secs}s, {fivexx} × 5xx, {len(failures)} check failures, {len(errors)} errors, "
      f"{no_response} without a response; stop: {engine.get('stop_reason', 'none (cut off)')}")
print("    statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
for label in sorted(ops):
    c = ops[label]
    print(f"    {label}: " + ", ".join(f"{s}: {n}" for s, n in sorted(c.items(), key=lambda x: str(x[0]))))
for s in sorted(set(server_errors))[:20]:
    print(f"    5xx: {s}")
for f in sorted(set(failures))[:20]:
    print(f"    failure: {f}")
for e in errors[:20]:
    print(f"    error: {e}")
bad = fivexx or failures or errors or no_response or rc != 0 or not lines or not engine
if rc != 0 and not (fivexx or failures or errors):
    print(f"    schemathesis exited {rc}: see {d / 'run.log'}")
sys.exit(1 if bad else 0)
PY
}

for identity in $IDENTITIES; do
    case "$identity" in
        store) run_one store "$ALGA_STORE_CERT" "$ALGA_STORE_KEY" "$MAX_TIME" ;;
        # The auditor's own routes only (the store run already sees every other route
        # refuse the wrong role), for half the time.
        auditor) run_one auditor "$ALGA_AUDITOR_CERT" "$ALGA_AUDITOR_KEY" \
            "${MAX_TIME:+$(((MAX_TIME + 1) / 2))}" --include-path-regex '^/(audit|tenants)/' ;;
        *) die "unknown identity '$identity' (store or auditor)" ;;
    esac
done

# The gateway survived: it still answers, and it logged no panic during the run.
if ! curl -sS --fail --max-time 10 -o /dev/null "${CURL_TLS[@]}" "$ALGA_GATEWAY_URL/healthz"; then
    say "FAILED: the gateway no longer answers /healthz after the run"
    FAILED=1
fi
PANICS=0
if [ -f "$GW_LOG" ]; then
    PANICS=$(tail -c +"$((LOG_START + 1))" "$GW_LOG" | grep -c 'panicked' || true)
fi
if [ "$PANICS" -ne 0 ]; then
    say "FAILED: $PANICS panic(s) in $GW_LOG during the run"
    FAILED=1
fi
say "$MODE mode done in $(($(date +%s) - START))s: gateway healthy afterwards, $PANICS panics logged; $([ "$FAILED" = 0 ] && echo PASSED || echo FAILED) (reports in $OUT)"
exit "$FAILED"
