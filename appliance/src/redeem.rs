//! `redeem`: from an install code to the two Secrets (CONTRACT.md §7).
//!
//! Order matters, and is the safety argument:
//! 1. the code is checked offline (a typo never reaches the network);
//! 2. the key is loaded from, or generated into, the output directory *before* the
//!    call, so a retry (of this run or a re-run) presents the same key;
//! 3. `POST /register` over TLS pinned to the given CA bundle;
//! 4. for paid editions the license and the certificate are verified against the
//!    pinned trust root (given with `--trust-root`; never anything the service sends),
//!    the certificate also against the key and the answer;
//! 5. only then both Secrets are written, each atomically, the tenant Secret last.
//!
//! Any failure before step 5 leaves no Secret: no tenant is ever made up.

use std::path::{Path, PathBuf};

use alga_protocol::api::{self, ApplianceInfo, RedeemRequest, RedeemResponse, error_code};
use alga_protocol::{InstallCode, SecretText};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::crypto::{self, LicenseExpectation};
use crate::error::{Error, Result};
use crate::fsio;
use crate::secrets::{self, LicenseSeed, PaidSeed};
use crate::service::{self, ApiError, Retry, ServiceClient};

/// Everything `redeem` needs besides the code and the time.
#[derive(Debug, Clone)]
pub struct RedeemConfig {
    /// Base URL of the license service (`https://…`).
    pub service_url: String,
    /// The only CA trusted for the service's TLS certificate.
    pub ca_bundle: PathBuf,
    /// The pinned trust root: every license and credential must chain to it.
    pub trust_root: PathBuf,
    /// Where the key and the two Secret manifests go.
    pub out_dir: PathBuf,
    /// Reported to the service (`appliance.hostname`).
    pub hostname: String,
    /// Reported to the service (`appliance.version`).
    pub version: String,
    pub retry: Retry,
}

/// What a successful redeem produced (no secrets).
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub tenant_id: Uuid,
    pub appliance_id: Uuid,
    pub edition: String,
    pub license_expires_at: Option<OffsetDateTime>,
    pub credential_expires_at: Option<OffsetDateTime>,
    /// The Secret manifests written, tenant Secret last.
    pub files: Vec<PathBuf>,
}

/// Checks the typed code offline. This is step 1, and needs nothing else.
pub fn parse_code(input: &str) -> Result<InstallCode> {
    InstallCode::parse(input).map_err(Error::CodeMalformed)
}

/// Redeems `code` and writes the Secrets into `cfg.out_dir`.
#[tracing::instrument(skip_all, fields(out = %cfg.out_dir.display()))]
pub async fn redeem(
    cfg: &RedeemConfig,
    code: &SecretText,
    now: OffsetDateTime,
) -> Result<Redeemed> {
    let code = parse_code(code.expose())?;
    let base = service::parse_service_url(&cfg.service_url)?;
    let ca_pem = fsio::read(&cfg.ca_bundle)?;
    let roots = crypto::load_trust_roots(&cfg.trust_root)?;
    let client = ServiceClient::new(&ca_pem, None, cfg.retry.clone())?;

    let Keyed { key, new_key, req } =
        keyed_request(&cfg.out_dir, &code, &cfg.hostname, &cfg.version)?;
    tracing::info!(code.id = %code.code_id(), key.new = new_key, "redeeming install code");

    let resp: RedeemResponse = client
        .post_json(&service::endpoint(&base, api::REDEEM), &req)
        .await?
        .map_err(redeem_error)?;

    let seed = verified_seed(&resp, &key, &roots, &ca_pem, now)?;

    let files = write_secrets(&cfg.out_dir, resp.tenant_id, &seed)?;
    tracing::info!(tenant.id = %resp.tenant_id, appliance.id = %resp.appliance_id, edition = %resp.edition, "redeemed");
    Ok(Redeemed::new(resp, files))
}

impl Redeemed {
    /// What `resp` installed, once its Secrets are written as `files`.
    pub(crate) fn new(resp: RedeemResponse, files: Vec<PathBuf>) -> Redeemed {
        Redeemed {
            tenant_id: resp.tenant_id,
            appliance_id: resp.appliance_id,
            license_expires_at: resp.license.as_ref().map(|l| l.expires_at),
            credential_expires_at: resp.credential.as_ref().map(|c| c.expires_at),
            edition: resp.edition,
            files,
        }
    }
}

/// This appliance's key and the `POST /register` body that presents it with the code.
pub(crate) struct Keyed {
    pub key: crypto::ApplianceKey,
    /// The key was generated now (none was in the output directory).
    pub new_key: bool,
    pub req: RedeemRequest,
}

