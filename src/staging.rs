//! `orch staging-check`: the staging suite (DESIGN §8), which replaces the
//! old `staging_check.py`.
//!
//! A numbered suite of checks against a *staging instance* of orch: its
//! shim URL and — read-only — its database and config for what HTTP does
//! not show. The old script's incidents are the requirements: it
//! hard-coded a tracker state id (the instance rightly answered "no
//! pipeline action" and the suite reported a false FAILED), it failed the
//! verdict on infrastructure faults like on real bugs, and it validated a
//! staging image built from a stale commit. So here every tracker state id
//! is resolved through [`Tracker`], every check tells the environment
//! (INFRA) from the code (FAIL), and the verdict names the exact revision
//! it validated.
//!
//! The checks ([`CHECKS`]): C1 health (`/healthz`: version, commit,
//! schema), C2 provenance (that commit is the expected revision), C3 schema
//! (the database is at the schema the instance's binary expects), C4
//! config (loads; the sandbox project exists and can receive Plane
//! deliveries; the webhook secret is set), C5–C8 the shim's contract
//! (unsigned and mis-signed 401, oversize 413, a redelivery 200 duplicate,
//! nothing stored for the rejected ones), C9a a signed synthetic *In
//! Progress* delivery for the sandbox project creates the task within the
//! timeout, C9b the task has its branch and its analyst job, C10 the task
//! is cancelled through the transition rule (actor `human`, reason
//! `staging-check`) the moment it appears, so staging runs no agent on it.
//!
//! Deliveries are signed with the secrets of the checker's own environment
//! (`ORCH_PLANE_WEBHOOK_SECRET`, `ORCH_GITEA_WEBHOOK_SECRET`): a secret
//! that differs from the instance's is a FAIL, not a crash. The only write
//! to the instance's database is C10's cancellation; the only deliveries
//! the instance stores are C8's harmless redelivery probe (Plane
//! `issue`/`priority`, "no pipeline action") and C9a's synthetic work item.
//!
//! Verdict ([`verdict`]): PASS when no check FAILed and every INFRA check
//! is waived; FAIL when any check FAILed; INFRA otherwise.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::adapters::AdapterError;
use crate::clock::now_ms;
use crate::config::{Config, ProjectConfig, Secret, Settings, StateKind};
use crate::ctx::Ctx;
use crate::db::{Db, InboxRow, Job, Task};
use crate::error::Error;
use crate::git::Repo;
use crate::pipeline::gate::Gate;
use crate::pipeline::job::{self as jobs, Finalized};
use crate::pipeline::manual::{self, ManualMove};
use crate::pipeline::{Actor, Stage};
use crate::tracker::Tracker;
use crate::webhook::{self, Source, MAX_BODY_BYTES};

/// The checks, in report order: `(id, name, what a PASS proves)`.
pub const CHECKS: &[(&str, &str, &str)] = &[
    (
        "C1",
        "health",
        "GET /healthz answers 200 with the instance's version, git commit and schema version",
    ),
    (
        "C2",
        "provenance",
        "the instance's commit is --expect-revision (PASS when none is given)",
    ),
    (
        "C3",
        "schema",
        "the database is at the schema version the instance's binary expects",
    ),
    (
        "C4",
        "config",
        "the staging config loads, the sandbox project exists and receives Plane deliveries, \
         ORCH_PLANE_WEBHOOK_SECRET is set",
    ),
    (
        "C5",
        "unsigned",
        "an unsigned delivery (Plane and Gitea) is answered 401 and not stored",
    ),
    (
        "C6",
        "mis-signed",
        "a delivery signed with another secret (Plane and Gitea) is answered 401 and not stored",
    ),
    (
        "C7",
        "oversize",
        "a signed delivery over 1 MiB is answered 413 and not stored",
    ),
    (
        "C8",
        "redelivery",
        "a signed delivery is stored (202); the same delivery again, and Plane's retry with a \
         new id, are answered 200 duplicate and stored once",
    ),
    (
        "C9a",
        "end to end",
        "a signed synthetic In Progress delivery for the sandbox project (state id resolved \
         from the tracker) is accepted and creates the task within the timeout",
    ),
    (
        "C9b",
        "task set-up",
        "the synthetic task has its branch (on the forge, or in its worktree before the first \
         push) and its analyst job",
    ),
    (
        "C10",
        "cleanup",
        "the synthetic task is cancelled through the transition rule (actor human, reason \
         staging-check) before any agent ran on it",
    ),
];

/// The reason C10 records on the synthetic task's cancellation.
pub const CANCEL_REASON: &str = "staging-check";

/// A check's (or the verdict's) outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The instance does what the check asks.
    Pass,
    /// The code or its configuration is wrong.
    Fail,
    /// The environment failed, not the code: a connection refused or
    /// reset, a timeout, the tracker or forge unreachable or answering 5xx.
    Infra,
}

impl Status {
    /// `PASS`, `FAIL` or `INFRA`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Infra => "INFRA",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `C1` … `C10` (with `C9a`, `C9b`).
    pub id: &'static str,
    /// Short name (`health`, `provenance`, …).
    pub name: &'static str,
    pub status: Status,
    /// Why, in one line an operator can act on.
    pub reason: String,
    /// Wall time of the check, in milliseconds.
    pub duration_ms: u64,
    /// The check is INFRA and its id is in the waiver list.
    pub waived: bool,
}

/// What to check, and where.
#[derive(Debug, Clone)]
pub struct Target {
    /// The instance's shim, e.g. `http://127.0.0.1:8501` (paths are
    /// appended: `/healthz`, `/webhooks/plane`).
    pub url: String,
    /// The instance's database file (read; C10 writes the cancellation).
    pub db: PathBuf,
    /// The instance's config file.
    pub config: PathBuf,
    /// The sandbox project; `None`: the config's only project.
    pub project: Option<String>,
    /// The revision the instance must be built from (full sha, or a
    /// prefix of at least 7 hex digits).
    pub expect_revision: Option<String>,
    /// Check ids whose INFRA does not hold the verdict back (see
    /// [`parse_waivers`]).
    pub waive: Vec<String>,
    /// How long to wait for the instance: each HTTP call (capped at 30 s)
    /// and the synthetic task's appearance and set-up.
    pub timeout: Duration,
    /// Run only the checks that read (C1–C4; C9a's state resolution too)
    /// and list what the others would send and write.
    pub dry_run: bool,
}

