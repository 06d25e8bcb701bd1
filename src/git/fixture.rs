//! The test fixture of `git`'s unit tests: a bare origin, a scratch
//! clone playing someone else, and a [`Repo`] for project `p`.

use std::path::{Path, PathBuf};

use super::metadata::Worktree;
use super::run::{absolute, git_commit_ok, run_git_env, At};
use super::Repo;
use crate::error::Error;

/// A temp dir with a bare origin whose `main` has one commit, a scratch
/// clone of it (playing "someone else"), and a [`Repo`] for project `p`.
pub(super) struct Fixture {
    _tmp: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) origin: PathBuf,
    pub(super) scratch: PathBuf,
    pub(super) repo: Repo,
}

/// Run git with an identity; panic on failure; stdout trimmed.
pub(super) fn sh<'a>(at: impl Into<At<'a>>, args: &[&str]) -> String {
    let out = git_commit_ok(at, args).unwrap();
    assert!(out.success(), "git {:?} failed: {}", out.argv, out.stderr);
    out.stdout.trim().to_string()
}

pub(super) fn fixture() -> Fixture {
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
    pub(super) fn at(&self, wt: &Path) -> Worktree {
        self.repo.check_worktree(&absolute(wt).unwrap()).unwrap()
    }
    pub(super) fn wt(&self, n: u32) -> PathBuf {
        self.root.join(format!("worktrees/p/orch-p-{n}"))
    }
    pub(super) fn origin_sha(&self, reference: &str) -> String {
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
    pub(super) fn advance_main(&self, file: &str, content: &str) {
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
    pub(super) fn work(&self, n: u32, file: &str, content: &str) -> (PathBuf, String) {
        let wt = self.wt(n);
        self.repo
            .ensure_worktree(&wt, &format!("orch/p-{n}"))
            .unwrap();
        std::fs::write(wt.join(file), content).unwrap();
        let sha = self.repo.commit_all(&wt, "work").unwrap().unwrap();
        (wt, sha)
    }
}

pub(super) fn is_invalid_ref(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<Error>(), Some(Error::InvalidRef { .. }))
}
