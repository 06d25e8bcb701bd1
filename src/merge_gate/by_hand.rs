//! `orch merge-gate --task ID [--dry-run] [--release]`: the gate run by
//! hand for a task at deploy-staging, and releasing a task's lease.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use tracing::{info, warn};

use super::lease::{busy_reason, give_back, lease_name, took_lease, would_take_lease};
use super::steps::{catch_up_test_merge, short, Merge, Steps};
use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Job, Lease, LeaseAcquire, Task, Tx};
use crate::error::Error;
use crate::failpoint::failpoint;
use crate::git::{validate_task_branch, Repo};
use crate::pipeline::job as jobs;
use crate::pipeline::lease::{holder, release_for_task};
use crate::pipeline::{self, Actor, JobStatus, Move, Moved, Stage};
use crate::process;

/// What `orch merge-gate --task ID` did or, with `--dry-run`, would do.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub task_id: i64,
    pub dry_run: bool,
    /// The merge lease used, `None` when the project merges without one.
    pub lease: Option<String>,
    /// One line per step, in order ("would …" with `--dry-run`).
    pub steps: Vec<String>,
    #[serde(flatten)]
    pub result: ByHand,
}

/// How a manual run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ByHand {
    /// Origin's main contains the tested head `sha`; the task moved to
    /// deploy (now at `version`). Exit 0.
    Merged { sha: String, version: i64 },
    /// A conflict or red tests: the task went back to development (and is
    /// escalated when that reached the retry cap). Exit 3.
    RolledBack { reason: String, escalated: bool },
    /// Nothing changed: the lease is busy, the task's job is running, or
    /// main kept moving. Exit 75; run it again later.
    Deferred { reason: String },
    /// `--dry-run`: `would` is `merge`, `roll back` or `defer`. Exit 0.
    Planned { would: String },
}

/// Whom the manual run's claim found.
enum Claim {
    /// Claimed: the lease taken (`None` without the gate) and the stage's
    /// job (`None` when the task has no active job).
    Ok {
        lease: Option<Lease>,
        job: Option<Job>,
    },
    JobRunning(Job),
    Busy(Lease),
    Moved,
}

/// The manual run's claim, inside `tx`: the task unchanged, the stage's
/// queued job claimed by `me` (boot id, pid, start time) and the lease
/// taken — both or neither.
fn claim(
    tx: &Tx,
    task: &Task,
    lease: Option<&str>,
    me: (&str, i64, i64),
    now: i64,
    ttl_ms: i64,
) -> anyhow::Result<Claim> {
    match tx.task(task.id)? {
        Some(t) if t.stage == task.stage && t.version == task.version && !t.escalated => {}
        _ => return Ok(Claim::Moved),
    }
    let job = tx
        .active_jobs(task.id)?
        .into_iter()
        .find(|j| j.stage == task.stage && j.task_version == task.version);
    if let Some(j) = job.as_ref().filter(|j| j.status == JobStatus::Running) {
        return Ok(Claim::JobRunning(j.clone()));
    }
    let taken = match lease {
        Some(name) => {
            let job_id = job.as_ref().map(|j| j.id);
            match tx.acquire_lease(name, &holder(task.id), job_id, now, ttl_ms)? {
                LeaseAcquire::Busy(l) => return Ok(Claim::Busy(l)),
                LeaseAcquire::Acquired(l) => Some(l),
            }
        }
        None => None,
    };
    let claimed = match job {
        Some(j) => Some(
            jobs::claim(tx, j.id, me, now)?
                .context("the task's queued job vanished inside a transaction")?,
        ),
        None => None,
    };
    Ok(Claim::Ok {
        lease: taken,
        job: claimed,
    })
}

