//! The deploy-staging gate of a project with `[projects.staging]`: runs
//! the suite against its staging instance on the task branch's head and
//! turns the verdict into a pipeline outcome ([`StagingGate`]).

use std::path::Path;
use std::time::Duration;

use tracing::info;

use super::report::{parse_waivers, Status};
use super::suite::{run, Target};
use crate::clock::now_ms;
use crate::config::{ProjectConfig, Secret, Settings};
use crate::ctx::Ctx;
use crate::db::{Db, Job, Task};
use crate::git::Repo;
use crate::pipeline::gate::Gate;
use crate::pipeline::job::{self as jobs, Finalized};
use crate::pipeline::{Actor, Stage};

/// What the staging check decided for a finishing deploy-staging job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagingGate {
    /// PASS on this revision (the branch head): the merge gate may merge
    /// it, and only it.
    Validated(String),
    /// Apply through the transition rule: a FAIL rolls back to development
    /// with the failed checks as the reason (the next run's feedback).
    Verdict(Gate),
    /// Settled here: INFRA deferred (not an attempt), escalated at the
    /// defer cap or on an unusable `[projects.staging]`; or lost.
    Settled(Finalized),
}

/// The deterministic deploy-staging gate of a project with
/// `[projects.staging]` (DESIGN §8), run by `worker::finalize` after the
/// deployer's PASS and before the merge gate: runs the suite against the
/// project's staging instance expecting the task branch's head, and stores
/// its verdict (source `staging`, summary `<VERDICT> on <sha>: …`) beside
/// the deployer's.
///
/// PASS → [`StagingGate::Validated`]; FAIL → a rollback to development
/// whose reason lists the failed checks; INFRA → the job is deferred with
/// backoff like a busy merge lease (not an attempt; escalated after
/// `ORCH_MERGE_GATE_MAX_DEFERS`). A waiver list naming no check, or an
/// `env_file` that cannot be read, escalates the task (a human fixes the
/// config).
///
/// Errors: git (reading the head) and database errors; the job stays
/// running for the reaper's Tier-2.
pub fn gate_job(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    job: &Job,
    actor: Actor,
) -> anyhow::Result<StagingGate> {
    let head = repo.head_sha(Path::new(&task.worktree))?;
    let Some(cfg) = &project.staging else {
        return Ok(StagingGate::Validated(head));
    };
    let setup = || -> Result<(Settings, Vec<String>), String> {
        let key = format!("projects.{}.staging", project.name);
        let waive = parse_waivers(&cfg.waive).map_err(|e| format!("{key}.waive: {e}"))?;
        let mut settings = ctx.settings.clone();
        if let Some(path) = &cfg.env_file {
            let vars = dotenvy::from_path_iter(path)
                .map_err(|e| format!("{key}.env_file {}: {e}", path.display()))?;
            for item in vars {
                let (k, v) = item.map_err(|e| format!("{key}.env_file {}: {e}", path.display()))?;
                match k.as_str() {
                    "ORCH_PLANE_WEBHOOK_SECRET" => {
                        settings.plane_webhook_secret = Some(Secret::new(v))
                    }
                    "ORCH_GITEA_WEBHOOK_SECRET" => {
                        settings.gitea_webhook_secret = Some(Secret::new(v))
                    }
                    _ => {}
                }
            }
        }
        Ok((settings, waive))
    };
    let (settings, waive) = match setup() {
        Ok(x) => x,
        Err(why) => {
            let why = format!("staging check not run: {why}");
            let out = db.write(|tx| {
                jobs::fail_and_escalate(
                    tx,
                    ctx.policy(),
                    job,
                    &why,
                    why.clone(),
                    crate::pipeline::TransitionCause::JobFailed,
                    actor,
                    now_ms(),
                )
            })?;
            return Ok(StagingGate::Settled(out));
        }
    };
    let target = Target {
        url: cfg.url.clone(),
        db: cfg.db.clone(),
        config: cfg.config.clone(),
        project: cfg.project.clone(),
        expect_revision: Some(head.clone()),
        waive,
        timeout: Duration::from_secs(cfg.timeout_s),
        dry_run: false,
    };
    let report = run(&settings, &target);
    let not_passed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| c.status != Status::Pass && !c.waived)
        .map(|c| format!("{} {} {}: {}", c.id, c.name, c.status, c.reason))
        .collect();
    let summary = if not_passed.is_empty() {
        format!("{} on {head} ({})", report.verdict, report.url)
    } else {
        format!("{} on {head}: {}", report.verdict, not_passed.join("; "))
    };
    db.write(|tx| {
        tx.insert_verdict(
            task.id,
            Stage::DeployStaging,
            Some(job.id),
            "staging",
            report.verdict.as_str(),
            &summary,
            now_ms(),
        )
    })?;
    info!(target: "gate", task = task.id, job = job.id, revision = %head, verdict = %report.verdict, "staging check");
    Ok(match report.verdict {
        Status::Pass => StagingGate::Validated(head),
        Status::Fail => StagingGate::Verdict(Gate::rollback(format!(
            "staging-check FAIL on {head}:\n{}",
            report.failure_summary()
        ))),
        Status::Infra => {
            let reason = format!("staging-check INFRA on {head}: {}", not_passed.join("; "));
            StagingGate::Settled(crate::merge_gate::defer_job(
                ctx,
                db,
                job,
                actor,
                "staging check",
                &reason,
                None,
            )?)
        }
    })
}
