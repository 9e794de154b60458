//! The issuer's own append-only signing log: the writer and a reader.
//!
//! Format and chain rules are in [`alga_protocol::signlog`]. This module writes them
//! durably and fail-closed:
//!
//! - One writer thread owns the files. [`SignLog::append`] hands it an event and waits
//!   for the reply, which comes only after the record is written **and fsynced**; the
//!   server returns a signature only after that. If a write or fsync fails the log is
//!   marked broken and every later append fails too, so the issuer stops signing
//!   (503) until an operator restarts it; after a failed fsync the kernel's page
//!   state is unknown and retrying would be a lie.
//! - Group commit: the thread takes every event already waiting (up to
//!   [`MAX_BATCH`]), writes them, fsyncs once, then answers them all. Each record is
//!   still durable before its reply; concurrent requests share the fsync.
//! - Rotation: when the current file would grow past the size bound, the next record
//!   starts a new file `signlog-<its seq>.jsonl` (the old one is fsynced first, the
//!   directory after the new one is created). The chain runs on across files.
//! - Restart: [`SignLog::open`] verifies the newest file, checks that it continues the
//!   previous file's last record, and resumes from its last record. A torn final line
//!   (a crash in the middle of a write, never acknowledged) is cut off with a warning;
//!   any other damage refuses to start.
//!
//! Files are created `0600` in a directory created `0700`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use alga_protocol::signlog::{
    ChainHead, ChainVerifier, FIRST_SEQ, GENESIS_HASH, SignEvent, SignlogRecord, file_name,
    parse_file_name,
};

use crate::Error;

/// Default size bound of one log file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Most records written under one fsync.
pub const MAX_BATCH: usize = 256;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::SignlogIo { context, source }
}

/// Options of the writer.
#[derive(Debug, Clone, Copy)]
pub struct SignlogOptions {
    /// Start a new file before one would grow past this many bytes.
    pub max_file_bytes: u64,
}

impl Default for SignlogOptions {
    fn default() -> Self {
        SignlogOptions {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub seq: u64,
    pub hash: String,
}

/// The writer. Cheap to clone; the thread stops when the last clone is dropped, after
/// writing what it was given.
#[derive(Clone)]
pub struct SignLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SignLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignLog")
            .field("directory", &self.inner.dir)
            .field("broken", &self.inner.broken.load(Ordering::Relaxed))
            .finish()
    }
}

struct Inner {
    dir: PathBuf,
    /// `None` only while dropping: closing the channel stops the thread.
    tx: Option<crossbeam_channel::Sender<Append>>,
    thread: Option<JoinHandle<()>>,
    broken: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // A writer that panicked has nothing left to flush.
            let _ = thread.join();
        }
    }
}

struct Append {
    event: SignEvent,
    reply: tokio::sync::oneshot::Sender<Result<Logged, Error>>,
}

