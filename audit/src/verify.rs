//! Verification: recompute the chain, check every checkpoint, name the first damage.
//!
//! The same walker ([`ChainVerifier`]) checks records from the database
//! ([`verify_database`]) or from an export file ([`verify_export`](crate::export::verify_export)).
//! For each record it checks that the record hashes to its stored hash at its
//! sequence number (`self`), and that its `prev_hash` is the previous record's hash
//! (`link`). When either fails it works out what happened, using the stored hashes as
//! evidence (a record hashes correctly only at the position it was chained at):
//!
//! | finding | evidence |
//! |---|---|
//! | [`Modified`](DamageKind::Modified) | links, but its content or hash changed |
//! | [`Missing`](DamageKind::Missing) | a gap in sequence numbers, or a record that hashes correctly only at a later position (deleted, then renumbered) |
//! | [`Inserted`](DamageKind::Inserted) | a sequence number seen twice, a record the next one skips over, or a record that hashes correctly only at an earlier position |
//! | [`Reordered`](DamageKind::Reordered) | two records that hash correctly at each other's positions |
//! | [`TruncatedTail`](DamageKind::TruncatedTail) | a checkpoint in the log covers records past its end |
//! | [`ShorterThanCheckpoint`](DamageKind::ShorterThanCheckpoint) | a checkpoint kept elsewhere covers records past the end: restored from an old backup |
//! | [`Rewritten`](DamageKind::Rewritten) | consistent chain, but a signed head differs: rewritten and recomputed |
//! | [`BadCheckpointSignature`](DamageKind::BadCheckpointSignature) | a checkpoint whose signature does not verify |
//! | [`Unchained`](DamageKind::Unchained) | (database) a committed record left unchained longer than the policy's bound |
//! | [`Malformed`](DamageKind::Malformed) | unreadable data; a stored record that is not canonical JSON (not a one-line JSON object: exported as `record_hex`), reported beside the chain walk's finding at its sequence |
//!
//! After a finding the walker re-synchronises on the stored hashes, so later, separate
//! damage is reported too, and one damage is reported once.
#![allow(
    clippy::disallowed_methods,
    reason = "the audit crate's own tables: verify reads them"
)]

use std::collections::BTreeMap;

use alga_protocol::issuer_api::SignedCheckpoint;
use futures::{StreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::canonical::{GENESIS_PREV_HASH, chain_hash};
use crate::checkpoint::{AuditKeys, CheckpointFault};
use crate::error::AuditError;
use crate::store;

/// Most findings kept in a report (the count goes on).
pub const MAX_FINDINGS: usize = 1000;
/// How far (in sequence numbers) a moved record is looked for.
const ORIGIN_WINDOW: u64 = 1024;
/// Most damaged records kept in memory to pair up reorderings.
const MAX_SUSPECTS: usize = 256;

/// What verify needs besides the data.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Trusted audit public keys.
    pub keys: AuditKeys,
    /// Checkpoints kept outside this log (an earlier export, the issuer's records): a
    /// log shorter than any of them was restored from an old backup.
    pub external_checkpoints: Vec<SignedCheckpoint>,
    /// The verifier's clock (for the unchained alarm).
    pub now: OffsetDateTime,
    /// A committed record unchained longer than this is a finding (`policy.audit.unchained_alarm_after`).
    pub unchained_alarm_after: time::Duration,
}

/// The kind of damage a finding reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    Modified,
    Missing,
    Inserted,
    Reordered,
    TruncatedTail,
    ShorterThanCheckpoint,
    Rewritten,
    BadCheckpointSignature,
    Unchained,
    Malformed,
}

impl DamageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DamageKind::Modified => "modified",
            DamageKind::Missing => "missing",
            DamageKind::Inserted => "inserted",
            DamageKind::Reordered => "reordered",
            DamageKind::TruncatedTail => "truncated_tail",
            DamageKind::ShorterThanCheckpoint => "shorter_than_checkpoint",
            DamageKind::Rewritten => "rewritten",
            DamageKind::BadCheckpointSignature => "bad_checkpoint_signature",
            DamageKind::Unchained => "unchained",
            DamageKind::Malformed => "malformed",
        }
    }
}