/// A check a dry run did not run: what it would do.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub id: &'static str,
    pub name: &'static str,
    /// The check's contract ([`CHECKS`]), and for C9a the In Progress
    /// state it would send, as resolved now.
    pub would: String,
}

/// The suite's result: the machine verdict `orch staging-check --json`
/// prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Status,
    /// The shim URL checked.
    pub url: String,
    /// The sandbox project, when known.
    pub project: Option<String>,
    /// The revision validated: the git commit the instance reported
    /// (`None` when `/healthz` did not say).
    pub revision: Option<String>,
    /// The instance's version, from `/healthz`.
    pub version: Option<String>,
    /// `--expect-revision`, when given.
    pub expected_revision: Option<String>,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// Unix milliseconds.
    pub finished_at_ms: i64,
    /// The waiver list as applied.
    pub waived: Vec<String>,
    /// The synthetic task the suite created (and cancelled), if any.
    pub task_id: Option<i64>,
    /// Every check run, in [`CHECKS`] order (C1–C4 in a dry run).
    pub checks: Vec<Check>,
    /// A dry run: the verdict is over C1–C4 only.
    pub dry_run: bool,
    /// What a dry run left out: C5–C10, in order.
    pub planned: Vec<Planned>,
}

impl Report {
    /// The checks that FAILed.
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }

    /// The checks that are INFRA and not waived.
    pub fn unwaived_infra(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Infra && !c.waived)
            .collect()
    }

    /// One line per check and the verdict, for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "orch staging-check {} (project {})\n",
            self.url,
            self.project.as_deref().unwrap_or("?")
        );
        for c in &self.checks {
            let status = if c.waived {
                "INFRA (waived)".to_string()
            } else {
                c.status.to_string()
            };
            out += &format!(
                "  {:<4} {:<12} {:<15} {:>6} ms  {}\n",
                c.id, c.name, status, c.duration_ms, c.reason
            );
        }
        for p in &self.planned {
            out += &format!("  {:<4} {:<12} would: {}\n", p.id, p.name, p.would);
        }
        out += &format!(
            "verdict{}: {} (revision {})\n",
            if self.dry_run { " of C1–C4" } else { "" },
            self.verdict,
            self.revision.as_deref().unwrap_or("unknown")
        );
        out
    }

    /// The failed checks as one feedback text: `C8 redelivery: <reason>`
    /// per line (the deploy-staging gate's rollback reason).
    pub fn failure_summary(&self) -> String {
        self.failed()
            .iter()
            .map(|c| format!("{} {}: {}", c.id, c.name, c.reason))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The verdict over `checks`: FAIL when any check FAILed; PASS when every
/// INFRA check is waived; INFRA otherwise.
pub fn verdict(checks: &[Check]) -> Status {
    if checks.iter().any(|c| c.status == Status::Fail) {
        Status::Fail
    } else if checks.iter().all(|c| c.status != Status::Infra || c.waived) {
        Status::Pass
    } else {
        Status::Infra
    }
}

/// Normalises a waiver list (`--waive`, `ORCH_STAGING_WAIVE`,
/// `[projects.staging].waive`): check ids, case-insensitive (`c9a` →
/// `C9a`), blanks ignored, duplicates dropped.
///
/// Errors: [`Error::Usage`] naming an id that is not a check.
pub fn parse_waivers<S: AsRef<str>>(list: &[S]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for item in list.iter().flat_map(|s| s.as_ref().split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((id, _, _)) = CHECKS
            .iter()
            .find(|(id, _, _)| id.eq_ignore_ascii_case(item))
        else {
            let ids: Vec<&str> = CHECKS.iter().map(|(id, _, _)| *id).collect();
            return Err(Error::Usage(format!(
                "cannot waive {item:?}: not a check; the checks are {}",
                ids.join(", ")
            )));
        };
        if !out.iter().any(|w| w == id) {
            out.push(id.to_string());
        }
    }
    Ok(out)
}

/// Runs the suite against `target`. `settings` is the checker's own
/// environment: its webhook secrets sign the deliveries, its Plane
/// settings resolve the sandbox project's states, its busy timeout and
/// developer-retry policy apply to the staging database.
///
/// Never fails: every problem is a check's FAIL or INFRA.
pub fn run(settings: &Settings, target: &Target) -> Report {
    let started_at_ms = now_ms();
    let mut suite = Suite::new(settings, target);
    suite.run_all();
    let mut checks = suite.results;
    let planned = suite.planned;
    for c in &mut checks {
        c.waived = c.status == Status::Infra && target.waive.iter().any(|w| w == c.id);
    }
    let verdict = verdict(&checks);
    let revision = suite.health.as_ref().map(|h| h.commit.clone());
    let report = Report {
        verdict,
        url: target.url.clone(),
        project: suite.project.as_ref().map(|p| p.name.clone()),
        revision,
        version: suite.health.as_ref().map(|h| h.version.clone()),
        expected_revision: target.expect_revision.clone(),
        started_at_ms,
        finished_at_ms: now_ms(),
        waived: target.waive.clone(),
        task_id: suite.task.as_ref().map(|t| t.id),
        checks,
        dry_run: target.dry_run,
        planned,
    };
    info!(target: "staging", url = %report.url, verdict = %report.verdict,
        revision = report.revision.as_deref().unwrap_or("unknown"),
        failed = report.failed().len(), "staging-check verdict");
    report
}

// ------------------------------------------------------- pipeline gate

/// What the staging check decided for a finishing deploy-staging job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagingGate {
    /// PASS on this revision (the branch head): the merge gate may merge
    /// it, and only it.
    Validated(String),
    /// Apply through the transition rule: a FAIL rolls back to development
    /// with the failed checks as the reason (the next run's feedback).
    Verdict(Gate),
    /// Settled here: INFRA deferred (not an attempt), escalated at the
    /// defer cap or on an unusable `[projects.staging]`; or lost.
    Settled(Finalized),
}

