//! R13 with two issuer *processes*: two `alga-issuer serve` on the one SoftHSM2 token
//! (same keys; each its own port and signing log), two `alga-gateway serve` on the one
//! Postgres, gateway A signing through issuer A and gateway B through issuer B. Mixed
//! load through both gateways at once — registrations, reissues through the other
//! gateway, the same code raced by three appliances over both gateways, the winner's
//! same-key retry through the other gateway, check-ins — then: single use holds, one
//! audit chain without gap or fork, every license and credential either issuer signed
//! verifies against the keys either gateway publishes, both signing logs were used,
//! verify, reconcile with the audit log and hold no secret.
//!
//! Bounded: `ALGA_R13_TENANTS` tenants (default 6, at most 24), every command and wait
//! bounded by the harness.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use alga_protocol::signlog::{self, SignOp};
use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::{
    Customer, Redeem, Stack, algactl_as_auditor, appliance_output, curl, env,
    gateway_client_identity, jwt_claims, redeem, register, reissue_by_email, run, wait_mail,
};

const SEED: &str = "appliance-license-seed.yaml";

fn tenants() -> usize {
    std::env::var("ALGA_R13_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .clamp(2, 24)
}

/// What one tenant's share of the load did.
#[derive(Debug, Default)]
struct TenantRun {
    tenant_id: String,
    pro: bool,
    reissued: bool,
    /// Exit codes of the three racers.
    racer_exits: Vec<Option<i32>>,
    /// Exit code of the revoked (pre-reissue) code's redeem, when reissued.
    revoked_exit: Option<Option<i32>>,
    /// Exit code of the winner's retry and of the check-in (pro only).
    retry_exit: Option<i32>,
    check_in_exit: Option<i32>,
    /// Every license token and appliance certificate chain the tenant received.
    licenses: Vec<String>,
    cert_chains: Vec<String>,
    /// Secrets used (codes in their spellings, tokens, the appliance key's first line).
    secrets: Vec<String>,
}

fn code_spellings(code: &str) -> [String; 3] {
    let plain = code.replace('-', "");
    [code.to_owned(), plain.to_ascii_lowercase(), plain]
}

/// One tenant: register through gateway `t % 2`, maybe reissue through the other, race
/// three appliances over both, retry the winner through the other gateway than the one
/// it won on, and (pro) check in with the license verified against the *other*
/// gateway's JWKS than the one that had it signed.
fn run_tenant(t: usize, gws: &[String; 2], dir: &Path) -> Result<TenantRun> {
    let pro = !t.is_multiple_of(3);
    let mut run = TenantRun {
        pro,
        ..TenantRun::default()
    };
    let c = Customer::new(&format!("r13i{t}"));
    let reg = register(&gws[t % 2], &c, if pro { "pro" } else { "essentials" })?;
    run.tenant_id = reg.tenant_id.clone();
    let mut code = wait_mail(&c.email, &reg.code_id)?
        .code()
        .context("no code in the mail")?;
    run.secrets.extend(code_spellings(&code));
    if t % 4 == 1 {
        // Reissued through the other gateway (other issuer): the old code is revoked.
        let re = reissue_by_email(&gws[(t + 1) % 2], &c.email)?;
        ensure!(
            re.tenant_id == reg.tenant_id && re.code_id != reg.code_id,
            "reissue: {}",
            re.json
        );
        let old = std::mem::replace(
            &mut code,
            wait_mail(&c.email, &re.code_id)?
                .code()
                .context("no code in the reissue mail")?,
        );
        run.secrets.extend(code_spellings(&code));
        let r = redeem(&gws[t % 2], &old, &dir.join(format!("t{t}-old")))?;
        ensure!(!r.wrote_secrets(), "the revoked code wrote a Secret");
        run.revoked_exit = Some(r.exit);
        run.reissued = true;
    }

    // Three racers, alternating gateways.
    let racers: Vec<_> = (0..3)
        .map(|i| {
            let url = gws[(t + i) % 2].clone();
            let out = dir.join(format!("t{t}-r{i}"));
            let code = code.clone();
            std::thread::spawn(move || redeem(&url, &code, &out))
        })
        .collect();
    let mut results: Vec<Redeem> = Vec::new();
    for r in racers {
        results.push(r.join().map_err(|_| anyhow!("a racer panicked"))??);
    }
    run.racer_exits = results.iter().map(|r| r.exit).collect();
    let winners: Vec<usize> = (0..3).filter(|&i| results[i].ok()).collect();
    ensure!(
        winners.len() == 1,
        "tenant {t}: {} winners, exits {:?}: {:?}",
        winners.len(),
        run.racer_exits,
        results.iter().map(|r| r.stderr.trim()).collect::<Vec<_>>()
    );
    for r in results.iter().filter(|r| !r.ok()) {
        ensure!(!r.wrote_secrets(), "a losing racer wrote a Secret");
    }
    let w = winners[0];
    let won_on = (t + w) % 2;
    let winner = &results[w];
    ensure!(
        winner.tenant_id()? == reg.tenant_id,
        "won under another tenant"
    );
    let collect = |r: &Redeem, run: &mut TenantRun| -> Result<()> {
        if let Some(tok) = r.secret(SEED, "LICENSE_TOKEN")? {
            run.secrets.push(tok.clone());
            run.licenses.push(tok);
        }
        if let Some(chain) = r.secret(SEED, "APPLIANCE_CERT")? {
            run.cert_chains.push(chain);
        }
        if let Some(key) = r.secret(SEED, "APPLIANCE_KEY")?
            && let Some(line) = key.lines().find(|l| !l.starts_with("-----"))
        {
            run.secrets.push(line.to_owned());
        }
        Ok(())
    };
    collect(winner, &mut run)?;
    ensure!(
        run.licenses.len() == usize::from(pro),
        "tenant {t} (pro {pro}): {} licenses after redeem",
        run.licenses.len()
    );
    let appliance_id = |r: &Redeem| -> Result<Option<serde_json::Value>> {
        Ok(match r.secret(SEED, "LICENSE_TOKEN")? {
            Some(tok) => Some(jwt_claims(&tok)?["appliance_id"].clone()),
            None => None,
        })
    };
    let first_id = appliance_id(winner)?;

    // The winner's lost response: the same key retries through the other gateway.
    let retry = redeem(&gws[1 - won_on], &code, &winner.out)?;
    run.retry_exit = retry.exit;
    retry.expect_ok()?;
    ensure!(
        retry.tenant_id()? == reg.tenant_id,
        "the retry changed the tenant"
    );
    ensure!(
        appliance_id(&retry)? == first_id,
        "the retry got another appliance"
    );
    collect(&retry, &mut run)?;

    if pro {
        // The seed's check-in URL is the retry's gateway; the JWKS comes from the other.
        let url = retry
            .secret(SEED, "CHECK_IN_URL")?
            .context("no CHECK_IN_URL")?;
        ensure!(url.starts_with(&gws[1 - won_on]), "check-in URL {url}");
        let seed = winner.out.display().to_string();
        let out = appliance_output(
            &["check-in", "--seed", &seed, "--service-url", &gws[won_on]],
            &[],
        )?;
        run.check_in_exit = out.status.code();
        ensure!(
            out.status.success(),
            "check-in (tenant {t}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        collect(&retry, &mut run)?;
    }
    Ok(run)
}

// ------------------------------------------------------------- signatures, by hand

static FILE_N: AtomicU64 = AtomicU64::new(0);

fn scratch(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!("{what}-{}", FILE_N.fetch_add(1, Ordering::Relaxed)))
}

/// A P-256 public key from a JWK, as PEM SubjectPublicKeyInfo.
fn jwk_pem(jwk: &serde_json::Value) -> Result<String> {
    ensure!(
        jwk["kty"] == "EC" && jwk["crv"] == "P-256",
        "not a P-256 JWK: {jwk}"
    );
    let coord = |k: &str| -> Result<Vec<u8>> {
        let v = URL_SAFE_NO_PAD.decode(jwk[k].as_str().with_context(|| format!("JWK {k}"))?)?;
        ensure!(v.len() == 32, "JWK {k} is {} bytes", v.len());
        Ok(v)
    };
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING 04 ‖ x ‖ y }
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    der.extend(coord("x")?);
    der.extend(coord("y")?);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    Ok(format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
        &b64[..64],
        &b64[64..]
    ))
}