impl std::fmt::Display for DamageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: the kind, the first sequence number concerned (none for records not
/// yet in the chain), and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: DamageKind,
    pub seq: Option<u64>,
    pub detail: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Sequence numbers of the first and last record checked.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hash of the last record checked (hex).
    pub head_hash: Option<String>,
    /// Checkpoints whose signature verified / that were checked against the chain.
    pub checkpoints_valid: u64,
    pub checkpoints_matched: u64,
    /// Newest checkpoint that verified and matched the chain.
    pub last_good_checkpoint: Option<u64>,
    /// The source was a filtered export: completeness between records is not checked.
    pub filtered: bool,
    /// Findings, ordered by sequence number (those without one last).
    pub findings: Vec<Finding>,
    /// Findings beyond [`MAX_FINDINGS`] that were counted but not kept.
    pub findings_dropped: u64,
}

impl VerifyReport {
    /// No finding at all.
    pub fn intact(&self) -> bool {
        self.findings.is_empty() && self.findings_dropped == 0
    }

    /// The finding with the smallest sequence number (or the first without one).
    pub fn first_damage(&self) -> Option<&Finding> {
        self.findings.first()
    }
}

/// One chained record as the walker sees it.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub seq: u64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    /// The canonical bytes; `None` when the record itself is gone (a chain row whose
    /// event row was deleted).
    pub record: Option<&'a [u8]>,
    /// `chain_hash(prev_hash, seq, record) == hash`, if the caller computed it
    /// already (in parallel); `None` to have the walker compute it.
    pub self_ok: Option<bool>,
}

/// A walked entry, with its bytes kept only when it failed its own check.
#[derive(Debug, Clone)]
struct Held {
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    self_ok: bool,
    bytes: Option<Vec<u8>>,
    /// The record row is gone (reported when pushed).
    gone: bool,
}

impl Held {
    fn hashes_at(&self, prev: &[u8; 32], seq: u64) -> Option<[u8; 32]> {
        self.bytes.as_deref().map(|b| chain_hash(prev, seq, b))
    }
    fn belongs_at(&self, seq: u64) -> bool {
        self.hashes_at(&self.prev, seq) == Some(self.hash)
    }
}

#[derive(Debug)]
struct Suspect {
    finding: usize,
    held: Held,
}

/// Where a checkpoint came from: this log, or kept elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSource {
    Log,
    External,
}

/// The streaming chain walker. Feed entries in order with [`push`](Self::push), then
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct ChainVerifier {
    report: VerifyReport,
    filtered: bool,
    /// Anchor on the first record's `prev_hash` (an export that starts mid-chain).
    anchored: bool,
    started: bool,
    expected: u64,
    running: [u8; 32],
    /// Renumbering offset found so far: a record now at `s` was chained at `s - shift`.
    shift: i64,
    held: Option<Held>,
    /// A swapped partner to accept silently: (its seq, running hash after it).
    partner: Option<(u64, [u8; 32])>,
    suspects: Vec<Suspect>,
    /// Ranges reported missing, to re-label as reordered if they turn up later.
    missing: Vec<(u64, u64, usize)>,
    /// Checkpoints by seq that passed their signature check, with their source.
    checkpoints: BTreeMap<u64, Vec<(SignedCheckpoint, CheckpointSource)>>,
    /// The newest checkpoint seq seen matching, for `Rewritten` ranges.
    last_matched: u64,
    /// Head promised by an export header, if any.
    promised_head: Option<u64>,
    /// Per finding: 0 from the chain walk, 1 reported beside it (sorts after).
    ranks: Vec<u8>,
    /// Stored hash of the last record walked.
    last_hash: [u8; 32],
}

impl ChainVerifier {
    /// A walker for a complete log starting at sequence number 1.
    pub fn new() -> ChainVerifier {
        ChainVerifier {
            report: VerifyReport::default(),
            filtered: false,
            anchored: false,
            started: false,
            expected: 1,
            running: GENESIS_PREV_HASH,
            shift: 0,
            held: None,
            partner: None,
            suspects: Vec::new(),
            missing: Vec::new(),
            checkpoints: BTreeMap::new(),
            last_matched: 0,
            promised_head: None,
            ranks: Vec::new(),
            last_hash: GENESIS_PREV_HASH,
        }
    }

