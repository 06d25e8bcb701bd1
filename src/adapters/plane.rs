//! The Plane tracker adapter (REST v1, `X-API-Key`), per
//! `tests/fixtures/plane/API.md` (Plane CE ≈ v1.3).
//!
//! - **State ids are never hard-coded.** Each project names its states in
//!   `[projects.state_names]` (defaults: In Progress, Approved, Rejected,
//!   Blocked, Needs Input, Done). Precedence: an explicit id in
//!   `[projects.states]` wins; otherwise the name is resolved against
//!   `GET …/states/` and the ids are cached per project in the database
//!   (`tracker_states`), refreshed after `ORCH_PLANE_STATE_CACHE_S`, when
//!   a name is missing from the cache, and when Plane refuses a cached id.
//!   Webhook deliveries match by id or, without an explicit id, by the
//!   state name Plane puts in the payload (`data.state.name`).
//! - **Lists page with cursors** until `next_page_results` is false (the
//!   cursor is never empty); the issue list has no state filter, so work
//!   items are filtered by state client-side ([`list_work_items`], for the
//!   reconciler).
//! - **Rate limits** (default 60/minute per key): a listing that finds
//!   `X-RateLimit-Remaining: 0` waits for `X-RateLimit-Reset`, and a 429
//!   waits `Retry-After`, each for at most `ORCH_HTTP_MAX_WAIT_S`; the
//!   outbox instead defers the channel ([`Plane::exhausted`]) and retries
//!   after `Retry-After`.
//! - **Comments are posted once**: each carries `external_source = "orch"`
//!   and `external_id = <dedupe key>` (Plane answers 409 to a second one),
//!   and a send that may have reached Plane before lists the issue's
//!   comments and reuses the one with that id.
//! - **Moving a work item** (`PATCH {"state": id}`) is idempotent.

use std::cell::Cell;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{encode_path, html_escape, required, AdapterError, Body, Http, Reply};
use crate::clock::now_ms;
use crate::config::{ProjectConfig, TrackerKind};
pub use crate::config::{StateKind, StateNames};
use crate::ctx::Ctx;
use crate::db::{CachedState, Db, OutboxRow, Task};

const SERVICE: &str = "plane";

/// Page size of list calls (Plane's maximum is 1000).
const PER_PAGE: u32 = 100;
/// A listing stops after this many pages (a server that never says "last
/// page" must not loop orch forever).
const MAX_PAGES: usize = 1000;
/// How often one request is retried after a 429 in a listing.
const MAX_RATE_RETRIES: usize = 3;

/// The id `[projects.states]` sets explicitly for `kind`, if any. For
/// in_progress/approved/rejected (which default to their names, the local
/// tracker's ids) a value equal to the default or configured name is a
/// name, not an explicit id.
pub fn explicit_id(project: &ProjectConfig, kind: StateKind) -> Option<&str> {
    let s = &project.states;
    let v = match kind {
        StateKind::InProgress => Some(s.in_progress.as_str()),
        StateKind::Approved => Some(s.approved.as_str()),
        StateKind::Rejected => Some(s.rejected.as_str()),
        StateKind::Blocked => s.blocked.as_deref(),
        StateKind::NeedsInput => s.needs_input.as_deref(),
        StateKind::Done => s.done.as_deref(),
    }?;
    let v = v.trim();
    (!v.is_empty() && v != kind.default_name() && v != project.state_names.get(kind)).then_some(v)
}

fn same_name(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Whether a state (`state_id`, and its name when the payload carries one)
/// is the project's `kind`: the explicit id if one is configured, else the
/// configured name, else the id cached for that name.
pub fn state_is(
    project: &ProjectConfig,
    cached: &[CachedState],
    kind: StateKind,
    state_id: &str,
    state_name: Option<&str>,
) -> bool {
    if let Some(id) = explicit_id(project, kind) {
        return state_id == id;
    }
    let name = project.state_names.get(kind);
    if state_name.is_some_and(|n| same_name(n, name)) {
        return true;
    }
    !state_id.is_empty()
        && cached
            .iter()
            .any(|c| c.state_id == state_id && same_name(&c.name, name))
}

/// A page of a Plane list endpoint (cursor pagination envelope).
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    #[serde(default)]
    pub next_cursor: Option<String>,
    #[serde(default)]
    pub next_page_results: bool,
    #[serde(default)]
    pub total_results: Option<i64>,
    pub results: Vec<T>,
}

