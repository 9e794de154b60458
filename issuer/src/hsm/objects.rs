//! Key objects on the token: names, templates, creation with read-back, and the inventory.
//!
//! Naming: key version `v` of kind `k` has `CKA_LABEL` and `CKA_ID` both
//! `alga-<k>-v<v>` (`k` from [`KeyKind::as_str`]). The private and public key of a key
//! pair share them; so do the code (secret) key, the appliance CA certificate
//! (`CKO_CERTIFICATE`) and the creation record.
//!
//! Key types: P-256 key pairs (`CKK_EC`, `CKA_EC_PARAMS` the prime256v1 OID) for the
//! root, license, CA and audit keys; an Ed25519 key pair (`CKK_EC_EDWARDS`,
//! `CKA_EC_PARAMS` the id-Ed25519 OID 1.3.101.112, generated with
//! `CKM_EC_EDWARDS_KEY_PAIR_GEN`, signing with `CKM_EDDSA`) for the log key; a 32-byte
//! `CKK_GENERIC_SECRET` for the code key. Each public key is read back as
//! `CKA_EC_POINT` (a DER OCTET STRING around the SEC1 point, or around the 32-byte
//! Ed25519 key) and kept as a DER SubjectPublicKeyInfo.
//!
//! Creation record: PKCS#11 keys have no creation time (`CKA_START_DATE` is a date and
//! means "usable from"), so each key version gets a public `CKO_DATA` object with
//! `CKA_APPLICATION` `alga-license`, `CKA_LABEL` the kid and `CKA_VALUE`
//! `{"created":"<rfc3339>"}`. `keys list` and `KeyInfo::created` read it.
//!
//! Trust root: the root key `alga-root-v<r>` has its self-signed certificate
//! (`CKO_CERTIFICATE`, label and id the kid). What it signs is stored under the label
//! `<kid>/<root kid>`: the appliance CA certificate it issued (`CKO_CERTIFICATE`,
//! `alga-ca-v<v>/alga-root-v<r>`) and its endorsement of a license key (`CKO_DATA`,
//! `CKA_APPLICATION` `alga-license`, `CKA_VALUE` the compact JWS,
//! `alga-license-v<v>/alga-root-v<r>`). Public objects all; the root's private key
//! signs them in ceremonies only.
//!
//! Code key fingerprint: a secret key has no public part, so its fingerprint is
//! SHA-256 over the HMAC of a fixed, domain-separated label under the key. It
//! identifies the key (the same key always gives the same value, another key a
//! different one) without revealing anything usable about it: the published value is
//! a hash of a PRF output, never a raw MAC.
//!
//! Dependencies: this module signs through `mechanism` and certifies the root and CA
//! keys it creates with `signer`'s `SessionSigner`; neither of those uses it back.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::{HsmError, map_cryptoki};
use super::mechanism::{ecdsa_sign, hmac_sha256};
use super::signer::SessionSigner;
use crate::keyring::{
    CaCertificate, KeyAlgorithm, KeyInfo, KeyKind, LicenseEndorsement, RootCertificate,
    ed25519_from_spki, ed25519_spki, sec1_from_spki, spki_from_sec1,
};

/// `CKA_APPLICATION` of the creation records.
pub(crate) const APPLICATION: &str = "alga-license";

/// DER of the prime256v1 (P-256) OID, the `CKA_EC_PARAMS` of every P-256 key.
const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// DER of the id-Ed25519 OID (1.3.101.112, RFC 8410), the `CKA_EC_PARAMS` of the log
/// key. PKCS#11 3.0 allows it or the printable string `edwards25519`; the OID is the
/// form SoftHSM 2.6.1 takes here (`issuer/tests/it/log_key.rs` reads it back).
const ED25519_OID_DER: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// Input of the code key's fingerprint MAC. The NUL and the prefix keep it apart
/// from any install-code binding.
const CODE_FINGERPRINT_INPUT: &[u8] = b"alga-license\0key-fingerprint\0code";

/// `alga-<kind>-v<version>`: label, id and JWKS `kid` of one key version.
pub fn kid(kind: KeyKind, version: u32) -> String {
    format!("alga-{}-v{version}", kind.as_str())
}

/// The label of what root version `root` signed about key `kid` (see the module
/// documentation).
pub fn certified_label(kid: &str, root: u32) -> String {
    format!("{kid}/{}", self::kid(KeyKind::Root, root))
}

