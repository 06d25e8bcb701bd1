//! `orch work-once`: claim at most one runnable job, run its agent to the
//! end, record the exit, and finalize it.
//!
//! Job lifecycle (DESIGN §4):
//! `queued → (claim) running → (agent exits) running + exit_code →
//! (finalize) done | failed | queued (retry)`.
//!
//! [`finalize`] is shared with the reaper's Tier-2: every step before the
//! terminal claim (auto-commit, push) is idempotent — check, then act — so a finalize interrupted at any instruction can be
//! run again by whoever comes next; only the terminal claim, a single
//! transaction, decides who advances the task.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::agent::session::Watch;
use crate::clock::now_ms;
use crate::config::AgentRunner;
use crate::ctx::Ctx;
use crate::db::{Db, Job, RunRecord, Task};
use crate::error::is_permanent;
use crate::failpoint::failpoint;
use crate::fence;
use crate::pipeline::job::{self as jobs, Changed, Finalized};
use crate::pipeline::spend;
use crate::pipeline::{self, Actor, JobStatus, Stage};
use crate::process::detached::{self, Paths};
use crate::process::{self, Bind, RunOutcome, RunSpec, Runner};

pub mod adopt;
mod finalize;
mod resume;
pub use finalize::finalize;
use resume::{record_session_seen, resume_refused};

/// How much of the end of an agent's log orch reads for its result JSON,
/// in bytes (a result longer than this reads as no result).
const AGENT_LOG_READ_MAX_BYTES: u64 = 16 << 20;

/// What one `work-once` did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum WorkOutcome {
    /// No job was runnable (or the concurrency limit is reached).
    Idle,
    /// A job ran and was finalized.
    Ran {
        job_id: i64,
        task_id: i64,
        stage: Stage,
        exit_code: i64,
        finalized: Finalized,
    },
    /// This worker was asked to stop (SIGTERM, e.g. `systemctl stop`) while
    /// the job's agent ran: the agent's process group was stopped and the
    /// job requeued at once without counting the attempt, its
    /// `last_error` saying so (`stopped by SIGTERM: …`).
    Stopped {
        job_id: i64,
        task_id: i64,
        stage: Stage,
        /// `SIGTERM` or `SIGINT`.
        signal: String,
    },
    /// This worker was asked to stop (SIGTERM, SIGINT) while it watched a
    /// detached run: it left the run alone, still going (or ended, its
    /// exit record written), for a later tick to adopt (DESIGN §4
    /// "Detached runs"); the job stays running.
    Left {
        job_id: i64,
        task_id: i64,
        stage: Stage,
        /// `SIGTERM` or `SIGINT`.
        signal: String,
    },
    /// `--dry-run`: the job the real run would claim and the argv its
    /// agent would run; nothing was claimed or run.
    WouldRun {
        job_id: i64,
        task_id: i64,
        stage: Stage,
        role: String,
        attempt: i64,
        argv: Vec<String>,
    },
}

impl WorkOutcome {
    /// [`WorkOutcome::Ran`] for `job` (`exit_code` -1: no agent exit).
    fn ran(job: &Job, exit_code: i64, finalized: Finalized) -> WorkOutcome {
        WorkOutcome::Ran {
            job_id: job.id,
            task_id: job.task_id,
            stage: job.stage,
            exit_code,
            finalized,
        }
    }
}

/// Claims and runs at most one job.
///
/// Errors: database errors; failures of the job itself are recorded on the
/// job, not returned.
pub fn work_once(
    ctx: &Ctx,
    db: &Db,
    role: Option<&str>,
    project: Option<&str>,
) -> anyhow::Result<WorkOutcome> {
    if process::stop_signal().is_some() {
        // Asked to stop before the claim: claim nothing.
        return Ok(WorkOutcome::Idle);
    }
    // A detached run whose watcher died is this worker's to finish (or to
    // watch) before it takes new work.
    if !db.is_rehearsal() {
        if let Some(out) = adopt::adopt_one(ctx, db)? {
            return Ok(out);
        }
    }
    let (host, pid, start) = process::identity();
    let now = now_ms();
    let job = db.write(|tx| {
        jobs::claim_next(
            tx,
            &spend::Limits::new(&ctx.settings, &ctx.config),
            role,
            project,
            (&host, pid, start),
            now,
        )
    })?;
    let Some(job) = job else {
        return Ok(WorkOutcome::Idle);
    };
    if db.is_rehearsal() {
        // --dry-run: the claim above is rolled back; nothing is run.
        return Ok(WorkOutcome::WouldRun {
            argv: planned_argv(ctx, db, &job)?,
            job_id: job.id,
            task_id: job.task_id,
            stage: job.stage,
            role: job.role.clone(),
            attempt: job.counted_attempt(),
        });
    }
    info!(target: "worker", job = job.id, task = job.task_id, stage = %job.stage, attempt = job.counted_attempt(), run = job.attempt, "claimed job");
    failpoint("worker.after_claim");
    // The worktree is bound to this claim for the run and its finalize
    // (DESIGN §11 INV-10): the run lock is held until this returns.
    let mut run_lock = None;
    let ran = bind_worktree(ctx, db, &job).and_then(|lock| {
        run_lock = Some(lock);
        run_agent_unless_merge_pending(ctx, db, &job)
    });
    let end = match ran {
        Ok(end) => end,
        Err(e) if stopped_by(&e).is_some() => return stopped_outcome(&job, e),
        Err(e) => {
            // The agent could not even start (clone, fetch, worktree,
            // config): a set-up failure counts as an attempt of the job, so
            // it is retried with backoff and, at the cap — or at once when
            // it cannot succeed — the job fails and the task is escalated.
            let finalized = setup_failed(ctx, db, &job, &e)?;
            return Ok(WorkOutcome::ran(&job, -1, finalized));
        }
    };
    let out = conclude(ctx, db, &job, end);
    drop(run_lock);
    out
}

/// How a run this worker started or watched ended for it.
#[derive(Debug)]
enum RunEnd {
    /// Its exit, run and verdict are recorded: this exit code.
    Recorded(i64),
    /// The job was taken from this worker meanwhile; nothing recorded.
    Lost,
    /// The worker was asked to stop by this signal and left the detached
    /// run for a later tick.
    Left(i32),
    /// The detached run died without an exit record and the job was
    /// recovered (Tier-1) as this says.
    Recovered(Finalized),
}

