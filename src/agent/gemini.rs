//! The Gemini CLI's result, in both of its headless formats
//! (`tests/fixtures/agents/gemini/README.md`), read into an
//! [`AgentResult`].
//!
//! - `--output-format json`: one pretty-printed object `{session_id,
//!   response, stats}` on stdout; on an API error stdout is **empty** and
//!   `{session_id, error: {type, message, code}}` goes to **stderr** after
//!   a stack trace (orch's log holds both, so the last object in the log
//!   that has a `session_id` is the result);
//! - `--output-format stream-json`: JSONL `init` (session id), `message`,
//!   `tool_use`, `tool_result`, then `result` with `status` and `stats`;
//!   an error result's message embeds the API body (`[API Error: {…}]`);
//! - usage per model: `input` is uncached (prompt − cached), `cached`
//!   the cache read; output = candidates + thoughts (billed as output;
//!   stream-json: `total_tokens − input_tokens`); per invocation, also
//!   after `--resume`; no cost;
//! - the exit code of an API error is its HTTP status & 0xFF (400 → 144,
//!   429 → 173): the status when the output names none;
//! - denials: headless default approval hides the write tools from the
//!   model; a call to one fails as `tool_not_registered` (stream-json) or
//!   `Error executing tool X: Tool "X" not found` (stderr).

use serde_json::Value;

use super::{count, json_lines, string, AgentResult, ModelUsage, Usage};

/// The statuses an exit code `status & 0xFF` is read back into.
const STATUSES: [i64; 12] = [400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504, 529];

/// The HTTP status whose low byte is `exit_code` (144 → 400, 173 → 429),
/// if one of the API's statuses has it. 0 and 1 are never a status.
pub fn status_of_exit(exit_code: i64) -> Option<i64> {
    if exit_code <= 1 {
        return None;
    }
    STATUSES.into_iter().find(|s| s & 0xFF == exit_code)
}

/// Reads a Gemini run's log (stdout and stderr); `None` without a Gemini
/// result or a status-coded exit (usage unknown).
pub fn parse(log: &str, exit_code: i64) -> Option<AgentResult> {
    stream(log, exit_code)
        .or_else(|| json(log, exit_code))
        .or_else(|| {
            // No JSON at all (killed mid-write?): an exit code that is a
            // status still says which class of failure this was.
            let status = status_of_exit(exit_code)?;
            let mut r = AgentResult::empty(false);
            r.api_error_status = Some(status);
            r.result_text = Some(format!(
                "gemini exited with code {exit_code} (HTTP status {status} & 0xFF)"
            ));
            Some(r)
        })
}

/// Usage and its per-model split from a `stats.models` object; `output`
/// reads a model's output count from its entry.
fn models(stats: &Value, tokens_of: impl Fn(&Value) -> Usage) -> (Option<Usage>, Vec<ModelUsage>) {
    let Some(models) = stats.get("models").and_then(Value::as_object) else {
        return (None, Vec::new());
    };
    let split: Vec<ModelUsage> = models
        .iter()
        .map(|(model, m)| ModelUsage {
            model: model.clone(),
            usage: tokens_of(m),
        })
        .collect();
    let total = split.iter().fold(Usage::default(), |a, m| a.plus(m.usage));
    (Some(total), split)
}

/// The API error inside a Gemini error message: `{"error":{"code":400,
/// "status":"INVALID_ARGUMENT","message":…}}`, bare or in `[API Error:
/// …]`. Returns `(code, status word, message)`.
fn embedded_error(message: &str) -> Option<(Option<i64>, Option<String>, Option<String>)> {
    let start = message.find("{\"error\"")?;
    let v: Value = serde_json::Deserializer::from_str(&message[start..])
        .into_iter::<Value>()
        .next()?
        .ok()?;
    let e = v.get("error")?;
    Some((
        e.get("code").and_then(Value::as_i64),
        string(e, "status"),
        string(e, "message"),
    ))
}

