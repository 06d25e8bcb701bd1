//! The spend model (DESIGN §12): what a claim may start, and what stops an
//! account. The concurrency [`Limits`] and the [`Budget`] ceilings (dollars
//! and tokens) that [`super::job::claim_next`] checks for each candidate
//! job against a [`reservation`] of its expected cost ([`over_budget`]); a
//! job that would pass a ceiling parks its task (`park`) until a later
//! claim finds it within the budgets. What a brief may still spend
//! ([`budget_left`]). A run stopped by an account's usage or rate limit
//! requeues its job without counting an attempt and pauses the account
//! ([`pause_for_limit`]); the claim skips the roles of a paused account.
//!
//! Job status changes here go through the job rule ([`super::job::change`]).
//!
//! Assumptions (every function taking one): `tx` is a `BEGIN IMMEDIATE`
//! transaction.

use std::collections::BTreeMap;

use crate::backoff::backoff_ms;
use crate::config::{Config, Settings};
use crate::db::{Job, Measure, Tx};
use crate::outbox::{self, Message, Notification, NotifyKind, Occasion, TrackerComment};

use super::job::{change, Changed, Finalized, How, JobChange};
use super::JobStatus;

/// The concurrency limits a claim enforces (DESIGN §3): running jobs
/// across all workers, per role and per project.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// `ORCH_MAX_CONCURRENCY`.
    pub global: u32,
    /// `ORCH_MAX_CONCURRENCY_<ROLE>`, by role name.
    pub by_role: BTreeMap<String, u32>,
    /// Each project's `max_concurrency` (orch.toml), by project name.
    pub by_project: BTreeMap<String, u32>,
    /// The agent account of each role ([`Config::account`]); a role whose
    /// account is paused is not dispatched. A role not listed is its own
    /// account.
    pub accounts: BTreeMap<String, String>,
    /// The budget ceilings in dollars (see [`over_budget`]).
    pub budget: Budget,
    /// The budget ceilings in tokens (see [`over_budget`]).
    pub token_budget: Budget,
}

/// Budget ceilings in one [`Measure`] (dollars or tokens); `None` is no
/// ceiling.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// What the ceilings count.
    pub measure: Measure,
    /// `ORCH_BUDGET_DAY_USD` / `_TOKENS`: all runs per UTC day.
    pub day: Option<f64>,
    /// `ORCH_BUDGET_TASK_USD` / `_TOKENS`: all runs of one task.
    pub task: Option<f64>,
    /// `ORCH_BUDGET_RUN_USD` / `_TOKENS`: one stage run.
    pub run: Option<f64>,
    /// Each project's `budget_day_usd` / `budget_day_tokens`.
    pub project_day: BTreeMap<String, f64>,
    /// `ORCH_BUDGET_RESERVE_USD` / `_TOKENS`: a job's expected cost when
    /// its role has no recorded runs.
    pub reserve_default: f64,
}

impl Budget {
    /// No ceilings in `measure`.
    pub const fn none(measure: Measure) -> Budget {
        Budget {
            measure,
            day: None,
            task: None,
            run: None,
            project_day: BTreeMap::new(),
            reserve_default: 0.0,
        }
    }

    /// Whether any ceiling is set (else the claim checks nothing).
    pub fn is_set(&self) -> bool {
        self.day.is_some()
            || self.task.is_some()
            || self.run.is_some()
            || !self.project_day.is_empty()
    }
}

impl Limits {
    /// The limits set in `settings` and `config`.
    pub fn new(settings: &Settings, config: &Config) -> Limits {
        Limits {
            global: settings.max_concurrency,
            by_role: settings.max_concurrency_by_role.clone(),
            by_project: config
                .projects
                .iter()
                .filter_map(|p| p.max_concurrency.map(|n| (p.name.clone(), n)))
                .collect(),
            accounts: crate::config::ROLES
                .iter()
                .map(|r| (r.to_string(), config.account(r)))
                .collect(),
            budget: Budget {
                measure: Measure::Usd,
                day: settings.budget_day_usd,
                task: settings.budget_task_usd,
                run: settings.budget_run_usd,
                project_day: config
                    .projects
                    .iter()
                    .filter_map(|p| p.budget_day_usd.map(|n| (p.name.clone(), n)))
                    .collect(),
                reserve_default: settings.budget_reserve_usd,
            },
            token_budget: Budget {
                measure: Measure::Tokens,
                day: settings.budget_day_tokens.map(|n| n as f64),
                task: settings.budget_task_tokens.map(|n| n as f64),
                run: settings.budget_run_tokens.map(|n| n as f64),
                project_day: config
                    .projects
                    .iter()
                    .filter_map(|p| p.budget_day_tokens.map(|n| (p.name.clone(), n as f64)))
                    .collect(),
                reserve_default: settings.budget_reserve_tokens as f64,
            },
        }
    }
}

