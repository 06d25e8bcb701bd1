//! What orch understands of an agent run: the result in the run's log, read
//! by one parser per agent kind ([`parse`]: Claude Code here, Codex, Gemini
//! and OpenCode in the submodules) into the one [`AgentResult`] (usage,
//! cost, session id, final text, API error, permission denials), the
//! verdict file an agent writes for a gate, and the `{name}` prompt
//! templates.
//!
//! The output formats are documented in `tests/fixtures/claude/README.md`
//! and `tests/fixtures/agents/*/README.md`; parsing is lenient because
//! every CLI version adds keys. An agent that prints no result is not an
//! error: its usage is simply unknown. Everything read here is the agent's
//! to write: counts are bounded below by 0, texts are bounded where shown.

pub mod codex;
pub mod gemini;
pub mod opencode;
pub mod session;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::config::AgentKind;
use crate::config::Price;

/// Token counts of a run, the same for every kind (missing or
/// non-integer counts read as 0): `input_tokens` is the *uncached* input
/// (Codex's and Gemini's own input figures include the cached part; it is
/// taken out), `output_tokens` includes reasoning/thinking tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
}

impl Usage {
    /// Field-wise sum.
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(o.input_tokens),
            output_tokens: self.output_tokens.saturating_add(o.output_tokens),
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .saturating_add(o.cache_read_input_tokens),
            cache_creation_input_tokens: self
                .cache_creation_input_tokens
                .saturating_add(o.cache_creation_input_tokens),
        }
    }

    /// Field-wise `self - earlier`, each at least 0 (a figure that went
    /// down is a new count, not a refund).
    pub fn since(self, earlier: Usage) -> Usage {
        let d = |a: i64, b: i64| a.saturating_sub(b).max(0);
        Usage {
            input_tokens: d(self.input_tokens, earlier.input_tokens),
            output_tokens: d(self.output_tokens, earlier.output_tokens),
            cache_read_input_tokens: d(
                self.cache_read_input_tokens,
                earlier.cache_read_input_tokens,
            ),
            cache_creation_input_tokens: d(
                self.cache_creation_input_tokens,
                earlier.cache_creation_input_tokens,
            ),
        }
    }

    /// The cost of these tokens at `price`, in US dollars.
    pub fn cost_at(&self, price: &Price) -> f64 {
        price.cost_usd(
            self.input_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
            self.output_tokens,
        )
    }
}

/// One model's share of a run's usage, where the CLI splits it (Gemini
/// routes each turn through a small model first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    pub model: String,
    pub usage: Usage,
}

/// What orch reads of one agent run, the same for every [`AgentKind`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    /// Claude Code: `success`, `error_max_turns`, `error_max_budget_usd`,
    /// ...; other kinds: `success` or `error`.
    pub subtype: String,
    pub is_error: bool,
    /// `subtype == "success" && !is_error` (a `success` subtype with
    /// `is_error` is an API error, e.g. prompt too long).
    pub success: bool,
    pub session_id: Option<String>,
    pub num_turns: Option<i64>,
    /// From the top-level `usage` object.
    pub usage: Option<Usage>,
    /// `total_cost_usd`, in US dollars.
    pub cost_usd: Option<f64>,
    /// Raw `{tool_name, tool_use_id, tool_input}` objects: tools the CLI
    /// refused. A run with denials succeeded only in name.
    pub permission_denials: Vec<Value>,
    /// `result`: the final assistant text (error text when `is_error`).
    pub result_text: Option<String>,
    /// `errors`, present on error subtypes.
    pub errors: Vec<String>,
    /// `api_error_status`: the HTTP status of the model API call that
    /// ended the turn (CLI ≥ 2.1.110); `None` on a normal result.
    pub api_error_status: Option<i64>,
    /// `api_error_type`, e.g. `invalid_request_error`.
    pub api_error_type: Option<String>,
    /// The CLI's own figure for the whole session so far, where it reports
    /// one instead of this run's (Codex after `exec resume`); stored with
    /// the run so the next run of the session is diffed against it
    /// ([`AgentResult::scope_to_run`]).
    #[serde(default)]
    pub cumulative: Option<Usage>,
    /// The usage split by model, where the CLI reports the split (Gemini);
    /// priced per model.
    #[serde(default)]
    pub model_usage: Vec<ModelUsage>,
    /// `cost_usd` is the CLI's figure for the whole session so far, not
    /// this run's: Claude Code's `total_cost_usd` (and `modelUsage`) on a
    /// resumed session include the earlier runs (its `usage` and
    /// `num_turns` do not). Scoped to the run with
    /// [`AgentResult::scope_cost_to_run`].
    #[serde(default)]
    pub cost_is_session_total: bool,
}

impl AgentResult {
    /// A result with every field empty: `success` as given, subtype
    /// `success` or `error` (what the kinds other than Claude Code fill in).
    pub fn empty(success: bool) -> AgentResult {
        AgentResult {
            subtype: if success { "success" } else { "error" }.into(),
            is_error: !success,
            success,
            session_id: None,
            num_turns: None,
            usage: None,
            cost_usd: None,
            permission_denials: Vec::new(),
            result_text: None,
            errors: Vec::new(),
            api_error_status: None,
            api_error_type: None,
            cumulative: None,
            model_usage: Vec::new(),
            cost_is_session_total: false,
        }
    }

    /// Makes `usage` this run's alone where the CLI reported a figure
    /// cumulative over the session: `previous` is the cumulative figure
    /// stored with the session's last run (`None` for a new session: the
    /// figure is this run's). No-op for kinds that report per run.
    pub fn scope_to_run(&mut self, previous: Option<Usage>) {
        if let (Some(total), Some(prev)) = (self.cumulative, previous) {
            self.usage = Some(total.since(prev));
        }
    }

