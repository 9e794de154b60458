#![forbid(unsafe_code)]
//! The gateway: the HTTP API of CONTRACT.md §5 on rustls, over Postgres, calling the issuer
//! for every secret operation.
//!
//! # Code map
//! - [`api`]: the only module that knows HTTP and JSON: routes, extractors (identity
//!   per route, JSON bodies with size/content-type/unknown-field checks), the
//!   request-id/metrics/error-body middleware, thin handlers, `/openapi.json`.
//! - [`flows`]: the domain: `register` (tenant + code + link + mail), `redeem`,
//!   `reissue`, `check_in`, `tenants`, `revoke`, `lifecycle` (edition changes,
//!   suspension, appliance health); input parsing in `validate` and `csr`.
//!   Each flow runs one transaction and writes its audit record inside it.
//! - [`db`]: all SQL, one module per table group, generic over
//!   `deadpool_postgres::GenericClient` (pool connection or transaction alike), every
//!   statement prepared once per connection (`prepare_cached`); the schema
//!   migrations (`db::migrate`, run by `alga-gateway migrate`); the pool, warmed to
//!   `database.min_connections` before [`run`] listens and every 30 s after.
//! - [`auth`]: identity from the verified client certificate; [`server`]: the
//!   listeners: the TLS accept loop (ring provider only), the live root set, the
//!   slow-client limits of `[limits]` (per-source connection cap, handshake, header,
//!   body and idle timeouts) and the optional plain-HTTP operations listener
//!   (`[ops]`); [`keys`]: the issuer's public keys cache (JWKS, appliance CA chain;
//!   refreshed for rotation; the CA expiry gauge and warning).
//! - [`issuer_client`]: the issuer's mTLS API, typed errors, latency metrics.
//! - [`audit`]: the one seam to `alga_audit` (append in the caller's transaction,
//!   failure records, the summaries of refusals before a caller was established, the
//!   checkpoint signer for the sequencer, the auditor's pages).
//! - [`webhooks`]: the event feed (`flows::events`, read from the sequenced audit
//!   log) pushed to `[[webhooks]]` endpoints, signed, from an outbox in Postgres, by
//!   the audit sequencer's leader.
//! - [`mail`]: the outbox (first attempt inside the request, then the worker);
//!   ISO links are `alga_delivery::Presigner`'s.
//! - [`ratelimit`], [`metrics`], [`config`], [`error`].
//!
//! # Invariants (what is absent)
//! - No install code, license token, CSR, private key or presigned-URL query is ever
//!   logged, audited or stored: codes are re-derived by the issuer from their stored
//!   binding; the outbox holds a code id and a recipient only.
//! - No key material lives here: the gateway never signs or MACs anything itself.
//! - No SQL outside [`db`] and the audit crate (which [`audit`], the log's read routes,
//!   the event feed and [`db::migrate`] call); the public API's HTTP and JSON only in
//!   [`api`] (the issuer client, webhooks and witnesses are HTTP clients of others);
//!   no schema change at serve time (`migrate` is explicit, as another role).
//! - No state change commits without its audit record (fail-closed), and no
//!   consumption decision uses the gateway's clock: Postgres' `now()` decides.
//! - No identity from a CN, and no role from a certificate of the wrong CA.
//! - No 5xx body carries internal detail: the log has it, keyed by `x-request-id`.
//!
//! `main.rs` is thin: it parses arguments, binds [`Listeners`] and calls [`run_on`]
//! (or [`db::migrate::migrate`]); tests call [`run`] or [`run_on`] on `127.0.0.1:0`.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod flows;
pub mod issuer_client;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod webhooks;
pub mod witnesses;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use alga_policies::Policy;
use alga_protocol::issuer_api::PublicKeys;
use deadpool_postgres::Pool;

use crate::config::{Config, read_secret_file};
use crate::error::{ApiError, Error};
use crate::issuer_client::IssuerClient;
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::ratelimit::RedeemLimits;

