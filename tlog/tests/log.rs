//! The reader's side against an in-memory log built with the writer's own edge:
//! roots, tiles, every inclusion proof of a 10,000-record log, consistency between
//! random sizes, forks, rollbacks, tampered bundles, and the witness protocol.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]

use std::cell::Cell;
use std::collections::HashMap;

use alga_tlog::tiles::{
    check_consistency, check_inclusion, consistency_proof, decode_entries, encode_entries,
    inclusion_proof, leaf_hashes,
};
use alga_tlog::{
    CosignatureVerifier, Hash, InclusionProof, LogKeys, Node, ProvenRecord, TenantAudit, TileFetch,
    TilePath, TileSet, TlogError, TreeEdge, Witness, WitnessKey, checkpoint_body, entry_of,
    leaf_hash,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::{Rng, SeedableRng};
use signed_note::{Note, Signer, StandardSigner};

const ORIGIN: &str = "example.test/audit-log";

/// A log in memory: its records, their leaf hashes, the stored nodes, and a signer.
struct MemLog {
    records: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
    nodes: HashMap<(u8, u64), Hash>,
    edge: TreeEdge,
    signer: StandardSigner,
    skey: String,
    vkey: String,
    /// Tiles fetched, to show what the reads cost.
    fetched: Cell<u64>,
}

impl MemLog {
    fn new() -> MemLog {
        let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, ORIGIN);
        MemLog::with_key(&skey, vkey)
    }

    fn with_key(skey: &str, vkey: String) -> MemLog {
        MemLog {
            records: Vec::new(),
            leaves: Vec::new(),
            nodes: HashMap::new(),
            edge: TreeEdge::new(),
            signer: StandardSigner::new(skey).expect("skey"),
            skey: skey.to_owned(),
            vkey,
            fetched: Cell::new(0),
        }
    }

    fn append(&mut self, record: Vec<u8>) {
        let leaf = leaf_hash(&entry_of(&record));
        let mut nodes: Vec<Node> = Vec::new();
        self.edge.push(leaf, &mut nodes);
        for n in nodes {
            assert!(
                self.nodes.insert((n.level, n.index), n.hash).is_none(),
                "node stored twice"
            );
        }
        self.leaves.push(leaf);
        self.records.push(record);
    }

    fn record(i: u64, tenant: &str) -> Vec<u8> {
        format!(r#"{{"action":"code.redeem","seq_hint":{i},"tenant_id":"{tenant}","v":1}}"#)
            .into_bytes()
    }

    fn keys(&self) -> LogKeys {
        LogKeys::parse(&self.vkey).expect("vkey")
    }

    fn checkpoint(&self) -> String {
        self.sign(&checkpoint_body(
            ORIGIN,
            self.edge.size(),
            &self.edge.root(),
        ))
    }

    fn sign(&self, body: &str) -> String {
        let mut note = Note::new(body.as_bytes(), &[]).expect("note");
        note.add_sigs(&[&self.signer as &dyn Signer]).expect("sign");
        String::from_utf8(note.to_bytes()).expect("utf-8")
    }

    fn hash_at(&self, level: u8, index: u64) -> Option<Hash> {
        if level == 0 {
            self.leaves.get(usize::try_from(index).ok()?).copied()
        } else {
            self.nodes.get(&(level, index)).copied()
        }
    }
}

impl TileFetch for MemLog {
    fn fetch(&self, path: &TilePath) -> Result<Vec<u8>, TlogError> {
        self.fetched.set(self.fetched.get() + 1);
        let missing = || TlogError::Tile {
            path: path.to_string(),
            detail: "not in the log".into(),
        };
        let first = path.index * 256;
        match path.level {
            None => {
                let entries: Vec<[u8; 32]> = (first..first + path.width as u64)
                    .map(|i| {
                        self.records
                            .get(i as usize)
                            .map(|r| entry_of(r))
                            .ok_or_else(missing)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(encode_entries(&entries))
            }
            Some(level) => (first..first + path.width as u64)
                .map(|i| self.hash_at(level, i).map(|h| h.0).ok_or_else(missing))
                .collect::<Result<Vec<_>, _>>()
                .map(|hs| hs.concat()),
        }
    }
}

/// RFC 6962 §2.1 straight from the text, recursively, as the reference.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => tlog_tiles::EMPTY_HASH,
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            tlog_tiles::node_hash(mth(&leaves[..k]), mth(&leaves[k..]))
        }
    }
}

