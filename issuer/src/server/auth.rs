//! Who may call: the gateway's identity only, decided once per connection from the
//! verified peer certificate.

use std::sync::Arc;

use alga_policies::{Policy, Role};
use rustls::pki_types::CertificateDer;

/// The authorized client of a connection (attached to each of its requests).
#[derive(Debug, Clone)]
pub struct Client {
    /// The certificate's single URI SAN.
    pub uri: Arc<str>,
}

/// Why a verified client is not allowed in.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) uri: Option<String>,
    pub(super) reason: &'static str,
}

/// Decides from the (already chain-verified) peer certificate whether the client is
/// the gateway: exactly one URI SAN, clientAuth EKU, and the policy's `gateway` role.
pub(super) fn authorize(
    policy: &Policy,
    peer: Option<&[CertificateDer<'static>]>,
) -> Result<Client, Refusal> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};

    let refuse = |uri: Option<String>, reason| Refusal { uri, reason };
    let leaf = peer
        .and_then(|chain| chain.first())
        .ok_or_else(|| refuse(None, "no client certificate"))?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|_| refuse(None, "unparseable certificate"))?;
    let mut uris = Vec::new();
    let mut client_auth = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_owned());
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => client_auth = eku.client_auth,
            _ => {}
        }
    }
    let uri = match uris.as_slice() {
        [one] => one.clone(),
        [] => return Err(refuse(None, "no URI SAN")),
        _ => return Err(refuse(Some(uris.join(",")), "more than one URI SAN")),
    };
    if !client_auth {
        return Err(refuse(Some(uri), "no clientAuth EKU"));
    }
    if policy.role_of(&uri) != Some(Role::Gateway) {
        return Err(refuse(Some(uri), "not the gateway's identity"));
    }
    Ok(Client { uri: uri.into() })
}