/// A project state, per Plane's `StateSerializer`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub group: String,
}

/// A work item, per Plane's `IssueSerializer` (fields orch reads). `state`
/// is the state id, or `{id,name,color,group}` with `expand=state`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Issue {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sequence_id: i64,
    #[serde(default)]
    pub state: Value,
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub description_html: Option<String>,
}

impl Issue {
    /// The state id, whether expanded or not.
    pub fn state_id(&self) -> &str {
        match &self.state {
            Value::String(s) => s,
            Value::Object(o) => o.get("id").and_then(Value::as_str).unwrap_or(""),
            _ => "",
        }
    }
    /// The state name when expanded.
    pub fn state_name(&self) -> Option<&str> {
        self.state.get("name").and_then(Value::as_str)
    }
}

/// A comment, per Plane's `IssueCommentSerializer` (fields orch reads).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Comment {
    pub id: String,
    #[serde(default)]
    pub comment_html: String,
    #[serde(default)]
    pub external_source: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
}

/// A Plane API client for one workspace.
#[derive(Debug)]
pub struct Plane {
    http: Http,
    /// `<url>/api/v1/workspaces/<slug>`
    api: String,
    key: crate::config::Secret,
    max_wait_ms: i64,
    /// `(X-RateLimit-Remaining, X-RateLimit-Reset)` of the last answer.
    rate: Cell<Option<(i64, i64)>>,
}

impl Plane {
    /// A client for workspace `slug` at `<url>/api/v1`.
    pub fn new(
        s: &crate::config::AdapterSettings,
        url: &str,
        slug: &str,
        key: &crate::config::Secret,
    ) -> Plane {
        Plane {
            http: Http::new(SERVICE, s, vec![key.clone()]),
            api: format!(
                "{}/api/v1/workspaces/{}",
                url.trim_end_matches('/'),
                encode_path(slug, false)
            ),
            key: key.clone(),
            max_wait_ms: (s.http_max_wait_s * 1000) as i64,
            rate: Cell::new(None),
        }
    }

    /// Whether the last answer said the key has no requests left in this
    /// rate-limit window.
    pub fn exhausted(&self) -> bool {
        matches!(self.rate.get(), Some((0, reset)) if reset * 1000 > now_ms())
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        op: &str,
    ) -> Result<Reply, AdapterError> {
        let url = format!("{}/{path}", self.api);
        let r = self.http.send(
            method,
            &url,
            &[("X-API-Key", self.key.expose())],
            body.map_or(Body::None, Body::Json),
            op,
        )?;
        if let (Some(rem), Some(reset)) = (r.rate_remaining, r.rate_reset_s) {
            self.rate.set(Some((rem, reset)));
        }
        Ok(r)
    }

    /// A GET for a synchronous caller: waits out an exhausted rate-limit
    /// window and 429s (each for at most `ORCH_HTTP_MAX_WAIT_S`).
    fn get_waiting(&self, path: &str, op: &str) -> Result<Reply, AdapterError> {
        if let Some((0, reset)) = self.rate.get() {
            let wait = reset * 1000 - now_ms();
            if wait > 0 && wait <= self.max_wait_ms {
                info!(target: "plane", wait_ms = wait, "rate limit window exhausted; waiting for its reset");
                std::thread::sleep(std::time::Duration::from_millis(wait as u64));
            }
        }
        let mut tries = 0;
        loop {
            let r = self.call("GET", path, None, op)?;
            if r.status != 429 || tries >= MAX_RATE_RETRIES {
                return Ok(r);
            }
            let wait = r.retry_after_ms.unwrap_or(1000) as i64;
            if wait > self.max_wait_ms {
                return Ok(r);
            }
            warn!(target: "plane", op, wait_ms = wait, "rate limited; waiting Retry-After");
            std::thread::sleep(std::time::Duration::from_millis(wait as u64));
            tries += 1;
        }
    }

