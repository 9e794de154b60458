//! Reconciling the issuer's signing logs with the gateway's audit records (CONTRACT.md §6):
//! everything the issuer signed should be in the audit log, and everything the audit
//! log says was signed should be in the issuer's log.
//!
//! The issuer never opens a database connection, so this runs here, in the audit tool:
//! [`read_issuer_log`] verifies a signing log (format in `alga_protocol::signlog`),
//! [`load_database`] or [`load_export`] reads the gateway's side, and [`reconcile`]
//! matches them by each signing operation's natural id.
//!
//! # Matching rules
//!
//! | signing log `op` | natural id | the gateway records it as (success records) |
//! |---|---|---|
//! | `code_mint` | `code_id` | `code.mint` with subject `code_id` |
//! | `license` | `jti` | `code.redeem` or `appliance.check_in` with subject `jti` |
//! | `credential` | `serial` | `code.redeem` or `appliance.check_in` with subject `serial` |
//! | `checkpoint` | `sequence` | a stored checkpoint (`audit_checkpoints`, or the export's checkpoint lines) with that sequence |
//! | `log_checkpoint` | `sequence` (the tree size) | a stored tree checkpoint (`audit_log_checkpoints`) of that size, whose root is the signed one (database only: exports carry no tree checkpoints) |
//! | `code_derive` | `code_id` | see below |
//!
//! The table is explicit on purpose: a future action that carries a `jti` without
//! being listed here makes its signatures show up as unrecorded (loud), never the
//! reverse.
//!
//! **Derives** (the mail worker re-computing a code it sends) create no new authority:
//! the code was minted before. The gateway records a mail it sent (`mail.sent`) or gave
//! up on (`mail.failed`), but not a derive followed by a transient SMTP failure (it
//! retries, unaudited). So a `code_derive` is accounted for when the gateway recorded
//! the code's mint (`code.mint`) or a `mail.sent` for it, or when the issuer's log has
//! the mint before `--since` (its recording was judged by an earlier run). In the other
//! direction, a `mail.sent` record claims a derive: the issuer's log must have one.
//!
//! **Signatures in failed requests.** The gateway signs inside its business
//! transaction; when that rolls back (the credential call fails after the license was
//! signed, a commit fails, …) the signature exists but its success record does not. The
//! gateway then records the failure in a transaction of its own, but the failure
//! record does not name the `jti`, `serial` or `code_id` signed (they were rolled back
//! with the rest). Such a signature is listed as *signed during a failed request*,
//! not as unrecorded, when a failure record of a request that could have signed it
//! matches:
//!
//! - `license`, `credential`: a failed `code.redeem` or `appliance.check_in` of the
//!   same tenant (a redeem whose code did not verify names no tenant and signed
//!   nothing), with the same `appliance_id` when the record names one;
//! - `code_mint`: a failed `code.reissue` of the same tenant or one that names no
//!   tenant (found by contact email), or a failed `tenant.register` naming no tenant
//!   (the new tenant was rolled back) with the same `edition` detail;
//! - the failure record's time (the request's start) at most
//!   [`ReconcileOptions::failed_request_window`] before the signature and at most
//!   [`ReconcileOptions::clock_skew`] after it; one failure record accounts for at
//!   most one signature of each kind.
//!
//! This is a heuristic (tenant and time, not an id), so these are listed for a person
//! to review; `alga-audit reconcile --strict` counts them as unrecorded. A checkpoint
//! that was signed but not stored is in the same list when its head hash is the
//! chain's hash at that sequence (the sequencer's call timed out, or another sequencer
//! stored its own): it attests to a true state. One over a head the chain never had is
//! unrecorded.
//!
//! Also checked for matched pairs: the tenant (and appliance) on both sides, and a
//! checkpoint's head hash. A difference is a *mismatch*.
//!
//! # Windows
//!
//! Only signatures and records with a time in `[since, until]` are checked; `until`
//! defaults to a little before now, so that requests in flight (signed, not yet
//! committed or chained) are not reported. Everything read is still used to find
//! matches, and records are read from `since - failed_request_window` on.
//!
//! What is absent on purpose: reconcile never writes anywhere, never trusts a signing
//! log past its first break (records before it are still reconciled, and the break
//! makes the result fail), and reads only chained audit records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use alga_protocol::issuer_api::SignedCheckpoint;
use alga_protocol::signlog::{ChainVerifier, FIRST_SEQ, SignOp, SignlogRecord, parse_file_name};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::canonical::chain_hash;
use crate::error::AuditError;
use crate::export::{EXPORT_FORMAT, ExportHeader};
use crate::record::{Outcome, Record, actions};
use crate::store::{self, EventQuery};

/// Default of [`ReconcileOptions::failed_request_window`]: longer than a request can
/// take (three issuer calls of at most 10 s each, plus the database).
pub const DEFAULT_FAILED_REQUEST_WINDOW: Duration = Duration::minutes(2);
/// Default of [`ReconcileOptions::clock_skew`] between the gateway and the issuer.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::seconds(5);
/// How far before now the default `until` is: longer than a request takes to commit
/// and its record to be chained.
pub const DEFAULT_SETTLE: Duration = Duration::minutes(2);

/// The window and tolerances of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Check signatures and records from this time on (`None`: from the start).
    pub since: Option<OffsetDateTime>,
    /// Check signatures and records up to this time (requests after it may be in flight).
    pub until: OffsetDateTime,
    /// How long before a signature the failed request that made it may have started.
    pub failed_request_window: Duration,
    /// How far the issuer's clock may be behind the gateway's.
    pub clock_skew: Duration,
}

