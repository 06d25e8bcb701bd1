//! The pipeline end to end: webhook to merged main, the retry cap, the
//! human gate.

use crate::util::*;
use serde_json::json;

const IN_PROGRESS: &str = "plane/webhooks/issue-updated-state-in-progress.json";

#[test]
fn signed_webhook_takes_a_work_item_to_done_and_fast_forwards_main() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let main_before = sbx.origin_git(&["rev-parse", "main"]);
    {
        let server = sbx.serve();
        let (status, body) = server.post_plane(&fixture(IN_PROGRESS), "d-1");
        assert_eq!(status, 202, "{body}");
    }
    sbx.tick_until(15, |s| {
        s.count("SELECT COUNT(*) FROM tasks WHERE stage='done'") == 1
    });

    let stages: Vec<(Option<String>, String, String)> = sbx.transitions(1);
    let expected = [
        (None, "analysis", "webhook"),
        (Some("analysis"), "architecture", "worker"),
        (Some("architecture"), "development", "worker"),
        (Some("development"), "review", "worker"),
        (Some("review"), "testing", "worker"),
        (Some("testing"), "deploy-staging", "worker"),
        (Some("deploy-staging"), "deploy", "worker"),
        (Some("deploy"), "done", "worker"),
    ];
    let expected: Vec<(Option<String>, String, String)> = expected
        .iter()
        .map(|(f, t, a)| (f.map(String::from), t.to_string(), a.to_string()))
        .collect();
    assert_eq!(stages, expected);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs"),
        7,
        "one job per stage"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='done'"),
        7
    );

    // main moved by fast-forward to the task branch, which holds the work.
    let main_after = sbx.origin_git(&["rev-parse", "main"]);
    assert_ne!(main_after, main_before);
    assert_eq!(main_after, sbx.origin_git(&["rev-parse", "orch/widget-42"]));
    sbx.origin_git(&["merge-base", "--is-ancestor", &main_before, &main_after]);
    let files = sbx.origin_git(&["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.contains("docs/work-items/1/analysis.md"), "{files}");
    assert!(files.contains("docs/work-items/1/design.md"), "{files}");
    let log = sbx.origin_git(&["log", "--format=%s", "main"]);
    assert!(
        log.contains("developer(widget): auto-commit from developer run_id="),
        "{log}"
    );

    // usage was recorded from the Claude-shaped results.
    let usage = sbx.json(&["usage", "--task", "1"]);
    assert_eq!(usage["total"]["output_tokens"], 7 * 110);
    assert_eq!(usage["total"]["input_tokens_full"], 7 * (8 + 33204 + 5722));

    // a further tick changes nothing
    let before = sbx.count("SELECT COUNT(*) FROM transitions");
    sbx.ok(&["tick"]);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM transitions"), before);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM outbox WHERE status='pending'"),
        0,
        "all messages delivered"
    );
    sbx.check_invariants();
}

#[test]
fn reviewer_that_always_requests_changes_escalates_at_the_retry_cap() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_VERDICT_REVIEWER", "REQUEST_CHANGES")
        .set("ORCH_MAX_DEVELOPER_RETRIES", "2");
    sbx.add_issue("never good enough");
    sbx.tick_until(20, |s| {
        s.count("SELECT escalated FROM tasks WHERE id=1") == 1
    });

    let t = sbx.transitions(1);
    let returns = t
        .iter()
        .filter(|(f, to, _)| f.as_deref() == Some("review") && to == "development")
        .count();
    assert_eq!(
        returns, 2,
        "escalated on the return that reached the cap: {t:?}"
    );
    assert_eq!(sbx.stage(1), "development");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status IN ('queued','running')"),
        0
    );
    let notifications =
        sbx.count("SELECT COUNT(*) FROM outbox WHERE channel='notify' AND kind='escalated'");
    assert_eq!(notifications, 1);

    // Later ticks (and reconcile passes with no grace) leave it alone.
    sbx.set("ORCH_RECONCILE_GRACE_S", "0");
    let transitions = sbx.count("SELECT COUNT(*) FROM transitions");
    let outbox = sbx.count("SELECT COUNT(*) FROM outbox");
    for _ in 0..3 {
        sbx.ok(&["tick"]);
    }
    assert_eq!(sbx.count("SELECT COUNT(*) FROM transitions"), transitions);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM outbox"), outbox);
    assert!(sbx
        .ok(&["task", "show", "1"])
        .contains("ESCALATED: developer retry cap reached (2/2)"));
    sbx.check_invariants();

    // A human unblock resets the count and reruns development.
    sbx.ok(&["task", "unblock", "1"]);
    assert_eq!(
        sbx.count("SELECT escalated + developer_retries FROM tasks WHERE id=1"),
        0
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='queued' AND stage='development'"),
        1
    );
    assert_eq!(sbx.transitions(1).last().unwrap().2, "human");
}

