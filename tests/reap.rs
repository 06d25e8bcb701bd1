//! Crashes at named points, and the reaper that makes them harmless. (The
//! exhaustive crash matrix and the soak belong to the reaper issue; these
//! prove the skeleton leaves no known hole.)

use crate::util::*;

fn pids(file: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_killed_worker_loses_its_agent_and_tier1_requeues_the_job_and_kills_orphans() {
    let mut sbx = Sandbox::new();
    let pidfile = sbx.dir.join("pids");
    sbx.add_issue("worker dies");
    // The test reads host pids from the file: no pid namespace. The
    // child runner: its agent dies with its worker (tests/detach.rs has
    // the detached runner's).
    sbx.set("FAKE_AGENT_PIDFILE", pidfile.to_str().unwrap())
        .set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_AGENT_RUNNER", "child");
    let mut worker = sbx.spawn(
        &["work-once"],
        &[("FAKE_AGENT_MODE_ANALYST", "hang-with-child")],
    );
    wait_until(20, "agent and child started", || pids(&pidfile).len() == 2);
    worker.kill().unwrap(); // SIGKILL, like an OOM kill
    worker.wait().unwrap();
    let (leader, child) = (pids(&pidfile)[0], pids(&pidfile)[1]);
    wait_until(10, "agent leader to die with its worker", || {
        !pid_alive(leader)
    });
    assert!(
        pid_alive(child),
        "the agent's child outlives the worker until the reaper comes"
    );

    let plan = sbx.json(&["reap", "--dry-run"]);
    assert_eq!(plan["actions"][0]["action"], "recover", "{plan}");
    assert!(pid_alive(child), "--dry-run kills nothing");
    assert_eq!(
        sbx.count("SELECT attempt FROM jobs WHERE id=1"),
        1,
        "--dry-run writes nothing"
    );

    sbx.reap_requeues(2);
    wait_until(10, "orphaned child killed", || !pid_alive(child));
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='queued' AND attempt=2"),
        1
    );

    // the next worker runs it normally
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    assert_eq!(sbx.stage(1), "architecture");
    sbx.check_invariants();
}

#[test]
fn tier2_waits_out_the_grace_then_finishes_without_rerunning_the_agent() {
    let mut sbx = Sandbox::new();
    sbx.add_issue("dies finalizing");
    sbx.work_once_dying_after_the_exit();
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running' AND exit_code=0"),
        1
    );

    // inside the grace nothing is touched, although the worker is gone
    assert!(sbx.ok(&["reap"]).contains("nothing to reap"));
    sbx.set("ORCH_REAPER_FINALIZE_GRACE_S", "0");
    let before =
        sbx.count("SELECT COUNT(*) FROM transitions") + sbx.count("SELECT COUNT(*) FROM outbox");
    assert!(sbx
        .ok(&["reap", "--dry-run"])
        .contains("would finish job 1"));
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM transitions") + sbx.count("SELECT COUNT(*) FROM outbox"),
        before
    );

    let done = sbx.json(&["reap"]);
    assert_eq!(
        done["actions"][0]["result"], "advanced analysis → architecture",
        "{done}"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs"),
        1,
        "the agent was not run again"
    );
    assert_eq!(sbx.transitions(1).last().unwrap().2, "reaper");
    // a second reaper finds nothing
    assert!(sbx.ok(&["reap"]).contains("nothing to reap"));
}

