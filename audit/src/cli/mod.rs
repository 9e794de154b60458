//! The `alga-audit` binary's commands: the arguments (clap) and, per command, a
//! function that calls the library and prints its result.
//!
//! - `log`: the chain's commands (`export`, `verify` of the database or an export,
//!   `tail`).
//! - `reconcile`: the issuer's signing logs against the records.
//! - `transparency`: the transparency log's commands that need no HTTP (`publish`,
//!   `verify --from-checkpoint`, `verify-proof`).
//! - `witness`: `witness init|poll|serve` (the only HTTP code of the crate).

mod log;
mod reconcile;
mod transparency;
mod witness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "alga-audit",
    version = alga_buildinfo::VERSION,
    about = "Export, verify and follow the alga-license audit log"
)]
pub struct Cli {
    #[command(flatten)]
    database: Database,
    /// Machine-readable output (JSON) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where the database is, for the commands that read it.
#[derive(Args, Debug)]
struct Database {
    /// Postgres URL (a password in it is your choice; prefer --password-file).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// File holding the database password (first line), instead of the URL.
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write chained records and checkpoints as JSON lines (FORMAT.md).
    Export(log::ExportArgs),
    /// Recompute the chain and check every checkpoint; exit 0 only when intact.
    ///
    /// With --from-checkpoint: verify incrementally instead, from a checkpoint of the
    /// transparency log kept from an earlier run (only the records after it are read).
    Verify(log::VerifyArgs),
    /// Match the issuer's signing log(s) against the audit records: list what was
    /// signed and never recorded, and what was recorded as signed and is absent from
    /// the issuer's log. Exit 0 only when both lists are empty and every log verifies.
    Reconcile(reconcile::ReconcileArgs),
    /// Print the newest records, then follow new ones as they are chained.
    Tail(log::TailArgs),
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
        command: witness::WitnessCommand,
    },
    /// Write this program's man pages or a shell completion script (packaging).
    #[command(hide = true)]
    Generate(alga_buildinfo::Generate),
}

/// Runs the command: `Ok` with its exit code (0 or 1), `Err` when it could not run
/// (the caller exits 2).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (db, json) = (&cli.database, cli.json);
    match &cli.command {
        Command::Generate(g) => {
            for path in g.run(Cli::command())? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export(args) => log::export(db, args).await,
        Command::Verify(args) => match (&args.from_checkpoint, &args.log_keys) {
            (Some(from), Some(log_keys)) => {
                let client = db.connect().await?;
                transparency::verify_incremental(&client, from, log_keys, args.update, json).await
            }
            (Some(_), None) => bail!("--from-checkpoint needs --log-keys"),
            (None, _) => log::verify(db, args, json).await,
        },
        Command::Reconcile(args) => reconcile::run(db, args, json).await,
        Command::Tail(args) => log::tail(db, args, json).await,
        Command::Publish { to } => {
            let client = db.connect().await?;
            transparency::publish(&client, to, json).await
        }
        Command::VerifyProof {
            log_keys,
            bundle,
            record,
        } => transparency::verify_proof(log_keys, bundle, record.as_deref(), json),
        Command::Witness { command } => witness::run(command).await,
    }
}

/// 0 when the check passed, 1 when it found something.
fn passed(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

impl Database {
    /// Connects, with the password from `--password-file` if given.
    async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let Some(url) = &self.database_url else {
            bail!("no database: pass --database-url or set DATABASE_URL");
        };
        let mut config = tokio_postgres::Config::from_str(url).context("bad --database-url")?;
        if let Some(path) = &self.password_file {
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
}
