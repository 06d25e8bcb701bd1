//! `orch init`: creates or migrates the database and the state folders.

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::db::Db;

/// Runs `orch init`; says whether the database was created, migrated (from
/// which schema version) or already up to date.
pub fn run(ctx: &Ctx) -> anyhow::Result<Output> {
    ctx.ensure_state_dirs()?;
    let before = if ctx.settings.db_path.exists() {
        Some(Db::open_readonly_version(&ctx.settings.db_path)?)
    } else {
        None
    };
    let db = ctx.init_db()?;
    let version = db.user_version()?;
    let text = match before {
        Some(v) if v == version => format!(
            "database {} is up to date (schema {version})",
            ctx.settings.db_path.display()
        ),
        Some(v) => format!(
            "migrated {} from schema {v} to {version}",
            ctx.settings.db_path.display()
        ),
        None => format!(
            "created {} (schema {version})",
            ctx.settings.db_path.display()
        ),
    };
    Ok(Output {
        json: json!({
            "db": ctx.settings.db_path, "state_dir": ctx.settings.state_dir,
            "schema_version": version, "previous_version": before,
            "projects": ctx.config.projects.iter().map(|p| &p.name).collect::<Vec<_>>(),
        }),
        text,
    })
}
