//! What the forge said about a branch: CI statuses (`ci_statuses`),
//! branch heads (`branch_heads`) and pull requests (`pull_requests`).

use crate::sql::{params, OptionalExtension};
use serde::Serialize;

use super::{Db, Tx};

/// The CI context under which orch stores the result of the project's
/// test command when it runs it itself (local CI, the merge gate's
/// re-test).
pub const ORCH_TEST_CONTEXT: &str = "orch/test";

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

impl Db {
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

    /// The state of CI context `context` for `sha` of `project`, if stored.
    pub fn ci_status(
        &self,
        project: &str,
        sha: &str,
        context: &str,
    ) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT state FROM ci_statuses WHERE project=?1 AND sha=?2 AND context=?3",
            )?
            .query_row(params![project, sha, context], |r| r.get(0))
            .optional()?)
    }

    /// The log of orch's own run of the test command on `sha` of
    /// `project` (context [`ORCH_TEST_CONTEXT`]), as orch recorded it when
    /// it ran the tests; `None` when orch did not run them (or the row
    /// predates migration 16).
    pub fn ci_log_path(&self, project: &str, sha: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT log_path FROM ci_statuses WHERE project=?1 AND sha=?2 AND context=?3",
            )?
            .query_row(params![project, sha, ORCH_TEST_CONTEXT], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// The last known head of `branch` of `project` (pushed by orch or
    /// reported by the forge), if any.
    pub fn branch_head(&self, project: &str, branch: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT sha FROM branch_heads WHERE project=?1 AND branch=?2")?
            .query_row(params![project, branch], |r| r.get(0))
            .optional()?)
    }

    /// The orch branch whose last known head is `sha`, if exactly one.
    pub fn branch_for_sha(&self, project: &str, sha: &str) -> anyhow::Result<Option<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT branch FROM branch_heads WHERE project=?1 AND sha=?2")?;
        let branches: Vec<String> = stmt
            .query_map(params![project, sha], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(if branches.len() == 1 {
            branches.into_iter().next()
        } else {
            None
        })
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
}

impl Tx<'_> {
    /// Stores a CI status for `sha` (the latest per context wins).
    /// `log_path`: the log of the test run, only when orch ran the tests
    /// itself (a status a forge reported passes `None`, which also clears
    /// a log stored before under the same context).
    #[allow(clippy::too_many_arguments)]
    pub fn upsert_ci_status(
        &self,
        project: &str,
        sha: &str,
        context: &str,
        state: &str,
        target_url: &str,
        log_path: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn.prepare_cached(
            "INSERT INTO ci_statuses (project, sha, context, state, target_url, log_path, at_ms) VALUES (?1,?2,?3,?4,?5,?6,?7) \
             ON CONFLICT(project, sha, context) DO UPDATE SET state=excluded.state, target_url=excluded.target_url, \
             log_path=excluded.log_path, at_ms=excluded.at_ms",
        )?
        .execute(params![project, sha, context, state, target_url, log_path, now_ms])?;
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
        self.conn
            .prepare_cached(
                "INSERT INTO branch_heads (project, branch, sha, at_ms) VALUES (?1,?2,?3,?4) \
             ON CONFLICT(project, branch) DO UPDATE SET sha=excluded.sha, at_ms=excluded.at_ms",
            )?
            .execute(params![project, branch, sha, now_ms])?;
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
             merged=CASE WHEN pull_requests.merged > excluded.merged THEN pull_requests.merged ELSE excluded.merged END, at_ms=excluded.at_ms",
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
