//! `orch serve`: the webhook shim (DESIGN §2, §3 `inbox` and "HTTP stack",
//! §11 item 7).
//!
//! It verifies, stores and answers — nothing else. Routes:
//! `POST /webhooks/plane`, `POST /webhooks/gitea`, `GET /healthz`,
//! `GET /queue` (the `status --json` document, built by the caller's
//! closure). Every answer the shim makes is JSON `{"status", "detail"}`
//! (+ `inbox_id`); a 202 is sent only after the commit that holds the
//! delivery is on disk.
//!
//! The shim faces clients it cannot trust, so every resource a client can
//! hold is bounded: the request head's time and size, the whole request's
//! time, the body's size, the number of open connections; running out of
//! file descriptors pauses accepting instead of killing the listener.
//!
//! Layout:
//! - `listen`: the accept loop on hyper's HTTP/1 connection driver (the
//!   connection cap, header deadline and size, accept errors, draining);
//! - `io`: the connection's socket (the `Content-Length` +
//!   `Transfer-Encoding` watch, the lingering close);
//! - `routes`: the axum router, its handlers and tower-http layers;
//! - `writer`: group commit on one thread with one connection.
//!
//! A tokio runtime exists only inside `orch serve` (and the in-process
//! [`Server`] of tests and the benchmark); the rest of orch is synchronous.

mod io;
mod listen;
mod routes;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::webhook::Source;

/// Builds the `GET /queue` document (the caller passes the `orch status
/// --json` builder). Called on tokio's blocking pool, possibly
/// concurrently.
pub type QueueFn = Arc<dyn Fn() -> anyhow::Result<Value> + Send + Sync>;

/// Builds the `GET /metrics` text (Prometheus exposition format; the caller
/// passes `orch metrics`' renderer). Called from the blocking pool.
pub type MetricsFn = Arc<dyn Fn() -> anyhow::Result<String> + Send + Sync>;

/// What the admin listener serves, built by the caller (the binary), which
/// knows the database and the context.
#[derive(Clone)]
pub struct Admin {
    /// `GET /queue`: the `orch status --json` document.
    pub queue: QueueFn,
    /// `GET /metrics`: Prometheus text.
    pub metrics: MetricsFn,
}

/// How to run the shim.
#[derive(Clone)]
pub struct ServeOptions {
    /// Listen address, e.g. `127.0.0.1:8500` (`:0` picks a free port).
    pub bind: String,
    /// The admin listener's address (`GET /queue`, `GET /metrics`,
    /// `GET /healthz`); `None` serves no admin listener.
    pub admin_bind: Option<String>,
    /// Runtime worker threads; 0 = one per CPU.
    pub threads: usize,
    /// A request must be complete (body read, delivery stored) within this
    /// time after its head arrived, else 408; also the longest a write
    /// waits for a client that does not read its answer.
    pub read_timeout: Duration,
    /// A request head must be complete within this time after the
    /// connection opened or the previous answer was sent, else the
    /// connection is closed (this is also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Connections open at once (at least 1); more wait in the backlog.
    pub max_connections: usize,
    /// Longest request head in bytes (at least 8,192); longer is 431.
    pub max_header_bytes: usize,
    /// HMAC secret of the Plane webhook; `None` refuses Plane deliveries.
    pub plane_secret: Option<String>,
    /// HMAC secret of the Gitea webhook; `None` refuses Gitea deliveries.
    pub gitea_secret: Option<String>,
    /// The database file.
    pub db_path: PathBuf,
    /// SQLite busy timeout of the writer's connection, ms.
    pub busy_timeout_ms: u64,
}

