//! Tasks and their audit trail (`tasks`, `transitions`), the project
//! registry (`projects`), and the tracker side kept locally: the local
//! tracker's issues (`local_issues`) and the cached Plane states
//! (`tracker_states`).

use crate::sql::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Db, Tx};
use crate::model::{Actor, Stage, TransitionCause};

/// A task row.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub id: i64,
    pub project: String,
    pub tracker_issue_id: String,
    pub sequence: i64,
    pub title: String,
    pub body: String,
    pub stage: Stage,
    pub version: i64,
    pub branch: String,
    pub worktree: String,
    pub developer_retries: i64,
    pub escalated: bool,
    pub escalated_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Since when the task is parked by a budget (unix ms), if it is.
    pub parked_at_ms: Option<i64>,
    /// Which ceiling its next job would pass.
    pub parked_reason: Option<String>,
    /// `orch task unpark`: its next job runs regardless of the budgets.
    pub budget_waived: bool,
}

pub(super) const TASK_COLS: &str =
    "id, project, tracker_issue_id, sequence, title, body, stage, version, \
    branch, worktree, developer_retries, escalated, escalated_reason, created_at_ms, updated_at_ms, \
    parked_at_ms, parked_reason, budget_waived";

pub(super) fn task_row(r: &Row) -> crate::sql::Result<Task> {
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
        parked_at_ms: r.get(15)?,
        parked_reason: r.get(16)?,
        budget_waived: r.get(17)?,
    })
}

/// One row of the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub id: i64,
    pub task_id: i64,
    pub from_stage: Option<Stage>,
    pub to_stage: Stage,
    pub version: i64,
    pub actor: Actor,
    /// What made the move (migration 21; older rows were read from their
    /// reason text once, `other` where it said nothing recognisable).
    pub cause: TransitionCause,
    pub job_id: Option<i64>,
    pub reason: String,
    pub at_ms: i64,
    /// The delivery (inbox row) whose ingest made this move (migration 9);
    /// `None` for other actors and older rows.
    pub inbox_id: Option<i64>,
    /// The log of orch's own test run that caused this move (migration
    /// 15): set by orch for red CI and a red merge-gate re-test, never
    /// taken from the reason's text. `None` otherwise and for older rows.
    pub log_path: Option<String>,
}

/// A project of the registry (`projects` table), as the caller's config
/// names it.
#[derive(Debug, Clone, Copy)]
pub struct ProjectRow<'a> {
    pub name: &'a str,
    /// `local` or `plane`.
    pub tracker: &'a str,
    pub tracker_project_id: &'a str,
    /// `local` or `gitea`.
    pub forge: &'a str,
    pub repo: &'a str,
    pub default_branch: &'a str,
    pub clone_url: &'a str,
}

impl<'a> ProjectRow<'a> {
    /// The registry row of configured project `p`.
    pub fn of(p: &'a crate::config::ProjectConfig) -> ProjectRow<'a> {
        ProjectRow {
            name: &p.name,
            tracker: p.tracker.as_str(),
            tracker_project_id: &p.tracker_project_id,
            forge: p.forge.as_str(),
            repo: &p.repo,
            default_branch: &p.default_branch,
            clone_url: &p.clone_url,
        }
    }
}

/// One cached tracker state (Plane `State`: id, name, group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedState {
    pub state_id: String,
    pub name: String,
    pub group: String,
    pub fetched_at_ms: i64,
}

