//! The `orch status` document (also served as `GET /queue`).

use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::db::Db;

/// Builds the status document: tasks by stage, jobs by status, running
/// jobs with their age in seconds, leases, inbox backlog and dead
/// letters, outbox by status, counters. Times are unix milliseconds.
pub fn document(db: &Db) -> anyhow::Result<Value> {
    let now = now_ms();
    let running: Vec<Value> = db
        .jobs_with_status(crate::model::JobStatus::Running)?
        .into_iter()
        .map(|j| {
            json!({
                "job_id": j.id, "task_id": j.task_id, "stage": j.stage, "role": j.role,
                "attempt": j.attempt, "worker_pid": j.worker_pid, "agent_pid": j.agent_pid,
                "age_s": (now - j.claimed_at_ms.unwrap_or(now)) / 1000,
                "exit_code": j.exit_code,
            })
        })
        .collect();
    let (pending, retrying, dead) = db.inbox_counts()?;
    let stages: Vec<Value> = db
        .tasks_by_stage()?
        .into_iter()
        .map(|(stage, escalated, count)| json!({ "stage": stage, "escalated": escalated, "count": count }))
        .collect();
    let leases = serde_json::to_value(db.leases()?)?;
    let as_map = |pairs: Vec<(String, i64)>| -> Value {
        Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect())
    };
    Ok(json!({
        "now_ms": now,
        "schema_version": db.user_version()?,
        "tasks": stages,
        "jobs": as_map(db.count_by_status("jobs")?),
        "running": running,
        "leases": leases,
        "inbox": { "pending": pending, "failing": retrying, "dead": dead },
        "outbox": as_map(db.count_by_status("outbox")?),
        "outbox_dead": db.dead_outbox(20)?.into_iter().map(|m| json!({
            "id": m.id, "key": m.dedupe_key, "channel": m.channel, "kind": m.kind,
            "attempts": m.attempts, "error": m.last_error,
        })).collect::<Vec<Value>>(),
        "counters": as_map(db.counters()?),
        "reconcile_last_pass": db.last_reconcile_pass()?.map(|p| json!({
            "at_ms": p["at_ms"], "examined": p["examined"],
            "unblocked": p["unblocked"].as_array().map_or(0, Vec::len),
            "replayed": p["replayed"].as_array().map_or(0, Vec::len),
            "errors": p["errors"],
            "skipped": p["skipped"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), json!(v.as_array().map_or(0, Vec::len)))).collect::<serde_json::Map<_, _>>()),
        })),
    }))
}
