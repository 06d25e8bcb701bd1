//! What the shim answers: the axum router, its handlers and the layers
//! around them.
//!
//! Layers, outermost first:
//! - [`finish`]: refuses a request whose head had both `Content-Length` and
//!   `Transfer-Encoding` (400, see [`super::io`]), a `Transfer-Encoding`
//!   other than exactly `chunked` (400: the shim decodes no other coding,
//!   RFC 9112 §6.1; hyper accepts any list that ends in `chunked`, such as
//!   `gzip, chunked` or `chunked, chunked`), or a header value that is not
//!   UTF-8 (400); gives every answer the JSON shape `{"status",
//!   "detail"}` (also those made by the layers below and by axum's routing,
//!   which have none); logs one line per request.
//! - [`bearer`] (a TCP admin listener only): 401 unless the request
//!   carries `Authorization: Bearer <ORCH_ADMIN_TOKEN>`.
//! - tower-http `CatchPanicLayer`: a bug in a handler is a 500, not a
//!   dropped connection.
//! - tower-http `TimeoutLayer`: the whole request — body and storing —
//!   must be done within the read deadline after its head arrived (408).
//! - tower-http `RequestBodyLimitLayer`: a declared body over
//!   [`MAX_BODY_BYTES`] is refused before it is read (413); a longer
//!   chunked body fails while being read (413).
//!
//! The webhook handler verifies the signature over the raw body, reads the
//! delivery id and event, checks the body is JSON within limits
//! ([`webhook::check_json`]) and hands the delivery to
//! the group-commit [`Writer`]; it answers 202 (or 200 for a redelivery)
//! only once the commit that holds it is on disk, 503 if that commit
//! failed. Nothing is stored for a refused request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::Digest;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::writer::Writer;
use super::Admin;
use crate::db::{NewDelivery, Recorded};
use crate::webhook::{self, Source, MAX_BODY_BYTES};

/// What the handlers share.
pub struct App {
    /// The HMAC secret of each source's webhook, by source name
    /// (`webhook::SOURCES`); a source without one has its deliveries
    /// refused.
    pub secrets: std::collections::BTreeMap<&'static str, String>,
    /// The whole-request deadline after the head.
    pub read_timeout: Duration,
    /// The group-commit writer.
    pub writer: Writer,
    /// What the admin listener serves (`/queue`, `/metrics`).
    pub admin: Admin,
    /// Webhook answers since the process started, by `(source, answer)`
    /// (`stored`, `duplicate`, `bad_signature`, `too_large`, …): the
    /// rejected ones are stored nowhere else (`GET /metrics`).
    pub answers: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl App {
    /// Counts one answer to a webhook path.
    fn count_answer(&self, path: &str, outcome: &'static str) {
        let Some(source) = path.strip_prefix("/webhooks/").and_then(Source::named) else {
            return;
        };
        let source = source.as_str();
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        *answers.entry((source, outcome)).or_default() += 1;
    }

    /// The answer counters as Prometheus text
    /// (`orch_webhook_answers_total{source, answer}`).
    fn answers_text(&self) -> String {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::from(
            "# HELP orch_webhook_answers_total Webhook deliveries answered by this orch serve process, by source and answer (stored, duplicate, or why it was refused).\n# TYPE orch_webhook_answers_total counter\n",
        );
        for ((source, answer), n) in answers.iter() {
            text += &format!(
                "orch_webhook_answers_total{{source=\"{source}\",answer=\"{answer}\"}} {n}\n"
            );
        }
        text
    }
}

impl App {
    fn secret(&self, source: Source) -> &str {
        self.secrets.get(source.as_str()).map_or("", String::as_str)
    }
}

/// Why the connection's service marked a request for refusal (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// Its head had both `Content-Length` and `Transfer-Encoding`.
    SmugglingShape,
    /// The framing watch did not see this request's head (it lost step
    /// with hyper): refuse rather than guess.
    FramingLost,
}