fn log_of(n: u64) -> MemLog {
    let mut log = MemLog::new();
    for i in 0..n {
        log.append(MemLog::record(i, "11111111-2222-4333-8444-555555555555"));
    }
    log
}

#[test]
fn the_edge_root_is_rfc_6962s_at_every_size_and_nodes_are_subtree_hashes() {
    let mut log = MemLog::new();
    for i in 0..2100u64 {
        assert_eq!(log.edge.root(), mth(&log.leaves), "size {i}");
        log.append(MemLog::record(i, "t"));
    }
    for ((level, index), hash) in &log.nodes {
        let width = 1usize << (8 * u32::from(*level));
        let first = *index as usize * width;
        assert_eq!(
            *hash,
            mth(&log.leaves[first..first + width]),
            "node {level}/{index}"
        );
    }
    // Rebuilt from its partial tiles, the edge goes on as if never stopped.
    let size = log.edge.size();
    let tiles = alga_tlog::merkle::partial_tiles(size)
        .into_iter()
        .map(|(level, first, count)| {
            (first..first + count as u64)
                .map(|i| log.hash_at(level, i).expect("stored"))
                .collect()
        })
        .collect();
    let mut rebuilt = TreeEdge::from_partial_tiles(size, tiles).expect("edge");
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..700u64 {
        let leaf = leaf_hash(&entry_of(&MemLog::record(size + i, "t")));
        rebuilt.push(leaf, &mut a);
        log.edge.push(leaf, &mut b);
        assert_eq!(rebuilt.root(), log.edge.root());
    }
    assert_eq!(a, b);
    assert!(TreeEdge::from_partial_tiles(size, Vec::new()).is_err());
}

#[test]
fn every_record_of_a_10000_record_log_has_an_inclusion_proof_that_verifies() {
    let log = log_of(10_000);
    let keys = log.keys();
    let note = log.checkpoint();
    let cp = keys.verify(&note).expect("checkpoint verifies");
    assert_eq!(cp.size, 10_000);
    let set = TileSet::new();
    for index in 0..10_000u64 {
        let proof = set
            .run(&log, |set| inclusion_proof(set, cp.size, cp.root, index))
            .expect("proof");
        check_inclusion(&proof, cp.size, cp.root, index, log.leaves[index as usize])
            .expect("verifies");
        if index % 997 == 0 {
            // Another leaf's hash, or another index, is refused.
            let other = log.leaves[(index as usize + 1) % 10_000];
            assert!(check_inclusion(&proof, cp.size, cp.root, index, other).is_err());
            assert!(
                check_inclusion(
                    &proof,
                    cp.size,
                    cp.root,
                    (index + 1) % 10_000,
                    log.leaves[index as usize]
                )
                .is_err()
            );
        }
    }
    // Tiles were fetched once each and reused: the whole tree is 40 level-0 tiles.
    assert!(
        log.fetched.get() <= 45,
        "fetched {} tiles",
        log.fetched.get()
    );
    // Beyond the tree.
    assert!(matches!(
        inclusion_proof(&set, cp.size, cp.root, 10_000),
        Err(TlogError::BeyondTree(_))
    ));
}

