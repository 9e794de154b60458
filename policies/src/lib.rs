//! The typed policy: editions and their entitlements, lifetimes, client roles and rate
//! limits, loaded from TOML.
//!
//! Both processes load the same file. The issuer enforces its hard bounds from it (a
//! compromised gateway cannot obtain a license longer than the edition allows); the
//! gateway takes roles, TTLs and rate limits from it.
//!
//! Loading parses, then validates everything, and reports **every** problem at once,
//! each with its TOML path (`editions.pro.license_lifetime: …`), so an operator fixes a
//! file in one pass. A [`Policy`] value is therefore always valid.
#![forbid(unsafe_code)]

mod duration;
mod reader;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub use duration::{format_duration, parse_duration};
use time::Duration;

/// The most a presigned download link may live (S3's own limit for SigV4 presigning).
pub const MAX_DOWNLOAD_LINK_TTL: Duration = Duration::days(7);
/// The most an install code may live before it must be re-issued.
pub const MAX_INSTALL_CODE_TTL: Duration = Duration::days(90);
/// The most a license may live: licenses are refreshed by check-in, not long-lived.
pub const MAX_LICENSE_LIFETIME: Duration = Duration::days(90);
/// The most an appliance credential may live ("days to weeks").
pub const MAX_CREDENTIAL_LIFETIME: Duration = Duration::days(90);
/// The least an appliance credential may live (it is renewed at daily check-ins).
pub const MIN_CREDENTIAL_LIFETIME: Duration = Duration::days(2);
/// How long check-in still accepts the credential a rotation replaced, when the policy
/// does not say (`credentials.rotation_overlap`): one daily check-in interval, so an
/// appliance that crashed before it saved its new credential retries with the old one
/// at its next scheduled check-in.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::hours(24);
/// The least `credentials.rotation_overlap` may be: a retry needs some time to happen.
pub const MIN_ROTATION_OVERLAP: Duration = Duration::minutes(5);
/// An active appliance whose last check-in (or redeem) is this old is `stale`, whatever
/// its edition: the interval and grace of every paid edition end before it.
pub const STALE_AFTER: Duration = Duration::days(30);
/// The most `max_appliances` an edition may allow.
pub const MAX_APPLIANCES_LIMIT: u32 = 1_000_000;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("policy is not valid TOML: {0}")]
    Syntax(String),
    /// The file is TOML but breaks the schema or a rule; every problem is listed.
    #[error("policy has {} problem(s):\n{}", .0.len(), ProblemList(.0))]
    Invalid(Vec<Problem>),
}

/// One problem in a policy file, at a TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted TOML path, e.g. `editions.pro.seats` or `clients[2].role`.
    pub path: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// SPIFFE trust domain of every identity (`alga.test` in dev).
    pub trust_domain: String,
    /// The `iss` claim of license JWTs.
    pub license_issuer: String,
    /// How long an install code is redeemable after it is minted.
    pub install_code_ttl: Duration,
    /// How long a presigned ISO download link works (at most 7 days).
    pub download_link_ttl: Duration,
    /// How long an appliance credential is valid.
    pub credential_lifetime: Duration,
    /// How long after a rotation check-in still accepts the replaced credential, unless
    /// the new one is used first (`credentials.rotation_overlap`; at most
    /// `credential_lifetime`, [`DEFAULT_ROTATION_OVERLAP`] when absent).
    pub credential_rotation_overlap: Duration,
    /// Editions by name.
    pub editions: BTreeMap<String, Edition>,
    /// Client identities (exact URI SAN) and their roles.
    pub clients: BTreeMap<String, Role>,
    /// Rate limits of the public redeem endpoint.
    pub rate_limits: RateLimits,
    /// Audit checkpoint cadence and alarms.
    pub audit: AuditPolicy,
}

/// What an edition entitles a tenant to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edition {
    pub name: String,
    /// Feature names the appliance enables.
    pub features: Vec<String>,
    /// Seats the license grants (an entitlement carried in the license; the appliance
    /// enforces it). Not the number of appliances: that is `max_appliances`.
    pub seats: u32,
    /// How many active appliances a tenant of this edition may have: a redeem past it
    /// is refused (`seat_limit_reached`).
    pub max_appliances: u32,
    /// For paid editions: the license terms. `None` means no license token, no
    /// credential and no check-in (the essentials tier).
    pub paid: Option<PaidTerms>,
}

/// Terms of a paid edition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaidTerms {
    /// Lifetime of each license JWT (the issuer refuses anything longer).
    pub license_lifetime: Duration,
    /// How often the appliance checks in to refresh its license.
    pub check_in_interval: Duration,
    /// How long past its next expected check-in an appliance is still `ok` (whole
    /// days, `check_in_grace_days`); after that it is `overdue`.
    pub check_in_grace: Duration,
}

impl PaidTerms {
    /// How long after a check-in the appliance becomes `overdue` without another one:
    /// the interval plus the grace.
    pub fn overdue_after(&self) -> Duration {
        self.check_in_interval + self.check_in_grace
    }
}

impl Edition {
    /// Whether this edition gets a license, a credential and check-ins.
    pub fn is_paid(&self) -> bool {
        self.paid.is_some()
    }
}

/// The role a client identity has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// nm-store: registers tenants, re-issues codes, revokes appliances.
    Store,
    /// Security staff: reads tenants and the audit log.
    Auditor,
    /// The gateway, as the issuer's only client.
    Gateway,
}

impl Role {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Store => "store",
            Role::Auditor => "auditor",
            Role::Gateway => "gateway",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "store" => Some(Role::Store),
            "auditor" => Some(Role::Auditor),
            "gateway" => Some(Role::Gateway),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token-bucket quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sustained rate.
    pub per_minute: u32,
    /// Requests allowed at once before the rate applies.
    pub burst: u32,
}

/// Rate limits of `POST /register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per source address.
    pub redeem_per_source: Quota,
    /// Per `code_id`, whatever the source.
    pub redeem_per_code: Quota,
}

/// Audit cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    /// Sign a checkpoint after this many new chained records…
    pub checkpoint_every_records: u64,
    /// …or after this long, whichever comes first (when there is anything new).
    pub checkpoint_interval: Duration,
    /// A committed record left unchained longer than this is flagged by verify.
    pub unchained_alarm_after: Duration,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::from_toml(&text)
    }

    /// Parses and validates policy text.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| PolicyError::Syntax(e.to_string()))?;
        reader::read_policy(&table)
    }

    /// The edition called `name`, if the policy defines it.
    pub fn edition(&self, name: &str) -> Option<&Edition> {
        self.editions.get(name)
    }

    /// The role of a client identified by its certificate's URI SAN, if any.
    pub fn role_of(&self, uri_san: &str) -> Option<Role> {
        self.clients.get(uri_san).copied()
    }

    /// The SPIFFE URI of an appliance credential.
    pub fn appliance_spiffe_id(&self, tenant_id: &str, appliance_id: &str) -> String {
        format!(
            "spiffe://{}/tenant/{tenant_id}/appliance/{appliance_id}",
            self.trust_domain
        )
    }
}

#[cfg(test)]
mod tests;
