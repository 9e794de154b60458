//! The transparency log's commands, run as the built `alga-audit` binary against a
//! real Postgres: `publish`, `verify-proof` (offline), `verify --from-checkpoint`
//! (incremental), and the witness (`init`, `poll` over a directory and over HTTP,
//! `serve` answering c2sp.org/tlog-witness add-checkpoint).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use alga_audit::tree;
use alga_tlog::{CosignatureVerifier, LogKeys, WitnessState};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio_postgres::Client;

use crate::support::{InsecureTestSigner, RunningSequencer, TestDb, append_n, fast_config};
use crate::tree::wait_log_checkpoint;

/// A database URL nothing listens on: commands that must not touch a database
/// still succeed with it set.
const NO_DATABASE: &str = "postgres://alga@127.0.0.1:1/none";

fn audit(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alga-audit"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .output()
        .expect("run alga-audit")
}

/// Standard output and error, for assertion messages.
fn both(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A log of `n` records chained and checkpointed (tree checkpoint of size `n`), and
/// the sequencer still running.
async fn log_of(n: u64) -> (TestDb, InsecureTestSigner, RunningSequencer, Client) {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("audit-1");
    let seq = RunningSequencer::start(db.pool(4), signer.clone(), fast_config(1));
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, n).await;
    wait_log_checkpoint(&rt, n).await;
    (db, signer, seq, rt)
}

async fn grow(rt: &mut Client, from: u64, n: u64) {
    append_n(rt, from, n).await;
    wait_log_checkpoint(rt, from + n).await;
}

