//! `orch task …`: inspection, the human gate and ad-hoc repair. Every
//! change goes through the transition rule with actor `human`.

use serde_json::json;

use super::Output;
use crate::cli::TaskCommand;
use orch::clock::now_ms;
use orch::ctx::Ctx;
use orch::db::{Db, Task};
use orch::error::Error;
use orch::pipeline::{self, Actor, Move, Moved, Stage};

fn load(db: &Db, id: i64) -> anyhow::Result<Task> {
    db.task(id)?
        .ok_or_else(|| Error::Usage(format!("no task {id}")).into())
}

pub fn run(ctx: &Ctx, c: TaskCommand) -> anyhow::Result<Output> {
    let db = ctx.open_db()?;
    match c {
        TaskCommand::List => {
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
        TaskCommand::Show { id } => show(&db, id),
        TaskCommand::Approve { id } => gate(ctx, &db, id, true, "approved by hand"),
        TaskCommand::Reject { id, reason } => gate(ctx, &db, id, false, &reason),
        TaskCommand::Advance { id, reason } => {
            let t = load(&db, id)?;
            let to = t.stage.next();
            manual(ctx, &db, Move::new(&t, to, Actor::Human, reason))
        }
        TaskCommand::Rollback { id, reason } => {
            let t = load(&db, id)?;
            manual(
                ctx,
                &db,
                Move::new(&t, Stage::Development, Actor::Human, reason),
            )
        }
        TaskCommand::Retry { id } => {
            let t = load(&db, id)?;
            if t.escalated {
                return Err(Error::Usage(format!(
                    "task {id} is escalated; use `orch task unblock {id}`"
                ))
                .into());
            }
            let stage = t.stage;
            manual(
                ctx,
                &db,
                Move::new(&t, stage, Actor::Human, "retry by hand"),
            )
        }
        TaskCommand::Cancel { id, reason } => {
            let t = load(&db, id)?;
            let stage = t.stage;
            let mut m = Move::new(&t, stage, Actor::Human, reason.clone());
            m.escalate = Some(reason);
            manual(ctx, &db, m)
        }
        TaskCommand::Unblock { id, reason } => {
            let t = load(&db, id)?;
            let stage = t.stage;
            let mut m = Move::new(&t, stage, Actor::Human, reason);
            m.reset = true;
            manual(ctx, &db, m)
        }
    }
}

fn gate(ctx: &Ctx, db: &Db, id: i64, approve: bool, reason: &str) -> anyhow::Result<Output> {
    let t = load(db, id)?;
    let outcome = db.write(|tx| {
        pipeline::human_gate(
            tx,
            ctx.policy(),
            &t,
            approve,
            Actor::Human,
            reason,
            now_ms(),
        )
    })?;
    if outcome.starts_with("no pipeline action") {
        return Err(Error::Usage(outcome).into());
    }
    Ok(Output {
        json: json!({ "task_id": id, "outcome": outcome }),
        text: outcome,
    })
}

/// A manual move: cancels the task's other jobs and applies the move in
/// one transaction.
fn manual(ctx: &Ctx, db: &Db, m: Move) -> anyhow::Result<Output> {
    if m.to == Stage::Done || m.from == Stage::Done {
        return Err(Error::Usage(format!(
            "task {} cannot move {} → {} by hand",
            m.task_id, m.from, m.to
        ))
        .into());
    }
    let now = now_ms();
    let moved = db.write(|tx| {
        let moved = pipeline::apply(tx, ctx.policy(), &m, now)?;
        if let Moved::Applied { next_job, .. } = &moved {
            pipeline::job::cancel_task_jobs(
                tx,
                m.task_id,
                *next_job,
                &format!("superseded: {}", m.reason),
                now,
            )?;
        }
        Ok(moved)
    })?;
    match moved {
        Moved::Applied {
            version,
            next_job,
            escalated,
        } => Ok(Output {
            json: json!({ "task_id": m.task_id, "from": m.from.as_str(), "to": m.to.as_str(), "version": version, "next_job": next_job, "escalated": escalated }),
            text: format!(
                "task {}: {} → {} (v{version}){}",
                m.task_id,
                m.from,
                m.to,
                if escalated { ", escalated" } else { "" }
            ),
        }),
        Moved::Lost => {
            Err(Error::Usage(format!("task {} changed meanwhile; look again", m.task_id)).into())
        }
    }
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
