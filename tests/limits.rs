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
        .set("FAKE_AGENT_RESET_AT", &reset_s.to_string())
        // The limit's run is refunded: one counted attempt is enough, and
        // no output shows a number past it.
        .set("ORCH_JOB_MAX_ATTEMPTS", "1");
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
    let metrics = sbx.ok(&["metrics"]);
    assert!(metrics.contains("\norch_accounts_paused 1\n"), "{metrics}");
    // `orch why` names the pause as what the task waits for.
    let why = sbx.json(&["why", "1"]);
    assert_eq!(why["waiting"]["kind"], "paused", "{why}");
    assert_eq!(why["waiting"]["account"], "default", "{why}");
    assert_eq!(why["waiting"]["until_ms"], reset_s * 1000, "{why}");
    assert_eq!(why["waiting"]["job_id"], 1, "{why}");
    let text = sbx.ok(&["why", "1"]);
    let waits = text.lines().find(|l| l.starts_with("waits for: ")).unwrap();
    // A point in time reads as one: "until <time> (in 59 min)", never
    // "until in 59 min".
    assert!(
        waits.contains("paused by a usage limit until 20")
            && (waits.contains("(in 59 min)") || waits.contains("(in 1 h)"))
            && !waits.contains("until in"),
        "{waits}"
    );

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
    // Job 1 ran twice (run 2 counted as attempt 1): done, with no stale
    // error of the limit, and attempt 1 wherever it is shown.
    let (status, error, run): (String, Option<String>, i64) = sbx
        .db()
        .query_row(
            "SELECT status, last_error, attempt FROM jobs WHERE id=1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), error, run), ("done", None, 2));
    let show = sbx.ok(&["task", "show", "1"]);
    let line = show
        .lines()
        .find(|l| l.trim_start().starts_with("job 1 "))
        .unwrap();
    assert!(
        line.contains(" done ") && line.contains("attempt 1 (run 2)") && !line.contains("limit"),
        "{line}"
    );
    let why = sbx.ok(&["why", "1"]);
    assert!(
        why.contains("caused by job 1 (analyst, attempt 1, done)") && !why.contains("attempt 2"),
        "{why}"
    );
    let reports = sbx.count(
        "SELECT COUNT(*) FROM outbox WHERE task_id=1 AND kind='comment' \
         AND payload LIKE '%(job 1, attempt 2)%'",
    );
    assert_eq!(reports, 0, "the run reports say attempt 1");
    assert!(
        sbx.count(
            "SELECT COUNT(*) FROM outbox WHERE task_id=1 AND kind='comment' \
             AND payload LIKE '%(job 1, attempt 1)%'"
        ) >= 1,
        "the clean run's report"
    );
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

fn parked(sbx: &Sandbox) -> i64 {
    sbx.count("SELECT COUNT(*) FROM tasks WHERE parked_at_ms IS NOT NULL")
}

/// Runs task 1's analysis and architecture; then its development job is
/// over a budget: the next claims take nothing.
fn run_until_parked_at_development(sbx: &Sandbox) {
    for stage in ["analysis", "architecture"] {
        assert_eq!(sbx.json(&["work-once"])["stage"], stage);
    }
    assert_eq!(sbx.stage(1), "development");
    for _ in 0..2 {
        assert_eq!(
            sbx.json(&["work-once"])["result"],
            "idle",
            "nothing claimed"
        );
    }
}

fn park_notifications(sbx: &Sandbox) -> i64 {
    sbx.count("SELECT COUNT(*) FROM outbox WHERE channel='notify' AND kind='parked'")
}

#[test]
fn a_task_budget_reached_mid_pipeline_parks_the_task_until_the_ceiling_is_raised() {
    let mut sbx = Sandbox::new();
    // Each fake run costs $0.0375: two fit in $0.08, a third (reserved at
    // $0.01: the developer has no runs yet to take a median of) would not.
    sbx.set("ORCH_BUDGET_TASK_USD", "0.08")
        .set("ORCH_BUDGET_RESERVE_USD", "0.01");
    sbx.add_issue("costly");
    run_until_parked_at_development(&sbx);
    let show = sbx.json(&["task", "show", "1"]);
    let reason = show["task"]["parked_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("task budget $0.08"), "{show}");
    assert!(show["task"]["parked_at_ms"].is_i64(), "{show}");
    assert_eq!(show["task"]["escalated"], false);
    let status = sbx.json(&["status"]);
    assert_eq!(status["parked"][0]["task_id"], 1, "{status}");
    let why = sbx.json(&["why", "1"]);
    assert_eq!(why["waiting"]["kind"], "parked", "{why}");
    assert!(
        why["waiting"]["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("task budget"),
        "{why}"
    );
    assert!(sbx
        .ok(&["status"])
        .contains("parked: task 1 (widget) since "));
    // Not failed, not an attempt; one notification however often it is
    // looked at.
    assert_eq!(
        sbx.count("SELECT attempt FROM jobs WHERE stage='development'"),
        1
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='queued'"),
        1
    );
    assert_eq!(park_notifications(&sbx), 1);
    let metrics = sbx.ok(&["metrics"]);
    assert!(metrics.contains("\norch_tasks_parked 1\n"), "{metrics}");
    // What an agent of the task would be told is left: $0.08 − $0.075.
    let brief = sbx.json(&["agents", "show", "developer", "--task", "1"]);
    let env = brief["env"].to_string();
    assert!(
        env.contains(r#"["ORCH_BUDGET_USD_LEFT","0.01"]"#),
        "{brief}"
    );

    sbx.set("ORCH_BUDGET_TASK_USD", "10");
    sbx.tick_until(20, |s| s.stage(1) == "done");
    assert_eq!(parked(&sbx), 0);
    assert_eq!(park_notifications(&sbx), 1);
}

#[test]
fn a_task_token_budget_reached_mid_pipeline_parks_the_task_until_the_ceiling_is_raised() {
    let mut sbx = Sandbox::new();
    // Each fake run uses 8 + 110 + 33204 + 5722 = 39044 tokens: two fit in
    // 80000, a third (reserved at 5000: the developer has no runs yet)
    // would not.
    sbx.set("ORCH_BUDGET_TASK_TOKENS", "80000")
        .set("ORCH_BUDGET_RESERVE_TOKENS", "5000");
    sbx.add_issue("wordy");
    run_until_parked_at_development(&sbx);
    let show = sbx.json(&["task", "show", "1"]);
    let reason = show["task"]["parked_reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason,
        "task budget 80000 tokens: 78088 tokens spent or running, \
         this developer run is expected to cost 5000 tokens",
        "{show}"
    );
    assert_eq!(show["task"]["escalated"], false);
    // Not failed, not an attempt; one notification.
    assert_eq!(
        sbx.count("SELECT attempt FROM jobs WHERE stage='development'"),
        1
    );
    assert_eq!(
        sbx.count("SELECT COUNT(*) FROM jobs WHERE stage='development' AND status='queued'"),
        1
    );
    assert_eq!(park_notifications(&sbx), 1);
    // What an agent of the task would be told is left: 80000 − 78088.
    let brief = sbx.json(&["agents", "show", "developer", "--task", "1"]);
    let env = brief["env"].to_string();
    assert!(
        env.contains(r#"["ORCH_BUDGET_TOKENS_LEFT","1912"]"#),
        "{brief}"
    );
    assert!(!env.contains("ORCH_BUDGET_USD_LEFT"), "{brief}");

    sbx.set("ORCH_BUDGET_TASK_TOKENS", "1000000");
    assert_eq!(sbx.json(&["work-once"])["stage"], "development");
    assert_eq!(parked(&sbx), 0);
    assert_eq!(park_notifications(&sbx), 1);
}

#[test]
fn a_daily_budget_parks_and_unpark_lets_one_job_through() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_BUDGET_DAY_USD", "0.01");
    sbx.add_issue("over the day");
    // No recorded runs: the reservation is ORCH_BUDGET_RESERVE_USD ($0.50).
    assert_eq!(sbx.json(&["work-once"])["result"], "idle");
    assert_eq!(parked(&sbx), 1);
    let out = sbx.orch().args(["task", "unpark", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no task 2");
    let v = sbx.json(&["task", "unpark", "1"]);
    assert_eq!(v["unparked"], true, "{v}");
    assert_eq!(parked(&sbx), 0);
    let v = sbx.json(&["work-once"]);
    assert_eq!(
        v["finalized"]["action"], "advanced",
        "the waiver lets it run: {v}"
    );
    // The waiver was for one job: the next one parks again.
    assert_eq!(sbx.json(&["work-once"])["result"], "idle");
    assert_eq!(parked(&sbx), 1);
    assert_eq!(park_notifications(&sbx), 2);
    let out = sbx.orch().args(["task", "unpark", "1"]).output().unwrap();
    assert!(out.status.success());
    let out = sbx.orch().args(["task", "unpark", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "not parked any more");

    // The next UTC day has its own budget: a parked task resumes by itself.
    sbx.set("ORCH_BUDGET_DAY_USD", "0.05")
        .set("ORCH_TEST_CLOCK_OFFSET_MS", "86400000");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
}

#[test]
fn a_run_expected_to_cost_more_than_the_stage_run_ceiling_parks_and_agents_see_the_ceiling() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_BUDGET_RUN_USD", "0.20");
    sbx.add_issue("big run");
    // The analyst has no runs: reserved at ORCH_BUDGET_RESERVE_USD ($0.50).
    assert_eq!(sbx.json(&["work-once"])["result"], "idle");
    let show = sbx.json(&["task", "show", "1"]);
    let reason = show["task"]["parked_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("stage run budget $0.20"), "{show}");
    let brief = sbx.json(&["agents", "show", "analyst", "--task", "1"]);
    assert!(
        brief["env"]
            .to_string()
            .contains(r#"["ORCH_BUDGET_USD_LEFT","0.20"]"#),
        "{brief}"
    );
    sbx.set("ORCH_BUDGET_RESERVE_USD", "0.05");
    let v = sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "advanced", "{v}");
}
