//! Stages, roles, and the one transition rule.
//!
//! Every stage change — by the worker, the reaper, the reconciler, a
//! webhook or a human — goes through [`apply`], which in the caller's one
//! `BEGIN IMMEDIATE` transaction:
//!
//! 1. compares-and-swaps the task (`stage`, `version`); if another actor
//!    moved it, returns [`Moved::Lost`] having written nothing;
//! 2. appends the transition;
//! 3. claims the finishing job's terminal state (`running → done`), if any,
//!    through the job status rule ([`job::change`]);
//! 4. enqueues the next stage's job (UNIQUE `(task, stage, version)`);
//! 5. writes the side effects to the outbox with dedupe keys;
//! 6. hands the task's merge lease to its deploy job, or releases it when
//!    the task goes anywhere else ([`lease::follow_transition`]).
//!
//! Nothing outside the database happens here. Because the transaction is
//! `IMMEDIATE`, no other writer can commit between our reads and writes, so
//! the checks in step 1 and 3 and the writes after them are one atomic step.

pub mod ci;
pub mod foreign;
pub mod gate;
pub mod job;
pub mod lease;
pub mod manual;
pub mod spend;

use std::fmt;
use std::path::Path;

use crate::config::{ProjectConfig, StateKind};
use crate::db::{Task, Tx};
pub use crate::model::{Actor, JobStatus, Stage, TransitionCause};
use crate::outbox::{
    self, Message, Notification, NotifyKind, Occasion, TrackerComment, TrackerMessage, TrackerState,
};

/// Whether `from → to` is a legal step of the stage machine: forward by
/// one, a rerun of the same stage (retry, reject, unblock), or a return to
/// development from a later stage (rollback).
pub fn is_legal(from: Stage, to: Stage) -> bool {
    let forward_or_rerun = from != Stage::Done && (to == from.next() || to == from);
    let rollback = to == Stage::Development && from > Stage::Development && from < Stage::Done;
    forward_or_rerun || rollback
}

/// Policy numbers the transition rule needs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `ORCH_MAX_DEVELOPER_RETRIES`: the return to development that brings
    /// the count to this number escalates the task.
    pub max_developer_retries: u32,
}

/// A requested stage change.
#[derive(Debug, Clone)]
pub struct Move {
    /// The task as the caller read it; the CAS is on its stage and version.
    pub task_id: i64,
    pub from: Stage,
    pub version: i64,
    pub to: Stage,
    pub actor: Actor,
    /// What made the move (stored typed; `orch why` reads it).
    pub cause: TransitionCause,
    /// Text for people (the tracker comment, `orch why`); nothing decides
    /// from it.
    pub reason: String,
    /// The job that finishes with this move: its `running → done` claim is
    /// part of the transaction.
    pub job_id: Option<i64>,
    /// The job whose failure caused this move (an escalation after the job
    /// failed): recorded as the transition's job, not claimed.
    pub cause_job: Option<i64>,
    /// This move is a return to development and counts a developer retry.
    pub developer_retry: bool,
    /// A human unblock or retry: clears escalation and the retry count.
    pub reset: bool,
    /// Escalate with this reason instead of enqueueing the next job.
    pub escalate: Option<String>,
    /// The log of orch's own test run that caused this move (red CI, a
    /// red merge-gate re-test), stored with the transition for the next
    /// developer's feedback ([`crate::brief::feedback`]). Only orch sets
    /// it, from the path it ran the tests with.
    pub log_path: Option<std::path::PathBuf>,
}

impl Move {
    /// A plain move of `task` to `to` by `actor`, because of `cause`, with
    /// `reason` for people.
    pub fn new(
        task: &Task,
        to: Stage,
        actor: Actor,
        cause: TransitionCause,
        reason: impl Into<String>,
    ) -> Move {
        Move {
            task_id: task.id,
            from: task.stage,
            version: task.version,
            to,
            actor,
            cause,
            reason: reason.into(),
            job_id: None,
            cause_job: None,
            developer_retry: false,
            reset: false,
            escalate: None,
            log_path: None,
        }
    }

    /// Finishes running job `id` with this move.
    pub fn finishing(mut self, job_id: i64) -> Move {
        self.job_id = Some(job_id);
        self
    }
}

/// The result of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// The move happened; the task is now at `version`.
    Applied {
        version: i64,
        /// The job enqueued for the new stage (None when done or escalated).
        next_job: Option<i64>,
        /// The task is now escalated (retry cap reached, or asked to).
        escalated: bool,
    },
    /// Another actor changed the task or finished the job first; nothing
    /// was written.
    Lost,
}

