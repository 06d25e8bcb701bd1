//! `orch deliver`: sends due outbox messages ([`orch::deliver`]).

use super::Output;
use orch::ctx::Ctx;
use orch::deliver::{self, DeliverSummary};

/// Runs one delivery pass under the `deliver` tick lock.
/// With `dry_run`, lists the messages it would send (the same pass,
/// rehearsed: nothing is sent or written).
pub fn run(ctx: &Ctx, dry_run: bool) -> anyhow::Result<Output> {
    let _lock = ctx.tick_lock("deliver")?;
    let db = ctx.open_db()?;
    let started = std::time::Instant::now();
    let s = super::run_or_rehearse(&db, dry_run, |db| deliver::deliver_due(ctx, db, 1000))?;
    if dry_run {
        return Ok(Output {
            json: serde_json::json!({ "dry_run": true, "summary": s }),
            text: format!("{}{}", super::DRY_RUN_NOTE, would_text(&s)),
        });
    }
    super::finish_tick(ctx, "deliver", started, &counts(&s));
    Ok(Output {
        json: serde_json::to_value(&s)?,
        text: text(&s),
    })
}

/// A rehearsed pass for people: one line per message it would send.
pub fn would_text(s: &DeliverSummary) -> String {
    let mut text: String = s
        .would_send
        .iter()
        .map(|w| {
            format!(
                "send message {} ({} via {}{})\n",
                w.id,
                w.kind,
                w.route,
                w.task_id.map(|t| format!(", task {t}")).unwrap_or_default()
            )
        })
        .collect();
    if text.is_empty() {
        text = "no messages due\n".into();
    }
    if !s.deferred.is_empty() {
        text += &format!("deferred {} (an older message first)\n", s.deferred.len());
    }
    text
}

/// The pass for people, in one line of counts.
pub fn text(s: &DeliverSummary) -> String {
    format!(
        "delivered {}, failed {}, dead-lettered {}, waiting {}, deferred {}",
        s.delivered.len(),
        s.failed.len(),
        s.dead_lettered.len(),
        s.waiting.len(),
        s.deferred.len()
    )
}

/// The summary line's counts: messages left waiting or deferred (settings
/// missing, an older message first) do not raise the line each tick.
pub fn counts(s: &DeliverSummary) -> Vec<super::Count> {
    vec![
        ("delivered", s.delivered.len(), true),
        ("delivery_failed", s.failed.len(), true),
        ("outbox_dead", s.dead_lettered.len(), true),
        ("waiting", s.waiting.len(), false),
        ("deferred", s.deferred.len(), false),
    ]
}