    /// A log that starts mid-chain (an export `--since-seq`): the first record's
    /// `prev_hash` is taken as given.
    pub fn anchored() -> ChainVerifier {
        ChainVerifier {
            anchored: true,
            ..ChainVerifier::new()
        }
    }

    /// A filtered selection (by tenant, action or time): each record is checked, and
    /// links only between consecutive sequence numbers.
    pub fn filtered() -> ChainVerifier {
        ChainVerifier {
            filtered: true,
            anchored: true,
            ..ChainVerifier::new()
        }
    }

    /// The log claims to reach this head (an export header): ending earlier is a
    /// truncated tail.
    pub fn expect_head(&mut self, seq: u64) {
        self.promised_head = Some(seq);
    }

    /// Adds checkpoints (before the records). Their signatures are checked now.
    pub fn add_checkpoints(
        &mut self,
        keys: &AuditKeys,
        cps: impl IntoIterator<Item = SignedCheckpoint>,
        source: CheckpointSource,
    ) {
        for cp in cps {
            match keys.check(&cp) {
                Ok(()) => {
                    self.report.checkpoints_valid += 1;
                    self.checkpoints
                        .entry(cp.sequence)
                        .or_default()
                        .push((cp, source));
                }
                Err(fault) => {
                    let where_ = match source {
                        CheckpointSource::Log => "",
                        CheckpointSource::External => " (external)",
                    };
                    let detail = match fault {
                        CheckpointFault::UnknownKid => format!(
                            "checkpoint at {}{where_}: {fault} {:?}",
                            cp.sequence, cp.kid
                        ),
                        _ => format!("checkpoint at {}{where_}: {fault}", cp.sequence),
                    };
                    self.finding(
                        DamageKind::BadCheckpointSignature,
                        Some(cp.sequence),
                        detail,
                    );
                }
            }
        }
    }

    /// Reports a problem found outside the walk (unreadable line, column mismatch,
    /// unchained record).
    pub fn report(&mut self, kind: DamageKind, seq: Option<u64>, detail: String) {
        if self.finding(kind, seq, detail).is_some()
            && let Some(r) = self.ranks.last_mut()
        {
            *r = 1;
        }
    }

    /// Walks one entry.
    pub fn push(&mut self, e: Entry<'_>) {
        let self_ok = match (e.self_ok, e.record) {
            (_, None) => false,
            (Some(ok), Some(_)) => ok,
            (None, Some(b)) => chain_hash(&e.prev_hash, e.seq, b) == e.hash,
        };
        let next = Held {
            seq: e.seq,
            prev: e.prev_hash,
            hash: e.hash,
            self_ok,
            bytes: if self_ok {
                None
            } else {
                e.record.map(<[u8]>::to_vec)
            },
            gone: e.record.is_none(),
        };
        if e.record.is_none() {
            self.finding(
                DamageKind::Missing,
                Some(e.seq),
                format!("record {} is gone (its chain entry remains)", e.seq),
            );
        }
        if let Some(held) = self.held.take() {
            self.step(held, Some(&next));
        }
        self.held = Some(next);
    }

    /// Ends the walk and returns the report.
    pub fn finish(mut self) -> VerifyReport {
        if let Some(held) = self.held.take() {
            self.step(held, None);
        }
        let last = self.report.last_seq.unwrap_or(0);
        let beyond: Vec<(u64, CheckpointSource)> = self
            .checkpoints
            .range(last + 1..)
            .flat_map(|(seq, v)| v.iter().map(move |(_, src)| (*seq, *src)))
            .collect();
        if !self.filtered {
            if let Some((seq, _)) = beyond.iter().find(|(_, s)| *s == CheckpointSource::Log) {
                self.finding(
                    DamageKind::TruncatedTail,
                    Some(last + 1),
                    format!("the log ends at {last} but its own checkpoint covers {seq}: records {}..={seq} were cut off", last + 1),
                );
            }
            if let Some((seq, _)) = beyond
                .iter()
                .find(|(_, s)| *s == CheckpointSource::External)
            {
                self.finding(
                    DamageKind::ShorterThanCheckpoint,
                    Some(last + 1),
                    format!("the log ends at {last} but a checkpoint kept elsewhere covers {seq}: restored from an old backup?"),
                );
            }
            if let Some(h) = self.promised_head
                && h > last
            {
                self.finding(
                    DamageKind::TruncatedTail,
                    Some(last + 1),
                    format!("the export promises records up to {h} but ends at {last}"),
                );
            }
        }
        self.report.filtered = self.filtered;
        if self.report.last_seq.is_some() {
            self.report.head_hash = Some(hex::encode(self.last_hash));
        }
        let findings = std::mem::take(&mut self.report.findings);
        let mut ranked: Vec<(u8, Finding)> = self.ranks.iter().copied().zip(findings).collect();
        ranked.sort_by_key(|(rank, f)| (f.seq.is_none(), f.seq, *rank));
        self.report.findings = ranked.into_iter().map(|(_, f)| f).collect();
        self.report
    }