/// Parses a label made by [`kid`]; anything else is not ours.
pub fn parse_kid(label: &str) -> Option<(KeyKind, u32)> {
    let rest = label.strip_prefix("alga-")?;
    let (kind, version) = rest.rsplit_once("-v")?;
    let kind = KeyKind::parse(kind)?;
    if version.is_empty()
        || version.starts_with('0')
        || !version.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let version: u32 = version.parse().ok()?;
    Some((kind, version))
}

/// Finds the one object of `class` with label and id `kid`.
pub(crate) fn find_object(
    session: &Session,
    class: ObjectClass,
    kid: &str,
) -> Result<Option<ObjectHandle>, HsmError> {
    let template = [
        Attribute::Class(class),
        Attribute::Label(kid.as_bytes().to_vec()),
    ];
    let template_with_id;
    // Data objects have no CKA_ID; keys and certificates are matched on both.
    let template: &[Attribute] = if class == ObjectClass::DATA {
        &template
    } else {
        template_with_id = [
            Attribute::Class(class),
            Attribute::Label(kid.as_bytes().to_vec()),
            Attribute::Id(kid.as_bytes().to_vec()),
        ];
        &template_with_id
    };
    let found = session.find_objects(template).map_err(map_cryptoki)?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(HsmError::InvalidObject {
            label: kid.to_owned(),
            reason: format!("{} objects of class {class} share the label", found.len()),
        }),
    }
}

/// The private (key pair) or secret (code) key of a version.
pub(crate) fn find_signing_key(
    session: &Session,
    kind: KeyKind,
    version: u32,
) -> Result<ObjectHandle, HsmError> {
    let class = if kind.is_key_pair() {
        ObjectClass::PRIVATE_KEY
    } else {
        ObjectClass::SECRET_KEY
    };
    find_object(session, class, &kid(kind, version))?.ok_or(HsmError::UnknownKey { kind, version })
}

/// The protection attributes of a key, as read back from the token.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyProtection {
    pub token: Option<bool>,
    pub private: Option<bool>,
    pub sensitive: Option<bool>,
    pub always_sensitive: Option<bool>,
    pub extractable: Option<bool>,
    pub never_extractable: Option<bool>,
    pub sign: Option<bool>,
    pub decrypt: Option<bool>,
    pub encrypt: Option<bool>,
    pub unwrap: Option<bool>,
    pub wrap: Option<bool>,
    pub derive: Option<bool>,
}

impl KeyProtection {
    /// Reads the attributes; an attribute the key type does not have stays `None`.
    pub(crate) fn read(session: &Session, key: ObjectHandle) -> Result<KeyProtection, HsmError> {
        let types = [
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::AlwaysSensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Sign,
            AttributeType::Decrypt,
            AttributeType::Encrypt,
            AttributeType::Unwrap,
            AttributeType::Wrap,
            AttributeType::Derive,
        ];
        let mut p = KeyProtection::default();
        for attr in session.get_attributes(key, &types).map_err(map_cryptoki)? {
            match attr {
                Attribute::Token(v) => p.token = Some(v),
                Attribute::Private(v) => p.private = Some(v),
                Attribute::Sensitive(v) => p.sensitive = Some(v),
                Attribute::AlwaysSensitive(v) => p.always_sensitive = Some(v),
                Attribute::Extractable(v) => p.extractable = Some(v),
                Attribute::NeverExtractable(v) => p.never_extractable = Some(v),
                Attribute::Sign(v) => p.sign = Some(v),
                Attribute::Decrypt(v) => p.decrypt = Some(v),
                Attribute::Encrypt(v) => p.encrypt = Some(v),
                Attribute::Unwrap(v) => p.unwrap = Some(v),
                Attribute::Wrap(v) => p.wrap = Some(v),
                Attribute::Derive(v) => p.derive = Some(v),
                _ => {}
            }
        }
        Ok(p)
    }

    /// Everything that differs from CONTRACT.md §3 (empty when the key is acceptable).
    /// Required attributes that cannot be read count as wrong.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut require = |name: &str, value: Option<bool>, want: bool| {
            if value != Some(want) {
                problems.push(format!("{name} is {} (must be {want})", show(value)));
            }
        };
        require("CKA_TOKEN", self.token, true);
        require("CKA_PRIVATE", self.private, true);
        require("CKA_SENSITIVE", self.sensitive, true);
        require("CKA_ALWAYS_SENSITIVE", self.always_sensitive, true);
        require("CKA_EXTRACTABLE", self.extractable, false);
        require("CKA_NEVER_EXTRACTABLE", self.never_extractable, true);
        require("CKA_SIGN", self.sign, true);
        let mut forbid = |name: &str, value: Option<bool>| {
            if value == Some(true) {
                problems.push(format!("{name} is true (must be false)"));
            }
        };
        forbid("CKA_DECRYPT", self.decrypt);
        forbid("CKA_ENCRYPT", self.encrypt);
        forbid("CKA_UNWRAP", self.unwrap);
        forbid("CKA_WRAP", self.wrap);
        forbid("CKA_DERIVE", self.derive);
        problems
    }
}

