//! The transparency log's commands that need no HTTP: `publish`, `verify
//! --from-checkpoint` (incremental) and `verify-proof` (offline, no database).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use alga_audit::tree::{self, IncrementalOutcome, IncrementalReport};
use alga_tlog::{InclusionProof, LogKeys, TenantAudit, TenantAuditReport, TlogError};
use anyhow::Context;

/// Below this many tiles, `publish` prints no progress.
const PROGRESS_MIN_TILES: u64 = 100;
/// Largest proof bundle `verify-proof` reads (a tenant page of 1000 records, each
/// with its proof and record bytes, is well under this; so are a few dozen of them).
const MAX_BUNDLE: u64 = 64 << 20;

/// Reads the log's verifier keys (one per line, as `GET /audit/log/vkey` serves them).
pub fn read_log_keys(path: &Path) -> anyhow::Result<LogKeys> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read log keys {}", path.display()))?;
    LogKeys::parse(&text).with_context(|| format!("log keys {}", path.display()))
}

/// `alga-audit publish --to DIR`.
pub async fn publish(
    client: &tokio_postgres::Client,
    dir: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut step = 0;
    let published = tree::publish(client, dir, |done, total| {
        if total >= PROGRESS_MIN_TILES && done * 20 / total > step {
            step = done * 20 / total;
            eprintln!("publish: {done} of {total} tiles ({}%)", step * 5);
        }
    })
    .await?;
    let mut out = std::io::stdout();
    if json {
        let value = serde_json::json!({
            "dir": dir.display().to_string(),
            "size": published.size,
            "written": published.written,
            "kept": published.kept,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "published the tree of size {} to {}: {} tiles written, {} full tiles kept",
            published.size,
            dir.display(),
            published.written,
            published.kept
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `alga-audit verify --from-checkpoint FILE --log-keys FILE [--update]`.
pub async fn verify_incremental(
    client: &tokio_postgres::Client,
    from_checkpoint: &Path,
    log_keys: &Path,
    update: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let keys = read_log_keys(log_keys)?;
    let trusted = std::fs::read_to_string(from_checkpoint)
        .with_context(|| format!("cannot read {}", from_checkpoint.display()))?;
    let report = tree::verify_from(client, &trusted, &keys)
        .await
        .with_context(|| format!("the trusted checkpoint {}", from_checkpoint.display()))?;
    let updated = match (&report.checkpoint, update && report.intact()) {
        (Some(note), true) if *note != trusted => {
            alga_tlog::witness::write_atomically(from_checkpoint, note.as_bytes())?;
            true
        }
        _ => false,
    };
    print_incremental(&report, from_checkpoint, updated, json)?;
    Ok(if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_incremental(
    r: &IncrementalReport,
    file: &Path,
    updated: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    if json {
        let first_bad_seq = match &r.outcome {
            IncrementalOutcome::Record { seq, .. } => Some(*seq),
            _ => None,
        };
        let value = serde_json::json!({
            "source": "database",
            "incremental": true,
            "intact": r.intact(),
            "first_bad_seq": first_bad_seq,
            "updated": updated,
            "report": r,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    writeln!(
        out,
        "source:          database, from the checkpoint kept in {}",
        file.display()
    )?;
    writeln!(out, "log:             {}", r.origin)?;
    writeln!(out, "trusted size:    {}", r.old_size)?;
    writeln!(out, "newest size:     {}", r.new_size)?;
    let range = match r.first_checked {
        Some(first) if r.records_checked > 0 => format!(
            "seq {first}..={}; records up to {} were not read",
            first + r.records_checked - 1,
            r.old_size
        ),
        _ => "none new".to_owned(),
    };
    writeln!(out, "records checked: {} ({range})", r.records_checked)?;
    let result = match &r.outcome {
        IncrementalOutcome::Consistent => "CONSISTENT".to_owned(),
        IncrementalOutcome::Rollback => format!(
            "ROLLBACK: the database's newest checkpoint has size {}, smaller than the trusted size {}",
            r.new_size, r.old_size
        ),
        IncrementalOutcome::Fork => format!(
            "FORK: the database's tree of size {} is not consistent with the trusted checkpoint of size {}",
            r.new_size, r.old_size
        ),
        IncrementalOutcome::BadCheckpoint { detail } => {
            format!("BAD CHECKPOINT: {detail}")
        }
        IncrementalOutcome::Record { detail, .. } => format!("DAMAGED: {detail}"),
        IncrementalOutcome::Tree { detail } => format!("DAMAGED: {detail}"),
    };
    writeln!(out, "result:          {result}")?;
    if updated {
        writeln!(
            out,
            "updated:         {} now holds the checkpoint of size {}",
            file.display(),
            r.new_size
        )?;
    }
    Ok(())
}

/// What a bundle proved.
enum Proven {
    Inclusion {
        origin: String,
        size: u64,
        seq: u64,
        entry: String,
        record_checked: bool,
    },
    Tenant {
        origin: String,
        /// The newest checkpoint's size (the pages' checkpoints never go back).
        size: u64,
        tenant: String,
        records: u64,
        seqs: Option<(u64, u64)>,
        next_after: Option<u64>,
        /// Pages: 1 for one `GET /tenants/{id}/audit` answer, more for a file of
        /// them (`algactl audit tenant --out`).
        pages: usize,
        /// The sizes of the checkpoints the pages are proven in, each once, ascending.
        sizes: Vec<u64>,
    },
}

/// `alga-audit verify-proof --log-keys FILE BUNDLE [--record FILE]`: offline, no
/// database. Exit 0 proven, 1 refused, 2 could not run.
pub fn verify_proof(
    log_keys: &Path,
    bundle: &Path,
    record: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let keys = read_log_keys(log_keys)?;
    let size = std::fs::metadata(bundle)
        .with_context(|| format!("cannot read {}", bundle.display()))?
        .len();
    if size > MAX_BUNDLE {
        anyhow::bail!(
            "{}: {size} bytes, larger than any proof bundle ({MAX_BUNDLE})",
            bundle.display()
        );
    }
    let text =
        std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let record = record
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let result = check_bundle(&text, &keys, record.as_deref());
    if let Err(Refusal::Usage(msg)) = &result {
        anyhow::bail!("{msg}");
    }
    let mut out = std::io::stdout();
    match &result {
        Ok(proven) if json => writeln!(out, "{}", proven_json(proven))?,
        Ok(proven) => print_proven(&mut out, proven)?,
        Err(e) if json => writeln!(
            out,
            "{}",
            serde_json::json!({"proven": false, "refused": e.to_string()})
        )?,
        Err(e) => writeln!(out, "result:      REFUSED: {e}")?,
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Debug)]
enum Refusal {
    /// The bundle proves nothing (or not what it claims).
    Refused(String),
    /// A usage error (exit 2).
    Usage(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Refused(m) | Refusal::Usage(m) => f.write_str(m),
        }
    }
}

impl From<TlogError> for Refusal {
    fn from(e: TlogError) -> Refusal {
        Refusal::Refused(e.to_string())
    }
}

fn check_bundle(text: &[u8], keys: &LogKeys, record: Option<&[u8]>) -> Result<Proven, Refusal> {
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| Refusal::Refused(format!("not a proof bundle: not JSON ({e})")))?;
    let bundle_error = |what: &str, e: serde_json::Error| {
        Refusal::Refused(format!("not a well-formed {what}: {e}"))
    };
    if let Some(items) = value.as_array() {
        // A tenant's pages, in the order fetched (`algactl audit tenant --out`).
        if items.is_empty() {
            return Err(Refusal::Refused(
                "not a proof bundle: an empty list of tenant pages".into(),
            ));
        }
        if record.is_some() {
            return Err(Refusal::Usage(TENANT_RECORD_USAGE.into()));
        }
        let pages: Vec<TenantAudit> =
            serde_json::from_value(value).map_err(|e| bundle_error("list of tenant pages", e))?;
        let reports = alga_tlog::verify_pages(&pages, keys)?;
        return Ok(tenant_proven(&pages, reports));
    }
    let Some(fields) = value.as_object() else {
        return Err(Refusal::Refused(
            "not a proof bundle: not a JSON object or list".into(),
        ));
    };
    if fields.contains_key("tenant_id") && fields.contains_key("records") {
        if record.is_some() {
            return Err(Refusal::Usage(TENANT_RECORD_USAGE.into()));
        }
        let bundle: TenantAudit =
            serde_json::from_value(value).map_err(|e| bundle_error("tenant bundle", e))?;
        let report = bundle.verify(keys)?;
        Ok(tenant_proven(std::slice::from_ref(&bundle), vec![report]))
    } else if fields.contains_key("index") && fields.contains_key("entry") {
        let bundle: InclusionProof =
            serde_json::from_value(value).map_err(|e| bundle_error("inclusion proof", e))?;
        let checkpoint = match record {
            Some(bytes) => bundle.verify_record(keys, bytes)?,
            None => bundle.verify(keys)?,
        };
        Ok(Proven::Inclusion {
            origin: checkpoint.origin,
            size: checkpoint.size,
            seq: bundle.index + 1,
            entry: bundle.entry.to_ascii_lowercase(),
            record_checked: record.is_some(),
        })
    } else {
        Err(Refusal::Refused(
            "not a proof bundle: neither an inclusion proof (index, size, entry, proof, \
             checkpoint) nor a tenant bundle (tenant_id, checkpoint, records)"
                .into(),
        ))
    }
}

const TENANT_RECORD_USAGE: &str =
    "--record applies to an inclusion proof; a tenant bundle carries its records";

/// What a tenant's verified pages (one or more) proved.
fn tenant_proven(pages: &[TenantAudit], reports: Vec<TenantAuditReport>) -> Proven {
    let mut sizes: Vec<u64> = reports.iter().map(|r| r.checkpoint.size).collect();
    sizes.dedup();
    let newest = reports.last().map(|r| &r.checkpoint);
    let first = pages.iter().find_map(|p| p.records.first()).map(|r| r.seq);
    let last = pages
        .iter()
        .rev()
        .find_map(|p| p.records.last())
        .map(|r| r.seq);
    Proven::Tenant {
        origin: newest.map(|c| c.origin.clone()).unwrap_or_default(),
        size: newest.map_or(0, |c| c.size),
        tenant: pages
            .first()
            .map(|p| p.tenant_id.clone())
            .unwrap_or_default(),
        records: reports.iter().map(|r| r.records).sum(),
        seqs: first.zip(last),
        next_after: pages.last().and_then(|p| p.next_after),
        pages: pages.len(),
        sizes,
    }
}

fn print_proven(out: &mut impl Write, p: &Proven) -> anyhow::Result<()> {
    match p {
        Proven::Inclusion {
            origin,
            size,
            seq,
            entry,
            record_checked,
        } => {
            writeln!(out, "bundle:      inclusion proof")?;
            writeln!(out, "checkpoint:  {origin}, size {size}")?;
            writeln!(
                out,
                "proven:      record {seq} (leaf {}) is in the tree, entry {entry}",
                seq - 1
            )?;
            if *record_checked {
                writeln!(out, "record:      its bytes hash to that entry")?;
            }
        }
        Proven::Tenant {
            origin,
            size,
            tenant,
            records,
            seqs,
            next_after,
            pages,
            sizes,
        } => {
            if *pages == 1 {
                writeln!(out, "bundle:      tenant audit of {tenant}")?;
            } else {
                writeln!(out, "bundle:      tenant audit of {tenant}, {pages} pages")?;
            }
            if sizes.len() > 1 {
                let all: Vec<String> = sizes.iter().map(u64::to_string).collect();
                writeln!(
                    out,
                    "checkpoint:  {origin}, size {size} (the pages in sizes {})",
                    all.join(", ")
                )?;
            } else {
                writeln!(out, "checkpoint:  {origin}, size {size}")?;
            }
            let range = seqs
                .map(|(a, b)| format!(" (seq {a}..={b})"))
                .unwrap_or_default();
            writeln!(
                out,
                "proven:      {records} records{range}, each naming the tenant and in the tree"
            )?;
            if let Some(after) = next_after {
                writeln!(
                    out,
                    "more:        records after seq {after} are on the next page (after={after})"
                )?;
            }
        }
    }
    writeln!(out, "result:      PROVEN")?;
    Ok(())
}

fn proven_json(p: &Proven) -> serde_json::Value {
    match p {
        Proven::Inclusion {
            origin,
            size,
            seq,
            entry,
            record_checked,
        } => serde_json::json!({
            "proven": true,
            "bundle": "inclusion",
            "origin": origin,
            "size": size,
            "seq": seq,
            "entry": entry,
            "record_checked": record_checked,
        }),
        Proven::Tenant {
            origin,
            size,
            tenant,
            records,
            seqs,
            next_after,
            pages,
            sizes,
        } => serde_json::json!({
            "proven": true,
            "bundle": "tenant",
            "origin": origin,
            "size": size,
            "tenant_id": tenant,
            "records": records,
            "first_seq": seqs.map(|s| s.0),
            "last_seq": seqs.map(|s| s.1),
            "next_after": next_after,
            "pages": pages,
            "sizes": sizes,
        }),
    }
}