#[test]
fn analysis_waits_for_a_human_and_reject_reruns_it() {
    let sbx = Sandbox::new();
    let cfg = std::fs::read_to_string(sbx.dir.join("orch.toml")).unwrap();
    std::fs::write(
        sbx.dir.join("orch.toml"),
        cfg.replace(
            "auto_approve_analysis = true",
            "auto_approve_analysis = false",
        ),
    )
    .unwrap();
    sbx.add_issue("needs a look");
    sbx.ok(&["tick"]);
    sbx.ok(&["tick"]);
    assert_eq!(sbx.stage(1), "analysis");
    assert_eq!(sbx.count("SELECT COUNT(*) FROM jobs"), 1);

    sbx.ok(&["task", "reject", "1", "--reason", "too vague"]);
    sbx.ok(&["tick"]);
    assert_eq!(sbx.stage(1), "analysis");
    // The rerun is told why.
    let prompt = sbx.prompt_of(1, "analysis");
    assert!(prompt.contains("too vague"), "{prompt}");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE stage='analysis' AND status='done'"),
        2
    );

    sbx.ok(&["task", "approve", "1"]);
    assert_eq!(sbx.stage(1), "architecture");
    let last = sbx.transitions(1).pop().unwrap();
    assert_eq!(
        last,
        (
            Some("analysis".into()),
            "architecture".into(),
            "human".into()
        )
    );
    // approving again is refused with a clear message, exit 2
    let out = sbx.orch().args(["task", "approve", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is at architecture, not analysis"));
}

/// Runs `work-once` (and, for a development head waiting for its tests,
/// the CI step `orch ci`) until task 1 is at `stage` with its job queued.
pub fn work_until_stage(sbx: &Sandbox, stage: &str) {
    for _ in 0..10 {
        if sbx.stage(1) == stage {
            return;
        }
        sbx.ok(&["work-once"]);
        sbx.ok(&["ci"]);
    }
    panic!("task never reached {stage}");
}

#[test]
fn when_main_moved_the_branch_is_rebased_retested_and_fast_forwarded() {
    let sbx = Sandbox::new();
    sbx.add_issue("main moves");
    work_until_stage(&sbx, "deploy-staging");
    sbx.push_to_main("README.md", "A line someone else added.");
    let theirs = sbx.origin_git(&["rev-parse", "main"]);

    sbx.tick_until(5, |s| s.stage(1) == "done");
    let main = sbx.origin_git(&["rev-parse", "main"]);
    sbx.origin_git(&["merge-base", "--is-ancestor", &theirs, &main]);
    assert_eq!(main, sbx.origin_git(&["rev-parse", "orch/widget-1"]));
    assert!(sbx
        .origin_git(&["show", "main:README.md"])
        .contains("someone else"));
    assert!(sbx
        .origin_git(&["show", "main:CHANGES.md"])
        .contains("- task 1:"));
    // the combined tree was tested before the merge
    let ci: i64 = sbx
        .db()
        .query_row(
            "SELECT COUNT(*) FROM ci_statuses WHERE sha=?1 AND state='success'",
            [&main],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ci, 1, "the rebased head has a green CI status");
    // main's history is linear (fast-forwards only)
    let merges = sbx.origin_git(&["rev-list", "--merges", "main"]);
    assert!(merges.is_empty());
    sbx.check_invariants();
}

#[test]
fn a_conflict_with_main_rolls_back_to_development_with_the_reason() {
    let sbx = Sandbox::new();
    sbx.add_issue("conflicts");
    work_until_stage(&sbx, "deploy-staging");
    sbx.push_to_main("CHANGES.md", "- a competing change on the same line");
    let main = sbx.origin_git(&["rev-parse", "main"]);
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "waiting", "{v}");
    sbx.ok(&["merge-gate"]);
    assert_eq!(sbx.stage(1), "development");
    let last = sbx
        .db()
        .query_row(
            "SELECT reason FROM transitions ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    assert!(last.contains("conflicts in CHANGES.md"), "{last}");
    assert_eq!(
        sbx.count("SELECT developer_retries FROM tasks WHERE id=1"),
        1
    );
    assert_eq!(
        sbx.origin_git(&["rev-parse", "main"]),
        main,
        "main untouched"
    );
    let wt = sbx.json(&["task", "show", "1"])["task"]["worktree"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        git_in(std::path::Path::new(&wt), &["status", "--porcelain"]),
        "",
        "worktree left clean"
    );
    sbx.check_invariants();
}

#[test]
fn the_claim_enforces_max_concurrency() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MAX_CONCURRENCY", "1");
    sbx.add_issue("slow one");
    sbx.add_issue("waits");
    let slow = sbx.spawn(&["work-once"], &[("FAKE_AGENT_SLEEP", "3")]);
    wait_until(20, "first job running", || {
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running'") == 1
    });
    let v = sbx.json(&["work-once"]);
    assert_eq!(
        v["result"], "idle",
        "a second worker finds the limit reached: {v}"
    );
    assert!(slow.wait_with_output().unwrap().status.success());
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["result"], "ran", "{v}");
}

