//! Redeem and check-in against the fake service (`fake`): answers the real stack
//! cannot give on demand. No stack needed.

use std::path::{Path, PathBuf};

use alga_appliance::bootstrap;
use alga_appliance::check_in::{self, CheckInConfig, Outcome};
use alga_appliance::crypto::{self, ApplianceKey};
use alga_appliance::exit;
use alga_appliance::fsio;
use alga_appliance::secrets::{self, LicenseSeed, SecretManifest};
use alga_appliance::service::Retry;
use time::{Duration, OffsetDateTime};

use crate::bootstrap_db::TestDb;
use crate::common::*;
use crate::fake::{Behaviour, Fake};

fn pro() -> Behaviour {
    Behaviour {
        edition: "pro",
        ..Behaviour::default()
    }
}

struct Setup {
    fake: Fake,
    dir: tempfile::TempDir,
    ca: PathBuf,
    root: PathBuf,
}

fn setup(b: Behaviour) -> Setup {
    let fake = Fake::start(b);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &fake.ca_pem).expect("write ca");
    let root = dir.path().join("trust-root.pem");
    std::fs::write(&root, &fake.trust_root_pem).expect("write root");
    Setup {
        fake,
        dir,
        ca,
        root,
    }
}

impl Setup {
    fn redeem(&self, out: &Path) -> Run {
        self.redeem_ca(out, &self.ca)
    }

    fn redeem_ca(&self, out: &Path, ca: &Path) -> Run {
        run(
            &[
                "redeem",
                "--service-url",
                &self.fake.url,
                "--ca-bundle",
                ca.to_str().expect("utf8"),
                "--trust-root",
                self.root.to_str().expect("utf8"),
                "--out",
                out.to_str().expect("utf8"),
            ],
            Some(&random_wellformed_code()),
        )
    }

    fn check_in(&self, seed: &Path) -> Run {
        run(&["check-in", "--seed", seed.to_str().expect("utf8")], None)
    }

    /// Redeem with every log on (`trace`), with the code it used.
    fn redeem_traced(&self, out: &Path) -> (Run, String) {
        let code = random_wellformed_code();
        let r = run_logging(
            &[
                "redeem",
                "--service-url",
                &self.fake.url,
                "--ca-bundle",
                self.ca.to_str().expect("utf8"),
                "--trust-root",
                self.root.to_str().expect("utf8"),
                "--out",
                out.to_str().expect("utf8"),
            ],
            Some(&code),
            "trace",
        );
        (r, code)
    }
}

/// Every error answer of `/register`: its exit code and sentence, nothing written.
#[test]
fn redeem_error_answers_map_to_exit_codes() {
    let s = setup(pro());
    let cases: &[(u16, &str, i32, &str)] = &[
        (400, "code_malformed", exit::CODE_MALFORMED, "type it again"),
        (
            401,
            "code_invalid",
            exit::CODE_INVALID,
            "does not recognise",
        ),
        (
            410,
            "code_expired",
            exit::CODE_EXPIRED,
            "expired: ask for a re-issued code",
        ),
        (410, "code_revoked", exit::CODE_REVOKED, "re-issued code"),
        (
            409,
            "code_already_used",
            exit::CODE_ALREADY_USED,
            "already been used: ask for a re-issued code",
        ),
        (429, "rate_limited", exit::SERVICE_UNAVAILABLE, "try again"),
        (
            503,
            "license_service_unavailable",
            exit::SERVICE_UNAVAILABLE,
            "try again",
        ),
        (400, "csr_invalid", exit::INTERNAL, "contact support"),
        (500, "internal", exit::INTERNAL, "contact support"),
    ];
    for &(status, code, want, says) in cases {
        s.fake.set(|b| b.redeem_error = Some((status, code)));
        let out = s.dir.path().join(code);
        let r = s.redeem(&out);
        assert_eq!(r.code, want, "{code}: {r:?}");
        assert!(r.stderr.contains(says), "{code}: {}", r.stderr);
        assert_no_secrets(&out);
    }
    // Errors are not retried (only connection failures are): one call per case.
    assert_eq!(s.fake.seen.lock().expect("lock").redeems, cases.len());
}

