//! Essentials: a tenant and nothing paid (no license, credential or check-in URL).

use anyhow::{Context, Result, ensure};

use crate::support::{Customer, Stack, TestDb, appliance, redeem, register, wait_mail};

#[test]
fn essentials_redeems_without_license_credential_or_check_in() -> Result<()> {
    let s = Stack::start(1)?;
    s.check(|s| {
        let c = Customer::new("essentials");
        let reg = register(s.gw(0), &c, "essentials")?;
        ensure!(reg.json["edition"] == "essentials", "edition: {}", reg.json);
        let code = wait_mail(&c.email, &reg.code_id)?
            .code()
            .context("no code in the mail")?;

        let seed = s.path("seed");
        let r = redeem(s.gw(0), &code, &seed)?;
        r.expect_ok()?;
        ensure!(r.tenant_id()? == reg.tenant_id);
        let lic = "appliance-license-seed.yaml";
        ensure!(r.secret(lic, "EDITION")?.as_deref() == Some("essentials"));
        for key in [
            "LICENSE_TOKEN",
            "APPLIANCE_CERT",
            "APPLIANCE_KEY",
            "CHECK_IN_URL",
        ] {
            ensure!(
                r.secret(lic, key)?.is_none(),
                "essentials seed carries {key}"
            );
        }
        let licenses = s.db.query(&format!(
            "SELECT count(*) FROM licenses WHERE tenant_id = '{}'",
            reg.tenant_id
        ))?;
        let appliances = s.db.query(&format!(
        "SELECT count(*) || ' ' || count(credential_serial) FROM appliances WHERE tenant_id = '{}'",
        reg.tenant_id
    ))?;
        ensure!(
            appliances == "1 0",
            "appliances (rows, credentials): {appliances}"
        );
        ensure!(
            licenses == "0",
            "an essentials tenant got {licenses} licenses"
        );

        // The bootstrap adopts the tenant and runs at the essentials tier, without a token.
        let app_db = TestDb::create("e2e_appliance", None)?;
        let url = app_db.admin_url();
        let envs = [("ALGA_APPLIANCE_DATABASE_URL", url.as_str())];
        let seed_s = seed.display().to_string();
        appliance(&["bootstrap", "create-tenant", "--secrets", &seed_s], &envs)?;
        appliance(&["bootstrap", "seed-license", "--secrets", &seed_s], &envs)?;
        let row = app_db.query(
            "SELECT t.tenant_id || ' ' || l.tier || ' ' || (l.license_token IS NULL) \
         FROM alga_appliance.appliance_tenant t, alga_appliance.license_state l",
        )?;
        ensure!(
            row == format!("{} essentials true", reg.tenant_id),
            "appliance state {row}"
        );
        Ok(())
    })
}
