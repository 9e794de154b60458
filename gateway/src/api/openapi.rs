//! The OpenAPI 3.1 document of the API (utoipa), generated from the route table below,
//! which lists every route with its caller, success and error codes, as in CONTRACT.md §5,
//! and from [`input`], which describes each route's path and query parameters, headers
//! and JSON request body (the `protocol::api` types and the gateway's own validation
//! bounds), so that clients and API fuzzers (`scripts/schemathesis.sh`) build real
//! requests.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter, PathItem, PathsBuilder};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::response::Response as OaResponse;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

use super::extract::AppState;
use crate::flows::validate::{MAX_EMAIL_LEN, MAX_NAME_CHARS};

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
        "Mint a new code for the same tenant and revoke the unclaimed codes it supersedes. The code names the appliance its redeem retires (replaces_appliance_id; without it, the tenant's only active appliance, or none when it has none); add_appliance: true adds one instead",
        &[
            (
                "201",
                "as /register-tenant plus revoked_code_ids and replaces_appliance_id (uuid or null)",
            ),
            (
                "400",
                "validation_failed (both replaces_appliance_id and add_appliance)",
            ),
            ("403", "tenant_suspended"),
            (
                "404",
                "tenant_not_found, appliance_not_found (not an appliance of this tenant)",
            ),
            (
                "409",
                "ambiguous_contact, appliance_not_active (replaced or revoked), replacement_ambiguous (several active appliances), seat_limit_reached (add_appliance with every seat taken)",
            ),
            ("503", "license_service_unavailable"),
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
            ("403", "tenant_suspended (the code is not consumed)"),
            (
                "409",
                "code_already_used, seat_limit_reached (the edition's max_appliances active appliances; the code is not consumed)",
            ),
            ("410", "code_expired, code_revoked"),
            ("429", "rate_limited (Retry-After)"),
            ("503", "license_service_unavailable"),
        ],
    ),
    (
        HttpMethod::Post,
        "/check-in",
        "appliance credential",
        "Refresh the license (and the credential near expiry); license is null when the tenant's edition has none. Only the appliance's current credential is accepted, and after a rotation the replaced one until the new one is first used or the policy's credentials.rotation_overlap ends",
        &[
            (
                "200",
                "edition, license (null: the edition has no license), credential, next_check_in_after",
            ),
            ("401", "credential_required"),
            (
                "403",
                "credential_superseded (the certificate is not the appliance's current credential: a rotation or a redeem retry issued a newer one; nothing is signed), appliance_revoked, appliance_replaced, tenant_suspended",
            ),
            (
                "503",
                "license_service_unavailable (the issuer is down, or refuses to sign until its appliance CA is rotated)",
            ),
        ],
    ),
    (
        HttpMethod::Post,
        "/check-in/relayed",
        "relay of an air-gapped appliance (no client certificate; the appliance's signature)",
        "An air-gapped appliance's check-in, submitted by a relay: the body is the appliance's signed request file (alga-offline-check-in-request/v1). The signed payload's certificate chain must verify against the appliance CAs trusted for mTLS, the signature with that certificate's key, the payload be at most 7 days old, and never accepted before; then it is the appliance's /check-in, with the same refusals",
        &[
            (
                "200",
                "as /check-in: edition, license (null: the edition has no license), credential, next_check_in_after",
            ),
            ("400", "validation_failed (format)"),
            (
                "401",
                "relayed_request_rejected (the certificate chain or the signature does not authenticate an appliance, or the request is older than 7 days or made in the future)",
            ),
            (
                "403",
                "credential_superseded, appliance_revoked, appliance_replaced, tenant_suspended",
            ),
            (
                "409",
                "relayed_request_replayed (this request was accepted before: make a new one)",
            ),
            ("503", "license_service_unavailable"),
        ],
    ),
    (
        HttpMethod::Get,
        "/tenants/{tenant_id}",
        "store, auditor",
        "Tenant, status, edition and seats, codes (no secrets), appliances with state and health, mail status",
        &[("200", "the tenant"), ("404", "tenant_not_found")],
    ),
    (
        HttpMethod::Put,
        "/tenants/{tenant_id}/entitlement",
        "store",
        "Move the tenant to another edition: the next check-in's license carries it (none for an edition without a license); unclaimed codes of the old edition are revoked",
        &[
            (
                "200",
                "tenant_id, edition, previous_edition, changed, revoked_code_ids, active_appliances, max_appliances",
            ),
            ("400", "validation_failed (unknown edition)"),
            ("404", "tenant_not_found"),
            (
                "409",
                "seat_limit_reached (more active appliances than the new edition allows)",
            ),
        ],
    ),
    (
        HttpMethod::Post,
        "/tenants/{tenant_id}/suspend",
        "store",
        "Suspend the tenant: its check-ins, redeems and reissues get 403 tenant_suspended",
        &[
            ("200", "tenant_id, status, suspended_at"),
            ("404", "tenant_not_found"),
            ("409", "tenant_already_suspended"),
        ],
    ),
    (
        HttpMethod::Post,
        "/tenants/{tenant_id}/resume",
        "store",
        "Resume a suspended tenant",
        &[
            ("200", "tenant_id, status, suspended_at"),
            ("404", "tenant_not_found"),
            ("409", "tenant_not_suspended"),
        ],
    ),
    (
        HttpMethod::Get,
        "/appliances",
        "store, auditor",
        "Appliances in id order, with state and health; ?health= keeps the active appliances of paid editions in that health",
        &[("200", "appliances, next"), ("400", "validation_failed")],
    ),
    (
        HttpMethod::Get,
        "/events",
        "store",
        "The event feed: what happened to tenants, codes and appliances, in the order of the sequenced audit log (an event appears once the audit sequencer has chained its record, normally within 100 ms of the commit; a tenant's changes in the order they took effect). Pass the page's next as ?after= to continue; pages never skip or repeat an event, however many gateways write and in whatever order transactions commit; a page with no events whose next is the after sent means nothing new yet. Types: tenant.registered {code_id, edition}, code.issued {code_id, expires_at, mail, replaces_appliance_id?}, code.redeemed {code_id, edition, replaced_appliance_id?}, appliance.replaced {replaced_by, code_id}, appliance.revoked {reason?}, appliance.overdue {edition, last_seen_at}, entitlement.changed {from, to, revoked}, tenant.suspended {reason?}, tenant.resumed {}, mail.failed {mail_id, code_id, kind, attempt}. Webhooks deliver the same events, one per POST, signed (see webhooks.event)",
        &[
            (
                "200",
                "events [{id, type, at, tenant_id, appliance_id, data}], next",
            ),
            (
                "400",
                "validation_failed (fields.after: not a cursor of this feed, or beyond its end; fields.limit)",
            ),
        ],
    ),
    (
        HttpMethod::Post,
        "/appliances/{appliance_id}/revoke",
        "store",
        "Ban an appliance credential",
        &[
            (
                "200",
                "appliance_id, tenant_id, state (revoked, or replaced when a rebuild retired it), revoked_at, changed",
            ),
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
        "/tenants/{tenant_id}/audit",
        "store, auditor",
        "The tenant's audit records after ?after= (at most ?limit=, default 100), each with its inclusion proof in one signed checkpoint: {tenant_id, checkpoint, records [{seq, record, proof}], next_after}; records chained after the newest checkpoint are not listed yet",
        &[
            ("200", "TenantAudit bundle"),
            ("400", "validation_failed"),
            ("404", "tenant_not_found, not_found (no checkpoint yet)"),
        ],
    ),
    (
        HttpMethod::Get,
        "/audit/log/checkpoint",
        "anyone",
        "The newest signed checkpoint of the audit log's Merkle tree (c2sp.org/tlog-checkpoint in a c2sp.org/signed-note note), with the witnesses' cosignatures",
        &[
            ("200", "text/plain note"),
            ("404", "not_found (no checkpoint yet)"),
        ],
    ),
    (
        HttpMethod::Get,
        "/audit/log/vkey",
        "anyone",
        "The log's signed-note verifier keys, one per line, the active one first",
        &[("200", "text/plain"), ("503", "service_unavailable")],
    ),
    (
        HttpMethod::Get,
        "/audit/log/tile/{tile_path}",
        "anyone",
        "A c2sp.org/tlog-tiles tile of the newest checkpoint's tree: <L>/<N>[.p/<W>] (32-byte hashes) or entries/<N>[.p/<W>] (entry bundle of 32-byte digests); immutable",
        &[
            ("200", "application/octet-stream"),
            ("400", "validation_failed (not a canonical tile path)"),
            ("404", "not_found (beyond the tree)"),
        ],
    ),
    (
        HttpMethod::Get,
        "/audit/log/proof/{seq}",
        "anyone",
        "Record seq's inclusion in the newest checkpoint: {index, size, entry, proof, checkpoint}",
        &[
            ("200", "InclusionProof"),
            ("400", "validation_failed"),
            ("404", "not_found (not in a checkpoint yet)"),
        ],
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

/// A single-line name (`validate::Name`, the mail's rule `alga_delivery::mail::
/// DisplayName`): not blank, no `=?`, none of the refused characters. The pattern's
/// class is built from the rule itself (`refused_bmp_ranges`), so the two cannot drift.
fn name_schema() -> Value {
    let refused = refused_class();
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_CHARS,
        "pattern": format!("^(?!.*=\\?)[^{refused}]*[^\\s{refused}][^{refused}]*$"),
        "description": "Letters, marks, numbers, punctuation, symbols and spaces (Unicode \
            general categories L, M, N, P, S and Zs): no control character, line or paragraph \
            separator, bidi control or other format character, private-use or unassigned \
            code point, and no \"=?\". Surrounding whitespace is dropped and runs of spaces \
            become one. The pattern lists the refused characters up to U+FFFF; the server \
            also refuses unassigned code points and format or private-use characters above it.",
    })
}