    /// Every item of a paginated list (`next_page_results` loop).
    fn paged<T: DeserializeOwned>(&self, path: &str, op: &str) -> Result<Vec<T>, AdapterError> {
        let mut out = Vec::new();
        let mut cursor = format!("{PER_PAGE}:0:0");
        for _ in 0..MAX_PAGES {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page_path = format!(
                "{path}{sep}per_page={PER_PAGE}&cursor={}",
                super::encode_query(&cursor)
            );
            let r = self.get_waiting(&page_path, op)?;
            if r.status != 200 {
                return Err(r.into_status_error(SERVICE, op));
            }
            let page: Page<T> = r.json(SERVICE, op)?;
            out.extend(page.results);
            match page.next_cursor {
                Some(next) if page.next_page_results && next != cursor => cursor = next,
                _ => return Ok(out),
            }
        }
        Err(AdapterError::Malformed {
            service: SERVICE,
            op: op.into(),
            message: format!("more than {MAX_PAGES} pages"),
        })
    }

    fn project_path(project_id: &str) -> String {
        format!("projects/{}", encode_path(project_id, false))
    }

    /// All states of a project (`GET …/projects/{id}/states/`).
    pub fn list_states(&self, project_id: &str) -> Result<Vec<State>, AdapterError> {
        self.paged(
            &format!("{}/states/", Self::project_path(project_id)),
            "list states",
        )
    }

    /// All work items of a project, every page (`GET …/issues/`).
    pub fn list_issues(&self, project_id: &str) -> Result<Vec<Issue>, AdapterError> {
        self.paged(
            &format!("{}/issues/", Self::project_path(project_id)),
            "list work items",
        )
    }

    /// All comments of a work item (`GET …/issues/{id}/comments/`).
    pub fn list_comments(
        &self,
        project_id: &str,
        issue_id: &str,
    ) -> Result<Vec<Comment>, AdapterError> {
        self.paged(
            &format!(
                "{}/issues/{}/comments/",
                Self::project_path(project_id),
                encode_path(issue_id, false)
            ),
            "list comments",
        )
    }

    /// Moves a work item to `state_id` (`PATCH …/issues/{id}/`).
    pub fn set_state(
        &self,
        project_id: &str,
        issue_id: &str,
        state_id: &str,
    ) -> Result<(), AdapterError> {
        let op = "move work item";
        let r = self.call(
            "PATCH",
            &format!(
                "{}/issues/{}/",
                Self::project_path(project_id),
                encode_path(issue_id, false)
            ),
            Some(&json!({ "state": state_id })),
            op,
        )?;
        if r.ok() {
            let _: Issue = r.json(SERVICE, op)?;
            Ok(())
        } else {
            Err(r.into_status_error(SERVICE, op))
        }
    }

    /// Posts a comment with `external_source = "orch"` and `external_id`
    /// (`POST …/issues/{id}/comments/`). `Ok(None)` when Plane answers 409:
    /// a comment with that external id exists.
    pub fn create_comment(
        &self,
        project_id: &str,
        issue_id: &str,
        html: &str,
        external_id: &str,
    ) -> Result<Option<Comment>, AdapterError> {
        let op = "create comment";
        let r = self.call(
            "POST",
            &format!(
                "{}/issues/{}/comments/",
                Self::project_path(project_id),
                encode_path(issue_id, false)
            ),
            Some(&json!({
                "comment_html": html,
                "external_source": "orch",
                "external_id": external_id,
            })),
            op,
        )?;
        match r.status {
            200 | 201 => r.json(SERVICE, op).map(Some),
            409 => Ok(None),
            _ => Err(r.into_status_error(SERVICE, op)),
        }
    }
}

