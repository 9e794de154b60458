//! The seed's paid path: register → mail → ISO → redeem → bootstrap → check-in.

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use crate::support::{
    Customer, Stack, TestDb, appliance, curl, env, jwt_claims, redeem, register, wait_mail,
};

#[test]
fn pro_register_mail_iso_redeem_bootstrap_check_in() -> Result<()> {
    let s = Stack::start(1)?;
    s.check(|s| {
        let c = Customer::new("pro");

        // The store registers; the answer names the code but never carries it.
        let reg = register(s.gw(0), &c, "pro")?;
        ensure!(reg.json["edition"] == "pro", "edition: {}", reg.json);

        // The mail, as the SMTP server received it.
        let mail = wait_mail(&c.email, &reg.code_id)?;
        let subject = mail.header("Subject").context("no Subject")?;
        ensure!(subject.contains(&c.company), "subject {subject:?}");
        let to = mail.header("To").context("no To")?;
        ensure!(to.contains(&c.email), "To {to:?}");
        ensure!(mail.header("Message-ID").is_some(), "no Message-ID");
        let code = mail.code().context("no install code in the mail")?;
        let answer = reg.json.to_string();
        ensure!(
            !answer.contains(&code) && !answer.contains(&code.replace('-', "")),
            "the store's answer carries the install code"
        );

        // The ISO through the presigned link in the mail, from the local S3 server.
        let link = mail.link().context("no link in the mail")?;
        let iso = s.path("alga-appliance.iso");
        let (status, _) = curl(&link, None, Some(&iso))?;
        ensure!(status == 200, "the presigned link answered {status}");
        let sha = Sha256::digest(std::fs::read(&iso)?);
        let sha: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        ensure!(
            sha == env("ALGA_S3_OBJECT_SHA256"),
            "ISO sha256 {sha} is not the object's"
        );

        // First boot: the real appliance client redeems.
        let seed = s.path("seed");
        let r = redeem(s.gw(0), &code, &seed)?;
        r.expect_ok()?;
        let tenant = r.tenant_id()?;
        ensure!(
            tenant == reg.tenant_id,
            "Secret tenant {tenant} is not {}",
            reg.tenant_id
        );
        let lic = "appliance-license-seed.yaml";
        ensure!(r.secret(lic, "EDITION")?.as_deref() == Some("pro"));
        let token = r
            .secret(lic, "LICENSE_TOKEN")?
            .context("no LICENSE_TOKEN")?;
        let claims = jwt_claims(&token)?;
        ensure!(claims["sub"] == tenant.as_str(), "license sub: {claims}");
        ensure!(claims["aud"] == "alga-appliance", "license aud: {claims}");
        ensure!(claims["edition"] == "pro", "license edition: {claims}");
        let cert = r
            .secret(lic, "APPLIANCE_CERT")?
            .context("no APPLIANCE_CERT")?;
        ensure!(cert.contains("BEGIN CERTIFICATE"));
        ensure!(
            r.secret(lic, "APPLIANCE_KEY")?.is_some(),
            "no APPLIANCE_KEY"
        );
        let check_in_url = r.secret(lic, "CHECK_IN_URL")?.context("no CHECK_IN_URL")?;
        ensure!(
            check_in_url.starts_with(s.gw(0)),
            "check-in URL {check_in_url} is not this gateway's"
        );
        let state = s.db.query(&format!(
            "SELECT state FROM install_codes WHERE code_id = '{}'",
            reg.code_id
        ))?;
        ensure!(state == "consumed", "code state {state}");

        // The bootstrap adopts the tenant in the appliance's own (throwaway) database.
        let app_db = TestDb::create("e2e_appliance", None)?;
        let app_url = app_db.admin_url();
        let envs = [("ALGA_APPLIANCE_DATABASE_URL", app_url.as_str())];
        let seed_s = seed.display().to_string();
        appliance(&["bootstrap", "create-tenant", "--secrets", &seed_s], &envs)?;
        appliance(&["bootstrap", "seed-license", "--secrets", &seed_s], &envs)?;
        let local = app_db.query("SELECT tenant_id FROM alga_appliance.appliance_tenant")?;
        ensure!(local == tenant, "appliance tenant {local} is not {tenant}");
        let tier = app_db.query("SELECT tier FROM alga_appliance.license_state")?;
        ensure!(tier == "licensed", "tier {tier}");

        // A check-in refreshes the license (iat has one-second resolution).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        appliance(&["check-in", "--seed", &seed_s], &[])?;
        let token2 = r
            .secret(lic, "LICENSE_TOKEN")?
            .context("no LICENSE_TOKEN after check-in")?;
        ensure!(token2 != token, "check-in did not refresh the license");
        let claims2 = jwt_claims(&token2)?;
        ensure!(
            claims2["sub"] == claims["sub"] && claims2["appliance_id"] == claims["appliance_id"]
        );
        ensure!(
            claims2["iat"].as_i64() > claims["iat"].as_i64(),
            "refreshed license is not newer: {claims} → {claims2}"
        );
        appliance(&["bootstrap", "seed-license", "--secrets", &seed_s], &envs)?;
        let jti = app_db.query("SELECT license_jti FROM alga_appliance.license_state")?;
        ensure!(
            claims2["jti"] == jti.as_str(),
            "license_state holds {jti}, not the refreshed license"
        );

        // Every step is in one intact, checkpointed audit chain, and no code, token or key
        // reached a log, the signing log, the registry or the audit records.
        s.verify_audit(1)?;
        let key = r
            .secret(lic, "APPLIANCE_KEY")?
            .context("no APPLIANCE_KEY")?;
        // A private key would show as PEM: its first base64 line is enough to find it.
        let key_line = key
            .lines()
            .find(|l| !l.starts_with("-----"))
            .context("empty APPLIANCE_KEY")?;
        s.assert_no_secrets_leaked(&[
            &code,
            &code.replace('-', ""),
            &code.replace('-', "").to_ascii_lowercase(),
            &token,
            &token2,
            key_line,
        ])?;
        Ok(())
    })
}
