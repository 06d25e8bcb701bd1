//! `orch deliver`: send due outbox messages, at least once, never posted
//! twice where the remote side lets us look.
//!
//! A message is written inside the transaction of the change that causes
//! it (the outbox pattern, [`crate::outbox::queue`]) and delivered here
//! afterwards, oldest first, read once into its [`Message`]; a row that
//! is no message this orch knows is dead-lettered at once, with the
//! reason.
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
//! the service's reason (`orch status` and `orch outbox list --dead`
//! list dead letters; `orch outbox retry` sends them again, [`retry`]). Missing
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
use crate::fence;
use crate::forge::Forge;
use crate::notifier::Notifier;
use crate::outbox::{ForgeMessage, Message, Notification, TrackerComment, TrackerMessage};
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

/// Where a message goes — its channel's service for the message's
/// project — and what it says there.
#[derive(Debug, Clone, Copy)]
enum Route<'a, 'm> {
    Tracker(Tracker<'a>, &'m TrackerMessage),
    Forge(Forge<'a>, &'m ForgeMessage),
    Notifier(Notifier<'a>, &'m Notification),
}

impl Route<'_, '_> {
    /// The service's name: routes are skipped by name for the rest of a
    /// pass after a failure.
    fn name(self) -> &'static str {
        match self {
            Route::Tracker(t, _) => t.name(),
            Route::Forge(f, _) => f.name(),
            Route::Notifier(n, _) => n.name(),
        }
    }

    fn remote(self) -> bool {
        match self {
            Route::Tracker(t, _) => t.is_remote(),
            Route::Forge(f, _) => f.is_remote(),
            Route::Notifier(n, _) => n.is_remote(),
        }
    }
}

/// Delivers up to `limit` due messages.
///
/// Assumptions: the caller holds the `deliver` tick lock.
/// Errors: database errors only; every send failure is recorded on its
/// message.
pub fn deliver_due(ctx: &Ctx, db: &Db, limit: i64) -> anyhow::Result<DeliverSummary> {
    deliver_messages(ctx, db, db.due_outbox(now_ms(), limit)?)
}

/// One delivery pass over `messages` (pending ones, oldest first): the
/// pass [`deliver_due`] makes over the due messages and [`retry`] over
/// the dead letters it revived.
fn deliver_messages(
    ctx: &Ctx,
    db: &Db,
    messages: Vec<OutboxRow>,
) -> anyhow::Result<DeliverSummary> {
    let mut summary = DeliverSummary::default();
    let mut broken: BTreeMap<&'static str, String> = BTreeMap::new();
    let clients = Clients::default();
    for msg in messages {
        let task = match msg.task_id {
            Some(id) => db.task(id)?,
            None => None,
        };
        let project = task.as_ref().and_then(|t| ctx.config.project(&t.project));
        // Read once; a row that is no message can never be sent: a dead
        // letter at once, with the reason (never retried, never dropped).
        let message = match Message::from_row(&msg) {
            Ok(m) => m,
            Err(e) => {
                let err = e.to_string();
                db.write(|tx| {
                    tx.mark_outbox_failed(msg.id, &format!("permanent: {err}"), now_ms(), true)
                })?;
                warn!(target: "deliver", outbox_id = msg.id, key = %msg.dedupe_key, dead = true, error = %err, "delivery failed");
                summary.dead_lettered.push(msg.id);
                summary.failed.push((msg.id, err));
                continue;
            }
        };
        // A run's message whose job was claimed again since is never sent
        // (DESIGN §11 INV-10): a dead letter with the reason, the refusal
        // recorded.
        if let Some(reason) = stale_claim(db, &msg)? {
            summary.dead_lettered.push(msg.id);
            summary.failed.push((msg.id, reason));
            continue;
        }
        let route = route_of(ctx, &message, project);
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
        if matches!(route, Route::Tracker(t, _) if t.exhausted(&clients)) {
            broken.insert(route.name(), "Plane rate-limit window exhausted".into());
        }
    }
    Ok(summary)
}

/// When `msg` was queued for a claim of a job that has since been claimed
/// again: dead-letters it (`stale epoch: job 12 is at epoch 3, row of
/// epoch 2`), records the refusal ([`fence::record_reason`]) and returns
/// the reason. `None` (nothing written) for a row of no claim, of the
/// job's current claim, or of a job that is gone.
///
/// Errors: database errors.
fn stale_claim(db: &Db, msg: &OutboxRow) -> anyhow::Result<Option<String>> {
    let Some((job_id, epoch)) = msg.claim else {
        return Ok(None);
    };
    let Some(job) = db.job(job_id)?.filter(|j| j.epoch != epoch) else {
        return Ok(None);
    };
    let reason = format!(
        "stale epoch: job {job_id} is at epoch {}, row of epoch {epoch}",
        job.epoch
    );
    let claim = fence::Claim { job_id, epoch };
    let effect = format!("outbox {}/{}", msg.channel, msg.kind);
    let now = now_ms();
    db.write(|tx| {
        tx.mark_outbox_failed(msg.id, &reason, now, true)?;
        fence::record_reason(tx, claim, &effect, &job, reason.clone(), now)
    })?;
    fence::warn_refused(claim, job.task_id, &effect, &reason);
    warn!(target: "deliver", outbox_id = msg.id, key = %msg.dedupe_key, dead = true, error = %reason, "not sent");
    Ok(Some(reason))
}

/// Which dead letters `orch outbox retry` sends again.
#[derive(Debug, Clone)]
pub enum RetryWhich {
    /// These messages; each must be a dead letter.
    Ids(Vec<i64>),
    /// Every dead letter not superseded (see [`Retried::superseded`]).
    AllDead,
}

