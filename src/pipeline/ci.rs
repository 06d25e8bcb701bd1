//! The one rule for a recorded CI status: when a status of a development
//! head is stored — a forge's `status` delivery (`orch ingest`), a look at
//! the forge (`orch reconcile`) or orch's own test run (`orch ci`) — the
//! waiting task's development gate is decided again here, read-only, and
//! its answer applied through the transition rule in the recorder's
//! transaction. Green → review; red → back to development (a developer
//! retry, with orch's own test log when orch ran the tests); anything
//! else waits.
//!
//! The worker's finalize never waits for CI: a development run whose head
//! has no final status finishes its job and the task waits here
//! ([`crate::pipeline::gate::Gate::Pending`]).

use crate::config::ProjectConfig;
use crate::db::{Task, Tx};
use crate::git::Repo;
use crate::pipeline::gate::{self, Gate};
use crate::pipeline::{self, Actor, Move, Moved, Policy, Stage, TransitionCause};

/// What deciding a development task's gate after a CI status did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CiDecision {
    /// The task left development through the transition rule: to review
    /// (CI green) or back to development (CI red: a developer retry).
    Moved {
        to: Stage,
        why: String,
        escalated: bool,
    },
    /// The gate is still undecided (no final status for the head yet, or
    /// the head is not the tested sha); the task keeps waiting.
    Waits(String),
    /// The task does not wait for CI (another stage, escalated, a job
    /// still active whose finalize decides); nothing was done.
    NotWaiting(String),
    /// Another actor moved the task between the read and the write.
    Lost,
}

impl std::fmt::Display for CiDecision {
    /// `task 3: development → review (CI success on <sha>)`, `task 3
    /// waits: …`, `no pipeline action: …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CiDecision::Moved { to, why, escalated } => write!(
                f,
                "development → {to} ({why}){}",
                if *escalated { "; escalated" } else { "" }
            ),
            CiDecision::Waits(r) => write!(f, "waits: {r}"),
            CiDecision::NotWaiting(r) => write!(f, "no pipeline action: {r}"),
            CiDecision::Lost => f.write_str("no pipeline action: the task changed concurrently"),
        }
    }
}

/// Who recorded a CI status: the actor of the move it causes and, for
/// orch's own test run, the development job whose head was tested
/// (recorded as the move's job, so `orch why` names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedBy {
    pub actor: Actor,
    pub job: Option<i64>,
}

/// Decides again the development gate of `task` (as read inside `tx`)
/// after a CI status was stored in `tx`, and applies a decided answer
/// through [`pipeline::apply`] as `by`. Only a task at development, not
/// escalated and with no queued or running job is judged: a job still
/// active decides in its own finalize.
///
/// Guarantees: idempotent (a second call finds the task moved, or waiting
/// for the same reason); writes nothing unless the gate decided.
/// Errors: database errors; git errors reading the worktree's head.
pub fn on_status(
    tx: &Tx,
    policy: Policy,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    by: RecordedBy,
    now_ms: i64,
) -> anyhow::Result<CiDecision> {
    if task.stage != Stage::Development {
        return Ok(CiDecision::NotWaiting(format!(
            "task {} is at {}",
            task.id, task.stage
        )));
    }
    if task.escalated {
        return Ok(CiDecision::NotWaiting(format!(
            "task {} is escalated",
            task.id
        )));
    }
    if !tx.active_jobs(task.id)?.is_empty() {
        return Ok(CiDecision::NotWaiting(format!(
            "task {}'s development job is still active (its finalize reads CI)",
            task.id
        )));
    }
    let facts = gate::gather(tx, project, repo, task)?;
    let (to, retry, why, log) = match gate::decide(Stage::Development, &facts) {
        Gate::Pass => {
            let sha = facts.ci.map(|(sha, _)| sha).unwrap_or_default();
            (Stage::Review, false, format!("CI success on {sha}"), None)
        }
        Gate::Rollback { reason, log } => (Stage::Development, true, reason, log),
        Gate::Pending(r) | Gate::Fail(r) | Gate::FailFinal(r) => return Ok(CiDecision::Waits(r)),
    };
    let cause = if retry {
        TransitionCause::GateSentBack
    } else {
        TransitionCause::GatePassed
    };
    let mut m = Move::new(task, to, by.actor, cause, why.clone());
    m.developer_retry = retry;
    m.log_path = log;
    m.cause_job = by.job;
    Ok(match pipeline::apply(tx, policy, &m, now_ms)? {
        Moved::Applied { escalated, .. } => CiDecision::Moved { to, why, escalated },
        Moved::Lost => CiDecision::Lost,
    })
}