/// A mismatched answer is refused (exit 23) and writes nothing.
#[test]
fn mismatched_answers_write_nothing() {
    let s = setup(pro());
    type Case = (&'static str, fn(&mut Behaviour), &'static str);
    let cases: Vec<Case> = vec![
        (
            "other-appliance",
            |b| b.license_other_appliance = true,
            "another appliance",
        ),
        (
            "cert-identity",
            |b| b.cert_other_identity = true,
            "another tenant or appliance",
        ),
        (
            "cert-key",
            |b| b.cert_other_key = true,
            "not for this appliance's key",
        ),
    ];
    for (name, set, says) in cases {
        s.fake.set(|b| *b = pro());
        s.fake.set(set);
        let out = s.dir.path().join(name);
        let r = s.redeem(&out);
        assert_eq!(r.code, exit::BAD_RESPONSE, "{name}: {r:?}");
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
        assert_no_secrets(&out);
    }
}

type TrustCase = (&'static str, fn(&mut Behaviour), &'static str);

/// What a service (a compromised gateway) could make up without the HSM's root: each
/// refused with exit 24 and its reason.
fn untrusted_answers() -> Vec<TrustCase> {
    vec![
        (
            // The review's experiment: a random key with a one-key "endorsement" by a
            // root the appliance does not pin, another iss, ten years, a million seats.
            "rogue-root",
            |b| b.rogue_root = true,
            "not endorsed by the pinned trust root",
        ),
        (
            "no-endorsement",
            |b| b.no_endorsement = true,
            "carries no endorsement",
        ),
        (
            "forged",
            |b| b.forge_license = true,
            "signature does not verify",
        ),
        (
            "other-iss",
            |b| b.license_iss = Some("https://other.example"),
            "another issuer",
        ),
        (
            "ten-years",
            |b| b.license_days = Some(3650),
            "grants more than its key is endorsed for: a lifetime",
        ),
        (
            "million-seats",
            |b| b.license_seats = Some(1_000_000),
            "grants more than its key is endorsed for: 1000000 seats",
        ),
        (
            "extra-feature",
            |b| b.license_extra_feature = true,
            "grants more than its key is endorsed for: feature multi-site",
        ),
        (
            "uncertified-ca",
            |b| b.ca_not_certified = true,
            "not certified by the pinned trust root",
        ),
    ]
}

/// Redeem: whatever the root did not sign or allow is refused with exit 24, and
/// nothing is written (no Secret; the key, made before the call, stays for a retry).
#[test]
fn redeem_refuses_what_the_root_did_not_sign() {
    let s = setup(pro());
    for (name, set, says) in untrusted_answers() {
        s.fake.set(|b| *b = pro());
        s.fake.set(set);
        let out = s.dir.path().join(name);
        let r = s.redeem(&out);
        assert_eq!(r.code, exit::UNTRUSTED, "{name}: {r:?}");
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("do not retry with another trust root"),
            "{name}: {}",
            r.stderr
        );
        assert_no_secrets(&out);
    }
    // The same fake, honest again: the same appliance redeems.
    s.fake.set(|b| *b = pro());
    let out = s.dir.path().join("honest");
    assert_eq!(s.redeem(&out).code, 0);
}

/// Check-in: the same answers are refused with exit 24 and the seed stays as it was,
/// byte for byte (the pinned root carried in it included).
#[test]
fn check_in_refuses_what_the_root_did_not_sign() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let seed_path = secrets::manifest_path(&out, secrets::LICENSE_SEED);
    let original = std::fs::read(&seed_path).expect("seed");
    assert_eq!(
        seed_of(&out).paid.expect("paid").trust_root_pem.as_deref(),
        Some(s.fake.trust_root_pem.as_str()),
        "the seed pins the root redeem was given"
    );
    for (name, set, says) in untrusted_answers() {
        s.fake.set(|b| *b = pro());
        s.fake.set(set);
        // A CSR every time, so that a credential comes back for the CA case.
        let r = run(
            &[
                "check-in",
                "--seed",
                out.to_str().expect("utf8"),
                "--rotate",
            ],
            None,
        );
        assert_eq!(r.code, exit::UNTRUSTED, "{name}: {r:?}");
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
        assert_eq!(std::fs::read(&seed_path).expect("seed"), original, "{name}");
    }
    s.fake.set(|b| *b = pro());
    assert_eq!(s.check_in(&out).code, 0);
}

