//! The manual moves (`orch task approve|reject|advance|rollback|retry|
//! cancel|unblock`): which move a human may make from where, and what it
//! does besides the stage change. Every move goes through the transition
//! rule ([`super::apply`]) with actor `human`; the CLI only names the move
//! and prints the [`ManualOutcome`].

use crate::db::{Db, Task};
use crate::error::Error;
use crate::pipeline::{self, Actor, HumanGate, Move, Moved, Policy, Stage, TransitionCause as C};

/// A move a human asks for by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualMove {
    /// The analysis human gate: analysis → architecture.
    Approve,
    /// The analysis human gate: rerun analysis.
    Reject,
    /// To the next stage.
    Advance,
    /// Back to development (from review or later).
    Rollback,
    /// Rerun the current stage (refused for an escalated task: unblock it).
    Retry,
    /// Stay at the stage, escalated with the reason: no next job.
    Cancel,
    /// Rerun the current stage, clearing escalation and the retry count.
    Unblock,
}

/// What a manual move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualOutcome {
    /// Approve or reject applied through the human gate.
    Gate(HumanGate),
    /// Task `task_id` moved `from → to`, now at `version`, with the other
    /// jobs of the task cancelled as superseded.
    Moved {
        task_id: i64,
        from: Stage,
        to: Stage,
        version: i64,
        /// The job enqueued for the new stage (none when escalated).
        next_job: Option<i64>,
        escalated: bool,
    },
}

/// Applies manual move `mv` to task `task_id` at `now_ms` (unix ms), with
/// `reason` (ignored by `Approve`, which records "approved by hand", and by
/// `Retry`, which records "retry by hand").
///
/// Guarantees: one `IMMEDIATE` transaction per move; a move that is not
/// applied writes nothing. A move (other than approve/reject) cancels the
/// task's other queued or running jobs (`superseded: <reason>`) in the
/// same transaction.
/// Errors: [`Error::Usage`] for an unknown task, approve/reject the human
/// gate does not act on (`no pipeline action: …`), retry of an escalated
/// task, a move into or out of done, and a task that changed meanwhile;
/// database errors.
pub fn apply(
    db: &Db,
    policy: Policy,
    task_id: i64,
    mv: ManualMove,
    reason: &str,
    now_ms: i64,
) -> anyhow::Result<ManualOutcome> {
    let t = db
        .task(task_id)?
        .ok_or_else(|| Error::Usage(format!("no task {task_id}")))?;
    let stage = t.stage;
    let m = match mv {
        ManualMove::Approve => return gate(db, policy, &t, true, "approved by hand", now_ms),
        ManualMove::Reject => return gate(db, policy, &t, false, reason, now_ms),
        ManualMove::Advance => Move::new(&t, stage.next(), Actor::Human, C::AdvancedByHand, reason),
        ManualMove::Rollback => Move::new(
            &t,
            Stage::Development,
            Actor::Human,
            C::RolledBackByHand,
            reason,
        ),
        ManualMove::Retry => {
            if t.escalated {
                return Err(Error::Usage(format!(
                    "task {task_id} is escalated; use `orch task unblock {task_id}`"
                ))
                .into());
            }
            Move::new(&t, stage, Actor::Human, C::RetriedByHand, "retry by hand")
        }
        ManualMove::Cancel => {
            let mut m = Move::new(&t, stage, Actor::Human, C::CancelledByHand, reason);
            m.escalate = Some(reason.to_string());
            m
        }
        ManualMove::Unblock => {
            let mut m = Move::new(&t, stage, Actor::Human, C::UnblockedByHand, reason);
            m.reset = true;
            m
        }
    };
    moved(db, policy, m, now_ms)
}

/// Approve or reject through the human gate; a gate that does nothing is a
/// usage error for a human.
fn gate(
    db: &Db,
    policy: Policy,
    t: &Task,
    approve: bool,
    reason: &str,
    now_ms: i64,
) -> anyhow::Result<ManualOutcome> {
    let outcome =
        db.write(|tx| pipeline::human_gate(tx, policy, t, approve, Actor::Human, reason, now_ms))?;
    match outcome {
        HumanGate::NoAction { .. } => Err(Error::Usage(outcome.to_string()).into()),
        applied => Ok(ManualOutcome::Gate(applied)),
    }
}

/// A manual move: cancels the task's other jobs and applies the move in
/// one transaction. Done is never entered or left by hand.
fn moved(db: &Db, policy: Policy, m: Move, now: i64) -> anyhow::Result<ManualOutcome> {
    if m.to == Stage::Done || m.from == Stage::Done {
        return Err(Error::Usage(format!(
            "task {} cannot move {} → {} by hand",
            m.task_id, m.from, m.to
        ))
        .into());
    }
    let moved = db.write(|tx| {
        let moved = pipeline::apply(tx, policy, &m, now)?;
        if let Moved::Applied { next_job, .. } = &moved {
            super::job::cancel_task_jobs(
                tx,
                m.task_id,
                *next_job,
                &format!("superseded: {}", m.reason),
                now,
            )?;
        }
        Ok(moved)
    })?;
    match moved {
        Moved::Applied {
            version,
            next_job,
            escalated,
        } => Ok(ManualOutcome::Moved {
            task_id: m.task_id,
            from: m.from,
            to: m.to,
            version,
            next_job,
            escalated,
        }),
        Moved::Lost => {
            Err(Error::Usage(format!("task {} changed meanwhile; look again", m.task_id)).into())
        }
    }
}
