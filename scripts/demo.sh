#!/usr/bin/env bash
# scripts/demo.sh: the guided journey of alga-license (`make demo` runs it after `make up`).
#
# It walks the seed's whole path against the local stack, narrating each step:
#   register (pro + essentials) -> the mail as the SMTP server received it -> the ISO
#   through the presigned link -> redeem (Secrets) -> bootstrap adopts the tenant ->
#   check-in -> rebuild (re-issue, old code refused, new code redeems) -> the old appliance
#   retired (its check-in refused, the new one's accepted, `tenant show`: replaced by the new)
#   -> an air-gapped install (request file with no network, relay, a tampered answer refused,
#   the answer verified and installed, then an offline refresh; its replay refused) -> suspension (check-in refused, resume, accepted again) -> appliances by health
#   -> audit verified -> an outside witness follows the transparency log (accepts and
#   cosigns a first checkpoint, then the next one once new records are signed) -> the
#   customer's own records proven offline (algactl audit tenant, alga-audit verify-proof,
#   no database) -> an independent verifier agrees (scripts/tlog_verify.py) -> summary table.
#
# The transparency-log steps wait for the sequencer's next signed checkpoint (every 60 s or
# 1000 records in the dev policy): at most ALGA_DEMO_CHECKPOINT_TIMEOUT (75) seconds, once;
# the witness comes first so that the checkpoint it waits for also covers the customer's records.
#
# Every run uses fresh company names and contact addresses, so it can be re-run at will.
# Its files go to .dev/demo/<run>/; the throwaway appliance database is dropped at the end.
# Needs: the stack up (.dev/env), jq, curl, psql, Debian's python3 (for MIME decoding).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
ENV_FILE="${ALGA_ENV_FILE:-$ROOT/.dev/env}"
PY=/usr/bin/python3
MAIL_TIMEOUT="${ALGA_DEMO_MAIL_TIMEOUT:-30}"
CHECKPOINT_TIMEOUT="${ALGA_DEMO_CHECKPOINT_TIMEOUT:-75}"

# ------------------------------------------------------------------------- narration

if [ -t 1 ]; then B=$'\e[1m' D=$'\e[2m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'; else B="" D="" G="" R="" N=""; fi
STEP_NO=0
STEP="preflight"
SUMMARY=()

step() {
    STEP_NO=$((STEP_NO + 1))
    STEP="$STEP_NO. $1"
    printf '\n%s== %s ==%s\n' "$B" "$STEP" "$N"
    shift
    printf '%s\n' "$*" | fold -s -w 92 | sed 's/ *$//'
}
show() { printf '%s\n' "$@" | sed "s/^/    /"; }
ok() { printf '  %s✓ %s%s\n' "$G" "$*" "$N"; }
record() { SUMMARY+=("$1"$'\t'"$2"$'\t'"$3"); }
fail() {
    printf '\n%sDEMO FAILED at step "%s":%s %s\n' "$R" "$STEP" "$N" "$*" >&2
    # told once: a failure inside $(...) also trips the ERR trap of the main shell
    [ -n "${WORK:-}" ] && [ -d "$WORK" ] && : >"$WORK/.failed"
    exit 1
}
on_error() {
    local rc=$? line=$1
    [ -n "${WORK:-}" ] && [ -e "$WORK/.failed" ] && exit "$rc"
    printf '\n%sDEMO FAILED at step "%s"%s (command at scripts/demo.sh:%s exited %s)\n' \
        "$R" "$STEP" "$N" "$line" "$rc" >&2
    exit "$rc"
}
trap 'on_error $LINENO' ERR

# ------------------------------------------------------------------------- preflight

[ -f "$ENV_FILE" ] || fail "$ENV_FILE missing: start the stack with make up (or make demo)"
set -a
# shellcheck source=/dev/null
. "$ENV_FILE"
set +a
for v in ALGA_GATEWAY_URL ALGA_ISSUER_URL ALGA_CA_BUNDLE ALGA_TRUST_ROOT ALGA_BIN_DIR ALGA_MAIL_DIR DATABASE_URL \
    ALGA_GATEWAY_CLIENT_CERT ALGA_GATEWAY_CLIENT_KEY ALGA_S3_OBJECT_SHA256; do
    [ -n "${!v:-}" ] || fail "$v is not set in $ENV_FILE (re-run make up)"
done
for t in jq curl psql sha256sum base64; do
    command -v "$t" >/dev/null || fail "$t is not installed (make deps installs it)"
done
[ -x "$PY" ] || fail "$PY missing (Debian's python3; make deps installs it)"
for b in algactl alga-appliance alga-audit; do
    [ -x "$ALGA_BIN_DIR/$b" ] || fail "$ALGA_BIN_DIR/$b not built (make build)"
done
ALGACTL="$ALGA_BIN_DIR/algactl"
APPLIANCE="$ALGA_BIN_DIR/alga-appliance"
AUDIT="$ALGA_BIN_DIR/alga-audit"
curl -sS -o /dev/null --max-time 5 --cacert "$ALGA_CA_BUNDLE" "$ALGA_GATEWAY_URL/healthz" \
    || fail "the gateway at $ALGA_GATEWAY_URL does not answer /healthz (make up; make status)"

