//! `orch deliver`: sends due outbox messages ([`orch::deliver`]).

use super::Output;
use orch::ctx::Ctx;
use orch::deliver::{self, DeliverSummary};

/// Runs one delivery pass under the `deliver` tick lock.
pub fn run(ctx: &Ctx) -> anyhow::Result<Output> {
    let _lock = ctx.tick_lock("deliver")?;
    let db = ctx.open_db()?;
    let started = std::time::Instant::now();
    let s = deliver::deliver_due(ctx, &db, 1000)?;
    super::finish_tick(ctx, "deliver", started, &counts(&s));
    Ok(Output {
        json: serde_json::to_value(&s)?,
        text: text(&s),
    })
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
