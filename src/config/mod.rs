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
//! [`crate::error`], so every other module may read the configuration.

mod settings;

pub use settings::*;
