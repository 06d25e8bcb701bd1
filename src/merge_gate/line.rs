//! The merge line (`orch merge-gate` without `--task`, part of `orch tick`
//! and its own timer; DESIGN §7): lands the tasks a deployer PASS made
//! ready to merge, in batches.
//!
//! First, where the project has `[projects.staging]`, the staging step
//! ([`crate::staging::check_awaiting`], no lease): each task awaiting the
//! staging check of its deployer-passed revision gets it, and a PASS makes
//! it ready.
//!
//! Then one round, per repository, under its merge lease (holder
//! [`line_holder`] while the line works):
//!
//! 1. **choose**: a batch a crash left (`batched` rows, same order), else
//!    one `split` task alone, else the first `k` ready tasks, `k` the
//!    backlog clamped to `ORCH_MERGE_LINE_BATCH_MIN..=MAX`;
//! 2. **build** `main + T1 … Tk`: each task branch is rebased onto the tip
//!    of those ahead of it (the first onto origin's main) and pushed, so
//!    `Tk`'s head is the batch tip. A task that conflicts with those ahead
//!    of it leaves the batch and goes back to development with the files
//!    (the conflict handoff); the rest continue;
//! 3. **test** the tip once, confined, never reusing a stored result;
//! 4. red → **bisect**: prefixes `main + T1 … Tm` are tested (each one is
//!    a task's head, already built: the halves are tested on top of the
//!    parts before them) until the first red prefix is found, at most
//!    `ORCH_MERGE_LINE_MAX_SPLITS` runs. No task is blamed on one red run
//!    (the flaky guard, `ORCH_MERGE_LINE_RETRY_RED`, counted): when only
//!    the tip was red, it runs once more, and green lands the batch. The
//!    green prefix lands, the culprit goes back to development with the
//!    failing log, the tasks after it go back to ready (the next round
//!    rebuilds them without it). Out of runs: the suspects go through the
//!    line alone (`split`);
//! 5. **fast-forward** main to the tested tip ([`merge_into_default`]: a
//!    non-forced push, or Gitea's merge of the tip task's PR naming the
//!    tested head); main moved meanwhile → the batch is rebuilt next round;
//! 6. **apply**: in one transaction every landed task moves deploy-staging
//!    → deploy through `pipeline::apply`, and its row becomes `landed`; the
//!    lease passes to the last landed task, whose move hands it to its
//!    deploy job (merges and deploys of a repo stay serialised). On Gitea
//!    the same transaction queues, for every landed task but the tip, an
//!    outbox message marking its PR merged (`manually-merged`, naming the
//!    commit main holds after step 5); `orch deliver` sends it.
//!
//! Crash safety: every step is idempotent and the batch is in the store
//! before it is built. A rerun finds the `batched` rows, rebuilds (rebases
//! that already happened are up to date), tests again (a pass is never
//! reused) and fast-forwards (`AlreadyMerged` when it had), then applies.
//! Main only ever moves to a tip that this run tested.

use std::path::Path;

use serde::Serialize;
use tracing::{info, warn};

use super::lease::{busy_reason, lease_name, took_lease};
use super::steps::{merge_into_default, retest, short, sync_branch, Steps};
use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, LeaseAcquire, LineRow, Task};
use crate::failpoint::failpoint;
use crate::forge::Forge;
use crate::git::{validate_task_branch, FastForward, RebaseOutcome, Repo};
use crate::outbox::{self, ForgeMessage, MarkMerged, Message, Occasion};
use crate::pipeline::foreign::{self, OnOrigin};
use crate::pipeline::lease::holder;
pub use crate::pipeline::lease::line_holder;
use crate::pipeline::{self, Actor, Move, Moved, Stage, TransitionCause};

/// What a ready task's deployer job says when it finishes
/// (`Finalized::Waiting`'s reason).
pub const READY: &str = "ready to merge; the merge line lands it (orch merge-gate)";

/// What a deployer job says when its task awaits the staging check of
/// revision `rev` (`Finalized::Waiting`'s reason).
pub fn awaiting_staging(rev: &str) -> String {
    format!("awaiting the staging check of {rev}; the merge line runs it (orch merge-gate)")
}

