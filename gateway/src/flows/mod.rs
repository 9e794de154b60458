//! The domain flows of CONTRACT.md §4–§5: each takes validated input, a [`Ctx`] (who, which
//! request, `now`) and the [`App`](crate::App), runs its transaction, and returns a domain result or
//! an [`ApiError`]. No HTTP here beyond the error type; no SQL here (that is `db`).

pub mod check_in;
pub mod csr;
pub mod events;
pub mod lifecycle;
pub mod redeem;
pub mod register;
pub mod reissue;
pub mod relayed;
pub mod revoke;
pub mod tenants;
pub mod validate;

use alga_protocol::issuer_api::IssuerErrorCode;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::issuer_client::IssuerError;

pub use crate::audit::Ctx;

/// An issuer failure as the API reports it: down or failing, or refusing to sign with
/// an expired or expiring appliance CA → 503 `license_service_unavailable`; a CSR it
/// refuses → `csr_invalid`; anything else is a bug on our side (we sent something the
/// issuer's policy refuses) → 500. Each call logs the failure once.
pub(crate) fn issuer_error(e: IssuerError) -> ApiError {
    match e {
        IssuerError::CaExpiring { .. } => {
            // Not transient: every credential is refused until an operator acts.
            tracing::error!(
                error = %e,
                "the issuer refuses to sign credentials: the appliance CA has expired or \
                 expires too soon; rotate it (`alga-issuer keys rotate ca`)"
            );
            ApiError::LicenseServiceUnavailable
        }
        IssuerError::Unreachable(_) | IssuerError::Unavailable { .. } => {
            tracing::error!(error = %e, "issuer unavailable");
            ApiError::LicenseServiceUnavailable
        }
        IssuerError::Refused {
            code: IssuerErrorCode::CsrInvalid,
            message,
        } => ApiError::CsrInvalid(format!("the CSR was refused: {message}")),
        IssuerError::Refused {
            code: IssuerErrorCode::HsmUnavailable,
            ..
        } => {
            tracing::error!(error = %e, "issuer HSM unavailable");
            ApiError::LicenseServiceUnavailable
        }
        other => ApiError::internal(other),
    }
}

/// Revokes the tenant's unclaimed codes that `which` names, each with its `code.revoke`
/// audit record (`reason`), in `tx`; returns their ids, sorted.
pub(crate) async fn revoke_codes(
    tx: &deadpool_postgres::Transaction<'_>,
    ctx: &Ctx,
    tenant_id: uuid::Uuid,
    which: crate::db::codes::Superseded,
    reason: &str,
) -> Result<Vec<String>, ApiError> {
    let revoked = crate::db::codes::revoke_unclaimed(tx, tenant_id, which).await?;
    for code_id in &revoked {
        crate::audit::append(
            tx,
            ctx.record(crate::audit::actions::CODE_REVOKE)?
                .tenant(tenant_id)
                .subject("code_id", code_id)
                .detail("reason", reason),
        )
        .await?;
    }
    Ok(revoked)
}

/// `t` rounded down to whole seconds (code bindings and links carry no finer time).
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiring_ca_is_the_callers_503_not_a_500_nor_a_400() {
        let e = issuer_error(IssuerError::CaExpiring {
            message: "appliance CA expires in 2 days".into(),
        });
        assert!(matches!(e, ApiError::LicenseServiceUnavailable), "{e:?}");
        assert_eq!(e.status().as_u16(), 503);
        assert_eq!(e.code(), "license_service_unavailable");
        // As a refusal of another kind would not be.
        let e = issuer_error(IssuerError::Refused {
            code: IssuerErrorCode::BeyondPolicy,
            message: "m".into(),
        });
        assert_eq!(e.status().as_u16(), 500);
    }
}
