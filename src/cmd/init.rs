//! `orch init`: creates or migrates the database and the state folders.

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::db::Db;

/// Runs `orch init`; says whether the database was created, migrated (from
/// which schema version) or already up to date.
/// With `dry_run` it says what it would create or migrate and writes
/// nothing.
pub fn run(ctx: &Ctx, dry_run: bool) -> anyhow::Result<Output> {
    if dry_run {
        return plan(ctx);
    }
    ctx.ensure_state_dirs()?;
    let before = Db::existing_version(&ctx.settings.db_path)?;
    let db = ctx.init_db()?;
    let version = db.user_version()?;
    let text = match before {
        Some(v) if v == version => format!(
            "database {} is up to date (schema {version})",
            orch::sql::shown(&ctx.settings.db_path)
        ),
        Some(v) => format!(
            "migrated {} from schema {v} to {version}",
            orch::sql::shown(&ctx.settings.db_path)
        ),
        None => format!(
            "created {} (schema {version})",
            orch::sql::shown(&ctx.settings.db_path)
        ),
    };
    Ok(Output {
        json: json!({
            "db": orch::sql::shown(&ctx.settings.db_path), "state_dir": ctx.settings.state_dir,
            "schema_version": version, "previous_version": before,
            "projects": ctx.config.projects.iter().map(|p| &p.name).collect::<Vec<_>>(),
        }),
        text,
    })
}

/// `orch init --dry-run`: the folders it would create and what it would do
/// to the database, from the files as they are.
fn plan(ctx: &Ctx) -> anyhow::Result<Output> {
    let s = &ctx.settings;
    let latest = orch::db::schema_version();
    let missing: Vec<_> = s.state_dirs().into_iter().filter(|d| !d.is_dir()).collect();
    let before = Db::existing_version(&s.db_path)?;
    let mut text = super::DRY_RUN_NOTE.to_string();
    for d in &missing {
        text += &format!("create folder {}\n", d.display());
    }
    text += &match before {
        Some(v) if v == latest => format!(
            "leave {} as it is (schema {latest}, up to date)\n",
            orch::sql::shown(&s.db_path)
        ),
        Some(v) if v > latest => format!(
            "refuse {}: schema {v} is newer than this orch ({latest})\n",
            orch::sql::shown(&s.db_path)
        ),
        Some(v) => format!(
            "migrate {} from schema {v} to {latest}\n",
            orch::sql::shown(&s.db_path)
        ),
        None => format!(
            "create {} (schema {latest})\n",
            orch::sql::shown(&s.db_path)
        ),
    };
    text += &format!(
        "sync {} project(s) into the registry\n",
        ctx.config.projects.len()
    );
    Ok(Output {
        json: json!({
            "dry_run": true, "db": orch::sql::shown(&s.db_path), "schema_version": latest,
            "previous_version": before, "create_folders": missing,
            "projects": ctx.config.projects.iter().map(|p| &p.name).collect::<Vec<_>>(),
        }),
        text,
    })
}