/// Step 2 and the request: the key loaded from, or generated into, `out_dir` (created
/// 0700), and the redeem body for it. Shared by the online redeem and the offline
/// request (`offline::write_redeem_request`), so both keep the key where the other
/// looks for it and send the same body.
pub(crate) fn keyed_request(
    out_dir: &Path,
    code: &InstallCode,
    hostname: &str,
    version: &str,
) -> Result<Keyed> {
    fsio::ensure_dir(out_dir)?;
    let (key, new_key) = crypto::load_or_create_key(out_dir)?;
    let req = RedeemRequest {
        install_code: SecretText::new(code.expose_formatted().to_string()),
        csr: key.csr_pem()?,
        appliance: ApplianceInfo {
            hostname: hostname.to_owned(),
            version: version.to_owned(),
        },
    };
    Ok(Keyed { key, new_key, req })
}

/// The license seed of a redeem answer, once everything in it verified: for a paid
/// edition the license and the certificate against the pinned `roots` (the
/// certificate also for `key`, this appliance's key, and the answer's tenant and
/// appliance), and the check-in URL's form. Shared by the online redeem and the
/// offline one (`offline::install_redeem_response`), so both check exactly the same.
pub(crate) fn verified_seed(
    resp: &RedeemResponse,
    key: &crypto::ApplianceKey,
    roots: &crypto::TrustRoots,
    ca_pem: &[u8],
    now: OffsetDateTime,
) -> Result<LicenseSeed> {
    let seed = match (&resp.license, &resp.credential, &resp.check_in_url) {
        (None, None, None) => {
            if resp.edition != secrets::ESSENTIALS {
                tracing::warn!(edition = %resp.edition, "edition without a license");
            }
            LicenseSeed {
                edition: resp.edition.clone(),
                paid: None,
            }
        }
        (Some(license), Some(cred), Some(check_in_url)) => {
            let expected = LicenseExpectation {
                tenant_id: resp.tenant_id,
                appliance_id: resp.appliance_id,
                edition: resp.edition.clone(),
            };
            crypto::verify_license(&license.token, roots, &expected, now)?;
            let identity = alga_protocol::ApplianceIdentity {
                tenant_id: resp.tenant_id,
                appliance_id: resp.appliance_id,
            };
            crypto::verify_certificate(&cred.certificate, &cred.chain, key, identity, roots, now)?;
            service::parse_service_url(check_in_url)
                .map_err(|_| Error::bad("the check-in URL is not an https URL"))?;
            LicenseSeed {
                edition: resp.edition.clone(),
                paid: Some(PaidSeed {
                    token: license.token.clone(),
                    cert_chain_pem: full_chain(&cred.certificate, &cred.chain),
                    key_pem: key.to_pem(),
                    ca_pem: String::from_utf8(ca_pem.to_vec())
                        .map_err(|_| Error::input("the CA bundle", "it is not text"))?,
                    check_in_url: check_in_url.clone(),
                    trust_root_pem: Some(roots.to_pem()),
                }),
            }
        }
        _ => {
            return Err(Error::bad(
                "the answer has only part of a license, credential and check-in URL",
            ));
        }
    };
    Ok(seed)
}

/// Leaf then chain, each ending with a newline.
pub(crate) fn full_chain(cert: &str, chain: &str) -> String {
    let mut s = cert.trim_end().to_owned();
    s.push('\n');
    let chain = chain.trim();
    if !chain.is_empty() {
        s.push_str(chain);
        s.push('\n');
    }
    s
}

/// Stages both manifests (written and fsynced), then renames them in place: license
/// seed first, tenant last (the tenant Secret is what the bootstrap acts on, so it
/// appears only when the seed is complete); if the second rename fails, the first file
/// is removed again.
pub fn write_secrets(dir: &Path, tenant_id: Uuid, seed: &LicenseSeed) -> Result<Vec<PathBuf>> {
    let seed_path = secrets::manifest_path(dir, secrets::LICENSE_SEED);
    let tenant_path = secrets::manifest_path(dir, secrets::INITIAL_TENANT);
    let staged_seed = fsio::Staged::write(
        &seed_path,
        seed.to_manifest().to_yaml().as_bytes(),
        fsio::SECRET_MODE,
    )?;
    let staged_tenant = fsio::Staged::write(
        &tenant_path,
        secrets::initial_tenant(tenant_id).to_yaml().as_bytes(),
        fsio::SECRET_MODE,
    )?;
    staged_seed.commit()?;
    if let Err(e) = staged_tenant.commit() {
        // Never leave a seed without its tenant: take the new seed back out.
        let _ = std::fs::remove_file(&seed_path);
        return Err(e);
    }
    Ok(vec![seed_path, tenant_path])
}

pub(crate) fn redeem_error(e: ApiError) -> Error {
    match e.code.as_deref() {
        Some(error_code::CODE_MALFORMED) => Error::CodeMalformedByService,
        Some(error_code::CODE_INVALID) => Error::CodeInvalid,
        Some(error_code::CODE_EXPIRED) => Error::CodeExpired,
        Some(error_code::CODE_REVOKED) => Error::CodeRevoked,
        Some(error_code::CODE_ALREADY_USED) => Error::CodeAlreadyUsed,
        Some("malformed_response" | "response_too_large") => {
            Error::bad("the response is not a valid redeem answer")
        }
        _ => e.into_generic(),
    }
}
