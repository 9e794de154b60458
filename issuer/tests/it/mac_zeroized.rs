//! Issue 18, finding 13: the code key's HMAC output (the secret of an install code)
//! stays in wiping buffers from the PKCS#11 call to the code derivation.
//!
//! The type is the proof a test can give without `unsafe` (reading freed memory): the
//! MAC the key store hands out is a `keyring::Mac`, a heap box around `Zeroizing`, which
//! wipes its bytes when dropped; before the fix it was a plain `[u8; 32]` copied through
//! vectors and arrays (this test did not compile then). The worker's own buffer is
//! checked the same way by `hsm::worker`'s unit test.

use alga_issuer::keyring::{KeyOps, Mac};
use alga_protocol::{CodeId, InstallCode};

use crate::hsm::{Setup, isolated_in};

/// Compiles only for values that wipe themselves when dropped.
fn wiped_on_drop<T: zeroize::ZeroizeOnDrop + ?Sized>(_: &T) {}

#[test]
fn the_mac_reaches_the_code_derivation_in_a_wiping_buffer() {
    isolated_in(
        module_path!(),
        "the_mac_reaches_the_code_derivation_in_a_wiping_buffer",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mac: Mac = rt
                .block_on(hsm.hmac_sha256(1, b"binding".to_vec()))
                .expect("hmac");
            wiped_on_drop(&*mac);
            assert_eq!(mac.len(), 32);
            assert_ne!(**mac, [0u8; 32], "a real MAC, not the zeroed allocation");
            // The code is derived from it by reference (no copy on the way).
            let id = CodeId::random();
            let code = InstallCode::from_mac(id.clone(), &mac);
            let again = rt
                .block_on(hsm.hmac_sha256(1, b"binding".to_vec()))
                .expect("hmac");
            assert_eq!(
                code.expose_formatted().as_str(),
                InstallCode::from_mac(id, &again)
                    .expose_formatted()
                    .as_str()
            );
        },
    );
}
