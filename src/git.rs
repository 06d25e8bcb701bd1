//! Every git invocation orch makes, in one place.
//!
//! Why one module: the default branch is the one thing orch must never
//! damage (DESIGN §11, invariant 6). Keeping every git call here means the
//! rules that protect it — task branches only carry the `orch/` prefix,
//! pushes never force except with an explicit lease on a task branch, the
//! default branch only moves by a non-forced fast-forward push — are
//! enforced and tested in a single file.
//!
//! How git is run: the `git` binary via [`std::process::Command`] with
//! explicit arguments, never a shell; stdin is `/dev/null`, and an explicit
//! minimal environment ([`KEPT_ENV`] from orch's own, nothing else: no
//! `ORCH_*` secret, no `GIT_DIR`-style redirection) plus
//! `GIT_TERMINAL_PROMPT=0` (a missing credential fails instead of
//! hanging) and `LC_ALL=C` (stable messages).
//!
//! Nothing an agent writes runs with orch's privileges (DESIGN §11,
//! invariant 8): an agent can write into the shared clone, so every call
//! passes `-c core.hooksPath=/dev/null -c core.fsmonitor=false
//! -c protocol.ext.allow=never` (no hook, no fsmonitor, no `ext::` remote
//! ever runs), and before running git in a repository orch reads that
//! repository's own config files (`config`, `config.worktree`, includes not
//! followed) and refuses with [`Error::UnsafeGitConfig`] when one sets a key
//! that makes git run a program ([`is_program_key`]: `core.sshCommand`,
//! `core.pager`, `credential.helper`, filter/diff/merge drivers,
//! `include.path`, …). orch never writes such keys into a clone; an
//! operator who needs one sets it in the orch user's global git config,
//! which orch trusts.
//!
//! An agent can also write its worktree's git metadata: the worktree's
//! `.git` file and, in the clone, the worktree's admin folder
//! (`<clone>/worktrees/<name>/`, writable in the sandbox so the agent can
//! commit), whose `commondir` says where the refs, objects and config are.
//! Rewritten, they would point orch's own commit and push at a repository
//! of the agent's choosing. So orch never follows them:
//! `Repo::check_worktree`, which every method runs before git touches a
//! worktree, compares them with what `git worktree add` wrote — `.git` a
//! regular file `gitdir: <clone>/worktrees/<name>` (not a directory, not a
//! symbolic link), `commondir` `../..`, `gitdir` the worktree's own `.git`
//! — and git then runs there with `--git-dir <admin> --work-tree
//! <worktree>` and `GIT_COMMON_DIR=<clone>` from that check, never reading
//! `.git` or `commondir` itself (so a check and the git after it cannot
//! disagree). Where the branch is known, the admin folder's `HEAD` must be
//! the task branch (before a push, and in [`Repo::ensure_worktree`]), and a
//! rebase left in progress is aborted only when its `head-name` is a task
//! branch (`git rebase --abort` moves and checks out that ref). The admin
//! folder's own `config` and `objects/info/alternates` are not read by git
//! when the common dir is given; its `config.worktree` is checked for
//! program-running keys like the clone's `config`. Any difference is
//! [`Error::TamperedGitMetadata`], naming the file and what it held: the
//! job fails at once ([`crate::error::is_permanent`]), and the next run of the task
//! re-creates the worktree from origin's branch
//! ([`Repo::drop_tampered_worktree`]). Every other git call runs in a
//! repository orch made (the bare clone, a clone view) and is refused for
//! a directory whose `.git` is a file.
//!
//! Commits and rebases pass `-c user.name=orch -c user.email=orch@localhost
//! -c commit.gpgsign=false -c rerere.enabled=false` so they work on a
//! machine with no git identity or signing key, and a conflict is never
//! silently auto-resolved.
//! Every failure is [`Error::Subprocess`] with the argv, the exit status and
//! the last ~2 KiB of stderr; refused names are [`Error::InvalidRef`].
//!
//! Layout: one bare clone per project at `<state_dir>/repos/<project>`
//! (remote `origin`, remote-tracking refs under `refs/remotes/origin/*`,
//! local branches only for task branches) and one worktree per task at
//! `<state_dir>/worktrees/<project>/<branch with / replaced by ->`.
//!
//! Locks (DESIGN §3): methods take the path locks they need themselves, in
//! the fixed order worktree → clone, and release them before returning.
//! The locks are flock(2) on separate open files, which is not re-entrant:
//! a caller must NOT already hold `path_lock` on the same worktree or clone
//! when calling a method of [`Repo`], or it deadlocks with itself.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context};

use crate::error::Error;
use crate::lock::{path_lock, LockGuard};

/// How much of a failed command's stderr is kept in [`Error::Subprocess`].
const STDERR_TAIL_BYTES: usize = 2048;

/// Config overrides for commands that create commits (identity, no signing,
/// no rerere auto-resolution that would hide a conflict).
const COMMIT_CONFIG: [&str; 10] = [
    "-c",
    "user.name=orch",
    "-c",
    "user.email=orch@localhost",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "rerere.enabled=false",
    "-c",
    "core.editor=true",
];

/// The only variables of orch's environment a git child sees: what finding
/// programs, the user's own git and ssh configuration, proxies and TLS
/// roots need. Everything else — every `ORCH_*` secret, `GIT_DIR`-style
/// redirections, `GIT_SSH_COMMAND` — is dropped.
pub const KEPT_ENV: [&str; 17] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "SSH_AUTH_SOCK",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Config overrides on every git call: no hook, no fsmonitor, no `ext::`
/// transport runs, whatever the repository's config or hooks folder says;
/// no background gc or maintenance (a detached gc could hold locks after
/// its orch is gone); an HTTP remote slower than 1 KiB/s for a minute is
/// given up on, so a stalled forge cannot hang a worker forever; a new
/// worktree's `.git` and admin files hold absolute paths (git 2.48's
/// `worktree.useRelativePaths` off), which is what
/// [`Repo::check_worktree`] expects.
const SAFE_CONFIG: [&str; 16] = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "http.lowSpeedLimit=1024",
    "-c",
    "http.lowSpeedTime=60",
    "-c",
    "worktree.useRelativePaths=false",
];

/// One project's shared clone and origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// `<state_dir>/locks`; where [`path_lock`] files go.
    pub locks_dir: PathBuf,
    /// `<state_dir>/repos/<project>`; a bare clone owned by orch.
    pub clone_dir: PathBuf,
    /// Any git URL (a local path in tests).
    pub origin_url: String,
    /// The protected branch, e.g. `main`.
    pub default_branch: String,
    /// Prefix every task branch must carry, normally `orch/`.
    pub branch_prefix: String,
}

/// Result of [`Repo::rebase_onto_default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebaseOutcome {
    /// The branch already contains origin's default branch; nothing done.
    UpToDate,
    /// The branch was rebased; the worktree's HEAD is now `new_head`.
    Rebased { new_head: String },
    /// The rebase stopped on conflicts in `files`; it was aborted and the
    /// worktree is back, clean, on its original commit.
    Conflict { files: Vec<String> },
}

/// Result of [`Repo::merge_default_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeIn {
    /// The branch already contains origin's default branch; nothing done.
    UpToDate,
    /// Merged cleanly and committed; HEAD is now `sha`.
    Merged { sha: String },
    /// The merge stopped on conflicts in `files`, left in progress.
    Conflict { files: Vec<String> },
}

/// Result of [`Repo::fast_forward_default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastForward {
    /// Origin's default branch now points at `sha`.
    Merged { sha: String },
    /// Origin's default branch already contains the branch head.
    AlreadyMerged,
    /// Origin's default branch is not an ancestor of the branch head (it
    /// moved); nothing was pushed. Rebase first.
    NotFastForward,
}

// ---------------------------------------------------------------------------
// Running git

/// The captured result of one git run.
struct GitOutput {
    argv: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl GitOutput {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn success(&self) -> bool {
        self.status.success()
    }

    /// The typed error for this (failed) run.
    fn into_error(self) -> Error {
        let mut text = self.stderr;
        if !self.stdout.trim().is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("[stdout] ");
            text.push_str(&self.stdout);
        }
        Error::Subprocess {
            argv: self.argv,
            status: self.status.to_string(),
            stderr_tail: tail(text.trim_end(), STDERR_TAIL_BYTES).to_string(),
        }
    }

    /// `Ok(stdout)` on exit 0, else [`Error::Subprocess`].
    fn ok(self) -> Result<String, Error> {
        if self.success() {
            Ok(self.stdout)
        } else {
            Err(self.into_error())
        }
    }
}

/// The last `max` bytes of `s`, cut on a char boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Where orch runs git.
#[derive(Clone, Copy)]
enum At<'a> {
    /// In no repository (`init`, `ls-remote`).
    Nowhere,
    /// In a repository that is not a linked worktree: the bare clone, a
    /// clone view, a scratch repository (`git -C <dir>`, discovery stopped
    /// above it). Refused for a directory whose `.git` is a file: that is a
    /// worktree, which only runs as [`At::Worktree`].
    Dir(&'a Path),
    /// In a worktree whose metadata [`Repo::check_worktree`] checked:
    /// `git -C <path> --git-dir <admin> --work-tree <path>` with
    /// `GIT_COMMON_DIR=<clone>`, so git reads neither the worktree's `.git`
    /// file nor the admin folder's `commondir`.
    Worktree(&'a Worktree),
}

impl<'a> From<&'a Path> for At<'a> {
    fn from(dir: &'a Path) -> Self {
        At::Dir(dir)
    }
}

impl<'a> From<&'a PathBuf> for At<'a> {
    fn from(dir: &'a PathBuf) -> Self {
        At::Dir(dir)
    }
}

impl<'a> From<&'a Worktree> for At<'a> {
    fn from(wt: &'a Worktree) -> Self {
        At::Worktree(wt)
    }
}

/// Run `git args...` at `at` with the scrubbed environment plus `env`.
/// Never fails on a non-zero exit; only on spawn failure or a refusal
/// (unsafe config; a worktree run as a plain directory).
fn run_git_env(at: At<'_>, args: &[&str], env: &[(&str, &str)]) -> Result<GitOutput, Error> {
    let mut argv = vec!["git".to_string()];
    let mut cmd = Command::new("git");
    let mut located: Vec<(&str, &std::ffi::OsStr)> = Vec::new();
    match at {
        At::Nowhere => {}
        At::Dir(dir) => {
            if std::fs::symlink_metadata(dir.join(".git")).is_ok_and(|m| !m.is_dir()) {
                return Err(Error::Subprocess {
                    argv,
                    status: format!(
                        "not started: {} is a linked worktree, run only after its metadata is checked",
                        dir.display()
                    ),
                    stderr_tail: String::new(),
                });
            }
            refuse_unsafe_config(&repo_config_files(dir))?;
            cmd.arg("-C").arg(dir);
            argv.push("-C".into());
            argv.push(dir.to_string_lossy().into_owned());
            // Never wander up into an enclosing repository whose config was
            // not checked.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                located.push(("GIT_CEILING_DIRECTORIES", parent.as_os_str()));
            }
        }
        At::Worktree(wt) => {
            refuse_unsafe_config(&[wt.common.join("config"), wt.admin.join("config.worktree")])?;
            for (flag, value) in [
                ("-C", &wt.path),
                ("--git-dir", &wt.admin),
                ("--work-tree", &wt.path),
            ] {
                cmd.arg(flag).arg(value);
                argv.push(flag.into());
                argv.push(value.to_string_lossy().into_owned());
            }
            located.push(("GIT_COMMON_DIR", wt.common.as_os_str()));
        }
    }
    cmd.args(SAFE_CONFIG);
    cmd.args(args);
    argv.extend(args.iter().map(|a| a.to_string()));
    minimal_env(&mut cmd);
    // After minimal_env, which clears every variable set before it.
    cmd.envs(located);
    cmd.envs(env.iter().copied()).stdin(Stdio::null());
    // A git whose orch died must not keep working on a worktree whose lock
    // is gone (and whose index.lock the next actor will clear).
    crate::process::die_with_parent(&mut cmd);
    tracing::debug!(?argv, "git");
    match cmd.output() {
        Ok(out) => Ok(GitOutput {
            argv,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Err(e) => Err(Error::Subprocess {
            argv,
            status: format!("failed to start: {e}"),
            stderr_tail: String::new(),
        }),
    }
}

/// A worktree of the clone whose git metadata [`Repo::check_worktree`]
/// checked against what orch wrote: git runs there with these paths given
/// explicitly ([`At::Worktree`]).
#[derive(Debug, Clone)]
struct Worktree {
    /// The worktree, absolute.
    path: PathBuf,
    /// Its admin folder, `<clone>/worktrees/<name>` (the clone's real path).
    admin: PathBuf,
    /// The clone's real path: the common git directory.
    common: PathBuf,
}

/// Largest git metadata file read (a `gitdir:` line, a ref name).
const MAX_META_BYTES: u64 = 4096;

/// The text of `path` when it is a regular file (not a symbolic link) of at
/// most [`MAX_META_BYTES`]; else what it is instead, phrased to follow the
/// file's name in a message ("is missing", "is a directory", …).
fn read_plain_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("is missing".into()),
        Err(e) => return Err(format!("cannot be read ({e})")),
    };
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(path).unwrap_or_default();
        return Err(format!("is a symbolic link to {}", to.display()));
    }
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_META_BYTES {
        return Err(format!("is {} bytes long", meta.len()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_META_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("cannot be read ({e})"))?;
    Ok(text)
}

/// `text` for a message: quoted, escaped, at most 200 characters.
fn shown(text: &str) -> String {
    let t = text.strip_suffix('\n').unwrap_or(text);
    match t.char_indices().nth(200) {
        Some((end, _)) => format!("{:?}…", &t[..end]),
        None => format!("{t:?}"),
    }
}

/// The admin folder (`<clone>/worktrees/<name>`) that worktree
/// `worktree`'s `.git` file (a regular file) points to, canonical, when
/// that folder names the worktree back (its `gitdir` is `<worktree>/.git`)
/// and its `commondir` is `../..`; `None` otherwise. For the sandbox's
/// writable list, made right after a [`Repo`] method checked the worktree:
/// the back-reference keeps a `.git` changed since then from making some
/// other folder writable.
pub fn worktree_admin_dir(worktree: &Path) -> Option<PathBuf> {
    read_plain_file(&worktree.join(".git")).ok()?;
    let admin = Repo::worktree_gitdir(worktree)?.canonicalize().ok()?;
    let own = worktree.canonicalize().ok()?.join(".git");
    let back = read_plain_file(&admin.join("gitdir")).ok()?;
    let common = read_plain_file(&admin.join("commondir")).ok()?;
    (Path::new(back.trim_end()) == own && common.trim_end() == "../..").then_some(admin)
}

/// Replaces `cmd`'s environment with [`KEPT_ENV`] taken from orch's own,
/// plus `GIT_TERMINAL_PROMPT=0`, `LC_ALL=C`, `GIT_EDITOR=true` and
/// `GIT_CONFIG_NOSYSTEM` unset (the system config is root's and trusted).
fn minimal_env(cmd: &mut Command) {
    cmd.env_clear();
    for var in KEPT_ENV {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_EDITOR", "true");
}

/// Whether config key `name` (as `git config --list` prints it: section and
/// key lower-case, subsection verbatim) makes git run a program, read
/// another config file, or send credentials somewhere: such keys are never
/// accepted in a repository's own config.
pub fn is_program_key(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let (section, rest) = lower.split_once('.').unwrap_or((lower.as_str(), ""));
    // The variable is after the last dot; a subsection may hold dots.
    let (sub, key) = match rest.rsplit_once('.') {
        Some((sub, key)) => (Some(sub), key),
        None => (None, rest),
    };
    match (section, sub, key) {
        ("core", None, k) => matches!(
            k,
            "sshcommand"
                | "pager"
                | "askpass"
                | "gitproxy"
                | "fsmonitor"
                | "hookspath"
                | "editor"
                | "alternaterefscommand"
                | "worktree"
        ),
        ("sequence", None, "editor") => true,
        ("diff", None, "external") => true,
        ("diff", Some(_), "command" | "textconv") => true,
        ("merge", Some(_), "driver") => true,
        ("filter", Some(_), "clean" | "smudge" | "process") => true,
        ("credential", _, "helper") => true,
        ("gpg", _, "program") => true,
        ("include", None, "path") | ("includeif", Some(_), "path") => true,
        ("remote", Some(_), "uploadpack" | "receivepack" | "vcs") => true,
        ("pager", _, _) => true,
        ("difftool" | "mergetool", Some(_), "cmd") => true,
        ("uploadpack", None, "packobjectshook") => true,
        ("protocol", _, "allow") => true,
        _ => false,
    }
}

/// The config files git reads from the repository at `dir` itself: a
/// worktree's (its `.git` file → admin dir → `commondir`), a non-bare
/// repository's `.git/`, or a bare repository's own; missing files left
/// out.
fn repo_config_files(dir: &Path) -> Vec<PathBuf> {
    let dotgit = dir.join(".git");
    let (common, admin) = if dotgit.is_file() {
        let Some(admin) = Repo::worktree_gitdir(dir) else {
            return Vec::new();
        };
        let common = match std::fs::read_to_string(admin.join("commondir")) {
            Ok(c) if Path::new(c.trim()).is_absolute() => PathBuf::from(c.trim()),
            Ok(c) => admin.join(c.trim()),
            Err(_) => admin.clone(),
        };
        (common, admin)
    } else if dotgit.is_dir() {
        (dotgit.clone(), dotgit)
    } else {
        (dir.to_path_buf(), dir.to_path_buf())
    };
    [common.join("config"), admin.join("config.worktree")]
        .into_iter()
        .filter(|f| f.is_file())
        .collect()
}

/// What identifies one version of a file: inode, change time (which no
/// unprivileged `touch` can set back), size.
type Stamp = (u64, i64, i64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.ctime(), m.ctime_nsec(), m.size()))
}

