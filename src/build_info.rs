//! What this binary is: its version and the git commit it was built from
//! (recorded by `build.rs`; `unknown` when built without git and without
//! `ORCH_BUILD_COMMIT`). `orch --version`, `GET /healthz` and
//! `orch staging-check` report them; the schema version is
//! `crate::db::schema_version`.

/// The crate version (`Cargo.toml`), e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The full git commit sha the binary was built from, or `unknown`.
pub const COMMIT: &str = env!("ORCH_GIT_COMMIT");