/// The end of `work-once` for `job` whose run ended as `end`: finalize a
/// recorded run, report the rest.
///
/// Errors: database errors and those of [`finalize`].
fn conclude(ctx: &Ctx, db: &Db, job: &Job, end: RunEnd) -> anyhow::Result<WorkOutcome> {
    let exit_code = match end {
        RunEnd::Recorded(code) => code,
        RunEnd::Lost => {
            warn!(target: "worker", job = job.id, "job was taken from this worker while its agent ran; result discarded");
            // The fence's refusal of this claim's run, when it was refused.
            let refused = db
                .fence_refusals(job.task_id)?
                .into_iter()
                .rfind(|r| r.job_id == job.id && r.epoch == job.epoch);
            let finalized =
                refused.map_or(Finalized::Lost, |r| Finalized::Refused { reason: r.reason });
            return Ok(WorkOutcome::ran(job, -1, finalized));
        }
        RunEnd::Recovered(finalized) => return Ok(WorkOutcome::ran(job, -1, finalized)),
        RunEnd::Left(sig) => {
            return Ok(WorkOutcome::Left {
                job_id: job.id,
                task_id: job.task_id,
                stage: job.stage,
                signal: process::signal_name(sig),
            })
        }
    };
    let finalized = finalize(ctx, db, job.id, job.epoch, Actor::Worker)?;
    if finalized.needs_a_human() {
        warn!(target: "worker", job = job.id, task = job.task_id, exit_code, outcome = %finalized, "finalized job; needs a human");
    } else {
        info!(target: "worker", job = job.id, task = job.task_id, exit_code, outcome = %finalized, "finalized job");
    }
    Ok(WorkOutcome::ran(job, exit_code, finalized))
}

/// [`run_agent`]'s error when the worker was asked to stop by this signal
/// while the agent ran; the job is already requeued.
#[derive(Debug)]
struct Stopped(i32);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", process::signal_name(self.0))
    }
}

impl std::error::Error for Stopped {}

/// The signal that stopped a run, when `e` is [`Stopped`] (the job is
/// requeued already, its attempt not counted).
pub fn stopped_by(e: &anyhow::Error) -> Option<i32> {
    e.downcast_ref::<Stopped>().map(|s| s.0)
}

/// One heartbeat of a detached run's supervisor
/// ([`crate::process::detached::BeatFn`]): opens the store `beat.db` as
/// it is (a binary that replaced this one may have migrated it; the
/// heartbeat's columns stay) and refreshes the heartbeat of claim `epoch`
/// of job `job_id`, guarded by the epoch. Returns whether the claim is
/// still current. Opened per beat (a beat is every `ORCH_HEARTBEAT_S`), so
/// a database that went away and came back is simply used again.
///
/// On PostgreSQL its session's idle-in-transaction timeout is one beat
/// interval (1–60 s), so a supervisor stopped mid-beat (SIGSTOP) holds the
/// write lock no longer than that.
///
/// Errors: no database there; the database's own errors.
pub fn supervisor_heartbeat(
    beat: &process::detached::Beat,
    job_id: i64,
    epoch: i64,
) -> anyhow::Result<bool> {
    let db = Db::open_as_is(Path::new(&beat.db), beat.busy_timeout_ms, true)?;
    db.set_idle_in_transaction_timeout(beat.every_ms.clamp(1_000, 60_000))?;
    db.write(|tx| tx.heartbeat(job_id, epoch, crate::clock::now_ms()))
}

/// [`WorkOutcome::Stopped`] for `job` when `e` is [`Stopped`], else `e`.
fn stopped_outcome(job: &Job, e: anyhow::Error) -> anyhow::Result<WorkOutcome> {
    match stopped_by(&e) {
        Some(sig) => Ok(WorkOutcome::Stopped {
            job_id: job.id,
            task_id: job.task_id,
            stage: job.stage,
            signal: process::signal_name(sig),
        }),
        None => Err(e),
    }
}

/// Records that `who` (`the worker`, or a detached run's supervisor)
/// stopped `job`'s run on signal `sig`: the log says so, and the job goes
/// back to queued, runnable now, without counting the attempt
/// (`How::Free`). Logs the WARN line an operator greps for.
fn record_stopped(db: &Db, job: &Job, sig: i32, log_path: &Path, who: &str) -> anyhow::Result<()> {
    let name = process::signal_name(sig);
    append_to_log(
        log_path,
        &format!("orch: {who} got {name}; agent's process group stopped, job requeued\n"),
    );
    let reason = format!(
        "stopped by {name}: {who} was stopped while the agent ran; requeued, the attempt not counted"
    );
    let now = now_ms();
    let changed = db.write(|tx| {
        jobs::change(
            tx,
            &jobs::JobChange {
                job_id: job.id,
                from: JobStatus::Running,
                to: JobStatus::Queued,
                epoch: Some(job.epoch),
                how: jobs::How::Free {
                    error: &reason,
                    available_at_ms: now,
                },
            },
            now,
        )
    })?;
    warn!(target: "worker", job = job.id, task = job.task_id, stage = %job.stage, attempt = job.attempt, signal = %name, requeued = (changed == Changed::Applied), "stopped by {name}: agent's process group stopped; job requeued without counting the attempt");
    Ok(())
}

/// A deferred merge (`merge_pending`) keeps its agent's result: the claim
/// kept the exit code, and only the merge runs again (in [`finalize`]).
fn run_agent_unless_merge_pending(ctx: &Ctx, db: &Db, job: &Job) -> anyhow::Result<RunEnd> {
    match job.exit_code {
        Some(code) if job.merge_pending => {
            info!(target: "worker", job = job.id, defers = job.merge_defers, "deferred merge: the agent is not run again");
            Ok(RunEnd::Recorded(code))
        }
        _ => run_agent(ctx, db, job),
    }
}

