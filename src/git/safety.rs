//! What keeps a repository an agent could write from making orch's git
//! run a program: the config keys that would ([`is_program_key`]), the
//! refusal to run git where a repository's own config sets one, the
//! `orch check` audit, and the probe that hooks stay off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::bail;

use super::run::{git_commit_ok, git_ok, minimal_env, run_git_env, utf8, At};
use super::Repo;
use crate::error::Error;

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
pub(super) fn repo_config_files(dir: &Path) -> Vec<PathBuf> {
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
pub(super) fn refuse_unsafe_config(files: &[PathBuf]) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::*;
    use crate::git::RebaseOutcome;

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
    fn probe_finds_hooks_off() {
        let tmp = tempfile::tempdir().unwrap();
        probe_hooks_off(tmp.path()).unwrap();
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