fn show(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "true",
        Some(false) => "false",
        None => "unreadable",
    }
}

/// Refuses a key whose protection is not as required.
pub(crate) fn check_protection(
    session: &Session,
    key: ObjectHandle,
    kid: &str,
) -> Result<(), HsmError> {
    let problems = KeyProtection::read(session, key)?.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(HsmError::UnsafeKeyAttributes {
            kid: kid.to_owned(),
            problems: problems.join(", "),
        })
    }
}

/// The SEC1 uncompressed point inside a `CKA_EC_POINT` (a DER OCTET STRING around
/// it, per PKCS#11; some modules return the bare point, which is accepted too).
pub fn sec1_point_from_ec_point(ec_point: &[u8]) -> Option<&[u8]> {
    match ec_point {
        [0x04, 0x41, point @ ..] if point.len() == 65 && point[0] == 0x04 => Some(point),
        [0x04, ..] if ec_point.len() == 65 => Some(ec_point),
        _ => None,
    }
}

/// The 32-byte Ed25519 public key inside a `CKA_EC_POINT`: a DER OCTET STRING
/// (`04 20` and the 32 bytes) per PKCS#11 3.0, which SoftHSM returns; a bare 32-byte
/// value is accepted too, as for P-256 points. Anything else (another length, a
/// longer DER length form, trailing bytes) is refused.
pub fn ed25519_key_from_ec_point(ec_point: &[u8]) -> Option<[u8; 32]> {
    let raw = match ec_point {
        [0x04, 0x20, key @ ..] if key.len() == 32 => key,
        key if key.len() == 32 => key,
        _ => return None,
    };
    raw.try_into().ok()
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The public key of a key pair version (P-256 or Ed25519), as DER SPKI.
pub(crate) fn read_spki(
    session: &Session,
    kind: KeyKind,
    version: u32,
) -> Result<Vec<u8>, HsmError> {
    let kid = kid(kind, version);
    let invalid = |reason: &str| HsmError::InvalidObject {
        label: kid.clone(),
        reason: reason.to_owned(),
    };
    let public = find_object(session, ObjectClass::PUBLIC_KEY, &kid)?
        .ok_or_else(|| invalid("public key missing"))?;
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(map_cryptoki)?;
    let ec_point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| invalid("CKA_EC_POINT unreadable"))?;
    match kind.algorithm() {
        KeyAlgorithm::EcP256 => {
            let point = sec1_point_from_ec_point(&ec_point)
                .ok_or_else(|| invalid("CKA_EC_POINT is not a P-256 point"))?;
            spki_from_sec1(point).ok_or_else(|| invalid("CKA_EC_POINT is not on P-256"))
        }
        KeyAlgorithm::Ed25519 => {
            let key = ed25519_key_from_ec_point(&ec_point)
                .ok_or_else(|| invalid("CKA_EC_POINT is not a 32-byte Ed25519 key"))?;
            let spki = ed25519_spki(&key);
            // Decodes the point: refuses 32 bytes that are not an Ed25519 public key.
            ed25519_from_spki(&spki)
                .ok_or_else(|| invalid("CKA_EC_POINT is not an Ed25519 point"))?;
            Ok(spki)
        }
        KeyAlgorithm::HmacSha256 => Err(invalid("a secret key has no public key")),
    }
}