/// What the line did for one project (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct LineReport {
    pub project: String,
    pub dry_run: bool,
    /// The merge lease used (`None`: the project merges without one).
    pub lease: Option<String>,
    /// Set when the lease was busy and the line stopped for now.
    pub busy: Option<String>,
    /// The batches it ran, in order.
    pub batches: Vec<BatchReport>,
    /// One line per step, in order.
    pub steps: Vec<String>,
    /// Set when this project's line failed (git, the forge, the store):
    /// what went wrong. The other projects' lines still ran; the next run
    /// starts again from the recorded rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One batch: its tasks in order and what became of each.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchReport {
    /// `None` in a dry run.
    pub batch_id: Option<i64>,
    pub tasks: Vec<i64>,
    /// Tasks that moved to deploy; main is at `tip`.
    pub landed: Vec<i64>,
    pub tip: Option<String>,
    /// Tasks sent back to development: `(task, reason)`.
    pub sent_back: Vec<(i64, String)>,
    /// Tasks back in the line (after a culprit, or main moved).
    pub requeued: Vec<i64>,
    /// Tasks taken out because their branch is not what was validated
    /// (someone else pushed to it, DESIGN §7): back to deploy-staging, or
    /// escalated for a rewritten branch — `(task, reason)`.
    pub taken_out: Vec<(i64, String)>,
    /// Test runs of the batch (tip, flaky retry, bisection).
    pub tests: u32,
    pub flaky_retries: u32,
    pub splits: u32,
}

