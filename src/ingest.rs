//! `orch ingest`: turn stored deliveries into task and job changes.
//!
//! Oldest first, one `BEGIN IMMEDIATE` transaction per delivery: the
//! handler's changes and the delivery's outcome commit together, so a crash
//! either leaves the delivery pending (and the next ingest redoes it) or
//! fully applied. Handlers are idempotent by meaning: they re-read the
//! task and do nothing when the change is already there. A delivery that
//! keeps failing is dead-lettered after `ORCH_INBOX_MAX_ATTEMPTS` and stays
//! visible in `orch events list --failed`; one that can never succeed
//! ([`crate::error::is_permanent`]: a work item whose branch belongs to
//! another task, a constraint violation, a bad setting) is dead-lettered at
//! once with an error starting `permanent:`, without retries.
//!
//! Payloads: Plane's `issue` webhook (v1, `data` = IssueExpandSerializer,
//! `activity.field` = `state` or `state_id`; states matched by explicit id
//! or by name, see `tracker`) and Gitea's `push` (branch heads),
//! `status` (CI of a known branch head; may advance a task waiting at
//! development) and `pull_request` (PR bookkeeping; a merge releases the
//! task's merge lease but never completes it) events, per `tests/fixtures/`.
//! Each delivery ends with a typed [`Outcome`]; one orch does not act on
//! is processed with [`Outcome::NoAction`], displayed as "no pipeline
//! action: <why>".

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Tx};
use crate::failpoint::failpoint;
use crate::pipeline::ci::{CiDecision, RecordedBy};
use crate::pipeline::{self, Actor, Stage, WorkItem};
use crate::webhook::Source;

/// What ingesting one delivery did. Its `Display` is the one line the
/// inbox row records as its outcome, the log says and `orch ingest` /
/// `orch events replay` print; it serializes as that line too, so JSON
/// output carries the same text. Code branches on the variants, never on
/// the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing in the pipeline changed: `no pipeline action: <why>`.
    NoAction { why: String },
    /// A work item entered In Progress and got its task: `created task <id>`.
    Created { task_id: i64 },
    /// The analysis human gate answered a tracker's Approved or Rejected
    /// state: [`pipeline::HumanGate`]'s line (its `NoAction` reads `no
    /// pipeline action: …`).
    Gate(pipeline::HumanGate),
    /// A fact from the forge was stored (a branch head, a CI status),
    /// with what it did to the pipeline, if it was asked: `<what>` or
    /// `<what>; <then>`.
    Recorded {
        what: String,
        then: Option<Box<Outcome>>,
    },
    /// A task moved: `task <id>: <from> → <to> (<why>)`, then `;
    /// escalated` when the move escalated it.
    Moved {
        task_id: i64,
        from: Stage,
        to: Stage,
        why: String,
        escalated: bool,
    },
    /// The task's gate has not decided: `task <id> waits: <why>`.
    Waits { task_id: i64, why: String },
    /// The delivery was processed before: `already processed`.
    AlreadyProcessed,
    /// The same body is stored as delivery `of`: `duplicate of delivery
    /// <of>; not ingested again`.
    Duplicate { of: i64 },
}

impl Outcome {
    /// `NoAction` with `why`.
    pub fn nothing(why: impl Into<String>) -> Outcome {
        Outcome::NoAction { why: why.into() }
    }

