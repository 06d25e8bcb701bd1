//! An agent CLI's session while its run goes, for resume across a rescue
//! (DESIGN §4 "Agents"): the session id read from the run's first events
//! as soon as the CLI prints it ([`Watch`], [`first_session_id`]), so a
//! run killed with its worker can be resumed by the job's next claim; and
//! the CLI's answer to a `--resume` of a session it no longer has
//! ([`resume_refused`]), after which the same claim starts a fresh
//! session.
//!
//! The log is the agent's to write: only its beginning is read (at most
//! [`HEAD_MAX_BYTES`] from where the run began), and an id is taken only
//! when it has its kind's shape ([`super::is_session_id_of`]).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{is_session_id_of, json_lines, AgentKind};

/// How much of a run's log, from where the run began, is searched for the
/// session id (bytes). The CLIs print it in their first event; a log
/// whose first this-many bytes hold none (`--output-format json`, which
/// prints only the result at the end) gives none until the run ends.
pub const HEAD_MAX_BYTES: u64 = 64 << 10;

/// The words Claude Code prints (on stderr, exit code 1, no result
/// event) when `--resume` names a session it does not have:
/// `No conversation found with session ID: <id>` — see
/// `tests/fixtures/claude/resume-not-found/`.
pub const CLAUDE_SESSION_NOT_FOUND: &str = "No conversation found with session ID";

/// The session id in the first events of a run of `kind` (`head`: the
/// log from where the run began): Claude Code's `system`/`init` event
/// (`session_id`, stream-json), Codex's `thread.started` (`thread_id`),
/// Gemini's `init` (`session_id`, stream-json), OpenCode's first event
/// (`sessionID`). `None` when there is none yet, when it does not have
/// its kind's shape, and for ACP (its session comes from the exchange).
pub fn first_session_id(kind: AgentKind, head: &str) -> Option<String> {
    let id = json_lines(head).find_map(|v| {
        let typ = v.get("type").and_then(Value::as_str);
        let field = match kind {
            AgentKind::ClaudeCode
                if typ == Some("system")
                    && v.get("subtype").and_then(Value::as_str) == Some("init") =>
            {
                "session_id"
            }
            AgentKind::Codex if typ == Some("thread.started") => "thread_id",
            AgentKind::Gemini if typ == Some("init") => "session_id",
            AgentKind::Opencode => "sessionID",
            _ => return None,
        };
        v.get(field).and_then(Value::as_str).map(str::to_string)
    })?;
    is_session_id_of(kind, &id).then_some(id)
}

/// Whether a run of `kind` that was given `session_id` to resume failed
/// because the CLI no longer has that session: it exited non-zero, printed
/// no successful result, and a line of its log (`run_log`: from where this
/// run began) is the CLI's answer naming that id —
/// Claude Code: `No conversation found with session ID: <id>`
/// (`tests/fixtures/claude/resume-not-found/`); Codex: `Error:
/// thread/resume: … no rollout found for thread id <id> …`; Gemini:
/// `Error resuming session: Invalid session identifier "<id>".`
/// (`tests/fixtures/agents/<kind>/resume-not-found.*`). OpenCode's and an
/// ACP agent's answers are not known here: false (the ACP client falls
/// back itself).
pub fn resume_refused(kind: AgentKind, run_log: &str, exit_code: i64, session_id: &str) -> bool {
    if exit_code == 0 || super::parse(kind, run_log, exit_code).is_some_and(|r| r.success) {
        return false;
    }
    let answers = |line: &str| match kind {
        AgentKind::ClaudeCode => line
            .strip_prefix(CLAUDE_SESSION_NOT_FOUND)
            .is_some_and(|rest| rest.trim_start_matches(':').trim() == session_id),
        AgentKind::Codex => {
            line.starts_with("Error: thread/resume")
                && line.contains(&format!("no rollout found for thread id {session_id}"))
        }
        AgentKind::Gemini => line.starts_with(&format!(
            "Error resuming session: Invalid session identifier \"{session_id}\""
        )),
        AgentKind::Opencode | AgentKind::Acp => false,
    };
    run_log.lines().any(|line| answers(line.trim()))
}

