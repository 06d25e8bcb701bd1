//! `orch events list|replay`: the inbox of webhook deliveries.

use serde_json::json;

use super::Output;
use crate::cli::EventsCommand;
use orch::ctx::Ctx;
use orch::ingest;

/// Runs `orch events <command>`; a replay runs under the `ingest` tick lock.
pub fn run(ctx: &Ctx, c: EventsCommand) -> anyhow::Result<Output> {
    match c {
        EventsCommand::List { failed, limit } => {
            let db = ctx.open_db_read_only()?;
            let rows = db.inbox(failed, limit)?;
            let text = if rows.is_empty() {
                "no deliveries".to_string()
            } else {
                rows.iter()
                    .map(|r| {
                        let state = if r.dead {
                            format!(
                                "DEAD after {} attempts: {}",
                                r.attempts,
                                r.error.as_deref().unwrap_or("")
                            )
                        } else if let Some(o) = &r.outcome {
                            o.clone()
                        } else if let Some(e) = &r.error {
                            format!("failing ({} attempts): {e}", r.attempts)
                        } else {
                            "pending".into()
                        };
                        format!(
                            "{:>5} {:<5} {:<14} {}  {}\n",
                            r.id, r.source, r.event, r.delivery_id, state
                        )
                    })
                    .collect()
            };
            Ok(Output {
                json: serde_json::to_value(&rows)?,
                text,
            })
        }
        EventsCommand::Replay { id, dry_run } => {
            let _lock = ctx.tick_lock("ingest")?;
            let db = ctx.open_db()?;
            let done = super::run_or_rehearse(&db, dry_run, |db| ingest::replay(ctx, db, id))?;
            let note = if dry_run { super::DRY_RUN_NOTE } else { "" };
            Ok(Output {
                json: json!({ "dry_run": dry_run, "inbox_id": done.inbox_id, "outcome": done.outcome }),
                text: format!("{note}delivery {}: {}", done.inbox_id, done.outcome),
            })
        }
    }
}
