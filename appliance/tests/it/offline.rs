//! Tests that need no stack: the offline code check and its exit codes, the Secret
//! manifests' format, atomic writes.

use std::fs;

use alga_appliance::exit;
use alga_appliance::fsio;
use alga_appliance::redeem::write_secrets;
use alga_appliance::secrets::{self, LicenseSeed, PaidSeed};
use alga_protocol::SecretText;
use uuid::Uuid;

use crate::common::*;

/// An address where nothing listens: if the program tried the network, it would
/// exit with "unreachable" (20), not with "malformed" (10).
const DEAD_URL: &str = "https://127.0.0.1:1";

fn redeem_args<'a>(out: &'a str, ca: &'a str) -> Vec<&'a str> {
    vec![
        "redeem",
        "--service-url",
        DEAD_URL,
        "--ca-bundle",
        ca,
        // Any self-signed CA certificate is a usable trust root file.
        "--trust-root",
        ca,
        "--out",
        out,
    ]
}

/// Malformed codes: each message, exit code 10, no network, nothing written (not even
/// the key or the directory: the check runs first).
#[test]
fn malformed_codes_fail_offline_with_their_message() {
    let good = random_wellformed_code();
    let cases: Vec<(String, &str)> = vec![
        ("hello".into(), "has 5"),
        ("".into(), "has 0"),
        (format!("{good}-AAAAA"), "has 35"),
        (
            good.replacen(|c: char| c.is_ascii_alphanumeric(), "U", 1),
            "group 1",
        ),
        (typo_in_group(&good, 1), "group 1"),
        (typo_in_group(&good, 3), "group 3"),
        (typo_in_group(&good, 6), "group 6"),
    ];
    for (code, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let out_s = out.to_str().expect("utf8");
        let r = run(&redeem_args(out_s, "/nonexistent-ca.pem"), Some(&code));
        assert_eq!(r.code, exit::CODE_MALFORMED, "{code:?}: {r:?}");
        assert!(r.stderr.contains(expected), "{code:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("nothing was sent"),
            "says no network call: {}",
            r.stderr
        );
        assert!(!out.exists(), "nothing written for {code:?}");
        if code.len() > 10 {
            assert!(!r.stderr.contains(&code), "the code is never echoed");
        }
    }
}

/// The code is accepted from --code, --code-file and stdin alike (case, spaces and
/// dashes tolerated): a well-formed code gets past the offline check to the network.
#[test]
fn code_sources_and_unreachable_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    // Any valid certificate will do: the connection is refused before TLS.
    fs::write(&ca, test_ca_pem()).expect("write ca");
    let ca_s = ca.to_str().expect("utf8");
    let code = random_wellformed_code();
    let sloppy = code.to_lowercase().replace('-', " ");
    let code_file = dir.path().join("code.txt");
    fs::write(&code_file, format!("{sloppy}\n")).expect("write code");

    let out1 = dir.path().join("o1");
    let out2 = dir.path().join("o2");
    let out3 = dir.path().join("o3");
    let (o1, o2, o3) = (
        out1.to_str().expect("utf8"),
        out2.to_str().expect("utf8"),
        out3.to_str().expect("utf8"),
    );
    let runs = [
        (run(&redeem_args(o1, ca_s), Some(&sloppy)), &out1),
        (
            {
                let mut a = redeem_args(o2, ca_s);
                a.extend(["--code-file", code_file.to_str().expect("utf8")]);
                run(&a, None)
            },
            &out2,
        ),
        (
            {
                let mut a = redeem_args(o3, ca_s);
                a.extend(["--code", &code]);
                run(&a, None)
            },
            &out3,
        ),
    ];
    for (r, out) in runs {
        assert_eq!(r.code, exit::UNREACHABLE, "{r:?}");
        assert!(r.stderr.contains("could not be reached"), "{}", r.stderr);
        assert!(!r.stderr.contains(&code) && !r.stdout.contains(&code));
        // The key was made before the call (a retry must reuse it), mode 0600; no Secret.
        assert_no_secrets(out);
        assert_eq!(mode(&out.join("appliance.key")), 0o600);
    }
}

