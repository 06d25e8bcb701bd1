//! Real agents finish real work (issue 10): per-role prompts with the
//! stage's verdict words and absolute paths, feedback on rework, the
//! conflict handoff, honest run outcomes, and a killed run's edits kept
//! out of the branch. The fake agent acts on its prompt as a real one
//! would, so these prove the loops close.

use std::path::Path;
use std::process::Command as StdCommand;

use crate::pipeline::work_until_stage;
use crate::util::*;

/// `git show origin's <rev>:<path>`.
fn origin_file(sbx: &Sandbox, rev: &str, path: &str) -> String {
    sbx.origin_git(&["show", &format!("{rev}:{path}")])
}

#[test]
fn a_reviewer_that_requests_changes_once_gets_them_and_the_reason_travels() {
    let mut sbx = Sandbox::new();
    let wanted = "- handle the empty input";
    sbx.set("FAKE_AGENT_REQUIRE_LINE", wanted);
    // The developer resumes its previous session on rework.
    sbx.append_config(&format!(
        "\n[agents.developer]\nargv = [\"{ROOT}/scripts/fake-agent\", \"--resume\", \"{{previous_session}}\"]\nresume = true\n"
    ));
    sbx.add_issue("needs one rework");
    sbx.tick_until(25, |s| s.stage(1) == "done");

    let t = sbx.transitions(1);
    let back: Vec<_> = t
        .iter()
        .filter(|(f, to, _)| f.as_deref() == Some("review") && to == "development")
        .collect();
    assert_eq!(back.len(), 1, "one rework: {t:?}");
    assert_eq!(
        sbx.count("SELECT developer_retries FROM tasks WHERE id=1"),
        1
    );
    let reason: String = sbx
        .db()
        .query_row(
            "SELECT reason FROM transitions WHERE from_stage='review' AND to_stage='development'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        reason,
        format!("REQUEST_CHANGES: Please add the line: {wanted}")
    );

    // The first developer prompt has no feedback; the second carries the
    // reviewer's summary, and the developer acted on it.
    let dev_runs: Vec<(i64, i64)> = {
        let db = sbx.db();
        let mut st = db
            .prepare("SELECT job_id, attempt FROM agent_runs WHERE stage='development' ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(dev_runs.len(), 2, "{dev_runs:?}");
    let first = sbx.prompt_of_run(dev_runs[0].0, dev_runs[0].1);
    let second = sbx.prompt_of_run(dev_runs[1].0, dev_runs[1].1);
    assert!(!first.contains("Please add the line"), "{first}");
    assert!(
        second.contains(&format!("Please add the line: {wanted}"))
            && second.contains("came back from review"),
        "{second}"
    );
    let changes = origin_file(&sbx, "main", "CHANGES.md");
    assert!(changes.lines().any(|l| l == wanted), "{changes}");
    // Resume: no session on the first run (the flag is dropped), the first
    // run's session on the second.
    let runs: Vec<(String, String)> = {
        let db = sbx.db();
        let mut st = db
            .prepare(
                "SELECT argv, session_id FROM agent_runs WHERE stage='development' ORDER BY id",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let argv = |i: usize| serde_json::from_str::<Vec<String>>(&runs[i].0).unwrap();
    assert_eq!(argv(0).len(), 1, "{runs:?}");
    assert_eq!(
        argv(1)[1..],
        ["--resume".to_string(), runs[0].1.clone()],
        "{runs:?}"
    );
    // The tracker comment of the review run carries the same reason.
    let comments = sbx.count(&format!(
        "SELECT COUNT(*) FROM outbox WHERE task_id=1 AND channel='tracker' AND kind='comment' \
         AND payload LIKE '%Please add the line: {wanted}%'"
    ));
    assert!(comments >= 1, "the reason reaches the tracker");
    sbx.check_invariants();
}

#[test]
fn a_reviewer_whose_reasons_are_only_in_its_result_text_still_reaches_the_developer() {
    let mut sbx = Sandbox::new();
    let wanted = "- log the retry count";
    sbx.set("FAKE_AGENT_REQUIRE_LINE", wanted)
        .set("FAKE_AGENT_SUMMARY_IN_RESULT", "1");
    sbx.add_issue("reasons in the result text");
    sbx.tick_until(25, |s| s.stage(1) == "done");
    let reason: String = sbx
        .db()
        .query_row(
            "SELECT reason FROM transitions WHERE from_stage='review' AND to_stage='development'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        reason.starts_with("REQUEST_CHANGES: ")
            && reason.contains(&format!("Please add the line: {wanted}")),
        "{reason}"
    );
    let dev2: i64 = sbx
        .count("SELECT job_id FROM agent_runs WHERE stage='development' ORDER BY id DESC LIMIT 1");
    let prompt = sbx.prompt_of_run(dev2, 1);
    assert!(
        prompt.contains(&format!("Please add the line: {wanted}")),
        "{prompt}"
    );
    assert!(origin_file(&sbx, "main", "CHANGES.md").contains(wanted));
}

#[test]
fn red_ci_hands_the_failing_test_output_to_the_next_developer_run() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_DEV_LINE", "- BROKEN on purpose");
    sbx.add_issue("red first");
    sbx.tick_until(25, |s| s.stage(1) == "done");
    let dev2: i64 = sbx
        .count("SELECT job_id FROM agent_runs WHERE stage='development' ORDER BY id DESC LIMIT 1");
    let prompt = sbx.prompt_of_run(dev2, 1);
    assert!(
        prompt.contains("CI failed on ") && prompt.contains("FAIL: CHANGES.md has a BROKEN line"),
        "{prompt}"
    );
    let changes = origin_file(&sbx, "main", "CHANGES.md");
    assert!(!changes.contains("BROKEN"), "{changes}");
    assert_eq!(
        sbx.count("SELECT developer_retries FROM tasks WHERE id=1"),
        1
    );
}

#[test]
fn an_empty_summary_leaves_no_dangling_colon() {
    let mut sbx = Sandbox::new();
    // Verdict without summary, and the fake's result text is used instead;
    // a custom argv that prints nothing shows the bare verdict.
    sbx.set("FAKE_AGENT_VERDICT_REVIEWER", "REQUEST_CHANGES")
        .set("FAKE_AGENT_SUMMARY_IN_RESULT", "1")
        .set("FAKE_AGENT_MODE_REVIEWER", "garbage")
        .set("ORCH_MAX_DEVELOPER_RETRIES", "1");
    sbx.add_issue("silent reasons");
    sbx.tick_until(20, |s| {
        s.count("SELECT escalated FROM tasks WHERE id=1") == 1
    });
    let reason: String = sbx
        .db()
        .query_row(
            "SELECT reason FROM transitions WHERE from_stage='review' AND to_stage='development'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, "REQUEST_CHANGES");
}

#[test]
fn a_developer_that_changes_nothing_because_writes_were_denied_fails_at_once_naming_them() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_DEVELOPER", "denied-write")
        .set("ORCH_JOB_MAX_ATTEMPTS", "3");
    sbx.add_issue("all writes denied");
    work_until_stage(&sbx, "development");
    let head_before = sbx.origin_git(&["rev-parse", "orch/widget-1"]);
    // As deterministic as a 400: the same permissions deny the same write
    // on every attempt, so there is no second one.
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "failed", "not retried: {v}");
    let reason = v["finalized"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("failed (not retried): no change")
            && reason.contains("permission denial(s): Write /")
            && reason.contains("the agent's permissions deny the same on a retry"),
        "{reason}"
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs WHERE stage='development'"),
        1,
        "one run"
    );
    assert_eq!(sbx.json(&["work-once"])["result"], "idle");
    assert_eq!(sbx.stage(1), "development");
    // The escalation names the failed job and its reason, in the
    // transition and in `orch why`.
    let job: i64 = sbx
        .db()
        .query_row(
            "SELECT id FROM jobs WHERE stage='development' AND status='failed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let why = sbx.json(&["why", "1"]);
    let last = why["chain"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["from"], &last["to"], &last["actor"]),
        (
            &"development".into(),
            &"development".into(),
            &"worker".into()
        ),
        "{last}"
    );
    assert!(
        last["reason"].as_str().unwrap().starts_with(&format!(
            "development job {job} failed (not retried): no change"
        )),
        "{last}"
    );
    assert_eq!(last["cause"]["kind"], "job", "{last}");
    assert_eq!(last["cause"]["job_id"], job);
    assert_eq!(last["cause"]["status"], "failed");
    let text = sbx.ok(&["why", "1"]);
    assert!(
        text.contains(&format!(
            "caused by job {job} (developer, attempt 1, failed: no change: the run left the branch at"
        )) && !text.contains("no job recorded"),
        "{text}"
    );
    assert_eq!(sbx.count("SELECT escalated FROM tasks WHERE id=1"), 1);
    assert_eq!(
        sbx.origin_git(&["rev-parse", "orch/widget-1"]),
        head_before,
        "nothing pushed"
    );
    let show = sbx.ok(&["task", "show", "1"]);
    assert!(show.contains("denied (1): Write /"), "{show}");
    // The run's tracker comment names them too.
    assert!(
        sbx.count(
            "SELECT COUNT(*) FROM outbox WHERE channel='tracker' AND kind='comment' \
             AND payload LIKE '%permission denials (1): Write /%CHANGES.md%'"
        ) >= 1
    );
    assert!(show.contains("CHANGES.md"), "{show}");
    assert!(
        show.contains("ESCALATED") && show.contains("no change"),
        "{show}"
    );
    sbx.check_invariants();
}

#[test]
fn a_file_that_still_holds_conflict_markers_is_never_committed() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_DEV_LINE", "<<<<<<< HEAD")
        .set("ORCH_JOB_MAX_ATTEMPTS", "1");
    sbx.add_issue("leaves markers");
    work_until_stage(&sbx, "development");
    let head_before = sbx.origin_git(&["rev-parse", "orch/widget-1"]);
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "failed", "{v}");
    assert!(
        v["finalized"]["reason"]
            .as_str()
            .unwrap()
            .contains("conflict markers left in CHANGES.md; nothing committed"),
        "{v}"
    );
    assert_eq!(sbx.origin_git(&["rev-parse", "orch/widget-1"]), head_before);
    assert_eq!(git_in(&sbx.worktree(1), &["status", "--porcelain"]), "");
}

