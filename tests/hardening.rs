//! Issue 12: nothing an agent writes runs with orch's privileges, and no
//! set-up mistake leaves a job running for ever (bounded recovery, each
//! cause named, one escalation, `orch check` clean afterwards).

use crate::util::*;

/// Replaces `from` with `to` in the sandbox config.
fn edit_config(sbx: &Sandbox, from: &str, to: &str) {
    let p = sbx.dir.join("orch.toml");
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains(from), "config has no {from:?}");
    std::fs::write(p, s.replace(from, to)).unwrap();
}

/// The task's escalation reason, and how many escalation notifications
/// were queued.
fn escalation(sbx: &Sandbox, task: i64) -> (Option<String>, i64) {
    let reason = sbx
        .db()
        .query_row(
            "SELECT escalated_reason FROM tasks WHERE id=?1 AND escalated=1",
            [task],
            |r| r.get(0),
        )
        .ok();
    let n = sbx.count(&format!(
        "SELECT COUNT(*) FROM outbox WHERE task_id={task} AND kind='escalated'"
    ));
    (reason, n)
}

/// Runs `work-once` `n` times (each may exit non-zero), then one reap.
fn work(sbx: &Sandbox, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|_| {
            let out = sbx.orch().args(["--json", "work-once"]).output().unwrap();
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
        })
        .collect()
}

#[test]
fn a_missing_default_branch_fails_the_job_at_the_attempt_cap_naming_it() {
    let mut sbx = Sandbox::new();
    edit_config(
        &sbx,
        "default_branch = \"main\"",
        "default_branch = \"trunk\"",
    );
    sbx.set("ORCH_JOB_MAX_ATTEMPTS", "2");
    sbx.add_issue("no trunk");
    let runs = work(&sbx, 3);
    assert_eq!(runs[0]["finalized"]["action"], "retrying", "{runs:?}");
    assert_eq!(runs[1]["finalized"]["action"], "failed", "{runs:?}");
    assert_eq!(runs[2]["result"], "idle", "{runs:?}");
    let (reason, notes) = escalation(&sbx, 1);
    let reason = reason.expect("task escalated");
    assert!(
        reason.contains("set-up failed")
            && reason.contains("origin has no default branch \"trunk\""),
        "{reason}"
    );
    assert_eq!(notes, 1, "one notification");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running'"),
        0
    );
    sbx.ok(&["reap"]);
    sbx.check_invariants();
}

#[test]
fn an_unreachable_clone_url_is_named_and_ends_the_job() {
    let mut sbx = Sandbox::new();
    let origin = sbx.origin();
    let origin = origin.to_str().unwrap();
    edit_config(
        &sbx,
        &format!("clone_url = \"{origin}\""),
        "clone_url = \"https://orch:s3cret@127.0.0.1:9/none.git\"",
    );
    sbx.set("ORCH_JOB_MAX_ATTEMPTS", "1");
    sbx.add_issue("nowhere");
    let runs = work(&sbx, 1);
    assert_eq!(runs[0]["finalized"]["action"], "failed", "{runs:?}");
    let (reason, notes) = escalation(&sbx, 1);
    let reason = reason.unwrap();
    assert!(
        reason.contains("cannot fetch from clone_url https://***@127.0.0.1:9/none.git"),
        "{reason}"
    );
    assert!(
        !reason.contains("s3cret"),
        "the password stays out: {reason}"
    );
    assert_eq!(notes, 1);
    sbx.check_invariants();
}

