//! Plane as a webhook sender: the headers of its deliveries, its
//! signature and how its retries are recognised (Plane gives every retry
//! a new delivery id, so a redelivery is also the same body). What orch
//! does on Plane through its API is in [`super`] and
//! [`crate::adapters::plane`]; how an `issue` delivery is acted on is
//! `ingest`'s.
//!
//! Per `tests/fixtures/plane/webhooks/`: `X-Plane-Delivery` (a UUID),
//! `X-Plane-Event` (`issue`, `issue_comment`, …) and `X-Plane-Signature`
//! = `hex(HMAC-SHA256(secret, body))`, no prefix.

use crate::config::Settings;
use serde_json::Value;

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