impl SignLog {
    /// Opens (creating it if needed) the log in `dir` and starts the writer thread.
    /// Blocking (reads the newest file): call it from `spawn_blocking` or before serving.
    pub fn open(dir: &Path, options: SignlogOptions) -> Result<SignLog, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let writer = Writer::resume(dir, options)?;
        tracing::info!(
            signlog.directory = %dir.display(),
            signlog.next_seq = writer.next_seq,
            "signing log open"
        );
        let broken = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::unbounded::<Append>();
        let thread = std::thread::Builder::new()
            .name("signlog-writer".into())
            .spawn({
                let broken = broken.clone();
                move || writer.run(rx, &broken)
            })
            .map_err(io("starting the writer thread"))?;
        Ok(SignLog {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                tx: Some(tx),
                thread: Some(thread),
                broken,
            }),
        })
    }

    /// Appends `event`; resolves once it is written and fsynced.
    pub async fn append(&self, event: SignEvent) -> Result<Logged, Error> {
        if self.inner.broken.load(Ordering::Acquire) {
            return Err(Error::SignlogUnavailable);
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(Error::SignlogUnavailable)?;
        tx.send(Append { event, reply })
            .map_err(|_| Error::SignlogUnavailable)?;
        rx.await.unwrap_or(Err(Error::SignlogUnavailable))
    }

    /// Whether the log still accepts records.
    pub fn is_healthy(&self) -> bool {
        !self.inner.broken.load(Ordering::Acquire)
    }

    /// The log's directory.
    pub fn directory(&self) -> &Path {
        &self.inner.dir
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    options: SignlogOptions,
    /// The file being appended to, and its size; `None` before the first record of a
    /// new log or right after a rotation decision.
    file: Option<(File, u64)>,
    next_seq: u64,
    last_hash: String,
}

impl Writer {
    /// Finds where the chain stands on disk.
    fn resume(dir: &Path, options: SignlogOptions) -> Result<Writer, Error> {
        let files = list_files(dir)?;
        let Some((newest_seq, newest)) = files.last().cloned() else {
            return Ok(Writer {
                dir: dir.to_owned(),
                options,
                file: None,
                next_seq: FIRST_SEQ,
                last_hash: GENESIS_HASH.to_owned(),
            });
        };
        // Where the previous file left the chain (or the genesis).
        let (prev_seq, prev_hash) = match files.len().checked_sub(2).map(|i| &files[i]) {
            Some((_, previous)) => {
                let line = last_line(previous)?.ok_or_else(|| Error::SignlogInconsistent {
                    file: previous.clone(),
                    reason: "an older file is empty".into(),
                })?;
                let record: SignlogRecord =
                    serde_json::from_str(&line).map_err(|e| Error::SignlogInconsistent {
                        file: previous.clone(),
                        reason: format!("its last line is not a record: {e}"),
                    })?;
                (record.seq, record.hash)
            }
            None => (FIRST_SEQ - 1, GENESIS_HASH.to_owned()),
        };
        if newest_seq != prev_seq + 1 {
            return Err(Error::SignlogInconsistent {
                file: newest.clone(),
                reason: format!("it should start at seq {}", prev_seq + 1),
            });
        }

        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&newest)
            .map_err(io(format!("opening {}", newest.display())))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(io(format!("reading {}", newest.display())))?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            tracing::warn!(
                signlog.file = %newest.display(),
                signlog.torn_bytes = text.len() - complete,
                "cutting off a torn final line (a write interrupted by a crash, never acknowledged)"
            );
            file.set_len(complete as u64)
                .map_err(io(format!("truncating {}", newest.display())))?;
            file.sync_all()
                .map_err(io(format!("fsync {}", newest.display())))?;
            text.truncate(complete);
        }
        let mut verifier = ChainVerifier::resume(prev_seq, &prev_hash);
        for line in text.lines() {
            verifier
                .push(line)
                .map_err(|source| Error::SignlogDamaged {
                    file: newest.clone(),
                    source,
                })?;
        }
        let ChainHead {
            last_seq,
            last_hash,
            ..
        } = verifier.head();
        file.seek(SeekFrom::End(0))
            .map_err(io(format!("seeking {}", newest.display())))?;
        Ok(Writer {
            dir: dir.to_owned(),
            options,
            file: Some((file, complete as u64)),
            next_seq: last_seq + 1,
            last_hash,
        })
    }

    /// Serves appends until every sender is gone.
    fn run(mut self, rx: crossbeam_channel::Receiver<Append>, broken: &AtomicBool) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            if broken.load(Ordering::Acquire) {
                for a in batch {
                    let _ = a.reply.send(Err(Error::SignlogUnavailable));
                }
                continue;
            }
            let (replies, events): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|a| (a.reply, a.event)).unzip();
            match self.write_batch(events) {
                Ok(logged) => {
                    for (reply, logged) in replies.into_iter().zip(logged) {
                        // The caller may have gone away; the record is written regardless.
                        let _ = reply.send(Ok(logged));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "signing log write failed: refusing every further signature");
                    broken.store(true, Ordering::Release);
                    for reply in replies {
                        let _ = reply.send(Err(Error::SignlogUnavailable));
                    }
                }
            }
        }
        tracing::debug!("signing log writer stopped");
    }

    /// Writes `events` as consecutive records and fsyncs; the chain head advances only
    /// if everything reached the disk.
    fn write_batch(&mut self, events: Vec<SignEvent>) -> Result<Vec<Logged>, Error> {
        let mut seq = self.next_seq;
        let mut hash = self.last_hash.clone();
        let mut pending = Vec::new();
        let mut logged = Vec::with_capacity(events.len());
        for event in events {
            let record = SignlogRecord::seal(event, seq, &hash).map_err(|e| Error::SignlogIo {
                context: "encoding a record".into(),
                source: std::io::Error::other(e),
            })?;
            let mut line = record.to_line().map_err(|e| Error::SignlogIo {
                context: "encoding a record".into(),
                source: std::io::Error::other(e),
            })?;
            line.push('\n');
            let size = self.file.as_ref().map_or(0, |(_, size)| *size) + pending.len() as u64;
            if self.file.is_none()
                || (size > 0 && size + line.len() as u64 > self.options.max_file_bytes)
            {
                self.flush(&mut pending)?;
                self.rotate(seq)?;
            }
            pending.extend_from_slice(line.as_bytes());
            logged.push(Logged {
                seq,
                hash: record.hash.clone(),
            });
            hash = record.hash;
            seq += 1;
        }
        self.flush(&mut pending)?;
        self.next_seq = seq;
        self.last_hash = hash;
        Ok(logged)
    }

    /// Writes `pending` to the current file and fsyncs it.
    fn flush(&mut self, pending: &mut Vec<u8>) -> Result<(), Error> {
        if pending.is_empty() {
            return Ok(());
        }
        let (file, size) = self.file.as_mut().ok_or(Error::SignlogUnavailable)?;
        file.write_all(pending).map_err(io("appending"))?;
        file.sync_data().map_err(io("fsync"))?;
        *size += pending.len() as u64;
        pending.clear();
        Ok(())
    }

    /// Closes the current file (already fsynced) and starts `signlog-<seq>.jsonl`.
    fn rotate(&mut self, seq: u64) -> Result<(), Error> {
        let path = self.dir.join(file_name(seq));
        if let Some((_, size)) = &self.file {
            tracing::info!(signlog.file = %path.display(), signlog.previous_bytes = size, "signing log rotated");
        }
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("fsync of directory {}", self.dir.display())))?;
        self.file = Some((file, 0));
        Ok(())
    }
}

