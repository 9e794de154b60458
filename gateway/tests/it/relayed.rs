//! Air-gapped installs and offline refresh (`POST /check-in/relayed`), end to end
//! against the real gateway, issuer (SoftHSM2) and Postgres. The appliance's side is
//! `alga_appliance::offline`, whose request and install steps take no service URL at
//! all; `offline::relay` in the middle performs the requests over the normal API. (The
//! binaries themselves, with no network on the appliance's side, are driven by
//! `softhsm-tests`, `airgap`.) Every file changed by one byte, foreign, replayed,
//! stale, or from a revoked or replaced appliance is refused with the appliance's
//! documented exit code, and nothing is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alga_appliance::check_in::Outcome;
use alga_appliance::offline::{
    self, CheckInRequestConfig, CheckInRequestOutcome, InstallCheckInConfig, InstallRedeemConfig,
    RedeemRequestConfig, RelayConfig,
};
use alga_appliance::service::Retry;
use alga_appliance::{Error, exit};
use alga_protocol::SecretText;
use alga_protocol::offline::{RelayedCheckIn, b64url, signing_input};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::harness::*;

// ---------------------------------------------------------------------------------
// The appliance, the relay, and the files between them
// ---------------------------------------------------------------------------------

/// An appliance's directory (key, pending request, Secrets) and its removable medium.
struct Site {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        Site {
            root: dir.path().to_owned(),
            _dir: dir,
        }
    }
    /// The appliance's `--out` / `--seed` directory.
    fn out(&self) -> PathBuf {
        self.root.join("out")
    }
    /// A file on the medium carried to and from the relay.
    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// Every file of the appliance's directory with its bytes: "nothing written" is
    /// this, unchanged.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(self.out()) {
            for e in entries.flatten() {
                let p = e.path();
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
        out
    }
    fn seed_value(&self, key: &str) -> String {
        let text =
            std::fs::read_to_string(self.out().join("appliance-license-seed.yaml")).expect("seed");
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .unwrap_or_default()
            .to_owned()
    }
}

fn ca_bundle() -> PathBuf {
    PathBuf::from(dev().path("ALGA_CA_BUNDLE"))
}

fn trust_root() -> PathBuf {
    PathBuf::from(dev().path("ALGA_TRUST_ROOT"))
}

/// `alga-appliance relay`, on a connected machine.
async fn relay(s: &Stack, request: &Path, response: &Path) -> Result<offline::Relayed, Error> {
    offline::relay(&RelayConfig {
        service_url: s.gw.clone(),
        ca_bundle: ca_bundle(),
        request_file: request.to_owned(),
        response_file: response.to_owned(),
        retry: Retry {
            attempts: 1,
            ..Retry::default()
        },
    })
    .await
}

/// A relay the service refuses: `code`, and no response file.
async fn relay_refused(s: &Stack, what: &str, request: &Path, code: i32) -> Error {
    let response = request.with_extension("response.json");
    let e = relay(s, request, &response).await.expect_err(what);
    assert_eq!(e.exit_code(), code, "{what}: {e}");
    assert!(!response.exists(), "{what}: no response written");
    e
}

/// `redeem --offline-request`: a request file, no network (no URL is even known).
fn request_redeem(site: &Site, code: &str, name: &str) -> PathBuf {
    let file = site.file(name);
    offline::write_redeem_request(
        &RedeemRequestConfig {
            out_dir: site.out(),
            request_file: file.clone(),
            hostname: "airgapped".into(),
            version: "1.0.0".into(),
        },
        &SecretText::new(code.to_owned()),
        OffsetDateTime::now_utc(),
    )
    .expect("offline redeem request");
    file
}

/// `redeem --offline-response`.
fn install_redeem(site: &Site, response: &Path) -> Result<alga_appliance::redeem::Redeemed, Error> {
    offline::install_redeem_response(
        &InstallRedeemConfig {
            response_file: response.to_owned(),
            out_dir: site.out(),
            ca_bundle: ca_bundle(),
            trust_root: trust_root(),
        },
        OffsetDateTime::now_utc(),
    )
}