#[test]
fn a_crash_at_any_named_point_is_continued_by_the_next_ticks() {
    let points = [
        ("claim.before_commit", "work-once"),
        ("worker.after_claim", "work-once"),
        ("worker.after_agent_exit", "work-once"),
        ("worker.after_exit_recorded", "work-once"),
        ("finalize.after_commit", "work-once"),
        ("finalize.after_push", "work-once"),
        ("finalize.before_terminal_claim", "work-once"),
        ("transition.after_cas", "work-once"),
        ("transition.before_enqueue", "work-once"),
        ("transition.before_outbox", "work-once"),
        ("transition.before_commit", "work-once"),
        ("ingest.before_commit", "ingest"),
        ("ingest.after_commit", "ingest"),
        ("deliver.before_send", "deliver"),
        ("deliver.after_send", "deliver"),
        // the merge line's points, between building the batch, testing
        // it, fast-forwarding main and applying the moves; main moves
        // first so that the rebase really happens
        ("merge_line.after_rebase", "merge-gate"),
        ("merge_line.after_build", "merge-gate"),
        ("merge_line.after_test", "merge-gate"),
        ("merge_line.after_fast_forward", "merge-gate"),
        // the line's staging step (a project with [projects.staging]),
        // between the suite and its record
        ("staging.before_record", "merge-gate"),
        ("transition.after_cas", "merge-gate"),
        ("transition.before_commit", "merge-gate"),
        // and the by-hand gate's
        ("merge_gate.after_acquire", "merge-gate --task 1"),
        ("merge_gate.after_rebase", "merge-gate --task 1"),
        ("merge_gate.before_merge", "merge-gate --task 1"),
        // the local forge's CI step, on the development head that waits
        ("ci.after_test", "ci"),
        ("ci.after_record", "ci"),
    ];
    for (point, command) in points {
        // The tracker is the fake Plane, so deliveries are real HTTP
        // calls that can be counted: no comment may arrive twice.
        let (mut sbx, plane) = crate::fakes::sandbox_with_plane();
        sbx.set("ORCH_REAPER_FINALIZE_GRACE_S", "0")
            .set("ORCH_RECONCILE_GRACE_S", "0");
        // A staging instance that is down, every check waived: its suite
        // passes without a server.
        let stg = point.starts_with("staging.").then(Sandbox::new);
        if let Some(stg) = &stg {
            stg.ok(&["init"]);
            let ids = [
                "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9a", "C9b", "C10",
            ];
            sbx.append_config(&format!(
                "\n[projects.staging]\nurl = \"http://127.0.0.1:{}\"\ndb = \"{}\"\nconfig = \"{}\"\ntimeout_s = 5\nwaive = {:?}\n",
                crate::util::free_port(),
                stg.db_path().display(),
                stg.dir.join("orch.toml").display(),
                ids
            ));
        }
        let delivery = std::path::Path::new(ROOT)
            .join("tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json");
        if command == "ingest" {
            // store without ingesting, then crash inside the ingest
            let server = sbx.serve();
            assert_eq!(
                server
                    .post_plane(&std::fs::read(&delivery).unwrap(), "crash")
                    .0,
                202
            );
        } else {
            sbx.ok(&[
                "ingest",
                "--source",
                "plane",
                "--event",
                "issue",
                "--file",
                delivery.to_str().unwrap(),
            ]);
        }
        let line = command.starts_with("merge-gate");
        if line {
            crate::pipeline::work_until_stage(&sbx, "deploy-staging");
            sbx.push_to_main("README.md", "Someone else's line.");
            if command == "merge-gate" {
                // the deployer passes: the task is ready to merge
                sbx.ok(&["work-once"]);
            }
        }
        if point.starts_with("ci.") {
            // The development run ends waiting for its CI.
            for _ in 0..3 {
                sbx.ok(&["work-once"]);
            }
            assert_eq!(
                sbx.count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='done'"),
                1,
                "{point}"
            );
        }
        let out = sbx
            .orch()
            .args(command.split(' '))
            .env("FAILPOINTS", format!("{point}=return"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "{point}: the process was killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        sbx.tick_until(15, |s| {
            s.count("SELECT COUNT(*) FROM tasks WHERE stage='done'") == 1
        });
        sbx.ok(&["tick"]);
        sbx.check_invariants();
        if line {
            // main moved only by fast-forward, to a tip that was tested
            let main = sbx.origin_git(&["rev-parse", "main"]);
            assert_eq!(
                sbx.count(&format!(
                    "SELECT COUNT(*) FROM ci_statuses WHERE sha='{main}' AND context='orch/test' AND state='success'"
                )),
                1,
                "{point}"
            );
            assert!(
                sbx.origin_git(&["rev-list", "--merges", "main"]).is_empty(),
                "{point}"
            );
        }
        assert_eq!(sbx.count("SELECT COUNT(*) FROM tasks"), 1, "{point}");
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM transitions"),
            8,
            "{point}: each stage advanced once"
        );
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM outbox WHERE status<>'delivered'"),
            0,
            "{point}"
        );
        // every tracker comment arrived, each exactly once (by dedupe key)
        let comments = plane.comments();
        let mut keys: Vec<String> = comments
            .iter()
            .map(|c| c.external_id.clone().unwrap_or_default())
            .collect();
        keys.sort();
        let posted = keys.len();
        assert!(posted > 0, "{point}: no comment reached Plane");
        keys.dedup();
        assert_eq!(
            keys.len(),
            posted,
            "{point}: a comment was posted twice: {keys:?}"
        );
        let expected =
            sbx.count("SELECT COUNT(*) FROM outbox WHERE channel='tracker' AND kind='comment'");
        assert_eq!(posted as i64, expected, "{point}: comments lost or doubled");
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running'"),
            0,
            "{point}"
        );
        // one recorded run per stage: a run whose exit was recorded is never
        // run again (a run killed before its exit was recorded leaves no row)
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM agent_runs WHERE stage='analysis'"),
            1,
            "{point}"
        );
        assert_eq!(
            sbx.origin_git(&["rev-parse", "main"]),
            sbx.origin_git(&["rev-parse", "orch/widget-42"]),
            "{point}"
        );
        // The developer's change is on main exactly once (a finalize run
        // twice never duplicates an edit).
        let changes = sbx.origin_git(&["show", "main:CHANGES.md"]);
        // The task's id: 1, but on PostgreSQL a transaction killed before
        // its commit has still used its identity value.
        let task = sbx.count("SELECT MIN(id) FROM tasks");
        let edits = changes
            .lines()
            .filter(|l| l.starts_with(&format!("- task {task}: change from job")))
            .count();
        assert_eq!(edits, 1, "{point}: {changes}");
        // A reap after the end finds nothing to do and leaves nothing running.
        assert!(sbx.ok(&["reap"]).contains("nothing to reap"), "{point}");
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running'"),
            0,
            "{point}"
        );
        // Every outbox message was delivered, each with one successful
        // send recorded.
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM outbox WHERE status='delivered' AND delivered_at_ms IS NOT NULL"),
            sbx.count("SELECT COUNT(*) FROM outbox"),
            "{point}"
        );
    }
}

