//! The `orch status` document (also served as `GET /queue`): a typed,
//! serialisable snapshot of the queue, and its text form for people.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::clock::now_ms;
use crate::db::{Db, Lease, Parked, Pause};
use crate::model::Stage;

/// The status document. Times are unix milliseconds; its JSON is what
/// `orch status --json` prints and `GET /queue` serves.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub now_ms: i64,
    pub schema_version: i64,
    /// Tasks by stage and escalation.
    pub tasks: Vec<StageCount>,
    /// Jobs by status; a running job whose finalize failed counts as
    /// `finalize_failed`, not `running`.
    pub jobs: BTreeMap<String, i64>,
    /// Jobs running now (an agent, or its finalize), oldest first: at
    /// most [`Options::limit`] of them.
    pub running: Vec<RunningJob>,
    /// How many jobs are running (`running` may show fewer).
    pub running_total: usize,
    /// Jobs whose agent exited and whose finalize failed: nothing runs
    /// for them until the reaper retries.
    pub finalize_failed: Vec<crate::reap::FinalizeFailed>,
    pub leases: Vec<Lease>,
    /// The hosts that ran `work-once`, `tick` or `reap` against this
    /// store, the most recently seen first.
    pub hosts: Vec<HostStatus>,
    /// The merge line per project with tasks ready to merge.
    pub merge_line: Vec<LineStatus>,
    /// Agent accounts whose dispatch is paused now (usage or rate limit),
    /// with the pause's end (`until_ms`).
    pub pauses: Vec<Pause>,
    /// Tasks parked by a budget: not claimed until within it again. At
    /// most [`Options::limit`] of them.
    pub parked: Vec<Parked>,
    /// How many tasks are parked (`parked` may show fewer).
    pub parked_total: usize,
    pub inbox: InboxCounts,
    /// Outbox messages by status.
    pub outbox: BTreeMap<String, i64>,
    /// The newest dead letters (at most 20).
    pub outbox_dead: Vec<DeadLetter>,
    pub counters: BTreeMap<String, i64>,
    /// A summary of the last reconcile pass, if any.
    pub reconcile_last_pass: Option<LastPass>,
    /// Tasks that wait for a human (an escalation, the analysis approval),
    /// oldest change first: at most [`Options::limit`] of them.
    pub waiting: Vec<Waiting>,
    /// How many tasks wait for a human (`waiting` may show fewer).
    pub waiting_total: usize,
}

/// A host (`hosts` row) and how long ago it was last seen.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// The host id (`ORCH_HOST_ID`).
    pub id: String,
    /// Its boot id when last seen.
    pub boot_id: Option<String>,
    /// The orch version it ran when last seen.
    pub version: Option<String>,
    /// When it was last seen, unix ms.
    pub seen_at_ms: Option<i64>,
    /// Seconds since then (`None` when never recorded).
    pub age_s: Option<i64>,
}

/// One repository's merge line: the tasks ready to merge in line order
/// (a batch being built first), since when the oldest waits, and the
/// tasks before the line, awaiting the staging check (`[projects.staging]`).
#[derive(Debug, Clone, Serialize)]
pub struct LineStatus {
    pub project: String,
    pub tasks: Vec<i64>,
    /// Tasks whose deployer passed, awaiting the staging check of that
    /// revision (the line's first step), oldest first.
    pub awaiting_staging: Vec<i64>,
    /// The batch being built, tested or fast-forwarded, if any, with its
    /// tasks in order.
    pub batch_id: Option<i64>,
    pub batch: Vec<i64>,
    pub oldest_ready_at_ms: i64,
}

/// The merge line of every project with tasks waiting in it or awaiting
/// its staging check, by project.
pub fn merge_line(db: &Db) -> anyhow::Result<Vec<LineStatus>> {
    let mut by_project: std::collections::BTreeMap<String, LineStatus> = Default::default();
    fn of<'a>(
        m: &'a mut std::collections::BTreeMap<String, LineStatus>,
        r: &crate::db::LineRow,
    ) -> &'a mut LineStatus {
        m.entry(r.project.clone()).or_insert_with(|| LineStatus {
            project: r.project.clone(),
            tasks: Vec::new(),
            awaiting_staging: Vec::new(),
            batch_id: None,
            batch: Vec::new(),
            oldest_ready_at_ms: r.ready_at_ms,
        })
    }
    for r in db.line_waiting(None)? {
        let l = of(&mut by_project, &r);
        l.tasks.push(r.task_id);
        l.oldest_ready_at_ms = l.oldest_ready_at_ms.min(r.ready_at_ms);
        if r.state == "batched" {
            l.batch_id = r.batch_id;
            l.batch.push(r.task_id);
        }
    }
    for r in db.line_awaiting_staging(None, None)? {
        let l = of(&mut by_project, &r);
        l.awaiting_staging.push(r.task_id);
        l.oldest_ready_at_ms = l.oldest_ready_at_ms.min(r.ready_at_ms);
    }
    Ok(by_project.into_values().collect())
}

