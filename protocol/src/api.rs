//! The gateway's public HTTP API (DESIGN §5): bodies and the stable error codes.
//!
//! These names are a contract with nm-store, appliances and security staff's tools:
//! renaming a field or an error code breaks clients.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::secret::SecretText;

/// `POST /register-tenant` (role `store`).
pub const REGISTER_TENANT: &str = "/register-tenant";
/// `POST /install-codes/reissue` (role `store`).
pub const REISSUE: &str = "/install-codes/reissue";
/// `POST /register` (appliance, TLS without client certificate).
pub const REDEEM: &str = "/register";
/// `POST /check-in` (appliance credential).
pub const CHECK_IN: &str = "/check-in";
/// `GET /.well-known/jwks.json`.
pub const JWKS: &str = "/.well-known/jwks.json";
/// `GET /ca.pem`.
pub const CA_PEM: &str = "/ca.pem";
/// Header of idempotent registration.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header carrying the request id on every response.
pub const REQUEST_ID: &str = "x-request-id";

/// `POST /register-tenant` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterTenantRequest {
    pub company: String,
    pub contact: Contact,
    pub edition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: String,
    pub email: String,
}

/// 201 body of `POST /register-tenant` and (with `revoked_code_ids`) of reissue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterTenantResponse {
    pub tenant_id: Uuid,
    pub edition: String,
    pub install_code: InstallCodeInfo,
    pub download: DownloadLink,
    pub email: EmailStatus,
    /// Only in reissue responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_code_ids: Option<Vec<String>>,
}

/// The public facts of a code: never the code itself (that goes to the mailbox only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallCodeInfo {
    pub code_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadLink {
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailStatus {
    pub status: MailState,
}

/// `sent` when the first attempt succeeded within the request, else `queued`
/// (and, in `GET /tenants/{id}`, `failed` after the retry budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailState {
    Sent,
    Queued,
    Failed,
}

/// `POST /install-codes/reissue` body: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReissueRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<String>,
}

/// `POST /register` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    pub install_code: SecretText,
    pub csr: String,
    pub appliance: ApplianceInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceInfo {
    pub hostname: String,
    pub version: String,
}

/// 200 body of `POST /register`. The last three are null for editions without a license.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemResponse {
    pub tenant_id: Uuid,
    pub edition: String,
    pub appliance_id: Uuid,
    pub license: Option<License>,
    pub credential: Option<Credential>,
    pub check_in_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct License {
    pub token: SecretText,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub certificate: String,
    pub chain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /check-in` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInRequest {
    pub appliance: CheckInAppliance,
    #[serde(default)]
    pub csr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInAppliance {
    pub version: String,
}

/// 200 body of `POST /check-in`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckInResponse {
    pub license: License,
    pub credential: Option<Credential>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_check_in_after: OffsetDateTime,
}

/// Every error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub request_id: String,
    /// Validation errors: field path → problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
    /// `tenant_exists`: the existing tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
}

/// The stable error codes of DESIGN §5 (and the few generic ones every API needs).
pub mod error_code {
    pub const CODE_MALFORMED: &str = "code_malformed";
    pub const CODE_INVALID: &str = "code_invalid";
    pub const CODE_EXPIRED: &str = "code_expired";
    pub const CODE_REVOKED: &str = "code_revoked";
    pub const CODE_ALREADY_USED: &str = "code_already_used";
    pub const CSR_INVALID: &str = "csr_invalid";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const LICENSE_SERVICE_UNAVAILABLE: &str = "license_service_unavailable";
    pub const TENANT_NOT_FOUND: &str = "tenant_not_found";
    pub const AMBIGUOUS_CONTACT: &str = "ambiguous_contact";
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    pub const CREDENTIAL_REQUIRED: &str = "credential_required";
    pub const APPLIANCE_REVOKED: &str = "appliance_revoked";
    pub const TENANT_SUSPENDED: &str = "tenant_suspended";
    /// 409 on a duplicate company + contact, with the existing `tenant_id`.
    pub const TENANT_EXISTS: &str = "tenant_exists";
    /// 400 with `fields`.
    pub const VALIDATION_FAILED: &str = "validation_failed";
    /// 401: no client certificate where one is required.
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// 403: a certificate whose identity has no right to this route.
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    /// 405: the path exists, the method does not.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const APPLIANCE_NOT_FOUND: &str = "appliance_not_found";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const INTERNAL: &str = "internal";
    pub const SERVICE_UNAVAILABLE: &str = "service_unavailable";
}
