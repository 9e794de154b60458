//! The issuer's mTLS API through `server::run`, over real TLS on 127.0.0.1:0, with a
//! real SoftHSM2 token: who gets in, every route, the signing log behind it, and
//! recovery from a pulled HSM session.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use alga_issuer::config::{
    AuditLogConfig, IssuerConfig, ListenConfig, LogConfig, LogOrigin, PolicyConfig, TlsConfig,
};
use alga_issuer::hsm::Hsm;
use alga_issuer::server;
use alga_issuer::signlog;
use alga_protocol::issuer_api::{
    self as api, DeriveCodeResponse, IssuerErrorBody, IssuerErrorCode, LicenseResult,
    MintCodeResponse, PublicKeys, SignLicensesResponse, SignedCheckpoint, SignedCredential,
    SignedLicense, SignedLogCheckpoint, VerifyCodeResponse,
};
use alga_protocol::signlog::SignOp;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::hsm::{Setup, TestToken, isolated_in};
use crate::ops::{csr, csr_with_bad_signature, openssl_csr};
use crate::pki::{Eku, Leaf, TestCa, client, write};

const GATEWAY: &str = "spiffe://alga.test/service/gateway";
const STORE: &str = "spiffe://alga.test/service/nm-store";
/// The transparency log's origin in these tests.
pub(crate) const ORIGIN: &str = "alga-license.test/audit-log";

/// The PKI of one test: one CA for the server and its clients, and a stranger CA.
pub(crate) struct Pki {
    ca: TestCa,
    pub(crate) gateway: Leaf,
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        let ca = TestCa::new("issuer test CA");
        let gateway = ca.leaf("gateway", &[GATEWAY], Eku::ClientAuth);
        Pki {
            ca,
            gateway,
            dir: dir.to_owned(),
        }
    }

    /// An issuer configuration over this PKI, logging to `log_dir`.
    pub(crate) fn config(&self, t: &TestToken, log_dir: &Path) -> IssuerConfig {
        let server = self.ca.leaf("issuer", &[], Eku::ServerAuth);
        IssuerConfig {
            listen: ListenConfig {
                address: "127.0.0.1:0".parse().expect("addr"),
            },
            tls: TlsConfig {
                certificate: write(&self.dir, "server.pem", &server.cert_pem),
                private_key: write(&self.dir, "server.key", &server.key_pem),
                client_ca: write(&self.dir, "client-ca.pem", &self.ca.cert_pem),
            },
            hsm: t.config.clone(),
            policy: PolicyConfig {
                path: Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.sample.toml"),
            },
            log: LogConfig {
                directory: log_dir.to_owned(),
            },
            audit_log: AuditLogConfig {
                origin: LogOrigin::new(ORIGIN).expect("a valid origin"),
            },
        }
    }

    pub(crate) fn client(&self, identity: Option<&Leaf>) -> reqwest::Client {
        client(&self.ca.cert_pem, identity)
    }
}

/// A running server and how to stop it.
pub(crate) struct Running {
    pub(crate) url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), alga_issuer::Error>>,
}

