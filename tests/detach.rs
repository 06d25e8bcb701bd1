//! Detached runs (issue 24): an agent run outlives every orch process —
//! killed, stopped, upgraded — and a later tick adopts it: a run that
//! ended is recorded and finalized, never run again; a run still going is
//! watched, not restarted (DESIGN §4 "Detached runs", §6).

use std::path::{Path, PathBuf};

use crate::util::*;

/// The cost the fake agent reports for one successful run (success.json).
const RUN_COST_USD: f64 = 0.037482800000000004;

/// Agent starts recorded by the fake agent (`FAKE_AGENT_PIDFILE`: one pid
/// a line, appended at every start).
fn starts(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A sandbox outside `/tmp` whose agents run unconfined (the test reads
/// their host pids) and record every start in `<dir>/starts`.
fn sandbox() -> (Sandbox, PathBuf) {
    let mut sbx = Sandbox::new_in(Path::new("/var/tmp/orch-tests"));
    let file = sbx.dir.join("starts");
    sbx.set("FAKE_AGENT_PIDFILE", file.to_str().unwrap())
        .set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_MAX_CONCURRENCY", "4")
        .set("ORCH_MAX_CONCURRENCY_ANALYST", "4")
        .set("ORCH_REAPER_FINALIZE_GRACE_S", "0");
    (sbx, file)
}

/// Starts job 1's run detached (the fake agent sleeping `sleep_s`), kills
/// its watching worker with SIGKILL once the run started, and waits for
/// the run's exit record: a run that ended with no orch watching it.
fn run_outliving_its_watcher(sbx: &Sandbox, sleep_s: &str) {
    let mut worker = sbx.spawn(&["work-once"], &[("FAKE_AGENT_SLEEP", sleep_s)]);
    wait_until(30, "the detached run started", || {
        detached_running(sbx) == 1
    });
    kill9(worker.id());
    worker.wait().unwrap();
    wait_until(30, "the run's exit record", || exit_record(sbx, 1).exists());
}

/// Jobs whose detached run has started (its handle recorded).
fn detached_running(sbx: &Sandbox) -> i64 {
    sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running' AND runner='supervisor' AND run_handle IS NOT NULL")
}

/// The exit record of job `job`'s first claim.
fn exit_record(sbx: &Sandbox, job: i64) -> PathBuf {
    sbx.state_dir().join(format!("logs/job{job}-e1.exit"))
}

/// SIGKILL to `pid` (an orch process this test started).
fn kill9(pid: u32) {
    // SAFETY: kill(2) on a process this test spawned.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// The analysis runs: each job's runs, adopted flags and cost.
fn assert_each_analysis_ran_once(sbx: &Sandbox, starts_file: &Path, tasks: i64) {
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM tasks WHERE stage='architecture'"),
        tasks,
        "every analysis advanced"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs WHERE stage='analysis'"),
        tasks,
        "one recorded run per analysis job"
    );
    assert_eq!(
        sbx.count(
            "SELECT COUNT(*) FROM jobs WHERE stage='analysis' AND (status<>'done' OR attempt<>1)"
        ),
        0,
        "each analysis job done at its first attempt"
    );
    assert_eq!(
        starts(starts_file).len() as i64,
        tasks,
        "0 runs started twice (one agent start per job)"
    );
    let cost: f64 = sbx
        .db()
        .query_row(
            "SELECT SUM(cost_usd) FROM agent_runs WHERE stage='analysis'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (cost - tasks as f64 * RUN_COST_USD).abs() < 1e-9,
        "usage counted once per run: {cost}"
    );
    let usage = sbx.json(&["usage"]);
    let total = usage["total"]["cost_usd"].as_f64().unwrap();
    assert!(
        (total - tasks as f64 * RUN_COST_USD).abs() < 1e-9,
        "orch usage counts each run once: {usage}"
    );
    sbx.check_invariants();
}

#[test]
fn four_detached_runs_outlive_kill_9_of_every_orch_process_and_each_finishes_once() {
    let (sbx, file) = sandbox();
    for i in 0..4 {
        sbx.add_issue(&format!("survivor {i}"));
    }
    let workers: Vec<_> = (0..4)
        .map(|_| sbx.spawn(&["work-once"], &[("FAKE_AGENT_SLEEP", "4")]))
        .collect();
    wait_until(30, "4 detached runs started", || {
        detached_running(&sbx) == 4 && starts(&file).len() == 4
    });
    for mut w in workers {
        kill9(w.id());
        w.wait().unwrap();
    }
    let agents = starts(&file);
    assert!(
        agents.iter().all(|p| pid_alive(*p)),
        "every agent outlives its killed worker"
    );

    // A run that goes on without a worker is no broken invariant.
    sbx.ok(&["check"]);
    // The reaper's plan leaves every live run running.
    let plan = sbx.json(&["reap", "--dry-run"]);
    let actions = plan["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 4, "{plan}");
    assert!(
        actions.iter().all(|a| a["action"] == "leave_running"),
        "{plan}"
    );
    assert!(
        sbx.ok(&["reap", "--dry-run"])
            .contains("its detached run goes on"),
        "the plan says so"
    );
    sbx.ok(&["reap"]);
    assert_eq!(detached_running(&sbx), 4, "nothing restarted or requeued");

    // A worker takes over watching one live run and finishes it.
    let v = sbx.json(&["work-once", "--role", "analyst"]);
    assert_eq!(v["result"], "ran", "{v}");
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");

    // The others end with nobody watching; the reaper adopts them.
    wait_until(30, "every run's exit record", || {
        (1..=4).all(|job| exit_record(&sbx, job).exists())
    });
    assert!(agents.iter().all(|p| !pid_alive(*p)));
    let done = sbx.json(&["reap"]);
    let results: Vec<&str> = done["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results.len(), 3, "{done}");
    assert!(
        results
            .iter()
            .all(|r| r.starts_with("adopted (agent exited 0): advanced analysis → architecture")),
        "{done}"
    );
    assert!(sbx.ok(&["reap"]).contains("nothing to reap"));
    assert_each_analysis_ran_once(&sbx, &file, 4);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs WHERE stage='analysis' AND adopted=1 AND runner='supervisor'"),
        4,
        "every run was adopted, and says which runner ran it"
    );
    let why = sbx.ok(&["task", "show", "1"]);
    assert!(
        why.contains("supervisor") && why.contains("adopted"),
        "{why}"
    );
}

#[test]
fn an_orch_binary_replaced_mid_run_and_its_worker_killed_leaves_the_run_to_finish_once() {
    let (sbx, file) = sandbox();
    sbx.add_issue("upgraded under it");
    let bin_dir = sbx.dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("orch");
    std::fs::copy(env!("CARGO_BIN_EXE_orch"), &bin).unwrap();
    let mut worker = sbx
        .orch_at(&bin)
        .args(["work-once"])
        .env("FAKE_AGENT_SLEEP", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(30, "the detached run started", || {
        detached_running(&sbx) == 1
    });
    // The upgrade: a new binary renamed over the old one, then the old
    // worker killed.
    let new = bin_dir.join("orch.new");
    std::fs::copy(env!("CARGO_BIN_EXE_orch"), &new).unwrap();
    std::fs::rename(&new, &bin).unwrap();
    kill9(worker.id());
    worker.wait().unwrap();
    let agent = starts(&file)[0];
    assert!(pid_alive(agent), "the run goes on through the upgrade");

    // The new binary's ticks finish it.
    wait_until(30, "the run's exit record", || {
        exit_record(&sbx, 1).exists()
    });
    let out = sbx.orch_at(&bin).args(["--json", "reap"]).output().unwrap();
    assert!(out.status.success());
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["actions"][0]["action"], "adopt", "{done}");
    assert_each_analysis_ran_once(&sbx, &file, 1);
}

/// Under bubblewrap the run's end carries the clone view over: the
/// adopter reads it from the run's spec.
#[test]
fn a_sandboxed_run_adopted_by_the_reaper_has_its_work_pushed() {
    let mut sbx = Sandbox::new_in(Path::new("/var/tmp/orch-tests"));
    sbx.set("ORCH_REAPER_FINALIZE_GRACE_S", "0")
        .set("ORCH_AGENT_SANDBOX", "bwrap");
    sbx.add_issue("sandboxed");
    run_outliving_its_watcher(&sbx, "2");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sbx.state_dir().join("logs/job1-e1.spec")).unwrap())
            .unwrap();
    assert_eq!(spec["run"]["argv"][0], "bwrap", "{spec}");
    assert!(spec["facts"]["clone_view"].is_object(), "{spec}");
    let done = sbx.json(&["reap"]);
    assert_eq!(
        done["actions"][0]["result"], "adopted (agent exited 0): advanced analysis → architecture",
        "{done}"
    );
    let analysis = sbx.origin_git(&["show", "orch/widget-1:docs/work-items/1/analysis.md"]);
    assert!(
        !analysis.is_empty(),
        "the adopted run's work reached origin"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs WHERE adopted=1 AND runner='supervisor'"),
        1
    );
    sbx.check_invariants();
}

#[test]
fn sigterm_to_a_worker_leaves_its_detached_run_going_and_a_later_tick_adopts_it() {
    use std::os::unix::process::ExitStatusExt;
    let (sbx, file) = sandbox();
    sbx.add_issue("worker stopped");
    let worker = sbx.spawn(&["work-once"], &[("FAKE_AGENT_SLEEP", "2")]);
    wait_until(30, "the detached run started", || {
        detached_running(&sbx) == 1
    });
    // SAFETY: kill(2) on the worker we spawned.
    assert_eq!(unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) }, 0);
    let out = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{stderr}");
    assert!(
        stderr.contains("leaving the detached run alone"),
        "{stderr}"
    );
    assert!(pid_alive(starts(&file)[0]), "the agent goes on");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running' AND attempt=1"),
        1,
        "no requeue"
    );
    // The next worker adopts it (watching it to its end) before claiming.
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    assert_each_analysis_ran_once(&sbx, &file, 1);
    let why = sbx.ok(&["why", "1"]);
    assert!(why.contains("adopted"), "{why}");
}

