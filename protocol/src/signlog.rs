//! The issuer's signing log: one hash-chained JSON line per signing operation.
//!
//! The issuer appends a record for every code it mints or re-derives, every license,
//! every credential, every audit checkpoint and every transparency-log checkpoint it
//! signs, *before* it returns the result. The format lives here, beside the other wire
//! types, so that the audit tool can read and verify the log without depending on the
//! issuer.
//!
//! # Format
//!
//! Files `signlog-<first seq, 20 digits>.jsonl`, each a run of lines, one record per
//! line:
//!
//! ```text
//! {"seq":1,"time":"…Z","op":"license","ids":{"tenant_id":"…","jti":"…"},"kid":"alga-license-v1","prev_hash":"000…","hash":"9f2…"}
//! ```
//!
//! - `seq` counts from [`FIRST_SEQ`] without gaps across files; the first record of a
//!   file carries the previous file's last `hash` as its `prev_hash`, so rotation does
//!   not break the chain. The very first record's `prev_hash` is [`GENESIS_HASH`].
//! - `hash` = hex SHA-256 of [`DOMAIN`] ‖ `prev_hash` (its 64 lower-case hex ASCII
//!   characters) ‖ the **canonical encoding** of the record without `hash`.
//! - Canonical encoding: `serde_json`'s compact output of the fields in the fixed
//!   order of [`SignlogRecord`] (`seq`, `time`, `op`, `ids`, `kid`, `prev_hash`),
//!   `ids` fields in the fixed order of [`SignIds`] with absent ones omitted, `time`
//!   in RFC 3339 UTC (`Z`). There are no floats and no maps, so the encoding is a
//!   function of the values. A line must be exactly the canonical encoding of the
//!   whole record (the same, with `hash` last): any other spelling is damage.
//!
//! # What is never in it
//!
//! No code, token, PIN or key: the record types have no field that could hold one.
//! Identifiers only (tenant, appliance, `code_id`, `jti`, serial, audit sequence or
//! tree size) and public facts (edition, expiry, the SHA-256 of an appliance's public
//! key, a head or root hash).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

use crate::code::CodeId;

/// Domain separation prefix of every record hash.
pub const DOMAIN: &[u8] = b"alga-license/signlog/v1\0";

/// The `prev_hash` of the first record of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `seq` of the first record of a log.
pub const FIRST_SEQ: u64 = 1;

/// File name prefix and suffix: `signlog-<first seq as 20 digits>.jsonl`.
pub const FILE_PREFIX: &str = "signlog-";
/// See [`FILE_PREFIX`].
pub const FILE_SUFFIX: &str = ".jsonl";

/// The file name holding records from `first_seq` on (zero-padded so names sort).
pub fn file_name(first_seq: u64) -> String {
    format!("{FILE_PREFIX}{first_seq:020}{FILE_SUFFIX}")
}

/// The first seq of a log file named by [`file_name`], if `name` is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Which signing operation a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignOp {
    /// A new install code was minted (HMAC with the code key).
    CodeMint,
    /// The code of a stored binding was derived again (for the mail).
    CodeDerive,
    /// A license JWT was signed.
    License,
    /// An appliance credential (X.509 certificate) was signed.
    Credential,
    /// An audit checkpoint was signed.
    Checkpoint,
    /// A checkpoint of the audit log's Merkle tree (the transparency log) was signed
    /// with the log key: `sequence` is the tree size, `head_hash` the lower-case hex
    /// of its root hash.
    LogCheckpoint,
}

impl SignOp {
    /// The name used in the log (`code_mint`, `license`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SignOp::CodeMint => "code_mint",
            SignOp::CodeDerive => "code_derive",
            SignOp::License => "license",
            SignOp::Credential => "credential",
            SignOp::Checkpoint => "checkpoint",
            SignOp::LogCheckpoint => "log_checkpoint",
        }
    }
}

impl fmt::Display for SignOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a signing operation was about: identifiers and public facts, for reconciling
/// with the gateway's audit records. Absent fields are omitted from the encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance_id: Option<Uuid>,
    /// Public part of an install code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_id: Option<CodeId>,
    /// The appliance an install code's redeem retires (a rebuild's code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_appliance_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<String>,
    /// License `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<Uuid>,
    /// Certificate serial (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Hex SHA-256 of the appliance's SubjectPublicKeyInfo (DER) a credential binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<String>,
    /// Audit sequence number a checkpoint covers; the tree size of a log checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Audit head hash a checkpoint covers; the root hash (hex) of a log checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    /// Expiry of what was signed (code, license or certificate).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
}

