//! orch as an Agent Client Protocol client (DESIGN §4 "Agents", kind
//! `acp`): any ACP agent runs as a child speaking JSON-RPC 2.0, one object
//! per line, on its stdin and stdout, and orch answers what it asks. So
//! what other kinds leave to parsing comes first-hand here: orch reads and
//! writes the files the agent asks for (only inside the worktree), decides
//! each permission request by the role's [`Permissions`] (a denial is
//! known because orch made it), and the result is the `session/prompt`
//! response itself.
//!
//! The exchange (protocol version 1; shapes from the real transcripts of
//! `gemini --acp` in `tests/fixtures/agents/acp/`): `initialize` (orch
//! offers `fs.readTextFile` and `fs.writeTextFile`, no terminal),
//! `authenticate` when the role names a method, `session/new` with the
//! worktree as `cwd` — or `session/load` of the previous session on
//! rework, when the agent can — then one `session/prompt`, answering the
//! agent's requests (`fs/read_text_file`, `fs/write_text_file`,
//! `session/request_permission`; anything else is "method not found")
//! and logging every `session/update` until the prompt's response. Every
//! message is one line `acp: …` in the run's log.
//!
//! Everything the agent sends is untrusted: a line longer than
//! [`LINE_MAX_BYTES`] ends the run, a line that is not a JSON-RPC message
//! is logged (cut) and skipped, texts are cut before they are kept or
//! logged, a path is confined to the worktree by the kernel
//! ([`crate::untrusted::open_beneath`]), and nothing here panics on what
//! the agent sends.
//!
//! Why own code and not the `agent-client-protocol` crate: that crate is
//! an async framework (roles, proxies, MCP servers) whose typed schema
//! refuses what it does not know and which turns on serde_json's
//! `preserve_order` for the whole binary; the part orch needs is a dozen
//! fields read leniently from `serde_json::Value` over a blocking pipe.

use std::io::{self, BufRead, Read as _, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::agent::{bounded, AgentResult, Usage};
use crate::process::{RunOutcome, RunSpec, Runner, Spawned};

/// The ACP version orch speaks (`initialize`'s `protocolVersion`).
pub const PROTOCOL_VERSION: i64 = 1;

/// Longest line orch reads from an agent, in bytes: a longer one ends the
/// run (`fs/write_text_file` carries a whole file on one line).
pub const LINE_MAX_BYTES: usize = 16 << 20;

/// Largest file orch reads for an agent (`fs/read_text_file`), in bytes.
pub const FILE_MAX_BYTES: u64 = 8 << 20;

/// Longest final text kept, in bytes (its end is kept).
const TEXT_MAX_BYTES: usize = 64 << 10;

/// How much of one agent text a log line shows, in characters.
const LOG_TEXT_MAX: usize = 300;

/// How many lines that are not JSON-RPC messages are logged; later ones
/// are counted only.
const GARBAGE_LOGGED_MAX: usize = 50;

pub use crate::config::Permissions;

/// What one ACP run is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The prompt, sent as one text block of `session/prompt`.
    pub prompt: String,
    /// The task's worktree (absolute): the session's `cwd` and the only
    /// folder whose files orch reads or writes for the agent.
    pub worktree: PathBuf,
    /// A session id to `session/load` (rework with `resume`); when the
    /// agent cannot load sessions or refuses this one, a new session is
    /// made instead (and the log says so).
    pub resume: Option<String>,
    /// How permission requests are answered.
    pub permissions: Permissions,
    /// The `authenticate` method id to call before the session (e.g.
    /// `gemini-api-key`); `None`: no `authenticate`.
    pub auth_method: Option<String>,
}

/// A failed call: the JSON-RPC error the agent answered, or why no answer
/// came (then `code` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The call that failed, e.g. `session/prompt`.
    pub method: String,
    /// The JSON-RPC error code. Gemini puts the model API's HTTP status
    /// here (400, 429); `-32000` is "authentication required".
    pub code: Option<i64>,
    /// The error's message (cut), or what went wrong.
    pub message: String,
}

