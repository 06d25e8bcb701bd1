//! `orch ci`: the local forge's CI step. The worker's finalize never waits
//! for CI: a development run whose head has no CI status finishes its job
//! and its task waits at development. For a project on the local forge
//! (where orch is the CI) this step runs the project's test command on
//! each such head, confined as every test run ([`crate::forge::run_tests`]),
//! and in one transaction records the result in `ci_statuses` (context
//! `orch/test`, with the run's log) and decides the task's development
//! gate again through [`crate::pipeline::ci::on_status`] — the same rule a
//! Gitea `status` delivery goes through.
//!
//! One step at a time: the caller holds the `ci` tick lock (`orch ci`,
//! `orch tick`), so two ticks never run the same test. A crash before the
//! transaction leaves no status and the next pass runs the test again; a
//! result whose task moved or whose head changed while the test ran is not
//! recorded (the next pass looks again). A test command that cannot run
//! at all escalates the task with the reason, once.

use serde::Serialize;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::{Db, Task};
use crate::failpoint::failpoint;
use crate::forge::{self, Forge};
use crate::pipeline::ci::{self as rule, CiDecision, RecordedBy};
use crate::pipeline::gate::{self, Gate};
use crate::pipeline::{Actor, JobStatus, Move, Moved, Stage, TransitionCause};

/// What one CI pass did (`orch ci --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CiPass {
    /// True for `--dry-run`: `runs` is the plan, nothing ran.
    pub dry_run: bool,
    /// One entry per development head the pass tested (or would test).
    pub runs: Vec<CiRun>,
}

/// One test run of a development head.
#[derive(Debug, Clone, Serialize)]
pub struct CiRun {
    pub task_id: i64,
    pub project: String,
    /// The tested head (40 hex).
    pub sha: String,
    /// `success`, `failure`, `would run` (dry run), `not recorded` (the
    /// task moved or its head changed while the test ran), or `error` (the
    /// test command could not run: the task is escalated with the reason).
    pub state: String,
    /// What the gate did with it: `development → review (CI success on
    /// <sha>)`, `waits: …`, `no pipeline action: …`.
    pub outcome: String,
    /// The test run's log (absent in a dry run).
    pub log: Option<String>,
    /// The task moved: to review, back to development, or escalated.
    pub moved: bool,
}

/// A development head that waits for its CI.
#[derive(Debug, Clone)]
pub struct WaitingHead {
    pub task: Task,
    /// The head of the task's worktree (40 hex), pushed by its finalize.
    pub sha: String,
    /// The development job that produced it (finished, done).
    pub job_id: i64,
}

/// The development tasks of the local forge's projects (of `project`
/// only, when given) whose gate waits for a CI status of their head,
/// oldest change first. A task qualifies when it is at
/// development, not escalated, has no active job, its development job at
/// this version finished done (its finalize decided "waiting"), and its
/// head has no stored status.
///
/// Errors: database errors; git errors reading a worktree's head.
pub fn waiting_heads(
    ctx: &Ctx,
    db: &Db,
    project: Option<&str>,
) -> anyhow::Result<Vec<WaitingHead>> {
    let mut out = Vec::new();
    let mut tasks = db.unfinished_tasks_without_active_jobs()?;
    tasks.sort_by_key(|t| (t.updated_at_ms, t.id));
    for task in tasks {
        if task.stage != Stage::Development || task.escalated {
            continue;
        }
        if project.is_some_and(|p| p != task.project) {
            continue;
        }
        let Some(p) = ctx.config.project(&task.project) else {
            continue;
        };
        if !Forge::for_project(ctx, p).runs_own_ci() {
            continue;
        }
        if !std::path::Path::new(&task.worktree).exists() {
            continue;
        }
        let job = db.latest_job_at(&task, Stage::Development)?;
        let Some(job) = job.filter(|j| j.status == JobStatus::Done) else {
            continue;
        };
        let facts = gate::gather(db, p, &ctx.repo(p), &task)?;
        let Some((sha, None)) = facts.ci.clone() else {
            continue;
        };
        if matches!(gate::decide(Stage::Development, &facts), Gate::Pending(_)) {
            out.push(WaitingHead {
                task,
                sha,
                job_id: job.id,
            });
        }
    }
    Ok(out)
}

