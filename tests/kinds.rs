//! Agent kinds end to end: the README's recipe of each CLI (Codex, Gemini,
//! OpenCode) is what orch renders, and run with `scripts/fake-agent`
//! replaying that CLI's captured output (`FAKE_AGENT_KIND`) it takes a task
//! to done with the captured usage; a 400 fails at once, a 429 pauses, a
//! denied write fails as "no change" naming the denial.

use crate::util::*;
use std::path::Path;

/// One kind under test: its `kind`, the README recipe's program, the
/// `FAKE_AGENT_KIND`, and the usage of one captured success
/// `(uncached input, cache read, cache creation, output)`.
struct Kind {
    kind: &'static str,
    /// Applied to the recipe (e.g. Gemini's `json` format instead of
    /// `stream-json`).
    edit: fn(String) -> String,
    usage: (i64, i64, i64, i64),
    /// The usage orch counts for a run that resumed a session (the
    /// `resume` capture; for Codex the thread's total less the first
    /// run's), where the CLI's resume was captured.
    resumed: Option<(i64, i64, i64, i64)>,
    /// The cost the CLI reports per run, if it does.
    cost: Option<f64>,
    /// The denial of the captured `denied` run, as named.
    denial: &'static str,
}

const KINDS: [Kind; 4] = [
    Kind {
        kind: "codex",
        edit: |r| r,
        usage: (19670 - 9792, 9792, 0, 102),
        resumed: Some(((39704 - 19712) - (19670 - 9792), 19712 - 9792, 0, 204 - 102)),
        cost: None,
        denial: "apply_patch",
    },
    Kind {
        kind: "gemini",
        edit: |r| r,
        usage: (477 + 12150, 448 + 12096, 0, 21 + 60),
        resumed: Some((639 + 12403, 512 + 12288, 0, 21 + 60)),
        cost: None,
        denial: "write_file /srv/agent-run/gemini-denied-stream-json/repo/hello.txt",
    },
    Kind {
        kind: "gemini",
        edit: |r| r.replace("\"stream-json\"", "\"json\""),
        usage: (472 + 12130, 448 + 12096, 0, 21 + 59),
        resumed: Some((628 + 12436, 512 + 12224, 0, 21 + 58)),
        cost: None,
        denial: "write_file",
    },
    Kind {
        kind: "opencode",
        edit: |r| r,
        usage: (3750 + 3765, 3648 + 3712, 0, 58 + 3 + 44 + 3),
        resumed: None,
        cost: Some(0.022404 + 0.022091),
        denial: "apply_patch",
    },
];

/// The README's `[agents.default]` recipe of `kind` (its TOML block).
fn recipe(kind: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let needle = format!("[agents.default]\nkind = \"{kind}\"\n");
    let start = readme
        .find(&needle)
        .unwrap_or_else(|| panic!("README has no recipe for {kind}"));
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_string()
}

