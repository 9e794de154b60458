//! The JSON extractor of the issuer's API.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use super::error::ApiError;

/// `Json` whose rejections are [`IssuerErrorBody`](alga_protocol::issuer_api::IssuerErrorBody)s (`bad_request`, with the status
/// axum chose: 400, 413 or 415). The message names the JSON problem; it goes back to
/// the gateway that sent the body and is not logged.
pub(super) struct ApiJson<T>(pub(super) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                // axum answers 422 for well-formed JSON of the wrong shape (an unknown
                // field, a bad UUID); to the gateway that is a bad request like any other.
                let status = match rejection.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    other => other,
                };
                tracing::info!(http.status = status.as_u16(), "request body refused");
                Err(ApiError::Rejected {
                    status,
                    message: rejection.body_text(),
                })
            }
        }
    }
}
