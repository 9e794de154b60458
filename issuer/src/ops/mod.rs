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
//! Errors: the library's one [`Error`], whose every variant has a
//! stable `IssuerErrorCode`. Messages never carry a code, a token or key material.

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
pub(crate) type ErrCheck = fn(&Error) -> bool;

use alga_policies::{Edition, Policy};
use alga_protocol::signlog::SignEvent;
use time::OffsetDateTime;

use crate::Error;
use crate::keyring::{KeyInfo, KeyKind, KeyOps};

/// The result of a signing operation and the signing-log event that must be durably
/// written before the result is handed to anyone.
#[derive(Debug)]
#[must_use = "a signature must be logged before it is returned"]
pub struct Signed<T> {
    pub value: T,
    pub event: SignEvent,
}

/// The edition `name` of the policy.
pub(crate) fn edition<'p>(policy: &'p Policy, name: &str) -> Result<&'p Edition, Error> {
    policy.edition(name).ok_or_else(|| Error::UnknownEdition {
        edition: name.to_owned(),
    })
}

/// The metadata of the active version of `kind`.
pub(crate) fn active_key<K: KeyOps>(keys: &K, kind: KeyKind) -> Result<KeyInfo, Error> {
    let version = keys.active_version(kind);
    keys.keys(kind)
        .into_iter()
        .find(|k| k.version == version)
        .ok_or_else(|| Error::internal(format!("no active {kind} key (version {version})")))
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
    fn whole_seconds_drops_the_fraction_and_normalizes_to_utc() {
        let t = time::macros::datetime!(2030-01-01 12:00:00.999 +02:00);
        assert_eq!(
            whole_seconds(t),
            time::macros::datetime!(2030-01-01 10:00:00 UTC)
        );
    }
}