/// A signing operation to be logged: a record before the log gives it `seq` and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignEvent {
    pub time: OffsetDateTime,
    pub op: SignOp,
    pub ids: SignIds,
    /// `kid` of the key that signed (or MACed).
    pub kid: String,
}

/// One line of the signing log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignlogRecord {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub op: SignOp,
    pub ids: SignIds,
    pub kid: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The record without `hash`, borrowed: what the hash covers.
#[derive(Serialize)]
struct RecordBody<'a> {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    op: SignOp,
    ids: &'a SignIds,
    kid: &'a str,
    prev_hash: &'a str,
}

impl SignlogRecord {
    /// Chains `event` after a record whose hash is `prev_hash`, as number `seq`.
    /// The time is normalized to UTC so the encoding is canonical.
    pub fn seal(event: SignEvent, seq: u64, prev_hash: &str) -> Result<SignlogRecord, EncodeError> {
        let mut record = SignlogRecord {
            seq,
            time: event.time.to_offset(UtcOffset::UTC),
            op: event.op,
            ids: event.ids,
            kid: event.kid,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        record.hash = record.compute_hash()?;
        Ok(record)
    }

    /// The canonical encoding of the record without `hash` (module docs).
    pub fn canonical_body(&self) -> Result<String, EncodeError> {
        let body = RecordBody {
            seq: self.seq,
            time: self.time,
            op: self.op,
            ids: &self.ids,
            kid: &self.kid,
            prev_hash: &self.prev_hash,
        };
        serde_json::to_string(&body).map_err(|e| EncodeError(e.to_string()))
    }

    /// `hex(SHA-256(DOMAIN ‖ prev_hash ‖ canonical_body))`.
    pub fn compute_hash(&self) -> Result<String, EncodeError> {
        let body = self.canonical_body()?;
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(self.prev_hash.as_bytes());
        h.update(body.as_bytes());
        Ok(to_hex(&h.finalize()))
    }

    /// The line as written (canonical encoding of the whole record, no newline).
    pub fn to_line(&self) -> Result<String, EncodeError> {
        serde_json::to_string(self).map_err(|e| EncodeError(e.to_string()))
    }
}

/// A record could not be encoded (a time outside RFC 3339's range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode a signing-log record: {0}")]
pub struct EncodeError(String);

/// What is wrong at the first bad line of a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The line is not a record (JSON syntax, a missing or unknown field, a bad value).
    #[error("not a signing-log record: {reason}")]
    Unparseable { reason: String },
    /// The line parses but is not the canonical encoding of its own values (edited).
    #[error("the line is not in canonical form")]
    NotCanonical,
    /// The line's `seq` is not the next number (a record removed, repeated or reordered).
    #[error("sequence number {found} where {expected} was expected")]
    OutOfSequence { expected: u64, found: u64 },
    /// The line's `prev_hash` is not the previous record's `hash` (a record removed or replaced).
    #[error("prev_hash does not match the previous record's hash")]
    PrevHashMismatch,
    /// The line's `hash` is not the hash of its content (the content was edited).
    #[error("hash does not match the record's content")]
    HashMismatch,
}

/// Where a log stops verifying: the `seq` the bad line should have had, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing log damaged at seq {seq}: {damage}")]
pub struct ChainBreak {
    pub seq: u64,
    pub damage: Damage,
}

/// The end of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Records verified.
    pub records: u64,
    /// `seq` of the last record (`FIRST_SEQ - 1` when there are none).
    pub last_seq: u64,
    /// `hash` of the last record ([`GENESIS_HASH`] when there are none).
    pub last_hash: String,
}

/// Verifies records one line at a time (across files, in `seq` order).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    records: u64,
    last_seq: u64,
    last_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new()
    }
}

impl ChainVerifier {
    /// A verifier expecting the first record of a log.
    pub fn new() -> ChainVerifier {
        ChainVerifier::resume(FIRST_SEQ - 1, GENESIS_HASH)
    }