/// `orch merge-gate --task ID [--dry-run]`: runs the gate for a task at
/// deploy-staging now, as a human.
///
/// A manual run stands in for the staging verdict: it does not wait for
/// the deployer (an operator who runs it vouches for staging). It claims
/// the stage's queued job (so no worker runs it meanwhile; a deferred
/// merge's job, or one whose deployer has not run yet) together with the
/// lease — both or neither — then catches up, re-tests and merges. Pass →
/// deploy-staging → deploy with actor `human`, finishing the claimed job
/// (the lease passes to the deploy job); conflict or red → development with
/// actor `human`, counting a developer retry. A busy lease, a running job,
/// or main moving changes nothing (the claim is given back).
///
/// `dry_run` takes the same path: the claim and the transition are
/// rehearsed in transactions that are rolled back ([`Db::rehearse`]), the
/// git steps are decided from what origin (`git ls-remote`), the worktree
/// and the stored test results show, and nothing is fetched, rebased,
/// pushed, tested or merged; the steps say what a real run would do.
///
/// Errors: [`Error::Usage`] for an unknown task, one not at
/// deploy-staging, or an escalated one; [`Error::InvalidRef`] when the
/// task's branch is not a task branch (e.g. `main`), and
/// [`Error::Config`] for a `merge_style` whose merge is not the tested
/// head (`Forge::lands_tested_tip`), both before anything is done; git,
/// process and database errors (the lease and the job are given
/// back first).
pub fn run_by_hand(ctx: &Ctx, db: &Db, task_id: i64, dry_run: bool) -> anyhow::Result<Report> {
    let task = db
        .task(task_id)?
        .ok_or_else(|| Error::Usage(format!("no task {task_id}")))?;
    if task.stage != Stage::DeployStaging {
        return Err(Error::Usage(format!(
            "task {task_id} is at {}; the merge gate runs for a task at deploy-staging",
            task.stage
        ))
        .into());
    }
    if task.escalated {
        return Err(Error::Usage(format!(
            "task {task_id} is escalated ({}); `orch task unblock {task_id}` first",
            task.escalated_reason.as_deref().unwrap_or("")
        ))
        .into());
    }
    let project = ctx.project(&task.project)?;
    let repo = ctx.repo(project);
    validate_task_branch(&task.branch, &repo.branch_prefix, &project.default_branch)?;
    crate::forge::Forge::for_project(ctx, project).lands_tested_tip(project)?;
    let lease = lease_name(ctx, project);
    let mut steps = Steps::new(task.id, dry_run);
    let result = by_hand(ctx, db, project, &repo, &task, lease.as_deref(), &mut steps)?;
    Ok(Report {
        task_id,
        dry_run,
        lease,
        steps: steps.list,
        result,
    })
}

