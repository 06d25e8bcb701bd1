//! `orch why TASK`: the task's causal chain and what it waits for
//! ([`orch::why`]), from a read-only connection.

use super::Output;
use orch::clock::ago;
use orch::clock::now_ms;
use orch::ctx::Ctx;
use orch::error::Error;
use orch::why::explain;

/// Runs `orch why TASK`. Errors: no database, a database of another schema
/// version, no task `task` (usage, exit 2).
pub fn run(ctx: &Ctx, task: i64) -> anyhow::Result<Output> {
    // Read-only: no migration, no project sync, no write transaction; a
    // missing or out-of-date database is an exit-2 error naming `orch init`.
    let db = ctx.open_db_read_only()?;
    let why = explain(&db, task, &ctx.settings, &|role| ctx.config.account(role))?
        .ok_or_else(|| Error::Usage(format!("no task {task}")))?;
    let now = now_ms();
    let mut text = format!(
        "task {} [{}] {}\n  at {} v{}{}\nwaits for: {}\nchain:\n",
        why.task_id,
        why.project,
        why.title,
        why.stage,
        why.version,
        if why.escalated { ", ESCALATED" } else { "" },
        why.waiting.describe(now)
    );
    for l in &why.chain {
        text += &format!(
            "  v{:<3} {:>14} → {:<14} {:<10} {:<14} {}\n        {}, caused by {}\n",
            l.version,
            l.from.map_or("(new)", |s| s.as_str()),
            l.to,
            l.actor,
            ago(l.at_ms, now),
            l.reason,
            l.moved_because,
            l.cause.describe(now)
        );
    }
    text += "jobs:\n";
    for j in &why.jobs {
        text += &format!("  {}\n", j.describe());
    }
    if !why.refused.is_empty() {
        text += "refused (stale claims, INV-10):\n";
        for r in &why.refused {
            text += &format!("  {} {}\n", ago(r.at_ms, now), r.reason);
        }
    }
    Ok(Output {
        json: serde_json::to_value(&why)?,
        text,
    })
}