impl ReconcileOptions {
    /// Everything up to `now - DEFAULT_SETTLE`, default tolerances.
    pub fn new(now: OffsetDateTime) -> ReconcileOptions {
        ReconcileOptions {
            since: None,
            until: now - DEFAULT_SETTLE,
            failed_request_window: DEFAULT_FAILED_REQUEST_WINDOW,
            clock_skew: DEFAULT_CLOCK_SKEW,
        }
    }

    fn in_window(&self, t: OffsetDateTime) -> bool {
        self.since.is_none_or(|s| t >= s) && t <= self.until
    }

    /// Records are read from here on (`None`: all).
    fn read_records_since(&self) -> Option<OffsetDateTime> {
        self.since.map(|s| s - self.failed_request_window)
    }
}

// ---------------------------------------------------------------------------------
// The issuer's side
// ---------------------------------------------------------------------------------

/// One issuer's signing log, read and verified.
#[derive(Debug, Clone)]
pub struct IssuerLog {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// Every record up to the first break, in order.
    pub records: Vec<SignlogRecord>,
    /// Where the chain stops verifying, if it does.
    pub broken: Option<LogBreak>,
    /// The first record present had `seq > 1` (older files archived): the chain was
    /// verified from there, trusting its `prev_hash`.
    pub resumed_at: Option<u64>,
    /// Bytes of an incomplete last line (a write cut by a crash, never acknowledged).
    pub torn_tail_bytes: usize,
    /// Log files read.
    pub files: usize,
}

/// The audit checkpoints' sequence numbers the issuers signed (their `ids.sequence`):
/// the chain hashes the gateway's side must read to match them.
pub fn checkpoint_seqs(logs: &[IssuerLog]) -> Vec<u64> {
    logs.iter()
        .flat_map(|l| &l.records)
        .filter_map(|r| r.ids.sequence)
        .collect()
}

/// Where and why a signing log stops verifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogBreak {
    /// The `seq` the bad line should have had.
    pub seq: u64,
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: u64,
    pub reason: String,
}

