//! Everything public the issuer publishes: license JWKS, the appliance CA chain,
//! the audit checkpoint keys, the transparency-log keys (signed-note verifier keys
//! named by the log's origin). Old versions stay published until retired from the
//! token.

use alga_protocol::issuer_api::{AuditKey, LogKey, PublicKeys};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::jwks::jwks;
use super::log_checkpoint::verifier_key;
use crate::Error;
use crate::config::LogOrigin;
use crate::keyring::{KeyKind, KeyOps};

/// The [`PublicKeys`] document; the log keys are named `origin`.
pub fn public_keys<K: KeyOps>(keys: &K, origin: &LogOrigin) -> Result<PublicKeys, Error> {
    let ca_chain_pem = keys
        .ca_certificates()
        .iter()
        .map(|c| certificate_pem(&c.der))
        .collect::<String>();
    let audit_keys = keys
        .keys(KeyKind::Audit)
        .into_iter()
        .map(|k| {
            let spki = k
                .public_key_spki
                .ok_or_else(|| Error::internal(format!("{} has no public key", k.kid)))?;
            Ok(AuditKey {
                kid: k.kid,
                version: k.version,
                spki_der_b64: STANDARD.encode(spki),
                created: k.created,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let log_keys = log_keys(keys, origin)?;
    Ok(PublicKeys {
        jwks: jwks(keys)?,
        ca_chain_pem,
        audit_keys,
        log_keys,
    })
}

/// Every log key version, the active (highest) one first.
fn log_keys<K: KeyOps>(keys: &K, origin: &LogOrigin) -> Result<Vec<LogKey>, Error> {
    let mut log_keys = keys
        .keys(KeyKind::Log)
        .into_iter()
        .map(|k| {
            let public_key = k
                .ed25519_public_key()
                .ok_or_else(|| Error::internal(format!("{} has no Ed25519 public key", k.kid)))?;
            Ok(LogKey {
                vkey: verifier_key(origin.as_str(), &public_key),
                kid: k.kid,
                version: k.version,
                created: k.created,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    log_keys.sort_by_key(|k| std::cmp::Reverse(k.version));
    Ok(log_keys)
}

/// PEM of a DER certificate.
pub(crate) fn certificate_pem(der: &[u8]) -> String {
    alga_protocol::trust::pem_of(der)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::ops::software_keys::SoftwareKeys;

    #[test]
    fn every_version_of_every_public_key_is_published() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let keys = SoftwareKeys::new(now);
        keys.rotate(KeyKind::ApplianceCa, now);
        keys.rotate(KeyKind::Audit, now);
        keys.rotate(KeyKind::Log, now);
        let origin = LogOrigin::new("example.com/log").expect("origin");
        let published = public_keys(&keys, &origin).expect("publishes");
        assert_eq!(published.jwks.keys.len(), 1);
        let certs = pem::parse_many(&published.ca_chain_pem).expect("PEM");
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].contents(), keys.ca_certificates()[1].der);
        let kids: Vec<&str> = published
            .audit_keys
            .iter()
            .map(|k| k.kid.as_str())
            .collect();
        assert_eq!(kids, ["alga-audit-v1", "alga-audit-v2"]);
        let log: Vec<(&str, u32)> = published
            .log_keys
            .iter()
            .map(|k| (k.kid.as_str(), k.version))
            .collect();
        assert_eq!(
            log,
            [("alga-log-v2", 2), ("alga-log-v1", 1)],
            "active first"
        );
        for (published, info) in published
            .log_keys
            .iter()
            .zip(keys.keys(KeyKind::Log).iter().rev())
        {
            let public_key = info.ed25519_public_key().expect("Ed25519");
            assert_eq!(published.vkey, verifier_key("example.com/log", &public_key));
            assert!(
                published.vkey.starts_with("example.com/log+"),
                "{}",
                published.vkey
            );
            signed_note::StandardVerifier::new(&published.vkey).expect("a valid verifier key");
        }
        let json = serde_json::to_string(&published).expect("json");
        assert!(!json.contains("PRIVATE"), "public material only");
    }
}