#[test]
fn consistency_proofs_between_50_random_size_pairs_verify_and_forks_do_not() {
    let log = log_of(3000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..50 {
        let new = rng.gen_range(2..=3000u64);
        let old = rng.gen_range(1..=new);
        let root = mth(&log.leaves[..new as usize]);
        let old_root = mth(&log.leaves[..old as usize]);
        let set = TileSet::new();
        let proof = set
            .run(&log, |set| {
                if old == new {
                    Ok(Vec::new())
                } else {
                    consistency_proof(set, new, root, old)
                }
            })
            .expect("proof");
        check_consistency(&proof, new, root, old, old_root).expect("consistent");
        // A fork: the same prefix but one leaf changed before `old`.
        let mut forked = log.leaves[..new as usize].to_vec();
        let at = rng.gen_range(0..old as usize);
        forked[at] = leaf_hash(&entry_of(b"a record that was never written"));
        assert!(matches!(
            check_consistency(&proof, new, mth(&forked), old, old_root),
            Err(TlogError::Fork { .. })
        ));
        assert!(check_consistency(&proof, new, root, old, mth(&forked[..old as usize])).is_err());
    }
    // Equal sizes need equal roots; a smaller "new" tree is a rollback.
    let r = mth(&log.leaves[..10]);
    check_consistency(&[], 10, r, 10, r).expect("same tree");
    assert!(check_consistency(&[], 10, mth(&log.leaves[..9]), 10, r).is_err());
    assert!(matches!(
        check_consistency(&[], 9, r, 10, r),
        Err(TlogError::Rollback { .. })
    ));
}

#[test]
fn tiles_are_authenticated_against_the_checkpoint() {
    let mut log = log_of(600);
    let cp = log.keys().verify(&log.checkpoint()).expect("cp");
    // One leaf hash in a stored tile changed: every read through that tile fails.
    log.leaves[300] = leaf_hash(&entry_of(b"tampered"));
    let set = TileSet::new();
    let err = set
        .run(&log, |set| leaf_hashes(set, cp.size, cp.root, 256, 100))
        .expect_err("tampered tile accepted");
    assert!(matches!(err, TlogError::Proof(_)), "{err}");
    // Untampered tiles elsewhere still read (they are authenticated through the
    // level-1 tile, which is intact).
    let set = TileSet::new();
    let ok = set
        .run(&log, |set| leaf_hashes(set, cp.size, cp.root, 0, 256))
        .expect("first tile");
    assert_eq!(ok.len(), 256);
}

#[test]
fn entry_bundles_round_trip_and_refuse_bad_lengths() {
    let entries = [[1u8; 32], [2u8; 32]];
    let bytes = encode_entries(&entries);
    assert_eq!(bytes.len(), 68);
    assert_eq!(&bytes[..2], &[0, 32]);
    assert_eq!(decode_entries(&bytes).expect("decodes"), entries);
    for bad in [&bytes[..67], &bytes[..1], &[0u8, 31][..]] {
        assert!(decode_entries(bad).is_err());
    }
}

fn proof_bundle(log: &MemLog, seq: u64) -> InclusionProof {
    let note = log.checkpoint();
    let cp = log.keys().verify(&note).expect("cp");
    let set = TileSet::new();
    let proof = set
        .run(log, |set| inclusion_proof(set, cp.size, cp.root, seq - 1))
        .expect("proof");
    InclusionProof {
        index: seq - 1,
        size: cp.size,
        entry: hex::encode(entry_of(&log.records[seq as usize - 1])),
        proof: proof.iter().map(|h| hex::encode(h.0)).collect(),
        checkpoint: note,
    }
}

#[test]
fn a_proof_bundle_with_any_byte_changed_is_refused() {
    let log = log_of(1000);
    let bundle = proof_bundle(&log, 777);
    let keys = log.keys();
    bundle
        .verify_record(&keys, &log.records[776])
        .expect("verifies");
    let json = serde_json::to_string(&bundle).expect("json");
    let mut refused = 0;
    for i in 0..json.len() {
        let mut bytes = json.clone().into_bytes();
        bytes[i] = if bytes[i] == b'0' {
            b'1'
        } else if bytes[i].is_ascii_alphanumeric() {
            b'0'
        } else {
            b'~'
        };
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        let outcome = serde_json::from_str::<InclusionProof>(&text)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.verify_record(&keys, &log.records[776])
                    .map_err(|e| e.to_string())
            });
        assert!(outcome.is_err(), "byte {i} changed and still accepted");
        refused += 1;
    }
    assert!(refused > 500, "{refused}");
    // Another log's key is refused.
    assert!(matches!(
        bundle.verify(&log_of(1).keys()),
        Err(TlogError::Signature(_))
    ));
}

