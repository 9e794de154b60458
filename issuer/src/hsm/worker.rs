//! The worker threads: one logged-in session each, jobs over a channel.
//!
//! PKCS#11 calls block and a session must not be shared between threads, so each
//! worker owns one read-write session for its whole life and runs jobs one at a time.
//! Key handles are looked up by label and id once per session and cached.
//!
//! Recovery: when a job fails with [`HsmError::SessionLost`] (session closed or
//! invalid, user logged out, handle invalid, device error, token removed), the worker
//! drops its session and handle cache, opens a new session, logs in, resolves the
//! handles again and retries the job once. A key of the inventory not found in a
//! session that looked logged in counts as a lost login too (the login can be pulled
//! between the check and the search). A second failure goes back to the caller;
//! the next job starts by reopening. The process never needs a restart for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState};
use secrecy::SecretString;

use super::error::{HsmError, map_cryptoki};
use super::objects::{ecdsa_sign, find_signing_key, hmac_sha256, kid};
use super::token::Token;
use crate::keyring::KeyKind;

/// One unit of HSM work.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// ECDSA over a digest with an EC key.
    Sign {
        kind: KeyKind,
        version: u32,
        digest: [u8; 32],
    },
    /// HMAC-SHA256 with a code key.
    Hmac { version: u32, data: Vec<u8> },
}

/// Where a job's result goes (a oneshot for async callers, a channel for blocking ones).
pub(crate) type Reply = Box<dyn FnOnce(Result<Vec<u8>, HsmError>) + Send>;

/// A job on the pool's channel.
pub(crate) struct Job {
    pub(crate) op: Op,
    pub(crate) reply: Reply,
}

/// A worker's state: its session (if open) and the handles resolved on it.
pub(crate) struct Worker {
    pub(crate) index: usize,
    pub(crate) token: Token,
    pub(crate) pin: SecretString,
    pub(crate) session: Option<Session>,
    pub(crate) handles: HashMap<(KeyKind, u32), ObjectHandle>,
    pub(crate) recoveries: Arc<AtomicU64>,
}

impl Worker {
    /// Runs jobs until every sender is gone (the last `Hsm` clone was dropped).
    pub(crate) fn run(mut self, jobs: crossbeam_channel::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let result = self.execute(&job.op);
            (job.reply)(result);
        }
        tracing::debug!(hsm.worker = self.index, "HSM worker stopped");
    }

    /// Runs one job, reopening the session and retrying once if it was lost.
    fn execute(&mut self, op: &Op) -> Result<Vec<u8>, HsmError> {
        match self.attempt(op) {
            Err(e) if e.is_session_lost() => {
                tracing::warn!(hsm.worker = self.index, error = %e, "HSM session lost: reopening and retrying once");
                self.recoveries.fetch_add(1, Ordering::Relaxed);
                // The old session stays open until the new one is logged in: closing
                // the process's last session would log every worker out (again).
                let old = self.session.take();
                self.handles.clear();
                let result = self.attempt(op);
                drop(old);
                result
            }
            other => other,
        }
    }

    fn attempt(&mut self, op: &Op) -> Result<Vec<u8>, HsmError> {
        if self.session.is_none() {
            // The token may have come back in another slot (SoftHSM re-slots tokens,
            // a network HSM fails over): find it by label again.
            self.token.refresh_slot()?;
            self.session = Some(self.token.user_session(&self.pin)?);
            self.handles.clear();
        }
        let Some(session) = self.session.as_ref() else {
            return Err(HsmError::unavailable("no session"));
        };
        let (kind, version) = match op {
            Op::Sign { kind, version, .. } => (*kind, *version),
            Op::Hmac { version, .. } => (KeyKind::Code, *version),
        };
        let key = match self.handles.get(&(kind, version)) {
            Some(key) => *key,
            None => {
                // A logged-out session finds no private objects: that is a lost
                // login (recover), not a missing key.
                let info = session.get_session_info().map_err(map_cryptoki)?;
                if info.session_state() != SessionState::RwUser {
                    return Err(HsmError::SessionLost {
                        function: "C_GetSessionInfo".into(),
                        rv: "the session is not logged in".into(),
                    });
                }
                // `Hsm` submits jobs only for keys of its inventory, all found on the
                // token at open. Not finding one now means the login was pulled between
                // the check above and the search (another session's `C_Login` may even
                // have restored it since): recover and retry like any lost login, never
                // report a missing key (an internal error). A key really gone from the
                // token fails the retry too and reaches the caller as "HSM unavailable".
                let key = match find_signing_key(session, kind, version) {
                    Err(HsmError::UnknownKey { .. }) => {
                        return Err(HsmError::SessionLost {
                            function: "C_FindObjects".into(),
                            rv: format!("{} not found: the login was lost", kid(kind, version)),
                        });
                    }
                    other => other?,
                };
                self.handles.insert((kind, version), key);
                key
            }
        };
        match op {
            Op::Sign { digest, .. } => Ok(ecdsa_sign(session, key, digest)?.to_vec()),
            Op::Hmac { data, .. } => Ok(hmac_sha256(session, key, data)?.to_vec()),
        }
    }
}
