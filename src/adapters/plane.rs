//! The Plane REST client (v1, `X-API-Key`), per
//! `tests/fixtures/plane/API.md` (Plane CE ≈ v1.3). It knows URLs, the key
//! and Plane's shapes, nothing of orch's database: state resolution, the
//! state cache and deliveries are driven by [`crate::tracker`].
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
//!   items are filtered by state client-side (`tracker::list_work_items`, for the
//!   reconciler).
//! - **Rate limits** (default 60/minute per key): a listing that finds
//!   `X-RateLimit-Remaining: 0` waits for `X-RateLimit-Reset`, and a 429
//!   waits `Retry-After`, each for at most `ORCH_HTTP_MAX_WAIT_S`; the
//!   outbox instead defers the channel ([`Plane::exhausted`]) and retries
//!   after `Retry-After`.
//! - **Comments are posted once**: each carries `external_source = "orch"`
//!   and `external_id = <instance id>:<dedupe key>` (Plane answers 409 to a
//!   second one, and deduplicates per Plane project, so the key carries the
//!   database's instance id),
//!   and a send that may have reached Plane before lists the issue's
//!   comments and reuses the one with that id.
//! - **Moving a work item** (`PATCH {"state": id}`) is idempotent.
//! - **Routes**: Plane lists `…/issues/…` as deprecated; orch calls the
//!   current `…/work-items/…` routes and, when one answers 404 and the
//!   legacy `…/issues/…` route does not (an older Plane), uses the legacy
//!   routes for that Plane for the rest of the process ([`Plane::legacy`]).
//!   A 404 from both is the work item's own 404.

use std::cell::Cell;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::http::{
    enabled, encode_path, encode_query, html_escape, required, AdapterError, Api, Reply,
};
use crate::clock::now_ms;
use crate::config::{AdapterSettings, Secret};

const SERVICE: &str = "plane";

/// Page size of list calls (Plane's maximum is 1000).
const PER_PAGE: u32 = 100;
/// A listing stops after this many pages (a server that never says "last
/// page" must not loop orch forever).
const MAX_PAGES: usize = 1000;
/// How often one request is retried after a 429 in a listing.
const MAX_RATE_RETRIES: usize = 3;

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
    /// `<url>/api/v1/workspaces/<slug>`
    api: Api,
    max_wait_ms: i64,
    /// `(X-RateLimit-Remaining, X-RateLimit-Reset)` of the last answer.
    rate: Cell<Option<(i64, i64)>>,
    /// `<url>|<slug>`: which Plane this is, for [`LEGACY`].
    instance: String,
}