    /// A verifier expecting the record after `(last_seq, last_hash)`, to check a log
    /// whose older files were archived.
    pub fn resume(last_seq: u64, last_hash: &str) -> ChainVerifier {
        ChainVerifier {
            records: 0,
            last_seq,
            last_hash: last_hash.to_owned(),
        }
    }

    /// Checks the next line (a trailing `\n` is allowed) and returns its record.
    pub fn push(&mut self, line: &str) -> Result<SignlogRecord, ChainBreak> {
        let expected = self.last_seq.saturating_add(1);
        let broken = |damage| ChainBreak {
            seq: expected,
            damage,
        };
        let line = line.strip_suffix('\n').unwrap_or(line);
        let record: SignlogRecord = serde_json::from_str(line).map_err(|e| {
            broken(Damage::Unparseable {
                reason: e.to_string(),
            })
        })?;
        if record.seq != expected {
            return Err(broken(Damage::OutOfSequence {
                expected,
                found: record.seq,
            }));
        }
        if record.prev_hash != self.last_hash {
            return Err(broken(Damage::PrevHashMismatch));
        }
        let hash = record.compute_hash().map_err(|e| {
            broken(Damage::Unparseable {
                reason: e.to_string(),
            })
        })?;
        if hash != record.hash {
            return Err(broken(Damage::HashMismatch));
        }
        match record.to_line() {
            Ok(canonical) if canonical == line => {}
            _ => return Err(broken(Damage::NotCanonical)),
        }
        self.records += 1;
        self.last_seq = record.seq;
        self.last_hash.clone_from(&record.hash);
        Ok(record)
    }

    /// The chain so far.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            records: self.records,
            last_seq: self.last_seq,
            last_hash: self.last_hash.clone(),
        }
    }
}

/// Verifies a whole log from its first record; names the first bad one.
pub fn verify_chain<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<ChainHead, ChainBreak> {
    let mut verifier = ChainVerifier::new();
    for line in lines {
        verifier.push(line)?;
    }
    Ok(verifier.head())
}

