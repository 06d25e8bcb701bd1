//! The merge line's step state (`merge_line`, `merge_batches`; DESIGN §7,
//! migration 22): which tasks are ready to merge, which batch each waits
//! in and at what position, and what became of it (landed, split, sent
//! back).
//!
//! A row belongs to one version of its task (`task_version`): a row whose
//! task moved since (an operator's move, a rerun) is simply not waiting
//! any more — every reader joins `tasks` on stage and version, so no
//! other write path has to clean it up.

use crate::sql::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Db, Tx};

/// A task's place in the merge line; times in unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineRow {
    pub task_id: i64,
    pub project: String,
    pub task_version: i64,
    /// `staging` (awaiting the staging check of `validated`), `ready`,
    /// `batched`, `split`, `landed` or `sent_back`.
    pub state: String,
    /// The batch it is in (`batched`), or was last in.
    pub batch_id: Option<i64>,
    /// Its 1-based position in that batch.
    pub position: Option<i64>,
    /// The revision validated before the line: the one the staging check
    /// validates (`staging`) or validated (`[projects.staging]`), else the
    /// head the line first found the branch at (the deployer's PASS),
    /// recorded at its first build. The line lands only this revision or
    /// its own rebase of it (`built`).
    pub validated: Option<String>,
    /// The commit the line last rebased its branch onto.
    pub base: Option<String>,
    /// The head that rebase gave the branch (a rebase of `validated` or
    /// of an earlier `built`); `None` until the line first built it.
    pub built: Option<String>,
    /// Why it was sent back or split.
    pub reason: Option<String>,
    pub ready_at_ms: i64,
    pub updated_at_ms: i64,
    pub landed_at_ms: Option<i64>,
    /// INFRA answers of the staging check so far (`staging`).
    pub staging_defers: i64,
    /// When the staging check may run again after an INFRA (`staging`).
    pub staging_at_ms: Option<i64>,
}

const COLS: &str = "merge_line.task_id, merge_line.project, merge_line.task_version, \
     merge_line.state, merge_line.batch_id, merge_line.position, merge_line.validated, \
     merge_line.base, merge_line.reason, merge_line.ready_at_ms, merge_line.updated_at_ms, merge_line.landed_at_ms, \
     merge_line.staging_defers, merge_line.staging_at_ms, merge_line.built";

/// The rows whose task still waits at deploy-staging at the row's version.
const CURRENT: &str = "EXISTS \
     (SELECT 1 FROM tasks WHERE tasks.id=merge_line.task_id AND tasks.stage='deploy-staging' \
     AND tasks.version=merge_line.task_version AND tasks.escalated=0)";

/// The rows waiting in the line proper (not for the staging check).
const WAITING: &str = "merge_line.state IN ('ready','batched','split') AND EXISTS \
     (SELECT 1 FROM tasks WHERE tasks.id=merge_line.task_id AND tasks.stage='deploy-staging' \
     AND tasks.version=merge_line.task_version AND tasks.escalated=0)";

fn row(r: &Row) -> crate::sql::Result<LineRow> {
    Ok(LineRow {
        task_id: r.get(0)?,
        project: r.get(1)?,
        task_version: r.get(2)?,
        state: r.get(3)?,
        batch_id: r.get(4)?,
        position: r.get(5)?,
        validated: r.get(6)?,
        base: r.get(7)?,
        reason: r.get(8)?,
        ready_at_ms: r.get(9)?,
        updated_at_ms: r.get(10)?,
        landed_at_ms: r.get(11)?,
        staging_defers: r.get(12)?,
        staging_at_ms: r.get(13)?,
        built: r.get(14)?,
    })
}

