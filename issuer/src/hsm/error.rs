//! Every way the HSM can fail, and the one place where PKCS#11 return values are mapped.
//!
//! Error policy (the library's is at the top of `crate::error`): [`HsmError`] is the
//! one error type of the issuer besides [`crate::Error`], and nested in it as
//! [`Error::Hsm`](crate::Error::Hsm). The `hsm` module's functions return it (opening
//! the token, the worker pool, the key ceremonies); the key store's
//! [`KeyOps`](crate::keyring::KeyOps) answers hand it on as `Error::Hsm`, and the
//! stable API code is decided there (`Error::code`). `map_cryptoki` is the only
//! function that looks at a `cryptoki` error or a `CKR_*` value: everything else
//! matches on [`HsmError`] (the workers retry on [`HsmError::is_session_lost`]). A
//! return value it does not know is "HSM unavailable", never a panic. No error ever
//! carries a PIN or key material: only labels, key ids, PKCS#11 function names and
//! return-value names.

use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

use crate::keyring::KeyKind;

/// Why an HSM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialized (wrong path, not a
    /// PKCS#11 library, or its `C_Initialize` failed).
    #[error("cannot load the PKCS#11 module {path}: {reason}")]
    ModuleLoad { path: PathBuf, reason: String },

    /// The configuration cannot work (for example zero workers or an over-long label).
    #[error("invalid HSM configuration: {reason}")]
    Config { reason: String },

    /// No initialized token carries the configured label in any slot.
    #[error("no token labelled {label:?} is present")]
    TokenNotFound { label: String },

    /// More than one token carries the configured label: refusing to guess which one
    /// holds the keys.
    #[error("more than one token is labelled {label:?}: labels must be unique")]
    TokenAmbiguous { label: String },

    /// `token init` found no slot without an initialized token.
    #[error("no free slot to initialize token {label:?} in")]
    NoFreeSlot { label: String },

    /// The token refused the PIN (incorrect, or malformed for this token).
    #[error("the HSM refused the PIN")]
    PinIncorrect,

    /// The PIN is locked after too many failed attempts; the security officer must reset it.
    #[error("the HSM PIN is locked")]
    PinLocked,

    /// The token refused the PIN (incorrect or locked) when a worker logged in again
    /// after a lost session. The pool latched it: no further `C_Login` until the
    /// process is restarted (a real HSM counts every refused login and locks the PIN
    /// at its limit), and every job answers this, which callers see as "HSM
    /// unavailable".
    #[error(
        "the HSM refused the PIN ({rv}) after a lost session: no further login until the issuer is restarted"
    )]
    LoginStopped { rv: &'static str },

    /// The session, the login or a cached object handle was lost (session closed,
    /// device error, token removed, user logged out). A worker recovers from this by
    /// reopening its session, logging in again and retrying once.
    #[error("HSM session lost ({function}: {rv})")]
    SessionLost { function: String, rv: String },

    /// The HSM is not usable right now: an unexpected or unknown return value, a
    /// general error, or the worker pool is gone. Retrying later may help.
    #[error("the HSM is unavailable ({context})")]
    Unavailable { context: String },

    /// The token refused a request that is deterministic and would fail again (wrong
    /// mechanism for the key, bad template, data length): a bug or a misconfigured token.
    #[error("the HSM refused the request ({function}: {rv})")]
    Refused { function: String, rv: String },

    /// The requested key (kind, version) is not on the token, or is of another kind.
    #[error("key {kind} version {version} is not on the token")]
    UnknownKey { kind: KeyKind, version: u32 },

    /// The token does not hold the complete key set: serving never creates keys.
    #[error("no keys on token {label:?} ({missing}): run `alga-issuer keys init`")]
    KeysMissing { label: String, missing: String },

    /// The token holds the first key set but lacks what later releases added (the
    /// trust root and what it signs, the log key): serving never creates keys, and
    /// `keys init --if-missing` adds exactly these.
    #[error("token {label:?} lacks {missing}: run `alga-issuer keys init --if-missing` to add it")]
    KeysIncomplete { label: String, missing: String },

    /// `keys init` on a token that already holds alga keys (without `--if-missing`).
    #[error(
        "keys already initialized on token {label:?} ({present}); use `keys rotate` for new versions"
    )]
    AlreadyInitialized { label: String, present: String },

    /// `keys init --if-missing` found only part of the key set: a human must look.
    #[error("token {label:?} holds an incomplete key set, missing: {missing}")]
    PartialKeySet { label: String, missing: String },

    /// A key's protection attributes are not what the design requires (read back
    /// after creation, and checked again at every open).
    #[error("key {kid} does not have the required protection: {problems}")]
    UnsafeKeyAttributes { kid: String, problems: String },

    /// An object on the token is malformed (bad EC point, metadata, certificate).
    #[error("object {label} on the token is invalid: {reason}")]
    InvalidObject { label: String, reason: String },

    /// The appliance CA certificate could not be built or does not match its key.
    #[error("appliance CA certificate: {reason}")]
    Certificate { reason: String },

    /// The HSM returned output of an unexpected shape (for example a signature that is
    /// not 64 bytes).
    #[error("unexpected output from {operation}: {reason}")]
    UnexpectedOutput {
        operation: &'static str,
        reason: String,
    },

    /// Writing the key list failed.
    #[error("cannot write the key list: {0}")]
    Output(#[from] std::io::Error),
}

