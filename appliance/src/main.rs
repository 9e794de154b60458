//! `alga-appliance`: parses the command line, sets up logging to stderr, calls the
//! library, prints a summary (never a code, token or key) and exits with the error's
//! exit code (see `--help`).
#![forbid(unsafe_code)]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a binary is an edge: it reads the environment and the clock, and reports with anyhow"
)]

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alga_appliance::bootstrap::{self, LicenseState, TenantAction};
use alga_appliance::check_in::{self, CheckInConfig, Outcome};
use alga_appliance::crypto::{self, LicenseTimes};
use alga_appliance::offline;
use alga_appliance::redeem::{self, RedeemConfig};
use alga_appliance::service::Retry;
use alga_appliance::{EXIT_CODES_HELP, Error, VERSION};
use alga_protocol::SecretText;
use clap::{Args, CommandFactory, Parser, Subcommand};
use time::OffsetDateTime;
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(name = "alga-appliance", version = alga_buildinfo::VERSION, about = "The appliance side of alga-license: redeem an install code, check in, bootstrap the tenant.", after_long_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Redeem an install code: writes appliance.key and the two Secret manifests into --out.
    ///
    /// The code is read from standard input unless --code-file or --code is given.
    /// Prefer standard input or --code-file: a --code argument is visible to other
    /// local users (ps, /proc) while the program runs.
    ///
    /// Air-gapped: --offline-request FILE writes a request (code, CSR) for `relay` and
    /// keeps the key in --out, with no network; --offline-response FILE then verifies
    /// the relay's answer against --ca-bundle and --trust-root and writes the Secrets.
    #[command(after_long_help = EXIT_CODES_HELP)]
    Redeem(RedeemArgs),
    /// Refresh the license over mTLS and rotate the credential when it nears expiry.
    ///
    /// The license follows the tenant's edition: another paid edition replaces EDITION;
    /// an edition without a license rewrites the seed to that edition alone (and removes
    /// appliance.key); a seed without a license has nothing to refresh (exit 0).
    /// license_state changes only with --database-url, else by `bootstrap seed-license`.
    #[command(name = "check-in", after_long_help = EXIT_CODES_HELP)]
    CheckIn(CheckInArgs),
    /// On a connected machine: perform an air-gapped appliance's request file over the
    /// normal API and write the response file for the appliance.
    ///
    /// The request's kind is read from its "format": a redeem request
    /// (`redeem --offline-request`) is sent to POST /register, a check-in request
    /// (`check-in --offline-request`) to POST /check-in/relayed. A redeem request holds
    /// the install code: keep it as secret as the code, and delete it once answered.
    #[command(after_long_help = EXIT_CODES_HELP)]
    Relay(RelayArgs),
    /// In-cluster bootstrap steps against the appliance's own Postgres.
    #[command(subcommand)]
    Bootstrap(BootstrapCommand),
    /// Write this program's man pages or a shell completion script (packaging).
    #[command(hide = true)]
    Generate(alga_buildinfo::Generate),
}

#[derive(Debug, Args)]
struct RedeemArgs {
    /// The install code (visible to other local users: prefer stdin or --code-file).
    #[arg(long, conflicts_with_all = ["code_file", "offline_response"])]
    code: Option<String>,
    /// A file holding the install code.
    #[arg(long, conflicts_with = "offline_response")]
    code_file: Option<PathBuf>,
    /// Base URL of the license service (not used with --offline-request or
    /// --offline-response).
    #[arg(
        long,
        env = "ALGA_LICENSE_SERVICE_URL",
        required_unless_present_any = ["offline_request", "offline_response"]
    )]
    service_url: Option<String>,
    /// The CA bundle (PEM) that authenticates the license service's TLS: the only TLS
    /// trust used (kept in the license seed for check-in).
    #[arg(long, required_unless_present = "offline_request")]
    ca_bundle: Option<PathBuf>,
    /// The trust root (PEM) of the license authority, shipped with the appliance: every
    /// license and credential must chain to it (`alga-issuer keys trust-root`).
    #[arg(
        long,
        env = "ALGA_TRUST_ROOT",
        required_unless_present = "offline_request"
    )]
    trust_root: Option<PathBuf>,
    /// Air-gapped: write the redeem request to this file (mode 0600; it holds the
    /// install code) instead of calling the service; no network is used. Carry it to
    /// a connected machine and run `alga-appliance relay` there.
    #[arg(long, value_name = "FILE", conflicts_with = "offline_response")]
    offline_request: Option<PathBuf>,
    /// Air-gapped: install the response file `relay` wrote for the request made in
    /// --out, after verifying it offline; no network is used and the code is not read.
    #[arg(long, value_name = "FILE")]
    offline_response: Option<PathBuf>,
    /// Output directory for appliance.key and the Secret manifests (created 0700).
    #[arg(long)]
    out: PathBuf,
    /// Host name reported to the service (default: this machine's).
    #[arg(long)]
    hostname: Option<String>,
}

