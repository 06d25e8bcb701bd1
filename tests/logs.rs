//! What an operator's journal or log file gets: plain one-line events, no
//! colour codes off a terminal, one summary line per tick that did
//! something and none at the default level for one that did nothing.

use crate::util::*;

/// Runs `orch ARGS` and returns its stderr (the logs).
fn logs(sbx: &Sandbox, args: &[&str]) -> String {
    let out = sbx.orch().args(args).output().unwrap();
    assert!(out.status.success(), "orch {args:?}: {out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn logs_are_one_plain_line_per_event_and_an_idle_tick_is_silent() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    for tick in [
        "ingest",
        "reap",
        "reconcile",
        "deliver",
        "work-once",
        "tick",
    ] {
        assert_eq!(
            logs(&sbx, &[tick]),
            "",
            "an idle {tick} logs nothing at INFO"
        );
    }
    let debug = logs(&sbx, &["-v", "reap"]);
    assert!(
        debug.contains("DEBUG") && debug.contains("reap: actions=0"),
        "{debug}"
    );

    // A title over two lines, and run reports over several lines.
    sbx.add_issue("two\nlines");
    let text = logs(&sbx, &["tick", "--max-jobs", "8"]);
    assert_eq!(
        logs(&sbx, &["tick"]),
        "",
        "the next tick has nothing left to do"
    );
    assert!(!text.contains('\u{1b}'), "no escape codes: {text}");
    for line in text.lines() {
        assert!(
            line.starts_with("20") && line.contains('Z'),
            "every line is one event with its timestamp: {line:?}\n{text}"
        );
    }
    assert!(text.contains("two\\nlines"), "{text}");
    let summaries: Vec<_> = text
        .lines()
        .filter(|l| l.contains(" tick: tick: "))
        .collect();
    assert_eq!(summaries.len(), 1, "one summary per tick: {text}");
    assert!(summaries[0].contains("jobs=") && summaries[0].contains("duration_ms="));
    assert!(!text.contains("Advanced {"), "no Debug formatting: {text}");

    let mut sbx = sbx;
    sbx.set("ORCH_LOG_FORMAT", "json");
    sbx.add_issue("json please");
    let json = logs(&sbx, &["tick"]);
    assert!(!json.is_empty());
    for line in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}
