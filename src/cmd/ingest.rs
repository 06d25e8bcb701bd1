//! `orch ingest`: pending deliveries, or one delivery from a file
//! (`--source --event --file`), through [`orch::ingest`].

use anyhow::Context as _;
use serde_json::json;

use super::Output;
use crate::cli::IngestArgs;
use orch::ctx::Ctx;
use orch::ingest;

/// Runs `orch ingest` under the `ingest` tick lock.
pub fn run(ctx: &Ctx, args: IngestArgs) -> anyhow::Result<Output> {
    let _lock = ctx.tick_lock("ingest")?;
    let db = ctx.open_db()?;
    if let (Some(source), Some(event), Some(file)) = (args.source, args.event, args.file) {
        let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let origin = file.display().to_string();
        let done = super::run_or_rehearse(&db, args.dry_run, |db| {
            ingest::ingest_file(ctx, db, source, &event, &body, &origin)
        })?;
        let note = if args.dry_run {
            super::DRY_RUN_NOTE
        } else {
            ""
        };
        return Ok(Output {
            json: json!({ "dry_run": args.dry_run, "inbox_id": done.inbox_id, "outcome": done.outcome }),
            text: format!("{note}delivery {}: {}", done.inbox_id, done.outcome),
        });
    }
    let started = std::time::Instant::now();
    let s = super::run_or_rehearse(&db, args.dry_run, |db| {
        ingest::ingest_pending(ctx, db, args.limit)
    })?;
    let mut text = String::new();
    if args.dry_run {
        text += super::DRY_RUN_NOTE;
    } else {
        super::finish_tick(ctx, "ingest", started, &counts(&s));
    }
    for (id, o) in &s.processed {
        text += &format!("delivery {id}: {o}\n");
    }
    for (id, e) in &s.failed {
        text += &format!("delivery {id}: FAILED: {e}\n");
    }
    if s.processed.is_empty() && s.failed.is_empty() {
        text += "no pending deliveries";
    }
    Ok(Output {
        json: serde_json::to_value(&s)?,
        text,
    })
}

/// The summary line's counts of an ingest pass.
pub fn counts(s: &ingest::IngestSummary) -> Vec<super::Count> {
    vec![
        ("processed", s.processed.len(), true),
        ("ingest_failed", s.failed.len(), true),
        ("inbox_dead", s.dead_lettered.len(), true),
    ]
}
