//! `orch reap`: recover jobs whose worker died, finish jobs whose worker
//! died while finalizing, kill agents past their timeout, release stale
//! merge leases (DESIGN §6), and remove the worktrees of tasks done for
//! `ORCH_WORKTREE_KEEP_S`.
//!
//! A pass first *plans* from observed state, then *executes* each action
//! as a claim: the action re-checks, inside its own `BEGIN IMMEDIATE`
//! transaction, that the job is still in the state the plan saw (same
//! status and attempt, exit still unrecorded for Tier-1); a job that moved
//! meanwhile is skipped. `--dry-run` prints the plan and writes nothing.
//!
//! Crash policy (what happens to a half-done row):
//! - running, detached run (DESIGN §4 "Detached runs"), no exit recorded,
//!   worker gone → its run ended (exit record): adopt — record it and
//!   finalize, never run again; its run goes on: leave it running; its run
//!   is gone without an exit record: Tier-1, below. Past its timeout the
//!   run is stopped (supervisor and agent groups) and recovered.
//! - running, no exit recorded, worker gone → Tier-1: kill any orphaned
//!   agent group, then requeue (attempt+1, backoff) or fail at the cap and
//!   escalate. The agent's work is not trusted: the next attempt starts
//!   from what was pushed.
//! - running, exit recorded ≥ `ORCH_REAPER_FINALIZE_GRACE_S` ago, and its
//!   worker gone or silent (no heartbeat for `ORCH_HEARTBEAT_STALE_S`) →
//!   Tier-2: finish it with the worker's own idempotent finalize; the agent
//!   is never run again. Inside the grace nothing is touched, even when the
//!   worker's pid is gone.

use std::collections::HashMap;

use serde::Serialize;
use tracing::info;

use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::{Db, Job};
use crate::fence::Here;
use crate::pipeline::job::Finalized;
use crate::pipeline::{Actor, JobStatus};
use crate::process;
use crate::worker;

/// A job whose agent exited and whose finalize failed (below
/// `ORCH_FINALIZE_MAX_ATTEMPTS`): its row still says `running`, but no
/// agent runs and nothing happens until the reaper's Tier-2 finalizes it
/// again. `orch status`, `orch why`, `orch task show` and the metrics show
/// it as such, with the error and the retry ([`finalize_failed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FinalizeFailed {
    pub job_id: i64,
    pub task_id: i64,
    pub stage: crate::model::Stage,
    pub role: String,
    pub attempt: i64,
    /// Failed finalizes of this attempt so far.
    pub failures: i64,
    /// `ORCH_FINALIZE_MAX_ATTEMPTS`: at this many the job fails and its
    /// task is escalated.
    pub max_attempts: i64,
    /// The last failure (`finalize failed: …`).
    pub error: String,
    /// When the agent's exit was recorded (unix ms).
    pub exited_at_ms: i64,
    /// When the reaper retries it at the earliest (unix ms): the exit plus
    /// `ORCH_REAPER_FINALIZE_GRACE_S`; once past, its next pass (the
    /// reaper measures the grace on the boot clock where it can, so a
    /// wall-clock jump moves this estimate, not the retry).
    pub retry_at_ms: i64,
}

impl FinalizeFailed {
    /// When the reaper retries, for people: `the reaper retries it in
    /// 4 min (finalize 1 of 5 failed)` or `… at its next pass …`.
    pub fn retry_text(&self, now_ms: i64) -> String {
        retry_text(self.retry_at_ms, self.failures, self.max_attempts, now_ms)
    }
}

/// [`FinalizeFailed::retry_text`] from its parts.
pub fn retry_text(retry_at_ms: i64, failures: i64, max_attempts: i64, now_ms: i64) -> String {
    let when = if retry_at_ms > now_ms {
        crate::clock::ago(retry_at_ms, now_ms)
    } else {
        "at its next pass".into()
    };
    format!("the reaper retries it {when} (finalize {failures} of {max_attempts} failed)")
}

