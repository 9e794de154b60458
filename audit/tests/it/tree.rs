//! The audit log as a transparency log against a real Postgres: the sequencer builds
//! the tree and has its head signed; every record gets an inclusion proof that
//! verifies with the reader's crate alone; tiles, tenant bundles, publishing to a
//! directory, a witness following two checkpoints, and a record changed in the
//! database getting no proof.

use std::time::Duration;

use alga_audit::tree;
use alga_tlog::tiles::check_consistency;
use alga_tlog::{DirFetch, Hash, TilePath, TlogError, Witness, WitnessKey};
use tokio_postgres::Client;

use crate::support::{
    InsecureTestSigner, RunningSequencer, TestDb, append_n, fast_config, wait_all_chained,
};

/// Waits until a tree checkpoint of exactly `size` records is stored.
pub(crate) async fn wait_log_checkpoint(client: &Client, size: u64) -> alga_audit::LogCheckpoint {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(cp) = tree::latest_checkpoint(client).await.unwrap()
            && cp.size == size
        {
            return cp;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tree checkpoint of size {size} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn record_bytes(client: &Client) -> Vec<Vec<u8>> {
    client
        .query(
            "SELECT e.record FROM audit_chain c JOIN audit_events e ON e.id = c.event_id ORDER BY c.seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn the_tree_proves_every_record_and_a_witness_follows_it() {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("audit-1");
    let keys = signer.log_keys();
    let signer2 = signer.clone();
    let seq = RunningSequencer::start(db.pool(4), signer, fast_config(1));
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 700).await;
    wait_all_chained(&rt).await;
    let cp = wait_log_checkpoint(&rt, 700).await;
    let verified = keys
        .verify(&cp.note)
        .expect("the checkpoint verifies with the log key");
    assert_eq!((verified.size, verified.root.0), (700, cp.root));

    // Every record's inclusion proof verifies against its stored bytes.
    let records = record_bytes(&rt).await;
    for (i, record) in records.iter().enumerate() {
        let proof = tree::inclusion_proof(&rt, i as u64 + 1).await.unwrap();
        proof
            .verify_record(&keys, record)
            .unwrap_or_else(|e| panic!("record {}: {e}", i + 1));
    }
    // Beyond the tree: a clear refusal, never a proof.
    assert!(matches!(
        tree::inclusion_proof(&rt, 701).await,
        Err(alga_audit::AuditError::NoCheckpoint(_))
    ));
    assert!(matches!(
        tree::read_tile(&rt, &TilePath::hashes(0, 2, 256), 700).await,
        Err(alga_audit::AuditError::Log(TlogError::BeyondTree(_)))
    ));
    assert_eq!(
        tree::read_tile(&rt, &TilePath::hashes(0, 2, 188), 700)
            .await
            .unwrap()
            .len(),
        188 * 32
    );
    assert_eq!(
        tree::read_tile(&rt, &TilePath::entries(1, 256), 700)
            .await
            .unwrap()
            .len(),
        256 * 34
    );
    assert_eq!(
        tree::read_tile(&rt, &TilePath::hashes(1, 0, 2), 700)
            .await
            .unwrap()
            .len(),
        64
    );

    // A tenant's records, each proven, in pages.
    // sample_record(i) names tenant i % 7.
    let tenant = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000);
    let first = tree::tenant_audit(&rt, tenant, 0, 40).await.unwrap();
    assert_eq!(first.records.len(), 40);
    first.verify(&keys).expect("page 1 verifies");
    let rest = tree::tenant_audit(&rt, tenant, first.next_after.expect("more"), 1000)
        .await
        .unwrap();
    rest.verify(&keys).expect("page 2 verifies");
    assert_eq!(
        first.records.len() + rest.records.len(),
        100,
        "every 7th record of 700"
    );
    assert_eq!(rest.next_after, None);

    // Published as static files, read by a witness.
    let dir = tempfile::tempdir().unwrap();
    let published = tree::publish(&rt, dir.path(), |_, _| {}).await.unwrap();
    assert_eq!((published.size, published.kept), (700, 0));
    let state = tempfile::tempdir().unwrap();
    let witness = Witness::new(
        WitnessKey::generate("witness.test/w").unwrap(),
        keys.clone(),
        state.path().join("state.json"),
    );
    let fetch = DirFetch {
        root: dir.path().to_path_buf(),
    };
    let note = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    let first_seen = witness
        .observe(&note, &fetch, 1_800_000_000)
        .expect("first checkpoint accepted");
    assert_eq!(first_seen.checkpoint.size, 700);

    // A new leader rebuilds the tree's edge from the database and goes on.
    seq.stop().await;
    let seq = RunningSequencer::start(db.pool(4), signer2, fast_config(1));
    append_n(&mut rt, 700, 300).await;
    wait_all_chained(&rt).await;
    let cp2 = wait_log_checkpoint(&rt, 1000).await;
    seq.stop().await;
    let proof = tree::consistency_proof(&rt, 700, &cp2).await.unwrap();
    check_consistency(&proof, 1000, Hash(cp2.root), 700, Hash(cp.root)).expect("consistent");
    for s in [1u64, 256, 700, 701, 1000] {
        let p = tree::inclusion_proof(&rt, s).await.unwrap();
        p.verify(&keys)
            .unwrap_or_else(|e| panic!("record {s}: {e}"));
    }
    let again = tree::publish(&rt, dir.path(), |_, _| {}).await.unwrap();
    assert_eq!(
        again.kept, 4,
        "the two full level-0 tiles and entry bundles stay as written"
    );
    let note = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    let second = witness
        .observe(&note, &fetch, 1_800_000_100)
        .expect("second checkpoint accepted");
    assert_eq!((second.previous_size, second.checkpoint.size), (700, 1000));
    db.drop_db().await;
}

#[tokio::test]
async fn a_record_changed_in_the_database_gets_no_proof() {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("audit-1");
    let keys = signer.log_keys();
    let seq = RunningSequencer::start(db.pool(4), signer, fast_config(1));
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 300).await;
    wait_all_chained(&rt).await;
    wait_log_checkpoint(&rt, 300).await;
    seq.stop().await;
    db.owner()
        .await
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             UPDATE audit_events SET record = convert_to(replace(convert_from(record, 'UTF8'), 'code', 'cade'), 'UTF8') \
             WHERE id = (SELECT event_id FROM audit_chain WHERE seq = 100); COMMIT;",
        )
        .await
        .unwrap();
    // The tile holding record 100 no longer hashes to the signed root: no proof.
    let err = tree::inclusion_proof(&rt, 100)
        .await
        .expect_err("a proof for a changed record");
    assert!(
        matches!(err, alga_audit::AuditError::Log(TlogError::Proof(_))),
        "{err}"
    );
    // A record whose proof does not read that tile still verifies.
    tree::inclusion_proof(&rt, 280)
        .await
        .unwrap()
        .verify(&keys)
        .unwrap();
    db.drop_db().await;
}
