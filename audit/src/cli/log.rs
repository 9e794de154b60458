//! The chain's commands: `export`, the full `verify` (of the database or an export)
//! and `tail`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use alga_audit::{
    Action, AuditKeys, ChainedRecord, EventQuery, ExportFilter, VerifyOptions, VerifyReport,
    list_events,
};
use anyhow::{Context, bail};
use clap::Args;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{Database, passed};

// `export`'s arguments (plain comments: a doc comment here would be clap's help).
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Records from this sequence number on (keeps the export verifiable as a chain).
    #[arg(long, default_value_t = 0)]
    since_seq: u64,
    /// Records whose time is at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only this tenant's records.
    #[arg(long)]
    tenant: Option<Uuid>,
    /// Only this action (e.g. code.redeem).
    #[arg(long)]
    action: Option<String>,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

// `verify`'s arguments: the full verify here; with `--from-checkpoint`, the
// incremental one in `transparency`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Verify this export file instead of the database.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Audit public keys: the issuer's `GET /v1/keys` JSON, or PEM SPKI (the full
    /// verify).
    #[arg(long, required_unless_present = "from_checkpoint")]
    audit_keys: Option<PathBuf>,
    /// Incremental: a signed checkpoint note of the transparency log you kept (from
    /// `GET /audit/log/checkpoint` or an earlier --update). The database's newest
    /// checkpoint must extend its tree, and every record after it must be in the
    /// newest tree.
    #[arg(
        long,
        requires = "log_keys",
        conflicts_with_all = ["export", "audit_keys", "checkpoints", "policy", "unchained_alarm_after"]
    )]
    pub(super) from_checkpoint: Option<PathBuf>,
    /// The log's verifier keys, one per line (`GET /audit/log/vkey`).
    #[arg(long, requires = "from_checkpoint")]
    pub(super) log_keys: Option<PathBuf>,
    /// After a successful incremental verify, replace the --from-checkpoint file
    /// (atomically) with the newest checkpoint, for next time.
    #[arg(long, requires = "from_checkpoint")]
    pub(super) update: bool,
    /// Checkpoints kept elsewhere (an earlier export, or JSON lines of checkpoints):
    /// a log shorter than any of them was restored from an old backup.
    #[arg(long)]
    checkpoints: Vec<PathBuf>,
    /// Policy file, for `audit.unchained_alarm_after`.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Flag records unchained longer than this (overrides the policy), e.g. 30s.
    #[arg(long)]
    unchained_alarm_after: Option<String>,
}

// `tail`'s arguments.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// How many of the newest records to print first.
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: u64,
    /// Print and exit instead of following.
    #[arg(long)]
    no_follow: bool,
    /// Poll interval while following, in milliseconds.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
}

/// `export`: JSON lines to `--output` or standard output, the summary on standard
/// error.
pub async fn export(db: &Database, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let filter = ExportFilter {
        since_seq: args.since_seq,
        since: args
            .since
            .as_deref()
            .map(|s| OffsetDateTime::parse(s, &Rfc3339))
            .transpose()
            .context("--since must be an RFC 3339 time")?,
        tenant_id: args.tenant,
        action: args.action.as_deref().map(Action::new).transpose()?,
    };
    let mut client = db.connect().await?;
    let now = OffsetDateTime::now_utc();
    let summary = match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            alga_audit::export(&mut client, &filter, now, &mut w).await?
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            alga_audit::export(&mut client, &filter, now, &mut w).await?
        }
    };
    eprintln!(
        "exported {} records and {} checkpoints (head {})",
        summary.records, summary.checkpoints, summary.head_seq
    );
    Ok(ExitCode::SUCCESS)
}

/// The full `verify`, of the database or of `--export`: exit 0 only when intact.
pub async fn verify(db: &Database, args: &VerifyArgs, json: bool) -> anyhow::Result<ExitCode> {
    let Some(audit_keys) = &args.audit_keys else {
        bail!("--audit-keys is required");
    };
    let text = std::fs::read_to_string(audit_keys)
        .with_context(|| format!("cannot read {}", audit_keys.display()))?;
    let keys = AuditKeys::parse(&text)?;
    let mut external = Vec::new();
    for path in &args.checkpoints {
        external.extend(alga_audit::read_checkpoints(path)?);
    }
    let alarm = match (&args.unchained_alarm_after, &args.policy) {
        (Some(d), _) => alga_policies::parse_duration(d)
            .map_err(|e| anyhow::anyhow!("--unchained-alarm-after: {e}"))?,
        (None, Some(p)) => alga_policies::Policy::load(p)?.audit.unchained_alarm_after,
        (None, None) => time::Duration::seconds(30),
    };
    let opts = VerifyOptions {
        keys,
        external_checkpoints: external,
        now: OffsetDateTime::now_utc(),
        unchained_alarm_after: alarm,
    };
    let (source, report) = match &args.export {
        Some(path) => {
            let report = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || alga_audit::verify_export(&path, &opts))
                    .await??
            };
            (format!("export {}", path.display()), report)
        }
        None => {
            let mut client = db.connect().await?;
            let report = alga_audit::verify_database(&mut client, &opts).await?;
            ("database".to_owned(), report)
        }
    };
    print_report(&source, &report, json)?;
    Ok(passed(report.intact()))
}