/// A JWS ES256 signature (r ‖ s) as a DER ECDSA-Sig-Value.
fn der_signature(raw: &[u8]) -> Result<Vec<u8>> {
    ensure!(raw.len() == 64, "ES256 signature of {} bytes", raw.len());
    let int = |b: &[u8]| {
        let b = &b[b.iter().position(|&x| x != 0).unwrap_or(b.len() - 1)..];
        let mut v = vec![0x02];
        if b[0] & 0x80 != 0 {
            v.push(u8::try_from(b.len() + 1).unwrap_or(0));
            v.push(0);
        } else {
            v.push(u8::try_from(b.len()).unwrap_or(0));
        }
        v.extend_from_slice(b);
        v
    };
    let (r, s) = (int(&raw[..32]), int(&raw[32..]));
    let mut der = vec![0x30, u8::try_from(r.len() + s.len())?];
    der.extend(r);
    der.extend(s);
    Ok(der)
}

/// Whether `token` (ES256) verifies against the key its `kid` names in `jwks`, checked
/// with `openssl dgst`. `tamper` flips a bit of the signed input (negative control).
fn verify_jws(token: &str, jwks: &serde_json::Value, dir: &Path, tamper: bool) -> Result<bool> {
    let mut parts = token.split('.');
    let (h, p, sig) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => bail!("not a compact JWS"),
    };
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h)?)?;
    ensure!(header["alg"] == "ES256", "license alg {}", header["alg"]);
    let kid = header["kid"].as_str().context("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid))
        .with_context(|| format!("kid {kid} is not published"))?;
    let pem = scratch(dir, "pub");
    fs::write(&pem, jwk_pem(jwk)?)?;
    let sig_file = scratch(dir, "sig");
    fs::write(&sig_file, der_signature(&URL_SAFE_NO_PAD.decode(sig)?)?)?;
    let mut input = format!("{h}.{p}").into_bytes();
    if tamper {
        let last = input.len() - 1;
        input[last] ^= 1;
    }
    let out = run(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pem)
            .arg("-signature")
            .arg(&sig_file),
        Some(&input),
    )?;
    let _ = fs::remove_file(&sig_file);
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"))
}

