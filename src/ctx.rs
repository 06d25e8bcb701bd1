//! The context every command runs in: settings, config, and the paths and
//! handles derived from them.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::{Config, ProjectConfig, Settings};
use crate::db::Db;
use crate::error::Error;
use crate::pipeline::Policy;

/// Settings plus config; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub settings: Settings,
    pub config: Config,
}

impl Ctx {
    /// Loads the config named by `settings`.
    ///
    /// Errors: [`Error::Config`] for an unreadable or invalid config.
    /// A missing config file is an error even at the default path
    /// (`./orch.toml`): a cron job without `cd` must not "succeed" doing
    /// nothing.
    pub fn load(settings: Settings) -> Result<Ctx, Error> {
        if !settings.config_path.exists() {
            return Err(Error::config(
                format!("ORCH_CONFIG ({})", settings.config_path.display()),
                "no such file: create it (README, \"Configuration\"; `scripts/install` \
                 writes a starting one) or point --config / ORCH_CONFIG at it",
            ));
        }
        let config = Config::load(&settings.config_path, true)?;
        Ok(Ctx { settings, config })
    }

    /// Creates the state folders and refuses NFS. Idempotent.
    pub fn ensure_state_dirs(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        for dir in s.state_dirs() {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating state folder {}", dir.display()))?;
        }
        crate::lock::ensure_local_fs(&s.state_dir)
    }

    /// Creates (or migrates) the database and the state folders and syncs
    /// the project registry into it: `orch init`, the only command that
    /// creates or migrates.
    pub fn init_db(&self) -> anyhow::Result<Db> {
        self.ensure_state_dirs()?;
        let db = Db::open(&self.settings.db_path, self.settings.busy_timeout_ms)?;
        self.sync_registry(&db)?;
        Ok(db)
    }

    /// Opens the existing database for writing and syncs the project
    /// registry into it. Call after taking any tick lock.
    ///
    /// Errors: [`Error::NotInitialised`] (no database: run `orch init`),
    /// [`Error::SchemaTooOld`] (run `orch init`), [`Error::SchemaTooNew`].
    pub fn open_db(&self) -> anyhow::Result<Db> {
        let db = Db::open_existing(&self.settings.db_path, self.settings.busy_timeout_ms)?;
        self.ensure_state_dirs()?;
        self.sync_registry(&db)?;
        Ok(db)
    }

    /// Opens the existing database read-only, for the read commands
    /// (`status`, `task list|show`, `events list`, `usage`, `metrics`,
    /// `check`, `logs`, `config`): no registry sync, no write access needed.
    ///
    /// Errors: as [`Ctx::open_db`].
    pub fn open_db_read_only(&self) -> anyhow::Result<Db> {
        Db::open_read_only(&self.settings.db_path, self.settings.busy_timeout_ms)
    }

    fn sync_registry(&self, db: &Db) -> anyhow::Result<()> {
        let now = crate::clock::now_ms();
        db.write(|tx| {
            for p in &self.config.projects {
                tx.sync_project(&crate::db::ProjectRow::of(p), now)?;
            }
            Ok(())
        })
    }

    /// Takes the non-blocking tick lock `name` (exit 75 when busy).
    /// Errors: [`Error::NotInitialised`] before `orch init` (no state
    /// folder is created then).
    pub fn tick_lock(&self, name: &str) -> anyhow::Result<crate::lock::LockGuard> {
        if !Db::exists(&self.settings.db_path) {
            return Err(Error::NotInitialised {
                path: self.settings.db_path.clone(),
            }
            .into());
        }
        self.ensure_state_dirs()?;
        crate::lock::try_tick_lock(&self.settings.locks_dir(), name)
    }

    /// Records that tick `name` (`ingest`, `reap`, `reconcile`, `deliver`,
    /// `work-once`, `tick`) finished successfully now: the modification
    /// time of `<state>/locks/<name>.ok`. A stamp, not a database write, so
    /// an idle tick still commits nothing.
    ///
    /// Errors: the stamp file cannot be created or touched.
    pub fn mark_tick_ok(&self, name: &str) -> anyhow::Result<()> {
        let path = self.settings.locks_dir().join(format!("{name}.ok"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening tick stamp {}", path.display()))?;
        let now = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(crate::clock::now_ms().max(0) as u64);
        file.set_modified(now)
            .with_context(|| format!("touching tick stamp {}", path.display()))
    }

    /// When tick `name` last finished successfully (unix ms), from its
    /// stamp ([`Ctx::mark_tick_ok`]); `None` when it never did.
    pub fn tick_last_ok(&self, name: &str) -> Option<i64> {
        let path = self.settings.locks_dir().join(format!("{name}.ok"));
        let modified = std::fs::metadata(path).ok()?.modified().ok()?;
        let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(since.as_millis() as i64)
    }

    /// The transition policy.
    pub fn policy(&self) -> Policy {
        Policy {
            max_developer_retries: self.settings.max_developer_retries,
        }
    }

    /// The project `name`.
    ///
    /// Errors: [`Error::Config`] when it is not in the registry (a task
    /// whose project was removed from the config).
    pub fn project(&self, name: &str) -> Result<&ProjectConfig, Error> {
        self.config.project(name).ok_or_else(|| {
            Error::config(
                "projects",
                format!("no project named {name:?} in the config"),
            )
        })
    }

    /// The git handle of a project's shared clone.
    pub fn repo(&self, p: &ProjectConfig) -> crate::git::Repo {
        crate::git::Repo {
            locks_dir: self.settings.locks_dir(),
            clone_dir: self.settings.repos_dir().join(&p.name),
            origin_url: p.clone_url.clone(),
            default_branch: p.default_branch.clone(),
            branch_prefix: "orch/".into(),
        }
    }

    /// Log file path for a name under `<state_dir>/logs`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.settings.logs_dir().join(name)
    }
}
