//! What one ACP run produced, first-hand ([`Outcome`]: the agent, the
//! session, the stop reason, the turn's tokens and cost, the final text,
//! the failed call, the denials), and how it reads as the result every
//! agent kind yields ([`Outcome::to_agent_result`]), so the run is classed
//! as Claude Code's is.

use serde::Serialize;
use serde_json::Value;

use crate::agent::{bounded, AgentResult, Usage};

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
    pub(super) fn new() -> Outcome {
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

    /// An outcome whose exchange never ended (see [`super::run`]).
    pub(super) fn lost(message: &str) -> Outcome {
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
            cost_is_session_total: false,
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

/// Tokens of a `session/prompt` result (see [`Outcome::usage`]); counts
/// that are missing, negative or not integers read as 0.
pub(super) fn turn_usage(result: &Value) -> Option<Usage> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acp::testkit::{fixture_result, ran_plain};
    use crate::acp::Permissions;
    use serde_json::json;

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
