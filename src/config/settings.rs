//! The settings and the config file, in one file until it is split (see `mod.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// `ORCH_DB` (default `<state_dir>/orch.db`): the SQLite database file.
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
    /// `ORCH_MERGE_GATE_DEFER_S` (default 30): delay before a merge that
    /// found the lease busy is tried again; doubles per defer, up to 16×.
    pub merge_gate_defer_s: u64,
    /// `ORCH_MERGE_GATE_MAX_DEFERS` (default 24): defers of one job after
    /// which the next busy lease escalates the task.
    pub merge_gate_max_defers: u32,
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
}

/// The admin listener's socket file in the state directory, when
/// `ORCH_ADMIN_BIND` is unset.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Where `orch serve`'s admin listener listens (`ORCH_ADMIN_BIND`).
///
/// Syntax: unset is the Unix socket `<state_dir>/admin.sock` (hidden from
/// agents with the rest of the state directory); set but empty (or
/// blank) is no admin listener; `unix:/abs/path` or an absolute path
/// `/abs/path` is a Unix socket there; `IP:PORT` (`127.0.0.1:8501`,
/// `[::1]:8501`) is TCP, which `orch serve` only starts with
/// `ORCH_ADMIN_TOKEN` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBind {
    /// A Unix socket at this absolute path (mode 0660).
    Socket(PathBuf),
    /// TCP on this address; every request needs the bearer token.
    Tcp(std::net::SocketAddr),
}

impl AdminBind {
    /// Parses an `ORCH_ADMIN_BIND` value (surrounding blanks ignored):
    /// `Ok(None)` for a blank one (off).
    ///
    /// Errors (the message to show after the key): a relative or empty
    /// socket path, or a value that is neither a path nor `IP:PORT`.
    pub fn parse(value: &str) -> Result<Option<AdminBind>, String> {
        let v = value.trim();
        if v.is_empty() {
            return Ok(None);
        }
        if let Some(path) = v.strip_prefix("unix:").or(v.starts_with('/').then_some(v)) {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{v:?}: a Unix socket needs an absolute path (unix:/path/admin.sock)"
                ));
            }
            if path.file_name().is_none() {
                return Err(format!("{v:?}: the socket path names no file"));
            }
            return Ok(Some(AdminBind::Socket(path)));
        }
        match v.parse::<std::net::SocketAddr>() {
            Ok(addr) => Ok(Some(AdminBind::Tcp(addr))),
            Err(_) => Err(format!(
                "{v:?} is neither IP:PORT (e.g. 127.0.0.1:8501) nor a Unix socket (unix:/abs/path or /abs/path); empty turns the admin listener off"
            )),
        }
    }
}

impl std::fmt::Display for AdminBind {
    /// The value in `ORCH_ADMIN_BIND`'s syntax (`unix:/path` or `IP:PORT`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminBind::Socket(p) => write!(f, "unix:{}", p.display()),
            AdminBind::Tcp(a) => write!(f, "{a}"),
        }
    }
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
            merge_gate_defer_s: num("ORCH_MERGE_GATE_DEFER_S", 30, 0)?,
            merge_gate_max_defers: num32("ORCH_MERGE_GATE_MAX_DEFERS", 24, 0)?,
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
    /// `<state_dir>/clone-views/task-<id>`: the private view of the shared
    /// clone a sandboxed agent of task `task_id` works in (DESIGN §4).
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

/// Settings of the outside adapters (`ORCH_*` environment variables), part
/// of [`Settings`]. Durations carry their unit in the name.
#[derive(Debug, Clone)]
pub struct AdapterSettings {
    /// `ORCH_GITEA_URL`: Gitea's root URL (`https://gitea.example.com`);
    /// the API is `<url>/api/v1`.
    pub gitea_url: Option<String>,
    /// `ORCH_GITEA_TOKEN`: access token (scopes `write:repository`,
    /// `write:issue`), sent as `Authorization: token …`.
    pub gitea_token: Option<Secret>,
    /// `ORCH_GITEA_PUBLIC_URL` (default `ORCH_GITEA_URL`): base of the
    /// branch, PR and commit links orch writes into comments.
    pub gitea_public_url: Option<String>,
    /// `ORCH_GITEA_CI_POLL_S` (default 20): how long the worker's finalize
    /// keeps polling the combined status of a fresh development head
    /// before leaving it to `status` deliveries and reconcile.
    pub gitea_ci_poll_s: u64,
    /// `ORCH_GITEA_CI_POLL_INTERVAL_MS` (default 2000): pause between polls.
    pub gitea_ci_poll_interval_ms: u64,
    /// `ORCH_PLANE_URL`: Plane's root URL; the API is `<url>/api/v1`.
    pub plane_url: Option<String>,
    /// `ORCH_PLANE_API_KEY`: personal access token, sent as `X-API-Key`.
    pub plane_api_key: Option<Secret>,
    /// `ORCH_PLANE_WORKSPACE`: the workspace slug (`acme`).
    pub plane_workspace: Option<String>,
    /// `ORCH_PLANE_PUBLIC_URL` (default `ORCH_PLANE_URL`): base of work
    /// item links in notifications.
    pub plane_public_url: Option<String>,
    /// `ORCH_PLANE_STATE_CACHE_S` (default 3600): age after which the
    /// cached Plane state ids of a project are fetched again.
    pub plane_state_cache_s: u64,
    /// `ORCH_NOTIFIER` (default `log`): `log` or `telegram`.
    pub notifier: NotifierKind,
    /// `ORCH_TELEGRAM_BOT_TOKEN`: the bot token (it is part of every URL).
    pub telegram_bot_token: Option<Secret>,
    /// `ORCH_TELEGRAM_CHAT_ID`: chat id (`-100…`) or `@channelname`.
    pub telegram_chat_id: Option<String>,
    /// `ORCH_TELEGRAM_API_URL` (default `https://api.telegram.org`).
    pub telegram_api_url: String,
    /// `ORCH_HTTP_CONNECT_TIMEOUT_MS` (default 5000): TCP/TLS connect limit.
    pub http_connect_timeout_ms: u64,
    /// `ORCH_HTTP_TIMEOUT_MS` (default 30000): limit for one whole call.
    pub http_timeout_ms: u64,
    /// `ORCH_HTTP_MAX_WAIT_S` (default 10): the longest a synchronous
    /// caller (a listing, the CI poll) sleeps for a rate limit before it
    /// gives up with the retryable error.
    pub http_max_wait_s: u64,
    /// `ORCH_TRACKER_ENABLED` (default true): kill switch of the Plane
    /// adapter; when off, tracker messages wait in the outbox.
    pub tracker_enabled: bool,
    /// `ORCH_FORGE_ENABLED` (default true): kill switch of the Gitea
    /// adapter; when off, forge messages wait, the CI poll is skipped and
    /// merges wait.
    pub forge_enabled: bool,
    /// `ORCH_NOTIFY_ENABLED` (default true): kill switch of the Telegram
    /// notifier; when off, notifications wait in the outbox.
    pub notify_enabled: bool,
}

