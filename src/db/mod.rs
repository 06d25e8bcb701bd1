//! The database: one SQLite file in WAL mode, all of orch's SQL.
//!
//! Every write happens in a `BEGIN IMMEDIATE` transaction ([`Db::write`]):
//! a transaction that reads and then writes under a plain `BEGIN` fails at
//! once with SQLITE_BUSY instead of waiting for the busy timeout.
//! Queries are named methods on [`Db`] (reads) and [`Tx`] (inside a write
//! transaction); the rules that string them together live in
//! `pipeline`, `worker`, `ingest` and friends.
//!
//! Times are unix milliseconds (`*_ms`).

mod adapters;
mod leases;
mod schema;

pub use adapters::{CachedState, PullRequestRow, RunUsage};

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;

use crate::error::Error;

pub use leases::LeaseAcquire;
pub use schema::MIGRATIONS;

/// The schema version this binary writes (`PRAGMA user_version`).
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// An open database.
pub struct Db {
    conn: Connection,
}

/// A write transaction (`BEGIN IMMEDIATE`), see [`Db::write`].
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.tx
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path`, sets WAL,
    /// `synchronous=FULL` (a delivery is durable before the shim answers),
    /// foreign keys and the busy timeout, and applies pending migrations.
    ///
    /// Errors: [`Error::SchemaTooNew`] when the file was written by a newer
    /// orch; SQLite errors with the path as context.
    pub fn open(path: &Path, busy_timeout_ms: u64) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(Duration::from_millis(busy_timeout_ms))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("setting WAL on {}", path.display()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Db { conn };
        db.migrate()
            .with_context(|| format!("migrating database {}", path.display()))?;
        Ok(db)
    }

    /// The `user_version` of an existing database file, without migrating.
    pub fn open_readonly_version(path: &Path) -> anyhow::Result<i64> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening database {}", path.display()))?;
        Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// The database's `PRAGMA user_version`.
    pub fn user_version(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Applies pending migrations in one exclusive transaction. Returns how
    /// many were applied (0 on an up-to-date database).
    pub fn migrate(&mut self) -> anyhow::Result<usize> {
        let current = self.user_version()?;
        let latest = schema_version();
        if current > latest {
            return Err(Error::SchemaTooNew {
                db: current,
                binary: latest,
            }
            .into());
        }
        if current == latest {
            return Ok(0);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)?;
        // Re-read under the lock: another process may have migrated.
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let mut applied = 0;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)
                .with_context(|| format!("migration {}", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            applied += 1;
        }
        tx.commit()?;
        Ok(applied)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits when it
    /// returns `Ok`; rolls back on `Err`.
    pub fn write<T>(&self, f: impl FnOnce(&Tx) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let tx = Tx {
            tx: rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?,
        };
        let out = f(&tx)?;
        tx.tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction that is always rolled
    /// back: `--dry-run` runs the real code path and writes nothing.
    pub fn rehearse<T>(&self, f: impl FnOnce(&Tx) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let tx = Tx {
            tx: rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?,
        };
        let out = f(&tx);
        tx.tx.rollback()?;
        out
    }

    /// Runs `f` for real ([`Db::write`]) or as a rehearsal ([`Db::rehearse`]).
    pub fn write_or_rehearse<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&Tx) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if dry_run {
            self.rehearse(f)
        } else {
            self.write(f)
        }
    }

    /// The raw connection, for read-only queries.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// `PRAGMA integrity_check` and `PRAGMA foreign_key_check` results:
    /// `("ok", 0)` for a healthy database.
    pub fn integrity(&self) -> anyhow::Result<(String, usize)> {
        let ok: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        let mut stmt = self.conn.prepare("PRAGMA foreign_key_check")?;
        let fk = stmt.query_map([], |_| Ok(()))?.count();
        Ok((ok, fk))
    }
}

// ---------------------------------------------------------------- rows

/// A task row.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub id: i64,
    pub project: String,
    pub tracker_issue_id: String,
    pub sequence: i64,
    pub title: String,
    pub body: String,
    pub stage: String,
    pub version: i64,
    pub branch: String,
    pub worktree: String,
    pub developer_retries: i64,
    pub escalated: bool,
    pub escalated_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

const TASK_COLS: &str = "id, project, tracker_issue_id, sequence, title, body, stage, version, \
    branch, worktree, developer_retries, escalated, escalated_reason, created_at_ms, updated_at_ms";

fn task_row(r: &Row) -> rusqlite::Result<Task> {
    Ok(Task {
        id: r.get(0)?,
        project: r.get(1)?,
        tracker_issue_id: r.get(2)?,
        sequence: r.get(3)?,
        title: r.get(4)?,
        body: r.get(5)?,
        stage: r.get(6)?,
        version: r.get(7)?,
        branch: r.get(8)?,
        worktree: r.get(9)?,
        developer_retries: r.get(10)?,
        escalated: r.get(11)?,
        escalated_reason: r.get(12)?,
        created_at_ms: r.get(13)?,
        updated_at_ms: r.get(14)?,
    })
}

/// A job row. `status` is `queued|running|done|failed|cancelled`.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub task_id: i64,
    pub stage: String,
    pub role: String,
    pub task_version: i64,
    pub status: String,
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
}

const JOB_COLS: &str = "id, task_id, stage, role, task_version, status, attempt, available_at_ms, \
    worker_host, worker_pid, worker_start_time, agent_pid, agent_start_time, claimed_at_ms, \
    heartbeat_at_ms, timeout_s, exit_code, exit_recorded_at_ms, last_error, created_at_ms, finished_at_ms, \
    merge_pending, merge_defers";

fn job_row(r: &Row) -> rusqlite::Result<Job> {
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
    })
}

/// One row of the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub id: i64,
    pub task_id: i64,
    pub from_stage: Option<String>,
    pub to_stage: String,
    pub version: i64,
    pub actor: String,
    pub job_id: Option<i64>,
    pub reason: String,
    pub at_ms: i64,
}

/// A stored delivery (without its body).
#[derive(Debug, Clone, Serialize)]
pub struct InboxRow {
    pub id: i64,
    pub source: String,
    pub event: String,
    pub delivery_id: String,
    pub received_at_ms: i64,
    pub processed_at_ms: Option<i64>,
    pub outcome: Option<String>,
    pub attempts: i64,
    pub error: Option<String>,
    pub dead: bool,
}

/// An outbox message.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub dedupe_key: String,
    pub task_id: Option<i64>,
    pub channel: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub remote_id: Option<String>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

const OUTBOX_COLS: &str = "id, dedupe_key, task_id, channel, kind, payload, status, attempts, \
    next_attempt_at_ms, last_error, remote_id, created_at_ms, delivered_at_ms";

fn outbox_row(r: &Row) -> rusqlite::Result<OutboxRow> {
    let payload: String = r.get(5)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        dedupe_key: r.get(1)?,
        task_id: r.get(2)?,
        channel: r.get(3)?,
        kind: r.get(4)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_attempt_at_ms: r.get(8)?,
        last_error: r.get(9)?,
        remote_id: r.get(10)?,
        created_at_ms: r.get(11)?,
        delivered_at_ms: r.get(12)?,
    })
}

/// A lease row (e.g. `merge:<repo>`); times in unix ms.
#[derive(Debug, Clone, Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub job_id: Option<i64>,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A stored delivery's routing and exact body bytes.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: String,
    pub event: String,
    pub body: Vec<u8>,
    pub processed: bool,
}

/// A new delivery for the inbox, as the shim or `ingest --file` received
/// it.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// `plane` or `gitea`.
    pub source: String,
    /// The sender's event name (`X-Plane-Event`, `X-Gitea-Event-Type`).
    pub event: String,
    /// The sender's delivery id (`X-Plane-Delivery`, `X-Gitea-Delivery`).
    pub delivery_id: String,
    /// Request headers as a JSON object (secrets removed by the caller).
    pub headers: serde_json::Value,
    /// The exact body bytes.
    pub body: Vec<u8>,
}

/// Whether [`Db::record_delivery`] stored a new row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored as inbox row `id`.
    Stored(i64),
    /// A redelivery of inbox row `id`; nothing stored.
    Duplicate(i64),
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
}

/// Token and cost totals for one group of `orch usage`.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub task_id: i64,
    pub stage: String,
    pub role: String,
    pub runs: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cost_usd: f64,
    pub unknown_usage_runs: i64,
    pub permission_denials: i64,
}

// ---------------------------------------------------------------- reads

impl Db {
    /// The task with `id`.
    pub fn task(&self, id: i64) -> anyhow::Result<Option<Task>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {TASK_COLS} FROM tasks WHERE id=?1"),
                [id],
                task_row,
            )
            .optional()?)
    }

    /// Tasks not yet done, oldest first.
    pub fn unfinished_tasks(&self) -> anyhow::Result<Vec<Task>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLS} FROM tasks WHERE stage<>'done' ORDER BY id"
        ))?;
        let rows = stmt.query_map([], task_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// All tasks, newest first.
    pub fn tasks(&self) -> anyhow::Result<Vec<Task>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks ORDER BY id DESC"))?;
        let rows = stmt.query_map([], task_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The job with `id`.
    pub fn job(&self, id: i64) -> anyhow::Result<Option<Job>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id=?1"),
                [id],
                job_row,
            )
            .optional()?)
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
    pub fn jobs_with_status(&self, status: &str) -> anyhow::Result<Vec<Job>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE status=?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([status], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The transitions of a task in order.
    pub fn transitions(&self, task_id: i64) -> anyhow::Result<Vec<TransitionRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, task_id, from_stage, to_stage, version, actor, job_id, reason, at_ms \
             FROM transitions WHERE task_id=?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([task_id], |r| {
            Ok(TransitionRow {
                id: r.get(0)?,
                task_id: r.get(1)?,
                from_stage: r.get(2)?,
                to_stage: r.get(3)?,
                version: r.get(4)?,
                actor: r.get(5)?,
                job_id: r.get(6)?,
                reason: r.get(7)?,
                at_ms: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest verdict recorded for (task, stage) at or after task
    /// version `since_version`'s job, i.e. the verdict of `job_id`.
    pub fn verdict_for_job(&self, job_id: i64) -> anyhow::Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT verdict, summary FROM verdicts WHERE job_id=?1 ORDER BY id DESC LIMIT 1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The CI state (`success`, `failure`, `pending`, `error`, …) stored
    /// for `sha` of `project`, combined over contexts: any failure/error →
    /// `failure`, any pending → `pending`, all success → `success`; `None`
    /// when nothing is stored.
    pub fn combined_ci_state(&self, project: &str, sha: &str) -> anyhow::Result<Option<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state FROM ci_statuses WHERE project=?1 AND sha=?2")?;
        let states: Vec<String> = stmt
            .query_map(params![project, sha], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if states.is_empty() {
            return Ok(None);
        }
        let s = if states.iter().any(|s| s == "failure" || s == "error") {
            "failure"
        } else if states
            .iter()
            .all(|s| s == "success" || s == "skipped" || s == "warning")
        {
            "success"
        } else {
            "pending"
        };
        Ok(Some(s.to_string()))
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

    /// Inbox rows, newest first; only unprocessed-and-failed or dead ones
    /// with `failed_only`.
    pub fn inbox(&self, failed_only: bool, limit: i64) -> anyhow::Result<Vec<InboxRow>> {
        let filter = if failed_only {
            "WHERE dead=1 OR (processed_at_ms IS NULL AND error IS NOT NULL)"
        } else {
            ""
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, source, event, delivery_id, received_at_ms, processed_at_ms, outcome, \
             attempts, error, dead FROM inbox {filter} ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], |r| {
            Ok(InboxRow {
                id: r.get(0)?,
                source: r.get(1)?,
                event: r.get(2)?,
                delivery_id: r.get(3)?,
                received_at_ms: r.get(4)?,
                processed_at_ms: r.get(5)?,
                outcome: r.get(6)?,
                attempts: r.get(7)?,
                error: r.get(8)?,
                dead: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inbox ids still to ingest (not processed, not dead), oldest first.
    pub fn pending_deliveries(&self, limit: i64) -> anyhow::Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM inbox WHERE processed_at_ms IS NULL AND dead=0 ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Outbox messages of a task (all when `task_id` is None), oldest first.
    pub fn outbox(&self, task_id: Option<i64>) -> anyhow::Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE ?1 IS NULL OR task_id=?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([task_id], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Outbox messages due for delivery at `now_ms`, oldest first.
    pub fn due_outbox(&self, now_ms: i64, limit: i64) -> anyhow::Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE status='pending' AND next_attempt_at_ms<=?1 \
             ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Usage totals grouped by task, stage and role (one task with
    /// `task_id`).
    pub fn usage(&self, task_id: Option<i64>) -> anyhow::Result<Vec<UsageRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT task_id, stage, role, COUNT(*), SUM(input_tokens), SUM(output_tokens), \
             SUM(cache_read_input_tokens), SUM(cache_creation_input_tokens), SUM(cost_usd), \
             SUM(CASE WHEN usage_known=0 THEN 1 ELSE 0 END), \
             SUM(COALESCE(json_array_length(permission_denials), 0)) \
             FROM agent_runs WHERE ?1 IS NULL OR task_id=?1 \
             GROUP BY task_id, stage, role ORDER BY task_id, MIN(id)",
        )?;
        let rows = stmt.query_map([task_id], |r| {
            Ok(UsageRow {
                task_id: r.get(0)?,
                stage: r.get(1)?,
                role: r.get(2)?,
                runs: r.get(3)?,
                input_tokens: r.get(4)?,
                output_tokens: r.get(5)?,
                cache_read_input_tokens: r.get(6)?,
                cache_creation_input_tokens: r.get(7)?,
                cost_usd: r.get(8)?,
                unknown_usage_runs: r.get(9)?,
                permission_denials: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `(status, count)` pairs of a table with a `status` column (`jobs`
    /// or `outbox`).
    pub fn count_by_status(&self, table: &str) -> anyhow::Result<Vec<(String, i64)>> {
        debug_assert!(table == "jobs" || table == "outbox");
        let mut stmt = self.conn.prepare(&format!(
            "SELECT status, COUNT(*) FROM {table} GROUP BY status ORDER BY status"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `(stage, escalated, count)` over all tasks.
    pub fn tasks_by_stage(&self) -> anyhow::Result<Vec<(String, bool, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT stage, escalated, COUNT(*) FROM tasks GROUP BY stage, escalated ORDER BY stage",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `(pending, failed_retrying, dead)` counts of the inbox.
    pub fn inbox_counts(&self) -> anyhow::Result<(i64, i64, i64)> {
        Ok(self.conn.query_row(
            "SELECT \
               COALESCE(SUM(CASE WHEN processed_at_ms IS NULL AND dead=0 THEN 1 ELSE 0 END),0), \
               COALESCE(SUM(CASE WHEN processed_at_ms IS NULL AND dead=0 AND error IS NOT NULL THEN 1 ELSE 0 END),0), \
               COALESCE(SUM(dead),0) FROM inbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// Gitea `status` deliveries received since `since_ms` whose sha matched
    /// no known branch head (reconcile F-3): `(inbox id, body)`.
    pub fn orphan_status_deliveries(&self, since_ms: i64) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, body FROM inbox WHERE source='gitea' AND event='status' AND received_at_ms>=?1 \
             AND outcome LIKE 'no pipeline action: sha % matches no known branch head%' ORDER BY id",
        )?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of tasks with a queued or running job.
    pub fn tasks_with_active_jobs(&self) -> anyhow::Result<std::collections::HashSet<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT task_id FROM jobs WHERE status IN ('queued','running')",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Local tracker issues of a project: `(id, state)`.
    pub fn local_issue_states(&self, project: &str) -> anyhow::Result<Vec<(i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, state FROM local_issues WHERE project=?1")?;
        let rows = stmt.query_map([project], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last reconcile pass report, if any.
    pub fn last_reconcile_pass(&self) -> anyhow::Result<Option<serde_json::Value>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT report FROM reconcile_passes ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// All counters.
    pub fn counters(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, value FROM counters ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The routing and body of inbox row `id`.
    pub fn delivery(&self, id: i64) -> anyhow::Result<Option<Delivery>> {
        Ok(self
            .conn
            .query_row(
                "SELECT source, event, body, processed_at_ms IS NOT NULL FROM inbox WHERE id=?1",
                [id],
                |r| {
                    Ok(Delivery {
                        source: r.get(0)?,
                        event: r.get(1)?,
                        body: r.get(2)?,
                        processed: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// The state of local tracker issue `id`, if it exists.
    pub fn local_issue_state(&self, id: i64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT state FROM local_issues WHERE id=?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

// ---------------------------------------------------------------- writes

impl Tx<'_> {
    /// Upserts a project of the registry.
    pub fn sync_project(
        &self,
        p: &crate::config::ProjectConfig,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "INSERT INTO projects (name, tracker, tracker_project_id, forge, repo, default_branch, clone_url, synced_at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8) \
             ON CONFLICT(name) DO UPDATE SET tracker=excluded.tracker, tracker_project_id=excluded.tracker_project_id, \
             forge=excluded.forge, repo=excluded.repo, default_branch=excluded.default_branch, \
             clone_url=excluded.clone_url, synced_at_ms=excluded.synced_at_ms \
             WHERE projects.tracker IS NOT excluded.tracker OR projects.tracker_project_id IS NOT excluded.tracker_project_id \
             OR projects.forge IS NOT excluded.forge OR projects.repo IS NOT excluded.repo \
             OR projects.default_branch IS NOT excluded.default_branch OR projects.clone_url IS NOT excluded.clone_url",
        )?
        .execute(params![
            p.name,
            p.tracker,
            p.tracker_project_id,
            p.forge,
            p.repo,
            p.default_branch,
            p.clone_url,
            now_ms
        ])?;
        Ok(())
    }

    /// Stores a delivery unless it is a redelivery: the same
    /// `(source, delivery_id)`, or for Plane (whose retries carry a new
    /// id) the same body hash.
    pub fn record_delivery(
        &self,
        d: &NewDelivery,
        body_sha256: &str,
        now_ms: i64,
    ) -> anyhow::Result<Recorded> {
        let existing: Option<i64> = self
            .prepare_cached(
                // Two indexed lookups: the planner scans every row of the
                // source for the equivalent `delivery_id=?2 OR (…)`.
                "SELECT min(id) FROM (SELECT id FROM inbox WHERE source=?1 AND delivery_id=?2 \
                 UNION ALL SELECT id FROM inbox WHERE ?1='plane' AND source=?1 AND body_sha256=?3)",
            )?
            .query_row(params![d.source, d.delivery_id, body_sha256], |r| r.get(0))?;
        if let Some(id) = existing {
            return Ok(Recorded::Duplicate(id));
        }
        self.prepare_cached(
            "INSERT INTO inbox (source, event, delivery_id, body_sha256, headers, body, received_at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?7)",
        )?
        .execute(params![
            d.source,
            d.event,
            d.delivery_id,
            body_sha256,
            d.headers.to_string(),
            d.body,
            now_ms
        ])?;
        Ok(Recorded::Stored(self.last_insert_rowid()))
    }

    /// Marks inbox row `id` processed with `outcome`.
    pub fn mark_delivery_processed(
        &self,
        id: i64,
        outcome: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "UPDATE inbox SET processed_at_ms=?2, outcome=?3, attempts=attempts+1, error=NULL WHERE id=?1",
        )?
        .execute(params![id, now_ms, outcome])?;
        Ok(())
    }

    /// Records a failed ingest attempt of inbox row `id`; dead-letters it
    /// once `attempts` reaches `max_attempts`. Returns whether it is dead.
    pub fn mark_delivery_failed(
        &self,
        id: i64,
        error: &str,
        max_attempts: u32,
    ) -> anyhow::Result<bool> {
        self.prepare_cached(
            "UPDATE inbox SET attempts=attempts+1, error=?2, dead=(attempts+1>=?3) WHERE id=?1",
        )?
        .execute(params![id, error, max_attempts])?;
        Ok(self.query_row("SELECT dead FROM inbox WHERE id=?1", [id], |r| r.get(0))?)
    }

    /// Makes inbox row `id` pending again (for `orch events replay`).
    pub fn reset_delivery(&self, id: i64) -> anyhow::Result<bool> {
        Ok(self
            .prepare_cached(
                "UPDATE inbox SET processed_at_ms=NULL, outcome=NULL, error=NULL, dead=0, attempts=0 WHERE id=?1",
            )?
            .execute([id])?
            == 1)
    }

    /// The task for `(project, tracker_issue_id)`, if any.
    pub fn task_by_issue(
        &self,
        project: &str,
        tracker_issue_id: &str,
    ) -> anyhow::Result<Option<Task>> {
        Ok(self
            .prepare_cached(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE project=?1 AND tracker_issue_id=?2"
            ))?
            .query_row(params![project, tracker_issue_id], task_row)
            .optional()?)
    }

    /// The task with `id` (inside the transaction).
    pub fn task(&self, id: i64) -> anyhow::Result<Option<Task>> {
        Ok(self
            .prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks WHERE id=?1"))?
            .query_row([id], task_row)
            .optional()?)
    }

    /// The job with `id` (inside the transaction).
    pub fn job(&self, id: i64) -> anyhow::Result<Option<Job>> {
        Ok(self
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id=?1"))?
            .query_row([id], job_row)
            .optional()?)
    }

    /// Inserts a task at `stage` with version 1. Returns its id, or `None`
    /// when `(project, tracker_issue_id)` already has a task.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_task(
        &self,
        project: &str,
        tracker_issue_id: &str,
        sequence: i64,
        title: &str,
        body: &str,
        stage: &str,
        branch: &str,
        worktree: &str,
        now_ms: i64,
    ) -> anyhow::Result<Option<i64>> {
        let n = self
            .prepare_cached(
                "INSERT INTO tasks (project, tracker_issue_id, sequence, title, body, stage, version, branch, worktree, created_at_ms, updated_at_ms) \
                 VALUES (?1,?2,?3,?4,?5,?6,1,?7,?8,?9,?9) ON CONFLICT(project, tracker_issue_id) DO NOTHING",
            )?
            .execute(params![project, tracker_issue_id, sequence, title, body, stage, branch, worktree, now_ms])?;
        Ok((n == 1).then(|| self.last_insert_rowid()))
    }

    /// Compare-and-swap of a task's stage: moves it from `(from, version)`
    /// to `to` with `version + 1` and the given retry count and escalation.
    /// Returns false (and changes nothing) when the task is no longer at
    /// `(from, version)`.
    #[allow(clippy::too_many_arguments)]
    pub fn cas_task(
        &self,
        id: i64,
        from: &str,
        version: i64,
        to: &str,
        developer_retries: i64,
        escalated: bool,
        escalated_reason: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .prepare_cached(
                "UPDATE tasks SET stage=?4, version=version+1, developer_retries=?5, escalated=?6, \
                 escalated_reason=?7, updated_at_ms=?8 WHERE id=?1 AND stage=?2 AND version=?3",
            )?
            .execute(params![id, from, version, to, developer_retries, escalated, escalated_reason, now_ms])?;
        Ok(n == 1)
    }

    /// Appends a transition row.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_transition(
        &self,
        task_id: i64,
        from: Option<&str>,
        to: &str,
        version: i64,
        actor: &str,
        job_id: Option<i64>,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "INSERT INTO transitions (task_id, from_stage, to_stage, version, actor, job_id, reason, at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
        )?
        .execute(params![task_id, from, to, version, actor, job_id, reason, now_ms])?;
        Ok(())
    }

    /// Enqueues the job for `(task, stage, task_version)`; a replay of the
    /// same key is a no-op. Returns the job id (new or existing).
    pub fn enqueue_job(
        &self,
        task_id: i64,
        stage: &str,
        role: &str,
        task_version: i64,
        now_ms: i64,
    ) -> anyhow::Result<i64> {
        self.prepare_cached(
            "INSERT INTO jobs (task_id, stage, role, task_version, status, attempt, available_at_ms, created_at_ms) \
             VALUES (?1,?2,?3,?4,'queued',1,?5,?5) ON CONFLICT(task_id, stage, task_version) DO NOTHING",
        )?
        .execute(params![task_id, stage, role, task_version, now_ms])?;
        Ok(self
            .prepare_cached(
                "SELECT id FROM jobs WHERE task_id=?1 AND stage=?2 AND task_version=?3",
            )?
            .query_row(params![task_id, stage, task_version], |r| r.get(0))?)
    }

    /// Jobs of a task that are queued or running.
    pub fn active_jobs(&self, task_id: i64) -> anyhow::Result<Vec<Job>> {
        let mut stmt = self.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE task_id=?1 AND status IN ('queued','running') ORDER BY id"
        ))?;
        let rows = stmt.query_map([task_id], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes an outbox message; a second write with the same `dedupe_key`
    /// is a no-op. Returns whether a row was inserted.
    pub fn insert_outbox(
        &self,
        dedupe_key: &str,
        task_id: Option<i64>,
        channel: &str,
        kind: &str,
        payload: &serde_json::Value,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .prepare_cached(
                "INSERT INTO outbox (dedupe_key, task_id, channel, kind, payload, next_attempt_at_ms, created_at_ms) \
                 VALUES (?1,?2,?3,?4,?5,?6,?6) ON CONFLICT(dedupe_key) DO NOTHING",
            )?
            .execute(params![dedupe_key, task_id, channel, kind, payload.to_string(), now_ms])?;
        Ok(n == 1)
    }

    /// Claims the oldest runnable job: queued, available, of a task that is
    /// not escalated and still at the job's stage and version, optionally
    /// filtered by role and project, while fewer than `max_running` jobs
    /// run. Jobs whose task moved on are cancelled on the way. Returns the
    /// claimed job, now `running` with this worker's identity. A
    /// `merge_pending` job keeps its agent's exit code (its exit counts as
    /// recorded now, so the reaper's finalize grace starts again): the
    /// worker runs only its merge.
    #[allow(clippy::too_many_arguments)]
    pub fn claim_next_job(
        &self,
        max_running: u32,
        role: Option<&str>,
        project: Option<&str>,
        worker: (&str, i64, i64),
        now_ms: i64,
    ) -> anyhow::Result<Option<Job>> {
        // Cancel queued jobs their task has moved past (a human advance,
        // a rollback): they can never be valid again.
        self.prepare_cached(
            "UPDATE jobs SET status='cancelled', finished_at_ms=?1, last_error='task moved on before the job ran' \
             WHERE status='queued' AND EXISTS (SELECT 1 FROM tasks t WHERE t.id=jobs.task_id \
               AND (t.version<>jobs.task_version OR t.stage<>jobs.stage))",
        )?
        .execute([now_ms])?;
        let running: i64 = self
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE status='running'")?
            .query_row([], |r| r.get(0))?;
        if running >= max_running as i64 {
            return Ok(None);
        }
        let id: Option<i64> = self
            .prepare_cached(
                "SELECT j.id FROM jobs j JOIN tasks t ON t.id=j.task_id \
                 WHERE j.status='queued' AND j.available_at_ms<=?1 AND t.escalated=0 \
                   AND (?2 IS NULL OR j.role=?2) AND (?3 IS NULL OR t.project=?3) \
                 ORDER BY j.available_at_ms, j.id LIMIT 1",
            )?
            .query_row(params![now_ms, role, project], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        let (host, pid, start) = worker;
        self.prepare_cached(
            "UPDATE jobs SET status='running', worker_host=?2, worker_pid=?3, worker_start_time=?4, \
             claimed_at_ms=?5, heartbeat_at_ms=?5, agent_pid=NULL, agent_start_time=NULL, \
             exit_code=CASE WHEN merge_pending=1 THEN exit_code END, \
             exit_recorded_at_ms=CASE WHEN merge_pending=1 THEN ?5 END WHERE id=?1 AND status='queued'",
        )?
        .execute(params![id, host, pid, start, now_ms])?;
        crate::failpoint::failpoint("claim.before_commit");
        self.job(id)
    }

    /// Records the agent process of running job `id` (claim `attempt`)
    /// and its timeout.
    pub fn set_job_agent(
        &self,
        id: i64,
        attempt: i64,
        pid: i64,
        start_time: i64,
        timeout_s: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "UPDATE jobs SET agent_pid=?3, agent_start_time=?4, timeout_s=?5 \
             WHERE id=?1 AND attempt=?2 AND status='running'",
        )?
        .execute(params![id, attempt, pid, start_time, timeout_s])?;
        Ok(())
    }

    /// Refreshes the heartbeat of running job `id` (claim `attempt`).
    pub fn heartbeat(&self, id: i64, attempt: i64, now_ms: i64) -> anyhow::Result<()> {
        self.prepare_cached(
            "UPDATE jobs SET heartbeat_at_ms=?3 WHERE id=?1 AND attempt=?2 AND status='running'",
        )?
        .execute(params![id, attempt, now_ms])?;
        Ok(())
    }

    /// Records the agent's exit on running job `id`, only for the claim
    /// `attempt` and only once. Returns false when the job was taken from
    /// this worker (requeued by the reaper) or the exit is already
    /// recorded.
    pub fn record_exit(
        &self,
        id: i64,
        attempt: i64,
        exit_code: i64,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .prepare_cached(
                "UPDATE jobs SET exit_code=?3, exit_recorded_at_ms=?4 \
                 WHERE id=?1 AND attempt=?2 AND status='running' AND exit_recorded_at_ms IS NULL",
            )?
            .execute(params![id, attempt, exit_code, now_ms])?;
        Ok(n == 1)
    }

    /// Stores one agent run.
    pub fn insert_agent_run(&self, job: &Job, r: &RunRecord) -> anyhow::Result<()> {
        let (i, o, cr, cc) = r.usage.unwrap_or((0, 0, 0, 0));
        self.prepare_cached(
            "INSERT INTO agent_runs (job_id, task_id, stage, role, attempt, pid, argv, exit_code, duration_ms, success, \
             usage_known, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, cost_usd, \
             session_id, permission_denials, log_path, started_at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20) \
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
            r.started_at_ms
        ])?;
        Ok(())
    }

    /// Stores a verdict (`source` = `agent`, `orch` or `human`; verdict
    /// `UNREADABLE` with the problem as summary for a bad verdict file).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_verdict(
        &self,
        task_id: i64,
        stage: &str,
        job_id: Option<i64>,
        source: &str,
        verdict: &str,
        summary: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "INSERT INTO verdicts (task_id, stage, job_id, source, verdict, summary, at_ms) VALUES (?1,?2,?3,?4,?5,?6,?7)",
        )?
        .execute(params![task_id, stage, job_id, source, verdict, summary, now_ms])?;
        Ok(())
    }

    /// Terminal claim of a running job: `running → status`. Returns false
    /// (and changes nothing) when the job is no longer running, i.e.
    /// another actor finished it first.
    pub fn finish_job(
        &self,
        id: i64,
        status: &str,
        error: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        debug_assert!(matches!(status, "done" | "failed" | "cancelled"));
        let n = self
            .prepare_cached(
                "UPDATE jobs SET status=?2, last_error=COALESCE(?3, last_error), finished_at_ms=?4 \
                 WHERE id=?1 AND status='running'",
            )?
            .execute(params![id, status, error, now_ms])?;
        Ok(n == 1)
    }

    /// Puts running job `id` (claim `attempt`) back in the queue for the
    /// next attempt at `available_at_ms` (a full rerun: a pending merge is
    /// forgotten). Returns false when it was no longer running under that
    /// attempt.
    pub fn requeue_job(
        &self,
        id: i64,
        attempt: i64,
        error: &str,
        available_at_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self
            .prepare_cached(
                "UPDATE jobs SET status='queued', attempt=attempt+1, available_at_ms=?3, last_error=?2, \
                 worker_host=NULL, worker_pid=NULL, worker_start_time=NULL, agent_pid=NULL, agent_start_time=NULL, \
                 claimed_at_ms=NULL, heartbeat_at_ms=NULL, exit_code=NULL, exit_recorded_at_ms=NULL, \
                 merge_pending=0 WHERE id=?1 AND status='running' AND attempt=?4",
            )?
            .execute(params![id, error, available_at_ms, attempt])?;
        Ok(n == 1)
    }

    /// Cancels every queued or running job of a task except `keep`.
    pub fn cancel_task_jobs(
        &self,
        task_id: i64,
        keep: Option<i64>,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<usize> {
        Ok(self
            .prepare_cached(
                "UPDATE jobs SET status='cancelled', last_error=?3, finished_at_ms=?4 \
                 WHERE task_id=?1 AND status IN ('queued','running') AND id IS NOT ?2",
            )?
            .execute(params![task_id, keep, reason, now_ms])?)
    }

    /// Stores a CI status for `sha` (the latest per context wins).
    pub fn upsert_ci_status(
        &self,
        project: &str,
        sha: &str,
        context: &str,
        state: &str,
        target_url: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "INSERT INTO ci_statuses (project, sha, context, state, target_url, at_ms) VALUES (?1,?2,?3,?4,?5,?6) \
             ON CONFLICT(project, sha, context) DO UPDATE SET state=excluded.state, target_url=excluded.target_url, at_ms=excluded.at_ms",
        )?
        .execute(params![project, sha, context, state, target_url, now_ms])?;
        Ok(())
    }

    /// Stores the head of a branch as the forge reported it.
    pub fn upsert_branch_head(
        &self,
        project: &str,
        branch: &str,
        sha: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "INSERT INTO branch_heads (project, branch, sha, at_ms) VALUES (?1,?2,?3,?4) \
             ON CONFLICT(project, branch) DO UPDATE SET sha=excluded.sha, at_ms=excluded.at_ms",
        )?
        .execute(params![project, branch, sha, now_ms])?;
        Ok(())
    }

    /// The orch branch whose last known head is `sha`, if exactly one.
    pub fn branch_for_sha(&self, project: &str, sha: &str) -> anyhow::Result<Option<String>> {
        let mut stmt =
            self.prepare_cached("SELECT branch FROM branch_heads WHERE project=?1 AND sha=?2")?;
        let branches: Vec<String> = stmt
            .query_map(params![project, sha], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(if branches.len() == 1 {
            branches.into_iter().next()
        } else {
            None
        })
    }

    /// Records a reconcile pass report (JSON) and keeps the last 100.
    pub fn record_reconcile_pass(
        &self,
        at_ms: i64,
        report: &serde_json::Value,
    ) -> anyhow::Result<()> {
        self.prepare_cached("INSERT INTO reconcile_passes (at_ms, report) VALUES (?1, ?2)")?
            .execute(params![at_ms, report.to_string()])?;
        self.prepare_cached(
            "DELETE FROM reconcile_passes WHERE id <= (SELECT MAX(id) - 100 FROM reconcile_passes)",
        )?
        .execute([])?;
        Ok(())
    }

    /// Whether task `id`'s latest transition reruns its stage (`from = to`).
    pub fn last_transition_is_rerun(&self, id: i64) -> anyhow::Result<bool> {
        Ok(self
            .prepare_cached(
                "SELECT from_stage IS to_stage FROM transitions WHERE task_id=?1 ORDER BY version DESC LIMIT 1",
            )?
            .query_row([id], |r| r.get(0))
            .optional()?
            .unwrap_or(false))
    }

    /// Adds `by` to counter `name`.
    pub fn bump_counter(&self, name: &str, by: i64) -> anyhow::Result<()> {
        self.prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
        )?
        .execute(params![name, by])?;
        Ok(())
    }

    /// Creates a local tracker issue in `state`. Returns its id.
    pub fn insert_local_issue(
        &self,
        project: &str,
        title: &str,
        body: &str,
        state: &str,
        now_ms: i64,
    ) -> anyhow::Result<i64> {
        self.prepare_cached(
            "INSERT INTO local_issues (project, title, body, state, created_at_ms, updated_at_ms) VALUES (?1,?2,?3,?4,?5,?5)",
        )?
        .execute(params![project, title, body, state, now_ms])?;
        Ok(self.last_insert_rowid())
    }

    /// Sets a local tracker issue's state.
    pub fn set_local_issue_state(&self, id: i64, state: &str, now_ms: i64) -> anyhow::Result<()> {
        self.prepare_cached("UPDATE local_issues SET state=?2, updated_at_ms=?3 WHERE id=?1")?
            .execute(params![id, state, now_ms])?;
        Ok(())
    }

    /// Marks an outbox message delivered (with the remote id, if any).
    pub fn mark_outbox_delivered(
        &self,
        id: i64,
        remote_id: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "UPDATE outbox SET status='delivered', attempts=attempts+1, remote_id=COALESCE(?2, remote_id), \
             delivered_at_ms=?3, last_error=NULL WHERE id=?1 AND status='pending'",
        )?
        .execute(params![id, remote_id, now_ms])?;
        Ok(())
    }

    /// Records a failed delivery attempt: retry at `next_attempt_at_ms`, or
    /// dead-letter when `dead`.
    pub fn mark_outbox_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_at_ms: i64,
        dead: bool,
    ) -> anyhow::Result<()> {
        self.prepare_cached(
            "UPDATE outbox SET attempts=attempts+1, last_error=?2, next_attempt_at_ms=?3, \
             status=CASE WHEN ?4 THEN 'dead' ELSE status END WHERE id=?1 AND status='pending'",
        )?
        .execute(params![id, error, next_attempt_at_ms, dead])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = Db::open(&path, 1000).unwrap();
        assert_eq!(db.user_version().unwrap(), schema_version());
        assert_eq!(db.migrate().unwrap(), 0);
        drop(db);
        let db = Db::open(&path, 1000).unwrap();
        assert_eq!(db.integrity().unwrap(), ("ok".to_string(), 0));
    }

    #[test]
    fn newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        drop(Db::open(&path, 1000).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = Db::open(&path, 1000).err().unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("99") && msg.contains(&schema_version().to_string()),
            "{msg}"
        );
    }
}
