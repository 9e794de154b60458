//! Key rotation end to end: every key the issuer holds is rotated (`alga-issuer keys
//! rotate license|ca|code|audit|log`), the issuer and the gateway restart, and then
//!
//! - what was issued before still works: an unused install code redeems, an appliance
//!   checks in with its old client certificate, its old license verifies against the
//!   pinned trust root and its key is still published, audit checkpoints signed before
//!   verify with the published audit keys, and a transparency-log checkpoint kept from
//!   before verifies and is extended by the new ones;
//! - what is issued after carries the new version: the code's key version, the
//!   license's `kid`, the credential's issuer (`CN=alga-license appliance CA v2`), the
//!   checkpoints' key ids.
//!
//! The trust root is not rotated by design (SECURITY.md, "The trust chain": every
//! appliance pins it): `keys rotate root` is refused, which is asserted too.
//!
//! `issuer/tests/it` covers the ceremony itself on a token (versions added, the old
//! kept, root certification and endorsement of the new CA and license key, the log key's
//! published verifier keys); this test covers the running system across a restart.
//!
//! The test rotates a SoftHSM2 token of its own, made by `alga-issuer token init` and
//! `keys init`: rotating the stack's token would change the keys under every other test
//! running at the same time, and add a version at every run. So it starts a
//! [`Stack`] (database, configuration files, ports), replaces its issuer and gateway at
//! once by ones on the test's token (before anything is signed: checked), and later
//! restarts them the same way after the rotation.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alga_protocol::trust::{ENDORSEMENT_HEADER, KeyEndorsement, LicenseExpectation, TrustRoots};
use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use serde_json::Value;

use crate::support::{
    Customer, Proc, Redeem, Stack, appliance_output, bin, curl, gateway_client_identity,
    redeem_pinned, register, run, secret_value, split_password, succeeded, text, unique, wait_mail,
};

/// The key kinds `keys rotate` takes, each with the prefix of its key ids.
const ROTATED: [(&str, &str); 5] = [
    ("license", "alga-license"),
    ("ca", "alga-ca"),
    ("code", "alga-code"),
    ("audit", "alga-audit"),
    ("log", "alga-log"),
];

/// How long the gateway's sequencer may take to sign a checkpoint of new records (the
/// stack's policy is set to one every second).
const CHECKPOINT_WAIT: Duration = Duration::from_secs(30);

const SEED: &str = "appliance-license-seed.yaml";

