//! All SQL of the gateway. One module per table group; every function takes a generic
//! client so it runs on a pooled connection or inside a transaction alike. Nothing
//! outside `db` writes SQL (the audit append is the audit crate's SQL, called through
//! `crate::audit`).
//!
//! Every statement goes through `prepare_cached`: parsed and planned once per pooled
//! connection, then one round trip (Bind/Execute) per call instead of two
//! (Parse/Describe, then Bind/Execute). Named prepared statements need a session: with
//! PgBouncer, use session pooling (or 1.21+ with `max_prepared_statements`).
#![allow(
    clippy::disallowed_methods,
    reason = "gateway::db is the one module that holds the gateway's SQL"
)]

pub mod appliances;
pub mod codes;
pub mod idempotency;
pub mod migrate;
pub mod outbox;
pub mod relayed;
pub mod tenants;
pub mod webhooks;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::NoTls;

pub use deadpool_postgres::GenericClient;

/// Why a database call failed: the library's [`Error`](crate::error::Error), under the
/// name the table modules use (its database variants: `Pool`, `Query`, `Corrupt`,
/// `DbConfig`).
pub type DbError = crate::error::Error;

/// Connection settings from a URL without password plus a password.
pub fn pg_config(
    url: &str,
    password: Option<&SecretString>,
) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::DbConfig(e.to_string()))?;
    if let Some(pw) = password {
        cfg.password(pw.expose_secret().as_bytes());
    }
    cfg.application_name("alga-gateway");
    cfg.connect_timeout(Duration::from_secs(5));
    // No statement (lock waits included) holds a request longer than this.
    cfg.options("-c statement_timeout=15000");
    Ok(cfg)
}

/// The runtime pool. Postgres runs on loopback or a private network (no TLS to it here).
pub fn pool(cfg: tokio_postgres::Config, size: usize) -> Result<Pool, DbError> {
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_secs(10)),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        })
        .build()
        .map_err(|e| DbError::DbConfig(e.to_string()))
}

/// How often the gateway tops its pool back up to `database.min_connections`.
pub const POOL_KEEPER_INTERVAL: Duration = Duration::from_secs(30);

/// Brings the pool to at least `min` open connections and returns how many it held.
///
/// Checks out `min` connections at once without waiting for any in use (those count as
/// open), then gives them back: a checkout takes an idle connection if there is one
/// (a connection Postgres closed is dropped and replaced, as on every checkout) and
/// opens a new one otherwise. The first error other than "all in use" is returned
/// after every checkout has ended; the connections that did open stay in the pool.
pub async fn warm(pool: &Pool, min: usize) -> Result<usize, DbError> {
    let no_wait = Timeouts {
        wait: Some(Duration::ZERO),
        ..pool.timeouts()
    };
    let checkouts = (0..min.min(pool.status().max_size)).map(|_| pool.timeout_get(&no_wait));
    let mut held = 0;
    let mut first_error = None;
    for checkout in futures::future::join_all(checkouts).await {
        match checkout {
            Ok(_) => held += 1,
            Err(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(held),
    }
}

/// Whether the database answers a trivial query on a pooled connection (`/readyz`).
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let conn = pool.get().await?;
    conn.simple_query("SELECT 1").await?;
    Ok(())
}

/// The statements the flows run on their hot paths, by name, exactly as they run:
/// `tests/it/explain.rs` checks that each uses an index on a seeded registry. A
/// statement that reads a table in full by design (the appliances-by-health count of
/// the metrics gauge) is not one of them.
pub fn explain_targets() -> Vec<(&'static str, &'static str)> {
    [
        codes::HOT,
        tenants::HOT,
        appliances::HOT,
        idempotency::HOT,
        outbox::HOT,
    ]
    .concat()
}

/// A stored enum value the schema constrains; anything else is corruption.
pub(crate) fn corrupt(what: &str, value: &str) -> DbError {
    DbError::Corrupt(format!("{what}: {value:?}"))
}