#[derive(Debug, Args)]
struct CheckInArgs {
    /// Directory holding appliance-license-seed.yaml (updated in place, atomically).
    #[arg(long)]
    seed: PathBuf,
    /// Base URL of the license service to check in with (default: CHECK_IN_URL of the
    /// license seed).
    #[arg(long, env = "ALGA_LICENSE_SERVICE_URL")]
    service_url: Option<String>,
    /// CA bundle for the service (default: CA_CERT of the license seed).
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// Trust root of the license authority (default: TRUST_ROOT of the license seed;
    /// required for a seed written before alga-appliance pinned one). Deliberately not
    /// read from ALGA_TRUST_ROOT: the root pinned at redeem stays the one in force
    /// unless replaced on purpose.
    #[arg(long)]
    trust_root: Option<PathBuf>,
    /// Send a CSR for a new key now, whatever the certificate's remaining lifetime (the
    /// service may still renew only near expiry; the key changes only if it does).
    #[arg(long)]
    rotate: bool,
    /// The appliance's own Postgres: when given, license_state is then written from the
    /// updated seed, as `bootstrap seed-license` does. Without it only the Secret
    /// changes, and `bootstrap seed-license` applies it. Prefer the environment
    /// variable: argv is visible to other local users.
    #[arg(long, env = "ALGA_APPLIANCE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Air-gapped: write a check-in request signed with this appliance's key to this
    /// file instead of calling the service (no network; --database-url is not used);
    /// `alga-appliance relay` submits it from a connected machine.
    #[arg(long, value_name = "FILE", conflicts_with = "offline_response")]
    offline_request: Option<PathBuf>,
    /// Air-gapped: install the response file `relay` wrote for the last
    /// --offline-request, after verifying it offline as an online check-in's answer.
    #[arg(long, value_name = "FILE")]
    offline_response: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// The request file the appliance wrote (`redeem` or `check-in --offline-request`).
    #[arg(long, value_name = "FILE")]
    request: PathBuf,
    /// Where to write the response file for the appliance (mode 0600).
    #[arg(long, value_name = "FILE")]
    response: PathBuf,
    /// Base URL of the license service.
    #[arg(long, env = "ALGA_LICENSE_SERVICE_URL")]
    service_url: String,
    /// The CA bundle (PEM) that authenticates the license service's TLS.
    #[arg(long)]
    ca_bundle: PathBuf,
}

#[derive(Debug, Subcommand)]
enum BootstrapCommand {
    /// Adopt INITIAL_TENANT_ID (or generate an id when there is none); idempotent.
    #[command(name = "create-tenant", after_long_help = EXIT_CODES_HELP)]
    CreateTenant(BootstrapArgs),
    /// Write license_state from the appliance-license-seed Secret.
    #[command(name = "seed-license", after_long_help = EXIT_CODES_HELP)]
    SeedLicense(BootstrapArgs),
}