/// The body of a regular-expression character class of every character up to U+FFFF
/// that names refuse (unassigned ones aside), as `\uXXXX` escapes.
fn refused_class() -> String {
    alga_delivery::mail::refused_bmp_ranges()
        .iter()
        .map(|r| {
            let (a, b) = (u32::from(*r.start()), u32::from(*r.end()));
            if a == b {
                format!("\\u{a:04x}")
            } else {
                format!("\\u{a:04x}-\\u{b:04x}")
            }
        })
        .collect()
}

/// A contact address (`validate::ContactEmail`, the mail's rule `alga_delivery::mail::
/// MailAddress`): an ASCII dot-atom local part, a fully qualified domain of
/// letter-digit-hyphen labels, no `=?`. (The local part's 64-byte limit is in the
/// description only: a lookahead for it would stop generators such as schemathesis'.)
fn email_schema() -> Value {
    const ATEXT: &str = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-";
    const LABEL: &str = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    json!({
        "type": "string",
        "format": "email",
        "maxLength": MAX_EMAIL_LEN,
        "pattern": format!("^(?!.*=\\?)[{ATEXT}]+(\\.[{ATEXT}]+)*@({LABEL}\\.)+{LABEL}$"),
        "description": "An ASCII address: a dot-atom local part of at most 64 bytes, a fully \
            qualified domain of letter-digit-hyphen labels, no \"=?\"; surrounding spaces are \
            dropped.",
    })
}