#[test]
fn a_tenant_bundle_verifies_and_names_the_first_bad_record() {
    let tenant = "11111111-2222-4333-8444-555555555555";
    let mut log = MemLog::new();
    for i in 0..500u64 {
        let t = if i % 3 == 0 {
            tenant
        } else {
            "99999999-2222-4333-8444-555555555555"
        };
        log.append(MemLog::record(i, t));
    }
    let note = log.checkpoint();
    let cp = log.keys().verify(&note).expect("cp");
    let set = TileSet::new();
    let records: Vec<ProvenRecord> = (0..500u64)
        .filter(|i| i % 3 == 0)
        .map(|i| ProvenRecord {
            seq: i + 1,
            record: String::from_utf8(log.records[i as usize].clone()).expect("utf-8"),
            proof: set
                .run(&log, |set| inclusion_proof(set, cp.size, cp.root, i))
                .expect("proof")
                .iter()
                .map(|h| hex::encode(h.0))
                .collect(),
        })
        .collect();
    let bundle = TenantAudit {
        tenant_id: tenant.into(),
        checkpoint: note,
        records,
        next_after: None,
    };
    let report = bundle.verify(&log.keys()).expect("verifies");
    assert_eq!(report.records, 167);

    let mut edited = bundle.clone();
    edited.records[40].record = edited.records[40]
        .record
        .replace("code.redeem", "code.reissue");
    assert!(matches!(
        edited.verify(&log.keys()),
        Err(TlogError::Record { seq: 121, .. })
    ));
    let mut other = bundle.clone();
    other.tenant_id = "99999999-2222-4333-8444-555555555555".into();
    assert!(matches!(
        other.verify(&log.keys()),
        Err(TlogError::Record { seq: 1, .. })
    ));
    let mut swapped = bundle.clone();
    swapped.records.swap(3, 4);
    assert!(swapped.verify(&log.keys()).is_err());
}

/// A page of `tenant`'s records among the first `size` of `log`, after seq `after`, at
/// most `limit` of them, proven in the checkpoint of that size.
fn tenant_page(log: &MemLog, size: u64, tenant: &str, after: u64, limit: usize) -> TenantAudit {
    let mut prefix = MemLog::with_key(&log.skey, log.vkey.clone());
    for r in &log.records[..size as usize] {
        prefix.append(r.clone());
    }
    let note = prefix.checkpoint();
    let cp = prefix.keys().verify(&note).expect("cp");
    let set = TileSet::new();
    let mut records: Vec<ProvenRecord> = (after..size)
        .filter(|i| String::from_utf8_lossy(&prefix.records[*i as usize]).contains(tenant))
        .take(limit + 1)
        .map(|i| ProvenRecord {
            seq: i + 1,
            record: String::from_utf8(prefix.records[i as usize].clone()).expect("utf-8"),
            proof: set
                .run(&prefix, |set| inclusion_proof(set, cp.size, cp.root, i))
                .expect("proof")
                .iter()
                .map(|h| hex::encode(h.0))
                .collect(),
        })
        .collect();
    let more = records.len() > limit;
    records.truncate(limit);
    TenantAudit {
        tenant_id: tenant.into(),
        checkpoint: note,
        next_after: more.then(|| records.last().map(|r| r.seq)).flatten(),
        records,
    }
}