/// A sandbox whose first job's worker died right after recording the
/// agent's exit: the job is `running` with an exit code and no worker.
fn job_left_finalizing() -> Sandbox {
    let sbx = Sandbox::new();
    sbx.add_issue("left finalizing");
    sbx.work_once_dying_after_the_exit();
    sbx
}

#[test]
fn two_finalizers_racing_on_one_job_advance_it_once_and_the_loser_writes_nothing() {
    let sbx = job_left_finalizing();
    let ctx = sbx.ctx();
    let before_outbox = sbx.count("SELECT COUNT(*) FROM outbox");
    // Both reach the terminal claim, then race for it.
    fail::cfg("finalize.before_terminal_claim", "sleep(300)").unwrap();
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<orch::pipeline::job::Finalized> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let db = ctx.open_db().unwrap();
                    barrier.wait();
                    orch::worker::finalize(&ctx, &db, 1, 1, orch::pipeline::Actor::Reaper).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    fail::remove("finalize.before_terminal_claim");
    let advanced = results
        .iter()
        .filter(|r| matches!(r, orch::pipeline::job::Finalized::Advanced { .. }))
        .count();
    let lost = results
        .iter()
        .filter(|r| **r == orch::pipeline::job::Finalized::Lost)
        .count();
    assert_eq!((advanced, lost), (1, 1), "{results:?}");
    assert_eq!(sbx.count("SELECT COUNT(*) FROM transitions"), 2);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs"),
        2,
        "the next job enqueued once"
    );
    // one transition's worth of messages: its comment, and the run report
    // written with the job's terminal claim
    assert_eq!(sbx.count("SELECT COUNT(*) FROM outbox") - before_outbox, 2);
    sbx.check_invariants();
}

