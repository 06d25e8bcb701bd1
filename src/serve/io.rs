//! A connection's socket as hyper sees it, plus two things hyper does not
//! do for us.
//!
//! 1. **Framing watch.** A request carrying both `Content-Length` and
//!    `Transfer-Encoding: chunked` is the shape of request smuggling (RFC
//!    9112 §6.1). hyper handles it the permitted way (it ignores the length
//!    and closes the connection afterwards) but hands the handler a request
//!    with the `Content-Length` header already removed, so nothing
//!    downstream can refuse it. [`Framing`] therefore follows the bytes
//!    hyper reads — request heads (parsed with httparse, as hyper does) and
//!    the body framing between them — and records, per request head and in
//!    order, whether it had both headers ([`Heads`]). The connection's
//!    service takes one record per request it is handed and the shim answers
//!    400 to a flagged one.
//! 2. **Write deadline.** A client that stops reading its answers (its
//!    receive window full) would hold the connection forever: a write that
//!    has waited longer than the deadline fails, and the connection ends.
//! 3. **Lingering close.** When the shim answers before the client has sent
//!    all of its request (413 for a declared oversize body, 408, 431),
//!    closing the socket with unread bytes in it makes the kernel send a
//!    reset, and the client may lose the answer. [`ConnIo`]'s shutdown first
//!    sends FIN, then reads and discards what the client still sends, for at
//!    most [`LINGER`] and [`LINGER_BYTES`].

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Longest a closing connection keeps reading what its client still sends.
pub const LINGER: Duration = Duration::from_secs(2);

/// Most bytes a closing connection reads and discards.
pub const LINGER_BYTES: usize = 2 << 20;

/// Header lines hyper accepts in one request (its default); the watch
/// parses with the same limit.
pub const MAX_HEADERS: usize = 100;

/// What the framing watch saw of each request head, oldest first: `true`
/// when the head had both `Content-Length` and `Transfer-Encoding`.
#[derive(Default)]
pub struct Heads(Mutex<VecDeque<bool>>);

impl Heads {
    /// The record of the next request hyper hands over; `None` when the
    /// watch saw no further head (it lost step, or gave up on a malformed
    /// connection).
    pub fn next(&self) -> Option<bool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn push(&self, smuggling_shape: bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(smuggling_shape);
    }
}

/// Where the watch is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head (request line and header lines).
    Head,
    /// Skipping this many bytes of a `Content-Length` body.
    Fixed(u64),
    /// Reading a chunk-size line: the size so far, whether any hex digit
    /// was seen, and whether the digits have ended (extensions follow).
    ChunkSize {
        size: u64,
        digits: bool,
        ended: bool,
    },
    /// Skipping this many bytes of chunk data.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data.
    ChunkDataEnd,
    /// Reading trailer lines; `true` at the start of a line.
    Trailer(bool),
    /// Something hyper will refuse too (it closes the connection); the
    /// watch stops.
    Gone,
}

/// Follows a connection's request framing; see the module documentation.
pub struct Framing {
    state: State,
    head: Vec<u8>,
    prev_lf: bool,
    max_head: usize,
    heads: Arc<Heads>,
}

impl Framing {
    /// A watch that gives up on heads longer than `max_head` bytes (hyper
    /// answers those 431) and records into `heads`.
    pub fn new(max_head: usize, heads: Arc<Heads>) -> Framing {
        Framing {
            state: State::Head,
            head: Vec::new(),
            prev_lf: false,
            max_head,
            heads,
        }
    }

    /// Whether the client is in the middle of a request (or the watch
    /// gave up): closing now could leave its bytes unread.
    pub fn mid_request(&self) -> bool {
        !(self.state == State::Head && self.head.is_empty())
    }

