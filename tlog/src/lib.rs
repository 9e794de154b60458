//! The audit log as a transparency log, from the reader's side: what a customer, an
//! auditor or an independent witness runs to check the log **without trusting the
//! rest of the product**. No database, no HTTP server, no HSM: tiles come through
//! [`TileFetch`] (a directory here; HTTP in the tools that use this crate).
//!
//! - [`merkle`]: entries (SHA-256 of a record's bytes), RFC 6962 leaf hashes, and the
//!   right edge the log's writer appends with ([`TreeEdge`]).
//! - [`path`]: c2sp.org/tlog-tiles paths.
//! - [`tiles`]: entry bundles, tiles authenticated against a checkpoint, inclusion
//!   and consistency proofs computed from tiles, and their checks.
//! - [`note`]: c2sp.org/tlog-checkpoint checkpoints in c2sp.org/signed-note notes,
//!   verified with the log's Ed25519 keys ([`LogKeys`]).
//! - [`cosign`]: c2sp.org/tlog-cosignature v1 (Ed25519): a witness's key and the
//!   check of its cosignatures.
//! - [`proof`]: the proof bundles of the gateway's API, checked offline (a tenant's
//!   records page by page: [`verify_pages`]).
//! - [`witness`]: the witness's rule: accept only consistent growth, persist
//!   atomically, cosign, refuse forks and rollbacks.
//!
//! The hashing, proof and tile arithmetic is the `tlog_tiles` crate's (a port of Go's
//! `golang.org/x/mod/sumdb/tlog`), the note format `signed_note`'s; this crate adds
//! the C2SP tile paths and entry bundles (that `tlog_tiles` 0.2 spells the older sumdb
//! way), cosignatures, the bundles and the witness. ARCHITECTURE.md says why.
#![forbid(unsafe_code)]

pub mod cosign;
mod error;
pub mod merkle;
pub mod note;
pub mod path;
pub mod proof;
pub mod tiles;
pub mod witness;

pub use cosign::{CosignatureVerifier, WitnessKey};
pub use error::TlogError;
pub use merkle::{MAX_TREE_SIZE, Node, TILE_WIDTH, TreeEdge, entry_of, leaf_hash};
pub use note::{Checkpoint, LogKeys, checkpoint_body, log_vkey};
pub use path::TilePath;
pub use proof::{InclusionProof, ProvenRecord, TenantAudit, TenantAuditReport, verify_pages};
pub use tiles::{DirFetch, TileFetch, TileSet};
pub use tlog_tiles::Hash;
pub use witness::{Accepted, Witness, WitnessState};
