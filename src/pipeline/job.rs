//! Job status has one rule, as the stage has [`super::apply`]: every change
//! of `jobs.status` — claim, finish (done, failed, cancelled), requeue,
//! defer, unclaim, cancel — goes through [`change`], which checks that the
//! edge is legal and applies the compare-and-swap (on the status, and on
//! the claim's epoch when the caller knows it: every claim takes a new
//! one, so a stale claim — a worker the reaper gave up on, a claim given
//! back and taken again at the same attempt — changes nothing; DESIGN §11
//! INV-10), returning
//! [`Changed::Lost`] uniformly when another actor changed the job first.
//!
//! The legal edges:
//!
//! ```text
//! queued  → running                      claim
//! running → done | failed | cancelled    finish
//! running → queued                       retry, defer (merge pending), unclaim
//! queued  → cancelled                    cancel (the task moved on)
//! ```
//!
//! Also here: the outcome of finishing a job ([`Finalized`]) and the one
//! "retry, or fail the job and escalate the task" path
//! ([`retry_or_fail`], [`fail_and_escalate`]) that the worker, the reaper
//! and the merge gate share. The claim ([`claim_next`]) applies the spend
//! model of [`super::spend`] (concurrency limits, budgets, parks, paused
//! accounts) to choose the job; the model itself lives there.
//!
//! Assumptions (every function): `tx` is a `BEGIN IMMEDIATE` transaction.

use crate::backoff::backoff_ms;
use crate::config::Settings;
use crate::db::{Job, Tx};
use crate::error::Error;

use super::spend::{over_budget, park, Limits};
use super::{apply, Actor, JobStatus, Move, Policy, Stage, TransitionCause};

/// Whether `from → to` is an edge of the job status machine (see the
/// module documentation).
pub fn is_legal(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    matches!(
        (from, to),
        (Queued, Running)
            | (Running, Done)
            | (Running, Failed)
            | (Running, Cancelled)
            | (Running, Queued)
            | (Queued, Cancelled)
    )
}

/// How a job changes status, with what each kind of change writes.
#[derive(Debug, Clone, Copy)]
pub enum How<'a> {
    /// `queued → running` by this worker (boot id, pid, start time).
    Claim { worker: (&'a str, i64, i64) },
    /// `running → done | failed | cancelled`; `error`, when given, becomes
    /// `last_error`.
    Finish { error: Option<&'a str> },
    /// `running → queued` for the next attempt at `available_at_ms`.
    Retry {
        error: &'a str,
        available_at_ms: i64,
    },
    /// `running → queued` with the merge deferred: the agent's result is
    /// kept, the next claim runs only the merge. `lease`: the busy merge
    /// lease it waits for, whose release makes it runnable at once.
    Defer {
        reason: &'a str,
        available_at_ms: i64,
        lease: Option<&'a str>,
    },
    /// `running → queued` for a new attempt that does not count toward the
    /// attempt cap (an account limit stopped the run), at `available_at_ms`.
    Free {
        error: &'a str,
        available_at_ms: i64,
    },
    /// `running → queued`, same attempt: a claim by hand given back, only
    /// while the claimer (worker `pid`, `start_time`) still holds it.
    Unclaim { pid: i64, start_time: i64 },
    /// `queued → cancelled`.
    Cancel { reason: &'a str },
}

impl How<'_> {
    /// Whether this kind of change is the edge `from → to`.
    fn fits(&self, from: JobStatus, to: JobStatus) -> bool {
        use JobStatus::*;
        match self {
            How::Claim { .. } => (from, to) == (Queued, Running),
            How::Finish { .. } => from == Running && !to.is_active(),
            How::Retry { .. } | How::Free { .. } | How::Defer { .. } | How::Unclaim { .. } => {
                (from, to) == (Running, Queued)
            }
            How::Cancel { .. } => (from, to) == (Queued, Cancelled),
        }
    }
}

/// A requested job status change.
#[derive(Debug, Clone, Copy)]
pub struct JobChange<'a> {
    pub job_id: i64,
    pub from: JobStatus,
    pub to: JobStatus,
    /// The claim epoch the caller holds (or read); the swap is refused
    /// when the job's epoch changed (it was claimed again meanwhile).
    /// `None`: any epoch (the status alone is compared).
    pub epoch: Option<i64>,
    pub how: How<'a>,
}

/// The result of [`change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// The job is now at the requested status.
    Applied,
    /// The job was not at `from` (or not at `epoch`); nothing was written.
    Lost,
}