/// Reads every `signlog-<seq>.jsonl` in `dir`, in order, and verifies the chain. A
/// broken chain is not an error: the records before the break are returned, with the
/// break. Fails only when the directory or a file cannot be read.
pub fn read_issuer_log(dir: &Path) -> Result<IssuerLog, AuditError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_context(e, "listing", dir))? {
        let entry = entry.map_err(|e| io_context(e, "listing", dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_file_name) {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    let mut log = IssuerLog {
        dir: dir.to_owned(),
        records: Vec::new(),
        broken: None,
        resumed_at: None,
        torn_tail_bytes: 0,
        files: files.len(),
    };
    let mut verifier: Option<ChainVerifier> = None;
    let count = files.len();
    'files: for (i, (named_seq, path)) in files.into_iter().enumerate() {
        let text = std::fs::read(&path).map_err(|e| io_context(e, "reading", &path))?;
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let torn_older = complete < text.len() && i + 1 < count;
        if complete < text.len() && !torn_older {
            log.torn_tail_bytes = text.len() - complete;
        }
        let body = text[..complete].strip_suffix(b"\n").unwrap_or_default();
        for (n, line) in body
            .split(|b| *b == b'\n')
            .enumerate()
            .take_while(|_| complete > 0)
        {
            let line_no = n as u64 + 1;
            let v = verifier.get_or_insert_with(|| {
                // The first record present decides where verification starts.
                match serde_json::from_slice::<SignlogRecord>(line) {
                    Ok(r) if r.seq > FIRST_SEQ => {
                        log.resumed_at = Some(r.seq);
                        ChainVerifier::resume(r.seq - 1, &r.prev_hash)
                    }
                    _ => ChainVerifier::new(),
                }
            });
            let expected = v.head().last_seq + 1;
            let text_line = match std::str::from_utf8(line) {
                Ok(t) => t,
                Err(_) => {
                    log.broken = Some(LogBreak {
                        seq: expected,
                        file: path.clone(),
                        line: line_no,
                        reason: "not UTF-8".into(),
                    });
                    break 'files;
                }
            };
            match v.push(text_line) {
                Ok(record) => {
                    if n == 0 && record.seq != named_seq {
                        log.broken = Some(LogBreak {
                            seq: record.seq,
                            file: path.clone(),
                            line: line_no,
                            reason: format!(
                                "the file is named for seq {named_seq} but starts at {}",
                                record.seq
                            ),
                        });
                        break 'files;
                    }
                    log.records.push(record);
                }
                Err(b) => {
                    log.broken = Some(LogBreak {
                        seq: b.seq,
                        file: path.clone(),
                        line: line_no,
                        reason: b.damage.to_string(),
                    });
                    break 'files;
                }
            }
        }
        if torn_older {
            // Its complete lines verified; what follows them cannot be trusted.
            log.broken = Some(LogBreak {
                seq: verifier
                    .as_ref()
                    .map_or(named_seq, |v| v.head().last_seq + 1),
                file: path.clone(),
                line: text[..complete].iter().filter(|b| **b == b'\n').count() as u64 + 1,
                reason: "an older file ends in an incomplete line".into(),
            });
            break;
        }
    }
    Ok(log)
}

fn io_context(e: std::io::Error, what: &str, path: &Path) -> AuditError {
    AuditError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

// ---------------------------------------------------------------------------------
// The gateway's side
// ---------------------------------------------------------------------------------

/// The audit records and checkpoints reconcile needs.
#[derive(Debug, Clone, Default)]
pub struct GatewayView {
    /// `database` or `export <path>`.
    pub source: String,
    /// Chained records of the actions reconcile reads (others are skipped), in order.
    pub records: Vec<GatewayRecord>,
    /// Chained records read in total (of any action).
    pub records_read: u64,
    /// Every stored checkpoint.
    pub checkpoints: Vec<SignedCheckpoint>,
    /// Chain hashes (hex) at the sequence numbers the issuer's checkpoints name.
    pub chain_hashes: HashMap<u64, String>,
    /// Every stored tree checkpoint (`None`: the source has none to compare, e.g. an
    /// export, whose format carries only the chain's checkpoints).
    pub log_checkpoints: Option<Vec<crate::tree::StoredLogCheckpoint>>,
    /// The export was filtered (by time, sequence, tenant or action): records may be
    /// missing from it, so "signed, never recorded" may be wrong for signatures
    /// outside what it holds.
    pub selection: bool,
}

/// What reconcile reads of one chained record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    pub seq: u64,
    pub record: Record,
}

/// The actions whose records reconcile reads.
const READ_ACTIONS: [&str; 6] = [
    actions::CODE_MINT,
    actions::CODE_REDEEM,
    actions::APPLIANCE_CHECK_IN,
    actions::MAIL_SENT,
    actions::TENANT_REGISTER,
    actions::CODE_REISSUE,
];

fn keep(record: &Record) -> bool {
    READ_ACTIONS.contains(&record.action.as_str())
}

/// Reads the gateway's side from the database, in one consistent snapshot: chained
/// records from `opts.since - failed_request_window` on, every checkpoint, and the
/// chain hashes at `checkpoint_seqs`.
pub async fn load_database(
    client: &mut tokio_postgres::Client,
    opts: &ReconcileOptions,
    checkpoint_seqs: &[u64],
) -> Result<GatewayView, AuditError> {
    let tx = store::snapshot(client).await?;
    let mut view = GatewayView {
        source: "database".into(),
        ..GatewayView::default()
    };
    let mut q = EventQuery {
        since: opts.read_records_since(),
        ..EventQuery::default()
    };
    loop {
        let page = store::list_events(&tx, &q).await?;
        let Some(last) = page.last() else { break };
        q.after_seq = last.seq;
        for r in &page {
            view.records_read += 1;
            let record = r.record()?;
            if keep(&record) {
                view.records.push(GatewayRecord { seq: r.seq, record });
            }
        }
    }
    view.checkpoints = store::all_checkpoints(&tx).await?;
    view.log_checkpoints = Some(crate::tree::list_checkpoints(&tx).await?);
    // Only signed checkpoints that were not stored need the chain's hash.
    let stored: HashSet<u64> = view.checkpoints.iter().map(|c| c.sequence).collect();
    let unstored: HashSet<u64> = checkpoint_seqs
        .iter()
        .copied()
        .filter(|s| !stored.contains(s))
        .collect();
    for seq in unstored {
        let Some(after_seq) = seq.checked_sub(1) else {
            continue;
        };
        let q = EventQuery {
            after_seq,
            limit: 1,
            ..EventQuery::default()
        };
        if let Some(r) = store::list_events(&tx, &q).await?.first()
            && r.seq == seq
        {
            view.chain_hashes.insert(seq, hex::encode(r.hash));
        }
    }
    tx.commit().await?;
    Ok(view)
}

/// Reads the gateway's side from an export file (`FORMAT.md`). Each record line must
/// hash to its own `hash` (run `alga-audit verify` for the chain and the checkpoint
/// signatures); a line that does not is an error.
pub fn load_export(
    path: &Path,
    opts: &ReconcileOptions,
    checkpoint_seqs: &[u64],
) -> Result<GatewayView, AuditError> {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    #[derive(Deserialize)]
    struct RecordLine<'a> {
        seq: u64,
        prev_hash: &'a str,
        hash: &'a str,
        #[serde(borrow)]
        record: &'a RawValue,
    }
    let wanted: HashSet<u64> = checkpoint_seqs.iter().copied().collect();
    let read_since = opts.read_records_since();
    let mut view = GatewayView {
        source: format!("export {}", path.display()),
        ..GatewayView::default()
    };
    let reader = BufReader::new(File::open(path).map_err(|e| io_context(e, "opening", path))?);
    let mut header_seen = false;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let line = line?;
        let bad = |reason: String| AuditError::Export {
            line: line_no,
            reason,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let kind: Kind<'_> =
            serde_json::from_slice(line).map_err(|e| bad(format!("not an export line: {e}")))?;
        match (kind.kind, header_seen) {
            ("header", false) => {
                let h: ExportHeader =
                    serde_json::from_slice(line).map_err(|e| bad(format!("bad header: {e}")))?;
                if h.format != EXPORT_FORMAT {
                    return Err(bad(format!("unknown export format {:?}", h.format)));
                }
                view.selection = h.filter.is_selection() || h.filter.since_seq > 1;
                header_seen = true;
            }
            (_, false) => return Err(bad("the first line must be the export header".into())),
            ("checkpoint", true) => {
                let cp: SignedCheckpoint = serde_json::from_slice(line)
                    .map_err(|e| bad(format!("bad checkpoint line: {e}")))?;
                view.checkpoints.push(cp);
            }
            ("record", true) => {
                let l: RecordLine<'_> = serde_json::from_slice(line)
                    .map_err(|e| bad(format!("bad record line: {e}")))?;
                let prev = hash32(l.prev_hash).ok_or_else(|| bad("bad prev_hash".into()))?;
                let hash = hash32(l.hash).ok_or_else(|| bad("bad hash".into()))?;
                let bytes = l.record.get().as_bytes();
                if chain_hash(&prev, l.seq, bytes) != hash {
                    return Err(bad(format!(
                        "record seq {} does not hash to its hash: the export is damaged \
                         (alga-audit verify --export names the first bad record)",
                        l.seq
                    )));
                }
                view.records_read += 1;
                if wanted.contains(&l.seq) {
                    view.chain_hashes.insert(l.seq, hex::encode(hash));
                }
                let record = Record::from_canonical(bytes)
                    .map_err(|e| bad(format!("record seq {}: {e}", l.seq)))?;
                if keep(&record) && read_since.is_none_or(|s| record.time >= s) {
                    view.records.push(GatewayRecord { seq: l.seq, record });
                }
            }
            (other, true) => return Err(bad(format!("unexpected line type {other:?}"))),
        }
    }
    if !header_seen {
        return Err(AuditError::Export {
            line: 1,
            reason: "empty file: no export header".into(),
        });
    }
    Ok(view)
}