    /// Whether the delivery changed the pipeline: created a task, moved
    /// one, or answered the human gate.
    pub fn changed_pipeline(&self) -> bool {
        match self {
            Outcome::Created { .. } | Outcome::Moved { .. } => true,
            Outcome::Gate(g) => matches!(g, pipeline::HumanGate::Applied { .. }),
            Outcome::Recorded { then, .. } => {
                then.as_deref().is_some_and(Outcome::changed_pipeline)
            }
            Outcome::NoAction { .. }
            | Outcome::Waits { .. }
            | Outcome::AlreadyProcessed
            | Outcome::Duplicate { .. } => false,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::NoAction { why } => write!(f, "no pipeline action: {why}"),
            Outcome::Created { task_id } => write!(f, "created task {task_id}"),
            Outcome::Gate(g) => write!(f, "{g}"),
            Outcome::Recorded { what, then: None } => f.write_str(what),
            Outcome::Recorded {
                what,
                then: Some(then),
            } => write!(f, "{what}; {then}"),
            Outcome::Moved {
                task_id,
                from,
                to,
                why,
                escalated,
            } => write!(
                f,
                "task {task_id}: {from} → {to} ({why}){}",
                if *escalated { "; escalated" } else { "" }
            ),
            Outcome::Waits { task_id, why } => write!(f, "task {task_id} waits: {why}"),
            Outcome::AlreadyProcessed => f.write_str("already processed"),
            Outcome::Duplicate { of } => {
                write!(f, "duplicate of delivery {of}; not ingested again")
            }
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What an ingest pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct IngestSummary {
    /// `(inbox id, outcome)` of each processed delivery.
    pub processed: Vec<(i64, Outcome)>,
    /// `(inbox id, error)` of each delivery that failed this time.
    pub failed: Vec<(i64, String)>,
    /// Deliveries dead-lettered this pass.
    pub dead_lettered: Vec<i64>,
}

/// What a handler decided, before commit.
#[derive(Debug, Clone)]
pub struct Handled {
    /// What happened.
    pub outcome: Outcome,
    /// A task created by this delivery: its worktree is prepared after commit.
    pub created_task: Option<i64>,
}

impl Handled {
    fn nothing(why: impl Into<String>) -> Handled {
        Handled {
            outcome: Outcome::nothing(why),
            created_task: None,
        }
    }
}

/// Ingests up to `limit` pending deliveries, oldest first.
///
/// Assumptions: the caller holds the `ingest` tick lock.
pub fn ingest_pending(ctx: &Ctx, db: &Db, limit: i64) -> anyhow::Result<IngestSummary> {
    let mut summary = IngestSummary::default();
    for id in db.pending_deliveries(limit)? {
        match ingest_one(ctx, db, id) {
            Ok(outcome) => summary.processed.push((id, outcome)),
            Err(e) => {
                // A permanent error is dead-lettered at once with one clear
                // reason; anything else is retried up to the cap.
                let permanent = crate::error::is_permanent(&e);
                let (msg, max) = if permanent {
                    (format!("permanent: {e:#}"), 1)
                } else {
                    (format!("{e:#}"), ctx.settings.inbox_max_attempts)
                };
                let dead = db.write(|tx| tx.mark_delivery_failed(id, &msg, max))?;
                warn!(target: "ingest", delivery = id, dead, permanent, error = %msg, "delivery failed");
                if dead {
                    summary.dead_lettered.push(id);
                }
                summary.failed.push((id, msg));
            }
        }
    }
    Ok(summary)
}

/// Ingests inbox row `id` in one transaction and returns its outcome. A
/// row that is already processed is left alone.
pub fn ingest_one(ctx: &Ctx, db: &Db, id: i64) -> anyhow::Result<Outcome> {
    let Some(crate::db::Delivery {
        source,
        event,
        body,
        processed,
    }) = db.delivery(id)?
    else {
        anyhow::bail!("no delivery {id}");
    };
    if processed {
        return Ok(Outcome::AlreadyProcessed);
    }
    let now = now_ms();
    let handled = db.write(|tx| {
        let before = tx.last_transition_id()?;
        let h = route(ctx, tx, &source, &event, &body, now)?;
        tx.link_transitions_to_delivery(before, id)?;
        tx.mark_delivery_processed(id, &h.outcome.to_string(), now)?;
        failpoint("ingest.before_commit");
        Ok(h)
    })?;
    failpoint("ingest.after_commit");
    info!(target: "ingest", delivery = id, source = %source, event = %event, outcome = %handled.outcome, "ingested");
    if let Some(task_id) = handled.created_task {
        prepare_worktree(ctx, db, task_id);
    }
    Ok(handled.outcome)
}

/// What ingesting one delivery by hand did: the inbox row and its
/// outcome line (`orch ingest --file`, `orch events replay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ingested {
    pub inbox_id: i64,
    pub outcome: Outcome,
}

/// `orch ingest --source S --event E --file F`: stores `body` as a
/// delivery of `source`/`event` (delivery id `file:<sha256 of body>`, so
/// the same file twice is a duplicate), then ingests it. A duplicate is
/// not ingested again. `origin` names the body (its file) in errors.
///
/// Assumptions: the caller holds the `ingest` tick lock.
/// Errors: a body that is not JSON or too large
/// ([`crate::webhook::Rejection`], with context `storing <origin>`;
/// nothing is stored); database errors; the delivery's own failure.
pub fn ingest_file(
    ctx: &Ctx,
    db: &Db,
    source: crate::webhook::Source,
    event: &str,
    body: &[u8],
    origin: &str,
) -> anyhow::Result<Ingested> {
    let delivery = format!("file:{}", crate::webhook::body_sha256(body));
    let recorded = crate::webhook::store(db, source, event, &delivery, &[], body, now_ms())
        .with_context(|| format!("storing {origin}"))?;
    Ok(match recorded {
        crate::db::Recorded::Stored(id) => Ingested {
            inbox_id: id,
            outcome: ingest_one(ctx, db, id)?,
        },
        crate::db::Recorded::Duplicate(id) => Ingested {
            inbox_id: id,
            outcome: Outcome::Duplicate { of: id },
        },
    })
}

/// `orch events replay ID`: resets inbox row `id` (processed, attempts,
/// error, dead) and ingests it again now.
///
/// Assumptions: the caller holds the `ingest` tick lock.
/// Errors: [`crate::error::Error::Usage`] for an unknown delivery; database
/// errors; the delivery's own failure.
pub fn replay(ctx: &Ctx, db: &Db, id: i64) -> anyhow::Result<Ingested> {
    if !db.write(|tx| tx.reset_delivery(id))? {
        return Err(crate::error::Error::Usage(format!("no delivery {id}")).into());
    }
    Ok(Ingested {
        inbox_id: id,
        outcome: ingest_one(ctx, db, id)?,
    })
}

/// Creates the task's branch and worktree from current main, best effort:
/// on failure the worker prepares it before the first job runs.
pub fn prepare_worktree(ctx: &Ctx, db: &Db, task_id: i64) {
    if db.is_rehearsal() {
        return; // --dry-run: no git
    }
    let run = || -> anyhow::Result<()> {
        let task = db
            .task(task_id)?
            .ok_or_else(|| anyhow::anyhow!("no task {task_id}"))?;
        let repo = ctx.repo(ctx.project(&task.project)?);
        repo.sync()?;
        repo.ensure_worktree(std::path::Path::new(&task.worktree), &task.branch)
    };
    if let Err(e) = run() {
        warn!(target: "ingest", task = task_id, error = %format!("{e:#}"), "could not prepare worktree yet; the worker will retry");
    }
}

fn route(
    ctx: &Ctx,
    tx: &Tx,
    source: &str,
    event: &str,
    body: &[u8],
    now: i64,
) -> anyhow::Result<Handled> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Ok(Handled::nothing("body is not JSON"));
    };
    let Ok(source) = source.parse::<Source>() else {
        return Ok(Handled::nothing(format!("unknown source {source:?}")));
    };
    match (source, event) {
        (Source::Plane, "issue") => plane_issue(ctx, tx, &v, now),
        (Source::Gitea, "push") => gitea_push(ctx, tx, &v, now),
        (Source::Gitea, "status") => gitea_status(ctx, tx, &v, now),
        (Source::Gitea, "pull_request" | "pull_request_sync") => {
            gitea_pull_request(ctx, tx, &v, now)
        }
        (source, other) => Ok(Handled::nothing(format!(
            "{source} event {other:?} is not one orch acts on"
        ))),
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// A Plane `issue` delivery: a work item entering the project's In
/// Progress, Approved or Rejected state.
fn plane_issue(ctx: &Ctx, tx: &Tx, v: &Value, now: i64) -> anyhow::Result<Handled> {
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    let created = matches!(action, "created" | "create");
    if !created && !matches!(action, "updated" | "update") {
        return Ok(Handled::nothing(format!("issue action {action:?}")));
    }
    let field = str_at(v, &["activity", "field"]);
    if !created && !matches!(field, Some("state") | Some("state_id")) {
        return Ok(Handled::nothing(format!(
            "field {:?} changed, not the state",
            field.unwrap_or("")
        )));
    }
    let data = v.get("data").unwrap_or(&Value::Null);
    let Some(tracker_project) = data.get("project").and_then(Value::as_str) else {
        return Ok(Handled::nothing("delivery has no data.project"));
    };
    let Some(project) = ctx.config.project_by_tracker_id(tracker_project) else {
        return Ok(Handled::nothing(format!(
            "tracker project {tracker_project} is not in the registry"
        )));
    };
    let state = str_at(data, &["state", "id"])
        .or_else(|| data.get("state").and_then(Value::as_str))
        .or_else(|| str_at(v, &["activity", "new_value"]))
        .unwrap_or("");
    let Some(issue_id) = data.get("id").and_then(Value::as_str) else {
        return Ok(Handled::nothing("delivery has no data.id"));
    };
    let payload_name = str_at(data, &["state", "name"]);
    let state_name = payload_name.unwrap_or(state);
    // An explicit id in [projects.states] wins; else the configured name
    // (from the payload, or the cached Plane id of that name).
    let cached = tx.cached_states(&project.name)?;
    let is = |kind| crate::tracker::state_is(project, &cached, kind, state, payload_name);
    use crate::config::StateKind;
    let kind = [
        StateKind::InProgress,
        StateKind::Approved,
        StateKind::Rejected,
    ]
    .into_iter()
    .find(|k| is(*k));
    let Some(kind) = kind else {
        return Ok(Handled::nothing(format!(
            "state {state_name:?} is not one orch acts on"
        )));
    };
    let item = WorkItem {
        tracker_issue_id: issue_id.to_string(),
        sequence: data.get("sequence_id").and_then(Value::as_i64).unwrap_or(0),
        title: data
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        body: data
            .get("description_stripped")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    };
    on_work_item(
        ctx,
        tx,
        project,
        &item,
        kind,
        state_name,
        Actor::Webhook,
        now,
    )
}

/// A work item observed in the tracker state `kind` — from a webhook
/// (actor `webhook`) or the reconciler's tracker listing (actor
/// `reconciler`): the one handler for both, idempotent by meaning.
/// In Progress creates the task once; Approved approves the analysis;
/// Rejected reruns it — but the reconciler does not rerun it again while
/// the last transition already is a rerun (a level, unlike an event, stays
/// true until a human changes it).
///
/// Assumptions: `tx` is IMMEDIATE.
#[allow(clippy::too_many_arguments)]
pub fn on_work_item(
    ctx: &Ctx,
    tx: &Tx,
    project: &ProjectConfig,
    item: &WorkItem,
    kind: crate::config::StateKind,
    state_name: &str,
    actor: Actor,
    now: i64,
) -> anyhow::Result<Handled> {
    use crate::config::StateKind;
    match kind {
        StateKind::InProgress => {
            if item.sequence <= 0 {
                return Ok(Handled::nothing("work item has no sequence_id"));
            }
            start_work_item(ctx, tx, project, item, actor, now)
        }
        StateKind::Approved | StateKind::Rejected => {
            let Some(task) = tx.task_by_issue(&project.name, &item.tracker_issue_id)? else {
                return Ok(Handled::nothing(format!(
                    "work item {} has no task",
                    item.tracker_issue_id
                )));
            };
            let approve = kind == StateKind::Approved;
            if !approve && actor == Actor::Reconciler && tx.last_transition_is_rerun(task.id)? {
                return Ok(Handled::nothing(format!(
                    "task {} was already rerun after the rejection",
                    task.id
                )));
            }
            let reason = format!("{state_name} in the tracker");
            Ok(Handled {
                outcome: Outcome::Gate(pipeline::human_gate(
                    tx,
                    ctx.policy(),
                    &task,
                    approve,
                    actor,
                    &reason,
                    now,
                )?),
                created_task: None,
            })
        }
        other => Ok(Handled::nothing(format!(
            "state {:?} is not one orch acts on",
            other.key()
        ))),
    }
}

/// Creates the task for a work item that entered In Progress (idempotent).
fn start_work_item(
    ctx: &Ctx,
    tx: &Tx,
    project: &ProjectConfig,
    item: &WorkItem,
    actor: Actor,
    now: i64,
) -> anyhow::Result<Handled> {
    let (id, created) =
        pipeline::create_task(tx, project, item, &ctx.settings.worktrees_dir(), actor, now)?;
    Ok(if created {
        Handled {
            outcome: Outcome::Created { task_id: id },
            created_task: Some(id),
        }
    } else {
        Handled::nothing(format!("work item already has task {id}"))
    })
}

/// Creates a local-tracker work item already *In Progress* and its task
/// (`orch issue add`). Returns `(issue id, task id)`.
pub fn add_local_issue(
    ctx: &Ctx,
    db: &Db,
    project: &str,
    title: &str,
    body: &str,
) -> anyhow::Result<(i64, i64)> {
    let p = ctx.project(project)?;
    if !crate::tracker::Tracker::for_project(ctx, p).takes_local_issues() {
        return Err(crate::error::Error::Usage(format!(
            "project {project} uses the {} tracker; create work items there",
            p.tracker
        ))
        .into());
    }
    let now = now_ms();
    let (issue, handled) = db.write(|tx| {
        let issue = tx.insert_local_issue(project, title, body, &p.states.in_progress, now)?;
        let item = WorkItem {
            tracker_issue_id: issue.to_string(),
            sequence: issue,
            title: title.to_string(),
            body: body.to_string(),
        };
        Ok((
            issue,
            start_work_item(ctx, tx, p, &item, Actor::Human, now)?,
        ))
    })?;
    let task = handled
        .created_task
        .expect("a new local issue always creates a task");
    prepare_worktree(ctx, db, task);
    Ok((issue, task))
}

fn project_by_repo<'a>(ctx: &'a Ctx, v: &Value) -> Option<&'a ProjectConfig> {
    let full = str_at(v, &["repository", "full_name"])?;
    ctx.config.projects.iter().find(|p| p.repo == full)
}