/// The one job status rule. See the module documentation.
///
/// Errors: [`Error::Usage`] naming the edge when `from → to` is not legal
/// or `how` is not that edge (nothing is written); database errors. A lost
/// compare-and-swap is `Ok(Changed::Lost)`.
pub fn change(tx: &Tx, c: &JobChange, now_ms: i64) -> anyhow::Result<Changed> {
    if !is_legal(c.from, c.to) || !c.how.fits(c.from, c.to) {
        return Err(Error::Usage(format!(
            "illegal job status change {} → {} ({:?}) for job {}",
            c.from, c.to, c.how, c.job_id
        ))
        .into());
    }
    let (id, epoch) = (c.job_id, c.epoch);
    let won = match c.how {
        How::Claim { worker } => tx.claim_job(id, epoch, worker, now_ms)?,
        How::Finish { error } => tx.finish_job(id, epoch, c.to, error, now_ms)?,
        How::Retry {
            error,
            available_at_ms,
        } => tx.requeue_job(id, epoch, false, error, available_at_ms, now_ms)?,
        How::Free {
            error,
            available_at_ms,
        } => tx.requeue_job(id, epoch, true, error, available_at_ms, now_ms)?,
        How::Defer {
            reason,
            available_at_ms,
            lease,
        } => tx.defer_merge_job(id, epoch, reason, available_at_ms, lease, now_ms)?,
        How::Unclaim { pid, start_time } => tx.unclaim_job(id, epoch, pid, start_time)?,
        How::Cancel { reason } => tx.cancel_queued_job(id, epoch, reason, now_ms)?,
    };
    Ok(if won { Changed::Applied } else { Changed::Lost })
}

/// Claims a runnable job for `worker`: queued, available, of a task that
/// is not escalated, optionally of `role` and `project`, within `limits`
/// (fewer running jobs than the global limit, its role's and its
/// project's). Fair across projects: the projects are tried in the order
/// of their last claim (the one claimed longest ago first), and within one
/// the oldest runnable job is taken. Queued jobs whose task moved on are
/// cancelled when they come up. Returns the claimed job, now `running`.
pub fn claim_next(
    tx: &Tx,
    limits: &Limits,
    role: Option<&str>,
    project: Option<&str>,
    worker: (&str, i64, i64),
    now_ms: i64,
) -> anyhow::Result<Option<Job>> {
    let running = tx.running_roles_and_projects()?;
    if running.len() >= limits.global as usize {
        return Ok(None);
    }
    let count = |f: &dyn Fn(&(String, String)) -> bool| running.iter().filter(|r| f(r)).count();
    let mut skip_roles: Vec<&str> = limits
        .by_role
        .iter()
        .filter(|(r, n)| count(&|x| &x.0 == *r) >= **n as usize)
        .map(|(r, _)| r.as_str())
        .collect();
    // Roles whose agent account is paused (usage or rate limit).
    let paused = tx.paused_accounts(now_ms)?;
    if !paused.is_empty() {
        for r in crate::config::ROLES {
            let account = limits.accounts.get(r).map_or(r, String::as_str);
            if paused.iter().any(|p| p == account) && !skip_roles.contains(&r) {
                skip_roles.push(r);
            }
        }
    }
    if role.is_some_and(|r| skip_roles.contains(&r)) {
        return Ok(None);
    }
    let projects = match project {
        Some(p) => vec![p.to_string()],
        None => tx.projects_by_last_claim()?,
    };
    for p in projects {
        if let Some(&n) = limits.by_project.get(&p) {
            if count(&|x| x.1 == p) >= n as usize {
                continue;
            }
        }
        // A queued job whose task moved past it (a human advance, a
        // rollback) can never be valid again: cancel it when it comes up,
        // and look at the next. Only such jobs are visited, never the
        // whole queue.
        let mut parked = Vec::new();
        let id = loop {
            match tx.next_runnable_job(role, Some(&p), &skip_roles, &parked, now_ms)? {
                None => break None,
                Some((j, true)) => {
                    cancel_queued(tx, &j, "task moved on before the job ran", now_ms)?;
                }
                Some((j, false)) => {
                    // A job that would pass a budget ceiling parks its
                    // task (checked again at every claim); look further.
                    let mut over = None;
                    for budget in [&limits.budget, &limits.token_budget] {
                        over = over_budget(tx, budget, &j, &running, now_ms)?;
                        if over.is_some() {
                            break;
                        }
                    }
                    if let Some(reason) = over {
                        park(tx, j.task_id, &reason, now_ms)?;
                        parked.push(j.task_id);
                        continue;
                    }
                    break Some(j.id);
                }
            }
        };
        let Some(id) = id else { continue };
        let claimed = claim(tx, id, worker, now_ms)?;
        if let Some(j) = &claimed {
            tx.mark_project_claimed(&p)?;
            // Runnable again: the park (or the waiver of `orch task
            // unpark`) ends with this claim.
            if tx.unpark_task(j.task_id, false)? {
                tracing::info!(target: "budget", task = j.task_id, "task unparked: its job is within the budgets now");
            }
        }
        crate::failpoint::failpoint("claim.before_commit");
        return Ok(claimed);
    }
    Ok(None)
}