/// One CI pass: tests every waiting head ([`waiting_heads`]) in turn and
/// records each result with the gate's answer. `dry_run` lists them and
/// runs nothing. A stop signal (SIGTERM) ends the pass before the next
/// test.
///
/// Assumptions: the caller holds the `ci` tick lock.
/// Errors: database errors. A test command that cannot run escalates its
/// task (run state `error`) and the pass goes on.
pub fn run(ctx: &Ctx, db: &Db, project: Option<&str>, dry_run: bool) -> anyhow::Result<CiPass> {
    let mut pass = CiPass {
        dry_run,
        runs: Vec::new(),
    };
    for head in waiting_heads(ctx, db, project)? {
        let (task, sha) = (&head.task, head.sha.clone());
        if dry_run {
            pass.runs.push(CiRun {
                task_id: task.id,
                project: task.project.clone(),
                sha,
                state: "would run".into(),
                outcome: "would record the status and decide the development gate".into(),
                log: None,
                moved: false,
            });
            continue;
        }
        if crate::process::stop_signal().is_some() {
            break;
        }
        match test_head(ctx, db, &head)? {
            Ok(run) => pass.runs.push(run),
            // Stopped (SIGTERM): not a result; the next pass tests again.
            Err(_) if crate::process::stop_signal().is_some() => break,
            Err(e) => pass.runs.push(cannot_test(ctx, db, task, &sha, &e)?),
        }
    }
    Ok(pass)
}

/// The test command could not run on `sha` (it cannot be started, the
/// sandbox does not work, the worktree cannot be read): a problem of the
/// project's configuration or of this host that no retry of the task
/// fixes. The task is escalated with the reason, through the transition
/// rule (one notification); a human fixes the cause and retries it.
///
/// Errors: database errors.
fn cannot_test(
    ctx: &Ctx,
    db: &Db,
    task: &Task,
    sha: &str,
    e: &anyhow::Error,
) -> anyhow::Result<CiRun> {
    let reason = format!("CI cannot run on {sha}: {e:#}");
    warn!(target: "ci", task = task.id, sha = %sha, error = %format!("{e:#}"), "the test command cannot run; escalating");
    let m = Move {
        escalate: Some(reason.clone()),
        ..Move::new(
            task,
            task.stage,
            Actor::Worker,
            TransitionCause::JobFailed,
            reason.clone(),
        )
    };
    let moved = db.write(|tx| crate::pipeline::apply(tx, ctx.policy(), &m, now_ms()))?;
    let outcome = match moved {
        Moved::Applied { .. } => format!("escalated: {reason}"),
        Moved::Lost => "no pipeline action: the task changed concurrently".to_string(),
    };
    Ok(CiRun {
        task_id: task.id,
        project: task.project.clone(),
        sha: sha.to_string(),
        state: "error".into(),
        outcome,
        log: None,
        moved: matches!(moved, Moved::Applied { .. }),
    })
}

/// Runs the test command on `sha`, the head of `task`'s worktree, then in
/// one transaction records the status and decides the gate as the worker
/// (the step does the job's CI). Not recorded when the task's version or
/// head changed while the test ran.
///
/// Errors: the outer error is a database error; the inner one says the
/// test command could not run (it cannot be started or was stopped, the
/// worktree cannot be read).
fn test_head(
    ctx: &Ctx,
    db: &Db,
    head: &WaitingHead,
) -> anyhow::Result<Result<CiRun, anyhow::Error>> {
    let (task, sha) = (&head.task, head.sha.as_str());
    let project = ctx.project(&task.project)?;
    let repo = ctx.repo(project);
    info!(target: "ci", task = task.id, sha = %sha, "running the test command");
    let tested = forge::run_local_ci(ctx, project, &repo, task, sha).and_then(|(state, log)| {
        failpoint("ci.after_test");
        Ok((
            state,
            log,
            repo.head_sha(std::path::Path::new(&task.worktree))?,
        ))
    });
    let (state, log, head_now) = match tested {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let now = now_ms();
    let log_text = log.to_string_lossy().to_string();
    let recorded = db.write(|tx| {
        let Some(current) = tx.task(task.id)? else {
            return Ok(None);
        };
        if current.version != task.version || head_now != sha {
            return Ok(None);
        }
        tx.upsert_ci_status(
            &project.name,
            sha,
            crate::db::ORCH_TEST_CONTEXT,
            state,
            "",
            Some(&log_text),
            now,
        )?;
        let decision = rule::on_status(
            tx,
            ctx.policy(),
            project,
            &repo,
            &current,
            RecordedBy {
                actor: Actor::Worker,
                job: Some(head.job_id),
            },
            now,
        )?;
        Ok(Some(decision))
    })?;
    failpoint("ci.after_record");
    let (state, outcome) = match &recorded {
        Some(d) => {
            info!(target: "ci", task = task.id, sha = %sha, state, outcome = %d, "local CI finished");
            (state.to_string(), d.to_string())
        }
        None => {
            warn!(target: "ci", task = task.id, sha = %sha, state, "the task moved or its head changed while the tests ran; not recorded");
            (
                "not recorded".to_string(),
                "no pipeline action: the task moved or its head changed while the tests ran"
                    .to_string(),
            )
        }
    };
    if let Some(CiDecision::Moved {
        escalated: true, ..
    }) = recorded
    {
        warn!(target: "ci", task = task.id, "escalated at the developer retry cap");
    }
    Ok(Ok(CiRun {
        task_id: task.id,
        project: task.project.clone(),
        sha: sha.to_string(),
        state,
        outcome,
        log: Some(log_text),
        moved: matches!(recorded, Some(CiDecision::Moved { .. })),
    }))
}
