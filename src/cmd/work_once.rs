//! `orch work-once`: claims at most one runnable job, runs it, finalizes it.

use super::Output;
use orch::ctx::Ctx;
use orch::error::Error;
use orch::worker::{self, WorkOutcome};

/// Runs `orch work-once`, optionally only for jobs of `role` or `project`.
pub fn run(ctx: &Ctx, role: Option<&str>, project: Option<&str>) -> anyhow::Result<Output> {
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
    let started = std::time::Instant::now();
    let o = worker::work_once(ctx, &db, role, project)?;
    let ran = usize::from(matches!(o, WorkOutcome::Ran { .. }));
    super::finish_tick(ctx, "work-once", started, &[("jobs", ran, true)]);
    let text = match &o {
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
    };
    Ok(Output {
        json: serde_json::to_value(&o)?,
        text,
    })
}
