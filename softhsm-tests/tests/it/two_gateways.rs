//! Two gateway processes sharing one Postgres (and one issuer): stateless gateways,
//! one code consumed once whichever gateway is asked, a revocation seen by both, one
//! audit chain.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, ensure};

use crate::support::{
    Customer, Stack, algactl, algactl_as_auditor, appliance_output, redeem, register, wait_mail,
};

#[test]
fn two_gateways_one_postgres_register_on_a_redeem_on_b_race_and_one_chain() -> Result<()> {
    let s = Stack::start(2)?;
    s.check(|s| {
        let (a, b) = (s.gw(0).to_owned(), s.gw(1).to_owned());

        // Registered through gateway A, redeemed through gateway B.
        let c = Customer::new("twogw");
        let reg = register(&a, &c, "pro")?;
        let code = wait_mail(&c.email, &reg.code_id)?
            .code()
            .context("no code")?;
        let r = redeem(&b, &code, &s.path("via-b"))?;
        r.expect_ok()?;
        ensure!(
            r.tenant_id()? == reg.tenant_id,
            "B redeemed under another tenant"
        );
        let check_in_url = r
            .secret("appliance-license-seed.yaml", "CHECK_IN_URL")?
            .context("no CHECK_IN_URL")?;
        ensure!(
            check_in_url.starts_with(&b),
            "check-in URL {check_in_url} is not B's"
        );

        let appliance_id = |r: &crate::support::Redeem| -> Result<serde_json::Value> {
            let token = r
                .secret("appliance-license-seed.yaml", "LICENSE_TOKEN")?
                .context("no LICENSE_TOKEN")?;
            Ok(crate::support::jwt_claims(&token)?["appliance_id"].clone())
        };
        let first_id = appliance_id(&r)?;

        // A lost response must not burn the code: the same appliance (same key) retrying
        // through the *other* gateway gets the same tenant and appliance back.
        let retry = redeem(&a, &code, &s.path("via-b"))?;
        retry.expect_ok()?;
        ensure!(
            retry.tenant_id()? == reg.tenant_id,
            "the retry changed the tenant"
        );
        ensure!(
            appliance_id(&retry)? == first_id,
            "the retry got another appliance id"
        );

        // Revoked through gateway A, refused at check-in through gateway B.
        let id = first_id.as_str().context("appliance_id")?.to_owned();
        algactl(&a, &["appliance", "revoke", &id])?;
        let seed = s.path("via-b").display().to_string();
        let lic_before = std::fs::read(s.path("via-b").join("appliance-license-seed.yaml"))?;
        let out = appliance_output(&["check-in", "--seed", &seed], &[])?;
        ensure!(
            out.status.code() == Some(30),
            "check-in of a revoked appliance: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            std::fs::read(s.path("via-b").join("appliance-license-seed.yaml"))? == lic_before,
            "a refused check-in changed the license seed"
        );

        // One code, four appliances racing through both gateways: exactly one wins.
        let c2 = Customer::new("race");
        let reg2 = register(&b, &c2, "pro")?;
        let code2 = wait_mail(&c2.email, &reg2.code_id)?
            .code()
            .context("no code")?;
        let racers: Vec<_> = (0..4)
            .map(|i| {
                let url = if i % 2 == 0 { a.clone() } else { b.clone() };
                let out = s.path(&format!("race-{i}"));
                let code = code2.clone();
                std::thread::spawn(move || redeem(&url, &code, &out))
            })
            .collect();
        let mut results = Vec::new();
        for t in racers {
            results.push(t.join().map_err(|_| anyhow!("a racer panicked"))??);
        }
        let mut exits: BTreeMap<Option<i32>, usize> = BTreeMap::new();
        for r in &results {
            *exits.entry(r.exit).or_default() += 1;
        }
        ensure!(
            exits.get(&Some(0)) == Some(&1) && exits.get(&Some(14)) == Some(&3),
            "expected one success and three `code_already_used` (exit 14), got exits {exits:?}: {:?}",
            results.iter().map(|r| r.stderr.trim()).collect::<Vec<_>>()
        );
        for r in results.iter().filter(|r| !r.ok()) {
            ensure!(!r.wrote_secrets(), "a losing racer wrote a Secret");
        }
        let winner = results.iter().find(|r| r.ok()).context("no winner")?;
        ensure!(winner.tenant_id()? == reg2.tenant_id);
        let rows = s.db.query(&format!(
            "SELECT count(*) FROM appliances WHERE tenant_id = '{}'",
            reg2.tenant_id
        ))?;
        ensure!(rows == "1", "{rows} appliances for one code");

        // Both gateways wrote into one audit log, and it verifies as one chain.
        let report = s.verify_audit(1)?;
        let first = report["report"]["first_seq"].as_u64();
        let last = report["report"]["last_seq"].as_u64();
        let records = report["report"]["records"].as_u64();
        ensure!(
            first == Some(1) && last == records,
            "not one gap-free chain: {report}"
        );

        // Security staff see the same chain through either gateway's auditor routes:
        // `algactl audit verify` exports it over mTLS and verifies it offline against
        // the audit keys the gateway republishes.
        for gw in [s.gw(0), s.gw(1)] {
            let v = algactl_as_auditor(gw, &["audit", "verify"])?;
            ensure!(
                v["findings"].as_array().is_some_and(|f| f.is_empty())
                    && v["records"].as_u64() >= records
                    && v["checkpoints_matched"].as_u64() >= Some(1),
                "algactl audit verify through {gw}: {v}"
            );
        }
        Ok(())
    })
}