impl Running {
    pub(crate) async fn start(config: IssuerConfig, t: &TestToken, hsm: Hsm) -> Running {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let policy = t.policy.clone();
        let task = tokio::spawn(server::run(config, policy, hsm, listener, async {
            let _ = stopped.await;
        }));
        Running {
            url: format!("https://{addr}"),
            stop,
            task,
        }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn ok<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> T {
    let status = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("response JSON")
}

async fn error(response: reqwest::Response, status: u16, code: IssuerErrorCode) -> String {
    assert_eq!(response.status().as_u16(), status);
    let body: IssuerErrorBody = response.json().await.expect("error JSON");
    assert_eq!(body.error.code, code, "{}", body.error.message);
    body.error.message
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn only_the_gateway_gets_in() {
    isolated_in(
        module_path!(),
        "only_the_gateway_gets_in",
        Setup::Keys,
        |t| {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::new(dir.path());
            let log_dir = dir.path().join("log");
            let config = pki.config(t, &log_dir);
            rt().block_on(async {
            let server = Running::start(config, t, t.open()).await;
            let license = json!({"tenant_id": Uuid::new_v4(), "appliance_id": Uuid::new_v4(), "edition": "pro"});

            let gateway = pki.client(Some(&pki.gateway));
            let health = gateway.get(format!("{}{}", server.url, api::HEALTH)).send().await.expect("health");
            assert_eq!(health.status(), 200);
            let keys: PublicKeys = ok(gateway.get(format!("{}{}", server.url, api::PUBLIC_KEYS)).send().await.expect("keys")).await;
            assert_eq!(keys.jwks.keys.len(), 1);
            let _: SignedLicense = ok(post(&gateway, &server.url, api::SIGN_LICENSE, &license).await).await;

            // Verified certificates of the same CA that are not the gateway: 403.
            let same_ca = [
                ("store identity", pki.ca.leaf("store", &[STORE], Eku::ClientAuth)),
                ("gateway URI without EKU", pki.ca.leaf("gw", &[GATEWAY], Eku::None)),
                ("two URI SANs", pki.ca.leaf("gw", &[GATEWAY, STORE], Eku::ClientAuth)),
                ("no URI SAN, gateway CN", pki.ca.leaf(GATEWAY, &[], Eku::ClientAuth)),
            ];
            for (what, leaf) in &same_ca {
                let c = pki.client(Some(leaf));
                let r = post(&c, &server.url, api::SIGN_LICENSE, &license).await;
                assert_eq!(r.status(), 403, "{what}");
                error(r, 403, IssuerErrorCode::Forbidden).await;
                let r = post(&c, &server.url, api::SIGN_LICENSES, &json!({"licenses": [license]})).await;
                error(r, 403, IssuerErrorCode::Forbidden).await;
                let r = post(&c, &server.url, api::SIGN_LOG_CHECKPOINT, &json!({"size": 1, "root_hash": STANDARD.encode([1u8; 32])})).await;
                error(r, 403, IssuerErrorCode::Forbidden).await;
                let r = c.get(format!("{}{}", server.url, api::PUBLIC_KEYS)).send().await.expect("request");
                assert_eq!(r.status(), 403, "{what}: every route");
            }

            // A certificate from another CA, even with the gateway's URI, none at all, or
            // one whose EKU excludes clientAuth: the handshake fails.
            let stranger = TestCa::new("stranger CA").leaf("gw", &[GATEWAY], Eku::ClientAuth);
            let server_eku = pki.ca.leaf("gw", &[GATEWAY], Eku::ServerAuth);
            for (what, c) in [
                ("other CA", pki.client(Some(&stranger))),
                ("no certificate", pki.client(None)),
                ("gateway URI, serverAuth EKU only", pki.client(Some(&server_eku))),
            ] {
                let r = c.post(format!("{}{}", server.url, api::SIGN_LICENSE)).json(&license).send().await;
                assert!(r.is_err(), "{what}: {:?}", r.map(|r| r.status()));
            }

            server.stop().await;
        });
            let log = signlog::read_dir(&log_dir).expect("log verifies");
            assert_eq!(
                log.records.len(),
                1,
                "only the gateway's license was signed"
            );
            assert_eq!(log.records[0].op, SignOp::License);
        },
    );
}

#[test]
fn every_signature_is_logged_before_it_is_returned_and_the_log_holds_no_secret() {
    isolated_in(
        module_path!(),
        "every_signature_is_logged_before_it_is_returned_and_the_log_holds_no_secret",
        Setup::Keys,
        |t| {
            // Everything the process logs, to scan for secrets (this child is ours alone).
            let logs = CapturedLogs::install();
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::new(dir.path());
            let log_dir = dir.path().join("log");
            let rt = rt();
            let tenant = Uuid::new_v4();
            let appliance = Uuid::new_v4();
            let mut secrets: Vec<String> = Vec::new();
            rt.block_on(async {
                let server = Running::start(pki.config(t, &log_dir), t, t.open()).await;
                let c = pki.client(Some(&pki.gateway));
                let url = &server.url;
                let now = OffsetDateTime::now_utc();
                let expires = (now + Duration::days(14)).format(&time::format_description::well_known::Rfc3339).expect("rfc3339");

                let minted: MintCodeResponse =
                    ok(post(&c, url, api::MINT_CODE, &json!({"tenant_id": tenant, "edition": "pro", "expires_at": expires})).await).await;
                let code = minted.code.expose().to_owned();
                secrets.push(code.clone());
                secrets.push(code.replace('-', ""));
                secrets.push(code[11..].to_owned());
                let derived: DeriveCodeResponse = ok(post(&c, url, api::DERIVE_CODE, &json!({"binding": minted.binding})).await).await;
                assert_eq!(derived.code.expose(), code);
                let verified: VerifyCodeResponse =
                    ok(post(&c, url, api::VERIFY_CODE, &json!({"binding": minted.binding, "code": code})).await).await;
                assert!(verified.valid);
                let mut other = minted.binding.clone();
                other.tenant_id = Uuid::new_v4();
                let verified: VerifyCodeResponse =
                    ok(post(&c, url, api::VERIFY_CODE, &json!({"binding": other, "code": code})).await).await;
                assert!(!verified.valid, "another tenant's binding");
                let typo = format!("{}Z", &code[..code.len() - 1]);
                let typo = if typo == code { format!("{}Y", &code[..code.len() - 1]) } else { typo };
                error(post(&c, url, api::VERIFY_CODE, &json!({"binding": minted.binding, "code": typo})).await, 400, IssuerErrorCode::CodeMalformed).await;

                let license: SignedLicense = ok(post(
                    &c,
                    url,
                    api::SIGN_LICENSE,
                    &json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro"}),
                )
                .await)
                .await;
                let token = license.token.expose().to_owned();
                secrets.push(token.clone());
                secrets.extend(token.split('.').map(str::to_owned));
                let keys: PublicKeys = ok(c.get(format!("{url}{}", api::PUBLIC_KEYS)).send().await.expect("keys")).await;
                crate::license_verify::verify(&token, &keys.jwks, OffsetDateTime::now_utc(), "https://license.alga.test")
                    .expect("the license verifies with the published JWKS");

                let credential: SignedCredential = ok(post(
                    &c,
                    url,
                    api::SIGN_CREDENTIAL,
                    &json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro", "csr_pem": csr(&rcgen::PKCS_ECDSA_P256_SHA256)}),
                )
                .await)
                .await;
                // The chain is the published CA (same subject and key) as the root issued it.
                let chain = pem::parse(&credential.chain_pem).expect("PEM");
                let published = pem::parse(&keys.ca_chain_pem).expect("PEM");
                let (_, chain) = X509Certificate::from_der(chain.contents()).expect("x509");
                let (_, published) = X509Certificate::from_der(published.contents()).expect("x509");
                assert_eq!(chain.subject().as_raw(), published.subject().as_raw());
                assert_eq!(chain.public_key().raw, published.public_key().raw);
                assert!(chain.issuer().to_string().contains("alga-license root v1"), "{}", chain.issuer());

                let checkpoint: SignedCheckpoint =
                    ok(post(&c, url, api::SIGN_CHECKPOINT, &json!({"sequence": 7, "head_hash": "ab".repeat(32)})).await).await;
                assert_eq!(checkpoint.kid, keys.audit_keys[0].kid);

                let signed_so_far = signlog::read_dir(&log_dir).expect("log").records.len();
                assert_eq!(signed_so_far, 5, "mint, derive, license, credential, checkpoint (verify signs nothing)");

                // Refusals: nothing is signed, nothing is logged.
                let refusals: Vec<(&str, serde_json::Value, u16, IssuerErrorCode)> = vec![
                    (api::SIGN_CREDENTIAL, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro", "csr_pem": csr_with_bad_signature()}), 400, IssuerErrorCode::CsrInvalid),
                    (api::SIGN_CREDENTIAL, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro", "csr_pem": openssl_csr(dir.path(), "rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"])}), 400, IssuerErrorCode::CsrInvalid),
                    (api::SIGN_CREDENTIAL, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro", "csr_pem": "garbage"}), 400, IssuerErrorCode::CsrInvalid),
                    (api::SIGN_CREDENTIAL, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "essentials", "csr_pem": csr(&rcgen::PKCS_ED25519)}), 400, IssuerErrorCode::EditionNotPaid),
                    (api::SIGN_LICENSE, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "essentials"}), 400, IssuerErrorCode::EditionNotPaid),
                    (api::SIGN_LICENSE, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro", "lifetime_seconds": 315_360_000u64}), 400, IssuerErrorCode::BeyondPolicy),
                    (api::SIGN_LICENSE, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "diamond"}), 400, IssuerErrorCode::UnknownEdition),
                    (api::SIGN_LICENSE, json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro", "admin": true}), 400, IssuerErrorCode::BadRequest),
                    (api::SIGN_LICENSE, json!({"tenant_id": "not-a-uuid", "appliance_id": appliance, "edition": "pro"}), 400, IssuerErrorCode::BadRequest),
                    (api::MINT_CODE, json!({"tenant_id": tenant, "edition": "pro", "expires_at": "2100-01-01T00:00:00Z"}), 400, IssuerErrorCode::BeyondPolicy),
                    (api::SIGN_CHECKPOINT, json!({"sequence": 8, "head_hash": "xyz"}), 400, IssuerErrorCode::BadRequest),
                ];
                for (path, body, status, code) in refusals {
                    let r = post(&c, url, path, &body).await;
                    assert_eq!(r.status().as_u16(), status, "{path} {body}");
                    error(r, status, code).await;
                }
                let huge = json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro", "csr_pem": "A".repeat(100_000)});
                let r = post(&c, url, api::SIGN_CREDENTIAL, &huge).await;
                error(r, 413, IssuerErrorCode::BadRequest).await;
                let r = c.post(format!("{url}{}", api::SIGN_LICENSE)).body("{not json").header("content-type", "application/json").send().await.expect("request");
                error(r, 400, IssuerErrorCode::BadRequest).await;
                let r = c.get(format!("{url}/v1/nothing-here")).send().await.expect("request");
                error(r, 404, IssuerErrorCode::BadRequest).await;
                let r = c.get(format!("{url}{}", api::SIGN_LICENSE)).send().await.expect("request");
                error(r, 405, IssuerErrorCode::BadRequest).await;
                assert_eq!(signlog::read_dir(&log_dir).expect("log").records.len(), signed_so_far, "refusals sign nothing");

                server.stop().await;
            });

            let log = signlog::read_dir(&log_dir).expect("the chain verifies");
            let ops: Vec<SignOp> = log.records.iter().map(|r| r.op).collect();
            assert_eq!(
                ops,
                [
                    SignOp::CodeMint,
                    SignOp::CodeDerive,
                    SignOp::License,
                    SignOp::Credential,
                    SignOp::Checkpoint
                ]
            );
            assert_eq!(log.records[0].ids.tenant_id, Some(tenant));
            assert_eq!(log.records[2].ids.appliance_id, Some(appliance));
            assert_eq!(log.records[4].ids.sequence, Some(7));

            // No code, token or PIN anywhere in the log's files.
            secrets.push(t.pin().expose_secret().to_owned());
            let mut text = String::new();
            for entry in std::fs::read_dir(&log_dir).expect("log dir") {
                text.push_str(
                    &std::fs::read_to_string(entry.expect("entry").path()).expect("log file"),
                );
            }
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "a secret ({} chars) is in the signing log",
                    secret.len()
                );
                assert!(
                    !text.to_lowercase().contains(&secret.to_lowercase()),
                    "a secret in another case"
                );
            }
            assert!(
                !text.contains("PRIVATE") && !text.contains("BEGIN"),
                "no PEM in the log"
            );

            // Nor in what the process logged, which did record the operations.
            let logged = logs.text();
            for expected in [
                "code minted",
                "code derived",
                "code verified",
                "license signed",
                "credential signed",
                "checkpoint signed",
                "operation refused",
            ] {
                assert!(logged.contains(expected), "the log has {expected:?}");
            }
            assert!(
                logged.contains(&format!("tenant.id={tenant}")),
                "dotted fields"
            );
            for secret in &secrets {
                assert!(
                    !logged.contains(secret.as_str()),
                    "a secret ({} chars) was logged",
                    secret.len()
                );
            }
            assert!(!logged.contains("PRIVATE KEY"), "no key logged");

            // A restart resumes the chain.
            rt.block_on(async {
                let server = Running::start(pki.config(t, &log_dir), t, t.open()).await;
                let c = pki.client(Some(&pki.gateway));
                let _: SignedLicense = ok(post(
                    &c,
                    &server.url,
                    api::SIGN_LICENSE,
                    &json!({"tenant_id": tenant, "appliance_id": appliance, "edition": "pro"}),
                )
                .await)
                .await;
                server.stop().await;
            });
            let resumed = signlog::read_dir(&log_dir).expect("the chain still verifies");
            assert_eq!(resumed.records.len(), 6);
            assert_eq!(resumed.records[5].seq, 6);
            assert_eq!(resumed.records[5].prev_hash, log.head.last_hash);

            // A tampered line is found, and the server refuses to start on it.
            let file = std::fs::read_dir(&log_dir)
                .expect("dir")
                .next()
                .expect("a file")
                .expect("entry")
                .path();
            let text = std::fs::read_to_string(&file).expect("read");
            let tampered = text.replacen(&tenant.to_string(), &Uuid::new_v4().to_string(), 1);
            std::fs::write(&file, tampered).expect("tamper");
            let err = signlog::read_dir(&log_dir).expect_err("tampering detected");
            assert!(err.to_string().contains("seq 1"), "{err}");
            let started = rt.block_on(async {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                server::run(
                    pki.config(t, &log_dir),
                    t.policy.clone(),
                    t.open(),
                    listener,
                    std::future::pending(),
                )
                .await
            });
            assert!(
                matches!(started, Err(alga_issuer::Error::SignlogDamaged { .. })),
                "{started:?}"
            );
        },
    );
}

