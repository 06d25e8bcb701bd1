//! The config file (`ORCH_CONFIG`, TOML): [`Config`], its projects and
//! agents, agent kinds, prices and service choices, and the TOML readers of
//! its numbers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::Error;

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
    pub(super) fn parse(text: &str) -> Option<Number> {
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

fn default_main() -> String {
    "main".into()
}
fn default_test_timeout() -> u64 {
    600
}

/// The roles agents can be configured for: those of the stages, in
/// pipeline order (derived from `Stage::ALL`).
pub use crate::model::ROLES;

impl Config {
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
}
