//! `orch why TASK`: why a task is where it is, from the database alone.
//!
//! Two answers ([`Why`]):
//! - the *chain*: every transition of the task in order, each with what
//!   caused it ([`Cause`]) — the job, its latest agent run and verdict for
//!   `worker`/`reaper` moves; the delivery (inbox row) for `webhook` moves
//!   (linked since migration 9, `transitions.inbox_id`); the reconcile
//!   pass for `reconciler` moves; the command for `human` moves;
//! - the *wait*: for a task that is not moving, the one thing it waits for
//!   ([`Waiting`]), checked in a fixed order (see [`waiting`]).
//!
//! Read-only: it runs reads only, so it never takes the write lock and
//! answers while ticks run. Times are unix ms.

use serde::Serialize;

use crate::clock::{ago, duration};
use crate::db::{Db, InboxRow, Job, Task, TransitionRow};
use crate::model::{Actor, JobStatus, Stage, TransitionCause};

/// The answer of [`explain`].
#[derive(Debug, Clone, Serialize)]
pub struct Why {
    pub task_id: i64,
    pub project: String,
    pub title: String,
    pub stage: Stage,
    pub version: i64,
    pub escalated: bool,
    /// The transitions in order, each with its cause.
    pub chain: Vec<Link>,
    /// The one thing the task waits for.
    pub waiting: Waiting,
    /// Every job of the task with its claim's epoch, oldest first.
    pub jobs: Vec<JobClaim>,
    /// Effects of stale claims that were refused (DESIGN §11 INV-10),
    /// oldest first.
    pub refused: Vec<crate::db::FenceRefusal>,
}

/// A job of the task and its latest claim.
#[derive(Debug, Clone, Serialize)]
pub struct JobClaim {
    pub job_id: i64,
    pub stage: Stage,
    pub role: String,
    pub status: JobStatus,
    /// Its latest claim's epoch (0: never claimed).
    pub epoch: i64,
    /// The host id of that claim (`None`: not recorded).
    pub host_id: Option<String>,
}

impl JobClaim {
    /// One line for people: `job 2 development (developer) done, epoch 2
    /// on host b`.
    pub fn describe(&self) -> String {
        let host = self
            .host_id
            .as_deref()
            .map(|h| format!(" on host {h}"))
            .unwrap_or_default();
        format!(
            "job {} {} ({}) {}, epoch {}{host}",
            self.job_id, self.stage, self.role, self.status, self.epoch
        )
    }
}

/// One transition and what caused it.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub version: i64,
    pub from: Option<Stage>,
    pub to: Stage,
    pub actor: Actor,
    /// What made the move (`transitions.cause`, typed): e.g. `gate-passed`,
    /// `approved-by-hand`.
    pub moved_because: TransitionCause,
    pub reason: String,
    pub at_ms: i64,
    pub cause: Cause,
}

/// What caused a transition, by actor.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// A worker's (or the reaper's) finalize of a job: the job, its latest
    /// run and its verdict.
    Job {
        job_id: i64,
        stage: Stage,
        role: String,
        attempt: i64,
        /// The epoch of the claim that finished it.
        epoch: i64,
        status: JobStatus,
        /// Why the job failed or was cancelled (its `last_error`); `None`
        /// for a job that finished well.
        job_error: Option<String>,
        /// The agent's exit code (`None`: no run recorded).
        exit_code: Option<i64>,
        /// The agent's result said success (`None`: no result).
        success: Option<bool>,
        /// orch's judgement of a failed run (timeout, model-API error, …).
        error: Option<String>,
        /// The verdict the job's agent (or orch, `UNREADABLE`) recorded.
        verdict: Option<String>,
        verdict_summary: Option<String>,
        /// The runner that ran its latest run (`child`, `supervisor`,
        /// `systemd`; `None` before migration 24).
        runner: Option<String>,
        /// Its latest run was adopted: recorded by another process than
        /// the one that started it (DESIGN §4 "Detached runs").
        adopted: bool,
    },
    /// A worker/reaper move with no job (should not happen; kept honest).
    NoJob,
    /// The delivery whose ingest made the move.
    Delivery {
        inbox_id: i64,
        source: String,
        event: String,
        delivery_id: String,
        received_at_ms: i64,
        outcome: Option<String>,
    },
    /// A webhook move recorded before deliveries were linked (migration 9).
    DeliveryUnknown,
    /// The reconcile pass that ran when the move was made: the latest
    /// recorded pass that started at or before it.
    ReconcilePass {
        pass_id: i64,
        pass_at_ms: i64,
        /// The pass's report lists this task (unblocked) or its work item
        /// (replayed from the tracker).
        listed: bool,
        /// What the report says about this task (`unblocked <from> → <to>`,
        /// `replayed: <outcome>`), when listed.
        detail: Option<String>,
    },
    /// No recorded pass covers the move (only the last 100 are kept).
    ReconcilePassUnknown,
    /// A human command, as far as the row tells (`command` is orch's
    /// reading of the move: e.g. `orch task approve`).
    Human { command: String },
}