impl AdapterSettings {
    /// Reads the adapter settings through `get` (blank values count as
    /// unset).
    ///
    /// Errors: [`Error::Config`] naming the first key with a bad value.
    pub fn load(get: &dyn Fn(&str) -> Option<String>) -> Result<AdapterSettings, Error> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let num = |key: &str, default: u64, min: u64| setting_num(&get, key, default, min);
        let flag = |key: &str, default: bool| setting_flag(&get, key, default);
        let url = |key: &str| -> Result<Option<String>, Error> {
            match get(key) {
                None => Ok(None),
                Some(v) if v.starts_with("http://") || v.starts_with("https://") => {
                    Ok(Some(v.trim_end_matches('/').to_string()))
                }
                Some(v) => Err(Error::config(
                    key,
                    format!("expected an http:// or https:// URL, got {v:?}"),
                )),
            }
        };
        let notifier = match get("ORCH_NOTIFIER") {
            None => NotifierKind::Log,
            Some(v) => v.parse().map_err(|m| Error::config("ORCH_NOTIFIER", m))?,
        };
        let gitea_url = url("ORCH_GITEA_URL")?;
        let plane_url = url("ORCH_PLANE_URL")?;
        Ok(AdapterSettings {
            gitea_public_url: url("ORCH_GITEA_PUBLIC_URL")?.or_else(|| gitea_url.clone()),
            gitea_url,
            gitea_token: get("ORCH_GITEA_TOKEN").map(Secret::new),
            gitea_ci_poll_s: num("ORCH_GITEA_CI_POLL_S", 20, 0)?,
            gitea_ci_poll_interval_ms: num("ORCH_GITEA_CI_POLL_INTERVAL_MS", 2000, 10)?,
            plane_public_url: url("ORCH_PLANE_PUBLIC_URL")?.or_else(|| plane_url.clone()),
            plane_url,
            plane_api_key: get("ORCH_PLANE_API_KEY").map(Secret::new),
            plane_workspace: get("ORCH_PLANE_WORKSPACE"),
            plane_state_cache_s: num("ORCH_PLANE_STATE_CACHE_S", 3600, 0)?,
            notifier,
            telegram_bot_token: get("ORCH_TELEGRAM_BOT_TOKEN").map(Secret::new),
            telegram_chat_id: get("ORCH_TELEGRAM_CHAT_ID"),
            telegram_api_url: url("ORCH_TELEGRAM_API_URL")?
                .unwrap_or_else(|| "https://api.telegram.org".into()),
            http_connect_timeout_ms: num("ORCH_HTTP_CONNECT_TIMEOUT_MS", 5000, 1)?,
            http_timeout_ms: num("ORCH_HTTP_TIMEOUT_MS", 30_000, 1)?,
            http_max_wait_s: num("ORCH_HTTP_MAX_WAIT_S", 10, 0)?,
            tracker_enabled: flag("ORCH_TRACKER_ENABLED", true)?,
            forge_enabled: flag("ORCH_FORGE_ENABLED", true)?,
            notify_enabled: flag("ORCH_NOTIFY_ENABLED", true)?,
        })
    }
}

/// The largest whole number a setting or a config value may hold: 10^12
/// (seconds of some 31 000 years; as milliseconds it still leaves the
/// unix-ms arithmetic of `i64` room).
pub const MAX_WHOLE: u64 = 1_000_000_000_000;

/// A number as written in a setting or in the config file, before the
/// one rule ([`whole`], [`amount`]) judges it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    /// An integer (`-1`, `30`).
    Whole(i128),
    /// Anything else TOML or Rust reads as a float (`0.5`, `nan`, `inf`).
    Real(f64),
}

impl Number {
    /// `text` (trimmed) as a number: an integer, else a float (Rust's
    /// syntax: `nan`, `inf`, `1e3` included); `None` for anything else.
    fn parse(text: &str) -> Option<Number> {
        let t = text.trim();
        t.parse::<i128>()
            .map(Number::Whole)
            .or_else(|_| t.parse::<f64>().map(Number::Real))
            .ok()
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Whole(n) => write!(f, "{n}"),
            Number::Real(x) => write!(f, "{x}"),
        }
    }
}

/// The one rule for counts and durations (every `ORCH_*` whole-number
/// setting and every integer of the config file): a whole number from
/// `min` to [`MAX_WHOLE`].
///
/// Errors: what was expected (`expected a whole number >= 1`), for the
/// caller to key and to add what it got.
pub(crate) fn whole(n: Option<Number>, min: u64) -> Result<u64, String> {
    match n {
        Some(Number::Whole(v)) if v > MAX_WHOLE as i128 => {
            Err(format!("expected a whole number <= {MAX_WHOLE}"))
        }
        Some(Number::Whole(v)) if v >= min as i128 => Ok(v as u64),
        _ => Err(format!("expected a whole number >= {min}")),
    }
}

/// The one rule for amounts (budgets in US dollars, in settings and in
/// the config file): a finite number `>= 0` (`nan`, `inf` and negatives
/// are refused: any of them would silently disable a ceiling).
///
/// Errors: what was expected, for the caller to key and to add what it
/// got.
pub(crate) fn amount(n: Option<Number>) -> Result<f64, String> {
    let v = match n {
        Some(Number::Whole(v)) => v as f64,
        Some(Number::Real(v)) => v,
        None => f64::NAN,
    };
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("expected a finite number >= 0".into())
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

/// A number of the config file, any TOML integer or float, for the one
/// rule to judge (a string or table is a type error).
fn de_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Number;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
            Ok(Number::Whole(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
            Ok(Number::Whole(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
            Ok(Number::Real(v))
        }
    }
    d.deserialize_any(V)
}

/// `deserialize_with` of the config's whole numbers (counts, seconds):
/// [`whole`] with minimum 0 (a field's own minimum is checked in
/// [`Config::parse`]), in the field's integer type. The error (`expected
/// a whole number >= 0, got -1`) is keyed by the field's path.
fn de_whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error as _;
    let n = de_number(d)?;
    let v = whole(Some(n), 0).map_err(|m| D::Error::custom(format!("{m}, got {n}")))?;
    T::try_from(v).map_err(|_| D::Error::custom(format!("{n} is too large")))
}

/// [`de_whole`] for an optional field (`#[serde(default)]` makes it
/// `None` when absent).
fn de_whole_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    de_whole(d).map(Some)
}

/// `deserialize_with` of the config's optional amounts of US dollars:
/// [`amount`]. The error (`expected a finite number >= 0, got NaN`) is
/// keyed by the field's path.
fn de_amount_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    use serde::de::Error as _;
    let n = de_number(d)?;
    amount(Some(n))
        .map(Some)
        .map_err(|m| D::Error::custom(format!("{m}, got {n}")))
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
    /// Model prices by model name (`[prices."gpt-5.5"]`), for the cost of
    /// runs whose CLI reports tokens but no cost (Codex, Gemini): tokens ×
    /// price. A run whose CLI reports no cost and whose model has no price
    /// here has an unknown cost (it still counts toward token budgets).
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

