//! The sequencer: chains committed records, in batches, shortly after they commit.
//!
//! Business transactions only insert their record ([`append`](crate::append)); no
//! lock is shared between them. One sequencer among all gateways (the holder of a
//! Postgres advisory lock on a dedicated connection; the others retry every second)
//! then repeatedly:
//!
//! 1. reads up to `batch_size` records after its cursor `(xid, id)` whose inserting
//!    transaction has ended (`xid < pg_snapshot_xmin(pg_current_snapshot())`), in
//!    `(xid, id)` order: such a record can no longer be joined by an earlier one, so
//!    chaining in this order leaves no gap;
//! 2. computes their hashes ([`chain_hash`](crate::chain_hash)) and inserts the chain
//!    rows in one statement;
//!    In the same statement it stores the Merkle tree's new nodes (every subtree of
//!    height 8, 16, … the batch completed; [`tree`](crate::tree)), from the right
//!    edge it keeps in memory while it leads;
//! 3. every `checkpoint_every_records` new records or `checkpoint_interval` (policy),
//!    has the head signed by a [`CheckpointSigner`] (the issuer's audit key) and
//!    stores the checkpoint; at the same time it has the tree's head signed as a
//!    c2sp.org/tlog-checkpoint note (the issuer's log key) and stores that.
//!
//! Between polls that find less than a full batch it pauses `idle_poll` (5 ms); each
//! poll that finds nothing doubles the pause up to `idle_poll_max` (50 ms), so an idle
//! log costs 20 small queries a second per leader instead of 200, and a record
//! committed after a quiet spell is chained within about 50 ms. Its two hot statements
//! are prepared once per connection.
//!
//! Correctness does not rest on the advisory lock: the chain table's keys (`seq`
//! primary key, `event_id` unique, each row's foreign key to its predecessor's
//! `(seq, hash)`) make a second sequencer's fork or double chaining fail; the loser
//! re-reads the head and carries on.
//!
//! **Caveat.** A transaction that stays open anywhere in the cluster with an
//! assigned xid holds back `xmin`, and with it the chaining of every record committed
//! after it began, for as long as it stays open (then everything is chained at once).
//! Records are never lost or reordered by this, only delayed; `alga-audit verify`
//! flags records left unchained longer than `policy.audit.unchained_alarm_after`.
#![allow(
    clippy::disallowed_methods,
    reason = "the audit crate's own tables: the sequencer chains rows in place"
)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_policies::AuditPolicy;
use alga_protocol::issuer_api::{SignedCheckpoint, SignedLogCheckpoint};
use alga_tlog::{TreeEdge, entry_of, leaf_hash};
use deadpool_postgres::{Object, Pool};
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tracing::{debug, info, warn};

use crate::canonical::chain_hash;
use crate::error::AuditError;
use crate::store::{self, Head};
use crate::tree;

/// Signs a checkpoint: the audit chain's head `(sequence, head hash)`.
///
/// The gateway implements it by calling the issuer
/// ([`SIGN_CHECKPOINT`](alga_protocol::issuer_api::SIGN_CHECKPOINT)), whose HSM holds
/// the audit key. The signature is base64url raw P-256 `r‖s` over SHA-256 of
/// [`CheckpointStatement::to_bytes`](alga_protocol::issuer_api::CheckpointStatement::to_bytes).
pub trait CheckpointSigner: Send + Sync + 'static {
    type Error: std::fmt::Display + Send + 'static;

    fn sign(
        &self,
        sequence: u64,
        head_hash_hex: &str,
    ) -> impl Future<Output = Result<SignedCheckpoint, Self::Error>> + Send;

    /// Signs the tree head `(size, root)` as a c2sp.org/tlog-checkpoint note with the
    /// log key ([`SIGN_LOG_CHECKPOINT`](alga_protocol::issuer_api::SIGN_LOG_CHECKPOINT)).
    fn sign_log(
        &self,
        size: u64,
        root: [u8; 32],
    ) -> impl Future<Output = Result<SignedLogCheckpoint, Self::Error>> + Send;
}

