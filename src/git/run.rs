//! Running the `git` binary: the argv, the scrubbed environment and the
//! config overrides every call gets, and the typed error a failed run
//! becomes ([`Error::Subprocess`]).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::Context;

use super::metadata::Worktree;
use super::safety::{refuse_unsafe_config, repo_config_files};
#[cfg(doc)]
use super::Repo;
use crate::error::Error;

/// How much of a failed command's stderr is kept in [`Error::Subprocess`].
const STDERR_TAIL_BYTES: usize = 2048;

/// Config overrides for commands that create commits (identity, no signing,
/// no rerere auto-resolution that would hide a conflict).
pub(super) const COMMIT_CONFIG: [&str; 10] = [
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

/// The captured result of one git run.
pub(super) struct GitOutput {
    pub(super) argv: Vec<String>,
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl GitOutput {
    pub(super) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub(super) fn success(&self) -> bool {
        self.status.success()
    }

    /// The typed error for this (failed) run.
    pub(super) fn into_error(self) -> Error {
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
    pub(super) fn ok(self) -> Result<String, Error> {
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
pub(super) enum At<'a> {
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
pub(super) fn run_git_env(
    at: At<'_>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<GitOutput, Error> {
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

/// Replaces `cmd`'s environment with [`KEPT_ENV`] taken from orch's own,
/// plus `GIT_TERMINAL_PROMPT=0`, `LC_ALL=C`, `GIT_EDITOR=true` and
/// `GIT_CONFIG_NOSYSTEM` unset (the system config is root's and trusted).
pub(super) fn minimal_env(cmd: &mut Command) {
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

pub(super) fn run_git<'a>(at: impl Into<At<'a>>, args: &[&str]) -> Result<GitOutput, Error> {
    run_git_env(at.into(), args, &[])
}

/// Run git at `at`; `Ok(stdout)` on exit 0, else [`Error::Subprocess`].
pub(super) fn git_ok<'a>(at: impl Into<At<'a>>, args: &[&str]) -> Result<String, Error> {
    run_git(at, args)?.ok()
}

/// Like [`run_git`] with [`COMMIT_CONFIG`] in front of `args`.
pub(super) fn git_commit_ok<'a>(at: impl Into<At<'a>>, args: &[&str]) -> Result<GitOutput, Error> {
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

pub(super) fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path is not valid UTF-8: {}", path.display()))
}

pub(super) fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
