//! The one request/JSON path every REST client uses: a blocking ureq
//! [`Http`] client with the settings' timeouts, an [`Api`] (base URL plus
//! auth header) built by one constructor, the typed [`AdapterError`] the
//! outbox branches on, and the URL/HTML encoders.
//!
//! [`AdapterError::retryable`] is true for connection errors, timeouts,
//! malformed answers, HTTP 5xx, 408 and 429 (with the server's
//! `Retry-After` / `retry_after` kept in [`AdapterError::retry_after_ms`]);
//! any other 4xx is permanent. Error texts are scrubbed of every secret
//! the client was given, and URLs are never logged (operations are, by
//! name).

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::debug;

use crate::config::{AdapterSettings, Secret};
use crate::error::Error;

/// `Ok` when the adapter's switch `key` (e.g. `ORCH_FORGE_ENABLED`) is on,
/// else [`AdapterError::Disabled`] naming `service` and `key`.
pub(crate) fn enabled(
    on: bool,
    service: &'static str,
    key: &'static str,
) -> Result<(), AdapterError> {
    if on {
        Ok(())
    } else {
        Err(AdapterError::Disabled { service, key })
    }
}

/// A setting an adapter needs, or the config error naming it (for a
/// secret, also where it lives and how to run a command with it,
/// [`crate::config::missing_secret_hint`]).
pub(crate) fn required<'a, T>(
    v: &'a Option<T>,
    key: &str,
    why: &str,
) -> Result<&'a T, AdapterError> {
    v.as_ref().ok_or_else(|| AdapterError::Config {
        key: key.to_string(),
        message: format!("required {why}{}", crate::config::missing_secret_hint(key)),
    })
}

/// Why a call to an outside service failed. The outbox retries what is
/// [`retryable`](AdapterError::retryable) and dead-letters the rest at
/// once.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A setting the adapter needs is missing or unusable. Not retried by
    /// counting attempts: the message waits until the operator fixes it.
    #[error("config: {key}: {message}")]
    Config { key: String, message: String },

    /// The adapter's kill switch (`key`) is off.
    #[error("{service} is disabled by {key}")]
    Disabled {
        service: &'static str,
        key: &'static str,
    },

    /// No answer: connection refused or reset, DNS, TLS, a timeout, or
    /// the connection dropped before the whole answer arrived (the request
    /// may or may not have been applied).
    #[error("{service} {op}: {message}")]
    Transport {
        service: &'static str,
        op: String,
        message: String,
    },

    /// The service answered with a non-success status. `message` is the
    /// service's own error text (`message`, `error`, `detail` or
    /// `description`), shortened.
    #[error("{service} {op}: HTTP {status}: {message}")]
    Status {
        service: &'static str,
        op: String,
        status: u16,
        message: String,
        /// How long the service asked us to wait (429 `Retry-After`,
        /// Telegram `parameters.retry_after`), in milliseconds.
        retry_after_ms: Option<u64>,
    },

    /// A success status whose body is not the documented shape.
    #[error("{service} {op}: unexpected answer: {message}")]
    Malformed {
        service: &'static str,
        op: String,
        message: String,
    },

    /// The remote side is not ready for this yet (a PR whose branch has no
    /// changes yet, a comment for a PR not opened yet); retried later.
    #[error("{service} {op}: not yet: {message}")]
    NotYet {
        service: &'static str,
        op: String,
        message: String,
    },

    /// The service's state makes the request impossible, retrying will not
    /// help (no state with that name, a PR closed without merge, …).
    #[error("{service} {op}: {message}")]
    Rejected {
        service: &'static str,
        op: String,
        message: String,
    },
}

impl AdapterError {
    /// Whether trying again later can succeed: transport errors, malformed
    /// answers, "not yet", HTTP 5xx, 408 and 429.
    pub fn retryable(&self) -> bool {
        match self {
            AdapterError::Transport { .. }
            | AdapterError::Malformed { .. }
            | AdapterError::NotYet { .. } => true,
            AdapterError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            AdapterError::Config { .. }
            | AdapterError::Disabled { .. }
            | AdapterError::Rejected { .. } => false,
        }
    }

