#![forbid(unsafe_code)]
//! `alga-gateway`: thin binary. `migrate` applies the schema as the migration role;
//! `serve` binds the API port (and the `[ops]` listener when configured) and runs
//! until SIGINT/SIGTERM.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a binary is an edge: it reads the environment and the clock, and reports with anyhow"
)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "alga-gateway",
    version = alga_buildinfo::VERSION,
    about = "alga-license gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database schema (audit's migrations, then the gateway's), as the migration role.
    Migrate {
        #[arg(long, env = "ALGA_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Serve the HTTPS API.
    Serve {
        #[arg(long, env = "ALGA_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Check the configuration and the policy it points to, reporting every problem.
    CheckConfig {
        #[arg(long, env = "ALGA_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Check a policy file, reporting every problem with its TOML path.
    CheckPolicy {
        #[arg(long, env = "ALGA_POLICY")]
        policy: PathBuf,
    },
    /// Write this program's man pages or a shell completion script (packaging).
    #[command(hide = true)]
    Generate(alga_buildinfo::Generate),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate { config } => {
            let config = alga_gateway::config::Config::load(&config)?;
            let pg = alga_gateway::migrator_pg_config(&config)?;
            let applied = alga_gateway::db::migrate::migrate(&pg)
                .await
                .context("migrate")?;
            if applied.is_empty() {
                println!("schema up to date");
            } else {
                for name in applied {
                    println!("applied {name}");
                }
            }
        }
        Command::Serve { config } => {
            let config = alga_gateway::config::Config::load(&config)?;
            let policy = alga_policies::Policy::load(&config.policy.path)?;
            let listeners = alga_gateway::Listeners::bind(&config)?;
            alga_gateway::run_on(config, policy, listeners, shutdown_signal()).await?;
        }
        Command::CheckPolicy { policy } => {
            alga_policies::Policy::load(&policy)?;
            println!("policy is valid");
        }
        Command::CheckConfig { config } => {
            let config = alga_gateway::config::Config::load(&config)?;
            alga_policies::Policy::load(&config.policy.path)?;
            println!("configuration and policy are valid");
        }
        Command::Generate(g) => {
            for path in g.run(Cli::command())? {
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
