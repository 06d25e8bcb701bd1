//! Adoption of detached runs, and Tier-1 recovery of a job whose run is
//! gone (DESIGN §4 "Detached runs", §6).
//!
//! A detached run (`jobs.runner` `supervisor` or `systemd`) outlives its
//! worker. Whoever comes next — the reaper, or any worker before it claims
//! new work — finds it by its job and claim epoch and judges it from its
//! records ([`detached::state`]):
//! - ended (exit record present): recorded with the same function the
//!   watcher uses (`record_run`) and finalized at once; never run again;
//! - still going: left running; a worker on the same boot may take over
//!   watching it (a compare-and-swap of the job's worker identity);
//! - gone without an exit record (killed, a reboot): Tier-1 ([`recover`]).

use std::time::Duration;

use anyhow::Context as _;
use tracing::{info, warn};

use super::{conclude, follow, record_run, settle, stopped_outcome, Ended, RunFacts, WorkOutcome};
use crate::agent::session::Watch;
use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::{Db, Job};
use crate::failpoint::failpoint;
use crate::pipeline::job::{self as jobs, Finalized};
use crate::pipeline::{Actor, JobStatus};
use crate::process::detached::{self, Paths};
use crate::process::{self, Spawned};

/// The host id of job `j`'s claim when it is not this machine's
/// ([`process::host_id`]); `None` for this host's claims and for claims
/// of an older orch that recorded none. Another host's processes are not
/// this machine's to look up or stop.
pub fn other_host(j: &Job) -> Option<&str> {
    j.host_id
        .as_deref()
        .filter(|h| *h != process::host_id().as_str())
}

/// Whether job `j`'s current claim runs its agent detached.
pub fn is_detached(j: &Job) -> bool {
    matches!(j.runner.as_deref(), Some("supervisor" | "systemd"))
}

/// The files of job `j`'s current claim's detached run.
pub fn paths(ctx: &Ctx, j: &Job) -> Paths {
    Paths::new(&ctx.settings.logs_dir(), j.id, j.epoch)
}

/// Where job `j`'s detached run stands, by its runner
/// ([`detached::state_by_runner`]: a transient unit by its manager's
/// word, a supervisor by its pid).
///
/// Errors: its exit record is unreadable or another claim's.
pub fn run_state(ctx: &Ctx, j: &Job) -> anyhow::Result<detached::State> {
    detached::state_by_runner(
        &paths(ctx, j),
        j.id,
        j.epoch,
        j.runner.as_deref(),
        j.run_handle.as_deref(),
    )
}

/// The runner name job `j`'s detached run records (`systemd` or
/// `supervisor`).
pub fn runner_name(j: &Job) -> &'static str {
    match j.runner.as_deref() {
        Some("systemd") => "systemd",
        _ => "supervisor",
    }
}

/// What a worker does before it claims: finds one running job whose
/// detached run's watcher died on this host and boot
/// ([`crate::fence::Here::owns`]: no other job's processes are looked
/// up), and finishes it (its run
/// ended: [`finish_adopted`]) or watches it to its end (its run goes on).
/// A run gone without an exit record is left to the reaper's Tier-1.
/// Returns what it did, or `None` when there was nothing to adopt.
///
/// Errors: database errors; those of [`finish_adopted`] and the watch.
pub fn adopt_one(ctx: &Ctx, db: &Db) -> anyhow::Result<Option<WorkOutcome>> {
    let here = crate::fence::Here::at(now_ms());
    for j in db.jobs_with_status(JobStatus::Running)? {
        if !is_detached(&j) || j.exit_recorded_at_ms.is_some() {
            continue;
        }
        let watcher_dead = here.owns(&j)
            && match (j.worker_pid, j.worker_start_time) {
                (Some(pid), Some(start)) => !process::is_alive(pid as i32, start as u64),
                _ => true,
            };
        if !watcher_dead {
            continue;
        }
        let adopted = match run_state(ctx, &j) {
            Ok(detached::State::Exited(e)) => {
                match finish_adopted(ctx, db, &j, &e, Actor::Worker) {
                    Ok(done) => done.map(|(code, finalized)| WorkOutcome::ran(&j, code, finalized)),
                    Err(e) => Some(stopped_outcome(&j, e)?),
                }
            }
            Ok(detached::State::Running) => match take_over(ctx, db, &j) {
                Ok(out) => out,
                Err(e) => Some(stopped_outcome(&j, e)?),
            },
            Ok(detached::State::Gone(_)) => None,
            Err(e) => {
                warn!(target: "worker", job = j.id, error = %format!("{e:#}"), "cannot judge the detached run; left to the reaper");
                None
            }
        };
        if adopted.is_some() {
            return Ok(adopted);
        }
    }
    Ok(None)
}

