//! `orch reconcile`: level-triggered repair of what a lost event left
//! behind (DESIGN §5). Acts on observed state, never on the event that
//! would have woken it.
//!
//! This pass implements F-1, the gate side: a task that is not done, not
//! escalated, not at analysis (a human gate), below the developer retry
//! cap, has no queued or running job and was unchanged for
//! `ORCH_RECONCILE_GRACE_S` gets its gate evaluated read-only; `Pass`
//! advances it through the transition rule with actor `reconciler`;
//! anything else is left alone, silently. Every unblock logs one line,
//! bumps `reconcile.unblocked_total` and queues one notification.

use serde::Serialize;
use serde_json::json;
use tracing::info;

use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::Db;
use crate::pipeline::gate::{self, Gate};
use crate::pipeline::{self, Actor, Move, Moved, Stage};

/// What a pass saw and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Pass {
    /// Tasks whose gate was evaluated.
    pub examined: usize,
    /// `(task id, from, to)` of tasks advanced (planned, with `--dry-run`).
    pub unblocked: Vec<(i64, String, String)>,
    /// `(task id, reason)` of tasks skipped by a guard.
    pub skipped: Vec<(i64, String)>,
}

/// Runs one F-1 pass; with `dry_run` nothing is written and `unblocked`
/// lists what a real pass would advance.
///
/// Assumptions: the caller holds the `reconcile` tick lock.
pub fn run(ctx: &Ctx, db: &Db, dry_run: bool) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    if !ctx.settings.reconcile_enabled {
        return Ok(pass);
    }
    let now = now_ms();
    let grace_ms = ctx.settings.reconcile_grace_s as i64 * 1000;
    for task in db.tasks()? {
        let Ok(stage) = task.stage.parse::<Stage>() else {
            continue;
        };
        if stage == Stage::Done || task.escalated || now - task.updated_at_ms < grace_ms {
            continue;
        }
        if stage == Stage::Analysis {
            pass.skipped
                .push((task.id, "analysis is a human gate".into()));
            continue;
        }
        if task.developer_retries >= ctx.settings.max_developer_retries as i64 {
            pass.skipped
                .push((task.id, "developer retry cap reached".into()));
            continue;
        }
        if db
            .jobs_for_task(task.id)?
            .iter()
            .any(|j| j.status == "queued" || j.status == "running")
        {
            continue;
        }
        let Ok(project) = ctx.project(&task.project) else {
            pass.skipped
                .push((task.id, "project not in the registry".into()));
            continue;
        };
        pass.examined += 1;
        let facts = gate::gather(db, project, &ctx.repo(project), &task)?;
        if gate::decide(stage, &facts) != Gate::Pass {
            continue;
        }
        let to = stage.next();
        if stage == Stage::DeployStaging {
            // The merge is the worker's step, never the reconciler's.
            pass.skipped.push((
                task.id,
                "deploy-staging advances through the merge step".into(),
            ));
            continue;
        }
        if dry_run {
            pass.unblocked
                .push((task.id, stage.to_string(), to.to_string()));
            continue;
        }
        let m = Move::new(
            &task,
            to,
            Actor::Reconciler,
            format!("reconcile: {stage} gate passed"),
        );
        let moved = db.write(|tx| {
            let moved = pipeline::apply(tx, ctx.policy(), &m, now)?;
            if let Moved::Applied { version, .. } = moved {
                tx.bump_counter("reconcile.unblocked_total", 1)?;
                tx.insert_outbox(
                    &format!("task:{}:v{version}:reconcile", task.id),
                    Some(task.id),
                    "notify",
                    "unblocked",
                    &json!({ "text": format!("reconcile unblocked task {} ({}): {stage} → {to}", task.id, task.title) }),
                    now,
                )?;
            }
            Ok(moved)
        })?;
        if let Moved::Applied { .. } = moved {
            info!(target: "reconcile", task = task.id, from = %stage, to = %to, "unblocked");
            pass.unblocked
                .push((task.id, stage.to_string(), to.to_string()));
        }
    }
    Ok(pass)
}