/// The webhook listener's router with its layers: `POST
/// /webhooks/<source>` for every registered source
/// ([`webhook::SOURCES`]) and `/healthz`, nothing an outsider should
/// read. Any other path is 404 (`not_found`), another method on a
/// webhook path 405.
pub fn router(app: Arc<App>) -> Router {
    let mut routes = Router::new().route("/healthz", get(health));
    for &source in webhook::SOURCES {
        routes = routes.route(
            &format!("/webhooks/{source}"),
            post(
                move |State(app): State<Arc<App>>, req: Request| async move {
                    hook(&app, source, req).await
                },
            ),
        );
    }
    layered(routes, app, None)
}

/// The admin listener's router (`ORCH_ADMIN_BIND`: a Unix socket in the
/// state directory by default): `/queue`, `/metrics` and `/healthz`, with
/// the same layers; with a `token` (TCP) every request must carry it.
pub fn admin_router(app: Arc<App>, token: Option<Token>) -> Router {
    let routes = Router::new()
        .route("/queue", get(queue))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health));
    layered(routes, app, token)
}

fn layered(routes: Router<Arc<App>>, app: Arc<App>, token: Option<Token>) -> Router {
    let read_timeout = app.read_timeout;
    let routes = routes.fallback(not_found).with_state(app.clone());
    // The guard covers the fallback too: without the token, even which
    // paths exist stays unknown.
    let routes = match token {
        Some(t) => routes.layer(axum::middleware::from_fn_with_state(Arc::new(t), bearer)),
        None => routes,
    };
    routes
        // Each `layer` wraps the ones before it: `finish` is outermost.
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            read_timeout,
        ))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(app, finish))
}

/// The admin bearer token, kept as its SHA-256 so that comparing takes the
/// same time whatever the length and content of what a client sends.
pub struct Token([u8; 32]);

impl Token {
    /// The token every request must carry (`ORCH_ADMIN_TOKEN`).
    pub fn new(token: &str) -> Token {
        Token(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`
    /// (the scheme is case-insensitive, RFC 9110 §11.1); compared in
    /// constant time.
    fn admits(&self, authorization: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let Some(sep) = authorization.iter().position(|b| *b == b' ') else {
            return false;
        };
        let (scheme, rest) = authorization.split_at(sep);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return false;
        }
        let given: [u8; 32] = sha2::Sha256::digest(rest.trim_ascii()).into();
        given.ct_eq(&self.0).into()
    }
}

/// The TCP admin listener's guard: 401 (with `WWW-Authenticate: Bearer`)
/// unless the request's `Authorization` is the bearer token.
async fn bearer(State(token): State<Arc<Token>>, req: Request, next: Next) -> Response {
    let admitted = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| token.admits(v.as_bytes()));
    if admitted {
        return next.run(req).await;
    }
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this admin listener needs Authorization: Bearer <ORCH_ADMIN_TOKEN>",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"orch admin\""),
    );
    r
}

/// Why a request's `Transfer-Encoding` is refused, if it is: every value
/// of every `Transfer-Encoding` line together must be the one coding
/// `chunked` (RFC 9112 §6.1: a server that does not decode other codings
/// answers 400; a repeated `chunked` is not allowed either, §7).
fn transfer_coding_refused(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if values.is_empty() {
        return None;
    }
    let codings: Vec<&[u8]> = values
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .collect();
    if codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked") {
        return None;
    }
    let shown: Vec<String> = values
        .iter()
        .map(|v| clean(&String::from_utf8_lossy(v)))
        .collect();
    Some(format!(
        "Transfer-Encoding {:?}: only \"chunked\" alone is accepted (RFC 9112 section 6.1)",
        shown.join(", ")
    ))
}

/// Why the log line says what it says (kept in the response's extensions).
#[derive(Clone)]
struct Note {
    outcome: &'static str,
    detail: String,
}

/// A JSON answer `{"status", "detail"}` (+ `inbox_id`).
fn reply(code: StatusCode, status: &'static str, detail: impl Into<String>) -> Response {
    let detail = detail.into();
    let body = json!({"status": status, "detail": detail});
    with_body(code, body, status, detail)
}

fn stored(code: StatusCode, status: &'static str, inbox_id: i64, detail: &str) -> Response {
    let body = json!({"status": status, "detail": detail, "inbox_id": inbox_id});
    with_body(code, body, status, detail.to_string())
}

fn with_body(code: StatusCode, body: Value, outcome: &'static str, detail: String) -> Response {
    let mut r = (code, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.extensions_mut().insert(Note { outcome, detail });
    r
}

/// `GET /healthz`: `{"status": "ok", "detail", "version", "commit",
/// "schema"}` — the binary's version, the git commit it was built from
/// ([`crate::build_info`]) and the schema version it expects
/// (`orch staging-check` C1–C3 read them).
async fn health() -> Response {
    let detail = "orch serve is running";
    let body = json!({
        "status": "ok",
        "detail": detail,
        "version": crate::build_info::VERSION,
        "commit": crate::build_info::commit(),
        "schema": crate::db::schema_version(),
    });
    with_body(StatusCode::OK, body, "ok", detail.to_string())
}

/// `GET /metrics`: Prometheus text, built on the blocking pool.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let build = app.admin.metrics.clone();
    let text = match built(move || build(), "building the metrics failed").await {
        Ok(text) => text + &app.answers_text(),
        Err(r) => return r,
    };
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r.extensions_mut().insert(Note {
        outcome: "ok",
        detail: String::new(),
    });
    r
}

async fn queue(State(app): State<Arc<App>>) -> Response {
    let build = app.admin.queue.clone();
    match built(move || build(), "building the queue document failed").await {
        Ok(doc) => with_body(StatusCode::OK, doc, "ok", String::new()),
        Err(r) => r,
    }
}

/// Runs an admin document's `build` on the blocking pool. Its error is a
/// 503 `unavailable` reply with the error's text; its panic one with
/// `failed` as the detail.
async fn built<T: Send + 'static>(
    build: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    failed: &'static str,
) -> Result<T, Response> {
    let unavailable =
        |detail: String| reply(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail);
    match tokio::task::spawn_blocking(build).await {
        Ok(Ok(doc)) => Ok(doc),
        Ok(Err(e)) => Err(unavailable(format!("{e:#}"))),
        Err(_) => Err(unavailable(failed.to_string())),
    }
}

async fn not_found(req: Request) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", clean(req.uri().path())),
    )
}

