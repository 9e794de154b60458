//! Transparency-log checkpoints: the issuer signs the tree head of the audit log's
//! Merkle tree (RFC 6962) with the active log key (Ed25519), as a
//! [c2sp.org/signed-note](https://c2sp.org/signed-note) note whose text is a
//! [c2sp.org/tlog-checkpoint](https://c2sp.org/tlog-checkpoint) body.
//!
//! The gateway sends only `(size, root hash)`; the issuer writes the body itself with
//! the origin it is configured with, so the log key signs nothing but checkpoints of
//! this one log:
//!
//! ```text
//! <origin>\n
//! <size, decimal>\n
//! <root hash, standard base64>\n
//! \n
//! — <origin> <base64(key id ‖ signature)>\n
//! ```
//!
//! - The key name is the origin. Its key id is the first 4 bytes (big-endian) of
//!   SHA-256(name ‖ `\n` ‖ 0x01 ‖ public key), 0x01 being signed-note's Ed25519
//!   signature type; the verifier key published for it is
//!   `<name>+<key id, 8 hex>+<base64(0x01 ‖ public key)>` ([`verifier_key`]).
//! - The signature is Ed25519 over the body exactly (up to and including its last
//!   newline, without the blank line), made by the HSM (`CKM_EDDSA`). It is checked
//!   against the published public key before it is released.
//! - The line starts with U+2014 EM DASH and a space.

use alga_protocol::issuer_api::{SignLogCheckpointRequest, SignedLogCheckpoint};
use alga_protocol::signlog::{SignEvent, SignIds, SignOp};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Signed, active_key};
use crate::Error;
use crate::config::LogOrigin;
use crate::keyring::{KeyKind, KeyOps};

/// signed-note's signature type byte for Ed25519, first byte of the encoded key.
pub const ALG_ED25519: u8 = 0x01;

/// The checkpoint body: origin, size and root hash lines, each ending in `\n`, no
/// extension lines.
pub fn checkpoint_body(origin: &LogOrigin, size: u64, root_hash: &[u8; 32]) -> String {
    format!("{origin}\n{size}\n{}\n", STANDARD.encode(root_hash))
}

/// The signed-note key id of the Ed25519 key `public_key` named `name`: the first 4
/// bytes of SHA-256(name ‖ `\n` ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ALG_ED25519])
        .chain_update(public_key)
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The signed-note verifier key of the Ed25519 key `public_key` named `name`:
/// `<name>+<key id as 8 lower-case hex digits>+<base64(0x01 ‖ public key)>`.
pub fn verifier_key(name: &str, public_key: &[u8; 32]) -> String {
    let mut encoded = Vec::with_capacity(33);
    encoded.push(ALG_ED25519);
    encoded.extend_from_slice(public_key);
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, public_key)),
        STANDARD.encode(encoded)
    )
}

/// The whole note: `body`, a blank line, and the signature line of key `name`.
pub fn note(body: &str, name: &str, key_id: [u8; 4], signature: &[u8; 64]) -> String {
    let mut id_and_signature = Vec::with_capacity(68);
    id_and_signature.extend_from_slice(&key_id);
    id_and_signature.extend_from_slice(signature);
    format!(
        "{body}\n\u{2014} {name} {}\n",
        STANDARD.encode(id_and_signature)
    )
}

/// The root hash of a request: standard base64 (padded, canonical) of exactly 32
/// bytes.
fn root_hash(encoded: &str) -> Result<[u8; 32], Error> {
    let bad = || Error::BadRequest {
        reason: "root_hash must be the standard base64 of 32 bytes (a SHA-256 root hash)".into(),
    };
    let bytes = STANDARD.decode(encoded).map_err(|_| bad())?;
    let hash: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    // One spelling per hash: what the checkpoint will carry is what was asked for.
    if STANDARD.encode(hash) != encoded {
        return Err(bad());
    }
    Ok(hash)
}

