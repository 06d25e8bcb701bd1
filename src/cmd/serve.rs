//! `orch serve`: the webhook shim ([`orch::serve`]), with its admin
//! listener's `GET /queue` (the status document) and `GET /metrics`.

use orch::ctx::Ctx;
use orch::db::Db;
use orch::error::Error;
use orch::status;

/// Runs the shim until it stops; `bind` overrides `ORCH_BIND`.
pub fn run(ctx: &Ctx, bind: Option<String>) -> anyhow::Result<()> {
    let mut opts = orch::serve::ServeOptions::from_settings(&ctx.settings);
    let key = if bind.is_some() {
        "--bind"
    } else {
        "ORCH_BIND"
    };
    if let Some(bind) = bind {
        opts.bind = bind;
    }
    check_bind(key, &opts.bind)?;
    // The database must exist (`orch init`) before the first request.
    drop(ctx.open_db()?);
    let settings = ctx.settings.clone();
    let queue_ctx = ctx.clone();
    let queue: orch::serve::QueueFn = std::sync::Arc::new(move || {
        let opts = status::Options {
            limit: Some(status::LIST_LIMIT),
            reconcile_ran_at_ms: queue_ctx.tick_last_ok("reconcile"),
        };
        let db = Db::open_read_only(&settings.db_path, settings.busy_timeout_ms)?;
        let doc = status::document(&db, &settings, &opts)?;
        Ok(serde_json::to_value(doc)?)
    });
    let metrics_ctx = ctx.clone();
    let metrics: orch::serve::MetricsFn = std::sync::Arc::new(move || {
        let db = metrics_ctx.open_db_read_only()?;
        orch::metrics::render(&metrics_ctx, &db)
    });
    orch::serve::run_forever(opts, orch::serve::Admin { queue, metrics })
}

/// Refuses a bind address that is not `HOST:PORT` (exit 2, naming `key`).
fn check_bind(key: &str, bind: &str) -> Result<(), Error> {
    use std::net::ToSocketAddrs;
    match bind.to_socket_addrs() {
        Ok(addrs) if addrs.len() > 0 => Ok(()),
        Ok(_) => Err(Error::config(key, format!("{bind:?} resolves to no address"))),
        Err(e) => Err(Error::config(
            key,
            format!("{bind:?} is not an address to listen on (expected HOST:PORT, e.g. 127.0.0.1:8500): {e}"),
        )),
    }
}
