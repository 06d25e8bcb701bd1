//! The `ORCH_*` environment: [`Settings`], the settings file loaded before
//! it, the `setting_*` readers and the list of known keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::error::Error;
use crate::model::Stage;

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

/// Where `scripts/install` puts the settings (root:orch 0640) that the
/// units read (`EnvironmentFile=`) and the CLI reads too
/// ([`load_settings_file`]).
pub const INSTALLED_SETTINGS_FILE: &str = "/etc/orch/orch.env";

/// Where `scripts/install` puts the secrets (root:root 0600): systemd
/// reads them for the units; orch never opens the file.
pub const INSTALLED_SECRETS_FILE: &str = "/etc/orch/secrets.env";

/// The settings file [`load_settings_file`] read, and why one was not
/// read when it should have been.
#[derive(Debug, Default)]
pub struct SettingsFile {
    /// The file whose variables were added (those not already set).
    pub path: Option<PathBuf>,
    /// A file that exists but could not be read or parsed: one line for
    /// the log (the settings then come from the environment alone).
    pub problem: Option<String>,
}

/// Loads the one settings file below the environment (a variable already
/// set wins over the file), in this order, the first found only:
/// 1. `.env` in the working directory or a folder above it (a try-out,
///    test or staging instance's own settings);
/// 2. `ORCH_ENV_FILE`, default [`INSTALLED_SETTINGS_FILE`] — what the
///    installed units read, so `sudo -u orch orch status` finds the same
///    database and config with nothing typed. `ORCH_ENV_FILE=` (empty)
///    reads no file; a missing default file is no problem, a missing
///    `ORCH_ENV_FILE` is.
///
/// Only one file is read: a `.env` instance never inherits the installed
/// instance's paths. Call while the process is single-threaded (it sets
/// environment variables).
pub fn load_settings_file() -> SettingsFile {
    match dotenvy::dotenv() {
        Ok(path) => {
            return SettingsFile {
                path: Some(path),
                problem: None,
            }
        }
        Err(e) if !e.not_found() => {
            return SettingsFile {
                path: None,
                problem: Some(format!("ignoring .env: {e}")),
            }
        }
        Err(_) => {}
    }
    let (path, explicit) = match std::env::var_os("ORCH_ENV_FILE") {
        Some(v) if v.is_empty() => return SettingsFile::default(),
        Some(v) => (PathBuf::from(v), true),
        None => (PathBuf::from(INSTALLED_SETTINGS_FILE), false),
    };
    match dotenvy::from_path(&path) {
        Ok(()) => SettingsFile {
            path: Some(path),
            problem: None,
        },
        Err(e) if e.not_found() && !explicit => SettingsFile::default(),
        Err(e) => {
            let denied = matches!(&e, dotenvy::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied);
            SettingsFile {
                path: None,
                problem: Some(format!(
                    "ignoring the settings file {}: {e}{}",
                    path.display(),
                    if denied {
                        " (it is root:orch 0640: run as the orch user, e.g. `sudo -u orch orch …`, or as a member of group orch)"
                    } else {
                        ""
                    }
                )),
            }
        }
    }
}

/// Whether a setting holds a secret (`…_SECRET`, `…_TOKEN`, `…_API_KEY`):
/// its value is never printed, and orch drops it from its environment once
/// read. (`ORCH_BUDGET_DAY_TOKENS` is a number, not a secret.)
pub fn is_secret(key: &str) -> bool {
    ["_SECRET", "_TOKEN", "_API_KEY"]
        .iter()
        .any(|s| key.ends_with(s))
}

/// What to tell an operator whose command needs the secret `key` and
/// lacks it: where it lives on an installed host and how to run a command
/// with it without making the file readable to the orch user (and so to
/// agents). Empty for a key that is not a secret.
pub fn missing_secret_hint(key: &str) -> String {
    if !is_secret(key) {
        return String::new();
    }
    format!(
        "; {key} is a secret: on an installed host it belongs in {INSTALLED_SECRETS_FILE} \
         (root only, read by systemd for the units); to run a command by hand with it: \
         sudo systemd-run --quiet --pipe --wait --collect -p User=orch \
         -p EnvironmentFile={INSTALLED_SECRETS_FILE} orch <command>"
    )
}

