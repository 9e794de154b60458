//! Every command `algactl --help` lists, and the success paths not covered by
//! `stack.rs`: registration, and the auditor's export, verify and tail of the audit log.

use std::path::Path;

use serde_json::Value;

use crate::support::{algactl, algactl_bare, failed, json, ok, refused, row, s};

/// The command tree: each command with its subcommands (clap adds `help` to each).
const COMMANDS: [(&str, &[&str]); 4] = [
    ("", &["register", "reissue", "tenant", "appliance", "audit"]),
    ("tenant", &["show", "set-edition", "suspend", "resume"]),
    ("appliance", &["list", "revoke"]),
    ("audit", &["export", "verify", "tail", "tenant", "log-keys"]),
];

/// Every long option of every command. No secret is ever an argument: identities are
/// files (`--cert`, `--key`) or the environment, and the install code never reaches the
/// store's tool; a new option is checked against this list.
const OPTIONS: [&str; 31] = [
    "--add-appliance",
    "--after",
    "--all",
    "--as",
    "--ca-bundle",
    "--cert",
    "--company",
    "--contact-email",
    "--contact-name",
    "--edition",
    "--env-file",
    "--export",
    "--follow",
    "--gateway-url",
    "--health",
    "--help",
    "--idempotency-key",
    "--json",
    "--key",
    "--limit",
    "--log-keys",
    "--out",
    "--output",
    "--reason",
    "--replaces-appliance-id",
    "--tenant-id",
    "--version",
    // The short forms, as listed: `-V, --version`, `-f, --follow`, `-h, --help`,
    // `-o, --output`.
    "-V",
    "-f",
    "-h",
    "-o",
];

/// The first words of the lines of `section` ("Commands:", "Options:") of a help text.
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

fn help(path: &[&str]) -> String {
    let mut args = path.to_vec();
    args.push("--help");
    let out = algactl_bare(&args);
    assert!(out.status.success(), "algactl {args:?}: {out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8 help");
    let usage = format!("Usage: algactl {}", path.join(" "));
    assert!(
        text.contains(usage.trim_end()),
        "algactl {args:?} does not show its usage:\n{text}"
    );
    text
}

/// The options a help text lists: the leading `-x, --name <VALUE>` of its option lines.
fn options(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| {
            l.split_whitespace()
                .take_while(|w| w.starts_with('-') || w.starts_with('<') || w.starts_with('['))
                .filter(|w| w.starts_with('-'))
                .map(|w| w.trim_end_matches(',').to_owned())
        })
        .collect()
}

#[test]
fn every_command_has_help_and_no_option_takes_a_secret() {
    let mut all = Vec::new();
    for (parent, children) in COMMANDS {
        let path: Vec<&str> = parent.split_whitespace().collect();
        let text = help(&path);
        all.extend(options(&text));
        let mut expected = children.to_vec();
        expected.push("help");
        assert_eq!(
            section(&text, "Commands:"),
            expected,
            "the subcommands of `algactl {parent}`"
        );
        // The packaging command stays hidden.
        assert!(!text.contains("generate"), "{text}");
        for child in children.iter() {
            // The groups' own subcommands are the next rows of COMMANDS.
            if path.is_empty() && COMMANDS.iter().any(|(p, _)| p == child) {
                continue;
            }
            let mut leaf = path.clone();
            leaf.push(child);
            all.extend(options(&help(&leaf)));
        }
    }
    all.sort();
    all.dedup();
    assert_eq!(
        all, OPTIONS,
        "algactl's options changed: does a new one take a secret?"
    );

    let out = algactl_bare(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("algactl "),
        "{out:?}"
    );
}

#[test]
fn register_prints_the_registration_without_the_code() {
    let u = format!(
        "{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let email = format!("cli-register-{u}@cli.test");
    let key = format!("cli-register-{u}");
    let args = [
        "register",
        "--company",
        "algactl register test",
        "--contact-name",
        "CLI Tester",
        "--contact-email",
        &email,
        "--edition",
        "pro",
        "--idempotency-key",
        &key,
    ];
    let table = ok(&args);
    let tenant = row(&table, "tenant").to_owned();
    assert_eq!(tenant.len(), 36, "{table}");
    assert_eq!(row(&table, "edition"), "pro");
    let code_id = row(&table, "code id").to_owned();
    assert_eq!(code_id.len(), 10, "{table}");
    assert!(row(&table, "code expires").contains('T') || row(&table, "code expires").contains(' '));
    assert!(!row(&table, "download link expires").is_empty());
    assert!(matches!(row(&table, "email"), "sent" | "queued"), "{table}");
    assert!(
        table.contains(
            "The install code went to the contact's mailbox only; it is never shown here."
        ),
        "{table}"
    );

    // The same idempotency key: the first answer again, as JSON, and no second tenant.
    let v: Value = json(&args);
    assert_eq!(v["tenant_id"], Value::from(tenant.as_str()), "{v}");
    assert_eq!(
        v["install_code"]["code_id"],
        Value::from(code_id.as_str()),
        "{v}"
    );
    let fields: Vec<&str> = v["install_code"]
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["code_id", "expires_at"], "only the code's id: {v}");
}

