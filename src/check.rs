//! `orch check`: verify the invariants of DESIGN §11 that the database can
//! show. Used by operators after an incident, by the chaos soak and by the
//! tests; one place for what "consistent" means.
//!
//! Checked: integrity and foreign keys; the schema version; every task's
//! transitions form a legal path with consecutive versions that ends at
//! the task's stage; no two jobs for one (task, stage, version); at most one
//! queued-or-running job per task; no running job whose worker is gone
//! (meaningful after a `reap`; a detached run whose supervisor lives
//! counts as watched); every delivery processed, retryable or
//! dead-lettered with its reason; every outbox message pending, delivered
//! or dead with its reason; a task the merge line landed left
//! deploy-staging, and a batched one has its batch and position.
//! [`repositories`] adds invariant 8 as far as it can be seen from
//! outside: orch's git runs no hook, and no clone or worktree config sets a
//! program-running key.

use serde::Serialize;

use crate::db::{Db, Job};
use crate::pipeline::{is_legal, JobStatus, Stage};

/// One violated invariant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (`integrity`, `transitions`, `jobs`, …).
    pub invariant: &'static str,
    pub detail: String,
}

/// Runs every check; an empty list means consistent.
///
/// `live_worker(job)` tells whether a running job's worker is alive (the
/// reaper's notion: [`crate::fence::Here::worker_gone`]); pass `|_| true`
/// to skip that check. A detached run whose supervisor lives counts as
/// watched only when the job is of this host and boot
/// ([`crate::fence::owned_here`]): no other job's processes are looked up.
pub fn run(db: &Db, live_worker: &dyn Fn(&Job) -> bool) -> anyhow::Result<Vec<Violation>> {
    let mut v = Vec::new();
    let mut bad = |invariant: &'static str, detail: String| v.push(Violation { invariant, detail });

    let (integrity, fk) = db.integrity()?;
    if integrity != "ok" {
        bad("integrity", format!("PRAGMA integrity_check: {integrity}"));
    }
    if fk > 0 {
        bad("integrity", format!("{fk} foreign key violation(s)"));
    }
    let version = db.user_version()?;
    if version != crate::db::schema_version() {
        bad(
            "schema",
            format!(
                "user_version {version}, binary {}",
                crate::db::schema_version()
            ),
        );
    }

    for r in db.line_rows()? {
        let Some(task) = db.task(r.task_id)? else {
            continue;
        };
        // A landed task moved on with the landing's own transaction.
        if r.state == "landed"
            && task.stage == Stage::DeployStaging
            && task.version == r.task_version
        {
            bad(
                "merge_line",
                format!(
                    "task {} is landed in the merge line but still at deploy-staging v{}",
                    task.id, task.version
                ),
            );
        }
        if r.state == "batched" && (r.batch_id.is_none() || r.position.is_none()) {
            bad(
                "merge_line",
                format!(
                    "task {} is batched in the merge line without a batch and position",
                    task.id
                ),
            );
        }
    }
    for task in db.tasks()? {
        let transitions = db.transitions(task.id)?;
        let mut prev: Option<(i64, Stage)> = None;
        for t in &transitions {
            match &prev {
                None => {
                    if t.version != 1 || t.from_stage.is_some() {
                        bad(
                            "transitions",
                            format!(
                                "task {}: first transition is v{} from {:?}",
                                task.id,
                                t.version,
                                t.from_stage.map(Stage::as_str)
                            ),
                        );
                    }
                }
                Some((pv, pto)) => {
                    if t.version != pv + 1 {
                        bad(
                            "transitions",
                            format!("task {}: v{} follows v{pv}", task.id, t.version),
                        );
                    }
                    if t.from_stage != Some(*pto) {
                        bad(
                            "transitions",
                            format!(
                                "task {}: v{} starts at {:?}, previous ended at {pto}",
                                task.id,
                                t.version,
                                t.from_stage.map(Stage::as_str)
                            ),
                        );
                    }
                    let legal = t.from_stage.is_some_and(|f| is_legal(f, t.to_stage));
                    if !legal {
                        bad(
                            "transitions",
                            format!(
                                "task {}: illegal v{} {:?} → {}",
                                task.id,
                                t.version,
                                t.from_stage.map(Stage::as_str),
                                t.to_stage
                            ),
                        );
                    }
                }
            }
            prev = Some((t.version, t.to_stage));
        }
        match prev {
            Some((pv, pto)) if pv == task.version && pto == task.stage => {}
            other => bad(
                "transitions",
                format!(
                    "task {} at {} v{} but its last transition is {:?}",
                    task.id,
                    task.stage,
                    task.version,
                    other.map(|(v, s)| (v, s.as_str()))
                ),
            ),
        }
        let jobs = db.jobs_for_task(task.id)?;
        let active = jobs.iter().filter(|j| j.status.is_active()).count();
        if active > 1 {
            bad("jobs", format!("task {} has {active} active jobs", task.id));
        }
        let mut keys: Vec<(Stage, i64)> = jobs.iter().map(|j| (j.stage, j.task_version)).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != jobs.len() {
            bad(
                "jobs",
                format!("task {} has two jobs for one (stage, version)", task.id),
            );
        }
        for j in jobs.iter().filter(|j| j.status == JobStatus::Running) {
            let watched = live_worker(j);
            // A detached run whose supervisor lives goes on without a
            // worker: a later tick adopts it (DESIGN §4 "Detached runs").
            let alive = watched
                || (j.exit_recorded_at_ms.is_none()
                    && crate::fence::owned_here(j)
                    && crate::process::detached::may_run(
                        j.id,
                        j.epoch,
                        j.runner.as_deref(),
                        j.run_handle.as_deref(),
                    ));
            if !alive && j.exit_recorded_at_ms.is_some() && j.finalize_failures > 0 {
                bad(
                    "jobs",
                    format!(
                        "job {} is running but its worker is gone: its agent exited and its \
                         finalize failed ({}); the reaper retries it (orch reap)",
                        j.id,
                        j.last_error.as_deref().unwrap_or("")
                    ),
                );
            } else if !alive {
                bad(
                    "jobs",
                    format!("job {} is running but its worker is gone", j.id),
                );
            }
        }
    }

    for d in db.inbox(false, i64::MAX)? {
        if d.dead && d.error.is_none() {
            bad(
                "inbox",
                format!("delivery {} is dead-lettered without a reason", d.id),
            );
        }
    }
    for m in db.outbox(None)? {
        if m.status == "dead" && m.last_error.is_none() {
            bad(
                "outbox",
                format!("message {} is dead-lettered without a reason", m.id),
            );
        }
    }
    Ok(v)
}

