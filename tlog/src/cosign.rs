//! c2sp.org/tlog-cosignature v1 with Ed25519: what a witness signs, its key, and the
//! verifier that checks its cosignatures.
//!
//! The signed message is `cosignature/v1\ntime <t>\n` followed by the checkpoint body;
//! the signature line carries `key id ‖ u64be(t) ‖ Ed25519 signature`; the key id is
//! `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4]`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::TlogError;

const COSIGNATURE_TYPE: u8 = 0x04;
const SKEY_PREFIX: &str = "PRIVATE+KEY+";

fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut material = vec![COSIGNATURE_TYPE];
    material.extend_from_slice(public_key);
    signed_note::key_id(name, &material)
}

fn message(body: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{body}").into_bytes()
}

fn valid_name(name: &str) -> bool {
    signed_note::is_key_name_valid(name)
}

/// A witness's own signing key. Its file form is
/// `PRIVATE+KEY+<name>+<hex key id>+<base64(0x04 ‖ 32-byte seed)>`, kept mode 0600 by
/// the tool that writes it; `Debug` never shows the seed.
pub struct WitnessKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessKey")
            .field("name", &self.name)
            .field("vkey", &self.vkey())
            .finish_non_exhaustive()
    }
}

impl WitnessKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<WitnessKey, TlogError> {
        if !valid_name(name) {
            return Err(TlogError::malformed(
                "witness name",
                "empty, or has a space or '+'",
            ));
        }
        Ok(WitnessKey {
            name: name.to_owned(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        })
    }

    /// Parses the file form.
    pub fn from_skey(text: &str) -> Result<WitnessKey, TlogError> {
        let bad = |why: &str| TlogError::malformed("witness private key", why.to_owned());
        let rest = text
            .trim()
            .strip_prefix(SKEY_PREFIX)
            .ok_or_else(|| bad("no PRIVATE+KEY+ prefix"))?;
        // Names have no '+'; base64 may.
        let mut parts = rest.splitn(3, '+');
        let name = parts.next().ok_or_else(|| bad("no name"))?;
        let id = parts.next().ok_or_else(|| bad("no key id"))?;
        let material = parts.next().ok_or_else(|| bad("no key"))?;
        let material = Zeroizing::new(
            STANDARD
                .decode(material)
                .map_err(|_| bad("key is not base64"))?,
        );
        let [COSIGNATURE_TYPE, seed @ ..] = material.as_slice() else {
            return Err(bad("not an Ed25519 cosignature key (type 0x04)"));
        };
        let seed: &[u8; 32] = seed.try_into().map_err(|_| bad("seed is not 32 bytes"))?;
        let key = WitnessKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        };
        if !valid_name(name) || format!("{:08x}", key.key_id()) != id {
            return Err(bad("name or key id does not match the key"));
        }
        Ok(key)
    }

    /// The file form (a secret).
    pub fn to_skey(&self) -> Zeroizing<String> {
        let mut material = Zeroizing::new(vec![COSIGNATURE_TYPE]);
        material.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "{SKEY_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_id(),
            STANDARD.encode(material.as_slice())
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        key_id(&self.name, self.key.verifying_key().as_bytes())
    }

    /// The public verifier key (`<name>+<key id>+<base64(0x04 ‖ key)>`) others
    /// configure to check this witness's cosignatures.
    pub fn vkey(&self) -> String {
        let public = self.key.verifying_key();
        let mut material = vec![COSIGNATURE_TYPE];
        material.extend_from_slice(public.as_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id(),
            STANDARD.encode(material)
        )
    }

    /// The cosignature line (`— <name> <base64>\n`) on a checkpoint body at `timestamp`
    /// (POSIX seconds, not zero).
    pub fn cosign(&self, body: &str, timestamp: u64) -> String {
        let signature = self.key.sign(&message(body, timestamp));
        let mut bytes = self.key_id().to_be_bytes().to_vec();
        bytes.extend_from_slice(&timestamp.to_be_bytes());
        bytes.extend_from_slice(&signature.to_bytes());
        format!("— {} {}\n", self.name, STANDARD.encode(bytes))
    }
}

/// Checks one witness's cosignatures (a `signed_note` verifier for type 0x04 keys).
#[derive(Debug, Clone)]
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses a witness's verifier key.
    pub fn from_vkey(vkey: &str) -> Result<CosignatureVerifier, TlogError> {
        let bad = |why: &str| TlogError::malformed("witness verifier key", why.to_owned());
        // Names have no '+'; base64 may.
        let mut parts = vkey.trim().splitn(3, '+');
        let name = parts.next().ok_or_else(|| bad("no name"))?;
        let id = parts.next().ok_or_else(|| bad("no key id"))?;
        let material = parts.next().ok_or_else(|| bad("no key"))?;
        let material = STANDARD
            .decode(material)
            .map_err(|_| bad("key is not base64"))?;
        let [COSIGNATURE_TYPE, public @ ..] = material.as_slice() else {
            return Err(bad("not an Ed25519 cosignature key (type 0x04)"));
        };
        let public: &[u8; 32] = public.try_into().map_err(|_| bad("key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(public).map_err(|_| bad("not an Ed25519 point"))?;
        let computed = key_id(name, public);
        if !valid_name(name) || format!("{computed:08x}") != id {
            return Err(bad("name or key id does not match the key"));
        }
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            id: computed,
            key,
        })
    }

    /// The witness's name (its key name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `line` (`— <name> <base64>`, with or without its newline) is this
    /// witness's valid cosignature on the checkpoint `note`; returns its time.
    pub fn check(&self, note: &str, line: &str) -> Result<u64, TlogError> {
        let line = line.trim_end_matches('\n');
        let with = format!("{note}{line}\n");
        let parsed = signed_note::Note::from_bytes(with.as_bytes())
            .map_err(|e| TlogError::malformed("cosigned checkpoint", e.to_string()))?;
        let list = signed_note::VerifierList::new(vec![
            Box::new(self.clone()) as Box<dyn signed_note::Verifier>
        ]);
        parsed
            .verify(&list)
            .map_err(|e| TlogError::Signature(format!("cosignature of {}: {e}", self.name)))?;
        self.timestamp_of(&with)
            .ok_or_else(|| TlogError::Signature(format!("no cosignature of {}", self.name)))
    }

    /// The time in a cosignature this verifier accepts, from its signature line.
    pub fn timestamp_of(&self, note: &str) -> Option<u64> {
        let prefix = format!("— {} ", self.name);
        note.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .find_map(|b64| {
                let bytes = STANDARD.decode(b64).ok()?;
                (bytes.len() == 76 && bytes[..4] == self.id.to_be_bytes())
                    .then(|| u64::from_be_bytes(bytes[4..12].try_into().unwrap_or_default()))
            })
    }
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let (Some(ts), Some(signature)) = (sig.get(..8), sig.get(8..)) else {
            return false;
        };
        let Ok(ts) = <[u8; 8]>::try_from(ts) else {
            return false;
        };
        let timestamp = u64::from_be_bytes(ts);
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        let Ok(body) = std::str::from_utf8(msg) else {
            return false;
        };
        timestamp != 0
            && timestamp < (1 << 63)
            && self
                .key
                .verify(&message(body, timestamp), &signature)
                .is_ok()
    }
}
