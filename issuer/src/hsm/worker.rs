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
//!
//! Except for a refused PIN. Logging in again is serialized through the pool's
//! [`LoginLatch`]: one worker at a time calls `C_Login`. If the token refuses the PIN
//! (incorrect or locked: someone changed it, the PIN file went stale), the latch closes
//! for good: that failure is logged once, loudly, and from then on no worker calls
//! `C_Login` again and every job answers [`HsmError::LoginStopped`] ("HSM unavailable"
//! to callers, and the issuer's health route says why) until the process is
//! restarted. A real HSM counts each refused login and locks the PIN at its limit;
//! retrying on every job would spend that counter in seconds.
//!
//! The MAC of a code job stays in `Zeroizing` buffers from cryptoki's output to the
//! caller (see [`Output::Mac`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState};
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::error::{HsmError, map_cryptoki};
use super::mechanism::{ecdsa_sign, eddsa_sign, hmac_sha256};
use super::objects::{find_signing_key, kid};
use super::token::Token;
use crate::keyring::KeyKind;

/// One unit of HSM work.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// ECDSA over a digest with a P-256 key.
    Sign {
        kind: KeyKind,
        version: u32,
        digest: [u8; 32],
    },
    /// Ed25519 over a whole message with an Ed25519 key (the log key).
    SignEd25519 {
        kind: KeyKind,
        version: u32,
        message: Vec<u8>,
    },
    /// HMAC-SHA256 with a code key.
    Hmac { version: u32, data: Vec<u8> },
}

/// What a job produced.
pub(crate) enum Output {
    /// A signature: ECDSA raw `r‖s` or Ed25519 `R‖S` (public once released).
    Signature([u8; 64]),
    /// An HMAC-SHA256 output (32 bytes): the secret of an install code, in the buffer
    /// cryptoki filled, wiped when dropped.
    Mac(Zeroizing<Vec<u8>>),
}

/// Where a job's result goes (a oneshot for async callers, a channel for blocking ones).
pub(crate) type Reply = Box<dyn FnOnce(Result<Output, HsmError>) + Send>;

/// The pool's login state, shared by its workers: logins one at a time, and the latch
/// that stops them after the token refused the PIN (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct LoginLatch {
    /// Held while a worker opens a session and calls `C_Login`.
    lock: Mutex<()>,
    /// Set once, with the refusal's return value, when the token refused the PIN.
    stopped: OnceLock<&'static str>,
}

impl LoginLatch {
    /// The refusal (`CKR_PIN_INCORRECT` or `CKR_PIN_LOCKED`) if logins are stopped.
    pub(crate) fn stopped(&self) -> Option<&'static str> {
        self.stopped.get().copied()
    }

    fn error(&self) -> Option<HsmError> {
        self.stopped().map(|rv| HsmError::LoginStopped { rv })
    }
}

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
    pub(crate) latch: Arc<LoginLatch>,
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
    fn execute(&mut self, op: &Op) -> Result<Output, HsmError> {
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

    fn attempt(&mut self, op: &Op) -> Result<Output, HsmError> {
        if let Some(stopped) = self.latch.error() {
            // No job runs on a pool whose login was refused, not even on a session
            // that still looks logged in: the answer stays the same until a restart.
            self.session = None;
            return Err(stopped);
        }
        if self.session.is_none() {
            self.session = Some(self.log_in()?);
            self.handles.clear();
        }
        let Some(session) = self.session.as_ref() else {
            return Err(HsmError::unavailable("no session"));
        };
        let (kind, version) = match op {
            Op::Sign { kind, version, .. } | Op::SignEd25519 { kind, version, .. } => {
                (*kind, *version)
            }
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
            Op::Sign { digest, .. } => Ok(Output::Signature(ecdsa_sign(session, key, digest)?)),
            Op::SignEd25519 { message, .. } => {
                Ok(Output::Signature(eddsa_sign(session, key, message)?))
            }
            Op::Hmac { data, .. } => Ok(Output::Mac(hmac_sha256(session, key, data)?)),
        }
    }

    /// Opens a session and logs in, one worker at a time; latches a refused PIN.
    fn log_in(&mut self) -> Result<Session, HsmError> {
        // A poisoned lock only means another worker panicked while holding it; the
        // latch's own state is a `OnceLock` and stays consistent.
        let _one_at_a_time = self.latch.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stopped) = self.latch.error() {
            return Err(stopped);
        }
        // The token may have come back in another slot (SoftHSM re-slots tokens,
        // a network HSM fails over): find it by label again.
        self.token.refresh_slot()?;
        match self.token.user_session(&self.pin) {
            Ok(session) => Ok(session),
            Err(e @ (HsmError::PinIncorrect | HsmError::PinLocked)) => {
                let rv = if matches!(e, HsmError::PinLocked) {
                    "CKR_PIN_LOCKED"
                } else {
                    "CKR_PIN_INCORRECT"
                };
                if self.latch.stopped.set(rv).is_ok() {
                    tracing::error!(
                        hsm.token = %self.token.label,
                        hsm.worker = self.index,
                        hsm.rv = rv,
                        "HSM LOGIN REFUSED after a lost session: the token refused the PIN. \
                         No further login will be tried (each refused login spends the token's \
                         failed-login counter and can lock the PIN): every HSM operation now \
                         answers 'HSM unavailable' and the issuer's health route reports it. \
                         Fix the PIN file and restart the issuer."
                    );
                }
                Err(HsmError::LoginStopped { rv })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only for values that wipe themselves when dropped.
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}

    /// Issue 18, finding 13: the MAC leaves the worker in the buffer cryptoki filled,
    /// inside `Zeroizing` (it was copied into a plain array and a plain vector).
    #[test]
    fn a_mac_output_wipes_itself() {
        let out = Output::Mac(Zeroizing::new(vec![7u8; 32]));
        if let Output::Mac(buffer) = &out {
            wiped_on_drop(buffer);
        }
        let mac = super::super::mac(out).expect("32 bytes");
        wiped_on_drop(&*mac);
        assert_eq!(**mac, [7u8; 32]);
        assert!(super::super::mac(Output::Mac(Zeroizing::new(vec![1u8; 31]))).is_err());
        assert!(super::super::mac(Output::Signature([0u8; 64])).is_err());
    }
}
