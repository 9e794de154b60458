//! `alga-issuer`: thin binary. Parses arguments, loads configuration and policy, sets
//! up tracing, then hands over to the library (`hsm::admin` for key ceremonies,
//! `server::run` for serving).
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a binary is an edge: it reads the environment and the clock, and reports with anyhow"
)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use time::OffsetDateTime;

use alga_issuer::config::{IssuerConfig, read_secret};
use alga_issuer::hsm::{self, admin};
use alga_issuer::keyring::KeyKind;
use alga_policies::Policy;

#[derive(Debug, Parser)]
#[command(
    name = "alga-issuer",
    version = alga_buildinfo::VERSION,
    about = "The isolated issuer: every key in the HSM"
)]
struct Cli {
    /// Issuer configuration file (TOML).
    #[arg(long, global = true, env = "ALGA_ISSUER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the signing API over mTLS to the gateway's identity only.
    Serve,
    /// Token administration (development and tests; production tokens are set up with the vendor's tools).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Key ceremonies: create, list and rotate the keys on the token.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Write this program's man pages or a shell completion script (packaging).
    #[command(hide = true)]
    Generate(alga_buildinfo::Generate),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Initialize a token with the configured label on a free slot and set its user PIN.
    Init {
        /// File holding the security officer PIN.
        #[arg(long)]
        so_pin_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create the keys (root, license, ca, code, audit, log), the root's and the
    /// appliance CA's certificates, and the root's certificate of the CA and
    /// endorsement of the license key.
    Init {
        /// Do nothing (exit 0) when the complete key set already exists; on a token
        /// made before the trust root or the log key existed, add the root and what it
        /// signs, and the log key.
        #[arg(long)]
        if_missing: bool,
    },
    /// Have the trust root endorse the active license key again for the policy's
    /// editions (after an edition's features, seats or license lifetime grew).
    Certify,
    /// Print the trust root's certificate (PEM): the file every appliance pins.
    TrustRoot {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List every key version: kid, type, public fingerprint, created.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create a new version of one key kind; old public keys stay published.
    Rotate {
        /// One of: license, ca, code, audit, log (the root is not rotated this way).
        kind: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ALGA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Generate(g) = &cli.command {
        for path in g.run(Cli::command())? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let config_path = cli
        .config
        .context("no configuration: pass --config or set ALGA_ISSUER_CONFIG")?;
    let config = IssuerConfig::load(&config_path)?;
    let policy = Policy::load(&config.policy.path)
        .with_context(|| format!("policy {}", config.policy.path.display()))?;

    match cli.command {
        Command::Serve => {
            let pin = config.hsm.pin()?;
            let keys = tokio::task::spawn_blocking({
                let hsm_config = config.hsm.clone();
                move || hsm::Hsm::open(&hsm_config, pin)
            })
            .await??;
            let listener = std::net::TcpListener::bind(config.listen.address)
                .with_context(|| format!("binding {}", config.listen.address))?;
            tracing::info!(listen.address = %config.listen.address, "issuer serving");
            alga_issuer::server::run(config, policy, keys, listener, shutdown_signal()).await?;
        }
        Command::Token {
            command: TokenCommand::Init { so_pin_file },
        } => {
            let so_pin = read_secret("ALGA_HSM_SO_PIN", Some(&so_pin_file))?;
            let pin = config.hsm.pin()?;
            let outcome = admin::token_init(&config.hsm, so_pin, pin)?;
            println!("{outcome}");
        }
        Command::Keys { command } => {
            let pin = config.hsm.pin()?;
            let now = OffsetDateTime::now_utc();
            match command {
                KeysCommand::Init { if_missing } => {
                    let outcome = admin::keys_init(&config.hsm, pin, &policy, now, if_missing)?;
                    println!("{outcome}");
                }
                KeysCommand::Certify => {
                    let e = admin::keys_certify(&config.hsm, pin, &policy, now)?;
                    println!(
                        "endorsed {} for {} (editions: {})",
                        e.key.kid,
                        e.iss,
                        e.editions.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
                KeysCommand::TrustRoot { out } => {
                    let pem = admin::keys_trust_root(&config.hsm, pin)?;
                    match out {
                        Some(path) => std::fs::write(&path, pem)
                            .with_context(|| format!("writing {}", path.display()))?,
                        None => print!("{pem}"),
                    }
                }
                KeysCommand::List { json } => {
                    let keys = admin::keys_list(&config.hsm, pin)?;
                    admin::print_key_list(&keys, json)?;
                }
                KeysCommand::Rotate { kind } => {
                    let kind = KeyKind::parse(&kind).with_context(|| {
                        format!("unknown key kind {kind:?}: use license, ca, code, audit or log")
                    })?;
                    let kind = Some(kind).filter(|k| *k != KeyKind::Root).with_context(|| {
                        "the trust root is not rotated by `keys rotate` (SECURITY.md: changing the trust root)"
                    })?;
                    let info = admin::keys_rotate(&config.hsm, pin, kind, &policy, now)?;
                    println!("created {} ({})", info.kid, info.kind);
                }
            }
        }
        // Answered above, before any configuration is read.
        Command::Generate(_) => {}
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
