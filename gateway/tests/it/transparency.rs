//! The audit log as a transparency log over the gateway's API: the checkpoint, the
//! log's keys, tiles and proofs for anyone, a tenant's proven records for the store
//! and auditors; bad paths and requests beyond the tree refused; and a witness,
//! served here by the reader's crate itself, whose cosignature the gateway collects
//! and serves with the checkpoint.

use std::sync::Arc;
use std::time::Duration;

use alga_tlog::tiles::{check_inclusion, decode_entries};
use alga_tlog::{
    CosignatureVerifier, Hash, InclusionProof, LogKeys, TenantAudit, TilePath, Witness, WitnessKey,
    leaf_hash,
};
use axum::routing::post;
use reqwest::StatusCode;

use crate::harness::{Opts, Stack, assert_error, send};

async fn get_bytes(
    c: &reqwest::Client,
    url: String,
) -> (StatusCode, Vec<u8>, reqwest::header::HeaderMap) {
    let resp = c.get(url).send().await.expect("request");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, resp.bytes().await.expect("body").to_vec(), headers)
}

/// Waits for a checkpoint covering every chained record; returns its note.
async fn checkpoint_covering_all(s: &Stack, keys: &LogKeys) -> alga_tlog::Checkpoint {
    let chained = s.wait_until_all_chained().await as u64;
    for _ in 0..300 {
        let (st, body, _) = get_bytes(&s.anon(), s.url("/audit/log/checkpoint")).await;
        if st == StatusCode::OK {
            let cp = keys
                .verify(&String::from_utf8(body).expect("utf-8"))
                .expect("checkpoint verifies");
            if cp.size >= chained {
                return cp;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no checkpoint covering {chained} records within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyone_can_check_the_log_and_a_tenant_its_own_records() {
    let s = Stack::start_with(Opts {
        checkpoint_every: Some(1),
        ..Opts::default()
    })
    .await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, _, _) = s.redeem(&code).await;
    assert_eq!(st, StatusCode::OK);
    s.register("Other Co", "other@co.test", "pro").await;

    let (st, vkey, headers) = get_bytes(&s.anon(), s.url("/audit/log/vkey")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    let keys = LogKeys::parse(&String::from_utf8(vkey).expect("utf-8")).expect("vkeys");
    assert_eq!(
        keys.origin(),
        "alga-license.test/audit-log",
        "the harness issuer's origin"
    );
    let cp = checkpoint_covering_all(&s, &keys).await;

    // Every record's proof, fetched anonymously, verifies; so do the entry bundles
    // against the level-0 tile.
    for seq in 1..=cp.size {
        let (st, body, _) = send(s.anon().get(s.url(&format!("/audit/log/proof/{seq}")))).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let proof: InclusionProof = serde_json::from_value(body).expect("bundle");
        proof
            .verify(&keys)
            .unwrap_or_else(|e| panic!("record {seq}: {e}"));
    }
    let width = (cp.size % 256) as usize;
    let (st, entries, headers) = get_bytes(
        &s.anon(),
        s.url(&format!("/audit/log/tile/entries/000.p/{width}")),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let (_, hashes, _) = get_bytes(
        &s.anon(),
        s.url(&format!("/audit/log/tile/0/000.p/{width}")),
    )
    .await;
    let entries = decode_entries(&entries).expect("bundle");
    assert_eq!(entries.len(), width);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(leaf_hash(e).0, hashes[i * 32..(i + 1) * 32], "leaf {i}");
    }
    // One record's proof checks against the hashes from the tile, too.
    let (_, body, _) = send(s.anon().get(s.url("/audit/log/proof/1"))).await;
    let p: InclusionProof = serde_json::from_value(body).expect("bundle");
    let path: Vec<Hash> = p
        .proof
        .iter()
        .map(|h| Hash(hex::decode(h).expect("hex").try_into().expect("32")))
        .collect();
    check_inclusion(
        &path,
        cp.size,
        cp.root,
        0,
        Hash(hashes[..32].try_into().expect("32")),
    )
    .expect("tile leaf proven");

    // Bad input: clear refusals.
    for (path, status, code) in [
        ("/audit/log/tile/0/1".to_owned(), 400, "validation_failed"),
        ("/audit/log/tile/9/000".to_owned(), 400, "validation_failed"),
        (
            "/audit/log/tile/0/000.p/0".to_owned(),
            400,
            "validation_failed",
        ),
        ("/audit/log/tile/0/000".to_owned(), 404, "not_found"),
        (
            format!("/audit/log/tile/0/000.p/{}", width + 1),
            404,
            "not_found",
        ),
        (
            "/audit/log/tile/entries/x999/000".to_owned(),
            404,
            "not_found",
        ),
        ("/audit/log/proof/0".to_owned(), 400, "validation_failed"),
        ("/audit/log/proof/abc".to_owned(), 400, "validation_failed"),
        ("/audit/log/proof/99999999".to_owned(), 404, "not_found"),
        (
            "/audit/log/proof/18446744073709551615".to_owned(),
            404,
            "not_found",
        ),
    ] {
        let (st, e, _) = send(s.anon().get(s.url(&path))).await;
        assert_error(st, &e, status, code);
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {e}"
        );
    }

    // The tenant's own records, each proven, for the store and auditors only.
    let url = s.url(&format!("/tenants/{tenant}/audit"));
    let (st, body, _) = send(s.store().get(&url)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let bundle: TenantAudit = serde_json::from_value(body).expect("bundle");
    let report = bundle.verify(&keys).expect("tenant bundle verifies");
    assert!(
        report.records >= 3,
        "register, mail, redeem: {}",
        report.records
    );
    let (st, _, _) = send(s.auditor().get(format!("{url}?limit=1"))).await;
    assert_eq!(st, StatusCode::OK);
    let (st, e, _) = send(s.anon().get(&url)).await;
    assert_error(st, &e, 401, "unauthenticated");
    let (st, e, _) = send(
        s.store()
            .get(s.url(&format!("/tenants/{}/audit", uuid::Uuid::new_v4()))),
    )
    .await;
    assert_error(st, &e, 404, "tenant_not_found");
    let (st, e, _) = send(s.store().get(format!("{url}?limit=0"))).await;
    assert_error(st, &e, 400, "validation_failed");
    s.stop().await;
}

/// A witness on loopback: c2sp.org/tlog-witness `add-checkpoint` over the reader's
/// crate, as `alga-audit witness serve` runs it.
async fn start_witness(
    keys: LogKeys,
    dir: &std::path::Path,
) -> (String, String, tokio::task::JoinHandle<()>) {
    let witness = Arc::new(Witness::new(
        WitnessKey::generate("witness.test/gateway-it").expect("key"),
        keys,
        dir.join("state.json"),
    ));
    let vkey = witness.key().vkey();
    let w = witness.clone();
    let app = axum::Router::new().route(
        "/add-checkpoint",
        post(move |body: String| {
            let w = w.clone();
            async move {
                let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
                match w.add_checkpoint(&body, now) {
                    Ok(a) => (StatusCode::OK, a.cosignature),
                    Err(alga_tlog::TlogError::Conflict { cosigned }) => {
                        (StatusCode::CONFLICT, format!("{cosigned}\n"))
                    }
                    Err(e) => (
                        StatusCode::from_u16(e.witness_status()).expect("status"),
                        e.to_string(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, vkey, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_collects_a_witness_cosignature_and_serves_it() {
    // The log's keys come from the issuer the stack starts; a first stack run tells
    // them, so the witness can be configured before the gateway starts.
    let probe = Stack::start().await;
    let (_, vkey, _) = get_bytes(&probe.anon(), probe.url("/audit/log/vkey")).await;
    probe.stop().await;
    let keys = LogKeys::parse(&String::from_utf8(vkey).expect("utf-8")).expect("vkeys");
    let dir = tempfile::tempdir().expect("tmp");
    let (url, witness_vkey, task) = start_witness(keys.clone(), dir.path()).await;
    let s = Stack::start_with(Opts {
        checkpoint_every: Some(1),
        extra: Some(format!(
            "[[witnesses]]\nurl = \"{url}\"\nvkey = \"{witness_vkey}\"\n"
        )),
        ..Opts::default()
    })
    .await;
    s.register("Witnessed Co", "w@co.test", "pro").await;
    let verifier = CosignatureVerifier::from_vkey(&witness_vkey).expect("vkey");
    let mut cosigned = None;
    for _ in 0..300 {
        let (_, body, _) = get_bytes(&s.anon(), s.url("/audit/log/checkpoint")).await;
        let note = String::from_utf8(body).expect("utf-8");
        if let Ok(cp) = keys.verify(&note)
            && cp.cosigned_by(std::slice::from_ref(&verifier))
                == ["witness.test/gateway-it".to_owned()]
        {
            cosigned = Some(cp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cp = cosigned.expect("a cosigned checkpoint within 30 s");
    let metrics = s
        .anon()
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("alga_gateway_witness_submissions_total{outcome=\"cosigned\"}")),
        "{metrics}"
    );
    let state: alga_tlog::WitnessState =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).expect("state"))
            .expect("json");
    assert!(
        state.size >= cp.size,
        "the witness holds what it cosigned, or newer"
    );
    // A tile of the tree the witness accepted reads back.
    let width = (cp.size % 256) as usize;
    if width > 0 {
        let (st, _, _) = get_bytes(
            &s.anon(),
            s.url(&format!("/audit/log/{}", TilePath::hashes(0, 0, width))),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    s.stop().await;
    task.abort();
}
