//! Install codes (CONTRACT.md §4): the secret part is an HMAC (code key, in the HSM) over
//! the code's [`CodeBinding`], so nothing secret is stored anywhere.
//!
//! - [`mint`] picks a random `code_id` and the active code key, bounds the expiry by
//!   the policy, and returns the binding to store and the code for the mail.
//! - [`derive()`] re-computes the code of a stored binding (the mail worker, so the
//!   outbox never holds a code). A derive is a mint of an existing binding, so it is
//!   held to the same bounds: known edition, an expiry that is neither over nor later
//!   than a fresh mint could ask for. An expired binding is refused: nobody needs its
//!   code any more, and a compromised gateway gets nothing out of old rows.
//! - [`verify`] answers only "is this the code of that binding": a code of another
//!   tenant, expiry, edition or key version does not match, and an unknown key version
//!   is simply not a match (never an error that tells versions apart). Expiry is the
//!   gateway's business (it reports `code_expired` only after the code verified).

use alga_policies::Policy;
use alga_protocol::issuer_api::{
    DeriveCodeResponse, MintCodeRequest, MintCodeResponse, VerifyCodeResponse,
};
use alga_protocol::signlog::{SignEvent, SignIds, SignOp};
use alga_protocol::{CodeBinding, CodeId, InstallCode, SecretText};
use time::{Duration, OffsetDateTime};

use super::{Signed, edition, whole_seconds};
use crate::Error;
use crate::hsm::HsmError;
use crate::keyring::{KeyKind, KeyOps};

/// Clock slack on the upper bound of an expiry (the gateway computes `expires_at`
/// from its own clock a moment before the issuer checks it).
pub const EXPIRY_SLACK: Duration = Duration::seconds(60);

/// Mints a new code for `req.tenant_id`.
pub async fn mint<K: KeyOps>(
    keys: &K,
    policy: &Policy,
    req: &MintCodeRequest,
    now: OffsetDateTime,
) -> Result<Signed<MintCodeResponse>, Error> {
    edition(policy, &req.edition)?;
    let expires_at = whole_seconds(req.expires_at);
    check_expiry(policy, expires_at, now)?;
    let binding = CodeBinding {
        code_id: CodeId::random(),
        tenant_id: req.tenant_id,
        edition: req.edition.clone(),
        expires_at,
        key_version: keys.active_version(KeyKind::Code),
        replaces_appliance_id: req.replaces_appliance_id,
    };
    let code = code_of(keys, &binding).await?;
    let event = event(SignOp::CodeMint, &binding, now);
    Ok(Signed {
        value: MintCodeResponse {
            binding,
            code: SecretText::new(code.expose_formatted().to_string()),
        },
        event,
    })
}

/// Re-derives the code of a stored, unexpired binding.
pub async fn derive<K: KeyOps>(
    keys: &K,
    policy: &Policy,
    binding: &CodeBinding,
    now: OffsetDateTime,
) -> Result<Signed<DeriveCodeResponse>, Error> {
    edition(policy, &binding.edition)?;
    check_expiry(policy, binding.expires_at, now)?;
    if !has_version(keys, binding.key_version) {
        return Err(Error::BadRequest {
            reason: format!("code key version {} does not exist", binding.key_version),
        });
    }
    let code = code_of(keys, binding).await?;
    Ok(Signed {
        value: DeriveCodeResponse {
            code: SecretText::new(code.expose_formatted().to_string()),
        },
        event: event(SignOp::CodeDerive, binding, now),
    })
}

/// Whether `presented` is the code of `binding` (constant-time comparison).
///
/// A malformed code is [`Error::CodeMalformed`]; a code of another binding, or of a
/// key version that does not exist, is `valid: false`.
pub async fn verify<K: KeyOps>(
    keys: &K,
    binding: &CodeBinding,
    presented: &SecretText,
) -> Result<VerifyCodeResponse, Error> {
    let presented = InstallCode::parse(presented.expose()).map_err(Error::CodeMalformed)?;
    if !has_version(keys, binding.key_version) {
        return Ok(VerifyCodeResponse { valid: false });
    }
    let expected = match code_of(keys, binding).await {
        Ok(code) => code,
        Err(Error::Hsm(HsmError::UnknownKey { .. })) => {
            return Ok(VerifyCodeResponse { valid: false });
        }
        Err(e) => return Err(e),
    };
    Ok(VerifyCodeResponse {
        valid: expected.ct_matches(&presented),
    })
}

