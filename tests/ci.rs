//! `orch ci`: the local forge's CI step — a development run ends at its
//! push, and this step tests the head that waits, records the status and
//! moves the task; one pass at a time.

use crate::util::*;

/// Runs analysis, architecture and development: task 1 waits for CI.
fn waiting_for_ci(sbx: &Sandbox) -> String {
    for _ in 0..3 {
        sbx.ok(&["work-once"]);
    }
    assert_eq!(sbx.stage(1), "development");
    let v = sbx.json(&["why", "1"]);
    assert_eq!(v["waiting"]["kind"], "ci", "{v}");
    sbx.origin_git(&["rev-parse", "orch/widget-1"])
}

#[test]
fn the_ci_step_tests_a_waiting_head_once_and_its_dry_run_writes_nothing() {
    let sbx = Sandbox::new();
    sbx.add_issue("tested");
    let head = waiting_for_ci(&sbx);
    assert!(sbx
        .ok(&["why", "1"])
        .contains(&format!("waits for: CI of {}: no status yet", &head[..12])));

    let plan = sbx.json(&["ci", "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["runs"][0]["sha"], head.as_str(), "{plan}");
    assert_eq!(plan["runs"][0]["state"], "would run", "{plan}");
    assert_eq!(sbx.count("SELECT COUNT(*) FROM ci_statuses"), 0);
    assert_eq!(sbx.stage(1), "development");

    let pass = sbx.json(&["ci"]);
    let run = &pass["runs"][0];
    assert_eq!(run["state"], "success", "{pass}");
    assert_eq!(run["moved"], true, "{pass}");
    assert_eq!(
        run["outcome"],
        format!("development → review (CI success on {head})")
    );
    assert_eq!(sbx.stage(1), "review");
    let (actor, job): (String, Option<i64>) = sbx
        .db()
        .query_row(
            "SELECT actor, job_id FROM transitions WHERE task_id=1 ORDER BY version DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (actor.as_str(), job),
        ("worker", Some(3)),
        "the development job"
    );
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM ci_statuses WHERE sha='{head}' AND context='orch/test' AND state='success' AND log_path LIKE '%ci-task1-%'"
        )),
        1
    );
    // Nothing waits any more: a second pass tests nothing.
    assert_eq!(sbx.json(&["ci"])["runs"], serde_json::json!([]));
    assert_eq!(sbx.ok(&["ci"]), "no development head waits for CI\n");
    sbx.check_invariants();
}

#[test]
fn a_second_ci_pass_while_one_runs_is_busy_and_the_test_runs_once() {
    let sbx = Sandbox::new();
    let cfg = sbx.dir.join("orch.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let slow = "test_command = [\"sh\", \"-c\", \"sleep 2; echo slow-test-ran; sh test.sh\"]";
    assert!(text.contains("test_command = [\"sh\", \"test.sh\"]"));
    std::fs::write(
        &cfg,
        text.replace("test_command = [\"sh\", \"test.sh\"]", slow),
    )
    .unwrap();
    sbx.add_issue("slow tests");
    waiting_for_ci(&sbx);

    let mut first = sbx.spawn(&["ci"], &[]);
    let logs = sbx.state_dir().join("logs");
    wait_until(20, "the first pass to start its test", || {
        std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("ci-task1-"))
    });
    let second = sbx.orch().args(["ci"]).output().unwrap();
    assert_eq!(second.status.code(), Some(75), "busy: {second:?}");
    let tick = sbx.json(&["tick"]);
    assert_eq!(tick["ci"], "busy", "{tick}");
    assert!(first.wait().unwrap().success());
    assert_eq!(sbx.stage(1), "review");
    let log = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("ci-task1-"))
        .unwrap()
        .path();
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(text.matches("slow-test-ran").count(), 1, "{text}");
    sbx.check_invariants();
}

#[test]
fn ci_for_an_unknown_project_is_a_usage_error() {
    let sbx = Sandbox::new();
    let out = sbx
        .orch()
        .args(["ci", "--project", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no project \"nope\""));
}