/// What an ACP run produced, first-hand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// `agentInfo` of `initialize`: `name version`.
    pub agent: Option<String>,
    /// The session the prompt ran in (new or loaded), cut to 200 chars.
    pub session_id: Option<String>,
    /// Whether that session was loaded (`session/load`).
    pub resumed: bool,
    /// The prompt response's `stopReason` (`end_turn`, `max_tokens`,
    /// `max_turn_requests`, `refusal`, `cancelled`), cut to 64 chars.
    pub stop_reason: Option<String>,
    /// Tokens of this turn: the response's `usage` (`inputTokens` less
    /// `cachedReadTokens`, `outputTokens`, `cachedReadTokens`,
    /// `cachedWriteTokens`), else Gemini's `_meta.quota.token_count`
    /// (`input_tokens`, `output_tokens`; no cache figures).
    pub usage: Option<Usage>,
    /// US dollars this turn cost, when the agent sends `usage_update`s
    /// with a `USD` cost (the session's total, diffed over the turn).
    pub cost_usd: Option<f64>,
    /// The agent's last message of the turn: its `agent_message_chunk`
    /// texts after its last tool call (at most 64 KiB, the end kept).
    pub final_text: Option<String>,
    /// The call that failed, if one did.
    pub error: Option<Failure>,
    /// What orch refused the agent, as `{tool_name, tool_use_id,
    /// tool_input: {path}, kind, why}` (the shape
    /// [`crate::agent::name_denials`] names): permission requests its
    /// policy denied and file requests outside the worktree.
    pub permission_denials: Vec<Value>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            agent: None,
            session_id: None,
            resumed: false,
            stop_reason: None,
            usage: None,
            cost_usd: None,
            final_text: None,
            error: None,
            permission_denials: Vec::new(),
        }
    }

    /// An outcome whose exchange never ended (see [`run`]).
    fn lost(message: &str) -> Outcome {
        Outcome {
            error: Some(Failure {
                method: "session/prompt".into(),
                code: None,
                message: message.into(),
            }),
            ..Outcome::new()
        }
    }

    /// The turn ended normally: `stopReason` `end_turn` and no error.
    pub fn success(&self) -> bool {
        self.error.is_none() && self.stop_reason.as_deref() == Some("end_turn")
    }

    /// The run's exit code as orch records it: 0 on [`Outcome::success`],
    /// else 1 (the agent process itself is stopped by orch).
    pub fn exit_code(&self) -> i64 {
        if self.success() {
            0
        } else {
            1
        }
    }

    /// The model API's HTTP status and error type, when the failure
    /// carries one: a JSON-RPC code 400–599 is the status (Gemini), its
    /// message's `error.status` the type when the message is the API's
    /// JSON body; `-32000` (authentication required) reads as 401
    /// `auth_required`, so it fails at once as a bad credential does.
    pub fn api_error(&self) -> Option<(i64, Option<String>)> {
        let e = self.error.as_ref()?;
        match e.code? {
            c @ 400..=599 => Some((c, api_body(&e.message).and_then(|b| b.1))),
            -32000 => Some((401, Some("auth_required".into()))),
            _ => None,
        }
    }

    /// The same run as the result every kind yields ([`AgentResult`]), so
    /// [`crate::agent::run_error`] and [`crate::agent::limit_hit`] class it
    /// as Claude Code's: 400/401/403 fail at once, 429 pauses, 5xx and a
    /// lost exchange retry. `subtype` is `success`, `error_<stopReason>`
    /// or `error_api` (a JSON-RPC error); `result_text` is the final text,
    /// or the error's message (the API's own message when the error is
    /// its JSON body).
    pub fn to_agent_result(&self) -> AgentResult {
        let success = self.success();
        let api = self.api_error();
        let subtype = if success {
            "success".to_string()
        } else if self.error.is_some() {
            "error_api".to_string()
        } else {
            let stop = self.stop_reason.as_deref().unwrap_or("none");
            let clean = stop.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            format!("error_{}", if clean { stop } else { "stop_reason" })
        };
        let (result_text, errors) = match &self.error {
            Some(e) => {
                let text = api_body(&e.message)
                    .map(|b| b.0)
                    .unwrap_or_else(|| e.message.clone());
                let errors = if api.is_none() {
                    vec![match e.code {
                        Some(c) => format!("{} answered error {c}: {}", e.method, e.message),
                        None => format!("{}: {}", e.method, e.message),
                    }]
                } else {
                    Vec::new()
                };
                (Some(text), errors)
            }
            None if success => (self.final_text.clone(), Vec::new()),
            None => (
                self.final_text.clone(),
                vec![format!(
                    "the turn stopped: {}",
                    self.stop_reason.as_deref().unwrap_or("no stopReason")
                )],
            ),
        };
        AgentResult {
            subtype,
            is_error: !success,
            success,
            session_id: self.session_id.clone(),
            num_turns: None,
            usage: self.usage,
            cost_usd: self.cost_usd,
            permission_denials: self.permission_denials.clone(),
            result_text,
            errors,
            api_error_status: api.as_ref().map(|a| a.0),
            api_error_type: api.and_then(|a| a.1),
            // The turn's own usage: no session total to diff, no split by
            // model.
            cumulative: None,
            model_usage: Vec::new(),
        }
    }
}

/// The API's own `(message, status)` when `message` is an API error body
/// `{"error": {"message", "status"}}` (Gemini's 400).
fn api_body(message: &str) -> Option<(String, Option<String>)> {
    let v: Value = serde_json::from_str(message).ok()?;
    let e = v.get("error")?;
    let text = e.get("message")?.as_str()?;
    let status = e
        .get("status")
        .and_then(Value::as_str)
        .filter(|s| s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string);
    Some((bounded(text, 2000), status))
}