#[test]
fn a_tenants_pages_verify_together_and_only_in_order() {
    let tenant = "11111111-2222-4333-8444-555555555555";
    let other = "99999999-2222-4333-8444-555555555555";
    let mut log = MemLog::new();
    for i in 0..600u64 {
        log.append(MemLog::record(i, if i % 2 == 0 { tenant } else { other }));
    }
    // Three pages of 100 records, the log growing between them (400, 500, 600).
    let p1 = tenant_page(&log, 400, tenant, 0, 100);
    let p2 = tenant_page(&log, 500, tenant, p1.next_after.expect("more"), 100);
    let p3 = tenant_page(&log, 600, tenant, p2.next_after.expect("more"), 100);
    assert_eq!(p3.next_after, None);
    let pages = vec![p1.clone(), p2.clone(), p3.clone()];
    let reports = alga_tlog::verify_pages(&pages, &log.keys()).expect("verifies");
    let proven: Vec<(u64, u64)> = reports
        .iter()
        .map(|r| (r.records, r.checkpoint.size))
        .collect();
    assert_eq!(proven, [(100, 400), (100, 500), (100, 600)]);
    // One page alone is a file of one page.
    assert_eq!(
        alga_tlog::verify_pages(&pages[..1], &log.keys())
            .expect("one")
            .len(),
        1
    );

    // Out of order, or the same page twice: refused, naming the record.
    let swapped = vec![p2.clone(), p1.clone()];
    assert!(matches!(
        alga_tlog::verify_pages(&swapped, &log.keys()),
        Err(TlogError::Record { seq: 1, .. })
    ));
    let twice = vec![p1.clone(), p1.clone()];
    assert!(alga_tlog::verify_pages(&twice, &log.keys()).is_err());
    // A later page proven in an older checkpoint: the log rolled back.
    let old_p2 = tenant_page(&log, 350, tenant, p1.next_after.expect("more"), 100);
    assert!(matches!(
        alga_tlog::verify_pages(&[p1.clone(), old_p2], &log.keys()),
        Err(TlogError::Rollback {
            old_size: 400,
            new_size: 350
        })
    ));
    // The same size, another tree (same key): the log forked.
    let mut forked = MemLog::with_key(&log.skey, log.vkey.clone());
    for i in 0..500u64 {
        forked.append(MemLog::record(
            i + 7,
            if i % 2 == 0 { tenant } else { other },
        ));
    }
    let fork_p2 = tenant_page(&forked, 400, tenant, p1.next_after.expect("more"), 100);
    assert!(matches!(
        alga_tlog::verify_pages(&[p1.clone(), fork_p2], &log.keys()),
        Err(TlogError::Fork {
            old_size: 400,
            new_size: 400
        })
    ));
    // Another tenant's page among them.
    let theirs = tenant_page(&log, 600, other, 400, 100);
    assert!(matches!(
        alga_tlog::verify_pages(&[p1.clone(), theirs], &log.keys()),
        Err(TlogError::Malformed { .. })
    ));
    // A bad page is named; no page at all proves nothing.
    let mut unsigned = p2.clone();
    unsigned.checkpoint = p1.checkpoint.replace("\n400\n", "\n401\n");
    let e = alga_tlog::verify_pages(&[p1.clone(), unsigned], &log.keys()).expect_err("page 2");
    assert!(e.to_string().contains("page 2"), "{e}");
    let mut edited = p3.clone();
    edited.records[5].record = edited.records[5]
        .record
        .replace("code.redeem", "code.reissue");
    assert!(matches!(
        alga_tlog::verify_pages(&[p1, p2, edited], &log.keys()),
        Err(TlogError::Record { seq: 411, .. })
    ));
    assert!(matches!(
        alga_tlog::verify_pages(&[], &log.keys()),
        Err(TlogError::Malformed { .. })
    ));
}

fn witness(log: &MemLog, dir: &tempfile::TempDir) -> Witness {
    Witness::new(
        WitnessKey::generate("witness.example/w1").expect("key"),
        log.keys(),
        dir.path().join("state.json"),
    )
}