fn hash32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

// ---------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------

/// The outcome of a reconciliation. [`ReconcileReport::reconciled`] says whether it
/// is clean.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub logs: Vec<LogSummary>,
    pub gateway: GatewaySummary,
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Signatures in the window, from every log.
    pub signatures_checked: u64,
    /// Gateway records in the window that claim a signature (and stored checkpoints).
    pub claims_checked: u64,
    /// Signatures matched, by `op`.
    pub matched: BTreeMap<String, u64>,
    /// Signed by the issuer, never recorded by the gateway.
    pub unrecorded: Vec<Signature>,
    /// Recorded by the gateway as signed, absent from the issuer's log.
    pub absent: Vec<Claim>,
    /// Signed during a request that failed (rolled back, then recorded as a failure).
    pub failed_request: Vec<FailedRequestSignature>,
    /// Matched by id, but the two sides disagree on something else.
    pub mismatched: Vec<Mismatch>,
}

impl ReconcileReport {
    /// Every log verified, and nothing unrecorded, absent or mismatched. Signatures in
    /// failed requests are for review; they do not count here.
    pub fn reconciled(&self) -> bool {
        self.logs.iter().all(|l| l.broken.is_none())
            && self.unrecorded.is_empty()
            && self.absent.is_empty()
            && self.mismatched.is_empty()
    }

    /// [`reconciled`](Self::reconciled), and with `strict`, no signature in a failed
    /// request either: what `alga-audit reconcile` exits 0 on.
    pub fn passes(&self, strict: bool) -> bool {
        self.reconciled() && (!strict || self.failed_request.is_empty())
    }
}

/// One signing log's verification.
#[derive(Debug, Clone, Serialize)]
pub struct LogSummary {
    pub dir: PathBuf,
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Verified from this seq on, older files being absent.
    pub resumed_at: Option<u64>,
    pub torn_tail_bytes: usize,
    pub broken: Option<LogBreak>,
}

/// What was read of the gateway's side.
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySummary {
    pub source: String,
    pub records_read: u64,
    pub checkpoints: u64,
    pub selection: bool,
}

/// A signing operation from an issuer's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    /// The log's directory.
    pub log: PathBuf,
    /// Its `seq` in that log.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub op: SignOp,
    /// The natural id (code_id, jti, serial or checkpoint sequence).
    pub id: String,
    pub tenant_id: Option<Uuid>,
    pub appliance_id: Option<Uuid>,
    pub edition: Option<String>,
    /// Why it did not match, when there is more to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A gateway record (or stored checkpoint) that says something was signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// The record's sequence number; for a stored checkpoint, the sequence it covers.
    pub audit_seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The record's action, or `checkpoint` for a stored checkpoint.
    pub action: String,
    pub op: SignOp,
    pub id: String,
    pub tenant_id: Option<Uuid>,
}

/// A signature accounted for by a failure record (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedRequestSignature {
    pub signature: Signature,
    /// The failure record's sequence number (`None` for a checkpoint that was signed
    /// for the chain's true head but not stored).
    pub failure_seq: Option<u64>,
    pub failure_action: Option<String>,
    pub error_code: Option<String>,
}

/// Two sides matched by id that disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub log: PathBuf,
    pub log_seq: u64,
    pub audit_seq: u64,
    pub op: SignOp,
    pub id: String,
    /// What differs, e.g. `tenant_id: issuer … gateway …`.
    pub detail: String,
}

/// The natural id of a signing operation, if it has one.
fn natural_id(r: &SignlogRecord) -> Option<String> {
    match r.op {
        SignOp::CodeMint | SignOp::CodeDerive => r.ids.code_id.as_ref().map(|c| c.to_string()),
        SignOp::License => r.ids.jti.map(|j| j.to_string()),
        SignOp::Credential => r.ids.serial.as_ref().map(|s| s.to_ascii_lowercase()),
        // reconciled against audit_log_checkpoints by the audit crate
        SignOp::Checkpoint | SignOp::LogCheckpoint => r.ids.sequence.map(|s| s.to_string()),
    }
}

/// What a success record says was signed: `(op, id)` pairs (the matching table).
fn claims_of(record: &Record) -> Vec<(SignOp, String)> {
    if !record.outcome.is_success() {
        return Vec::new();
    }
    let subject = |k: &str| record.subjects.get(k).cloned();
    let mut out = Vec::new();
    match record.action.as_str() {
        actions::CODE_MINT => out.extend(subject("code_id").map(|c| (SignOp::CodeMint, c))),
        actions::CODE_REDEEM | actions::APPLIANCE_CHECK_IN => {
            out.extend(subject("jti").map(|j| (SignOp::License, j.to_ascii_lowercase())));
            out.extend(subject("serial").map(|s| (SignOp::Credential, s.to_ascii_lowercase())));
        }
        actions::MAIL_SENT => out.extend(subject("code_id").map(|c| (SignOp::CodeDerive, c))),
        _ => {}
    }
    out
}

