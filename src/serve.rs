//! `orch serve`: the webhook shim (DESIGN §2, §3 `inbox`, §11 item 7).
//!
//! It verifies, stores and answers — nothing else. Routes:
//! `POST /webhooks/plane`, `POST /webhooks/gitea`, `GET /healthz`,
//! `GET /queue` (the `status --json` document, built by the caller's
//! closure). Every answer is JSON `{"status", "detail"}` (+ `inbox_id`).
//! A 202 is sent only after the inbox row is committed.
//!
//! Threads: tiny_http parses request lines and headers on its own
//! per-connection threads and queues complete requests; `threads` workers
//! take them from the queue, each with its own [`Db`] (a SQLite connection
//! is not `Sync`). A client that is slow *before* its headers are complete
//! therefore never reaches a worker. (tiny_http also reads bodies of at most
//! 1024 bytes on its connection thread before queueing the request; such a
//! client never reaches a worker either.)
//!
//! Read deadline: tiny_http has no per-request read deadline and does not
//! expose the socket, so the body is read by a short-lived reader thread
//! that owns the request while it reads; the worker waits for it at most
//! `read_timeout` (see [`read_body`]). When the deadline passes the worker
//! abandons the request and, on Linux, shuts down the read side of that
//! connection's socket so the reader's blocked `read` returns at once; the
//! reader then answers 408 itself. Elsewhere the reader answers 408 when the
//! client sends more, or ends when it disconnects. Either way the worker is
//! free at the deadline.
//!
//! A response to a request whose body was not read to the end (413, 404 or
//! 405 with a body) is sent from a detached thread: tiny_http reads and
//! discards the rest of the body when the request is dropped, and that must
//! not occupy a worker.

use std::io::Cursor;
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response};

use crate::db::{Db, Recorded};
use crate::webhook::{self, Rejection, Source, MAX_BODY_BYTES};

/// Builds the `GET /queue` document (the caller passes the `orch status
/// --json` builder). Called concurrently from the worker threads.
pub type QueueFn = Arc<dyn Fn() -> anyhow::Result<Value> + Send + Sync>;

/// How to run the shim.
#[derive(Clone)]
pub struct ServeOptions {
    /// Listen address, e.g. `127.0.0.1:8500` (`:0` picks a free port).
    pub bind: String,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// A request body must arrive within this time after the headers.
    pub read_timeout: Duration,
    /// HMAC secret of the Plane webhook; `None` refuses Plane deliveries.
    pub plane_secret: Option<String>,
    /// HMAC secret of the Gitea webhook; `None` refuses Gitea deliveries.
    pub gitea_secret: Option<String>,
    /// The database file.
    pub db_path: PathBuf,
    /// SQLite busy timeout of each worker's connection.
    pub busy_timeout_ms: u64,
}

impl ServeOptions {
    /// The options from the settings (`ORCH_BIND`, `ORCH_SERVE_THREADS`,
    /// `ORCH_SERVE_READ_TIMEOUT_MS`, the webhook secrets, the database).
    pub fn from_settings(s: &crate::config::Settings) -> ServeOptions {
        ServeOptions {
            bind: s.bind.clone(),
            threads: s.serve_threads,
            read_timeout: Duration::from_millis(s.serve_read_timeout_ms),
            plane_secret: s
                .plane_webhook_secret
                .as_ref()
                .map(|x| x.expose().to_string()),
            gitea_secret: s
                .gitea_webhook_secret
                .as_ref()
                .map(|x| x.expose().to_string()),
            db_path: s.db_path.clone(),
            busy_timeout_ms: s.busy_timeout_ms,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "[redacted]");
        f.debug_struct("ServeOptions")
            .field("bind", &self.bind)
            .field("threads", &self.threads)
            .field("read_timeout", &self.read_timeout)
            .field("plane_secret", &redact(&self.plane_secret))
            .field("gitea_secret", &redact(&self.gitea_secret))
            .field("db_path", &self.db_path)
            .field("busy_timeout_ms", &self.busy_timeout_ms)
            .finish()
    }
}

