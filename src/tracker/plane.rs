//! Plane, the tracker: what orch does there (move a work item's state,
//! post a comment once, list work items, resolve and cache state ids —
//! never hard-coded: an explicit id in `[projects.states]` wins, else the
//! name from `[projects.state_names]`, cached per project in
//! `tracker_states` and refreshed after `ORCH_PLANE_STATE_CACHE_S`, when a
//! name is missing from the cache, and when Plane refuses a cached id),
//! through [`crate::adapters::plane`]; and Plane as a webhook sender: the
//! headers of its deliveries, its signature, how its retries are
//! recognised (every retry has a new delivery id, so a redelivery is also
//! the same body), and how an `issue` delivery reads as an [`Event`].
//! [`super::Tracker`] dispatches here for `tracker = "plane"`.
//!
//! Per `tests/fixtures/plane/webhooks/`: `X-Plane-Delivery` (a UUID),
//! `X-Plane-Event` (`issue`, `issue_comment`, …) and `X-Plane-Signature`
//! = `hex(HMAC-SHA256(secret, body))`, no prefix.

use crate::config::Settings;
use std::collections::HashMap;

use serde_json::Value;
use tracing::{info, warn};

use super::{explicit_id, same_name, TrackerItem};
use crate::adapters::plane::{Issue, Plane};
use crate::adapters::{marker, AdapterError};
use crate::clock::now_ms;
use crate::config::{AdapterSettings, ProjectConfig, StateKind};
use crate::ctx::Ctx;
use crate::db::{CachedState, Db, OutboxRow, Task};
use crate::outbox::{TrackerComment, TrackerMessage, TrackerState};
use crate::pipeline::WorkItem;

use crate::webhook_source::{
    required, str_at, CommentQuery, Dedupe, DeliveredItem, Event, Headers, Signature, WebhookSource,
};

/// Plane's webhook deliveries (`/webhooks/plane`, source `plane`).
pub struct Webhook;

impl WebhookSource for Webhook {
    fn name(&self) -> &'static str {
        "plane"
    }

    fn secret_setting(&self) -> &'static str {
        "ORCH_PLANE_WEBHOOK_SECRET"
    }

    fn secret<'s>(&self, settings: &'s Settings) -> Option<&'s str> {
        settings.plane_webhook_secret.as_ref().map(|s| s.expose())
    }

    fn signature<'h>(&self, headers: &'h Headers) -> Result<Signature<'h>, String> {
        let name = "X-Plane-Signature";
        let hex =
            crate::webhook_source::header(headers, name).ok_or(format!("missing {name} header"))?;
        Ok(Signature { header: name, hex })
    }

    fn delivery_meta(&self, headers: &Headers) -> Result<(String, String), String> {
        Ok((
            required(headers, "X-Plane-Delivery")?,
            required(headers, "X-Plane-Event")?,
        ))
    }

    fn dedupe(&self) -> Dedupe {
        Dedupe::ByIdOrBody
    }

    fn delivery_header(&self) -> &'static str {
        "x-plane-delivery"
    }

    /// An `issue` or `issue_comment` delivery's `data.id` is the work item.
    fn about(&self, tracker_issue_id: &str, _branch: &str) -> Vec<(&'static str, String)> {
        vec![("$.data.id", tracker_issue_id.to_string())]
    }

    /// Plane's `issue_comment` event: `data.issue` is the work item,
    /// `data.comment_html` the comment; orch's own comments carry
    /// `data.external_source`, deleted ones `data.deleted_at`.
    fn comments(&self) -> Option<CommentQuery> {
        Some(CommentQuery {
            event: "issue_comment",
            item_path: "$.data.issue",
            html_path: "$.data.comment_html",
            absent: &["$.data.external_source", "$.data.deleted_at"],
        })
    }

    /// An `issue` delivery (v1, `data` = IssueExpandSerializer) of a work
    /// item created, or updated in its state (`activity.field` = `state`
    /// or `state_id`). The state is `data.state.id` (or `data.state`, or
    /// `activity.new_value`) with `data.state.name` when expanded.
    fn parse(&self, event: &str, v: &Value) -> Result<Event, String> {
        if event != "issue" {
            return Err(format!("plane event {event:?} is not one orch acts on"));
        }
        let action = v.get("action").and_then(Value::as_str).unwrap_or("");
        let created = matches!(action, "created" | "create");
        if !created && !matches!(action, "updated" | "update") {
            return Err(format!("issue action {action:?}"));
        }
        let field = str_at(v, &["activity", "field"]);
        if !created && !matches!(field, Some("state") | Some("state_id")) {
            return Err(format!(
                "field {:?} changed, not the state",
                field.unwrap_or("")
            ));
        }
        let data = v.get("data").unwrap_or(&Value::Null);
        let tracker_project = data
            .get("project")
            .and_then(Value::as_str)
            .ok_or("delivery has no data.project")?;
        let state_id = str_at(data, &["state", "id"])
            .or_else(|| data.get("state").and_then(Value::as_str))
            .or_else(|| str_at(v, &["activity", "new_value"]))
            .unwrap_or("");
        let id = data
            .get("id")
            .and_then(Value::as_str)
            .ok_or("delivery has no data.id")?;
        let text = |key: &str| {
            data.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Ok(Event::WorkItemState {
            tracker_project: tracker_project.to_string(),
            item: DeliveredItem {
                id: id.to_string(),
                sequence: data.get("sequence_id").and_then(Value::as_i64).unwrap_or(0),
                title: text("name"),
                body: text("description_stripped"),
            },
            state_id: state_id.to_string(),
            state_name: str_at(data, &["state", "name"]).map(str::to_string),
        })
    }

    fn sender_headers(
        &self,
        delivery: &str,
        event: &str,
        signature: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut out = vec![
            ("X-Plane-Delivery".to_string(), delivery.to_string()),
            ("X-Plane-Event".to_string(), event.to_string()),
        ];
        if let Some(sig) = signature {
            out.push(("X-Plane-Signature".to_string(), sig.to_string()));
        }
        out
    }
}