/// Whether `s` is a hash as this log writes them (64 lower-case hex characters).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;

    fn event(i: u64) -> SignEvent {
        SignEvent {
            time: datetime!(2030-01-02 03:04:05.123456789 UTC) + time::Duration::seconds(i as i64),
            op: if i.is_multiple_of(2) {
                SignOp::License
            } else {
                SignOp::CodeMint
            },
            ids: SignIds {
                tenant_id: Some(Uuid::from_u128(u128::from(i) + 7)),
                code_id: (i % 2 == 1).then(|| CodeId::parse("ABCDE12345").expect("valid id")),
                expires_at: Some(datetime!(2030-02-01 00:00:00 UTC)),
                ..SignIds::default()
            },
            kid: "alga-license-v1".into(),
        }
    }

    fn log(n: u64) -> Vec<String> {
        let mut prev = GENESIS_HASH.to_owned();
        (0..n)
            .map(|i| {
                let r = SignlogRecord::seal(event(i), FIRST_SEQ + i, &prev).expect("seals");
                prev = r.hash.clone();
                r.to_line().expect("encodes")
            })
            .collect()
    }

    #[test]
    fn a_sealed_log_verifies_and_its_head_is_the_last_record() {
        let lines = log(5);
        let head = verify_chain(lines.iter().map(String::as_str)).expect("verifies");
        assert_eq!(head.records, 5);
        assert_eq!(head.last_seq, 5);
        assert!(is_hash(&head.last_hash));
        assert!(lines[4].contains(&head.last_hash));
        assert_eq!(
            verify_chain([]).expect("empty verifies"),
            ChainHead {
                records: 0,
                last_seq: 0,
                last_hash: GENESIS_HASH.into()
            }
        );
    }

    #[test]
    fn the_encoding_is_the_documented_one() {
        let r = SignlogRecord::seal(event(0), 1, GENESIS_HASH).expect("seals");
        let line = r.to_line().expect("encodes");
        assert!(
            line.starts_with(r#"{"seq":1,"time":"2030-01-02T03:04:05.123456789Z","op":"license","ids":{"tenant_id":"#),
            "{line}"
        );
        assert!(line.ends_with(&format!(
            r#","kid":"alga-license-v1","prev_hash":"{GENESIS_HASH}","hash":"{}"}}"#,
            r.hash
        )));
        let mut h = Sha256::new();
        h.update(b"alga-license/signlog/v1\0");
        h.update(GENESIS_HASH.as_bytes());
        h.update(&line.as_bytes()[..line.find(r#","hash":"#).expect("has hash")]);
        h.update(b"}");
        assert_eq!(to_hex(&h.finalize()), r.hash);
    }

    #[test]
    fn damage_is_named_at_its_seq() {
        let lines = log(4);
        let check = |mutated: Vec<String>, seq: u64, damage: fn(&Damage) -> bool| {
            let err =
                verify_chain(mutated.iter().map(String::as_str)).expect_err("damage detected");
            assert_eq!(err.seq, seq, "{err}");
            assert!(damage(&err.damage), "{err}");
        };
        // Edited content (hash left as it was).
        let mut m = lines.clone();
        m[2] = m[2].replace("alga-license-v1", "alga-license-v2");
        check(m, 3, |d| matches!(d, Damage::HashMismatch));
        // Record removed.
        let mut m = lines.clone();
        m.remove(1);
        check(m, 2, |d| {
            matches!(
                d,
                Damage::OutOfSequence {
                    expected: 2,
                    found: 3
                }
            )
        });
        // Two records swapped.
        let mut m = lines.clone();
        m.swap(1, 2);
        check(m, 2, |d| matches!(d, Damage::OutOfSequence { .. }));
        // Garbage.
        let mut m = lines.clone();
        m[0] = "not json".into();
        check(m, 1, |d| matches!(d, Damage::Unparseable { .. }));
        // An unknown field smuggled in.
        let mut m = lines.clone();
        m[3] = m[3].replacen('{', r#"{"code":"x","#, 1);
        check(m, 4, |d| matches!(d, Damage::Unparseable { .. }));
        // Same values, another spelling.
        let mut m = lines.clone();
        m[1] = m[1].replacen(":", ": ", 1);
        check(m, 2, |d| matches!(d, Damage::NotCanonical));
        // A whole chain re-sealed from another start does not continue this one.
        let mut m = lines.clone();
        let forged = SignlogRecord::seal(event(9), 4, GENESIS_HASH).expect("seals");
        m[3] = forged.to_line().expect("encodes");
        check(m, 4, |d| matches!(d, Damage::PrevHashMismatch));
    }

    #[test]
    fn a_verifier_resumes_after_a_known_head() {
        let lines = log(6);
        let head = verify_chain(lines[..3].iter().map(String::as_str)).expect("verifies");
        let mut v = ChainVerifier::resume(head.last_seq, &head.last_hash);
        for l in &lines[3..] {
            v.push(l).expect("continues");
        }
        assert_eq!(v.head().last_seq, 6);
        assert_eq!(v.head().records, 3);
    }

    #[test]
    fn op_names_on_the_wire_are_their_log_names() {
        for op in [
            SignOp::CodeMint,
            SignOp::CodeDerive,
            SignOp::License,
            SignOp::Credential,
            SignOp::Checkpoint,
            SignOp::LogCheckpoint,
        ] {
            let wire = serde_json::to_string(&op).expect("encodes");
            assert_eq!(wire, format!("\"{op}\""));
            assert_eq!(serde_json::from_str::<SignOp>(&wire).expect("decodes"), op);
        }
        assert_eq!(SignOp::LogCheckpoint.as_str(), "log_checkpoint");
    }

    #[test]
    fn file_names_sort_by_first_seq() {
        assert_eq!(file_name(42), "signlog-00000000000000000042.jsonl");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("signlog-42.jsonl"), None);
        assert_eq!(parse_file_name("signlog-0000000000000000004x.jsonl"), None);
        assert!(file_name(9) < file_name(10));
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_detected(n in 1u64..6, line in 0usize..6, pos in 0usize..400, byte in any::<u8>()) {
            let lines = log(n);
            let line = line % lines.len();
            let mut bytes = lines[line].clone().into_bytes();
            let pos = pos % bytes.len();
            prop_assume!(bytes[pos] != byte);
            bytes[pos] = byte;
            let mut m = lines.clone();
            m[line] = String::from_utf8_lossy(&bytes).into_owned();
            let err = verify_chain(m.iter().map(String::as_str));
            prop_assert!(err.is_err());
        }
    }
}
