//! `orch serve`: the webhook shim ([`orch::serve`]), with `GET /queue`
//! answered by the status document.

use orch::ctx::Ctx;
use orch::db::Db;
use orch::status;

/// Runs the shim until it stops; `bind` overrides `ORCH_BIND`.
pub fn run(ctx: &Ctx, bind: Option<String>) -> anyhow::Result<()> {
    // Creates and migrates the database before the first request arrives.
    drop(ctx.open_db()?);
    let mut opts = orch::serve::ServeOptions::from_settings(&ctx.settings);
    if let Some(bind) = bind {
        opts.bind = bind;
    }
    let (db_path, timeout) = (ctx.settings.db_path.clone(), ctx.settings.busy_timeout_ms);
    let queue: orch::serve::QueueFn = std::sync::Arc::new(move || {
        let doc = status::document(&Db::open(&db_path, timeout)?)?;
        Ok(serde_json::to_value(doc)?)
    });
    orch::serve::run_forever(opts, queue)
}