/// Fills the error fields of `r` from an error `message`, a numeric
/// `code` when the output has one, and the exit code.
fn set_error(r: &mut AgentResult, message: &str, code: Option<i64>, exit_code: i64) {
    let embedded = embedded_error(message);
    let (inner_code, word, inner_message) = embedded.unwrap_or_default();
    r.api_error_status = code
        .or(inner_code)
        .filter(|c| (100..=599).contains(c))
        .or_else(|| status_of_exit(exit_code));
    r.api_error_type = word;
    r.result_text = Some(inner_message.unwrap_or_else(|| {
        message
            .trim()
            .trim_start_matches("[API Error: ")
            .replace("]\n", "\n")
            .trim_end_matches(']')
            .to_string()
    }));
}

/// `--output-format stream-json`: the events up to the last `result`.
fn stream(log: &str, exit_code: i64) -> Option<AgentResult> {
    let mut session = None;
    let mut text = String::new();
    let mut tools: std::collections::HashMap<String, (String, Value)> = Default::default();
    let mut denials = Vec::new();
    let mut result = None;
    for v in json_lines(log) {
        match v.get("type").and_then(Value::as_str) {
            Some("init") => session = string(&v, "session_id"),
            Some("message") if v.get("role").and_then(Value::as_str) == Some("assistant") => {
                text.push_str(v.get("content").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => {
                // The final text is what follows the last tool call.
                text.clear();
                if let Some(id) = string(&v, "tool_id") {
                    let name = string(&v, "tool_name").unwrap_or_else(|| "?".into());
                    let input = v.get("parameters").cloned().unwrap_or(Value::Null);
                    tools.insert(id, (name, input));
                }
            }
            Some("tool_result") => {
                let kind = v.pointer("/error/type").and_then(Value::as_str);
                if kind == Some("tool_not_registered") {
                    let (name, input) = string(&v, "tool_id")
                        .and_then(|id| tools.get(&id).cloned())
                        .unwrap_or_else(|| ("?".into(), Value::Null));
                    denials.push(serde_json::json!({
                        "tool_name": name,
                        "tool_input": input,
                        "message": v.pointer("/error/message").and_then(Value::as_str).map(|m| super::bounded(m, 300)),
                    }));
                }
            }
            Some("result") if v.get("status").is_some() => result = Some(v),
            _ => {}
        }
    }
    let v = result?;
    let success = v.get("status").and_then(Value::as_str) == Some("success") && exit_code == 0;
    let mut r = AgentResult::empty(success);
    r.session_id = session;
    r.permission_denials = denials;
    let stats = v.get("stats").cloned().unwrap_or(Value::Null);
    let (usage, split) = models(&stats, |m| Usage {
        input_tokens: count(m, "input"),
        cache_read_input_tokens: count(m, "cached"),
        cache_creation_input_tokens: 0,
        output_tokens: count(m, "total_tokens")
            .saturating_sub(count(m, "input_tokens"))
            .max(0),
    });
    r.usage = usage;
    r.model_usage = split;
    if success {
        r.result_text = (!text.is_empty()).then_some(text);
    } else {
        let message = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("gemini reported an error");
        set_error(&mut r, message, None, exit_code);
    }
    Some(r)
}

/// `--output-format json`: the last object in the log with a
/// `session_id` (stdout on success, stderr on an error).
fn json(log: &str, exit_code: i64) -> Option<AgentResult> {
    // Objects start at a line's start; try the last few from the end.
    let starts: Vec<usize> = std::iter::once(0)
        .chain(log.match_indices('\n').map(|(i, _)| i + 1))
        .filter(|i| log[*i..].starts_with('{'))
        .collect();
    let v = starts.iter().rev().take(64).find_map(|i| {
        let v = serde_json::Deserializer::from_str(&log[*i..])
            .into_iter::<Value>()
            .next()?
            .ok()?;
        (v.get("session_id").is_some() && (v.get("response").is_some() || v.get("error").is_some()))
            .then_some(v)
    })?;
    let error = v.get("error").filter(|e| !e.is_null());
    let success = error.is_none() && exit_code == 0;
    let mut r = AgentResult::empty(success);
    r.session_id = string(&v, "session_id");
    let stats = v.get("stats").cloned().unwrap_or(Value::Null);
    let (usage, split) = models(&stats, |m| {
        let t = m.get("tokens").cloned().unwrap_or(Value::Null);
        Usage {
            input_tokens: count(&t, "input"),
            cache_read_input_tokens: count(&t, "cached"),
            cache_creation_input_tokens: 0,
            output_tokens: count(&t, "candidates").saturating_add(count(&t, "thoughts")),
        }
    });
    r.usage = usage;
    r.model_usage = split;
    r.permission_denials = stderr_denials(log);
    match error {
        None => r.result_text = string(&v, "response"),
        Some(e) => {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("gemini reported an error");
            set_error(
                &mut r,
                message,
                e.get("code").and_then(Value::as_i64),
                exit_code,
            );
        }
    }
    Some(r)
}

/// `Error executing tool write_file: Tool "write_file" not found…` on
/// stderr: a tool the CLI withheld from the model.
fn stderr_denials(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Error executing tool ")?;
            let (tool, why) = rest.split_once(": ")?;
            why.contains("not found").then(|| {
                serde_json::json!({
                    "tool_name": super::bounded(tool, 80),
                    "tool_input": {},
                    "message": super::bounded(why, 300),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentKind;

    fn parsed(name: &str) -> AgentResult {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agents/gemini/");
        let read = |ext: &str| std::fs::read_to_string(format!("{dir}{name}.{ext}")).unwrap();
        // `resume.first` has no `.rc`: that run succeeded.
        let rc = std::fs::read_to_string(format!("{dir}{name}.rc"))
            .map_or(0, |t| t.lines().next().unwrap().trim().parse().unwrap());
        // The run's log: stdout and stderr in one file; both orders.
        let a = parse(&format!("{}{}", read("stdout"), read("stderr")), rc);
        let b = parse(&format!("{}{}", read("stderr"), read("stdout")), rc);
        assert_eq!(a, b, "{name}: the order of stdout and stderr matters");
        a.unwrap_or_else(|| panic!("{name}: no result"))
    }

    fn usage(input: i64, read: i64, output: i64) -> Option<Usage> {
        Some(Usage {
            input_tokens: input,
            cache_read_input_tokens: read,
            cache_creation_input_tokens: 0,
            output_tokens: output,
        })
    }

    #[test]
    fn exit_codes_read_back_into_statuses() {
        assert_eq!(status_of_exit(144), Some(400));
        assert_eq!(status_of_exit(173), Some(429));
        assert_eq!(status_of_exit(0), None);
        assert_eq!(status_of_exit(1), None);
        assert_eq!(status_of_exit(124), None);
    }

    #[test]
    fn success_in_both_formats() {
        let r = parsed("success");
        assert!(r.success && r.subtype == "success", "{r:?}");
        assert_eq!(
            r.session_id.as_deref(),
            Some("12ab3aa7-9f5e-42c6-bf25-96dbcc66793c")
        );
        // flash-lite 472 + 12130 uncached, 448 + 12096 cached, 18+3 + 53+6 out.
        assert_eq!(r.usage, usage(12602, 12544, 80));
        assert_eq!(r.model_usage.len(), 2);
        assert_eq!(r.model_usage[1].model, "gemini-3.8-flash");
        assert_eq!(r.model_usage[1].usage, usage(12130, 12096, 59).unwrap());
        assert_eq!(
            r.result_text.as_deref(),
            Some("Created hello.txt with a greeting.")
        );
        assert_eq!((r.cost_usd, r.api_error_status), (None, None));
        assert!(r.permission_denials.is_empty());

        let r = parsed("success.stream-json");
        assert!(r.success, "{r:?}");
        assert_eq!(
            r.session_id.as_deref(),
            Some("313b2d99-8204-410e-9d07-e31574b497fb")
        );
        // 477 + 12150 uncached, 448 + 12096 cached, (946-925) + (24306-24246) out.
        assert_eq!(r.usage, usage(12627, 12544, 81));
        assert_eq!(
            r.result_text.as_deref(),
            Some("Created hello.txt with a greeting.")
        );
        assert!(r.permission_denials.is_empty());
        assert!(super::super::is_session_id_of(
            AgentKind::Gemini,
            &r.session_id.unwrap()
        ));
    }

    #[test]
    fn a_400_is_read_from_stderr_or_the_stream_and_fails_at_once() {
        for (name, id) in [
            ("error_400", "ee2e3ec4-ff96-4298-bf06-de9077db6d02"),
            (
                "error_400.stream-json",
                "4762f2bf-ff40-4dc5-b35c-f143a38971ca",
            ),
        ] {
            let r = parsed(name);
            assert!(!r.success && r.is_error, "{name}");
            assert_eq!(r.session_id.as_deref(), Some(id));
            assert_eq!(r.api_error_status, Some(400), "{name}");
            assert_eq!(r.api_error_type.as_deref(), Some("INVALID_ARGUMENT"));
            assert_eq!(
                r.result_text.as_deref(),
                Some("Request contains an invalid argument. (scripted 400)")
            );
            let e = super::super::run_error(144, None, Some(&r)).unwrap();
            assert!(!e.retryable, "{e:?}");
        }
        // The stream's error result carries the router's tokens.
        assert_eq!(parsed("error_400.stream-json").usage, usage(479, 448, 21));
        assert_eq!(parsed("error_400").usage, None);
    }

    #[test]
    fn a_429_pauses_in_both_formats() {
        for name in ["rate_limit_429", "rate_limit_429.stream-json"] {
            let r = parsed(name);
            assert!(!r.success);
            assert_eq!(r.api_error_status, Some(429), "{name}");
            assert!(r
                .result_text
                .as_deref()
                .unwrap()
                .starts_with("Resource has been exhausted (e.g. check quota). (scripted 429)"));
            let hit = super::super::limit_hit(&r, 0).unwrap();
            assert_eq!(hit.kind, super::super::LimitKind::Rate);
        }
        assert_eq!(
            parsed("rate_limit_429").session_id.as_deref(),
            Some("7dd5e0b3-d00a-4143-ae29-274c60a70f01")
        );
        // Retries until killed at the timeout: no JSON, no status (124).
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agents/gemini/");
        let log =
            std::fs::read_to_string(format!("{dir}rate_limit_429.default_retries.stderr")).unwrap();
        assert_eq!(parse(&log, 124), None);
        // A bare 173 without JSON is still a 429.
        assert_eq!(parse("", 173).unwrap().api_error_status, Some(429));
    }

    #[test]
    fn a_hidden_tool_is_a_denial_in_both_formats() {
        let r = parsed("denied");
        assert!(r.success);
        assert_eq!(r.denials(), vec!["write_file"]);
        assert_eq!(r.usage, usage(471 + 10310, 448 + 10176, 21 + 81));
        let r = parsed("denied.stream-json");
        assert!(r.success);
        assert_eq!(
            r.denials(),
            vec!["write_file /srv/agent-run/gemini-denied-stream-json/repo/hello.txt"]
        );
        assert!(r
            .result_text
            .unwrap()
            .starts_with("Could not create hello.txt"));
    }

    #[test]
    fn a_resumed_session_keeps_its_id_and_counts_per_invocation() {
        let first = parsed("resume.first");
        let again = parsed("resume");
        assert_eq!(first.session_id, again.session_id);
        assert_eq!(again.usage, usage(628 + 12436, 512 + 12224, 21 + 58));
        assert_eq!(again.cumulative, None);
        let first = parsed("resume.stream-json.first");
        let again = parsed("resume.stream-json");
        assert_eq!(first.session_id, again.session_id);
        assert_eq!(again.usage, usage(639 + 12403, 512 + 12288, 21 + 60));
    }

    #[test]
    fn prices_apply_per_model_and_a_missing_one_makes_the_cost_unknown() {
        let r = parsed("success");
        let price = |i, o| crate::config::Price {
            input_usd_per_mtok: i,
            output_usd_per_mtok: o,
            cache_read_usd_per_mtok: Some(0.0),
            cache_write_usd_per_mtok: None,
        };
        let mut prices = std::collections::BTreeMap::new();
        prices.insert("gemini-3.8-flash".to_string(), price(1.0, 10.0));
        assert_eq!(r.cost(&prices, None), None);
        prices.insert("gemini-3.5-flash-lite".to_string(), price(0.5, 2.0));
        let want = (12130.0 * 1.0 + 59.0 * 10.0 + 472.0 * 0.5 + 21.0 * 2.0) / 1e6;
        assert!((r.cost(&prices, None).unwrap() - want).abs() < 1e-12);
    }
}