/// `Some` when job `j` is running with its agent's exit recorded and at
/// least one failed finalize of this attempt ([`FinalizeFailed`]).
pub fn finalize_failed(settings: &crate::config::Settings, j: &Job) -> Option<FinalizeFailed> {
    let exited_at_ms = j.exit_recorded_at_ms?;
    if j.status != JobStatus::Running || j.finalize_failures == 0 {
        return None;
    }
    Some(FinalizeFailed {
        job_id: j.id,
        task_id: j.task_id,
        stage: j.stage,
        role: j.role.clone(),
        attempt: j.counted_attempt(),
        failures: j.finalize_failures,
        max_attempts: settings.finalize_max_attempts as i64,
        error: j.last_error.clone().unwrap_or_default(),
        exited_at_ms,
        retry_at_ms: exited_at_ms + settings.reaper_finalize_grace_s as i64 * 1000,
    })
}

/// One planned reaper action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Tier-1: the worker is gone and the agent never reported an exit.
    Recover {
        job_id: i64,
        task_id: i64,
        attempt: i64,
        /// The claim the plan saw; the action is skipped when the job was
        /// claimed again since.
        epoch: i64,
        reason: String,
    },
    /// Tier-2: the agent exited long ago and nobody finished the job.
    Finish {
        job_id: i64,
        task_id: i64,
        /// The claim whose run exited: the finalize is fenced on it.
        epoch: i64,
        exit_code: i64,
        exited_ms_ago: i64,
    },
    /// The job ran past its role's timeout: kill the agent group, then Tier-1.
    Timeout {
        job_id: i64,
        task_id: i64,
        attempt: i64,
        epoch: i64,
        running_s: i64,
    },
    /// Adoption: the worker is gone and the job's detached run ended,
    /// its exit record written: record it and finalize; the agent is never
    /// run again.
    Adopt {
        job_id: i64,
        task_id: i64,
        epoch: i64,
        /// The exit record's `exit` (`code`, `signal`, `timed_out`, …).
        exit: String,
        reason: String,
    },
    /// The worker is gone but the job's detached run still goes: it is
    /// left running (a worker may take over watching it), not restarted.
    LeaveRunning {
        job_id: i64,
        task_id: i64,
        epoch: i64,
        reason: String,
    },
    /// A merge lease whose holder is gone or that expired.
    ReleaseLeases,
    /// The worktree of a task done for at least `ORCH_WORKTREE_KEEP_S`
    /// (its branch stays on the forge and in the clone).
    RemoveWorktree {
        task_id: i64,
        path: String,
        done_s_ago: i64,
    },
    /// A worktree no task names any more: an older epoch's, left when a
    /// newer claim got a worktree of its own (DESIGN §11 INV-10), whose
    /// run lock is free now (its run is over).
    RemoveOrphanWorktree { path: String },
}

impl Action {
    /// The action's kind as counted in `reap.<kind>_total`: `recover`,
    /// `finish`, `timeout`, `adopt`, `leave_running`, `release_leases`,
    /// `remove_worktree`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Recover { .. } => "recover",
            Action::Finish { .. } => "finish",
            Action::Timeout { .. } => "timeout",
            Action::Adopt { .. } => "adopt",
            Action::LeaveRunning { .. } => "leave_running",
            Action::ReleaseLeases => "release_leases",
            Action::RemoveWorktree { .. } | Action::RemoveOrphanWorktree { .. } => {
                "remove_worktree"
            }
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Recover {
                job_id,
                task_id,
                attempt,
                reason,
                ..
            } => {
                write!(
                    f,
                    "recover job {job_id} (task {task_id}, attempt {attempt}): {reason}"
                )
            }
            Action::Finish {
                job_id,
                task_id,
                exit_code,
                exited_ms_ago,
                ..
            } => write!(
                f,
                "finish job {job_id} (task {task_id}): agent exited {exit_code} {}s ago",
                exited_ms_ago / 1000
            ),
            Action::Timeout {
                job_id,
                task_id,
                attempt,
                running_s,
                ..
            } => write!(
                f,
                "timeout job {job_id} (task {task_id}, attempt {attempt}): running {running_s}s"
            ),
            Action::Adopt {
                job_id,
                task_id,
                epoch,
                exit,
                reason,
            } => write!(
                f,
                "adopt job {job_id} (task {task_id}, epoch {epoch}): its detached run ended ({exit}) and {reason}"
            ),
            Action::LeaveRunning {
                job_id,
                task_id,
                epoch,
                reason,
            } => write!(
                f,
                "leave job {job_id} running (task {task_id}, epoch {epoch}): its detached run goes on; {reason}"
            ),
            Action::ReleaseLeases => write!(f, "release stale leases"),
            Action::RemoveWorktree {
                task_id,
                path,
                done_s_ago,
            } => write!(
                f,
                "remove worktree {path} (task {task_id}, done {} ago)",
                crate::clock::duration(done_s_ago * 1000)
            ),
            Action::RemoveOrphanWorktree { path } => {
                write!(f, "remove worktree {path} (an older epoch's, its run over)")
            }
        }
    }
}