    /// Takes the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Gone => return,
                State::Head => data = self.feed_head(data),
                State::Fixed(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if n == k {
                        State::Head
                    } else {
                        State::Fixed(n - k)
                    };
                }
                State::ChunkData(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if n == k {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(n - k)
                    };
                }
                State::ChunkSize { .. } | State::ChunkDataEnd | State::Trailer(_) => {
                    self.state = self.chunk_byte(data[0]);
                    data = &data[1..];
                }
            }
        }
    }

    /// Head bytes: returns what follows the head once it is complete.
    fn feed_head<'a>(&mut self, mut data: &'a [u8]) -> &'a [u8] {
        if self.head.is_empty() {
            // Empty lines before a request line are skipped (RFC 9112 §2.2).
            let blank = data
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            data = &data[blank..];
            if data.is_empty() {
                return data;
            }
        }
        let mut end = None;
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                if self.prev_lf {
                    end = Some(i);
                    break;
                }
                self.prev_lf = true;
            } else if b != b'\r' {
                self.prev_lf = false;
            }
        }
        let Some(end) = end else {
            self.head.extend_from_slice(data);
            if self.head.len() > self.max_head {
                self.state = State::Gone;
            }
            return &[];
        };
        self.head.extend_from_slice(&data[..=end]);
        self.prev_lf = false;
        self.state = if self.head.len() > self.max_head {
            State::Gone
        } else {
            self.finish_head()
        };
        self.head.clear();
        &data[end + 1..]
    }

    /// A complete head: record it and return how its body is framed,
    /// following hyper's rules (`Transfer-Encoding` wins over
    /// `Content-Length`; it must end in `chunked`; HTTP/1.0 may not use it;
    /// differing lengths are refused).
    fn finish_head(&mut self) -> State {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return State::Gone,
        }
        let (mut te, mut chunked, mut has_cl) = (false, false, false);
        let mut length: Option<u64> = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                    .unwrap_or(false);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                has_cl = true;
                if te {
                    continue;
                }
                let digits = h.value.trim_ascii();
                let n = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u64>().ok());
                match (n, length) {
                    (None, _) => return State::Gone,
                    (Some(n), Some(prev)) if n != prev => return State::Gone,
                    (Some(n), _) => length = Some(n),
                }
            }
        }
        if te && (req.version != Some(1) || !chunked) {
            return State::Gone;
        }
        self.heads.push(te && has_cl);
        if te {
            return State::ChunkSize {
                size: 0,
                digits: false,
                ended: false,
            };
        }
        match length {
            Some(n) if n > 0 => State::Fixed(n),
            _ => State::Head,
        }
    }

    /// One byte of chunked framing outside chunk data.
    fn chunk_byte(&self, b: u8) -> State {
        match self.state {
            State::ChunkSize {
                size,
                digits,
                ended,
            } => match b {
                b'\n' if !digits => State::Gone,
                b'\n' if size == 0 => State::Trailer(true),
                b'\n' => State::ChunkData(size),
                _ if !ended && b.is_ascii_hexdigit() => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                        Some(size) => State::ChunkSize {
                            size,
                            digits: true,
                            ended,
                        },
                        None => State::Gone,
                    }
                }
                _ => State::ChunkSize {
                    size,
                    digits,
                    ended: true,
                },
            },
            State::ChunkDataEnd => match b {
                b'\r' => State::ChunkDataEnd,
                b'\n' => State::ChunkSize {
                    size: 0,
                    digits: false,
                    ended: false,
                },
                _ => State::Gone,
            },
            State::Trailer(line_start) => match b {
                b'\n' if line_start => State::Head,
                b'\n' => State::Trailer(true),
                b'\r' => State::Trailer(line_start),
                _ => State::Trailer(false),
            },
            other => other,
        }
    }
}

/// How far the close has got.
enum Close {
    Open,
    Lingering { until: Pin<Box<Sleep>>, left: usize },
    Closed,
}

/// A client connection: the socket (TCP, or a Unix socket for the admin
/// listener), its [`Framing`] watch, the write deadline and the lingering
/// close. Reads and writes go straight to the socket.
pub struct ConnIo<S = TcpStream> {
    stream: S,
    framing: Framing,
    write_timeout: Duration,
    /// Set while a write waits for the client to read.
    write_stall: Option<Pin<Box<Sleep>>>,
    close: Close,
}