    /// Judges one record, knowing the next (to tell a swap, an insertion or a
    /// replacement apart): accepts it, or reports what happened at it and resyncs.
    fn step(&mut self, e: Held, next: Option<&Held>) {
        let s = e.seq;
        self.start_at(&e);
        self.report.records += 1;
        if self.completes_swap(&e) {
            return;
        }
        if s < self.expected {
            self.seen_again(s);
            return;
        }
        let link_known = self.skip_missing(s);
        if e.gone {
            // Reported as missing when pushed; its chain entry still carries the link.
            self.accept(&e);
            return;
        }
        let link_ok = !link_known || e.prev == self.running;
        let self_ok = e.self_ok || (self.shift != 0 && self.origin_ok(&e, self.shift));
        match (link_ok, self_ok) {
            (true, true) => self.accept(&e),
            (true, false) => self.changed_in_place(&e, next),
            (false, true) => self.unlinked(&e, next),
            (false, false) => self.moved_or_broken(&e, next),
        }
    }

    /// On the first record: the report's first sequence number, and for a log that
    /// starts mid-chain, the anchor.
    fn start_at(&mut self, e: &Held) {
        if self.started {
            return;
        }
        self.started = true;
        self.report.first_seq = Some(e.seq);
        if self.anchored {
            self.expected = e.seq;
            self.running = e.prev;
        }
    }

    /// Whether `e` is the other half of a swap already reported (then accepted
    /// silently).
    fn completes_swap(&mut self, e: &Held) -> bool {
        let Some((pseq, resume)) = self.partner else {
            return false;
        };
        if pseq != e.seq {
            return false;
        }
        self.partner = None;
        self.running = resume;
        self.expected = self.expected.max(e.seq + 1);
        self.note_checkpoint(e);
        true
    }

    /// A sequence number already walked past: one reported missing turned up late
    /// (reordered), or it is a duplicate (inserted).
    fn seen_again(&mut self, s: u64) {
        if let Some(&(_, _, idx)) = self.missing.iter().find(|(a, b, _)| *a <= s && s <= *b) {
            let f = &mut self.report.findings[idx];
            f.kind = DamageKind::Reordered;
            f.detail = format!(
                "record {s} is out of order (found after record {})",
                self.expected - 1
            );
        } else {
            self.finding(
                DamageKind::Inserted,
                Some(s),
                format!(
                    "sequence number {s} appears again after {}",
                    self.expected - 1
                ),
            );
        }
    }

    /// A jump ahead to `s`: reports the records in between as missing (unless the
    /// log is filtered). Returns whether the link to the previous record can still
    /// be checked (no jump).
    fn skip_missing(&mut self, s: u64) -> bool {
        if s <= self.expected {
            return true;
        }
        if !self.filtered {
            let (a, b) = (self.expected, s - 1);
            if let Some(idx) = self.missing_range(a, b, "") {
                self.missing.push((a, b, idx));
            }
        }
        self.expected = s;
        false
    }

