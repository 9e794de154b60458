//! `POST /check-in/relayed`: the offline refresh of an air-gapped appliance. A relay
//! (any connected machine, no client certificate) submits a request the appliance
//! signed with its own key; the request is authenticated here exactly as far as an
//! mTLS check-in is authenticated at the handshake, then it *is* a check-in
//! ([`super::check_in::check_in`]: revoked, replaced, suspended, superseded
//! credentials, edition changes and rotation apply unchanged).
//!
//! What authenticates it, in order, before anything is read from the database:
//! 1. the certificate chain in the signed payload verifies as a client certificate
//!    against the appliance CAs the gateway trusts for mTLS, at `now`, with the
//!    clientAuth EKU and one appliance URI SAN of the policy's trust domain (the same
//!    [`ClientIdentity::classify`] every TLS connection goes through);
//! 2. the signature over [`offline::CHECK_IN_SIGNING_CONTEXT`] ‖ the payload verifies
//!    with that certificate's public key (ECDSA P-256, the appliance key's type);
//! 3. the payload was made at most [`offline::CHECK_IN_MAX_AGE_SECONDS`] ago and not
//!    more than [`offline::CHECK_IN_MAX_SKEW_SECONDS`] ahead;
//! 4. in the check-in's transaction: the payload's SHA-256 was never accepted before
//!    (`db::relayed::accept_once`); a replay is `relayed_request_replayed`.
//!
//! A request refused at 1–3 has no established caller: it is counted in the refusal
//! summary, as any request refused before its caller is known. So is a replay at 4:
//! whoever holds a copy of an accepted request may submit it any number of times, and
//! each must not add a record. Past 4, the check-in's own audit record is written,
//! success or failure, with `relayed: true`.

use alga_protocol::offline::{self, RelayedCheckIn, RelayedError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Ctx;
use super::check_in::{self, CheckedIn, Presented};
use crate::App;
use crate::audit::actions;
use crate::auth::{ClientIdentity, TrustSets};
use crate::error::ApiError;
use crate::keys;

/// Most certificates a payload's chain may hold (leaf and CA).
const MAX_CHAIN: usize = 4;

/// The proof that a check-in came through a relay, for its record and replay check.
#[derive(Debug, Clone)]
pub struct Relayed {
    /// SHA-256 of the signed payload's bytes.
    pub payload_sha256: [u8; 32],
    pub nonce: Uuid,
    pub issued_at: OffsetDateTime,
}

/// Authenticates a relayed check-in and runs it as the appliance's check-in.
#[tracing::instrument(skip_all)]
pub async fn check_in(
    app: &App,
    mut ctx: Ctx,
    req: &RelayedCheckIn,
) -> Result<CheckedIn, ApiError> {
    let authenticated = match authenticate(app, &ctx, req).await {
        Ok(a) => a,
        Err(e) => {
            app.refusals
                .count_request(&ctx, actions::APPLIANCE_CHECK_IN, e.code());
            return Err(e);
        }
    };
    let (credential, payload, relayed) = authenticated;
    ctx.actor_role = "appliance";
    ctx.actor_id = Some(credential.id.uri(&app.policy.trust_domain));
    tracing::info!(
        tenant.id = %credential.id.tenant_id,
        appliance.id = %credential.id.appliance_id,
        "relayed check-in authenticated"
    );
    check_in::check_in(
        app,
        &ctx,
        credential.id,
        Presented::of(&credential),
        &payload.check_in.appliance.version,
        payload.check_in.csr.as_deref(),
        Some(&relayed),
    )
    .await
}

type Authenticated = (
    crate::auth::ApplianceCredential,
    offline::RelayedCheckInPayload,
    Relayed,
);

/// Steps 1–3 of the module doc.
async fn authenticate(
    app: &App,
    ctx: &Ctx,
    req: &RelayedCheckIn,
) -> Result<Authenticated, ApiError> {
    let unverified = req.payload_unverified().map_err(refusal)?;
    let certs = CertificateDer::pem_slice_iter(unverified.certificate_chain.as_bytes())
        .take(MAX_CHAIN + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::RelayedRejected("the certificate chain is not PEM"))?;
    if certs.is_empty() || certs.len() > MAX_CHAIN {
        return Err(ApiError::RelayedRejected(
            "the certificate chain must hold the appliance's certificate and its CA",
        ));
    }
    // 1. As a TLS client certificate would be, against the appliance CAs only.
    let public_keys = app.public_keys().await?;
    let trust = TrustSets {
        service: Vec::new(),
        appliance: TrustSets::anchors(&keys::appliance_cas(&public_keys)),
    };
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(ctx.now.unix_timestamp()).unwrap_or(0),
    ));
    let credential =
        match ClientIdentity::classify(Some(certs.as_slice()), &trust, &app.policy, now) {
            ClientIdentity::Appliance(c) => c,
            other => {
                if let ClientIdentity::Refused(reason) = &other {
                    tracing::info!(reason = %reason, "relayed check-in: certificate refused");
                }
                return Err(ApiError::RelayedRejected(
                    "the certificate chain does not authenticate an appliance of this service",
                ));
            }
        };
    // 2. The signature, with that certificate's key.
    let (_, leaf) = X509Certificate::from_der(certs[0].as_ref())
        .map_err(|_| ApiError::RelayedRejected("the certificate is not X.509"))?;
    let payload = req
        .verify(leaf.public_key().subject_public_key.data.as_ref())
        .map_err(refusal)?;
    // 3. The window.
    let issued_at = OffsetDateTime::from_unix_timestamp(payload.issued_at)
        .map_err(|_| ApiError::RelayedRejected("its time is out of range"))?;
    let age = (ctx.now - issued_at).whole_seconds();
    if age > offline::CHECK_IN_MAX_AGE_SECONDS {
        return Err(ApiError::RelayedRejected(
            "it is older than the accepted window (7 days): make a new request on the appliance",
        ));
    }
    if -age > offline::CHECK_IN_MAX_SKEW_SECONDS {
        return Err(ApiError::RelayedRejected(
            "it was made in the future: check the appliance's clock",
        ));
    }
    let payload_sha256 = req.payload_sha256().map_err(refusal)?;
    let relayed = Relayed {
        payload_sha256,
        nonce: payload.nonce,
        issued_at,
    };
    Ok((credential, payload, relayed))
}

fn refusal(e: RelayedError) -> ApiError {
    match e {
        RelayedError::Format => ApiError::field(
            "format",
            format!("must be {}", offline::CHECK_IN_REQUEST_FORMAT),
        ),
        RelayedError::Malformed => ApiError::RelayedRejected("the request is malformed"),
        RelayedError::BadSignature => ApiError::RelayedRejected(
            "the signature does not verify with the appliance's certificate",
        ),
        // A refusal protocol adds later: refused, without a more precise message.
        _ => ApiError::RelayedRejected("the request is refused"),
    }
}
