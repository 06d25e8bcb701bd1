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
use crate::webhook_source::{header, required, Headers, Signature, WebhookSource};

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
