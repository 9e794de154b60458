//! The HTTP edge: routes, extractors, the request-id/metrics middleware and the
//! handlers. Only this module knows about HTTP and JSON; handlers are thin (extract,
//! convert to a domain type, call the flow, map the result).

pub mod events;
pub mod extract;
mod handlers;
pub mod log;
mod middleware;
pub mod openapi;
mod relayed;
mod views;

use std::sync::Arc;

use alga_protocol::api as wire;
use axum::Router;
use axum::routing::{get, post, put};

pub use extract::RequestId;

use crate::App;

/// Largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The routes one listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The API port without an operations listener: every route (the single-port
    /// default).
    Everything,
    /// The API port beside an operations listener: every route but `/readyz` and
    /// `/metrics` (they tell anyone the database's and the issuer's state and the
    /// traffic's shape); `/healthz` (a load balancer's probe) and `/openapi.json` (the
    /// API's contract) stay.
    Api,
    /// The operations listener: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.
    Ops,
}

/// The routes of `surface`; any other path is the fallback's 404 `not_found`, logged
/// and counted as `unmatched` like every unknown path.
pub fn router(app: Arc<App>, surface: Surface) -> Router {
    let public_ops = Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/openapi.json", get(openapi::openapi_json));
    let private_ops = Router::new()
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics));
    let routes = match surface {
        Surface::Everything => business().merge(public_ops).merge(private_ops),
        Surface::Api => business().merge(public_ops),
        Surface::Ops => public_ops.merge(private_ops),
    };
    routes
        .fallback(handlers::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::request_context,
        ))
        .with_state(app)
}

/// Every route but the operational ones.
fn business() -> Router<Arc<App>> {
    Router::new()
        .route(wire::REGISTER_TENANT, post(handlers::register_tenant))
        .route(wire::REISSUE, post(handlers::reissue))
        .route(wire::REDEEM, post(handlers::redeem))
        .route(wire::CHECK_IN, post(handlers::check_in))
        .route(
            alga_protocol::offline::RELAYED_CHECK_IN,
            post(relayed::check_in_relayed),
        )
        .route("/tenants/{tenant_id}", get(handlers::get_tenant))
        .route(
            "/tenants/{tenant_id}/entitlement",
            put(handlers::change_entitlement),
        )
        .route(
            "/tenants/{tenant_id}/suspend",
            post(handlers::suspend_tenant),
        )
        .route("/tenants/{tenant_id}/resume", post(handlers::resume_tenant))
        .route(wire::APPLIANCES, get(handlers::list_appliances))
        .route(wire::EVENTS, get(events::list))
        .route(
            "/appliances/{appliance_id}/revoke",
            post(handlers::revoke_appliance),
        )
        .route("/audit/events", get(handlers::audit_events))
        .route("/audit/checkpoints", get(handlers::audit_checkpoints))
        .route("/audit/keys", get(handlers::audit_keys))
        .route("/audit/log/checkpoint", get(log::checkpoint))
        .route("/audit/log/vkey", get(log::vkey))
        .route("/audit/log/tile/{*path}", get(log::tile))
        .route("/audit/log/proof/{seq}", get(log::proof))
        .route("/tenants/{tenant_id}/audit", get(log::tenant_audit))
        .route(wire::JWKS, get(handlers::jwks))
        .route(wire::CA_PEM, get(handlers::ca_pem))
}
