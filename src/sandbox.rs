//! The one confinement for everything orch runs that an agent could have
//! written: the agent itself and the project's test command (local CI and
//! the merge gate's re-test; DESIGN §4 "Agent sandbox", §11 INV-8).
//!
//! Why one place: the test command is project code, and a developer agent
//! edits the project. Run as orch it would read what the agent's sandbox
//! hides (the database, `/proc/<orch>/environ`, the secrets file) and write
//! what the agent cannot (another task's worktree, the shared clone's
//! hooks). So both kinds of child get the same base ([`confinement`]), and
//! the same choice of runner ([`use_bwrap`], `ORCH_AGENT_SANDBOX`); the
//! agent adds only what a commit needs (`worker`), the test command
//! nothing.

use std::path::{Path, PathBuf};

use crate::config::{AdminBind, AgentSandbox, Settings};
use crate::process::{Confinement, Runner};

/// Where `scripts/install` puts the secrets (`root:root 0600`, read by
/// systemd for the units): hidden in every sandbox even when
/// `ORCH_AGENT_SANDBOX_HIDE` does not name it.
pub const SECRETS_FILE: &str = crate::config::INSTALLED_SECRETS_FILE;

/// Which kind of confined child is run, for the warning when it runs
/// unconfined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// An agent CLI run.
    Agent,
    /// The project's `test_command` (code the agents may have written).
    TestCommand,
}

/// Whether `child` runs under bubblewrap (`true`) or as orch in its own
/// process group (`false`), as `ORCH_AGENT_SANDBOX` says: `none` → false;
/// `bwrap` → true, or an error when bubblewrap does not work here; unset →
/// true when it works, else false with one WARN per kind of child and
/// process.
///
/// Errors: [`crate::error::Error::Config`] (`ORCH_AGENT_SANDBOX`) when
/// bubblewrap is required and does not work.
pub fn use_bwrap(settings: &Settings, child: Child) -> anyhow::Result<bool> {
    use std::sync::Once;
    match settings.agent_sandbox {
        AgentSandbox::None => Ok(false),
        want => match crate::process::bwrap_usable() {
            Ok(()) => Ok(true),
            Err(why) if want == AgentSandbox::Bwrap => Err(crate::error::Error::config(
                "ORCH_AGENT_SANDBOX",
                format!("bwrap is required but does not work here: {why}"),
            )
            .into()),
            Err(why) => {
                static AGENT: Once = Once::new();
                static TEST: Once = Once::new();
                match child {
                    Child::Agent => AGENT.call_once(|| {
                        tracing::warn!(target: "worker", reason = %why, "agents run UNSANDBOXED (as orch): install bubblewrap, or set ORCH_AGENT_SANDBOX=none to accept this");
                    }),
                    Child::TestCommand => TEST.call_once(|| {
                        tracing::warn!(target: "ci", reason = %why, "the test command (agent-written code) runs UNSANDBOXED (as orch): install bubblewrap, or set ORCH_AGENT_SANDBOX=none to accept this");
                    }),
                }
                Ok(false)
            }
        },
    }
}

/// The base every confined child shares, for a child working in
/// `worktree` of the shared clone `clone`: the filesystem read-only, a
/// private `/tmp`, its own pid namespace ([`Confinement::wrap`]); hidden:
/// orch's state directory, the service managers' sockets
/// ([`manager_dirs`]), the database files (`-wal`, `-shm`, `-journal`
/// too) wherever they are, every `.env` from orch's working directory up,
/// the paths [`hidden_paths`] names (secrets file, credentials
/// directory, `ORCH_AGENT_SANDBOX_HIDE`); bound back: the clone read-only,
/// the worktree and `ORCH_AGENT_SANDBOX_WRITABLE` read-write. Relative
/// paths are made absolute against orch's working directory.
pub fn confinement(settings: &Settings, clone: &Path, worktree: &Path) -> Confinement {
    let db = abs(&settings.db_path);
    let mut hidden_files: Vec<PathBuf> = ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
        .collect();
    if let Ok(cwd) = std::env::current_dir() {
        hidden_files.extend(cwd.ancestors().map(|d| d.join(".env")));
    }
    let mut hidden_dirs = vec![abs(&settings.state_dir)];
    // A PostgreSQL store reached through a Unix socket: its folder (a TCP
    // store must be guarded by its password, which agents never see).
    hidden_dirs.extend(
        settings
            .db_path
            .to_str()
            .and_then(crate::sql::postgres_socket_dir),
    );
    hidden_dirs.extend(manager_dirs(std::env::var_os("XDG_RUNTIME_DIR")));
    for p in hidden_paths(settings, std::env::var_os("CREDENTIALS_DIRECTORY")) {
        if p.is_dir() {
            hidden_dirs.push(p);
        } else {
            hidden_files.push(p);
        }
    }
    let mut writable = vec![abs(worktree)];
    writable.extend(settings.agent_sandbox_writable.iter().cloned());
    Confinement {
        hidden_dirs,
        hidden_files,
        readonly: vec![abs(clone)],
        writable,
        overlays: vec![],
    }
}

