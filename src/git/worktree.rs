//! A task's worktree over its life: made (or continued from origin's
//! branch), re-made after its metadata was changed, cleaned, read, and
//! removed.

use std::path::Path;

use anyhow::{bail, Context};

use super::metadata::read_plain_file;
use super::names::validate_task_branch;
use super::run::{absolute, git_ok, run_git, run_git_env, utf8, At};
use super::Repo;
use crate::error::Error;

impl Repo {
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
        self.ensure_worktree_with(worktree, branch, false)
    }

    /// [`Repo::ensure_worktree`] for a worktree of its own of one claim
    /// (DESIGN §11 INV-10: the task's worktree was held by an older epoch
    /// that may still run): `branch` may be checked out in that other
    /// worktree too (`git worktree add --force`), which orch never uses
    /// again and the reaper removes once its run lock is free.
    ///
    /// Assumptions and errors: as [`Repo::ensure_worktree`].
    pub fn ensure_worktree_beside(&self, worktree: &Path, branch: &str) -> anyhow::Result<()> {
        self.ensure_worktree_with(worktree, branch, true)
    }

    fn ensure_worktree_with(
        &self,
        worktree: &Path,
        branch: &str,
        force: bool,
    ) -> anyhow::Result<()> {
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
        // `branch` made (`-b`) or reset (`-B`) at `start` in the new
        // worktree, untracked: the upstream is set below when origin has it.
        let add = |rest: &[&str]| {
            let mut args = vec!["worktree", "add", "--quiet"];
            if force {
                args.push("--force");
            }
            args.extend_from_slice(rest);
            git_ok(clone, &args)
        };
        let add_at = |create: &str, start: &str| add(&["--no-track", create, branch, wt, start]);
        match (remote, local) {
            (Some(r), Some(l)) if r == l || self.is_ancestor(clone, &r, &l)? => {
                add(&[wt, branch])?;
            }
            (Some(_), _) => {
                add_at("-B", &remote_ref)?;
            }
            (None, Some(_)) => {
                add(&[wt, branch])?;
            }
            (None, None) => {
                let base = Self::remote_ref(default);
                if Self::resolve_ref(clone, &base)?.is_none() {
                    bail!("origin has no default branch {default:?} to start {branch} from");
                }
                add_at("-b", &base)?;
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

    /// Moves the worktree's branch to commit `to` (one the clone has:
    /// origin's head of the branch after a fetch), dropping whatever the
    /// branch had that `to` lacks (`git reset --hard`): how a host takes a
    /// task branch another host rewrote (the merge line's rebase) on a
    /// store shared by hosts (DESIGN §10).
    ///
    /// Assumptions: takes `path_lock(worktree)`; the caller does not hold
    /// it. Errors: [`Error::InvalidRef`] for an unusable `to`;
    /// [`Error::TamperedGitMetadata`]; [`Error::Subprocess`] from git.
    pub fn reset_worktree_to(&self, worktree: &Path, to: &str) -> anyhow::Result<()> {
        super::names::validate_sha(to)?;
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        git_ok(&wt, &["reset", "--quiet", "--hard", to])?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::*;
    use std::process::Command;

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
}
