//! `orch tick`: one tick for cron users — ingest, reap, reconcile, the
//! local forge's CI step and deliver, each under its own tick lock (a busy
//! step is skipped, not fatal), then jobs while any is runnable, then the
//! merge line (and the jobs its landings enqueued), then the deliveries
//! those wrote. Returns what each step did as one serialisable
//! [`TickReport`].

use serde::{Serialize, Serializer};
use tracing::warn;

use crate::ci::{self, CiPass};
use crate::ctx::Ctx;
use crate::db::Db;
use crate::deliver::{self, DeliverSummary};
use crate::error::{exit, exit_code_for};
use crate::ingest::{self, IngestSummary};
use crate::reap;
use crate::reconcile;
use crate::worker::{self, WorkOutcome};

/// What one step of a tick did: it ran (with its report), or its lock was
/// held by another process and it was skipped. Serialises as the report,
/// or as the string `"busy"`.
#[derive(Debug, Clone)]
pub enum Step<T> {
    Ran(T),
    Busy,
}

impl<T: Serialize> Serialize for Step<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Step::Ran(t) => t.serialize(s),
            Step::Busy => s.serialize_str("busy"),
        }
    }
}

/// What the reap step did (the shape of `orch reap --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Reaped {
    /// True in `tick --dry-run` (then `actions` is the plan, each result
    /// "would run").
    pub dry_run: bool,
    pub actions: Vec<reap::Done>,
}

/// What a tick did, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct TickReport {
    pub ingest: Step<IngestSummary>,
    pub reap: Step<Reaped>,
    pub reconcile: Step<reconcile::Pass>,
    /// The local forge's CI step (`orch ci`).
    pub ci: Step<CiPass>,
    pub deliver: Step<DeliverSummary>,
    /// The jobs that ran, in order (at most `max_jobs`).
    pub work: Vec<WorkOutcome>,
    /// The merge line, per project with tasks ready to merge.
    pub merge_line: Step<Vec<crate::merge_gate::LineReport>>,
}

/// Runs `f` under tick lock `name`; a lock held elsewhere skips it. In
/// a dry run a lease is only looked at ([`Ctx::tick_lock_for`]).
fn step<T>(
    ctx: &Ctx,
    name: &str,
    dry_run: bool,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<Step<T>> {
    let lock = match ctx.tick_lock_for(name, dry_run) {
        Ok(l) => l,
        Err(e) if exit_code_for(&e) == exit::BUSY => return Ok(Step::Busy),
        Err(e) => return Err(e),
    };
    let out = f()?;
    drop(lock);
    Ok(Step::Ran(out))
}

/// Runs one tick: ingest (up to 1000 deliveries), reap, reconcile, deliver
/// (up to 1000 messages), then up to `max_jobs` jobs while one is runnable
/// and the concurrency limit allows — when none is, the CI step
/// ([`ci::run`]: the test command on every development head that waits
/// for it; nothing runs in a dry run), and the jobs again while it moved a
/// task. When any job ran, one more delivery pass follows (skipped when
/// another deliver holds its lock; a failure is logged, the next tick
/// retries).
///
/// Assumptions: no tick lock is held by the caller.
/// Errors: a step's error ends the tick (database, git, tracker errors as
/// the step reports them); a busy lock does not.
pub fn run(ctx: &Ctx, max_jobs: u32, dry_run: bool) -> anyhow::Result<TickReport> {
    let db = ctx.open_db()?;
    if dry_run {
        // The same steps, every write a savepoint of one rolled-back
        // transaction; the reaper and deliver only plan, no agent runs.
        return db.rehearse_all(|db| steps(ctx, db, max_jobs, true));
    }
    db.mark_host_seen(crate::clock::now_ms())?;
    steps(ctx, &db, max_jobs, false)
}

/// The CI passes of one tick as one report: their runs in order; busy
/// only when no pass ran.
fn merge_ci(before: Option<Step<CiPass>>, pass: Step<CiPass>) -> Step<CiPass> {
    match (before, pass) {
        (Some(Step::Ran(mut a)), Step::Ran(b)) => {
            a.runs.extend(b.runs);
            Step::Ran(a)
        }
        (Some(Step::Ran(a)), Step::Busy) => Step::Ran(a),
        (_, pass) => pass,
    }
}

fn steps(ctx: &Ctx, db: &Db, max_jobs: u32, dry_run: bool) -> anyhow::Result<TickReport> {
    let ingest = step(ctx, "ingest", dry_run, || {
        ingest::ingest_pending(ctx, db, 1000)
    })?;
    let reap = step(ctx, "reap", dry_run, || {
        let plan = reap::plan(ctx, db, crate::clock::now_ms())?;
        let actions = if dry_run {
            plan.into_iter()
                .map(|action| reap::Done {
                    action,
                    result: "would run".into(),
                })
                .collect()
        } else {
            reap::execute(ctx, db, plan)?
        };
        Ok(Reaped { dry_run, actions })
    })?;
    let reconcile = step(ctx, "reconcile", dry_run, || {
        reconcile::run(ctx, db, dry_run)
    })?;
    let deliver = step(ctx, "deliver", dry_run, || {
        deliver::deliver_due(ctx, db, 1000)
    })?;
    let mut work = Vec::new();
    let mut ci: Option<Step<CiPass>> = None;
    let work_some =
        |work: &mut Vec<WorkOutcome>, ci: &mut Option<Step<CiPass>>| -> anyhow::Result<()> {
            while work.len() < max_jobs as usize {
                // A worker asked to stop claims nothing more.
                if crate::process::stop_signal().is_some() {
                    break;
                }
                match worker::work_once(ctx, db, None, None)? {
                    WorkOutcome::Idle => {
                        // No job is runnable: the development heads that wait
                        // for the local forge's CI get it now, and a task it
                        // moves has its next job in this tick.
                        let pass = step(ctx, "ci", dry_run, || ci::run(ctx, db, None, dry_run))?;
                        let moved = matches!(&pass, Step::Ran(p) if p.runs.iter().any(|r| r.moved));
                        *ci = Some(merge_ci(ci.take(), pass));
                        if !moved {
                            break;
                        }
                    }
                    ran => work.push(ran),
                }
            }
            Ok(())
        };
    work_some(&mut work, &mut ci)?;
    let merge_line = step(ctx, "merge-line", dry_run, || {
        crate::merge_gate::run_line(ctx, db, None, dry_run)
    })?;
    if let Step::Ran(reports) = &merge_line {
        if reports
            .iter()
            .any(|r| r.batches.iter().any(|b| !b.landed.is_empty()))
        {
            // The deploy jobs the landings enqueued.
            work_some(&mut work, &mut ci)?;
        }
    }
    let ci = match ci {
        Some(ci) => ci,
        // The job cap ended the loop: CI still gets its pass.
        None => step(ctx, "ci", dry_run, || ci::run(ctx, db, None, dry_run))?,
    };
    if !work.is_empty() && !dry_run {
        // Deliver what the jobs just wrote; busy means another deliver runs.
        if let Ok(_lock) = ctx.tick_lock("deliver") {
            if let Err(e) = deliver::deliver_due(ctx, db, 1000) {
                warn!(target: "deliver", error = %format!("{e:#}"), "delivery after the jobs failed; the next tick retries");
            }
        }
    }
    Ok(TickReport {
        ingest,
        reap,
        reconcile,
        ci,
        deliver,
        work,
        merge_line,
    })
}