/// Runtime settings from `ORCH_*` environment variables. Durations carry
/// their unit in the field name (`_s` seconds, `_ms` milliseconds).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ORCH_STATE_DIR` (default `./orch-state`): logs, locks, repos, worktrees.
    pub state_dir: PathBuf,
    /// `ORCH_DB` (default `<state_dir>/orch.db`): the SQLite database file,
    /// or a PostgreSQL URL (`postgres://…`; `db::postgres_url` reads it).
    pub db_path: PathBuf,
    /// `ORCH_CONFIG` (default `./orch.toml`; a missing default file means
    /// no projects): the TOML registry of projects and agents.
    pub config_path: PathBuf,
    /// Whether `config_path` was given explicitly (then it must exist).
    pub config_explicit: bool,
    /// `ORCH_MAX_CONCURRENCY` (default 2): running jobs across all workers.
    pub max_concurrency: u32,
    /// `ORCH_MAX_CONCURRENCY_<ROLE>` (e.g. `ORCH_MAX_CONCURRENCY_DEVELOPER`;
    /// unset: only the global limit): running jobs of one role across all
    /// workers. 0 stops the role's dispatch.
    pub max_concurrency_by_role: BTreeMap<String, u32>,
    /// `ORCH_MAX_DEVELOPER_RETRIES` (default 3): returns to development
    /// after which the task is escalated.
    pub max_developer_retries: u32,
    /// `ORCH_JOB_MAX_ATTEMPTS` (default 3): runs of one job before it fails
    /// for good and the task is escalated.
    pub job_max_attempts: u32,
    /// `ORCH_FINALIZE_MAX_ATTEMPTS` (default 5): failed finalizes (commit,
    /// push, CI launch, worktree set-up after the agent exited) of one job
    /// attempt before the job fails and the task is escalated.
    pub finalize_max_attempts: u32,
    /// `ORCH_JOB_BACKOFF_S` (default 30): base delay before a retried job
    /// runs again; doubles per attempt.
    pub job_backoff_s: u64,
    /// `ORCH_BUDGET_DAY_USD` (unset: none): dollars all agent runs may
    /// cost per UTC day.
    pub budget_day_usd: Option<f64>,
    /// `ORCH_BUDGET_TASK_USD` (unset: none): dollars the runs of one task
    /// may cost in all.
    pub budget_task_usd: Option<f64>,
    /// `ORCH_BUDGET_RUN_USD` (unset: none): dollars one stage run may
    /// cost; handed to agents in `{budget_left}` (for `--max-budget-usd`).
    pub budget_run_usd: Option<f64>,
    /// `ORCH_BUDGET_RESERVE_USD` (default 0.5): what a job is expected to
    /// cost when its role has no recorded runs yet (else the median of the
    /// role's last 20 runs).
    pub budget_reserve_usd: f64,
    /// `ORCH_BUDGET_DAY_TOKENS` (unset: none): tokens (input + output +
    /// cache read + cache creation) all agent runs may use per UTC day.
    pub budget_day_tokens: Option<u64>,
    /// `ORCH_BUDGET_TASK_TOKENS` (unset: none): tokens the runs of one
    /// task may use in all.
    pub budget_task_tokens: Option<u64>,
    /// `ORCH_BUDGET_RUN_TOKENS` (unset: none): tokens one stage run may use.
    pub budget_run_tokens: Option<u64>,
    /// `ORCH_BUDGET_RESERVE_TOKENS` (default 50000): what a job is
    /// expected to use when its role has no recorded runs yet (else the
    /// median of the role's last 20 runs).
    pub budget_reserve_tokens: u64,
    /// `ORCH_LIMIT_BACKOFF_S` (default 60): how long an agent account's
    /// dispatch pauses after a rate limit (or a usage limit without a reset
    /// time); doubles per limit hit since its last clean run, up to 64×.
    pub limit_backoff_s: u64,
    /// `ORCH_PLANE_WEBHOOK_SECRET`: HMAC secret of the Plane webhook.
    pub plane_webhook_secret: Option<Secret>,
    /// `ORCH_GITEA_WEBHOOK_SECRET`: HMAC secret of the Gitea webhook.
    pub gitea_webhook_secret: Option<Secret>,
    /// `ORCH_BIND` (default `127.0.0.1:8500`): address of `orch serve`.
    pub bind: String,
    /// `ORCH_ADMIN_BIND` (default: the Unix socket `<state_dir>/admin.sock`;
    /// set but empty turns it off): where `orch serve`'s admin listener
    /// (`GET /queue`, `GET /metrics`, `GET /healthz`) listens, kept off the
    /// webhook port. See [`AdminBind`] for the syntax.
    pub admin_bind: Option<AdminBind>,
    /// `ORCH_ADMIN_TOKEN` (a secret; required when the admin listener is
    /// on TCP): every request to a TCP admin listener must carry
    /// `Authorization: Bearer <token>`.
    pub admin_token: Option<Secret>,
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
    /// `ORCH_WORKTREE_KEEP_S` (default 86400): how long after a task is
    /// done the reaper removes its worktree (the branch stays on the forge
    /// and in the clone); 0 keeps worktrees for ever.
    pub worktree_keep_s: u64,
    /// `ORCH_RECONCILE_ENABLED` (default true): kill switch of `orch reconcile`.
    pub reconcile_enabled: bool,
    /// `ORCH_RECONCILE_GRACE_S` (default 300): a task must be unchanged this
    /// long before reconcile evaluates its gate; per stage
    /// `ORCH_RECONCILE_GRACE_<STAGE>_S` (e.g. `_DEVELOPMENT_S`,
    /// `_DEPLOY_STAGING_S`) overrides it (see [`Settings::grace_for_stage`]).
    pub reconcile_grace_s: u64,
    /// Per-stage overrides of `reconcile_grace_s`.
    pub reconcile_grace_by_stage: BTreeMap<Stage, u64>,
    /// `ORCH_RECONCILE_PLANE_ENABLED` (default true): the tracker side (F-2).
    pub reconcile_plane_enabled: bool,
    /// `ORCH_RECONCILE_SKIP_BLOCKED_ENABLED` (default true): the networked
    /// guard (skip tasks the tracker shows Blocked or Needs Input).
    pub reconcile_skip_blocked_enabled: bool,
    /// Plane, Gitea and Telegram: URLs, tokens, timeouts, kill switches
    /// (see [`AdapterSettings`]).
    pub adapters: AdapterSettings,
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
    /// `ORCH_TICK_LEASE_TTL_S` (default 900): on a store shared between
    /// hosts a tick lock is the lease row `tick:<name>`; one whose holder
    /// died is free again after this long (and `orch reap` releases it).
    pub tick_lease_ttl_s: u64,
    /// `ORCH_STAGING_CHECK_INFRA_BACKOFF_S` (default 30; the deprecated
    /// `ORCH_MERGE_GATE_DEFER_S` is still read, with a warning): delay
    /// before the staging check of a task whose last check answered INFRA
    /// runs again; doubles per answer, up to 16×.
    pub staging_infra_backoff_s: u64,
    /// `ORCH_STAGING_CHECK_MAX_INFRA` (default 24; the deprecated
    /// `ORCH_MERGE_GATE_MAX_DEFERS` is still read, with a warning): INFRA
    /// answers of one task's staging check after which the next escalates
    /// the task.
    pub staging_max_infra: u32,
    /// `ORCH_MERGE_LINE_BATCH_MIN` (default 1) and
    /// `ORCH_MERGE_LINE_BATCH_MAX` (default 8, at least the minimum): the
    /// merge line's batch size `k` is the backlog of ready tasks of a repo
    /// clamped to `[min, max]` (and never more than the backlog). 1 and 1:
    /// the serial gate, one task caught up, tested and merged at a time.
    pub merge_line_batch_min: u32,
    pub merge_line_batch_max: u32,
    /// `ORCH_MERGE_LINE_MAX_SPLITS` (default 6): test runs a red batch's
    /// bisection may take; the suspects left when it runs out go through
    /// the line one at a time.
    pub merge_line_max_splits: u32,
    /// `ORCH_MERGE_LINE_RETRY_RED` (default true): a red batch tip is run
    /// once more before blame (the flaky guard; counted).
    pub merge_line_retry_red: bool,
    /// `ORCH_AGENT_SANDBOX` (`bwrap` or `none`; unset: `bwrap` when
    /// bubblewrap works here, else `none` with a warning): how agents and
    /// the projects' test commands run.
    pub agent_sandbox: AgentSandbox,
    /// `ORCH_AGENT_SANDBOX_WRITABLE` (`:`-separated absolute paths): extra
    /// paths a sandboxed agent may write. Unset: the Claude Code CLI's
    /// login and state — `$CLAUDE_CONFIG_DIR` when set (the installed
    /// worker sets it: the CLI then keeps `.claude.json` in that folder
    /// too), else `$HOME/.claude` and `$HOME/.claude.json` (the sandbox
    /// binds only those that exist); set but empty: none.
    pub agent_sandbox_writable: Vec<PathBuf>,
    /// `ORCH_AGENT_SANDBOX_HIDE` (`:`-separated absolute paths): paths a
    /// sandboxed agent or test command must not see (a file reads as
    /// empty, a folder is an empty tmpfs), on top of orch's state, the
    /// database, `.env`, `/etc/orch/secrets.env` and
    /// `$CREDENTIALS_DIRECTORY`, which are always hidden.
    pub agent_sandbox_hide: Vec<PathBuf>,
    /// `ORCH_AGENT_RUNNER` (`auto`, `child`, `supervisor`, `systemd`;
    /// default `auto`): how an agent run is started (DESIGN §4 "Detached
    /// runs").
    pub agent_runner: AgentRunner,
}

