//! The canonical encoding of a record and the chain hash (format `v1`; see `FORMAT.md`).
//!
//! # Record bytes
//!
//! A record is encoded once, when it is built, as **RFC 8785 (JCS) canonical JSON**,
//! restricted so that the encoding is trivially unambiguous:
//!
//! - one object with exactly these keys, in this (byte) order, every key always
//!   present (`null` when absent): `action`, `actor` (`{"identity", "role"}`),
//!   `details`, `outcome` (`{"status":"success"}` or
//!   `{"error_code":…,"status":"failure"}`), `request_id`, `source`, `subjects`,
//!   `tenant_id`, `time`, `v` (the integer `1`);
//! - object keys sorted by byte value at every level; keys are ASCII only, so byte
//!   order is RFC 8785's UTF-16 order;
//! - no insignificant whitespace; strings escape only `"`, `\` and controls (`\b \f \n
//!   \r \t` short, other controls `\u00xx` lowercase); everything else is raw UTF-8;
//! - numbers are integers of magnitude below 2^53 only (no floats, no exponents);
//! - `time` is `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, always six fractional digits);
//!   `tenant_id` a lowercase hyphenated UUID; `source` an IP address in Rust's
//!   `Display` form (RFC 5952 for IPv6).
//!
//! These bytes are stored as they are (`bytea`) and never re-encoded: a verifier hashes
//! what is stored. [`Record::from_canonical`](crate::Record::from_canonical) refuses
//! bytes that do not re-encode to themselves.
//!
//! # Chain hash
//!
//! ```text
//! hash(seq) = SHA-256( "alga-license/audit/v1" 0x00 ‖ prev_hash ‖ u64be(seq) ‖ record bytes )
//! prev_hash(1) = 32 zero bytes;  prev_hash(n) = hash(n-1)
//! ```
//!
//! The sequence number is hashed, so a record moved to another position no longer
//! verifies; the prefix separates this hash from every other SHA-256 use; the record
//! bytes come last and everything before them has a fixed length, so no two inputs
//! share an encoding.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use uuid::Uuid;

use crate::record::{Action, Actor, Outcome, Record};

/// The record format version (`"v"` in every record).
pub const VERSION: u32 = 1;
/// Domain-separation prefix of the chain hash.
pub const HASH_DOMAIN: &[u8] = b"alga-license/audit/v1\0";
/// `prev_hash` of the first record.
pub const GENESIS_PREV_HASH: [u8; 32] = [0; 32];

/// The chain hash of the record at `seq` whose predecessor's hash is `prev_hash`.
pub fn chain_hash(prev_hash: &[u8; 32], seq: u64, record_bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update(record_bytes);
    h.finalize().into()
}

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Encodes a (validated) record. Infallible: every value was checked when built.
pub(crate) fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    out.extend_from_slice(b"{\"action\":");
    write_str(&mut out, r.action.as_str());
    out.extend_from_slice(b",\"actor\":{\"identity\":");
    write_opt_str(&mut out, r.actor.identity());
    out.extend_from_slice(b",\"role\":");
    write_str(&mut out, r.actor.role());
    out.extend_from_slice(b"},\"details\":");
    write_object(&mut out, &r.details);
    out.extend_from_slice(b",\"outcome\":");
    match &r.outcome {
        Outcome::Success => out.extend_from_slice(b"{\"status\":\"success\"}"),
        Outcome::Failure { error_code } => {
            out.extend_from_slice(b"{\"error_code\":");
            write_str(&mut out, error_code);
            out.extend_from_slice(b",\"status\":\"failure\"}");
        }
    }
    out.extend_from_slice(b",\"request_id\":");
    write_opt_str(&mut out, r.request_id.as_deref());
    out.extend_from_slice(b",\"source\":");
    write_opt_str(&mut out, r.source.map(|a| a.to_string()).as_deref());
    out.extend_from_slice(b",\"subjects\":{");
    for (i, (k, v)) in r.subjects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, k);
        out.push(b':');
        write_str(&mut out, v);
    }
    out.extend_from_slice(b"},\"tenant_id\":");
    write_opt_str(
        &mut out,
        r.tenant_id.map(|t| t.hyphenated().to_string()).as_deref(),
    );
    out.extend_from_slice(b",\"time\":");
    write_str(&mut out, &format_time(r.time));
    out.extend_from_slice(b",\"v\":");
    out.extend_from_slice(VERSION.to_string().as_bytes());
    out.push(b'}');
    out
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of a UTC time.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // Invariant: the format has no component that can fail for a UTC date in years
    // 0..=9999; other years print with a sign and fail the decoder's check instead.
    t.format(TIME_FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses [`format_time`]'s output.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    time::PrimitiveDateTime::parse(s, TIME_FORMAT).map(|t| t.assume_utc())
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Only integers get here (checked when the record was built); their `Display`
        // is the minimal decimal form.
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    // Sort explicitly: serde_json's map order depends on a crate feature
    // (`preserve_order`) that any other crate in the build may switch on.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_value(out, v);
    }
    out.push(b'}');
}