/// Gitea `push`: remember the head of orch's branches (for `status`).
fn gitea_push(ctx: &Ctx, tx: &Tx, v: &Value, now: i64) -> anyhow::Result<Handled> {
    let Some(project) = project_by_repo(ctx, v) else {
        return Ok(Handled::nothing("repository is not in the registry"));
    };
    let (Some(r), Some(after)) = (
        v.get("ref").and_then(Value::as_str),
        v.get("after").and_then(Value::as_str),
    ) else {
        return Ok(Handled::nothing("push without ref/after"));
    };
    let Some(branch) = r
        .strip_prefix("refs/heads/")
        .filter(|b| b.starts_with("orch/"))
    else {
        return Ok(Handled::nothing(format!("ref {r} is not an orch branch")));
    };
    tx.upsert_branch_head(&project.name, branch, after, now)?;
    Ok(Handled {
        outcome: Outcome::Recorded {
            what: format!("recorded head {after} of {branch}"),
            then: None,
        },
        created_task: None,
    })
}

/// Gitea `status`: store a CI state for a sha that is a known branch head
/// (the payload has no branch: fixtures README, surprise 1), then — for a
/// task waiting at development with no active job — decide its
/// development gate again through [`crate::pipeline::ci::on_status`] (the
/// one rule for a recorded CI status, shared with reconcile and `orch ci`)
/// as `webhook`: green → review, red → back to development (a developer
/// retry), anything else waits.
fn gitea_status(ctx: &Ctx, tx: &Tx, v: &Value, now: i64) -> anyhow::Result<Handled> {
    let Some(project) = project_by_repo(ctx, v) else {
        return Ok(Handled::nothing("repository is not in the registry"));
    };
    let (Some(sha), Some(state)) = (
        v.get("sha").and_then(Value::as_str),
        v.get("state").and_then(Value::as_str),
    ) else {
        return Ok(Handled::nothing("status without sha/state"));
    };
    let Some(branch) = tx.branch_for_sha(&project.name, sha)? else {
        return Ok(Handled::nothing(format!(
            "sha {sha} matches no known branch head; status not recorded"
        )));
    };
    let context = v.get("context").and_then(Value::as_str).unwrap_or("ci");
    let url = v.get("target_url").and_then(Value::as_str).unwrap_or("");
    tx.upsert_ci_status(&project.name, sha, context, state, url, None, now)?;
    let recorded = format!("recorded CI {state} ({context}) for {branch} at {sha}");
    let done = |then: Outcome| Handled {
        outcome: Outcome::Recorded {
            what: recorded.clone(),
            then: Some(Box::new(then)),
        },
        created_task: None,
    };
    let Some(task) = tx.task_by_branch(&project.name, &branch)? else {
        return Ok(done(Outcome::nothing(format!(
            "no task has branch {branch}"
        ))));
    };
    let decision = crate::pipeline::ci::on_status(
        tx,
        ctx.policy(),
        project,
        &ctx.repo(project),
        &task,
        RecordedBy {
            actor: Actor::Webhook,
            job: None,
        },
        now,
    )?;
    Ok(done(match decision {
        CiDecision::Moved { to, why, escalated } => Outcome::Moved {
            task_id: task.id,
            from: Stage::Development,
            to,
            why,
            escalated,
        },
        CiDecision::Waits(why) => Outcome::Waits {
            task_id: task.id,
            why,
        },
        CiDecision::NotWaiting(why) => Outcome::nothing(why),
        CiDecision::Lost => Outcome::nothing(format!("task {} changed concurrently", task.id)),
    }))
}

