//! The tamper suite: a database superuser bypasses the triggers
//! (`session_replication_role = replica`, which also silences the foreign keys) and
//! damages the log; verify names the first bad sequence number and the kind, from the
//! database and from an export of it.

use alga_audit::{AuditKeys, DamageKind, VerifyReport, chain_hash, verify_database, verify_export};
use alga_protocol::issuer_api::SignedCheckpoint;

use crate::support::{
    InsecureTestSigner, TestDb, export_to, sample_record, sealed_log, verify_options,
};

/// 40 records, checkpoints at 10, 20, 30 and 40.
struct Log {
    db: TestDb,
    keys: AuditKeys,
    owner: tokio_postgres::Client,
}

async fn build() -> Log {
    let (db, keys, owner) = sealed_log().await;
    let cps: Vec<i64> = owner
        .query("SELECT seq FROM audit_checkpoints ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cps, vec![10, 20, 30, 40]);
    Log { db, keys, owner }
}

impl Log {
    async fn tamper(&self, sql: &str) {
        self.owner
            .batch_execute(&format!(
                "BEGIN; SET LOCAL session_replication_role = replica; {sql}; COMMIT;"
            ))
            .await
            .unwrap_or_else(|e| panic!("tamper {sql}: {e:?}"));
    }

    async fn hash_at(&self, seq: i64) -> [u8; 32] {
        let h: Vec<u8> = self
            .owner
            .query_one("SELECT hash FROM audit_chain WHERE seq = $1", &[&seq])
            .await
            .unwrap()
            .get(0);
        h.try_into().unwrap()
    }

    async fn checkpoints(&mut self) -> Vec<SignedCheckpoint> {
        alga_audit::list_checkpoints(&self.owner, 0, 0)
            .await
            .unwrap()
    }

    /// Verifies from the database and from an export; both must name the same first damage.
    async fn expect(mut self, kind: DamageKind, seq: u64, external: Vec<SignedCheckpoint>) {
        let mut opts = verify_options(self.keys.clone());
        opts.external_checkpoints = external;
        let from_db = verify_database(&mut self.owner, &opts).await.unwrap();
        assert_first(&from_db, kind, seq, "database");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.jsonl");
        export_to(&mut self.owner, &path).await.unwrap();
        let from_export = verify_export(&path, &opts).unwrap();
        assert_first(&from_export, kind, seq, "export");
        self.db.drop_db().await;
    }
}

fn assert_first(r: &VerifyReport, kind: DamageKind, seq: u64, source: &str) {
    let first = r
        .first_damage()
        .unwrap_or_else(|| panic!("{source}: tampering not detected: {r:#?}"));
    assert_eq!(
        (first.kind, first.seq),
        (kind, Some(seq)),
        "{source}: wrong first finding: {r:#?}"
    );
}

const EVENT_17: &str = "(SELECT event_id FROM audit_chain WHERE seq = 17)";

#[tokio::test]
async fn untouched_log_is_intact() {
    let mut log = build().await;
    let r = verify_database(&mut log.owner, &verify_options(log.keys.clone()))
        .await
        .unwrap();
    assert!(r.intact(), "{r:#?}");
    assert_eq!(
        (r.records, r.checkpoints_matched, r.last_good_checkpoint),
        (40, 4, Some(40))
    );
    log.db.drop_db().await;
}

#[tokio::test]
async fn modified_record_is_named() {
    let log = build().await;
    log.tamper(&format!(
        "UPDATE audit_events SET record = overlay(record placing '\\x21'::bytea from 60 for 1) WHERE id = {EVENT_17}"
    ))
    .await;
    log.expect(DamageKind::Modified, 17, vec![]).await;
}

#[tokio::test]
async fn modified_hash_is_named() {
    let log = build().await;
    log.tamper("UPDATE audit_chain SET hash = sha256('x'::bytea) WHERE seq = 23")
        .await;
    log.expect(DamageKind::Modified, 23, vec![]).await;
}

#[tokio::test]
async fn modified_prev_hash_is_named() {
    let log = build().await;
    log.tamper("UPDATE audit_chain SET prev_hash = sha256('x'::bytea) WHERE seq = 23")
        .await;
    log.expect(DamageKind::Modified, 23, vec![]).await;
}

#[tokio::test]
async fn changed_filter_column_is_named() {
    let log = build().await;
    log.tamper(&format!(
        "UPDATE audit_events SET action = 'code.revoke' WHERE id = {EVENT_17}"
    ))
    .await;
    let mut owner = log.owner;
    let r = verify_database(&mut owner, &verify_options(log.keys.clone()))
        .await
        .unwrap();
    assert_first(&r, DamageKind::Modified, 17, "database");
    log.db.drop_db().await;
}

#[tokio::test]
async fn deleted_record_is_named() {
    let log = build().await;
    log.tamper(
        "WITH c AS (DELETE FROM audit_chain WHERE seq = 17 RETURNING event_id) \
         DELETE FROM audit_events WHERE id IN (SELECT event_id FROM c)",
    )
    .await;
    log.expect(DamageKind::Missing, 17, vec![]).await;
}

#[tokio::test]
async fn deleted_record_with_renumbering_is_named() {
    let log = build().await;
    log.tamper(
        "WITH c AS (DELETE FROM audit_chain WHERE seq = 17 RETURNING event_id) \
         DELETE FROM audit_events WHERE id IN (SELECT event_id FROM c); \
         UPDATE audit_chain SET seq = seq + 1000000 WHERE seq > 17; \
         UPDATE audit_chain SET seq = seq - 1000001 WHERE seq > 1000000",
    )
    .await;
    log.expect(DamageKind::Missing, 17, vec![]).await;
}

#[tokio::test]
async fn inserted_record_with_renumbering_is_named() {
    let log = build().await;
    // A forger who links the new record properly and shifts the rest up.
    let prev = log.hash_at(16).await;
    let forged = sample_record(999);
    let hash = chain_hash(&prev, 17, forged.canonical_bytes());
    let id: i64 = log
        .owner
        .query_one(
            "INSERT INTO audit_events (recorded_at, action, record) VALUES (now(), 'code.redeem', $1) RETURNING id",
            &[&forged.canonical_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    log.tamper(&format!(
        "UPDATE audit_chain SET seq = seq + 1000000 WHERE seq >= 17; \
         UPDATE audit_chain SET seq = seq - 999999 WHERE seq > 1000000; \
         INSERT INTO audit_chain (seq, event_id, prev_hash, hash) VALUES (17, {id}, '\\x{}', '\\x{}')",
        hex::encode(prev),
        hex::encode(hash)
    ))
    .await;
    log.expect(DamageKind::Inserted, 17, vec![]).await;
}

#[tokio::test]
async fn swapped_records_are_named() {
    let log = build().await;
    log.tamper(
        "UPDATE audit_events e SET record = o.record \
         FROM audit_events o, audit_chain a, audit_chain b \
         WHERE a.seq = 17 AND b.seq = 18 \
           AND ((e.id = a.event_id AND o.id = b.event_id) OR (e.id = b.event_id AND o.id = a.event_id))",
    )
    .await;
    log.expect(DamageKind::Reordered, 17, vec![]).await;
}

#[tokio::test]
async fn swapped_sequence_numbers_are_named() {
    let log = build().await;
    log.tamper(
        "UPDATE audit_chain SET seq = 1000017 WHERE seq = 17; \
         UPDATE audit_chain SET seq = 17 WHERE seq = 18; \
         UPDATE audit_chain SET seq = 18 WHERE seq = 1000017",
    )
    .await;
    log.expect(DamageKind::Reordered, 17, vec![]).await;
}

#[tokio::test]
async fn truncated_tail_is_named() {
    let log = build().await;
    log.tamper(
        "WITH c AS (DELETE FROM audit_chain WHERE seq >= 36 RETURNING event_id) \
         DELETE FROM audit_events WHERE id IN (SELECT event_id FROM c)",
    )
    .await;
    log.expect(DamageKind::TruncatedTail, 36, vec![]).await;
}

#[tokio::test]
async fn restore_older_than_the_last_checkpoint_is_flagged() {
    let mut log = build().await;
    // Checkpoints kept elsewhere (an earlier export, the issuer's log).
    let kept = log.checkpoints().await;
    // The whole database goes back to its state at 30, checkpoints included.
    log.tamper(
        "DELETE FROM audit_checkpoints WHERE seq > 30; \
         WITH c AS (DELETE FROM audit_chain WHERE seq > 30 RETURNING event_id) \
         DELETE FROM audit_events WHERE id IN (SELECT event_id FROM c)",
    )
    .await;
    // On its own the restored log is consistent: only outside checkpoints reveal it.
    let alone = verify_database(&mut log.owner, &verify_options(log.keys.clone()))
        .await
        .unwrap();
    assert!(alone.intact(), "{alone:#?}");
    log.expect(DamageKind::ShorterThanCheckpoint, 31, kept)
        .await;
}

#[tokio::test]
async fn rewritten_and_rehashed_chain_is_caught_by_its_checkpoint() {
    let log = build().await;
    // The strongest forger: changes record 17 and recomputes every later hash.
    let forged = sample_record(777);
    let r = forged.record();
    let mut sql = format!(
        "UPDATE audit_events SET record = '\\x{}', action = '{}', tenant_id = '{}', \
         recorded_at = '{}' WHERE id = {EVENT_17};",
        hex::encode(forged.canonical_bytes()),
        r.action,
        r.tenant_id.unwrap(),
        alga_audit::canonical::format_time(r.time),
    );
    sql.push_str(&rechain_from_17(&log, forged.canonical_bytes()).await);
    log.tamper(&sql).await;
    // Everything links; the checkpoint at 20 no longer matches: 11..=20 were rewritten.
    log.expect(DamageKind::Rewritten, 11, vec![]).await;
}

#[tokio::test]
async fn bad_checkpoint_signature_is_named() {
    let log = build().await;
    log.tamper(
        "UPDATE audit_checkpoints SET signature = (SELECT signature FROM audit_checkpoints WHERE seq = 30) WHERE seq = 20",
    )
    .await;
    log.expect(DamageKind::BadCheckpointSignature, 20, vec![])
        .await;
}

#[tokio::test]
async fn checkpoint_from_an_unknown_key_is_named() {
    let mut log = build().await;
    let other = InsecureTestSigner::new("audit-1").keys();
    let r = verify_database(&mut log.owner, &verify_options(other))
        .await
        .unwrap();
    assert_first(&r, DamageKind::BadCheckpointSignature, 10, "database");
    log.db.drop_db().await;
}

/// Damage done to an export file is named the same way.
#[tokio::test]
async fn tampered_export_files_are_named() {
    let mut log = build().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.jsonl");
    export_to(&mut log.owner, &path).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // header + 4 checkpoints, then records 1..=40.
    let rec = |seq: usize| 4 + seq;
    assert!(lines[rec(1)].contains("\"seq\":1,"));
    let opts = verify_options(log.keys.clone());
    let check = |name: &str, lines: Vec<String>, kind: DamageKind, seq: u64| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let r = verify_export(&p, &opts).unwrap();
        assert_first(&r, kind, seq, name);
    };
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();

    let intact = verify_export(&path, &opts).unwrap();
    assert!(intact.intact(), "{intact:#?}");

    let mut l = owned.clone();
    l.swap(rec(12), rec(13));
    check("swapped", l, DamageKind::Reordered, 12);

    let mut l = owned.clone();
    l.remove(rec(12));
    check("deleted", l, DamageKind::Missing, 12);

    let mut l = owned.clone();
    l[rec(12)] = l[rec(12)].replace("record number 11", "record number 99");
    check("modified", l, DamageKind::Modified, 12);

    let mut l = owned.clone();
    let dup = l[rec(12)].clone();
    l.insert(rec(13), dup);
    check("duplicated", l, DamageKind::Inserted, 12);

    let mut l = owned.clone();
    l.truncate(rec(34));
    check("truncated", l, DamageKind::TruncatedTail, 34);

    let mut l = owned.clone();
    l[rec(12)] = l[rec(12)].replacen("\"seq\":12,", "\"seq\":13,", 1);
    l[rec(13)] = l[rec(13)].replacen("\"seq\":13,", "\"seq\":12,", 1);
    check("renumbered", l, DamageKind::Reordered, 12);
    log.db.drop_db().await;
}

/// The stored record bytes at `seq`.
async fn stored_bytes(owner: &tokio_postgres::Client, seq: i64) -> Vec<u8> {
    owner
        .query_one(
            "SELECT e.record FROM audit_chain c JOIN audit_events e ON e.id = c.event_id WHERE c.seq = $1",
            &[&seq],
        )
        .await
        .unwrap()
        .get(0)
}

/// The SQL a forger runs after replacing record 17's bytes with `bytes_17`: every chain
/// row from 17 to 40 re-hashed so the chain links again.
async fn rechain_from_17(log: &Log, bytes_17: &[u8]) -> String {
    let mut prev = log.hash_at(16).await;
    let mut sql = String::new();
    for seq in 17..=40i64 {
        let bytes = if seq == 17 {
            bytes_17.to_vec()
        } else {
            stored_bytes(&log.owner, seq).await
        };
        let h = chain_hash(&prev, seq as u64, &bytes);
        sql.push_str(&format!(
            "UPDATE audit_chain SET prev_hash = '\\x{}', hash = '\\x{}' WHERE seq = {seq};",
            hex::encode(prev),
            hex::encode(h)
        ));
        prev = h;
    }
    sql
}

fn has_not_canonical(r: &VerifyReport, seq: u64) -> bool {
    r.findings.iter().any(|f| {
        f.kind == DamageKind::Malformed
            && f.seq == Some(seq)
            && f.detail.contains("stored record is not canonical JSON")
    })
}

/// RELIABILITY finding 1: a record whose stored bytes are no longer JSON (a byte that
/// is not UTF-8) is exported as a `record_hex` line instead of making the export
/// refuse, and the offline verifier names it like the database verification does.
#[tokio::test]
async fn a_record_no_longer_json_is_exported_in_hex_and_named_offline() {
    let mut log = build().await;
    log.tamper(&format!(
        "UPDATE audit_events SET record = overlay(record placing '\\xff'::bytea from 60 for 1) WHERE id = {EVENT_17}"
    ))
    .await;
    let stored = stored_bytes(&log.owner, 17).await;
    assert!(std::str::from_utf8(&stored).is_err());
    let opts = verify_options(log.keys.clone());

    let from_db = verify_database(&mut log.owner, &opts).await.unwrap();
    assert_first(&from_db, DamageKind::Modified, 17, "database");
    assert!(has_not_canonical(&from_db, 17), "{from_db:#?}");

    // What `GET /audit/events` serves: the gateway puts `list_events` through
    // `serde_json::json!` (`to_value`), which used to fail on this record.
    let page = alga_audit::list_events(
        &log.owner,
        &alga_audit::EventQuery {
            after_seq: 16,
            limit: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let items = serde_json::to_value(&page).unwrap();
    assert_eq!(items[0]["record_hex"], hex::encode(&stored));
    assert!(items[0].get("record").is_none());
    assert_eq!(items[1]["record"]["v"], 1);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.jsonl");
    let summary = export_to(&mut log.owner, &path)
        .await
        .expect("the export no longer refuses");
    assert_eq!(summary.records, 40);
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<&str> = text.lines().skip(5).collect();
    assert_eq!(records.len(), 40);
    for (i, line) in records.iter().enumerate() {
        if i + 1 == 17 {
            assert!(
                line.ends_with(&format!(",\"record_hex\":\"{}\"}}", hex::encode(&stored))),
                "{line}"
            );
        } else {
            assert!(line.contains(",\"record\":{\"action\":"), "{line}");
        }
    }
    let from_export = verify_export(&path, &opts).unwrap();
    assert_first(&from_export, DamageKind::Modified, 17, "export");
    assert!(has_not_canonical(&from_export, 17), "{from_export:#?}");
    assert!(
        from_export.findings.iter().all(|f| f.seq == Some(17)),
        "one damage, reported at 17 only: {from_export:#?}"
    );
    assert_eq!(from_export.records, 40);
    assert_eq!(from_export.checkpoints_matched, 4);
    log.db.drop_db().await;
}

/// A forger who stores non-JSON bytes at 17 and recomputes every later hash: the
/// export still carries the bytes (in hex), the chain over them links, the checkpoint
/// at 20 names the rewrite, and the record is named as not canonical JSON.
#[tokio::test]
async fn a_rechained_record_that_is_not_json_links_and_is_named() {
    let mut log = build().await;
    let odd: &[u8] = b"\x00\xffnot json at all\n";
    let mut sql = format!(
        "UPDATE audit_events SET record = '\\x{}' WHERE id = {EVENT_17};",
        hex::encode(odd)
    );
    sql.push_str(&rechain_from_17(&log, odd).await);
    log.tamper(&sql).await;
    let opts = verify_options(log.keys.clone());
    let from_db = verify_database(&mut log.owner, &opts).await.unwrap();
    assert!(has_not_canonical(&from_db, 17), "{from_db:#?}");
    assert!(
        !from_db
            .findings
            .iter()
            .any(|f| f.kind == DamageKind::Modified),
        "every hash links: {from_db:#?}"
    );
    assert_first(&from_db, DamageKind::Rewritten, 11, "database");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.jsonl");
    export_to(&mut log.owner, &path).await.unwrap();
    let from_export = verify_export(&path, &opts).unwrap();
    assert_first(&from_export, DamageKind::Rewritten, 11, "export");
    assert!(has_not_canonical(&from_export, 17), "{from_export:#?}");
    let found: Vec<_> = from_export
        .findings
        .iter()
        .map(|f| (f.kind, f.seq))
        .collect();
    assert_eq!(
        found,
        vec![
            (DamageKind::Rewritten, Some(11)),
            (DamageKind::Malformed, Some(17))
        ],
        "{from_export:#?}"
    );
    log.db.drop_db().await;
}
