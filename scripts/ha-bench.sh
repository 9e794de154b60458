#!/usr/bin/env bash
# scripts/ha-bench.sh: BENCHMARKS.md H1, run by scripts/bench.sh: check-ins/s through
# HAProxy with two gateways against one, in the same run.
#
# Brings the HA topology up (scripts/ha.sh) in a private directory on free loopback
# ports, registers and redeems one pro appliance through HAProxy, then runs `ab` (new
# mutual-TLS connection per request, as P1; 8 clients at once, each checking in its
# own appliance) against HAProxy's POST /check-in in alternating windows: both gateways in the backend, then gateway2
# set to maintenance through HAProxy's runtime API (every check-in goes to gateway1).
# Prints `key value` lines (h1_two_per_s, h1_one_per_s, h1_ratio, h1_failed) and a
# summary on stderr. The binaries are the dev stack's (ALGA_BIN_DIR, a debug build). The topology is stopped on exit, however the script ends.
#
#   --smoke   small windows (proves the harness; make test)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if [ -z "${ALGA_DEV_DIR:-}" ]; then
    [ -f "$ROOT/.dev/env" ] || { echo "ha-bench: no .dev/env: run make up first" >&2; exit 2; }
    set -a
    # shellcheck source=/dev/null
    . "$ROOT/.dev/env"
    set +a
fi
command -v ab >/dev/null || { echo "ha-bench: ab (apache2-utils) missing: run make up" >&2; exit 2; }

WINDOWS=$((SMOKE ? 1 : 4))   # per mode, alternating
N=$((SMOKE ? 40 : 600))
CONC=8

WORK="$(mktemp -d /tmp/alga-ha-bench.XXXXXX)"
chmod 0755 "$WORK"
BASE="$(python3 -c '
import socket, os
for k in range(300):
    base = 20000 + (os.getpid() % 300 + k) % 300 * 100
    try:
        socks = []
        for p in range(1, 63):
            s = socket.socket(); s.bind(("127.0.0.1", base + p)); socks.append(s)
        print(base); break
    except OSError:
        continue
')"
export ALGA_HA_DIR="$WORK/ha" ALGA_HA_PORT_BASE="$BASE" ALGA_HA_BIN_DIR="${ALGA_BIN_DIR:?}"
cleanup() {
    bash "$ROOT/scripts/ha.sh" down >"$WORK/down.log" 2>&1 || cat "$WORK/down.log" >&2
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "ha-bench: bringing the HA topology up (ports from $BASE)" >&2
bash "$ROOT/scripts/ha.sh" up >"$WORK/up.log" 2>&1 || { tail -40 "$WORK/up.log" >&2; exit 1; }
set -a
# shellcheck source=/dev/null
. "$ALGA_HA_DIR/env"
set +a
URL="https://127.0.0.1:$((BASE + 40))"

# APPLIANCES pro appliances, registered and redeemed through HAProxy: concurrent
# check-ins of one appliance queue on its row, so each client checks in its own.
appliance() { # N
    local label="hab-$$-$1-$(date +%s)" email code
    email="$label@bench.test"
    printf '{"company":"HA bench %s","contact":{"name":"Bench","email":"%s"},"edition":"pro"}' "$label" "$email" \
        | curl -sS --fail-with-body --max-time 20 --cacert "$ALGA_CA_BUNDLE" --cert "$ALGA_STORE_CERT" --key "$ALGA_STORE_KEY" \
            -H 'content-type: application/json' -H "Idempotency-Key: $label" --data-binary @- \
            "$ALGA_HA_GATEWAY_URL/register-tenant" >"$WORK/reg-$1.json"
    code="$(/usr/bin/python3 -B - "$ALGA_MAIL_DIR" "$email" <<'PY'
import email, glob, re, sys, time
d, rcpt = sys.argv[1], sys.argv[2]
needle = ("X-Alga-Sink-Rcpt-To: <%s>" % rcpt).encode()
for _ in range(300):
    for f in glob.glob(d + "/*.eml"):
        raw = open(f, "rb").read()
        if needle not in raw:
            continue
        for part in email.message_from_bytes(raw).walk():
            if part.get_content_type() == "text/plain":
                m = re.search(r"Install code:\s*([0-9A-Za-z-]+)", part.get_payload(decode=True).decode())
                if m:
                    print(m.group(1))
                    sys.exit(0)
    time.sleep(0.1)
sys.exit("no mail with an install code for " + rcpt)
PY
)"
    printf '%s\n' "$code" | "$ALGA_BIN_DIR/alga-appliance" redeem --service-url "$ALGA_HA_GATEWAY_URL" \
        --hostname "bench-appliance-$1" --ca-bundle "$ALGA_CA_BUNDLE" --trust-root "$ALGA_TRUST_ROOT" \
        --out "$WORK/app-$1" >"$WORK/redeem-$1.log" 2>&1 || { cat "$WORK/redeem-$1.log" >&2; return 1; }
    # ab wants the client certificate and its key in one PEM file.
    ( umask 077; /usr/bin/python3 -B - "$WORK/app-$1/appliance-license-seed.yaml" >"$WORK/app-$1.pem" <<'PY'
import base64, sys
vals = {}
for line in open(sys.argv[1]):
    if line.startswith("  ") and ":" in line:
        k, v = line.strip().split(":", 1)
        vals[k] = v.strip()
sys.stdout.write(base64.b64decode(vals["APPLIANCE_CERT"]).decode())
sys.stdout.write(base64.b64decode(vals["APPLIANCE_KEY"]).decode())
PY
    )
}
for ((a = 1; a <= CONC; a++)); do appliance "$a"; done
printf '{"appliance":{"version":"1.0.0"}}' >"$WORK/body.json"