/// `tail`: the newest `--lines` records, then (unless `--no-follow`) the new ones
/// as they are chained, until interrupted.
pub async fn tail(db: &Database, args: &TailArgs, json: bool) -> anyhow::Result<ExitCode> {
    let client = db.connect().await?;
    let head = alga_audit::store::last_seq(&client).await?;
    let mut after = head.saturating_sub(args.lines);
    let mut out = std::io::stdout();
    if !json {
        writeln!(out, "{}", table_header())?;
    }
    loop {
        let page = list_events(
            &client,
            &EventQuery {
                after_seq: after,
                ..EventQuery::default()
            },
        )
        .await?;
        for r in &page {
            print_record(&mut out, r, json)?;
            after = r.seq;
        }
        out.flush()?;
        if args.no_follow {
            return Ok(ExitCode::SUCCESS);
        }
        if page.is_empty() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                _ = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
            }
        }
    }
}

fn print_report(source: &str, r: &VerifyReport, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    if json {
        let value = serde_json::json!({
            "source": source,
            "intact": r.intact(),
            "first_bad_seq": r.first_damage().and_then(|f| f.seq),
            "first_damage": r.first_damage().map(|f| f.kind),
            "report": r,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let range = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..={b}"),
        _ => "no records".to_owned(),
    };
    writeln!(out, "source:       {source}")?;
    writeln!(out, "records:      {} ({range})", r.records)?;
    if let Some(h) = &r.head_hash {
        writeln!(out, "head hash:    {h}")?;
    }
    writeln!(
        out,
        "checkpoints:  {} with a valid signature, {} matched against the chain; last good at {}",
        r.checkpoints_valid,
        r.checkpoints_matched,
        r.last_good_checkpoint
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into())
    )?;
    if r.filtered {
        writeln!(
            out,
            "note:         a filtered export: each record and its links to neighbours were checked, completeness was not"
        )?;
    }
    match r.first_damage() {
        None => writeln!(out, "result:       INTACT")?,
        Some(first) => {
            let at = first
                .seq
                .map(|s| format!("first bad sequence number {s}"))
                .unwrap_or_else(|| "no sequence number".into());
            writeln!(out, "result:       DAMAGED: {at}: {}", first.kind)?;
            writeln!(out)?;
            writeln!(out, "{:>10}  {:<26}  DETAIL", "SEQ", "KIND")?;
            for f in &r.findings {
                let seq = f.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                writeln!(out, "{seq:>10}  {:<26}  {}", f.kind.as_str(), f.detail)?;
            }
            if r.findings_dropped > 0 {
                writeln!(out, "… and {} more findings", r.findings_dropped)?;
            }
        }
    }
    Ok(())
}

fn table_header() -> String {
    format!(
        "{:>8}  {:<27}  {:<20}  {:<36}  {:<20}  SUBJECTS",
        "SEQ", "TIME", "ACTION", "TENANT", "OUTCOME"
    )
}

fn print_record(out: &mut impl Write, r: &ChainedRecord, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", r.to_json_line()?)?;
        return Ok(());
    }
    match r.record() {
        Ok(rec) => {
            let outcome = match &rec.outcome {
                alga_audit::Outcome::Success => "success".to_owned(),
                alga_audit::Outcome::Failure { error_code } => format!("failure:{error_code}"),
            };
            let subjects: Vec<String> = rec
                .subjects
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                out,
                "{:>8}  {:<27}  {:<20}  {:<36}  {:<20}  {}",
                r.seq,
                alga_audit::canonical::format_time(rec.time),
                rec.action.as_str(),
                rec.tenant_id
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                outcome,
                subjects.join(" ")
            )?;
        }
        Err(e) => writeln!(out, "{:>8}  (unreadable record: {e})", r.seq)?,
    }
    Ok(())
}
