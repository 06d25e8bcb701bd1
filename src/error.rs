//! Typed errors that callers branch on, and the exit code each one maps to.
//!
//! The core returns [`Error`] for conditions an operator or a caller acts on
//! (lock busy → retry next tick, lost claim → someone else won, bad config →
//! fix the named key). Everything else travels as `anyhow::Error` with
//! context and exits 1.

use std::path::PathBuf;

/// Exit codes of the `orch` binary (DESIGN §2).
pub mod exit {
    /// Success, also "nothing to do".
    pub const OK: i32 = 0;
    /// Any error not listed below.
    pub const ERROR: i32 = 1;
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// A check or gate verdict is FAIL.
    pub const VERDICT_FAIL: i32 = 3;
    /// EX_TEMPFAIL: another instance holds the tick lock, or the database
    /// stayed locked past the busy timeout; safe to retry on the next tick.
    pub const BUSY: i32 = 75;
}

/// Errors the core reports and callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A non-blocking tick lock (`<state_dir>/locks/<name>.lock`, or on a
    /// shared store the lease `tick:<name>`) is held by another process;
    /// `held` says where (the lock file, or the lease and its holder).
    #[error("another orch process holds the {name} lock ({held})")]
    LockBusy { name: String, held: String },

    /// The database stayed locked past `ORCH_BUSY_TIMEOUT_MS`.
    #[error("database is busy (locked past the busy timeout): {0}")]
    DbBusy(String),

    /// A setting or config key has a value orch cannot use.
    #[error("config: {key}: {message}")]
    Config { key: String, message: String },

    /// The database was written by a newer orch than this binary.
    #[error(
        "database schema version {db} is newer than this binary supports ({binary}); \
         upgrade orch instead of downgrading the database"
    )]
    SchemaTooNew { db: i64, binary: i64 },

    /// The database file does not exist: nothing but `orch init` creates
    /// one.
    #[error(
        "no database at {}: run `orch init` to create it (or point --db / ORCH_DB at it)",
        crate::sql::shown(path)
    )]
    NotInitialised { path: PathBuf },

    /// The database needs migrating: nothing but `orch init` migrates.
    #[error(
        "database {} has schema version {db}, this orch needs {binary}: run `orch init` to migrate it",
        crate::sql::shown(path)
    )]
    SchemaTooOld { path: PathBuf, db: i64, binary: i64 },

    /// The state directory is on a network file system, where flock(2) is
    /// unreliable.
    #[error("state directory {0} is on NFS; file locks there are unreliable, refusing to run")]
    NetworkFs(PathBuf),

    /// A git ref that orch refuses to touch (e.g. a push whose destination
    /// is the default branch, or a branch name that fails validation).
    #[error("refusing ref {name:?}: {reason}")]
    InvalidRef { name: String, reason: String },

    /// A child process (git, test command) failed. `stderr_tail` is the last
    /// few KiB of its stderr.
    #[error("{argv:?} failed with {status}: {stderr_tail}")]
    Subprocess {
        argv: Vec<String>,
        status: String,
        stderr_tail: String,
    },

    /// A repository's own git config sets keys that make git run a program
    /// (hooks path, fsmonitor, pager, ssh command, credential helper,
    /// filter/diff/merge drivers, includes…); orch runs no git there
    /// (DESIGN §11, invariant 8).
    #[error(
        "refusing to run git: {file} sets program-running keys {keys:?} \
         (orch never sets them; remove them, or set what you need in the orch user's global git config)"
    )]
    UnsafeGitConfig { file: PathBuf, keys: Vec<String> },

    /// A worktree's git metadata is not what orch wrote (its `.git` file,
    /// its admin folder's `commondir`, `gitdir` or `HEAD`, a rebase's
    /// `head-name`): an agent could point orch's git at a repository of its
    /// choosing, so orch runs no git there (DESIGN §11, invariant 8).
    /// `found` says what `file` holds or is ("points to /x", "is a
    /// directory"), `expected` what orch wrote.
    #[error(
        "refusing to run git in worktree {}: {} {found}, but orch wrote {expected} \
         (git metadata changed since orch made the worktree; the next run of the task re-creates it)",
        worktree.display(),
        file.display()
    )]
    TamperedGitMetadata {
        worktree: PathBuf,
        file: PathBuf,
        found: String,
        expected: String,
    },

    /// An input (a delivery, an outbox message) that can never succeed as
    /// it is: retrying it cannot help, so it gets one recorded outcome and
    /// no retries (e.g. a work item whose branch belongs to another task,
    /// a remote's 4xx refusal).
    #[error("{0}")]
    Permanent(String),

    /// A command-line argument names something that does not exist or
    /// cannot be applied (unknown task id, illegal manual transition).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::LockBusy { .. } | Error::DbBusy(_) => exit::BUSY,
            Error::Config { .. }
            | Error::Usage(_)
            | Error::NotInitialised { .. }
            | Error::SchemaTooOld { .. } => exit::USAGE,
            _ => exit::ERROR,
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Whether `err` will fail the same way however often it is retried: a
/// typed [`Error::Permanent`], [`Error::Config`], [`Error::InvalidRef`],
/// [`Error::UnsafeGitConfig`] or [`Error::TamperedGitMetadata`] anywhere in
/// the chain, or a SQLite
/// constraint violation (the same row conflicts the same way next time).
pub fn is_permanent(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return matches!(
                e,
                Error::Permanent(_)
                    | Error::Config { .. }
                    | Error::InvalidRef { .. }
                    | Error::UnsafeGitConfig { .. }
                    | Error::TamperedGitMetadata { .. }
            );
        }
        crate::sql::Error::test_cause(cause, crate::sql::Error::is_constraint)
    })
}

/// The exit code for any error chain: the first typed [`Error`] in the
/// chain decides; a busy/locked database (SQLite busy, PostgreSQL lock
/// timeout, serialization failure or deadlock) means [`exit::BUSY`].
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return e.exit_code();
        }
        if crate::sql::Error::test_cause(cause, crate::sql::Error::is_busy) {
            return exit::BUSY;
        }
    }
    exit::ERROR
}
