//! `orch reconcile`: the level-triggered repair of lost events — and the
//! guards that keep it from undoing an escalation or a human's Blocked.

use serde_json::json;

use crate::fakes::*;
use crate::util::*;

const IN_PROGRESS: &str = "plane/webhooks/issue-updated-state-in-progress.json";

/// `fakes::sandbox_with_plane`, with helpers.
struct World {
    sbx: Sandbox,
    plane: FakePlane,
}

impl World {
    fn new() -> World {
        let (sbx, plane) = sandbox_with_plane();
        World { sbx, plane }
    }

    fn set_plane_state(&self, issue: &str, state_id: &str) {
        let mut s = self.plane.state.lock().unwrap();
        let i = s.issues.iter_mut().find(|i| i["id"] == issue).unwrap();
        i["state"] = json!(state_id);
    }

    fn issue_list_calls(&self) -> usize {
        self.plane
            .server
            .lines()
            .iter()
            .filter(|l| l.starts_with("GET") && l.contains("/work-items/"))
            .count()
    }
}

/// Leaves task `id` at `stage` with its job finished and its gate passing,
/// and nothing to advance it: as when the finalize ended waiting and the
/// event that should have moved the task on was lost.
fn stuck_at(sbx: &Sandbox, id: i64, stage: &str) {
    let project: String = sbx
        .db()
        .query_row("SELECT project FROM tasks WHERE id=?1", [id], |r| r.get(0))
        .unwrap();
    for _ in 0..10 {
        if sbx.stage(id) == stage {
            break;
        }
        sbx.ok(&["work-once", "--project", &project]);
        sbx.ok(&["ci", "--project", &project]);
    }
    assert_eq!(
        sbx.stage(id),
        stage,
        "{}",
        sbx.ok(&["task", "show", &id.to_string()])
    );
    let out = sbx
        .orch()
        .args(["work-once", "--project", &project])
        .env("FAILPOINTS", "finalize.before_terminal_claim=return")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "crashed before the terminal claim");
    sbx.db()
        .execute(
            "UPDATE jobs SET status='done' WHERE task_id=?1 AND status='running'",
            [id],
        )
        .unwrap();
    assert_eq!(sbx.stage(id), stage);
}

#[test]
fn a_lost_in_progress_delivery_is_created_once_by_the_tracker_side() {
    let w = World::new();
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["replayed"][0],
        json!(["widget", PLANE_ISSUE, "created task 1"]),
        "{pass}"
    );
    assert_eq!(
        w.sbx.transitions(1),
        vec![(None, "analysis".into(), "reconciler".into())]
    );
    assert_eq!(pass["tracker_listings"], 1);
    // the branch and worktree exist, from current main
    let wt = w.sbx.json(&["task", "show", "1"])["task"]["worktree"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&wt).join("test.sh").exists());

    // a second pass, and the late webhook, change nothing
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["replayed"][0][2],
        "no pipeline action: work item already has task 1"
    );
    let file = std::path::Path::new(ROOT)
        .join("tests/fixtures")
        .join(IN_PROGRESS);
    let late = w.sbx.json(&[
        "ingest",
        "--source",
        "plane",
        "--event",
        "issue",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        late["outcome"],
        "no pipeline action: work item already has task 1"
    );
    assert_eq!(w.sbx.count("SELECT COUNT(*) FROM tasks"), 1);
    assert_eq!(
        w.sbx
            .count("SELECT COUNT(*) FROM jobs WHERE role='analyst'"),
        1
    );
    w.sbx.check_invariants();
}

#[test]
fn a_replay_and_a_live_webhook_racing_make_one_task_branch_worktree_and_job() {
    for round in 0..3 {
        let w = World::new();
        w.sbx.ok(&["init"]);
        let file = std::path::Path::new(ROOT)
            .join("tests/fixtures")
            .join(IN_PROGRESS);
        let spawn = |args: &[&str]| w.sbx.spawn(args, &[]);
        let a = spawn(&["reconcile"]);
        let b = spawn(&[
            "ingest",
            "--source",
            "plane",
            "--event",
            "issue",
            "--file",
            file.to_str().unwrap(),
        ]);
        for c in [a, b] {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            w.sbx.count("SELECT COUNT(*) FROM tasks"),
            1,
            "round {round}"
        );
        assert_eq!(w.sbx.count("SELECT COUNT(*) FROM jobs"), 1, "round {round}");
        assert_eq!(
            w.sbx.count("SELECT COUNT(*) FROM transitions"),
            1,
            "round {round}"
        );
        let clone = std::path::PathBuf::from(&w.sbx.env["ORCH_STATE_DIR"]).join("repos/widget");
        let listed = git_in(&clone, &["worktree", "list"]);
        assert_eq!(
            listed.matches("[orch/widget-42]").count(),
            1,
            "round {round}: {listed}"
        );
        w.sbx.check_invariants();
    }
}

