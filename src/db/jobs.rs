//! Jobs (`jobs`), their agent runs (`agent_runs`) and verdicts
//! (`verdicts`).

use crate::sql::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Db, Tx};
use crate::model::{JobStatus, Stage};

/// A job row.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub task_id: i64,
    pub stage: Stage,
    pub role: String,
    pub task_version: i64,
    pub status: JobStatus,
    pub attempt: i64,
    pub available_at_ms: i64,
    pub worker_host: Option<String>,
    pub worker_pid: Option<i64>,
    pub worker_start_time: Option<i64>,
    pub agent_pid: Option<i64>,
    pub agent_start_time: Option<i64>,
    pub claimed_at_ms: Option<i64>,
    pub heartbeat_at_ms: Option<i64>,
    pub timeout_s: Option<i64>,
    pub exit_code: Option<i64>,
    pub exit_recorded_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// A deploy-staging job whose merge was deferred: its agent's exit and
    /// verdict stand; the next claim runs only the merge (migration 3).
    pub merge_pending: bool,
    /// How often this job's merge was deferred (lease busy, main moving).
    pub merge_defers: i64,
    /// Failed finalizes of the current attempt (migration 6), toward
    /// `ORCH_FINALIZE_MAX_ATTEMPTS`.
    pub finalize_failures: i64,
    /// Runs of this job stopped by an account limit (migration 10): their
    /// attempt numbers do not count toward `ORCH_JOB_MAX_ATTEMPTS`.
    pub free_attempts: i64,
    /// The worker's boot-clock reading (`clock::boot_ms`, of boot
    /// `worker_boot`) at the claim (migration 15).
    pub claimed_boot_ms: Option<i64>,
    /// The worker's boot-clock reading at its last heartbeat.
    pub heartbeat_boot_ms: Option<i64>,
    /// The worker's boot-clock reading when the agent's exit was recorded.
    pub exit_boot_ms: Option<i64>,
    /// When `available_at_ms` was last set (unix ms; `None` for a job
    /// not queued since migration 15).
    pub scheduled_at_ms: Option<i64>,
    /// The claim's epoch (migration 23): 1 for a job's first claim, one
    /// more for every later claim; 0 for a job never claimed. Effects
    /// outside the database are fenced on it (DESIGN §11 INV-10).
    pub epoch: i64,
    /// Origin's head of the task branch when this claim's run started
    /// (migration 26): `Some("")` when origin had no such branch, `None`
    /// when not recorded. The lease of the claim's push.
    pub claim_sha: Option<String>,
    /// The claimer's host id (`ORCH_HOST_ID`, [`crate::process::host_id`];
    /// migration 26), `None` for a claim of an older orch.
    pub host_id: Option<String>,
    /// How the current claim's agent runs (migration 27): `child`,
    /// `supervisor` or `systemd` ([`crate::process::detached`]); `None`
    /// until it started (and for a claim before migration 27).
    pub runner: Option<String>,
    /// Where the current claim's detached run is found again: a
    /// supervisor's `pid:start_time:boot_id`, a systemd unit's name.
    pub run_handle: Option<String>,
    /// The boot id (`/proc/sys/kernel/random/boot_id`) of the worker's
    /// machine (migration 28); `worker_host` is its host id. `None` while
    /// no worker holds the job.
    pub worker_boot: Option<String>,
}

impl Job {
    /// The attempt as people and `ORCH_JOB_MAX_ATTEMPTS` count it: the
    /// claim's number less the runs an account limit stopped, which did
    /// not count (`free_attempts`). `attempt` itself numbers the runs (the
    /// log files, `orch logs --attempt`), so it can pass the cap.
    pub fn counted_attempt(&self) -> i64 {
        self.attempt - self.free_attempts
    }

    /// `attempt 2`, or `attempt 2 (run 3)` when runs stopped by an
    /// account limit did not count (`orch logs --attempt` takes the run).
    pub fn attempt_text(&self) -> String {
        if self.free_attempts > 0 {
            format!("attempt {} (run {})", self.counted_attempt(), self.attempt)
        } else {
            format!("attempt {}", self.attempt)
        }
    }
}

pub(super) const JOB_COLS: &str = "id, task_id, stage, role, task_version, status, attempt, available_at_ms, \
    worker_host, worker_pid, worker_start_time, agent_pid, agent_start_time, claimed_at_ms, \
    heartbeat_at_ms, timeout_s, exit_code, exit_recorded_at_ms, last_error, created_at_ms, finished_at_ms, \
    merge_pending, merge_defers, finalize_failures, free_attempts, claimed_boot_ms, heartbeat_boot_ms, \
    exit_boot_ms, scheduled_at_ms, epoch, claim_sha, host_id, runner, run_handle, worker_boot";

pub(super) fn job_row(r: &Row) -> crate::sql::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        task_id: r.get(1)?,
        stage: r.get(2)?,
        role: r.get(3)?,
        task_version: r.get(4)?,
        status: r.get(5)?,
        attempt: r.get(6)?,
        available_at_ms: r.get(7)?,
        worker_host: r.get(8)?,
        worker_pid: r.get(9)?,
        worker_start_time: r.get(10)?,
        agent_pid: r.get(11)?,
        agent_start_time: r.get(12)?,
        claimed_at_ms: r.get(13)?,
        heartbeat_at_ms: r.get(14)?,
        timeout_s: r.get(15)?,
        exit_code: r.get(16)?,
        exit_recorded_at_ms: r.get(17)?,
        last_error: r.get(18)?,
        created_at_ms: r.get(19)?,
        finished_at_ms: r.get(20)?,
        merge_pending: r.get(21)?,
        merge_defers: r.get(22)?,
        finalize_failures: r.get(23)?,
        free_attempts: r.get(24)?,
        claimed_boot_ms: r.get(25)?,
        heartbeat_boot_ms: r.get(26)?,
        exit_boot_ms: r.get(27)?,
        scheduled_at_ms: r.get(28)?,
        epoch: r.get(29)?,
        claim_sha: r.get(30)?,
        host_id: r.get(31)?,
        runner: r.get(32)?,
        run_handle: r.get(33)?,
        worker_boot: r.get(34)?,
    })
}

