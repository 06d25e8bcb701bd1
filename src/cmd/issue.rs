//! `orch issue add`: a work item in the local tracker.

use serde_json::json;

use super::Output;
use crate::cli::IssueCommand;
use orch::ctx::Ctx;
use orch::ingest;

/// Runs `orch issue <command>`.
pub fn run(ctx: &Ctx, c: IssueCommand) -> anyhow::Result<Output> {
    let IssueCommand::Add {
        project,
        title,
        body,
        dry_run,
    } = c;
    let db = ctx.open_db()?;
    let (issue, task) = super::run_or_rehearse(&db, dry_run, |db| {
        ingest::add_local_issue(ctx, db, &project, &title, &body)
    })?;
    let (note, verb) = if dry_run {
        (super::DRY_RUN_NOTE, "create")
    } else {
        ("", "created")
    };
    Ok(Output {
        json: json!({ "issue_id": issue, "task_id": task, "dry_run": dry_run }),
        text: format!("{note}{verb} local issue {issue} → task {task}"),
    })
}
