//! Export files: JSON lines that can be verified offline (format in `FORMAT.md`).
//!
//! ```text
//! {"type":"header","format":"alga-license/audit-export/v1","exported_at":…,"head_seq":…,"filter":{…}}
//! {"type":"checkpoint","sequence":…,"head_hash":…,"signed_at":…,"kid":…,"signature":…}   (all, oldest first)
//! {"type":"record","seq":…,"event_id":…,"prev_hash":…,"hash":…,"chained_at":…,"record":{canonical bytes}}
//! {"type":"record","seq":…,"event_id":…,"prev_hash":…,"hash":…,"chained_at":…,"record_hex":"…"}   (damaged: stored bytes not JSON)
//! ```
//!
//! The `record` value is the stored canonical bytes, verbatim: a verifier hashes the
//! bytes of the line, so an export that was re-formatted (pretty-printed, keys
//! re-ordered) no longer verifies, as it should. Stored bytes that are not a one-line
//! JSON object (a damaged record) are exported as `record_hex` instead, so the export
//! never refuses: the verifier hashes the decoded bytes and names the record
//! ([`DamageKind::Malformed`] "stored record is not canonical JSON", and
//! [`DamageKind::Modified`] if its hash does not match).

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use alga_protocol::issuer_api::SignedCheckpoint;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::canonical::{self, chain_hash};
use crate::error::AuditError;
use crate::record::Action;
use crate::store::{self, EventQuery};
use crate::verify::{
    ChainVerifier, CheckpointSource, DamageKind, Entry, VerifyOptions, VerifyReport,
};

/// The export format name in the header line.
pub const EXPORT_FORMAT: &str = "alga-license/audit-export/v1";

/// Which records to export. Only `since_seq` keeps the export verifiable as a chain
/// (from that point on); the other filters make it a selection whose records are each
/// checked, but whose completeness cannot be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFilter {
    /// Records with a sequence number at or above this (0 or 1: all).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub since_seq: u64,
    /// Records whose own time is at or after this.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ExportFilter {
    /// Whether the export is a selection rather than a chain segment.
    pub fn is_selection(&self) -> bool {
        self.since.is_some() || self.tenant_id.is_some() || self.action.is_some()
    }
}

/// The first line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportHeader {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: String,
    #[serde(with = "time::serde::rfc3339")]
    pub exported_at: OffsetDateTime,
    /// The chain's head when exported (0: empty).
    pub head_seq: u64,
    pub filter: ExportFilter,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub records: u64,
    pub checkpoints: u64,
    pub head_seq: u64,
}

#[derive(Serialize)]
struct CheckpointLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    cp: &'a SignedCheckpoint,
}

/// Writes an export of the database's log to `out`, from one consistent snapshot.
pub async fn export<W: Write>(
    client: &mut tokio_postgres::Client,
    filter: &ExportFilter,
    now: OffsetDateTime,
    out: &mut W,
) -> Result<ExportSummary, AuditError> {
    let tx = store::snapshot(client).await?;
    let head = store::head(&tx).await?;
    let header = ExportHeader {
        kind: "header".into(),
        format: EXPORT_FORMAT.into(),
        exported_at: now,
        head_seq: head.seq,
        filter: filter.clone(),
    };
    let mut summary = ExportSummary {
        head_seq: head.seq,
        ..ExportSummary::default()
    };
    write_json_line(out, &header)?;
    for cp in &store::all_checkpoints(&tx).await? {
        write_json_line(
            out,
            &CheckpointLine {
                kind: "checkpoint",
                cp,
            },
        )?;
        summary.checkpoints += 1;
    }
    let mut q = EventQuery {
        after_seq: filter.since_seq.saturating_sub(1),
        tenant_id: filter.tenant_id,
        action: filter.action.clone(),
        since: filter.since,
        limit: 0,
    };
    loop {
        let page = store::list_events(&tx, &q).await?;
        let Some(last) = page.last() else { break };
        q.after_seq = last.seq;
        for r in &page {
            write_json_line(out, r)?;
            summary.records += 1;
        }
    }
    tx.commit().await?;
    out.flush()?;
    Ok(summary)
}