/// A seed written before the trust root existed names none: check-in asks for one
/// (exit 41, nothing sent), and with `--trust-root` checks in and pins it.
#[test]
fn a_seed_without_a_trust_root_needs_one_given() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let mut old = seed_of(&out);
    if let Some(p) = old.paid.as_mut() {
        p.trust_root_pem = None;
    }
    let seed_path = secrets::manifest_path(&out, secrets::LICENSE_SEED);
    fsio::write_atomic(
        &seed_path,
        old.to_manifest().to_yaml().as_bytes(),
        fsio::SECRET_MODE,
    )
    .expect("write");
    let sent = s.fake.seen.lock().expect("lock").requests;
    let r = s.check_in(&out);
    assert_eq!(r.code, exit::LOCAL_INPUT, "{r:?}");
    assert!(r.stderr.contains("--trust-root"), "{}", r.stderr);
    assert_eq!(
        s.fake.seen.lock().expect("lock").requests,
        sent,
        "nothing sent"
    );
    let r = run(
        &[
            "check-in",
            "--seed",
            out.to_str().expect("utf8"),
            "--trust-root",
            s.root.to_str().expect("utf8"),
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        seed_of(&out).paid.expect("paid").trust_root_pem.as_deref(),
        Some(s.fake.trust_root_pem.as_str())
    );
}

/// The service's certificate is checked against the given bundle only.
#[test]
fn wrong_ca_bundle_is_a_tls_failure() {
    let s = setup(pro());
    let other = setup(pro());
    let out = s.dir.path().join("out");
    let r = s.redeem_ca(&out, &other.ca);
    assert_eq!(r.code, exit::TLS, "{r:?}");
    assert!(
        r.stderr.contains("not trusted by the CA bundle"),
        "{}",
        r.stderr
    );
    assert_no_secrets(&out);
    assert_eq!(
        s.fake.seen.lock().expect("lock").redeems,
        0,
        "no request was sent"
    );
}

/// essentials over the fake: EDITION only.
#[test]
fn essentials_seed_has_edition_only() {
    let s = setup(Behaviour {
        edition: "essentials",
        ..Behaviour::default()
    });
    let out = s.dir.path().join("out");
    let r = s.redeem(&out);
    assert_eq!(r.code, 0, "{r:?}");
    let (t, seed) = read_secrets(&out);
    assert_eq!(
        t["INITIAL_TENANT_ID"],
        s.fake.tenant_id.to_string().as_bytes()
    );
    assert_eq!(seed.keys().collect::<Vec<_>>(), vec!["EDITION"]);
}

fn seed_of(dir: &Path) -> LicenseSeed {
    let m = SecretManifest::load(dir, secrets::LICENSE_SEED)
        .expect("read")
        .expect("exists");
    LicenseSeed::from_manifest(&m).expect("seed")
}

/// A credential with less than a third of its life left is rotated at check-in: a new
/// local key, a CSR, the new certificate verified and stored with the new key; the
/// next check-in, with a fresh certificate, sends no CSR.
#[test]
fn check_in_rotates_a_credential_near_expiry() {
    let s = setup(Behaviour {
        cert_left: Some(Duration::days(5)),
        ..pro()
    });
    let out = s.dir.path().join("out");
    let (redeemed, code) = s.redeem_traced(&out);
    assert_eq!(redeemed.code, 0, "{redeemed:?}");
    let before = seed_of(&out).paid.expect("paid");
    let old_facts = crypto::cert_facts(&before.cert_chain_pem).expect("cert");
    assert!(old_facts.needs_renewal(OffsetDateTime::now_utc()));

    s.fake.set(|b| b.cert_left = None);
    let r = run_logging(
        &["check-in", "--seed", out.to_str().expect("utf8")],
        None,
        "trace",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("credential_rotated: true"), "{r:?}");
    let after = seed_of(&out).paid.expect("paid");
    assert_ne!(after.token.expose(), before.token.expose(), "new license");
    assert_ne!(after.key_pem.expose(), before.key_pem.expose(), "new key");
    let new_key = ApplianceKey::from_pem(after.key_pem.expose()).expect("key");
    let facts = crypto::cert_facts(&after.cert_chain_pem).expect("cert");
    assert_eq!(facts.identity, old_facts.identity, "same appliance");
    assert!(!facts.needs_renewal(OffsetDateTime::now_utc()));
    let (leaf, chain) = after
        .cert_chain_pem
        .split_once("-----END CERTIFICATE-----")
        .map(|(a, b)| (format!("{a}-----END CERTIFICATE-----"), b.trim().to_owned()))
        .expect("chain");
    crypto::verify_certificate(
        &leaf,
        &chain,
        &new_key,
        facts.identity,
        &crypto::load_trust_roots(&s.root).expect("root"),
        OffsetDateTime::now_utc(),
    )
    .expect("the new certificate is for the new key");
    // Even at `trace`, no code, token or key reaches the output.
    for (run, what) in [(&redeemed, "redeem"), (&r, "check-in")] {
        for secret in [
            code.as_str(),
            before.token.expose(),
            after.token.expose(),
            before.key_pem.expose(),
            after.key_pem.expose(),
        ] {
            let probe = secret.lines().nth(1).unwrap_or(secret);
            assert!(
                !run.stdout.contains(probe) && !run.stderr.contains(probe),
                "{what} printed a secret"
            );
        }
    }
    // The key file beside the Secrets follows the rotation; both stay 0600.
    let file_key = std::fs::read_to_string(out.join("appliance.key")).expect("key");
    assert_eq!(file_key, after.key_pem.expose());
    assert_eq!(mode(&out.join("appliance.key")), 0o600);
    assert_eq!(
        mode(&secrets::manifest_path(&out, secrets::LICENSE_SEED)),
        0o600
    );
    {
        let seen = s.fake.seen.lock().expect("lock");
        assert_eq!((seen.check_ins, seen.check_in_csrs), (1, 1));
        assert_eq!(
            seen.check_in_identity,
            Some(old_facts.identity),
            "mTLS with the credential"
        );
    }

    // The fresh credential is used for the next check-in, which needs no rotation.
    let r = s.check_in(&out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("credential_rotated: false"), "{r:?}");
    let seen = s.fake.seen.lock().expect("lock");
    assert_eq!((seen.check_ins, seen.check_in_csrs), (2, 1));
}