#[test]
fn a_task_whose_gate_passed_without_its_event_is_advanced_once_with_one_notification() {
    let w = World::new();
    w.sbx.ok(&["reconcile"]);
    stuck_at(&w.sbx, 1, "review");
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["unblocked"],
        json!([[1, "review", "testing"]]),
        "{pass}"
    );
    assert_eq!(w.sbx.transitions(1).last().unwrap().2, "reconciler");
    assert_eq!(
        w.sbx
            .count("SELECT value FROM counters WHERE name='reconcile.unblocked_total'"),
        1
    );
    assert_eq!(
        w.sbx
            .count("SELECT COUNT(*) FROM outbox WHERE channel='notify' AND kind='unblocked'"),
        1
    );
    // the next pass finds the testing job queued: nothing to do
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(pass["unblocked"], json!([]));
    let status = w.sbx.json(&["status"]);
    assert!(
        status["reconcile_last_pass"]["at_ms"].as_i64().unwrap() > 0,
        "{status}"
    );
    w.sbx.check_invariants();
}

#[test]
fn blocked_or_needs_input_in_the_tracker_and_tracker_errors_are_skipped_and_the_pass_goes_on() {
    let w = World::new();
    // a second project on the local tracker, to see the pass go on
    w.sbx.append_config(&format!(
        "\n[[projects]]\nname = \"gadget\"\ntracker = \"local\"\nforge = \"local\"\nclone_url = \"{}\"\ntest_command = [\"sh\", \"test.sh\"]\nauto_approve_analysis = true\n",
        w.sbx.origin().display()
    ));
    w.sbx.ok(&["reconcile"]);
    w.sbx.ok(&[
        "issue",
        "add",
        "--project",
        "gadget",
        "--title",
        "local one",
    ]);
    stuck_at(&w.sbx, 1, "review");
    stuck_at(&w.sbx, 2, "review");

    w.set_plane_state(PLANE_ISSUE, BLOCKED_ID);
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["skipped"]["tracker shows Blocked"],
        json!([1]),
        "{pass}"
    );
    assert_eq!(pass["unblocked"], json!([[2, "review", "testing"]]));
    // `orch why` names both: task 1 waits for the tracker, task 2 was
    // moved by this pass.
    let why = w.sbx.json(&["why", "1"]);
    assert_eq!(why["waiting"]["kind"], "tracker", "{why}");
    assert_eq!(why["waiting"]["reason"], "tracker shows Blocked", "{why}");
    let why = w.sbx.json(&["why", "2"]);
    let last = why["chain"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "reconciler", "{why}");
    assert_eq!(last["cause"]["kind"], "reconcile_pass", "{why}");
    assert_eq!(
        last["cause"]["detail"], "unblocked review → testing",
        "{why}"
    );

    w.set_plane_state(PLANE_ISSUE, NEEDS_INPUT_ID);
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["skipped"]["tracker shows Needs Input"],
        json!([1]),
        "{pass}"
    );

    for _ in 0..5 {
        w.plane.faults.push(
            "GET",
            "/work-items/",
            Fault::Status(500, json!({"error": "boom"}), vec![]),
        );
    }
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["skipped"]["tracker error (counted as blocked)"],
        json!([1]),
        "{pass}"
    );
    assert_eq!(pass["errors"][0][0], "widget");
    assert_eq!(w.sbx.stage(1), "review");
    assert_eq!(
        w.sbx
            .count("SELECT COUNT(*) FROM outbox WHERE kind='unblocked'"),
        1,
        "only gadget's unblock notified"
    );

    // with the networked guard switched off, the tracker is not asked
    let mut sbx_off = w.sbx.alias();
    sbx_off
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_PLANE_ENABLED", "false");
    let before = w.issue_list_calls();
    let pass = sbx_off.json(&["reconcile"]);
    assert_eq!(
        pass["unblocked"],
        json!([[1, "review", "testing"]]),
        "{pass}"
    );
    assert_eq!(w.issue_list_calls(), before);
}

#[test]
fn an_escalated_task_with_green_ci_is_never_unblocked_by_any_number_of_passes() {
    // The infinite-bounce regression: the old reconciler re-unblocked an
    // escalated task whose CI was green while the reviewer kept asking
    // for changes.
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_VERDICT_REVIEWER", "REQUEST_CHANGES")
        .set("ORCH_MAX_DEVELOPER_RETRIES", "2")
        .set("ORCH_RECONCILE_GRACE_S", "0");
    sbx.add_issue("bounce");
    sbx.tick_until(20, |s| {
        s.count("SELECT escalated FROM tasks WHERE id=1") == 1
    });
    assert_eq!(sbx.stage(1), "development");
    let green: i64 = sbx.count("SELECT COUNT(*) FROM ci_statuses WHERE state='success'");
    assert!(green > 0, "CI is green on the branch");
    let (transitions, outbox) = (
        sbx.count("SELECT COUNT(*) FROM transitions"),
        sbx.count("SELECT COUNT(*) FROM outbox"),
    );
    for _ in 0..10 {
        sbx.ok(&["reconcile"]);
    }
    assert_eq!(sbx.count("SELECT COUNT(*) FROM transitions"), transitions);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM outbox"),
        outbox,
        "no notifications"
    );

    // And the guard itself: at the retry cap without the escalated flag
    // (as the old system's data had it), a passing gate is still skipped.
    sbx.db()
        .execute(
            "UPDATE tasks SET escalated=0, stage='review', version=version WHERE id=1",
            [],
        )
        .unwrap();
    sbx.db()
        .execute(
            "INSERT INTO transitions (task_id, from_stage, to_stage, version, actor, reason, at_ms) \
             SELECT id, 'development', 'review', version + 1, 'human', 'test setup', 0 FROM tasks WHERE id=1",
            [],
        )
        .unwrap();
    sbx.db()
        .execute("UPDATE tasks SET version=version+1 WHERE id=1", [])
        .unwrap();
    let pass = sbx.json(&["reconcile"]);
    assert_eq!(
        pass["skipped"]["developer retry cap reached"],
        json!([1]),
        "{pass}"
    );
    assert_eq!(pass["unblocked"], json!([]));
}