/// The decoder's view of the bytes: every key required, nothing unknown.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wire {
    pub(crate) v: u32,
    action: Action,
    actor: WireActor,
    details: Map<String, Value>,
    outcome: Outcome,
    request_id: Option<String>,
    source: Option<IpAddr>,
    subjects: std::collections::BTreeMap<String, String>,
    tenant_id: Option<Uuid>,
    #[serde(with = "time_format")]
    time: OffsetDateTime,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireActor {
    identity: Option<String>,
    role: String,
}

impl TryFrom<Wire> for Record {
    type Error = crate::AuditError;
    fn try_from(w: Wire) -> Result<Record, crate::AuditError> {
        Ok(Record {
            time: w.time,
            actor: Actor::new(&w.actor.role, w.actor.identity.as_deref())?,
            action: w.action,
            tenant_id: w.tenant_id,
            subjects: w.subjects,
            outcome: w.outcome,
            request_id: w.request_id,
            source: w.source,
            details: w.details,
        })
    }
}

/// Serde adapter for the canonical time format.
pub mod time_format {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_time(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail by panicking
mod tests {
    use super::*;
    use crate::record::{Action, Actor, NewRecord};
    use serde_json::json;
    use time::macros::datetime;

    /// Test vector 1 of `FORMAT.md`: the smallest record.
    fn vector_1() -> NewRecord {
        NewRecord::builder(
            datetime!(2025-01-01 00:00:00 UTC),
            Actor::anonymous(),
            Action::new("code.redeem").unwrap(),
        )
        .build()
        .unwrap()
    }

    /// Test vector 2 of `FORMAT.md`: every field, escapes and nested details.
    fn vector_2() -> NewRecord {
        NewRecord::builder(
            datetime!(2025-06-30 12:34:56.789012 UTC),
            Actor::client("store", "spiffe://alga.test/service/nm-store").unwrap(),
            Action::new("tenant.register").unwrap(),
        )
        .tenant(Uuid::parse_str("0190f2a4-7b5c-7d3e-8f00-123456789abc").unwrap())
        .subject("code_id", "K7M2Q9XD4T")
        .subject("appliance_id", "5f1c2d3e-0000-4000-8000-000000000001")
        .failure("code_invalid")
        .request_id("req-42")
        .source("2001:db8::1".parse().unwrap())
        .detail("edition", "pro")
        .detail("company", "Zoë \"Quote\" & Co\n")
        .detail("seats", 100)
        .detail("nested", json!({"b": [1, -2, true, null], "a": {}}))
        .build()
        .unwrap()
    }

    #[test]
    fn vector_1_bytes_and_hash() {
        let r = vector_1();
        let text = std::str::from_utf8(r.canonical_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"action":"code.redeem","actor":{"identity":null,"role":"anonymous"},"details":{},"outcome":{"status":"success"},"request_id":null,"source":null,"subjects":{},"tenant_id":null,"time":"2025-01-01T00:00:00.000000Z","v":1}"#
        );
        let h = chain_hash(&GENESIS_PREV_HASH, 1, r.canonical_bytes());
        assert_eq!(
            hex::encode(h),
            "591deee4a90dc82e1bd562a60c88e68e942d9a01900c6d5562a7a9019524db87"
        );
    }

    #[test]
    fn vector_2_bytes_and_hash() {
        let r = vector_2();
        let text = std::str::from_utf8(r.canonical_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"action":"tenant.register","actor":{"identity":"spiffe://alga.test/service/nm-store","role":"store"},"details":{"company":"Zoë \"Quote\" & Co\n","edition":"pro","nested":{"a":{},"b":[1,-2,true,null]},"seats":100},"outcome":{"error_code":"code_invalid","status":"failure"},"request_id":"req-42","source":"2001:db8::1","subjects":{"appliance_id":"5f1c2d3e-0000-4000-8000-000000000001","code_id":"K7M2Q9XD4T"},"tenant_id":"0190f2a4-7b5c-7d3e-8f00-123456789abc","time":"2025-06-30T12:34:56.789012Z","v":1}"#
        );
        let prev = chain_hash(&GENESIS_PREV_HASH, 1, vector_1().canonical_bytes());
        let h = chain_hash(&prev, 2, r.canonical_bytes());
        assert_eq!(
            hex::encode(h),
            "35d453f0a55694764a3acf81cfe5a8da8a772764b3a0af6bc59958500826af08"
        );
    }