/// The program-running keys set in config file `file`, read with
/// `git config --file <file> --no-includes --list` (nothing in it runs);
/// remembered per file version, since every git call asks.
fn program_keys_in(file: &Path) -> Result<Vec<String>, Error> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Seen = HashMap<PathBuf, (Stamp, Vec<String>)>;
    static SEEN: Mutex<Option<Seen>> = Mutex::new(None);
    let before = stamp(file);
    if let Some(st) = before {
        let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, keys)) = seen.as_ref().and_then(|m| m.get(file)) {
            if *s == st {
                return Ok(keys.clone());
            }
        }
    }
    let mut cmd = Command::new("git");
    cmd.args(["config", "--file"]).arg(file).args([
        "--no-includes",
        "--null",
        "--name-only",
        "--list",
    ]);
    minimal_env(&mut cmd);
    cmd.stdin(Stdio::null());
    let argv = vec![
        "git".to_string(),
        "config".into(),
        "--file".into(),
        file.to_string_lossy().into_owned(),
        "--list".into(),
    ];
    let out = cmd.output().map_err(|e| Error::Subprocess {
        argv: argv.clone(),
        status: format!("failed to start: {e}"),
        stderr_tail: String::new(),
    })?;
    if !out.status.success() {
        return Err(Error::UnsafeGitConfig {
            file: file.to_path_buf(),
            keys: vec![format!(
                "(unreadable: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            )],
        });
    }
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .map(|k| k.trim())
        .filter(|k| !k.is_empty() && is_program_key(k))
        .map(str::to_string)
        .collect();
    if let Some(st) = before {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        seen.get_or_insert_with(HashMap::new)
            .insert(file.to_path_buf(), (st, keys.clone()));
    }
    Ok(keys)
}

/// Refuses ([`Error::UnsafeGitConfig`]) to run git in a repository when
/// one of its own config files `files` (missing ones skipped) sets a
/// program-running key.
fn refuse_unsafe_config(files: &[PathBuf]) -> Result<(), Error> {
    for file in files.iter().filter(|f| f.is_file()).cloned() {
        let keys = program_keys_in(&file)?;
        if !keys.is_empty() {
            tracing::error!(target: "git", file = %file.display(), keys = ?keys, "refusing to run git: repository config sets program-running keys");
            return Err(Error::UnsafeGitConfig { file, keys });
        }
    }
    Ok(())
}

/// The problems `orch check` reports for the repository at `dir` (a clone
/// or a worktree): program-running keys in its config, and whether orch's
/// git runs with hooks and fsmonitor off. Read-only.
pub fn audit(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for file in repo_config_files(dir) {
        match program_keys_in(&file) {
            Ok(keys) if keys.is_empty() => {}
            Ok(keys) => problems.push(format!(
                "{} sets program-running keys {}; orch refuses to run git there until they are removed",
                file.display(),
                keys.join(", ")
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems
}

/// Proves, on a scratch repository under `scratch`, that orch's git runs
/// no hook and no fsmonitor: plants both, makes a commit the way orch
/// does, and reports what ran. `Ok(())` when nothing ran.
///
/// Errors: a description of what ran, or why the probe could not be made.
pub fn probe_hooks_off(scratch: &Path) -> anyhow::Result<()> {
    let repo = scratch.join("probe");
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(repo.join(".git/hooks"))?;
    let marker = scratch.join("probe-ran");
    let _ = std::fs::remove_file(&marker);
    run_git_env(At::Nowhere, &["init", "--quiet", utf8(&repo)?], &[])?.ok()?;
    let script = format!("#!/bin/sh\necho \"$0\" >> '{}'\n", marker.display());
    for hook in [
        "pre-commit",
        "commit-msg",
        "post-commit",
        "reference-transaction",
    ] {
        let path = repo.join(".git/hooks").join(hook);
        std::fs::write(&path, &script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(repo.join("f"), "x")?;
    git_ok(&repo, &["add", "f"])?;
    git_commit_ok(&repo, &["commit", "--quiet", "-m", "probe"])?.ok()?;
    let ran = std::fs::read_to_string(&marker).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&repo);
    let _ = std::fs::remove_file(&marker);
    if !ran.is_empty() {
        bail!("git hooks ran under orch's git: {}", ran.trim());
    }
    Ok(())
}

fn run_git<'a>(at: impl Into<At<'a>>, args: &[&str]) -> Result<GitOutput, Error> {
    run_git_env(at.into(), args, &[])
}

/// Run git at `at`; `Ok(stdout)` on exit 0, else [`Error::Subprocess`].
fn git_ok<'a>(at: impl Into<At<'a>>, args: &[&str]) -> Result<String, Error> {
    run_git(at, args)?.ok()
}

/// Like [`run_git`] with [`COMMIT_CONFIG`] in front of `args`.
fn git_commit_ok<'a>(at: impl Into<At<'a>>, args: &[&str]) -> Result<GitOutput, Error> {
    let mut full: Vec<&str> = COMMIT_CONFIG.to_vec();
    full.extend_from_slice(args);
    run_git(at, &full)
}

/// `url` with the user-info part (`user:token@`) of a `scheme://` URL
/// replaced by `***@`, for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_string()
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path is not valid UTF-8: {}", path.display()))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

// ---------------------------------------------------------------------------
// Name validation

fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::InvalidRef {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Checks every branch name orch puts into a refspec or rev must pass:
/// a plain short branch name that git accepts, with no revision syntax.
///
/// Errors: [`Error::InvalidRef`] naming the first reason found;
/// [`Error::Subprocess`] only if git cannot be started.
pub fn validate_branch_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid(name, "empty branch name"));
    }
    if name.starts_with('-') {
        return Err(invalid(name, "starts with '-'"));
    }
    if name.starts_with("refs/") {
        return Err(invalid(
            name,
            "is a full ref name (starts with \"refs/\"); expected a short branch name",
        ));
    }
    for pat in ["..", ":", "^", "~", "@{", "\\", "?", "*", "["] {
        if name.contains(pat) {
            return Err(invalid(name, format!("contains {pat:?}")));
        }
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(name, "contains whitespace or a control character"));
    }
    if name == "HEAD" {
        return Err(invalid(name, "is HEAD"));
    }
    // The rest of git-check-ref-format(1), checked here rather than by
    // spawning git: this runs inside write transactions (task creation).
    if name == "@" {
        return Err(invalid(name, "is \"@\""));
    }
    if name.ends_with('.') {
        return Err(invalid(name, "ends with '.'"));
    }
    for component in name.split('/') {
        if component.is_empty() {
            return Err(invalid(name, "starts or ends with '/' or contains \"//\""));
        }
        if component.starts_with('.') {
            return Err(invalid(name, "has a path component that starts with '.'"));
        }
        if component.ends_with(".lock") {
            return Err(invalid(
                name,
                "has a path component that ends with \".lock\"",
            ));
        }
    }
    Ok(())
}

/// Validates a task branch name before orch creates, pushes or checks it
/// out.
///
/// A valid name starts with `branch_prefix` (and has something after it),
/// contains no `..`, `:`, `^`, `~`, `@{`, `\`, glob characters, whitespace
/// or control characters, does not start with `-` or `refs/`, is neither
/// `HEAD` nor `default_branch`, and follows the rest of
/// git-check-ref-format(1) for `--branch` (no component starting with `.`
/// or ending with `.lock`, no empty component, no trailing `.`, not `@`).
///
/// Guarantees: pure: no process, no repository, nothing written (it runs
/// inside write transactions). Assumptions: none; no lock.
/// Errors: [`Error::InvalidRef`] naming the first reason found.
pub fn validate_task_branch(
    name: &str,
    branch_prefix: &str,
    default_branch: &str,
) -> Result<(), Error> {
    if name == default_branch {
        return Err(invalid(name, "is the default branch"));
    }
    if name == "HEAD" {
        return Err(invalid(name, "is HEAD"));
    }
    if !name.starts_with(branch_prefix) || name.len() == branch_prefix.len() {
        return Err(invalid(
            name,
            format!("does not start with the task branch prefix {branch_prefix:?}"),
        ));
    }
    validate_branch_name(name)
}

/// A full 40- (SHA-1) or 64- (SHA-256) hex object id.
fn validate_sha(sha: &str) -> Result<(), Error> {
    if (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid(sha, "expected a full hexadecimal object id"))
    }
}

