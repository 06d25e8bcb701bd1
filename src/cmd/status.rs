//! `orch status`: the status document ([`orch::status`]), as JSON or text.

use super::Output;
use orch::ctx::Ctx;
use orch::status;

/// Runs `orch status`.
pub fn run(ctx: &Ctx) -> anyhow::Result<Output> {
    let db = ctx.open_db_read_only()?;
    let doc = status::document(&db, &ctx.settings)?;
    Ok(Output {
        text: doc.to_string(),
        json: serde_json::to_value(&doc)?,
    })
}
