//! The server's private `ApiError`, a request's failure rendered as
//! [`IssuerErrorBody`] with the HTTP status of its stable error code. It wraps the
//! library's [`Error`] (which is also what `run` returns when the server
//! cannot start); see `crate::error` for the error policy.

use alga_protocol::issuer_api::{IssuerErrorBody, IssuerErrorCode, IssuerErrorDetail};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::Error;

/// An API error, rendered as [`IssuerErrorBody`].
#[derive(Debug)]
pub(super) enum ApiError {
    /// An operation refused the request or failed.
    Failed(Error),
    /// The signing log could not take the record.
    Signlog,
    Forbidden,
    /// The key store cannot serve until an operator acts (the health route's answer;
    /// the message names the condition, never a secret).
    Unhealthy(String),
    /// A request that did not reach an operation (bad JSON, size, route).
    Rejected {
        status: StatusCode,
        message: String,
    },
}

impl ApiError {
    pub(super) fn status(status: StatusCode, message: &str) -> ApiError {
        ApiError::Rejected {
            status,
            message: message.to_owned(),
        }
    }

    /// The HTTP status and the client-facing error: what a request failing with this
    /// error answers, and what a batch reports for one of its items.
    pub(super) fn into_parts(self) -> (StatusCode, IssuerErrorDetail) {
        let (status, code, message) = match self {
            ApiError::Failed(e) => {
                let code = e.code();
                let status = status_of(code);
                // 5xx: no internal detail to the client; the log has it.
                let message = match code {
                    IssuerErrorCode::HsmUnavailable => {
                        "the HSM is unavailable; retry later".to_owned()
                    }
                    IssuerErrorCode::Internal => {
                        "internal error; the issuer's log has the detail".to_owned()
                    }
                    _ => e.to_string(),
                };
                (status, code, message)
            }
            ApiError::Signlog => (
                StatusCode::SERVICE_UNAVAILABLE,
                // There is no dedicated code; this one tells the gateway to retry later.
                IssuerErrorCode::HsmUnavailable,
                "the signing log cannot be written; retry later".to_owned(),
            ),
            ApiError::Unhealthy(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                IssuerErrorCode::HsmUnavailable,
                message,
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                IssuerErrorCode::Forbidden,
                "this client is not allowed to use the issuer".to_owned(),
            ),
            ApiError::Rejected { status, message } => {
                (status, IssuerErrorCode::BadRequest, message)
            }
        };
        (status, IssuerErrorDetail { code, message })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.into_parts();
        (status, Json(IssuerErrorBody { error })).into_response()
    }
}

/// The HTTP status of each stable error code.
pub fn status_of(code: IssuerErrorCode) -> StatusCode {
    match code {
        IssuerErrorCode::BadRequest
        | IssuerErrorCode::UnknownEdition
        | IssuerErrorCode::EditionNotPaid
        | IssuerErrorCode::BeyondPolicy
        | IssuerErrorCode::CsrInvalid
        | IssuerErrorCode::CodeMalformed => StatusCode::BAD_REQUEST,
        IssuerErrorCode::Forbidden => StatusCode::FORBIDDEN,
        IssuerErrorCode::HsmUnavailable | IssuerErrorCode::CaExpiring => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        IssuerErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_5xx_item_error_carries_no_internal_detail() {
        let (status, detail) = ApiError::Failed(Error::internal("the secret reason")).into_parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(detail.code, IssuerErrorCode::Internal);
        assert!(!detail.message.contains("secret"), "{}", detail.message);
    }
    #[test]
    fn every_code_has_its_status() {
        let table = [
            (IssuerErrorCode::BadRequest, 400),
            (IssuerErrorCode::UnknownEdition, 400),
            (IssuerErrorCode::EditionNotPaid, 400),
            (IssuerErrorCode::BeyondPolicy, 400),
            (IssuerErrorCode::CsrInvalid, 400),
            (IssuerErrorCode::CodeMalformed, 400),
            (IssuerErrorCode::Forbidden, 403),
            (IssuerErrorCode::HsmUnavailable, 503),
            (IssuerErrorCode::Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }
}