/// How long a list `orch status` shows by default (`--all`: all of it).
pub const LIST_LIMIT: usize = 20;

/// What [`document`] is asked for beyond the database.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The most entries a list (running jobs, waiting, parked) shows;
    /// `None`: every entry.
    pub limit: Option<usize>,
    /// When the last reconcile pass finished (unix ms): the `reconcile`
    /// tick stamp, `Ctx::tick_last_ok("reconcile")`. The database holds
    /// the last pass that changed the report; an unchanged pass writes
    /// nothing there.
    pub reconcile_ran_at_ms: Option<i64>,
}

/// A task that only a human moves on, and the command to do it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub task_id: i64,
    pub project: String,
    pub title: String,
    pub stage: Stage,
    /// Why it waits: `escalated: <reason>` or `analysis waits for approval`.
    pub why: String,
    /// What to run, e.g. `orch task unblock 2`.
    pub command: String,
    /// When the task last changed (unix ms).
    pub since_ms: i64,
}

/// The tasks waiting for a human, from the database. Reads only the
/// unfinished tasks.
///
/// Errors: database errors.
pub fn waiting(db: &Db) -> anyhow::Result<Vec<Waiting>> {
    let mut out = Vec::new();
    for t in db.unfinished_tasks()? {
        if !t.escalated && t.stage != Stage::Analysis {
            continue;
        }
        let (why, command) = if t.escalated {
            (
                format!("escalated: {}", t.escalated_reason.as_deref().unwrap_or("")),
                format!("orch task unblock {}", t.id),
            )
        } else if t.stage == Stage::Analysis
            && !db.jobs_for_task(t.id)?.iter().any(|j| j.status.is_active())
        {
            (
                "analysis waits for approval".to_string(),
                format!(
                    "orch task approve {id}  (or: orch task reject {id} --reason …)",
                    id = t.id
                ),
            )
        } else {
            continue;
        };
        out.push(Waiting {
            task_id: t.id,
            project: t.project,
            title: t.title,
            stage: t.stage,
            why,
            command,
            since_ms: t.updated_at_ms,
        });
    }
    out.sort_by_key(|w| (w.since_ms, w.task_id));
    Ok(out)
}

/// How many tasks are at `stage` with this escalation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageCount {
    pub stage: Stage,
    pub escalated: bool,
    pub count: i64,
}

/// A running job; `age_s` is seconds since its claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningJob {
    pub job_id: i64,
    pub task_id: i64,
    pub stage: Stage,
    pub role: String,
    /// As counted toward `ORCH_JOB_MAX_ATTEMPTS` ([`crate::db::Job::counted_attempt`]).
    pub attempt: i64,
    pub worker_pid: Option<i64>,
    pub agent_pid: Option<i64>,
    pub age_s: i64,
    pub exit_code: Option<i64>,
}

/// The inbox backlog: pending, failing (retrying) and dead deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxCounts {
    pub pending: i64,
    pub failing: i64,
    pub dead: i64,
}

/// A dead-lettered outbox message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    /// Its dedupe key.
    pub key: String,
    pub channel: String,
    pub kind: String,
    pub attempts: i64,
    pub error: Option<String>,
}

/// The last reconcile pass, as recorded (fields missing from the record
/// are `None`/null); lists are given as their lengths. A pass is recorded
/// only when its report changes, so the report is that of the last pass
/// and of every pass since `changed_at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastPass {
    /// When the last pass ran: the later of its tick stamp and the record.
    pub at_ms: Option<i64>,
    /// When a pass last recorded a different report.
    pub changed_at_ms: Option<i64>,
    pub examined: Option<i64>,
    pub unblocked: usize,
    pub replayed: usize,
    /// `(project, error)` pairs, as recorded.
    pub errors: serde_json::Value,
    /// Skipped tasks by reason: how many.
    pub skipped: Option<BTreeMap<String, usize>>,
}

