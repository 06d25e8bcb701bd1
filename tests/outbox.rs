//! `orch outbox list|retry`: a dead letter is seen and sent again without
//! SQL — rehearsed first (nothing sent, nothing written), then delivered
//! once, with the retry recorded on the message, counted and logged.

use crate::fakes::*;
use crate::util::*;

/// A sandbox whose notifier is the fake Telegram, pointed at a chat that
/// does not exist (every notification is a permanent 400), and task 1
/// escalated by hand: its `escalated` notification is dead-lettered by
/// the first `orch deliver`. Returns the dead letter's id.
fn dead_notification() -> (Sandbox, FakeTelegram, i64) {
    let mut sbx = Sandbox::new();
    let tg = FakeTelegram::start();
    sbx.set("ORCH_NOTIFIER", "telegram")
        .set("ORCH_TELEGRAM_API_URL", &tg.url())
        .set("ORCH_TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
        .set("ORCH_TELEGRAM_CHAT_ID", "-42")
        .set("ORCH_HTTP_CONNECT_TIMEOUT_MS", "1000")
        .set("ORCH_HTTP_TIMEOUT_MS", "2000")
        .set("SUDO_USER", "alice");
    let id = sbx.add_issue("Retry me");
    sbx.ok(&["task", "cancel", &id.to_string(), "--reason", "test"]);
    let s = sbx.json(&["deliver"]);
    let dead = s["dead_lettered"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{s}");
    assert!(tg.sent().is_empty());
    (sbx, tg, dead[0].as_i64().unwrap())
}

fn outbox_row(sbx: &Sandbox, id: i64) -> (String, i64, i64, Option<String>) {
    sbx.db()
        .query_row(
            "SELECT status, attempts, retries, retried_by FROM outbox WHERE id=?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

#[test]
fn a_dead_letter_is_listed_rehearsed_then_sent_once_and_the_retry_recorded() {
    let (mut sbx, tg, id) = dead_notification();
    let ids = id.to_string();

    // Listed: all messages, and only the dead ones.
    let text = sbx.ok(&["outbox", "list", "--dead"]);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("dead")
            && line.contains("notify")
            && line.contains("escalated")
            && line.contains("chat not found"),
        "{line}"
    );
    let all = sbx.json(&["outbox", "list"]);
    assert!(all.as_array().unwrap().len() > 1, "{all}");
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["status"] == "delivered"));
    let status = sbx.ok(&["status"]);
    assert!(
        status.contains(&format!("(orch outbox retry {id})")),
        "status names the command: {status}"
    );
    let dead = sbx.json(&["outbox", "list", "--dead"]);
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead[0]["id"], id);

    // The chat is fixed; a rehearsal sends and writes nothing.
    sbx.set("ORCH_TELEGRAM_CHAT_ID", TELEGRAM_CHAT);
    let before = sbx.dump();
    let out = sbx.ok(&["outbox", "retry", &ids, "--dry-run"]);
    assert!(out.starts_with("dry run: nothing was written"), "{out}");
    assert!(
        out.contains(&format!("retry message {id} (notify escalated, task 1)"))
            && out.contains(&format!("send message {id} (escalated via telegram")),
        "{out}"
    );
    let rehearsed = sbx.json(&["outbox", "retry", &ids, "--dry-run"]);
    assert_eq!(rehearsed["retried"][0]["id"], id, "{rehearsed}");
    assert_eq!(sbx.dump(), before, "a dry run writes nothing");
    assert!(tg.sent().is_empty(), "a dry run sends nothing");

    // The real retry: sent at once, recorded on the row, counted, logged.
    let out = sbx.orch().args(["outbox", "retry", &ids]).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("delivered 1, failed 0"), "{stdout}");
    assert!(
        stderr.contains("dead letter retried by hand") && stderr.contains("by=\"alice\""),
        "{stderr}"
    );
    let sent = tg.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("escalated"), "{sent:?}");
    assert_eq!(
        outbox_row(&sbx, id),
        ("delivered".into(), 1, 1, Some("alice".into()))
    );
    let text = sbx.ok(&["outbox", "list"]);
    assert!(
        text.contains("[retried 1× by hand, last by alice just now]"),
        "{text}"
    );
    let metrics = sbx.ok(&["metrics"]);
    assert!(
        metrics.contains("\norch_outbox_retried_total 1\n"),
        "{metrics}"
    );

    // Never twice: a delivered message is refused, and the next pass
    // sends nothing.
    let again = sbx.orch().args(["outbox", "retry", &ids]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(&format!(
            "outbox message {id} is delivered, not dead-lettered"
        )),
        "{err}"
    );
    sbx.json(&["deliver"]);
    assert_eq!(tg.sent().len(), 1, "delivered once");
    let none = sbx
        .orch()
        .args(["outbox", "retry", "999"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no outbox message 999"));
    sbx.check_invariants();
}

#[test]
fn all_dead_retries_each_once_fails_again_with_exit_1_and_skips_a_superseded_state() {
    let (sbx, tg, id) = dead_notification();
    // A tracker state that died, and a newer state of the task delivered
    // since: sending the old one would move the item back.
    let db = sbx.db();
    db.execute(
        "UPDATE outbox SET status='dead', last_error='permanent: gone' WHERE kind='state'",
        [],
    )
    .unwrap();
    let old_state: i64 = db
        .query_row("SELECT id FROM outbox WHERE kind='state'", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "INSERT INTO outbox (dedupe_key, task_id, channel, kind, payload, status, next_attempt_at_ms, created_at_ms, delivered_at_ms) \
         VALUES ('newer-state', 1, 'tracker', 'state', '{\"state\":\"done\"}', 'delivered', 0, 0, 0)",
        [],
    )
    .unwrap();
    let newer: i64 = db
        .query_row(
            "SELECT id FROM outbox WHERE dedupe_key='newer-state'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    let named = sbx
        .orch()
        .args(["outbox", "retry", &old_state.to_string()])
        .output()
        .unwrap();
    assert_eq!(named.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&named.stderr).contains(&format!(
            "the newer state message {newer} was delivered since"
        )),
        "{}",
        String::from_utf8_lossy(&named.stderr)
    );

    // The chat still does not exist: the notification fails again.
    let out = sbx
        .orch()
        .args(["--json", "outbox", "retry", "--all-dead"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a send failed again");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retried"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["retried"][0]["id"], id);
    assert_eq!(v["superseded"][0], serde_json::json!([old_state, newer]));
    assert_eq!(v["delivery"]["dead_lettered"][0], id, "{v}");
    assert!(tg.sent().is_empty());
    assert_eq!(
        outbox_row(&sbx, id),
        ("dead".into(), 1, 1, Some("alice".into()))
    );
    assert_eq!(outbox_row(&sbx, old_state).0, "dead", "left as it was");
    let text = sbx.ok(&["outbox", "retry", "--all-dead", "--dry-run"]);
    assert!(
        text.contains(&format!(
            "skipped message {old_state}: a newer tracker state (message {newer}) was delivered since"
        )),
        "{text}"
    );
}

/// Rows queued by an orch from before typed messages — written the way
/// its `insert_outbox` wrote them: these columns, the `json!` payload's
/// text — deliver unchanged; a row that is no message orch knows is a
/// dead letter at once with the reason, and does not hold up the later
/// messages of its task and channel.
#[test]
fn rows_queued_by_an_older_orch_deliver_and_a_malformed_row_is_a_dead_letter() {
    use serde_json::json;
    let sbx = Sandbox::new();
    let id = sbx.add_issue("Old rows");
    sbx.ok(&["deliver"]);
    let report = json!({
        "role": "reviewer", "stage": "review", "job_id": 1, "attempt": 1,
        "outcome": "succeeded", "exit_code": 0,
        "verdict": { "verdict": "approve", "summary": "fine" },
        "permission_denials": [], "branch": "orch/widget-1", "commit": null,
        "usage": null,
    });
    let rows = [
        (
            "bad:state",
            "tracker",
            "state",
            json!({ "state": "sideways" }),
        ),
        ("bad:kind", "notify", "fired", json!({ "text": "?" })),
        (
            "old:comment",
            "tracker",
            "comment",
            json!({ "text": "old comment" }),
        ),
        (
            "old:report",
            "tracker",
            "comment",
            json!({ "text": "old report", "report": report }),
        ),
        (
            "old:state",
            "tracker",
            "state",
            json!({ "state": "needs_input" }),
        ),
        (
            "old:pr",
            "forge",
            "open_pr",
            json!({ "branch": "orch/widget-1", "base": "main", "title": "t", "body": "b" }),
        ),
        (
            "old:pr-comment",
            "forge",
            "comment",
            json!({ "text": "pr note" }),
        ),
        (
            "old:escalated",
            "notify",
            "escalated",
            json!({ "text": "old escalation" }),
        ),
        (
            "old:deployed",
            "notify",
            "deployed",
            json!({ "text": "old deploy" }),
        ),
        (
            "old:unblocked",
            "notify",
            "unblocked",
            json!({ "text": "old unblock" }),
        ),
        (
            "old:parked",
            "notify",
            "parked",
            json!({ "text": "old park" }),
        ),
        (
            "old:paused",
            "notify",
            "paused",
            json!({ "text": "old pause" }),
        ),
    ];
    let db = sbx.db();
    let mut ids = Vec::new();
    for (key, channel, kind, payload) in &rows {
        let row = db.query_row(
            "INSERT INTO outbox (dedupe_key, task_id, channel, kind, payload, next_attempt_at_ms, created_at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?6) ON CONFLICT(dedupe_key) DO NOTHING RETURNING id",
            orch::sql::params![key, id, channel, kind, payload.to_string(), 0],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
        ids.push(row);
    }
    drop(db);

    let out = sbx.orch().args(["--json", "deliver"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["dead_lettered"], json!(ids[..2]), "{v}");
    assert_eq!(v["delivered"], json!(ids[2..]), "{v}\n{stderr}");
    let failed = v["failed"].to_string();
    assert!(
        failed.contains("malformed tracker/state message")
            && failed.contains("unknown tracker state \\\"sideways\\\"")
            && failed.contains("malformed notify/fired message: unknown notification kind"),
        "{failed}"
    );
    for text in ["old comment", "old escalation", "old pause"] {
        assert!(stderr.contains(text), "{text} in {stderr}");
    }
    let state: String = sbx
        .db()
        .query_row(
            "SELECT l.state FROM local_issues l JOIN tasks t \
             ON t.tracker_issue_id = CAST(l.id AS TEXT) WHERE t.id=?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "needs_input");

    // The operator sees why, and a retry of it fails the same way.
    let dead = sbx.ok(&["outbox", "list", "--dead"]);
    assert!(
        dead.contains("permanent: malformed tracker/state message"),
        "{dead}"
    );
    let again = sbx
        .orch()
        .args(["--json", "outbox", "retry", &ids[1].to_string()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert_eq!(outbox_row(&sbx, ids[1]).0, "dead");
}
