//! OpenCode's result: `opencode run --format json` prints JSONL events
//! (`tests/fixtures/agents/opencode/README.md`), read here into an
//! [`AgentResult`].
//!
//! - session id: `sessionID` on every event (`ses_…`);
//! - usage and cost: summed over the `step_finish` parts: `tokens.input`
//!   (uncached), `tokens.cache.read`, `tokens.cache.write`,
//!   `tokens.output` + `tokens.reasoning`, and `cost` in US dollars (the
//!   only kind besides Claude Code that reports one);
//! - final text: the `text` parts of the last step;
//! - failure: an `error` event, `error.data.statusCode` and `message`;
//! - denials: a denied tool is removed from the request; a call to it
//!   comes back as tool `invalid`, `state.input.tool` naming it.

use serde_json::Value;

use super::{count, json_lines, status_of_error_type, string, AgentResult, Usage};

/// Reads an OpenCode run's log; `None` without any OpenCode event.
pub fn parse(log: &str, exit_code: i64) -> Option<AgentResult> {
    let mut seen = false;
    let mut session = None;
    let mut usage: Option<Usage> = None;
    let mut cost: Option<f64> = None;
    let mut text = String::new();
    let mut stopped = false;
    let mut error: Option<Value> = None;
    let mut denials = Vec::new();
    for v in json_lines(log) {
        let Some(kind) = v.get("type").and_then(Value::as_str) else {
            continue;
        };
        let part = v.get("part").cloned().unwrap_or(Value::Null);
        match kind {
            "step_start" => text.clear(),
            "text" => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default()),
            "tool_use" => {
                let input = part.pointer("/state/input").cloned().unwrap_or(Value::Null);
                let unavailable = input
                    .get("error")
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.contains("unavailable tool"));
                if part.get("tool").and_then(Value::as_str) == Some("invalid") && unavailable {
                    denials.push(serde_json::json!({
                        "tool_name": input.get("tool").and_then(Value::as_str).map_or("?".into(), |t| super::bounded(t, 80)),
                        "tool_input": {},
                        "message": input.get("error").and_then(Value::as_str).map(|m| super::bounded(m, 300)),
                    }));
                }
            }
            "step_finish" => {
                let t = part.get("tokens").cloned().unwrap_or(Value::Null);
                let cache = t.get("cache").cloned().unwrap_or(Value::Null);
                let step = Usage {
                    input_tokens: count(&t, "input"),
                    output_tokens: count(&t, "output").saturating_add(count(&t, "reasoning")),
                    cache_read_input_tokens: count(&cache, "read"),
                    cache_creation_input_tokens: count(&cache, "write"),
                };
                usage = Some(usage.unwrap_or_default().plus(step));
                if let Some(c) = part
                    .get("cost")
                    .and_then(Value::as_f64)
                    .filter(|c| c.is_finite() && *c >= 0.0)
                {
                    cost = Some(cost.unwrap_or(0.0) + c);
                }
                stopped = part.get("reason").and_then(Value::as_str) == Some("stop");
            }
            "error" => error = v.get("error").cloned(),
            _ => continue,
        }
        seen = true;
        if session.is_none() {
            session = string(&v, "sessionID");
        }
    }
    if !seen {
        return None;
    }
    let success = error.is_none() && stopped && exit_code == 0;
    let mut r = AgentResult::empty(success);
    r.session_id = session;
    r.usage = usage;
    r.cost_usd = cost;
    r.permission_denials = denials;
    match error {
        None => r.result_text = (!text.is_empty()).then_some(text),
        Some(e) => {
            let data = e.get("data").cloned().unwrap_or(Value::Null);
            let body = data
                .get("responseBody")
                .and_then(Value::as_str)
                .and_then(|b| serde_json::from_str::<Value>(b).ok());
            let inner = body.as_ref().and_then(|b| b.get("error"));
            r.api_error_status = data
                .get("statusCode")
                .and_then(Value::as_i64)
                .filter(|c| (100..=599).contains(c))
                .or_else(|| inner.and_then(status_of_error_type));
            r.api_error_type = inner
                .and_then(|i| string(i, "type"))
                .or_else(|| string(&e, "name"));
            r.result_text = string(&data, "message")
                .or_else(|| string(&e, "name"))
                .or_else(|| Some("opencode reported an error".into()));
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentKind;

    fn parsed(name: &str) -> AgentResult {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/agents/opencode/"
        );
        let read = |ext: &str| std::fs::read_to_string(format!("{dir}{name}.{ext}")).unwrap();
        let rc = read("rc").lines().next().unwrap().trim().parse().unwrap();
        parse(&format!("{}{}", read("stdout"), read("stderr")), rc)
            .unwrap_or_else(|| panic!("{name}: no result"))
    }

    #[test]
    fn success_sums_the_steps_and_reports_a_cost() {
        let r = parsed("success");
        assert!(r.success && r.subtype == "success", "{r:?}");
        assert_eq!(
            r.session_id.as_deref(),
            Some("ses_daf047d0affesgIA4dy5bNyK0M")
        );
        assert!(super::super::is_session_id_of(
            AgentKind::Opencode,
            r.session_id.as_deref().unwrap()
        ));
        assert!(!super::super::is_session_id_of(
            AgentKind::Opencode,
            "ses_--resume"
        ));
        assert!(!super::super::is_session_id(
            r.session_id.as_deref().unwrap()
        ));
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 3750 + 3765,
                cache_read_input_tokens: 3648 + 3712,
                cache_creation_input_tokens: 0,
                output_tokens: 58 + 3 + 44 + 3,
            })
        );
        assert!((r.cost_usd.unwrap() - (0.022404 + 0.022091)).abs() < 1e-12);
        assert_eq!(
            r.result_text.as_deref(),
            Some("Created hello.txt with a greeting.")
        );
        assert!(r.permission_denials.is_empty() && r.api_error_status.is_none());
    }

    #[test]
    fn a_400_fails_at_once_and_a_429_pauses() {
        let r = parsed("error_400");
        assert!(!r.success);
        assert_eq!(
            r.session_id.as_deref(),
            Some("ses_daf0468caffeB67ozDXAlXHbex")
        );
        assert_eq!(r.api_error_status, Some(400));
        assert_eq!(r.api_error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(
            r.result_text.as_deref(),
            Some("Invalid 'input': the fake model rejects this request (scripted 400).")
        );
        assert_eq!((r.usage, r.cost_usd), (None, None));
        assert!(
            !super::super::run_error(1, None, Some(&r))
                .unwrap()
                .retryable
        );

        let r = parsed("rate_limit_429");
        assert_eq!(r.api_error_status, Some(429));
        assert_eq!(r.api_error_type.as_deref(), Some("requests"));
        assert!(r
            .result_text
            .as_deref()
            .unwrap()
            .starts_with("Rate limit reached for requests"));
        let hit = super::super::limit_hit(&r, 0).unwrap();
        assert_eq!(hit.kind, super::super::LimitKind::Rate);
    }

    #[test]
    fn a_call_to_a_removed_tool_is_a_denial() {
        let r = parsed("denied");
        assert!(r.success);
        assert_eq!(r.denials(), vec!["apply_patch"]);
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 2941 + 3002,
                cache_read_input_tokens: 2816 + 2880,
                cache_creation_input_tokens: 0,
                output_tokens: 58 + 3 + 86 + 3,
            })
        );
        assert!((r.cost_usd.unwrap() - (0.017943 + 0.01912)).abs() < 1e-12);
        assert!(r
            .result_text
            .unwrap()
            .starts_with("Could not create hello.txt"));
    }

    #[test]
    fn garbage_is_no_result() {
        assert_eq!(parse("", 0), None);
        assert_eq!(parse("{\"type\":\"other\"}\nnoise\n", 0), None);
    }
}