/// Usage and outcome of one agent run, for `agent_runs`.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub pid: Option<i64>,
    pub argv: Vec<String>,
    pub exit_code: i64,
    pub duration_ms: i64,
    pub success: Option<bool>,
    pub usage: Option<(i64, i64, i64, i64)>,
    pub cost_usd: Option<f64>,
    pub session_id: Option<String>,
    pub permission_denials: Option<serde_json::Value>,
    pub log_path: String,
    pub started_at_ms: i64,
    /// Why the run failed, when it did (see [`crate::agent::run_error`]).
    pub error: Option<crate::agent::RunError>,
    /// The branch head the run started on.
    pub base_sha: Option<String>,
    /// The account limit that stopped the run, if one did.
    pub limit: Option<crate::agent::LimitHit>,
    /// The agent kind that ran.
    pub kind: crate::config::AgentKind,
    /// The CLI's session-cumulative usage, where it reports one
    /// ([`crate::agent::AgentResult::cumulative`]).
    pub cumulative: Option<crate::agent::Usage>,
    /// The runner that ran it (`child`, `supervisor`, `systemd`).
    pub runner: Option<String>,
    /// Whether a process other than the one that started the run recorded
    /// its end (a detached run adopted after its watcher died).
    pub adopted: bool,
}

/// What orch judged of a job's latest run ([`Db::run_judgement`]).
#[derive(Debug, Clone, Default)]
pub struct RunJudgement {
    pub error: Option<crate::agent::RunError>,
    /// Raw `{tool_name, tool_use_id, tool_input}` objects.
    pub denials: Vec<serde_json::Value>,
    pub base_sha: Option<String>,
    pub session_id: Option<String>,
    /// The account limit that stopped the run: kind and reset (unix ms).
    pub limit: Option<(crate::agent::LimitKind, Option<i64>)>,
    /// The runner that ran it (`child`, `supervisor`, `systemd`; `None`
    /// before migration 27).
    pub runner: Option<String>,
    /// Recorded by another process than the one that started it (a
    /// detached run adopted after its watcher died).
    pub adopted: bool,
}

/// Usage and outcome of a job's latest agent run, for the run report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunUsage {
    pub run_id: i64,
    pub attempt: i64,
    pub exit_code: Option<i64>,
    /// The agent's result said success (None: no result, usage unknown).
    pub success: Option<bool>,
    pub usage_known: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cost_usd: f64,
    pub duration_ms: Option<i64>,
}

