//! The router: the issuer API's routes, their fallbacks and limits, and the span of
//! each request.

use std::sync::Arc;

use alga_policies::Policy;
use alga_protocol::issuer_api as api;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use tracing::Instrument;

use super::MAX_BODY_BYTES;
use super::auth::Client;
use super::error::ApiError;
use super::handlers::*;
use crate::config::LogOrigin;
use crate::keyring::KeyOps;
use crate::ops::Signed;
use crate::signlog::SignLog;

/// What every handler shares.
#[derive(Clone)]
pub(super) struct App<K> {
    pub(super) keys: K,
    pub(super) policy: Arc<Policy>,
    pub(super) signlog: SignLog,
    /// The transparency log's origin (`audit_log.origin`): checkpoint origin line and
    /// log key name.
    pub(super) origin: Arc<LogOrigin>,
}

impl<K> App<K> {
    /// Logs a signing operation durably, then releases its result.
    pub(super) async fn logged<T>(&self, signed: Signed<T>) -> Result<(T, u64), ApiError> {
        let op = signed.event.op;
        let logged = self.signlog.append(signed.event).await.map_err(|e| {
            tracing::error!(op = %op, error = %e, "signing log unavailable: result discarded");
            ApiError::Signlog
        })?;
        Ok((signed.value, logged.seq))
    }
}

pub(super) fn router<K: KeyOps + Clone>(app: App<K>) -> Router {
    Router::new()
        .route(api::MINT_CODE, post(mint_code::<K>))
        .route(api::DERIVE_CODE, post(derive_code::<K>))
        .route(api::VERIFY_CODE, post(verify_code::<K>))
        .route(api::SIGN_LICENSE, post(sign_license::<K>))
        .route(api::SIGN_LICENSES, post(sign_licenses::<K>))
        .route(api::SIGN_CREDENTIAL, post(sign_credential::<K>))
        .route(api::SIGN_CHECKPOINT, post(sign_checkpoint::<K>))
        .route(api::SIGN_LOG_CHECKPOINT, post(sign_log_checkpoint::<K>))
        .route(api::PUBLIC_KEYS, get(public_keys::<K>))
        .route(api::HEALTH, get(health::<K>))
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(app)
}