/// Builds the status document: tasks by stage, jobs by status, running
/// jobs with their age in seconds, leases, inbox backlog and dead
/// letters, outbox by status, counters.
///
/// Errors: database errors.
pub fn document(
    db: &Db,
    settings: &crate::config::Settings,
    opts: &Options,
) -> anyhow::Result<Status> {
    let now = now_ms();
    let limit = opts.limit.unwrap_or(usize::MAX);
    // Few: each waits for the reaper, which retries or fails it.
    let finalize_failed: Vec<crate::reap::FinalizeFailed> = db
        .finalize_failed_jobs()?
        .iter()
        .filter_map(|j| crate::reap::finalize_failed(settings, j))
        .collect();
    let jobs = job_counts(db.count_by_status("jobs")?, finalize_failed.len() as i64);
    let running_total = jobs.get("running").copied().unwrap_or(0).max(0) as usize;
    let running = db
        .jobs_with_status_limit(
            crate::model::JobStatus::Running,
            limit.saturating_add(finalize_failed.len()),
        )?
        .into_iter()
        .filter(|j| crate::reap::finalize_failed(settings, j).is_none())
        .take(limit)
        .map(|j| RunningJob {
            job_id: j.id,
            task_id: j.task_id,
            stage: j.stage,
            attempt: j.counted_attempt(),
            role: j.role,
            worker_pid: j.worker_pid,
            agent_pid: j.agent_pid,
            age_s: (now - j.claimed_at_ms.unwrap_or(now)) / 1000,
            exit_code: j.exit_code,
        })
        .collect();
    let (pending, failing, dead) = db.inbox_counts()?;
    let tasks = db
        .tasks_by_stage()?
        .into_iter()
        .map(|(stage, escalated, count)| StageCount {
            stage,
            escalated,
            count,
        })
        .collect();
    let outbox_dead = db
        .dead_outbox(20)?
        .into_iter()
        .map(|m| DeadLetter {
            id: m.id,
            key: m.dedupe_key,
            channel: m.channel,
            kind: m.kind,
            attempts: m.attempts,
            error: m.last_error,
        })
        .collect();
    let reconcile_last_pass = db.last_reconcile_pass()?.map(|p| LastPass {
        at_ms: p["at_ms"].as_i64().max(opts.reconcile_ran_at_ms),
        changed_at_ms: p["at_ms"].as_i64(),
        examined: p["examined"].as_i64(),
        unblocked: p["unblocked"].as_array().map_or(0, Vec::len),
        replayed: p["replayed"].as_array().map_or(0, Vec::len),
        errors: p["errors"].clone(),
        skipped: p["skipped"].as_object().map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_array().map_or(0, Vec::len)))
                .collect()
        }),
    });
    let mut parked = db.parked_tasks()?;
    let parked_total = parked.len();
    parked.truncate(limit);
    let mut waiting = waiting(db)?;
    let waiting_total = waiting.len();
    waiting.truncate(limit);
    Ok(Status {
        now_ms: now,
        schema_version: db.user_version()?,
        tasks,
        jobs,
        running,
        running_total,
        finalize_failed,
        leases: db.leases()?,
        hosts: db
            .hosts()?
            .into_iter()
            .map(|h| HostStatus {
                age_s: h.seen_at_ms.map(|t| (now - t).max(0) / 1000),
                id: h.id,
                boot_id: h.boot_id,
                version: h.version,
                seen_at_ms: h.seen_at_ms,
            })
            .collect(),
        merge_line: merge_line(db)?,
        pauses: db
            .pauses()?
            .into_iter()
            .filter(|p| p.holds_at(now))
            .collect(),
        parked,
        parked_total,
        inbox: InboxCounts {
            pending,
            failing,
            dead,
        },
        outbox: db.count_by_status("outbox")?.into_iter().collect(),
        outbox_dead,
        counters: db.counters()?.into_iter().collect(),
        reconcile_last_pass,
        waiting,
        waiting_total,
    })
}

/// Jobs by status, with `stalled` running jobs counted as
/// `finalize_failed` instead of `running` (the metrics' `orch_jobs` too).
pub fn job_counts(by_status: Vec<(String, i64)>, stalled: i64) -> BTreeMap<String, i64> {
    let mut m: BTreeMap<String, i64> = by_status.into_iter().collect();
    if stalled > 0 {
        if let Some(n) = m.get_mut("running") {
            *n -= stalled;
        }
        m.retain(|_, n| *n > 0);
        m.insert("finalize_failed".into(), stalled);
    }
    m
}