/// The one thing a task waits for (`waiting.kind` in the JSON).
///
/// A queued job can wait for more than a worker: its task is parked by a
/// budget, or its agent's model account is paused by a usage or rate
/// limit; those come before [`Waiting::JobQueued`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Waiting {
    /// The task is done: nothing.
    Done { since_ms: i64 },
    /// Escalated: a human must act (`orch task unblock|retry|cancel`).
    Escalated { reason: String, since_ms: i64 },
    /// An agent runs for it now.
    JobRunning {
        job_id: i64,
        stage: Stage,
        role: String,
        attempt: i64,
        /// The running claim's epoch.
        epoch: i64,
        claimed_at_ms: Option<i64>,
        heartbeat_at_ms: Option<i64>,
        agent_pid: Option<i64>,
        worker_host: Option<String>,
        worker_pid: Option<i64>,
        /// How its agent runs (`child`, `supervisor`, `systemd`; `None`
        /// until it started).
        runner: Option<String>,
    },
    /// Its job's agent exited but the finalize failed: nothing runs for
    /// it until the reaper finalizes it again at `retry_at_ms` (its next
    /// pass once past), or the job fails at `max_attempts` failures.
    FinalizeFailed {
        job_id: i64,
        stage: Stage,
        role: String,
        attempt: i64,
        failures: i64,
        max_attempts: i64,
        error: String,
        exited_at_ms: i64,
        retry_at_ms: i64,
    },
    /// Its merge waits for the repository's merge lease, held by another
    /// task.
    MergeLease {
        job_id: i64,
        lease: String,
        holder: String,
        /// The task holding it, when the holder is `task:<id>`.
        holder_task: Option<i64>,
        since_ms: i64,
        expires_at_ms: i64,
    },
    /// Ready to merge: it waits in the merge line (`orch merge-gate`, `orch
    /// tick`). `state` is `ready`, `batched` (in batch `batch_id` at
    /// `position`, being built, tested or fast-forwarded) or `split` (it
    /// goes alone next); `place` is its 1-based place in its repo's line;
    /// `lease_holder` names who holds the repo's merge lease when it is not
    /// the line itself (the line waits for it).
    MergeLine {
        state: String,
        place: i64,
        waiting: i64,
        batch_id: Option<i64>,
        position: Option<i64>,
        ready_at_ms: i64,
        lease_holder: Option<String>,
    },
    /// Its deployer passed revision `revision` and, the project having
    /// `[projects.staging]`, it awaits the staging check of it (the merge
    /// line's first step); `defers` INFRA answers so far, the last one's
    /// `reason`, next try from `next_at_ms`.
    StagingCheck {
        revision: String,
        defers: i64,
        reason: Option<String>,
        next_at_ms: Option<i64>,
        since_ms: i64,
    },
    /// A budget ceiling parked the task: no job of it is claimed until the
    /// day rolls over, the ceiling is raised, or `orch task unpark`.
    Parked { reason: String, since_ms: i64 },
    /// The model account its queued job runs on is paused by a usage or
    /// rate limit until `until_ms` (or a clean run of that account).
    Paused {
        job_id: i64,
        account: String,
        /// `usage` or `rate`.
        limit: String,
        reason: String,
        until_ms: i64,
    },
    /// A job is queued for it, runnable from `available_at_ms`.
    JobQueued {
        job_id: i64,
        stage: Stage,
        role: String,
        attempt: i64,
        available_at_ms: i64,
        /// Why the last attempt did not finish it, if one ran.
        last_error: Option<String>,
    },
    /// A delivery about its work item failed or is dead-lettered: the
    /// tracker's move never reached the pipeline (`orch events replay ID`).
    FailedDelivery {
        inbox_id: i64,
        source: String,
        event: String,
        delivery_id: String,
        received_at_ms: i64,
        attempts: i64,
        dead: bool,
        error: Option<String>,
    },
    /// The last reconcile pass skipped it because of the tracker (the item
    /// is Blocked, Needs Input, or the tracker failed).
    Tracker {
        reason: String,
        pass_id: i64,
        pass_at_ms: i64,
    },
    /// The analysis is done and waits for a human's approval (the tracker's
    /// Approved state, or `orch task approve`).
    Approval { job_id: Option<i64>, since_ms: i64 },
    /// At development, the run finished and its pushed head `sha` waits
    /// for CI: `state` is the head's combined CI state so far (`pending`),
    /// `None` with no status yet. The local forge's CI step (`orch ci`)
    /// runs the tests; a forge's `status` delivery or reconcile's look
    /// records its result. Nothing waits in a process meanwhile.
    Ci {
        sha: String,
        state: Option<String>,
        since_ms: i64,
    },
    /// No job, no human, no lease: the stage's gate has not decided yet;
    /// the next webhook or reconcile pass re-evaluates it.
    Gate { stage: Stage, since_ms: i64 },
}

