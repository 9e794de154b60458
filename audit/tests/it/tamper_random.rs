//! R5 (RELIABILITY.md): random tamper edits on a sealed audit log, each detected with
//! the edited record's sequence named as the first damage. One log of 40 records and 4
//! signed checkpoints; each trial edits one thing (a byte of a record, of a hash or of
//! a prev_hash, a filter column, a checkpoint signature), verifies, and restores the
//! edit. `ALGA_SOAK=<n>` multiplies the count.

use std::collections::BTreeMap;
use std::time::Instant;

use alga_audit::{verify_database, verify_export};
use time::OffsetDateTime;

use crate::support::{export_to, sealed_log, verify_options};

/// A small deterministic generator (xorshift64*): the seed is printed, so a failing
/// trial can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs `sql` with the append-only triggers (and foreign keys) out of the way, as an
/// attacker with the table owner's rights would.
/// `Err` when a CHECK constraint refused the edit (e.g. a non-zero genesis prev_hash).
async fn try_as_attacker(c: &tokio_postgres::Client, sql: &str) -> Result<(), String> {
    match c
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; {sql}; COMMIT;"
        ))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) => {
            c.batch_execute("ROLLBACK").await.unwrap();
            Err(e.to_string())
        }
        Err(e) => panic!("tamper {sql}: {e:?}"),
    }
}

async fn as_attacker(c: &tokio_postgres::Client, sql: &str) {
    try_as_attacker(c, sql)
        .await
        .unwrap_or_else(|e| panic!("tamper {sql}: {e}"));
}

