//! `check-in`: the daily refresh (CONTRACT.md §5, §7). mTLS with the credential from the
//! license-seed Secret; a CSR for a fresh local key when the certificate has less than
//! a third of its lifetime left (or when asked to rotate); the new license (and
//! credential) verified; the license seed rewritten atomically.
//!
//! The license follows the tenant's edition, which the store may change:
//! - another paid edition: the answer's `edition` names it and the license must carry
//!   exactly that edition (a gateway older than edition changes sends no `edition`,
//!   and then the seed's edition is expected, as before);
//! - an edition without a license (`license: null`): the seed falls back to that
//!   edition alone, exactly what an essentials redeem writes, and the key copy beside
//!   the Secrets is removed. The service renews no credential for such an edition, so
//!   the appliance cannot check in again: a later upgrade is a re-issued code redeemed
//!   on this appliance.
//!
//! A seed without a license has nothing to refresh: that is an answer, not a failure,
//! so the daily timer of a downgraded appliance does not fail forever.

use std::path::{Path, PathBuf};

use alga_protocol::api::{self, CheckInAppliance, CheckInRequest, CheckInResponse, error_code};
use time::OffsetDateTime;

use crate::crypto::{self, ApplianceKey, CertFacts, LicenseExpectation, LicenseTimes, TrustRoots};
use crate::error::{Error, Result};
use crate::fsio;
use crate::redeem::full_chain;
use crate::secrets::{self, LicenseSeed, PaidSeed, SecretManifest};
use crate::service::{self, ApiError, ClientIdentity, Retry, ServiceClient};

/// What `check-in` needs besides the time.
#[derive(Debug, Clone)]
pub struct CheckInConfig {
    /// The directory holding `appliance-license-seed.yaml`.
    pub seed_dir: PathBuf,
    /// Base URL of the service to check in with (`<url>/check-in`); default: the
    /// seed's `CHECK_IN_URL`.
    pub service_url: Option<String>,
    /// Overrides the seed's `CA_CERT` as the trust for the service.
    pub ca_bundle: Option<PathBuf>,
    /// Overrides the seed's `TRUST_ROOT` (required for a seed written before it
    /// existed; it is then written into the seed).
    pub trust_root: Option<PathBuf>,
    /// Rotate the key now, whatever the certificate's remaining lifetime.
    pub force_rotate: bool,
    /// Reported to the service.
    pub version: String,
    pub retry: Retry,
}

/// What a check-in did (no secrets).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new license is in the seed (and a new credential, when one was issued).
    Refreshed(CheckedIn),
    /// The tenant's edition has no license any more: the seed now holds that edition
    /// alone.
    Unlicensed(Unlicensed),
    /// The seed's edition has no license: nothing was sent, nothing changed.
    NothingToRefresh {
        /// The seed's edition.
        edition: String,
    },
}

/// A refreshed license (no secrets).
#[derive(Debug, Clone)]
pub struct CheckedIn {
    /// The edition of the new license, now the seed's `EDITION`.
    pub edition: String,
    /// The seed's edition before, when the license is for another one (the store
    /// moved the tenant between paid editions).
    pub previous_edition: Option<String>,
    pub license_expires_at: OffsetDateTime,
    /// The new license's `check_in_by`: the appliance must check in again before it.
    pub check_in_by: Option<OffsetDateTime>,
    pub next_check_in_after: OffsetDateTime,
    /// True when a new credential (and key) replaced the old one.
    pub rotated: bool,
    /// The expiry of the credential now in the seed.
    pub credential_expires_at: OffsetDateTime,
}

/// A fall-back to an edition without a license (no secrets).
#[derive(Debug, Clone)]
pub struct Unlicensed {
    /// The tenant's edition, now the seed's `EDITION`.
    pub edition: String,
    /// The seed's edition before.
    pub previous_edition: String,
    /// The license seed, rewritten.
    pub seed_file: PathBuf,
    /// The key copy `redeem` keeps beside the Secrets, when there was one to remove.
    pub removed_key_file: Option<PathBuf>,
}

