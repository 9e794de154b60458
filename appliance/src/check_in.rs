//! `check-in`: the daily refresh (DESIGN §5, §7). mTLS with the credential from the
//! license-seed Secret; a CSR for a fresh local key when the certificate has less than
//! a third of its lifetime left (or when asked to rotate); the new license (and
//! credential) verified; the license seed rewritten atomically.

use std::path::PathBuf;

use alga_protocol::api::{self, CheckInAppliance, CheckInRequest, CheckInResponse, error_code};
use alga_protocol::issuer_api::Jwks;
use time::OffsetDateTime;

use crate::crypto::{self, ApplianceKey, LicenseExpectation};
use crate::error::{Error, Result};
use crate::fsio;
use crate::redeem::full_chain;
use crate::secrets::{self, LicenseSeed, SecretManifest};
use crate::service::{self, ApiError, ClientIdentity, Retry, ServiceClient};

/// What `check-in` needs besides the time.
#[derive(Debug, Clone)]
pub struct CheckInConfig {
    /// The directory holding `appliance-license-seed.yaml`.
    pub seed_dir: PathBuf,
    /// Base URL for the JWKS; default: the origin of the seed's `CHECK_IN_URL`.
    pub service_url: Option<String>,
    /// Overrides the seed's `CA_CERT` as the trust for the service.
    pub ca_bundle: Option<PathBuf>,
    /// Rotate the key now, whatever the certificate's remaining lifetime.
    pub force_rotate: bool,
    /// Reported to the service.
    pub version: String,
    pub retry: Retry,
}

/// What a check-in did (no secrets).
#[derive(Debug, Clone)]
pub struct CheckedIn {
    pub license_expires_at: OffsetDateTime,
    pub next_check_in_after: OffsetDateTime,
    /// True when a new credential (and key) replaced the old one.
    pub rotated: bool,
    /// The expiry of the credential now in the seed.
    pub credential_expires_at: OffsetDateTime,
}

/// Checks in and updates the license seed.
#[tracing::instrument(skip_all, fields(seed = %cfg.seed_dir.display()))]
pub async fn check_in(cfg: &CheckInConfig, now: OffsetDateTime) -> Result<CheckedIn> {
    let manifest =
        SecretManifest::load(&cfg.seed_dir, secrets::LICENSE_SEED)?.ok_or_else(|| {
            Error::input(
                secrets::manifest_path(&cfg.seed_dir, secrets::LICENSE_SEED)
                    .display()
                    .to_string(),
                "the file does not exist (was `redeem` run?)",
            )
        })?;
    let seed = LicenseSeed::from_manifest(&manifest)?;
    let Some(paid) = seed.paid.clone() else {
        return Err(Error::input(
            "the license seed",
            format!("edition {} has no license to refresh", seed.edition),
        ));
    };
    let current = crypto::cert_facts(&paid.cert_chain_pem)?;
    let current_key = ApplianceKey::from_pem(paid.key_pem.expose())?;

    let check_in_url = service::parse_service_url(&paid.check_in_url)
        .map_err(|_| Error::input("the license seed", "CHECK_IN_URL is not an https URL"))?;
    let base = match &cfg.service_url {
        Some(s) => service::parse_service_url(s)?,
        None => service::parse_service_url(&check_in_url.origin().ascii_serialization())?,
    };
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

    let rotate = cfg.force_rotate || current.needs_renewal(now);
    let new_key = if rotate {
        Some(ApplianceKey::generate()?)
    } else {
        None
    };
    let req = CheckInRequest {
        appliance: CheckInAppliance {
            version: cfg.version.clone(),
        },
        csr: new_key.as_ref().map(ApplianceKey::csr_pem).transpose()?,
    };
    tracing::info!(
        tenant.id = %current.identity.tenant_id,
        appliance.id = %current.identity.appliance_id,
        credential.rotate = rotate,
        "checking in"
    );
    let resp: CheckInResponse = client
        .post_json(&check_in_url, &req)
        .await?
        .map_err(check_in_error)?;

    let Some(license) = resp.license.clone() else {
        return Err(Error::bad("the service sent no license"));
    };
    let jwks: Jwks = client
        .get_json(&service::endpoint(&base, api::JWKS))
        .await?
        .map_err(|e| {
            Error::bad(format!(
                "the license keys could not be fetched (HTTP {})",
                e.status.as_u16()
            ))
        })?;
    let expected = LicenseExpectation {
        tenant_id: current.identity.tenant_id,
        appliance_id: current.identity.appliance_id,
        edition: seed.edition.clone(),
    };
    crypto::verify_license(&license.token, &jwks, &expected, now)?;

    let mut updated = paid.clone();
    updated.token = license.token.clone();
    let mut rotated = false;
    let mut credential_expires_at = current.not_after;
    if let Some(cred) = &resp.credential {
        // A credential for the key we sent a CSR for, or (a renewal without CSR) for
        // the current key: anything else is refused.
        let key = new_key.as_ref().unwrap_or(&current_key);
        let facts =
            crypto::verify_certificate(&cred.certificate, &cred.chain, key, current.identity, now)?;
        updated.cert_chain_pem = full_chain(&cred.certificate, &cred.chain);
        updated.key_pem = key.to_pem();
        rotated = new_key.is_some();
        credential_expires_at = facts.not_after;
    }
    let new_seed = LicenseSeed {
        edition: seed.edition.clone(),
        paid: Some(updated),
    };
    let seed_path = secrets::manifest_path(&cfg.seed_dir, secrets::LICENSE_SEED);
    fsio::write_atomic(
        &seed_path,
        new_seed.to_manifest().to_yaml().as_bytes(),
        fsio::SECRET_MODE,
    )?;
    // `redeem` keeps the key beside the Secrets; keep that copy in step.
    let key_file = cfg.seed_dir.join(crypto::KEY_FILE);
    if let Some(k) = new_key.as_ref().filter(|_| rotated && key_file.exists()) {
        fsio::write_atomic(&key_file, k.to_pem().expose().as_bytes(), fsio::SECRET_MODE)?;
    }
    tracing::info!(
        license.expires_at = %license.expires_at,
        credential.rotated = rotated,
        "checked in"
    );
    Ok(CheckedIn {
        license_expires_at: license.expires_at,
        next_check_in_after: resp.next_check_in_after,
        rotated,
        credential_expires_at,
    })
}

fn check_in_error(e: ApiError) -> Error {
    match e.code.as_deref() {
        Some(error_code::APPLIANCE_REVOKED) => Error::ApplianceRevoked,
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