/// Log files in `dir`, by first seq.
fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_file_name) {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The last complete line of a file (without its newline), reading only its tail.
fn last_line(path: &Path) -> Result<Option<String>, Error> {
    const TAIL: u64 = 64 * 1024;
    let mut file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let len = file
        .metadata()
        .map_err(io(format!("reading {}", path.display())))?
        .len();
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))
        .map_err(io(format!("seeking {}", path.display())))?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)
        .map_err(io(format!("reading {}", path.display())))?;
    let Some(body) = tail.strip_suffix('\n') else {
        return Ok(None);
    };
    Ok(body
        .rsplit('\n')
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned))
}

/// A whole log read back and verified.
#[derive(Debug, Clone)]
pub struct SignlogContents {
    /// Every record, in order.
    pub records: Vec<SignlogRecord>,
    /// The end of the chain.
    pub head: ChainHead,
    /// Bytes of an incomplete final line (a write in progress or a crash), not counted.
    pub torn_tail_bytes: usize,
}

/// Reads every file of the log in `dir` and verifies the chain from its first record
/// (for tests and `reconcile`). A log whose oldest files were archived is verified
/// from the first record present, trusting its `prev_hash`.
pub fn read_dir(dir: &Path) -> Result<SignlogContents, Error> {
    let files = list_files(dir)?;
    let mut verifier: Option<ChainVerifier> = None;
    let mut records = Vec::new();
    let mut torn_tail_bytes = 0;
    let count = files.len();
    for (i, (first_seq, path)) in files.into_iter().enumerate() {
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            if i + 1 < count {
                return Err(Error::SignlogInconsistent {
                    file: path,
                    reason: "an older file ends in a torn line".into(),
                });
            }
            torn_tail_bytes = text.len() - complete;
        }
        for (n, line) in text[..complete].lines().enumerate() {
            let v = verifier.get_or_insert_with(|| {
                // The first record present decides where verification starts.
                match serde_json::from_str::<SignlogRecord>(line) {
                    Ok(r) if r.seq > FIRST_SEQ => ChainVerifier::resume(r.seq - 1, &r.prev_hash),
                    _ => ChainVerifier::new(),
                }
            });
            let record = v.push(line).map_err(|source| Error::SignlogDamaged {
                file: path.clone(),
                source,
            })?;
            if n == 0 && record.seq != first_seq {
                return Err(Error::SignlogInconsistent {
                    file: path.clone(),
                    reason: format!("named for seq {first_seq} but starts at {}", record.seq),
                });
            }
            records.push(record);
        }
    }
    let head = verifier.unwrap_or_default().head();
    Ok(SignlogContents {
        records,
        head,
        torn_tail_bytes,
    })
}

