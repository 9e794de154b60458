//! Audit checkpoints (CONTRACT.md §6): the issuer signs `(sequence, head hash)` of the
//! gateway's audit chain with the active audit key, over the exact bytes of
//! [`CheckpointStatement::to_bytes`], so the verify tool can check them offline.

use alga_protocol::issuer_api::{CheckpointStatement, SignCheckpointRequest, SignedCheckpoint};
use alga_protocol::signlog::{SignEvent, SignIds, SignOp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Signed, active_key, whole_seconds};
use crate::Error;
use crate::keyring::{KeyKind, KeyOps};

/// Signs a checkpoint of `req` at `now` (whole seconds: the statement carries seconds).
pub async fn sign<K: KeyOps>(
    keys: &K,
    req: &SignCheckpointRequest,
    now: OffsetDateTime,
) -> Result<Signed<SignedCheckpoint>, Error> {
    if req.head_hash.len() != 64 || !req.head_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadRequest {
            reason: "head_hash must be 64 hex characters (SHA-256)".into(),
        });
    }
    let head_hash = req.head_hash.to_ascii_lowercase();
    let signed_at = whole_seconds(now);
    let key = active_key(keys, KeyKind::Audit)?;
    let statement = CheckpointStatement {
        sequence: req.sequence,
        head_hash: &head_hash,
        signed_at,
        kid: &key.kid,
    };
    let digest: [u8; 32] = Sha256::digest(statement.to_bytes()).into();
    let signature = keys
        .sign_digest(KeyKind::Audit, key.version, digest)
        .await?;
    Ok(Signed {
        value: SignedCheckpoint {
            sequence: req.sequence,
            head_hash: head_hash.clone(),
            signed_at,
            kid: key.kid.clone(),
            signature: B64.encode(signature),
        },
        event: SignEvent {
            time: now,
            op: SignOp::Checkpoint,
            ids: SignIds {
                sequence: Some(req.sequence),
                head_hash: Some(head_hash),
                ..SignIds::default()
            },
            kid: key.kid,
        },
    })
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    use time::macros::datetime;

    use super::*;
    use crate::ops::software_keys::SoftwareKeys;

    #[tokio::test]
    async fn a_checkpoint_verifies_over_the_statement_bytes() {
        let now = datetime!(2030-01-01 00:00:00.7 UTC);
        let keys = SoftwareKeys::new(now);
        keys.rotate(KeyKind::Audit, now);
        let req = SignCheckpointRequest {
            sequence: 42,
            head_hash: "AB".repeat(32),
        };
        let signed = sign(&keys, &req, now).await.expect("signs").value;
        assert_eq!(signed.kid, "alga-audit-v2");
        assert_eq!(signed.head_hash, "ab".repeat(32));
        assert_eq!(signed.signed_at, datetime!(2030-01-01 00:00:00 UTC));
        let info = &keys.keys(KeyKind::Audit)[1];
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(
            info.public_key_spki.as_deref().expect("spki"),
        )
        .expect("key");
        let statement = CheckpointStatement {
            sequence: 42,
            head_hash: &signed.head_hash,
            signed_at: signed.signed_at,
            kid: &signed.kid,
        };
        let sig = p256::ecdsa::Signature::from_slice(&B64.decode(&signed.signature).expect("b64"))
            .expect("64 bytes");
        vk.verify(&statement.to_bytes(), &sig).expect("verifies");
    }

    #[tokio::test]
    async fn a_head_hash_must_be_a_sha256() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let keys = SoftwareKeys::new(now);
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            &format!("{} ", "a".repeat(63)),
        ] {
            let req = SignCheckpointRequest {
                sequence: 1,
                head_hash: bad.to_owned(),
            };
            let e = sign(&keys, &req, now).await.expect_err("refused");
            assert!(matches!(e, Error::BadRequest { .. }), "{bad:?}: {e}");
        }
    }
}
