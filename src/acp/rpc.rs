//! The client's connection to the agent: its state ([`Client`]) and the
//! JSON-RPC 2.0 framing over the agent's stdin and stdout — one object per
//! line, each line read bounded ([`super::LINE_MAX_BYTES`]); calls and
//! their answers, answers to the agent's requests, what is skipped, and
//! how an agent's text shows on one log line.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{Failure, Outcome, Request, LINE_MAX_BYTES};
use crate::agent::bounded;

/// How much of one agent text a log line shows, in characters.
const LOG_TEXT_MAX: usize = 300;

/// How many lines that are not JSON-RPC messages are logged; later ones
/// are counted only.
pub(super) const GARBAGE_LOGGED_MAX: usize = 50;

/// Why the exchange cannot go on.
pub(super) struct Fatal(pub(super) String);

/// orch's side of one exchange: the connection (the agent's output and
/// input, the log) and what the session has gathered so far. Its methods
/// are spread by part: framing here, the session in `session`, the
/// agent's requests in `requests`.
pub(super) struct Client<'a, R, W, L> {
    pub(super) from: R,
    pub(super) to: W,
    pub(super) log: L,
    pub(super) req: &'a Request,
    /// The worktree with its symlinks resolved (both spellings are inside).
    pub(super) root: PathBuf,
    pub(super) next_id: i64,
    pub(super) outcome: Outcome,
    /// `session/update`s are replayed history (during `session/load`).
    pub(super) replaying: bool,
    /// Whether updates belong to the prompt's turn (texts are kept).
    pub(super) in_turn: bool,
    /// The next text chunk starts a new message (a tool call came).
    pub(super) message_closed: bool,
    pub(super) text: String,
    pub(super) garbage: usize,
    /// The session's total cost in USD at the start of the turn, and now.
    pub(super) cost_at_start: Option<f64>,
    pub(super) cost_now: Option<f64>,
}

impl<'a, R: BufRead, W: Write, L: Write> Client<'a, R, W, L> {
    pub(super) fn new(from: R, to: W, req: &'a Request, log: L) -> Self {
        Client {
            from,
            to,
            log,
            root: req
                .worktree
                .canonicalize()
                .unwrap_or_else(|_| req.worktree.clone()),
            req,
            next_id: 1,
            outcome: Outcome::new(),
            replaying: false,
            in_turn: false,
            message_closed: false,
            text: String::new(),
            garbage: 0,
            cost_at_start: None,
            cost_now: None,
        }
    }

    pub(super) fn note(&mut self, line: &str) {
        let _ = self.log.write_all(format!("acp: {line}\n").as_bytes());
    }

    /// [`Client::call`], an error answer ending the exchange.
    pub(super) fn call_ok(&mut self, method: &str, params: Value) -> Result<Value, Fatal> {
        match self.call(method, params)? {
            Ok(v) => Ok(v),
            Err(e) => {
                let why = match e.code {
                    Some(c) => format!("{method} answered error {c}: {}", e.message),
                    None => format!("{method}: {}", e.message),
                };
                self.outcome.error = Some(e);
                Err(Fatal(why))
            }
        }
    }

    /// Sends request `method` and handles what the agent sends until its
    /// answer: `Ok(Ok(result))`, `Ok(Err(the error answered))`, or
    /// `Err` when no answer can come.
    pub(super) fn call(
        &mut self,
        method: &str,
        params: Value,
    ) -> Result<Result<Value, Failure>, Fatal> {
        let id = self.next_id;
        self.next_id += 1;
        let summary = match method {
            "session/prompt" => format!("{} bytes of prompt", self.req.prompt.len()),
            _ => bounded(&params.to_string(), LOG_TEXT_MAX),
        };
        self.note(&format!("→ {method} #{id}: {summary}"));
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        loop {
            let Some(msg) = self.read()? else { continue };
            let method_of = msg
                .get("method")
                .and_then(Value::as_str)
                .map(str::to_string);
            let rid = msg
                .get("id")
                .filter(|i| i.is_i64() || i.is_string())
                .cloned();
            match (method_of, rid) {
                (Some(m), Some(rid)) => self.on_request(&m, rid, msg.get("params"))?,
                (Some(m), None) => self.on_notification(&m, msg.get("params")),
                (None, Some(rid)) if rid.as_i64() == Some(id) => {
                    if let Some(e) = msg.get("error") {
                        let code = e.get("code").and_then(Value::as_i64);
                        let message = e
                            .get("message")
                            .and_then(Value::as_str)
                            .map(|m| bounded(m, 4000))
                            .unwrap_or_else(|| bounded(&e.to_string(), 4000));
                        self.note(&format!(
                            "← {method} #{id} error {}: {}",
                            code.map_or("?".into(), |c| c.to_string()),
                            log_text(&message)
                        ));
                        return Ok(Err(Failure {
                            method: method.into(),
                            code,
                            message,
                        }));
                    }
                    let result = msg.get("result").cloned().unwrap_or(Value::Null);
                    self.note(&format!(
                        "← {method} #{id}: {}",
                        bounded(&result.to_string(), LOG_TEXT_MAX)
                    ));
                    return Ok(Ok(result));
                }
                (None, Some(rid)) => self.skip(&format!("an answer to no request ({rid})")),
                (None, None) => self.skip("a message with neither method nor id"),
            }
        }
    }