/// Explains task `task_id`. `None` when there is no such task.
///
/// Errors: database errors.
/// `account` names the model account a role runs on (`Config::account`).
/// `settings` give the finalize cap and the reaper's grace
/// ([`Waiting::FinalizeFailed`]).
pub fn explain(
    db: &Db,
    task_id: i64,
    settings: &crate::config::Settings,
    account: &dyn Fn(&str) -> String,
) -> anyhow::Result<Option<Why>> {
    let Some(task) = db.task(task_id)? else {
        return Ok(None);
    };
    let transitions = db.transitions(task.id)?;
    let jobs = db.jobs_for_task(task.id)?;
    let mut chain = Vec::with_capacity(transitions.len());
    for t in &transitions {
        chain.push(Link {
            version: t.version,
            from: t.from_stage,
            to: t.to_stage,
            actor: t.actor,
            moved_because: t.cause,
            reason: t.reason.clone(),
            at_ms: t.at_ms,
            cause: cause(db, &task, t, &jobs)?,
        });
    }
    let waiting = waiting(db, &task, &jobs, settings, account)?;
    let refused = db.fence_refusals(task.id)?;
    let jobs = jobs
        .iter()
        .map(|j| JobClaim {
            job_id: j.id,
            stage: j.stage,
            role: j.role.clone(),
            status: j.status,
            epoch: j.epoch,
            host_id: j.host_id.clone(),
        })
        .collect();
    Ok(Some(Why {
        task_id: task.id,
        project: task.project.clone(),
        title: task.title.clone(),
        stage: task.stage,
        version: task.version,
        escalated: task.escalated,
        chain,
        waiting,
        jobs,
        refused,
    }))
}

