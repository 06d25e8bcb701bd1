//! `orch reconcile [--dry-run]`: one reconcile pass ([`orch::reconcile`]).

use super::Output;
use orch::ctx::Ctx;
use orch::reconcile::{self, Pass};

/// Runs one pass under the `reconcile` tick lock.
pub fn run(ctx: &Ctx, dry_run: bool) -> anyhow::Result<Output> {
    let _lock = ctx.tick_lock("reconcile")?;
    let db = ctx.open_db()?;
    let started = std::time::Instant::now();
    let pass = reconcile::run(ctx, &db, dry_run)?;
    if !dry_run {
        super::finish_tick(ctx, "reconcile", started, &counts(&pass));
    }
    Ok(Output {
        json: serde_json::to_value(&pass)?,
        text: text(&pass, dry_run),
    })
}

/// The pass for people, one line per thing it did (`would …` in a dry run).
pub fn text(pass: &Pass, dry_run: bool) -> String {
    let would = if dry_run { "would " } else { "" };
    let mut text = String::new();
    if !pass.enabled {
        text += "reconcile is disabled (ORCH_RECONCILE_ENABLED=false)\n";
    }
    for (project, item, outcome) in &pass.replayed {
        text += &format!("{would}replay {project} work item {item}: {outcome}\n");
    }
    for (project, error) in &pass.errors {
        text += &format!("tracker of {project} failed: {error}\n");
    }
    for (inbox, outcome) in &pass.attributed {
        text += &format!("orphan CI status (delivery {inbox}): {outcome}\n");
    }
    text += &format!("examined {} task(s)\n", pass.examined);
    for (id, from, to) in &pass.unblocked {
        text += &format!("{would}advance task {id}: {from} → {to}\n");
    }
    for (id, why) in &pass.ci_failed {
        text += &format!("{would}send task {id} back to development: {why}\n");
    }
    for (why, ids) in &pass.skipped {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        text += &format!("skipped ({why}): task {}\n", ids.join(", "));
    }
    text
}

/// The summary line's counts of a pass: what it changed (unblocked,
/// attributed) and what went wrong raise the line; what it looked at does
/// not.
pub fn counts(p: &Pass) -> Vec<super::Count> {
    vec![
        ("examined", p.examined, false),
        ("unblocked", p.unblocked.len(), true),
        ("ci_failed", p.ci_failed.len(), true),
        ("replayed", p.replayed.len(), false),
        ("attributed", p.attributed.len(), true),
        ("errors", p.errors.len(), true),
    ]
}