/// Claims queued job `id` for `worker` regardless of `available_at_ms`
/// and the concurrency limit (`orch merge-gate` by hand). Returns the job,
/// or `None` when it was not queued.
pub fn claim(
    tx: &Tx,
    id: i64,
    worker: (&str, i64, i64),
    now_ms: i64,
) -> anyhow::Result<Option<Job>> {
    let c = JobChange {
        job_id: id,
        from: JobStatus::Queued,
        to: JobStatus::Running,
        epoch: None,
        how: How::Claim { worker },
    };
    match change(tx, &c, now_ms)? {
        Changed::Applied => tx.job(id),
        Changed::Lost => Ok(None),
    }
}

/// Finishes running job `job_id` as `to` (done, failed, cancelled), under
/// claim `epoch` when given.
pub fn finish(
    tx: &Tx,
    job_id: i64,
    epoch: Option<i64>,
    to: JobStatus,
    error: Option<&str>,
    now_ms: i64,
) -> anyhow::Result<Changed> {
    let c = JobChange {
        job_id,
        from: JobStatus::Running,
        to,
        epoch,
        how: How::Finish { error },
    };
    change(tx, &c, now_ms)
}

fn cancel_queued(tx: &Tx, j: &Job, reason: &str, now_ms: i64) -> anyhow::Result<Changed> {
    let c = JobChange {
        job_id: j.id,
        from: JobStatus::Queued,
        to: JobStatus::Cancelled,
        epoch: Some(j.epoch),
        how: How::Cancel { reason },
    };
    change(tx, &c, now_ms)
}

/// Cancels every queued or running job of task `task_id` except `keep`
/// (a manual move superseded them). Returns how many were cancelled.
pub fn cancel_task_jobs(
    tx: &Tx,
    task_id: i64,
    keep: Option<i64>,
    reason: &str,
    now_ms: i64,
) -> anyhow::Result<usize> {
    let mut n = 0;
    for j in tx.active_jobs(task_id)? {
        if Some(j.id) == keep {
            continue;
        }
        let out = match j.status {
            JobStatus::Queued => cancel_queued(tx, &j, reason, now_ms)?,
            _ => finish(
                tx,
                j.id,
                Some(j.epoch),
                JobStatus::Cancelled,
                Some(reason),
                now_ms,
            )?,
        };
        n += usize::from(out == Changed::Applied);
    }
    Ok(n)
}