/// A trust root file that is not one (no certificate, or not a CA) stops the redeem
/// before any network call (exit 41), and nothing is written but the key.
#[test]
fn an_unusable_trust_root_is_a_local_input_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, test_ca_pem()).expect("write ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["x.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("leaf")
        .pem();
    for (name, content, says) in [
        ("empty", String::new(), "holds no certificate"),
        ("leaf", leaf, "not a CA"),
    ] {
        let root = dir.path().join(format!("{name}.pem"));
        fs::write(&root, content).expect("write root");
        let out = dir.path().join(name);
        let r = run(
            &[
                "redeem",
                "--service-url",
                DEAD_URL,
                "--ca-bundle",
                ca.to_str().expect("utf8"),
                "--trust-root",
                root.to_str().expect("utf8"),
                "--out",
                out.to_str().expect("utf8"),
            ],
            Some(&random_wellformed_code()),
        );
        assert_eq!(r.code, exit::LOCAL_INPUT, "{name}: {r:?}");
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
        assert!(
            !r.stderr.contains("could not be reached"),
            "no network: {}",
            r.stderr
        );
        assert_no_secrets(&out);
    }
}

/// The --help text documents the exit codes and the advice about argv.
#[test]
fn help_documents_exit_codes_and_stdin() {
    let r = run(&["redeem", "--help"], None);
    assert_eq!(r.code, 0, "{r:?}");
    for needle in ["Exit codes", "14", "re-issued", "standard input", "visible"] {
        assert!(r.stdout.contains(needle), "{needle}: {}", r.stdout);
    }
}

fn test_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).expect("self-signed").pem()
}

/// The Secret manifests: v1 Opaque Secrets with base64 data, mode 0600, keys exactly
/// as CONTRACT.md §7 names them.
#[test]
fn secret_manifests_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = Uuid::new_v4();
    let paid = LicenseSeed {
        edition: "pro".into(),
        paid: Some(PaidSeed {
            token: SecretText::new("header.payload.sig".into()),
            cert_chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            key_pem: SecretText::new(
                "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".into(),
            ),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
            check_in_url: "https://license.example/check-in".into(),
            trust_root_pem: None,
        }),
    };
    let files = write_secrets(dir.path(), tenant, &paid).expect("write");
    assert_eq!(files.len(), 2);
    let (t, s) = read_secrets(dir.path());
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        vec![secrets::KEY_INITIAL_TENANT_ID]
    );
    assert_eq!(
        t[secrets::KEY_INITIAL_TENANT_ID],
        tenant.to_string().as_bytes()
    );
    let mut keys: Vec<&str> = s.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "APPLIANCE_CERT",
            "APPLIANCE_KEY",
            "CA_CERT",
            "CHECK_IN_URL",
            "EDITION",
            "LICENSE_TOKEN"
        ]
    );
    assert_eq!(s["EDITION"], b"pro");
    assert_eq!(s["LICENSE_TOKEN"], b"header.payload.sig");
    assert_eq!(s["CHECK_IN_URL"], b"https://license.example/check-in");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // The token is only base64 in the file, never in clear.
    let raw = fs::read_to_string(&files[0]).expect("read");
    assert!(!raw.contains("header.payload.sig"));

    let ess = LicenseSeed {
        edition: "essentials".into(),
        paid: None,
    };
    let dir2 = tempfile::tempdir().expect("tempdir");
    write_secrets(dir2.path(), tenant, &ess).expect("write");
    let (_, s) = read_secrets(dir2.path());
    assert_eq!(s.keys().collect::<Vec<_>>(), vec!["EDITION"]);
    assert_eq!(s["EDITION"], b"essentials");
}

