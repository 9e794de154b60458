//! The witness: run by someone other than the log's operator, it keeps the last
//! checkpoint it accepted, accepts a new one only with proof that the old tree is a
//! prefix of the new, and cosigns what it accepted (c2sp.org/tlog-cosignature). A
//! fork or a rollback is refused and reported, never cosigned.
//!
//! Two ways in, one rule:
//! - [`Witness::observe`] (polling): the witness fetches the log's tiles itself,
//!   authenticates them against the new checkpoint, and computes the consistency
//!   proof from them;
//! - [`Witness::add_checkpoint`] (c2sp.org/tlog-witness `add-checkpoint`): the log
//!   pushes the checkpoint with its proof.
//!
//! The state (one small JSON file) is replaced atomically: written beside, flushed to
//! disk, renamed over, the directory flushed. It changes only after every check passed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tlog_tiles::Hash;

use crate::cosign::WitnessKey;
use crate::error::TlogError;
use crate::note::{Checkpoint, LogKeys};
use crate::tiles::{TileFetch, TileSet, check_consistency, consistency_proof};

/// What the witness remembers: the last checkpoint it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessState {
    pub origin: String,
    pub size: u64,
    /// Root hash, standard base64 (as in the checkpoint).
    pub root: String,
    /// The accepted checkpoint note, as received.
    pub checkpoint: String,
}

/// A checkpoint the witness accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub checkpoint: Checkpoint,
    /// The size accepted before (0: the first).
    pub previous_size: u64,
    /// The witness's cosignature line on it.
    pub cosignature: String,
}

/// A witness for one log.
#[derive(Debug)]
pub struct Witness {
    key: WitnessKey,
    log: LogKeys,
    state_path: PathBuf,
    /// Check-then-persist is one step (two add-checkpoint calls must not both pass).
    lock: Mutex<()>,
}

impl Witness {
    pub fn new(key: WitnessKey, log: LogKeys, state_path: PathBuf) -> Witness {
        Witness {
            key,
            log,
            state_path,
            lock: Mutex::new(()),
        }
    }

    pub fn key(&self) -> &WitnessKey {
        &self.key
    }

    /// The last accepted checkpoint, if any.
    pub fn state(&self) -> Result<Option<WitnessState>, TlogError> {
        match std::fs::read(&self.state_path) {
            Ok(bytes) => {
                let state: WitnessState = serde_json::from_slice(&bytes)
                    .map_err(|e| TlogError::malformed("witness state", e.to_string()))?;
                if state.origin != self.log.origin() {
                    return Err(TlogError::malformed(
                        "witness state",
                        format!("it follows {:?}, not {:?}", state.origin, self.log.origin()),
                    ));
                }
                Ok(Some(state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TlogError::io(&self.state_path, e)),
        }
    }

    fn previous(&self) -> Result<(u64, Hash), TlogError> {
        match self.state()? {
            None => Ok((0, tlog_tiles::EMPTY_HASH)),
            Some(s) => {
                let root = STANDARD
                    .decode(&s.root)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        TlogError::malformed("witness state", "root is not 32 bytes of base64")
                    })?;
                Ok((s.size, Hash(root)))
            }
        }
    }

    /// Polling: verifies `note` (a checkpoint fetched from the log), checks it against
    /// the last accepted one with a consistency proof computed from tiles that are
    /// authenticated against `note`, then stores and cosigns it.
    pub fn observe(
        &self,
        note: &str,
        fetch: &dyn TileFetch,
        now: u64,
    ) -> Result<Accepted, TlogError> {
        let checkpoint = self.log.verify(note)?;
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (old_size, old_root) = self.previous()?;
        if checkpoint.size < old_size {
            return Err(TlogError::Rollback {
                old_size,
                new_size: checkpoint.size,
            });
        }
        let proof = if old_size == 0 || old_size == checkpoint.size {
            Vec::new()
        } else {
            let set = TileSet::new();
            set.run(fetch, |set| {
                consistency_proof(set, checkpoint.size, checkpoint.root, old_size)
            })
            .map_err(|e| match e {
                // The new checkpoint's own tiles do not hash to its root: the log
                // serves a tree other than the one it signed.
                TlogError::Proof(_) => TlogError::Fork {
                    old_size,
                    new_size: checkpoint.size,
                },
                other => other,
            })?
        };
        check_consistency(&proof, checkpoint.size, checkpoint.root, old_size, old_root)?;
        self.accept(checkpoint, old_size, now)
    }