/// How a finalize ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Finalized {
    /// The task moved `from → to` with this job.
    Advanced {
        from: Stage,
        to: Stage,
        escalated: bool,
    },
    /// The job is done; the task waits at its stage (`reason`).
    Waiting { reason: String },
    /// The run failed; the job is queued again for attempt `attempt` (as
    /// counted toward `ORCH_JOB_MAX_ATTEMPTS`), its run number `run`
    /// (higher when account limits stopped earlier runs).
    Retrying {
        attempt: i64,
        run: i64,
        reason: String,
    },
    /// The run failed at the attempt cap; job failed, task escalated.
    Failed { reason: String },
    /// The task moved on while the job ran; the job is cancelled.
    Cancelled { reason: String },
    /// The merge gate could not merge now (the repo's merge lease is busy,
    /// or main kept moving): the job is queued again for `available_at_ms`
    /// with its agent's result kept, so only the merge is retried
    /// (`crate::merge_gate`).
    Deferred {
        defers: i64,
        available_at_ms: i64,
        reason: String,
    },
    /// An account limit stopped the run: the job is queued again for
    /// `until_ms` without counting an attempt, and dispatch of `account`
    /// pauses until then.
    Paused {
        account: String,
        until_ms: i64,
        reason: String,
    },
    /// Another actor finished this job first; nothing was done.
    Lost,
    /// The caller's claim is stale (the job was claimed again, or taken
    /// back): nothing of its finalize was applied, the refusal recorded
    /// (DESIGN §11 INV-10, `crate::fence`).
    Refused { reason: String },
}

impl Finalized {
    /// Whether an operator must act: the job failed for good, or the task
    /// was escalated (logged at WARN).
    pub fn needs_a_human(&self) -> bool {
        matches!(
            self,
            Finalized::Failed { .. }
                | Finalized::Advanced {
                    escalated: true,
                    ..
                }
        )
    }
}

/// One line for logs and `orch work-once`: `advanced review → testing`,
/// `retrying (attempt 2): …`, `failed: …`.
impl std::fmt::Display for Finalized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finalized::Advanced {
                from,
                to,
                escalated,
            } => {
                if from == to {
                    write!(f, "{from} runs again")?;
                } else {
                    write!(f, "advanced {from} → {to}")?;
                }
                if *escalated {
                    f.write_str("; task escalated")?;
                }
                Ok(())
            }
            Finalized::Waiting { reason } => write!(f, "waiting: {reason}"),
            Finalized::Retrying {
                attempt, reason, ..
            } => {
                write!(f, "retrying (attempt {attempt}): {reason}")
            }
            Finalized::Failed { reason } => write!(f, "failed: {reason}"),
            Finalized::Cancelled { reason } => write!(f, "cancelled: {reason}"),
            Finalized::Deferred { defers, reason, .. } => {
                write!(f, "merge deferred ({defers} so far): {reason}")
            }
            Finalized::Paused {
                account,
                until_ms,
                reason,
            } => write!(
                f,
                "paused: account {account} hit its limit; requeued without an attempt, \
                 runnable at {until_ms} (unix ms): {reason}"
            ),
            Finalized::Lost => f.write_str("another actor finished the job first"),
            Finalized::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}

