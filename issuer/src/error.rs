//! The issuer library's one error enum, [`Error`], with its stable API code
//! ([`Error::code`]).
//!
//! Error policy (as crates.io writes at the top of its error module): every function
//! of this library that can fail returns [`Error`], a `thiserror` enum with every
//! variant documented; `anyhow` appears only in the binary (`main.rs`) and the tests.
//! What lives where:
//!
//! - [`Error`] (here): refusals and failures of the signing operations (`ops`), of the
//!   key store behind the [`KeyOps`](crate::keyring::KeyOps) seam, of the signing log
//!   (`signlog`) and of the server's start-up (`server`). Each variant has one stable
//!   [`IssuerErrorCode`].
//! - [`HsmError`] (`hsm::error`): the one other error type, nested as [`Error::Hsm`]
//!   (as the gateway nests `tokio_postgres::Error`). It is the vocabulary of the one
//!   place that reads PKCS#11 return values (`hsm::error::map_cryptoki`), and the
//!   `hsm` module's functions (opening the token, the worker pool, the key
//!   ceremonies) return it. It stays a type of its own because it is a closed set
//!   the module decides on: the workers retry on [`HsmError::is_session_lost`] alone,
//!   and a function typed `HsmError` cannot return a signing-log or policy failure.
//!   Folding its twenty variants in here would put `SessionLost` or `PartialKeySet`
//!   beside `BeyondPolicy` for every caller to wade through.
//! - The key store answers [`Error::Hsm`] too, not variants of its own (they would
//!   repeat `HsmError`'s and drop the detail the log wants). What callers act on is
//!   the stable code: an unknown key is [`IssuerErrorCode::Internal`] (ours to fix), anything else from
//!   the HSM is [`IssuerErrorCode::HsmUnavailable`].
//! - The server's private `ApiError` (`server::error`) is the HTTP response: it wraps
//!   an [`Error`] and renders it with the status of its code; a 5xx carries no
//!   internal detail (the log has it).
//!
//! No message carries a code, a token, a PIN or key material: only labels, key ids,
//! PKCS#11 function and return-value names, file paths and policy terms.

use std::path::PathBuf;

use alga_protocol::CodeFormatError;
use alga_protocol::issuer_api::IssuerErrorCode;
use alga_protocol::signlog::ChainBreak;
use time::OffsetDateTime;

use crate::hsm::HsmError;