fn by_hand(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    lease: Option<&str>,
    steps: &mut Steps,
) -> anyhow::Result<ByHand> {
    let dry = steps.dry_run;
    let (host, pid, start) = process::identity();
    let now = now_ms();
    let ttl_ms = ctx.settings.merge_gate_lease_ttl_s as i64 * 1000;
    let claim_in = |tx: &Tx| claim(tx, task, lease, (&host, pid, start), now, ttl_ms);
    let deferred = |steps: &mut Steps, reason: String| {
        if steps.dry_run {
            steps.push(format!("would defer (exit 75), changing nothing: {reason}"));
            ByHand::Planned {
                would: "defer".into(),
            }
        } else {
            steps.push(format!("deferred: {reason}"));
            ByHand::Deferred { reason }
        }
    };
    let job = match db.write_or_rehearse(dry, claim_in)? {
        Claim::Moved => {
            return Err(
                Error::Usage(format!("task {} changed meanwhile; look again", task.id)).into(),
            )
        }
        Claim::JobRunning(j) => {
            let reason = format!(
                "job {} ({}) is running under worker pid {}; its finalize decides first",
                j.id,
                j.stage,
                j.worker_pid.unwrap_or(0)
            );
            return Ok(deferred(steps, reason));
        }
        Claim::Busy(l) => return Ok(deferred(steps, busy_reason(&l))),
        Claim::Ok { lease: taken, job } => {
            match &taken {
                Some(l) => steps.did(|| took_lease(l), || would_take_lease(l)),
                None => steps.would(
                    "would merge without a lease (the merge gate is off for this project)".into(),
                ),
            }
            job
        }
    };
    match &job {
        Some(j) if j.merge_pending => steps.did(
            || format!("claimed job {} (a deferred merge: its deployer's verdict stands)", j.id),
            || format!("would claim job {} (a deferred merge: its deployer's verdict stands)", j.id),
        ),
        Some(j) => steps.did(
            || format!("claimed job {}: its deployer will not run (this manual merge stands in for the staging verdict)", j.id),
            || format!("would claim job {}: its deployer would not run (a manual merge stands in for the staging verdict)", j.id),
        ),
        None => steps.did(
            || "the task has no active job; merging without one".into(),
            || "the task has no active job; would merge without one".into(),
        ),
    }
    let claimed = job.as_ref().map(|j| (j, (pid, start)));
    let worktree = Path::new(&task.worktree);
    let merged = if dry {
        if !worktree.exists() {
            steps.push(format!(
                "would create the worktree {} from origin's {}",
                worktree.display(),
                task.branch
            ));
        }
        catch_up_test_merge(ctx, db, project, repo, task, job.as_ref(), steps)
    } else {
        failpoint("merge_gate.after_acquire");
        repo.ensure_worktree(worktree, &task.branch)
            .and_then(|()| catch_up_test_merge(ctx, db, project, repo, task, job.as_ref(), steps))
    };
    let merged = match merged {
        Ok(m) => m,
        Err(e) => {
            if !dry {
                if let Err(e2) = give_back(db, lease, task, claimed) {
                    warn!(target: "merge", task = task.id, error = %format!("{e2:#}"), "could not give back the lease and job");
                }
            }
            return Err(e);
        }
    };
    let default = &project.default_branch;
    let (to, reason, retry) = match &merged {
        Merge::MainMoving(reason) => {
            give_back(db, lease, task, claimed)?;
            steps.push(format!("deferred: {reason}; lease and job given back"));
            return Ok(ByHand::Deferred {
                reason: reason.clone(),
            });
        }
        Merge::Merged { sha } => (
            Stage::Deploy,
            format!(
                "merge gate passed (by hand): {default} contains the tested head {}",
                short(sha)
            ),
            false,
        ),
        Merge::Rollback { reason, .. } => (Stage::Development, reason.clone(), true),
    };
    let cause = if retry {
        pipeline::TransitionCause::GateSentBack
    } else {
        pipeline::TransitionCause::MergedByHand
    };
    let mut m = Move::new(task, to, Actor::Human, cause, reason.clone());
    if let Merge::Rollback { log, .. } = &merged {
        m.log_path = log.clone();
    }
    m.job_id = job.as_ref().map(|j| j.id);
    m.developer_retry = retry;
    let now = now_ms();
    let moved = if dry {
        // The claim was rolled back: rehearse it again, then the move.
        db.rehearse(|tx| match claim_in(tx)? {
            Claim::Ok { .. } => pipeline::apply(tx, ctx.policy(), &m, now),
            _ => Ok(Moved::Lost),
        })?
    } else {
        db.write(|tx| pipeline::apply(tx, ctx.policy(), &m, now))?
    };
    let Moved::Applied {
        version,
        next_job,
        escalated,
    } = moved
    else {
        return Err(Error::Usage(format!(
            "task {} changed meanwhile; the gate's git work stands, the transition was not applied",
            task.id
        ))
        .into());
    };
    match merged {
        Merge::Merged { sha } => {
            steps.did(
                || format!(
                    "moved deploy-staging → deploy (actor human, v{version}){}",
                    match (lease, next_job) {
                        (Some(_), Some(j)) => format!("; lease handed to deploy job {j}"),
                        _ => String::new(),
                    }
                ),
                || format!(
                    "would move deploy-staging → deploy (actor human){}; a conflict or red tests would roll back to development (actor human) instead, counting a developer retry",
                    if lease.is_some() { " and hand the lease to the deploy job" } else { "" }
                ),
            );
            Ok(if dry {
                ByHand::Planned {
                    would: "merge".into(),
                }
            } else {
                ByHand::Merged { sha, version }
            })
        }
        _ => {
            steps.did(
                || format!(
                    "rolled back to development (actor human, v{version}), a developer retry counted{}{}",
                    if lease.is_some() { "; lease released" } else { "" },
                    if escalated { "; task escalated" } else { "" }
                ),
                || format!(
                    "would roll back to development (actor human), counting a developer retry{}{}",
                    if lease.is_some() { "; would release the lease" } else { "" },
                    if escalated { "; would escalate the task" } else { "" }
                ),
            );
            Ok(if dry {
                ByHand::Planned {
                    would: "roll back".into(),
                }
            } else {
                ByHand::RolledBack { reason, escalated }
            })
        }
    }
}

/// `orch merge-gate --task ID --release`: releases the lease task `task_id`
/// holds (an operator's repair for a stuck lease; `orch reap` releases
/// stale ones by itself). With `dry_run`, only names it. Returns the
/// released (or releasable) lease names.
///
/// Errors: [`Error::Usage`] for an unknown task; database errors.
pub fn release_by_hand(db: &Db, task_id: i64, dry_run: bool) -> anyhow::Result<Vec<String>> {
    if db.task(task_id)?.is_none() {
        return Err(Error::Usage(format!("no task {task_id}")).into());
    }
    if dry_run {
        let me = holder(task_id);
        return Ok(db
            .leases()?
            .into_iter()
            .filter(|l| l.holder == me)
            .map(|l| l.name)
            .collect());
    }
    let released = db.write(|tx| release_for_task(tx, task_id))?;
    for name in &released {
        info!(target: "merge", task = task_id, lease = %name, "lease released by hand");
    }
    Ok(released)
}