#[test]
fn a_push_origin_refuses_fails_finalize_at_its_cap_and_reap_leaves_nothing_running() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_FINALIZE_MAX_ATTEMPTS", "2")
        .set("ORCH_REAPER_FINALIZE_GRACE_S", "600");
    sbx.add_issue("cannot push");
    // analysis, architecture advance; then origin cannot update the task
    // branch (a stale ref lock there), so development's finalize fails at
    // its push, after the agent ran.
    let runs = work(&sbx, 2);
    assert_eq!(runs[1]["finalized"]["to"], "development", "{runs:?}");
    let lock = sbx.origin().join("refs/heads/orch/widget-1.lock");
    std::fs::write(&lock, "").unwrap();
    work(&sbx, 1);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='running'"),
        1
    );
    let job: i64 = sbx
        .db()
        .query_row("SELECT id FROM jobs WHERE status='running'", [], |r| {
            r.get(0)
        })
        .unwrap();
    // Nothing runs for it: every reader says its finalize failed, why,
    // and when the reaper retries it — not "running".
    let cannot = "cannot lock ref 'refs/heads/orch/widget-1'";
    let status = sbx.json(&["status"]);
    assert_eq!(status["running"], serde_json::json!([]), "{status}");
    assert_eq!(status["jobs"]["finalize_failed"], 1, "{status}");
    assert!(status["jobs"].get("running").is_none(), "{status}");
    let stalled = &status["finalize_failed"][0];
    assert_eq!(stalled["job_id"], job);
    assert_eq!(
        (&stalled["failures"], &stalled["max_attempts"]),
        (&1.into(), &2.into())
    );
    assert!(
        stalled["error"].as_str().unwrap().contains(cannot),
        "{stalled}"
    );
    let text = sbx.ok(&["status"]);
    let line = text
        .lines()
        .find(|l| l.contains("FINALIZE FAILED"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&format!("job {job} task 1 development attempt 1"))
            && line.contains(cannot)
            && line.contains("the reaper retries it in 9 min (finalize 1 of 2 failed)"),
        "{line}"
    );
    assert!(!text.contains("running job"), "{text}");
    let why = sbx.json(&["why", "1"]);
    assert_eq!(why["waiting"]["kind"], "finalize_failed", "{why}");
    let why = sbx.ok(&["why", "1"]);
    assert!(
        why.contains(&format!(
            "waits for: the reaper: job {job} (developer, attempt 1) exited"
        )) && why.contains(cannot)
            && why.contains("the reaper retries it in 9 min"),
        "{why}"
    );
    let show = sbx.ok(&["task", "show", "1"]);
    let next = show.lines().find(|l| l.starts_with("next: ")).unwrap();
    assert!(
        next.contains(&format!("job {job}'s agent exited but its finalize failed"))
            && next.contains(cannot)
            && next.contains("the reaper retries it in 9 min"),
        "{next}"
    );
    let metrics = sbx.ok(&["metrics"]);
    assert!(
        metrics.contains("\norch_jobs{status=\"finalize_failed\"} 1\n")
            && !metrics.contains("orch_jobs{status=\"running\"}")
            && metrics.contains("\norch_agents_running 0\n"),
        "{metrics}"
    );
    let check = sbx.orch().args(["check"]).output().unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains("its agent exited and its finalize failed") && check.contains(cannot),
        "{check}"
    );
    assert!(
        sbx.ok(&["reap"]).contains("nothing to reap"),
        "inside the grace"
    );
    sbx.set("ORCH_REAPER_FINALIZE_GRACE_S", "0");
    assert!(
        sbx.ok(&["status"])
            .contains("the reaper retries it at its next pass"),
        "past the grace"
    );
    let reaped = sbx.json(&["reap"]);
    let result = reaped["actions"][0]["result"].as_str().unwrap().to_string();
    assert!(result.starts_with("job failed, task escalated"), "{reaped}");
    let (reason, notes) = escalation(&sbx, 1);
    let reason = reason.unwrap();
    assert!(
        reason.contains("could not be finished after 2 attempts") && reason.contains(cannot),
        "{reason}"
    );
    assert_eq!(notes, 1);
    assert!(sbx.ok(&["reap"]).contains("nothing to reap"));
    sbx.check_invariants();
}