#[test]
fn a_role_at_its_limit_lets_a_second_worker_run_another_role() {
    let mut sbx = Sandbox::new();
    // The sandbox project approves analyses by itself.
    sbx.add_issue("one");
    sbx.add_issue("two");
    for stage in ["analysis", "analysis", "architecture", "architecture"] {
        assert_eq!(sbx.json(&["work-once"])["stage"], stage);
    }
    // Queued, oldest first: development of 1 and 2, then analysis of 3.
    sbx.add_issue("three");
    sbx.set("ORCH_MAX_CONCURRENCY_DEVELOPER", "1");
    let slow = sbx.spawn(&["work-once"], &[("FAKE_AGENT_SLEEP", "3")]);
    wait_until(20, "the first developer job running", || {
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running' AND role='developer'") == 1
    });
    let v = sbx.json(&["work-once"]);
    assert_eq!(
        (&v["result"], &v["stage"], &v["task_id"]),
        (&json!("ran"), &json!("analysis"), &json!(3)),
        "the second worker skips the developer job at the role's limit: {v}"
    );
    assert!(slow.wait_with_output().unwrap().status.success());
    let v = sbx.json(&["work-once"]);
    assert_eq!(
        (&v["stage"], &v["task_id"]),
        (&json!("development"), &json!(2)),
        "{v}"
    );
}

#[test]
fn claims_alternate_between_projects_with_queued_work() {
    let sbx = Sandbox::new();
    sbx.append_config(&format!(
        "\n[[projects]]\nname = \"gadget\"\ntracker = \"local\"\nforge = \"local\"\nclone_url = \"{}\"\ntest_command = [\"sh\", \"test.sh\"]\n",
        sbx.origin().display()
    ));
    // widget queues three analyses before gadget queues two.
    for t in ["w1", "w2", "w3"] {
        sbx.add_issue(t);
    }
    for t in ["g1", "g2"] {
        sbx.ok(&["issue", "add", "--project", "gadget", "--title", t]);
    }
    let mut order = vec![];
    for _ in 0..5 {
        let v = sbx.json(&["work-once"]);
        assert_eq!(v["result"], "ran", "{v}");
        order.push(v["task_id"].as_i64().unwrap());
    }
    // Neither project was claimed from yet: gadget first (by name), then
    // the project claimed longest ago, oldest job first within it.
    assert_eq!(order, vec![4, 1, 5, 2, 3], "claims alternate");
}
