//! Property tests of the chain, without a database: any sequence of records verifies,
//! and any single-byte change in what is hashed (record bytes, hash, prev_hash) is
//! detected at the record it was made in.

use alga_audit::verify::{ChainVerifier, Entry};
use alga_audit::{Action, Actor, GENESIS_PREV_HASH, NewRecord, chain_hash};
use proptest::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Rec {
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    bytes: Vec<u8>,
}

fn arb_record() -> impl Strategy<Value = NewRecord> {
    (
        0i64..4_000_000_000,
        prop::sample::select(vec![
            "code.mint",
            "code.redeem",
            "tenant.register",
            "mail.sent",
        ]),
        proptest::option::of(any::<u128>()),
        "[a-z0-9 ._-]{0,40}",
        prop::collection::btree_map("[a-z_]{1,12}", "[ -~]{0,30}", 0..4),
        any::<bool>(),
        -(1i64 << 40)..(1i64 << 40),
    )
        .prop_filter_map(
            "the guard refuses secret-like names",
            |(t, action, tenant, note, extra, failed, n)| {
                let mut b = NewRecord::builder(
                    OffsetDateTime::from_unix_timestamp(t).unwrap(),
                    Actor::client("store", "spiffe://alga.test/service/nm-store").unwrap(),
                    Action::new(action).unwrap(),
                )
                .detail("note", note)
                .detail("n", n);
                if let Some(t) = tenant {
                    b = b.tenant(Uuid::from_u128(t));
                }
                if failed {
                    b = b.failure("code_invalid");
                }
                for (k, v) in extra {
                    b = b.detail(&format!("x_{k}"), v);
                }
                b.build().ok()
            },
        )
}

fn chain(records: &[NewRecord]) -> Vec<Rec> {
    let mut prev = GENESIS_PREV_HASH;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let seq = i as u64 + 1;
            let hash = chain_hash(&prev, seq, r.canonical_bytes());
            let rec = Rec {
                seq,
                prev,
                hash,
                bytes: r.canonical_bytes().to_vec(),
            };
            prev = hash;
            rec
        })
        .collect()
}

fn verify(recs: &[Rec]) -> alga_audit::VerifyReport {
    let mut v = ChainVerifier::new();
    for r in recs {
        v.push(Entry {
            seq: r.seq,
            prev_hash: r.prev,
            hash: r.hash,
            record: Some(&r.bytes),
            self_ok: None,
        });
    }
    v.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_sequences_always_verify(records in prop::collection::vec(arb_record(), 1..40)) {
        let recs = chain(&records);
        let report = verify(&recs);
        prop_assert!(report.intact(), "{report:#?}");
        prop_assert_eq!(report.records, records.len() as u64);
        // And each record decodes back to what was built.
        for (r, built) in recs.iter().zip(&records) {
            prop_assert_eq!(&alga_audit::Record::from_canonical(&r.bytes).unwrap(), built.record());
        }
    }

    #[test]
    fn any_single_byte_change_is_detected_where_it_was_made(
        records in prop::collection::vec(arb_record(), 1..30),
        which in any::<prop::sample::Index>(),
        field in 0u8..3,
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut recs = chain(&records);
        let k = which.index(recs.len());
        let target = &mut recs[k];
        match field {
            0 => { let i = at.index(target.bytes.len()); target.bytes[i] ^= xor; }
            1 => { let i = at.index(32); target.hash[i] ^= xor; }
            _ => { let i = at.index(32); target.prev[i] ^= xor; }
        }
        let report = verify(&recs);
        let first = report.first_damage();
        prop_assert!(first.is_some(), "undetected change in field {} of record {}", field, k + 1);
        prop_assert_eq!(first.and_then(|f| f.seq), Some(k as u64 + 1), "{:#?}", report);
    }
}