/// Binds the task's worktree to `job`'s claim for its run and finalize
/// (DESIGN §11 INV-10): takes the worktree's run lock
/// ([`fence::try_lock`]). When another run holds it — an older epoch that
/// may still live (a stopped worker, one on a partitioned host) — this
/// claim does not share the worktree: it gets one of its own
/// ([`fence::epoch_worktree`], made from the task branch by
/// [`crate::git::Repo::ensure_worktree_beside`]), which becomes the task's
/// worktree; the old one is left to its holder and removed by the reaper
/// once its lock is free. Returns the lock, held until dropped.
///
/// Errors: the task vanished, or its worktree moved meanwhile; I/O
/// errors taking the lock; database errors.
fn bind_worktree(ctx: &Ctx, db: &Db, job: &Job) -> anyhow::Result<fence::RunLock> {
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    let claim = fence::Claim::of(job);
    let worktree = std::path::absolute(&task.worktree)
        .with_context(|| format!("making {} absolute", task.worktree))?;
    let held_by = match fence::try_lock(&ctx.settings, &worktree, claim)? {
        Ok(lock) => return Ok(lock),
        Err(held_by) => held_by,
    };
    let own = fence::epoch_worktree(&worktree, claim);
    let lock = fence::try_lock(&ctx.settings, &own, claim)?
        .map_err(|h| anyhow::anyhow!("worktree {} is held by {h}", own.display()))?;
    let own_str = own.to_string_lossy();
    if !db.write(|tx| tx.move_task_worktree(task.id, &task.worktree, &own_str))? {
        anyhow::bail!(
            "task {}'s worktree changed while job {} was claimed",
            task.id,
            job.id
        );
    }
    warn!(target: "fence", job = job.id, task = task.id, epoch = job.epoch, held_by = %held_by, old = %worktree.display(), worktree = %own.display(), "the task's worktree is held by another run that may still live; this epoch runs in a worktree of its own");
    Ok(lock)
}

/// Makes sure `worktree` exists on `branch`: a claim's own worktree
/// ([`fence::is_epoch_worktree`]) may share the branch with the stale
/// worktree it replaced.
///
/// Errors: as [`crate::git::Repo::ensure_worktree`].
pub(crate) fn ensure_worktree(
    repo: &crate::git::Repo,
    worktree: &Path,
    branch: &str,
) -> anyhow::Result<()> {
    if fence::is_epoch_worktree(worktree) {
        repo.ensure_worktree_beside(worktree, branch)
    } else {
        repo.ensure_worktree(worktree, branch)
    }
}

/// Per-run file names: `job<id>-a<attempt>.<ext>`.
pub fn run_file(dir: &Path, job: &Job, ext: &str) -> PathBuf {
    dir.join(format!("job{}-a{}.{ext}", job.id, job.attempt))
}

/// Whether `task`'s current version came from the merge gate (or the
/// deployer at deploy-staging) sending it back to development.
fn sent_back_by_merge_gate(db: &Db, task: &Task) -> anyhow::Result<bool> {
    Ok(db
        .transitions(task.id)?
        .into_iter()
        .rev()
        .find(|t| t.version == task.version)
        .is_some_and(|t| {
            t.to_stage == Stage::Development && t.from_stage == Some(Stage::DeployStaging)
        }))
}

/// What `work-once --dry-run` reports for the job it would claim: the
/// argv its agent would run (rendered as the real run renders it).
///
/// Errors: the task vanished; a config error rendering the argv.
pub fn planned_argv(ctx: &Ctx, db: &Db, job: &Job) -> anyhow::Result<Vec<String>> {
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    Ok(brief_of(ctx, db, &task, job, &[])?.argv)
}

/// The brief of `job`'s run of `task` with `notes`: what the run gets and
/// what a dry run reports, rendered by the one [`crate::brief::render`].
fn brief_of(
    ctx: &Ctx,
    db: &Db,
    task: &Task,
    job: &Job,
    notes: &[String],
) -> anyhow::Result<crate::brief::Brief> {
    crate::brief::render(
        ctx,
        db,
        crate::brief::RunOf {
            task,
            stage: job.stage,
            role: &job.role,
            job: Some(job),
        },
        notes,
    )
}

