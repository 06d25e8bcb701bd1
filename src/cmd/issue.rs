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
    } = c;
    let db = ctx.open_db()?;
    let (issue, task) = ingest::add_local_issue(ctx, &db, &project, &title, &body)?;
    Ok(Output {
        json: json!({ "issue_id": issue, "task_id": task }),
        text: format!("created local issue {issue} → task {task}"),
    })
}