/// `audit export` to a file: (records, head, checkpoints) from its summary line.
fn export(file: &Path, after: u64) -> (u64, u64, u64) {
    let out = algactl(&[
        "audit",
        "export",
        "--after",
        &after.to_string(),
        "-o",
        s(file),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // `exported N records (head H) and C checkpoints`
    let words: Vec<&str> = stderr
        .lines()
        .find(|l| l.starts_with("exported "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"))
        .split_whitespace()
        .collect();
    let num = |i: usize| -> u64 {
        words[i]
            .trim_end_matches(')')
            .parse()
            .unwrap_or_else(|_| panic!("word {i} of {words:?}"))
    };
    (num(1), num(4), num(6))
}

#[test]
fn the_auditor_exports_verifies_and_tails_the_log() {
    let (tenant, _) = crate::support::register("audit");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("audit.jsonl");
    let (records, head, checkpoints) = export(&file, 0);
    assert!(
        records >= 2 && head >= records && checkpoints >= 1,
        "{records} {head} {checkpoints}"
    );
    let text = std::fs::read_to_string(&file).expect("the export");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(lines[0]["type"], "header", "{}", lines[0]);
    assert_eq!(lines[0]["format"], "alga-license/audit-export/v1");
    assert_eq!(lines[0]["head_seq"], Value::from(head));
    assert_eq!(lines.len() as u64, 1 + checkpoints + records);

    // Verified offline: intact, every record.
    let table = ok(&["audit", "verify", "--export", s(&file)]);
    assert_eq!(row(&table, "verdict"), "INTACT", "{table}");
    assert_eq!(row(&table, "records"), records.to_string(), "{table}");
    // And online (a fresh export of a log that grew meanwhile): intact too.
    let report: Value = json(&["audit", "verify"]);
    assert!(
        report["records"].as_u64().is_some_and(|n| n >= records),
        "{report}"
    );

    // One record changed in the file: damaged, exit 1, the first damage named.
    let mut changed = false;
    let tampered: Vec<String> = lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if !changed && l["record"]["tenant_id"] == tenant.as_str() {
                l["record"]["action"] = Value::from("tenant.suspend");
                changed = true;
            }
            l.to_string()
        })
        .collect();
    assert!(changed, "no record of {tenant} in the export");
    let bad = dir.path().join("tampered.jsonl");
    std::fs::write(&bad, tampered.join("\n") + "\n").expect("write");
    let out = algactl(&["audit", "verify", "--export", s(&bad)]);
    let stderr = failed(&out, 1);
    assert!(
        stderr.contains("the audit log is damaged: first "),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(row(&stdout, "verdict"), "DAMAGED", "{stdout}");

    // Tail from two records before the head: those records, one line each.
    let tail = ok(&["audit", "tail", "--after", &(head - 2).to_string()]);
    let seqs: Vec<u64> = tail
        .lines()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("a tail line without its seq: {l:?}"))
        })
        .collect();
    assert!(seqs.len() >= 2, "{tail}");
    assert_eq!(&seqs[..2], [head - 1, head], "{tail}");
    let tail = ok(&[
        "--json",
        "audit",
        "tail",
        "--after",
        &(head - 1).to_string(),
    ]);
    let first: Value = serde_json::from_str(tail.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["seq"], Value::from(head), "{first}");

    // The log's verifier keys, as JSON: the origin and at least the active key.
    let keys: Value = json(&["audit", "log-keys"]);
    let origin = keys["origin"].as_str().expect("origin");
    assert!(
        keys["vkeys"].as_array().is_some_and(|v| !v.is_empty()
            && v.iter()
                .all(|k| k.as_str().is_some_and(|k| k.starts_with(origin)))),
        "{keys}"
    );

    // The auditor's routes refuse the store's certificate.
    refused(
        &[
            "--cert",
            &crate::support::dev("ALGA_STORE_CERT"),
            "--key",
            &crate::support::dev("ALGA_STORE_KEY"),
            "audit",
            "export",
        ],
        403,
        "forbidden",
    );
}