    /// Linked, but not matching its own hash: content or hash changed in place, or
    /// the record moved here from elsewhere (a swap), or one was slipped in.
    fn changed_in_place(&mut self, e: &Held, next: Option<&Held>) {
        let s = e.seq;
        if let Some(n) = next
            && let Some(h) = e.hashes_at(&n.prev, n.seq)
            && h == n.hash
            && n.belongs_at_with(&e.prev, s)
        {
            self.finding(
                DamageKind::Reordered,
                Some(s),
                format!("records {s} and {} swapped places", n.seq),
            );
            self.partner = Some((n.seq, n.hash));
            self.resync(e, Some(n));
            return;
        }
        if let Some(i) = self.suspects.iter().position(|sus| {
            e.hashes_at(&sus.held.prev, sus.held.seq) == Some(sus.held.hash)
                || sus.held.hashes_at(&e.prev, s) == Some(e.hash)
        }) {
            let sus = self.suspects.swap_remove(i);
            let f = &mut self.report.findings[sus.finding];
            f.kind = DamageKind::Reordered;
            f.detail = format!("records {} and {s} swapped places", sus.held.seq);
            self.resync(e, next);
            return;
        }
        if let Some(n) = next
            && n.prev == self.running
        {
            let kind = if n.seq == s {
                DamageKind::Inserted
            } else {
                DamageKind::Modified
            };
            let detail = if n.seq == s {
                format!("a record was slipped in at {s}")
            } else {
                format!("record {s} was replaced")
            };
            self.finding(kind, Some(s), detail);
            self.resync(e, next);
            return;
        }
        let idx = self.finding(
            DamageKind::Modified,
            Some(s),
            format!("record {s} does not match its hash: content or hash changed"),
        );
        if let Some(idx) = idx
            && self.suspects.len() < MAX_SUSPECTS
            && e.bytes.is_some()
        {
            self.suspects.push(Suspect {
                finding: idx,
                held: e.clone(),
            });
        }
        self.resync(e, next);
    }

    /// Intact itself, but not linked to the verified record before it: inserted (the
    /// next record links past it) or its link changed.
    fn unlinked(&mut self, e: &Held, next: Option<&Held>) {
        let s = e.seq;
        let (kind, detail) = match next {
            Some(n) if n.prev == self.running => (
                DamageKind::Inserted,
                format!("record {s} was inserted: the next record links past it"),
            ),
            _ => (
                DamageKind::Modified,
                format!("record {s} does not link to record {}", s.saturating_sub(1)),
            ),
        };
        self.finding(kind, Some(s), detail);
        self.resync(e, next);
    }

    /// Neither linked nor consistent at its position: renumbered if it was chained
    /// at a nearby sequence number, else inserted or modified.
    fn moved_or_broken(&mut self, e: &Held, next: Option<&Held>) {
        if let Some(origin) = self.find_origin(e) {
            self.renumbered(e, next, origin);
            return;
        }
        let s = e.seq;
        let (kind, detail) = match next {
            Some(n) if n.prev == self.running => (
                DamageKind::Inserted,
                format!("record {s} was inserted: the next record links past it"),
            ),
            _ if e.hashes_at(&self.running, s) == Some(e.hash) => (
                DamageKind::Modified,
                format!("record {s}: prev_hash changed"),
            ),
            _ => (
                DamageKind::Modified,
                format!("record {s} does not match its hash and does not link"),
            ),
        };
        self.finding(kind, Some(s), detail);
        self.resync(e, next);
    }

    /// `e` was chained at `origin`, now sits at its own `seq`: records in between
    /// went (or two swapped), or records were inserted before it. Later records are
    /// then checked at the same shift.
    fn renumbered(&mut self, e: &Held, next: Option<&Held>, origin: u64) {
        let s = e.seq;
        if origin > s {
            // Chained at `origin`, now at `s`: the records in between went.
            if let Some(n) = next
                && n.belongs_at_with(&n.prev, s)
                && n.prev == self.running
            {
                self.finding(
                    DamageKind::Reordered,
                    Some(s),
                    format!("records {s} and {origin} swapped places"),
                );
                self.partner = Some((n.seq, e.hash));
                self.expected = s + 1;
                self.note_checkpoint(e);
                return;
            }
            self.missing_range(s, origin - 1, " (later records were renumbered)");
        } else {
            let (a, b) = (origin, s - 1);
            self.finding(
                DamageKind::Inserted,
                Some(a),
                if a == b {
                    format!("a record was inserted at {a} (later records were renumbered)")
                } else {
                    format!("records were inserted at {a}..={b} (later records were renumbered)")
                },
            );
        }
        self.shift = s as i64 - origin as i64;
        self.resync(e, next);
    }