fn write_json_line<W: Write, T: Serialize>(out: &mut W, value: &T) -> Result<(), AuditError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| AuditError::Corrupt(e.to_string()))?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Reads checkpoints kept elsewhere: an export file (its checkpoint lines) or JSON
/// lines of `SignedCheckpoint`.
pub fn read_checkpoints(path: &Path) -> Result<Vec<SignedCheckpoint>, AuditError> {
    let reader = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let line = trim(&line);
        if line.is_empty() || line.starts_with(RECORD_PREFIX) {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| AuditError::Export {
                line: i as u64 + 1,
                reason: e.to_string(),
            })?;
        let kind = value.get("type").and_then(|t| t.as_str());
        if matches!(kind, Some("header") | Some("record")) {
            continue;
        }
        let cp: SignedCheckpoint =
            serde_json::from_value(value).map_err(|e| AuditError::Export {
                line: i as u64 + 1,
                reason: format!("not a checkpoint: {e}"),
            })?;
        out.push(cp);
    }
    Ok(out)
}

const RECORD_PREFIX: &[u8] = b"{\"type\":\"record\",\"seq\":";
/// Bytes read per step; lines are parsed and hashed in parallel within a block.
const BLOCK: usize = 8 << 20;

/// Verifies an export file offline.
pub fn verify_export(path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let mut file = File::open(path)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);

    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK * 2);
    let mut line_no: u64 = 0;
    let mut verifier: Option<ChainVerifier> = None;
    let mut pending_cps: Vec<SignedCheckpoint> = Vec::new();
    let mut records_started = false;
    let mut eof = false;

    while !eof {
        // `take(..).read_to_end` fills spare capacity without zeroing it first.
        let n = (&mut file).take(BLOCK as u64).read_to_end(&mut buf)?;
        eof = n == 0;
        let cut = if eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(p) => p + 1,
                None => continue,
            }
        };
        let block = &buf[..cut];
        let parsed = parse_block(block, threads);
        for p in parsed {
            line_no += 1;
            match p {
                Parsed::Empty => {}
                Parsed::Record(r) => {
                    let v = match verifier.as_mut() {
                        Some(v) => v,
                        None => {
                            return Err(AuditError::Export {
                                line: line_no,
                                reason: "the first line must be the export header".into(),
                            });
                        }
                    };
                    if !records_started {
                        records_started = true;
                        v.add_checkpoints(&opts.keys, pending_cps.drain(..), CheckpointSource::Log);
                        v.add_checkpoints(
                            &opts.keys,
                            opts.external_checkpoints.iter().cloned(),
                            CheckpointSource::External,
                        );
                    }
                    if let Some(why) = &r.hex_finding {
                        v.report(
                            DamageKind::Malformed,
                            Some(r.seq),
                            format!(
                                "record {}: stored record is not canonical JSON ({} bytes, \
                                 line {line_no} as record_hex: {why})",
                                r.seq,
                                r.record.len()
                            ),
                        );
                    }
                    v.push(Entry {
                        seq: r.seq,
                        prev_hash: r.prev,
                        hash: r.hash,
                        record: Some(&r.record),
                        self_ok: Some(r.self_ok),
                    });
                }
                Parsed::Other(line) => {
                    let value: serde_json::Value = match serde_json::from_slice(line) {
                        Ok(v) => v,
                        Err(e) => {
                            malformed(&mut verifier, line_no, &format!("not JSON: {e}"))?;
                            continue;
                        }
                    };
                    match value.get("type").and_then(|t| t.as_str()) {
                        Some("header") if line_no == 1 => {
                            let h: ExportHeader =
                                serde_json::from_value(value).map_err(|e| AuditError::Export {
                                    line: 1,
                                    reason: format!("bad header: {e}"),
                                })?;
                            if h.format != EXPORT_FORMAT {
                                return Err(AuditError::Export {
                                    line: 1,
                                    reason: format!("unknown export format {:?}", h.format),
                                });
                            }
                            let mut v = if h.filter.is_selection() {
                                ChainVerifier::filtered()
                            } else if h.filter.since_seq > 1 {
                                ChainVerifier::anchored()
                            } else {
                                ChainVerifier::new()
                            };
                            if !h.filter.is_selection() {
                                v.expect_head(h.head_seq);
                            }
                            verifier = Some(v);
                        }
                        Some("checkpoint") if !records_started => {
                            match serde_json::from_value::<SignedCheckpoint>(value) {
                                Ok(cp) => pending_cps.push(cp),
                                Err(e) => malformed(
                                    &mut verifier,
                                    line_no,
                                    &format!("bad checkpoint line: {e}"),
                                )?,
                            }
                        }
                        _ => malformed(
                            &mut verifier,
                            line_no,
                            "unexpected line (not a header first, checkpoints, then records)",
                        )?,
                    }
                }
                Parsed::Bad(reason) => malformed(&mut verifier, line_no, reason)?,
            }
        }
        buf.drain(..cut);
    }
    let mut v = verifier.ok_or(AuditError::Export {
        line: 1,
        reason: "empty file: no export header".into(),
    })?;
    if !records_started {
        v.add_checkpoints(&opts.keys, pending_cps.drain(..), CheckpointSource::Log);
        v.add_checkpoints(
            &opts.keys,
            opts.external_checkpoints.iter().cloned(),
            CheckpointSource::External,
        );
    }
    Ok(v.finish())
}