/// The one transition rule. See the module documentation.
///
/// Assumptions: `tx` is a `BEGIN IMMEDIATE` transaction ([`crate::db::Db::write`]).
/// Errors: database errors only; a lost race is `Ok(Moved::Lost)`.
pub fn apply(tx: &Tx, policy: Policy, m: &Move, now_ms: i64) -> anyhow::Result<Moved> {
    if !is_legal(m.from, m.to) {
        return Err(crate::error::Error::Usage(format!(
            "illegal transition {} → {} for task {}",
            m.from, m.to, m.task_id
        ))
        .into());
    }
    let Some(task) = tx.task(m.task_id)? else {
        return Ok(Moved::Lost);
    };
    if task.stage != m.from || task.version != m.version {
        return Ok(Moved::Lost);
    }
    if let Some(job_id) = m.job_id {
        match tx.job(job_id)? {
            Some(j) if j.status == JobStatus::Running && j.task_id == task.id => {}
            _ => return Ok(Moved::Lost),
        }
    }

    let mut retries = if m.reset { 0 } else { task.developer_retries };
    if m.developer_retry {
        retries += 1;
    }
    let escalate = m.escalate.clone().or_else(|| {
        (m.developer_retry && retries >= policy.max_developer_retries as i64).then(|| {
            format!(
                "developer retry cap reached ({retries}/{}): {}",
                policy.max_developer_retries, m.reason
            )
        })
    });
    let escalated = escalate.is_some() || (task.escalated && !m.reset);
    let escalated_reason = escalate.as_deref().or(if m.reset {
        None
    } else {
        task.escalated_reason.as_deref()
    });
    let version = task.version + 1;

    // 1. CAS (cannot fail after the checks above under IMMEDIATE).
    if !tx.cas_task(
        task.id,
        m.from,
        m.version,
        m.to,
        retries,
        escalated,
        escalated_reason,
        now_ms,
    )? {
        anyhow::bail!("task {} changed inside an IMMEDIATE transaction", task.id);
    }
    crate::failpoint::failpoint("transition.after_cas");
    // 2. audit
    tx.insert_transition(
        task.id,
        Some(m.from),
        m.to,
        version,
        m.actor,
        m.cause,
        m.job_id.or(m.cause_job),
        &m.reason,
        m.log_path.as_deref(),
        now_ms,
    )?;
    // 3. terminal claim of the finishing job
    if let Some(job_id) = m.job_id {
        if job::finish(tx, job_id, None, JobStatus::Done, None, now_ms)? == job::Changed::Lost {
            anyhow::bail!("job {job_id} changed inside an IMMEDIATE transaction");
        }
    }
    crate::failpoint::failpoint("transition.before_enqueue");
    // 4. next job
    let next_job = match m.to.role() {
        Some(role) if !escalated => Some(tx.enqueue_job(task.id, m.to, role, version, now_ms)?),
        _ => None,
    };
    crate::failpoint::failpoint("transition.before_outbox");
    // 5. side effects
    let on = Occasion::Transition {
        task_id: task.id,
        version,
    };
    let text = format!(
        "orch: {} → {} by {}{}",
        m.from,
        m.to,
        m.actor.as_str(),
        if m.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", m.reason)
        }
    );
    let comment = TrackerComment { text, report: None };
    outbox::queue(tx, &on, &comment.into(), now_ms)?;
    // An escalation or the end of the pipeline also moves the tracker item
    // and notifies people: (tracker state, notification kind, text).
    let settled = match (&escalate, m.to) {
        (Some(reason), _) => Some((
            StateKind::NeedsInput,
            NotifyKind::Escalated,
            format!("task {} ({}) escalated: {reason}", task.id, task.title),
        )),
        (None, Stage::Done) => Some((
            StateKind::Done,
            NotifyKind::Deployed,
            format!("task {} ({}) deployed and done", task.id, task.title),
        )),
        (None, _) => None,
    };
    if let Some((state, kind, text)) = settled {
        let state = Message::Tracker(TrackerMessage::State(TrackerState { state }));
        outbox::queue(tx, &on, &state, now_ms)?;
        let note = Message::Notify(Notification { kind, text });
        outbox::queue(tx, &on, &note, now_ms)?;
    }
    // 6. the merge lease follows the task: handed to the deploy job, or
    // released when the task leaves the merge (DESIGN §7).
    lease::follow_transition(tx, task.id, m.to, escalated, next_job, now_ms)?;
    crate::failpoint::failpoint("transition.before_commit");
    Ok(Moved::Applied {
        version,
        next_job,
        escalated,
    })
}

/// The branch of a work item: `orch/<project>-<sequence>`.
pub fn branch_name(project: &str, sequence: i64) -> String {
    format!("orch/{project}-{sequence}")
}

/// The worktree folder of a branch under `worktrees_dir`.
pub fn worktree_path(worktrees_dir: &Path, project: &str, branch: &str) -> std::path::PathBuf {
    worktrees_dir.join(project).join(branch.replace('/', "-"))
}

/// A work item that entered *In Progress* in the tracker.
#[derive(Debug, Clone)]
pub struct WorkItem {
    /// The tracker's id (Plane issue UUID; the local issue number).
    pub tracker_issue_id: String,
    /// The tracker's per-project sequence number (Plane `sequence_id`).
    pub sequence: i64,
    pub title: String,
    pub body: String,
}