/// The start (unix ms) of the UTC day of `now_ms`.
pub fn day_start(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(86_400_000)
}

/// What a run of `role` is expected to cost in `budget.measure`: the
/// median of its last 20 runs, or `budget.reserve_default` without any.
pub fn reservation(tx: &Tx, budget: &Budget, role: &str) -> anyhow::Result<f64> {
    Ok(tx
        .role_median_cost(budget.measure, role)?
        .unwrap_or(budget.reserve_default))
}

/// Which ceiling queued job `j` would pass if it ran now, or `None`: the
/// spend so far (today's, overall and of its project; its task's in all)
/// plus the reservations of the running jobs (`running`: their role and
/// project) and of `j` itself, against `budget` (in its measure: the
/// reason reads `task budget $0.08: …` or `task budget 80000 tokens: …`).
/// A task whose budget is waived (`orch task unpark`) passes, and so does
/// a deferred merge (`merge_pending`: no agent runs).
pub fn over_budget(
    tx: &Tx,
    budget: &Budget,
    j: &Job,
    running: &[(String, String)],
    now_ms: i64,
) -> anyhow::Result<Option<String>> {
    // A deferred merge runs no agent: it costs nothing.
    if !budget.is_set() || j.merge_pending {
        return Ok(None);
    }
    let Some(task) = tx.task(j.task_id)? else {
        return Ok(None);
    };
    if task.budget_waived {
        return Ok(None);
    }
    let mine = reservation(tx, budget, &j.role)?;
    let day = day_start(now_ms);
    let mut in_flight = 0.0;
    let mut in_flight_project = 0.0;
    for (role, project) in running {
        let r = reservation(tx, budget, role)?;
        in_flight += r;
        if *project == task.project {
            in_flight_project += r;
        }
    }
    let m = budget.measure;
    let fmt = |what: &str, spent: f64, ceiling: f64| {
        format!(
            "{what} budget {}: {} spent or running, this {} run is expected to cost {}",
            m.show(ceiling),
            m.show(spent),
            j.role,
            m.show(mine)
        )
    };
    if let Some(ceiling) = budget.run {
        if mine > ceiling {
            return Ok(Some(format!(
                "stage run budget {}: this {} run is expected to cost {}",
                m.show(ceiling),
                j.role,
                m.show(mine)
            )));
        }
    }
    if let Some(ceiling) = budget.task {
        let spent = tx.spent_on_task(m, task.id)?;
        if spent + mine > ceiling {
            return Ok(Some(fmt("task", spent, ceiling)));
        }
    }
    if let Some(&ceiling) = budget.project_day.get(&task.project) {
        let spent = tx.spent_since(m, day, Some(&task.project))? + in_flight_project;
        if spent + mine > ceiling {
            return Ok(Some(fmt(
                &format!("project {} daily", task.project),
                spent,
                ceiling,
            )));
        }
    }
    if let Some(ceiling) = budget.day {
        let spent = tx.spent_since(m, day, None)? + in_flight;
        if spent + mine > ceiling {
            return Ok(Some(fmt("daily", spent, ceiling)));
        }
    }
    Ok(None)
}

