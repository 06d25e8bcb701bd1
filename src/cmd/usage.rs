//! `orch usage [--task ID]`: tokens and cost per task, stage and role.

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;

/// Runs `orch usage`, for one task or all, of all runs or those started
/// in the last `since` (`90s`, `30m`, `12h`, `7d`).
pub fn run(ctx: &Ctx, task: Option<i64>, since: Option<&str>) -> anyhow::Result<Output> {
    let since_ms = since
        .map(|s| parse_span(s).map(|span| orch::clock::now_ms() - span))
        .transpose()?;
    let db = ctx.open_db_read_only()?;
    if let Some(id) = task {
        if db.task(id)?.is_none() {
            return Err(orch::error::Error::Usage(format!("no task {id}")).into());
        }
    }
    let rows = db.usage_since(task, since_ms)?;
    let mut text = format!(
        "{:>5} {:<15} {:<10} {:>4} {:>12} {:>10} {:>12} {:>10}\n",
        "task", "stage", "role", "runs", "input(full)", "cached", "output", "cost_usd"
    );
    let (mut tin, mut tout, mut tcost, mut unpriced) = (0, 0, 0.0, 0);
    for r in &rows {
        let full = r.input_tokens + r.cache_read_input_tokens + r.cache_creation_input_tokens;
        tin += full;
        tout += r.output_tokens;
        tcost += r.cost_usd;
        unpriced += r.unknown_cost_runs;
        text += &format!(
            "{:>5} {:<15} {:<10} {:>4} {:>12} {:>10} {:>12} {:>10.4}{}{}{}\n",
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
            if r.unknown_cost_runs > 0 {
                format!(
                    "  ({} run(s) cost unknown: no cost reported, no price for the model)",
                    r.unknown_cost_runs
                )
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
    if let (Some(span), Some(ms)) = (since, since_ms) {
        text += &format!(
            "since {} (the last {span})\n",
            orch::clock::local_rfc3339(ms)
        );
    }
    text += &format!(
        "total: input {tin} tokens (incl. cache), output {tout} tokens, cost ${tcost:.4}{}\n",
        if unpriced > 0 {
            format!(" (without {unpriced} run(s) whose cost is unknown: add [prices.\"<model>\"] to price them)")
        } else {
            String::new()
        }
    );
    Ok(Output {
        json: json!({ "since_ms": since_ms, "rows": rows, "total": { "input_tokens_full": tin, "output_tokens": tout, "cost_usd": tcost, "unknown_cost_runs": unpriced } }),
        text,
    })
}

/// A span like `90s`, `30m` (or `30min`), `12h`, `7d` in milliseconds.
///
/// Errors: [`orch::error::Error::Usage`] naming the expected forms.
fn parse_span(s: &str) -> Result<i64, orch::error::Error> {
    let bad = || {
        orch::error::Error::Usage(format!(
            "--since {s:?}: expected a span such as 90s, 30m, 12h or 7d"
        ))
    };
    let digits = s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s.trim()[digits.len()..];
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit {
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).filter(|v| *v >= 0).ok_or_else(bad)
}