fn json_body(required: bool, schema: Value) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": schema}}})
}

fn uuid_in_path(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}})
}

/// The audit endpoints' paging (`handlers::Page`).
fn paging() -> Vec<Value> {
    vec![
        json!({"name": "after", "in": "query", "required": false, "description": "Records with a sequence number greater than this",
               "schema": {"type": "integer", "format": "int64", "minimum": 0}}),
        json!({"name": "limit", "in": "query", "required": false, "description": "At most this many (default 100)",
               "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 1000}}),
    ]
}

/// The 201 body of `/register-tenant` and `/install-codes/reissue` (`protocol::api::
/// RegisterTenantResponse`): `tenant_id` lets a fuzzer reach the routes that take one.
fn registered_schema(reissue: bool) -> Value {
    let timestamp = json!({"type": "string", "format": "date-time"});
    let mut v = json!({
        "type": "object",
        "required": ["tenant_id", "edition", "install_code", "download", "email"],
        "properties": {
            "tenant_id": {"type": "string", "format": "uuid"},
            "edition": {"type": "string"},
            "install_code": {"type": "object", "required": ["code_id", "expires_at"],
                "properties": {"code_id": {"type": "string"}, "expires_at": timestamp}},
            "download": {"type": "object", "required": ["url", "expires_at"],
                "properties": {"url": {"type": "string"}, "expires_at": timestamp}},
            "email": {"type": "object", "required": ["status"],
                "properties": {"status": {"type": "string", "enum": ["sent", "queued", "failed"]}}},
        },
    });
    if reissue {
        v["required"] = json!([
            "tenant_id",
            "edition",
            "install_code",
            "download",
            "email",
            "revoked_code_ids",
            "replaces_appliance_id"
        ]);
        v["properties"]["revoked_code_ids"] = json!({"type": "array", "items": {"type": "string"}});
        v["properties"]["replaces_appliance_id"] =
            json!({"type": ["string", "null"], "format": "uuid"});
    }
    json!({"201": {"content": {"application/json": {"schema": v}}}})
}

/// One event of the feed (`protocol::api::Event`): in `/events` pages and as the body
/// of a webhook delivery.
fn event_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "type", "at", "tenant_id", "appliance_id", "data"],
        "properties": {
            "id": {"type": "integer", "format": "int64", "minimum": 1,
                   "description": "Stable, increasing in feed order (the audit record's sequence number); Alga-Event-Id of a webhook"},
            "type": {"type": "string", "enum": alga_protocol::api::event_type::ALL},
            "at": {"type": "string", "format": "date-time"},
            "tenant_id": {"type": ["string", "null"], "format": "uuid"},
            "appliance_id": {"type": ["string", "null"], "format": "uuid"},
            "data": {"type": "object"},
        },
    })
}