    /// Makes `cost_usd` this run's alone where the CLI reported the
    /// session's total ([`AgentResult::cost_is_session_total`]): `spent` is
    /// what is already recorded for the session (US dollars,
    /// [`crate::db::Db::session_spent`]; 0 for a new session). The
    /// difference is at least 0 (a total that went down is not a refund).
    /// What an earlier run of the session spent without orch recording it
    /// (killed with its worker before its result) lands on this run: each
    /// dollar the session reports is counted once. No-op otherwise.
    pub fn scope_cost_to_run(&mut self, spent: f64) {
        if !self.cost_is_session_total {
            return;
        }
        if let Some(total) = self.cost_usd {
            self.cost_usd = Some((total - spent).max(0.0));
        }
        self.cost_is_session_total = false;
    }

    /// The run's cost in US dollars: the one the CLI reported, else its
    /// tokens × `prices` for the models it names (each must have a
    /// price; a model with no tokens needs none), else for `model` (the
    /// agent's configured model), else `None` (unknown).
    pub fn cost(
        &self,
        prices: &std::collections::BTreeMap<String, Price>,
        model: Option<&str>,
    ) -> Option<f64> {
        if self.cost_usd.is_some() {
            return self.cost_usd;
        }
        if !self.model_usage.is_empty() {
            let mut sum = 0.0;
            for m in &self.model_usage {
                if m.usage == Usage::default() {
                    continue;
                }
                sum += m.usage.cost_at(prices.get(&m.model)?);
            }
            return Some(sum);
        }
        let usage = self.usage?;
        Some(usage.cost_at(prices.get(model?)?))
    }

    /// The permission denials named for a person: `Write docs/x.md`,
    /// `Bash git push origin HEAD` (the tool, then its path, command or
    /// pattern when the input has one).
    pub fn denials(&self) -> Vec<String> {
        name_denials(&self.permission_denials)
    }
}

/// Names raw `{tool_name, tool_input}` denial objects (see
/// [`AgentResult::denials`]); entries without a tool name read `?`.
pub fn name_denials(denials: &[Value]) -> Vec<String> {
    denials
        .iter()
        .map(|d| {
            let tool = d.get("tool_name").and_then(Value::as_str).unwrap_or("?");
            let input = d.get("tool_input");
            let what = [
                "file_path",
                "notebook_path",
                "path",
                "command",
                "pattern",
                "url",
            ]
            .iter()
            .find_map(|k| input.and_then(|i| i.get(*k)).and_then(Value::as_str));
            match what {
                Some(w) => format!("{tool} {}", bounded(w, 200)),
                None => tool.to_string(),
            }
        })
        .collect()
}

/// `s` cut to at most `max` characters, `…` marking a cut.
pub fn bounded(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Whether `id` has the shape of a Claude Code session id: a UUID in its
/// hyphenated form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (36 characters,
/// ASCII hex digits and four hyphens; `tests/fixtures/claude/json`).
/// The session id comes from the agent's output and goes into the next
/// run's argv (`{previous_session}`): anything else — a flag, a path,
/// spaces, a long string — is refused there and when it is stored.
pub fn is_session_id(id: &str) -> bool {
    is_uuid(id)
}

/// Whether `id` has the shape of a session id of `kind`: a UUID for
/// Claude Code, Codex (`thread_id`), Gemini and ACP (`sessionId`); for
/// OpenCode `ses_` and 20 to 40 ASCII letters and digits
/// (`ses_daf047d0affesgIA4dy5bNyK0M`). Anything else — a flag, a path,
/// spaces, a long string — is never stored and never resumed.
pub fn is_session_id_of(kind: AgentKind, id: &str) -> bool {
    match kind {
        AgentKind::Opencode => id.strip_prefix("ses_").is_some_and(|rest| {
            (20..=40).contains(&rest.len()) && rest.bytes().all(|c| c.is_ascii_alphanumeric())
        }),
        _ => is_uuid(id),
    }
}

/// The shape [`is_session_id_of`] wants of `kind`, for people: `a UUID`.
pub fn session_id_shape(kind: AgentKind) -> &'static str {
    match kind {
        AgentKind::Opencode => "ses_ and 20 to 40 letters and digits",
        _ => "a UUID",
    }
}

fn is_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The last `max_lines` lines of `text`, at most `max_bytes` bytes (cut at
/// a character boundary), for feedback an agent reads.
pub fn tail(text: &str, max_lines: usize, max_bytes: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let joined = lines[start..].join("\n");
    if joined.len() <= max_bytes {
        return joined;
    }
    let mut cut = joined.len() - max_bytes;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &joined[cut..])
}

/// Why an agent run failed, and whether running it again can help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// For people and for the next run's feedback, e.g. `model API error
    /// 400 (invalid_request_error): Prompt is too long`.
    pub reason: String,
    /// `false` for what cannot succeed on retry: a model-API 400, 401 or
    /// 403 (and other 4xx but 408/429) or an invalid configuration.
    pub retryable: bool,
}

/// What kind of account limit stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// The account's usage limit (session, weekly): "Claude AI usage limit
    /// reached|`<reset unix seconds>`", "You've hit your limit · resets …".
    Usage,
    /// A model-API rate limit or overload (HTTP 429 or 529).
    Rate,
}

impl LimitKind {
    /// `usage` or `rate`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Usage => "usage",
            LimitKind::Rate => "rate",
        }
    }
}

/// A run stopped by the account's usage or rate limit: no fault of the
/// job, so it is requeued without counting an attempt and the account's
/// dispatch pauses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHit {
    pub kind: LimitKind,
    /// When the limit resets (unix ms), when the CLI said so.
    pub reset_at_ms: Option<i64>,
    /// The CLI's words, bounded.
    pub message: String,
}