#[test]
fn a_reaper_leaves_a_live_finalizing_worker_alone_and_after_the_grace_only_one_advances() {
    let mut sbx = Sandbox::new();
    sbx.add_issue("slow finalize");
    let worker = sbx.spawn(
        &["work-once"],
        &[("FAILPOINTS", "finalize.before_terminal_claim=sleep(5000)")],
    );
    wait_until(20, "agent exit recorded", || {
        sbx.count("SELECT COUNT(*) FROM jobs WHERE exit_recorded_at_ms IS NOT NULL") == 1
    });
    // inside the grace: nothing, although the job has been "exited" a while
    assert!(sbx.ok(&["reap"]).contains("nothing to reap"));
    // past the grace, a worker that still heartbeats is left alone too
    sbx.set("ORCH_REAPER_FINALIZE_GRACE_S", "0");
    assert!(sbx.ok(&["reap"]).contains("nothing to reap"));
    // once it falls silent the reaper finishes the job too; the claim decides
    sbx.set("ORCH_HEARTBEAT_STALE_S", "1");
    wait_until(
        20,
        "the reaper to see the worker's heartbeat as stale",
        || sbx.json(&["reap", "--dry-run"])["actions"][0]["action"] == "finish",
    );
    let reaped = sbx.json(&["reap"]);
    assert!(worker.wait_with_output().unwrap().status.success());
    let result = reaped["actions"][0]["result"].as_str().unwrap().to_string();
    assert!(
        result.starts_with("advanced") || result.starts_with("lost"),
        "{result}"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM transitions"),
        2,
        "exactly one advance"
    );
    assert_eq!(sbx.stage(1), "architecture");
    sbx.check_invariants();
}

#[test]
fn an_agent_past_its_timeout_under_a_stuck_worker_is_killed_by_the_reaper_and_requeued() {
    let mut sbx = Sandbox::new();
    let pidfile = sbx.dir.join("pids");
    sbx.add_issue("stuck");
    // The test reads host pids from the file: no pid namespace.
    sbx.set("FAKE_AGENT_PIDFILE", pidfile.to_str().unwrap())
        .set("ORCH_AGENT_SANDBOX", "none");
    let worker = sbx.spawn(
        &["work-once"],
        &[("FAKE_AGENT_MODE_ANALYST", "hang-with-child")],
    );
    wait_until(20, "agent and child started", || pids(&pidfile).len() == 2);
    // The worker lives; the reaper's clock is past timeout (120 s) + grace + 60 s.
    let plan = sbx
        .orch()
        .args(["--json", "reap", "--dry-run"])
        .env("ORCH_TEST_CLOCK_OFFSET_MS", "300000")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["actions"][0]["action"], "timeout", "{plan}");
    let out = sbx
        .orch()
        .args(["reap"])
        .env("ORCH_TEST_CLOCK_OFFSET_MS", "300000")
        .output()
        .unwrap();
    assert!(out.status.success());
    for pid in pids(&pidfile) {
        wait_until(10, "agent group killed", || !pid_alive(pid));
    }
    assert!(
        worker.wait_with_output().unwrap().status.success(),
        "the stuck worker notices it lost the job and exits"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='queued' AND attempt=2"),
        1
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs"),
        0,
        "the killed run's result was discarded"
    );
    // later ticks share the reaper's clock (the retry was scheduled on it)
    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "300000");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    sbx.check_invariants();
}

