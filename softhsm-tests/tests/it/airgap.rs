//! An air-gapped appliance through real processes: installed and refreshed with no
//! network between it and the service.
//!
//! The appliance's commands (`alga-appliance redeem|check-in --offline-request` and
//! `--offline-response`) run with no network: in an empty network namespace when this
//! test may make one (`unshare -n`, as root), and always with
//! `ALGA_LICENSE_SERVICE_URL` pointing at a listener of this test that counts the
//! connections made to it, which must stay at none. `alga-appliance relay`, on the
//! "connected machine", talks to the real gateway. Tampered files (one byte) and a
//! replayed or revoked relayed check-in exit with their documented codes and write
//! nothing.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::support::{
    Customer, Stack, TestDb, algactl, appliance, bin, env, jwt_claims, register, run, secret_value,
    wait_mail,
};

/// Where the appliance's commands run: no route to anything, and a "service" that
/// counts whoever calls it.
struct NoNetwork {
    url: String,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
    /// `unshare -n` works here: the commands also run in an empty network namespace.
    namespace: bool,
}

impl NoNetwork {
    fn start() -> Result<NoNetwork> {
        let l = TcpListener::bind("127.0.0.1:0").context("binding the counting listener")?;
        l.set_nonblocking(true)?;
        let url = format!("https://127.0.0.1:{}", l.local_addr()?.port());
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (connections.clone(), stop.clone());
        let listener = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let namespace = Command::new("unshare")
            .args(["-n", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
        Ok(NoNetwork {
            url,
            connections,
            stop,
            listener: Some(listener),
            namespace,
        })
    }

    /// `alga-appliance <args>` with no network, whatever its exit status.
    fn appliance(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = if self.namespace {
            let mut c = Command::new("unshare");
            c.arg("-n").arg(bin("alga-appliance"));
            c
        } else {
            Command::new(bin("alga-appliance"))
        };
        cmd.args(args)
            .env("ALGA_LICENSE_SERVICE_URL", &self.url)
            .env("ALGA_LOG", "trace");
        run(&mut cmd, stdin.map(str::as_bytes))
    }

    /// As [`NoNetwork::appliance`], and it must succeed.
    fn appliance_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let o = self.appliance(args, stdin)?;
        ensure!(
            o.status.success(),
            "alga-appliance {args:?} (no network) failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for NoNetwork {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
    }
}

/// `alga-appliance relay` on a connected machine, whatever its exit status.
fn relay(gateway: &str, request: &Path, response: &Path) -> Result<Output> {
    run(
        Command::new(bin("alga-appliance"))
            .arg("relay")
            .arg("--request")
            .arg(request)
            .arg("--response")
            .arg(response)
            .args(["--service-url", gateway])
            .arg("--ca-bundle")
            .arg(env("ALGA_CA_BUNDLE")),
        None,
    )
}

fn relay_ok(gateway: &str, request: &Path, response: &Path) -> Result<String> {
    let o = relay(gateway, request, response)?;
    ensure!(
        o.status.success(),
        "relay failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.path(), fs::read(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// `src` with one byte changed at `at(text)` (a letter or digit, replaced by another
/// of the same alphabet so the JSON stays valid), written to `to`.
fn one_byte(src: &Path, at: impl Fn(&str) -> usize, to: &Path) -> Result<()> {
    let text = fs::read_to_string(src)?;
    let i = at(&text);
    let mut bytes = text.into_bytes();
    bytes[i] = match bytes[i] {
        b'0'..=b'8' | b'a'..=b'e' | b'A'..=b'E' | b'g'..=b'y' | b'G'..=b'Y' => bytes[i] + 1,
        b'9' => b'0',
        b'f' => b'a',
        b'F' => b'A',
        b'z' => b'g',
        b'Z' => b'G',
        other => anyhow::bail!("byte {other:#x} at {i} is not alphanumeric"),
    };
    fs::write(to, bytes)?;
    Ok(())
}

fn after(text: &str, needle: &str) -> usize {
    text.find(needle).map_or(0, |i| i + needle.len())
}

#[test]
fn air_gapped_install_and_refresh_with_no_network_on_the_appliance() -> Result<()> {
    let s = Stack::start(1)?;
    s.check(|s| {
        let gw = s.gw(0);
        let c = Customer::new("airgap");
        let reg = register(gw, &c, "pro")?;
        let code = wait_mail(&c.email, &reg.code_id)?
            .code()
            .context("no code")?;
        let net = NoNetwork::start()?;
        let medium = s.path("usb");
        fs::create_dir_all(&medium)?;
        let out = s.path("appliance");
        let out_s = out.display().to_string();
        let file = |name: &str| medium.join(name);
        let file_s = |name: &str| medium.join(name).display().to_string();
        let (ca, root) = (env("ALGA_CA_BUNDLE"), env("ALGA_TRUST_ROOT"));
        let install = |response: &str| {
            net.appliance(
                &[
                    "redeem",
                    "--offline-response",
                    &file_s(response),
                    "--out",
                    &out_s,
                    "--ca-bundle",
                    &ca,
                    "--trust-root",
                    &root,
                ],
                None,
            )
        };
        let refused = |what: &str, o: Output, code: i32, before: &BTreeMap<_, _>| {
            ensure!(
                o.status.code() == Some(code),
                "{what}: exit {:?}, not {code}: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr)
            );
            ensure!(snapshot(&out) == *before, "{what}: something was written");
            Ok(())
        };

        // 1. The appliance writes its request: the code on stdin, no network.
        let o = net.appliance(
            &[
                "redeem",
                "--offline-request",
                &file_s("redeem-request.json"),
                "--out",
                &out_s,
                "--hostname",
                "airgapped-1",
            ],
            Some(&format!("{code}\n")),
        )?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        ensure!(o.status.success(), "offline request: {stderr}");
        ensure!(
            !stdout.contains(&code) && !stderr.contains(&code),
            "the code was printed or logged"
        );
        let mode = fs::metadata(file("redeem-request.json"))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "request file mode {mode:o}");

        // 2. A request changed by one byte on the way (its nonce): the relay performs
        // it, the appliance refuses the answer (another request's), writing nothing.
        one_byte(
            &file("redeem-request.json"),
            |t| after(t, "\"nonce\": \""),
            &file("tampered-request.json"),
        )?;
        relay_ok(
            gw,
            &file("tampered-request.json"),
            &file("tampered-request-response.json"),
        )?;
        let before = snapshot(&out);
        refused(
            "answer to a tampered request",
            install("tampered-request-response.json")?,
            23,
            &before,
        )?;

        // 3. The relay performs the true request.
        let said = relay_ok(
            gw,
            &file("redeem-request.json"),
            &file("redeem-response.json"),
        )?;
        ensure!(said.contains("relayed: redeem"), "{said}");

        // 4. The response changed by one byte on the way (the license's signature).
        one_byte(
            &file("redeem-response.json"),
            |t| {
                let token = after(t, "\"token\": \"");
                let end = token + t[token..].find('"').unwrap_or(0);
                token + t[token..end].rfind('.').unwrap_or(0) + 6
            },
            &file("tampered-response.json"),
        )?;
        refused(
            "tampered response",
            install("tampered-response.json")?,
            24,
            &before,
        )?;

        // 5. The true response installs: the two Secrets, the same tenant, and the
        // bootstrap takes them unchanged.
        let o = install("redeem-response.json")?;
        ensure!(
            o.status.success(),
            "install: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let tenant = secret_value(&out, "appliance-initial-tenant.yaml", "INITIAL_TENANT_ID")?
            .context("no INITIAL_TENANT_ID")?;
        ensure!(tenant == reg.tenant_id, "tenant {tenant}");
        let token = secret_value(&out, "appliance-license-seed.yaml", "LICENSE_TOKEN")?
            .context("no license")?;
        let appliance_id = jwt_claims(&token)?["appliance_id"]
            .as_str()
            .context("appliance_id")?
            .to_owned();
        let app_db = TestDb::create("e2e_appliance", None)?;
        let app_url = app_db.admin_url();
        let envs = [("ALGA_APPLIANCE_DATABASE_URL", app_url.as_str())];
        appliance(&["bootstrap", "create-tenant", "--secrets", &out_s], &envs)?;
        appliance(&["bootstrap", "seed-license", "--secrets", &out_s], &envs)?;
        let local = app_db.query("SELECT tenant_id FROM alga_appliance.appliance_tenant")?;
        ensure!(local == tenant, "appliance tenant {local}");

        // 6. Offline refresh: a signed request, relayed, installed.
        net.appliance_ok(
            &[
                "check-in",
                "--offline-request",
                &file_s("check-in-request.json"),
                "--seed",
                &out_s,
            ],
            None,
        )?;
        let said = relay_ok(
            gw,
            &file("check-in-request.json"),
            &file("check-in-response.json"),
        )?;
        ensure!(said.contains("relayed: check-in"), "{said}");
        // The same request again: refused (34), no response written.
        let o = relay(gw, &file("check-in-request.json"), &file("replayed.json"))?;
        ensure!(
            o.status.code() == Some(34) && !file("replayed.json").exists(),
            "replay: exit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
        net.appliance_ok(
            &[
                "check-in",
                "--offline-response",
                &file_s("check-in-response.json"),
                "--seed",
                &out_s,
            ],
            None,
        )?;
        let token2 = secret_value(&out, "appliance-license-seed.yaml", "LICENSE_TOKEN")?
            .context("no license")?;
        ensure!(
            token2 != token,
            "the offline check-in did not refresh the license"
        );

        // 7. Revoked: the relayed check-in is refused (30), no response written.
        algactl(gw, &["appliance", "revoke", &appliance_id])?;
        net.appliance_ok(
            &[
                "check-in",
                "--offline-request",
                &file_s("revoked-request.json"),
                "--seed",
                &out_s,
            ],
            None,
        )?;
        let o = relay(
            gw,
            &file("revoked-request.json"),
            &file("revoked-response.json"),
        )?;
        ensure!(
            o.status.code() == Some(30) && !file("revoked-response.json").exists(),
            "revoked: exit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );

        // Nothing on the appliance's side ever tried the network.
        ensure!(
            net.connections() == 0,
            "the appliance's commands connected to the service URL {} times",
            net.connections()
        );
        s.verify_audit(1)?;
        s.assert_no_secrets_leaked(&[&code])
    })
}