/// Reads the beginning of a running agent's log, from byte `from` (where
/// this run began writing), until the session id appears; see
/// [`first_session_id`]. Cheap to poll: the log is read again only when
/// it has grown, and never past [`HEAD_MAX_BYTES`] from `from`.
#[derive(Debug)]
pub struct Watch {
    kind: AgentKind,
    path: PathBuf,
    from: u64,
    read_len: u64,
    done: bool,
}

impl Watch {
    /// A watch of the log at `path` from byte `from` (the log's length
    /// when the run starts: a run that appends to a log of an earlier run
    /// of the same claim is read from its own first byte).
    pub fn new(kind: AgentKind, path: &Path, from: u64) -> Watch {
        Watch {
            kind,
            path: path.to_path_buf(),
            from,
            read_len: 0,
            done: kind == AgentKind::Acp,
        }
    }

    /// The watch of a run about to start writing to the log at `path`.
    pub fn from_end(kind: AgentKind, path: &Path) -> Watch {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Watch::new(kind, path, len)
    }

    /// Where this run began in the log (bytes).
    pub fn start(&self) -> u64 {
        self.from
    }

    /// The session id, the first time it is found; `None` before, after,
    /// and once [`HEAD_MAX_BYTES`] were read without one. An unreadable
    /// log (not yet created, not a regular file) reads as nothing yet.
    pub fn poll(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let mut f = crate::untrusted::open_regular(&self.path).ok()?;
        let len = f.metadata().ok()?.len();
        let head_len = len.saturating_sub(self.from).min(HEAD_MAX_BYTES);
        if head_len == self.read_len {
            return None;
        }
        f.seek(SeekFrom::Start(self.from)).ok()?;
        let mut head = Vec::new();
        f.take(head_len).read_to_end(&mut head).ok()?;
        self.read_len = head.len() as u64;
        let id = first_session_id(self.kind, &String::from_utf8_lossy(&head));
        if id.is_some() || self.read_len >= HEAD_MAX_BYTES {
            self.done = true;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE_STREAM: &str =
        include_str!("../../tests/fixtures/claude/stream-json/success.jsonl");
    const NOT_FOUND_STDERR: &str =
        include_str!("../../tests/fixtures/claude/resume-not-found/stream-json.stderr");

    #[test]
    fn each_kind_names_its_session_in_its_first_event() {
        assert_eq!(
            first_session_id(AgentKind::ClaudeCode, CLAUDE_STREAM).as_deref(),
            Some("0158dc2f-298d-41ce-ba6b-8c4a5b00ad41")
        );
        // Only the first line: the init event alone is enough.
        let first = CLAUDE_STREAM.lines().next().unwrap();
        assert!(first_session_id(AgentKind::ClaudeCode, first).is_some());
        let codex = include_str!("../../tests/fixtures/agents/codex/success.stdout");
        assert_eq!(
            first_session_id(AgentKind::Codex, codex).as_deref(),
            Some("01a250fa-db04-79d3-a474-0a6ddc859c85")
        );
        let gemini = include_str!("../../tests/fixtures/agents/gemini/success.stream-json.stdout");
        assert_eq!(
            first_session_id(AgentKind::Gemini, gemini).as_deref(),
            Some("313b2d99-8204-410e-9d07-e31574b497fb")
        );
        let opencode = include_str!("../../tests/fixtures/agents/opencode/success.stdout");
        assert_eq!(
            first_session_id(AgentKind::Opencode, opencode).as_deref(),
            Some("ses_daf047d0affesgIA4dy5bNyK0M")
        );
        // `--output-format json` prints no early event: no id until the end.
        let json = include_str!("../../tests/fixtures/claude/json/success.json");
        assert_eq!(first_session_id(AgentKind::ClaudeCode, json), None);
        assert_eq!(first_session_id(AgentKind::Acp, CLAUDE_STREAM), None);
    }

    #[test]
    fn an_id_not_of_the_kinds_shape_or_a_half_written_line_is_not_taken() {
        for head in [
            r#"{"type":"system","subtype":"init","session_id":"--dangerously-skip-permissions"}"#,
            r#"{"type":"system","subtype":"init","session_id":"../../etc/passwd"}"#,
            r#"{"type":"system","subtype":"init","session_id":42}"#,
            r#"{"type":"assistant","session_id":"0158dc2f-298d-41ce-ba6b-8c4a5b00ad41"}"#,
            r#"{"type":"system","subtype":"init","session_id":"0158dc2f-298d-41ce-ba6b-8c4a5b00ad41""#,
            "not json at all",
        ] {
            assert_eq!(
                first_session_id(AgentKind::ClaudeCode, head),
                None,
                "{head}"
            );
        }
    }

    #[test]
    fn claude_codes_answer_to_an_unknown_session_is_recognised_only_for_that_id() {
        let id = "6f1c2a3b-4d5e-4f60-8a71-92b3c4d5e6f7";
        assert!(resume_refused(
            AgentKind::ClaudeCode,
            NOT_FOUND_STDERR,
            1,
            id
        ));
        // Another id, a zero exit, a run that printed a result, another kind.
        let other = "0158dc2f-298d-41ce-ba6b-8c4a5b00ad41";
        assert!(!resume_refused(
            AgentKind::ClaudeCode,
            NOT_FOUND_STDERR,
            1,
            other
        ));
        assert!(!resume_refused(
            AgentKind::ClaudeCode,
            NOT_FOUND_STDERR,
            0,
            id
        ));
        let with_result = format!("{NOT_FOUND_STDERR}{CLAUDE_STREAM}");
        assert!(!resume_refused(AgentKind::ClaudeCode, &with_result, 1, id));
        assert!(!resume_refused(AgentKind::Codex, NOT_FOUND_STDERR, 1, id));
        // Codex's and Gemini's answers.
        let codex = include_str!("../../tests/fixtures/agents/codex/resume-not-found.stderr");
        let thread = "019e9154-c304-70f0-adde-36efb1be1701";
        assert!(resume_refused(AgentKind::Codex, codex, 1, thread));
        assert!(!resume_refused(AgentKind::Codex, codex, 1, id));
        assert!(!resume_refused(AgentKind::ClaudeCode, codex, 1, thread));
        let gemini = include_str!("../../tests/fixtures/agents/gemini/resume-not-found.stderr");
        let gsession = "313b2d99-8204-410e-9d07-e31574b497fb";
        assert!(resume_refused(AgentKind::Gemini, gemini, 1, gsession));
        assert!(!resume_refused(AgentKind::Gemini, gemini, 0, gsession));
        assert!(!resume_refused(AgentKind::Gemini, gemini, 1, id));
        assert!(!resume_refused(AgentKind::Opencode, gemini, 1, gsession));
        // The words quoted inside a line are not the CLI's answer.
        let quoted = format!("the agent said: {CLAUDE_SESSION_NOT_FOUND}: {id}\n");
        assert!(!resume_refused(AgentKind::ClaudeCode, &quoted, 1, id));
    }

    #[test]
    fn a_watch_finds_the_id_once_reads_only_its_runs_part_and_gives_up_past_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        // An earlier run of the same claim wrote before this one.
        std::fs::write(&log, NOT_FOUND_STDERR).unwrap();
        let mut w = Watch::from_end(AgentKind::ClaudeCode, &log);
        assert_eq!(w.start(), NOT_FOUND_STDERR.len() as u64);
        assert_eq!(w.poll(), None, "nothing of this run yet");
        let first = CLAUDE_STREAM.lines().next().unwrap();
        let half = &first[..first.len() / 2];
        append(&log, half);
        assert_eq!(w.poll(), None, "half a line is no event");
        append(&log, &format!("{}\n", &first[first.len() / 2..]));
        assert_eq!(
            w.poll().as_deref(),
            Some("0158dc2f-298d-41ce-ba6b-8c4a5b00ad41")
        );
        assert_eq!(w.poll(), None, "found once");

        // A log whose head holds no id: the watch stops reading.
        let quiet = dir.path().join("quiet.log");
        std::fs::write(&quiet, "x".repeat(HEAD_MAX_BYTES as usize + 10)).unwrap();
        let mut w = Watch::new(AgentKind::ClaudeCode, &quiet, 0);
        assert_eq!(w.poll(), None);
        append(&quiet, &format!("\n{first}\n"));
        assert_eq!(w.poll(), None, "past the head: not read");
        // No log yet: nothing, no error.
        let mut w = Watch::new(AgentKind::ClaudeCode, &dir.path().join("none.log"), 0);
        assert_eq!(w.poll(), None);
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}
