#!/usr/bin/env bash
# make soak: the longer, repeated versions of the reliability scenarios
# (RELIABILITY.md). Needs `make up` (the stack's gateway, Postgres, SMTP and S3).
# Figures are printed; a failed step fails the run.
#
#   R1   100 rounds of 50 concurrent redeems of one code over two gateways, then
#        100 rounds of 1,000 (the issue's figure)
#   R2   reissue racing redeems, 1,000 trials
#   R3   connection cut after the commit, same-key retry, 100 trials
#   R5   2,000 random tamper edits
#   R8   100,000 guesses from one source and 100,000 from 1,000 loopback sources
#   R13  mixed load on two gateways + two issuers, with the R10 secret scan
#   R23  the HA topology (scripts/ha.sh) under every fault: Postgres primary SIGKILL,
#        a gateway, an issuer, the sequencer's leader killed, etcd's leader cut off
#   R7   schemathesis from /openapi.json, long mode (store and auditor identities)
#   R6   HSM sessions pulled three times under 400 mixed requests (own process);
#   R6   Postgres restarted (pg_ctl) under light load on the stack's gateway:
#        no request half-done, recovery time reported
#
# Pass or fail comes from counts and outcomes only. Time decides
# nothing on a machine that is merely slow: each step has a reference duration (its
# last run on the 2-core dev machine, RELIABILITY.md) and a hang guard of
# SOAK_HEADROOM (default 4) times that, at least 120 s, so a machine half as fast (or
# busy with a fuzz run) passes with room to spare, and only a step that hangs is cut.
# Every step reports its duration against its reference. The whole run stops by itself
# within the sum of the guards (about 80 min; a normal run takes about 20); SOAK_BUDGET
# (seconds) caps it lower, and a step that budget cuts off fails, saying so.
#
#   SOAK_ONLY=REGEX     run the steps whose name matches (r1 r1_big r2 r3 r8 r13
#                       r13_processes r23 r6_hsm r5 schemathesis r6_pg_restart)
#   SOAK_HEADROOM=N     hang guard = N × reference (default 4)
#   SOAK_BUDGET=SECS    cap on the whole run (default: the sum of the guards)
#   scripts/soak.sh --self-test
#                       no stack needed: runs the step machinery on stand-in steps
#                       that take their reference time × 2 (a machine half as fast),
#                       scaled down 100×, and checks that every one passes, that
#                       durations are reported, and that a hung step is still cut
#                       (run by `make test` through gateway/tests/it/soak_bounds.rs)
#
# R6 restarts the shared cluster: it disturbs any other test using it, which is why it
# is here and never in `make test`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

SELF_TEST=0
if [ "${1:-}" = "--self-test" ]; then
    SELF_TEST=1
    unset SOAK_ONLY SOAK_BUDGET SOAK_TIME_SCALE
fi

HEADROOM="${SOAK_HEADROOM:-4}"
[[ "$HEADROOM" =~ ^[0-9]+$ ]] && [ "$HEADROOM" -ge 2 ] || {
    echo "soak: SOAK_HEADROOM must be a whole number ≥ 2 (a machine half as fast must pass)" >&2
    exit 2
}
# Seconds are multiplied by this (the self-test runs 100× faster than real time).
SCALE="${SOAK_TIME_SCALE:-1}"

# The steps, in order: name and reference duration in seconds (the last run on the
# 2-core dev machine, RELIABILITY.md: R1 rounds, 268 s for R1 big, 190 s for R2, 15 s
# for R3, 245 s for R8, 4 s and 3 s of load for R13, 112 s for R23, 54 s for R5, 182 s for
# schemathesis, each plus start-up).
STEPS=(
    "r1 90"
    "r1_big 270"
    "r2 190"
    "r3 30"
    "r8 245"
    "r13 20"
    "r13_processes 60"
    "r23 140"
    "r6_hsm 30"
    "r5 60"
    "schemathesis 190"
    "r6_pg_restart 40"
)

# SOAK_ONLY (a regular expression over the step names) runs a subset.
only() { [[ "$1" =~ ${SOAK_ONLY:-.} ]]; }

ref_of() {
    local entry
    for entry in "${STEPS[@]}"; do
        [ "${entry%% *}" = "$1" ] && { echo "${entry##* }"; return; }
    done
    echo "soak: no step named $1" >&2
    exit 2
}

# The hang guard of a step: HEADROOM × its reference, at least 120 s (unscaled).
guard_of() {
    local g=$(($(ref_of "$1") * HEADROOM))
    [ "$g" -lt 120 ] && g=120
    echo "$g"
}

# Seconds × SCALE, as timeout(1) takes them.
scaled() { awk -v s="$1" -v k="$SCALE" 'BEGIN { printf "%.2f", s * k }'; }

