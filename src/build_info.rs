//! What this binary is: its version and the git commit it was built from
//! (recorded by `build.rs`; `unknown` when built without git and without
//! `ORCH_BUILD_COMMIT`). `orch --version`, `GET /healthz` and
//! `orch staging-check` report them; the schema version is
//! `crate::db::schema_version`.

/// The crate version (`Cargo.toml`), e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The full git commit sha the binary was built from, or `unknown`.
pub const COMMIT: &str = env!("ORCH_GIT_COMMIT");

/// The commit this process reports ([`COMMIT`]). With the `testing`
/// feature, `ORCH_TESTING_COMMIT` stands in for it, so a test can play a
/// staging instance deployed from a task branch's head.
pub fn commit() -> String {
    #[cfg(feature = "testing")]
    if let Some(c) = std::env::var("ORCH_TESTING_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
    {
        return c;
    }
    COMMIT.to_string()
}
