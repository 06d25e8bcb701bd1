//! The staging suite run against one instance: what to check
//! ([`Target`]), [`run`], and the checks C1–C10 themselves (DESIGN §8).

mod instance;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{info, warn};

use self::instance::Answer;
#[cfg(doc)]
use super::report::parse_waivers;
use super::report::{verdict, Check, Planned, Report, Status, CANCEL_REASON, CHECKS};
use crate::adapters::AdapterError;
use crate::clock::now_ms;
use crate::config::{Config, ProjectConfig, Settings, StateKind};
use crate::ctx::Ctx;
use crate::db::Task;
use crate::git::Repo;
use crate::pipeline::manual::{self, ManualMove};
use crate::pipeline::{Stage, TransitionCause};
use crate::tracker::Tracker;
use crate::webhook::{Source, MAX_BODY_BYTES};

/// The senders this suite plays: Plane (every check) and Gitea (C5, C6).
pub(super) const PLANE: Source = Source::new(&crate::tracker::plane::Webhook);
pub(super) const GITEA: Source = Source::new(&crate::forge::gitea::Webhook);

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

/// What `/healthz` said.
#[derive(Debug, Clone)]
struct Health {
    version: String,
    commit: String,
    schema: i64,
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
        if !crate::db::Db::exists(path) {
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
        if self.secret(PLANE).is_none() {
            return fail(
                "ORCH_PLANE_WEBHOOK_SECRET is not set in the checker's environment (set it as the staging instance's .env does)",
            );
        }
        let gitea = if self.secret(GITEA).is_some() {
            "set"
        } else {
            "not set (Gitea deliveries are refused)"
        };
        pass(format!(
            "project {name} ({} tracker {}, {} forge); Plane webhook secret set, Gitea's {gitea}",
            project.tracker, project.tracker_project_id, project.forge
        ))
    }

    /// Posts a Plane delivery the instance already holds and expects
    /// `200 duplicate`; `what` names the delivery in the reason.
    fn post_duplicate(
        &self,
        what: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), Outcome> {
        let a = self.post(PLANE, headers, body).map_err(infra)?;
        if (a.status, a.status_field()) != (200, "duplicate") {
            return Err(fail(format!(
                "{what}: expected 200 duplicate, got {}",
                a.describe()
            )));
        }
        Ok(())
    }

    fn c5_unsigned(&mut self) -> Outcome {
        self.refused_from_each_source("c5", |_, _| None)
    }

    fn c6_mis_signed(&mut self) -> Outcome {
        self.refused_from_each_source("c6", |check, source| {
            Some(format!(
                "{}-not-the-secret",
                check.secret(source).unwrap_or("orch")
            ))
        })
    }

    /// Posts check `tag`'s harmless delivery from Plane and from Gitea,
    /// signed with the secret `sign_with` gives for its source (`None`:
    /// unsigned), and expects each [`Self::refused`]; the first that is not
    /// is the outcome.
    fn refused_from_each_source(
        &self,
        tag: &str,
        sign_with: impl Fn(&Self, Source) -> Option<String>,
    ) -> Outcome {
        let mut reasons = Vec::new();
        for (source, body) in [(PLANE, self.harmless(tag)), (GITEA, self.gitea_body(tag))] {
            let id = self.delivery_id(&format!("{tag}-{source}"));
            let secret = sign_with(self, source);
            let headers = self.headers(source, &id, &body, secret.as_deref());
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
        let secret = self.secret(PLANE).unwrap_or("orch");
        let headers = self.headers(PLANE, &id, &body, Some(secret));
        let a = match self.post_oversize(&headers, body) {
            Ok(a) => a,
            Err(e) => return infra(e),
        };
        if self.stored(PLANE, &id).is_some() {
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
        let Some(secret) = self.secret(PLANE).map(str::to_string) else {
            return fail("no ORCH_PLANE_WEBHOOK_SECRET to sign with (C4)");
        };
        let body = self.harmless("c8");
        let id = self.delivery_id("c8");
        let headers = self.headers(PLANE, &id, &body, Some(&secret));
        if let Err(o) = self.post_new_plane(&headers, &body, "a new signed delivery") {
            return o;
        }
        if let Err(o) = self.post_duplicate("the same delivery again", &headers, &body) {
            return o;
        }
        // Plane's retry: a new delivery id, the same body.
        let retry_id = self.delivery_id("c8-retry");
        let headers = self.headers(PLANE, &retry_id, &body, Some(&secret));
        let what = "Plane's retry (new delivery id, same body)";
        if let Err(o) = self.post_duplicate(what, &headers, &body) {
            return o;
        }
        if self.open_db(false).is_ok() {
            if self.stored(PLANE, &id).is_none() {
                return fail(format!(
                    "answered 202 but delivery {id} is not in the inbox"
                ));
            }
            if self.stored(PLANE, &retry_id).is_some() {
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
        let Some(secret) = self.secret(PLANE).map(str::to_string) else {
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
        let headers = self.headers(PLANE, &delivery, &body, Some(&secret));
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
            .any(|t| t.cause == TransitionCause::CancelledByHand && t.reason == CANCEL_REASON);
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