fn signature(log: &IssuerLog, r: &SignlogRecord, id: String, note: Option<String>) -> Signature {
    Signature {
        log: log.dir.clone(),
        seq: r.seq,
        time: r.time,
        op: r.op,
        id,
        tenant_id: r.ids.tenant_id,
        appliance_id: r.ids.appliance_id,
        edition: r.ids.edition.clone(),
        note,
    }
}

/// Matches the issuers' logs against the gateway's records (module docs).
pub fn reconcile(
    logs: &[IssuerLog],
    gateway: &GatewayView,
    opts: &ReconcileOptions,
) -> ReconcileReport {
    let mut report = ReconcileReport::new(logs, gateway, opts);
    let claims = GatewayClaims::new(gateway);
    let candidates = match_signatures(&mut report, logs, &claims, opts);
    account_for_failures(&mut report, candidates, gateway, opts);
    find_absent(&mut report, logs, gateway, opts);
    report
}

impl ReconcileReport {
    /// The summaries of both sides, nothing matched yet.
    fn new(logs: &[IssuerLog], gateway: &GatewayView, opts: &ReconcileOptions) -> Self {
        ReconcileReport {
            logs: logs
                .iter()
                .map(|l| LogSummary {
                    dir: l.dir.clone(),
                    files: l.files,
                    records: l.records.len() as u64,
                    first_seq: l.records.first().map(|r| r.seq),
                    last_seq: l.records.last().map(|r| r.seq),
                    resumed_at: l.resumed_at,
                    torn_tail_bytes: l.torn_tail_bytes,
                    broken: l.broken.clone(),
                })
                .collect(),
            gateway: GatewaySummary {
                source: gateway.source.clone(),
                records_read: gateway.records_read,
                checkpoints: gateway.checkpoints.len() as u64,
                selection: gateway.selection,
            },
            since: opts.since,
            until: opts.until,
            signatures_checked: 0,
            claims_checked: 0,
            matched: BTreeMap::new(),
            unrecorded: Vec::new(),
            absent: Vec::new(),
            failed_request: Vec::new(),
            mismatched: Vec::new(),
        }
    }
}

/// The gateway's side, indexed for matching signatures.
struct GatewayClaims<'a> {
    gateway: &'a GatewayView,
    /// The records' claims, by (op, id).
    records: HashMap<(SignOp, String), Vec<&'a GatewayRecord>>,
    /// Stored checkpoints, by sequence number.
    checkpoints: HashMap<u64, &'a SignedCheckpoint>,
    /// Stored tree checkpoints, by size (`None` when the source has none to read).
    log_checkpoints: Option<HashMap<u64, &'a crate::tree::StoredLogCheckpoint>>,
}

impl<'a> GatewayClaims<'a> {
    fn new(gateway: &'a GatewayView) -> Self {
        let mut records: HashMap<(SignOp, String), Vec<&GatewayRecord>> = HashMap::new();
        for g in &gateway.records {
            for key in claims_of(&g.record) {
                records.entry(key).or_default().push(g);
            }
        }
        GatewayClaims {
            gateway,
            records,
            checkpoints: gateway
                .checkpoints
                .iter()
                .map(|c| (c.sequence, c))
                .collect(),
            log_checkpoints: gateway
                .log_checkpoints
                .as_ref()
                .map(|all| all.iter().map(|c| (c.size, c)).collect()),
        }
    }
}

/// How one signature fared against the gateway's side.
enum Matched {
    /// The gateway recorded it.
    Yes,
    /// Not recorded: a derive is unrecorded, anything else may be a failed request.
    No,
    /// Already put in the report (unrecorded, failed request), or not checkable.
    Settled,
}

/// Matches every signature in the window against the gateway's claims. Returns the
/// unmatched mints, licenses and credentials, for [`account_for_failures`].
fn match_signatures(
    report: &mut ReconcileReport,
    logs: &[IssuerLog],
    claims: &GatewayClaims<'_>,
    opts: &ReconcileOptions,
) -> Vec<Signature> {
    // Mints before the window: their derives are accounted for by an earlier run.
    let minted_before: HashSet<String> = logs
        .iter()
        .flat_map(|l| &l.records)
        .filter(|r| r.op == SignOp::CodeMint && opts.since.is_some_and(|s| r.time < s))
        .filter_map(natural_id)
        .collect();
    let mut candidates_for_failure = Vec::new();
    for log in logs {
        for r in log.records.iter().filter(|r| opts.in_window(r.time)) {
            report.signatures_checked += 1;
            let Some(id) = natural_id(r) else {
                report.unrecorded.push(signature(
                    log,
                    r,
                    String::new(),
                    Some(format!("a {} record without its natural id", r.op)),
                ));
                continue;
            };
            let matched = match r.op {
                SignOp::LogCheckpoint | SignOp::Checkpoint => {
                    match_checkpoint(report, claims, log, r, id.clone())
                }
                SignOp::CodeDerive => {
                    if claims.records.contains_key(&(SignOp::CodeMint, id.clone()))
                        || claims
                            .records
                            .contains_key(&(SignOp::CodeDerive, id.clone()))
                        || minted_before.contains(&id)
                    {
                        Matched::Yes
                    } else {
                        Matched::No
                    }
                }
                SignOp::CodeMint | SignOp::License | SignOp::Credential => {
                    match claims.records.get(&(r.op, id.clone())) {
                        Some(records) => {
                            check_same_subjects(report, log, r, &id, records);
                            Matched::Yes
                        }
                        None => Matched::No,
                    }
                }
            };
            match matched {
                Matched::Yes => *report.matched.entry(r.op.to_string()).or_default() += 1,
                Matched::No if r.op == SignOp::CodeDerive => report.unrecorded.push(signature(
                    log,
                    r,
                    id,
                    Some("a derive of a code whose mint the gateway never recorded".into()),
                )),
                Matched::No => candidates_for_failure.push(signature(log, r, id, None)),
                Matched::Settled => {}
            }
        }
    }
    candidates_for_failure
}