#[test]
fn a_wall_clock_jumped_past_the_timeout_and_the_heartbeat_kills_no_live_agent() {
    let mut sbx = Sandbox::new();
    let pidfile = sbx.dir.join("pids");
    sbx.add_issue("clock jumps");
    sbx.set("FAKE_AGENT_PIDFILE", pidfile.to_str().unwrap())
        .set("ORCH_AGENT_SANDBOX", "none");
    let worker = sbx.spawn(&["work-once"], &[("FAKE_AGENT_MODE_ANALYST", "hang")]);
    wait_until(20, "agent started", || pids(&pidfile).len() == 1);
    // The wall clock jumps 2 h ahead: past the timeout (120 s) + grace +
    // 60 s, and past the heartbeat's staleness (120 s). No time passed.
    for jump in ["7200000", "86400000"] {
        let plan = sbx
            .orch()
            .args(["--json", "reap", "--dry-run"])
            .env("ORCH_TEST_WALL_JUMP_MS", jump)
            .output()
            .unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        assert_eq!(plan["actions"], serde_json::json!([]), "{jump}: {plan}");
        let out = sbx
            .orch()
            .args(["reap"])
            .env("ORCH_TEST_WALL_JUMP_MS", jump)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "nothing to reap"
        );
    }
    let agent = pids(&pidfile)[0];
    assert!(pid_alive(agent), "the agent still runs");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running' AND attempt=1"),
        1
    );
    // Time that really passes (both clocks) still times it out.
    let out = sbx
        .orch()
        .args(["reap"])
        .env("ORCH_TEST_CLOCK_OFFSET_MS", "300000")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("timeout job 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until(10, "agent killed", || !pid_alive(agent));
    assert!(worker.wait_with_output().unwrap().status.success());
}

#[test]
fn a_clock_set_a_day_back_does_not_stop_the_claim_of_a_job_in_backoff() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_JOB_BACKOFF_S", "30")
        .set("FAKE_AGENT_MODE_ANALYST", "fail");
    sbx.add_issue("retried");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "retrying", "{v}");
    sbx.set("FAKE_AGENT_MODE_ANALYST", "ok");
    assert_eq!(sbx.json(&["work-once"])["result"], "idle", "in its backoff");
    // The clock goes a day back: the backoff (30 s) was set "in the
    // future" and counts as over.
    sbx.set("ORCH_TEST_WALL_JUMP_MS", "-86400000");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    assert_eq!(sbx.stage(1), "architecture");
    // The next job, queued on the clock as it now reads, runs at once.
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    sbx.check_invariants();
}

#[test]
fn a_clock_set_back_ends_a_merge_lease_and_an_account_pause_taken_before() {
    let sbx = Sandbox::new();
    let db = sbx.db();
    let later = 4_102_444_800_000i64; // 2100-01-01: "after now"
    db.execute(
        "INSERT INTO leases (name, holder, job_id, acquired_at_ms, expires_at_ms) \
         VALUES ('merge:acme/widget', 'w', NULL, ?1, ?1 + 7200000)",
        [later],
    )
    .unwrap();
    db.execute(
        "INSERT INTO pauses (account, kind, reason, since_ms, until_ms) \
         VALUES ('default', 'rate', 'x', ?1, ?1 + 60000)",
        [later],
    )
    .unwrap();
    assert_eq!(sbx.json(&["status"])["pauses"], serde_json::json!([]));
    let out = sbx.ok(&["reap"]);
    assert!(
        out.contains("released merge:acme/widget held by w"),
        "{out}"
    );
    sbx.add_issue("runs");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "not paused: {v}");
}

#[test]
fn chaos_soak_briefly_finds_no_invariant_violation() {
    // scripts/soak.sh kills random orch processes while workers, reap,
    // reconcile, ingest and deliver run concurrently, then recovers with
    // ordinary ticks and runs `orch check`. Longer runs: see the README.
    let out = std::process::Command::new(std::path::Path::new(ROOT).join("scripts/soak.sh"))
        .env("ORCH_BIN", env!("CARGO_BIN_EXE_orch"))
        .env("SOAK_SECONDS", "8")
        .env("SOAK_TASKS", "4")
        .env("SOAK_WORKERS", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all invariants hold") && stdout.contains("done 4, escalated 0"),
        "{stdout}"
    );
}

