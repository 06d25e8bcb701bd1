//! The deferral of a finishing deploy-staging job whose gate cannot run
//! now (the staging check's INFRA): only the gate runs again, not the
//! agent.

use tracing::info;

use crate::backoff::backoff_ms;
use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::{Db, Job};
use crate::pipeline::job::{self as jobs, Changed, Finalized, How, JobChange};
use crate::pipeline::{self, Actor, JobStatus};

/// Defers running deploy-staging job `job`'s gate (the staging check's
/// INFRA; `what` names it), or
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
