//! The HSM: the only module in the code base that speaks PKCS#11.
//!
//! - [`Hsm`] is the serving key store: it checks at open that the token holds the
//!   complete key set (it never creates keys), caches the public key metadata and CA
//!   certificates, and runs every signature and MAC on a pool of worker threads, each
//!   with its own logged-in session, so HSM work never blocks the async runtime. A
//!   lost session is reopened and the job retried once (see `worker`); a PIN the token
//!   refuses on such a re-login stops all further logins until a restart
//!   ([`Hsm::login_stopped`], reported by [`KeyOps::health`]).
//! - [`admin`] holds the key ceremonies (`token init`, `keys init|list|rotate|certify|trust-root`).
//! - [`CaSigner`] is the rcgen external signer of the appliance CA, over any
//!   [`KeyOps`].
//! - [`error`] maps every PKCS#11 return value, in one place, to [`HsmError`], the
//!   one error type of the issuer besides [`crate::Error`] (nested in it as
//!   [`Error::Hsm`]).
//!
//! Objects on the token, per key version `v` of kind `k` (`root`, `license`, `ca`,
//! `code`, `audit`, `log`): label and id `alga-<k>-v<v>` on the private key (EC P-256;
//! Ed25519 for `log`; the code key is a 32-byte generic secret), the public key (key
//! pairs), a `CKO_DATA` creation record, and for `root` and `ca` the X.509
//! certificate. See `objects` for the details.
//!
//! Invariants: no private or secret key is ever created extractable or
//! non-sensitive, and one found on the token that is gets refused at open; no PIN or
//! key material appears in an error, a log line or a `Debug` output.

pub mod admin;
mod ca;
pub mod error;
mod mechanism;
mod objects;
mod signer;
mod token;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use secrecy::SecretString;
use tracing::instrument;

pub use error::HsmError;
pub use objects::{KeyProtection, kid, parse_kid, sha256_hex};
pub use signer::{CaSigner, der_signature};

use crate::Error;
use crate::config::HsmConfig;
use crate::keyring::{
    self, CaCertificate, KeyAlgorithm, KeyInfo, KeyKind, KeyOps, LicenseEndorsement,
    RootCertificate,
};
use objects::Inventory;
use token::Token;
use worker::{Job, LoginLatch, Op, Output, Reply, Worker};

/// Most worker threads a pool may have (each holds a session; tokens limit sessions).
const MAX_WORKERS: usize = 64;