/// Invariant 8 ("nothing an agent writes runs with orch's privileges or
/// reads its secrets"), as far as orch can verify it: a probe commit in a
/// scratch repository under the system temp dir with planted hooks shows
/// that orch's git runs none ([`crate::git::probe_hooks_off`]), and no
/// project clone or task worktree has a program-running key in its own
/// config ([`crate::git::audit`]). Writes only the scratch repository.
pub fn repositories(ctx: &crate::ctx::Ctx, db: &Db) -> anyhow::Result<Vec<Violation>> {
    let mut v = Vec::new();
    let scratch = std::env::temp_dir().join(format!("orch-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let probe = crate::git::probe_hooks_off(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    if let Err(e) = probe {
        v.push(Violation {
            invariant: "secrets",
            detail: format!("{e:#}"),
        });
    }
    let mut dirs: Vec<std::path::PathBuf> = ctx
        .config
        .projects
        .iter()
        .map(|p| ctx.repo(p).clone_dir)
        .collect();
    dirs.extend(
        db.tasks()?
            .into_iter()
            .map(|t| std::path::PathBuf::from(t.worktree)),
    );
    for dir in dirs.iter().filter(|d| d.exists()) {
        for detail in crate::git::audit(dir) {
            v.push(Violation {
                invariant: "secrets",
                detail,
            });
        }
    }
    Ok(v)
}
