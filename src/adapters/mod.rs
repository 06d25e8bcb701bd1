//! The REST clients of the outside services: the Gitea forge, the Plane
//! tracker, the Telegram notifier, and the request/JSON path they share
//! ([`http`]). Clients know URLs, tokens and the services' shapes, and
//! nothing of orch's database or context: what orch does with them lives
//! one floor up, in [`crate::forge`], [`crate::tracker`] and
//! [`crate::notifier`].
//!
//! Secrets (API tokens, the Telegram bot token that sits in the URL path)
//! never reach a log line or an error text: error messages are scrubbed of
//! every configured secret, URLs are not logged (operations are, by name),
//! and ureq's own trace logging of paths is capped by the binary's log
//! filter. `Debug` of the settings prints `[redacted]` for them.

pub mod gitea;
pub mod http;
pub mod plane;
pub mod telegram;

use std::cell::OnceCell;

pub use http::{
    encode_path, encode_query, html_escape, marker, AdapterError, Api, Body, Http, Reply,
};

use crate::config::AdapterSettings;

/// The clients of one pass (`orch deliver`), each built from the settings
/// on first use and reused after, so a pass keeps one connection pool and
/// Plane's rate-limit window per service.
#[derive(Debug, Default)]
pub struct Clients {
    gitea: OnceCell<gitea::Gitea>,
    plane: OnceCell<plane::Plane>,
    telegram: OnceCell<telegram::Telegram>,
}

/// `cell`'s value, built by `make` the first time.
fn get_or_build<T>(
    cell: &OnceCell<T>,
    make: impl FnOnce() -> Result<T, AdapterError>,
) -> Result<&T, AdapterError> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}

impl Clients {
    /// The Gitea client ([`gitea::Gitea::from_settings`]).
    pub fn gitea(&self, s: &AdapterSettings) -> Result<&gitea::Gitea, AdapterError> {
        get_or_build(&self.gitea, || gitea::Gitea::from_settings(s))
    }
    /// The Plane client ([`plane::Plane::from_settings`]).
    pub fn plane(&self, s: &AdapterSettings) -> Result<&plane::Plane, AdapterError> {
        get_or_build(&self.plane, || plane::Plane::from_settings(s))
    }
    /// The Telegram client ([`telegram::Telegram::from_settings`]).
    pub fn telegram(&self, s: &AdapterSettings) -> Result<&telegram::Telegram, AdapterError> {
        get_or_build(&self.telegram, || telegram::Telegram::from_settings(s))
    }
    /// Whether the Plane client (if one was built) saw its rate-limit
    /// window exhausted.
    pub fn plane_exhausted(&self) -> bool {
        self.plane.get().is_some_and(|p| p.exhausted())
    }
}