/// An executed action and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    #[serde(flatten)]
    pub action: Action,
    pub result: String,
}

/// Whether worker processes live, each looked up in `/proc` once per pass
/// however many jobs name it: `(pid, start time) → alive`.
type Liveness = HashMap<(i64, i64), bool>;

/// Why the worker of running job `j` is gone, or `None` when it lives:
/// the one judgement ([`Here::worker_gone`]), its `/proc` look-ups cached
/// for the pass. A job of another host or boot is judged by its
/// heartbeat's age alone: its processes are not this machine's to look up
/// (nor to kill, [`worker::adopt::recover`]).
fn worker_gone(ctx: &Ctx, j: &Job, now: &Here, alive: &mut Liveness) -> Option<String> {
    let stale_ms = ctx.settings.heartbeat_stale_s as i64 * 1000;
    now.worker_gone(j, stale_ms, &mut |pid, start| {
        *alive
            .entry((pid, start))
            .or_insert_with(|| process::is_alive(pid as i32, start as u64))
    })
}

/// The plan for running job `j` whose run is detached and whose exit is
/// not recorded, when its worker is gone: adopt a run that ended, leave a
/// live one running (unless past its timeout: `None`, the timeout
/// backstop), recover one gone without an exit record. `None` as well
/// while its worker lives, and for a run of another host (its records
/// are that host's: judged by the heartbeat, as a child run is).
fn plan_detached(
    ctx: &Ctx,
    j: &Job,
    clocks: &Here,
    alive: &mut Liveness,
    timed_out: bool,
) -> Option<Action> {
    if worker::adopt::other_host(j).is_some() {
        return None;
    }
    let reason = worker_gone(ctx, j, clocks, alive)?;
    match worker::adopt::run_state(ctx, j) {
        Ok(process::detached::State::Exited(e)) => Some(Action::Adopt {
            job_id: j.id,
            task_id: j.task_id,
            epoch: j.epoch,
            exit: e.exit,
            reason,
        }),
        Ok(process::detached::State::Running) if timed_out => None,
        Ok(process::detached::State::Running) => Some(Action::LeaveRunning {
            job_id: j.id,
            task_id: j.task_id,
            epoch: j.epoch,
            reason,
        }),
        Ok(process::detached::State::Gone(why)) => Some(Action::Recover {
            job_id: j.id,
            task_id: j.task_id,
            attempt: j.attempt,
            epoch: j.epoch,
            reason: format!("{reason}; the detached run is gone: {why}"),
        }),
        Err(e) => Some(Action::Recover {
            job_id: j.id,
            task_id: j.task_id,
            attempt: j.attempt,
            epoch: j.epoch,
            reason: format!("{reason}; the detached run's exit record is unreadable: {e:#}"),
        }),
    }
}