    /// The wait the service asked for, in milliseconds.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            AdapterError::Status { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// The HTTP status, for errors that have one.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdapterError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the message should wait rather than count a failed attempt
    /// (missing settings, a kill switch).
    pub fn is_waiting(&self) -> bool {
        matches!(
            self,
            AdapterError::Config { .. } | AdapterError::Disabled { .. }
        )
    }
}

impl AdapterError {
    /// As an `anyhow` error for callers that stop on it: settings problems
    /// become [`Error::Config`] (exit 2, naming the key), the rest stay
    /// typed.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            AdapterError::Config { key, message } => Error::Config { key, message }.into(),
            other => anyhow::Error::new(other),
        }
    }
}

/// An HTTP answer: status, the headers orch reads, and the body bytes.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    /// `Retry-After` in milliseconds (delta-seconds or HTTP-date form,
    /// see [`retry_after_ms`]).
    pub retry_after_ms: Option<u64>,
    /// Plane's `X-RateLimit-Remaining`.
    pub rate_remaining: Option<i64>,
    /// Plane's `X-RateLimit-Reset` (unix seconds).
    pub rate_reset_s: Option<i64>,
    pub body: Vec<u8>,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON of type `T`.
    ///
    /// Errors: [`AdapterError::Malformed`] when it does not parse.
    pub fn json<T: DeserializeOwned>(
        &self,
        service: &'static str,
        op: &str,
    ) -> Result<T, AdapterError> {
        serde_json::from_slice(&self.body).map_err(|e| AdapterError::Malformed {
            service,
            op: op.to_string(),
            message: format!("{e} (body: {})", snippet(&self.body)),
        })
    }

    /// The body as JSON of type `T` when the status is 2xx.
    ///
    /// Errors: [`AdapterError::Status`] for any other status,
    /// [`AdapterError::Malformed`] for a body that does not parse.
    pub fn ok_json<T: DeserializeOwned>(
        self,
        service: &'static str,
        op: &str,
    ) -> Result<T, AdapterError> {
        if self.ok() {
            self.json(service, op)
        } else {
            Err(self.into_status_error(service, op))
        }
    }

    /// The service's error text from a JSON error body (`message` for
    /// Gitea, `error`/`detail`/`error_message` for Plane, `description`
    /// for Telegram), else the start of the body.
    pub fn error_text(&self) -> String {
        if let Ok(v) = serde_json::from_slice::<Value>(&self.body) {
            for k in ["message", "error", "detail", "description", "error_message"] {
                if let Some(s) = v.get(k).and_then(Value::as_str) {
                    return shorten(s, 300);
                }
            }
            if v.is_object() {
                return shorten(&v.to_string(), 300);
            }
        }
        snippet(&self.body)
    }

    /// Turns a non-2xx answer into [`AdapterError::Status`].
    pub fn into_status_error(self, service: &'static str, op: &str) -> AdapterError {
        AdapterError::Status {
            service,
            op: op.to_string(),
            status: self.status,
            message: self.error_text(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

fn shorten(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    if s.trim().is_empty() {
        "(empty body)".into()
    } else {
        shorten(&s, 200)
    }
}

/// Largest answer body read (bytes); more is an error.
const MAX_BODY_BYTES: u64 = 8 << 20;

/// A blocking HTTP client for one service, with the settings' timeouts and
/// no redirects. Errors never contain the service's secrets.
pub struct Http {
    agent: ureq::Agent,
    service: &'static str,
    secrets: Vec<Secret>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A request body.
pub enum Body<'a> {
    None,
    Json(&'a Value),
}

impl Http {
    /// A client for `service` (`gitea`, `plane`, `telegram`); `secrets` are
    /// scrubbed from every error text.
    pub fn new(service: &'static str, s: &AdapterSettings, secrets: Vec<Secret>) -> Http {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_millis(s.http_connect_timeout_ms)))
            .timeout_global(Some(Duration::from_millis(s.http_timeout_ms)))
            .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: ureq::Agent::new_with_config(config),
            service,
            secrets,
        }
    }

    /// The service name used in errors and logs.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Replaces every secret in `s` with `[redacted]`.
    pub fn scrub(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in &self.secrets {
            if !secret.expose().is_empty() {
                out = out.replace(secret.expose(), "[redacted]");
            }
        }
        out
    }

    /// Sends one request and returns the answer whatever its status.
    /// `op` names the operation in logs and errors (never the URL, which
    /// may hold a secret).
    ///
    /// Errors: [`AdapterError::Transport`] when no complete answer arrived.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        op: &str,
    ) -> Result<Reply, AdapterError> {
        let started = Instant::now();
        let result = self.send_inner(method, url, headers, body);
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(reply) => {
                debug!(target: "http", service = self.service, op, status = reply.status, ms, "answered");
                Ok(reply)
            }
            Err(e) => {
                let message = self.scrub(&e);
                debug!(target: "http", service = self.service, op, ms, error = %message, "no answer");
                Err(AdapterError::Transport {
                    service: self.service,
                    op: op.to_string(),
                    message,
                })
            }
        }
    }

    fn send_inner(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Reply, String> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("Accept", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = match body {
            Body::None => {
                let req = req.body(()).map_err(|e| format!("bad request: {e}"))?;
                self.agent.run(req)
            }
            Body::Json(v) => {
                let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
                let req = req
                    .header("Content-Type", "application/json")
                    .body(bytes)
                    .map_err(|e| format!("bad request: {e}"))?;
                self.agent.run(req)
            }
        }
        .map_err(describe)?;
        let header = |name: &str| -> Option<String> {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
        };
        let retry_after_ms =
            header("retry-after").and_then(|v| retry_after_ms(&v, crate::clock::now_ms()));
        let rate_remaining = header("x-ratelimit-remaining").and_then(|v| v.parse().ok());
        let rate_reset_s = header("x-ratelimit-reset").and_then(|v| v.parse().ok());
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(describe)?;
        Ok(Reply {
            status,
            retry_after_ms,
            rate_remaining,
            rate_reset_s,
            body,
        })
    }
}

/// One service's REST endpoint: the shared [`Http`] client, the base URL
/// every path is appended to, and the auth header sent with each call.
/// `Debug` shows only the service (the base URL may hold a token).
pub struct Api {
    http: Http,
    base: String,
    auth: Option<(&'static str, Secret)>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("service", &self.http.service)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The one client constructor of the REST clients: `service` (`gitea`,
    /// `plane`, `telegram`) at `base` (no trailing `/`), sending header
    /// `auth` (name, value) with every call; `secrets` (and the auth value)
    /// are scrubbed from every error text.
    pub fn new(
        service: &'static str,
        s: &AdapterSettings,
        base: String,
        auth: Option<(&'static str, Secret)>,
        mut secrets: Vec<Secret>,
    ) -> Api {
        if let Some((_, v)) = &auth {
            secrets.push(v.clone());
        }
        Api {
            http: Http::new(service, s, secrets),
            base: base.trim_end_matches('/').to_string(),
            auth,
        }
    }

    /// The service name used in errors and logs.
    pub fn service(&self) -> &'static str {
        self.http.service
    }

    /// Replaces every secret in `s` with `[redacted]`.
    pub fn scrub(&self, s: &str) -> String {
        self.http.scrub(s)
    }

    /// Sends `method` to `<base>/<path>` with the auth header and an
    /// optional JSON body; returns the answer whatever its status.
    ///
    /// Errors: [`AdapterError::Transport`] when no complete answer arrived.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        op: &str,
    ) -> Result<Reply, AdapterError> {
        let url = format!("{}/{path}", self.base);
        let headers: Vec<(&str, &str)> = self.auth.iter().map(|(k, v)| (*k, v.expose())).collect();
        self.http.send(
            method,
            &url,
            &headers,
            body.map_or(Body::None, Body::Json),
            op,
        )
    }

    /// [`Api::call`], then the 2xx body as `T` ([`Reply::ok_json`]).
    pub fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        op: &str,
    ) -> Result<T, AdapterError> {
        self.call(method, path, body, op)?
            .ok_json(self.http.service, op)
    }
}

/// A ureq error as one line (timeouts and connection errors named).
fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("connection error: {io}"),
        other => other.to_string(),
    }
}