# window MODE W: CONC ab clients at once, each one appliance, one request at a time;
# appends "MODE check-ins/s complete failed non-2xx" to results.
window() {
    local a t0 t1
    t0="$(date +%s.%N)"
    for ((a = 1; a <= CONC; a++)); do
        ab -q -n "$((N / CONC))" -c 1 -E "$WORK/app-$a.pem" -p "$WORK/body.json" -T application/json \
            "$URL/check-in" >"$WORK/ab-$1-$2-$a.txt" 2>&1 &
    done
    wait
    t1="$(date +%s.%N)"
    # ab counts answers of another length than the first as failed ("Length"): every
    # license differs, so only connect, receive and other exceptions count.
    cat "$WORK"/ab-"$1"-"$2"-*.txt | awk -v m="$1" -v secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" '
        /^Complete requests:/ { c += $3 }
        /^   \(Connect:/ { gsub(/[(),]/, " "); f += $2 + $4 + $8 }
        /^Non-2xx responses:/ { n += $3 }
        END { printf "%s %.1f %d %d %d\n", m, c / secs, c, f, n }' >>"$WORK/results"
}

maint() { bash "$ROOT/scripts/ha.sh" haproxy-cmd "set server gateways/gateway2 state $1" >/dev/null; }
# Both gateways UP in HAProxy's eyes before the first window.
for _ in $(seq 1 100); do
    up="$(bash "$ROOT/scripts/ha.sh" haproxy-cmd 'show servers state gateways' | awk '$4 ~ /^gateway/ && $6 == 2' | wc -l)"
    [ "$up" = 2 ] && break
    sleep 0.1
done
: >"$WORK/results"
for ((w = 1; w <= WINDOWS; w++)); do
    maint ready
    sleep 0.5
    window two "$w"
    maint maint
    sleep 0.5
    window one "$w"
done
maint ready

# The two modes' rates: total check-ins ÷ total time over their windows.
awk '
    { per[$1] += $3; t[$1] += ($2 > 0 ? $3 / $2 : 0); fail += $4 + $5 }
    END {
        two = (t["two"] > 0 ? per["two"] / t["two"] : 0)
        one = (t["one"] > 0 ? per["one"] / t["one"] : 0)
        printf "h1_two_per_s %.1f\nh1_one_per_s %.1f\nh1_ratio %.2f\nh1_failed %d\nh1_checkins %d\n", two, one, (one > 0 ? two / one : 0), fail, per["two"] + per["one"]
    }' "$WORK/results" | tee "$WORK/summary"
{
    echo "ha-bench: windows (mode, check-ins/s, complete, failed, non-2xx):"
    sed 's/^/    /' "$WORK/results"
} >&2
# A failed check-in makes the figure meaningless: say so, fail.
[ "$(awk '$1 == "h1_failed" { print $2 }' "$WORK/summary")" = 0 ] || { echo "ha-bench: check-ins failed" >&2; exit 1; }