/// The PEM blocks of a chain.
fn pem_blocks(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .filter_map(|b| b.find("-----BEGIN").map(|i| format!("{}\n", &b[i..])))
        .collect()
}

/// The serial of a PEM certificate, upper-case hex without leading zeros.
fn serial_of(cert: &Path) -> Result<String> {
    let out = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(cert),
        None,
    )?;
    ensure!(out.status.success(), "openssl x509 -serial failed");
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(normal_serial(
        s.trim().strip_prefix("serial=").context("no serial")?,
    ))
}

fn normal_serial(s: &str) -> String {
    let s = s.trim_start_matches('0').to_ascii_uppercase();
    if s.is_empty() { "0".into() } else { s }
}

/// Verifies a certificate chain (leaf first) against `ca` with `openssl verify`.
fn verify_chain_against(chain: &str, ca: &Path, dir: &Path) -> Result<(bool, String)> {
    let blocks = pem_blocks(chain);
    ensure!(!blocks.is_empty(), "no certificate in APPLIANCE_CERT");
    let leaf = scratch(dir, "leaf");
    fs::write(&leaf, &blocks[0])?;
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(ca);
    if blocks.len() > 1 {
        let untrusted = scratch(dir, "chain");
        fs::write(&untrusted, blocks[1..].concat())?;
        cmd.arg("-untrusted").arg(untrusted);
    }
    cmd.arg(&leaf);
    let out = run(&mut cmd, None)?;
    Ok((out.status.success(), serial_of(&leaf)?))
}

// ------------------------------------------------------------------- signing logs

/// One issuer's signing log, verified as a chain: its records.
fn read_signlog(dir: &Path) -> Result<(Vec<signlog::SignlogRecord>, usize, String)> {
    let mut files: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let n = signlog::parse_file_name(p.file_name()?.to_str()?)?;
            Some((n, p))
        })
        .collect();
    files.sort();
    let mut text = String::new();
    for (_, p) in &files {
        text.push_str(&fs::read_to_string(p)?);
    }
    let mut v = signlog::ChainVerifier::new();
    let mut records = Vec::new();
    for line in text.lines() {
        records.push(v.push(line).map_err(|b| {
            anyhow!(
                "signing log {} breaks at seq {}: {b:?}",
                dir.display(),
                b.seq
            )
        })?);
    }
    Ok((records, text.len(), text))
}

