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
    let (id, mv, reason, dry_run) = match c {
        TaskCommand::List => return list(&ctx.open_db_read_only()?),
        TaskCommand::Show { id } => return show(ctx, &ctx.open_db_read_only()?, id),
        TaskCommand::Approve { id, dry_run } => (id, ManualMove::Approve, String::new(), dry_run),
        TaskCommand::Reject {
            id,
            reason,
            dry_run,
        } => (id, ManualMove::Reject, reason, dry_run),
        TaskCommand::Advance {
            id,
            reason,
            dry_run,
        } => (id, ManualMove::Advance, reason, dry_run),
        TaskCommand::Rollback {
            id,
            reason,
            dry_run,
        } => (id, ManualMove::Rollback, reason, dry_run),
        TaskCommand::Retry { id, dry_run } => (id, ManualMove::Retry, String::new(), dry_run),
        TaskCommand::Cancel {
            id,
            reason,
            dry_run,
        } => (id, ManualMove::Cancel, reason, dry_run),
        TaskCommand::Unblock {
            id,
            reason,
            dry_run,
        } => (id, ManualMove::Unblock, reason, dry_run),
        TaskCommand::Unpark { id, dry_run } => return unpark(&ctx.open_db()?, id, dry_run),
    };
    let db = ctx.open_db()?;
    let outcome = super::run_or_rehearse(&db, dry_run, |db| {
        manual::apply(db, ctx.policy(), id, mv, &reason, now_ms())
    })?;
    let note = if dry_run { super::DRY_RUN_NOTE } else { "" };
    Ok(match outcome {
        ManualOutcome::Gate(g) => Output {
            json: json!({ "task_id": id, "dry_run": dry_run, "outcome": g.to_string() }),
            text: format!("{note}{g}"),
        },
        ManualOutcome::Moved {
            task_id,
            from,
            to,
            version,
            next_job,
            escalated,
        } => Output {
            json: json!({ "task_id": task_id, "dry_run": dry_run, "from": from.as_str(), "to": to.as_str(), "version": version, "next_job": next_job, "escalated": escalated }),
            text: format!(
                "{note}task {task_id}: {from} → {to} (v{version}){}",
                if escalated { ", escalated" } else { "" }
            ),
        },
    })
}

