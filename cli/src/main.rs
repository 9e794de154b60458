//! `algactl`: what nm-store and security staff call, over the gateway's mTLS API.
//!
//! Identity files come from flags, the environment (`ALGA_GATEWAY_URL`,
//! `ALGA_CA_BUNDLE`, `ALGA_STORE_CERT`/`ALGA_STORE_KEY` for store commands,
//! `ALGA_AUDITOR_CERT`/`ALGA_AUDITOR_KEY` for audit commands), or `.dev/env` of the
//! local stack. Output is a human table by default and JSON with `--json`. Errors
//! echo the service's stable error code and message.
#![forbid(unsafe_code)]

mod audit;
mod client;
mod env_file;

use std::path::PathBuf;

use alga_protocol::api::{
    Contact, IDEMPOTENCY_KEY, REGISTER_TENANT, REISSUE, RegisterTenantRequest,
    RegisterTenantResponse, ReissueRequest, ReissueResponse,
};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use uuid::Uuid;

use crate::client::{Client, Identity, ServiceError};

#[derive(Debug, Parser)]
#[command(
    name = "algactl",
    version,
    about = "The store's and security staff's calls to alga-license"
)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConnArgs {
    /// Gateway base URL [env: ALGA_GATEWAY_URL].
    #[arg(long, global = true)]
    gateway_url: Option<String>,
    /// CA bundle that issued the gateway's certificate [env: ALGA_CA_BUNDLE].
    #[arg(long, global = true)]
    ca_bundle: Option<PathBuf>,
    /// Client certificate (PEM) [env: ALGA_STORE_CERT or ALGA_AUDITOR_CERT by command].
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Client private key (PEM) [env: ALGA_STORE_KEY or ALGA_AUDITOR_KEY by command].
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// File of `export NAME=value` lines to read missing settings from (default: .dev/env if present).
    #[arg(long, global = true)]
    env_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register a customer: create the tenant, mint and mail an install code (store).
    Register {
        #[arg(long)]
        company: String,
        #[arg(long)]
        contact_name: String,
        #[arg(long)]
        contact_email: String,
        #[arg(long)]
        edition: String,
        /// Makes a retried registration return the first answer (default: a fresh random key).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Re-issue an install code for a tenant (reinstall): unclaimed codes are revoked (store).
    Reissue {
        #[arg(
            long,
            conflicts_with = "contact_email",
            required_unless_present = "contact_email"
        )]
        tenant_id: Option<Uuid>,
        #[arg(long)]
        contact_email: Option<String>,
    },
    /// Tenants (store, auditor).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Appliances (store).
    Appliance {
        #[command(subcommand)]
        command: ApplianceCommand,
    },
    /// The audit log (auditor): export, verify offline, tail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write every checkpoint and the records after --after as JSON lines
    /// (the `alga-audit export` format, verifiable offline).
    Export {
        /// Only records with a sequence number above this (0: all).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Verify the log: export it (or read --export), recompute the chain and check
    /// every checkpoint signature against the audit keys. Exit 0 only when intact.
    Verify {
        /// Verify this export file instead of fetching the log.
        #[arg(long)]
        export: Option<PathBuf>,
    },
    /// Print records as they are chained.
    Tail {
        /// Start after this sequence number (0: from the beginning).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep waiting for new records.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Show a tenant: edition, codes (no secrets), appliances, mail status.
    Show { tenant_id: Uuid },
}

#[derive(Debug, Subcommand)]
enum ApplianceCommand {
    /// Revoke an appliance's credential: its next check-in is refused.
    Revoke { appliance_id: Uuid },
}

/// Which identity a command speaks as.
#[derive(Debug, Clone, Copy)]
enum As {
    Store,
    Auditor,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        match e.downcast_ref::<ServiceError>() {
            Some(service) => eprintln!("error: {service}"),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Register {
            company,
            contact_name,
            contact_email,
            edition,
            idempotency_key,
        } => {
            let client = connect(&cli.conn, As::Store)?;
            let body = RegisterTenantRequest {
                company,
                contact: Contact {
                    name: contact_name,
                    email: contact_email,
                },
                edition,
            };
            let key = idempotency_key.unwrap_or_else(|| Uuid::new_v4().to_string());
            let resp: RegisterTenantResponse = client
                .post(REGISTER_TENANT, &body, &[(IDEMPOTENCY_KEY, key)])
                .await?;
            print_registration(&resp, None, cli.json)
        }
        Command::Reissue {
            tenant_id,
            contact_email,
        } => {
            let client = connect(&cli.conn, As::Store)?;
            let body = ReissueRequest {
                tenant_id,
                contact_email,
                ..ReissueRequest::default()
            };
            let resp: ReissueResponse = client.post(REISSUE, &body, &[]).await?;
            print_registration(&resp.code, Some(&resp.revoked_code_ids), cli.json)
        }
        Command::Tenant {
            command: TenantCommand::Show { tenant_id },
        } => {
            let client = connect(&cli.conn, As::Store)?;
            let tenant: Value = client.get(&format!("/tenants/{tenant_id}")).await?;
            print_value(&tenant, cli.json)
        }
        Command::Appliance {
            command: ApplianceCommand::Revoke { appliance_id },
        } => {
            let client = connect(&cli.conn, As::Store)?;
            let resp: Value = client
                .post(
                    &format!("/appliances/{appliance_id}/revoke"),
                    &serde_json::json!({}),
                    &[],
                )
                .await?;
            print_value(&resp, cli.json)
        }
        Command::Audit { command } => run_audit(&cli.conn, command, cli.json).await,
    }
}

async fn run_audit(conn: &ConnArgs, command: AuditCommand, json: bool) -> Result<()> {
    let client = connect(conn, As::Auditor)?;
    match command {
        AuditCommand::Export { after, output } => {
            let summary = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    audit::export(&client, after, &mut std::io::BufWriter::new(file)).await?
                }
                None => audit::export(&client, after, &mut std::io::stdout().lock()).await?,
            };
            eprintln!(
                "exported {} records (head {}) and {} checkpoints",
                summary.records, summary.head_seq, summary.checkpoints
            );
            Ok(())
        }
        AuditCommand::Verify { export } => {
            let keys = audit::keys(&client).await?;
            let report = match export {
                Some(path) => audit::verify(&path, keys)?,
                None => {
                    let dir =
                        tempfile::tempdir().context("a temporary directory for the export")?;
                    let path = dir.path().join("audit.jsonl");
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    audit::export(&client, 0, &mut std::io::BufWriter::new(file)).await?;
                    audit::verify(&path, keys)?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let verdict = if report.intact() { "INTACT" } else { "DAMAGED" };
                print_table(&[
                    ("verdict", verdict.to_owned()),
                    ("records", report.records.to_string()),
                    (
                        "checkpoints verified",
                        report.checkpoints_matched.to_string(),
                    ),
                ]);
                for f in &report.findings {
                    let at = f
                        .seq
                        .map(|s| format!("seq {s}"))
                        .unwrap_or_else(|| "-".to_owned());
                    println!("  {:<24} {at:<12} {}", f.kind.as_str(), f.detail);
                }
            }
            match report.first_damage() {
                None if report.intact() => Ok(()),
                Some(f) => anyhow::bail!(
                    "the audit log is damaged: first {} at {:?}",
                    f.kind.as_str(),
                    f.seq
                ),
                None => anyhow::bail!("the audit log is not intact"),
            }
        }
        AuditCommand::Tail { after, follow } => audit::tail(&client, after, follow, json).await,
    }
}

