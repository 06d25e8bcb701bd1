//! The merge line's step state (`merge_line`, `merge_batches`; DESIGN §7,
//! migration 22): which tasks are ready to merge, which batch each waits
//! in and at what position, and what became of it (landed, split, sent
//! back).
//!
//! A row belongs to one version of its task (`task_version`): a row whose
//! task moved since (an operator's move, a rerun) is simply not waiting
//! any more — every reader joins `tasks` on stage and version, so no
//! other write path has to clean it up.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Db, Tx};

/// A task's place in the merge line; times in unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineRow {
    pub task_id: i64,
    pub project: String,
    pub task_version: i64,
    /// `ready`, `batched`, `split`, `landed` or `sent_back`.
    pub state: String,
    /// The batch it is in (`batched`), or was last in.
    pub batch_id: Option<i64>,
    /// Its 1-based position in that batch.
    pub position: Option<i64>,
    /// The revision the staging check validated (`[projects.staging]`).
    pub validated: Option<String>,
    /// The commit the line last rebased its branch onto.
    pub base: Option<String>,
    /// Why it was sent back or split.
    pub reason: Option<String>,
    pub ready_at_ms: i64,
    pub updated_at_ms: i64,
    pub landed_at_ms: Option<i64>,
}

const COLS: &str = "merge_line.task_id, merge_line.project, merge_line.task_version, \
     merge_line.state, merge_line.batch_id, merge_line.position, merge_line.validated, \
     merge_line.base, merge_line.reason, merge_line.ready_at_ms, merge_line.updated_at_ms, merge_line.landed_at_ms";

/// The rows whose task still waits at deploy-staging at the row's version.
const WAITING: &str = "merge_line.state IN ('ready','batched','split') AND EXISTS \
     (SELECT 1 FROM tasks WHERE tasks.id=merge_line.task_id AND tasks.stage='deploy-staging' \
     AND tasks.version=merge_line.task_version AND tasks.escalated=0)";

fn row(r: &Row) -> rusqlite::Result<LineRow> {
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
            "SELECT {COLS} FROM merge_line WHERE {WAITING} AND (?1 IS NULL OR project=?1) \
             ORDER BY project, CASE state WHEN 'batched' THEN 0 WHEN 'split' THEN 1 ELSE 2 END, \
             batch_id, position, ready_at_ms, task_id"
        ))?;
        let rows = stmt.query_map([project], row)?;
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
    /// Marks task `task_id` (of `project`, at `task_version`) ready to
    /// merge, replacing whatever row an earlier version left.
    pub fn line_ready(
        &self,
        task_id: i64,
        project: &str,
        task_version: i64,
        validated: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO merge_line (task_id, project, task_version, state, validated, \
                 ready_at_ms, updated_at_ms) VALUES (?1,?2,?3,'ready',?4,?5,?5) \
                 ON CONFLICT(task_id) DO UPDATE SET project=excluded.project, \
                 task_version=excluded.task_version, state='ready', batch_id=NULL, position=NULL, \
                 validated=excluded.validated, base=NULL, reason=NULL, ready_at_ms=excluded.ready_at_ms, \
                 updated_at_ms=excluded.updated_at_ms, landed_at_ms=NULL",
            )?
            .execute(params![task_id, project, task_version, validated, now_ms])?;
        Ok(())
    }

    /// Opens batch of `size` tasks for `project`; returns its id.
    pub fn line_open_batch(&self, project: &str, size: i64, now_ms: i64) -> anyhow::Result<i64> {
        self.conn
            .prepare_cached(
                "INSERT INTO merge_batches (project, size, state, created_at_ms) VALUES (?1,?2,'building',?3)",
            )?
            .execute(params![project, size, now_ms])?;
        Ok(self.conn.last_insert_rowid())
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

    /// Records that the line rebased task `task_id`'s branch onto `base`.
    pub fn line_set_base(&self, task_id: i64, base: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached("UPDATE merge_line SET base=?2 WHERE task_id=?1")?
            .execute(params![task_id, base])?;
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