/// The value of `ORCH_AGENT_RUNNER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRunner {
    /// Unset or `auto`: `systemd` where its probe passes, else
    /// `supervisor`.
    Auto,
    /// `child`: the agent is the worker's child and dies with it
    /// (SIGTERM to the worker stops it and requeues the job); for the demo
    /// and tests.
    Child,
    /// `supervisor`: orch's own supervisor, in a session of its own,
    /// outlives every orch process.
    Supervisor,
    /// `systemd`: a transient systemd unit per run.
    Systemd,
}

/// The value of `ORCH_AGENT_SANDBOX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSandbox {
    /// Unset: bubblewrap when it works on this machine, else none (WARN).
    Auto,
    /// `bwrap`: bubblewrap, required (an agent does not run without it).
    Bwrap,
    /// `none`: agents run as orch, in their own process group.
    None,
}

/// A `:`-separated list of absolute paths (empty items skipped; unset:
/// none), e.g. `ORCH_AGENT_SANDBOX_WRITABLE`.
///
/// Errors: [`Error::Config`] naming `key` and the first relative path.
fn absolute_paths(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Vec<PathBuf>, Error> {
    let Some(v) = get(key) else {
        return Ok(Vec::new());
    };
    let paths: Vec<PathBuf> = v
        .split(':')
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from)
        .collect();
    match paths.iter().find(|p| !p.is_absolute()) {
        Some(p) => Err(Error::config(
            key,
            format!("{}: expected an absolute path", p.display()),
        )),
        None => Ok(paths),
    }
}