/// The folders that hold the sockets of every user's service manager and
/// session bus: `/run/user` (`/run/user/<uid>/systemd/private`, `…/bus`)
/// and `runtime_dir` (`$XDG_RUNTIME_DIR`) when it is absolute and
/// elsewhere. Hidden from every confined child: orch starts agent runs as
/// units of its user's manager (`process::systemd`), and a child that
/// reached that manager could start a unit of its own, as orch and outside
/// its sandbox — with orch's state, database and worktrees in reach.
pub fn manager_dirs(runtime_dir: Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/run/user")];
    dirs.extend(
        runtime_dir
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && !p.starts_with("/run/user")),
    );
    dirs
}

/// The paths hidden beyond orch's own state: [`SECRETS_FILE`], the
/// systemd credentials directory `credentials` (`$CREDENTIALS_DIRECTORY`,
/// set by `LoadCredential=`), the admin listener's socket when
/// `ORCH_ADMIN_BIND` puts it outside the state directory, and every
/// `ORCH_AGENT_SANDBOX_HIDE` path, in that order. A path that does not
/// exist is kept here and skipped when the sandbox is built.
pub fn hidden_paths(settings: &Settings, credentials: Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(SECRETS_FILE)];
    paths.extend(
        credentials
            .filter(|c| !c.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute()),
    );
    if let Some(AdminBind::Socket(socket)) = &settings.admin_bind {
        if !socket.starts_with(abs(&settings.state_dir)) {
            paths.push(socket.clone());
        }
    }
    paths.extend(settings.agent_sandbox_hide.iter().cloned());
    paths
}

/// The runner for the project's test command in `worktree` (DESIGN §4):
/// [`confinement`] and nothing more. The clone stays read-only, the
/// worktree's admin folder (`HEAD`, `index`, `commondir`) included: the
/// tests cannot commit, move a branch or redirect orch's git, so the sha
/// orch tested is the sha it merges; `git status` and `git diff` still
/// work (git skips the index refresh it cannot write).
///
/// Errors: those of [`use_bwrap`].
pub fn test_runner(settings: &Settings, clone: &Path, worktree: &Path) -> anyhow::Result<Runner> {
    Ok(if use_bwrap(settings, Child::TestCommand)? {
        Runner::Bwrap(confinement(settings, clone, worktree))
    } else {
        Runner::Group
    })
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[(&str, &str)]) -> Settings {
        let env: std::collections::BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&|k| env.get(k).cloned(), None, None).unwrap()
    }

    #[test]
    fn the_installed_secrets_the_credentials_and_the_setting_are_hidden() {
        let s = settings(&[
            ("ORCH_AGENT_SANDBOX_HIDE", "/srv/a.key:/srv/keys"),
            ("ORCH_ADMIN_BIND", "unix:/run/orch/admin.sock"),
        ]);
        assert_eq!(
            hidden_paths(&s, Some("/run/credentials/orch-worker@1.service".into())),
            [
                SECRETS_FILE,
                "/run/credentials/orch-worker@1.service",
                "/run/orch/admin.sock",
                "/srv/a.key",
                "/srv/keys"
            ]
            .map(PathBuf::from)
        );
        let s = settings(&[
            ("ORCH_AGENT_SANDBOX_HIDE", "/srv/a.key:/srv/keys"),
            ("ORCH_ADMIN_BIND", "127.0.0.1:8501"),
        ]);
        assert_eq!(
            hidden_paths(&s, Some("".into())),
            [SECRETS_FILE, "/srv/a.key", "/srv/keys"].map(PathBuf::from)
        );
    }

    #[test]
    fn the_service_managers_sockets_are_hidden() {
        assert_eq!(manager_dirs(None), [PathBuf::from("/run/user")]);
        assert_eq!(
            manager_dirs(Some("/run/user/995".into())),
            [PathBuf::from("/run/user")]
        );
        assert_eq!(
            manager_dirs(Some("/var/tmp/xdg".into())),
            ["/run/user", "/var/tmp/xdg"].map(PathBuf::from)
        );
        assert_eq!(
            manager_dirs(Some("relative".into())),
            [PathBuf::from("/run/user")]
        );
        let s = settings(&[]);
        let c = confinement(&s, Path::new("/c"), Path::new("/w"));
        assert!(c.hidden_dirs.contains(&PathBuf::from("/run/user")), "{c:?}");
    }

    #[test]
    fn files_become_dev_null_and_folders_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("secret.env"), "x").unwrap();
        std::fs::create_dir_all(d.join("keys")).unwrap();
        let hide = format!(
            "{}:{}",
            d.join("secret.env").display(),
            d.join("keys").display()
        );
        let s = settings(&[("ORCH_AGENT_SANDBOX_HIDE", &hide)]);
        let c = confinement(&s, &d.join("clone"), &d.join("wt"));
        assert!(c.hidden_files.contains(&d.join("secret.env")), "{c:?}");
        assert!(c.hidden_dirs.contains(&d.join("keys")), "{c:?}");
        assert_eq!(c.readonly, [d.join("clone")]);
        assert_eq!(c.writable, [d.join("wt")]);
    }
}