/// What a gateway logged of its requests (its `request` lines, ANSI colours removed):
/// how many of each status, and the slowest answer per route in milliseconds.
type Requests = (BTreeMap<u16, usize>, BTreeMap<String, u64>);

fn logged_requests(dir: &Path, gw: usize) -> Result<Requests> {
    let (mut statuses, mut slowest) = (BTreeMap::new(), BTreeMap::new());
    let field = |line: &str, name: &str| -> Option<String> {
        let rest = line.split(&format!(" {name}=")).nth(1)?;
        Some(rest.split([' ', '}']).next()?.to_owned())
    };
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !(name.starts_with(&format!("gateway-{gw}-")) && name.ends_with(".log")) {
            continue;
        }
        for line in strip_ansi(&fs::read_to_string(&p)?).lines() {
            let Some(status) = field(line, "http.status").and_then(|s| s.parse::<u16>().ok())
            else {
                continue;
            };
            *statuses.entry(status).or_default() += 1;
            if let (Some(route), Some(ms)) = (
                field(line, "http.route"),
                field(line, "elapsed_ms").and_then(|m| m.parse::<u64>().ok()),
            ) {
                let slow = slowest.entry(route).or_default();
                *slow = ms.max(*slow);
            }
        }
    }
    Ok((statuses, slowest))
}

/// `text` without ANSI colour sequences (the servers' logs are coloured).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut in_escape = false;
    for ch in text.chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (true, c) if c.is_ascii_alphabetic() => in_escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    plain
}

fn rfc3339_in(secs: u64) -> Result<String> {
    let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + secs;
    let out = run(
        Command::new("date").args(["-u", "-d", &format!("@{at}"), "+%Y-%m-%dT%H:%M:%SZ"]),
        None,
    )?;
    ensure!(out.status.success(), "date failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn count<K: Ord + Clone>(items: impl IntoIterator<Item = K>) -> BTreeMap<K, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_default() += 1;
    }
    m
}

fn exit_name(e: Option<i32>) -> String {
    e.map_or_else(|| "signal".into(), |c| c.to_string())
}

/// Every WARN and ERROR line of the servers' logs in `dir` (at most 60), to stderr.
fn print_warnings(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let mut shown = 0;
    for log in logs {
        let text = strip_ansi(&fs::read_to_string(&log).unwrap_or_default());
        for line in text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        {
            if shown == 60 {
                return;
            }
            eprintln!("{}: {line}", log.display());
            shown += 1;
        }
    }
}