/// A failed run of running job `job` (claim `job.epoch`): queue the next
/// attempt with exponential backoff (`ORCH_JOB_BACKOFF_S` · 2^(attempt-1),
/// see [`crate::backoff`]), or at `ORCH_JOB_MAX_ATTEMPTS` fail the job and
/// escalate its task ([`fail_and_escalate`]). Shared by the worker (a
/// failed gate) and the reaper (Tier-1).
///
/// Guarantees: a claim on the job's epoch; a loser writes nothing and
/// gets `Finalized::Lost`.
pub fn retry_or_fail(
    tx: &Tx,
    policy: Policy,
    settings: &Settings,
    job: &Job,
    reason: &str,
    actor: Actor,
    now: i64,
) -> anyhow::Result<Finalized> {
    if job.attempt - job.free_attempts < settings.job_max_attempts as i64 {
        let base_ms = settings.job_backoff_s as i64 * 1000;
        let delay_ms = backoff_ms(base_ms, base_ms << 16, job.attempt - 1, None);
        let c = JobChange {
            job_id: job.id,
            from: JobStatus::Running,
            to: JobStatus::Queued,
            epoch: Some(job.epoch),
            how: How::Retry {
                error: reason,
                available_at_ms: now + delay_ms,
            },
        };
        return Ok(match change(tx, &c, now)? {
            Changed::Applied => Finalized::Retrying {
                attempt: job.counted_attempt() + 1,
                run: job.attempt + 1,
                reason: reason.to_string(),
            },
            Changed::Lost => Finalized::Lost,
        });
    }
    let why = format!(
        "{} job {} failed after {} attempts: {reason}",
        job.stage,
        job.id,
        job.attempt - job.free_attempts
    );
    fail_and_escalate(
        tx,
        policy,
        job,
        reason,
        why,
        TransitionCause::JobFailed,
        actor,
        now,
    )
}

