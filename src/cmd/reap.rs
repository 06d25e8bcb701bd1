//! `orch reap [--dry-run]`: one reaper pass ([`orch::reap`]).

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::reap;

/// Runs one pass under the `reap` tick lock; `dry_run` prints the plan.
pub fn run(ctx: &Ctx, dry_run: bool) -> anyhow::Result<Output> {
    let _lock = ctx.tick_lock("reap")?;
    let db = ctx.open_db()?;
    let plan = reap::plan(ctx, &db, orch::clock::now_ms())?;
    if dry_run {
        let text = if plan.is_empty() {
            "nothing to reap".to_string()
        } else {
            plan.iter().map(|a| format!("would {a}\n")).collect()
        };
        return Ok(Output {
            json: json!({ "dry_run": true, "actions": plan }),
            text,
        });
    }
    db.mark_host_seen(orch::clock::now_ms())?;
    let started = std::time::Instant::now();
    let done = reap::execute(ctx, &db, plan)?;
    super::finish_tick(ctx, "reap", started, &counts(&done));
    Ok(Output {
        json: json!({ "dry_run": false, "actions": done }),
        text: text(&done),
    })
}

/// The executed actions for people, one line each.
pub fn text(done: &[reap::Done]) -> String {
    if done.is_empty() {
        "nothing to reap".to_string()
    } else {
        done.iter()
            .map(|d| format!("{}: {}\n", d.action, d.result))
            .collect()
    }
}

/// The summary line's counts of a reaper pass.
pub fn counts(done: &[reap::Done]) -> Vec<super::Count> {
    vec![("actions", done.len(), true)]
}