/// Which agent CLI a role runs: it decides how orch reads the run's output
/// (tokens, cost, session id, final text, API errors, permission denials;
/// `agent::parse`). TOML spellings: `claude-code` (the default), `codex`,
/// `gemini`, `opencode`, `acp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// Claude Code: `claude -p --output-format json|stream-json`.
    #[default]
    ClaudeCode,
    /// OpenAI Codex CLI: `codex exec --json` (JSONL events).
    Codex,
    /// Google Gemini CLI: `gemini -p "" --output-format json|stream-json`.
    Gemini,
    /// OpenCode: `opencode run --format json`.
    Opencode,
    /// Any Agent Client Protocol agent over stdio, orch as the client.
    Acp,
}

impl AgentKind {
    /// Every kind, in documentation order.
    pub const ALL: [AgentKind; 5] = [
        AgentKind::ClaudeCode,
        AgentKind::Codex,
        AgentKind::Gemini,
        AgentKind::Opencode,
        AgentKind::Acp,
    ];

    /// The TOML spelling, e.g. `claude-code`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::ClaudeCode => "claude-code",
            AgentKind::Codex => "codex",
            AgentKind::Gemini => "gemini",
            AgentKind::Opencode => "opencode",
            AgentKind::Acp => "acp",
        }
    }
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AgentKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown agent kind {s:?}; expected one of {}",
                    AgentKind::ALL.map(AgentKind::as_str).join(", ")
                )
            })
    }
}

/// One model's price in US dollars per million tokens (`[prices."<model>"]`).
/// `cache_read_usd_per_mtok` and `cache_write_usd_per_mtok` default to
/// `input_usd_per_mtok`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input_usd_per_mtok: f64,
    /// Output tokens (reasoning/thinking tokens included).
    pub output_usd_per_mtok: f64,
    /// Input tokens read from the provider's prompt cache.
    #[serde(default)]
    pub cache_read_usd_per_mtok: Option<f64>,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_write_usd_per_mtok: Option<f64>,
}

impl Price {
    /// The cost in US dollars of `(uncached input, cache read, cache
    /// creation, output)` tokens at this price.
    pub fn cost_usd(&self, input: i64, cache_read: i64, cache_write: i64, output: i64) -> f64 {
        let m = |n: i64, p: f64| n as f64 * p / 1e6;
        m(input, self.input_usd_per_mtok)
            + m(
                cache_read,
                self.cache_read_usd_per_mtok
                    .unwrap_or(self.input_usd_per_mtok),
            )
            + m(
                cache_write,
                self.cache_write_usd_per_mtok
                    .unwrap_or(self.input_usd_per_mtok),
            )
            + m(output, self.output_usd_per_mtok)
    }
}

/// How to run one role's agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Which CLI this is (default `claude-code`): how orch reads its output.
    #[serde(default)]
    pub kind: AgentKind,
    /// The model this agent runs, for the price table when the CLI's
    /// output does not name it (Codex names none); optional.
    #[serde(default)]
    pub model: Option<String>,
    /// argv template (no shell); each element may use the prompt
    /// placeholders, e.g. `["claude", "-p", "--output-format", "json",
    /// "--add-dir", "{verdict_dir}"]`.
    pub argv: Vec<String>,
    /// Prompt template, fed on stdin; `None`: the role's built-in prompt
    /// ([`default_prompt`]). Placeholders: [`TEMPLATE_VARS`].
    #[serde(default)]
    pub prompt: Option<String>,
    /// On rework, hand the role's previous session id of this task
    /// to `{previous_session}` (for `--resume`). Default false: the
    /// placeholder is always empty, and an empty `{previous_session}`
    /// argument is dropped with the flag before it.
    #[serde(default)]
    pub resume: bool,
    /// Time limit in seconds, at least 1 (default `ORCH_AGENT_TIMEOUT_S`).
    #[serde(default, deserialize_with = "de_whole_opt")]
    pub timeout_s: Option<u64>,
    /// Extra environment for the agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The model account this agent runs on (default: the agent entry's
    /// key — the role, or `default`). Roles sharing an account pause
    /// together when it hits its usage or rate limit.
    #[serde(default)]
    pub account: Option<String>,
    /// ACP agents only: how the agent's permission requests are answered
    /// (`allow`, `deny`, `deny-writes-outside-worktree`; the default is
    /// the last).
    #[serde(default)]
    pub permissions: Option<Permissions>,
    /// ACP agents only: the `authenticate` method orch calls before the
    /// session, one of the agent's `authMethods` (e.g. `gemini-api-key`
    /// for `gemini --acp`); none: no `authenticate`.
    #[serde(default)]
    pub auth_method: Option<String>,
}

/// How an ACP agent's permission requests (`session/request_permission`,
/// [`crate::acp`]) are answered. TOML spellings: `allow`, `deny`,
/// `deny-writes-outside-worktree` (the default).
///
/// Whatever the answer, the files orch itself reads and writes for the
/// agent stay inside the worktree, and under the bubblewrap sandbox the
/// agent's own writes do too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permissions {
    /// Every request is allowed (once: the next one asks again).
    Allow,
    /// Every request is refused, each a recorded denial.
    Deny,
    /// A request to edit, delete or move (tool kinds `edit`, `delete`,
    /// `move`) is refused when a path it names (`locations`, a diff's
    /// `path`, `rawInput.path`/`file_path`) lies outside the worktree;
    /// everything else is allowed.
    #[default]
    DenyWritesOutsideWorktree,
}

impl Permissions {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Permissions::Allow => "allow",
            Permissions::Deny => "deny",
            Permissions::DenyWritesOutsideWorktree => "deny-writes-outside-worktree",
        }
    }
}

/// The opening of every built-in prompt: the work item and the ground rules.
const PROMPT_HEAD: &str = "You are the {role} of project {project}, run headless by orch at stage {stage} (attempt {attempt}) of work item {task_id}: {title}

{body}

Work item link: {tracker_link}

Your working directory is the git worktree {worktree}, on branch {branch}. orch commits and pushes what you change there when you finish: do not commit, push or switch branches yourself. The work item's folder is {work_dir}/ (relative to the worktree). The project's test command is: {test_command}

";

/// The feedback section of every built-in prompt.
const PROMPT_FEEDBACK: &str =
    "Feedback on earlier runs of this work item (act on it first; empty on a first run):
{feedback}

";

/// The closing of the built-in prompts of roles whose gate reads a verdict.
const PROMPT_VERDICT: &str = "Finish by writing your verdict as one JSON object {{\"verdict\": \"...\", \"summary\": \"...\"}} to {verdict_file}. At this stage the verdict is {verdicts}. The summary says why, in words the next agent can act on (what to change, which test fails).
";