impl Db {
    /// Task `task_id`'s line row (any state), if it ever was ready.
    pub fn line_row(&self, task_id: i64) -> anyhow::Result<Option<LineRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {COLS} FROM merge_line WHERE task_id=?1"))?
            .query_row([task_id], row)
            .optional()?)
    }

    /// The waiting rows of `project` (every project when `None`), in line
    /// order: a batch being built first (by batch, then position), then
    /// split tasks, then ready ones by the time they became ready.
    pub fn line_waiting(&self, project: Option<&str>) -> anyhow::Result<Vec<LineRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLS} FROM merge_line WHERE {WAITING} AND (CAST(?1 AS TEXT) IS NULL OR project=?1) \
             ORDER BY project, CASE state WHEN 'batched' THEN 0 WHEN 'split' THEN 1 ELSE 2 END, \
             batch_id, position, ready_at_ms, task_id"
        ))?;
        let rows = stmt.query_map([project], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The rows of `project` (`None`: every project, by project)
    /// awaiting the staging check whose task still waits at their
    /// version, oldest first; with `due_ms`, only those whose INFRA
    /// backoff ended by then.
    pub fn line_awaiting_staging(
        &self,
        project: Option<&str>,
        due_ms: Option<i64>,
    ) -> anyhow::Result<Vec<LineRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLS} FROM merge_line WHERE state='staging' AND {CURRENT} \
             AND (CAST(?1 AS TEXT) IS NULL OR project=?1) \
             AND (CAST(?2 AS BIGINT) IS NULL OR COALESCE(staging_at_ms, 0)<=?2) \
             ORDER BY project, ready_at_ms, task_id"
        ))?;
        let rows = stmt.query_map(params![project, due_ms], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every line row, by task (for `orch check`).
    pub fn line_rows(&self) -> anyhow::Result<Vec<LineRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLS} FROM merge_line ORDER BY task_id"))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Tasks landed by the line since `since_ms`, per project:
    /// `(project, landed, sum of ms from ready to landed)`.
    pub fn line_landed_since(&self, since_ms: i64) -> anyhow::Result<Vec<(String, i64, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT project, COUNT(*), COALESCE(SUM(landed_at_ms - ready_at_ms),0) FROM merge_line \
             WHERE state='landed' AND landed_at_ms>=?1 GROUP BY project ORDER BY project",
        )?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Tx<'_> {
    /// Enters task `task_id` (of `project`, at `task_version`) in the
    /// line, replacing whatever row an earlier version left: ready to
    /// merge (`awaiting` `None`), or awaiting the staging check of
    /// revision `awaiting` (state `staging`).
    pub fn line_enter(
        &self,
        task_id: i64,
        project: &str,
        task_version: i64,
        awaiting: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let state = if awaiting.is_some() {
            "staging"
        } else {
            "ready"
        };
        self.conn
            .prepare_cached(
                "INSERT INTO merge_line (task_id, project, task_version, state, validated, \
                 ready_at_ms, updated_at_ms) VALUES (?1,?2,?3,?6,?4,?5,?5) \
                 ON CONFLICT(task_id) DO UPDATE SET project=excluded.project, \
                 task_version=excluded.task_version, state=excluded.state, batch_id=NULL, position=NULL, \
                 validated=excluded.validated, base=NULL, built=NULL, reason=NULL, ready_at_ms=excluded.ready_at_ms, \
                 updated_at_ms=excluded.updated_at_ms, landed_at_ms=NULL, staging_defers=0, \
                 staging_at_ms=NULL",
            )?
            .execute(params![task_id, project, task_version, awaiting, now_ms, state])?;
        Ok(())
    }

    /// Records an INFRA answer of the staging check for task `task_id`
    /// (state stays `staging`): `defers` so far, next try at `at_ms`.
    pub fn line_staging_defer(
        &self,
        task_id: i64,
        defers: i64,
        at_ms: i64,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE merge_line SET staging_defers=?2, staging_at_ms=?3, reason=?4, \
                 updated_at_ms=?5 WHERE task_id=?1 AND state='staging'",
            )?
            .execute(params![task_id, defers, at_ms, reason, now_ms])?;
        Ok(())
    }

    /// Opens batch of `size` tasks for `project`; returns its id.
    pub fn line_open_batch(&self, project: &str, size: i64, now_ms: i64) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO merge_batches (project, size, state, created_at_ms) VALUES (?1,?2,'building',?3) \
                 RETURNING id",
            )?
            .query_row(params![project, size, now_ms], |r| r.get(0))?)
    }

    /// Puts task `task_id` in batch `batch_id` at `position` (1-based).
    pub fn line_put_in_batch(
        &self,
        task_id: i64,
        batch_id: i64,
        position: i64,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE merge_line SET state='batched', batch_id=?2, position=?3, updated_at_ms=?4 \
                 WHERE task_id=?1",
            )?
            .execute(params![task_id, batch_id, position, now_ms])?;
        Ok(())
    }

    /// Sets task `task_id`'s line state to `state` (`ready`, `split`,
    /// `landed`, `sent_back`) with `reason`; `landed` stamps the landing
    /// time, `ready` and `split` leave their batch.
    pub fn line_set(
        &self,
        task_id: i64,
        state: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE merge_line SET state=?2, reason=COALESCE(?3, reason), updated_at_ms=?4, \
                 landed_at_ms=CASE WHEN ?2='landed' THEN ?4 ELSE landed_at_ms END, \
                 position=CASE WHEN ?2 IN ('ready','split') THEN NULL ELSE position END \
                 WHERE task_id=?1",
            )?
            .execute(params![task_id, state, reason, now_ms])?;
        Ok(())
    }

    /// Records `validated` for task `task_id` when its row has none (a
    /// project without `[projects.staging]`): the head the line first
    /// found its branch at, which the deployer passed.
    pub fn line_set_validated(&self, task_id: i64, validated: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE merge_line SET validated=?2 WHERE task_id=?1 AND validated IS NULL",
            )?
            .execute(params![task_id, validated])?;
        Ok(())
    }

    /// Records that the line rebased task `task_id`'s branch onto `base`,
    /// giving it head `built` (before it pushes it).
    pub fn line_set_built(&self, task_id: i64, base: &str, built: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached("UPDATE merge_line SET base=?2, built=?3 WHERE task_id=?1")?
            .execute(params![task_id, base, built])?;
        Ok(())
    }

    /// Ends batch `batch_id` as `state` (`landed`, `split`, `done`), with
    /// the tip main moved to (if any) and the number of test runs it took.
    pub fn line_finish_batch(
        &self,
        batch_id: i64,
        state: &str,
        tip: Option<&str>,
        tests: i64,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE merge_batches SET state=?2, tip=COALESCE(?3, tip), tests=tests+?4, \
                 finished_at_ms=?5 WHERE id=?1",
            )?
            .execute(params![batch_id, state, tip, tests, now_ms])?;
        Ok(())
    }
}