/// The default of `ORCH_AGENT_SANDBOX_WRITABLE`: the Claude Code CLI's
/// login and state, so a sandboxed agent stays logged in and can refresh
/// its token: the folder `config_dir` (`$CLAUDE_CONFIG_DIR`) alone when it
/// is absolute — the CLI keeps `.claude.json` in it, and a folder bind
/// lets it replace that file by rename, which a file bind refuses (EBUSY)
/// — else `home` (`$HOME`)'s `.claude` and `.claude.json`. None without
/// an absolute path.
fn agent_login_paths(config_dir: Option<String>, home: Option<String>) -> Vec<PathBuf> {
    if let Some(d) = config_dir.map(PathBuf::from).filter(|d| d.is_absolute()) {
        return vec![d];
    }
    match home.map(PathBuf::from) {
        Some(h) if h.is_absolute() => vec![h.join(".claude"), h.join(".claude.json")],
        _ => Vec::new(),
    }
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
        // Absolute from here on: every path handed to an agent (which runs
        // in a worktree, not in orch's directory) derives from it.
        let state_dir = PathBuf::from(get("ORCH_STATE_DIR").unwrap_or_else(|| "orch-state".into()));
        let state_dir = std::path::absolute(&state_dir).map_err(|e| {
            Error::config(
                "ORCH_STATE_DIR",
                format!("cannot make {} absolute: {e}", state_dir.display()),
            )
        })?;
        let db_path = db
            .or_else(|| get("ORCH_DB").map(PathBuf::from))
            .unwrap_or_else(|| state_dir.join("orch.db"));
        let (config_path, config_explicit) =
            match config.or_else(|| get("ORCH_CONFIG").map(PathBuf::from)) {
                Some(p) => (p, true),
                None => (PathBuf::from("orch.toml"), false),
            };
        let num = |key: &str, default: u64, min: u64| setting_num(&get, key, default, min);
        let num32 = |key: &str, default: u32, min: u32| setting_u32(&get, key, default, min);
        let flag = |key: &str, default: bool| setting_flag(&get, key, default);
        // A renamed setting: the new key, else the old one (still read,
        // with a warning naming the new one).
        let renamed = |new: &'static str, old: &'static str| -> &'static str {
            if get(new).is_none() && get(old).is_some() {
                tracing::warn!(target: "config", "{old} is deprecated: set {new} instead (read {old} this time)");
                return old;
            }
            new
        };
        Ok(Settings {
            reconcile_enabled: flag("ORCH_RECONCILE_ENABLED", true)?,
            reconcile_grace_s: num("ORCH_RECONCILE_GRACE_S", 300, 0)?,
            reconcile_grace_by_stage: {
                let mut m = BTreeMap::new();
                // Analysis is a human gate and done has no gate: no grace.
                for stage in Stage::ALL
                    .into_iter()
                    .filter(|s| !matches!(s, Stage::Analysis | Stage::Done))
                {
                    let key = format!(
                        "ORCH_RECONCILE_GRACE_{}_S",
                        stage.as_str().to_ascii_uppercase().replace('-', "_")
                    );
                    if get(&key).is_some() {
                        m.insert(stage, num(&key, 0, 0)?);
                    }
                }
                m
            },
            reconcile_plane_enabled: flag("ORCH_RECONCILE_PLANE_ENABLED", true)?,
            reconcile_skip_blocked_enabled: flag("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", true)?,
            adapters: AdapterSettings::load(&get)?,
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
            tick_lease_ttl_s: num("ORCH_TICK_LEASE_TTL_S", 900, 1)?,
            staging_infra_backoff_s: num(
                renamed(
                    "ORCH_STAGING_CHECK_INFRA_BACKOFF_S",
                    "ORCH_MERGE_GATE_DEFER_S",
                ),
                30,
                0,
            )?,
            staging_max_infra: num32(
                renamed("ORCH_STAGING_CHECK_MAX_INFRA", "ORCH_MERGE_GATE_MAX_DEFERS"),
                24,
                0,
            )?,
            merge_line_batch_min: num32("ORCH_MERGE_LINE_BATCH_MIN", 1, 1)?,
            merge_line_batch_max: {
                let min = num32("ORCH_MERGE_LINE_BATCH_MIN", 1, 1)?;
                let max = num32("ORCH_MERGE_LINE_BATCH_MAX", 8.max(min), 1)?;
                if max < min {
                    return Err(Error::config(
                        "ORCH_MERGE_LINE_BATCH_MAX",
                        format!("{max} is below ORCH_MERGE_LINE_BATCH_MIN ({min})"),
                    ));
                }
                max
            },
            merge_line_max_splits: num32("ORCH_MERGE_LINE_MAX_SPLITS", 6, 0)?,
            merge_line_retry_red: flag("ORCH_MERGE_LINE_RETRY_RED", true)?,
            agent_sandbox: match get("ORCH_AGENT_SANDBOX").as_deref().map(str::trim) {
                None => AgentSandbox::Auto,
                Some("bwrap") => AgentSandbox::Bwrap,
                Some("none") => AgentSandbox::None,
                Some(other) => {
                    return Err(Error::config(
                        "ORCH_AGENT_SANDBOX",
                        format!("{other:?}: expected bwrap or none"),
                    ))
                }
            },
            agent_sandbox_writable: match lookup("ORCH_AGENT_SANDBOX_WRITABLE") {
                Some(_) => absolute_paths(&get, "ORCH_AGENT_SANDBOX_WRITABLE")?,
                None => agent_login_paths(lookup("CLAUDE_CONFIG_DIR"), lookup("HOME")),
            },
            agent_sandbox_hide: absolute_paths(&get, "ORCH_AGENT_SANDBOX_HIDE")?,
            agent_runner: match get("ORCH_AGENT_RUNNER").as_deref().map(str::trim) {
                None | Some("auto") => AgentRunner::Auto,
                Some("child") => AgentRunner::Child,
                Some("supervisor") => AgentRunner::Supervisor,
                Some("systemd") => AgentRunner::Systemd,
                Some(other) => {
                    return Err(Error::config(
                        "ORCH_AGENT_RUNNER",
                        format!("{other:?}: expected auto, child, supervisor or systemd"),
                    ))
                }
            },
            db_path,
            config_path,
            config_explicit,
            max_concurrency: num32("ORCH_MAX_CONCURRENCY", 2, 1)?,
            max_concurrency_by_role: {
                let mut m = BTreeMap::new();
                for role in ROLES {
                    let key = format!("ORCH_MAX_CONCURRENCY_{}", role.to_ascii_uppercase());
                    if get(&key).is_some() {
                        m.insert(role.to_string(), num32(&key, 0, 0)?);
                    }
                }
                m
            },
            max_developer_retries: num32("ORCH_MAX_DEVELOPER_RETRIES", 3, 1)?,
            job_max_attempts: num32("ORCH_JOB_MAX_ATTEMPTS", 3, 1)?,
            finalize_max_attempts: num32("ORCH_FINALIZE_MAX_ATTEMPTS", 5, 1)?,
            job_backoff_s: num("ORCH_JOB_BACKOFF_S", 30, 0)?,
            limit_backoff_s: num("ORCH_LIMIT_BACKOFF_S", 60, 1)?,
            budget_day_usd: setting_usd(&get, "ORCH_BUDGET_DAY_USD")?,
            budget_task_usd: setting_usd(&get, "ORCH_BUDGET_TASK_USD")?,
            budget_run_usd: setting_usd(&get, "ORCH_BUDGET_RUN_USD")?,
            budget_reserve_usd: setting_usd(&get, "ORCH_BUDGET_RESERVE_USD")?.unwrap_or(0.5),
            budget_day_tokens: setting_tokens(&get, "ORCH_BUDGET_DAY_TOKENS")?,
            budget_task_tokens: setting_tokens(&get, "ORCH_BUDGET_TASK_TOKENS")?,
            budget_run_tokens: setting_tokens(&get, "ORCH_BUDGET_RUN_TOKENS")?,
            budget_reserve_tokens: setting_num(&get, "ORCH_BUDGET_RESERVE_TOKENS", 50_000, 0)?,
            plane_webhook_secret: get("ORCH_PLANE_WEBHOOK_SECRET").map(Secret::new),
            gitea_webhook_secret: get("ORCH_GITEA_WEBHOOK_SECRET").map(Secret::new),
            bind: get("ORCH_BIND").unwrap_or_else(|| "127.0.0.1:8500".into()),
            // Read unfiltered: set but empty means off, unset the default.
            admin_token: get("ORCH_ADMIN_TOKEN").map(Secret::new),
            admin_bind: match lookup("ORCH_ADMIN_BIND") {
                None => Some(AdminBind::Socket(state_dir.join(ADMIN_SOCKET))),
                Some(b) => AdminBind::parse(&b).map_err(|e| Error::config("ORCH_ADMIN_BIND", e))?,
            },
            serve_threads: num("ORCH_SERVE_THREADS", 0, 0)? as usize,
            serve_read_timeout_ms: num("ORCH_SERVE_READ_TIMEOUT_MS", 10_000, 1)?,
            serve_header_timeout_ms: num("ORCH_SERVE_HEADER_TIMEOUT_MS", 5_000, 1)?,
            serve_max_connections: num("ORCH_SERVE_MAX_CONNECTIONS", 4096, 1)? as usize,
            serve_max_header_bytes: num("ORCH_SERVE_MAX_HEADER_BYTES", 65_536, 8192)? as usize,
            busy_timeout_ms: num("ORCH_BUSY_TIMEOUT_MS", 5_000, 0)?,
            inbox_max_attempts: num32("ORCH_INBOX_MAX_ATTEMPTS", 5, 1)?,
            outbox_max_attempts: num32("ORCH_OUTBOX_MAX_ATTEMPTS", 8, 1)?,
            agent_timeout_s: num("ORCH_AGENT_TIMEOUT_S", 3600, 1)?,
            kill_grace_s: num("ORCH_KILL_GRACE_S", 10, 0)?,
            heartbeat_s: num("ORCH_HEARTBEAT_S", 10, 1)?,
            heartbeat_stale_s: num("ORCH_HEARTBEAT_STALE_S", 120, 1)?,
            reaper_finalize_grace_s: num("ORCH_REAPER_FINALIZE_GRACE_S", 300, 0)?,
            worktree_keep_s: num("ORCH_WORKTREE_KEEP_S", 86_400, 0)?,
            state_dir,
        })
    }

    /// `grace_for_stage(stage)`: seconds a task at `stage` must be unchanged
    /// before reconcile evaluates its gate.
    pub fn grace_for_stage(&self, stage: Stage) -> u64 {
        self.reconcile_grace_by_stage
            .get(&stage)
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
    /// How long a PostgreSQL session may sit idle inside a transaction
    /// before the server ends it, in ms: half `ORCH_HEARTBEAT_STALE_S`, at
    /// most 60 s — so a stopped host's locks are gone before another
    /// host judges its jobs dead ([`crate::db::Db::set_idle_in_transaction_timeout`]).
    pub fn idle_in_transaction_ms(&self) -> u64 {
        (self.heartbeat_stale_s.saturating_mul(1000) / 2).clamp(1, 60_000)
    }
    /// `<state_dir>/worktrees`: one worktree per task.
    pub fn worktrees_dir(&self) -> PathBuf {
        self.state_dir.join("worktrees")
    }
    /// The folders `orch init` makes under the state directory (the
    /// directory itself first).
    pub fn state_dirs(&self) -> [PathBuf; 6] {
        [
            self.state_dir.clone(),
            self.locks_dir(),
            self.logs_dir(),
            self.repos_dir(),
            self.worktrees_dir(),
            self.verdicts_dir(),
        ]
    }
    /// `<state_dir>/clone-views/task-<id>`: the folder of the private views
    /// of the shared clone that sandboxed agents of task `task_id` work in,
    /// one per claim (`job<j>-e<e>` inside; DESIGN §4, §11 INV-10).
    pub fn clone_view_dir(&self, task_id: i64) -> PathBuf {
        self.state_dir
            .join("clone-views")
            .join(format!("task-{task_id}"))
    }
    /// `<state_dir>/verdicts`: where agents write their verdict files
    /// (outside the worktree, so a verdict is never committed).
    pub fn verdicts_dir(&self) -> PathBuf {
        self.state_dir.join("verdicts")
    }
    /// `<state_dir>/verdicts/job<job_id>-a<attempt>`: the one folder run
    /// `attempt` of job `job_id` may write (`{verdict_dir}`), so an
    /// `--add-dir {verdict_dir}` grants no other job's verdicts.
    pub fn job_verdict_dir(&self, job_id: i64, attempt: i64) -> PathBuf {
        self.verdicts_dir().join(format!("job{job_id}-a{attempt}"))
    }
}