#[test]
fn r13_two_issuer_processes_two_gateways_mixed_load_one_chain_single_use() -> Result<()> {
    let test_started = Instant::now();
    let n = tenants();
    // Many redeems from one source address: lift the per-source brake (R8's business),
    // keep the per-code one.
    let s = Stack::start_with(2, 2, |policy| {
        let q = policy
            .get_mut("rate_limits")
            .and_then(|r| r.as_table_mut())
            .and_then(|r| r.get_mut("redeem_per_source"))
            .and_then(|q| q.as_table_mut())
            .context("[rate_limits.redeem_per_source] missing")?;
        q.insert("per_minute".into(), 10_000.into());
        q.insert("burst".into(), 10_000.into());
        Ok(())
    })?;
    let r = s.check(|s| {
        let gws = [s.gw(0).to_owned(), s.gw(1).to_owned()];
        let issuers = s.issuers();
        ensure!(issuers.len() == 2, "{} issuers", issuers.len());
        ensure!(
            s.gateways[0].issuer_url == issuers[0].0
                && s.gateways[1].issuer_url == issuers[1].0
                && issuers[0].0 != issuers[1].0,
            "gateway A must talk to issuer A and B to B"
        );
        let work = s.path("work");
        fs::create_dir_all(&work)?;

        // The load: every tenant at once, through both gateways.
        let started = Instant::now();
        let threads: Vec<_> = (0..n)
            .map(|t| {
                let gws = gws.clone();
                let work = work.clone();
                std::thread::spawn(move || run_tenant(t, &gws, &work))
            })
            .collect();
        // Every thread joined before the first failure is reported: none outlives the stack.
        let joined: Vec<Result<TenantRun>> = threads
            .into_iter()
            .enumerate()
            .map(|(t, th)| {
                th.join()
                    .map_err(|_| anyhow!("tenant {t} panicked"))?
                    .with_context(|| format!("tenant {t}"))
            })
            .collect();
        let runs = joined.into_iter().collect::<Result<Vec<_>>>()?;
        let load = started.elapsed();
        // Its time is a figure (printed below), not a pass mark: every request in it is
        // bounded by its client (curl --max-time, the appliance's own timeouts).

        // Single use: one winner and two `code_already_used` (exit 14) per code, retries
        // and check-ins succeed, revoked codes refused (exit 13), one appliance per code.
        let racer_exits = count(runs.iter().flat_map(|r| r.racer_exits.iter().copied()));
        ensure!(
            racer_exits.get(&Some(0)) == Some(&n) && racer_exits.get(&Some(14)) == Some(&(2 * n)),
            "racer exits {racer_exits:?}"
        );
        let revoked = count(runs.iter().filter_map(|r| r.revoked_exit));
        ensure!(
            revoked.keys().all(|e| *e == Some(13)),
            "a revoked code's redeem: exits {revoked:?}"
        );
        let per_tenant: HashMap<String, String> = s
            .db
            .query("SELECT tenant_id || ' ' || count(*) FROM appliances GROUP BY tenant_id")?
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        for r in &runs {
            ensure!(
                per_tenant.get(&r.tenant_id).map(String::as_str) == Some("1"),
                "tenant {}: {:?} appliances",
                r.tenant_id,
                per_tenant.get(&r.tenant_id)
            );
        }
        ensure!(per_tenant.len() == n, "{} tenants with appliances", per_tenant.len());

        // What both gateways answered, from their own request logs: no 5xx.
        let requests = [
            logged_requests(s.dir.path(), 0)?,
            logged_requests(s.dir.path(), 1)?,
        ];
        let statuses = [&requests[0].0, &requests[1].0];
        let mut slowest: BTreeMap<&str, u64> = BTreeMap::new();
        for (route, ms) in requests.iter().flat_map(|r| r.1.iter()) {
            let slow = slowest.entry(route.as_str()).or_default();
            *slow = (*ms).max(*slow);
        }
        let five_xx: usize = statuses
            .iter()
            .flat_map(|m| m.iter())
            .filter(|(c, _)| **c >= 500)
            .map(|(_, k)| k)
            .sum();
        ensure!(
            statuses.iter().all(|m| m.get(&200).is_some_and(|&k| k > 0)),
            "a gateway logged no 200: {statuses:?}"
        );
        ensure!(five_xx == 0, "{five_xx} × 5xx: {statuses:?}");

        // One audit chain: every event chained once, seq 1..n, each prev_hash the
        // previous hash; `alga-audit verify` with either issuer's published audit keys.
        let report = s.verify_audit_with_keys_of(&issuers[0].0, 1)?;
        s.verify_audit_with_keys_of(&issuers[1].0, 1)?;
        let records = report["report"]["records"].as_u64().context("records")?;
        let checkpoints = report["report"]["checkpoints_valid"].as_u64().unwrap_or(0);
        ensure!(
            report["report"]["first_seq"].as_u64() == Some(1)
                && report["report"]["last_seq"].as_u64() == Some(records),
            "not one gap-free chain: {report}"
        );
        let forks = s.db.query(
            "SELECT count(*) FROM (SELECT seq, prev_hash, lag(hash) OVER (ORDER BY seq) AS h, \
             lag(seq) OVER (ORDER BY seq) AS p FROM audit_chain) c \
             WHERE (p IS NULL AND seq <> 1) OR (p IS NOT NULL AND (p <> seq - 1 OR h <> prev_hash))",
        )?;
        ensure!(forks == "0", "{forks} gaps or forks in the audit chain");
        let chained = s.db.query(
            "SELECT (SELECT count(*) FROM audit_events) || ' ' || count(*) || ' ' || \
             count(DISTINCT event_id) FROM audit_chain",
        )?;
        ensure!(
            chained == format!("{records} {records} {records}"),
            "events, chain rows, distinct events: {chained} (verified {records})"
        );
        for gw in &gws {
            let v = algactl_as_auditor(gw, &["audit", "verify"])?;
            ensure!(
                v["findings"].as_array().is_some_and(|f| f.is_empty())
                    && v["records"].as_u64() >= Some(records),
                "algactl audit verify through {gw}: {v}"
            );
        }

        // Both signing logs: intact chains, both used, and who signed what.
        let mut logs = Vec::new();
        for (_, dir) in &issuers {
            logs.push(read_signlog(dir)?);
        }
        let mut signer: HashMap<String, usize> = HashMap::new();
        for (i, (records, _, _)) in logs.iter().enumerate() {
            ensure!(!records.is_empty(), "issuer {i}'s signing log is empty");
            for r in records {
                if let Some(jti) = r.ids.jti {
                    ensure!(
                        signer.insert(jti.to_string(), i).is_none(),
                        "jti {jti} signed twice"
                    );
                }
                if let Some(serial) = &r.ids.serial {
                    ensure!(
                        signer.insert(normal_serial(serial), i).is_none(),
                        "serial {serial} signed twice"
                    );
                }
            }
        }
        let ops: Vec<BTreeMap<&str, usize>> = logs
            .iter()
            .map(|(records, _, _)| count(records.iter().map(|r| r.op.as_str())))
            .collect();
        for (i, o) in ops.iter().enumerate() {
            ensure!(
                o.get(SignOp::License.as_str()).is_some_and(|&k| k > 0)
                    && o.get(SignOp::Credential.as_str()).is_some_and(|&k| k > 0),
                "issuer {i} signed no license or no credential: {o:?}"
            );
        }

        // Published keys: the same JWKS and CA through either gateway; every license
        // and credential, whichever issuer signed it, verifies against both.
        let sigs = s.path("sigs");
        fs::create_dir_all(&sigs)?;
        let mut jwks = Vec::new();
        let mut cas = Vec::new();
        for (i, gw) in gws.iter().enumerate() {
            let (st, body) = curl(&format!("{gw}/.well-known/jwks.json"), None, None)?;
            ensure!(st == 200, "JWKS through gateway {i}: {st}");
            let j: serde_json::Value = serde_json::from_slice(&body)?;
            let mut keys: Vec<String> = j["keys"]
                .as_array()
                .context("JWKS keys")?
                .iter()
                .map(|k| k.to_string())
                .collect();
            keys.sort();
            jwks.push((j, keys));
            let ca = sigs.join(format!("ca-{i}.pem"));
            let (st, _) = curl(&format!("{gw}/ca.pem"), None, Some(&ca))?;
            ensure!(st == 200, "CA through gateway {i}: {st}");
            cas.push(ca);
        }
        ensure!(jwks[0].1 == jwks[1].1, "the gateways publish different JWKS");
        // …because both issuer processes publish the same keys (one token).
        let (cert, key) = gateway_client_identity();
        let mut published = Vec::new();
        for (url, _) in &issuers {
            let (st, body) = curl(&format!("{url}/v1/keys"), Some((&cert, &key)), None)?;
            ensure!(st == 200, "GET {url}/v1/keys: {st}");
            published.push(serde_json::from_slice::<serde_json::Value>(&body)?);
        }
        ensure!(
            published[0] == published[1],
            "the two issuer processes publish different keys"
        );
        ensure!(
            fs::read(&cas[0])? == fs::read(&cas[1])?,
            "the gateways publish different CAs"
        );
        let licenses: BTreeSet<&String> = runs.iter().flat_map(|r| &r.licenses).collect();
        let mut lic_by = [0usize; 2];
        for (k, tok) in licenses.iter().enumerate() {
            let jti = jwt_claims(tok)?["jti"]
                .as_str()
                .context("license jti")?
                .to_owned();
            let by = *signer
                .get(&jti)
                .with_context(|| format!("license {jti} is in no signing log"))?;
            lic_by[by] += 1;
            for (i, (j, _)) in jwks.iter().enumerate() {
                ensure!(
                    verify_jws(tok, j, &sigs, false)?,
                    "license {jti} (signed by issuer {by}) does not verify against gateway {i}'s JWKS"
                );
            }
            if k == 0 {
                ensure!(
                    !verify_jws(tok, &jwks[0].0, &sigs, true)?,
                    "a tampered license verified: the check is blind"
                );
            }
        }
        let chains: BTreeSet<&String> = runs.iter().flat_map(|r| &r.cert_chains).collect();
        let mut cred_by = [0usize; 2];
        for chain in &chains {
            let mut serial = String::new();
            for (i, ca) in cas.iter().enumerate() {
                let (ok, sn) = verify_chain_against(chain, ca, &sigs)?;
                ensure!(ok, "credential {sn} does not verify against gateway {i}'s CA");
                serial = sn;
            }
            let by = *signer
                .get(&serial)
                .with_context(|| format!("credential {serial} is in no signing log"))?;
            cred_by[by] += 1;
        }
        ensure!(
            lic_by.iter().all(|&k| k > 0) && cred_by.iter().all(|&k| k > 0),
            "both issuers' signatures should be checked: licenses {lic_by:?}, credentials {cred_by:?}"
        );

        // The signing logs reconcile with the one audit log.
        let rec = s.reconcile_issuer_logs(&rfc3339_in(60)?)?;
        ensure!(
            rec["reconciled"] == true && rec["counts"]["broken_logs"] == 0,
            "alga-audit reconcile: {}",
            rec["counts"]
        );

        // No secret (codes, tokens, appliance keys, the PIN) in either signing log, the
        // server logs, the registry or the audit records.
        let mut secrets: Vec<String> = runs.iter().flat_map(|r| r.secrets.clone()).collect();
        secrets.push(
            fs::read_to_string(env("ALGA_HSM_PIN_FILE"))?
                .trim()
                .to_owned(),
        );
        secrets.sort();
        secrets.dedup();
        for (i, (_, _, text)) in logs.iter().enumerate() {
            for secret in &secrets {
                ensure!(
                    !text.contains(secret.as_str()),
                    "a secret ({}…) is in issuer {i}'s signing log",
                    secret.chars().take(6).collect::<String>()
                );
            }
        }
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        s.assert_no_secrets_leaked(&refs)?;

        let reissued = runs.iter().filter(|r| r.reissued).count();
        let pro = runs.iter().filter(|r| r.pro).count();
        let exits = |f: &dyn Fn(&TenantRun) -> Option<Option<i32>>| {
            count(runs.iter().filter_map(f).map(exit_name))
        };
        println!(
            "R13 (two issuer processes): {n} tenants ({pro} pro, {reissued} reissued through the \
             other gateway) over 2 gateways → 2 issuer processes on one token in {load:.1?} \
             (whole test {:.1?}): racer exits {:?}, retry {:?}, revoked code {:?}, check-in {:?}; \
             HTTP A {:?} B {:?}, 0 × 5xx (slowest answer per route, ms: {slowest:?}); 1 appliance per code; {records} audit events in one \
             gap-free chain, 0 forks, {checkpoints} checkpoints verified with either issuer's \
             keys; signing logs A {:?} B {:?}; {} licenses (A {}, B {}) and {} credentials \
             (A {}, B {}) verified against both gateways' JWKS/CA; reconcile {}; {} secrets, \
             0 in {} KiB of signing logs",
            test_started.elapsed(),
            count(runs.iter().flat_map(|r| r.racer_exits.iter().map(|e| exit_name(*e)))),
            exits(&|r| Some(r.retry_exit)),
            exits(&|r| r.revoked_exit),
            exits(&|r| r.pro.then_some(r.check_in_exit)),
            statuses[0],
            statuses[1],
            ops[0],
            ops[1],
            licenses.len(),
            lic_by[0],
            lic_by[1],
            chains.len(),
            cred_by[0],
            cred_by[1],
            rec["counts"],
            secrets.len(),
            logs.iter().map(|l| l.1).sum::<usize>() / 1024,
        );
        Ok(())
    });
    if r.is_err() {
        // The tails `check` printed may miss the cause: every warning and error.
        print_warnings(s.dir.path());
    }
    r
}