/// Signs the checkpoint of `req` under `origin` with the active log key; the event is
/// logged at `now`.
pub async fn sign<K: KeyOps>(
    keys: &K,
    origin: &LogOrigin,
    req: &SignLogCheckpointRequest,
    now: OffsetDateTime,
) -> Result<Signed<SignedLogCheckpoint>, Error> {
    let hash = root_hash(&req.root_hash)?;
    let key = active_key(keys, KeyKind::Log)?;
    let public_key = key
        .ed25519_public_key()
        .ok_or_else(|| Error::internal(format!("{} has no Ed25519 public key", key.kid)))?;
    let body = checkpoint_body(origin, req.size, &hash);
    let signature = keys
        .sign_ed25519(KeyKind::Log, key.version, body.clone().into_bytes())
        .await?;
    // A signature that does not verify under the published key never leaves.
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&public_key)
        .map_err(|_| Error::internal(format!("{}: invalid Ed25519 public key", key.kid)))?;
    verifying
        .verify_strict(
            body.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .map_err(|_| {
            Error::internal(format!(
                "{}: the log checkpoint signature does not verify",
                key.kid
            ))
        })?;
    let name = origin.as_str();
    Ok(Signed {
        value: SignedLogCheckpoint {
            note: note(&body, name, key_id(name, &public_key), &signature),
            kid: key.kid.clone(),
        },
        event: SignEvent {
            time: now,
            op: SignOp::LogCheckpoint,
            ids: SignIds {
                sequence: Some(req.size),
                head_hash: Some(hex::encode(hash)),
                ..SignIds::default()
            },
            kid: key.kid,
        },
    })
}

#[cfg(test)]
mod tests {
    use signed_note::{Note, NoteError, StandardVerifier, VerifierList};
    use time::macros::datetime;

    use super::*;
    use crate::ops::software_keys::SoftwareKeys;

    /// RFC 8032 §7.1, TEST 1: the secret key and its public key.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const ORIGIN: &str = "example.com/audit-log";

    // Computed independently, with Python 3 (hashlib, base64, and the `cryptography`
    // package for the Ed25519 signature):
    //   kid  = sha256(ORIGIN + b"\n" + b"\x01" + pk)[:4]
    //   vkey = ORIGIN + "+" + kid.hex() + "+" + b64encode(b"\x01" + pk)
    //   body = ORIGIN + "\n12345\n" + b64encode(bytes(range(32))) + "\n"
    //   note = body + "\n" + "\u2014 " + ORIGIN + " " + b64encode(kid + sk.sign(body)) + "\n"
    const KEY_ID: [u8; 4] = [0xff, 0xa2, 0xbe, 0xb3];
    const VKEY: &str =
        "example.com/audit-log+ffa2beb3+AddamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea";
    const BODY: &str =
        "example.com/audit-log\n12345\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
    const NOTE: &str = "example.com/audit-log\n12345\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n\u{2014} example.com/audit-log /6K+s+E0vKLNnzP2uSM5o5mLdrgNj7hn3zVi13wwGfbLB0TXD6aWwEpnAVa7TFHCtUKIIFxHXC64bGRDkhUMB8UHlg4=\n";

    fn bytes32(hex: &str) -> [u8; 32] {
        hex::decode(hex).expect("hex").try_into().expect("32 bytes")
    }

    fn origin() -> LogOrigin {
        LogOrigin::new(ORIGIN).expect("a valid origin")
    }

    fn root() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    fn request(size: u64, root_hash: &[u8]) -> SignLogCheckpointRequest {
        SignLogCheckpointRequest {
            size,
            root_hash: STANDARD.encode(root_hash),
        }
    }

    fn verify(note: &str, vkey: &str) -> Result<(), NoteError> {
        let verifier = StandardVerifier::new(vkey).expect("a valid verifier key");
        let known = VerifierList::new(vec![Box::new(verifier)]);
        Note::from_bytes(note.as_bytes())?
            .verify(&known)
            .map(|_| ())
    }

