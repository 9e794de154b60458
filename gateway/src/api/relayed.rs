//! `POST /check-in/relayed`: an air-gapped appliance's signed check-in, submitted by a
//! relay without a client certificate (`flows::relayed` authenticates it by the
//! appliance's signature and certificate chain). Served on the TLS API listener like
//! every business route; no role is required of the connection.

use alga_protocol::offline::RelayedCheckIn;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{ApiJson, AppState, Peer};
use crate::audit::actions;
use crate::error::ApiError;
use crate::flows;

/// `POST /check-in/relayed` (no client certificate required).
pub async fn check_in_relayed(
    axum::extract::State(app): AppState,
    peer: Peer,
    body: Result<ApiJson<RelayedCheckIn>, ApiError>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let req = super::handlers::counted_body(&app, &ctx, actions::APPLIANCE_CHECK_IN, body)?;
    let r = flows::relayed::check_in(&app, ctx, &req).await?;
    Ok((StatusCode::OK, Json(super::views::checked_in(r))).into_response())
}
