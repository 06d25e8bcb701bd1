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
//! | Plane | `state`, `comment` | PATCH state is idempotent; comments carry `external_id` = `<instance id>:<dedupe key>`, looked up before a re-post, and Plane refuses a second one (409) |
//! | Gitea | `open_pr`, `comment` | the PR is looked up by base/head before creating (409 = exists; Gitea < 1.22: found by listing open PRs); comments carry a hidden marker with `<instance id>:<key>`, looked up before a re-post |
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
use tracing::{info, warn};

use crate::adapters::{AdapterError, Clients};
use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, OutboxRow, Task};
use crate::failpoint::failpoint;
use crate::forge::Forge;
use crate::notifier::Notifier;
use crate::tracker::Tracker;

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
    /// In a rehearsal (`--dry-run`): the messages that would be sent now,
    /// none of them sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_send: Vec<WouldSend>,
}

/// A message `deliver --dry-run` would send.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct WouldSend {
    pub id: i64,
    pub task_id: Option<i64>,
    /// `tracker`, `forge`, `notifier`, … (the route's name).
    pub route: String,
    pub kind: String,
}

/// Where a message goes: its channel's service for the message's project.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Tracker(Tracker<'a>),
    Forge(Forge<'a>),
    Notifier(Notifier<'a>),
}

impl Route<'_> {
    /// The service's name: routes are skipped by name for the rest of a
    /// pass after a failure.
    fn name(self) -> &'static str {
        match self {
            Route::Tracker(t) => t.name(),
            Route::Forge(f) => f.name(),
            Route::Notifier(n) => n.name(),
        }
    }

    fn remote(self) -> bool {
        match self {
            Route::Tracker(t) => t.is_remote(),
            Route::Forge(f) => f.is_remote(),
            Route::Notifier(n) => n.is_remote(),
        }
    }
}

/// Delivers up to `limit` due messages.
///
/// Assumptions: the caller holds the `deliver` tick lock.
/// Errors: database errors only; every send failure is recorded on its
/// message.
pub fn deliver_due(ctx: &Ctx, db: &Db, limit: i64) -> anyhow::Result<DeliverSummary> {
    let mut summary = DeliverSummary::default();
    let mut broken: BTreeMap<&'static str, String> = BTreeMap::new();
    let clients = Clients::default();
    for msg in db.due_outbox(now_ms(), limit)? {
        let task = match msg.task_id {
            Some(id) => db.task(id)?,
            None => None,
        };
        let project = task.as_ref().and_then(|t| ctx.config.project(&t.project));
        let route = route_of(ctx, &msg, project);
        if broken.contains_key(route.name())
            || db.earlier_pending(msg.id, msg.task_id, &msg.channel)?
        {
            summary.deferred.push(msg.id);
            continue;
        }
        if db.is_rehearsal() {
            summary.would_send.push(WouldSend {
                id: msg.id,
                task_id: msg.task_id,
                route: route.name().to_string(),
                kind: msg.kind.clone(),
            });
            // As if sent, so the pass goes on as the real one would
            // (rolled back with the rehearsal).
            db.write(|tx| tx.mark_outbox_delivered(msg.id, None, now_ms()))?;
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
            &clients,
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
                info!(target: "deliver", outbox_id = msg.id, key = %msg.dedupe_key, route = route.name(), remote = remote.as_deref().unwrap_or("-"), "delivered");
                summary.delivered.push(msg.id);
            }
            Err(e) if e.is_waiting() => {
                let why = e.to_string();
                db.write(|tx| tx.mark_outbox_waiting(msg.id, &why))?;
                warn!(target: "deliver", outbox_id = msg.id, key = %msg.dedupe_key, why = %why, "left pending");
                summary.waiting.push(msg.id);
                broken.insert(route.name(), why);
            }
            Err(e) => {
                let err = e.to_string();
                let attempts = msg.attempts + 1;
                let retryable = e.retryable();
                let dead = !retryable || attempts >= ctx.settings.outbox_max_attempts as i64;
                let wait = backoff_ms(attempts, msg.id)
                    .max(e.retry_after_ms().unwrap_or(0) as i64)
                    .min(crate::db::MAX_RETRY_WAIT_MS);
                let reason = if retryable {
                    err.clone()
                } else {
                    format!("permanent: {err}")
                };
                db.write(|tx| tx.mark_outbox_failed(msg.id, &reason, now_ms() + wait, dead))?;
                warn!(target: "deliver", outbox_id = msg.id, key = %msg.dedupe_key, attempts, dead, retry_in_ms = wait, error = %err, "delivery failed");
                if dead {
                    summary.dead_lettered.push(msg.id);
                }
                if retryable {
                    broken.insert(route.name(), err.clone());
                }
                summary.failed.push((msg.id, err));
            }
        }
        if matches!(route, Route::Tracker(t) if t.exhausted(&clients)) {
            broken.insert(route.name(), "Plane rate-limit window exhausted".into());
        }
    }
    Ok(summary)
}

/// Exponential backoff with deterministic jitter: 2^attempts seconds
/// (capped at one hour) plus up to 25 % derived from the message id.
pub fn backoff_ms(attempts: i64, id: i64) -> i64 {
    crate::backoff::backoff_ms(1000, 3_600_000, attempts, Some(id))
}

fn route_of<'a>(ctx: &'a Ctx, msg: &OutboxRow, project: Option<&ProjectConfig>) -> Route<'a> {
    match msg.channel.as_str() {
        "tracker" => Route::Tracker(Tracker::of(ctx, project)),
        "forge" => Route::Forge(Forge::of(ctx, project)),
        _ => Route::Notifier(Notifier::from_settings(ctx)),
    }
}

/// Sends one message; returns the remote id, if the route has one.
#[allow(clippy::too_many_arguments)]
fn send(
    ctx: &Ctx,
    db: &Db,
    clients: &Clients,
    route: Route,
    msg: &OutboxRow,
    task: Option<&Task>,
    project: Option<&ProjectConfig>,
    sends_before: i64,
) -> Result<Option<String>, AdapterError> {
    match route {
        Route::Tracker(t) => {
            let html = || match (task, project) {
                (Some(task), Some(project)) => {
                    crate::report::tracker_html(ctx, db, msg, task, project)
                }
                _ => String::new(),
            };
            t.deliver(ctx, db, clients, msg, task, project, sends_before, &html)
        }
        Route::Forge(f) => f.deliver(db, clients, msg, task, project, sends_before),
        Route::Notifier(n) => n.send(ctx, clients, msg, task, project),
    }
}
