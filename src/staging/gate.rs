//! The staging check of a project with `[projects.staging]` (DESIGN §8):
//! the merge line's first step runs the suite against the project's
//! staging instance on the revision each waiting task's deployer passed,
//! and turns the verdict into the task's place in the line. It runs here,
//! not in finalize: finalize records the task *awaiting* the check
//! (`merge_line` state `staging`) and waits for nothing.

use std::time::Duration;

use tracing::{info, warn};

use super::report::{parse_waivers, Status};
use super::suite::{run, Target};
use crate::backoff::backoff_ms;
use crate::clock::now_ms;
use crate::config::{ProjectConfig, Secret, Settings, StagingConfig};
use crate::ctx::Ctx;
use crate::db::{Db, LineRow, Task};
use crate::failpoint::failpoint;
use crate::git::Repo;
use crate::pipeline::foreign;
use crate::pipeline::{self, Actor, Move, Moved, Stage, TransitionCause};

/// The waivers and the settings (with `env_file`'s webhook secrets) the
/// suite of `project` runs with; `Err` names the unusable setting.
fn setup(
    ctx: &Ctx,
    project: &ProjectConfig,
    cfg: &StagingConfig,
) -> Result<(Settings, Vec<String>), String> {
    let key = format!("projects.{}.staging", project.name);
    let waive = parse_waivers(&cfg.waive).map_err(|e| format!("{key}.waive: {e}"))?;
    let mut settings = ctx.settings.clone();
    if let Some(path) = &cfg.env_file {
        let vars = dotenvy::from_path_iter(path)
            .map_err(|e| format!("{key}.env_file {}: {e}", path.display()))?;
        for item in vars {
            let (k, v) = item.map_err(|e| format!("{key}.env_file {}: {e}", path.display()))?;
            match k.as_str() {
                "ORCH_PLANE_WEBHOOK_SECRET" => settings.plane_webhook_secret = Some(Secret::new(v)),
                "ORCH_GITEA_WEBHOOK_SECRET" => settings.gitea_webhook_secret = Some(Secret::new(v)),
                _ => {}
            }
        }
    }
    Ok((settings, waive))
}

/// The merge line's staging step for `project` (DESIGN §7, §8): for every
/// task awaiting the staging check (`merge_line` state `staging`) whose
/// INFRA backoff is over, oldest first, runs the suite against the
/// project's staging instance expecting the revision the deployer passed
/// (the row's `validated`), stores the verdict (source `staging`, summary
/// `<VERDICT> on <sha>: …`) and decides:
///
/// - PASS → the row becomes `ready` with `validated` = that revision;
/// - FAIL → back to development through the transition rule, the failed
///   checks the reason (the next run's feedback);
/// - INFRA → the row stays `staging`, retried after a backoff
///   (`ORCH_STAGING_CHECK_INFRA_BACKOFF_S`, doubling); at `ORCH_STAGING_CHECK_MAX_INFRA`
///   answers the task is escalated;
/// - a task branch whose head on origin moved since the deployer's PASS is
///   not validated: deploy-staging runs again on the new head (`restage`);
/// - an unusable `[projects.staging]` (a waiver naming no check, an
///   unreadable `env_file`) escalates the task (a human fixes the config).
///
/// Returns one line per task, for the line's report; `dry_run` only says
/// what it would run. Crash safety: nothing is written before the verdict;
/// a crash between the suite and its record (failpoint
/// `staging.before_record`) leaves the row `staging` and the next run
/// checks again.
///
/// Errors: git (reading the branch on origin) and database errors.
pub fn check_awaiting(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    let mut steps = Vec::new();
    let Some(cfg) = &project.staging else {
        return Ok(steps);
    };
    let rows = db.line_awaiting_staging(Some(&project.name), Some(now_ms()))?;
    if rows.is_empty() {
        return Ok(steps);
    }
    let repo = ctx.repo(project);
    for row in rows {
        let Some(task) = db.task(row.task_id)? else {
            continue;
        };
        let Some(rev) = row.validated.clone() else {
            continue;
        };
        if dry_run {
            steps.push(format!(
                "task {}: would run the staging check of {rev}",
                task.id
            ));
            continue;
        }
        steps.push(check_one(ctx, db, project, cfg, &repo, &task, &row, &rev)?);
    }
    Ok(steps)
}

