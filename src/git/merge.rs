//! Bringing a task branch and the default branch together: rebasing onto
//! it, merging it in, finding conflict markers left, and the only way orch
//! moves the default branch, a non-forced fast-forward push.

use std::path::Path;

use anyhow::{bail, Context};

use super::names::{invalid, validate_task_branch};
use super::run::{absolute, git_commit_ok, git_ok, run_git};
use super::Repo;
#[cfg(doc)]
use crate::error::Error;

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

impl Repo {
    /// The opening of a step that rewrites a task worktree's branch from
    /// origin's default branch: the default branch's name (validated), the
    /// worktree's lock (hold it for the whole step), the checked worktree,
    /// a stale index lock cleared, and the clone synced with origin under
    /// the clone's lock.
    ///
    /// Errors: a refused default branch name, a busy lock, changed git
    /// metadata ([`Error::TamperedGitMetadata`]), git.
    fn locked_and_synced(
        &self,
        worktree: &Path,
    ) -> anyhow::Result<(&str, crate::lock::LockGuard, super::metadata::Worktree)> {
        let default = self.default_branch()?;
        let worktree = absolute(worktree)?;
        let guard = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        {
            let _clone = self.lock_clone()?;
            self.sync_locked()?;
        }
        Ok((default, guard, wt))
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
        self.rebase_onto(worktree, None)
    }

    /// [`Repo::rebase_onto_default`], or with `onto = Some((upstream,
    /// from))` a rebase of the worktree's branch onto commit `upstream`
    /// (the merge line's batch tip): the commits after `from` (a commit
    /// the branch was built on; `None`: those not in `upstream`) are
    /// replayed, so a branch built on a task that left the batch sheds
    /// that task's commits. Same guarantees, assumptions and errors.
    pub fn rebase_onto(
        &self,
        worktree: &Path,
        onto: Option<(&str, Option<&str>)>,
    ) -> anyhow::Result<RebaseOutcome> {
        let (default, _wt, wt) = self.locked_and_synced(worktree)?;
        self.abort_stale_rebase(&wt, None)?;
        let (upstream, from) = match onto {
            Some((upstream, from)) => (upstream.to_string(), from),
            None => (
                Self::resolve_ref(&wt, &Self::remote_ref(default))?
                    .with_context(|| format!("origin has no default branch {default:?}"))?,
                None,
            ),
        };
        let original = Self::head_sha_of(&wt)?;
        // Built on commits the new tip no longer has (a task that left the
        // batch): replay only what came after them.
        let shed = from.filter(|f| {
            *f != upstream
                && Self::is_ancestor_at((&wt).into(), f, &original).unwrap_or(false)
                && !Self::is_ancestor_at((&wt).into(), f, &upstream).unwrap_or(true)
        });
        if shed.is_none() && Self::is_ancestor_at((&wt).into(), &upstream, &original)? {
            return Ok(RebaseOutcome::UpToDate);
        }
        let mut args = vec![
            "rebase",
            "--quiet",
            "--no-verify",
            "--no-autostash",
            "--no-update-refs",
        ];
        match shed {
            Some(f) => args.extend(["--onto", upstream.as_str(), f]),
            None => args.push(upstream.as_str()),
        }
        let out = git_commit_ok(&wt, &args)?;
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
                wt.path.display()
            );
        }
        if files.is_empty() {
            return Err(out.into_error().into());
        }
        Ok(RebaseOutcome::Conflict { files })
    }

    /// Moves the worktree's branch forward to commit `to` (one the clone
    /// has: origin's head of the branch after a fetch), `git merge
    /// --ff-only`: how a task takes in commits someone else pushed on top
    /// of its branch (DESIGN §7, "someone else pushed to a task branch").
    ///
    /// Guarantees: `Ok(true)` when HEAD is now `to`; `Ok(false)`, nothing
    /// changed, when `to` is not a descendant of HEAD (no merge commit is
    /// ever made) or is HEAD already.
    /// Assumptions: takes `path_lock(worktree)`; the caller does not hold
    /// it. The worktree is clean.
    /// Errors: [`Error::InvalidRef`] for an unusable `to`;
    /// [`Error::TamperedGitMetadata`]; [`Error::Subprocess`] from git.
    pub fn fast_forward_worktree(&self, worktree: &Path, to: &str) -> anyhow::Result<bool> {
        super::names::validate_sha(to)?;
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        let head = Self::head_sha_of(&wt)?;
        if head == to || !Self::is_ancestor_at((&wt).into(), &head, to)? {
            return Ok(false);
        }
        git_ok(&wt, &["merge", "--quiet", "--ff-only", to])?;
        Ok(Self::head_sha_of(&wt)? == to)
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
        let (default, _wt, wt) = self.locked_and_synced(worktree)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::*;

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
    fn a_rebased_history_has_every_change_of_the_one_it_replaced_and_no_other() {
        let f = fixture();
        let (wt, before) = f.work(3, "b.txt", "b\n");
        f.advance_main("c.txt", "c\n");
        let RebaseOutcome::Rebased { new_head } = f.repo.rebase_onto_default(&wt).unwrap() else {
            panic!("expected Rebased");
        };
        assert!(!f.repo.is_ancestor(&wt, &before, &new_head).unwrap());
        assert!(f.repo.has_every_change_of(&wt, &new_head, &before).unwrap());
        // Another history's commit is not in it.
        let (_, other) = f.work(4, "d.txt", "d\n");
        assert!(!f.repo.has_every_change_of(&wt, &new_head, &other).unwrap());
    }
}
