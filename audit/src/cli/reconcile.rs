//! `reconcile`: the issuer's signing logs against the audit records, from the
//! database or an export.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use alga_audit::reconcile::{self, ReconcileOptions, ReconcileReport};
use anyhow::Context;
use clap::Args;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{Database, passed};

// `reconcile`'s arguments (plain comments: a doc comment here would be clap's help).
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// An issuer's signing-log directory (`signlog-*.jsonl`); repeat for each issuer.
    #[arg(long, required = true)]
    issuer_log: Vec<PathBuf>,
    /// Read the audit records from this export instead of the database.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Check signatures and records from this RFC 3339 time on.
    #[arg(long)]
    since: Option<String>,
    /// Check up to this RFC 3339 time (default: two minutes ago, so that requests
    /// in flight are not reported).
    #[arg(long)]
    until: Option<String>,
    /// How long a failed request may have run before a signature it made, e.g. 2m.
    #[arg(long, default_value = "2m")]
    failed_request_window: String,
    /// Also fail on signatures made during failed requests (matched to a failure
    /// record by tenant and time, not by id).
    #[arg(long)]
    strict: bool,
}

/// `reconcile`: exit 0 only when nothing is unrecorded, absent or mismatched (and,
/// with `--strict`, nothing was signed during a failed request) and every issuer log
/// verifies.
pub async fn run(db: &Database, args: &ReconcileArgs, json: bool) -> anyhow::Result<ExitCode> {
    let opts = options(args)?;
    let mut logs = Vec::new();
    for dir in &args.issuer_log {
        logs.push(
            reconcile::read_issuer_log(dir)
                .with_context(|| format!("issuer log {}", dir.display()))?,
        );
    }
    let checkpoint_seqs = reconcile::checkpoint_seqs(&logs);
    let gateway = match &args.export {
        Some(path) => {
            let (path, o) = (path.clone(), opts.clone());
            tokio::task::spawn_blocking(move || reconcile::load_export(&path, &o, &checkpoint_seqs))
                .await??
        }
        None => {
            let mut client = db.connect().await?;
            reconcile::load_database(&mut client, &opts, &checkpoint_seqs).await?
        }
    };
    let report = reconcile::reconcile(&logs, &gateway, &opts);
    print_reconcile(&report, args.strict, json)?;
    Ok(passed(report.passes(args.strict)))
}

/// The window and the failed-request window from the flags; "now" is the clock.
fn options(args: &ReconcileArgs) -> anyhow::Result<ReconcileOptions> {
    let parse_time = |flag: &str, s: &str| {
        OffsetDateTime::parse(s, &Rfc3339)
            .with_context(|| format!("{flag} must be an RFC 3339 time"))
    };
    let mut opts = ReconcileOptions::new(OffsetDateTime::now_utc());
    opts.since = args
        .since
        .as_deref()
        .map(|s| parse_time("--since", s))
        .transpose()?;
    if let Some(u) = &args.until {
        opts.until = parse_time("--until", u)?;
    }
    opts.failed_request_window = alga_policies::parse_duration(&args.failed_request_window)
        .map_err(|e| anyhow::anyhow!("--failed-request-window: {e}"))?;
    Ok(opts)
}

