//! `alga-audit reconcile`: an issuer's signing log (built with the protocol's own
//! types, as the issuer writes it, rotated over two files) against chained records in
//! a real database and in an export. Exit 0 only when nothing is unrecorded, absent or
//! broken.

use std::path::Path;
use std::process::Command;

use alga_audit::{Action, Actor, NewRecord};
use alga_protocol::CodeId;
use alga_protocol::signlog::{GENESIS_HASH, SignEvent, SignIds, SignOp, SignlogRecord, file_name};
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::support::{InsecureTestSigner, RunningSequencer, TestDb, fast_config, wait_all_chained};

fn audit(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_alga-audit"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .output()
        .expect("run alga-audit")
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// What the gateway would have recorded.
struct Rec {
    time: OffsetDateTime,
    action: &'static str,
    tenant: Option<Uuid>,
    subjects: Vec<(&'static str, String)>,
    details: Vec<(&'static str, Value)>,
    failure: Option<&'static str>,
}

impl Rec {
    fn new(time: OffsetDateTime, action: &'static str, tenant: Uuid) -> Rec {
        Rec {
            time,
            action,
            tenant: Some(tenant),
            subjects: Vec::new(),
            details: Vec::new(),
            failure: None,
        }
    }

    fn subject(mut self, k: &'static str, v: impl ToString) -> Rec {
        self.subjects.push((k, v.to_string()));
        self
    }

    fn build(&self) -> NewRecord {
        let mut b = NewRecord::builder(
            self.time,
            Actor::client("store", "spiffe://alga.test/service/nm-store").unwrap(),
            Action::new(self.action).unwrap(),
        )
        .request_id(&format!("req-{}", Uuid::new_v4().simple()));
        if let Some(t) = self.tenant {
            b = b.tenant(t);
        }
        for (k, v) in &self.subjects {
            b = b.subject(k, v);
        }
        for (k, v) in &self.details {
            b = b.detail(k, v.clone());
        }
        if let Some(code) = self.failure {
            b = b.failure(code);
        }
        b.build().unwrap()
    }
}

fn event(time: OffsetDateTime, op: SignOp, ids: SignIds) -> SignEvent {
    SignEvent {
        time,
        op,
        ids,
        kid: "alga-license-v1".into(),
    }
}

/// Writes `events` as the issuer does: chained from genesis, `per_file` records per
/// `signlog-<first seq>.jsonl`.
fn write_signlog(dir: &Path, events: &[SignEvent], per_file: usize) {
    let mut prev = GENESIS_HASH.to_owned();
    let mut lines = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let r = SignlogRecord::seal(e.clone(), i as u64 + 1, &prev).unwrap();
        prev = r.hash.clone();
        lines.push(r.to_line().unwrap());
    }
    for (n, chunk) in lines.chunks(per_file).enumerate() {
        let mut text = chunk.join("\n");
        text.push('\n');
        std::fs::write(dir.join(file_name((n * per_file) as u64 + 1)), text).unwrap();
    }
}

/// A small day of work: a registration (mint, mail sent, one more derive for a retried
/// mail), a paid redeem (license + credential), a check-in, and a redeem that failed
/// after its license was signed (rolled back, recorded as a failure).
struct Scenario {
    db: TestDb,
    /// Records: what the gateway recorded.
    records: Vec<Rec>,
    /// Signing log events, checkpoints excluded (added once the chain is signed).
    events: Vec<SignEvent>,
    t0: OffsetDateTime,
    tenant: Uuid,
}

impl Scenario {
    async fn new() -> Scenario {
        let t0 = (OffsetDateTime::now_utc() - Duration::hours(1))
            .replace_nanosecond(0)
            .unwrap();
        let s = |n: i64| t0 + Duration::seconds(n);
        let tenant = Uuid::new_v4();
        let code = CodeId::parse("K7M2Q9XD4T").unwrap();
        let appliance = Uuid::new_v4();
        let (jti1, jti2, jti_failed) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let serial = "4f1e0c2d3b4a59687766554433221100".to_owned();
        let code_ids = || SignIds {
            tenant_id: Some(tenant),
            code_id: Some(code.clone()),
            edition: Some("pro".into()),
            ..SignIds::default()
        };
        let license = |jti: Uuid, appliance: Uuid| SignIds {
            tenant_id: Some(tenant),
            appliance_id: Some(appliance),
            edition: Some("pro".into()),
            jti: Some(jti),
            ..SignIds::default()
        };
        let events = vec![
            event(s(0), SignOp::CodeMint, code_ids()),
            // The first mail attempt failed transiently (derived, not recorded) …
            event(s(10), SignOp::CodeDerive, code_ids()),
            // … the second was sent.
            event(s(40), SignOp::CodeDerive, code_ids()),
            event(s(100), SignOp::License, license(jti1, appliance)),
            event(
                s(101),
                SignOp::Credential,
                SignIds {
                    tenant_id: Some(tenant),
                    appliance_id: Some(appliance),
                    serial: Some(serial.clone()),
                    ..SignIds::default()
                },
            ),
            event(s(200), SignOp::License, license(jti2, appliance)),
            // A retried redeem whose credential call failed after its license was
            // signed: the transaction rolled back, the failure was recorded.
            event(s(301), SignOp::License, license(jti_failed, Uuid::new_v4())),
        ];
        let records = vec![
            Rec::new(s(0), "tenant.register", tenant).subject("code_id", code.as_str()),
            Rec::new(s(0), "code.mint", tenant).subject("code_id", code.as_str()),
            Rec::new(s(40), "mail.sent", tenant)
                .subject("code_id", code.as_str())
                .subject("mail_id", Uuid::new_v4()),
            Rec::new(s(99), "code.redeem", tenant)
                .subject("code_id", code.as_str())
                .subject("appliance_id", appliance)
                .subject("jti", jti1)
                .subject("serial", &serial),
            Rec::new(s(199), "appliance.check_in", tenant)
                .subject("appliance_id", appliance)
                .subject("jti", jti2),
            Rec {
                failure: Some("license_service_unavailable"),
                ..Rec::new(s(300), "code.redeem", tenant).subject("code_id", "ABCDE12345")
            },
        ];
        Scenario {
            db: TestDb::new().await,
            records,
            events,
            t0,
            tenant,
        }
    }

    /// Appends and chains the records, has the chain checkpointed, then writes the
    /// signing log with one `checkpoint` event per stored checkpoint. Returns the
    /// signing-log directory.
    async fn commit(&mut self, dir: &Path) {
        let signer = InsecureTestSigner::new("audit-1");
        let mut seq = RunningSequencer::start(self.db.pool(2), signer, fast_config(3));
        let mut rt = self.db.runtime().await;
        for r in &self.records {
            let tx = rt.transaction().await.unwrap();
            alga_audit::append(&tx, &r.build()).await.unwrap();
            tx.commit().await.unwrap();
        }
        let n = self.records.len() as u64;
        seq.wait_for(n, 1).await;
        seq.stop().await;
        wait_all_chained(&rt).await;
        let cps = alga_audit::list_checkpoints(&rt, 0, 0).await.unwrap();
        assert!(!cps.is_empty());
        for cp in cps {
            self.events.push(event(
                cp.signed_at,
                SignOp::Checkpoint,
                SignIds {
                    sequence: Some(cp.sequence),
                    head_hash: Some(cp.head_hash.clone()),
                    ..SignIds::default()
                },
            ));
        }
        for cp in alga_audit::tree::list_checkpoints(&rt).await.unwrap() {
            self.events.push(event(
                cp.stored_at,
                SignOp::LogCheckpoint,
                SignIds {
                    sequence: Some(cp.size),
                    head_hash: Some(cp.root_hex.clone()),
                    ..SignIds::default()
                },
            ));
        }
        self.events.sort_by_key(|e| e.time);
        write_signlog(dir, &self.events, 4);
    }

    fn reconcile(&self, dir: &Path, extra: &[&str]) -> (std::process::Output, Value) {
        let until = rfc3339(OffsetDateTime::now_utc() + Duration::minutes(1));
        let mut args = vec![
            "reconcile",
            "--issuer-log",
            dir.to_str().unwrap(),
            "--until",
            &until,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = audit(&self.db.url(), &args);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, v)
    }
}

fn ids(v: &Value, list: &str) -> Vec<String> {
    v["report"][list]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.get("signature")
                .unwrap_or(s)
                .get("id")
                .and_then(Value::as_str)
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn everything_matched_exits_0_from_the_database_and_from_an_export() {
    let mut s = Scenario::new().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signlog");
    std::fs::create_dir(&log).unwrap();
    s.commit(&log).await;
    assert!(
        std::fs::read_dir(&log).unwrap().count() >= 2,
        "the log is rotated over files"
    );

    let (out, v) = s.reconcile(&log, &[]);
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["reconciled"], true);
    assert_eq!(v["counts"]["unrecorded"], 0);
    assert_eq!(v["counts"]["absent"], 0);
    assert_eq!(v["counts"]["mismatched"], 0);
    let m = &v["report"]["matched"];
    assert_eq!(m["code_mint"], 1);
    assert_eq!(
        m["code_derive"], 2,
        "both derives, the unrecorded retry too"
    );
    assert_eq!(m["license"], 2);
    assert_eq!(m["credential"], 1);
    assert!(m["checkpoint"].as_u64().unwrap() >= 1);
    // The license signed in the rolled-back redeem: for review, not a discrepancy.
    let failed = &v["report"]["failed_request"];
    assert_eq!(failed.as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(failed[0]["signature"]["op"], "license");
    assert_eq!(failed[0]["failure_action"], "code.redeem");
    assert_eq!(failed[0]["error_code"], "license_service_unavailable");

    // --strict counts it.
    let (out, v) = s.reconcile(&log, &["--strict"]);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(v["reconciled"], false);

    // The same from an export, as text.
    let export = dir.path().join("export.jsonl");
    let out = audit(
        &s.db.url(),
        &["export", "--output", export.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let until = rfc3339(OffsetDateTime::now_utc() + Duration::minutes(1));
    let out = audit(
        "postgres://nobody@127.0.0.1:1/none",
        &[
            "reconcile",
            "--issuer-log",
            log.to_str().unwrap(),
            "--export",
            export.to_str().unwrap(),
            "--until",
            &until,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("chain intact"), "{text}");
    assert!(
        text.contains("signed by the issuer, never recorded by the gateway: 0"),
        "{text}"
    );
    assert!(
        text.contains("recorded by the gateway as signed, absent from the issuer's log: 0"),
        "{text}"
    );
    assert!(text.contains("result:       RECONCILED"), "{text}");

    // --since after the mint: the derive in the window is still accounted for, the
    // mint itself is not checked again.
    let since = rfc3339(s.t0 + Duration::seconds(30));
    let (out, v) = s.reconcile(&log, &["--since", &since]);
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["report"]["matched"]["code_derive"], 1);
    assert!(v["report"]["matched"].get("code_mint").is_none());
    s.db.drop_db().await;
}

#[tokio::test]
async fn a_signature_the_gateway_never_recorded_is_listed() {
    let mut s = Scenario::new().await;
    let dir = tempfile::tempdir().unwrap();
    let rogue_jti = Uuid::new_v4();
    let rogue_serial = "7a".repeat(16);
    let t = s.t0 + Duration::seconds(500);
    // A license and a credential for another tenant, with no request at all.
    let other = Uuid::new_v4();
    s.events.push(event(
        t,
        SignOp::License,
        SignIds {
            tenant_id: Some(other),
            appliance_id: Some(Uuid::new_v4()),
            jti: Some(rogue_jti),
            ..SignIds::default()
        },
    ));
    s.events.push(event(
        t,
        SignOp::Credential,
        SignIds {
            tenant_id: Some(other),
            serial: Some(rogue_serial.clone()),
            ..SignIds::default()
        },
    ));
    // A derive of a code the gateway never minted.
    s.events.push(event(
        t,
        SignOp::CodeDerive,
        SignIds {
            tenant_id: Some(s.tenant),
            code_id: Some(CodeId::parse("ZZZZZ99999").unwrap()),
            ..SignIds::default()
        },
    ));
    s.commit(dir.path()).await;

    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(v["reconciled"], false);
    let mut listed = ids(&v, "unrecorded");
    listed.sort();
    let mut want = vec![
        rogue_jti.to_string(),
        rogue_serial.clone(),
        "ZZZZZ99999".to_owned(),
    ];
    want.sort();
    assert_eq!(listed, want, "{v:#}");
    assert_eq!(v["counts"]["absent"], 0);

    let until = rfc3339(OffsetDateTime::now_utc() + Duration::minutes(1));
    let out = audit(
        &s.db.url(),
        &[
            "reconcile",
            "--issuer-log",
            dir.path().to_str().unwrap(),
            "--until",
            &until,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("signed by the issuer, never recorded by the gateway: 3"),
        "{text}"
    );
    assert!(text.contains(&rogue_jti.to_string()), "{text}");
    assert!(text.contains("DISCREPANCIES: 3 unrecorded"), "{text}");
    s.db.drop_db().await;
}

#[tokio::test]
async fn a_record_of_a_signature_absent_from_the_issuers_log_is_listed() {
    let mut s = Scenario::new().await;
    let dir = tempfile::tempdir().unwrap();
    let phantom = Uuid::new_v4();
    let t = s.t0 + Duration::seconds(600);
    s.records.push(
        Rec::new(t, "appliance.check_in", s.tenant)
            .subject("appliance_id", Uuid::new_v4())
            .subject("jti", phantom),
    );
    // A mail sent for a code the issuer never derived.
    s.records.push(
        Rec::new(t, "mail.sent", s.tenant)
            .subject("code_id", "QQQQQ11111")
            .subject("mail_id", Uuid::new_v4()),
    );
    s.commit(dir.path()).await;

    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(v["counts"]["unrecorded"], 0, "{v:#}");
    let absent = v["report"]["absent"].as_array().unwrap();
    assert_eq!(absent.len(), 2, "{v:#}");
    assert_eq!(absent[0]["id"], phantom.to_string());
    assert_eq!(absent[0]["op"], "license");
    assert_eq!(absent[0]["action"], "appliance.check_in");
    assert_eq!(absent[1]["id"], "QQQQQ11111");
    assert_eq!(absent[1]["op"], "code_derive");
    s.db.drop_db().await;
}

#[tokio::test]
async fn a_tampered_signing_log_is_reported_with_its_seq() {
    let mut s = Scenario::new().await;
    let dir = tempfile::tempdir().unwrap();
    s.commit(dir.path()).await;
    let (out, _) = s.reconcile(dir.path(), &[]);
    assert!(out.status.success());

    // Change the jti of the first license (seq 4, the last line of the first file).
    let path = dir.path().join(file_name(1));
    let first = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = first.lines().collect();
    let line4 = lines[3];
    assert!(line4.contains("\"op\":\"license\""), "{line4}");
    let v: Value = serde_json::from_str(line4).unwrap();
    let jti = v["ids"]["jti"].as_str().unwrap().to_owned();
    std::fs::write(&path, first.replacen(&jti, &Uuid::new_v4().to_string(), 1)).unwrap();

    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    let broken = &v["report"]["logs"][0]["broken"];
    assert_eq!(broken["seq"], 4, "{v:#}");
    assert_eq!(broken["line"], 4);
    assert!(
        broken["reason"].as_str().unwrap().contains("hash"),
        "{broken}"
    );
    assert_eq!(v["counts"]["broken_logs"], 1);
    // Only the records before the break are trusted: the rest of the gateway's
    // claims have no signature to match.
    assert!(v["counts"]["absent"].as_u64().unwrap() >= 1, "{v:#}");

    let until = rfc3339(OffsetDateTime::now_utc() + Duration::minutes(1));
    let out = audit(
        &s.db.url(),
        &[
            "reconcile",
            "--issuer-log",
            dir.path().to_str().unwrap(),
            "--until",
            &until,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("BROKEN at seq 4"), "{text}");

    // A removed line is damage too.
    let mut lines: Vec<&str> = first.lines().collect();
    lines.remove(1);
    std::fs::write(&path, format!("{}\n", lines.join("\n"))).unwrap();
    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["report"]["logs"][0]["broken"]["seq"], 2, "{v:#}");
    s.db.drop_db().await;
}

#[tokio::test]
async fn a_checkpoint_signed_but_not_stored_is_reviewed_if_true_and_unrecorded_if_not() {
    let mut s = Scenario::new().await;
    let dir = tempfile::tempdir().unwrap();
    s.commit(dir.path()).await;
    // Add, after the fact, two checkpoints the gateway never stored: one over the
    // chain's real hash at seq 2, one over a head the chain never had.
    let rt = s.db.runtime().await;
    let stored: Vec<u64> = alga_audit::list_checkpoints(&rt, 0, 0)
        .await
        .unwrap()
        .iter()
        .map(|c| c.sequence)
        .collect();
    let mut free = (1..=s.records.len() as u64).filter(|n| !stored.contains(n));
    let (good, bad) = (free.next().unwrap(), free.next().unwrap());
    let q = alga_audit::EventQuery {
        after_seq: good - 1,
        limit: 1,
        ..Default::default()
    };
    let at_good = alga_audit::list_events(&rt, &q).await.unwrap();
    assert_eq!(at_good[0].seq, good);
    let t = OffsetDateTime::now_utc();
    for (seq, head) in [(good, hex::encode(at_good[0].hash)), (bad, "ab".repeat(32))] {
        s.events.push(event(
            t,
            SignOp::Checkpoint,
            SignIds {
                sequence: Some(seq),
                head_hash: Some(head),
                ..SignIds::default()
            },
        ));
    }
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::create_dir(dir.path()).unwrap();
    write_signlog(dir.path(), &s.events, 4);

    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(ids(&v, "unrecorded"), vec![bad.to_string()], "{v:#}");
    let failed = ids(&v, "failed_request");
    assert!(failed.contains(&good.to_string()), "{v:#}");
    s.db.drop_db().await;
}

#[tokio::test]
async fn tree_checkpoints_are_reconciled_by_size_and_root() {
    let mut s = Scenario::new().await;
    let dir = tempfile::tempdir().unwrap();
    s.commit(dir.path()).await;
    let rt = s.db.runtime().await;
    let stored = alga_audit::tree::list_checkpoints(&rt).await.unwrap();
    assert!(!stored.is_empty(), "the sequencer stored tree checkpoints");
    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{v:#}");

    // The issuer's log says another root for a stored size: a mismatch.
    let size = stored[0].size;
    let original = s.events.clone();
    for e in s.events.iter_mut() {
        if e.op == SignOp::LogCheckpoint && e.ids.sequence == Some(size) {
            e.ids.head_hash = Some("cd".repeat(32));
        }
    }
    let rewrite = |events: &[SignEvent]| {
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::create_dir(dir.path()).unwrap();
        write_signlog(dir.path(), events, 4);
    };
    rewrite(&s.events);
    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    let mismatched: Vec<&str> = v["report"]["mismatched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(mismatched, vec![size.to_string().as_str()], "{v:#}");

    // The stored one missing from the issuer's log is absent; one signed and never
    // stored is listed for review.
    s.events = original;
    s.events
        .retain(|e| !(e.op == SignOp::LogCheckpoint && e.ids.sequence == Some(size)));
    s.events.push(event(
        OffsetDateTime::now_utc(),
        SignOp::LogCheckpoint,
        SignIds {
            sequence: Some(size + 1000),
            head_hash: Some("ef".repeat(32)),
            ..SignIds::default()
        },
    ));
    rewrite(&s.events);
    let (out, v) = s.reconcile(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    let absent: Vec<String> = v["report"]["absent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(absent.contains(&size.to_string()), "{v:#}");
    assert!(
        ids(&v, "failed_request").contains(&(size + 1000).to_string()),
        "{v:#}"
    );
    s.db.drop_db().await;
}