/// A failure before the rename leaves no file (and an old file intact).
#[test]
fn atomic_write_failure_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1. Staged but never committed (the process stops between write and rename).
    let target = dir.path().join("appliance-license-seed.yaml");
    let staged = fsio::Staged::write(&target, b"data", fsio::SECRET_MODE).expect("stage");
    assert!(!target.exists(), "invisible before commit");
    drop(staged);
    assert_eq!(files_in(dir.path()), Vec::<String>::new());

    // 2. The rename fails (the target is a non-empty directory): the temporary file
    // is removed and the directory is untouched.
    let blocked = dir.path().join("blocked.yaml");
    fs::create_dir(&blocked).expect("mkdir");
    fs::write(blocked.join("x"), b"keep").expect("write");
    let err = fsio::write_atomic(&blocked, b"new", fsio::SECRET_MODE).expect_err("fails");
    assert_eq!(err.exit_code(), exit::LOCAL_IO);
    assert_eq!(files_in(dir.path()), vec!["blocked.yaml".to_owned()]);

    // 3. The directory does not exist: nothing is created.
    let missing = dir.path().join("no/such/dir/f");
    assert!(fsio::write_atomic(&missing, b"x", fsio::SECRET_MODE).is_err());
    assert!(!dir.path().join("no").exists());

    // 4. A successful write replaces the old content whole.
    fsio::write_atomic(&target, b"old", fsio::SECRET_MODE).expect("write");
    fsio::write_atomic(&target, b"new", fsio::SECRET_MODE).expect("write");
    assert_eq!(fs::read(&target).expect("read"), b"new");
    assert_eq!(mode(&target), 0o600);
}

/// When the second Secret cannot be written, the first is taken back: neither is left.
#[test]
fn secrets_are_written_only_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The tenant Secret's name is taken by a non-empty directory: staging succeeds,
    // the seed is renamed into place, the tenant's rename fails.
    let tenant_path = secrets::manifest_path(dir.path(), secrets::INITIAL_TENANT);
    fs::create_dir(&tenant_path).expect("mkdir");
    fs::write(tenant_path.join("x"), b"x").expect("write");
    let seed = LicenseSeed {
        edition: "essentials".into(),
        paid: None,
    };
    let err = write_secrets(dir.path(), Uuid::new_v4(), &seed).expect_err("fails");
    assert_eq!(err.exit_code(), exit::LOCAL_IO);
    assert!(tenant_path.is_dir(), "the tenant Secret was not written");
    assert_eq!(
        files_in(dir.path()),
        vec![format!("{}.yaml", secrets::INITIAL_TENANT)],
        "neither the seed nor a temporary file is left"
    );
}

/// `redeem --offline-request` with no service anywhere (no URL given, none in the
/// environment): exit 0, the request file 0600 holding the code, the key where the
/// online redeem keeps it, no Secret, and the code in no output at any log level.
#[test]
fn an_offline_redeem_request_needs_no_service_and_keeps_the_code_out_of_logs() {
    let code = random_wellformed_code();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let req = dir.path().join("request.json");
    let r = run_logging(
        &[
            "redeem",
            "--offline-request",
            req.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
            "--hostname",
            "airgapped",
        ],
        Some(&code),
        "trace",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(mode(&req), 0o600);
    let text = fs::read_to_string(&req).expect("request");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["format"], "alga-offline-redeem-request/v1");
    assert_eq!(v["redeem"]["install_code"].as_str(), Some(code.as_str()));
    assert!(out.join(alga_appliance::crypto::KEY_FILE).exists());
    assert_no_secrets_but_pending(&out);
    let pending =
        fs::read_to_string(out.join(alga_appliance::offline::PENDING_REDEEM_FILE)).expect("p");
    for shown in [&r.stdout, &r.stderr, &pending] {
        assert!(!shown.contains(&code), "the code leaked: {shown}");
        assert!(!shown.contains(&code.replace('-', "")), "the code leaked");
    }
    // A typo is still caught first, offline, with nothing written.
    let typo_dir = dir.path().join("typo");
    let r = run(
        &[
            "redeem",
            "--offline-request",
            dir.path().join("typo.json").to_str().expect("utf8"),
            "--out",
            typo_dir.to_str().expect("utf8"),
        ],
        Some(&typo_in_group(&code, 2)),
    );
    assert_eq!(r.code, exit::CODE_MALFORMED, "{r:?}");
    assert!(!dir.path().join("typo.json").exists());
    assert!(files_in(&typo_dir).is_empty());
}

