//! File locks: tick locks (non-blocking) and path locks for git operations
//! (blocking). All of orch's flock(2) use lives here.
//!
//! We use the standard library's `File::try_lock`/`File::lock` (flock(2)
//! on Linux) rather than fs2: since Rust 1.89 the std methods shadow fs2's
//! same-named ones (fs2-rs issue 50). Rust opens files with `O_CLOEXEC`, so
//! an agent child never inherits a lock. Locks are released when the
//! returned guard (the open file) is dropped or the process dies.
//!
//! Assumptions: the lock directory is on a local file system; callers run
//! [`ensure_local_fs`] on the state directory first. The database files are
//! never locked here (SQLite does its own locking).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::Error;

/// A held lock. Dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_lock_file(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating lock directory {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))
}

/// Take the exclusive, non-blocking tick lock `<locks_dir>/<name>.lock`.
///
/// Errors: [`Error::LockBusy`] (exit 75) when another process holds it.
pub fn try_tick_lock(locks_dir: &Path, name: &str) -> anyhow::Result<LockGuard> {
    let path = locks_dir.join(format!("{name}.lock"));
    let file = open_lock_file(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(LockGuard { _file: file, path }),
        Err(TryLockError::WouldBlock) => Err(Error::LockBusy {
            name: name.to_string(),
            held: path.display().to_string(),
        }
        .into()),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Take an exclusive lock for a filesystem path (a worktree or a shared
/// clone), blocking until it is free. The lock file is
/// `<locks_dir>/path-<sanitised path>.lock`, so the locked folder itself
/// is never touched.
pub fn path_lock(locks_dir: &Path, target: &Path) -> anyhow::Result<LockGuard> {
    let path = locks_dir.join(format!("path-{}.lock", sanitise(target)));
    let file = open_lock_file(&path)?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(LockGuard { _file: file, path })
}

/// The run lock file of a worktree: `<locks_dir>/run-<sanitised path>.lock`
/// (DESIGN §11 INV-10). Whoever holds an agent's lifetime in that
/// worktree — today the worker during the run and its finalize — holds
/// an exclusive flock on it, and the file names the holder (`job 12
/// epoch 2 host a pid 345`); a run of another epoch that finds it held
/// does not use the worktree. Distinct from the short path lock of
/// [`path_lock`], which every git call on the worktree takes.
pub fn run_lock_path(locks_dir: &Path, worktree: &Path) -> PathBuf {
    locks_dir.join(format!("run-{}.lock", sanitise(worktree)))
}

/// Takes the run lock at `path` ([`run_lock_path`]) without waiting and,
/// when given, writes `holder` into it (`None` keeps what the last holder
/// wrote: a look whether it is free). Returns `Err` with what the holder
/// wrote when another open file holds it.
///
/// Errors: I/O errors opening or locking the file.
pub fn try_run_lock(
    path: &Path,
    holder: Option<&str>,
) -> anyhow::Result<Result<LockGuard, String>> {
    use std::io::{Seek, Write};
    let mut file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => {
            if let Some(holder) = holder {
                file.set_len(0)?;
                file.seek(std::io::SeekFrom::Start(0))?;
                file.write_all(holder.as_bytes())?;
            }
            Ok(Ok(LockGuard {
                _file: file,
                path: path.to_path_buf(),
            }))
        }
        Err(TryLockError::WouldBlock) => {
            let held_by = std::fs::read_to_string(path).unwrap_or_default();
            Ok(Err(held_by.trim().to_string()))
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

fn sanitise(target: &Path) -> String {
    target
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Refuse to run when `dir` is on NFS, where flock(2) may hang or lie.
///
/// Errors: [`Error::NetworkFs`]; an I/O error if `dir` cannot be inspected.
pub fn ensure_local_fs(dir: &Path) -> anyhow::Result<()> {
    const NFS_SUPER_MAGIC: i64 = 0x6969;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("state directory path contains a NUL byte")?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string for the duration of the call.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", dir.display()));
    }
    #[allow(clippy::unnecessary_cast)]
    if buf.f_type as i64 == NFS_SUPER_MAGIC {
        return Err(Error::NetworkFs(dir.to_path_buf()).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_tick_lock_is_busy_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_tick_lock(dir.path(), "reap").unwrap();
        let err = try_tick_lock(dir.path(), "reap").unwrap_err();
        assert!(matches!(
            err.downcast_ref::<Error>(),
            Some(Error::LockBusy { .. })
        ));
        drop(first);
        // Another test thread that forks (to run git) between our open and
        // its exec briefly shares the open file, and with it the lock: allow
        // that window to close.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Err(e) = try_tick_lock(dir.path(), "reap") {
            assert!(std::time::Instant::now() < deadline, "{e:#}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn local_tempdir_is_not_nfs() {
        let dir = tempfile::tempdir().unwrap();
        ensure_local_fs(dir.path()).unwrap();
    }
}
