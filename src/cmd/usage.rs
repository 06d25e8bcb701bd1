//! `orch usage [--task ID]`: tokens and cost per task, stage and role.

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;

/// Runs `orch usage`, for one task or all.
pub fn run(ctx: &Ctx, task: Option<i64>) -> anyhow::Result<Output> {
    let db = ctx.open_db_read_only()?;
    if let Some(id) = task {
        if db.task(id)?.is_none() {
            return Err(orch::error::Error::Usage(format!("no task {id}")).into());
        }
    }
    let rows = db.usage(task)?;
    let mut text = format!(
        "{:>5} {:<15} {:<10} {:>4} {:>12} {:>10} {:>12} {:>10}\n",
        "task", "stage", "role", "runs", "input(full)", "cached", "output", "cost_usd"
    );
    let (mut tin, mut tout, mut tcost) = (0, 0, 0.0);
    for r in &rows {
        let full = r.input_tokens + r.cache_read_input_tokens + r.cache_creation_input_tokens;
        tin += full;
        tout += r.output_tokens;
        tcost += r.cost_usd;
        text += &format!(
            "{:>5} {:<15} {:<10} {:>4} {:>12} {:>10} {:>12} {:>10.4}{}{}\n",
            r.task_id,
            r.stage,
            r.role,
            r.runs,
            full,
            r.cache_read_input_tokens + r.cache_creation_input_tokens,
            r.output_tokens,
            r.cost_usd,
            if r.unknown_usage_runs > 0 {
                format!("  ({} run(s) usage unknown)", r.unknown_usage_runs)
            } else {
                String::new()
            },
            if r.permission_denials > 0 {
                format!("  ({} permission denial(s))", r.permission_denials)
            } else {
                String::new()
            },
        );
    }
    text += &format!(
        "total: input {tin} tokens (incl. cache), output {tout} tokens, cost ${tcost:.4}\n"
    );
    Ok(Output {
        json: json!({ "rows": rows, "total": { "input_tokens_full": tin, "output_tokens": tout, "cost_usd": tcost } }),
        text,
    })
}