impl Db {
    /// The job with `id`.
    pub fn job(&self, id: i64) -> anyhow::Result<Option<Job>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id=?1"))?
            .query_row([id], job_row)
            .optional()?)
    }

    /// Jobs of a task that are queued or running.
    pub fn active_jobs(&self, task_id: i64) -> anyhow::Result<Vec<Job>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE task_id=?1 AND status IN ('queued','running') ORDER BY id"
        ))?;
        let rows = stmt.query_map([task_id], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `task`'s latest job of `stage` at the task's current version (the
    /// job whose gate the task waits on, e.g. the deploy-staging job whose
    /// PASS put the task in the merge line), if any.
    pub fn latest_job_at(&self, task: &super::Task, stage: Stage) -> anyhow::Result<Option<Job>> {
        Ok(self
            .jobs_for_task(task.id)?
            .into_iter()
            .rev()
            .find(|j| j.stage == stage && j.task_version == task.version))
    }

    /// Jobs of a task, oldest first.
    pub fn jobs_for_task(&self, task_id: i64) -> anyhow::Result<Vec<Job>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE task_id=?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([task_id], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Jobs with `status`, oldest first.
    pub fn jobs_with_status(&self, status: JobStatus) -> anyhow::Result<Vec<Job>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE status=?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([status], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Running jobs whose agent's exit is recorded and whose finalize
    /// failed at least once this attempt, oldest first: they wait for the
    /// reaper (`reap::finalize_failed` reads each).
    pub fn finalize_failed_jobs(&self) -> anyhow::Result<Vec<Job>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE status='running' \
             AND exit_recorded_at_ms IS NOT NULL AND finalize_failures>0 ORDER BY id"
        ))?;
        let rows = stmt.query_map([], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// At most `limit` jobs with `status`, oldest first.
    pub fn jobs_with_status_limit(
        &self,
        status: JobStatus,
        limit: usize,
    ) -> anyhow::Result<Vec<Job>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE status=?1 ORDER BY id LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![status, limit], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest verdict recorded for (task, stage) at or after task
    /// version `since_version`'s job, i.e. the verdict of `job_id` — the
    /// agent's (or orch's `UNREADABLE`), not the staging suite's, which
    /// is stored beside it with source `staging`.
    pub fn verdict_for_job(&self, job_id: i64) -> anyhow::Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT verdict, summary FROM verdicts WHERE job_id=?1 AND source <> 'staging' \
                 ORDER BY id DESC LIMIT 1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The merge lease a deferred merge of job `id` waits for
    /// (`jobs.deferred_on`, migration 8), if any.
    pub fn job_deferred_on(&self, id: i64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT deferred_on FROM jobs WHERE id=?1")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// The latest agent run of a job.
    pub fn last_run_for_job(
        &self,
        job_id: i64,
    ) -> anyhow::Result<Option<(i64, Option<bool>, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, success, exit_code FROM agent_runs WHERE job_id=?1 ORDER BY attempt DESC LIMIT 1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?.unwrap_or(-1))),
            )
            .optional()?)
    }

    /// orch's judgement of the latest agent run of job `job_id`: its error
    /// and retry class, permission denials, base sha and session id.
    /// `None` when the job has no run. A malformed denials column reads as
    /// no denials.
    pub fn run_judgement(&self, job_id: i64) -> anyhow::Result<Option<RunJudgement>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT error, retryable, permission_denials, base_sha, session_id, limit_kind, \
                 limit_reset_ms, runner, adopted FROM agent_runs \
                 WHERE job_id=?1 ORDER BY attempt DESC LIMIT 1",
            )?
            .query_row([job_id], |r| {
                let error: Option<String> = r.get(0)?;
                let retryable: bool = r.get(1)?;
                let denials: Option<String> = r.get(2)?;
                Ok(RunJudgement {
                    error: error.map(|reason| crate::agent::RunError { reason, retryable }),
                    denials: denials
                        .and_then(|d| serde_json::from_str::<Vec<serde_json::Value>>(&d).ok())
                        .unwrap_or_default(),
                    base_sha: r.get(3)?,
                    session_id: r.get(4)?,
                    limit: match r.get::<_, Option<String>>(5)?.as_deref() {
                        Some("usage") => Some((crate::agent::LimitKind::Usage, r.get(6)?)),
                        Some("rate") => Some((crate::agent::LimitKind::Rate, r.get(6)?)),
                        _ => None,
                    },
                    runner: r.get(7)?,
                    adopted: r.get(8)?,
                })
            })
            .optional()?)
    }

    /// The session id of the latest run of `role` on task `task_id` that
    /// reported one (for `resume`), unless the CLI said it no longer has
    /// that session ([`Tx::forget_session`]): then `None`, never an older
    /// one.
    pub fn last_session(&self, task_id: i64, role: &str) -> anyhow::Result<Option<String>> {
        let last: Option<String> = self
            .conn
            .query_row(
                "SELECT session_id FROM agent_runs WHERE task_id=?1 AND role=?2 \
                 AND session_id IS NOT NULL ORDER BY id DESC LIMIT 1",
                params![task_id, role],
                |r| r.get(0),
            )
            .optional()?;
        match last {
            Some(id) if self.session_gone(task_id, role, &id)? => Ok(None),
            last => Ok(last),
        }
    }

    /// The session id recorded on job `job_id` while its latest run went
    /// (`jobs.session_id`, [`Tx::record_job_session`]), unless the CLI
    /// has since said it no longer has it. What a rescued job resumes.
    pub fn job_session(&self, job_id: i64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT j.session_id FROM jobs j WHERE j.id=?1 AND j.session_id IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM gone_sessions g WHERE g.task_id=j.task_id \
                 AND g.role=j.role AND g.session_id=j.session_id)",
            )?
            .query_row([job_id], |r| r.get(0))
            .optional()?)
    }

    /// Whether the CLI said it no longer has session `session_id` of
    /// `role` on task `task_id` ([`Tx::forget_session`]).
    pub fn session_gone(&self, task_id: i64, role: &str, session_id: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM gone_sessions WHERE task_id=?1 AND role=?2 AND session_id=?3",
            )?
            .query_row(params![task_id, role, session_id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// What orch has recorded as spent in session `session_id` of `role`
    /// on task `task_id`: the sum of its runs' known costs, in US dollars
    /// (0 when none). A CLI that reports the session's total cost
    /// (Claude Code on `--resume`) is diffed against it
    /// ([`crate::agent::AgentResult::scope_cost_to_run`]), so every dollar
    /// is counted once — a killed run's, which has no row, by the run that
    /// resumes its session. Only the same task and role: an id the agent
    /// printed never reaches another task's figures.
    pub fn session_spent(&self, task_id: i64, role: &str, session_id: &str) -> anyhow::Result<f64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(cost_usd), 0.0) FROM agent_runs WHERE session_id=?1 \
                 AND task_id=?2 AND role=?3 AND cost_known=1",
            )?
            .query_row(params![session_id, task_id, role], |r| r.get(0))?)
    }

    /// The session-cumulative usage stored with the latest run of `role`
    /// on task `task_id` in session `session_id` that has one (for
    /// [`crate::agent::AgentResult::scope_to_run`]). Only the same task and
    /// role: an id the agent printed never reaches another task's figures.
    /// A malformed column reads as none.
    pub fn session_cumulative(
        &self,
        task_id: i64,
        role: &str,
        session_id: &str,
    ) -> anyhow::Result<Option<crate::agent::Usage>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT cumulative_usage FROM agent_runs WHERE session_id=?1 AND task_id=?2 \
                 AND role=?3 AND cumulative_usage IS NOT NULL ORDER BY id DESC LIMIT 1",
                params![session_id, task_id, role],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Usage of the latest agent run of job `job_id`.
    pub fn run_usage(&self, job_id: i64) -> anyhow::Result<Option<RunUsage>> {
        Ok(self.conn
            .prepare_cached(
                "SELECT id, attempt, exit_code, success, usage_known, input_tokens, output_tokens, \
                 cache_read_input_tokens, cache_creation_input_tokens, cost_usd, duration_ms \
                 FROM agent_runs WHERE job_id=?1 ORDER BY attempt DESC LIMIT 1",
            )?
            .query_row([job_id], |r| {
                Ok(RunUsage {
                    run_id: r.get(0)?,
                    attempt: r.get(1)?,
                    exit_code: r.get(2)?,
                    success: r.get(3)?,
                    usage_known: r.get(4)?,
                    input_tokens: r.get(5)?,
                    output_tokens: r.get(6)?,
                    cache_read_input_tokens: r.get(7)?,
                    cache_creation_input_tokens: r.get(8)?,
                    cost_usd: r.get(9)?,
                    duration_ms: r.get(10)?,
                })
            })
            .optional()?)
    }

    /// How many jobs are running.
    pub fn running_job_count(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE status='running'")?
            .query_row([], |r| r.get(0))?)
    }

    /// The oldest runnable job at `now_ms`: queued, available, of a task
    /// that is not escalated, optionally of `role` and `project`, of no
    /// role in `skip_roles` (roles at their concurrency limit) and of no
    /// task in `skip_tasks` (parked by a budget in this claim); with
    /// whether its task has moved past it (another stage or version: the
    /// job can never run). Reads the `jobs_status` index from its head.
    /// The skip lists are checked per row (`NOT EXISTS` over `json_each`):
    /// `NOT IN` built two temporary b-trees on every claim, a measurable
    /// part of the claim's CPU though the lists are almost always empty.
    ///
    /// Available: `available_at_ms <= now_ms`, or, when none is, queued
    /// before the wall clock went back (`scheduled_at_ms` more than
    /// `clock::STEP_SLACK_MS` after `now_ms`, found through the
    /// `jobs_scheduled` index of the queued jobs): a clock set back never
    /// stops the claims, and a backoff ends early by at most its length.
    pub fn next_runnable_job(
        &self,
        role: Option<&str>,
        project: Option<&str>,
        skip_roles: &[&str],
        skip_tasks: &[i64],
        now_ms: i64,
    ) -> anyhow::Result<Option<(Job, bool)>> {
        let skip = serde_json::to_string(skip_roles)?;
        let skip_tasks = serde_json::to_string(skip_tasks)?;
        // The same filter and order twice, on the two ways a job becomes
        // available; each reads its own index (the second forced: by
        // order alone the planner would walk every queued job).
        let slack = crate::clock::STEP_SLACK_MS;
        // The skip lists are JSON arrays: SQLite reads them with
        // `json_each`, PostgreSQL with jsonb's own tests, and only SQLite
        // needs the second index forced.
        let pg = self.dialect() == crate::sql::Dialect::Postgres;
        let (roles, tasks) = if pg {
            // Plain filters, not anti-joins over the array's elements:
            // the planner then walks the queue in order and stops at the
            // first row that passes.
            (
                "(jsonb_exists(CAST(CAST(?4 AS TEXT) AS jsonb), j.role))",
                "(CAST(CAST(?5 AS TEXT) AS jsonb) @> jsonb_build_array(j.task_id))",
            )
        } else {
            (
                "EXISTS (SELECT 1 FROM json_each(?4) WHERE value=j.role)",
                "EXISTS (SELECT 1 FROM json_each(?5) WHERE value=j.task_id)",
            )
        };
        for (index, available) in [
            ("", "j.available_at_ms<=?1".to_string()),
            (
                if pg { "" } else { "INDEXED BY jobs_scheduled" },
                format!("j.scheduled_at_ms>?1 + {slack}"),
            ),
        ] {
            let found = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLS}, moved FROM (SELECT j.*, \
                       (t.version<>j.task_version OR t.stage<>j.stage) AS moved FROM jobs j {index} \
                       JOIN tasks t ON t.id=j.task_id \
                       WHERE j.status='queued' AND {available} AND t.escalated=0 \
                         AND (CAST(?2 AS TEXT) IS NULL OR j.role=?2) AND (CAST(?3 AS TEXT) IS NULL OR t.project=?3) \
                         AND NOT {roles} \
                         AND NOT {tasks} \
                       ORDER BY j.available_at_ms, j.id LIMIT 1) AS q"
                ))?
                .query_row(
                    params![now_ms, role, project, skip, skip_tasks],
                    |r| Ok((job_row(r)?, r.get(JOB_COLS.split(',').count())?)),
                )
                .optional()?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// `(role, project)` of every running job (few: at most the
    /// concurrency limit), for the per-role and per-project limits.
    pub fn running_roles_and_projects(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.role, t.project FROM jobs j JOIN tasks t ON t.id=j.task_id \
             WHERE j.status='running'",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Project names, the one claimed longest ago (or never) first, then
    /// by name: the order in which a claim tries them.
    pub fn projects_by_last_claim(&self) -> anyhow::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM projects ORDER BY claim_seq, name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
impl Tx<'_> {
    /// Records that `project` was just claimed from: it goes to the back of
    /// [`Db::projects_by_last_claim`]. A project already at the back (its
    /// `claim_seq` above every other's; the only project, say) keeps its
    /// row: the order would not change, and the claim writes one page less.
    pub fn mark_project_claimed(&self, project: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE projects SET claim_seq=(SELECT COALESCE(MAX(claim_seq),0)+1 FROM projects) \
                 WHERE name=?1 AND claim_seq <= (SELECT MAX(claim_seq) FROM projects WHERE name<>?1)",
            )?
            .execute([project])?;
        Ok(())
    }

    /// Enqueues the job for `(task, stage, task_version)`; a replay of the
    /// same key is a no-op. Returns the job id (new or existing).
    pub fn enqueue_job(
        &self,
        task_id: i64,
        stage: Stage,
        role: &str,
        task_version: i64,
        now_ms: i64,
    ) -> anyhow::Result<i64> {
        const INSERT: &str = "INSERT INTO jobs (task_id, stage, role, task_version, status, attempt, \
             available_at_ms, created_at_ms, scheduled_at_ms) VALUES (?1,?2,?3,?4,'queued',1,?5,?5,?5) \
             ON CONFLICT(task_id, stage, task_version) DO NOTHING";
        let args = params![task_id, stage, role, task_version, now_ms];
        // The row this statement inserted (a replay inserts none): no
        // second lookup. SQLite's `RETURNING` would make the plan of the
        // claim's transaction read `transitions` whole (the plan test in
        // `pipeline::job`), so there it is the connection's last rowid.
        let inserted = match self.conn.sqlite() {
            Some(c) => (self.conn.prepare_cached(INSERT)?.execute(args)? == 1)
                .then(|| c.last_insert_rowid()),
            None => self
                .conn
                .prepare_cached(&format!("{INSERT} RETURNING id"))?
                .query_row(args, |r| r.get(0))
                .optional()?,
        };
        if let Some(id) = inserted {
            return Ok(id);
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM jobs WHERE task_id=?1 AND stage=?2 AND task_version=?3",
            )?
            .query_row(params![task_id, stage, task_version], |r| r.get(0))?)
    }

    /// Records the agent process of running job `id` (claim `epoch`)
    /// and its timeout.
    pub fn set_job_agent(
        &self,
        id: i64,
        epoch: i64,
        pid: i64,
        start_time: i64,
        timeout_s: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE jobs SET agent_pid=?3, agent_start_time=?4, timeout_s=?5 \
             WHERE id=?1 AND epoch=?2 AND status='running'",
            )?
            .execute(params![id, epoch, pid, start_time, timeout_s])?;
        Ok(())
    }

    /// Records origin's head of the task branch when the run of running
    /// job `id` (claim `epoch`) started: `sha`, or `None` when origin had
    /// no such branch (stored as ''). Returns whether the claim still
    /// holds (nothing written otherwise).
    pub fn set_claim_sha(&self, id: i64, epoch: i64, sha: Option<&str>) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE jobs SET claim_sha=?3 WHERE id=?1 AND epoch=?2 AND status='running'",
            )?
            .execute(params![id, epoch, sha.unwrap_or("")])?
            == 1)
    }

    /// Records how running job `id`'s claim `epoch` runs its agent:
    /// `runner` (`child`, `supervisor`, `systemd`) and the detached run's
    /// `handle` (see [`Job::run_handle`]). Returns false when the job is no
    /// longer running that claim.
    pub fn set_job_run(
        &self,
        id: i64,
        epoch: i64,
        runner: &str,
        handle: Option<&str>,
    ) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET runner=?3, run_handle=?4 WHERE id=?1 AND epoch=?2 AND status='running'",
            )?
            .execute(params![id, epoch, runner, handle])?;
        Ok(n == 1)
    }

    /// Makes `watcher` (host id, pid, process start time; this boot's id
    /// recorded beside it in `worker_boot`) the worker of
    /// running job `id`'s claim `epoch` — its detached run still going or
    /// ended unrecorded — if `old` (the job's worker as the caller saw it)
    /// still is: a compare-and-swap, so of two adopters one wins. The
    /// heartbeat is refreshed (wall time `now_ms` and this boot's clock).
    /// Returns whether this call took it.
    pub fn take_watch(
        &self,
        id: i64,
        epoch: i64,
        old: (Option<&str>, Option<i64>, Option<i64>),
        watcher: (&str, i64, i64),
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET worker_host=?6, worker_pid=?7, worker_start_time=?8, \
                 heartbeat_at_ms=?9, heartbeat_boot_ms=?10, worker_boot=?11 \
                 WHERE id=?1 AND epoch=?2 AND status='running' AND exit_recorded_at_ms IS NULL \
                 AND worker_host IS NOT DISTINCT FROM ?3 AND worker_pid IS NOT DISTINCT FROM ?4 AND worker_start_time IS NOT DISTINCT FROM ?5",
            )?
            .execute(params![
                id,
                epoch,
                old.0,
                old.1,
                old.2,
                watcher.0,
                watcher.1,
                watcher.2,
                now_ms,
                crate::clock::boot_ms(),
                crate::process::boot_id()
            ])?;
        Ok(n == 1)
    }

    /// Refreshes the heartbeat of running job `id` (claim `epoch`): the
    /// wall time `now_ms` and this boot's clock. Returns false (nothing
    /// written) when the job no longer runs that claim.
    pub fn heartbeat(&self, id: i64, epoch: i64, now_ms: i64) -> anyhow::Result<bool> {
        let n = self.conn.prepare_cached(
            "UPDATE jobs SET heartbeat_at_ms=?3, heartbeat_boot_ms=?4 WHERE id=?1 AND epoch=?2 AND status='running'",
        )?
        .execute(params![id, epoch, now_ms, crate::clock::boot_ms()])?;
        Ok(n == 1)
    }

    /// Records `session_id`, the session the agent of running job `id`
    /// printed, on the job — only for the claim of `epoch` (a claim the
    /// reaper took away records nothing). Returns whether it was written
    /// (false too when the job already holds that id).
    pub fn record_job_session(
        &self,
        id: i64,
        epoch: i64,
        session_id: &str,
    ) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET session_id=?3 WHERE id=?1 AND epoch=?2 AND status='running' \
                 AND session_id IS DISTINCT FROM ?3",
            )?
            .execute(params![id, epoch, session_id])?;
        Ok(n == 1)
    }

    /// Records that the agent CLI no longer has session `session_id` of
    /// `job`'s role and task (it answered `--resume` with "No conversation
    /// found"): the id is never offered to `{previous_session}` again, and
    /// the job forgets it (its next run records its own).
    pub fn forget_session(&self, job: &Job, session_id: &str, now_ms: i64) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO gone_sessions (task_id, role, session_id, job_id, at_ms) \
                 VALUES (?1,?2,?3,?4,?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![job.task_id, job.role, session_id, job.id, now_ms])?;
        self.conn
            .prepare_cached("UPDATE jobs SET session_id=NULL WHERE id=?1 AND session_id=?2")?
            .execute(params![job.id, session_id])?;
        Ok(())
    }

    /// Records the agent's exit on running job `id`, only for the claim
    /// `epoch` and only once. Returns false when the job was taken from
    /// this worker (requeued by the reaper, claimed again: another epoch)
    /// or the exit is already recorded.
    pub fn record_exit(
        &self,
        id: i64,
        epoch: i64,
        exit_code: i64,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET exit_code=?3, exit_recorded_at_ms=?4, exit_boot_ms=?5 \
                 WHERE id=?1 AND epoch=?2 AND status='running' AND exit_recorded_at_ms IS NULL",
            )?
            .execute(params![
                id,
                epoch,
                exit_code,
                now_ms,
                crate::clock::boot_ms()
            ])?;
        Ok(n == 1)
    }

    /// Stores one agent run.
    pub fn insert_agent_run(&self, job: &Job, r: &RunRecord) -> anyhow::Result<()> {
        let (i, o, cr, cc) = r.usage.unwrap_or((0, 0, 0, 0));
        self.conn.prepare_cached(
            "INSERT INTO agent_runs (job_id, task_id, stage, role, attempt, pid, argv, exit_code, duration_ms, success, \
             usage_known, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, cost_usd, \
             session_id, permission_denials, log_path, started_at_ms, error, retryable, base_sha, \
             limit_kind, limit_reset_ms, kind, cost_known, cumulative_usage, runner, adopted) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26,?27,?28,?29,?30) \
             ON CONFLICT(job_id, attempt) DO NOTHING",
        )?
        .execute(params![
            job.id,
            job.task_id,
            job.stage,
            job.role,
            job.attempt,
            r.pid,
            serde_json::to_string(&r.argv)?,
            r.exit_code,
            r.duration_ms,
            r.success,
            r.usage.is_some(),
            i,
            o,
            cr,
            cc,
            r.cost_usd.unwrap_or(0.0),
            r.session_id,
            r.permission_denials.as_ref().map(|v| v.to_string()),
            r.log_path,
            r.started_at_ms,
            r.error.as_ref().map(|e| e.reason.as_str()),
            r.error.as_ref().is_none_or(|e| e.retryable),
            r.base_sha,
            r.limit.as_ref().map(|l| l.kind.as_str()),
            r.limit.as_ref().and_then(|l| l.reset_at_ms),
            r.kind.as_str(),
            r.cost_usd.is_some(),
            r.cumulative.map(|u| serde_json::to_string(&u)).transpose()?,
            r.runner,
            r.adopted,
        ])?;
        Ok(())
    }

    /// Stores a verdict (`source` = `agent`, `orch`, `human` or `staging`
    /// — the deploy-staging gate's `orch staging-check`; verdict
    /// `UNREADABLE` with the problem as summary for a bad verdict file).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_verdict(
        &self,
        task_id: i64,
        stage: Stage,
        job_id: Option<i64>,
        source: &str,
        verdict: &str,
        summary: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn.prepare_cached(
            "INSERT INTO verdicts (task_id, stage, job_id, source, verdict, summary, at_ms) VALUES (?1,?2,?3,?4,?5,?6,?7)",
        )?
        .execute(params![task_id, stage, job_id, source, verdict, summary, now_ms])?;
        Ok(())
    }

    // The status-changing UPDATEs of `jobs`, each written once. Callers go
    // through `pipeline::job::change`, which checks the edge. Each
    // is a compare-and-swap on the status (and on the claim's `epoch` when
    // given: every claim takes a new one, DESIGN §11 INV-10) and returns
    // whether it changed the row.

    /// `queued → running`: claims job `id` for `worker` (host id, pid,
    /// process start time; this boot's id recorded in `worker_boot`), with the time on the wall clock (`now_ms`) and
    /// on this boot's clock. A `merge_pending` job keeps its agent's exit
    /// code (its exit counts as recorded now, so the reaper's finalize
    /// grace starts again): the worker runs only its merge.
    pub fn claim_job(
        &self,
        id: i64,
        epoch: Option<i64>,
        worker: (&str, i64, i64),
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let (host, pid, start) = worker;
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET status='running', epoch=epoch+1, host_id=?8, claim_sha=NULL, \
                 worker_host=?2, worker_boot=?9, worker_pid=?3, worker_start_time=?4, claimed_at_ms=?5, heartbeat_at_ms=?5, agent_pid=NULL, agent_start_time=NULL, \
                 runner=NULL, run_handle=NULL, \
                 claimed_boot_ms=?7, heartbeat_boot_ms=?7, \
                 exit_code=CASE WHEN merge_pending=1 THEN exit_code END, \
                 exit_recorded_at_ms=CASE WHEN merge_pending=1 THEN ?5 END, \
                 exit_boot_ms=CASE WHEN merge_pending=1 THEN ?7 END \
                 WHERE id=?1 AND status='queued' AND (CAST(?6 AS BIGINT) IS NULL OR epoch=?6)",
            )?
            .execute(params![
                id,
                host,
                pid,
                start,
                now_ms,
                epoch,
                crate::clock::boot_ms(),
                crate::process::host_id(),
                crate::process::boot_id()
            ])?;
        Ok(n == 1)
    }

    /// `running → status` (done, failed, cancelled): the terminal claim.
    /// `error`, when given, becomes `last_error`; a job done carries no
    /// error of an earlier attempt or finalize (each run's own stays in
    /// `agent_runs`).
    pub fn finish_job(
        &self,
        id: i64,
        epoch: Option<i64>,
        status: JobStatus,
        error: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        debug_assert!(!status.is_active());
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET status=?2, \
                 last_error=CASE WHEN ?2='done' THEN ?3 ELSE COALESCE(?3, last_error) END, finished_at_ms=?4 \
                 WHERE id=?1 AND status='running' AND (CAST(?5 AS BIGINT) IS NULL OR epoch=?5)",
            )?
            .execute(params![id, status, error, now_ms, epoch])?;
        self.note_ended(id, epoch, n == 1);
        Ok(n == 1)
    }

    /// `queued → cancelled` (the task moved on before the job ran).
    pub fn cancel_queued_job(
        &self,
        id: i64,
        epoch: Option<i64>,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET status='cancelled', last_error=?2, finished_at_ms=?3 \
                 WHERE id=?1 AND status='queued' AND (CAST(?4 AS BIGINT) IS NULL OR epoch=?4)",
            )?
            .execute(params![id, reason, now_ms, epoch])?;
        Ok(n == 1)
    }

    /// `running → queued` for the next attempt at `available_at_ms` (a full
    /// rerun: the claim, heartbeat, exit and a pending merge are
    /// forgotten), scheduled at `now_ms`. With `free` (an account limit
    /// stopped the run) the new attempt is also counted in
    /// `free_attempts`, so it does not bring the job nearer
    /// `ORCH_JOB_MAX_ATTEMPTS`. Returns whether running job `id` (claim
    /// `epoch`) was requeued.
    pub fn requeue_job(
        &self,
        id: i64,
        epoch: Option<i64>,
        free: bool,
        error: &str,
        available_at_ms: i64,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET status='queued', attempt=attempt+1, free_attempts=free_attempts+?6, \
                 available_at_ms=?3, last_error=?2, \
                 worker_host=NULL, worker_boot=NULL, worker_pid=NULL, worker_start_time=NULL, agent_pid=NULL, agent_start_time=NULL, \
                 claimed_at_ms=NULL, heartbeat_at_ms=NULL, exit_code=NULL, exit_recorded_at_ms=NULL, \
                 claimed_boot_ms=NULL, heartbeat_boot_ms=NULL, exit_boot_ms=NULL, scheduled_at_ms=?5, \
                 merge_pending=0, finalize_failures=0 WHERE id=?1 AND status='running' AND (CAST(?4 AS BIGINT) IS NULL OR epoch=?4)",
            )?
            .execute(params![id, error, available_at_ms, epoch, now_ms, i64::from(free)])?;
        self.note_ended(id, epoch, n == 1);
        Ok(n == 1)
    }

    /// Records one failed finalize of running job `id` at claim `epoch`
    /// (its `last_error` becomes `error`). Returns the job's failure count
    /// now, or `None` when the job is no longer running at that epoch
    /// (nothing written).
    pub fn note_finalize_failure(
        &self,
        id: i64,
        epoch: i64,
        error: &str,
    ) -> anyhow::Result<Option<i64>> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET finalize_failures=finalize_failures+1, last_error=?3 \
                 WHERE id=?1 AND epoch=?2 AND status='running'",
            )?
            .execute(params![id, epoch, error])?;
        if n == 0 {
            return Ok(None);
        }
        Ok(self.job(id)?.map(|j| j.finalize_failures))
    }

    /// `running → queued` with the merge deferred (agent exit recorded):
    /// `merge_pending`, one more `merge_defers`, the same attempt, and its
    /// exit code kept, so the next claim runs only the merge.
    pub fn defer_merge_job(
        &self,
        id: i64,
        epoch: Option<i64>,
        reason: &str,
        available_at_ms: i64,
        lease: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET status='queued', merge_pending=1, merge_defers=merge_defers+1, \
                 available_at_ms=?3, last_error=?2, deferred_on=?5, worker_host=NULL, worker_boot=NULL, worker_pid=NULL, \
                 worker_start_time=NULL, agent_pid=NULL, agent_start_time=NULL, claimed_at_ms=NULL, \
                 heartbeat_at_ms=NULL, claimed_boot_ms=NULL, heartbeat_boot_ms=NULL, scheduled_at_ms=?6 \
                 WHERE id=?1 AND status='running' AND (CAST(?4 AS BIGINT) IS NULL OR epoch=?4) AND exit_code IS NOT NULL",
            )?
            .execute(params![id, reason, available_at_ms, epoch, lease, now_ms])?;
        self.note_ended(id, epoch, n == 1);
        Ok(n == 1)
    }

    /// `running → queued`, the same attempt, available at once: gives back
    /// a job claimed by hand, only while the claimer (`pid`, `start_time`)
    /// still holds it.
    pub fn unclaim_job(
        &self,
        id: i64,
        epoch: Option<i64>,
        pid: i64,
        start_time: i64,
    ) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE jobs SET status='queued', worker_host=NULL, worker_boot=NULL, worker_pid=NULL, \
                 worker_start_time=NULL, claimed_at_ms=NULL, heartbeat_at_ms=NULL \
                 WHERE id=?1 AND status='running' AND (CAST(?2 AS BIGINT) IS NULL OR epoch=?2) AND worker_pid=?3 \
                 AND worker_start_time=?4",
            )?
            .execute(params![id, epoch, pid, start_time])?
            == 1)
    }
}

