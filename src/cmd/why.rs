//! `orch why TASK`: the task's causal chain and what it waits for
//! ([`orch::why`]), from a read-only connection.

use super::Output;
use orch::clock::now_ms;
use orch::ctx::Ctx;
use orch::db::{schema_version, Db};
use orch::error::Error;
use orch::why::{ago, explain};

/// Runs `orch why TASK`. Errors: no database, a database of another schema
/// version, no task `task` (usage, exit 2).
pub fn run(ctx: &Ctx, task: i64) -> anyhow::Result<Output> {
    let s = &ctx.settings;
    // Read-only: no migration, no project sync, no write transaction.
    let db = Db::open_existing(&s.db_path, s.busy_timeout_ms, false)?;
    let v = db.user_version()?;
    anyhow::ensure!(
        v == schema_version(),
        "the database is at schema {v}, this orch reads {}; run any other orch command (e.g. `orch status`) to migrate it",
        schema_version()
    );
    let why = explain(&db, task)?.ok_or_else(|| Error::Usage(format!("no task {task}")))?;
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
            "  v{:<3} {:>14} → {:<14} {:<10} {:<14} {}\n        caused by {}\n",
            l.version,
            l.from.map_or("(new)", |s| s.as_str()),
            l.to,
            l.actor,
            ago(l.at_ms, now),
            l.reason,
            l.cause.describe(now)
        );
    }
    Ok(Output {
        json: serde_json::to_value(&why)?,
        text,
    })
}