/// Plans a pass over the running jobs at `now` (wall clock, unix ms).
/// Read-only. A run's time, a heartbeat's age and the finalize grace are
/// measured on this boot's clock where the worker ran on this boot, so a
/// forward jump of the wall clock neither times out nor reaps a live,
/// heartbeating worker's job.
pub fn plan(ctx: &Ctx, db: &Db, now: i64) -> anyhow::Result<Vec<Action>> {
    let clocks = Here::at(now);
    let grace_ms = ctx.settings.reaper_finalize_grace_s as i64 * 1000;
    let mut actions = Vec::new();
    let mut alive = Liveness::new();
    for j in db.jobs_with_status(JobStatus::Running)? {
        if let Some(exited_at) = j.exit_recorded_at_ms {
            // Past the grace, unless its worker is alive and still
            // heartbeating (a long merge-gate test run): finishing it
            // alongside would be safe (the claim decides) but wasted.
            let exited_ms_ago = clocks.since(&j, exited_at, j.exit_boot_ms);
            if exited_ms_ago >= grace_ms && worker_gone(ctx, &j, &clocks, &mut alive).is_some() {
                actions.push(Action::Finish {
                    job_id: j.id,
                    task_id: j.task_id,
                    epoch: j.epoch,
                    exit_code: j.exit_code.unwrap_or(-1),
                    exited_ms_ago,
                });
            }
            continue;
        }
        let timeout_s = j.timeout_s.unwrap_or(ctx.settings.agent_timeout_s as i64);
        let running_s = j
            .claimed_at_ms
            .map_or(0, |c| clocks.since(&j, c, j.claimed_boot_ms))
            / 1000;
        // The worker (or a detached run's supervisor) enforces the timeout
        // itself; step in only once it had the kill grace and a minute
        // more to do so.
        let timed_out = running_s > timeout_s + ctx.settings.kill_grace_s as i64 + 60;
        if worker::adopt::is_detached(&j) {
            if let Some(action) = plan_detached(ctx, &j, &clocks, &mut alive, timed_out) {
                actions.push(action);
                continue;
            }
        }
        if timed_out {
            actions.push(Action::Timeout {
                job_id: j.id,
                task_id: j.task_id,
                attempt: j.attempt,
                epoch: j.epoch,
                running_s,
            });
        } else if let Some(reason) = worker_gone(ctx, &j, &clocks, &mut alive) {
            actions.push(Action::Recover {
                job_id: j.id,
                task_id: j.task_id,
                attempt: j.attempt,
                epoch: j.epoch,
                reason,
            });
        }
    }
    // Stale: expired, or its job is no longer queued or running (the one
    // definition, shared with the release: `db::leases`).
    if !db.stale_leases(now)?.is_empty() {
        actions.push(Action::ReleaseLeases);
    }
    actions.extend(finished_worktrees(ctx, db, now)?);
    Ok(actions)
}

/// The worktrees on disk whose task is done, has been for
/// `ORCH_WORKTREE_KEEP_S` (0: never), and has no queued or running job,
/// and those no task names any more whose run is over
/// ([`Action::RemoveOrphanWorktree`]). Found by
/// listing each project's worktree folder (what is left to remove, not
/// every task ever done) and looking each up by its path.
fn finished_worktrees(ctx: &Ctx, db: &Db, now: i64) -> anyhow::Result<Vec<Action>> {
    let keep_ms = ctx.settings.worktree_keep_s as i64 * 1000;
    let mut actions = Vec::new();
    for p in &ctx.config.projects {
        let dir = ctx.settings.worktrees_dir().join(&p.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path().to_string_lossy().into_owned();
            let Some(t) = db.task_by_worktree(&path)? else {
                if orphaned(ctx, db, &entry.path())? {
                    actions.push(Action::RemoveOrphanWorktree { path });
                }
                continue;
            };
            if keep_ms > 0 && now - t.updated_at_ms >= keep_ms && removable(db, &t)? {
                actions.push(Action::RemoveWorktree {
                    task_id: t.id,
                    path,
                    done_s_ago: (now - t.updated_at_ms) / 1000,
                });
            }
        }
    }
    Ok(actions)
}