impl<S> ConnIo<S> {
    /// Wraps an accepted socket; a write may wait at most `write_timeout`
    /// for the client to make room.
    pub fn new(stream: S, framing: Framing, write_timeout: Duration) -> ConnIo<S> {
        ConnIo {
            stream,
            framing,
            write_timeout,
            write_stall: None,
            close: Close::Open,
        }
    }

    /// Passes a write's outcome through; a write that stays pending past
    /// the deadline fails with `TimedOut`.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_stall = None;
            return r;
        }
        let timeout = self.write_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            self.write_stall = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its answer in time",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        this.framing.feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.deadline(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.deadline(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.deadline(cx, r)
    }

    /// Sends FIN; then, if the client was mid-request, reads and discards
    /// until it closes, [`LINGER`] passes or [`LINGER_BYTES`] were read.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.close {
                Close::Open => {
                    let shut = ready!(Pin::new(&mut this.stream).poll_shutdown(cx));
                    if shut.is_err() || !this.framing.mid_request() {
                        this.close = Close::Closed;
                        return Poll::Ready(shut);
                    }
                    this.close = Close::Lingering {
                        until: Box::pin(tokio::time::sleep(LINGER)),
                        left: LINGER_BYTES,
                    };
                }
                Close::Lingering { until, left } => {
                    if until.as_mut().poll(cx).is_ready() {
                        this.close = Close::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 8192];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.stream).poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() && buf.filled().len() < *left => {
                            *left -= buf.filled().len();
                        }
                        _ => this.close = Close::Closed,
                    }
                }
                Close::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(max: usize) -> (Framing, Arc<Heads>) {
        let heads = Arc::new(Heads::default());
        (Framing::new(max, heads.clone()), heads)
    }

    fn drain(heads: &Heads) -> Vec<bool> {
        std::iter::from_fn(|| heads.next()).collect()
    }

    const CL: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n";
    const GET: &[u8] = b"\r\nGET /healthz HTTP/1.1\nHost: x\n\n";

    #[test]
    fn pipelined_requests_are_recorded_in_order_at_any_split() {
        let both_cl_first =
            b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let both_te_first =
            b"POST /d HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";
        let stream: Vec<u8> =
            [CL, CHUNKED, GET, &both_cl_first[..], &both_te_first[..], CL].concat();
        for split in [1, 2, 3, 7, 64, stream.len()] {
            let (mut f, heads) = watch(64 * 1024);
            for part in stream.chunks(split) {
                f.feed(part);
            }
            assert_eq!(
                drain(&heads),
                vec![false, false, false, true, true, false],
                "split {split}"
            );
            assert!(!f.mid_request(), "split {split}");
        }
    }

    #[test]
    fn a_partial_body_or_head_is_mid_request() {
        let (mut f, heads) = watch(1024);
        f.feed(&CL[..CL.len() - 2]);
        assert!(f.mid_request());
        assert_eq!(drain(&heads), vec![false]);
        f.feed(&CL[CL.len() - 2..]);
        assert!(!f.mid_request());
        f.feed(b"POST / HTTP/1.1\r\nHo");
        assert!(f.mid_request());
    }

    #[test]
    fn what_hyper_refuses_stops_the_watch() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            let (mut f, heads) = watch(1024);
            f.feed(bad);
            f.feed(GET);
            assert!(f.mid_request(), "{}", String::from_utf8_lossy(bad));
            assert_eq!(heads.next(), None, "{}", String::from_utf8_lossy(bad));
        }
        // A head over the limit (hyper answers 431).
        let (mut f, heads) = watch(100);
        f.feed(b"GET / HTTP/1.1\r\nX: ");
        f.feed(&[b'a'; 200]);
        f.feed(b"\r\n\r\n");
        assert_eq!(heads.next(), None);
    }
}