/// The headers as `(name, value)` text; [`finish`] has already refused
/// values that are not UTF-8.
fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Whether a body-read error is the body limit's.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

async fn hook(app: &App, source: Source, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let e: axum::Error = e;
            return if is_length_limit(&e) {
                reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("body exceeds the {MAX_BODY_BYTES}-byte limit"),
                )
            } else {
                reply(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("reading the body: {e}"),
                )
            };
        }
    };
    let headers = header_pairs(&parts.headers);
    if let Err(e) = webhook::verify_signature(source, app.secret(source), &headers, &body) {
        return reply(StatusCode::UNAUTHORIZED, "bad_signature", e);
    }
    let (delivery_id, event) = match webhook::delivery_meta(source, &headers) {
        Ok(meta) => meta,
        Err(e) => return reply(StatusCode::BAD_REQUEST, "bad_request", e),
    };
    // The rule of `webhook::store`, checked here so the writer only
    // stores. After the signature: an unauthenticated sender spends no
    // parsing and learns nothing about the parser.
    if let Err(r) = webhook::check_json(&body) {
        return reply(StatusCode::BAD_REQUEST, "bad_json", r.to_string());
    }
    let body_sha256 = webhook::body_sha256(&body);
    let delivery = NewDelivery {
        source: source.as_str().to_string(),
        dedupe: source.dedupe(),
        event,
        delivery_id,
        headers: webhook::stored_headers(&headers),
        body: body.to_vec(),
    };
    match app.writer.store(delivery, body_sha256).await {
        Ok(Recorded::Stored(id)) => stored(StatusCode::ACCEPTED, "accepted", id, "stored"),
        Ok(Recorded::Duplicate(id)) => stored(
            StatusCode::OK,
            "duplicate",
            id,
            "already received; nothing stored",
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unavailable; retry later",
        ),
    }
}

