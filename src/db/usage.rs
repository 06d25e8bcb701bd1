//! Accounting: token and cost totals over `agent_runs`, status counts,
//! `counters`, and the reconciler's pass reports (`reconcile_passes`).

use crate::sql::{params, OptionalExtension};
use serde::Serialize;

use super::{Db, Tx};
use crate::model::Stage;

/// Token and cost totals for one group of `orch usage`.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub task_id: i64,
    pub stage: Stage,
    pub role: String,
    pub runs: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cost_usd: f64,
    pub unknown_usage_runs: i64,
    /// Runs whose tokens are known but whose cost is not: the CLI reports
    /// none and the config has no price for the model (their tokens still
    /// count toward token budgets; `cost_usd` leaves them out).
    pub unknown_cost_runs: i64,
    pub permission_denials: i64,
}

/// Agent runs of one role and outcome, with their usage (metrics).
#[derive(Debug, Clone, Serialize)]
pub struct RoleRuns {
    pub role: String,
    /// `success`, `failure` or `unknown` (no usable result).
    pub outcome: String,
    pub runs: i64,
    pub input_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    /// Runs with known tokens but an unknown cost (no cost reported, no
    /// price for the model).
    pub unknown_cost_runs: i64,
}

impl Db {
    /// Usage totals grouped by task, stage and role (one task with
    /// `task_id`).
    pub fn usage(&self, task_id: Option<i64>) -> anyhow::Result<Vec<UsageRow>> {
        self.usage_since(task_id, None)
    }