/// Prepares the worktree, runs the agent (as the worker's child or
/// detached, `ORCH_AGENT_RUNNER`), and records its exit, run and verdict
/// in one transaction ([`record_run`]). Returns how the run ended for
/// this worker.
///
/// The worktree is reset to the branch head and cleaned before every
/// attempt after the first, so a killed or failed run's edits never reach
/// a commit. A development run the merge gate sent back starts on a branch
/// that contains origin's current default branch (merged in here; a
/// conflicted merge is left for the agent, its files named in the
/// feedback).
fn run_agent(ctx: &Ctx, db: &Db, job: &Job) -> anyhow::Result<RunEnd> {
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    let project = ctx.project(&task.project)?;
    let repo = ctx.repo(project);
    let worktree = std::path::absolute(&task.worktree)
        .with_context(|| format!("making {} absolute", task.worktree))?;
    repo.sync()?;
    // A worktree whose git metadata an earlier (refused) run changed is
    // re-created from the task branch, never used (DESIGN §11 INV-8).
    if repo.drop_tampered_worktree(&worktree, &task.branch)? {
        warn!(target: "worker", job = job.id, worktree = %worktree.display(), "the worktree's git metadata had been changed; re-created from the task branch");
    }
    ensure_worktree(&repo, &worktree, &task.branch)?;
    // A run starts from what was committed: uncommitted edits are a dead
    // run's (a worker killed mid-run, recovered by Tier-1), and running on
    // top of them would apply the same edit twice.
    repo.discard_changes(&worktree)?;
    // The lease of this claim's push: origin's branch as the run starts
    // from it, as fetched by the sync above (INV-10: a push of another
    // epoch meanwhile refuses ours).
    let claim = fence::Claim::of(job);
    let origin_head = repo.fetched_branch_sha(&task.branch)?;
    // The task's earlier jobs may have run on another host (a store shared
    // by hosts, DESIGN §10): their commits are on origin's branch, not in
    // this host's worktree. The run starts from origin's branch: a
    // fast-forward when the worktree is behind it (nothing here is lost);
    // on a shared store, a reset when another host rewrote the branch (the
    // merge line's rebase) — what this worktree has beyond origin is a
    // dead or refused run's, never pushed.
    if let Some(head) = &origin_head {
        if repo.fast_forward_worktree(&worktree, head)? {
            info!(target: "worker", job = job.id, sha = %head, "worktree moved forward to origin's task branch");
        } else if db.is_shared() && repo.head_sha(&worktree)? != *head {
            warn!(target: "worker", job = job.id, sha = %head, "worktree reset to origin's task branch, which another host rewrote");
            repo.reset_worktree_to(&worktree, head)?;
        }
    }
    let base_sha = repo.head_sha(&worktree)?;
    if !db.write(|tx| tx.set_claim_sha(job.id, job.epoch, origin_head.as_deref()))? {
        return Ok(RunEnd::Lost);
    }
    let mut notes = Vec::new();
    if job.stage == Stage::Development && sent_back_by_merge_gate(db, &task)? {
        match repo.merge_default_in(&worktree)? {
            crate::git::MergeIn::UpToDate => {}
            crate::git::MergeIn::Merged { sha } => {
                info!(target: "worker", job = job.id, sha = %sha, "merged origin's default branch into the task branch");
                notes.push(format!(
                    "orch merged origin/{} into the branch before this run (clean merge, committed).",
                    project.default_branch
                ));
            }
            crate::git::MergeIn::Conflict { files } => {
                info!(target: "worker", job = job.id, files = ?files, "merge of origin's default branch left conflicts for the agent");
                notes.push(format!(
                    "orch merged origin/{} into the branch before this run; the merge is in progress and these files hold conflict markers: {}. Resolve each (keep both sides' intent), remove every marker line; orch concludes the merge when you finish.",
                    project.default_branch,
                    files.join(", ")
                ));
            }
        }
    }

    let mut brief = brief_of(ctx, db, &task, job, &notes)?;
    let agent = ctx.config.agent(&job.role)?;
    let kind = agent.kind;
    let verdict_file = brief.verdict_file.clone();
    std::fs::create_dir_all(&brief.verdict_dir)
        .with_context(|| format!("creating {}", brief.verdict_dir.display()))?;
    let _ = std::fs::remove_file(&verdict_file);
    let log_path = run_file(&ctx.settings.logs_dir(), job, "log");
    let prompt_path = run_file(&ctx.settings.logs_dir(), job, "prompt");
    std::fs::create_dir_all(ctx.settings.logs_dir())?;
    std::fs::write(&prompt_path, &brief.prompt)?;

    let timeout_s = brief.timeout_s;
    let argv = brief.argv.clone();
    let mut spec = RunSpec {
        argv: argv.clone(),
        cwd: worktree.clone(),
        env: brief.env.clone(),
        env_remove_prefix: Some("ORCH_".into()),
        stdin_path: Some(prompt_path.clone()),
        log_path: log_path.clone(),
        timeout: Duration::from_secs(timeout_s),
        kill_grace: Duration::from_secs(ctx.settings.kill_grace_s),
    };
    let how = runner_of(ctx, kind)?;
    let (runner, clone_view) = agent_runner(ctx, &repo, &task, claim, &worktree, &verdict_file)?;
    // The session id is recorded as soon as the CLI prints it, so a run
    // killed with this worker can be resumed by the job's next claim.
    let watch = std::cell::RefCell::new(Watch::from_end(kind, &log_path));
    let mut facts = RunFacts {
        kind,
        argv,
        log_path: log_path.clone(),
        verdict_file,
        timeout_s,
        started_at_ms: now_ms(),
        base_sha: matches!(job.stage, Stage::Architecture | Stage::Development).then_some(base_sha),
        clone_view,
        resumed: brief.previous_session.clone(),
        log_from: watch.borrow().start(),
    };
    // After a resume the CLI refused: the brief again, its session
    // forgotten, for a run in a fresh session within the same claim.
    let rebrief = || -> anyhow::Result<crate::brief::Brief> {
        let brief = brief_of(ctx, db, &task, job, &notes)?;
        std::fs::write(&prompt_path, &brief.prompt)?;
        Ok(brief)
    };
    if how != AgentRunner::Child {
        return run_detached(ctx, db, job, how, &runner, spec, facts, rebrief);
    }
    db.write(|tx| tx.set_job_run(job.id, job.epoch, "child", None))?;
    let mut agent_pid = None;
    let mut on_spawn = |s: &process::Spawned| {
        agent_pid = Some(s.pid as i64);
        db.write(|tx| {
            tx.set_job_agent(
                job.id,
                job.epoch,
                s.pid as i64,
                s.start_time as i64,
                timeout_s as i64,
            )
        })
    };
    let mut heartbeat = beat(ctx, db, job);
    let mut on_tick = || {
        heartbeat()?;
        record_session_seen(db, job, &mut watch.borrow_mut())
    };
    // An ACP agent is talked to, not fed a prompt file, and its result
    // comes from the exchange, never from its log.
    let (outcome, acp) = if kind == crate::config::AgentKind::Acp {
        let req = crate::acp::Request {
            prompt: brief.prompt.clone(),
            worktree: worktree.clone(),
            resume: brief.previous_session.clone(),
            permissions: agent.permissions.unwrap_or_default(),
            auth_method: agent.auth_method.clone(),
        };
        let (out, acp) = crate::acp::run(
            &runner,
            &spec,
            req,
            Duration::from_millis(200),
            on_spawn,
            on_tick,
        )?;
        (out, Some(acp))
    } else {
        let tick = Duration::from_millis(200);
        let mut out = runner.run(&spec, tick, &mut on_spawn, &mut on_tick)?;
        // Each refusal forgets the id it names: this ends, at the latest
        // with a run that resumes nothing.
        while resume_refused(
            db,
            job,
            kind,
            brief.previous_session.as_deref(),
            &log_path,
            watch.borrow().start(),
            &out,
        )? {
            // The same claim runs the agent again, in a fresh session.
            brief = rebrief()?;
            spec.argv = brief.argv.clone();
            facts.argv = brief.argv.clone();
            facts.resumed = brief.previous_session.clone();
            *watch.borrow_mut() = Watch::from_end(kind, &log_path);
            facts.log_from = watch.borrow().start();
            out = runner.run(&spec, tick, &mut on_spawn, &mut on_tick)?;
        }
        (out, None)
    };
    let ended = Ended {
        outcome,
        acp,
        agent_pid,
        runner: "child",
        adopted: false,
    };
    Ok(record_run(ctx, db, job, facts, ended)?.map_or(RunEnd::Lost, RunEnd::Recorded))
}

/// What the end of a run needs to be recorded, known before the agent
/// starts: a detached run's spec carries it ([`detached::Spec::facts`]) to
/// whoever records the run's end — its watcher, or an adopter.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFacts {
    kind: crate::config::AgentKind,
    /// The agent's argv as rendered (not wrapped by the sandbox).
    argv: Vec<String>,
    log_path: PathBuf,
    verdict_file: PathBuf,
    timeout_s: u64,
    /// Wall time before the start, unix ms.
    started_at_ms: i64,
    /// The branch head the run started from (architecture, development).
    base_sha: Option<String>,
    /// The sandboxed agent's view of the clone, applied after the run.
    clone_view: Option<crate::git::CloneView>,
    /// The session the run resumed (`{previous_session}`), against which
    /// a session-total cost is scoped.
    resumed: Option<String>,
    /// Where this run's part of the log begins, in bytes.
    log_from: u64,
}

