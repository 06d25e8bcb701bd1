//! Prometheus metrics (DESIGN §13): the state of the pipeline read from the
//! database (and the tick stamps) and written in the Prometheus text
//! exposition format 0.0.4 — for `orch metrics [--textfile PATH]` (node
//! exporter's textfile collector) and the admin listener's `GET /metrics`.
//!
//! Names follow Prometheus conventions: `orch_` prefix, base units in the
//! name (`_seconds`, `_usd`), `_total` for counters. Times are computed
//! against the one clock ([`crate::clock::now_ms`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::Db;

/// The ticks whose last success is exported
/// (`orch_tick_last_success_timestamp_seconds{tick}`).
pub const TICKS: [&str; 7] = [
    "ingest",
    "reap",
    "reconcile",
    "ci",
    "deliver",
    "work-once",
    "tick",
];

/// Counters of the `counters` table with their metric name and help;
/// any other counter is exported as `orch_events_total{name}`.
const KNOWN_COUNTERS: [(&str, &str, &str); 16] = [
    (
        "reconcile.unblocked_total",
        "orch_reconcile_unblocked_total",
        "Tasks reconcile advanced because their gate passed without the event that should have said so.",
    ),
    (
        "merge_gate.deferred_total",
        "orch_merge_gate_deferred_total",
        "Deploy-staging jobs deferred because the staging check answered INFRA (only the check runs again).",
    ),
    (
        "reap.recover_total",
        "orch_reap_recover_total",
        "Running jobs the reaper recovered because their worker was gone (Tier-1).",
    ),
    (
        "reap.finish_total",
        "orch_reap_finish_total",
        "Jobs the reaper finalized after their agent exited and their worker vanished (Tier-2).",
    ),
    (
        "reap.timeout_total",
        "orch_reap_timeout_total",
        "Jobs the reaper killed for running past their role's timeout.",
    ),
    (
        "reap.release_leases_total",
        "orch_reap_release_leases_total",
        "Reaper passes that released stale merge leases.",
    ),
    (
        "outbox.retried_total",
        "orch_outbox_retried_total",
        "Dead-lettered outbox messages sent again by hand (orch outbox retry).",
    ),
    (
        "reap.remove_worktree_total",
        "orch_reap_remove_worktree_total",
        "Worktrees of done tasks the reaper removed after ORCH_WORKTREE_KEEP_S.",
    ),
    (
        "merge_line.landed_total",
        "orch_merge_line_landed_total",
        "Tasks the merge line landed (main fast-forwarded to a tested tip containing them).",
    ),
    (
        "merge_line.batches_total",
        "orch_merge_line_batches_total",
        "Batches the merge line landed (main moved once each).",
    ),
    (
        "merge_line.batch_tasks_total",
        "orch_merge_line_batch_tasks_total",
        "Tasks in the batches the merge line landed: divided by orch_merge_line_batches_total, the mean batch size.",
    ),
    (
        "merge_line.splits_total",
        "orch_merge_line_splits_total",
        "Test runs the merge line spent bisecting red batches.",
    ),
    (
        "merge_line.flaky_retries_total",
        "orch_merge_line_flaky_retries_total",
        "Red batch tips the merge line ran once more before blame.",
    ),
    (
        "merge_line.flaky_passes_total",
        "orch_merge_line_flaky_passes_total",
        "Red batch tips that passed when run again (flaky tests).",
    ),
    (
        "merge_line.sent_back_total",
        "orch_merge_line_sent_back_total",
        "Tasks the merge line sent back to development (a conflict, red tests, a refused branch).",
    ),
    (
        "merge_line.taken_out_total",
        "orch_merge_line_taken_out_total",
        "Tasks the merge line took out because their branch was not what was validated (someone else pushed to it): back to deploy-staging, or escalated.",
    ),
];