/// Whether a failed result says the account hit its usage limit or a rate
/// limit. A usage limit's reset time is read from the CLI's two shapes:
/// `…usage limit reached|<unix seconds>` and `… · resets 3pm (UTC)` /
/// `resets 4:50am (Europe/Rome)`: a time of day in the named zone, at its
/// next occurrence after `now_ms` ([`crate::clock::next_wall_clock_ms`]).
/// A zone orch does not know gives no reset time: the pause backs off.
pub fn limit_hit(r: &AgentResult, now_ms: i64) -> Option<LimitHit> {
    // The result's text is the agent's to write: a reset years away would
    // pause every role of the account for good.
    if r.success {
        return None;
    }
    let text = r.result_text.clone().unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    let usage = lower.contains("usage limit reached")
        || (lower.contains("hit your") && lower.contains("limit"));
    let message = bounded(&text, 500);
    if usage {
        return Some(LimitHit {
            kind: LimitKind::Usage,
            reset_at_ms: reset_time(&text, now_ms).map(|r| r.min(now_ms + LIMIT_RESET_MAX_MS)),
            message,
        });
    }
    matches!(r.api_error_status, Some(429 | 529)).then(|| LimitHit {
        kind: LimitKind::Rate,
        reset_at_ms: None,
        message,
    })
}

/// The furthest a usage limit's reset is believed, from now: 8 days (the
/// longest window, weekly, plus a day). A message naming a later reset
/// pauses the account this long.
pub const LIMIT_RESET_MAX_MS: i64 = 8 * 24 * 3_600_000;

/// The reset time in a usage-limit message (see [`limit_hit`]).
fn reset_time(text: &str, now_ms: i64) -> Option<i64> {
    if let Some((_, tail)) = text.rsplit_once('|') {
        let digits: String = tail
            .trim()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let n: i64 = digits.parse().ok()?;
        // Seconds as the CLI prints them; milliseconds accepted too.
        return Some(if n > 100_000_000_000 { n } else { n * 1000 });
    }
    // ASCII lower-casing keeps byte offsets: the zone is cut from `text`.
    let at = text.to_ascii_lowercase().find("resets ")? + "resets ".len();
    let after = text[at..].trim_start();
    let after = after.strip_prefix("at ").unwrap_or(after);
    let (clock, rest) = after.split_once(' ').unwrap_or((after, ""));
    let zone = rest.trim_start().strip_prefix('(')?.split_once(')')?.0;
    let clock = clock.to_ascii_lowercase();
    let (hm, pm) = if let Some(h) = clock.strip_suffix("pm") {
        (h, true)
    } else {
        (clock.strip_suffix("am")?, false)
    };
    let (h, m) = hm.split_once(':').unwrap_or((hm, "0"));
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if !(1..=12).contains(&h) {
        return None;
    }
    crate::clock::next_wall_clock_ms(now_ms, h % 12 + if pm { 12 } else { 0 }, m, zone)
}

/// Judges a finished run from its exit and result: `None` when it
/// succeeded (exit 0 and, when there is a result, a success result).
/// `timeout_s` is `Some` when orch killed it at its timeout.
///
/// Retry classes: an API status 429, 529, 5xx (and 408) or none (a crash,
/// a connection error, max turns) retries; other 4xx fail at once.
pub fn run_error(
    exit_code: i64,
    timeout_s: Option<u64>,
    result: Option<&AgentResult>,
) -> Option<RunError> {
    if let Some(t) = timeout_s {
        return Some(RunError {
            reason: format!("timed out after {t} s; process group killed"),
            retryable: true,
        });
    }
    if let Some(r) = result.filter(|r| !r.success) {
        if let Some(status) = r.api_error_status {
            let retryable = !(400..500).contains(&status) || status == 408 || status == 429;
            let kind = r
                .api_error_type
                .as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default();
            let text = r
                .result_text
                .as_deref()
                .map(|t| format!(": {}", bounded(t, 500)))
                .unwrap_or_default();
            return Some(RunError {
                reason: format!("model API error {status}{kind}{text}"),
                retryable,
            });
        }
        let detail = if r.errors.is_empty() {
            r.result_text
                .as_deref()
                .map(|t| bounded(t, 500))
                .unwrap_or_default()
        } else {
            bounded(&r.errors.join("; "), 500)
        };
        return Some(RunError {
            reason: if detail.is_empty() {
                format!("agent result {} is an error", r.subtype)
            } else {
                format!("agent result {}: {detail}", r.subtype)
            },
            retryable: true,
        });
    }
    (exit_code != 0).then(|| RunError {
        reason: match exit_code {
            c if c > 128 => format!("agent exited with code {c} (killed by signal {})", c - 128),
            c => format!("agent exited with code {c}"),
        },
        retryable: true,
    })
}

/// Reads the result of a run of an agent of `kind` from its log (stdout
/// and stderr in one file, as written) and its exit code. `None` when the
/// log holds no result of that kind (usage unknown). ACP runs are read by
/// the ACP client, not from a log: `None`.
///
/// Usage is this run's except where the CLI reports a session-cumulative
/// figure ([`AgentResult::cumulative`]): call
/// [`AgentResult::scope_to_run`] with the figure stored for the session.
pub fn parse(kind: AgentKind, log: &str, exit_code: i64) -> Option<AgentResult> {
    match kind {
        AgentKind::ClaudeCode => parse_result(log),
        AgentKind::Codex => codex::parse(log, exit_code),
        AgentKind::Gemini => gemini::parse(log, exit_code),
        AgentKind::Opencode => opencode::parse(log, exit_code),
        AgentKind::Acp => None,
    }
}

/// The JSON objects of a log, one per line (JSONL), in order; lines that
/// are not a JSON object (stderr noise) are skipped.
fn json_lines(log: &str) -> impl Iterator<Item = Value> + '_ {
    log.lines().filter_map(|line| {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(Value::is_object)
    })
}

/// A token count at `key` of `v`: a non-negative integer, else 0 (the
/// numbers are the agent's to forge).
fn count(v: &Value, key: &str) -> i64 {
    v.get(key)
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .unwrap_or(0)
}