/// What one round of checkpoint signing produced.
struct Signed {
    chain: Result<SignedCheckpoint, String>,
    tree: Result<(u64, [u8; 32], SignedLogCheckpoint), String>,
}

/// How the sequencer runs. [`SequencerConfig::new`] has the production defaults.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Checkpoint cadence (and the unchained alarm verify uses).
    pub policy: AuditPolicy,
    /// Most records chained per statement.
    pub batch_size: u32,
    /// First pause when there is nothing to chain. Each further empty poll doubles the
    /// pause, up to [`idle_poll_max`](SequencerConfig::idle_poll_max); a poll that finds
    /// records starts over from here. A busy log is polled every `idle_poll`; an idle one
    /// costs a query every `idle_poll_max`, not every `idle_poll`.
    pub idle_poll: Duration,
    /// Longest pause between polls of an idle log: the most a record committed after a
    /// quiet spell waits to be chained (on top of the chaining itself).
    pub idle_poll_max: Duration,
    /// Pause between attempts to become the leader, and after a lost connection.
    pub leader_retry: Duration,
    /// Pause before asking the signer again after it failed.
    pub signer_retry: Duration,
    /// Skip the advisory lock, so several sequencers race. Only for tests that show the
    /// chain's keys alone prevent forks; never in production (it costs conflicts).
    pub danger_skip_leader_election: bool,
}

impl SequencerConfig {
    pub fn new(policy: AuditPolicy) -> SequencerConfig {
        SequencerConfig {
            policy,
            batch_size: 1000,
            idle_poll: Duration::from_millis(5),
            idle_poll_max: Duration::from_millis(50),
            leader_retry: Duration::from_secs(1),
            signer_retry: Duration::from_secs(5),
            danger_skip_leader_election: false,
        }
    }
}

/// What the sequencer has chained so far (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Sequence number of the newest chained record (0: none yet).
    pub head_seq: u64,
    /// `(xid, event id)` of that record: every event at or before it in this order is
    /// chained.
    pub cursor: (u64, i64),
    /// Whether this sequencer currently leads.
    pub leading: bool,
    /// Records this sequencer chained since it started.
    pub chained: u64,
    /// Checkpoints this sequencer stored since it started.
    pub checkpoints: u64,
    /// Polls that found nothing to chain since it started.
    pub empty_polls: u64,
    /// Tree checkpoints (signed notes) this sequencer stored since it started.
    pub log_checkpoints: u64,
    /// The pause before the next poll when the last one found less than a batch:
    /// `idle_poll` after a poll that found records, doubled by each empty poll up to
    /// `idle_poll_max`.
    pub idle_pause: Duration,
}

/// The advisory lock key of the sequencer leadership ("algaaudt").
pub const LEADER_LOCK_KEY: i64 = 0x616c_6761_6175_6474;

/// The sequencer. Build it with [`Sequencer::new`], then [`spawn`](Sequencer::spawn)
/// it or await [`run`](Sequencer::run).
pub struct Sequencer<S> {
    pool: Pool,
    signer: Arc<S>,
    config: SequencerConfig,
    progress: watch::Sender<Progress>,
}

impl<S> std::fmt::Debug for Sequencer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum Stop {
    Shutdown,
    NotLeader,
}