/// The creation time recorded for a key version.
pub(crate) fn read_created(session: &Session, kid: &str) -> Result<OffsetDateTime, HsmError> {
    let invalid = |reason: String| HsmError::InvalidObject {
        label: kid.to_owned(),
        reason,
    };
    let record = find_object(session, ObjectClass::DATA, kid)?
        .ok_or_else(|| invalid("creation record (CKO_DATA) missing".into()))?;
    let attrs = session
        .get_attributes(record, &[AttributeType::Application, AttributeType::Value])
        .map_err(map_cryptoki)?;
    let mut value = None;
    let mut application = None;
    for a in attrs {
        match a {
            Attribute::Value(v) => value = Some(v),
            Attribute::Application(v) => application = Some(v),
            _ => {}
        }
    }
    if application.as_deref() != Some(APPLICATION.as_bytes()) {
        return Err(invalid(format!(
            "creation record is not from {APPLICATION}"
        )));
    }
    #[derive(serde::Deserialize)]
    struct Record {
        created: String,
    }
    let record: Record = serde_json::from_slice(&value.unwrap_or_default())
        .map_err(|e| invalid(format!("creation record: {e}")))?;
    OffsetDateTime::parse(&record.created, &Rfc3339)
        .map_err(|e| invalid(format!("creation time: {e}")))
}

/// The `CKA_VALUE` of the object of `class` labelled `label`, if there is one.
pub(crate) fn read_value(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<Vec<u8>>, HsmError> {
    let Some(object) = find_object(session, class, label)? else {
        return Ok(None);
    };
    let attrs = session
        .get_attributes(object, &[AttributeType::Value])
        .map_err(map_cryptoki)?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Value(v) => Some(v),
        _ => None,
    }))
}

/// Stores a public certificate object (DER) labelled `label`.
pub(crate) fn store_certificate(
    session: &Session,
    label: &str,
    der: Vec<u8>,
    created: &mut Created,
) -> Result<(), HsmError> {
    let subject = super::ca::subject_der(&der)?;
    let cert = session
        .create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
            Attribute::Subject(subject),
            Attribute::Value(der),
        ])
        .map_err(map_cryptoki)?;
    created.push(cert);
    Ok(())
}

/// Stores a public data object of this application labelled `label`.
fn store_data(
    session: &Session,
    label: &str,
    value: Vec<u8>,
    created: &mut Created,
) -> Result<ObjectHandle, HsmError> {
    let data = session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Application(APPLICATION.as_bytes().to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(value),
        ])
        .map_err(map_cryptoki)?;
    created.push(data);
    Ok(data)
}

/// The newest trust root on the token, ready to sign in a ceremony.
pub(crate) struct RootSigner {
    pub(crate) version: u32,
    pub(crate) der: Vec<u8>,
    handle: ObjectHandle,
    spki: Vec<u8>,
}

impl RootSigner {
    /// The newest root of `inventory`, or `None` when the token has none yet.
    pub(crate) fn newest(
        session: &Session,
        inventory: &Inventory,
    ) -> Result<Option<RootSigner>, HsmError> {
        let Some(root) = inventory.roots.last() else {
            return Ok(None);
        };
        let key = inventory
            .versions(KeyKind::Root)
            .find(|k| k.version == root.version)
            .and_then(|k| k.public_key_spki.clone())
            .ok_or_else(|| HsmError::InvalidObject {
                label: kid(KeyKind::Root, root.version),
                reason: "the root key has no public key".into(),
            })?;
        Ok(Some(RootSigner {
            version: root.version,
            der: root.der.clone(),
            handle: find_signing_key(session, KeyKind::Root, root.version)?,
            spki: key,
        }))
    }

    /// Certifies CA key `version` (whose self-signed certificate is `ca_der`) and
    /// stores the certificate.
    pub(crate) fn certify_ca(
        &self,
        session: &Session,
        version: u32,
        ca_der: &[u8],
        created: &mut Created,
    ) -> Result<Vec<u8>, HsmError> {
        let signer = SessionSigner::new(session, self.handle, &self.spki)?;
        let der = super::ca::certify_ca(&signer, &self.der, ca_der, version)?;
        let label = certified_label(&kid(KeyKind::ApplianceCa, version), self.version);
        store_certificate(session, &label, der.clone(), created)?;
        Ok(der)
    }

    /// Signs `endorsement` of license key `version` and stores it, replacing an
    /// earlier endorsement of the same key by this root (that one is destroyed only
    /// after the new one exists; on failure the caller's roll-back removes the new).
    pub(crate) fn endorse(
        &self,
        session: &Session,
        version: u32,
        endorsement: &alga_protocol::trust::KeyEndorsement,
        created: &mut Created,
    ) -> Result<String, HsmError> {
        let input = endorsement.signing_input(&self.der);
        let digest: [u8; 32] = Sha256::digest(input.as_bytes()).into();
        let signature = ecdsa_sign(session, self.handle, &digest)?;
        let jws = alga_protocol::trust::compact_jws(&input, &signature);
        let label = certified_label(&kid(KeyKind::License, version), self.version);
        let old = find_object(session, ObjectClass::DATA, &label)?;
        store_data(session, &label, jws.clone().into_bytes(), created)?;
        if let Some(old) = old {
            session.destroy_object(old).map_err(map_cryptoki)?;
        }
        Ok(jws)
    }
}

