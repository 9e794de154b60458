//! `algactl`: what nm-store and security staff call, over the gateway's mTLS API.
//!
//! Identity files come from flags, the environment (`ALGA_GATEWAY_URL`,
//! `ALGA_CA_BUNDLE`, `ALGA_STORE_CERT`/`ALGA_STORE_KEY` for store commands,
//! `ALGA_AUDITOR_CERT`/`ALGA_AUDITOR_KEY` for audit commands), or `.dev/env` of the
//! local stack. The read-only commands (`tenant show`, `appliance list`) speak as the
//! store unless given `--as auditor`. Output is a human table by default and JSON with
//! `--json` (the service's answer as it came; `appliance list --all` joins the pages
//! into one with a `total`). Errors echo the service's stable error code and message.
//!
//! The human output is built in [`render`].
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a binary is an edge: it reads the environment and the clock, and reports with anyhow"
)]

mod audit;
mod client;
mod env_file;
mod render;

use std::path::PathBuf;

use alga_protocol::api::{
    APPLIANCES, AppliancePage, Contact, EntitlementRequest, EntitlementResponse, Health,
    IDEMPOTENCY_KEY, REGISTER_TENANT, REISSUE, ReasonRequest, RegisterTenantRequest,
    RegisterTenantResponse, ReissueRequest, ReissueResponse, RevokeResponse, TenantStatusResponse,
    TenantView, entitlement_path, resume_path, revoke_path, suspend_path, tenant_path,
};
use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::client::{Client, Identity, ServiceError};

