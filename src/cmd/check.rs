//! `orch check`: verifies the invariants ([`orch::check`]); exit 3 when
//! one is violated.

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::error::exit;

/// Runs the check; returns what to print and the exit code.
pub fn run(ctx: &Ctx) -> anyhow::Result<(Output, i32)> {
    let db = ctx.open_db_read_only()?;
    let here = orch::fence::Here::at(orch::clock::now_ms());
    let stale_ms = ctx.settings.heartbeat_stale_s as i64 * 1000;
    let live = |j: &orch::db::Job| {
        here.worker_gone(j, stale_ms, &mut |pid, start| {
            orch::process::is_alive(pid as i32, start as u64)
        })
        .is_none()
    };
    let mut violations = orch::check::run(&db, &live)?;
    violations.extend(orch::check::repositories(ctx, &db)?);
    let text = if violations.is_empty() {
        "all invariants hold".to_string()
    } else {
        violations
            .iter()
            .map(|v| format!("VIOLATED {}: {}\n", v.invariant, v.detail))
            .collect()
    };
    let code = if violations.is_empty() {
        exit::OK
    } else {
        exit::VERDICT_FAIL
    };
    Ok((
        Output {
            json: json!({ "ok": violations.is_empty(), "violations": violations }),
            text,
        },
        code,
    ))
}
