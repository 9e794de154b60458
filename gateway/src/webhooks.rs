//! Webhooks: the event feed pushed to the endpoints of `[[webhooks]]`, signed.
//!
//! The gateway that leads the audit sequencer (one at a time; another takes over when
//! it goes) runs two steps in a loop, with all state in Postgres, so a restart or a
//! changeover loses nothing:
//!
//! 1. **Feed**: for each endpoint, under a lock on its cursor row, reads the feed after
//!    the cursor (`flows::events::read_page`) and queues each event with its JSON body
//!    (`db::webhooks`), moving the cursor in the same transaction.
//! 2. **Deliver**: claims each tenant's lowest undelivered event that is due (for a
//!    lease, so a second claimer skips it), POSTs them concurrently, one per tenant,
//!    and marks each delivered (a 2xx answer) or failed with its next attempt after an
//!    exponential back-off (`retry_initial_secs` doubling to `retry_max_secs`, with
//!    jitter). A tenant's later events wait behind its failing one, so they arrive in
//!    order; other tenants' do not wait. Events are retried until delivered: at least
//!    once (a receiver that answered after a crash gets it again; `Alga-Event-Id`
//!    tells it so).
//!
//! Each request carries `Alga-Event-Id: <id>` and `Alga-Signature: t=<unix>,v1=<hex>`,
//! where `v1` is HMAC-SHA256 under the endpoint's secret of `"<t>.<body>"`
//! ([`signature`]). The secret is read from its file at start-up, held in a
//! [`SecretString`] and never logged, stored or put in an error.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::watch;

use crate::App;
use crate::config::{WebhookConfig, read_secret_file};
use crate::db::{self, webhooks as store};
use crate::flows::events::{self, Cursor};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "alga-signature";
/// The event id header.
pub const EVENT_ID_HEADER: &str = "alga-event-id";
/// Pause of the loop when a round found nothing to do.
const IDLE: Duration = Duration::from_millis(250);
/// Pause while this gateway does not lead.
const FOLLOWER: Duration = Duration::from_secs(1);
/// Events copied from the feed per transaction.
const FEED_PAGE: u32 = 500;
/// Tenants delivered to at once (one event each) per endpoint.
const CONCURRENT_TENANTS: i64 = 16;
/// How often the backlog gauges are recounted.
const GAUGE_EVERY: Duration = Duration::from_secs(5);
/// How long delivered events stay in the outbox.
const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 86_400);
/// How often delivered events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Longest error text kept for a failed attempt.
const MAX_ERROR_LEN: usize = 200;

