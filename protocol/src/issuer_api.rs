//! The issuer's API as the gateway calls it: JSON over HTTP/1.1 on mutual TLS.
//!
//! The issuer chooses everything that matters for security (code ids, key versions,
//! license lifetimes and entitlements, certificate subjects); requests carry only what
//! the issuer cannot know (which tenant, which appliance, the CSR) and optional
//! *requests* for less, which it refuses when they ask for more than the policy allows.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::code::CodeBinding;
use crate::secret::SecretText;

/// `POST`: mint a new install code. Body [`MintCodeRequest`], reply [`MintCodeResponse`].
pub const MINT_CODE: &str = "/v1/codes/mint";
/// `POST`: re-derive the code of a stored binding (mail delivery). [`DeriveCodeRequest`] → [`DeriveCodeResponse`].
pub const DERIVE_CODE: &str = "/v1/codes/derive";
/// `POST`: check a presented code against its stored binding. [`VerifyCodeRequest`] → [`VerifyCodeResponse`].
pub const VERIFY_CODE: &str = "/v1/codes/verify";
/// `POST`: sign a license JWT. [`SignLicenseRequest`] → [`SignedLicense`].
pub const SIGN_LICENSE: &str = "/v1/licenses";
/// `POST`: sign several licenses in one request. [`SignLicensesRequest`] →
/// [`SignLicensesResponse`]: one result per request, in the same order. The gateway
/// sends it when concurrent license requests queue up behind its calls in flight, so
/// the issuer's per-request costs (TLS records, HTTP, the signing log's fsync) are
/// shared by the batch. Each license is signed and logged exactly as by [`SIGN_LICENSE`].
pub const SIGN_LICENSES: &str = "/v1/licenses/batch";
/// Most licenses in one [`SignLicensesRequest`] (more is refused as `bad_request`).
pub const MAX_LICENSE_BATCH: usize = 64;
/// `POST`: sign an appliance credential from a CSR. [`SignCredentialRequest`] → [`SignedCredential`].
pub const SIGN_CREDENTIAL: &str = "/v1/credentials";
/// `POST`: sign an audit checkpoint. [`SignCheckpointRequest`] → [`SignedCheckpoint`].
pub const SIGN_CHECKPOINT: &str = "/v1/audit/checkpoints";
/// `POST`: sign a checkpoint of the audit log's Merkle tree, as a c2sp.org/signed-note
/// note in c2sp.org/tlog-checkpoint form, with the log key (Ed25519) under the origin
/// the issuer is configured with. [`SignLogCheckpointRequest`] → [`SignedLogCheckpoint`].
pub const SIGN_LOG_CHECKPOINT: &str = "/v1/audit/log/checkpoints";
/// `GET`: every public key and certificate the issuer publishes. → [`PublicKeys`].
pub const PUBLIC_KEYS: &str = "/v1/keys";
/// `GET`: liveness (also behind mTLS).
pub const HEALTH: &str = "/healthz";

/// Mint a fresh code for a tenant. The issuer picks the `code_id` and key version and
/// refuses an `expires_at` beyond the policy's install-code TTL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintCodeRequest {
    pub tenant_id: Uuid,
    pub edition: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The appliance the code's redeem retires (a rebuild); part of the binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_appliance_id: Option<Uuid>,
}

/// A minted code: the binding to store (no secret) and the code itself (for the mail only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintCodeResponse {
    pub binding: CodeBinding,
    pub code: SecretText,
}

/// Re-derive the code of a stored binding (so the mail outbox never stores the code).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveCodeRequest {
    pub binding: CodeBinding,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeriveCodeResponse {
    pub code: SecretText,
}

/// Is `code` the code of `binding`? (Constant-time comparison in the issuer.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyCodeRequest {
    pub binding: CodeBinding,
    pub code: SecretText,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyCodeResponse {
    pub valid: bool,
}

/// Sign a license for an appliance. The issuer derives lifetime and entitlements from
/// the edition in its policy; `lifetime_seconds`, when given, may only shorten it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignLicenseRequest {
    pub tenant_id: Uuid,
    pub appliance_id: Uuid,
    pub edition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<u64>,
}

/// A signed license JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedLicense {
    pub token: SecretText,
    pub kid: String,
    pub jti: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Sign up to [`MAX_LICENSE_BATCH`] licenses (at least one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignLicensesRequest {
    pub licenses: Vec<SignLicenseRequest>,
}

/// The results of a [`SignLicensesRequest`], one per license, in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignLicensesResponse {
    pub results: Vec<LicenseResult>,
}

/// One license of a batch: `{"license": …}` when signed (and logged), or
/// `{"error": {"code": …, "message": …}}` with the error [`SIGN_LICENSE`] would have
/// answered for that request alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseResult {
    License(SignedLicense),
    Error(IssuerErrorDetail),
}

/// Sign an appliance credential. The issuer sets subject, SAN, EKU, serial and validity
/// itself; from the CSR it takes only the (verified) public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignCredentialRequest {
    pub tenant_id: Uuid,
    pub appliance_id: Uuid,
    pub edition: String,
    pub csr_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<u64>,
}