/// Whether `path`, a worktree no task names by that path, is an older
/// epoch's left behind (INV-10): a run held it (its run lock names the
/// job), that job's task has moved to another worktree (compared as
/// resolved paths, so a state folder named another way since is not taken
/// for one), and no run holds it now.
fn orphaned(ctx: &Ctx, db: &Db, path: &std::path::Path) -> anyhow::Result<bool> {
    let Some(job) = crate::fence::last_holder_job(&ctx.settings, path) else {
        return Ok(false);
    };
    let Some(task) = db
        .job(job)?
        .map(|j| j.task_id)
        .map(|t| db.task(t))
        .transpose()?
        .flatten()
    else {
        return Ok(false);
    };
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize())
    {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(std::path::Path::new(&task.worktree), path) {
        return Ok(false);
    }
    crate::fence::is_free(&ctx.settings, path)
}

/// Whether task `t`'s worktree may go: the task is done and no job of it
/// is queued or running.
fn removable(db: &Db, t: &crate::db::Task) -> anyhow::Result<bool> {
    Ok(t.stage == crate::pipeline::Stage::Done && db.active_jobs(t.id)?.is_empty())
}

/// Removes a done task's worktree, checking under the worktree lock that
/// the task is still done and idle, and the task's clone view if one was
/// left (DESIGN §4).
fn remove_worktree(ctx: &Ctx, db: &Db, task_id: i64, path: &str) -> anyhow::Result<String> {
    let Some(task) = db.task(task_id)? else {
        return Ok("skipped: the task is gone".into());
    };
    let repo = ctx.repo(ctx.project(&task.project)?);
    let removed = repo.remove_worktree_if(std::path::Path::new(path), || {
        db.task(task_id)?.map_or(Ok(false), |t| removable(db, &t))
    })?;
    if !removed {
        return Ok("skipped: the task is active again".into());
    }
    let _ = std::fs::remove_dir_all(ctx.settings.clone_view_dir(task_id));
    Ok("removed".into())
}

/// Removes a worktree no task names, under its run lock (taken for the
/// removal: a run that would start there waits for nothing, it is not
/// any task's worktree).
fn remove_orphan_worktree(ctx: &Ctx, db: &Db, path: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(path);
    let claim = crate::fence::Claim {
        job_id: 0,
        epoch: 0,
    };
    let Ok(_lock) = crate::fence::try_lock(&ctx.settings, path, claim)? else {
        return Ok("skipped: its run lock is held again".into());
    };
    let Some(project) = ctx
        .config
        .projects
        .iter()
        .find(|p| path.starts_with(ctx.settings.worktrees_dir().join(&p.name)))
    else {
        return Ok("skipped: no project's worktree".into());
    };
    let repo = ctx.repo(project);
    let path_str = path.to_string_lossy();
    let removed =
        repo.remove_worktree_if(path, || Ok(db.task_by_worktree(&path_str)?.is_none()))?;
    let _ = std::fs::remove_file(crate::fence::lock_path(&ctx.settings, path));
    Ok(if removed {
        "removed".into()
    } else {
        "skipped: a task names it again".into()
    })
}

