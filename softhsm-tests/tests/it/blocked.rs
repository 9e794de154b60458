//! What blocks an install: a bad code (typo, unknown, edited row), an expired code, a
//! used code, an unreachable service and an unavailable issuer. Each time `alga-appliance redeem`
//! exits non-zero with its documented code and writes no Secret.

use anyhow::{Context, Result, ensure};

use alga_protocol::{CodeId, InstallCode};

use crate::support::{Customer, Redeem, Stack, free_port, redeem, register, wait_mail};

fn refused(r: &Redeem, exit: i32, what: &str) -> Result<()> {
    ensure!(
        r.exit == Some(exit),
        "{what}: expected exit {exit}, got {:?}: {}{}",
        r.exit,
        r.stderr,
        r.stdout
    );
    ensure!(!r.wrote_secrets(), "{what}: a Secret was written");
    ensure!(
        !r.stderr.trim().is_empty(),
        "{what}: no message for the operator"
    );
    Ok(())
}

/// `code` with one symbol of its second group changed: a typo the check symbols catch.
fn typo(code: &str) -> String {
    let mut chars: Vec<char> = code.chars().collect();
    let i = 7; // inside the second group, after "XXXXX-"
    chars[i] = if chars[i] == '7' { '8' } else { '7' };
    chars.into_iter().collect()
}

#[test]
fn bad_expired_used_and_unreachable_block_the_install() -> Result<()> {
    let s = Stack::start(1)?;
    s.check(|s| {
        let gw = s.gw(0).to_owned();
        let c = Customer::new("blocked");
        let reg = register(&gw, &c, "pro")?;
        let code = wait_mail(&c.email, &reg.code_id)?
            .code()
            .context("no code")?;

        // A typo is found offline, before any network call.
        refused(&redeem(&gw, &typo(&code), &s.path("typo"))?, 10, "typo")?;

        // A well-formed code the registry never minted.
        let unknown = InstallCode::from_mac(CodeId::random(), &[0x5a; 32]);
        refused(
            &redeem(&gw, &unknown.expose_formatted(), &s.path("unknown"))?,
            11,
            "unknown code",
        )?;

        // A row edited in the database (expiry moved into the past) no longer verifies: the
        // HMAC covers the expiry, so the code is simply invalid.
        let c2 = Customer::new("edited");
        let reg2 = register(&gw, &c2, "pro")?;
        let code2 = wait_mail(&c2.email, &reg2.code_id)?
            .code()
            .context("no code")?;
        s.db.query(&format!(
            "UPDATE install_codes SET expires_at = date_trunc('second', now()) - interval '1 hour' \
             WHERE code_id = '{}'",
            reg2.code_id
        ))?;
        refused(
            &redeem(&gw, &code2, &s.path("edited"))?,
            11,
            "edited (expired) row",
        )?;

        // Expired: a code minted by the issuer to expire two seconds from now, stored as the
        // gateway stores a binding (the policy's shortest TTL is minutes, too long to wait).
        let expires_at = s.db.query(
            "SELECT to_char((date_trunc('second', now()) + interval '2 seconds') AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        )?;
        let minted = s.issuer_post(
            "/v1/codes/mint",
            &serde_json::json!({"tenant_id": reg.tenant_id, "edition": "pro", "expires_at": expires_at}),
        )?;
        let b = &minted["binding"];
        s.db.query(&format!(
            "INSERT INTO install_codes (code_id, tenant_id, edition, expires_at, key_version) \
             VALUES ('{}', '{}', '{}', '{}', {})",
            b["code_id"].as_str().context("binding.code_id")?,
            b["tenant_id"].as_str().context("binding.tenant_id")?,
            b["edition"].as_str().context("binding.edition")?,
            b["expires_at"].as_str().context("binding.expires_at")?,
            b["key_version"].as_u64().context("binding.key_version")?,
        ))?;
        let expired_code = minted["code"]
            .as_str()
            .context("no code minted")?
            .to_owned();

        // Used: a second appliance (another key) presenting a consumed code.
        redeem(&gw, &code, &s.path("first"))?.expect_ok()?;
        refused(&redeem(&gw, &code, &s.path("second"))?, 14, "used code")?;

        // Unreachable: nothing listens on the port (the client retries, then gives up).
        let closed = format!("https://localhost:{}", free_port()?);
        let c3 = Customer::new("unreachable");
        let reg3 = register(&gw, &c3, "pro")?;
        let code3 = wait_mail(&c3.email, &reg3.code_id)?
            .code()
            .context("no code")?;
        refused(
            &redeem(&closed, &code3, &s.path("unreachable"))?,
            20,
            "unreachable service",
        )?;

        // By now (after the unreachable service's retries) the short code has expired.
        let wait = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.db.query(&format!(
            "SELECT expires_at < now() FROM install_codes WHERE code_id = '{}'",
            b["code_id"].as_str().unwrap_or_default()
        ))? != "t"
            && std::time::Instant::now() < wait
        {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        refused(
            &redeem(&gw, &expired_code, &s.path("expired"))?,
            12,
            "expired code",
        )?;

        // The issuer is down: the gateway answers license_service_unavailable and the code
        // stays unclaimed (the whole redeem rolled back).
        s.issuer.kill();
        refused(
            &redeem(&gw, &code3, &s.path("issuer-down"))?,
            21,
            "issuer down",
        )?;
        let state = s.db.query(&format!(
            "SELECT state FROM install_codes WHERE code_id = '{}'",
            reg3.code_id
        ))?;
        ensure!(
            state == "unclaimed",
            "after a failed redeem the code is {state}"
        );
        Ok(())
    })
}