#[test]
fn a_detached_run_past_its_timeout_with_no_watcher_is_stopped_and_recovered() {
    let (mut sbx, file) = sandbox();
    sbx.add_issue("runs away");
    let mut worker = sbx.spawn(
        &["work-once"],
        &[("FAKE_AGENT_MODE_ANALYST", "hang-with-child")],
    );
    wait_until(30, "the run and its child started", || {
        detached_running(&sbx) == 1 && starts(&file).len() == 2
    });
    kill9(worker.id());
    worker.wait().unwrap();
    let handle: String = sbx
        .db()
        .query_row("SELECT run_handle FROM jobs WHERE id=1", [], |r| r.get(0))
        .unwrap();
    let supervisor: i32 = handle.split(':').next().unwrap().parse().unwrap();
    assert!(pid_alive(supervisor));
    // The reaper's clock is past the timeout (120 s) + grace + 60 s.
    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "300000");
    let plan = sbx.json(&["reap", "--dry-run"]);
    assert_eq!(plan["actions"][0]["action"], "timeout", "{plan}");
    let done = sbx.json(&["reap"]);
    assert!(
        done["actions"][0]["result"]
            .as_str()
            .unwrap()
            .starts_with("requeued for attempt 2"),
        "{done}"
    );
    for pid in starts(&file).into_iter().chain([supervisor]) {
        wait_until(
            10,
            "the supervisor, its agent and the agent's child gone",
            || !pid_alive(pid),
        );
    }
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs"),
        0,
        "the stopped run is not recorded"
    );
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    sbx.check_invariants();
}

