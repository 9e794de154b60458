//! The gateway's public HTTP API (CONTRACT.md §5): bodies and the stable error codes.
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
/// `GET /appliances` (roles `store`, `auditor`): appliances by health, paged.
pub const APPLIANCES: &str = "/appliances";

/// `GET /events?after=<cursor>&limit=<n>` (role `store`): the event feed, paged.
pub const EVENTS: &str = "/events";

/// `GET /tenants/{tenant_id}` (roles `store`, `auditor`).
pub fn tenant_path(tenant_id: Uuid) -> String {
    format!("/tenants/{tenant_id}")
}

/// `PUT /tenants/{tenant_id}/entitlement` (role `store`).
pub fn entitlement_path(tenant_id: Uuid) -> String {
    format!("/tenants/{tenant_id}/entitlement")
}

/// `POST /tenants/{tenant_id}/suspend` (role `store`).
pub fn suspend_path(tenant_id: Uuid) -> String {
    format!("/tenants/{tenant_id}/suspend")
}

/// `POST /tenants/{tenant_id}/resume` (role `store`).
pub fn resume_path(tenant_id: Uuid) -> String {
    format!("/tenants/{tenant_id}/resume")
}

/// `POST /appliances/{appliance_id}/revoke` (role `store`).
pub fn revoke_path(appliance_id: Uuid) -> String {
    format!("/appliances/{appliance_id}/revoke")
}
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

/// 201 body of `POST /register-tenant` (and the first fields of [`ReissueResponse`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterTenantResponse {
    pub tenant_id: Uuid,
    pub edition: String,
    pub install_code: InstallCodeInfo,
    pub download: DownloadLink,
    pub email: EmailStatus,
}

/// 201 body of `POST /install-codes/reissue`: the new code as for a registration, the
/// codes it superseded, and the appliance its redeem will retire (`null`: it adds one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReissueResponse {
    #[serde(flatten)]
    pub code: RegisterTenantResponse,
    pub revoked_code_ids: Vec<String>,
    pub replaces_appliance_id: Option<Uuid>,
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

/// `POST /install-codes/reissue` body: exactly one of `tenant_id` and `contact_email`;
/// at most one of `replaces_appliance_id` and `add_appliance`.
///
/// Which appliance the new code's redeem retires: the one named; with neither, the
/// tenant's only active appliance (the rebuild), or none when it has none yet (a
/// first install's code sent again); with `add_appliance`, none (one more appliance,
/// within the edition's `max_appliances`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReissueRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_appliance_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub add_appliance: bool,
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
///
/// `license` is `null` when the tenant's edition has no license any more (a downgrade
/// to essentials): the appliance falls back to that edition's tier. `edition` is the
/// tenant's edition now (absent only from gateways older than edition changes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckInResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<String>,
    pub license: Option<License>,
    pub credential: Option<Credential>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_check_in_after: OffsetDateTime,
}

/// `PUT /tenants/{tenant_id}/entitlement` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitlementRequest {
    pub edition: String,
}

/// 200 body of `PUT /tenants/{tenant_id}/entitlement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementResponse {
    pub tenant_id: Uuid,
    pub edition: String,
    pub previous_edition: String,
    /// `false` when the tenant already had this edition (nothing changed).
    pub changed: bool,
    /// Unclaimed codes bound to the previous edition, revoked: re-issue a code for the
    /// new one where an install is still pending.
    pub revoked_code_ids: Vec<String>,
    /// The tenant's active appliances, and what the new edition allows.
    pub active_appliances: u32,
    pub max_appliances: u32,
}

/// Optional body of `POST /tenants/{tenant_id}/suspend`, `/resume` and
/// `POST /appliances/{appliance_id}/revoke`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why, for the audit log (a short sentence; no secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// 200 body of `POST /tenants/{tenant_id}/suspend` and `/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStatusResponse {
    pub tenant_id: Uuid,
    pub status: TenantStatus,
    /// Since when it is suspended (`null` when active).
    #[serde(with = "time::serde::rfc3339::option")]
    pub suspended_at: Option<OffsetDateTime>,
}

/// A tenant's status: a suspended tenant's check-ins and redeems are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// An appliance's place in its life: `active` until a rebuild's redeem `replaced` it
/// or the store `revoked` it; only active appliances check in and take a seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplianceState {
    Active,
    Replaced,
    Revoked,
}

/// Whether an active appliance of a paid edition checks in as it should: `ok` until
/// its next expected check-in plus the edition's grace, then `overdue`, and `stale`
/// after 30 days without a check-in. Computed at the time of the request from its last
/// check-in (or its redeem, before the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Overdue,
    Stale,
}

impl Health {
    /// Every value, in order.
    pub const ALL: [Health; 3] = [Health::Ok, Health::Overdue, Health::Stale];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Overdue => "overdue",
            Health::Stale => "stale",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// One appliance, as `GET /tenants/{tenant_id}` and `GET /appliances` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplianceView {
    pub appliance_id: Uuid,
    pub tenant_id: Uuid,
    pub state: ApplianceState,
    /// `null` for an appliance that is not active or whose edition does not check in.
    pub health: Option<Health>,
    pub hostname: String,
    pub version: String,
    /// The code it was redeemed with.
    pub code_id: String,
    pub credential_serial: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub credential_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_check_in_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The appliance whose redeem replaced this one.
    pub replaced_by: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub replaced_at: Option<OffsetDateTime>,
}

/// 200 body of `POST /appliances/{appliance_id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub appliance_id: Uuid,
    pub tenant_id: Uuid,
    /// `revoked`, or `replaced` when a rebuild had retired it already.
    pub state: ApplianceState,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// `false` when it was already revoked or replaced (the call is idempotent).
    pub changed: bool,
}

