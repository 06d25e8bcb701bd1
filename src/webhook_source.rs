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