/// Executes planned actions; each re-checks its claim first.
///
/// Assumptions: the caller holds the `reap` tick lock.
pub fn execute(ctx: &Ctx, db: &Db, actions: Vec<Action>) -> anyhow::Result<Vec<Done>> {
    let mut done = Vec::new();
    for action in actions {
        let result = match &action {
            Action::Recover {
                job_id,
                epoch,
                reason,
                ..
            } => recover(ctx, db, *job_id, *epoch, &format!("worker gone: {reason}"))?,
            Action::Timeout {
                job_id,
                epoch,
                running_s,
                ..
            } => recover(
                ctx,
                db,
                *job_id,
                *epoch,
                &format!("agent timed out after {running_s}s"),
            )?,
            Action::Adopt { job_id, epoch, .. } => match adopt(ctx, db, *job_id, *epoch) {
                Ok(r) => r,
                Err(e) => format!("adoption failed, will retry next pass: {e:#}"),
            },
            Action::LeaveRunning { .. } => "left running: its detached run goes on".into(),
            Action::Finish { job_id, epoch, .. } => {
                match worker::finalize(ctx, db, *job_id, *epoch, Actor::Reaper) {
                    Ok(out) => describe(&out),
                    Err(e) => format!("finalize failed, will retry next pass: {e:#}"),
                }
            }
            Action::RemoveWorktree { task_id, path, .. } => {
                match remove_worktree(ctx, db, *task_id, path) {
                    Ok(r) => r,
                    Err(e) => format!("not removed, will retry next pass: {e:#}"),
                }
            }
            Action::RemoveOrphanWorktree { path } => match remove_orphan_worktree(ctx, db, path) {
                Ok(r) => r,
                Err(e) => format!("not removed, will retry next pass: {e:#}"),
            },
            Action::ReleaseLeases => {
                let released = db.write(|tx| tx.release_stale_leases(now_ms()))?;
                if released.is_empty() {
                    "skipped: no stale lease left".into()
                } else {
                    released
                        .iter()
                        .map(|(n, h)| format!("released {n} held by {h}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                }
            }
        };
        info!(target: "reap", action = %action, result = %result, "reaped");
        db.write(|tx| tx.bump_counter(&format!("reap.{}_total", action.kind()), 1))?;
        done.push(Done { action, result });
    }
    Ok(done)
}

/// Adopts job `job_id`'s claim `epoch` whose detached run ended
/// ([`worker::adopt::finish_adopted`]), re-checking first that it is still
/// running that claim with its exit unrecorded and its run's exit record
/// there.
fn adopt(ctx: &Ctx, db: &Db, job_id: i64, epoch: i64) -> anyhow::Result<String> {
    let Some(j) = db.job(job_id)?.filter(|j| {
        j.status == JobStatus::Running && j.epoch == epoch && j.exit_recorded_at_ms.is_none()
    }) else {
        return Ok("skipped: job changed since the plan".into());
    };
    let process::detached::State::Exited(exited) = worker::adopt::run_state(ctx, &j)? else {
        return Ok("skipped: the run's exit record is gone".into());
    };
    Ok(
        match worker::adopt::finish_adopted(ctx, db, &j, &exited, Actor::Reaper) {
            Ok(Some((code, out))) => format!("adopted (agent exited {code}): {}", describe(&out)),
            Ok(None) => "skipped: another process adopted it first".into(),
            Err(e) => match worker::stopped_by(&e) {
                Some(sig) => format!(
                    "adopted: its supervisor was stopped by {}; requeued without counting the attempt",
                    process::signal_name(sig)
                ),
                None => return Err(e),
            },
        },
    )
}

/// Tier-1 for one job ([`worker::adopt::recover`]), described.
fn recover(ctx: &Ctx, db: &Db, job_id: i64, epoch: i64, reason: &str) -> anyhow::Result<String> {
    Ok(
        match worker::adopt::recover(ctx, db, job_id, epoch, reason)? {
            Some(out) => describe(&out),
            None => "skipped: job changed since the plan".into(),
        },
    )
}

fn describe(f: &Finalized) -> String {
    match f {
        Finalized::Advanced {
            from,
            to,
            escalated,
        } => {
            format!(
                "advanced {from} → {to}{}",
                if *escalated { " (escalated)" } else { "" }
            )
        }
        Finalized::Waiting { reason } => format!("job done; task waits: {reason}"),
        Finalized::Retrying {
            attempt, reason, ..
        } => {
            format!("requeued for attempt {attempt}: {reason}")
        }
        Finalized::Failed { reason } => format!("job failed, task escalated: {reason}"),
        Finalized::Cancelled { reason } => format!("job cancelled: {reason}"),
        Finalized::Deferred { defers, reason, .. } => {
            format!("merge deferred ({defers}): {reason}")
        }
        Finalized::Paused {
            account, until_ms, ..
        } => format!(
            "requeued without an attempt: account {account} paused until {}",
            crate::clock::human(*until_ms, now_ms())
        ),
        Finalized::Lost => "lost: another actor finished it first; nothing written".into(),
        Finalized::Refused { reason } => format!("refused: {reason}"),
    }
}