/// Runs the agent `spec` names (`spec.stdin_path` is not used: the prompt
/// is `req.prompt`) through `runner` as an ACP agent, with the timeout,
/// heartbeats and group kill of [`crate::process::run`]; `on_spawn` and
/// `on_tick` as there. Each message is logged to `spec.log_path` (the
/// agent's stderr goes there too). When the prompt's response has come,
/// the agent's stdin is closed and, if it stays, its group is killed
/// after `spec.kill_grace`.
///
/// Returns how the process ended and what the exchange produced (a killed
/// or vanished agent: an [`Outcome`] whose error says so).
///
/// Errors: those of [`crate::process::run_piped`] (spawn, on_spawn), and
/// a log file that cannot be opened.
pub fn run(
    runner: &Runner,
    spec: &RunSpec,
    req: Request,
    tick: Duration,
    on_spawn: impl FnOnce(&Spawned) -> anyhow::Result<()>,
    on_tick: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(RunOutcome, Outcome)> {
    use anyhow::Context as _;
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating log directory {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .with_context(|| format!("opening log file {}", spec.log_path.display()))?;
    let (out, talked) = runner.run_piped(spec, tick, on_spawn, on_tick, move |stdin, stdout| {
        exchange(io::BufReader::new(stdout), stdin, &req, log)
    })?;
    let outcome = talked
        .unwrap_or_else(|| Outcome::lost("the exchange did not end after the agent was stopped"));
    Ok((out, outcome))
}

/// Runs the ACP exchange of `req` over an agent's stdout (`from`) and
/// stdin (`to`), logging one `acp: …` line per message to `log`. Returns
/// when the prompt's response came, or at the first failure (the agent
/// closed its output, a line too long, an error answer before the
/// prompt); never panics on what the agent sends. Writing to `log` is best
/// effort.
pub fn exchange(from: impl BufRead, to: impl Write, req: &Request, log: impl Write) -> Outcome {
    let mut c = Client::new(from, to, req, log);
    c.run();
    c.outcome
}

/// Why the exchange cannot go on.
struct Fatal(String);

struct Client<'a, R, W, L> {
    from: R,
    to: W,
    log: L,
    req: &'a Request,
    /// The worktree with its symlinks resolved (both spellings are inside).
    root: PathBuf,
    next_id: i64,
    outcome: Outcome,
    /// `session/update`s are replayed history (during `session/load`).
    replaying: bool,
    /// Whether updates belong to the prompt's turn (texts are kept).
    in_turn: bool,
    /// The next text chunk starts a new message (a tool call came).
    message_closed: bool,
    text: String,
    garbage: usize,
    /// The session's total cost in USD at the start of the turn, and now.
    cost_at_start: Option<f64>,
    cost_now: Option<f64>,
}

impl<'a, R: BufRead, W: Write, L: Write> Client<'a, R, W, L> {
    fn new(from: R, to: W, req: &'a Request, log: L) -> Self {
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

    fn note(&mut self, line: &str) {
        let _ = self.log.write_all(format!("acp: {line}\n").as_bytes());
    }

    fn run(&mut self) {
        if let Err(Fatal(why)) = self.session() {
            self.note(&format!("exchange ended: {why}"));
            if self.outcome.error.is_none() {
                self.outcome.error = Some(Failure {
                    method: "session/prompt".into(),
                    code: None,
                    message: why,
                });
            }
        }
        if self.garbage > GARBAGE_LOGGED_MAX {
            let n = self.garbage;
            self.note(&format!("{n} lines in all were not JSON-RPC messages"));
        }
    }

    /// The whole exchange; `Err` when it cannot go on (the error is in
    /// the outcome by then when the agent answered one).
    fn session(&mut self) -> Result<(), Fatal> {
        let init = self.call_ok(
            "initialize",
            json!({
                "protocolVersion": PROTOCOL_VERSION,
                "clientCapabilities": {
                    "fs": {"readTextFile": true, "writeTextFile": true},
                    "terminal": false,
                },
                "clientInfo": {"name": "orch", "version": env!("CARGO_PKG_VERSION")},
            }),
        )?;
        let version = init.get("protocolVersion").and_then(Value::as_i64);
        let info = init.get("agentInfo");
        let s = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(|s| bounded(s, 60))
        };
        self.outcome.agent = match (s(info, "name"), s(info, "version")) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (n, _) => n,
        };
        let can_load = init
            .pointer("/agentCapabilities/loadSession")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let methods: Vec<String> = init
            .get("authMethods")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.get("id").and_then(Value::as_str))
                    .map(|s| bounded(s, 60))
                    .take(20)
                    .collect()
            })
            .unwrap_or_default();
        self.note(&format!(
            "agent {} speaks protocol {}; loadSession {can_load}; auth methods [{}]",
            self.outcome.agent.as_deref().unwrap_or("(unnamed)"),
            version.map_or("?".into(), |v| v.to_string()),
            methods.join(", ")
        ));
        if version != Some(PROTOCOL_VERSION) {
            return self.fail(
                "initialize",
                Some(-32600),
                format!(
                    "the agent speaks ACP protocol version {}, orch speaks {PROTOCOL_VERSION}",
                    version.map_or("(none)".into(), |v| v.to_string())
                ),
            );
        }
        if let Some(m) = &self.req.auth_method {
            self.call_ok("authenticate", json!({"methodId": m}))?;
        }
        let cwd = self.req.worktree.to_string_lossy().into_owned();
        let mut session = None;
        if let Some(id) = &self.req.resume {
            if can_load {
                self.replaying = true;
                let loaded = self.call(
                    "session/load",
                    json!({"sessionId": id, "cwd": cwd, "mcpServers": []}),
                )?;
                self.replaying = false;
                match loaded {
                    Ok(_) => {
                        self.outcome.resumed = true;
                        session = Some(id.clone());
                    }
                    Err(e) => self.note(&format!(
                        "session/load of {} refused ({}); a new session instead",
                        bounded(id, 80),
                        e.message
                    )),
                }
            } else {
                self.note("the agent cannot load sessions; a new session instead of resuming");
            }
        }
        let session = match session {
            Some(s) => s,
            None => {
                let new = self.call_ok("session/new", json!({"cwd": cwd, "mcpServers": []}));
                if let Err(Fatal(why)) = &new {
                    if self
                        .outcome
                        .error
                        .as_ref()
                        .is_some_and(|e| e.code == Some(-32000))
                    {
                        let why = format!(
                            "{why}; set the role's auth_method to one the agent offers: {}",
                            methods.join(", ")
                        );
                        if let Some(e) = self.outcome.error.as_mut() {
                            e.message = why;
                        }
                    }
                }
                let new = new?;
                match new.get("sessionId").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => {
                        return self.fail("session/new", None, "the answer has no sessionId".into())
                    }
                }
            }
        };
        let session = bounded(&session, 200);
        self.note(&format!(
            "session {} ({})",
            session,
            if self.outcome.resumed {
                "loaded"
            } else {
                "new"
            }
        ));
        self.outcome.session_id = Some(session.clone());

        self.in_turn = true;
        self.cost_at_start = self.cost_now;
        let answer = self.call(
            "session/prompt",
            json!({
                "sessionId": session,
                "prompt": [{"type": "text", "text": self.req.prompt}],
            }),
        )?;
        self.in_turn = false;
        if !self.text.is_empty() {
            self.outcome.final_text = Some(std::mem::take(&mut self.text));
        }
        // A new session starts at 0; a loaded one's total before the turn
        // must have been reported, else this turn's share is unknown.
        let start = match self.cost_at_start {
            None if !self.outcome.resumed => Some(0.0),
            s => s,
        };
        if let (Some(start), Some(now)) = (start, self.cost_now) {
            self.outcome.cost_usd = Some((now - start).max(0.0));
        }
        let result = match answer {
            Ok(r) => r,
            Err(e) => {
                self.outcome.error = Some(e);
                return Ok(());
            }
        };
        let stop = result
            .get("stopReason")
            .and_then(Value::as_str)
            .map(|s| bounded(s, 64));
        self.outcome.usage = turn_usage(&result);
        self.note(&format!(
            "turn ended: stopReason {}; tokens {}",
            stop.as_deref().unwrap_or("(none)"),
            self.outcome.usage.map_or("unknown".into(), |u| format!(
                "in {} out {} cache-read {} cache-write {}",
                u.input_tokens,
                u.output_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens
            ))
        ));
        self.outcome.stop_reason = stop;
        Ok(())
    }

    /// Records a failure of `method` and ends the exchange.
    fn fail(&mut self, method: &str, code: Option<i64>, message: String) -> Result<(), Fatal> {
        self.outcome.error = Some(Failure {
            method: method.into(),
            code,
            message: message.clone(),
        });
        Err(Fatal(message))
    }

    /// [`Client::call`], an error answer ending the exchange.
    fn call_ok(&mut self, method: &str, params: Value) -> Result<Value, Fatal> {
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
    fn call(&mut self, method: &str, params: Value) -> Result<Result<Value, Failure>, Fatal> {
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

    fn send(&mut self, msg: &Value) -> Result<(), Fatal> {
        let mut line = msg.to_string();
        line.push('\n');
        self.to
            .write_all(line.as_bytes())
            .and_then(|()| self.to.flush())
            .map_err(|e| Fatal(format!("the agent's input is closed ({e})")))
    }

    /// The next line as a JSON object; `Ok(None)` for a line skipped.
    fn read(&mut self) -> Result<Option<Value>, Fatal> {
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

    fn skip(&mut self, what: &str) {
        self.garbage += 1;
        if self.garbage <= GARBAGE_LOGGED_MAX {
            self.note(&format!("skipped {what}"));
        }
    }

    fn answer(&mut self, id: Value, result: Result<Value, (i64, String)>) -> Result<(), Fatal> {
        let msg = match result {
            Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
            Err((code, message)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            }
        };
        self.send(&msg)
    }

    fn on_request(&mut self, method: &str, id: Value, params: Option<&Value>) -> Result<(), Fatal> {
        let empty = json!({});
        let params = params.unwrap_or(&empty);
        let result = match method {
            "fs/read_text_file" => self.read_file(params),
            "fs/write_text_file" => self.write_file(params),
            "session/request_permission" => Ok(self.permission(params)),
            _ => {
                self.note(&format!(
                    "← request {} #{}: not offered",
                    log_word(method),
                    bounded(&id.to_string(), 40)
                ));
                Err((
                    -32601,
                    format!("Method not found: {}", bounded(method, 100)),
                ))
            }
        };
        self.answer(id, result)
    }

    /// `fs/read_text_file {path, line?, limit?}` → `{content}`. A missing
    /// file inside the worktree reads as empty: Gemini 0.61.0 fails a
    /// `write_file` of a new file on the "not found" error the protocol
    /// names (tests/fixtures/agents/acp/README.md, "Pitfall").
    fn read_file(&mut self, params: &Value) -> Result<Value, (i64, String)> {
        let path = params.get("path").and_then(Value::as_str).unwrap_or("");
        let rel = match self.confine(path, false) {
            Ok(rel) => rel,
            Err(why) => return Err(self.refuse("fs/read_text_file", path, &why)),
        };
        let opened = crate::untrusted::open_beneath(&self.req.worktree, &rel, false);
        let bytes = match opened {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.note(&format!(
                    "← fs/read_text_file {}: no such file, read as empty",
                    log_text(path)
                ));
                return Ok(json!({"content": ""}));
            }
            Err(e) => return Err(self.refuse("fs/read_text_file", path, &beneath_error(&e))),
            Ok(f) => {
                let mut bytes = Vec::new();
                match f.take(FILE_MAX_BYTES + 1).read_to_end(&mut bytes) {
                    Ok(_) if bytes.len() as u64 > FILE_MAX_BYTES => {
                        self.note(&format!(
                            "← fs/read_text_file {}: larger than {FILE_MAX_BYTES} bytes",
                            log_text(path)
                        ));
                        return Err((-32603, format!("larger than {FILE_MAX_BYTES} bytes")));
                    }
                    Ok(_) => bytes,
                    Err(e) => return Err((-32603, format!("reading: {e}"))),
                }
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            self.note(&format!(
                "← fs/read_text_file {}: not UTF-8 text",
                log_text(path)
            ));
            return Err((-32603, "not UTF-8 text".into()));
        };
        let line = params.get("line").and_then(Value::as_u64);
        let limit = params.get("limit").and_then(Value::as_u64);
        let content = match (line, limit) {
            (None, None) => text,
            _ => {
                let skip = line.unwrap_or(1).saturating_sub(1) as usize;
                let take = limit.map_or(usize::MAX, |l| l as usize);
                text.split_inclusive('\n')
                    .skip(skip)
                    .take(take)
                    .collect::<String>()
            }
        };
        self.note(&format!(
            "← fs/read_text_file {}: {} bytes read",
            log_text(path),
            content.len()
        ));
        Ok(json!({"content": content}))
    }

    /// `fs/write_text_file {path, content}` → `{}`: orch writes the file,
    /// never outside the worktree nor into a `.git`.
    fn write_file(&mut self, params: &Value) -> Result<Value, (i64, String)> {
        let path = params.get("path").and_then(Value::as_str).unwrap_or("");
        let Some(content) = params.get("content").and_then(Value::as_str) else {
            self.note(&format!(
                "← fs/write_text_file {}: no content",
                log_text(path)
            ));
            return Err((-32602, "content must be a string".into()));
        };
        let rel = match self.confine(path, true) {
            Ok(rel) => rel,
            Err(why) => return Err(self.refuse("fs/write_text_file", path, &why)),
        };
        let written =
            crate::untrusted::open_beneath(&self.req.worktree, &rel, true).and_then(|mut f| {
                f.set_len(0)?;
                f.write_all(content.as_bytes())
            });
        match written {
            Ok(()) => {
                self.note(&format!(
                    "← fs/write_text_file {}: {} bytes written",
                    log_text(path),
                    content.len()
                ));
                Ok(json!({}))
            }
            Err(e) => Err(self.refuse("fs/write_text_file", path, &beneath_error(&e))),
        }
    }

    /// The path relative to the worktree, when `path` is absolute, names
    /// no `..` and lies inside the worktree (as given or resolved); for a
    /// write, not in a `.git`.
    fn confine(&self, path: &str, write: bool) -> Result<PathBuf, String> {
        let p = Path::new(path);
        if path.is_empty() || !p.is_absolute() {
            return Err("not an absolute path".into());
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err("names ..".into());
        }
        let rel = p
            .strip_prefix(&self.req.worktree)
            .or_else(|_| p.strip_prefix(&self.root))
            .map_err(|_| format!("outside the worktree {}", self.req.worktree.display()))?;
        if rel.as_os_str().is_empty() {
            return Err("the worktree itself".into());
        }
        if write && rel.components().any(|c| c.as_os_str() == ".git") {
            return Err("inside .git".into());
        }
        Ok(rel.to_path_buf())
    }

    /// Logs and records a refused file request; the JSON-RPC error.
    fn refuse(&mut self, method: &str, path: &str, why: &str) -> (i64, String) {
        self.note(&format!("← {method} {}: REFUSED, {why}", log_text(path)));
        self.outcome.permission_denials.push(json!({
            "tool_name": method,
            "tool_use_id": Value::Null,
            "tool_input": {"path": bounded(path, 500)},
            "kind": if method.contains("write") { "edit" } else { "read" },
            "why": why,
        }));
        (-32602, format!("refused: {} is {why}", bounded(path, 500)))
    }

    /// Answers `session/request_permission` by the role's policy.
    fn permission(&mut self, params: &Value) -> Value {
        let tool = params.get("toolCall").unwrap_or(&Value::Null);
        let kind = tool
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("other")
            .to_string();
        let title = tool
            .get("title")
            .and_then(Value::as_str)
            .map(|t| bounded(t, 120))
            .unwrap_or_else(|| kind.clone());
        let paths = tool_paths(tool);
        let outside: Vec<&String> = paths
            .iter()
            .filter(|p| self.confine(p, false).is_err())
            .collect();
        let writes = matches!(kind.as_str(), "edit" | "delete" | "move");
        let (allow, why) = match self.req.permissions {
            Permissions::Allow => (true, String::new()),
            Permissions::Deny => (false, "policy deny".to_string()),
            Permissions::DenyWritesOutsideWorktree if writes && !outside.is_empty() => (
                false,
                format!(
                    "policy deny-writes-outside-worktree: {} is outside the worktree",
                    bounded(outside[0], 200)
                ),
            ),
            Permissions::DenyWritesOutsideWorktree => (true, String::new()),
        };
        let options: Vec<(String, String)> = params
            .get("options")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| {
                        Some((
                            o.get("optionId")?.as_str()?.to_string(),
                            o.get("kind")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let pick = |kinds: &[&str]| {
            kinds
                .iter()
                .find_map(|k| options.iter().find(|(_, ok)| ok == k))
                .map(|(id, _)| id.clone())
        };
        let chosen = if allow {
            pick(&["allow_once", "allow_always"])
        } else {
            pick(&["reject_once", "reject_always"])
        };
        let target = paths
            .first()
            .map(|p| format!(" {}", log_text(p)))
            .unwrap_or_default();
        let answer = match &chosen {
            Some(id) => format!(
                "{} ({})",
                if allow { "allowed" } else { "DENIED" },
                log_word(id)
            ),
            None if allow => "DENIED (no allow option offered)".into(),
            None => "DENIED (cancelled: no reject option offered)".into(),
        };
        self.note(&format!(
            "← session/request_permission {} [{}]{target}: {answer}{}",
            log_text(&title),
            log_word(&kind),
            if why.is_empty() {
                String::new()
            } else {
                format!(", {why}")
            }
        ));
        if !allow || chosen.is_none() {
            self.outcome.permission_denials.push(json!({
                "tool_name": title,
                "tool_use_id": tool.get("toolCallId").and_then(Value::as_str).map(|s| bounded(s, 200)),
                "tool_input": {"path": paths.first().map(|p| bounded(p, 500))},
                "kind": kind,
                "why": if why.is_empty() { "no allow option offered".to_string() } else { why },
            }));
        }
        match chosen {
            Some(id) => json!({"outcome": {"outcome": "selected", "optionId": id}}),
            None => json!({"outcome": {"outcome": "cancelled"}}),
        }
    }

    fn on_notification(&mut self, method: &str, params: Option<&Value>) {
        if method != "session/update" {
            self.note(&format!("← notification {}: ignored", log_word(method)));
            return;
        }
        let Some(update) = params.and_then(|p| p.get("update")) else {
            self.skip("a session/update without an update");
            return;
        };
        let kind = update
            .get("sessionUpdate")
            .and_then(Value::as_str)
            .unwrap_or("(no sessionUpdate)")
            .to_string();
        let text = update
            .pointer("/content/text")
            .and_then(Value::as_str)
            .unwrap_or("");
        let prefix = if self.replaying { "replay " } else { "" };
        let line = match kind.as_str() {
            "agent_message_chunk" => {
                if self.in_turn {
                    if self.message_closed {
                        self.text.clear();
                        self.message_closed = false;
                    }
                    push_bounded(&mut self.text, text, TEXT_MAX_BYTES);
                }
                format!("message {}", log_text(text))
            }
            "agent_thought_chunk" => format!("thought {}", log_text(text)),
            "user_message_chunk" => format!("user {}", log_text(text)),
            "tool_call" | "tool_call_update" => {
                self.message_closed = true;
                let s = |k: &str| update.get(k).and_then(Value::as_str).map(log_word);
                let paths = tool_paths(update);
                format!(
                    "{kind} {}{}{}{}",
                    s("toolCallId").unwrap_or_default(),
                    s("kind").map(|k| format!(" [{k}]")).unwrap_or_default(),
                    s("status").map(|k| format!(" {k}")).unwrap_or_default(),
                    update
                        .get("title")
                        .and_then(Value::as_str)
                        .map(|t| format!(" {}", log_text(t)))
                        .unwrap_or_default()
                        + &paths
                            .first()
                            .map(|p| format!(" {}", log_text(p)))
                            .unwrap_or_default()
                )
            }
            "plan" => format!(
                "plan of {} entries",
                update
                    .get("entries")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            "usage_update" => {
                let cost = update.get("cost");
                if let Some(amount) = cost
                    .filter(|c| c.get("currency").and_then(Value::as_str) == Some("USD"))
                    .and_then(|c| c.get("amount"))
                    .and_then(Value::as_f64)
                    .filter(|a| a.is_finite() && *a >= 0.0)
                {
                    if !self.replaying {
                        self.cost_now = Some(amount);
                    }
                }
                format!(
                    "usage_update context {}/{}{}",
                    update.get("used").and_then(Value::as_u64).unwrap_or(0),
                    update.get("size").and_then(Value::as_u64).unwrap_or(0),
                    cost.map(|c| format!(" cost {}", bounded(&c.to_string(), 100)))
                        .unwrap_or_default()
                )
            }
            other => log_word(other),
        };
        self.note(&format!("← {prefix}update {line}"));
    }
}

/// Tokens of a `session/prompt` result (see [`Outcome::usage`]); counts
/// that are missing, negative or not integers read as 0.
fn turn_usage(result: &Value) -> Option<Usage> {
    let n = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_i64)
            .filter(|n| *n >= 0)
            .unwrap_or(0)
    };
    if let Some(u) = result.get("usage").filter(|u| u.is_object()) {
        let cache_read = n(u, "cachedReadTokens");
        return Some(Usage {
            input_tokens: (n(u, "inputTokens") - cache_read).max(0),
            output_tokens: n(u, "outputTokens"),
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: n(u, "cachedWriteTokens"),
        });
    }
    let t = result
        .pointer("/_meta/quota/token_count")
        .filter(|t| t.is_object())?;
    Some(Usage {
        input_tokens: n(t, "input_tokens"),
        output_tokens: n(t, "output_tokens"),
        ..Usage::default()
    })
}

/// The paths a tool call names: `locations[].path`, the diffs' `path`,
/// `rawInput.path` / `rawInput.file_path` (at most 20).
fn tool_paths(tool: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |v: Option<&Value>| {
        if let Some(p) = v.and_then(Value::as_str) {
            if out.len() < 20 && !out.iter().any(|o| o == p) {
                out.push(p.to_string());
            }
        }
    };
    for key in ["locations", "content"] {
        for item in tool
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add(item.get("path"));
        }
    }
    if let Some(raw) = tool.get("rawInput") {
        add(raw.get("path"));
        add(raw.get("file_path"));
    }
    out
}

/// An agent's text for one log line: cut, quoted, control characters
/// escaped (JSON string syntax), so a line of the log stays one line.
fn log_text(s: &str) -> String {
    Value::String(bounded(s, LOG_TEXT_MAX)).to_string()
}

/// A protocol word (a kind, a status, an id) for a log line: as is when it
/// is a short run of `[A-Za-z0-9_.:/-]`, else as [`log_text`] shows it.
fn log_word(s: &str) -> String {
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

/// Appends `add` to `text`, keeping its last `max` bytes.
fn push_bounded(text: &mut String, add: &str, max: usize) {
    text.push_str(add);
    if text.len() > max {
        let mut cut = text.len() - max;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
}

/// What [`crate::untrusted::open_beneath`]'s error means for the agent.
fn beneath_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EXDEV) => "a path that leads outside the worktree".into(),
        Some(libc::ELOOP) => "a path through too many or forbidden symlinks".into(),
        Some(libc::ENOSYS) => "not openable here (openat2 needs Linux 5.6 or later)".into(),
        _ => e.to_string(),
    }
}

/// Reads one line (its `\n` dropped) into `buf`: `Ok(true)` for a line,
/// `Ok(false)` at the end of input with nothing read.
///
/// Errors: a line longer than `max` bytes ([`io::ErrorKind::InvalidData`];
/// nothing past `max` is kept), and read errors.
fn read_line_bounded(r: &mut impl BufRead, max: usize, buf: &mut Vec<u8>) -> io::Result<bool> {
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
    use crate::process::ExitKind;

    const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fake-acp-agent");

    struct Ran {
        out: RunOutcome,
        outcome: Outcome,
        log: String,
        dir: tempfile::TempDir,
    }

    impl Ran {
        fn wt(&self) -> PathBuf {
            self.dir.path().join("wt")
        }
    }

    fn request(dir: &Path) -> Request {
        Request {
            prompt: "Create the file hello.txt in the current directory containing a short greeting, then say what you did.\n".into(),
            worktree: dir.join("wt"),
            resume: None,
            permissions: Permissions::default(),
            auth_method: Some("gemini-api-key".into()),
        }
    }

    /// Runs scripts/fake-acp-agent in scenario `scenario` through [`run`].
    fn ran(
        scenario: &str,
        env: &[(&str, &str)],
        edit: impl FnOnce(&mut Request),
        timeout: Duration,
    ) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wt")).unwrap();
        let mut req = request(dir.path());
        edit(&mut req);
        let mut vars = vec![("FAKE_ACP_SCENARIO".to_string(), scenario.to_string())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let spec = RunSpec {
            argv: vec![FAKE.into()],
            cwd: dir.path().join("wt"),
            env: vars,
            env_remove_prefix: Some("FAKE_ACP_".into()),
            stdin_path: None,
            log_path: dir.path().join("logs/run.log"),
            timeout,
            kill_grace: Duration::from_millis(500),
        };
        let (out, outcome) = run(
            &Runner::Group,
            &spec,
            req,
            Duration::from_millis(100),
            |_| Ok(()),
            || Ok(()),
        )
        .unwrap();
        let log = std::fs::read_to_string(&spec.log_path).unwrap();
        Ran {
            out,
            outcome,
            log,
            dir,
        }
    }

    fn ran_plain(scenario: &str) -> Ran {
        ran(scenario, &[], |_| {}, Duration::from_secs(30))
    }

    /// The fixture's `session/prompt` result of `scenario`.
    fn fixture_result(scenario: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/agents/acp/{scenario}.stdout"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["prompt_response"].clone()
    }

    #[test]
    fn success_writes_the_file_through_orch_and_reports_the_turn() {
        let r = ran_plain("write");
        let o = &r.outcome;
        assert!(o.success(), "{o:?}\n{}", r.log);
        assert_eq!(o.exit_code(), 0);
        assert_eq!(o.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(o.agent.as_deref(), Some("gemini-cli 0.61.0"));
        assert!(crate::agent::is_session_id(
            o.session_id.as_deref().unwrap()
        ));
        assert!(!o.resumed);
        assert_eq!(
            o.final_text.as_deref(),
            Some("Created hello.txt with a greeting.")
        );
        let want = &fixture_result("success")["result"]["_meta"]["quota"]["token_count"];
        let u = o.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (
                want["input_tokens"].as_i64().unwrap(),
                want["output_tokens"].as_i64().unwrap(),
                0
            )
        );
        assert_eq!((u.input_tokens, u.output_tokens), (24264, 51));
        assert_eq!(o.cost_usd, None);
        assert!(o.permission_denials.is_empty());
        assert_eq!(
            std::fs::read_to_string(r.wt().join("hello.txt")).unwrap(),
            "hello from the fake model\n"
        );
        let a = o.to_agent_result();
        assert!(a.success && a.subtype == "success");
        assert_eq!(crate::agent::run_error(o.exit_code(), None, Some(&a)), None);
        // The agent exited when orch closed its input.
        assert_eq!(r.out.exit, ExitKind::Code(0), "{}", r.log);
        for needle in [
            "acp: → initialize #1",
            "acp: agent gemini-cli 0.61.0 speaks protocol 1; loadSession true; auth methods [oauth-personal, gemini-api-key, vertex-ai, gateway]",
            "acp: → authenticate #2",
            "acp: ← fs/read_text_file ",
            "hello.txt\": no such file, read as empty",
            "acp: ← session/request_permission \"Writing to hello.txt\" [edit] \"",
            ": allowed (proceed_once)",
            "hello.txt\": 26 bytes written",
            "acp: ← update tool_call_update write_file__write_file_1796654979620_0 [edit] completed \"Writing to hello.txt\"",
            "acp: ← update message \"Created hello.txt with a greeting.\"",
            "acp: turn ended: stopReason end_turn; tokens in 24264 out 51",
            "Ripgrep is not available",
        ] {
            assert!(r.log.contains(needle), "{needle:?} not in\n{}", r.log);
        }
        // One line each.
        assert!(r.log.lines().all(|l| l.len() < 1000), "{}", r.log);
    }

    #[test]
    fn a_denied_write_is_a_denial_known_first_hand() {
        let r = ran(
            "write",
            &[],
            |q| q.permissions = Permissions::Deny,
            Duration::from_secs(30),
        );
        let o = &r.outcome;
        // The turn ends normally: it succeeded only in name.
        assert!(o.success(), "{o:?}");
        assert!(!r.wt().join("hello.txt").exists());
        assert_eq!(o.permission_denials.len(), 1, "{:?}", o.permission_denials);
        let path = r.wt().join("hello.txt").display().to_string();
        assert_eq!(
            crate::agent::name_denials(&o.permission_denials),
            vec![format!("Writing to hello.txt {path}")]
        );
        assert_eq!(o.permission_denials[0]["why"], "policy deny");
        assert_eq!(
            o.final_text.as_deref(),
            Some("Could not create hello.txt: Tool \"write_file\" was canceled by the user.")
        );
        let u = o.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (24239, 59));
        assert_eq!(o.to_agent_result().denials().len(), 1);
        assert!(
            r.log.contains(": DENIED (cancel), policy deny"),
            "{}",
            r.log
        );
    }

    #[test]
    fn an_api_400_fails_at_once_with_the_api_message() {
        let r = ran_plain("error_400");
        let o = &r.outcome;
        assert!(!o.success());
        assert_eq!(o.exit_code(), 1);
        let e = o.error.as_ref().unwrap();
        assert_eq!((e.method.as_str(), e.code), ("session/prompt", Some(400)));
        assert_eq!(
            e.message,
            fixture_result("error_400")["error"]["message"]
                .as_str()
                .unwrap()
        );
        let a = o.to_agent_result();
        assert_eq!(a.api_error_status, Some(400));
        assert_eq!(a.api_error_type.as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(a.subtype, "error_api");
        let err = crate::agent::run_error(o.exit_code(), None, Some(&a)).unwrap();
        assert!(!err.retryable, "{err:?}");
        assert_eq!(
            err.reason,
            "model API error 400 (INVALID_ARGUMENT): Request contains an invalid argument. (scripted 400)"
        );
        assert_eq!(crate::agent::limit_hit(&a, 0), None);
        assert!(
            r.log.contains("acp: ← session/prompt #4 error 400: "),
            "{}",
            r.log
        );
    }

    #[test]
    fn an_api_429_pauses_the_account() {
        let r = ran_plain("rate_limit_429");
        let a = r.outcome.to_agent_result();
        assert_eq!(a.api_error_status, Some(429));
        let err = crate::agent::run_error(r.outcome.exit_code(), None, Some(&a)).unwrap();
        assert!(err.retryable, "{err:?}");
        assert!(
            err.reason
                .starts_with("model API error 429: Resource has been exhausted"),
            "{err:?}"
        );
        let limit = crate::agent::limit_hit(&a, 0).unwrap();
        assert_eq!(limit.kind, crate::agent::LimitKind::Rate);
        assert!(
            r.log.contains("error 429: \"Resource has been exhausted"),
            "{}",
            r.log
        );
    }

    #[test]
    fn resume_loads_the_session_and_its_replay_is_not_the_final_text() {
        let sessions = tempfile::tempdir().unwrap();
        let s = sessions.path().to_str().unwrap();
        let first = ran(
            "write",
            &[("FAKE_ACP_SESSIONS", s)],
            |_| {},
            Duration::from_secs(30),
        );
        let id = first.outcome.session_id.clone().unwrap();
        let second = ran(
            "write",
            &[("FAKE_ACP_SESSIONS", s)],
            |q| q.resume = Some(id.clone()),
            Duration::from_secs(30),
        );
        let o = &second.outcome;
        assert!(o.success() && o.resumed, "{o:?}\n{}", second.log);
        assert_eq!(o.session_id.as_deref(), Some(id.as_str()));
        assert_eq!(
            o.final_text.as_deref().unwrap(),
            format!(
                "Created hello.txt with a greeting. Resumed session {id} after 1 earlier turn(s)."
            )
        );
        for needle in [
            "acp: → session/load #3",
            "acp: ← replay update user \"Create the file hello.txt",
            "acp: ← replay update message \"Created hello.txt with a greeting.\"",
            &format!("acp: session {id} (loaded)"),
        ] {
            assert!(
                second.log.contains(needle),
                "{needle:?} not in\n{}",
                second.log
            );
        }
        // A session the agent does not know: a new one, said so.
        let unknown = "00000000-0000-4000-8000-000000000000";
        let third = ran(
            "write",
            &[("FAKE_ACP_SESSIONS", s)],
            |q| q.resume = Some(unknown.into()),
            Duration::from_secs(30),
        );
        assert!(third.outcome.success() && !third.outcome.resumed);
        assert_ne!(third.outcome.session_id.as_deref(), Some(unknown));
        assert!(
            third.log.contains("refused (Resource not found: session 00000000-0000-4000-8000-000000000000); a new session instead"),
            "{}",
            third.log
        );
    }

    #[test]
    fn file_requests_outside_the_worktree_are_refused_and_recorded() {
        for permissions in [Permissions::DenyWritesOutsideWorktree, Permissions::Allow] {
            let r = ran(
                "outside",
                &[],
                |q| q.permissions = permissions,
                Duration::from_secs(30),
            );
            let o = &r.outcome;
            let edit = if permissions == Permissions::Allow {
                "proceed_once"
            } else {
                "cancel"
            };
            assert_eq!(
                o.final_text.as_deref(),
                Some(format!("read /etc/passwd: error; write ../outside.txt: error; write escape/planted.txt: error; edit /etc/hosts: {edit}").as_str()),
                "{}",
                r.log
            );
            assert!(!r.dir.path().join("outside.txt").exists());
            assert!(!r.dir.path().join("planted.txt").exists());
            assert!(!r.log.contains("root:x:0"), "{}", r.log);
            let names = crate::agent::name_denials(&o.permission_denials);
            let wt = r.wt().display().to_string();
            let mut want = vec![
                "fs/read_text_file /etc/passwd".to_string(),
                format!("fs/write_text_file {wt}/../outside.txt"),
                format!("fs/write_text_file {wt}/escape/planted.txt"),
            ];
            if permissions != Permissions::Allow {
                want.push("Writing to hosts /etc/hosts".into());
            }
            assert_eq!(names, want, "{}", r.log);
            assert_eq!(
                o.permission_denials[2]["why"],
                "a path that leads outside the worktree"
            );
            assert!(
                r.log.contains(
                    "acp: ← fs/read_text_file \"/etc/passwd\": REFUSED, outside the worktree"
                ),
                "{}",
                r.log
            );
            assert!(
                r.log.contains("/../outside.txt\": REFUSED, names .."),
                "{}",
                r.log
            );
        }
    }

    #[test]
    fn garbage_on_stdout_is_logged_cut_and_skipped() {
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
    fn a_line_too_long_ends_the_run_without_reading_it_all() {
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
    fn a_crash_mid_turn_is_a_retryable_failure() {
        let r = ran_plain("crash");
        assert_eq!(r.out.exit, ExitKind::Code(3));
        let e = r.outcome.error.as_ref().unwrap();
        assert_eq!(e.message, "the agent closed its output before answering");
        let err = crate::agent::run_error(1, None, Some(&r.outcome.to_agent_result())).unwrap();
        assert!(err.retryable);
        assert_eq!(
            err.reason,
            "agent result error_api: session/prompt: the agent closed its output before answering"
        );
        assert!(
            r.log.contains("acp: ← update message \"Working on it\""),
            "{}",
            r.log
        );
    }

    #[test]
    fn the_timeout_kills_an_agent_that_never_answers() {
        let r = ran("hang", &[], |_| {}, Duration::from_secs(2));
        assert_eq!(r.out.exit, ExitKind::TimedOut);
        assert!(!r.outcome.success());
        assert!(
            r.log
                .contains("acp: exchange ended: the agent closed its output"),
            "{}",
            r.log
        );
    }

    #[test]
    fn an_agent_without_auth_or_of_another_version_fails_clearly() {
        // In-process agents: the answers are scripted lines.
        let req = request(Path::new("/nonexistent"));
        let v2 = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":2}}"#.to_string() + "\n";
        let mut log = Vec::new();
        let o = exchange(v2.as_bytes(), io::sink(), &req, &mut log);
        let e = o.error.unwrap();
        assert_eq!(e.method, "initialize");
        assert!(
            e.message
                .contains("speaks ACP protocol version 2, orch speaks 1"),
            "{e:?}"
        );

        let auth = [
            r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":1,"authMethods":[{"id":"gemini-api-key"}]}}"#,
            r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32000,"message":"Authentication required"}}"#,
        ]
        .join("\n");
        let mut req = request(Path::new("/nonexistent"));
        req.auth_method = None;
        let o = exchange(auth.as_bytes(), io::sink(), &req, io::sink());
        let a = o.to_agent_result();
        assert_eq!(a.api_error_status, Some(401));
        let err = crate::agent::run_error(1, None, Some(&a)).unwrap();
        assert!(!err.retryable);
        assert!(
            err.reason
                .contains("set the role's auth_method to one the agent offers: gemini-api-key"),
            "{err:?}"
        );
    }

    #[test]
    fn a_usd_cost_in_usage_updates_is_the_turns_cost() {
        let script = |updates: &[&str]| {
            let mut lines = vec![
                r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":1,"agentCapabilities":{"loadSession":true}}}"#.to_string(),
                r#"{"jsonrpc":"2.0","id":2,"result":{"sessionId":"s-1"}}"#.to_string(),
            ];
            for u in updates {
                lines.push(format!(
                    r#"{{"jsonrpc":"2.0","method":"session/update","params":{{"sessionId":"s-1","update":{{"sessionUpdate":"usage_update","used":10,"size":100,"cost":{u}}}}}}}"#
                ));
            }
            lines.push(r#"{"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn"}}"#.into());
            lines.join("\n") + "\n"
        };
        let mut req = request(Path::new("/nonexistent"));
        req.auth_method = None;
        let run = |text: String, req: &Request| {
            let mut log = Vec::new();
            let o = exchange(text.as_bytes(), io::sink(), req, &mut log);
            (o, String::from_utf8(log).unwrap())
        };
        let (o, log) = run(
            script(&[
                r#"{"amount":0.25,"currency":"USD"}"#,
                r#"{"amount":0.75,"currency":"USD"}"#,
            ]),
            &req,
        );
        assert!(o.success(), "{o:?}\n{log}");
        assert_eq!(o.cost_usd, Some(0.75));
        assert_eq!(o.to_agent_result().cost_usd, Some(0.75));
        assert!(
            log.contains("acp: ← update usage_update context 10/100 cost {\"amount\":0.75"),
            "{log}"
        );
        // Credits or a forged negative amount are no dollars.
        let (o, _) = run(
            script(&[
                r#"{"amount":3,"currency":"credits"}"#,
                r#"{"amount":-1,"currency":"USD"}"#,
            ]),
            &req,
        );
        assert_eq!(o.cost_usd, None);
    }

    #[test]
    fn lines_are_read_bounded_and_texts_logged_on_one_line() {
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
        let mut t = String::from("ééé");
        push_bounded(&mut t, "x", 4);
        assert_eq!(t, "éx");
    }

    #[test]
    fn usage_from_the_spec_field_and_stop_reasons_name_the_failure() {
        let u = turn_usage(&json!({"stopReason": "end_turn", "usage": {"totalTokens": 150, "inputTokens": 100, "outputTokens": 50, "cachedReadTokens": 30, "cachedWriteTokens": 5}})).unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens
            ),
            (70, 50, 30, 5)
        );
        assert_eq!(turn_usage(&json!({"stopReason": "end_turn"})), None);
        let bad = turn_usage(&json!({"usage": {"inputTokens": -5, "outputTokens": "x"}})).unwrap();
        assert_eq!(bad, Usage::default());
        let mut o = Outcome::new();
        o.stop_reason = Some("max_tokens".into());
        let a = o.to_agent_result();
        assert_eq!((a.subtype.as_str(), a.success), ("error_max_tokens", false));
        let err = crate::agent::run_error(1, None, Some(&a)).unwrap();
        assert!(err.retryable);
        o.stop_reason = Some("we\nird".into());
        assert_eq!(o.to_agent_result().subtype, "error_stop_reason");
        for p in [
            Permissions::Allow,
            Permissions::Deny,
            Permissions::DenyWritesOutsideWorktree,
        ] {
            let v: Permissions = serde_json::from_value(json!(p.as_str())).unwrap();
            assert_eq!(v, p);
        }
    }
}