/// Checks in and updates the license seed.
#[tracing::instrument(skip_all, fields(seed = %cfg.seed_dir.display()))]
pub async fn check_in(cfg: &CheckInConfig, now: OffsetDateTime) -> Result<Outcome> {
    let seed = load_seed(&cfg.seed_dir)?;
    let Some(paid) = seed.paid.clone() else {
        tracing::info!(edition = %seed.edition, "no license to refresh");
        return Ok(Outcome::NothingToRefresh {
            edition: seed.edition,
        });
    };
    let current = crypto::cert_facts(&paid.cert_chain_pem)?;
    // Checked before anything is sent: a seed whose key does not parse cannot use
    // the answer.
    ApplianceKey::from_pem(paid.key_pem.expose())?;

    let check_in_url = match &cfg.service_url {
        Some(s) => service::endpoint(&service::parse_service_url(s)?, api::CHECK_IN),
        None => service::parse_service_url(&paid.check_in_url)
            .map_err(|_| Error::input("the license seed", "CHECK_IN_URL is not an https URL"))?,
    };
    let roots = trust_roots(cfg.trust_root.as_deref(), &paid)?;
    let ca_pem = match &cfg.ca_bundle {
        Some(p) => fsio::read(p)?,
        None => paid.ca_pem.clone().into_bytes(),
    };
    let client = ServiceClient::new(
        &ca_pem,
        Some(ClientIdentity {
            cert_chain_pem: &paid.cert_chain_pem,
            key_pem: &paid.key_pem,
        }),
        cfg.retry.clone(),
    )?;

    let (req, new_key) = request(&current, cfg.force_rotate, &cfg.version, now)?;
    tracing::info!(
        tenant.id = %current.identity.tenant_id,
        appliance.id = %current.identity.appliance_id,
        credential.rotate = new_key.is_some(),
        "checking in"
    );
    let resp: CheckInResponse = client
        .post_json(&check_in_url, &req)
        .await?
        .map_err(check_in_error)?;

    apply_answer(&cfg.seed_dir, &seed, &roots, new_key, &resp, now)
}

/// The check-in body for the credential `current`, with a CSR for a new key when the
/// credential is to be rotated (`force_rotate`, or less than a third of its lifetime
/// left at `now`); that key is returned beside it. Shared by the online check-in and
/// the offline request (`offline::write_check_in_request`).
pub(crate) fn request(
    current: &CertFacts,
    force_rotate: bool,
    version: &str,
    now: OffsetDateTime,
) -> Result<(CheckInRequest, Option<ApplianceKey>)> {
    let new_key = if force_rotate || current.needs_renewal(now) {
        Some(ApplianceKey::generate()?)
    } else {
        None
    };
    let req = CheckInRequest {
        appliance: CheckInAppliance {
            version: version.to_owned(),
        },
        csr: new_key.as_ref().map(ApplianceKey::csr_pem).transpose()?,
    };
    Ok((req, new_key))
}

/// The trust roots a check-in's answer is verified against: `--trust-root` when
/// given, else the seed's `TRUST_ROOT`.
pub(crate) fn trust_roots(path: Option<&Path>, paid: &PaidSeed) -> Result<TrustRoots> {
    match (path, &paid.trust_root_pem) {
        (Some(path), _) => crypto::load_trust_roots(path),
        (None, Some(pem)) => TrustRoots::from_pem(pem.as_bytes())
            .map_err(|e| Error::input("the license seed's TRUST_ROOT", e)),
        (None, None) => Err(Error::input(
            "the license seed",
            "it has no TRUST_ROOT (it was written before alga-appliance pinned one): pass --trust-root with the trust root file this appliance was installed with",
        )),
    }
}