/// Makes this process the watcher of job `j` (as the caller read it): a
/// compare-and-swap on its worker identity and claim epoch. Returns
/// whether it won.
fn take_watch(db: &Db, j: &Job) -> anyhow::Result<bool> {
    let (host, pid, start) = process::identity();
    db.write(|tx| {
        tx.take_watch(
            j.id,
            j.epoch,
            (j.worker_host.as_deref(), j.worker_pid, j.worker_start_time),
            (&host, pid, start),
            now_ms(),
        )
    })
}

/// The post-run facts stored in job `j`'s detached run's spec.
fn facts_of(ctx: &Ctx, j: &Job) -> anyhow::Result<RunFacts> {
    let spec = paths(ctx, j).spec;
    Ok(detached::read_spec::<RunFacts>(&spec)?.facts)
}

/// Takes over watching job `j`'s detached run, still going, whose watcher
/// died: the worker identity is swapped to this process, then the run is
/// watched to its end, recorded and finalized as its own worker would.
/// `None` when another process took it first.
fn take_over(ctx: &Ctx, db: &Db, j: &Job) -> anyhow::Result<Option<WorkOutcome>> {
    if !take_watch(db, j)? {
        return Ok(None);
    }
    info!(target: "worker", job = j.id, task = j.task_id, epoch = j.epoch, "adopted: watching a detached run whose watcher died");
    let facts = facts_of(ctx, j)?;
    let handle = detached::handle_of(&paths(ctx, j), j.run_handle.as_deref()).unwrap_or_default();
    let mut watch = Watch::new(facts.kind, &facts.log_path, facts.log_from);
    let runner = runner_name(j);
    let watched = follow(ctx, db, j, &paths(ctx, j), runner, &handle, &mut watch)?;
    let end = settle(ctx, db, j, facts, watched, runner, true)?;
    conclude(ctx, db, j, end).map(Some)
}

/// Finishes job `j`, whose detached run ended (`exited`) with no watcher
/// left: takes the watch (a compare-and-swap; `None` when another process
/// took it first), records the run as its watcher would (`adopted`), then
/// finalizes the job as `actor`. The agent is never run again. Returns
/// the exit code and what finalize did.
///
/// Errors: the spec cannot be read; those of recording and finalize.
pub fn finish_adopted(
    ctx: &Ctx,
    db: &Db,
    j: &Job,
    exited: &detached::Exited,
    actor: Actor,
) -> anyhow::Result<Option<(i64, Finalized)>> {
    if !take_watch(db, j)? {
        return Ok(None);
    }
    failpoint("adopt.after_claim");
    let facts = facts_of(ctx, j)?;
    let ended = Ended {
        outcome: exited.outcome()?,
        acp: None,
        agent_pid: exited.agent.map(|a| a.pid as i64),
        runner: runner_name(j),
        adopted: true,
    };
    let Some(exit_code) = record_run(ctx, db, j, facts, ended)? else {
        return Ok(None);
    };
    failpoint("adopt.after_record");
    info!(target: "worker", job = j.id, task = j.task_id, epoch = j.epoch, exit_code, actor = %actor, "adopted: recorded a detached run that ended with no watcher; finalizing");
    failpoint("adopt.before_finalize");
    let finalized = super::finalize(ctx, db, j.id, j.epoch, actor)?;
    Ok(Some((exit_code, finalized)))
}

