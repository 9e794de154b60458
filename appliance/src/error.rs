//! The one error type of the appliance client, and its exit codes.
//!
//! Every variant's message is a sentence for the operator at the setup screen: what
//! happened and what to do. None of them contains an install code, a token or a key.
//! The exit codes are a contract with the setup engine (which maps them to screens):
//! see the table in the crate docs and `--help`.

use std::path::PathBuf;

use alga_protocol::CodeFormatError;

/// The exit codes, one per failure class (the table in the crate docs).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// An unexpected failure (a bug, or the service rejected our own CSR).
    pub const INTERNAL: i32 = 1;
    /// Bad command-line usage (clap's own exit code).
    pub const USAGE: i32 = 2;
    /// The code is not well formed: a typo, found offline.
    pub const CODE_MALFORMED: i32 = 10;
    /// The service does not know the code (or it does not match).
    pub const CODE_INVALID: i32 = 11;
    /// The code expired.
    pub const CODE_EXPIRED: i32 = 12;
    /// The code was revoked (a newer one was issued).
    pub const CODE_REVOKED: i32 = 13;
    /// The code was already used.
    pub const CODE_ALREADY_USED: i32 = 14;
    /// The license service could not be reached.
    pub const UNREACHABLE: i32 = 20;
    /// The license service answered that it is busy or unavailable.
    pub const SERVICE_UNAVAILABLE: i32 = 21;
    /// The TLS connection failed (the service is not the one the CA bundle trusts).
    pub const TLS: i32 = 22;
    /// The service's answer is malformed or does not verify (license, certificate).
    pub const BAD_RESPONSE: i32 = 23;
    /// The answer does not chain to the pinned trust root, or grants more than the
    /// root allows: not signed by the license authority's HSM.
    pub const UNTRUSTED: i32 = 24;
    /// Check-in: this appliance's credential was revoked.
    pub const APPLIANCE_REVOKED: i32 = 30;
    /// Check-in: the tenant is suspended.
    pub const TENANT_SUSPENDED: i32 = 31;
    /// Check-in: the service did not accept the appliance's credential.
    pub const CREDENTIAL_REJECTED: i32 = 32;
    /// Check-in: a rebuild (a re-issued code redeemed on another machine) replaced
    /// this appliance; it never gets another license.
    pub const APPLIANCE_REPLACED: i32 = 33;
    /// A relayed check-in was refused before it was a check-in: already accepted
    /// once, too old, or its signature or certificate does not authenticate it.
    pub const RELAYED_REFUSED: i32 = 34;
    /// A local file could not be read or written.
    pub const LOCAL_IO: i32 = 40;
    /// A local input (Secret manifest, key, CA bundle) is malformed.
    pub const LOCAL_INPUT: i32 = 41;
    /// The appliance's database failed.
    pub const DATABASE: i32 = 50;
    /// The appliance's database already holds a different tenant.
    pub const TENANT_CONFLICT: i32 = 51;
}

