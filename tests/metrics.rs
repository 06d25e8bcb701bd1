//! `orch metrics` as a Prometheus server reads it: parsed with a real
//! parser, after a real pipeline run.

use std::collections::HashMap;

use crate::util::*;

/// Samples as `(name, sorted labels) → value`.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// The samples of `text`.
fn samples(text: &str) -> Samples {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            ((s.metric, labels), v)
        })
        .collect()
}

fn get(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *m.get(&(name.to_string(), l))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[test]
fn metrics_parse_and_count_a_pipeline_run() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let before = samples(&sbx.ok(&["metrics"]));
    assert_eq!(get(&before, "orch_agents_running", &[]), 0.0);
    assert!(!before
        .keys()
        .any(|(n, _)| n == "orch_tick_last_success_timestamp_seconds"));

    sbx.add_issue("one");
    sbx.ok(&["tick", "--max-jobs", "7"]);
    let waiting = sbx.add_issue("two");
    let m = samples(&sbx.ok(&["metrics"]));
    assert_eq!(
        get(&m, "orch_tasks", &[("stage", "done"), ("state", "done")]),
        1.0
    );
    assert_eq!(get(&m, "orch_jobs", &[("status", "done")]), 7.0);
    assert_eq!(
        get(&m, "orch_jobs", &[("status", "queued")]),
        1.0,
        "task {waiting} waits"
    );
    assert!(get(&m, "orch_job_oldest_runnable_wait_seconds", &[]) >= 0.0);
    assert!(
        get(
            &m,
            "orch_task_oldest_unchanged_seconds",
            &[("stage", "analysis")]
        ) >= 0.0
    );
    let runs: f64 = m
        .iter()
        .filter(|((n, _), _)| n == "orch_agent_runs_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(runs, 7.0);
    assert_eq!(
        get(
            &m,
            "orch_agent_runs_total",
            &[("role", "deployer"), ("outcome", "success")]
        ),
        2.0
    );
    assert!(
        get(
            &m,
            "orch_agent_tokens_total",
            &[("role", "developer"), ("type", "output")]
        ) > 0.0
    );
    assert!(get(&m, "orch_agent_cost_usd_total", &[("role", "developer")]) > 0.0);
    assert!(get(&m, "orch_outbox_messages", &[("status", "delivered")]) > 0.0);
    // A status alerts read is a sample even at 0 (OrchDeadLetters).
    assert_eq!(get(&m, "orch_outbox_messages", &[("status", "dead")]), 0.0);
    let tick = get(
        &m,
        "orch_tick_last_success_timestamp_seconds",
        &[("tick", "tick")],
    );
    assert!(tick > 1.7e9, "a unix time in seconds: {tick}");

    // The textfile is replaced whole and readable by an exporter.
    let path = sbx.dir.join("textfile").join("orch.prom");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    sbx.ok(&["metrics", "--textfile", path.to_str().unwrap()]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        get(&samples(&text), "orch_jobs", &[("status", "done")]),
        7.0
    );
    let entries = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
    assert_eq!(entries, 1, "no temp file left behind");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // promtool, where installed, is the reference linter.
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
    {
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
