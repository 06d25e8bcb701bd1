//! `orch why TASK` (issue 16): every transition with its cause, and the one
//! thing a task that is not moving waits for — asserted on `--json` after
//! real pipeline runs with the fake agent.

use std::process::Stdio;

use serde_json::Value;

use crate::util::*;

const IN_PROGRESS: &str = "plane/webhooks/issue-updated-state-in-progress.json";

fn why(sbx: &Sandbox, id: i64) -> Value {
    sbx.json(&["why", &id.to_string()])
}

fn kind(v: &Value) -> &str {
    v["waiting"]["kind"].as_str().unwrap_or("?")
}

/// Every transition of task `id` is in the chain, in order, with a cause
/// of the kind its actor implies.
fn assert_full_chain(sbx: &Sandbox, id: i64, v: &Value) {
    let rows = sbx.transitions(id);
    let chain = v["chain"].as_array().unwrap();
    assert_eq!(chain.len(), rows.len(), "{v}");
    for ((from, to, actor), link) in rows.iter().zip(chain) {
        assert_eq!(link["from"].as_str(), from.as_deref(), "{link}");
        assert_eq!(link["to"], to.as_str(), "{link}");
        assert_eq!(link["actor"], actor.as_str(), "{link}");
        let expected = match actor.as_str() {
            "worker" | "reaper" => "job",
            "webhook" => "delivery",
            "reconciler" => "reconcile_pass",
            _ => "human",
        };
        assert_eq!(link["cause"]["kind"], expected, "{link}");
    }
}

#[test]
fn a_finished_task_waits_for_nothing_and_its_chain_names_every_cause() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    // Created by a Plane delivery: the first move names that delivery.
    let out = sbx.json(&[
        "ingest",
        "--source",
        "plane",
        "--event",
        "issue",
        "--file",
        &format!("{ROOT}/tests/fixtures/{IN_PROGRESS}"),
    ]);
    assert_eq!(out["outcome"], "created task 1", "{out}");
    sbx.tick_until(25, |s| s.stage(1) == "done");

    let v = why(&sbx, 1);
    assert_eq!(kind(&v), "done", "{v}");
    assert_full_chain(&sbx, 1, &v);
    let chain = v["chain"].as_array().unwrap();
    let first = &chain[0]["cause"];
    assert_eq!(first["source"], "plane", "{first}");
    assert_eq!(first["event"], "issue", "{first}");
    assert!(first["inbox_id"].as_i64().is_some(), "{first}");
    assert_eq!(first["outcome"], "created task 1", "{first}");
    assert_eq!(chain[0]["moved_because"], "work-item-started", "{v}");
    // Each worker move names its job, the run's exit and, where the stage
    // has one, the verdict; each passed its stage's gate.
    for link in chain.iter().filter(|l| l["actor"] == "worker") {
        assert_eq!(link["moved_because"], "gate-passed", "{link}");
        let c = &link["cause"];
        assert_eq!(c["exit_code"], 0, "{link}");
        assert_eq!(c["success"], true, "{link}");
        assert_eq!(c["stage"], link["from"], "{link}");
    }
    let review = chain
        .iter()
        .find(|l| l["from"] == "review" && l["actor"] == "worker")
        .expect("a review move");
    assert_eq!(review["cause"]["verdict"], "APPROVE", "{review}");

    let text = sbx.ok(&["why", "1"]);
    assert!(text.contains("waits for: nothing: done"), "{text}");
    assert!(
        text.contains("work-item-started, caused by delivery inbox"),
        "{text}"
    );
    assert!(text.contains("verdict APPROVE"), "{text}");
}

#[test]
fn queued_running_awaiting_approval_then_escalated_by_a_human() {
    let sbx = Sandbox::new();
    // A project whose analysis waits for a human.
    let cfg = sbx.dir.join("orch.toml");
    let s = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, s.replace("auto_approve_analysis = true\n", "")).unwrap();
    let id = sbx.add_issue("needs a human");

    let v = why(&sbx, id);
    assert_eq!(kind(&v), "job_queued", "{v}");
    assert_eq!(v["waiting"]["role"], "analyst", "{v}");
    assert!(v["waiting"]["available_at_ms"].as_i64().is_some(), "{v}");
    assert_eq!(v["chain"][0]["cause"]["command"], "orch issue add", "{v}");

    // A slow analyst: while it runs, the task waits for that job.
    let mut worker = sbx.orch_std();
    worker
        .args(["work-once"])
        .env("FAKE_AGENT_SLEEP", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = worker.spawn().unwrap();
    let mut running = Value::Null;
    wait_until(20, "the analyst to run", || {
        running = why(&sbx, id);
        kind(&running) == "job_running" && running["waiting"]["agent_pid"].is_i64()
    });
    assert_eq!(running["waiting"]["role"], "analyst", "{running}");
    assert!(pid_alive(
        running["waiting"]["agent_pid"].as_i64().unwrap() as i32
    ));
    assert!(child.wait().unwrap().success());

    // The analysis is done (a finished job moves nothing at a human
    // gate): the task waits for a human.
    let v = why(&sbx, id);
    assert_eq!(kind(&v), "approval", "{v}");
    assert_eq!(v["stage"], "analysis", "{v}");
    assert_eq!(v["waiting"]["job_id"], running["waiting"]["job_id"], "{v}");
    assert!(sbx
        .ok(&["why", &id.to_string()])
        .contains("approval of the analysis"));

    sbx.ok(&["task", "approve", &id.to_string()]);
    let v = why(&sbx, id);
    assert_eq!(kind(&v), "job_queued", "{v}");
    assert_eq!(v["waiting"]["role"], "architect", "{v}");

    sbx.ok(&[
        "task",
        "cancel",
        &id.to_string(),
        "--reason",
        "not wanted any more",
    ]);
    let v = why(&sbx, id);
    assert_eq!(kind(&v), "escalated", "{v}");
    assert_eq!(v["waiting"]["reason"], "not wanted any more", "{v}");
    assert_full_chain(&sbx, id, &v);
    let chain = v["chain"].as_array().unwrap();
    let approve = chain.iter().find(|l| l["to"] == "architecture").unwrap();
    assert_eq!(
        approve["cause"]["command"], "orch task approve",
        "{approve}"
    );
    assert_eq!(approve["moved_because"], "approved-by-hand", "{approve}");
    // The typed cause tells a cancel from an unblock (the reason text,
    // the person's own, cannot).
    let cancel = chain.last().unwrap();
    assert_eq!(cancel["cause"]["command"], "orch task cancel", "{v}");
    assert_eq!(cancel["moved_because"], "cancelled-by-hand", "{v}");
}

