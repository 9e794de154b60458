//! The audit schema, shipped as migrations the gateway's `migrate` command runs.
//!
//! They run once each, in order, as the **migration role** (the tables' owner), before
//! the gateway's own migrations; the runtime role `alga_gateway` must exist. Each is a
//! multi-statement script for `batch_execute`. The gateway records which names ran;
//! a name is never reused and a shipped script never changes.

/// The runtime role the migrations grant INSERT and SELECT to.
pub const RUNTIME_ROLE: &str = "alga_gateway";

/// One migration: a stable name and its SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Unique across the whole product, e.g. `audit/0001_audit_log`.
    pub name: &'static str,
    /// Statements to run with `batch_execute`, in one transaction.
    pub sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "audit/0001_audit_log",
        sql: include_str!("../migrations/0001_audit_log.sql"),
    },
    Migration {
        name: "audit/0002_audit_tree",
        sql: include_str!("../migrations/0002_audit_tree.sql"),
    },
];

/// The audit migrations, oldest first.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}