impl ServeOptions {
    /// The options from the settings (`ORCH_BIND`, `ORCH_SERVE_THREADS`,
    /// `ORCH_SERVE_READ_TIMEOUT_MS`, `ORCH_SERVE_HEADER_TIMEOUT_MS`,
    /// `ORCH_SERVE_MAX_CONNECTIONS`, `ORCH_SERVE_MAX_HEADER_BYTES`, the
    /// webhook secrets, the database and its busy timeout).
    pub fn from_settings(s: &crate::config::Settings) -> ServeOptions {
        ServeOptions {
            bind: s.bind.clone(),
            admin_bind: s.admin_bind.clone(),
            threads: s.serve_threads,
            read_timeout: Duration::from_millis(s.serve_read_timeout_ms),
            header_timeout: Duration::from_millis(s.serve_header_timeout_ms),
            max_connections: s.serve_max_connections,
            max_header_bytes: s.serve_max_header_bytes,
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

    /// How long a shutdown waits for open connections: a request that
    /// just started may take the header and the read deadline, plus the
    /// lingering close.
    fn drain(&self) -> Duration {
        self.header_timeout + self.read_timeout + io::LINGER
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "[redacted]");
        f.debug_struct("ServeOptions")
            .field("bind", &self.bind)
            .field("admin_bind", &self.admin_bind)
            .field("threads", &self.threads)
            .field("read_timeout", &self.read_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("plane_secret", &redact(&self.plane_secret))
            .field("gitea_secret", &redact(&self.gitea_secret))
            .field("db_path", &self.db_path)
            .field("busy_timeout_ms", &self.busy_timeout_ms)
            .finish()
    }
}

/// A running shim. Dropping it is the same as [`Server::shutdown`]
/// (ignoring its result).
pub struct Server {
    addr: std::net::SocketAddr,
    admin_addr: Option<std::net::SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    writer: Option<writer::WriterThread>,
}

impl Server {
    /// The bound address (the real port when `bind` asked for port 0).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The admin listener's bound address, when it serves one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// Stops accepting (the listening socket is closed), lets the requests
    /// in flight finish (each bounded by the header and read deadlines; in
    /// all at most `header_timeout + read_timeout` + 2 s, after which the
    /// rest are dropped unanswered), then waits until the writer has
    /// committed everything it was handed.
    ///
    /// Errors: the listener had failed before (an unusable listening
    /// socket; see `listen`).
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        if let (Some(rt), Some(accept)) = (self.runtime.as_ref(), self.accept.take()) {
            result = match rt.block_on(accept) {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("the accept loop panicked: {e}")),
            };
        }
        if let Some(rt) = self.runtime.take() {
            // Every connection task is gone; this ends the blocking pool.
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        // The router (and with it every `Writer` handle) is dropped: the
        // writer commits what it holds and exits.
        if let Some(w) = self.writer.take() {
            w.join();
        }
        result
    }

    /// Serves until SIGTERM or SIGINT, then stops as [`Server::shutdown`]
    /// does; a second signal during that stops waiting (`Err`: the writer
    /// is left to finish on its own while the process exits).
    ///
    /// Errors: the listener failed (the accept loop ended by itself), or a
    /// second signal.
    fn serve_until_signal(&mut self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let (Some(rt), Some(accept)) = (self.runtime.as_ref(), self.accept.take()) else {
            anyhow::bail!("the server is not running");
        };
        let stop = &self.stop;
        let loop_result = |r: Result<anyhow::Result<()>, tokio::task::JoinError>| match r {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the accept loop panicked: {e}")),
        };
        let outcome = rt.block_on(async {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::pin!(accept);
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                r = &mut accept => {
                    let e = loop_result(r).err().unwrap_or_else(|| anyhow::anyhow!("the accept loop ended"));
                    return Err(e.context("the HTTP listener failed"));
                }
            };
            tracing::info!(target: "webhook", signal = name, "stopping: no new connections; finishing the requests in flight");
            let _ = stop.send(true);
            tokio::select! {
                r = &mut accept => loop_result(r),
                _ = term.recv() => Err(anyhow::anyhow!("a second signal during shutdown; not waiting for the requests in flight")),
                _ = int.recv() => Err(anyhow::anyhow!("a second signal during shutdown; not waiting for the requests in flight")),
            }
        });
        if outcome.is_err() {
            let _ = stop.send(true);
            if let Some(rt) = self.runtime.take() {
                rt.shutdown_background();
            }
            // The writer finishes what it was handed once the connection
            // tasks are gone; nobody waits for it.
            self.writer = None;
            return outcome;
        }
        self.stop_and_wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_wait();
    }
}

