//! `orch config show|check`: the effective configuration with where each
//! setting came from, and the checks that it can work
//! ([`orch::config_check`]). Reads the database only to show cached
//! tracker states, read-only, and needs none.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Output, Sources};
use crate::cli::ConfigCommand;
use orch::config::{example_vars, is_secret, known_keys, render, ROLES};
use orch::config_check::{self, Check};
use orch::ctx::Ctx;
use orch::error::exit;

/// `.env.example`, whose uncommented values are the defaults.
const ENV_EXAMPLE: &str = include_str!("../../.env.example");

/// Runs `orch config show` or `orch config check`; exit 3 when a check
/// fails.
pub fn run(ctx: &Ctx, c: ConfigCommand, sources: &Sources) -> anyhow::Result<(Output, i32)> {
    // The database is optional here: cached Plane states, online checks.
    let db = ctx.open_db_read_only().ok();
    match c {
        ConfigCommand::Show => Ok((show(ctx, db.as_ref(), sources)?, exit::OK)),
        ConfigCommand::Check { online } => {
            let checks = config_check::run(ctx, db.as_ref(), online);
            let failed = checks.iter().filter(|c| !c.ok).count();
            Ok((
                Output {
                    json: json!({ "ok": failed == 0, "checks": checks }),
                    text: check_text(&checks, failed),
                },
                if failed == 0 {
                    exit::OK
                } else {
                    exit::VERDICT_FAIL
                },
            ))
        }
    }
}