#[derive(Debug, Parser)]
#[command(
    name = "algactl",
    version = alga_buildinfo::VERSION,
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
    /// Re-issue an install code for a tenant (rebuild, reinstall, one more appliance);
    /// the unclaimed codes it supersedes are revoked (store).
    ///
    /// Without --replaces-appliance-id or --add-appliance, the new code's redeem retires
    /// the tenant's only active appliance (a rebuild), or adds one when it has none; a
    /// tenant with several active appliances must say which (409 replacement_ambiguous).
    /// Unclaimed codes for the same replacement are revoked; --add-appliance revokes none.
    Reissue {
        /// The tenant (or --contact-email).
        #[arg(
            long,
            conflicts_with = "contact_email",
            required_unless_present = "contact_email"
        )]
        tenant_id: Option<Uuid>,
        /// The tenant by its contact's address (409 ambiguous_contact when several share it).
        #[arg(long)]
        contact_email: Option<String>,
        /// The appliance the new code's redeem retires (it must be active).
        #[arg(long, conflicts_with = "add_appliance")]
        replaces_appliance_id: Option<Uuid>,
        /// The new code adds an appliance (within the edition's max_appliances) instead
        /// of replacing one.
        #[arg(long)]
        add_appliance: bool,
    },
    /// Tenants: show (store, auditor), set-edition, suspend, resume (store).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Appliances: list (store, auditor), revoke (store).
    Appliance {
        #[command(subcommand)]
        command: ApplianceCommand,
    },
    /// The audit log: export, verify offline, tail (auditor); a tenant's records proven
    /// in the transparency log, and the log's keys (store, auditor).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write this program's man pages or a shell completion script (packaging).
    #[command(hide = true)]
    Generate(alga_buildinfo::Generate),
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
    /// A tenant's records, each with its inclusion proof in a signed checkpoint of the
    /// transparency log (GET /tenants/{id}/audit, every page): printed as a table,
    /// kept with --out, checked offline with --log-keys (exit 1 if a page does not
    /// verify). Records newer than the newest checkpoint are in the next one.
    Tenant {
        tenant_id: Uuid,
        /// Write the pages as they came to FILE: a JSON list, one element per page
        /// (`alga-audit verify-proof --log-keys KEYS FILE` checks it anywhere).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The log's verifier keys, kept from before (`algactl audit log-keys`): check
        /// every page's checkpoint signature and every record's proof against them.
        #[arg(long, value_name = "FILE")]
        log_keys: Option<PathBuf>,
        #[command(flatten)]
        reader: ReaderArgs,
    },
    /// The transparency log's verifier keys (GET /audit/log/vkey), one per line, the
    /// active one first: keep them (and compare them with a copy from another channel)
    /// to check records and proofs offline.
    LogKeys {
        /// Write them to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        reader: ReaderArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Show a tenant: status, edition, appliances, codes (no secrets), mail status.
    Show {
        tenant_id: Uuid,
        #[command(flatten)]
        reader: ReaderArgs,
    },
    /// Change the tenant's edition (PUT /tenants/{id}/entitlement): refused when the
    /// tenant has more active appliances than the new edition allows.
    SetEdition {
        tenant_id: Uuid,
        /// The new edition, as the policy names it (e.g. pro, essentials).
        #[arg(long)]
        edition: String,
    },
    /// Suspend a tenant: its appliances' check-ins and its redeems are refused.
    Suspend {
        tenant_id: Uuid,
        /// Why, for the audit log (one line, no secrets).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended tenant.
    Resume {
        tenant_id: Uuid,
        /// Why, for the audit log (one line, no secrets).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ApplianceCommand {
    /// List appliances, oldest first, optionally by health (ok, overdue, stale: active
    /// appliances of paid editions only).
    List {
        /// Only active appliances of paid editions in this health.
        #[arg(long, value_enum)]
        health: Option<HealthArg>,
        /// At most this many per page (1–1000; the service's default is 100).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start after this cursor (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        /// Follow the pages to the end and print the total.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        reader: ReaderArgs,
    },
    /// Revoke an appliance's credential: its next check-in is refused.
    Revoke {
        appliance_id: Uuid,
        /// Why, for the audit log (one line, no secrets).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Read-only commands speak as the store unless told otherwise.
#[derive(Debug, Args)]
struct ReaderArgs {
    /// Whose identity to present: the store's (ALGA_STORE_CERT/KEY) or the auditor's
    /// (ALGA_AUDITOR_CERT/KEY).
    #[arg(long = "as", value_enum, default_value_t = As::Store)]
    identity: As,
}

/// Which identity a command speaks as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum As {
    Store,
    Auditor,
}

/// `--health`: the wire's [`Health`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HealthArg {
    Ok,
    Overdue,
    Stale,
}

impl From<HealthArg> for Health {
    fn from(h: HealthArg) -> Health {
        match h {
            HealthArg::Ok => Health::Ok,
            HealthArg::Overdue => Health::Overdue,
            HealthArg::Stale => Health::Stale,
        }
    }
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
    let json = cli.json;
    match cli.command {
        Command::Generate(g) => {
            for path in g.run(Cli::command())? {
                println!("{}", path.display());
            }
            Ok(())
        }
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
            output(&resp, json, render::registration)
        }
        Command::Reissue {
            tenant_id,
            contact_email,
            replaces_appliance_id,
            add_appliance,
        } => {
            let client = connect(&cli.conn, As::Store)?;
            let body = ReissueRequest {
                tenant_id,
                contact_email,
                replaces_appliance_id,
                add_appliance,
            };
            let resp: ReissueResponse = client.post(REISSUE, &body, &[]).await?;
            output(&resp, json, render::reissue)
        }
        Command::Tenant { command } => run_tenant(&cli.conn, command, json).await,
        Command::Appliance { command } => run_appliance(&cli.conn, command, json).await,
        Command::Audit { command } => run_audit(&cli.conn, command, json).await,
    }
}

async fn run_tenant(conn: &ConnArgs, command: TenantCommand, json: bool) -> Result<()> {
    match command {
        TenantCommand::Show { tenant_id, reader } => {
            let client = connect(conn, reader.identity)?;
            let body: Value = client.get(&tenant_path(tenant_id)).await?;
            if json {
                return print_json(&body);
            }
            let tenant: TenantView = serde_json::from_value(body)
                .context("the service's tenant view is not what this client expects")?;
            print!(
                "{}",
                render::tenant(&tenant, time::OffsetDateTime::now_utc())
            );
            Ok(())
        }
        TenantCommand::SetEdition { tenant_id, edition } => {
            let client = connect(conn, As::Store)?;
            let resp: EntitlementResponse = client
                .put(
                    &entitlement_path(tenant_id),
                    &EntitlementRequest { edition },
                )
                .await?;
            output(&resp, json, render::entitlement)
        }
        TenantCommand::Suspend { tenant_id, reason } => {
            let client = connect(conn, As::Store)?;
            let resp: TenantStatusResponse = client
                .post(&suspend_path(tenant_id), &ReasonRequest { reason }, &[])
                .await?;
            output(&resp, json, render::tenant_status)
        }
        TenantCommand::Resume { tenant_id, reason } => {
            let client = connect(conn, As::Store)?;
            let resp: TenantStatusResponse = client
                .post(&resume_path(tenant_id), &ReasonRequest { reason }, &[])
                .await?;
            output(&resp, json, render::tenant_status)
        }
    }
}

async fn run_appliance(conn: &ConnArgs, command: ApplianceCommand, json: bool) -> Result<()> {
    match command {
        ApplianceCommand::List {
            health,
            limit,
            after,
            all,
            reader,
        } => {
            let client = connect(conn, reader.identity)?;
            list_appliances(&client, health.map(Health::from), limit, after, all, json).await
        }
        ApplianceCommand::Revoke {
            appliance_id,
            reason,
        } => {
            let client = connect(conn, As::Store)?;
            let body: Value = client
                .post(&revoke_path(appliance_id), &ReasonRequest { reason }, &[])
                .await?;
            if json {
                return print_json(&body);
            }
            // The revocation is done: never fail on how its answer reads.
            match serde_json::from_value::<RevokeResponse>(body.clone()) {
                Ok(r) => print!("{}", render::revoked(&r)),
                Err(_) => print_value(&body),
            }
            Ok(())
        }
    }
}

/// `GET /appliances`, one page (its `next` printed for the following one) or, with
/// `all`, every page to the end with the total.
async fn list_appliances(
    client: &Client,
    health: Option<Health>,
    limit: Option<u32>,
    mut after: Option<String>,
    all: bool,
    json: bool,
) -> Result<()> {
    let mut raw: Vec<Value> = Vec::new();
    let mut typed = Vec::new();
    let mut pages = 0u32;
    let next = loop {
        let body: Value = client
            .get(&appliances_path(health, after.as_deref(), limit))
            .await?;
        let page: AppliancePage = serde_json::from_value(body.clone())
            .context("the service's appliance page is not what this client expects")?;
        pages += 1;
        if !all {
            if json {
                return print_json(&body);
            }
            typed = page.appliances;
            break page.next;
        }
        let n = page.appliances.len();
        raw.extend(body["appliances"].as_array().cloned().unwrap_or_default());
        typed.extend(page.appliances);
        match page.next {
            None => break None,
            Some(next) if n == 0 || after.as_deref() == Some(next.as_str()) => anyhow::bail!(
                "the service's paging does not advance (page {pages} of {n} appliances, next {next}): stopped"
            ),
            Some(next) => after = Some(next),
        }
    };
    if json {
        return print_json(&serde_json::json!({
            "appliances": raw,
            "next": null,
            "total": typed.len(),
        }));
    }
    print!(
        "{}",
        render::appliances(&typed, time::OffsetDateTime::now_utc())
    );
    let filter = health.map_or_else(String::new, |h| format!(" with health {}", h.as_str()));
    match next {
        Some(next) => println!(
            "\n{} appliances{filter} on this page; the next page: --after {next} (or --all)",
            typed.len()
        ),
        None if all => println!(
            "\ntotal: {} appliances{filter} ({pages} page{})",
            typed.len(),
            if pages == 1 { "" } else { "s" }
        ),
        None => println!("\n{} appliances{filter} (the last page)", typed.len()),
    }
    Ok(())
}

/// `/appliances?health=…&after=…&limit=…` with only the given parameters.
fn appliances_path(health: Option<Health>, after: Option<&str>, limit: Option<u32>) -> String {
    let mut query = Vec::new();
    if let Some(h) = health {
        query.push(format!("health={}", h.as_str()));
    }
    if let Some(a) = after {
        query.push(format!("after={}", query_escape(a)));
    }
    if let Some(l) = limit {
        query.push(format!("limit={l}"));
    }
    if query.is_empty() {
        APPLIANCES.to_owned()
    } else {
        format!("{APPLIANCES}?{}", query.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a cursor is opaque).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn run_audit(conn: &ConnArgs, command: AuditCommand, json: bool) -> Result<()> {
    // Export, verify and tail read the whole log: the auditor's routes.
    let auditor = || connect(conn, As::Auditor);
    match command {
        AuditCommand::Export { after, output } => {
            let client = auditor()?;
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
            let client = auditor()?;
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
        AuditCommand::Tail { after, follow } => audit::tail(&auditor()?, after, follow, json).await,
        AuditCommand::Tenant {
            tenant_id,
            out,
            log_keys,
            reader,
        } => {
            let client = connect(conn, reader.identity)?;
            audit_tenant(
                &client,
                tenant_id,
                out.as_deref(),
                log_keys.as_deref(),
                json,
            )
            .await
        }
        AuditCommand::LogKeys { out, reader } => {
            let client = connect(conn, reader.identity)?;
            audit_log_keys(&client, out.as_deref(), json).await
        }
    }
}

/// `algactl audit tenant`: every page, the file, the table, then the verification.
/// The file is written and the table printed before anything is verified, so that a
/// bundle that does not verify is kept as evidence.
async fn audit_tenant(
    client: &Client,
    tenant: Uuid,
    out: Option<&std::path::Path>,
    log_keys: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    // Read the keys first: a wrong path fails before any request.
    let keys = log_keys.map(audit::read_log_keys).transpose()?;
    let pages = audit::tenant_pages(client, tenant).await?;
    let text = audit::pages_json(&pages)?;
    if let Some(path) = out {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        print!("{text}");
    } else {
        print!("{}", render::tenant_audit(&pages.pages));
    }
    if let Some(path) = out {
        let n = pages.pages.len();
        eprintln!(
            "wrote {} ({n} page{}; check it offline: alga-audit verify-proof --log-keys <log keys> {})",
            path.display(),
            if n == 1 { "" } else { "s" },
            path.display()
        );
    }
    let Some(keys) = keys else {
        eprintln!(
            "not verified: pass --log-keys FILE (the log's verifier keys, kept from `algactl audit log-keys`)"
        );
        return Ok(());
    };
    let reports = alga_tlog::verify_pages(&pages.pages, &keys)
        .map_err(|e| anyhow::anyhow!("the tenant's records do NOT verify: {e}"))?;
    let proven = render::tenant_audit_proven(&reports);
    if json {
        eprint!("{proven}");
    } else {
        print!("{proven}");
    }
    Ok(())
}

/// `algactl audit log-keys`: `GET /audit/log/vkey`, checked to parse, as served.
async fn audit_log_keys(client: &Client, out: Option<&std::path::Path>, json: bool) -> Result<()> {
    let (text, keys) = audit::fetch_log_keys(client).await?;
    let vkeys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} verifier key{} of the log {} to {}",
                vkeys.len(),
                if vkeys.len() == 1 { "" } else { "s" },
                keys.origin(),
                path.display()
            );
        }
        None if json => print_json(&serde_json::json!({
            "origin": keys.origin(),
            "vkeys": vkeys,
        }))?,
        None => print!("{text}"),
    }
    Ok(())
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

/// Prints `value` as pretty JSON, or its human form.
fn output<T: Serialize>(value: &T, json: bool, human: fn(&T) -> String) -> Result<()> {
    if json {
        print_json(value)
    } else {
        print!("{}", human(value));
        Ok(())
    }
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An answer this client has no typed view of, as `a.b[0].c  value` rows.
fn print_value(value: &Value) {
    let mut rows = Vec::new();
    flatten("", value, &mut rows);
    let rows: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    print_table(&rows);
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
    print!("{}", render::kv(rows));
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    const A: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
    const T: &str = "11111111-1111-4111-8111-111111111111";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("algactl").chain(args.iter().copied()))
    }

    fn kind(args: &[&str]) -> clap::error::ErrorKind {
        match parse(args) {
            Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reissue_takes_one_replacement_mode_at_most() {
        let cli = parse(&["reissue", "--tenant-id", T, "--replaces-appliance-id", A])
            .expect("--replaces-appliance-id");
        let Command::Reissue {
            tenant_id,
            replaces_appliance_id,
            add_appliance,
            ..
        } = cli.command
        else {
            panic!("not a reissue: {cli:?}");
        };
        assert_eq!(tenant_id.map(|u| u.to_string()).as_deref(), Some(T));
        assert_eq!(
            replaces_appliance_id.map(|u| u.to_string()).as_deref(),
            Some(A)
        );
        assert!(!add_appliance);

        let cli = parse(&["reissue", "--contact-email", "a@b.test", "--add-appliance"])
            .expect("--add-appliance");
        assert!(matches!(
            cli.command,
            Command::Reissue {
                add_appliance: true,
                replaces_appliance_id: None,
                ..
            }
        ));

        let cli = parse(&["reissue", "--contact-email", "a@b.test"]).expect("neither");
        assert!(matches!(
            cli.command,
            Command::Reissue {
                add_appliance: false,
                replaces_appliance_id: None,
                ..
            }
        ));

        use clap::error::ErrorKind;
        assert_eq!(
            kind(&[
                "reissue",
                "--tenant-id",
                T,
                "--replaces-appliance-id",
                A,
                "--add-appliance"
            ]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["reissue", "--tenant-id", T, "--contact-email", "a@b.test"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["reissue", "--add-appliance"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&[
                "reissue",
                "--tenant-id",
                T,
                "--replaces-appliance-id",
                "not-a-uuid"
            ]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn the_health_filter_takes_exactly_the_wire_values() {
        for h in Health::ALL {
            let cli = parse(&["appliance", "list", "--health", h.as_str()])
                .unwrap_or_else(|e| panic!("--health {}: {e}", h.as_str()));
            let Command::Appliance {
                command: ApplianceCommand::List { health, .. },
            } = cli.command
            else {
                panic!("not a list: {cli:?}");
            };
            assert_eq!(health.map(Health::from), Some(h));
        }
        let listed: Vec<String> = HealthArg::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        let wire: Vec<&str> = Health::ALL.iter().map(|h| h.as_str()).collect();
        assert_eq!(listed, wire);
        use clap::error::ErrorKind;
        for bad in ["healthy", "OK ", "late", ""] {
            assert_eq!(
                kind(&["appliance", "list", "--health", bad]),
                ErrorKind::InvalidValue,
                "--health {bad:?}"
            );
        }
    }

    #[test]
    fn appliance_list_bounds_its_limit_and_defaults_to_the_store() {
        let cli = parse(&["appliance", "list"]).expect("no options");
        let Command::Appliance {
            command:
                ApplianceCommand::List {
                    health,
                    limit,
                    after,
                    all,
                    reader,
                },
        } = cli.command
        else {
            panic!("not a list: {cli:?}");
        };
        assert_eq!((health, limit, after, all), (None, None, None, false));
        assert_eq!(reader.identity, As::Store);

        let cli = parse(&[
            "appliance",
            "list",
            "--limit",
            "1000",
            "--all",
            "--as",
            "auditor",
        ])
        .expect("limit 1000");
        assert!(matches!(
            cli.command,
            Command::Appliance {
                command: ApplianceCommand::List {
                    limit: Some(1000),
                    all: true,
                    reader: ReaderArgs {
                        identity: As::Auditor
                    },
                    ..
                }
            }
        ));
        use clap::error::ErrorKind;
        for bad in ["0", "1001", "-1", "ten"] {
            assert_eq!(
                kind(&["appliance", "list", &format!("--limit={bad}")]),
                ErrorKind::ValueValidation,
                "--limit {bad}"
            );
        }
        assert_eq!(
            kind(&["appliance", "list", "--as", "gateway"]),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn tenant_subcommands_parse() {
        let cli =
            parse(&["tenant", "set-edition", T, "--edition", "essentials"]).expect("set-edition");
        assert!(matches!(
            cli.command,
            Command::Tenant { command: TenantCommand::SetEdition { ref edition, .. } } if edition == "essentials"
        ));
        assert_eq!(
            kind(&["tenant", "set-edition", T]),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let cli = parse(&["tenant", "suspend", T, "--reason", "unpaid invoice"]).expect("suspend");
        assert!(matches!(
            cli.command,
            Command::Tenant { command: TenantCommand::Suspend { reason: Some(ref r), .. } } if r == "unpaid invoice"
        ));
        let cli = parse(&["tenant", "resume", T]).expect("resume");
        assert!(matches!(
            cli.command,
            Command::Tenant {
                command: TenantCommand::Resume { reason: None, .. }
            }
        ));
        let cli = parse(&["--json", "tenant", "show", T, "--as", "auditor"]).expect("show");
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Tenant {
                command: TenantCommand::Show {
                    reader: ReaderArgs {
                        identity: As::Auditor
                    },
                    ..
                }
            }
        ));
        let cli = parse(&["appliance", "revoke", A, "--json"]).expect("revoke");
        assert!(cli.json);
    }

    #[test]
    fn audit_tenant_and_log_keys_parse() {
        let cli = parse(&[
            "audit",
            "tenant",
            T,
            "--out",
            "t.json",
            "--log-keys",
            "log.vkey",
        ])
        .expect("audit tenant");
        let Command::Audit {
            command:
                AuditCommand::Tenant {
                    tenant_id,
                    out,
                    log_keys,
                    reader,
                },
        } = cli.command
        else {
            panic!("not audit tenant: {cli:?}");
        };
        assert_eq!(tenant_id.to_string(), T);
        assert_eq!(out, Some(PathBuf::from("t.json")));
        assert_eq!(log_keys, Some(PathBuf::from("log.vkey")));
        assert_eq!(reader.identity, As::Store);
        let cli = parse(&["audit", "tenant", T, "--as", "auditor"]).expect("as auditor");
        assert!(matches!(
            cli.command,
            Command::Audit {
                command: AuditCommand::Tenant {
                    out: None,
                    log_keys: None,
                    reader: ReaderArgs {
                        identity: As::Auditor
                    },
                    ..
                }
            }
        ));
        use clap::error::ErrorKind;
        assert_eq!(
            kind(&["audit", "tenant"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["audit", "tenant", "not-a-uuid"]),
            ErrorKind::ValueValidation
        );
        let cli = parse(&["audit", "log-keys", "--out", "log.vkey"]).expect("log-keys");
        assert!(matches!(
            cli.command,
            Command::Audit {
                command: AuditCommand::LogKeys { out: Some(ref p), .. }
            } if p == &PathBuf::from("log.vkey")
        ));
    }

    #[test]
    fn the_appliances_query_has_only_what_was_given() {
        assert_eq!(appliances_path(None, None, None), "/appliances");
        assert_eq!(
            appliances_path(Some(Health::Overdue), Some(A), Some(50)),
            format!("/appliances?health=overdue&after={A}&limit=50")
        );
        assert_eq!(
            appliances_path(None, Some("a b&c=d/é"), None),
            "/appliances?after=a%20b%26c%3Dd%2F%C3%A9"
        );
    }
}
