//! Against the real local stack (`make up`): the gateway on `ALGA_GATEWAY_URL`, its
//! mail in `ALGA_MAIL_DIR`, tenants registered with the store's identity.
//!
//! The install code reaches a test only the way it reaches a customer: through the
//! mail (the store's API never returns it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alga_appliance::crypto::TrustRoots;
use alga_appliance::crypto::{self, ApplianceKey, LicenseExpectation};
use alga_appliance::exit;
use alga_appliance::service::{self, ClientIdentity, Retry, ServiceClient};
use alga_protocol::api::{
    self, Contact, EntitlementRequest, EntitlementResponse, RegisterTenantRequest,
    RegisterTenantResponse, ReissueRequest, ReissueResponse,
};
use alga_protocol::{InstallCode, SecretText};
use base64::Engine as _;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::bootstrap_db::TestDb;
use crate::common::*;

struct Stack {
    url: String,
    ca_bundle: String,
    /// The issuer's trust root (`alga-issuer keys trust-root`), what appliances pin.
    trust_root: String,
    mail_dir: PathBuf,
    ca: Vec<u8>,
    store_cert: String,
    store_key: SecretText,
}

fn stack() -> Stack {
    let ca_bundle = stack_var("ALGA_CA_BUNDLE");
    Stack {
        url: stack_var("ALGA_GATEWAY_URL"),
        ca: std::fs::read(&ca_bundle).expect("read ALGA_CA_BUNDLE"),
        ca_bundle,
        trust_root: stack_var("ALGA_TRUST_ROOT"),
        mail_dir: PathBuf::from(stack_var("ALGA_MAIL_DIR")),
        store_cert: std::fs::read_to_string(stack_var("ALGA_STORE_CERT")).expect("store cert"),
        store_key: SecretText::new(
            std::fs::read_to_string(stack_var("ALGA_STORE_KEY")).expect("store key"),
        ),
    }
}

/// One attempt: a store call is not always safe to repeat (register-tenant).
fn one_attempt() -> Retry {
    Retry {
        attempts: 1,
        ..Retry::default()
    }
}

impl Stack {
    /// A client with the store's identity. A fresh one per call: the gateway closes a
    /// keep-alive connection idle for 10 s, and a test's runtime, blocked in a child
    /// process or a sleep, does not notice; a pooled connection would then fail the
    /// next call ("connection closed before message completed").
    fn store(&self) -> ServiceClient {
        ServiceClient::new(
            &self.ca,
            Some(ClientIdentity {
                cert_chain_pem: &self.store_cert,
                key_pem: &self.store_key,
            }),
            one_attempt(),
        )
        .expect("store client")
    }

    fn base(&self) -> reqwest::Url {
        service::parse_service_url(&self.url).expect("ALGA_GATEWAY_URL")
    }

