//! Opening files an agent may have planted (DESIGN §11 INV-8): a verdict
//! file, a file in its worktree, a test log its test command wrote to, a
//! file an ACP agent asks orch to read or write ([`open_beneath`]).
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

/// Opens `rel` beneath the folder `root` for an agent that asked orch to
/// read or write it (the `acp` kind's `fs/*` requests): symlinks are
/// followed only while they stay beneath `root` — the kernel resolves the
/// whole path at once (`openat2` with `RESOLVE_BENEATH`), so a symlink the
/// agent swaps in meanwhile cannot lead out. Only a regular file with one
/// link is opened (a hard link could name a file outside). With `write`,
/// missing folders on the way are created (0755) and the file (0644); it
/// is opened for writing, not truncated. A FIFO does not block
/// (`O_NONBLOCK`).
///
/// `rel` must be relative, without `..`. Needs Linux ≥ 5.6 (`openat2`).
///
/// Errors: [`io::ErrorKind::InvalidInput`] for a `rel` that is absolute,
/// names `..` or holds a NUL byte, and for a file that is not regular or
/// has several links; the kernel's own (`EXDEV` for a path leading out of
/// `root`, `ENOENT`, `ELOOP`, `ENOSYS` on an older kernel).
pub fn open_beneath(root: &Path, rel: &Path, write: bool) -> io::Result<File> {
    use std::path::Component;
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(invalid(format!(
            "{} is not a plain relative path",
            rel.display()
        )));
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)?;
    let file = if write {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            make_dirs_beneath(&dir, parent)?;
        }
        openat_beneath(&dir, rel, libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK)?
    } else {
        openat_beneath(&dir, rel, libc::O_RDONLY | libc::O_NONBLOCK)?
    };
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(invalid(format!("{} is not a regular file", rel.display())));
    }
    if meta.nlink() > 1 {
        return Err(invalid(format!(
            "{} has {} hard links (one may lie outside)",
            rel.display(),
            meta.nlink()
        )));
    }
    Ok(file)
}

/// `openat2(dir, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
fn openat_beneath(dir: &File, rel: &Path, flags: libc::c_int) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", rel.display()),
        )
    })?;
    // SAFETY: open_how is plain integers; all-zero is its documented
    // "nothing asked" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { 0o644 } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid folder descriptor, a NUL-terminated path and a
    // pointer to an open_how of the size passed; the kernel returns a new
    // descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and is owned by no one.
    Ok(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

/// Creates the folders of `rel` beneath `dir` that are missing, each
/// resolved as [`open_beneath`] resolves paths.
fn make_dirs_beneath(dir: &File, rel: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    match openat_beneath(dir, rel, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = rel.file_name().unwrap_or_default();
    let parent = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => {
            make_dirs_beneath(dir, p)?;
            openat_beneath(dir, p, libc::O_RDONLY | libc::O_DIRECTORY)?
        }
        None => dir.try_clone()?,
    };
    let c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))?;
    // SAFETY: a valid folder descriptor and a NUL-terminated name without
    // a slash (one path component).
    if unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    openat_beneath(dir, rel, libc::O_RDONLY | libc::O_DIRECTORY).map(drop)
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

    #[test]
    fn open_beneath_follows_symlinks_only_while_they_stay_inside() {
        use std::io::Write as _;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("wt");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(tmp.path().join("secret"), "s3cret").unwrap();
        std::fs::write(root.join("docs/a.md"), "inside").unwrap();
        std::os::unix::fs::symlink("docs", root.join("doc-link")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("secret-link")).unwrap();
        std::fs::hard_link(tmp.path().join("secret"), root.join("hard")).unwrap();

        let f = open_beneath(&root, Path::new("doc-link/a.md"), false).unwrap();
        assert_eq!(read_bounded(f, 100, false).unwrap(), b"inside");
        for p in ["out/secret", "secret-link", "hard", "docs", "../secret"] {
            assert!(open_beneath(&root, Path::new(p), false).is_err(), "{p}");
            assert!(open_beneath(&root, Path::new(p), true).is_err(), "{p}");
        }
        assert!(open_beneath(&root, Path::new("/etc/passwd"), false).is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("secret")).unwrap(),
            "s3cret"
        );
        // Missing folders are made beneath; never through a link that leaves.
        let mut f = open_beneath(&root, Path::new("new/deep/b.txt"), true).unwrap();
        f.write_all(b"made").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("new/deep/b.txt")).unwrap(),
            "made"
        );
        assert!(open_beneath(&root, Path::new("out/planted/c.txt"), true).is_err());
        assert!(!tmp.path().join("planted").exists());
    }
}
