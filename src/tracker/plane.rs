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
use crate::webhook_source::{required, Dedupe, Headers, Signature, WebhookSource};

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