/// Every failure of the issuer library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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

    /// The HSM (the key store) failed or refused: unavailable, PIN refused, logins
    /// stopped, token missing, a key not on the token… See [`HsmError`], the one
    /// mapping of PKCS#11 return values.
    #[error(transparent)]
    Hsm(#[from] HsmError),

    /// A signing-log file or directory operation failed.
    #[error("signing log: {context}: {source}")]
    SignlogIo {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The signing log on disk does not verify (edited, truncated in the middle,
    /// reordered).
    #[error("signing log {file} is damaged: {source}")]
    SignlogDamaged {
        file: PathBuf,
        #[source]
        source: ChainBreak,
    },

    /// A signing-log file name and its first record disagree, or a file does not start
    /// where the previous one ended.
    #[error("signing log {file}: {reason}")]
    SignlogInconsistent { file: PathBuf, reason: String },

    /// The signing log is not accepting records: an earlier write failed, or the
    /// writer stopped. Nothing is signed until the issuer is restarted.
    #[error("the signing log is unavailable")]
    SignlogUnavailable,

    /// The server's TLS files cannot be read or used (names the file, never its
    /// content).
    #[error("TLS configuration: {0}")]
    Tls(String),

    /// The server's listening socket cannot be used.
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),

    /// A server start-up task failed (a check of the policy against the key
    /// endorsements, a task that panicked).
    #[error("start-up: {0}")]
    Startup(String),

    /// Something that should not happen did (a key store without an active key of a
    /// kind, a certificate that does not check out after signing). Not the caller's
    /// fault; the log has the detail.
    #[error("internal: {reason}")]
    Internal { reason: String },
}

impl Error {
    /// The stable API error code of this error.
    pub fn code(&self) -> IssuerErrorCode {
        match self {
            Error::UnknownEdition { .. } => IssuerErrorCode::UnknownEdition,
            Error::EditionNotPaid { .. } => IssuerErrorCode::EditionNotPaid,
            Error::BeyondPolicy { .. } => IssuerErrorCode::BeyondPolicy,
            Error::CsrInvalid { .. } => IssuerErrorCode::CsrInvalid,
            Error::CodeMalformed(_) => IssuerErrorCode::CodeMalformed,
            Error::BadRequest { .. } => IssuerErrorCode::BadRequest,
            Error::CaExpiring { .. } => IssuerErrorCode::CaExpiring,
            // A key that should exist but does not is our problem, not the HSM's mood.
            Error::Hsm(HsmError::UnknownKey { .. }) => IssuerErrorCode::Internal,
            Error::Hsm(_) => IssuerErrorCode::HsmUnavailable,
            // There is no dedicated code; this one tells the gateway to retry later.
            Error::SignlogIo { .. }
            | Error::SignlogDamaged { .. }
            | Error::SignlogInconsistent { .. }
            | Error::SignlogUnavailable => IssuerErrorCode::HsmUnavailable,
            // Start-up failures: never a request's answer.
            Error::Tls(_) | Error::Listener(_) | Error::Startup(_) => IssuerErrorCode::Internal,
            Error::Internal { .. } => IssuerErrorCode::Internal,
        }
    }

    pub(crate) fn beyond(reason: impl Into<String>) -> Error {
        Error::BeyondPolicy {
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(reason: impl Into<String>) -> Error {
        Error::Internal {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::KeyKind;

    fn io() -> std::io::Error {
        std::io::Error::other("x")
    }

    #[test]
    fn every_error_has_its_stable_code() {
        let table: Vec<(Error, IssuerErrorCode)> = vec![
            (
                Error::UnknownEdition {
                    edition: "x".into(),
                },
                IssuerErrorCode::UnknownEdition,
            ),
            (
                Error::EditionNotPaid {
                    edition: "x".into(),
                },
                IssuerErrorCode::EditionNotPaid,
            ),
            (Error::beyond("x"), IssuerErrorCode::BeyondPolicy),
            (
                Error::CsrInvalid { reason: "x".into() },
                IssuerErrorCode::CsrInvalid,
            ),
            (
                Error::CodeMalformed(CodeFormatError::WrongLength { found: 3 }),
                IssuerErrorCode::CodeMalformed,
            ),
            (
                Error::BadRequest { reason: "x".into() },
                IssuerErrorCode::BadRequest,
            ),
            (
                Error::CaExpiring {
                    version: 1,
                    not_after: OffsetDateTime::UNIX_EPOCH,
                },
                IssuerErrorCode::CaExpiring,
            ),
            (
                Error::SignlogIo {
                    context: "fsync".into(),
                    source: io(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                Error::SignlogDamaged {
                    file: "f".into(),
                    source: ChainBreak {
                        seq: 1,
                        damage: alga_protocol::signlog::Damage::HashMismatch,
                    },
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                Error::SignlogInconsistent {
                    file: "f".into(),
                    reason: "x".into(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (Error::SignlogUnavailable, IssuerErrorCode::HsmUnavailable),
            (Error::Tls("x".into()), IssuerErrorCode::Internal),
            (Error::Listener(io()), IssuerErrorCode::Internal),
            (Error::Startup("x".into()), IssuerErrorCode::Internal),
            (Error::internal("x"), IssuerErrorCode::Internal),
        ];
        for (err, code) in table {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    /// The key store's answers: an unknown key is ours to fix, every other HSM failure
    /// is "HSM unavailable".
    #[test]
    fn every_hsm_error_is_unavailable_but_an_unknown_key() {
        let s = || String::from("x");
        let table: Vec<(HsmError, IssuerErrorCode)> = vec![
            (
                HsmError::ModuleLoad {
                    path: "m.so".into(),
                    reason: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::Config { reason: s() },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::TokenNotFound { label: "t".into() },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::TokenAmbiguous { label: s() },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::NoFreeSlot { label: s() },
                IssuerErrorCode::HsmUnavailable,
            ),
            (HsmError::PinIncorrect, IssuerErrorCode::HsmUnavailable),
            (HsmError::PinLocked, IssuerErrorCode::HsmUnavailable),
            (
                HsmError::LoginStopped {
                    rv: "CKR_PIN_INCORRECT",
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::SessionLost {
                    function: "C_Sign".into(),
                    rv: "CKR_DeviceError".into(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (HsmError::unavailable("x"), IssuerErrorCode::HsmUnavailable),
            (
                HsmError::Refused {
                    function: s(),
                    rv: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::UnknownKey {
                    kind: KeyKind::License,
                    version: 9,
                },
                IssuerErrorCode::Internal,
            ),
            (
                HsmError::KeysMissing {
                    label: s(),
                    missing: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::KeysIncomplete {
                    label: s(),
                    missing: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::AlreadyInitialized {
                    label: s(),
                    present: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::PartialKeySet {
                    label: s(),
                    missing: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::UnsafeKeyAttributes {
                    kid: s(),
                    problems: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::InvalidObject {
                    label: s(),
                    reason: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::Certificate { reason: s() },
                IssuerErrorCode::HsmUnavailable,
            ),
            (
                HsmError::UnexpectedOutput {
                    operation: "C_Sign",
                    reason: s(),
                },
                IssuerErrorCode::HsmUnavailable,
            ),
            (HsmError::Output(io()), IssuerErrorCode::HsmUnavailable),
        ];
        for (hsm, code) in table {
            let text = hsm.to_string();
            let err = Error::from(hsm);
            // Nested, not re-worded: the HSM's message is the error's.
            assert_eq!(err.to_string(), text);
            assert_eq!(err.code(), code, "{text}");
        }
    }
}
