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

/// The published log checked by `scripts/tlog_verify.py`, a verifier written in
/// Python from RFC 6962, RFC 8032 and the C2SP texts alone: the note's Ed25519
/// signature, every hash tile recomputed from the entry bundles, the root, and
/// inclusion proofs. Then one byte changed in a tile, in the checkpoint, and in a
/// proof: each is refused.
async fn independent_check(client: &Client, dir: &std::path::Path, vkey: &str) {
    let work = tempfile::tempdir().unwrap();
    let vkey_file = work.path().join("vkey");
    std::fs::write(&vkey_file, format!("{vkey}\n")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/tlog_verify.py");
    let run = |dir: &std::path::Path, proofs: &[std::path::PathBuf]| {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(script)
            .arg("--vkey")
            .arg(&vkey_file)
            .arg("--dir")
            .arg(dir);
        for p in proofs {
            cmd.arg("--proof").arg(p);
        }
        let out = cmd.output().expect("python3 runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let mut proofs = Vec::new();
    for seq in [1u64, 256, 257, 513, 700] {
        let path = work.path().join(format!("proof-{seq}.json"));
        let bundle = tree::inclusion_proof(client, seq).await.unwrap();
        std::fs::write(&path, serde_json::to_vec(&bundle).unwrap()).unwrap();
        proofs.push(path);
    }
    let (code, out) = run(dir, &proofs);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("root recomputed: OK"), "{out}");
    assert_eq!(out.matches("proof: record").count(), 5, "{out}");

    // Damaged copies: one byte of a full hash tile; one character of the root; one of
    // a proof's hashes.
    let copy = |name: &str| {
        let to = work.path().join(name);
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(dir)
            .arg(&to)
            .status()
            .unwrap();
        assert!(ok.success());
        to
    };
    let tiles = copy("tile-changed");
    let mut bytes = std::fs::read(tiles.join("tile/0/001")).unwrap();
    bytes[100] ^= 1;
    std::fs::write(tiles.join("tile/0/001"), bytes).unwrap();
    let (code, out) = run(&tiles, &[]);
    assert_eq!(code, Some(1), "a changed tile accepted: {out}");

    let signed = copy("checkpoint-changed");
    let note = std::fs::read_to_string(signed.join("checkpoint")).unwrap();
    let body_end = note.find("\n\n").unwrap();
    let mut chars: Vec<char> = note.chars().collect();
    let at = note[..body_end]
        .rfind(|c: char| c.is_ascii_alphanumeric())
        .unwrap();
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    std::fs::write(
        signed.join("checkpoint"),
        chars.into_iter().collect::<String>(),
    )
    .unwrap();
    let (code, out) = run(&signed, &[]);
    assert_eq!(code, Some(1), "a changed checkpoint accepted: {out}");
    assert!(out.contains("does not verify"), "{out}");

    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&proofs[2]).unwrap()).unwrap();
    let h = bundle["proof"][0].as_str().unwrap().to_owned();
    let flipped = match h.split_at(1) {
        ("0", rest) => format!("1{rest}"),
        (_, rest) => format!("0{rest}"),
    };
    bundle["proof"][0] = serde_json::Value::String(flipped);
    let bad = work.path().join("proof-bad.json");
    std::fs::write(&bad, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let (code, out) = run(dir, &[bad]);
    assert_eq!(code, Some(1), "a changed proof accepted: {out}");
    assert!(out.contains("not proven"), "{out}");
}

#[tokio::test]
async fn the_tree_proves_every_record_and_a_witness_follows_it() {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("audit-1");
    let keys = signer.log_keys();
    let keys_text = signer.log_vkey.clone();
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
    independent_check(&rt, dir.path(), &keys_text).await;

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
