//! The tamper-evident audit log of CONTRACT.md §6.
//!
//! - [`NewRecord`]: the record model (actor, action, tenant, subjects, outcome, request
//!   id, source, details), built valid and secret-free (the [`guard`]), with a stable
//!   [canonical encoding](canonical).
//! - [`append`]: inserts a record **inside the caller's transaction**, unsequenced, so
//!   the change and its record commit together or not at all (fail-closed), and no
//!   lock is shared between business transactions.
//! - [`Sequencer`]: one leader among the gateways chains committed records in batches
//!   (`hash = SHA-256(domain ‖ prev_hash ‖ seq ‖ record)`) and has the head signed
//!   by the issuer's audit key as checkpoints ([`CheckpointSigner`]).
//! - [`migrations`]: the schema; the tables refuse UPDATE, DELETE and TRUNCATE, and
//!   the runtime role may only INSERT and SELECT.
//! - [`list_events`], [`list_checkpoints`]: the queries behind `GET /audit/events`
//!   and `GET /audit/checkpoints`; [`scan_actions`]: the chained records of some
//!   actions after a sequence number, the store's event feed.
//! - [`verify_database`], [`verify_export`]: recompute the chain, check every
//!   checkpoint, and name the first damaged record and the kind of damage.
//! - [`tree`]: the same records as an RFC 6962 Merkle tree (a transparency log):
//!   stored nodes, signed c2sp.org/tlog-checkpoint notes, witnesses' cosignatures,
//!   tiles, inclusion and consistency proofs, `publish` to a directory, and
//!   `verify_from`, the incremental verify from a kept checkpoint. Readers and
//!   witnesses check all of it with `alga_tlog`, which needs none of this crate.
//! - [`reconcile`](mod@reconcile): match the issuer's signing logs against the records
//!   (what was signed and never recorded, what was recorded and never signed).
//!
//! What is absent on purpose: no function here commits a caller's transaction, opens
//! its own connection for `append`, holds a lock inside a business transaction, or
//! re-encodes a stored record before hashing it.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod checkpoint;
mod error;
pub mod export;
pub mod guard;
pub mod reconcile;
pub mod record;
mod schema;
pub mod sequencer;
pub mod store;
pub mod tree;
pub mod verify;

pub use canonical::{GENESIS_PREV_HASH, HASH_DOMAIN, chain_hash};
pub use checkpoint::AuditKeys;
pub use error::AuditError;
pub use export::{ExportFilter, export, read_checkpoints, verify_export};
pub use record::{Action, Actor, NewRecord, Outcome, Record, actions};
pub use schema::{Migration, RUNTIME_ROLE, migrations};
pub use sequencer::{CheckpointSigner, Progress, Sequencer, SequencerConfig};
pub use store::{
    ActionScan, ChainedRecord, EventId, EventQuery, append, append_cached, list_checkpoints,
    list_events, scan_actions,
};
pub use tree::LogCheckpoint;
pub use verify::{DamageKind, Finding, VerifyOptions, VerifyReport, verify_database};