/// The deterministic deploy-staging gate of a project with
/// `[projects.staging]` (DESIGN §8), run by `worker::finalize` after the
/// deployer's PASS and before the merge gate: runs the suite against the
/// project's staging instance expecting the task branch's head, and stores
/// its verdict (source `staging`, summary `<VERDICT> on <sha>: …`) beside
/// the deployer's.
///
/// PASS → [`StagingGate::Validated`]; FAIL → a rollback to development
/// whose reason lists the failed checks; INFRA → the job is deferred with
/// backoff like a busy merge lease (not an attempt; escalated after
/// `ORCH_MERGE_GATE_MAX_DEFERS`). A waiver list naming no check, or an
/// `env_file` that cannot be read, escalates the task (a human fixes the
/// config).
///
/// Errors: git (reading the head) and database errors; the job stays
/// running for the reaper's Tier-2.
pub fn gate_job(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    job: &Job,
    actor: Actor,
) -> anyhow::Result<StagingGate> {
    let head = repo.head_sha(Path::new(&task.worktree))?;
    let Some(cfg) = &project.staging else {
        return Ok(StagingGate::Validated(head));
    };
    let setup = || -> Result<(Settings, Vec<String>), String> {
        let key = format!("projects.{}.staging", project.name);
        let waive = parse_waivers(&cfg.waive).map_err(|e| format!("{key}.waive: {e}"))?;
        let mut settings = ctx.settings.clone();
        if let Some(path) = &cfg.env_file {
            let vars = dotenvy::from_path_iter(path)
                .map_err(|e| format!("{key}.env_file {}: {e}", path.display()))?;
            for item in vars {
                let (k, v) = item.map_err(|e| format!("{key}.env_file {}: {e}", path.display()))?;
                match k.as_str() {
                    "ORCH_PLANE_WEBHOOK_SECRET" => {
                        settings.plane_webhook_secret = Some(Secret::new(v))
                    }
                    "ORCH_GITEA_WEBHOOK_SECRET" => {
                        settings.gitea_webhook_secret = Some(Secret::new(v))
                    }
                    _ => {}
                }
            }
        }
        Ok((settings, waive))
    };
    let (settings, waive) = match setup() {
        Ok(x) => x,
        Err(why) => {
            let why = format!("staging check not run: {why}");
            let out = db.write(|tx| {
                jobs::fail_and_escalate(tx, ctx.policy(), job, &why, why.clone(), actor, now_ms())
            })?;
            return Ok(StagingGate::Settled(out));
        }
    };
    let target = Target {
        url: cfg.url.clone(),
        db: cfg.db.clone(),
        config: cfg.config.clone(),
        project: cfg.project.clone(),
        expect_revision: Some(head.clone()),
        waive,
        timeout: Duration::from_secs(cfg.timeout_s),
        dry_run: false,
    };
    let report = run(&settings, &target);
    let not_passed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| c.status != Status::Pass && !c.waived)
        .map(|c| format!("{} {} {}: {}", c.id, c.name, c.status, c.reason))
        .collect();
    let summary = if not_passed.is_empty() {
        format!("{} on {head} ({})", report.verdict, report.url)
    } else {
        format!("{} on {head}: {}", report.verdict, not_passed.join("; "))
    };
    db.write(|tx| {
        tx.insert_verdict(
            task.id,
            Stage::DeployStaging,
            Some(job.id),
            "staging",
            report.verdict.as_str(),
            &summary,
            now_ms(),
        )
    })?;
    info!(target: "gate", task = task.id, job = job.id, revision = %head, verdict = %report.verdict, "staging check");
    Ok(match report.verdict {
        Status::Pass => StagingGate::Validated(head),
        Status::Fail => StagingGate::Verdict(Gate::rollback(format!(
            "staging-check FAIL on {head}:\n{}",
            report.failure_summary()
        ))),
        Status::Infra => {
            let reason = format!("staging-check INFRA on {head}: {}", not_passed.join("; "));
            StagingGate::Settled(crate::merge_gate::defer_job(
                ctx,
                db,
                job,
                actor,
                "staging check",
                &reason,
                None,
            )?)
        }
    })
}

// ------------------------------------------------------------------ suite

/// What `/healthz` said.
#[derive(Debug, Clone)]
struct Health {
    version: String,
    commit: String,
    schema: i64,
}

/// An HTTP answer.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn status_field(&self) -> &str {
        self.body
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    fn detail(&self) -> &str {
        self.body
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    fn describe(&self) -> String {
        let d = self.detail();
        if d.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {} ({})", self.status, short(d))
        }
    }
}

/// What became of the synthetic In Progress delivery.
enum Synthetic {
    /// Not stored (rejected, or the instance unreachable).
    NotStored,
    /// Stored; the instance had not ingested it by the deadline.
    Pending,
    /// Ingested without creating a task.
    NoTask,
    /// The task appeared.
    Task,
}

struct Suite<'a> {
    settings: &'a Settings,
    target: &'a Target,
    agent: ureq::Agent,
    /// Unique per run: delivery ids, the synthetic work item.
    run_id: String,
    results: Vec<Check>,
    /// A dry run's checks left out.
    planned: Vec<Planned>,
    health: Option<Health>,
    /// The health check's status when it did not pass.
    health_status: Status,
    /// The staging config and its sandbox project (C4).
    staging: Option<Ctx>,
    project: Option<ProjectConfig>,
    synthetic: Synthetic,
    synthetic_delivery: String,
    task: Option<Task>,
    /// C10's cancellation, made the moment the task appeared: `(status,
    /// reason, ms)`.
    cancel: Option<(Status, String, u64)>,
}

type Outcome = (Status, String);

fn pass(reason: impl Into<String>) -> Outcome {
    (Status::Pass, reason.into())
}
fn fail(reason: impl Into<String>) -> Outcome {
    (Status::Fail, reason.into())
}
fn infra(reason: impl Into<String>) -> Outcome {
    (Status::Infra, reason.into())
}

/// At most 200 characters of `s`, on one line.
fn short(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() > 200 {
        format!("{}…", one.chars().take(200).collect::<String>())
    } else {
        one
    }
}