/// Changes one byte of record `seq` as a superuser bypassing the triggers.
async fn tamper(db: &TestDb, seq: u64) {
    db.owner()
        .await
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             UPDATE audit_events SET record = overlay(record placing '\\x21'::bytea from 60 for 1) \
             WHERE id = (SELECT event_id FROM audit_chain WHERE seq = {seq}); COMMIT;"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn publish_and_verify_proof_bundles_offline() {
    let (db, signer, seq, rt) = log_of(300).await;
    seq.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("log.vkey");
    std::fs::write(&keys_file, format!("{}\n", signer.log_vkey)).unwrap();
    let keys = s(&keys_file);

    // Publish: the checkpoint and every tile; full tiles kept the second time.
    let site = dir.path().join("site");
    let out = audit(&db.url(), &["publish", "--to", s(&site)]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        stdout(&out).contains("size 300") && stdout(&out).contains("5 tiles written, 0 full"),
        "{}",
        both(&out)
    );
    assert_eq!(
        std::fs::read_to_string(site.join("checkpoint")).unwrap(),
        tree::latest_checkpoint(&rt).await.unwrap().unwrap().note
    );
    let out = audit(&db.url(), &["publish", "--to", s(&site), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(
        (v["written"].as_u64(), v["kept"].as_u64()),
        (Some(3), Some(2))
    );

    // An inclusion bundle and a tenant bundle verify offline, with no database (the
    // URL set points nowhere).
    let seq_no = 42u64;
    let inclusion = tree::inclusion_proof(&rt, seq_no).await.unwrap();
    let inclusion_file = dir.path().join("proof.json");
    std::fs::write(&inclusion_file, serde_json::to_vec(&inclusion).unwrap()).unwrap();
    let out = audit(
        NO_DATABASE,
        &["verify-proof", "--log-keys", keys, s(&inclusion_file)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains("audit.test/log, size 300")
            && stdout(&out).contains("record 42 (leaf 41)")
            && stdout(&out).contains("PROVEN"),
        "{}",
        both(&out)
    );
    // With the record's bytes.
    let bytes: Vec<u8> = rt
        .query_one(
            "SELECT e.record FROM audit_chain c JOIN audit_events e ON e.id = c.event_id WHERE c.seq = 42",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let record_file = dir.path().join("record-42");
    std::fs::write(&record_file, &bytes).unwrap();
    let args = [
        "verify-proof",
        "--log-keys",
        keys,
        s(&inclusion_file),
        "--record",
        s(&record_file),
    ];
    let out = audit(NO_DATABASE, &args);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(stdout(&out).contains("its bytes hash to that entry"));
    let mut other = bytes.clone();
    other[60] ^= 1;
    std::fs::write(&record_file, &other).unwrap();
    let out = audit(NO_DATABASE, &args);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout(&out).contains("REFUSED: record 42"),
        "{}",
        both(&out)
    );

    // sample_record(i) names tenant i % 7: records 1, 8, 15, … (43 of 300).
    let tenant = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000);
    let bundle = tree::tenant_audit(&rt, tenant, 0, 1000).await.unwrap();
    assert_eq!(bundle.records.len(), 43);
    let tenant_file = dir.path().join("tenant.json");
    let tenant_json = serde_json::to_string_pretty(&bundle).unwrap();
    std::fs::write(&tenant_file, &tenant_json).unwrap();
    let out = audit(
        NO_DATABASE,
        &[
            "verify-proof",
            "--log-keys",
            keys,
            s(&tenant_file),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["bundle"].as_str(),
            v["records"].as_u64(),
            v["first_seq"].as_u64(),
            v["last_seq"].as_u64(),
            v["size"].as_u64()
        ),
        (Some("tenant"), Some(43), Some(1), Some(295), Some(300))
    );

    // The same records in pages, as `algactl audit tenant --out` keeps them: a JSON
    // list of the answers in the order fetched.
    let first = tree::tenant_audit(&rt, tenant, 0, 20).await.unwrap();
    let after = first.next_after.expect("a second page");
    let second = tree::tenant_audit(&rt, tenant, after, 1000).await.unwrap();
    let pages_file = dir.path().join("tenant-pages.json");
    std::fs::write(
        &pages_file,
        serde_json::to_vec_pretty(&[&first, &second]).unwrap(),
    )
    .unwrap();
    let out = audit(
        NO_DATABASE,
        &["verify-proof", "--log-keys", keys, s(&pages_file)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains(", 2 pages")
            && stdout(&out).contains("audit.test/log, size 300\n")
            && stdout(&out).contains("43 records (seq 1..=295)"),
        "{}",
        both(&out)
    );
    let out = audit(
        NO_DATABASE,
        &["verify-proof", "--log-keys", keys, s(&pages_file), "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["pages"].as_u64(),
            v["records"].as_u64(),
            v["sizes"].clone()
        ),
        (Some(2), Some(43), serde_json::json!([300]))
    );
    // Pages out of order: refused, naming the first record out of place.
    std::fs::write(&pages_file, serde_json::to_vec(&[&second, &first]).unwrap()).unwrap();
    let out = audit(
        NO_DATABASE,
        &["verify-proof", "--log-keys", keys, s(&pages_file)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout(&out).contains("REFUSED: record 1: page 2 does not follow page 1"),
        "{}",
        both(&out)
    );

    // One byte changed: refused (exit 1), the record named.
    let inclusion_json = serde_json::to_string(&inclusion).unwrap();
    let at = inclusion_json.find("\"entry\":\"").unwrap() + 20;
    let mut changed = inclusion_json.clone().into_bytes();
    changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
    let bad = dir.path().join("bad-proof.json");
    std::fs::write(&bad, &changed).unwrap();
    let out = audit(NO_DATABASE, &["verify-proof", "--log-keys", keys, s(&bad)]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout(&out).contains("REFUSED") && stdout(&out).contains("leaf 41"),
        "{}",
        both(&out)
    );
    let bad_tenant = tenant_json.replacen("record number 14\\\"", "record number 15\\\"", 1);
    assert_ne!(bad_tenant, tenant_json, "the edit applies");
    std::fs::write(&bad, &bad_tenant).unwrap();
    let out = audit(NO_DATABASE, &["verify-proof", "--log-keys", keys, s(&bad)]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout(&out).contains("REFUSED: record 15:"),
        "{}",
        both(&out)
    );

    // Another log key (same origin): refused.
    let stranger = dir.path().join("stranger.vkey");
    std::fs::write(&stranger, InsecureTestSigner::new("x").log_vkey).unwrap();
    for bundle in [&inclusion_file, &tenant_file] {
        let out = audit(
            NO_DATABASE,
            &["verify-proof", "--log-keys", s(&stranger), s(bundle)],
        );
        assert_eq!(out.status.code(), Some(1), "{}", both(&out));
        assert!(
            stdout(&out).contains("REFUSED: signature refused"),
            "{}",
            both(&out)
        );
    }

    // Garbage: refused with a clear message, never a panic.
    for (name, garbage) in [
        ("empty", b"".to_vec()),
        ("text", b"this is not a proof".to_vec()),
        ("object", br#"{"hello": "world"}"#.to_vec()),
        ("array", b"[1, 2, 3]".to_vec()),
        ("empty array", b"[]".to_vec()),
        (
            "extra",
            inclusion_json.replacen('{', r#"{"x":1,"#, 1).into_bytes(),
        ),
        ("wrong types", br#"{"index": "one", "entry": 2}"#.to_vec()),
        ("binary", (0u8..=255).rev().collect()),
    ] {
        let file = dir.path().join(format!("garbage-{name}"));
        std::fs::write(&file, garbage).unwrap();
        let out = audit(NO_DATABASE, &["verify-proof", "--log-keys", keys, s(&file)]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", both(&out));
        assert!(
            stdout(&out).contains("REFUSED: not a") && !stderr(&out).contains("panicked"),
            "{name}: {}",
            both(&out)
        );
    }
    // Could not run: exit 2.
    let out = audit(
        NO_DATABASE,
        &[
            "verify-proof",
            "--log-keys",
            keys,
            "/nonexistent/bundle.json",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("cannot read /nonexistent/bundle.json"));
    let out = audit(
        NO_DATABASE,
        &[
            "verify-proof",
            "--log-keys",
            s(&inclusion_file),
            s(&inclusion_file),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("log keys"), "{}", both(&out));
    db.drop_db().await;
}

#[tokio::test]
async fn verify_incrementally_from_a_kept_checkpoint() {
    let (db, signer, seq, mut rt) = log_of(300).await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("log.vkey");
    std::fs::write(&keys_file, &signer.log_vkey).unwrap();
    let keys = s(&keys_file);
    let kept = dir.path().join("kept.note");
    let note_300 = tree::latest_checkpoint(&rt).await.unwrap().unwrap().note;
    std::fs::write(&kept, &note_300).unwrap();
    grow(&mut rt, 300, 700).await;
    seq.stop().await;
    let url = db.url();
    let verify = |file: &Path, extra: &[&str]| {
        let mut args = vec!["verify", "--from-checkpoint", s(file), "--log-keys", keys];
        args.extend_from_slice(extra);
        audit(&url, &args)
    };

    // 700 new records checked, the first 300 not read.
    let out = verify(&kept, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains("trusted size:    300")
            && stdout(&out).contains("newest size:     1000")
            && stdout(&out)
                .contains("records checked: 700 (seq 301..=1000; records up to 300 were not read)")
            && stdout(&out).contains("result:          CONSISTENT"),
        "{}",
        both(&out)
    );
    let out = verify(&kept, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["intact"].as_bool(),
            v["report"]["records_checked"].as_u64(),
            v["report"]["first_checked"].as_u64(),
            v["report"]["outcome"]["kind"].as_str()
        ),
        (Some(true), Some(700), Some(301), Some("consistent"))
    );

    // --update replaces the kept file with the newest checkpoint; from there, nothing
    // new to read.
    let updated = dir.path().join("updated.note");
    std::fs::copy(&kept, &updated).unwrap();
    let out = verify(&updated, &["--update"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let note_1000 = tree::latest_checkpoint(&rt).await.unwrap().unwrap().note;
    assert_eq!(std::fs::read_to_string(&updated).unwrap(), note_1000);
    assert!(stdout(&out).contains("now holds the checkpoint of size 1000"));
    let out = verify(&updated, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains("records checked: 0 (none new)"),
        "{}",
        both(&out)
    );

    // A fork: a checkpoint of size 300 signed by the same key over another tree.
    let forked = dir.path().join("forked.note");
    std::fs::write(&forked, signer.sign_log_now(300, rand::random()).note).unwrap();
    let out = verify(&forked, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout(&out).contains("FORK") && stdout(&out).contains("not consistent"),
        "{}",
        both(&out)
    );
    assert!(
        stdout(&out).contains("records checked: 0"),
        "{}",
        both(&out)
    );
    // A rollback: the database's newest is older than the trusted checkpoint.
    let ahead = dir.path().join("ahead.note");
    std::fs::write(&ahead, signer.sign_log_now(2000, rand::random()).note).unwrap();
    let out = verify(&ahead, &["--update"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(stdout(&out).contains("ROLLBACK"), "{}", both(&out));
    assert!(!stdout(&out).contains("updated:"));
    // A checkpoint of another log key: cannot run (exit 2).
    let stranger = dir.path().join("stranger.note");
    std::fs::write(
        &stranger,
        InsecureTestSigner::new("x").sign_log_now(300, [0; 32]).note,
    )
    .unwrap();
    let out = verify(&stranger, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("signature refused"), "{}", both(&out));

    // Record 100 is vouched for by the kept checkpoint and not read: changing it goes
    // unseen from there (the full verify is what finds it).
    tamper(&db, 100).await;
    let out = verify(&kept, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    // A record after the trusted size changed: named, exit 1, the file not updated.
    tamper(&db, 650).await;
    let copy = dir.path().join("copy.note");
    std::fs::copy(&kept, &copy).unwrap();
    let out = verify(&copy, &["--update"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout(&out).contains("DAMAGED: record 650 does not match the signed tree"),
        "{}",
        both(&out)
    );
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), note_300);
    let out = verify(&kept, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["first_bad_seq"].as_u64(),
            v["report"]["outcome"]["kind"].as_str()
        ),
        (Some(650), Some("record"))
    );
    // Record 299 shares its tile with records after the trusted size: the tree
    // between the two sizes no longer matches, and the tile is named.
    tamper(&db, 299).await;
    let out = verify(&kept, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stdout(&out).contains("DAMAGED: tile/0/001 (records 257..=512, shared with records up to the trusted size 300)"),
        "{}",
        both(&out)
    );
    db.drop_db().await;
}

/// Kills the server when the test ends, passed or failed.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request: status, content type, body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    http_declared(port, method, path, body, body.len())
}

fn http_declared(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    declared: usize,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Serves `dir` under `/audit/log/` over plain HTTP from a thread, as the gateway
/// serves the published tiles.
fn static_server(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split(' ').nth(1).unwrap_or("");
            let file = path
                .strip_prefix("/audit/log/")
                .filter(|p| !p.contains(".."))
                .and_then(|p| std::fs::read(dir.join(p)).ok());
            let _ = match file {
                Some(bytes) => write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                )
                .and_then(|()| stream.write_all(&bytes)),
                None => write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            };
        }
    });
    port
}

fn state_of(path: &Path) -> WitnessState {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn assert_cosigned(keys: &LogKeys, note: &str, witness: &CosignatureVerifier) {
    let checkpoint = keys.verify(note).expect("the note still verifies");
    assert_eq!(
        checkpoint.cosigned_by(std::slice::from_ref(witness)),
        vec!["witness.test/w1".to_owned()],
        "{note}"
    );
}

#[tokio::test]
async fn a_witness_polls_the_published_log_and_serves_add_checkpoint() {
    let (db, signer, seq, mut rt) = log_of(300).await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("log.vkey");
    std::fs::write(&keys_file, &signer.log_vkey).unwrap();
    let keys = s(&keys_file);
    let log_keys = signer.log_keys();
    let url = db.url();

    // init: a 0600 key file, never overwritten; only the public key printed.
    let key = dir.path().join("witness.key");
    let out = audit(
        NO_DATABASE,
        &[
            "witness",
            "init",
            "--name",
            "witness.test/w1",
            "--key",
            s(&key),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let vkey = stdout(&out).trim().to_owned();
    let verifier = CosignatureVerifier::from_vkey(&vkey).expect("a witness verifier key");
    let skey = std::fs::read_to_string(&key).unwrap();
    assert!(skey.starts_with("PRIVATE+KEY+witness.test/w1+"));
    assert!(!both(&out).contains("PRIVATE"), "{}", both(&out));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = audit(
        NO_DATABASE,
        &[
            "witness",
            "init",
            "--name",
            "witness.test/w2",
            "--key",
            s(&key),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        both(&out)
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), skey);

    // poll a published directory: accepts 300, then nothing new, then 1000.
    let site = dir.path().join("site");
    assert!(audit(&url, &["publish", "--to", s(&site)]).status.success());
    let state = dir.path().join("state.json");
    let cosigs = dir.path().join("cosignatures");
    let poll = |log: &str, state: &Path| {
        audit(
            NO_DATABASE,
            &[
                "witness",
                "poll",
                "--once",
                "--log",
                log,
                "--log-keys",
                keys,
                "--key",
                s(&key),
                "--state",
                s(state),
                "--cosignatures",
                s(&cosigs),
            ],
        )
    };
    let out = poll(s(&site), &state);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).starts_with("accepted size 300 (was 0)\n— witness.test/w1 "),
        "{}",
        both(&out)
    );
    assert_eq!(state_of(&state).size, 300);
    assert_cosigned(
        &log_keys,
        &std::fs::read_to_string(cosigs.join("300")).unwrap(),
        &verifier,
    );
    let out = poll(s(&site), &state);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(stdout(&out), "", "unchanged size: nothing new");
    let state_http = dir.path().join("state-http.json");
    std::fs::copy(&state, &state_http).unwrap();

    grow(&mut rt, 300, 700).await;
    seq.stop().await;
    assert!(audit(&url, &["publish", "--to", s(&site)]).status.success());
    let out = poll(s(&site), &state);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).starts_with("accepted size 1000 (was 300)\n"),
        "{}",
        both(&out)
    );
    assert_eq!(state_of(&state).size, 1000);

    // The same over HTTP, tiles fetched from a server (the state at 300, so the
    // consistency proof is computed from fetched tiles).
    let port = static_server(site.clone());
    let out = poll(&format!("http://127.0.0.1:{port}/audit/log/"), &state_http);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).starts_with("accepted size 1000 (was 300)\n"),
        "{}",
        both(&out)
    );
    assert_eq!(state_of(&state_http), state_of(&state));
    let out = poll("https://127.0.0.1:1/audit/log", &state_http);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("pass --ca FILE"), "{}", both(&out));

    // A fork (the same key signs another tree of size 1000) and a rollback (the
    // checkpoint of size 300 again): reported, exit 1, the state unchanged.
    let before = std::fs::read(&state).unwrap();
    for (name, note, says) in [
        (
            "forked",
            signer.sign_log_now(1000, rand::random()).note,
            "FORK: the log's checkpoint of size 1000 is not consistent with the checkpoint of size 1000",
        ),
        (
            "rolled-back",
            tree::checkpoint_of_size(&rt, 300)
                .await
                .unwrap()
                .unwrap()
                .note,
            "ROLLBACK: the log offers size 300 after this witness accepted size 1000",
        ),
    ] {
        let other = dir.path().join(name);
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("checkpoint"), note).unwrap();
        let out = poll(s(&other), &state);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", both(&out));
        assert!(stderr(&out).contains(says), "{name}: {}", both(&out));
        assert_eq!(std::fs::read(&state).unwrap(), before, "{name}");
    }

    // serve: c2sp.org/tlog-witness add-checkpoint.
    let port = free_port();
    let serve_state = dir.path().join("serve-state.json");
    let server_out = dir.path().join("serve.out");
    let server_err = dir.path().join("serve.err");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_alga-audit"))
            .args([
                "witness",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-keys",
                keys,
                "--key",
                s(&key),
                "--state",
                s(&serve_state),
            ])
            .env("DATABASE_URL", NO_DATABASE)
            .stdout(Stdio::from(std::fs::File::create(&server_out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&server_err).unwrap()))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the witness server did not start: {}",
            std::fs::read_to_string(&server_err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let note_300 = tree::checkpoint_of_size(&rt, 300)
        .await
        .unwrap()
        .unwrap()
        .note;
    let cp_1000 = tree::latest_checkpoint(&rt).await.unwrap().unwrap();
    let add = |body: String| http(port, "POST", "/add-checkpoint", body.as_bytes());

    // Wrong old size: 409 and the size this witness last cosigned.
    assert_eq!(
        add(format!("old 5\n\n{note_300}")),
        (409, "text/x.tlog.size".into(), "0\n".into())
    );
    // The right one: 200 and a cosignature that verifies.
    let (status, content_type, line) = add(format!("old 0\n\n{note_300}"));
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/plain; charset=utf-8"),
        "{line}"
    );
    assert_cosigned(&log_keys, &format!("{note_300}{line}"), &verifier);
    assert_eq!(
        add(format!("old 0\n\n{}", cp_1000.note)),
        (409, "text/x.tlog.size".into(), "300\n".into())
    );
    let proof: String = tree::consistency_proof(&rt, 300, &cp_1000)
        .await
        .unwrap()
        .iter()
        .map(|h| format!("{}\n", STANDARD.encode(h.0)))
        .collect();
    // A proof that does not prove consistency: 422, nothing cosigned.
    let first = if proof.starts_with('A') { "B" } else { "A" };
    let wrong_proof = format!("{first}{}", &proof[1..]);
    assert_eq!(
        add(format!("old 300\n{wrong_proof}\n{}", cp_1000.note)).0,
        422
    );
    assert_eq!(state_of(&serve_state).size, 300);
    let (status, _, line) = add(format!("old 300\n{proof}\n{}", cp_1000.note));
    assert_eq!(status, 200, "{line}");
    assert_cosigned(&log_keys, &format!("{}{line}", cp_1000.note), &verifier);
    assert_eq!(state_of(&serve_state).size, 1000);
    // Another log: 404. Other paths, methods, sizes.
    let other_origin = format!(
        "old 0\n\nother.test/log\n1\n{}\n\n— other.test/log AAAAAA==\n",
        STANDARD.encode([0u8; 32])
    );
    assert_eq!(add(other_origin).0, 404);
    assert_eq!(http(port, "POST", "/checkpoint", b"").0, 404);
    assert_eq!(http(port, "GET", "/add-checkpoint", b"").0, 405);
    assert_eq!(
        http_declared(port, "POST", "/add-checkpoint", b"", 70_000).0,
        413
    );
    drop(server);
    let logged = std::fs::read_to_string(&server_out).unwrap();
    let refused = std::fs::read_to_string(&server_err).unwrap();
    assert!(
        logged.contains("accepted size 300 (was 0)")
            && logged.contains("accepted size 1000 (was 300)"),
        "{logged}"
    );
    assert!(
        refused.contains("refused from 127.0.0.1") && refused.contains(": 409 "),
        "{refused}"
    );
    assert!(!logged.contains("PRIVATE") && !refused.contains("PRIVATE"));

    // A non-loopback address needs --public.
    let out = audit(
        NO_DATABASE,
        &[
            "witness",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--log-keys",
            keys,
            "--key",
            s(&key),
            "--state",
            s(&serve_state),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("--public"), "{}", both(&out));
    db.drop_db().await;
}