/// Runs the line for every project (or `project` only): first the staging
/// step (tasks awaiting the staging check), then, where tasks are ready,
/// the batches. A project whose lease is busy is reported busy and skipped.
///
/// Errors: [`crate::error::Error::Usage`] for an unknown project. A
/// project's own failure — git, process and database errors (the lease is
/// released first; the batch stays in the store and the next run
/// continues it), a `merge_style` whose merge is not the tested tip
/// ([`Forge::lands_tested_tip`]: nothing is built) — is its report's
/// `error`.
pub fn run_line(
    ctx: &Ctx,
    db: &Db,
    project: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Vec<LineReport>> {
    let projects: Vec<&ProjectConfig> = match project {
        Some(p) => vec![ctx.project(p)?],
        None => ctx.config.projects.iter().collect(),
    };
    let mut out = Vec::new();
    for p in projects {
        // One project's failure (its origin unreachable, a branch orch
        // refuses to overwrite, …) must not stop the other projects' lines.
        let report = line_of(ctx, db, p, dry_run).unwrap_or_else(|e| {
            let error = format!("{e:#}");
            warn!(target: "merge", project = %p.name, error = %error, "merge line failed for this project; the next run continues it");
            Some(LineReport {
                project: p.name.clone(),
                dry_run,
                lease: None,
                busy: None,
                batches: Vec::new(),
                steps: Vec::new(),
                error: Some(error),
            })
        });
        out.extend(report);
    }
    Ok(out)
}

/// The staging checks and then the line of project `p`; `None` when it
/// had nothing to do.
fn line_of(
    ctx: &Ctx,
    db: &Db,
    p: &ProjectConfig,
    dry_run: bool,
) -> anyhow::Result<Option<LineReport>> {
    let staged = crate::staging::check_awaiting(ctx, db, p, dry_run)?;
    if db.line_waiting(Some(&p.name))?.is_empty() {
        return Ok((!staged.is_empty()).then(|| LineReport {
            project: p.name.clone(),
            dry_run,
            lease: None,
            busy: None,
            batches: Vec::new(),
            steps: staged,
            error: None,
        }));
    }
    // A merge style whose result is not the tested tip lands nothing.
    Forge::for_project(ctx, p).lands_tested_tip(p)?;
    let mut report = if dry_run {
        plan(ctx, db, p)?
    } else {
        run_project(ctx, db, p)?
    };
    report.steps.splice(0..0, staged);
    Ok(Some(report))
}

/// The batch size for a backlog of `ready` tasks.
pub fn batch_size(ctx: &Ctx, ready: usize) -> usize {
    let s = &ctx.settings;
    (ready as u32)
        .clamp(s.merge_line_batch_min, s.merge_line_batch_max)
        .min(ready as u32) as usize
}

/// The next batch from `waiting` (line order, non-empty).
fn choose(ctx: &Ctx, waiting: &[LineRow]) -> Vec<LineRow> {
    let first = &waiting[0];
    match first.state.as_str() {
        "batched" => waiting
            .iter()
            .take_while(|r| r.state == "batched" && r.batch_id == first.batch_id)
            .cloned()
            .collect(),
        "split" => vec![first.clone()],
        _ => {
            let ready: Vec<&LineRow> = waiting.iter().filter(|r| r.state == "ready").collect();
            let k = batch_size(ctx, ready.len());
            ready.into_iter().take(k).cloned().collect()
        }
    }
}

/// `--dry-run`: the next batch and what a run would do with it.
fn plan(ctx: &Ctx, db: &Db, project: &ProjectConfig) -> anyhow::Result<LineReport> {
    let waiting = db.line_waiting(Some(&project.name))?;
    let batch = choose(ctx, &waiting);
    let lease = lease_name(ctx, project);
    let mut steps = Steps::new(batch[0].task_id, true);
    let ids: Vec<i64> = batch.iter().map(|r| r.task_id).collect();
    if let Some(name) = &lease {
        match db.lease(name)? {
            Some(l) if l.holder != line_holder() => {
                steps.push(format!("would wait: {}", busy_reason(&l)));
            }
            _ => steps.push(format!(
                "would take lease {name} (holder {})",
                line_holder()
            )),
        }
    }
    steps.push(format!(
        "would build {} + tasks {} ({} of {} waiting), rebasing each onto the tip before it",
        project.default_branch,
        join(&ids),
        ids.len(),
        waiting.len()
    ));
    steps.push(format!(
        "would run the test command {:?} once on the batch tip; red: bisect (at most {} runs), send the culprit back, land the rest",
        project.test_command, ctx.settings.merge_line_max_splits
    ));
    steps.push(format!(
        "would fast-forward {} to the tested tip and move every landed task deploy-staging → deploy",
        project.default_branch
    ));
    Ok(LineReport {
        project: project.name.clone(),
        dry_run: true,
        lease,
        busy: None,
        batches: vec![BatchReport {
            tasks: ids,
            ..BatchReport::default()
        }],
        steps: steps.list,
        error: None,
    })
}

fn join(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn run_project(ctx: &Ctx, db: &Db, project: &ProjectConfig) -> anyhow::Result<LineReport> {
    let repo = ctx.repo(project);
    let lease = lease_name(ctx, project);
    let mut report = LineReport {
        project: project.name.clone(),
        dry_run: false,
        lease: lease.clone(),
        busy: None,
        batches: Vec::new(),
        steps: Vec::new(),
        error: None,
    };
    let first = db.line_waiting(Some(&project.name))?.len();
    // Every round lands, sends back or splits at least one task, or stops;
    // main moving under a round is the only repeat, bounded here.
    let mut moving = 0;
    for _ in 0..(2 * first + 3) {
        let waiting = db.line_waiting(Some(&project.name))?;
        if waiting.is_empty() {
            break;
        }
        let rows = choose(ctx, &waiting);
        let mut steps = Steps::new(rows[0].task_id, false);
        if let Some(name) = &lease {
            let ttl_ms = ctx.settings.merge_gate_lease_ttl_s as i64 * 1000;
            let now = now_ms();
            match db.write(|tx| tx.acquire_lease(name, &line_holder(), None, now, ttl_ms))? {
                LeaseAcquire::Acquired(l) => steps.push(took_lease(&l)),
                LeaseAcquire::Busy(l) => {
                    let why = busy_reason(&l);
                    info!(target: "merge", project = %project.name, "merge line waits: {why}");
                    report.busy = Some(why);
                    break;
                }
            }
        }
        let out = round(ctx, db, project, &repo, lease.as_deref(), &rows, &mut steps);
        report.steps.append(&mut steps.list);
        if let Some(name) = &lease {
            // After a landing the lease went to the deploy job; otherwise
            // the line gives it back between rounds.
            db.write(|tx| tx.release_lease(name, &line_holder()))?;
        }
        let batch = out?;
        let main_moved = batch.landed.is_empty()
            && batch.sent_back.is_empty()
            && batch.splits == 0
            && !batch.requeued.is_empty();
        report.batches.push(batch);
        if main_moved {
            moving += 1;
            if moving >= 3 {
                report.steps.push(format!(
                    "{} kept moving; the line stops for now",
                    project.default_branch
                ));
                break;
            }
        }
    }
    Ok(report)
}

/// A built task: its row, the task, and its head after the rebase.
struct Built {
    task: Task,
    head: String,
}

/// One round for batch `rows`: choose → build → test → (bisect) →
/// fast-forward → apply. The caller holds the lease as [`line_holder`].
fn round(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    lease: Option<&str>,
    rows: &[LineRow],
    steps: &mut Steps,
) -> anyhow::Result<BatchReport> {
    let default = project.default_branch.as_str();
    let now = now_ms();
    let ids: Vec<i64> = rows.iter().map(|r| r.task_id).collect();
    let batch_id = match (rows[0].state.as_str(), rows[0].batch_id) {
        ("batched", Some(id)) => {
            steps.push(format!("batch {id} (tasks {}) continues", join(&ids)));
            id
        }
        _ => {
            let id = db.write(|tx| {
                let id = tx.line_open_batch(&project.name, rows.len() as i64, now)?;
                for (i, r) in rows.iter().enumerate() {
                    tx.line_put_in_batch(r.task_id, id, i as i64 + 1, now)?;
                }
                Ok(id)
            })?;
            steps.push(format!("batch {id}: tasks {} in this order", join(&ids)));
            id
        }
    };
    let mut rep = BatchReport {
        batch_id: Some(batch_id),
        tasks: ids,
        ..BatchReport::default()
    };

    // Build main + T1 … Tk.
    let main = repo
        .remote_branch_sha(default)?
        .ok_or_else(|| anyhow::anyhow!("origin has no default branch {default:?}"))?;
    steps.push(format!("fetched origin: {default} at {}", short(&main)));
    let mut tip = main.clone();
    let mut built: Vec<Built> = Vec::new();
    for r in rows {
        let Some(task) = db.task(r.task_id)? else {
            continue;
        };
        if let Err(e) = validate_task_branch(&task.branch, &repo.branch_prefix, default) {
            send_back(ctx, db, &task, &format!("merge line: {e}"), None, &mut rep)?;
            continue;
        }
        match build_one(db, repo, default, &task, r, &tip, steps) {
            Ok(Build::Head(head)) => {
                tip = head.clone();
                built.push(Built { task, head });
            }
            Ok(Build::Conflict(reason)) => send_back(ctx, db, &task, &reason, None, &mut rep)?,
            // Someone else pushed to the branch: out of the line (one rule,
            // `foreign`), the rest of the batch goes on.
            Ok(Build::Foreign(on)) => {
                if let Some((reason, moved)) =
                    foreign::take_out(ctx.policy(), db, repo, &task, &on, "merge line")?
                {
                    steps.push(format!("task {}: {reason}; out of the batch", task.id));
                    taken_out(db, &mut rep, task.id, reason, moved)?;
                }
            }
            Ok(Build::NotValidated(reason)) => {
                steps.push(format!("task {}: {reason}; out of the batch", task.id));
                let moved = foreign::restage(ctx.policy(), db, &task, &reason)?;
                taken_out(db, &mut rep, task.id, reason, moved)?;
            }
            // One task's worktree that can never be used (its git metadata
            // changed, …) must not hold up the line: it goes back.
            Err(e) if crate::error::is_permanent(&e) => {
                let reason = format!("merge line: {e:#}");
                steps.push(format!("task {}: {reason}; out of the batch", task.id));
                send_back(ctx, db, &task, &reason, None, &mut rep)?;
            }
            Err(e) => return Err(e),
        }
    }
    failpoint("merge_line.after_build");
    if built.is_empty() {
        db.write(|tx| tx.line_finish_batch(batch_id, "done", None, 0, now_ms()))?;
        return Ok(rep);
    }

    // Test the tip; red → once more, then bisect the prefixes.
    let n = built.len();
    let (green, log) = test(ctx, db, project, repo, &built[n - 1], &mut rep, steps)?;
    let mut red_log = log;
    let mut good = n;
    if !green {
        // Bisect. Invariant: prefix `lo` is green (0 is main), prefix `hi`
        // red; `reds` counts the red runs that contain prefix `hi`.
        let (mut lo, mut hi, mut reds) = (0usize, n, 1u32);
        while hi - lo > 1 && rep.splits < ctx.settings.merge_line_max_splits {
            let mid = (lo + hi) / 2;
            rep.splits += 1;
            db.write(|tx| tx.bump_counter("merge_line.splits_total", 1))?;
            steps.push(format!(
                "split: testing tasks {} on {default} (the prefix up to task {})",
                join(&built[..mid].iter().map(|b| b.task.id).collect::<Vec<_>>()),
                built[mid - 1].task.id
            ));
            let (g, log) = test(ctx, db, project, repo, &built[mid - 1], &mut rep, steps)?;
            if g {
                lo = mid;
            } else {
                hi = mid;
                reds += 1;
                red_log = log;
            }
        }
        // The flaky guard: no task is blamed on one red run. When only the
        // tip was red (the culprit is its last task), it runs once more.
        let mut flaky = false;
        if hi - lo == 1 && reds == 1 && ctx.settings.merge_line_retry_red {
            rep.flaky_retries += 1;
            db.write(|tx| tx.bump_counter("merge_line.flaky_retries_total", 1))?;
            steps.push(format!(
                "tip {} red once: run once more before blame",
                short(&built[hi - 1].head)
            ));
            let (again, log) = test(ctx, db, project, repo, &built[hi - 1], &mut rep, steps)?;
            if again {
                db.write(|tx| tx.bump_counter("merge_line.flaky_passes_total", 1))?;
                steps.push("green the second time: flaky, not blamed".into());
                flaky = true;
            } else {
                red_log = log;
            }
        }
        if !flaky {
            good = lo;
            let now = now_ms();
            if hi - lo == 1 {
                let culprit = &built[hi - 1];
                let reason = format!(
                    "merge line: tests fail on the combined tree {} ({} on top of {default} and the tasks ahead of it in batch {batch_id}); log {}",
                    short(&culprit.head),
                    culprit.task.branch,
                    red_log.display()
                );
                send_back(ctx, db, &culprit.task, &reason, Some(&red_log), &mut rep)?;
                let rest: Vec<i64> = built[hi..].iter().map(|b| b.task.id).collect();
                db.write(|tx| {
                    for id in &rest {
                        tx.line_set(*id, "ready", None, now)?;
                    }
                    Ok(())
                })?;
                rep.requeued.extend(rest);
            } else {
                let split: Vec<i64> = built[lo..hi].iter().map(|b| b.task.id).collect();
                let rest: Vec<i64> = built[hi..].iter().map(|b| b.task.id).collect();
                steps.push(format!(
                    "out of splits (ORCH_MERGE_LINE_MAX_SPLITS): tasks {} go through the line alone",
                    join(&split)
                ));
                db.write(|tx| {
                    for id in &split {
                        tx.line_set(*id, "split", Some("its batch was red; it goes alone"), now)?;
                    }
                    for id in &rest {
                        tx.line_set(*id, "ready", None, now)?;
                    }
                    Ok(())
                })?;
                rep.requeued.extend(split);
                rep.requeued.extend(rest);
            }
        }
    }
    failpoint("merge_line.after_test");
    if good == 0 {
        let tests = rep.tests as i64;
        db.write(|tx| tx.line_finish_batch(batch_id, "split", None, tests, now_ms()))?;
        return Ok(rep);
    }

    // Fast-forward main to the tested tip, then apply.
    let last = &built[good - 1];
    let main_now = match merge_into_default(ctx, project, repo, &last.task)? {
        FastForward::Merged { sha } => {
            steps.push(format!("fast-forwarded {default} to {}", short(&sha)));
            Some(sha)
        }
        FastForward::AlreadyMerged => {
            steps.push(format!("{default} already contains {}", short(&last.head)));
            None
        }
        FastForward::NotFastForward => {
            steps.push(format!(
                "{default} moved while the batch was tested; it is rebuilt next round"
            ));
            let ids: Vec<i64> = built[..good].iter().map(|b| b.task.id).collect();
            rep.requeued.extend(ids);
            return Ok(rep);
        }
    };
    failpoint("merge_line.after_fast_forward");
    // On a forge with pull requests only the tip task's PR was merged; the
    // others are marked merged by a commit main holds that contains them.
    let mark = if good > 1 && Forge::for_project(ctx, project).has_pull_requests() {
        match main_now {
            Some(sha) => Some(sha),
            // Merged by an earlier run (a crash before the apply): main
            // only moves forward, so its head now contains the batch.
            None => Some(
                repo.remote_branch_sha(default)?
                    .ok_or_else(|| anyhow::anyhow!("origin has no default branch {default:?}"))?,
            ),
        }
    } else {
        None
    };
    let landing = Landing {
        lease,
        batch_id,
        mark_merged_by: mark.as_deref(),
    };
    apply_landed(ctx, db, &landing, &built[..good], &mut rep, steps)?;
    let state = if good == n { "landed" } else { "split" };
    let tests = rep.tests as i64;
    let tip = last.head.clone();
    db.write(|tx| tx.line_finish_batch(batch_id, state, Some(&tip), tests, now_ms()))?;
    Ok(rep)
}

/// Counts task `id` taken out of its batch (`reason`), unless its move
/// was lost to another actor.
fn taken_out(
    db: &Db,
    rep: &mut BatchReport,
    id: i64,
    reason: String,
    moved: Moved,
) -> anyhow::Result<()> {
    if moved != Moved::Lost {
        db.write(|tx| tx.bump_counter("merge_line.taken_out_total", 1))?;
        rep.taken_out.push((id, reason));
    }
    Ok(())
}

/// How [`build_one`] ended for a task.
enum Build {
    /// Built: the branch's head, the batch's new tip.
    Head(String),
    /// It conflicts with the tasks ahead: back to development, this reason.
    Conflict(String),
    /// Origin's branch holds commits someone else pushed
    /// ([`foreign::take_out`]).
    Foreign(OnOrigin),
    /// The worktree's head is neither the revision validated before the
    /// line nor the line's rebase of it: deploy-staging again, this reason.
    NotValidated(String),
}

/// Builds `task` (row `r`) on `tip`: checks that origin's branch is orch's
/// own ([`foreign::on_origin`]) and that the branch's head is the
/// revision validated before the line or the line's own rebase of it
/// ([`is_validated`]; the first build records `validated` when staging
/// did not), then rebases it onto `tip` (shedding what it was last built
/// on), records the base and the new head, pushes the branch.
fn build_one(
    db: &Db,
    repo: &Repo,
    default: &str,
    task: &Task,
    r: &LineRow,
    tip: &str,
    steps: &mut Steps,
) -> anyhow::Result<Build> {
    let worktree = Path::new(&task.worktree);
    repo.ensure_worktree(worktree, &task.branch)?;
    let mut before = repo.head_sha(worktree)?;
    let pushed = repo.remote_branch_sha(&task.branch)?;
    // On a store shared by hosts the line's last build of this task may
    // have run on another host: origin then holds that build (the row's
    // `built`, or the validated revision), and this host's worktree is
    // behind it. It is orch's own, so the worktree takes it, rather than
    // calling it someone else's rewrite.
    if let Some(p) = pushed.as_deref() {
        let ours = r.built.as_deref() == Some(p) || r.validated.as_deref() == Some(p);
        if db.is_shared() && ours && p != before {
            repo.reset_worktree_to(worktree, p)?;
            steps.push(format!(
                "task {}: {} at origin's {} (the line's own build on another host)",
                task.id,
                task.branch,
                short(p)
            ));
            before = p.to_string();
        }
    }
    let validated = match &r.validated {
        Some(v) => v.clone(),
        None => {
            db.write(|tx| tx.line_set_validated(task.id, &before))?;
            before.clone()
        }
    };
    let on = foreign::on_origin(repo, worktree, pushed.as_deref(), &before)?;
    if on != OnOrigin::Ours {
        return Ok(Build::Foreign(on));
    }
    if !is_validated(repo, worktree, &before, &validated, r.built.as_deref())? {
        return Ok(Build::NotValidated(format!(
            "merge line: {} is at {}, neither the revision validated before the line ({}) nor \
             the line's rebase of it; deploy-staging runs again to validate it",
            task.branch,
            short(&before),
            short(&validated)
        )));
    }
    match repo.rebase_onto(worktree, Some((tip, r.base.as_deref())))? {
        RebaseOutcome::Conflict { files } => {
            let files = files.join(", ");
            steps.push(format!(
                "task {}: {} conflicts with {default} + the tasks ahead of it ({}) in {files}; out of the batch",
                task.id,
                task.branch,
                short(tip)
            ));
            return Ok(Build::Conflict(format!(
                "merge line: rebase onto {default} and the tasks ahead of it ({}) conflicts in {files}",
                short(tip)
            )));
        }
        RebaseOutcome::UpToDate => steps.push(format!(
            "task {}: {} contains {}",
            task.id,
            task.branch,
            short(tip)
        )),
        RebaseOutcome::Rebased { new_head } => steps.push(format!(
            "task {}: rebased {} onto {}: {} → {}",
            task.id,
            task.branch,
            short(tip),
            short(&before),
            short(&new_head)
        )),
    }
    // A crash here leaves a rebase neither recorded nor pushed: the rerun
    // finds origin's branch and the validated revision in `ORIG_HEAD`.
    failpoint("merge_line.after_rebase");
    let head = repo.head_sha(worktree)?;
    db.write(|tx| tx.line_set_built(task.id, tip, &head))?;
    sync_branch(
        repo,
        worktree,
        &task.branch,
        pushed.as_deref(),
        &before,
        steps,
    )?;
    Ok(Build::Head(head))
}

/// Whether the worktree's pre-rebase head `before` is what may land: the
/// revision validated before the line, or the head the line's last
/// rebase gave the branch (`built`, a rebase of a validated revision), or
/// — after a crash between a rebase and its record — a rebase of one of
/// them (the worktree's `ORIG_HEAD` is one of them and `before` does not
/// descend from it: a fast-forward onto someone else's commits does).
fn is_validated(
    repo: &Repo,
    worktree: &Path,
    before: &str,
    validated: &str,
    built: Option<&str>,
) -> anyhow::Result<bool> {
    let ours = |sha: &str| sha == validated || Some(sha) == built;
    if ours(before) {
        return Ok(true);
    }
    Ok(match repo.orig_head(worktree)? {
        Some(orig) if ours(&orig) => !repo.is_ancestor(worktree, &orig, before)?,
        _ => false,
    })
}

/// Runs the test command on `b`'s head (the tip of the tasks up to it),
/// never reusing a stored result. Returns whether it passed and its log.
fn test(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    b: &Built,
    rep: &mut BatchReport,
    steps: &mut Steps,
) -> anyhow::Result<(bool, std::path::PathBuf)> {
    rep.tests += 1;
    let (sha, green, log) = retest(ctx, db, project, repo, &b.task, &b.head, None, false, steps)?;
    if sha != b.head {
        anyhow::bail!(
            "task {}'s worktree moved while the line tested it ({} → {})",
            b.task.id,
            short(&b.head),
            short(&sha)
        );
    }
    Ok((green, log))
}

/// What [`apply_landed`] writes beside the moves.
struct Landing<'a> {
    /// The merge lease, passed to the last landed task.
    lease: Option<&'a str>,
    batch_id: i64,
    /// On a forge with pull requests, a commit main holds that contains
    /// the batch: every landed task but the tip gets a
    /// [`MarkMerged`] naming it, queued with its move.
    mark_merged_by: Option<&'a str>,
}

/// Moves every task in `landed` (in batch order) deploy-staging → deploy
/// and marks it landed, in one transaction; the lease passes to the last.
/// In the same transaction every landed task but the tip (whose PR the
/// forge step merged) gets its PR marked merged through the outbox: the
/// message exists exactly when the move does, and `orch deliver` sends it
/// (a repeat is success; a refusal is a dead letter).
fn apply_landed(
    ctx: &Ctx,
    db: &Db,
    landing: &Landing,
    landed: &[Built],
    rep: &mut BatchReport,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let now = now_ms();
    let tip = landed.last().map(|b| b.head.clone()).unwrap_or_default();
    let Landing {
        lease,
        batch_id,
        mark_merged_by,
    } = *landing;
    let moved = db.write(|tx| {
        if let (Some(name), Some(last)) = (lease, landed.last()) {
            tx.transfer_lease(name, &line_holder(), &holder(last.task.id))?;
        }
        let mut moved = Vec::new();
        for b in landed {
            let Some(task) = tx.task(b.task.id)? else {
                continue;
            };
            if task.stage != Stage::DeployStaging || task.version != b.task.version {
                continue;
            }
            let m = Move::new(
                &task,
                Stage::Deploy,
                Actor::Worker,
                TransitionCause::GatePassed,
                format!(
                    "merge line: batch {batch_id} landed; main at the tested tip {} contains {}",
                    short(&tip),
                    short(&b.head)
                ),
            );
            let mut m = m;
            m.cause_job = tx.latest_job_at(&task, Stage::DeployStaging)?.map(|j| j.id);
            if let Moved::Applied { version, .. } = pipeline::apply(tx, ctx.policy(), &m, now)? {
                tx.line_set(task.id, "landed", None, now)?;
                moved.push(task.id);
                let tip_task = landed.last().map(|l| l.task.id) == Some(task.id);
                if let (Some(sha), false) = (mark_merged_by, tip_task) {
                    let mark = MarkMerged {
                        branch: task.branch.clone(),
                        merge_commit: sha.to_string(),
                    };
                    outbox::queue(
                        tx,
                        &Occasion::Transition {
                            task_id: task.id,
                            version,
                        },
                        &Message::Forge(ForgeMessage::MarkMerged(mark)),
                        now,
                    )?;
                }
            }
        }
        if !moved.is_empty() {
            tx.bump_counter("merge_line.landed_total", moved.len() as i64)?;
            tx.bump_counter("merge_line.batches_total", 1)?;
            tx.bump_counter("merge_line.batch_tasks_total", moved.len() as i64)?;
        }
        Ok(moved)
    })?;
    steps.push(format!(
        "tasks {} moved deploy-staging → deploy",
        join(&moved)
    ));
    info!(target: "merge", batch = batch_id, tip = %short(&tip), landed = ?moved, "merge line landed a batch");
    rep.tip = Some(tip);
    rep.landed = moved;
    Ok(())
}

/// Sends `task` back to development (a developer retry) with `reason` and
/// the failing test `log`, marking its line row, in one transaction.
fn send_back(
    ctx: &Ctx,
    db: &Db,
    task: &Task,
    reason: &str,
    log: Option<&Path>,
    rep: &mut BatchReport,
) -> anyhow::Result<()> {
    let now = now_ms();
    let mut m = Move::new(
        task,
        Stage::Development,
        Actor::Worker,
        TransitionCause::GateSentBack,
        reason,
    );
    m.developer_retry = true;
    m.log_path = log.map(Path::to_path_buf);
    let moved = db.write(|tx| {
        let mut m = m.clone();
        m.cause_job = tx.latest_job_at(task, Stage::DeployStaging)?.map(|j| j.id);
        let moved = pipeline::apply(tx, ctx.policy(), &m, now)?;
        tx.line_set(task.id, "sent_back", Some(reason), now)?;
        tx.bump_counter("merge_line.sent_back_total", 1)?;
        Ok(moved)
    })?;
    if moved == Moved::Lost {
        warn!(target: "merge", task = task.id, "task moved meanwhile; not sent back");
    } else {
        warn!(target: "merge", task = task.id, reason, "merge line sent the task back to development");
    }
    rep.sent_back.push((task.id, reason.to_string()));
    Ok(())
}