/// Verifies a check-in answer against `roots` and this appliance's seed and keys
/// (`new_key`: the key a CSR was sent for, if any), then updates the seed in
/// `seed_dir`. Shared by the online check-in and the offline one
/// (`offline::install_check_in_response`), so both check and write exactly the same.
pub(crate) fn apply_answer(
    seed_dir: &Path,
    seed: &LicenseSeed,
    roots: &TrustRoots,
    new_key: Option<ApplianceKey>,
    resp: &CheckInResponse,
    now: OffsetDateTime,
) -> Result<Outcome> {
    let paid = seed
        .paid
        .clone()
        .ok_or_else(|| Error::Internal("a check-in answer for a seed without a license".into()))?;
    let current = crypto::cert_facts(&paid.cert_chain_pem)?;
    let current_key = ApplianceKey::from_pem(paid.key_pem.expose())?;
    // The tenant's edition now. A gateway older than edition changes does not say:
    // then it is the seed's, as it always was.
    let edition = match &resp.edition {
        Some(e) => checked_edition(e)?,
        None => seed.edition.clone(),
    };
    let Some(license) = resp.license.clone() else {
        if resp.edition.is_none() {
            return Err(Error::bad(
                "the answer has neither a license nor the tenant's edition",
            ));
        }
        if resp.credential.is_some() {
            return Err(Error::bad("the answer has a credential but no license"));
        }
        return fall_back(seed_dir, &seed.edition, edition).map(Outcome::Unlicensed);
    };
    // The license must be for the edition the answer names, not merely for some
    // edition: a mismatch is a service fault and installs nothing.
    let expected = LicenseExpectation {
        tenant_id: current.identity.tenant_id,
        appliance_id: current.identity.appliance_id,
        edition: edition.clone(),
    };
    let claims = crypto::verify_license(&license.token, roots, &expected, now)?;

    let mut updated = paid.clone();
    updated.token = license.token.clone();
    updated.trust_root_pem = Some(roots.to_pem());
    let mut rotated = false;
    let mut credential_expires_at = current.not_after;
    if let Some(cred) = &resp.credential {
        // A credential for the key we sent a CSR for, or (a renewal without CSR) for
        // the current key: anything else is refused.
        let key = new_key.as_ref().unwrap_or(&current_key);
        let facts = crypto::verify_certificate(
            &cred.certificate,
            &cred.chain,
            key,
            current.identity,
            roots,
            now,
        )?;
        updated.cert_chain_pem = full_chain(&cred.certificate, &cred.chain);
        updated.key_pem = key.to_pem();
        rotated = new_key.is_some();
        credential_expires_at = facts.not_after;
    }
    let new_seed = LicenseSeed {
        edition: edition.clone(),
        paid: Some(updated),
    };
    write_seed(seed_dir, &new_seed)?;
    // `redeem` keeps the key beside the Secrets; keep that copy in step.
    let key_file = seed_dir.join(crypto::KEY_FILE);
    if let Some(k) = new_key.as_ref().filter(|_| rotated && key_file.exists()) {
        fsio::write_atomic(&key_file, k.to_pem().expose().as_bytes(), fsio::SECRET_MODE)?;
    }
    let previous_edition = (edition != seed.edition).then(|| seed.edition.clone());
    if let Some(previous) = &previous_edition {
        tracing::info!(edition.from = %previous, edition.to = %edition, "the tenant's edition changed");
    }
    tracing::info!(
        license.expires_at = %license.expires_at,
        credential.rotated = rotated,
        "checked in"
    );
    Ok(Outcome::Refreshed(CheckedIn {
        edition,
        previous_edition,
        license_expires_at: license.expires_at,
        check_in_by: LicenseTimes::of(&claims).and_then(|t| t.check_in_by),
        next_check_in_after: resp.next_check_in_after,
        rotated,
        credential_expires_at,
    }))
}

/// Replaces the license seed of `dir` with `seed`, atomically; returns its path.
fn write_seed(dir: &Path, seed: &LicenseSeed) -> Result<PathBuf> {
    let path = secrets::manifest_path(dir, secrets::LICENSE_SEED);
    fsio::write_atomic(
        &path,
        seed.to_manifest().to_yaml().as_bytes(),
        fsio::SECRET_MODE,
    )?;
    Ok(path)
}

/// The license seed of `dir`, which must exist.
pub(crate) fn load_seed(dir: &Path) -> Result<LicenseSeed> {
    let manifest = SecretManifest::load(dir, secrets::LICENSE_SEED)?.ok_or_else(|| {
        Error::input(
            secrets::manifest_path(dir, secrets::LICENSE_SEED)
                .display()
                .to_string(),
            "the file does not exist (was `redeem` run?)",
        )
    })?;
    LicenseSeed::from_manifest(&manifest)
}

/// An edition name as the policy allows them (lowercase letters, digits, `_`, `-`,
/// starting with a letter, at most 64): it goes into a Secret and onto the screen.
fn checked_edition(name: &str) -> Result<String> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 64;
    if ok {
        Ok(name.to_owned())
    } else {
        Err(Error::bad(
            "the tenant's edition in the answer is not an edition name",
        ))
    }
}

