//! Settings and configuration.
//!
//! Two sources, one rule each:
//! - **Settings** (`ORCH_*` environment variables, with a `.env` file in the
//!   working directory loaded first by the binary): paths, limits, secrets,
//!   timeouts. Every key is listed with its default in `.env.example`.
//! - **Config** (a TOML file, `ORCH_CONFIG`): the project registry, and the
//!   per-role agent argv and prompt templates.
//!
//! A value orch cannot use is one [`Error::Config`] naming the key, never a
//! panic. Secrets are wrapped in [`Secret`], whose `Debug` is redacted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// A secret string (webhook secret, API token). `Debug` and `Display` print
/// `[redacted]`; use [`Secret::expose`] where the value is really needed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Runtime settings from `ORCH_*` environment variables. Durations carry
/// their unit in the field name (`_s` seconds, `_ms` milliseconds).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ORCH_STATE_DIR` (default `./orch-state`): logs, locks, repos, worktrees.
    pub state_dir: PathBuf,
    /// `ORCH_DB` (default `<state_dir>/orch.db`): the SQLite database file.
    pub db_path: PathBuf,
    /// `ORCH_CONFIG` (default `./orch.toml`; a missing default file means
    /// no projects): the TOML registry of projects and agents.
    pub config_path: PathBuf,
    /// Whether `config_path` was given explicitly (then it must exist).
    pub config_explicit: bool,
    /// `ORCH_MAX_CONCURRENCY` (default 2): running jobs across all workers.
    pub max_concurrency: u32,
    /// `ORCH_MAX_DEVELOPER_RETRIES` (default 3): returns to development
    /// after which the task is escalated.
    pub max_developer_retries: u32,
    /// `ORCH_JOB_MAX_ATTEMPTS` (default 3): runs of one job before it fails
    /// for good and the task is escalated.
    pub job_max_attempts: u32,
    /// `ORCH_JOB_BACKOFF_S` (default 30): base delay before a retried job
    /// runs again; doubles per attempt.
    pub job_backoff_s: u64,
    /// `ORCH_PLANE_WEBHOOK_SECRET`: HMAC secret of the Plane webhook.
    pub plane_webhook_secret: Option<Secret>,
    /// `ORCH_GITEA_WEBHOOK_SECRET`: HMAC secret of the Gitea webhook.
    pub gitea_webhook_secret: Option<Secret>,
    /// `ORCH_BIND` (default `127.0.0.1:8500`): address of `orch serve`.
    pub bind: String,
    /// `ORCH_SERVE_THREADS` (default 0 = one per CPU): the shim's runtime
    /// worker threads.
    pub serve_threads: usize,
    /// `ORCH_SERVE_READ_TIMEOUT_MS` (default 10000): a request must be
    /// complete (body read, delivery stored) within this time after its
    /// head arrived, else 408; also how long an answer may wait for a
    /// client that does not read it.
    pub serve_read_timeout_ms: u64,
    /// `ORCH_SERVE_HEADER_TIMEOUT_MS` (default 5000): a request head must
    /// arrive within this time after the connection opened or the previous
    /// answer, else the connection is closed (also the idle keep-alive
    /// timeout).
    pub serve_header_timeout_ms: u64,
    /// `ORCH_SERVE_MAX_CONNECTIONS` (default 4096): connections the shim
    /// keeps open at once; more wait in the listen backlog.
    pub serve_max_connections: usize,
    /// `ORCH_SERVE_MAX_HEADER_BYTES` (default 65536, at least 8192): the
    /// longest request head; longer is answered 431.
    pub serve_max_header_bytes: usize,
    /// `ORCH_BUSY_TIMEOUT_MS` (default 5000): SQLite busy timeout.
    pub busy_timeout_ms: u64,
    /// `ORCH_INBOX_MAX_ATTEMPTS` (default 5): ingest attempts before a
    /// delivery is dead-lettered.
    pub inbox_max_attempts: u32,
    /// `ORCH_OUTBOX_MAX_ATTEMPTS` (default 8): delivery attempts before an
    /// outbox message is dead-lettered.
    pub outbox_max_attempts: u32,
    /// `ORCH_AGENT_TIMEOUT_S` (default 3600): default agent timeout.
    pub agent_timeout_s: u64,
    /// `ORCH_KILL_GRACE_S` (default 10): SIGTERM → SIGKILL grace.
    pub kill_grace_s: u64,
    /// `ORCH_HEARTBEAT_S` (default 10): how often a worker refreshes its
    /// job's heartbeat.
    pub heartbeat_s: u64,
    /// `ORCH_HEARTBEAT_STALE_S` (default 120): a heartbeat older than this
    /// means the worker is gone.
    pub heartbeat_stale_s: u64,
    /// `ORCH_REAPER_FINALIZE_GRACE_S` (default 300): how long after its
    /// agent exited a still-running job is left to its own worker.
    pub reaper_finalize_grace_s: u64,
    /// `ORCH_RECONCILE_ENABLED` (default true): kill switch of `orch reconcile`.
    pub reconcile_enabled: bool,
    /// `ORCH_RECONCILE_GRACE_S` (default 300): a task must be unchanged this
    /// long before reconcile evaluates its gate; per stage
    /// `ORCH_RECONCILE_GRACE_<STAGE>_S` (e.g. `_DEVELOPMENT_S`,
    /// `_DEPLOY_STAGING_S`) overrides it (see [`Settings::grace_for_stage`]).
    pub reconcile_grace_s: u64,
    /// Per-stage overrides of `reconcile_grace_s`, by stage name.
    pub reconcile_grace_by_stage: BTreeMap<String, u64>,
    /// `ORCH_RECONCILE_PLANE_ENABLED` (default true): the tracker side (F-2).
    pub reconcile_plane_enabled: bool,
    /// `ORCH_RECONCILE_SKIP_BLOCKED_ENABLED` (default true): the networked
    /// guard (skip tasks the tracker shows Blocked or Needs Input).
    pub reconcile_skip_blocked_enabled: bool,
    /// Plane, Gitea and Telegram: URLs, tokens, timeouts, kill switches
    /// (see [`crate::adapters::AdapterSettings`]).
    pub adapters: crate::adapters::AdapterSettings,
    /// `ORCH_MERGE_GATE_ENABLED` (default true): serialise merges under the
    /// repo's merge lease. Off: deploy-staging still catches up with main,
    /// re-tests and fast-forwards, but takes no lease.
    pub merge_gate_enabled: bool,
    /// `ORCH_MERGE_GATE_REPOS` (comma list; empty = every project): the
    /// projects (by `name` or forge `repo`) whose merges take the lease.
    pub merge_gate_repos: Vec<String>,
    /// `ORCH_MERGE_GATE_LEASE_TTL_S` (default 7200): how long a merge lease
    /// lasts without renewal; a backstop, since a lease whose job ended is
    /// released at once.
    pub merge_gate_lease_ttl_s: u64,
    /// `ORCH_MERGE_GATE_DEFER_S` (default 30): delay before a merge that
    /// found the lease busy is tried again; doubles per defer, up to 16×.
    pub merge_gate_defer_s: u64,
    /// `ORCH_MERGE_GATE_MAX_DEFERS` (default 24): defers of one job after
    /// which the next busy lease escalates the task.
    pub merge_gate_max_defers: u32,
}