/// An endorsement read from the token: its payload must decode and name the key's
/// own public point (the signature is the root's; appliances verify it).
fn read_endorsement(
    kid: &str,
    version: u32,
    jws: Vec<u8>,
    spki: &[u8],
) -> Result<LicenseEndorsement, HsmError> {
    let invalid = |reason: &str| HsmError::InvalidObject {
        label: kid.to_owned(),
        reason: format!("its endorsement {reason}"),
    };
    let jws = String::from_utf8(jws).map_err(|_| invalid("is not text"))?;
    let endorsement = alga_protocol::trust::KeyEndorsement::from_jws_unverified(&jws)
        .ok_or_else(|| invalid("does not decode"))?;
    let point = alga_protocol::trust::verifying_key(&endorsement.key)
        .map(|k| k.to_encoded_point(false).as_bytes().to_vec());
    if endorsement.key.kid != kid || point != sec1_from_spki(spki) {
        return Err(invalid("names another key"));
    }
    Ok(LicenseEndorsement {
        version,
        jws,
        endorsement,
    })
}

/// Fingerprint of a code key (see the module documentation).
pub(crate) fn code_fingerprint(session: &Session, key: ObjectHandle) -> Result<String, HsmError> {
    Ok(sha256_hex(&hmac_sha256(
        session,
        key,
        CODE_FINGERPRINT_INPUT,
    )?))
}

/// Everything alga keeps on the token, as found by one scan.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inventory {
    /// Every key version, ordered by kind (as in [`KeyKind::ALL`]) then version.
    pub(crate) keys: Vec<KeyInfo>,
    /// Every appliance CA certificate, oldest first.
    pub(crate) ca_certificates: Vec<CaCertificate>,
    /// Every trust root certificate, oldest first.
    pub(crate) roots: Vec<RootCertificate>,
    /// The newest root's endorsements of license keys, oldest first.
    pub(crate) endorsements: Vec<LicenseEndorsement>,
}

impl Inventory {
    /// Scans the token: every private and secret key labelled `alga-<kind>-v<n>`,
    /// with its public key, creation record and (CA) certificate. Every key's
    /// protection is checked again: a key that is not sensitive and non-extractable is
    /// refused, not served.
    pub(crate) fn load(session: &Session) -> Result<Inventory, HsmError> {
        let mut found: Vec<(KeyKind, u32, ObjectHandle)> = Vec::new();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            for handle in session
                .find_objects(&[Attribute::Class(class)])
                .map_err(map_cryptoki)?
            {
                let attrs = session
                    .get_attributes(handle, &[AttributeType::Label, AttributeType::KeyType])
                    .map_err(map_cryptoki)?;
                let mut label = None;
                let mut key_type = None;
                for a in attrs {
                    match a {
                        Attribute::Label(l) => label = Some(l),
                        Attribute::KeyType(t) => key_type = Some(t),
                        _ => {}
                    }
                }
                let Some((kind, version)) = label
                    .as_deref()
                    .and_then(|l| std::str::from_utf8(l).ok())
                    .and_then(parse_kid)
                else {
                    continue;
                };
                let (want_class, want_type) = match kind.algorithm() {
                    KeyAlgorithm::EcP256 => (ObjectClass::PRIVATE_KEY, KeyType::EC),
                    KeyAlgorithm::Ed25519 => (ObjectClass::PRIVATE_KEY, KeyType::EC_EDWARDS),
                    KeyAlgorithm::HmacSha256 => (ObjectClass::SECRET_KEY, KeyType::GENERIC_SECRET),
                };
                if class != want_class || key_type != Some(want_type) {
                    return Err(HsmError::InvalidObject {
                        label: kid(kind, version),
                        reason: format!("expected a {want_class} of type {want_type}"),
                    });
                }
                found.push((kind, version, handle));
            }
        }
        found.sort_by_key(|(kind, version, _)| (kind_order(*kind), *version));
        if let Some(w) = found
            .windows(2)
            .find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
        {
            return Err(HsmError::InvalidObject {
                label: kid(w[0].0, w[0].1),
                reason: "more than one key has this label".into(),
            });
        }