    /// Reports records `a..=b` missing, `why` after the words; returns the finding's
    /// index (none once findings are capped).
    fn missing_range(&mut self, a: u64, b: u64, why: &str) -> Option<usize> {
        let detail = if a == b {
            format!("record {a} is missing{why}")
        } else {
            format!("records {a}..={b} are missing{why}")
        };
        self.finding(DamageKind::Missing, Some(a), detail)
    }

    fn origin_ok(&self, e: &Held, shift: i64) -> bool {
        let origin = e.seq as i64 - shift;
        origin >= 1 && e.belongs_at(origin as u64)
    }

    fn find_origin(&self, e: &Held) -> Option<u64> {
        e.bytes.as_ref()?;
        (1..=ORIGIN_WINDOW).find_map(|d| {
            [e.seq.checked_add(d), e.seq.checked_sub(d)]
                .into_iter()
                .flatten()
                .find(|&o| o >= 1 && e.belongs_at(o))
        })
    }

    fn accept(&mut self, e: &Held) {
        self.running = e.hash;
        self.expected = e.seq + 1;
        self.note_checkpoint(e);
    }

    /// After a finding at `e`: continue from the stored hashes, trusting the next
    /// record's link so one damage is reported once.
    fn resync(&mut self, e: &Held, next: Option<&Held>) {
        self.running = match next {
            Some(n) if n.seq == e.seq + 1 => n.prev,
            _ => e.hash,
        };
        self.expected = e.seq + 1;
        self.note_checkpoint(e);
    }

    fn note_checkpoint(&mut self, e: &Held) {
        self.report.last_seq = Some(e.seq);
        self.last_hash = e.hash;
        let Some(cps) = self.checkpoints.get(&e.seq) else {
            return;
        };
        let stored = hex::encode(e.hash);
        let mismatched: Vec<SignedCheckpoint> = cps
            .iter()
            .filter(|(cp, _)| !cp.head_hash.eq_ignore_ascii_case(&stored))
            .map(|(cp, _)| cp.clone())
            .collect();
        let matched = cps.len() - mismatched.len();
        self.report.checkpoints_matched += matched as u64;
        if mismatched.is_empty() {
            self.last_matched = e.seq;
            self.report.last_good_checkpoint = Some(e.seq);
        } else {
            let from = self.last_matched + 1;
            // A finding about a record's bytes alone (not canonical JSON) says nothing
            // about the hashes a checkpoint signs: it explains no mismatch.
            let explained = self.report.findings.iter().any(|f| {
                f.seq.is_some_and(|q| q >= from && q <= e.seq)
                    && !matches!(
                        f.kind,
                        DamageKind::BadCheckpointSignature | DamageKind::Malformed
                    )
            });
            if explained {
                // Damage already reported in this stretch accounts for the mismatch.
                return;
            }
            self.finding(
                DamageKind::Rewritten,
                Some(from),
                format!(
                    "the signed checkpoint at {} does not match the chain: records {from}..={} were rewritten and rehashed",
                    e.seq, e.seq
                ),
            );
        }
    }

    fn finding(&mut self, kind: DamageKind, seq: Option<u64>, detail: String) -> Option<usize> {
        if self.report.findings.len() >= MAX_FINDINGS {
            self.report.findings_dropped += 1;
            return None;
        }
        self.report.findings.push(Finding { kind, seq, detail });
        self.ranks.push(0);
        Some(self.report.findings.len() - 1)
    }
}

impl Held {
    /// Whether this record, given `prev`, hashes to its stored hash at `seq`.
    fn belongs_at_with(&self, prev: &[u8; 32], seq: u64) -> bool {
        self.hashes_at(prev, seq) == Some(self.hash)
    }
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new()
    }
}

