//! Resume across a rescue (issue 24, scope 3): the session id is recorded
//! as soon as the CLI prints it, a run killed with its worker is resumed by
//! the job's next claim, a session the CLI no longer has falls back to a
//! fresh one in the same claim, and a resumed session's cost — the CLI
//! reports the session's total — is counted once. The fake agent keeps a
//! session store as the real CLI keeps its transcripts
//! (`FAKE_AGENT_SESSIONS`), answers an unknown `--resume` as the real CLI
//! does, and reports a resumed session's total cost.

use std::path::PathBuf;

use crate::util::*;

/// A sandbox whose `role` resumes its sessions under stream-json; every
/// claude-code run appends what it was told to resume to the file
/// returned.
fn resuming(role: &str) -> (Sandbox, PathBuf) {
    let mut sbx = Sandbox::new();
    sbx.append_config(&format!(
        "\n[agents.{role}]\nargv = [\"{ROOT}/scripts/fake-agent\", \"--output-format\", \"stream-json\", \"--verbose\", \"--resume\", \"{{previous_session}}\"]\nresume = true\n"
    ));
    let log = sessions_dir(&sbx).join("resumes.log");
    sbx.set("FAKE_AGENT_RESUME_LOG", log.to_str().unwrap());
    (sbx, log)
}

/// The fake agent's session store.
fn sessions_dir(sbx: &Sandbox) -> PathBuf {
    PathBuf::from(&sbx.env["FAKE_AGENT_SESSIONS"])
}

/// What the fake CLI says each of its sessions cost in all, in US dollars
/// (its store holds units of 1e-10 dollars), summed.
fn cli_total_usd(sbx: &Sandbox) -> f64 {
    std::fs::read_dir(sessions_dir(sbx))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .trim()
                .parse::<i64>()
                .unwrap()
        })
        .sum::<i64>() as f64
        / 1e10
}

/// The lines of the fake agent's resume log: `job<j>-a<k> <id or ->`.
fn resumes(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn job_session(sbx: &Sandbox) -> Option<String> {
    sbx.db()
        .query_row("SELECT session_id FROM jobs WHERE id=1", [], |r| r.get(0))
        .unwrap()
}

/// The analyst's run of job 1 hangs after printing its session; the worker
/// is killed (SIGKILL) and the reaper requeues the job. Returns the
/// session the killed run had.
fn kill_a_run_after_its_session_is_recorded(sbx: &Sandbox) -> String {
    let mut worker = sbx.spawn(&["work-once"], &[("FAKE_AGENT_MODE_ANALYST", "hang")]);
    wait_until(30, "the run's session recorded on its job", || {
        job_session(sbx).is_some()
    });
    let id = job_session(sbx).unwrap();
    assert!(
        sessions_dir(sbx).join(&id).exists(),
        "the recorded id is the CLI's session: {id}"
    );
    worker.kill().unwrap(); // SIGKILL: the agent dies with it
    worker.wait().unwrap();
    sbx.reap_requeues(2);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs"),
        0,
        "the killed run left no result"
    );
    id
}

