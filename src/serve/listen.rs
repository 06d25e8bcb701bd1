//! The accept loop: one tokio task that accepts connections, serves each
//! on hyper's HTTP/1 connection driver with the shim's limits, and drains
//! them on shutdown.
//!
//! - **Connection cap.** At most `max_connections` connections are open;
//!   at the cap the loop stops accepting, so new connections wait in the
//!   kernel's listen backlog until one closes.
//! - **Header deadline and size.** hyper's `header_read_timeout` closes a
//!   connection whose request head is not complete in time — that also
//!   ends an idle keep-alive connection, whose next head is due within the
//!   same time after the previous answer — and `max_header_size` answers
//!   431 once a head is longer than allowed, without reading further.
//! - **Write deadline.** A client that does not read its answers loses
//!   the connection after the read deadline (see [`super::io`]).
//! - **Accept errors.** Out of file descriptors or memory (EMFILE, ENFILE,
//!   ENOBUFS, ENOMEM), the loop backs off (10 ms doubling to 500 ms) and
//!   keeps accepting; a connection that failed before it was accepted is
//!   skipped. An error that means the listening socket itself is unusable
//!   (EBADF, EINVAL, ENOTSOCK, EFAULT), or any other error repeating
//!   [`MAX_UNKNOWN_ERRORS`] times in a row, ends the loop with `Err`: the
//!   process then exits non-zero and its service manager restarts it.
//! - **Listeners.** The webhook listener is TCP; the admin listener is a
//!   Unix socket by default ([`bind_socket`]: mode 0660, a stale file
//!   replaced, a live one left alone) or TCP; both run the same loop with
//!   the same limits ([`Accept`]).
//! - **Shutdown.** When told to stop, the loop closes the listening socket
//!   (new connections are refused), lets every open connection finish the
//!   request it is in (hyper's graceful shutdown: idle connections close at
//!   once, busy ones after their answer) and waits for them at most the
//!   drain deadline, then drops the rest.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::io::{ConnIo, Framing, Heads, MAX_HEADERS};
use super::routes::Refuse;

/// First and longest pause after an accept error for want of resources.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(500));

/// Unclassified accept errors in a row after which the listener counts as
/// dead.
pub const MAX_UNKNOWN_ERRORS: u32 = 100;

/// The limits of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must be complete this long after the connection
    /// opened or the previous answer was sent.
    pub header_timeout: Duration,
    /// Longest request head (request line and headers), bytes; longer is
    /// answered 431.
    pub max_header_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest a write may wait for the client to read.
    pub write_timeout: Duration,
    /// On shutdown, how long open connections may take to finish.
    pub drain: Duration,
}

/// What an accept error means for the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptError {
    /// That one connection failed before we got it: accept the next.
    Connection,
    /// Out of descriptors or memory: pause, then accept again.
    Resources,
    /// The listening socket is unusable.
    Fatal,
    /// Anything else: pause, then accept again (counted).
    Unknown,
}

/// Classifies an error of `accept(2)`.
pub fn classify(e: &io::Error) -> AcceptError {
    use io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionAborted
            | K::ConnectionReset
            | K::ConnectionRefused
            | K::Interrupted
            | K::WouldBlock
    ) {
        return AcceptError::Connection;
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Resources,
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT) => AcceptError::Fatal,
        // Errors of the new connection that Linux reports through accept(2).
        Some(
            libc::EPROTO
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ETIMEDOUT
            | libc::EPERM,
        ) => AcceptError::Connection,
        _ => AcceptError::Unknown,
    }
}