#[test]
fn every_rotated_key_keeps_old_artefacts_valid_and_signs_new_ones() -> Result<()> {
    let mut s = Stack::start(1)?;
    let gateway = s.gw(0).to_owned();
    // The stack's gateway and issuer use the stack's token: stop them before they sign
    // anything, and serve from the test's own token on the same ports.
    drop(s.gateways.remove(0));
    s.issuer.kill();
    let signed: u64 =
        s.db.query(
            "SELECT (SELECT count(*) FROM audit_checkpoints) \
             + (SELECT count(*) FROM audit_log_checkpoints)",
        )?
        .parse()?;
    ensure!(
        signed == 0,
        "the stack's gateway signed {signed} checkpoints with the stack's token before it was stopped"
    );
    s.check(|s| {
        let token = Token::create(s)?;
        let servers = Servers::start(s, &token, &gateway, 1)?;
        let keys = token.keys()?;
        for (_, prefix) in ROTATED {
            ensure!(
                active(&keys, prefix)? == format!("{prefix}-v1"),
                "a fresh token's {prefix} key is not v1: {keys}"
            );
        }
        let roots = TrustRoots::from_pem(&fs::read(&token.trust_root)?)?;

        // ------------------------------------------------ before the rotation
        // An installed appliance, and a code left unused.
        let installed = Customer::new("rotation-installed");
        let reg = register(&gateway, &installed, "pro")?;
        let code = mailed_code(&installed.email, &reg.code_id)?;
        let old = redeem(&gateway, &token, &code, &s.path("old-appliance"))?;
        old.expect_ok()?;
        let old_seed = Issued::read(&old.out)?;
        old_seed.expect_kid("alga-license-v1")?;
        ensure!(old_seed.ca_version()? == 1);

        let waiting = Customer::new("rotation-unused-code");
        let unused = register(&gateway, &waiting, "pro")?;
        let unused_code = mailed_code(&waiting.email, &unused.code_id)?;
        ensure!(key_version(s, &unused.code_id)? == 1);

        // Both kinds of checkpoint signed with the v1 keys; one transparency-log
        // checkpoint kept, as a witness or an auditor keeps it.
        wait_for("checkpoints signed by alga-audit-v1 and alga-log-v1", || {
            Ok(kids(s, "audit_checkpoints")?.contains(&"alga-audit-v1".to_owned())
                && kids(s, "audit_log_checkpoints")?.contains(&"alga-log-v1".to_owned()))
        })?;
        let (status, note) = curl(&format!("{gateway}/audit/log/checkpoint"), None, None)?;
        ensure!(status == 200, "GET /audit/log/checkpoint answered {status}");
        let kept_note = s.path("kept-checkpoint.note");
        fs::write(&kept_note, &note)?;

        // ------------------------------------------------------ the rotation
        for (kind, prefix) in ROTATED {
            let out = token.issuer(&["keys", "rotate", kind])?;
            ensure!(
                out.contains(&format!("{prefix}-v2")),
                "keys rotate {kind}: {out}"
            );
        }
        // The trust root is not rotated: appliances pin it (SECURITY.md).
        let root = token.issuer_output(&["keys", "rotate", "root"])?;
        ensure!(
            !root.status.success() && text(&root.stderr).contains("not rotated"),
            "keys rotate root: {:?} {}",
            root.status,
            text(&root.stderr)
        );
        let keys = token.keys()?;
        for (_, prefix) in ROTATED {
            ensure!(
                versions(&keys, prefix) == [format!("{prefix}-v1"), format!("{prefix}-v2")],
                "keys list after rotating {prefix}: {keys}"
            );
            ensure!(active(&keys, prefix)? == format!("{prefix}-v2"), "{keys}");
        }
        ensure!(versions(&keys, "alga-root") == ["alga-root-v1"], "{keys}");
        ensure!(active(&keys, "alga-root")? == "alga-root-v1", "{keys}");

        // ------------------------------------------------------- the restart
        // (The gateway stops first, then the issuer; they start in the other order.)
        drop(servers);
        let _servers = Servers::start(s, &token, &gateway, 2)?;

        // ------------------------------------- (a) what was issued before works
        let now = unix_now();
        // The old license verifies with nothing but the pinned root, and the key that
        // signed it is still published beside the new one.
        old_seed.verify(&roots, now)?;
        let (status, jwks) = curl(&format!("{gateway}/.well-known/jwks.json"), None, None)?;
        ensure!(status == 200, "GET /.well-known/jwks.json answered {status}");
        let jwks: Value = serde_json::from_slice(&jwks)?;
        let published = |kid: &str| {
            jwks["keys"]
                .as_array()
                .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
                .cloned()
        };
        let v1 = published("alga-license-v1").context("the old license key is no longer published")?;
        ensure!(
            published("alga-license-v2").is_some(),
            "the new license key is not published: {jwks}"
        );
        let endorsed = old_seed.endorsed_key()?;
        ensure!(
            v1["x"] == endorsed["x"] && v1["y"] == endorsed["y"],
            "the published alga-license-v1 ({v1}) is not the key that signed the old license ({endorsed})"
        );

        // The old appliance checks in with its old certificate (CA v1): accepted, the
        // credential kept, and the fresh license signed by the new license key.
        let check_in = appliance_output(
            &["check-in", "--seed", &old.out.display().to_string()],
            &[],
        )?;
        ensure!(
            check_in.status.success(),
            "the old appliance's check-in after the rotation: {:?}\n{}{}",
            check_in.status,
            text(&check_in.stderr),
            text(&check_in.stdout)
        );
        ensure!(
            text(&check_in.stdout).contains("credential_rotated: false"),
            "{}",
            text(&check_in.stdout)
        );
        let checked_in = Issued::read(&old.out)?;
        ensure!(
            checked_in.cert_pem == old_seed.cert_pem,
            "the check-in replaced the old credential: it was not the old one that was accepted"
        );
        ensure!(checked_in.ca_version()? == 1);
        checked_in.expect_kid("alga-license-v2")?;
        checked_in.verify(&roots, now)?;

        // The code minted before the rotation (HMAC key v1) still redeems.
        let late = redeem(&gateway, &token, &unused_code, &s.path("late-appliance"))?;
        late.expect_ok()?;

        // ------------------------------------ (b) what is issued after is v2
        let late_seed = Issued::read(&late.out)?;
        late_seed.expect_kid("alga-license-v2")?;
        ensure!(late_seed.ca_version()? == 2);
        late_seed.verify(&roots, now)?;

        let fresh = Customer::new("rotation-fresh");
        let reg = register(&gateway, &fresh, "pro")?;
        ensure!(
            key_version(s, &reg.code_id)? == 2,
            "a code minted after the rotation"
        );
        let code = mailed_code(&fresh.email, &reg.code_id)?;
        let new = redeem(&gateway, &token, &code, &s.path("new-appliance"))?;
        new.expect_ok()?;
        let new_seed = Issued::read(&new.out)?;
        new_seed.expect_kid("alga-license-v2")?;
        ensure!(new_seed.ca_version()? == 2);
        new_seed.verify(&roots, unix_now())?;

        // Checkpoints: the new ones by the v2 keys; all of the chain's, old and new,
        // verify with the published audit keys.
        wait_for("checkpoints signed by alga-audit-v2 and alga-log-v2", || {
            Ok(kids(s, "audit_checkpoints")?.contains(&"alga-audit-v2".to_owned())
                && kids(s, "audit_log_checkpoints")?.contains(&"alga-log-v2".to_owned()))
        })?;
        let report = s.verify_audit(2)?;
        ensure!(report["intact"] == true, "{report}");

        // The transparency log: both verifier keys published; the checkpoint kept from
        // before (signed by v1) verifies, and the newest (signed by v2) extends it.
        let (status, vkeys) = curl(&format!("{gateway}/audit/log/vkey"), None, None)?;
        ensure!(status == 200, "GET /audit/log/vkey answered {status}");
        let vkeys = text(&vkeys);
        let lines: Vec<&str> = vkeys.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(lines.len() == 2, "two log keys published: {vkeys}");
        let log_keys = s.path("log.vkey");
        fs::write(&log_keys, &vkeys)?;
        let verified = verify_log_from(s, &kept_note, &log_keys)?;
        ensure!(
            verified.status.success(),
            "alga-audit verify --from-checkpoint (kept before the rotation): {:?}\n{}{}",
            verified.status,
            text(&verified.stderr),
            text(&verified.stdout)
        );
        Ok(())
    })
}