        let mut inventory = Inventory::default();
        for (kind, version, handle) in found {
            let kid = kid(kind, version);
            check_protection(session, handle, &kid)?;
            let (public_key_spki, fingerprint) = if kind.is_key_pair() {
                let spki = read_spki(session, kind, version)?;
                let fingerprint = sha256_hex(&spki);
                (Some(spki), Some(fingerprint))
            } else {
                (None, Some(code_fingerprint(session, handle)?))
            };
            if kind == KeyKind::Root
                && let Some(der) = read_value(session, ObjectClass::CERTIFICATE, &kid)?
            {
                super::ca::check_certificate(&der, public_key_spki.as_deref().unwrap_or_default())?;
                inventory.roots.push(RootCertificate { version, der });
            }
            if kind == KeyKind::ApplianceCa
                && let Some(der) = read_value(session, ObjectClass::CERTIFICATE, &kid)?
            {
                super::ca::check_certificate(&der, public_key_spki.as_deref().unwrap_or_default())?;
                // Roots come first in the scan order, so the newest is known here.
                let certified = match inventory.roots.last() {
                    Some(root) => read_value(
                        session,
                        ObjectClass::CERTIFICATE,
                        &certified_label(&kid, root.version),
                    )?,
                    None => None,
                };
                inventory.ca_certificates.push(CaCertificate {
                    version,
                    der,
                    certified,
                });
            }
            if kind == KeyKind::License
                && let Some(root) = inventory.roots.last()
                && let Some(jws) = read_value(
                    session,
                    ObjectClass::DATA,
                    &certified_label(&kid, root.version),
                )?
            {
                let spki = public_key_spki.as_deref().unwrap_or_default();
                inventory
                    .endorsements
                    .push(read_endorsement(&kid, version, jws, spki)?);
            }
            inventory.keys.push(KeyInfo {
                kind,
                version,
                created: read_created(session, &kid)?,
                kid,
                public_key_spki,
                fingerprint,
            });
        }
        Ok(inventory)
    }

    /// Versions of `kind`, oldest first.
    pub(crate) fn versions(&self, kind: KeyKind) -> impl Iterator<Item = &KeyInfo> {
        self.keys.iter().filter(move |k| k.kind == kind)
    }

    /// The highest version of `kind`, if any.
    pub(crate) fn max_version(&self, kind: KeyKind) -> Option<u32> {
        self.versions(kind).map(|k| k.version).max()
    }

    /// The kinds without any version on the token.
    pub(crate) fn lacking(&self) -> Vec<KeyKind> {
        KeyKind::ALL
            .into_iter()
            .filter(|k| self.max_version(*k).is_none())
            .collect()
    }

    /// Refuses an incomplete key set (serving, rotation). When everything lacking is
    /// what `keys init --if-missing` adds to a token made before it (the root and
    /// what it signs, the log key), the error says to run that; otherwise the set is
    /// [`HsmError::KeysMissing`].
    pub(crate) fn check_complete(&self, label: &str) -> Result<(), HsmError> {
        let missing = self.missing();
        if missing.is_empty() {
            return Ok(());
        }
        let completable = !self.keys.is_empty()
            && self
                .lacking()
                .iter()
                .all(|k| KeyKind::ADDED_LATER.contains(k));
        if completable {
            Err(HsmError::KeysIncomplete {
                label: label.to_owned(),
                missing: missing.join(", "),
            })
        } else {
            Err(HsmError::KeysMissing {
                label: label.to_owned(),
                missing: format!("missing: {}", missing.join(", ")),
            })
        }
    }

    /// What a complete key set lacks: a kind without any version, the root's or a CA
    /// key version's certificate, the root's certificate of a CA version, or the
    /// root's endorsement of the active license key. Empty when complete.
    pub(crate) fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for kind in self.lacking() {
            missing.push(format!("{kind} key"));
        }
        for key in self.versions(KeyKind::Root) {
            if !self.roots.iter().any(|c| c.version == key.version) {
                missing.push(format!("certificate of {}", key.kid));
            }
        }
        for key in self.versions(KeyKind::ApplianceCa) {
            match self
                .ca_certificates
                .iter()
                .find(|c| c.version == key.version)
            {
                None => missing.push(format!("certificate of {}", key.kid)),
                Some(c) if c.certified.is_none() => {
                    missing.push(format!("the root's certificate of {}", key.kid));
                }
                Some(_) => {}
            }
        }
        if let Some(active) = self.max_version(KeyKind::License)
            && !self.endorsements.iter().any(|e| e.version == active)
        {
            missing.push(format!(
                "the root's endorsement of {}",
                kid(KeyKind::License, active)
            ));
        }
        missing
    }
}

