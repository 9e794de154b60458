//! The harness: the stack's settings, `algactl` run as the store or the auditor, and
//! its answers read back (JSON, table rows, refusals).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// The settings `algactl` reads from the environment: removed from the commands of
/// [`algactl_bare`], so a test that runs `make test` (which exports `.dev/env`) still
/// controls every one of them.
const SETTINGS: [&str; 6] = [
    "ALGA_GATEWAY_URL",
    "ALGA_CA_BUNDLE",
    "ALGA_STORE_CERT",
    "ALGA_STORE_KEY",
    "ALGA_AUDITOR_CERT",
    "ALGA_AUDITOR_KEY",
];

/// The stack's settings file; panics (fails the test) when the stack was never started.
pub fn env_file() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.dev/env");
    assert!(
        path.is_file(),
        "{} is missing: start the local stack with `make up` (these tests need it; they are not skipped)",
        path.display()
    );
    path
}

pub fn algactl(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_algactl"))
        .arg("--env-file")
        .arg(env_file())
        .args(args)
        .output()
        .expect("running algactl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("cannot reach the gateway"),
        "the gateway of .dev/env does not answer (make up; make status): {stderr}"
    );
    out
}

/// `algactl <args>`, which must succeed; its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = algactl(args);
    assert!(
        out.status.success(),
        "algactl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `algactl --json <args>`, decoded as `T`.
pub fn json<T: serde::de::DeserializeOwned>(args: &[&str]) -> T {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("algactl {args:?}: {e}: {text}"))
}

/// `algactl <args>`, which the service must refuse with `status` and `code`.
pub fn refused(args: &[&str], status: u16, code: &str) -> String {
    let out = algactl(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "algactl {args:?}: {stderr}");
    assert!(
        stderr.contains(&format!("the service answered {status} {code}:")),
        "algactl {args:?}: expected {status} {code}, got: {stderr}"
    );
    stderr
}

/// A fresh pro customer; its tenant id and registration code id.
pub fn register(label: &str) -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let u = format!(
        "{}-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let v: Value = json(&[
        "register",
        "--company",
        &format!("algactl {label} {u}"),
        "--contact-name",
        "CLI Tester",
        "--contact-email",
        &format!("cli-{label}-{u}@cli.test"),
        "--edition",
        "pro",
    ]);
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{p} missing in {v}"))
            .to_owned()
    };
    (s("/tenant_id"), s("/install_code/code_id"))
}

/// The value of the `key  value` line of a table.
pub fn row<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).filter(|r| r.starts_with("  ")))
        .unwrap_or_else(|| panic!("no `{key}` row in:\n{out}"))
        .trim()
}

/// A value of the stack's `.dev/env` (`export NAME='value'` lines), e.g. a certificate's
/// path; panics when it is missing.
pub fn dev(name: &str) -> String {
    let text = std::fs::read_to_string(env_file()).expect("reading .dev/env");
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v)
                .replace("'\\''", "'")
        })
        .unwrap_or_else(|| panic!("{name} is not in .dev/env"))
}

/// `algactl <args>` with no settings but those in `args` (neither the environment's
/// nor a `.dev/env`: it runs in a directory without one), whatever its outcome.
pub fn algactl_bare(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_algactl"));
    for name in SETTINGS {
        cmd.env_remove(name);
    }
    cmd.current_dir(std::env::temp_dir())
        .args(args)
        .output()
        .expect("running algactl")
}

/// Standard error of a failed run, which must have exited with `code`.
pub fn failed(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {}; stdout: {}; stderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