#[tokio::test]
async fn r5_random_tamper_edits_are_all_detected_with_the_first_bad_sequence_named() {
    let trials = 1000
        * std::env::var("ALGA_SOAK")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .clamp(1, 20);
    let seed = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let (db, keys, mut owner) = sealed_log().await;
    let opts = verify_options(keys);
    let started = Instant::now();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut detected = 0usize;
    let dir = tempfile::tempdir().unwrap();
    let (mut exports_checked, mut export_refused, mut schema_refused) = (0usize, 0usize, 0usize);
    let mut exports_hex = 0usize;

    for trial in 0..trials {
        let edit = rng.below(6);
        let mut seq = 1 + rng.below(40) as i64;
        let event = format!("(SELECT event_id FROM audit_chain WHERE seq = {seq})");
        let mask = 1 + rng.below(255);
        let (name, tamper, restore) = match edit {
            0 => {
                let len: i32 = owner
                    .query_one(
                        &format!(
                            "SELECT octet_length(record) FROM audit_events WHERE id = {event}"
                        ),
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                let off = rng.below(u64::try_from(len).unwrap());
                let sql = format!(
                    "UPDATE audit_events SET record = set_byte(record, {off}, get_byte(record, {off}) # {mask}) WHERE id = {event}"
                );
                ("record byte", sql.clone(), sql)
            }
            1 | 2 => {
                let col = if edit == 1 { "hash" } else { "prev_hash" };
                let off = rng.below(32);
                let sql = format!(
                    "UPDATE audit_chain SET {col} = set_byte({col}, {off}, get_byte({col}, {off}) # {mask}) WHERE seq = {seq}"
                );
                (col, sql.clone(), sql)
            }
            3 => (
                "action column",
                format!("UPDATE audit_events SET action = action || '.x' WHERE id = {event}"),
                format!("UPDATE audit_events SET action = left(action, -2) WHERE id = {event}"),
            ),
            4 => {
                let tenant: String = owner
                    .query_one(
                        &format!("SELECT tenant_id::text FROM audit_events WHERE id = {event}"),
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (
                    "tenant column",
                    format!(
                        "UPDATE audit_events SET tenant_id = gen_random_uuid() WHERE id = {event}"
                    ),
                    format!(
                        "UPDATE audit_events SET tenant_id = '{tenant}'::uuid WHERE id = {event}"
                    ),
                )
            }
            _ => {
                // A checkpoint's signature: the checkpoint's sequence is named.
                seq = 10 * (1 + rng.below(4) as i64);
                let sql = format!(
                    "UPDATE audit_checkpoints SET signature = translate(signature, 'ABCDEFGHabcdefgh', 'BCDEFGHAbcdefgha') WHERE seq = {seq}"
                );
                let undo = format!(
                    "UPDATE audit_checkpoints SET signature = translate(signature, 'BCDEFGHAbcdefgha', 'ABCDEFGHabcdefgh') WHERE seq = {seq}"
                );
                ("checkpoint signature", sql, undo)
            }
        };
        if try_as_attacker(&owner, &tamper).await.is_err() {
            // Not a detection: the edit never happened. Counted apart.
            schema_refused += 1;
            *kinds
                .entry(format!("{name} → refused by a CHECK"))
                .or_default() += 1;
            continue;
        }
        let r = verify_database(&mut owner, &opts).await.unwrap();
        let first = r.first_damage().unwrap_or_else(|| {
            panic!("trial {trial} (seed {seed}): {name} at {seq} not detected: {r:#?}")
        });
        assert_eq!(
            first.seq,
            Some(u64::try_from(seq).unwrap()),
            "trial {trial} (seed {seed}): {name} at {seq}: wrong first finding {first:?}"
        );
        // Every 10th trial also through an export file, except the filter-column edits:
        // an export carries the canonical bytes, not the column copies, so there is
        // nothing to detect in it (the database verification compares them).
        if trial % 10 == 0 && !name.ends_with("column") {
            let path = dir.path().join("export.jsonl");
            let exported = export_to(&mut owner, &path).await;
            if let Err(e) = exported {
                // A refused export is a failure (RELIABILITY.md finding 1, fixed: a
                // record whose stored bytes are no longer JSON is exported as a
                // `record_hex` line). Counted, not detected; asserted 0 at the end.
                eprintln!("trial {trial} (seed {seed}): {name} at {seq}: export refused: {e}");
                export_refused += 1;
                as_attacker(&owner, &restore).await;
                continue;
            }
            exports_checked += 1;
            let seq = u64::try_from(seq).unwrap();
            let hex_line = std::fs::read_to_string(&path)
                .unwrap()
                .contains(",\"record_hex\":\"");
            let r = verify_export(&path, &opts).unwrap();
            let first = r.first_damage().unwrap_or_else(|| {
                panic!("trial {trial} (seed {seed}): {name} at {seq} not detected in the export")
            });
            assert_eq!(first.seq, Some(seq), "export: {first:?}");
            if hex_line {
                exports_hex += 1;
                assert!(
                    r.findings
                        .iter()
                        .any(|f| f.kind == alga_audit::DamageKind::Malformed
                            && f.seq == Some(seq)
                            && f.detail.contains("stored record is not canonical JSON")),
                    "trial {trial} (seed {seed}): record_hex at {seq} not named: {r:#?}"
                );
            }
        }
        detected += 1;
        *kinds
            .entry(format!("{name} → {:?}", first.kind))
            .or_default() += 1;
        as_attacker(&owner, &restore).await;
        if trial % 100 == 99 {
            let r = verify_database(&mut owner, &opts).await.unwrap();
            assert!(r.intact(), "trial {trial}: restore failed: {r:#?}");
        }
    }
    println!(
        "R5: {detected}/{} random tamper edits that reached the database detected with the \
         first bad sequence named (seed {seed}) in {:?}; {schema_refused} of {trials} refused by \
         the schema (not counted as detected); exports verified {exports_checked} (of which \
         with a record_hex line named malformed: {exports_hex}), exports refused \
         {export_refused}: {kinds:#?}",
        trials - schema_refused,
        started.elapsed()
    );
    assert_eq!(export_refused, 0, "exports refused (seed {seed})");
    assert_eq!(
        detected,
        trials - schema_refused,
        "every applied edit detected"
    );
    // The schema refuses only the genesis edit (a non-zero prev_hash at seq 1): most
    // edits must reach the database, or this test proves little.
    assert!(
        schema_refused * 10 < trials,
        "{schema_refused} of {trials} edits refused by the schema (seed {seed})"
    );
    db.drop_db().await;
}
