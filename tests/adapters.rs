//! Plane, Gitea and Telegram for real — against loopback fakes that speak
//! the fixtures' shapes and record every request: the whole pipeline with
//! `tracker = "plane"`, `forge = "gitea"`; side effects exactly once
//! through failures, dropped answers and slow answers; permanent errors
//! dead-lettered; one channel down never blocking another; Gitea
//! deliveries that must change nothing.

use serde_json::{json, Value};

use crate::fakes::*;
use crate::util::*;

const IN_PROGRESS: &str = "plane/webhooks/issue-updated-state-in-progress.json";
const BRANCH: &str = "orch/widget-42";
const USAGE: &str =
    "input 38934 tokens (38926 cached: 33204 read, 5722 written) · output 110 tokens · cost $0.0375";

/// A sandbox whose project uses Plane and Gitea (state ids resolved by
/// name: `[projects.states]` removed), with fakes for both and Telegram.
struct World {
    sbx: Sandbox,
    plane: FakePlane,
    gitea: FakeGitea,
    tg: FakeTelegram,
    clock_ms: i64,
}

impl World {
    fn new() -> World {
        let mut sbx = Sandbox::new();
        let path = sbx.dir.join("orch.toml");
        let cfg = std::fs::read_to_string(&path).unwrap();
        let cfg = cfg[..cfg.find("[projects.states]").unwrap()]
            .replace("tracker = \"local\"", "tracker = \"plane\"")
            .replace("forge = \"local\"", "forge = \"gitea\"");
        std::fs::write(&path, cfg).unwrap();
        let plane = FakePlane::start();
        let gitea = FakeGitea::start(sbx.origin());
        let tg = FakeTelegram::start();
        sbx.set("ORCH_PLANE_URL", &plane.url())
            .set("ORCH_PLANE_API_KEY", PLANE_KEY)
            .set("ORCH_PLANE_WORKSPACE", "acme")
            .set("ORCH_GITEA_URL", &gitea.url())
            .set("ORCH_GITEA_TOKEN", GITEA_TOKEN)
            .set("ORCH_GITEA_PUBLIC_URL", "https://gitea.example.com")
            .set("ORCH_NOTIFIER", "telegram")
            .set("ORCH_TELEGRAM_API_URL", &tg.url())
            .set("ORCH_TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
            .set("ORCH_TELEGRAM_CHAT_ID", TELEGRAM_CHAT)
            .set("ORCH_HTTP_CONNECT_TIMEOUT_MS", "1000")
            .set("ORCH_HTTP_TIMEOUT_MS", "2000")
            .set("ORCH_PLANE_STATE_CACHE_S", "86400")
            // These tests assert Plane's exact traffic; the reconciler's
            // tracker listing has its own tests (tests/reconcile.rs).
            .set("ORCH_RECONCILE_PLANE_ENABLED", "false");
        World {
            sbx,
            plane,
            gitea,
            tg,
            clock_ms: 0,
        }
    }

    /// Creates task 1 from the Plane In Progress fixture (no HTTP).
    fn task_from_plane(&self) {
        let out = self.sbx.json(&[
            "ingest",
            "--source",
            "plane",
            "--event",
            "issue",
            "--file",
            &format!("{ROOT}/tests/fixtures/{IN_PROGRESS}"),
        ]);
        assert_eq!(out["outcome"], "created task 1", "{out}");
    }

    /// Runs `orch --json deliver` two hours later than the last one (past
    /// any backoff), returns its summary.
    fn deliver_later(&mut self) -> Value {
        self.clock_ms += 2 * 3600 * 1000;
        let offset = self.clock_ms.to_string();
        self.sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", &offset);
        self.sbx.json(&["deliver"])
    }

    fn outbox(&self, key: &str) -> (String, i64, Option<String>, Option<String>) {
        self.sbx
            .db()
            .query_row(
                "SELECT status, attempts, remote_id, last_error FROM outbox WHERE dedupe_key=?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
    }

    fn insert_outbox(&self, key: &str, channel: &str, kind: &str, payload: Value) {
        self.sbx
            .db()
            .execute(
                "INSERT INTO outbox (dedupe_key, task_id, channel, kind, payload, next_attempt_at_ms, created_at_ms) \
                 VALUES (?1, 1, ?2, ?3, ?4, 0, 0)",
                orch::sql::params![key, channel, kind, payload.to_string()],
            )
            .unwrap();
    }

    /// Puts the task branch on origin (as the worker's first push would).
    fn push_branch(&self) {
        self.sbx.origin_git(&["branch", "-f", BRANCH, "main"]);
    }

    fn pending(&self) -> i64 {
        self.sbx
            .count("SELECT COUNT(*) FROM outbox WHERE status='pending'")
    }
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

const API: &str = "/api/v1/repos/acme/widget";

fn plane_issue_path(rest: &str) -> String {
    format!("/api/v1/workspaces/acme/projects/{PLANE_PROJECT}/{rest}")
}

#[test]
fn plane_and_gitea_drive_a_work_item_from_webhook_to_merged_and_done() {
    let w = World::new();
    let sbx = &w.sbx;
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let (status, body) = server.post_plane(&fixture(IN_PROGRESS), "plane-d-1");
    assert_eq!(status, 202, "{body}");

    // analysis → architecture → development; the development head has no
    // CI status yet (Gitea's combined state ""), so the job ends waiting.
    sbx.tick_until(6, |s| {
        s.count("SELECT COUNT(*) FROM tasks WHERE id=1 AND stage='development'") == 1
            && s.count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='done'") == 1
    });
    sbx.ok(&["tick"]);
    assert_eq!(sbx.stage(1), "development", "waits for CI");
    let head = sbx.origin_git(&["rev-parse", BRANCH]);

    // Gitea's `status` delivery for the real head opens the gate.
    let fixture_body = String::from_utf8(fixture("gitea/webhooks/status-success.json")).unwrap();
    let body = fixture_body.replace("9a790e2628cd4cb30cdeeadbe0a1a539a240b38f", &head);
    assert!(body.contains("\"full_name\": \"acme/widget\""));
    let sig = sign(GITEA_SECRET, body.as_bytes());
    let (status, answer) = server
        .request(
            "POST",
            "/webhooks/gitea",
            &[
                ("Content-Type", "application/json"),
                ("X-Gitea-Event", "status"),
                ("X-Gitea-Event-Type", "status"),
                ("X-Gitea-Delivery", "54762d50-c37c-4e30-a274-000000000001"),
                ("X-Gitea-Signature", &sig),
            ],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 202, "{answer}");
    drop(server);
    sbx.tick_until(6, |s| s.stage(1) == "done");

    // Transitions: the webhook advanced development, the worker the rest.
    let t = sbx.transitions(1);
    let actors: Vec<(&str, &str)> = t
        .iter()
        .map(|(_, to, a)| (to.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        actors,
        [
            ("analysis", "webhook"),
            ("architecture", "worker"),
            ("development", "worker"),
            ("review", "webhook"),
            ("testing", "worker"),
            ("deploy-staging", "worker"),
            ("deploy", "worker"),
            ("done", "worker"),
        ]
    );
    let outcome: String = sbx
        .db()
        .query_row("SELECT outcome FROM inbox WHERE source='gitea'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        outcome.contains(&format!(
            "recorded CI success (CI / test (pull_request)) for {BRANCH} at {head}"
        )) && outcome.contains("task 1: development → review"),
        "{outcome}"
    );

    // Gitea: PR opened once, merged once with the tested head, run reports
    // of review and later on the PR; nothing else (no finalize asks for CI:
    // the status came as a delivery).
    let g = w.gitea.server.lines();
    let find = format!("GET {API}/pulls/main/{BRANCH}");
    let comment = format!("POST {API}/issues/7/comments");
    assert_eq!(
        g,
        [
            // deliver after the first tick's jobs: the PR, looked up first
            find.clone(),
            format!("POST {API}/pulls"),
            // finalize of deploy-staging: the merge of the tested head
            find,
            format!("POST {API}/pulls/7/merge"),
            format!("GET {API}/pulls/7"),
            // deliver: the run reports of reviewer, tester, deployer ×2
            comment.clone(),
            comment.clone(),
            comment.clone(),
            comment,
        ]
    );
    assert!(w
        .gitea
        .server
        .requests()
        .iter()
        .all(|r| r.header("Authorization") == Some(&format!("token {GITEA_TOKEN}"))));
    let dev_head: String = sbx
        .db()
        .query_row(
            "SELECT sha FROM ci_statuses WHERE context='CI / test (pull_request)'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dev_head, head);
    let pr = w.gitea.state.lock().unwrap().prs[0].clone();
    assert!(pr.merged);
    let merge = pr.merge_body.unwrap();
    let main = sbx.origin_git(&["rev-parse", "main"]);
    assert_eq!(merge["Do"], "fast-forward-only");
    assert_eq!(merge["head_commit_id"], main.as_str());
    assert_eq!(
        main,
        sbx.origin_git(&["rev-parse", BRANCH]),
        "main is the tested head"
    );
    let pr_comments = w.gitea.comments(7);
    let instance: String = w
        .sbx
        .db()
        .query_row("SELECT value FROM meta WHERE key='instance_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        pr_comments[0].starts_with("**reviewer** run"),
        "{pr_comments:#?}"
    );
    assert!(pr_comments
        .iter()
        .all(|c| c.contains(USAGE) && c.contains(&format!("<!-- orch:{instance}:task:1:job"))));

    // Plane: the states once (for Done), every comment once and in outbox
    // order, the item moved to Done after the done comment.
    let p = w.plane.server.requests();
    let comments_path = plane_issue_path(&format!("work-items/{PLANE_ISSUE}/comments/"));
    let states_path = plane_issue_path("states/");
    let issue_path = plane_issue_path(&format!("work-items/{PLANE_ISSUE}/"));
    for r in &p {
        assert!(
            (r.method == "POST" && r.path() == comments_path)
                || (r.method == "GET" && r.path() == states_path)
                || (r.method == "PATCH" && r.path() == issue_path),
            "unexpected Plane call {}",
            r.line()
        );
        assert_eq!(r.header("X-API-Key"), Some(PLANE_KEY));
    }
    assert_eq!(p.iter().filter(|r| r.method == "GET").count(), 1);
    let patches: Vec<&Req> = p.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].json(),
        json!({ "state": w.plane.state_id("Done") })
    );
    assert_eq!(w.plane.issue_state(PLANE_ISSUE), w.plane.state_id("Done"));

    let keys: Vec<String> = {
        let db = sbx.db();
        let mut st = db
            .prepare("SELECT dedupe_key, kind FROM outbox WHERE channel='tracker' ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .map(|(k, kind)| {
                if kind == "state" {
                    "PATCH".into()
                } else {
                    format!("{instance}:{k}")
                }
            })
            .collect()
    };
    let seen: Vec<String> = p
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| {
            if r.method == "PATCH" {
                "PATCH".into()
            } else {
                r.json()["external_id"].as_str().unwrap().to_string()
            }
        })
        .collect();
    assert_eq!(
        seen, keys,
        "Plane saw the tracker messages once each, in order"
    );
    let comments = w.plane.comments();
    assert_eq!(comments.len(), 8 + 7, "8 transitions and 7 run reports");
    assert!(comments[0]
        .html
        .contains("picked up as task 1 on branch orch/widget-42"));
    let reports: Vec<&FakeComment> = comments
        .iter()
        .filter(|c| c.external_id.as_deref().unwrap().ends_with(":report"))
        .collect();
    assert_eq!(reports.len(), 7);
    // Each report's idempotency key names its claim's epoch (INV-10).
    assert!(
        reports
            .iter()
            .all(|r| r.external_id.as_deref().unwrap().ends_with(":e1:report")),
        "{:?}",
        reports.iter().map(|r| &r.external_id).collect::<Vec<_>>()
    );
    for r in &reports {
        assert!(r.html.contains(USAGE), "usage line: {}", r.html);
        assert!(
            r.html.contains(&format!(
                "<a href=\"https://gitea.example.com/acme/widget/src/branch/{BRANCH}\">{BRANCH}</a>"
            )),
            "{}",
            r.html
        );
        assert!(
            r.html
                .contains("<a href=\"https://gitea.example.com/acme/widget/pulls/7\">#7</a>"),
            "PR link: {}",
            r.html
        );
    }
    let dev_report = reports
        .iter()
        .find(|c| c.html.contains("<strong>developer</strong> run"))
        .unwrap();
    assert!(
        dev_report.html.contains(&format!(
            "<a href=\"https://gitea.example.com/acme/widget/commit/{head}\">{}</a>",
            &head[..10]
        )),
        "{}",
        dev_report.html
    );
    assert!(dev_report
        .html
        .contains("done; the task waits: no CI status for"));

    // Telegram: the deploy, once.
    let sent = w.tg.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("deployed and done"), "{sent:?}");
    assert_eq!(w.tg.server.requests().len(), 1);

    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM outbox WHERE status<>'delivered'"),
        0
    );
    let before = (
        w.plane.server.requests().len(),
        w.gitea.server.requests().len(),
    );
    sbx.ok(&["tick"]);
    assert_eq!(
        (
            w.plane.server.requests().len(),
            w.gitea.server.requests().len()
        ),
        before,
        "a further tick calls nobody"
    );
    sbx.check_invariants();
}

