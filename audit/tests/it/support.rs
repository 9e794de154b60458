//! Test support: a fresh database per test, pools as the owner or the runtime role,
//! an in-memory checkpoint signer, sample records.

use std::str::FromStr;
use std::time::Duration;

use alga_audit::{
    Action, Actor, AuditKeys, CheckpointSigner, NewRecord, Sequencer, SequencerConfig,
    VerifyOptions,
};
use alga_policies::AuditPolicy;
use alga_protocol::issuer_api::{CheckpointStatement, SignedCheckpoint, SignedLogCheckpoint};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use uuid::Uuid;

/// The superuser URL from the environment (`.dev/env`). Missing is a failure, never a skip.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run `make infra` (or `make up`) and `source .dev/env`; \
         these tests need a real Postgres superuser",
    )
}

/// A fresh database with the audit migrations applied.
pub struct TestDb {
    pub name: String,
    config: Config,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("alga_audit=info")
            .try_init();
        let base = Config::from_str(&database_url()).expect("DATABASE_URL is not a Postgres URL");
        let name = format!("audit_test_{}", Uuid::new_v4().simple());
        let admin = connect(&base).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        ensure_runtime_role(&admin).await;
        let mut config = base.clone();
        config.dbname(&name);
        let db = TestDb { name, config };
        let owner = db.owner().await;
        for m in alga_audit::migrations() {
            owner
                .batch_execute(&format!("BEGIN; {} COMMIT;", m.sql))
                .await
                .unwrap_or_else(|e| panic!("migration {}: {e}", m.name));
        }
        owner
            .batch_execute(
                "CREATE TABLE business (id bigint PRIMARY KEY, n bigint NOT NULL DEFAULT 0); \
                 INSERT INTO business (id) SELECT g FROM generate_series(1, 1000) g; \
                 GRANT SELECT, INSERT, UPDATE ON business TO alga_gateway;",
            )
            .await
            .expect("business table");
        db
    }

    /// A connection as the migration role / table owner (the superuser here).
    pub async fn owner(&self) -> Client {
        connect(&self.config).await
    }

    /// A connection acting as the runtime role `alga_gateway`.
    pub async fn runtime(&self) -> Client {
        connect(&self.runtime_config()).await
    }

    fn runtime_config(&self) -> Config {
        let mut c = self.config.clone();
        c.options("-c role=alga_gateway");
        c
    }

    /// A pool of runtime-role connections (what a gateway has).
    pub fn pool(&self, size: usize) -> Pool {
        let manager = Manager::from_config(
            self.runtime_config(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager).max_size(size).build().expect("pool")
    }

    /// The superuser URL of this database (for the binaries).
    pub fn url(&self) -> String {
        let url = database_url();
        let scheme_end = url
            .find("://")
            .map(|i| i + 3)
            .expect("DATABASE_URL is a URL");
        let path_start = url[scheme_end..]
            .find('/')
            .map(|i| i + scheme_end)
            .unwrap_or(url.len());
        let query = url[path_start..]
            .find('?')
            .map(|i| &url[path_start + i..])
            .unwrap_or("");
        format!("{}/{}{}", &url[..path_start], self.name, query)
    }

    pub async fn drop_db(self) {
        let base = Config::from_str(&database_url()).expect("URL");
        let admin = connect(&base).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

async fn ensure_runtime_role(admin: &Client) {
    let sql = format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'alga_gateway') THEN \
         CREATE ROLE alga_gateway LOGIN PASSWORD '{}'; END IF; END $$;",
        Uuid::new_v4().simple()
    );
    if let Err(e) = admin.batch_execute(&sql).await {
        // Another test created it at the same moment.
        let raced = matches!(e.code(), Some(c) if *c == SqlState::DUPLICATE_OBJECT || *c == SqlState::UNIQUE_VIOLATION);
        assert!(raced, "create role alga_gateway: {e}");
    }
}