fn cause(db: &Db, task: &Task, t: &TransitionRow, jobs: &[Job]) -> anyhow::Result<Cause> {
    Ok(match t.actor {
        Actor::Worker | Actor::Reaper => {
            match t.job_id.and_then(|id| jobs.iter().find(|j| j.id == id)) {
                None => Cause::NoJob,
                Some(j) => {
                    let run = db.last_run_for_job(j.id)?;
                    let judged = db.run_judgement(j.id)?;
                    let verdict = db.verdict_for_job(j.id)?;
                    Cause::Job {
                        job_id: j.id,
                        stage: j.stage,
                        role: j.role.clone(),
                        attempt: j.counted_attempt(),
                        epoch: j.epoch,
                        status: j.status,
                        job_error: matches!(j.status, JobStatus::Failed | JobStatus::Cancelled)
                            .then(|| j.last_error.clone())
                            .flatten(),
                        exit_code: j.exit_code.or(run.map(|r| r.2).filter(|c| *c >= 0)),
                        success: run.and_then(|r| r.1),
                        runner: judged.as_ref().and_then(|r| r.runner.clone()),
                        adopted: judged.as_ref().is_some_and(|r| r.adopted),
                        error: judged.and_then(|r| r.error).map(|e| e.reason),
                        verdict_summary: verdict.as_ref().map(|v| v.1.clone()),
                        verdict: verdict.map(|v| v.0),
                    }
                }
            }
        }
        Actor::Webhook => match t.inbox_id.map(|id| db.inbox_row(id)).transpose()?.flatten() {
            Some(r) => Cause::Delivery {
                inbox_id: r.id,
                source: r.source,
                event: r.event,
                delivery_id: r.delivery_id,
                received_at_ms: r.received_at_ms,
                outcome: r.outcome,
            },
            None => Cause::DeliveryUnknown,
        },
        Actor::Reconciler => match db.reconcile_pass_at(t.at_ms)? {
            None => Cause::ReconcilePassUnknown,
            Some((pass_id, pass_at_ms, report)) => {
                let detail = pass_detail(task, &report);
                Cause::ReconcilePass {
                    pass_id,
                    pass_at_ms,
                    listed: detail.is_some(),
                    detail,
                }
            }
        },
        Actor::Human => Cause::Human {
            command: human_command(t),
        },
    })
}

/// What a reconcile pass report says about `task`, if it lists it.
fn pass_detail(task: &Task, report: &serde_json::Value) -> Option<String> {
    let arr = |k: &str| {
        report
            .get(k)
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
    };
    for u in arr("unblocked") {
        if u.get(0).and_then(|v| v.as_i64()) == Some(task.id) {
            let s = |i: usize| u.get(i).and_then(|v| v.as_str()).unwrap_or("?").to_string();
            return Some(format!("unblocked {} → {}", s(1), s(2)));
        }
    }
    for r in arr("replayed") {
        if r.get(0).and_then(|v| v.as_str()) == Some(task.project.as_str())
            && r.get(1).and_then(|v| v.as_str()) == Some(task.tracker_issue_id.as_str())
        {
            let outcome = r.get(2).and_then(|v| v.as_str()).unwrap_or("");
            return Some(format!("replayed from the tracker: {outcome}"));
        }
    }
    None
}

/// The command that made a human move, from its typed cause. Only a row
/// from before migration 21 that its reason text did not identify
/// (`other`) is read from its shape, and says when that is ambiguous.
fn human_command(t: &TransitionRow) -> String {
    if let Some(cmd) = t.cause.command() {
        return cmd.to_string();
    }
    let cmd = match (t.cause, t.from_stage, t.to_stage) {
        (TransitionCause::WorkItemStarted, ..) | (_, None, _) => "orch issue add",
        // The merge gate by hand records the gate's own return.
        (TransitionCause::GateSentBack, ..) => "orch merge-gate",
        (_, Some(f), to) if f == to => "orch task cancel or orch task unblock",
        _ => "orch task (by hand)",
    };
    cmd.to_string()
}

