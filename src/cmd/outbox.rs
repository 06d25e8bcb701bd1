//! `orch outbox list|retry`: the outbox of side effects, and sending its
//! dead letters again without SQL ([`orch::deliver::retry`]).

use serde_json::json;

use super::Output;
use crate::cli::OutboxCommand;
use orch::clock::now_ms;
use orch::ctx::Ctx;
use orch::db::OutboxRow;
use orch::deliver::{self, RetryWhich};
use orch::error::exit;

/// Runs `orch outbox <command>`; a retry runs under the `deliver` tick
/// lock. Returns the output and the exit code.
pub fn run(ctx: &Ctx, c: OutboxCommand) -> anyhow::Result<(Output, i32)> {
    match c {
        OutboxCommand::List { dead, limit } => {
            let db = ctx.open_db_read_only()?;
            let rows = if dead {
                db.dead_outbox(limit)?
            } else {
                db.recent_outbox(limit)?
            };
            Ok((
                Output {
                    json: serde_json::to_value(&rows)?,
                    text: list_text(&rows, dead, now_ms()),
                },
                exit::OK,
            ))
        }
        OutboxCommand::Retry {
            ids,
            all_dead,
            dry_run,
        } => {
            let _lock = ctx.tick_lock("deliver")?;
            let db = ctx.open_db()?;
            let which = if all_dead {
                RetryWhich::AllDead
            } else {
                RetryWhich::Ids(ids)
            };
            let by = operator();
            let r = super::run_or_rehearse(&db, dry_run, |db| deliver::retry(ctx, db, which, &by))?;
            let mut text = String::new();
            if dry_run {
                text += super::DRY_RUN_NOTE;
            }
            for m in &r.retried {
                text += &format!(
                    "retry message {} ({} {}{}), dead after {} attempt(s): {}\n",
                    m.id,
                    m.channel,
                    m.kind,
                    m.task_id.map(|t| format!(", task {t}")).unwrap_or_default(),
                    m.attempts,
                    m.error.as_deref().unwrap_or("")
                );
            }
            for (id, newer) in &r.superseded {
                text += &format!(
                    "skipped message {id}: a newer tracker state (message {newer}) was delivered since\n"
                );
            }
            if r.retried.is_empty() && r.superseded.is_empty() {
                text += "no dead letters\n";
            }
            let failed = !r.delivery.failed.is_empty();
            if dry_run {
                text += &super::deliver::would_text(&r.delivery);
            } else if !r.retried.is_empty() {
                text += &super::deliver::text(&r.delivery);
                for (id, e) in &r.delivery.failed {
                    text += &format!("\nmessage {id} failed again: {e}");
                }
            }
            Ok((
                Output {
                    json: json!({ "dry_run": dry_run, "by": by, "retried": r.retried, "superseded": r.superseded, "delivery": r.delivery }),
                    text,
                },
                if failed { exit::ERROR } else { exit::OK },
            ))
        }
    }
}

/// Who runs this command, for the retry's record: the login that ran
/// `sudo` (`SUDO_USER`), else `USER`/`LOGNAME`, else `unknown`.
fn operator() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// One line per message: id, status, route, task, attempts, and what
/// happened to it (delivered when, next attempt, the error).
fn list_text(rows: &[OutboxRow], dead: bool, now: i64) -> String {
    if rows.is_empty() {
        return if dead {
            "no dead letters\n".into()
        } else {
            "no outbox messages\n".into()
        };
    }
    let mut text = format!(
        "{:>5} {:<9} {:<8} {:<10} {:>5} {:>3}  {}\n",
        "id", "status", "channel", "kind", "task", "try", "detail"
    );
    for m in rows {
        let detail = match m.status.as_str() {
            "delivered" => format!(
                "delivered {}",
                orch::clock::ago(m.delivered_at_ms.unwrap_or(now), now)
            ),
            "dead" => m.last_error.clone().unwrap_or_default(),
            _ => match &m.last_error {
                Some(e) => format!(
                    "next attempt {}: {e}",
                    orch::clock::ago(m.next_attempt_at_ms.max(now), now)
                ),
                None => "due".into(),
            },
        };
        let retried = match (&m.retried_by, m.retried_at_ms) {
            (Some(by), Some(at)) => format!(
                "  [retried {}× by hand, last by {by} {}]",
                m.retries,
                orch::clock::ago(at, now)
            ),
            _ => String::new(),
        };
        text += &format!(
            "{:>5} {:<9} {:<8} {:<10} {:>5} {:>3}  {detail}{retried}\n",
            m.id,
            m.status,
            m.channel,
            m.kind,
            m.task_id
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            m.attempts
        );
    }
    text
}