/// Position of a kind in [`KeyKind::ALL`] (the order of listings).
pub(crate) fn kind_order(kind: KeyKind) -> usize {
    KeyKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(usize::MAX)
}

/// Objects created so far by a ceremony, destroyed again if it fails half-way.
#[derive(Debug, Default)]
pub(crate) struct Created {
    handles: Vec<ObjectHandle>,
}

impl Created {
    pub(crate) fn push(&mut self, handle: ObjectHandle) {
        self.handles.push(handle);
    }

    /// Destroys everything recorded, newest first; failures are logged, not returned
    /// (the original error is what the operator needs to see).
    pub(crate) fn roll_back(self, session: &Session) {
        for handle in self.handles.into_iter().rev() {
            if let Err(e) = session.destroy_object(handle) {
                tracing::error!(error = %map_cryptoki(e), "could not destroy an object of a failed key ceremony");
            }
        }
    }
}

/// The public and private templates of a new key pair of `kind` (P-256 or Ed25519):
/// token objects, the private key sensitive, never extractable, private and sign-only.
fn key_pair_templates(
    kind: KeyKind,
    label: Attribute,
    id: Attribute,
) -> Result<(Mechanism<'static>, Vec<Attribute>, Vec<Attribute>), HsmError> {
    let (mechanism, params) = match kind.algorithm() {
        KeyAlgorithm::EcP256 => (Mechanism::EccKeyPairGen, P256_OID_DER.to_vec()),
        KeyAlgorithm::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_OID_DER.to_vec()),
        KeyAlgorithm::HmacSha256 => {
            return Err(HsmError::Config {
                reason: format!("{kind} is not a key pair"),
            });
        }
    };
    let public_template = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::EcParams(params),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        label.clone(),
        id.clone(),
    ];
    let private_template = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        label,
        id,
    ];
    Ok((mechanism, public_template, private_template))
}