/// The serving key store. Cheap to clone: clones share one worker pool, which stops
/// (closing its sessions) when the last clone is dropped.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while dropping: closing the channel stops the workers.
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    token: Token,
    inventory: Inventory,
    recoveries: Arc<AtomicU64>,
    latch: Arc<LoginLatch>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("token", &self.inner.token.label)
            .field("workers", &self.inner.threads.len())
            .field(
                "keys",
                &self
                    .inner
                    .inventory
                    .keys
                    .iter()
                    .map(|k| &k.kid)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Hsm {
    /// Opens the configured token for serving: finds it by label, logs in, checks that
    /// the complete key set is there (with the required protection), caches the public
    /// metadata, and starts `config.workers` workers, each with its own logged-in session.
    ///
    /// Blocking: call it from `spawn_blocking` (or before the runtime starts).
    #[instrument(skip_all, fields(hsm.token = %config.token_label))]
    pub fn open(config: &HsmConfig, pin: SecretString) -> Result<Hsm, HsmError> {
        if config.workers == 0 || config.workers > MAX_WORKERS {
            return Err(HsmError::Config {
                reason: format!(
                    "hsm.workers must be between 1 and {MAX_WORKERS}, not {}",
                    config.workers
                ),
            });
        }
        let token = Token::find(config)?;
        let session = token.user_session(&pin)?;
        let inventory = Inventory::load(&session)?;
        inventory.check_complete(&token.label)?;

        // Sessions are opened and logged in here, so that a bad PIN or an exhausted
        // token fails `open` instead of the first request.
        let mut sessions = vec![session];
        while sessions.len() < config.workers {
            sessions.push(token.user_session(&pin)?);
        }
        let (jobs, receiver) = crossbeam_channel::unbounded::<Job>();
        let recoveries = Arc::new(AtomicU64::new(0));
        let latch = Arc::new(LoginLatch::default());
        let mut threads = Vec::with_capacity(config.workers);
        for (index, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                index,
                token: token.clone(),
                pin: pin.clone(),
                session: Some(session),
                handles: Default::default(),
                recoveries: recoveries.clone(),
                latch: latch.clone(),
            };
            let receiver = receiver.clone();
            let thread = std::thread::Builder::new()
                .name(format!("hsm-worker-{index}"))
                .spawn(move || worker.run(receiver))
                .map_err(|e| HsmError::unavailable(format!("cannot start an HSM worker: {e}")))?;
            threads.push(thread);
        }
        tracing::info!(
            hsm.workers = config.workers,
            hsm.keys = inventory.keys.len(),
            "HSM open"
        );
        Ok(Hsm {
            inner: Arc::new(Inner {
                jobs: Some(jobs),
                threads,
                token,
                inventory,
                recoveries,
                latch,
            }),
        })
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.inner.token.label
    }

    /// ECDSA P-256 over `digest`, waiting on the calling thread. For synchronous
    /// callers on a blocking thread (`spawn_blocking`), never from async code; the
    /// signature itself is made by the worker pool, like [`KeyOps::sign_digest`].
    pub fn sign_digest_blocking(
        &self,
        kind: KeyKind,
        version: u32,
        digest: [u8; 32],
    ) -> Result<[u8; 64], HsmError> {
        self.check_known(kind, version, KeyAlgorithm::EcP256)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            Op::Sign {
                kind,
                version,
                digest,
            },
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )?;
        let out = rx
            .recv()
            .map_err(|_| HsmError::unavailable("the HSM worker stopped"))??;
        signature(out)
    }

    /// How many times a worker has reopened a lost session since `open`.
    pub fn session_recoveries(&self) -> u64 {
        self.inner.recoveries.load(Ordering::Relaxed)
    }

    /// How many times this pool has called `C_Login` since `open` (its sessions at
    /// open included), whatever the answer: what a real HSM's failed-login counter
    /// would have seen of a wrong PIN. For tests and operators' diagnostics.
    pub fn login_calls(&self) -> u64 {
        self.inner.token.login_calls.load(Ordering::Relaxed)
    }

    /// Whether logins are stopped because the token refused the PIN after a lost
    /// session, with the refusal (`CKR_PIN_INCORRECT`, `CKR_PIN_LOCKED`). Stays set
    /// until the process ends: restart the issuer with the right PIN.
    pub fn login_stopped(&self) -> Option<&'static str> {
        self.inner.latch.stopped()
    }

    /// **Test-only hook**: pulls the login out from under the running pool, as an HSM
    /// restart or a network HSM failover would. It opens a separate session on the
    /// token and calls `C_Logout`, which logs out every session of this process (login
    /// is per application) and, in SoftHSM, invalidates the cached handles of private
    /// objects. The workers' next jobs then fail with "user not logged in" or "object
    /// handle invalid" and must recover by themselves. (cryptoki 0.12 has no safe
    /// `C_CloseAllSessions`, and this crate forbids `unsafe`.) Built only with the
    /// `fault-injection` feature, which only dev-dependencies enable: a release build
    /// has no such function.
    #[cfg(feature = "fault-injection")]
    pub fn invalidate_sessions_for_test(&self) -> Result<(), HsmError> {
        let token = &self.inner.token;
        let session = token
            .pkcs11
            .open_ro_session(token.slot)
            .map_err(error::map_cryptoki)?;
        session.logout().map_err(error::map_cryptoki)
    }

    /// A serving issuer signs with every kind but the root, which signs in key
    /// ceremonies only: a request for it is answered as for an unknown key, and so is
    /// a request for a kind of another algorithm than the operation's.
    fn check_known(
        &self,
        kind: KeyKind,
        version: u32,
        algorithm: KeyAlgorithm,
    ) -> Result<(), HsmError> {
        let known = kind != KeyKind::Root
            && kind.algorithm() == algorithm
            && self
                .inner
                .inventory
                .versions(kind)
                .any(|k| k.version == version);
        if known {
            Ok(())
        } else {
            Err(HsmError::UnknownKey { kind, version })
        }
    }

    fn submit(&self, op: Op, reply: Reply) -> Result<(), HsmError> {
        let jobs = self
            .inner
            .jobs
            .as_ref()
            .ok_or_else(|| HsmError::unavailable("the HSM worker pool is stopped"))?;
        jobs.send(Job { op, reply })
            .map_err(|_| HsmError::unavailable("the HSM worker pool is stopped"))
    }

    /// Submits `op` and returns a receiver for its result (async callers).
    fn submit_async(&self, op: Op) -> Result<Receiver, HsmError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            op,
            Box::new(move |result| {
                // The caller may have given up waiting (request cancelled): nothing to do.
                let _ = tx.send(result);
            }),
        )?;
        Ok(rx)
    }
}

