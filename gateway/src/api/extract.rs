//! Extractors: the caller's identity (per route), the request id, and JSON bodies with
//! content-type, size and unknown-field checks mapped to the stable errors.

use std::sync::Arc;

use alga_policies::Role;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::App;
use crate::audit::Ctx;
use crate::auth::{ClientIdentity, ConnInfo};
use crate::error::ApiError;

/// The request id the middleware assigned.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The connection's facts and the request id: everything a flow's [`Ctx`] needs.
#[derive(Debug, Clone)]
pub struct Peer {
    pub conn: ConnInfo,
    pub request_id: String,
}

impl Peer {
    /// The flow context, with `now` taken here.
    #[allow(
        clippy::disallowed_methods,
        reason = "reads the clock at an edge and passes `now` down"
    )]
    pub fn ctx(&self, app: &App) -> Ctx {
        Ctx {
            request_id: self.request_id.clone(),
            source: Some(self.conn.remote.ip()),
            actor_role: self.conn.identity.actor_role(),
            actor_id: self.conn.identity.actor_id(&app.policy),
            now: time::OffsetDateTime::now_utc(),
        }
    }

    pub fn identity(&self) -> &ClientIdentity {
        &self.conn.identity
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, ApiError> {
        let conn = parts
            .extensions
            .get::<ConnInfo>()
            .cloned()
            .ok_or_else(|| ApiError::internal("request without connection info"))?;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        Ok(Peer { conn, request_id })
    }
}

macro_rules! service_role_extractor {
    ($name:ident, $doc:literal, [$($role:expr),+]) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub Peer);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<$name, ApiError> {
                let peer = Peer::from_request_parts(parts, s).await?;
                peer.identity().require_service(&[$($role),+])?;
                Ok($name(peer))
            }
        }
    };
}

service_role_extractor!(
    StoreCaller,
    "A caller with role `store` (401 without certificate, 403 otherwise).",
    [Role::Store]
);
service_role_extractor!(
    AuditorCaller,
    "A caller with role `auditor`.",
    [Role::Auditor]
);
service_role_extractor!(
    ReaderCaller,
    "A caller with role `store` or `auditor`.",
    [Role::Store, Role::Auditor]
);

/// An appliance presenting its credential (401 `credential_required` without one).
#[derive(Debug, Clone)]
pub struct ApplianceCaller(pub Peer);

impl<S: Send + Sync> FromRequestParts<S> for ApplianceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<ApplianceCaller, ApiError> {
        let peer = Peer::from_request_parts(parts, s).await?;
        peer.identity().require_appliance()?;
        Ok(ApplianceCaller(peer))
    }
}

/// A JSON body: `application/json`, at most [`super::BODY_LIMIT`] bytes, no unknown
/// fields (the wire types deny them). The raw bytes are kept (idempotency hashing).
#[derive(Debug)]
pub struct ApiJson<T> {
    pub value: T,
    pub raw: Bytes,
}

/// Whether the request says its body is `application/json` (parameters such as
/// `charset` allowed, the media type itself exact).
pub(crate) fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<ApiJson<T>, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let raw = axum::body::to_bytes(req.into_body(), super::BODY_LIMIT)
            .await
            .map_err(body_error)?;
        let value = serde_json::from_slice(&raw).map_err(json_error)?;
        Ok(ApiJson { value, raw })
    }
}

/// A body that could not be read: cut by the body-read timeout (408), else over the
/// size limit (413).
pub fn body_error(e: axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<crate::server::BodyTimeout>() {
            return ApiError::RequestTimeout;
        }
        source = s.source();
    }
    ApiError::PayloadTooLarge
}

/// A serde error as `validation_failed` with a `fields` entry naming the field.
pub fn json_error(e: serde_json::Error) -> ApiError {
    let msg = e.to_string();
    let between_backticks = |s: &str| s.split('`').nth(1).map(str::to_owned);
    if msg.starts_with("unknown field") {
        let name = between_backticks(&msg).unwrap_or_else(|| "body".into());
        ApiError::field(name, "unknown field")
    } else if msg.starts_with("missing field") {
        let name = between_backticks(&msg).unwrap_or_else(|| "body".into());
        ApiError::field(name, "missing")
    } else {
        // Type errors and syntax errors: the message has a line/column, never input.
        let short = msg.split(" at line").next().unwrap_or(&msg).to_owned();
        ApiError::field("body", short)
    }
}

/// The shared state, for handlers that need nothing else.
pub type AppState = axum::extract::State<Arc<App>>;
