//! Committing a worktree's changes and pushing its task branch to origin
//! (never the default branch; force only with a lease).

use std::path::Path;

use super::names::{validate_sha, validate_task_branch};
use super::run::{absolute, git_commit_ok, git_ok, run_git};
use super::Repo;
#[cfg(doc)]
use crate::error::Error;

impl Repo {
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

    /// Push the worktree's HEAD to `refs/heads/<branch>` on origin only
    /// while origin's branch is at `expected` — `None`: only while origin
    /// has no such branch (`--force-with-lease=refs/heads/<branch>:<expected>`,
    /// an empty expectation for absent). The lease of a claim's push
    /// (DESIGN §11 INV-10): a push of another epoch since the claim makes
    /// origin refuse this one.
    ///
    /// Guarantees: same refusals as [`Repo::push_branch`]; the lease is
    /// checked by origin.
    /// Assumptions: as [`Repo::push_branch`].
    /// Errors: [`Error::InvalidRef`] for a refused branch or an `expected`
    /// that is not a full hex object id; [`Error::Subprocess`] when the
    /// lease is stale or the push fails.
    pub fn push_branch_leased(
        &self,
        worktree: &Path,
        branch: &str,
        expected: Option<&str>,
    ) -> anyhow::Result<()> {
        validate_task_branch(branch, &self.branch_prefix, &self.default_branch)?;
        if let Some(sha) = expected {
            validate_sha(sha)?;
        }
        self.push_task_branch(worktree, branch, Some(expected.unwrap_or("")))
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
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::git::fixture::*;

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
}
