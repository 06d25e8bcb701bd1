//! "Someone else pushed to a task branch" (DESIGN §7): the one rule, for
//! every place that finds origin's copy of a task branch holding commits
//! orch did not write — the merge line's build and the staging step.
//!
//! A task branch on origin is orch's; a commit someone else pushed there
//! is never overwritten and never lands without being validated:
//!
//! - **pushed on top** (origin's head descends from the worktree's): the
//!   worktree takes the commits (a fast-forward, nothing rewritten) and
//!   the task leaves the line for deploy-staging again (`restage`): the
//!   deployer and then the staging check validate the new head before it
//!   is ready to merge again;
//! - **rewritten** (origin's head neither descends from the worktree's,
//!   nor is it contained in it or what the worktree last rebased): no rule
//!   can tell whose history is right, and either choice drops someone's
//!   commits: the task is escalated, naming both heads.
//!
//! Either way the rest of the line goes on. Origin's branch that the
//! worktree contains, or that it rebased (a crash between the line's
//! rebase and its push), is orch's own ([`OnOrigin::Ours`]).

use std::path::Path;

use tracing::warn;

use crate::clock::now_ms;
use crate::db::{Db, Task};
use crate::failpoint::failpoint;
use crate::git::Repo;
use crate::pipeline::{self, Actor, Move, Moved, Policy, Stage, TransitionCause};

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// What origin's copy of a task branch is to the task's worktree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnOrigin {
    /// orch's own: absent, the worktree's head or an ancestor of it, or
    /// what the worktree rebased (`ORIG_HEAD` contains it).
    Ours,
    /// Someone else pushed commits on top of the worktree's head: origin
    /// is at `remote`, a descendant of it.
    Ahead { remote: String },
    /// Someone else rewrote the branch: origin is at `remote`, which the
    /// worktree (at `head`) neither contains nor rebased, and which does
    /// not descend from it.
    Rewritten { remote: String, head: String },
}

/// Where origin's branch (`remote`, `None` when origin has none) stands
/// to the worktree's `head`. Read-only; `remote` must be in the clone
/// (fetched by [`Repo::remote_branch_sha`]).
///
/// Errors: git errors (a worktree whose metadata changed, …).
pub fn on_origin(
    repo: &Repo,
    worktree: &Path,
    remote: Option<&str>,
    head: &str,
) -> anyhow::Result<OnOrigin> {
    let Some(remote) = remote.filter(|r| *r != head) else {
        return Ok(OnOrigin::Ours);
    };
    if repo.is_ancestor(worktree, remote, head)? {
        return Ok(OnOrigin::Ours);
    }
    if let Some(orig) = repo.orig_head(worktree)? {
        if repo.is_ancestor(worktree, remote, &orig)? {
            return Ok(OnOrigin::Ours);
        }
    }
    Ok(if repo.is_ancestor(worktree, head, remote)? {
        OnOrigin::Ahead {
            remote: remote.to_string(),
        }
    } else {
        OnOrigin::Rewritten {
            remote: remote.to_string(),
            head: head.to_string(),
        }
    })
}

/// Applies the rule to `task`, whose branch someone else pushed to
/// (`on`, not [`OnOrigin::Ours`]); `seen` says where (`"merge line"`,
/// `"staging check"`) for the reason. Ahead: the worktree fast-forwards
/// to origin's head, then the task goes back to deploy-staging
/// ([`restage`]). Rewritten: the task is escalated ([`escalate`]).
/// Returns the reason and the move; `None` for `Ours` (nothing done).
///
/// Crash safety: the fast-forward comes before the move; a crash between
/// them (failpoint `foreign.after_take_in`) leaves a worktree at origin's head but not at the revision
/// validated before the line, which the merge line's next build refuses
/// the same way (deploy-staging again).
///
/// Errors: git (the fast-forward) and database errors.
pub fn take_out(
    policy: Policy,
    db: &Db,
    repo: &Repo,
    task: &Task,
    on: &OnOrigin,
    seen: &str,
) -> anyhow::Result<Option<(String, Moved)>> {
    let branch = &task.branch;
    Ok(Some(match on {
        OnOrigin::Ours => return Ok(None),
        OnOrigin::Ahead { remote } => {
            let worktree = Path::new(&task.worktree);
            repo.ensure_worktree(worktree, branch)?;
            let took = repo.fast_forward_worktree(worktree, remote)?;
            failpoint("foreign.after_take_in");
            if !took && repo.head_sha(worktree)? != *remote {
                anyhow::bail!(
                    "task {}: could not fast-forward {} to origin's {}",
                    task.id,
                    task.worktree,
                    short(remote)
                );
            }
            let reason = format!(
                "{seen}: someone else pushed to {branch} (origin at {}, on top of what was validated); \
                 its worktree took the commits and deploy-staging runs again to validate them",
                short(remote)
            );
            warn!(target: "merge", task = task.id, branch = %branch, remote = %remote, "foreign push on top of a task branch: taken in, deploy-staging again");
            (reason.clone(), restage(policy, db, task, &reason)?)
        }
        OnOrigin::Rewritten { remote, head } => {
            let reason = format!(
                "{seen}: someone else rewrote {branch}: origin is at {remote}, which the task's \
                 worktree ({head}) neither contains nor descends from; orch overwrites neither \
                 (make origin's branch the one to keep, then `orch task unblock {}`)",
                task.id
            );
            warn!(target: "merge", task = task.id, branch = %branch, remote = %remote, head = %head, "foreign rewrite of a task branch: escalated");
            (reason.clone(), escalate(policy, db, task, &reason)?)
        }
    }))
}

/// Moves `task` (at deploy-staging) to deploy-staging again (`restage`:
/// its deployer runs again on the branch's head) with `reason`, its line
/// row `sent_back`, in one transaction.
///
/// Errors: database errors.
pub fn restage(policy: Policy, db: &Db, task: &Task, reason: &str) -> anyhow::Result<Moved> {
    let m = Move::new(
        task,
        Stage::DeployStaging,
        Actor::Worker,
        TransitionCause::Restage,
        reason,
    );
    out_of_line(policy, db, task, m, reason)
}

/// Escalates `task` (still at deploy-staging) with `why`, its line row
/// `sent_back`, in one transaction.
///
/// Errors: database errors.
pub fn escalate(policy: Policy, db: &Db, task: &Task, why: &str) -> anyhow::Result<Moved> {
    let mut m = Move::new(
        task,
        Stage::DeployStaging,
        Actor::Worker,
        TransitionCause::JobFailed,
        why,
    );
    m.escalate = Some(why.to_string());
    out_of_line(policy, db, task, m, why)
}

fn out_of_line(
    policy: Policy,
    db: &Db,
    task: &Task,
    m: Move,
    reason: &str,
) -> anyhow::Result<Moved> {
    let now = now_ms();
    db.write(|tx| {
        let mut m = m.clone();
        m.cause_job = tx.latest_job_at(task, Stage::DeployStaging)?.map(|j| j.id);
        let moved = pipeline::apply(tx, policy, &m, now)?;
        if moved != Moved::Lost {
            tx.line_set(task.id, "sent_back", Some(reason), now)?;
        }
        Ok(moved)
    })
}
