//! The merge gate (DESIGN §7, issues 6 and 23): catch up with main,
//! re-test the combined tree, serialise merges under the repo's lease —
//! through the merge line (a deployer PASS makes the task ready; `orch
//! merge-gate` and `orch tick` land it) and by hand (`orch merge-gate
//! --task`), with crashes, busy leases, refused branch names and
//! `--dry-run`. Batches, bisection and the line's visibility are in
//! `merge_line.rs`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::util::*;

const LEASE: &str = "merge:acme/widget";
const NOT_DEPLOYER: [&str; 5] = ["analyst", "architect", "developer", "reviewer", "tester"];

/// `orch ARGS` with extra environment; the raw output.
fn run(sbx: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = sbx.orch_std();
    c.args(args).envs(env.iter().copied());
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs every role but the deployer, and the CI step, (with `env`) until
/// task `id` waits at deploy-staging with its job queued. Tasks parked at deploy-staging are
/// left alone.
fn to_deploy_staging(sbx: &Sandbox, id: i64, env: &[(&str, &str)]) {
    for _ in 0..10 {
        if sbx.stage(id) == "deploy-staging" {
            return;
        }
        for role in NOT_DEPLOYER {
            let o = run(sbx, &["work-once", "--role", role], env);
            assert!(o.status.success(), "{}", text(&o));
        }
        // The local forge's CI of the development heads.
        let o = run(sbx, &["ci"], env);
        assert!(o.status.success(), "{}", text(&o));
    }
    panic!("task {id} never reached deploy-staging");
}

/// One `work-once` for the deployer role; the JSON outcome.
fn deployer_once(sbx: &Sandbox) -> serde_json::Value {
    sbx.json(&["work-once", "--role", "deployer"])
}

/// One run of the merge line (`orch merge-gate --json`), for the project.
fn line(sbx: &Sandbox) -> serde_json::Value {
    let v = sbx.json(&["merge-gate"]);
    v["projects"][0].clone()
}

fn lease_holder(sbx: &Sandbox) -> Option<(String, Option<i64>)> {
    sbx.db()
        .query_row(
            "SELECT holder, job_id FROM leases WHERE name=?1",
            [LEASE],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
}

fn worktree(sbx: &Sandbox, id: i64) -> PathBuf {
    PathBuf::from(
        sbx.json(&["task", "show", &id.to_string()])["task"]["worktree"]
            .as_str()
            .unwrap(),
    )
}

/// The worktree has no changes and no rebase in progress.
fn assert_clean(wt: &Path) {
    assert_eq!(git_in(wt, &["status", "--porcelain"]), "", "worktree clean");
    for dir in ["rebase-merge", "rebase-apply"] {
        let p = git_in(wt, &["rev-parse", "--git-path", dir]);
        let p = if Path::new(&p).is_absolute() {
            PathBuf::from(p)
        } else {
            wt.join(p)
        };
        assert!(!p.exists(), "no rebase left in progress ({})", p.display());
    }
}

fn last_reason(sbx: &Sandbox, id: i64) -> String {
    sbx.db()
        .query_row(
            "SELECT reason FROM transitions WHERE task_id=?1 ORDER BY version DESC LIMIT 1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

/// The deploy-staging job of task `id` at its latest version there.
fn staging_job(sbx: &Sandbox, id: i64) -> i64 {
    sbx.db()
        .query_row(
            "SELECT id FROM jobs WHERE task_id=?1 AND stage='deploy-staging' ORDER BY id DESC LIMIT 1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

fn agent_runs(sbx: &Sandbox, job: i64) -> i64 {
    sbx.count(&format!(
        "SELECT COUNT(*) FROM agent_runs WHERE job_id={job}"
    ))
}

#[test]
fn two_green_branches_on_the_same_lines_the_second_waits_for_the_lease_then_conflicts_and_rolls_back(
) {
    let mut sbx = Sandbox::new();
    // The serial line: one task a batch.
    sbx.set("ORCH_MERGE_LINE_BATCH_MAX", "1");
    // Both developers append to the end of CHANGES.md: green alone, a
    // conflict together.
    let one = sbx.add_issue("first");
    to_deploy_staging(&sbx, one, &[]);
    let two = sbx.add_issue("second");
    to_deploy_staging(&sbx, two, &[]);

    // Both deployers pass: each job is done, its task ready to merge.
    let job2 = staging_job(&sbx, two);
    for _ in 0..2 {
        let v = deployer_once(&sbx);
        assert_eq!(v["finalized"]["action"], "waiting", "{v}");
        assert!(
            v["finalized"]["reason"]
                .as_str()
                .unwrap()
                .contains("ready to merge"),
            "{v}"
        );
    }
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM merge_line WHERE state='ready'"),
        2
    );

    // The line lands task 1; its deploy job inherits the lease, so task 2
    // waits in the line.
    let v = line(&sbx);
    assert_eq!(v["batches"][0]["landed"], serde_json::json!([one]), "{v}");
    assert_eq!(sbx.stage(one), "deploy");
    let deploy_job: i64 = sbx.count(&format!(
        "SELECT id FROM jobs WHERE task_id={one} AND stage='deploy'"
    ));
    assert_eq!(
        lease_holder(&sbx),
        Some((format!("task:{one}"), Some(deploy_job)))
    );
    assert!(
        v["busy"]
            .as_str()
            .unwrap()
            .contains(&format!("held by task:{one}")),
        "{v}"
    );
    let main_after_one = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(sbx.stage(two), "deploy-staging");
    let again = line(&sbx);
    assert_eq!(again["batches"], serde_json::json!([]), "{again}");

    // Task 1 deploys and is done: the lease is released.
    let v = deployer_once(&sbx);
    assert_eq!(v["finalized"]["to"], "done", "{v}");
    assert_eq!(lease_holder(&sbx), None);

    // Task 2's turn: its rebase conflicts. The deployer is not run again.
    let v = line(&sbx);
    assert_eq!(v["batches"][0]["sent_back"][0][0], two, "{v}");
    assert_eq!(sbx.stage(two), "development");
    assert_eq!(agent_runs(&sbx, job2), 1, "the deployer ran once");
    let reason = last_reason(&sbx, two);
    assert!(
        reason.contains("merge line: rebase onto main")
            && reason.contains("conflicts in CHANGES.md"),
        "{reason}"
    );
    assert_eq!(
        sbx.count(&format!(
            "SELECT developer_retries FROM tasks WHERE id={two}"
        )),
        1
    );
    let comment = sbx.count(&format!(
        "SELECT COUNT(*) FROM outbox WHERE task_id={two} AND channel='tracker' AND kind='comment' \
         AND payload LIKE '%conflicts in CHANGES.md%'"
    ));
    assert_eq!(comment, 1, "the reason goes to the tracker");
    assert_eq!(lease_holder(&sbx), None, "lease free");
    assert_clean(&worktree(&sbx, two));
    assert_eq!(sbx.origin_git(&["rev-parse", "main"]), main_after_one);
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM merge_line WHERE task_id={two} AND state='sent_back'"
        )),
        1
    );
    sbx.check_invariants();
}

#[test]
fn two_branches_green_alone_but_red_together_are_caught_by_the_retest() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_STAGING_CHECK_INFRA_BACKOFF_S", "0");
    let one = sbx.add_issue("first feature");
    to_deploy_staging(
        &sbx,
        one,
        &[
            ("FAKE_AGENT_DEV_FILE", "alpha.txt"),
            ("FAKE_AGENT_DEV_LINE", "ALPHA"),
        ],
    );
    let two = sbx.add_issue("second feature");
    to_deploy_staging(
        &sbx,
        two,
        &[
            ("FAKE_AGENT_DEV_FILE", "beta.txt"),
            ("FAKE_AGENT_DEV_LINE", "BETA"),
        ],
    );
    // Each branch was green on its own (development's CI).
    assert_eq!(
        sbx.count(
            "SELECT COUNT(*) FROM transitions WHERE from_stage='development' AND to_stage='review'"
        ),
        2
    );

    // Both ready; the line tests them as one batch (red), bisects, lands
    // task 1 and sends task 2 back.
    deployer_once(&sbx);
    deployer_once(&sbx);
    let v = line(&sbx);
    assert_eq!(
        v["batches"][0]["tasks"],
        serde_json::json!([one, two]),
        "{v}"
    );
    assert_eq!(v["batches"][0]["landed"], serde_json::json!([one]), "{v}");
    assert_eq!(v["batches"][0]["sent_back"][0][0], two, "{v}");
    deployer_once(&sbx);
    assert_eq!(sbx.stage(one), "done");
    assert_eq!(sbx.stage(two), "development");
    let reason = last_reason(&sbx, two);
    assert!(
        reason.contains("tests fail on the combined tree"),
        "{reason}"
    );
    let main = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(
        main,
        sbx.origin_git(&["rev-parse", &format!("orch/widget-{one}")])
    );
    assert!(sbx
        .origin_git(&["ls-tree", "--name-only", "main"])
        .contains("alpha.txt"));
    assert!(!sbx
        .origin_git(&["ls-tree", "--name-only", "main"])
        .contains("beta.txt"));
    // Task 2's branch was rebased onto main and pushed (force-with-lease);
    // its combined head is recorded red.
    let two_head = sbx.origin_git(&["rev-parse", &format!("orch/widget-{two}")]);
    sbx.origin_git(&["merge-base", "--is-ancestor", &main, &two_head]);
    let red: i64 = sbx
        .db()
        .query_row(
            "SELECT COUNT(*) FROM ci_statuses WHERE sha=?1 AND context='orch/test' AND state='failure'",
            [&two_head],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(red, 1);
    // The next developer run is told what failed: the tail of the
    // re-test's own log, which orch recorded with the rollback.
    let log: String = sbx
        .db()
        .query_row(
            "SELECT log_path FROM transitions WHERE task_id=?1 ORDER BY version DESC LIMIT 1",
            [two],
            |r| r.get(0),
        )
        .unwrap();
    assert!(log.contains("/logs/merge-task"), "{log}");
    let brief = sbx.json(&["agents", "show", "developer", "--task", &two.to_string()]);
    let feedback = brief["feedback"].as_str().unwrap();
    assert!(
        feedback.contains("tests fail on the combined tree")
            && feedback.contains(&format!("The end of {log}"))
            && feedback.contains("FAIL: alpha.txt (ALPHA) and beta.txt (BETA) clash"),
        "{feedback}"
    );
    assert_eq!(lease_holder(&sbx), None);
    assert_clean(&worktree(&sbx, two));
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn two_merge_gates_at_once_one_proceeds_the_other_defers_and_both_finish_in_order() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_STAGING_CHECK_INFRA_BACKOFF_S", "3600");
    let one = sbx.add_issue("first");
    to_deploy_staging(&sbx, one, &[("FAKE_AGENT_DEV_FILE", "one.md")]);
    let two = sbx.add_issue("second");
    to_deploy_staging(&sbx, two, &[("FAKE_AGENT_DEV_FILE", "two.md")]);

    // The first gate pauses inside its lease; the second finds it busy.
    let mut first = sbx.orch_std();
    first
        .args(["merge-gate", "--task", &one.to_string()])
        .env("FAILPOINTS", "merge_gate.after_acquire=sleep(2000)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let first = first.spawn().unwrap();
    wait_until(20, "the first gate to hold the lease", || {
        lease_holder(&sbx).is_some()
    });
    let second = run(&sbx, &["merge-gate", "--task", &two.to_string()], &[]);
    assert_eq!(second.status.code(), Some(75), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains(&format!("held by task:{one}")),
        "{}",
        text(&second)
    );
    assert_eq!(
        sbx.stage(two),
        "deploy-staging",
        "a deferred manual run changes nothing"
    );
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE task_id={two} AND stage='deploy-staging' AND status='queued'"
        )),
        1
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains("fast-forwarded main"));
    assert_eq!(sbx.stage(one), "deploy");
    assert_eq!(
        sbx.transitions(one).last().unwrap(),
        &(
            Some("deploy-staging".into()),
            "deploy".into(),
            "human".into()
        )
    );

    // The lease stays with task 1 until its deploy is done.
    let again = run(
        &sbx,
        &["--json", "merge-gate", "--task", &two.to_string()],
        &[],
    );
    assert_eq!(again.status.code(), Some(75), "{}", text(&again));
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["result"], "deferred", "{v}");

    // Task 1's ticks also run task 2's deployer, whose merge is deferred
    // (for an hour) on the busy lease; the release at task 1's done wakes
    // it, so task 2 merges without waiting the hour out.
    sbx.tick_until(5, |s| s.stage(one) == "done");
    if sbx.stage(two) == "deploy-staging" {
        let ok = run(&sbx, &["merge-gate", "--task", &two.to_string()], &[]);
        assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    }
    sbx.tick_until(5, |s| s.stage(two) == "done");

    // In order: task 1's merge is below task 2's on main's first-parent line.
    let at = |id: i64| -> i64 {
        sbx.db()
            .query_row(
                "SELECT at_ms FROM transitions WHERE task_id=?1 AND from_stage='deploy-staging' AND to_stage='deploy'",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(at(one) < at(two));
    let main = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(
        main,
        sbx.origin_git(&["rev-parse", &format!("orch/widget-{two}")])
    );
    let one_head = sbx.origin_git(&["rev-parse", &format!("orch/widget-{one}")]);
    let line = sbx.origin_git(&["rev-list", "--first-parent", "main"]);
    assert!(
        line.lines().any(|c| c == one_head),
        "task 1's head is on main's first-parent line"
    );
    assert!(sbx.origin_git(&["rev-list", "--merges", "main"]).is_empty());
    assert_eq!(lease_holder(&sbx), None);
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn a_lease_holder_killed_mid_gate_is_recovered_by_the_next_run_and_the_task_continues() {
    let sbx = Sandbox::new();
    // The line dies holding the lease, after building the batch.
    let one = sbx.add_issue("the line dies in the gate");
    to_deploy_staging(&sbx, one, &[("FAKE_AGENT_DEV_FILE", "one.md")]);
    sbx.push_to_main("README.md", "Someone else moved main.");
    let job = staging_job(&sbx, one);
    deployer_once(&sbx);
    let o = run(
        &sbx,
        &["merge-gate"],
        &[("FAILPOINTS", "merge_line.after_build=return")],
    );
    assert_eq!(
        o.status.code(),
        None,
        "killed by the failpoint: {}",
        text(&o)
    );
    let (holder, lease_job) = lease_holder(&sbx).unwrap();
    assert!(holder.starts_with("merge-line@"), "{holder}");
    assert_eq!(lease_job, None);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM merge_line WHERE state='batched'"),
        1
    );
    // The next tick's line takes its own lease again and lands the batch.
    sbx.ok(&["tick"]);
    assert_ne!(sbx.stage(one), "deploy-staging");
    assert_eq!(agent_runs(&sbx, job), 1, "the deployer is not run again");
    assert!(sbx
        .origin_git(&["show", "main:README.md"])
        .contains("Someone else"));
    sbx.tick_until(5, |s| s.stage(one) == "done");
    assert_eq!(lease_holder(&sbx), None);

    // A manual run dies mid-gate (after the catch-up and the tests).
    let two = sbx.add_issue("manual run dies in the gate");
    to_deploy_staging(&sbx, two, &[("FAKE_AGENT_DEV_FILE", "two.md")]);
    sbx.push_to_main("README.md", "And moved it again.");
    let job2 = staging_job(&sbx, two);
    let o = run(
        &sbx,
        &["merge-gate", "--task", &two.to_string()],
        &[("FAILPOINTS", "merge_gate.before_merge=return")],
    );
    assert_eq!(
        o.status.code(),
        None,
        "killed by the failpoint: {}",
        text(&o)
    );
    assert_eq!(
        lease_holder(&sbx),
        Some((format!("task:{two}"), Some(job2)))
    );
    // Had it expired, the reaper would release it outright.
    let later = run(
        &sbx,
        &["--json", "reap", "--dry-run"],
        &[("ORCH_TEST_CLOCK_OFFSET_MS", "86400000")],
    );
    let plan: serde_json::Value = serde_json::from_slice(&later.stdout).unwrap();
    assert!(
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "release_leases"),
        "{plan}"
    );
    // Now: the manual run was the job's worker; it is gone, so Tier-1
    // requeues the job, which keeps the lease for its next run.
    sbx.reap_requeues(2);
    assert_eq!(
        lease_holder(&sbx),
        Some((format!("task:{two}"), Some(job2)))
    );
    sbx.tick_until(5, |s| s.stage(two) == "done");
    assert_eq!(lease_holder(&sbx), None);
    let main = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(
        main,
        sbx.origin_git(&["rev-parse", &format!("orch/widget-{two}")])
    );
    assert!(sbx
        .origin_git(&["show", "main:README.md"])
        .contains("moved it again"));
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn a_task_branch_that_targets_main_is_refused_before_any_push() {
    let sbx = Sandbox::new();
    let one = sbx.add_issue("evil branch");
    to_deploy_staging(&sbx, one, &[]);
    let refs = sbx.origin_git(&["for-each-ref"]);
    for name in ["main", "refs/heads/main", "HEAD:main", "orch/../main"] {
        sbx.db()
            .execute(
                "UPDATE tasks SET branch=?1 WHERE id=?2",
                orch::sql::params![name, one],
            )
            .unwrap();
        for dry in [false, true] {
            let mut args = vec!["merge-gate", "--task", "1"];
            if dry {
                args.push("--dry-run");
            }
            let o = run(&sbx, &args, &[]);
            assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(&format!("refusing ref {name:?}")),
                "{name}: {err}"
            );
        }
        assert_eq!(
            sbx.origin_git(&["for-each-ref"]),
            refs,
            "{name}: origin untouched"
        );
        assert_eq!(lease_holder(&sbx), None, "{name}: no lease taken");
        assert_eq!(sbx.stage(one), "deploy-staging");
    }
    // The worker and the line refuse it too, and push nothing.
    let _ = run(&sbx, &["work-once", "--role", "deployer"], &[]);
    let _ = run(&sbx, &["merge-gate"], &[]);
    assert_eq!(sbx.origin_git(&["for-each-ref"]), refs);
    assert_eq!(sbx.origin_git(&["rev-parse", "main"]).len(), 40);
    assert_eq!(lease_holder(&sbx), None);
}