/// revoked, replaced, suspended, rejected, busy, unreachable: each its exit code, the
/// seed (and the key copy) unchanged, and a warning with the installed license's
/// times: by when to check in when retrying can help, its expiry always.
#[test]
fn check_in_failures_keep_the_seed() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let seed_path = secrets::manifest_path(&out, secrets::LICENSE_SEED);
    let original = std::fs::read(&seed_path).expect("seed");
    let key_file = std::fs::read(out.join(crypto::KEY_FILE)).expect("key");
    let claims =
        crypto::claims_of_verified_token(&seed_of(&out).paid.expect("paid").token).expect("claims");
    let at = |t: i64| alga_appliance::rfc3339(OffsetDateTime::from_unix_timestamp(t).expect("t"));
    let expires = format!(
        "warning: the installed license expires at {}",
        at(claims.exp)
    );
    let by = format!(
        "warning: this appliance must check in by {} or the license service counts it overdue; the installed license expires at {}",
        at(claims.check_in_by.expect("the fake sets it")),
        at(claims.exp)
    );
    let secrets_before = seed_secrets(&out);
    let cases: &[(u16, &str, i32, &str)] = &[
        (403, "appliance_revoked", exit::APPLIANCE_REVOKED, "revoked"),
        (
            403,
            "appliance_replaced",
            exit::APPLIANCE_REPLACED,
            "replaced by a rebuild",
        ),
        (403, "tenant_suspended", exit::TENANT_SUSPENDED, "suspended"),
        (
            401,
            "credential_required",
            exit::CREDENTIAL_REJECTED,
            "did not accept",
        ),
    ];
    for &(status, code, want, says) in cases {
        s.fake.set(|b| b.check_in_error = Some((status, code)));
        let r = s.check_in(&out);
        assert_eq!(r.code, want, "{code}: {r:?}");
        assert!(r.stderr.contains(says), "{code}: {}", r.stderr);
        assert!(
            r.stderr.contains(&expires) && !r.stderr.contains("check in by"),
            "{code}: {}",
            r.stderr
        );
        assert_quiet(&r, &secrets_before);
        assert_eq!(std::fs::read(&seed_path).expect("seed"), original, "{code}");
        assert_eq!(
            std::fs::read(out.join(crypto::KEY_FILE)).expect("key"),
            key_file,
            "{code}"
        );
    }
    s.fake
        .set(|b| b.check_in_error = Some((503, "service_unavailable")));
    let r = s.check_in(&out);
    assert_eq!(r.code, exit::SERVICE_UNAVAILABLE, "{r:?}");
    assert!(r.stderr.contains(&by), "{}", r.stderr);
    assert_eq!(std::fs::read(&seed_path).expect("seed"), original);
    s.fake.set(|b| b.check_in_error = None);
    s.fake.set(|b| b.license_other_appliance = true);
    let r = s.check_in(&out);
    assert_eq!(r.code, exit::BAD_RESPONSE, "{r:?}");
    assert_eq!(std::fs::read(&seed_path).expect("seed"), original);
    s.fake.set(|b| *b = pro());
    s.fake.set(|b| b.forge_license = true);
    let r = s.check_in(&out);
    assert_eq!(r.code, exit::UNTRUSTED, "{r:?}");
    assert!(
        r.stderr.contains("expires at"),
        "the expiry is told: {}",
        r.stderr
    );
    assert_eq!(std::fs::read(&seed_path).expect("seed"), original);
    s.fake.set(|b| *b = pro());

    // A check-in URL where nothing listens.
    let mut seed = seed_of(&out);
    if let Some(p) = seed.paid.as_mut() {
        p.check_in_url = "https://127.0.0.1:1/check-in".into();
    }
    fsio::write_atomic(
        &seed_path,
        seed.to_manifest().to_yaml().as_bytes(),
        fsio::SECRET_MODE,
    )
    .expect("write");
    let moved = std::fs::read(&seed_path).expect("seed");
    let r = s.check_in(&out);
    assert_eq!(r.code, exit::UNREACHABLE, "{r:?}");
    assert!(r.stderr.contains(&by), "{}", r.stderr);
    assert_quiet(&r, &secrets_before);
    assert_eq!(std::fs::read(&seed_path).expect("seed"), moved);
}

