//! `orch serve`: the webhook shim (DESIGN §2, §3 `inbox` and "HTTP stack",
//! §11 item 7).
//!
//! It verifies, stores and answers — nothing else. Routes:
//! `POST /webhooks/plane`, `POST /webhooks/gitea`, `GET /healthz`,
//! and, on the separate admin listener, `GET /queue` (the `status --json`
//! document, built by the caller's closure), `GET /metrics` and
//! `GET /healthz`.
//!
//! The admin listener is a Unix socket in the state directory by default
//! (`<state_dir>/admin.sock`, mode 0660): agents run with the state
//! directory hidden, so they cannot reach it, although they keep the
//! network. On TCP (only when `ORCH_ADMIN_BIND` says so) every request
//! must carry `Authorization: Bearer <ORCH_ADMIN_TOKEN>`, and the shim
//! does not start without that token. Every answer the shim makes is JSON `{"status", "detail"}`
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

use crate::config::AdminBind;
use crate::error::Error;

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
    /// Where the admin listener listens (`GET /queue`, `GET /metrics`,
    /// `GET /healthz`): a Unix socket or TCP; `None` serves no admin
    /// listener.
    pub admin_bind: Option<AdminBind>,
    /// The bearer token every request to a TCP admin listener must carry
    /// (`ORCH_ADMIN_TOKEN`); required for TCP, unused for a socket.
    pub admin_token: Option<String>,
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
    /// The HMAC secret of each source's webhook, by source name
    /// ([`crate::webhook::SOURCES`]: `ORCH_PLANE_WEBHOOK_SECRET`, …); a
    /// source without one has its deliveries refused.
    pub webhook_secrets: std::collections::BTreeMap<&'static str, String>,
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
            admin_token: s.admin_token.as_ref().map(|x| x.expose().to_string()),
            threads: s.serve_threads,
            read_timeout: Duration::from_millis(s.serve_read_timeout_ms),
            header_timeout: Duration::from_millis(s.serve_header_timeout_ms),
            max_connections: s.serve_max_connections,
            max_header_bytes: s.serve_max_header_bytes,
            webhook_secrets: crate::webhook::SOURCES
                .iter()
                .filter_map(|src| Some((src.as_str(), src.secret(s)?.to_string())))
                .collect(),
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
            .field("admin_token", &redact(&self.admin_token))
            .field("threads", &self.threads)
            .field("read_timeout", &self.read_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_header_bytes", &self.max_header_bytes)
            .field(
                "webhook_secrets",
                &self
                    .webhook_secrets
                    .keys()
                    .map(|k| (k, "[redacted]"))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
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
    /// The admin socket's path and file identity (device, inode): removed
    /// on shutdown if the path is still this file.
    admin_socket: Option<(PathBuf, (u64, u64))>,
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

    /// The admin listener's bound TCP address, when it listens on TCP.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// The admin listener's socket path, when it listens on a Unix socket.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin_socket.as_ref().map(|(p, _)| p.as_path())
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
        self.remove_admin_socket();
        result
    }

    /// Removes the admin socket file if it is still the one this server
    /// bound (another process may have replaced it since).
    fn remove_admin_socket(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Some((path, id)) = self.admin_socket.take() {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == id) {
                let _ = std::fs::remove_file(&path);
            }
        }
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
            self.remove_admin_socket();
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

/// Binds `opts.bind` and the admin listener, opens the writer's database
/// connection (applying migrations), starts the writer thread and a tokio
/// runtime, and starts accepting.
///
/// Errors: an unusable bind address or admin socket (see `listen::bind_socket`),
/// a database that cannot be opened, a zero deadline,
/// `max_connections == 0` or `max_header_bytes < 8192`; a TCP admin
/// listener without a token is [`Error::Config`] naming `ORCH_ADMIN_TOKEN`
/// (exit 2).
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
    let admin_token = match (&opts.admin_bind, &opts.admin_token) {
        (Some(AdminBind::Tcp(addr)), token) => {
            match token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                Some(t) => Some(routes::Token::new(t)),
                None => {
                    return Err(Error::config(
                        "ORCH_ADMIN_TOKEN",
                        format!(
                            "the admin listener is on TCP (ORCH_ADMIN_BIND={addr}), where anyone who reaches the port could read it: set ORCH_ADMIN_TOKEN (every request then needs Authorization: Bearer <token>), or leave ORCH_ADMIN_BIND unset for the Unix socket in the state directory"
                        ),
                    )
                    .into())
                }
            }
        }
        _ => None,
    };
    for source in crate::webhook::SOURCES {
        let secret = opts.webhook_secrets.get(source.as_str());
        if secret.is_none_or(|s| s.trim().is_empty()) {
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
    // The webhook port first: a second `orch serve` on the same ORCH_BIND
    // fails there, before it looks at the admin socket.
    let (listener, admin_listener) = {
        let _guard = runtime.enter();
        let listener = listen::bind(&opts.bind)?;
        let admin = match &opts.admin_bind {
            Some(bind) => Some(anyhow::Context::with_context(
                AdminListener::bind(bind),
                || format!("the admin listener (ORCH_ADMIN_BIND={bind})"),
            )?),
            None => None,
        };
        (listener, admin)
    };
    let addr = listener.local_addr()?;
    let (admin_addr, admin_socket) = match &admin_listener {
        Some(AdminListener::Tcp(l)) => (Some(l.local_addr()?), None),
        Some(AdminListener::Unix(_, path, id)) => (None, Some((path.clone(), *id))),
        None => (None, None),
    };
    let writer = writer::start(&opts.db_path, opts.busy_timeout_ms);
    let (writer, writer_thread) = match writer {
        Ok(w) => w,
        Err(e) => {
            if let Some((path, _)) = &admin_socket {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    let limits = listen::Limits {
        header_timeout: opts.header_timeout,
        max_header_bytes: opts.max_header_bytes,
        max_connections: opts.max_connections,
        write_timeout: opts.read_timeout,
        drain: opts.drain(),
    };
    let app = Arc::new(routes::App {
        secrets: opts.webhook_secrets,
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
    let admin_router = routes::admin_router(app, admin_token);
    let accept = match admin_listener {
        Some(AdminListener::Tcp(l)) => {
            let admin = listen::accept_loop(l, admin_router, limits, stop_rx);
            runtime.spawn(async move { tokio::try_join!(webhooks, admin).map(|_| ()) })
        }
        Some(AdminListener::Unix(l, _, _)) => {
            let admin = listen::accept_loop(l, admin_router, limits, stop_rx);
            runtime.spawn(async move { tokio::try_join!(webhooks, admin).map(|_| ()) })
        }
        None => runtime.spawn(webhooks),
    };
    Ok(Server {
        addr,
        admin_addr,
        admin_socket,
        runtime: Some(runtime),
        stop,
        accept: Some(accept),
        writer: Some(writer_thread),
    })
}

/// The admin listener, bound.
enum AdminListener {
    Tcp(tokio::net::TcpListener),
    /// The listener, its path and its file's (device, inode).
    Unix(tokio::net::UnixListener, PathBuf, (u64, u64)),
}

impl AdminListener {
    /// Binds `bind`; must run inside the runtime.
    fn bind(bind: &AdminBind) -> anyhow::Result<AdminListener> {
        Ok(match bind {
            AdminBind::Tcp(addr) => AdminListener::Tcp(listen::bind(&addr.to_string())?),
            AdminBind::Socket(path) => {
                let (l, id) = listen::bind_socket(path)?;
                AdminListener::Unix(l, path.clone(), id)
            }
        })
    }
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
    let admin_addr = match (server.admin_addr(), server.admin_socket()) {
        (Some(a), _) => format!("{a} (bearer token)"),
        (None, Some(p)) => format!("unix:{}", p.display()),
        (None, None) => "off".to_string(),
    };
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
            admin_bind: Some(AdminBind::Socket(dir.join("admin.sock"))),
            admin_token: None,
            threads: 1,
            read_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(2),
            max_connections: 64,
            max_header_bytes: 65_536,
            webhook_secrets: crate::webhook::SOURCES
                .iter()
                .filter_map(|s| Some((s.as_str(), secret?.to_string())))
                .collect(),
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
        parse(&out)
    }

    /// One request over the Unix socket at `path`.
    fn exchange_unix(path: &std::path::Path, raw: &str) -> ((u16, Value), String) {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        parse(&out)
    }

    fn parse(out: &[u8]) -> ((u16, Value), String) {
        let text = String::from_utf8_lossy(out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (
            (code, serde_json::from_str(body).unwrap_or(Value::Null)),
            body.to_string(),
        )
    }

    const GET: &str = "HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    #[test]
    fn queue_and_metrics_are_served_on_the_admin_socket_only() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let queue: QueueFn = Arc::new(|| Ok(serde_json::json!({"ok": true})));
        let server = start(options(dir.path(), Some("s")), admin(queue)).unwrap();
        assert_eq!(server.admin_addr(), None);
        let sock = server
            .admin_socket()
            .expect("an admin socket")
            .to_path_buf();
        assert_eq!(sock, dir.path().join("admin.sock"));
        let meta = std::fs::metadata(&sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let (q, _) = exchange_unix(&sock, &format!("GET /queue {GET}"));
        assert_eq!(q, (200, serde_json::json!({"ok": true})));
        let ((code, _), text) = exchange_unix(&sock, &format!("GET /metrics {GET}"));
        assert_eq!(code, 200);
        assert!(text.starts_with("orch_up 1\n"), "{text}");
        assert!(
            text.contains("# TYPE orch_webhook_answers_total counter"),
            "{text}"
        );
        assert_eq!(
            exchange_unix(&sock, &format!("GET /healthz {GET}")).0 .0,
            200
        );
        // The webhook port serves neither, and the admin socket no webhooks.
        for path in ["/queue", "/metrics"] {
            assert_eq!(
                exchange(&server, &format!("GET {path} {GET}")).0,
                404,
                "{path}"
            );
        }
        let (code, _) = exchange_unix(&sock, "POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}").0;
        assert_eq!(code, 404);
        // A sender not in `webhook::SOURCES` has no route, like any unknown
        // path; a registered one answers (401 here: the body is unsigned).
        let post = |source: &str| {
            format!("POST /webhooks/{source} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}")
        };
        let (code, v) = exchange(&server, &post("github"));
        assert_eq!((code, v["status"].as_str()), (404, Some("not_found")));
        for source in crate::webhook::SOURCES {
            assert_eq!(exchange(&server, &post(source.as_str())).0, 401, "{source}");
        }
        server.shutdown().unwrap();
        assert!(!sock.exists(), "the socket file is removed on shutdown");
        // Off: no admin listener at all.
        let mut opts = options(dir.path(), Some("s"));
        opts.admin_bind = None;
        let server = start(opts, admin(Arc::new(|| Ok(Value::Null)))).unwrap();
        assert_eq!((server.admin_addr(), server.admin_socket()), (None, None));
        server.shutdown().unwrap();
        assert!(!sock.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("admin.sock");
        let null = || admin(Arc::new(|| Ok(Value::Null)));
        // A crashed run's socket: nobody listens on it.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let first = start(options(dir.path(), Some("s")), null()).unwrap();
        assert_eq!(
            exchange_unix(&sock, &format!("GET /healthz {GET}")).0 .0,
            200
        );
        // A second shim (its own webhook port) does not take it over.
        let e = start(options(dir.path(), Some("s")), null()).err().unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("ORCH_ADMIN_BIND") && msg.contains("is in use"),
            "{msg}"
        );
        assert_eq!(
            exchange_unix(&sock, &format!("GET /healthz {GET}")).0 .0,
            200
        );
        first.shutdown().unwrap();
        // A file that is not a socket is not removed.
        std::fs::write(&sock, "mine").unwrap();
        let e = start(options(dir.path(), Some("s")), null()).err().unwrap();
        assert!(format!("{e:#}").contains("is not a socket"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&sock).unwrap(), "mine");
    }

    #[test]
    fn a_tcp_admin_listener_needs_the_bearer_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), Some("s"));
        opts.admin_bind = Some(AdminBind::Tcp("127.0.0.1:0".parse().unwrap()));
        let queue: QueueFn = Arc::new(|| Ok(serde_json::json!({"ok": true})));
        for token in [None, Some(" ")] {
            opts.admin_token = token.map(Into::into);
            let e = start(opts.clone(), admin(queue.clone())).err().unwrap();
            let code = crate::error::exit_code_for(&e);
            assert_eq!(code, crate::error::exit::USAGE, "{e:#}");
            assert!(format!("{e:#}").contains("ORCH_ADMIN_TOKEN"), "{e:#}");
        }
        opts.admin_token = Some("admin-token-0123".into());
        let server = start(opts, admin(queue)).unwrap();
        let at = server.admin_addr().expect("a TCP admin listener");
        assert_eq!(server.admin_socket(), None);
        let get = |path: &str, auth: Option<&str>| {
            let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
            exchange_at(
                at,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"),
            )
        };
        for path in ["/queue", "/metrics", "/healthz", "/nowhere"] {
            for auth in [
                None,
                Some("Bearer"),
                Some("Bearer "),
                Some("Bearer admin-token-012"),
                Some("Bearer admin-token-01234"),
                Some("Basic admin-token-0123"),
                Some("admin-token-0123"),
            ] {
                let ((code, v), _) = get(path, auth);
                assert_eq!(code, 401, "{path} {auth:?}");
                assert_eq!(v["status"], "unauthorized", "{path} {auth:?}");
            }
        }
        assert_eq!(
            get("/queue", Some("Bearer admin-token-0123")).0,
            (200, serde_json::json!({"ok": true}))
        );
        assert_eq!(get("/queue", Some("bearer  admin-token-0123")).0 .0, 200);
        let ((code, _), text) = get("/metrics", Some("Bearer admin-token-0123"));
        assert_eq!(code, 200);
        assert!(text.starts_with("orch_up 1\n"), "{text}");
        server.shutdown().unwrap();
    }

    #[test]
    fn queue_errors_are_503_and_a_missing_secret_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let queue: QueueFn = Arc::new(|| anyhow::bail!("database is locked"));
        let server = start(options(dir.path(), None), admin(queue)).unwrap();
        let (code, v) = exchange_unix(
            server.admin_socket().unwrap(),
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