/// Offline responses that cannot be this appliance's: no pending request, another
/// format version, not JSON. Each exits with its code and writes nothing.
#[test]
fn offline_responses_that_are_not_ours_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let req = dir.path().join("request.json");
    let code = random_wellformed_code();
    let r = run(
        &[
            "redeem",
            "--offline-request",
            req.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ],
        Some(&code),
    );
    assert_eq!(r.code, 0, "{r:?}");
    // A self-signed P-256 CA certificate: a usable CA bundle and trust root file.
    let ca = tempfile::NamedTempFile::new().expect("ca");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issued = params
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("cert");
    fs::write(ca.path(), issued.pem()).expect("write ca");
    let ca_s = ca.path().to_str().expect("utf8");
    let before = files_in(&out);
    let resp = dir.path().join("response.json");
    let install = |what: &str, body: &str, want: i32, dir_: &std::path::Path| {
        fs::write(&resp, body).expect("write");
        let r = run(
            &[
                "redeem",
                "--offline-response",
                resp.to_str().expect("utf8"),
                "--out",
                dir_.to_str().expect("utf8"),
                "--ca-bundle",
                ca_s,
                "--trust-root",
                ca_s,
            ],
            None,
        );
        assert_eq!(r.code, want, "{what}: {r:?}");
        r.stderr
    };
    let v2 = r#"{"format":"alga-offline-redeem-response/v2"}"#;
    let e = install("another version", v2, exit::LOCAL_INPUT, &out);
    assert!(e.contains("alga-offline-redeem-response/v1"), "{e}");
    install(
        "not JSON",
        "{\"format\": \"alga-off",
        exit::BAD_RESPONSE,
        &out,
    );
    let foreign = serde_json::json!({
        "format": "alga-offline-redeem-response/v1",
        "nonce": uuid::Uuid::new_v4(),
        "request_sha256": "00",
        "response": {"tenant_id": uuid::Uuid::new_v4(), "edition": "essentials",
            "appliance_id": uuid::Uuid::new_v4(), "license": null, "credential": null,
            "check_in_url": null},
    })
    .to_string();
    install("another request's", &foreign, exit::BAD_RESPONSE, &out);
    assert_eq!(files_in(&out), before, "nothing written");
    // No request was ever made in this directory.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let e = install("no pending request", &foreign, exit::BAD_RESPONSE, &empty);
    assert!(e.contains("no offline request is pending"), "{e}");
    assert!(files_in(&empty).is_empty());
    // The relay refuses a request of another version before any network.
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&req).expect("req")).expect("json");
    v["format"] = "alga-offline-redeem-request/v2".into();
    fs::write(&req, v.to_string()).expect("write");
    let r = run(
        &[
            "relay",
            "--request",
            req.to_str().expect("utf8"),
            "--response",
            resp.to_str().expect("utf8"),
            "--service-url",
            DEAD_URL,
            "--ca-bundle",
            ca_s,
        ],
        None,
    );
    assert_eq!(r.code, exit::LOCAL_INPUT, "{r:?}");
}

/// Only the key and the pending request (no Secret) are in `dir`.
fn assert_no_secrets_but_pending(dir: &std::path::Path) {
    let files = files_in(dir);
    assert_eq!(
        files,
        vec![
            alga_appliance::crypto::KEY_FILE.to_owned(),
            alga_appliance::offline::PENDING_REDEEM_FILE.to_owned()
        ],
        "{files:?}"
    );
}