/// The one thing `task` waits for, checked in this order: done;
/// escalated; a running job; a queued job (a deferred merge whose lease
/// another task holds is [`Waiting::MergeLease`]); a failed delivery about
/// its work item; the tracker (the last reconcile pass skipped it because
/// of the tracker); the analysis approval; otherwise the stage's gate.
///
/// Where the budget park and the usage-limit pause (issue 16 scopes 1–2)
/// plug in: right after the queued-job check — a queued job that is not
/// claimed because its task is parked, or its role's account paused, waits
/// for that, not for a worker.
pub fn waiting(
    db: &Db,
    task: &Task,
    jobs: &[Job],
    settings: &crate::config::Settings,
    account: &dyn Fn(&str) -> String,
) -> anyhow::Result<Waiting> {
    let since_ms = task.updated_at_ms;
    if task.stage == Stage::Done {
        return Ok(Waiting::Done { since_ms });
    }
    if task.escalated {
        return Ok(Waiting::Escalated {
            reason: task.escalated_reason.clone().unwrap_or_default(),
            since_ms,
        });
    }
    if let Some(j) = jobs.iter().find(|j| j.status == JobStatus::Running) {
        if let Some(f) = crate::reap::finalize_failed(settings, j) {
            return Ok(Waiting::FinalizeFailed {
                job_id: f.job_id,
                stage: f.stage,
                role: f.role,
                attempt: f.attempt,
                failures: f.failures,
                max_attempts: f.max_attempts,
                error: f.error,
                exited_at_ms: f.exited_at_ms,
                retry_at_ms: f.retry_at_ms,
            });
        }
        return Ok(Waiting::JobRunning {
            job_id: j.id,
            stage: j.stage,
            role: j.role.clone(),
            attempt: j.counted_attempt(),
            epoch: j.epoch,
            claimed_at_ms: j.claimed_at_ms,
            heartbeat_at_ms: j.heartbeat_at_ms,
            agent_pid: j.agent_pid,
            worker_host: j.worker_host.clone(),
            worker_pid: j.worker_pid,
            runner: j.runner.clone(),
        });
    }
    if let Some(j) = jobs.iter().find(|j| j.status == JobStatus::Queued) {
        if j.merge_pending {
            if let Some(name) = db.job_deferred_on(j.id)? {
                if let Some(l) = db.lease(&name)? {
                    let mine = crate::pipeline::lease::holder(task.id);
                    if l.holder != mine {
                        return Ok(Waiting::MergeLease {
                            job_id: j.id,
                            holder_task: l
                                .holder
                                .strip_prefix("task:")
                                .and_then(|s| s.parse().ok()),
                            lease: l.name,
                            holder: l.holder,
                            since_ms: l.acquired_at_ms,
                            expires_at_ms: l.expires_at_ms,
                        });
                    }
                }
            }
        }
        if let Some(since_ms) = task.parked_at_ms {
            return Ok(Waiting::Parked {
                reason: task.parked_reason.clone().unwrap_or_default(),
                since_ms,
            });
        }
        let acct = account(&j.role);
        if let Some(p) = db
            .pause(&acct)?
            .filter(|p| p.holds_at(crate::clock::now_ms()))
        {
            return Ok(Waiting::Paused {
                job_id: j.id,
                account: acct,
                limit: p.kind,
                reason: p.reason,
                until_ms: p.until_ms,
            });
        }
        return Ok(Waiting::JobQueued {
            job_id: j.id,
            stage: j.stage,
            role: j.role.clone(),
            attempt: j.counted_attempt(),
            available_at_ms: j.available_at_ms,
            last_error: j.last_error.clone(),
        });
    }
    if task.stage == Stage::DeployStaging {
        if let Some(r) = db
            .line_awaiting_staging(Some(&task.project), None)?
            .into_iter()
            .find(|r| r.task_id == task.id)
        {
            return Ok(Waiting::StagingCheck {
                revision: r.validated.unwrap_or_default(),
                defers: r.staging_defers,
                reason: r.reason,
                next_at_ms: r.staging_at_ms,
                since_ms: r.ready_at_ms,
            });
        }
        let line = db.line_waiting(Some(&task.project))?;
        if let Some(i) = line.iter().position(|r| r.task_id == task.id) {
            let r = &line[i];
            let holder = db
                .leases()?
                .into_iter()
                .find(|l| {
                    l.name.starts_with("merge:")
                        && !crate::pipeline::lease::is_line_holder(&l.holder)
                })
                .map(|l| l.holder);
            return Ok(Waiting::MergeLine {
                state: r.state.clone(),
                place: i as i64 + 1,
                waiting: line.len() as i64,
                batch_id: r.batch_id.filter(|_| r.state == "batched"),
                position: r.position.filter(|_| r.state == "batched"),
                ready_at_ms: r.ready_at_ms,
                lease_holder: holder,
            });
        }
    }
    let about: Vec<(&str, &str, String)> = crate::webhook::SOURCES
        .iter()
        .flat_map(|s| {
            s.about(&task.tracker_issue_id, &task.branch)
                .into_iter()
                .map(|(path, value)| (s.as_str(), path, value))
        })
        .collect();
    if let Some(r) = db
        .failed_deliveries_for(&about)?
        .into_iter()
        // One received before the task's last move is history.
        .find(|r| r.received_at_ms >= task.updated_at_ms)
    {
        return Ok(failed_delivery(r));
    }
    if let Some((pass_id, pass_at_ms, report)) = db.reconcile_pass_at(i64::MAX)? {
        // A skip before the task's last move is history, not a wait.
        let reason = (pass_at_ms >= task.updated_at_ms)
            .then(|| tracker_skip(task.id, &report))
            .flatten();
        if let Some(reason) = reason {
            return Ok(Waiting::Tracker {
                reason,
                pass_id,
                pass_at_ms,
            });
        }
    }
    if task.stage == Stage::Analysis {
        let job = jobs
            .iter()
            .rev()
            .find(|j| j.stage == Stage::Analysis && j.task_version == task.version);
        if job.is_some_and(|j| j.status == JobStatus::Done) {
            return Ok(Waiting::Approval {
                job_id: job.map(|j| j.id),
                since_ms: job.and_then(|j| j.finished_at_ms).unwrap_or(since_ms),
            });
        }
    }
    if task.stage == Stage::Development {
        let job = jobs
            .iter()
            .rev()
            .find(|j| j.stage == Stage::Development && j.task_version == task.version);
        if let Some(j) = job.filter(|j| j.status == JobStatus::Done) {
            if let Some(sha) = db.branch_head(&task.project, &task.branch)? {
                let state = db.combined_ci_state(&task.project, &sha)?;
                if state.as_deref().is_none_or(|s| s == "pending") {
                    return Ok(Waiting::Ci {
                        sha,
                        state,
                        since_ms: j.finished_at_ms.unwrap_or(since_ms),
                    });
                }
            }
        }
    }
    Ok(Waiting::Gate {
        stage: task.stage,
        since_ms,
    })
}