/// How a run ended, as its runner reports it.
struct Ended {
    outcome: RunOutcome,
    /// An ACP agent's exchange (child runner only).
    acp: Option<crate::acp::Outcome>,
    agent_pid: Option<i64>,
    /// `child`, `supervisor`, `systemd`.
    runner: &'static str,
    /// Recorded by another process than the one that started the run.
    adopted: bool,
}

/// The runner of this run (`ORCH_AGENT_RUNNER`; `auto`: `systemd` where
/// [`process::systemd::probe`] passes, else `supervisor`). An ACP agent is
/// talked to over its stdin and stdout, so it always runs as the worker's
/// child.
///
/// Errors: [`crate::error::Error::Config`] for `systemd` where its probe
/// fails (its reason).
fn runner_of(ctx: &Ctx, kind: crate::config::AgentKind) -> anyhow::Result<AgentRunner> {
    if kind == crate::config::AgentKind::Acp {
        return Ok(AgentRunner::Child);
    }
    match ctx.settings.agent_runner {
        AgentRunner::Auto if process::systemd::probe().is_ok() => Ok(AgentRunner::Systemd),
        AgentRunner::Auto | AgentRunner::Supervisor => Ok(AgentRunner::Supervisor),
        AgentRunner::Child => Ok(AgentRunner::Child),
        AgentRunner::Systemd => match process::systemd::probe() {
            Ok(()) => Ok(AgentRunner::Systemd),
            Err(why) => Err(crate::error::Error::config(
                "ORCH_AGENT_RUNNER",
                format!("systemd: {why}"),
            )
            .into()),
        },
    }
}

/// What a run unit's environment gets from the worker's (the unit starts
/// in its manager's environment, not the worker's): every variable the
/// agent would inherit — not `ORCH_*`, nothing named like a secret
/// (`process::systemd` refuses those: they stay in the spec, 0600), no
/// value with a newline.
fn unit_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, v)| {
            !k.starts_with("ORCH_")
                && !["_SECRET", "_TOKEN", "_KEY", "_PASSWORD"]
                    .iter()
                    .any(|s| k.ends_with(s))
                && k.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !v.contains('\n')
        })
        .collect()
}

/// The per-tick work of a worker while a run goes: the heartbeat at
/// `ORCH_HEARTBEAT_S` (its cadence is this process's own span, the
/// monotonic clock, so a wall clock set back does not stop it).
fn beat<'a>(ctx: &'a Ctx, db: &'a Db, job: &'a Job) -> impl FnMut() -> anyhow::Result<()> + 'a {
    let every = Duration::from_secs(ctx.settings.heartbeat_s);
    let mut last = std::time::Instant::now();
    move || {
        if last.elapsed() >= every {
            last = std::time::Instant::now();
            db.write(|tx| tx.heartbeat(job.id, job.epoch, now_ms()))?;
        }
        Ok(())
    }
}

/// The database target a detached run's supervisor heartbeats through
/// ([`detached::Beat`]): `ORCH_DB` as this process reads it, a PostgreSQL
/// URL as it is, a path made absolute (the supervisor runs in `/`).
fn store_target(ctx: &Ctx) -> String {
    let p = &ctx.settings.db_path;
    if let Some(url) = crate::db::postgres_url(p) {
        return url.to_string();
    }
    std::path::absolute(p)
        .unwrap_or_else(|_| p.clone())
        .to_string_lossy()
        .into_owned()
}

/// How long [`detached::start`] waits for the supervisor's start record.
const DETACHED_START_WAIT: Duration = Duration::from_secs(30);

/// How often a watcher looks for a detached run's exit record (one
/// `stat`): the latency from the agent's exit to its record.
const WATCH_POLL: Duration = Duration::from_millis(50);

/// How often a watcher runs its per-tick work (heartbeat, hooks).
const WATCH_TICK: Duration = Duration::from_millis(200);

/// How often a watcher checks that a detached run's supervisor lives.
const WATCH_ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Starts `spec` (confined by `runner`) detached ([`detached::start`]),
/// records its handle on the job, watches it ([`follow`]) and records its
/// end ([`settle`]). A resume the CLI refused runs again in a fresh
/// session within the same claim (`rebrief` renders it), the refused
/// run's records set aside.
///
/// Errors: the run cannot be started (a set-up failure of the job);
/// database errors; those of [`follow`] and [`settle`].
#[allow(clippy::too_many_arguments)]
fn run_detached(
    ctx: &Ctx,
    db: &Db,
    job: &Job,
    how: AgentRunner,
    runner: &Runner,
    mut spec: RunSpec,
    mut facts: RunFacts,
    rebrief: impl Fn() -> anyhow::Result<crate::brief::Brief>,
) -> anyhow::Result<RunEnd> {
    let paths = Paths::new(&ctx.settings.logs_dir(), job.id, job.epoch);
    // The runner first: a worker that dies while starting the run leaves a
    // job whose run any tick finds (by its files) and judges.
    let runner_name = match how {
        AgentRunner::Systemd => "systemd",
        _ => "supervisor",
    };
    if !db.write(|tx| tx.set_job_run(job.id, job.epoch, runner_name, None))? {
        return Ok(RunEnd::Lost);
    }
    let mut refusals = 0;
    loop {
        let mut watch = Watch::from_end(facts.kind, &facts.log_path);
        facts.log_from = watch.start();
        let dspec = detached::Spec::new(runner.wrapped(&spec)?, job.id, job.epoch, &paths, &facts)
            .with_heartbeat(detached::Beat {
                db: store_target(ctx),
                busy_timeout_ms: ctx.settings.busy_timeout_ms,
                every_ms: ctx.settings.heartbeat_s * 1000,
            });
        let started = if how == AgentRunner::Systemd {
            // The manager stops the unit at the latest well after the
            // supervisor's own timeout and grace.
            let grace = Duration::from_secs(ctx.settings.kill_grace_s);
            let runtime_max = spec.timeout + grace * 2 + Duration::from_secs(60);
            detached::start_unit(&dspec, &paths, unit_env(), runtime_max, DETACHED_START_WAIT)?
        } else {
            detached::start(&dspec, &paths, DETACHED_START_WAIT)?
        };
        let handle = started.handle();
        let ours = db.write(|tx| {
            tx.set_job_agent(
                job.id,
                job.epoch,
                started.agent.pid as i64,
                started.agent.start_time as i64,
                facts.timeout_s as i64,
            )?;
            tx.set_job_run(job.id, job.epoch, runner_name, Some(&handle))
        })?;
        if !ours {
            warn!(target: "worker", job = job.id, "job was taken from this worker as its run started; stopping the run");
            detached::stop_by_runner(
                job.id,
                job.epoch,
                Some(runner_name),
                Some(&handle),
                Some(started.agent),
                Duration::from_secs(ctx.settings.kill_grace_s),
            );
            return Ok(RunEnd::Lost);
        }
        info!(target: "worker", job = job.id, runner = runner_name, supervisor = started.supervisor.pid, agent = started.agent.pid, "agent started detached");
        let watched = follow(ctx, db, job, &paths, runner_name, &handle, &mut watch)?;
        if let Watched::Exited(e) = &watched {
            if refused(db, job, &facts, e)? {
                refusals += 1;
                detached::set_aside(&paths, &format!("refused{refusals}"))?;
                let brief = rebrief()?;
                spec.argv = brief.argv.clone();
                facts.argv = brief.argv;
                facts.resumed = brief.previous_session;
                continue;
            }
        }
        return settle(ctx, db, job, facts, watched, runner_name, false);
    }
}

