//! Issue 18, finding 12: a PIN the token refuses after a lost session stops logins.
//!
//! Before the fix, every job after a `PinIncorrect` reopened its session and called
//! `C_Login` again (and once more for its retry), without end: on a real HSM that
//! spends the failed-login counter and locks the PIN. Now the pool latches the first
//! refusal: no further `C_Login` until the process is restarted, every job answers "HSM
//! unavailable", the failure is logged once, loudly, and the issuer's health route
//! reports it (so the gateways' readiness does too).
//!
//! Real SoftHSM2, in a child process with its own token (see `hsm::isolated_in`): the
//! user PIN is changed on the token after the pool opened (as an operator rotating the
//! PIN on the HSM without updating the issuer's PIN file would), then the test hook
//! pulls the login, as an HSM restart would.

use alga_issuer::Error;
use alga_issuer::hsm::{Hsm, HsmError};
use alga_issuer::keyring::{KeyKind, KeyOps};
use alga_protocol::issuer_api::{self as api, IssuerErrorBody, IssuerErrorCode};
use secrecy::{ExposeSecret, SecretString};

use crate::hsm::{Setup, TestToken, isolated_in};
use crate::server::{CapturedLogs, Pki, Running};

/// One MAC and one signature per job index, all at once; every result.
async fn jobs(hsm: &Hsm, n: usize) -> Vec<Result<(), Error>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let hsm = hsm.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    hsm.hmac_sha256(1, vec![i as u8]).await.map(drop)
                } else {
                    hsm.sign_digest(KeyKind::License, 1, [i as u8; 32])
                        .await
                        .map(drop)
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[test]
fn a_pin_refused_after_a_lost_session_stops_logins_and_says_so() {
    isolated_in(
        module_path!(),
        "a_pin_refused_after_a_lost_session_stops_logins_and_says_so",
        Setup::Keys,
        |t: &TestToken| {
            let logs = CapturedLogs::install();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("runtime");
            let hsm = t.open();
            assert_eq!(hsm.login_calls(), 2, "one login per worker session at open");
            assert!(rt.block_on(jobs(&hsm, 8)).iter().all(Result::is_ok));
            assert_eq!(hsm.health().ok(), Some(()));

            // The PIN changes on the token; the running pool still holds the old one.
            let old_pin = t.pin();
            let new_pin = SecretString::from(format!("{}-rotated", old_pin.expose_secret()));
            t.raw_session()
                .set_pin(&old_pin, &new_pin)
                .expect("C_SetPIN as the user");

            // The login is pulled (an HSM restart): the next job must log in again.
            hsm.invalidate_sessions_for_test().expect("test hook");
            let before = hsm.login_calls();

            // Many jobs, concurrent and then one by one: not one succeeds, not one
            // logs in beyond the first refusal.
            let mut results = rt.block_on(jobs(&hsm, 40));
            for _ in 0..20 {
                results.extend(rt.block_on(jobs(&hsm, 1)));
            }
            let stopped = results
                .iter()
                .filter(|r| {
                    matches!(
                        r,
                        Err(Error::Hsm(HsmError::LoginStopped {
                            rv: "CKR_PIN_INCORRECT"
                        }))
                    )
                })
                .count();
            let logins_after_the_loss = hsm.login_calls() - before;
            println!(
                "finding 12: {} jobs after the PIN changed and the login was pulled: {} ok, {stopped} \
                 answered LoginStopped; C_Login calls after the loss: {logins_after_the_loss}",
                results.len(),
                results.iter().filter(|r| r.is_ok()).count(),
            );
            assert_eq!(
                logins_after_the_loss, 1,
                "exactly one C_Login after the loss: the refused one"
            );
            assert_eq!(stopped, results.len(), "every job answers LoginStopped");
            assert_eq!(hsm.login_stopped(), Some("CKR_PIN_INCORRECT"));
            assert!(matches!(
                hsm.health(),
                Err(Error::Hsm(HsmError::LoginStopped {
                    rv: "CKR_PIN_INCORRECT"
                }))
            ));
            // Callers see "HSM unavailable".
            let ops = Error::Hsm(HsmError::LoginStopped {
                rv: "CKR_PIN_INCORRECT",
            });
            assert_eq!(ops.code(), IssuerErrorCode::HsmUnavailable);

            // The issuer's health route says so (the gateways' /readyz asks it), and
            // every route answers 503 hsm_unavailable; still no login.
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = Pki::new(dir.path());
            let config = pki.config(t, &dir.path().join("log"));
            rt.block_on(async {
                let server = Running::start(config, t, hsm.clone()).await;
                let gateway = pki.client(Some(&pki.gateway));
                let health = gateway
                    .get(format!("{}{}", server.url, api::HEALTH))
                    .send()
                    .await
                    .expect("health");
                assert_eq!(health.status().as_u16(), 503);
                let body: IssuerErrorBody = health.json().await.expect("error JSON");
                assert_eq!(body.error.code, IssuerErrorCode::HsmUnavailable);
                assert!(
                    body.error.message.contains("restarted"),
                    "{}",
                    body.error.message
                );
                let keys = gateway
                    .get(format!("{}{}", server.url, api::PUBLIC_KEYS))
                    .send()
                    .await
                    .expect("public keys");
                // Public keys come from the inventory read at open: still served.
                assert_eq!(keys.status().as_u16(), 200);
                let mint = gateway
                    .post(format!("{}{}", server.url, api::MINT_CODE))
                    .json(&serde_json::json!({
                        "tenant_id": uuid::Uuid::new_v4(),
                        "edition": "pro",
                        "expires_at": (time::OffsetDateTime::now_utc() + time::Duration::days(7))
                            .format(&time::format_description::well_known::Rfc3339)
                            .expect("RFC 3339"),
                    }))
                    .send()
                    .await
                    .expect("mint");
                assert_eq!(mint.status().as_u16(), 503);
                server.stop().await;
            });
            assert_eq!(hsm.login_calls() - before, 1, "still one C_Login");

            // Logged once, loudly, without either PIN.
            let text = logs.text();
            assert_eq!(
                text.matches("HSM LOGIN REFUSED").count(),
                1,
                "logged exactly once"
            );
            assert!(text.contains("ERROR"), "at error level");
            for pin in [&old_pin, &new_pin] {
                assert!(!text.contains(pin.expose_secret()), "a PIN in the log");
            }

            // The operator's way out: a restart with the right PIN (a new pool).
            drop(hsm);
            let err = Hsm::open(&t.config, old_pin).expect_err("the old PIN");
            assert!(matches!(err, HsmError::PinIncorrect), "{err:?}");
            let restarted = Hsm::open(&t.config, new_pin).expect("the new PIN opens");
            assert!(rt.block_on(jobs(&restarted, 8)).iter().all(Result::is_ok));
            assert_eq!(restarted.login_stopped(), None);
            assert_eq!(restarted.health().ok(), Some(()));
        },
    );
}