/// The Planes (`<url>|<slug>`) found to lack the `work-items` routes in
/// this process.
static LEGACY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Plane {
    /// A client for workspace `slug` at `<url>/api/v1`.
    pub fn new(s: &AdapterSettings, url: &str, slug: &str, key: &Secret) -> Plane {
        Plane {
            api: Api::new(
                SERVICE,
                s,
                format!(
                    "{}/api/v1/workspaces/{}",
                    url.trim_end_matches('/'),
                    encode_path(slug, false)
                ),
                Some(("X-API-Key", key.clone())),
                vec![],
            ),
            max_wait_ms: (s.http_max_wait_s * 1000) as i64,
            rate: Cell::new(None),
            instance: format!("{}|{slug}", url.trim_end_matches('/')),
        }
    }

    /// The client from the settings.
    ///
    /// Errors: [`AdapterError::Disabled`] when `ORCH_TRACKER_ENABLED` is
    /// off, [`AdapterError::Config`] naming `ORCH_PLANE_URL`,
    /// `ORCH_PLANE_API_KEY` or `ORCH_PLANE_WORKSPACE` when missing.
    pub fn from_settings(s: &AdapterSettings) -> Result<Plane, AdapterError> {
        enabled(s.tracker_enabled, SERVICE, "ORCH_TRACKER_ENABLED")?;
        let why = "for projects with tracker = \"plane\"";
        let url = required(&s.plane_url, "ORCH_PLANE_URL", why)?;
        let key = required(&s.plane_api_key, "ORCH_PLANE_API_KEY", why)?;
        let slug = required(&s.plane_workspace, "ORCH_PLANE_WORKSPACE", why)?;
        Ok(Plane::new(s, url, slug, key))
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
        let r = self.api.call(method, path, body, op)?;
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
                encode_query(&cursor)
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

    /// Whether this Plane is known to lack the `work-items` routes.
    pub fn legacy(&self) -> bool {
        LEGACY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&self.instance)
    }

    /// Runs `call` with the work-item route segment: `work-items`, or
    /// `issues` on a Plane known to lack it; a 404 from `work-items` is
    /// tried once more on `issues`, and if that answers anything but 404
    /// the Plane is remembered as legacy.
    fn items<T>(&self, call: impl Fn(&str) -> Result<T, AdapterError>) -> Result<T, AdapterError> {
        if self.legacy() {
            return call("issues");
        }
        match call("work-items") {
            Err(e) if e.status() == Some(404) => {
                let legacy = call("issues");
                if !matches!(&legacy, Err(e) if e.status() == Some(404)) {
                    warn!(target: "plane", plane = %self.instance, "this Plane has no work-items routes; using the deprecated issues routes");
                    LEGACY
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(self.instance.clone());
                    return legacy;
                }
                Err(e)
            }
            other => other,
        }
    }

    fn project_path(project_id: &str) -> String {
        format!("projects/{}", encode_path(project_id, false))
    }

    /// `projects/{project}/{seg}/{issue}/`: one work item, under the
    /// segment [`Self::items`] tries (`work-items` or `issues`).
    fn item_path(project_id: &str, seg: &str, issue_id: &str) -> String {
        format!(
            "{}/{seg}/{}/",
            Self::project_path(project_id),
            encode_path(issue_id, false)
        )
    }

    /// All states of a project (`GET …/projects/{id}/states/`).
    pub fn list_states(&self, project_id: &str) -> Result<Vec<State>, AdapterError> {
        self.paged(
            &format!("{}/states/", Self::project_path(project_id)),
            "list states",
        )
    }

    /// All work items of a project, every page (`GET …/work-items/`).
    pub fn list_issues(&self, project_id: &str) -> Result<Vec<Issue>, AdapterError> {
        self.items(|seg| {
            self.paged(
                &format!("{}/{seg}/", Self::project_path(project_id)),
                "list work items",
            )
        })
    }

    /// All comments of a work item (`GET …/work-items/{id}/comments/`).
    pub fn list_comments(
        &self,
        project_id: &str,
        issue_id: &str,
    ) -> Result<Vec<Comment>, AdapterError> {
        self.items(|seg| {
            self.paged(
                &format!("{}comments/", Self::item_path(project_id, seg, issue_id)),
                "list comments",
            )
        })
    }

    /// Moves a work item to `state_id` (`PATCH …/work-items/{id}/`).
    pub fn set_state(
        &self,
        project_id: &str,
        issue_id: &str,
        state_id: &str,
    ) -> Result<(), AdapterError> {
        let op = "move work item";
        self.items(|seg| {
            let r = self.call(
                "PATCH",
                &Self::item_path(project_id, seg, issue_id),
                Some(&json!({ "state": state_id })),
                op,
            )?;
            let _: Issue = r.ok_json(SERVICE, op)?;
            Ok(())
        })
    }

    /// Posts a comment with `external_source = "orch"` and `external_id`
    /// (`POST …/work-items/{id}/comments/`). `Ok(None)` when Plane answers
    /// 409: a comment with that external id exists.
    pub fn create_comment(
        &self,
        project_id: &str,
        issue_id: &str,
        html: &str,
        external_id: &str,
    ) -> Result<Option<Comment>, AdapterError> {
        let op = "create comment";
        self.items(|seg| {
            let r = self.call(
                "POST",
                &format!("{}comments/", Self::item_path(project_id, seg, issue_id)),
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
        })
    }
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
    fn comment_html_escapes() {
        assert_eq!(
            text_html("a <b>\nc\n\nd"),
            "<p>a &lt;b&gt;<br>c</p><p>d</p>"
        );
    }
}