#[test]
fn a_service_failing_n_times_then_recovering_gets_each_side_effect_exactly_once() {
    let mut w = World::new();
    w.task_from_plane();
    w.push_branch();
    w.insert_outbox(
        "task:1:v2:state",
        "tracker",
        "state",
        json!({ "state": "needs_input" }),
    );
    w.insert_outbox(
        "task:1:pr",
        "forge",
        "open_pr",
        json!({ "branch": BRANCH, "base": "main", "title": "t", "body": "b" }),
    );
    w.insert_outbox(
        "task:1:v2:prnote",
        "forge",
        "comment",
        json!({ "text": "hello PR" }),
    );
    w.insert_outbox(
        "task:1:v2:notify",
        "notify",
        "escalated",
        json!({ "text": "task 1 escalated" }),
    );

    let c = plane_issue_path(&format!("work-items/{PLANE_ISSUE}/comments/"));
    w.plane.faults.push(
        "POST",
        "/comments/",
        Fault::Status(503, json!({"error": "down"}), vec![]),
    );
    w.plane
        .faults
        .push("POST", "/comments/", Fault::Status(502, json!({}), vec![]));
    w.plane.faults.push(
        "PATCH",
        "/work-items/",
        Fault::Status(500, json!({}), vec![]),
    );
    w.gitea.faults.push(
        "POST",
        "/pulls",
        Fault::Status(500, json!({"message": ""}), vec![]),
    );
    w.gitea.faults.push(
        "POST",
        "/comments",
        Fault::Status(
            429,
            json!({"message": "slow down"}),
            vec![("Retry-After".into(), "1".into())],
        ),
    );
    w.tg.faults
        .push("POST", "/sendMessage", telegram_flood(3 * 3600));
    w.tg.faults.push(
        "POST",
        "/sendMessage",
        Fault::Status(502, json!({}), vec![]),
    );

    // Pass 1: every route fails once and is skipped for the rest of it.
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let s = w.deliver_later();
    assert_eq!(s["failed"].as_array().unwrap().len(), 3, "{s}");
    assert!(s["deferred"].as_array().unwrap().len() >= 2, "{s}");
    // Telegram's retry_after (3 h) wins over the backoff (seconds).
    let next: i64 = w
        .sbx
        .db()
        .query_row(
            "SELECT next_attempt_at_ms FROM outbox WHERE dedupe_key='task:1:v2:notify'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        next >= real_now + w.clock_ms + 3 * 3600 * 1000,
        "retry_after honoured"
    );

    for _ in 0..6 {
        if w.pending() == 0 {
            break;
        }
        w.deliver_later();
    }
    assert_eq!(w.pending(), 0);
    assert_eq!(
        w.sbx
            .count("SELECT COUNT(*) FROM outbox WHERE status='dead'"),
        0
    );

    // Plane: exactly one comment, state Needs Input; each retry of the
    // comment looked before posting again.
    let issue = plane_issue_path(&format!("work-items/{PLANE_ISSUE}/"));
    let states = plane_issue_path("states/");
    assert_eq!(
        w.plane.server.lines(),
        [
            format!("POST {c}"),
            format!("GET {c}"),
            format!("POST {c}"),
            format!("GET {c}"),
            format!("POST {c}"),
            format!("GET {states}"),
            format!("PATCH {issue}"),
            format!("PATCH {issue}"),
        ]
    );
    assert_eq!(w.plane.comments().len(), 1);
    assert_eq!(w.plane.issue_state(PLANE_ISSUE), NEEDS_INPUT_ID);
    let (status, attempts, remote, _) = w.outbox("task:1:v1:comment");
    assert_eq!((status.as_str(), attempts), ("delivered", 3));
    assert_eq!(remote.as_deref(), Some(w.plane.comments()[0].id.as_str()));

    // Gitea: one PR, one comment.
    let find = format!("GET {API}/pulls/main/{BRANCH}");
    assert_eq!(
        w.gitea.server.lines(),
        [
            find.clone(),
            format!("POST {API}/pulls"),
            find,
            format!("POST {API}/pulls"),
            format!("POST {API}/issues/7/comments"),
            format!("GET {API}/issues/7/comments"),
            format!("POST {API}/issues/7/comments"),
        ]
    );
    assert_eq!(w.gitea.state.lock().unwrap().prs.len(), 1);
    assert_eq!(w.gitea.comments(7).len(), 1);
    // The marker carries the database's instance id (two orch instances
    // never share a key).
    let instance: String = w
        .sbx
        .db()
        .query_row("SELECT value FROM meta WHERE key='instance_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(instance.len(), 16);
    assert!(w.gitea.comments(7)[0].starts_with(&format!(
        "hello PR\n\n<!-- orch:{instance}:task:1:v2:prnote -->"
    )));
    assert_eq!(w.outbox("task:1:pr").2.as_deref(), Some("7"));

    // Telegram: one message after a 429 and a 502.
    assert_eq!(w.tg.server.requests().len(), 3);
    assert_eq!(
        w.tg.sent(),
        ["orch: task 1 escalated\n".to_string()
            + &format!(
                "{}/acme/projects/{PLANE_PROJECT}/issues/{PLANE_ISSUE}",
                w.plane.url()
            )]
    );
}

#[test]
fn an_answer_lost_after_the_comment_was_stored_never_posts_it_twice() {
    let mut w = World::new();
    w.task_from_plane();
    w.push_branch();
    w.insert_outbox(
        "task:1:pr",
        "forge",
        "open_pr",
        json!({ "branch": BRANCH, "base": "main", "title": "t", "body": "b" }),
    );
    w.insert_outbox(
        "task:1:v2:a",
        "forge",
        "comment",
        json!({ "text": "first" }),
    );
    w.insert_outbox(
        "task:1:v2:b",
        "forge",
        "comment",
        json!({ "text": "second" }),
    );
    w.sbx.set("ORCH_HTTP_TIMEOUT_MS", "700");
    // Plane stores the comment, then the connection drops.
    w.plane
        .faults
        .push("POST", "/comments/", Fault::DropAfterApply);
    // Gitea: the PR is created but the answer is not JSON; a comment is
    // stored and its answer dropped; another is answered past the timeout.
    w.gitea
        .faults
        .push("POST", "/pulls", Fault::MalformedAfterApply);
    w.gitea
        .faults
        .push("POST", "/comments", Fault::DropAfterApply);
    w.gitea
        .faults
        .push("POST", "/comments", Fault::SlowAfterApply(2000));

    for _ in 0..8 {
        if w.pending() == 0 {
            break;
        }
        w.deliver_later();
    }
    assert_eq!(w.pending(), 0);

    let c = plane_issue_path(&format!("work-items/{PLANE_ISSUE}/comments/"));
    assert_eq!(
        w.plane.server.lines(),
        [format!("POST {c}"), format!("GET {c}")]
    );
    assert_eq!(w.plane.comments().len(), 1, "exactly one comment");
    let (status, attempts, remote, _) = w.outbox("task:1:v1:comment");
    assert_eq!((status.as_str(), attempts), ("delivered", 2));
    assert_eq!(remote.unwrap(), w.plane.comments()[0].id);

    assert_eq!(w.gitea.state.lock().unwrap().prs.len(), 1, "one PR");
    assert_eq!(w.gitea.comments(7).len(), 2, "each comment once");
    let posts = w
        .gitea
        .server
        .lines()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(
        posts,
        3,
        "one POST per side effect: {:#?}",
        w.gitea.server.lines()
    );
    assert_eq!(w.outbox("task:1:pr").2.as_deref(), Some("7"));
}

#[test]
fn telegram_cannot_be_asked_so_a_lost_answer_is_sent_again() {
    // The documented limit (src/adapters/telegram.rs): at least once.
    let mut w = World::new();
    w.task_from_plane();
    w.insert_outbox(
        "task:1:v2:notify",
        "notify",
        "escalated",
        json!({ "text": "x" }),
    );
    w.tg.faults
        .push("POST", "/sendMessage", Fault::DropAfterApply);
    w.deliver_later();
    w.deliver_later();
    assert_eq!(w.outbox("task:1:v2:notify").0, "delivered");
    assert_eq!(w.tg.sent().len(), 2);
}

#[test]
fn permanent_errors_are_dead_lettered_at_once_and_other_channels_still_deliver() {
    let mut w = World::new();
    w.sbx.set("ORCH_TELEGRAM_CHAT_ID", "-42");
    w.task_from_plane();
    w.insert_outbox(
        "task:1:v2:notify",
        "notify",
        "escalated",
        json!({ "text": "x" }),
    );
    w.insert_outbox(
        "task:1:v3:notify",
        "notify",
        "escalated",
        json!({ "text": "y" }),
    );
    let s = w.deliver_later();
    assert_eq!(s["dead_lettered"].as_array().unwrap().len(), 2, "{s}");
    let (status, attempts, _, err) = w.outbox("task:1:v2:notify");
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    assert_eq!(
        err.unwrap(),
        "permanent: telegram sendMessage: HTTP 400: Bad Request: chat not found"
    );
    assert_eq!(
        w.outbox("task:1:v1:comment").0,
        "delivered",
        "Plane unaffected"
    );
    let doc = w.sbx.json(&["status"]);
    assert_eq!(doc["outbox"]["dead"], 2);
    assert_eq!(doc["outbox_dead"][0]["key"], "task:1:v3:notify");
    let text = w.sbx.ok(&["status"]);
    assert!(
        text.contains("dead letter") && text.contains("chat not found"),
        "{text}"
    );
}

#[test]
fn a_service_that_is_down_costs_one_attempt_per_pass_and_blocks_no_other() {
    let mut w = World::new();
    // Nothing listens there: connection refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    w.sbx.set("ORCH_GITEA_URL", &dead_url);
    w.task_from_plane();
    w.insert_outbox(
        "task:1:pr",
        "forge",
        "open_pr",
        json!({ "branch": BRANCH, "base": "main", "title": "t", "body": "b" }),
    );
    w.insert_outbox("task:1:v2:c", "forge", "comment", json!({ "text": "c" }));
    w.insert_outbox(
        "task:1:v2:notify",
        "notify",
        "escalated",
        json!({ "text": "x" }),
    );
    let s = w.deliver_later();
    assert_eq!(s["failed"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["delivered"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["deferred"].as_array().unwrap().len(), 1, "{s}");
    let (status, attempts, _, err) = w.outbox("task:1:pr");
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(err.unwrap().contains("gitea find pull request"));
    assert_eq!(w.outbox("task:1:v2:c").1, 0, "not even tried");
}

#[test]
fn missing_settings_and_kill_switches_leave_messages_waiting_with_the_reason() {
    let mut w = World::new();
    w.task_from_plane();
    w.sbx.env.remove("ORCH_PLANE_URL");
    w.deliver_later();
    let (status, attempts, _, err) = w.outbox("task:1:v1:comment");
    assert_eq!((status.as_str(), attempts), ("pending", 0));
    assert_eq!(
        err.unwrap(),
        "config: ORCH_PLANE_URL: required for projects with tracker = \"plane\""
    );
    let plane_url = w.plane.url();
    w.sbx
        .set("ORCH_PLANE_URL", &plane_url)
        .set("ORCH_TRACKER_ENABLED", "false");
    w.deliver_later();
    let (_, attempts, _, err) = w.outbox("task:1:v1:comment");
    assert_eq!(attempts, 0);
    assert_eq!(err.unwrap(), "plane is disabled by ORCH_TRACKER_ENABLED");
    assert!(w.plane.server.requests().is_empty(), "nothing was called");
    w.sbx.set("ORCH_TRACKER_ENABLED", "true");
    w.deliver_later();
    assert_eq!(w.outbox("task:1:v1:comment").0, "delivered");
}

#[test]
fn no_secret_reaches_the_logs_even_at_trace_level() {
    let mut w = World::new();
    w.task_from_plane();
    w.push_branch();
    w.insert_outbox(
        "task:1:pr",
        "forge",
        "open_pr",
        json!({ "branch": BRANCH, "base": "main", "title": "t", "body": "b" }),
    );
    w.insert_outbox(
        "task:1:v2:notify",
        "notify",
        "escalated",
        json!({ "text": "x" }),
    );
    w.tg.faults.push("POST", "/sendMessage", Fault::Drop);
    w.clock_ms += 3600 * 1000;
    let offset = w.clock_ms.to_string();
    w.sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", &offset);
    let out = w.sbx.orch().args(["-vv", "deliver"]).output().unwrap();
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("delivered"), "{logs}");
    assert!(logs.contains("telegram sendMessage"), "{logs}");
    for secret in [TELEGRAM_TOKEN, GITEA_TOKEN, PLANE_KEY] {
        assert!(!logs.contains(secret), "{secret} leaked:\n{logs}");
    }
}

#[test]
fn a_status_delivery_for_an_unknown_sha_changes_nothing_and_says_why() {
    let w = World::new();
    w.sbx.ok(&["init"]);
    let out = w.sbx.json(&[
        "ingest",
        "--source",
        "gitea",
        "--event",
        "status",
        "--file",
        &format!("{ROOT}/tests/fixtures/gitea/webhooks/status-success.json"),
    ]);
    assert_eq!(
        out["outcome"],
        "no pipeline action: sha 9a790e2628cd4cb30cdeeadbe0a1a539a240b38f matches no known branch head; status not recorded"
    );
    for table in ["ci_statuses", "tasks", "transitions", "outbox", "jobs"] {
        assert_eq!(
            w.sbx.count(&format!("SELECT COUNT(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    assert!(w.gitea.server.requests().is_empty());
}

/// Reconcile F-3: a CI status whose sha matched no branch head is read
/// again by its sender (whatever the sender is) and attributed to the
/// project's one task at development.
#[test]
fn an_orphan_status_is_attributed_to_the_one_task_at_development() {
    let w = World::new();
    w.sbx.ok(&["init"]);
    w.task_from_plane();
    w.sbx
        .db()
        .execute("UPDATE tasks SET stage='development' WHERE id=1", [])
        .unwrap();
    let branch: String = w
        .sbx
        .db()
        .query_row("SELECT branch FROM tasks WHERE id=1", [], |r| r.get(0))
        .unwrap();
    w.sbx.ok(&[
        "ingest",
        "--source",
        "gitea",
        "--event",
        "status",
        "--file",
        &format!("{ROOT}/tests/fixtures/gitea/webhooks/status-success.json"),
    ]);
    let text = w.sbx.ok(&["reconcile", "--dry-run"]);
    assert!(
        text.contains(&format!(
            "orphan CI status (delivery 2): would attribute 9a790e2628cd4cb30cdeeadbe0a1a539a240b38f to task 1 ({branch})"
        )),
        "{text}"
    );
}

#[test]
fn ci_that_turns_green_after_the_finalize_is_found_by_reconcile_and_a_pr_merged_delivery_at_deploy_leaves_the_task_there(
) {
    let mut w = World::new();
    // The old system's CI race: no status right after the push, success a
    // moment later. The finalize does not wait for it: the development job
    // ends waiting, and reconcile (its status delivery lost) asks once per
    // pass until the forge says green.
    w.gitea.state.lock().unwrap().success_after_polls = Some(3);
    w.sbx.set("ORCH_RECONCILE_GRACE_S", "0");
    w.task_from_plane();
    for _ in 0..3 {
        w.sbx.ok(&["work-once"]);
    }
    assert_eq!(w.sbx.stage(1), "development");
    assert_eq!(
        w.sbx
            .count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='done'"),
        1,
        "the development job finished, waiting"
    );
    let status_calls = |w: &World| {
        w.gitea
            .server
            .lines()
            .iter()
            .filter(|l| l.ends_with("/status"))
            .count()
    };
    assert_eq!(status_calls(&w), 0, "the finalize asked Gitea nothing");
    for _ in 0..8 {
        if w.sbx.stage(1) == "deploy" {
            break;
        }
        w.sbx.ok(&["reconcile"]);
        w.sbx.ok(&["work-once"]);
        // The deployer's PASS makes it ready; the merge line merges the PR.
        w.sbx.ok(&["merge-gate"]);
    }
    assert_eq!(w.sbx.stage(1), "deploy");
    let t = w.sbx.transitions(1);
    assert_eq!(
        t[3],
        (
            Some("development".into()),
            "review".into(),
            "reconciler".into()
        )
    );
    let head = w.sbx.origin_git(&["rev-parse", BRANCH]);
    assert_eq!(status_calls(&w), 3, "one look per pass until green");
    assert_eq!(
        w.sbx.origin_git(&["rev-parse", "main"]),
        head,
        "merged by the fake Gitea"
    );
    assert_eq!(
        w.sbx.count("SELECT COUNT(*) FROM leases"),
        1,
        "the deploy job holds the lease"
    );

    // The PR-merged delivery Gitea sends: never completes the task.
    let body = String::from_utf8(fixture("gitea/webhooks/pull_request-closed-merged.json"))
        .unwrap()
        .replace("orch/ORCH-42-add-retry", BRANCH);
    let file = w.sbx.dir.join("merged.json");
    std::fs::write(&file, body).unwrap();
    let out = w.sbx.json(&[
        "ingest",
        "--source",
        "gitea",
        "--event",
        "pull_request",
        "--file",
        file.to_str().unwrap(),
    ]);
    let outcome = out["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("no pipeline action: PR #7 of task 1 merged; released merge lease")
            && outcome
                .ends_with("the task stays at deploy (only the deployer's verdict completes it)"),
        "{outcome}"
    );
    assert_eq!(w.sbx.stage(1), "deploy");
    assert_eq!(w.sbx.transitions(1).len(), 7);
    assert_eq!(w.sbx.count("SELECT COUNT(*) FROM leases"), 0);
    assert_eq!(
        w.sbx
            .count("SELECT merged FROM pull_requests WHERE task_id=1"),
        1
    );

    // The deployer's verdict does.
    w.sbx.ok(&["work-once"]);
    assert_eq!(w.sbx.stage(1), "done");
    w.deliver_later();
    w.sbx.check_invariants();
}

#[test]
fn plane_work_items_by_state_come_from_every_page_through_a_rate_limit() {
    let w = World::new();
    w.plane.state.lock().unwrap().max_page = 2;
    // The issue list is rate limited once (Retry-After: 1).
    w.plane
        .faults
        .push("GET", "/work-items/", plane_rate_limited(1));
    let env = w.sbx.env.clone();
    let settings = orch::config::Settings::load(&|k| env.get(k).cloned(), None, None).unwrap();
    let ctx = orch::ctx::Ctx::load(settings).unwrap();
    let db = ctx.open_db().unwrap();
    let project = ctx.project("widget").unwrap();
    use orch::config::StateKind;
    use orch::tracker::list_work_items;
    let items = list_work_items(
        &ctx,
        &db,
        project,
        &[StateKind::InProgress, StateKind::Done],
        true,
    )
    .unwrap();
    let got: Vec<(StateKind, i64)> = items.iter().map(|(k, i)| (*k, i.sequence_id)).collect();
    assert_eq!(got, [(StateKind::InProgress, 42), (StateKind::Done, 38)]);
    let lines = w.plane.server.lines();
    let states = format!("GET {}", plane_issue_path("states/"));
    let issues = format!("GET {}", plane_issue_path("work-items/"));
    // 10 states in pages of 2; 3 issues (fixture pages 1 and 3) in 2 pages,
    // the first answered 429 once.
    assert_eq!(count(&lines, &states), 5, "{lines:#?}");
    assert_eq!(count(&lines, &issues), 3, "{lines:#?}");
    let cursors: Vec<Option<String>> = w
        .plane
        .server
        .requests()
        .iter()
        .filter(|r| r.line() == issues)
        .map(|r| r.query("cursor"))
        .collect();
    assert_eq!(
        cursors,
        [
            Some("100:0:0".into()),
            Some("100:0:0".into()),
            Some("2:1:0".into())
        ]
    );
    // The states are cached: a second listing asks only for the issues.
    w.plane.server.clear();
    list_work_items(&ctx, &db, project, &[StateKind::Done], true).unwrap();
    assert!(w.plane.server.lines().iter().all(|l| *l == issues));
}

#[test]
fn a_lost_ci_status_delivery_is_recovered_by_reconcile_asking_the_forge_once() {
    let mut w = World::new();
    w.sbx.set("ORCH_RECONCILE_GRACE_S", "0");
    w.task_from_plane();
    // Run to development: its finalize asks the forge nothing, and the job
    // ends waiting for CI.
    for _ in 0..6 {
        let done = w
            .sbx
            .count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='done'");
        if w.sbx.stage(1) == "development" && done == 1 {
            break;
        }
        w.sbx.ok(&["work-once"]);
    }
    assert_eq!(w.sbx.stage(1), "development");
    let status_calls = |w: &World| {
        w.gitea
            .server
            .lines()
            .iter()
            .filter(|l| l.contains("/status"))
            .count()
    };

    // CI has not finished: the pass asks once and leaves the task.
    let before = status_calls(&w);
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(pass["unblocked"], serde_json::json!([]), "{pass}");
    assert_eq!(status_calls(&w), before + 1);

    // CI finishes green at the forge; its `status` delivery is lost.
    let head = w.sbx.origin_git(&["rev-parse", BRANCH]);
    w.gitea.state.lock().unwrap().statuses.insert(
        head.clone(),
        vec![("CI / test (pull_request)".into(), "success".into())],
    );
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["unblocked"],
        serde_json::json!([[1, "development", "review"]]),
        "{pass}"
    );
    assert_eq!(
        status_calls(&w),
        before + 2,
        "one forge call per pass for the waiting task"
    );
    assert_eq!(w.sbx.transitions(1).last().unwrap().2, "reconciler");
    let green: i64 = w
        .sbx
        .db()
        .query_row(
            "SELECT COUNT(*) FROM ci_statuses WHERE sha=?1 AND state='success'",
            [&head],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(green, 1, "what the forge said is stored");

    // The review job is queued now: later passes leave the forge alone.
    w.sbx.json(&["reconcile"]);
    assert_eq!(status_calls(&w), before + 2);
    assert_eq!(
        w.sbx
            .count("SELECT COUNT(*) FROM transitions WHERE actor='reconciler'"),
        1
    );
    w.sbx.check_invariants();
}

#[test]
fn a_red_ci_status_found_by_reconcile_sends_the_task_back_to_development_once() {
    let mut w = World::new();
    w.sbx.set("ORCH_RECONCILE_GRACE_S", "0");
    w.task_from_plane();
    for _ in 0..3 {
        w.sbx.ok(&["work-once"]);
    }
    assert_eq!(w.sbx.stage(1), "development");
    assert_eq!(w.sbx.json(&["why", "1"])["waiting"]["kind"], "ci");
    // CI fails at the forge; its `status` delivery is lost.
    let head = w.sbx.origin_git(&["rev-parse", BRANCH]);
    w.gitea.state.lock().unwrap().statuses.insert(
        head.clone(),
        vec![("CI / test (pull_request)".into(), "failure".into())],
    );
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(
        pass["ci_failed"],
        serde_json::json!([[1, format!("CI failed on {head}")]]),
        "{pass}"
    );
    let last = w.sbx.transitions(1).last().unwrap().clone();
    assert_eq!(
        last,
        (
            Some("development".into()),
            "development".into(),
            "reconciler".into()
        )
    );
    assert_eq!(
        w.sbx
            .count("SELECT developer_retries FROM tasks WHERE id=1"),
        1
    );
    assert_eq!(
        w.sbx
            .count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='queued'"),
        1,
        "the next developer run is queued"
    );
    // A second pass finds a job queued and does nothing.
    let pass = w.sbx.json(&["reconcile"]);
    assert_eq!(pass["ci_failed"], serde_json::json!([]), "{pass}");
    w.sbx.check_invariants();
}

#[test]
fn an_older_plane_without_work_items_routes_is_used_through_the_legacy_routes_remembered() {
    let w = World::new();
    w.plane.state.lock().unwrap().legacy_only = true;
    let env = w.sbx.env.clone();
    let settings = orch::config::Settings::load(&|k| env.get(k).cloned(), None, None).unwrap();
    let ctx = orch::ctx::Ctx::load(settings).unwrap();
    let db = ctx.open_db().unwrap();
    let project = ctx.project("widget").unwrap();
    use orch::config::StateKind;
    use orch::tracker::list_work_items;
    let list = || {
        list_work_items(&ctx, &db, project, &[StateKind::InProgress], true)
            .unwrap()
            .len()
    };
    assert_eq!(list(), 1);
    let lines = w.plane.server.lines();
    let new = format!("GET {}", plane_issue_path("work-items/"));
    let old = format!("GET {}", plane_issue_path("issues/"));
    assert_eq!(count(&lines, &new), 1, "tried once: {lines:#?}");
    assert_eq!(count(&lines, &old), 1, "{lines:#?}");
    // Remembered: the next listing goes straight to the legacy route.
    w.plane.server.clear();
    assert_eq!(list(), 1);
    let lines = w.plane.server.lines();
    assert_eq!(count(&lines, &new), 0, "{lines:#?}");
    assert_eq!(count(&lines, &old), 1, "{lines:#?}");
}

#[test]
fn a_gitea_older_than_1_22_finds_the_open_pr_by_listing_instead_of_looping() {
    let w = World::new();
    w.gitea.state.lock().unwrap().before_1_22 = true;
    // A task branch on origin to open a PR from.
    w.sbx.origin_git(&["branch", "orch/widget-9", "main"]);
    let env = w.sbx.env.clone();
    let settings = orch::config::Settings::load(&|k| env.get(k).cloned(), None, None).unwrap();
    let g = orch::adapters::gitea::Gitea::from_settings(&settings.adapters).unwrap();
    let first = g
        .ensure_pull("acme/widget", "main", "orch/widget-9", "t", "b")
        .unwrap();
    w.gitea.server.clear();
    // The base/head lookup is missing (404); creating again is refused
    // (409); the open PR is found in the listing: the same PR, no second.
    let again = g
        .ensure_pull("acme/widget", "main", "orch/widget-9", "t", "b")
        .unwrap();
    assert_eq!(again.number, first.number);
    assert_eq!(w.gitea.state.lock().unwrap().prs.len(), 1);
    let lines = w.gitea.server.lines();
    assert!(
        lines.iter().any(|l| l.starts_with("GET /api/v1/repos/acme/widget/pulls")
            && !l.contains("/pulls/")),
        "{lines:#?}"
    );
}

#[test]
fn config_check_online_resolves_the_plane_states_without_caching_them() {
    let w = World::new();
    let show = w.sbx.ok(&["config", "show"]);
    assert!(
        show.contains("in_progress  In Progress    - (unresolved)"),
        "{show}"
    );
    let out = w
        .sbx
        .orch()
        .args(["config", "check", "--online"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("ok   project widget plane states: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("in_progress=") && line.contains("done="),
        "{line}"
    );
    // Asked, not cached: config show still resolves nothing by itself.
    assert_eq!(w.sbx.count("SELECT COUNT(*) FROM tracker_states"), 0);

    // A Plane that refuses the key fails the check (exit 3), naming it.
    let mut sbx = w.sbx;
    sbx.set("ORCH_PLANE_API_KEY", "wrong");
    let out = sbx
        .orch()
        .args(["config", "check", "--online"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("FAIL project widget plane states: "),
        "{text}"
    );
}

/// `orch config check --online` in `sbx`: its exit code and stdout.
fn check_online(sbx: &Sandbox) -> (Option<i32>, String) {
    let out = sbx
        .orch()
        .args(["config", "check", "--online"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// The line of `text` that starts with `start` (panics naming it when
/// there is none).
fn check_line(text: &str, start: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line {start:?} in:\n{text}"))
        .to_string()
}

#[test]
fn config_check_online_asks_gitea_for_its_version_and_the_tokens_scopes_and_telegram_for_its_bot() {
    // The fakes are bound, not `..`-dropped: they serve while bound.
    let World {
        mut sbx,
        gitea,
        plane: _plane,
        tg: _tg,
        ..
    } = World::new();
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        check_line(&text, "ok   gitea version"),
        "ok   gitea version: Gitea 1.25.4"
    );
    assert_eq!(
        check_line(&text, "ok   project widget gitea token"),
        "ok   project widget gitea token: write:repository and write:issue on acme/widget"
    );
    assert_eq!(
        check_line(&text, "ok   telegram bot"),
        "ok   telegram bot: @orch_pipeline_bot posts to supergroup \"Delivery pipeline\" (-1001234567890)"
    );
    // The probes were writes that Gitea refuses at validation: nothing made.
    let probes: Vec<String> = gitea
        .server
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("POST "))
        .collect();
    assert_eq!(probes.len(), 2, "{probes:#?}");
    {
        let st = gitea.state.lock().unwrap();
        assert!(st.prs.is_empty() && st.comments.is_empty(), "{st:?}");
    }

    // A token that may open PRs but not comment; an old Gitea.
    {
        let mut st = gitea.state.lock().unwrap();
        st.scopes = Some(vec!["write:repository"]);
        st.version = Some("1.21.11".into());
    }
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(3), "{text}");
    assert_eq!(
        check_line(&text, "FAIL project widget gitea token"),
        "FAIL project widget gitea token: ORCH_GITEA_TOKEN lacks write:issue on acme/widget \
         (a token needs write:repository and write:issue)"
    );
    assert!(
        check_line(&text, "ok   gitea version").contains("older than 1.22"),
        "{text}"
    );

    // A chat the bot cannot see, then a revoked bot token.
    sbx.set("ORCH_TELEGRAM_CHAT_ID", "-1009999999999");
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(3), "{text}");
    let l = check_line(&text, "FAIL telegram bot");
    assert!(
        l.contains("ORCH_TELEGRAM_CHAT_ID") && l.contains("chat not found"),
        "{l}"
    );
    sbx.set("ORCH_TELEGRAM_BOT_TOKEN", "7123456789:revoked");
    let (_, text) = check_online(&sbx);
    let l = check_line(&text, "FAIL telegram bot");
    assert!(
        l.contains("ORCH_TELEGRAM_BOT_TOKEN")
            && l.contains("Unauthorized")
            && !l.contains("revoked"),
        "the token is named, its value scrubbed: {l}"
    );

    // A Gitea that refuses the token altogether.
    sbx.set("ORCH_GITEA_TOKEN", "wrong");
    let (_, text) = check_online(&sbx);
    let l = check_line(&text, "FAIL project widget gitea token");
    assert!(l.contains("401"), "{l}");
}

#[test]
fn config_check_online_asks_gitea_whether_the_repository_allows_orchs_merges() {
    let World {
        mut sbx,
        gitea,
        plane: _plane,
        tg: _tg,
        ..
    } = World::new();
    let path = sbx.dir.join("orch.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    // A style whose merge is not the tested tip fails offline already.
    std::fs::write(
        &path,
        original.replace(
            "forge = \"gitea\"",
            "forge = \"gitea\"\nmerge_style = \"squash\"",
        ),
    )
    .unwrap();
    let out = sbx.orch().args(["config", "check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(3), "{text}");
    let l = check_line(&text, "FAIL project widget merge style");
    assert!(
        l.contains("projects.widget.merge_style")
            && l.contains("\"squash\"")
            && l.contains("fast-forward-only"),
        "{l}"
    );
    std::fs::write(&path, &original).unwrap();

    // Everything allowed (the fixture's repository, manual merges on).
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        check_line(&text, "ok   project widget merge style"),
        "ok   project widget merge style: gitea: main moves only to the merge line's tested tip"
    );
    assert_eq!(
        check_line(&text, "ok   project widget gitea merge style"),
        "ok   project widget gitea merge style: projects.widget.merge_style = \"fast-forward-only\": \
         acme/widget allows it (allow_fast_forward_only_merge)"
    );
    assert!(
        check_line(&text, "ok   project widget gitea manual merge").contains("acme/widget allows"),
        "{text}"
    );

    // Fast-forward-only merges off, and manual merges off while the line
    // batches (8).
    {
        let mut st = gitea.state.lock().unwrap();
        st.repo_settings
            .insert("allow_fast_forward_only_merge", serde_json::json!(false));
        st.repo_settings
            .insert("allow_manual_merge", serde_json::json!(false));
    }
    sbx.set("ORCH_MERGE_LINE_BATCH_MAX", "8");
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(3), "{text}");
    assert_eq!(
        check_line(&text, "FAIL project widget gitea merge style"),
        "FAIL project widget gitea merge style: projects.widget.merge_style = \"fast-forward-only\" \
         but acme/widget does not allow fast-forward-only merges (Gitea: repository settings → \
         Pull Requests)"
    );
    let l = check_line(&text, "FAIL project widget gitea manual merge");
    assert!(
        l.contains("ORCH_MERGE_LINE_BATCH_MAX = 8")
            && l.contains("does not allow marking pull requests merged manually")
            && l.contains("dead-letter"),
        "{l}"
    );
    assert!(!text.contains(GITEA_TOKEN), "the token is never shown");

    // Fast-forward-only allowed again; manual merges off but every merge
    // is one PR's.
    gitea
        .state
        .lock()
        .unwrap()
        .repo_settings
        .remove("allow_fast_forward_only_merge");
    sbx.set("ORCH_MERGE_LINE_BATCH_MAX", "1");
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        check_line(&text, "ok   project widget gitea manual merge")
            .contains("not needed: ORCH_MERGE_LINE_BATCH_MAX = 1"),
        "{text}"
    );

    // An older Gitea that does not say: noted, not failed.
    gitea
        .state
        .lock()
        .unwrap()
        .repo_settings
        .insert("allow_manual_merge", serde_json::Value::Null);
    sbx.set("ORCH_MERGE_LINE_BATCH_MAX", "8");
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        check_line(&text, "ok   project widget gitea manual merge")
            .contains("no allow_manual_merge"),
        "{text}"
    );

    // A repository the token's user cannot see: one failed check.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("repo = \"acme/widget\"", "repo = \"acme/gone\""),
    )
    .unwrap();
    let (code, text) = check_online(&sbx);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        check_line(&text, "FAIL project widget gitea repository").contains("404"),
        "{text}"
    );
}

/// INV-10 at the merge: orch merges naming the head it tested
/// (`head_commit_id`); a head that moved since — another epoch's push —
/// is refused by Gitea and main does not move. Only the tested head
/// merges.
#[test]
fn a_gitea_merge_whose_head_moved_since_it_was_tested_is_refused() {
    use orch::adapters::gitea::{Gitea, MergeOutcome};
    let w = World::new();
    let sbx = &w.sbx;
    let tree = sbx.origin_git(&["rev-parse", "main^{tree}"]);
    let main = sbx.origin_git(&["rev-parse", "main"]);
    let tested = sbx.origin_git(&["commit-tree", &tree, "-p", &main, "-m", "tested"]);
    let moved = sbx.origin_git(&["commit-tree", &tree, "-p", &tested, "-m", "moved"]);
    let branch = format!("refs/heads/{BRANCH}");
    sbx.origin_git(&["update-ref", &branch, &moved]);
    let env = sbx.env.clone();
    let settings = orch::config::AdapterSettings::load(&|k| env.get(k).cloned()).unwrap();
    let gitea = Gitea::from_settings(&settings).unwrap();
    let pr = gitea
        .create_pull("acme/widget", "main", BRANCH, "t", "b")
        .unwrap()
        .unwrap();
    let style = orch::config::MergeStyle::FastForwardOnly;
    let out = gitea
        .merge_pull("acme/widget", pr.number, style, &tested)
        .unwrap();
    assert!(
        matches!(&out, MergeOutcome::Conflict(t) if t.contains("head out of date")),
        "{out}"
    );
    assert_eq!(sbx.origin_git(&["rev-parse", "main"]), main, "main stays");
    assert!(!w.gitea.state.lock().unwrap().prs[0].merged);
    let out = gitea
        .merge_pull("acme/widget", pr.number, style, &moved)
        .unwrap();
    assert!(matches!(out, MergeOutcome::Merged { .. }), "{out}");
    assert_eq!(sbx.origin_git(&["rev-parse", "main"]), moved);
}