#[test]
fn an_unstartable_test_command_escalates_its_task_once_in_the_ci_step_and_ticks_go_on() {
    let sbx = Sandbox::new();
    edit_config(
        &sbx,
        "test_command = [\"sh\", \"test.sh\"]",
        "test_command = [\"/nonexistent/run-tests\"]",
    );
    sbx.add_issue("no tests");
    // analysis, architecture advance; the development run ends waiting for
    // CI (its finalize runs no test).
    let runs = work(&sbx, 3);
    assert_eq!(runs[2]["finalized"]["action"], "waiting", "{runs:?}");
    let why = sbx.ok(&["why", "1"]);
    assert!(why.contains("waits for: CI of"), "{why}");

    let pass = sbx.json(&["ci"]);
    let run = &pass["runs"][0];
    assert_eq!(run["state"], "error", "{pass}");
    let cannot = "test command [\"/nonexistent/run-tests\"] cannot be started";
    let (reason, notes) = escalation(&sbx, 1);
    let reason = reason.unwrap_or_default();
    assert!(
        reason.starts_with("CI cannot run on ") && reason.contains(cannot),
        "{reason}"
    );
    assert_eq!(notes, 1);
    assert_eq!(sbx.stage(1), "development");
    // Nothing waits for CI any more: later passes and ticks do nothing.
    assert_eq!(sbx.json(&["ci"])["runs"], serde_json::json!([]));
    let transitions = sbx.count("SELECT COUNT(*) FROM transitions");
    sbx.ok(&["tick"]);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM transitions"), transitions);
    assert_eq!(escalation(&sbx, 1).1, 1, "one notification");
    sbx.check_invariants();
}