#[test]
fn an_api_400_fails_at_once_and_a_retryable_failure_is_retried() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_ANALYST", "api-error")
        .set("ORCH_JOB_MAX_ATTEMPTS", "3");
    sbx.add_issue("prompt too long");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "failed", "not retried: {v}");
    let reason = v["finalized"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("model API error 400") && reason.contains("Prompt is too long"),
        "{reason}"
    );
    assert_eq!(sbx.count("SELECT escalated FROM tasks WHERE id=1"), 1);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM agent_runs"), 1);

    // (A 429 or 529 is the account's limit, not the job's failure: it
    // pauses the account instead, see tests/limits.rs.)
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_ANALYST", "fail")
        .set("ORCH_JOB_MAX_ATTEMPTS", "3")
        .set("ORCH_JOB_BACKOFF_S", "0");
    sbx.add_issue("max turns");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "retrying", "{v}");
    assert!(
        v["finalized"]["reason"]
            .as_str()
            .unwrap()
            .contains("error_max_turns"),
        "{v}"
    );
    // The next attempt is told why the last one failed.
    sbx.set("FAKE_AGENT_MODE_ANALYST", "ok");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    let prompt = sbx.prompt_of(1, "analysis");
    assert!(
        prompt.contains("Attempt 1 of this run failed: agent result error_max_turns"),
        "{prompt}"
    );
}