    async fn register(&self, edition: &str) -> (RegisterTenantResponse, String) {
        let email = format!("ops-{}@appliance-it.example", Uuid::new_v4().simple());
        let req = RegisterTenantRequest {
            company: format!("Appliance IT {}", Uuid::new_v4().simple()),
            contact: Contact {
                name: "Appliance Tester".into(),
                email: email.clone(),
            },
            edition: edition.into(),
        };
        let resp: RegisterTenantResponse = self
            .store()
            .post_json(&service::endpoint(&self.base(), api::REGISTER_TENANT), &req)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "gateway at {} not answering (is `make up` done?): {e}",
                    self.url
                )
            })
            .unwrap_or_else(|e| panic!("register-tenant failed: {e:?}"));
        assert_eq!(resp.edition, edition);
        (resp, email)
    }

    /// A re-issued code for the tenant; with neither a named appliance nor
    /// `add_appliance`, it replaces the tenant's only active appliance (the rebuild).
    async fn reissue(&self, tenant_id: Uuid) -> ReissueResponse {
        let req = ReissueRequest {
            tenant_id: Some(tenant_id),
            ..ReissueRequest::default()
        };
        self.store()
            .post_json(&service::endpoint(&self.base(), api::REISSUE), &req)
            .await
            .expect("gateway answers")
            .unwrap_or_else(|e| panic!("reissue failed: {e:?}"))
    }

    /// `PUT /tenants/{id}/entitlement` as the store. The appliance's client has no PUT
    /// (it never needs one), so this call has its own mTLS client.
    async fn set_edition(&self, tenant_id: Uuid, edition: &str) -> EntitlementResponse {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(c.expect("CA certificate")).expect("root");
        }
        let certs = CertificateDer::pem_slice_iter(self.store_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("store cert PEM");
        let key =
            PrivateKeyDer::from_pem_slice(self.store_key.expose().as_bytes()).expect("store key");
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("store identity");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .expect("client");
        let url = service::endpoint(&self.base(), &format!("/tenants/{tenant_id}/entitlement"));
        let resp = http
            .put(url)
            .json(&EntitlementRequest {
                edition: edition.into(),
            })
            .send()
            .await
            .expect("gateway answers");
        let status = resp.status();
        let body = resp.bytes().await.expect("body");
        assert!(
            status.is_success(),
            "entitlement change to {edition} failed: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let r: EntitlementResponse = serde_json::from_slice(&body).expect("EntitlementResponse");
        assert_eq!((r.tenant_id, r.edition.as_str()), (tenant_id, edition));
        r
    }

    async fn revoke(&self, appliance_id: Uuid) {
        let url = service::endpoint(&self.base(), &format!("/appliances/{appliance_id}/revoke"));
        let _: serde_json::Value = self
            .store()
            .post_json(
                &url,
                &serde_json::json!({"reason": "appliance-it: rebuilt"}),
            )
            .await
            .expect("gateway answers")
            .unwrap_or_else(|e| panic!("revoke failed: {e:?}"));
    }

    fn trust_roots(&self) -> TrustRoots {
        crypto::load_trust_roots(Path::new(&self.trust_root)).expect("ALGA_TRUST_ROOT is usable")
    }

    /// Waits for the mail to `email` carrying the code `code_id` and returns the code.
    fn code_from_mail(&self, email: &str, code_id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            for name in files_in(&self.mail_dir) {
                let Ok(raw) = std::fs::read(self.mail_dir.join(&name)) else {
                    continue;
                };
                let raw = String::from_utf8_lossy(&raw);
                if !raw.contains(email) {
                    continue;
                }
                for text in decoded_texts(&raw) {
                    for cand in code_candidates(&text) {
                        if let Ok(c) = InstallCode::parse(&cand)
                            && c.code_id().as_str() == code_id
                        {
                            return cand;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no mail to {email} with code {code_id} in {} after 90 s: is the gateway's mail delivery wired to the SMTP sink?",
                self.mail_dir.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `redeem` with the code on stdin, into `out`. A shared stack's redeem rate limit
    /// (per source address) may answer 429 while other suites run: wait and retry then.
    fn redeem(&self, code: &str, out: &Path) -> Run {
        self.redeem_with(code, out, &self.url, &self.ca_bundle)
    }

    fn redeem_with(&self, code: &str, out: &Path, url: &str, ca: &str) -> Run {
        let args = [
            "redeem",
            "--service-url",
            url,
            "--ca-bundle",
            ca,
            "--trust-root",
            &self.trust_root,
            "--out",
            out.to_str().expect("utf8"),
        ];
        for _ in 0..12 {
            let r = run(&args, Some(code));
            if r.code != exit::SERVICE_UNAVAILABLE {
                assert!(
                    !r.stdout.contains(code) && !r.stderr.contains(code),
                    "the code is never printed"
                );
                return r;
            }
            std::thread::sleep(Duration::from_secs(6));
        }
        panic!("the license service stayed busy (rate limited) for over a minute");
    }
}

/// The texts of a raw mail a code may be in: the raw text with quoted-printable soft
/// breaks undone, and every base64 part decoded.
fn decoded_texts(raw: &str) -> Vec<String> {
    let mut out = vec![
        raw.replace("=\r\n", "")
            .replace("=\n", "")
            .replace("=3D", "="),
    ];
    let lines: Vec<&str> = raw.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if lines[i]
            .to_ascii_lowercase()
            .starts_with("content-transfer-encoding: base64")
        {
            while i < lines.len() && !lines[i].trim().is_empty() {
                i += 1;
            }
            let mut b64 = String::new();
            while i < lines.len() && !lines[i].starts_with("--") {
                b64.push_str(lines[i].trim());
                i += 1;
            }
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&b64) {
                out.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        i += 1;
    }
    out
}

/// Every `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX` in `text`.
fn code_candidates(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let len = 6 * 5 + 5;
    let mut out = Vec::new();
    if b.len() < len {
        return out;
    }
    for start in 0..=b.len() - len {
        let ok = (0..len).all(|i| {
            let c = b[start + i];
            if i % 6 == 5 {
                c == b'-'
            } else {
                c.is_ascii_digit() || c.is_ascii_uppercase()
            }
        });
        let bounded = (start == 0 || !b[start - 1].is_ascii_alphanumeric())
            && (start + len == b.len() || !b[start + len].is_ascii_alphanumeric());
        if ok && bounded {
            out.push(text[start..start + len].to_owned());
        }
    }
    out
}

/// Leaf and chain of an `APPLIANCE_CERT` value.
fn split_chain(pem: &str) -> (String, String) {
    let end = "-----END CERTIFICATE-----";
    let i = pem.find(end).expect("a certificate") + end.len();
    (pem[..i].to_owned(), pem[i..].trim().to_owned())
}

/// Decodes and verifies a paid license seed: the token against the trust root, the
/// certificate against the key, the chain and the identity. Returns the identity and
/// the token.
async fn verify_paid_seed(
    st: &Stack,
    out: &Path,
    tenant_id: Uuid,
    edition: &str,
) -> (alga_protocol::ApplianceIdentity, String) {
    let (t, s) = read_secrets(out);
    assert_eq!(t["INITIAL_TENANT_ID"], tenant_id.to_string().as_bytes());
    assert_eq!(s["EDITION"], edition.as_bytes());
    let text = |k: &str| String::from_utf8(s[k].clone()).expect("utf8");
    let cert = text("APPLIANCE_CERT");
    let key = ApplianceKey::from_pem(&text("APPLIANCE_KEY")).expect("APPLIANCE_KEY is a P-256 key");
    let facts = crypto::cert_facts(&cert).expect("certificate");
    assert_eq!(facts.identity.tenant_id, tenant_id);
    let (leaf, chain) = split_chain(&cert);
    let now = OffsetDateTime::now_utc();
    crypto::verify_certificate(&leaf, &chain, &key, facts.identity, &st.trust_roots(), now)
        .expect("certificate verifies");
    let token = text("LICENSE_TOKEN");
    let claims = crypto::verify_license(
        &SecretText::new(token.clone()),
        &st.trust_roots(),
        &LicenseExpectation {
            tenant_id,
            appliance_id: facts.identity.appliance_id,
            edition: edition.into(),
        },
        now,
    )
    .expect("license verifies");
    assert_eq!(claims.aud, "alga-appliance");
    assert!(claims.entitlements.check_in_interval_seconds > 0);
    assert_eq!(
        s["CA_CERT"],
        std::fs::read(&st.ca_bundle).expect("ca"),
        "CA_CERT is the pinned bundle"
    );
    assert!(text("CHECK_IN_URL").starts_with("https://"));
    // The key in the Secret is the one generated here, kept 0600 beside it.
    let key_file = std::fs::read_to_string(out.join("appliance.key")).expect("key file");
    assert_eq!(
        ApplianceKey::from_pem(&key_file)
            .expect("key")
            .public_point(),
        key.public_point()
    );
    for f in [
        "appliance.key",
        "appliance-license-seed.yaml",
        "appliance-initial-tenant.yaml",
    ] {
        assert_eq!(mode(&out.join(f)), 0o600, "{f}");
    }
    (facts.identity, token)
}

/// Nothing secret in what the program printed.
fn assert_quiet(r: &Run, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !r.stdout.contains(s) && !r.stderr.contains(s),
            "a secret was printed"
        );
    }
}

/// essentials: the tenant Secret and a seed with EDITION only; the code is then used.
#[tokio::test]
async fn essentials_redeem_then_used_code() {
    let st = stack();
    let (reg, email) = st.register("essentials").await;
    let code = st.code_from_mail(&email, &reg.install_code.code_id);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("a");
    let r = st.redeem(&code, &out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&reg.tenant_id.to_string()), "{r:?}");
    let (t, s) = read_secrets(&out);
    assert_eq!(t["INITIAL_TENANT_ID"], reg.tenant_id.to_string().as_bytes());
    assert_eq!(s.keys().collect::<Vec<_>>(), vec!["EDITION"]);
    assert_eq!(s["EDITION"], b"essentials");

    // The bootstrap adopts it and runs at the essentials tier.
    let db = TestDb::new().await;
    let secrets_dir = out.to_str().expect("utf8");
    let r = run(
        &[
            "bootstrap",
            "create-tenant",
            "--secrets",
            secrets_dir,
            "--database-url",
            &db.url,
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&reg.tenant_id.to_string()) && r.stdout.contains("adopted"));
    let r = run(
        &[
            "bootstrap",
            "seed-license",
            "--secrets",
            secrets_dir,
            "--database-url",
            &db.url,
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("tier: essentials"), "{r:?}");
    db.drop_db().await;

    // Another appliance (another key) with the same code: used.
    let other = dir.path().join("b");
    let r = st.redeem(&code, &other);
    assert_eq!(r.code, exit::CODE_ALREADY_USED, "{r:?}");
    assert!(
        r.stderr.contains("already been used") && r.stderr.contains("re-issued code"),
        "{}",
        r.stderr
    );
    assert_no_secrets(&other);
}

/// pro: verified Secrets; a lost-response retry with the same key gets the same
/// tenant; another key gets "used"; check-in refreshes the license; the bootstrap
/// seeds a licensed state.
#[tokio::test]
async fn pro_redeem_retry_check_in_and_bootstrap() {
    let st = stack();
    let (reg, email) = st.register("pro").await;
    let code = st.code_from_mail(&email, &reg.install_code.code_id);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("a");
    let r = st.redeem(&code, &out);
    assert_eq!(r.code, 0, "{r:?}");
    let (identity, token) = verify_paid_seed(&st, &out, reg.tenant_id, "pro").await;
    let key_pem = std::fs::read_to_string(out.join("appliance.key")).expect("key");
    assert_quiet(&r, &[&token, &key_pem]);

    // Same key again (the response was "lost"): same tenant and appliance, fresh Secrets.
    let r = st.redeem(&code, &out);
    assert_eq!(r.code, 0, "retry with the same key: {r:?}");
    let (again, _) = verify_paid_seed(&st, &out, reg.tenant_id, "pro").await;
    assert_eq!(again, identity);

    // Another key: used.
    let other = dir.path().join("b");
    let r = st.redeem(&code, &other);
    assert_eq!(r.code, exit::CODE_ALREADY_USED, "{r:?}");
    assert_no_secrets(&other);

    // check-in: a new license, verified, in the rewritten seed.
    let seed = out.to_str().expect("utf8");
    let r = run(&["check-in", "--seed", seed, "--rotate"], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("next_check_in_after"), "{r:?}");
    let (after, new_token) = verify_paid_seed(&st, &out, reg.tenant_id, "pro").await;
    assert_eq!(after, identity);
    assert_ne!(new_token, token, "the license was refreshed");
    assert_quiet(&r, &[&token, &new_token, &key_pem]);
    // The credential is a few seconds old: the service renews only in the last third
    // of its lifetime (at least two days), so even when asked (`--rotate` sends a CSR)
    // the credential and its key stay. (The renewal itself: the gateway's
    // `credentials.rs`, with a short credential signed by the real issuer, and this
    // binary against the fake service in `with_fake.rs`.)
    assert!(r.stdout.contains("credential_rotated: false"), "{r:?}");
    let new_key = std::fs::read_to_string(out.join("appliance.key")).expect("key");
    assert_eq!(
        new_key, key_pem,
        "the key stays when the credential is not renewed"
    );

    // The bootstrap adopts the tenant and seeds a licensed state.
    let db = TestDb::new().await;
    let r = run(
        &[
            "bootstrap",
            "create-tenant",
            "--secrets",
            seed,
            "--database-url",
            &db.url,
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(
        &[
            "bootstrap",
            "seed-license",
            "--secrets",
            seed,
            "--database-url",
            &db.url,
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("tier: licensed") && r.stdout.contains("next_refresh_at"),
        "{r:?}"
    );
    assert_quiet(&r, &[&new_token]);
    db.drop_db().await;
}

/// Each failure: its message, its exit code, nothing written.
#[tokio::test]
async fn redeem_failures_write_nothing() {
    let st = stack();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong_ca = dir.path().join("wrong-ca.pem");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&wrong_ca, p.self_signed(&ca_key).expect("ca").pem()).expect("write");
    let wrong_ca = wrong_ca.to_str().expect("utf8").to_owned();
    let unknown = random_wellformed_code();

    struct Case {
        name: &'static str,
        code: String,
        url: String,
        ca: String,
        exit: i32,
        says: &'static str,
    }
    let cases = vec![
        Case {
            name: "garbage",
            code: "not a code at all".into(),
            url: st.url.clone(),
            ca: st.ca_bundle.clone(),
            exit: exit::CODE_MALFORMED,
            says: "30 characters",
        },
        Case {
            name: "typo",
            code: typo_in_group(&unknown, 4),
            url: st.url.clone(),
            ca: st.ca_bundle.clone(),
            exit: exit::CODE_MALFORMED,
            says: "group 4",
        },
        Case {
            name: "unknown code",
            code: unknown.clone(),
            url: st.url.clone(),
            ca: st.ca_bundle.clone(),
            exit: exit::CODE_INVALID,
            says: "does not recognise",
        },
        Case {
            name: "unreachable",
            code: unknown.clone(),
            url: "https://127.0.0.1:1".into(),
            ca: st.ca_bundle.clone(),
            exit: exit::UNREACHABLE,
            says: "could not be reached",
        },
        Case {
            name: "wrong CA bundle",
            code: unknown.clone(),
            url: st.url.clone(),
            ca: wrong_ca.clone(),
            exit: exit::TLS,
            says: "secure connection",
        },
    ];
    for c in cases {
        let out = dir.path().join(c.name.replace(' ', "-"));
        let r = st.redeem_with(&c.code, &out, &c.url, &c.ca);
        assert_eq!(r.code, c.exit, "{}: {r:?}", c.name);
        assert!(r.stderr.contains(c.says), "{}: {}", c.name, r.stderr);
        assert_no_secrets(&out);
    }
}

/// Reinstall: a re-issued code revokes the unclaimed one and brings a new appliance
/// back under the original tenant id; the old appliance, once replaced, cannot check
/// in (exit 33) while the rebuilt one can; a revoked appliance cannot either (exit 30).
#[tokio::test]
async fn reissue_revokes_and_reinstall_keeps_the_tenant() {
    let st = stack();
    let (reg, email) = st.register("pro").await;
    let first = st.code_from_mail(&email, &reg.install_code.code_id);
    let second = st.reissue(reg.tenant_id).await;
    assert_eq!(second.code.tenant_id, reg.tenant_id);
    assert_eq!(
        second.revoked_code_ids,
        vec![reg.install_code.code_id.clone()]
    );
    assert_eq!(second.replaces_appliance_id, None, "no appliance yet");
    let second_code = st.code_from_mail(&email, &second.code.install_code.code_id);

    let dir = tempfile::tempdir().expect("tempdir");
    let r = st.redeem(&first, &dir.path().join("old"));
    assert_eq!(r.code, exit::CODE_REVOKED, "{r:?}");
    assert!(
        r.stderr.contains("revoked") && r.stderr.contains("re-issued code"),
        "{}",
        r.stderr
    );
    assert_no_secrets(&dir.path().join("old"));

    let a = dir.path().join("a");
    let r = st.redeem(&second_code, &a);
    assert_eq!(r.code, 0, "{r:?}");
    let (first_appliance, _) = verify_paid_seed(&st, &a, reg.tenant_id, "pro").await;

    // The appliance is rebuilt: its code is consumed, so a new one is issued, naming
    // the only active appliance as the one its redeem retires.
    let third = st.reissue(reg.tenant_id).await;
    assert_eq!(
        third.replaces_appliance_id,
        Some(first_appliance.appliance_id)
    );
    let third_code = st.code_from_mail(&email, &third.code.install_code.code_id);
    // Until that code is redeemed, the old appliance is still the licensed one.
    let r = run(&["check-in", "--seed", a.to_str().expect("utf8")], None);
    assert_eq!(r.code, 0, "before the rebuild's redeem: {r:?}");
    let b = dir.path().join("b");
    let r = st.redeem(&third_code, &b);
    assert_eq!(r.code, 0, "{r:?}");
    let (rebuilt, _) = verify_paid_seed(&st, &b, reg.tenant_id, "pro").await;
    assert_eq!(rebuilt.tenant_id, reg.tenant_id, "same tenant");
    assert_ne!(
        rebuilt.appliance_id, first_appliance.appliance_id,
        "a new appliance"
    );

    // The old appliance was replaced: its check-in says so (exit 33), with the
    // installed license's expiry, and leaves its seed and key alone; the rebuilt one
    // checks in.
    let seed_path = a.join("appliance-license-seed.yaml");
    let before = std::fs::read(&seed_path).expect("seed");
    let key_before = std::fs::read(a.join("appliance.key")).expect("key");
    let r = run(&["check-in", "--seed", a.to_str().expect("utf8")], None);
    assert_eq!(r.code, exit::APPLIANCE_REPLACED, "{r:?}");
    assert!(
        r.stderr.contains("replaced by a rebuild")
            && r.stderr.contains("the installed license expires at"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&seed_path).expect("seed"), before);
    assert_eq!(
        std::fs::read(a.join("appliance.key")).expect("key"),
        key_before
    );
    let r = run(&["check-in", "--seed", b.to_str().expect("utf8")], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("check_in_by: "), "{r:?}");

    // A revoked appliance is refused too, with its own exit code.
    st.revoke(rebuilt.appliance_id).await;
    let seed_path = b.join("appliance-license-seed.yaml");
    let before = std::fs::read(&seed_path).expect("seed");
    let r = run(&["check-in", "--seed", b.to_str().expect("utf8")], None);
    assert_eq!(r.code, exit::APPLIANCE_REVOKED, "{r:?}");
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    assert_eq!(std::fs::read(&seed_path).expect("seed"), before);
}

/// The store downgrades a pro tenant to essentials: the appliance's check-in gets no
/// license and falls back (seed EDITION=essentials alone, key copy gone,
/// license_state tier essentials); later check-ins have nothing to refresh. Back to
/// pro: a re-issued code redeemed on the same appliance directory, then the bootstrap
/// keeps the tenant (unchanged) and licenses it again.
#[tokio::test]
async fn downgrade_to_essentials_then_upgrade_on_the_same_appliance() {
    let st = stack();
    let (reg, email) = st.register("pro").await;
    let code = st.code_from_mail(&email, &reg.install_code.code_id);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("a");
    let seed = out.to_str().expect("utf8");
    let r = st.redeem(&code, &out);
    assert_eq!(r.code, 0, "{r:?}");
    let (identity, token) = verify_paid_seed(&st, &out, reg.tenant_id, "pro").await;
    let key_pem = std::fs::read_to_string(out.join("appliance.key")).expect("key");

    let db = TestDb::new().await;
    let bootstrap_run = |cmd: &str| {
        run(
            &[
                "bootstrap",
                cmd,
                "--secrets",
                seed,
                "--database-url",
                &db.url,
            ],
            None,
        )
    };
    let r = bootstrap_run("create-tenant");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("adopted"), "{r:?}");
    let r = bootstrap_run("seed-license");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("tier: licensed") && r.stdout.contains("check_in_by: "),
        "the gateway's licenses carry check_in_by: {r:?}"
    );

    // The store moves the tenant to essentials.
    let changed = st.set_edition(reg.tenant_id, "essentials").await;
    assert!(
        changed.changed && changed.previous_edition == "pro",
        "{changed:?}"
    );
    let r = run(
        &["check-in", "--seed", seed, "--database-url", &db.url],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("edition: essentials")
            && r.stdout.contains("license: none")
            && r.stdout.contains("  tier: essentials"),
        "{r:?}"
    );
    assert_quiet(&r, &[&token, &key_pem]);
    let (t, s) = read_secrets(&out);
    assert_eq!(s.keys().collect::<Vec<_>>(), vec!["EDITION"]);
    assert_eq!(s["EDITION"], b"essentials");
    assert_eq!(t["INITIAL_TENANT_ID"], reg.tenant_id.to_string().as_bytes());
    assert!(!out.join("appliance.key").exists(), "the key copy is gone");
    let c = alga_appliance::bootstrap::connect(&db.url)
        .await
        .expect("connect");
    let state = alga_appliance::bootstrap::license_state(&c)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(
        (state.edition.as_str(), state.tier.as_str(), state.has_token),
        ("essentials", "essentials", false)
    );
    // The daily timer on the downgraded appliance: nothing to refresh, exit 0.
    let r = run(&["check-in", "--seed", seed], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("nothing to refresh"), "{r:?}");

    // Back to pro: a re-issued code (replacing this appliance's old identity),
    // redeemed on the same appliance.
    let changed = st.set_edition(reg.tenant_id, "pro").await;
    assert!(changed.changed, "{changed:?}");
    let again = st.reissue(reg.tenant_id).await;
    assert_eq!(again.code.tenant_id, reg.tenant_id);
    assert_eq!(again.code.edition, "pro");
    assert_eq!(again.replaces_appliance_id, Some(identity.appliance_id));
    let code = st.code_from_mail(&email, &again.code.install_code.code_id);
    let r = st.redeem(&code, &out);
    assert_eq!(r.code, 0, "{r:?}");
    let (upgraded, new_token) = verify_paid_seed(&st, &out, reg.tenant_id, "pro").await;
    assert_eq!(upgraded.tenant_id, reg.tenant_id);
    assert_ne!(
        upgraded.appliance_id, identity.appliance_id,
        "a new identity"
    );

    let r = bootstrap_run("create-tenant");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "tenant_id: {} (already set, unchanged)",
            reg.tenant_id
        )),
        "{r:?}"
    );
    let tenants: i64 = c
        .query_one("SELECT count(*) FROM alga_appliance.appliance_tenant", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(tenants, 1, "no new tenant row");
    let r = bootstrap_run("seed-license");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("tier: licensed"), "{r:?}");
    let state = alga_appliance::bootstrap::license_state(&c)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(
        (state.edition.as_str(), state.tier.as_str(), state.has_token),
        ("pro", "licensed", true)
    );
    assert_eq!(state.tenant_id, reg.tenant_id);
    assert_quiet(&r, &[&new_token]);

    // The upgraded appliance checks in as the licensed one.
    let r = run(
        &["check-in", "--seed", seed, "--database-url", &db.url],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("edition: pro") && r.stdout.contains("  tier: licensed"),
        "{r:?}"
    );
    drop(c);
    db.drop_db().await;
}

/// The mail reader finds a code in 7bit, quoted-printable and base64 parts (no stack
/// needed: these are the encodings lettre may pick).
#[test]
fn mail_reader_finds_codes_in_every_transfer_encoding() {
    let code = random_wellformed_code();
    let plain = format!("Subject: x\r\n\r\nYour install code: {code}\r\n");
    let (head, tail) = code.split_at(17);
    let qp = format!(
        "Content-Transfer-Encoding: quoted-printable\r\n\r\nYour install code is =3D {head}=\r\n{tail}.\r\n"
    );
    let b64 = format!(
        "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("Code: {code}\n"))
    );
    for raw in [plain, qp, b64] {
        let found: Vec<String> = decoded_texts(&raw)
            .iter()
            .flat_map(|t| code_candidates(t))
            .collect();
        assert!(found.contains(&code), "{raw}");
    }
    assert!(code_candidates(&format!("X{code}")).is_empty(), "bounded");
}
