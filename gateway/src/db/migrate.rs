//! `alga-gateway migrate`: the schema, as the migration role, explicitly (never at
//! serve time). The audit crate's migrations run first, then the gateway's; each runs
//! once, in its own transaction, recorded by name in `schema_migrations`. Concurrent
//! runs serialize on an advisory lock, so running it twice is harmless.

use tokio_postgres::NoTls;

use super::DbError;

/// One migration: a stable name and its SQL (run with `batch_execute`). The audit
/// crate's type, which both crates' migrations use.
pub use alga_audit::Migration;

/// The gateway's own migrations, oldest first. A shipped one never changes.
pub const GATEWAY_MIGRATIONS: &[Migration] = &[
    Migration {
        name: "gateway/0001_registry",
        sql: include_str!("../../migrations/0001_registry.sql"),
    },
    Migration {
        name: "gateway/0002_outbox_code_index",
        sql: include_str!("../../migrations/0002_outbox_code_index.sql"),
    },
    Migration {
        name: "gateway/0003_license_lifecycle",
        sql: include_str!("../../migrations/0003_license_lifecycle.sql"),
    },
    Migration {
        name: "gateway/0004_credential_rotation",
        sql: include_str!("../../migrations/0004_credential_rotation.sql"),
    },
    Migration {
        name: "gateway/0005_events_webhooks",
        sql: include_str!("../../migrations/0005_events_webhooks.sql"),
    },
    Migration {
        name: "gateway/0006_relayed_check_in",
        sql: include_str!("../../migrations/0006_relayed_check_in.sql"),
    },
];

/// Advisory lock key serializing migration runs ("algamigr").
const MIGRATION_LOCK: i64 = 0x616c_6761_6d69_6772;

/// Every migration in the order they run: audit's, then the gateway's.
pub fn all() -> Vec<Migration> {
    [alga_audit::migrations(), GATEWAY_MIGRATIONS].concat()
}

/// Applies what has not run yet; returns the names applied now.
pub async fn migrate(cfg: &tokio_postgres::Config) -> Result<Vec<String>, DbError> {
    let (mut client, conn) = cfg.connect(NoTls).await?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "migration connection ended with an error");
        }
    });
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (\
                   name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let mut applied = Vec::new();
        for m in all() {
            let tx = client.transaction().await?;
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE name = $1",
                    &[&m.name],
                )
                .await?
                .is_some();
            if done {
                tx.rollback().await?;
                continue;
            }
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (name) VALUES ($1)",
                &[&m.name],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(migration = m.name, "applied");
            applied.push(m.name.to_owned());
        }
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        Ok(applied)
    }
    .await;
    drop(client);
    let _ = conn_task.await;
    result
}
