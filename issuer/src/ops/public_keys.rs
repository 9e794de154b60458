//! Everything public the issuer publishes: license JWKS, the appliance CA chain,
//! the audit checkpoint keys. Old versions stay published until retired from the token.

use alga_protocol::issuer_api::{AuditKey, PublicKeys};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::OpsError;
use super::jwks::jwks;
use crate::keyring::{KeyKind, KeyOps};

/// The [`PublicKeys`] document.
pub fn public_keys<K: KeyOps>(keys: &K) -> Result<PublicKeys, OpsError> {
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
                .ok_or_else(|| OpsError::internal(format!("{} has no public key", k.kid)))?;
            Ok(AuditKey {
                kid: k.kid,
                version: k.version,
                spki_der_b64: STANDARD.encode(spki),
                created: k.created,
            })
        })
        .collect::<Result<Vec<_>, OpsError>>()?;
    Ok(PublicKeys {
        jwks: jwks(keys)?,
        ca_chain_pem,
        audit_keys,
        log_keys: Vec::new(),
    })
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
        let published = public_keys(&keys).expect("publishes");
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
        let json = serde_json::to_string(&published).expect("json");
        assert!(!json.contains("PRIVATE"), "public material only");
    }
}
