//! An Agent Client Protocol agent as a role's agent (issue 26 item 3):
//! scripts/fake-acp-agent, which acts as `gemini --acp` from the
//! transcripts in tests/fixtures/agents/acp/, takes a task through
//! development with orch as its client — orch writes the file it asks
//! for, records the turn's tokens and session, answers its permission
//! requests by the role's policy — under the default sandbox.

use crate::util::*;
use serde_json::json;

/// `[agents.developer]` as the fake ACP agent writing CHANGES.md.
fn acp_developer(extra: &str) -> String {
    format!(
        "\n[agents.developer]\nargv = [\"{ROOT}/scripts/fake-acp-agent\"]\nkind = \"acp\"\nauth_method = \"gemini-api-key\"\n{extra}\n[agents.developer.env]\nFAKE_ACP_FILE = \"CHANGES.md\"\nFAKE_ACP_CONTENT = \"# Changes\\n- greeting from the ACP agent\\n\"\n"
    )
}

/// (exit code, success, input, output tokens, session id, denials) of
/// the developer's runs, oldest first.
fn developer_runs(sbx: &Sandbox) -> Vec<(i64, i64, i64, i64, String, Option<String>)> {
    let db = sbx.db();
    let mut st = db
        .prepare(
            "SELECT exit_code, success, input_tokens, output_tokens, session_id, permission_denials
             FROM agent_runs WHERE role='developer' ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn developer_log(sbx: &Sandbox) -> String {
    let path: String = sbx
        .db()
        .query_row(
            "SELECT log_path FROM agent_runs WHERE role='developer' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn an_acp_developer_takes_a_task_to_done_with_the_turns_usage() {
    let sbx = Sandbox::new();
    sbx.append_config(&acp_developer(""));
    let id = sbx.add_issue("greet");
    sbx.tick_until(20, |s| s.stage(id) == "done");

    let runs = developer_runs(&sbx);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (exit, success, input, output, session, denials) = &runs[0];
    // The fixture's figures: tests/fixtures/agents/acp/success.stdout.
    assert_eq!((*exit, *success, *input, *output), (0, 1, 24264, 51));
    assert_eq!(session.len(), 36, "{session}");
    assert_eq!(denials, &None);
    let main = sbx.origin_git(&["show", "main:CHANGES.md"]);
    assert_eq!(main, "# Changes\n- greeting from the ACP agent");
    let log = developer_log(&sbx);
    for needle in [
        "acp: → session/new #3",
        "CHANGES.md\": allowed (proceed_once)",
        "CHANGES.md\": 40 bytes written",
        "acp: turn ended: stopReason end_turn; tokens in 24264 out 51",
    ] {
        assert!(log.contains(needle), "{needle:?} not in\n{log}");
    }
    let usage = sbx.json(&["usage", "--task", &id.to_string()]);
    assert!(
        usage["total"]["output_tokens"].as_i64().unwrap() >= 51,
        "{usage}"
    );
    sbx.check_invariants();
}

#[test]
fn a_denied_acp_write_fails_development_with_no_change_and_the_denial_named() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_JOB_MAX_ATTEMPTS", "1");
    sbx.append_config(&acp_developer("permissions = \"deny\""));
    let id = sbx.add_issue("greet");
    sbx.tick_until(20, |s| {
        s.count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='failed'") == 1
    });
    let runs = developer_runs(&sbx);
    let (exit, success, _, output, _, denials) = &runs[0];
    assert_eq!((*exit, *success, *output), (0, 1, 59), "{runs:?}");
    let denials: serde_json::Value = serde_json::from_str(denials.as_deref().unwrap()).unwrap();
    assert_eq!(denials[0]["tool_name"], "Writing to CHANGES.md");
    assert_eq!(denials[0]["why"], "policy deny");
    let error: String = sbx
        .db()
        .query_row(
            "SELECT last_error FROM jobs WHERE stage='development'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        error.contains("no change")
            && error.contains("permission denial(s): Writing to CHANGES.md"),
        "{error}"
    );
    assert!(developer_log(&sbx).contains(": DENIED (cancel), policy deny"));
    assert_eq!(sbx.stage(id), "development");
}

#[test]
fn an_acp_429_pauses_the_account_and_a_400_fails_at_once() {
    for (scenario, action) in [("rate_limit_429", "paused"), ("error_400", "failed")] {
        let sbx = Sandbox::new();
        sbx.append_config(&acp_developer("").replace(
            "FAKE_ACP_FILE",
            &format!("FAKE_ACP_SCENARIO = \"{scenario}\"\nFAKE_ACP_FILE"),
        ));
        let id = sbx.add_issue("greet");
        let mut v = json!(null);
        for _ in 0..3 {
            v = sbx.json(&["work-once"]);
            if v["stage"] == "development" {
                break;
            }
        }
        assert_eq!(v["stage"], "development", "{v}");
        assert_eq!(v["finalized"]["action"], action, "{scenario}: {v}");
        let reason: String = sbx
            .db()
            .query_row(
                "SELECT COALESCE(last_error, '') FROM jobs WHERE stage='development'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if scenario == "error_400" {
            assert!(
                reason.contains("model API error 400 (INVALID_ARGUMENT): Request contains an invalid argument. (scripted 400)"),
                "{reason}"
            );
            assert_eq!(
                sbx.count("SELECT COUNT(*) FROM jobs WHERE stage='development'"),
                1
            );
        } else {
            assert_eq!(sbx.count("SELECT COUNT(*) FROM pauses"), 1, "{scenario}");
        }
        assert_eq!(sbx.stage(id), "development");
    }
}

#[test]
fn a_resumed_acp_developer_loads_its_session_on_rework() {
    let mut sbx = Sandbox::new();
    let sessions = sbx.dir.join("acp-sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    let wanted = "- reviewer's line";
    sbx.set("FAKE_AGENT_REQUIRE_LINE", wanted).set(
        "ORCH_AGENT_SANDBOX_WRITABLE",
        &format!("{}:{AGENT_FIXTURES}", sessions.display()),
    );
    sbx.append_config(&acp_developer("resume = true").replace(
        "FAKE_ACP_FILE",
        &format!(
            "FAKE_ACP_SESSIONS = \"{}\"\nFAKE_ACP_FILE",
            sessions.display()
        ),
    ));
    let id = sbx.add_issue("greet");
    sbx.tick_until(20, |s| s.stage(id) == "done");
    let runs = developer_runs(&sbx);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].4, runs[1].4, "the same session: {runs:?}");
    let log = developer_log(&sbx);
    assert!(
        log.contains(&format!("acp: session {} (loaded)", runs[0].4)),
        "{log}"
    );
    assert!(log.contains("acp: ← replay update user "), "{log}");
    assert!(
        log.contains(&format!(
            "Resumed session {} after 1 earlier turn(s).",
            runs[0].4
        )),
        "{log}"
    );
    let main = sbx.origin_git(&["show", "main:CHANGES.md"]);
    assert!(main.ends_with(wanted), "{main}");
}

/// orch reads and writes for an ACP agent outside its sandbox: what the
/// agent asks for beyond its worktree — `/etc/passwd`, `../outside.txt`,
/// a path through a symlink it planted — is refused and recorded.
#[test]
fn an_acp_agent_cannot_make_orch_read_or_write_outside_its_worktree() {
    // Outside /tmp, as every hostile test: the paths it aims at are real.
    let sbx = Sandbox::new_in(std::path::Path::new("/var/tmp/orch-tests"));
    sbx.append_config(&acp_developer("").replace(
        "FAKE_ACP_FILE",
        "FAKE_ACP_SCENARIO = \"outside\"\nFAKE_ACP_FILE",
    ));
    let id = sbx.add_issue("escape");
    for _ in 0..3 {
        if sbx.json(&["work-once"])["stage"] == "development" {
            break;
        }
    }
    let wt = sbx.worktree(id);
    let parent = wt.parent().unwrap();
    assert!(!parent.join("outside.txt").exists());
    assert!(!parent.join("planted.txt").exists());
    let runs = developer_runs(&sbx);
    let denials: serde_json::Value = serde_json::from_str(runs[0].5.as_deref().unwrap()).unwrap();
    let names: Vec<&str> = denials
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tool_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "fs/read_text_file",
            "fs/write_text_file",
            "fs/write_text_file",
            "Writing to hosts"
        ],
        "{denials}"
    );
    let log = developer_log(&sbx);
    assert!(!log.contains("root:x:0"), "{log}");
    assert!(
        log.contains("escape/planted.txt\": REFUSED, a path that leads outside the worktree"),
        "{log}"
    );
}

