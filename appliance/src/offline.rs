//! Air-gapped installs and offline refresh: the appliance writes a request file,
//! a relay (any machine with a network) submits it and writes the response file, and
//! the appliance installs the response after verifying it with nothing but what it
//! already trusts. File formats: `alga_protocol::offline` and `appliance/README.md`.
//!
//! - [`write_redeem_request`] (`redeem --offline-request`): the code checked offline,
//!   the key loaded from or created in the output directory (where the online redeem
//!   keeps it), the `POST /register` body written with a nonce; no network.
//! - [`relay`] (`relay`): reads either request kind and performs it over the normal
//!   API (`POST /register`, or `POST /check-in/relayed`), then writes the answer with
//!   the request's nonce and the SHA-256 of the request file.
//! - [`install_redeem_response`] (`redeem --offline-response`): the response must
//!   answer the pending request (nonce and request digest, kept in the output
//!   directory), then it is verified exactly as an online redeem's answer
//!   (`redeem::verified_seed`: the license against the pinned trust root, which
//!   endorses its key inside the token; the credential chained to a CA the root
//!   certified and issued for this appliance's own key) and the same two Secrets are
//!   written.
//! - [`write_check_in_request`] / [`install_check_in_response`] (`check-in
//!   --offline-request|--offline-response`): a refresh request signed with the
//!   appliance's key (nonce, time, certificate chain), and its answer verified and
//!   applied exactly as an online check-in's (`check_in::apply_answer`), except that
//!   an answer without a license is refused: nothing in it is signed, so offline it
//!   could be a relay's forgery (online, TLS vouches for it and the seed falls back).
//!
//! What no signature covers is checked against what one does: the `expires_at`
//! fields against the token's `exp` and the certificate's `notAfter`. What remains
//! unsigned in a response is the redeem's `check_in_url` (used only by an online
//! check-in, whose TLS the CA bundle still authenticates), the check-in's
//! `next_check_in_after` (advice printed to the operator), and the tenant id of an
//! edition without a license (SECURITY.md, "Air-gapped appliances").
//!
//! Any failure writes nothing to the output directory or the seed. The redeem
//! request file holds the install code: it is written 0600, never logged, and a
//! secret in transit.

use std::path::{Path, PathBuf};

use alga_protocol::SecretText;
use alga_protocol::api::{self, CheckInResponse, RedeemResponse};
use alga_protocol::offline::{
    self as wire, FormatOnly, OfflineCheckInResponse, OfflineRedeemRequest, OfflineRedeemResponse,
    RelayedCheckIn, RelayedCheckInPayload,
};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::check_in::{self, Outcome};
use crate::crypto::{self, ApplianceKey};
use crate::error::{Error, Result};
use crate::fsio;
use crate::redeem::{self, Redeemed};
use crate::service::{self, ApiError, Retry, ServiceClient};

/// In the output directory: what the last `redeem --offline-request` asked (no code).
pub const PENDING_REDEEM_FILE: &str = "offline-redeem.pending.json";
/// In the seed directory: what the last `check-in --offline-request` asked, with the
/// new key when it asked for a rotation (a secret: mode 0600).
pub const PENDING_CHECK_IN_FILE: &str = "offline-check-in.pending.json";

const PENDING_REDEEM_FORMAT: &str = "alga-offline-redeem-pending/v1";
const PENDING_CHECK_IN_FORMAT: &str = "alga-offline-check-in-pending/v1";

/// Largest request or response file read.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingRedeem {
    format: String,
    nonce: Uuid,
    request_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingCheckIn {
    format: String,
    nonce: Uuid,
    request_sha256: String,
    /// PKCS#8 PEM of the key the request's CSR is for, when it asked for a rotation.
    new_key_pem: Option<SecretText>,
}

/// A request file written (no secrets).
#[derive(Debug, Clone)]
pub struct RequestWritten {
    pub file: PathBuf,
    pub nonce: Uuid,
    /// Redeem: a new key was generated. Check-in: the request asks for a rotation.
    pub new_key: bool,
}