/// `k=v k=v …`, or `none` for an empty map.
fn pairs<V: fmt::Display>(m: &BTreeMap<String, V>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A number that may be missing from a record: `null` when it is.
fn or_null(v: Option<i64>) -> String {
    v.map_or_else(|| "null".into(), |n| n.to_string())
}

/// The text form `orch status` prints for people.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tasks:")?;
        for s in &self.tasks {
            writeln!(
                f,
                // `{:>5}` was meant, but the count was always printed
                // unpadded; people and scripts read it so.
                "  {:<15} {}{}",
                s.stage,
                s.count,
                if s.escalated { "  (escalated)" } else { "" }
            )?;
        }
        writeln!(f, "jobs: {}", pairs(&self.jobs))?;
        for r in &self.running {
            writeln!(
                f,
                "  running job {} task {} {} attempt {} for {}",
                r.job_id,
                r.task_id,
                r.stage,
                r.attempt,
                crate::clock::duration(r.age_s * 1000)
            )?;
        }
        more(f, "  ", self.running_total, self.running.len())?;
        for x in &self.finalize_failed {
            writeln!(
                f,
                "  FINALIZE FAILED job {} task {} {} attempt {}: {}; {}",
                x.job_id,
                x.task_id,
                x.stage,
                x.attempt,
                x.error,
                x.retry_text(self.now_ms)
            )?;
        }
        for l in &self.leases {
            writeln!(
                f,
                "lease {} held by {}{}, expires {}",
                l.name,
                l.holder,
                l.job_id
                    .map(|j| format!(" for job {j}"))
                    .unwrap_or_default(),
                crate::clock::ago(l.expires_at_ms, self.now_ms)
            )?;
        }
        for h in &self.hosts {
            writeln!(
                f,
                "host {} (orch {}) seen {}",
                h.id,
                h.version.as_deref().unwrap_or("?"),
                h.seen_at_ms
                    .map_or_else(|| "never".into(), |t| crate::clock::ago(t, self.now_ms))
            )?;
        }
        for l in &self.merge_line {
            let ids = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            writeln!(
                f,
                "merge line {}: {} waiting (tasks {}){}{}, the oldest ready {}",
                l.project,
                l.tasks.len(),
                ids(&l.tasks),
                l.batch_id
                    .map(|b| format!("; batch {b} in progress: {}", ids(&l.batch)))
                    .unwrap_or_default(),
                if l.awaiting_staging.is_empty() {
                    String::new()
                } else {
                    format!("; awaiting the staging check: {}", ids(&l.awaiting_staging))
                },
                crate::clock::ago(l.oldest_ready_at_ms, self.now_ms)
            )?;
        }
        for p in &self.pauses {
            writeln!(
                f,
                "paused: account {} ({} limit) until {}: {}",
                p.account,
                p.kind,
                crate::clock::human(p.until_ms, self.now_ms),
                p.reason
            )?;
        }
        for p in &self.parked {
            writeln!(
                f,
                "parked: task {} ({}) since {}: {}",
                p.task_id,
                p.project,
                crate::clock::human(p.since_ms, self.now_ms),
                p.reason
            )?;
        }
        more(f, "", self.parked_total, self.parked.len())?;
        writeln!(
            f,
            "inbox: pending={} failing={} dead={}",
            self.inbox.pending, self.inbox.failing, self.inbox.dead
        )?;
        writeln!(f, "outbox: {}", pairs(&self.outbox))?;
        for d in &self.outbox_dead {
            writeln!(
                f,
                "  dead letter {} {} after {} attempt(s): {} (orch outbox retry {})",
                d.id,
                d.key,
                d.attempts,
                d.error.as_deref().unwrap_or(""),
                d.id
            )?;
        }
        writeln!(f, "counters: {}", pairs(&self.counters))?;
        if let Some(last) = &self.reconcile_last_pass {
            writeln!(
                f,
                "reconcile: last pass {}: examined {}, unblocked {}, replayed {}, skipped {}",
                last.at_ms.map_or_else(
                    || "at an unknown time".to_string(),
                    |at| crate::clock::human(at, self.now_ms)
                ) + &match last.changed_at_ms {
                    Some(c) if Some(c) != last.at_ms => {
                        format!(" (same result since {})", crate::clock::ago(c, self.now_ms))
                    }
                    _ => String::new(),
                },
                or_null(last.examined),
                last.unblocked,
                last.replayed,
                last.skipped.as_ref().map_or_else(|| "none".into(), pairs)
            )?;
        }
        if !self.waiting.is_empty() {
            writeln!(f, "waiting for a human:")?;
            for w in &self.waiting {
                writeln!(
                    f,
                    "  task {} [{}] {} at {}, {} ({}): {}",
                    w.task_id,
                    w.project,
                    w.title,
                    w.stage,
                    w.why,
                    crate::clock::ago(w.since_ms, self.now_ms),
                    w.command
                )?;
            }
            more(f, "  ", self.waiting_total, self.waiting.len())?;
        }
        Ok(())
    }
}