#[test]
fn dry_run_writes_nothing_and_names_its_steps_then_the_real_run_takes_them() {
    let sbx = Sandbox::new();
    let one = sbx.add_issue("dry first");
    to_deploy_staging(&sbx, one, &[]);
    sbx.push_to_main("README.md", "Main moved after the branch was cut.");
    let wt = worktree(&sbx, one);
    let clone = PathBuf::from(&sbx.env["ORCH_STATE_DIR"]).join("repos/widget");
    let before = (
        sbx.dump(),
        git_in(&wt, &["rev-parse", "HEAD"]),
        git_in(&wt, &["status", "--porcelain"]),
        git_in(&clone, &["for-each-ref"]),
    );

    let o = run(
        &sbx,
        &["merge-gate", "--task", &one.to_string(), "--dry-run"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for step in [
        "merge gate --dry-run (lease merge:acme/widget)",
        &format!("would take lease {LEASE} (holder task:{one}"),
        "would claim job",
        "would fetch origin: main is at",
        &format!("would rebase orch/widget-{one}"),
        &format!("would push orch/widget-{one} with --force-with-lease=orch/widget-{one}:"),
        "would run the test command [\"sh\", \"test.sh\"]",
        "would fast-forward main to the tested head",
        "would move deploy-staging → deploy (actor human) and hand the lease to the deploy job",
        "result: would merge",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
    let v = sbx.json(&["merge-gate", "--task", &one.to_string(), "--dry-run"]);
    assert_eq!(
        (
            v["dry_run"].clone(),
            v["result"].clone(),
            v["would"].clone()
        ),
        (true.into(), "planned".into(), "merge".into()),
        "{v}"
    );
    let after = (
        sbx.dump(),
        git_in(&wt, &["rev-parse", "HEAD"]),
        git_in(&wt, &["status", "--porcelain"]),
        git_in(&clone, &["for-each-ref"]),
    );
    assert_eq!(
        before, after,
        "--dry-run wrote nothing (database, origin, worktree, clone)"
    );

    // The real run takes those steps.
    let v = sbx.json(&["merge-gate", "--task", &one.to_string()]);
    assert_eq!(v["result"], "merged", "{v}");
    let steps: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    for want in [
        "took lease merge:acme/widget",
        "claimed job",
        &format!("rebased orch/widget-{one} onto main"),
        &format!("--force-with-lease=orch/widget-{one}:"),
        "ran the test command",
        "fast-forwarded main to",
        "moved deploy-staging → deploy (actor human",
    ] {
        assert!(
            steps.iter().any(|s| s.contains(want)),
            "missing {want:?} in {steps:?}"
        );
    }
    assert_eq!(sbx.stage(one), "deploy");
    assert!(sbx
        .origin_git(&["show", "main:README.md"])
        .contains("Main moved"));

    // A dry run against a busy lease would defer.
    let two = sbx.add_issue("dry second");
    to_deploy_staging(&sbx, two, &[("FAKE_AGENT_DEV_FILE", "two.md")]);
    let plan = sbx.ok(&["merge-gate", "--task", &two.to_string(), "--dry-run"]);
    assert!(
        plan.contains(&format!(
            "would defer (exit 75), changing nothing: merge lease {LEASE} is held by task:{one}"
        )),
        "{plan}"
    );

    // Releasing by hand (the repair for a stuck lease), dry first.
    let rel = sbx.ok(&[
        "merge-gate",
        "--task",
        &one.to_string(),
        "--release",
        "--dry-run",
    ]);
    assert!(
        rel.contains(&format!("would release {LEASE} held by task:{one}")),
        "{rel}"
    );
    assert!(lease_holder(&sbx).is_some());
    let rel = sbx.ok(&["merge-gate", "--task", &one.to_string(), "--release"]);
    assert!(
        rel.contains(&format!("released {LEASE} held by task:{one}")),
        "{rel}"
    );
    assert_eq!(lease_holder(&sbx), None);
    sbx.tick_until(8, |s| s.stage(one) == "done" && s.stage(two) == "done");
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn a_stuck_lease_holds_the_line_until_it_expires() {
    let mut sbx = Sandbox::new();
    let one = sbx.add_issue("waits for the lease");
    to_deploy_staging(&sbx, one, &[]);
    // A lease nobody will come back for (no job; expires in an hour).
    let now: i64 = sbx.json(&["status"])["now_ms"].as_i64().unwrap();
    sbx.db()
        .execute(
            "INSERT INTO leases (name, holder, job_id, acquired_at_ms, expires_at_ms) VALUES (?1,'task:99',NULL,?2,?3)",
            orch::sql::params![LEASE, now, now + 3_600_000],
        )
        .unwrap();
    let job = staging_job(&sbx, one);
    deployer_once(&sbx);
    for _ in 0..2 {
        let out = sbx.ok(&["merge-gate"]);
        assert!(
            out.contains("waits: merge lease") && out.contains("held by task:99"),
            "{out}"
        );
    }
    assert_eq!(agent_runs(&sbx, job), 1, "the deployer ran once");
    assert_eq!(sbx.stage(one), "deploy-staging");

    // The stuck lease: `orch reap` releases it once it expired.
    assert!(sbx
        .ok(&["status"])
        .contains(&format!("lease {LEASE} held by task:99")));
    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "3700000");
    let done = sbx.json(&["reap"]);
    assert!(
        done["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["result"] == format!("released {LEASE} held by task:99")),
        "{done}"
    );
    assert_eq!(lease_holder(&sbx), None);
    sbx.tick_until(5, |s| s.stage(one) == "done");
    assert_eq!(agent_runs(&sbx, job), 1, "the deployer ran once");
    sbx.check_invariants();
}

#[test]
fn without_the_gate_for_a_repo_merges_take_no_lease() {
    for (k, v) in [
        ("ORCH_MERGE_GATE_ENABLED", "false"),
        ("ORCH_MERGE_GATE_REPOS", "other, acme/other"),
    ] {
        let mut sbx = Sandbox::new();
        sbx.set(k, v);
        let one = sbx.add_issue("no lease");
        to_deploy_staging(&sbx, one, &[]);
        sbx.db()
            .execute(
                "INSERT INTO leases (name, holder, job_id, acquired_at_ms, expires_at_ms) VALUES (?1,'task:99',NULL,0,9000000000000)",
                [LEASE],
            )
            .unwrap();
        let plan = sbx.ok(&["merge-gate", "--task", &one.to_string(), "--dry-run"]);
        assert!(
            plan.contains("merge gate --dry-run (no lease)")
                && plan.contains("would merge without a lease"),
            "{plan}"
        );
        deployer_once(&sbx);
        let v = line(&sbx);
        assert_eq!(
            v["batches"][0]["landed"],
            serde_json::json!([one]),
            "{k}={v}"
        );
        assert_eq!(lease_holder(&sbx), Some(("task:99".into(), None)));
    }
    // Listed by name, the project uses the lease.
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_REPOS", "widget");
    let one = sbx.add_issue("lease by name");
    to_deploy_staging(&sbx, one, &[]);
    deployer_once(&sbx);
    line(&sbx);
    assert_eq!(lease_holder(&sbx).map(|l| l.0), Some(format!("task:{one}")));
}

#[test]
fn a_task_waiting_on_a_busy_lease_lands_in_the_first_tick_after_its_release() {
    // Without a wake-up to wait for, the second merge must not sleep
    // through the free lease.
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_LINE_BATCH_MAX", "1");
    let env = [("FAKE_AGENT_DEV_FILE", "notes-%t.md")];
    let one = sbx.add_issue("first");
    to_deploy_staging(&sbx, one, &env);
    let two = sbx.add_issue("second");
    to_deploy_staging(&sbx, two, &env);

    deployer_once(&sbx);
    deployer_once(&sbx);
    let v = line(&sbx);
    assert_eq!(v["batches"][0]["landed"], serde_json::json!([one]), "{v}");
    assert!(v["busy"].as_str().is_some(), "{v}");

    // Task 1 deploys: its lease is released, and the very next tick lands
    // task 2.
    let v = deployer_once(&sbx);
    assert_eq!(v["finalized"]["to"], "done", "{v}");
    assert_eq!(lease_holder(&sbx), None);
    let v = sbx.json(&["tick"]);
    assert_eq!(
        v["merge_line"][0]["batches"][0]["landed"],
        serde_json::json!([two]),
        "{v}"
    );
    assert_ne!(sbx.stage(two), "deploy-staging", "merged without waiting");
    assert!(sbx
        .origin_git(&["ls-tree", "--name-only", "main"])
        .contains("notes-2.md"));
    sbx.check_invariants();
}
