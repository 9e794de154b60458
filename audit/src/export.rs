//! Export files: JSON lines that can be verified offline (format in `FORMAT.md`).
//!
//! ```text
//! {"type":"header","format":"alga-license/audit-export/v1","exported_at":…,"head_seq":…,"filter":{…}}
//! {"type":"checkpoint","sequence":…,"head_hash":…,"signed_at":…,"kid":…,"signature":…}   (all, oldest first)
//! {"type":"record","seq":…,"event_id":…,"prev_hash":…,"hash":…,"chained_at":…,"record":{canonical bytes}}
//! ```
//!
//! The `record` value is the stored canonical bytes, verbatim: a verifier hashes the
//! bytes of the line, so an export that was re-formatted (pretty-printed, keys
//! re-ordered) no longer verifies, as it should.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use alga_protocol::issuer_api::SignedCheckpoint;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio_postgres::IsolationLevel;
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
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
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
    let mut after = 0;
    loop {
        let page = store::list_checkpoints(&tx, after, 0).await?;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for cp in &page {
            write_json_line(
                out,
                &CheckpointLine {
                    kind: "checkpoint",
                    cp,
                },
            )?;
            summary.checkpoints += 1;
        }
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
            match buf.iter().rposition(|b| *b == b'\n') {
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
                    v.push(Entry {
                        seq: r.seq,
                        prev_hash: r.prev,
                        hash: r.hash,
                        record: Some(r.record),
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
    record: &'a [u8],
    self_ok: bool,
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
            end = match block[end..].iter().position(|b| *b == b'\n') {
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
        let (line, tail) = match rest.iter().position(|b| *b == b'\n') {
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
        Some((seq, prev, hash, record)) => Parsed::Record(RecordLine {
            seq,
            prev,
            hash,
            record,
            self_ok: chain_hash(&prev, seq, record) == hash,
        }),
        None => Parsed::Other(line),
    }
}

type Fields<'a> = (u64, [u8; 32], [u8; 32], &'a [u8]);

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
    let rest = rest[q..].strip_prefix(b"\",\"record\":")?;
    let record = rest.strip_suffix(b"}")?;
    if !record.starts_with(b"{") || !record.ends_with(b"}") {
        return None;
    }
    Some((seq, prev, hash, record))
}

fn contains_record_type(line: &[u8]) -> bool {
    line.windows(15).any(|w| w == b"\"type\":\"record\"")
}

/// Any other JSON layout of a record line; the record's bytes are still taken
/// verbatim from the line.
fn slow_record(line: &[u8]) -> Option<Fields<'_>> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        seq: u64,
        prev_hash: &'a str,
        hash: &'a str,
        #[serde(borrow)]
        record: &'a RawValue,
    }
    let l: Line<'_> = serde_json::from_slice(line).ok()?;
    if l.kind != "record" {
        return None;
    }
    let (prev, _) = hex32(l.prev_hash.as_bytes())?;
    let (hash, _) = hex32(l.hash.as_bytes())?;
    let raw = l.record.get().as_bytes();
    // `raw` borrows from `line`: find it there to return a slice of the line.
    let offset = (raw.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
    let record = line.get(offset..offset + raw.len())?;
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

fn hex32(s: &[u8]) -> Option<([u8; 32], &[u8])> {
    let h = s.get(..64)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some((out, &s[64..]))
}

/// Formats a canonical time (for tables).
pub fn display_time(t: OffsetDateTime) -> String {
    canonical::format_time(t)
}