/// Refuses an expiry that is over, or later than a mint at `now` may ask for.
fn check_expiry(
    policy: &Policy,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(), Error> {
    if expires_at <= now {
        return Err(Error::beyond("the code's expiry is not in the future"));
    }
    if expires_at > now + policy.install_code_ttl + EXPIRY_SLACK {
        return Err(Error::beyond(format!(
            "an install code may live at most {}",
            alga_policies::format_duration(policy.install_code_ttl)
        )));
    }
    Ok(())
}

fn has_version<K: KeyOps>(keys: &K, version: u32) -> bool {
    keys.keys(KeyKind::Code)
        .iter()
        .any(|k| k.version == version)
}

async fn code_of<K: KeyOps>(keys: &K, binding: &CodeBinding) -> Result<InstallCode, Error> {
    // A `keyring::Mac`: zeroized on drop, on the heap since the PKCS#11 call.
    let mac = keys
        .hmac_sha256(binding.key_version, binding.mac_input())
        .await?;
    Ok(InstallCode::from_mac(binding.code_id.clone(), &mac))
}

fn event(op: SignOp, binding: &CodeBinding, now: OffsetDateTime) -> SignEvent {
    SignEvent {
        time: now,
        op,
        ids: SignIds {
            tenant_id: Some(binding.tenant_id),
            code_id: Some(binding.code_id.clone()),
            replaces_appliance_id: binding.replaces_appliance_id,
            edition: Some(binding.edition.clone()),
            expires_at: Some(binding.expires_at),
            ..SignIds::default()
        },
        kid: crate::hsm::kid(KeyKind::Code, binding.key_version),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;
    use crate::ops::software_keys::{SoftwareKeys, test_policy};

    const NOW: OffsetDateTime = datetime!(2030-06-01 12:00:00 UTC);

    fn request(days: i64) -> MintCodeRequest {
        MintCodeRequest {
            tenant_id: Uuid::from_u128(0x1111),
            edition: "pro".into(),
            expires_at: NOW + Duration::days(days) + Duration::milliseconds(250),
            replaces_appliance_id: None,
        }
    }

    #[tokio::test]
    async fn mint_then_verify_and_derive_round_trip() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        let minted = mint(&keys, &policy, &request(14), NOW)
            .await
            .expect("mints");
        let binding = &minted.value.binding;
        assert_eq!(
            binding.expires_at,
            datetime!(2030-06-15 12:00:00 UTC),
            "whole seconds"
        );
        assert_eq!(binding.key_version, 1);
        assert_eq!(minted.event.op, SignOp::CodeMint);
        assert_eq!(minted.event.kid, "alga-code-v1");
        assert_eq!(minted.event.ids.code_id.as_ref(), Some(&binding.code_id));

        let ok = verify(&keys, binding, &minted.value.code)
            .await
            .expect("verifies");
        assert!(ok.valid);
        // What an operator types: lower case, spaces.
        let typed = SecretText::new(minted.value.code.expose().to_lowercase().replace('-', " "));
        assert!(
            verify(&keys, binding, &typed)
                .await
                .expect("verifies")
                .valid
        );

        let derived = derive(&keys, &policy, binding, NOW + Duration::days(3))
            .await
            .expect("derives");
        assert_eq!(derived.value.code, minted.value.code);
        assert_eq!(derived.event.op, SignOp::CodeDerive);
    }

    #[tokio::test]
    async fn a_changed_binding_no_longer_verifies() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        keys.rotate(KeyKind::Code, NOW);
        let minted = mint(&keys, &policy, &request(7), NOW).await.expect("mints");
        let b = minted.value.binding.clone();
        assert_eq!(b.key_version, 2, "the active code key");
        let changes: Vec<(&str, CodeBinding)> = vec![
            (
                "tenant",
                CodeBinding {
                    tenant_id: Uuid::from_u128(0x2222),
                    ..b.clone()
                },
            ),
            (
                "expiry",
                CodeBinding {
                    expires_at: b.expires_at + Duration::days(30),
                    ..b.clone()
                },
            ),
            (
                "edition",
                CodeBinding {
                    edition: "essentials".into(),
                    ..b.clone()
                },
            ),
            (
                "older key",
                CodeBinding {
                    key_version: 1,
                    ..b.clone()
                },
            ),
            (
                "unknown key",
                CodeBinding {
                    key_version: 99,
                    ..b.clone()
                },
            ),
            (
                "code id",
                CodeBinding {
                    code_id: CodeId::random(),
                    ..b.clone()
                },
            ),
            (
                "replaces an appliance",
                CodeBinding {
                    replaces_appliance_id: Some(Uuid::from_u128(0x3333)),
                    ..b.clone()
                },
            ),
        ];
        for (what, changed) in changes {
            let r = verify(&keys, &changed, &minted.value.code)
                .await
                .expect("answers");
            assert!(!r.valid, "{what}");
        }
    }

    #[tokio::test]
    async fn a_replacement_is_bound() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        let replaced = Uuid::from_u128(0x4444);
        let req = MintCodeRequest {
            replaces_appliance_id: Some(replaced),
            ..request(7)
        };
        let minted = mint(&keys, &policy, &req, NOW).await.expect("mints");
        let b = minted.value.binding.clone();
        assert_eq!(b.replaces_appliance_id, Some(replaced));
        assert_eq!(minted.event.ids.replaces_appliance_id, Some(replaced));
        let code = &minted.value.code;
        assert!(verify(&keys, &b, code).await.expect("answers").valid);
        for (what, changed) in [
            ("another appliance", Some(Uuid::from_u128(0x5555))),
            ("no replacement", None),
        ] {
            let edited = CodeBinding {
                replaces_appliance_id: changed,
                ..b.clone()
            };
            assert!(
                !verify(&keys, &edited, code).await.expect("answers").valid,
                "{what}"
            );
        }
        let derived = derive(&keys, &policy, &b, NOW).await.expect("derives");
        assert_eq!(derived.value.code, *code);
    }

    #[tokio::test]
    async fn a_typo_is_malformed_not_invalid() {
        let keys = SoftwareKeys::new(NOW);
        let minted = mint(&keys, &test_policy(), &request(1), NOW)
            .await
            .expect("mints");
        let code = minted.value.code.expose();
        let i = 14;
        let swapped = if code.as_bytes()[i] == b'7' { '8' } else { '7' };
        let typo = format!("{}{}{}", &code[..i], swapped, &code[i + 1..]);
        for bad in [typo.as_str(), "", "not a code", &code[..code.len() - 2]] {
            let err = verify(
                &keys,
                &minted.value.binding,
                &SecretText::new(bad.to_owned()),
            )
            .await
            .expect_err("malformed");
            assert!(matches!(err, Error::CodeMalformed(_)), "{bad:?}: {err}");
            assert!(
                !err.to_string().contains(&code[10..20]),
                "no code in messages"
            );
        }
    }

    #[tokio::test]
    async fn mint_bounds_table() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        let cases: Vec<(MintCodeRequest, Option<crate::ops::ErrCheck>)> = vec![
            (request(14), None),
            (
                MintCodeRequest {
                    expires_at: NOW + Duration::days(14) + EXPIRY_SLACK,
                    ..request(0)
                },
                None,
            ),
            (
                MintCodeRequest {
                    expires_at: NOW + Duration::days(14) + EXPIRY_SLACK + Duration::seconds(1),
                    ..request(0)
                },
                Some(|e| matches!(e, Error::BeyondPolicy { .. })),
            ),
            (
                request(400),
                Some(|e| matches!(e, Error::BeyondPolicy { .. })),
            ),
            (
                MintCodeRequest {
                    expires_at: NOW,
                    ..request(0)
                },
                Some(|e| matches!(e, Error::BeyondPolicy { .. })),
            ),
            (
                request(-1),
                Some(|e| matches!(e, Error::BeyondPolicy { .. })),
            ),
            (
                MintCodeRequest {
                    edition: "platinum".into(),
                    ..request(1)
                },
                Some(|e| matches!(e, Error::UnknownEdition { .. })),
            ),
            // Essentials tenants get codes too (they just get no license).
            (
                MintCodeRequest {
                    edition: "essentials".into(),
                    ..request(1)
                },
                None,
            ),
        ];
        for (req, expected) in cases {
            let got = mint(&keys, &policy, &req, NOW).await;
            match (expected, got) {
                (None, Ok(_)) => {}
                (Some(check), Err(e)) => assert!(check(&e), "{req:?}: {e}"),
                (None, Err(e)) => panic!("{req:?} refused: {e}"),
                (Some(_), Ok(_)) => panic!("{req:?} accepted"),
            }
        }
    }

    #[tokio::test]
    async fn derive_refuses_expired_forged_and_unknown_bindings() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        let b = mint(&keys, &policy, &request(2), NOW)
            .await
            .expect("mints")
            .value
            .binding;
        let later = NOW + Duration::days(3);
        let e = derive(&keys, &policy, &b, later)
            .await
            .expect_err("expired");
        assert!(matches!(e, Error::BeyondPolicy { .. }), "{e}");
        let far = CodeBinding {
            expires_at: NOW + Duration::days(365),
            ..b.clone()
        };
        let e = derive(&keys, &policy, &far, NOW)
            .await
            .expect_err("too long");
        assert!(matches!(e, Error::BeyondPolicy { .. }), "{e}");
        let unknown = CodeBinding {
            key_version: 7,
            ..b.clone()
        };
        let e = derive(&keys, &policy, &unknown, NOW)
            .await
            .expect_err("no such key");
        assert!(matches!(e, Error::BadRequest { .. }), "{e}");
        let edition = CodeBinding {
            edition: "gold".into(),
            ..b
        };
        let e = derive(&keys, &policy, &edition, NOW)
            .await
            .expect_err("no such edition");
        assert!(matches!(e, Error::UnknownEdition { .. }), "{e}");
    }

    #[tokio::test]
    async fn an_unavailable_hsm_is_an_error_not_a_mismatch() {
        let keys = SoftwareKeys::new(NOW);
        let minted = mint(&keys, &test_policy(), &request(1), NOW)
            .await
            .expect("mints");
        keys.set_down(true);
        let e = verify(&keys, &minted.value.binding, &minted.value.code)
            .await
            .expect_err("down");
        assert!(matches!(e, Error::Hsm(HsmError::Unavailable { .. })), "{e}");
    }
}
