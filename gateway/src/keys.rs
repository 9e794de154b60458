//! The issuer's public keys (JWKS, appliance CA chain), fetched at start-up and
//! refreshed periodically so a rotated appliance CA is trusted (TLS roots) and
//! published (`/ca.pem`, `/.well-known/jwks.json`) without a restart.
//!
//! Each load also tells the operator how long the newest appliance CA has left: the
//! issuer refuses to sign credentials with a CA that has expired or nearly has, and
//! every redeem and credential renewal then fails until the CA is rotated. The
//! `alga_gateway_appliance_ca_expiry_seconds` gauge is the signal to alert on; a
//! warning is logged as well once fewer than [`CA_EXPIRY_WARNING`] are left.

use std::sync::{Arc, Mutex, RwLock};

use alga_protocol::issuer_api::PublicKeys;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::metrics::Metrics;

/// How long before the newest appliance CA expires the gateway starts warning.
pub const CA_EXPIRY_WARNING: Duration = Duration::days(90);
/// How often that warning is repeated while the CA chain stays the same (a chain
/// that changed, as at start-up, is warned about at once).
pub const CA_EXPIRY_WARNING_EVERY: Duration = Duration::days(1);

/// The last good copy of the issuer's public keys.
#[derive(Debug, Default)]
pub struct KeyCache {
    inner: RwLock<Option<Arc<PublicKeys>>>,
    /// When the CA expiry warning was last logged.
    ca_warned_at: Mutex<Option<OffsetDateTime>>,
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

    /// [`KeyCache::set`] for keys just fetched from the issuer, at `now`: also sets the
    /// CA expiry gauge from them and warns when the newest appliance CA expires within
    /// [`CA_EXPIRY_WARNING`] (see [`expiry_warning_due`]). Returns whether the CA
    /// chain changed.
    pub fn load(&self, keys: PublicKeys, metrics: &Metrics, now: OffsetDateTime) -> bool {
        let not_after = newest_ca_not_after(&keys);
        let changed = self.set(keys);
        metrics.set_appliance_ca_not_after(not_after);
        let Some(not_after) = not_after else {
            if changed {
                tracing::warn!("the issuer publishes no usable appliance CA certificate");
            }
            return changed;
        };
        let mut warned = self.ca_warned_at.lock().unwrap_or_else(|p| p.into_inner());
        if expiry_warning_due(not_after, now, changed, *warned) {
            *warned = Some(now);
            tracing::warn!(
                ca.not_after = %not_after,
                ca.days_left = (not_after - now).whole_days(),
                "the newest appliance CA expires soon; the issuer will refuse to sign \
                 credentials before then: rotate it (`alga-issuer keys rotate ca`)"
            );
        }
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

/// The notAfter of the newest appliance CA of a key set: the certificate with the
/// latest notBefore (a rotation creates the CA the issuer signs with from then on; the
/// issuer lists oldest first, and on a tie the later one counts). `None` when no
/// certificate of the chain parses.
pub fn newest_ca_not_after(keys: &PublicKeys) -> Option<OffsetDateTime> {
    appliance_cas(keys)
        .iter()
        .filter_map(|der| {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
            let validity = cert.validity();
            Some((
                validity.not_before.to_datetime(),
                validity.not_after.to_datetime(),
            ))
        })
        .max_by_key(|(not_before, _)| *not_before)
        .map(|(_, not_after)| not_after)
}

/// Whole seconds from `now` until `not_after`; negative once it has passed.
pub fn seconds_until(not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (not_after - now).whole_seconds()
}

/// Whether to warn, at `now`, about a newest CA expiring at `not_after`: only within
/// [`CA_EXPIRY_WARNING`] of it, and then for every chain that changed (start-up, a
/// rotation) and otherwise once per [`CA_EXPIRY_WARNING_EVERY`] since `last_warned`,
/// not at every minute's refresh.
pub fn expiry_warning_due(
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    changed: bool,
    last_warned: Option<OffsetDateTime>,
) -> bool {
    not_after - now < CA_EXPIRY_WARNING
        && (changed || last_warned.is_none_or(|t| now - t >= CA_EXPIRY_WARNING_EVERY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alga_protocol::issuer_api::Jwks;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid")
    }

    /// A self-signed CA certificate (PEM) valid from `not_before` to `not_after`.
    fn ca(not_before: OffsetDateTime, not_after: OffsetDateTime) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = not_before;
        params.not_after = not_after;
        params.self_signed(&key).expect("self-signed").pem()
    }

    fn keys(chain: &[String]) -> PublicKeys {
        PublicKeys {
            jwks: Jwks { keys: Vec::new() },
            ca_chain_pem: chain.concat(),
            audit_keys: Vec::new(),
            log_keys: Vec::new(),
        }
    }

    #[test]
    fn the_newest_ca_is_the_one_created_last_whatever_expires_last() {
        let old = ca(t0() - Duration::days(3000), t0() + Duration::days(650));
        let new = ca(t0() - Duration::days(10), t0() + Duration::days(400));
        assert_eq!(
            newest_ca_not_after(&keys(&[old.clone(), new.clone()])),
            Some(t0() + Duration::days(400))
        );
        // The order of the chain does not matter.
        assert_eq!(
            newest_ca_not_after(&keys(&[new, old.clone()])),
            Some(t0() + Duration::days(400))
        );
        assert_eq!(
            newest_ca_not_after(&keys(&[old])),
            Some(t0() + Duration::days(650))
        );
        assert_eq!(newest_ca_not_after(&keys(&[])), None);
        assert_eq!(
            newest_ca_not_after(&keys(&[
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()
            ])),
            None
        );
    }

    #[test]
    fn seconds_until_expiry() {
        assert_eq!(seconds_until(t0() + Duration::days(1), t0()), 86_400);
        assert_eq!(
            seconds_until(t0(), t0() + Duration::milliseconds(1_500)),
            -1,
            "whole seconds, toward zero"
        );
        assert_eq!(seconds_until(t0() - Duration::hours(1), t0()), -3_600);
    }

    #[test]
    fn the_warning_starts_90_days_ahead_and_repeats_daily() {
        let now = t0();
        let far = now + CA_EXPIRY_WARNING;
        let near = now + CA_EXPIRY_WARNING - Duration::seconds(1);
        assert!(!expiry_warning_due(far, now, true, None));
        assert!(expiry_warning_due(near, now, false, None));
        assert!(
            expiry_warning_due(now - Duration::days(1), now, false, None),
            "expired"
        );
        let an_hour_ago = Some(now - Duration::hours(1));
        assert!(!expiry_warning_due(near, now, false, an_hour_ago));
        assert!(
            expiry_warning_due(near, now, true, an_hour_ago),
            "a new chain"
        );
        assert!(expiry_warning_due(
            near,
            now,
            false,
            Some(now - CA_EXPIRY_WARNING_EVERY)
        ));
    }

    #[test]
    fn loading_sets_the_gauges_source_and_reports_a_changed_chain() {
        let cache = KeyCache::default();
        let metrics = Metrics::new();
        let chain = [ca(t0() - Duration::days(1), t0() + Duration::days(30))];
        assert!(cache.load(keys(&chain), &metrics, t0()));
        assert!(!cache.load(keys(&chain), &metrics, t0()), "same chain");
        assert_eq!(
            *cache.ca_warned_at.lock().expect("lock"),
            Some(t0()),
            "30 days left: warned"
        );
    }
}