#[test]
fn the_witness_accepts_growth_cosigns_and_refuses_forks_and_rollbacks() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = log_of(300);
    let w = witness(&log, &dir);
    let first = w
        .observe(&log.checkpoint(), &log, 1_700_000_000)
        .expect("first");
    assert_eq!((first.previous_size, first.checkpoint.size), (0, 300));
    for i in 300..1000 {
        log.append(MemLog::record(i, "t"));
    }
    let second = w
        .observe(&log.checkpoint(), &log, 1_700_000_100)
        .expect("second");
    assert_eq!((second.previous_size, second.checkpoint.size), (300, 1000));

    // The cosignature verifies with the witness's published key, added to the note.
    let verifier = CosignatureVerifier::from_vkey(&w.key().vkey()).expect("vkey");
    let cosigned = format!("{}{}", second.checkpoint.note, second.cosignature);
    let cp = log.keys().verify(&cosigned).expect("still the log's");
    assert_eq!(
        cp.cosigned_by(std::slice::from_ref(&verifier)),
        vec!["witness.example/w1".to_owned()]
    );
    assert_eq!(verifier.timestamp_of(&cosigned), Some(1_700_000_100));
    let forged = cosigned.replace("\n1000\n", "\n1001\n");
    assert!(log.keys().verify(&forged).is_err());

    // A fork: the same log key signs a second tree from the same prefix with one
    // record changed. Refused, and the state keeps the accepted checkpoint.
    let mut fork = MemLog::with_key(&skey_of(&log), log.vkey.clone());
    for (i, r) in log.records.iter().enumerate() {
        fork.append(if i == 500 {
            b"rewritten".to_vec()
        } else {
            r.clone()
        });
    }
    fork.append(b"one more".to_vec());
    let err = w
        .observe(&fork.checkpoint(), &fork, 1_700_000_200)
        .expect_err("fork accepted");
    assert!(
        matches!(
            err,
            TlogError::Fork {
                old_size: 1000,
                new_size: 1001
            }
        ),
        "{err}"
    );
    assert_eq!(w.state().expect("state").expect("some").size, 1000);

    // A rollback to an older checkpoint is refused too.
    let mut old = MemLog::with_key(&skey_of(&log), log.vkey.clone());
    for r in &log.records[..900] {
        old.append(r.clone());
    }
    assert!(matches!(
        w.observe(&old.checkpoint(), &old, 1_700_000_300),
        Err(TlogError::Rollback {
            old_size: 1000,
            new_size: 900
        })
    ));
    // A checkpoint signed by another key is refused before anything else.
    assert!(matches!(
        w.observe(&log_of(1001).checkpoint(), &log, 1),
        Err(TlogError::Signature(_))
    ));
}

/// The signing key of a log, to make a fork or a rollback signed by the same key.
fn skey_of(log: &MemLog) -> String {
    log.skey.clone()
}

