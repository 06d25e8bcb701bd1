//! `orch agents show ROLE [--task ID] [--stage STAGE] [--project NAME]`:
//! the argv, environment and prompt a run of ROLE gets, rendered exactly
//! as the worker renders them ([`orch::brief::render`]). With `--task`,
//! for that task (its feedback included); without, for an example task of
//! the project with `<placeholder>` values. Writes nothing.

use serde_json::json;

use super::Output;
use crate::cli::AgentsCommand;
use orch::brief::{self, RunOf};
use orch::config::ROLES;
use orch::ctx::Ctx;
use orch::db::Task;
use orch::error::Error;
use orch::pipeline::Stage;

/// Runs `orch agents <command>`.
pub fn run(ctx: &Ctx, c: AgentsCommand) -> anyhow::Result<Output> {
    let AgentsCommand::Show {
        role,
        task,
        stage,
        project,
    } = c;
    if !ROLES.contains(&role.as_str()) {
        return Err(Error::Usage(format!(
            "unknown role {role:?}; expected one of {}",
            ROLES.join(", ")
        ))
        .into());
    }
    let stage = match stage {
        Some(s) => Some(s.parse::<Stage>().map_err(Error::Usage)?),
        None => None,
    };
    let db = ctx.open_db_read_only()?;
    let task = match task {
        Some(id) => db
            .task(id)?
            .ok_or_else(|| Error::Usage(format!("no task {id}")))?,
        None => example_task(ctx, project.as_deref())?,
    };
    let stage = match stage {
        Some(s) => s,
        None if task.stage.role() == Some(role.as_str()) => task.stage,
        None => *Stage::ALL
            .iter()
            .find(|s| s.role() == Some(role.as_str()))
            .expect("every role has a stage"),
    };
    if stage.role() != Some(role.as_str()) {
        return Err(Error::Usage(format!(
            "the {role} does not run at {stage} (its agent is the {})",
            stage.role().unwrap_or("none")
        ))
        .into());
    }
    // The job that runs (or ran) this stage at the task's version, if any.
    let job = db
        .jobs_for_task(task.id)?
        .into_iter()
        .rev()
        .find(|j| j.stage == stage && j.task_version == task.version && j.role == role);
    let b = brief::render(
        ctx,
        &db,
        RunOf {
            task: &task,
            stage,
            role: &role,
            job: job.as_ref(),
        },
        &[],
    )?;
    let kind = ctx.config.agent(&role)?.kind;
    let mut text = format!(
        "role {role} at {stage}, task {}\nkind: {kind}\n\nargv:\n",
        task.id
    );
    for a in &b.argv {
        text += &format!("  {a}\n");
    }
    text += "env:\n";
    for (k, v) in &b.env {
        text += &format!("  {k}={v}\n");
    }
    text += &format!(
        "timeout: {} s\nverdict folder: {}\n\nprompt (stdin):\n{}",
        b.timeout_s,
        b.verdict_dir.display(),
        b.prompt
    );
    Ok(Output {
        json: json!({
            "role": role,
            "stage": stage,
            "task_id": task.id,
            "kind": kind,
            "argv": b.argv,
            "env": b.env.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "timeout_s": b.timeout_s,
            "verdict_dir": b.verdict_dir,
            "verdict_file": b.verdict_file,
            "feedback": b.feedback,
            "prompt": b.prompt,
        }),
        text,
    })
}

/// A stand-in task of `project` (default: the first configured) whose
/// fields read `<title>`, `<body>`…, for a preview without a task.
fn example_task(ctx: &Ctx, project: Option<&str>) -> anyhow::Result<Task> {
    let p = match project {
        Some(name) => ctx.project(name)?,
        None => ctx.config.projects.first().ok_or_else(|| {
            Error::config(
                "projects",
                "no project configured; add one to preview a prompt",
            )
        })?,
    };
    Ok(Task {
        id: 0,
        project: p.name.clone(),
        tracker_issue_id: String::new(),
        sequence: 0,
        title: "<title>".into(),
        body: "<body>".into(),
        stage: Stage::Analysis,
        version: 0,
        branch: format!("orch/{}-<n>", p.name),
        worktree: ctx
            .settings
            .worktrees_dir()
            .join(format!("{}-<n>", p.name))
            .to_string_lossy()
            .into_owned(),
        developer_retries: 0,
        escalated: false,
        escalated_reason: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        parked_at_ms: None,
        parked_reason: None,
        budget_waived: false,
    })
}