GUARDS=0
for entry in "${STEPS[@]}"; do
    only "${entry%% *}" && GUARDS=$((GUARDS + $(guard_of "${entry%% *}")))
done
BUDGET="${SOAK_BUDGET:-$GUARDS}"
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "soak: SOAK_BUDGET must be a number of seconds" >&2; exit 2; }

START_NS=$(date +%s%N)
LOG_DIR="$(mktemp -d /tmp/alga-soak.XXXXXX)"
SUMMARY="$LOG_DIR/summary.txt"
FAILED=0

# Unscaled seconds since the start (what the budget counts).
elapsed() { awk -v n="$(($(date +%s%N) - START_NS))" -v k="$SCALE" 'BEGIN { printf "%d", n / 1e9 / k }'; }

# step NAME CMD...: runs CMD under the step's hang guard (capped by what is left of
# SOAK_BUDGET), keeps its output, prints its duration against its reference and the
# figure lines (R<n>: …). Pass or fail is CMD's exit status; the guard only cuts a
# step that hangs.
step() {
    local name="$1"
    shift
    only "$name" || return 0
    local ref guard left secs cap=""
    ref=$(ref_of "$name")
    guard=$(guard_of "$name")
    left=$((BUDGET - $(elapsed)))
    if [ "$left" -le 10 ]; then
        echo "soak: $name: NOT RUN (SOAK_BUDGET of ${BUDGET}s spent)" | tee -a "$SUMMARY"
        FAILED=1
        return
    fi
    secs=$guard
    [ "$secs" -gt "$left" ] && { secs=$left; cap=" (capped by SOAK_BUDGET)"; }
    echo "soak: $name (reference ${ref}s, hang guard ${secs}s${cap})…"
    local t0 rc=0 took
    t0=$(date +%s%N)
    timeout --kill-after=10 "$(scaled "$secs")" "$@" >"$LOG_DIR/$name.log" 2>&1 || rc=$?
    took=$(awk -v n="$(($(date +%s%N) - t0))" -v k="$SCALE" 'BEGIN { printf "%.1f", n / 1e9 / k }')
    local vs
    vs=$(awk -v t="$took" -v r="$ref" 'BEGIN { printf "%.1f", t / r }')
    if [ "$rc" = 0 ]; then
        echo "soak: $name: ok in ${took}s (${vs}× its ${ref}s reference)" | tee -a "$SUMMARY"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        if [ -n "$cap" ]; then
            echo "soak: $name: FAILED: cut by SOAK_BUDGET after ${took}s (its own guard is ${guard}s; log: $LOG_DIR/$name.log)" | tee -a "$SUMMARY"
        else
            echo "soak: $name: FAILED: hung: still running after its ${secs}s guard (${HEADROOM}× its ${ref}s reference; log: $LOG_DIR/$name.log)" | tee -a "$SUMMARY"
        fi
        FAILED=1
    else
        echo "soak: $name: FAILED (exit $rc) after ${took}s (log: $LOG_DIR/$name.log)" | tee -a "$SUMMARY"
        tail -20 "$LOG_DIR/$name.log" | grep -E 'panicked|assert|left|right|Error' || true
        FAILED=1
    fi
    grep -E '^R[0-9]+' "$LOG_DIR/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY" || true
}

finish() {
    echo
    echo "soak summary ($(elapsed)s of a ${BUDGET}s budget; logs in $LOG_DIR):"
    cat "$SUMMARY"
    exit "$FAILED"
}