/// `systemctl stop` of a unit whose cgroup holds the supervisor (the
/// supervisor runner under systemd) stops the run as it stops a child
/// run: the job is requeued without counting the attempt.
#[test]
fn sigterm_to_a_runs_supervisor_requeues_the_job_without_counting_the_attempt() {
    let (sbx, file) = sandbox();
    sbx.add_issue("supervisor stopped");
    let worker = sbx.spawn(
        &["--json", "work-once"],
        &[("FAKE_AGENT_MODE_ANALYST", "hang")],
    );
    wait_until(30, "the detached run started", || {
        detached_running(&sbx) == 1 && starts(&file).len() == 1
    });
    let handle: String = sbx
        .db()
        .query_row("SELECT run_handle FROM jobs WHERE id=1", [], |r| r.get(0))
        .unwrap();
    let supervisor: i32 = handle.split(':').next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on the supervisor this test's worker started.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGTERM) }, 0);
    let out = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped by SIGTERM: agent's process group stopped; job requeued without counting the attempt"),
        "{stderr}"
    );
    assert!(!pid_alive(starts(&file)[0]), "the agent was stopped");
    let (status, error, free): (String, String, i64) = sbx
        .db()
        .query_row(
            "SELECT status, last_error, free_attempts FROM jobs WHERE id=1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(status, "queued");
    assert!(
        error.starts_with("stopped by SIGTERM: the run's supervisor was stopped"),
        "{error}"
    );
    assert_eq!(free, 1, "the attempt is not counted");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    sbx.check_invariants();
}