/// The exposition text being written: one `# HELP`/`# TYPE` per family,
/// then its samples.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
}

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, others as Rust prints them.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Renders every metric. Read-only: it opens no write transaction.
///
/// Errors: database errors.
pub fn render(ctx: &Ctx, db: &Db) -> anyhow::Result<String> {
    let now = now_ms();
    let mut m = Exposition::default();

    m.family(
        "orch_tasks",
        "gauge",
        "Tasks by stage and state (active, awaiting_human, escalated, done).",
    );
    for (stage, state, n) in db.tasks_by_stage_and_state()? {
        m.sample(
            "orch_tasks",
            &[("stage", stage.as_str()), ("state", &state)],
            n as f64,
        );
    }
    m.family(
        "orch_task_oldest_unchanged_seconds",
        "gauge",
        "Age of the least recently changed unfinished task at each stage.",
    );
    for (stage, since) in db.oldest_unchanged_by_stage()? {
        m.sample(
            "orch_task_oldest_unchanged_seconds",
            &[("stage", stage.as_str())],
            seconds(now - since),
        );
    }

    m.family(
        "orch_jobs",
        "gauge",
        "Jobs by status; finalize_failed: running jobs whose agent exited and whose finalize failed, waiting for the reaper's retry.",
    );
    let stalled: Vec<_> = db
        .finalize_failed_jobs()?
        .iter()
        .filter_map(|j| crate::reap::finalize_failed(&ctx.settings, j))
        .collect();
    let counts = crate::status::job_counts(db.count_by_status("jobs")?, stalled.len() as i64);
    for (status, n) in counts {
        m.sample("orch_jobs", &[("status", &status)], n as f64);
    }
    m.family(
        "orch_job_finalize_failed_oldest_seconds",
        "gauge",
        "How long ago the agent of the oldest job whose finalize failed exited (0 when none).",
    );
    let oldest = stalled.iter().map(|f| f.exited_at_ms).min();
    m.sample(
        "orch_job_finalize_failed_oldest_seconds",
        &[],
        seconds(oldest.map_or(0, |at| (now - at).max(0))),
    );
    m.family(
        "orch_job_oldest_runnable_wait_seconds",
        "gauge",
        "How long the oldest runnable job has waited for a worker (0 when none waits).",
    );
    let wait = db
        .oldest_runnable_since(now)?
        .map_or(0, |since| now - since);
    m.sample("orch_job_oldest_runnable_wait_seconds", &[], seconds(wait));
    m.family(
        "orch_agents_running",
        "gauge",
        "Agent processes running now.",
    );
    m.sample("orch_agents_running", &[], db.running_agents()? as f64);

    let (pending, failing, dead) = db.inbox_counts()?;
    m.family(
        "orch_inbox_deliveries",
        "gauge",
        "Stored deliveries not yet ingested (pending, of which failing) and dead letters.",
    );
    for (state, n) in [("pending", pending), ("failing", failing), ("dead", dead)] {
        m.sample("orch_inbox_deliveries", &[("state", state)], n as f64);
    }
    m.family(
        "orch_deliveries_stored_total",
        "counter",
        "Webhook deliveries accepted and stored, by source.",
    );
    for (source, n) in db.deliveries_by_source()? {
        m.sample(
            "orch_deliveries_stored_total",
            &[("source", &source)],
            n as f64,
        );
    }
    m.family(
        "orch_outbox_messages",
        "gauge",
        "Outbox messages by status (pending, delivered, dead).",
    );
    // Every status an alert reads has a sample, 0 included: a rule over
    // an absent series sees nothing (docs/alerts.md, OrchDeadLetters).
    let mut outbox: std::collections::BTreeMap<String, i64> = ["pending", "delivered", "dead"]
        .into_iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    outbox.extend(db.count_by_status("outbox")?);
    for (status, n) in outbox {
        m.sample("orch_outbox_messages", &[("status", &status)], n as f64);
    }
    m.family(
        "orch_outbox_retrying",
        "gauge",
        "Pending outbox messages whose delivery failed at least once.",
    );
    m.sample("orch_outbox_retrying", &[], db.outbox_retrying()? as f64);
    m.family(
        "orch_tasks_parked",
        "gauge",
        "Tasks parked by a budget ceiling (not claimed until within it again).",
    );
    m.sample("orch_tasks_parked", &[], db.parked_tasks()?.len() as f64);
    m.family(
        "orch_accounts_paused",
        "gauge",
        "Agent accounts whose dispatch is paused by a usage or rate limit now.",
    );
    m.sample(
        "orch_accounts_paused",
        &[],
        db.paused_accounts(now)?.len() as f64,
    );

    m.family(
        "orch_merge_line_waiting",
        "gauge",
        "Tasks ready to merge that wait in the merge line, by project.",
    );
    let mut waiting: BTreeMap<String, i64> = BTreeMap::new();
    for r in db.line_waiting(None)? {
        *waiting.entry(r.project).or_default() += 1;
    }
    for (project, n) in &waiting {
        m.sample(
            "orch_merge_line_waiting",
            &[("project", project)],
            *n as f64,
        );
    }
    m.family(
        "orch_merge_line_awaiting_staging",
        "gauge",
        "Tasks the deployer passed that await the staging check before they are ready to merge, by project.",
    );
    let mut awaiting: BTreeMap<String, i64> = BTreeMap::new();
    for r in db.line_awaiting_staging(None, None)? {
        *awaiting.entry(r.project).or_default() += 1;
    }
    for (project, n) in &awaiting {
        m.sample(
            "orch_merge_line_awaiting_staging",
            &[("project", project)],
            *n as f64,
        );
    }
    let hour_ago = now - 3_600_000;
    let landed = db.line_landed_since(hour_ago)?;
    m.family(
        "orch_merge_line_landed_last_hour",
        "gauge",
        "Tasks the merge line landed in the last hour (merges per hour), by project.",
    );
    for (project, n, _) in &landed {
        m.sample(
            "orch_merge_line_landed_last_hour",
            &[("project", project)],
            *n as f64,
        );
    }
    m.family(
        "orch_merge_line_time_in_line_seconds",
        "gauge",
        "Mean time from entering the merge line (the deployer's PASS, the staging check's wait included) to landed of the tasks landed in the last hour, by project.",
    );
    for (project, n, sum_ms) in &landed {
        if *n > 0 {
            m.sample(
                "orch_merge_line_time_in_line_seconds",
                &[("project", project)],
                seconds(sum_ms / n),
            );
        }
    }

    let mut counters: BTreeMap<String, i64> = db.counters()?.into_iter().collect();
    for (key, name, help) in KNOWN_COUNTERS {
        m.family(name, "counter", help);
        m.sample(name, &[], counters.remove(key).unwrap_or(0) as f64);
    }
    if !counters.is_empty() {
        m.family(
            "orch_events_total",
            "counter",
            "Other named event counters, by name.",
        );
        for (name, n) in &counters {
            m.sample("orch_events_total", &[("name", name)], *n as f64);
        }
    }
    m.family(
        "orch_reconcile_last_pass_skipped",
        "gauge",
        "Tasks the last recorded reconcile pass skipped, by reason.",
    );
    if let Some(pass) = db.last_reconcile_pass()? {
        for (reason, ids) in pass["skipped"].as_object().into_iter().flatten() {
            let n = ids.as_array().map_or(0, Vec::len);
            m.sample(
                "orch_reconcile_last_pass_skipped",
                &[("reason", reason)],
                n as f64,
            );
        }
    }

    let runs = db.agent_runs_by_role()?;
    m.family(
        "orch_agent_runs_total",
        "counter",
        "Agent runs by role and outcome (success, failure, unknown).",
    );
    for r in &runs {
        m.sample(
            "orch_agent_runs_total",
            &[("role", &r.role), ("outcome", &r.outcome)],
            r.runs as f64,
        );
    }
    let mut by_role: BTreeMap<&str, [f64; 6]> = BTreeMap::new();
    for r in &runs {
        let t = by_role.entry(&r.role).or_default();
        t[5] += r.unknown_cost_runs as f64;
        t[0] += r.input_tokens as f64;
        t[1] += r.cache_read_input_tokens as f64;
        t[2] += r.cache_creation_input_tokens as f64;
        t[3] += r.output_tokens as f64;
        t[4] += r.cost_usd;
    }
    m.family(
        "orch_agent_tokens_total",
        "counter",
        "Tokens the agents' runs reported, by role and type (input, cache_read, cache_creation, output).",
    );
    for (role, t) in &by_role {
        for (kind, v) in [
            ("input", t[0]),
            ("cache_read", t[1]),
            ("cache_creation", t[2]),
            ("output", t[3]),
        ] {
            m.sample(
                "orch_agent_tokens_total",
                &[("role", role), ("type", kind)],
                v,
            );
        }
    }
    m.family(
        "orch_agent_cost_usd_total",
        "counter",
        "Cost the agents' runs reported, in US dollars, by role.",
    );
    for (role, t) in &by_role {
        m.sample("orch_agent_cost_usd_total", &[("role", role)], t[4]);
    }
    m.family(
        "orch_agent_cost_unknown_runs_total",
        "counter",
        "Agent runs with known tokens but no cost (the CLI reports none and [prices] has no price for the model), by role; their tokens are in orch_agent_tokens_total, their cost in no total.",
    );
    for (role, t) in &by_role {
        m.sample(
            "orch_agent_cost_unknown_runs_total",
            &[("role", role)],
            t[5],
        );
    }

    m.family(
        "orch_merge_lease_held_seconds",
        "gauge",
        "How long each held merge lease has been held, by lease and holder.",
    );
    for l in db.leases()? {
        m.sample(
            "orch_merge_lease_held_seconds",
            &[("lease", &l.name), ("holder", &l.holder)],
            seconds(now - l.acquired_at_ms),
        );
    }

    m.family(
        "orch_tick_last_success_timestamp_seconds",
        "gauge",
        "When each tick last finished successfully (unix seconds; absent when it never did).",
    );
    for tick in TICKS {
        if let Some(at) = ctx.tick_last_ok(tick) {
            m.sample(
                "orch_tick_last_success_timestamp_seconds",
                &[("tick", tick)],
                seconds(at),
            );
        }
    }
    Ok(m.0)
}

/// Writes `text` to `path` atomically for node exporter's textfile
/// collector: a temp file in the same folder, then a rename, so a scrape
/// never reads half a file.
///
/// Errors: the folder is not writable, or the rename fails.
pub fn write_textfile(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())
        .with_context(|| format!("writing metrics next to {}", path.display()))?;
    // Readable by the exporter's user (a temp file starts as 0600).
    use std::os::unix::fs::PermissionsExt as _;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("making the metrics next to {} readable", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
