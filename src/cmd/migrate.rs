//! `orch migrate --from PATH`: copies an SQLite database into the
//! PostgreSQL database that `--db` / `ORCH_DB` names
//! ([`orch::db::copy_sqlite_to_postgres`]).

use std::path::Path;

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::error::Error;

/// Runs `orch migrate`: the copy (rolled back with `dry_run`), then one
/// line per table with its rows.
///
/// Errors: [`Error::Config`] (exit 2) when `--db` / `ORCH_DB` is not a
/// PostgreSQL URL; the copy's refusals and failures otherwise.
pub fn run(ctx: &Ctx, from: &Path, dry_run: bool) -> anyhow::Result<Output> {
    let url = postgres_url(ctx)?;
    let report = orch::db::copy_sqlite_to_postgres(from, &url, dry_run)?;
    let target = database_name(&url);
    let mut text = if dry_run {
        super::DRY_RUN_NOTE.to_string()
    } else {
        String::new()
    };
    text += &format!("{:<18} {:>8}\n", "table", "rows");
    for t in &report.tables {
        text += &format!("{:<18} {:>8}\n", t.table, t.rows);
    }
    text += &format!(
        "{} {} rows from {} (schema {}) into PostgreSQL database {target}{}\n",
        if dry_run { "would copy" } else { "copied" },
        report.total_rows(),
        from.display(),
        report.schema_version,
        if dry_run {
            " (rolled back)"
        } else {
            "; point ORCH_DB at it from now on"
        }
    );
    Ok(Output {
        json: json!({
            "dry_run": report.dry_run,
            "from": from,
            "to_database": target,
            "schema_version": report.schema_version,
            "total_rows": report.total_rows(),
            "tables": report.tables,
        }),
        text,
    })
}

/// The PostgreSQL URL `--db` / `ORCH_DB` holds ([`orch::db::postgres_url`]),
/// refused unless it is one.
fn postgres_url(ctx: &Ctx) -> Result<String, Error> {
    match orch::db::postgres_url(&ctx.settings.db_path) {
        Some(url) => Ok(url.to_string()),
        None => Err(Error::config(
            "ORCH_DB",
            format!(
                "{} is not a PostgreSQL URL: `orch migrate` copies into the database \
                 --db / ORCH_DB names, as postgres://… or postgresql://…",
                ctx.settings.db_path.display()
            ),
        )),
    }
}

/// The database name of `url`, for the output (never the URL: it may
/// hold a password).
fn database_name(url: &str) -> String {
    url.parse::<postgres::Config>()
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_string))
        .unwrap_or_else(|| "(default)".into())
}
