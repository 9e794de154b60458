//! Reinstall recovery: re-issue by contact email, the old code refused, the new code
//! redeems under the same tenant and retires the old appliance (its check-in refused,
//! the new one's accepted); re-issuing again revokes the unclaimed code.

use anyhow::{Context, Result, ensure};

use crate::support::{
    Customer, Stack, algactl, appliance_output, redeem, register, reissue_by_email, wait_mail,
};

#[test]
fn reissue_by_contact_email_brings_the_same_tenant_back() -> Result<()> {
    let s = Stack::start(1)?;
    s.check(|s| {
        let c = Customer::new("reinstall");
        let reg = register(s.gw(0), &c, "pro")?;
        let code1 = wait_mail(&c.email, &reg.code_id)?
            .code()
            .context("no code")?;
        let first = redeem(s.gw(0), &code1, &s.path("install-1"))?;
        first.expect_ok()?;
        let appliance1 = first
            .secret("appliance-license-seed.yaml", "LICENSE_TOKEN")?
            .map(|t| crate::support::jwt_claims(&t))
            .transpose()?
            .context("no license")?["appliance_id"]
            .clone();

        // The appliance is rebuilt: the store re-issues by the contact's email.
        let re = reissue_by_email(s.gw(0), &c.email)?;
        ensure!(
            re.tenant_id == reg.tenant_id,
            "reissue answered tenant {}",
            re.tenant_id
        );
        ensure!(re.code_id != reg.code_id);
        ensure!(
            re.json["revoked_code_ids"]
                .as_array()
                .is_some_and(|a| a.is_empty()),
            "the consumed code is not 'revoked': {}",
            re.json
        );
        ensure!(
            re.json["replaces_appliance_id"] == appliance1,
            "the rebuild's code does not replace the running appliance: {}",
            re.json
        );

        // The old code is refused (already used), and nothing is installed.
        let old = redeem(s.gw(0), &code1, &s.path("install-2-old"))?;
        ensure!(
            old.exit == Some(14),
            "old code: exit {:?}, {}",
            old.exit,
            old.stderr
        );
        ensure!(
            old.stderr.contains("already been used"),
            "the message does not say why: {}",
            old.stderr
        );
        ensure!(!old.wrote_secrets(), "a refused redeem wrote a Secret");

        // The new code, from the new mail, redeems under the same tenant.
        let code2 = wait_mail(&c.email, &re.code_id)?
            .code()
            .context("no code")?;
        let second = redeem(s.gw(0), &code2, &s.path("install-2"))?;
        second.expect_ok()?;
        ensure!(
            second.tenant_id()? == reg.tenant_id,
            "rebuilt under another tenant"
        );
        let claims = crate::support::jwt_claims(
            &second
                .secret("appliance-license-seed.yaml", "LICENSE_TOKEN")?
                .context("no license after reinstall")?,
        )?;
        ensure!(
            claims["edition"] == "pro",
            "entitlement not re-attached: {claims}"
        );
        ensure!(
            claims["appliance_id"] != appliance1,
            "the rebuilt appliance reused the old id"
        );

        // One purchase, one licensed appliance: the old one is refused at check-in
        // (exit 33, nothing rewritten), the rebuilt one is refreshed.
        let seed = |dir: &str| s.path(dir).display().to_string();
        let old_seed = std::fs::read(s.path("install-1").join("appliance-license-seed.yaml"))?;
        let refused = appliance_output(&["check-in", "--seed", &seed("install-1")], &[])?;
        ensure!(
            refused.status.code() == Some(33),
            "the replaced appliance's check-in: {:?}, {}",
            refused.status,
            String::from_utf8_lossy(&refused.stderr)
        );
        ensure!(
            std::fs::read(s.path("install-1").join("appliance-license-seed.yaml"))? == old_seed,
            "a refused check-in rewrote the seed"
        );
        let accepted = appliance_output(&["check-in", "--seed", &seed("install-2")], &[])?;
        ensure!(
            accepted.status.success(),
            "the rebuilt appliance's check-in: {}",
            String::from_utf8_lossy(&accepted.stderr)
        );

        // Re-issuing while a code is unclaimed revokes it; the revoked code is refused.
        let re3 = reissue_by_email(s.gw(0), &c.email)?;
        let code3 = wait_mail(&c.email, &re3.code_id)?
            .code()
            .context("no code")?;
        let re4 = reissue_by_email(s.gw(0), &c.email)?;
        let revoked: Vec<&str> = re4.json["revoked_code_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        ensure!(
            revoked == [re3.code_id.as_str()],
            "revoked {revoked:?}, expected {}",
            re3.code_id
        );
        let r3 = redeem(s.gw(0), &code3, &s.path("install-3-revoked"))?;
        ensure!(
            r3.exit == Some(13),
            "revoked code: exit {:?}, {}",
            r3.exit,
            r3.stderr
        );
        ensure!(!r3.wrote_secrets(), "a refused redeem wrote a Secret");

        // The store's view of the tenant tells the whole story, without a secret.
        let t = algactl(s.gw(0), &["tenant", "show", &reg.tenant_id])?;
        let states: std::collections::BTreeMap<&str, &str> = t["install_codes"]
            .as_array()
            .context("install_codes")?
            .iter()
            .filter_map(|c| Some((c["code_id"].as_str()?, c["state"].as_str()?)))
            .collect();
        let expected = std::collections::BTreeMap::from([
            (reg.code_id.as_str(), "consumed"),
            (re.code_id.as_str(), "consumed"),
            (re3.code_id.as_str(), "revoked"),
            (re4.code_id.as_str(), "unclaimed"),
        ]);
        ensure!(
            states == expected,
            "codes {states:?}, expected {expected:?}"
        );
        let appliances = t["appliances"].as_array().context("appliances")?;
        ensure!(appliances.len() == 2, "appliances: {}", t["appliances"]);
        let old = appliances
            .iter()
            .find(|a| a["appliance_id"] == appliance1)
            .context("the first appliance")?;
        ensure!(
            old["state"] == "replaced" && old["replaced_by"] == claims["appliance_id"],
            "the first appliance is not replaced by the rebuilt one: {old}"
        );
        for secret in [&code1, &code2, &code3] {
            ensure!(
                !t.to_string().contains(&secret.replace('-', "")),
                "tenant show leaks a code"
            );
        }

        s.verify_audit(1)?;
        Ok(())
    })
}