/// The token and key of a paid seed, to prove none of them is printed.
fn seed_secrets(dir: &Path) -> Vec<String> {
    let p = seed_of(dir).paid.expect("paid");
    vec![p.token.expose().to_owned(), p.key_pem.expose().to_owned()]
}

/// Nothing secret in what a run printed (the token; the key by its first base64 line).
fn assert_quiet(r: &Run, secrets: &[String]) {
    for s in secrets {
        let probe = s.lines().nth(1).unwrap_or(s);
        assert!(
            !r.stdout.contains(probe) && !r.stderr.contains(probe),
            "a secret was printed"
        );
    }
}

fn check_in_db(seed: &Path, db: &TestDb) -> Run {
    run(
        &[
            "check-in",
            "--seed",
            seed.to_str().expect("utf8"),
            "--database-url",
            &db.url,
        ],
        None,
    )
}

fn bootstrap(cmd: &str, dir: &Path, db: &TestDb) -> Run {
    run(
        &[
            "bootstrap",
            cmd,
            "--secrets",
            dir.to_str().expect("utf8"),
            "--database-url",
            &db.url,
        ],
        None,
    )
}

/// `license: null` (the store moved the tenant to essentials): the seed becomes
/// EDITION=essentials alone, 0600, the key copy goes, the tenant Secret stays, exit 0;
/// the next check-in has nothing to refresh and sends nothing.
#[test]
fn check_in_without_license_falls_back_to_the_edition() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let secrets_before = seed_secrets(&out);
    let tenant_secret = std::fs::read(secrets::manifest_path(&out, secrets::INITIAL_TENANT))
        .expect("tenant Secret");
    assert!(out.join(crypto::KEY_FILE).exists());

    s.fake.set(|b| {
        b.unlicensed = true;
        b.check_in_edition = Some("essentials");
    });
    let r = run_logging(
        &["check-in", "--seed", out.to_str().expect("utf8")],
        None,
        "trace",
    );
    assert_eq!(r.code, 0, "{r:?}");
    for line in [
        "edition: essentials",
        "previous_edition: pro",
        "tier: essentials",
        "license: none",
    ] {
        assert!(r.stdout.contains(line), "{line}: {r:?}");
    }
    assert_quiet(&r, &secrets_before);
    let (t, seed) = read_secrets(&out);
    assert_eq!(seed.keys().collect::<Vec<_>>(), vec!["EDITION"]);
    assert_eq!(seed["EDITION"], b"essentials");
    assert_eq!(
        t["INITIAL_TENANT_ID"],
        s.fake.tenant_id.to_string().as_bytes()
    );
    assert_eq!(
        std::fs::read(secrets::manifest_path(&out, secrets::INITIAL_TENANT)).expect("t"),
        tenant_secret,
        "the tenant Secret is not touched"
    );
    assert_eq!(
        mode(&secrets::manifest_path(&out, secrets::LICENSE_SEED)),
        0o600
    );
    assert!(!out.join(crypto::KEY_FILE).exists(), "the key copy is gone");
    assert_eq!(
        files_in(&out),
        vec![
            "appliance-initial-tenant.yaml".to_owned(),
            "appliance-license-seed.yaml".to_owned()
        ],
        "no temporary file left"
    );
    // Exactly what an essentials redeem writes.
    let ess = LicenseSeed {
        edition: "essentials".into(),
        paid: None,
    };
    assert_eq!(
        std::fs::read_to_string(secrets::manifest_path(&out, secrets::LICENSE_SEED)).expect("seed"),
        *ess.to_manifest().to_yaml()
    );

    // The daily timer goes on: nothing to refresh, nothing sent, exit 0.
    let sent = s.fake.seen.lock().expect("lock").requests;
    let r = s.check_in(&out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("nothing to refresh"), "{r:?}");
    assert_eq!(s.fake.seen.lock().expect("lock").requests, sent);
}

