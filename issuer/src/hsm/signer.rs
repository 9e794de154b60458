//! rcgen external signers backed by the HSM.
//!
//! rcgen's [`rcgen::SigningKey::sign`] is synchronous and gets the whole message. The
//! signers here hash it with SHA-256 locally, have the HSM sign the digest with
//! `CKM_ECDSA` (raw `r‖s`), and re-encode that as the DER ECDSA-Sig-Value X.509 wants.
//!
//! - [`CaSigner`] is generic over [`KeyOps`], so `ops::credential` signs appliance
//!   certificates the same way with the HSM or with software keys in unit tests. Its
//!   `sign` waits for the key store's future on the calling thread (parking it):
//!   **call it from a blocking thread** (`tokio::task::spawn_blocking`), never from
//!   async code. With [`super::Hsm`] the work itself runs on the HSM worker pool.
//! - `SessionSigner` signs on a session the caller already holds: the key ceremonies
//!   use it to self-sign a new CA certificate before any worker pool exists.
//!
//! Dependencies go one way: `objects` (the key ceremonies' objects) uses these
//! signers to certify the root and CA keys it creates; this module needs nothing of
//! `objects`, only the signing mechanism (`mechanism::ecdsa_sign`) and the key
//! encodings of `keyring`. A signer is the lower layer: it turns one key handle into
//! something rcgen can sign with, whatever object it is.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use rcgen::{PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm, SigningKey};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::error::HsmError;
use super::mechanism::ecdsa_sign;
use crate::keyring::{KeyKind, KeyOps, sec1_from_spki};

/// An appliance CA key version as an rcgen signing key, over any [`KeyOps`].
///
/// ```text
/// // on a blocking thread:
/// let signer = CaSigner::active(keys.clone())?;
/// let issuer = signer.issuer()?;                 // rcgen::Issuer from the CA cert on the token
/// let cert = params.signed_by(&csr_public_key, &issuer)?;
/// ```
#[derive(Clone)]
pub struct CaSigner<K> {
    keys: K,
    version: u32,
    /// SEC1 uncompressed point (what rcgen calls the public key's `der_bytes`).
    point: Vec<u8>,
}

impl<K> std::fmt::Debug for CaSigner<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<K: KeyOps> CaSigner<K> {
    /// The signer of CA key `version`.
    pub fn new(keys: K, version: u32) -> Result<CaSigner<K>, HsmError> {
        let unknown = HsmError::UnknownKey {
            kind: KeyKind::ApplianceCa,
            version,
        };
        let info = keys
            .keys(KeyKind::ApplianceCa)
            .into_iter()
            .find(|k| k.version == version)
            .ok_or(unknown)?;
        let point = info
            .public_key_spki
            .as_deref()
            .and_then(sec1_from_spki)
            .ok_or_else(|| HsmError::InvalidObject {
                label: info.kid.clone(),
                reason: "no P-256 public key".into(),
            })?;
        Ok(CaSigner {
            keys,
            version,
            point,
        })
    }

    /// The signer of the active (highest) CA key version.
    pub fn active(keys: K) -> Result<CaSigner<K>, HsmError> {
        let version = keys.active_version(KeyKind::ApplianceCa);
        CaSigner::new(keys, version)
    }

    /// The CA key version this signer uses.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The CA certificate (DER) of this signer's version.
    pub fn certificate_der(&self) -> Result<Vec<u8>, HsmError> {
        self.keys
            .ca_certificates()
            .into_iter()
            .find(|c| c.version == self.version)
            .map(|c| c.der)
            .ok_or_else(|| HsmError::Certificate {
                reason: format!("no certificate for CA key version {}", self.version),
            })
    }

    /// An rcgen issuer: subject, key identifier and key usages from this version's CA
    /// certificate, signing with this signer.
    pub fn issuer(self) -> Result<rcgen::Issuer<'static, CaSigner<K>>, HsmError> {
        let der = self.certificate_der()?;
        rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(der), self).map_err(|e| {
            HsmError::Certificate {
                reason: format!("rcgen cannot use it as an issuer: {e}"),
            }
        })
    }
}

impl<K> PublicKeyData for CaSigner<K> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl<K: KeyOps> SigningKey for CaSigner<K> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        let raw = block_on(
            self.keys
                .sign_digest(KeyKind::ApplianceCa, self.version, digest),
        )
        .map_err(|e| {
            tracing::warn!(key.version = self.version, error = %e, "CA signature failed");
            rcgen::Error::RemoteKeyError
        })?;
        der_signature(&raw).ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// Re-encodes raw `r‖s` as a DER ECDSA-Sig-Value.
pub fn der_signature(raw: &[u8; 64]) -> Option<Vec<u8>> {
    let sig = p256::ecdsa::Signature::from_slice(raw).ok()?;
    Some(sig.to_der().as_bytes().to_vec())
}

/// Drives a future to completion on this thread, parking it while the future waits.
/// (A dozen lines instead of a dependency on an executor; no `unsafe`.)
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => thread::park(),
        }
    }
}

/// Signs with a key on a session the caller holds (the key ceremonies).
pub(crate) struct SessionSigner<'s> {
    session: &'s Session,
    key: ObjectHandle,
    point: Vec<u8>,
}

impl<'s> SessionSigner<'s> {
    pub(crate) fn new(
        session: &'s Session,
        key: ObjectHandle,
        spki: &[u8],
    ) -> Result<SessionSigner<'s>, HsmError> {
        let point = sec1_from_spki(spki).ok_or_else(|| HsmError::Certificate {
            reason: "the CA key is not a P-256 key".into(),
        })?;
        Ok(SessionSigner {
            session,
            key,
            point,
        })
    }
}

impl PublicKeyData for SessionSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for SessionSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        let raw = ecdsa_sign(self.session, self.key, &digest).map_err(|e| {
            tracing::warn!(error = %e, "CA self-signature failed");
            rcgen::Error::RemoteKeyError
        })?;
        der_signature(&raw).ok_or(rcgen::Error::RemoteKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "runs on the HSM's own worker thread, never on the async runtime"
    )]
    fn block_on_waits_for_a_value_sent_from_another_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = thread::spawn(move || {
            thread::sleep(std::time::Duration::from_millis(20));
            let _ = tx.send(42u32);
        });
        assert_eq!(block_on(rx).ok(), Some(42));
        sender.join().expect("sender thread");
    }

    #[test]
    fn raw_signatures_become_der() {
        let mut raw = [0u8; 64];
        raw[31] = 1;
        raw[63] = 2;
        assert_eq!(
            der_signature(&raw),
            Some(vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02])
        );
        assert_eq!(der_signature(&[0u8; 64]), None, "r = 0 is not a signature");
    }
}
