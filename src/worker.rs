//! `orch work-once`: claim at most one runnable job, run its agent to the
//! end, record the exit, and finalize it.
//!
//! Job lifecycle (DESIGN §4):
//! `queued → (claim) running → (agent exits) running + exit_code →
//! (finalize) done | failed | queued (retry)`.
//!
//! [`finalize`] is shared with the reaper's Tier-2: every step before the
//! terminal claim (auto-commit, push, local CI, merge) is idempotent —
//! check, then act — so a finalize interrupted at any instruction can be
//! run again by whoever comes next; only the terminal claim, a single
//! transaction, decides who advances the task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::{Db, Job, RunRecord, Task};
use crate::failpoint::failpoint;
use crate::pipeline::gate::{self, Gate};
use crate::pipeline::job::{self as jobs, Changed, Finalized};
use crate::pipeline::{self, Actor, JobStatus, Move, Moved, Stage};
use crate::process::{self, RunSpec};

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
    let (host, pid, start) = process::identity();
    let now = now_ms();
    let job = db.write(|tx| {
        jobs::claim_next(
            tx,
            ctx.settings.max_concurrency,
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
            attempt: job.attempt,
        });
    }
    info!(target: "worker", job = job.id, task = job.task_id, stage = %job.stage, attempt = job.attempt, "claimed job");
    failpoint("worker.after_claim");
    let exit_code = match run_agent_unless_merge_pending(ctx, db, &job) {
        Ok(code) => code,
        Err(e) => {
            // The agent could not even start (worktree, config): a failed run.
            let msg = format!("{e:#}");
            warn!(target: "worker", job = job.id, error = %msg, "could not run agent");
            let recorded = db.write(|tx| {
                if !tx.record_exit(job.id, job.attempt, -1, now_ms())? {
                    return Ok(false);
                }
                tx.insert_verdict(
                    job.task_id,
                    job.stage,
                    Some(job.id),
                    "orch",
                    "UNREADABLE",
                    &msg,
                    now_ms(),
                )?;
                Ok(true)
            })?;
            recorded.then_some(-1)
        }
    };
    let Some(exit_code) = exit_code else {
        warn!(target: "worker", job = job.id, "job was taken from this worker while its agent ran; result discarded");
        return Ok(WorkOutcome::Ran {
            job_id: job.id,
            task_id: job.task_id,
            stage: job.stage,
            exit_code: -1,
            finalized: Finalized::Lost,
        });
    };
    let finalized = finalize(ctx, db, job.id, Actor::Worker)?;
    if finalized.needs_a_human() {
        warn!(target: "worker", job = job.id, task = job.task_id, exit_code, outcome = %finalized, "finalized job; needs a human");
    } else {
        info!(target: "worker", job = job.id, task = job.task_id, exit_code, outcome = %finalized, "finalized job");
    }
    Ok(WorkOutcome::Ran {
        job_id: job.id,
        task_id: job.task_id,
        stage: job.stage,
        exit_code,
        finalized,
    })
}

/// A deferred merge (`merge_pending`) keeps its agent's result: the claim
/// kept the exit code, and only the merge runs again (in [`finalize`]).
fn run_agent_unless_merge_pending(ctx: &Ctx, db: &Db, job: &Job) -> anyhow::Result<Option<i64>> {
    match job.exit_code {
        Some(code) if job.merge_pending => {
            info!(target: "worker", job = job.id, defers = job.merge_defers, "deferred merge: the agent is not run again");
            Ok(Some(code))
        }
        _ => run_agent(ctx, db, job),
    }
}

/// Per-run file names: `<kind>-job<id>-a<attempt>.<ext>`.
pub fn run_file(dir: &Path, job: &Job, ext: &str) -> PathBuf {
    dir.join(format!("job{}-a{}.{ext}", job.id, job.attempt))
}

