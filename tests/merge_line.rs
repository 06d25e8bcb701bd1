//! The merge line (DESIGN §7, issue 23): ready tasks land in batches —
//! main + T1 … Tk built, tested once, main fast-forwarded to the tested
//! tip; a red batch bisected until the culprit is found, a conflicting
//! task taken out, a red tip run once more before blame — and the line is
//! visible in `orch why`, `orch status` and the metrics.

use serde_json::json;

use crate::util::*;

const NOT_DEPLOYER: [&str; 5] = ["analyst", "architect", "developer", "reviewer", "tester"];

/// Adds an issue and runs every role but the deployer (with `env`) until
/// it waits at deploy-staging, then its deployer: the task is ready. The
/// development CI is the local forge's (`orch ci`).
fn ready(sbx: &Sandbox, title: &str, env: &[(&str, &str)]) -> i64 {
    ready_by(sbx, title, env, &|| {
        let o = sbx
            .orch_std()
            .args(["ci"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    })
}

/// [`ready`] with `between` run after each round of the roles (and after
/// the deployer): what records the development CI and delivers messages.
fn ready_by(sbx: &Sandbox, title: &str, env: &[(&str, &str)], between: &dyn Fn()) -> i64 {
    let id = at_deploy_staging(sbx, title, env, between);
    let v = sbx.json(&["work-once", "--role", "deployer"]);
    assert_eq!(v["task_id"], id, "{v}");
    assert_eq!(v["finalized"]["action"], "waiting", "{v}");
    between();
    id
}

/// Adds an issue and runs every role but the deployer (with `env`, then
/// `between`) until it waits at deploy-staging, its deployer's job queued.
fn at_deploy_staging(sbx: &Sandbox, title: &str, env: &[(&str, &str)], between: &dyn Fn()) -> i64 {
    let id = sbx.add_issue(title);
    for _ in 0..12 {
        if sbx.stage(id) == "deploy-staging" {
            return id;
        }
        for role in NOT_DEPLOYER {
            let o = sbx
                .orch_std()
                .args(["work-once", "--role", role])
                .envs(env.iter().copied())
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
        }
        between();
    }
    panic!("task {id} never reached deploy-staging");
}

/// One run of the line; the project's report.
fn line(sbx: &Sandbox) -> serde_json::Value {
    sbx.json(&["merge-gate"])["projects"][0].clone()
}

/// [`ready`] for each name in turn, each task writing its own `<name>.md`.
fn ready_each(sbx: &Sandbox, names: &[&str]) -> Vec<i64> {
    names
        .iter()
        .map(|n| ready(sbx, n, &env_of(&own_file(n))))
        .collect()
}

fn own_file(n: &str) -> [(&'static str, String); 1] {
    [("FAKE_AGENT_DEV_FILE", format!("{n}.md"))]
}

fn env_of<'a>(e: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    e.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn counter(sbx: &Sandbox, name: &str) -> i64 {
    sbx.count(&format!(
        "SELECT COALESCE((SELECT value FROM counters WHERE name='{name}'),0)"
    ))
}

#[test]
fn three_ready_tasks_land_as_one_batch_tested_once_and_the_line_is_visible() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    let ids = ready_each(&sbx, &["a", "b", "c"]);
    sbx.push_to_main("README.md", "Main moved meanwhile.");

    // Waiting: `why` names the place, `status` the line, the metrics the
    // backlog; a dry run plans the batch and writes nothing.
    let why = sbx.json(&["why", &ids[1].to_string()]);
    assert_eq!(why["waiting"]["kind"], "merge_line", "{why}");
    assert_eq!(why["waiting"]["place"], 2, "{why}");
    let status = sbx.ok(&["status"]);
    assert!(
        status.contains("merge line widget: 3 waiting (tasks 1, 2, 3)"),
        "{status}"
    );
    let metrics = sbx.ok(&["metrics"]);
    assert!(
        metrics.contains("orch_merge_line_waiting{project=\"widget\"} 3"),
        "{metrics}"
    );
    let before = sbx.dump();
    let plan = sbx.ok(&["merge-gate", "--dry-run"]);
    assert!(
        plan.contains("would build main + tasks 1, 2, 3 (3 of 3 waiting)"),
        "{plan}"
    );
    assert_eq!(sbx.dump(), before, "--dry-run wrote nothing");

    let v = line(&sbx);
    let b = &v["batches"][0];
    assert_eq!(b["tasks"], json!(ids), "{v}");
    assert_eq!(b["landed"], json!(ids), "{v}");
    assert_eq!(b["tests"], 1, "one test run for the batch: {v}");
    for id in &ids {
        assert_eq!(sbx.stage(*id), "deploy");
    }
    // main is the tested tip: the last task's rebased head, which contains
    // the others and main's own change; linear, no merge commits.
    let main = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(main, sbx.origin_git(&["rev-parse", "orch/widget-3"]));
    assert_eq!(b["tip"], main.as_str(), "{v}");
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM ci_statuses WHERE sha='{main}' AND context='orch/test' AND state='success'"
        )),
        1
    );
    for f in ["a.md", "b.md", "c.md", "README.md"] {
        assert!(sbx
            .origin_git(&["ls-tree", "--name-only", "main"])
            .contains(f));
    }
    assert!(sbx.origin_git(&["rev-list", "--merges", "main"]).is_empty());
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM merge_line WHERE state='landed' AND batch_id=1"),
        3
    );
    assert_eq!(counter(&sbx, "merge_line.batches_total"), 1);
    assert_eq!(counter(&sbx, "merge_line.landed_total"), 3);
    let metrics = sbx.ok(&["metrics"]);
    for want in [
        "orch_merge_line_landed_total 3",
        "orch_merge_line_batches_total 1",
        "orch_merge_line_landed_last_hour{project=\"widget\"} 3",
        "orch_merge_line_time_in_line_seconds{project=\"widget\"}",
    ] {
        assert!(metrics.contains(want), "missing {want:?}: {metrics}");
    }
    // Each landed move is the worker's, caused by the deployer's job.
    let why = sbx.json(&["why", "1"]);
    let link = why["chain"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(link["to"], "deploy", "{link}");
    assert_eq!(link["cause"]["kind"], "job", "{link}");
    assert!(sbx.ok(&["merge-gate"]).contains("nothing ready to merge"));
    sbx.tick_until(8, |s| ids.iter().all(|id| s.stage(*id) == "done"));
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn a_red_batch_is_bisected_the_culprit_goes_back_with_its_log_and_the_others_land() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    // Task 3's BETA clashes with task 1's ALPHA; each is green alone.
    let one = ready(
        &sbx,
        "alpha",
        &[
            ("FAKE_AGENT_DEV_FILE", "alpha.txt"),
            ("FAKE_AGENT_DEV_LINE", "ALPHA"),
        ],
    );
    let two = ready(&sbx, "b", &env_of(&own_file("b")));
    let three = ready(
        &sbx,
        "beta",
        &[
            ("FAKE_AGENT_DEV_FILE", "beta.txt"),
            ("FAKE_AGENT_DEV_LINE", "BETA"),
        ],
    );
    let four = ready(&sbx, "d", &env_of(&own_file("d")));

    let v = line(&sbx);
    let b = &v["batches"][0];
    assert_eq!(b["tasks"], json!([one, two, three, four]), "{v}");
    // Tip red, then halves: [1,2] green, [1,2,3] red — task 3 is the
    // culprit, red twice (the tip and its prefix), so blamed without a
    // retry.
    assert_eq!(b["flaky_retries"], 0, "{v}");
    assert_eq!(b["splits"], 2, "{v}");
    assert_eq!(b["tests"], 3, "{v}");
    assert_eq!(b["landed"], json!([one, two]), "{v}");
    assert_eq!(b["sent_back"][0][0], three, "{v}");
    assert_eq!(b["requeued"], json!([four]), "{v}");
    // Task 4 lands in the next batch, rebuilt without task 3.
    let b2 = &v["batches"][1];
    assert_eq!(b2["landed"], json!([four]), "{v}");
    assert_eq!(sbx.stage(three), "development");
    for id in [one, two, four] {
        assert_eq!(sbx.stage(id), "deploy");
    }
    let tree = sbx.origin_git(&["ls-tree", "--name-only", "main"]);
    assert!(tree.contains("alpha.txt") && tree.contains("d.md") && !tree.contains("beta.txt"));
    // Task 4's branch shed task 3's commits when it was rebuilt.
    let four_branch = sbx.origin_git(&["ls-tree", "--name-only", &format!("orch/widget-{four}")]);
    assert!(!four_branch.contains("beta.txt"), "{four_branch}");
    // The culprit's next developer run is told what failed.
    let reason = sbx.last_reason(three);
    assert!(
        reason.contains("merge line: tests fail on the combined tree"),
        "{reason}"
    );
    let brief = sbx.json(&["agents", "show", "developer", "--task", &three.to_string()]);
    let feedback = brief["feedback"].as_str().unwrap();
    assert!(
        feedback.contains("FAIL: alpha.txt (ALPHA) and beta.txt (BETA) clash"),
        "{feedback}"
    );
    assert_eq!(
        sbx.count(&format!(
            "SELECT developer_retries FROM tasks WHERE id={three}"
        )),
        1
    );
    assert_eq!(counter(&sbx, "merge_line.splits_total"), 2);
    assert_eq!(counter(&sbx, "merge_line.flaky_retries_total"), 0);
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn a_task_that_conflicts_with_those_ahead_leaves_the_batch_and_the_rest_land() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    // Tasks 1 and 2 both append to CHANGES.md (the default): together
    // they conflict. Task 3 has its own file.
    let one = ready(&sbx, "first", &[]);
    let two = ready(&sbx, "second", &[]);
    let three = ready(&sbx, "third", &env_of(&own_file("c")));
    let v = line(&sbx);
    let b = &v["batches"][0];
    assert_eq!(b["landed"], json!([one, three]), "{v}");
    assert_eq!(b["sent_back"][0][0], two, "{v}");
    assert_eq!(b["tests"], 1, "{v}");
    let reason = sbx.last_reason(two);
    assert!(
        reason.contains("merge line: rebase onto main and the tasks ahead of it")
            && reason.contains("conflicts in CHANGES.md"),
        "{reason}"
    );
    assert_eq!(sbx.stage(two), "development");
    // Its next developer run starts on a branch with main merged in, the
    // conflict left for the agent (the conflict handoff).
    sbx.tick_until(12, |s| s.stage(two) == "done");
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn a_red_tip_that_passes_when_run_again_lands_and_is_counted_flaky() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    let one = ready(&sbx, "a", &env_of(&own_file("a")));
    let two = ready(&sbx, "b", &env_of(&own_file("b")));
    // From now on the test command fails the first time it runs on a tree
    // with task 2's file, then passes.
    let cfg = sbx.dir.join("orch.toml");
    let s = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        s.replace(
            r#"test_command = ["sh", "test.sh"]"#,
            r#"test_command = ["sh", "-c", "if [ -e b.md ] && [ ! -e flaky.seen ]; then : > flaky.seen; exit 1; fi; sh test.sh"]"#,
        ),
    )
    .unwrap();
    let v = line(&sbx);
    let b = &v["batches"][0];
    // Tip red; task 1 alone green; the tip red only once, so it runs
    // again: green, the batch lands.
    assert_eq!(b["landed"], json!([one, two]), "{v}");
    assert_eq!(b["flaky_retries"], 1, "{v}");
    assert_eq!(b["splits"], 1, "{v}");
    assert_eq!(b["tests"], 3, "{v}");
    assert_eq!(counter(&sbx, "merge_line.flaky_passes_total"), 1);
    sbx.check_invariants();
}

