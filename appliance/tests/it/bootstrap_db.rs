//! `bootstrap` against a fresh database created through the stack's `DATABASE_URL`.

use alga_appliance::bootstrap;
use alga_appliance::exit;
use alga_appliance::fsio;
use alga_appliance::secrets::{self, LicenseSeed, PaidSeed, SecretManifest};
use alga_protocol::SecretText;
use base64::Engine as _;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::common::*;

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = stack_var("DATABASE_URL");
        let name = format!("appliance_it_{}", Uuid::new_v4().simple());
        let (c, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to DATABASE_URL (is the stack up? `make up`): {e}")
            });
        tokio::spawn(conn);
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let (base, _) = admin_url.rsplit_once('/').expect("URL has a database");
        TestDb {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }

    pub async fn drop_db(self) {
        if let Ok((c, conn)) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = c
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

fn write_manifest(dir: &std::path::Path, m: &SecretManifest) {
    fsio::write_atomic(
        &secrets::manifest_path(dir, &m.name),
        m.to_yaml().as_bytes(),
        fsio::SECRET_MODE,
    )
    .expect("write manifest");
}

fn create_tenant(secrets_dir: &std::path::Path, db: &TestDb) -> Run {
    run(
        &[
            "bootstrap",
            "create-tenant",
            "--secrets",
            secrets_dir.to_str().expect("utf8"),
            "--database-url",
            &db.url,
        ],
        None,
    )
}

fn seed_license_cli(secrets_dir: &std::path::Path, db: &TestDb) -> Run {
    run(
        &[
            "bootstrap",
            "seed-license",
            "--secrets",
            secrets_dir.to_str().expect("utf8"),
            "--database-url",
            &db.url,
        ],
        None,
    )
}

async fn stored_tenant(db: &TestDb) -> Option<Uuid> {
    let c = bootstrap::connect(&db.url).await.expect("connect");
    bootstrap::current_tenant(&c).await.expect("query")
}

/// Adopt the Secret's id; re-run is a no-op; a different id is refused and the
/// stored tenant is kept.
#[tokio::test]
async fn create_tenant_adopts_is_idempotent_and_refuses_conflict() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = Uuid::new_v4();
    write_manifest(dir.path(), &secrets::initial_tenant(tenant));

    let r = create_tenant(dir.path(), &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&tenant.to_string()) && r.stdout.contains("adopted"),
        "{r:?}"
    );
    assert_eq!(stored_tenant(&db).await, Some(tenant));

    let r = create_tenant(dir.path(), &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("unchanged"), "{r:?}");
    assert_eq!(stored_tenant(&db).await, Some(tenant));

    let other = Uuid::new_v4();
    write_manifest(dir.path(), &secrets::initial_tenant(other));
    let r = create_tenant(dir.path(), &db);
    assert_eq!(r.code, exit::TENANT_CONFLICT, "{r:?}");
    assert!(r.stderr.contains("refusing to replace"), "{}", r.stderr);
    assert_eq!(stored_tenant(&db).await, Some(tenant), "never replaced");
    db.drop_db().await;
}

/// No Secret (or a Secret without the key): an id is generated once, then kept; a
/// later install code for another tenant is a conflict, not a silent replacement.
#[tokio::test]
async fn create_tenant_generates_only_without_install_code() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = create_tenant(dir.path(), &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("generated"), "{r:?}");
    let generated = stored_tenant(&db).await.expect("a tenant");

    // The Secret exists but never gained INITIAL_TENANT_ID: still no code.
    write_manifest(dir.path(), &SecretManifest::new(secrets::INITIAL_TENANT));
    let r = create_tenant(dir.path(), &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("unchanged"), "{r:?}");
    assert_eq!(stored_tenant(&db).await, Some(generated));

    write_manifest(dir.path(), &secrets::initial_tenant(Uuid::new_v4()));
    let r = create_tenant(dir.path(), &db);
    assert_eq!(r.code, exit::TENANT_CONFLICT, "{r:?}");
    assert_eq!(stored_tenant(&db).await, Some(generated));
    db.drop_db().await;
}

