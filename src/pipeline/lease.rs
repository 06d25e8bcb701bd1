//! The merge lease's part of the transition rule: whose lease a task
//! holds, and what a move does to it. It lives here, below the merge gate,
//! so that `pipeline::apply` (and a webhook's PR-merged release) can follow
//! the lease without importing the feature that takes it
//! (`crate::merge_gate`, DESIGN §7).

use crate::db::Tx;
use crate::pipeline::Stage;

/// The holder string of the merge lease taken for task `task_id`:
/// `task:<id>`.
pub fn holder(task_id: i64) -> String {
    format!("task:{task_id}")
}

/// The merge lease's holder while this host's merge line
/// (`crate::merge_gate`) builds, tests and fast-forwards a batch:
/// `merge-line@<host id>`; at a landing it passes to the last landed task
/// (`task:<id>`), whose move into deploy hands it on. Per host, so two
/// hosts' lines on one store never hold a repo's lease at once (a pass
/// that outlives its tick lease still meets the other host's lease).
pub fn line_holder() -> String {
    format!("{LINE_HOLDER_PREFIX}{}", crate::process::host_id())
}

/// What every merge line's holder starts with ([`line_holder`]).
pub const LINE_HOLDER_PREFIX: &str = "merge-line@";

/// Whether `holder` is a merge line's (of any host), not a task's.
pub fn is_line_holder(holder: &str) -> bool {
    holder.starts_with(LINE_HOLDER_PREFIX)
}

/// Releases the merge lease(s) task `task_id` holds, and only those.
/// Returns the released lease names (empty when it held none — e.g. the
/// lease expired and another task took it since).
///
/// For the Gitea adapter: call it when a PR-merged delivery for the task's
/// branch arrives (the merge is done; the lease may go).
///
/// Assumptions: `tx` is `IMMEDIATE` ([`crate::db::Db::write`]).
/// Errors: database errors.
pub fn release_for_task(tx: &Tx, task_id: i64) -> anyhow::Result<Vec<String>> {
    tx.release_leases_held_by(&holder(task_id))
}

/// The lease's part of the transition rule (`pipeline::apply`, step 6): a
/// move into deploy that enqueued `next_job` hands the task's lease to that
/// job (renewed for its TTL); any other move releases it.
///
/// Assumptions: called inside `apply`'s transaction, after its CAS.
/// Errors: database errors.
pub fn follow_transition(
    tx: &Tx,
    task_id: i64,
    to: Stage,
    escalated: bool,
    next_job: Option<i64>,
    now_ms: i64,
) -> anyhow::Result<()> {
    match next_job {
        Some(job) if to == Stage::Deploy && !escalated => {
            tx.hand_over_leases(&holder(task_id), job, now_ms)?;
        }
        _ => {
            release_for_task(tx, task_id)?;
        }
    }
    Ok(())
}