/// The README's ACP recipe, as an operator copies it, is what orch runs:
/// its block parses, `agents show` renders its argv, and with its program
/// replaced by the scripted agent it takes a task to done.
#[test]
fn the_readme_acp_recipe_is_what_orch_runs() {
    let readme = std::fs::read_to_string(std::path::Path::new(ROOT).join("README.md")).unwrap();
    let start = readme
        .find("[agents.developer]\nargv = [\"gemini\", \"--acp\"]")
        .expect("README's ACP recipe");
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let sbx = Sandbox::new();
    sbx.append_config(&format!("\n{block}"));
    let shown = sbx.json(&["agents", "show", "developer"]);
    assert_eq!(shown["argv"], json!(["gemini", "--acp"]), "{shown}");
    let fake = format!("argv = [\"{ROOT}/scripts/fake-acp-agent\"]");
    let cfg = sbx.dir.join("orch.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("argv = [\"gemini\", \"--acp\"]", &fake);
    std::fs::write(&cfg, text).unwrap();
    sbx.append_config(
        "[agents.developer.env]\nFAKE_ACP_FILE = \"CHANGES.md\"\nFAKE_ACP_CONTENT = \"# Changes\\n- from the recipe\\n\"\n",
    );
    let id = sbx.add_issue("greet");
    sbx.tick_until(20, |s| s.stage(id) == "done");
    assert_eq!(
        sbx.origin_git(&["show", "main:CHANGES.md"]),
        "# Changes\n- from the recipe"
    );
}