#[test]
fn a_killed_runs_edits_never_reach_the_branch() {
    let mut sbx = Sandbox::new();
    let pidfile = sbx.dir.join("pids");
    sbx.set("ORCH_HEARTBEAT_STALE_S", "600");
    // The agent's pids are read from the host: no pid namespace. The
    // child runner: the agent dies with its killed worker.
    sbx.set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_AGENT_RUNNER", "child");
    sbx.add_issue("killed midway");
    work_until_stage(&sbx, "development");
    let wt = sbx.worktree(1);

    // A worker whose developer writes its edit, then hangs; the worker is
    // killed (SIGKILL) mid-run.
    let mut worker = sbx.spawn(
        &["work-once"],
        &[
            ("FAKE_AGENT_MODE_DEVELOPER", "work-then-hang"),
            ("FAKE_AGENT_DEV_LINE", "- FIRST RUN half-done edit"),
            ("FAKE_AGENT_PIDFILE", pidfile.to_str().unwrap()),
        ],
    );
    wait_until(30, "the first run's edit in the worktree", || {
        std::fs::read_to_string(wt.join("CHANGES.md")).is_ok_and(|s| s.contains("FIRST RUN"))
    });
    worker.kill().unwrap();
    worker.wait().unwrap();

    let v = sbx.json(&["reap"]);
    assert!(v.to_string().contains("requeued for attempt 2"), "{v}");
    assert_eq!(
        git_in(&wt, &["status", "--porcelain"]),
        "",
        "the reaper reset the worktree"
    );
    for pid in std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
    {
        wait_until(10, "the killed agent to be gone", || !pid_alive(pid));
    }

    // The development run finishes waiting for CI; the CI step's green
    // test run moves the task on.
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "waiting", "{v}");
    sbx.ok(&["ci"]);
    assert_eq!(sbx.stage(1), "review");
    let changes = origin_file(&sbx, "orch/widget-1", "CHANGES.md");
    assert!(!changes.contains("FIRST RUN"), "{changes}");
    assert!(changes.contains("- task 1: change from job"), "{changes}");
    sbx.check_invariants();
}