#[test]
fn a_program_key_planted_in_the_shared_clone_fails_the_job_at_once_and_check_names_it() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_JOB_MAX_ATTEMPTS", "3");
    sbx.add_issue("planted");
    let runs = work(&sbx, 1);
    assert_eq!(runs[0]["finalized"]["to"], "architecture", "{runs:?}");
    let marker = sbx.dir.join("fsmonitor-ran");
    let prog = sbx.dir.join("fsmon");
    std::fs::write(
        &prog,
        format!("#!/bin/sh\necho ran >> '{}'\n", marker.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", prog.to_str().unwrap()])
        .status()
        .unwrap();
    let clone = sbx.dir.join("state/repos/widget");
    git_in(
        &clone,
        &["config", "core.fsmonitor", prog.to_str().unwrap()],
    );
    let runs = work(&sbx, 1);
    assert_eq!(
        runs[0]["finalized"]["action"], "failed",
        "at once: {runs:?}"
    );
    let (reason, notes) = escalation(&sbx, 1);
    let reason = reason.unwrap();
    assert!(
        reason.contains("cannot run")
            && reason.contains("core.fsmonitor")
            && reason.contains("refusing to run git"),
        "{reason}"
    );
    assert_eq!(notes, 1);
    assert!(!marker.exists(), "the fsmonitor never ran");
    let out = sbx.orch().args(["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("VIOLATED secrets") && text.contains("core.fsmonitor"),
        "{text}"
    );
    git_in(&clone, &["config", "--unset", "core.fsmonitor"]);
    sbx.check_invariants();
}

#[test]
fn bad_test_command_or_default_branch_exits_2_naming_the_key() {
    let sbx = Sandbox::new();
    edit_config(
        &sbx,
        "default_branch = \"main\"",
        "default_branch = \"orch/main\"",
    );
    let out = sbx.orch().args(["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("projects[0].default_branch"), "{err}");
    edit_config(
        &sbx,
        "default_branch = \"orch/main\"",
        "default_branch = \"main\"",
    );
    edit_config(
        &sbx,
        "test_command = [\"sh\", \"test.sh\"]",
        "test_command = [\"\"]",
    );
    let out = sbx.orch().args(["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("projects[0].test_command: must name a program"),
        "{err}"
    );
}

#[test]
fn a_work_item_whose_branch_belongs_to_another_task_is_dead_lettered_once_without_retries() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let body = String::from_utf8(fixture(
        "plane/webhooks/issue-updated-state-in-progress.json",
    ))
    .unwrap();
    // Another work item (another id) with the same number 42.
    let other = body.replace(
        "\"data\": {\"id\": \"b2ec7265-54a6-4ae7-9ab1-a4bf993a9690\"",
        "\"data\": {\"id\": \"0c4f1d3e-0000-4000-8000-000000000042\"",
    );
    assert_ne!(body, other);
    {
        let server = sbx.serve();
        assert_eq!(server.post_plane(body.as_bytes(), "first").0, 202);
        assert_eq!(server.post_plane(other.as_bytes(), "second").0, 202);
    }
    let out = sbx.json(&["ingest"]);
    assert_eq!(out["dead_lettered"].as_array().unwrap().len(), 1, "{out}");
    let error: String = sbx
        .db()
        .query_row("SELECT error FROM inbox WHERE dead=1", [], |r| r.get(0))
        .unwrap();
    assert!(
        error.starts_with("permanent: ")
            && error.contains("branch orch/widget-42 already belongs to task 1"),
        "{error}"
    );
    assert_eq!(
        sbx.count("SELECT attempts FROM inbox WHERE dead=1"),
        1,
        "no retries"
    );
    assert_eq!(sbx.count("SELECT COUNT(*) FROM tasks"), 1);
    // Nothing left to retry: the next pass does nothing.
    let again = sbx.json(&["ingest"]);
    assert!(again["failed"].as_array().unwrap().is_empty(), "{again}");
    sbx.check_invariants();
}

/// One probe line of the sandbox test's agent: runs `cmd` in sh and prints
/// `PROBE <name> yes|no`.
fn probe(name: &str, cmd: &str) -> String {
    format!("if {cmd} >/dev/null 2>&1; then echo PROBE {name} yes; else echo PROBE {name} no; fi\n")
}

#[test]
fn a_sandboxed_agent_cannot_read_secrets_or_other_worktrees_nor_write_outside_and_the_pipeline_completes(
) {
    if let Err(why) = orch::process::bwrap_usable() {
        eprintln!("SKIPPED: bubblewrap does not work here: {why}");
        return;
    }
    // Outside /tmp (whatever the checkout's location), so only orch's own
    // hiding rules are tested: a sandboxed agent's /tmp is a private tmpfs,
    // where every probe would read nothing and write nowhere real.
    let mut sbx = Sandbox::new_in(std::path::Path::new("/var/tmp/orch-tests"));
    sbx.set("ORCH_AGENT_SANDBOX", "bwrap");
    std::fs::write(sbx.dir.join(".env"), "ORCH_PROBE_SECRET=hunter2\n").unwrap();
    sbx.add_issue("probe");
    sbx.add_issue("neighbour");
    let state = sbx.dir.join("state");
    let wt2 = state.join("worktrees/widget/orch-widget-2");
    assert!(
        wt2.join("README.md").exists(),
        "task 2's worktree is prepared"
    );
    let clone = state.join("repos/widget");
    let db = sbx.db_path();
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    let mut script = String::new();
    script += &probe(
        "env_read",
        &format!("grep -q hunter2 {}", q(&sbx.dir.join(".env"))),
    );
    script += &probe("db_read", &format!("grep -q SQLite {}", q(&db)));
    script += &probe(
        "other_worktree_read",
        &format!("cat {}", q(&wt2.join("README.md"))),
    );
    script += &probe("logs_read", &format!("ls {}", q(&state.join("logs"))));
    script += &probe(
        "write_outside",
        &format!("touch {}", q(&sbx.dir.join("outside"))),
    );
    script += &probe("write_etc", "touch /etc/orch-probe");
    script += &probe(
        "plant_hook",
        &format!("touch {}", q(&clone.join("hooks/post-commit"))),
    );
    script += &probe(
        "plant_config",
        &format!(
            "git config --file {} core.pager evil",
            q(&clone.join("config"))
        ),
    );
    script += &probe("orch_environ", "grep -qa hunter2 /proc/[0-9]*/environ");
    script += &probe("write_worktree", "touch from-agent.txt");
    script += &probe("write_tmp", "touch /tmp/scratch");
    script += &probe(
        "commit",
        "git add from-agent.txt && git -c user.name=agent -c user.email=a@a commit -qm agent-commit",
    );
    // Staged, not committed: the blob lives in the agent's private store,
    // gone after the run; orch's auto-commit still takes the file.
    script += &probe(
        "stage_only",
        // (an old mtime, so git does not re-read it as "racily clean")
        "echo staged > staged.txt && touch -d @946684800 staged.txt && git add staged.txt",
    );
    // Inside its view of the shared clone's refs the agent may move any
    // ref; only its own branch's move is carried over after the run.
    script += &probe(
        "move_other_branch",
        "git update-ref refs/heads/orch/widget-2 HEAD",
    );
    // The clone's object store (the private store's first alternate; the
    // store itself were there none) is read-only: deleting an object other
    // tasks need fails.
    script += &probe(
        "delete_object",
        &format!(
            "a={0}/objects/info/alternates; if [ -f \"$a\" ]; then d=$(head -1 \"$a\"); else d={0}/objects; fi; f=$(find \"$d\" -type f | head -1); [ -n \"$f\" ] && rm -f \"$f\"",
            q(&clone)
        ),
    );
    // The fake agent from a folder the sandbox shows whatever the checkout's
    // location (a checkout under /tmp is hidden by the private /tmp).
    let agent_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let agent = agent_dir.path().join("fake-agent");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fake-agent"),
        &agent,
    )
    .unwrap();
    script += &format!("exec {}\n", q(&agent));
    let argv = serde_json::to_string(&["/bin/sh", "-c", &script]).unwrap();
    sbx.append_config(&format!("\n[agents.analyst]\nargv = {argv}\n"));

    let branch2 = || {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&clone)
            .args(["rev-parse", "refs/heads/orch/widget-2"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = branch2();
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["to"], "architecture", "{v}");
    assert_eq!(branch2(), before, "task 2's branch was not moved");
    let fsck = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&clone)
        .args(["fsck", "--connectivity-only", "--no-dangling"])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the clone's objects are intact: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    assert!(
        !state.join("clone-views/task-1").exists(),
        "the view is removed after the run"
    );
    let log = std::fs::read_to_string(state.join("logs/job1-a1.log")).unwrap();
    let answer = |name: &str| {
        let line = format!("PROBE {name} ");
        log.lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no probe {name} in {log}"))
            .to_string()
    };
    for (name, want) in [
        ("env_read", "no"),
        ("db_read", "no"),
        ("other_worktree_read", "no"),
        ("logs_read", "no"),
        ("write_outside", "no"),
        ("write_etc", "no"),
        ("plant_hook", "no"),
        ("plant_config", "no"),
        ("orch_environ", "no"),
        ("write_worktree", "yes"),
        ("write_tmp", "yes"),
        ("commit", "yes"),
        ("move_other_branch", "yes"),
        ("delete_object", "no"),
        ("stage_only", "yes"),
    ] {
        assert_eq!(answer(name), want, "{name}\n{log}");
    }
    assert!(!sbx.dir.join("outside").exists());
    assert!(!clone.join("hooks/post-commit").exists());
    // The agent's own commit is pushed with the branch.
    let msgs = sbx.origin_git(&["log", "--format=%s", "orch/widget-1"]);
    assert!(msgs.contains("agent-commit"), "{msgs}");
    let staged = sbx.origin_git(&["show", "orch/widget-1:staged.txt"]);
    assert_eq!(
        staged.trim(),
        "staged",
        "the staged file was committed and pushed"
    );
    // The rest of the pipeline runs sandboxed to the end.
    sbx.tick_until(60, |s| s.stage(1) == "done");
    sbx.check_invariants();
}