/// The 200 body of `/events` (`protocol::api::EventPage`).
fn events_schema() -> Value {
    json!({
        "type": "object",
        "required": ["events", "next"],
        "properties": {
            "events": {"type": "array", "items": event_schema()},
            "next": {"type": "string", "description": "The after of the next request"},
        },
    })
}

/// The document's `webhooks`: what the gateway POSTs to each `[[webhooks]]` endpoint.
fn webhooks() -> Value {
    json!({"event": {"post": {
        "summary": "One event of the feed, exactly as GET /events shows it, POSTed to each configured endpoint by the gateway leading the audit sequencer",
        "description": "At least once (de-duplicate by Alga-Event-Id), each tenant's events in feed order, one at a time; retried with exponential back-off until the receiver answers 2xx. Verify Alga-Signature on the raw body before parsing it: v1 is the hex HMAC-SHA256, under the endpoint's secret, of t, a '.', and the body; refuse an old t.",
        "parameters": [
            {"name": "Alga-Signature", "in": "header", "required": true,
             "description": "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>",
             "schema": {"type": "string", "pattern": "^t=[0-9]+,v1=[0-9a-f]{64}$"}},
            {"name": "Alga-Event-Id", "in": "header", "required": true,
             "description": "The event's id",
             "schema": {"type": "integer", "format": "int64", "minimum": 1}},
        ],
        "requestBody": {"required": true,
                        "content": {"application/json": {"schema": event_schema()}}},
        "responses": {
            "2XX": {"description": "Delivered"},
            "default": {"description": "Not delivered: retried after a back-off (so is no answer within timeout_secs)"},
        },
    }}})
}