#[test]
fn the_reaper_removes_a_worktree_once_its_task_is_done_for_orch_worktree_keep_s() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_WORKTREE_KEEP_S", "3600");
    sbx.add_issue("finish me");
    sbx.tick_until(30, |s| s.stage(1) == "done");
    let done_wt = sbx.worktree(1);
    assert!(done_wt.exists());
    // A second task, started but not done, keeps its worktree.
    sbx.add_issue("keep me");
    sbx.ok(&["work-once"]);
    let busy_wt = sbx.worktree(2);
    assert!(busy_wt.exists());
    assert_eq!(sbx.ok(&["reap"]).trim(), "nothing to reap", "done only now");

    // Two hours later: the dry run names it and changes nothing.
    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "7200000");
    let before = sbx.dump();
    let plan = sbx.ok(&["reap", "--dry-run"]);
    assert_eq!(
        plan.trim(),
        format!(
            "would remove worktree {} (task 1, done 2 h ago)",
            done_wt.display()
        )
    );
    assert_eq!(sbx.dump(), before);
    assert!(done_wt.exists());

    let v = sbx.json(&["reap"]);
    assert_eq!(v["actions"][0]["action"], "remove_worktree", "{v}");
    assert_eq!(v["actions"][0]["result"], "removed", "{v}");
    assert!(!done_wt.exists());
    assert!(busy_wt.exists(), "a task not done keeps its worktree");
    let listed = git_in(
        &sbx.dir,
        &[
            "--git-dir",
            sbx.state_dir().join("repos/widget").to_str().unwrap(),
            "worktree",
            "list",
        ],
    );
    assert!(!listed.contains(done_wt.to_str().unwrap()), "{listed}");
    assert_eq!(sbx.ok(&["reap"]).trim(), "nothing to reap", "idempotent");
    // The branch is still on the forge; the metric counts the removal.
    assert!(!sbx.origin_git(&["rev-parse", "orch/widget-1"]).is_empty());
    let metrics = sbx.ok(&["metrics"]);
    assert!(
        metrics.contains("\norch_reap_remove_worktree_total 1\n"),
        "{metrics}"
    );

    // 0 keeps worktrees for ever.
    sbx.set("ORCH_WORKTREE_KEEP_S", "0")
        .set("ORCH_TEST_CLOCK_OFFSET_MS", "999999999");
    assert_eq!(sbx.ok(&["reap"]).trim(), "nothing to reap");
}

/// `systemctl stop` sends the worker SIGTERM (issue 21): the worker stops
/// the agent's whole group (TERM, grace, KILL), requeues the job without
/// counting the attempt, says so in a WARN line, and dies by SIGTERM.
#[test]
fn sigterm_to_a_worker_stops_the_agents_group_and_requeues_the_job_saying_why() {
    use std::os::unix::process::ExitStatusExt;
    let mut sbx = Sandbox::new();
    let pidfile = sbx.dir.join("pids");
    sbx.add_issue("worker stopped");
    // The child runner's stop (a detached run is left going instead:
    // tests/detach.rs).
    sbx.set("FAKE_AGENT_PIDFILE", pidfile.to_str().unwrap())
        .set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_AGENT_RUNNER", "child")
        .set("ORCH_KILL_GRACE_S", "2");
    let worker = sbx.spawn(
        &["work-once"],
        &[("FAKE_AGENT_MODE_ANALYST", "hang-with-child")],
    );
    wait_until(20, "agent and child started", || pids(&pidfile).len() == 2);
    let (leader, child) = (pids(&pidfile)[0], pids(&pidfile)[1]);
    // SAFETY: kill(2) on the worker we spawned.
    assert_eq!(unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) }, 0);
    let out = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{stderr}");
    assert!(
        !pid_alive(leader) && !pid_alive(child),
        "the agent's whole group is gone when the worker exits"
    );
    assert!(
        stderr.contains("WARN")
            && stderr.contains("stopped by SIGTERM: agent's process group stopped; job requeued without counting the attempt"),
        "{stderr}"
    );
    let db = sbx.db();
    let (status, error, free): (String, String, i64) = db
        .query_row(
            "SELECT status, last_error, free_attempts FROM jobs WHERE id=1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(status, "queued");
    assert!(error.starts_with("stopped by SIGTERM"), "{error}");
    assert_eq!(free, 1, "the attempt is not counted");
    let log = std::fs::read_to_string(sbx.state_dir().join("logs/job1-a1.log")).unwrap_or_default();
    assert!(log.contains("orch: the worker got SIGTERM"), "{log}");
    // The next worker runs it normally.
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    sbx.check_invariants();
}
