//! `orch staging-check` against a real second orch instance: `orch serve`
//! on its own port and database (the Sandbox fixture), its ingest running
//! as its timer would, and — for a Plane project — the fake Plane.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fakes::{sandbox_with_plane, PLANE_PROJECT};
use crate::util::*;

/// The checks in report order.
const IDS: [&str; 11] = [
    "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9a", "C9b", "C10",
];

/// Runs `body` while the instance's ingest runs every 100 ms, as its
/// systemd timer would (only ingest: the worker stays off, so "no agent
/// ran" is decided by the cancellation, checked afterwards).
fn with_ingest<T>(sbx: &Sandbox, body: impl FnOnce() -> T) -> T {
    /// Stops the loop when `body` returns or panics (else the scope would
    /// wait for it forever).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let _ = sbx.orch_std().arg("ingest").output();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let _stop = Stop(&stop);
        body()
    })
}

/// `orch --json staging-check --url URL ARGS` with `env` added: (exit
/// code, verdict JSON, stderr).
fn check(sbx: &Sandbox, url: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, Value, String) {
    let mut a = vec!["--json", "staging-check", "--url", url, "--timeout-s", "20"];
    a.extend_from_slice(args);
    let out = sbx
        .orch()
        .args(&a)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

fn status<'a>(v: &'a Value, id: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {v:#}"))["status"]
        .as_str()
        .unwrap()
}

fn statuses(v: &Value) -> Vec<(String, String)> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The synthetic task of a run, its final state and whether any of its
/// jobs was ever claimed.
fn assert_cancelled_without_agent(sbx: &Sandbox, task: i64) {
    let (stage, escalated): (String, bool) = sbx
        .db()
        .query_row(
            "SELECT stage, escalated FROM tasks WHERE id=?1",
            [task],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((stage.as_str(), escalated), ("analysis", true));
    let (actor, reason): (String, String) = sbx
        .db()
        .query_row(
            "SELECT actor, reason FROM transitions WHERE task_id=?1 ORDER BY version DESC LIMIT 1",
            [task],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (actor.as_str(), reason.as_str()),
        ("human", "staging-check")
    );
    let jobs = sbx.count(&format!(
        "SELECT COUNT(*) FROM jobs WHERE task_id={task} AND stage='analysis' AND role='analyst' AND status='cancelled' AND claimed_at_ms IS NULL"
    ));
    assert_eq!(jobs, 1, "its analyst job, cancelled unclaimed");
    // The instance's worker comes by: nothing to run for the task.
    sbx.ok(&["work-once"]);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM agent_runs"),
        0,
        "no agent ran"
    );
    assert_eq!(
        sbx.count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE task_id={task} AND status IN ('queued','running')"
        )),
        0
    );
}