/// What `redeem --offline-request` needs besides the code and the time.
#[derive(Debug, Clone)]
pub struct RedeemRequestConfig {
    /// Where the key is (or is created) and where the response is installed later.
    pub out_dir: PathBuf,
    /// The request file to write (mode 0600: it holds the install code).
    pub request_file: PathBuf,
    pub hostname: String,
    pub version: String,
}

/// Writes the redeem request file; touches no network.
#[tracing::instrument(skip_all, fields(out = %cfg.out_dir.display()))]
pub fn write_redeem_request(
    cfg: &RedeemRequestConfig,
    code: &SecretText,
    now: OffsetDateTime,
) -> Result<RequestWritten> {
    let code = redeem::parse_code(code.expose())?;
    let redeem::Keyed { new_key, req, .. } =
        redeem::keyed_request(&cfg.out_dir, &code, &cfg.hostname, &cfg.version)?;
    let request = OfflineRedeemRequest {
        format: wire::REDEEM_REQUEST_FORMAT.to_owned(),
        nonce: Uuid::new_v4(),
        created_at: now,
        redeem: req,
    };
    let bytes = zeroize::Zeroizing::new(to_json(&request)?);
    fsio::write_atomic(&cfg.request_file, &bytes, fsio::SECRET_MODE)?;
    let pending = PendingRedeem {
        format: PENDING_REDEEM_FORMAT.to_owned(),
        nonce: request.nonce,
        request_sha256: wire::sha256_hex(&bytes),
    };
    fsio::write_atomic(
        &cfg.out_dir.join(PENDING_REDEEM_FILE),
        &to_json(&pending)?,
        fsio::SECRET_MODE,
    )?;
    tracing::info!(code.id = %code.code_id(), key.new = new_key, "offline redeem request written");
    Ok(RequestWritten {
        file: cfg.request_file.clone(),
        nonce: request.nonce,
        new_key,
    })
}

/// What `redeem --offline-response` needs besides the time.
#[derive(Debug, Clone)]
pub struct InstallRedeemConfig {
    pub response_file: PathBuf,
    /// The directory the request was made in (its key and pending request).
    pub out_dir: PathBuf,
    /// The CA bundle the appliance was installed with (kept in the seed for check-in).
    pub ca_bundle: PathBuf,
    /// The pinned trust root.
    pub trust_root: PathBuf,
}

/// Verifies a redeem response offline and writes the two Secrets.
#[tracing::instrument(skip_all, fields(out = %cfg.out_dir.display()))]
pub fn install_redeem_response(cfg: &InstallRedeemConfig, now: OffsetDateTime) -> Result<Redeemed> {
    let ca_pem = fsio::read(&cfg.ca_bundle)?;
    let roots = crypto::load_trust_roots(&cfg.trust_root)?;
    let pending_path = cfg.out_dir.join(PENDING_REDEEM_FILE);
    let pending = read_pending(&pending_path, PENDING_REDEEM_FORMAT, |p: &PendingRedeem| {
        &p.format
    })?;
    let key = load_existing_key(&cfg.out_dir)?;
    let response: OfflineRedeemResponse = read_answer(
        &cfg.response_file,
        (pending.nonce, &pending.request_sha256),
        "the response file answers another request than the one this appliance made last (in this output directory)",
    )?;
    let resp = response.response;
    let seed = redeem::verified_seed(&resp, &key, &roots, &ca_pem, now)?;
    times_match(resp.license.as_ref(), resp.credential.as_ref())?;
    let files = redeem::write_secrets(&cfg.out_dir, resp.tenant_id, &seed)?;
    // Answered: the request cannot be installed twice. A failure to remove it is
    // harmless (the Secrets are written), so it is only logged.
    if let Err(e) = std::fs::remove_file(&pending_path) {
        tracing::warn!(error = %e, "could not remove the pending offline request");
    }
    tracing::info!(tenant.id = %resp.tenant_id, appliance.id = %resp.appliance_id, edition = %resp.edition, "redeemed offline");
    Ok(Redeemed::new(resp, files))
}