fn print_reconcile(r: &ReconcileReport, strict: bool, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let clean = r.passes(strict);
    if json {
        let value = serde_json::json!({
            "reconciled": clean,
            "strict": strict,
            "counts": {
                "signatures_checked": r.signatures_checked,
                "claims_checked": r.claims_checked,
                "unrecorded": r.unrecorded.len(),
                "absent": r.absent.len(),
                "failed_request": r.failed_request.len(),
                "mismatched": r.mismatched.len(),
                "broken_logs": r.logs.iter().filter(|l| l.broken.is_some()).count(),
            },
            "report": r,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let time = |t: OffsetDateTime| alga_audit::canonical::format_time(t);
    let opt = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
    for l in &r.logs {
        let range = match (l.first_seq, l.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "no records".into(),
        };
        let state = match &l.broken {
            None => "chain intact".to_owned(),
            Some(b) => format!(
                "BROKEN at seq {} ({} line {}): {}",
                b.seq,
                b.file.display(),
                b.line,
                b.reason
            ),
        };
        writeln!(
            out,
            "issuer log:   {}: {} records in {} files ({range}), {state}",
            l.dir.display(),
            l.records,
            l.files
        )?;
        if let Some(s) = l.resumed_at {
            writeln!(
                out,
                "note:         verified from seq {s} on (older files absent)"
            )?;
        }
        if l.torn_tail_bytes > 0 {
            writeln!(
                out,
                "note:         {} bytes of an incomplete last line ignored (a write cut short)",
                l.torn_tail_bytes
            )?;
        }
    }
    writeln!(
        out,
        "gateway:      {}: {} chained records read, {} checkpoints",
        r.gateway.source, r.gateway.records_read, r.gateway.checkpoints
    )?;
    if r.gateway.selection {
        writeln!(
            out,
            "note:         the export is filtered: signatures whose records were left out show as unrecorded (with a time filter, pass --since at least --failed-request-window after the export's)"
        )?;
    }
    writeln!(
        out,
        "window:       {} to {}",
        r.since.map(time).unwrap_or_else(|| "the start".into()),
        time(r.until)
    )?;
    let matched: Vec<String> = r.matched.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(
        out,
        "checked:      {} signatures, {} gateway claims; matched: {}",
        r.signatures_checked,
        r.claims_checked,
        if matched.is_empty() {
            "none".into()
        } else {
            matched.join(", ")
        }
    )?;

    section(
        &mut out,
        "signed by the issuer, never recorded by the gateway",
        r.unrecorded.len(),
        &format!(
            "  {:<8}  {:<27}  {:<11}  {:<36}  {:<36}  LOG / NOTE",
            "LOG SEQ", "TIME", "OP", "ID", "TENANT"
        ),
    )?;
    for s in &r.unrecorded {
        writeln!(
            out,
            "  {:<8}  {:<27}  {:<11}  {:<36}  {:<36}  {}{}",
            s.seq,
            time(s.time),
            s.op.as_str(),
            s.id,
            opt(s.tenant_id),
            s.log.display(),
            s.note
                .as_ref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        )?;
    }
    section(
        &mut out,
        "recorded by the gateway as signed, absent from the issuer's log",
        r.absent.len(),
        &format!(
            "  {:<8}  {:<27}  {:<20}  {:<11}  {:<36}  TENANT",
            "SEQ", "TIME", "ACTION", "OP", "ID"
        ),
    )?;
    for c in &r.absent {
        writeln!(
            out,
            "  {:<8}  {:<27}  {:<20}  {:<11}  {:<36}  {}",
            c.audit_seq,
            time(c.time),
            c.action,
            c.op.as_str(),
            c.id,
            opt(c.tenant_id)
        )?;
    }
    section(
        &mut out,
        &format!(
            "signed during a failed request (matched by tenant and time, {})",
            if strict {
                "counted as unrecorded: --strict"
            } else {
                "for review"
            }
        ),
        r.failed_request.len(),
        &format!(
            "  {:<8}  {:<27}  {:<11}  {:<36}  {:<36}  ACCOUNTED FOR BY",
            "LOG SEQ", "TIME", "OP", "ID", "TENANT"
        ),
    )?;
    for f in &r.failed_request {
        let s = &f.signature;
        let by = match (&f.failure_seq, &f.failure_action, &f.error_code) {
            (Some(seq), Some(a), code) => format!(
                "failure record seq {seq} ({a}{})",
                code.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
            ),
            _ => s.note.clone().unwrap_or_default(),
        };
        writeln!(
            out,
            "  {:<8}  {:<27}  {:<11}  {:<36}  {:<36}  {by}",
            s.seq,
            time(s.time),
            s.op.as_str(),
            s.id,
            opt(s.tenant_id),
        )?;
    }
    if !r.mismatched.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "matched by id, but the two sides disagree: {}",
            r.mismatched.len()
        )?;
        for m in &r.mismatched {
            writeln!(
                out,
                "  log seq {} / audit seq {}  {} {}: {}",
                m.log_seq,
                m.audit_seq,
                m.op.as_str(),
                m.id,
                m.detail
            )?;
        }
    }
    writeln!(out)?;
    let broken = r.logs.iter().filter(|l| l.broken.is_some()).count();
    if clean {
        writeln!(out, "result:       RECONCILED")?;
    } else {
        writeln!(
            out,
            "result:       DISCREPANCIES: {} unrecorded, {} absent, {} mismatched, {} broken logs{}",
            r.unrecorded.len(),
            r.absent.len(),
            r.mismatched.len(),
            broken,
            if strict {
                format!(", {} in failed requests (--strict)", r.failed_request.len())
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}

/// A list of the report: a blank line, its title with its length, and its column
/// header when it is not empty.
fn section(out: &mut impl Write, title: &str, len: usize, header: &str) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "{title}: {len}")?;
    if len > 0 {
        writeln!(out, "{header}")?;
    }
    Ok(())
}