#[test]
fn a_batch_signs_each_license_or_answers_the_single_routes_error() {
    isolated_in(
        module_path!(),
        "a_batch_signs_each_license_or_answers_the_single_routes_error",
        Setup::Keys,
        |t| {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::new(dir.path());
            let log_dir = dir.path().join("log");
            let tenant = Uuid::new_v4();
            let appliances: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
            let mut signed_jtis: Vec<Uuid> = Vec::new();
            rt().block_on(async {
                let server = Running::start(pki.config(t, &log_dir), t, t.open()).await;
                let c = pki.client(Some(&pki.gateway));
                let url = &server.url;
                let item = |i: usize, edition: &str, lifetime: Option<u64>| {
                    let mut v = json!({"tenant_id": tenant, "appliance_id": appliances[i], "edition": edition});
                    if let Some(seconds) = lifetime {
                        v["lifetime_seconds"] = json!(seconds);
                    }
                    v
                };
                let items = vec![
                    item(0, "pro", None),
                    item(1, "essentials", None),
                    item(2, "pro", Some(3600)),
                    item(3, "pro", Some(315_360_000)),
                    item(4, "pro", None),
                ];
                let batch: SignLicensesResponse =
                    ok(post(&c, url, api::SIGN_LICENSES, &json!({"licenses": items})).await).await;
                assert_eq!(batch.results.len(), 5);
                let keys: PublicKeys = ok(c.get(format!("{url}{}", api::PUBLIC_KEYS)).send().await.expect("keys")).await;
                let now = OffsetDateTime::now_utc();
                for (i, result) in batch.results.iter().enumerate() {
                    match (i, result) {
                        (0 | 2 | 4, LicenseResult::License(license)) => {
                            let claims = crate::license_verify::verify(license.token.expose(), &keys.jwks, now, "https://license.alga.test")
                                .expect("a batch license verifies with the published JWKS");
                            assert_eq!(claims.sub, tenant.to_string());
                            assert_eq!(claims.appliance_id, appliances[i].to_string(), "in request order");
                            assert_eq!(claims.jti, license.jti.to_string());
                            let lifetime = if i == 2 { 3600 } else { 7 * 86_400 };
                            assert_eq!(claims.exp - claims.iat, lifetime);
                            signed_jtis.push(license.jti);
                        }
                        (1 | 3, LicenseResult::Error(detail)) => {
                            let expected = if i == 1 { IssuerErrorCode::EditionNotPaid } else { IssuerErrorCode::BeyondPolicy };
                            assert_eq!(detail.code, expected);
                            // Exactly what the single route answers for that license alone.
                            let single = error(post(&c, url, api::SIGN_LICENSE, &items[i]).await, 400, expected).await;
                            assert_eq!(detail.message, single);
                        }
                        (i, other) => panic!("result {i}: {other:?}"),
                    }
                }
                let distinct: std::collections::HashSet<Uuid> = signed_jtis.iter().copied().collect();
                assert_eq!(distinct.len(), 3, "distinct jti");
                assert_eq!(signlog::read_dir(&log_dir).expect("log").records.len(), 3, "one record per signed license");

                // The whole request is refused for a bad size or body: nothing signed.
                let one = item(0, "pro", None);
                for (what, body) in [
                    ("empty", json!({"licenses": []})),
                    ("65 licenses", json!({"licenses": vec![one.clone(); api::MAX_LICENSE_BATCH + 1]})),
                    ("unknown field", json!({"licenses": [one.clone()], "admin": true})),
                    ("unknown item field", json!({"licenses": [{"tenant_id": tenant, "appliance_id": appliances[0], "edition": "pro", "admin": true}]})),
                    ("no list", one.clone()),
                ] {
                    let r = post(&c, url, api::SIGN_LICENSES, &body).await;
                    let message = error(r, 400, IssuerErrorCode::BadRequest).await;
                    if what == "empty" {
                        assert_eq!(message, "a batch holds 1 to 64 licenses, got 0");
                    }
                    if what == "65 licenses" {
                        assert_eq!(message, "a batch holds 1 to 64 licenses, got 65");
                    }
                }
                assert_eq!(signlog::read_dir(&log_dir).expect("log").records.len(), 3, "refused batches sign nothing");

                // A full batch: every license signed, logged and distinct.
                let full: SignLicensesResponse = ok(post(
                    &c,
                    url,
                    api::SIGN_LICENSES,
                    &json!({"licenses": vec![one; api::MAX_LICENSE_BATCH]}),
                )
                .await)
                .await;
                assert_eq!(full.results.len(), api::MAX_LICENSE_BATCH);
                for result in &full.results {
                    let LicenseResult::License(license) = result else {
                        panic!("{result:?}");
                    };
                    // Signed after `now` above was read: verify at the present.
                    crate::license_verify::verify(license.token.expose(), &keys.jwks, OffsetDateTime::now_utc(), "https://license.alga.test").expect("verifies");
                    signed_jtis.push(license.jti);
                }
                server.stop().await;
            });
            let log = signlog::read_dir(&log_dir).expect("the chain verifies");
            assert_eq!(log.records.len(), 3 + api::MAX_LICENSE_BATCH);
            assert!(log.records.iter().all(|r| r.op == SignOp::License));
            let mut logged: Vec<Uuid> = log
                .records
                .iter()
                .map(|r| r.ids.jti.expect("jti"))
                .collect();
            let mut delivered = signed_jtis.clone();
            logged.sort();
            delivered.sort();
            delivered.dedup();
            assert_eq!(delivered.len(), 3 + api::MAX_LICENSE_BATCH, "distinct jti");
            assert_eq!(
                logged, delivered,
                "the log holds exactly the delivered licenses"
            );
            let batch_appliances: std::collections::HashSet<Option<Uuid>> = log.records[..3]
                .iter()
                .map(|r| r.ids.appliance_id)
                .collect();
            assert_eq!(
                batch_appliances,
                [0, 2, 4].iter().map(|&i| Some(appliances[i])).collect(),
                "the refused licenses were not logged"
            );
        },
    );
}

