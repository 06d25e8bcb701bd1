//! `orch deliver`: send due outbox messages, at least once, deduplicated
//! by key.
//!
//! A message is written inside the transition's transaction (the outbox
//! pattern) and delivered here afterwards. Each message is sent and then
//! marked delivered; a crash between the two re-sends it on the next pass,
//! so every channel must be idempotent by the message's dedupe key (the
//! local channels are: a state set twice is the same state, a log line is
//! a log line). A failure is retried with exponential backoff and jitter,
//! and dead-lettered after `ORCH_OUTBOX_MAX_ATTEMPTS`; one channel's
//! failure never blocks another's messages.
//!
//! Channels here: the local tracker (state of `local_issues`; comments
//! are kept in the outbox itself) and the log notifier. Messages for
//! Plane/Gitea/Telegram wait, pending, until their adapters exist.

use serde::Serialize;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::{Db, OutboxRow};
use crate::failpoint::failpoint;

/// What a delivery pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeliverSummary {
    pub delivered: Vec<i64>,
    pub failed: Vec<(i64, String)>,
    pub dead_lettered: Vec<i64>,
    /// Messages left pending because no adapter handles their channel yet.
    pub waiting: Vec<i64>,
}

/// The result of sending one message.
enum Sent {
    Ok(Option<String>),
    NoAdapter(String),
}

/// Delivers up to `limit` due messages.
///
/// Assumptions: the caller holds the `deliver` tick lock.
pub fn deliver_due(ctx: &Ctx, db: &Db, limit: i64) -> anyhow::Result<DeliverSummary> {
    let mut summary = DeliverSummary::default();
    for msg in db.due_outbox(now_ms(), limit)? {
        match send(ctx, db, &msg) {
            Ok(Sent::Ok(remote)) => {
                failpoint("deliver.after_send");
                db.write(|tx| tx.mark_outbox_delivered(msg.id, remote.as_deref(), now_ms()))?;
                summary.delivered.push(msg.id);
            }
            Ok(Sent::NoAdapter(why)) => {
                info!(target: "deliver", message = msg.id, why = %why, "left pending");
                summary.waiting.push(msg.id);
            }
            Err(e) => {
                let err = format!("{e:#}");
                let attempts = msg.attempts + 1;
                let dead = attempts >= ctx.settings.outbox_max_attempts as i64;
                let next = now_ms() + backoff_ms(attempts, msg.id);
                db.write(|tx| tx.mark_outbox_failed(msg.id, &err, next, dead))?;
                warn!(target: "deliver", message = msg.id, key = %msg.dedupe_key, attempts, dead, error = %err, "delivery failed");
                if dead {
                    summary.dead_lettered.push(msg.id);
                }
                summary.failed.push((msg.id, err));
            }
        }
    }
    Ok(summary)
}

/// Exponential backoff with deterministic jitter: 2^attempts seconds
/// (capped at one hour) plus up to 25 % derived from the message id.
pub fn backoff_ms(attempts: i64, id: i64) -> i64 {
    let base = 1000i64 << attempts.clamp(0, 12);
    let base = base.min(3_600_000);
    base + (id.wrapping_mul(7919) % 1000).abs() * base / 4000
}

fn send(ctx: &Ctx, db: &Db, msg: &OutboxRow) -> anyhow::Result<Sent> {
    failpoint("deliver.before_send");
    let task = match msg.task_id {
        Some(id) => db.task(id)?,
        None => None,
    };
    let project = task.as_ref().and_then(|t| ctx.config.project(&t.project));
    let text = msg
        .payload
        .get("text")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match msg.channel.as_str() {
        "notify" => {
            info!(target: "notify", key = %msg.dedupe_key, kind = %msg.kind, "{text}");
            Ok(Sent::Ok(None))
        }
        "tracker" => match project.map(|p| p.tracker.as_str()) {
            Some("local") | None => {
                let task = task.as_ref();
                let state = msg.payload.get("state").and_then(|v| v.as_str());
                if let (Some(t), Some(state)) = (task, state.filter(|_| msg.kind == "state")) {
                    // Tasks created from a Plane delivery have no local issue:
                    // their state change is only logged.
                    let issue = t.tracker_issue_id.parse::<i64>().ok();
                    let known = issue
                        .map(|i| db.local_issue_state(i))
                        .transpose()?
                        .flatten()
                        .is_some();
                    if known {
                        db.write(|tx| {
                            tx.set_local_issue_state(issue.unwrap_or_default(), state, now_ms())
                        })?;
                    }
                    info!(target: "tracker", key = %msg.dedupe_key, task = t.id, "state → {state}");
                } else {
                    info!(target: "tracker", key = %msg.dedupe_key, "comment: {text}");
                }
                Ok(Sent::Ok(None))
            }
            Some(other) => Ok(Sent::NoAdapter(format!(
                "tracker {other} adapter not available"
            ))),
        },
        other => Ok(Sent::NoAdapter(format!("channel {other} has no adapter"))),
    }
}