/// What `task` may still spend under `budget` now (in its measure): the least of the
/// stage run ceiling and what is left of its task ceiling, its project's
/// and the overall daily ceiling (never below 0); `None` without a
/// ceiling. Running jobs'
/// reservations are not subtracted (the run being briefed is one).
pub fn budget_left(
    db: &crate::db::Db,
    budget: &Budget,
    task: &crate::db::Task,
    now_ms: i64,
) -> anyhow::Result<Option<f64>> {
    let day = day_start(now_ms);
    let mut left: Option<f64> = None;
    let mut keep = |l: f64| left = Some(left.map_or(l, |x: f64| x.min(l)).max(0.0));
    if let Some(c) = budget.run {
        keep(c);
    }
    if let Some(c) = budget.task {
        keep(c - db.spent_on_task(budget.measure, task.id)?);
    }
    if let Some(&c) = budget.project_day.get(&task.project) {
        keep(c - db.spent_since(budget.measure, day, Some(&task.project))?);
    }
    if let Some(c) = budget.day {
        keep(c - db.spent_since(budget.measure, day, None)?);
    }
    Ok(left)
}

/// Parks task `task_id` for `reason`; a new park writes one notification
/// and one tracker comment (dedupe `park:<task>:<since>`).
pub(super) fn park(tx: &Tx, task_id: i64, reason: &str, now_ms: i64) -> anyhow::Result<()> {
    if !tx.park_task(task_id, reason, now_ms)? {
        return Ok(());
    }
    tracing::warn!(target: "budget", task = task_id, reason, "task parked");
    let text = format!(
        "task {task_id} parked: its next job would pass the {reason}. It resumes when the day \
         rolls over or the ceiling is raised (or by hand: orch task unpark {task_id})"
    );
    let on = Occasion::Park {
        task_id,
        since_ms: now_ms,
    };
    let note = Notification {
        kind: NotifyKind::Parked,
        text: text.clone(),
    };
    outbox::queue(tx, &on, &Message::Notify(note), now_ms)?;
    let comment = TrackerComment { text, report: None };
    outbox::queue(tx, &on, &comment.into(), now_ms)?;
    Ok(())
}

/// A run of running job `job` (claim `job.epoch`) stopped by an
/// account limit (`kind`, `reset_at_ms` when the CLI said): the job is
/// requeued without counting an attempt, and `account` is paused until
/// the reset — or, without one (or with one already past), for
/// `ORCH_LIMIT_BACKOFF_S` · 2^(pauses since its last clean run), capped at
/// 64× — and runnable then. A new pause writes one notification (dedupe
/// key `pause:<account>:<since_ms>`).
///
/// Guarantees: a claim on the job's epoch; a loser writes nothing and
/// gets `Finalized::Lost`.
#[allow(clippy::too_many_arguments)]
pub fn pause_for_limit(
    tx: &Tx,
    settings: &Settings,
    job: &Job,
    account: &str,
    kind: crate::agent::LimitKind,
    reset_at_ms: Option<i64>,
    message: &str,
    now: i64,
) -> anyhow::Result<Finalized> {
    let strikes = tx.pause(account)?.map_or(0, |p| p.strikes);
    let until = match reset_at_ms.filter(|r| *r > now) {
        Some(r) => r,
        None => {
            let base_ms = settings.limit_backoff_s as i64 * 1000;
            now + backoff_ms(base_ms, base_ms << 6, strikes, None)
        }
    };
    let reason = format!("{} limit of account {account}: {message}", kind.as_str());
    let c = JobChange {
        job_id: job.id,
        from: JobStatus::Running,
        to: JobStatus::Queued,
        epoch: Some(job.epoch),
        how: How::Free {
            error: &reason,
            available_at_ms: until,
        },
    };
    if change(tx, &c, now)? == Changed::Lost {
        return Ok(Finalized::Lost);
    }
    let (pause, new) = tx.pause_account(account, kind.as_str(), message, until, now)?;
    if new {
        let text = format!(
            "agent account {account} hit its {} limit; dispatch of its roles paused until {} \
             (unix ms {}): {message}",
            kind.as_str(),
            crate::clock::format_ms(pause.until_ms),
            pause.until_ms
        );
        let on = Occasion::Pause {
            account,
            since_ms: pause.since_ms,
            task_id: job.task_id,
        };
        let note = Notification {
            kind: NotifyKind::Paused,
            text,
        };
        outbox::queue(tx, &on, &Message::Notify(note), now)?;
    }
    Ok(Finalized::Paused {
        account: account.to_string(),
        until_ms: pause.until_ms,
        reason,
    })
}