    /// The tree vectors of `FORMAT.md`: entries, leaf hashes and the root of the tree
    /// of the two records (computed independently with Python's `hashlib`).
    #[test]
    fn tree_vectors() {
        use alga_tlog::{TreeEdge, entry_of, leaf_hash};
        let (r1, r2) = (vector_1(), vector_2());
        let (e1, e2) = (
            entry_of(r1.canonical_bytes()),
            entry_of(r2.canonical_bytes()),
        );
        assert_eq!(
            hex::encode(e1),
            "9a0f56b291e46e155ab9924b43ed75c907db987a9fbcc15dfb6fc43d99d358c0"
        );
        assert_eq!(
            hex::encode(leaf_hash(&e1).0),
            "a582c5fc9bc1cf2cbd5d98e044228c5762f792fcfa1b86a1d2c6beb7fc1f02d2"
        );
        assert_eq!(
            hex::encode(e2),
            "0fab3bfa7e086da43dd657e45d9355c70e78301064a3c98d33b4e76e7a9a409d"
        );
        assert_eq!(
            hex::encode(leaf_hash(&e2).0),
            "af516cef236c13378b2b0d73720c91e328d8a8f5abec169cf6e1623f99358e89"
        );
        let mut edge = TreeEdge::new();
        let mut nodes = Vec::new();
        edge.push(leaf_hash(&e1), &mut nodes);
        assert_eq!(edge.root(), leaf_hash(&e1), "a tree of one leaf");
        edge.push(leaf_hash(&e2), &mut nodes);
        assert_eq!(
            hex::encode(edge.root().0),
            "952c073aab5e115b044fc2ac5c3d670161a5914e144f1e181a56efa341ef8fb7"
        );
        assert_eq!(
            alga_tlog::checkpoint_body("example.test/audit-log", 2, &edge.root()),
            "example.test/audit-log\n2\nlSwHOqteEVsET8KsXD1nAWGlkU4UTx4YGlbvo0Hvj7c=\n"
        );
    }

    #[test]
    fn control_characters_escape_per_rfc_8785() {
        let mut out = Vec::new();
        write_str(&mut out, "\u{0}\u{1f}\u{8}\u{c}\t\r\n\"\\\u{7f}é");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "\"\\u0000\\u001f\\b\\f\\t\\r\\n\\\"\\\\\u{7f}é\""
        );
    }

    #[test]
    fn hash_covers_every_input() {
        let b = b"{}";
        let base = chain_hash(&GENESIS_PREV_HASH, 1, b);
        assert_ne!(base, chain_hash(&GENESIS_PREV_HASH, 2, b));
        assert_ne!(base, chain_hash(&[1; 32], 1, b));
        assert_ne!(base, chain_hash(&GENESIS_PREV_HASH, 1, b"{ }"));
    }
}
