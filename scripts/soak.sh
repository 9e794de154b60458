#!/usr/bin/env bash
# make soak: the longer, repeated versions of the reliability scenarios
# (RELIABILITY.md), bounded: each step has its own time limit and the whole run stops
# by itself within SOAK_BUDGET seconds (default 1200). Needs `make up` (the stack's
# gateway, Postgres, SMTP and S3). Figures are printed; a failed step fails the run.
#
#   R1   100 rounds of 50 concurrent redeems of one code over two gateways, then
#        100 rounds of 1,000 (the issue's figure)
#   R2   reissue racing redeems, 1,000 trials
#   R3   connection cut after the commit, same-key retry, 100 trials
#   R5   2,000 random tamper edits
#   R8   100,000 guesses from one source and 100,000 from 1,000 loopback sources
#   R13  mixed load on two gateways + two issuers, with the R10 secret scan
#   R7   schemathesis from /openapi.json, long mode (store and auditor identities)
#   R6   HSM sessions pulled three times under 400 mixed requests (own process);
#   R6   Postgres restarted (pg_ctl) under light load on the stack's gateway:
#        no request half-done, recovery time reported
#
# R6 restarts the shared cluster: it disturbs any other test using it, which is why it
# is here and never in `make test`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
[ -f .dev/env ] || { echo "soak: no .dev/env: run make up first" >&2; exit 2; }
set -a
# shellcheck disable=SC1091
. .dev/env
set +a

BUDGET="${SOAK_BUDGET:-1200}"
START=$(date +%s)
LOG_DIR="$(mktemp -d /tmp/alga-soak.XXXXXX)"
SUMMARY="$LOG_DIR/summary.txt"
FAILED=0