/// The receiving end of one job's reply.
type Receiver = tokio::sync::oneshot::Receiver<Result<Output, HsmError>>;

/// The signature of an ECDSA sign job.
fn signature(out: Output) -> Result<[u8; 64], HsmError> {
    signature_of(out, "C_Sign(CKM_ECDSA)")
}

/// The signature of an Ed25519 sign job.
fn ed25519_signature(out: Output) -> Result<[u8; 64], HsmError> {
    signature_of(out, "C_Sign(CKM_EDDSA)")
}

fn signature_of(out: Output, operation: &'static str) -> Result<[u8; 64], HsmError> {
    match out {
        Output::Signature(signature) => Ok(signature),
        Output::Mac(_) => Err(HsmError::UnexpectedOutput {
            operation,
            reason: "a MAC instead of a signature".into(),
        }),
    }
}

/// The MAC of an HMAC job, copied from the worker's zeroizing buffer straight into a
/// zeroizing heap array (which the buffer's drop then wipes behind).
fn mac(out: Output) -> Result<keyring::Mac, HsmError> {
    match out {
        Output::Mac(buffer) if buffer.len() == 32 => {
            let mut mac = keyring::new_mac();
            mac.copy_from_slice(&buffer);
            Ok(mac)
        }
        Output::Mac(buffer) => Err(HsmError::UnexpectedOutput {
            operation: "C_Sign(CKM_SHA256_HMAC)",
            reason: format!("{} bytes instead of 32", buffer.len()),
        }),
        Output::Signature(_) => Err(HsmError::UnexpectedOutput {
            operation: "C_Sign(CKM_SHA256_HMAC)",
            reason: "a signature instead of a MAC".into(),
        }),
    }
}

/// Waits for a job's reply and turns its output into `T`.
async fn wait<T>(
    rx: Result<Receiver, HsmError>,
    output: fn(Output) -> Result<T, HsmError>,
) -> Result<T, Error> {
    let result = match rx {
        Ok(rx) => rx
            .await
            .unwrap_or_else(|_| Err(HsmError::unavailable("the HSM worker stopped"))),
        Err(e) => Err(e),
    };
    let result = result.and_then(output);
    if let Err(e) = &result {
        tracing::warn!(error = %e, "HSM operation failed");
    }
    result.map_err(Error::Hsm)
}

impl KeyOps for Hsm {
    fn sign_digest(
        &self,
        kind: KeyKind,
        version: u32,
        digest: [u8; 32],
    ) -> impl Future<Output = Result<[u8; 64], Error>> + Send {
        let rx = self
            .check_known(kind, version, KeyAlgorithm::EcP256)
            .and_then(|()| {
                self.submit_async(Op::Sign {
                    kind,
                    version,
                    digest,
                })
            });
        wait(rx, signature)
    }

    fn sign_ed25519(
        &self,
        kind: KeyKind,
        version: u32,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<[u8; 64], Error>> + Send {
        let rx = self
            .check_known(kind, version, KeyAlgorithm::Ed25519)
            .and_then(|()| {
                self.submit_async(Op::SignEd25519 {
                    kind,
                    version,
                    message,
                })
            });
        wait(rx, ed25519_signature)
    }

    fn hmac_sha256(
        &self,
        version: u32,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<keyring::Mac, Error>> + Send {
        let rx = self
            .check_known(KeyKind::Code, version, KeyAlgorithm::HmacSha256)
            .and_then(|()| self.submit_async(Op::Hmac { version, data }));
        wait(rx, mac)
    }

    fn health(&self) -> Result<(), Error> {
        match self.login_stopped() {
            Some(rv) => Err(Error::Hsm(HsmError::LoginStopped { rv })),
            None => Ok(()),
        }
    }

    fn active_version(&self, kind: KeyKind) -> u32 {
        // `open` refuses a token without every kind, so 0 is unreachable in practice.
        self.inner.inventory.max_version(kind).unwrap_or(0)
    }

    fn keys(&self, kind: KeyKind) -> Vec<KeyInfo> {
        self.inner.inventory.versions(kind).cloned().collect()
    }

    fn root_certificates(&self) -> Vec<RootCertificate> {
        self.inner.inventory.roots.clone()
    }

    fn license_endorsement(&self, version: u32) -> Option<LicenseEndorsement> {
        self.inner
            .inventory
            .endorsements
            .iter()
            .find(|e| e.version == version)
            .cloned()
    }

    fn ca_certificates(&self) -> Vec<CaCertificate> {
        self.inner.inventory.ca_certificates.clone()
    }
}
