//! The one error type of this crate.

use std::path::PathBuf;

/// Why something from a log was refused, or could not be checked.
///
/// Messages name what was wrong and where (a tile path, a sequence number, a size),
/// never secret material; nothing here ever holds a private key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlogError {
    /// Input that is not in the expected format (a tile path, a note, a bundle, a key).
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A signature made by a trusted key does not verify, or no trusted key signed.
    #[error("signature refused: {0}")]
    Signature(String),
    /// A proof that does not prove what it claims.
    #[error("proof refused: {0}")]
    Proof(String),
    /// A record whose bytes do not hash to the entry the log holds for it.
    #[error("record {seq}: {detail}")]
    Record { seq: u64, detail: String },
    /// Two checkpoints of the log that cannot both be true: the log forked or rewrote
    /// its history. Never accepted; keep both notes as evidence.
    #[error(
        "the log forked: the checkpoint of size {new_size} is not consistent with the accepted one of size {old_size}"
    )]
    Fork { old_size: u64, new_size: u64 },
    /// A checkpoint smaller than one already accepted.
    #[error("the log rolled back: offered size {new_size} after accepting size {old_size}")]
    Rollback { old_size: u64, new_size: u64 },
    /// A tile or entry beyond the tree the request is about.
    #[error("beyond the tree: {0}")]
    BeyondTree(String),
    /// A tile could not be fetched, or came back with the wrong length.
    #[error("tile {path}: {detail}")]
    Tile { path: String, detail: String },
    /// A checkpoint for a log this witness does not follow.
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    /// An add-checkpoint request whose old size is not the size this witness last
    /// cosigned (c2sp.org/tlog-witness: 409, the body says which).
    #[error("old size does not match: this witness last cosigned size {cosigned}")]
    Conflict { cosigned: u64 },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TlogError {
    /// The HTTP status a c2sp.org/tlog-witness `add-checkpoint` answers with.
    pub fn witness_status(&self) -> u16 {
        match self {
            TlogError::Malformed { .. } | TlogError::Rollback { .. } | TlogError::BeyondTree(_) => {
                400
            }
            TlogError::Signature(_) => 403,
            TlogError::UnknownLog(_) => 404,
            TlogError::Conflict { .. } => 409,
            TlogError::Proof(_) | TlogError::Fork { .. } | TlogError::Record { .. } => 422,
            TlogError::Tile { .. } | TlogError::Io { .. } => 500,
        }
    }

    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> TlogError {
        TlogError::Malformed {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> TlogError {
        TlogError::Io {
            path: path.into(),
            source,
        }
    }
}