/// Binds `opts.bind`, opens the writer's database connection (applying
/// migrations), starts the writer thread and a tokio runtime, and starts
/// accepting.
///
/// Errors: an unusable bind address, a database that cannot be opened,
/// a zero deadline, `max_connections == 0` or `max_header_bytes < 8192`.
pub fn start(opts: ServeOptions, admin: Admin) -> anyhow::Result<Server> {
    anyhow::ensure!(
        !opts.read_timeout.is_zero(),
        "serve: the read timeout must be positive"
    );
    anyhow::ensure!(
        !opts.header_timeout.is_zero(),
        "serve: the header timeout must be positive"
    );
    anyhow::ensure!(
        opts.max_connections >= 1,
        "serve: max connections must be at least 1"
    );
    anyhow::ensure!(
        opts.max_header_bytes >= 8192,
        "serve: max header bytes must be at least 8192"
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
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if opts.threads > 0 {
        rt.worker_threads(opts.threads);
    }
    let runtime = rt
        .thread_name("orch-serve")
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    let (listener, admin_listener) = {
        let _guard = runtime.enter();
        let admin = match &opts.admin_bind {
            Some(bind) => Some(anyhow::Context::with_context(listen::bind(bind), || {
                format!("the admin listener (ORCH_ADMIN_BIND={bind})")
            })?),
            None => None,
        };
        (listen::bind(&opts.bind)?, admin)
    };
    let addr = listener.local_addr()?;
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let (writer, writer_thread) = writer::start(&opts.db_path, opts.busy_timeout_ms)?;
    let limits = listen::Limits {
        header_timeout: opts.header_timeout,
        max_header_bytes: opts.max_header_bytes,
        max_connections: opts.max_connections,
        write_timeout: opts.read_timeout,
        drain: opts.drain(),
    };
    let app = Arc::new(routes::App {
        plane_secret: opts.plane_secret,
        gitea_secret: opts.gitea_secret,
        read_timeout: opts.read_timeout,
        writer,
        admin,
        answers: Default::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let webhooks = listen::accept_loop(
        listener,
        routes::router(app.clone()),
        limits,
        stop_rx.clone(),
    );
    // Both loops end together on a stop; either failing is the server
    // failing (the process then exits non-zero).
    let accept = match admin_listener {
        Some(l) => {
            let admin = listen::accept_loop(l, routes::admin_router(app), limits, stop_rx);
            runtime.spawn(async move { tokio::try_join!(webhooks, admin).map(|_| ()) })
        }
        None => runtime.spawn(webhooks),
    };
    Ok(Server {
        addr,
        admin_addr,
        runtime: Some(runtime),
        stop,
        accept: Some(accept),
        writer: Some(writer_thread),
    })
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully
/// ([`Server::shutdown`]: stop accepting, finish the requests in flight,
/// commit) and returns `Ok`. Returns `Err` when the listener fails, so the
/// process exits non-zero and the service manager restarts it, or when a
/// second signal arrives during the shutdown (it then stops waiting).
///
/// First raises the soft limit on open files to the hard limit (each
/// connection is one descriptor) and warns when `max_connections` does
/// not fit under it.
pub fn run_forever(opts: ServeOptions, admin: Admin) -> anyhow::Result<()> {
    let files = raise_open_files_limit();
    if let Some(files) = files {
        if (opts.max_connections as u64).saturating_add(64) > files {
            tracing::warn!(target: "webhook", max_connections = opts.max_connections, open_files_limit = files, "the open-files limit is below the connection cap; accepting pauses when descriptors run out (raise LimitNOFILE)");
        }
    }
    let (threads, max_connections) = (opts.threads, opts.max_connections);
    let mut server = start(opts, admin)?;
    let admin_addr = server
        .admin_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(target: "webhook", addr = %server.addr(), admin = %admin_addr, threads, max_connections, open_files_limit = files, "orch serve listening");
    match server.serve_until_signal() {
        Ok(()) => {
            tracing::info!(target: "webhook", "stopped");
            Ok(())
        }
        Err(e) => {
            tracing::error!(target: "webhook", error = %format!("{e:#}"), "orch serve stops with an error");
            Err(e)
        }
    }
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the soft
/// limit in force afterwards (`None` if it cannot be read). Tests that
/// open thousands of connections use it too.
pub fn raise_open_files_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        Some(lim.rlim_cur as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn options(dir: &std::path::Path, secret: Option<&str>) -> ServeOptions {
        ServeOptions {
            bind: "127.0.0.1:0".into(),
            admin_bind: Some("127.0.0.1:0".into()),
            threads: 1,
            read_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(2),
            max_connections: 64,
            max_header_bytes: 65_536,
            plane_secret: secret.map(Into::into),
            gitea_secret: secret.map(Into::into),
            db_path: dir.join("orch.db"),
            busy_timeout_ms: 1_000,
        }
    }

    fn admin(queue: QueueFn) -> Admin {
        Admin {
            queue,
            metrics: Arc::new(|| Ok("orch_up 1\n".to_string())),
        }
    }

    fn exchange(server: &Server, raw: &str) -> (u16, Value) {
        exchange_at(server.addr(), raw).0
    }

    /// One request to `addr`: `((code, JSON body), raw body)`.
    fn exchange_at(addr: std::net::SocketAddr, raw: &str) -> ((u16, Value), String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (
            (code, serde_json::from_str(body).unwrap_or(Value::Null)),
            body.to_string(),
        )
    }

    const GET: &str = "HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    #[test]
    fn queue_and_metrics_are_served_on_the_admin_listener_only() {
        let dir = tempfile::tempdir().unwrap();
        let queue: QueueFn = Arc::new(|| Ok(serde_json::json!({"ok": true})));
        let server = start(options(dir.path(), Some("s")), admin(queue)).unwrap();
        let admin_addr = server.admin_addr().expect("an admin listener");
        assert_ne!(admin_addr, server.addr());
        let (q, _) = exchange_at(admin_addr, &format!("GET /queue {GET}"));
        assert_eq!(q, (200, serde_json::json!({"ok": true})));
        let ((code, _), text) = exchange_at(admin_addr, &format!("GET /metrics {GET}"));
        assert_eq!(code, 200);
        assert!(text.starts_with("orch_up 1\n"), "{text}");
        assert!(
            text.contains("# TYPE orch_webhook_answers_total counter"),
            "{text}"
        );
        assert_eq!(
            exchange_at(admin_addr, &format!("GET /healthz {GET}")).0 .0,
            200
        );
        // The webhook port serves neither, and the admin port no webhooks.
        for path in ["/queue", "/metrics"] {
            assert_eq!(
                exchange(&server, &format!("GET {path} {GET}")).0,
                404,
                "{path}"
            );
        }
        let (code, _) = exchange_at(admin_addr, "POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}").0;
        assert_eq!(code, 404);
        server.shutdown().unwrap();
        // Off: no admin listener at all.
        let mut opts = options(dir.path(), Some("s"));
        opts.admin_bind = None;
        let server = start(opts, admin(Arc::new(|| Ok(Value::Null)))).unwrap();
        assert_eq!(server.admin_addr(), None);
        server.shutdown().unwrap();
    }

    #[test]
    fn queue_errors_are_503_and_a_missing_secret_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let queue: QueueFn = Arc::new(|| anyhow::bail!("database is locked"));
        let server = start(options(dir.path(), None), admin(queue)).unwrap();
        let (code, v) = exchange_at(
            server.admin_addr().unwrap(),
            "GET /queue HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .0;
        assert_eq!((code, v["status"].as_str()), (503, Some("unavailable")));
        let body = include_str!(
            "../../tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json"
        );
        let headers = include_str!(
            "../../tests/fixtures/plane/webhooks/issue-updated-state-in-progress.headers"
        );
        let mut raw = format!(
            "POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in crate::webhook::parse_header_lines(headers) {
            if !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("host") {
                raw += &format!("{n}: {v}\r\n");
            }
        }
        raw += "\r\n";
        raw += body;
        let (code, v) = exchange(&server, &raw);
        assert_eq!(code, 401);
        assert!(v["detail"]
            .as_str()
            .unwrap()
            .contains("ORCH_PLANE_WEBHOOK_SECRET"));
        server.shutdown().unwrap();
    }

    #[test]
    fn shutdown_closes_the_port_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(
            options(dir.path(), Some("s")),
            admin(Arc::new(|| Ok(Value::Null))),
        )
        .unwrap();
        let addr = server.addr();
        let idle = TcpStream::connect(addr).unwrap();
        let started = std::time::Instant::now();
        server.shutdown().unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening on {addr}"
        );
        drop(idle);
    }
}
