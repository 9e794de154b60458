//! The transparency-log key against a real SoftHSM2 token: an Ed25519 key pair made
//! and kept like every other key, the completion of a token made before it existed,
//! signed notes that the `signed_note` crate verifies with the published verifier key,
//! and rotation.

use alga_issuer::Error;
use alga_issuer::config::LogOrigin;
use alga_issuer::hsm::admin::{self, KeysInitOutcome};
use alga_issuer::hsm::{Hsm, HsmError};
use alga_issuer::keyring::{KeyKind, KeyOps};
use alga_issuer::ops;
use alga_protocol::issuer_api::{LogKey, SignLogCheckpointRequest, SignedLogCheckpoint};
use alga_protocol::signlog::SignOp;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use signed_note::{Note, NoteError, StandardVerifier, VerifierList};
use time::OffsetDateTime;

use crate::hsm::{Setup, isolated_in};

const ORIGIN: &str = "alga-license.test/audit-log";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn origin() -> LogOrigin {
    LogOrigin::new(ORIGIN).expect("a valid origin")
}

fn find(session: &Session, class: ObjectClass, label: &str) -> Vec<ObjectHandle> {
    session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("find")
}

/// Signs a checkpoint of (`size`, `root`) with `hsm`'s active log key.
fn checkpoint(hsm: &Hsm, size: u64, root: [u8; 32]) -> SignedLogCheckpoint {
    let req = SignLogCheckpointRequest {
        size,
        root_hash: STANDARD.encode(root),
    };
    let signed = rt()
        .block_on(ops::log_checkpoint::sign(
            hsm,
            &origin(),
            &req,
            OffsetDateTime::now_utc(),
        ))
        .expect("signs");
    assert_eq!(signed.event.op, SignOp::LogCheckpoint);
    signed.value
}

/// The log keys as the issuer publishes them.
fn published(hsm: &Hsm) -> Vec<LogKey> {
    ops::public_keys::public_keys(hsm, &origin())
        .expect("publishes")
        .log_keys
}

/// Verifies `note` with `signed_note` and nothing but the verifier key `vkey`.
fn verify(note: &str, vkey: &str) -> Result<(), NoteError> {
    let verifier = StandardVerifier::new(vkey).expect("a valid verifier key");
    let known = VerifierList::new(vec![Box::new(verifier)]);
    Note::from_bytes(note.as_bytes())?
        .verify(&known)
        .map(|_| ())
}