fn failed_delivery(r: InboxRow) -> Waiting {
    Waiting::FailedDelivery {
        inbox_id: r.id,
        source: r.source,
        event: r.event,
        delivery_id: r.delivery_id,
        received_at_ms: r.received_at_ms,
        attempts: r.attempts,
        dead: r.dead,
        error: r.error,
    }
}

/// The tracker reason a reconcile pass report skipped task `id` for, if
/// any (`tracker shows Blocked`, `tracker shows Needs Input`, `tracker
/// error …`).
fn tracker_skip(id: i64, report: &serde_json::Value) -> Option<String> {
    let skipped = report.get("skipped")?.as_object()?;
    skipped
        .iter()
        .filter(|(reason, _)| {
            reason
                .parse::<crate::reconcile::Skip>()
                .is_ok_and(crate::reconcile::Skip::is_tracker)
        })
        .find(|(_, ids)| {
            ids.as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_i64() == Some(id)))
        })
        .map(|(reason, _)| reason.clone())
}

impl Waiting {
    /// One line for people, with times relative to `now_ms`.
    pub fn describe(&self, now_ms: i64) -> String {
        // A point in time (`3 min ago`, `in 20 s`) and a span up to now
        // (`3 min`): "running for 3 min", never "running for in 2 s".
        let t = |ms: i64| ago(ms, now_ms);
        let span = |since: i64| duration(now_ms - since);
        match self {
            Waiting::Done { since_ms } => format!("nothing: done {}", t(*since_ms)),
            Waiting::Escalated { reason, since_ms } => format!(
                "a human: escalated {} because {reason} (orch task unblock|retry|cancel)",
                t(*since_ms)
            ),
            Waiting::JobRunning {
                job_id,
                role,
                attempt,
                claimed_at_ms,
                agent_pid,
                heartbeat_at_ms,
                epoch,
                runner,
                ..
            } => format!(
                "job {job_id} ({role}, attempt {attempt}): running for {}, agent pid {}{}, last heartbeat {}, epoch {epoch}",
                claimed_at_ms.map_or("?".into(), span),
                agent_pid.map_or("-".into(), |p| p.to_string()),
                runner
                    .as_deref()
                    .filter(|r| *r != "child")
                    .map_or(String::new(), |r| format!(" (runner {r})")),
                heartbeat_at_ms.map_or("never".into(), t)
            ),
            Waiting::FinalizeFailed {
                job_id,
                role,
                attempt,
                failures,
                max_attempts,
                error,
                exited_at_ms,
                retry_at_ms,
                ..
            } => format!(
                "the reaper: job {job_id} ({role}, attempt {attempt}) exited {} but its finalize failed ({error}); {}",
                t(*exited_at_ms),
                crate::reap::retry_text(*retry_at_ms, *failures, *max_attempts, now_ms)
            ),
            Waiting::MergeLease {
                job_id,
                lease,
                holder,
                since_ms,
                expires_at_ms,
                ..
            } => format!(
                "the merge lease {lease}: held by {holder} for {} (expires {}); job {job_id} merges after it",
                span(*since_ms),
                t(*expires_at_ms)
            ),
            Waiting::MergeLine {
                state,
                place,
                waiting,
                batch_id,
                position,
                ready_at_ms,
                lease_holder,
            } => {
                let at = match (batch_id, position) {
                    (Some(b), Some(p)) => format!("in batch {b} at position {p}"),
                    _ if state == "split" => "alone next (its batch was red)".to_string(),
                    _ => "ready".to_string(),
                };
                format!(
                    "the merge line: {at}, place {place} of {waiting}, ready for {}{}",
                    span(*ready_at_ms),
                    lease_holder
                        .as_deref()
                        .map(|h| format!("; the merge lease is held by {h}"))
                        .unwrap_or_default()
                )
            }
            Waiting::StagingCheck {
                revision,
                defers,
                reason,
                next_at_ms,
                since_ms,
            } => {
                let mut text = format!(
                    "the staging check of {revision} (the merge line's first step, orch merge-gate), awaited {}",
                    span(*since_ms)
                );
                if *defers > 0 {
                    text.push_str(&format!(
                        "; INFRA {defers} times{}, next try {}",
                        reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default(),
                        next_at_ms.map(t).unwrap_or_else(|| "now".into())
                    ));
                }
                text
            }
            Waiting::Parked { reason, since_ms } => format!(
                "a budget: parked {} ({reason}); it resumes when the day rolls over or the ceiling is raised, or orch task unpark",
                t(*since_ms)
            ),
            Waiting::Paused {
                job_id,
                account,
                limit,
                reason,
                until_ms,
            } => format!(
                "the model account {account}: paused by a {limit} limit until {} ({reason}); job {job_id} runs after it",
                crate::clock::human(*until_ms, now_ms)
            ),
            Waiting::JobQueued {
                job_id,
                role,
                attempt,
                available_at_ms,
                last_error,
                ..
            } => format!(
                "job {job_id} ({role}, attempt {attempt}): queued, available {}{}",
                if *available_at_ms <= now_ms { "now".to_string() } else { t(*available_at_ms) },
                last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            ),
            Waiting::FailedDelivery {
                inbox_id,
                source,
                event,
                attempts,
                dead,
                error,
                ..
            } => format!(
                "a failed delivery: inbox {inbox_id} ({source} {event}) {} after {attempts} attempts: {} (orch events replay {inbox_id})",
                if *dead { "is dead" } else { "failed" },
                error.as_deref().unwrap_or("")
            ),
            Waiting::Tracker { reason, pass_at_ms, .. } => {
                format!("the tracker: reconcile skipped it {} ({reason})", t(*pass_at_ms))
            }
            Waiting::Approval { since_ms, .. } => format!(
                "a human: approval of the analysis, waiting {} (Approved in the tracker, or orch task approve)",
                span(*since_ms)
            ),
            Waiting::Ci {
                sha,
                state,
                since_ms,
            } => format!(
                "CI of {}: {} for {} (the local forge's CI step `orch ci` runs the tests; a forge's status webhook or reconcile records its result)",
                &sha[..sha.len().min(12)],
                state.as_deref().unwrap_or("no status yet"),
                span(*since_ms)
            ),
            Waiting::Gate { stage, since_ms } => format!(
                "the {stage} gate: undecided for {} (the next webhook or reconcile pass re-evaluates it)",
                span(*since_ms)
            ),
        }
    }
}