/// A malformed id in the Secret is an input error: nothing is generated instead.
#[tokio::test]
async fn create_tenant_rejects_a_malformed_id() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = SecretManifest::new(secrets::INITIAL_TENANT);
    m.set(secrets::KEY_INITIAL_TENANT_ID, b"not-a-uuid");
    write_manifest(dir.path(), &m);
    let r = create_tenant(dir.path(), &db);
    assert_eq!(r.code, exit::LOCAL_INPUT, "{r:?}");
    assert_eq!(stored_tenant(&db).await, None);
    db.drop_db().await;
}

/// An unsigned JWT with these claims (the bootstrap reads claims of a token verified
/// at redeem/check-in; it has no JWKS).
fn token_for(tenant: Uuid, edition: &str, exp: i64, interval: u64) -> SecretText {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b.encode(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": "alga-license", "sub": tenant.to_string(), "aud": "alga-appliance",
        "jti": Uuid::new_v4().to_string(), "iat": exp - 1000, "nbf": exp - 1000, "exp": exp,
        "edition": edition,
        "entitlements": {"features": [], "seats": 5, "check_in_interval_seconds": interval},
        "appliance_id": Uuid::new_v4().to_string(),
    });
    let payload = b.encode(serde_json::to_vec(&claims).expect("json"));
    SecretText::new(format!("{header}.{payload}.c2ln"))
}

fn paid_seed(token: SecretText) -> LicenseSeed {
    LicenseSeed {
        edition: "pro".into(),
        paid: Some(PaidSeed {
            token,
            cert_chain_pem: "c".into(),
            key_pem: SecretText::new("k".into()),
            ca_pem: "ca".into(),
            check_in_url: "https://x/check-in".into(),
            trust_root_pem: None,
        }),
    }
}

/// essentials → tier essentials, no token; paid → licensed, token, expiry and the
/// next refresh at now + the entitlements' interval; a license of another tenant or an
/// expired one is refused; seeding before create-tenant is refused.
#[tokio::test]
async fn seed_license_states() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");

    let r = seed_license_cli(dir.path(), &db);
    assert_eq!(r.code, exit::TENANT_CONFLICT, "no tenant yet: {r:?}");
    assert!(r.stderr.contains("create-tenant"), "{}", r.stderr);

    let tenant = Uuid::new_v4();
    write_manifest(dir.path(), &secrets::initial_tenant(tenant));
    assert_eq!(create_tenant(dir.path(), &db).code, 0);

    // No license seed at all (no install code was used): the essentials tier.
    let r = seed_license_cli(dir.path(), &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("tier: essentials"), "{r:?}");

    let ess = LicenseSeed {
        edition: "essentials".into(),
        paid: None,
    };
    write_manifest(dir.path(), &ess.to_manifest());
    let r = seed_license_cli(dir.path(), &db);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("tier: essentials"), "{r:?}");
    let mut c = bootstrap::connect(&db.url).await.expect("connect");
    let s = bootstrap::license_state(&c).await.expect("q").expect("row");
    assert_eq!(
        (s.tier.as_str(), s.has_token, s.expires_at),
        ("essentials", false, None)
    );

    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("t");
    let exp = now.unix_timestamp() + 30 * 86_400;
    let seed = paid_seed(token_for(tenant, "pro", exp, 86_400));
    let s = bootstrap::seed_license(&mut c, Some(&seed), now)
        .await
        .expect("seed");
    assert_eq!(s.tier, "licensed");
    assert!(s.has_token);
    assert_eq!(s.expires_at.map(|t| t.unix_timestamp()), Some(exp));
    assert_eq!(s.next_refresh_at, Some(now + time::Duration::days(1)));
    let stored = bootstrap::license_state(&c).await.expect("q").expect("row");
    assert_eq!(stored, s);

    let other = paid_seed(token_for(Uuid::new_v4(), "pro", exp, 86_400));
    let e = bootstrap::seed_license(&mut c, Some(&other), now)
        .await
        .expect_err("other tenant");
    assert_eq!(e.exit_code(), exit::LOCAL_INPUT);
    let expired = paid_seed(token_for(tenant, "pro", now.unix_timestamp() - 1, 86_400));
    let e = bootstrap::seed_license(&mut c, Some(&expired), now)
        .await
        .expect_err("expired");
    assert_eq!(e.exit_code(), exit::LOCAL_INPUT);
    assert_eq!(
        bootstrap::license_state(&c).await.expect("q").expect("row"),
        s,
        "a refused seed changes nothing"
    );
    db.drop_db().await;
}