impl Settings {
    /// Reads settings through `lookup` (the process environment in the
    /// binary, a map in tests). `db` and `config` are the `--db` and
    /// `--config` flags, which win over the environment.
    ///
    /// Errors: [`Error::Config`] naming the first key with a bad value.
    pub fn load(
        lookup: &dyn Fn(&str) -> Option<String>,
        db: Option<PathBuf>,
        config: Option<PathBuf>,
    ) -> Result<Settings, Error> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let state_dir = PathBuf::from(get("ORCH_STATE_DIR").unwrap_or_else(|| "orch-state".into()));
        let db_path = db
            .or_else(|| get("ORCH_DB").map(PathBuf::from))
            .unwrap_or_else(|| state_dir.join("orch.db"));
        let (config_path, config_explicit) =
            match config.or_else(|| get("ORCH_CONFIG").map(PathBuf::from)) {
                Some(p) => (p, true),
                None => (PathBuf::from("orch.toml"), false),
            };
        let num = |key: &str, default: u64, min: u64| setting_num(&get, key, default, min);
        let flag = |key: &str, default: bool| setting_flag(&get, key, default);
        Ok(Settings {
            reconcile_enabled: flag("ORCH_RECONCILE_ENABLED", true)?,
            reconcile_grace_s: num("ORCH_RECONCILE_GRACE_S", 300, 0)?,
            reconcile_grace_by_stage: {
                let mut m = BTreeMap::new();
                for stage in [
                    "architecture",
                    "development",
                    "review",
                    "testing",
                    "deploy-staging",
                    "deploy",
                ] {
                    let key = format!(
                        "ORCH_RECONCILE_GRACE_{}_S",
                        stage.to_ascii_uppercase().replace('-', "_")
                    );
                    if get(&key).is_some() {
                        m.insert(stage.to_string(), num(&key, 0, 0)?);
                    }
                }
                m
            },
            reconcile_plane_enabled: flag("ORCH_RECONCILE_PLANE_ENABLED", true)?,
            reconcile_skip_blocked_enabled: flag("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", true)?,
            adapters: crate::adapters::AdapterSettings::load(&get)?,
            merge_gate_enabled: flag("ORCH_MERGE_GATE_ENABLED", true)?,
            merge_gate_repos: get("ORCH_MERGE_GATE_REPOS")
                .map(|v| {
                    v.split(',')
                        .map(|r| r.trim().to_string())
                        .filter(|r| !r.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            merge_gate_lease_ttl_s: num("ORCH_MERGE_GATE_LEASE_TTL_S", 7200, 1)?,
            merge_gate_defer_s: num("ORCH_MERGE_GATE_DEFER_S", 30, 0)?,
            merge_gate_max_defers: num("ORCH_MERGE_GATE_MAX_DEFERS", 24, 0)? as u32,
            db_path,
            config_path,
            config_explicit,
            max_concurrency: num("ORCH_MAX_CONCURRENCY", 2, 1)? as u32,
            max_developer_retries: num("ORCH_MAX_DEVELOPER_RETRIES", 3, 1)? as u32,
            job_max_attempts: num("ORCH_JOB_MAX_ATTEMPTS", 3, 1)? as u32,
            job_backoff_s: num("ORCH_JOB_BACKOFF_S", 30, 0)?,
            plane_webhook_secret: get("ORCH_PLANE_WEBHOOK_SECRET").map(Secret::new),
            gitea_webhook_secret: get("ORCH_GITEA_WEBHOOK_SECRET").map(Secret::new),
            bind: get("ORCH_BIND").unwrap_or_else(|| "127.0.0.1:8500".into()),
            serve_threads: num("ORCH_SERVE_THREADS", 0, 0)? as usize,
            serve_read_timeout_ms: num("ORCH_SERVE_READ_TIMEOUT_MS", 10_000, 1)?,
            serve_header_timeout_ms: num("ORCH_SERVE_HEADER_TIMEOUT_MS", 5_000, 1)?,
            serve_max_connections: num("ORCH_SERVE_MAX_CONNECTIONS", 4096, 1)? as usize,
            serve_max_header_bytes: num("ORCH_SERVE_MAX_HEADER_BYTES", 65_536, 8192)? as usize,
            busy_timeout_ms: num("ORCH_BUSY_TIMEOUT_MS", 5_000, 0)?,
            inbox_max_attempts: num("ORCH_INBOX_MAX_ATTEMPTS", 5, 1)? as u32,
            outbox_max_attempts: num("ORCH_OUTBOX_MAX_ATTEMPTS", 8, 1)? as u32,
            agent_timeout_s: num("ORCH_AGENT_TIMEOUT_S", 3600, 1)?,
            kill_grace_s: num("ORCH_KILL_GRACE_S", 10, 0)?,
            heartbeat_s: num("ORCH_HEARTBEAT_S", 10, 1)?,
            heartbeat_stale_s: num("ORCH_HEARTBEAT_STALE_S", 120, 1)?,
            reaper_finalize_grace_s: num("ORCH_REAPER_FINALIZE_GRACE_S", 300, 0)?,
            state_dir,
        })
    }

    /// `grace_for_stage(stage)`: seconds a task at `stage` must be unchanged
    /// before reconcile evaluates its gate.
    pub fn grace_for_stage(&self, stage: &str) -> u64 {
        self.reconcile_grace_by_stage
            .get(stage)
            .copied()
            .unwrap_or(self.reconcile_grace_s)
    }

    /// `<state_dir>/locks`
    pub fn locks_dir(&self) -> PathBuf {
        self.state_dir.join("locks")
    }
    /// `<state_dir>/logs`: one log file per agent or test run.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    /// `<state_dir>/repos`: one shared clone per project.
    pub fn repos_dir(&self) -> PathBuf {
        self.state_dir.join("repos")
    }
    /// `<state_dir>/worktrees`: one worktree per task.
    pub fn worktrees_dir(&self) -> PathBuf {
        self.state_dir.join("worktrees")
    }
    /// `<state_dir>/verdicts`: where agents write their verdict files
    /// (outside the worktree, so a verdict is never committed).
    pub fn verdicts_dir(&self) -> PathBuf {
        self.state_dir.join("verdicts")
    }
}

/// Reads setting `key` through `get` as a whole number `>= min`;
/// `default` when unset.
///
/// Errors: [`Error::Config`] naming the key and the value.
pub(crate) fn setting_num(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    default: u64,
    min: u64,
) -> Result<u64, Error> {
    match get(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(Error::config(
                key,
                format!("expected a whole number >= {min}, got {v:?}"),
            )),
        },
    }
}

/// Reads setting `key` through `get` as a boolean (`true/false`,
/// `1/0`, `yes/no`, `on/off`); `default` when unset.
///
/// Errors: [`Error::Config`] naming the key and the value.
pub(crate) fn setting_flag(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    default: bool,
) -> Result<bool, Error> {
    match get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(Error::config(
            key,
            format!("expected true or false, got {v:?}"),
        )),
    }
}