/// Creates the task for a work item exactly once: the task at
/// `analysis` (version 1), its creation transition and the analyst job.
/// Returns `(task_id, created)`; `created` is false when the item already
/// has a task (a replay), in which case nothing is written.
///
/// Assumptions: `tx` is `IMMEDIATE`; the project is synced to `projects`.
/// Errors: an invalid branch name ([`crate::error::Error::InvalidRef`]).
pub fn create_task(
    tx: &Tx,
    project: &ProjectConfig,
    item: &WorkItem,
    worktrees_dir: &Path,
    actor: Actor,
    now_ms: i64,
) -> anyhow::Result<(i64, bool)> {
    if let Some(t) = tx.task_by_issue(&project.name, &item.tracker_issue_id)? {
        return Ok((t.id, false));
    }
    let branch = branch_name(&project.name, item.sequence);
    crate::git::validate_task_branch(&branch, "orch/", &project.default_branch)?;
    if let Some(other) = tx.task_by_branch(&project.name, &branch)? {
        return Err(crate::error::Error::Permanent(format!(
            "branch {branch} already belongs to task {} (work item {}); work item {} has the same number",
            other.id, other.tracker_issue_id, item.tracker_issue_id
        ))
        .into());
    }
    let worktree = worktree_path(worktrees_dir, &project.name, &branch);
    let Some(id) = tx.insert_task(
        &project.name,
        &item.tracker_issue_id,
        item.sequence,
        &item.title,
        &item.body,
        Stage::Analysis,
        &branch,
        &worktree.to_string_lossy(),
        now_ms,
    )?
    else {
        anyhow::bail!(
            "task for {} appeared inside an IMMEDIATE transaction",
            item.tracker_issue_id
        );
    };
    tx.insert_transition(
        id,
        None,
        Stage::Analysis,
        1,
        actor,
        TransitionCause::WorkItemStarted,
        None,
        "work item in progress",
        None,
        now_ms,
    )?;
    tx.enqueue_job(id, Stage::Analysis, "analyst", 1, now_ms)?;
    let comment = TrackerComment {
        text: format!("orch: picked up as task {id} on branch {branch}"),
        report: None,
    };
    outbox::queue(
        tx,
        &Occasion::Transition {
            task_id: id,
            version: 1,
        },
        &comment.into(),
        now_ms,
    )?;
    Ok((id, true))
}

/// What [`human_gate`] did. Its `Display` is the one-line outcome an
/// inbox row records and `orch task approve|reject` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HumanGate {
    /// Task `task_id` moved: analysis → architecture when `approved`, else
    /// a rerun of analysis.
    Applied { task_id: i64, approved: bool },
    /// Nothing was done; `why` says so (the task is not at analysis, its
    /// analysis job is still active, or it changed concurrently). Displayed
    /// as `no pipeline action: <why>`.
    NoAction { why: String },
}

impl fmt::Display for HumanGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HumanGate::Applied {
                task_id,
                approved: true,
            } => write!(f, "task {task_id} analysis approved"),
            HumanGate::Applied {
                task_id,
                approved: false,
            } => write!(f, "task {task_id} analysis rejected; rerunning analysis"),
            HumanGate::NoAction { why } => write!(f, "no pipeline action: {why}"),
        }
    }
}

/// The human gate of analysis: approve (analysis → architecture) or reject
/// (rerun analysis) — from `orch task approve|reject` (actor `human`:
/// cause `approved-by-hand`/`rejected-by-hand`) or the tracker's
/// Approved/Rejected states (actor `webhook` or `reconciler`: cause
/// `tracker-approved`/`tracker-rejected`).
///
/// Guarantees: only acts when the task is at analysis with no queued or
/// running job; otherwise returns [`HumanGate::NoAction`] saying why it did
/// nothing (a replayed or early delivery is harmless).
/// Assumptions: `tx` is `IMMEDIATE`. Errors: database errors.
pub fn human_gate(
    tx: &Tx,
    policy: Policy,
    task: &Task,
    approve: bool,
    actor: Actor,
    reason: &str,
    now_ms: i64,
) -> anyhow::Result<HumanGate> {
    let nothing = |why: String| Ok(HumanGate::NoAction { why });
    if task.stage != Stage::Analysis {
        return nothing(format!(
            "task {} is at {}, not analysis",
            task.id, task.stage
        ));
    }
    if !tx.active_jobs(task.id)?.is_empty() {
        return nothing(format!("task {} analysis job still active", task.id));
    }
    let to = if approve {
        Stage::Architecture
    } else {
        Stage::Analysis
    };
    let cause = match (approve, actor) {
        (true, Actor::Human) => TransitionCause::ApprovedByHand,
        (false, Actor::Human) => TransitionCause::RejectedByHand,
        (true, _) => TransitionCause::TrackerApproved,
        (false, _) => TransitionCause::TrackerRejected,
    };
    let m = Move::new(task, to, actor, cause, reason);
    match apply(tx, policy, &m, now_ms)? {
        Moved::Applied { .. } => Ok(HumanGate::Applied {
            task_id: task.id,
            approved: approve,
        }),
        Moved::Lost => nothing(format!("task {} changed concurrently", task.id)),
    }
}
