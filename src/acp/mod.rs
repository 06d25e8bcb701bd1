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
//!
//! One file per part: `outcome` (what a run produced, and how it reads as
//! every kind's [`AgentResult`](crate::agent::AgentResult)), `rpc` (the
//! client's state and the JSON-RPC line framing: calls, answers, bounded
//! reads, log lines), `session` (the session and its one turn, and the
//! `session/update`s that report it), `requests` (what the agent asks of
//! orch: files and permissions). This file holds the entry points
//! ([`run`], [`exchange`]) and the request; every public item is
//! re-exported here.

mod outcome;
mod requests;
mod rpc;
mod session;

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::process::{RunOutcome, RunSpec, Runner, Spawned};

pub use outcome::{Failure, Outcome};

/// The ACP version orch speaks (`initialize`'s `protocolVersion`).
pub const PROTOCOL_VERSION: i64 = 1;

/// Longest line orch reads from an agent, in bytes: a longer one ends the
/// run (`fs/write_text_file` carries a whole file on one line).
pub const LINE_MAX_BYTES: usize = 16 << 20;

/// Largest file orch reads for an agent (`fs/read_text_file`), in bytes.
pub const FILE_MAX_BYTES: u64 = 8 << 20;

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
    let mut c = rpc::Client::new(from, to, req, log);
    c.run();
    c.outcome
}

#[cfg(test)]
mod testkit;

#[cfg(test)]
mod tests {
    use super::testkit::{fixture_result, ran, ran_plain};
    use crate::process::ExitKind;
    use std::time::Duration;

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
}
