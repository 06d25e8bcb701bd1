//! The merge step of deploy-staging → deploy: catch the task branch up
//! with the default branch, re-test the combined tree, fast-forward.
//!
//! orch moves the default branch only here, and only by a non-forced push
//! of the task branch's head (`git::Repo::fast_forward_default`), so origin
//! itself refuses anything that is not a fast-forward.

use std::path::Path;

use tracing::info;

use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Task};
use crate::git::{FastForward, RebaseOutcome, Repo};
use crate::pipeline::gate::Gate;

/// How often main may move under us before we give up for this run.
const MAX_CATCH_UPS: usize = 3;

/// Merges the task branch into the default branch by fast-forward.
/// Returns `Gate::Pass` once origin's default branch contains the task
/// head, `Gate::Rollback` on a rebase conflict or red tests on the combined
/// tree (the worktree is left clean), `Gate::Fail` when main kept moving.
///
/// Guarantees: idempotent — after a crash anywhere, running it again
/// finds the branch merged (`AlreadyMerged`) or merges it once.
/// Errors: git and process errors.
pub fn merge(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
) -> anyhow::Result<Gate> {
    let worktree = Path::new(&task.worktree);
    for _ in 0..MAX_CATCH_UPS {
        if crate::worker::run_local_ci(ctx, db, project, repo, task)? != "success" {
            return Ok(Gate::Rollback(format!(
                "tests fail on {} at {}",
                task.branch,
                repo.head_sha(worktree)?
            )));
        }
        match repo.fast_forward_default(worktree)? {
            FastForward::Merged { sha } => {
                info!(target: "merge", task = task.id, sha = %sha, branch = %project.default_branch, "fast-forwarded");
                return Ok(Gate::Pass);
            }
            FastForward::AlreadyMerged => return Ok(Gate::Pass),
            FastForward::NotFastForward => {}
        }
        let pushed = repo.remote_branch_sha(&task.branch)?;
        match repo.rebase_onto_default(worktree)? {
            RebaseOutcome::Conflict { files } => {
                return Ok(Gate::Rollback(format!(
                    "rebase onto {} conflicts in {}",
                    project.default_branch,
                    files.join(", ")
                )))
            }
            RebaseOutcome::UpToDate => {}
            RebaseOutcome::Rebased { new_head } => {
                info!(target: "merge", task = task.id, head = %new_head, "rebased onto the default branch");
                match pushed {
                    Some(expected) => {
                        repo.push_branch_force_with_lease(worktree, &task.branch, &expected)?
                    }
                    None => repo.push_branch(worktree, &task.branch)?,
                }
            }
        }
    }
    Ok(Gate::Fail(format!(
        "{} kept moving; not merged after {MAX_CATCH_UPS} catch-ups",
        project.default_branch
    )))
}