/// Whether the detached run described by `facts` that ended as `e` was a
/// resume the CLI refused ([`resume_refused`]: the session is forgotten).
fn refused(db: &Db, job: &Job, facts: &RunFacts, e: &detached::Exited) -> anyhow::Result<bool> {
    resume_refused(
        db,
        job,
        facts.kind,
        facts.resumed.as_deref(),
        &facts.log_path,
        facts.log_from,
        &e.outcome()?,
    )
}

/// Why a watch ended.
enum Watched {
    Exited(detached::Exited),
    /// This worker was asked to stop by this signal.
    Left(i32),
    /// The run is gone without an exit record: why.
    Gone(String),
}

/// Watches job `job`'s detached run (files `paths`, runner `runner`,
/// supervisor `handle`) until it ends, this worker is asked to stop
/// (SIGTERM, SIGINT: the run is left alone), or it is gone without an exit
/// record ([`detached::state_by_runner`]: a run in a transient unit by the
/// manager's word, as `/proc` may hide its supervisor).
/// Meanwhile it heartbeats and records the session id `watch` finds in
/// the log.
///
/// Errors: an unreadable exit record.
fn follow(
    ctx: &Ctx,
    db: &Db,
    job: &Job,
    paths: &Paths,
    runner: &str,
    handle: &str,
    watch: &mut Watch,
) -> anyhow::Result<Watched> {
    let mut heartbeat = beat(ctx, db, job);
    let mut on_tick = || {
        heartbeat()?;
        record_session_seen(db, job, watch)
    };
    let mut last_check = std::time::Instant::now();
    let mut last_tick = std::time::Instant::now();
    loop {
        if let Some(e) = detached::read_exit(paths, job.id, job.epoch)? {
            return Ok(Watched::Exited(e));
        }
        if let Some(sig) = process::stop_signal() {
            return Ok(Watched::Left(sig));
        }
        if last_check.elapsed() >= WATCH_ALIVE_EVERY {
            last_check = std::time::Instant::now();
            match detached::state_by_runner(paths, job.id, job.epoch, Some(runner), Some(handle))? {
                detached::State::Exited(e) => return Ok(Watched::Exited(e)),
                detached::State::Running => {}
                detached::State::Gone(why) => return Ok(Watched::Gone(why)),
            }
        }
        if last_tick.elapsed() >= WATCH_TICK {
            last_tick = std::time::Instant::now();
            if let Err(e) = on_tick() {
                warn!(target: "worker", job = job.id, error = %format!("{e:#}"), "tick callback failed");
            }
        }
        std::thread::sleep(WATCH_POLL);
    }
}

/// What a watch's end means for job `job`: a run that ended is recorded
/// ([`record_run`]; `runner`: the detached runner that ran it; `adopted`:
/// this process did not start it); a worker
/// asked to stop leaves it ([`RunEnd::Left`]); a run gone without an exit
/// record is recovered at once (Tier-1, [`adopt::recover`]).
///
/// Errors: those of [`record_run`] and [`adopt::recover`].
fn settle(
    ctx: &Ctx,
    db: &Db,
    job: &Job,
    facts: RunFacts,
    watched: Watched,
    runner: &'static str,
    adopted: bool,
) -> anyhow::Result<RunEnd> {
    match watched {
        Watched::Exited(e) => {
            if adopted {
                // An adopter does not start the run again: a resume the
                // CLI refused only forgets the session, and the run is
                // recorded as it ended (the next claim starts fresh).
                refused(db, job, &facts, &e)?;
            }
            let ended = Ended {
                outcome: e.outcome()?,
                acp: None,
                agent_pid: e.agent.map(|a| a.pid as i64),
                runner,
                adopted,
            };
            if let Some(error) = &e.error {
                append_to_log(
                    &facts.log_path,
                    &format!("orch: the agent did not start: {error}\n"),
                );
            }
            Ok(record_run(ctx, db, job, facts, ended)?.map_or(RunEnd::Lost, RunEnd::Recorded))
        }
        Watched::Left(sig) => {
            warn!(target: "worker", job = job.id, task = job.task_id, signal = %process::signal_name(sig), "asked to stop: leaving the detached run alone; a later tick adopts it");
            Ok(RunEnd::Left(sig))
        }
        Watched::Gone(why) => {
            warn!(target: "worker", job = job.id, task = job.task_id, why = %why, "the detached run died without an exit record; recovering the job");
            let reason = format!("the detached run died: {why}");
            Ok(adopt::recover(ctx, db, job.id, job.epoch, &reason)?
                .map_or(RunEnd::Lost, RunEnd::Recovered))
        }
    }
}

