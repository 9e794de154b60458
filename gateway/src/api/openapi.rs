//! The OpenAPI 3.1 document of the API (utoipa), generated from the route table below,
//! which lists every route with its caller, success and error codes, as in DESIGN §5.

use axum::Json;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
use utoipa::openapi::response::Response as OaResponse;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

/// `(method, path, caller, summary, [(status, description)])`.
type Route = (
    HttpMethod,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const ROUTES: &[Route] = &[
    (
        HttpMethod::Post,
        "/register-tenant",
        "store",
        "Create a tenant, mint its install code, presign the ISO link, queue the mail and try it once (email.status sent | queued)",
        &[
            (
                "201",
                "tenant_id, edition, install_code {code_id, expires_at}, download {url, expires_at}, email {status}",
            ),
            ("400", "validation_failed (with fields)"),
            (
                "409",
                "tenant_exists (with tenant_id) or idempotency_conflict",
            ),
            ("503", "license_service_unavailable"),
        ],
    ),
    (
        HttpMethod::Post,
        "/install-codes/reissue",
        "store",
        "Revoke unclaimed codes and mint a new one for the same tenant",
        &[
            ("201", "as /register-tenant plus revoked_code_ids"),
            ("404", "tenant_not_found"),
            ("409", "ambiguous_contact"),
        ],
    ),
    (
        HttpMethod::Post,
        "/register",
        "appliance (no client certificate)",
        "Redeem an install code",
        &[
            (
                "200",
                "tenant_id, edition, appliance_id, license, credential, check_in_url",
            ),
            ("400", "code_malformed, csr_invalid, validation_failed"),
            ("401", "code_invalid"),
            ("409", "code_already_used"),
            ("410", "code_expired, code_revoked"),
            ("429", "rate_limited (Retry-After)"),
            ("503", "license_service_unavailable"),
        ],
    ),
    (
        HttpMethod::Post,
        "/check-in",
        "appliance credential",
        "Refresh the license (and the credential near expiry)",
        &[
            ("200", "license, credential, next_check_in_after"),
            ("401", "credential_required"),
            ("403", "appliance_revoked, tenant_suspended"),
        ],
    ),
    (
        HttpMethod::Get,
        "/tenants/{tenant_id}",
        "store, auditor",
        "Tenant, edition, codes (no secrets), appliances, mail status",
        &[("200", "the tenant"), ("404", "tenant_not_found")],
    ),
    (
        HttpMethod::Post,
        "/appliances/{appliance_id}/revoke",
        "store",
        "Ban an appliance credential",
        &[
            ("200", "the revoked appliance"),
            ("404", "appliance_not_found"),
        ],
    ),
    (
        HttpMethod::Get,
        "/audit/events",
        "auditor",
        "Page through audit records (?after=&limit=)",
        &[("200", "records")],
    ),
    (
        HttpMethod::Get,
        "/audit/checkpoints",
        "auditor",
        "Page through signed checkpoints",
        &[("200", "checkpoints")],
    ),
    (
        HttpMethod::Get,
        "/audit/keys",
        "auditor",
        "The issuer's public keys (audit checkpoint keys, JWKS, CA chain) for offline verification",
        &[("200", "PublicKeys")],
    ),
    (
        HttpMethod::Get,
        "/.well-known/jwks.json",
        "anyone",
        "License verification keys",
        &[("200", "JWK Set")],
    ),
    (
        HttpMethod::Get,
        "/ca.pem",
        "anyone",
        "Appliance credential CA chain",
        &[("200", "PEM")],
    ),
    (
        HttpMethod::Get,
        "/healthz",
        "ops",
        "Liveness",
        &[("200", "ok")],
    ),
    (
        HttpMethod::Get,
        "/readyz",
        "ops",
        "Readiness: database and issuer",
        &[("200", "ready"), ("503", "service_unavailable")],
    ),
    (
        HttpMethod::Get,
        "/metrics",
        "ops",
        "Prometheus metrics",
        &[("200", "text exposition")],
    ),
];

/// The document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path, caller, summary, responses) in ROUTES {
        let mut op = OperationBuilder::new()
            .summary(Some(*summary))
            .description(Some(format!("Caller: {caller}. Every error body is {{\"error\": {{\"code\", \"message\", \"request_id\"}}}}; every response has x-request-id.")));
        for (status, desc) in *responses {
            op = op.response(*status, OaResponse::new(*desc));
        }
        paths = paths.path(*path, PathItem::new(method.clone(), op));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("alga-license gateway")
                .version(env!("CARGO_PKG_VERSION")),
        )
        .paths(paths)
        .build()
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> Response {
    Json(document()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_openapi_3_1_with_every_route() {
        let v = serde_json::to_value(super::document()).expect("serializes");
        assert_eq!(v["openapi"], "3.1.0");
        assert!(v["paths"]["/register"]["post"].is_object());
        assert!(v["paths"]["/tenants/{tenant_id}"]["get"].is_object());
    }
}
