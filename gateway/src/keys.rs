//! The issuer's public keys (JWKS, appliance CA chain), fetched at start-up and
//! refreshed periodically so a rotated appliance CA is trusted (TLS roots) and
//! published (`/ca.pem`, `/.well-known/jwks.json`) without a restart.

use std::sync::{Arc, RwLock};

use alga_protocol::issuer_api::PublicKeys;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The last good copy of the issuer's public keys.
#[derive(Debug, Default)]
pub struct KeyCache {
    inner: RwLock<Option<Arc<PublicKeys>>>,
}

impl KeyCache {
    /// The cached keys, if any fetch succeeded yet.
    pub fn get(&self) -> Option<Arc<PublicKeys>> {
        self.inner.read().ok().and_then(|g| g.clone())
    }

    /// Replaces the cache; returns whether the CA chain changed.
    pub fn set(&self, keys: PublicKeys) -> bool {
        let Ok(mut g) = self.inner.write() else {
            return false;
        };
        let changed = g
            .as_ref()
            .is_none_or(|old| old.ca_chain_pem != keys.ca_chain_pem);
        *g = Some(Arc::new(keys));
        changed
    }
}

/// The appliance CA certificates of a key set (DER).
pub fn appliance_cas(keys: &PublicKeys) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(keys.ca_chain_pem.as_bytes())
        .filter_map(|c| match c {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unparsable appliance CA certificate");
                None
            }
        })
        .collect()
}