/// The template variables of a job's agent run (`{task_id}`, `{stage}`,
/// `{verdict_file}`, …), for its argv and prompt.
fn agent_vars(
    ctx: &Ctx,
    task: &Task,
    job: &Job,
    verdict_file: &Path,
) -> BTreeMap<&'static str, String> {
    [
        ("task_id", task.id.to_string()),
        ("project", task.project.clone()),
        ("title", task.title.clone()),
        ("body", task.body.clone()),
        ("stage", job.stage.to_string()),
        ("role", job.role.clone()),
        ("branch", task.branch.clone()),
        ("worktree", task.worktree.clone()),
        ("verdict_file", verdict_file.to_string_lossy().into_owned()),
        (
            "verdict_dir",
            ctx.settings.verdicts_dir().to_string_lossy().into_owned(),
        ),
    ]
    .into_iter()
    .collect()
}

/// The argv of a job's agent, rendered from `agents.<role>.argv`.
///
/// Errors: [`crate::error::Error::Config`] naming the argv entry.
fn agent_argv(
    ctx: &Ctx,
    job: &Job,
    vars: &BTreeMap<&str, String>,
) -> Result<Vec<String>, crate::error::Error> {
    let agent = ctx.config.agent(&job.role)?;
    agent
        .argv
        .iter()
        .map(|a| crate::agent::render(a, vars))
        .collect::<Result<_, _>>()
        .map_err(|m| crate::error::Error::config(format!("agents.{}.argv", job.role), m))
}

/// What `work-once --dry-run` reports for the job it would claim: the
/// argv its agent would run (paths as the real run names them).
///
/// Errors: the task vanished; a config error rendering the argv.
pub fn planned_argv(ctx: &Ctx, db: &Db, job: &Job) -> anyhow::Result<Vec<String>> {
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    let verdict_file = run_file(&ctx.settings.verdicts_dir(), job, "json");
    let vars = agent_vars(ctx, &task, job, &verdict_file);
    Ok(agent_argv(ctx, job, &vars)?)
}

