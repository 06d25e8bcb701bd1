//! Queries of the outside adapters (Plane, Gitea, Telegram; migration 2):
//! the outbox send counter and dead letters, the Plane state cache, the
//! forge pull request of each task, and the lookups the Gitea deliveries
//! and the per-run reports need.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{outbox_row, task_row, Db, OutboxRow, Task, Tx, OUTBOX_COLS, TASK_COLS};

/// One cached tracker state (Plane `State`: id, name, group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedState {
    pub state_id: String,
    pub name: String,
    pub group: String,
    pub fetched_at_ms: i64,
}

/// The forge pull request of a task, as orch last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestRow {
    pub task_id: i64,
    pub number: i64,
    pub html_url: String,
    pub head_branch: String,
    pub merged: bool,
    pub at_ms: i64,
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
    /// How many sends of outbox message `id` were started (0 for a
    /// message never sent, or an unknown id).
    pub fn outbox_sends(&self, id: i64) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT sends FROM outbox WHERE id=?1", [id], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// Whether an older message of the same task and channel than `id` is
    /// still pending (backing off or waiting): per task and channel,
    /// messages are delivered in order.
    pub fn earlier_pending(
        &self,
        id: i64,
        task_id: Option<i64>,
        channel: &str,
    ) -> anyhow::Result<bool> {
        let Some(task_id) = task_id else {
            return Ok(false);
        };
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE task_id=?1 AND channel=?2 AND id<?3 \
             AND status='pending')",
            params![task_id, channel, id],
            |r| r.get(0),
        )?)
    }

    /// Dead-lettered outbox messages, newest first, at most `limit`.
    pub fn dead_outbox(&self, limit: i64) -> anyhow::Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE status='dead' ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The cached tracker states of `project`, by name.
    pub fn cached_states(&self, project: &str) -> anyhow::Result<Vec<CachedState>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT state_id, name, state_group, fetched_at_ms FROM tracker_states \
         WHERE project=?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([project], |r| {
            Ok(CachedState {
                state_id: r.get(0)?,
                name: r.get(1)?,
                group: r.get(2)?,
                fetched_at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The pull request recorded for task `task_id`.
    pub fn pull_request(&self, task_id: i64) -> anyhow::Result<Option<PullRequestRow>> {
        Ok(self
            .conn
        .prepare_cached(
            "SELECT task_id, number, html_url, head_branch, merged, at_ms FROM pull_requests WHERE task_id=?1",
        )?
        .query_row([task_id], |r| {
            Ok(PullRequestRow {
                task_id: r.get(0)?,
                number: r.get(1)?,
                html_url: r.get(2)?,
                head_branch: r.get(3)?,
                merged: r.get(4)?,
                at_ms: r.get(5)?,
            })
        })
        .optional()?)
    }

    /// The task of `project` whose branch is `branch`.
    pub fn task_by_branch(&self, project: &str, branch: &str) -> anyhow::Result<Option<Task>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE project=?1 AND branch=?2"
            ))?
            .query_row(params![project, branch], task_row)
            .optional()?)
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
}

impl Tx<'_> {
    /// Starts a send of pending outbox message `id`: bumps its `sends`
    /// counter and returns the value before, i.e. how many earlier sends
    /// may have reached the remote side. `None` when the message is no
    /// longer pending (another pass delivered or dead-lettered it).
    pub fn begin_outbox_send(&self, id: i64) -> anyhow::Result<Option<i64>> {
        Ok(self.conn
            .prepare_cached(
                "UPDATE outbox SET sends=sends+1 WHERE id=?1 AND status='pending' RETURNING sends-1",
            )?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// Records why pending message `id` waits (no adapter, a kill switch,
    /// missing settings) without counting an attempt.
    pub fn mark_outbox_waiting(&self, id: i64, reason: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached("UPDATE outbox SET last_error=?2 WHERE id=?1 AND status='pending'")?
            .execute(params![id, reason])?;
        Ok(())
    }

    /// Replaces the cached tracker states of `project` with `states`
    /// (`(id, name, group)`).
    pub fn replace_tracker_states(
        &self,
        project: &str,
        states: &[(String, String, String)],
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached("DELETE FROM tracker_states WHERE project=?1")?
            .execute([project])?;
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO tracker_states (project, state_id, name, state_group, fetched_at_ms) \
             VALUES (?1,?2,?3,?4,?5) ON CONFLICT(project, state_id) DO UPDATE SET \
             name=excluded.name, state_group=excluded.state_group, fetched_at_ms=excluded.fetched_at_ms",
        )?;
        for (id, name, group) in states {
            stmt.execute(params![project, id, name, group, now_ms])?;
        }
        Ok(())
    }

    /// Records (or updates) the pull request of task `task_id`.
    pub fn upsert_pull_request(
        &self,
        task_id: i64,
        number: i64,
        html_url: &str,
        head_branch: &str,
        merged: bool,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn.prepare_cached(
            "INSERT INTO pull_requests (task_id, number, html_url, head_branch, merged, at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6) ON CONFLICT(task_id) DO UPDATE SET number=excluded.number, \
             html_url=excluded.html_url, head_branch=excluded.head_branch, \
             merged=MAX(pull_requests.merged, excluded.merged), at_ms=excluded.at_ms",
        )?
        .execute(params![
            task_id,
            number,
            html_url,
            head_branch,
            merged,
            now_ms
        ])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_counter_state_cache_and_pull_requests() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        db.write(|tx| {
            tx.insert_outbox("k", None, "notify", "x", &serde_json::json!({}), 1)?;
            Ok(())
        })
        .unwrap();
        let id: i64 = db
            .conn()
            .query_row("SELECT id FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(db.write(|tx| tx.begin_outbox_send(id)).unwrap(), Some(0));
        assert_eq!(db.write(|tx| tx.begin_outbox_send(id)).unwrap(), Some(1));
        assert_eq!(db.outbox_sends(id).unwrap(), 2);
        db.write(|tx| tx.mark_outbox_failed(id, "boom", 0, true))
            .unwrap();
        assert_eq!(db.write(|tx| tx.begin_outbox_send(id)).unwrap(), None);
        assert_eq!(
            db.dead_outbox(10).unwrap()[0].last_error.as_deref(),
            Some("boom")
        );

        let states = vec![
            ("a".to_string(), "Done".to_string(), "completed".to_string()),
            (
                "b".to_string(),
                "Needs Input".to_string(),
                "started".to_string(),
            ),
        ];
        db.write(|tx| tx.replace_tracker_states("p", &states, 5))
            .unwrap();
        db.write(|tx| tx.replace_tracker_states("p", &states[..1], 6))
            .unwrap();
        let cached = db.cached_states("p").unwrap();
        assert_eq!(cached.len(), 1);
        assert_eq!(cached[0].fetched_at_ms, 6);
        assert!(db.pull_request(1).unwrap().is_none());
    }
}