/// The project's work items in a state orch knows (every
/// [`StateKind`]), by Plane issue id, from Plane's whole listing; with
/// `persist` false (a dry run) the state ids it resolves are not cached.
///
/// Errors: settings, state resolution and API errors, as text.
pub(super) fn items(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    persist: bool,
) -> Result<HashMap<String, TrackerItem>, String> {
    let items =
        list_work_items(ctx, db, project, &StateKind::ALL, persist).map_err(|e| e.to_string())?;
    Ok(items
        .into_iter()
        .map(|(kind, i)| {
            let item = WorkItem {
                tracker_issue_id: i.id.clone(),
                sequence: i.sequence_id,
                title: i.name.clone(),
                body: String::new(),
            };
            let state_name = i.state_name().unwrap_or(kind.default_name()).to_string();
            (
                i.id.clone(),
                TrackerItem {
                    kind,
                    state_name,
                    item,
                },
            )
        })
        .collect())
}

/// The web link of a work item, from `ORCH_PLANE_PUBLIC_URL` and
/// `ORCH_PLANE_WORKSPACE`; `None` when either is unset.
pub(super) fn work_item_link(
    s: &AdapterSettings,
    project: &ProjectConfig,
    issue_id: &str,
) -> Option<String> {
    let base = s.plane_public_url.as_ref()?;
    let slug = s.plane_workspace.as_ref()?;
    Some(format!(
        "{}/{}/projects/{}/issues/{}",
        base.trim_end_matches('/'),
        slug,
        project.tracker_project_id,
        issue_id
    ))
}

/// The `(id, name)` a Plane delivery carries for a work item entering
/// `kind`: the explicit id of `[projects.states]`, else the id Plane's
/// states API lists for the configured name (fetched afresh, not cached:
/// `db` is only read).
///
/// Errors: [`AdapterError`]s (settings, transport, no state of that name).
pub(super) fn delivery_state(
    ctx: &Ctx,
    db: &Db,
    s: &AdapterSettings,
    project: &ProjectConfig,
    kind: StateKind,
) -> Result<(String, String), AdapterError> {
    let name = project.state_names.get(kind).to_string();
    let plane = Plane::from_settings(s)?;
    let id = resolve_state(ctx, db, &plane, project, kind, true, false)?;
    Ok((id, name))
}

