//! `alga-audit`: the security staff's tool to export, verify and follow the audit log,
//! and to reconcile it with the issuer's signing logs; and the transparency log's
//! tool: publish its tiles, verify it incrementally from a kept checkpoint, check
//! proof bundles offline, and run a witness.
//!
//! Thin: parses arguments, connects, calls the library, prints. Exit codes: 0 intact
//! or reconciled (or command done), 1 damage or discrepancies found (or a proof or
//! checkpoint refused), 2 could not run.
#![forbid(unsafe_code)]

#[path = "cli/transparency.rs"]
mod transparency;
#[path = "cli/witness.rs"]
mod witness;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use alga_audit::export::ExportFilter;
use alga_audit::reconcile::{self, ReconcileOptions, ReconcileReport};
use alga_audit::{
    Action, AuditKeys, ChainedRecord, EventQuery, VerifyOptions, VerifyReport, list_events,
};
use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    name = "alga-audit",
    version = alga_buildinfo::VERSION,
    about = "Export, verify and follow the alga-license audit log"
)]
struct Cli {
    /// Postgres URL (a password in it is your choice; prefer --password-file).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// File holding the database password (first line), instead of the URL.
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// Machine-readable output (JSON) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write chained records and checkpoints as JSON lines (FORMAT.md).
    Export {
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
    },
    /// Recompute the chain and check every checkpoint; exit 0 only when intact.
    ///
    /// With --from-checkpoint: verify incrementally instead, from a checkpoint of the
    /// transparency log kept from an earlier run (only the records after it are read).
    Verify {
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
        from_checkpoint: Option<PathBuf>,
        /// The log's verifier keys, one per line (`GET /audit/log/vkey`).
        #[arg(long, requires = "from_checkpoint")]
        log_keys: Option<PathBuf>,
        /// After a successful incremental verify, replace the --from-checkpoint file
        /// (atomically) with the newest checkpoint, for next time.
        #[arg(long, requires = "from_checkpoint")]
        update: bool,
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
    },
    /// Match the issuer's signing log(s) against the audit records: list what was
    /// signed and never recorded, and what was recorded as signed and is absent from
    /// the issuer's log. Exit 0 only when both lists are empty and every log verifies.
    Reconcile {
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
    },
    /// Print the newest records, then follow new ones as they are chained.
    Tail {
        /// How many of the newest records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Print and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        /// Poll interval while following, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Write the newest checkpoint and every tile of the transparency log under DIR,
    /// as the gateway serves them at /audit/log/ (to serve as static files). Full
    /// tiles already there are kept.
    Publish {
        /// The directory (created if absent).
        #[arg(long)]
        to: PathBuf,
    },
    /// Check a proof bundle offline, without any database: an inclusion proof
    /// (`GET /audit/log/proof/{seq}`), a tenant's records (`GET /tenants/{id}/audit`),
    /// or a JSON list of a tenant's pages in the order fetched (`algactl audit tenant
    /// --out`). Exit 0 proven, 1 refused, 2 could not run.
    VerifyProof {
        /// The log's verifier keys, one per line (`GET /audit/log/vkey`).
        #[arg(long)]
        log_keys: PathBuf,
        /// The bundle (JSON).
        bundle: PathBuf,
        /// For an inclusion proof: the record's bytes, checked against the proven entry.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Witness the transparency log: cosign only consistent growth, refuse forks and
    /// rollbacks.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
    /// Write this program's man pages or a shell completion script (packaging).
    #[command(hide = true)]
    Generate(alga_buildinfo::Generate),
}

#[derive(Subcommand, Debug)]
enum WitnessCommand {
    /// Make a witness key: writes it to FILE (mode 0600, never overwritten), prints
    /// its public verifier key.
    Init {
        /// The witness's name (its cosignatures' key name), e.g. witness.example.com/w1.
        #[arg(long)]
        name: String,
        /// Where to write the private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Follow the log: fetch its checkpoint and tiles, accept and cosign consistent
    /// growth; on a fork or rollback say so, keep the state, exit 1 (--once).
    Poll {
        /// The log: an https:// URL (the gateway's …/audit/log) or a directory written
        /// by `alga-audit publish`.
        #[arg(long)]
        log: String,
        /// The log's verifier keys, one per line (`GET /audit/log/vkey`).
        #[arg(long)]
        log_keys: PathBuf,
        /// The witness key (`witness init`).
        #[arg(long)]
        key: PathBuf,
        /// The witness's state: the last accepted checkpoint (created on first use).
        #[arg(long)]
        state: PathBuf,
        /// Time between polls.
        #[arg(long, default_value = "30s")]
        interval: String,
        /// Poll once and exit.
        #[arg(long)]
        once: bool,
        /// PEM root certificate(s) of an https log's server (required for https).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Also write each accepted checkpoint, with this witness's cosignature
        /// appended, to DIR/<size>.
        #[arg(long)]
        cosignatures: Option<PathBuf>,
    },
    /// Answer c2sp.org/tlog-witness `POST /add-checkpoint` over plain HTTP/1.1.
    Serve {
        /// Address to listen on (loopback unless --public).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Allow a non-loopback --listen address (put TLS in front).
        #[arg(long)]
        public: bool,
        /// The log's verifier keys, one per line (`GET /audit/log/vkey`).
        #[arg(long)]
        log_keys: PathBuf,
        /// The witness key (`witness init`).
        #[arg(long)]
        key: PathBuf,
        /// The witness's state: the last cosigned checkpoint (created on first use).
        #[arg(long)]
        state: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("alga-audit: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("alga-audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Generate(g) => {
            for path in g.run(Cli::command())? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            since_seq,
            since,
            tenant,
            action,
            output,
        } => {
            let filter = ExportFilter {
                since_seq: *since_seq,
                since: since
                    .as_deref()
                    .map(|s| OffsetDateTime::parse(s, &Rfc3339))
                    .transpose()
                    .context("--since must be an RFC 3339 time")?,
                tenant_id: *tenant,
                action: action.as_deref().map(Action::new).transpose()?,
            };
            let mut client = connect(&cli).await?;
            let now = OffsetDateTime::now_utc();
            let summary = match output {
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
        Command::Publish { to } => {
            let client = connect(&cli).await?;
            transparency::publish(&client, to, cli.json).await
        }
        Command::VerifyProof {
            log_keys,
            bundle,
            record,
        } => transparency::verify_proof(log_keys, bundle, record.as_deref(), cli.json),
        Command::Witness { command } => match command {
            WitnessCommand::Init { name, key } => witness::init(name, key),
            WitnessCommand::Poll {
                log,
                log_keys,
                key,
                state,
                interval,
                once,
                ca,
                cosignatures,
            } => {
                witness::poll(&witness::PollArgs {
                    log: log.clone(),
                    log_keys: log_keys.clone(),
                    key: key.clone(),
                    state: state.clone(),
                    interval: interval.clone(),
                    once: *once,
                    ca: ca.clone(),
                    cosignatures: cosignatures.clone(),
                })
                .await
            }
            WitnessCommand::Serve {
                listen,
                public,
                log_keys,
                key,
                state,
            } => witness::serve(*listen, *public, log_keys, key, state).await,
        },
        Command::Verify {
            from_checkpoint: Some(from),
            log_keys,
            update,
            ..
        } => {
            let Some(log_keys) = log_keys else {
                bail!("--from-checkpoint needs --log-keys");
            };
            let client = connect(&cli).await?;
            transparency::verify_incremental(&client, from, log_keys, *update, cli.json).await
        }
        Command::Verify {
            export,
            audit_keys,
            checkpoints,
            policy,
            unchained_alarm_after,
            ..
        } => {
            let Some(audit_keys) = audit_keys else {
                bail!("--audit-keys is required");
            };
            let text = std::fs::read_to_string(audit_keys)
                .with_context(|| format!("cannot read {}", audit_keys.display()))?;
            let keys = AuditKeys::parse(&text)?;
            let mut external = Vec::new();
            for path in checkpoints {
                external.extend(alga_audit::read_checkpoints(path)?);
            }
            let alarm = match (unchained_alarm_after, policy) {
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
            let (source, report) = match export {
                Some(path) => {
                    let path = path.clone();
                    let report = tokio::task::spawn_blocking(move || {
                        alga_audit::verify_export(&path, &opts)
                    })
                    .await??;
                    (
                        format!(
                            "export {}",
                            export
                                .as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                        report,
                    )
                }
                None => {
                    let mut client = connect(&cli).await?;
                    (
                        "database".to_owned(),
                        alga_audit::verify_database(&mut client, &opts).await?,
                    )
                }
            };
            print_report(&source, &report, cli.json)?;
            Ok(if report.intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Reconcile {
            issuer_log,
            export,
            since,
            until,
            failed_request_window,
            strict,
        } => {
            let parse_time = |flag: &str, s: &str| {
                OffsetDateTime::parse(s, &Rfc3339)
                    .with_context(|| format!("{flag} must be an RFC 3339 time"))
            };
            let mut opts = ReconcileOptions::new(OffsetDateTime::now_utc());
            opts.since = since
                .as_deref()
                .map(|s| parse_time("--since", s))
                .transpose()?;
            if let Some(u) = until {
                opts.until = parse_time("--until", u)?;
            }
            opts.failed_request_window = alga_policies::parse_duration(failed_request_window)
                .map_err(|e| anyhow::anyhow!("--failed-request-window: {e}"))?;
            let mut logs = Vec::new();
            for dir in issuer_log {
                logs.push(
                    reconcile::read_issuer_log(dir)
                        .with_context(|| format!("issuer log {}", dir.display()))?,
                );
            }
            let checkpoint_seqs: Vec<u64> = logs
                .iter()
                .flat_map(|l| &l.records)
                .filter_map(|r| r.ids.sequence)
                .collect();
            let gateway = match export {
                Some(path) => {
                    let (path, o) = (path.clone(), opts.clone());
                    tokio::task::spawn_blocking(move || {
                        reconcile::load_export(&path, &o, &checkpoint_seqs)
                    })
                    .await??
                }
                None => {
                    let mut client = connect(&cli).await?;
                    reconcile::load_database(&mut client, &opts, &checkpoint_seqs).await?
                }
            };
            let report = reconcile::reconcile(&logs, &gateway, &opts);
            print_reconcile(&report, *strict, cli.json)?;
            let clean = report.passes(*strict);
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Tail {
            lines,
            no_follow,
            interval_ms,
        } => {
            let client = connect(&cli).await?;
            let row = client
                .query_one("SELECT coalesce(max(seq), 0) FROM audit_chain", &[])
                .await?;
            let head: i64 = row.try_get(0)?;
            let mut after = u64::try_from(head)?.saturating_sub(*lines);
            let mut out = std::io::stdout();
            if !cli.json {
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
                    print_record(&mut out, r, cli.json)?;
                    after = r.seq;
                }
                out.flush()?;
                if *no_follow {
                    return Ok(ExitCode::SUCCESS);
                }
                if page.is_empty() {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                        _ = tokio::time::sleep(Duration::from_millis(*interval_ms)) => {}
                    }
                }
            }
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<tokio_postgres::Client> {
    let Some(url) = &cli.database_url else {
        bail!("no database: pass --database-url or set DATABASE_URL");
    };
    let mut config = tokio_postgres::Config::from_str(url).context("bad --database-url")?;
    if let Some(path) = &cli.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let password = text.lines().next().unwrap_or_default().to_owned();
        config.password(password);
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("cannot connect to the database")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
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

    let sig_header = || {
        format!(
            "  {:<8}  {:<27}  {:<11}  {:<36}  {:<36}  LOG / NOTE",
            "LOG SEQ", "TIME", "OP", "ID", "TENANT"
        )
    };
    writeln!(out)?;
    writeln!(
        out,
        "signed by the issuer, never recorded by the gateway: {}",
        r.unrecorded.len()
    )?;
    if !r.unrecorded.is_empty() {
        writeln!(out, "{}", sig_header())?;
    }
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
    writeln!(out)?;
    writeln!(
        out,
        "recorded by the gateway as signed, absent from the issuer's log: {}",
        r.absent.len()
    )?;
    if !r.absent.is_empty() {
        writeln!(
            out,
            "  {:<8}  {:<27}  {:<20}  {:<11}  {:<36}  TENANT",
            "SEQ", "TIME", "ACTION", "OP", "ID"
        )?;
    }
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
    writeln!(out)?;
    writeln!(
        out,
        "signed during a failed request (matched by tenant and time, {}): {}",
        if strict {
            "counted as unrecorded: --strict"
        } else {
            "for review"
        },
        r.failed_request.len()
    )?;
    if !r.failed_request.is_empty() {
        writeln!(
            out,
            "  {:<8}  {:<27}  {:<11}  {:<36}  {:<36}  ACCOUNTED FOR BY",
            "LOG SEQ", "TIME", "OP", "ID", "TENANT"
        )?;
    }
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
