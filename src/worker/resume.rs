//! The worker's side of resume across a rescue (DESIGN §4 "Agents"): the
//! session id recorded on the job while the run goes, and a `--resume`
//! the CLI refused because it no longer has the session.

use std::path::Path;

use tracing::{info, warn};

use super::append_to_log;
use crate::agent::session::Watch;
use crate::clock::now_ms;
use crate::db::{Db, Job};
use crate::process;

/// Records on `job` the session id its agent printed, the first time
/// `watch` finds it in the run's log (epoch-guarded: a claim the reaper
/// took away records nothing).
pub(super) fn record_session_seen(db: &Db, job: &Job, watch: &mut Watch) -> anyhow::Result<()> {
    if let Some(id) = watch.poll() {
        if db.write(|tx| tx.record_job_session(job.id, job.epoch, &id))? {
            info!(target: "worker", job = job.id, task = job.task_id, epoch = job.epoch, session_id = %id, "agent session recorded");
        }
    }
    Ok(())
}

/// Whether the run that was to resume `session` ended because the CLI no
/// longer has it ([`crate::agent::session::resume_refused`], read from the
/// run's part of the log, from byte `from`). If so the session is
/// forgotten for good ([`crate::db::Tx::forget_session`]), the log and a
/// WARN say so, and the caller runs the agent again in a fresh session
/// within the same claim — no attempt is spent on an id that cannot work.
pub(super) fn resume_refused(
    db: &Db,
    job: &Job,
    kind: crate::config::AgentKind,
    session: Option<&str>,
    log_path: &Path,
    from: u64,
    outcome: &process::RunOutcome,
) -> anyhow::Result<bool> {
    let (Some(id), process::ExitKind::Code(code)) = (session, outcome.exit) else {
        return Ok(false);
    };
    let log = crate::untrusted::open_regular(log_path)
        .and_then(|mut f| {
            use std::io::Seek as _;
            f.seek(std::io::SeekFrom::Start(from))?;
            crate::untrusted::read_bounded(f, crate::agent::session::HEAD_MAX_BYTES, false)
        })
        .unwrap_or_default();
    if !crate::agent::session::resume_refused(kind, &String::from_utf8_lossy(&log), code.into(), id)
    {
        return Ok(false);
    }
    db.write(|tx| tx.forget_session(job, id, now_ms()))?;
    append_to_log(
        log_path,
        &format!("orch: the agent has no session {id}; starting a fresh session\n"),
    );
    warn!(target: "worker", job = job.id, task = job.task_id, attempt = job.attempt, session_id = %id, "session not found; starting a fresh session");
    Ok(true)
}