/// A crash at every point between the agent's exit and the job's
/// finalize, in the supervisor or in the adopter: the job ends done once,
/// its agent ran once — except when the supervisor itself died before
/// writing the exit record: that run is dead (Tier-1 recovers it, the
/// agent runs again) — and the invariants hold.
#[test]
fn a_crash_anywhere_on_the_adoption_path_ends_the_job_done_once() {
    // (point, who crashes, agent starts expected)
    let cases = [
        ("supervisor.after_agent_exit", "supervisor", 2),
        ("supervisor.after_exit_record", "supervisor", 1),
        ("adopt.after_claim", "reap", 1),
        ("adopt.after_record", "reap", 1),
        ("adopt.before_finalize", "reap", 1),
        ("adopt.after_claim", "work-once", 1),
        ("adopt.after_record", "work-once", 1),
        ("adopt.before_finalize", "work-once", 1),
    ];
    for (point, who, runs) in cases {
        let (sbx, file) = sandbox();
        sbx.add_issue(point);
        let failpoint = format!("{point}=return");
        if who == "supervisor" {
            // The worker's supervisor inherits FAILPOINTS.
            let out = sbx
                .orch()
                .args(["work-once"])
                .env("FAILPOINTS", &failpoint)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{point}: the worker lives: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            run_outliving_its_watcher(&sbx, "1");
            let out = sbx
                .orch()
                .args([who])
                .env("FAILPOINTS", &failpoint)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                None,
                "{point} in {who}: killed by the failpoint: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for _ in 0..5 {
            if sbx.count("SELECT COUNT(*) FROM tasks WHERE stage='architecture'") == 1 {
                break;
            }
            sbx.ok(&["reap"]);
            sbx.ok(&["work-once", "--role", "analyst"]);
        }
        assert_eq!(sbx.stage(1), "architecture", "{point} in {who}");
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM transitions WHERE to_stage='architecture'"),
            1,
            "{point} in {who}: advanced once"
        );
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM agent_runs"),
            1,
            "{point} in {who}: one recorded run"
        );
        assert_eq!(starts(&file).len(), runs, "{point} in {who}: agent starts");
        assert_eq!(
            sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running'"),
            0,
            "{point} in {who}"
        );
        sbx.check_invariants();
    }
}

/// A detached run's supervisor heartbeats its job (DESIGN §10 "Hosts"):
/// with its watcher killed -9, the job's heartbeat stays fresh while the
/// agent runs, so another host's reaper — which judges the job by its
/// heartbeat alone — leaves it running; once the agent ended, this host
/// adopts the run and the job is done once. The supervisor's spec names
/// the database, the claim and the interval.
#[test]
fn a_detached_run_whose_watcher_died_keeps_a_fresh_heartbeat_while_it_runs() {
    let (mut sbx, file) = sandbox();
    sbx.set("ORCH_HEARTBEAT_S", "1");
    sbx.add_issue("heartbeats");
    let mut worker = sbx.spawn(&["work-once"], &[("FAKE_AGENT_SLEEP", "6")]);
    wait_until(30, "the detached run started", || {
        detached_running(&sbx) == 1
    });
    kill9(worker.id());
    worker.wait().unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sbx.state_dir().join("logs/job1-e1.spec")).unwrap())
            .unwrap();
    assert_eq!(spec["heartbeat"]["every_ms"], 1000, "{spec}");
    assert_eq!(
        spec["heartbeat"]["db"],
        sbx.db_path().to_str().unwrap(),
        "{spec}"
    );
    let beat = || sbx.count("SELECT heartbeat_at_ms FROM jobs WHERE id=1");
    let killed_at = orch::clock::now_ms();
    wait_until(5, "a heartbeat after the watcher died", || {
        beat() > killed_at
    });
    let later = beat();
    wait_until(5, "the next heartbeat", || beat() > later);
    // Host b's reaper: a heartbeat younger than 2 s is a live worker.
    let reap_on_b = || {
        let out = sbx
            .orch()
            .args(["--json", "reap"])
            .envs([("ORCH_HOST_ID", "host-b"), ("ORCH_HEARTBEAT_STALE_S", "2")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out
    };
    reap_on_b();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let out = reap_on_b();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["actions"], serde_json::json!([]), "{v}");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE id=1 AND status='running' AND epoch=1"),
        1,
        "the run goes on, not recovered"
    );
    wait_until(30, "the run's exit record", || {
        exit_record(&sbx, 1).exists()
    });
    let done = sbx.json(&["reap"]);
    assert_eq!(
        done["actions"][0]["result"], "adopted (agent exited 0): advanced analysis → architecture",
        "{done}"
    );
    assert_each_analysis_ran_once(&sbx, &file, 1);
    let log = std::fs::read_to_string(sbx.state_dir().join("logs/job1-e1.runner.log")).unwrap();
    assert!(!log.contains("cannot write the job's heartbeat"), "{log}");
}