/// What `check-in --offline-request` needs besides the time.
#[derive(Debug, Clone)]
pub struct CheckInRequestConfig {
    /// The directory holding the license seed.
    pub seed_dir: PathBuf,
    pub request_file: PathBuf,
    /// Ask for a new credential whatever the certificate's remaining lifetime.
    pub force_rotate: bool,
    pub version: String,
}

/// What `check-in --offline-request` did.
#[derive(Debug, Clone)]
pub enum CheckInRequestOutcome {
    Written(RequestWritten),
    /// The seed has no license: nothing to refresh, nothing written.
    NothingToRefresh {
        edition: String,
    },
}

/// Writes a check-in request signed with the appliance's key; touches no network.
#[tracing::instrument(skip_all, fields(seed = %cfg.seed_dir.display()))]
pub fn write_check_in_request(
    cfg: &CheckInRequestConfig,
    now: OffsetDateTime,
) -> Result<CheckInRequestOutcome> {
    let seed = check_in::load_seed(&cfg.seed_dir)?;
    let Some(paid) = seed.paid else {
        return Ok(CheckInRequestOutcome::NothingToRefresh {
            edition: seed.edition,
        });
    };
    let current = crypto::cert_facts(&paid.cert_chain_pem)?;
    let signer = p256::ecdsa::SigningKey::from_pkcs8_pem(paid.key_pem.expose()).map_err(|_| {
        Error::input(
            "the license seed's APPLIANCE_KEY",
            "it is not an EC P-256 PKCS#8 key",
        )
    })?;
    let (check_in, new_key) = check_in::request(&current, cfg.force_rotate, &cfg.version, now)?;
    let rotate = new_key.is_some();
    let payload = RelayedCheckInPayload {
        nonce: Uuid::new_v4(),
        issued_at: now.unix_timestamp(),
        certificate_chain: paid.cert_chain_pem.clone(),
        check_in,
    };
    let payload_bytes = serde_json::to_vec(&payload)
        .map_err(|e| Error::Internal(format!("serialize the request: {e}")))?;
    let signature: p256::ecdsa::Signature = signer.sign(&wire::signing_input(&payload_bytes));
    let request = RelayedCheckIn {
        format: wire::CHECK_IN_REQUEST_FORMAT.to_owned(),
        payload: wire::b64url(&payload_bytes),
        signature: wire::b64url(&signature.to_bytes()),
    };
    let bytes = to_json(&request)?;
    fsio::write_atomic(&cfg.request_file, &bytes, fsio::SECRET_MODE)?;
    let pending = PendingCheckIn {
        format: PENDING_CHECK_IN_FORMAT.to_owned(),
        nonce: payload.nonce,
        request_sha256: wire::sha256_hex(&bytes),
        new_key_pem: new_key.as_ref().map(ApplianceKey::to_pem),
    };
    let pending_bytes = zeroize::Zeroizing::new(to_json(&pending)?);
    fsio::write_atomic(
        &cfg.seed_dir.join(PENDING_CHECK_IN_FILE),
        &pending_bytes,
        fsio::SECRET_MODE,
    )?;
    tracing::info!(
        tenant.id = %current.identity.tenant_id,
        appliance.id = %current.identity.appliance_id,
        credential.rotate = rotate,
        "offline check-in request written"
    );
    Ok(CheckInRequestOutcome::Written(RequestWritten {
        file: cfg.request_file.clone(),
        nonce: payload.nonce,
        new_key: rotate,
    }))
}

/// What `check-in --offline-response` needs besides the time.
#[derive(Debug, Clone)]
pub struct InstallCheckInConfig {
    pub seed_dir: PathBuf,
    pub response_file: PathBuf,
    /// Overrides the seed's `TRUST_ROOT`, as for the online check-in.
    pub trust_root: Option<PathBuf>,
}

