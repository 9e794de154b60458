//! The library's one error type.
//!
//! Policy (as in crates.io's error module): libraries return typed errors with every
//! variant documented; `anyhow` is only for the `alga-audit` binary, start-up and tests.

/// Everything the audit library can fail with.
///
/// Non-exhaustive: a new way to fail is not a breaking change, so callers keep a
/// catch-all arm (the gateway maps the few it answers differently, the rest to 500).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A record field breaks its charset, length or type rule (the record was not
    /// built; nothing was written).
    #[error("invalid audit record: {field} {reason}")]
    InvalidRecord {
        /// The field, e.g. `actor.role` or `details`.
        field: String,
        /// The rule it breaks.
        reason: String,
    },

    /// The secret guard refused a field that looks like a code, token, PIN or key.
    /// Carries the field's path and the rule, never the value.
    #[error("audit record field {path} refused: {reason}")]
    SecretLike {
        /// The field's path in the record.
        path: String,
        /// The rule that matched.
        reason: &'static str,
    },

    /// A database statement failed. Inside `append`, the caller must roll back: the
    /// action it was recording fails with it (fail-closed).
    #[error("audit database error: {0}")]
    Database(#[from] tokio_postgres::Error),

    /// No connection could be taken from the pool.
    #[error("audit database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),

    /// Stored or exported data is not in the shape this version writes (a hash that
    /// is not 32 bytes, record bytes that are not canonical, a negative sequence…).
    /// Verification reports damage as findings instead; this is for reading paths.
    #[error("audit data is malformed: {0}")]
    Corrupt(String),

    /// The checkpoint signer failed or returned a checkpoint for another head.
    #[error("checkpoint signer: {0}")]
    Signer(String),

    /// An audit public key (a `PublicKeys` JSON document or a PEM SPKI) is unusable.
    #[error("audit key: {0}")]
    Key(String),

    /// An export file could not be read or written.
    #[error("export I/O: {0}")]
    Io(#[from] std::io::Error),

    /// The transparency log refused something: a tile or proof beyond the tree, a
    /// checkpoint that does not verify, a tree that does not match its checkpoint.
    #[error("transparency log: {0}")]
    Log(#[from] alga_tlog::TlogError),

    /// There is no signed checkpoint of the tree yet (or none covering the request).
    #[error("no checkpoint of the audit log covers {0} yet")]
    NoCheckpoint(String),

    /// An export file line is not in the export format.
    #[error("export line {line}: {reason}")]
    Export {
        /// 1-based line in the file.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
}
