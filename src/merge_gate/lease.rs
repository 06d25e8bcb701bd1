//! The merge lease as the gate uses it: its name for a project, the
//! words a step says about it, and giving it back (with a claimed job).

use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Job, Lease, Task};
use crate::pipeline::job::{self as jobs, How, JobChange};
use crate::pipeline::lease::holder;
use crate::pipeline::JobStatus;

/// The name of the merge lease of `project`'s repository (`merge:<repo>`,
/// `merge:<project>` without a forge repo), or `None` when the project
/// merges without the lease (`ORCH_MERGE_GATE_ENABLED=false`, or the
/// project is not in a non-empty `ORCH_MERGE_GATE_REPOS`).
pub fn lease_name(ctx: &Ctx, project: &ProjectConfig) -> Option<String> {
    let s = &ctx.settings;
    if !s.merge_gate_enabled {
        return None;
    }
    let listed = s
        .merge_gate_repos
        .iter()
        .any(|r| *r == project.name || (!project.repo.is_empty() && *r == project.repo));
    if !s.merge_gate_repos.is_empty() && !listed {
        return None;
    }
    let repo = if project.repo.is_empty() {
        &project.name
    } else {
        &project.repo
    };
    Some(format!("merge:{repo}"))
}

/// Why a lease is busy, for people.
pub(super) fn busy_reason(l: &Lease) -> String {
    let left_s = (l.expires_at_ms - now_ms()).max(0) / 1000;
    format!(
        "merge lease {} is held by {}{} (expires in {left_s}s)",
        l.name,
        l.holder,
        l.job_id
            .map(|j| format!(" for job {j}"))
            .unwrap_or_default()
    )
}

/// `took lease merge:… (holder …, job 4, expires in 600s)`: the step
/// line of a lease just taken.
pub(super) fn took_lease(l: &Lease) -> String {
    lease_line("took", "expires in", l)
}

/// The dry run's line for the lease [`took_lease`] would report.
pub(super) fn would_take_lease(l: &Lease) -> String {
    lease_line("would take", "for", l)
}

/// `<verb> lease <name> (holder <h>[, job <j>], <span> <s>s)`.
fn lease_line(verb: &str, span: &str, l: &Lease) -> String {
    format!(
        "{verb} lease {} (holder {}{}, {span} {}s)",
        l.name,
        l.holder,
        l.job_id.map(|j| format!(", job {j}")).unwrap_or_default(),
        (l.expires_at_ms - l.acquired_at_ms) / 1000
    )
}

/// Releases the task's lease `lease` (holder-aware) and gives back the job
/// a manual run claimed, in one transaction.
pub(super) fn give_back(
    db: &Db,
    lease: Option<&str>,
    task: &Task,
    claimed: Option<(&Job, (i64, i64))>,
) -> anyhow::Result<()> {
    db.write(|tx| {
        if let Some(name) = lease {
            tx.release_lease(name, &holder(task.id))?;
        }
        if let Some((job, (pid, start))) = claimed {
            let c = JobChange {
                job_id: job.id,
                from: JobStatus::Running,
                to: JobStatus::Queued,
                epoch: Some(job.epoch),
                how: How::Unclaim {
                    pid,
                    start_time: start,
                },
            };
            jobs::change(tx, &c, now_ms())?;
        }
        Ok(())
    })
}
