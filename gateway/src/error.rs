//! The gateway's two error types: [`Error`], every failure of the library below the
//! HTTP edge, and [`ApiError`], every failure a client can see, mapped to a stable code
//! of CONTRACT.md §5 and an HTTP status.
//!
//! Error policy (as crates.io writes at the top of its error module): one `thiserror`
//! enum for the library ([`Error`]; the names `db::DbError` and `audit::AuditError`
//! are it under the names their modules use), [`ApiError`] at the HTTP edge, `anyhow`
//! only in `main.rs` (start-up's failures are [`Error`]s too). The issuer client keeps its own
//! [`IssuerError`](crate::issuer_client::IssuerError): one answer of a coalesced
//! license batch is cloned to every request waiting on it, and [`Error`] cannot be
//! `Clone` (it holds the database driver's errors); flows map it straight to an
//! [`ApiError`] (`flows::issuer_error`). A 5xx response never carries internal detail:
//! the detail is logged here, once, with the request's span, and the body says only
//! "internal".
//!
//! The body is rendered by the request-id middleware (`api::middleware`), which owns
//! the request id: [`ApiError::into_response`] leaves a [`PendingError`] in the
//! response's extensions and the middleware turns it into
//! `{"error": {"code", "message", "request_id", …}}`.

use std::collections::BTreeMap;
use std::time::Duration;

use alga_protocol::api::error_code as code;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