/// Each role's job and what its gate checks.
fn role_brief(role: &str) -> &'static str {
    match role {
        "analyst" => "Your job: analyse the request. Write {work_dir}/analysis.md: the problem, what is in and out of scope, acceptance criteria, open questions. Do not change code. Gate: a person approves your analysis (or rejects it with a comment, and you run again).

",
        "architect" => "Your job: design the change. Read {work_dir}/analysis.md and the code. Write {work_dir}/design.md: the approach, the files to change, the tests to add. Do not change code. Gate: orch checks that {work_dir}/ exists at the branch head and that your run changed the branch (a run that changes nothing fails).

",
        "developer" => "Your job: implement the change described in {work_dir}/design.md and {work_dir}/analysis.md, with tests. Gate: your run must change the branch (a run that changes nothing fails), and the test command must pass on the branch head. If files hold conflict markers (<<<<<<<, =======, >>>>>>>), resolve them: orch refuses to commit a file that still holds them.

",
        "reviewer" => "Your job: review the change, the diff `git diff origin/{default_branch}...HEAD`, against {work_dir}/design.md and {work_dir}/analysis.md. Do not change files. Gate: your verdict; REQUEST_CHANGES sends the work back to the developer with your summary.

",
        "tester" => "Your job: test the change, the diff `git diff origin/{default_branch}...HEAD`: run the test command and check the acceptance criteria in {work_dir}/analysis.md. Do not change files. Gate: your verdict; FAIL sends the work back to the developer with your summary.

",
        _ => "Your job: decide whether the change is ready at stage {stage}. At deploy-staging orch merges the branch into {default_branch} after your pass, testing the combined tree first; at deploy, confirm that it is deployed. Do not change files. Gate: your verdict.

",
    }
}

/// The built-in prompt template of `role` (used when its agent entry sets
/// no `prompt`): the work item, the role's job and what its gate checks,
/// where earlier stages' outputs are, the test command, the feedback and,
/// for roles whose gate reads one, the verdict words and file.
pub fn default_prompt(role: &str) -> String {
    let verdict = match role {
        "reviewer" | "tester" | "deployer" => PROMPT_VERDICT,
        _ => "You write no verdict file at this stage.\n",
    };
    format!(
        "{PROMPT_HEAD}{}{PROMPT_FEEDBACK}{verdict}",
        role_brief(role)
    )
}

/// One project of the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Short key, `[A-Za-z0-9][A-Za-z0-9_-]*`; task branches are
    /// `orch/<name>-<sequence>`.
    pub name: String,
    /// `local` (work items from `orch issue add`) or `plane`.
    #[serde(default)]
    pub tracker: TrackerKind,
    /// The tracker's project id (Plane project UUID); Plane deliveries whose
    /// `data.project` matches belong to this project (also with the local
    /// tracker, which then receives orch's comments and state changes).
    #[serde(default)]
    pub tracker_project_id: String,
    /// `local` (a bare repository as origin; CI = `test_command`) or `gitea`.
    #[serde(default)]
    pub forge: ForgeKind,
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
    /// Test command timeout in seconds, at least 1 (default 600).
    #[serde(default = "default_test_timeout", deserialize_with = "de_whole")]
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
    pub state_names: StateNames,
    /// Gitea merge style of deploy-staging → deploy (`Do` of the merge
    /// API): `fast-forward-only` (default), `rebase`, `rebase-merge`,
    /// `merge` or `squash`.
    #[serde(default)]
    pub merge_style: MergeStyle,
    /// `[projects.staging]`: the staging instance of orch that validates
    /// this project's deploy-staging revisions (`orch staging-check`,
    /// DESIGN §8). Set: after the deployer's PASS, orch runs the suite
    /// itself before the merge gate.
    #[serde(default)]
    pub staging: Option<StagingConfig>,
    /// Running jobs of this project across all workers (unset: only the
    /// global and per-role limits). 0 stops the project's dispatch.
    #[serde(default, deserialize_with = "de_whole_opt")]
    pub max_concurrency: Option<u32>,
    /// Dollars this project's agent runs may cost per UTC day (unset:
    /// only `ORCH_BUDGET_DAY_USD`).
    #[serde(default, deserialize_with = "de_amount_opt")]
    pub budget_day_usd: Option<f64>,
    /// Tokens this project's agent runs may use per UTC day (unset: only
    /// `ORCH_BUDGET_DAY_TOKENS`).
    #[serde(default, deserialize_with = "de_whole_opt")]
    pub budget_day_tokens: Option<u64>,
}

/// `[projects.staging]`: where the project's staging instance of orch is,
/// for the deterministic deploy-staging gate (`orch staging-check`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagingConfig {
    /// The instance's shim, e.g. `http://127.0.0.1:8501`.
    pub url: String,
    /// The instance's database file (read; the suite's cleanup writes).
    pub db: PathBuf,
    /// The instance's config file.
    pub config: PathBuf,
    /// The sandbox project in the instance's config (default: its only
    /// project).
    #[serde(default)]
    pub project: Option<String>,
    /// Check ids whose INFRA does not hold the verdict back (`C9a`, …).
    #[serde(default)]
    pub waive: Vec<String>,
    /// How long to wait for the instance, in seconds (default 60).
    #[serde(default = "default_staging_timeout", deserialize_with = "de_whole")]
    pub timeout_s: u64,
    /// A `.env` file (the instance's) whose `ORCH_PLANE_WEBHOOK_SECRET`
    /// and `ORCH_GITEA_WEBHOOK_SECRET` sign the suite's deliveries;
    /// default: orch's own environment.
    #[serde(default)]
    pub env_file: Option<PathBuf>,
}

fn default_staging_timeout() -> u64 {
    60
}

/// The tracker states orch reads or sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    InProgress,
    Approved,
    Rejected,
    Blocked,
    NeedsInput,
    Done,
}

impl StateKind {
    /// Every kind.
    pub const ALL: [StateKind; 6] = [
        StateKind::InProgress,
        StateKind::Approved,
        StateKind::Rejected,
        StateKind::Blocked,
        StateKind::NeedsInput,
        StateKind::Done,
    ];

    /// The config key (`in_progress`, `needs_input`, …), also the value of
    /// a tracker `state` outbox message.
    pub fn key(self) -> &'static str {
        match self {
            StateKind::InProgress => "in_progress",
            StateKind::Approved => "approved",
            StateKind::Rejected => "rejected",
            StateKind::Blocked => "blocked",
            StateKind::NeedsInput => "needs_input",
            StateKind::Done => "done",
        }
    }

    /// The kind of a config key.
    pub fn from_key(key: &str) -> Option<StateKind> {
        StateKind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// The state's default name.
    pub fn default_name(self) -> &'static str {
        match self {
            StateKind::InProgress => "In Progress",
            StateKind::Approved => "Approved",
            StateKind::Rejected => "Rejected",
            StateKind::Blocked => "Blocked",
            StateKind::NeedsInput => "Needs Input",
            StateKind::Done => "Done",
        }
    }
}