/// How often the issuer's public keys are re-fetched (appliance CA rotation).
pub const KEY_REFRESH: Duration = Duration::from_secs(60);
/// How often they are fetched while the gateway has none yet (the issuer was not
/// answering when the gateway started): appliance credentials are refused until then.
pub const KEY_RETRY: Duration = Duration::from_secs(2);
/// How often the sequencer's leader records appliances that went overdue
/// (`appliance.overdue` events appear within this of the moment they are due).
pub const OVERDUE_SWEEP: Duration = Duration::from_secs(60);
/// How old the appliances-by-health gauge may be when `/metrics` is scraped before it
/// is counted again (a count reads every active appliance: at most one per this).
pub const HEALTH_GAUGE_MAX_AGE: Duration = Duration::from_secs(30);

/// The shared state of every request.
#[derive(Debug)]
pub struct App {
    pub pool: Pool,
    pub issuer: IssuerClient,
    pub policy: Arc<Policy>,
    /// Presigns the ISO links of the `[s3]` section.
    pub presigner: Arc<alga_delivery::Presigner>,
    pub limits: RedeemLimits,
    pub metrics: Arc<Metrics>,
    pub keys: KeyCache,
    /// `<public_url>/check-in`.
    pub check_in_url: String,
    /// The mail outbox's sender and delivery rules (first attempts and the worker).
    pub outbox: mail::Outbox,
    /// Counts of refusals before a caller was established, recorded as summaries.
    pub refusals: audit::Refusals,
    /// Failed requests' audit records the database did not take yet (a failover).
    pub pending_failures: audit::PendingFailures,
    /// The code key version of the stored binding a redeem looked up last: an unknown
    /// `code_id` is verified under it (`flows::redeem`), so its HMAC is made with a key
    /// the token holds, as a stored binding's is.
    pub decoy_key_version: std::sync::atomic::AtomicU32,
    /// Full transparency-log tiles already served (immutable).
    pub tiles: api::log::TileCache,
}

impl App {
    /// The issuer's public keys: the cached copy, or a fetch now if there is none yet.
    #[allow(
        clippy::disallowed_methods,
        reason = "reads the clock at an edge and passes `now` down"
    )]
    pub async fn public_keys(&self) -> Result<Arc<PublicKeys>, ApiError> {
        if let Some(k) = self.keys.get() {
            return Ok(k);
        }
        match self.issuer.public_keys().await {
            Ok(k) => {
                self.keys
                    .load(k, &self.metrics, time::OffsetDateTime::now_utc());
                self.keys.get().ok_or(ApiError::ServiceUnavailable)
            }
            Err(e) => {
                tracing::warn!(error = %e, "issuer keys unavailable");
                Err(ApiError::ServiceUnavailable)
            }
        }
    }
}

/// Connection settings of the runtime role.
pub fn runtime_pg_config(config: &Config) -> Result<tokio_postgres::Config, Error> {
    let pw = config
        .database
        .password_file
        .as_deref()
        .map(read_secret_file)
        .transpose()?;
    db::pg_config(&config.database.url, pw.as_ref())
}

/// Connection settings of the migration role.
pub fn migrator_pg_config(config: &Config) -> Result<tokio_postgres::Config, Error> {
    let pw = config
        .database
        .migrator_password_file
        .as_deref()
        .map(read_secret_file)
        .transpose()?;
    db::pg_config(&config.database.migrator_url, pw.as_ref())
}

/// Runs `tick` every `period` (the first time one period from now) until `stop`
/// resolves; a tick that has started runs to its end.
fn every<F, T>(period: Duration, stop: impl Future<Output = ()> + Send + 'static, mut tick: F)
where
    F: FnMut() -> T + Send + 'static,
    T: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(period) => tick().await,
            }
        }
    });
}

