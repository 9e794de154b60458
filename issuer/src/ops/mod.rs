//! The signing operations: pure functions over a [`KeyOps`], the policy and `now`.
//!
//! Each operation checks the request against the policy's hard bounds, asks the key
//! store for a MAC or a signature, and returns the result together with the
//! [`SignEvent`] the server must write to the signing log *before* it replies (see
//! [`Signed`]). Nothing here knows about HTTP, TLS, files or clocks: time is the `now`
//! parameter, so every boundary is testable.
//!
//! - [`codes`]: mint, re-derive and verify install codes (HMAC with the code key).
//! - [`license`]: ES256 license JWTs, built by hand and signed through `sign_digest`.
//! - [`credential`]: appliance client certificates from a verified CSR.
//! - [`checkpoint`]: audit checkpoint signatures.
//! - [`log_checkpoint`]: transparency-log checkpoints (signed notes, Ed25519 log key).
//! - [`jwks`] and [`public_keys`]: what the issuer publishes.
//!
//! Error policy: one [`OpsError`], every variant mapped to a stable
//! [`IssuerErrorCode`]. Messages never carry a code, a token or key material.

pub mod checkpoint;
pub mod codes;
pub mod credential;
pub mod jwks;
pub mod license;
pub mod log_checkpoint;
pub mod public_keys;

#[cfg(test)]
pub(crate) mod software_keys;

/// A test's expectation of an error.
#[cfg(test)]
pub(crate) type ErrCheck = fn(&OpsError) -> bool;

use alga_policies::{Edition, Policy};
use alga_protocol::CodeFormatError;
use alga_protocol::issuer_api::IssuerErrorCode;
use alga_protocol::signlog::SignEvent;
use time::OffsetDateTime;

use crate::keyring::{KeyInfo, KeyKind, KeyOps, KeyOpsError};

/// The result of a signing operation and the signing-log event that must be durably
/// written before the result is handed to anyone.
#[derive(Debug)]
#[must_use = "a signature must be logged before it is returned"]
pub struct Signed<T> {
    pub value: T,
    pub event: SignEvent,
}

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The request names an edition the policy does not define.
    #[error("edition {edition:?} is not in the policy")]
    UnknownEdition { edition: String },

    /// The edition has no license, credential or check-in (the essentials tier).
    #[error("edition {edition:?} has no license or credential")]
    EditionNotPaid { edition: String },

    /// The request asks for more than the policy allows (a longer lifetime, a later
    /// expiry), or for something already over (an expiry in the past).
    #[error("beyond policy: {reason}")]
    BeyondPolicy { reason: String },

    /// The CSR is not PEM/DER, its self-signature does not verify, or its key is not
    /// EC P-256 or Ed25519.
    #[error("invalid CSR: {reason}")]
    CsrInvalid { reason: String },

    /// The presented install code is not well formed (length, alphabet, check symbols).
    #[error("malformed install code: {0}")]
    CodeMalformed(#[source] CodeFormatError),

    /// The request is well-formed JSON but a value is unusable (a head hash that is not
    /// 64 hex characters, a root hash that is not the base64 of 32 bytes, a code key
    /// version that does not exist, a zero lifetime).
    #[error("bad request: {reason}")]
    BadRequest { reason: String },

    /// The active appliance CA has expired, or has less left than a credential must
    /// have (a third of the policy's credential lifetime): nothing is signed until an
    /// operator rotates the CA (`alga-issuer keys rotate ca`).
    #[error(
        "the appliance CA v{version} expires at {not_after}: rotate it (`alga-issuer keys rotate ca`)"
    )]
    CaExpiring {
        version: u32,
        not_after: OffsetDateTime,
    },

    /// The key store failed (HSM unavailable, PIN refused, token missing).
    #[error("key store: {0}")]
    Keys(#[from] KeyOpsError),

    /// Something that should not happen did (a key store without an active key of a
    /// kind, a certificate that does not check out after signing). Not the caller's
    /// fault; the log has the detail.
    #[error("internal: {reason}")]
    Internal { reason: String },
}

