//! Agents that misbehave: hang, crash, print garbage. The job fails or
//! records unknown usage; the task is never corrupted; no process is left.

use crate::util::*;

fn pids(file: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_hanging_agent_is_killed_at_the_timeout_with_its_child_and_the_job_fails() {
    let mut sbx = Sandbox::new();
    let pidfile = sbx.dir.join("pids");
    sbx.set("FAKE_AGENT_MODE_ANALYST", "hang-with-child")
        .set("FAKE_AGENT_PIDFILE", pidfile.to_str().unwrap())
        // The test reads host pids from the file: no pid namespace.
        .set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_AGENT_TIMEOUT_S", "2")
        .set("ORCH_KILL_GRACE_S", "1")
        .set("ORCH_JOB_MAX_ATTEMPTS", "1");
    sbx.add_issue("hangs");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["exit_code"], 124, "{v}");
    assert_eq!(v["finalized"]["action"], "failed", "{v}");

    let agent_pids = pids(&pidfile);
    assert_eq!(
        agent_pids.len(),
        2,
        "the agent and its child: {agent_pids:?}"
    );
    for pid in agent_pids {
        assert!(!pid_alive(pid), "process {pid} survived the timeout");
    }
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='failed'"),
        1
    );
    assert_eq!(sbx.count("SELECT escalated FROM tasks WHERE id=1"), 1);
    assert_eq!(sbx.stage(1), "analysis");
    let log: String = sbx
        .db()
        .query_row("SELECT log_path FROM agent_runs", [], |r| r.get(0))
        .unwrap();
    assert!(std::path::Path::new(&log).exists(), "log kept at {log}");
    // The reason and the log say what happened, not "code 124".
    let reason = v["finalized"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("timed out after 2 s; process group killed"),
        "{reason}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("orch: timed out after 2 s"), "{text}");
    sbx.check_invariants();
}

#[test]
fn a_crashing_agent_fails_its_job_and_is_retried_from_a_clean_worktree() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_ANALYST", "crash")
        .set("ORCH_JOB_MAX_ATTEMPTS", "2");
    sbx.add_issue("crashes");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["exit_code"], 137, "{v}");
    assert_eq!(v["finalized"]["action"], "retrying", "{v}");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "failed", "{v}");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs WHERE exit_code=137"),
        2
    );
    assert_eq!(sbx.stage(1), "analysis");
    assert_eq!(sbx.count("SELECT escalated FROM tasks WHERE id=1"), 1);
    // nothing of the failed runs reached the branch
    assert!(sbx
        .orch()
        .args(["status"])
        .output()
        .unwrap()
        .status
        .success());
    let wt = sbx.json(&["task", "show", "1"])["task"]["worktree"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        git_in(std::path::Path::new(&wt), &["status", "--porcelain"]),
        ""
    );
    sbx.check_invariants();
}

#[test]
fn an_agent_that_prints_garbage_records_unknown_usage_and_the_pipeline_goes_on() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_ANALYST", "garbage");
    sbx.add_issue("noisy");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    assert_eq!(sbx.count("SELECT usage_known FROM agent_runs"), 0);
    assert_eq!(sbx.stage(1), "architecture");
    let usage = sbx.ok(&["usage"]);
    assert!(usage.contains("usage unknown"), "{usage}");
}

#[test]
fn an_agent_error_result_fails_the_run_even_with_exit_0_and_permission_denials_are_shown() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_ANALYST", "permission-denial");
    sbx.add_issue("denied");
    sbx.json(&["work-once"]);
    assert!(sbx.ok(&["usage"]).contains("1 permission denial(s)"));

    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_ANALYST", "fail")
        .set("ORCH_JOB_MAX_ATTEMPTS", "1");
    sbx.add_issue("max turns");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "failed", "{v}");
    assert_eq!(sbx.count("SELECT success FROM agent_runs"), 0);
}

#[test]
fn a_reviewer_without_a_verdict_fails_the_run_instead_of_approving() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_VERDICT_REVIEWER", "none")
        .set("ORCH_JOB_MAX_ATTEMPTS", "1");
    sbx.add_issue("silent reviewer");
    sbx.tick_until(10, |s| s.count("SELECT escalated FROM tasks") == 1);
    assert_eq!(sbx.stage(1), "review");
    let err: String = sbx
        .db()
        .query_row(
            "SELECT last_error FROM jobs WHERE stage='review'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(err.contains("no verdict"), "{err}");
}