/// A route's `parameters`, `requestBody` and documented response bodies
/// (`responses`: status → partial OpenAPI response) as OpenAPI JSON, or `Null`.
/// `editions` are the policy's edition names (empty: any string).
fn input(path: &str, editions: &[&str]) -> Value {
    let edition = if editions.is_empty() {
        json!({"type": "string"})
    } else {
        json!({"type": "string", "enum": editions})
    };
    match path {
        "/register-tenant" => json!({
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Replays the first answer for the same key and body (409 idempotency_conflict for another body)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"}}],
            "requestBody": json_body(true, json!({
                "type": "object",
                "required": ["company", "contact", "edition"],
                "additionalProperties": false,
                "properties": {
                    "company": name_schema(),
                    "contact": {
                        "type": "object",
                        "required": ["name", "email"],
                        "additionalProperties": false,
                        "properties": {"name": name_schema(), "email": email_schema()},
                    },
                    "edition": edition,
                },
            })),
            "responses": registered_schema(false),
        }),
        "/install-codes/reissue" => {
            let replacement = json!({
                "replaces_appliance_id": {"type": "string", "format": "uuid",
                    "description": "The appliance the code's redeem retires (an active appliance of this tenant)"},
                "add_appliance": {"type": "boolean",
                    "description": "true: the code adds an appliance (within max_appliances) instead of replacing one"},
            });
            let by = |key: &str, schema: Value| {
                let mut properties = replacement.clone();
                properties[key] = schema;
                json!({"type": "object", "required": [key], "additionalProperties": false,
                       "properties": properties})
            };
            json!({
                "requestBody": json_body(true, json!({
                    "description": "Exactly one of tenant_id and contact_email; at most one of replaces_appliance_id and add_appliance",
                    "oneOf": [
                        by("tenant_id", json!({"type": "string", "format": "uuid"})),
                        by("contact_email", email_schema()),
                    ],
                })),
                "responses": registered_schema(true),
            })
        }
        "/register" => json!({
            "requestBody": json_body(true, json!({
                "type": "object",
                "required": ["install_code", "csr", "appliance"],
                "additionalProperties": false,
                "properties": {
                    "install_code": {"type": "string",
                        "description": "30 Crockford base32 symbols in six groups of five (case, spaces and dashes are tolerated)",
                        "pattern": "^[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5}){5}$"},
                    "csr": {"type": "string", "description": "PKCS#10 CSR, PEM"},
                    "appliance": {
                        "type": "object",
                        "required": ["hostname", "version"],
                        "additionalProperties": false,
                        "properties": {"hostname": name_schema(), "version": name_schema()},
                    },
                },
            })),
        }),
        "/check-in" => json!({
            "requestBody": json_body(true, json!({
                "type": "object",
                "required": ["appliance"],
                "additionalProperties": false,
                "properties": {
                    "appliance": {
                        "type": "object",
                        "required": ["version"],
                        "additionalProperties": false,
                        "properties": {"version": name_schema()},
                    },
                    "csr": {"type": ["string", "null"], "description": "PKCS#10 CSR, PEM, to rotate the credential"},
                },
            })),
        }),
        "/check-in/relayed" => json!({
            "requestBody": json_body(true, json!({
                "type": "object",
                "required": ["format", "payload", "signature"],
                "additionalProperties": false,
                "properties": {
                    "format": {"type": "string", "enum": ["alga-offline-check-in-request/v1"]},
                    "payload": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$",
                        "description": "base64url of the signed JSON payload: nonce (uuid), issued_at (Unix seconds), certificate_chain (PEM, leaf first), check_in (the /check-in body)"},
                    "signature": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$",
                        "description": "base64url ECDSA P-256 SHA-256 signature (r||s) over \"alga-relayed-check-in/v1\\n\" followed by the payload bytes, by the appliance's key"},
                },
            })),
        }),
        "/tenants/{tenant_id}" => json!({"parameters": [uuid_in_path("tenant_id")]}),
        "/tenants/{tenant_id}/entitlement" => json!({
            "parameters": [uuid_in_path("tenant_id")],
            "requestBody": json_body(true, json!({
                "type": "object",
                "required": ["edition"],
                "additionalProperties": false,
                "properties": {"edition": edition},
            })),
        }),
        "/tenants/{tenant_id}/suspend" | "/tenants/{tenant_id}/resume" => json!({
            "parameters": [uuid_in_path("tenant_id")],
            "requestBody": json_body(false, json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"reason": name_schema()},
            })),
        }),
        "/appliances" => json!({
            "parameters": [
                {"name": "health", "in": "query", "required": false,
                 "description": "Only active appliances of paid editions in this health",
                 "schema": {"type": "string", "enum": ["ok", "overdue", "stale"]}},
                {"name": "after", "in": "query", "required": false,
                 "description": "The next of the previous page",
                 "schema": {"type": "string", "format": "uuid"}},
                {"name": "limit", "in": "query", "required": false,
                 "description": "At most this many (default 100)",
                 "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 1000}},
            ],
        }),
        "/events" => json!({
            "parameters": [
                {"name": "after", "in": "query", "required": false,
                 "description": "The next of the previous page (opaque); absent: from the start of the feed",
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}},
                {"name": "limit", "in": "query", "required": false,
                 "description": "At most this many events (default 100)",
                 "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 1000}},
            ],
            "responses": {"200": {"content": {"application/json": {"schema": events_schema()}}}},
        }),
        "/appliances/{appliance_id}/revoke" => json!({
            "parameters": [uuid_in_path("appliance_id")],
            "requestBody": json_body(false, json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"reason": name_schema()},
            })),
        }),
        "/audit/events" => {
            let mut p = paging();
            p.push(
                json!({"name": "tenant_id", "in": "query", "required": false,
                "schema": {"type": "string", "format": "uuid"}}),
            );
            p.push(json!({"name": "action", "in": "query", "required": false,
                "description": "Only this action, e.g. code.redeem",
                "schema": {"type": "string", "pattern": "^[a-z_]+(\\.[a-z_]+)+$"}}));
            json!({"parameters": p})
        }
        "/audit/checkpoints" => json!({"parameters": paging()}),
        "/tenants/{tenant_id}/audit" => {
            let mut p = paging();
            p.insert(0, uuid_in_path("tenant_id"));
            json!({"parameters": p})
        }
        "/audit/log/tile/{tile_path}" => json!({"parameters": [
            {"name": "tile_path", "in": "path", "required": true,
             "description": "The rest of the tile path, e.g. 0/x001/234.p/7 or entries/000",
             "schema": {"type": "string"}}]}),
        "/audit/log/proof/{seq}" => json!({"parameters": [
            {"name": "seq", "in": "path", "required": true,
             "schema": {"type": "integer", "format": "int64", "minimum": 1}}]}),
        _ => Value::Null,
    }
}

