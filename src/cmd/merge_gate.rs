//! `orch merge-gate [--project P] [--dry-run]`: the merge line
//! (`orch::merge_gate::run_line`); `orch merge-gate --task ID [--dry-run]
//! [--release]`: the merge gate by hand (`orch::merge_gate::run_by_hand`),
//! or the release of a stuck lease. The line exits 0, or 1 when a project's line failed (the others still ran); by hand: 0 merged
//! (or planned, or released), 3 rolled back, 75 deferred.

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

/// The merge line (every project, or `project`); prints each batch.
/// Exit 0, or 1 when a project's line failed (the others still ran).
pub fn line(ctx: &Ctx, project: Option<&str>, dry_run: bool) -> anyhow::Result<(Output, i32)> {
    let db = ctx.open_db()?;
    // One line at a time per host (as in `orch tick`); busy → exit 75.
    let _lock = if dry_run {
        None
    } else {
        Some(ctx.tick_lock("merge-line")?)
    };
    let reports = merge_gate::run_line(ctx, &db, project, dry_run)?;
    let mut text = String::new();
    if reports.is_empty() {
        text += "merge line: nothing ready to merge\n";
    }
    for r in &reports {
        text += &format!(
            "{}: merge line{} ({})\n",
            r.project,
            if dry_run { " --dry-run" } else { "" },
            r.lease
                .as_deref()
                .map_or("no lease".to_string(), |l| format!("lease {l}"))
        );
        for step in &r.steps {
            text += &format!("  {step}\n");
        }
        for b in r.batches.iter().filter(|_| !dry_run) {
            let list = |ids: &[i64]| {
                ids.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            text += &format!(
                "  batch {}: landed [{}]{}, sent back [{}], back in line [{}], taken out [{}]; {} test run(s), {} split(s), {} flaky retr{}\n",
                b.batch_id.unwrap_or(0),
                list(&b.landed),
                b.tip
                    .as_deref()
                    .map(|t| format!(" at {}", &t[..t.len().min(12)]))
                    .unwrap_or_default(),
                list(&b.sent_back.iter().map(|(t, _)| *t).collect::<Vec<_>>()),
                list(&b.requeued),
                list(&b.taken_out.iter().map(|(t, _)| *t).collect::<Vec<_>>()),
                b.tests,
                b.splits,
                b.flaky_retries,
                if b.flaky_retries == 1 { "y" } else { "ies" }
            );
        }
        if let Some(busy) = &r.busy {
            text += &format!("  waits: {busy}\n");
        }
        if let Some(error) = &r.error {
            text += &format!("  error: {error}\n");
        }
    }
    let code = if reports.iter().any(|r| r.error.is_some()) {
        exit::ERROR
    } else {
        exit::OK
    };
    Ok((
        Output {
            json: json!({ "dry_run": dry_run, "projects": reports }),
            text,
        },
        code,
    ))
}