/// Resolves every state of the project by asking Plane (not cached):
/// `in_progress=<id> approved=<id> …`.
///
/// Errors: no database, settings, API errors, a state missing, as text.
pub(super) fn check_states(
    ctx: &Ctx,
    db: Option<&Db>,
    s: &AdapterSettings,
    project: &ProjectConfig,
) -> Result<String, String> {
    let db = db.ok_or("no database to resolve states with: run `orch init` first")?;
    let plane = Plane::from_settings(s).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for kind in StateKind::ALL {
        let id = resolve_state(ctx, db, &plane, project, kind, true, false)
            .map_err(|e| e.to_string())?;
        ids.push(format!("{}={id}", kind.key()));
    }
    Ok(ids.join(" "))
}

fn no_project_id(project: &ProjectConfig) -> AdapterError {
    AdapterError::Config {
        key: format!("projects.{}.tracker_project_id", project.name),
        message: "required for tracker = \"plane\"".into(),
    }
}

/// Fetches the project's states from Plane and, with `persist`, replaces
/// the cache (a `--dry-run` reads but never writes).
pub fn refresh_states(
    db: &Db,
    plane: &Plane,
    project: &ProjectConfig,
    persist: bool,
) -> Result<Vec<CachedState>, AdapterError> {
    if project.tracker_project_id.is_empty() {
        return Err(no_project_id(project));
    }
    let states = plane.list_states(&project.tracker_project_id)?;
    let rows: Vec<(String, String, String)> = states
        .into_iter()
        .map(|s| (s.id, s.name, s.group))
        .collect();
    let now = now_ms();
    if persist {
        if let Err(e) = db.write(|tx| tx.replace_tracker_states(&project.name, &rows, now)) {
            warn!(target: "plane", project = %project.name, error = %format!("{e:#}"), "could not cache states");
        }
    }
    info!(target: "plane", project = %project.name, states = rows.len(), "refreshed the state cache");
    Ok(rows
        .into_iter()
        .map(|(state_id, name, group)| CachedState {
            state_id,
            name,
            group,
            fetched_at_ms: now,
        })
        .collect())
}

/// The Plane state id of `kind` for `project`: the explicit id from
/// `[projects.states]`, else the cached id of the configured name (fetched
/// again when stale, missing, or with `force_refresh`; what is fetched is
/// cached only with `persist`).
///
/// Errors: [`AdapterError::Rejected`] when the project has no state of that
/// name; the API's errors.
pub fn resolve_state(
    ctx: &Ctx,
    db: &Db,
    plane: &Plane,
    project: &ProjectConfig,
    kind: StateKind,
    force_refresh: bool,
    persist: bool,
) -> Result<String, AdapterError> {
    if let Some(id) = explicit_id(project, kind) {
        return Ok(id.to_string());
    }
    let name = project.state_names.get(kind);
    let find = |states: &[CachedState]| {
        states
            .iter()
            .find(|s| same_name(&s.name, name))
            .map(|s| s.state_id.clone())
    };
    if !force_refresh {
        let max_age = (ctx.settings.adapters.plane_state_cache_s * 1000) as i64;
        let cached = db.cached_states(&project.name).unwrap_or_default();
        let fresh = cached
            .first()
            .is_some_and(|c| now_ms() - c.fetched_at_ms <= max_age);
        if fresh {
            if let Some(id) = find(&cached) {
                return Ok(id);
            }
        }
    }
    let states = refresh_states(db, plane, project, persist)?;
    find(&states).ok_or_else(|| AdapterError::Rejected {
        service: "plane",
        op: "resolve state".into(),
        message: format!(
            "project {} has no state named {name:?} in Plane; create it, or set \
             [projects.state_names].{key} (or an id in [projects.states].{key})",
            project.name,
            key = kind.key()
        ),
    })
}

/// The project's work items currently in one of `kinds`, from every page
/// of Plane's issue list, filtered client-side (the API has no state
/// filter). For the reconciler's tracker side; with `persist` false (a dry
/// run) the state ids it resolves are not cached.
///
/// Errors: settings, state resolution and API errors.
pub fn list_work_items(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    kinds: &[StateKind],
    persist: bool,
) -> Result<Vec<(StateKind, Issue)>, AdapterError> {
    let plane = Plane::from_settings(&ctx.settings.adapters)?;
    if project.tracker_project_id.is_empty() {
        return Err(no_project_id(project));
    }
    let mut ids = Vec::new();
    for &kind in kinds {
        ids.push((
            kind,
            resolve_state(ctx, db, &plane, project, kind, false, persist)?,
        ));
    }
    let issues = plane.list_issues(&project.tracker_project_id)?;
    Ok(issues
        .into_iter()
        .filter_map(|i| {
            let kind = ids
                .iter()
                .find(|(_, id)| id == i.state_id())
                .map(|(k, _)| *k)?;
            Some((kind, i))
        })
        .collect())
}