/// The Plane client from the settings.
///
/// Errors: [`AdapterError::Disabled`] when `ORCH_TRACKER_ENABLED` is off,
/// [`AdapterError::Config`] naming `ORCH_PLANE_URL`, `ORCH_PLANE_API_KEY`
/// or `ORCH_PLANE_WORKSPACE` when missing.
pub fn client(ctx: &Ctx) -> Result<Plane, AdapterError> {
    let s = &ctx.settings.adapters;
    if !s.tracker_enabled {
        return Err(AdapterError::Disabled {
            service: SERVICE,
            key: "ORCH_TRACKER_ENABLED",
        });
    }
    let why = "for projects with tracker = \"plane\"";
    let url = required(&s.plane_url, "ORCH_PLANE_URL", why)?;
    let key = required(&s.plane_api_key, "ORCH_PLANE_API_KEY", why)?;
    let slug = required(&s.plane_workspace, "ORCH_PLANE_WORKSPACE", why)?;
    Ok(Plane::new(s, url, slug, key))
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
        service: SERVICE,
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
    let plane = client(ctx)?;
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

/// The web link of a work item, from `ORCH_PLANE_PUBLIC_URL`.
pub fn work_item_link(ctx: &Ctx, project: &ProjectConfig, issue_id: &str) -> Option<String> {
    let s = &ctx.settings.adapters;
    let base = s.plane_public_url.as_ref()?;
    let slug = s.plane_workspace.as_ref()?;
    (project.tracker == TrackerKind::Plane).then(|| {
        format!(
            "{}/{}/projects/{}/issues/{}",
            base.trim_end_matches('/'),
            slug,
            project.tracker_project_id,
            issue_id
        )
    })
}

/// Plain text as Plane comment HTML: paragraphs, line breaks, escaped.
pub fn text_html(text: &str) -> String {
    text.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            format!(
                "<p>{}</p>",
                p.lines().map(html_escape).collect::<Vec<_>>().join("<br>")
            )
        })
        .collect()
}

