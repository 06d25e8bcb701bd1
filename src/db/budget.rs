//! Spend and parking for budgets (issue 16): what agent runs cost today,
//! per project and per task, a role's typical cost, and the parked tasks.
//! Spend is in a [`Measure`]: dollars or tokens.

use crate::sql::params;
use serde::Serialize;

use super::{Db, Tx};

/// A task parked by a budget, for `orch status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parked {
    pub task_id: i64,
    pub project: String,
    pub since_ms: i64,
    pub reason: String,
}

/// What a budget counts: US dollars, or tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Measure {
    /// `agent_runs.cost_usd`.
    #[default]
    Usd,
    /// Input + output + cache read + cache creation tokens of a run.
    Tokens,
}

impl Measure {
    /// A run's amount as SQL over `agent_runs` aliased `r` (a REAL).
    fn sql(self) -> &'static str {
        match self {
            Measure::Usd => "r.cost_usd",
            Measure::Tokens => {
                "CAST(r.input_tokens+r.output_tokens+r.cache_read_input_tokens\
                 +r.cache_creation_input_tokens AS REAL)"
            }
        }
    }

    /// The SQL condition over `agent_runs` aliased `r` of a run whose
    /// amount is known: its cost, or its tokens.
    fn known_sql(self) -> &'static str {
        match self {
            Measure::Usd => "r.cost_known=1",
            Measure::Tokens => "r.usage_known=1",
        }
    }

    /// `amount` for people: `$0.08`, `80000 tokens`.
    pub fn show(self, amount: f64) -> String {
        match self {
            Measure::Usd => format!("${amount:.2}"),
            Measure::Tokens => format!("{amount:.0} tokens"),
        }
    }
}

impl Db {
    /// What the agent runs started at or after `since_ms` cost in
    /// `measure`, of `project` when given (all projects otherwise).
    pub fn spent_since(
        &self,
        measure: Measure,
        since_ms: i64,
        project: Option<&str>,
    ) -> anyhow::Result<f64> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT COALESCE(SUM({}),0.0) FROM agent_runs r JOIN tasks t ON t.id=r.task_id \
                 WHERE r.started_at_ms>=?1 AND (CAST(?2 AS TEXT) IS NULL OR t.project=?2)",
                measure.sql()
            ))?
            .query_row(params![since_ms, project], |r| r.get(0))?)
    }

    /// What the agent runs of task `task_id` cost in all, in `measure`.
    pub fn spent_on_task(&self, measure: Measure, task_id: i64) -> anyhow::Result<f64> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT COALESCE(SUM({}),0.0) FROM agent_runs r WHERE r.task_id=?1",
                measure.sql()
            ))?
            .query_row([task_id], |r| r.get(0))?)
    }

    /// The median cost (in `measure`) of the last 20 runs of `role` whose
    /// amount is known (a cost for dollars, usage for tokens); `None`
    /// without any.
    pub fn role_median_cost(&self, measure: Measure, role: &str) -> anyhow::Result<Option<f64>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM agent_runs r WHERE r.role=?1 AND {} ORDER BY r.id DESC LIMIT 20",
            measure.sql(),
            measure.known_sql()
        ))?;
        let mut costs: Vec<f64> = stmt
            .query_map([role], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if costs.is_empty() {
            return Ok(None);
        }
        costs.sort_by(f64::total_cmp);
        let n = costs.len();
        Ok(Some(if n % 2 == 1 {
            costs[n / 2]
        } else {
            (costs[n / 2 - 1] + costs[n / 2]) / 2.0
        }))
    }

    /// Parked tasks, oldest park first.
    pub fn parked_tasks(&self) -> anyhow::Result<Vec<Parked>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, project, parked_at_ms, COALESCE(parked_reason,'') FROM tasks \
             WHERE parked_at_ms IS NOT NULL ORDER BY parked_at_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Parked {
                task_id: r.get(0)?,
                project: r.get(1)?,
                since_ms: r.get(2)?,
                reason: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Tx<'_> {
    /// Parks task `task_id` with `reason` (kept, with its start, when it
    /// is parked already). Returns whether it was not parked before.
    pub fn park_task(&self, task_id: i64, reason: &str, now_ms: i64) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE tasks SET parked_at_ms=?2, parked_reason=?3 \
                 WHERE id=?1 AND parked_at_ms IS NULL",
            )?
            .execute(params![task_id, now_ms, reason])?
            == 1)
    }

    /// Ends the park of task `task_id`; with `waive`, its next job runs
    /// regardless of the budgets (`orch task unpark`), else the waiver is
    /// used up (a claim). Returns whether the task was parked.
    pub fn unpark_task(&self, task_id: i64, waive: bool) -> anyhow::Result<bool> {
        // Every claim calls this; most tasks are neither parked nor waived,
        // and then there is nothing to write.
        let (was, has_reason, waived): (bool, bool, bool) = self
            .conn
            .prepare_cached(
                "SELECT parked_at_ms IS NOT NULL, parked_reason IS NOT NULL, budget_waived \
                 FROM tasks WHERE id=?1",
            )?
            .query_row([task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if was || has_reason || waived != waive {
            self.conn
                .prepare_cached(
                    "UPDATE tasks SET parked_at_ms=NULL, parked_reason=NULL, budget_waived=?2 WHERE id=?1",
                )?
                .execute(params![task_id, waive])?;
        }
        Ok(was)
    }
}