/// With a database URL the check-in writes license_state from the rewritten seed:
/// a refresh stores the new token (and prints check_in_by), a fall-back the
/// essentials tier without a token. Needs DATABASE_URL (a real Postgres).
#[tokio::test]
async fn check_in_with_database_follows_the_seed() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let db = TestDb::new().await;
    // Before `create-tenant` the database step fails (exit 51) after the Secret was
    // refreshed, and says how license_state catches up.
    let token_before = seed_of(&out).paid.expect("paid").token;
    let r = check_in_db(&out, &db);
    assert_eq!(r.code, exit::TENANT_CONFLICT, "{r:?}");
    assert!(
        r.stderr.contains("license seed is up to date")
            && r.stderr.contains("bootstrap seed-license")
            && r.stderr.contains("create-tenant"),
        "{}",
        r.stderr
    );
    let token_after = seed_of(&out).paid.expect("paid").token;
    assert_ne!(
        token_after.expose(),
        token_before.expose(),
        "the seed was refreshed"
    );
    assert_eq!(bootstrap("create-tenant", &out, &db).code, 0);
    let r = bootstrap("seed-license", &out, &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("tier: licensed"), "{r:?}");
    assert!(
        r.stdout.contains("check_in_by: "),
        "seed-license prints it: {r:?}"
    );
    let c = bootstrap::connect(&db.url).await.expect("connect");
    let first_jti: Option<String> = c
        .query_one("SELECT license_jti FROM alga_appliance.license_state", &[])
        .await
        .expect("row")
        .get(0);

    // A refresh: the new license is in license_state.
    let r = check_in_db(&out, &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("license_state:"), "{r:?}");
    assert!(r.stdout.contains("  tier: licensed"), "{r:?}");
    assert_quiet(&r, &seed_secrets(&out));
    let token = seed_of(&out).paid.expect("paid").token;
    let claims = crypto::claims_of_verified_token(&token).expect("claims");
    let stored: (Option<String>, String) = c
        .query_one(
            "SELECT license_jti, license_token FROM alga_appliance.license_state",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("row");
    assert_eq!(stored.0.as_deref(), Some(claims.jti.as_str()));
    assert_ne!(stored.0, first_jti, "the refreshed license is stored");
    assert_eq!(stored.1, token.expose());

    // The store moved the tenant to essentials: tier essentials, no token.
    s.fake.set(|b| {
        b.unlicensed = true;
        b.check_in_edition = Some("essentials");
    });
    let r = check_in_db(&out, &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("  tier: essentials"), "{r:?}");
    let state = bootstrap::license_state(&c)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(
        (state.edition.as_str(), state.tier.as_str(), state.has_token),
        ("essentials", "essentials", false)
    );
    assert_eq!(state.tenant_id, s.fake.tenant_id);
    assert_eq!((state.expires_at, state.next_refresh_at), (None, None));
    drop(c);
    db.drop_db().await;
}

