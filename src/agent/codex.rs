//! The Codex CLI's result: `codex exec --json` prints JSONL events
//! (`tests/fixtures/agents/codex/README.md`), read here into an
//! [`AgentResult`].
//!
//! - session id: `thread.started.thread_id` (a UUID);
//! - usage: `turn.completed.usage`, cumulative over the thread after
//!   `exec resume` ([`AgentResult::cumulative`]); `input_tokens` includes
//!   `cached_input_tokens`, taken out here; no cost;
//! - final text: the last `agent_message` item;
//! - failure: `turn.failed.error.message`, the raw 400 body as a JSON
//!   string or a text such as `last status: 429 Too Many Requests` (no
//!   numeric status: it is read from either);
//! - denials: none on stdout; a refused patch leaves
//!   `ERROR codex_core::tools::router: error=patch rejected: …` on stderr.

use serde_json::Value;

use super::{count, json_lines, status_in_text, status_of_error_type, string, AgentResult, Usage};

/// Reads a Codex run's log (stdout and stderr); `None` without any Codex
/// event (usage unknown).
pub fn parse(log: &str, exit_code: i64) -> Option<AgentResult> {
    let mut seen = false;
    let mut session = None;
    let mut usage = None;
    let mut text = None;
    let mut failed: Option<String> = None;
    for v in json_lines(log) {
        match v.get("type").and_then(Value::as_str) {
            Some("thread.started") => {
                seen = true;
                session = string(&v, "thread_id");
            }
            Some("turn.started") => seen = true,
            Some("turn.completed") => {
                let u = v.get("usage").cloned().unwrap_or(Value::Null);
                let input = count(&u, "input_tokens");
                let cached = count(&u, "cached_input_tokens").min(input);
                usage = Some(Usage {
                    input_tokens: input - cached,
                    output_tokens: count(&u, "output_tokens"),
                    cache_read_input_tokens: cached,
                    cache_creation_input_tokens: count(&u, "cache_write_input_tokens"),
                });
                failed = None;
            }
            Some("turn.failed") => {
                failed = Some(
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("turn failed")
                        .to_string(),
                );
            }
            Some("item.completed") => {
                let item = v.get("item").cloned().unwrap_or(Value::Null);
                if item.get("type").and_then(Value::as_str) == Some("agent_message") {
                    text = string(&item, "text");
                }
            }
            _ => {}
        }
    }
    if !seen && usage.is_none() && failed.is_none() {
        return None;
    }
    let success = failed.is_none() && usage.is_some() && exit_code == 0;
    let mut r = AgentResult::empty(success);
    r.session_id = session;
    r.usage = usage;
    r.cumulative = usage;
    r.permission_denials = denials(log);
    match failed {
        Some(message) => {
            // The 400 body arrives verbatim: `{"error": {"message", "type", "code"}}`.
            let body = serde_json::from_str::<Value>(&message).ok();
            let err = body.as_ref().and_then(|b| b.get("error"));
            r.api_error_status = err
                .and_then(status_of_error_type)
                .or_else(|| status_in_text(&message));
            r.api_error_type = err.and_then(|e| string(e, "type"));
            r.result_text = Some(err.and_then(|e| string(e, "message")).unwrap_or(message));
        }
        None => r.result_text = text,
    }
    Some(r)
}