/// A sandbox whose agents are `k`'s README recipe, its program replaced by
/// `scripts/fake-agent` replaying `k`'s captures.
fn sandbox_of(k: &Kind, fake: bool) -> Sandbox {
    let mut sbx = Sandbox::new();
    let mut agent = (k.edit)(recipe(k.kind));
    if fake {
        let at = agent.find("argv = [\"").unwrap() + "argv = [\"".len();
        let end = at + agent[at..].find('"').unwrap();
        agent.replace_range(at..end, &format!("{ROOT}/scripts/fake-agent"));
    }
    let cfg = sbx.dir.join("orch.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("[agents.default]").unwrap();
    let end = text.find("[[projects]]").unwrap();
    std::fs::write(&cfg, format!("{}{agent}\n{}", &text[..start], &text[end..])).unwrap();
    sbx.set("FAKE_AGENT_KIND", k.kind);
    sbx
}

#[test]
fn the_readme_recipes_of_every_kind_are_what_orch_renders() {
    let expect: [(&str, &[&str]); 3] = [
        (
            "codex",
            &[
                "codex",
                "exec",
                "--json",
                "--strict-config",
                "-s",
                "workspace-write",
                "--skip-git-repo-check",
                "--add-dir",
                "<verdict_dir>",
                "-",
            ],
        ),
        (
            "gemini",
            &[
                "gemini",
                "-p",
                "",
                "--output-format",
                "stream-json",
                "--yolo",
                "--include-directories",
                "<verdict_dir>",
            ],
        ),
        (
            "opencode",
            &["opencode", "run", "--format", "json", "--auto"],
        ),
    ];
    for (kind, want) in expect {
        let k = KINDS.iter().find(|k| k.kind == kind).unwrap();
        let sbx = sandbox_of(k, false);
        let v = sbx.json(&["agents", "show", "developer"]);
        assert_eq!(v["kind"], kind, "{v}");
        let argv: Vec<String> = serde_json::from_value(v["argv"].clone()).unwrap();
        let verdict_dir = v["verdict_dir"].as_str().unwrap();
        let want: Vec<String> = want
            .iter()
            .map(|a| a.replace("<verdict_dir>", verdict_dir))
            .collect();
        // No session yet: the resume pair is dropped.
        assert_eq!(argv, want, "{kind}");
    }
}

#[test]
fn an_unknown_kind_is_a_config_error_naming_the_key() {
    let sbx = Sandbox::new();
    let cfg = sbx.dir.join("orch.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[agents.default]\n", "[agents.default]\nkind = \"aider\"\n"),
    )
    .unwrap();
    let out = sbx.orch().args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agents.default.kind") && err.contains("aider"),
        "{err}"
    );
}