# ------------------------------------------------------------------------ self-test
if [ "$SELF_TEST" = 1 ]; then
    # Every step stands in as a sleep of twice its reference (a machine half as fast),
    # 100× faster than real time; then one step that hangs (ten times its reference)
    # must be cut by its guard and fail the run. The other way round, the guards must
    # leave the room: checked first, as arithmetic.
    for entry in "${STEPS[@]}"; do
        name="${entry%% *}"
        [ "$(guard_of "$name")" -ge "$((2 * $(ref_of "$name")))" ] || {
            echo "soak self-test: FAILED: $name's guard $(guard_of "$name")s leaves no room for a machine half as fast" >&2
            exit 1
        }
    done
    refs=0
    for entry in "${STEPS[@]}"; do refs=$((refs + ${entry##* })); done
    [ "$BUDGET" -ge "$((2 * refs))" ] || {
        echo "soak self-test: FAILED: the default budget leaves no room for a machine half as fast" >&2
        exit 1
    }
    trap 'rm -rf "$LOG_DIR"' EXIT
    SCALE=0.01
    for entry in "${STEPS[@]}"; do
        name="${entry%% *}"
        step "$name" sleep "$(scaled "$((2 * $(ref_of "$name")))")"
    done
    if [ "$FAILED" != 0 ]; then
        echo "soak self-test: FAILED: a step at half speed did not pass"
        cat "$SUMMARY"
        exit 1
    fi
    STEPS+=("hang 30")
    step hang sleep "$(scaled 300)"
    if [ "$FAILED" != 1 ] || ! grep -q "hang: FAILED: hung" "$SUMMARY"; then
        echo "soak self-test: FAILED: a hung step was not cut by its guard"
        cat "$SUMMARY"
        exit 1
    fi
    echo
    cat "$SUMMARY"
    echo "soak self-test: PASSED: ${#STEPS[@]} stand-in steps; every step at half speed passed with its duration reported, and a hung step was cut by its guard"
    exit 0
fi

# ---------------------------------------------------------------------- the real run
[ -f .dev/env ] || { echo "soak: no .dev/env: run make up first" >&2; exit 2; }
set -a
# shellcheck disable=SC1091
. .dev/env
set +a

# The gateway's reliability tests one at a time (the scenario owns the machine).
GW_TEST=(cargo test -q -p alga-gateway --test it)

# Builds are not part of the scenarios: their bounds only catch a hang (a cold build on
# 2 slow cores takes several minutes).
echo "soak: building the binaries and the test binaries…"
timeout 3600 cargo build -q --workspace --bins >"$LOG_DIR/build-bins.log" 2>&1 || {
    tail -30 "$LOG_DIR/build-bins.log"
    exit 1
}
timeout 3600 cargo test -q -p alga-gateway -p alga-audit -p softhsm-tests --no-run >"$LOG_DIR/build.log" 2>&1 || {
    tail -30 "$LOG_DIR/build.log"
    exit 1
}

step r1 env ALGA_SOAK=100 ALGA_R1_REQUESTS="${SOAK_R1_REQUESTS:-50}" \
    "${GW_TEST[@]}" reliability::r1_ -- --nocapture
step r1_big env ALGA_SOAK="${SOAK_R1_BIG_ROUNDS:-100}" ALGA_R1_REQUESTS=1000 \
    "${GW_TEST[@]}" reliability::r1_ -- --nocapture
step r2 env ALGA_SOAK="${SOAK_R2_SCALE:-40}" "${GW_TEST[@]}" reliability::r2 -- --nocapture
step r3 env ALGA_R3_TRIALS="${SOAK_R3_TRIALS:-100}" "${GW_TEST[@]}" cut_after_commit::r3_ -- --nocapture
step r8 env ALGA_R8_SINGLE="${SOAK_R8_SINGLE:-100000}" ALGA_R8_SOURCES="${SOAK_R8_SOURCES:-1000}" \
    ALGA_R8_PER_SOURCE="${SOAK_R8_PER_SOURCE:-100}" "${GW_TEST[@]}" reliability::r8 -- --nocapture
step r13 env ALGA_SOAK=3 "${GW_TEST[@]}" reliability::r13 -- --nocapture
step r13_processes env ALGA_R13_TENANTS="${SOAK_R13_TENANTS:-24}" \
    cargo test -q -p softhsm-tests --test it two_issuers -- --nocapture
step r23 env ALGA_R23_FAULTS="${SOAK_R23_FAULTS:-all}" \
    cargo test -q -p softhsm-tests --test it ha:: -- --nocapture
step r6_hsm env ALGA_R6_REQUESTS="${SOAK_R6_REQUESTS:-400}" "${GW_TEST[@]}" hsm_session_loss::r6_ -- --nocapture
step r5 env ALGA_SOAK=2 cargo test -q -p alga-audit --test it tamper_random -- --nocapture

# R7's API part: schemathesis from the gateway's /openapi.json (store, then auditor).
# It stops itself at its --max-time (120 s, 60 s for the auditor); its own wall-clock
# backstop gets the same headroom.
step schemathesis env SCHEMATHESIS_MODE=long SCHEMATHESIS_TIMEOUT="${SCHEMATHESIS_TIMEOUT:-$((120 * HEADROOM))}" \
    bash scripts/schemathesis.sh

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
    # Recovery: the first registration answered 201 after the restart began. Waited
    # for by count, not by time: until one has, or until the light load's 600
    # requests are all done (each bounded by curl's --max-time), however slow.
    while :; do
        for f in $(ls -tr "$out"/time.* 2>/dev/null); do
            local n=${f##*.}
            local t
            t=$(cat "$f")
            if awk "BEGIN{exit !($t > $t1)}" && [ "$(cat "$out/status.$n" 2>/dev/null)" = 201 ]; then
                t_ok=$t
                break 2
            fi
        done
        kill -0 "$load" 2>/dev/null || break
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
step r6_pg_restart bash -c r6_pg_restart

finish