/// A listening socket the accept loop serves.
pub trait Accept: Send + 'static {
    /// An accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection (`accept(2)`'s errors as they come).
    fn next(&self) -> impl std::future::Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> io::Result<Self::Stream> {
        let (stream, _peer) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

/// Accepts and serves until `stop` turns true (then drains and returns
/// `Ok`) or the listener fails (drains and returns `Err`).
pub async fn accept_loop<L: Accept>(
    listener: L,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let mut backoff = BACKOFF.0;
    let mut unknown = 0u32;
    let mut at_cap = false;
    let result: anyhow::Result<()> = loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(target: "webhook", max = limits.max_connections, "at the connection cap; new connections wait in the listen backlog");
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break Ok(()),
                    },
                    _ = stop.wait_for(|s| *s) => break Ok(()),
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.next() => r,
            _ = stop.wait_for(|s| *s) => break Ok(()),
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = BACKOFF.0;
                unknown = 0;
                if at_cap && slots.available_permits() > 0 {
                    at_cap = false;
                }
                stream
            }
            Err(e) => {
                let class = classify(&e);
                match class {
                    AcceptError::Connection => continue,
                    AcceptError::Fatal => {
                        break Err(anyhow::Error::new(e).context("the listening socket failed"))
                    }
                    AcceptError::Unknown if unknown + 1 >= MAX_UNKNOWN_ERRORS => {
                        break Err(anyhow::Error::new(e)
                            .context(format!("accept failed {MAX_UNKNOWN_ERRORS} times in a row")))
                    }
                    AcceptError::Unknown => unknown += 1,
                    AcceptError::Resources => {}
                }
                tracing::warn!(target: "webhook", error = %e, pause_ms = backoff.as_millis() as u64, open = limits.max_connections - slots.available_permits(), "accept failed; pausing, then accepting again");
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        let heads = Arc::new(Heads::default());
        let io = TokioIo::new(ConnIo::new(
            stream,
            Framing::new(limits.max_header_bytes, heads.clone()),
            limits.write_timeout,
        ));
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            match heads.next() {
                Some(false) => {}
                Some(true) => {
                    req.extensions_mut().insert(Refuse::SmugglingShape);
                }
                None => {
                    req.extensions_mut().insert(Refuse::FramingLost);
                }
            }
            router.clone().oneshot(req)
        });
        let conn = graceful.watch(http.serve_connection(io, service));
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(target: "webhook", error = %e, "connection ended with an error");
            }
        });
        while tasks.try_join_next().is_some() {}
    };
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(target: "webhook", open, "letting open connections finish");
    }
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(target: "webhook", drain_ms = limits.drain.as_millis() as u64, "connections still open after the drain deadline; closing them");
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    result
}

/// Binds `addr` (the first of its addresses that works) with a listen
/// backlog of 1,024 and `SO_REUSEADDR`. Must run inside the runtime.
pub fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for a in addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
    {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(1024)
        });
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => anyhow::Error::new(e).context(format!("binding {addr}")),
        None => anyhow::anyhow!("binding {addr}: no address"),
    })
}

/// Binds a Unix socket at `path` (absolute; its folder must exist) with
/// mode 0660 and a listen backlog of 1,024. Must run inside the runtime.
///
/// The socket is bound under a temporary name beside `path`, given its
/// mode, then renamed over `path`: no client ever sees it with wider
/// permissions, and a stale socket left by a crashed run is replaced in
/// one step. Returns the listener and the socket file's identity
/// (device, inode), so the caller removes only its own file on shutdown.
///
/// Errors (naming the path): `path` exists and is not a socket (it is
/// left alone); a process answers on it (another `orch serve`: it is not
/// taken over); the folder is missing or not writable; the path is too
/// long for a socket address (108 bytes on Linux).
pub fn bind_socket(path: &std::path::Path) -> anyhow::Result<(UnixListener, (u64, u64))> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            anyhow::bail!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            )
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "{} is in use: a process (another orch serve?) accepts connections on it; stop it, or give this one another ORCH_ADMIN_BIND",
                path.display()
            ),
            // Nobody listens: a stale socket from a run that did not
            // clean up; the rename below replaces it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("checking the existing socket {}", path.display())))
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{}", path.display()))),
    }
    let name = path
        .file_name()
        .with_context(|| format!("{}: no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp)
        .with_context(|| format!("binding the Unix socket {}", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| std::fs::symlink_metadata(path));
    let meta = match placed {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(
                anyhow::Error::new(e).context(format!("placing the socket at {}", path.display()))
            );
        }
    };
    // The backlog: std's listen(2) used 128; raise it as the TCP one has.
    // SAFETY: listen(2) on a descriptor we own.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::listen(std_listener.as_raw_fd(), 1024);
    }
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    Ok((listener, (meta.dev(), meta.ino())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_classified() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(libc::EMFILE)), AcceptError::Resources);
        assert_eq!(classify(&os(libc::ENFILE)), AcceptError::Resources);
        assert_eq!(classify(&os(libc::ENOMEM)), AcceptError::Resources);
        assert_eq!(classify(&os(libc::ECONNABORTED)), AcceptError::Connection);
        assert_eq!(classify(&os(libc::EPROTO)), AcceptError::Connection);
        assert_eq!(classify(&os(libc::EBADF)), AcceptError::Fatal);
        assert_eq!(classify(&os(libc::EINVAL)), AcceptError::Fatal);
        assert_eq!(classify(&os(libc::EIO)), AcceptError::Unknown);
    }
}