/// The document, with `edition` an enumeration of `editions` (none: any string).
pub fn document_for(editions: &[&str]) -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path, caller, summary, responses) in ROUTES {
        let mut op = OperationBuilder::new()
            .summary(Some(*summary))
            .description(Some(format!("Caller: {caller}. Every error body is {{\"error\": {{\"code\", \"message\", \"request_id\"}}}}; every response has x-request-id.")));
        let input = input(path, editions);
        if let Some(params) = input.get("parameters") {
            // The constant descriptions above parse (see the tests).
            let params: Vec<Parameter> = serde_json::from_value(params.clone()).unwrap_or_default();
            op = op.parameters(Some(params));
        }
        if let Some(body) = input.get("requestBody") {
            op = op.request_body(serde_json::from_value::<RequestBody>(body.clone()).ok());
        }
        for (status, desc) in *responses {
            let mut r = input["responses"][*status].clone();
            let response = match r.as_object_mut() {
                Some(o) => {
                    o.insert("description".to_owned(), json!(desc));
                    serde_json::from_value(r).unwrap_or_else(|_| OaResponse::new(*desc))
                }
                None => OaResponse::new(*desc),
            };
            op = op.response(*status, response);
        }
        paths = paths.path(*path, PathItem::new(method.clone(), op));
    }
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("alga-license gateway")
                .version(env!("CARGO_PKG_VERSION")),
        )
        .paths(paths)
        .build();
    // OpenAPI 3.1's `webhooks`: utoipa 5 has no field for it, and writes its
    // extensions at the document's top level under the names they are given.
    doc.extensions = Some(Extensions::from_iter([("webhooks", webhooks())]));
    doc
}

/// The document without a policy (`edition` is any string).
pub fn document() -> OpenApi {
    document_for(&[])
}