fn connect(conn: &ConnArgs, who: As) -> Result<Client> {
    let env = env_file::Settings::load(conn.env_file.as_deref())?;
    let (cert_var, key_var) = match who {
        As::Store => ("ALGA_STORE_CERT", "ALGA_STORE_KEY"),
        As::Auditor => ("ALGA_AUDITOR_CERT", "ALGA_AUDITOR_KEY"),
    };
    let identity = Identity {
        gateway_url: conn
            .gateway_url
            .clone()
            .or_else(|| env.get("ALGA_GATEWAY_URL"))
            .context("no gateway URL: pass --gateway-url or set ALGA_GATEWAY_URL")?,
        ca_bundle: conn
            .ca_bundle
            .clone()
            .or_else(|| env.get("ALGA_CA_BUNDLE").map(PathBuf::from))
            .context("no CA bundle: pass --ca-bundle or set ALGA_CA_BUNDLE")?,
        cert: conn
            .cert
            .clone()
            .or_else(|| env.get(cert_var).map(PathBuf::from))
            .with_context(|| format!("no client certificate: pass --cert or set {cert_var}"))?,
        key: conn
            .key
            .clone()
            .or_else(|| env.get(key_var).map(PathBuf::from))
            .with_context(|| format!("no client key: pass --key or set {key_var}"))?,
    };
    Client::new(&identity)
}

fn print_registration(
    resp: &RegisterTenantResponse,
    revoked: Option<&Vec<String>>,
    json: bool,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(resp)?);
        return Ok(());
    }
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut rows = vec![
        ("tenant", resp.tenant_id.to_string()),
        ("edition", resp.edition.clone()),
        ("code id", resp.install_code.code_id.clone()),
        ("code expires", rfc(resp.install_code.expires_at)),
        ("download link expires", rfc(resp.download.expires_at)),
        ("email", format!("{:?}", resp.email.status).to_lowercase()),
    ];
    if let Some(revoked) = revoked {
        rows.push((
            "revoked codes",
            if revoked.is_empty() {
                "none".to_owned()
            } else {
                revoked.join(", ")
            },
        ));
    }
    print_table(&rows);
    println!("\nThe install code went to the contact's mailbox only; it is never shown here.");
    Ok(())
}

fn print_value(value: &Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    flatten("", value, &mut rows);
    let rows: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    print_table(&rows);
    Ok(())
}

/// Flattens nested JSON into `a.b[0].c = value` rows for the human table.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Array(_) => out.push((prefix.to_owned(), "(none)".to_owned())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Null => out.push((prefix.to_owned(), "-".to_owned())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

fn print_table(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
}