/// `… and N more (orch status --all)` when a list shows `shown` of `total`.
fn more(f: &mut fmt::Formatter<'_>, indent: &str, total: usize, shown: usize) -> fmt::Result {
    if total > shown {
        writeln!(
            f,
            "{indent}… and {} more (orch status --all)",
            total - shown
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text form people read, as a snapshot: change it only on purpose.
    #[test]
    fn status_text_snapshot() {
        let status = Status {
            now_ms: 1_000_000,
            schema_version: 3,
            tasks: vec![
                StageCount {
                    stage: Stage::Development,
                    escalated: false,
                    count: 2,
                },
                StageCount {
                    stage: Stage::DeployStaging,
                    escalated: true,
                    count: 1,
                },
            ],
            jobs: [("queued".to_string(), 1), ("running".to_string(), 1)].into(),
            running: vec![RunningJob {
                job_id: 7,
                task_id: 3,
                stage: Stage::Development,
                role: "developer".into(),
                attempt: 2,
                worker_pid: Some(100),
                agent_pid: None,
                age_s: 42,
                exit_code: None,
            }],
            running_total: 3,
            finalize_failed: vec![crate::reap::FinalizeFailed {
                job_id: 8,
                task_id: 5,
                stage: Stage::Development,
                role: "developer".into(),
                attempt: 1,
                failures: 1,
                max_attempts: 5,
                error: "finalize failed: git push: remote unpack failed".into(),
                exited_at_ms: 900_000,
                retry_at_ms: 1_200_000,
            }],
            leases: vec![Lease {
                name: "merge:acme/app".into(),
                holder: "task:4".into(),
                job_id: Some(9),
                acquired_at_ms: 900_000,
                expires_at_ms: 1_600_000,
            }],
            hosts: vec![HostStatus {
                id: "a".into(),
                boot_id: Some("b00t".into()),
                version: Some("0.1.0".into()),
                seen_at_ms: Some(970_000),
                age_s: Some(30),
            }],
            merge_line: vec![],
            pauses: vec![],
            parked: vec![],
            parked_total: 0,
            inbox: InboxCounts {
                pending: 1,
                failing: 0,
                dead: 2,
            },
            outbox: BTreeMap::new(),
            outbox_dead: vec![DeadLetter {
                id: 5,
                key: "task-3-v2-notify".into(),
                channel: "notify".into(),
                kind: "escalated".into(),
                attempts: 8,
                error: Some("HTTP 500".into()),
            }],
            counters: [("merge_gate.deferred_total".to_string(), 4)].into(),
            reconcile_last_pass: Some(LastPass {
                at_ms: Some(990_000),
                changed_at_ms: Some(700_000),
                examined: Some(3),
                unblocked: 1,
                replayed: 0,
                errors: serde_json::json!([]),
                skipped: Some([("analysis is a human gate".to_string(), 2)].into()),
            }),
            waiting: vec![Waiting {
                task_id: 3,
                project: "app".into(),
                title: "Add a button".into(),
                stage: Stage::DeployStaging,
                why: "escalated: merge conflict".into(),
                command: "orch task unblock 3".into(),
                since_ms: 820_000,
            }],
            waiting_total: 1,
        };
        // The one absolute time is local: the zone the test runs in.
        let last_pass = crate::clock::local_rfc3339(990_000);
        let expected = format!(
            "\
tasks:
  development     2
  deploy-staging  1  (escalated)
jobs: queued=1 running=1
  running job 7 task 3 development attempt 2 for 42 s
  … and 2 more (orch status --all)
  FINALIZE FAILED job 8 task 5 development attempt 1: finalize failed: git push: remote unpack failed; the reaper retries it in 3 min (finalize 1 of 5 failed)
lease merge:acme/app held by task:4 for job 9, expires in 10 min
host a (orch 0.1.0) seen 30 s ago
inbox: pending=1 failing=0 dead=2
outbox: none
  dead letter 5 task-3-v2-notify after 8 attempt(s): HTTP 500 (orch outbox retry 5)
counters: merge_gate.deferred_total=4
reconcile: last pass {last_pass} (10 s ago) (same result since 5 min ago): examined 3, unblocked 1, replayed 0, skipped analysis is a human gate=2
waiting for a human:
  task 3 [app] Add a button at deploy-staging, escalated: merge conflict (3 min ago): orch task unblock 3
"
        );
        assert_eq!(status.to_string(), expected);
    }
}
