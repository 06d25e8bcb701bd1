//! The merge gate a finishing deploy-staging job runs (from
//! `worker::finalize`), and the deferral of a job whose gate cannot run
//! now.

use tracing::{info, warn};

use super::lease::{busy_reason, give_back, lease_name, took_lease};
use super::steps::{catch_up_test_merge, Merge, Steps};
use crate::backoff::backoff_ms;
use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Job, LeaseAcquire, Task};
use crate::failpoint::failpoint;
use crate::git::{validate_task_branch, Repo};
use crate::pipeline::gate::Gate;
use crate::pipeline::job::{self as jobs, Changed, Finalized, How, JobChange};
use crate::pipeline::lease::holder;
use crate::pipeline::{self, Actor, JobStatus, Move, Moved, Stage};

/// What the gate decided for a finishing deploy-staging job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobGate {
    /// Apply this through the transition rule: `Pass` (merged),
    /// `Rollback` (conflict, red), `Fail` (refused branch name).
    Verdict(Gate),
    /// The gate settled the job itself: deferred, escalated at the defer
    /// cap, or lost the job to another actor.
    Settled(Finalized),
}

/// The gate for running job `job` of `task` at deploy-staging whose
/// staging verdict passed (called by `worker::finalize`, so by the worker
/// and the reaper's Tier-2). See the module documentation.
///
/// Guarantees: on `Verdict(Pass)` origin's main contains the task head,
/// which was tested on exactly that tree, and the task still holds the
/// lease (the transition hands it on); on a deferral the job's agent result
/// is kept. Safe to run again after a crash anywhere.
/// Errors: git, process and database errors; the lease is released first
/// and the job stays running, for the reaper's Tier-2.
///
/// `validated` is the revision the staging check validated (projects with
/// `[projects.staging]`): when the catch-up leaves another head, nothing
/// merges — the stage runs again (a rerun, not a developer retry), so the
/// deployer deploys the caught-up head and staging validates it first.
#[allow(clippy::too_many_arguments)]
pub fn gate_job(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    job: &Job,
    actor: Actor,
    validated: Option<&str>,
) -> anyhow::Result<JobGate> {
    if let Err(e) = validate_task_branch(&task.branch, &repo.branch_prefix, &project.default_branch)
    {
        return Ok(JobGate::Verdict(Gate::Fail(format!("merge gate: {e}"))));
    }
    let mut steps = Steps::new(task.id, false);
    let lease = lease_name(ctx, project);
    if let Some(name) = &lease {
        let now = now_ms();
        let ttl_ms = ctx.settings.merge_gate_lease_ttl_s as i64 * 1000;
        match db.write(|tx| tx.acquire_lease(name, &holder(task.id), Some(job.id), now, ttl_ms))? {
            LeaseAcquire::Acquired(l) => steps.push(took_lease(&l)),
            LeaseAcquire::Busy(l) => {
                return defer_job(
                    ctx,
                    db,
                    job,
                    actor,
                    "merge gate",
                    &busy_reason(&l),
                    Some(name),
                )
                .map(JobGate::Settled)
            }
        }
        failpoint("merge_gate.after_acquire");
    }
    match catch_up_test_merge(
        ctx,
        db,
        project,
        repo,
        task,
        Some(job),
        validated,
        &mut steps,
    ) {
        Ok(Merge::Merged { .. }) => Ok(JobGate::Verdict(Gate::Pass)),
        Ok(Merge::Rollback { reason, log }) => Ok(JobGate::Verdict(Gate::Rollback { reason, log })),
        Ok(Merge::MainMoving(reason)) => {
            give_back(db, lease.as_deref(), task, None)?;
            defer_job(ctx, db, job, actor, "merge gate", &reason, None).map(JobGate::Settled)
        }
        Ok(Merge::Restage(reason)) => {
            // The transition releases the lease (a rerun) and enqueues the
            // deployer again; the job finishes with it.
            let m = Move::new(
                task,
                Stage::DeployStaging,
                actor,
                pipeline::TransitionCause::Restage,
                reason,
            )
            .finishing(job.id);
            let moved = db.write(|tx| pipeline::apply(tx, ctx.policy(), &m, now_ms()))?;
            Ok(JobGate::Settled(match moved {
                Moved::Applied { escalated, .. } => Finalized::Advanced {
                    from: Stage::DeployStaging,
                    to: Stage::DeployStaging,
                    escalated,
                },
                Moved::Lost => Finalized::Lost,
            }))
        }
        Err(e) => {
            if let Err(e2) = give_back(db, lease.as_deref(), task, None) {
                warn!(target: "merge", task = task.id, error = %format!("{e2:#}"), "could not release the merge lease");
            }
            Err(e)
        }
    }
}

/// Defers running deploy-staging job `job`'s gate (the merge gate's busy
/// lease or moving main, the staging check's INFRA; `what` names it), or
/// at the defer cap (`ORCH_MERGE_GATE_MAX_DEFERS`) fails it and escalates
/// the task. Not an attempt: the job is queued again with its agent's
/// result kept (`merge_pending`), so the next claim runs only the gates.
/// `lease`: the busy lease it waits for; its release wakes the job (and a
/// lease released before this transaction leaves the job runnable now).
/// One transaction; a lost claim writes nothing.
pub fn defer_job(
    ctx: &Ctx,
    db: &Db,
    job: &Job,
    actor: Actor,
    what: &str,
    reason: &str,
    lease: Option<&str>,
) -> anyhow::Result<Finalized> {
    let s = &ctx.settings;
    let now = now_ms();
    let out = db.write(|tx| {
        let cur = match tx.job(job.id)? {
            Some(j) if j.status == JobStatus::Running && j.attempt == job.attempt => j,
            _ => return Ok(Finalized::Lost),
        };
        if cur.merge_defers >= s.merge_gate_max_defers as i64 {
            let why = format!(
                "{what} deferred {} times (ORCH_MERGE_GATE_MAX_DEFERS): {reason}",
                cur.merge_defers
            );
            return jobs::fail_and_escalate(
                tx,
                ctx.policy(),
                job,
                &why,
                why.clone(),
                pipeline::TransitionCause::JobFailed,
                actor,
                now,
            );
        }
        let base_ms = s.merge_gate_defer_s as i64 * 1000;
        let released_meanwhile = match lease {
            Some(name) => tx.lease(name)?.is_none(),
            None => false,
        };
        let at = if released_meanwhile {
            now
        } else {
            now + backoff_ms(base_ms, base_ms << 4, cur.merge_defers, None)
        };
        let c = JobChange {
            job_id: job.id,
            from: JobStatus::Running,
            to: JobStatus::Queued,
            attempt: Some(job.attempt),
            how: How::Defer {
                reason,
                available_at_ms: at,
                lease,
            },
        };
        if jobs::change(tx, &c, now)? == Changed::Lost {
            return Ok(Finalized::Lost);
        }
        tx.bump_counter("merge_gate.deferred_total", 1)?;
        Ok(Finalized::Deferred {
            defers: cur.merge_defers + 1,
            available_at_ms: at,
            reason: reason.to_string(),
        })
    })?;
    info!(target: "merge", job = job.id, task = job.task_id, outcome = %out, "merge not run now");
    Ok(out)
}