pub async fn connect(config: &Config) -> Client {
    let (client, conn) = config.connect(NoTls).await.expect("connect to Postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// In-memory P-256 checkpoint signer. **Test only**: the real signer is the issuer's
/// HSM audit key, reached through the gateway's issuer client.
#[derive(Clone)]
pub struct InsecureTestSigner {
    pub kid: String,
    key: SigningKey,
    /// The tree's log key (Ed25519, signed-note private key form) and its verifier key.
    log_skey: String,
    pub log_vkey: String,
}

/// The origin the test log signs under.
pub const TEST_ORIGIN: &str = "audit.test/log";

impl InsecureTestSigner {
    pub fn new(kid: &str) -> InsecureTestSigner {
        let key = loop {
            if let Ok(k) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        let (skey, log_vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, TEST_ORIGIN);
        InsecureTestSigner {
            kid: kid.to_owned(),
            key,
            log_skey: skey,
            log_vkey,
        }
    }

    /// The log keys a reader of this test log trusts.
    pub fn log_keys(&self) -> alga_tlog::LogKeys {
        alga_tlog::LogKeys::parse(&self.log_vkey).expect("vkey")
    }

    /// A checkpoint note of the tree `(size, root)` signed with the log key.
    pub fn sign_log_now(&self, size: u64, root: [u8; 32]) -> SignedLogCheckpoint {
        let body = alga_tlog::checkpoint_body(TEST_ORIGIN, size, &alga_tlog::Hash(root));
        let mut note = signed_note::Note::new(body.as_bytes(), &[]).expect("note");
        let signer = signed_note::StandardSigner::new(&self.log_skey).expect("skey");
        note.add_sigs(&[&signer as &dyn signed_note::Signer])
            .expect("sign");
        SignedLogCheckpoint {
            note: String::from_utf8(note.to_bytes()).expect("utf-8"),
            kid: "test-log-v1".into(),
        }
    }

    pub fn sign_now(&self, sequence: u64, head_hash_hex: &str) -> SignedCheckpoint {
        let signed_at = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("zero is a valid nanosecond");
        let statement = CheckpointStatement {
            sequence,
            head_hash: head_hash_hex,
            signed_at,
            kid: &self.kid,
        }
        .to_bytes();
        let sig: Signature = self.key.sign(&statement);
        SignedCheckpoint {
            sequence,
            head_hash: head_hash_hex.to_ascii_lowercase(),
            signed_at,
            kid: self.kid.clone(),
            signature: URL_SAFE_NO_PAD.encode(sig.to_bytes()),
        }
    }

    pub fn keys(&self) -> AuditKeys {
        AuditKeys::single(&self.kid, *self.key.verifying_key())
    }

    /// The issuer's `GET /v1/keys` document, as far as verify reads it.
    pub fn public_keys_json(&self) -> String {
        let der = self
            .key
            .verifying_key()
            .to_public_key_der()
            .expect("SPKI encoding");
        serde_json::json!({
            "jwks": {"keys": []},
            "ca_chain_pem": "",
            "audit_keys": [{
                "kid": self.kid,
                "version": 1,
                "spki_der_b64": STANDARD.encode(der.as_bytes()),
                "created": "2025-01-01T00:00:00Z",
            }],
        })
        .to_string()
    }

    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM")
    }
}

impl CheckpointSigner for InsecureTestSigner {
    type Error = String;
    async fn sign(&self, sequence: u64, head_hash_hex: &str) -> Result<SignedCheckpoint, String> {
        Ok(self.sign_now(sequence, head_hash_hex))
    }
    async fn sign_log(&self, size: u64, root: [u8; 32]) -> Result<SignedLogCheckpoint, String> {
        Ok(self.sign_log_now(size, root))
    }
}

pub fn policy(every: u64) -> AuditPolicy {
    AuditPolicy {
        checkpoint_every_records: every,
        checkpoint_interval: time::Duration::hours(1),
        unchained_alarm_after: time::Duration::seconds(30),
    }
}

pub fn fast_config(every: u64) -> SequencerConfig {
    let mut c = SequencerConfig::new(policy(every));
    c.leader_retry = Duration::from_millis(50);
    c.signer_retry = Duration::from_millis(50);
    c
}

/// A varied, realistic record (the i-th of a test).
pub fn sample_record(i: u64) -> NewRecord {
    let actions = [
        "tenant.register",
        "code.mint",
        "code.redeem",
        "code.reissue",
        "appliance.check_in",
        "mail.sent",
    ];
    let action = Action::new(actions[(i % actions.len() as u64) as usize]).expect("action");
    let tenant = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + u128::from(i % 7));
    let mut b = NewRecord::builder(
        OffsetDateTime::now_utc(),
        Actor::client("store", "spiffe://alga.test/service/nm-store").expect("actor"),
        action,
    )
    .tenant(tenant)
    .subject("code_id", format!("K7M2Q{:05}", i % 100_000))
    .request_id(&format!("req-{i}"))
    .source("192.0.2.7".parse().expect("ip"))
    .detail("note", format!("record number {i}"))
    .detail(
        "edition",
        if i.is_multiple_of(2) {
            "pro"
        } else {
            "essentials"
        },
    );
    if i % 5 == 3 {
        b = b.failure("code_invalid");
    }
    b.build().expect("sample record")
}

/// Appends `n` sample records (numbered from `from`), each in its own transaction
/// with a business change.
pub async fn append_n(client: &mut Client, from: u64, n: u64) {
    for i in from..from + n {
        let tx = client.transaction().await.expect("begin");
        tx.execute(
            "UPDATE business SET n = n + 1 WHERE id = $1",
            &[&((i % 1000 + 1) as i64)],
        )
        .await
        .expect("business update");
        alga_audit::append(&tx, &sample_record(i))
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }
}

/// A running sequencer and the means to stop it.
pub struct RunningSequencer {
    pub progress: tokio::sync::watch::Receiver<alga_audit::Progress>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSequencer {
    pub fn start<S: CheckpointSigner>(pool: Pool, signer: S, config: SequencerConfig) -> Self {
        let s = Sequencer::new(pool, signer, config);
        let progress = s.progress();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = s.spawn(async move {
            let _ = rx.await;
        });
        RunningSequencer {
            progress,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Waits until the chain's head reaches `seq` and `checkpoints` are stored.
    pub async fn wait_for(&mut self, seq: u64, checkpoints: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let p = *self.progress.borrow_and_update();
            if p.head_seq >= seq && p.checkpoints >= checkpoints {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sequencer stuck at {p:?}, waiting for head {seq} and {checkpoints} checkpoints"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), self.progress.changed()).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("sequencer task");
        }
    }
}

/// Waits until every committed event is chained, by polling the database.
pub async fn wait_all_chained(client: &Client) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM audit_events), (SELECT count(*) FROM audit_chain)",
                &[],
            )
            .await
            .expect("count");
        let (events, chained): (i64, i64) = (row.get(0), row.get(1));
        if events == chained {
            return chained;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{chained} of {events} events chained after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn verify_options(keys: AuditKeys) -> VerifyOptions {
    VerifyOptions {
        keys,
        external_checkpoints: Vec::new(),
        now: OffsetDateTime::now_utc(),
        unchained_alarm_after: time::Duration::seconds(30),
    }
}

/// The log the tamper tests damage: 40 records chained by a sequencer, checkpointed
/// every 10 (4 signed checkpoints), the sequencer stopped. Returns the database, the
/// checkpoint keys and a superuser connection.
pub async fn sealed_log() -> (TestDb, AuditKeys, Client) {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("audit-1");
    let keys = signer.keys();
    let mut seq = RunningSequencer::start(db.pool(2), signer, fast_config(10));
    let mut rt = db.runtime().await;
    for round in 0..4u64 {
        append_n(&mut rt, round * 10, 10).await;
        seq.wait_for((round + 1) * 10, round + 1).await;
    }
    seq.stop().await;
    let owner = db.owner().await;
    (db, keys, owner)
}

/// An unfiltered export of the whole log into `path`.
pub async fn export_to(
    owner: &mut Client,
    path: &std::path::Path,
) -> Result<alga_audit::export::ExportSummary, alga_audit::AuditError> {
    let mut file = std::fs::File::create(path).map_err(alga_audit::AuditError::from)?;
    alga_audit::export(
        owner,
        &alga_audit::export::ExportFilter::default(),
        OffsetDateTime::now_utc(),
        &mut file,
    )
    .await
}