#[cfg(test)]
mod tests {
    use alga_protocol::signlog::{SignIds, SignOp};
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;

    fn event(i: u128) -> SignEvent {
        SignEvent {
            time: datetime!(2030-01-01 00:00 UTC),
            op: SignOp::License,
            ids: SignIds {
                tenant_id: Some(Uuid::from_u128(i)),
                jti: Some(Uuid::from_u128(i + 1000)),
                ..SignIds::default()
            },
            kid: "alga-license-v1".into(),
        }
    }

    fn small() -> SignlogOptions {
        SignlogOptions {
            max_file_bytes: 1000,
        }
    }

    #[tokio::test]
    async fn appends_rotate_and_resume_one_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SignLog::open(dir.path(), small()).expect("opens");
        for i in 0..12 {
            let logged = log.append(event(i)).await.expect("appends");
            assert_eq!(logged.seq, i as u64 + 1);
        }
        drop(log);
        let files = list_files(dir.path()).expect("lists");
        assert!(files.len() >= 3, "rotated: {files:?}");
        for (_, f) in &files {
            assert!(std::fs::metadata(f).expect("meta").len() <= 1000);
        }
        let log = SignLog::open(dir.path(), small()).expect("reopens");
        let logged = log.append(event(99)).await.expect("appends after restart");
        assert_eq!(logged.seq, 13);
        drop(log);
        let contents = read_dir(dir.path()).expect("verifies");
        assert_eq!(contents.records.len(), 13);
        assert_eq!(contents.head.last_seq, 13);
        assert_eq!(contents.head.last_hash, logged.hash);
        assert_eq!(contents.torn_tail_bytes, 0);
    }

    #[tokio::test]
    async fn concurrent_appends_get_distinct_consecutive_seqs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SignLog::open(dir.path(), SignlogOptions::default()).expect("opens");
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(event(i)).await.expect("appends").seq })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.expect("task"));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=64).collect::<Vec<u64>>());
        drop(log);
        assert_eq!(read_dir(dir.path()).expect("verifies").head.records, 64);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_but_damage_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SignLog::open(dir.path(), SignlogOptions::default()).expect("opens");
        for i in 0..3 {
            log.append(event(i)).await.expect("appends");
        }
        drop(log);
        let path = dir.path().join(file_name(1));
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(br#"{"seq":4,"time":"20"#).expect("write");
        drop(f);
        assert_eq!(read_dir(dir.path()).expect("reads").torn_tail_bytes, 19);
        let log =
            SignLog::open(dir.path(), SignlogOptions::default()).expect("reopens past a torn tail");
        assert_eq!(log.append(event(3)).await.expect("appends").seq, 4);
        drop(log);
        assert_eq!(read_dir(dir.path()).expect("verifies").head.records, 4);

        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(
            &path,
            text.replacen("alga-license-v1", "alga-license-v7", 1),
        )
        .expect("tamper");
        let err = SignLog::open(dir.path(), SignlogOptions::default()).expect_err("damaged");
        assert!(matches!(err, Error::SignlogDamaged { .. }), "{err}");
        let err = read_dir(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains("seq 1"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_write_breaks_the_log_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Every record gets its own file; the second one's name is taken by a directory.
        let log = SignLog::open(dir.path(), SignlogOptions { max_file_bytes: 1 }).expect("opens");
        log.append(event(0)).await.expect("appends");
        std::fs::create_dir(dir.path().join(file_name(2))).expect("mkdir");
        assert!(matches!(
            log.append(event(1)).await,
            Err(Error::SignlogUnavailable)
        ));
        assert!(!log.is_healthy());
        assert!(matches!(
            log.append(event(50)).await,
            Err(Error::SignlogUnavailable)
        ));
    }
}