/// The tenant's edition has no license: the seed becomes that edition alone (what an
/// essentials redeem writes), then the key copy beside the Secrets goes. The seed is
/// written first: it is what the bootstrap acts on, and a key left behind (reported as
/// an I/O failure naming it) is harmless, whereas a licensed seed for an unlicensed
/// tenant is not. The tenant Secret does not change.
fn fall_back(dir: &Path, previous_edition: &str, edition: String) -> Result<Unlicensed> {
    let seed = LicenseSeed {
        edition: edition.clone(),
        paid: None,
    };
    let seed_file = write_seed(dir, &seed)?;
    let key_file = dir.join(crypto::KEY_FILE);
    let removed_key_file = match std::fs::remove_file(&key_file) {
        Ok(()) => Some(key_file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("remove", key_file, e)),
    };
    tracing::info!(
        edition.from = %previous_edition,
        edition.to = %edition,
        key_file.removed = removed_key_file.is_some(),
        "the tenant's edition has no license: fell back to it"
    );
    Ok(Unlicensed {
        edition,
        previous_edition: previous_edition.to_owned(),
        seed_file,
        removed_key_file,
    })
}

/// After a failed check-in: by when this appliance must check in before the service
/// counts it overdue, and when its installed license expires, read from the seed's
/// (unchanged) license at `now`. Times only, never the token. `None` for a local
/// failure (the seed may be what failed) or a seed without a license.
///
/// After a terminal refusal (revoked, replaced, suspended, credential rejected) or an
/// answer the trust root did not sign, a further check-in cannot help: only the
/// expiry is told.
pub fn deadline_warning(seed_dir: &Path, err: &Error, now: OffsetDateTime) -> Option<String> {
    let retrying_helps = match err {
        Error::Unreachable { .. }
        | Error::ServiceUnavailable
        | Error::Tls { .. }
        | Error::BadResponse(_)
        | Error::Refused { .. }
        | Error::Internal(_) => true,
        Error::ApplianceRevoked
        | Error::ApplianceReplaced
        | Error::TenantSuspended
        | Error::CredentialRejected
        | Error::Untrusted(_) => false,
        _ => return None,
    };
    let seed = load_seed(seed_dir).ok()?;
    let claims = crypto::claims_of_verified_token(&seed.paid?.token).ok()?;
    let times = LicenseTimes::of(&claims)?;
    let expiry = if times.expires_at <= now {
        format!(
            "the installed license expired at {}",
            crate::rfc3339(times.expires_at)
        )
    } else {
        format!(
            "the installed license expires at {}",
            crate::rfc3339(times.expires_at)
        )
    };
    if !retrying_helps || times.expires_at <= now {
        return Some(format!("{expiry}."));
    }
    Some(match times.check_in_by {
        Some(by) if by <= now => format!(
            "the license service has counted this appliance overdue since {} (no check-in); {expiry}: check in as soon as possible.",
            crate::rfc3339(by)
        ),
        Some(by) => format!(
            "this appliance must check in by {} or the license service counts it overdue; {expiry}.",
            crate::rfc3339(by)
        ),
        None => format!("{expiry}: check in before then."),
    })
}