#[test]
fn analysis_is_never_advanced_by_reconcile_even_when_auto_approved() {
    let w = World::new();
    w.sbx.ok(&["reconcile"]);
    // auto_approve_analysis = true in the sandbox: the gate would pass
    stuck_at(&w.sbx, 1, "analysis");
    for _ in 0..3 {
        let pass = w.sbx.json(&["reconcile"]);
        assert_eq!(
            pass["skipped"]["analysis is a human gate"],
            json!([1]),
            "{pass}"
        );
    }
    assert_eq!(w.sbx.stage(1), "analysis");
}

#[test]
fn dry_run_writes_nothing_and_prints_what_the_real_pass_then_does() {
    let w = World::new();
    let file = std::path::Path::new(ROOT)
        .join("tests/fixtures")
        .join(IN_PROGRESS);
    w.sbx.ok(&[
        "ingest",
        "--source",
        "plane",
        "--event",
        "issue",
        "--file",
        file.to_str().unwrap(),
    ]);
    stuck_at(&w.sbx, 1, "testing");
    let before = w.sbx.dump();
    let plan = w.sbx.json(&["reconcile", "--dry-run"]);
    let after = w.sbx.dump();
    let changed: Vec<_> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .collect();
    assert!(
        changed.is_empty(),
        "--dry-run wrote to the database: {changed:#?}"
    );
    assert_eq!(plan["dry_run"], true);
    let text = w.sbx.ok(&["reconcile", "--dry-run"]);
    assert!(
        text.contains("would advance task 1: testing → deploy-staging"),
        "{text}"
    );
    assert_eq!(w.sbx.dump(), before);

    let real = w.sbx.json(&["reconcile"]);
    assert_eq!(real["unblocked"], plan["unblocked"]);
    assert_eq!(real["replayed"], plan["replayed"]);
    assert_eq!(real["skipped"], plan["skipped"]);
    assert_eq!(w.sbx.stage(1), "deploy-staging");
}

#[test]
fn the_kill_switch_stops_the_pass() {
    let mut w = World::new();
    w.sbx.set("ORCH_RECONCILE_ENABLED", "false");
    let text = w.sbx.ok(&["reconcile"]);
    assert!(text.contains("reconcile is disabled"), "{text}");
    assert_eq!(w.issue_list_calls(), 0);
    assert_eq!(w.sbx.count("SELECT COUNT(*) FROM tasks"), 0);
}

#[test]
fn an_idle_reconcile_pass_writes_nothing_and_status_still_shows_when_it_ran() {
    let mut sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let passes = |sbx: &Sandbox| sbx.count("SELECT COUNT(*) FROM reconcile_passes");
    sbx.ok(&["reconcile"]);
    assert_eq!(passes(&sbx), 1, "the first pass is recorded");
    let first = sbx.json(&["status"])["reconcile_last_pass"].clone();
    // A commit grows the WAL, and the checkpoint at the last close
    // rewrites the database file; an idle pass leaves the file as it was
    // and the WAL empty (or absent).
    let sqlite = pg_base().is_none();
    let db = sbx.db_path();
    let wal = db.with_extension("db-wal");
    let stamp =
        |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.len(), m.modified().unwrap()));
    let wal_len = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let before = sqlite.then(|| (stamp(&db).unwrap(), wal_len(&wal)));
    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "3600000");
    sbx.ok(&["reconcile"]);
    sbx.ok(&["reconcile"]);
    assert_eq!(
        passes(&sbx),
        1,
        "unchanged passes write no report, an hour later too"
    );
    // The file's stamp and WAL are SQLite's; the pass count above says
    // the same on either backend.
    assert_eq!(
        sqlite.then(|| (stamp(&db).unwrap(), wal_len(&wal))),
        before,
        "an idle pass writes nothing to the database"
    );
    let last = sbx.json(&["status"])["reconcile_last_pass"].clone();
    let (at, changed) = (
        last["at_ms"].as_i64().unwrap(),
        last["changed_at_ms"].as_i64().unwrap(),
    );
    assert_eq!(changed, first["changed_at_ms"].as_i64().unwrap(), "{last}");
    assert!(
        at >= changed + 3_600_000,
        "the stamp says when it last ran: {last}"
    );
    let text = sbx.ok(&["status"]);
    assert!(text.contains("(same result since 1 h ago)"), "{text}");
}
