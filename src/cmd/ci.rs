//! `orch ci [--project P] [--dry-run]`: one pass of the local forge's CI
//! step ([`orch::ci`]).

use super::Output;
use orch::ci::{self, CiPass};
use orch::ctx::Ctx;
use orch::error::Error;

/// Runs one pass under the `ci` tick lock (busy: exit 75).
pub fn run(ctx: &Ctx, project: Option<&str>, dry_run: bool) -> anyhow::Result<Output> {
    if let Some(p) = project {
        if ctx.config.project(p).is_none() {
            return Err(Error::Usage(format!(
                "no project {p:?} in {}",
                ctx.settings.config_path.display()
            ))
            .into());
        }
    }
    let _lock = ctx.tick_lock("ci")?;
    if !dry_run {
        // A stop ends the pass before its next test.
        orch::process::stop_on_signals()?;
    }
    let db = ctx.open_db()?;
    let started = std::time::Instant::now();
    let pass = super::run_or_rehearse(&db, dry_run, |db| ci::run(ctx, db, project, dry_run))?;
    if !dry_run {
        super::finish_tick(ctx, "ci", started, &counts(&pass));
    }
    Ok(Output {
        json: serde_json::to_value(&pass)?,
        text: text(&pass),
    })
}

/// The pass for people: one line per head tested (or that would be).
pub fn text(pass: &CiPass) -> String {
    if pass.runs.is_empty() {
        return "no development head waits for CI\n".into();
    }
    let mut text = String::new();
    for r in &pass.runs {
        let sha = &r.sha[..r.sha.len().min(12)];
        text += &format!(
            "task {} ({}) at {sha}: {}; {}\n",
            r.task_id, r.project, r.state, r.outcome
        );
    }
    text
}

/// The summary line's counts: a tested head raises the line.
pub fn counts(pass: &CiPass) -> Vec<super::Count> {
    let tested = if pass.dry_run { 0 } else { pass.runs.len() };
    vec![("tested", tested, true)]
}