impl HsmError {
    /// Whether a worker should reopen its session, log in again and retry once.
    pub fn is_session_lost(&self) -> bool {
        matches!(self, HsmError::SessionLost { .. })
    }

    pub(crate) fn unavailable(context: impl Into<String>) -> HsmError {
        HsmError::Unavailable {
            context: context.into(),
        }
    }
}

/// What the answer to a PKCS#11 call means for us; see [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RvClass {
    /// The PIN was refused.
    PinIncorrect,
    /// The PIN is locked.
    PinLocked,
    /// Session, login or handle lost: reopen and retry once.
    SessionLost,
    /// Deterministic refusal: retrying does not help.
    Refused,
    /// Anything else, including values we have never seen.
    Unavailable,
}

/// Classifies a PKCS#11 return value. The single table of return values.
pub(crate) fn classify(rv: RvError) -> RvClass {
    use RvError as R;
    match rv {
        R::PinIncorrect | R::PinInvalid | R::PinLenRange | R::PinExpired => RvClass::PinIncorrect,
        R::PinLocked => RvClass::PinLocked,
        R::SessionHandleInvalid
        | R::SessionClosed
        | R::UserNotLoggedIn
        | R::ObjectHandleInvalid
        | R::KeyHandleInvalid
        | R::DeviceError
        | R::DeviceRemoved
        | R::TokenNotPresent
        | R::TokenNotRecognized
        | R::OperationActive
        | R::OperationNotInitialized => RvClass::SessionLost,
        R::MechanismInvalid
        | R::MechanismParamInvalid
        | R::KeyTypeInconsistent
        | R::KeyFunctionNotPermitted
        | R::KeySizeRange
        | R::DataLenRange
        | R::DataInvalid
        | R::ArgumentsBad
        | R::AttributeReadOnly
        | R::AttributeSensitive
        | R::AttributeTypeInvalid
        | R::AttributeValueInvalid
        | R::TemplateIncomplete
        | R::TemplateInconsistent
        | R::CurveNotSupported
        | R::DomainParamsInvalid
        | R::ActionProhibited
        | R::SessionReadOnly
        | R::TokenWriteProtected
        | R::UserTypeInvalid
        | R::UserPinNotInitialized
        | R::FunctionNotSupported => RvClass::Refused,
        _ => RvClass::Unavailable,
    }
}