#[test]
fn a_pulled_hsm_session_does_not_fail_the_next_request() {
    isolated_in(
        module_path!(),
        "a_pulled_hsm_session_does_not_fail_the_next_request",
        Setup::Keys,
        |t| {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::new(dir.path());
            let hsm = t.open();
            rt().block_on(async {
                let server = Running::start(pki.config(t, &dir.path().join("log")), t, hsm.clone()).await;
                let c = pki.client(Some(&pki.gateway));
                let license = json!({"tenant_id": Uuid::new_v4(), "appliance_id": Uuid::new_v4(), "edition": "pro"});
                let _: SignedLicense = ok(post(&c, &server.url, api::SIGN_LICENSE, &license).await).await;
                assert_eq!(hsm.session_recoveries(), 0);
                for round in 0..2 {
                    hsm.invalidate_sessions_for_test().expect("test hook");
                    for _ in 0..4 {
                        let _: SignedLicense = ok(post(&c, &server.url, api::SIGN_LICENSE, &license).await).await;
                        let csr = json!({"tenant_id": Uuid::new_v4(), "appliance_id": Uuid::new_v4(), "edition": "pro", "csr_pem": csr(&rcgen::PKCS_ED25519)});
                        let _: SignedCredential = ok(post(&c, &server.url, api::SIGN_CREDENTIAL, &csr).await).await;
                    }
                    assert!(hsm.session_recoveries() > round, "the workers recovered");
                }
                server.stop().await;
            });
        },
    );
}