/// A running shim. Dropping it is the same as [`Server::shutdown`].
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Set by a worker when tiny_http's accept loop died (it then accepts
    /// nothing more); [`run_forever`] exits with it.
    fatal: Arc<Mutex<Option<String>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// The bound address (the real port when `bind` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests, lets the workers finish the requests already
    /// queued (each is bounded by the read deadline and the busy timeout),
    /// joins them and closes the listening socket.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // One unblock marker per worker; each worker returns from `recv`
        // once for it (after any requests queued before it).
        for _ in &self.workers {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What the workers share.
struct Ctx {
    plane_secret: Option<String>,
    gitea_secret: Option<String>,
    read_timeout: Duration,
    /// The listening port (identifies our side of a connection).
    port: u16,
    queue: QueueFn,
}

impl Ctx {
    fn secret(&self, source: Source) -> &str {
        match source {
            Source::Plane => self.plane_secret.as_deref(),
            Source::Gitea => self.gitea_secret.as_deref(),
        }
        .unwrap_or("")
    }
}

/// Binds `opts.bind`, opens one database connection per worker (applying
/// migrations) and starts the workers.
///
/// Errors: an unusable bind address, a database that cannot be opened,
/// `threads == 0` or a zero `read_timeout`.
pub fn start(opts: ServeOptions, queue: QueueFn) -> anyhow::Result<Server> {
    anyhow::ensure!(opts.threads >= 1, "serve: threads must be at least 1");
    anyhow::ensure!(
        !opts.read_timeout.is_zero(),
        "serve: the read timeout must be positive"
    );
    for (source, secret) in [
        (Source::Plane, &opts.plane_secret),
        (Source::Gitea, &opts.gitea_secret),
    ] {
        if secret.as_deref().is_none_or(|s| s.trim().is_empty()) {
            tracing::warn!(
                target: "webhook",
                "no webhook secret configured for {source}; set {} — its deliveries will be refused (401)",
                source.secret_setting()
            );
        }
    }
    let mut dbs = Vec::with_capacity(opts.threads);
    for _ in 0..opts.threads {
        dbs.push(Db::open(&opts.db_path, opts.busy_timeout_ms)?);
    }
    let listener =
        TcpListener::bind(&opts.bind).with_context(|| format!("binding {}", opts.bind))?;
    let addr = listener.local_addr()?;
    let http = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("starting the HTTP server on {addr}: {e}"))?;
    let mut server = Server {
        http: Arc::new(http),
        addr,
        stop: Arc::new(AtomicBool::new(false)),
        fatal: Arc::new(Mutex::new(None)),
        workers: Vec::with_capacity(opts.threads),
    };
    let ctx = Arc::new(Ctx {
        plane_secret: opts.plane_secret,
        gitea_secret: opts.gitea_secret,
        read_timeout: opts.read_timeout,
        port: addr.port(),
        queue,
    });
    for (i, db) in dbs.into_iter().enumerate() {
        let (http, ctx) = (server.http.clone(), ctx.clone());
        let (stop, fatal) = (server.stop.clone(), server.fatal.clone());
        let handle = thread::Builder::new()
            .name(format!("orch-serve-{i}"))
            .spawn(move || worker(&http, &db, &ctx, &stop, &fatal))
            .context("starting a serve worker thread")?; // `server` drops: joins the others
        server.workers.push(handle);
    }
    Ok(server)
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if SIGNALLED.swap(true, Ordering::SeqCst) {
        // Second signal while shutting down: die the default way.
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

fn install_signal_handlers() -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches an
        // atomic (and, on a second signal, async-signal-safe calls).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully (queued
/// requests are answered, workers joined) and returns `Ok`. A second signal
/// during shutdown kills the process. The handlers only set a flag, which
/// the calling thread polls every 100 ms. Returns `Err` if tiny_http's
/// accept loop dies (e.g. out of file descriptors) so the service manager
/// restarts orch.
pub fn run_forever(opts: ServeOptions, queue: QueueFn) -> anyhow::Result<()> {
    let threads = opts.threads;
    let server = start(opts, queue)?;
    install_signal_handlers()?; // on error `server` drops: workers joined
    tracing::info!(target: "webhook", addr = %server.addr(), threads, "orch serve listening");
    loop {
        if SIGNALLED.load(Ordering::SeqCst) {
            tracing::info!(target: "webhook", "signal received; shutting down");
            server.shutdown();
            return Ok(());
        }
        if let Some(e) = server.fatal() {
            server.shutdown();
            anyhow::bail!("the HTTP listener failed: {e}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn worker(
    http: &tiny_http::Server,
    db: &Db,
    ctx: &Ctx,
    stop: &AtomicBool,
    fatal: &Mutex<Option<String>>,
) {
    loop {
        match http.recv() {
            Ok(req) => {
                // A bug must not shrink the pool; the request, dropped while
                // unwinding, is answered 500 by tiny_http.
                if catch_unwind(AssertUnwindSafe(|| handle(ctx, db, req))).is_err() {
                    tracing::error!(target: "webhook", "request handler panicked");
                }
            }
            Err(e) => {
                if !stop.load(Ordering::SeqCst) {
                    tracing::error!(target: "webhook", error = %e, "HTTP listener failed");
                    *lock(fatal) = Some(e.to_string());
                }
                return;
            }
        }
    }
}

// ------------------------------------------------------------- requests

enum Route {
    Hook(Source),
    Health,
    Queue,
    NotFound,
}

fn route(path: &str) -> Route {
    match path {
        "/webhooks/plane" => Route::Hook(Source::Plane),
        "/webhooks/gitea" => Route::Hook(Source::Gitea),
        "/healthz" => Route::Health,
        "/queue" => Route::Queue,
        _ => Route::NotFound,
    }
}

/// An answer, and what the log line says about it.
struct Reply {
    code: u16,
    body: Value,
    allow: Option<&'static str>,
    outcome: &'static str,
}

impl Reply {
    fn new(code: u16, status: &'static str, detail: impl Into<String>) -> Reply {
        Reply {
            code,
            body: json!({"status": status, "detail": detail.into()}),
            allow: None,
            outcome: status,
        }
    }

    fn stored(code: u16, status: &'static str, inbox_id: i64, detail: &str) -> Reply {
        Reply {
            code,
            body: json!({"status": status, "detail": detail, "inbox_id": inbox_id}),
            allow: None,
            outcome: status,
        }
    }

    fn detail(&self) -> &str {
        self.body
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn response(&self) -> Response<Cursor<Vec<u8>>> {
        let mut r =
            Response::from_data(self.body.to_string().into_bytes()).with_status_code(self.code);
        if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
            r.add_header(h);
        }
        if let Some(allow) = self.allow {
            if let Ok(h) = Header::from_bytes("Allow", allow) {
                r.add_header(h);
            }
        }
        r
    }
}

/// Who sends the answer.
enum Finish {
    /// The worker, now (the body was read to the end or there is none).
    Inline(Request),
    /// A detached thread (unread body: tiny_http drains it on drop).
    Detached(Request),
    /// The body reader thread, which still owns the request.
    Reader,
}

fn handle(ctx: &Ctx, db: &Db, req: Request) {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let mut delivery = String::from("-");
    let (reply, finish) = match (route(&path), &method) {
        (Route::Hook(source), Method::Post) => {
            let name = match source {
                Source::Plane => "X-Plane-Delivery",
                Source::Gitea => "X-Gitea-Delivery",
            };
            if let Some(h) = req.headers().iter().find(|h| h.field.equiv(name)) {
                delivery = clean(h.value.as_str());
            }
            hook(ctx, db, source, req)
        }
        (Route::Health, Method::Get | Method::Head) => (health(), finish_for(req)),
        (Route::Queue, Method::Get | Method::Head) => {
            let doc = catch_unwind(AssertUnwindSafe(|| (ctx.queue)()));
            let reply = match doc {
                Ok(Ok(v)) => Reply {
                    code: 200,
                    body: v,
                    allow: None,
                    outcome: "ok",
                },
                Ok(Err(e)) => Reply::new(503, "unavailable", format!("{e:#}")),
                Err(_) => Reply::new(503, "unavailable", "building the queue document failed"),
            };
            (reply, finish_for(req))
        }
        (Route::Hook(_), _) => (not_allowed("POST"), finish_for(req)),
        (Route::Health | Route::Queue, _) => (not_allowed("GET, HEAD"), finish_for(req)),
        (Route::NotFound, _) => (
            Reply::new(404, "not_found", format!("no route for {}", clean(&path))),
            finish_for(req),
        ),
    };
    log(&method, &path, &reply, &delivery, started);
    let response = reply.response();
    match finish {
        Finish::Inline(req) => {
            if let Err(e) = req.respond(response) {
                tracing::debug!(target: "webhook", error = %e, "writing the response failed");
            }
        }
        Finish::Detached(req) => respond_detached(req, response),
        Finish::Reader => {}
    }
}

/// `GET /healthz`: `{"status": "ok", "detail", "version", "commit",
/// "schema"}` — the binary's version, the git commit it was built from
/// ([`crate::build_info`]) and the schema version it expects
/// (`orch staging-check` C1–C3 read them).
fn health() -> Reply {
    let mut r = Reply::new(200, "ok", "orch serve is running");
    r.body["version"] = json!(crate::build_info::VERSION);
    r.body["commit"] = json!(crate::build_info::commit());
    r.body["schema"] = json!(crate::db::schema_version());
    r
}

fn not_allowed(allow: &'static str) -> Reply {
    let mut r = Reply::new(
        405,
        "method_not_allowed",
        format!("this path accepts {allow}"),
    );
    r.allow = Some(allow);
    r
}

/// `Inline` unless the request (which we did not read) carries a body.
fn finish_for(req: Request) -> Finish {
    let has_body = req.body_length().is_some_and(|n| n > 0)
        || req
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"));
    if has_body {
        Finish::Detached(req)
    } else {
        Finish::Inline(req)
    }
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

fn log(method: &Method, path: &str, reply: &Reply, delivery: &str, started: Instant) {
    let (method, path, status, outcome) = (method.as_str(), clean(path), reply.code, reply.outcome);
    let detail = clean(reply.detail());
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

/// Answers `req` from a new thread, so that tiny_http's draining of an
/// unread body happens there; inline if no thread can be started.
fn respond_detached(req: Request, response: Response<Cursor<Vec<u8>>>) {
    let slot = Arc::new(Mutex::new(Some((req, response))));
    let theirs = slot.clone();
    let spawned = thread::Builder::new()
        .name("orch-serve-drain".into())
        .spawn(move || {
            if let Some((req, response)) = lock(&theirs).take() {
                let _ = req.respond(response);
            }
        });
    if spawned.is_err() {
        if let Some((req, response)) = lock(&slot).take() {
            let _ = req.respond(response);
        }
    }
}

fn hook(ctx: &Ctx, db: &Db, source: Source, req: Request) -> (Reply, Finish) {
    if let Some(n) = req.body_length().filter(|&n| n > MAX_BODY_BYTES) {
        let detail = format!("Content-Length {n} exceeds the {MAX_BODY_BYTES}-byte limit");
        return (Reply::new(413, "too_large", detail), Finish::Detached(req));
    }
    let (req, body) = match read_body(req, ctx.read_timeout, ctx.port) {
        BodyRead::Done(req, body) => (req, body),
        BodyRead::Failed(req, err) => {
            let reply = match err {
                BodyError::TooLarge => Reply::new(
                    413,
                    "too_large",
                    format!("body exceeds the {MAX_BODY_BYTES}-byte limit"),
                ),
                BodyError::Timeout => timeout_reply(ctx.read_timeout),
                BodyError::Incomplete { got, want } => Reply::new(
                    400,
                    "incomplete_body",
                    format!("received {got} of {want} body bytes"),
                ),
                BodyError::Io(e) => {
                    Reply::new(400, "bad_request", format!("reading the body: {e}"))
                }
            };
            return (reply, Finish::Detached(req));
        }
        BodyRead::Abandoned => return (timeout_reply(ctx.read_timeout), Finish::Reader),
        BodyRead::NoThread(req, e) => {
            let reply = Reply::new(503, "unavailable", format!("cannot start a reader: {e}"));
            return (reply, Finish::Detached(req));
        }
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_string(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let finish = Finish::Inline(req);
    if let Err(e) = webhook::verify_signature(source, ctx.secret(source), &headers, &body) {
        return (Reply::new(401, "bad_signature", e), finish);
    }
    let (delivery_id, event) = match webhook::delivery_meta(source, &headers) {
        Ok(meta) => meta,
        Err(e) => return (Reply::new(400, "bad_request", e), finish),
    };
    let now = crate::clock::now_ms();
    let reply = match webhook::store(db, source, &event, &delivery_id, &headers, &body, now) {
        Ok(Recorded::Stored(id)) => Reply::stored(202, "accepted", id, "stored"),
        Ok(Recorded::Duplicate(id)) => {
            Reply::stored(200, "duplicate", id, "already received; nothing stored")
        }
        Err(e) => match e.downcast_ref::<Rejection>() {
            Some(r @ Rejection::BadJson(_)) => Reply::new(400, "bad_json", r.to_string()),
            Some(r @ Rejection::TooLarge(_)) => Reply::new(413, "too_large", r.to_string()),
            None => {
                tracing::error!(target: "webhook", error = %format!("{e:#}"), "storing a delivery failed");
                Reply::new(
                    503,
                    "unavailable",
                    "the database is unavailable; retry later",
                )
            }
        },
    };
    (reply, finish)
}

fn timeout_reply(read_timeout: Duration) -> Reply {
    Reply::new(
        408,
        "timeout",
        format!(
            "the body did not arrive within {} ms",
            read_timeout.as_millis()
        ),
    )
}

// ------------------------------------------------------------ body read

enum BodyError {
    TooLarge,
    Timeout,
    Incomplete { got: usize, want: usize },
    Io(String),
}

enum BodyRead {
    /// The whole body; the worker has the request back.
    Done(Request, Vec<u8>),
    /// The reader finished (in time) with an error; the body is not
    /// read to the end.
    Failed(Request, BodyError),
    /// The deadline passed first; the reader thread owns the request and
    /// answers 408.
    Abandoned,
    /// No reader thread could be started.
    NoThread(Request, String),
}

/// The hand-over between a worker and its body reader thread. Whoever
/// changes the state holds the lock, so "the reader finished" and "the
/// worker gave up" cannot both happen: exactly one of them answers.
enum Slot {
    /// Not picked up by the reader yet.
    ToRead(Request),
    Reading,
    Finished(Request, Result<Vec<u8>, BodyError>),
    Abandoned,
}

struct Handoff {
    slot: Mutex<Slot>,
    done: Condvar,
}

/// Reads the body of `req` (at most [`MAX_BODY_BYTES`] + 1 bytes, chunked
/// too) on a reader thread and waits for it until `timeout` has passed.
/// `port` is the listening port (to find the connection's socket).
fn read_body(req: Request, timeout: Duration, port: u16) -> BodyRead {
    let deadline = Instant::now() + timeout;
    let peer = req.remote_addr().copied();
    let handoff = Arc::new(Handoff {
        slot: Mutex::new(Slot::ToRead(req)),
        done: Condvar::new(),
    });
    let theirs = handoff.clone();
    let spawned = thread::Builder::new()
        .name("orch-serve-body".into())
        .spawn(move || reader(&theirs, deadline, timeout));
    let mut slot = lock(&handoff.slot);
    if let Err(e) = spawned {
        return match std::mem::replace(&mut *slot, Slot::Abandoned) {
            Slot::ToRead(req) => BodyRead::NoThread(req, e.to_string()),
            _ => BodyRead::Abandoned,
        };
    }
    loop {
        match std::mem::replace(&mut *slot, Slot::Abandoned) {
            Slot::Finished(req, Ok(body)) => return BodyRead::Done(req, body),
            Slot::Finished(req, Err(e)) => return BodyRead::Failed(req, e),
            pending => {
                let now = Instant::now();
                if now >= deadline {
                    return match pending {
                        // The reader never started: answer ourselves.
                        Slot::ToRead(req) => BodyRead::Failed(req, BodyError::Timeout),
                        // `Abandoned` is now in the slot: the reader answers.
                        _ => {
                            drop(slot);
                            if let Some(peer) = peer {
                                unstick_reader(port, peer);
                            }
                            BodyRead::Abandoned
                        }
                    };
                }
                *slot = pending;
                slot = match handoff.done.wait_timeout(slot, deadline - now) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
        }
    }
}

/// The reader thread: takes the request, reads, and either hands it back or
/// — when the worker has given up — answers 408 itself.
fn reader(handoff: &Handoff, deadline: Instant, timeout: Duration) {
    let mut req = match std::mem::replace(&mut *lock(&handoff.slot), Slot::Reading) {
        Slot::ToRead(req) => req,
        _ => return, // the worker took it back
    };
    let result = read_capped(&mut req, deadline);
    let mut slot = lock(&handoff.slot);
    if let Slot::Abandoned = *slot {
        drop(slot);
        let _ = req.respond(timeout_reply(timeout).response());
        return;
    }
    *slot = Slot::Finished(req, result);
    handoff.done.notify_all();
}

/// Reads the body until its end, the cap, an error or the deadline (checked
/// between reads; a blocked read is ended by [`unstick_reader`]).
fn read_capped(req: &mut Request, deadline: Instant) -> Result<Vec<u8>, BodyError> {
    let want = req.body_length();
    let reader = req.as_reader(); // sends `100 Continue` when asked for
    let mut body = Vec::with_capacity(want.unwrap_or(0).min(MAX_BODY_BYTES + 1));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if want == Some(body.len()) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(BodyError::Timeout);
        }
        let room = (MAX_BODY_BYTES + 1 - body.len()).min(buf.len());
        match reader.read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BodyError::Io(e.to_string())),
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
    }
    match want {
        Some(want) if body.len() < want => Err(BodyError::Incomplete {
            got: body.len(),
            want,
        }),
        _ => Ok(body),
    }
}

/// Ends a reader thread's blocked `read` on the connection from `peer`:
/// finds this process's socket on local `port` whose peer is `peer` (a TCP
/// connection is identified by its address pair) and shuts down its read
/// side, so `read`
/// returns end-of-file at once; the write side stays open for the 408.
/// Linux only (`/proc/self/fd`); elsewhere the reader ends when the client
/// sends more or disconnects.
#[cfg(target_os = "linux")]
fn unstick_reader(port: u16, peer: SocketAddr) {
    use std::os::fd::RawFd;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        if sock_addr(fd, true) == Some(peer) && sock_addr(fd, false).map(|a| a.port()) == Some(port)
        {
            // SAFETY: shutdown(2) on a descriptor has no memory effects; at
            // worst (the descriptor was closed and reused meanwhile by a
            // connection from the same peer address) another connection
            // from that same client stops reading.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            return;
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn unstick_reader(_port: u16, _peer: SocketAddr) {}

/// The peer (or local) address of socket `fd`, if it is a connected
/// TCP/IP socket.
#[cfg(target_os = "linux")]
fn sock_addr(fd: std::os::fd::RawFd, peer: bool) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    // SAFETY: getpeername/getsockname write at most `len` bytes into `ss`, which is a
    // sockaddr_storage (large enough for any address); the casts follow
    // the family it reports.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let addr = &mut ss as *mut _ as *mut libc::sockaddr;
        let rc = if peer {
            libc::getpeername(fd, addr, &mut len)
        } else {
            libc::getsockname(fd, addr, &mut len)
        };
        if rc != 0 {
            return None;
        }
        match ss.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(&ss as *const _ as *const libc::sockaddr_in);
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(&ss as *const _ as *const libc::sockaddr_in6);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const SECRET: &str = "fixture-secret";
    const PLANE_BODY: &[u8] =
        include_bytes!("../tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json");
    const PLANE_HEADERS: &str =
        include_str!("../tests/fixtures/plane/webhooks/issue-updated-state-in-progress.headers");
    const GITEA_BODY: &[u8] =
        include_bytes!("../tests/fixtures/gitea/webhooks/status-success.json");
    const GITEA_HEADERS: &str =
        include_str!("../tests/fixtures/gitea/webhooks/status-success.headers");

    struct Fixture {
        server: Option<Server>,
        db: Db,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn addr(&self) -> SocketAddr {
            self.server.as_ref().unwrap().addr()
        }

        fn rows(&self) -> i64 {
            self.db
                .conn()
                .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
                .unwrap()
        }
    }

    fn serve(threads: usize, read_timeout_ms: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("orch.db");
        let opts = ServeOptions {
            bind: "127.0.0.1:0".into(),
            threads,
            read_timeout: Duration::from_millis(read_timeout_ms),
            plane_secret: Some(SECRET.into()),
            gitea_secret: Some(SECRET.into()),
            db_path: db_path.clone(),
            busy_timeout_ms: 5_000,
        };
        let queue: QueueFn = Arc::new(|| Ok(json!({"queue": {"queued": 3}, "ok": true})));
        let server = start(opts, queue).unwrap();
        let db = Db::open(&db_path, 5_000).unwrap();
        Fixture {
            server: Some(server),
            db,
            _dir: dir,
        }
    }

    struct Answer {
        code: u16,
        head: String,
        body: Value,
    }

    /// Sends `raw` on a new connection and reads the answer until the
    /// server closes the connection (every request says `Connection:
    /// close`), with a 10 s safety limit.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        parse_answer(&out)
    }

    fn parse_answer(out: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(out).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        Answer {
            code,
            head: head.to_string(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    fn request(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
        let mut raw =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (n, v) in headers {
            let l = n.to_ascii_lowercase();
            if l != "host" && l != "connection" && l != "content-length" {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(body);
        raw
    }

    fn post(f: &Fixture, path: &str, headers: &[(String, String)], body: &[u8]) -> Answer {
        exchange(f.addr(), &request("POST", path, headers, body))
    }

    fn get(f: &Fixture, path: &str) -> Answer {
        exchange(f.addr(), &request("GET", path, &[], b""))
    }

    fn with_header(h: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
        let mut h: Vec<_> = h
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .cloned()
            .collect();
        h.push((name.to_string(), value.to_string()));
        h
    }

    fn sign(body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    use hmac::{Hmac, Mac};

    #[test]
    fn plane_delivery_is_stored_once_and_retries_are_duplicates() {
        let f = serve(2, 2_000);
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        let a = post(&f, "/webhooks/plane", &h, PLANE_BODY);
        assert_eq!(a.code, 202, "{:?}", a.body);
        assert_eq!(a.body["status"], "accepted");
        let id = a.body["inbox_id"].as_i64().unwrap();
        assert!(a
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        assert_eq!(f.rows(), 1);

        let again = post(&f, "/webhooks/plane", &h, PLANE_BODY);
        assert_eq!(
            (again.code, again.body["status"].as_str()),
            (200, Some("duplicate"))
        );
        assert_eq!(again.body["inbox_id"], id);

        // Plane's retry: same body, new delivery id.
        let retry = with_header(
            &h,
            "X-Plane-Delivery",
            "0b1e7f7e-0000-4000-8000-000000000001",
        );
        let r = post(&f, "/webhooks/plane", &retry, PLANE_BODY);
        assert_eq!(
            (r.code, r.body["status"].as_str()),
            (200, Some("duplicate"))
        );
        assert_eq!(r.body["inbox_id"], id);
        assert_eq!(f.rows(), 1);

        let (source, event, delivery, headers): (String, String, String, String) =
            f.db.conn()
                .query_row(
                    "SELECT source, event, delivery_id, headers FROM inbox",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .unwrap();
        assert_eq!(
            (source.as_str(), event.as_str(), delivery.as_str()),
            ("plane", "issue", "6ab712c5-df1f-4e11-b965-123cce86db73")
        );
        assert!(!headers.to_ascii_lowercase().contains("signature"));
    }

    #[test]
    fn gitea_status_is_accepted() {
        let f = serve(2, 2_000);
        let h = webhook::parse_header_lines(GITEA_HEADERS);
        let a = post(&f, "/webhooks/gitea", &h, GITEA_BODY);
        assert_eq!(a.code, 202, "{:?}", a.body);
        assert_eq!(f.rows(), 1);
        // The same body under the wrong source is refused (Plane signs differently).
        let wrong = post(&f, "/webhooks/plane", &h, GITEA_BODY);
        assert_eq!(wrong.code, 401);
        assert_eq!(f.rows(), 1);
    }

    #[test]
    fn rejected_requests_store_nothing() {
        let f = serve(2, 2_000);
        let h = webhook::parse_header_lines(PLANE_HEADERS);

        let bad = with_header(&h, "X-Plane-Signature", &"0".repeat(64));
        let a = post(&f, "/webhooks/plane", &bad, PLANE_BODY);
        assert_eq!(
            (a.code, a.body["status"].as_str()),
            (401, Some("bad_signature"))
        );

        let mut tampered = PLANE_BODY.to_vec();
        tampered[20] ^= 1;
        assert_eq!(post(&f, "/webhooks/plane", &h, &tampered).code, 401);

        let unsigned: Vec<_> = h
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("X-Plane-Signature"))
            .cloned()
            .collect();
        let a = post(&f, "/webhooks/plane", &unsigned, PLANE_BODY);
        assert_eq!(a.code, 401);
        assert!(a.body["detail"]
            .as_str()
            .unwrap()
            .contains("X-Plane-Signature"));

        // Signed, but not JSON.
        let junk = b"this is not json".to_vec();
        let signed = with_header(&h, "X-Plane-Signature", &sign(&junk));
        let a = post(&f, "/webhooks/plane", &signed, &junk);
        assert_eq!((a.code, a.body["status"].as_str()), (400, Some("bad_json")));

        // Signed JSON without a delivery id.
        let body = br#"{"event":"issue"}"#.to_vec();
        let no_id: Vec<_> = with_header(&h, "X-Plane-Signature", &sign(&body))
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("X-Plane-Delivery"))
            .collect();
        let a = post(&f, "/webhooks/plane", &no_id, &body);
        assert_eq!(a.code, 400, "{:?}", a.body);

        // Over 1 MiB, declared.
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let signed = with_header(&h, "X-Plane-Signature", &sign(&big));
        let a = post(&f, "/webhooks/plane", &signed, &big);
        assert_eq!(
            (a.code, a.body["status"].as_str()),
            (413, Some("too_large"))
        );

        assert_eq!(f.rows(), 0);
    }

    #[test]
    fn chunked_body_over_the_cap_is_refused_and_small_chunked_body_works() {
        let f = serve(1, 5_000);
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        let chunked = |body: &[u8]| -> Vec<u8> {
            let mut raw = b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n".to_vec();
            for (n, v) in with_header(&h, "X-Plane-Signature", &sign(body)) {
                if !n.eq_ignore_ascii_case("content-length")
                    && !n.eq_ignore_ascii_case("connection")
                    && !n.eq_ignore_ascii_case("host")
                {
                    raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
            }
            raw.extend_from_slice(b"\r\n");
            for part in body.chunks(64 * 1024) {
                raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                raw.extend_from_slice(part);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            raw
        };
        let big = vec![b' '; MAX_BODY_BYTES + 10];
        // The server may close before it has read everything we send;
        // write from a thread and read the answer here.
        let addr = f.addr();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let raw = chunked(&big);
        let writer = thread::spawn(move || {
            let _ = w.write_all(&raw);
        });
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let _ = writer.join();
        let a = parse_answer(&out);
        assert_eq!(a.code, 413, "{:?}", a.body);

        let a = exchange(addr, &chunked(PLANE_BODY));
        assert_eq!(a.code, 202, "{:?}", a.body);
        assert_eq!(f.rows(), 1);
    }

    #[test]
    fn routes_health_queue_404_405() {
        let f = serve(1, 2_000);
        let a = get(&f, "/healthz");
        assert_eq!((a.code, a.body["status"].as_str()), (200, Some("ok")));
        assert_eq!(a.body["commit"], crate::build_info::COMMIT);
        assert_eq!(a.body["schema"], crate::db::schema_version());
        let a = get(&f, "/queue");
        assert_eq!(a.code, 200);
        assert_eq!(a.body, json!({"queue": {"queued": 3}, "ok": true}));
        let a = get(&f, "/nope");
        assert_eq!(
            (a.code, a.body["status"].as_str()),
            (404, Some("not_found"))
        );
        let a = get(&f, "/webhooks/plane");
        assert_eq!(a.code, 405);
        assert!(a.head.contains("Allow: POST"), "{}", a.head);
        let a = exchange(f.addr(), &request("POST", "/healthz", &[], b"{}"));
        assert_eq!(a.code, 405);
        assert!(a.head.contains("Allow: GET, HEAD"), "{}", a.head);
        // A large body on an unknown path is answered without a worker
        // reading it.
        let a = exchange(
            f.addr(),
            &request("POST", "/nope", &[], &vec![b'x'; 200_000]),
        );
        assert_eq!(a.code, 404);
    }

    #[test]
    fn queue_errors_are_503() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ServeOptions {
            bind: "127.0.0.1:0".into(),
            threads: 1,
            read_timeout: Duration::from_secs(2),
            plane_secret: None,
            gitea_secret: None,
            db_path: dir.path().join("orch.db"),
            busy_timeout_ms: 1_000,
        };
        let queue: QueueFn = Arc::new(|| anyhow::bail!("database is locked"));
        let server = start(opts, queue).unwrap();
        let a = exchange(server.addr(), &request("GET", "/queue", &[], b""));
        assert_eq!(
            (a.code, a.body["status"].as_str()),
            (503, Some("unavailable"))
        );
        // No secret configured: everything is refused.
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        let a = exchange(
            server.addr(),
            &request("POST", "/webhooks/plane", &h, PLANE_BODY),
        );
        assert_eq!(a.code, 401);
        assert!(a.body["detail"]
            .as_str()
            .unwrap()
            .contains("ORCH_PLANE_WEBHOOK_SECRET"));
        server.shutdown();
    }

    #[test]
    fn database_error_is_503_and_stores_nothing() {
        // Hold the write lock longer than the workers' busy timeout.
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("locked.db");
        let opts = ServeOptions {
            bind: "127.0.0.1:0".into(),
            threads: 1,
            read_timeout: Duration::from_secs(2),
            plane_secret: Some(SECRET.into()),
            gitea_secret: Some(SECRET.into()),
            db_path: db_path.clone(),
            busy_timeout_ms: 100,
        };
        let server = start(opts, Arc::new(|| Ok(json!({})))).unwrap();
        let holder = Db::open(&db_path, 100).unwrap();
        holder.conn().execute_batch("BEGIN IMMEDIATE").unwrap();
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        let a = exchange(
            server.addr(),
            &request("POST", "/webhooks/plane", &h, PLANE_BODY),
        );
        assert_eq!(
            (a.code, a.body["status"].as_str()),
            (503, Some("unavailable"))
        );
        holder.conn().execute_batch("ROLLBACK").unwrap();
        let n: i64 = holder
            .conn()
            .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // Once the lock is gone the same delivery is accepted.
        let a = exchange(
            server.addr(),
            &request("POST", "/webhooks/plane", &h, PLANE_BODY),
        );
        assert_eq!(a.code, 202);
    }

    /// Opens a connection, sends headers announcing `content_length` bytes
    /// and only `sent` of them, then waits. Returns the stream and when the
    /// partial request was sent.
    fn stall(addr: SocketAddr, content_length: usize, sent: usize) -> (TcpStream, Instant) {
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        let mut raw = request("POST", "/webhooks/plane", &h, &vec![b' '; content_length]);
        raw.truncate(raw.len() - content_length + sent);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&raw).unwrap();
        (s, Instant::now())
    }

    /// Reads what the server sends until it closes the connection or
    /// `limit` passes: `(bytes, closed)`.
    fn answer_within(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return (out, false);
            };
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match s.read(&mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return (out, false)
                }
                Err(_) => return (out, true),
            }
        }
    }

    #[test]
    fn stalled_body_gets_408_and_does_not_hold_the_only_worker() {
        let f = serve(1, 500);
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        // 5000 > 1024: tiny_http hands the request to a worker right after
        // the headers; the body deadline applies.
        let (mut s, sent_at) = stall(f.addr(), 5_000, 10);
        let (out, closed) = answer_within(&mut s, Duration::from_millis(500 + 1_500));
        let elapsed = sent_at.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        if cfg!(target_os = "linux") {
            // The reader was unstuck: it answered 408 and let go of the
            // connection (tiny_http closed it), all within the margin.
            let a = parse_answer(&out);
            assert_eq!((a.code, a.body["status"].as_str()), (408, Some("timeout")));
            assert!(closed, "connection still open after {elapsed:?}");
        }
        // The single worker is free again.
        let a = post(&f, "/webhooks/plane", &h, PLANE_BODY);
        assert_eq!(a.code, 202, "{:?}", a.body);
        assert_eq!(f.rows(), 1);
        drop(s);
    }

    #[test]
    fn trickled_body_gets_408() {
        let f = serve(1, 500);
        let (mut s, sent_at) = stall(f.addr(), 5_000, 10);
        // Keep sending a byte every 100 ms: never idle, never done.
        let mut w = s.try_clone().unwrap();
        let trickle = thread::spawn(move || {
            for _ in 0..30 {
                thread::sleep(Duration::from_millis(100));
                if w.write_all(b" ").is_err() {
                    break;
                }
            }
        });
        let (out, _) = answer_within(&mut s, Duration::from_millis(500 + 1_500));
        assert!(sent_at.elapsed() >= Duration::from_millis(400));
        let a = parse_answer(&out);
        assert_eq!(a.code, 408);
        drop(s);
        let _ = trickle.join();
        assert_eq!(f.rows(), 0);
    }

    #[test]
    fn declared_oversize_body_is_refused_without_waiting_for_it() {
        let f = serve(1, 5_000);
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        // Announce 2 MiB, send none of it, wait for the answer.
        let (mut s, sent_at) = stall(f.addr(), 2 * MAX_BODY_BYTES, 0);
        let (out, _) = answer_within(&mut s, Duration::from_secs(2));
        let a = parse_answer(&out);
        assert_eq!(
            (a.code, a.body["status"].as_str()),
            (413, Some("too_large"))
        );
        assert!(sent_at.elapsed() < Duration::from_secs(2));
        // The worker is not busy draining that connection.
        let a = post(&f, "/webhooks/plane", &h, PLANE_BODY);
        assert_eq!(a.code, 202, "{:?}", a.body);
        drop(s);
    }

    #[test]
    fn slow_small_body_and_slow_headers_do_not_reach_the_worker() {
        let f = serve(1, 500);
        let h = webhook::parse_header_lines(PLANE_HEADERS);
        // Content-Length 100, 10 bytes sent: tiny_http reads bodies of at
        // most 1024 bytes itself before queueing the request, so this
        // connection waits in tiny_http's connection thread, not a worker.
        let (_small, _) = stall(f.addr(), 100, 10);
        // Headers never finished.
        let mut headers_only = TcpStream::connect(f.addr()).unwrap();
        headers_only
            .write_all(b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nX-Plane-Ev")
            .unwrap();
        thread::sleep(Duration::from_millis(50)); // let both connections be accepted
        let started = Instant::now();
        let a = post(&f, "/webhooks/plane", &h, PLANE_BODY);
        assert_eq!(a.code, 202, "{:?}", a.body);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(f.rows(), 1);
    }

    #[test]
    fn shutdown_joins_workers_and_closes_the_port() {
        let mut f = serve(3, 500);
        let addr = f.addr();
        assert_eq!(get(&f, "/healthz").code, 200);
        let started = Instant::now();
        f.server.take().unwrap().shutdown();
        assert!(started.elapsed() < Duration::from_secs(2));
        // tiny_http's accept thread closes the listener right after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "still listening on {addr}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}