/// `[projects.state_names]`: the tracker's names of the states orch reads
/// or sets; resolved to ids through the tracker's API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateNames {
    /// Entering it creates the task (default `In Progress`).
    #[serde(default = "n_in_progress")]
    pub in_progress: String,
    /// Entering it approves the analysis (default `Approved`).
    #[serde(default = "n_approved")]
    pub approved: String,
    /// Entering it reruns the analysis (default `Rejected`).
    #[serde(default = "n_rejected")]
    pub rejected: String,
    /// A human stopped the item (default `Blocked`).
    #[serde(default = "n_blocked")]
    pub blocked: String,
    /// orch escalated the item (default `Needs Input`).
    #[serde(default = "n_needs_input")]
    pub needs_input: String,
    /// The item is deployed (default `Done`).
    #[serde(default = "n_done")]
    pub done: String,
}

fn n_in_progress() -> String {
    StateKind::InProgress.default_name().into()
}
fn n_approved() -> String {
    StateKind::Approved.default_name().into()
}
fn n_rejected() -> String {
    StateKind::Rejected.default_name().into()
}
fn n_blocked() -> String {
    StateKind::Blocked.default_name().into()
}
fn n_needs_input() -> String {
    StateKind::NeedsInput.default_name().into()
}
fn n_done() -> String {
    StateKind::Done.default_name().into()
}

impl Default for StateNames {
    fn default() -> Self {
        StateNames {
            in_progress: n_in_progress(),
            approved: n_approved(),
            rejected: n_rejected(),
            blocked: n_blocked(),
            needs_input: n_needs_input(),
            done: n_done(),
        }
    }
}

impl StateNames {
    /// The configured name of `kind`.
    pub fn get(&self, kind: StateKind) -> &str {
        match kind {
            StateKind::InProgress => &self.in_progress,
            StateKind::Approved => &self.approved,
            StateKind::Rejected => &self.rejected,
            StateKind::Blocked => &self.blocked,
            StateKind::NeedsInput => &self.needs_input,
            StateKind::Done => &self.done,
        }
    }
}

/// Declares a service-choice enum spelled in the config as the given
/// strings, with `ALL`, `as_str`, `Display`, `FromStr` (error
/// `"<value>": expected …`, naming the accepted values) and
/// `Deserialize` through `FromStr`.
macro_rules! kind_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vm])* $var),+
        }

        impl $name {
            /// Every value, in the order errors list them.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The config spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $s),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(v: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|k| k.as_str() == v)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                        format!("{v:?}: {}", expected(&names))
                    })
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = String::deserialize(d)?;
                v.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// `expected a or b`, or `expected one of a, b, c`.
fn expected(names: &[&str]) -> String {
    match names {
        [a, b] => format!("expected {a} or {b}"),
        _ => format!("expected one of {}", names.join(", ")),
    }
}

kind_enum! {
    /// `projects.forge` (default `local`): where a project's code lives,
    /// how its CI is read and how it merges.
    ForgeKind {
        /// A bare repository as origin; CI = `test_command`; merge = a
        /// fast-forward push.
        #[default]
        Local = "local",
        /// Gitea: pull requests, commit statuses, merges through the API.
        Gitea = "gitea",
    }
}

kind_enum! {
    /// `projects.tracker` (default `local`): where a project's work items
    /// live.
    TrackerKind {
        /// orch's own `local_issues` (`orch issue add`).
        #[default]
        Local = "local",
        /// Plane work items.
        Plane = "plane",
    }
}

kind_enum! {
    /// `ORCH_NOTIFIER` (default `log`): where notifications go.
    NotifierKind {
        /// A log line.
        #[default]
        Log = "log",
        /// A Telegram chat.
        Telegram = "telegram",
    }
}

