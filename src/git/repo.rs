//! [`Repo`], one project's shared clone: its locks, cloning and fetching
//! origin, reading refs, and clearing the lock files a killed git leaves.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::metadata::{read_plain_file, Worktree};
use super::names::{validate_branch_name, validate_rev};
use super::run::{absolute, git_ok, redact_url, run_git, run_git_env, utf8, At};
use crate::error::Error;
use crate::lock::{path_lock, LockGuard};

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

// Locks, clone and fetch, refs

impl Repo {
    /// Lock a worktree (callers pass the absolute path, so one directory
    /// always maps to one lock file).
    pub(super) fn lock(&self, path: &Path) -> anyhow::Result<LockGuard> {
        path_lock(&self.locks_dir, path)
    }

    pub(super) fn lock_clone(&self) -> anyhow::Result<LockGuard> {
        path_lock(&self.locks_dir, &absolute(&self.clone_dir)?)
    }

    pub(super) fn remote_ref(branch: &str) -> String {
        format!("refs/remotes/origin/{branch}")
    }

    /// The default branch, checked before it goes into a refspec.
    pub(super) fn default_branch(&self) -> Result<&str, Error> {
        validate_branch_name(&self.default_branch)?;
        Ok(&self.default_branch)
    }

    /// True when `clone_dir` holds a repository; removes an empty leftover
    /// directory.
    pub(super) fn clone_exists(&self) -> anyhow::Result<bool> {
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
    pub(super) fn sync_locked(&self) -> anyhow::Result<()> {
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

    /// The sha `reference` (a full ref name) points to at `at` (the clone
    /// or a checked worktree), if any.
    pub(super) fn resolve_ref<'a>(
        at: impl Into<At<'a>>,
        reference: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = run_git(at, &["rev-parse", "--verify", "--quiet", reference])?;
        match out.code() {
            Some(0) => Ok(Some(out.stdout.trim().to_string())),
            Some(1) => Ok(None),
            _ => Err(out.into_error().into()),
        }
    }

    pub(super) fn head_sha_of(wt: &Worktree) -> anyhow::Result<String> {
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

    /// The commit the worktree's last rebase (or merge, or reset) started
    /// from — its `ORIG_HEAD` — if it has one.
    ///
    /// Guarantees: read-only. Assumptions: no lock taken.
    /// Errors: an error if `worktree` is not a worktree of this clone;
    /// [`Error::TamperedGitMetadata`]; [`Error::Subprocess`] from git.
    pub fn orig_head(&self, worktree: &Path) -> anyhow::Result<Option<String>> {
        let wt = self.check_worktree(&absolute(worktree)?)?;
        Self::resolve_ref(&wt, "ORIG_HEAD^{commit}")
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
    pub(super) fn is_ancestor_at(
        at: At<'_>,
        ancestor: &str,
        descendant: &str,
    ) -> anyhow::Result<bool> {
        validate_rev(ancestor)?;
        validate_rev(descendant)?;
        let out = run_git(at, &["merge-base", "--is-ancestor", ancestor, descendant])?;
        match out.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(out.into_error().into()),
        }
    }
}

// What a git killed mid-command leaves behind

impl Repo {
    /// Removes the lock files a git killed mid-command (with its crashed
    /// orch) leaves for a worktree: every `*.lock` in its admin folder
    /// (`index.lock`, `HEAD.lock`, `ORIG_HEAD.lock`, …) and the lock of the
    /// branch its HEAD names, which lives in the shared clone. Safe only
    /// because every git command orch runs on a worktree holds that
    /// worktree's path lock, which the caller holds now, each branch has one
    /// worktree, and a git outlives no orch (PDEATHSIG): no live git of ours
    /// can own these files.
    pub(super) fn clear_stale_index_lock(wt: &Worktree) -> anyhow::Result<()> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::*;

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
}