// ------------------------------------------------------------------ the test's token

/// A SoftHSM2 token of this test's own (in the stack's temporary directory), with an
/// issuer configuration that uses it and the trust root file appliances pin.
#[derive(Debug)]
struct Token {
    /// `SOFTHSM2_CONF` for the processes that open it.
    conf: PathBuf,
    issuer_config: PathBuf,
    trust_root: PathBuf,
}

impl Token {
    /// `token init`, `keys init` and `keys trust-root`, as an operator does them.
    fn create(s: &Stack) -> Result<Token> {
        let dir = s.path("token");
        let store = dir.join("store");
        fs::create_dir_all(&store)?;
        let conf = dir.join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                store.display()
            ),
        )?;
        // PINs in files, as the issuer reads them; never on a command line.
        let pin = dir.join("user.pin");
        fs::write(&pin, format!("user-{}", unique()))?;
        let so_pin = dir.join("so.pin");
        fs::write(&so_pin, format!("so-{}", unique()))?;
        // The stack's issuer configuration (ports, PKI, policy, signing log), this token.
        let mut config: toml::Table = fs::read_to_string(s.path("issuer.toml"))?.parse()?;
        let hsm = config
            .get_mut("hsm")
            .and_then(toml::Value::as_table_mut)
            .context("[hsm] missing in the stack's issuer.toml")?;
        hsm.insert("token_label".into(), format!("rot-{}", unique()).into());
        hsm.insert("pin_file".into(), pin.display().to_string().into());
        let issuer_config = dir.join("issuer.toml");
        fs::write(&issuer_config, toml::to_string(&config)?)?;
        let token = Token {
            conf,
            issuer_config,
            trust_root: dir.join("trust-root.pem"),
        };
        token.issuer(&[
            "token",
            "init",
            "--so-pin-file",
            &so_pin.display().to_string(),
        ])?;
        token.issuer(&["keys", "init"])?;
        token.issuer(&[
            "keys",
            "trust-root",
            "--out",
            &token.trust_root.display().to_string(),
        ])?;
        Ok(token)
    }

    /// `alga-issuer --config <this token's> <args>`, whatever its exit status.
    fn issuer_output(&self, args: &[&str]) -> Result<Output> {
        run(
            Command::new(bin("alga-issuer"))
                .arg("--config")
                .arg(&self.issuer_config)
                .args(args)
                .env("SOFTHSM2_CONF", &self.conf),
            None,
        )
    }

    /// [`Token::issuer_output`], which must succeed: its standard output.
    fn issuer(&self, args: &[&str]) -> Result<String> {
        let out = succeeded(
            format_args!("alga-issuer {args:?}"),
            self.issuer_output(args)?,
        )?;
        Ok(text(&out.stdout))
    }

    /// `keys list --json`.
    fn keys(&self) -> Result<Value> {
        serde_json::from_str(&self.issuer(&["keys", "list", "--json"])?)
            .context("keys list --json printed no JSON")
    }
}