impl Tx<'_> {
    /// Notes that this transaction ended claim (`id`, `epoch`) when `won`
    /// (a compare-and-swap of the job running at that epoch changed its
    /// row). A swap on any epoch (`None`) proves no claim.
    fn note_ended(&self, id: i64, epoch: Option<i64>, won: bool) {
        if let (true, Some(e)) = (won, epoch) {
            self.ended.borrow_mut().push((id, e));
        }
    }

    /// Whether claim (`job_id`, `epoch`) holds as far as this transaction
    /// can tell: the job is at that epoch and either still running, or
    /// this very transaction ended the claim (finished, requeued or
    /// deferred the job running at that epoch). DESIGN §11 INV-10: what a
    /// claim writes in the transaction that ends it is written by a held
    /// claim. Read-only.
    ///
    /// Errors: database errors.
    pub fn claim_held(&self, job_id: i64, epoch: i64) -> anyhow::Result<bool> {
        let Some(job) = self.job(job_id)? else {
            return Ok(false);
        };
        Ok(job.epoch == epoch
            && (job.status == JobStatus::Running || self.ended.borrow().contains(&(job_id, epoch))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with task 1 (project `p`) and its running job 1, claimed
    /// at epoch 2; agent runs of the developer in sessions `a` and `b`.
    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        db.conn
            .execute_batch(
                "INSERT INTO projects (name, tracker, forge, default_branch, clone_url, synced_at_ms) \
                 VALUES ('p', 'local', 'local', 'main', '/r', 1);
                 INSERT INTO tasks (project, tracker_issue_id, sequence, title, stage, version, branch, \
                 worktree, created_at_ms, updated_at_ms) \
                 VALUES ('p', '1', 1, 't', 'development', 1, 'orch/p-1', '/w', 1, 1);
                 INSERT INTO jobs (task_id, stage, role, task_version, status, attempt, available_at_ms, \
                 created_at_ms, epoch) VALUES (1, 'development', 'developer', 1, 'running', 2, 1, 1, 2);
                 INSERT INTO agent_runs (job_id, task_id, stage, role, attempt, argv, cost_usd, cost_known, \
                 session_id, log_path, started_at_ms) VALUES
                 (1, 1, 'development', 'developer', 1, '[]', 0.057, 1, 'a', '/l', 1),
                 (1, 1, 'development', 'developer', 2, '[]', 0.019, 1, 'a', '/l', 2),
                 (1, 1, 'development', 'developer', 3, '[]', 0.0, 0, 'a', '/l', 3),
                 (1, 1, 'development', 'reviewer', 4, '[]', 0.5, 1, 'a', '/l', 4),
                 (1, 1, 'development', 'developer', 5, '[]', 0.2, 1, 'b', '/l', 5);",
            )
            .unwrap();
        (dir, db)
    }

    #[test]
    fn a_running_jobs_session_is_recorded_by_its_own_epoch_only() {
        let (_d, db) = db();
        assert_eq!(db.job_session(1).unwrap(), None);
        let stale = db.write(|tx| tx.record_job_session(1, 1, "x")).unwrap();
        assert!(!stale, "an older claim records nothing");
        assert!(db.write(|tx| tx.record_job_session(1, 2, "x")).unwrap());
        assert!(!db.write(|tx| tx.record_job_session(1, 2, "x")).unwrap());
        assert_eq!(db.job_session(1).unwrap().as_deref(), Some("x"));
        // The id outlives the claim: a requeued job keeps it for its next.
        db.conn
            .execute("UPDATE jobs SET status='queued' WHERE id=1", [])
            .unwrap();
        assert_eq!(db.job_session(1).unwrap().as_deref(), Some("x"));
        assert!(!db.write(|tx| tx.record_job_session(1, 2, "y")).unwrap());
    }

    #[test]
    fn a_session_the_cli_lost_is_never_offered_again() {
        let (_d, db) = db();
        db.write(|tx| tx.record_job_session(1, 2, "b")).unwrap();
        assert_eq!(
            db.last_session(1, "developer").unwrap().as_deref(),
            Some("b")
        );
        let job = db.job(1).unwrap().unwrap();
        db.write(|tx| tx.forget_session(&job, "b", 10)).unwrap();
        db.write(|tx| tx.forget_session(&job, "b", 11)).unwrap();
        assert_eq!(db.job_session(1).unwrap(), None);
        assert_eq!(
            db.last_session(1, "developer").unwrap(),
            None,
            "not an older one either"
        );
        assert!(db.session_gone(1, "developer", "b").unwrap());
        assert!(!db.session_gone(1, "reviewer", "b").unwrap());
        assert_eq!(
            db.last_session(1, "reviewer").unwrap().as_deref(),
            Some("a")
        );
        // A job that records the lost id again (an agent printing it) does
        // not get it offered.
        db.write(|tx| tx.record_job_session(1, 2, "b")).unwrap();
        assert_eq!(db.job_session(1).unwrap(), None);
    }

    #[test]
    fn what_a_session_spent_is_its_roles_known_costs_on_the_task() {
        let (_d, db) = db();
        let spent = db.session_spent(1, "developer", "a").unwrap();
        assert!((spent - 0.076).abs() < 1e-12, "{spent}");
        assert_eq!(db.session_spent(1, "developer", "none").unwrap(), 0.0);
        assert_eq!(db.session_spent(2, "developer", "a").unwrap(), 0.0);
        assert!((db.session_spent(1, "reviewer", "a").unwrap() - 0.5).abs() < 1e-12);
    }
}
