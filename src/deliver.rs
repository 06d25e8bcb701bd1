//! `orch deliver`: send due outbox messages, at least once, never posted
//! twice where the remote side lets us look.
//!
//! A message is written inside the transaction of the change that causes
//! it (the outbox pattern) and delivered here afterwards, oldest first.
//! Each remote send is announced in the database first (`outbox.sends`),
//! then made, then recorded with the remote id; a crash between sending
//! and recording re-sends on the next pass, and because `sends` says a
//! send may have happened, the adapter looks before re-posting:
//!
//! | route | kinds | repeat-safety |
//! |---|---|---|
//! | local tracker | `state`, `comment` | a state set twice is the same state; comments are logged |
//! | Plane | `state`, `comment` | PATCH state is idempotent; comments carry `external_id` = dedupe key, looked up before a re-post, and Plane refuses a second one (409) |
//! | Gitea | `open_pr`, `comment` | the PR is looked up by base/head before creating (409 = exists); comments carry a hidden marker with the key, looked up before a re-post |
//! | log notifier | any | a log line |
//! | Telegram | any | no lookup possible: at least once — a duplicate only after a send whose answer was lost |
//!
//! Failures: retryable ones (connection, timeout, malformed answer, 5xx,
//! 408, 429) back off exponentially with jitter ([`backoff_ms`]), at least
//! as long as the service's `Retry-After`, and are dead-lettered after
//! `ORCH_OUTBOX_MAX_ATTEMPTS`; any other 4xx is dead-lettered at once with
//! the service's reason (`orch status` lists dead letters). Missing
//! settings and kill switches leave messages pending without counting an
//! attempt. Isolation: after a retryable failure (or an exhausted Plane
//! rate-limit window) a route is skipped for the rest of the pass, so a
//! service that is down costs one timeout per pass and never blocks the
//! other routes; per task and channel, messages keep their order (a later
//! message waits while an earlier one is pending).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::adapters::{gitea, plane, telegram, AdapterError};
use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, OutboxRow, Task};
use crate::failpoint::failpoint;

/// What a delivery pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeliverSummary {
    pub delivered: Vec<i64>,
    /// `(message id, error)` of each failed send this pass.
    pub failed: Vec<(i64, String)>,
    pub dead_lettered: Vec<i64>,
    /// Messages left pending without an attempt: no adapter, a kill switch
    /// or missing settings (the reason is the message's `last_error`).
    pub waiting: Vec<i64>,
    /// Messages not tried this pass: their route failed earlier in the
    /// pass, or an older message of the same task and channel is pending.
    pub deferred: Vec<i64>,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    LocalTracker,
    Plane,
    Gitea,
    LocalForge,
    Log,
    Telegram,
}

impl Route {
    fn remote(self) -> bool {
        matches!(self, Route::Plane | Route::Gitea | Route::Telegram)
    }
}

/// Clients built once per pass, on first use.
#[derive(Default)]
struct Clients {
    plane: Option<plane::Plane>,
    gitea: Option<gitea::Gitea>,
    telegram: Option<telegram::Telegram>,
}

/// Delivers up to `limit` due messages.
///
/// Assumptions: the caller holds the `deliver` tick lock.
/// Errors: database errors only; every send failure is recorded on its
/// message.
pub fn deliver_due(ctx: &Ctx, db: &Db, limit: i64) -> anyhow::Result<DeliverSummary> {
    let mut summary = DeliverSummary::default();
    let mut broken: BTreeMap<Route, String> = BTreeMap::new();
    let mut clients = Clients::default();
    for msg in db.due_outbox(now_ms(), limit)? {
        let task = match msg.task_id {
            Some(id) => db.task(id)?,
            None => None,
        };
        let project = task.as_ref().and_then(|t| ctx.config.project(&t.project));
        let route = route_of(ctx, &msg, project);
        if broken.contains_key(&route) || db.earlier_pending(msg.id, msg.task_id, &msg.channel)? {
            summary.deferred.push(msg.id);
            continue;
        }
        let sends_before = if route.remote() {
            match db.write(|tx| tx.begin_outbox_send(msg.id))? {
                Some(n) => n,
                None => continue, // delivered or dead meanwhile
            }
        } else {
            0
        };
        failpoint("deliver.before_send");
        let result = send(
            ctx,
            db,
            &mut clients,
            route,
            &msg,
            task.as_ref(),
            project,
            sends_before,
        );
        match result {
            Ok(remote) => {
                failpoint("deliver.after_send");
                db.write(|tx| tx.mark_outbox_delivered(msg.id, remote.as_deref(), now_ms()))?;
                info!(target: "deliver", message = msg.id, key = %msg.dedupe_key, route = ?route, remote = ?remote, "delivered");
                summary.delivered.push(msg.id);
            }
            Err(e) if e.is_waiting() => {
                let why = e.to_string();
                db.write(|tx| tx.mark_outbox_waiting(msg.id, &why))?;
                warn!(target: "deliver", message = msg.id, key = %msg.dedupe_key, why = %why, "left pending");
                summary.waiting.push(msg.id);
                broken.insert(route, why);
            }
            Err(e) => {
                let err = e.to_string();
                let attempts = msg.attempts + 1;
                let retryable = e.retryable();
                let dead = !retryable || attempts >= ctx.settings.outbox_max_attempts as i64;
                let wait = backoff_ms(attempts, msg.id).max(e.retry_after_ms().unwrap_or(0) as i64);
                let reason = if retryable {
                    err.clone()
                } else {
                    format!("permanent: {err}")
                };
                db.write(|tx| tx.mark_outbox_failed(msg.id, &reason, now_ms() + wait, dead))?;
                warn!(target: "deliver", message = msg.id, key = %msg.dedupe_key, attempts, dead, retry_in_ms = wait, error = %err, "delivery failed");
                if dead {
                    summary.dead_lettered.push(msg.id);
                }
                if retryable {
                    broken.insert(route, err.clone());
                }
                summary.failed.push((msg.id, err));
            }
        }
        if route == Route::Plane && clients.plane.as_ref().is_some_and(|p| p.exhausted()) {
            broken.insert(route, "Plane rate-limit window exhausted".into());
        }
    }
    Ok(summary)
}