#[derive(Debug, Args)]
struct BootstrapArgs {
    /// Directory holding the Secret manifests (appliance-*.yaml).
    #[arg(long)]
    secrets: PathBuf,
    /// The appliance's own Postgres (prefer the environment variable: argv is visible).
    #[arg(long, env = "ALGA_APPLIANCE_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ALGA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alga-appliance: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let now = OffsetDateTime::now_utc();
    match cli.command {
        Command::Generate(g) => {
            let written = g.run(Cli::command()).map_err(|source| Error::Io {
                action: "write",
                path: g.out.clone(),
                source,
            })?;
            for path in written {
                println!("{}", path.display());
            }
        }
        Command::Redeem(a) if a.offline_request.is_some() => {
            let code = read_code(&a)?;
            let cfg = offline::RedeemRequestConfig {
                out_dir: a.out,
                request_file: a.offline_request.unwrap_or_default(),
                hostname: a.hostname.unwrap_or_else(alga_appliance::hostname),
                version: VERSION.to_owned(),
            };
            let w = offline::write_redeem_request(&cfg, &code, now)?;
            println!(
                "wrote: {} (holds the install code: keep it secret)",
                w.file.display()
            );
            println!("nonce: {}", w.nonce);
            println!(
                "next: on a connected machine, `alga-appliance relay --request <file> --response <file>`, then `alga-appliance redeem --offline-response <file>` here"
            );
        }
        Command::Redeem(a) if a.offline_response.is_some() => {
            let (Some(ca_bundle), Some(trust_root)) = (a.ca_bundle, a.trust_root) else {
                // clap requires both with --offline-response.
                return Err(Error::LocalInput {
                    what: "the command line".into(),
                    detail: "--offline-response needs --ca-bundle and --trust-root".into(),
                });
            };
            let cfg = offline::InstallRedeemConfig {
                response_file: a.offline_response.unwrap_or_default(),
                out_dir: a.out,
                ca_bundle,
                trust_root,
            };
            print_redeemed(&offline::install_redeem_response(&cfg, now)?);
        }
        Command::Redeem(a) => {
            let code = read_code(&a)?;
            let (Some(service_url), Some(ca_bundle), Some(trust_root)) =
                (a.service_url, a.ca_bundle, a.trust_root)
            else {
                // clap requires all three without --offline-request/-response.
                return Err(Error::LocalInput {
                    what: "the command line".into(),
                    detail: "redeem needs --service-url, --ca-bundle and --trust-root".into(),
                });
            };
            let cfg = RedeemConfig {
                service_url,
                ca_bundle,
                trust_root,
                out_dir: a.out,
                hostname: a.hostname.unwrap_or_else(alga_appliance::hostname),
                version: VERSION.to_owned(),
                retry: Retry::default(),
            };
            print_redeemed(&redeem::redeem(&cfg, &code, now).await?);
        }
        Command::Relay(a) => {
            let cfg = offline::RelayConfig {
                service_url: a.service_url,
                ca_bundle: a.ca_bundle,
                request_file: a.request,
                response_file: a.response,
                retry: Retry::default(),
            };
            match offline::relay(&cfg).await? {
                offline::Relayed::Redeem {
                    tenant_id,
                    appliance_id,
                    edition,
                } => {
                    println!("relayed: redeem");
                    println!("tenant_id: {tenant_id}");
                    println!("appliance_id: {appliance_id}");
                    println!("edition: {edition}");
                }
                offline::Relayed::CheckIn {
                    edition,
                    licensed,
                    credential_renewed,
                } => {
                    println!("relayed: check-in");
                    if let Some(e) = edition {
                        println!("edition: {e}");
                    }
                    println!("license: {}", if licensed { "issued" } else { "none" });
                    println!("credential_renewed: {credential_renewed}");
                }
            }
            println!("wrote: {}", cfg.response_file.display());
        }
        Command::CheckIn(a) if a.offline_request.is_some() => {
            let cfg = offline::CheckInRequestConfig {
                seed_dir: a.seed,
                request_file: a.offline_request.unwrap_or_default(),
                force_rotate: a.rotate,
                version: VERSION.to_owned(),
            };
            match offline::write_check_in_request(&cfg, now)? {
                offline::CheckInRequestOutcome::Written(w) => {
                    println!("wrote: {}", w.file.display());
                    println!("nonce: {}", w.nonce);
                    println!("credential_rotation_requested: {}", w.new_key);
                    println!(
                        "next: on a connected machine, `alga-appliance relay --request <file> --response <file>` within 7 days, then `alga-appliance check-in --offline-response <file>` here"
                    );
                }
                offline::CheckInRequestOutcome::NothingToRefresh { edition } => {
                    print_check_in(&Outcome::NothingToRefresh { edition });
                }
            }
        }
        Command::CheckIn(a) if a.offline_response.is_some() => {
            let cfg = offline::InstallCheckInConfig {
                seed_dir: a.seed,
                response_file: a.offline_response.unwrap_or_default(),
                trust_root: a.trust_root,
            };
            let outcome = offline::install_check_in_response(&cfg, now)?;
            print_check_in(&outcome);
            after_check_in(&cfg.seed_dir, a.database_url.as_deref(), now).await?;
        }
        Command::CheckIn(a) => {
            let cfg = CheckInConfig {
                seed_dir: a.seed,
                service_url: a.service_url,
                ca_bundle: a.ca_bundle,
                trust_root: a.trust_root,
                force_rotate: a.rotate,
                version: VERSION.to_owned(),
                retry: Retry::default(),
            };
            let outcome = match check_in::check_in(&cfg, now).await {
                Ok(o) => o,
                Err(e) => {
                    if let Some(w) = check_in::deadline_warning(&cfg.seed_dir, &e, now) {
                        eprintln!("alga-appliance: warning: {w}");
                    }
                    return Err(e);
                }
            };
            print_check_in(&outcome);
            after_check_in(&cfg.seed_dir, a.database_url.as_deref(), now).await?;
        }
        Command::Bootstrap(BootstrapCommand::CreateTenant(a)) => {
            let initial = bootstrap::read_initial_tenant(&a.secrets)?;
            let mut db = bootstrap::connect(&a.database_url).await?;
            let r = bootstrap::create_tenant(&mut db, initial, now).await?;
            let what = match r.action {
                TenantAction::Adopted => "adopted from the install code",
                TenantAction::Generated => "generated (no install code)",
                TenantAction::Unchanged => "already set, unchanged",
            };
            println!("tenant_id: {} ({what})", r.tenant_id);
        }
        Command::Bootstrap(BootstrapCommand::SeedLicense(a)) => {
            let (state, check_in_by) = seed_license_state(&a.secrets, &a.database_url, now).await?;
            print_license_state(&state, check_in_by, "");
        }
    }
    Ok(())
}