    /// [`Db::usage`] of the runs started at or after `since_ms` (unix ms;
    /// `None`: all runs).
    pub fn usage_since(
        &self,
        task_id: Option<i64>,
        since_ms: Option<i64>,
    ) -> anyhow::Result<Vec<UsageRow>> {
        let denials = match self.dialect() {
            crate::sql::Dialect::Sqlite => "json_array_length(permission_denials)",
            crate::sql::Dialect::Postgres => {
                "jsonb_array_length(CAST(permission_denials AS jsonb))"
            }
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT task_id, stage, role, COUNT(*), SUM(input_tokens), SUM(output_tokens), \
             SUM(cache_read_input_tokens), SUM(cache_creation_input_tokens), SUM(cost_usd), \
             SUM(CASE WHEN usage_known=0 THEN 1 ELSE 0 END), \
             SUM(COALESCE({denials}, 0)), \
             SUM(CASE WHEN usage_known=1 AND cost_known=0 THEN 1 ELSE 0 END) \
             FROM agent_runs WHERE (CAST(?1 AS BIGINT) IS NULL OR task_id=?1) \
             AND (CAST(?2 AS BIGINT) IS NULL OR started_at_ms >= ?2) \
             GROUP BY task_id, stage, role ORDER BY task_id, MIN(id)",
        ))?;
        let rows = stmt.query_map(params![task_id, since_ms], |r| {
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
                unknown_cost_runs: r.get(11)?,
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

    /// Tasks by `(stage, state, count)`, in pipeline order (`Stage::ALL`)
    /// then by state; state is `escalated`, `awaiting_human` (at analysis,
    /// no active job: waiting for approval), `done` or `active`.
    pub fn tasks_by_stage_and_state(&self) -> anyhow::Result<Vec<(Stage, String, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT stage, CASE WHEN escalated<>0 THEN 'escalated' WHEN stage=?1 THEN 'done' \
               WHEN stage=?2 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.task_id=tasks.id \
                 AND j.status IN ('queued','running')) THEN 'awaiting_human' ELSE 'active' END AS state, \
             COUNT(*) FROM tasks GROUP BY stage, state",
        )?;
        let rows = stmt.query_map(params![Stage::Done, Stage::Analysis], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        let mut rows: Vec<(Stage, String, i64)> = rows.collect::<Result<_, _>>()?;
        rows.sort();
        Ok(rows)
    }

    /// The oldest `updated_at_ms` of the unfinished tasks at each stage, in
    /// pipeline order (`Stage::ALL`).
    pub fn oldest_unchanged_by_stage(&self) -> anyhow::Result<Vec<(Stage, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT stage, MIN(updated_at_ms) FROM tasks WHERE stage<>?1 GROUP BY stage",
        )?;
        let rows = stmt.query_map([Stage::Done], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut rows: Vec<(Stage, i64)> = rows.collect::<Result<_, _>>()?;
        rows.sort();
        Ok(rows)
    }

    /// Since when the oldest runnable job (queued, available at `now_ms`,
    /// its task not escalated) has been available, if any.
    pub fn oldest_runnable_since(&self, now_ms: i64) -> anyhow::Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT MIN(j.available_at_ms) FROM jobs j JOIN tasks t ON t.id=j.task_id \
             WHERE j.status='queued' AND j.available_at_ms<=?1 AND t.escalated=0",
            [now_ms],
            |r| r.get(0),
        )?)
    }

    /// Running jobs whose agent process runs (started, exit not recorded).
    pub fn running_agents(&self) -> anyhow::Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE status='running' AND agent_pid IS NOT NULL \
             AND exit_recorded_at_ms IS NULL",
            [],
            |r| r.get(0),
        )?)
    }

    /// Agent runs and their usage by role and outcome (`success`,
    /// `failure`, `unknown`).
    pub fn agent_runs_by_role(&self) -> anyhow::Result<Vec<RoleRuns>> {
        let mut stmt = self.conn.prepare(
            "SELECT role, CASE success WHEN 1 THEN 'success' WHEN 0 THEN 'failure' ELSE 'unknown' END AS outcome, \
             COUNT(*), SUM(input_tokens), SUM(cache_read_input_tokens), SUM(cache_creation_input_tokens), \
             SUM(output_tokens), SUM(cost_usd), SUM(CASE WHEN usage_known=1 AND cost_known=0 THEN 1 ELSE 0 END) \
             FROM agent_runs GROUP BY role, outcome ORDER BY role, outcome",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RoleRuns {
                role: r.get(0)?,
                outcome: r.get(1)?,
                runs: r.get(2)?,
                input_tokens: r.get(3)?,
                cache_read_input_tokens: r.get(4)?,
                cache_creation_input_tokens: r.get(5)?,
                output_tokens: r.get(6)?,
                cost_usd: r.get(7)?,
                unknown_cost_runs: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stored deliveries by source (`plane`, `gitea`).
    pub fn deliveries_by_source(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT source, COUNT(*) FROM inbox GROUP BY source ORDER BY source")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Pending outbox messages that failed at least once (retrying).
    pub fn outbox_retrying(&self) -> anyhow::Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE status='pending' AND attempts>0",
            [],
            |r| r.get(0),
        )?)
    }

    /// All counters.
    pub fn counters(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, value FROM counters ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest recorded reconcile pass that started at or before
    /// `at_ms`: `(pass id, at_ms, report)`. Only the last 100 passes (and
    /// only passes that differ from the one before) are kept, so an old
    /// move may find none.
    pub fn reconcile_pass_at(
        &self,
        at_ms: i64,
    ) -> anyhow::Result<Option<(i64, i64, serde_json::Value)>> {
        let row: Option<(i64, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT id, at_ms, report FROM reconcile_passes WHERE at_ms<=?1 \
                 ORDER BY at_ms DESC, id DESC LIMIT 1",
            )?
            .query_row([at_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        Ok(row.and_then(|(id, at, t)| Some((id, at, serde_json::from_str(&t).ok()?))))
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
}

impl Tx<'_> {
    /// Adds `by` to counter `name`.
    pub fn bump_counter(&self, name: &str, by: i64) -> anyhow::Result<()> {
        self.conn.prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value=counters.value+excluded.value",
        )?
        .execute(params![name, by])?;
        Ok(())
    }

    /// Records a reconcile pass report (JSON) and keeps the last 100.
    pub fn record_reconcile_pass(
        &self,
        at_ms: i64,
        report: &serde_json::Value,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached("INSERT INTO reconcile_passes (at_ms, report) VALUES (?1, ?2)")?
            .execute(params![at_ms, report.to_string()])?;
        self.conn.prepare_cached(
            "DELETE FROM reconcile_passes WHERE id <= (SELECT MAX(id) - 100 FROM reconcile_passes)",
        )?
        .execute([])?;
        Ok(())
    }
}