/// Tier-1 for one job: claims it — still running at `epoch`, its exit
/// unrecorded — by requeueing or failing it in one transaction, and only as
/// the winner stops what is left of that claim's run on this host (a
/// detached run's supervisor, the agent's group; a live worker's late
/// exit, and every effect of its run, is then refused by the epoch check:
/// INV-10). A job of another host or boot ([`crate::fence::Here::owns`])
/// is never stopped: its old run is fenced, not killed. Returns what the claim did, or `None` when the job
/// changed meanwhile.
///
/// Errors: database errors.
pub fn recover(
    ctx: &Ctx,
    db: &Db,
    job_id: i64,
    epoch: i64,
    reason: &str,
) -> anyhow::Result<Option<Finalized>> {
    let now = now_ms();
    let claimed = db.write(|tx| match tx.job(job_id)? {
        Some(j)
            if j.status == JobStatus::Running
                && j.epoch == epoch
                && j.exit_recorded_at_ms.is_none() =>
        {
            let out = jobs::retry_or_fail(
                tx,
                ctx.policy(),
                &ctx.settings,
                &j,
                reason,
                Actor::Reaper,
                now,
            )?;
            Ok(Some((j, out)))
        }
        _ => Ok(None),
    })?;
    let Some((old, out)) = claimed else {
        return Ok(None);
    };
    if out != Finalized::Lost && crate::fence::owned_here(&old) {
        stop_run(ctx, &old);
    }
    if let Finalized::Retrying { run, .. } = out {
        discard_killed_edits(ctx, db, &old, run);
    }
    Ok(Some(out))
}

/// Stops what is left of job `j`'s run: a detached run's supervisor (its
/// group, checked against the recorded start time), the agent's process
/// group, and a run's transient unit (`jobs.runner` `systemd`). The agent's leader usually died with its worker or
/// supervisor (PDEATHSIG), but its children survive in the group; Linux
/// does not hand out a pid that is still some group's id, so a live group
/// `agent_pid` is still the group we started. Returns whether anything
/// was signalled.
pub fn stop_run(ctx: &Ctx, j: &Job) -> bool {
    let grace = Duration::from_secs(ctx.settings.kill_grace_s);
    let agent = match (j.agent_pid, j.agent_start_time) {
        (Some(pid), Some(start)) => Some(Spawned {
            pid: pid as i32,
            start_time: start as u64,
        }),
        // A worker that died starting a detached run recorded no agent:
        // its start record names it.
        _ if is_detached(j) => detached::read_started(&paths(ctx, j)).map(|s| s.agent),
        _ => None,
    };
    let handle = is_detached(j)
        .then(|| detached::handle_of(&paths(ctx, j), j.run_handle.as_deref()))
        .flatten();
    let stopped = detached::stop_by_runner(
        j.id,
        j.epoch,
        j.runner.as_deref(),
        handle.as_deref(),
        agent,
        grace,
    );
    if stopped {
        warn!(target: "reap", job = j.id, pgid = ?j.agent_pid, "stopped what was left of the run (supervisor, agent process group)");
    }
    stopped
}

/// After a requeue: resets the task's worktree to its branch head and
/// cleans it, so the killed run's half-done edits never reach a commit
/// (the next attempt resets it too, before its agent starts). Skipped when
/// a worker already claimed `next_attempt`. Best effort: a failure is
/// logged, the worker's own reset still holds.
fn discard_killed_edits(ctx: &Ctx, db: &Db, old: &Job, next_attempt: i64) {
    let result = (|| -> anyhow::Result<bool> {
        let still_queued = db
            .job(old.id)?
            .is_some_and(|j| j.status == JobStatus::Queued && j.attempt == next_attempt);
        let Some(task) = db.task(old.task_id)? else {
            return Ok(false);
        };
        let worktree = std::path::Path::new(&task.worktree);
        if !still_queued || !worktree.exists() {
            return Ok(false);
        }
        // The old run may still live (another host's, a stopped worker):
        // its worktree is its own until its run lock is free; the next
        // claim gets a worktree of its own meanwhile.
        if !crate::fence::is_free(&ctx.settings, worktree)? {
            return Ok(false);
        }
        let repo = ctx.repo(ctx.project(&task.project)?);
        repo.discard_changes(worktree)
            .context("resetting the worktree")?;
        Ok(true)
    })();
    match result {
        Ok(true) => {
            info!(target: "reap", job = old.id, "worktree reset to the branch head and cleaned")
        }
        Ok(false) => {}
        Err(e) => {
            warn!(target: "reap", job = old.id, error = %format!("{e:#}"), "could not reset the worktree; the next attempt resets it")
        }
    }
}