    /// c2sp.org/tlog-witness `add-checkpoint`: `body` is the request body. Answers the
    /// response body (the cosignature line) or the refusal, whose
    /// [`witness_status`](TlogError::witness_status) is the HTTP status to send.
    pub fn add_checkpoint(&self, body: &str, now: u64) -> Result<Accepted, TlogError> {
        let bad = |why: &str| TlogError::malformed("add-checkpoint request", why.to_owned());
        let (old_line, rest) = body
            .split_once('\n')
            .ok_or_else(|| bad("no old size line"))?;
        let old_size = old_line
            .strip_prefix("old ")
            .filter(|n| n == &"0" || (!n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("the first line is not `old <size>`"))?;
        // Proof lines never contain an empty line; the note does (before its
        // signatures), so the first empty line ends the proof.
        let (proof_lines, note) = match rest.strip_prefix('\n') {
            Some(note) => ("", note),
            None => rest
                .split_once("\n\n")
                .ok_or_else(|| bad("no empty line before the checkpoint"))?,
        };
        let proof_lines: Vec<&str> = if proof_lines.is_empty() {
            Vec::new()
        } else {
            proof_lines.split('\n').collect()
        };
        if proof_lines.len() > 63 {
            return Err(bad("more than 63 proof lines"));
        }
        let proof = proof_lines
            .iter()
            .map(|l| {
                STANDARD
                    .decode(l)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(Hash)
                    .ok_or_else(|| bad("a proof line is not a base64 hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Unknown origin first (404), before any signature work.
        let origin = note.split('\n').next().unwrap_or_default();
        if origin != self.log.origin() {
            return Err(TlogError::UnknownLog(origin.to_owned()));
        }
        let checkpoint = self.log.verify(note)?;
        if old_size > checkpoint.size {
            return Err(bad("old size is larger than the checkpoint's"));
        }
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (cosigned, cosigned_root) = self.previous()?;
        if old_size != cosigned {
            return Err(TlogError::Conflict { cosigned });
        }
        if checkpoint.size == 0 && checkpoint.root != tlog_tiles::EMPTY_HASH {
            return Err(TlogError::Proof(
                "an empty tree with a root other than the empty hash".into(),
            ));
        }
        if old_size == 0 && !proof.is_empty() {
            return Err(TlogError::Proof(
                "a proof from the empty tree must be empty".into(),
            ));
        }
        check_consistency(
            &proof,
            checkpoint.size,
            checkpoint.root,
            old_size,
            cosigned_root,
        )
        .map_err(|e| match e {
            TlogError::Fork { .. } => TlogError::Proof(format!(
                "the consistency proof from size {old_size} to {} does not verify",
                checkpoint.size
            )),
            other => other,
        })?;
        self.accept(checkpoint, old_size, now)
    }

    fn accept(
        &self,
        checkpoint: Checkpoint,
        previous_size: u64,
        now: u64,
    ) -> Result<Accepted, TlogError> {
        let state = WitnessState {
            origin: checkpoint.origin.clone(),
            size: checkpoint.size,
            root: STANDARD.encode(checkpoint.root.0),
            checkpoint: checkpoint.note.clone(),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| TlogError::malformed("witness state", e.to_string()))?;
        write_atomically(&self.state_path, &json)?;
        let cosignature = self.key.cosign(&checkpoint.body, now.max(1));
        Ok(Accepted {
            checkpoint,
            previous_size,
            cosignature,
        })
    }
}

/// Replaces `path` with `bytes`: a temporary file beside it, flushed, renamed over,
/// then the directory flushed, so a crash leaves the old state or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TlogError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| TlogError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| TlogError::io(&tmp, e))?;
    file.sync_all().map_err(|e| TlogError::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| TlogError::io(path, e))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TlogError::io(&dir, e))?;
    Ok(())
}
