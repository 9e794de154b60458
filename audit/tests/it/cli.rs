//! The `alga-audit` tool as security staff run it: export, verify (database and
//! file, JSON keys and PEM), tail; exit 0 only when intact.

use std::process::Command;

use crate::support::{InsecureTestSigner, RunningSequencer, TestDb, append_n, fast_config};

fn audit(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_alga-audit"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .output()
        .expect("run alga-audit")
}

#[tokio::test]
async fn export_verify_and_tail_from_the_command_line() {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("audit-1");
    let dir = tempfile::tempdir().unwrap();
    let keys_json = dir.path().join("keys.json");
    std::fs::write(&keys_json, signer.public_keys_json()).unwrap();
    let keys_pem = dir.path().join("audit.pem");
    std::fs::write(&keys_pem, signer.public_key_pem()).unwrap();
    let mut seq = RunningSequencer::start(db.pool(2), signer, fast_config(10));
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 25).await;
    seq.wait_for(25, 1).await;
    seq.stop().await;
    let url = db.url();
    let keys = keys_json.to_str().unwrap();

    let out = audit(&url, &["verify", "--audit-keys", keys]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("INTACT") && stdout.contains("records:      25"),
        "{stdout}"
    );

    let export = dir.path().join("export.jsonl");
    let out = audit(&url, &["export", "--output", export.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for k in [keys, keys_pem.to_str().unwrap()] {
        let out = audit(
            &url,
            &[
                "verify",
                "--export",
                export.to_str().unwrap(),
                "--audit-keys",
                k,
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["intact"], true);
    }

    // One changed byte: exit 1, first bad sequence named.
    let text = std::fs::read_to_string(&export).unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        text.replacen("record number 6\"", "record number 7\"", 1),
    )
    .unwrap();
    let out = audit(
        &url,
        &[
            "verify",
            "--export",
            bad.to_str().unwrap(),
            "--audit-keys",
            keys,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("DAMAGED: first bad sequence number 7: modified"),
        "{stdout}"
    );
    let out = audit(
        &url,
        &[
            "verify",
            "--export",
            bad.to_str().unwrap(),
            "--audit-keys",
            keys,
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["intact"].clone(), v["first_bad_seq"].clone()),
        (serde_json::json!(false), serde_json::json!(7))
    );

    // Filters.
    let out = audit(&url, &["export", "--action", "code.redeem"]);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"type\":\"record\""))
        .count();
    assert_eq!(lines, 4);
    let out = audit(&url, &["export", "--since-seq", "20"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let since = dir.path().join("since.jsonl");
    std::fs::write(&since, &stdout).unwrap();
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("\"type\":\"record\""))
            .count(),
        6
    );
    let out = audit(
        &url,
        &[
            "verify",
            "--export",
            since.to_str().unwrap(),
            "--audit-keys",
            keys,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Tail without following.
    let out = audit(&url, &["tail", "-n", "3", "--no-follow"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(stdout.contains("      25  "), "{stdout}");

    // No database, no run: exit 2 with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_alga-audit"))
        .args(["verify", "--audit-keys", keys])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    db.drop_db().await;
}