#[test]
fn the_batch_size_follows_the_backlog_within_its_bounds() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false")
        .set("ORCH_MERGE_LINE_BATCH_MAX", "2");
    let ids = ready_each(&sbx, &["a", "b", "c"]);
    let v = line(&sbx);
    assert_eq!(v["batches"][0]["landed"], json!(&ids[..2]), "{v}");
    assert_eq!(v["batches"][1]["landed"], json!(&ids[2..]), "{v}");
    // A maximum below the minimum is a configuration error.
    let o = sbx
        .orch_std()
        .args(["merge-gate"])
        .env("ORCH_MERGE_LINE_BATCH_MIN", "3")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("ORCH_MERGE_LINE_BATCH_MAX"));
}

/// Gitea's pulls route for the sandbox's repository.
#[cfg(feature = "testing")]
const GITEA_API: &str = "/api/v1/repos/acme/widget";

#[cfg(feature = "testing")]
#[test]
fn on_gitea_every_pr_of_a_landed_batch_ends_merged_the_tip_merged_the_others_marked_once() {
    use crate::fakes::FakePr;

    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    let ids = ready_each(&sbx, &["a", "b"]);
    // The project now merges through Gitea; its PRs exist, as the outbox's
    // open_pr deliveries made them (numbers 7, 8).
    let gitea = on_gitea(&mut sbx, "");
    {
        let mut st = gitea.state.lock().unwrap();
        for id in &ids {
            st.prs.push(FakePr {
                number: 6 + id,
                head: format!("orch/widget-{id}"),
                base: "main".into(),
                title: format!("task {id}"),
                merged: false,
                merge_commit: None,
                merge_body: None,
            });
        }
        // The repository does not allow marking PRs merged manually yet.
        st.repo_settings.insert("allow_manual_merge", json!(false));
    }

    // A crash right after Gitea merged the tip's PR, before the apply: no
    // move, no message. The next run finds the PR merged and lands.
    let crash = sbx
        .orch_std()
        .args(["merge-gate"])
        .env("FAILPOINTS", "merge_line.after_fast_forward=return")
        .output()
        .unwrap();
    assert!(!crash.status.success(), "{crash:?}");
    assert!(gitea.state.lock().unwrap().prs[1].merged);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM outbox WHERE kind='mark_merged'"),
        0
    );
    assert_eq!(sbx.stage(ids[0]), "deploy-staging");

    let v = line(&sbx);
    let b = &v["batches"][0];
    assert_eq!(b["landed"], json!(ids), "{v}");
    assert_eq!(b["tests"], 1, "{v}");
    let main = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(b["tip"], main.as_str(), "main is the tested tip: {v}");
    // The tip task's PR: merged through the API naming the tested head.
    let prs = gitea.state.lock().unwrap().prs.clone();
    let tip = prs[1].merge_body.clone().expect("the tip's PR merged");
    assert_eq!(tip["Do"], "fast-forward-only");
    assert_eq!(tip["head_commit_id"], main.as_str());
    assert!(!prs[0].merged, "the other PR waits for orch deliver");
    let key = format!("task:{}:v", ids[0]);
    let queued = sbx.count(&format!(
        "SELECT COUNT(*) FROM outbox WHERE kind='mark_merged' AND dedupe_key LIKE '{key}%:mark_merged'"
    ));
    assert_eq!(queued, 1, "queued with the landing's move");
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM outbox WHERE kind='mark_merged'"),
        1,
        "none for the tip"
    );

    // Gitea refuses (style not allowed): a dead letter with Gitea's reason.
    sbx.json(&["deliver"]);
    let (status, error): (String, String) = sbx
        .db()
        .query_row(
            "SELECT status, last_error FROM outbox WHERE kind='mark_merged'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "dead", "{error}");
    assert!(error.contains("manually-merged is not allowed"), "{error}");
    assert!(!gitea.state.lock().unwrap().prs[0].merged);

    // Allowed now: the operator's retry marks it merged, naming main.
    gitea
        .state
        .lock()
        .unwrap()
        .repo_settings
        .remove("allow_manual_merge");
    sbx.ok(&["outbox", "retry", "--all-dead"]);
    let prs = gitea.state.lock().unwrap().prs.clone();
    assert!(prs.iter().all(|p| p.merged), "{prs:?}");
    let mark = prs[0].merge_body.clone().unwrap();
    assert_eq!(mark["Do"], "manually-merged");
    assert_eq!(mark["MergeCommitID"], main.as_str());
    let a_head = sbx.origin_git(&["rev-parse", &format!("orch/widget-{}", ids[0])]);
    sbx.origin_git(&[
        "merge-base",
        "--is-ancestor",
        &a_head,
        mark["MergeCommitID"].as_str().unwrap(),
    ]);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM outbox WHERE kind='mark_merged' AND status='delivered'"),
        1
    );

    // A second pass of the line and of deliver sends nothing more.
    let before = gitea.server.lines();
    assert!(sbx.ok(&["merge-gate"]).contains("nothing ready to merge"));
    sbx.json(&["deliver"]);
    assert_eq!(gitea.server.lines(), before);
    let merges: Vec<String> = before
        .iter()
        .filter(|l| l.starts_with("POST ") && l.ends_with("/merge"))
        .cloned()
        .collect();
    assert_eq!(
        merges,
        [
            format!("POST {GITEA_API}/pulls/8/merge"),
            format!("POST {GITEA_API}/pulls/7/merge"),
            format!("POST {GITEA_API}/pulls/7/merge"),
        ],
        "the tip once; the other refused once, then marked once"
    );
    sbx.check_invariants();
}

