//! Opening files an agent may have planted (DESIGN §11 INV-8): a verdict
//! file, a file in its worktree, a test log its test command wrote to.
//! The agent chooses what such a path *is* — a symlink to orch's secrets,
//! a FIFO that blocks the reader forever, `/dev/zero` — so orch opens
//! them only through here: the last component is never followed, only a
//! regular file is read, a path can be held inside a folder orch chose,
//! and reads are bounded.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Opens `path` for reading when it is a regular file: a symlink as the
/// last component is not followed (`O_NOFOLLOW`) and a FIFO or device
/// does not block the open (`O_NONBLOCK`) and is refused.
///
/// Errors: the open's own (`ELOOP` for a symlink, `NotFound`, …), or
/// [`io::ErrorKind::InvalidInput`] naming the kind of a file that is not
/// regular.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let kind = f.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file ({})",
                path.display(),
                if kind.is_dir() {
                    "a folder"
                } else {
                    "a FIFO, socket or device"
                }
            ),
        ));
    }
    Ok(f)
}

/// `path` with every symlink resolved, when that lies strictly inside
/// `dir` (itself resolved): the path to hand to [`open_regular`].
///
/// Errors: a message naming the path, when either does not resolve or
/// the path leads outside `dir`.
pub fn beneath(dir: &Path, path: &Path) -> Result<PathBuf, String> {
    let root = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let real = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if real == root || !real.starts_with(&root) {
        return Err(format!(
            "{} leads to {}, outside {}",
            path.display(),
            real.display(),
            root.display()
        ));
    }
    Ok(real)
}

/// At most `max_bytes` of `f`: its first bytes, or with `from_end` its
/// last.
///
/// Errors: I/O errors of the seek or read.
pub fn read_bounded(mut f: File, max_bytes: u64, from_end: bool) -> io::Result<Vec<u8>> {
    if from_end {
        let len = f.metadata()?.len();
        if len > max_bytes {
            f.seek(SeekFrom::Start(len - max_bytes))?;
        }
    }
    let mut bytes = Vec::new();
    f.take(max_bytes).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_folder_are_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("in");
        std::fs::create_dir(&dir).unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        std::fs::write(dir.join("ok"), "0123456789").unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("link")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        let f = open_regular(&dir.join("ok")).unwrap();
        assert_eq!(read_bounded(f, 4, false).unwrap(), b"0123");
        let f = open_regular(&dir.join("ok")).unwrap();
        assert_eq!(read_bounded(f, 4, true).unwrap(), b"6789");
        for p in ["link", "zero", "fifo"] {
            assert!(open_regular(&dir.join(p)).is_err(), "{p}");
        }
        let e = open_regular(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(open_regular(&dir).is_err());

        assert_eq!(
            beneath(&dir, &dir.join("ok")).unwrap(),
            dir.canonicalize().unwrap().join("ok")
        );
        for p in [
            dir.join("link"),
            dir.join("../secret"),
            dir.join("zero"),
            dir.clone(),
            dir.join("missing"),
        ] {
            assert!(beneath(&dir, &p).is_err(), "{}", p.display());
        }
    }
}