/// Every failure of the gateway library below the HTTP edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No database connection could be had from the pool (database down or pool
    /// exhausted).
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A database statement failed.
    #[error("database: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A row held a value the schema's CHECK constraints should have excluded, or a
    /// stored value that does not parse.
    #[error("unexpected stored value: {0}")]
    Corrupt(String),
    /// The database connection settings are wrong.
    #[error("database configuration: {0}")]
    DbConfig(String),
    /// An audit record is invalid (a name, a length, the secret guard).
    #[error("audit record: {0}")]
    AuditRecord(String),
    /// An audit record could not be appended in the database.
    #[error("audit append: {0}")]
    AuditAppend(String),
    /// The audit log could not be read (the event feed's scan).
    #[error("audit log: {0}")]
    AuditLog(#[from] alga_audit::AuditError),
    /// An event feed cursor is past the newest chained record: it was not written by
    /// this log (or the database was restored from an older backup).
    #[error("the cursor is beyond the end of the feed")]
    FeedBeyondHead,
    /// A file of `[tls]` could not be read or holds no usable certificate or key.
    #[error("{path}: {message}")]
    TlsFile { path: String, message: String },
    /// The TLS configuration could not be built from those files.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// A file the configuration names could not be read (a password file).
    #[error(transparent)]
    ConfigFile(#[from] alga_protocol::config_file::ConfigError),
    /// A section of the configuration cannot work (`[[witnesses]]`, `[[webhooks]]`).
    #[error("configuration: {0}")]
    Config(String),
    /// The issuer client could not be set up from `[issuer]`.
    #[error("issuer client: {0}")]
    IssuerClient(#[source] crate::issuer_client::IssuerError),
    /// The S3 presigner or the SMTP mailer could not be set up from `[s3]` or `[smtp]`.
    #[error("{section}: {source}")]
    Delivery {
        /// `s3` or `smtp`.
        section: &'static str,
        #[source]
        source: alga_delivery::Error,
    },
    /// A listening socket could not be bound or set up.
    #[error("{context}: {source}")]
    Listener {
        /// What was being done (`bind 127.0.0.1:8443`).
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A listener error: `context` says what was being done.
    pub(crate) fn listener(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Listener { context, source }
    }
}

/// The server's message and SQLSTATE when there is one (tokio-postgres' Display says
/// only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

impl Error {
    /// Whether this is a unique-constraint violation named `constraint`.
    pub fn is_unique_violation(&self, constraint: &str) -> bool {
        match self {
            Error::Query(e) => e.as_db_error().is_some_and(|d| {
                d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    && d.constraint() == Some(constraint)
            }),
            _ => false,
        }
    }
}

/// Every error a client can receive.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Input that breaks the schema or a rule; `fields` maps a field path to its problem.
    #[error("the request is not valid")]
    Validation(BTreeMap<String, String>),
    /// The body is not JSON or not the expected shape (unknown field, wrong type).
    #[error("{0}")]
    BadJson(String),
    /// The body is larger than the limit.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// The body did not arrive within `[limits] body_read_timeout_secs`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The body is not `application/json`.
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// No client certificate where one is required.
    #[error("a client certificate is required")]
    Unauthenticated,
    /// `/check-in` without an appliance credential.
    #[error("an appliance credential is required")]
    CredentialRequired,
    /// A certificate whose identity has no right to this route.
    #[error("this identity may not call this route")]
    Forbidden,
    /// No such route.
    #[error("no such resource")]
    NotFound,
    /// Not in the transparency log (yet): a tile or record beyond the newest signed
    /// checkpoint, or no checkpoint at all. The message says which; it holds nothing
    /// secret (sizes and tile paths).
    #[error("{0}")]
    NotInLog(String),
    /// Route exists, method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The install code's check characters do not match, or it has the wrong shape.
    #[error("{0}")]
    CodeMalformed(String),
    /// Unknown code, or one that does not verify: one body whichever.
    #[error("the install code is not valid")]
    CodeInvalid,
    /// A verified code past its expiry.
    #[error("the install code has expired: ask for a new one")]
    CodeExpired,
    /// A verified code revoked by a reissue.
    #[error("the install code was replaced by a newer one: use the code from the latest email")]
    CodeRevoked,
    /// A verified code consumed by another appliance (or longer ago than the retry window).
    #[error("the install code was already used: ask for a new one to reinstall")]
    CodeAlreadyUsed,
    /// The CSR is not a PEM PKCS#10 request with a valid self-signature and an accepted key.
    #[error("{0}")]
    CsrInvalid(String),
    /// Too many attempts; retry after the given delay.
    #[error("too many attempts: retry later")]
    RateLimited(Duration),
    /// The issuer is unreachable or failed; nothing was changed.
    #[error("the license service is unavailable: retry later")]
    LicenseServiceUnavailable,
    /// No tenant with that id or contact email.
    #[error("no such tenant")]
    TenantNotFound,
    /// The contact email belongs to several tenants: use the tenant id.
    #[error("the contact email matches several tenants: reissue by tenant_id")]
    AmbiguousContact,
    /// The Idempotency-Key was used with another body.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyConflict,
    /// A tenant with this company and contact email exists.
    #[error("a tenant with this company and contact email already exists")]
    TenantExists(Uuid),
    /// No such appliance.
    #[error("no such appliance")]
    ApplianceNotFound,
    /// The appliance's credential was revoked.
    #[error("this appliance has been revoked")]
    ApplianceRevoked,
    /// The appliance's tenant is suspended (check-in, redeem, reissue).
    #[error("this tenant is suspended")]
    TenantSuspended,
    /// A rebuild's redeem replaced this appliance: it gets no further license.
    #[error("this appliance was replaced by a rebuild: it is no longer licensed")]
    ApplianceReplaced,
    /// Check-in with a certificate of the appliance that is not its current credential
    /// (nor the one a rotation replaced, within the overlap and before the new one was
    /// used): a newer one was issued.
    #[error(
        "this certificate is no longer the appliance's credential: check in with the newest one"
    )]
    CredentialSuperseded,
    /// The tenant's edition allows no more active appliances; nothing was consumed.
    #[error(
        "the tenant has {active} active appliance(s) and its edition allows {max}: replace or revoke one first"
    )]
    SeatLimitReached { active: u32, max: u32 },
    /// A reissue names an appliance that is no longer active.
    #[error("the appliance to replace is {state}, not active")]
    ApplianceNotActive { state: &'static str },
    /// A reissue for a tenant with several active appliances names none.
    #[error(
        "the tenant has {active} active appliances: name the one to replace (replaces_appliance_id) or add one (add_appliance: true)"
    )]
    ReplacementAmbiguous { active: u32 },
    /// Suspend of a suspended tenant.
    #[error("the tenant is already suspended")]
    TenantAlreadySuspended,
    /// Resume of a tenant that is not suspended.
    #[error("the tenant is not suspended")]
    TenantNotSuspended,
    /// A relayed check-in that does not authenticate an appliance (signature,
    /// certificate chain) or is too old or too far in the future; the message says
    /// which (nothing secret).
    #[error("the relayed check-in is refused: {0}")]
    RelayedRejected(&'static str),
    /// A relayed check-in that was already accepted once.
    #[error("this relayed check-in was already accepted once: make a new request")]
    RelayedReplayed,
    /// A dependency (database, issuer keys) is not ready.
    #[error("the service is temporarily unavailable")]
    ServiceUnavailable,
    /// Anything else. The string is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// `validation_failed` on one field: `field` (a path such as `appliance.version`,
    /// or a header or query name) and what is wrong with it.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Validation(BTreeMap::from([(field.into(), message.into())]))
    }

    /// Wraps an internal failure; its detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(detail.to_string())
    }

    /// The stable code of CONTRACT.md §5.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) | ApiError::BadJson(_) => code::VALIDATION_FAILED,
            ApiError::PayloadTooLarge => code::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => code::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => code::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthenticated => code::UNAUTHENTICATED,
            ApiError::CredentialRequired => code::CREDENTIAL_REQUIRED,
            ApiError::Forbidden => code::FORBIDDEN,
            ApiError::NotFound | ApiError::NotInLog(_) => code::NOT_FOUND,
            ApiError::MethodNotAllowed => code::METHOD_NOT_ALLOWED,
            ApiError::CodeMalformed(_) => code::CODE_MALFORMED,
            ApiError::CodeInvalid => code::CODE_INVALID,
            ApiError::CodeExpired => code::CODE_EXPIRED,
            ApiError::CodeRevoked => code::CODE_REVOKED,
            ApiError::CodeAlreadyUsed => code::CODE_ALREADY_USED,
            ApiError::CsrInvalid(_) => code::CSR_INVALID,
            ApiError::RateLimited(_) => code::RATE_LIMITED,
            ApiError::LicenseServiceUnavailable => code::LICENSE_SERVICE_UNAVAILABLE,
            ApiError::TenantNotFound => code::TENANT_NOT_FOUND,
            ApiError::AmbiguousContact => code::AMBIGUOUS_CONTACT,
            ApiError::IdempotencyConflict => code::IDEMPOTENCY_CONFLICT,
            ApiError::TenantExists(_) => code::TENANT_EXISTS,
            ApiError::ApplianceNotFound => code::APPLIANCE_NOT_FOUND,
            ApiError::ApplianceRevoked => code::APPLIANCE_REVOKED,
            ApiError::TenantSuspended => code::TENANT_SUSPENDED,
            ApiError::ApplianceReplaced => code::APPLIANCE_REPLACED,
            ApiError::CredentialSuperseded => code::CREDENTIAL_SUPERSEDED,
            ApiError::SeatLimitReached { .. } => code::SEAT_LIMIT_REACHED,
            ApiError::ApplianceNotActive { .. } => code::APPLIANCE_NOT_ACTIVE,
            ApiError::ReplacementAmbiguous { .. } => code::REPLACEMENT_AMBIGUOUS,
            ApiError::TenantAlreadySuspended => code::TENANT_ALREADY_SUSPENDED,
            ApiError::TenantNotSuspended => code::TENANT_NOT_SUSPENDED,
            ApiError::ServiceUnavailable => code::SERVICE_UNAVAILABLE,
            ApiError::RelayedRejected(_) => code::RELAYED_REQUEST_REJECTED,
            ApiError::RelayedReplayed => code::RELAYED_REQUEST_REPLAYED,
            ApiError::Internal(_) => code::INTERNAL,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_)
            | ApiError::BadJson(_)
            | ApiError::CodeMalformed(_)
            | ApiError::CsrInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthenticated
            | ApiError::CredentialRequired
            | ApiError::CodeInvalid
            | ApiError::RelayedRejected(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden
            | ApiError::ApplianceRevoked
            | ApiError::ApplianceReplaced
            | ApiError::CredentialSuperseded
            | ApiError::TenantSuspended => StatusCode::FORBIDDEN,
            ApiError::NotFound
            | ApiError::NotInLog(_)
            | ApiError::TenantNotFound
            | ApiError::ApplianceNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::CodeExpired | ApiError::CodeRevoked => StatusCode::GONE,
            ApiError::CodeAlreadyUsed
            | ApiError::AmbiguousContact
            | ApiError::IdempotencyConflict
            | ApiError::TenantExists(_)
            | ApiError::SeatLimitReached { .. }
            | ApiError::ApplianceNotActive { .. }
            | ApiError::ReplacementAmbiguous { .. }
            | ApiError::TenantAlreadySuspended
            | ApiError::TenantNotSuspended
            | ApiError::RelayedReplayed => StatusCode::CONFLICT,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::LicenseServiceUnavailable | ApiError::ServiceUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What the middleware needs to render an error body (it adds the request id).
#[derive(Debug, Clone)]
pub struct PendingError {
    pub code: &'static str,
    pub message: String,
    pub fields: Option<BTreeMap<String, String>>,
    pub tenant_id: Option<Uuid>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error.detail = %detail, "internal error");
        }
        let pending = PendingError {
            code: self.code(),
            message: self.to_string(),
            fields: match &self {
                ApiError::Validation(f) => Some(f.clone()),
                _ => None,
            },
            tenant_id: match &self {
                ApiError::TenantExists(t) => Some(*t),
                _ => None,
            },
        };
        let mut resp = status.into_response();
        if let ApiError::RateLimited(wait) = &self {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp.extensions_mut().insert(pending);
        resp
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::Pool(_) => {
                tracing::error!(error.detail = %e, "database unavailable");
                ApiError::ServiceUnavailable
            }
            Error::AuditRecord(_) | Error::AuditAppend(_) => {
                ApiError::internal(format!("audit append failed (fail-closed): {e}"))
            }
            other => ApiError::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_code_table() {
        let table: &[(ApiError, u16, &str)] = &[
            (ApiError::CodeMalformed("x".into()), 400, "code_malformed"),
            (ApiError::CodeInvalid, 401, "code_invalid"),
            (ApiError::CodeExpired, 410, "code_expired"),
            (ApiError::CodeRevoked, 410, "code_revoked"),
            (ApiError::CodeAlreadyUsed, 409, "code_already_used"),
            (ApiError::CsrInvalid("x".into()), 400, "csr_invalid"),
            (
                ApiError::RateLimited(Duration::from_secs(3)),
                429,
                "rate_limited",
            ),
            (
                ApiError::LicenseServiceUnavailable,
                503,
                "license_service_unavailable",
            ),
            (ApiError::TenantNotFound, 404, "tenant_not_found"),
            (ApiError::AmbiguousContact, 409, "ambiguous_contact"),
            (ApiError::IdempotencyConflict, 409, "idempotency_conflict"),
            (ApiError::CredentialRequired, 401, "credential_required"),
            (ApiError::ApplianceRevoked, 403, "appliance_revoked"),
            (ApiError::TenantSuspended, 403, "tenant_suspended"),
            (ApiError::ApplianceReplaced, 403, "appliance_replaced"),
            (ApiError::CredentialSuperseded, 403, "credential_superseded"),
            (
                ApiError::SeatLimitReached { active: 3, max: 3 },
                409,
                "seat_limit_reached",
            ),
            (
                ApiError::ApplianceNotActive { state: "revoked" },
                409,
                "appliance_not_active",
            ),
            (
                ApiError::ReplacementAmbiguous { active: 2 },
                409,
                "replacement_ambiguous",
            ),
            (
                ApiError::TenantAlreadySuspended,
                409,
                "tenant_already_suspended",
            ),
            (ApiError::TenantNotSuspended, 409, "tenant_not_suspended"),
            (ApiError::TenantExists(Uuid::nil()), 409, "tenant_exists"),
            (ApiError::Unauthenticated, 401, "unauthenticated"),
            (ApiError::RequestTimeout, 408, "request_timeout"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::NotInLog("beyond".into()), 404, "not_found"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (
                ApiError::RelayedRejected("too old"),
                401,
                "relayed_request_rejected",
            ),
            (ApiError::RelayedReplayed, 409, "relayed_request_replayed"),
            (ApiError::Internal("secret detail".into()), 500, "internal"),
        ];
        for (e, status, c) in table {
            assert_eq!(e.status().as_u16(), *status, "{e:?}");
            assert_eq!(e.code(), *c, "{e:?}");
        }
        assert_eq!(
            ApiError::Internal("secret detail".into()).to_string(),
            "internal error"
        );
    }
}