/// `check-in --offline-request`, as if made at `now`.
fn request_check_in(site: &Site, name: &str, now: OffsetDateTime, rotate: bool) -> PathBuf {
    let file = site.file(name);
    match offline::write_check_in_request(
        &CheckInRequestConfig {
            seed_dir: site.out(),
            request_file: file.clone(),
            force_rotate: rotate,
            version: "1.0.1".into(),
        },
        now,
    )
    .expect("offline check-in request")
    {
        CheckInRequestOutcome::Written(_) => file,
        other => panic!("no request written: {other:?}"),
    }
}

/// `check-in --offline-response`.
fn install_check_in(site: &Site, response: &Path) -> Result<Outcome, Error> {
    offline::install_check_in_response(
        &InstallCheckInConfig {
            seed_dir: site.out(),
            response_file: response.to_owned(),
            trust_root: None,
        },
        OffsetDateTime::now_utc(),
    )
}

/// Refused with `code`, and the appliance's directory exactly as before.
fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    site: &Site,
    r: impl FnOnce() -> Result<T, Error>,
    code: i32,
) -> String {
    let before = site.snapshot();
    let e = r().expect_err(what);
    assert_eq!(e.exit_code(), code, "{what}: {e}");
    assert_eq!(site.snapshot(), before, "{what}: nothing written");
    let msg = e.to_string();
    assert!(
        !msg.contains("BEGIN"),
        "{what}: no key or certificate in {msg}"
    );
    msg
}

// ---------------------------------------------------------------------------------
// One byte changed
// ---------------------------------------------------------------------------------

/// Another character of the same class: digits cycle, `a`–`f` and `g`–`z` cycle
/// apart (hex stays hex), upper case likewise. A JSON string stays valid JSON, in
/// its alphabet (base64, hex, Crockford), so only the byte's meaning changes.
fn other_char(c: u8) -> u8 {
    match c {
        b'0'..=b'8' | b'a'..=b'e' | b'A'..=b'E' | b'g'..=b'y' | b'G'..=b'Y' => c + 1,
        b'9' => b'0',
        b'f' => b'a',
        b'F' => b'A',
        b'z' => b'g',
        b'Z' => b'G',
        _ => unreachable!("only alphanumeric bytes are changed"),
    }
}

/// Offset of the first alphanumeric byte at or after `skip` bytes past `needle`.
fn after(text: &str, needle: &str, skip: usize) -> usize {
    let start = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the file"))
        + needle.len()
        + skip;
    start
        + text.as_bytes()[start..]
            .iter()
            .position(u8::is_ascii_alphanumeric)
            .expect("an alphanumeric byte")
}

/// Offset of the first alphanumeric byte at or after `skip` bytes into part `n`
/// (0: header, 2: signature) of the first JWT (base64url also has `-` and `_`).
fn in_token(text: &str, n: usize, skip: usize) -> usize {
    let t = after(text, "\"token\": \"", 0);
    let part = text[t..]
        .match_indices('.')
        .nth(n - 1)
        .map(|(i, _)| t + i + 1)
        .expect("a JWT");
    let start = part + skip;
    start
        + text.as_bytes()[start..]
            .iter()
            .position(u8::is_ascii_alphanumeric)
            .expect("an alphanumeric byte")
}

/// `src` with the byte at `at(text)` changed, written to `to`.
fn one_byte(src: &Path, at: fn(&str) -> usize, to: &Path) {
    let text = std::fs::read_to_string(src).expect("read");
    let i = at(&text);
    let mut bytes = text.into_bytes();
    bytes[i] = other_char(bytes[i]);
    std::fs::write(to, bytes).expect("write");
}

/// One byte changed in a response file, and the exit code its install must end with.
struct Tamper {
    what: &'static str,
    at: fn(&str) -> usize,
    exit: i32,
}