/// A signed appliance credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedCredential {
    /// The appliance's certificate (PEM).
    pub certificate_pem: String,
    /// The CA chain up to the appliance CA (PEM).
    pub chain_pem: String,
    /// Certificate serial, hex.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Sign the audit chain's head.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignCheckpointRequest {
    pub sequence: u64,
    /// Hex SHA-256 of the head record.
    pub head_hash: String,
}

/// A signed checkpoint: the statement of [`CheckpointStatement`] and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub sequence: u64,
    pub head_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    /// `kid` of the audit key that signed.
    pub kid: String,
    /// base64url (no padding) raw ECDSA P-256 `r‖s` over SHA-256 of the statement.
    pub signature: String,
}

/// The exact bytes an audit checkpoint signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointStatement<'a> {
    pub sequence: u64,
    pub head_hash: &'a str,
    pub signed_at: OffsetDateTime,
    pub kid: &'a str,
}

impl CheckpointStatement<'_> {
    /// `alga-license/audit-checkpoint/v1\n<kid>\n<sequence>\n<head hash hex>\n<signed_at unix seconds>\n`
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "alga-license/audit-checkpoint/v1\n{}\n{}\n{}\n{}\n",
            self.kid,
            self.sequence,
            self.head_hash.to_ascii_lowercase(),
            self.signed_at.unix_timestamp()
        )
        .into_bytes()
    }
}

/// Sign the audit log's tree head. The issuer writes the checkpoint body itself
/// (origin line from its own configuration, size, root hash), so the gateway can obtain
/// a log-key signature over nothing but a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignLogCheckpointRequest {
    /// Number of leaves in the tree.
    pub size: u64,
    /// The RFC 6962 root hash of the tree of `size` leaves, standard base64 (32 bytes).
    pub root_hash: String,
}

/// A signed tree head: the whole signed note, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedLogCheckpoint {
    /// The note: checkpoint body, blank line, one signature line by the log key.
    pub note: String,
    /// `kid` of the log key that signed (its token label).
    pub kid: String,
}

/// Everything public the issuer publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicKeys {
    /// License verification keys, every version (RFC 7517 JWK Set).
    pub jwks: Jwks,
    /// Every appliance CA certificate (PEM), oldest first.
    pub ca_chain_pem: String,
    /// Every audit checkpoint key.
    pub audit_keys: Vec<AuditKey>,
    /// Every transparency-log key (Ed25519), the active one first.
    #[serde(default)]
    pub log_keys: Vec<LogKey>,
}

/// A transparency-log key: the Ed25519 key that signs the audit log's checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogKey {
    /// Token label (`alga-log-vN`).
    pub kid: String,
    pub version: u32,
    /// The c2sp.org/signed-note verifier key: `<origin>+<hex key id>+<base64(0x01 ‖ key)>`.
    pub vkey: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

/// A JWK Set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// An EC P-256 public JWK with its fixed algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// An audit checkpoint public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKey {
    pub kid: String,
    pub version: u32,
    /// DER SubjectPublicKeyInfo, standard base64.
    pub spki_der_b64: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

/// The issuer's error body: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuerErrorBody {
    pub error: IssuerErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuerErrorDetail {
    pub code: IssuerErrorCode,
    pub message: String,
}

/// Stable error codes of the issuer API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuerErrorCode {
    /// The body is not a valid request (400).
    BadRequest,
    /// The edition is not in the policy (400).
    UnknownEdition,
    /// The edition has no license or credential (400).
    EditionNotPaid,
    /// The request asks for more than the policy allows (400).
    BeyondPolicy,
    /// The CSR is malformed, its self-signature is wrong, or its key type is refused (400).
    CsrInvalid,
    /// The presented code is not well formed (400).
    CodeMalformed,
    /// The client is not the gateway (403).
    Forbidden,
    /// The HSM is unavailable; retry (503).
    HsmUnavailable,
    /// The appliance CA has expired or expires too soon to issue a useful
    /// credential: nothing was signed; an operator must rotate the CA (503).
    CaExpiring,
    /// Something else failed (500); the issuer's log has the detail.
    Internal,
}

/// License JWT claims (CONTRACT.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseClaims {
    pub iss: String,
    /// The tenant id.
    pub sub: String,
    pub aud: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub edition: String,
    pub entitlements: Entitlements,
    pub appliance_id: String,
    /// NumericDate by which the appliance must have checked in again: after it the
    /// service counts the appliance `overdue` (the license's `iat` plus the edition's
    /// check-in interval and grace, never later than `exp`). Appliances warn as it
    /// nears. Absent from licenses signed before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_in_by: Option<i64>,
}

/// The `aud` of every license.
pub const LICENSE_AUDIENCE: &str = "alga-appliance";

/// What a license entitles the appliance to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    pub features: Vec<String>,
    pub seats: u32,
    /// Seconds between check-ins.
    pub check_in_interval_seconds: u64,
}