/// Prepares the worktree, runs the agent, and records its exit, run and
/// verdict in one transaction. Returns the exit code, or `None` when the
/// job was taken from this worker meanwhile (nothing recorded).
fn run_agent(ctx: &Ctx, db: &Db, job: &Job) -> anyhow::Result<Option<i64>> {
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    let project = ctx.project(&task.project)?;
    let repo = ctx.repo(project);
    let worktree = PathBuf::from(&task.worktree);
    repo.sync()?;
    repo.ensure_worktree(&worktree, &task.branch)?;

    let agent = ctx.config.agent(&job.role)?;
    let verdict_file = run_file(&ctx.settings.verdicts_dir(), job, "json");
    let _ = std::fs::remove_file(&verdict_file);
    let log_path = run_file(&ctx.settings.logs_dir(), job, "log");
    let prompt_path = run_file(&ctx.settings.logs_dir(), job, "prompt");

    let vars = agent_vars(ctx, &task, job, &verdict_file);
    let argv = agent_argv(ctx, job, &vars)?;
    let prompt = crate::agent::render(&agent.prompt, &vars)
        .map_err(|m| crate::error::Error::config(format!("agents.{}.prompt", job.role), m))?;
    std::fs::create_dir_all(ctx.settings.logs_dir())?;
    std::fs::write(&prompt_path, prompt)?;

    let timeout_s = agent.timeout_s.unwrap_or(ctx.settings.agent_timeout_s);
    let mut env: Vec<(String, String)> = vec![
        ("ORCH_TASK_ID".into(), task.id.to_string()),
        ("ORCH_STAGE".into(), job.stage.to_string()),
        ("ORCH_ROLE".into(), job.role.clone()),
        ("ORCH_JOB_ID".into(), job.id.to_string()),
        (
            "ORCH_VERDICT_FILE".into(),
            verdict_file.to_string_lossy().into_owned(),
        ),
    ];
    env.extend(agent.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec = RunSpec {
        argv: argv.clone(),
        cwd: worktree.clone(),
        env,
        env_remove_prefix: Some("ORCH_".into()),
        stdin_path: Some(prompt_path),
        log_path: log_path.clone(),
        timeout: Duration::from_secs(timeout_s),
        kill_grace: Duration::from_secs(ctx.settings.kill_grace_s),
    };
    let started = now_ms();
    let heartbeat_every = ctx.settings.heartbeat_s as i64 * 1000;
    let mut last_beat = started;
    let mut agent_pid = None;
    let outcome = process::run(
        &spec,
        Duration::from_millis(200),
        |s| {
            agent_pid = Some(s.pid as i64);
            db.write(|tx| {
                tx.set_job_agent(
                    job.id,
                    job.attempt,
                    s.pid as i64,
                    s.start_time as i64,
                    timeout_s as i64,
                )
            })
        },
        || {
            let now = now_ms();
            if now - last_beat >= heartbeat_every {
                last_beat = now;
                db.write(|tx| tx.heartbeat(job.id, job.attempt, now))?;
            }
            Ok(())
        },
    )?;
    failpoint("worker.after_agent_exit");

    let log = std::fs::read(&log_path).unwrap_or_default();
    let result = crate::agent::parse_result(&String::from_utf8_lossy(&log));
    if result.is_none() {
        info!(target: "worker", job = job.id, log = %log_path.display(), "agent printed no result JSON: usage unknown");
    }
    if let Some(r) = result.as_ref().filter(|r| !r.permission_denials.is_empty()) {
        warn!(target: "worker", job = job.id, denials = r.permission_denials.len(), "agent run had permission denials");
    }
    let verdict = crate::agent::read_verdict(&verdict_file);
    let exit_code = outcome.exit_code() as i64;
    let record = RunRecord {
        pid: agent_pid,
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
        cost_usd: result.as_ref().and_then(|r| r.cost_usd),
        session_id: result.as_ref().and_then(|r| r.session_id.clone()),
        permission_denials: result
            .as_ref()
            .filter(|r| !r.permission_denials.is_empty())
            .map(|r| serde_json::Value::Array(r.permission_denials.clone())),
        log_path: log_path.to_string_lossy().into_owned(),
        started_at_ms: started,
    };
    let now = now_ms();
    let recorded = db.write(|tx| {
        if !tx.record_exit(job.id, job.attempt, exit_code, now)? {
            return Ok(false);
        }
        tx.insert_agent_run(job, &record)?;
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

/// Finalizes running job `job_id` whose agent exit is recorded: commits
/// and pushes the worktree, runs local CI or the merge where the stage
/// needs it, evaluates the gate and applies its answer through the
/// transition rule. Used by the worker and by the reaper's Tier-2.
///
/// Guarantees: idempotent up to the terminal claim; the terminal claim is
/// one transaction, and an actor that loses it writes nothing.
/// Errors: database errors, and git/CI errors (the job stays `running`
/// with its exit recorded, so the reaper's Tier-2 finishes it later).
pub fn finalize(ctx: &Ctx, db: &Db, job_id: i64, actor: Actor) -> anyhow::Result<Finalized> {
    let job = db.job(job_id)?.context("no such job")?;
    if job.status != JobStatus::Running || job.exit_code.is_none() {
        return Ok(Finalized::Lost);
    }
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    if task.stage != job.stage || task.version != job.task_version {
        let reason = format!(
            "task moved to {} v{} while the job ran",
            task.stage, task.version
        );
        let won = db.write(|tx| {
            jobs::finish(
                tx,
                job.id,
                Some(job.attempt),
                JobStatus::Cancelled,
                Some(&reason),
                now_ms(),
            )
        })?;
        return Ok(if won == Changed::Applied {
            Finalized::Cancelled { reason }
        } else {
            Finalized::Lost
        });
    }
    let stage = task.stage;
    let project = ctx.project(&task.project)?;
    let repo = ctx.repo(project);
    let worktree = PathBuf::from(&task.worktree);
    let agent_ok = job.exit_code == Some(0);

    // Recreates a missing worktree and aborts a rebase a crashed merge step
    // left in progress; a no-op on a healthy worktree.
    repo.ensure_worktree(&worktree, &task.branch)?;
    if agent_ok {
        let run_id = db.last_run_for_job(job.id)?.map(|r| r.0).unwrap_or(0);
        let msg = format!(
            "{}({}): auto-commit from {} run_id={run_id}",
            job.role, task.project, job.role
        );
        repo.commit_all(&worktree, &msg)?;
        failpoint("finalize.after_commit");
        push_task_branch(&repo, &worktree, &task.branch, stage)?;
        crate::forge::Forge::for_project(ctx, project).after_push(db, project, &repo, &task)?;
        failpoint("finalize.after_push");
    } else {
        // A failed run's half-done edits are not committed: the retry
        // starts again from what was pushed.
        repo.discard_changes(&worktree)?;
    }
    if agent_ok && stage == Stage::Development {
        crate::forge::Forge::for_project(ctx, project)
            .ci_after_push(ctx, db, project, &repo, &task)?;
    }

    let facts = gate::gather(db, project, &repo, &task)?;
    let mut verdict = gate::decide(stage, &facts);
    if verdict == Gate::Pass && stage == Stage::DeployStaging {
        match crate::merge_gate::gate_job(ctx, db, project, &repo, &task, &job, actor)? {
            crate::merge_gate::JobGate::Verdict(g) => verdict = g,
            crate::merge_gate::JobGate::Settled(f) => return Ok(f),
        }
    }
    info!(target: "gate", task = task.id, stage = %stage, verdict = %verdict, "gate evaluated");
    failpoint("finalize.before_terminal_claim");
    apply_gate(ctx, db, &task, &job, stage, verdict, actor)
}

/// Pushes the task branch unless origin already has the worktree's head.
///
/// orch rewrites a task branch in one place only: the merge step of
/// deploy-staging rebases it onto main. A crash between that rebase and its
/// push leaves a local branch that is a rebase of origin's; in that stage
/// (only) the branch is replaced with `--force-with-lease` on the sha just
/// seen. Everywhere else a non-fast-forward is an error, so a commit someone
/// else pushed to the branch is never overwritten.
fn push_task_branch(
    repo: &crate::git::Repo,
    worktree: &Path,
    branch: &str,
    stage: Stage,
) -> anyhow::Result<()> {
    let head = repo.head_sha(worktree)?;
    match repo.remote_branch_sha(branch)? {
        Some(remote) if remote == head => Ok(()),
        Some(remote)
            if stage == Stage::DeployStaging && !repo.is_ancestor(worktree, &remote, &head)? =>
        {
            warn!(target: "worker", branch, remote = %remote, head = %head, "origin has the branch before a rebase; replacing it");
            repo.push_branch_force_with_lease(worktree, branch, &remote)
        }
        _ => repo.push_branch(worktree, branch),
    }
}

/// Applies a gate answer for a finishing job in one transaction.
fn apply_gate(
    ctx: &Ctx,
    db: &Db,
    task: &Task,
    job: &Job,
    stage: Stage,
    verdict: Gate,
    actor: Actor,
) -> anyhow::Result<Finalized> {
    let now = now_ms();
    let policy = ctx.policy();
    // The run's report (tracker comment, PR comment) is written in the same
    // transaction that finishes the job.
    let report = crate::report::RunReport::gather(ctx, task, job);
    db.write(|tx| {
        let finalized = match &verdict {
            Gate::Pass | Gate::Rollback(_) => {
                let (to, reason, retry) = match &verdict {
                    Gate::Rollback(r) => (Stage::Development, r.clone(), true),
                    _ => (stage.next(), format!("{stage} gate passed"), false),
                };
                let mut m = Move::new(task, to, actor, reason).finishing(job.id);
                m.developer_retry = retry;
                match pipeline::apply(tx, policy, &m, now)? {
                    Moved::Applied { escalated, .. } => Finalized::Advanced {
                        from: stage,
                        to,
                        escalated,
                    },
                    Moved::Lost => Finalized::Lost,
                }
            }
            Gate::Pending(reason) => {
                let done = jobs::finish(tx, job.id, Some(job.attempt), JobStatus::Done, None, now)?;
                if done == Changed::Applied {
                    Finalized::Waiting {
                        reason: reason.clone(),
                    }
                } else {
                    Finalized::Lost
                }
            }
            Gate::Fail(reason) => {
                jobs::retry_or_fail(tx, policy, &ctx.settings, job, reason, actor, now)?
            }
        };
        report.queue(tx, ctx, task, job, &finalized, now)?;
        Ok(finalized)
    })
}