/// Verifies a check-in response offline and updates the seed, as an online check-in;
/// an answer without a license is refused ([`Error::OfflineUnlicensed`]).
#[tracing::instrument(skip_all, fields(seed = %cfg.seed_dir.display()))]
pub fn install_check_in_response(
    cfg: &InstallCheckInConfig,
    now: OffsetDateTime,
) -> Result<Outcome> {
    let seed = check_in::load_seed(&cfg.seed_dir)?;
    let paid = seed.paid.as_ref().ok_or_else(|| {
        Error::NotOurResponse("the license seed has no license: no check-in was requested".into())
    })?;
    let roots = check_in::trust_roots(cfg.trust_root.as_deref(), paid)?;
    let pending_path = cfg.seed_dir.join(PENDING_CHECK_IN_FILE);
    let pending = read_pending(
        &pending_path,
        PENDING_CHECK_IN_FORMAT,
        |p: &PendingCheckIn| &p.format,
    )?;
    let new_key = pending
        .new_key_pem
        .as_ref()
        .map(|k| ApplianceKey::from_pem(k.expose()))
        .transpose()?;
    let response: OfflineCheckInResponse = read_answer(
        &cfg.response_file,
        (pending.nonce, &pending.request_sha256),
        "the response file answers another check-in request than the one this appliance made last",
    )?;
    // Online, TLS vouches for a `license: null` answer (the tenant's edition has no
    // license any more) and the seed falls back to that edition, its key removed.
    // Offline nothing signed says so: a relay could forge it and unlicense the
    // appliance for good. The installed license runs out instead.
    if response.response.license.is_none() {
        return Err(Error::OfflineUnlicensed);
    }
    times_match(
        response.response.license.as_ref(),
        response.response.credential.as_ref(),
    )?;
    let outcome = check_in::apply_answer(
        &cfg.seed_dir,
        &seed,
        &roots,
        new_key,
        &response.response,
        now,
    )?;
    if let Err(e) = std::fs::remove_file(&pending_path) {
        tracing::warn!(error = %e, "could not remove the pending offline check-in");
    }
    Ok(outcome)
}

/// What `relay` needs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub service_url: String,
    /// The CA bundle that authenticates the service's TLS.
    pub ca_bundle: PathBuf,
    pub request_file: PathBuf,
    pub response_file: PathBuf,
    pub retry: Retry,
}

/// Which request a relay performed, and what the service said (no secrets).
#[derive(Debug, Clone)]
pub enum Relayed {
    Redeem {
        tenant_id: Uuid,
        appliance_id: Uuid,
        edition: String,
    },
    CheckIn {
        edition: Option<String>,
        licensed: bool,
        credential_renewed: bool,
    },
}

