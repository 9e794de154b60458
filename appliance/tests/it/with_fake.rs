//! Redeem and check-in against the fake service (`fake`): answers the real stack
//! cannot give on demand. No stack needed.

use std::path::{Path, PathBuf};

use alga_appliance::crypto::{self, ApplianceKey};
use alga_appliance::exit;
use alga_appliance::fsio;
use alga_appliance::secrets::{self, LicenseSeed, SecretManifest};
use time::{Duration, OffsetDateTime};

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
}

fn setup(b: Behaviour) -> Setup {
    let fake = Fake::start(b);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &fake.ca_pem).expect("write ca");
    Setup { fake, dir, ca }
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

/// A forged or mismatched answer is refused (exit 23) and writes nothing.
#[test]
fn forged_or_mismatched_answers_write_nothing() {
    let s = setup(pro());
    type Case = (&'static str, fn(&mut Behaviour), &'static str);
    let cases: Vec<Case> = vec![
        (
            "forged",
            |b| b.forge_license = true,
            "signature does not verify",
        ),
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

/// revoked, suspended, rejected, unreachable: each its exit code, the seed unchanged.
#[test]
fn check_in_failures_keep_the_seed() {
    let s = setup(pro());
    let out = s.dir.path().join("out");
    assert_eq!(s.redeem(&out).code, 0);
    let seed_path = secrets::manifest_path(&out, secrets::LICENSE_SEED);
    let original = std::fs::read(&seed_path).expect("seed");
    let cases: &[(u16, &str, i32, &str)] = &[
        (403, "appliance_revoked", exit::APPLIANCE_REVOKED, "revoked"),
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
        assert_eq!(std::fs::read(&seed_path).expect("seed"), original, "{code}");
    }
    s.fake.set(|b| b.check_in_error = None);
    s.fake.set(|b| b.forge_license = true);
    let r = s.check_in(&out);
    assert_eq!(r.code, exit::BAD_RESPONSE, "{r:?}");
    assert_eq!(std::fs::read(&seed_path).expect("seed"), original);

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
    assert_eq!(std::fs::read(&seed_path).expect("seed"), moved);
}