/// The key ids of `keys list` that start with `prefix`, in order.
fn versions(keys: &Value, prefix: &str) -> Vec<String> {
    keys.as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kid"].as_str())
        .filter(|kid| {
            kid.strip_prefix(prefix)
                .is_some_and(|v| v.starts_with("-v"))
        })
        .map(str::to_owned)
        .collect()
}

/// The one active key id of `keys list` that starts with `prefix`.
fn active(keys: &Value, prefix: &str) -> Result<String> {
    let active: Vec<&str> = keys
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["active"] == true)
        .filter_map(|k| k["kid"].as_str())
        .filter(|kid| {
            kid.strip_prefix(prefix)
                .is_some_and(|v| v.starts_with("-v"))
        })
        .collect();
    match active.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => bail!("{} active {prefix} keys: {keys}", active.len()),
    }
}

// ----------------------------------------------------------------------- servers

/// The issuer (on the test's token) and the gateway, on the ports [`Stack::start`] gave
/// them, so the gateway's `[issuer] url` and the appliances' check-in URL stay right.
/// Fields drop in order: the gateway first.
#[derive(Debug)]
struct Servers {
    _gateway: Proc,
    _issuer: Proc,
}

impl Servers {
    /// Start number `n`: the issuer, healthy, then the gateway, healthy.
    fn start(s: &Stack, token: &Token, gateway: &str, n: u32) -> Result<Servers> {
        let issuer = Proc::spawn(
            "alga-issuer (the test's token)",
            Command::new(bin("alga-issuer"))
                .args(["serve", "--config"])
                .arg(&token.issuer_config)
                .env("SOFTHSM2_CONF", &token.conf)
                .env("RUST_LOG", "info"),
            s.path(&format!("issuer-own-token-{n}.log")),
        )?;
        let (cert, key) = gateway_client_identity();
        issuer.wait_healthy(&format!("{}/healthz", s.issuer_url), Some((&cert, &key)))?;
        let gw = Proc::spawn(
            "alga-gateway (restarted)",
            Command::new(bin("alga-gateway"))
                .args(["serve", "--config"])
                .arg(s.path("gateway-0.toml"))
                .env("RUST_LOG", "info"),
            s.path(&format!("gateway-restart-{n}.log")),
        )?;
        gw.wait_healthy(&format!("{gateway}/healthz"), None)?;
        Ok(Servers {
            _gateway: gw,
            _issuer: issuer,
        })
    }
}

// -------------------------------------------------------------------- appliances

/// `alga-appliance redeem` pinning the test token's trust root, the code on stdin.
fn redeem(gateway: &str, token: &Token, code: &str, out: &Path) -> Result<Redeem> {
    redeem_pinned(gateway, &token.trust_root, code, out)
}

fn mailed_code(rcpt: &str, code_id: &str) -> Result<String> {
    wait_mail(rcpt, code_id)?
        .code()
        .with_context(|| format!("no code in the mail to {rcpt}"))
}

/// What an appliance's license seed holds of the HSM's signatures.
#[derive(Debug)]
struct Issued {
    tenant_id: String,
    appliance_id: String,
    edition: String,
    license: String,
    /// The appliance's certificate followed by its CA's.
    cert_pem: String,
}

impl Issued {
    fn read(dir: &Path) -> Result<Issued> {
        let get = |key: &str| {
            secret_value(dir, SEED, key)?.with_context(|| format!("{key} missing in {SEED}"))
        };
        let license = get("LICENSE_TOKEN")?;
        let claims = crate::support::jwt_claims(&license)?;
        let claim = |name: &str| {
            claims[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {name} in the license: {claims}"))
        };
        Ok(Issued {
            tenant_id: claim("sub")?,
            appliance_id: claim("appliance_id")?,
            edition: claim("edition")?,
            cert_pem: get("APPLIANCE_CERT")?,
            license,
        })
    }

    fn header(&self) -> Result<Value> {
        let h = self.license.split('.').next().context("not a JWT")?;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h)?;
        Ok(serde_json::from_slice(&b)?)
    }