fn malformed(v: &mut Option<ChainVerifier>, line: u64, reason: &str) -> Result<(), AuditError> {
    match v {
        Some(v) => {
            v.report(
                DamageKind::Malformed,
                None,
                format!("line {line}: {reason}"),
            );
            Ok(())
        }
        None => Err(AuditError::Export {
            line,
            reason: reason.to_owned(),
        }),
    }
}

#[derive(Debug)]
struct RecordLine<'a> {
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    /// The record's bytes: borrowed from a `record` line, decoded from `record_hex`.
    record: Cow<'a, [u8]>,
    self_ok: bool,
    /// For a `record_hex` line (always a finding): why its bytes are not a canonical
    /// record.
    hex_finding: Option<String>,
}

#[derive(Debug)]
enum Parsed<'a> {
    Empty,
    Record(RecordLine<'a>),
    Other(&'a [u8]),
    Bad(&'static str),
}

/// Splits a block of whole lines into up to `threads` parts at line boundaries,
/// parses and hashes each part on its own thread, and returns the lines in order.
fn parse_block(block: &[u8], threads: usize) -> Vec<Parsed<'_>> {
    let mut parts = Vec::with_capacity(threads);
    let mut start = 0;
    for i in 1..=threads {
        if start >= block.len() {
            break;
        }
        let mut end = if i == threads {
            block.len()
        } else {
            (block.len() * i / threads).max(start)
        };
        if end < block.len() {
            end = match memchr::memchr(b'\n', &block[end..]) {
                Some(p) => end + p + 1,
                None => block.len(),
            };
        }
        parts.push(&block[start..end]);
        start = end;
    }
    if parts.len() <= 1 {
        return parse_lines(block);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| s.spawn(move || parse_lines(part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                // A panic while parsing is a bug; report the block as unreadable
                // rather than abort the verification.
                Err(_) => vec![Parsed::Bad("internal error while parsing this block")],
            })
            .collect()
    })
}

fn parse_lines(part: &[u8]) -> Vec<Parsed<'_>> {
    let mut out = Vec::with_capacity(part.len() / 600 + 1);
    let mut rest = part;
    while !rest.is_empty() {
        let (line, tail) = match memchr::memchr(b'\n', rest) {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        out.push(parse_line(trim(line)));
    }
    out
}

fn trim(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [head @ .., b'\r' | b' ' | b'\t'] = l {
        l = head;
    }
    l
}

fn parse_line(line: &[u8]) -> Parsed<'_> {
    if line.is_empty() {
        return Parsed::Empty;
    }
    let fields = match fast_record(line) {
        Some(f) => Some(f),
        None if line.starts_with(b"{\"type\":\"record\"") || contains_record_type(line) => {
            match slow_record(line) {
                Some(f) => Some(f),
                None => return Parsed::Bad("record line not in the export format"),
            }
        }
        None => None,
    };
    match fields {
        Some((seq, prev, hash, record)) => {
            let hex_finding = match &record {
                Cow::Borrowed(_) => None,
                Cow::Owned(bytes) => Some(crate::verify::not_canonical_reason(bytes)),
            };
            Parsed::Record(RecordLine {
                seq,
                prev,
                hash,
                self_ok: chain_hash(&prev, seq, &record) == hash,
                record,
                hex_finding,
            })
        }
        None => Parsed::Other(line),
    }
}

/// A record line's fields: seq, prev_hash, hash and the record's bytes (borrowed from
/// a `record` line, decoded from a `record_hex` one).
type Fields<'a> = (u64, [u8; 32], [u8; 32], Cow<'a, [u8]>);

