//! What the agent asks of orch, answered by orch itself: reading and
//! writing files (`fs/read_text_file`, `fs/write_text_file`), confined to
//! the worktree by the kernel ([`crate::untrusted::open_beneath`]), and
//! permission requests (`session/request_permission`), decided by the
//! role's [`Permissions`]; anything else is "method not found". Every
//! refusal is a recorded denial.

use std::io::{self, BufRead, Read as _, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use super::rpc::{log_text, log_word, Client, Fatal};
use super::{Permissions, FILE_MAX_BYTES};
use crate::agent::bounded;

impl<R: BufRead, W: Write, L: Write> Client<'_, R, W, L> {
    /// Answers the agent's request `method` #`id`.
    pub(super) fn on_request(
        &mut self,
        method: &str,
        id: Value,
        params: Option<&Value>,
    ) -> Result<(), Fatal> {
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
    pub(super) fn read_file(&mut self, params: &Value) -> Result<Value, (i64, String)> {
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
    pub(super) fn write_file(&mut self, params: &Value) -> Result<Value, (i64, String)> {
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
    pub(super) fn confine(&self, path: &str, write: bool) -> Result<PathBuf, String> {
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
    pub(super) fn refuse(&mut self, method: &str, path: &str, why: &str) -> (i64, String) {
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
    pub(super) fn permission(&mut self, params: &Value) -> Value {
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
}

/// The paths a tool call names: `locations[].path`, the diffs' `path`,
/// `rawInput.path` / `rawInput.file_path` (at most 20).
pub(super) fn tool_paths(tool: &Value) -> Vec<String> {
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

/// What [`crate::untrusted::open_beneath`]'s error means for the agent.
fn beneath_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EXDEV) => "a path that leads outside the worktree".into(),
        Some(libc::ELOOP) => "a path through too many or forbidden symlinks".into(),
        Some(libc::ENOSYS) => "not openable here (openat2 needs Linux 5.6 or later)".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::acp::testkit::ran;
    use crate::acp::Permissions;
    use std::time::Duration;

    #[test]
    pub(super) fn a_denied_write_is_a_denial_known_first_hand() {
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
    pub(super) fn file_requests_outside_the_worktree_are_refused_and_recorded() {
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
}
