//! The outermost layer: assigns the request id, renders every error body (with that id),
//! sets `x-request-id` on every response, counts refused identities for the audit
//! summary, and records request metrics.

use std::sync::Arc;
use std::time::Instant;

use alga_protocol::api::{ErrorBody, ErrorDetail, REQUEST_ID, error_code};
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::extract::RequestId;
use crate::App;
use crate::auth::ConnInfo;
use crate::error::PendingError;

/// The action a request refused for its identity (401/403 before any flow ran) is
/// counted under in the refusal summaries (`access.refused_summary` records, details
/// `refused_action: "access.denied"`, `method`, `route`).
pub const ACCESS_DENIED: &str = "access.denied";

#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
pub async fn request_context(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // From the fixed set (else `other`): a junk method name reaches no log line, audit
    // summary key or metric label.
    let method = crate::metrics::method_label(req.method().as_str());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let conn = req.extensions().get::<ConnInfo>().cloned();
    let span = tracing::info_span!("request", request.id = %request_id, http.route = %route, http.method = %method);
    let mut resp = next.run(req).instrument(span.clone()).await;

    let pending = resp.extensions_mut().remove::<PendingError>().or_else(|| {
        // Errors produced outside our handlers (axum's 405, a rejected extractor we
        // did not wrap) still get the stable body.
        let status = resp.status();
        (status.is_client_error() || status.is_server_error()).then(|| generic(status))
    });
    if let (Some(p), Some(conn)) = (&pending, &conn)
        && [
            error_code::UNAUTHENTICATED,
            error_code::FORBIDDEN,
            error_code::CREDENTIAL_REQUIRED,
        ]
        .contains(&p.code)
    {
        // No caller was established: counted, and recorded once per window, route,
        // error code and source network (never one record per request).
        app.refusals.count(
            ACCESS_DENIED,
            p.code,
            Some((method, route.as_str())),
            Some(conn.remote.ip()),
            time::OffsetDateTime::now_utc(),
        );
    }
    if let Some(p) = pending {
        let body = ErrorBody {
            error: ErrorDetail {
                code: p.code.to_owned(),
                message: p.message,
                request_id: request_id.clone(),
                fields: p.fields,
                tenant_id: p.tenant_id,
            },
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        *resp.body_mut() = Body::from(json);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    app.metrics
        .request(&route, method, status, started.elapsed());
    span.in_scope(|| {
        tracing::info!(
            http.status = status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        )
    });
    resp
}

fn generic(status: StatusCode) -> PendingError {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (error_code::NOT_FOUND, "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => (
            error_code::METHOD_NOT_ALLOWED,
            "method not allowed on this resource",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            error_code::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            error_code::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be application/json",
        ),
        s if s.is_server_error() => (error_code::INTERNAL, "internal error"),
        _ => (error_code::VALIDATION_FAILED, "the request is not valid"),
    };
    PendingError {
        code,
        message: message.to_owned(),
        fields: None,
        tenant_id: None,
    }
}