/// The layout this crate writes, field by field, without a JSON parser.
fn fast_record(line: &[u8]) -> Option<Fields<'_>> {
    let rest = line.strip_prefix(RECORD_PREFIX)?;
    let (seq, rest) = digits(rest)?;
    let rest = rest.strip_prefix(b",\"event_id\":")?;
    let (_, rest) = digits(rest)?;
    let rest = rest.strip_prefix(b",\"prev_hash\":\"")?;
    let (prev, rest) = hex32(rest)?;
    let rest = rest.strip_prefix(b"\",\"hash\":\"")?;
    let (hash, rest) = hex32(rest)?;
    let rest = rest.strip_prefix(b"\",\"chained_at\":\"")?;
    let q = rest.iter().position(|b| *b == b'"')?;
    let rest = rest[q..].strip_prefix(b"\",\"record")?;
    if let Some(rest) = rest.strip_prefix(b"\":") {
        let record = rest.strip_suffix(b"}")?;
        if !record.starts_with(b"{") || !record.ends_with(b"}") {
            return None;
        }
        return Some((seq, prev, hash, Cow::Borrowed(record)));
    }
    let digits = rest.strip_prefix(b"_hex\":\"")?.strip_suffix(b"\"}")?;
    let record = hex::decode(digits).ok()?;
    Some((seq, prev, hash, Cow::Owned(record)))
}

fn contains_record_type(line: &[u8]) -> bool {
    line.windows(15).any(|w| w == b"\"type\":\"record\"")
}

/// Any other JSON layout of a record line (keys in another order, as `algactl`
/// writes them); the record's bytes are still taken verbatim from the line, or
/// decoded from `record_hex`. Exactly one of `record` and `record_hex` must be there.
fn slow_record(line: &[u8]) -> Option<Fields<'_>> {
    /// `Some` for any value present, `null` included (`"record":null` is the 4 bytes
    /// `null`, not an absent record).
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&'de RawValue>::deserialize(d).map(Some)
    }
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        seq: u64,
        prev_hash: &'a str,
        hash: &'a str,
        #[serde(default, borrow, deserialize_with = "present")]
        record: Option<&'a RawValue>,
        #[serde(default, borrow)]
        record_hex: Option<Cow<'a, str>>,
    }
    let l: Line<'_> = serde_json::from_slice(line).ok()?;
    if l.kind != "record" {
        return None;
    }
    let (prev, _) = hex32(l.prev_hash.as_bytes())?;
    let (hash, _) = hex32(l.hash.as_bytes())?;
    let record = match (l.record, l.record_hex) {
        (Some(raw), None) => {
            let raw = raw.get().as_bytes();
            // `raw` borrows from `line`: find it there to return a slice of the line.
            let offset = (raw.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
            Cow::Borrowed(line.get(offset..offset + raw.len())?)
        }
        (None, Some(digits)) => Cow::Owned(hex::decode(digits.as_bytes()).ok()?),
        _ => return None,
    };
    Some((l.seq, prev, hash, record))
}

fn digits(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 {
        return None;
    }
    let v = std::str::from_utf8(&s[..n]).ok()?.parse().ok()?;
    Some((v, &s[n..]))
}

/// 64 hex digits (either case) → 32 bytes, through a table: two lookups per byte, no
/// branch per digit (the verifier decodes two hashes per record line).
fn hex32(s: &[u8]) -> Option<([u8; 32], &[u8])> {
    let h = s.get(..64)?;
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(h.chunks_exact(2)) {
        let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
        bad |= (hi | lo) & 0x80;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad == 0).then(|| (out, &s[64..]))
}

