//! `orch logs JOB [--attempt N] [--follow]`: the agent log of a job's run
//! (`<state>/logs/job<id>-a<attempt>.log`), read-only.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use serde_json::json;

use super::Output;
use orch::ctx::Ctx;
use orch::error::Error;
use orch::model::JobStatus;

/// Prints the log of job `id` (its latest attempt, or `attempt`); with
/// `follow`, keeps printing what is appended while the job runs and returns
/// when it ends. `--json` prints the path and the text.
///
/// Errors: [`Error::Usage`] for an unknown job or attempt, or a job that
/// has not run yet.
pub fn run(
    ctx: &Ctx,
    id: i64,
    attempt: Option<i64>,
    follow: bool,
    json_mode: bool,
) -> anyhow::Result<Option<Output>> {
    let db = ctx.open_db_read_only()?;
    let mut job = db
        .job(id)?
        .ok_or_else(|| Error::Usage(format!("no job {id}")))?;
    if let Some(a) = attempt {
        if a < 1 || a > job.attempt {
            return Err(Error::Usage(format!(
                "job {id} has attempts 1 to {}, not {a}",
                job.attempt
            ))
            .into());
        }
        job.attempt = a;
    }
    let path = orch::worker::run_file(&ctx.settings.logs_dir(), &job, "log");
    let following = follow && attempt.is_none_or(|a| a == job.attempt);
    if !path.exists() && !following {
        return Err(Error::Usage(format!(
            "job {id} attempt {} has no log ({}; status {})",
            job.attempt,
            path.display(),
            job.status
        ))
        .into());
    }
    if json_mode || !following {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        return Ok(Some(Output {
            json: json!({ "job_id": id, "attempt": job.attempt, "status": job.status.as_str(), "path": path, "log": text }),
            text,
        }));
    }
    let mut offset = 0u64;
    loop {
        // Read the status first: whatever the job wrote before it ended is
        // in the file when we read it after.
        let running = db
            .job(id)?
            .is_some_and(|j| j.status == JobStatus::Running || j.status == JobStatus::Queued);
        if let Ok(mut f) = std::fs::File::open(&path) {
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            offset += buf.len() as u64;
            super::write_stdout(&buf)?;
        }
        if !running {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
