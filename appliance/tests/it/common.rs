//! Shared helpers: the stack's environment, running the binary, reading Secrets.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use alga_appliance::secrets::{self, SecretManifest};
use alga_protocol::{CodeId, InstallCode};
use base64::Engine as _;

/// A variable of the local stack: from the environment, else from `.dev/env`.
pub fn stack_var(name: &str) -> String {
    if let Ok(v) = std::env::var(name)
        && !v.is_empty()
    {
        return v;
    }
    let env_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dev/env");
    if let Ok(text) = std::fs::read_to_string(&env_file) {
        for line in text.lines() {
            let line = line.trim().trim_start_matches("export ").trim();
            if let Some((k, v)) = line.split_once('=')
                && k == name
            {
                return v.trim_matches('\'').trim_matches('"').to_owned();
            }
        }
    }
    panic!(
        "{name} is not set and not in {}: start the local stack with `make up` (or export .dev/env)",
        env_file.display()
    );
}

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `alga-appliance args…` with `stdin`, logging at `info`.
pub fn run(args: &[&str], stdin: Option<&str>) -> Run {
    run_logging(args, stdin, "info")
}

/// Runs `alga-appliance args…` with `stdin` and `ALGA_LOG=log`.
pub fn run_logging(args: &[&str], stdin: Option<&str>, log: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alga-appliance"));
    cmd.args(args)
        .env_remove("ALGA_LICENSE_SERVICE_URL")
        .env_remove("ALGA_APPLIANCE_DATABASE_URL")
        .env("ALGA_LOG", log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn alga-appliance");
    {
        let mut i = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait alga-appliance");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A well-formed code (valid check symbols) that no service ever issued.
pub fn random_wellformed_code() -> String {
    let mut mac = [0u8; 32];
    mac[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    mac[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    InstallCode::from_mac(CodeId::random(), &mac)
        .expose_formatted()
        .to_string()
}

/// Changes one character of group `group` (1-based) of a formatted code.
pub fn typo_in_group(code: &str, group: usize) -> String {
    let mut chars: Vec<char> = code.chars().collect();
    let i = (group - 1) * 6 + 2; // 5 symbols and a dash per group
    chars[i] = if chars[i] == '7' { '8' } else { '7' };
    chars.into_iter().collect()
}

/// Names of the files in `dir` (empty when it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

/// Asserts no Secret manifest (nor a temporary file) is in `dir`.
pub fn assert_no_secrets(dir: &Path) {
    let files = files_in(dir);
    assert!(
        files.iter().all(|f| f == alga_appliance::crypto::KEY_FILE),
        "only the key may be left in {}: {files:?}",
        dir.display()
    );
}

/// Parses a Secret manifest file with a YAML parser independent of the library's
/// reader: checks the envelope and returns the base64-decoded data.
pub fn parse_secret_file(path: &Path, name: &str) -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    let v: serde_yaml::Value = serde_yaml::from_str(&text).expect("manifest is YAML");
    assert_eq!(v["apiVersion"].as_str(), Some("v1"));
    assert_eq!(v["kind"].as_str(), Some("Secret"));
    assert_eq!(v["type"].as_str(), Some("Opaque"));
    assert_eq!(v["metadata"]["name"].as_str(), Some(name));
    let data = v["data"].as_mapping().expect("data is a mapping");
    data.iter()
        .map(|(k, v)| {
            let k = k.as_str().expect("key is text").to_owned();
            let b = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().expect("value is text"))
                .expect("value is base64");
            (k, b)
        })
        .collect()
}

/// Reads both Secrets of an output directory.
pub fn read_secrets(dir: &Path) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>) {
    let t = parse_secret_file(
        &secrets::manifest_path(dir, secrets::INITIAL_TENANT),
        secrets::INITIAL_TENANT,
    );
    let s = parse_secret_file(
        &secrets::manifest_path(dir, secrets::LICENSE_SEED),
        secrets::LICENSE_SEED,
    );
    // The library's own reader agrees.
    SecretManifest::load(dir, secrets::LICENSE_SEED)
        .expect("library reads the seed")
        .expect("seed exists");
    (t, s)
}

/// The mode bits of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}