/// Tampers of the fields both kinds of response have.
const FORMAT: Tamper = Tamper {
    what: "format",
    at: |t| after(t, "\"format\": \"", 0),
    exit: exit::LOCAL_INPUT,
};
const NONCE: Tamper = Tamper {
    what: "nonce",
    at: |t| after(t, "\"nonce\": \"", 0),
    exit: exit::BAD_RESPONSE,
};
const REQUEST_DIGEST: Tamper = Tamper {
    what: "request digest",
    at: |t| after(t, "\"request_sha256\": \"", 10),
    exit: exit::BAD_RESPONSE,
};
const EDITION: Tamper = Tamper {
    what: "edition",
    at: |t| after(t, "\"edition\": \"", 0),
    exit: exit::BAD_RESPONSE,
};
const LICENSE_SIGNATURE: Tamper = Tamper {
    what: "license signature",
    at: |t| in_token(t, 2, 5),
    exit: exit::UNTRUSTED,
};
const LICENSE_EXPIRES_AT: Tamper = Tamper {
    what: "license expires_at",
    at: |t| after(t, "\"expires_at\": \"", 3),
    exit: exit::BAD_RESPONSE,
};

/// The bytes of a redeem response that something authenticates, one at a time.
const REDEEM_RESPONSE_TAMPERS: &[Tamper] = &[
    FORMAT,
    NONCE,
    REQUEST_DIGEST,
    Tamper {
        what: "tenant id",
        at: |t| after(t, "\"tenant_id\": \"", 3),
        exit: exit::BAD_RESPONSE,
    },
    Tamper {
        what: "appliance id",
        at: |t| after(t, "\"appliance_id\": \"", 3),
        exit: exit::BAD_RESPONSE,
    },
    EDITION,
    Tamper {
        what: "license header",
        at: |t| after(t, "\"token\": \"", 10),
        exit: exit::BAD_RESPONSE,
    },
    LICENSE_SIGNATURE,
    LICENSE_EXPIRES_AT,
    Tamper {
        what: "certificate",
        at: |t| after(t, "\"certificate\": \"-----BEGIN CERTIFICATE-----\\n", 200),
        exit: exit::UNTRUSTED,
    },
    Tamper {
        what: "CA chain",
        at: |t| after(t, "\"chain\": \"-----BEGIN CERTIFICATE-----\\n", 200),
        exit: exit::UNTRUSTED,
    },
    Tamper {
        what: "credential expires_at",
        at: |t| {
            let chain = t.find("\"chain\": \"").expect("chain");
            chain + after(&t[chain..], "\"expires_at\": \"", 3)
        },
        exit: exit::BAD_RESPONSE,
    },
];

/// The bytes of a check-in response that something authenticates.
const CHECK_IN_RESPONSE_TAMPERS: &[Tamper] = &[
    FORMAT,
    NONCE,
    REQUEST_DIGEST,
    EDITION,
    LICENSE_SIGNATURE,
    LICENSE_EXPIRES_AT,
];