/// A checkpoint against the stored ones: of the tree by size (a tree size is not an
/// audit sequence, a root hash not a head hash), of the chain by sequence number and,
/// not stored, against the chain's hash there.
fn match_checkpoint(
    report: &mut ReconcileReport,
    claims: &GatewayClaims<'_>,
    log: &IssuerLog,
    r: &SignlogRecord,
    id: String,
) -> Matched {
    let at = r.ids.sequence.unwrap_or_default();
    let (what, stored) = if r.op == SignOp::LogCheckpoint {
        let Some(stored_log) = &claims.log_checkpoints else {
            return Matched::Settled;
        };
        let Some(cp) = stored_log.get(&at) else {
            // Signed and never stored: the sequencer's call timed out or it lost its
            // leadership first. Listed for review.
            report
                .failed_request
                .push(unstored(log, r, id, "tree checkpoint signed, not stored"));
            return Matched::Settled;
        };
        ("root", cp.root_hex.as_str())
    } else {
        let Some(cp) = claims.checkpoints.get(&at) else {
            let truth = claims.gateway.chain_hashes.get(&at);
            if truth.is_some() && truth.map(String::as_str) == r.ids.head_hash.as_deref() {
                report.failed_request.push(unstored(
                    log,
                    r,
                    id,
                    "signed for the chain's true head, not stored",
                ));
            } else {
                let note = match truth {
                    Some(_) => {
                        "not stored, and its head hash is not the chain's hash at that sequence"
                    }
                    None => "not stored, and that sequence is not in the records read",
                };
                report
                    .unrecorded
                    .push(signature(log, r, id, Some(note.into())));
            }
            return Matched::Settled;
        };
        ("head_hash", cp.head_hash.as_str())
    };
    let signed = r.ids.head_hash.as_deref();
    if signed != Some(stored) {
        report.mismatched.push(Mismatch {
            log: log.dir.clone(),
            log_seq: r.seq,
            audit_seq: at,
            op: r.op,
            id,
            detail: format!("{what}: issuer {} stored {stored}", signed.unwrap_or("-")),
        });
    }
    Matched::Yes
}

/// A checkpoint the issuer signed and the gateway did not store, listed for review:
/// no failure record accounts for it.
fn unstored(log: &IssuerLog, r: &SignlogRecord, id: String, note: &str) -> FailedRequestSignature {
    FailedRequestSignature {
        signature: signature(log, r, id, Some(note.into())),
        failure_seq: None,
        failure_action: None,
        error_code: None,
    }
}

/// Unmatched mints, licenses and credentials: signed during a failed request (a
/// failure record accounts for each), or unrecorded.
fn account_for_failures(
    report: &mut ReconcileReport,
    mut candidates: Vec<Signature>,
    gateway: &GatewayView,
    opts: &ReconcileOptions,
) {
    let mut failures = FailureIndex::new(gateway);
    candidates.sort_by_key(|s| s.time);
    for s in candidates {
        match failures.take(&s, opts) {
            Some(f) => report.failed_request.push(FailedRequestSignature {
                signature: s,
                failure_seq: Some(f.seq),
                failure_action: Some(f.record.action.as_str().to_owned()),
                error_code: match &f.record.outcome {
                    Outcome::Failure { error_code } => Some(error_code.clone()),
                    Outcome::Success => None,
                },
            }),
            None => report.unrecorded.push(s),
        }
    }
}

/// The other direction: the gateway's claims in the window (records, stored
/// checkpoints and tree checkpoints) absent from every issuer log.
fn find_absent(
    report: &mut ReconcileReport,
    logs: &[IssuerLog],
    gateway: &GatewayView,
    opts: &ReconcileOptions,
) {
    // The issuers' signatures, by (op, id) (all of them, not only the window's).
    let signed: HashSet<(SignOp, String)> = logs
        .iter()
        .flat_map(|l| &l.records)
        .filter_map(|r| natural_id(r).map(|id| (r.op, id)))
        .collect();
    let mut check = |claim: Claim| {
        report.claims_checked += 1;
        if !signed.contains(&(claim.op, claim.id.clone())) {
            report.absent.push(claim);
        }
    };
    for g in gateway
        .records
        .iter()
        .filter(|g| opts.in_window(g.record.time))
    {
        for (op, id) in claims_of(&g.record) {
            check(Claim {
                audit_seq: g.seq,
                time: g.record.time,
                action: g.record.action.as_str().to_owned(),
                op,
                id,
                tenant_id: g.record.tenant_id,
            });
        }
    }
    for cp in gateway
        .checkpoints
        .iter()
        .filter(|c| opts.in_window(c.signed_at))
    {
        check(Claim {
            audit_seq: cp.sequence,
            time: cp.signed_at,
            action: "checkpoint".into(),
            op: SignOp::Checkpoint,
            id: cp.sequence.to_string(),
            tenant_id: None,
        });
    }
    for cp in gateway
        .log_checkpoints
        .iter()
        .flatten()
        .filter(|c| opts.in_window(c.stored_at))
    {
        check(Claim {
            audit_seq: cp.size,
            time: cp.stored_at,
            action: "log_checkpoint".into(),
            op: SignOp::LogCheckpoint,
            id: cp.size.to_string(),
            tenant_id: None,
        });
    }
}

