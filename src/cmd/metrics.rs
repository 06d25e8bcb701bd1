//! `orch metrics [--textfile PATH]`: Prometheus text ([`orch::metrics`]).

use std::path::Path;

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::metrics;

/// Prints the metrics, or writes them to `textfile` atomically.
pub fn run(ctx: &Ctx, textfile: Option<&Path>) -> anyhow::Result<Output> {
    let db = ctx.open_db_read_only()?;
    let text = metrics::render(ctx, &db)?;
    Ok(match textfile {
        Some(path) => {
            metrics::write_textfile(path, &text)?;
            Output {
                json: json!({ "textfile": path, "bytes": text.len() }),
                text: format!(
                    "wrote {} bytes of metrics to {}",
                    text.len(),
                    path.display()
                ),
            }
        }
        None => Output {
            json: json!({ "metrics": text }),
            text,
        },
    })
}
