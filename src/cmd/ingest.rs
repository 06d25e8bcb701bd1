//! `orch ingest`: pending deliveries, or one delivery from a file
//! (`--source --event --file`), through [`orch::ingest`].

use anyhow::Context as _;
use serde_json::json;

use super::Output;
use crate::cli::{IngestArgs, SourceArg};
use orch::ctx::Ctx;
use orch::ingest;
use orch::webhook::Source;

/// Runs `orch ingest` under the `ingest` tick lock.
pub fn run(ctx: &Ctx, args: IngestArgs) -> anyhow::Result<Output> {
    let _lock = ctx.tick_lock("ingest")?;
    let db = ctx.open_db()?;
    if let (Some(source), Some(event), Some(file)) = (args.source, args.event, args.file) {
        let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let source = match source {
            SourceArg::Plane => Source::Plane,
            SourceArg::Gitea => Source::Gitea,
        };
        let done =
            ingest::ingest_file(ctx, &db, source, &event, &body, &file.display().to_string())?;
        return Ok(Output {
            json: json!(done),
            text: format!("delivery {}: {}", done.inbox_id, done.outcome),
        });
    }
    let started = std::time::Instant::now();
    let s = ingest::ingest_pending(ctx, &db, args.limit)?;
    super::finish_tick(ctx, "ingest", started, &counts(&s));
    let mut text = String::new();
    for (id, o) in &s.processed {
        text += &format!("delivery {id}: {o}\n");
    }
    for (id, e) in &s.failed {
        text += &format!("delivery {id}: FAILED: {e}\n");
    }
    if text.is_empty() {
        text = "no pending deliveries".into();
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