/// Runs the staging check of `rev` for `task` (its row `row`); returns the
/// report line.
#[allow(clippy::too_many_arguments)]
fn check_one(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    cfg: &StagingConfig,
    repo: &Repo,
    task: &Task,
    row: &LineRow,
    rev: &str,
) -> anyhow::Result<String> {
    let id = task.id;
    let (settings, waive) = match setup(ctx, project, cfg) {
        Ok(x) => x,
        Err(why) => {
            let why = format!("staging check not run: {why}");
            let moved = foreign::escalate(ctx.policy(), db, task, &why)?;
            return Ok(format!("task {id}: {why}{}", lost(moved)));
        }
    };
    let head = repo.remote_branch_sha(&task.branch)?;
    if head.as_deref() != Some(rev) {
        // Someone else pushed to the branch: the one rule (DESIGN §7).
        let worktree = std::path::Path::new(&task.worktree);
        repo.ensure_worktree(worktree, &task.branch)?;
        let ours = repo.head_sha(worktree)?;
        let on = foreign::on_origin(repo, worktree, head.as_deref(), &ours)?;
        let (reason, moved) = match foreign::take_out(
            ctx.policy(),
            db,
            repo,
            task,
            &on,
            "staging check",
        )? {
            Some(out) => out,
            // Origin lost the head (deleted, or set back to an ancestor):
            // deploy-staging runs again and its push restores it.
            None => {
                let reason = format!(
                    "staging check not run: branch {} is at {} on origin, not {rev} which the deployer passed",
                    task.branch,
                    head.as_deref().unwrap_or("(none)")
                );
                (
                    reason.clone(),
                    foreign::restage(ctx.policy(), db, task, &reason)?,
                )
            }
        };
        warn!(target: "gate", task = id, revision = %rev, "staging check: the head moved; out of the line");
        return Ok(format!("task {id}: {reason}{}", lost(moved)));
    }
    let target = Target {
        url: cfg.url.clone(),
        db: cfg.db.clone(),
        config: cfg.config.clone(),
        project: cfg.project.clone(),
        expect_revision: Some(rev.to_string()),
        waive,
        timeout: Duration::from_secs(cfg.timeout_s),
        dry_run: false,
    };
    let report = run(&settings, &target);
    failpoint("staging.before_record");
    let not_passed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| c.status != Status::Pass && !c.waived)
        .map(|c| format!("{} {} {}: {}", c.id, c.name, c.status, c.reason))
        .collect();
    let summary = if not_passed.is_empty() {
        format!("{} on {rev} ({})", report.verdict, report.url)
    } else {
        format!("{} on {rev}: {}", report.verdict, not_passed.join("; "))
    };
    info!(target: "gate", task = id, revision = %rev, verdict = %report.verdict, "staging check");
    let s = &ctx.settings;
    let now = now_ms();
    let line = db.write(|tx| {
        // The task may have moved while the suite ran: record nothing then.
        match tx.task(id)? {
            Some(t) if t.stage == Stage::DeployStaging && t.version == row.task_version => {}
            _ => {
                return Ok(format!(
                    "task {id}: moved while the suite ran; nothing recorded"
                ))
            }
        }
        let job = tx.latest_job_at(task, Stage::DeployStaging)?.map(|j| j.id);
        tx.insert_verdict(
            id,
            Stage::DeployStaging,
            job,
            "staging",
            report.verdict.as_str(),
            &summary,
            now,
        )?;
        Ok(match report.verdict {
            Status::Pass => {
                tx.line_set(id, "ready", None, now)?;
                format!("task {id}: staging check PASS on {rev}; ready to merge")
            }
            Status::Fail => {
                let reason = format!("staging-check FAIL on {rev}:\n{}", report.failure_summary());
                let mut m = Move::new(
                    task,
                    Stage::Development,
                    Actor::Worker,
                    TransitionCause::GateSentBack,
                    reason.clone(),
                );
                m.developer_retry = true;
                m.cause_job = job;
                pipeline::apply(tx, ctx.policy(), &m, now)?;
                tx.line_set(id, "sent_back", Some(&reason), now)?;
                format!("task {id}: staging check FAIL on {rev}; back to development")
            }
            Status::Infra => {
                let reason = format!("staging-check INFRA on {rev}: {}", not_passed.join("; "));
                tx.bump_counter("merge_gate.deferred_total", 1)?;
                if row.staging_defers >= s.staging_max_infra as i64 {
                    let why = format!(
                        "staging check deferred {} times (ORCH_STAGING_CHECK_MAX_INFRA): {reason}",
                        row.staging_defers
                    );
                    let mut m = Move::new(
                        task,
                        Stage::DeployStaging,
                        Actor::Worker,
                        TransitionCause::JobFailed,
                        why.clone(),
                    );
                    m.escalate = Some(why.clone());
                    m.cause_job = job;
                    pipeline::apply(tx, ctx.policy(), &m, now)?;
                    return Ok(format!("task {id}: {why}; escalated"));
                }
                let base_ms = s.staging_infra_backoff_s as i64 * 1000;
                let at = now + backoff_ms(base_ms, base_ms << 4, row.staging_defers, None);
                tx.line_staging_defer(id, row.staging_defers + 1, at, &reason, now)?;
                format!(
                    "task {id}: {reason}; checked again at {} (try {})",
                    crate::clock::format_ms(at),
                    row.staging_defers + 1
                )
            }
        })
    })?;
    Ok(line)
}

/// `" (the task moved meanwhile)"` when `moved` was lost.
fn lost(moved: Moved) -> &'static str {
    match moved {
        Moved::Lost => " (the task moved meanwhile)",
        _ => "",
    }
}
