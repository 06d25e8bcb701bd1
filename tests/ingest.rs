//! Ingest: exactly one task per work item, whatever the redeliveries and
//! concurrency; irrelevant deliveries say why.

use crate::util::*;

const IN_PROGRESS: &str = "plane/webhooks/issue-updated-state-in-progress.json";

#[test]
fn the_same_delivery_twice_and_two_concurrent_ingests_make_one_task_and_one_analyst_job() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let body = fixture(IN_PROGRESS);
    {
        let server = sbx.serve();
        assert_eq!(server.post_plane(&body, "a").0, 202);
        // a redelivery with the same id, and Plane's retry with a new id
        assert_eq!(server.post_plane(&body, "a").0, 200);
        assert_eq!(server.post_plane(&body, "b").0, 200);
    }
    // The same work item again, through a delivery that differs (another
    // field order would too): the handler is idempotent by meaning.
    let mut replay = String::from_utf8(body.clone()).unwrap();
    replay = replay.replace("\"sort_order\": 75535.0", "\"sort_order\": 75536.0");
    let replay_file = sbx.dir.join("replay.json");
    std::fs::write(&replay_file, &replay).unwrap();

    let spawn = |args: &[&str]| sbx.spawn(args, &[]);
    let a = spawn(&["ingest"]);
    let b = spawn(&["ingest"]);
    let c = spawn(&[
        "ingest",
        "--source",
        "plane",
        "--event",
        "issue",
        "--file",
        replay_file.to_str().unwrap(),
    ]);
    for child in [a, b, c] {
        let out = child.wait_with_output().unwrap();
        // 0, or 75 when the other ingest held the lock: retry next tick.
        assert!(
            matches!(out.status.code(), Some(0) | Some(75)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sbx.ok(&["ingest"]);
    sbx.ok(&[
        "ingest",
        "--source",
        "plane",
        "--event",
        "issue",
        "--file",
        replay_file.to_str().unwrap(),
    ]);

    assert_eq!(sbx.count("SELECT COUNT(*) FROM tasks"), 1);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE role='analyst'"),
        1
    );
    assert_eq!(sbx.count("SELECT COUNT(*) FROM transitions"), 1);
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM inbox WHERE processed_at_ms IS NULL"),
        0
    );
    let outcomes: Vec<String> = {
        let db = sbx.db();
        let mut st = db.prepare("SELECT outcome FROM inbox ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(outcomes.len(), 2);
    assert_eq!(
        outcomes.iter().filter(|o| *o == "created task 1").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| *o == "no pipeline action: work item already has task 1")
            .count(),
        1,
        "{outcomes:?}"
    );
    // the branch and worktree exist, from current main
    let wt = sbx.json(&["task", "show", "1"])["task"]["worktree"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&wt).join("test.sh").exists());
}

#[test]
fn irrelevant_deliveries_are_processed_with_the_reason() {
    let sbx = Sandbox::new();
    let cases = [
        (
            "plane",
            "issue_comment",
            "plane/webhooks/issue_comment-created.json",
            "no pipeline action: plane event \"issue_comment\"",
        ),
        (
            "plane",
            "issue",
            "plane/webhooks/issue-updated-state-approved.json",
            "no pipeline action: work item b2ec7265-54a6-4ae7-9ab1-a4bf993a9690 has no task",
        ),
        (
            "gitea",
            "status",
            "gitea/webhooks/status-success.json",
            "no pipeline action: sha",
        ),
        (
            "gitea",
            "pull_request",
            "gitea/webhooks/pull_request-opened.json",
            "no pipeline action: PR #7 is not from an orch task branch",
        ),
    ];
    for (source, event, file, expect) in cases {
        let path = std::path::Path::new(ROOT).join("tests/fixtures").join(file);
        let v = sbx.json(&[
            "ingest",
            "--source",
            source,
            "--event",
            event,
            "--file",
            path.to_str().unwrap(),
        ]);
        assert!(
            v["outcome"].as_str().unwrap().starts_with(expect),
            "{file}: {v}"
        );
    }
    assert_eq!(sbx.count("SELECT COUNT(*) FROM tasks"), 0);
    assert!(sbx.ok(&["events", "list"]).contains("no pipeline action"));
}

#[test]
fn a_malformed_delivery_file_is_one_clear_error_and_stores_nothing() {
    let sbx = Sandbox::new();
    let bad = sbx.dir.join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let out = sbx
        .orch()
        .args([
            "ingest",
            "--source",
            "plane",
            "--event",
            "issue",
            "--file",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.to_lowercase().contains("json"),
        "{err}"
    );
    assert_eq!(sbx.count("SELECT COUNT(*) FROM inbox"), 0);
}