#[test]
fn add_checkpoint_follows_the_tlog_witness_protocol() {
    let dir = tempfile::tempdir().expect("tmp");
    let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, ORIGIN);
    let mut log = MemLog::with_key(&skey, vkey);
    for i in 0..100 {
        log.append(MemLog::record(i, "t"));
    }
    let w = witness(&log, &dir);
    let body = |old: u64, proof: &[Hash], note: &str| {
        let lines: String = proof
            .iter()
            .map(|h| format!("{}\n", STANDARD.encode(h.0)))
            .collect();
        format!("old {old}\n{lines}\n{note}")
    };
    let first = log.checkpoint();
    // A first call with the wrong old size learns the cosigned size: 409 with 0.
    let e = w
        .add_checkpoint(&body(5, &[], &first), 1)
        .expect_err("conflict");
    assert_eq!(
        (
            e.witness_status(),
            matches!(e, TlogError::Conflict { cosigned: 0 })
        ),
        (409, true)
    );
    w.add_checkpoint(&body(0, &[], &first), 10)
        .expect("first accepted");

    for i in 100..350 {
        log.append(MemLog::record(i, "t"));
    }
    let second = log.checkpoint();
    let cp = log.keys().verify(&second).expect("cp");
    let set = TileSet::new();
    let proof = set
        .run(&log, |set| consistency_proof(set, cp.size, cp.root, 100))
        .expect("proof");
    // Bad proof: 422. Unknown origin: 404. Bad signature: 403. Garbage: 400.
    let mut bad = proof.clone();
    bad[0].0[0] ^= 1;
    assert_eq!(
        w.add_checkpoint(&body(100, &bad, &second), 20)
            .expect_err("bad proof")
            .witness_status(),
        422
    );
    let other = second.replacen(ORIGIN, "other.example/log", 1);
    assert_eq!(
        w.add_checkpoint(&body(100, &proof, &other), 20)
            .expect_err("origin")
            .witness_status(),
        404
    );
    let resigned = second.replace("\n350\n", "\n351\n");
    assert_eq!(
        w.add_checkpoint(&body(100, &proof, &resigned), 20)
            .expect_err("sig")
            .witness_status(),
        403
    );
    for garbage in [
        "",
        "old\n",
        "old 01\n\nx",
        "new 1\n\n",
        "old 1\nnot base64\n\nx",
    ] {
        assert_eq!(
            w.add_checkpoint(garbage, 20)
                .expect_err(garbage)
                .witness_status(),
            400,
            "{garbage:?}"
        );
    }
    assert_eq!(
        w.add_checkpoint(&body(400, &[], &second), 20)
            .expect_err("old > new")
            .witness_status(),
        400
    );
    // The right proof is cosigned, and the state moves.
    let accepted = w
        .add_checkpoint(&body(100, &proof, &second), 30)
        .expect("accepted");
    assert!(accepted.cosignature.starts_with("— witness.example/w1 "));
    assert_eq!(w.state().expect("state").expect("some").size, 350);
    // Replaying the older request now conflicts.
    assert_eq!(
        w.add_checkpoint(&body(0, &[], &first), 40)
            .expect_err("replay")
            .witness_status(),
        409
    );
}

#[test]
fn witness_keys_round_trip_and_refuse_damage() {
    let key = WitnessKey::generate("witness.example/w2").expect("key");
    let skey = key.to_skey();
    let back = WitnessKey::from_skey(&skey).expect("parses");
    assert_eq!(back.vkey(), key.vkey());
    assert!(
        !format!("{key:?}").contains(&skey[20..]),
        "Debug shows the seed"
    );
    assert!(WitnessKey::from_skey(&skey.replace("w2", "w3")).is_err());
    assert!(CosignatureVerifier::from_vkey(&key.vkey().replace("w2", "w3")).is_err());
    assert!(WitnessKey::generate("bad name").is_err());
}

#[test]
fn log_keys_refuse_mixed_origins_and_garbage() {
    let (_, a) = signed_note::generate_key(&mut rand::rngs::OsRng, "a.example/log");
    let (_, b) = signed_note::generate_key(&mut rand::rngs::OsRng, "b.example/log");
    assert!(LogKeys::parse(&format!("{a}\n{b}\n")).is_err());
    assert!(LogKeys::parse("").is_err());
    assert!(LogKeys::parse("not a key").is_err());
    assert_eq!(
        LogKeys::parse(&format!("# comment\n{a}\n"))
            .expect("one")
            .origin(),
        "a.example/log"
    );
}

mod no_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn checks_never_panic_on_arbitrary_input(
            size in any::<u64>(), old in any::<u64>(), index in any::<u64>(),
            proof in proptest::collection::vec(any::<[u8; 32]>(), 0..70),
            path in "\\PC{0,70}", bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let proof: Vec<Hash> = proof.into_iter().map(Hash).collect();
            let h = Hash([7; 32]);
            let _ = check_inclusion(&proof, size, h, index, h);
            let _ = check_consistency(&proof, size, h, old, h);
            let _ = TilePath::parse(&path);
            let _ = decode_entries(&bytes);
            let set = TileSet::new();
            let _ = inclusion_proof(&set, size, h, index);
            let _ = consistency_proof(&set, size, h, old);
            let _ = LogKeys::parse(&path);
            let _ = String::from_utf8(bytes).map(|t| serde_json::from_str::<InclusionProof>(&t));
        }
    }
}