/// Reads setting `key` through `get` as a whole number from `min` to
/// [`MAX_WHOLE`] ([`whole`]); `default` when unset.
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
        Some(v) => {
            whole(Number::parse(&v), min).map_err(|m| Error::config(key, format!("{m}, got {v:?}")))
        }
    }
}

/// [`setting_num`] for a setting held in a `u32` (a count of attempts,
/// of jobs).
///
/// Errors: [`Error::Config`] naming the key and the value, also when it
/// is above `u32::MAX`.
pub(crate) fn setting_u32(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    default: u32,
    min: u32,
) -> Result<u32, Error> {
    let n = setting_num(get, key, default.into(), min.into())?;
    u32::try_from(n).map_err(|_| {
        Error::config(
            key,
            format!("expected a whole number <= {}, got \"{n}\"", u32::MAX),
        )
    })
}

/// Reads setting `key` through `get` as a number of tokens (a whole
/// number >= 0); `None` when unset.
///
/// Errors: [`Error::Config`] naming the key and the value.
pub(crate) fn setting_tokens(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
) -> Result<Option<u64>, Error> {
    match get(key) {
        None => Ok(None),
        Some(_) => setting_num(get, key, 0, 0).map(Some),
    }
}

/// Reads setting `key` through `get` as an amount of US dollars
/// ([`amount`]: a finite number >= 0); `None` when unset.
///
/// Errors: [`Error::Config`] naming the key and the value.
pub(crate) fn setting_usd(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
) -> Result<Option<f64>, Error> {
    match get(key) {
        None => Ok(None),
        Some(v) => amount(Number::parse(&v))
            .map(Some)
            .map_err(|m| Error::config(key, format!("{m}, got {v:?}"))),
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

/// Every `ORCH_*` environment variable orch reads: the settings' keys
/// (found by loading [`Settings`] through a lookup that records each key
/// asked for, so the list never drifts from the code), the log keys, the
/// test clock, the host id, and the variables orch sets for its agents.
pub fn known_keys() -> std::collections::BTreeSet<String> {
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let record = |k: &str| {
        seen.borrow_mut().insert(k.to_string());
        None
    };
    let _ = Settings::load(&record, None, None);
    let mut keys = seen.into_inner();
    keys.extend(
        [
            "ORCH_LOG",
            "ORCH_LOG_FORMAT",
            // Read where a claim is made and judged (`process::host_id`).
            "ORCH_HOST_ID",
            "ORCH_ENV_FILE",
            "ORCH_TEST_CLOCK_OFFSET_MS",
            "ORCH_TEST_WALL_JUMP_MS",
            // Test builds: tick locks as lease rows on SQLite too
            // (`ctx::Ctx::tick_lock`).
            "ORCH_TICK_LOCKS",
            "ORCH_TASK_ID",
            "ORCH_STAGE",
            "ORCH_ROLE",
            "ORCH_JOB_ID",
            "ORCH_VERDICT_FILE",
        ]
        .map(String::from),
    );
    keys
}

/// The `ORCH_*` names among `names` that orch does not know, each with the
/// closest known key when one is near (a likely misspelling):
/// `[("ORCH_MAX_CONCURENCY", Some("ORCH_MAX_CONCURRENCY"))]`.
pub fn unknown_keys(names: impl IntoIterator<Item = String>) -> Vec<(String, Option<String>)> {
    let known = known_keys();
    let mut out: Vec<(String, Option<String>)> = names
        .into_iter()
        .filter(|n| n.starts_with("ORCH_") && !known.contains(n))
        .map(|n| {
            let near = known
                .iter()
                .map(|k| (edit_distance(&n, k), k))
                .filter(|(d, _)| *d <= 3)
                .min()
                .map(|(_, k)| k.clone());
            (n, near)
        })
        .collect();
    out.sort();
    out
}

/// Levenshtein distance between two ASCII-ish strings (by `char`).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_env as env;

    #[test]
    fn a_relative_state_dir_is_made_absolute() {
        let s = Settings::load(&env(&[("ORCH_STATE_DIR", "rel")]), None, None).unwrap();
        assert!(s.state_dir.is_absolute(), "{}", s.state_dir.display());
        assert!(s.state_dir.ends_with("rel"));
        assert!(s.db_path.is_absolute());
        assert_eq!(
            s.job_verdict_dir(7, 2),
            s.state_dir.join("verdicts").join("job7-a2")
        );
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
    fn reconcile_grace_per_stage_overrides_the_default() {
        let s = Settings::load(
            &env(&[
                ("ORCH_RECONCILE_GRACE_S", "60"),
                ("ORCH_RECONCILE_GRACE_DEPLOY_STAGING_S", "5"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.grace_for_stage(Stage::DeployStaging), 5);
        assert_eq!(s.grace_for_stage(Stage::Development), 60);
        let e = Settings::load(
            &env(&[("ORCH_RECONCILE_GRACE_REVIEW_S", "soon")]),
            None,
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("ORCH_RECONCILE_GRACE_REVIEW_S"),
            "{e}"
        );
    }

    #[test]
    fn every_number_setting_is_finite_whole_and_in_range() {
        let err = |k: &str, v: &str| {
            Settings::load(&env(&[(k, v)]), None, None)
                .unwrap_err()
                .to_string()
        };
        for v in ["nan", "NaN", "inf", "-inf", "-1", "1.5", "1e3", "lots"] {
            assert_eq!(
                err("ORCH_AGENT_TIMEOUT_S", v),
                format!("config: ORCH_AGENT_TIMEOUT_S: expected a whole number >= 1, got {v:?}")
            );
            assert_eq!(
                err("ORCH_BUDGET_RESERVE_TOKENS", v),
                format!(
                    "config: ORCH_BUDGET_RESERVE_TOKENS: expected a whole number >= 0, got {v:?}"
                )
            );
            assert!(err("ORCH_BUDGET_DAY_TOKENS", v).contains("ORCH_BUDGET_DAY_TOKENS"));
        }
        for v in ["nan", "inf", "-inf", "-1", "-0.01", "lots"] {
            assert_eq!(
                err("ORCH_BUDGET_DAY_USD", v),
                format!("config: ORCH_BUDGET_DAY_USD: expected a finite number >= 0, got {v:?}")
            );
        }
        // Too large to compute with: refused, not wrapped.
        assert_eq!(
            err("ORCH_HEARTBEAT_STALE_S", "18446744073709551615"),
            "config: ORCH_HEARTBEAT_STALE_S: expected a whole number <= 1000000000000, \
             got \"18446744073709551615\""
        );
        assert_eq!(
            err("ORCH_JOB_MAX_ATTEMPTS", "4294967296"),
            "config: ORCH_JOB_MAX_ATTEMPTS: expected a whole number <= 4294967295, \
             got \"4294967296\""
        );
        let ok = Settings::load(
            &env(&[
                ("ORCH_BUDGET_DAY_USD", "2"),
                ("ORCH_BUDGET_RUN_USD", " 0.25 "),
                ("ORCH_AGENT_TIMEOUT_S", "1000000000000"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(ok.budget_day_usd, Some(2.0));
        assert_eq!(ok.budget_run_usd, Some(0.25));
        assert_eq!(ok.agent_timeout_s, MAX_WHOLE);
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
    fn per_role_concurrency_is_read_by_role_and_a_bad_one_names_its_key() {
        let s = Settings::load(
            &env(&[
                ("ORCH_MAX_CONCURRENCY_DEVELOPER", "1"),
                ("ORCH_MAX_CONCURRENCY_REVIEWER", "0"),
            ]),
            None,
            None,
        )
        .unwrap();
        let want: BTreeMap<String, u32> = [("developer".into(), 1), ("reviewer".into(), 0)].into();
        assert_eq!(s.max_concurrency_by_role, want);
        let e =
            Settings::load(&env(&[("ORCH_MAX_CONCURRENCY_TESTER", "-1")]), None, None).unwrap_err();
        assert!(e.to_string().contains("ORCH_MAX_CONCURRENCY_TESTER"), "{e}");
    }

    #[test]
    fn budgets_are_dollars_and_a_bad_one_names_its_key() {
        let s = Settings::load(&env(&[("ORCH_BUDGET_DAY_USD", "12.5")]), None, None).unwrap();
        assert_eq!(
            (
                s.budget_day_usd,
                s.budget_task_usd,
                s.budget_run_usd,
                s.budget_reserve_usd
            ),
            (Some(12.5), None, None, 0.5)
        );
        for bad in ["-1", "lots", "NaN"] {
            let e = Settings::load(&env(&[("ORCH_BUDGET_TASK_USD", bad)]), None, None).unwrap_err();
            assert!(e.to_string().contains("ORCH_BUDGET_TASK_USD"), "{e}");
        }
        let s = Settings::load(&env(&[("ORCH_BUDGET_TASK_TOKENS", "80000")]), None, None).unwrap();
        assert_eq!(
            (
                s.budget_day_tokens,
                s.budget_task_tokens,
                s.budget_run_tokens,
                s.budget_reserve_tokens
            ),
            (None, Some(80_000), None, 50_000)
        );
        for bad in ["-1", "lots", "1.5"] {
            let e =
                Settings::load(&env(&[("ORCH_BUDGET_DAY_TOKENS", bad)]), None, None).unwrap_err();
            assert!(e.to_string().contains("ORCH_BUDGET_DAY_TOKENS"), "{e}");
        }
    }

    #[test]
    fn sandbox_path_lists_must_be_absolute() {
        for key in ["ORCH_AGENT_SANDBOX_WRITABLE", "ORCH_AGENT_SANDBOX_HIDE"] {
            let e = Settings::load(&env(&[(key, "/a:rel/b")]), None, None).unwrap_err();
            assert!(
                e.to_string().contains(key) && e.to_string().contains("rel/b"),
                "{e}"
            );
        }
        let s = Settings::load(
            &env(&[("ORCH_AGENT_SANDBOX_HIDE", "/etc/x.env::/srv/keys")]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            s.agent_sandbox_hide,
            [PathBuf::from("/etc/x.env"), PathBuf::from("/srv/keys")]
        );
        assert!(s.agent_sandbox_writable.is_empty());
    }

    #[test]
    fn the_agent_login_is_writable_unless_the_setting_says_otherwise() {
        let s = Settings::load(&env(&[("HOME", "/var/lib/orch/home")]), None, None).unwrap();
        assert_eq!(
            s.agent_sandbox_writable,
            [
                PathBuf::from("/var/lib/orch/home/.claude"),
                PathBuf::from("/var/lib/orch/home/.claude.json")
            ]
        );
        let s = Settings::load(
            &env(&[
                ("HOME", "/var/lib/orch/home"),
                ("ORCH_AGENT_SANDBOX_WRITABLE", ""),
            ]),
            None,
            None,
        )
        .unwrap();
        assert!(s.agent_sandbox_writable.is_empty(), "set but empty: none");
        let s = Settings::load(
            &env(&[
                ("HOME", "/var/lib/orch/home"),
                ("ORCH_AGENT_SANDBOX_WRITABLE", "/srv/cache"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.agent_sandbox_writable, [PathBuf::from("/srv/cache")]);
        let s = Settings::load(&env(&[("HOME", "relative")]), None, None).unwrap();
        assert!(s.agent_sandbox_writable.is_empty());
        let s = Settings::load(
            &env(&[
                ("HOME", "/var/lib/orch/home"),
                ("CLAUDE_CONFIG_DIR", "/var/lib/orch/home/.claude"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            s.agent_sandbox_writable,
            [PathBuf::from("/var/lib/orch/home/.claude")]
        );
    }

    #[test]
    fn a_missing_secret_says_where_it_lives_and_how_to_run_with_it() {
        let hint = missing_secret_hint("ORCH_PLANE_API_KEY");
        assert!(hint.contains("/etc/orch/secrets.env"), "{hint}");
        assert!(
            hint.contains("systemd-run") && hint.contains("EnvironmentFile=/etc/orch/secrets.env"),
            "{hint}"
        );
        assert_eq!(missing_secret_hint("ORCH_PLANE_WORKSPACE"), "");
        assert!(!is_secret("ORCH_BUDGET_DAY_TOKENS"));
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
}