#[test]
fn log_checkpoints_are_signed_notes_logged_before_they_are_returned() {
    isolated_in(
        module_path!(),
        "log_checkpoints_are_signed_notes_logged_before_they_are_returned",
        Setup::Keys,
        |t| {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::new(dir.path());
            let log_dir = dir.path().join("log");
            let root = [0x5au8; 32];
            rt().block_on(async {
                let server = Running::start(pki.config(t, &log_dir), t, t.open()).await;
                let c = pki.client(Some(&pki.gateway));
                let url = &server.url;
                let signed: SignedLogCheckpoint = ok(post(
                    &c,
                    url,
                    api::SIGN_LOG_CHECKPOINT,
                    &json!({"size": 77, "root_hash": STANDARD.encode(root)}),
                )
                .await)
                .await;
                assert_eq!(signed.kid, "alga-log-v1");
                assert!(
                    signed.note.starts_with(&format!("{ORIGIN}\n77\n{}\n\n\u{2014} {ORIGIN} ", STANDARD.encode(root))),
                    "{}",
                    signed.note
                );
                let keys: PublicKeys = ok(c.get(format!("{url}{}", api::PUBLIC_KEYS)).send().await.expect("keys")).await;
                assert_eq!(keys.log_keys.len(), 1);
                assert_eq!(keys.log_keys[0].kid, signed.kid);
                let verifier = signed_note::StandardVerifier::new(&keys.log_keys[0].vkey).expect("vkey");
                let known = signed_note::VerifierList::new(vec![Box::new(verifier)]);
                signed_note::Note::from_bytes(signed.note.as_bytes())
                    .expect("a note")
                    .verify(&known)
                    .expect("verifies with the published verifier key");

                // A root hash that is not the standard base64 of 32 bytes: 400, nothing signed.
                for bad in [
                    json!({"size": 78, "root_hash": hex::encode(root)}),
                    json!({"size": 78, "root_hash": STANDARD.encode([0u8; 31])}),
                    json!({"size": 78, "root_hash": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(root)}),
                    json!({"size": 78, "root_hash": ""}),
                    json!({"size": 78, "root_hash": STANDARD.encode(root), "origin": "another.example/log"}),
                ] {
                    let message = error(post(&c, url, api::SIGN_LOG_CHECKPOINT, &bad).await, 400, IssuerErrorCode::BadRequest).await;
                    assert!(!message.is_empty(), "{bad}");
                }
                server.stop().await;
            });
            let log = signlog::read_dir(&log_dir).expect("the chain verifies");
            assert_eq!(log.records.len(), 1, "refusals sign nothing");
            let record = &log.records[0];
            assert_eq!(record.op, SignOp::LogCheckpoint);
            assert_eq!(record.kid, "alga-log-v1");
            assert_eq!(record.ids.sequence, Some(77));
            assert_eq!(record.ids.head_hash, Some(hex::encode(root)));
            let line = std::fs::read_dir(&log_dir)
                .expect("log dir")
                .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("log file"))
                .collect::<String>();
            assert!(line.contains(r#""op":"log_checkpoint""#), "{line}");
        },
    );
}

/// A global tracing subscriber (debug and up, every crate) writing into memory.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn install() -> CapturedLogs {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