/// Verifies the log in the database: every chain row in order, the records'
/// indexed columns, every stored checkpoint, and records left unchained too long.
/// Reads in one `REPEATABLE READ READ ONLY` transaction, so it sees one consistent
/// state while the service keeps writing.
pub async fn verify_database(
    client: &mut tokio_postgres::Client,
    opts: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let tx = store::snapshot(client).await?;

    let mut v = ChainVerifier::new();
    let cps = store::all_checkpoints(&tx).await?;
    v.add_checkpoints(&opts.keys, cps, CheckpointSource::Log);
    v.add_checkpoints(
        &opts.keys,
        opts.external_checkpoints.iter().cloned(),
        CheckpointSource::External,
    );

    let rows = tx
        .query_typed_raw(
            "SELECT c.seq, c.prev_hash, c.hash, e.record, e.action, e.tenant_id, e.recorded_at \
             FROM audit_chain c LEFT JOIN audit_events e ON e.id = c.event_id ORDER BY c.seq",
            std::iter::empty::<(i64, Type)>(),
        )
        .await?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row?;
        let seq = store::to_u64(row.try_get(0)?)?;
        let (prev, hash) = match (
            store::hash32(row.try_get(1)?),
            store::hash32(row.try_get(2)?),
        ) {
            (Ok(p), Ok(h)) => (p, h),
            _ => {
                v.report(
                    DamageKind::Malformed,
                    Some(seq),
                    format!("record {seq}: a stored hash is not 32 bytes"),
                );
                continue;
            }
        };
        let record: Option<Vec<u8>> = row.try_get(3)?;
        if let Some(bytes) = &record {
            let action: String = row.try_get(4)?;
            let tenant: Option<Uuid> = row.try_get(5)?;
            let at: OffsetDateTime = row.try_get(6)?;
            if store::verbatim_json(bytes).is_none() {
                // What an export of it says too (its `record_hex` line).
                v.report(
                    DamageKind::Malformed,
                    Some(seq),
                    format!(
                        "record {seq}: stored record is not canonical JSON ({} bytes: {})",
                        bytes.len(),
                        not_canonical_reason(bytes)
                    ),
                );
            } else if !columns_agree(bytes, &action, tenant, at) {
                v.report(
                    DamageKind::Modified,
                    Some(seq),
                    format!("record {seq}: the indexed columns (action, tenant, time) disagree with the record"),
                );
            }
        }
        v.push(Entry {
            seq,
            prev_hash: prev,
            hash,
            record: record.as_deref(),
            self_ok: None,
        });
    }

    let cutoff = opts.now - opts.unchained_alarm_after;
    let rows = tx
        .query_typed(
            "SELECT e.id, e.inserted_at FROM audit_events e \
             WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id) \
               AND e.inserted_at < $1 ORDER BY e.id",
            &[(&cutoff, Type::TIMESTAMPTZ)],
        )
        .await?;
    for row in rows.iter().take(100) {
        let id: i64 = row.try_get(0)?;
        let at: OffsetDateTime = row.try_get(1)?;
        v.report(
            DamageKind::Unchained,
            None,
            format!(
                "event {id} committed at {} is still unchained after more than {}",
                crate::canonical::format_time(at),
                alga_policies::format_duration(opts.unchained_alarm_after)
            ),
        );
    }
    if rows.len() > 100 {
        v.report(
            DamageKind::Unchained,
            None,
            format!(
                "{} more events are unchained past the bound",
                rows.len() - 100
            ),
        );
    }
    tx.commit().await?;
    Ok(v.finish())
}

/// Why bytes that cannot be exported verbatim are not a canonical record.
pub(crate) fn not_canonical_reason(bytes: &[u8]) -> String {
    match crate::record::Record::from_canonical(bytes) {
        Err(AuditError::Corrupt(why)) => why
            .strip_prefix("record is not canonical JSON: ")
            .map_or(why.clone(), str::to_owned),
        Err(e) => e.to_string(),
        Ok(_) => "a canonical record in hex: the format writes it as `record`".into(),
    }
}

/// Do the filter columns say what the record says?
fn columns_agree(bytes: &[u8], action: &str, tenant: Option<Uuid>, at: OffsetDateTime) -> bool {
    #[derive(Deserialize)]
    struct Cols<'a> {
        action: &'a str,
        tenant_id: Option<Uuid>,
        #[serde(with = "crate::canonical::time_format")]
        time: OffsetDateTime,
    }
    match serde_json::from_slice::<Cols<'_>>(bytes) {
        Ok(c) => c.action == action && c.tenant_id == tenant && c.time == at,
        Err(_) => false,
    }
}
