//! The appliance side of alga-license (CONTRACT.md §7): what the appliance's setup engine
//! and in-cluster bootstrap do.
//!
//! - [`redeem`]: the install code → a local EC P-256 key, a CSR, `POST /register`, the
//!   license and certificate verified, the two Kubernetes Secrets written
//!   ([`secrets`]).
//! - [`check_in`]: the daily license refresh over mTLS, rotating the credential when
//!   it nears expiry, following the tenant's edition (another paid edition, or none:
//!   the seed falls back to an unlicensed edition).
//! - [`offline`]: the same redeem and check-in for an air-gapped appliance, through
//!   request and response files that a relay on a connected machine carries to the
//!   service; the appliance side verifies exactly as online, without a network.
//! - [`bootstrap`]: adopt the tenant id and seed `license_state` in the appliance's
//!   own Postgres.
//!
//! Invariants:
//! - the private key is generated on the appliance and never sent anywhere; key files
//!   and the license-seed Secret are created with mode 0600 from the start;
//! - nothing is printed or logged that contains the code, the token or the key;
//! - the service is trusted only through the CA bundle given (no system roots);
//! - a failure writes no Secret: an appliance never makes up a tenant;
//! - time is a parameter (`now`) of every function that checks validity.
//!
//! # Exit codes
//!
//! | code | meaning | what the operator does |
//! |---|---|---|
//! | 0 | success | |
//! | 1 | internal error, or the service refused our request | contact support |
//! | 2 | bad command line | see `--help` |
//! | 10 | the code is malformed (typo, found offline; names the group) | retype the code |
//! | 11 | the code is unknown to the service | check it; else ask for a re-issued code |
//! | 12 | the code expired | ask for a re-issued code |
//! | 13 | the code was revoked | use the newest code, or ask for a re-issued one |
//! | 14 | the code was already used | ask for a re-issued code |
//! | 20 | the service is unreachable (after retries) | check network and URL, retry |
//! | 21 | the service is busy or unavailable | retry later |
//! | 22 | TLS failure (not the service the CA bundle trusts) | check URL and CA bundle |
//! | 23 | the answer does not verify (license, certificate, format), or an offline response answers another request or appliance, or is a check-in answer without a license | retry; contact support |
//! | 24 | the answer is not from the trusted license authority (trust root) | report to support |
//! | 30 | check-in: appliance revoked | reinstall with a re-issued code |
//! | 31 | check-in: tenant suspended | contact support |
//! | 32 | check-in: credential not accepted | reinstall with a re-issued code |
//! | 33 | check-in: appliance replaced by a rebuild | use the rebuilt appliance |
//! | 34 | relay: the relayed check-in was refused (already accepted once, older than 7 days, signature or certificate) | make a new request |
//! | 40 | a local file could not be read or written | fix the path or permissions |
//! | 41 | a local input is malformed (Secret, key, CA bundle, trust root, URL) | fix the input |
//! | 50 | the appliance database failed | check the database |
//! | 51 | the database holds another tenant, or no tenant yet | see the message |
//!
//! # Errors
//!
//! This library has one error type, [`Error`], with [`Error::exit_code`]; `anyhow` is
//! not used here (only the binary's start-up and the tests may use it).
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod check_in;
pub mod crypto;
pub mod error;
pub mod fsio;
pub mod offline;
pub mod redeem;
pub mod secrets;
pub mod service;

pub use error::{Error, Result, exit};

/// The exit-code table, as shown by `--help` (the same as the crate docs).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
   0  success
   1  internal error, or the service refused the request: contact support
   2  bad command line
  10  the install code is malformed (a typo, found offline; the message names the group)
  11  the install code is unknown to the license service
  12  the install code expired: ask for a re-issued code
  13  the install code was revoked: use the newest code or ask for a re-issued one
  14  the install code was already used: ask for a re-issued code
  20  the license service is unreachable (after retries)
  21  the license service is busy or unavailable: try again later
  22  TLS failure: the service is not the one the CA bundle trusts
  23  the service's answer does not verify (license, certificate or format), or an
      offline response is not the answer to this appliance's pending request, or is
      a check-in answer without a license (unsigned: refused offline)
  24  the answer does not chain to the pinned trust root, or grants more than it allows
  30  check-in: this appliance's credential was revoked
  31  check-in: the tenant is suspended
  32  check-in: the credential was not accepted
  33  check-in: this appliance was replaced by a rebuild (no longer licensed)
  34  relay: the relayed check-in was refused (already used once, older than 7 days,
      or its signature or certificate does not verify): make a new request
  40  a local file could not be read or written
  41  a local input is malformed (Secret manifest, key, CA bundle, trust root, URL,
      an offline file of another format version)
  50  the appliance database failed
  51  the appliance database belongs to another tenant, or has no tenant yet
On any failure no Secret is written (check-in --database-url: a database failure
comes after the Secret; `bootstrap seed-license` catches license_state up).";

/// `t` as RFC 3339 (what every new output line uses; machine-readable and unambiguous
/// about the zone). Falls back to `time`'s own display for a year RFC 3339 cannot
/// write, rather than failing a command over an output line.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// This program's version, reported to the service.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host name reported at redeem (`/proc/sys/kernel/hostname`, else `appliance`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 253)
        .unwrap_or_else(|| "appliance".to_owned())
}