    pub(super) fn send(&mut self, msg: &Value) -> Result<(), Fatal> {
        let mut line = msg.to_string();
        line.push('\n');
        self.to
            .write_all(line.as_bytes())
            .and_then(|()| self.to.flush())
            .map_err(|e| Fatal(format!("the agent's input is closed ({e})")))
    }

    /// The next line as a JSON object; `Ok(None)` for a line skipped.
    pub(super) fn read(&mut self) -> Result<Option<Value>, Fatal> {
        let mut buf = Vec::new();
        match read_line_bounded(&mut self.from, LINE_MAX_BYTES, &mut buf) {
            Ok(true) => {}
            Ok(false) => return Err(Fatal("the agent closed its output before answering".into())),
            Err(e) => return Err(Fatal(format!("reading the agent's output: {e}"))),
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim();
        if line.is_empty() {
            return Ok(None);
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => Ok(Some(v)),
            _ => {
                self.skip(&format!("not a JSON-RPC message: {}", log_text(line)));
                Ok(None)
            }
        }
    }

    pub(super) fn skip(&mut self, what: &str) {
        self.garbage += 1;
        if self.garbage <= GARBAGE_LOGGED_MAX {
            self.note(&format!("skipped {what}"));
        }
    }

    pub(super) fn answer(
        &mut self,
        id: Value,
        result: Result<Value, (i64, String)>,
    ) -> Result<(), Fatal> {
        let msg = match result {
            Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
            Err((code, message)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            }
        };
        self.send(&msg)
    }
}

/// An agent's text for one log line: cut, quoted, control characters
/// escaped (JSON string syntax), so a line of the log stays one line.
pub(super) fn log_text(s: &str) -> String {
    Value::String(bounded(s, LOG_TEXT_MAX)).to_string()
}

/// A protocol word (a kind, a status, an id) for a log line: as is when it
/// is a short run of `[A-Za-z0-9_.:/-]`, else as [`log_text`] shows it.
pub(super) fn log_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:/-".contains(c));
    if plain {
        s.to_string()
    } else {
        log_text(s)
    }
}

/// Reads one line (its `\n` dropped) into `buf`: `Ok(true)` for a line,
/// `Ok(false)` at the end of input with nothing read.
///
/// Errors: a line longer than `max` bytes ([`io::ErrorKind::InvalidData`];
/// nothing past `max` is kept), and read errors.
pub(super) fn read_line_bounded(
    r: &mut impl BufRead,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    buf.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (take, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line longer than {max} bytes"),
            ));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acp::testkit::ran_plain;
    use crate::process::ExitKind;

    #[test]
    pub(super) fn garbage_on_stdout_is_logged_cut_and_skipped() {
        let r = ran_plain("garbage");
        assert!(r.outcome.success(), "{:?}\n{}", r.outcome, r.log);
        assert!(r.wt().join("hello.txt").exists());
        for needle in [
            "acp: skipped not a JSON-RPC message: \"Ripgrep is not available. Falling back to GrepTool.\"",
            "acp: skipped not a JSON-RPC message: \"[1, 2, 3]\"",
            "acp: skipped an answer to no request (999)",
            "acp: skipped a session/update without an update",
            "acp: skipped a message with neither method nor id",
            "\\u001b[31mred\\u0000 text",
        ] {
            assert!(r.log.contains(needle), "{needle:?} not in\n{}", r.log);
        }
        assert!(
            !r.log.contains('\u{1b}') && !r.log.contains('\0'),
            "{}",
            r.log
        );
    }

    #[test]
    pub(super) fn a_line_too_long_ends_the_run_without_reading_it_all() {
        let r = ran_plain("huge_line");
        let e = r.outcome.error.as_ref().unwrap();
        assert!(
            e.message.contains("a line longer than 16777216 bytes"),
            "{e:?}"
        );
        assert_ne!(r.out.exit, ExitKind::TimedOut);
        let a = r.outcome.to_agent_result();
        let err = crate::agent::run_error(r.outcome.exit_code(), None, Some(&a)).unwrap();
        assert!(err.retryable, "{err:?}");
        assert!(r.log.len() < 100_000, "the line reached the log");
    }

    #[test]
    pub(super) fn lines_are_read_bounded_and_texts_logged_on_one_line() {
        let mut buf = Vec::new();
        let mut r = io::Cursor::new(b"abc\ndefghij\nxy".to_vec());
        assert!(read_line_bounded(&mut r, 5, &mut buf).unwrap());
        assert_eq!(buf, b"abc");
        assert!(read_line_bounded(&mut r, 5, &mut buf).is_err());
        let mut r = io::Cursor::new(b"xy".to_vec());
        assert!(read_line_bounded(&mut r, 5, &mut buf).unwrap());
        assert_eq!(buf, b"xy");
        assert!(!read_line_bounded(&mut r, 5, &mut buf).unwrap());
        assert_eq!(log_text("a\nb\u{7}"), "\"a\\nb\\u0007\"");
    }
}