/// Exponential backoff with deterministic jitter: 2^attempts seconds
/// (capped at one hour) plus up to 25 % derived from the message id.
pub fn backoff_ms(attempts: i64, id: i64) -> i64 {
    let base = 1000i64 << attempts.clamp(0, 12);
    let base = base.min(3_600_000);
    base + (id.wrapping_mul(7919) % 1000).abs() * base / 4000
}

fn route_of(ctx: &Ctx, msg: &OutboxRow, project: Option<&ProjectConfig>) -> Route {
    match msg.channel.as_str() {
        "tracker" if project.is_some_and(|p| p.tracker == crate::config::TrackerKind::Plane) => {
            Route::Plane
        }
        "tracker" => Route::LocalTracker,
        "forge" if project.is_some_and(|p| p.forge == crate::config::ForgeKind::Gitea) => {
            Route::Gitea
        }
        "forge" => Route::LocalForge,
        _ if ctx.settings.adapters.notifier == crate::config::NotifierKind::Telegram => {
            Route::Telegram
        }
        _ => Route::Log,
    }
}

/// Sends one message; returns the remote id, if the route has one.
#[allow(clippy::too_many_arguments)]
fn send(
    ctx: &Ctx,
    db: &Db,
    clients: &mut Clients,
    route: Route,
    msg: &OutboxRow,
    task: Option<&Task>,
    project: Option<&ProjectConfig>,
    sends_before: i64,
) -> Result<Option<String>, AdapterError> {
    let text = msg
        .payload
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("");
    let needs_task = |service: &'static str| -> Result<(&Task, &ProjectConfig), AdapterError> {
        match (task, project) {
            (Some(t), Some(p)) => Ok((t, p)),
            _ => Err(AdapterError::Rejected {
                service,
                op: format!("deliver {}", msg.kind),
                message: "the message's task or its project is gone".into(),
            }),
        }
    };
    match route {
        Route::Log => {
            info!(target: "notify", key = %msg.dedupe_key, kind = %msg.kind, "{text}");
            Ok(None)
        }
        Route::LocalForge => {
            info!(target: "forge", key = %msg.dedupe_key, kind = %msg.kind, "local forge: nothing to send");
            Ok(None)
        }
        Route::LocalTracker => {
            local_tracker(db, msg, task, text).map_err(|e| AdapterError::Transport {
                service: "local",
                op: "tracker".into(),
                message: format!("{e:#}"),
            })?;
            Ok(None)
        }
        Route::Plane => {
            let (task, project) = needs_task("plane")?;
            if clients.plane.is_none() {
                clients.plane = Some(plane::client(ctx)?);
            }
            let p = clients.plane.as_ref().expect("set above");
            plane::deliver(ctx, db, p, msg, task, project, sends_before).map(Some)
        }
        Route::Gitea => {
            let (task, project) = needs_task("gitea")?;
            if clients.gitea.is_none() {
                clients.gitea = Some(gitea::client(ctx)?);
            }
            let g = clients.gitea.as_ref().expect("set above");
            gitea::deliver(db, g, msg, task, project, sends_before).map(Some)
        }
        Route::Telegram => {
            if clients.telegram.is_none() {
                clients.telegram = Some(telegram::client(ctx)?);
            }
            let t = clients.telegram.as_ref().expect("set above");
            let mut body = format!("orch: {text}");
            if let (Some(task), Some(project)) = (task, project) {
                if let Some(link) = plane::work_item_link(ctx, project, &task.tracker_issue_id) {
                    body += &format!("\n{link}");
                }
            }
            t.send(&body).map(|id| Some(id.to_string()))
        }
    }
}

/// The local tracker: states of `local_issues`; comments are logged (the
/// outbox row itself is the record).
fn local_tracker(db: &Db, msg: &OutboxRow, task: Option<&Task>, text: &str) -> anyhow::Result<()> {
    let state = msg.payload.get("state").and_then(Value::as_str);
    if let (Some(t), Some(state)) = (task, state.filter(|_| msg.kind == "state")) {
        // Tasks created from a Plane delivery have no local issue: their
        // state change is only logged.
        let issue = t.tracker_issue_id.parse::<i64>().ok();
        let known = issue
            .map(|i| db.local_issue_state(i))
            .transpose()?
            .flatten()
            .is_some();
        if known {
            db.write(|tx| tx.set_local_issue_state(issue.unwrap_or_default(), state, now_ms()))?;
        }
        info!(target: "tracker", key = %msg.dedupe_key, task = t.id, "state → {state}");
    } else {
        info!(target: "tracker", key = %msg.dedupe_key, "comment: {text}");
    }
    Ok(())
}