/// Gitea `pull_request` (and `pull_request_sync`): remember the PR of an
/// orch task branch; on `closed` with `merged: true`, release the merge
/// lease the task holds (holder-aware). Never moves the task: a task at
/// deploy is completed only by the deployer's verdict.
fn gitea_pull_request(ctx: &Ctx, tx: &Tx, v: &Value, now: i64) -> anyhow::Result<Handled> {
    let Some(project) = project_by_repo(ctx, v) else {
        return Ok(Handled::nothing("repository is not in the registry"));
    };
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    let pr = v.get("pull_request").unwrap_or(&Value::Null);
    let (Some(number), Some(head)) = (
        pr.get("number").and_then(Value::as_i64),
        str_at(pr, &["head", "ref"]),
    ) else {
        return Ok(Handled::nothing("pull_request without number/head.ref"));
    };
    let Some(task) = tx.task_by_branch(&project.name, head)? else {
        return Ok(Handled::nothing(format!(
            "PR #{number} is not from an orch task branch ({head})"
        )));
    };
    let merged = pr.get("merged").and_then(Value::as_bool).unwrap_or(false);
    let url = pr.get("html_url").and_then(Value::as_str).unwrap_or("");
    tx.upsert_pull_request(task.id, number, url, head, merged, now)?;
    if action == "closed" && merged {
        let released = crate::pipeline::lease::release_for_task(tx, task.id)?;
        let lease = if released.is_empty() {
            "it held no merge lease".to_string()
        } else {
            format!("released merge lease {}", released.join(", "))
        };
        return Ok(Handled::nothing(format!(
            "PR #{number} of task {} merged; {lease}; the task stays at {} (only the deployer's verdict completes it)",
            task.id, task.stage
        )));
    }
    Ok(Handled::nothing(format!(
        "recorded PR #{number} ({action}) of task {}",
        task.id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::HumanGate;

    /// The typed outcome prints the lines inbox rows, logs and `orch
    /// ingest` showed when it was a string, and only a created task, a
    /// move or an applied gate count as changing the pipeline.
    #[test]
    fn an_outcome_prints_its_line_and_knows_whether_it_changed_the_pipeline() {
        let recorded = |then: Option<Outcome>| Outcome::Recorded {
            what: "recorded CI success (ci) for orch/p-1 at abc".into(),
            then: then.map(Box::new),
        };
        let cases = [
            (Outcome::nothing("body is not JSON"), "no pipeline action: body is not JSON", false),
            (Outcome::Created { task_id: 3 }, "created task 3", true),
            (
                Outcome::Gate(HumanGate::Applied { task_id: 3, approved: true }),
                "task 3 analysis approved",
                true,
            ),
            (
                Outcome::Gate(HumanGate::NoAction { why: "task 3 is at review, not analysis".into() }),
                "no pipeline action: task 3 is at review, not analysis",
                false,
            ),
            (recorded(None), "recorded CI success (ci) for orch/p-1 at abc", false),
            (
                recorded(Some(Outcome::nothing("task 1 is escalated"))),
                "recorded CI success (ci) for orch/p-1 at abc; no pipeline action: task 1 is escalated",
                false,
            ),
            (
                recorded(Some(Outcome::Waits { task_id: 1, why: "CI pending".into() })),
                "recorded CI success (ci) for orch/p-1 at abc; task 1 waits: CI pending",
                false,
            ),
            (
                recorded(Some(Outcome::Moved {
                    task_id: 1,
                    from: Stage::Development,
                    to: Stage::Review,
                    why: "CI success on abc".into(),
                    escalated: true,
                })),
                "recorded CI success (ci) for orch/p-1 at abc; task 1: development → review (CI success on abc); escalated",
                true,
            ),
            (Outcome::AlreadyProcessed, "already processed", false),
            (Outcome::Duplicate { of: 4 }, "duplicate of delivery 4; not ingested again", false),
        ];
        for (outcome, line, changed) in cases {
            assert_eq!(outcome.to_string(), line);
            assert_eq!(serde_json::to_value(&outcome).unwrap(), line);
            assert_eq!(outcome.changed_pipeline(), changed, "{line}");
        }
    }
}