kind_enum! {
    /// `projects.merge_style` (default `fast-forward-only`): the Gitea
    /// merge style of deploy-staging → deploy (`Do` of Gitea's
    /// `MergePullRequestForm`).
    MergeStyle {
        Merge = "merge",
        Rebase = "rebase",
        RebaseMerge = "rebase-merge",
        Squash = "squash",
        #[default]
        FastForwardOnly = "fast-forward-only",
    }
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

fn default_main() -> String {
    "main".into()
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

/// The placeholders agent argv and prompt templates may use. Every path is
/// absolute:
/// `{task_id}`, `{project}`, `{title}`, `{body}`, `{stage}`, `{role}`,
/// `{branch}`, `{worktree}` (the task's worktree, the agent's cwd),
/// `{verdict_file}` (`{verdict_dir}/verdict.json`), `{verdict_dir}` (this
/// run's own folder `<state>/verdicts/job<N>-a<k>/`), `{feedback}` (why
/// the task came back or the last attempt failed; empty on a first run),
/// `{attempt}` (1, 2, …), `{verdicts}` (the verdict words this stage
/// accepts, e.g. `PASS or FAIL`), `{default_branch}`, `{test_command}`
/// (the project's test argv, shell-quoted), `{work_dir}`
/// (`docs/work-items/<task_id>`, relative to the worktree),
/// `{previous_session}` (the role's previous session id on this task, of
/// the shape its agent kind uses, with `resume = true`; else empty, and an argv element that is
/// empty because of it is dropped with the flag before it),
/// `{tracker_link}` (the work item's web link, or `none`),
/// `{budget_left}` (dollars the task may still spend under the budget
/// ceilings, e.g. `1.25`, or `unlimited` without one; also
/// `ORCH_BUDGET_USD_LEFT`; tokens left under the token ceilings are in
/// `ORCH_BUDGET_TOKENS_LEFT`).
pub const TEMPLATE_VARS: [&str; 19] = [
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
    "feedback",
    "attempt",
    "verdicts",
    "default_branch",
    "test_command",
    "work_dir",
    "previous_session",
    "tracker_link",
    "budget_left",
];

/// Every template variable as its own placeholder (`{task_id}` → `<task_id>`):
/// how `orch config show` renders an agent's argv and config validation
/// tries a template.
pub fn example_vars() -> BTreeMap<&'static str, String> {
    TEMPLATE_VARS
        .iter()
        .map(|k| (*k, format!("<{k}>")))
        .collect()
}

/// Renders `template`, replacing each `{name}` with `vars[name]`; `{{` and
/// `}}` are literal braces. No whitespace is trimmed inside braces.
///
/// Errors (a message naming the placeholder or position; never panics): an
/// unknown or empty placeholder, an unclosed `{`, or a lone `}`.
pub fn render(template: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let pos = template.len() - rest.len() + i; // byte offset, for messages
        let brace = &rest[i..];
        if let Some(after) = brace.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = brace.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if brace.starts_with('}') {
            return Err(format!(
                "unmatched '}}' at byte {pos} (write '}}}}' for a literal brace)"
            ));
        } else {
            // `brace` is `{name}...`: the name ends at the next brace, which
            // must be a `}`.
            let inner = &brace[1..];
            let end = inner
                .find(['{', '}'])
                .filter(|&j| inner[j..].starts_with('}'))
                .ok_or_else(|| {
                    format!("unclosed '{{' at byte {pos} (write '{{{{' for a literal brace)")
                })?;
            let name = &inner[..end];
            let value = vars.get(name).ok_or_else(|| {
                if name.is_empty() {
                    format!("empty placeholder {{}} at byte {pos}")
                } else {
                    let known: Vec<_> = vars.keys().copied().collect();
                    format!(
                        "unknown placeholder {{{name}}} at byte {pos} (known: {})",
                        known.join(", ")
                    )
                }
            })?;
            out.push_str(value);
            rest = &inner[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A TOML error as [`Error::Config`]: keyed by the dotted path of the
/// offending `key = value` line (`projects[0].tracker`) when the error
/// points at one, else by `toml` with the parser's whole message.
fn toml_error(text: &str, e: &toml::de::Error) -> Error {
    match e.span().and_then(|span| key_at(text, span.start)) {
        Some(key) => Error::config(key, e.message().replace('\n', " ").trim().to_string()),
        None => Error::config("toml", e.to_string().replace('\n', " ").trim().to_string()),
    }
}

/// The dotted path (`projects[1].state_names.done`) of the `key = value`
/// line holding byte `pos` of `text`, or `None` when that line is no
/// assignment.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let line_start = text.get(..pos)?.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..].lines().next()?.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with(['[', '#']) {
        return None;
    }
    let mut table = String::new();
    let mut arrays: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text[..line_start].lines().map(str::trim) {
        if let Some((h, _)) = l.strip_prefix("[[").and_then(|h| h.split_once("]]")) {
            let h = h.trim();
            let n = arrays.entry(h).and_modify(|n| *n += 1).or_insert(0);
            table = format!("{h}[{n}]");
        } else if let Some((h, _)) = l.strip_prefix('[').and_then(|h| h.split_once(']')) {
            let h = h.trim();
            table = match h.split_once('.') {
                Some((array, rest)) if arrays.contains_key(array) => {
                    format!("{array}[{}].{rest}", arrays[array])
                }
                _ => h.to_string(),
            };
        }
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

/// Every `ORCH_*` environment variable orch reads: the settings' keys
/// (found by loading [`Settings`] through a lookup that records each key
/// asked for, so the list never drifts from the code), the log keys, the
/// test clock, and the variables orch sets for its agents.
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
            "ORCH_ENV_FILE",
            "ORCH_TEST_CLOCK_OFFSET_MS",
            "ORCH_TEST_WALL_JUMP_MS",
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
        let cfg: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
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
            if a.kind != AgentKind::Acp && (a.permissions.is_some() || a.auth_method.is_some()) {
                return Err(Error::config(
                    format!("agents.{role}"),
                    "permissions and auth_method apply to an ACP agent only (kind = \"acp\")",
                ));
            }
            if a.timeout_s == Some(0) {
                return Err(Error::config(
                    format!("agents.{role}.timeout_s"),
                    "must be at least 1",
                ));
            }
            let vars = example_vars();
            for (i, arg) in a.argv.iter().enumerate() {
                render(arg, &vars)
                    .map_err(|m| Error::config(format!("agents.{role}.argv[{i}]"), m))?;
            }
            if let Some(prompt) = &a.prompt {
                render(prompt, &vars)
                    .map_err(|m| Error::config(format!("agents.{role}.prompt"), m))?;
            }
        }
        for (model, p) in &self.prices {
            let fields = [
                ("input_usd_per_mtok", Some(p.input_usd_per_mtok)),
                ("output_usd_per_mtok", Some(p.output_usd_per_mtok)),
                ("cache_read_usd_per_mtok", p.cache_read_usd_per_mtok),
                ("cache_write_usd_per_mtok", p.cache_write_usd_per_mtok),
            ];
            for (field, v) in fields {
                if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                    return Err(Error::config(
                        format!("prices.{model:?}.{field}"),
                        format!("expected a price >= 0 in dollars per million tokens, got {v}"),
                    ));
                }
            }
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
            if p.clone_url.trim().is_empty() {
                return Err(Error::config(k("clone_url"), "must not be empty"));
            }
            match p.test_command.first() {
                Some(prog) if !prog.trim().is_empty() && !prog.contains('\0') => {}
                _ => return Err(Error::config(k("test_command"), "must name a program")),
            }
            if let Err(e) = crate::git::validate_branch_name(&p.default_branch) {
                let reason = match e {
                    Error::InvalidRef { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(Error::config(
                    k("default_branch"),
                    format!(
                        "{:?} is not a valid branch name: {reason}",
                        p.default_branch
                    ),
                ));
            }
            if p.default_branch == "orch" || p.default_branch.starts_with("orch/") {
                return Err(Error::config(
                    k("default_branch"),
                    format!(
                        "{:?} is inside orch's task branch prefix \"orch/\"",
                        p.default_branch
                    ),
                ));
            }
            if p.forge == ForgeKind::Gitea
                && p.repo.split('/').filter(|s| !s.is_empty()).count() != 2
            {
                return Err(Error::config(
                    k("repo"),
                    format!("{:?}: expected owner/name when forge = \"gitea\"", p.repo),
                ));
            }
            if p.tracker == TrackerKind::Plane && p.tracker_project_id.is_empty() {
                return Err(Error::config(
                    k("tracker_project_id"),
                    "required when tracker = \"plane\"",
                ));
            }
            if p.test_timeout_s == 0 {
                return Err(Error::config(k("test_timeout_s"), "must be at least 1"));
            }
            if let Some(st) = &p.staging {
                if !(st.url.starts_with("http://") || st.url.starts_with("https://")) {
                    return Err(Error::config(
                        k("staging.url"),
                        format!("expected an http:// or https:// URL, got {:?}", st.url),
                    ));
                }
                if st.timeout_s == 0 {
                    return Err(Error::config(k("staging.timeout_s"), "must be at least 1"));
                }
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

    /// The prompt template of `role`: its agent entry's `prompt` (its own
    /// entry, else `default`), else the role's built-in
    /// [`default_prompt`].
    ///
    /// Errors: as [`Config::agent`].
    pub fn prompt(&self, role: &str) -> Result<String, Error> {
        Ok(self
            .agent(role)?
            .prompt
            .clone()
            .unwrap_or_else(|| default_prompt(role)))
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

    /// The model account `role` runs on: its agent entry's `account`, else
    /// the entry's key (`role` when it has its own `[agents.<role>]`, else
    /// `default`).
    pub fn account(&self, role: &str) -> String {
        let (key, agent) = match self.agents.get_key_value(role) {
            Some((k, a)) => (k.as_str(), Some(a)),
            None => ("default", self.agents.get("default")),
        };
        agent
            .and_then(|a| a.account.clone())
            .unwrap_or_else(|| key.to_string())
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
    fn every_built_in_prompt_renders_and_names_its_gate() {
        let vars = example_vars();
        for role in ROLES {
            let p = render(&default_prompt(role), &vars).unwrap();
            assert!(
                p.contains("<feedback>") && p.contains("<test_command>"),
                "{role}"
            );
            let verdict = matches!(role, "reviewer" | "tester" | "deployer");
            assert_eq!(p.contains("<verdict_file>"), verdict, "{role}");
            assert_eq!(p.contains("<verdicts>"), verdict, "{role}");
        }
        assert!(default_prompt("architect").contains("{work_dir}/design.md"));
        assert!(default_prompt("reviewer").contains("git diff origin/{default_branch}...HEAD"));
        // An entry without a prompt gets its role's; `default`'s own prompt
        // applies to the roles without an entry.
        let c = Config::parse(
            "[agents.default]\nargv = [\"x\"]\nprompt = \"do {role}\"\n[agents.tester]\nargv = [\"y\"]\n",
        )
        .unwrap();
        assert_eq!(c.prompt("analyst").unwrap(), "do {role}");
        assert_eq!(c.prompt("tester").unwrap(), default_prompt("tester"));
    }

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
            assert!(err("ORCH_GITEA_CI_POLL_S", v).contains("ORCH_GITEA_CI_POLL_S"));
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
    fn every_number_of_the_config_file_is_finite_whole_and_at_least_0() {
        let project = "[[projects]]\nname = \"a\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n";
        let err = |extra: &str| {
            Config::parse(&format!("{project}{extra}\n"))
                .unwrap_err()
                .to_string()
        };
        for (v, shown) in [
            ("nan", "NaN"),
            ("inf", "inf"),
            ("-inf", "-inf"),
            ("-1", "-1"),
            ("-0.5", "-0.5"),
        ] {
            assert_eq!(
                err(&format!("budget_day_usd = {v}")),
                format!(
                    "config: projects[0].budget_day_usd: expected a finite number >= 0, got {shown}"
                )
            );
            for key in ["test_timeout_s", "max_concurrency", "budget_day_tokens"] {
                assert_eq!(
                    err(&format!("{key} = {v}")),
                    format!("config: projects[0].{key}: expected a whole number >= 0, got {shown}")
                );
            }
            assert_eq!(
                err(&format!("[projects.staging]\nurl = \"http://x\"\ndb = \"d\"\nconfig = \"c\"\ntimeout_s = {v}")),
                format!("config: projects[0].staging.timeout_s: expected a whole number >= 0, got {shown}")
            );
            let e = Config::parse(&format!(
                "[agents.default]\nargv = [\"x\"]\ntimeout_s = {v}\n"
            ))
            .unwrap_err()
            .to_string();
            assert_eq!(
                e,
                format!(
                    "config: agents.default.timeout_s: expected a whole number >= 0, got {shown}"
                )
            );
        }
        assert_eq!(
            err("max_concurrency = 4294967296"),
            "config: projects[0].max_concurrency: 4294967296 is too large"
        );
        assert_eq!(
            err("test_timeout_s = 0"),
            "config: projects[0].test_timeout_s: must be at least 1"
        );
        assert!(err("budget_day_usd = \"5\"").contains("projects[0].budget_day_usd"));
        let c = Config::parse(&format!(
            "{project}budget_day_usd = 5\nbudget_day_tokens = 7\nmax_concurrency = 0\n"
        ))
        .unwrap();
        let p = &c.projects[0];
        assert_eq!(
            (
                p.budget_day_usd,
                p.budget_day_tokens,
                p.max_concurrency,
                p.test_timeout_s
            ),
            (Some(5.0), Some(7), Some(0), 600)
        );
        let c = Config::parse(&format!("{project}budget_day_usd = 0.5\n")).unwrap();
        assert_eq!(c.projects[0].budget_day_usd, Some(0.5));
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
    fn agent_kinds_and_prices_parse_and_bad_ones_name_their_key() {
        let cfg = Config::parse(
            "[agents.default]\nargv = [\"codex\"]\nkind = \"codex\"\nmodel = \"gpt-5.5\"\n\
             [agents.tester]\nargv = [\"claude\"]\n\
             [prices.\"gpt-5.5\"]\ninput_usd_per_mtok = 1.25\noutput_usd_per_mtok = 10\n",
        )
        .unwrap();
        assert_eq!(cfg.agent("developer").unwrap().kind, AgentKind::Codex);
        assert_eq!(cfg.agent("tester").unwrap().kind, AgentKind::ClaudeCode);
        let p = cfg.prices["gpt-5.5"];
        // Cache reads and writes default to the input price.
        assert!((p.cost_usd(1_000_000, 1_000_000, 0, 100_000) - 3.5).abs() < 1e-12);
        for k in AgentKind::ALL {
            assert_eq!(k.as_str().parse::<AgentKind>(), Ok(k));
            let toml = format!("[agents.default]\nargv = [\"x\"]\nkind = \"{k}\"\n");
            assert_eq!(Config::parse(&toml).unwrap().agents["default"].kind, k);
        }
        let e = Config::parse("[agents.default]\nargv = [\"x\"]\nkind = \"aider\"\n").unwrap_err();
        assert!(
            e.to_string().contains("agents.default.kind") && e.to_string().contains("aider"),
            "{e}"
        );
        let e = Config::parse("[prices.m]\ninput_usd_per_mtok = -1.0\noutput_usd_per_mtok = 1.0\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("prices.\"m\".input_usd_per_mtok"),
            "{e}"
        );
        let e = Config::parse("[prices.m]\ninput_usd_per_mtok = 1.0\n").unwrap_err();
        assert!(e.to_string().contains("output_usd_per_mtok"), "{e}");
    }

    #[test]
    fn a_roles_account_is_its_agents_account_else_its_agent_entry() {
        let cfg: Config = toml::from_str(
            "[agents.default]\nargv = [\"claude\"]\n\
             [agents.developer]\nargv = [\"claude\"]\naccount = \"team\"\n\
             [agents.reviewer]\nargv = [\"claude\"]\naccount = \"team\"\n\
             [agents.tester]\nargv = [\"claude\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.account("developer"), "team");
        assert_eq!(cfg.account("reviewer"), "team");
        assert_eq!(cfg.account("tester"), "tester");
        assert_eq!(cfg.account("analyst"), "default");
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

    #[test]
    fn an_acp_agent_takes_permissions_and_an_auth_method_and_only_it_does() {
        let c = Config::parse(
            "[agents.developer]\nargv = [\"gemini\", \"--acp\"]\nkind = \"acp\"\n\
             auth_method = \"gemini-api-key\"\npermissions = \"deny\"\nresume = true\n",
        )
        .unwrap();
        let a = c.agent("developer").unwrap();
        assert!(a.kind == AgentKind::Acp && a.resume);
        assert_eq!(a.permissions, Some(Permissions::Deny));
        assert_eq!(a.auth_method.as_deref(), Some("gemini-api-key"));
        let e = Config::parse("[agents.developer]\nargv = [\"x\"]\npermissions = \"allow\"\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("agents.developer") && e.to_string().contains("kind = \"acp\""),
            "{e}"
        );
        let e = Config::parse(
            "[agents.developer]\nargv = [\"x\"]\nkind = \"acp\"\npermissions = \"sometimes\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
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

    #[test]
    fn test_command_and_default_branch_are_validated_at_load() {
        let parse = |extra: &str| {
            Config::parse(&format!(
                "[[projects]]\nname = \"a\"\nclone_url = \"x\"\n{extra}\n"
            ))
        };
        parse("test_command = [\"true\"]\ndefault_branch = \"trunk\"").unwrap();
        for (extra, key, why) in [
            (
                "test_command = [\"\"]",
                "projects[0].test_command",
                "must name a program",
            ),
            (
                "test_command = [\"  \", \"x\"]",
                "projects[0].test_command",
                "must name a program",
            ),
            (
                "test_command = []",
                "projects[0].test_command",
                "must name a program",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"\"",
                "projects[0].default_branch",
                "empty branch name",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"a..b\"",
                "projects[0].default_branch",
                "contains \"..\"",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"orch/main\"",
                "projects[0].default_branch",
                "task branch prefix",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"main.lock\"",
                "projects[0].default_branch",
                "ends with \".lock\"",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains(why), "{extra}: {msg}");
            assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        }
    }

    #[test]
    fn service_kinds_fail_at_load_naming_key_and_values() {
        let project = |extra: &str| {
            Config::parse(&format!(
                "[[projects]]\nname = \"a\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n\
                 [[projects]]\nname = \"b\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n{extra}"
            ))
        };
        let p = project("").unwrap();
        assert_eq!(p.projects[1].tracker, TrackerKind::Local);
        assert_eq!(p.projects[1].forge, ForgeKind::Local);
        assert_eq!(p.projects[1].merge_style, MergeStyle::FastForwardOnly);
        let p =
            project("merge_style = \"rebase-merge\"\nforge = \"gitea\"\nrepo = \"o/n\"\n").unwrap();
        assert_eq!(p.projects[1].merge_style, MergeStyle::RebaseMerge);
        assert_eq!(p.projects[1].forge, ForgeKind::Gitea);
        for (extra, want) in [
            ("tracker = \"plain\"", "config: projects[1].tracker: \"plain\": expected local or plane"),
            ("forge = \"github\"", "config: projects[1].forge: \"github\": expected local or gitea"),
            (
                "merge_style = \"ff\"",
                "config: projects[1].merge_style: \"ff\": expected one of merge, rebase, rebase-merge, squash, fast-forward-only",
            ),
        ] {
            assert_eq!(project(extra).unwrap_err().to_string(), want);
        }
        let e = project("[projects.state_names]\ndone = 3\n").unwrap_err();
        assert!(
            e.to_string().contains("projects[1].state_names.done"),
            "{e}"
        );
        let e = Settings::load(&env(&[("ORCH_NOTIFIER", "pager")]), None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config: ORCH_NOTIFIER: \"pager\": expected log or telegram"
        );
    }

    #[test]
    fn admin_bind_is_a_socket_in_the_state_dir_by_default_tcp_or_a_path_when_set() {
        let load = |pairs: &[(&str, &str)]| Settings::load(&env(pairs), None, None);
        let s = load(&[("ORCH_STATE_DIR", "/srv/st")]).unwrap();
        assert_eq!(
            s.admin_bind,
            Some(AdminBind::Socket("/srv/st/admin.sock".into()))
        );
        assert_eq!(load(&[("ORCH_ADMIN_BIND", "")]).unwrap().admin_bind, None);
        assert_eq!(load(&[("ORCH_ADMIN_BIND", "  ")]).unwrap().admin_bind, None);
        assert_eq!(
            load(&[("ORCH_ADMIN_BIND", "127.0.0.1:9000")])
                .unwrap()
                .admin_bind,
            Some(AdminBind::Tcp("127.0.0.1:9000".parse().unwrap()))
        );
        assert_eq!(
            load(&[("ORCH_ADMIN_BIND", "[::1]:9000")])
                .unwrap()
                .admin_bind,
            Some(AdminBind::Tcp("[::1]:9000".parse().unwrap()))
        );
        for v in ["unix:/run/orch/admin.sock", "/run/orch/admin.sock"] {
            assert_eq!(
                load(&[("ORCH_ADMIN_BIND", v)]).unwrap().admin_bind,
                Some(AdminBind::Socket("/run/orch/admin.sock".into())),
                "{v}"
            );
        }
        for bad in [
            "unix:admin.sock",
            "unix:",
            "localhost",
            "127.0.0.1",
            "127.0.0.1:99999",
            "admin.sock",
            "http://127.0.0.1:8501",
        ] {
            let e = load(&[("ORCH_ADMIN_BIND", bad)]).unwrap_err();
            assert!(
                e.to_string().starts_with("config: ORCH_ADMIN_BIND: "),
                "{bad}: {e}"
            );
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{bad}");
        }
        // The token is a secret: never printed.
        let s = load(&[("ORCH_ADMIN_TOKEN", "tok-admin-1")]).unwrap();
        assert_eq!(
            s.admin_token.as_ref().map(Secret::expose),
            Some("tok-admin-1")
        );
        assert!(!format!("{s:?}").contains("tok-admin-1"));
    }

    #[test]
    fn settings_defaults_redaction_and_errors() {
        let s = AdapterSettings::load(&env(&[
            ("ORCH_GITEA_URL", "https://gitea.example.com/"),
            ("ORCH_GITEA_TOKEN", "tok-123"),
            ("ORCH_TELEGRAM_BOT_TOKEN", "123:abc"),
            ("ORCH_PLANE_API_KEY", "plane_api_x"),
        ]))
        .unwrap();
        assert_eq!(s.gitea_url.as_deref(), Some("https://gitea.example.com"));
        assert_eq!(s.gitea_public_url, s.gitea_url);
        assert_eq!(s.notifier, NotifierKind::Log);
        assert!(s.tracker_enabled && s.forge_enabled && s.notify_enabled);
        let dbg = format!("{s:?}");
        for secret in ["tok-123", "123:abc", "plane_api_x"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        let e = AdapterSettings::load(&env(&[("ORCH_NOTIFIER", "pager")])).unwrap_err();
        assert!(e.to_string().contains("ORCH_NOTIFIER"), "{e}");
        let e = AdapterSettings::load(&env(&[("ORCH_PLANE_URL", "plane.local")])).unwrap_err();
        assert!(e.to_string().contains("ORCH_PLANE_URL"), "{e}");
        let e = AdapterSettings::load(&env(&[("ORCH_FORGE_ENABLED", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("ORCH_FORGE_ENABLED"), "{e}");
    }
}