/// The store moved the tenant to another paid edition: a license carrying exactly
/// the answer's edition is accepted and EDITION follows; with an old gateway (no
/// `edition`) the seed's edition is still what is expected.
#[test]
fn check_in_follows_another_paid_edition() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    s.fake.set(|b| b.check_in_edition = Some("enterprise"));
    let r = s.check_in(&out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("edition: enterprise") && r.stdout.contains("previous_edition: pro"),
        "{r:?}"
    );
    let seed = seed_of(&out);
    assert_eq!(seed.edition, "enterprise");
    let claims = crypto::claims_of_verified_token(&seed.paid.expect("paid").token).expect("claims");
    assert_eq!(claims.edition, "enterprise");
    // check_in_by is printed, as RFC 3339, and is the license's.
    let by = claims.check_in_by.expect("the fake sets it");
    let by = OffsetDateTime::from_unix_timestamp(by).expect("t");
    assert!(
        r.stdout
            .contains(&format!("check_in_by: {}", alga_appliance::rfc3339(by))),
        "{r:?}"
    );

    // An old gateway sends no edition: the seed's edition (now enterprise) is expected.
    s.fake.set(|b| b.old_gateway = true);
    let r = s.check_in(&out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("previous_edition"), "{r:?}");
    assert_eq!(seed_of(&out).edition, "enterprise");
    let seed_path = secrets::manifest_path(&out, secrets::LICENSE_SEED);
    let before = std::fs::read(&seed_path).expect("seed");
    s.fake.set(|b| b.license_edition = Some("pro"));
    let r = s.check_in(&out);
    assert_eq!(r.code, exit::BAD_RESPONSE, "{r:?}");
    assert!(r.stderr.contains("another edition"), "{}", r.stderr);
    assert_eq!(std::fs::read(&seed_path).expect("seed"), before);
}

/// A license whose edition claim is not the answer's edition is refused (exit 23)
/// and changes nothing, either way round; so is `license: null` without an edition.
#[test]
fn check_in_refuses_a_license_for_another_edition_than_the_answer() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let seed_path = secrets::manifest_path(&out, secrets::LICENSE_SEED);
    let original = std::fs::read(&seed_path).expect("seed");
    let key_file = std::fs::read(out.join(crypto::KEY_FILE)).expect("key");
    type Case = (&'static str, fn(&mut Behaviour), &'static str);
    let cases: Vec<Case> = vec![
        (
            "upgrade, old license",
            |b| {
                b.check_in_edition = Some("enterprise");
                b.license_edition = Some("pro");
            },
            "another edition",
        ),
        (
            "same edition, other license",
            |b| b.license_edition = Some("enterprise"),
            "another edition",
        ),
        (
            "null license, no edition",
            |b| {
                b.unlicensed = true;
                b.old_gateway = true;
            },
            "neither a license nor the tenant's edition",
        ),
    ];
    for (name, set, says) in cases {
        s.fake.set(|b| *b = pro());
        s.fake.set(set);
        let r = s.check_in(&out);
        assert_eq!(r.code, exit::BAD_RESPONSE, "{name}: {r:?}");
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
        assert_eq!(std::fs::read(&seed_path).expect("seed"), original, "{name}");
        assert_eq!(
            std::fs::read(out.join(crypto::KEY_FILE)).expect("key"),
            key_file,
            "{name}"
        );
    }
}

/// A seed without a license (an essentials redeem): check-in is Ok, sends nothing.
#[tokio::test]
async fn check_in_on_an_essentials_seed_sends_nothing() {
    let s = setup(Behaviour {
        edition: "essentials",
        ..Behaviour::default()
    });
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let seed_path = secrets::manifest_path(&out, secrets::LICENSE_SEED);
    let before = std::fs::read(&seed_path).expect("seed");
    let sent = s.fake.seen.lock().expect("lock").requests;
    assert_eq!(sent, 1, "the redeem");

    let cfg = CheckInConfig {
        seed_dir: out.clone(),
        service_url: Some(s.fake.url.clone()),
        ca_bundle: Some(s.ca.clone()),
        trust_root: None,
        force_rotate: true,
        version: "it".into(),
        retry: Retry::default(),
    };
    let outcome = check_in::check_in(&cfg, OffsetDateTime::now_utc())
        .await
        .expect("Ok: nothing to refresh");
    assert!(
        matches!(&outcome, Outcome::NothingToRefresh { edition } if edition == "essentials"),
        "{outcome:?}"
    );
    let r = s.check_in(&out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("edition: essentials") && r.stdout.contains("nothing to refresh"),
        "{r:?}"
    );
    assert_eq!(
        s.fake.seen.lock().expect("lock").requests,
        sent,
        "nothing sent"
    );
    assert_eq!(std::fs::read(&seed_path).expect("seed"), before);
}