/// Reports a matched signature whose tenant or appliance differs from every record
/// that claims it.
fn check_same_subjects(
    report: &mut ReconcileReport,
    log: &IssuerLog,
    r: &SignlogRecord,
    id: &str,
    records: &[&GatewayRecord],
) {
    for g in records {
        let mut diffs = Vec::new();
        if let (Some(a), Some(b)) = (r.ids.tenant_id, g.record.tenant_id)
            && a != b
        {
            diffs.push(format!("tenant_id: issuer {a} gateway {b}"));
        }
        if let (Some(a), Some(b)) = (r.ids.appliance_id, g.record.subjects.get("appliance_id"))
            && a.to_string() != *b
        {
            diffs.push(format!("appliance_id: issuer {a} gateway {b}"));
        }
        if !diffs.is_empty() {
            report.mismatched.push(Mismatch {
                log: log.dir.clone(),
                log_seq: r.seq,
                audit_seq: g.seq,
                op: r.op,
                id: id.to_owned(),
                detail: diffs.join("; "),
            });
        }
    }
}

/// Failure records that may account for a signature, each usable once per `op`.
struct FailureIndex<'a> {
    failures: Vec<&'a GatewayRecord>,
    used: HashSet<(u64, SignOp)>,
}

impl<'a> FailureIndex<'a> {
    fn new(gateway: &'a GatewayView) -> FailureIndex<'a> {
        let mut failures: Vec<&GatewayRecord> = gateway
            .records
            .iter()
            .filter(|g| !g.record.outcome.is_success())
            .collect();
        failures.sort_by_key(|g| g.record.time);
        FailureIndex {
            failures,
            used: HashSet::new(),
        }
    }

    /// The latest unused failure record that could have made `s` (module docs).
    fn take(&mut self, s: &Signature, opts: &ReconcileOptions) -> Option<&'a GatewayRecord> {
        let found = self
            .failures
            .iter()
            .rev()
            .filter(|f| !self.used.contains(&(f.seq, s.op)))
            .filter(|f| {
                f.record.time <= s.time + opts.clock_skew
                    && s.time <= f.record.time + opts.failed_request_window
            })
            .find(|f| could_have_signed(&f.record, s))
            .copied()?;
        self.used.insert((found.seq, s.op));
        Some(found)
    }
}

