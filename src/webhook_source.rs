//! What a webhook sender is, as orch needs to know it: the trait a tracker
//! or a forge implements in its own folder (`tracker::plane`,
//! `forge::gitea`) — which headers carry the delivery id, the event and
//! the signature, which setting holds the secret, how a redelivery is
//! recognised — and the header helpers they share.
//!
//! The source-independent rules (the HMAC compare, the size and JSON
//! limits, storing one row) are `webhook`'s, and so is the registry that
//! maps a source name to its implementation (`webhook::SOURCES`). This is
//! a leaf so the services (tracker, forge) can implement it and the
//! features (webhook, serve, ingest) use it.

use crate::config::Settings;

/// Request headers as `(name, value)` pairs, in the order received.
pub type Headers = [(String, String)];

/// Longest accepted delivery id or event name; anything longer is not
/// from a real sender (UUIDs and short event names).
pub const MAX_META_LEN: usize = 200;

/// First header named `name` (case-insensitive), value trimmed.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The value of header `name`, which must be present, non-empty and at
/// most [`MAX_META_LEN`] long. Errors: `missing <name> header`, `<name>
/// is longer than 200 characters`.
pub fn required(headers: &Headers, name: &str) -> Result<String, String> {
    match header(headers, name) {
        None | Some("") => Err(format!("missing {name} header")),
        Some(v) if v.len() > MAX_META_LEN => {
            Err(format!("{name} is longer than {MAX_META_LEN} characters"))
        }
        Some(v) => Ok(v.to_string()),
    }
}

/// Where a delivery's signature is: the header it came in (named in
/// errors) and its value with any scheme prefix removed, which must be
/// `hex(HMAC-SHA256(secret, raw body))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature<'h> {
    /// The header's name as the sender spells it (`X-Plane-Signature`).
    pub header: &'static str,
    /// The lowercase or uppercase hex digest (may be empty: refused).
    pub hex: &'h str,
}

/// How a redelivery of the same delivery is recognised before storing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// The same `(source, delivery id)`.
    ById,
    /// The same delivery id, or the same body (SHA-256): for senders that
    /// give every retry a new delivery id (Plane).
    ByIdOrBody,
}

/// A work item as a tracker's delivery shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredItem {
    /// The tracker's id of the work item (Plane: a UUID).
    pub id: String,
    /// Its number within the project (Plane's `sequence_id`; 0 if none).
    pub sequence: i64,
    pub title: String,
    /// Its description as plain text.
    pub body: String,
}

/// What a delivery says, in the terms `ingest` acts on: the same for
/// every tracker and every forge, so ingest never asks who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A tracker's work item was created in, or moved to, a state.
    WorkItemState {
        /// The tracker's project id (matched to `projects.tracker_project_id`).
        tracker_project: String,
        item: DeliveredItem,
        /// The state's id (may be empty when only a name came).
        state_id: String,
        /// The state's name, when the delivery carries one.
        state_name: Option<String>,
    },
    /// A forge's push: `git_ref` (`refs/heads/…`) now points at `head`.
    Push {
        /// The repository's `owner/name` (matched to `projects.repo`).
        repo: String,
        git_ref: String,
        head: String,
    },
    /// A forge's CI status for commit `sha`.
    Status {
        repo: String,
        sha: String,
        /// `pending`, `success`, `failure`, `error`, …
        state: String,
        /// The status's context (`ci` when the sender gave none).
        context: String,
        /// Where the CI run is shown (may be empty).
        url: String,
    },
    /// A forge's pull request was opened, updated or closed.
    PullRequest {
        repo: String,
        /// `opened`, `synchronized`, `closed`, … (may be empty).
        action: String,
        number: i64,
        /// The head branch's name.
        head: String,
        merged: bool,
        /// The pull request's page (may be empty).
        url: String,
    },
}

/// The string at `path` in `v`, if every step exists and it is a string.
pub fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Where a tracker's deliveries carry what a person commented on a work
/// item: the newest delivery of `event` whose JSON body has the work
/// item's id at `item_path`, none of `absent` set (comments orch posted
/// itself, deleted ones), gives the comment's HTML at `html_path`. Paths
/// are SQLite JSON paths (`$.data.issue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentQuery {
    pub event: &'static str,
    pub item_path: &'static str,
    pub html_path: &'static str,
    pub absent: &'static [&'static str],
}

/// One sender of webhook deliveries (a tracker or a forge), registered in
/// `webhook::SOURCES`. Implementations are unit structs in the sender's
/// folder; every method is pure.
pub trait WebhookSource: Sync {
    /// The source's name: the route `/webhooks/<name>`, the inbox
    /// `source` column, `orch ingest --source <name>` (lowercase ASCII).
    fn name(&self) -> &'static str;

    /// The setting that holds the webhook secret
    /// (`ORCH_PLANE_WEBHOOK_SECRET`), named in errors and warnings.
    fn secret_setting(&self) -> &'static str;

    /// The configured secret from `settings`, if set.
    fn secret<'s>(&self, settings: &'s Settings) -> Option<&'s str>;

    /// Where this delivery's signature is. Errors name the missing or
    /// malformed header (`missing X-Plane-Signature header`).
    fn signature<'h>(&self, headers: &'h Headers) -> Result<Signature<'h>, String>;

    /// The delivery id and event name. Errors name the missing header.
    fn delivery_meta(&self, headers: &Headers) -> Result<(String, String), String>;

    /// How a redelivery is recognised.
    fn dedupe(&self) -> Dedupe {
        Dedupe::ById
    }

    /// The header that carries the delivery id, lowercase (the serve
    /// log line shows it for every request, refused ones too).
    fn delivery_header(&self) -> &'static str;

    /// Where this source's delivery bodies name a work item or a branch:
    /// `(JSON path, value)` pairs, any of which makes a delivery about
    /// the task with tracker issue `tracker_issue_id` and `branch`
    /// (`orch why` looks for failed deliveries by them). None by default.
    fn about(&self, tracker_issue_id: &str, branch: &str) -> Vec<(&'static str, String)> {
        let _ = (tracker_issue_id, branch);
        Vec::new()
    }

    /// Where this source's deliveries carry a person's comments on a work
    /// item (`orch`'s brief quotes the one that came with a rejection);
    /// `None` when they do not (the default: forges).
    fn comments(&self) -> Option<CommentQuery> {
        None
    }

    /// What a delivery of `event` with JSON `body` says, or why orch does
    /// not act on it (`Err`: the reason, e.g. `plane event
    /// "issue_comment" is not one orch acts on`, `field "name" changed,
    /// not the state`), which ingest records as `no pipeline action:
    /// <reason>`.
    fn parse(&self, event: &str, body: &serde_json::Value) -> Result<Event, String>;

    /// The headers this sender would send with `delivery` of `event`,
    /// signed with `signature` (`hex(HMAC-SHA256)`) when given: for
    /// deliveries orch plays itself (`orch staging-check`, tests).
    fn sender_headers(
        &self,
        delivery: &str,
        event: &str,
        signature: Option<&str>,
    ) -> Vec<(String, String)>;
}