/// Fetches the issuer's public keys; when the appliance CA chain changed, rebuilds the
/// TLS roots that appliance certificates are checked against. (Loading them also
/// updates the CA expiry gauge and warns when the CA expires soon: [`KeyCache::load`].)
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
async fn refresh_issuer_keys(
    app: &App,
    live_tls: &server::LiveTls,
    tls_material: &server::TlsMaterial,
) {
    match app.issuer.public_keys().await {
        Ok(k) => {
            let cas = keys::appliance_cas(&k);
            if app
                .keys
                .load(k, &app.metrics, time::OffsetDateTime::now_utc())
            {
                match tls_material.server_config(&cas) {
                    Ok((cfg, trust)) => {
                        live_tls.replace(cfg, trust);
                        tracing::info!(
                            cas = cas.len(),
                            "appliance CA chain changed: TLS roots rebuilt"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot rebuild the TLS configuration")
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "issuer keys refresh failed; keeping the last good copy")
        }
    }
}

/// Tops the pool up to `min` connections; a database that cannot be reached is logged
/// and left to the next attempt (requests open connections on demand meanwhile).
async fn keep_pool_warm(pool: &deadpool_postgres::Pool, min: usize, when: &'static str) {
    if min == 0 {
        return;
    }
    match db::warm(pool, min).await {
        Ok(held) => tracing::debug!(
            db.pool.held = held,
            db.pool.size = pool.status().size,
            when,
            "database pool warm"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            db.pool.size = pool.status().size,
            when,
            "cannot open the pool's minimum connections; opening them on demand"
        ),
    }
}

/// The sockets the gateway serves on, bound by the caller (so a test can bind
/// `127.0.0.1:0` and know the ports).
#[derive(Debug)]
pub struct Listeners {
    /// The HTTPS API (`[listen] address`).
    pub api: std::net::TcpListener,
    /// The operations listener (`[ops] address`): plain HTTP serving the routes of
    /// [`api::Surface::Ops`]. When present, the API port serves [`api::Surface::Api`]
    /// (no `/readyz`, no `/metrics`); when absent, everything.
    pub ops: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds what `config` names: `[listen] address` and, when `[ops]` is present,
    /// `[ops] address`.
    #[allow(
        clippy::disallowed_types,
        reason = "start-up glue called only by the binary's main"
    )]
    pub fn bind(config: &Config) -> Result<Listeners, Error> {
        let api = std::net::TcpListener::bind(config.listen.address)
            .map_err(Error::listener(format!("bind {}", config.listen.address)))?;
        Ok(Listeners {
            api,
            ops: bind_ops(config)?,
        })
    }
}

/// Binds `[ops] address` when the section is present.
fn bind_ops(config: &Config) -> Result<Option<std::net::TcpListener>, Error> {
    config
        .ops
        .as_ref()
        .map(|o| {
            std::net::TcpListener::bind(o.address).map_err(Error::listener(format!(
                "bind the ops listener {}",
                o.address
            )))
        })
        .transpose()
}

/// `listener` for the async runtime.
fn into_tokio(
    listener: std::net::TcpListener,
    what: &'static str,
) -> Result<tokio::net::TcpListener, Error> {
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map_err(Error::listener(what))
}

/// Serves the API on `listener` until `shutdown` resolves; when the config has an
/// `[ops]` section, binds its address and serves the operations routes there (see
/// [`Listeners`]; its bound address is logged as `ops listening`).
pub async fn run(
    config: Config,
    policy: Policy,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let ops = bind_ops(&config)?;
    run_on(config, policy, Listeners { api: listener, ops }, shutdown).await
}

/// Serves the API on `listeners.api`, and the operations routes on `listeners.ops`
/// when given, until `shutdown` resolves. (`[listen] address` and `[ops] address`
/// are not read here: the listeners are.)
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
pub async fn run_on(
    config: Config,
    policy: Policy,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Listeners { api: listener, ops } = listeners;
    let policy = Arc::new(policy);
    let metrics = Arc::new(Metrics::new());
    let pool = db::pool(runtime_pg_config(&config)?, config.database.pool_size)?;
    let min_connections = config.database.min_connections();
    keep_pool_warm(&pool, min_connections, "before listening").await;
    let issuer = IssuerClient::new(
        &config.issuer.url,
        &config.issuer.ca,
        &config.issuer.certificate,
        &config.issuer.private_key,
        metrics.clone(),
    )
    .map_err(Error::IssuerClient)?;
    let presigner =
        alga_delivery::Presigner::from_config(&config.s3).map_err(|source| Error::Delivery {
            section: "s3",
            source,
        })?;
    let tls_material = server::TlsMaterial::load(&config.tls)?;
    let mailer = alga_delivery::Mailer::new(&config.smtp).map_err(|source| Error::Delivery {
        section: "smtp",
        source,
    })?;
    let witness_targets = witnesses::from_config(&config.witnesses).map_err(Error::Config)?;
    let witness_roots = witnesses::roots(&config.witnesses).map_err(Error::Config)?;
    let webhook_endpoints = webhooks::from_config(&config.webhooks).map_err(Error::Config)?;

    let keys = KeyCache::default();
    let appliance_cas = match issuer.public_keys().await {
        Ok(k) => {
            let cas = keys::appliance_cas(&k);
            keys.load(k, &metrics, time::OffsetDateTime::now_utc());
            cas
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot fetch the issuer's keys: appliance credentials are refused until it answers");
            Vec::new()
        }
    };
    let (server_cfg, trust) = tls_material.server_config(&appliance_cas)?;
    let live_tls = Arc::new(server::LiveTls::new(server_cfg, trust));

    let app = Arc::new(App {
        pool: pool.clone(),
        issuer: issuer.clone(),
        policy: policy.clone(),
        presigner: Arc::new(presigner),
        limits: RedeemLimits::new(&policy.rate_limits),
        metrics,
        keys,
        check_in_url: format!(
            "{}{}",
            config.listen.public_url.trim_end_matches('/'),
            alga_protocol::api::CHECK_IN
        ),
        outbox: mail::Outbox::new(mailer, config.mail.clone()),
        refusals: audit::Refusals::default(),
        pending_failures: audit::PendingFailures::default(),
        decoy_key_version: std::sync::atomic::AtomicU32::new(1),
        tiles: api::log::TileCache::default(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Issuer keys: refresh, and rebuild the TLS roots when the appliance CA chain
    // changes; every KEY_RETRY while there are none yet (an issuer that came up after
    // this gateway, as at a host's boot), every KEY_REFRESH after.
    tokio::spawn({
        let (app, live_tls, stop) = (app.clone(), live_tls.clone(), stopped(stop_rx.clone()));
        async move {
            tokio::pin!(stop);
            loop {
                let period = if app.keys.get().is_some() {
                    KEY_REFRESH
                } else {
                    KEY_RETRY
                };
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(period) => {
                        refresh_issuer_keys(&app, &live_tls, &tls_material).await;
                    }
                }
            }
        }
    });
    // The pool's floor: re-open what Postgres dropped (a restart, an idle timeout).
    every(db::POOL_KEEPER_INTERVAL, stopped(stop_rx.clone()), {
        let pool = pool.clone();
        move || {
            let pool = pool.clone();
            async move { keep_pool_warm(&pool, min_connections, "keeper").await }
        }
    });
    // Rate-limit memory sweep.
    every(Duration::from_secs(60), stopped(stop_rx.clone()), {
        let app = app.clone();
        move || {
            app.limits.sweep();
            std::future::ready(())
        }
    });
    // Refusal summaries of the windows that have ended.
    every(audit::REFUSAL_FLUSH_INTERVAL, stopped(stop_rx.clone()), {
        let app = app.clone();
        move || {
            let app = app.clone();
            async move { app.refusals.flush_closed(&app.pool).await }
        }
    });
    // Failed requests' records the database did not take when they failed.
    every(
        audit::PENDING_FAILURES_FLUSH_INTERVAL,
        stopped(stop_rx.clone()),
        {
            let app = app.clone();
            move || {
                let app = app.clone();
                async move { app.pending_failures.flush(&app.pool).await }
            }
        },
    );
    // The mail outbox worker.
    let mail_worker = tokio::spawn(mail::run(app.clone(), stopped(stop_rx.clone())));
    // The audit sequencer: chains committed records and has the issuer sign checkpoints.
    let sequencer = alga_audit::Sequencer::new(
        pool.clone(),
        audit::IssuerCheckpointSigner(issuer.clone()),
        alga_audit::SequencerConfig::new(policy.audit),
    );
    let sequencer_progress = sequencer.progress();
    let sequencer = sequencer.spawn(stopped(stop_rx.clone()));
    // Witnesses: the sequencer's leader collects their cosignatures.
    let witness_collector = tokio::spawn(witnesses::run(
        app.clone(),
        witness_targets,
        witness_roots,
        sequencer_progress.clone(),
        stop_rx.clone(),
    ));
    // Webhooks: the sequencer's leader feeds the outbox and delivers.
    let webhook_worker = tokio::spawn(webhooks::run(
        app.clone(),
        webhook_endpoints,
        sequencer_progress.clone(),
        stop_rx.clone(),
    ));
    // Overdue appliances: the sequencer's leader records them (the sweep is safe on
    // several gateways at once; one is enough).
    every(OVERDUE_SWEEP, stopped(stop_rx.clone()), {
        let (app, leading) = (app.clone(), sequencer_progress);
        move || {
            let (app, lead) = (app.clone(), leading.borrow().leading);
            async move {
                if lead {
                    let now = time::OffsetDateTime::now_utc();
                    if let Err(e) = flows::events::sweep_overdue(&app.pool, &app.policy, now).await
                    {
                        tracing::warn!(error = %e, "overdue sweep failed; next round retries");
                    }
                }
            }
        }
    });

    let listener = into_tokio(listener, "the API listener")?;
    let ops = ops.map(|l| into_tokio(l, "the ops listener")).transpose()?;
    // Both listeners stop on `shutdown`.
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = halt_tx.send(true);
    });
    let ops_server = match ops {
        Some(l) => {
            let address = l
                .local_addr()
                .map_err(Error::listener("the ops listener"))?;
            tracing::info!(%address, "ops listening");
            Some(tokio::spawn(server::serve_ops(
                l,
                api::router(app.clone(), api::Surface::Ops),
                config.limits.clone(),
                app.metrics.clone(),
                stopped(halt_rx.clone()),
            )))
        }
        None => None,
    };
    let api_edge = server::ApiEdge {
        tls: live_tls,
        policy,
        // The API port drops /readyz and /metrics when the ops listener serves them.
        router: api::router(
            app.clone(),
            if ops_server.is_some() {
                api::Surface::Api
            } else {
                api::Surface::Everything
            },
        ),
        limits: config.limits.clone(),
        metrics: app.metrics.clone(),
    };
    let address = listener
        .local_addr()
        .map_err(Error::listener("the API listener"))?;
    tracing::info!(%address, "gateway listening");
    server::serve(listener, api_edge, stopped(halt_rx)).await;
    if let Some(t) = ops_server {
        let _ = t.await;
    }
    // Before the sequencer stops, so that it still chains them.
    app.refusals.flush_all(&app.pool).await;
    app.pending_failures.flush_all(&app.pool).await;
    let _ = stop_tx.send(true);
    let _ = sequencer.await;
    let _ = witness_collector.await;
    let _ = webhook_worker.await;
    let _ = mail_worker.await;
    Ok(())
}
