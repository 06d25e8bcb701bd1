//! The session and its one turn: `initialize` (the protocol version
//! checked), `authenticate`, `session/load` of the previous session or
//! `session/new`, then `session/prompt` and its response (stop reason,
//! tokens, cost); and the `session/update`s the agent reports the turn
//! with, each logged, its message texts kept as the final text.

use std::io::{BufRead, Write};

use serde_json::{json, Value};

use super::outcome::turn_usage;
use super::requests::tool_paths;
use super::rpc::{log_text, log_word, Client, Fatal, GARBAGE_LOGGED_MAX};
use super::{Failure, PROTOCOL_VERSION};
use crate::agent::bounded;

/// Longest final text kept, in bytes (its end is kept).
const TEXT_MAX_BYTES: usize = 64 << 10;

impl<R: BufRead, W: Write, L: Write> Client<'_, R, W, L> {
    /// Runs the whole exchange: a fatal end is logged and becomes the
    /// outcome's error when the agent answered none.
    pub(super) fn run(&mut self) {
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
    pub(super) fn session(&mut self) -> Result<(), Fatal> {
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
    pub(super) fn fail(
        &mut self,
        method: &str,
        code: Option<i64>,
        message: String,
    ) -> Result<(), Fatal> {
        self.outcome.error = Some(Failure {
            method: method.into(),
            code,
            message: message.clone(),
        });
        Err(Fatal(message))
    }

    /// Logs a notification; a `session/update` of the turn also feeds the
    /// final text (`agent_message_chunk`) and the cost (`usage_update`).
    pub(super) fn on_notification(&mut self, method: &str, params: Option<&Value>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acp::testkit::request;
    use crate::acp::{exchange, Request};
    use std::io;
    use std::path::Path;

    #[test]
    pub(super) fn an_agent_without_auth_or_of_another_version_fails_clearly() {
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
    pub(super) fn a_usd_cost_in_usage_updates_is_the_turns_cost() {
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
    pub(super) fn the_final_text_keeps_its_end_on_a_char_boundary() {
        let mut t = String::from("ééé");
        push_bounded(&mut t, "x", 4);
        assert_eq!(t, "éx");
    }
}