/// The string at `key` of `v`.
fn string(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The HTTP status an OpenAI-style error object implies by its `type` or
/// `code` (the body carries no number): `invalid_request_error` → 400,
/// `authentication_error`/`invalid_api_key` → 401, `permission_error` →
/// 403, `not_found_error`/`model_not_found` → 404, `rate_limit_exceeded`,
/// `insufficient_quota`, `requests`, `tokens` → 429, `server_error` → 500,
/// `overloaded_error` → 529.
fn status_of_error_type(err: &Value) -> Option<i64> {
    ["code", "type"].iter().find_map(|k| {
        Some(match err.get(*k)?.as_str()? {
            "invalid_request_error" | "invalid_value" | "context_length_exceeded" => 400,
            "authentication_error" | "invalid_api_key" => 401,
            "permission_error" | "insufficient_permissions" => 403,
            "not_found_error" | "model_not_found" => 404,
            "rate_limit_exceeded"
            | "rate_limit_error"
            | "insufficient_quota"
            | "requests"
            | "tokens" => 429,
            "server_error" | "api_error" => 500,
            "overloaded_error" => 529,
            _ => return None,
        })
    })
}

/// A three-digit HTTP status named in text after `status` (`last status:
/// 429 Too Many Requests`, `status 503`), if any.
fn status_in_text(text: &str) -> Option<i64> {
    let lower = text.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("status") {
        rest = &rest[i + "status".len()..];
        let digits: String = rest
            .trim_start_matches([':', ' ', '='])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n @ 100..=599) = digits.parse::<i64>() {
            return Some(n);
        }
    }
    None
}

/// Finds the Claude Code result in a run's log: scans lines from the end
/// for a line that parses as a JSON object with `"type":"result"`. Works
/// for `--output-format json` (the one JSON line) and `stream-json` (the
/// last line); stderr noise around it is ignored.
///
/// Returns `None` when there is none (non-JSON agent output means "usage
/// unknown", not an error). Unknown keys are ignored; only `subtype`
/// (string) and `is_error` (bool) are required.
pub fn parse_result(log: &str) -> Option<AgentResult> {
    log.lines().rev().find_map(|line| {
        let line = line.trim();
        // Cheap filter before a JSON parse: stream-json logs can be large.
        if !line.starts_with('{') || !line.contains("result") {
            return None;
        }
        let value: Value = serde_json::from_str(line).ok()?;
        if value.get("type")?.as_str()? != "result" {
            return None;
        }
        result_from_json(&value)
    })
}

fn result_from_json(v: &Value) -> Option<AgentResult> {
    let subtype = v.get("subtype")?.as_str()?.to_string();
    let is_error = v.get("is_error")?.as_bool()?;
    let str_field = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let usage = v.get("usage").filter(|u| u.is_object()).map(|u| {
        // The counts and the cost feed budgets: a negative one (the
        // result line is the agent's to forge) reads as unknown.
        let n = |key: &str| {
            u.get(key)
                .and_then(Value::as_i64)
                .filter(|n| *n >= 0)
                .unwrap_or(0)
        };
        Usage {
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
        }
    });
    let errors = match v.get("errors") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(AgentResult {
        success: subtype == "success" && !is_error,
        subtype,
        is_error,
        session_id: str_field("session_id"),
        num_turns: v.get("num_turns").and_then(Value::as_i64),
        usage,
        cost_usd: v
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0),
        permission_denials: v
            .get("permission_denials")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        result_text: str_field("result"),
        errors,
        api_error_status: v.get("api_error_status").and_then(Value::as_i64),
        api_error_type: str_field("api_error_type"),
        cumulative: None,
        model_usage: Vec::new(),
        cost_is_session_total: true,
    })
}

/// A gate verdict. JSON spellings: `APPROVE`, `REQUEST_CHANGES`, `PASS`,
/// `FAIL`, `DEPLOYED`, `FAILED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerdictKind {
    Approve,
    RequestChanges,
    Pass,
    Fail,
    Deployed,
    Failed,
}

impl VerdictKind {
    pub const ALL: [VerdictKind; 6] = [
        VerdictKind::Approve,
        VerdictKind::RequestChanges,
        VerdictKind::Pass,
        VerdictKind::Fail,
        VerdictKind::Deployed,
        VerdictKind::Failed,
    ];

    /// The JSON spelling, e.g. `"REQUEST_CHANGES"`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Approve => "APPROVE",
            VerdictKind::RequestChanges => "REQUEST_CHANGES",
            VerdictKind::Pass => "PASS",
            VerdictKind::Fail => "FAIL",
            VerdictKind::Deployed => "DEPLOYED",
            VerdictKind::Failed => "FAILED",
        }
    }
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VerdictKind {
    type Err = String;

    /// Accepts the JSON spellings, ignoring ASCII case and surrounding
    /// whitespace. Errors name the value and the accepted ones.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        VerdictKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                let known: Vec<_> = VerdictKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown verdict {s:?} (expected one of {})",
                    known.join(", ")
                )
            })
    }
}

/// The verdict an agent wrote to `ORCH_VERDICT_FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub verdict: VerdictKind,
    /// Free text; `""` when absent.
    pub summary: String,
}

/// The largest verdict file orch reads, in bytes.
pub const VERDICT_MAX_BYTES: u64 = 1 << 20;

