//! The seam between the signing operations and the key store.
//!
//! Operations (`ops::*`) never see PKCS#11: they ask a [`KeyOps`] for a signature or a
//! MAC by key kind and version. The production implementation is the HSM
//! (`hsm::Hsm`); unit tests of the operations use software keys. Everything here is
//! public key material or metadata: no private key ever crosses this seam.

use std::fmt;
use std::future::Future;

use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::Error;

/// An HMAC-SHA256 output: the secret part of an install code is derived from it. It
/// lives on the heap (moving it moves a pointer, never the bytes) inside [`Zeroizing`],
/// from the buffer the PKCS#11 call filled to the code derivation, and is wiped when
/// dropped. Build one with [`new_mac`].
pub type Mac = Box<Zeroizing<[u8; 32]>>;

/// A zeroed [`Mac`], allocated where it will stay, to copy a MAC into.
pub fn new_mac() -> Mac {
    Box::new(Zeroizing::new([0u8; 32]))
}

/// The keys of CONTRACT.md §3, the trust root above them, and the transparency-log key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// EC P-256, the trust root appliances pin: it certifies the appliance CA and
    /// endorses each license key, in key ceremonies only (a serving issuer refuses
    /// to sign with it). See `alga_protocol::trust`.
    Root,
    /// EC P-256, signs license JWTs (ES256), published as JWKS.
    License,
    /// EC P-256, signs per-appliance client certificates.
    ApplianceCa,
    /// Generic secret (HMAC-SHA256), derives and verifies install codes.
    Code,
    /// EC P-256, signs audit checkpoints.
    Audit,
    /// Ed25519, signs the checkpoints of the audit log's Merkle tree (the transparency
    /// log) as c2sp.org/signed-note notes, under the configured log origin.
    Log,
}

/// What a key kind is, on the token and in signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// An EC P-256 key pair (`CKK_EC`): ECDSA over a SHA-256 digest.
    EcP256,
    /// An Ed25519 key pair (`CKK_EC_EDWARDS`): pure EdDSA over the message.
    Ed25519,
    /// A 32-byte generic secret (`CKK_GENERIC_SECRET`): HMAC-SHA256.
    HmacSha256,
}

impl KeyAlgorithm {
    /// The stable name in `keys list` (`ec-p256`, `ed25519`, `hmac-sha256`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "ec-p256",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::HmacSha256 => "hmac-sha256",
        }
    }
}

impl KeyKind {
    /// Every kind, in the order `keys init` creates them.
    pub const ALL: [KeyKind; 6] = [
        KeyKind::Root,
        KeyKind::License,
        KeyKind::ApplianceCa,
        KeyKind::Code,
        KeyKind::Audit,
        KeyKind::Log,
    ];

    /// The kinds that came after the first key set: `keys init --if-missing` adds them
    /// to a token made before them (the other kinds it never creates on a token that
    /// holds keys).
    pub const ADDED_LATER: [KeyKind; 2] = [KeyKind::Root, KeyKind::Log];

    /// The stable short name used on the command line and in labels (`root`,
    /// `license`, `ca`, `code`, `audit`, `log`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Root => "root",
            KeyKind::License => "license",
            KeyKind::ApplianceCa => "ca",
            KeyKind::Code => "code",
            KeyKind::Audit => "audit",
            KeyKind::Log => "log",
        }
    }

    /// Parses the short name of [`KeyKind::as_str`].
    pub fn parse(s: &str) -> Option<KeyKind> {
        KeyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What this kind is: P-256 (root, license, CA, audit), Ed25519 (log) or HMAC
    /// (code).
    pub fn algorithm(self) -> KeyAlgorithm {
        match self {
            KeyKind::Root | KeyKind::License | KeyKind::ApplianceCa | KeyKind::Audit => {
                KeyAlgorithm::EcP256
            }
            KeyKind::Log => KeyAlgorithm::Ed25519,
            KeyKind::Code => KeyAlgorithm::HmacSha256,
        }
    }

    /// Whether this kind is a key pair (private key on the token, public key
    /// published): every kind but the code key.
    pub fn is_key_pair(self) -> bool {
        self.algorithm() != KeyAlgorithm::HmacSha256
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Public facts about one version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kind: KeyKind,
    /// 1, 2, … ; the highest version of a kind is the active one.
    pub version: u32,
    /// Stable identifier, `alga-<kind>-v<version>` (the JWKS `kid` for license keys).
    pub kid: String,
    /// DER SubjectPublicKeyInfo for key pairs (id-ecPublicKey with prime256v1, or
    /// id-Ed25519 per RFC 8410); `None` for the code key.
    pub public_key_spki: Option<Vec<u8>>,
    /// SHA-256 of the SPKI (hex) for key pairs; for the code key, SHA-256 of its
    /// PKCS#11 `CKA_CHECK_VALUE`-like public identity, or `None` when there is none.
    pub fingerprint: Option<String>,
    /// When the key was created (as recorded on the token).
    pub created: OffsetDateTime,
}

impl KeyInfo {
    /// The raw 32-byte public key of an Ed25519 key (from its SPKI); `None` for any
    /// other key.
    pub fn ed25519_public_key(&self) -> Option<[u8; 32]> {
        if self.kind.algorithm() != KeyAlgorithm::Ed25519 {
            return None;
        }
        ed25519_from_spki(self.public_key_spki.as_deref()?)
    }
}

/// The fixed DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (no unused bits) }, before the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER SubjectPublicKeyInfo (id-ecPublicKey, prime256v1) of a SEC1 point, checking
/// that the point is on the curve.
pub fn spki_from_sec1(point: &[u8]) -> Option<Vec<u8>> {
    let key = p256::PublicKey::from_sec1_bytes(point).ok()?;
    Some(key.to_public_key_der().ok()?.as_bytes().to_vec())
}

/// The uncompressed SEC1 point of a P-256 SPKI.
pub fn sec1_from_spki(spki: &[u8]) -> Option<Vec<u8>> {
    let key = p256::PublicKey::from_public_key_der(spki).ok()?;
    Some(p256::EncodedPoint::from(key).as_bytes().to_vec())
}

/// The DER SubjectPublicKeyInfo of a raw Ed25519 public key (RFC 8410).
pub fn ed25519_spki(public_key: &[u8; 32]) -> Vec<u8> {
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(public_key);
    spki
}

/// The raw public key of an Ed25519 SubjectPublicKeyInfo, if `spki` is exactly one
/// (RFC 8410 form, 44 bytes) and the key is a valid curve point.
pub fn ed25519_from_spki(spki: &[u8]) -> Option<[u8; 32]> {
    let key: [u8; 32] = spki.strip_prefix(&ED25519_SPKI_PREFIX)?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).ok()?;
    Some(key)
}