/// Performs the request of `cfg.request_file` (its `format` says which) and writes
/// the response file (mode 0600: it holds a license). Nothing is verified here but
/// the service's TLS: the appliance verifies the answer.
#[tracing::instrument(skip_all)]
pub async fn relay(cfg: &RelayConfig) -> Result<Relayed> {
    let bytes = zeroize::Zeroizing::new(read_file(&cfg.request_file)?);
    let format = read_format(&bytes, "the request file")?;
    let base = service::parse_service_url(&cfg.service_url)?;
    let ca_pem = fsio::read(&cfg.ca_bundle)?;
    let client = ServiceClient::new(&ca_pem, None, cfg.retry.clone())?;
    let request_sha256 = wire::sha256_hex(&bytes);
    match format.as_str() {
        wire::REDEEM_REQUEST_FORMAT => {
            let req: OfflineRedeemRequest = serde_json::from_slice(&bytes).map_err(|_| {
                Error::input(
                    "the request file",
                    "it is not a valid offline redeem request",
                )
            })?;
            // A typo never reaches the service, as online.
            redeem::parse_code(req.redeem.install_code.expose())?;
            let resp: RedeemResponse = client
                .post_json(&service::endpoint(&base, api::REDEEM), &req.redeem)
                .await?
                .map_err(redeem::redeem_error)?;
            let out = OfflineRedeemResponse {
                format: wire::REDEEM_RESPONSE_FORMAT.to_owned(),
                nonce: req.nonce,
                request_sha256,
                response: resp.clone(),
            };
            fsio::write_atomic(&cfg.response_file, &to_json(&out)?, fsio::SECRET_MODE)?;
            tracing::info!(tenant.id = %resp.tenant_id, appliance.id = %resp.appliance_id, "relayed a redeem");
            Ok(Relayed::Redeem {
                tenant_id: resp.tenant_id,
                appliance_id: resp.appliance_id,
                edition: resp.edition,
            })
        }
        wire::CHECK_IN_REQUEST_FORMAT => {
            let req: RelayedCheckIn = serde_json::from_slice(&bytes).map_err(|_| {
                Error::input(
                    "the request file",
                    "it is not a valid offline check-in request",
                )
            })?;
            let nonce = req
                .payload_unverified()
                .map_err(|e| Error::input("the request file", e))?
                .nonce;
            let resp: CheckInResponse = client
                .post_json(&service::endpoint(&base, wire::RELAYED_CHECK_IN), &req)
                .await?
                .map_err(relayed_error)?;
            let out = OfflineCheckInResponse {
                format: wire::CHECK_IN_RESPONSE_FORMAT.to_owned(),
                nonce,
                request_sha256,
                response: resp.clone(),
            };
            fsio::write_atomic(&cfg.response_file, &to_json(&out)?, fsio::SECRET_MODE)?;
            tracing::info!("relayed a check-in");
            Ok(Relayed::CheckIn {
                edition: resp.edition,
                licensed: resp.license.is_some(),
                credential_renewed: resp.credential.is_some(),
            })
        }
        other => Err(unknown_format(other, "the request file", None)),
    }
}

/// An answer's `expires_at` fields are plain JSON beside the signed token and
/// certificate they describe. Online, TLS vouches for them; offline they must be the
/// token's `exp` and the certificate's `notAfter` (to the second), so that a relay
/// cannot change what the appliance reports. The token and certificate themselves are
/// verified by the shared code (before this, or right after it with nothing written
/// in between).
fn times_match(license: Option<&api::License>, credential: Option<&api::Credential>) -> Result<()> {
    if let Some(l) = license {
        let exp = token_exp(l.token.expose())
            .ok_or_else(|| Error::bad("the license is not a JWT with an expiry"))?;
        if exp != l.expires_at.unix_timestamp() {
            return Err(Error::bad(
                "the answer's license expires_at is not the license's own expiry",
            ));
        }
    }
    if let Some(c) = credential {
        let facts = crypto::cert_facts(&c.certificate)
            .map_err(|_| Error::bad("the credential is not an appliance certificate"))?;
        if facts.not_after.unix_timestamp() != c.expires_at.unix_timestamp() {
            return Err(Error::bad(
                "the answer's credential expires_at is not the certificate's own expiry",
            ));
        }
    }
    Ok(())
}

/// The `exp` claim of a JWT, read without verifying it (see [`times_match`]).
fn token_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("exp")?
        .as_i64()
}

fn relayed_error(e: ApiError) -> Error {
    use alga_protocol::api::error_code;
    match e.code.as_deref() {
        Some(error_code::RELAYED_REQUEST_REJECTED | error_code::RELAYED_REQUEST_REPLAYED) => {
            Error::RelayedRefused {
                detail: e.message.unwrap_or_else(|| "refused".into()),
            }
        }
        _ => check_in::check_in_error(e),
    }
}

/// `<dir>/appliance.key`, which the request was made with; never created here.
fn load_existing_key(dir: &Path) -> Result<ApplianceKey> {
    let path = dir.join(crypto::KEY_FILE);
    let bytes = zeroize::Zeroizing::new(fsio::read(&path)?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::input(path.display().to_string(), "it is not PEM text"))?;
    ApplianceKey::from_pem(text)
}