/// Every tamper of `table` applied to `response` is refused by `install`, nothing
/// written.
fn refuse_each<T: std::fmt::Debug>(
    site: &Site,
    response: &Path,
    table: &[Tamper],
    install: impl Fn(&Path) -> Result<T, Error>,
) {
    let bad = site.file("tampered-response.json");
    let mut wrong = Vec::new();
    for t in table {
        one_byte(response, t.at, &bad);
        let before = site.snapshot();
        match install(&bad) {
            Ok(r) => wrong.push(format!("{}: installed ({r:?})", t.what)),
            Err(e) if e.exit_code() != t.exit => {
                wrong.push(format!(
                    "{}: exit {} ({e}), not {}",
                    t.what,
                    e.exit_code(),
                    t.exit
                ));
            }
            Err(_) => {}
        }
        assert_eq!(site.snapshot(), before, "{}: nothing written", t.what);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A relayed check-in request file, with its payload edited by `edit`: the request
/// (payload not yet replaced) and the new payload's bytes.
fn edited(request: &Path, edit: impl FnOnce(&mut Value)) -> (RelayedCheckIn, Vec<u8>) {
    let r: RelayedCheckIn =
        serde_json::from_slice(&std::fs::read(request).expect("read")).expect("request");
    let mut payload: Value =
        serde_json::from_slice(&r.payload_bytes().expect("base64url")).expect("payload");
    edit(&mut payload);
    (r, serde_json::to_vec(&payload).expect("json"))
}

fn write_request(r: &RelayedCheckIn, to: &Path) {
    std::fs::write(to, serde_json::to_vec_pretty(r).expect("json")).expect("write");
}

/// A relayed check-in: the request file's payload (JSON) edited by `edit`, then signed
/// with the PKCS#8 key `key_pem` (not necessarily the certificate's).
fn resigned(request: &Path, key_pem: &str, edit: impl FnOnce(&mut Value), to: &Path) {
    let (r, bytes) = edited(request, edit);
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(key_pem).expect("P-256 key");
    let sig: p256::ecdsa::Signature = key.sign(&signing_input(&bytes));
    let out = RelayedCheckIn {
        payload: b64url(&bytes),
        signature: b64url(&sig.to_bytes()),
        ..r
    };
    write_request(&out, to);
}

/// The request file with its payload changed and its signature kept.
fn payload_changed(request: &Path, edit: impl FnOnce(&mut Value), to: &Path) {
    let (r, bytes) = edited(request, edit);
    let out = RelayedCheckIn {
        payload: b64url(&bytes),
        ..r
    };
    write_request(&out, to);
}

/// An appliance installed through a relay with `code`: request, relay, install.
async fn installed_through_relay(
    s: &Stack,
    site: &Site,
    code: &str,
) -> alga_appliance::redeem::Redeemed {
    let request = request_redeem(site, code, "request.json");
    let response = site.file("response.json");
    relay(s, &request, &response).await.expect("relay");
    install_redeem(site, &response).expect("install")
}

async fn store_put_edition(s: &Stack, tenant: Uuid, edition: &str) {
    let (st, v, _) = send(
        s.store()
            .put(s.url(&format!("/tenants/{tenant}/entitlement")))
            .json(&json!({ "edition": edition })),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

async fn store_post(s: &Stack, path: &str) {
    let (st, v, _) = send(s.store().post(s.url(path)).json(&json!({}))).await;
    assert_eq!(st, StatusCode::OK, "{path}: {v}");
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

/// The whole air-gapped life of an appliance: install, refresh with rotation, edition
/// changes, suspension, revocation; every tamper along the way refused.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_install_and_refresh_refuse_every_tampered_file() {
    let s = Stack::start().await;
    let (tenant_id, code_id, code) = s.tenant_with_code("pro").await;
    let site = Site::new();

    // The appliance: no URL anywhere. The request holds the code: 0600.
    let request = request_redeem(&site, &code, "redeem-request.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&request)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(site.out().join("appliance.key").exists());
    assert!(!site.out().join("appliance-license-seed.yaml").exists());

    // The request, one byte changed. In the code: its check character finds it, the
    // relay sends nothing. In the CSR: its signature fails, the service refuses it and
    // the code is not used.
    let bad_req = site.file("tampered-request.json");
    one_byte(&request, |t| after(t, "\"install_code\": \"", 1), &bad_req);
    relay_refused(&s, "code byte", &bad_req, exit::CODE_MALFORMED).await;
    one_byte(
        &request,
        |t| after(t, "\"csr\": \"-----BEGIN CERTIFICATE REQUEST-----\\n", 150),
        &bad_req,
    );
    let e = relay_refused(&s, "CSR byte", &bad_req, exit::INTERNAL).await;
    assert!(e.to_string().contains("csr_invalid"), "{e}");
    assert_eq!(s.code_state(&code_id).await, "unclaimed");
    // In the nonce or the host name: the service redeems it (the code with this
    // appliance's key: a retry of the true request within 15 minutes gets the same
    // tenant), but the answer is not the one to the request the appliance made.
    for (what, at) in [
        (
            "nonce byte",
            (|t| after(t, "\"nonce\": \"", 0)) as fn(&str) -> usize,
        ),
        ("host name byte", |t| after(t, "\"hostname\": \"", 0)),
    ] {
        one_byte(&request, at, &bad_req);
        let resp = site.file("answer-to-tampered.json");
        relay(&s, &bad_req, &resp).await.expect(what);
        assert_refused(
            what,
            &site,
            || install_redeem(&site, &resp),
            exit::BAD_RESPONSE,
        );
    }
    // Another format version: refused by the relay, before any network.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&request).expect("r")).expect("j");
    v["format"] = "alga-offline-redeem-request/v2".into();
    std::fs::write(&bad_req, v.to_string()).expect("write");
    relay_refused(&s, "request format", &bad_req, exit::LOCAL_INPUT).await;

    // The relay performs the true request.
    let response = site.file("redeem-response.json");
    relay(&s, &request, &response).await.expect("relay");
    assert_eq!(
        std::fs::metadata(&response)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    refuse_each(&site, &response, REDEEM_RESPONSE_TAMPERS, |p| {
        install_redeem(&site, p)
    });

    // Another appliance's answer: its own response file (another request), and its
    // answer under this request's nonce and digest (a credential for its key).
    let (_, _, other_code) = s.tenant_with_code("pro").await;
    let other = Site::new();
    let other_req = request_redeem(&other, &other_code, "other-request.json");
    let other_resp = other.file("other-response.json");
    relay(&s, &other_req, &other_resp)
        .await
        .expect("relay other");
    assert_refused(
        "another appliance's response",
        &site,
        || install_redeem(&site, &other_resp),
        exit::BAD_RESPONSE,
    );
    let theirs: Value =
        serde_json::from_slice(&std::fs::read(&other_resp).expect("r")).expect("json");
    let mut grafted: Value =
        serde_json::from_slice(&std::fs::read(&response).expect("r")).expect("json");
    grafted["response"] = theirs["response"].clone();
    let grafted_file = site.file("grafted.json");
    std::fs::write(
        &grafted_file,
        serde_json::to_vec_pretty(&grafted).expect("j"),
    )
    .expect("w");
    let msg = assert_refused(
        "another appliance's answer under this request's nonce",
        &site,
        || install_redeem(&site, &grafted_file),
        exit::BAD_RESPONSE,
    );
    assert!(msg.contains("not for this appliance's key"), "{msg}");

    // The true answer installs: the same two Secrets as an online redeem.
    let r = install_redeem(&site, &response).expect("install");
    assert_eq!((r.tenant_id, r.edition.as_str()), (tenant_id, "pro"));
    for key in [
        "EDITION",
        "LICENSE_TOKEN",
        "APPLIANCE_CERT",
        "APPLIANCE_KEY",
        "CA_CERT",
        "CHECK_IN_URL",
        "TRUST_ROOT",
    ] {
        assert!(!site.seed_value(key).is_empty(), "{key}");
    }
    assert!(site.out().join("appliance-initial-tenant.yaml").exists());
    assert!(!site.out().join(offline::PENDING_REDEEM_FILE).exists());
    assert_refused(
        "the response installed twice",
        &site,
        || install_redeem(&site, &response),
        exit::BAD_RESPONSE,
    );

    // Offline refresh, asking for a new credential.
    let now = OffsetDateTime::now_utc();
    let ci_req = request_check_in(&site, "check-in-request.json", now, true);
    let bad_ci = site.file("tampered-check-in.json");
    // One byte of the signed payload (the version), the signature kept.
    payload_changed(
        &ci_req,
        |p| p["check_in"]["appliance"]["version"] = "1.0.2".into(),
        &bad_ci,
    );
    let e = relay_refused(&s, "payload byte", &bad_ci, exit::RELAYED_REFUSED).await;
    assert!(e.to_string().contains("signature"), "{e}");
    // One byte of the signature.
    one_byte(&ci_req, |t| after(t, "\"signature\": \"", 20), &bad_ci);
    relay_refused(&s, "signature byte", &bad_ci, exit::RELAYED_REFUSED).await;
    // This appliance's certificate, signed by another appliance's key.
    let other_key = std::fs::read_to_string(other.out().join("appliance.key")).expect("key");
    resigned(&ci_req, &other_key, |_| {}, &bad_ci);
    relay_refused(&s, "another key", &bad_ci, exit::RELAYED_REFUSED).await;

    let ci_resp = site.file("check-in-response.json");
    relay(&s, &ci_req, &ci_resp).await.expect("relay check-in");
    // The same request again, by any relay: refused, nothing signed.
    let e = relay_refused(&s, "replay", &ci_req, exit::RELAYED_REFUSED).await;
    assert!(e.to_string().contains("already accepted"), "{e}");
    // Counted in the refusal summary, not one record per replay.
    let replay_records = s
        .count(
            "SELECT count(*) FROM audit_events WHERE action = 'appliance.check_in' \
             AND convert_from(record, 'UTF8')::jsonb->'details'->>'relayed' = 'true' \
             AND convert_from(record, 'UTF8') LIKE '%relayed_request_replayed%'",
        )
        .await;
    assert_eq!(replay_records, 0);

    refuse_each(&site, &ci_resp, CHECK_IN_RESPONSE_TAMPERS, |p| {
        install_check_in(&site, p)
    });
    let before_token = site.seed_value("LICENSE_TOKEN");
    let before_cert = site.seed_value("APPLIANCE_CERT");
    match install_check_in(&site, &ci_resp).expect("install check-in") {
        Outcome::Refreshed(r) => {
            assert_eq!(r.edition, "pro");
            // A CSR was sent (rotation asked), but the service renews only near
            // expiry, as for an mTLS check-in: the credential stays.
            assert!(!r.rotated);
        }
        other => panic!("{other:?}"),
    }
    assert_ne!(site.seed_value("LICENSE_TOKEN"), before_token);
    assert_eq!(site.seed_value("APPLIANCE_CERT"), before_cert);
    assert!(!site.out().join(offline::PENDING_CHECK_IN_FILE).exists());
    assert_refused(
        "the check-in response installed twice",
        &site,
        || install_check_in(&site, &ci_resp),
        exit::BAD_RESPONSE,
    );

    // Its audit record is the check-in's, as the appliance, marked relayed.
    let relayed: i64 = s
        .count(
            "SELECT count(*) FROM audit_events WHERE action = 'appliance.check_in' \
             AND convert_from(record, 'UTF8')::jsonb->'details'->>'relayed' = 'true' \
             AND convert_from(record, 'UTF8')::jsonb->'outcome'->>'status' = 'success' \
             AND convert_from(record, 'UTF8')::jsonb->'actor'->>'role' = 'appliance'",
        )
        .await;
    assert_eq!(relayed, 1);

    // An expired request (made 8 days ago), one from a clock 10 minutes ahead.
    let old = request_check_in(&site, "old.json", now - Duration::days(8), false);
    let e = relay_refused(&s, "expired request", &old, exit::RELAYED_REFUSED).await;
    assert!(e.to_string().contains("older than"), "{e}");
    let ahead = request_check_in(&site, "ahead.json", now + Duration::minutes(10), false);
    relay_refused(&s, "request from the future", &ahead, exit::RELAYED_REFUSED).await;

    // The store moves the tenant to another paid edition: the relayed refresh follows.
    store_put_edition(&s, tenant_id, "enterprise").await;
    let req = request_check_in(&site, "enterprise.json", OffsetDateTime::now_utc(), false);
    let resp = site.file("enterprise-response.json");
    relay(&s, &req, &resp).await.expect("relay enterprise");
    match install_check_in(&site, &resp).expect("install enterprise") {
        Outcome::Refreshed(r) => assert_eq!(r.edition, "enterprise"),
        other => panic!("{other:?}"),
    }

    // Suspended: refused as over mTLS; resumed: accepted again.
    store_post(&s, &format!("/tenants/{tenant_id}/suspend")).await;
    let req = request_check_in(&site, "suspended.json", OffsetDateTime::now_utc(), false);
    relay_refused(&s, "suspended", &req, exit::TENANT_SUSPENDED).await;
    store_post(&s, &format!("/tenants/{tenant_id}/resume")).await;
    relay(&s, &req, &site.file("resumed.json"))
        .await
        .expect("the refused request is accepted once resumed");

    // An edition without a license: the service answers `license: null`, which is
    // signed by nothing; offline the appliance cannot tell it from a relay's forgery
    // and keeps its license (online, TLS vouches for it and the seed falls back).
    store_put_edition(&s, tenant_id, "essentials").await;
    let req = request_check_in(&site, "essentials.json", OffsetDateTime::now_utc(), false);
    let resp = site.file("essentials-response.json");
    relay(&s, &req, &resp).await.expect("relay essentials");
    let msg = assert_refused(
        "an unsigned downgrade",
        &site,
        || install_check_in(&site, &resp),
        exit::BAD_RESPONSE,
    );
    assert!(msg.contains("re-issued code"), "{msg}");
    store_put_edition(&s, tenant_id, "pro").await;

    // Revoked: the relayed check-in gets what an mTLS one would, and signs nothing.
    let (st, _, _) = send(
        s.store()
            .post(s.url(&format!("/appliances/{}/revoke", r.appliance_id)))
            .json(&json!({"reason": "stolen"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let req = request_check_in(&site, "revoked.json", OffsetDateTime::now_utc(), false);
    let before = site.snapshot();
    relay_refused(&s, "revoked", &req, exit::APPLIANCE_REVOKED).await;
    assert_eq!(site.snapshot().len(), before.len());

    // Nothing secret in the logs: not the code, not a key.
    let logs = captured_logs();
    assert!(!logs.contains(&code), "the install code reached a log");
    assert!(!logs.contains("PRIVATE KEY"));
}

/// A relayed check-in by an appliance a rebuild replaced is refused as over mTLS.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_check_in_of_a_replaced_appliance_is_refused() {
    let s = Stack::start().await;
    let (tenant_id, _, code) = s.tenant_with_code("pro").await;
    let site = Site::new();
    installed_through_relay(&s, &site, &code).await;

    // A rebuild: a re-issued code redeemed on another machine replaces it.
    let (st, v) = s.reissue(&json!({"tenant_id": tenant_id})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let new_code = s
        .code(v["install_code"]["code_id"].as_str().expect("code_id"))
        .await;
    let (st, _, _) = s.redeem(&new_code).await;
    assert_eq!(st, StatusCode::OK);

    let ci = request_check_in(&site, "ci.json", OffsetDateTime::now_utc(), false);
    relay_refused(&s, "replaced", &ci, exit::APPLIANCE_REPLACED).await;
}

/// The route itself: no client certificate needed; a body that does not
/// authenticate an appliance (malformed, another format, a certificate that is not an
/// appliance CA's) is refused before any check-in.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_route_refuses_what_does_not_authenticate() {
    let s = Stack::start().await;
    let url = s.url("/check-in/relayed");
    let (st, v, _) = send(s.anon().post(&url).json(&json!({
        "format": "alga-offline-check-in-request/v1",
        "payload": "e30",
        "signature": "AAAA",
    })))
    .await;
    assert_error(st, &v, 401, "relayed_request_rejected");
    let (st, v, _) = send(s.anon().post(&url).json(&json!({
        "format": "alga-offline-check-in-request/v9",
        "payload": "e30",
        "signature": "AAAA",
    })))
    .await;
    assert_error(st, &v, 400, "validation_failed");
    // A payload whose chain is the store's certificate (the service CA's), signed by
    // nobody.
    let store_cert = std::fs::read_to_string(dev().path("ALGA_STORE_CERT")).expect("cert");
    let payload = json!({
        "nonce": Uuid::new_v4(),
        "issued_at": OffsetDateTime::now_utc().unix_timestamp(),
        "certificate_chain": store_cert,
        "check_in": {"appliance": {"version": "1"}},
    });
    let (st, v, _) = send(s.anon().post(&url).json(&json!({
        "format": "alga-offline-check-in-request/v1",
        "payload": b64url(&serde_json::to_vec(&payload).expect("json")),
        "signature": b64url(&[0u8; 64]),
    })))
    .await;
    assert_error(st, &v, 401, "relayed_request_rejected");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not authenticate an appliance")),
        "{v}"
    );
}