    #[test]
    fn body_key_id_and_verifier_key_match_the_python_vector() {
        let public_key = bytes32(PUBLIC_KEY);
        assert_eq!(checkpoint_body(&origin(), 12345, &root()), BODY);
        assert_eq!(key_id(ORIGIN, &public_key), KEY_ID);
        assert_eq!(verifier_key(ORIGIN, &public_key), VKEY);
        // The same, as the signed_note crate computes them.
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&public_key).expect("key");
        assert_eq!(signed_note::new_ed25519_verifier_key(ORIGIN, &vk), VKEY);
        assert_eq!(
            signed_note::key_id(ORIGIN, &[&[ALG_ED25519][..], &public_key].concat()),
            u32::from_be_bytes(KEY_ID)
        );
        assert_eq!(
            ed25519_dalek::SigningKey::from_bytes(&bytes32(SEED))
                .verifying_key()
                .to_bytes(),
            public_key
        );
    }

    #[tokio::test]
    async fn a_checkpoint_is_the_python_vector_and_signed_note_verifies_it() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let keys = SoftwareKeys::new(now);
        keys.set_ed25519_key(KeyKind::Log, 1, bytes32(SEED));
        let signed = sign(&keys, &origin(), &request(12345, &root()), now)
            .await
            .expect("signs");
        assert_eq!(signed.value.kid, "alga-log-v1");
        assert_eq!(signed.value.note, NOTE);
        verify(&signed.value.note, VKEY).expect("signed_note verifies it");

        // One byte of the body changed: the signature no longer verifies.
        let tampered = signed.value.note.replacen("12345", "12346", 1);
        assert!(
            matches!(
                verify(&tampered, VKEY),
                Err(NoteError::InvalidSignature { .. })
            ),
            "{tampered}"
        );

        let event = signed.event;
        assert_eq!(event.op, SignOp::LogCheckpoint);
        assert_eq!(event.time, now);
        assert_eq!(event.kid, "alga-log-v1");
        assert_eq!(event.ids.sequence, Some(12345));
        assert_eq!(event.ids.head_hash, Some(hex::encode(root())));
        assert_eq!(
            event.ids,
            SignIds {
                sequence: Some(12345),
                head_hash: Some(hex::encode(root())),
                ..SignIds::default()
            }
        );
    }

    #[tokio::test]
    async fn the_active_log_key_signs_and_old_notes_keep_verifying() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let keys = SoftwareKeys::new(now);
        let vkey = |version: u32| {
            let info = &keys.keys(KeyKind::Log)[version as usize - 1];
            verifier_key(ORIGIN, &info.ed25519_public_key().expect("Ed25519"))
        };
        let old = sign(&keys, &origin(), &request(1, &[1; 32]), now)
            .await
            .expect("signs")
            .value;
        keys.rotate(KeyKind::Log, now);
        let new = sign(&keys, &origin(), &request(2, &[2; 32]), now)
            .await
            .expect("signs")
            .value;
        assert_eq!(
            (old.kid.as_str(), new.kid.as_str()),
            ("alga-log-v1", "alga-log-v2")
        );
        verify(&old.note, &vkey(1)).expect("the old note, the old key");
        verify(&new.note, &vkey(2)).expect("the new note, the new key");
        assert!(verify(&new.note, &vkey(1)).is_err(), "another key id");
    }

    #[tokio::test]
    async fn a_root_hash_must_be_standard_base64_of_32_bytes() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let keys = SoftwareKeys::new(now);
        let good = STANDARD.encode([7u8; 32]);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode([7u8; 32]);
        for bad in [
            String::new(),
            STANDARD.encode([7u8; 31]),
            STANDARD.encode([7u8; 33]),
            hex::encode([7u8; 32]),
            url_safe,
            unpadded,
            format!(" {good}"),
            format!("{good}\n"),
            // The last character carries bits beyond the 32 bytes: not canonical.
            format!("{}9=", &good[..42]),
        ] {
            let req = SignLogCheckpointRequest {
                size: 1,
                root_hash: bad.clone(),
            };
            let e = sign(&keys, &origin(), &req, now)
                .await
                .expect_err("refused");
            assert!(matches!(e, Error::BadRequest { .. }), "{bad:?}: {e}");
        }
        let req = SignLogCheckpointRequest {
            size: 0,
            root_hash: good,
        };
        let signed = sign(&keys, &origin(), &req, now).await.expect("good");
        assert_eq!(signed.event.ids.sequence, Some(0));
    }

    #[tokio::test]
    async fn a_key_store_failure_is_reported_and_nothing_is_signed() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let keys = SoftwareKeys::new(now);
        keys.set_down(true);
        let e = sign(&keys, &origin(), &request(1, &[1; 32]), now)
            .await
            .expect_err("down");
        assert!(
            matches!(e, Error::Hsm(crate::hsm::HsmError::Unavailable { .. })),
            "{e}"
        );
    }
}
