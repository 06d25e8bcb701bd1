//! INV-10's fence (issue 24): a run orch gave up on cannot act. Every
//! effect of a job's run outside the database carries its claim's epoch
//! and is conditional on it; a stale epoch changes nothing anywhere.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// Sends `sig` to process `pid` (and, when `group`, to its group).
fn signal(pid: i32, sig: i32, group: bool) {
    let target = if group { -pid } else { pid };
    assert_eq!(
        unsafe { libc::kill(target, sig) },
        0,
        "kill({target}, {sig})"
    );
}

/// `git ARGS` in `dir` → trimmed stdout (an empty string when git fails).
fn git_at(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The zombie: a development run claimed under host `a` is stopped
/// (SIGSTOP: the worker and the agent's process group, a partition as one
/// machine can play it); host `b`'s reaper declares it dead once its
/// heartbeat is stale — killing nothing there — and requeues it; host
/// `b`'s worker runs the job (in a worktree of its own: the old run's is
/// still held) and the task on to done. Then the old ones wake: the old
/// agent finishes its work and the old worker tries to finalize. Nothing
/// of the old epoch reaches anything: no commit (branch, reflog), push,
/// comment, merge or transition; the branch and main are exactly what the
/// new epoch made; the refusal is recorded and `orch why` shows it.
#[test]
fn a_zombie_epoch_that_wakes_after_its_job_was_run_again_changes_nothing() {
    let mut sbx = Sandbox::new_in(Path::new("/var/tmp/orch-tests"));
    let sandbox = if orch::process::bwrap_usable().is_ok() {
        "bwrap"
    } else {
        eprintln!("bubblewrap does not work here: the agent runs unconfined");
        "none"
    };
    sbx.set("ORCH_AGENT_SANDBOX", sandbox)
        .set("ORCH_HOST_ID", "b")
        .set("FAKE_AGENT_DEV_LINE", "new epoch line");
    let task = sbx.add_issue("zombie");
    for stage in ["analysis", "architecture"] {
        let v = sbx.json(&["work-once"]);
        assert_eq!(v["finalized"]["action"], "advanced", "{stage}: {v}");
    }
    assert_eq!(sbx.stage(task), "development");
    let job = sbx.count("SELECT id FROM jobs WHERE stage='development'");
    let first_worktree = sbx.worktree(task);

    // Host a claims the development job; its agent waits at the gate.
    let gate = sbx.dir.join("old-agent-may-go");
    let mut old = sbx
        .orch_std()
        .args(["--json", "work-once"])
        .envs([
            ("ORCH_HOST_ID", "a"),
            ("FAKE_AGENT_WAIT_FOR", gate.to_str().unwrap()),
            ("FAKE_AGENT_DEV_LINE", "old epoch line"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = format!(
        "SELECT COUNT(*) FROM jobs WHERE id={job} AND status='running' AND agent_pid IS NOT NULL"
    );
    wait_until(30, "the old epoch's agent to start", || {
        sbx.count(&running) == 1
    });
    assert_eq!(
        sbx.count(&format!("SELECT epoch FROM jobs WHERE id={job}")),
        1
    );
    let agent = sbx.count(&format!("SELECT agent_pid FROM jobs WHERE id={job}")) as i32;
    let worker = old.id() as i32;
    signal(worker, libc::SIGSTOP, false);
    signal(agent, libc::SIGSTOP, true);

    // Host b's reaper: the heartbeat goes stale, the job is requeued; the
    // processes of host a are not its to kill.
    let queued = format!("SELECT COUNT(*) FROM jobs WHERE id={job} AND status='queued'");
    wait_until(30, "host b's reaper to requeue the job", || {
        let out = sbx
            .orch()
            .args(["reap"])
            .env("ORCH_HEARTBEAT_STALE_S", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        sbx.count(&queued) == 1
    });
    assert!(
        pid_alive(worker) && pid_alive(agent),
        "the reaper kills nothing on another host"
    );

    // Host b runs the job (a new epoch) and the task on.
    sbx.tick_until(40, |s| s.stage(task) == "done");
    assert_eq!(
        sbx.count(&format!("SELECT epoch FROM jobs WHERE id={job}")),
        2
    );
    let worktree = sbx.worktree(task);
    assert_ne!(
        worktree, first_worktree,
        "the new epoch does not share the worktree the old run may still write"
    );
    let origin = sbx.origin();
    let branch = format!("orch/widget-{task}");
    let main_after_new = git_at(&origin, &["rev-parse", "main"]);
    let branch_after_new = git_at(&origin, &["rev-parse", &branch]);
    let counts = |sbx: &Sandbox| {
        [
            "transitions",
            "outbox",
            "agent_runs",
            "verdicts",
            "branch_heads",
        ]
        .map(|t| sbx.count(&format!("SELECT COUNT(*) FROM {t}")))
    };
    let before_wake = counts(&sbx);

    // The old ones wake: the agent does its work, the worker finalizes.
    signal(agent, libc::SIGCONT, true);
    signal(worker, libc::SIGCONT, false);
    std::fs::write(&gate, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = old.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the old worker did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |pipe: &mut dyn std::io::Read| {
        let mut s = String::new();
        pipe.read_to_string(&mut s).unwrap();
        s
    };
    let stderr = read(&mut old.stderr.take().unwrap());
    let stdout = read(&mut old.stdout.take().unwrap());
    assert!(status.success(), "{stderr}");
    let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(outcome["finalized"]["action"], "refused", "{outcome}");
    // Whatever the old epoch left is delivered, if it can be, and
    // reaped.
    sbx.ok(&["tick"]);

    // The task's worktree has nothing of the old run.
    assert_eq!(git_at(&worktree, &["status", "--porcelain"]), "");
    let changes = std::fs::read_to_string(worktree.join("CHANGES.md")).unwrap();
    assert!(
        changes.contains("new epoch line") && !changes.contains("old epoch line"),
        "{changes}"
    );
    // 0 commits of the old epoch: not on origin, not in the clone (its
    // branches, their reflogs).
    let clone = sbx.state_dir().join("repos/widget");
    for (repo, what) in [(&origin, "origin"), (&clone, "the shared clone")] {
        let old_commits = git_at(
            repo,
            &[
                "log",
                "--all",
                "--reflog",
                "-G",
                "old epoch line",
                "--format=%H",
            ],
        );
        assert_eq!(old_commits, "", "a commit of the old epoch in {what}");
    }
    // The branch and main are exactly what the new epoch made.
    assert_eq!(git_at(&origin, &["rev-parse", "main"]), main_after_new);
    assert_eq!(git_at(&origin, &["rev-parse", &branch]), branch_after_new);
    let main_changes = git_at(&origin, &["show", "main:CHANGES.md"]);
    assert_eq!(main_changes.matches("new epoch line").count(), 1);
    // No transition, comment, run, verdict or push of the old epoch.
    let mut after = counts(&sbx);
    assert_eq!(
        after[0..1],
        before_wake[0..1],
        "transitions (the tick after moved nothing)"
    );
    after[1] = sbx.count(&format!(
        "SELECT COUNT(*) FROM outbox WHERE job_id={job} AND job_epoch=1"
    ));
    assert_eq!(after[1], 0, "no message of the old epoch");
    assert_eq!(after[2..], before_wake[2..], "runs, verdicts, pushes");

    // The refusal: recorded, counted, logged, shown.
    let refused = format!("job {job} epoch 1: finalize refused, epoch 2 finished it (done)");
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM fence_refusals WHERE job_id={job} AND epoch=1 AND current_epoch=2"
        )),
        1
    );
    assert!(
        stderr.contains(&refused) && stderr.contains("fence"),
        "{stderr}"
    );
    let why = sbx.ok(&["why", &task.to_string()]);
    assert!(why.contains(&refused), "{why}");
    assert!(
        why.contains(&format!(
            "job {job} development (developer) done, epoch 2 on host b"
        )),
        "{why}"
    );
    let show = sbx.ok(&["task", "show", &task.to_string()]);
    assert!(
        show.contains(&refused) && show.contains("epoch 2"),
        "{show}"
    );
    assert!(
        sbx.ok(&["metrics"]).contains("orch_fence_refused_total 1"),
        "the refusal is counted"
    );
    // The old run's worktree is removed once its run is over.
    assert!(!first_worktree.exists(), "{}", first_worktree.display());
    sbx.check_invariants();
}

/// The push carries the claim's lease: origin's branch as the run started
/// (here: none). A branch someone else (another epoch) pushed since is
/// never overwritten: the push is refused, recorded and the job fails at
/// once, never retried. And a finalize under a stale epoch (the reaper's
/// Tier-2 planned on an epoch the job has left) is refused before it
/// touches anything.
#[cfg(feature = "testing")]
#[test]
fn a_push_whose_branch_moved_since_the_claim_is_refused_and_never_retried() {
    use orch::pipeline::job::Finalized;
    let sbx = Sandbox::new();
    let task = sbx.add_issue("leased");
    sbx.work_once_dying_after_the_exit();
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE id=1 AND claim_sha=''"),
        1,
        "origin had no branch when the run started"
    );
    let branch = format!("orch/widget-{task}");
    sbx.origin_git(&["branch", &branch, "main"]);
    let theirs = sbx.origin_git(&["rev-parse", &branch]);
    let ctx = sbx.ctx();
    let db = ctx.open_db().unwrap();
    let reaper = orch::pipeline::Actor::Reaper;

    // A stale epoch: refused before any effect.
    let stale = orch::worker::finalize(&ctx, &db, 1, 7, reaper).unwrap();
    assert!(
        matches!(&stale, Finalized::Refused { reason } if reason == "job 1 epoch 7: finalize refused, epoch 1 holds the job"),
        "{stale:?}"
    );
    // The claim's own epoch: the lease refuses the push.
    let out = orch::worker::finalize(&ctx, &db, 1, 1, reaper).unwrap();
    let Finalized::Failed { reason } = &out else {
        panic!("{out:?}")
    };
    assert!(
        reason.contains("push refused, origin's orch/widget-1 moved since the claim (absent → "),
        "{reason}"
    );
    assert_eq!(
        sbx.origin_git(&["rev-parse", &branch]),
        theirs,
        "not overwritten"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE id=1 AND status='failed'"),
        1,
        "failed at once"
    );
    let effects: Vec<String> = db
        .fence_refusals(task)
        .unwrap()
        .into_iter()
        .map(|r| r.effect)
        .collect();
    assert_eq!(effects, ["finalize", "push"]);
    assert!(sbx.ok(&["metrics"]).contains("orch_fence_refused_total 2"));
    sbx.check_invariants();
}

/// A run's report is queued only by a claim that holds, in the
/// transaction that ends it; so a valid report queued before a requeue is
/// sent even after the next claim (epoch 2) holds the job: the tracker
/// hears why attempt 1 failed. And a row naming an epoch the job never
/// reached (only a hand-edited database holds one) is never sent: a dead
/// letter naming both epochs, the refusal recorded.
#[test]
fn a_report_queued_before_a_requeue_is_sent_and_one_of_an_unknown_epoch_never() {
    // Outside /tmp: the agent's gate file must be visible in its sandbox.
    let sbx = Sandbox::new_in(Path::new("/var/tmp/orch-tests"));
    let task = sbx.add_issue("two claims");
    let v = sbx
        .orch()
        .args(["--json", "work-once"])
        .env("FAKE_AGENT_MODE_ANALYST", "fail")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["finalized"]["action"], "retrying", "{v}");
    let row = |key: &str, what: &str| -> String {
        sbx.db()
            .query_row(
                &format!("SELECT {what} FROM outbox WHERE dedupe_key=?1"),
                [key],
                |r| r.get(0),
            )
            .unwrap()
    };
    let first = format!("task:{task}:job1:a1:e1:report");
    assert_eq!(row(&first, "status"), "pending");
    // The next claim (epoch 2) holds the job while the report waits.
    let gate = sbx.dir.join("go");
    let mut second = sbx.spawn(
        &["work-once"],
        &[("FAKE_AGENT_WAIT_FOR", gate.to_str().unwrap())],
    );
    wait_until(30, "epoch 2 to run", || {
        sbx.count("SELECT COUNT(*) FROM jobs WHERE id=1 AND status='running' AND epoch=2") == 1
    });
    sbx.ok(&["deliver"]);
    assert_eq!(
        row(&first, "status"),
        "delivered",
        "epoch 1's report was queued by a held claim: sent after the job moved on"
    );
    assert!(
        row(&first, "payload").contains("failed"),
        "it tells why attempt 1 failed"
    );
    std::fs::write(&gate, "").unwrap();
    assert!(second.wait().unwrap().success());
    assert_eq!(sbx.stage(task), "architecture", "epoch 2's run passed");

    // A row of an epoch job 1 never reached: never sent.
    let second_key = format!("task:{task}:job1:a2:e2:report");
    sbx.db()
        .execute(
            "UPDATE outbox SET job_epoch=9 WHERE dedupe_key=?1",
            [&second_key],
        )
        .unwrap();
    sbx.ok(&["deliver"]);
    assert_eq!(row(&second_key, "status"), "dead");
    assert_eq!(
        row(&second_key, "last_error"),
        "unknown epoch: job 1 is at epoch 2, row of epoch 9"
    );
    let why = sbx.ok(&["why", &task.to_string()]);
    assert!(
        why.contains("unknown epoch: job 1 is at epoch 2, row of epoch 9"),
        "{why}"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM fence_refusals WHERE job_id=1 AND epoch=9"),
        1
    );
}

/// A stale claim cannot queue its run's report: `outbox::queue` checks,
/// in the writing transaction, that the job is at the claim's epoch and
/// running (or ended by that very transaction). Refused: nothing written,
/// and the caller records the fence's refusal.
#[cfg(feature = "testing")]
#[test]
fn a_stale_claim_cannot_queue_its_run_report() {
    use orch::outbox::{self, Occasion, TrackerComment};
    let sbx = Sandbox::new();
    let task = sbx.add_issue("stale queue");
    sbx.work_once_dying_after_the_exit();
    let ctx = sbx.ctx();
    let db = ctx.open_db().unwrap();
    let report: outbox::Message = TrackerComment {
        text: "analyst run: failed".into(),
        report: None,
    }
    .into();
    let on = |epoch: i64| Occasion::Run {
        task_id: task,
        job_id: 1,
        run: 1,
        epoch,
    };
    // Epoch 1 holds the job (running): its report may be queued.
    let held = db.rehearse(|tx| outbox::queue(tx, &on(1), &report, 1));
    assert!(held.unwrap(), "a held claim queues");
    // Epoch 7 was never this job's; epoch 1 taken back (requeued by the
    // reaper, the same epoch but not running) holds no more either.
    for (epoch, requeue) in [(7, false), (1, true)] {
        if requeue {
            sbx.db()
                .execute("UPDATE jobs SET status='queued' WHERE id=1", [])
                .unwrap();
        }
        let err = db
            .write(|tx| outbox::queue(tx, &on(epoch), &report, 1))
            .unwrap_err();
        let n = err.downcast_ref::<outbox::NotHeld>().expect("NotHeld");
        assert_eq!((n.job_id, n.epoch), (1, epoch));
        assert_eq!(
            err.to_string(),
            format!("job 1 epoch {epoch}: outbox tracker/comment refused, the claim does not hold")
        );
        let reason = orch::fence::refuse_not_held(&db, &err).unwrap().unwrap();
        assert!(
            reason.starts_with(&format!(
                "job 1 epoch {epoch}: outbox tracker/comment refused, "
            )),
            "{reason}"
        );
    }
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM outbox WHERE job_id IS NOT NULL"),
        0,
        "nothing queued"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM fence_refusals WHERE effect='outbox tracker/comment'"),
        2
    );
}