impl OpsError {
    /// The stable API error code of this error.
    pub fn code(&self) -> IssuerErrorCode {
        match self {
            OpsError::UnknownEdition { .. } => IssuerErrorCode::UnknownEdition,
            OpsError::EditionNotPaid { .. } => IssuerErrorCode::EditionNotPaid,
            OpsError::BeyondPolicy { .. } => IssuerErrorCode::BeyondPolicy,
            OpsError::CsrInvalid { .. } => IssuerErrorCode::CsrInvalid,
            OpsError::CodeMalformed(_) => IssuerErrorCode::CodeMalformed,
            OpsError::BadRequest { .. } => IssuerErrorCode::BadRequest,
            OpsError::CaExpiring { .. } => IssuerErrorCode::CaExpiring,
            // A key that should exist but does not is our problem, not the HSM's mood.
            OpsError::Keys(KeyOpsError::UnknownKey { .. }) => IssuerErrorCode::Internal,
            OpsError::Keys(_) => IssuerErrorCode::HsmUnavailable,
            OpsError::Internal { .. } => IssuerErrorCode::Internal,
        }
    }

    pub(crate) fn beyond(reason: impl Into<String>) -> OpsError {
        OpsError::BeyondPolicy {
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(reason: impl Into<String>) -> OpsError {
        OpsError::Internal {
            reason: reason.into(),
        }
    }
}

/// The edition `name` of the policy.
pub(crate) fn edition<'p>(policy: &'p Policy, name: &str) -> Result<&'p Edition, OpsError> {
    policy
        .edition(name)
        .ok_or_else(|| OpsError::UnknownEdition {
            edition: name.to_owned(),
        })
}

/// The metadata of the active version of `kind`.
pub(crate) fn active_key<K: KeyOps>(keys: &K, kind: KeyKind) -> Result<KeyInfo, OpsError> {
    let version = keys.active_version(kind);
    keys.keys(kind)
        .into_iter()
        .find(|k| k.version == version)
        .ok_or_else(|| OpsError::internal(format!("no active {kind} key (version {version})")))
}

/// `t` in UTC without its fraction of a second: every time we sign is whole seconds,
/// as JWT `NumericDate`s and X.509 `UTCTime`s are.
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t)
}

/// Hex of the SHA-256 of `bytes` (lower case).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_stable_code() {
        let table: Vec<(OpsError, IssuerErrorCode)> = vec![
            (
                OpsError::UnknownEdition {
                    edition: "x".into(),
                },
                IssuerErrorCode::UnknownEdition,
            ),
            (
                OpsError::EditionNotPaid {
                    edition: "x".into(),
                },
                IssuerErrorCode::EditionNotPaid,
            ),
            (OpsError::beyond("x"), IssuerErrorCode::BeyondPolicy),
            (
                OpsError::CsrInvalid { reason: "x".into() },
                IssuerErrorCode::CsrInvalid,
            ),
            (
                OpsError::CodeMalformed(CodeFormatError::WrongLength { found: 3 }),
                IssuerErrorCode::CodeMalformed,
            ),
            (
                OpsError::BadRequest { reason: "x".into() },
                IssuerErrorCode::BadRequest,
            ),
            (
                OpsError::Keys(KeyOpsError::Unavailable),
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                OpsError::Keys(KeyOpsError::PinIncorrect),
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                OpsError::Keys(KeyOpsError::TokenNotFound { label: "t".into() }),
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                OpsError::Keys(KeyOpsError::UnknownKey {
                    kind: KeyKind::License,
                    version: 9,
                }),
                IssuerErrorCode::Internal,
            ),
            (OpsError::internal("x"), IssuerErrorCode::Internal),
        ];
        for (err, code) in table {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn whole_seconds_drops_the_fraction_and_normalizes_to_utc() {
        let t = time::macros::datetime!(2030-01-01 12:00:00.999 +02:00);
        assert_eq!(
            whole_seconds(t),
            time::macros::datetime!(2030-01-01 10:00:00 UTC)
        );
    }
}