/// `GET /openapi.json`: the document, with the policy's editions.
pub async fn openapi_json(State(app): AppState) -> Response {
    let editions: Vec<&str> = app.policy.editions.keys().map(String::as_str).collect();
    Json(document_for(&editions)).into_response()
}

#[cfg(test)]
mod tests {
    /// The name pattern refuses what the API refuses.
    #[test]
    fn the_name_pattern_follows_the_mail_rule() {
        let name = super::name_schema();
        let pattern = name["pattern"].as_str().expect("pattern");
        // A negative lookahead only: generators (schemathesis) cannot satisfy positive ones.
        assert!(
            pattern.starts_with("^(?!.*=\\?)") && !pattern.contains("(?="),
            "{pattern}"
        );
        let class = super::refused_class();
        // Parse the class back into ranges and look the finding's characters up.
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for part in class.split("\\u").filter(|s| !s.is_empty()) {
            let v = u32::from_str_radix(part.trim_end_matches('-'), 16).expect("hex");
            match merged.last_mut() {
                Some(last) if last.1 == u32::MAX => last.1 = v,
                _ => merged.push((v, if part.ends_with('-') { u32::MAX } else { v })),
            }
        }
        assert!(!merged.is_empty());
        for c in [
            0x0au32, 0x7f, 0x85, 0xad, 0x61c, 0x2028, 0x2029, 0x202e, 0x2066, 0xe000, 0xfeff,
            0xffff,
        ] {
            assert!(
                merged.iter().any(|&(a, b)| a <= c && c <= b),
                "U+{c:04X} not in {class}"
            );
        }
        for c in [0x41u32, 0x20, 0xe9, 0x3000, 0x5d0, 0x627, 0x4e00] {
            assert!(
                !merged.iter().any(|&(a, b)| a <= c && c <= b),
                "U+{c:04X} in {class}"
            );
        }
        assert!(class.is_ascii() && class.len() < 1000, "{class}");
        let email = super::email_schema();
        let pattern = email["pattern"].as_str().expect("pattern");
        assert!(
            pattern.starts_with("^(?!.*=\\?)") && !pattern.contains("(?="),
            "{pattern}"
        );
    }

    #[test]
    fn is_openapi_3_1_with_every_route() {
        let v = serde_json::to_value(super::document()).expect("serializes");
        assert_eq!(v["openapi"], "3.1.0");
        assert!(v["paths"]["/register"]["post"].is_object());
        assert!(v["paths"]["/tenants/{tenant_id}"]["get"].is_object());
        assert!(v["paths"]["/events"]["get"].is_object());
        let hook = &v["webhooks"]["event"]["post"];
        let headers: Vec<&str> = hook["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(headers, ["Alga-Signature", "Alga-Event-Id"]);
        assert_eq!(
            hook["requestBody"]["content"]["application/json"]["schema"],
            v["paths"]["/events"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
                ["properties"]["events"]["items"]
        );
    }

    /// Every parameter and request body of `input` survives utoipa's types unchanged.
    #[test]
    fn every_input_description_is_in_the_document_as_written() {
        let editions = ["essentials", "pro"];
        let v = serde_json::to_value(super::document_for(&editions)).expect("serializes");
        let mut with_body = 0;
        for (method, path, ..) in super::ROUTES {
            let method = serde_json::to_value(method).expect("method");
            let op = &v["paths"][*path][method.as_str().expect("str")];
            let input = super::input(path, &editions);
            assert_eq!(op["parameters"], input["parameters"], "{path}");
            assert_eq!(op["requestBody"], input["requestBody"], "{path}");
            with_body += usize::from(input.get("requestBody").is_some());
            for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(declared, "{path}: path parameter {name} not declared");
            }
            if let Some(rs) = input["responses"].as_object() {
                for (status, r) in rs {
                    assert_eq!(
                        op["responses"][status]["content"], r["content"],
                        "{path} {status}"
                    );
                }
            }
        }
        assert_eq!(with_body, 9);
        let edition = &v["paths"]["/register-tenant"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["edition"];
        assert_eq!(edition["enum"], serde_json::json!(["essentials", "pro"]));
    }
}