/// Every host that runs `work-once`, `tick` or `reap` against the store
/// has a `hosts` row, refreshed (not duplicated) each time, and `orch
/// status` lists each with its age; a dry run records nothing.
#[test]
fn status_lists_each_host_that_ran_with_its_age() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let as_host = |host: &str, args: &[&str]| {
        let out = sbx
            .orch()
            .args(args)
            .env("ORCH_HOST_ID", host)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} on {host}: {out:?}");
    };
    as_host("dry", &["reap", "--dry-run"]);
    as_host("dry", &["tick", "--dry-run"]);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM hosts"), 0);
    as_host("host-a", &["work-once"]);
    as_host("host-b", &["reap"]);
    as_host("host-a", &["tick"]);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM hosts"), 2);
    let v = sbx.json(&["status"]);
    let hosts = v["hosts"].as_array().unwrap();
    let ids: Vec<&str> = hosts.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["host-a", "host-b"], "{v}");
    for h in hosts {
        assert!(h["age_s"].as_i64().unwrap() < 60, "{h}");
        assert_eq!(h["version"], env!("CARGO_PKG_VERSION"), "{h}");
        assert_eq!(h["boot_id"], orch::process::boot_id(), "{h}");
    }
    let text = sbx.ok(&["status"]);
    assert!(
        text.contains(&format!("host host-a (orch {})", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}