/// The refusals Codex logs on stderr (`codex_core::tools::router:
/// error=patch rejected: …`) as `{tool_name, tool_input, message}`
/// objects. A shell command the sandbox refused leaves no trace at all.
fn denials(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| {
            let (_, what) = line.split_once("codex_core::tools::router: error=")?;
            let lower = what.to_ascii_lowercase();
            if !(lower.contains("rejected") || lower.contains("denied")) {
                return None;
            }
            let tool = if lower.starts_with("patch") {
                "apply_patch"
            } else {
                "exec_command"
            };
            Some(serde_json::json!({
                "tool_name": tool,
                "tool_input": {},
                "message": super::bounded(what, 300),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> (String, i64) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agents/codex/");
        let read = |ext: &str| std::fs::read_to_string(format!("{dir}{name}.{ext}")).unwrap();
        let rc = read("rc").lines().next().unwrap().trim().parse().unwrap();
        // The run's log: stdout, then stderr (orch's log holds both).
        (format!("{}{}", read("stdout"), read("stderr")), rc)
    }

    fn parsed(name: &str) -> AgentResult {
        let (log, rc) = fixture(name);
        parse(&log, rc).unwrap_or_else(|| panic!("{name}: no result"))
    }

    fn usage(input: i64, read: i64, write: i64, output: i64) -> Option<Usage> {
        Some(Usage {
            input_tokens: input,
            cache_read_input_tokens: read,
            cache_creation_input_tokens: write,
            output_tokens: output,
        })
    }

    #[test]
    fn success_and_success_shell() {
        for (name, id, u) in [
            (
                "success",
                "01a250fa-db04-79d3-a474-0a6ddc859c85",
                usage(19670 - 9792, 9792, 0, 102),
            ),
            (
                "success_shell",
                "01a250fa-e51a-74f2-b4fc-c62ea7069af2",
                usage(19700 - 9792, 9792, 0, 99),
            ),
        ] {
            let r = parsed(name);
            assert!(r.success && !r.is_error && r.subtype == "success", "{r:?}");
            assert_eq!(r.session_id.as_deref(), Some(id));
            assert!(super::super::is_session_id_of(
                crate::config::AgentKind::Codex,
                id
            ));
            assert_eq!(r.usage, u, "{name}");
            assert_eq!(r.cumulative, u);
            assert_eq!(r.cost_usd, None);
            assert_eq!(
                r.result_text.as_deref(),
                Some("Created hello.txt with a greeting.")
            );
            assert_eq!(r.api_error_status, None);
            assert!(r.permission_denials.is_empty());
            assert!(r.model_usage.is_empty());
        }
    }

    #[test]
    fn error_400_is_a_permanent_invalid_request() {
        let r = parsed("error_400");
        assert!(!r.success && r.is_error);
        assert_eq!(
            r.session_id.as_deref(),
            Some("01a250fa-dcce-75c1-84e4-8f597dc15a5b")
        );
        assert_eq!(r.api_error_status, Some(400));
        assert_eq!(r.api_error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(
            r.result_text.as_deref(),
            Some("Invalid 'input': the fake model rejects this request (scripted 400).")
        );
        assert_eq!(r.usage, None);
        let e = super::super::run_error(1, None, Some(&r)).unwrap();
        assert!(!e.retryable, "{e:?}");
        assert!(
            e.reason
                .starts_with("model API error 400 (invalid_request_error): Invalid 'input'"),
            "{e:?}"
        );
    }

    #[test]
    fn a_429_after_retries_is_a_rate_limit() {
        for name in ["rate_limit_429", "rate_limit_429.default_retries"] {
            let r = parsed(name);
            assert!(!r.success);
            assert_eq!(r.api_error_status, Some(429), "{name}");
            assert_eq!(
                r.result_text.as_deref(),
                Some("exceeded retry limit, last status: 429 Too Many Requests")
            );
            let hit = super::super::limit_hit(&r, 0).unwrap();
            assert_eq!(hit.kind, super::super::LimitKind::Rate);
            assert!(
                super::super::run_error(1, None, Some(&r))
                    .unwrap()
                    .retryable
            );
        }
    }

    #[test]
    fn a_rejected_patch_is_a_denial_and_a_refused_shell_leaves_none() {
        let r = parsed("denied");
        assert!(r.success, "Codex exits 0 and completes the turn: {r:?}");
        assert_eq!(r.usage, usage(19279 - 9536, 9536, 0, 123));
        assert_eq!(r.denials(), vec!["apply_patch"]);
        assert!(r.permission_denials[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("patch rejected: writing is blocked by read-only sandbox"));
        let r = parsed("denied_shell");
        assert!(r.success && r.permission_denials.is_empty());
        assert_eq!(r.usage, usage(19304 - 9536, 9536, 0, 136));
    }

    #[test]
    fn a_resumed_thread_reports_cumulative_usage_which_is_diffed() {
        let (first_log, _) = (
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/agents/codex/resume.first.stdout"
            ))
            .unwrap(),
            0,
        );
        let first = parse(&first_log, 0).unwrap();
        let mut second = parsed("resume");
        assert_eq!(first.session_id, second.session_id);
        assert_eq!(second.cumulative, usage(39704 - 19712, 19712, 0, 204));
        second.scope_to_run(first.cumulative);
        // 39704 = 19664 of the first run + 20040 of this one.
        assert_eq!(
            second.usage,
            usage((39704 - 19664) - (19712 - 9792), 19712 - 9792, 0, 102)
        );
        // A new thread (nothing stored) counts the figure as this run's.
        let mut fresh = parsed("resume");
        fresh.scope_to_run(None);
        assert_eq!(fresh.usage, fresh.cumulative);
    }

    #[test]
    fn garbage_is_no_result_and_forged_counts_read_as_zero() {
        assert_eq!(parse("", 0), None);
        assert_eq!(parse("hello\n{not json\n", 1), None);
        let r = parse(
            r#"{"type":"turn.completed","usage":{"input_tokens":-5,"cached_input_tokens":9,"output_tokens":"x"}}"#,
            0,
        )
        .unwrap();
        assert_eq!(r.usage, usage(0, 0, 0, 0));
    }
}