impl<'a> Suite<'a> {
    fn new(settings: &'a Settings, target: &'a Target) -> Suite<'a> {
        let call = target.timeout.min(Duration::from_secs(30));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(call.min(Duration::from_secs(5))))
            .timeout_global(Some(call))
            .user_agent(concat!("orch-staging-check/", env!("CARGO_PKG_VERSION")))
            .build();
        let run_id = format!("{:x}{:05x}", now_ms(), std::process::id() & 0xfffff);
        Suite {
            settings,
            target,
            agent: ureq::Agent::new_with_config(config),
            synthetic_delivery: format!("staging-check-{run_id}-c9a"),
            run_id,
            results: Vec::new(),
            planned: Vec::new(),
            health: None,
            health_status: Status::Infra,
            staging: None,
            project: None,
            synthetic: Synthetic::NotStored,
            task: None,
            cancel: None,
        }
    }

    fn run_all(&mut self) {
        self.timed("C1", Suite::c1_health);
        self.timed("C2", Suite::c2_provenance);
        self.timed("C3", Suite::c3_schema);
        self.timed("C4", Suite::c4_config);
        if self.target.dry_run {
            self.plan();
            return;
        }
        self.timed("C5", Suite::c5_unsigned);
        self.timed("C6", Suite::c6_mis_signed);
        self.timed("C7", Suite::c7_oversize);
        self.timed("C8", Suite::c8_redelivery);
        self.timed("C9a", Suite::c9a_end_to_end);
        self.timed("C9b", Suite::c9b_set_up);
        self.timed("C10", Suite::c10_cleanup);
    }

    /// A dry run's C5–C10: each check's contract; for C9a also the In
    /// Progress state its delivery would carry, resolved now (a read).
    fn plan(&mut self) {
        for (id, name, contract) in &CHECKS[4..] {
            let mut would = contract.to_string();
            if *id == "C9a" {
                would += &match self.in_progress_state() {
                    Ok((state_id, state_name)) => {
                        format!("; the state would be {state_name:?} (id {state_id})")
                    }
                    Err((_, why)) => format!("; it cannot be sent now: {why}"),
                };
            }
            self.planned.push(Planned { id, name, would });
        }
    }

    fn timed(&mut self, id: &'static str, f: fn(&mut Suite<'a>) -> Outcome) {
        let started = Instant::now();
        let (status, reason) = f(self);
        let mut duration_ms = started.elapsed().as_millis() as u64;
        if id == "C10" {
            // The cancellation itself ran inside C9a's wait.
            duration_ms += self.cancel.as_ref().map_or(0, |c| c.2);
        }
        let name = CHECKS
            .iter()
            .find(|(i, _, _)| *i == id)
            .map_or("", |(_, n, _)| *n);
        match status {
            Status::Pass => {
                info!(target: "staging", check = id, status = %status, ms = duration_ms, reason = %reason, "check")
            }
            _ => {
                warn!(target: "staging", check = id, status = %status, ms = duration_ms, reason = %reason, "check")
            }
        }
        self.results.push(Check {
            id,
            name,
            status,
            reason,
            duration_ms,
            waived: false,
        });
    }

    // -------------------------------------------------------------- HTTP

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.url.trim_end_matches('/'))
    }

    /// One request; `Err` is the transport failure (INFRA).
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("Accept", "application/json");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req.body(body).map_err(|e| format!("bad request: {e}"))?;
        let mut resp = self.agent.run(req).map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| transport(&e))?;
        Ok(Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// Posts a delivery; answers from a 5xx are turned into `Err` too (the
    /// instance's environment failed).
    fn post(
        &self,
        source: Source,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer, String> {
        let path = format!("/webhooks/{source}");
        let a = self.send("POST", &path, headers, body.to_vec())?;
        if a.status >= 500 {
            return Err(format!(
                "POST {path}: the instance answered {}",
                a.describe()
            ));
        }
        Ok(a)
    }

    /// Posts a new signed Plane delivery that the instance must store
    /// (202). A 401 means the checker's `ORCH_PLANE_WEBHOOK_SECRET` differs
    /// from the instance's; `what` names the delivery in the reason.
    fn post_new_plane(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        what: &str,
    ) -> Result<(), Outcome> {
        let a = self.post(Source::Plane, headers, body).map_err(infra)?;
        if a.status == 401 {
            return Err(fail(format!(
                "the instance refused {what} signed with the checker's ORCH_PLANE_WEBHOOK_SECRET: {} — the secrets differ",
                a.describe()
            )));
        }
        if a.status != 202 {
            return Err(fail(format!("{what}: expected 202, got {}", a.describe())));
        }
        Ok(())
    }

    /// Posts a body over 1 MiB. On plain HTTP the request is written from
    /// a second thread while this one reads, so an answer the server sends
    /// before reading the whole body (and the connection reset after it)
    /// is still seen; `https://` goes through ureq.
    fn post_oversize(&self, headers: &[(String, String)], body: Vec<u8>) -> Result<Answer, String> {
        let url = self.url("/webhooks/plane");
        let Some(rest) = url.strip_prefix("http://") else {
            return self.post(Source::Plane, headers, &body);
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let hostport = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let call = self.target.timeout.min(Duration::from_secs(30));
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("resolving {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolving {authority}: no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, call.min(Duration::from_secs(5)))
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        stream
            .set_read_timeout(Some(call))
            .and_then(|()| stream.set_write_timeout(Some(call)))
            .map_err(|e| e.to_string())?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let sender = std::thread::Builder::new()
            .name("orch-staging-upload".into())
            .spawn(move || {
                // The server may answer and close before it has read it all.
                let _ = writer
                    .write_all(head.as_bytes())
                    .and_then(|()| writer.write_all(&body));
            })
            .map_err(|e| format!("starting the upload thread: {e}"))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let read_error = loop {
            match stream.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
        };
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok());
        let Some(status) = status else {
            return Err(match read_error {
                Some(e) => format!("POST {path}: no answer: {e}"),
                None => format!("POST {path}: the connection closed without an answer"),
            });
        };
        let body = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b.trim()).ok())
            .unwrap_or(Value::Null);
        let a = Answer { status, body };
        if status >= 500 {
            return Err(format!(
                "POST {path}: the instance answered {}",
                a.describe()
            ));
        }
        Ok(a)
    }

    // ------------------------------------------------------ deliveries

    fn secret(&self, source: Source) -> Option<&str> {
        match source {
            Source::Plane => self.settings.plane_webhook_secret.as_ref(),
            Source::Gitea => self.settings.gitea_webhook_secret.as_ref(),
        }
        .map(|s| s.expose())
        .filter(|s| !s.trim().is_empty())
    }

    fn delivery_id(&self, tag: &str) -> String {
        format!("staging-check-{}-{tag}", self.run_id)
    }

    /// The headers of a delivery of `source`, signed with `secret` when
    /// given.
    fn headers(
        &self,
        source: Source,
        delivery: &str,
        body: &[u8],
        secret: Option<&str>,
    ) -> Vec<(String, String)> {
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        let mut out = match source {
            Source::Plane => vec![h("X-Plane-Delivery", delivery), h("X-Plane-Event", "issue")],
            Source::Gitea => vec![
                h("X-Gitea-Delivery", delivery),
                h("X-Gitea-Event", "push"),
                h("X-Gitea-Event-Type", "push"),
            ],
        };
        if let Some(secret) = secret {
            let name = match source {
                Source::Plane => "X-Plane-Signature",
                Source::Gitea => "X-Gitea-Signature",
            };
            out.push(h(name, &webhook::sign(secret, body)));
        }
        out
    }

    /// A UUID-shaped id unique to this run and `tag`.
    fn uuid(&self, tag: &str) -> String {
        let h = hex::encode(Sha256::digest(format!("{}:{tag}", self.run_id)));
        format!(
            "{}-{}-4{}-8{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    /// A Plane `issue` webhook body (the shape of
    /// `tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json`)
    /// for a work item of the sandbox project: `field` changed, the item in
    /// state `(id, name)`.
    fn plane_issue(&self, tag: &str, field: &str, state: (&str, &str), sequence: i64) -> Vec<u8> {
        let project = self
            .project
            .as_ref()
            .map_or("", |p| p.tracker_project_id.as_str());
        let (state_id, state_name) = state;
        let new_value = if field == "state" { state_id } else { "high" };
        let v = json!({
            "event": "issue",
            "action": "updated",
            "webhook_id": self.uuid("webhook"),
            "workspace_id": self.uuid("workspace"),
            "data": {
                "id": self.uuid(tag),
                "labels": [],
                "assignees": [],
                "state": {"id": state_id, "name": state_name, "color": "#F59E0B", "group": "started"},
                "name": format!("orch staging-check {} ({tag})", self.run_id),
                "description_stripped": "A synthetic work item of orch staging-check; it is cancelled as soon as it appears.",
                "priority": "high",
                "sequence_id": sequence,
                "project": project,
                "workspace": self.uuid("workspace"),
                "parent": null,
            },
            "activity": {
                "field": field,
                "new_value": new_value,
                "old_value": null,
                "actor": {"id": self.uuid("actor"), "display_name": "orch-staging-check"},
            },
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// A harmless Plane body: a priority change, no pipeline action.
    fn harmless(&self, tag: &str) -> Vec<u8> {
        self.plane_issue(tag, "priority", ("", ""), 1)
    }

    fn gitea_body(&self, tag: &str) -> Vec<u8> {
        let repo = self.project.as_ref().map_or("", |p| p.repo.as_str());
        serde_json::to_vec(&json!({
            "ref": format!("refs/heads/orch/staging-check-{tag}"),
            "before": "0000000000000000000000000000000000000000",
            "after": "0000000000000000000000000000000000000000",
            "repository": {"full_name": repo},
        }))
        .unwrap_or_default()
    }

    // -------------------------------------------------------- database

    fn open_db(&self, writable: bool) -> anyhow::Result<Db> {
        Db::open_as_is(&self.target.db, self.settings.busy_timeout_ms, writable)
    }

    /// Whether a delivery with this sender id was stored: `Ok(None)` when
    /// the database cannot be read (C3 says why).
    fn stored(&self, source: Source, delivery: &str) -> Option<InboxRow> {
        let db = self.open_db(false).ok()?;
        db.delivery_by_sender_id(source.as_str(), delivery)
            .ok()
            .flatten()
    }

    /// Expects `answer` to be a 401 and nothing stored under `delivery`.
    fn refused(&self, source: Source, delivery: &str, answer: Result<Answer, String>) -> Outcome {
        let a = match answer {
            Ok(a) => a,
            Err(e) => return infra(e),
        };
        if self.stored(source, delivery).is_some() {
            return fail(format!(
                "{source}: {} and the delivery was STORED (delivery id {delivery})",
                a.describe()
            ));
        }
        if a.status != 401 {
            return fail(format!("{source}: expected 401, got {}", a.describe()));
        }
        pass(format!("{source}: 401 ({})", short(a.detail())))
    }

    // ---------------------------------------------------------- checks

    fn c1_health(&mut self) -> Outcome {
        let a = match self.send("GET", "/healthz", &[], Vec::new()) {
            Ok(a) => a,
            Err(e) => return infra(format!("GET /healthz: {e}")),
        };
        if a.status >= 500 {
            return infra(format!("GET /healthz: {}", a.describe()));
        }
        self.health_status = Status::Fail;
        if a.status != 200 {
            return fail(format!("GET /healthz: expected 200, got {}", a.describe()));
        }
        let field = |k: &str| a.body.get(k).filter(|v| !v.is_null());
        let (Some(version), Some(commit), Some(schema)) = (
            field("version").and_then(Value::as_str),
            field("commit").and_then(Value::as_str),
            field("schema").and_then(Value::as_i64),
        ) else {
            return fail(format!(
                "GET /healthz answered 200 without version, commit and schema: {}",
                short(&a.body.to_string())
            ));
        };
        self.health = Some(Health {
            version: version.to_string(),
            commit: commit.to_string(),
            schema,
        });
        self.health_status = Status::Pass;
        pass(format!("orch {version}, commit {commit}, schema {schema}"))
    }

    /// The health check's outcome for a check that needs it and does not
    /// have it.
    fn without_health(&self, what: &str) -> Outcome {
        (
            self.health_status,
            format!("{what} is unknown: /healthz did not tell it (C1)"),
        )
    }

    fn c2_provenance(&mut self) -> Outcome {
        let Some(expect) = self.target.expect_revision.as_deref().map(str::trim) else {
            return match &self.health {
                Some(h) => pass(format!(
                    "no --expect-revision given; the instance runs commit {}",
                    h.commit
                )),
                None => pass("no --expect-revision given"),
            };
        };
        let Some(h) = &self.health else {
            return self.without_health("the instance's commit");
        };
        let got = h.commit.to_ascii_lowercase();
        let want = expect.to_ascii_lowercase();
        let hex = !want.is_empty() && want.chars().all(|c| c.is_ascii_hexdigit());
        if got == want || (hex && want.len() >= 7 && got.starts_with(&want)) {
            pass(format!("the instance runs {got}, as expected"))
        } else {
            fail(format!(
                "the instance runs commit {}, not the expected revision {expect}: a stale or wrong build is deployed",
                h.commit
            ))
        }
    }

    fn c3_schema(&mut self) -> Outcome {
        let path = &self.target.db;
        if !path.is_file() {
            return fail(format!("no database at {}", path.display()));
        }
        let db = match self.open_db(false) {
            Ok(db) => db,
            Err(e) => return fail(format!("{e:#}")),
        };
        let version = match db.user_version() {
            Ok(v) => v,
            Err(e) => {
                return infra(format!(
                    "reading the schema version of {}: {e:#}",
                    path.display()
                ))
            }
        };
        let Some(h) = &self.health else {
            let (status, why) = self.without_health("the schema the instance expects");
            return (status, format!("database at schema {version}; {why}"));
        };
        if version == h.schema {
            pass(format!(
                "database at schema {version}, as the instance expects"
            ))
        } else {
            fail(format!(
                "database {} is at schema {version}, the instance's binary expects {} (run `orch init` with the staging binary)",
                path.display(),
                h.schema
            ))
        }
    }

    fn c4_config(&mut self) -> Outcome {
        let config = match Config::load(&self.target.config, true) {
            Ok(c) => c,
            Err(e) => return fail(format!("the staging config does not load: {e}")),
        };
        let project =
            match &self.target.project {
                Some(name) => match config.project(name) {
                    Some(p) => p.clone(),
                    None => {
                        let names: Vec<&str> =
                            config.projects.iter().map(|p| p.name.as_str()).collect();
                        return fail(format!(
                            "no project {name:?} in {} (it has: {})",
                            self.target.config.display(),
                            names.join(", ")
                        ));
                    }
                },
                None => match config.projects.as_slice() {
                    [p] => p.clone(),
                    [] => return fail(format!("{} has no projects", self.target.config.display())),
                    _ => return fail(
                        "the staging config has several projects; name the sandbox with --project",
                    ),
                },
            };
        let mut settings = self.settings.clone();
        settings.db_path = self.target.db.clone();
        settings.config_path = self.target.config.clone();
        settings.config_explicit = true;
        let ctx = Ctx { settings, config };
        let name = project.name.clone();
        self.project = Some(project.clone());
        if project.tracker_project_id.trim().is_empty() {
            return fail(format!(
                "project {name} has no tracker_project_id: no Plane delivery can reach it"
            ));
        }
        if let Some(other) = ctx
            .config
            .project_by_tracker_id(&project.tracker_project_id)
            .filter(|p| p.name != name)
        {
            return fail(format!(
                "project {} has the same tracker_project_id as {name} and comes first: deliveries for {name} go to it",
                other.name
            ));
        }
        self.staging = Some(ctx);
        if self.secret(Source::Plane).is_none() {
            return fail(
                "ORCH_PLANE_WEBHOOK_SECRET is not set in the checker's environment (set it as the staging instance's .env does)",
            );
        }
        let gitea = if self.secret(Source::Gitea).is_some() {
            "set"
        } else {
            "not set (Gitea deliveries are refused)"
        };
        pass(format!(
            "project {name} ({} tracker {}, {} forge); Plane webhook secret set, Gitea's {gitea}",
            project.tracker, project.tracker_project_id, project.forge
        ))
    }

    fn c5_unsigned(&mut self) -> Outcome {
        let mut reasons = Vec::new();
        for (source, body) in [
            (Source::Plane, self.harmless("c5")),
            (Source::Gitea, self.gitea_body("c5")),
        ] {
            let id = self.delivery_id(&format!("c5-{source}"));
            let headers = self.headers(source, &id, &body, None);
            let answer = self.post(source, &headers, &body);
            let (status, reason) = self.refused(source, &id, answer);
            if status != Status::Pass {
                return (status, reason);
            }
            reasons.push(reason);
        }
        pass(format!("{}; nothing stored", reasons.join("; ")))
    }

    fn c6_mis_signed(&mut self) -> Outcome {
        let mut reasons = Vec::new();
        for (source, body) in [
            (Source::Plane, self.harmless("c6")),
            (Source::Gitea, self.gitea_body("c6")),
        ] {
            let id = self.delivery_id(&format!("c6-{source}"));
            let wrong = format!("{}-not-the-secret", self.secret(source).unwrap_or("orch"));
            let headers = self.headers(source, &id, &body, Some(&wrong));
            let answer = self.post(source, &headers, &body);
            let (status, reason) = self.refused(source, &id, answer);
            if status != Status::Pass {
                return (status, reason);
            }
            reasons.push(reason);
        }
        pass(format!("{}; nothing stored", reasons.join("; ")))
    }

    fn c7_oversize(&mut self) -> Outcome {
        let id = self.delivery_id("c7");
        // Valid JSON, one byte over the limit, correctly signed: only the
        // size may refuse it.
        let mut body = b"{\"padding\": \"".to_vec();
        body.resize(MAX_BODY_BYTES + 1 - 2, b'x');
        body.extend_from_slice(b"\"}");
        let secret = self.secret(Source::Plane).unwrap_or("orch");
        let headers = self.headers(Source::Plane, &id, &body, Some(secret));
        let a = match self.post_oversize(&headers, body) {
            Ok(a) => a,
            Err(e) => return infra(e),
        };
        if self.stored(Source::Plane, &id).is_some() {
            return fail(format!(
                "{} and the oversize delivery was STORED (delivery id {id})",
                a.describe()
            ));
        }
        if a.status != 413 {
            return fail(format!(
                "a {}-byte body: expected 413, got {}",
                MAX_BODY_BYTES + 1,
                a.describe()
            ));
        }
        pass(format!(
            "a {}-byte body: 413 ({}); nothing stored",
            MAX_BODY_BYTES + 1,
            short(a.detail())
        ))
    }

    fn c8_redelivery(&mut self) -> Outcome {
        let Some(secret) = self.secret(Source::Plane).map(str::to_string) else {
            return fail("no ORCH_PLANE_WEBHOOK_SECRET to sign with (C4)");
        };
        let body = self.harmless("c8");
        let id = self.delivery_id("c8");
        let headers = self.headers(Source::Plane, &id, &body, Some(&secret));
        if let Err(o) = self.post_new_plane(&headers, &body, "a new signed delivery") {
            return o;
        }
        let again = match self.post(Source::Plane, &headers, &body) {
            Ok(a) => a,
            Err(e) => return infra(e),
        };
        if (again.status, again.status_field()) != (200, "duplicate") {
            return fail(format!(
                "the same delivery again: expected 200 duplicate, got {}",
                again.describe()
            ));
        }
        // Plane's retry: a new delivery id, the same body.
        let retry_id = self.delivery_id("c8-retry");
        let headers = self.headers(Source::Plane, &retry_id, &body, Some(&secret));
        let retry = match self.post(Source::Plane, &headers, &body) {
            Ok(a) => a,
            Err(e) => return infra(e),
        };
        if (retry.status, retry.status_field()) != (200, "duplicate") {
            return fail(format!(
                "Plane's retry (new delivery id, same body): expected 200 duplicate, got {}",
                retry.describe()
            ));
        }
        if self.open_db(false).is_ok() {
            if self.stored(Source::Plane, &id).is_none() {
                return fail(format!(
                    "answered 202 but delivery {id} is not in the inbox"
                ));
            }
            if self.stored(Source::Plane, &retry_id).is_some() {
                return fail(format!("Plane's retry {retry_id} was stored a second time"));
            }
        }
        pass("202 stored, then 200 duplicate for the same delivery and for Plane's retry with a new id; stored once")
    }

    /// The sandbox project's In Progress state `(id, name)`, resolved
    /// through its tracker (never hard-coded); the outcome to report when
    /// it cannot be.
    fn in_progress_state(&self) -> Result<(String, String), Outcome> {
        let (Some(ctx), Some(project)) = (self.staging.as_ref(), self.project.as_ref()) else {
            return Err(fail("needs the sandbox project (C4)"));
        };
        let db = self
            .open_db(false)
            .map_err(|e| fail(format!("the instance's database: {e:#}")))?;
        let tracker = Tracker::for_project(ctx, project);
        tracker
            .delivery_state(ctx, &db, project, StateKind::InProgress)
            .map_err(|e| {
                let why = format!(
                    "resolving the In Progress state through the {}: {e}",
                    tracker.name()
                );
                if adapter_infra(&e) {
                    infra(why)
                } else {
                    fail(why)
                }
            })
    }

    fn c9a_end_to_end(&mut self) -> Outcome {
        let Some(project) = self.project.clone() else {
            return fail("needs the sandbox project (C4)");
        };
        let Some(secret) = self.secret(Source::Plane).map(str::to_string) else {
            return fail("no ORCH_PLANE_WEBHOOK_SECRET to sign with (C4)");
        };
        let (state_id, state_name) = match self.in_progress_state() {
            Ok(s) => s,
            Err(o) => return o,
        };
        let db = match self.open_db(false) {
            Ok(db) => db,
            Err(e) => return fail(format!("the instance's database: {e:#}")),
        };
        // Unique per run: orch/<project>-<sequence> must be a new branch.
        let sequence = now_ms();
        let body = self.plane_issue("c9a", "state", (&state_id, &state_name), sequence);
        let issue = self.uuid("c9a");
        let delivery = self.synthetic_delivery.clone();
        let headers = self.headers(Source::Plane, &delivery, &body, Some(&secret));
        if let Err(o) = self.post_new_plane(&headers, &body, "the synthetic delivery") {
            return o;
        }
        self.synthetic = Synthetic::Pending;
        let state = format!("state {state_name:?} (id {state_id})");
        let started = Instant::now();
        let deadline = started + self.target.timeout;
        loop {
            match db.task_by_issue(&project.name, &issue) {
                Ok(Some(task)) => {
                    self.synthetic = Synthetic::Task;
                    // Cancel at once: the instance's worker must not start
                    // the analyst (C10 reports it).
                    self.cancel_now(&task);
                    let reason = format!(
                        "task {} created {} ms after the 202, from a delivery in {state}",
                        task.id,
                        started.elapsed().as_millis()
                    );
                    self.task = Some(task);
                    return pass(reason);
                }
                Ok(None) => {}
                Err(e) => return infra(format!("reading the instance's database: {e:#}")),
            }
            match db.delivery_by_sender_id("plane", &delivery) {
                Ok(Some(row)) if row.processed_at_ms.is_some() => {
                    if let Ok(Some(task)) = db.task_by_issue(&project.name, &issue) {
                        // Created between the two reads.
                        self.synthetic = Synthetic::Task;
                        self.cancel_now(&task);
                        let reason = format!("task {} created from a delivery in {state}", task.id);
                        self.task = Some(task);
                        return pass(reason);
                    }
                    self.synthetic = Synthetic::NoTask;
                    return fail(format!(
                        "the instance ingested the synthetic delivery in {state} without creating a task: {}",
                        row.outcome.as_deref().unwrap_or("(no outcome)")
                    ));
                }
                Ok(Some(row)) if row.dead => {
                    self.synthetic = Synthetic::NoTask;
                    return fail(format!(
                        "the instance dead-lettered the synthetic delivery: {}",
                        row.error.as_deref().unwrap_or("(no error)")
                    ));
                }
                Ok(Some(row)) if Instant::now() >= deadline => {
                    let last = row
                        .error
                        .map(|e| format!("; its last ingest error: {}", short(&e)))
                        .unwrap_or_default();
                    return infra(format!(
                        "the instance did not ingest the synthetic delivery (inbox {}) within {} s — is its ingest timer running?{last}",
                        row.id,
                        self.target.timeout.as_secs()
                    ));
                }
                Ok(None) if Instant::now() >= deadline => {
                    self.synthetic = Synthetic::NotStored;
                    return fail(format!(
                        "the instance answered 202 but delivery {delivery} is not in its database {}",
                        self.target.db.display()
                    ));
                }
                Ok(_) => {}
                Err(e) => return infra(format!("reading the instance's database: {e:#}")),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// C10's action: cancels the synthetic task through the transition
    /// rule (a manual move, actor human) on the instance's database.
    fn cancel_now(&mut self, task: &Task) {
        let started = Instant::now();
        let policy = self
            .staging
            .as_ref()
            .map(Ctx::policy)
            .unwrap_or(crate::pipeline::Policy {
                max_developer_retries: self.settings.max_developer_retries,
            });
        let outcome = self.open_db(true).and_then(|db| {
            manual::apply(
                &db,
                policy,
                task.id,
                ManualMove::Cancel,
                CANCEL_REASON,
                now_ms(),
            )
        });
        let result = match outcome {
            Ok(_) => pass(format!("task {} cancelled", task.id)),
            Err(e) if crate::error::exit_code_for(&e) == crate::error::exit::BUSY => {
                infra(format!("cancelling task {}: {e:#}", task.id))
            }
            Err(e) => fail(format!("cancelling task {}: {e:#}", task.id)),
        };
        self.cancel = Some((result.0, result.1, started.elapsed().as_millis() as u64));
    }

    fn c9b_set_up(&mut self) -> Outcome {
        let Some(task) = self.task.clone() else {
            let c9a = self.results.last().map_or(Status::Fail, |c| c.status);
            return (c9a, "no synthetic task to inspect (C9a)".into());
        };
        let (Some(ctx), Some(project)) = (self.staging.clone(), self.project.clone()) else {
            return fail("needs the sandbox project (C4)");
        };
        let db = match self.open_db(false) {
            Ok(db) => db,
            Err(e) => return infra(format!("the instance's database: {e:#}")),
        };
        let repo = ctx.repo(&project);
        let deadline = Instant::now() + self.target.timeout;
        loop {
            let job = match db.jobs_for_task(task.id) {
                Ok(jobs) => jobs
                    .into_iter()
                    .find(|j| j.stage == Stage::Analysis && j.role == "analyst"),
                Err(e) => return infra(format!("reading the instance's database: {e:#}")),
            };
            let in_worktree = Repo::worktree_branch(Path::new(&task.worktree))
                .ok()
                .flatten()
                .is_some_and(|b| b == task.branch);
            let on_origin = if in_worktree {
                Ok(None)
            } else {
                repo.ls_remote_branch(&task.branch)
            };
            let branch = match (&on_origin, in_worktree) {
                (_, true) => Some(format!(
                    "branch {} checked out in {}",
                    task.branch, task.worktree
                )),
                (Ok(Some(sha)), _) => Some(format!("branch {} on the forge at {sha}", task.branch)),
                _ => None,
            };
            if let (Some(job), Some(branch)) = (&job, &branch) {
                return pass(format!("{branch}; analyst job {} ({})", job.id, job.status));
            }
            if Instant::now() >= deadline {
                if let Err(e) = on_origin {
                    return infra(format!(
                        "branch {} is not in the worktree and the forge cannot be asked: {e:#}",
                        task.branch
                    ));
                }
                return fail(match (job, branch) {
                    (None, Some(b)) => format!("{b}, but no analyst job for task {}", task.id),
                    (Some(j), None) => format!(
                        "analyst job {}, but branch {} is neither on the forge nor checked out in {}",
                        j.id, task.branch, task.worktree
                    ),
                    _ => format!(
                        "task {} has neither its branch {} nor an analyst job",
                        task.id, task.branch
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn c10_cleanup(&mut self) -> Outcome {
        match self.synthetic {
            Synthetic::NotStored => {
                return pass("nothing to clean up: the synthetic delivery was not stored")
            }
            Synthetic::NoTask => {
                return pass("nothing to clean up: the synthetic delivery created no task")
            }
            Synthetic::Pending => {
                return infra(format!(
                    "the synthetic delivery {} is stored but not ingested; when it is, cancel its task by hand (`orch task cancel ID --reason {CANCEL_REASON}`)",
                    self.synthetic_delivery
                ))
            }
            Synthetic::Task => {}
        }
        let Some(task) = self.task.clone() else {
            return fail("the synthetic task is gone");
        };
        if let Some((status, reason, _)) = &self.cancel {
            if *status != Status::Pass {
                return (*status, reason.clone());
            }
        }
        let db = match self.open_db(false) {
            Ok(db) => db,
            Err(e) => return infra(format!("the instance's database: {e:#}")),
        };
        let (now, jobs, transitions) = match (
            db.task(task.id),
            db.jobs_for_task(task.id),
            db.transitions(task.id),
        ) {
            (Ok(Some(t)), Ok(j), Ok(tr)) => (t, j, tr),
            (Ok(None), _, _) => return fail(format!("task {} vanished", task.id)),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return infra(format!("reading the instance's database: {e:#}"))
            }
        };
        let recorded = transitions
            .iter()
            .any(|t| t.actor == Actor::Human && t.reason == CANCEL_REASON);
        if !now.escalated || !recorded {
            return fail(format!(
                "task {} is not cancelled (escalated {}, cancel transition recorded {recorded})",
                task.id, now.escalated
            ));
        }
        if let Some(j) = jobs.iter().find(|j| j.claimed_at_ms.is_some()) {
            return fail(format!(
                "job {} ({}) of the synthetic task was claimed before the cancellation: an agent ran on it",
                j.id, j.role
            ));
        }
        if let Some(j) = jobs.iter().find(|j| j.status.is_active()) {
            return fail(format!(
                "job {} of the synthetic task is still {}",
                j.id, j.status
            ));
        }
        pass(format!(
            "task {} cancelled through the transition rule (actor human, reason {CANCEL_REASON}); no agent ran",
            task.id
        ))
    }
}

/// Whether an adapter error is the environment's (INFRA): the service
/// unreachable, timing out, answering 5xx or rate-limiting.
fn adapter_infra(e: &AdapterError) -> bool {
    match e {
        AdapterError::Transport { .. } => true,
        AdapterError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
        _ => false,
    }
}

/// A transport error, in words.
fn transport(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::Timeout(t) => format!("timed out ({t:?})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &'static str, status: Status, waived: bool) -> Check {
        Check {
            id,
            name: "x",
            status,
            reason: String::new(),
            duration_ms: 0,
            waived,
        }
    }

    #[test]
    fn the_verdict_rule() {
        use Status::*;
        assert_eq!(verdict(&[check("C1", Pass, false)]), Pass);
        assert_eq!(
            verdict(&[check("C1", Pass, false), check("C2", Infra, false)]),
            Infra
        );
        assert_eq!(
            verdict(&[check("C1", Infra, true), check("C2", Pass, false)]),
            Pass
        );
        assert_eq!(
            verdict(&[check("C1", Infra, false), check("C2", Fail, false)]),
            Fail,
            "a FAIL wins over INFRA"
        );
        assert_eq!(
            verdict(&[check("C1", Fail, true)]),
            Fail,
            "a FAIL cannot be waived"
        );
    }

    #[test]
    fn waivers_name_checks() {
        let w = parse_waivers(&["c1, C9A", "c1", ""]).unwrap();
        assert_eq!(w, ["C1", "C9a"]);
        let e = parse_waivers(&["C11"]).unwrap_err();
        assert!(e.to_string().contains("C11"), "{e}");
        assert!(matches!(e, Error::Usage(_)));
    }
}