/// The TOML config: projects and agents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Agent definitions by role name (`analyst`, `architect`, `developer`,
    /// `reviewer`, `tester`, `deployer`), with `default` for any role
    /// without its own entry.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    /// The project registry.
    #[serde(default)]
    pub projects: Vec<ProjectConfig>,
}

/// How to run one role's agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// argv template (no shell); each element may use the prompt
    /// placeholders, e.g. `["claude", "-p", "--output-format", "json",
    /// "--add-dir", "{verdict_dir}"]`.
    pub argv: Vec<String>,
    /// Prompt template, fed on stdin. Placeholders: `{task_id}`,
    /// `{project}`, `{title}`, `{body}`, `{stage}`, `{role}`, `{branch}`,
    /// `{worktree}`, `{verdict_file}`, `{verdict_dir}`.
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Wall-clock limit in seconds (default `ORCH_AGENT_TIMEOUT_S`).
    pub timeout_s: Option<u64>,
    /// Extra environment for the agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_prompt() -> String {
    DEFAULT_PROMPT.to_string()
}

/// The prompt used when an agent entry sets none.
pub const DEFAULT_PROMPT: &str = "You are the {role} of project {project}, working on work item {task_id}: {title}\n\n{body}\n\nStage: {stage}. Your working directory is the git worktree {worktree} on branch {branch}; orch commits and pushes what you change there.\nWhen your role gives a verdict, write it as JSON {{\"verdict\": \"...\", \"summary\": \"...\"}} to {verdict_file}.\n";

