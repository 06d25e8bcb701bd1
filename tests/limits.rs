//! Usage and rate limits of the model account (issue 16): a run stopped by
//! one is requeued without an attempt and its account's dispatch pauses,
//! until the reset the CLI named or with backoff; one notification per
//! pause; a clean run clears it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::util::*;

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn paused_notifications(sbx: &Sandbox) -> i64 {
    sbx.count("SELECT COUNT(*) FROM outbox WHERE channel='notify' AND kind='paused'")
}

#[test]
fn a_usage_limit_pauses_the_account_until_its_reset_without_an_attempt() {
    let mut sbx = Sandbox::new();
    let reset_s = wall_ms() / 1000 + 3600;
    sbx.set("FAKE_AGENT_MODE_ANALYST", "usage-limit")
        .set("FAKE_AGENT_RESET_AT", &reset_s.to_string());
    sbx.add_issue("one");
    sbx.add_issue("two");
    let v = sbx.json(&["work-once"]);
    let f = &v["finalized"];
    assert_eq!(f["action"], "paused", "{v}");
    // Every role of the sandbox runs [agents.default]: one account.
    assert_eq!(f["account"], "default", "{v}");
    assert_eq!(
        f["until_ms"],
        reset_s * 1000,
        "until the reset the CLI named"
    );
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("usage limit reached"),
        "{v}"
    );
    // Requeued without counting an attempt.
    assert_eq!(
        sbx.count("SELECT attempt - free_attempts FROM jobs WHERE id=1"),
        1
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE status='queued'"),
        2
    );
    assert_eq!(sbx.count("SELECT escalated FROM tasks WHERE id=1"), 0);
    // Nothing of the account is dispatched meanwhile: the other task's
    // job waits too.
    assert_eq!(sbx.json(&["work-once"])["result"], "idle");
    let status = sbx.json(&["status"]);
    let pauses = status["pauses"].as_array().unwrap();
    assert_eq!(pauses.len(), 1, "{status}");
    assert_eq!(pauses[0]["account"], "default");
    assert_eq!(pauses[0]["kind"], "usage");
    assert_eq!(pauses[0]["until_ms"], reset_s * 1000);
    let text = sbx.ok(&["status"]);
    assert!(
        text.contains("paused: account default (usage limit) until "),
        "{text}"
    );
    assert_eq!(paused_notifications(&sbx), 1, "one notification");

    // After the reset the work goes on; a clean run ends the pause.
    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "3601000")
        .set("FAKE_AGENT_MODE_ANALYST", "ok");
    for _ in 0..2 {
        let v = sbx.json(&["work-once"]);
        assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    }
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM tasks WHERE stage='architecture'"),
        2
    );
    assert_eq!(sbx.count("SELECT COUNT(*) FROM pauses"), 0);
    assert_eq!(sbx.json(&["status"])["pauses"], serde_json::json!([]));
    assert_eq!(paused_notifications(&sbx), 1, "still one notification");
}

#[test]
fn a_rate_limit_without_a_time_backs_off_and_grows_until_a_clean_run() {
    let mut sbx = Sandbox::new();
    sbx.set("FAKE_AGENT_MODE_ANALYST", "api-error-429")
        .set("ORCH_LIMIT_BACKOFF_S", "60");
    sbx.add_issue("rate limited");
    let before = wall_ms();
    let v = sbx.json(&["work-once"]);
    let after = wall_ms();
    assert_eq!(v["finalized"]["action"], "paused", "{v}");
    let until = v["finalized"]["until_ms"].as_i64().unwrap();
    assert!(
        (before + 60_000..=after + 60_000).contains(&until),
        "backs off ORCH_LIMIT_BACKOFF_S: {until} vs {before}..{after}"
    );
    assert_eq!(sbx.json(&["work-once"])["result"], "idle");

    // A 529 after the pause ended: the same pause, twice as long.
    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "61000")
        .set("FAKE_AGENT_MODE_ANALYST", "api-error-529");
    let before = wall_ms() + 61_000;
    let v = sbx.json(&["work-once"]);
    let after = wall_ms() + 61_000;
    assert_eq!(v["finalized"]["action"], "paused", "{v}");
    let until = v["finalized"]["until_ms"].as_i64().unwrap();
    assert!(
        (before + 120_000..=after + 120_000).contains(&until),
        "doubled: {until} vs {before}..{after}"
    );
    assert_eq!(paused_notifications(&sbx), 1, "one pause, one notification");
    assert_eq!(
        sbx.count("SELECT attempt - free_attempts FROM jobs WHERE id=1"),
        1,
        "no attempt counted"
    );

    sbx.set("ORCH_TEST_CLOCK_OFFSET_MS", "190000")
        .set("FAKE_AGENT_MODE_ANALYST", "ok");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
    assert_eq!(sbx.count("SELECT COUNT(*) FROM pauses"), 0);
}
