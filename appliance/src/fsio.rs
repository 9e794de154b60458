//! Crash-safe file writes: a temporary file in the same directory, created with its
//! final mode, written, fsynced, then renamed over the target, and the directory
//! fsynced. A reader (or a re-run after a power cut) sees the old file or the new one,
//! never half of one; a failure before the rename leaves no file behind.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Mode of every file holding a secret (key, token): owner read/write only.
pub const SECRET_MODE: u32 = 0o600;

/// A file prepared next to its target and not yet visible under the target's name.
/// Dropping it without [`Staged::commit`] removes the temporary file.
#[derive(Debug)]
pub struct Staged {
    tmp: Option<PathBuf>,
    target: PathBuf,
}

impl Staged {
    /// Writes `contents` to a fresh temporary file beside `target` (created with `mode`
    /// from the start, so a secret is never readable by others even for a moment) and
    /// fsyncs it.
    pub fn write(target: &Path, contents: &[u8], mode: u32) -> Result<Staged> {
        let dir = parent(target);
        let name = target
            .file_name()
            .ok_or_else(|| Error::Internal(format!("{} has no file name", target.display())))?;
        let mut staged = Staged {
            tmp: None,
            target: target.to_owned(),
        };
        for attempt in 0..16u32 {
            let tmp = dir.join(format!(
                ".{}.tmp-{}-{}",
                name.to_string_lossy(),
                std::process::id(),
                attempt
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
            {
                Ok(mut f) => {
                    staged.tmp = Some(tmp.clone());
                    f.write_all(contents)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| Error::io("write", &tmp, e))?;
                    return Ok(staged);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create", &tmp, e)),
            }
        }
        Err(Error::Internal(format!(
            "no free temporary name beside {}",
            target.display()
        )))
    }

    /// Renames the temporary file over the target and fsyncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let Some(tmp) = self.tmp.take() else {
            return Err(Error::Internal("staged file already committed".into()));
        };
        if let Err(e) = fs::rename(&tmp, &self.target) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("rename into place", &self.target, e));
        }
        sync_dir(parent(&self.target))
    }
}

impl Staged {
    /// Like [`Staged::commit`], but never replaces an existing target: the file is
    /// linked into place, which fails when the name is taken. Returns `false` (and
    /// removes the temporary file) when the target already existed.
    pub fn commit_new(mut self) -> Result<bool> {
        let Some(tmp) = self.tmp.take() else {
            return Err(Error::Internal("staged file already committed".into()));
        };
        let linked = fs::hard_link(&tmp, &self.target);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(parent(&self.target)).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("create", &self.target, e)),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Writes `contents` to `target` atomically (temporary file, fsync, rename, fsync dir).
pub fn write_atomic(target: &Path, contents: &[u8], mode: u32) -> Result<()> {
    Staged::write(target, contents, mode)?.commit()
}

/// Creates `dir` (and parents) when missing, mode 0700 for new directories.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// Reads a file that must exist.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io("read", path, e))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_atomic(&p, b"one", SECRET_MODE).expect("write");
        write_atomic(&p, b"two", SECRET_MODE).expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn commit_new_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        let first = Staged::write(&p, b"first", SECRET_MODE).expect("stage");
        let second = Staged::write(&p, b"second", SECRET_MODE).expect("stage");
        assert!(first.commit_new().expect("commit"));
        assert!(!second.commit_new().expect("commit"));
        assert_eq!(fs::read(&p).expect("read"), b"first");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn dropped_stage_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let s = Staged::write(&p, b"x", 0o644).expect("stage");
        drop(s);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