/// One project of the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Short key, `[A-Za-z0-9][A-Za-z0-9_-]*`; task branches are
    /// `orch/<name>-<sequence>`.
    pub name: String,
    /// `local` (work items from `orch issue add`) or `plane`.
    #[serde(default = "default_local")]
    pub tracker: String,
    /// The tracker's project id (Plane project UUID); Plane deliveries whose
    /// `data.project` matches belong to this project (also with the local
    /// tracker, which then receives orch's comments and state changes).
    #[serde(default)]
    pub tracker_project_id: String,
    /// `local` (a bare repository as origin; CI = `test_command`) or `gitea`.
    #[serde(default = "default_local")]
    pub forge: String,
    /// Forge repository `owner/name`.
    #[serde(default)]
    pub repo: String,
    /// Git URL or path of origin.
    pub clone_url: String,
    /// Default branch (default `main`); orch moves it only by fast-forward.
    #[serde(default = "default_main")]
    pub default_branch: String,
    /// The project's test command (argv, no shell), run in the worktree.
    pub test_command: Vec<String>,
    /// Test command timeout in seconds (default 600).
    #[serde(default = "default_test_timeout")]
    pub test_timeout_s: u64,
    /// Advance analysis → architecture without a human (demos only).
    #[serde(default)]
    pub auto_approve_analysis: bool,
    /// Tracker state ids this project reacts to.
    #[serde(default)]
    pub states: TrackerStates,
    /// `[projects.state_names]`: tracker state names resolved to ids
    /// through the tracker's API; an id in `[projects.states]` wins.
    #[serde(default)]
    pub state_names: crate::adapters::plane::StateNames,
    /// Gitea merge style of deploy-staging → deploy (`Do` of the merge
    /// API): `fast-forward-only` (default), `rebase`, `rebase-merge`,
    /// `merge` or `squash`.
    #[serde(default = "default_merge_style")]
    pub merge_style: String,
}