fn could_have_signed(f: &Record, s: &Signature) -> bool {
    let same_tenant = f.tenant_id.is_some() && f.tenant_id == s.tenant_id;
    match (s.op, f.action.as_str()) {
        (
            SignOp::License | SignOp::Credential,
            actions::CODE_REDEEM | actions::APPLIANCE_CHECK_IN,
        ) => {
            let appliance_ok = match (f.subjects.get("appliance_id"), s.appliance_id) {
                (Some(a), Some(b)) => *a == b.to_string(),
                _ => true,
            };
            same_tenant && appliance_ok
        }
        (SignOp::CodeMint, actions::CODE_REISSUE) => f.tenant_id.is_none() || same_tenant,
        (SignOp::CodeMint, actions::TENANT_REGISTER) => {
            f.tenant_id.is_none()
                && s.edition.is_some()
                && f.details.get("edition").and_then(|e| e.as_str()) == s.edition.as_deref()
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail by panicking
mod tests {
    use std::collections::BTreeMap;

    use alga_protocol::signlog::{GENESIS_HASH, SignEvent, SignIds, file_name};
    use serde_json::json;
    use time::macros::datetime;

    use super::*;
    use crate::record::{Action, Actor};

    const T: OffsetDateTime = datetime!(2030-01-01 12:00 UTC);

    fn tenant(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn failure(action: &str, tenant_id: Option<Uuid>, appliance: Option<Uuid>) -> Record {
        let mut subjects = BTreeMap::new();
        if let Some(a) = appliance {
            subjects.insert("appliance_id".to_owned(), a.to_string());
        }
        let mut details = serde_json::Map::new();
        details.insert("edition".into(), json!("pro"));
        Record {
            time: T,
            actor: Actor::anonymous(),
            action: Action::new(action).unwrap(),
            tenant_id,
            subjects,
            outcome: Outcome::failure("license_service_unavailable").unwrap(),
            request_id: None,
            source: None,
            details,
        }
    }

    fn sig(
        op: SignOp,
        tenant_id: Option<Uuid>,
        appliance: Option<Uuid>,
        edition: &str,
    ) -> Signature {
        Signature {
            log: PathBuf::from("/log"),
            seq: 1,
            time: T,
            op,
            id: "x".into(),
            tenant_id,
            appliance_id: appliance,
            edition: Some(edition.into()),
            note: None,
        }
    }

    #[test]
    fn which_failure_records_can_account_for_a_signature() {
        let (t1, t2, a1, a2) = (tenant(1), tenant(2), tenant(11), tenant(12));
        use SignOp::*;
        type Row = (
            SignOp,
            Option<Uuid>,
            Option<Uuid>,
            &'static str,
            &'static str,
            Option<Uuid>,
            Option<Uuid>,
            bool,
        );
        #[rustfmt::skip]
        let table: &[Row] = &[
            // op, sig tenant, sig appliance, sig edition, failed action, its tenant, its appliance, accounts?
            (License, Some(t1), Some(a1), "pro", "code.redeem", Some(t1), None, true),
            (Credential, Some(t1), Some(a1), "pro", "code.redeem", Some(t1), None, true),
            (License, Some(t1), Some(a1), "pro", "code.redeem", Some(t2), None, false),
            // a redeem whose code did not verify names no tenant and signed nothing
            (License, Some(t1), Some(a1), "pro", "code.redeem", None, None, false),
            (License, Some(t1), Some(a1), "pro", "appliance.check_in", Some(t1), Some(a1), true),
            (License, Some(t1), Some(a1), "pro", "appliance.check_in", Some(t1), Some(a2), false),
            (License, Some(t1), Some(a1), "pro", "code.reissue", Some(t1), None, false),
            (CodeMint, Some(t1), None, "pro", "code.reissue", Some(t1), None, true),
            (CodeMint, Some(t1), None, "pro", "code.reissue", None, None, true),
            (CodeMint, Some(t1), None, "pro", "code.reissue", Some(t2), None, false),
            (CodeMint, Some(t1), None, "pro", "tenant.register", None, None, true),
            (CodeMint, Some(t1), None, "essentials", "tenant.register", None, None, false),
            // tenant_exists: it never got as far as minting
            (CodeMint, Some(t1), None, "pro", "tenant.register", Some(t1), None, false),
            (CodeMint, Some(t1), None, "pro", "code.redeem", Some(t1), None, false),
            (Checkpoint, None, None, "pro", "code.redeem", Some(t1), None, false),
        ];
        for (i, &(op, st, sa, ed, action, ft, fa, want)) in table.iter().enumerate() {
            let got = could_have_signed(&failure(action, ft, fa), &sig(op, st, sa, ed));
            assert_eq!(got, want, "row {i}: {op} by {action}");
        }
    }

    #[test]
    fn a_failure_accounts_for_one_signature_of_a_kind_within_its_window() {
        let view = GatewayView {
            records: vec![GatewayRecord {
                seq: 9,
                record: failure("code.redeem", Some(tenant(1)), None),
            }],
            ..GatewayView::default()
        };
        let opts = ReconcileOptions::new(T + Duration::hours(1));
        let mut idx = FailureIndex::new(&view);
        let mut s = sig(SignOp::License, Some(tenant(1)), Some(tenant(11)), "pro");
        s.time = T + opts.failed_request_window + Duration::seconds(1);
        assert!(idx.take(&s, &opts).is_none(), "too late");
        s.time = T - opts.clock_skew - Duration::seconds(1);
        assert!(idx.take(&s, &opts).is_none(), "before the request began");
        s.time = T + Duration::seconds(3);
        assert_eq!(idx.take(&s, &opts).map(|f| f.seq), Some(9));
        assert!(idx.take(&s, &opts).is_none(), "used once per kind");
        let c = Signature {
            op: SignOp::Credential,
            ..s.clone()
        };
        assert!(idx.take(&c, &opts).is_some());
    }

    fn lines(n: u64) -> Vec<String> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let e = SignEvent {
                    time: T,
                    op: SignOp::License,
                    ids: SignIds {
                        jti: Some(Uuid::from_u128(u128::from(seq))),
                        ..SignIds::default()
                    },
                    kid: "k".into(),
                };
                let r = SignlogRecord::seal(e, seq, &prev).unwrap();
                prev = r.hash.clone();
                r.to_line().unwrap() + "\n"
            })
            .collect()
    }

    #[test]
    fn reading_a_log_torn_archived_misnamed_and_stray_files() {
        let l = lines(6);
        // A torn last line is ignored and counted; other files are not log files.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(1)), l[..3].concat()).unwrap();
        std::fs::write(
            dir.path().join(file_name(4)),
            l[3..].concat() + "{\"seq\":7,",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let log = read_issuer_log(dir.path()).unwrap();
        assert_eq!(log.records.len(), 6);
        assert_eq!((log.files, log.torn_tail_bytes, log.broken), (2, 9, None));

        // Older files archived: verified from the first present, trusting its prev_hash.
        std::fs::remove_file(dir.path().join(file_name(1))).unwrap();
        let log = read_issuer_log(dir.path()).unwrap();
        assert_eq!((log.records.len(), log.resumed_at), (3, Some(4)));
        assert!(log.broken.is_none());

        // A file named for another seq than its first record's.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(1)), l[..3].concat()).unwrap();
        std::fs::write(dir.path().join(file_name(5)), l[3..].concat()).unwrap();
        let b = read_issuer_log(dir.path()).unwrap().broken.unwrap();
        assert_eq!((b.seq, b.line), (4, 1));

        // A gap between files (a file removed) breaks at the missing seq.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(1)), l[..2].concat()).unwrap();
        std::fs::write(dir.path().join(file_name(4)), l[3..].concat()).unwrap();
        let log = read_issuer_log(dir.path()).unwrap();
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.broken.unwrap().seq, 3);

        // An older file that ends in an incomplete line.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(1)), l[..2].concat() + "{\"se").unwrap();
        std::fs::write(dir.path().join(file_name(3)), l[2..].concat()).unwrap();
        let log = read_issuer_log(dir.path()).unwrap();
        assert_eq!(log.records.len(), 2);
        let b = log.broken.unwrap();
        assert_eq!((b.seq, b.line), (3, 3));

        // An empty directory is an empty, intact log; a missing one is an error.
        let dir = tempfile::tempdir().unwrap();
        let log = read_issuer_log(dir.path()).unwrap();
        assert!(log.records.is_empty() && log.broken.is_none());
        assert!(read_issuer_log(&dir.path().join("absent")).is_err());
    }
}