/// Delivers a tracker message of `task` to Plane (`msg` is its row): a
/// state moves the work item; a comment (text or a run report) is posted
/// once.
/// `sends_before` > 0 means an earlier send may have reached Plane: look
/// before posting. Returns the remote id (state id, comment id). The
/// client is passed in so the caller can see its rate-limit window.
#[allow(clippy::too_many_arguments)]
pub(super) fn deliver(
    ctx: &Ctx,
    db: &Db,
    plane: &Plane,
    msg: &OutboxRow,
    message: &TrackerMessage,
    task: &Task,
    project: &ProjectConfig,
    sends_before: i64,
    comment_html: &dyn Fn(&TrackerComment) -> String,
) -> Result<String, AdapterError> {
    if project.tracker_project_id.is_empty() {
        return Err(no_project_id(project));
    }
    let pid = &project.tracker_project_id;
    let issue = &task.tracker_issue_id;
    match message {
        TrackerMessage::State(TrackerState { state: kind }) => {
            let kind = *kind;
            let id = resolve_state(ctx, db, plane, project, kind, false, true)?;
            match plane.set_state(pid, issue, &id) {
                Err(e) if e.status() == Some(400) && explicit_id(project, kind).is_none() => {
                    // The cached id may be stale (state deleted and
                    // recreated): refresh once.
                    warn!(target: "plane", task = task.id, error = %e, "Plane refused the cached state id; refreshing");
                    let id = resolve_state(ctx, db, plane, project, kind, true, true)?;
                    plane.set_state(pid, issue, &id)?;
                    Ok(id)
                }
                Err(e) => Err(e),
                Ok(()) => Ok(id),
            }
        }
        TrackerMessage::Comment(comment) => {
            // Keyed by instance too: another orch posting to this Plane
            // project never has the same external_id.
            let key = &db
                .remote_dedupe_key(msg)
                .map_err(|e| AdapterError::Transport {
                    service: "plane",
                    op: "read instance id".into(),
                    message: format!("{e:#}"),
                })?;
            let find = || -> Result<Option<String>, AdapterError> {
                let mark = marker(key);
                Ok(plane
                    .list_comments(pid, issue)?
                    .into_iter()
                    .find(|c| {
                        c.external_id.as_deref() == Some(key.as_str())
                            || c.comment_html.contains(&mark)
                    })
                    .map(|c| c.id))
            };
            if sends_before > 0 {
                if let Some(id) = find()? {
                    info!(target: "plane", key = %key, comment = %id, "comment was already posted");
                    return Ok(id);
                }
            }
            let html = comment_html(comment);
            match plane.create_comment(pid, issue, &html, key)? {
                Some(c) => Ok(c.id),
                None => Ok(find()?.unwrap_or_else(|| format!("external_id:{key}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/plane/webhooks/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn an_issue_moved_to_a_state_is_a_work_item_state_and_a_comment_is_not() {
        let Event::WorkItemState {
            item,
            state_id,
            state_name,
            ..
        } = Webhook
            .parse("issue", &fixture("issue-updated-state-in-progress"))
            .unwrap()
        else {
            panic!("not a work item state")
        };
        assert!(!item.id.is_empty() && !state_id.is_empty());
        assert!(state_name.is_some(), "the fixture expands data.state");
        let err = Webhook
            .parse("issue_comment", &fixture("issue_comment-created"))
            .unwrap_err();
        assert_eq!(err, "plane event \"issue_comment\" is not one orch acts on");
        let mut renamed = fixture("issue-updated-state-in-progress");
        renamed["activity"]["field"] = "name".into();
        assert_eq!(
            Webhook.parse("issue", &renamed).unwrap_err(),
            "field \"name\" changed, not the state"
        );
    }
}