/// Tracker state ids (Plane state UUIDs) of one project. For the local
/// tracker they are the state names themselves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerStates {
    /// Entering this state creates the task (default `In Progress`).
    #[serde(default = "default_in_progress")]
    pub in_progress: String,
    /// Entering this state approves the analysis (default `Approved`).
    #[serde(default = "default_approved")]
    pub approved: String,
    /// Entering this state reruns the analysis (default `Rejected`).
    #[serde(default = "default_rejected")]
    pub rejected: String,
    /// Plane id of the Blocked state (default: resolved by name).
    #[serde(default)]
    pub blocked: Option<String>,
    /// Plane id of the Needs Input state (default: resolved by name).
    #[serde(default)]
    pub needs_input: Option<String>,
    /// Plane id of the Done state (default: resolved by name).
    #[serde(default)]
    pub done: Option<String>,
}

impl Default for TrackerStates {
    fn default() -> Self {
        TrackerStates {
            in_progress: default_in_progress(),
            approved: default_approved(),
            rejected: default_rejected(),
            blocked: None,
            needs_input: None,
            done: None,
        }
    }
}

fn default_local() -> String {
    "local".into()
}
fn default_main() -> String {
    "main".into()
}
fn default_merge_style() -> String {
    "fast-forward-only".into()
}
fn default_test_timeout() -> u64 {
    600
}
fn default_in_progress() -> String {
    "In Progress".into()
}
fn default_approved() -> String {
    "Approved".into()
}
fn default_rejected() -> String {
    "Rejected".into()
}

/// The placeholders agent argv and prompt templates may use.
pub const TEMPLATE_VARS: [&str; 10] = [
    "task_id",
    "project",
    "title",
    "body",
    "stage",
    "role",
    "branch",
    "worktree",
    "verdict_file",
    "verdict_dir",
];

fn example_vars() -> BTreeMap<&'static str, String> {
    TEMPLATE_VARS
        .iter()
        .map(|k| (*k, format!("<{k}>")))
        .collect()
}

/// The roles agents can be configured for.
pub const ROLES: [&str; 6] = [
    "analyst",
    "architect",
    "developer",
    "reviewer",
    "tester",
    "deployer",
];