#[test]
fn a_retry_starts_from_a_clean_worktree_even_without_the_reaper() {
    // The worker's own reset before attempt 2: edits left in the worktree
    // (as by a run killed with its worker) are not committed.
    let sbx = Sandbox::new();
    sbx.add_issue("stray edits");
    work_until_stage(&sbx, "development");
    let wt = sbx.worktree(1);
    // Attempt 1 fails (max turns), leaving the job queued for attempt 2.
    let v = sbx
        .orch()
        .args(["--json", "work-once"])
        .env("FAKE_AGENT_MODE_DEVELOPER", "fail")
        .output()
        .unwrap();
    assert!(v.status.success());
    std::fs::write(wt.join("STRAY.md"), "left by a killed run\n").unwrap();
    std::fs::write(wt.join("CHANGES.md"), "# Changes\n- STRAY\n").unwrap();
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "waiting", "{v}");
    sbx.ok(&["ci"]);
    assert_eq!(sbx.stage(1), "review");
    let files = sbx.origin_git(&["ls-tree", "-r", "--name-only", "orch/widget-1"]);
    assert!(!files.contains("STRAY.md"), "{files}");
    assert!(!origin_file(&sbx, "orch/widget-1", "CHANGES.md").contains("STRAY"));
}

#[test]
fn a_relative_state_dir_gives_agents_absolute_paths_and_per_stage_verdict_words() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_STATE_DIR", "rel-state");
    sbx.ok(&["init"]);
    sbx.add_issue("relative paths");
    sbx.tick_until(15, |s| s.stage(1) == "done");
    let state = std::fs::canonicalize(sbx.dir.join("rel-state")).unwrap();

    let review = sbx.prompt_of(1, "review");
    let job: i64 = sbx.count("SELECT id FROM jobs WHERE stage='review'");
    let verdict = state.join(format!("verdicts/job{job}-a1/verdict.json"));
    assert!(
        review.contains(&verdict.display().to_string()),
        "absolute verdict file {} in:\n{review}",
        verdict.display()
    );
    assert!(verdict.exists(), "the agent wrote it where it was told");
    assert!(review.contains("APPROVE or REQUEST_CHANGES"), "{review}");
    assert!(review.contains("Work item link: none"), "{review}");
    assert!(review.contains("git diff origin/main...HEAD"), "{review}");
    let wt = sbx.worktree(1);
    assert!(Path::new(&wt).is_absolute(), "{}", wt.display());
    assert!(
        review.contains(&format!("worktree {}", wt.display())),
        "{review}"
    );

    let staging = sbx.prompt_of(1, "deploy-staging");
    assert!(staging.contains("the verdict is PASS or FAIL"), "{staging}");
    assert!(!staging.contains("DEPLOYED"), "{staging}");
    let deploy = sbx.prompt_of(1, "deploy");
    assert!(
        deploy.contains("the verdict is DEPLOYED or FAILED"),
        "{deploy}"
    );
    let architect = sbx.prompt_of(1, "architecture");
    assert!(
        architect.contains("docs/work-items/1/design.md") && architect.contains("sh test.sh"),
        "{architect}"
    );
}

