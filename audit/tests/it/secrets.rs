//! No record contains a code, a token, a PIN or a key: the guard refuses them when a
//! record is built, and a scan of everything stored finds none.

use alga_audit::guard::{secret_like_key, secret_like_text};
use alga_audit::{Action, Actor, AuditError, NewRecord};
use alga_protocol::{CodeId, InstallCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::{
    InsecureTestSigner, RunningSequencer, TestDb, append_n, fast_config, wait_all_chained,
};

fn real_code() -> String {
    let mac: [u8; 32] = rand::random();
    InstallCode::from_mac(CodeId::random(), &mac)
        .expose_formatted()
        .to_string()
}

fn real_jwt() -> String {
    let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"lic-1","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"t","aud":"alga-appliance","exp":1}"#);
    let input = format!("{header}.{claims}");
    let sig: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn real_pem_key() -> String {
    let key = SigningKey::from_slice(&[9u8; 32]).unwrap();
    key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
}

fn builder() -> alga_audit::record::RecordBuilder {
    NewRecord::builder(
        OffsetDateTime::now_utc(),
        Actor::anonymous(),
        Action::new("code.redeem").unwrap(),
    )
}

fn refused(r: Result<NewRecord, AuditError>) -> bool {
    matches!(r, Err(AuditError::SecretLike { .. }))
}

#[test]
fn the_guard_refuses_real_codes_tokens_and_keys_in_any_field() {
    for _ in 0..50 {
        let code = real_code();
        let variants = [
            code.clone(),
            code.to_lowercase(),
            code.replace('-', ""),
            code.replace('-', " "),
            format!("user typed {code} twice"),
        ];
        for v in variants {
            assert!(refused(builder().detail("note", v.clone()).build()), "{v}");
            assert!(
                refused(
                    builder()
                        .detail("nested", json!({"list": [v.clone()]}))
                        .build()
                ),
                "{v}"
            );
            if !v.contains("typed") {
                assert!(
                    refused(builder().subject("code_id", v.replace(' ', "")).build()),
                    "{v}"
                );
                assert!(
                    refused(builder().request_id(&v.replace(' ', "")).build()),
                    "{v}"
                );
            }
        }
    }
    let jwt = real_jwt();
    assert!(refused(builder().detail("note", jwt.clone()).build()));
    assert!(refused(
        builder().detail("note", format!("Bearer {jwt}")).build()
    ));
    let pem = real_pem_key();
    assert!(refused(builder().detail("note", pem).build()));
    // Secret names are refused whatever the value.
    for key in [
        "pin",
        "hsm_pin",
        "install_code",
        "license_token",
        "private_key",
        "password",
        "csr",
    ] {
        assert!(refused(builder().detail(key, "x").build()), "{key}");
        assert!(
            refused(builder().detail("outer", json!({key: 1})).build()),
            "{key}"
        );
    }
    // The error names the field, never the value.
    let code = real_code();
    let err = builder()
        .detail("note", code.clone())
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("details.note") && !err.contains(&code),
        "{err}"
    );
}

#[tokio::test]
async fn a_scan_of_every_stored_record_finds_no_secret() {
    let db = TestDb::new().await;
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 60).await;
    // What the gateway records around secrets: the code id, never the code.
    let code = real_code();
    let code_id = code.split('-').take(2).collect::<String>();
    let jwt = real_jwt();
    let tx = rt.transaction().await.unwrap();
    let r = builder()
        .subject("code_id", &code_id)
        .subject("jti", "0190f2a4-7b5c-7d3e-8f00-123456789abc")
        .detail("key_version", 3)
        .detail("error_code", "code_already_used")
        .build()
        .unwrap();
    alga_audit::append(&tx, &r).await.unwrap();
    tx.commit().await.unwrap();
    let mut seq =
        RunningSequencer::start(db.pool(2), InsecureTestSigner::new("k"), fast_config(10));
    seq.wait_for(61, 0).await;
    seq.stop().await;
    assert_eq!(wait_all_chained(&rt).await, 61);

    let rows = rt
        .query("SELECT record FROM audit_events", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 61);
    for row in rows {
        let bytes: Vec<u8> = row.get(0);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains(&code) && !text.contains(&jwt),
            "a known secret is stored"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        scan(&value, "");
    }
    db.drop_db().await;
}

fn scan(v: &serde_json::Value, path: &str) {
    match v {
        serde_json::Value::String(s) => {
            assert!(secret_like_text(s).is_none(), "{path} looks secret");
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| scan(i, path)),
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                // `code_id`, `error_code` and `key_version` are labels, not secrets.
                assert!(secret_like_key(k).is_none(), "{path}.{k} names a secret");
                scan(item, &format!("{path}.{k}"));
            }
        }
        _ => {}
    }
}
