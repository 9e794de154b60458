//! Checkpoints: c2sp.org/tlog-checkpoint bodies in c2sp.org/signed-note notes, and the
//! log keys (Ed25519 verifier keys) that sign them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::Hash;

use crate::cosign::CosignatureVerifier;
use crate::error::TlogError;
use crate::merkle::check_size;

/// The log keys a reader trusts: Ed25519 verifier keys (`<origin>+<key id>+<key>`),
/// every one for the same origin (a rotated log key keeps its origin).
#[derive(Debug, Clone)]
pub struct LogKeys {
    origin: String,
    vkeys: Vec<String>,
}

impl LogKeys {
    /// Parses one verifier key per line (blank lines and `#` comments skipped), as
    /// `GET /audit/log/vkey` serves them.
    pub fn parse(text: &str) -> Result<LogKeys, TlogError> {
        let vkeys: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let mut origin: Option<String> = None;
        for vkey in &vkeys {
            let verifier = StandardVerifier::new(vkey)
                .map_err(|e| TlogError::malformed("log verifier key", e.to_string()))?;
            match &origin {
                None => origin = Some(verifier.name().to_owned()),
                Some(o) if o == verifier.name() => {}
                Some(o) => {
                    return Err(TlogError::malformed(
                        "log verifier keys",
                        format!("keys for two origins: {o:?} and {:?}", verifier.name()),
                    ));
                }
            }
        }
        let origin = origin.ok_or_else(|| TlogError::malformed("log verifier keys", "no key"))?;
        Ok(LogKeys { origin, vkeys })
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn verifiers(&self) -> VerifierList {
        VerifierList::new(
            self.vkeys
                .iter()
                .filter_map(|v| StandardVerifier::new(v).ok())
                .map(|v| Box::new(v) as Box<dyn Verifier>)
                .collect(),
        )
    }

    /// Verifies a signed checkpoint: a signature by one of these keys, a well-formed
    /// body, this origin. Signatures by other keys (witnesses' cosignatures) are
    /// ignored here.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, TlogError> {
        let parsed = Note::from_bytes(note.as_bytes())
            .map_err(|e| TlogError::malformed("checkpoint note", e.to_string()))?;
        parsed
            .verify(&self.verifiers())
            .map_err(|e| TlogError::Signature(format!("checkpoint: {e}")))?;
        let checkpoint = Checkpoint::parse_body(parsed.text(), note)?;
        if checkpoint.origin != self.origin {
            return Err(TlogError::Signature(format!(
                "checkpoint of origin {:?}, expected {:?}",
                checkpoint.origin, self.origin
            )));
        }
        Ok(checkpoint)
    }
}

/// A verified checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The body (origin, size, root lines and any extension lines).
    pub body: String,
    /// The whole note as received, signatures included.
    pub note: String,
}

impl Checkpoint {
    fn parse_body(text: &[u8], note: &str) -> Result<Checkpoint, TlogError> {
        let parsed = tlog_tiles::Checkpoint::from_bytes(text).map_err(|_| {
            TlogError::malformed("checkpoint", "not origin, size and root hash lines")
        })?;
        check_size(parsed.size())?;
        Ok(Checkpoint {
            origin: parsed.origin().to_owned(),
            size: parsed.size(),
            root: *parsed.hash(),
            body: String::from_utf8_lossy(text).into_owned(),
            note: note.to_owned(),
        })
    }

    /// The cosignatures on this checkpoint that verify with `witnesses`, by name.
    pub fn cosigned_by(&self, witnesses: &[CosignatureVerifier]) -> Vec<String> {
        let Ok(parsed) = Note::from_bytes(self.note.as_bytes()) else {
            return Vec::new();
        };
        witnesses
            .iter()
            .filter(|w| {
                let list = VerifierList::new(vec![Box::new((*w).clone()) as Box<dyn Verifier>]);
                parsed.verify(&list).is_ok()
            })
            .map(|w| w.name().to_owned())
            .collect()
    }
}

/// The origin, size and root a note's checkpoint body states, **without** checking
/// any signature: for the log's own writer, to check what its signer returned.
pub fn unverified_body(note: &str) -> Result<(String, u64, Hash), TlogError> {
    let parsed = Note::from_bytes(note.as_bytes())
        .map_err(|e| TlogError::malformed("checkpoint note", e.to_string()))?;
    let cp = Checkpoint::parse_body(parsed.text(), note)?;
    Ok((cp.origin, cp.size, cp.root))
}

/// The checkpoint body for a tree: `<origin>\n<size>\n<base64 root>\n`.
pub fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", STANDARD.encode(root.0))
}

/// The Ed25519 verifier key string of a log key (signature type 0x01).
pub fn log_vkey(origin: &str, public_key: &[u8; 32]) -> String {
    let mut material = vec![0x01];
    material.extend_from_slice(public_key);
    format!(
        "{origin}+{:08x}+{}",
        signed_note::key_id(origin, &material),
        STANDARD.encode(&material)
    )
}