/// Delivers a `tracker` outbox message of `task` to Plane: `state`
/// (payload `{state: "needs_input"|"done"|…}`) moves the work item;
/// `comment` (payload `{text}` or a run report) posts a comment once.
/// `sends_before` > 0 means an earlier send may have reached Plane: look
/// before posting. Returns the remote id (state id, comment id). The
/// client is passed in so the caller can see its rate-limit window.
pub fn deliver(
    ctx: &Ctx,
    db: &Db,
    plane: &Plane,
    msg: &OutboxRow,
    task: &Task,
    project: &ProjectConfig,
    sends_before: i64,
) -> Result<String, AdapterError> {
    if project.tracker_project_id.is_empty() {
        return Err(no_project_id(project));
    }
    let pid = &project.tracker_project_id;
    let issue = &task.tracker_issue_id;
    match msg.kind.as_str() {
        "state" => {
            let key = msg
                .payload
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("");
            let kind = StateKind::from_key(key).ok_or_else(|| AdapterError::Rejected {
                service: SERVICE,
                op: "move work item".into(),
                message: format!("unknown state {key:?}"),
            })?;
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
        "comment" => {
            let key = &msg.dedupe_key;
            let find = || -> Result<Option<String>, AdapterError> {
                let mark = super::marker(key);
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
            let html = super::report::tracker_html(ctx, db, msg, task, project);
            match plane.create_comment(pid, issue, &html, key)? {
                Some(c) => Ok(c.id),
                None => Ok(find()?.unwrap_or_else(|| format!("external_id:{key}"))),
            }
        }
        other => Err(AdapterError::Rejected {
            service: SERVICE,
            op: format!("deliver {other}"),
            message: format!("unknown tracker message kind {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/plane/api")
                .join(name),
        )
        .unwrap()
    }

    fn project(extra: &str) -> ProjectConfig {
        let cfg = crate::config::Config::parse(&format!(
            "[[projects]]\nname = \"w\"\ntracker = \"plane\"\ntracker_project_id = \"p\"\n\
             clone_url = \"x\"\ntest_command = [\"true\"]\n{extra}"
        ))
        .unwrap();
        cfg.projects[0].clone()
    }

    #[test]
    fn parses_pages_states_issues_and_comments() {
        let states: Page<State> = serde_json::from_slice(&fixture("list-states.200.json")).unwrap();
        assert!(!states.next_page_results);
        assert_eq!(states.results.len(), 8);
        let done = states.results.iter().find(|s| s.name == "Done").unwrap();
        assert_eq!(done.id, "bae86f41-55dd-4aa9-99b1-f6359d975769");
        assert_eq!(done.group, "completed");

        let p1: Page<Issue> =
            serde_json::from_slice(&fixture("list-issues.page1.200.json")).unwrap();
        assert!(p1.next_page_results);
        assert_eq!(p1.next_cursor.as_deref(), Some("2:1:0"));
        assert_eq!(p1.total_results, Some(5));
        assert_eq!(
            p1.results[0].state_id(),
            "3e237c0a-e2cb-4c24-bad9-ca246ba03ff2"
        );
        assert_eq!(p1.results[0].sequence_id, 42);
        let p3: Page<Issue> =
            serde_json::from_slice(&fixture("list-issues.page3.200.json")).unwrap();
        assert!(!p3.next_page_results);
        assert_eq!(p3.next_cursor.as_deref(), Some("2:3:0"), "never empty");

        let expanded: Issue =
            serde_json::from_slice(&fixture("get-issue-expanded.200.json")).unwrap();
        assert_eq!(expanded.state_id(), "3e237c0a-e2cb-4c24-bad9-ca246ba03ff2");
        assert_eq!(expanded.state_name(), Some("In Progress"));
        let plain: Issue = serde_json::from_slice(&fixture("get-issue.200.json")).unwrap();
        assert_eq!(plain.state_name(), None);
        let patched: Issue =
            serde_json::from_slice(&fixture("patch-issue-state.200.json")).unwrap();
        assert_eq!(patched.state_id(), "3b621772-c583-4347-90fb-4b3321d30b3d");

        let c: Comment = serde_json::from_slice(&fixture("create-comment.201.json")).unwrap();
        assert_eq!(c.id, "c207762a-17bd-4be0-94f0-ad673fd7ed7e");
        assert_eq!(c.external_id, None);
    }

    #[test]
    fn error_bodies_give_their_text() {
        for (file, status, text) in [
            (
                "error-401-missing-key.401.json",
                401,
                "credentials were not provided",
            ),
            ("error-403-bad-key.403.json", 403, "not valid"),
            ("error-404.404.json", 404, "does not exist"),
            ("error-429.429.json", 429, "RATE_LIMIT_EXCEEDED"),
        ] {
            let r = Reply {
                status,
                body: fixture(file),
                ..Reply::default()
            };
            let e = r.clone().into_status_error(SERVICE, "x");
            assert!(e.to_string().contains(text), "{file}: {e}");
            assert_eq!(e.retryable(), status == 429, "{file}");
        }
    }

    #[test]
    fn explicit_ids_win_over_names_and_the_cache() {
        let cached = vec![CachedState {
            state_id: "id-np".into(),
            name: "needs input".into(),
            group: "started".into(),
            fetched_at_ms: 0,
        }];
        let p = project("");
        assert_eq!(explicit_id(&p, StateKind::InProgress), None);
        assert!(state_is(
            &p,
            &[],
            StateKind::InProgress,
            "x",
            Some("In Progress")
        ));
        assert!(!state_is(&p, &[], StateKind::InProgress, "x", Some("Todo")));
        assert!(state_is(&p, &cached, StateKind::NeedsInput, "id-np", None));
        assert!(!state_is(&p, &cached, StateKind::Done, "id-np", None));

        let p = project("[projects.states]\nin_progress = \"uuid-1\"\ndone = \"uuid-d\"\n");
        assert_eq!(explicit_id(&p, StateKind::InProgress), Some("uuid-1"));
        assert_eq!(explicit_id(&p, StateKind::Done), Some("uuid-d"));
        assert!(state_is(
            &p,
            &[],
            StateKind::InProgress,
            "uuid-1",
            Some("Whatever")
        ));
        assert!(
            !state_is(&p, &[], StateKind::InProgress, "other", Some("In Progress")),
            "an explicit id wins over the name"
        );

        let p = project("[projects.state_names]\nneeds_input = \"Waiting for human\"\n");
        assert_eq!(
            p.state_names.get(StateKind::NeedsInput),
            "Waiting for human"
        );
        assert!(state_is(
            &p,
            &[],
            StateKind::NeedsInput,
            "z",
            Some("waiting for HUMAN")
        ));
    }

    #[test]
    fn comment_html_escapes() {
        assert_eq!(
            text_html("a <b>\nc\n\nd"),
            "<p>a &lt;b&gt;<br>c</p><p>d</p>"
        );
    }
}