RUN_ID="$(date -u +%Y%m%d-%H%M%S)-$(openssl rand -hex 3 2>/dev/null || printf '%04x' $RANDOM)"
WORK="$ROOT/.dev/demo/$RUN_ID"
mkdir -p -m 0700 "$WORK"
APP_DB="demo_appliance_${RUN_ID//-/_}"
APP_DB_CREATED=0
cleanup() {
    if [ "$APP_DB_CREATED" = 1 ]; then
        psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $APP_DB" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# --------------------------------------------------------------------------- helpers

# offline CMD...: runs CMD with no network (an empty network namespace when this user may
# make one, else with the service URL pointing where nothing listens): the appliance side
# of an air-gapped install.
if unshare -n true 2>/dev/null; then
    OFFLINE_HOW="an empty network namespace"
    offline() { unshare -n "$@"; }
else
    OFFLINE_HOW="the service URL points where nothing listens"
    offline() { ALGA_LICENSE_SERVICE_URL=https://127.0.0.1:9 "$@"; }
fi

# The newest mail to $1 whose install code starts with code id $2; waits for it.
wait_mail() {
    local rcpt="$1" code_id="$2" i f
    for ((i = 0; i < MAIL_TIMEOUT * 4; i++)); do
        for f in $(grep -l -F -- "X-Alga-Sink-Rcpt-To: <$rcpt>" "$ALGA_MAIL_DIR"/*.eml 2>/dev/null || true); do
            if [[ "$(mail_field "$f" code | tr -d '-' | tr '[:lower:]' '[:upper:]')" == "$code_id"* ]]; then
                printf '%s\n' "$f"
                return 0
            fi
        done
        sleep 0.25
    done
    fail "no mail to $rcpt with code $code_id reached $ALGA_MAIL_DIR within ${MAIL_TIMEOUT}s (is the SMTP sink up? see .dev/logs/gateway.log)"
}

# mail_field FILE {subject|to|message-id|text|code|link}: decoded with Python's email package.
mail_field() {
    "$PY" -B - "$1" "$2" <<'EOF'
import email, email.policy, re, sys
msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
what = sys.argv[2]
if what in ("subject", "to", "message-id"):
    print(msg[what] or "")
    sys.exit(0)
part = msg.get_body(preferencelist=("plain",))
text = part.get_content() if part else ""
if what == "text":
    print(text.rstrip())
elif what == "code":
    m = re.search(r"Install code:\s*([0-9A-Za-z]{5}(?:-[0-9A-Za-z]{5})+)", text)
    print(m.group(1) if m else "")
elif what == "link":
    m = re.search(r"(https?://\S+)", text)
    print(m.group(1) if m else "")
EOF
}

# Prints the Secret manifests of $1 with their data decoded and secret values truncated.
show_secrets() {
    "$PY" -B - "$1" <<'EOF'
import base64, os, sys
d = sys.argv[1]
secret = {"LICENSE_TOKEN", "APPLIANCE_KEY"}
for name in ("appliance-initial-tenant.yaml", "appliance-license-seed.yaml"):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        continue
    print(f"# {name} (data decoded from base64 for display)")
    in_data = False
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("data:"):
            in_data = True
            print(line)
            continue
        if in_data and line.startswith("  ") and ":" in line:
            k, v = line.strip().split(":", 1)
            val = base64.b64decode(v.strip()).decode("utf-8", "replace")
            first = val.strip().splitlines()[0] if val.strip() else ""
            if k in secret:
                shown = first[:16] + "… (truncated, " + str(len(val)) + " bytes)"
            elif "\n" in val.strip():
                shown = first + " … (" + str(val.count("BEGIN CERTIFICATE")) + " certificate(s))"
            else:
                shown = val
            print(f"  {k}: {shown}")
        else:
            in_data = False
            print(line)
    print()
EOF
}

# redeem CODE OUT_DIR HOSTNAME LOG: alga-appliance redeem (the code on stdin); returns its exit
# code. A redeem refused as busy (exit 21) is retried for up to a minute: back-to-back runs can
# use up the dev policy's redeem rate limit per source address (10 a minute), and a refused
# attempt consumes nothing.
redeem() {
    local code="$1" out="$2" host="$3" log="$4" rc i
    for ((i = 0; i < 12; i++)); do
        rc=0
        printf '%s\n' "$code" | "$APPLIANCE" redeem --service-url "$ALGA_GATEWAY_URL" \
            --ca-bundle "$ALGA_CA_BUNDLE" --trust-root "$ALGA_TRUST_ROOT" --out "$out" \
            --hostname "$host" >"$log" 2>&1 || rc=$?
        [ "$rc" = 21 ] || return "$rc"
        printf '  %s(the service is busy: redeem rate limit of back-to-back runs; retrying in 6s)%s\n' "$D" "$N"
        sleep 6
    done
    return "$rc"
}

# The size of the transparency log's newest signed checkpoint (0 before the first one).
checkpoint_size() {
    local size
    size="$(curl -sS --fail --max-time 5 --cacert "$ALGA_CA_BUNDLE" "$ALGA_GATEWAY_URL/audit/log/checkpoint" 2>/dev/null \
        | sed -n 2p)" || true
    [[ "$size" =~ ^[0-9]+$ ]] && printf '%s\n' "$size" || printf '0\n'
}

# wait_checkpoint MIN_SIZE WHY: waits until the newest checkpoint has at least MIN_SIZE records
# (bounded by CHECKPOINT_TIMEOUT, saying so while it waits); sets CP_SIZE.
wait_checkpoint() {
    local want="$1" why="$2" start=$SECONDS
    CP_SIZE="$(checkpoint_size)"
    [ "$CP_SIZE" -ge "$want" ] && return 0
    printf '  %s(waiting up to %ss for %s, size %s or more (the newest: %s); the sequencer has the\n   log key sign one every 60 s or 1000 records)%s\n' \
        "$D" "$CHECKPOINT_TIMEOUT" "$why" "$want" "$CP_SIZE" "$N"
    while [ $((SECONDS - start)) -lt "$CHECKPOINT_TIMEOUT" ]; do
        sleep 0.5
        CP_SIZE="$(checkpoint_size)"
        if [ "$CP_SIZE" -ge "$want" ]; then
            printf '  %s(the checkpoint of size %s was signed after %ss)%s\n' "$D" "$CP_SIZE" "$((SECONDS - start))" "$N"
            return 0
        fi
    done
    fail "no checkpoint of size $want or more within ${CHECKPOINT_TIMEOUT}s (the newest has size $CP_SIZE; see .dev/logs/gateway.log: 'audit log checkpoint')"
}

secret_value() { # secret_value DIR FILE KEY
    local v
    v="$(sed -n "s/^  $3: //p" "$1/$2")"
    [ -n "$v" ] && printf '%s' "$v" | base64 -d
}

# ------------------------------------------------------------------------------ journey

printf '%salga-license demo%s — run %s, files in %s\n' "$B" "$N" "$RUN_ID" "${WORK#"$ROOT"/}"
printf 'Gateway %s, issuer %s, mail sink %s\n' "$ALGA_GATEWAY_URL" "$ALGA_ISSUER_URL" "${ALGA_MAIL_DIR#"$ROOT"/}"

# 1. registration
step "The store registers two customers" \
    "nm-store calls POST /register-tenant over mTLS with its own certificate (algactl speaks as the store)." \
    "The registry creates each tenant, mints a one-time install code and commits a mail to the outbox" \
    "(email 'sent' when SMTP took it during the request, 'queued' when the mail worker will);" \
    "the answer carries only the code's public id, never the code itself."
PRO_COMPANY="Acme Robotics $RUN_ID"
PRO_EMAIL="ops-$RUN_ID@acme.test"
ESS_COMPANY="Bobcat Bakery $RUN_ID"
ESS_EMAIL="it-$RUN_ID@bobcat.test"
"$ALGACTL" --json register --company "$PRO_COMPANY" --contact-name "Ada Admin" \
    --contact-email "$PRO_EMAIL" --edition pro >"$WORK/register-pro.json" \
    || fail "algactl register (pro) failed"
"$ALGACTL" --json register --company "$ESS_COMPANY" --contact-name "Bo Baker" \
    --contact-email "$ESS_EMAIL" --edition essentials >"$WORK/register-essentials.json" \
    || fail "algactl register (essentials) failed"
PRO_TENANT="$(jq -r .tenant_id "$WORK/register-pro.json")"
PRO_CODE_ID="$(jq -r .install_code.code_id "$WORK/register-pro.json")"
ESS_TENANT="$(jq -r .tenant_id "$WORK/register-essentials.json")"
ESS_CODE_ID="$(jq -r .install_code.code_id "$WORK/register-essentials.json")"
printf '  %-12s %-38s %-12s %-8s %s\n' EDITION TENANT CODE_ID EMAIL CONTACT
printf '  %-12s %-38s %-12s %-8s %s\n' pro "$PRO_TENANT" "$PRO_CODE_ID" "$(jq -r .email.status "$WORK/register-pro.json")" "$PRO_EMAIL"
printf '  %-12s %-38s %-12s %-8s %s\n' essentials "$ESS_TENANT" "$ESS_CODE_ID" "$(jq -r .email.status "$WORK/register-essentials.json")" "$ESS_EMAIL"
record "register pro" "tenant created" "$PRO_TENANT"
record "register essentials" "tenant created" "$ESS_TENANT"

# 2. the mail
step "The customer's mail, as the SMTP server received it" \
    "To send it, the gateway asks the issuer to re-derive the code (nothing secret is stored)," \
    "presigns a fresh ISO link and hands the mail to SMTP. This is the contact's mailbox, so the code shows here."
PRO_MAIL="$(wait_mail "$PRO_EMAIL" "$PRO_CODE_ID")"
ESS_MAIL="$(wait_mail "$ESS_EMAIL" "$ESS_CODE_ID")"
printf '  %s%s%s\n' "$D" "${PRO_MAIL#"$ROOT"/}" "$N"
show "Subject: $(mail_field "$PRO_MAIL" subject)" \
    "To: $(mail_field "$PRO_MAIL" to)" \
    "Message-ID: $(mail_field "$PRO_MAIL" message-id)" ""
mail_field "$PRO_MAIL" text | sed 's/^/    | /'
PRO_CODE="$(mail_field "$PRO_MAIL" code)"
PRO_LINK="$(mail_field "$PRO_MAIL" link)"
ESS_CODE="$(mail_field "$ESS_MAIL" code)"
[ -n "$PRO_CODE" ] && [ -n "$PRO_LINK" ] || fail "could not find the install code and link in $PRO_MAIL"
[ -n "$ESS_CODE" ] || fail "could not find the install code in $ESS_MAIL"
ok "both mails delivered (essentials: $(mail_field "$ESS_MAIL" subject))"
record "mail delivered" "2 mails via SMTP" "$(mail_field "$PRO_MAIL" message-id)"

# 3. the ISO
step "Download the ISO through the presigned link" \
    "The link is signed with SigV4 and time-boxed; the local S3 server (alga-dev-s3) checks the signature." \
    "The ISO is generic: the install code is the only per-customer artifact."
code="$(curl -sS --max-time 60 -o "$WORK/alga-appliance.iso" -w '%{http_code}' "$PRO_LINK")" \
    || fail "curl could not fetch the presigned link"
[ "$code" = 200 ] || fail "the presigned link answered HTTP $code"
ISO_SHA="$(sha256sum "$WORK/alga-appliance.iso" | cut -d' ' -f1)"
ISO_SIZE="$(stat -c %s "$WORK/alga-appliance.iso")"
show "downloaded $ISO_SIZE bytes, sha256 $ISO_SHA" "expected           sha256 $ALGA_S3_OBJECT_SHA256"
[ "$ISO_SHA" = "$ALGA_S3_OBJECT_SHA256" ] || fail "the downloaded ISO's sha256 differs from the object's"
unsigned="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "${PRO_LINK%%\?*}" || true)"
ok "sha256 matches; the same URL without its signature answers HTTP $unsigned"
rm -f "$WORK/alga-appliance.iso"
record "ISO download" "sha256 matches" "${ISO_SHA:0:16}…"

# 4. redeem
step "First boot: the appliance redeems its install code" \
    "alga-appliance checks the code offline, makes its own key (it never leaves the appliance)," \
    "posts a CSR to POST /register, and writes two Secrets only once the license and the certificate" \
    "chain to the trust root it was installed with (the HSM's root: alga-issuer keys trust-root)," \
    "whatever the service says." \
    "The code goes in on stdin, never on the command line."
redeem "$PRO_CODE" "$WORK/appliance-1" "acme-appliance-1" "$WORK/redeem-1.out" \
    || { cat "$WORK/redeem-1.out" >&2; fail "alga-appliance redeem (pro) failed"; }
show "$(cat "$WORK/redeem-1.out")" ""
show_secrets "$WORK/appliance-1" | sed 's/^/    /'
PRO_APPLIANCE="$(sed -n 's/^appliance_id: //p' "$WORK/redeem-1.out")"
[ "$(secret_value "$WORK/appliance-1" appliance-initial-tenant.yaml INITIAL_TENANT_ID)" = "$PRO_TENANT" ] \
    || fail "INITIAL_TENANT_ID is not the registered tenant"
ok "pro appliance $PRO_APPLIANCE is bound to tenant $PRO_TENANT, licensed"
redeem "$ESS_CODE" "$WORK/appliance-ess" "bobcat-appliance" "$WORK/redeem-ess.out" \
    || { cat "$WORK/redeem-ess.out" >&2; fail "alga-appliance redeem (essentials) failed"; }
[ -z "$(secret_value "$WORK/appliance-ess" appliance-license-seed.yaml LICENSE_TOKEN || true)" ] \
    || fail "the essentials appliance received a license token"
ok "essentials appliance: EDITION=$(secret_value "$WORK/appliance-ess" appliance-license-seed.yaml EDITION), no license, no credential, no check-in URL"
record "redeem pro" "Secrets written" "appliance $PRO_APPLIANCE"
record "redeem essentials" "no license (as designed)" "tenant $ESS_TENANT"

# 5. bootstrap
step "The in-cluster bootstrap adopts the tenant" \
    "create-tenant makes the appliance's local tenant row the registry's tenant (it never invents one" \
    "when a code was used); seed-license starts the license state from the Secret. The appliance's" \
    "database here is a throwaway one ($APP_DB) in the dev Postgres."
psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $APP_DB" >/dev/null \
    || fail "could not create the appliance database $APP_DB"
APP_DB_CREATED=1
export ALGA_APPLIANCE_DATABASE_URL="${DATABASE_URL%/*}/$APP_DB"
"$APPLIANCE" bootstrap create-tenant --secrets "$WORK/appliance-1" | sed 's/^/    /'
"$APPLIANCE" bootstrap seed-license --secrets "$WORK/appliance-1" | sed 's/^/    /'
LOCAL_TENANT="$(psql -qAt "$ALGA_APPLIANCE_DATABASE_URL" -c 'SELECT tenant_id FROM alga_appliance.appliance_tenant')"
[ "$LOCAL_TENANT" = "$PRO_TENANT" ] || fail "the appliance database holds tenant '$LOCAL_TENANT', not $PRO_TENANT"
ok "appliance_tenant row = registry tenant $LOCAL_TENANT"
record "bootstrap" "tenant adopted" "$LOCAL_TENANT"

# 6. check-in
step "Daily check-in refreshes the license" \
    "The appliance calls POST /check-in over mTLS with its own certificate; the gateway has the issuer" \
    "sign a fresh license (and renews the certificate when it nears expiry)."
OLD_TOKEN_SHA="$(secret_value "$WORK/appliance-1" appliance-license-seed.yaml LICENSE_TOKEN | sha256sum | cut -c1-16)"
sleep 1 # a license's iat has one-second resolution: make the refreshed one visibly newer
"$APPLIANCE" check-in --seed "$WORK/appliance-1" >"$WORK/check-in.out" 2>&1 \
    || { cat "$WORK/check-in.out" >&2; fail "alga-appliance check-in failed"; }
show "$(cat "$WORK/check-in.out")"
NEW_TOKEN_SHA="$(secret_value "$WORK/appliance-1" appliance-license-seed.yaml LICENSE_TOKEN | sha256sum | cut -c1-16)"
[ "$OLD_TOKEN_SHA" != "$NEW_TOKEN_SHA" ] || fail "the license token did not change at check-in"
"$APPLIANCE" bootstrap seed-license --secrets "$WORK/appliance-1" >/dev/null
LIC_EXP="$(sed -n 's/^license_expires_at: //p' "$WORK/check-in.out")"
ok "new license written (sha256 prefix $OLD_TOKEN_SHA -> $NEW_TOKEN_SHA), valid until $LIC_EXP"
record "check-in" "license refreshed" "until ${LIC_EXP%%.*}"

# 7. rebuild
step "The appliance is rebuilt: re-issue by contact email" \
    "Codes are single-use. The store re-issues by the contact's email: unclaimed codes are revoked and a" \
    "new code for the same tenant is mailed. The tenant has one active appliance, so the new code is its" \
    "rebuild: its redeem will retire that appliance (--replaces-appliance-id names another one," \
    "--add-appliance adds one instead). The old code is refused; the new one brings the tenant back."
"$ALGACTL" --json reissue --contact-email "$PRO_EMAIL" >"$WORK/reissue.json" || fail "algactl reissue failed"
NEW_CODE_ID="$(jq -r .install_code.code_id "$WORK/reissue.json")"
[ "$(jq -r .tenant_id "$WORK/reissue.json")" = "$PRO_TENANT" ] || fail "reissue answered another tenant"
REPLACES="$(jq -r '.replaces_appliance_id // "none"' "$WORK/reissue.json")"
show "re-issued code $NEW_CODE_ID for tenant $PRO_TENANT (revoked unclaimed: $(jq -r '.revoked_code_ids | if length == 0 then "none" else join(", ") end' "$WORK/reissue.json"))" \
    "its redeem retires appliance: $REPLACES"
[ "$REPLACES" = "$PRO_APPLIANCE" ] \
    || fail "the re-issued code replaces '$REPLACES', not the tenant's only appliance $PRO_APPLIANCE"
OLD_RC=0
redeem "$PRO_CODE" "$WORK/appliance-2-old-code" "acme-appliance-1" "$WORK/redeem-old.out" \
    || OLD_RC=$?
show "old code -> exit $OLD_RC: $(grep -v '^$' "$WORK/redeem-old.out" | head -n 3)"
case "$OLD_RC" in
    13|14) ;;
    0) fail "the old, used code was accepted again" ;;
    *) fail "the old code was refused with an unexpected exit code $OLD_RC" ;;
esac
[ ! -e "$WORK/appliance-2-old-code/appliance-initial-tenant.yaml" ] || fail "a refused redeem wrote a Secret"
ok "old code refused (exit $OLD_RC), no Secret written"
NEW_MAIL="$(wait_mail "$PRO_EMAIL" "$NEW_CODE_ID")"
NEW_CODE="$(mail_field "$NEW_MAIL" code)"
show "new mail: $(mail_field "$NEW_MAIL" subject) ($(mail_field "$NEW_MAIL" message-id))"
redeem "$NEW_CODE" "$WORK/appliance-2" "acme-appliance-1" "$WORK/redeem-2.out" \
    || { cat "$WORK/redeem-2.out" >&2; fail "redeeming the re-issued code failed"; }
show "$(cat "$WORK/redeem-2.out")"
REBUILT_TENANT="$(secret_value "$WORK/appliance-2" appliance-initial-tenant.yaml INITIAL_TENANT_ID)"
[ "$REBUILT_TENANT" = "$PRO_TENANT" ] || fail "the rebuilt appliance came up under $REBUILT_TENANT, not $PRO_TENANT"
REBUILT_APPLIANCE="$(sed -n 's/^appliance_id: //p' "$WORK/redeem-2.out")"
# The rebuild wiped the appliance's disk: its bootstrap starts from an empty database.
psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "DROP DATABASE $APP_DB WITH (FORCE)" -c "CREATE DATABASE $APP_DB" >/dev/null \
    || fail "could not recreate the appliance database $APP_DB"
"$APPLIANCE" bootstrap create-tenant --secrets "$WORK/appliance-2" | sed 's/^/    /'
"$APPLIANCE" bootstrap seed-license --secrets "$WORK/appliance-2" >/dev/null
LOCAL_TENANT="$(psql -qAt "$ALGA_APPLIANCE_DATABASE_URL" -c 'SELECT tenant_id FROM alga_appliance.appliance_tenant')"
[ "$LOCAL_TENANT" = "$PRO_TENANT" ] || fail "the rebuilt appliance's database holds tenant '$LOCAL_TENANT', not $PRO_TENANT"
ok "rebuilt appliance $REBUILT_APPLIANCE is back under tenant $REBUILT_TENANT (bootstrap adopted it again)"
record "re-issue" "old code refused (exit $OLD_RC)" "new code $NEW_CODE_ID"
record "rebuilt redeem" "same tenant" "$REBUILT_TENANT"

# 8. the old appliance is retired
step "The rebuild retired the old appliance" \
    "Redeeming the rebuild's code replaced appliance $PRO_APPLIANCE by $REBUILT_APPLIANCE: the old one" \
    "no longer takes a seat and its check-ins are refused (403 appliance_replaced), even though its" \
    "certificate is still within its validity. The new appliance checks in as usual."
# Exit 33 is the appliance client's code for appliance_replaced; a client built before it
# knew that code (its --help lists no 33) exits 1 with the service's code in its message.
CHECK_IN_HELP="$("$APPLIANCE" check-in --help 2>&1 || true)"
if grep -qE '^ +33 ' <<<"$CHECK_IN_HELP"; then WANT_REPLACED_RC=33; else WANT_REPLACED_RC=1; fi
REPLACED_RC=0
"$APPLIANCE" check-in --seed "$WORK/appliance-1" >"$WORK/check-in-replaced.out" 2>&1 || REPLACED_RC=$?
show "old appliance's check-in -> exit $REPLACED_RC: $(grep -v '^$' "$WORK/check-in-replaced.out" | head -n 3)"
case "$REPLACED_RC" in
    0) fail "the replaced appliance $PRO_APPLIANCE could still check in" ;;
    "$WANT_REPLACED_RC") ;;
    *) fail "the replaced appliance's check-in exited $REPLACED_RC, expected $WANT_REPLACED_RC (appliance_replaced)" ;;
esac
if [ "$WANT_REPLACED_RC" = 1 ]; then
    grep -q 'appliance_replaced' "$WORK/check-in-replaced.out" \
        || fail "the replaced appliance's check-in failed, but not with appliance_replaced"
    ok "old appliance refused: appliance_replaced (exit 1: this alga-appliance predates exit code 33)"
else
    ok "old appliance refused: appliance_replaced (exit $REPLACED_RC)"
fi
"$APPLIANCE" check-in --seed "$WORK/appliance-2" >"$WORK/check-in-2.out" 2>&1 \
    || { cat "$WORK/check-in-2.out" >&2; fail "the rebuilt appliance's check-in failed"; }
show "new appliance's check-in -> exit 0: $(grep -E '^(license_expires_at|credential_expires_at):' "$WORK/check-in-2.out" | paste -sd ' ')"
ok "the rebuilt appliance $REBUILT_APPLIANCE checks in"
printf '    %s$ algactl tenant show %s%s\n' "$D" "$PRO_TENANT" "$N"
"$ALGACTL" tenant show "$PRO_TENANT" | sed 's/^/    /' || fail "algactl tenant show failed"
"$ALGACTL" --json tenant show "$PRO_TENANT" >"$WORK/tenant-rebuilt.json" || fail "algactl tenant show --json failed"
appliance_field() { # appliance_field FILE APPLIANCE_ID FIELD
    jq -r --arg id "$2" --arg f "$3" '.appliances[] | select(.appliance_id == $id) | .[$f] // "null"' "$1"
}
[ "$(appliance_field "$WORK/tenant-rebuilt.json" "$PRO_APPLIANCE" state)" = replaced ] \
    || fail "tenant show: appliance $PRO_APPLIANCE is '$(appliance_field "$WORK/tenant-rebuilt.json" "$PRO_APPLIANCE" state)', not replaced"
[ "$(appliance_field "$WORK/tenant-rebuilt.json" "$PRO_APPLIANCE" replaced_by)" = "$REBUILT_APPLIANCE" ] \
    || fail "tenant show: appliance $PRO_APPLIANCE is not replaced by $REBUILT_APPLIANCE"
[ "$(appliance_field "$WORK/tenant-rebuilt.json" "$REBUILT_APPLIANCE" state)" = active ] \
    || fail "tenant show: the rebuilt appliance $REBUILT_APPLIANCE is not active"
SEATS="$(jq -r '.entitlement | "\(.active_appliances) of \(.max_appliances)"' "$WORK/tenant-rebuilt.json")"
[ "${SEATS%% *}" = 1 ] || fail "tenant show: $SEATS active appliances after the rebuild, expected 1"
ok "tenant show: ${PRO_APPLIANCE:0:8}… replaced by ${REBUILT_APPLIANCE:0:8}…, which is active ($SEATS appliances in use)"
if [ "$WANT_REPLACED_RC" = 1 ]; then REPLACED_NOTE="refused (exit 1, appliance_replaced)"; else REPLACED_NOTE="refused (exit $REPLACED_RC)"; fi
record "replaced check-in" "$REPLACED_NOTE" "appliance $PRO_APPLIANCE"
record "rebuilt check-in" "accepted" "appliance $REBUILT_APPLIANCE"
record "tenant show" "old replaced by new" "${PRO_APPLIANCE:0:8}… -> ${REBUILT_APPLIANCE:0:8}…, $SEATS active"

# 8b. air-gapped install
step "An air-gapped appliance installs and refreshes through a relay" \
    "An appliance without a network writes its redeem as a file (it holds the code: mode 0600) and" \
    "opens no socket; a relay on a connected machine performs it (POST /register) and writes the answer;" \
    "the appliance checks the answer against its trust root, its own key and its pending request," \
    "then writes the same Secrets. Its refresh goes the same way: a check-in request signed with its own" \
    "key (POST /check-in/relayed, accepted once). The appliance's commands run with no network at all" \
    "($OFFLINE_HOW)."
AG_EMAIL="it-$RUN_ID@cormorant.test"
"$ALGACTL" --json register --company "Cormorant Labs $RUN_ID" --contact-name "Cy Cormorant" \
    --contact-email "$AG_EMAIL" --edition pro >"$WORK/register-airgap.json" \
    || fail "algactl register (air-gapped customer) failed"
AG_TENANT="$(jq -r .tenant_id "$WORK/register-airgap.json")"
AG_CODE="$(mail_field "$(wait_mail "$AG_EMAIL" "$(jq -r .install_code.code_id "$WORK/register-airgap.json")")" code)"
AG="$WORK/appliance-airgapped"
printf '%s\n' "$AG_CODE" | offline "$APPLIANCE" redeem --offline-request "$WORK/airgap-request.json" \
    --out "$AG" --hostname cormorant-1 >"$WORK/airgap-1.out" 2>&1 \
    || { cat "$WORK/airgap-1.out" >&2; fail "redeem --offline-request failed"; }
show "appliance: $(head -n 1 "$WORK/airgap-1.out") [mode $(stat -c %a "$WORK/airgap-request.json")]"
"$APPLIANCE" relay --request "$WORK/airgap-request.json" --response "$WORK/airgap-response.json" \
    --service-url "$ALGA_GATEWAY_URL" --ca-bundle "$ALGA_CA_BUNDLE" >"$WORK/airgap-2.out" 2>&1 \
    || { cat "$WORK/airgap-2.out" >&2; fail "alga-appliance relay failed"; }
show "relay:     $(grep -E '^(relayed|appliance_id):' "$WORK/airgap-2.out" | paste -sd ' ')"
rm -f "$WORK/airgap-request.json" # answered: the code is of no further use to keep around
# One byte of the license's signature changed on the way: refused, nothing written.
jq '.response.license.token |= (split(".") | .[2] |= (.[0:5] + (if .[5:6] == "A" then "B" else "A" end) + .[6:]) | join("."))' \
    "$WORK/airgap-response.json" >"$WORK/airgap-tampered.json"
TAMPER_RC=0
offline "$APPLIANCE" redeem --offline-response "$WORK/airgap-tampered.json" --out "$AG" \
    --ca-bundle "$ALGA_CA_BUNDLE" --trust-root "$ALGA_TRUST_ROOT" >"$WORK/airgap-3.out" 2>&1 || TAMPER_RC=$?
[ "$TAMPER_RC" != 0 ] && [ ! -e "$AG/appliance-license-seed.yaml" ] \
    || fail "a tampered response was installed (exit $TAMPER_RC)"
show "appliance, tampered response -> exit $TAMPER_RC, nothing written"
offline "$APPLIANCE" redeem --offline-response "$WORK/airgap-response.json" --out "$AG" \
    --ca-bundle "$ALGA_CA_BUNDLE" --trust-root "$ALGA_TRUST_ROOT" >"$WORK/airgap-4.out" 2>&1 \
    || { cat "$WORK/airgap-4.out" >&2; fail "redeem --offline-response failed"; }
show "appliance: $(grep -E '^(tenant_id|edition):' "$WORK/airgap-4.out" | paste -sd ' ')"
[ "$(secret_value "$AG" appliance-initial-tenant.yaml INITIAL_TENANT_ID)" = "$AG_TENANT" ] \
    || fail "the air-gapped appliance's INITIAL_TENANT_ID is not its tenant"
[ -n "$(secret_value "$AG" appliance-license-seed.yaml LICENSE_TOKEN)" ] || fail "no license installed"
ok "air-gapped appliance bound to tenant $AG_TENANT and licensed, the service never reachable from it"
# Its refresh: a check-in request signed with its own key, relayed once (a second time is refused).
AG_TOKEN="$(secret_value "$AG" appliance-license-seed.yaml LICENSE_TOKEN)"
offline "$APPLIANCE" check-in --offline-request "$WORK/airgap-ci-request.json" --seed "$AG" \
    >"$WORK/airgap-5.out" 2>&1 || { cat "$WORK/airgap-5.out" >&2; fail "check-in --offline-request failed"; }
"$APPLIANCE" relay --request "$WORK/airgap-ci-request.json" --response "$WORK/airgap-ci-response.json" \
    --service-url "$ALGA_GATEWAY_URL" --ca-bundle "$ALGA_CA_BUNDLE" >"$WORK/airgap-6.out" 2>&1 \
    || { cat "$WORK/airgap-6.out" >&2; fail "alga-appliance relay (check-in) failed"; }
show "relay:     $(grep -E '^(relayed|license):' "$WORK/airgap-6.out" | paste -sd ' ') (POST /check-in/relayed)"
REPLAY_RC=0
"$APPLIANCE" relay --request "$WORK/airgap-ci-request.json" --response "$WORK/airgap-ci-replayed.json" \
    --service-url "$ALGA_GATEWAY_URL" --ca-bundle "$ALGA_CA_BUNDLE" >"$WORK/airgap-7.out" 2>&1 || REPLAY_RC=$?
[ "$REPLAY_RC" = 34 ] && [ ! -e "$WORK/airgap-ci-replayed.json" ] \
    || fail "a replayed relayed check-in was not refused with exit 34 (exit $REPLAY_RC)"
show "relay, the same request again -> exit $REPLAY_RC (relayed_request_replayed), no response"
# This appliance has no bootstrap database of its own (ALGA_APPLIANCE_DATABASE_URL is
# the first appliance's, and unreachable from an empty network namespace): the check-in
# refreshes its seed only.
offline env -u ALGA_APPLIANCE_DATABASE_URL "$APPLIANCE" check-in --offline-response "$WORK/airgap-ci-response.json" --seed "$AG" \
    >"$WORK/airgap-8.out" 2>&1 || { cat "$WORK/airgap-8.out" >&2; fail "check-in --offline-response failed"; }
[ "$(secret_value "$AG" appliance-license-seed.yaml LICENSE_TOKEN)" != "$AG_TOKEN" ] \
    || fail "the offline check-in did not refresh the license"
show "appliance: $(grep -E '^(edition|license_expires_at):' "$WORK/airgap-8.out" | paste -sd ' ')"
ok "refreshed offline: the license renewed through a relay, the replay refused"
record "air-gapped redeem" "installed via a relay" "tenant $AG_TENANT"
record "air-gapped check-in" "refreshed via a relay" "replay refused (exit $REPLAY_RC)"

# 9. suspension
step "The store suspends the tenant, then resumes it" \
    "A suspended tenant's appliances are refused at check-in (403 tenant_suspended; alga-appliance exits 31)" \
    "and its codes cannot be redeemed; nothing is deleted. Resuming makes the same appliance check in again."
"$ALGACTL" tenant suspend "$PRO_TENANT" --reason "demo: invoice overdue" | sed 's/^/    /' \
    || fail "algactl tenant suspend failed"
SUSPENDED_RC=0
"$APPLIANCE" check-in --seed "$WORK/appliance-2" >"$WORK/check-in-suspended.out" 2>&1 || SUSPENDED_RC=$?
show "check-in while suspended -> exit $SUSPENDED_RC: $(grep -v '^$' "$WORK/check-in-suspended.out" | head -n 3)"
case "$SUSPENDED_RC" in
    31) ;;
    0) fail "the suspended tenant's appliance could still check in" ;;
    *) fail "the suspended tenant's check-in exited $SUSPENDED_RC, expected 31 (tenant_suspended)" ;;
esac
ok "check-in refused while suspended (exit 31)"
"$ALGACTL" tenant resume "$PRO_TENANT" --reason "demo: invoice paid" | sed 's/^/    /' \
    || fail "algactl tenant resume failed"
"$APPLIANCE" check-in --seed "$WORK/appliance-2" >"$WORK/check-in-resumed.out" 2>&1 \
    || { cat "$WORK/check-in-resumed.out" >&2; fail "the check-in after resume failed"; }
show "check-in after resume -> exit 0: $(grep -E '^(license_expires_at|credential_expires_at):' "$WORK/check-in-resumed.out" | paste -sd ' ')"
[ "$("$ALGACTL" --json tenant show "$PRO_TENANT" | jq -r .status)" = active ] || fail "the tenant is not active after resume"
RESUMED_EXP="$(sed -n 's/^license_expires_at: //p' "$WORK/check-in-resumed.out")"
ok "resumed: the appliance checks in again (license until $RESUMED_EXP)"
record "suspend" "check-in refused (exit 31)" "tenant $PRO_TENANT"
record "resume" "check-in accepted" "until ${RESUMED_EXP%%.*}"

# 10. appliances by health
step "Which appliances check in as they should" \
    "GET /appliances lists the registry's appliances by health (ok, overdue, stale: active appliances" \
    "of paid editions), page by page; algactl --all follows the pages. Shown: this run's rows and the total."
"$ALGACTL" appliance list --health ok --all --limit 1000 >"$WORK/appliances-ok.txt" \
    || fail "algactl appliance list --health ok failed"
sed -n '1p' "$WORK/appliances-ok.txt" | sed 's/^/    /'
grep -F -e "$PRO_TENANT" -e "$ESS_TENANT" "$WORK/appliances-ok.txt" | sed 's/^/    /' || true
tail -n 1 "$WORK/appliances-ok.txt" | sed 's/^/    /'
"$ALGACTL" --json appliance list --health ok --all --limit 1000 >"$WORK/appliances-ok.json" \
    || fail "algactl --json appliance list --health ok failed"
OK_TOTAL="$(jq -r .total "$WORK/appliances-ok.json")"
in_ok() { jq -e --arg id "$1" 'any(.appliances[]; .appliance_id == $id)' "$WORK/appliances-ok.json" >/dev/null; }
in_ok "$REBUILT_APPLIANCE" || fail "the rebuilt appliance $REBUILT_APPLIANCE is not listed with health ok"
! in_ok "$PRO_APPLIANCE" || fail "the replaced appliance $PRO_APPLIANCE is listed with health ok"
ok "the rebuilt appliance is ok; the replaced one and the essentials one (no check-in) are not listed"
record "appliances health=ok" "rebuilt listed, old not" "$OK_TOTAL ok in the registry"

# 11. audit
step "Security staff verify the audit log" \
    "Every action above is one audit record, hash-chained; the issuer signs checkpoints with the audit" \
    "key in the HSM. alga-audit recomputes the chain and checks every checkpoint signature offline."
curl -sS --fail --max-time 10 --cacert "$ALGA_CA_BUNDLE" --cert "$ALGA_GATEWAY_CLIENT_CERT" \
    --key "$ALGA_GATEWAY_CLIENT_KEY" "$ALGA_ISSUER_URL/v1/keys" -o "$WORK/issuer-keys.json" \
    || fail "could not fetch the audit public keys from the issuer's GET /v1/keys"
show "audit public keys: $(jq -r '[.audit_keys[]? | (.kid // .version // "key")] | join(", ")' "$WORK/issuer-keys.json" 2>/dev/null || echo '?') (from the issuer's GET /v1/keys)"
# The sequencer chains committed records shortly after commit: give it a moment.
for ((i = 0; i < 40; i++)); do
    "$AUDIT" verify --audit-keys "$WORK/issuer-keys.json" --json >"$WORK/verify.json" 2>"$WORK/verify.err" || true
    [ "$(jq -r '.intact' "$WORK/verify.json" 2>/dev/null)" = true ] \
        && [ "$(jq -r '.report.findings | length' "$WORK/verify.json")" = 0 ] && break
    sleep 0.25
done
"$AUDIT" verify --audit-keys "$WORK/issuer-keys.json" | sed 's/^/    /' \
    || { cat "$WORK/verify.err" >&2; fail "alga-audit verify reports a damaged audit log"; }
AUDIT_RECORDS="$(jq -r '.report.records' "$WORK/verify.json")"
AUDIT_CPS="$(jq -r '.report.checkpoints_valid' "$WORK/verify.json")"
ok "chain intact: $AUDIT_RECORDS records, $AUDIT_CPS signed checkpoints"
record "audit verify" "INTACT" "$AUDIT_RECORDS records, $AUDIT_CPS checkpoints"

# 12. the witness
step "An outside witness follows the log" \
    "The audit log is also a transparency log: an RFC 6962 Merkle tree over the same records, whose" \
    "checkpoints the issuer signs with the Ed25519 log key in the HSM (c2sp.org/tlog-checkpoint), served" \
    "with its tiles to anyone at /audit/log/ (digests only, no record content). A witness is someone else" \
    "with a key of their own: it cosigns a checkpoint only when the tree it describes contains the one it" \
    "accepted before (a consistency proof it computes from the tiles), so the log cannot fork or rewind" \
    "unnoticed. It needs no account and no database, only the log's verifier key, fetched once and pinned."
"$ALGACTL" audit log-keys --out "$WORK/log.vkey" 2>"$WORK/log-keys.err" \
    || { cat "$WORK/log-keys.err" >&2; fail "algactl audit log-keys failed"; }
show "log key (GET /audit/log/vkey): $(head -n 1 "$WORK/log.vkey")"
WITNESS_NAME="witness.demo/$RUN_ID"
"$AUDIT" witness init --name "$WITNESS_NAME" --key "$WORK/witness.key" >"$WORK/witness.vkey" 2>"$WORK/witness-init.err" \
    || { cat "$WORK/witness-init.err" >&2; fail "alga-audit witness init failed"; }
show "witness key: $(cat "$WORK/witness.vkey") (private half in witness.key, mode 0600)"
witness_poll() {
    env -u DATABASE_URL "$AUDIT" witness poll --once --log "$ALGA_GATEWAY_URL/audit/log" --ca "$ALGA_CA_BUNDLE" \
        --log-keys "$WORK/log.vkey" --key "$WORK/witness.key" --state "$WORK/witness-state.json" \
        --cosignatures "$WORK/cosigned"
}
printf '    %s$ alga-audit witness poll --once --log %s/audit/log …%s\n' "$D" "$ALGA_GATEWAY_URL" "$N"
witness_poll >"$WORK/witness-poll-1.out" 2>&1 || { cat "$WORK/witness-poll-1.out" >&2; fail "the witness's first poll failed"; }
show "$(sed 's/\(^— [^ ]* .\{16\}\).*/\1…/' "$WORK/witness-poll-1.out")"
W1="$(sed -n 's/^accepted size \([0-9]*\) .*/\1/p' "$WORK/witness-poll-1.out")"
[ -n "$W1" ] || fail "the witness's first poll accepted no checkpoint"
ok "the witness accepted the checkpoint of size $W1 and cosigned it"
CEDAR_EMAIL="office-$RUN_ID@cedar.test"
"$ALGACTL" --json register --company "Cedar Clinic $RUN_ID" --contact-name "Cy Cedar" \
    --contact-email "$CEDAR_EMAIL" --edition essentials >"$WORK/register-cedar.json" \
    || fail "algactl register (the witness's new records) failed"
show "new records: the store registers one more customer (tenant $(jq -r .tenant_id "$WORK/register-cedar.json"))"
wait_checkpoint $((W1 + 1)) "the log's next checkpoint"
witness_poll >"$WORK/witness-poll-2.out" 2>&1 || { cat "$WORK/witness-poll-2.out" >&2; fail "the witness's second poll failed (a fork or a rollback is refused, exit 1)"; }
show "$(sed 's/\(^— [^ ]* .\{16\}\).*/\1…/' "$WORK/witness-poll-2.out")"
W2="$(sed -n 's/^accepted size \([0-9]*\) .*/\1/p' "$WORK/witness-poll-2.out")"
[ -n "$W2" ] && [ "$W2" -gt "$W1" ] || fail "the witness's second poll did not accept a larger checkpoint"
grep -qF -- "— $WITNESS_NAME " "$WORK/cosigned/$W2" || fail "no cosignature of $WITNESS_NAME on the checkpoint of size $W2"
[ "$(jq -r .size "$WORK/witness-state.json")" = "$W2" ] || fail "the witness's state does not hold the checkpoint of size $W2"
ok "the tree of size $W2 contains the tree of size $W1: accepted, cosigned, kept in witness-state.json"
record "witness" "accepted $W1 -> $W2" "$WITNESS_NAME"

# 13. the customer's records
step "A customer checks its own records offline" \
    "The store fetches the pro customer's audit records for it (GET /tenants/{id}/audit, the store's" \
    "certificate): each record comes with its inclusion proof in a signed checkpoint, and algactl follows" \
    "next_after over the pages into one file. The customer then needs nothing of ours but the pinned log" \
    "key: alga-audit verify-proof checks the file with no database and no network. Records newer than the" \
    "newest checkpoint are in the next one, so the demo (as the auditor) first makes sure it covers them."
CP_SIZE="$(checkpoint_size)"
"$ALGACTL" --json audit tail --after "$CP_SIZE" >"$WORK/after-checkpoint.jsonl" || fail "algactl audit tail failed"
PRO_NEWEST="$(jq -s --arg t "$PRO_TENANT" '[.[] | select(.record.tenant_id? == $t) | .seq] | max // 0' "$WORK/after-checkpoint.jsonl")"
[ "$PRO_NEWEST" = 0 ] || wait_checkpoint "$PRO_NEWEST" "a checkpoint covering the tenant's newest record"
printf '    %s$ algactl audit tenant %s --out tenant-audit.json --log-keys log.vkey%s\n' "$D" "$PRO_TENANT" "$N"
"$ALGACTL" audit tenant "$PRO_TENANT" --out "$WORK/tenant-audit.json" --log-keys "$WORK/log.vkey" \
    >"$WORK/tenant-audit.txt" 2>"$WORK/tenant-audit.err" \
    || { cat "$WORK/tenant-audit.txt" "$WORK/tenant-audit.err" >&2; fail "algactl audit tenant failed (exit 1: a page does not verify)"; }
sed 's/^/    /; s/^ *$//' "$WORK/tenant-audit.txt"
printf '    %s$ env -u DATABASE_URL alga-audit verify-proof --log-keys log.vkey tenant-audit.json%s\n' "$D" "$N"
env -u DATABASE_URL "$AUDIT" verify-proof --log-keys "$WORK/log.vkey" "$WORK/tenant-audit.json" >"$WORK/verify-proof.txt" 2>&1 \
    || { cat "$WORK/verify-proof.txt" >&2; fail "alga-audit verify-proof refused the customer's file"; }
show "$(cat "$WORK/verify-proof.txt")"
env -u DATABASE_URL "$AUDIT" --json verify-proof --log-keys "$WORK/log.vkey" "$WORK/tenant-audit.json" >"$WORK/verify-proof.json" \
    || fail "alga-audit --json verify-proof refused the customer's file"
TA_RECORDS="$(jq -r .records "$WORK/verify-proof.json")"
TA_SIZE="$(jq -r .size "$WORK/verify-proof.json")"
TA_LAST="$(jq -r .last_seq "$WORK/verify-proof.json")"
[ "$TA_RECORDS" -gt 0 ] && [ "$TA_LAST" -ge "$PRO_NEWEST" ] \
    || fail "the file proves $TA_RECORDS records up to seq $TA_LAST, not the tenant's records up to seq $PRO_NEWEST"
ok "$TA_RECORDS records of tenant $PRO_TENANT proven offline in the checkpoint of size $TA_SIZE signed by $(jq -r .origin "$WORK/verify-proof.json")"
record "tenant records proven" "$TA_RECORDS records, offline" "checkpoint size $TA_SIZE"

# 14. an independent verifier
step "An independent implementation agrees" \
    "scripts/tlog_verify.py was written from the specifications alone (RFC 6962; c2sp.org signed-note," \
    "tlog-checkpoint, tlog-tiles), with Python's standard library and its own Ed25519: it fetches the" \
    "checkpoint and every tile over HTTPS, recomputes the whole tree, checks the log key's signature and" \
    "one inclusion proof: the customer's newest record, from the public GET /audit/log/proof/{seq}."
curl -sS --fail --max-time 10 --cacert "$ALGA_CA_BUNDLE" "$ALGA_GATEWAY_URL/audit/log/proof/$TA_LAST" \
    -o "$WORK/proof-$TA_LAST.json" || fail "GET /audit/log/proof/$TA_LAST failed"
printf '    %s$ python3 scripts/tlog_verify.py --vkey log.vkey --url %s/audit/log --ca … --proof proof-%s.json%s\n' \
    "$D" "$ALGA_GATEWAY_URL" "$TA_LAST" "$N"
"$PY" -B "$ROOT/scripts/tlog_verify.py" --vkey "$WORK/log.vkey" --url "$ALGA_GATEWAY_URL/audit/log" \
    --ca "$ALGA_CA_BUNDLE" --proof "$WORK/proof-$TA_LAST.json" >"$WORK/tlog-verify.out" 2>&1 \
    || { cat "$WORK/tlog-verify.out" >&2; fail "the independent verifier refused the log or the proof"; }
show "$(cat "$WORK/tlog-verify.out")"
PROOF_ENTRY="$(jq -r .entry "$WORK/proof-$TA_LAST.json")"
PROOF_SIZE="$(jq -r .size "$WORK/proof-$TA_LAST.json")"
HELD_SHA="$(jq -j --argjson s "$TA_LAST" '.[].records[] | select(.seq == $s) | .record' "$WORK/tenant-audit.json" | sha256sum | cut -d' ' -f1)"
HELD_ACTION="$(jq -r --argjson s "$TA_LAST" '.[].records[] | select(.seq == $s) | .record | fromjson | .action' "$WORK/tenant-audit.json")"
[ "$PROOF_ENTRY" = "$HELD_SHA" ] || fail "record $TA_LAST as the customer holds it does not hash to the entry proven ($PROOF_ENTRY)"
TREE_SIZE="$(sed -n 's/^checkpoint: .*, size \([0-9]*\),.*/\1/p' "$WORK/tlog-verify.out")"
ok "record $TA_LAST ($HELD_ACTION) as the customer holds it hashes to the entry proven in the tree of size $PROOF_SIZE (sha256 ${HELD_SHA:0:16}…)"
record "independent verifier" "tree and proof OK" "record $TA_LAST, tree of size ${TREE_SIZE:-$PROOF_SIZE}"

# 15. summary
step "Summary" "Every step of the journey, with what it produced:"
printf '  %s%-22s %-30s %s%s\n' "$B" STEP RESULT "FIGURE / ID" "$N"
for row in "${SUMMARY[@]}"; do
    IFS=$'\t' read -r c1 c2 c3 <<<"$row"
    printf '  %-22s %-30s %s\n' "$c1" "$c2" "$c3"
done
printf '\n%sThe demo completed in %ss.%s Files: %s (re-run make demo any time).\n' "$G" "$SECONDS" "$N" "${WORK#"$ROOT"/}"