#[test]
fn a_task_in_the_merge_line_names_its_place_and_the_lease_it_waits_for() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MERGE_LINE_BATCH_MAX", "1");
    let env = [("FAKE_AGENT_DEV_FILE", "notes-%t.md")];
    let not_deployer = ["analyst", "architect", "developer", "reviewer", "tester"];
    let to_deploy_staging = |id: i64| {
        for _ in 0..10 {
            if sbx.stage(id) == "deploy-staging" {
                return;
            }
            for role in not_deployer {
                let o = sbx
                    .orch_std()
                    .args(["work-once", "--role", role])
                    .envs(env)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{o:?}");
            }
            sbx.ok(&["ci"]);
        }
        panic!("task {id} never reached deploy-staging");
    };
    let one = sbx.add_issue("first");
    to_deploy_staging(one);
    let two = sbx.add_issue("second");
    to_deploy_staging(two);

    // Both ready: the line lands task 1, whose deploy keeps the lease;
    // task 2 waits in the line for it.
    for _ in 0..2 {
        sbx.ok(&["work-once", "--role", "deployer"]);
    }
    let v = why(&sbx, two);
    assert_eq!(kind(&v), "merge_line", "{v}");
    assert_eq!(v["waiting"]["state"], "ready", "{v}");
    assert_eq!(v["waiting"]["place"], 2, "{v}");
    sbx.ok(&["merge-gate"]);
    assert_eq!(sbx.stage(one), "deploy");

    let v = why(&sbx, two);
    assert_eq!(kind(&v), "merge_line", "{v}");
    assert_eq!(v["waiting"]["place"], 1, "{v}");
    assert_eq!(v["waiting"]["lease_holder"], format!("task:{one}"), "{v}");
    let text = sbx.ok(&["why", &two.to_string()]);
    assert!(
        text.contains("the merge line: ready, place 1 of 1") && text.contains("held by task:1"),
        "{text}"
    );
    // The holder itself waits for its deploy job, not for the lease.
    assert_eq!(kind(&why(&sbx, one)), "job_queued");
}

#[test]
fn why_of_a_missing_task_is_a_usage_error() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let out = sbx.orch().args(["why", "42"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task 42"));
}

#[test]
fn an_approval_whose_delivery_died_is_named_as_the_wait() {
    let sbx = Sandbox::new();
    let cfg = sbx.dir.join("orch.toml");
    let s = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, s.replace("auto_approve_analysis = true\n", "")).unwrap();
    sbx.ok(&["init"]);
    sbx.json(&[
        "ingest",
        "--source",
        "plane",
        "--event",
        "issue",
        "--file",
        &format!("{ROOT}/tests/fixtures/{IN_PROGRESS}"),
    ]);
    sbx.ok(&["work-once"]);
    assert_eq!(kind(&why(&sbx, 1)), "approval");
    // The tracker's Approved arrives, and its ingest is dead-lettered (as
    // a permanent error would leave it).
    {
        let server = sbx.serve();
        let body = fixture("plane/webhooks/issue-updated-state-approved.json");
        assert_eq!(server.post_plane(&body, "approve-1").0, 202);
    }
    sbx.db()
        .execute(
            "UPDATE inbox SET attempts=1, dead=1, error='permanent: planted' WHERE delivery_id='approve-1'",
            [],
        )
        .unwrap();
    let v = why(&sbx, 1);
    assert_eq!(kind(&v), "failed_delivery", "{v}");
    assert_eq!(v["waiting"]["delivery_id"], "approve-1", "{v}");
    assert_eq!(v["waiting"]["dead"], true, "{v}");
    assert!(sbx.ok(&["why", "1"]).contains("orch events replay"));
}
