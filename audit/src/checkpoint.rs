//! Checkpoint signatures: the audit public keys and the check of one checkpoint.
//!
//! A checkpoint is valid when its signature (base64url raw P-256 `r‖s`) verifies over
//! SHA-256 of [`CheckpointStatement::to_bytes`] with the audit key named by its `kid`.

use std::collections::BTreeMap;

use alga_protocol::issuer_api::{AuditKey, CheckpointStatement, SignedCheckpoint};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use crate::error::AuditError;

/// The audit public keys a verifier trusts.
#[derive(Debug, Clone, Default)]
pub struct AuditKeys {
    /// Keys by `kid` (from the issuer's `PublicKeys`).
    by_kid: BTreeMap<String, VerifyingKey>,
    /// Keys without a `kid` (a PEM file): tried for any `kid`.
    any: Vec<VerifyingKey>,
}

impl AuditKeys {
    /// Parses either the issuer's `GET /v1/keys` JSON (`PublicKeys`; only
    /// `audit_keys` is used) or one or more PEM `PUBLIC KEY` blocks.
    pub fn parse(text: &str) -> Result<AuditKeys, AuditError> {
        if text.trim_start().starts_with('{') {
            #[derive(Deserialize)]
            struct OnlyAuditKeys {
                audit_keys: Vec<AuditKey>,
            }
            let doc: OnlyAuditKeys = serde_json::from_str(text)
                .map_err(|e| AuditError::Key(format!("not a PublicKeys document: {e}")))?;
            let mut keys = AuditKeys::default();
            for k in &doc.audit_keys {
                let der = STANDARD.decode(&k.spki_der_b64).map_err(|_| {
                    AuditError::Key(format!("key {}: spki_der_b64 is not base64", k.kid))
                })?;
                let key = VerifyingKey::from_public_key_der(&der).map_err(|e| {
                    AuditError::Key(format!("key {}: not a P-256 SPKI: {e}", k.kid))
                })?;
                keys.by_kid.insert(k.kid.clone(), key);
            }
            if keys.by_kid.is_empty() {
                return Err(AuditError::Key("the document lists no audit key".into()));
            }
            Ok(keys)
        } else {
            let mut keys = AuditKeys::default();
            for block in text.split_inclusive("-----END PUBLIC KEY-----") {
                if !block.contains("-----BEGIN PUBLIC KEY-----") {
                    continue;
                }
                let start = block.find("-----BEGIN").unwrap_or(0);
                let key = VerifyingKey::from_public_key_pem(&block[start..])
                    .map_err(|e| AuditError::Key(format!("not a P-256 PEM public key: {e}")))?;
                keys.any.push(key);
            }
            if keys.any.is_empty() {
                return Err(AuditError::Key(
                    "neither a PublicKeys JSON document nor a PEM public key".into(),
                ));
            }
            Ok(keys)
        }
    }

    /// One key under one `kid`.
    pub fn single(kid: &str, key: VerifyingKey) -> AuditKeys {
        let mut keys = AuditKeys::default();
        keys.by_kid.insert(kid.to_owned(), key);
        keys
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.any.is_empty()
    }

    /// Checks one checkpoint's signature.
    pub fn check(&self, cp: &SignedCheckpoint) -> Result<(), CheckpointFault> {
        let sig = URL_SAFE_NO_PAD
            .decode(&cp.signature)
            .ok()
            .and_then(|raw| Signature::from_slice(&raw).ok())
            .ok_or(CheckpointFault::Malformed)?;
        if cp.head_hash.len() != 64 || hex::decode(&cp.head_hash).is_err() {
            return Err(CheckpointFault::Malformed);
        }
        let statement = statement_bytes(cp);
        let candidates: Vec<&VerifyingKey> = match self.by_kid.get(&cp.kid) {
            Some(k) => vec![k],
            None if self.any.is_empty() => return Err(CheckpointFault::UnknownKid),
            None => self.any.iter().collect(),
        };
        if candidates
            .iter()
            .any(|k| k.verify(&statement, &sig).is_ok())
        {
            Ok(())
        } else {
            Err(CheckpointFault::BadSignature)
        }
    }
}

/// The bytes a checkpoint's signature covers.
pub fn statement_bytes(cp: &SignedCheckpoint) -> Vec<u8> {
    CheckpointStatement {
        sequence: cp.sequence,
        head_hash: &cp.head_hash,
        signed_at: cp.signed_at,
        kid: &cp.kid,
    }
    .to_bytes()
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFault {
    /// The signature or head hash is not in the expected encoding.
    Malformed,
    /// No trusted key has this `kid`.
    UnknownKid,
    /// The signature does not verify.
    BadSignature,
}

impl std::fmt::Display for CheckpointFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointFault::Malformed => "signature or head hash malformed",
            CheckpointFault::UnknownKid => "signed by an unknown kid",
            CheckpointFault::BadSignature => "signature does not verify",
        })
    }
}