#[test]
fn a_run_killed_with_its_worker_resumes_its_session_and_its_spend_is_counted_once() {
    let (mut sbx, log) = resuming("analyst");
    // The test kills the worker: no pid namespace needed, but the run must
    // die with it (it does under both sandboxes): the child runner (a
    // detached run would outlive it and be adopted: tests/detach.rs).
    sbx.set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_AGENT_RUNNER", "child");
    sbx.add_issue("resume me");
    let id = kill_a_run_after_its_session_is_recorded(&sbx);

    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    assert_eq!(sbx.stage(1), "architecture");
    assert_eq!(
        resumes(&log),
        ["job1-a1 -".to_string(), format!("job1-a2 {id}")],
        "the second claim resumed the killed run's session"
    );
    let (session, cost): (String, f64) = sbx
        .db()
        .query_row(
            "SELECT session_id, cost_usd FROM agent_runs WHERE job_id=1 AND attempt=2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(session, id);
    // The CLI reports the session's total, the killed run's share
    // included; orch had recorded nothing of it, so the resumed run
    // carries both shares — each dollar once.
    let cli = cli_total_usd(&sbx);
    assert!((cli - 2.0 * 0.0374828).abs() < 1e-9, "{cli}");
    assert!((cost - cli).abs() < 1e-9, "{cost} vs {cli}");
    let usage = sbx.json(&["usage", "--task", "1"]);
    let total = usage["total"]["cost_usd"].as_f64().unwrap();
    assert!((total - cli).abs() < 1e-9, "{usage}");
    sbx.check_invariants();
}

#[test]
fn a_session_the_cli_no_longer_has_starts_a_fresh_one_in_the_same_claim() {
    for runner in ["child", "supervisor"] {
        fresh_session_after_a_refusal(runner);
    }
}

/// [`a_session_the_cli_no_longer_has_starts_a_fresh_one_in_the_same_claim`]
/// with the resuming claim's run started by `runner`.
fn fresh_session_after_a_refusal(runner: &str) {
    let (mut sbx, log) = resuming("analyst");
    // The killed run dies with its worker: the child runner. The refusal
    // itself is handled by both runners (the detached one sets the
    // refused run's records aside and starts it again).
    sbx.set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_AGENT_RUNNER", "child");
    sbx.add_issue("lost session");
    let id = kill_a_run_after_its_session_is_recorded(&sbx);
    // The CLI lost the transcript (another config dir, cleaned up, …).
    std::fs::remove_file(sessions_dir(&sbx).join(&id)).unwrap();
    sbx.set("ORCH_AGENT_RUNNER", runner);

    let out = sbx.orch().args(["--json", "work-once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    assert!(
        stderr.lines().any(|l| l.contains("WARN")
            && l.contains("session not found; starting a fresh session")
            && l.contains(&id)),
        "{stderr}"
    );
    // The same claim ran the agent twice: with the lost id, then fresh.
    assert_eq!(
        resumes(&log),
        [
            "job1-a1 -".to_string(),
            format!("job1-a2 {id}"),
            "job1-a2 -".to_string()
        ]
    );
    assert_eq!(
        sbx.count("SELECT attempt FROM jobs WHERE id=1"),
        2,
        "no attempt spent on the lost id"
    );
    assert_eq!(sbx.count("SELECT COUNT(*) FROM agent_runs"), 1);
    let fresh: String = sbx
        .db()
        .query_row("SELECT session_id FROM agent_runs", [], |r| r.get(0))
        .unwrap();
    assert_ne!(fresh, id);
    assert_eq!(job_session(&sbx).as_deref(), Some(fresh.as_str()));
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM gone_sessions WHERE task_id=1 AND role='analyst'"),
        1
    );
    let run_log = std::fs::read_to_string(sbx.state_dir().join("logs/job1-a2.log")).unwrap();
    assert!(
        run_log.contains(&format!("No conversation found with session ID: {id}"))
            && run_log.contains("starting a fresh session"),
        "{run_log}"
    );
    // The fresh run is the one costed: a new session, its own total.
    let usage = sbx.json(&["usage", "--task", "1"]);
    let total = usage["total"]["cost_usd"].as_f64().unwrap();
    assert!((total - 0.0374828).abs() < 1e-9, "{usage}");
    sbx.check_invariants();
}

#[test]
fn a_resumed_reworks_cost_is_the_difference_from_what_its_session_already_cost() {
    let (mut sbx, log) = resuming("developer");
    let wanted = "- the reviewer's line";
    sbx.set("FAKE_AGENT_REQUIRE_LINE", wanted);
    sbx.add_issue("rework resumes");
    sbx.tick_until(30, |s| s.stage(1) == "done");

    let dev: Vec<(String, f64)> = {
        let db = sbx.db();
        let mut st = db
            .prepare(
                "SELECT session_id, cost_usd FROM agent_runs WHERE role='developer' ORDER BY id",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(dev.len(), 2, "{dev:?}");
    assert_eq!(dev[0].0, dev[1].0, "the rework resumed the session");
    let told: Vec<_> = resumes(&log)
        .into_iter()
        .filter(|l| !l.ends_with(" -"))
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].ends_with(&format!(" {}", dev[0].0)), "{told:?}");
    // The resumed run reported the session's total (two runs' worth);
    // orch recorded only its own share.
    assert!((dev[0].1 - 0.0374828).abs() < 1e-9, "{dev:?}");
    assert!((dev[1].1 - 0.0374828).abs() < 1e-9, "{dev:?}");
    let usage = sbx.json(&["usage", "--task", "1"]);
    let total = usage["total"]["cost_usd"].as_f64().unwrap();
    let cli = cli_total_usd(&sbx);
    assert!(
        (total - cli).abs() < 1e-9,
        "orch {total} vs the CLI's {cli}: {usage}"
    );
    sbx.check_invariants();
}

#[test]
fn a_codex_or_gemini_thread_the_cli_lost_is_replaced_by_a_fresh_one_on_rework() {
    for (kind, argv) in [
        (
            "codex",
            r#""exec", "--json", "resume", "{previous_session}", "-""#,
        ),
        (
            "gemini",
            r#""-p", "", "--output-format", "json", "--resume", "{previous_session}""#,
        ),
    ] {
        let mut sbx = Sandbox::new();
        let cfg = sbx.dir.join("orch.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let (start, end) = (
            text.find("[agents.default]").unwrap(),
            text.find("[[projects]]").unwrap(),
        );
        let agent = format!(
            "[agents.default]\nkind = \"{kind}\"\nargv = [\"{ROOT}/scripts/fake-agent\", {argv}]\nresume = true\n\n"
        );
        std::fs::write(&cfg, format!("{}{agent}{}", &text[..start], &text[end..])).unwrap();
        sbx.set("FAKE_AGENT_KIND", kind)
            .set("FAKE_AGENT_REQUIRE_LINE", "- the reviewer's line");
        sbx.add_issue("lost thread");
        // Step by step up to the reviewer's verdict (a tick would run on).
        for role in ["analyst", "architect", "developer"] {
            sbx.ok(&["work-once", "--role", role]);
        }
        sbx.ok(&["ci"]);
        sbx.ok(&["work-once", "--role", "reviewer"]);
        assert_eq!(sbx.stage(1), "development", "{kind}: sent back");
        // The CLI loses every session before the rework.
        for e in std::fs::read_dir(sessions_dir(&sbx)).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        sbx.tick_until(30, |s| s.stage(1) == "done");
        let db = sbx.db();
        let (job, attempt): (i64, i64) = db
            .query_row(
                "SELECT id, attempt FROM jobs WHERE stage='development' ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(attempt, 1, "{kind}: no attempt spent on the lost thread");
        let gone: String = db
            .query_row(
                "SELECT session_id FROM gone_sessions WHERE role='developer'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let (argv, session): (String, String) = db
            .query_row(
                "SELECT argv, session_id FROM agent_runs WHERE job_id=?1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            !argv.contains(&gone),
            "{kind}: the fresh run's argv: {argv}"
        );
        assert_ne!(session, gone, "{kind}");
        drop(db);
        sbx.check_invariants();
    }
}