#[test]
fn the_log_key_is_an_ed25519_key_that_never_leaves_the_token() {
    isolated_in(
        module_path!(),
        "the_log_key_is_an_ed25519_key_that_never_leaves_the_token",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let info = hsm.keys(KeyKind::Log);
            assert_eq!(info.len(), 1);
            let public_key = info[0].ed25519_public_key().expect("an Ed25519 key");

            // Read back with plain cryptoki, independently of the module under test.
            let session = t.raw_session();
            let [private] = find(&session, ObjectClass::PRIVATE_KEY, "alga-log-v1")[..] else {
                panic!("one private key");
            };
            let attrs = session
                .get_attributes(
                    private,
                    &[
                        AttributeType::KeyType,
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::AlwaysSensitive,
                        AttributeType::Extractable,
                        AttributeType::NeverExtractable,
                        AttributeType::Sign,
                        AttributeType::Decrypt,
                        AttributeType::Unwrap,
                        AttributeType::Derive,
                        AttributeType::Id,
                    ],
                )
                .expect("attributes");
            for want in [
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::AlwaysSensitive(true),
                Attribute::Extractable(false),
                Attribute::NeverExtractable(true),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Id(b"alga-log-v1".to_vec()),
            ] {
                assert!(attrs.contains(&want), "want {want:?} in {attrs:?}");
            }
            // Nothing usable comes out of the private key.
            if let Ok(attrs) = session.get_attributes(private, &[AttributeType::Value]) {
                for a in attrs {
                    if let Attribute::Value(v) = a {
                        assert!(v.is_empty(), "CKA_VALUE readable ({} bytes)", v.len());
                    }
                }
            }

            let [public] = find(&session, ObjectClass::PUBLIC_KEY, "alga-log-v1")[..] else {
                panic!("one public key");
            };
            let attrs = session
                .get_attributes(
                    public,
                    &[
                        AttributeType::KeyType,
                        AttributeType::Token,
                        AttributeType::EcParams,
                        AttributeType::EcPoint,
                    ],
                )
                .expect("public attributes");
            assert!(attrs.contains(&Attribute::KeyType(KeyType::EC_EDWARDS)));
            assert!(attrs.contains(&Attribute::Token(true)));
            assert!(
                attrs.contains(&Attribute::EcParams(vec![0x06, 0x03, 0x2b, 0x65, 0x70])),
                "CKA_EC_PARAMS is the id-Ed25519 OID: {attrs:?}"
            );
            // CKA_EC_POINT: a DER OCTET STRING around the 32 bytes the issuer publishes.
            let mut point = vec![0x04, 0x20];
            point.extend_from_slice(&public_key);
            assert!(attrs.contains(&Attribute::EcPoint(point)), "{attrs:?}");
            assert_eq!(
                info[0].fingerprint.as_deref(),
                Some(alga_issuer::hsm::sha256_hex(
                    info[0].public_key_spki.as_deref().expect("spki")
                ))
                .as_deref()
            );

            // The log key signs Ed25519 only; nothing else signs Ed25519.
            let rt = rt();
            let err = rt
                .block_on(hsm.sign_digest(KeyKind::Log, 1, [1; 32]))
                .expect_err("not an ECDSA key");
            assert!(
                matches!(err, Error::Hsm(HsmError::UnknownKey { .. })),
                "{err:?}"
            );
            for kind in [
                KeyKind::License,
                KeyKind::Audit,
                KeyKind::Root,
                KeyKind::Code,
            ] {
                let err = rt
                    .block_on(hsm.sign_ed25519(kind, 1, b"x".to_vec()))
                    .expect_err("not an Ed25519 key");
                assert!(
                    matches!(err, Error::Hsm(HsmError::UnknownKey { .. })),
                    "{kind}: {err:?}"
                );
            }
            let err = rt
                .block_on(hsm.sign_ed25519(KeyKind::Log, 2, b"x".to_vec()))
                .expect_err("no version 2");
            assert!(
                matches!(err, Error::Hsm(HsmError::UnknownKey { .. })),
                "{err:?}"
            );

            // A raw signature verifies under the published key (pure Ed25519).
            let message = b"any message, no pre-hash".to_vec();
            let signature = rt
                .block_on(hsm.sign_ed25519(KeyKind::Log, 1, message.clone()))
                .expect("signs");
            ed25519_dalek::VerifyingKey::from_bytes(&public_key)
                .expect("key")
                .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature))
                .expect("verifies");

            // And it keeps signing after the workers lost their sessions.
            hsm.invalidate_sessions_for_test().expect("test hook");
            let again = rt
                .block_on(hsm.sign_ed25519(KeyKind::Log, 1, message))
                .expect("signs after recovery");
            assert_eq!(again, signature, "Ed25519 is deterministic");
            assert!(hsm.session_recoveries() >= 1);
        },
    );
}

