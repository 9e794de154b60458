//! `alga-audit`: the security staff's tool to export, verify and follow the audit log,
//! and to reconcile it with the issuer's signing logs; and the transparency log's
//! tool: publish its tiles, verify it incrementally from a kept checkpoint, check
//! proof bundles offline, and run a witness.
//!
//! Thin: sets up tracing and the runtime, and maps the outcome to the exit code. The
//! arguments and each command's printing are in `cli/`, the work in the library.
//! Exit codes: 0 intact or reconciled (or command done), 1 damage or discrepancies
//! found (or a proof or checkpoint refused), 2 could not run.
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a binary is an edge: it reads the environment and the clock, and reports with anyhow"
)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
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
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("alga-audit: {e:#}");
            ExitCode::from(2)
        }
    }
}