fn read_pending<T: serde::de::DeserializeOwned>(
    path: &Path,
    format: &str,
    format_of: impl Fn(&T) -> &String,
) -> Result<T> {
    let bytes = match std::fs::read(path) {
        Ok(b) => zeroize::Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotOurResponse(format!(
                "no offline request is pending here ({} does not exist: make the request in this directory first, or it was answered already)",
                path.display()
            )));
        }
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let pending: T = serde_json::from_slice(&bytes)
        .map_err(|_| Error::input(path.display().to_string(), "it is not a pending request"))?;
    if format_of(&pending) != format {
        return Err(Error::input(
            path.display().to_string(),
            "it is not a pending request of this version",
        ));
    }
    Ok(pending)
}

/// A response file as the relay writes it.
trait Answer: serde::de::DeserializeOwned {
    /// Its `format`.
    const FORMAT: &str;
    /// Which response, for the message of a file that does not parse.
    const KIND: &str;
    /// The nonce and request digest of the request it answers.
    fn answers(&self) -> (Uuid, &str);
}

impl Answer for OfflineRedeemResponse {
    const FORMAT: &str = wire::REDEEM_RESPONSE_FORMAT;
    const KIND: &str = "redeem";
    fn answers(&self) -> (Uuid, &str) {
        (self.nonce, &self.request_sha256)
    }
}

impl Answer for OfflineCheckInResponse {
    const FORMAT: &str = wire::CHECK_IN_RESPONSE_FORMAT;
    const KIND: &str = "check-in";
    fn answers(&self) -> (Uuid, &str) {
        (self.nonce, &self.request_sha256)
    }
}

/// The response file at `path`, which must be of its kind's format and answer the
/// `pending` request (nonce and request digest); `not_ours` is the refusal when it
/// answers another one.
fn read_answer<T: Answer>(path: &Path, pending: (Uuid, &str), not_ours: &str) -> Result<T> {
    let bytes = read_file(path)?;
    check_format(&bytes, T::FORMAT, "the response file")?;
    let response: T = serde_json::from_slice(&bytes).map_err(|_| {
        Error::bad(format!(
            "the response file is not a valid offline {} response",
            T::KIND
        ))
    })?;
    if response.answers() != pending {
        return Err(Error::NotOurResponse(not_ours.into()));
    }
    Ok(response)
}

/// A request or response file's bytes, bounded.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(Error::input(
            path.display().to_string(),
            "it is larger than 1 MiB",
        ));
    }
    Ok(bytes)
}

fn read_format(bytes: &[u8], what: &str) -> Result<String> {
    serde_json::from_slice::<FormatOnly>(bytes)
        .map(|f| f.format)
        .map_err(|_| Error::input(what, "it is not an alga offline file (no \"format\")"))
}

/// The file's `format` must be `want`; another version is a local input error that
/// names both, anything unparsable a bad response.
fn check_format(bytes: &[u8], want: &str, what: &str) -> Result<()> {
    let format = serde_json::from_slice::<FormatOnly>(bytes)
        .map_err(|_| Error::bad(format!("{what} is not an alga offline file")))?
        .format;
    if format == want {
        Ok(())
    } else {
        Err(unknown_format(&format, what, Some(want)))
    }
}

fn unknown_format(format: &str, what: &str, want: Option<&str>) -> Error {
    let shown: String = format
        .chars()
        .take(64)
        .filter(|c| !c.is_control())
        .collect();
    let expected = want
        .map(|w| format!(" (expected \"{w}\")"))
        .unwrap_or_default();
    Error::input(
        what,
        format!("its format is \"{shown}\", which this alga-appliance does not read{expected}"),
    )
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut bytes =
        serde_json::to_vec_pretty(v).map_err(|e| Error::Internal(format!("serialize: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}