pub(crate) fn check_in_error(e: ApiError) -> Error {
    match e.code.as_deref() {
        Some(error_code::APPLIANCE_REVOKED) => Error::ApplianceRevoked,
        Some(error_code::APPLIANCE_REPLACED) => Error::ApplianceReplaced,
        Some(error_code::CREDENTIAL_SUPERSEDED) => Error::CredentialRejected,
        Some(error_code::TENANT_SUSPENDED) => Error::TenantSuspended,
        Some(
            error_code::CREDENTIAL_REQUIRED | error_code::UNAUTHENTICATED | error_code::FORBIDDEN,
        ) => Error::CredentialRejected,
        Some("malformed_response" | "response_too_large") => {
            Error::bad("the response is not a valid check-in answer")
        }
        _ if e.status == reqwest::StatusCode::UNAUTHORIZED => Error::CredentialRejected,
        _ => e.into_generic(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edition_names() {
        for ok in ["essentials", "pro", "pro-2", "a_b"] {
            assert_eq!(checked_edition(ok).expect(ok), ok);
        }
        let long = "a".repeat(65);
        for bad in ["", "Pro", "2pro", "pro plus", "pro\n", long.as_str()] {
            assert_eq!(
                checked_edition(bad).map_err(|e| e.exit_code()).err(),
                Some(crate::exit::BAD_RESPONSE),
                "{bad:?}"
            );
        }
    }

    /// A seed holding an unsigned token with these times (the warning reads claims of
    /// a token verified before it was written; it checks no signature).
    fn seed_with(dir: &Path, check_in_by: Option<i64>, exp: i64) -> String {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims = serde_json::json!({
            "iss": "alga-license", "sub": uuid::Uuid::new_v4().to_string(),
            "aud": "alga-appliance", "jti": "j", "iat": exp - 7 * 86_400,
            "nbf": exp - 7 * 86_400, "exp": exp, "edition": "pro",
            "entitlements": {"features": [], "seats": 1, "check_in_interval_seconds": 86_400},
            "appliance_id": uuid::Uuid::new_v4().to_string(),
        });
        if let Some(t) = check_in_by {
            claims["check_in_by"] = t.into();
        }
        let token = format!(
            "{}.{}.c2ln",
            b.encode(br#"{"alg":"ES256","kid":"k"}"#),
            b.encode(serde_json::to_vec(&claims).expect("json"))
        );
        let seed = LicenseSeed {
            edition: "pro".into(),
            paid: Some(secrets::PaidSeed {
                token: alga_protocol::SecretText::new(token.clone()),
                cert_chain_pem: "c".into(),
                key_pem: alga_protocol::SecretText::new("k".into()),
                ca_pem: "ca".into(),
                check_in_url: "https://x/check-in".into(),
                trust_root_pem: None,
            }),
        };
        fsio::write_atomic(
            &secrets::manifest_path(dir, secrets::LICENSE_SEED),
            seed.to_manifest().to_yaml().as_bytes(),
            fsio::SECRET_MODE,
        )
        .expect("write seed");
        token
    }

    #[test]
    fn deadline_warning_tells_times_at_now() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("t");
        let by = now + time::Duration::days(3);
        let exp = now + time::Duration::days(7);
        let token = seed_with(dir.path(), Some(by.unix_timestamp()), exp.unix_timestamp());
        let unreachable = Error::Unreachable {
            url: "u".into(),
            detail: "d".into(),
        };
        let w = deadline_warning(dir.path(), &unreachable, now).expect("a warning");
        assert!(
            w.contains(&format!("check in by {}", crate::rfc3339(by))),
            "{w}"
        );
        assert!(
            w.contains(&format!("expires at {}", crate::rfc3339(exp))),
            "{w}"
        );
        assert!(!w.contains(&token) && !w.contains(token.split('.').nth(1).expect("payload")));
        // Past check_in_by: overdue already.
        let later = by + time::Duration::hours(1);
        let w = deadline_warning(dir.path(), &Error::ServiceUnavailable, later).expect("w");
        assert!(
            w.contains(&format!("overdue since {}", crate::rfc3339(by))),
            "{w}"
        );
        // Past exp: expired, nothing about checking in by a time gone.
        let w = deadline_warning(dir.path(), &unreachable, exp).expect("w");
        assert!(
            w.contains("expired at") && !w.contains("check in by"),
            "{w}"
        );
        // A terminal refusal: the expiry only.
        let w = deadline_warning(dir.path(), &Error::ApplianceReplaced, now).expect("w");
        assert!(w.contains("expires at") && !w.contains("check in"), "{w}");
        // A local failure: nothing (the seed may be what failed).
        assert!(deadline_warning(dir.path(), &Error::input("x", "y"), now).is_none());
        // A license from before check_in_by existed: its expiry.
        seed_with(dir.path(), None, exp.unix_timestamp());
        let w = deadline_warning(dir.path(), &unreachable, now).expect("w");
        assert!(w.contains("expires at") && !w.contains("overdue"), "{w}");
        // A seed without a license: nothing to warn about.
        let ess = LicenseSeed {
            edition: "essentials".into(),
            paid: None,
        };
        fsio::write_atomic(
            &secrets::manifest_path(dir.path(), secrets::LICENSE_SEED),
            ess.to_manifest().to_yaml().as_bytes(),
            fsio::SECRET_MODE,
        )
        .expect("write");
        assert!(deadline_warning(dir.path(), &unreachable, now).is_none());
    }
}