/// Reads the verdict file an agent wrote to `ORCH_VERDICT_FILE`:
/// `{"verdict": "...", "summary": "..."}` (summary optional → `""`; a
/// non-string summary is kept as its JSON text).
///
/// `Ok(None)` when the file does not exist. `Err(message naming the file
/// and the problem)` when it exists but is unreadable, not a regular file
/// (a symlink is not followed, a FIFO not waited on), larger than
/// [`VERDICT_MAX_BYTES`], not a JSON object, lacks a string `verdict`, or
/// has an unknown verdict. A gate that needs
/// a verdict treats both as a failed run, never as an approval.
pub fn read_verdict(path: &Path) -> Result<Option<Verdict>, String> {
    let shown = path.display();
    // The agent chooses what the file is: never follow a symlink, never
    // block on a FIFO, never read more than a verdict needs.
    let bytes = match crate::untrusted::open_regular(path)
        .and_then(|f| crate::untrusted::read_bounded(f, VERDICT_MAX_BYTES + 1, false))
    {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("verdict file {shown}: is a symlink (not followed)"))
        }
        Err(e) => return Err(format!("verdict file {shown}: cannot read: {e}")),
    };
    if bytes.len() as u64 > VERDICT_MAX_BYTES {
        return Err(format!(
            "verdict file {shown}: larger than {VERDICT_MAX_BYTES} bytes"
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("verdict file {shown}: not valid UTF-8"))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("verdict file {shown}: not valid JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err(format!("verdict file {shown}: not a JSON object"));
    };
    let verdict = match obj.get("verdict") {
        Some(Value::String(s)) => s
            .parse::<VerdictKind>()
            .map_err(|e| format!("verdict file {shown}: {e}"))?,
        Some(_) => return Err(format!("verdict file {shown}: \"verdict\" is not a string")),
        None => return Err(format!("verdict file {shown}: no \"verdict\" key")),
    };
    let summary = match obj.get("summary") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Ok(Some(Verdict { verdict, summary }))
}

/// The `{name}` template renderer. It lives in [`crate::config`], which
/// validates every template at load with it; re-exported here for the
/// worker, which renders agent argv and prompts.
pub use crate::config::render;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_limit_is_read_with_its_reset_and_a_429_or_529_as_a_rate_limit() {
        let mut r = parse_result(RATE_LIMIT).unwrap();
        let hit = limit_hit(&r, 0).unwrap();
        assert_eq!((hit.kind, hit.reset_at_ms), (LimitKind::Rate, None));
        let overloaded = limit_hit(&parse_result(OVERLOADED).unwrap(), 0).unwrap();
        assert_eq!(overloaded.kind, LimitKind::Rate);
        r.result_text = Some("Claude AI usage limit reached|1766502000".into());
        let hit = limit_hit(&r, 1_766_500_000_000).unwrap();
        assert_eq!(
            (hit.kind, hit.reset_at_ms),
            (LimitKind::Usage, Some(1_766_502_000_000))
        );
        // A reset years away (the text is the agent's) is held to 8 days.
        r.result_text = Some("Claude AI usage limit reached|9999999999".into());
        assert_eq!(
            limit_hit(&r, 1_766_500_000_000).unwrap().reset_at_ms,
            Some(1_766_500_000_000 + LIMIT_RESET_MAX_MS)
        );
        // 2026-01-01 10:00 UTC; "resets 3:30pm (UTC)" is 15:30 that day,
        // "resets 9am (UTC)" the next morning, 4:50am in Rome (UTC+1) is
        // 03:50 UTC the next day; a zone no one knows is not guessed.
        let now = 1_767_261_600_000;
        r.result_text = Some("You've hit your limit · resets 3:30pm (UTC)".into());
        assert_eq!(
            limit_hit(&r, now).unwrap().reset_at_ms,
            Some(now + 5 * 3_600_000 + 1_800_000)
        );
        r.result_text = Some("You've hit your session limit · resets 9am (UTC)".into());
        assert_eq!(
            limit_hit(&r, now).unwrap().reset_at_ms,
            Some(now + 23 * 3_600_000)
        );
        r.result_text = Some("You've hit your limit · resets 4:50am (Europe/Rome)".into());
        let hit = limit_hit(&r, now).unwrap();
        assert_eq!(
            (hit.kind, hit.reset_at_ms),
            (LimitKind::Usage, Some(now + 17 * 3_600_000 + 50 * 60_000))
        );
        r.result_text = Some("You've hit your limit · resets 4:75am (UTC)".into());
        assert_eq!(limit_hit(&r, now).unwrap().reset_at_ms, None);
        r.result_text = Some("You've hit your limit · resets 4:50am (Mars/Base)".into());
        let hit = limit_hit(&r, now).unwrap();
        assert_eq!((hit.kind, hit.reset_at_ms), (LimitKind::Usage, None));
        // Not a limit: a 400, or success.
        assert_eq!(limit_hit(&parse_result(TOO_LONG).unwrap(), now), None);
    }
    use std::collections::BTreeMap;

    const SUCCESS: &str = include_str!("../tests/fixtures/claude/json/success.json");
    const DENIAL: &str =
        include_str!("../tests/fixtures/claude/json/success_with_permission_denial.json");
    const MAX_TURNS: &str = include_str!("../tests/fixtures/claude/json/error_max_turns.json");
    const MAX_BUDGET: &str =
        include_str!("../tests/fixtures/claude/json/error_max_budget_usd.json");
    const TOO_LONG: &str =
        include_str!("../tests/fixtures/claude/json/api_error_prompt_too_long.json");
    const RATE_LIMIT: &str =
        include_str!("../tests/fixtures/claude/json/api_error_rate_limit_429.json");
    const OVERLOADED: &str =
        include_str!("../tests/fixtures/claude/json/api_error_overloaded_529.json");

    const FIXTURE_USAGE: Usage = Usage {
        input_tokens: 8,
        output_tokens: 110,
        cache_read_input_tokens: 33204,
        cache_creation_input_tokens: 5722,
    };

    fn assert_fixture_success(r: &AgentResult) {
        assert!(r.success && !r.is_error && r.subtype == "success", "{r:?}");
        assert_eq!(r.usage, Some(FIXTURE_USAGE));
        assert!((r.cost_usd.unwrap() - 0.0374828).abs() < 1e-9);
        assert_eq!(r.num_turns, Some(2));
    }

    #[test]
    fn parses_success() {
        let r = parse_result(SUCCESS).unwrap();
        assert_fixture_success(&r);
        assert_eq!(
            r.session_id.as_deref(),
            Some("480b845b-5376-462a-80cb-f8674f2cbb75")
        );
        assert!(r.permission_denials.is_empty() && r.errors.is_empty());
        assert!(r
            .result_text
            .unwrap()
            .starts_with("The working tree is clean"));
    }

    #[test]
    fn parses_permission_denial() {
        let r = parse_result(DENIAL).unwrap();
        assert!(r.success);
        assert_eq!(r.permission_denials.len(), 1);
        assert_eq!(r.permission_denials[0]["tool_name"], "Bash");
        assert_eq!(
            r.permission_denials[0]["tool_input"]["command"],
            "git push origin HEAD"
        );
    }

    #[test]
    fn parses_error_subtypes() {
        let r = parse_result(MAX_TURNS).unwrap();
        assert!(!r.success && r.is_error);
        assert_eq!(r.subtype, "error_max_turns");
        assert_eq!(r.errors, vec!["Reached maximum number of turns (1)"]);
        assert_eq!(r.result_text, None);
        assert_eq!(r.usage.unwrap().output_tokens, 87);

        let r = parse_result(MAX_BUDGET).unwrap();
        assert!(!r.success);
        assert_eq!(r.errors, vec!["Reached maximum budget ($0.01)"]);
        assert!((r.cost_usd.unwrap() - 0.0320852).abs() < 1e-9);
    }

    #[test]
    fn success_subtype_with_is_error_is_a_failure() {
        let r = parse_result(TOO_LONG).unwrap();
        assert_eq!(r.subtype, "success");
        assert!(r.is_error && !r.success);
        assert!(r.result_text.unwrap().starts_with("Prompt is too long"));
        assert_eq!(r.usage, Some(Usage::default()));
        assert_eq!(r.cost_usd, Some(0.0));
    }

    #[test]
    fn run_errors_name_the_api_status_and_only_what_can_succeed_is_retried() {
        let r = parse_result(TOO_LONG).unwrap();
        let e = run_error(1, None, Some(&r)).unwrap();
        assert!(!e.retryable);
        assert!(
            e.reason
                .starts_with("model API error 400 (invalid_request_error): Prompt is too long"),
            "{e:?}"
        );
        for (fixture, status) in [(RATE_LIMIT, 429), (OVERLOADED, 529)] {
            let e = run_error(1, None, Some(&parse_result(fixture).unwrap())).unwrap();
            assert!(e.retryable, "{e:?}");
            assert!(
                e.reason.starts_with(&format!("model API error {status} (")),
                "{e:?}"
            );
        }
        let e = run_error(1, None, Some(&parse_result(MAX_TURNS).unwrap())).unwrap();
        assert!(e.retryable);
        assert_eq!(
            e.reason,
            "agent result error_max_turns: Reached maximum number of turns (1)"
        );
        let e = run_error(124, Some(30), None).unwrap();
        assert_eq!(e.reason, "timed out after 30 s; process group killed");
        assert!(e.retryable);
        let e = run_error(137, None, None).unwrap();
        assert!(e.reason.contains("signal 9") && e.retryable, "{e:?}");
        assert_eq!(
            run_error(0, None, Some(&parse_result(SUCCESS).unwrap())),
            None
        );
        assert_eq!(run_error(0, None, None), None);
    }

    #[test]
    fn denials_are_named_by_tool_and_target() {
        let r = parse_result(DENIAL).unwrap();
        assert_eq!(r.denials(), vec!["Bash git push origin HEAD"]);
        let raw: Vec<Value> = serde_json::from_str(
            r#"[{"tool_name":"Write","tool_input":{"file_path":"/w/a.md","content":"x"}},{"tool_input":{}}]"#,
        )
        .unwrap();
        assert_eq!(name_denials(&raw), vec!["Write /w/a.md", "?"]);
    }

    #[test]
    fn bounded_and_tail_cut_at_char_boundaries() {
        assert_eq!(bounded("  héllo  ", 3), "hél…");
        assert_eq!(bounded("ok", 3), "ok");
        assert_eq!(tail("a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail("ééé", 5, 2), "…é");
    }

    #[test]
    fn no_result_in_garbage() {
        assert_eq!(parse_result(""), None);
        assert_eq!(parse_result("I did it!\nall done {not json}\n"), None);
        assert_eq!(parse_result(r#"{"type":"assistant","result":"x"}"#), None);
        // A result object without the required keys does not count.
        assert_eq!(
            parse_result(r#"{"type":"result","subtype":"success"}"#),
            None
        );
    }

    #[test]
    fn stderr_noise_and_stream_json() {
        let log = format!("Warning: model retirement notice\n{SUCCESS}\nsome trailing stderr\n");
        assert_fixture_success(&parse_result(&log).unwrap());
        let stream = format!(
            "{}\n{}\r\n{MAX_TURNS}",
            r#"{"type":"system","subtype":"init","session_id":"s"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"result"}]}}"#,
        );
        assert_eq!(parse_result(&stream).unwrap().subtype, "error_max_turns");
        // The last result wins.
        let two = format!("{MAX_TURNS}\n{SUCCESS}");
        assert!(parse_result(&two).unwrap().success);
    }

    #[test]
    fn a_resumed_sessions_total_cost_is_scoped_to_the_run_and_its_tokens_are_left_alone() {
        let first =
            parse_result(include_str!("../tests/fixtures/claude/resumed/first.json")).unwrap();
        let mut resumed = parse_result(include_str!(
            "../tests/fixtures/claude/resumed/resumed.json"
        ))
        .unwrap();
        assert!(first.cost_is_session_total && resumed.cost_is_session_total);
        assert_eq!(first.session_id, resumed.session_id);
        let tokens = resumed.usage;
        // The session's first run: nothing recorded before, the total is its own.
        let mut fresh = first.clone();
        fresh.scope_cost_to_run(0.0);
        assert_eq!(fresh.cost_usd, Some(0.057));
        resumed.scope_cost_to_run(fresh.cost_usd.unwrap());
        let cost = resumed.cost_usd.unwrap();
        assert!((cost - 0.019).abs() < 1e-12, "{cost}");
        assert_eq!(resumed.usage, tokens, "usage is already the run's own");
        assert!(!resumed.cost_is_session_total);
        // Scoped once: a second call changes nothing.
        resumed.scope_cost_to_run(0.05);
        assert!((resumed.cost_usd.unwrap() - 0.019).abs() < 1e-12);
        // A total below what was recorded is no refund.
        let mut lower = first.clone();
        lower.scope_cost_to_run(0.5);
        assert_eq!(lower.cost_usd, Some(0.0));
        // Kinds that report a run's own cost are left alone.
        let mut own = AgentResult::empty(true);
        own.cost_usd = Some(0.2);
        own.scope_cost_to_run(0.1);
        assert_eq!(own.cost_usd, Some(0.2));
    }

    #[test]
    fn stream_json_fixtures_give_the_json_results() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/claude/stream-json/"
        );
        let read = |n: &str| std::fs::read_to_string(format!("{dir}{n}.jsonl")).unwrap();
        let r = parse(AgentKind::ClaudeCode, &read("success"), 0).unwrap();
        assert_fixture_success(&r);
        assert_eq!(
            r.session_id.as_deref(),
            Some("0158dc2f-298d-41ce-ba6b-8c4a5b00ad41")
        );
        let r = parse(
            AgentKind::ClaudeCode,
            &read("success_with_permission_denial"),
            0,
        )
        .unwrap();
        assert!(r.success && r.permission_denials.len() == 1, "{r:?}");
        let r = parse(AgentKind::ClaudeCode, &read("error_max_turns"), 1).unwrap();
        assert_eq!(r.subtype, "error_max_turns");
        let r = parse(AgentKind::ClaudeCode, &read("api_error_prompt_too_long"), 1).unwrap();
        assert_eq!(r.api_error_status, Some(400));
        assert!(!run_error(1, None, Some(&r)).unwrap().retryable);
    }

    #[test]
    fn acp_is_not_read_from_a_log() {
        assert_eq!(parse(AgentKind::Acp, SUCCESS, 0), None);
    }

    #[test]
    fn lenient_minimal_result() {
        let r =
            parse_result(r#"{"type":"result","subtype":"success","is_error":false,"errors":[1]}"#)
                .unwrap();
        assert!(r.success);
        assert_eq!(r.usage, None);
        assert_eq!(r.cost_usd, None);
        assert_eq!(r.errors, vec!["1"]);
    }

    #[test]
    fn a_forged_negative_cost_or_token_count_reads_as_unknown() {
        let r = parse_result(
            r#"{"type":"result","subtype":"success","is_error":false,"total_cost_usd":-1000.5,
               "usage":{"input_tokens":-5,"output_tokens":7,"cache_read_input_tokens":-1}}"#
                .replace('\n', "")
                .as_str(),
        )
        .unwrap();
        assert_eq!(r.cost_usd, None);
        let u = r.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (0, 7, 0)
        );
    }

    #[test]
    fn verdict_kind_spellings() {
        for k in VerdictKind::ALL {
            assert_eq!(k.as_str().parse::<VerdictKind>(), Ok(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(" approve ".parse(), Ok(VerdictKind::Approve));
        assert!("APPROVED"
            .parse::<VerdictKind>()
            .unwrap_err()
            .contains("APPROVED"));
    }

    #[test]
    fn reads_verdict_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("verdict.json");
        assert_eq!(read_verdict(&p), Ok(None));

        std::fs::write(
            &p,
            r#"{"verdict": "REQUEST_CHANGES", "summary": "fix tests"}"#,
        )
        .unwrap();
        assert_eq!(
            read_verdict(&p),
            Ok(Some(Verdict {
                verdict: VerdictKind::RequestChanges,
                summary: "fix tests".into()
            }))
        );
        std::fs::write(&p, r#"{"verdict": "PASS"}"#).unwrap();
        assert_eq!(read_verdict(&p).unwrap().unwrap().summary, "");

        for (content, needle) in [
            ("not json", "not valid JSON"),
            ("", "not valid JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"summary": "x"}"#, "no \"verdict\""),
            (r#"{"verdict": 1}"#, "not a string"),
            (r#"{"verdict": "LGTM"}"#, "unknown verdict \"LGTM\""),
        ] {
            std::fs::write(&p, content).unwrap();
            let err = read_verdict(&p).unwrap_err();
            assert!(
                err.contains(needle) && err.contains("verdict.json"),
                "{err}"
            );
        }
        // Exists but unreadable (a directory).
        assert!(read_verdict(dir.path())
            .unwrap_err()
            .contains("cannot read"));
    }

    #[test]
    fn a_planted_verdict_file_is_refused_without_following_or_blocking() {
        let dir = tempfile::tempdir().unwrap();
        // A symlink to a file that holds a valid verdict is still refused:
        // what the agent points at is none of orch's business.
        let target = dir.path().join("elsewhere.json");
        std::fs::write(&target, r#"{"verdict": "APPROVE", "summary": "s3cret"}"#).unwrap();
        let link = dir.path().join("verdict.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = read_verdict(&link).unwrap_err();
        assert!(err.contains("symlink") && !err.contains("s3cret"), "{err}");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_verdict(&link).unwrap_err().contains("symlink"));
        std::fs::remove_file(&link).unwrap();
        // A FIFO would block a plain read forever.
        let c = std::ffi::CString::new(link.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let p = link.clone();
        std::thread::spawn(move || tx.send(read_verdict(&p)).unwrap());
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading a FIFO verdict blocked");
        assert!(got.unwrap_err().contains("not a regular file"));
        std::fs::remove_file(&link).unwrap();
        // Too large.
        let big = format!(
            r#"{{"verdict": "PASS", "summary": "{}"}}"#,
            "x".repeat(VERDICT_MAX_BYTES as usize)
        );
        std::fs::write(&link, big).unwrap();
        assert!(read_verdict(&link).unwrap_err().contains("larger than"));
        std::fs::write(&link, b"{\"verdict\": \"PASS\", \"summary\": \"\xff\"}").unwrap();
        assert!(read_verdict(&link).unwrap_err().contains("UTF-8"));
    }

    fn vars() -> BTreeMap<&'static str, String> {
        BTreeMap::from([("id", "T-7".to_string()), ("title", "Fix {it}".to_string())])
    }

    #[test]
    fn render_substitutes_and_escapes() {
        assert_eq!(
            render("Task {id}: {title}\n{{\"verdict\": \"PASS\"}}", &vars()).unwrap(),
            "Task T-7: Fix {it}\n{\"verdict\": \"PASS\"}"
        );
        assert_eq!(render("", &vars()).unwrap(), "");
        assert_eq!(render("{id}{id}", &vars()).unwrap(), "T-7T-7");
        assert_eq!(render("é{id}ü", &vars()).unwrap(), "éT-7ü");
    }

    #[test]
    fn render_errors_name_the_problem() {
        let e = render("hello {nope} world", &vars()).unwrap_err();
        assert!(e.contains("{nope}") && e.contains("id, title"), "{e}");
        assert!(render("a {id", &vars())
            .unwrap_err()
            .contains("unclosed '{' at byte 2"));
        assert!(render("a {x{id}}", &vars())
            .unwrap_err()
            .contains("unclosed"));
        assert!(render("a } b", &vars())
            .unwrap_err()
            .contains("unmatched '}'"));
        assert!(render("{}", &vars())
            .unwrap_err()
            .contains("empty placeholder"));
        assert!(render("{", &vars()).unwrap_err().contains("unclosed"));
    }

    /// Runs `scripts/fake-agent` through `process::run` as a reviewer.
    fn run_fake_agent(
        mode: Option<&str>,
    ) -> (
        crate::process::RunOutcome,
        String,
        Result<Option<Verdict>, String>,
    ) {
        use crate::process::{run, RunSpec};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let verdict = dir.path().join("out/verdict.json");
        std::fs::write(dir.path().join("prompt.txt"), "Review task T-1\nbody\n").unwrap();
        let mut env: Vec<(String, String)> = [
            ("ORCH_TASK_ID", "T-1"),
            ("ORCH_STAGE", "review"),
            ("ORCH_ROLE", "reviewer"),
            ("ORCH_JOB_ID", "12"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.push(("ORCH_VERDICT_FILE".into(), verdict.display().to_string()));
        if let Some(m) = mode {
            env.push(("FAKE_AGENT_MODE".into(), m.into()));
        }
        let spec = RunSpec {
            argv: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fake-agent").into()],
            cwd: dir.path().to_path_buf(),
            env,
            env_remove_prefix: Some("FAKE_AGENT_".into()),
            stdin_path: Some(dir.path().join("prompt.txt")),
            log_path: dir.path().join("run.log"),
            timeout: Duration::from_secs(20),
            kill_grace: Duration::from_secs(1),
        };
        let out = run(&spec, Duration::from_secs(1), |_| Ok(()), || Ok(())).unwrap();
        let log = std::fs::read_to_string(&spec.log_path).unwrap();
        (out, log, read_verdict(&verdict))
    }

    #[test]
    fn only_a_uuid_is_a_session_id() {
        for good in [
            "c16fbc15-69f6-40ad-95a0-90ab58f71af9",
            "C16FBC15-69F6-40AD-95A0-90AB58F71AF9",
        ] {
            assert!(is_session_id(good), "{good}");
        }
        let long = "a".repeat(5000);
        for bad in [
            "",
            "--dangerously-skip-permissions",
            "x --resume y",
            "../../etc/passwd",
            long.as_str(),
            "-16fbc15-69f6-40ad-95a0-90ab58f71af9",
            "c16fbc15-69f6-40ad-95a0-90ab58f71af9 ",
            "c16fbc15-69f6-40ad-95a0-90ab58f71af9\n",
            "c16fbc1569f640ad95a090ab58f71af9",
            "c16fbc15-69f6-40ad-95a0-90ab58f71afg",
            "c16fbc15-69f6-40ad-95a0_90ab58f71af9",
            "c16fbc15-69f6-40ad-95a0-90ab58f71af9a",
        ] {
            assert!(!is_session_id(bad), "{bad:?}");
        }
        // Every fixture's id is one.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claude/json");
        for e in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let r = parse_result(&text).unwrap();
            assert!(is_session_id(r.session_id.as_deref().unwrap()), "{r:?}");
        }
    }

    #[test]
    fn fake_agent_reviewer_approves() {
        let (out, log, verdict) = run_fake_agent(None);
        assert_eq!(out.exit_code(), 0, "{log}");
        let r = parse_result(&log).unwrap_or_else(|| panic!("no result in {log}"));
        assert_fixture_success(&r);
        assert_eq!(r.session_id.unwrap().len(), 36);
        assert_eq!(verdict.unwrap().unwrap().verdict, VerdictKind::Approve);
    }

    #[test]
    fn fake_agent_garbage_and_fail_modes() {
        let (out, log, verdict) = run_fake_agent(Some("garbage"));
        assert_eq!(out.exit_code(), 0, "{log}");
        assert_eq!(parse_result(&log), None, "{log}");
        assert!(verdict.unwrap().is_some());

        let (out, log, verdict) = run_fake_agent(Some("fail"));
        assert_eq!(out.exit_code(), 1, "{log}");
        let r = parse_result(&log).unwrap();
        assert!(!r.success && r.subtype == "error_max_turns", "{r:?}");
        assert_eq!(verdict, Ok(None));
    }
}