fn check_text(checks: &[Check], failed: usize) -> String {
    let mut text: String = checks
        .iter()
        .map(|c| {
            format!(
                "{} {}: {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )
        })
        .collect();
    text += &if failed == 0 {
        format!("all {} checks passed\n", checks.len())
    } else {
        format!("{failed} of {} checks failed\n", checks.len())
    };
    text
}

/// The defaults `.env.example` documents: its uncommented `KEY=VALUE` lines.
pub fn documented_defaults() -> BTreeMap<&'static str, &'static str> {
    ENV_EXAMPLE
        .lines()
        .filter(|l| l.starts_with("ORCH_"))
        .filter_map(|l| l.split_once('='))
        .collect()
}

fn show(ctx: &Ctx, db: Option<&orch::db::Db>, sources: &Sources) -> anyhow::Result<Output> {
    let defaults = documented_defaults();
    // The settings file's name as the source: `.env (<path>)` for a
    // `.env`, else its path (`/etc/orch/orch.env`).
    let dotenv = sources.dotenv.as_ref().map(|p| {
        if p.file_name().is_some_and(|n| n == ".env") {
            format!(".env ({})", p.display())
        } else {
            p.display().to_string()
        }
    });
    let mut settings = Vec::new();
    for key in known_keys().into_iter().filter(|k| k.starts_with("ORCH_")) {
        // Variables orch sets for its agents, and the test clock, are not
        // settings.
        if [
            "ORCH_TASK_ID",
            "ORCH_STAGE",
            "ORCH_ROLE",
            "ORCH_JOB_ID",
            "ORCH_VERDICT_FILE",
            "ORCH_TEST_CLOCK_OFFSET_MS",
            "ORCH_TEST_WALL_JUMP_MS",
            "ORCH_TICK_LOCKS",
        ]
        .contains(&key.as_str())
        {
            continue;
        }
        // A secret read at start is no longer in the environment.
        let set = match sources.dropped.contains(&key) {
            true => Some("[redacted]".to_string()),
            false => std::env::var(&key).ok(),
        }
        .filter(|v| !v.trim().is_empty());
        let (value, source) = match set {
            Some(v) if sources.from_env.contains(&key) => (Some(v), "environment".to_string()),
            Some(v) => (Some(v), dotenv.clone().unwrap_or_else(|| ".env".into())),
            None => (
                defaults
                    .get(key.as_str())
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
                "default".to_string(),
            ),
        };
        let value = match value {
            Some(_) if is_secret(&key) => Some("[redacted]".to_string()),
            // A PostgreSQL URL may carry its password.
            Some(v) if key == "ORCH_DB" => Some(orch::sql::shown(std::path::Path::new(&v))),
            v => v,
        };
        settings.push((key, value, source));
    }
    let vars = example_vars();
    let mut agents = Vec::new();
    for role in ROLES {
        let entry = match ctx.config.agent(role) {
            Ok(a) => {
                let from = if ctx.config.agents.contains_key(role) {
                    role
                } else {
                    "default"
                };
                let argv: Vec<String> = a
                    .argv
                    .iter()
                    .map(|x| render(x, &vars).unwrap_or_else(|e| format!("<{e}>")))
                    .collect();
                json!({ "role": role, "agent": from, "kind": a.kind, "argv": argv,
                        "timeout_s": a.timeout_s.unwrap_or(ctx.settings.agent_timeout_s) })
            }
            Err(e) => json!({ "role": role, "error": e.to_string() }),
        };
        agents.push(entry);
    }
    let mut projects = Vec::new();
    for p in &ctx.config.projects {
        let states = config_check::resolved_states(p, db)?;
        projects.push(json!({
            "name": p.name, "tracker": p.tracker.as_str(), "tracker_project_id": p.tracker_project_id,
            "forge": p.forge.as_str(), "repo": p.repo, "clone_url": p.clone_url,
            "default_branch": p.default_branch, "test_command": p.test_command,
            "test_timeout_s": p.test_timeout_s, "auto_approve_analysis": p.auto_approve_analysis,
            "states": states,
        }));
    }

    let s = &ctx.settings;
    let mut text = format!(
        "paths:\n  config   {}\n  database {}\n  state    {}\n",
        s.config_path.display(),
        orch::sql::shown(&s.db_path),
        s.state_dir.display()
    );
    text += "settings:\n";
    for (key, value, source) in &settings {
        text += &format!(
            "  {key:<40} {:<24} {source}\n",
            value.as_deref().unwrap_or("(unset)")
        );
    }
    text += "agents:\n";
    for a in &agents {
        match a["error"].as_str() {
            Some(e) => text += &format!("  {:<10} {e}\n", a["role"].as_str().unwrap_or("")),
            None => {
                let argv: Vec<&str> = a["argv"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                text += &format!(
                    "  {:<10} [{}, {}] {}\n",
                    a["role"].as_str().unwrap_or(""),
                    a["agent"].as_str().unwrap_or(""),
                    a["kind"].as_str().unwrap_or(""),
                    argv.join(" ")
                );
            }
        }
    }
    text += "projects:\n";
    for p in &ctx.config.projects {
        text += &format!(
            "  {} ({} tracker, {} forge {}): {} branch {}, tests: {}\n",
            p.name,
            p.tracker.as_str(),
            p.forge.as_str(),
            p.repo,
            p.clone_url,
            p.default_branch,
            p.test_command.join(" ")
        );
        for st in config_check::resolved_states(p, db)? {
            text += &format!(
                "    {:<12} {:<14} {} ({})\n",
                st.kind,
                st.name,
                st.id.as_deref().unwrap_or("-"),
                st.from
            );
        }
    }
    if ctx.config.projects.is_empty() {
        text += "  none\n";
    }
    Ok(Output {
        json: json!({
            "paths": { "config": s.config_path, "db": orch::sql::shown(&s.db_path), "state_dir": s.state_dir },
            "settings": settings.iter().map(|(k, v, src)| json!({ "key": k, "value": v, "source": src })).collect::<Vec<_>>(),
            "agents": agents,
            "projects": projects,
        }),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.env.example` says "shown values are the defaults": setting each to
    /// its shown value changes nothing, so `config show` can trust them.
    #[test]
    fn the_documented_defaults_are_the_real_ones() {
        let defaults = documented_defaults();
        assert!(defaults.len() > 20, "{defaults:?}");
        let plain = orch::config::Settings::load(&|_| None, None, None).unwrap();
        let mut documented =
            orch::config::Settings::load(&|k| defaults.get(k).map(|v| v.to_string()), None, None)
                .unwrap();
        // ORCH_CONFIG=orch.toml names the default file explicitly; a
        // missing config is an error either way (`Ctx::load`).
        documented.config_explicit = plain.config_explicit;
        assert_eq!(format!("{plain:?}"), format!("{documented:?}"));
        let known = known_keys();
        for k in defaults.keys() {
            assert!(known.contains(*k), "{k} in .env.example is not a setting");
        }
    }
}