/// The end of every run, shared by the child runner, a detached run's
/// watcher and its adopter: applies the sandboxed agent's clone view,
/// reads the result (the log's last line, or the ACP exchange), and
/// records the exit, the run (with its runner and whether it was adopted)
/// and the verdict in one transaction. Returns the exit code, or `None`
/// when the job was taken meanwhile or the exit was recorded already
/// (nothing written). A child run stopped by SIGTERM requeues the job and
/// returns the [`Stopped`] error.
///
/// Errors: the task or its project vanished; the clone view cannot be
/// applied; database errors.
fn record_run(
    ctx: &Ctx,
    db: &Db,
    job: &Job,
    facts: RunFacts,
    ended: Ended,
) -> anyhow::Result<Option<i64>> {
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    let repo = ctx.repo(ctx.project(&task.project)?);
    let worktree = std::path::absolute(&task.worktree)
        .with_context(|| format!("making {} absolute", task.worktree))?;
    let RunFacts {
        kind,
        argv,
        log_path,
        verdict_file,
        timeout_s,
        started_at_ms: started,
        base_sha,
        clone_view,
        resumed,
        log_from: _,
    } = facts;
    // INV-10: nothing of a run whose claim went stale meanwhile (the
    // reaper gave up on its watcher; another epoch holds or finished the
    // job) reaches anything — not its clone view, its result or its
    // finalize. Refused and recorded.
    // The task's folder of views goes with its last view (`remove_dir`
    // leaves a folder another claim's view is in).
    let views = ctx.settings.clone_view_dir(task.id);
    if fence::guard(db, fence::Claim::of(job), "finalize")?.is_some() {
        if let Some(view) = clone_view {
            let _ = std::fs::remove_dir_all(view.dir());
            let _ = std::fs::remove_dir(&views);
        }
        return Ok(None);
    }
    if let Some(view) = clone_view {
        if view.dir().exists() {
            let applied = repo.apply_clone_view(view, &worktree);
            let _ = std::fs::remove_dir(&views);
            let applied = applied?;
            if !applied.discarded.is_empty() {
                warn!(target: "worker", job = job.id, refs = %applied.discarded.join(", "), "the agent changed refs other than its branch's; discarded");
            }
        } else {
            warn!(target: "worker", job = job.id, view = %view.dir().display(), "the run's clone view is gone (applied by an earlier try): nothing to carry over");
        }
        if repo.repair_index(&worktree)? {
            info!(target: "worker", job = job.id, "the agent left staged files its store kept; the index was reset to HEAD, the files are committed from the worktree");
        }
    }
    let outcome = ended.outcome;
    if let process::ExitKind::Stopped(sig) = outcome.exit {
        // Stopped is no failure of the agent's (`systemctl stop`, a
        // supervisor stopped with its cgroup): requeued without an attempt.
        let who = match ended.runner {
            "child" => "the worker",
            _ => "the run's supervisor",
        };
        record_stopped(db, job, sig, &log_path, who)?;
        return Err(Stopped(sig).into());
    }
    failpoint("worker.after_agent_exit");

    let agent = ctx.config.agent(&job.role)?;
    let acp = ended.acp;
    let timed_out = outcome.exit == process::ExitKind::TimedOut;
    if timed_out {
        append_to_log(
            &log_path,
            &format!("orch: timed out after {timeout_s} s; process group killed\n"),
        );
    }
    // An ACP agent's process is stopped by orch once its turn ended: the
    // exchange says how the run went, unless the timeout ended it.
    let exit_code = match &acp {
        Some(acp) if !timed_out => acp.exit_code(),
        _ => outcome.exit_code() as i64,
    };
    let parsed = match &acp {
        Some(acp) => Some(acp.to_agent_result()),
        None => {
            // The agent's output is as long as it likes: the result is its
            // last line, so only the log's end is read.
            let log = crate::untrusted::open_regular(&log_path)
                .and_then(|f| crate::untrusted::read_bounded(f, AGENT_LOG_READ_MAX_BYTES, true))
                .unwrap_or_default();
            crate::agent::parse(kind, &String::from_utf8_lossy(&log), exit_code)
        }
    };
    let result = vet_result(db, job, kind, resumed.as_deref(), parsed)?;
    if result.is_none() {
        info!(target: "worker", job = job.id, kind = %kind, log = %log_path.display(), "agent printed no result: usage unknown");
    }
    if let Some(r) = result.as_ref().filter(|r| !r.permission_denials.is_empty()) {
        warn!(target: "worker", job = job.id, denials = %r.denials().join(", "), "agent run had permission denials");
    }
    let error = crate::agent::run_error(exit_code, timed_out.then_some(timeout_s), result.as_ref());
    let limit = result
        .as_ref()
        .filter(|_| exit_code != 0 && !timed_out)
        .and_then(|r| crate::agent::limit_hit(r, now_ms()));
    if let Some(l) = &limit {
        warn!(target: "worker", job = job.id, kind = l.kind.as_str(), reset_at_ms = ?l.reset_at_ms, "agent account hit its limit");
    }
    if let Some(e) = &error {
        warn!(target: "worker", job = job.id, reason = %e.reason, retryable = e.retryable, "agent run failed");
    }
    // A verdict without a summary takes the final text of the CLI's
    // result: a reviewer's reasons often live only there.
    let verdict = crate::agent::read_verdict(&verdict_file).map(|v| {
        v.map(|mut v| {
            if v.summary.trim().is_empty() {
                if let Some(text) = result.as_ref().and_then(|r| r.result_text.as_deref()) {
                    v.summary = crate::agent::bounded(text, 4000);
                }
            }
            v
        })
    });
    let record = RunRecord {
        limit,
        pid: ended.agent_pid,
        argv,
        exit_code,
        duration_ms: outcome.duration_ms,
        success: result.as_ref().map(|r| r.success),
        usage: result.as_ref().and_then(|r| r.usage.as_ref()).map(|u| {
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens,
            )
        }),
        cost_usd: result
            .as_ref()
            .and_then(|r| r.cost(&ctx.config.prices, agent.model.as_deref())),
        session_id: result.as_ref().and_then(|r| r.session_id.clone()),
        kind,
        cumulative: result.as_ref().and_then(|r| r.cumulative),
        permission_denials: result
            .as_ref()
            .filter(|r| !r.permission_denials.is_empty())
            .map(|r| serde_json::Value::Array(r.permission_denials.clone())),
        log_path: log_path.to_string_lossy().into_owned(),
        started_at_ms: started,
        error,
        base_sha,
        runner: Some(ended.runner.to_string()),
        adopted: ended.adopted,
    };
    let now = now_ms();
    let recorded = db.write(|tx| {
        if !tx.record_exit(job.id, job.epoch, exit_code, now)? {
            return Ok(false);
        }
        tx.insert_agent_run(job, &record)?;
        if let Some(id) = &record.session_id {
            // What a later claim of this job resumes, also when the run
            // was too quick for the watch or printed no early event.
            tx.record_job_session(job.id, job.epoch, id)?;
        }
        match &verdict {
            Ok(Some(v)) => tx.insert_verdict(
                job.task_id,
                job.stage,
                Some(job.id),
                "agent",
                v.verdict.as_str(),
                &v.summary,
                now,
            )?,
            Ok(None) => {}
            Err(e) => tx.insert_verdict(
                job.task_id,
                job.stage,
                Some(job.id),
                "agent",
                "UNREADABLE",
                e,
                now,
            )?,
        }
        Ok(true)
    })?;
    failpoint("worker.after_exit_recorded");
    Ok(recorded.then_some(exit_code))
}