    /// The license's `kid` must be `want` (the message names the key, not the token).
    fn expect_kid(&self, want: &str) -> Result<()> {
        let header = self.header()?;
        let kid = header["kid"]
            .as_str()
            .context("no kid in the license's header")?;
        ensure!(
            kid == want,
            "the license of {} is signed by {kid}, not {want}",
            self.appliance_id
        );
        Ok(())
    }

    /// The license key as the root endorsed it (the license's header; the signature is
    /// checked by [`Issued::verify`]).
    fn endorsed_key(&self) -> Result<Value> {
        let jws = self.header()?[ENDORSEMENT_HEADER]
            .as_str()
            .map(str::to_owned)
            .context("no endorsement in the license's header")?;
        let e = KeyEndorsement::from_jws_unverified(&jws).context("the endorsement parses")?;
        Ok(serde_json::to_value(&e.key)?)
    }

    /// The appliance certificate's and its CA's DER.
    fn chain(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut ders = Vec::new();
        for block in self.cert_pem.split("-----BEGIN CERTIFICATE-----").skip(1) {
            let body = block
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap_or_default();
            let compact: String = body.split_whitespace().collect();
            ders.push(base64::engine::general_purpose::STANDARD.decode(compact)?);
        }
        match <[Vec<u8>; 2]>::try_from(ders) {
            Ok([leaf, ca]) => Ok((leaf, ca)),
            Err(ders) => bail!(
                "APPLIANCE_CERT holds {} certificates, not the leaf and its CA",
                ders.len()
            ),
        }
    }

    /// The version of the appliance CA that signed the certificate: the `vN` of its
    /// issuer name, `CN=alga-license appliance CA vN` (the leaf's own subject names the
    /// appliance and the tenant).
    fn ca_version(&self) -> Result<u32> {
        let (leaf, _) = self.chain()?;
        let found: Vec<u32> = (1..=9)
            .filter(|v| {
                let name = format!("alga-license appliance CA v{v}");
                leaf.windows(name.len()).any(|w| w == name.as_bytes())
            })
            .collect();
        match found.as_slice() {
            [v] => Ok(*v),
            _ => bail!("the certificate names CA versions {found:?}"),
        }
    }

    /// The license and the credential chain verify against the pinned root at `now`,
    /// as the appliance checks them.
    fn verify(&self, roots: &TrustRoots, now: i64) -> Result<()> {
        let expected = LicenseExpectation {
            tenant_id: serde_json::from_value(Value::from(self.tenant_id.as_str()))?,
            appliance_id: serde_json::from_value(Value::from(self.appliance_id.as_str()))?,
            edition: self.edition.clone(),
        };
        roots
            .verify_license(&self.license, &expected, now, 60)
            .map_err(|e| anyhow!("the license of {} does not verify: {e}", self.appliance_id))?;
        let (leaf, ca) = self.chain()?;
        roots
            .verify_credential_chain(&leaf, &ca, now, 60)
            .map_err(|e| {
                anyhow!(
                    "the credential of {} does not verify: {e}",
                    self.appliance_id
                )
            })
    }
}

// ------------------------------------------------------------------------- registry

/// The HMAC key version an install code is bound to.
fn key_version(s: &Stack, code_id: &str) -> Result<u32> {
    ensure!(
        code_id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{code_id}"
    );
    Ok(s.db
        .query(&format!(
            "SELECT key_version FROM install_codes WHERE code_id = '{code_id}'"
        ))?
        .parse()?)
}

/// The distinct key ids of a checkpoint table.
fn kids(s: &Stack, table: &str) -> Result<Vec<String>> {
    Ok(s.db
        .query(&format!("SELECT DISTINCT kid FROM {table} ORDER BY kid"))?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + CHECKPOINT_WAIT;
    while !done()? {
        ensure!(
            Instant::now() < deadline,
            "no {what} within {CHECKPOINT_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `alga-audit verify --from-checkpoint NOTE --log-keys KEYS` over this stack's
/// database: the newest checkpoint extends the kept one, both signatures verify.
fn verify_log_from(s: &Stack, note: &Path, log_keys: &Path) -> Result<Output> {
    let (url, pw) = split_password(&s.db.admin_url());
    let mut cmd = Command::new(bin("alga-audit"));
    cmd.args(["verify", "--from-checkpoint"])
        .arg(note)
        .arg("--log-keys")
        .arg(log_keys)
        .env("DATABASE_URL", &url);
    if let Some(pw) = &pw {
        let f = s.path("audit-db.pw");
        fs::write(&f, pw)?;
        cmd.arg("--password-file").arg(&f);
    }
    run(&mut cmd, None)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