/// What a redeem (online or offline) did, one `key: value` a line (no secrets).
fn print_redeemed(r: &redeem::Redeemed) {
    println!("tenant_id: {}", r.tenant_id);
    println!("appliance_id: {}", r.appliance_id);
    println!("edition: {}", r.edition);
    if let Some(t) = r.license_expires_at {
        println!("license_expires_at: {t}");
    }
    for f in &r.files {
        println!("wrote: {}", f.display());
    }
}

/// After a check-in (online or offline) updated the seed in `seed_dir`: with
/// `--database-url`, license_state from it, as `bootstrap seed-license` does.
async fn after_check_in(
    seed_dir: &Path,
    database_url: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let Some(url) = database_url else {
        return Ok(());
    };
    // The Secret is written: a database failure now leaves license_state behind it,
    // which `bootstrap seed-license` (or the next check-in) fixes.
    let (state, check_in_by) = seed_license_state(seed_dir, url, now)
        .await
        .inspect_err(|_| {
            eprintln!(
                "alga-appliance: the license seed is up to date but license_state is not; once the problem below is fixed, `alga-appliance bootstrap seed-license` applies it"
            );
        })?;
    println!("license_state:");
    print_license_state(&state, check_in_by, "  ");
    Ok(())
}

/// `bootstrap seed-license`: license_state from the license seed in `dir`, and the
/// seed's license's `check_in_by` (not stored: the token in license_state carries it).
async fn seed_license_state(
    dir: &Path,
    database_url: &str,
    now: OffsetDateTime,
) -> Result<(LicenseState, Option<OffsetDateTime>), Error> {
    let seed = bootstrap::read_license_seed(dir)?;
    let mut db = bootstrap::connect(database_url).await?;
    let state = bootstrap::seed_license(&mut db, seed.as_ref(), now).await?;
    let check_in_by = seed
        .as_ref()
        .and_then(|s| s.paid.as_ref())
        .and_then(|p| crypto::claims_of_verified_token(&p.token).ok())
        .and_then(|c| LicenseTimes::of(&c))
        .and_then(|t| t.check_in_by);
    Ok((state, check_in_by))
}

