//! `orch work-once`: claims at most one runnable job, runs it, finalizes it.

use super::Output;
use orch::ctx::Ctx;
use orch::error::Error;
use orch::worker::{self, WorkOutcome};

/// Runs `orch work-once`, optionally only for jobs of `role` or `project`.
/// With `dry_run`, the claim is rehearsed and rolled back: it prints the
/// job it would claim and the argv it would run, and runs nothing.
pub fn run(
    ctx: &Ctx,
    role: Option<&str>,
    project: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Output> {
    if let Some(role) = role {
        if !orch::config::ROLES.contains(&role) {
            return Err(Error::Usage(format!(
                "no role {role:?}; roles are {}",
                orch::config::ROLES.join(", ")
            ))
            .into());
        }
    }
    if let Some(project) = project {
        if ctx.config.project(project).is_none() {
            return Err(Error::Usage(format!(
                "no project {project:?} in {}; projects: {}",
                ctx.settings.config_path.display(),
                ctx.config
                    .projects
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
    }
    let db = ctx.open_db()?;
    if !dry_run {
        db.mark_host_seen(orch::clock::now_ms())?;
        // `systemctl stop` sends SIGTERM: stop the agent's group and
        // record why instead of dying with it running (main re-raises).
        orch::process::stop_on_signals()?;
    }
    let started = std::time::Instant::now();
    let o = super::run_or_rehearse(&db, dry_run, |db| worker::work_once(ctx, db, role, project))?;
    if !dry_run {
        let ran = usize::from(matches!(o, WorkOutcome::Ran { .. }));
        super::finish_tick(ctx, "work-once", started, &[("jobs", ran, true)]);
    }
    let note = if dry_run { super::DRY_RUN_NOTE } else { "" };
    let text = note.to_string() + &text(&o);
    Ok(Output {
        json: serde_json::to_value(&o)?,
        text,
    })
}

/// One outcome for people (`orch work-once`, and each job of `orch tick`).
pub fn text(o: &WorkOutcome) -> String {
    match o {
        WorkOutcome::Idle => "nothing runnable".to_string(),
        WorkOutcome::Ran {
            job_id,
            task_id,
            stage,
            exit_code,
            finalized,
        } => {
            format!("job {job_id} (task {task_id}, {stage}): agent exited {exit_code}; {finalized}")
        }
        WorkOutcome::Stopped {
            job_id,
            task_id,
            stage,
            signal,
        } => format!(
            "job {job_id} (task {task_id}, {stage}): stopped by {signal}; the agent's process group was stopped and the job requeued without counting the attempt"
        ),
        WorkOutcome::Left {
            job_id,
            task_id,
            stage,
            signal,
        } => format!(
            "job {job_id} (task {task_id}, {stage}): stopped by {signal}; its detached run was left going for a later tick to adopt"
        ),
        WorkOutcome::WouldRun {
            job_id,
            task_id,
            stage,
            role,
            attempt,
            argv,
        } => format!(
            "claim job {job_id} (task {task_id}, {stage}, role {role}, attempt {attempt}) and run: {}",
            shell_words(argv)
        ),
    }
}

/// `argv` as a shell would need it typed: words with spaces or quotes in
/// single quotes.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
