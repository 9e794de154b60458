//! The PKCS#11 signing mechanisms on a key handle: ECDSA P-256 over a digest,
//! Ed25519 over a message, HMAC-SHA256. The lowest layer of the HSM module beside
//! `error`: the workers (`worker`), the rcgen signers (`signer`) and the key
//! ceremonies (`objects`) all sign through these, and this module uses none of them.

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::error::{HsmError, map_cryptoki};

/// ECDSA P-256 over a digest (`CKM_ECDSA`): raw `r‖s`.
pub(crate) fn ecdsa_sign(
    session: &Session,
    key: ObjectHandle,
    digest: &[u8; 32],
) -> Result<[u8; 64], HsmError> {
    let sig = session
        .sign(&Mechanism::Ecdsa, key, digest)
        .map_err(map_cryptoki)?;
    sig.try_into()
        .map_err(|sig: Vec<u8>| HsmError::UnexpectedOutput {
            operation: "C_Sign(CKM_ECDSA)",
            reason: format!("{} bytes instead of 64", sig.len()),
        })
}

/// Ed25519 over the whole message (`CKM_EDDSA` without parameters: pure Ed25519, no
/// pre-hash, no context): the 64-byte `R‖S`.
pub(crate) fn eddsa_sign(
    session: &Session,
    key: ObjectHandle,
    message: &[u8],
) -> Result<[u8; 64], HsmError> {
    let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = session
        .sign(&mechanism, key, message)
        .map_err(map_cryptoki)?;
    sig.try_into()
        .map_err(|sig: Vec<u8>| HsmError::UnexpectedOutput {
            operation: "C_Sign(CKM_EDDSA)",
            reason: format!("{} bytes instead of 64", sig.len()),
        })
}

/// HMAC-SHA256 (`CKM_SHA256_HMAC`): the buffer cryptoki filled, wrapped in
/// [`Zeroizing`] as it comes back (never copied into a plain array or vector), 32
/// bytes long.
pub(crate) fn hmac_sha256(
    session: &Session,
    key: ObjectHandle,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let mac = Zeroizing::new(
        session
            .sign(&Mechanism::Sha256Hmac, key, data)
            .map_err(map_cryptoki)?,
    );
    if mac.len() != 32 {
        return Err(HsmError::UnexpectedOutput {
            operation: "C_Sign(CKM_SHA256_HMAC)",
            reason: format!("{} bytes instead of 32", mac.len()),
        });
    }
    Ok(mac)
}