/// The outermost layer; see the module documentation.
async fn finish(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = clean(req.uri().path());
    let delivery = webhook::SOURCES
        .iter()
        .find_map(|s| req.headers().get(s.delivery_header()))
        .map(|v| clean(&String::from_utf8_lossy(v.as_bytes())))
        .unwrap_or_else(|| "-".into());
    let non_utf8 = req
        .headers()
        .iter()
        .find(|(_, v)| std::str::from_utf8(v.as_bytes()).is_err())
        .map(|(n, _)| n.as_str().to_string());
    let refuse = req.extensions().get::<Refuse>().copied();
    let coding = transfer_coding_refused(req.headers());
    let resp = if let Some(why) = refuse {
        let detail = match why {
            Refuse::SmugglingShape => {
                "Content-Length together with Transfer-Encoding (RFC 9112 section 6.1)"
            }
            Refuse::FramingLost => {
                tracing::error!(target: "webhook", "the framing watch lost step with hyper; refusing the request");
                "the request's framing could not be followed"
            }
        };
        close(reply(StatusCode::BAD_REQUEST, "bad_request", detail))
    } else if let Some(detail) = coding {
        close(reply(StatusCode::BAD_REQUEST, "bad_request", detail))
    } else if let Some(name) = non_utf8 {
        reply(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("header {name} is not UTF-8"),
        )
    } else {
        next.run(req).await
    };
    let resp = shape(resp, &path, &app);
    log(&method, &path, &resp, &delivery, started);
    let outcome = resp.extensions().get::<Note>().map_or("-", |n| n.outcome);
    app.count_answer(&path, outcome);
    resp
}

/// Asks hyper to close the connection after this answer.
fn close(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Gives an answer made without a JSON body (by a layer or axum's
/// routing) the JSON shape.
fn shape(resp: Response, path: &str, app: &App) -> Response {
    // A handler's own answer (JSON, or the metrics' text) carries its Note.
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || resp.extensions().get::<Note>().is_some() {
        return resp;
    }
    let code = resp.status();
    let mut shaped = match code {
        StatusCode::METHOD_NOT_ALLOWED => {
            // axum adds the `Allow` header outside this layer.
            let allow = match path {
                "/webhooks/plane" | "/webhooks/gitea" => "POST",
                _ => "GET, HEAD",
            };
            reply(
                code,
                "method_not_allowed",
                format!("this path accepts {allow}"),
            )
        }
        StatusCode::REQUEST_TIMEOUT => close(reply(
            code,
            "timeout",
            format!(
                "the request did not arrive within {} ms",
                app.read_timeout.as_millis()
            ),
        )),
        StatusCode::PAYLOAD_TOO_LARGE => close(reply(
            code,
            "too_large",
            format!("body exceeds the {MAX_BODY_BYTES}-byte limit"),
        )),
        StatusCode::INTERNAL_SERVER_ERROR => reply(code, "internal_error", "the handler failed"),
        _ => {
            let status = if code.is_success() { "ok" } else { "error" };
            reply(code, status, code.canonical_reason().unwrap_or(""))
        }
    };
    for (name, value) in resp.headers() {
        if !shaped.headers().contains_key(name) && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// Printable ASCII only, at most 200 characters (request data in logs).
fn clean(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn log(method: &Method, path: &str, resp: &Response, delivery: &str, started: Instant) {
    let status = resp.status().as_u16();
    let (outcome, detail) = resp
        .extensions()
        .get::<Note>()
        .map(|n| (n.outcome, clean(&n.detail)))
        .unwrap_or(("-", String::new()));
    let method = method.as_str();
    let ms = started.elapsed().as_millis() as u64;
    macro_rules! line {
        ($lvl:ident) => {
            tracing::$lvl!(target: "webhook", method, path = %path, status, outcome, delivery = %delivery, detail = %detail, ms, "request")
        };
    }
    match status {
        500.. => line!(error),
        400..=499 => line!(warn),
        _ => line!(info),
    }
}