#[test]
fn a_project_whose_line_fails_does_not_stop_the_next_projects_line() {
    // Two projects on one origin; widget (first in the config) has a ready
    // task but its origin becomes unreachable, so its line fails; gadget's
    // ready task must land all the same.
    let sbx = Sandbox::new();
    sbx.append_config(&format!(
        "\n[[projects]]\nname = \"gadget\"\ntracker = \"local\"\nforge = \"local\"\nclone_url = \"{}\"\ntest_command = [\"sh\", \"test.sh\"]\nauto_approve_analysis = true\n",
        sbx.origin().display()
    ));
    let env = [("FAKE_AGENT_DEV_FILE", "task-%t.md")];
    let w = sbx.add_issue("widget work");
    let g: i64 = sbx.json(&[
        "issue",
        "add",
        "--project",
        "gadget",
        "--title",
        "gadget work",
    ])["task_id"]
        .as_i64()
        .expect("issue add names its task");
    for _ in 0..10 {
        if sbx.stage(w) == "deploy-staging" && sbx.stage(g) == "deploy-staging" {
            break;
        }
        for role in NOT_DEPLOYER {
            for _ in 0..2 {
                let o = sbx
                    .orch_std()
                    .args(["work-once", "--role", role])
                    .envs(env)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{o:?}");
            }
        }
        sbx.ok(&["ci"]);
    }
    assert_eq!(
        (sbx.stage(w), sbx.stage(g)),
        ("deploy-staging".to_string(), "deploy-staging".to_string())
    );
    for _ in 0..2 {
        let v = sbx.json(&["work-once", "--role", "deployer"]);
        assert_eq!(v["finalized"]["action"], "waiting", "{v}");
    }
    // widget's origin goes away (the first clone_url in the config).
    let path = sbx.dir.join("orch.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    let url = format!("clone_url = \"{}\"", sbx.origin().display());
    let gone = sbx.dir.join("gone.git");
    std::fs::write(
        &path,
        cfg.replacen(&url, &format!("clone_url = \"{}\"", gone.display()), 1),
    )
    .unwrap();

    let out = sbx.orch().args(["--json", "merge-gate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let projects = v["projects"].as_array().unwrap();
    let widget = projects.iter().find(|p| p["project"] == "widget").unwrap();
    let gadget = projects.iter().find(|p| p["project"] == "gadget").unwrap();
    assert!(
        widget["error"].as_str().unwrap_or("").contains("gone.git"),
        "widget's error names its origin: {widget}"
    );
    assert_eq!(gadget["batches"][0]["landed"], json!([g]), "{gadget}");
    assert!(gadget.get("error").is_none(), "{gadget}");
    assert_eq!(sbx.stage(g), "deploy");
    assert_eq!(sbx.stage(w), "deploy-staging");
    // The text form names the failure too.
    let out = sbx.orch().args(["merge-gate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("  error: "),
        "{out:?}"
    );
}

/// Someone else's clone of origin's `branch` (under the sandbox).
fn someone_elses_clone(sbx: &Sandbox, branch: &str, name: &str) -> std::path::PathBuf {
    let other = sbx.dir.join(name);
    git_in(
        &sbx.dir,
        &[
            "clone",
            "-q",
            "-b",
            branch,
            sbx.origin().to_str().unwrap(),
            other.to_str().unwrap(),
        ],
    );
    other
}

/// Commits `file` in `dir` as someone else; the new head.
fn commit_as_someone_else(dir: &std::path::Path, file: &str) -> String {
    std::fs::write(dir.join(file), "not validated\n").unwrap();
    git_in(dir, &["add", file]);
    git_in(
        dir,
        &[
            "-c",
            "user.name=x",
            "-c",
            "user.email=x@example.com",
            "commit",
            "-qm",
            file,
        ],
    );
    git_in(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

fn branch_of(sbx: &Sandbox, id: i64) -> String {
    sbx.db()
        .query_row("SELECT branch FROM tasks WHERE id=?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
}

#[test]
fn someone_elses_push_to_a_ready_branch_takes_that_task_out_and_the_rest_of_the_batch_lands() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    let ids = ready_each(&sbx, &["a", "b", "c", "d"]);
    let (b, c, d) = (ids[1], ids[2], ids[3]);
    // b, c: commits pushed on top of their branches. d: its branch
    // rewritten (someone force-pushed a history without d's commits).
    let b_branch = branch_of(&sbx, b);
    let other = someone_elses_clone(&sbx, &b_branch, "someone-else");
    let theirs = commit_as_someone_else(&other, "theirs.md");
    git_in(&other, &["push", "-q", "origin", &b_branch]);
    let c_branch = branch_of(&sbx, c);
    let other = someone_elses_clone(&sbx, &c_branch, "someone-else-c");
    let theirs_c = commit_as_someone_else(&other, "theirs-c.md");
    git_in(&other, &["push", "-q", "origin", &c_branch]);
    let d_branch = branch_of(&sbx, d);
    let d_head = sbx.origin_git(&["rev-parse", &d_branch]);
    let rewrite = someone_elses_clone(&sbx, "main", "someone-else-2");
    let rewritten = commit_as_someone_else(&rewrite, "rewritten.md");
    git_in(
        &rewrite,
        &["push", "-q", "-f", "origin", &format!("HEAD:{d_branch}")],
    );

    // A crash right after b's worktree took the commits in, before the
    // move: the next run still takes b out (its head is not what was
    // validated), c and d too, and lands a.
    let crash = sbx
        .orch_std()
        .args(["merge-gate"])
        .env("FAILPOINTS", "foreign.after_take_in=return")
        .output()
        .unwrap();
    assert!(!crash.status.success(), "{crash:?}");
    assert_eq!(sbx.stage(b), "deploy-staging");
    let out = sbx.orch().args(["--json", "merge-gate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let batch = &v["projects"][0]["batches"][0];
    assert_eq!(batch["landed"], json!([ids[0]]), "{v}");
    let out_ids: Vec<i64> = batch["taken_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[0].as_i64().unwrap())
        .collect();
    assert_eq!(out_ids, [b, c, d], "{v}");
    let why_out = |i: usize| batch["taken_out"][i][1].as_str().unwrap().to_string();
    assert!(
        why_out(0).contains("neither the revision validated before the line"),
        "{v}"
    );
    assert!(
        why_out(1).contains(&format!("someone else pushed to {c_branch}")),
        "{v}"
    );
    assert!(why_out(2).contains("someone else rewrote"), "{v}");
    assert_eq!(counter(&sbx, "merge_line.taken_out_total"), 3);
    assert!(sbx
        .ok(&["metrics"])
        .contains("orch_merge_line_taken_out_total 3"));
    // b goes back to deploy-staging with their commit in its worktree;
    // origin keeps it. d is escalated naming both heads; origin keeps the
    // rewrite.
    assert_eq!(sbx.stage(b), "deploy-staging");
    let last = sbx.transitions(b).last().unwrap().clone();
    assert_eq!(last.1, "deploy-staging");
    assert_eq!(sbx.origin_git(&["rev-parse", &b_branch]), theirs);
    assert_eq!(sbx.stage(c), "deploy-staging");
    assert_eq!(sbx.origin_git(&["rev-parse", &c_branch]), theirs_c);
    let c_worktree: String = sbx
        .db()
        .query_row("SELECT worktree FROM tasks WHERE id=?1", [c], |r| r.get(0))
        .unwrap();
    assert_eq!(
        git_in(std::path::Path::new(&c_worktree), &["rev-parse", "HEAD"]).trim(),
        theirs_c,
        "c's worktree took their commit"
    );
    let (escalated, why): (i64, String) = sbx
        .db()
        .query_row(
            "SELECT escalated, COALESCE(escalated_reason,'') FROM tasks WHERE id=?1",
            [d],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(escalated, 1);
    assert!(why.contains(&rewritten) && why.contains(&d_head), "{why}");
    assert_eq!(sbx.origin_git(&["rev-parse", &d_branch]), rewritten);
    // No loop: the next run has nothing to do and fails nothing.
    let out = sbx.orch().args(["merge-gate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing ready to merge"));

    // deploy-staging runs again on b's and c's new heads; then they land,
    // with their commits, validated this time.
    for id in [b, c] {
        let v = sbx.json(&["work-once", "--role", "deployer"]);
        assert_eq!(v["task_id"], id, "{v}");
        assert_eq!(v["finalized"]["action"], "waiting", "{v}");
    }
    let v = line(&sbx);
    assert_eq!(v["batches"][0]["landed"], json!([b, c]), "{v}");
    let tree = sbx.origin_git(&["ls-tree", "--name-only", "main"]);
    assert!(
        tree.contains("theirs.md") && tree.contains("theirs-c.md"),
        "{tree}"
    );
    assert!(!tree.contains("rewritten.md"), "{tree}");
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

/// Switches the sandbox's project to Gitea (`extra` added after the
/// `forge` line) and starts the fake, with the settings orch needs.
#[cfg(feature = "testing")]
fn on_gitea(sbx: &mut Sandbox, extra: &str) -> crate::fakes::FakeGitea {
    use crate::fakes::{FakeGitea, GITEA_TOKEN};
    let path = sbx.dir.join("orch.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        cfg.replace("forge = \"local\"", &format!("forge = \"gitea\"{}", extra)),
    )
    .unwrap();
    let gitea = FakeGitea::start(sbx.origin());
    sbx.set("ORCH_GITEA_URL", &gitea.url())
        .set("ORCH_GITEA_TOKEN", GITEA_TOKEN)
        .set("ORCH_HTTP_CONNECT_TIMEOUT_MS", "1000")
        .set("ORCH_HTTP_TIMEOUT_MS", "2000");
    gitea
}

#[cfg(feature = "testing")]
#[test]
fn a_gitea_merge_style_whose_merge_is_not_the_tested_tip_lands_nothing_and_says_which_setting() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    let ids = ready_each(&sbx, &["a", "b"]);
    let gitea = on_gitea(&mut sbx, "\nmerge_style = \"squash\"");
    let main = sbx.origin_git(&["rev-parse", "main"]);
    let branches: Vec<String> = ids
        .iter()
        .map(|id| sbx.origin_git(&["rev-parse", &format!("orch/widget-{id}")]))
        .collect();
    let tested = "SELECT COUNT(*) FROM ci_statuses WHERE context='orch/test'";
    let tests_before = sbx.count(tested);

    // The line: one clear error naming the project and the setting,
    // nothing built, tested, pushed or merged; a second run the same.
    for _ in 0..2 {
        let out = sbx.orch().args(["--json", "merge-gate"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let err = v["projects"][0]["error"].as_str().unwrap_or("").to_string();
        assert!(
            err.contains("projects.widget.merge_style")
                && err.contains("\"squash\"")
                && err.contains("fast-forward-only"),
            "{v}"
        );
        assert!(v["projects"][0]["batches"].as_array().unwrap().is_empty());
    }
    // A dry run says the same, and so does the by-hand gate (exit 2).
    let out = sbx
        .orch()
        .args(["--json", "merge-gate", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = sbx
        .orch()
        .args(["merge-gate", "--task", &ids[0].to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("projects.widget.merge_style"),
        "{out:?}"
    );
    assert!(gitea.server.lines().is_empty(), "Gitea was not asked");
    assert_eq!(sbx.origin_git(&["rev-parse", "main"]), main);
    for (id, head) in ids.iter().zip(&branches) {
        assert_eq!(sbx.stage(*id), "deploy-staging");
        assert_eq!(
            &sbx.origin_git(&["rev-parse", &format!("orch/widget-{id}")]),
            head,
            "the branch was not rebased"
        );
    }
    assert_eq!(sbx.count(tested), tests_before, "nothing tested");
    assert_eq!(sbx.count("SELECT COUNT(*) FROM leases"), 0);
    // `orch config check` fails on it before any of this.
    let out = sbx.orch().args(["config", "check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL project widget merge style")
                && l.contains("projects.widget.merge_style")),
        "{text}"
    );
    sbx.check_invariants();
}

/// [`ready`] on a Gitea project: the PRs are opened by `orch deliver`
/// (the outbox's open_pr messages), the development CI is what Gitea
/// answers reconcile.
#[cfg(feature = "testing")]
fn ready_on_gitea(sbx: &Sandbox, title: &str, env: &[(&str, &str)]) -> i64 {
    ready_by(sbx, title, env, &|| {
        sbx.json(&["deliver"]);
        sbx.json(&["reconcile"]);
    })
}

#[cfg(feature = "testing")]
#[test]
fn a_gitea_batch_of_prs_opened_in_the_same_run_lands_with_one_merge_and_a_missing_pr_dead_letters()
{
    use crate::fakes::Fault;

    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false")
        .set("ORCH_RECONCILE_GRACE_S", "0")
        // A message Gitea cannot take yet is a dead letter at once (the
        // run reports of the task whose PR is missing).
        .set("ORCH_OUTBOX_MAX_ATTEMPTS", "1");
    let gitea = on_gitea(&mut sbx, "");
    // Gitea's CI is green for every head it is asked about.
    gitea.state.lock().unwrap().success_after_polls = Some(0);
    // The first PR Gitea is asked to open is refused: task a's PR is
    // never opened (its open_pr message a dead letter).
    gitea.faults.push(
        "POST",
        "/repos/acme/widget/pulls",
        Fault::Status(
            403,
            json!({"message": "user should have permission to create a pull request"}),
            vec![],
        ),
    );
    let ids: Vec<i64> = ["a", "b", "c"]
        .iter()
        .map(|n| ready_on_gitea(&sbx, n, &env_of(&own_file(n))))
        .collect();
    let branches: Vec<String> = ids.iter().map(|id| branch_of(&sbx, *id)).collect();
    let open_pr = |id: i64| -> (String, String) {
        sbx.db()
            .query_row(
                "SELECT status, COALESCE(last_error,'') FROM outbox WHERE kind='open_pr' AND task_id=?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    assert_eq!(open_pr(ids[0]).0, "dead", "{:?}", open_pr(ids[0]));
    let prs = gitea.state.lock().unwrap().prs.clone();
    assert_eq!(
        prs.iter().map(|p| p.head.clone()).collect::<Vec<_>>(),
        branches[1..],
        "b's and c's PRs opened through the outbox, nothing pre-seeded"
    );

    // One batch, tested once; Gitea merges only the tip's PR (c), naming
    // the tested head; main is that head.
    gitea.server.clear();
    let v = line(&sbx);
    let b = &v["batches"][0];
    assert_eq!(b["tasks"], json!(ids), "{v}");
    assert_eq!(b["landed"], json!(ids), "{v}");
    assert_eq!(b["tests"], 1, "{v}");
    let main = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(b["tip"], main.as_str(), "{v}");
    assert_eq!(main, sbx.origin_git(&["rev-parse", &branches[2]]));
    let merges: Vec<String> = gitea
        .server
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("POST ") && l.ends_with("/merge"))
        .collect();
    let c_pr = prs[1].number;
    assert_eq!(merges, [format!("POST {GITEA_API}/pulls/{c_pr}/merge")]);
    let body = gitea.state.lock().unwrap().prs[1]
        .merge_body
        .clone()
        .unwrap();
    assert_eq!(body["Do"], "fast-forward-only");
    assert_eq!(body["head_commit_id"], main.as_str());
    for id in &ids {
        assert_eq!(sbx.stage(*id), "deploy");
    }

    // The others' PRs are marked merged by `orch deliver`: b's by main's
    // commit; a has no PR: a dead letter saying so, once.
    for _ in 0..3 {
        sbx.json(&["deliver"]);
    }
    let prs = gitea.state.lock().unwrap().prs.clone();
    assert!(prs.iter().all(|p| p.merged), "{prs:?}");
    let mark = prs[0].merge_body.clone().unwrap();
    assert_eq!(mark["Do"], "manually-merged");
    assert_eq!(mark["MergeCommitID"], main.as_str());
    let marks: Vec<(i64, String, String)> = {
        let db = sbx.db();
        let mut st = db
            .prepare(
                "SELECT task_id, status, COALESCE(last_error,'') FROM outbox \
                 WHERE kind='mark_merged' ORDER BY task_id",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(marks.len(), 2, "none for the tip: {marks:?}");
    assert_eq!((marks[1].0, marks[1].1.as_str()), (ids[1], "delivered"));
    assert_eq!((marks[0].0, marks[0].1.as_str()), (ids[0], "dead"));
    assert!(
        marks[0].2.starts_with("permanent: ")
            && marks[0]
                .2
                .contains(&format!("no pull request for {}", branches[0]))
            && marks[0].2.contains(&main),
        "a dead letter at once, with the reason: {marks:?}"
    );
    let mark_calls = gitea
        .server
        .lines()
        .iter()
        .filter(|l| l.ends_with("/merge"))
        .count();
    assert_eq!(mark_calls, 2, "the tip's merge and b's mark; none for a");
    assert!(sbx.origin_git(&["rev-list", "--merges", "main"]).is_empty());
    assert_main_always_green(&sbx);
    sbx.check_invariants();
}

#[test]
fn a_push_while_a_task_awaits_the_staging_check_is_taken_in_and_staged_again_never_dropped() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_GATE_ENABLED", "false");
    // A staging instance that is never reached: the head check comes
    // before the suite.
    sbx.append_config(&format!(
        "\n[projects.staging]\nurl = \"http://127.0.0.1:9\"\ndb = \"{}\"\nconfig = \"{}\"\ntimeout_s = 1\n",
        sbx.dir.join("staging.db").display(),
        sbx.dir.join("staging.toml").display()
    ));
    let ids = ready_each(&sbx, &["a", "b"]);
    let (a, b) = (ids[0], ids[1]);
    let a_branch = branch_of(&sbx, a);
    let passed = sbx.origin_git(&["rev-parse", &a_branch]);
    let other = someone_elses_clone(&sbx, &a_branch, "someone-else");
    let theirs = commit_as_someone_else(&other, "theirs.md");
    git_in(&other, &["push", "-q", "origin", &a_branch]);
    let b_branch = branch_of(&sbx, b);
    let rewrite = someone_elses_clone(&sbx, "main", "someone-else-2");
    let rewritten = commit_as_someone_else(&rewrite, "rewritten.md");
    git_in(
        &rewrite,
        &["push", "-q", "-f", "origin", &format!("HEAD:{b_branch}")],
    );

    let out = sbx.orch().args(["merge-gate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // a: their commit taken into the worktree, deploy-staging again.
    let t = sbx.transitions(a);
    assert_eq!(t.last().unwrap().1, "deploy-staging");
    let reason: String = sbx
        .db()
        .query_row(
            "SELECT reason FROM transitions WHERE task_id=?1 ORDER BY id DESC LIMIT 1",
            [a],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        reason.starts_with(&format!("staging check: someone else pushed to {a_branch}")),
        "{reason}"
    );
    let wt: String = sbx
        .db()
        .query_row("SELECT worktree FROM tasks WHERE id=?1", [a], |r| r.get(0))
        .unwrap();
    assert_eq!(
        git_in(std::path::Path::new(&wt), &["rev-parse", "HEAD"]).trim(),
        theirs
    );
    // b: escalated; origin keeps the rewrite.
    let escalated: i64 = sbx.count(&format!("SELECT escalated FROM tasks WHERE id={b}"));
    assert_eq!(escalated, 1);
    assert_eq!(sbx.origin_git(&["rev-parse", &b_branch]), rewritten);

    // The deployer runs again on a's new head and pushes nothing away: the
    // staging check now awaits that head.
    let v = sbx.json(&["work-once", "--role", "deployer"]);
    assert_eq!(v["task_id"], a, "{v}");
    let why = v["finalized"]["reason"].as_str().unwrap_or("").to_string();
    assert!(
        why.contains(&format!("awaiting the staging check of {theirs}")),
        "{v}"
    );
    assert_ne!(theirs, passed);
    assert_eq!(sbx.origin_git(&["rev-parse", &a_branch]), theirs);
    sbx.check_invariants();
}

/// The deployer's finalize follows the one rule for someone else's push
/// (DESIGN §7): a commit pushed on top of the task branch while its
/// deployer runs is kept — origin is never force-pushed back — taken into
/// the worktree, and the task runs deploy-staging again; the next
/// deployer validates the new head and the line lands it.
#[test]
fn someone_elses_push_while_the_deployer_runs_is_kept_and_staged_again() {
    let (sbx, id, branch) = deployer_queued("kept");
    let version = sbx.count(&format!("SELECT version FROM tasks WHERE id={id}"));
    let theirs = deployer_running_while(&sbx, || {
        let other = someone_elses_clone(&sbx, &branch, "someone-else");
        let theirs = commit_as_someone_else(&other, "theirs.md");
        git_in(&other, &["push", "-q", "origin", &branch]);
        theirs
    });

    // Kept on origin, taken into the worktree, deploy-staging again.
    assert_eq!(
        sbx.origin_git(&["rev-parse", &branch]),
        theirs,
        "not overwritten"
    );
    let worktree = sbx.worktree(id);
    assert_eq!(git_in(&worktree, &["rev-parse", "HEAD"]), theirs);
    assert_eq!(sbx.stage(id), "deploy-staging");
    assert_eq!(
        sbx.count(&format!("SELECT version FROM tasks WHERE id={id}")),
        version + 1,
        "restaged"
    );
    let last = sbx.transitions(id).last().unwrap().clone();
    assert_eq!(
        (last.0.as_deref(), last.1.as_str()),
        (Some("deploy-staging"), "deploy-staging")
    );
    let why = sbx.ok(&["why", &id.to_string()]);
    assert!(
        why.contains(&format!(
            "deployer's finalize: someone else pushed to {branch}"
        )),
        "{why}"
    );
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE task_id={id} AND stage='deploy-staging' AND status='queued'"
        )),
        1,
        "the next deployer is queued"
    );

    // The next deployer validates their commit; the line lands it.
    let v = sbx.json(&["work-once", "--role", "deployer"]);
    assert_eq!(v["finalized"]["action"], "waiting", "{v}");
    assert_eq!(sbx.origin_git(&["rev-parse", &branch]), theirs);
    let p = line(&sbx);
    assert_eq!(p["batches"][0]["landed"], json!([id]), "{p}");
    assert_eq!(
        sbx.origin_git(&["show", "main:theirs.md"]),
        "not validated",
        "their commit landed, validated"
    );
    sbx.check_invariants();
}

/// A sandbox (outside /tmp: the agent's gate file must be visible in its
/// sandbox) with one task, `title`, at deploy-staging, its deployer
/// queued; the task's id and branch.
fn deployer_queued(title: &str) -> (Sandbox, i64, String) {
    let sbx = Sandbox::new_in(std::path::Path::new("/var/tmp/orch-tests"));
    let ci = || {
        let o = sbx.orch_std().args(["ci"]).output().unwrap();
        assert!(o.status.success(), "{o:?}");
    };
    let id = at_deploy_staging(&sbx, title, &[], &ci);
    let branch = branch_of(&sbx, id);
    (sbx, id, branch)
}

/// Runs the queued deployer, doing `meanwhile` while its agent runs;
/// returns what `meanwhile` returned once the deployer's `work-once`
/// finished.
fn deployer_running_while(sbx: &Sandbox, meanwhile: impl FnOnce() -> String) -> String {
    let gate = sbx.dir.join("deployer-may-go");
    let mut deployer = sbx.spawn(
        &["work-once", "--role", "deployer"],
        &[("FAKE_AGENT_WAIT_FOR", gate.to_str().unwrap())],
    );
    wait_until(30, "the deployer to run", || {
        sbx.count(
            "SELECT COUNT(*) FROM jobs WHERE stage='deploy-staging' AND status='running' \
             AND agent_pid IS NOT NULL",
        ) == 1
    });
    let out = meanwhile();
    std::fs::write(&gate, "").unwrap();
    assert!(deployer.wait().unwrap().success());
    out
}

/// A deployer's branch someone rewrote while it ran is not force-pushed
/// back either: its finalize escalates the task naming both heads, and
/// origin keeps the rewrite.
#[test]
fn someone_elses_rewrite_while_the_deployer_runs_is_kept_and_escalated() {
    let (sbx, id, branch) = deployer_queued("rewritten");
    let rewritten = deployer_running_while(&sbx, || {
        let rewrite = someone_elses_clone(&sbx, "main", "someone-else");
        let rewritten = commit_as_someone_else(&rewrite, "rewritten.md");
        git_in(
            &rewrite,
            &["push", "-q", "-f", "origin", &format!("HEAD:{branch}")],
        );
        rewritten
    });
    assert_eq!(
        sbx.origin_git(&["rev-parse", &branch]),
        rewritten,
        "not overwritten"
    );
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM tasks WHERE id={id} AND stage='deploy-staging' AND escalated=1"
        )),
        1,
        "escalated"
    );
    let why = sbx.ok(&["why", &id.to_string()]);
    assert!(
        why.contains(&format!(
            "deployer's finalize: someone else rewrote {branch}"
        )),
        "{why}"
    );
    sbx.check_invariants();
}
