//! Who is calling: identity only from the verified client certificate's single URI SAN
//! with the clientAuth EKU, never from the CN.
//!
//! rustls has already checked, at the handshake, that a presented certificate chains to
//! *one of* the trusted roots (service CA or an appliance CA). That is not enough to
//! decide the role: a store identity must come from the service CA, an appliance
//! identity from the appliance CA. So the leaf is verified again here, against each
//! root set separately (rustls-webpki, clientAuth EKU *required*), and only then is its
//! URI SAN mapped: service CA + URI listed in the policy → that role; appliance CA +
//! URI parsing as `spiffe://<trust domain>/tenant/<T>/appliance/<A>` → that appliance.
//! Anything else is [`ClientIdentity::Refused`], which every route treats as "no right".

use std::sync::Arc;

use alga_policies::{Policy, Role};
use alga_protocol::ApplianceIdentity;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::ApiError;

/// DER of the clientAuth key purpose, 1.3.6.1.5.5.7.3.2.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Trust anchors, one set per kind of identity.
#[derive(Debug, Clone, Default)]
pub struct TrustSets {
    /// Roots of service identities (store, auditor).
    pub service: Vec<TrustAnchor<'static>>,
    /// Roots of appliance credentials (every published appliance CA version).
    pub appliance: Vec<TrustAnchor<'static>>,
}

impl TrustSets {
    /// Anchors from DER certificates; certificates that are not valid anchors are skipped
    /// with a warning (the caller's list comes from files or from the issuer).
    pub fn anchors(ders: &[CertificateDer<'_>]) -> Vec<TrustAnchor<'static>> {
        ders.iter()
            .filter_map(|d| match webpki::anchor_from_trusted_cert(d) {
                Ok(a) => Some(a.to_owned()),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a CA certificate that is not a usable trust anchor");
                    None
                }
            })
            .collect()
    }
}

/// A verified appliance credential: whose it is, which certificate, and its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceCredential {
    /// From the certificate's URI SAN.
    pub id: ApplianceIdentity,
    /// The certificate's serial: lower-case hex of the DER INTEGER's content bytes,
    /// exactly as the issuer reports it (`SignedCredential.serial`, stored as
    /// `appliances.credential_serial`). The issuer's serials are 16 bytes whose first
    /// byte is 0x40..=0x7f, so their DER encoding needs no leading zero byte and the
    /// content bytes are the issuer's bytes; nothing is normalised here, so a
    /// certificate whose serial is encoded differently simply matches no stored one.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// The identity of a connection's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// No client certificate.
    Anonymous,
    /// A certificate that identifies no one we know (wrong CA for its SAN, several or
    /// no URI SANs, no clientAuth EKU, not in the policy). Detail for the log only.
    Refused(String),
    /// A service client of the policy.
    Service { uri: String, role: Role },
    /// An appliance credential (which check-in still compares with the appliance's
    /// recorded one: the CA signing it is not enough once it was superseded).
    Appliance(ApplianceCredential),
}

impl ClientIdentity {
    /// Classifies a verified-by-rustls chain (`certs[0]` the leaf).
    pub fn classify(
        certs: Option<&[CertificateDer<'static>]>,
        trust: &TrustSets,
        policy: &Policy,
        now: UnixTime,
    ) -> ClientIdentity {
        let Some(certs) = certs.filter(|c| !c.is_empty()) else {
            return ClientIdentity::Anonymous;
        };
        match classify_inner(certs, trust, policy, now) {
            Ok(id) => id,
            Err(reason) => ClientIdentity::Refused(reason),
        }
    }

    /// The role-or-kind name for audit and metrics.
    pub fn actor_role(&self) -> &'static str {
        match self {
            ClientIdentity::Anonymous => "anonymous",
            ClientIdentity::Refused(_) => "refused",
            ClientIdentity::Service { role, .. } => role.as_str(),
            ClientIdentity::Appliance(_) => "appliance",
        }
    }

    /// The identity string for audit (URI SAN), if any.
    pub fn actor_id(&self, policy: &Policy) -> Option<String> {
        match self {
            ClientIdentity::Service { uri, .. } => Some(uri.clone()),
            ClientIdentity::Appliance(c) => Some(c.id.uri(&policy.trust_domain)),
            _ => None,
        }
    }

    /// Requires one of `roles`: no certificate → 401, anything else → 403.
    pub fn require_service(&self, roles: &[Role]) -> Result<(Role, &str), ApiError> {
        match self {
            ClientIdentity::Anonymous => Err(ApiError::Unauthenticated),
            ClientIdentity::Service { uri, role } if roles.contains(role) => Ok((*role, uri)),
            _ => Err(ApiError::Forbidden),
        }
    }

    /// Requires an appliance credential: none → 401 `credential_required`, another
    /// identity → 403.
    pub fn require_appliance(&self) -> Result<&ApplianceCredential, ApiError> {
        match self {
            ClientIdentity::Anonymous => Err(ApiError::CredentialRequired),
            ClientIdentity::Appliance(c) => Ok(c),
            _ => Err(ApiError::Forbidden),
        }
    }
}

fn classify_inner(
    certs: &[CertificateDer<'static>],
    trust: &TrustSets,
    policy: &Policy,
    now: UnixTime,
) -> Result<ClientIdentity, String> {
    let leaf = &certs[0];
    let intermediates = &certs[1..];
    let (_, x509) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| format!("unparsable leaf: {e}"))?;

    // Exactly one URI SAN.
    let mut uris = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uris.push((*u).to_owned());
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(format!("{} URI SANs (exactly one required)", uris.len()));
    };
    // clientAuth EKU present (webpki below also requires it; this gives a clear reason).
    match x509.extended_key_usage() {
        Ok(Some(eku)) if eku.value.client_auth => {}
        _ => return Err("no clientAuth extended key usage".into()),
    }

    let verifies = |anchors: &[TrustAnchor<'static>]| -> bool {
        if anchors.is_empty() {
            return false;
        }
        let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        ee.verify_for_usage(
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all,
            anchors,
            intermediates,
            now,
            webpki::KeyUsage::required(EKU_CLIENT_AUTH),
            None,
            None,
        )
        .is_ok()
    };

    if verifies(&trust.service) {
        return match policy.role_of(uri) {
            Some(role @ (Role::Store | Role::Auditor)) => Ok(ClientIdentity::Service {
                uri: uri.clone(),
                role,
            }),
            Some(Role::Gateway) => Err(format!("{uri} is the gateway's own identity")),
            None => Err(format!("{uri} is not a client of the policy")),
        };
    }
    if verifies(&trust.appliance) {
        let id = ApplianceIdentity::parse(uri, &policy.trust_domain)
            .ok_or_else(|| format!("{uri} is not an appliance identity of this trust domain"))?;
        return Ok(ClientIdentity::Appliance(ApplianceCredential {
            id,
            serial: hex::encode(x509.raw_serial()),
            not_before: x509.validity().not_before.to_datetime(),
            not_after: x509.validity().not_after.to_datetime(),
        }));
    }
    Err("certificate chains to neither the service CA nor an appliance CA".into())
}

/// The per-connection facts every request of the connection shares.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: std::net::SocketAddr,
    pub identity: Arc<ClientIdentity>,
}