/// A configured endpoint, ready to deliver to.
pub struct Endpoint {
    url: String,
    secret: SecretString,
    http: reqwest::Client,
    retry_initial_secs: f64,
    retry_max_secs: f64,
    /// Claim lease: the request timeout and a margin.
    lease_secs: f64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Builds the endpoints: reads each secret and builds its HTTP client (one TLS
/// provider, ring; roots from `ca`, or the system's). A missing or short secret, or
/// an unreadable CA, is a start-up error.
pub fn from_config(configs: &[WebhookConfig]) -> Result<Vec<Endpoint>, String> {
    configs.iter().map(endpoint).collect()
}

fn endpoint(c: &WebhookConfig) -> Result<Endpoint, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let secret = read_secret_file(&c.secret_file).map_err(|e| format!("webhooks: {e}"))?;
    if secret.expose_secret().len() < WebhookConfig::MIN_SECRET_LEN {
        return Err(format!(
            "webhooks: {}: the secret must be at least {} bytes",
            c.secret_file.display(),
            WebhookConfig::MIN_SECRET_LEN
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| format!("webhooks: {}: {e}", path.display());
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system root rustls cannot use is skipped, as every client does.
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("webhooks: TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(5).min(Duration::from_secs_f64(c.timeout_secs)))
        .timeout(Duration::from_secs_f64(c.timeout_secs))
        // A signed event goes to the configured URL only.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("webhooks: HTTP client: {e}"))?;
    Ok(Endpoint {
        url: c.url.clone(),
        secret,
        http,
        retry_initial_secs: c.retry_initial_secs,
        retry_max_secs: c.retry_max_secs,
        lease_secs: c.timeout_secs + 5.0,
    })
}

/// `t=<t>,v1=<hex of HMAC-SHA256(secret, "<t>.<body>")>`: the `Alga-Signature` value.
pub fn signature(secret: &SecretString, t: i64, body: &[u8]) -> String {
    // Invariant: HMAC accepts a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delay before the next attempt after `failures` failed ones (1 or more):
/// `initial · 2^(failures-1)` capped at `max`, scaled by `jitter` (0 to 1) into its
/// upper half, so endpoints that failed together do not retry together.
pub fn backoff(initial: f64, max: f64, failures: i32, jitter: f64) -> f64 {
    let exp = failures.saturating_sub(1).clamp(0, 30);
    let full = (initial * f64::from(1u32 << exp)).min(max);
    full * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Runs until `stop`: while `leading` says this gateway leads the audit sequencer,
/// feeds the outbox and delivers.
pub async fn run(
    app: Arc<App>,
    endpoints: Vec<Endpoint>,
    leading: watch::Receiver<alga_audit::Progress>,
    mut stop: watch::Receiver<bool>,
) {
    if endpoints.is_empty() {
        return;
    }
    let mut last_gauge: Option<tokio::time::Instant> = None;
    let mut last_prune = tokio::time::Instant::now();
    loop {
        let pause = if leading.borrow().leading {
            let mut busy = false;
            for ep in &endpoints {
                match feed(&app, ep).await {
                    Ok(n) => busy |= n > 0,
                    Err(e) => {
                        tracing::warn!(webhook.url = %ep.url, error = %e, "webhook: cannot read the feed")
                    }
                }
                match deliver(&app, ep).await {
                    Ok(n) => busy |= n > 0,
                    Err(e) => {
                        tracing::warn!(webhook.url = %ep.url, error = %e, "webhook: cannot claim events")
                    }
                }
            }
            if last_gauge.is_none_or(|t| t.elapsed() >= GAUGE_EVERY) {
                last_gauge = Some(tokio::time::Instant::now());
                count_backlog(&app, &endpoints).await;
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                prune(&app).await;
            }
            if busy { Duration::ZERO } else { IDLE }
        } else {
            // The leader reports the backlog.
            app.metrics.webhook_backlog(0, 0);
            last_gauge = None;
            FOLLOWER
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Copies the feed after the endpoint's cursor into its outbox; returns how many
/// sequence numbers the cursor moved.
async fn feed(app: &App, ep: &Endpoint) -> Result<u64, String> {
    let mut conn = app.pool.get().await.map_err(|e| e.to_string())?;
    let tx = conn.transaction().await.map_err(|e| e.to_string())?;
    let after = store::lock_cursor(&tx, &ep.url)
        .await
        .map_err(|e| e.to_string())?;
    let page = match events::read_page(&*tx, Cursor(after), FEED_PAGE).await {
        Ok(p) => p,
        // A database restored from an older backup: nothing to feed until the log
        // passes the cursor again.
        Err(crate::error::Error::FeedBeyondHead) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let bodies: Vec<Vec<u8>> = page
        .events
        .iter()
        .map(crate::api::events::event_body)
        .collect();
    let rows: Vec<store::NewDelivery<'_>> = page
        .events
        .iter()
        .zip(&bodies)
        .map(|(e, body)| store::NewDelivery {
            seq: e.seq,
            tenant_id: e.tenant_id,
            event_type: e.kind.as_str(),
            body,
        })
        .collect();
    store::enqueue(&tx, &ep.url, &rows)
        .await
        .map_err(|e| e.to_string())?;
    if page.next.0 > after {
        store::set_cursor(&tx, &ep.url, page.next.0)
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(page.next.0.saturating_sub(after))
}

/// One round of deliveries; returns how many attempts it made.
async fn deliver(app: &App, ep: &Endpoint) -> Result<usize, String> {
    let due = {
        let conn = app.pool.get().await.map_err(|e| e.to_string())?;
        store::claim_due(&conn, &ep.url, CONCURRENT_TENANTS, ep.lease_secs)
            .await
            .map_err(|e| e.to_string())?
    };
    let n = due.len();
    futures::future::join_all(due.into_iter().map(|d| attempt(app, ep, d))).await;
    Ok(n)
}

/// Sends one event and records the outcome.
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down; retry jitter, not a secret"
)]
async fn attempt(app: &App, ep: &Endpoint, d: store::Due) {
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let result = ep
        .http
        .post(&ep.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, d.seq.to_string())
        .header(SIGNATURE_HEADER, signature(&ep.secret, t, &d.body))
        .body(d.body)
        .send()
        .await;
    let failure = match result {
        Ok(resp) if resp.status().is_success() => None,
        Ok(resp) => Some(format!("answered {}", resp.status().as_u16())),
        Err(e) => Some(describe(&e)),
    };
    let recorded = async {
        let conn = app.pool.get().await.map_err(db::DbError::from)?;
        match &failure {
            None => store::mark_delivered(&conn, &ep.url, d.seq).await,
            Some(error) => {
                let failures = d.attempts.saturating_add(1);
                let delay = backoff(
                    ep.retry_initial_secs,
                    ep.retry_max_secs,
                    failures,
                    rand::thread_rng().r#gen::<f64>(),
                );
                tracing::warn!(webhook.url = %ep.url, event.id = d.seq, tenant.id = ?d.tenant_id,
                    webhook.attempt = failures, retry_in_s = delay, error = %error,
                    "webhook: event not delivered; will retry");
                store::mark_failed(&conn, &ep.url, d.seq, delay, error).await
            }
        }
    }
    .await;
    app.metrics.webhook_delivery(if failure.is_none() {
        "delivered"
    } else {
        "retry"
    });
    if let Err(e) = recorded {
        // The claim's lease ends and the event is sent again: at least once.
        tracing::warn!(webhook.url = %ep.url, event.id = d.seq, error = %e,
            "webhook: could not record a delivery attempt");
    }
}

/// A transport error, short: the kind and the innermost cause (no secret can be in
/// it: the URL holds none, the body is an event).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let mut s = format!("{kind}: {cause}");
    if s.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

async fn count_backlog(app: &App, endpoints: &[Endpoint]) {
    let counted = async {
        let conn = app.pool.get().await.map_err(db::DbError::from)?;
        let (mut events, mut oldest) = (0, 0.0f64);
        for ep in endpoints {
            let (n, age) = store::backlog(&conn, &ep.url).await?;
            events += n;
            oldest = oldest.max(age);
        }
        Ok::<_, db::DbError>((events, oldest))
    }
    .await;
    match counted {
        // Whole seconds are what the gauge shows.
        Ok((events, oldest)) => app.metrics.webhook_backlog(events, oldest as i64),
        Err(e) => tracing::warn!(error = %e, "webhook: cannot count the backlog"),
    }
}

async fn prune(app: &App) {
    let pruned = async {
        let conn = app.pool.get().await.map_err(db::DbError::from)?;
        store::prune_delivered(&conn, KEEP_DELIVERED.as_secs_f64()).await
    }
    .await;
    match pruned {
        Ok(n) if n > 0 => tracing::info!(events = n, "webhook: delivered events pruned"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "webhook: cannot prune delivered events"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's verification snippet is the function the integration tests run.
    #[test]
    fn the_readme_shows_the_tested_verifier() {
        let script = include_str!("../../scripts/webhook_verify.py");
        let readme = include_str!("../../README.md");
        let start = script.find("def verify(").expect("verify in the script");
        let end = script[start..]
            .find("\n\n\n")
            .map_or(script.len(), |n| start + n);
        let function = &script[start..end];
        assert!(function.contains("hmac.compare_digest"), "{function}");
        assert!(
            readme.contains(function),
            "README differs from the script:\n{function}"
        );
    }

    #[test]
    fn signature_is_hmac_sha256_over_t_dot_body() {
        // RFC 4231 is over raw messages; this vector was computed with Python's
        // hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest().
        let s = SecretString::from("whsec_test".to_owned());
        assert_eq!(
            signature(&s, 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        assert!((backoff(5.0, 600.0, 1, 1.0) - 5.0).abs() < 1e-9);
        assert!((backoff(5.0, 600.0, 1, 0.0) - 2.5).abs() < 1e-9);
        assert!((backoff(5.0, 600.0, 3, 1.0) - 20.0).abs() < 1e-9);
        assert!((backoff(5.0, 600.0, 20, 1.0) - 600.0).abs() < 1e-9);
        assert!((backoff(5.0, 600.0, i32::MAX, 0.5) - 450.0).abs() < 1e-9);
        assert!((backoff(5.0, 600.0, 0, 1.0) - 5.0).abs() < 1e-9);
    }
}