#[test]
fn agents_show_renders_what_the_worker_renders() {
    let sbx = Sandbox::new();
    let staging = sbx.json(&["agents", "show", "deployer", "--stage", "deploy-staging"]);
    let p = staging["prompt"].as_str().unwrap();
    assert!(p.contains("PASS or FAIL") && !p.contains("DEPLOYED"), "{p}");
    let deploy = sbx.ok(&["agents", "show", "deployer", "--stage", "deploy"]);
    assert!(deploy.contains("DEPLOYED or FAILED"), "{deploy}");
    assert!(deploy.contains("ORCH_VERDICT_FILE=/"), "{deploy}");

    // For a task: the same bytes as the run's prompt file.
    sbx.add_issue("shown");
    sbx.ok(&["work-once"]);
    let shown = sbx.json(&["agents", "show", "architect", "--task", "1"]);
    let job: i64 = sbx.count("SELECT id FROM jobs WHERE stage='architecture'");
    sbx.ok(&["work-once"]);
    assert_eq!(shown["prompt"].as_str().unwrap(), sbx.prompt_of_run(job, 1));

    // Bad input: exit 2 with one clear message.
    for args in [
        &["agents", "show", "wizard"][..],
        &["agents", "show", "deployer", "--stage", "review"][..],
        &["agents", "show", "analyst", "--task", "99"][..],
    ] {
        let out = sbx.orch().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn two_tasks_on_the_same_lines_the_second_resolves_its_conflict_and_both_ship() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_STAGING_CHECK_INFRA_BACKOFF_S", "0");
    let one = sbx.add_issue("first");
    let two = sbx.add_issue("second");
    // Both branches start from the seed and append to CHANGES.md.
    sbx.tick_until(40, |s| s.stage(one) == "done" && s.stage(two) == "done");

    let back = sbx
        .transitions(two)
        .into_iter()
        .chain(sbx.transitions(one))
        .filter(|(f, to, _)| f.as_deref() == Some("deploy-staging") && to == "development")
        .count();
    assert_eq!(back, 1, "one conflict, one rework");
    let changes = origin_file(&sbx, "main", "CHANGES.md");
    assert!(
        !changes.contains("<<<<<<<") && !changes.contains(">>>>>>>"),
        "{changes}"
    );
    assert!(
        changes.contains("- task 1:") && changes.contains("- task 2:"),
        "both sides kept: {changes}"
    );
    // The test command passes on every first-parent commit of main.
    let scratch = sbx.dir.join("first-parent-check");
    git_in(
        &sbx.dir,
        &[
            "clone",
            "-q",
            sbx.origin().to_str().unwrap(),
            scratch.to_str().unwrap(),
        ],
    );
    let commits = git_in(&scratch, &["rev-list", "--first-parent", "main"]);
    for sha in commits.lines() {
        git_in(&scratch, &["checkout", "-q", sha]);
        let out = StdCommand::new("sh")
            .arg("test.sh")
            .current_dir(&scratch)
            .output()
            .unwrap();
        assert!(out.status.success(), "tests fail on {sha}");
        let text = std::fs::read_to_string(scratch.join("CHANGES.md")).unwrap();
        assert!(!text.contains("<<<<<<<"), "markers on {sha}");
    }
    sbx.check_invariants();
}

#[test]
fn the_readme_claude_recipe_is_what_orch_renders() {
    let sbx = Sandbox::new();
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let start = readme.find("[agents.default]").unwrap();
    let end = start + readme[start..].find("[[projects]]").unwrap();
    let cfg = std::fs::read_to_string(sbx.dir.join("orch.toml")).unwrap();
    let projects = &cfg[cfg.find("[[projects]]").unwrap()..];
    std::fs::write(
        sbx.dir.join("orch.toml"),
        format!("{}\n{projects}", &readme[start..end]),
    )
    .unwrap();

    let argv = |role: &str| -> Vec<String> {
        let v = sbx.json(&["agents", "show", role]);
        serde_json::from_value(v["argv"].clone()).unwrap()
    };
    let reviewer = argv("reviewer");
    let verdict_dir = reviewer.last().unwrap().clone();
    assert!(
        Path::new(&verdict_dir).is_absolute() && verdict_dir.contains("/verdicts/job0-a1"),
        "{reviewer:?}"
    );
    assert_eq!(
        reviewer[..reviewer.len() - 1],
        [
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "acceptEdits",
            "--max-turns",
            "60",
            "--add-dir"
        ]
    );
    // The developer's resume pair is dropped when there is no session.
    let developer = argv("developer");
    assert!(
        developer.contains(&"acceptEdits".to_string()),
        "{developer:?}"
    );
    assert!(
        !developer.contains(&"--resume".to_string()),
        "{developer:?}"
    );
    assert_eq!(developer.last().unwrap(), &verdict_dir);
}

/// A rejection in the tracker: the comment the person wrote on the work
/// item (Plane's `issue_comment` delivery) reaches the rerun's feedback.
#[test]
fn a_rejection_in_the_tracker_brings_the_persons_comment_to_the_rerun() {
    let sbx = Sandbox::new();
    let cfg = sbx.dir.join("orch.toml");
    let s = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, s.replace("auto_approve_analysis = true\n", "")).unwrap();
    let ingest = |event: &str, file: &str| {
        sbx.json(&[
            "ingest",
            "--source",
            "plane",
            "--event",
            event,
            "--file",
            &format!("{ROOT}/tests/fixtures/plane/webhooks/{file}.json"),
        ])
    };
    assert_eq!(
        ingest("issue", "issue-updated-state-in-progress")["outcome"],
        "created task 1"
    );
    sbx.ok(&["work-once"]);
    let first = sbx.prompt_of(1, "analysis");
    assert!(!first.contains("HTTP 429 path"), "{first}");
    // The person comments, then moves the item to Rejected.
    ingest("issue_comment", "issue_comment-created");
    let out = ingest("issue", "issue-updated-state-rejected");
    assert!(
        out["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected"),
        "{out}"
    );
    sbx.ok(&["work-once"]);
    let rerun = sbx.prompt_of(1, "analysis");
    assert!(
        rerun.contains("Rejected in the tracker")
            && rerun.contains("Please also cover the HTTP 429 path with a test."),
        "{rerun}"
    );
    assert!(!rerun.contains("<p>"), "the comment as text: {rerun}");
}