/// Percent-encodes a URL path segment (keeps unreserved characters; with
/// `keep_slash`, also `/`, for Gitea's `{head}` branch segments).
pub fn encode_path(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric()
            || matches!(c, '-' | '.' | '_' | '~')
            || (keep_slash && c == '/')
        {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    encode_path(s, false)
}

/// Escapes text for HTML (Plane `comment_html`, Telegram HTML).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A `Retry-After` header value as a wait in milliseconds from `now_ms`
/// (unix ms): delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, RFC 9110 IMF-fixdate; a date in the
/// past means no wait). `None` for anything else.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<u64> {
    let v = value.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(s.saturating_mul(1000));
    }
    let at_ms = crate::clock::http_date_ms(v)?;
    Some((at_ms - now_ms).max(0) as u64)
}

/// The invisible marker orch puts in every comment it posts, so that a
/// retry can find a comment a crashed send already posted:
/// `<!-- orch:<dedupe key> -->`.
pub fn marker(key: &str) -> String {
    format!("<!-- orch:{} -->", key.replace("--", "-\u{2010}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        assert_eq!(retry_after_ms("120", 0), Some(120_000));
        assert_eq!(retry_after_ms(" 0 ", 0), Some(0));
        // 1994-11-06T08:49:37Z is unix 784111777.
        let at = 784_111_777_000;
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", at - 30_000),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", at + 5_000),
            Some(0),
            "a past date: no wait"
        );
        assert_eq!(retry_after_ms("Thu, 01 Jan 1970 00:00:00 GMT", 0), Some(0));
        assert_eq!(
            retry_after_ms("Tue, 29 Feb 2028 23:59:59 GMT", 0),
            Some(1_835_481_599_000)
        );
        for bad in [
            "soon",
            "-5",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(retry_after_ms(bad, 0), None, "{bad}");
        }
    }

    #[test]
    fn retryable_classification() {
        let status = |s: u16| AdapterError::Status {
            service: "x",
            op: "y".into(),
            status: s,
            message: String::new(),
            retry_after_ms: None,
        };
        for s in [500, 502, 503, 408, 429] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!status(s).retryable(), "{s}");
        }
        assert!(AdapterError::Transport {
            service: "x",
            op: "y".into(),
            message: String::new()
        }
        .retryable());
    }

    #[test]
    fn encoding_escaping_and_markers() {
        assert_eq!(encode_path("orch/widget-42", true), "orch/widget-42");
        assert_eq!(encode_path("a b/c", false), "a%20b%2Fc");
        assert_eq!(html_escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
        assert_eq!(
            marker("task:1:v2:comment"),
            "<!-- orch:task:1:v2:comment -->"
        );
        assert!(!marker("a--b").contains("--b"));
    }

    #[test]
    fn error_text_reads_each_services_shape() {
        let r = |b: &str| Reply {
            status: 400,
            body: b.as_bytes().to_vec(),
            ..Reply::default()
        };
        assert_eq!(
            r(r#"{"message":"not found","url":"u"}"#).error_text(),
            "not found"
        );
        assert_eq!(r(r#"{"error":"gone"}"#).error_text(), "gone");
        assert_eq!(
            r(r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#)
                .error_text(),
            "Bad Request: chat not found"
        );
        assert_eq!(r("").error_text(), "(empty body)");
    }
}