/// One version of the appliance CA certificate (DER), stored on the token beside its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    pub version: u32,
    /// Self-signed: the gateway's trust anchor for appliance client certificates.
    pub der: Vec<u8>,
    /// The same subject and key, issued by the trust root: the chain appliances
    /// verify (leaf → this → pinned root). `None` only on a token made before the
    /// root existed, until `keys init --if-missing` completes it (the issuer does not
    /// serve until then).
    pub certified: Option<Vec<u8>>,
}

/// The trust root's certificate (DER, self-signed), stored on the token beside its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCertificate {
    pub version: u32,
    pub der: Vec<u8>,
}

/// The trust root's endorsement of one license key version: a compact JWS
/// (`alga_protocol::trust`) that every license signed by the key carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseEndorsement {
    pub version: u32,
    pub jws: String,
    /// Its payload, read back when the token was loaded.
    pub endorsement: alga_protocol::trust::KeyEndorsement,
}

/// What the signing operations need from the key store.
///
/// Implementations do blocking HSM work off the async runtime. They fail with
/// [`Error::Hsm`]: the HSM's own error, mapped from PKCS#11 in one place
/// (`hsm::error`); an unknown key (kind, version) is
/// [`HsmError::UnknownKey`](crate::hsm::HsmError::UnknownKey).
pub trait KeyOps: Send + Sync + 'static {
    /// ECDSA P-256 over a SHA-256 digest the caller computed; returns raw `r‖s`
    /// (64 bytes, the JWS ES256 form). `kind` must be a P-256 kind.
    fn sign_digest(
        &self,
        kind: KeyKind,
        version: u32,
        digest: [u8; 32],
    ) -> impl Future<Output = Result<[u8; 64], Error>> + Send;

    /// Ed25519 (pure EdDSA, RFC 8032: no pre-hash, no context) over `message`;
    /// returns the 64-byte signature `R‖S`. `kind` must be an Ed25519 kind (the log
    /// key); any other kind is an unknown key.
    fn sign_ed25519(
        &self,
        kind: KeyKind,
        version: u32,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<[u8; 64], Error>> + Send;

    /// HMAC-SHA256 with the code key of `version` (a secret: see [`Mac`]).
    fn hmac_sha256(
        &self,
        version: u32,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<Mac, Error>> + Send;

    /// Whether the key store can serve at all, for the issuer's health route: an error
    /// when it has stopped until an operator acts (the HSM refused the PIN and no
    /// further login is tried). A transient failure of one operation is not reported
    /// here. The default says yes.
    fn health(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The active (highest) version of `kind`.
    fn active_version(&self, kind: KeyKind) -> u32;

    /// Every version of `kind` on the token, oldest first.
    fn keys(&self, kind: KeyKind) -> Vec<KeyInfo>;

    /// Every appliance CA certificate on the token, oldest first.
    fn ca_certificates(&self) -> Vec<CaCertificate>;

    /// The trust root's certificates, oldest first.
    fn root_certificates(&self) -> Vec<RootCertificate>;

    /// The root's endorsement of license key `version`, if it has one.
    fn license_endorsement(&self, version: u32) -> Option<LicenseEndorsement>;
}
