//! Collecting witnesses' cosignatures (c2sp.org/tlog-witness `add-checkpoint`).
//!
//! The gateway that leads the audit sequencer submits each new checkpoint of the
//! audit log's tree to every configured witness, with a consistency proof from the
//! size that witness last cosigned, checks the cosignature it gets back against the
//! witness's configured key, and stores it; `GET /audit/log/checkpoint` then serves
//! the checkpoint with it. A witness that answers 409 says which size it last
//! cosigned (it may have been polling on its own): the submission is redone once
//! from there. A witness that refuses (a fork, a bad proof) is logged as an error:
//! that is what witnesses are for.

use std::sync::Arc;
use std::time::Duration;

use alga_audit::tree;
use alga_tlog::CosignatureVerifier;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::watch;

use crate::App;
use crate::config::WitnessConfig;

/// How often the leader looks for a checkpoint a witness has not cosigned.
const ROUND: Duration = Duration::from_secs(5);
/// Longest answer read from a witness (cosignature lines or a size).
const MAX_ANSWER: usize = 16 * 1024;

/// One configured witness, ready to call.
#[derive(Debug)]
struct Witness {
    name: String,
    submit_url: String,
    verifier: CosignatureVerifier,
}

/// Builds the witnesses from the configuration (a bad key is a start-up error).
pub fn from_config(configs: &[WitnessConfig]) -> Result<Vec<WitnessTarget>, String> {
    configs
        .iter()
        .map(|c| {
            let verifier = CosignatureVerifier::from_vkey(&c.vkey)
                .map_err(|e| format!("witnesses: {}: {e}", c.url))?;
            Ok(WitnessTarget(Witness {
                name: verifier.name().to_owned(),
                submit_url: format!("{}/add-checkpoint", c.url.trim_end_matches('/')),
                verifier,
            }))
        })
        .collect()
}

/// The TLS roots for the witnesses' `ca` files.
pub fn roots(configs: &[WitnessConfig]) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for path in configs.iter().filter_map(|c| c.ca.as_ref()) {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("witnesses: {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("witnesses: {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("witnesses: {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

/// A witness the gateway submits checkpoints to.
#[derive(Debug)]
pub struct WitnessTarget(Witness);

/// Runs until `stop`: while `leading` says this gateway leads the sequencer, submits
/// the newest checkpoint to every witness that has not cosigned it.
pub async fn run(
    app: Arc<App>,
    witnesses: Vec<WitnessTarget>,
    roots: rustls::RootCertStore,
    leading: watch::Receiver<alga_audit::Progress>,
    mut stop: watch::Receiver<bool>,
) {
    if witnesses.is_empty() {
        return;
    }
    // Witnesses are called over plain HTTP or HTTPS with the roots of `ca` files;
    // what they return is checked against their keys either way.
    let tls = match rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => {
            tracing::error!(error = %e, "witnesses: no TLS configuration; no cosignatures will be collected");
            return;
        }
    };
    let http = match reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "witnesses: cannot build the HTTP client; no cosignatures will be collected");
            return;
        }
    };
    loop {
        if leading.borrow().leading {
            for w in &witnesses {
                if let Err(e) = submit(&app, &http, &w.0).await {
                    tracing::warn!(witness = %w.0.name, error = %e, "witness: checkpoint not cosigned");
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(ROUND) => {}
        }
    }
}

async fn submit(app: &App, http: &reqwest::Client, w: &Witness) -> Result<(), String> {
    let conn = app.pool.get().await.map_err(|e| e.to_string())?;
    let Some(cp) = tree::latest_checkpoint(&**conn)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let mut old = tree::cosigned_size(&**conn, &w.name)
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..2 {
        if old >= cp.size {
            return Ok(());
        }
        let proof = tree::consistency_proof(&**conn, old, &cp)
            .await
            .map_err(|e| e.to_string())?;
        let mut body = format!("old {old}\n");
        for h in &proof {
            body.push_str(&STANDARD.encode(h.0));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&cp.note);
        let resp = http
            .post(&w.submit_url)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                app.metrics.witness_submission("unreachable");
                format!("unreachable: {e}")
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ANSWER)]).into_owned();
        match status {
            200 => {
                let line = cosignature_from(w, &cp.note, &answer).inspect_err(|_| {
                    app.metrics.witness_submission("error");
                })?;
                app.metrics.witness_submission("cosigned");
                if tree::insert_cosignature(&**conn, cp.size, &w.name, &line)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    tracing::info!(witness = %w.name, tree.size = cp.size, "witness cosigned the audit log checkpoint");
                }
                return Ok(());
            }
            409 => {
                app.metrics.witness_submission("conflict");
                let theirs: u64 = answer
                    .trim_end()
                    .parse()
                    .map_err(|_| "409 without a size".to_owned())?;
                if theirs > cp.size {
                    tracing::error!(witness = %w.name, witness.size = theirs, tree.size = cp.size,
                        "witness cosigned a larger tree than this log's newest checkpoint: a fork or a rollback of this database");
                    return Err("the witness is ahead of this log".into());
                }
                old = theirs;
            }
            422 | 403 => {
                app.metrics.witness_submission("refused");
                tracing::error!(witness = %w.name, status, tree.size = cp.size, answer = %answer.trim(),
                    "witness refused the audit log checkpoint");
                return Err(format!("refused with {status}"));
            }
            other => {
                app.metrics.witness_submission("error");
                return Err(format!("answered {other}: {}", answer.trim()));
            }
        }
    }
    Ok(())
}

/// The witness's verified cosignature line on `note`, from its answer.
fn cosignature_from(w: &Witness, note: &str, answer: &str) -> Result<String, String> {
    let prefix = format!("— {} ", w.name);
    answer
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .find(|line| w.verifier.check(note, line).is_ok())
        .map(|line| format!("{line}\n"))
        .ok_or_else(|| "no valid cosignature by the configured key in the answer".to_owned())
}