/// Each byte's value as a hex digit, or 0x80 for a byte that is not one.
const HEX: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Formats a canonical time (for tables).
pub fn display_time(t: OffsetDateTime) -> String {
    canonical::format_time(t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail by panicking
mod tests {
    use super::*;
    use crate::canonical::GENESIS_PREV_HASH;
    use crate::checkpoint::AuditKeys;
    use crate::store::{ChainedRecord, EventId};

    #[test]
    fn hex32_decodes_either_case_and_refuses_anything_else() {
        let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let lower = hex::encode(&bytes);
        for text in [lower.clone(), lower.to_uppercase()] {
            let line = format!("{text}\"tail");
            let (got, rest) = hex32(line.as_bytes()).unwrap();
            assert_eq!(got.as_slice(), bytes.as_slice());
            assert_eq!(rest, b"\"tail");
        }
        for i in 0..64 {
            for bad in [b'g', b'G', b'"', b' ', b'/', b':', b'@', b'`', 0x80, 0xff] {
                let mut t = lower.clone().into_bytes();
                t[i] = bad;
                assert!(hex32(&t).is_none(), "position {i}, byte {bad:#x}");
            }
        }
        assert!(hex32(&lower.as_bytes()[..63]).is_none());
    }
    use time::macros::datetime;

    /// Test vector 1 of `FORMAT.md`.
    const VECTOR_1: &[u8] = br#"{"action":"code.redeem","actor":{"identity":null,"role":"anonymous"},"details":{},"outcome":{"status":"success"},"request_id":null,"source":null,"subjects":{},"tenant_id":null,"time":"2025-01-01T00:00:00.000000Z","v":1}"#;

    /// Stored bytes that cannot go into a line verbatim: not UTF-8, not JSON, not an
    /// object, space around it, a line break inside, nothing at all.
    const ODD: &[&[u8]] = &[
        b"\xff\xfe{\"action\":\"code.redeem\"}",
        b"{\"action\":\"code.redeem\",",
        b"[1,2,3]",
        b"null",
        b"{\"v\":1} ",
        b" {\"v\":1}",
        b"{\"v\":\n1}",
        b"{\"v\":\r1}",
        b"",
        b"{\"a\":\"\x00\"}",
    ];

    fn chained(seq: u64, prev: [u8; 32], bytes: &[u8]) -> ChainedRecord {
        ChainedRecord {
            seq,
            event_id: EventId(100 + seq as i64),
            prev_hash: prev,
            hash: chain_hash(&prev, seq, bytes),
            chained_at: datetime!(2025-01-01 00:00:01 UTC),
            canonical: bytes.to_vec(),
        }
    }

    fn parsed(line: &[u8]) -> RecordLine<'_> {
        match parse_line(line) {
            Parsed::Record(r) => r,
            other => panic!("not a record line: {other:?}"),
        }
    }

    #[test]
    fn a_canonical_record_keeps_the_verbatim_line_byte_for_byte() {
        let r = chained(1, GENESIS_PREV_HASH, VECTOR_1);
        let line = r.to_json_line().unwrap();
        assert_eq!(
            line,
            format!(
                "{{\"type\":\"record\",\"seq\":1,\"event_id\":101,\"prev_hash\":\"{}\",\
                 \"hash\":\"591deee4a90dc82e1bd562a60c88e68e942d9a01900c6d5562a7a9019524db87\",\
                 \"chained_at\":\"2025-01-01T00:00:01.000000Z\",\"record\":{}}}",
                "0".repeat(64),
                std::str::from_utf8(VECTOR_1).unwrap()
            )
        );
        assert!(r.is_verbatim());
        let p = parsed(line.as_bytes());
        assert!(matches!(p.record, Cow::Borrowed(_)), "fast path, borrowed");
        assert_eq!((&*p.record, p.self_ok, p.seq), (VECTOR_1, true, 1));
        assert!(p.hex_finding.is_none());
    }

    #[test]
    fn record_hex_lines_round_trip_the_stored_bytes() {
        let prev = [7u8; 32];
        for (i, bytes) in ODD.iter().enumerate() {
            let r = chained(5, prev, bytes);
            assert!(!r.is_verbatim(), "case {i}");
            let line = r.to_json_line().unwrap();
            assert!(
                !line.contains('\n') && !line.contains('\r'),
                "case {i}: {line}"
            );
            assert!(
                line.ends_with(&format!(",\"record_hex\":\"{}\"}}", hex::encode(bytes))),
                "case {i}: {line}"
            );
            assert!(line.starts_with(std::str::from_utf8(RECORD_PREFIX).unwrap()));
            // The fast path (this crate's layout) reads the bytes back.
            let p = parsed(line.as_bytes());
            assert!(
                fast_record(line.as_bytes()).is_some(),
                "case {i}: fast path"
            );
            assert_eq!(
                (&*p.record, p.self_ok, p.seq, p.prev),
                (*bytes, true, 5, prev)
            );
            let why = p.hex_finding.as_deref().unwrap();
            assert!(!why.is_empty(), "case {i}");
            // Any other layout too (algactl writes the API's items with sorted keys).
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let resorted = serde_json::to_string(&v).unwrap();
            assert!(resorted.starts_with("{\"chained_at\":"), "{resorted}");
            assert!(fast_record(resorted.as_bytes()).is_none());
            let p = parsed(resorted.as_bytes());
            assert_eq!(
                (&*p.record, p.self_ok),
                (*bytes, true),
                "case {i}: slow path"
            );
            assert!(p.hex_finding.is_some());
        }
    }

    #[test]
    fn record_lines_with_both_or_neither_form_or_bad_hex_are_not_in_the_format() {
        let r = chained(3, GENESIS_PREV_HASH, VECTOR_1);
        let line = r.to_json_line().unwrap();
        let both = line.replacen("\"record\":", "\"record_hex\":\"00\",\"record\":", 1);
        let neither = line.replacen("\"record\":", "\"rec\":", 1);
        let odd = chained(3, GENESIS_PREV_HASH, b"\xff")
            .to_json_line()
            .unwrap();
        let bad_hex = odd.replace("\"ff\"", "\"fg\"");
        let odd_length = odd.replace("\"ff\"", "\"fff\"");
        for l in [both, neither, bad_hex, odd_length] {
            assert!(matches!(parse_line(l.as_bytes()), Parsed::Bad(_)), "{l}");
        }
        // `"record":null` is the four bytes `null`, as before (not an absent record).
        let null = line.replacen(
            &format!("\"record\":{}", std::str::from_utf8(VECTOR_1).unwrap()),
            "\"record\":null",
            1,
        );
        assert_eq!(&*parsed(null.as_bytes()).record, b"null");
    }

    fn opts() -> VerifyOptions {
        VerifyOptions {
            keys: AuditKeys::default(),
            external_checkpoints: Vec::new(),
            now: datetime!(2025-01-02 00:00:00 UTC),
            unchained_alarm_after: time::Duration::seconds(30),
        }
    }

    /// An export of `records` as this crate writes it.
    fn export_file(dir: &Path, records: &[ChainedRecord]) -> std::path::PathBuf {
        let header = ExportHeader {
            kind: "header".into(),
            format: EXPORT_FORMAT.into(),
            exported_at: datetime!(2025-01-02 00:00:00 UTC),
            head_seq: records.last().map_or(0, |r| r.seq),
            filter: ExportFilter::default(),
        };
        let mut out = Vec::new();
        write_json_line(&mut out, &header).unwrap();
        for r in records {
            write_json_line(&mut out, r).unwrap();
        }
        let path = dir.join("export.jsonl");
        std::fs::write(&path, out).unwrap();
        path
    }

    fn chain(bytes: &[&[u8]]) -> Vec<ChainedRecord> {
        let mut prev = GENESIS_PREV_HASH;
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let r = chained(i as u64 + 1, prev, b);
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_over_odd_bytes_links_and_names_only_the_odd_record() {
        let dir = tempfile::tempdir().unwrap();
        let records = chain(&[VECTOR_1, b"\xff not json", VECTOR_1]);
        let r = verify_export(&export_file(dir.path(), &records), &opts()).unwrap();
        assert_eq!((r.records, r.last_seq), (3, Some(3)));
        assert_eq!(r.head_hash, Some(hex::encode(records[2].hash)));
        assert_eq!(r.findings.len(), 1, "{r:#?}");
        let f = &r.findings[0];
        assert_eq!((f.kind, f.seq), (DamageKind::Malformed, Some(2)));
        assert_eq!(
            f.detail,
            "record 2: stored record is not canonical JSON \
             (10 bytes, line 3 as record_hex: expected value at line 1 column 1)"
        );
    }

    #[test]
    fn odd_bytes_that_no_longer_match_their_hash_are_modified_then_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let mut records = chain(&[VECTOR_1, VECTOR_1, VECTOR_1, VECTOR_1]);
        // Record 3's stored bytes damaged after chaining: a byte no longer UTF-8.
        records[2].canonical[10] ^= 0x80;
        let r = verify_export(&export_file(dir.path(), &records), &opts()).unwrap();
        let found: Vec<_> = r.findings.iter().map(|f| (f.kind, f.seq)).collect();
        assert_eq!(
            found,
            vec![
                (DamageKind::Modified, Some(3)),
                (DamageKind::Malformed, Some(3))
            ],
            "{r:#?}"
        );
        assert_eq!(r.records, 4);
    }
}