/// Vets the result of a run of `kind` (parsed from its log by
/// [`crate::agent::parse`], or an ACP exchange's): a session id not of the
/// kind's shape is dropped (never stored, never resumed), and a
/// session-cumulative usage is scoped to this run against the figure
/// stored for the session, a session-total cost against what is recorded
/// as spent in the session the run resumed (`resumed`, else its own).
fn vet_result(
    db: &Db,
    job: &Job,
    kind: crate::config::AgentKind,
    resumed: Option<&str>,
    parsed: Option<crate::agent::AgentResult>,
) -> anyhow::Result<Option<crate::agent::AgentResult>> {
    let Some(mut r) = parsed else {
        return Ok(None);
    };
    if let Some(id) = r.session_id.take() {
        if crate::agent::is_session_id_of(kind, &id) {
            r.session_id = Some(id);
        } else {
            let shape = crate::agent::session_id_shape(kind);
            warn!(target: "worker", job = job.id, task = job.task_id, kind = %kind, session_id = ?crate::agent::bounded(&id, 80), "the agent's result names a session id that is not {shape}: not stored, never resumed");
        }
    }
    if let (Some(_), Some(id)) = (r.cumulative, r.session_id.as_deref()) {
        let previous = db.session_cumulative(job.task_id, &job.role, id)?;
        r.scope_to_run(previous);
    }
    if let Some(id) = resumed.or(r.session_id.as_deref()) {
        let spent = db.session_spent(job.task_id, &job.role, id)?;
        r.scope_cost_to_run(spent);
    }
    Ok(Some(r))
}

/// A set-up step failed before the agent ran: retry the job (backoff, a
/// new attempt) or, at `ORCH_JOB_MAX_ATTEMPTS` or for an error that cannot
/// succeed on a retry ([`is_permanent`]: a refused repository config, a
/// bad setting, a refused branch name), fail it and escalate the task
/// with the reason, which names the failing step.
fn setup_failed(ctx: &Ctx, db: &Db, job: &Job, e: &anyhow::Error) -> anyhow::Result<Finalized> {
    let reason = format!("set-up failed: {}", name_failure(e));
    warn!(target: "worker", job = job.id, task = job.task_id, error = %reason, "could not run agent");
    let policy = ctx.policy();
    let now = now_ms();
    db.write(|tx| {
        if is_permanent(e) {
            let why = format!("{} job {} cannot run: {reason}", job.stage, job.id);
            jobs::fail_and_escalate(
                tx,
                policy,
                job,
                &reason,
                why,
                pipeline::TransitionCause::JobFailed,
                Actor::Worker,
                now,
            )
        } else {
            jobs::retry_or_fail(tx, policy, &ctx.settings, job, &reason, Actor::Worker, now)
        }
    })
}

/// The error chain as one line (what an escalation and `last_error` show).
fn name_failure(e: &anyhow::Error) -> String {
    // A subprocess's stderr spans lines (git's `remote:` lines); one line
    // keeps `orch status` one line per job.
    let text = format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    const MAX: usize = 1500;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &text[..end])
}

/// Appends `line` to a run's log (best effort: the log is for people).
fn append_to_log(path: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The runner for one agent run (`ORCH_AGENT_SANDBOX`, DESIGN §4 "Agent
/// sandbox"). Under bubblewrap the agent gets the base every confined
/// child shares ([`crate::sandbox::confinement`]: the filesystem
/// read-only; orch's state directory, the database files, every `.env`
/// from the current directory up, the secrets file and
/// `ORCH_AGENT_SANDBOX_HIDE` hidden; its worktree and a private `/tmp`
/// writable; the shared clone read-only) plus what a commit needs: its
/// verdict folder and the worktree's own admin folder writable, and the
/// clone's `refs/`, `logs/` and `objects/` replaced by private stand-ins
/// ([`crate::git::CloneView`], under
/// `<state>/clone-views/task-<id>/job<job>-e<epoch>`, the
/// clone's object store bound read-only as their alternate). The rest of
/// the clone — `config`, `hooks/`, `info/`, `packed-refs`, other worktrees'
/// admin folders — stays read-only, so an agent can commit but plant
/// nothing orch's git would read. The returned view is applied after the
/// run, carrying over the task branch only.
///
/// Errors: [`crate::error::Error::Config`] when `ORCH_AGENT_SANDBOX=bwrap`
/// and bubblewrap does not work here.
fn agent_runner(
    ctx: &Ctx,
    repo: &crate::git::Repo,
    task: &crate::db::Task,
    claim: fence::Claim,
    worktree: &Path,
    verdict_file: &Path,
) -> anyhow::Result<(Runner, Option<crate::git::CloneView>)> {
    use crate::sandbox::{self, Child};
    if !sandbox::use_bwrap(&ctx.settings, Child::Agent)? {
        return Ok((Runner::Group, None));
    }
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let clone = abs(&repo.clone_dir);
    // The view's logs/ is bound over the clone's: it must exist.
    std::fs::create_dir_all(clone.join("logs"))
        .with_context(|| format!("creating {}", clone.join("logs").display()))?;
    // One view per claim: a stale run's view is never the one a later
    // epoch's worker applies (nor emptied under it).
    let view_dir = ctx
        .settings
        .clone_view_dir(task.id)
        .join(format!("job{}-e{}", claim.job_id, claim.epoch));
    let view = repo.clone_view(&view_dir, &task.branch)?;
    let mut confinement = sandbox::confinement(&ctx.settings, &clone, worktree);
    if let Some(admin) = crate::git::worktree_admin_dir(worktree) {
        confinement.writable.push(admin);
    }
    if let Some(dir) = verdict_file.parent() {
        confinement.writable.push(abs(dir));
    }
    confinement.overlays = vec![
        Bind::writable(view.refs_dir(), clone.join("refs")),
        Bind::writable(view.logs_dir(), clone.join("logs")),
        Bind::writable(view.objects_dir(), clone.join("objects")),
        Bind::readonly(clone.join("objects"), view.base_objects_dir()),
    ];
    Ok((Runner::Bwrap(confinement), Some(view)))
}
