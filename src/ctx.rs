//! The context every command runs in: settings, config, and the paths and
//! handles derived from them.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::{Config, ProjectConfig, Settings};
use crate::db::{Db, LeaseAcquire};
use crate::error::Error;
use crate::pipeline::Policy;

/// A held tick lock ([`Ctx::tick_lock`]); dropping it releases it.
#[derive(Debug)]
pub enum TickLock {
    /// flock(2) on `<state>/locks/<name>.lock`: a store of one host.
    File(crate::lock::LockGuard),
    /// The lease row `tick:<name>`: a store shared between hosts.
    Lease(Box<TickLease>),
    /// A dry run's look: the lease was free; nothing is held.
    Looked,
}

/// A tick lock held as the lease row `tick:<name>` ([`TickLock::Lease`]):
/// the connection it was taken through, released (deleted if still this
/// holder's) when dropped. A holder that dies leaves it to expire.
pub struct TickLease {
    db: Db,
    name: String,
    holder: String,
}

impl std::fmt::Debug for TickLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TickLease")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .finish()
    }
}

impl Drop for TickLease {
    fn drop(&mut self) {
        if let Err(e) = self
            .db
            .write(|tx| tx.release_lease(&self.name, &self.holder))
        {
            tracing::warn!(lease = %self.name, error = %format!("{e:#}"), "could not release the tick lease; it expires by itself");
        }
    }
}

/// Whether the holder `<host id>:<pid>:<start time>` of a tick lease is a
/// process of this host id ([`crate::process::host_id`]) that is gone:
/// no live process with that pid and start time. Another host's holder
/// is never looked up (`false`): its lease only expires.
fn holder_died_here(holder: &str) -> bool {
    let mut it = holder.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    let (Ok(start), Ok(pid)) = (start.parse::<u64>(), pid.parse::<i32>()) else {
        return false;
    };
    host == crate::process::host_id() && !crate::process::is_alive(pid, start)
}

/// Whether tick locks are lease rows even on a store of one host: the
/// hidden testing setting `ORCH_TICK_LOCKS=lease` (builds with the
/// `testing` feature only), so the lease path runs on SQLite in tests.
fn leases_forced() -> bool {
    #[cfg(feature = "testing")]
    if std::env::var("ORCH_TICK_LOCKS").is_ok_and(|v| v.trim() == "lease") {
        return true;
    }
    false
}

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
        db.set_idle_in_transaction_timeout(self.settings.idle_in_transaction_ms())?;
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
        db.set_idle_in_transaction_timeout(self.settings.idle_in_transaction_ms())?;
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

    /// Takes the non-blocking tick lock `name` (`ingest`, `reap`,
    /// `reconcile`, `deliver`, `ci`, `merge-line`): "one pass of this kind
    /// at a time" for the store. On a store of one host (SQLite) it is
    /// flock(2) on `<state>/locks/<name>.lock`; on a store shared between
    /// hosts ([`Db::is_shared`]) it is the lease row `tick:<name>` (holder
    /// `<host id>:<pid>:<process start time>`, for
    /// `ORCH_TICK_LEASE_TTL_S`; an expired one is taken over, and `orch
    /// reap` releases it), through a connection of its own. Released when
    /// the returned guard drops.
    ///
    /// Errors: [`Error::LockBusy`] (exit 75) when another process holds
    /// it; [`Error::NotInitialised`] before `orch init` (no state folder
    /// is created then); database errors taking a lease.
    pub fn tick_lock(&self, name: &str) -> anyhow::Result<TickLock> {
        self.tick_lock_for(name, false)
    }

    /// [`Ctx::tick_lock`] for a pass that writes nothing when `dry_run`
    /// (inside a rehearsal, whose open transaction a lease's write would
    /// wait for): then a lease is only looked at — busy when another
    /// holds it — and not taken.
    ///
    /// Errors: as [`Ctx::tick_lock`].
    pub fn tick_lock_for(&self, name: &str, dry_run: bool) -> anyhow::Result<TickLock> {
        // Shared or not is read from the target (`Db::is_shared` of what
        // it opens), so a file lock is taken before the database is
        // opened, as DESIGN §3 asks.
        let shared = crate::db::postgres_url(&self.settings.db_path).is_some();
        if !shared && !leases_forced() {
            if !self.settings.db_path.is_file() {
                return Err(Error::NotInitialised {
                    path: self.settings.db_path.clone(),
                }
                .into());
            }
            self.ensure_state_dirs()?;
            return Ok(TickLock::File(crate::lock::try_tick_lock(
                &self.settings.locks_dir(),
                name,
            )?));
        }
        // A lease: the one connection it is taken through also says
        // whether there is a database ([`Error::NotInitialised`] before
        // `orch init`, no state folder made then).
        let db = Db::open_existing(&self.settings.db_path, self.settings.busy_timeout_ms)?;
        self.ensure_state_dirs()?;
        db.set_idle_in_transaction_timeout(self.settings.idle_in_transaction_ms())?;
        let lease = format!("tick:{name}");
        let me = crate::process::current_process();
        let holder = format!("{}:{}:{}", crate::process::host_id(), me.pid, me.start_time);
        let now = crate::clock::now_ms();
        let busy = |l: &crate::db::Lease| Error::LockBusy {
            name: name.to_string(),
            held: format!(
                "lease {} held by {}, expires {}",
                l.name,
                l.holder,
                crate::clock::ago(l.expires_at_ms, now)
            ),
        };
        if dry_run {
            return match db.lease(&lease)? {
                Some(l)
                    if l.holder != holder
                        && !holder_died_here(&l.holder)
                        && !db.stale_leases(now)?.iter().any(|x| x.name == lease) =>
                {
                    Err(busy(&l).into())
                }
                _ => Ok(TickLock::Looked),
            };
        }
        let ttl_ms = self.settings.tick_lease_ttl_s as i64 * 1000;
        // A holder of this host that died (killed, crashed) frees it at
        // once, as its flock would be: taken over in the same transaction.
        let (taken, from) =
            db.write(
                |tx| match tx.acquire_lease(&lease, &holder, None, now, ttl_ms)? {
                    LeaseAcquire::Busy(l) if holder_died_here(&l.holder) => {
                        tx.release_lease(&lease, &l.holder)?;
                        let taken = tx.acquire_lease(&lease, &holder, None, now, ttl_ms)?;
                        Ok((taken, Some(l.holder)))
                    }
                    taken => Ok((taken, None)),
                },
            )?;
        if let Some(dead) = from {
            tracing::info!(lease = %lease, holder = %dead, "took over the tick lease of a process of this host that is gone");
        }
        match taken {
            LeaseAcquire::Acquired(_) => {
                let held = TickLock::Lease(Box::new(TickLease {
                    db,
                    name: lease,
                    holder,
                }));
                crate::failpoint::failpoint("tick_lock.lease_taken");
                Ok(held)
            }
            LeaseAcquire::Busy(l) => Err(busy(&l).into()),
        }
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