/// What `orch outbox retry` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Retried {
    /// The dead letters made pending again, oldest first.
    pub retried: Vec<RetriedMessage>,
    /// `(id, newer delivered message)`: tracker-state dead letters left
    /// dead because a newer state of their task was delivered since
    /// (sending them would move the tracker item back). Only with
    /// [`RetryWhich::AllDead`]; named ids are refused instead.
    pub superseded: Vec<(i64, i64)>,
    /// The delivery pass over the retried messages.
    pub delivery: DeliverSummary,
}

/// A dead letter sent again, as it was before the retry.
#[derive(Debug, Clone, Serialize)]
pub struct RetriedMessage {
    pub id: i64,
    pub task_id: Option<i64>,
    pub channel: String,
    pub kind: String,
    /// Its attempts before the retry.
    pub attempts: i64,
    /// Why it was dead-lettered.
    pub error: Option<String>,
}

/// `orch outbox retry`: makes dead letters pending again — due now, with
/// a new round of `ORCH_OUTBOX_MAX_ATTEMPTS` attempts — and sends them at
/// once through the same pass as [`deliver_due`] (so a message whose
/// older sibling is still pending waits its turn, and a send that fails
/// again backs off or is dead-lettered as usual). Each retry is recorded
/// on its row (`retries`, `retried_at_ms`, `retried_by` = `by`), counted
/// in `outbox.retried_total`, and logged at INFO (target `outbox`). The
/// send counter is kept, so a remote that can be asked (Plane, Gitea) is
/// looked at before re-posting. In a rehearsal ([`Db::rehearse_all`])
/// nothing is sent and everything is rolled back.
///
/// Assumptions: the caller holds the `deliver` tick lock.
/// Errors: [`crate::error::Error::Usage`] for an unknown id, a message
/// that is not dead-lettered, or a tracker state superseded by a newer
/// delivered one; database errors.
pub fn retry(ctx: &Ctx, db: &Db, which: RetryWhich, by: &str) -> anyhow::Result<Retried> {
    use crate::error::Error;
    let mut out = Retried::default();
    let candidates = match which {
        RetryWhich::Ids(ids) => {
            let mut rows = Vec::new();
            for id in ids {
                let msg = db
                    .outbox_message(id)?
                    .ok_or_else(|| Error::Usage(format!("no outbox message {id}")))?;
                if msg.status != "dead" {
                    return Err(Error::Usage(format!(
                        "outbox message {id} is {}, not dead-lettered: only dead letters are retried \
                         (a pending one is sent by the next orch deliver)",
                        msg.status
                    ))
                    .into());
                }
                if let Some(newer) = db.outbox_superseded_by(&msg)? {
                    return Err(Error::Usage(format!(
                        "outbox message {id} sets task {}'s tracker state, and the newer state \
                         message {newer} was delivered since: sending it would move the item back",
                        msg.task_id.unwrap_or(0)
                    ))
                    .into());
                }
                rows.push(msg);
            }
            rows
        }
        RetryWhich::AllDead => {
            let mut rows = Vec::new();
            for msg in db.dead_outbox(i64::MAX)?.into_iter().rev() {
                match db.outbox_superseded_by(&msg)? {
                    Some(newer) => out.superseded.push((msg.id, newer)),
                    None => rows.push(msg),
                }
            }
            rows
        }
    };
    let now = now_ms();
    let mut revived = Vec::new();
    for msg in candidates {
        if !db.write(|tx| {
            let ok = tx.retry_dead_outbox(msg.id, by, now)?;
            if ok {
                tx.bump_counter("outbox.retried_total", 1)?;
            }
            Ok(ok)
        })? {
            continue; // retried twice in one list, or changed meanwhile
        }
        if !db.is_rehearsal() {
            info!(target: "outbox", outbox_id = msg.id, key = %msg.dedupe_key, by, attempts = msg.attempts, was = msg.last_error.as_deref().unwrap_or(""), "dead letter retried by hand");
        }
        out.retried.push(RetriedMessage {
            id: msg.id,
            task_id: msg.task_id,
            channel: msg.channel.clone(),
            kind: msg.kind.clone(),
            attempts: msg.attempts,
            error: msg.last_error.clone(),
        });
        if let Some(row) = db.outbox_message(msg.id)? {
            revived.push(row);
        }
    }
    out.delivery = deliver_messages(ctx, db, revived)?;
    Ok(out)
}

/// Exponential backoff with deterministic jitter: 2^attempts seconds
/// (capped at one hour) plus up to 25 % derived from the message id.
pub fn backoff_ms(attempts: i64, id: i64) -> i64 {
    crate::backoff::backoff_ms(1000, 3_600_000, attempts, Some(id))
}

fn route_of<'a, 'm>(
    ctx: &'a Ctx,
    message: &'m Message,
    project: Option<&ProjectConfig>,
) -> Route<'a, 'm> {
    match message {
        Message::Tracker(m) => Route::Tracker(Tracker::of(ctx, project), m),
        Message::Forge(m) => Route::Forge(Forge::of(ctx, project), m),
        Message::Notify(m) => Route::Notifier(Notifier::from_settings(ctx), m),
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
        Route::Tracker(t, m) => {
            let html = |c: &TrackerComment| match (task, project) {
                (Some(task), Some(project)) => {
                    crate::report::tracker_html(ctx, db, c, task, project)
                }
                _ => String::new(),
            };
            t.deliver(ctx, db, clients, msg, m, task, project, sends_before, &html)
        }
        Route::Forge(f, m) => f.deliver(db, clients, msg, m, task, project, sends_before),
        Route::Notifier(n, m) => n.send(ctx, clients, msg, m, task, project),
    }
}