/// Maps any `cryptoki` error to an [`HsmError`]. The one place PKCS#11 errors are read.
pub(crate) fn map_cryptoki(err: CkError) -> HsmError {
    match err {
        CkError::Pkcs11(rv, function) => {
            let function = function_name(function);
            let rv_name = format!("CKR_{rv:?}");
            match classify(rv) {
                RvClass::PinIncorrect => HsmError::PinIncorrect,
                RvClass::PinLocked => HsmError::PinLocked,
                RvClass::SessionLost => HsmError::SessionLost {
                    function,
                    rv: rv_name,
                },
                RvClass::Refused => HsmError::Refused {
                    function,
                    rv: rv_name,
                },
                RvClass::Unavailable => HsmError::Unavailable {
                    context: format!("{function}: {rv_name}"),
                },
            }
        }
        // A module that cannot even be loaded is reported by the loader with its path;
        // reaching this arm means a later call tripped over it.
        CkError::LibraryLoading(e) => HsmError::unavailable(format!("PKCS#11 module: {e}")),
        CkError::NullFunctionPointer | CkError::MissingSymbol(_) | CkError::NotSupported => {
            HsmError::unavailable(format!("PKCS#11 module lacks a function: {err}"))
        }
        other => HsmError::unavailable(format!("PKCS#11 binding: {other}")),
    }
}

/// `C_Sign` rather than `Sign`, so log lines read like the standard.
fn function_name(function: Function) -> String {
    format!("C_{function:?}")
}

/// Whether a `C_Login` failure is "already logged in", which is success: login is per
/// application, so a second session's login reports it.
pub(crate) fn is_already_logged_in(err: &CkError) -> bool {
    matches!(err, CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _))
}

/// Whether `C_Initialize` failed only because this process already initialized the module.
pub(crate) fn is_already_initialized(err: &CkError) -> bool {
    matches!(err, CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_map_to_their_class() {
        let table = [
            (RvError::PinIncorrect, RvClass::PinIncorrect),
            (RvError::PinLenRange, RvClass::PinIncorrect),
            (RvError::PinLocked, RvClass::PinLocked),
            (RvError::SessionHandleInvalid, RvClass::SessionLost),
            (RvError::SessionClosed, RvClass::SessionLost),
            (RvError::DeviceError, RvClass::SessionLost),
            (RvError::DeviceRemoved, RvClass::SessionLost),
            (RvError::TokenNotPresent, RvClass::SessionLost),
            (RvError::UserNotLoggedIn, RvClass::SessionLost),
            (RvError::ObjectHandleInvalid, RvClass::SessionLost),
            (RvError::KeyHandleInvalid, RvClass::SessionLost),
            (RvError::MechanismInvalid, RvClass::Refused),
            (RvError::KeyFunctionNotPermitted, RvClass::Refused),
            (RvError::TemplateInconsistent, RvClass::Refused),
            (RvError::GeneralError, RvClass::Unavailable),
            (RvError::FunctionFailed, RvClass::Unavailable),
            (RvError::HostMemory, RvClass::Unavailable),
            (RvError::VendorDefined(0x8000_1234), RvClass::Unavailable),
        ];
        for (rv, class) in table {
            assert_eq!(classify(rv), class, "{rv:?}");
        }
    }

    #[test]
    fn mapped_errors_name_the_function_and_never_panic() {
        let e = map_cryptoki(CkError::Pkcs11(RvError::DeviceError, Function::Sign));
        assert!(e.is_session_lost());
        assert_eq!(e.to_string(), "HSM session lost (C_Sign: CKR_DeviceError)");
        let e = map_cryptoki(CkError::Pkcs11(
            RvError::VendorDefined(0x8000_0001),
            Function::Login,
        ));
        assert!(matches!(e, HsmError::Unavailable { .. }), "{e:?}");
        let e = map_cryptoki(CkError::Pkcs11(RvError::PinIncorrect, Function::Login));
        assert!(matches!(e, HsmError::PinIncorrect));
        let e = map_cryptoki(CkError::NullFunctionPointer);
        assert!(matches!(e, HsmError::Unavailable { .. }));
    }
}