/// 200 body of `GET /tenants/{tenant_id}`: the tenant, its entitlement, its codes
/// (public facts only), its appliances and its mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantView {
    pub tenant_id: Uuid,
    pub company: String,
    pub contact: Contact,
    pub edition: String,
    pub status: TenantStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub suspended_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub entitlement: Option<EntitlementView>,
    pub install_codes: Vec<CodeView>,
    pub appliances: Vec<ApplianceView>,
    pub mail: Vec<MailView>,
}

/// A tenant's entitlement, and its use of appliances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementView {
    pub edition: String,
    pub paid: bool,
    pub features: Vec<String>,
    pub seats: i32,
    /// Active appliances the edition allows (the policy's `max_appliances`).
    pub max_appliances: u32,
    pub active_appliances: u32,
}

/// An install code's public facts (never the code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeView {
    pub code_id: String,
    /// `unclaimed`, `consumed` or `revoked`.
    pub state: String,
    pub expired: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub consumed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The appliance its redeem created.
    pub appliance_id: Option<Uuid>,
    /// The appliance its redeem retires (a rebuild's code).
    pub replaces_appliance_id: Option<Uuid>,
}

/// A mail of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailView {
    pub mail_id: Uuid,
    pub code_id: String,
    /// `registration` or `reissue`.
    pub kind: String,
    /// `queued`, `sent` or `failed`.
    pub status: String,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    /// The next attempt (queued mail only).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Why the last attempt failed (for a failed mail: why it was given up).
    pub last_error: Option<String>,
}

/// 200 body of `GET /appliances`: a page, oldest cursor first; `next` is the `after`
/// of the next page, `null` on the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliancePage {
    pub appliances: Vec<ApplianceView>,
    pub next: Option<String>,
}

/// The `type` of an [`Event`]: a contract, like the error codes.
pub mod event_type {
    pub const TENANT_REGISTERED: &str = "tenant.registered";
    pub const CODE_ISSUED: &str = "code.issued";
    pub const CODE_REDEEMED: &str = "code.redeemed";
    pub const APPLIANCE_REPLACED: &str = "appliance.replaced";
    pub const APPLIANCE_REVOKED: &str = "appliance.revoked";
    pub const APPLIANCE_OVERDUE: &str = "appliance.overdue";
    pub const ENTITLEMENT_CHANGED: &str = "entitlement.changed";
    pub const TENANT_SUSPENDED: &str = "tenant.suspended";
    pub const TENANT_RESUMED: &str = "tenant.resumed";
    pub const MAIL_FAILED: &str = "mail.failed";

    /// Every type, in documentation order.
    pub const ALL: [&str; 10] = [
        TENANT_REGISTERED,
        CODE_ISSUED,
        CODE_REDEEMED,
        APPLIANCE_REPLACED,
        APPLIANCE_REVOKED,
        APPLIANCE_OVERDUE,
        ENTITLEMENT_CHANGED,
        TENANT_SUSPENDED,
        TENANT_RESUMED,
        MAIL_FAILED,
    ];
}

/// One event of `GET /events`, and the body of a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Stable and increasing in feed order: the audit record's sequence number.
    pub id: u64,
    /// One of [`event_type`].
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened (the audit record's time).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub tenant_id: Option<Uuid>,
    pub appliance_id: Option<Uuid>,
    /// Type-specific fields (never a secret); see the OpenAPI document.
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// 200 body of `GET /events`: events in the audit log's order; `next` is the `after`
/// of the next request. A page with no events whose `next` is the `after` sent means
/// nothing new yet (ask again later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub next: String,
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

/// The stable error codes of CONTRACT.md §5 (and the few generic ones every API needs).
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
    /// 403 at check-in: a rebuild's redeem replaced this appliance.
    pub const APPLIANCE_REPLACED: &str = "appliance_replaced";
    /// 403 at check-in: the client certificate is not the appliance's current
    /// credential (a rotation or a redeem retry issued a newer one), nor its previous
    /// one within the overlap after a rotation.
    pub const CREDENTIAL_SUPERSEDED: &str = "credential_superseded";
    /// 409: the redeem (or an added code, or an edition change) would take the tenant
    /// past its edition's `max_appliances` active appliances; nothing was consumed.
    pub const SEAT_LIMIT_REACHED: &str = "seat_limit_reached";
    /// 409: a reissue names an appliance that is replaced or revoked.
    pub const APPLIANCE_NOT_ACTIVE: &str = "appliance_not_active";
    /// 409: a reissue without `replaces_appliance_id` or `add_appliance` for a tenant
    /// with several active appliances.
    pub const REPLACEMENT_AMBIGUOUS: &str = "replacement_ambiguous";
    /// 409: suspend of a suspended tenant.
    pub const TENANT_ALREADY_SUSPENDED: &str = "tenant_already_suspended";
    /// 409: resume of a tenant that is not suspended.
    pub const TENANT_NOT_SUSPENDED: &str = "tenant_not_suspended";
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
    /// 408: the body did not arrive within the gateway's body-read timeout.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const INTERNAL: &str = "internal";
    pub const SERVICE_UNAVAILABLE: &str = "service_unavailable";
    /// 401: a relayed check-in whose signature or certificate chain does not
    /// authenticate an appliance, or whose time is outside the accepted window.
    pub const RELAYED_REQUEST_REJECTED: &str = "relayed_request_rejected";
    /// 409: a relayed check-in that was already accepted once.
    pub const RELAYED_REQUEST_REPLAYED: &str = "relayed_request_replayed";
}