/// The one "fail the job and escalate the task": running job `job` (claim
/// `job.epoch`) becomes `failed` with `error`, and its task — if it is
/// still at the job's stage and version — is escalated with `why` through
/// the transition rule (a rerun of its stage that enqueues nothing),
/// recorded with `cause` (`job-failed`, `finalize-failed`).
///
/// Guarantees: one step of the caller's transaction; a lost claim writes
/// nothing and gets `Finalized::Lost`.
#[allow(clippy::too_many_arguments)]
pub fn fail_and_escalate(
    tx: &Tx,
    policy: Policy,
    job: &Job,
    error: &str,
    why: String,
    cause: TransitionCause,
    actor: Actor,
    now: i64,
) -> anyhow::Result<Finalized> {
    let failed = finish(
        tx,
        job.id,
        Some(job.epoch),
        JobStatus::Failed,
        Some(error),
        now,
    )?;
    if failed == Changed::Lost {
        return Ok(Finalized::Lost);
    }
    if let Some(task) = tx.task(job.task_id)? {
        if task.stage == job.stage && task.version == job.task_version {
            let mut m = Move::new(&task, task.stage, actor, cause, why.clone());
            m.escalate = Some(why.clone());
            m.cause_job = Some(job.id);
            apply(tx, policy, &m, now)?;
        }
    }
    Ok(Finalized::Failed { reason: why })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, ProjectRow};
    use crate::pipeline::spend::Budget;
    use std::collections::BTreeMap;

    /// A registry row of a local project `name`.
    fn local_project(name: &str) -> ProjectRow<'_> {
        ProjectRow {
            name,
            tracker: "local",
            tracker_project_id: "",
            forge: "local",
            repo: "",
            default_branch: "main",
            clone_url: "",
        }
    }

    /// A database with one task at analysis and its queued job (id 1).
    fn db_with_job() -> (tempfile::TempDir, Db, i64) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        let job = db
            .write(|tx| {
                tx.sync_project(&local_project("p"), 1)?;
                let t = tx
                    .insert_task("p", "1", 1, "t", "", Stage::Analysis, "orch/p-1", "/w", 1)?
                    .unwrap();
                tx.enqueue_job(t, Stage::Analysis, "analyst", 1, 1)
            })
            .unwrap();
        (dir, db, job)
    }

    #[test]
    fn the_claim_keeps_project_and_role_limits_and_alternates_projects() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        let project = local_project;
        // p: tasks 1-3 (analysis), q: task 4 (analysis), 5 (development).
        db.write(|tx| {
            tx.sync_project(&project("p"), 1)?;
            tx.sync_project(&project("q"), 1)?;
            for (i, (proj, stage)) in [
                ("p", Stage::Analysis),
                ("p", Stage::Analysis),
                ("p", Stage::Analysis),
                ("q", Stage::Analysis),
                ("q", Stage::Development),
            ]
            .into_iter()
            .enumerate()
            {
                let n = (i + 1).to_string();
                let t = tx
                    .insert_task(
                        proj,
                        &n,
                        i as i64 + 1,
                        "t",
                        "",
                        stage,
                        &format!("orch/{n}"),
                        "/w",
                        1,
                    )?
                    .unwrap();
                tx.enqueue_job(t, stage, stage.role().unwrap(), 1, 1)?;
            }
            Ok(())
        })
        .unwrap();
        let limits = Limits {
            global: 10,
            by_role: [("developer".to_string(), 0)].into(),
            by_project: [("p".to_string(), 2)].into(),
            accounts: BTreeMap::new(),
            budget: Budget::default(),
            token_budget: Budget::default(),
        };
        let next = || {
            db.write(|tx| claim_next(tx, &limits, None, None, ("h", 1, 1), 5))
                .unwrap()
                .map(|j| j.task_id)
        };
        // p, q, p by turns; then p is at its limit and q's only job left is
        // a developer's, whose role is stopped.
        assert_eq!(
            [next(), next(), next(), next()],
            [Some(1), Some(4), Some(2), None]
        );
        // A paused account stops its roles until the pause ends.
        let open = Limits {
            global: 10,
            by_role: [("developer".to_string(), 0)].into(),
            ..Limits::default()
        };
        db.write(|tx| tx.pause_account("analyst", "rate", "429", 100, 5))
            .unwrap();
        let at = |now| {
            db.write(|tx| claim_next(tx, &open, None, None, ("h", 1, 1), now))
                .unwrap()
                .map(|j| j.task_id)
        };
        assert_eq!(at(99), None);
        assert_eq!(at(100), Some(3));
    }

    thread_local! {
        /// Statements traced on this thread's connection.
        static TRACED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn trace(e: rusqlite::trace::TraceEvent<'_>) {
        if let rusqlite::trace::TraceEvent::Stmt(_, sql) = e {
            TRACED.with(|t| t.borrow_mut().push(sql.to_string()));
        }
    }

    /// Runs `f` in a write transaction; returns the rows it changed and
    /// the query plan lines of every statement it ran.
    fn rows_and_plans<T>(db: &Db, f: impl FnOnce(&Tx) -> anyhow::Result<T>) -> (u64, Vec<String>) {
        let conn = db.sqlite();
        TRACED.with(|t| t.borrow_mut().clear());
        conn.trace_v2(
            rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
            Some(trace),
        );
        let before = conn.total_changes();
        db.write(f).unwrap();
        let changed = conn.total_changes() - before;
        conn.trace_v2(rusqlite::trace::TraceEventCodes::empty(), None);
        let mut plans = Vec::new();
        for sql in TRACED.with(|t| t.take()) {
            // `-- TRIGGER name`: a trigger program starting (its
            // statements are not traced; their rows are counted).
            if sql.starts_with("BEGIN") || sql.starts_with("COMMIT") || sql.starts_with("--") {
                continue;
            }
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
            let rows = stmt
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                .unwrap();
            plans.extend(rows.map(|r| format!("{}  <- {sql}", r.unwrap())));
        }
        (changed, plans)
    }

    /// The hot path of the queue (issue 11's benchmark): a claim changes
    /// only its job's row — no bookkeeping rewritten with the values it
    /// had (the only project's claim order, an unparked task) — and a move
    /// only the rows the transition rule promises (task, transition, the
    /// finished and the next job, the tracker comment). Every statement of
    /// both finds its rows through a key or index: none scans the growing
    /// tables (only the small `projects`, `pauses`, `leases`).
    #[test]
    fn a_claim_and_a_move_write_only_their_rows_and_scan_no_growing_table() {
        let (_d, db, job) = db_with_job();
        let limits = Limits {
            global: 10,
            ..Limits::default()
        };
        let (claimed, claim_plans) = rows_and_plans(&db, |tx| {
            let j = claim_next(tx, &limits, None, None, ("h", 1, 1), 5)?;
            assert_eq!(j.map(|j| j.id), Some(job));
            Ok(())
        });
        assert_eq!(claimed, 1, "the claim changes its job's row only");
        let (moved, move_plans) = rows_and_plans(&db, |tx| {
            let task = tx.task(1)?.unwrap();
            let m = Move::new(
                &task,
                Stage::Architecture,
                Actor::Worker,
                TransitionCause::GatePassed,
                "ok",
            )
            .finishing(job, 1);
            assert!(matches!(
                apply(
                    tx,
                    Policy {
                        max_developer_retries: 3
                    },
                    &m,
                    6
                )?,
                super::super::Moved::Applied {
                    next_job: Some(_),
                    ..
                }
            ));
            Ok(())
        });
        assert_eq!(
            moved, 5,
            "task, transition, finished job, next job, comment"
        );
        let scans_a_growing_table = |plan: &str| {
            let mut words = plan.split_whitespace();
            words.next() == Some("SCAN")
                && words.next().is_some_and(|t| {
                    ["jobs", "j", "tasks", "t", "transitions", "outbox"].contains(&t)
                })
        };
        // A claim that finds nothing due looks for jobs queued before the
        // clock went back too, through their own index.
        let (_, idle_plans) = rows_and_plans(&db, |tx| {
            claim_next(tx, &limits, Some("deployer"), None, ("h", 1, 1), 7)
        });
        assert!(
            idle_plans
                .iter()
                .any(|p| p.contains("USING INDEX jobs_scheduled")),
            "{idle_plans:?}"
        );
        for plan in claim_plans.iter().chain(&move_plans).chain(&idle_plans) {
            assert!(!scans_a_growing_table(plan), "{plan}");
        }
        // The check sees a scan when there is one.
        let (_, plans) = rows_and_plans(&db, |tx| tx.tasks());
        assert!(plans.iter().any(|p| scans_a_growing_table(p)), "{plans:?}");
        // The reconciler's read of the unfinished tasks walks their
        // partial index (only their entries), not the table.
        let (_, plans) = rows_and_plans(&db, |tx| tx.unfinished_tasks());
        assert!(
            plans.len() == 1 && plans[0].starts_with("SCAN tasks USING INDEX tasks_unfinished "),
            "{plans:?}"
        );
    }

    /// `tasks_unfinished` holds a task until it is done and again if it
    /// leaves done, whatever statement moved it; a move between two
    /// unfinished stages does not touch the flag (no index write).
    #[test]
    fn the_unfinished_index_follows_done_and_only_done() {
        let (_d, db, _job) = db_with_job();
        let ids = |db: &Db| -> Vec<i64> {
            db.unfinished_tasks()
                .unwrap()
                .into_iter()
                .map(|t| t.id)
                .collect()
        };
        let flag = |db: &Db| -> Option<i64> {
            db.conn()
                .query_row("SELECT unfinished FROM tasks WHERE id=1", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(ids(&db), [1]);
        let cas = |from, version, to| {
            let (changed, _) = rows_and_plans(&db, |tx| {
                assert!(tx.cas_task(1, from, version, to, 0, false, None, 9)?);
                Ok(())
            });
            changed
        };
        assert_eq!(
            cas(Stage::Analysis, 1, Stage::Architecture),
            1,
            "the task row only"
        );
        assert_eq!((ids(&db), flag(&db)), (vec![1], Some(1)));
        assert_eq!(
            cas(Stage::Architecture, 2, Stage::Done),
            2,
            "the task row, then its flag"
        );
        assert_eq!((ids(&db), flag(&db)), (vec![], None));
        assert_eq!(cas(Stage::Done, 3, Stage::Development), 2);
        assert_eq!((ids(&db), flag(&db)), (vec![1], Some(1)));
        // A task inserted done is not unfinished either.
        db.write(|tx| tx.insert_task("p", "2", 2, "t", "", Stage::Done, "orch/p-2", "/w2", 1))
            .unwrap();
        assert_eq!(ids(&db), [1]);
    }

    #[test]
    fn an_illegal_edge_is_refused_naming_it_and_writes_nothing() {
        let (_d, db, job) = db_with_job();
        for (from, to, how) in [
            (
                JobStatus::Queued,
                JobStatus::Done,
                How::Finish { error: None },
            ),
            (
                JobStatus::Done,
                JobStatus::Running,
                How::Claim {
                    worker: ("h", 1, 1),
                },
            ),
            // A legal edge, but not the change asked for.
            (
                JobStatus::Queued,
                JobStatus::Running,
                How::Cancel { reason: "x" },
            ),
        ] {
            let c = JobChange {
                job_id: job,
                from,
                to,
                epoch: None,
                how,
            };
            let err = db.write(|tx| change(tx, &c, 5)).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains(&format!("{from} → {to}")) && msg.contains("illegal"),
                "{msg}"
            );
        }
        assert_eq!(db.job(job).unwrap().unwrap().status, JobStatus::Queued);
    }

    #[test]
    fn a_swap_against_a_changed_epoch_or_status_is_lost() {
        let (_d, db, job) = db_with_job();
        let claimed = db.write(|tx| claim(tx, job, ("h", 1, 1), 5)).unwrap();
        assert_eq!(claimed.unwrap().epoch, 1);
        // Requeue under epoch 1: attempt 2, and epoch 2 once claimed.
        let retry = |epoch| JobChange {
            job_id: job,
            from: JobStatus::Running,
            to: JobStatus::Queued,
            epoch: Some(epoch),
            how: How::Retry {
                error: "boom",
                available_at_ms: 0,
            },
        };
        assert_eq!(
            db.write(|tx| change(tx, &retry(1), 6)).unwrap(),
            Changed::Applied
        );
        db.write(|tx| claim(tx, job, ("h", 1, 1), 7)).unwrap();
        // A late actor still holding epoch 1 loses, and writes nothing.
        assert_eq!(
            db.write(|tx| change(tx, &retry(1), 8)).unwrap(),
            Changed::Lost
        );
        let lost = db
            .write(|tx| finish(tx, job, Some(1), JobStatus::Failed, Some("late"), 8))
            .unwrap();
        assert_eq!(lost, Changed::Lost);
        let j = db.job(job).unwrap().unwrap();
        assert_eq!((j.status, j.attempt, j.epoch), (JobStatus::Running, 2, 2));
        // A claim given back and taken again keeps its attempt but not its
        // epoch: the first claim's holder is stale (the attempt alone
        // would have let it through).
        let unclaim = JobChange {
            job_id: job,
            from: JobStatus::Running,
            to: JobStatus::Queued,
            epoch: Some(2),
            how: How::Unclaim {
                pid: 1,
                start_time: 1,
            },
        };
        assert_eq!(
            db.write(|tx| change(tx, &unclaim, 8)).unwrap(),
            Changed::Applied
        );
        db.write(|tx| claim(tx, job, ("h", 1, 1), 8)).unwrap();
        let j = db.job(job).unwrap().unwrap();
        assert_eq!((j.attempt, j.epoch), (2, 3));
        let stale = |tx: &Tx| finish(tx, job, Some(2), JobStatus::Done, None, 9);
        assert_eq!(db.write(stale).unwrap(), Changed::Lost);
        assert!(!db.write(|tx| tx.record_exit(job, 2, 0, 9)).unwrap());
        // The right epoch wins; a second finish finds it no longer running.
        let done = |tx: &Tx| finish(tx, job, Some(3), JobStatus::Done, None, 9);
        assert_eq!(db.write(done).unwrap(), Changed::Applied);
        assert_eq!(db.write(done).unwrap(), Changed::Lost);
        // A claim of a job that is not queued is lost too.
        assert!(db
            .write(|tx| claim(tx, job, ("h", 1, 1), 10))
            .unwrap()
            .is_none());
    }
}
