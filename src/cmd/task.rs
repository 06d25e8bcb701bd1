//! `orch task …`: inspection, the human gate and ad-hoc repair. Every
//! change is a manual move of the core ([`orch::pipeline::manual`]); this
//! file names the move and prints its outcome.

use serde_json::json;

use super::Output;
use crate::cli::TaskCommand;
use orch::clock::now_ms;
use orch::ctx::Ctx;
use orch::db::{Db, Task};
use orch::error::Error;
use orch::pipeline::manual::{self, ManualMove, ManualOutcome};
use orch::pipeline::Stage;

fn load(db: &Db, id: i64) -> anyhow::Result<Task> {
    db.task(id)?
        .ok_or_else(|| Error::Usage(format!("no task {id}")).into())
}

/// Runs `orch task <command>`.
pub fn run(ctx: &Ctx, c: TaskCommand) -> anyhow::Result<Output> {
    let db = ctx.open_db()?;
    let (id, mv, reason) = match c {
        TaskCommand::List => return list(&db),
        TaskCommand::Show { id } => return show(&db, id),
        TaskCommand::Approve { id } => (id, ManualMove::Approve, String::new()),
        TaskCommand::Reject { id, reason } => (id, ManualMove::Reject, reason),
        TaskCommand::Advance { id, reason } => (id, ManualMove::Advance, reason),
        TaskCommand::Rollback { id, reason } => (id, ManualMove::Rollback, reason),
        TaskCommand::Retry { id } => (id, ManualMove::Retry, String::new()),
        TaskCommand::Cancel { id, reason } => (id, ManualMove::Cancel, reason),
        TaskCommand::Unblock { id, reason } => (id, ManualMove::Unblock, reason),
        TaskCommand::Unpark { id } => return unpark(&db, id),
    };
    let outcome = manual::apply(&db, ctx.policy(), id, mv, &reason, now_ms())?;
    Ok(match outcome {
        ManualOutcome::Gate(g) => Output {
            json: json!({ "task_id": id, "outcome": g.to_string() }),
            text: g.to_string(),
        },
        ManualOutcome::Moved {
            task_id,
            from,
            to,
            version,
            next_job,
            escalated,
        } => Output {
            json: json!({ "task_id": task_id, "from": from.as_str(), "to": to.as_str(), "version": version, "next_job": next_job, "escalated": escalated }),
            text: format!(
                "task {task_id}: {from} → {to} (v{version}){}",
                if escalated { ", escalated" } else { "" }
            ),
        },
    })
}

/// `orch task unpark ID`: ends the park and waives the budgets for the
/// task's next job. Refused (exit 2) for a task that is not parked.
fn unpark(db: &Db, id: i64) -> anyhow::Result<Output> {
    let t = load(db, id)?;
    if t.parked_at_ms.is_none() {
        return Err(Error::Usage(format!("task {id} is not parked")).into());
    }
    db.write(|tx| tx.unpark_task(id, true))?;
    tracing::info!(target: "budget", task = id, "task unparked by hand; its next job runs regardless of the budgets");
    Ok(Output {
        json: json!({ "task_id": id, "unparked": true, "was": t.parked_reason }),
        text: format!("task {id}: unparked; its next job runs regardless of the budgets"),
    })
}

fn list(db: &Db) -> anyhow::Result<Output> {
    let tasks = db.tasks()?;
    let mut text = format!(
        "{:>5} {:<12} {:<15} {:>3} {:<24} {}\n",
        "id", "project", "stage", "ver", "branch", "title"
    );
    for t in &tasks {
        text += &format!(
            "{:>5} {:<12} {:<15} {:>3} {:<24} {}{}\n",
            t.id,
            t.project,
            t.stage,
            t.version,
            t.branch,
            t.title,
            if t.escalated { "  [ESCALATED]" } else { "" }
        );
    }
    Ok(Output {
        json: serde_json::to_value(&tasks)?,
        text,
    })
}

fn show(db: &Db, id: i64) -> anyhow::Result<Output> {
    let t = load(db, id)?;
    let transitions = db.transitions(id)?;
    let jobs = db.jobs_for_task(id)?;
    let usage = db.usage(Some(id))?;
    let messages = db.outbox(Some(id))?;
    let mut text = format!(
        "task {} [{}] {}\n  stage {} v{}  branch {}  worktree {}\n  developer retries {}{}\n",
        t.id,
        t.project,
        t.title,
        t.stage,
        t.version,
        t.branch,
        t.worktree,
        t.developer_retries,
        if t.escalated {
            format!(
                "\n  ESCALATED: {}",
                t.escalated_reason.as_deref().unwrap_or("")
            )
        } else {
            String::new()
        }
    );
    if let (Some(since), Some(reason)) = (t.parked_at_ms, &t.parked_reason) {
        text += &format!(
            "  PARKED since {}: {reason}\n",
            orch::clock::format_ms(since)
        );
    }
    text += "transitions:\n";
    for tr in &transitions {
        text += &format!(
            "  v{:<3} {:<15} → {:<15} {:<10} {}\n",
            tr.version,
            tr.from_stage.map_or("(new)", Stage::as_str),
            tr.to_stage,
            tr.actor,
            tr.reason
        );
    }
    text += "jobs:\n";
    for j in &jobs {
        text += &format!(
            "  job {:<4} {:<15} {:<10} attempt {} exit {}{}\n",
            j.id,
            j.stage,
            j.status,
            j.attempt,
            j.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            j.last_error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
        if let Some(run) = db.run_judgement(j.id)? {
            let denials = orch::agent::name_denials(&run.denials);
            if !denials.is_empty() {
                text += &format!("    denied ({}): {}\n", denials.len(), denials.join(", "));
            }
            if let Some(e) = &run.error {
                text += &format!(
                    "    run failed{}: {}\n",
                    if e.retryable { "" } else { " (not retried)" },
                    e.reason
                );
            }
        }
    }
    text += "messages:\n";
    for m in &messages {
        text += &format!(
            "  [{}] {} {}: {}\n",
            m.status,
            m.channel,
            m.kind,
            m.payload
                .get("text")
                .and_then(|v| v.as_str())
                .unwrap_or(&m.payload.to_string())
        );
    }
    Ok(Output {
        json: json!({ "task": t, "transitions": transitions, "jobs": jobs, "usage": usage, "messages": messages }),
        text,
    })
}