fn print_license_state(s: &LicenseState, check_in_by: Option<OffsetDateTime>, indent: &str) {
    println!("{indent}tenant_id: {}", s.tenant_id);
    println!("{indent}edition: {}", s.edition);
    println!("{indent}tier: {}", s.tier);
    if let Some(t) = s.expires_at {
        println!("{indent}license_expires_at: {t}");
    }
    if let Some(t) = check_in_by {
        println!("{indent}check_in_by: {}", alga_appliance::rfc3339(t));
    }
    if let Some(t) = s.next_refresh_at {
        println!("{indent}next_refresh_at: {t}");
    }
}

/// What a check-in did, one `key: value` a line (no code, token or key).
fn print_check_in(outcome: &Outcome) {
    match outcome {
        Outcome::Refreshed(r) => {
            println!("edition: {}", r.edition);
            if let Some(p) = &r.previous_edition {
                println!("previous_edition: {p}");
            }
            println!("tier: licensed");
            println!("license_expires_at: {}", r.license_expires_at);
            if let Some(t) = r.check_in_by {
                println!("check_in_by: {}", alga_appliance::rfc3339(t));
            }
            println!("next_check_in_after: {}", r.next_check_in_after);
            println!("credential_rotated: {}", r.rotated);
            println!("credential_expires_at: {}", r.credential_expires_at);
        }
        Outcome::Unlicensed(u) => {
            println!("edition: {}", u.edition);
            println!("previous_edition: {}", u.previous_edition);
            println!("tier: essentials");
            println!("license: none (the tenant's edition has no license)");
            println!("wrote: {}", u.seed_file.display());
            if let Some(k) = &u.removed_key_file {
                println!("removed: {}", k.display());
            }
            println!(
                "note: this appliance no longer checks in; to license it again, redeem a re-issued install code on it, then run `bootstrap create-tenant` and `bootstrap seed-license`"
            );
        }
        Outcome::NothingToRefresh { edition } => {
            println!("edition: {edition}");
            println!("tier: essentials");
            println!(
                "license: none (edition {edition} has no license: nothing to refresh, nothing was sent)"
            );
        }
    }
}

/// The code from --code, --code-file, or standard input (prompting on a terminal).
fn read_code(a: &RedeemArgs) -> Result<SecretText, Error> {
    if let Some(c) = &a.code {
        return Ok(SecretText::new(c.clone()));
    }
    let mut buf = Zeroizing::new(String::new());
    match &a.code_file {
        Some(path) => {
            let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::Io {
                action: "read",
                path: path.clone(),
                source: e,
            })?);
            buf.push_str(&String::from_utf8_lossy(&bytes));
        }
        None => {
            let stdin = std::io::stdin();
            let read = if stdin.is_terminal() {
                eprint!("Install code: ");
                let _ = std::io::stderr().flush();
                stdin.read_line(&mut buf)
            } else {
                stdin.lock().take(4096).read_to_string(&mut buf)
            };
            read.map_err(|e| Error::Io {
                action: "read the code from",
                path: PathBuf::from("standard input"),
                source: e,
            })?;
        }
    }
    // Only the first line: a file may end with a newline, a terminal with Enter.
    let line = buf.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Ok(SecretText::new(line.trim().to_owned()))
}