impl Config {
    /// Reads and validates the config file. A missing file is an empty
    /// config unless `explicit` (then it is an error).
    ///
    /// Errors: [`Error::Config`] naming the file and the offending key.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, Error> {
        let key = format!("ORCH_CONFIG ({})", path.display());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(e) => return Err(Error::config(key, format!("cannot read: {e}"))),
        };
        Config::parse(&text).map_err(|e| match e {
            Error::Config { key: k, message } => Error::config(format!("{key}: {k}"), message),
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, Error> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            Error::config("toml", e.to_string().replace('\n', " ").trim().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), Error> {
        for role in self.agents.keys() {
            if role != "default" && !ROLES.contains(&role.as_str()) {
                return Err(Error::config(
                    format!("agents.{role}"),
                    format!(
                        "unknown role; expected default or one of {}",
                        ROLES.join(", ")
                    ),
                ));
            }
        }
        for (role, a) in &self.agents {
            if a.argv.is_empty() || a.argv[0].trim().is_empty() {
                return Err(Error::config(
                    format!("agents.{role}.argv"),
                    "must name a program",
                ));
            }
            let vars = example_vars();
            for (i, arg) in a.argv.iter().enumerate() {
                crate::agent::render(arg, &vars)
                    .map_err(|m| Error::config(format!("agents.{role}.argv[{i}]"), m))?;
            }
            crate::agent::render(&a.prompt, &vars)
                .map_err(|m| Error::config(format!("agents.{role}.prompt"), m))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.projects.iter().enumerate() {
            let k = |f: &str| format!("projects[{i}].{f}");
            let valid_name = !p.name.is_empty()
                && p.name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(Error::config(
                    k("name"),
                    format!("{:?} must match [A-Za-z0-9][A-Za-z0-9_-]*", p.name),
                ));
            }
            if !seen.insert(p.name.clone()) {
                return Err(Error::config(
                    k("name"),
                    format!("duplicate project {:?}", p.name),
                ));
            }
            if !matches!(p.tracker.as_str(), "local" | "plane") {
                return Err(Error::config(
                    k("tracker"),
                    format!("{:?}: expected local or plane", p.tracker),
                ));
            }
            if !matches!(p.forge.as_str(), "local" | "gitea") {
                return Err(Error::config(
                    k("forge"),
                    format!("{:?}: expected local or gitea", p.forge),
                ));
            }
            if p.clone_url.trim().is_empty() {
                return Err(Error::config(k("clone_url"), "must not be empty"));
            }
            if p.test_command.is_empty() {
                return Err(Error::config(k("test_command"), "must name a program"));
            }
            if !crate::adapters::gitea::MERGE_STYLES.contains(&p.merge_style.as_str()) {
                return Err(Error::config(
                    k("merge_style"),
                    format!(
                        "{:?}: expected one of {}",
                        p.merge_style,
                        crate::adapters::gitea::MERGE_STYLES.join(", ")
                    ),
                ));
            }
            if p.forge == "gitea" && p.repo.split('/').filter(|s| !s.is_empty()).count() != 2 {
                return Err(Error::config(
                    k("repo"),
                    format!("{:?}: expected owner/name when forge = \"gitea\"", p.repo),
                ));
            }
            if p.tracker == "plane" && p.tracker_project_id.is_empty() {
                return Err(Error::config(
                    k("tracker_project_id"),
                    "required when tracker = \"plane\"",
                ));
            }
        }
        Ok(())
    }

    /// The project named `name`.
    pub fn project(&self, name: &str) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.name == name)
    }

    /// The project whose tracker project id is `id`.
    pub fn project_by_tracker_id(&self, id: &str) -> Option<&ProjectConfig> {
        self.projects
            .iter()
            .find(|p| !id.is_empty() && p.tracker_project_id == id)
    }

    /// The agent for `role`: its own entry, else `default`.
    ///
    /// Errors: [`Error::Config`] when neither exists.
    pub fn agent(&self, role: &str) -> Result<&AgentConfig, Error> {
        self.agents
            .get(role)
            .or_else(|| self.agents.get("default"))
            .ok_or_else(|| {
                Error::config(
                    format!("agents.{role}"),
                    "no agent configured for this role and no agents.default",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::load(&env(&[("ORCH_STATE_DIR", "/tmp/x")]), None, None).unwrap();
        assert_eq!(s.db_path, PathBuf::from("/tmp/x/orch.db"));
        assert_eq!(s.max_concurrency, 2);
        assert_eq!(s.max_developer_retries, 3);
        let s = Settings::load(&env(&[("ORCH_DB", "/a.db")]), Some("/b.db".into()), None).unwrap();
        assert_eq!(s.db_path, PathBuf::from("/b.db"));
    }

    #[test]
    fn bad_number_names_the_key() {
        let e = Settings::load(&env(&[("ORCH_MAX_CONCURRENCY", "lots")]), None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config: ORCH_MAX_CONCURRENCY: expected a whole number >= 1, got \"lots\""
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Settings::load(
            &env(&[("ORCH_PLANE_WEBHOOK_SECRET", "hunter2")]),
            None,
            None,
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.plane_webhook_secret.unwrap().expose(), "hunter2");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = Config::parse(
            "[[projects]]\nname = \"bad name\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("projects[0].name"), "{e}");
        let e = Config::parse("[agents.wizard]\nargv = [\"x\"]\n").unwrap_err();
        assert!(e.to_string().contains("agents.wizard"), "{e}");
        let e = Config::parse("[agents.default]\nargv = [\"x\", \"{nope}\"]\n").unwrap_err();
        assert!(e.to_string().contains("agents.default.argv[1]"), "{e}");
        let e = Config::parse("[[projects]]\nnme = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("nme"), "{e}");
    }
}