/// A span per request with the gateway's `x-request-id` (echoed back), when sane.
async fn request_span(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let client = req.extensions().get::<Client>().map(|c| c.uri.clone());
    let span = tracing::info_span!(
        "request",
        request.id = id.as_deref().unwrap_or("-"),
        http.method = %req.method(),
        http.path = %req.uri().path(),
        client.uri = client.as_deref().unwrap_or("-"),
    );
    let mut response = next.run(req).instrument(span).await;
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use alga_protocol::signlog::file_name;
    use http_body_util::BodyExt;

    use alga_protocol::issuer_api::{
        IssuerErrorBody, IssuerErrorCode, LicenseResult, PublicKeys, SignLicensesResponse,
        SignedLogCheckpoint,
    };
    use time::OffsetDateTime;
    use tower::ServiceExt;

    use super::*;
    use crate::ops::software_keys::{SoftwareKeys, test_policy};
    use crate::signlog::SignlogOptions;

    #[allow(
        clippy::disallowed_methods,
        reason = "reads the clock at an edge and passes `now` down"
    )]
    fn app(log: SignLog) -> Router {
        router(App {
            keys: SoftwareKeys::new(OffsetDateTime::now_utc()),
            policy: Arc::new(test_policy()),
            signlog: log,
            origin: Arc::new(LogOrigin::new(ORIGIN).expect("origin")),
        })
    }

    const ORIGIN: &str = "alga.test/audit-log";

    async fn call(router: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("x-request-id", "req-1")
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        let response = router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        assert_eq!(
            response.headers().get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"req-1"[..])
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The signing log's records in `dir`.
    fn logged(dir: &tempfile::TempDir) -> Vec<alga_protocol::signlog::SignlogRecord> {
        crate::signlog::read_dir(dir.path()).expect("log").records
    }

    const LICENSE: &str = r#"{"tenant_id":"00000000-0000-0000-0000-000000000001","appliance_id":"00000000-0000-0000-0000-000000000002","edition":"pro"}"#;

    /// A log that takes one record and fails the next: one record per file, and the
    /// second file's name taken by a directory. Keep the directory alive.
    fn log_failing_at_the_second_record() -> (tempfile::TempDir, SignLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SignLog::open(dir.path(), SignlogOptions { max_file_bytes: 1 }).expect("log");
        std::fs::create_dir(dir.path().join(file_name(2))).expect("mkdir");
        (dir, log)
    }

    #[tokio::test]
    async fn no_signature_leaves_when_the_log_cannot_take_it() {
        // The second append fails.
        let (_dir, log) = log_failing_at_the_second_record();
        let router = app(log.clone());
        let (status, body) = call(&router, "POST", api::SIGN_LICENSE, LICENSE).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(&router, "POST", api::SIGN_LICENSE, LICENSE).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.contains("eyJ"), "no token in {body}");
        let parsed: IssuerErrorBody = serde_json::from_str(&body).expect("error body");
        assert_eq!(parsed.error.code, IssuerErrorCode::HsmUnavailable);
        // Fail closed from then on, health included.
        let (status, _) = call(&router, "POST", api::SIGN_LICENSE, LICENSE).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = call(&router, "GET", api::HEALTH, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!log.is_healthy());
    }

    /// A batch body of `n` copies of [`LICENSE`].
    fn batch(n: usize) -> String {
        format!(r#"{{"licenses":[{}]}}"#, vec![LICENSE; n].join(","))
    }

    #[tokio::test]
    async fn a_batch_releases_no_license_when_the_log_cannot_take_one() {
        // The first license of the batch is logged, the second cannot be.
        let (dir, log) = log_failing_at_the_second_record();
        let router = app(log.clone());
        let (status, body) = call(&router, "POST", api::SIGN_LICENSES, &batch(3)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(!body.contains("eyJ"), "no token in {body}");
        let parsed: IssuerErrorBody = serde_json::from_str(&body).expect("error body");
        assert_eq!(parsed.error.code, IssuerErrorCode::HsmUnavailable);
        assert_eq!(
            parsed.error.message,
            "the signing log cannot be written; retry later"
        );
        assert!(!log.is_healthy());
        // The license logged before the failure is in the log, undelivered.
        std::fs::remove_dir(dir.path().join(file_name(2))).expect("rmdir");
        let records = logged(&dir);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].op, alga_protocol::signlog::SignOp::License);
        // Fail closed from then on.
        let (status, body) = call(&router, "POST", api::SIGN_LICENSES, &batch(1)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    #[tokio::test]
    async fn a_batch_item_fails_with_the_single_routes_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = app(SignLog::open(dir.path(), SignlogOptions::default()).expect("log"));
        let essentials = LICENSE.replace("pro", "essentials");
        let long = LICENSE.replace('}', r#","lifetime_seconds":315360000}"#);
        let zero = LICENSE.replace('}', r#","lifetime_seconds":0}"#);
        let items = [LICENSE, &essentials, &long, &zero, LICENSE];
        let (status, body) = call(
            &router,
            "POST",
            api::SIGN_LICENSES,
            &format!(r#"{{"licenses":[{}]}}"#, items.join(",")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let parsed: SignLicensesResponse = serde_json::from_str(&body).expect("batch body");
        assert_eq!(parsed.results.len(), items.len());
        for (item, result) in items.iter().zip(&parsed.results) {
            let (status, single) = call(&router, "POST", api::SIGN_LICENSE, item).await;
            match result {
                LicenseResult::License(_) => assert_eq!(status, StatusCode::OK, "{single}"),
                LicenseResult::Error(detail) => {
                    let single: IssuerErrorBody = serde_json::from_str(&single).expect("error");
                    assert_eq!(detail.code, single.error.code, "{item}");
                    assert_eq!(detail.message, single.error.message, "{item}");
                }
            }
        }
        let codes: Vec<Option<IssuerErrorCode>> = parsed
            .results
            .iter()
            .map(|r| match r {
                LicenseResult::License(_) => None,
                LicenseResult::Error(e) => Some(e.code),
            })
            .collect();
        assert_eq!(
            codes,
            [
                None,
                Some(IssuerErrorCode::EditionNotPaid),
                Some(IssuerErrorCode::BeyondPolicy),
                Some(IssuerErrorCode::BadRequest),
                None
            ]
        );
        // Two from the batch, two from the single route.
        assert_eq!(logged(&dir).len(), 4);
    }

    #[tokio::test]
    async fn a_log_checkpoint_is_a_note_the_published_key_verifies_and_is_logged() {
        use base64::Engine;
        let dir = tempfile::tempdir().expect("tempdir");
        let router = app(SignLog::open(dir.path(), SignlogOptions::default()).expect("log"));
        let root = base64::engine::general_purpose::STANDARD.encode([0xabu8; 32]);
        let body = format!(r#"{{"size":42,"root_hash":"{root}"}}"#);
        let (status, text) = call(&router, "POST", api::SIGN_LOG_CHECKPOINT, &body).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let signed: SignedLogCheckpoint = serde_json::from_str(&text).expect("body");
        assert_eq!(signed.kid, "alga-log-v1");
        assert!(
            signed
                .note
                .starts_with(&format!("{ORIGIN}\n42\n{root}\n\n\u{2014} {ORIGIN} ")),
            "{}",
            signed.note
        );
        let (status, text) = call(&router, "GET", api::PUBLIC_KEYS, "").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let keys: PublicKeys = serde_json::from_str(&text).expect("keys");
        assert_eq!(keys.log_keys.len(), 1);
        assert_eq!(keys.log_keys[0].kid, signed.kid);
        let verifier = signed_note::StandardVerifier::new(&keys.log_keys[0].vkey).expect("vkey");
        let known = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        signed_note::Note::from_bytes(signed.note.as_bytes())
            .expect("a note")
            .verify(&known)
            .expect("verifies with the published key");

        for bad in [
            r#"{"size":42,"root_hash":"AAAA"}"#.to_owned(),
            format!(r#"{{"size":42,"root_hash":"{}"}}"#, "ab".repeat(32)),
            format!(r#"{{"size":-1,"root_hash":"{root}"}}"#),
            format!(r#"{{"size":42,"root_hash":"{root}","origin":"evil"}}"#),
            r#"{"size":42}"#.to_owned(),
        ] {
            let (status, text) = call(&router, "POST", api::SIGN_LOG_CHECKPOINT, &bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
            let parsed: IssuerErrorBody = serde_json::from_str(&text).expect("error body");
            assert_eq!(parsed.error.code, IssuerErrorCode::BadRequest, "{bad}");
        }
        let records = logged(&dir);
        assert_eq!(records.len(), 1, "refusals sign nothing");
        assert_eq!(records[0].op, alga_protocol::signlog::SignOp::LogCheckpoint);
        assert_eq!(records[0].kid, "alga-log-v1");
        assert_eq!(records[0].ids.sequence, Some(42));
        assert_eq!(records[0].ids.head_hash, Some("ab".repeat(32)));
    }

    #[tokio::test]
    async fn requests_are_refused_with_the_issuers_error_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = app(SignLog::open(dir.path(), SignlogOptions::default()).expect("log"));
        let unknown_field = LICENSE.replace('{', r#"{"admin":true,"#);
        let huge = format!(r#"{{"pad":"{}"}}"#, "a".repeat(MAX_BODY_BYTES));
        let essentials = LICENSE.replace("pro", "essentials");
        let empty_batch = batch(0);
        let oversized_batch = batch(api::MAX_LICENSE_BATCH + 1);
        let batch_unknown_field = batch(1).replace('{', r#"{"admin":true,"#);
        let item_unknown_field = format!(r#"{{"licenses":[{unknown_field}]}}"#);
        let cases: Vec<(&str, &str, &str, StatusCode, IssuerErrorCode)> = vec![
            (
                "POST",
                api::SIGN_LICENSE,
                &unknown_field,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSE,
                "{",
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSE,
                &huge,
                StatusCode::PAYLOAD_TOO_LARGE,
                IssuerErrorCode::BadRequest,
            ),
            (
                "GET",
                api::SIGN_LICENSE,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                IssuerErrorCode::BadRequest,
            ),
            (
                "GET",
                "/v1/elsewhere",
                "",
                StatusCode::NOT_FOUND,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSE,
                &essentials,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::EditionNotPaid,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &empty_batch,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &oversized_batch,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &batch_unknown_field,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &item_unknown_field,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                LICENSE,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "GET",
                api::SIGN_LICENSES,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                IssuerErrorCode::BadRequest,
            ),
        ];
        for (method, path, body, status, code) in cases {
            let (got, text) = call(&router, method, path, body).await;
            assert_eq!(got, status, "{method} {path}: {text}");
            let parsed: IssuerErrorBody = serde_json::from_str(&text).expect("error body");
            assert_eq!(parsed.error.code, code, "{method} {path}");
        }
        assert_eq!(logged(&dir).len(), 0);
    }

    #[tokio::test]
    async fn the_forbidden_router_answers_403_everywhere() {
        let router: Router = Router::new().fallback(forbidden);
        for (method, path) in [
            ("POST", api::SIGN_LICENSE),
            ("POST", api::SIGN_LICENSES),
            ("POST", api::SIGN_LOG_CHECKPOINT),
            ("GET", api::HEALTH),
            ("GET", "/x"),
        ] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .expect("request");
            let response = router.clone().oneshot(req).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
    }
}