impl<S: CheckpointSigner> Sequencer<S> {
    pub fn new(pool: Pool, signer: S, config: SequencerConfig) -> Sequencer<S> {
        Sequencer {
            pool,
            signer: Arc::new(signer),
            config,
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Follows the sequencer's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs [`run`](Sequencer::run) on the tokio runtime.
    pub fn spawn<F>(self, shutdown: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.run(shutdown))
    }

    /// Competes for leadership and chains while leading, until `shutdown` completes.
    /// Errors (a lost connection, a failing signer) are logged and retried; only
    /// shutdown ends it. A statement in flight is finished, never abandoned.
    pub async fn run<F>(self, shutdown: F)
    where
        F: Future<Output = ()> + Send,
    {
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        loop {
            match self.lead(&mut shutdown).await {
                Ok(Stop::Shutdown) => return,
                Ok(Stop::NotLeader) => {}
                Err(e) => warn!(error = %e, "audit sequencer: retrying after error"),
            }
            self.progress.send_modify(|p| p.leading = false);
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.config.leader_retry) => {}
            }
        }
    }

    async fn lead<F>(
        &self,
        shutdown: &mut std::pin::Pin<&mut futures::future::Fuse<F>>,
    ) -> Result<Stop, AuditError>
    where
        F: Future<Output = ()>,
    {
        let conn = self.pool.get().await?;
        if !self.config.danger_skip_leader_election {
            let row = conn
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK_KEY])
                .await?;
            if !row.try_get::<_, bool>(0)? {
                return Ok(Stop::NotLeader);
            }
        }
        info!("audit sequencer: leading");
        self.progress.send_modify(|p| p.leading = true);
        match self.chain_while_leading(&conn, shutdown).await {
            Ok(()) => {
                if !self.config.danger_skip_leader_election {
                    conn.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK_KEY])
                        .await?;
                }
                info!("audit sequencer: stopped");
                Ok(Stop::Shutdown)
            }
            Err(e) => {
                // Close this connection rather than return it to the pool: that
                // certainly releases the session's advisory lock.
                drop(Object::take(conn));
                Err(e)
            }
        }
    }

    async fn chain_while_leading<F>(
        &self,
        conn: &Object,
        shutdown: &mut std::pin::Pin<&mut futures::future::Fuse<F>>,
    ) -> Result<(), AuditError>
    where
        F: Future<Output = ()>,
    {
        let client: &tokio_postgres::Client = conn;
        let policy = &self.config.policy;
        let every = policy.checkpoint_every_records.max(1);
        let interval = policy.checkpoint_interval.unsigned_abs();
        let batch = i64::from(self.config.batch_size.max(1));

        let mut head = store::head(client).await?;
        let mut edge = tree::load_edge(client, head.seq).await?;
        let (mut cp_seq, mut last_cp_at) = match store::last_checkpoint(client).await? {
            Some((seq, age)) => {
                let age = Duration::try_from_secs_f64(age.max(0.0)).unwrap_or(Duration::ZERO);
                (
                    seq,
                    Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                )
            }
            None => (0, Instant::now()),
        };
        self.publish(&head, 0, 0);
        let mut signing: Option<JoinHandle<Signed>> = None;
        let mut sign_not_before = Instant::now();
        let mut pause = self.config.idle_poll;

        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                return Ok(());
            }

            if signing.as_ref().is_some_and(JoinHandle::is_finished)
                && let Some(task) = signing.take()
            {
                let signed = task.await.unwrap_or_else(|e| Signed {
                    chain: Err(format!("signer task: {e}")),
                    tree: Err(format!("signer task: {e}")),
                });
                match signed.chain {
                    Ok(cp) => {
                        if store::insert_checkpoint(client, &cp).await? {
                            info!(checkpoint.seq = cp.sequence, checkpoint.kid = %cp.kid, "audit checkpoint stored");
                            self.progress.send_modify(|p| p.checkpoints += 1);
                        }
                        cp_seq = cp_seq.max(cp.sequence);
                        last_cp_at = Instant::now();
                    }
                    Err(e) => {
                        warn!(error = %e, "audit checkpoint signing failed; will retry");
                        sign_not_before = Instant::now() + self.config.signer_retry;
                    }
                }
                match signed.tree {
                    Ok((size, root, cp)) => {
                        if tree::insert_checkpoint(client, size, &root, &cp.kid, &cp.note).await? {
                            info!(tree.size = size, tree.kid = %cp.kid, "audit log checkpoint stored");
                            self.progress.send_modify(|p| p.log_checkpoints += 1);
                        }
                    }
                    Err(e) => warn!(error = %e, "audit log checkpoint signing failed; will retry"),
                }
            }

            let events = store::final_events_after(conn, head.xid, head.event_id, batch).await?;
            let full = events.len() as i64 == batch;
            if events.is_empty() {
                self.progress.send_modify(|p| p.empty_polls += 1);
            } else {
                pause = self.config.idle_poll;
                let mut next_edge = edge.clone();
                match self.chain(conn, &head, &mut next_edge, &events).await {
                    Ok(new_head) => {
                        edge = next_edge;
                        debug!(
                            audit.head = new_head.seq,
                            audit.batch = events.len(),
                            "chained"
                        );
                        self.publish(&new_head, events.len() as u64, 0);
                        head = new_head;
                    }
                    Err(AuditError::Database(e)) if is_conflict(&e) => {
                        warn!(error = %e, "audit sequencer: another sequencer chained first; re-reading the head");
                        head = store::head(client).await?;
                        edge = tree::load_edge(client, head.seq).await?;
                        self.publish(&head, 0, 0);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }

            let due = head.seq > cp_seq
                && (head.seq - cp_seq >= every || last_cp_at.elapsed() >= interval);
            if due && signing.is_none() && Instant::now() >= sign_not_before {
                let signer = Arc::clone(&self.signer);
                let (seq, hash) = (head.seq, hex::encode(head.hash));
                let root = edge.root().0;
                signing = Some(tokio::spawn(async move {
                    let chain = match signer.sign(seq, &hash).await {
                        Err(e) => Err(e.to_string()),
                        Ok(cp)
                            if cp.sequence != seq || !cp.head_hash.eq_ignore_ascii_case(&hash) =>
                        {
                            Err(format!(
                                "signer returned a checkpoint for {} instead of {seq}",
                                cp.sequence
                            ))
                        }
                        Ok(cp) => Ok(cp),
                    };
                    let tree = match signer.sign_log(seq, root).await {
                        Err(e) => Err(e.to_string()),
                        Ok(cp) => match alga_tlog::note::unverified_body(&cp.note) {
                            Ok((_, size, signed_root)) if size == seq && signed_root.0 == root => {
                                Ok((seq, root, cp))
                            }
                            Ok((_, size, _)) => Err(format!(
                                "signer returned a tree checkpoint for size {size} instead of {seq}, or another root"
                            )),
                            Err(e) => Err(format!("signer returned an unreadable checkpoint: {e}")),
                        },
                    };
                    Signed { chain, tree }
                }));
            }

            if !full {
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                if events.is_empty() {
                    pause = (pause * 2)
                        .min(self.config.idle_poll_max)
                        .max(self.config.idle_poll);
                }
            }
            if self.progress.borrow().idle_pause != pause {
                self.progress.send_modify(|p| p.idle_pause = pause);
            }
        }
    }

    async fn chain(
        &self,
        conn: &Object,
        head: &Head,
        edge: &mut TreeEdge,
        events: &[store::FinalEvent],
    ) -> Result<Head, AuditError> {
        let n = events.len();
        let mut seqs = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(n + 1);
        let mut nodes = Vec::new();
        hashes.push(head.hash);
        for (i, e) in events.iter().enumerate() {
            let seq = head.seq + 1 + i as u64;
            seqs.push(store::to_i64(seq)?);
            ids.push(e.id);
            let h = chain_hash(&hashes[i], seq, &e.record);
            hashes.push(h);
            edge.push(leaf_hash(&entry_of(&e.record)), &mut nodes);
        }
        let prev: Vec<&[u8]> = hashes[..n].iter().map(|h| h.as_slice()).collect();
        let own: Vec<&[u8]> = hashes[1..].iter().map(|h| h.as_slice()).collect();
        let nodes = tree::NodeColumns::of(&nodes)?;
        store::insert_chain(conn, &seqs, &ids, &prev, &own, &nodes).await?;
        let last = &events[n - 1];
        Ok(Head {
            seq: head.seq + n as u64,
            hash: hashes[n],
            xid: last.xid,
            event_id: last.id,
        })
    }

    fn publish(&self, head: &Head, chained: u64, checkpoints: u64) {
        self.progress.send_modify(|p| {
            p.head_seq = head.seq;
            p.cursor = (head.xid, head.event_id);
            p.chained += chained;
            p.checkpoints += checkpoints;
        });
    }
}

fn is_conflict(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION
    )
}