/// Everything that can go wrong in `redeem`, `check-in` and `bootstrap`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The typed code fails the offline check (length, alphabet, check symbols).
    #[error(
        "the install code is not valid: {0}. Type it again exactly as in the email; nothing was sent to the license service"
    )]
    CodeMalformed(#[source] CodeFormatError),
    /// The service says the code is malformed (our offline check passed: a version skew).
    #[error(
        "the license service says the install code is not well formed: type it again exactly as in the email"
    )]
    CodeMalformedByService,
    /// Unknown or non-matching code (the service does not say which).
    #[error(
        "the license service does not recognise this install code: check it against the email; if it is right, ask for a re-issued code"
    )]
    CodeInvalid,
    /// The code's time ran out.
    #[error("this install code has expired: ask for a re-issued code")]
    CodeExpired,
    /// A newer code replaced this one.
    #[error(
        "this install code was revoked (a newer one was issued): use the newest code from your email, or ask for a re-issued code"
    )]
    CodeRevoked,
    /// The code was consumed by another installation.
    #[error("this install code has already been used: ask for a re-issued code")]
    CodeAlreadyUsed,
    /// No connection to the service after the retries.
    #[error(
        "the license service at {url} could not be reached ({detail}): check the network, DNS and proxy settings of this appliance and the service URL, then try again"
    )]
    Unreachable { url: String, detail: String },
    /// 429/503 from the service.
    #[error("the license service is busy or temporarily unavailable: try again in a few minutes")]
    ServiceUnavailable,
    /// The TLS handshake failed: most likely not the service the CA bundle trusts.
    #[error(
        "the secure connection to the license service at {url} failed ({detail}): check that the service URL and the CA bundle are the ones you were given; do not continue with another bundle"
    )]
    Tls { url: String, detail: String },
    /// The answer cannot be used: malformed, or the license or certificate does not verify.
    #[error(
        "the license service's answer could not be verified ({0}): nothing was installed; try again, and contact support if it persists"
    )]
    BadResponse(String),
    /// The license or credential does not chain to the pinned trust root, or says
    /// more than the root allows. Not a transient failure: a security event.
    #[error(
        "the license service's answer is not from the license authority this appliance trusts ({0}): nothing was installed; do not retry with another trust root file, and report this to support"
    )]
    Untrusted(alga_protocol::trust::TrustError),
    /// The service refused our own request (CSR), or another unexpected error status.
    #[error("the license service refused the request ({code}: {message}): contact support")]
    Refused { code: String, message: String },
    /// Check-in: the appliance's credential was revoked.
    #[error(
        "this appliance's credential has been revoked: it can no longer check in; reinstall it with a re-issued code or contact support"
    )]
    ApplianceRevoked,
    /// Check-in: the tenant is suspended.
    #[error("the tenant of this appliance is suspended: contact support or your account manager")]
    TenantSuspended,
    /// Check-in: the credential was not accepted.
    #[error(
        "the license service did not accept this appliance's credential: if it has expired, reinstall with a re-issued code"
    )]
    CredentialRejected,
    /// Check-in: a rebuild's redeem retired this appliance. Terminal, like a
    /// revocation, but no one banned it: the tenant's license moved to the rebuilt
    /// machine, so the operator is pointed there rather than to a reinstall.
    #[error(
        "this appliance was replaced by a rebuild (a re-issued install code was redeemed on another machine): it is no longer licensed and will not get another license; use the rebuilt appliance, or contact support if there was no rebuild"
    )]
    ApplianceReplaced,
    /// A relayed check-in was refused before it was a check-in (replayed, too old, or
    /// not authenticated by its signature and certificate). `detail` is the service's
    /// message (nothing secret).
    #[error(
        "the license service refused the relayed check-in ({detail}): make a new request on the appliance (`alga-appliance check-in --offline-request`) and relay that one"
    )]
    RelayedRefused { detail: String },
    /// An offline response that is not the answer to this appliance's pending
    /// request (another request, another appliance, or no request pending).
    #[error("{0}: nothing was installed")]
    NotOurResponse(String),
    /// An offline check-in answer without a license (the tenant's edition has none):
    /// nothing in it is signed, so offline it cannot be told from a relay's forgery.
    #[error(
        "the relayed answer says this appliance's tenant no longer has a licensed edition, but an answer without a license carries no signature, so an appliance that checks in offline cannot tell it from a forged one: nothing was installed and the installed license stays until it expires; to move this appliance to the tenant's new edition, reinstall it with a re-issued code"
    )]
    OfflineUnlicensed,
    /// Reading or writing a local file failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A local input is malformed.
    #[error("{what} is not usable: {detail}")]
    LocalInput { what: String, detail: String },
    /// The appliance's own database failed.
    #[error("the appliance database failed: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The database already holds another tenant: never replaced silently.
    #[error(
        "this appliance's database already belongs to tenant {existing}, not {wanted}: refusing to replace it; reinstall the appliance from scratch to change its tenant"
    )]
    TenantConflict {
        existing: uuid::Uuid,
        wanted: uuid::Uuid,
    },
    /// `seed-license` before `create-tenant`.
    #[error("the appliance has no tenant yet: run `bootstrap create-tenant` first")]
    NoTenant,
    /// A bug or an unclassified failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code of this error (the table in the crate docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CodeMalformed(_) | Error::CodeMalformedByService => exit::CODE_MALFORMED,
            Error::CodeInvalid => exit::CODE_INVALID,
            Error::CodeExpired => exit::CODE_EXPIRED,
            Error::CodeRevoked => exit::CODE_REVOKED,
            Error::CodeAlreadyUsed => exit::CODE_ALREADY_USED,
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::ServiceUnavailable => exit::SERVICE_UNAVAILABLE,
            Error::Tls { .. } => exit::TLS,
            Error::BadResponse(_) => exit::BAD_RESPONSE,
            Error::Untrusted(_) => exit::UNTRUSTED,
            Error::Refused { .. } | Error::Internal(_) => exit::INTERNAL,
            Error::ApplianceRevoked => exit::APPLIANCE_REVOKED,
            Error::TenantSuspended => exit::TENANT_SUSPENDED,
            Error::CredentialRejected => exit::CREDENTIAL_REJECTED,
            Error::ApplianceReplaced => exit::APPLIANCE_REPLACED,
            Error::RelayedRefused { .. } => exit::RELAYED_REFUSED,
            Error::NotOurResponse(_) | Error::OfflineUnlicensed => exit::BAD_RESPONSE,
            Error::Io { .. } => exit::LOCAL_IO,
            Error::LocalInput { .. } => exit::LOCAL_INPUT,
            Error::Database(_) => exit::DATABASE,
            Error::TenantConflict { .. } | Error::NoTenant => exit::TENANT_CONFLICT,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn input(what: impl Into<String>, detail: impl std::fmt::Display) -> Error {
        Error::LocalInput {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn bad(detail: impl Into<String>) -> Error {
        Error::BadResponse(detail.into())
    }

    /// A verification failure against the trust root. Malformed input, times (a clock
    /// or retry matter) and a license naming another tenant, appliance or edition than
    /// the answer (a service fault) are [`Error::BadResponse`]; whatever the root did
    /// not sign or allow is [`Error::Untrusted`].
    pub(crate) fn trust(e: alga_protocol::trust::TrustError) -> Error {
        use alga_protocol::trust::TrustError as T;
        match e {
            T::NotYetValid
            | T::Expired
            | T::LicenseMalformed
            | T::ChainMalformed
            | T::WrongTenant
            | T::WrongAppliance
            | T::WrongEdition => Error::BadResponse(e.to_string()),
            T::Roots(why) => Error::input("the trust root file", why),
            other => Error::Untrusted(other),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every class has its own code: the setup engine tells them apart by it.
    #[test]
    fn exit_codes_are_distinct_per_class() {
        let cases: Vec<(Error, i32)> = vec![
            (
                Error::CodeMalformed(CodeFormatError::Mistyped { group: Some(2) }),
                10,
            ),
            (Error::CodeInvalid, 11),
            (Error::CodeExpired, 12),
            (Error::CodeRevoked, 13),
            (Error::CodeAlreadyUsed, 14),
            (
                Error::Unreachable {
                    url: "u".into(),
                    detail: "d".into(),
                },
                20,
            ),
            (Error::ServiceUnavailable, 21),
            (
                Error::Tls {
                    url: "u".into(),
                    detail: "d".into(),
                },
                22,
            ),
            (Error::bad("x"), 23),
            (
                Error::Untrusted(alga_protocol::trust::TrustError::NotEndorsed),
                24,
            ),
            (Error::ApplianceRevoked, 30),
            (Error::TenantSuspended, 31),
            (Error::CredentialRejected, 32),
            (Error::ApplianceReplaced, 33),
            (
                Error::RelayedRefused {
                    detail: "replayed".into(),
                },
                34,
            ),
            (Error::NotOurResponse("x".into()), 23),
            (Error::OfflineUnlicensed, 23),
            (Error::input("x", "y"), 41),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }

    #[test]
    fn used_and_revoked_say_reissue() {
        for e in [
            Error::CodeAlreadyUsed,
            Error::CodeRevoked,
            Error::CodeExpired,
        ] {
            assert!(e.to_string().contains("re-issued code"), "{e}");
        }
        let typo = Error::CodeMalformed(CodeFormatError::Mistyped { group: Some(3) });
        assert!(typo.to_string().contains("group 3"), "{typo}");
    }
}