impl Cause {
    /// One line for people.
    pub fn describe(&self, now_ms: i64) -> String {
        match self {
            Cause::Job {
                job_id,
                role,
                attempt,
                status,
                job_error,
                exit_code,
                success,
                error,
                verdict,
                epoch,
                runner,
                adopted,
                ..
            } => {
                let mut s = match job_error {
                    Some(e) => format!("job {job_id} ({role}, attempt {attempt}, {status}: {e})"),
                    None => format!("job {job_id} ({role}, attempt {attempt}, {status})"),
                };
                s += &format!(", epoch {epoch}");
                if let Some(c) = exit_code {
                    s += &format!(", exit {c}");
                }
                if let Some(ok) = success {
                    s += if *ok { ", result ok" } else { ", result error" };
                }
                if let Some(e) = error
                    .as_ref()
                    .filter(|e| !job_error.as_deref().is_some_and(|j| j.contains(e.as_str())))
                {
                    s += &format!(", run failed: {e}");
                }
                if let Some(v) = verdict {
                    s += &format!(", verdict {v}");
                }
                if let Some(r) = runner {
                    s += &format!(", runner {r}");
                }
                if *adopted {
                    s += ", adopted";
                }
                s
            }
            Cause::NoJob => "no job recorded".into(),
            Cause::Delivery {
                inbox_id,
                source,
                event,
                delivery_id,
                received_at_ms,
                ..
            } => format!(
                "delivery inbox {inbox_id} ({source} {event}, id {delivery_id}, received {})",
                ago(*received_at_ms, now_ms)
            ),
            Cause::DeliveryUnknown => "a delivery (not linked: recorded before migration 9)".into(),
            Cause::ReconcilePass {
                pass_id,
                pass_at_ms,
                detail,
                ..
            } => format!(
                "reconcile pass {pass_id} ({}){}",
                ago(*pass_at_ms, now_ms),
                detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            Cause::ReconcilePassUnknown => "a reconcile pass (no longer recorded)".into(),
            Cause::Human { command } => format!("by hand: {command}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points in time read as points, spans as spans: "until <time> (in
    /// 2 s)", "running for 0 s", "held by … for 3 min" — never "until in
    /// 2 s", "running for just now" or "since 3 min ago".
    #[test]
    fn relative_times_read_naturally() {
        let now = 1_800_000_000_000;
        let paused = Waiting::Paused {
            job_id: 4,
            account: "default".into(),
            limit: "usage".into(),
            reason: "limit reached".into(),
            until_ms: now + 2_000,
        };
        let text = paused.describe(now);
        let until = crate::clock::local_rfc3339(now + 2_000);
        assert!(text.contains(&format!("until {until} (in 2 s)")), "{text}");
        let running = Waiting::JobRunning {
            job_id: 4,
            stage: Stage::Analysis,
            role: "analyst".into(),
            attempt: 1,
            epoch: 2,
            claimed_at_ms: Some(now - 400),
            heartbeat_at_ms: Some(now - 400),
            agent_pid: Some(9),
            worker_host: None,
            worker_pid: None,
            runner: Some("child".into()),
        };
        assert_eq!(
            running.describe(now),
            "job 4 (analyst, attempt 1): running for 0 s, agent pid 9, last heartbeat just now, epoch 2"
        );
        let lease = Waiting::MergeLease {
            job_id: 4,
            lease: "merge:widget".into(),
            holder: "task:2".into(),
            holder_task: Some(2),
            since_ms: now - 180_000,
            expires_at_ms: now + 600_000,
        };
        assert_eq!(
            lease.describe(now),
            "the merge lease merge:widget: held by task:2 for 3 min (expires in 10 min); job 4 merges after it"
        );
        let gate = Waiting::Gate {
            stage: Stage::Development,
            since_ms: now - 7_500_000,
        };
        assert!(
            gate.describe(now)
                .starts_with("the development gate: undecided for 2 h 5 min"),
            "{}",
            gate.describe(now)
        );
    }
}
