//! `orch status`: the status document ([`orch::status`]), as JSON or text.

use super::Output;
use orch::ctx::Ctx;
use orch::status::{self, Options};

/// Runs `orch status`; `all` lifts the lists' bound
/// ([`status::LIST_LIMIT`]).
pub fn run(ctx: &Ctx, all: bool) -> anyhow::Result<Output> {
    let db = ctx.open_db_read_only()?;
    let opts = Options {
        limit: (!all).then_some(status::LIST_LIMIT),
        reconcile_ran_at_ms: ctx.tick_last_ok("reconcile"),
    };
    let doc = status::document(&db, &ctx.settings, &opts)?;
    Ok(Output {
        text: doc.to_string(),
        json: serde_json::to_value(&doc)?,
    })
}