#[test]
fn every_kind_takes_a_task_to_done_with_its_captured_usage() {
    for k in &KINDS {
        let sbx = sandbox_of(k, true);
        if k.kind == "codex" {
            // Codex reports no cost: priced from the config.
            sbx.append_config(
                "\n[prices.\"gpt-5.5\"]\ninput_usd_per_mtok = 1.25\noutput_usd_per_mtok = 10.0\ncache_read_usd_per_mtok = 0.125\n",
            );
        }
        sbx.add_issue(&format!("{} to done", k.kind));
        sbx.tick_until(20, |s| s.stage(1) == "done");
        type Run = (
            String,
            i64,
            i64,
            i64,
            i64,
            f64,
            bool,
            Option<String>,
            String,
        );
        let runs: Vec<Run> = {
            let db = sbx.db();
            let mut stmt = db
                .prepare(
                    "SELECT kind, input_tokens, cache_read_input_tokens, \
                     cache_creation_input_tokens, output_tokens, cost_usd, cost_known, session_id, \
                     argv FROM agent_runs ORDER BY id",
                )
                .unwrap();
            stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        assert_eq!(runs.len(), 7, "{}: one run per stage", k.kind);
        let price = |(i, r, c, o): (i64, i64, i64, i64)| {
            (i as f64 * 1.25 + r as f64 * 0.125 + c as f64 * 1.25 + o as f64 * 10.0) / 1e6
        };
        let mut total = (0, 0, 0, 0);
        for run in &runs {
            assert_eq!(run.0, k.kind);
            // The deployer runs twice (deploy-staging, deploy): the second
            // run resumes its session.
            let resumed = ["\"resume\"", "\"--resume\"", "\"--session\""]
                .iter()
                .any(|f| run.8.contains(f));
            let want = match k.resumed {
                Some(u) if resumed => u,
                _ => k.usage,
            };
            total = (
                total.0 + want.0,
                total.1 + want.1,
                total.2 + want.2,
                total.3 + want.3,
            );
            let priced = price(want);
            assert_eq!((run.1, run.2, run.3, run.4), want, "{}: {run:?}", k.kind);
            let session = run.7.as_deref().unwrap_or_else(|| panic!("{run:?}"));
            if k.kind == "opencode" {
                assert!(session.starts_with("ses_"), "{session}");
            } else {
                assert_eq!(session.len(), 36, "{session}");
            }
            match (k.cost, k.kind) {
                (Some(cost), _) => assert!(run.6 && (run.5 - cost).abs() < 1e-9, "{run:?}"),
                (None, "codex") => assert!(run.6 && (run.5 - priced).abs() < 1e-12, "{run:?}"),
                (None, _) => assert!(!run.6 && run.5 == 0.0, "{run:?}"),
            }
        }
        assert_eq!(
            runs.iter()
                // Whole argv elements: a checkout path may contain "resume".
                .filter(|r| r.8.contains("\"resume\"")
                    || r.8.contains("\"--resume\"")
                    || r.8.contains("\"--session\""))
                .count(),
            1,
            "{}: the deployer's second run resumed",
            k.kind
        );
        let usage = sbx.json(&["usage", "--task", "1"]);
        assert_eq!(usage["total"]["output_tokens"], total.3, "{}", k.kind);
        assert_eq!(
            usage["total"]["input_tokens_full"],
            total.0 + total.1 + total.2
        );
        let text = sbx.ok(&["usage"]);
        let unknown = k.cost.is_none() && k.kind != "codex";
        assert_eq!(
            usage["total"]["unknown_cost_runs"],
            if unknown { 7 } else { 0 },
            "{usage}"
        );
        assert_eq!(
            text.contains("cost unknown: no cost reported, no price for the model"),
            unknown,
            "{text}"
        );
        // The reviewer's reasons reach the verdict from the final text.
        sbx.check_invariants();
    }
}

#[test]
fn a_400_fails_at_once_a_429_pauses_and_a_denied_write_is_no_change_for_every_kind() {
    for k in &KINDS {
        // 400: failed at once, not retried.
        let mut sbx = sandbox_of(k, true);
        sbx.set("FAKE_AGENT_MODE_ANALYST", "api-error")
            .set("ORCH_JOB_MAX_ATTEMPTS", "3");
        sbx.add_issue("400");
        let v = sbx.json(&["work-once"]);
        assert_eq!(v["finalized"]["action"], "failed", "{}: {v}", k.kind);
        let reason = v["finalized"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("model API error 400"),
            "{}: {reason}",
            k.kind
        );
        assert_eq!(sbx.count("SELECT COUNT(*) FROM agent_runs"), 1);

        // 429: the account pauses, no attempt counted.
        let mut sbx = sandbox_of(k, true);
        sbx.set("FAKE_AGENT_MODE_ANALYST", "api-error-429");
        sbx.add_issue("429");
        let v = sbx.json(&["work-once"]);
        assert_eq!(v["finalized"]["action"], "paused", "{}: {v}", k.kind);
        assert_eq!(sbx.json(&["work-once"])["result"], "idle");
        assert_eq!(
            sbx.count("SELECT attempt - free_attempts FROM jobs WHERE id=1"),
            1,
            "no attempt counted"
        );

        // A denied write: nothing changed, the denial named.
        let mut sbx = sandbox_of(k, true);
        sbx.set("FAKE_AGENT_MODE_DEVELOPER", "denied-write")
            .set("ORCH_JOB_MAX_ATTEMPTS", "1");
        sbx.add_issue("denied");
        crate::pipeline::work_until_stage(&sbx, "development");
        let v = sbx.json(&["work-once"]);
        assert_eq!(v["finalized"]["action"], "failed", "{}: {v}", k.kind);
        let reason = v["finalized"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("no change")
                && reason.contains(&format!("1 permission denial(s): {}", k.denial)),
            "{}: {reason}",
            k.kind
        );
    }
}

#[test]
fn a_resumed_codex_thread_counts_only_its_own_tokens() {
    let k = &KINDS[0];
    let mut sbx = sandbox_of(k, true);
    sbx.set("FAKE_AGENT_REQUIRE_LINE", "- reviewed: add this");
    sbx.add_issue("rework");
    sbx.tick_until(25, |s| s.stage(1) == "done");
    let runs: Vec<(String, String, i64, i64, i64, String)> = {
        let db = sbx.db();
        let mut stmt = db
            .prepare(
                "SELECT role, session_id, input_tokens, cache_read_input_tokens, output_tokens, argv \
                 FROM agent_runs WHERE role='developer' ORDER BY id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (first, second) = (&runs[0], &runs[1]);
    assert!(!first.5.contains("\"resume\""), "{first:?}");
    assert!(
        second
            .5
            .contains(&format!("\"resume\",\"{}\",\"-\"", first.1)),
        "the rework resumes the thread: {second:?}"
    );
    assert_eq!(first.1, second.1, "the same thread");
    assert_eq!((first.2, first.3, first.4), (19670 - 9792, 9792, 102));
    // Codex reported the thread's total (39704 input incl. 19712 cached,
    // 204 output); orch counts the difference to the first run's.
    assert_eq!(
        (second.2, second.3, second.4),
        ((39704 - 19712) - (19670 - 9792), 19712 - 9792, 204 - 102)
    );
}

#[test]
fn a_kind_without_a_cost_counts_toward_token_budgets_and_metrics_name_it() {
    // Gemini (stream-json) without a price: each run is 12627 + 12544 + 81
    // = 25252 tokens; two fit under 52000, a third (reserved at 5000)
    // would not.
    let mut sbx = sandbox_of(&KINDS[1], true);
    sbx.set("ORCH_BUDGET_TASK_TOKENS", "52000")
        .set("ORCH_BUDGET_RESERVE_TOKENS", "5000");
    sbx.add_issue("wordy gemini");
    for stage in ["analysis", "architecture"] {
        assert_eq!(sbx.json(&["work-once"])["stage"], stage);
    }
    assert_eq!(sbx.json(&["work-once"])["result"], "idle", "parked");
    let show = sbx.json(&["task", "show", "1"]);
    assert_eq!(
        show["task"]["parked_reason"],
        "task budget 52000 tokens: 50504 tokens spent or running, \
         this developer run is expected to cost 5000 tokens",
        "{show}"
    );
    let metrics = sbx.ok(&["metrics"]);
    for line in [
        "orch_agent_cost_unknown_runs_total{role=\"analyst\"} 1",
        "orch_agent_tokens_total{role=\"analyst\",type=\"input\"} 12627",
        "orch_agent_cost_usd_total{role=\"analyst\"} 0",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[test]
fn a_reviewers_reasons_in_its_final_text_reach_the_developer_for_every_kind() {
    for k in &KINDS {
        let mut sbx = sandbox_of(k, true);
        let wanted = "- log the retry count";
        sbx.set("FAKE_AGENT_REQUIRE_LINE", wanted)
            .set("FAKE_AGENT_SUMMARY_IN_RESULT", "1");
        sbx.add_issue("reasons in the final text");
        sbx.tick_until(25, |s| s.stage(1) == "done");
        let dev2 = sbx.count(
            "SELECT job_id FROM agent_runs WHERE stage='development' ORDER BY id DESC LIMIT 1",
        );
        let prompt = sbx.prompt_of_run(dev2, 1);
        assert!(
            prompt.contains(&format!("Please add the line: {wanted}")),
            "{}: {prompt}",
            k.kind
        );
        let why = sbx.ok(&["why", "1"]);
        assert!(why.contains("nothing: done"), "{}: {why}", k.kind);
    }
}

#[test]
fn kind_acp_is_shown_and_checked_like_any_agent() {
    let sbx = Sandbox::new();
    let cfg = sbx.dir.join("orch.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[agents.default]\n", "[agents.default]\nkind = \"acp\"\n"),
    )
    .unwrap();
    let v = sbx.json(&["config", "show"]);
    assert_eq!(v["agents"][0]["kind"], "acp", "{v}");
    let out = sbx.orch().args(["config", "check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok   agent analyst:") && l.contains("(kind acp)")),
        "{text}"
    );
}