#[test]
fn a_token_from_before_the_log_key_is_completed_by_keys_init_if_missing() {
    isolated_in(
        module_path!(),
        "a_token_from_before_the_log_key_is_completed_by_keys_init_if_missing",
        Setup::Keys,
        |t| {
            // What the previous release left: every key but the log key.
            let session = t.raw_session();
            for class in [
                ObjectClass::PRIVATE_KEY,
                ObjectClass::PUBLIC_KEY,
                ObjectClass::DATA,
            ] {
                let found = find(&session, class, "alga-log-v1");
                assert_eq!(found.len(), 1, "{class}");
                session.destroy_object(found[0]).expect("destroy");
            }
            drop(session);

            let err = Hsm::open(&t.config, t.pin()).expect_err("not served without a log key");
            assert!(matches!(err, HsmError::KeysIncomplete { .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("log key") && text.contains("`alga-issuer keys init --if-missing`"),
                "{text}"
            );
            let err = admin::keys_rotate(
                &t.config,
                t.pin(),
                KeyKind::Log,
                &t.policy,
                OffsetDateTime::now_utc(),
            )
            .expect_err("rotation needs the complete set");
            assert!(matches!(err, HsmError::KeysIncomplete { .. }), "{err:?}");
            let err = admin::keys_init(
                &t.config,
                t.pin(),
                &t.policy,
                OffsetDateTime::now_utc(),
                false,
            )
            .expect_err("without --if-missing");
            assert!(
                matches!(err, HsmError::AlreadyInitialized { .. }),
                "{err:?}"
            );

            let before = admin::keys_list(&t.config, t.pin()).expect("list");
            let outcome = admin::keys_init(
                &t.config,
                t.pin(),
                &t.policy,
                OffsetDateTime::now_utc(),
                true,
            )
            .expect("completes");
            let KeysInitOutcome::Completed { added, .. } = &outcome else {
                panic!("{outcome:?}");
            };
            assert_eq!(added, &["alga-log-v1"]);
            let after = admin::keys_list(&t.config, t.pin()).expect("list");
            assert_eq!(after.len(), before.len() + 1);
            for key in &before {
                assert!(after.contains(key), "{} unchanged", key.kid);
            }

            let hsm = t.open();
            let note = checkpoint(&hsm, 3, [3; 32]);
            verify(&note.note, &published(&hsm)[0].vkey).expect("verifies");
            let again = admin::keys_init(
                &t.config,
                t.pin(),
                &t.policy,
                OffsetDateTime::now_utc(),
                true,
            )
            .expect("idempotent");
            assert!(
                matches!(again, KeysInitOutcome::AlreadyComplete { .. }),
                "{again:?}"
            );
        },
    );
}

#[test]
fn hsm_signed_notes_verify_with_the_published_key_and_survive_rotation() {
    isolated_in(
        module_path!(),
        "hsm_signed_notes_verify_with_the_published_key_and_survive_rotation",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let root: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
            let old = checkpoint(&hsm, 1000, root);
            assert_eq!(old.kid, "alga-log-v1");
            let body = format!("{ORIGIN}\n1000\n{}\n", STANDARD.encode(root));
            assert!(
                old.note.starts_with(&format!("{body}\n\u{2014} {ORIGIN} ")),
                "{}",
                old.note
            );
            assert!(old.note.ends_with('\n') && old.note.lines().count() == 5);
            let keys = published(&hsm);
            assert_eq!(keys.len(), 1);
            assert_eq!((keys[0].kid.as_str(), keys[0].version), ("alga-log-v1", 1));
            let old_vkey = keys[0].vkey.clone();
            assert!(old_vkey.starts_with(&format!("{ORIGIN}+")), "{old_vkey}");
            verify(&old.note, &old_vkey).expect("signed_note verifies the HSM's note");

            // A one-byte change anywhere in the body breaks the signature.
            for (from, to) in [("1000", "1001"), (ORIGIN, "alga-license.test/audit-loh")] {
                let tampered = old.note.replacen(from, to, 1);
                assert_ne!(tampered, old.note);
                assert!(verify(&tampered, &old_vkey).is_err(), "{tampered}");
            }
            let mut root_changed = root;
            root_changed[31] ^= 1;
            let tampered =
                old.note
                    .replacen(&STANDARD.encode(root), &STANDARD.encode(root_changed), 1);
            assert!(matches!(
                verify(&tampered, &old_vkey),
                Err(NoteError::InvalidSignature { .. })
            ));
            drop(hsm);

            let rotated = admin::keys_rotate(
                &t.config,
                t.pin(),
                KeyKind::Log,
                &t.policy,
                OffsetDateTime::now_utc(),
            )
            .expect("rotate log");
            assert_eq!(rotated.kid, "alga-log-v2");
            let hsm = t.open();
            assert_eq!(hsm.active_version(KeyKind::Log), 2);
            let new = checkpoint(&hsm, 2000, [0xee; 32]);
            assert_eq!(new.kid, "alga-log-v2");
            let keys = published(&hsm);
            let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
            assert_eq!(kids, ["alga-log-v2", "alga-log-v1"], "active first");
            assert_eq!(
                keys[1].vkey, old_vkey,
                "the old key stays published as it was"
            );
            let key_id = |vkey: &str| vkey.split('+').nth(1).map(str::to_owned);
            assert_ne!(key_id(&keys[0].vkey), key_id(&old_vkey), "a new key id");
            assert_eq!(
                new.note.lines().last().map(|l| l.split(' ').nth(1)),
                Some(Some(ORIGIN)),
                "the same key name"
            );

            verify(&new.note, &keys[0].vkey).expect("the new note, the new key");
            verify(&old.note, &keys[1].vkey).expect("the old note, the old key");
            assert!(matches!(
                verify(&new.note, &old_vkey),
                Err(NoteError::UnverifiedNote)
            ));
            assert!(verify(&old.note, &keys[0].vkey).is_err());
        },
    );
}