#[test]
fn a_healthy_instance_passes_every_check_and_a_wrong_secret_or_revision_fails() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let url = format!("http://{}", server.addr);

    // /healthz and --version name the commit and the schema.
    let (code, body) = server.request("GET", "/healthz", &[], b"").unwrap();
    assert_eq!(code, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["commit"], orch::build_info::COMMIT);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["schema"], orch::db::schema_version());
    let version = sbx.ok(&["--version"]);
    assert!(
        version.contains(orch::build_info::COMMIT)
            && version.contains(&format!("schema {}", orch::db::schema_version())),
        "{version}"
    );

    with_ingest(&sbx, || {
        let (code, v, stderr) = check(&sbx, &url, &[], &[]);
        assert_eq!(code, 0, "{v:#}\n{stderr}");
        assert_eq!(v["verdict"], "PASS");
        let ids: Vec<String> = statuses(&v).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, IDS, "every check, in order");
        for c in v["checks"].as_array().unwrap() {
            assert_eq!(c["status"], "PASS", "{c:#}");
            assert!(!c["reason"].as_str().unwrap().is_empty());
            assert!(c["duration_ms"].is_u64());
            assert_eq!(c["waived"], false);
        }
        assert_eq!(v["revision"], orch::build_info::COMMIT);
        assert_eq!(v["url"], url.as_str());
        assert_eq!(v["project"], "widget");
        assert!(v["started_at_ms"].as_i64().unwrap() <= v["finished_at_ms"].as_i64().unwrap());
        let task = v["task_id"].as_i64().unwrap();

        // Nothing stored by C5–C7: the inbox holds C8's probe and C9a's
        // synthetic delivery only.
        let db = sbx.db();
        let stored: Vec<String> = db
            .prepare("SELECT delivery_id FROM inbox ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored.len(), 2, "{stored:?}");
        assert!(
            stored[0].ends_with("-c8") && stored[1].ends_with("-c9a"),
            "{stored:?}"
        );
        assert_cancelled_without_agent(&sbx, task);

        // A stale build: the revision differs → C2 FAIL, exit 3.
        let (code, v, _) = check(
            &sbx,
            &url,
            &[
                "--expect-revision",
                "0123456789abcdef0123456789abcdef01234567",
            ],
            &[],
        );
        assert_eq!(code, 3, "{v:#}");
        assert_eq!(v["verdict"], "FAIL");
        assert_eq!(status(&v, "C2"), "FAIL");
        let failed: Vec<_> = statuses(&v)
            .into_iter()
            .filter(|(_, s)| s != "PASS")
            .collect();
        assert_eq!(failed, [("C2".to_string(), "FAIL".to_string())]);
        // The right one (a 12-digit prefix) passes.
        let short = &orch::build_info::COMMIT[..12.min(orch::build_info::COMMIT.len())];
        if orch::build_info::COMMIT != "unknown" {
            let (code, v, _) = check(&sbx, &url, &["--expect-revision", short], &[]);
            assert_eq!((code, status(&v, "C2")), (0, "PASS"), "{v:#}");
        }

        // The checker's secret is not the instance's: FAIL, exit 3, and
        // still nothing stored for the refused deliveries.
        let before = sbx.count("SELECT COUNT(*) FROM inbox");
        let (code, v, _) = check(
            &sbx,
            &url,
            &[],
            &[("ORCH_PLANE_WEBHOOK_SECRET", "not-the-staging-secret")],
        );
        assert_eq!(code, 3, "{v:#}");
        assert_eq!(v["verdict"], "FAIL");
        for (id, want) in [
            ("C5", "PASS"),
            ("C6", "PASS"),
            ("C7", "PASS"),
            ("C8", "FAIL"),
            ("C9a", "FAIL"),
        ] {
            assert_eq!(status(&v, id), want, "{id}: {v:#}");
        }
        let c8 = &v["checks"].as_array().unwrap()[7];
        assert!(
            c8["reason"].as_str().unwrap().contains("secrets differ"),
            "{c8}"
        );
        assert_eq!(sbx.count("SELECT COUNT(*) FROM inbox"), before);
    });
    drop(server);
    sbx.check_invariants();
}

