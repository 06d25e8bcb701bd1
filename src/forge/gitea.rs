//! Gitea as a webhook sender: the headers of its deliveries and its
//! signature. What orch does on Gitea through its API is in [`super`]
//! and [`crate::adapters::gitea`]; how a `push`, `status` or
//! `pull_request` delivery is acted on is `ingest`'s.
//!
//! Per `tests/fixtures/gitea/webhooks/`: `X-Gitea-Delivery` (a UUID),
//! `X-Gitea-Event-Type` (the exact type, e.g. `pull_request_sync`) with
//! `X-Gitea-Event` (the group) as the fallback, and `X-Gitea-Signature` =
//! `hex(HMAC-SHA256(secret, body))`, no prefix; only when that header is
//! absent, `X-Hub-Signature-256` = `"sha256=" + hex(...)`.

use crate::config::Settings;
use serde_json::Value;

use crate::webhook_source::{header, required, str_at, Event, Headers, Signature, WebhookSource};

/// Gitea's webhook deliveries (`/webhooks/gitea`, source `gitea`).
pub struct Webhook;

impl WebhookSource for Webhook {
    fn name(&self) -> &'static str {
        "gitea"
    }

    fn secret_setting(&self) -> &'static str {
        "ORCH_GITEA_WEBHOOK_SECRET"
    }

    fn secret<'s>(&self, settings: &'s Settings) -> Option<&'s str> {
        settings.gitea_webhook_secret.as_ref().map(|s| s.expose())
    }

    fn signature<'h>(&self, headers: &'h Headers) -> Result<Signature<'h>, String> {
        if let Some(hex) = header(headers, "X-Gitea-Signature") {
            return Ok(Signature {
                header: "X-Gitea-Signature",
                hex,
            });
        }
        let name = "X-Hub-Signature-256";
        let v = header(headers, name).ok_or_else(|| {
            "missing X-Gitea-Signature (or X-Hub-Signature-256) header".to_string()
        })?;
        let hex = v
            .strip_prefix("sha256=")
            .ok_or(format!("{name} does not start with \"sha256=\""))?;
        Ok(Signature { header: name, hex })
    }

    fn delivery_meta(&self, headers: &Headers) -> Result<(String, String), String> {
        let id = required(headers, "X-Gitea-Delivery")?;
        let event = match required(headers, "X-Gitea-Event-Type") {
            Ok(e) => e,
            Err(_) => required(headers, "X-Gitea-Event")
                .map_err(|_| "missing X-Gitea-Event-Type (or X-Gitea-Event) header")?,
        };
        Ok((id, event))
    }

    fn delivery_header(&self) -> &'static str {
        "x-gitea-delivery"
    }

    /// A `push` names the branch in `ref`, a `pull_request` as its head.
    fn about(&self, _tracker_issue_id: &str, branch: &str) -> Vec<(&'static str, String)> {
        vec![
            ("$.ref", format!("refs/heads/{branch}")),
            ("$.pull_request.head.ref", branch.to_string()),
        ]
    }

    /// `push` (a branch head), `status` (a commit's CI; the payload names
    /// no branch: fixtures README, surprise 1) and `pull_request` /
    /// `pull_request_sync` (PR bookkeeping) deliveries.
    fn parse(&self, event: &str, v: &Value) -> Result<Event, String> {
        if !matches!(
            event,
            "push" | "status" | "pull_request" | "pull_request_sync"
        ) {
            return Err(format!("gitea event {event:?} is not one orch acts on"));
        }
        let repo = str_at(v, &["repository", "full_name"])
            .ok_or("delivery has no repository.full_name")?
            .to_string();
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        match event {
            "push" => {
                let (Some(git_ref), Some(head)) = (text(v, "ref"), text(v, "after")) else {
                    return Err("push without ref/after".into());
                };
                Ok(Event::Push {
                    repo,
                    git_ref,
                    head,
                })
            }
            "status" => {
                let (Some(sha), Some(state)) = (text(v, "sha"), text(v, "state")) else {
                    return Err("status without sha/state".into());
                };
                Ok(Event::Status {
                    repo,
                    sha,
                    state,
                    context: text(v, "context").unwrap_or_else(|| "ci".into()),
                    url: text(v, "target_url").unwrap_or_default(),
                })
            }
            _ => {
                let pr = v.get("pull_request").unwrap_or(&Value::Null);
                let (Some(number), Some(head)) = (
                    pr.get("number").and_then(Value::as_i64),
                    str_at(pr, &["head", "ref"]),
                ) else {
                    return Err("pull_request without number/head.ref".into());
                };
                Ok(Event::PullRequest {
                    repo,
                    action: text(v, "action").unwrap_or_default(),
                    number,
                    head: head.to_string(),
                    merged: pr.get("merged").and_then(Value::as_bool).unwrap_or(false),
                    url: text(pr, "html_url").unwrap_or_default(),
                })
            }
        }
    }

    fn sender_headers(
        &self,
        delivery: &str,
        event: &str,
        signature: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut out = vec![
            ("X-Gitea-Delivery".to_string(), delivery.to_string()),
            ("X-Gitea-Event".to_string(), event.to_string()),
            ("X-Gitea-Event-Type".to_string(), event.to_string()),
        ];
        if let Some(sig) = signature {
            out.push(("X-Gitea-Signature".to_string(), sig.to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/gitea/webhooks/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn push_status_and_pull_request_deliveries_read_as_events() {
        let Event::Push { git_ref, head, .. } = Webhook.parse("push", &fixture("push")).unwrap()
        else {
            panic!("not a push")
        };
        assert!(git_ref.starts_with("refs/heads/") && head.len() == 40);
        let Event::Status { state, sha, .. } =
            Webhook.parse("status", &fixture("status-success")).unwrap()
        else {
            panic!("not a status")
        };
        assert_eq!((state.as_str(), sha.len()), ("success", 40));
        let Event::PullRequest { merged, action, .. } = Webhook
            .parse("pull_request", &fixture("pull_request-closed-merged"))
            .unwrap()
        else {
            panic!("not a pull request")
        };
        assert!(merged && action == "closed");
        assert_eq!(
            Webhook
                .parse("workflow_job", &fixture("workflow_job-queued"))
                .unwrap_err(),
            "gitea event \"workflow_job\" is not one orch acts on"
        );
        assert_eq!(
            Webhook.parse("status", &serde_json::json!({})).unwrap_err(),
            "delivery has no repository.full_name"
        );
    }
}