/// A rev handed to git as a positional argument must not look like an
/// option.
fn validate_rev(rev: &str) -> Result<(), Error> {
    if rev.is_empty() || rev.starts_with('-') {
        Err(invalid(rev, "empty or starts with '-'"))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Repo

impl Repo {
    /// Lock a worktree (callers pass the absolute path, so one directory
    /// always maps to one lock file).
    fn lock(&self, path: &Path) -> anyhow::Result<LockGuard> {
        path_lock(&self.locks_dir, path)
    }

    fn lock_clone(&self) -> anyhow::Result<LockGuard> {
        path_lock(&self.locks_dir, &absolute(&self.clone_dir)?)
    }

    fn remote_ref(branch: &str) -> String {
        format!("refs/remotes/origin/{branch}")
    }

    /// The default branch, checked before it goes into a refspec.
    fn default_branch(&self) -> Result<&str, Error> {
        validate_branch_name(&self.default_branch)?;
        Ok(&self.default_branch)
    }

    /// True when `clone_dir` holds a repository; removes an empty leftover
    /// directory.
    fn clone_exists(&self) -> anyhow::Result<bool> {
        let dir = &self.clone_dir;
        if !dir.exists() {
            return Ok(false);
        }
        if dir.join("HEAD").is_file() && dir.join("objects").is_dir() {
            return Ok(true);
        }
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if empty {
            std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
            return Ok(false);
        }
        bail!(
            "{} exists but is not a git repository; move it away so orch can clone",
            dir.display()
        )
    }

    fn fetch_locked(&self) -> anyhow::Result<()> {
        // Explicit refspecs: heads into remote-tracking refs, tags forced
        // (a re-tagged origin must not break every later fetch).
        git_ok(
            &self.clone_dir,
            &[
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )?;
        Ok(())
    }

    /// Clone or fetch. Caller holds the clone lock.
    fn sync_locked(&self) -> anyhow::Result<()> {
        let url = self.origin_url.as_str();
        if url.is_empty() || url.starts_with('-') {
            return Err(Error::config("origin_url", format!("unusable git URL {url:?}")).into());
        }
        if self.clone_exists()? {
            self.clear_stale_clone_locks()?;
            let current = run_git(&self.clone_dir, &["config", "--get", "remote.origin.url"])?;
            if current.stdout.trim_end() != url {
                git_ok(&self.clone_dir, &["config", "remote.origin.url", url])?;
            }
            return self.fetch_locked().with_context(|| self.unreachable());
        }
        // Build the clone beside its final place and rename it in, so a
        // crash never leaves a half-made clone at clone_dir.
        let parent = self
            .clone_dir
            .parent()
            .context("clone_dir has no parent directory")?;
        let name = self
            .clone_dir
            .file_name()
            .context("clone_dir has no file name")?
            .to_string_lossy()
            .into_owned();
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let tmp = parent.join(format!(".{name}.orch-clone-tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        let tmp_str = utf8(&tmp)?;
        run_git_env(At::Nowhere, &["init", "--quiet", "--bare", tmp_str], &[])?.ok()?;
        git_ok(&tmp, &["remote", "add", "origin", url])?;
        git_ok(
            &tmp,
            &[
                "symbolic-ref",
                "HEAD",
                &format!("refs/heads/{}", self.default_branch()?),
            ],
        )?;
        let tmp_repo = Repo {
            clone_dir: tmp.clone(),
            ..self.clone()
        };
        tmp_repo
            .fetch_locked()
            .with_context(|| self.unreachable())?;
        std::fs::rename(&tmp, &self.clone_dir).with_context(|| {
            format!("renaming {} to {}", tmp.display(), self.clone_dir.display())
        })?;
        Ok(())
    }

    /// The message for a failed clone or fetch, naming the URL (without
    /// any password in it).
    fn unreachable(&self) -> String {
        format!(
            "cannot fetch from clone_url {}: origin unreachable, not a repository, or access refused",
            redact_url(&self.origin_url)
        )
    }

    /// The admin directory a worktree's `.git` file points to, if it has
    /// one. Unchecked: for reading only ([`audit`], [`Repo::worktree_branch`],
    /// recognising an orphan); git runs only on [`Repo::check_worktree`]'s
    /// answer.
    fn worktree_gitdir(worktree: &Path) -> Option<PathBuf> {
        let text = std::fs::read_to_string(worktree.join(".git")).ok()?;
        let dir = text.strip_prefix("gitdir:")?.trim();
        let dir = Path::new(dir);
        Some(if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            worktree.join(dir)
        })
    }

    /// Checks that `worktree` (absolute) is a worktree of this clone whose
    /// git metadata is what `git worktree add` wrote for it, and returns
    /// the paths git is then run with ([`At::Worktree`]):
    ///
    /// - `<worktree>/.git` is a regular file (not a directory, not a
    ///   symbolic link) holding exactly `gitdir: <clone>/worktrees/<name>`,
    ///   `<clone>` being the clone's real path;
    /// - that admin folder is a real directory (not a symbolic link);
    /// - its `commondir` holds `../..` (the clone) and its `gitdir` the
    ///   worktree's own `.git` (real path).
    ///
    /// Errors: [`Error::TamperedGitMetadata`] naming the first file that
    /// differs and what it held; an error when the clone is missing or the
    /// admin folder no longer exists (the clone was re-created).
    fn check_worktree(&self, worktree: &Path) -> anyhow::Result<Worktree> {
        let clone = self
            .clone_dir
            .canonicalize()
            .with_context(|| format!("clone {} is missing", self.clone_dir.display()))?;
        let tampered = |file: PathBuf, found: String, expected: String| -> anyhow::Error {
            let e = Error::TamperedGitMetadata {
                worktree: worktree.to_path_buf(),
                file,
                found,
                expected,
            };
            tracing::error!(target: "git", error = %e, "refusing to run git in a worktree");
            e.into()
        };
        let worktrees = clone.join("worktrees");
        let dotgit = worktree.join(".git");
        let text = match read_plain_file(&dotgit) {
            Ok(text) => text,
            Err(found) => {
                return Err(tampered(
                    dotgit,
                    found,
                    format!("a file `gitdir: {}/<name>`", worktrees.display()),
                ))
            }
        };
        let named = text
            .strip_suffix('\n')
            .unwrap_or(&text)
            .strip_prefix("gitdir: ")
            .map(PathBuf::from)
            .filter(|p| {
                p.parent() == Some(worktrees.as_path())
                    && matches!(
                        p.components().next_back(),
                        Some(std::path::Component::Normal(_))
                    )
            });
        let Some(admin) = named else {
            return Err(tampered(
                dotgit,
                format!("says {}", shown(&text)),
                format!("`gitdir: {}/<name>`", worktrees.display()),
            ));
        };
        match std::fs::symlink_metadata(&admin) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(tampered(
                    admin,
                    "is not a directory".into(),
                    "the worktree's admin folder".into(),
                ))
            }
            Err(_) => bail!(
                "worktree {} points to {}, which no longer exists (was the clone re-created?)",
                worktree.display(),
                admin.display()
            ),
        }
        let commondir = admin.join("commondir");
        match read_plain_file(&commondir) {
            Ok(t) if t.strip_suffix('\n').unwrap_or(&t) == "../.." => {}
            Ok(t) => {
                return Err(tampered(
                    commondir,
                    format!("points to {}", shown(&t)),
                    format!("`../..` (the clone {})", clone.display()),
                ))
            }
            Err(found) => {
                return Err(tampered(
                    commondir,
                    found,
                    format!("`../..` (the clone {})", clone.display()),
                ))
            }
        }
        let own = worktree
            .canonicalize()
            .with_context(|| format!("resolving {}", worktree.display()))?
            .join(".git");
        let back = admin.join("gitdir");
        match read_plain_file(&back) {
            Ok(t) if Path::new(t.strip_suffix('\n').unwrap_or(&t)) == own => {}
            Ok(t) => {
                // When the worktree that folder names claims it back, it is
                // this worktree's `.git` that was pointed at another's.
                let other = Path::new(t.strip_suffix('\n').unwrap_or(&t));
                let claimed = read_plain_file(other).is_ok_and(|o| {
                    o.strip_suffix('\n').unwrap_or(&o) == format!("gitdir: {}", admin.display())
                });
                return Err(if claimed {
                    tampered(
                        dotgit,
                        format!(
                            "names {}, the admin folder of {}",
                            admin.display(),
                            other.parent().unwrap_or(other).display()
                        ),
                        format!(
                            "this worktree's own `gitdir: {}/<name>`",
                            worktrees.display()
                        ),
                    )
                } else {
                    tampered(
                        back,
                        format!("points to {}", shown(&t)),
                        format!("`{}`", own.display()),
                    )
                });
            }
            Err(found) => return Err(tampered(back, found, format!("`{}`", own.display()))),
        }
        Ok(Worktree {
            path: worktree.to_path_buf(),
            admin,
            common: clone,
        })
    }

    /// Refuses ([`Error::TamperedGitMetadata`]) a worktree whose `HEAD` is
    /// not the symbolic ref `refs/heads/<branch>`: orch commits and pushes
    /// only on the task's own branch.
    fn check_head(wt: &Worktree, branch: &str) -> anyhow::Result<()> {
        let file = wt.admin.join("HEAD");
        let want = format!("ref: refs/heads/{branch}");
        match read_plain_file(&file) {
            Ok(t) if t.strip_suffix('\n').unwrap_or(&t) == want => Ok(()),
            found => {
                let found = match found {
                    Ok(t) => format!("says {}", shown(&t)),
                    Err(f) => f,
                };
                let e = Error::TamperedGitMetadata {
                    worktree: wt.path.clone(),
                    file,
                    found,
                    expected: format!("`{want}`"),
                };
                tracing::error!(target: "git", error = %e, "refusing to run git in a worktree");
                Err(e.into())
            }
        }
    }

    /// The branch the worktree at `worktree` has checked out; `None` when
    /// HEAD is detached or unreadable.
    ///
    /// Guarantees: read-only, and runs no git: it reads the `HEAD` file the
    /// worktree's `.git` names (for observing a worktree that is not this
    /// clone's, such as a staged instance's). Assumptions: no lock taken.
    /// Errors: none in practice (kept for callers).
    pub fn worktree_branch(worktree: &Path) -> anyhow::Result<Option<String>> {
        let dotgit = worktree.join(".git");
        let gitdir = if dotgit.is_dir() {
            dotgit
        } else {
            let Some(g) = Self::worktree_gitdir(worktree) else {
                return Ok(None);
            };
            g
        };
        Ok(read_plain_file(&gitdir.join("HEAD")).ok().and_then(|t| {
            t.trim_end()
                .strip_prefix("ref: refs/heads/")
                .map(str::to_string)
        }))
    }

    /// The branch `worktree` has checked out; `None` when HEAD is detached.
    fn current_branch(wt: &Worktree) -> anyhow::Result<Option<String>> {
        let out = run_git(wt, &["symbolic-ref", "--quiet", "HEAD"])?;
        match out.code() {
            Some(0) => Ok(out
                .stdout
                .trim_end()
                .strip_prefix("refs/heads/")
                .map(str::to_string)),
            Some(1) => Ok(None),
            _ => Err(out.into_error().into()),
        }
    }

    /// Removes the lock files a git killed mid-command (with its crashed
    /// orch) leaves for a worktree: every `*.lock` in its admin folder
    /// (`index.lock`, `HEAD.lock`, `ORIG_HEAD.lock`, …) and the lock of the
    /// branch its HEAD names, which lives in the shared clone. Safe only
    /// because every git command orch runs on a worktree holds that
    /// worktree's path lock, which the caller holds now, each branch has one
    /// worktree, and a git outlives no orch (PDEATHSIG): no live git of ours
    /// can own these files.
    fn clear_stale_index_lock(wt: &Worktree) -> anyhow::Result<()> {
        let mut stale: Vec<PathBuf> = Self::lock_files_in(&wt.admin)?;
        if let Ok(head) = read_plain_file(&wt.admin.join("HEAD")) {
            if let Some(r) = head.trim().strip_prefix("ref: refs/heads/") {
                if validate_branch_name(r).is_ok() {
                    stale.push(wt.common.join("refs/heads").join(format!("{r}.lock")));
                }
            }
        }
        Self::remove_stale(&stale)
    }

    /// `*.lock` files directly in `dir`.
    fn lock_files_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        Ok(entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "lock"))
            .collect())
    }

    fn remove_stale(paths: &[PathBuf]) -> anyhow::Result<()> {
        for lock in paths {
            match std::fs::remove_file(lock) {
                Ok(()) => {
                    tracing::warn!(target: "git", path = %lock.display(), "removed a stale lock file left by a killed git")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing stale {}", lock.display()))
                }
            }
        }
        Ok(())
    }

    /// Removes the clone-level lock files a killed git leaves
    /// (`packed-refs.lock`, `config.lock`, `FETCH_HEAD.lock`, and the
    /// remote-tracking refs a fetch or push updates). Assumptions: the
    /// caller holds the clone lock, under which every such write happens.
    fn clear_stale_clone_locks(&self) -> anyhow::Result<()> {
        let mut stale = Self::lock_files_in(&self.clone_dir)?;
        let mut dirs = vec![self.clone_dir.join("refs/remotes")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "lock") {
                    stale.push(p);
                }
            }
        }
        Self::remove_stale(&stale)
    }

    fn rebase_in_progress(admin_dir: &Path) -> bool {
        admin_dir.join("rebase-merge").exists() || admin_dir.join("rebase-apply").exists()
    }

    /// Abort a rebase a crashed orch left half-done, after
    /// [`Repo::check_rebase_state`]. Caller holds the worktree lock.
    fn abort_stale_rebase(&self, wt: &Worktree, branch: Option<&str>) -> anyhow::Result<()> {
        if !Self::rebase_in_progress(&wt.admin) {
            return Ok(());
        }
        self.check_rebase_state(wt, branch)?;
        tracing::warn!(worktree = %wt.path.display(), "aborting a rebase left in progress");
        git_ok(wt, &["rebase", "--abort"])?;
        Ok(())
    }

    /// `git rebase --abort` moves the ref the rebase state's `head-name`
    /// names and checks it out, so that file (agent-writable, like the
    /// whole admin folder) must name the task branch: `branch` when the
    /// caller knows it, else any valid task branch.
    ///
    /// Errors: [`Error::TamperedGitMetadata`] for another `head-name`.
    fn check_rebase_state(&self, wt: &Worktree, branch: Option<&str>) -> anyhow::Result<()> {
        for state in ["rebase-merge", "rebase-apply"] {
            if !wt.admin.join(state).exists() {
                continue;
            }
            let file = wt.admin.join(state).join("head-name");
            let found = read_plain_file(&file);
            let named = found.as_deref().ok().and_then(|t| {
                t.strip_suffix('\n')
                    .unwrap_or(t)
                    .strip_prefix("refs/heads/")
            });
            let ok = match (named, branch) {
                (Some(n), Some(b)) => n == b,
                (Some(n), None) => {
                    validate_task_branch(n, &self.branch_prefix, &self.default_branch).is_ok()
                }
                (None, _) => false,
            };
            if !ok {
                let e = Error::TamperedGitMetadata {
                    worktree: wt.path.clone(),
                    file,
                    found: match found {
                        Ok(t) => format!("says {}", shown(&t)),
                        Err(f) => f,
                    },
                    expected: branch.map_or_else(
                        || format!("`refs/heads/{}<name>`", self.branch_prefix),
                        |b| format!("`refs/heads/{b}`"),
                    ),
                };
                tracing::error!(target: "git", error = %e, "refusing to abort a rebase");
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The sha `reference` (a full ref name) points to at `at` (the clone
    /// or a checked worktree), if any.
    fn resolve_ref<'a>(at: impl Into<At<'a>>, reference: &str) -> anyhow::Result<Option<String>> {
        let out = run_git(at, &["rev-parse", "--verify", "--quiet", reference])?;
        match out.code() {
            Some(0) => Ok(Some(out.stdout.trim().to_string())),
            Some(1) => Ok(None),
            _ => Err(out.into_error().into()),
        }
    }

    fn head_sha_of(wt: &Worktree) -> anyhow::Result<String> {
        Ok(git_ok(wt, &["rev-parse", "--verify", "HEAD"])?
            .trim()
            .to_string())
    }

    /// Idempotent: clone `origin_url` into `clone_dir` (bare) if it is
    /// missing, else `git fetch --prune origin` (heads into
    /// `refs/remotes/origin/*`, tags forced). Also resets the clone's
    /// `origin` URL to `origin_url` if the configuration changed.
    ///
    /// Guarantees: a clone appears at `clone_dir` only complete (built in a
    /// sibling temp dir and renamed); local branches are never touched.
    /// Assumptions: takes `path_lock(clone_dir)` itself; the caller must not
    /// hold it.
    /// Errors: [`Error::Subprocess`] if git fails (unreachable origin…);
    /// [`Error::Config`] for an empty URL or one starting with `-`; an
    /// error if `clone_dir` exists and is not a repository.
    pub fn sync(&self) -> anyhow::Result<()> {
        let _clone = self.lock_clone()?;
        self.sync_locked()
    }

    /// Idempotent: make sure `worktree` exists and is checked out on
    /// `branch`.
    ///
    /// - Exists on `branch`: no-op (no fetch). A rebase a crash left in
    ///   progress there is aborted first.
    /// - Otherwise syncs the clone, prunes stale worktree entries (e.g. a
    ///   deleted worktree directory), and creates it:
    ///   - origin has `branch`: the worktree continues from what was pushed
    ///     (the local branch is reset to origin's unless it already contains
    ///     origin's commit, i.e. only adds unpushed local commits), with
    ///     `origin/<branch>` as upstream;
    ///   - origin lacks it but a local branch exists (created, never
    ///     pushed): that local branch;
    ///   - neither: a new branch from origin's current default branch.
    ///
    /// Assumptions: takes `path_lock(worktree)` then `path_lock(clone_dir)`;
    /// the caller holds neither.
    /// Errors: [`Error::InvalidRef`] if `branch` fails
    /// [`validate_task_branch`]; an error if `worktree` exists but is not a
    /// worktree of this clone, or is on another branch (nothing is deleted);
    /// [`Error::Subprocess`] from git.
    pub fn ensure_worktree(&self, worktree: &Path, branch: &str) -> anyhow::Result<()> {
        validate_task_branch(branch, &self.branch_prefix, &self.default_branch)?;
        let default = self.default_branch()?;
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        if worktree.exists() {
            let is_empty_dir = worktree.is_dir()
                && std::fs::read_dir(&worktree)
                    .with_context(|| format!("reading {}", worktree.display()))?
                    .next()
                    .is_none();
            if is_empty_dir {
                std::fs::remove_dir(&worktree)
                    .with_context(|| format!("removing {}", worktree.display()))?;
            } else {
                let wt = self.check_worktree(&worktree)?;
                Self::clear_stale_index_lock(&wt)?;
                self.abort_stale_rebase(&wt, Some(branch))?;
                return Self::check_head(&wt, branch);
            }
        }

        let _clone = self.lock_clone()?;
        self.sync_locked()?;
        let clone = self.clone_dir.as_path();
        git_ok(clone, &["worktree", "prune"])?;
        if let Some(parent) = worktree.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let wt = utf8(&worktree)?;
        let remote_ref = Self::remote_ref(branch);
        let remote = Self::resolve_ref(clone, &remote_ref)?;
        let local = Self::resolve_ref(clone, &format!("refs/heads/{branch}"))?;
        match (remote, local) {
            (Some(r), Some(l)) if r == l || self.is_ancestor(clone, &r, &l)? => {
                git_ok(clone, &["worktree", "add", "--quiet", wt, branch])?;
            }
            (Some(_), _) => {
                git_ok(
                    clone,
                    &[
                        "worktree",
                        "add",
                        "--quiet",
                        "--no-track",
                        "-B",
                        branch,
                        wt,
                        &remote_ref,
                    ],
                )?;
            }
            (None, Some(_)) => {
                git_ok(clone, &["worktree", "add", "--quiet", wt, branch])?;
            }
            (None, None) => {
                let base = Self::remote_ref(default);
                if Self::resolve_ref(clone, &base)?.is_none() {
                    bail!("origin has no default branch {default:?} to start {branch} from");
                }
                git_ok(
                    clone,
                    &[
                        "worktree",
                        "add",
                        "--quiet",
                        "--no-track",
                        "-b",
                        branch,
                        wt,
                        &base,
                    ],
                )?;
            }
        }
        if Self::resolve_ref(clone, &remote_ref)?.is_some() {
            git_ok(
                clone,
                &[
                    "branch",
                    "--quiet",
                    &format!("--set-upstream-to=origin/{branch}"),
                    branch,
                ],
            )?;
        }
        Ok(())
    }

    /// Before a new run of a task: when its worktree's git metadata is not
    /// what orch wrote ([`Error::TamperedGitMetadata`]; the run that did it
    /// was refused for it), throws the worktree away so the
    /// [`Repo::ensure_worktree`] that follows re-creates it from orch's own
    /// state: deletes the worktree folder, the clone's admin folders that
    /// name it or have `branch` checked out (a task branch has one
    /// worktree), prunes, and resets the local `branch` to origin's
    /// (deletes it when origin has none), so nothing of the refused run is
    /// kept. A sound or missing worktree, or one that fails for another
    /// reason (a missing clone), is left alone. Returns whether it replaced.
    ///
    /// Assumptions: `worktree` is a task's worktree path, which orch made:
    /// the folder is deleted whatever its `.git` says. Takes the worktree
    /// lock, then the clone lock; the caller holds neither.
    /// Errors: [`Error::InvalidRef`] for a refused branch; I/O and git
    /// errors (the fetch that finds origin's branch).
    pub fn drop_tampered_worktree(&self, worktree: &Path, branch: &str) -> anyhow::Result<bool> {
        validate_task_branch(branch, &self.branch_prefix, &self.default_branch)?;
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        if !worktree.exists() {
            return Ok(false);
        }
        let checked = self.check_worktree(&worktree).and_then(|wt| {
            // A rebase a crash left in progress detaches HEAD; ensure_worktree
            // aborts it (checking its head-name) before it checks HEAD.
            if Self::rebase_in_progress(&wt.admin) {
                self.check_rebase_state(&wt, Some(branch))
            } else {
                Self::check_head(&wt, branch)
            }
        });
        let why = match checked {
            Err(e) if matches!(e.downcast_ref(), Some(Error::TamperedGitMetadata { .. })) => e,
            _ => return Ok(false),
        };
        tracing::warn!(target: "git", worktree = %worktree.display(), error = %why, "re-creating a worktree whose git metadata was changed");
        let own = worktree.canonicalize()?.join(".git");
        std::fs::remove_dir_all(&worktree)
            .with_context(|| format!("removing {}", worktree.display()))?;
        let _clone = self.lock_clone()?;
        let admins = self.clone_dir.join("worktrees");
        let head = format!("ref: refs/heads/{branch}");
        for entry in std::fs::read_dir(&admins).into_iter().flatten().flatten() {
            let admin = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let says = |name: &str, want: &str| {
                read_plain_file(&admin.join(name))
                    .is_ok_and(|t| t.strip_suffix('\n').unwrap_or(&t) == want)
            };
            if says("HEAD", &head) || says("gitdir", &own.to_string_lossy()) {
                std::fs::remove_dir_all(&admin)
                    .with_context(|| format!("removing {}", admin.display()))?;
            }
        }
        let clone = self.clone_dir.as_path();
        git_ok(clone, &["worktree", "prune"])?;
        self.sync_locked()?;
        let local = format!("refs/heads/{branch}");
        match Self::resolve_ref(clone, &Self::remote_ref(branch))? {
            Some(sha) => git_ok(clone, &["update-ref", &local, &sha])?,
            None => git_ok(clone, &["update-ref", "-d", &local])?,
        };
        Ok(true)
    }

    /// Throws away uncommitted changes (tracked and untracked, not ignored
    /// files) so the worktree equals its HEAD: used after a failed agent
    /// run, so a retry starts from what was committed. Idempotent.
    /// Holds the worktree lock.
    pub fn discard_changes(&self, worktree: &Path) -> anyhow::Result<()> {
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        git_ok(&wt, &["reset", "--quiet", "--hard", "HEAD"])?;
        git_ok(&wt, &["clean", "--quiet", "-fd"])?;
        Ok(())
    }

    /// Stage everything (`git add -A`, so new untracked files too; ignored
    /// files are not) and commit it with `message` as orch.
    ///
    /// Guarantees: `Ok(Some(sha))` with the new HEAD when it committed,
    /// `Ok(None)` when there was nothing to commit; idempotent on a clean
    /// tree. Hooks are skipped (`--no-verify`), commits are not signed.
    /// Assumptions: takes `path_lock(worktree)`; the caller does not hold
    /// it; no other git process (e.g. an agent) is using the worktree.
    /// Errors: an error if `worktree` is not a worktree of this clone;
    /// [`Error::Subprocess`] from git.
    pub fn commit_all(&self, worktree: &Path, message: &str) -> anyhow::Result<Option<String>> {
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        git_ok(&wt, &["add", "--all"])?;
        let diff = run_git(&wt, &["diff", "--cached", "--quiet"])?;
        match diff.code() {
            Some(0) => return Ok(None),
            Some(1) => {}
            _ => return Err(diff.into_error().into()),
        }
        git_commit_ok(&wt, &["commit", "--quiet", "--no-verify", "-m", message])?.ok()?;
        Ok(Some(Self::head_sha_of(&wt)?))
    }

    /// Push the worktree's HEAD to `refs/heads/<branch>` on origin, without
    /// force (origin rejects a non-fast-forward).
    ///
    /// Guarantees: refuses — before pushing anything — any `branch` that
    /// fails [`validate_task_branch`], so the default branch (`main`,
    /// `refs/heads/main`, `HEAD:main`, `orch/../main`, …) can never be the
    /// destination. Idempotent: pushing an up-to-date branch is Ok.
    /// Assumptions: takes `path_lock(worktree)` then `path_lock(clone_dir)`
    /// (the push updates the clone's remote-tracking ref).
    /// Errors: [`Error::InvalidRef`]; [`Error::Subprocess`] when git or
    /// origin refuses (non-fast-forward, no access…).
    pub fn push_branch(&self, worktree: &Path, branch: &str) -> anyhow::Result<()> {
        validate_task_branch(branch, &self.branch_prefix, &self.default_branch)?;
        self.push_task_branch(worktree, branch, None)
    }

    /// Like [`Repo::push_branch`] but may overwrite a non-fast-forward
    /// (after a rebase) with
    /// `--force-with-lease=refs/heads/<branch>:<expected_remote_sha>`:
    /// origin accepts only if its branch is still at `expected_remote_sha`.
    ///
    /// Guarantees: same refusals as [`Repo::push_branch`]; the lease is
    /// checked by origin, so a concurrent push is never overwritten.
    /// Assumptions: as [`Repo::push_branch`].
    /// Errors: [`Error::InvalidRef`] for a refused branch or an
    /// `expected_remote_sha` that is not a full hex object id;
    /// [`Error::Subprocess`] when the lease is stale or the push fails.
    pub fn push_branch_force_with_lease(
        &self,
        worktree: &Path,
        branch: &str,
        expected_remote_sha: &str,
    ) -> anyhow::Result<()> {
        validate_task_branch(branch, &self.branch_prefix, &self.default_branch)?;
        validate_sha(expected_remote_sha)?;
        self.push_task_branch(worktree, branch, Some(expected_remote_sha))
    }

    /// Push HEAD to a task branch that the caller has already validated.
    fn push_task_branch(
        &self,
        worktree: &Path,
        branch: &str,
        lease: Option<&str>,
    ) -> anyhow::Result<()> {
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        // The refspec's source is HEAD: it must be the task branch, not a
        // branch the worktree's (agent-writable) HEAD file was turned to.
        Self::check_head(&wt, branch)?;
        let _clone = self.lock_clone()?;
        let refspec = format!("HEAD:refs/heads/{branch}");
        let lease_arg = lease.map(|sha| format!("--force-with-lease=refs/heads/{branch}:{sha}"));
        let mut args = vec!["push", "--porcelain", "--no-verify"];
        if let Some(l) = &lease_arg {
            args.push(l);
        }
        args.extend(["origin", refspec.as_str()]);
        git_ok(&wt, &args)?;
        Ok(())
    }

    /// The worktree's HEAD commit sha.
    ///
    /// Guarantees: read-only. Assumptions: no lock taken (a concurrent
    /// commit may move HEAD right after).
    /// Errors: an error if `worktree` is not a worktree of this clone;
    /// [`Error::Subprocess`] from git.
    pub fn head_sha(&self, worktree: &Path) -> anyhow::Result<String> {
        let worktree = absolute(worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::head_sha_of(&wt)
    }

    /// Fetch origin (cloning if needed), then the sha of origin's
    /// `refs/heads/<name>`, `None` if origin has no such branch. `name` may
    /// be any branch, including the default branch.
    ///
    /// Guarantees: only the clone's remote-tracking refs change.
    /// Assumptions: takes `path_lock(clone_dir)`; the caller does not hold
    /// it.
    /// Errors: [`Error::InvalidRef`] for a name that is not a plain branch
    /// name; [`Error::Subprocess`] from git.
    pub fn remote_branch_sha(&self, name: &str) -> anyhow::Result<Option<String>> {
        validate_branch_name(name)?;
        let _clone = self.lock_clone()?;
        self.sync_locked()?;
        Self::resolve_ref(&self.clone_dir, &Self::remote_ref(name))
    }

    /// The sha of origin's `refs/heads/<name>` read with `git ls-remote`,
    /// `None` if origin has no such branch. Unlike
    /// [`Repo::remote_branch_sha`] it fetches nothing: for plans
    /// (`--dry-run`) that must not write, not even to the clone.
    ///
    /// Guarantees: read-only everywhere. Assumptions: no lock taken.
    /// Errors: [`Error::InvalidRef`] for a name that is not a plain branch
    /// name; [`Error::Config`] for an unusable URL; [`Error::Subprocess`]
    /// when origin cannot be read.
    pub fn ls_remote_branch(&self, name: &str) -> anyhow::Result<Option<String>> {
        validate_branch_name(name)?;
        let url = self.origin_url.as_str();
        if url.is_empty() || url.starts_with('-') {
            return Err(Error::config("origin_url", format!("unusable git URL {url:?}")).into());
        }
        let refname = format!("refs/heads/{name}");
        let out = run_git_env(
            At::Nowhere,
            &["ls-remote", "--heads", "--", url, &refname],
            &[],
        )?
        .ok()?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(_, r)| *r == refname)
            .map(|(sha, _)| sha.to_string()))
    }

    /// True when `ancestor` is an ancestor of, or equal to, `descendant`
    /// (`git merge-base --is-ancestor`) in the repository at `dir` (the
    /// clone or a worktree, whose metadata is checked first).
    ///
    /// Guarantees: read-only. Assumptions: no lock taken.
    /// Errors: [`Error::InvalidRef`] for an empty rev or one starting with
    /// `-`; [`Error::TamperedGitMetadata`] for a worktree whose metadata
    /// changed; [`Error::Subprocess`] for any git exit but 0/1 (e.g. an
    /// unknown sha).
    pub fn is_ancestor(
        &self,
        dir: &Path,
        ancestor: &str,
        descendant: &str,
    ) -> anyhow::Result<bool> {
        if absolute(dir)? == absolute(&self.clone_dir)? {
            return Self::is_ancestor_at(dir.into(), ancestor, descendant);
        }
        let wt = self.check_worktree(&absolute(dir)?)?;
        Self::is_ancestor_at((&wt).into(), ancestor, descendant)
    }

    /// [`Repo::is_ancestor`] at `at`.
    fn is_ancestor_at(at: At<'_>, ancestor: &str, descendant: &str) -> anyhow::Result<bool> {
        validate_rev(ancestor)?;
        validate_rev(descendant)?;
        let out = run_git(at, &["merge-base", "--is-ancestor", ancestor, descendant])?;
        match out.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(out.into_error().into()),
        }
    }

    /// Fetch, then rebase the worktree's branch onto origin's current
    /// default branch.
    ///
    /// Guarantees: `UpToDate` when the branch already contains origin's
    /// default (nothing changes); `Rebased { new_head }` on success;
    /// `Conflict { files }` when it stopped on conflicts — the rebase is
    /// aborted, so the worktree is clean, on its branch, at the original
    /// commit. Nothing is pushed. A rebase left in progress by a crash is
    /// aborted first.
    /// Assumptions: takes `path_lock(worktree)` for the whole operation and
    /// `path_lock(clone_dir)` for the fetch; the caller holds neither. The
    /// worktree has no uncommitted changes (run [`Repo::commit_all`] first).
    /// Errors: [`Error::Subprocess`] if git fails for another reason (a
    /// dirty worktree, a stop without conflicted files — aborted too).
    pub fn rebase_onto_default(&self, worktree: &Path) -> anyhow::Result<RebaseOutcome> {
        let default = self.default_branch()?;
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        {
            let _clone = self.lock_clone()?;
            self.sync_locked()?;
        }
        self.abort_stale_rebase(&wt, None)?;
        let upstream = Self::resolve_ref(&wt, &Self::remote_ref(default))?
            .with_context(|| format!("origin has no default branch {default:?}"))?;
        let original = Self::head_sha_of(&wt)?;
        if Self::is_ancestor_at((&wt).into(), &upstream, &original)? {
            return Ok(RebaseOutcome::UpToDate);
        }
        let out = git_commit_ok(
            &wt,
            &[
                "rebase",
                "--quiet",
                "--no-verify",
                "--no-autostash",
                "--no-update-refs",
                &upstream,
            ],
        )?;
        if out.success() {
            return Ok(RebaseOutcome::Rebased {
                new_head: Self::head_sha_of(&wt)?,
            });
        }
        if !Self::rebase_in_progress(&wt.admin) {
            return Err(out.into_error().into());
        }
        let files: Vec<String> = git_ok(&wt, &["diff", "--name-only", "-z", "--diff-filter=U"])?
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        git_ok(&wt, &["rebase", "--abort"])?;
        let after = Self::head_sha_of(&wt)?;
        if after != original {
            bail!(
                "after `git rebase --abort` {} is at {after}, expected {original}",
                worktree.display()
            );
        }
        if files.is_empty() {
            return Err(out.into_error().into());
        }
        Ok(RebaseOutcome::Conflict { files })
    }

    /// Fetch, then merge origin's current default branch into the
    /// worktree's branch (the conflict handoff: a task the merge gate sent
    /// back starts its development run on a branch that contains main).
    ///
    /// Guarantees: `UpToDate` when the branch already contains origin's
    /// default (nothing changes); `Merged { sha }` when the merge was clean
    /// and is committed; `Conflict { files }` when it stopped on conflicts:
    /// the merge is left in progress (conflict markers in `files`) for an
    /// agent to resolve, and [`Repo::commit_all`] then concludes it. Nothing
    /// is pushed. [`Repo::discard_changes`] abandons an unfinished merge.
    /// Assumptions: as [`Repo::rebase_onto_default`]; the worktree is clean.
    /// Errors: [`Error::Subprocess`] if git fails for another reason (the
    /// merge is then aborted).
    pub fn merge_default_in(&self, worktree: &Path) -> anyhow::Result<MergeIn> {
        let default = self.default_branch()?;
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        {
            let _clone = self.lock_clone()?;
            self.sync_locked()?;
        }
        let upstream = Self::resolve_ref(&wt, &Self::remote_ref(default))?
            .with_context(|| format!("origin has no default branch {default:?}"))?;
        let original = Self::head_sha_of(&wt)?;
        if Self::is_ancestor_at((&wt).into(), &upstream, &original)? {
            return Ok(MergeIn::UpToDate);
        }
        let message = format!("Merge origin/{default} into the task branch (orch)");
        let out = git_commit_ok(
            &wt,
            &[
                "merge",
                "--quiet",
                "--no-ff",
                "--no-verify",
                "-m",
                &message,
                &upstream,
            ],
        )?;
        if out.success() {
            return Ok(MergeIn::Merged {
                sha: Self::head_sha_of(&wt)?,
            });
        }
        let files: Vec<String> = git_ok(&wt, &["diff", "--name-only", "-z", "--diff-filter=U"])?
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        if files.is_empty() {
            let _ = git_ok(&wt, &["merge", "--abort"]);
            return Err(out.into_error().into());
        }
        Ok(MergeIn::Conflict { files })
    }

    /// Changed or new files of the worktree (against HEAD, not ignored)
    /// that still hold a conflict marker line (`<<<<<<< ` or `>>>>>>> `
    /// at a line start), sorted. Read-only; takes no lock. The agent chose
    /// what each path is: only a regular file that lies inside the
    /// worktree once symlinks are resolved is read (streamed, never
    /// whole); a symlink out of it, a FIFO or a device is not read
    /// ([`crate::untrusted`]).
    /// Errors: [`Error::TamperedGitMetadata`]; [`Error::Subprocess`] from
    /// git.
    pub fn conflict_marked_files(&self, worktree: &Path) -> anyhow::Result<Vec<String>> {
        let worktree = absolute(worktree)?;
        let wt = self.check_worktree(&worktree)?;
        let mut files: Vec<String> = Vec::new();
        for args in [
            &["diff", "--name-only", "-z", "HEAD"][..],
            &["ls-files", "--others", "--exclude-standard", "-z"][..],
        ] {
            files.extend(
                git_ok(&wt, args)?
                    .split('\0')
                    .filter(|f| !f.is_empty())
                    .map(str::to_string),
            );
        }
        files.sort();
        files.dedup();
        Ok(files
            .into_iter()
            .filter(|f| {
                crate::untrusted::beneath(&worktree, &worktree.join(f))
                    .ok()
                    .and_then(|real| crate::untrusted::open_regular(&real).ok())
                    .is_some_and(|file| holds_conflict_marker(file).unwrap_or(false))
            })
            .collect())
    }

    /// The only way orch moves the default branch: push
    /// `<worktree HEAD sha>:refs/heads/<default_branch>` to origin WITHOUT
    /// force, so origin itself refuses anything but a fast-forward.
    ///
    /// Guarantees: fetches first; `AlreadyMerged` (nothing pushed) when
    /// origin's default already contains HEAD; `NotFastForward` (nothing
    /// pushed) when origin's default is not an ancestor of HEAD, including
    /// when origin moved between the fetch and the push; `Merged { sha }`
    /// when origin's default now points at HEAD. Idempotent.
    /// Assumptions: takes `path_lock(worktree)` then `path_lock(clone_dir)`;
    /// the caller holds neither, and holds the repo's merge lease
    /// (DESIGN §7). The worktree must be on a valid task branch.
    /// Errors: [`Error::InvalidRef`] if the worktree is not on a task
    /// branch; [`Error::Subprocess`] if git or origin fails for another
    /// reason (hook declined, no access…).
    pub fn fast_forward_default(&self, worktree: &Path) -> anyhow::Result<FastForward> {
        let default = self.default_branch()?;
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        match Self::current_branch(&wt)? {
            Some(b) => validate_task_branch(&b, &self.branch_prefix, default)?,
            None => {
                return Err(
                    invalid("HEAD", "worktree HEAD is detached, not on a task branch").into(),
                )
            }
        }
        let head = Self::head_sha_of(&wt)?;
        let _clone = self.lock_clone()?;
        self.sync_locked()?;
        let clone = self.clone_dir.as_path();
        let main = Self::resolve_ref(clone, &Self::remote_ref(default))?
            .with_context(|| format!("origin has no default branch {default:?}"))?;
        if self.is_ancestor(clone, &head, &main)? {
            return Ok(FastForward::AlreadyMerged);
        }
        if !self.is_ancestor(clone, &main, &head)? {
            return Ok(FastForward::NotFastForward);
        }
        let refspec = format!("{head}:refs/heads/{default}");
        let out = run_git(
            clone,
            &["push", "--porcelain", "--no-verify", "origin", &refspec],
        )?;
        if out.success() {
            return Ok(FastForward::Merged { sha: head });
        }
        let raced = out.stdout.lines().any(|l| {
            l.starts_with('!') && (l.contains("non-fast-forward") || l.contains("fetch first"))
        });
        if raced {
            return Ok(FastForward::NotFastForward);
        }
        Err(out.into_error().into())
    }

    /// True when `path` (a file or directory, relative to the repository
    /// root, e.g. `docs/work-items/12/`) exists in the worktree's HEAD
    /// commit. Uncommitted files do not count.
    ///
    /// Guarantees: read-only; the path is matched literally (no globs).
    /// Assumptions: no lock taken.
    /// Errors: an error for an empty, absolute or `..` path, or if
    /// `worktree` is not a worktree of this clone; [`Error::Subprocess`]
    /// from git.
    pub fn exists_at_head(&self, worktree: &Path, path: &str) -> anyhow::Result<bool> {
        let rel = path.trim_start_matches("./").trim_end_matches('/');
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            bail!("path {path:?} must be a non-empty path relative to the repository root");
        }
        let worktree = absolute(worktree)?;
        let wt = self.check_worktree(&worktree)?;
        let out = run_git_env(
            At::Worktree(&wt),
            &[
                "ls-tree",
                "-z",
                "--name-only",
                "--full-tree",
                "HEAD",
                "--",
                rel,
            ],
            &[("GIT_LITERAL_PATHSPECS", "1")],
        )?
        .ok()?;
        Ok(out.split('\0').any(|entry| entry == rel))
    }

    /// Best-effort removal of a task's worktree (cancel/done):
    /// `git worktree remove --force --force`, then deleting the directory if
    /// git left it, then `git worktree prune`. The local branch stays.
    ///
    /// Guarantees: idempotent (a missing worktree is Ok); a directory is
    /// only deleted when its `.git` file points into this clone (or it is
    /// empty); uncommitted work in it is lost.
    /// Assumptions: takes `path_lock(worktree)` then `path_lock(clone_dir)`;
    /// the caller holds neither; no agent is running in the worktree.
    /// Errors: an error if `worktree` exists but is not a worktree of this
    /// clone, or cannot be deleted; [`Error::Subprocess`] if the prune
    /// fails.
    pub fn remove_worktree(&self, worktree: &Path) -> anyhow::Result<()> {
        self.remove_worktree_if(worktree, || Ok(true)).map(|_| ())
    }

    /// [`Repo::remove_worktree`], but only when `still_wanted`, asked while
    /// the worktree lock is held, says yes: a worker that would use the
    /// worktree takes the same lock first (`ensure_worktree`), so a check
    /// of the task's jobs made here cannot go stale before the removal.
    /// Returns whether it removed.
    ///
    /// Errors: as [`Repo::remove_worktree`], and `still_wanted`'s.
    pub fn remove_worktree_if(
        &self,
        worktree: &Path,
        still_wanted: impl FnOnce() -> anyhow::Result<bool>,
    ) -> anyhow::Result<bool> {
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        if !still_wanted()? {
            return Ok(false);
        }
        let _clone = self.lock_clone()?;
        let have_clone = self.clone_exists()?;
        if worktree.exists() {
            let ours = have_clone && self.check_worktree(&worktree).is_ok();
            let orphan_of_ours = Self::worktree_gitdir(&worktree).is_some_and(|g| {
                self.clone_dir
                    .canonicalize()
                    .is_ok_and(|c| g.starts_with(c.join("worktrees")))
            });
            if ours {
                let wt = utf8(&worktree)?;
                let out = run_git(
                    &self.clone_dir,
                    &["worktree", "remove", "--force", "--force", wt],
                )?;
                if !out.success() {
                    tracing::warn!(error = %out.into_error(), "git worktree remove failed; deleting the directory");
                }
            }
            let empty = std::fs::read_dir(&worktree).is_ok_and(|mut d| d.next().is_none());
            if worktree.exists() && (ours || orphan_of_ours || empty) {
                std::fs::remove_dir_all(&worktree)
                    .with_context(|| format!("removing {}", worktree.display()))?;
            } else if worktree.exists() {
                bail!(
                    "{} is not a worktree of {}; refusing to delete it",
                    worktree.display(),
                    self.clone_dir.display()
                );
            }
        }
        if have_clone {
            git_ok(&self.clone_dir, &["worktree", "prune"])?;
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------
// The agent's private view of the shared clone

/// What a sandboxed agent sees of the shared clone's refs, reflogs and
/// objects: private stand-ins that the sandbox binds over the clone's own
/// (DESIGN §4), so nothing the agent does there reaches another task.
///
/// - `refs/`: a copy of the clone's loose refs. Whatever the agent does to
///   a ref — another task's branch, a remote-tracking ref, `refs/stash` —
///   stays in the copy; [`Repo::apply_clone_view`] carries over one change,
///   the task branch's, by compare-and-swap. Packed refs are read from the
///   clone's `packed-refs`, which the agent sees read-only.
/// - `logs/`: empty (reflogs the agent writes are dropped).
/// - `objects/`: empty but for `info/alternates` naming `base-objects/`,
///   where the clone's object store is bound read-only: the agent reads
///   every object and writes new ones here. After the run orch *fetches*
///   the task branch from the view into the clone (the view is a bare
///   repository: `HEAD`, `refs/`, `objects/`), so only objects reachable
///   from the agent's branch arrive, each checked by git against its id;
///   an agent can neither delete nor corrupt an object another task's
///   history needs.
#[derive(Debug)]
pub struct CloneView {
    dir: PathBuf,
    branch: String,
    /// The branch's commit when the view was made.
    start: String,
    /// Every loose ref copied: its path under `refs/` → its content.
    snapshot: std::collections::BTreeMap<String, Vec<u8>>,
}

impl CloneView {
    /// The copy of `refs/`, to bind over `<clone>/refs`.
    pub fn refs_dir(&self) -> PathBuf {
        self.dir.join("refs")
    }

    /// The empty folder for reflogs, to bind over `<clone>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The private object store, to bind over `<clone>/objects`.
    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// Where the clone's object store is to be bound read-only (the
    /// private store's alternate).
    pub fn base_objects_dir(&self) -> PathBuf {
        self.dir.join("base-objects")
    }
}

/// What [`Repo::apply_clone_view`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ViewApplied {
    /// The task branch's new commit, when the agent moved it.
    pub moved_to: Option<String>,
    /// What was thrown away: refs other than the task branch the agent
    /// changed in its copy (names under `refs/`: `heads/orch/widget-2`,
    /// `stash`), and the task branch itself when the agent left something
    /// there that is not an object id.
    pub discarded: Vec<String>,
}

/// Most files read from a view's `refs/` (an agent could
/// create millions).
const MAX_VIEW_FILES: usize = 100_000;

/// Largest loose ref file read (an object id or `ref: …` line is tiny).
const MAX_REF_BYTES: u64 = 4096;

impl Repo {
    /// Makes the view of task branch `branch` in `dir` (emptied first):
    /// the clone's loose refs copied under the clone lock (lock files and
    /// symlinks left out), an empty `logs/`, an empty `objects/` whose
    /// alternate is `base-objects/`.
    ///
    /// Errors: [`Error::InvalidRef`] for a refused branch name; a branch
    /// that does not exist yet (the worktree is made first); I/O errors.
    pub fn clone_view(&self, dir: &Path, branch: &str) -> anyhow::Result<CloneView> {
        validate_task_branch(branch, &self.branch_prefix, &self.default_branch)?;
        let _clone = self.lock_clone()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        let snapshot = read_view_files(&self.clone_dir.join("refs"), MAX_REF_BYTES)?;
        let view = CloneView {
            dir: absolute(dir)?,
            branch: branch.to_string(),
            start: Self::resolve_ref(&self.clone_dir, &format!("refs/heads/{branch}"))?
                .with_context(|| format!("branch {branch} does not exist in the clone"))?,
            snapshot,
        };
        for d in [
            view.refs_dir(),
            view.logs_dir(),
            view.objects_dir().join("info"),
            view.objects_dir().join("pack"),
            view.base_objects_dir(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        self.write_view_repo_files(&view)?;
        for (name, content) in &view.snapshot {
            let path = view.refs_dir().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(view)
    }

    /// The files that make the view a bare repository orch can fetch from
    /// and the agent's git can use: `HEAD` (the task branch) and the
    /// private store's `info/alternates` — `base-objects/` (the clone's
    /// store as the sandbox binds it) and the clone's store by its own
    /// path (which is how the host sees it; inside the sandbox that path
    /// is the private store itself, and git skips an alternate that is its
    /// own object directory).
    fn write_view_repo_files(&self, view: &CloneView) -> anyhow::Result<()> {
        std::fs::write(
            view.dir.join("HEAD"),
            format!("ref: refs/heads/{}\n", view.branch),
        )?;
        let store = absolute(&self.clone_dir.join("objects"))?;
        std::fs::write(
            view.objects_dir().join("info/alternates"),
            format!("{}\n{}\n", utf8(&view.base_objects_dir())?, utf8(&store)?),
        )?;
        Ok(())
    }

    /// After the agent's run: when the agent moved the task branch in
    /// `view` to an object id, fetches that branch from the view into the
    /// clone (so exactly the objects it needs arrive, verified by git),
    /// checks that it names a commit, and moves the real branch there only
    /// if it is still where the view began (`git update-ref <ref> <new>
    /// <old>`); then deletes the view. Every other change in the view is
    /// reported in [`ViewApplied::discarded`] and dropped.
    ///
    /// Nothing is carried over from a run that changed its worktree's git
    /// metadata: `worktree` (the run's) is checked first
    /// (`Repo::check_worktree`, and its `HEAD` must still be the task
    /// branch).
    ///
    /// Errors: [`Error::TamperedGitMetadata`]; the fetch fails (a corrupt
    /// or missing object); the real branch moved during the run (someone
    /// else wrote it); a view with more than 100,000 files in `refs/`; git
    /// and I/O errors. The view is deleted either way.
    pub fn apply_clone_view(
        &self,
        view: CloneView,
        worktree: &Path,
    ) -> anyhow::Result<ViewApplied> {
        let result = absolute(worktree)
            .and_then(|w| self.check_worktree(&w))
            .and_then(|wt| Self::check_head(&wt, &view.branch))
            .and_then(|()| self.apply_clone_view_inner(&view));
        let _ = std::fs::remove_dir_all(&view.dir);
        result
    }

    fn apply_clone_view_inner(&self, view: &CloneView) -> anyhow::Result<ViewApplied> {
        let own = format!("heads/{}", view.branch);
        let after = read_view_files(&view.refs_dir(), MAX_REF_BYTES)?;
        let mut applied = ViewApplied::default();
        for name in view.snapshot.keys().chain(after.keys()) {
            if *name != own
                && view.snapshot.get(name) != after.get(name)
                && !applied.discarded.contains(name)
            {
                applied.discarded.push(name.clone());
            }
        }
        let candidate = after
            .get(&own)
            .filter(|content| Some(*content) != view.snapshot.get(&own));
        let Some(content) = candidate else {
            return Ok(applied);
        };
        let new = match parse_object_id(content) {
            Some(new) if new == view.start => return Ok(applied),
            Some(new) => new,
            None => {
                applied.discarded.push(own);
                return Ok(applied);
            }
        };
        let reference = format!("refs/{own}");
        let _clone = self.lock_clone()?;
        // The agent could have rewritten these in its view: write them anew.
        self.write_view_repo_files(view)?;
        git_ok(
            &self.clone_dir,
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                utf8(&view.dir)?,
                &reference,
            ],
        )
        .with_context(|| format!("fetching the agent's {reference} from its view"))?;
        if !self.is_commit(&new)? {
            applied.discarded.push(own);
            return Ok(applied);
        }
        git_ok(
            &self.clone_dir,
            &["update-ref", &reference, &new, &view.start],
        )
        .with_context(|| {
            format!("{reference} moved during the agent's run; its commit {new} is not applied")
        })?;
        applied.moved_to = Some(new);
        Ok(applied)
    }

    /// After a sandboxed run, whose private object store is gone: when the
    /// worktree's index names an object the clone lacks (the agent staged
    /// files into its private store and did not commit them) or holds
    /// unmerged entries, resets the index to `HEAD`, so the next
    /// [`Repo::commit_all`] adds the files from the worktree again. The
    /// worktree's files are not touched. Returns whether it reset.
    /// Holds the worktree lock.
    ///
    /// Errors: not a worktree of this clone; git errors.
    pub fn repair_index(&self, worktree: &Path) -> anyhow::Result<bool> {
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        if run_git(&wt, &["write-tree"])?.success() {
            return Ok(false);
        }
        git_ok(&wt, &["read-tree", "HEAD"])?;
        Ok(true)
    }

    /// Whether `id` (a full object id) names a commit in the clone.
    fn is_commit(&self, id: &str) -> anyhow::Result<bool> {
        let out = run_git(&self.clone_dir, &["cat-file", "-t", id])?;
        Ok(out.success() && out.stdout.trim() == "commit")
    }
}

/// Whether a line of `file` starts with a conflict marker (`<<<<<<< ` or
/// `>>>>>>> `), read in chunks: memory stays bounded whatever the file.
fn holds_conflict_marker(file: std::fs::File) -> std::io::Result<bool> {
    use std::io::BufRead;
    const MARKERS: [&[u8]; 2] = [b"<<<<<<< ", b">>>>>>> "];
    let mut r = std::io::BufReader::new(file);
    // The start of the current line, while it may still be a marker.
    let mut head: Option<Vec<u8>> = Some(Vec::with_capacity(8));
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        for &c in buf {
            if c == b'\n' {
                head = Some(Vec::with_capacity(8));
                continue;
            }
            if let Some(h) = head.as_mut() {
                h.push(c);
                if h.len() == 8 {
                    if MARKERS.contains(&h.as_slice()) {
                        return Ok(true);
                    }
                    head = None;
                }
            }
        }
        let n = buf.len();
        r.consume(n);
    }
}

/// The regular files under `root` (symlinks and other kinds left out), as
/// `/`-separated paths relative to it.
///
/// Errors: more than [`MAX_VIEW_FILES`] entries; I/O errors.
fn walk_regular_files(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            seen += 1;
            if seen > MAX_VIEW_FILES {
                bail!("more than {MAX_VIEW_FILES} files under {}", root.display());
            }
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                if let Some(name) = path.strip_prefix(root).ok().and_then(Path::to_str) {
                    out.push(name.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// The loose refs under `root`: path relative to it → content; lock
/// files, symlinks and files over `max_bytes` left out.
///
/// Errors: as [`walk_regular_files`].
fn read_view_files(
    root: &Path,
    max_bytes: u64,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    for name in walk_regular_files(root)? {
        let path = root.join(&name);
        if name.ends_with(".lock") || std::fs::metadata(&path)?.len() > max_bytes {
            continue;
        }
        out.insert(name, std::fs::read(&path)?);
    }
    Ok(out)
}

/// A loose ref's object id (40 or 64 lowercase hex digits and a newline);
/// `None` for a symbolic ref or anything else.
fn parse_object_id(content: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(content).ok()?;
    let id = s.strip_suffix('\n').unwrap_or(s);
    ((id.len() == 40 || id.len() == 64)
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir with a bare origin whose `main` has one commit, a scratch
    /// clone of it (playing "someone else"), and a [`Repo`] for project `p`.
    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        origin: PathBuf,
        scratch: PathBuf,
        repo: Repo,
    }

    /// Run git with an identity; panic on failure; stdout trimmed.
    fn sh<'a>(at: impl Into<At<'a>>, args: &[&str]) -> String {
        let out = git_commit_ok(at, args).unwrap();
        assert!(out.success(), "git {:?} failed: {}", out.argv, out.stderr);
        out.stdout.trim().to_string()
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let origin = root.join("origin.git");
        let scratch = root.join("scratch");
        sh(&root, &["init", "-q", "--bare", "-b", "main", "origin.git"]);
        sh(&root, &["init", "-q", "-b", "main", "scratch"]);
        std::fs::write(scratch.join("README"), "line one\n").unwrap();
        sh(&scratch, &["add", "-A"]);
        sh(&scratch, &["commit", "-qm", "seed"]);
        sh(
            &scratch,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        sh(&scratch, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
        let repo = Repo {
            locks_dir: root.join("locks"),
            clone_dir: root.join("repos/p"),
            origin_url: origin.to_str().unwrap().to_string(),
            default_branch: "main".into(),
            branch_prefix: "orch/".into(),
        };
        Fixture {
            _tmp: tmp,
            root,
            origin,
            scratch,
            repo,
        }
    }

    impl Fixture {
        /// Worktree `wt` as orch runs git in it (its metadata checked).
        fn at(&self, wt: &Path) -> Worktree {
            self.repo.check_worktree(&absolute(wt).unwrap()).unwrap()
        }
        fn wt(&self, n: u32) -> PathBuf {
            self.root.join(format!("worktrees/p/orch-p-{n}"))
        }
        fn origin_sha(&self, reference: &str) -> String {
            let out = run_git_env(
                At::Nowhere,
                &[
                    "--git-dir",
                    self.origin.to_str().unwrap(),
                    "rev-parse",
                    reference,
                ],
                &[],
            )
            .unwrap();
            out.ok().unwrap().trim().to_string()
        }
        /// Someone else pushes a commit touching `file` to origin's main.
        fn advance_main(&self, file: &str, content: &str) {
            sh(
                &self.scratch,
                &["pull", "-q", "--ff-only", "origin", "main"],
            );
            std::fs::write(self.scratch.join(file), content).unwrap();
            sh(&self.scratch, &["add", "-A"]);
            sh(&self.scratch, &["commit", "-qm", "elsewhere"]);
            sh(
                &self.scratch,
                &["push", "-q", "origin", "HEAD:refs/heads/main"],
            );
        }
        /// ensure_worktree + write a file + commit_all; returns the sha.
        fn work(&self, n: u32, file: &str, content: &str) -> (PathBuf, String) {
            let wt = self.wt(n);
            self.repo
                .ensure_worktree(&wt, &format!("orch/p-{n}"))
                .unwrap();
            std::fs::write(wt.join(file), content).unwrap();
            let sha = self.repo.commit_all(&wt, "work").unwrap().unwrap();
            (wt, sha)
        }
    }

    fn is_invalid_ref(err: &anyhow::Error) -> bool {
        matches!(err.downcast_ref::<Error>(), Some(Error::InvalidRef { .. }))
    }

    /// git as anyone would run it (inherited environment, no guards), to
    /// prove a planted program is live.
    fn plain_git(dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap()
    }

    /// An executable script at `path` that appends its name to `marker`.
    fn plant(path: &Path, marker: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let script = format!(
            "#!/bin/sh\necho \"$0\" >> '{}'\ncat >/dev/null 2>&1 || true\nexit 0\n",
            marker.display()
        );
        std::fs::write(path, script).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn unsafe_keys(err: &anyhow::Error) -> Vec<String> {
        match err.downcast_ref::<Error>() {
            Some(Error::UnsafeGitConfig { keys, .. }) => keys.clone(),
            _ => panic!("expected UnsafeGitConfig, got {err:#}"),
        }
    }

    #[test]
    fn hooks_planted_in_the_shared_clone_never_run_under_orch() {
        let f = fixture();
        let (wt, _) = f.work(1, "a", "1");
        let marker = f.root.join("hook-ran");
        let hooks = f.repo.clone_dir.join("hooks");
        for h in [
            "pre-commit",
            "commit-msg",
            "post-commit",
            "pre-push",
            "reference-transaction",
            "post-checkout",
            "post-rewrite",
            "pre-rebase",
            "post-index-change",
            "pre-auto-gc",
        ] {
            plant(&hooks.join(h), &marker);
        }
        std::fs::write(wt.join("b"), "2").unwrap();
        f.repo.commit_all(&wt, "more").unwrap().unwrap();
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        f.advance_main("c", "3");
        assert!(matches!(
            f.repo.rebase_onto_default(&wt).unwrap(),
            RebaseOutcome::Rebased { .. }
        ));
        std::fs::write(wt.join("d"), "4").unwrap();
        f.repo.discard_changes(&wt).unwrap();
        f.repo.ensure_worktree(&f.wt(2), "orch/p-2").unwrap();
        f.repo.remove_worktree(&f.wt(2)).unwrap();
        assert!(
            !marker.exists(),
            "a hook ran: {}",
            std::fs::read_to_string(&marker).unwrap()
        );
        // The planted hooks are live for a git run without orch's guards.
        std::fs::write(wt.join("e"), "5").unwrap();
        assert!(plain_git(&wt, &["add", "e"]).status.success());
        assert!(plain_git(&wt, &["commit", "-qm", "x"]).status.success());
        assert!(marker.exists());
    }

    #[test]
    fn an_fsmonitor_set_in_the_clone_never_runs_and_the_repo_is_refused() {
        let f = fixture();
        let (wt, _) = f.work(1, "a", "1");
        let marker = f.root.join("fsmonitor-ran");
        let prog = f.root.join("fsmon");
        plant(&prog, &marker);
        let cfg = f.repo.clone_dir.join("config");
        assert!(plain_git(
            &f.root,
            &[
                "config",
                "--file",
                cfg.to_str().unwrap(),
                "core.fsmonitor",
                prog.to_str().unwrap()
            ]
        )
        .status
        .success());
        std::fs::write(wt.join("b"), "2").unwrap();
        let err = f.repo.commit_all(&wt, "more").unwrap_err();
        assert_eq!(unsafe_keys(&err), ["core.fsmonitor"]);
        assert!(
            format!("{err:#}").contains("refusing to run git"),
            "{err:#}"
        );
        let err = f.repo.sync().unwrap_err();
        assert_eq!(unsafe_keys(&err), ["core.fsmonitor"]);
        assert!(!marker.exists());
        assert_eq!(audit(&wt).len(), 1, "{:?}", audit(&wt));
        // Live for a plain git.
        plain_git(&wt, &["status", "--porcelain"]);
        assert!(marker.exists());
    }

    #[test]
    fn a_filter_driver_never_runs_and_the_repo_is_refused() {
        let f = fixture();
        let (wt, _) = f.work(1, "a", "1");
        let marker = f.root.join("filter-ran");
        let prog = f.root.join("clean");
        plant(&prog, &marker);
        std::fs::write(wt.join(".gitattributes"), "* filter=evil\n").unwrap();
        std::fs::write(wt.join("b"), "2").unwrap();
        let cfg = f.repo.clone_dir.join("config");
        let set = |file: &Path, k: &str, v: &str| {
            assert!(
                plain_git(&f.root, &["config", "--file", file.to_str().unwrap(), k, v])
                    .status
                    .success()
            )
        };
        set(&cfg, "filter.evil.clean", prog.to_str().unwrap());
        let err = f.repo.commit_all(&wt, "more").unwrap_err();
        assert_eq!(unsafe_keys(&err), ["filter.evil.clean"]);
        assert!(!marker.exists());
        let out = plain_git(&wt, &["add", "b"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(marker.exists());
        // The worktree's own config file is read too.
        assert!(plain_git(
            &f.root,
            &[
                "config",
                "--file",
                cfg.to_str().unwrap(),
                "--unset",
                "filter.evil.clean"
            ]
        )
        .status
        .success());
        let wcfg = Repo::worktree_gitdir(&wt).unwrap().join("config.worktree");
        set(&wcfg, "core.pager", prog.to_str().unwrap());
        let err = f.repo.head_sha(&wt).unwrap_err();
        assert_eq!(unsafe_keys(&err), ["core.pager"]);
        std::fs::remove_file(&wcfg).unwrap();
        // Removing the key makes the repository usable again.
        std::fs::remove_file(wt.join(".gitattributes")).unwrap();
        std::fs::remove_file(&marker).unwrap();
        f.repo.commit_all(&wt, "more").unwrap().unwrap();
        assert!(!marker.exists());
        assert!(audit(&wt).is_empty());
    }

    #[test]
    fn program_keys_are_recognised_and_plain_ones_are_not() {
        for k in [
            "core.sshCommand",
            "core.pager",
            "credential.helper",
            "credential.https://x.example.helper",
            "filter.lfs.process",
            "diff.x.textconv",
            "merge.ours.driver",
            "include.path",
            "includeIf.gitdir:/a.b/.path",
            "remote.origin.uploadpack",
            "gpg.ssh.program",
            "core.fsmonitor",
            "core.hooksPath",
        ] {
            assert!(is_program_key(k), "{k}");
        }
        for k in [
            "core.bare",
            "core.repositoryformatversion",
            "remote.origin.url",
            "remote.origin.fetch",
            "branch.orch/p-1.remote",
            "extensions.worktreeConfig",
            "user.name",
        ] {
            assert!(!is_program_key(k), "{k}");
        }
    }

    #[test]
    fn git_sees_only_the_minimal_environment() {
        // cargo sets CARGO_MANIFEST_DIR for the test process; git must not
        // see it (nor any ORCH_* secret), only KEPT_ENV and orch's own.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let out = run_git_env(At::Nowhere, &["-c", "alias.showenv=!env", "showenv"], &[])
            .unwrap()
            .ok()
            .unwrap();
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        assert!(
            names.contains(&"PATH") && names.contains(&"GIT_TERMINAL_PROMPT"),
            "{out}"
        );
        for name in &names {
            assert!(
                !name.starts_with("ORCH_") && !name.starts_with("CARGO"),
                "{name} reached git: {out}"
            );
        }
    }

    #[test]
    fn probe_finds_hooks_off() {
        let tmp = tempfile::tempdir().unwrap();
        probe_hooks_off(tmp.path()).unwrap();
    }

    #[test]
    fn validate_task_branch_accepts_prefixed_and_refuses_the_rest() {
        validate_task_branch("orch/p-1", "orch/", "main").unwrap();
        for bad in [
            "main",
            "HEAD",
            "refs/heads/main",
            "refs/heads/orch/p-1",
            "HEAD:main",
            "orch/../main",
            "orch/p-1:main",
            "feature/x",
            "orch/",
            "-orch/p-1",
            "orch/p 1",
            "orch/p~1",
            "orch/p^1",
            "orch/p@{1}",
            "orch/p*",
            "orch/p.lock",
            "orch//p",
            "orch/p/",
            "",
        ] {
            let err = validate_task_branch(bad, "orch/", "main").unwrap_err();
            assert!(matches!(err, Error::InvalidRef { .. }), "{bad:?}: {err}");
        }
        // A misconfigured prefix can never make the default branch valid.
        assert!(validate_task_branch("main", "ma", "main").is_err());
    }

    /// The in-process check agrees with `git check-ref-format --branch`
    /// on every name git itself refuses or accepts here.
    #[test]
    fn branch_names_are_judged_as_git_judges_them() {
        for name in [
            "orch/p-1",
            "orch/p.1",
            "orch/.p",
            "orch/p.",
            "orch/p.lock",
            "orch/p.lock.x",
            "orch//p",
            "orch/p/",
            "/orch/p",
            "orch/p..1",
            "orch/@",
            "orch/a@b",
            "orch/p\x7f",
            "orch/é",
            "orch/p{1}",
            "orch/p@{1}",
            "orch/a/.b/c",
            "orch/x.lock/y",
        ] {
            let git =
                run_git_env(At::Nowhere, &["check-ref-format", "--branch", name], &[]).unwrap();
            let git_ok = git.success() && git.stdout.trim_end_matches('\n') == name;
            let ours = validate_branch_name(name);
            assert_eq!(
                ours.is_ok(),
                git_ok,
                "{name:?}: ours {ours:?}, git accepts: {git_ok}"
            );
        }
        // Stricter than `--branch`, which reads a lone "@" as HEAD.
        assert!(validate_branch_name("@").is_err());
    }

    #[test]
    fn sync_and_ensure_worktree_are_idempotent() {
        let f = fixture();
        f.repo.sync().unwrap();
        f.repo.sync().unwrap();
        let wt = f.wt(1);
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        assert_eq!(f.repo.head_sha(&wt).unwrap(), f.origin_sha("main"));
        assert_eq!(
            std::fs::read_to_string(wt.join("README")).unwrap(),
            "line one\n"
        );
        // Second call is a no-op: uncommitted work survives.
        std::fs::write(wt.join("scratch.txt"), "wip").unwrap();
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        assert!(wt.join("scratch.txt").exists());
        // Same path, other branch: refused, nothing deleted.
        assert!(f.repo.ensure_worktree(&wt, "orch/p-2").is_err());
        assert!(wt.join("scratch.txt").exists());
        // Invalid branch names are refused before anything happens.
        let err = f.repo.ensure_worktree(&f.wt(9), "main").unwrap_err();
        assert!(is_invalid_ref(&err));
        assert!(!f.wt(9).exists());
    }

    #[test]
    fn recreated_worktree_continues_from_pushed_branch() {
        let f = fixture();
        let (wt, sha) = f.work(1, "a.txt", "a\n");
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        std::fs::remove_dir_all(&wt).unwrap();
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        assert_eq!(f.repo.head_sha(&wt).unwrap(), sha);
        assert_eq!(std::fs::read_to_string(wt.join("a.txt")).unwrap(), "a\n");
        // Removed the proper way, then re-created: same result.
        f.repo.remove_worktree(&wt).unwrap();
        f.repo.remove_worktree(&wt).unwrap();
        assert!(!wt.exists());
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        assert_eq!(f.repo.head_sha(&wt).unwrap(), sha);
    }

    #[test]
    fn recreated_worktree_prefers_origin_unless_local_only_adds_commits() {
        let f = fixture();
        let (wt, first) = f.work(1, "a.txt", "a\n");
        std::fs::write(wt.join("b.txt"), "b\n").unwrap();
        let second = f.repo.commit_all(&wt, "more").unwrap().unwrap();
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        f.repo.remove_worktree(&wt).unwrap();
        // A stale local branch (behind origin) is reset to origin's.
        sh(&f.repo.clone_dir, &["branch", "-f", "orch/p-1", &first]);
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        assert_eq!(f.repo.head_sha(&wt).unwrap(), second);
        // Unpushed local commits on top of origin's are kept.
        std::fs::write(wt.join("c.txt"), "c\n").unwrap();
        let third = f.repo.commit_all(&wt, "unpushed").unwrap().unwrap();
        std::fs::remove_dir_all(&wt).unwrap();
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        assert_eq!(f.repo.head_sha(&wt).unwrap(), third);
        assert_eq!(
            sh(&f.at(&wt), &["rev-parse", "--abbrev-ref", "@{upstream}"]),
            "origin/orch/p-1"
        );
    }

    #[test]
    fn conflict_markers_are_found_only_in_regular_files_inside_the_worktree() {
        let f = fixture();
        let wt = f.wt(1);
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        std::fs::write(wt.join("clean.txt"), "a\n<<<<<<<no space\n").unwrap();
        std::fs::write(wt.join("marked.txt"), "a\n>>>>>>> theirs\n").unwrap();
        std::fs::write(wt.join("README"), "<<<<<<< HEAD\n").unwrap();
        // Outside the worktree, a file with a marker; inside, links to it
        // and to a device, and a FIFO (a plain read would block forever).
        let outside = f.root.join("outside.txt");
        std::fs::write(&outside, "<<<<<<< secret\n").unwrap();
        std::os::unix::fs::symlink(&outside, wt.join("link.txt")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", wt.join("zero")).unwrap();
        let fifo = wt.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let repo = f.repo.clone();
        let w = wt.clone();
        std::thread::spawn(move || tx.send(repo.conflict_marked_files(&w).unwrap()).unwrap());
        let marked = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("conflict_marked_files blocked");
        assert_eq!(marked, vec!["README".to_string(), "marked.txt".to_string()]);
    }

    #[test]
    fn commit_all_commits_changes_including_untracked_and_not_a_clean_tree() {
        let f = fixture();
        let wt = f.wt(1);
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        assert_eq!(f.repo.commit_all(&wt, "nothing").unwrap(), None);
        std::fs::create_dir_all(wt.join("new/dir")).unwrap();
        std::fs::write(wt.join("new/dir/file"), "x").unwrap();
        let sha = f.repo.commit_all(&wt, "add").unwrap().unwrap();
        assert_eq!(sha, f.repo.head_sha(&wt).unwrap());
        assert!(f.repo.exists_at_head(&wt, "new/dir/file").unwrap());
        assert_eq!(f.repo.commit_all(&wt, "again").unwrap(), None);
        std::fs::write(wt.join("README"), "changed\n").unwrap();
        let sha2 = f.repo.commit_all(&wt, "edit").unwrap().unwrap();
        assert_ne!(sha, sha2);
        let author = sh(&f.at(&wt), &["log", "-1", "--format=%an <%ae>"]);
        assert_eq!(author, "orch <orch@localhost>");
    }

    #[test]
    fn push_branch_pushes_and_refuses_the_default_branch() {
        let f = fixture();
        let main_before = f.origin_sha("main");
        let (wt, sha) = f.work(1, "a.txt", "a\n");
        assert_eq!(f.repo.remote_branch_sha("orch/p-1").unwrap(), None);
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        assert_eq!(
            f.repo.remote_branch_sha("orch/p-1").unwrap(),
            Some(sha.clone())
        );
        assert_eq!(f.origin_sha("orch/p-1"), sha);
        for bad in [
            "main",
            "refs/heads/main",
            "HEAD:main",
            "orch/../main",
            "feature/x",
        ] {
            let err = f.repo.push_branch(&wt, bad).unwrap_err();
            assert!(is_invalid_ref(&err), "{bad}: {err:#}");
            let err = f
                .repo
                .push_branch_force_with_lease(&wt, bad, &main_before)
                .unwrap_err();
            assert!(is_invalid_ref(&err), "{bad}: {err:#}");
        }
        assert_eq!(f.origin_sha("main"), main_before);
        assert_eq!(f.repo.remote_branch_sha("main").unwrap(), Some(main_before));
        assert!(is_invalid_ref(
            &f.repo.remote_branch_sha("main~1").unwrap_err()
        ));
    }

    #[test]
    fn force_with_lease_refuses_a_stale_expectation() {
        let f = fixture();
        let (wt, first) = f.work(1, "a.txt", "1\n");
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        // Rewrite history locally (as a rebase would).
        sh(&f.at(&wt), &["commit", "-q", "--amend", "-m", "amended"]);
        let amended = f.repo.head_sha(&wt).unwrap();
        // Plain push is a non-fast-forward: refused.
        let err = f.repo.push_branch(&wt, "orch/p-1").unwrap_err();
        assert!(matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Subprocess { .. })
        ));
        // Stale lease (origin is at `first`, not main's sha): refused.
        let stale = f.origin_sha("main");
        let err = f
            .repo
            .push_branch_force_with_lease(&wt, "orch/p-1", &stale)
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Error>(), Some(Error::Subprocess { .. })),
            "{err:#}"
        );
        assert_eq!(f.origin_sha("orch/p-1"), first);
        // Not a sha at all: refused before git.
        assert!(is_invalid_ref(
            &f.repo
                .push_branch_force_with_lease(&wt, "orch/p-1", "main")
                .unwrap_err()
        ));
        // Correct lease: accepted.
        f.repo
            .push_branch_force_with_lease(&wt, "orch/p-1", &first)
            .unwrap();
        assert_eq!(f.origin_sha("orch/p-1"), amended);
    }

    #[test]
    fn fast_forward_default_merges_once_and_refuses_when_main_moved() {
        let f = fixture();
        let (wt1, sha1) = f.work(1, "a.txt", "a\n");
        f.repo.push_branch(&wt1, "orch/p-1").unwrap();
        assert_eq!(
            f.repo.fast_forward_default(&wt1).unwrap(),
            FastForward::Merged { sha: sha1.clone() }
        );
        assert_eq!(f.origin_sha("main"), sha1);
        assert_eq!(
            f.repo.fast_forward_default(&wt1).unwrap(),
            FastForward::AlreadyMerged
        );

        // Task 2 starts from the new main; then main moves elsewhere.
        let (wt2, sha2) = f.work(2, "b.txt", "b\n");
        f.repo.push_branch(&wt2, "orch/p-2").unwrap();
        assert!(f.repo.is_ancestor(&wt2, &sha1, &sha2).unwrap());
        f.advance_main("c.txt", "c\n");
        let moved = f.origin_sha("main");
        assert_eq!(
            f.repo.fast_forward_default(&wt2).unwrap(),
            FastForward::NotFastForward
        );
        assert_eq!(f.origin_sha("main"), moved);

        let RebaseOutcome::Rebased { new_head } = f.repo.rebase_onto_default(&wt2).unwrap() else {
            panic!("expected Rebased");
        };
        assert_eq!(new_head, f.repo.head_sha(&wt2).unwrap());
        assert!(f.repo.is_ancestor(&wt2, &moved, &new_head).unwrap());
        assert!(!f.repo.is_ancestor(&wt2, &sha2, &new_head).unwrap());
        assert_eq!(
            f.repo.rebase_onto_default(&wt2).unwrap(),
            RebaseOutcome::UpToDate
        );
        f.repo
            .push_branch_force_with_lease(&wt2, "orch/p-2", &sha2)
            .unwrap();
        assert_eq!(
            f.repo.fast_forward_default(&wt2).unwrap(),
            FastForward::Merged {
                sha: new_head.clone()
            }
        );
        assert_eq!(f.origin_sha("main"), new_head);
        assert!(f.repo.is_ancestor(&wt2, "no-such-rev", &new_head).is_err());
    }

    #[test]
    fn rebase_conflict_is_aborted_and_leaves_the_worktree_clean() {
        let f = fixture();
        let (wt1, _) = f.work(1, "README", "from task one\n");
        let (wt2, sha2) = f.work(2, "README", "from task two\n");
        assert!(matches!(
            f.repo.fast_forward_default(&wt1).unwrap(),
            FastForward::Merged { .. }
        ));
        let main = f.origin_sha("main");
        match f.repo.rebase_onto_default(&wt2).unwrap() {
            RebaseOutcome::Conflict { files } => assert_eq!(files, vec!["README".to_string()]),
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(sh(&f.at(&wt2), &["status", "--porcelain"]), "");
        let admin = f.repo.check_worktree(&wt2).unwrap().admin;
        assert!(!Repo::rebase_in_progress(&admin));
        assert_eq!(f.repo.head_sha(&wt2).unwrap(), sha2);
        assert_eq!(
            sh(&f.at(&wt2), &["symbolic-ref", "--short", "HEAD"]),
            "orch/p-2"
        );
        assert_eq!(
            f.repo.fast_forward_default(&wt2).unwrap(),
            FastForward::NotFastForward
        );
        assert_eq!(f.origin_sha("main"), main);
    }

    #[test]
    fn discard_changes_restores_head() {
        let f = fixture();
        let wt = f.wt(9);
        f.repo.ensure_worktree(&wt, "orch/p-9").unwrap();
        std::fs::write(wt.join("README"), "scribbled").unwrap();
        std::fs::write(wt.join("new.txt"), "x").unwrap();
        f.repo.discard_changes(&wt).unwrap();
        assert_eq!(sh(&f.at(&wt), &["status", "--porcelain"]), "");
        assert!(!wt.join("new.txt").exists());
    }

    #[test]
    fn a_stale_index_lock_from_a_killed_git_does_not_wedge_commits() {
        let f = fixture();
        let wt = f.wt(8);
        f.repo.ensure_worktree(&wt, "orch/p-8").unwrap();
        let admin = f
            .repo
            .check_worktree(&absolute(&wt).unwrap())
            .unwrap()
            .admin;
        std::fs::write(admin.join("index.lock"), "").unwrap();
        std::fs::write(admin.join("HEAD.lock"), "").unwrap();
        let branch_lock = f.repo.clone_dir.join("refs/heads/orch/p-8.lock");
        std::fs::write(&branch_lock, "").unwrap();
        std::fs::write(wt.join("new.txt"), "x").unwrap();
        assert!(f.repo.commit_all(&wt, "after a crash").unwrap().is_some());
        assert!(!branch_lock.exists());
    }

    #[test]
    fn a_rebase_killed_midway_with_its_index_lock_is_aborted_by_ensure_worktree() {
        let f = fixture();
        let (wt, head) = f.work(7, "README", "mine\n");
        f.advance_main("README", "theirs\n");
        f.repo.sync().unwrap();
        // A conflicting rebase stops midway, as a killed one would be left.
        let _ = Command::new("git")
            .arg("-C")
            .arg(&wt)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@x",
                "rebase",
                "origin/main",
            ])
            .output()
            .unwrap();
        let admin = f
            .repo
            .check_worktree(&absolute(&wt).unwrap())
            .unwrap()
            .admin;
        assert!(Repo::rebase_in_progress(&admin));
        std::fs::write(admin.join("index.lock"), "").unwrap();
        f.repo.ensure_worktree(&wt, "orch/p-7").unwrap();
        assert!(!Repo::rebase_in_progress(&admin));
        assert_eq!(f.repo.head_sha(&wt).unwrap(), head);
    }

    #[test]
    fn exists_at_head_sees_committed_paths_only() {
        let f = fixture();
        let wt = f.wt(1);
        f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
        std::fs::create_dir_all(wt.join("docs/work-items/7")).unwrap();
        std::fs::write(wt.join("docs/work-items/7/design.md"), "# d\n").unwrap();
        assert!(!f.repo.exists_at_head(&wt, "docs/work-items/7/").unwrap());
        f.repo.commit_all(&wt, "design").unwrap().unwrap();
        for p in [
            "docs/work-items/7",
            "docs/work-items/7/",
            "./docs/work-items/7/design.md",
            "docs",
            "README",
        ] {
            assert!(f.repo.exists_at_head(&wt, p).unwrap(), "{p}");
        }
        for p in [
            "docs/work-items/8",
            "docs/work-items/*",
            "docs/work",
            "READ",
        ] {
            assert!(!f.repo.exists_at_head(&wt, p).unwrap(), "{p}");
        }
        assert!(f.repo.exists_at_head(&wt, "../x").is_err());
        assert!(f.repo.exists_at_head(&wt, "/etc").is_err());
    }

    #[test]
    fn concurrent_tasks_on_one_clone_do_not_trip_over_each_other() {
        let f = fixture();
        std::thread::scope(|s| {
            for n in 1..=4u32 {
                let f = &f;
                s.spawn(move || {
                    let branch = format!("orch/p-{n}");
                    let (wt, sha) = f.work(n, &format!("f{n}.txt"), "x\n");
                    f.repo.push_branch(&wt, &branch).unwrap();
                    f.repo.sync().unwrap();
                    assert_eq!(f.repo.remote_branch_sha(&branch).unwrap(), Some(sha));
                });
            }
        });
    }

    #[test]
    fn a_clone_view_carries_over_only_the_task_branch_and_new_objects() {
        let f = fixture();
        let (wt1, wt2) = (f.wt(1), f.wt(2));
        f.repo.ensure_worktree(&wt1, "orch/p-1").unwrap();
        f.repo.ensure_worktree(&wt2, "orch/p-2").unwrap();
        let clone = f.repo.clone_dir.clone();
        let real = |b: &str| {
            Repo::resolve_ref(&clone, &format!("refs/heads/{b}"))
                .unwrap()
                .unwrap()
        };
        let (p1, p2) = (real("orch/p-1"), real("orch/p-2"));
        let dir = f.root.join("views/task-1");
        // What an agent's git does in its view: commit on its branch (the
        // commit object lands in the private store, reading the clone's
        // through its alternates, as in the sandbox), move another task's
        // branch, stash, plant a file in the object store.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let private = view.objects_dir();
        let in_view = |args: &[&str]| {
            let mut full: Vec<&str> = COMMIT_CONFIG.to_vec();
            full.extend_from_slice(args);
            run_git_env(
                At::Worktree(&f.at(&wt1)),
                &full,
                &[("GIT_OBJECT_DIRECTORY", private.to_str().unwrap())],
            )
            .unwrap()
            .ok()
            .unwrap()
            .trim()
            .to_string()
        };
        let commit = in_view(&["commit-tree", "-p", "HEAD", "-m", "agent", "HEAD^{tree}"]);
        assert!(
            !f.repo.is_commit(&commit).unwrap(),
            "not in the clone's store yet"
        );
        std::fs::write(
            view.refs_dir().join("heads/orch/p-1"),
            format!("{commit}\n"),
        )
        .unwrap();
        std::fs::write(
            view.refs_dir().join("heads/orch/p-2"),
            format!("{commit}\n"),
        )
        .unwrap();
        std::fs::write(view.refs_dir().join("stash"), format!("{commit}\n")).unwrap();
        std::fs::write(private.join("evil.sh"), "#!/bin/sh\n").unwrap();
        let applied = f.repo.apply_clone_view(view, &wt1).unwrap();
        assert_eq!(applied.moved_to.as_deref(), Some(commit.as_str()));
        assert_eq!(applied.discarded, ["heads/orch/p-2", "stash"]);
        assert_eq!(real("orch/p-1"), commit);
        assert!(f.repo.is_commit(&commit).unwrap(), "fetched into the clone");
        assert_eq!(real("orch/p-2"), p2, "another task's branch is untouched");
        assert!(!clone.join("objects/evil.sh").exists());
        assert!(!dir.exists(), "the view is removed");
        assert_ne!(p1, commit);

        // A corrupt object under the branch: the fetch refuses it, nothing
        // moves, nothing of it reaches the clone's store.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let fake = format!("ab{}", "c".repeat(38));
        std::fs::create_dir_all(view.objects_dir().join("ab")).unwrap();
        std::fs::write(
            view.objects_dir().join("ab").join("c".repeat(38)),
            "garbage",
        )
        .unwrap();
        std::fs::write(view.refs_dir().join("heads/orch/p-1"), format!("{fake}\n")).unwrap();
        let err = f.repo.apply_clone_view(view, &wt1).unwrap_err();
        assert!(
            format!("{err:#}").contains("fetching the agent's"),
            "{err:#}"
        );
        assert_eq!(real("orch/p-1"), commit);
        assert!(!clone.join("objects/ab").join("c".repeat(38)).exists());
        assert!(!dir.exists(), "the view is removed after a failure too");

        // Something that is not a commit on the branch is not applied.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let blob = sh(&f.at(&wt1), &["hash-object", "-w", "README"]);
        std::fs::write(view.refs_dir().join("heads/orch/p-1"), format!("{blob}\n")).unwrap();
        let applied = f.repo.apply_clone_view(view, &wt1).unwrap();
        assert_eq!(applied.moved_to, None);
        assert_eq!(applied.discarded, ["heads/orch/p-1"]);
        assert_eq!(real("orch/p-1"), commit);

        // The real branch moved during the run: the view is not applied.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let other = sh(
            &f.at(&wt1),
            &["commit-tree", "-p", "HEAD", "-m", "agent 2", "HEAD^{tree}"],
        );
        std::fs::write(view.refs_dir().join("heads/orch/p-1"), format!("{other}\n")).unwrap();
        std::fs::write(wt1.join("README"), "moved by someone else\n").unwrap();
        let moved = f.repo.commit_all(&wt1, "someone else").unwrap().unwrap();
        let err = f.repo.apply_clone_view(view, &wt1).unwrap_err();
        assert!(
            format!("{err:#}").contains("moved during the agent's run"),
            "{err:#}"
        );
        assert_eq!(real("orch/p-1"), moved);
    }

    #[test]
    fn methods_refuse_a_directory_that_is_not_one_of_our_worktrees() {
        let f = fixture();
        f.repo.sync().unwrap();
        // The scratch clone is a git repo, but not a worktree of our clone.
        assert!(f.repo.commit_all(&f.scratch, "x").is_err());
        assert!(f.repo.head_sha(&f.scratch).is_err());
        assert!(f.repo.remove_worktree(&f.scratch).is_err());
        assert!(f.scratch.join(".git").exists());
    }

    /// The file a [`Error::TamperedGitMetadata`] in `err`'s chain names.
    fn tampered_file(err: &anyhow::Error) -> PathBuf {
        match err.chain().find_map(|c| c.downcast_ref::<Error>()) {
            Some(Error::TamperedGitMetadata { file, .. }) => file.clone(),
            _ => panic!("expected TamperedGitMetadata, got {err:#}"),
        }
    }

    #[test]
    fn a_worktree_whose_git_metadata_changed_is_refused_and_then_recreated() {
        let f = fixture();
        let (wt, _) = f.work(1, "a", "1");
        f.work(2, "a", "2");
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        let pushed = f.origin_sha("refs/heads/orch/p-1");
        let admin = f.at(&wt).admin;
        // A repository of the attacker's: a copy of the clone whose origin
        // is its own bare repository.
        let evil = f.root.join("evil.git");
        let target = f.root.join("evil-target.git");
        sh(&f.root, &["init", "-q", "--bare", "evil-target.git"]);
        let copy = Command::new("cp")
            .arg("-a")
            .arg(&f.repo.clone_dir)
            .arg(&evil)
            .status()
            .unwrap();
        assert!(copy.success());
        sh(
            &evil,
            &["config", "remote.origin.url", target.to_str().unwrap()],
        );
        let fake = f.root.join("fake");
        sh(&f.root, &["init", "-q", "fake"]);
        let other_branch = "ref: refs/heads/orch/p-2\n".to_string();
        type Tamper<'a> = Box<dyn Fn() + 'a>;
        let cases: Vec<(&str, PathBuf, Tamper)> = vec![
            (
                "commondir → the attacker's copy",
                admin.join("commondir"),
                Box::new(|| {
                    std::fs::write(admin.join("commondir"), format!("{}\n", evil.display()))
                        .unwrap()
                }),
            ),
            (
                "commondir removed (the admin folder a repository of its own)",
                admin.join("commondir"),
                Box::new(|| std::fs::remove_file(admin.join("commondir")).unwrap()),
            ),
            (
                "gitdir → elsewhere",
                admin.join("gitdir"),
                Box::new(|| {
                    std::fs::write(
                        admin.join("gitdir"),
                        format!("{}\n", fake.join(".git").display()),
                    )
                    .unwrap()
                }),
            ),
            (
                ".git → the attacker's worktree admin",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::write(
                        wt.join(".git"),
                        format!("gitdir: {}\n", evil.join("worktrees/orch-p-1").display()),
                    )
                    .unwrap()
                }),
            ),
            (
                ".git → another task's admin folder",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::write(
                        wt.join(".git"),
                        format!("gitdir: {}\n", f.at(&f.wt(2)).admin.display()),
                    )
                    .unwrap()
                }),
            ),
            (
                ".git a directory (a whole repository)",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::remove_file(wt.join(".git")).unwrap();
                    let c = Command::new("cp")
                        .arg("-a")
                        .arg(fake.join(".git"))
                        .arg(wt.join(".git"))
                        .status()
                        .unwrap();
                    assert!(c.success());
                }),
            ),
            (
                ".git a symbolic link",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::remove_file(wt.join(".git")).unwrap();
                    std::os::unix::fs::symlink(fake.join(".git"), wt.join(".git")).unwrap();
                }),
            ),
            (
                "HEAD → another task's branch",
                admin.join("HEAD"),
                Box::new(|| std::fs::write(admin.join("HEAD"), &other_branch).unwrap()),
            ),
            (
                "a planted rebase whose head-name is another branch",
                admin.join("rebase-merge/head-name"),
                Box::new(|| {
                    std::fs::create_dir_all(admin.join("rebase-merge")).unwrap();
                    std::fs::write(
                        admin.join("rebase-merge/head-name"),
                        "refs/remotes/origin/main\n",
                    )
                    .unwrap();
                    std::fs::write(admin.join("rebase-merge/orig-head"), format!("{pushed}\n"))
                        .unwrap();
                }),
            ),
        ];
        for (what, file, tamper) in &cases {
            f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
            tamper();
            std::fs::write(wt.join("b"), what).unwrap();
            let err = f.repo.ensure_worktree(&wt, "orch/p-1").unwrap_err();
            assert_eq!(&tampered_file(&err), file, "{what}: {err:#}");
            assert!(crate::error::is_permanent(&err), "{what}");
            assert!(
                format!("{err:#}").contains("refusing to run git"),
                "{err:#}"
            );
            if !what.starts_with("HEAD") && !what.starts_with("a planted") {
                for err in [
                    f.repo.commit_all(&wt, "x").unwrap_err(),
                    f.repo.push_branch(&wt, "orch/p-1").unwrap_err(),
                    f.repo.head_sha(&wt).unwrap_err(),
                    f.repo.conflict_marked_files(&wt).unwrap_err(),
                    f.repo.discard_changes(&wt).unwrap_err(),
                    f.repo.is_ancestor(&wt, &pushed, &pushed).unwrap_err(),
                ] {
                    assert_eq!(&tampered_file(&err), file, "{what}: {err:#}");
                }
            }
            if what.starts_with("HEAD") {
                let err = f.repo.push_branch(&wt, "orch/p-1").unwrap_err();
                assert_eq!(&tampered_file(&err), file, "{what}: {err:#}");
            }
            // Nothing reached the attacker's repositories or origin.
            assert_eq!(sh(&target, &["for-each-ref"]), "", "{what}");
            assert_eq!(f.origin_sha("refs/heads/orch/p-1"), pushed, "{what}");
            // The next run throws the worktree away and re-creates it from
            // what origin has.
            assert!(
                f.repo.drop_tampered_worktree(&wt, "orch/p-1").unwrap(),
                "{what}"
            );
            f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
            assert_eq!(f.repo.head_sha(&wt).unwrap(), pushed, "{what}");
            assert!(!wt.join("b").exists(), "{what}");
            assert_eq!(
                f.at(&wt).admin,
                admin,
                "{what}: the admin folder's name is reused"
            );
            assert!(!f.repo.drop_tampered_worktree(&wt, "orch/p-1").unwrap());
        }
        assert!(f.scratch.join(".git").is_dir());
        // The other task's worktree was left alone throughout.
        f.repo.ensure_worktree(&f.wt(2), "orch/p-2").unwrap();
    }

    #[test]
    fn a_program_key_in_the_worktree_config_is_refused() {
        let f = fixture();
        let (wt, _) = f.work(1, "a", "1");
        let admin = f.at(&wt).admin;
        std::fs::write(
            admin.join("config.worktree"),
            "[core]\n\tsshCommand = touch /tmp/pwned\n",
        )
        .unwrap();
        let err = f.repo.commit_all(&wt, "x").unwrap_err();
        assert_eq!(unsafe_keys(&err), ["core.sshcommand"]);
    }
}