#[test]
fn a_plane_state_id_unlike_any_other_is_resolved_not_hard_coded() {
    // The old incident: the sandbox project's In Progress state has an id
    // unlike the fixture's and every other project's (here also its own
    // name). The check resolves it through Plane's states API.
    let (sbx, plane) = sandbox_with_plane();
    let fresh = "0f5e1d2c-3b4a-4c5d-8e6f-7a8b9c0d1e2f";
    {
        let mut st = plane.state.lock().unwrap();
        let s = st
            .states
            .iter_mut()
            .find(|s| s["name"] == "In Progress")
            .unwrap();
        s["id"] = fresh.into();
        s["name"] = "Agent Working".into();
    }
    sbx.append_config(&format!(
        "\n[projects.state_names]\nin_progress = \"Agent Working\"\n\n\
         [[projects]]\nname = \"other\"\ntracker = \"local\"\n\
         tracker_project_id = \"11111111-2222-4333-8444-555555555555\"\n\
         clone_url = \"{}\"\ntest_command = [\"true\"]\n\
         [projects.states]\nin_progress = \"3e237c0a-e2cb-4c24-bad9-ca246ba03ff2\"\n",
        sbx.origin().display()
    ));
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let url = format!("http://{}", server.addr);
    with_ingest(&sbx, || {
        let (code, v, stderr) = check(&sbx, &url, &["--project", "widget"], &[]);
        assert_eq!(code, 0, "{v:#}\n{stderr}");
        assert!(statuses(&v).iter().all(|(_, s)| s == "PASS"), "{v:#}");
        // The synthetic delivery carried the resolved id.
        let body: Vec<u8> = sbx
            .db()
            .query_row(
                "SELECT body FROM inbox WHERE delivery_id LIKE '%-c9a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["data"]["state"]["id"], fresh);
        assert_eq!(body["data"]["project"], PLANE_PROJECT);
        assert_cancelled_without_agent(&sbx, v["task_id"].as_i64().unwrap());
    });
    assert!(
        plane.server.lines().iter().any(|l| l.ends_with("/states/")),
        "the states were asked: {:?}",
        plane.server.lines()
    );
}

#[test]
fn a_dry_run_reads_c1_to_c4_lists_what_c5_to_c10_would_do_and_writes_nothing() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let url = format!("http://{}", server.addr);
    let before = sbx.dump();
    let (code, v, stderr) = check(&sbx, &url, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{v:#}\n{stderr}");
    assert_eq!(v["verdict"], "PASS");
    assert_eq!(v["dry_run"], true);
    let ran: Vec<String> = statuses(&v).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ran, IDS[..4], "{v:#}");
    let planned: Vec<&str> = v["planned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(planned, IDS[4..], "{v:#}");
    let c9a = &v["planned"][4]["would"];
    assert!(
        c9a.as_str()
            .unwrap()
            .contains("the state would be \"In Progress\""),
        "the state is resolved, not assumed: {c9a}"
    );
    assert_eq!(sbx.dump(), before, "a dry run wrote to the instance");
    assert_eq!(v["task_id"], Value::Null);

    // Text: the dry-run note, C1–C4 with their status, the rest as "would".
    let out = sbx
        .orch()
        .args(["staging-check", "--url", &url, "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("dry run: nothing was written"), "{text}");
    assert!(text.contains("  C10  cleanup      would: "), "{text}");
    assert!(text.contains("verdict of C1–C4: PASS"), "{text}");

    // The verdict is C1–C4's: a wrong revision still fails a dry run.
    let (code, v, _) = check(
        &sbx,
        &url,
        &["--dry-run", "--expect-revision", "0000000"],
        &[],
    );
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(status(&v, "C2"), "FAIL");
    assert_eq!(sbx.dump(), before);
}

#[test]
fn an_instance_that_is_down_is_infra_and_a_waiver_makes_it_pass() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, v, _) = check(&sbx, &url, &[], &[]);
    assert_eq!(code, 75, "{v:#}");
    assert_eq!(v["verdict"], "INFRA");
    assert_eq!(status(&v, "C1"), "INFRA");
    assert!(v["revision"].is_null());
    let infra: Vec<String> = statuses(&v)
        .into_iter()
        .filter(|(_, s)| s == "INFRA")
        .map(|(id, _)| id)
        .collect();
    assert!(statuses(&v).iter().all(|(_, s)| s != "FAIL"), "{v:#}");

    // Waived (from the environment): PASS, exit 0, each marked waived.
    let (code, v, _) = check(&sbx, &url, &[], &[("ORCH_STAGING_WAIVE", &infra.join(","))]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["verdict"], "PASS");
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["waived"], c["status"] == "INFRA", "{c}");
    }
    // Waiving all but one still leaves INFRA.
    let (code, _, _) = check(&sbx, &url, &["--waive", &infra[1..].join(",")], &[]);
    assert_eq!(code, 75);
    // An unknown check id is a usage error.
    let out = sbx
        .orch()
        .args(["staging-check", "--url", &url, "--waive", "C1,C42"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("C42"));
    assert_eq!(sbx.count("SELECT COUNT(*) FROM inbox"), 0);
}

#[test]
fn help_explains_checks_verdicts_and_exit_codes() {
    let sbx = Sandbox::new();
    let help = sbx.ok(&["staging-check", "--help"]);
    for want in [
        "C1",
        "C9a",
        "C10",
        "PASS",
        "FAIL",
        "INFRA",
        "Exit codes",
        "75",
        "--waive",
        "ORCH_STAGING_WAIVE",
        "--expect-revision",
    ] {
        assert!(help.contains(want), "--help lacks {want}:\n{help}");
    }
}

/// Runs every role but the deployer, and the CI step, until task `id`
/// waits at deploy-staging with its job queued.
fn to_deploy_staging(sbx: &Sandbox, id: i64) {
    for _ in 0..10 {
        if sbx.stage(id) == "deploy-staging" {
            return;
        }
        for role in ["analyst", "architect", "developer", "reviewer", "tester"] {
            sbx.ok(&["work-once", "--role", role]);
        }
        sbx.ok(&["ci"]);
    }
    panic!("task {id} never reached deploy-staging");
}

/// Starts the staging instance's shim on `addr`, reporting `commit` as
/// the revision it was deployed from; waits for /healthz.
fn serve_staging(stg: &Sandbox, addr: &str, commit: &str) -> Server {
    let child = stg.spawn(
        &["serve", "--bind", addr],
        &[("ORCH_TESTING_COMMIT", commit)],
    );
    let server = Server {
        child,
        addr: addr.to_string(),
        admin: stg.admin(),
    };
    wait_until(20, "the staging shim to answer /healthz", || {
        matches!(server.request("GET", "/healthz", &[], b""), Ok((200, _)))
    });
    server
}

fn last_transition(sbx: &Sandbox, id: i64) -> (String, String) {
    sbx.db()
        .query_row(
            "SELECT to_stage, reason FROM transitions WHERE task_id=?1 ORDER BY version DESC LIMIT 1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn the_staging_step_defers_on_infra_rolls_back_on_fail_and_makes_the_validated_revision_ready() {
    // Production, whose project widget names a staging instance of orch:
    // a second sandbox with its own state, port, database and config.
    let mut prod = Sandbox::new();
    let stg = Sandbox::new();
    stg.ok(&["init"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Staging has its own webhook secrets: the suite signs with those of
    // its env_file, not production's.
    prod.append_config(&format!(
        "\n[projects.staging]\nurl = \"http://{addr}\"\ndb = \"{}\"\nconfig = \"{}\"\ntimeout_s = 15\nenv_file = \"{}\"\n",
        stg.db_path().display(),
        stg.dir.join("orch.toml").display(),
        stg.dir.join("orch.env").display()
    ));
    prod.set("ORCH_STAGING_CHECK_INFRA_BACKOFF_S", "0")
        .set("ORCH_PLANE_WEBHOOK_SECRET", "production-plane-secret")
        .set("ORCH_GITEA_WEBHOOK_SECRET", "production-gitea-secret");
    prod.ok(&["init"]);
    let id = prod.add_issue("a change staging validates");
    to_deploy_staging(&prod, id);
    let job = prod.count(&format!(
        "SELECT id FROM jobs WHERE task_id={id} AND stage='deploy-staging'"
    ));

    // 1. The deployer passes: its job is done and the task awaits the
    //    staging check of the head it passed (finalize runs no suite).
    //    Staging is down: the line's staging step answers INFRA, the task
    //    stays awaiting (counted, not an attempt), the deployer's PASS
    //    stands.
    let wt: String = prod
        .db()
        .query_row("SELECT worktree FROM tasks WHERE id=?1", [id], |r| r.get(0))
        .unwrap();
    let head_of = || git_in(std::path::Path::new(&wt), &["rev-parse", "HEAD"]);
    let v = prod.json(&["work-once", "--role", "deployer"]);
    assert_eq!(v["finalized"]["action"], "waiting", "{v:#}");
    let first = head_of();
    assert!(
        v["finalized"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("awaiting the staging check of {first}")),
        "{v:#}"
    );
    assert!(prod
        .ok(&["why", &id.to_string()])
        .contains(&format!("the staging check of {first}")));
    // `orch status` shows it before the line, awaiting the check.
    let st = prod.json(&["status"]);
    assert_eq!(
        st["merge_line"][0]["awaiting_staging"],
        json!([id]),
        "{st:#}"
    );
    assert_eq!(st["merge_line"][0]["tasks"], json!([]), "{st:#}");
    assert!(
        prod.ok(&["status"])
            .contains(&format!("awaiting the staging check: {id}")),
        "status names the task awaiting the staging check"
    );
    // And the metrics count it, apart from the tasks ready to merge.
    let metrics = prod.ok(&["metrics"]);
    assert!(
        metrics.contains("orch_merge_line_awaiting_staging{project=\"widget\"} 1")
            && !metrics.contains("orch_merge_line_waiting{project=\"widget\"}"),
        "{metrics}"
    );
    // The INFRA backoff's old setting name is still read, with a warning.
    let out = prod
        .orch()
        .env_remove("ORCH_STAGING_CHECK_INFRA_BACKOFF_S")
        .env("ORCH_MERGE_GATE_DEFER_S", "0")
        .args(["status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "ORCH_MERGE_GATE_DEFER_S is deprecated: set ORCH_STAGING_CHECK_INFRA_BACKOFF_S instead"
        ),
        "{out:?}"
    );
    let step = prod.ok(&["merge-gate"]);
    assert!(step.contains("staging-check INFRA"), "{step}");
    assert_eq!(prod.stage(id), "deploy-staging");
    assert_eq!(
        prod.count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE id={job} AND status='done' AND attempt=1"
        )),
        1
    );
    assert_eq!(
        prod.count(&format!(
            "SELECT COUNT(*) FROM merge_line WHERE task_id={id} AND state='staging' AND staging_defers=1"
        )),
        1
    );
    assert_eq!(
        prod.count(&format!(
            "SELECT COUNT(*) FROM verdicts WHERE job_id={job} AND source='staging' AND verdict='INFRA'"
        )),
        1
    );
    let why = prod.json(&["why", &id.to_string()]);
    assert_eq!(why["waiting"]["kind"], "staging_check", "{why}");
    assert_eq!(why["waiting"]["defers"], 1, "{why}");

    with_ingest(&stg, || {
        // 2. Staging runs, but not the task's revision (a stale deploy):
        //    FAIL → back to development with the failed checks as the reason.
        let stale = serve_staging(&stg, &addr, "0123456789abcdef0123456789abcdef01234567");
        prod.ok(&["merge-gate"]);
        let (to, reason) = last_transition(&prod, id);
        assert_eq!(to, "development", "{reason}");
        assert!(
            reason.starts_with("staging-check FAIL on ") && reason.contains("C2 provenance"),
            "{reason}"
        );
        assert_eq!(reason.lines().count(), 2, "only C2 failed: {reason}");
        assert_eq!(
            prod.count(&format!(
                "SELECT COUNT(*) FROM agent_runs WHERE job_id={job}"
            )),
            1,
            "the staging step did not run the deployer again"
        );
        drop(stale);

        // 3. Back at deploy-staging; the deployer deploys the head to
        //    staging and staging validates it: the task is ready to merge,
        //    its validated revision recorded. Main moved meanwhile: the
        //    merge line catches up, re-tests the combination and lands it.
        to_deploy_staging(&prod, id);
        // The developer's rework run was told which checks failed.
        let (dev_job, dev_attempt): (i64, i64) = prod
            .db()
            .query_row(
                "SELECT job_id, attempt FROM agent_runs WHERE role='developer' ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let prompt = prod.prompt_of_run(dev_job, dev_attempt);
        assert!(
            prompt.contains("staging-check FAIL") && prompt.contains("C2 provenance"),
            "{prompt}"
        );
        let validated = head_of();
        prod.push_to_main("OTHER.md", "another developer's change");
        let staging = serve_staging(&stg, &addr, &validated);
        let v = prod.json(&["work-once", "--role", "deployer"]);
        assert_eq!(v["finalized"]["action"], "waiting", "{v:#}");
        assert_eq!(prod.stage(id), "deploy-staging");
        let recorded: String = prod
            .db()
            .query_row(
                "SELECT validated FROM merge_line WHERE task_id=?1 AND state='staging'",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(recorded, validated);

        // 4. The line's staging step validates it (ready, the validated
        //    revision kept), then the line lands it: main at the caught-up
        //    head, which it tested (the revision staging validated plus
        //    main's change).
        let step = prod.ok(&["merge-gate"]);
        assert!(
            step.contains(&format!(
                "staging check PASS on {validated}; ready to merge"
            )),
            "{step}"
        );
        drop(staging);
        let recorded: String = prod
            .db()
            .query_row(
                "SELECT validated FROM merge_line WHERE task_id=?1 AND state='landed'",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(recorded, validated);
        let (to, reason) = last_transition(&prod, id);
        assert_eq!(to, "deploy", "{reason}");
        let head = head_of();
        assert_ne!(head, validated);
        assert_eq!(prod.origin_git(&["rev-parse", "main"]), head);
        assert_eq!(
            prod.db()
                .query_row(
                    "SELECT state FROM ci_statuses WHERE sha=?1 AND context='orch/test'",
                    [&head],
                    |r| r.get::<_, String>(0),
                )
                .unwrap(),
            "success"
        );
        let summary: String = prod
            .db()
            .query_row(
                "SELECT summary FROM verdicts WHERE task_id=?1 AND source='staging' AND verdict='PASS' ORDER BY id DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            summary.starts_with(&format!("PASS on {validated}")),
            "{summary}"
        );
    });
    prod.check_invariants();
}

#[test]
fn a_deploy_staging_finalize_makes_no_request_to_staging_only_the_line_step_does() {
    // The staging instance is a bare listener that counts connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stg = Sandbox::new();
    stg.ok(&["init"]);
    let prod = Sandbox::new();
    prod.append_config(&format!(
        "\n[projects.staging]\nurl = \"http://{addr}\"\ndb = \"{}\"\nconfig = \"{}\"\ntimeout_s = 5\n",
        stg.db_path().display(),
        stg.dir.join("orch.toml").display(),
    ));
    prod.ok(&["init"]);
    let id = prod.add_issue("a change staging validates");
    to_deploy_staging(&prod, id);
    let v = prod.json(&["work-once", "--role", "deployer"]);
    assert_eq!(v["finalized"]["action"], "waiting", "{v:#}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "finalize connected to the staging instance"
    );
    assert_eq!(
        prod.count("SELECT COUNT(*) FROM verdicts WHERE source='staging'"),
        0
    );

    // The line's step does connect; closing the connection is INFRA.
    let mut step = prod.orch_std().arg("merge-gate").spawn().unwrap();
    wait_until(30, "the staging step to connect", || {
        listener.accept().is_ok()
    });
    drop(listener);
    assert!(step.wait().unwrap().success());
    assert_eq!(
        prod.count("SELECT COUNT(*) FROM verdicts WHERE source='staging' AND verdict='INFRA'"),
        1
    );
    assert_eq!(prod.stage(id), "deploy-staging");
}