/// Creates key version `version` of `kind` (and, for the CA, its certificate): keys,
/// read-back of their protection, creation record. Objects are recorded in `created`
/// as they appear, so the caller can roll the whole ceremony back.
pub(crate) fn create_key(
    session: &Session,
    kind: KeyKind,
    version: u32,
    now: OffsetDateTime,
    created: &mut Created,
) -> Result<KeyInfo, HsmError> {
    let kid = kid(kind, version);
    for class in [
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::SECRET_KEY,
        ObjectClass::CERTIFICATE,
        ObjectClass::DATA,
    ] {
        if find_object(session, class, &kid)?.is_some() {
            return Err(HsmError::InvalidObject {
                label: kid,
                reason: format!("a {class} with this label already exists"),
            });
        }
    }
    let label = Attribute::Label(kid.as_bytes().to_vec());
    let id = Attribute::Id(kid.as_bytes().to_vec());

    let (handle, public_key_spki, fingerprint) = if kind.is_key_pair() {
        let (mechanism, public_template, private_template) = key_pair_templates(kind, label, id)?;
        let (public, private) = session
            .generate_key_pair(&mechanism, &public_template, &private_template)
            .map_err(map_cryptoki)?;
        created.push(public);
        created.push(private);
        check_protection(session, private, &kid)?;
        let public_token = session
            .get_attributes(public, &[AttributeType::Token])
            .map_err(map_cryptoki)?;
        if !public_token.contains(&Attribute::Token(true)) {
            return Err(HsmError::UnsafeKeyAttributes {
                kid,
                problems: "the public key is not a token object".into(),
            });
        }
        let spki = read_spki(session, kind, version)?;
        let fingerprint = sha256_hex(&spki);
        (private, Some(spki), Some(fingerprint))
    } else {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            label,
            id,
        ];
        let key = session
            .generate_key(&Mechanism::GenericSecretKeyGen, &template)
            .map_err(map_cryptoki)?;
        created.push(key);
        check_protection(session, key, &kid)?;
        let fingerprint = code_fingerprint(session, key)?;
        (key, None, Some(fingerprint))
    };

    if matches!(kind, KeyKind::ApplianceCa | KeyKind::Root) {
        let spki = public_key_spki.as_deref().unwrap_or_default();
        let signer = SessionSigner::new(session, handle, spki)?;
        let der = if kind == KeyKind::Root {
            super::ca::root_self_signed(&signer, spki, version, now)?
        } else {
            super::ca::self_signed(&signer, spki, version, now)?
        };
        store_certificate(session, &kid, der, created)?;
    }

    // Whole seconds: the certificate's notBefore has no more, and listings read better.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let created_text = now.format(&Rfc3339).map_err(|e| HsmError::InvalidObject {
        label: kid.clone(),
        reason: format!("creation time: {e}"),
    })?;
    let record = serde_json::json!({ "created": created_text }).to_string();
    store_data(session, &kid, record.into_bytes(), created)?;

    Ok(KeyInfo {
        kind,
        version,
        created: read_created(session, &kid)?,
        kid,
        public_key_spki,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use p256::pkcs8::EncodePublicKey;

    use super::*;

    #[test]
    fn kids_round_trip_and_strangers_are_ignored() {
        for kind in KeyKind::ALL {
            for version in [1, 2, 10, u32::MAX] {
                assert_eq!(parse_kid(&kid(kind, version)), Some((kind, version)));
            }
        }
        assert_eq!(kid(KeyKind::ApplianceCa, 3), "alga-ca-v3");
        for stranger in [
            "",
            "alga-",
            "alga-license",
            "alga-license-v",
            "alga-license-v0",
            "alga-license-v01",
            "alga-license-v1x",
            "alga-license-v-1",
            "alga-other-v1",
            "alga-license-v99999999999",
            "my-alga-license-v1",
        ] {
            assert_eq!(parse_kid(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn ec_points_are_unwrapped_from_their_octet_string() {
        let key = p256::SecretKey::from_slice(&[7u8; 32]).expect("a valid scalar");
        let point = p256::EncodedPoint::from(key.public_key());
        let point = point.as_bytes();
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(point);
        assert_eq!(sec1_point_from_ec_point(&wrapped), Some(point));
        assert_eq!(sec1_point_from_ec_point(point), Some(point));
        assert_eq!(sec1_point_from_ec_point(&wrapped[..40]), None);
        let spki = spki_from_sec1(point).expect("on the curve");
        assert_eq!(sec1_from_spki(&spki).as_deref(), Some(point));
        assert_eq!(
            spki,
            key.public_key()
                .to_public_key_der()
                .expect("encodes")
                .as_bytes()
        );
    }

    #[test]
    fn protection_problems_name_each_wrong_attribute() {
        let good = KeyProtection {
            token: Some(true),
            private: Some(true),
            sensitive: Some(true),
            always_sensitive: Some(true),
            extractable: Some(false),
            never_extractable: Some(true),
            sign: Some(true),
            decrypt: Some(false),
            encrypt: None,
            unwrap: Some(false),
            wrap: None,
            derive: Some(false),
        };
        assert!(good.problems().is_empty());
        let bad = KeyProtection {
            extractable: Some(true),
            never_extractable: None,
            derive: Some(true),
            ..good
        };
        let problems = bad.problems().join("; ");
        assert!(problems.contains("CKA_EXTRACTABLE is true"), "{problems}");
        assert!(
            problems.contains("CKA_NEVER_EXTRACTABLE is unreadable"),
            "{problems}"
        );
        assert!(problems.contains("CKA_DERIVE is true"), "{problems}");
    }

    #[test]
    fn ed25519_keys_are_unwrapped_from_their_octet_string_and_must_be_32_bytes() {
        let key = [0x42u8; 32];
        let mut wrapped = vec![0x04, 0x20];
        wrapped.extend_from_slice(&key);
        assert_eq!(ed25519_key_from_ec_point(&wrapped), Some(key));
        assert_eq!(ed25519_key_from_ec_point(&key), Some(key), "bare");
        for bad in [
            &wrapped[..33],
            &[wrapped.as_slice(), &[0]].concat()[..],
            &[&[0x04, 0x21][..], &key, &[0]].concat()[..],
            &[&[0x04, 0x81, 0x20][..], &key].concat()[..],
            &[&[0x03, 0x20][..], &key].concat()[..],
            &key[..31],
            &[],
        ] {
            assert_eq!(ed25519_key_from_ec_point(bad), None, "{bad:02x?}");
        }
        // A P-256 point is not an Ed25519 key, and the other way round.
        let p256 = p256::SecretKey::from_slice(&[7u8; 32]).expect("a valid scalar");
        let point = p256::EncodedPoint::from(p256.public_key());
        assert_eq!(ed25519_key_from_ec_point(point.as_bytes()), None);
        assert_eq!(sec1_point_from_ec_point(&wrapped), None);
    }
}