/// `orch task unpark ID`: ends the park and waives the budgets for the
/// task's next job. Refused (exit 2) for a task that is not parked. With
/// `dry_run`, the same write is rehearsed and rolled back.
fn unpark(db: &Db, id: i64, dry_run: bool) -> anyhow::Result<Output> {
    let t = load(db, id)?;
    if t.parked_at_ms.is_none() {
        return Err(Error::Usage(format!("task {id} is not parked")).into());
    }
    super::run_or_rehearse(db, dry_run, |db| db.write(|tx| tx.unpark_task(id, true)))?;
    let note = if dry_run {
        super::DRY_RUN_NOTE
    } else {
        tracing::info!(target: "budget", task = id, "task unparked by hand; its next job runs regardless of the budgets");
        ""
    };
    Ok(Output {
        json: json!({ "task_id": id, "dry_run": dry_run, "unparked": true, "was": t.parked_reason }),
        text: format!("{note}task {id}: unparked; its next job runs regardless of the budgets"),
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

fn show(ctx: &Ctx, db: &Db, id: i64) -> anyhow::Result<Output> {
    let t = load(db, id)?;
    let transitions = db.transitions(id)?;
    let jobs = db.jobs_for_task(id)?;
    let usage = db.usage(Some(id))?;
    let messages = db.outbox(Some(id))?;
    let now = now_ms();
    let human = |ms: i64| orch::clock::human(ms, now);
    let mut text = format!(
        "task {} [{}] {}\n  stage {} v{}  branch {}  worktree {}\n  created {}, last change {}\n  developer retries {}{}\n",
        t.id,
        t.project,
        t.title,
        t.stage,
        t.version,
        t.branch,
        t.worktree,
        human(t.created_at_ms),
        human(t.updated_at_ms),
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
        text += &format!("  PARKED since {}: {reason}\n", human(since));
    }
    text += "transitions:\n";
    for tr in &transitions {
        text += &format!(
            "  v{:<3} {:<15} → {:<15} {:<10} {}  {}\n",
            tr.version,
            tr.from_stage.map_or("(new)", Stage::as_str),
            tr.to_stage,
            tr.actor,
            orch::clock::local_rfc3339(tr.at_ms),
            tr.reason
        );
    }
    text += "jobs:\n";
    let logs = ctx.settings.logs_dir();
    for j in &jobs {
        let ran = match (j.claimed_at_ms, j.finished_at_ms) {
            (Some(a), Some(b)) => format!(
                ", ran {}, finished {}",
                orch::clock::duration(b - a),
                orch::clock::ago(b, now)
            ),
            (Some(a), None) => format!(", claimed {}", orch::clock::ago(a, now)),
            _ => String::new(),
        };
        text += &format!(
            "  job {:<4} {:<15} {:<10} {} epoch {} exit {}{ran}{}\n",
            j.id,
            j.stage,
            j.status,
            j.attempt_text(),
            j.epoch,
            j.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            j.last_error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
        if j.status == orch::pipeline::JobStatus::Running {
            if let Some(r) = &j.runner {
                text += &format!("    runs ({r} runner, epoch {})\n", j.epoch);
            }
        }
        if let Some(run) = db.run_judgement(j.id)? {
            if let Some(r) = &run.runner {
                text += &format!(
                    "    run by the {r} runner{}\n",
                    if run.adopted {
                        ", adopted (recorded after its watcher died)"
                    } else {
                        ""
                    }
                );
            }
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
        if j.claimed_at_ms.is_some() {
            for ext in ["log", "prompt"] {
                let path = orch::worker::run_file(&logs, j, ext);
                if path.exists() {
                    text += &format!("    {ext:<6} {}\n", path.display());
                }
            }
        }
    }
    for r in db.fence_refusals(id)? {
        text += &format!(
            "  refused {}: {}\n",
            orch::clock::ago(r.at_ms, now),
            r.reason
        );
    }
    let denials: i64 = usage.iter().map(|u| u.permission_denials).sum();
    if denials > 0 {
        text += &format!(
            "permission denials: {denials} ({})\n",
            usage
                .iter()
                .filter(|u| u.permission_denials > 0)
                .map(|u| format!("{} {}", u.stage, u.permission_denials))
                .collect::<Vec<_>>()
                .join(", ")
        );
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
    let next = next_step(ctx, &t, &jobs, now);
    text += &format!("next: {next}\n");
    Ok(Output {
        json: json!({ "task": t, "transitions": transitions, "jobs": jobs, "usage": usage, "messages": messages, "next": next }),
        text,
    })
}

/// What a person does next with task `t`, as a command where there is one.
fn next_step(ctx: &Ctx, t: &Task, jobs: &[orch::db::Job], now: i64) -> String {
    let id = t.id;
    if t.escalated {
        return format!("escalated: orch task unblock {id}");
    }
    if t.stage == Stage::Done {
        return "done: nothing to do".into();
    }
    let active = jobs.iter().rev().find(|j| j.status.is_active());
    if let Some(f) = active.and_then(|j| orch::reap::finalize_failed(&ctx.settings, j)) {
        return format!(
            "job {}'s agent exited but its finalize failed ({}); {}",
            f.job_id,
            f.error,
            f.retry_text(now)
        );
    }
    match active {
        Some(j) if j.status == orch::model::JobStatus::Running => {
            format!("job {} is running: orch logs {} --follow", j.id, j.id)
        }
        Some(j) => format!(
            "job {} is queued: the next `orch tick` (or `orch work-once`) runs it",
            j.id
        ),
        None if t.stage == Stage::Analysis => format!(
            "analysis waits for approval: orch task approve {id} (or: orch task reject {id} --reason …)"
        ),
        None => format!("no job queued: orch task retry {id}"),
    }
}
