//! Settings and configuration.
//!
//! Two sources, one rule each:
//! - **Settings** (`ORCH_*` environment variables, with one settings file
//!   loaded first by the binary, [`load_settings_file`]): paths, limits,
//!   secrets, timeouts. Every key is listed with its default in
//!   `.env.example`.
//! - **Config** (a TOML file, `ORCH_CONFIG`): the project registry, and the
//!   per-role agent argv and prompt templates.
//!
//! A value orch cannot use is one [`Error::Config`] naming the key, never a
//! panic. Secrets are wrapped in [`Secret`], whose `Debug` is redacted.
//!
//! Service choices are enums ([`ForgeKind`], [`TrackerKind`],
//! [`NotifierKind`], [`MergeStyle`]), so a typo fails at load with the key
//! and the accepted values. This module is a leaf: it imports only
//! [`crate::error`] and the `model` leaf (`Stage`), so every other module
//! may read the configuration.
//!
//! One file per part: `settings` (the `ORCH_*` environment), `adapter`
//! (the outside adapters' settings, the admin listener's address), `file`
//! (the TOML config's shape), `state_names` (tracker states), `templates`
//! (built-in prompts and placeholders), `validation` (loading and checking
//! the config file). Every public item is re-exported here.

mod adapter;
mod file;
mod settings;
mod state_names;
mod templates;
mod validation;

pub use adapter::{AdapterSettings, AdminBind, ADMIN_SOCKET};
pub(crate) use file::{amount, whole, Number};
pub use file::{
    AgentConfig, AgentKind, Config, ForgeKind, MergeStyle, NotifierKind, Permissions, Price,
    ProjectConfig, StagingConfig, TrackerKind, MAX_WHOLE, ROLES,
};
pub use settings::{
    is_secret, known_keys, load_settings_file, missing_secret_hint, unknown_keys, AgentRunner,
    AgentSandbox, Secret, Settings, SettingsFile, INSTALLED_SECRETS_FILE, INSTALLED_SETTINGS_FILE,
};
pub(crate) use settings::{setting_flag, setting_num};
pub use state_names::{StateKind, StateNames, TrackerStates};
pub use templates::{default_prompt, example_vars, render, TEMPLATE_VARS};

/// A settings lookup over `pairs`, for the unit tests of every part.
#[cfg(test)]
fn test_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: std::collections::BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}
