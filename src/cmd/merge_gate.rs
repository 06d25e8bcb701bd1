//! `orch merge-gate --task ID [--dry-run] [--release]`: the merge gate by
//! hand (`orch::merge_gate::run_by_hand`), or the release of a stuck lease.
//! Exit 0 merged (or planned, or released), 3 rolled back, 75 deferred.

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::error::exit;
use orch::merge_gate::{self, ByHand};

/// Runs the command; returns what to print and the exit code.
pub fn run(ctx: &Ctx, task: i64, dry_run: bool, release: bool) -> anyhow::Result<(Output, i32)> {
    let db = ctx.open_db()?;
    if release {
        let names = merge_gate::release_by_hand(&db, task, dry_run)?;
        let verb = if dry_run { "would release" } else { "released" };
        let text = if names.is_empty() {
            format!("task {task} holds no merge lease")
        } else {
            names
                .iter()
                .map(|n| format!("{verb} {n} held by task:{task}\n"))
                .collect()
        };
        return Ok((
            Output {
                json: json!({ "task_id": task, "dry_run": dry_run, "released": names }),
                text,
            },
            exit::OK,
        ));
    }
    let report = merge_gate::run_by_hand(ctx, &db, task, dry_run)?;
    let code = match &report.result {
        ByHand::Merged { .. } | ByHand::Planned { .. } => exit::OK,
        ByHand::RolledBack { .. } => exit::VERDICT_FAIL,
        ByHand::Deferred { .. } => exit::BUSY,
    };
    let mut text = format!(
        "task {task}: merge gate{} ({})\n",
        if dry_run { " --dry-run" } else { "" },
        report
            .lease
            .as_deref()
            .map_or("no lease".to_string(), |l| format!("lease {l}"))
    );
    for step in &report.steps {
        text += &format!("  {step}\n");
    }
    text += &match &report.result {
        ByHand::Merged { sha, version } => {
            format!(
                "result: merged {} → deploy (v{version})\n",
                &sha[..sha.len().min(12)]
            )
        }
        ByHand::RolledBack { reason, escalated } => format!(
            "result: rolled back to development{}: {reason}\n",
            if *escalated { " and escalated" } else { "" }
        ),
        ByHand::Deferred { reason } => format!("result: deferred: {reason}\n"),
        ByHand::Planned { would } => format!("result: would {would}\n"),
    };
    Ok((
        Output {
            json: serde_json::to_value(&report)?,
            text,
        },
        code,
    ))
}