left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME SECONDS CMD...: runs CMD with a bound (capped by what is left of the
# budget), keeps its output, prints the figure lines (R<n>: …).
step() {
    local name="$1" secs="$2"
    shift 2
    local l
    l=$(left)
    if [ "$l" -le 10 ]; then
        echo "soak: $name: SKIPPED (budget spent)" | tee -a "$SUMMARY"
        FAILED=1
        return
    fi
    [ "$secs" -gt "$l" ] && secs=$l
    echo "soak: $name (≤ ${secs}s)…"
    if timeout --kill-after=10 "$secs" "$@" >"$LOG_DIR/$name.log" 2>&1; then
        echo "soak: $name: ok" | tee -a "$SUMMARY"
    else
        echo "soak: $name: FAILED (log: $LOG_DIR/$name.log)" | tee -a "$SUMMARY"
        tail -20 "$LOG_DIR/$name.log" | grep -E 'panicked|assert|left|right|Error' || true
        FAILED=1
    fi
    grep -E '^R[0-9]+' "$LOG_DIR/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY" || true
}

# The gateway's reliability tests one at a time (the scenario owns the machine).
GW_TEST=(cargo test -q -p alga-gateway --test it)

echo "soak: building the binaries and the test binaries…"
timeout 900 cargo build -q --workspace --bins >"$LOG_DIR/build-bins.log" 2>&1 || {
    tail -30 "$LOG_DIR/build-bins.log"
    exit 1
}
timeout 600 cargo test -q -p alga-gateway -p alga-audit -p softhsm-tests --no-run >"$LOG_DIR/build.log" 2>&1 || {
    tail -30 "$LOG_DIR/build.log"
    exit 1
}

# SOAK_ONLY (a regular expression over the step names) runs a subset.
only() { [[ "$1" =~ ${SOAK_ONLY:-.} ]]; }
only r1 && step r1 300 env ALGA_SOAK=100 ALGA_R1_REQUESTS="${SOAK_R1_REQUESTS:-50}" \
    "${GW_TEST[@]}" reliability::r1_ -- --nocapture
only r1_big && step r1_big 420 env ALGA_SOAK="${SOAK_R1_BIG_ROUNDS:-100}" ALGA_R1_REQUESTS=1000 \
    "${GW_TEST[@]}" reliability::r1_ -- --nocapture
only r2 && step r2 420 env ALGA_SOAK="${SOAK_R2_SCALE:-40}" "${GW_TEST[@]}" reliability::r2 -- --nocapture
only r3 && step r3 120 env ALGA_R3_TRIALS="${SOAK_R3_TRIALS:-100}" "${GW_TEST[@]}" cut_after_commit::r3_ -- --nocapture
only r8 && step r8 480 env ALGA_R8_SINGLE="${SOAK_R8_SINGLE:-100000}" ALGA_R8_SOURCES="${SOAK_R8_SOURCES:-1000}" \
    ALGA_R8_PER_SOURCE="${SOAK_R8_PER_SOURCE:-100}" "${GW_TEST[@]}" reliability::r8 -- --nocapture
only r13 && step r13 60 env ALGA_SOAK=3 "${GW_TEST[@]}" reliability::r13 -- --nocapture
only r13 && step r13_processes 180 env ALGA_R13_TENANTS="${SOAK_R13_TENANTS:-24}" \
    cargo test -q -p softhsm-tests --test it two_issuers -- --nocapture
only r6_hsm && step r6_hsm 180 env ALGA_R6_REQUESTS="${SOAK_R6_REQUESTS:-400}" "${GW_TEST[@]}" hsm_session_loss::r6_ -- --nocapture
only r5 && step r5 120 env ALGA_SOAK=2 cargo test -q -p alga-audit --test it tamper_random -- --nocapture

# R7's API part: schemathesis from the gateway's /openapi.json (store, then auditor).
only schemathesis && step schemathesis 300 env SCHEMATHESIS_MODE=long bash scripts/schemathesis.sh

# ------------------------------------------------------------------------- R6: pg_ctl
r6_pg_restart() {
    local url="$ALGA_GATEWAY_URL" out="$LOG_DIR/r6"
    mkdir -p "$out"
    local curl_id=(--cacert "$ALGA_CA_BUNDLE" --cert "$ALGA_STORE_CERT" --key "$ALGA_STORE_KEY")
    # Light load: one registration every 100 ms, each answer kept (status + body).
    (
        i=0
        while [ ! -e "$out/stop" ] && [ "$i" -lt 600 ]; do
            i=$((i + 1))
            curl -sS --max-time 10 "${curl_id[@]}" -o "$out/body.$i" -w '%{http_code}\n' \
                -H 'content-type: application/json' \
                -H "Idempotency-Key: soak-r6-$$-$i" \
                -d "{\"company\":\"Soak R6 $$ $i\",\"contact\":{\"name\":\"Ops\",\"email\":\"soak-r6@acme.test\"},\"edition\":\"pro\"}" \
                "$url/register-tenant" >"$out/status.$i" 2>/dev/null || echo 000 >"$out/status.$i"
            date +%s.%N >"$out/time.$i"
            sleep 0.1
        done
    ) &
    local load=$!
    sleep 3
    local pg_user
    pg_user=$(stat -c %U "$ALGA_PG_DATA")
    local t0 t1 t_ok=""
    t0=$(date +%s.%N)
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u "$pg_user" -- "$ALGA_PG_BIN/pg_ctl" -D "$ALGA_PG_DATA" -m fast -w restart >/dev/null)
    else
        "$ALGA_PG_BIN/pg_ctl" -D "$ALGA_PG_DATA" -m fast -w restart >/dev/null
    fi
    t1=$(date +%s.%N)
    # Recovery: the first registration answered 201 after the restart began.
    for _ in $(seq 1 300); do
        for f in $(ls -tr "$out"/time.* 2>/dev/null); do
            local n=${f##*.}
            local t
            t=$(cat "$f")
            if awk "BEGIN{exit !($t > $t1)}" && [ "$(cat "$out/status.$n" 2>/dev/null)" = 201 ]; then
                t_ok=$t
                break 2
            fi
        done
        sleep 0.1
    done
    sleep 2
    touch "$out/stop"
    wait "$load" || true
    local total ok fivexx other
    total=$(cat "$out"/status.* | wc -l)
    ok=$(grep -lx 201 "$out"/status.* | wc -l)
    fivexx=$(grep -lE '^5' "$out"/status.* | wc -l)
    other=$((total - ok - fivexx))
    # No request half-done: every 201 names a tenant that exists with its install code
    # and its outbox mail; no tenant of this run exists without its code.
    local missing=0
    for f in $(grep -lx 201 "$out"/status.*); do
        local n=${f##*.} tid
        tid=$(sed -n 's/.*"tenant_id":"\([0-9a-f-]*\)".*/\1/p' "$out/body.$n")
        local c
        c=$(psql -qAtX -d "$DATABASE_URL" -c "SELECT count(*) FROM install_codes c JOIN mail_outbox m USING (code_id) WHERE c.tenant_id = '$tid'")
        [ "$c" = 1 ] || missing=$((missing + 1))
    done
    local orphans
    orphans=$(psql -qAtX -d "$DATABASE_URL" -c "SELECT count(*) FROM tenants t WHERE t.company LIKE 'Soak R6 $$ %' AND NOT EXISTS (SELECT 1 FROM install_codes c WHERE c.tenant_id = t.tenant_id)")
    local restart recovery
    restart=$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")
    recovery=$(awk "BEGIN{ if (\"$t_ok\" == \"\") print \"never\"; else printf \"%.2f\", $t_ok - $t0}")
    echo "R6 (pg_ctl restart under light load): restart took ${restart}s, first 201 after ${recovery}s; $total requests: $ok × 201, $fivexx × 5xx, $other other; 201s without their code+mail: $missing; tenants without a code: $orphans"
    [ -n "$t_ok" ] && [ "$missing" = 0 ] && [ "$orphans" = 0 ]
}
export -f r6_pg_restart
export LOG_DIR
only r6 && step r6_pg_restart 120 bash -c r6_pg_restart

echo
echo "soak summary ($(($(date +%s) - START))s; logs in $LOG_DIR):"
cat "$SUMMARY"
exit "$FAILED"