impl Db {
    /// The task with `id`.
    pub fn task(&self, id: i64) -> anyhow::Result<Option<Task>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks WHERE id=?1"))?
            .query_row([id], task_row)
            .optional()?)
    }

    /// Tasks not yet done, oldest first. Reads only them, through the
    /// partial index `tasks_unfinished` (schema migration 19), however
    /// many tasks are done.
    pub fn unfinished_tasks(&self) -> anyhow::Result<Vec<Task>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLS} FROM tasks WHERE unfinished=1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([], task_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Unfinished tasks with no queued or running job, oldest first: the
    /// ones reconcile's gate side looks at. Reads the unfinished tasks
    /// through `tasks_unfinished` and each one's jobs through their
    /// `(task_id, …)` key; a task with an active job is never loaded.
    pub fn unfinished_tasks_without_active_jobs(&self) -> anyhow::Result<Vec<Task>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLS} FROM tasks WHERE unfinished=1 AND NOT EXISTS \
             (SELECT 1 FROM jobs j WHERE j.task_id=tasks.id AND j.status IN ('queued','running')) \
             ORDER BY id"
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

    /// The task whose worktree is `path` (as stored: absolute), if any.
    pub fn task_by_worktree(&self, path: &str) -> anyhow::Result<Option<Task>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks WHERE worktree=?1"))?;
        Ok(stmt.query_row([path], task_row).optional()?)
    }

    /// The task for `(project, tracker_issue_id)`, if any.
    pub fn task_by_issue(
        &self,
        project: &str,
        tracker_issue_id: &str,
    ) -> anyhow::Result<Option<Task>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE project=?1 AND tracker_issue_id=?2"
            ))?
            .query_row(params![project, tracker_issue_id], task_row)
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

    /// The transitions of a task in order.
    pub fn transitions(&self, task_id: i64) -> anyhow::Result<Vec<TransitionRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, task_id, from_stage, to_stage, version, actor, job_id, reason, at_ms, inbox_id, log_path, cause \
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
                inbox_id: r.get(9)?,
                log_path: r.get(10)?,
                cause: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The id of the latest transition row (0 when there is none): ingest
    /// notes it before handling a delivery, to link what the handler wrote
    /// ([`Tx::link_transitions_to_delivery`]).
    pub fn last_transition_id(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM transitions")?
            .query_row([], |r| r.get(0))?)
    }

    /// Whether task `id`'s latest transition reruns its stage (`from = to`).
    pub fn last_transition_is_rerun(&self, id: i64) -> anyhow::Result<bool> {
        Ok(self.conn
            .prepare_cached(
                "SELECT from_stage IS NOT DISTINCT FROM to_stage FROM transitions WHERE task_id=?1 ORDER BY version DESC LIMIT 1",
            )?
            .query_row([id], |r| r.get(0))
            .optional()?
            .unwrap_or(false))
    }

    /// `(stage, escalated, count)` over all tasks, in pipeline order
    /// (`Stage::ALL`), not escalated first.
    pub fn tasks_by_stage(&self) -> anyhow::Result<Vec<(Stage, bool, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT stage, escalated, COUNT(*) FROM tasks GROUP BY stage, escalated")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut rows: Vec<(Stage, bool, i64)> = rows.collect::<Result<_, _>>()?;
        rows.sort();
        Ok(rows)
    }

    /// Local tracker issues of a project: `(id, state)`.
    pub fn local_issue_states(&self, project: &str) -> anyhow::Result<Vec<(i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, state FROM local_issues WHERE project=?1")?;
        let rows = stmt.query_map([project], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
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
}

impl Tx<'_> {
    /// Upserts a project of the registry (a no-op when nothing changed).
    pub fn sync_project(&self, p: &ProjectRow<'_>, now_ms: i64) -> anyhow::Result<()> {
        self.conn.prepare_cached(
            "INSERT INTO projects (name, tracker, tracker_project_id, forge, repo, default_branch, clone_url, synced_at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8) \
             ON CONFLICT(name) DO UPDATE SET tracker=excluded.tracker, tracker_project_id=excluded.tracker_project_id, \
             forge=excluded.forge, repo=excluded.repo, default_branch=excluded.default_branch, \
             clone_url=excluded.clone_url, synced_at_ms=excluded.synced_at_ms \
             WHERE projects.tracker IS DISTINCT FROM excluded.tracker OR projects.tracker_project_id IS DISTINCT FROM excluded.tracker_project_id \
             OR projects.forge IS DISTINCT FROM excluded.forge OR projects.repo IS DISTINCT FROM excluded.repo \
             OR projects.default_branch IS DISTINCT FROM excluded.default_branch OR projects.clone_url IS DISTINCT FROM excluded.clone_url",
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
        stage: Stage,
        branch: &str,
        worktree: &str,
        now_ms: i64,
    ) -> anyhow::Result<Option<i64>> {
        Ok(self.conn
            .prepare_cached(
                "INSERT INTO tasks (project, tracker_issue_id, sequence, title, body, stage, version, branch, worktree, created_at_ms, updated_at_ms) \
                 VALUES (?1,?2,?3,?4,?5,?6,1,?7,?8,?9,?9) ON CONFLICT(project, tracker_issue_id) DO NOTHING RETURNING id",
            )?
            .query_row(params![project, tracker_issue_id, sequence, title, body, stage, branch, worktree, now_ms], |r| r.get(0))
            .optional()?)
    }

    /// Moves task `id`'s worktree path from `from` to `to` (a fresh
    /// worktree for a claim whose task's own was held by another run,
    /// DESIGN §11 INV-10): the one writer of `tasks.worktree` after the
    /// task's creation. Returns false (nothing written) when the task's
    /// path is no longer `from`.
    pub fn move_task_worktree(&self, id: i64, from: &str, to: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached("UPDATE tasks SET worktree=?3 WHERE id=?1 AND worktree=?2")?
            .execute(params![id, from, to])?
            == 1)
    }

    /// Compare-and-swap of a task's stage: moves it from `(from, version)`
    /// to `to` with `version + 1` and the given retry count and escalation.
    /// Returns false (and changes nothing) when the task is no longer at
    /// `(from, version)`.
    #[allow(clippy::too_many_arguments)]
    pub fn cas_task(
        &self,
        id: i64,
        from: Stage,
        version: i64,
        to: Stage,
        developer_retries: i64,
        escalated: bool,
        escalated_reason: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self.conn
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
        from: Option<Stage>,
        to: Stage,
        version: i64,
        actor: Actor,
        cause: TransitionCause,
        job_id: Option<i64>,
        reason: &str,
        log_path: Option<&std::path::Path>,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let log_path = log_path.map(|p| p.to_string_lossy().into_owned());
        self.conn.prepare_cached(
            "INSERT INTO transitions (task_id, from_stage, to_stage, version, actor, cause, job_id, reason, log_path, at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
        )?
        .execute(params![task_id, from, to, version, actor, cause, job_id, reason, log_path, now_ms])?;
        Ok(())
    }

    /// Stamps every transition after row `after_id` with the delivery
    /// `inbox_id` whose ingest wrote them. Returns how many.
    ///
    /// Assumptions: the caller's IMMEDIATE transaction wrote every row
    /// after `after_id` (no other writer can), i.e. `after_id` was read in
    /// the same transaction before the delivery was handled.
    pub fn link_transitions_to_delivery(
        &self,
        after_id: i64,
        inbox_id: i64,
    ) -> anyhow::Result<usize> {
        Ok(self
            .conn
            .prepare_cached("UPDATE transitions SET inbox_id=?2 WHERE id>?1 AND inbox_id IS NULL")?
            .execute(params![after_id, inbox_id])?)
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
        Ok(self.conn.prepare_cached(
            "INSERT INTO local_issues (project, title, body, state, created_at_ms, updated_at_ms) VALUES (?1,?2,?3,?4,?5,?5) \
             RETURNING id",
        )?
        .query_row(params![project, title, body, state, now_ms], |r| r.get(0))?)
    }

    /// Sets a local tracker issue's state.
    pub fn set_local_issue_state(&self, id: i64, state: &str, now_ms: i64) -> anyhow::Result<()> {
        self.conn
            .prepare_cached("UPDATE local_issues SET state=?2, updated_at_ms=?3 WHERE id=?1")?
            .execute(params![id, state, now_ms])?;
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
}
