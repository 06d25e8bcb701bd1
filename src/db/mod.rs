//! The database: one SQLite file in WAL mode, all of orch's SQL.
//!
//! Every write happens in a `BEGIN IMMEDIATE` transaction ([`Db::write`]):
//! a transaction that reads and then writes under a plain `BEGIN` fails at
//! once with SQLITE_BUSY instead of waiting for the busy timeout.
//! Queries are named methods on [`Db`] (reads, written once and usable
//! inside a transaction too, as [`Tx`] derefs to `Db`) and [`Tx`] (writes,
//! inside a write transaction); the rules that string them together live in
//! `pipeline`, `worker`, `ingest` and friends. All of orch's SQL is here
//! and nothing else is: each file holds the queries of the tables it is
//! named for (`tasks`, `jobs`, `inbox`, `outbox`, `leases`, `ci`, `usage`;
//! `schema` has the migrations).
//!
//! Times are unix milliseconds (`*_ms`).

mod budget;
mod ci;
mod copy;
mod fence;
mod hosts;
mod inbox;
mod jobs;
mod leases;
mod merge_line;
mod outbox;
mod pauses;
mod schema;
mod schema_pg;
mod tasks;
mod usage;

pub use budget::{Measure, Parked};
pub use ci::{PullRequestRow, ORCH_TEST_CONTEXT};
pub use copy::{copy_sqlite_to_postgres, CopyReport, TableCopy};
pub use fence::FenceRefusal;
pub use hosts::Host;
pub use inbox::{Delivery, InboxRow, NewDelivery, Recorded, StoredDelivery};
pub use jobs::{Job, RunJudgement, RunRecord, RunUsage};
pub use leases::{Lease, LeaseAcquire};
pub use merge_line::LineRow;
pub use outbox::{OutboxRow, MAX_RETRY_WAIT_MS};
pub use pauses::Pause;
pub use tasks::{CachedState, ProjectRow, Task, TransitionRow};
pub use usage::UsageRow;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use crate::error::Error;
use crate::sql::{Conn, Dialect};

pub use schema::MIGRATIONS;
pub use schema_pg::{PG_BASELINE, PG_BASELINE_VERSION, PG_MIGRATIONS_AFTER};

/// The schema version this binary writes (`PRAGMA user_version` on
/// SQLite, the `schema_version` row on PostgreSQL: one numbering).
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// This binary's schema version, or [`Error::SchemaTooNew`] when a
/// database at `current` was written by a newer orch (never downgraded).
fn not_newer_than_this_binary(current: i64) -> Result<i64, Error> {
    let latest = schema_version();
    if current > latest {
        return Err(Error::SchemaTooNew {
            db: current,
            binary: latest,
        });
    }
    Ok(latest)
}

/// Prepared statements kept per connection (see [`Db::open`]).
const STATEMENT_CACHE: usize = 64;

/// The advisory lock every PostgreSQL write transaction takes first
/// (`pg_advisory_xact_lock`): one writer at a time, what SQLite's
/// `BEGIN IMMEDIATE` means (DESIGN §10 "Concurrency").
pub const PG_WRITE_LOCK: i64 = 0x6f72_6368_0001;
/// The advisory lock of a PostgreSQL migration (`orch init`).
pub const PG_MIGRATE_LOCK: i64 = 0x6f72_6368_0002;

/// The PostgreSQL URL `target` holds (`postgres://…` or
/// `postgresql://…`), or `None` for an SQLite path. `ORCH_DB`/`--db` hold
/// either; this is the one place that tells them apart.
pub fn postgres_url(target: &Path) -> Option<&str> {
    target.to_str().filter(|t| crate::sql::is_postgres_url(t))
}

/// An open database.
pub struct Db {
    conn: Conn,
    /// Inside [`Db::rehearse_all`]: every write is a savepoint of the one
    /// outer transaction, which is rolled back at the end.
    rehearsing: std::cell::Cell<bool>,
}

/// A write transaction (`BEGIN IMMEDIATE`), see [`Db::write`]. It derefs
/// to [`Db`], so every read is written once, on `Db`, and sees the
/// transaction's own writes (one connection); the writes are methods of
/// `Tx`.
pub struct Tx<'a> {
    db: &'a Db,
    /// The claims (job id, epoch) this transaction ended by a won
    /// compare-and-swap on the job running at that epoch (finish, requeue,
    /// defer): proof, within the transaction, that the claim was held
    /// ([`Tx::claim_held`]).
    ended: std::cell::RefCell<Vec<(i64, i64)>>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

/// Rolls back an open transaction when dropped unfinished (a panic in
/// the transaction's body).
struct Open<'a> {
    conn: &'a Conn,
    done: bool,
}

impl Open<'_> {
    fn finish(mut self, sql: &str) -> crate::sql::Result<()> {
        self.done = true;
        self.conn.execute_batch(sql)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path`, sets WAL,
    /// `synchronous=FULL` (a delivery is durable before the shim answers),
    /// foreign keys and the busy timeout, and applies pending migrations.
    /// A PostgreSQL URL ([`postgres_url`]) connects and migrates there.
    ///
    /// Errors: [`Error::SchemaTooNew`] when the file was written by a newer
    /// orch; SQLite errors with the path as context.
    pub fn open(path: &Path, busy_timeout_ms: u64) -> anyhow::Result<Db> {
        if let Some(url) = postgres_url(path) {
            let mut db = connect_postgres(url, busy_timeout_ms, false)?;
            db.migrate().context("migrating the PostgreSQL database")?;
            return Ok(db);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let mut db = connect(
            path.as_os_str(),
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            busy_timeout_ms,
        )?;
        db.sqlite()
            .pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("setting WAL on {}", path.display()))?;
        db.migrate()
            .with_context(|| format!("migrating database {}", path.display()))?;
        Ok(db)
    }

    /// Opens an existing, up-to-date database for reading and writing:
    /// creates nothing and migrates nothing (only `orch init` does).
    ///
    /// Errors: [`Error::NotInitialised`] when `path` does not exist,
    /// [`Error::SchemaTooOld`] when it needs migrating,
    /// [`Error::SchemaTooNew`] when a newer orch wrote it; SQLite errors
    /// with the path as context.
    pub fn open_existing(path: &Path, busy_timeout_ms: u64) -> anyhow::Result<Db> {
        if let Some(url) = postgres_url(path) {
            let db = connect_postgres(url, busy_timeout_ms, false)?;
            db.require_current(path)?;
            return Ok(db);
        }
        require_file(path)?;
        let db = connect(
            path.as_os_str(),
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE,
            busy_timeout_ms,
        )?;
        db.require_current(path)?;
        Ok(db)
    }

    /// Opens an existing, up-to-date database read-only
    /// (`SQLITE_OPEN_READ_ONLY`): needs no write access to the file or its
    /// folder. When the folder is not writable and SQLite cannot make the
    /// WAL index, the file is opened `immutable` (no other writer can
    /// exist then). Any write through it fails. On PostgreSQL the session
    /// is `default_transaction_read_only`.
    ///
    /// Errors: as [`Db::open_existing`].
    pub fn open_read_only(path: &Path, busy_timeout_ms: u64) -> anyhow::Result<Db> {
        if let Some(url) = postgres_url(path) {
            let db = connect_postgres(url, busy_timeout_ms, true)?;
            db.require_current(path)?;
            return Ok(db);
        }
        require_file(path)?;
        let open = |uri: &str| -> anyhow::Result<Db> {
            let db = connect(
                std::ffi::OsStr::new(uri),
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
                busy_timeout_ms,
            )?;
            db.require_current(path)?;
            Ok(db)
        };
        let uri = format!("file:{}", uri_path(path));
        match open(&uri) {
            Ok(db) => Ok(db),
            Err(e) if is_cantopen(&e) => open(&format!("{uri}?immutable=1")),
            Err(e) => Err(e),
        }
    }

    /// Refuses a database whose schema is not this binary's.
    fn require_current(&self, path: &Path) -> anyhow::Result<()> {
        let current = self.user_version().with_context(|| {
            format!("reading the schema version of {}", crate::sql::shown(path))
        })?;
        if current == 0 && self.dialect() == Dialect::Postgres {
            // A PostgreSQL database without orch's schema: as a missing
            // SQLite file, `orch init` creates it.
            return Err(Error::NotInitialised {
                path: path.to_path_buf(),
            }
            .into());
        }
        let latest = not_newer_than_this_binary(current)?;
        if current < latest {
            return Err(Error::SchemaTooOld {
                path: path.to_path_buf(),
                db: current,
                binary: latest,
            }
            .into());
        }
        Ok(())
    }

    /// Opens an existing database file as it is, whatever its schema
    /// version: nothing is created and nothing migrated (`orch staging-check` reads another instance's
    /// database, and writes only its cleanup). `writable` false opens it
    /// read-only.
    ///
    /// Errors: [`Error::NotInitialised`] when there is no file at `path`;
    /// SQLite errors with the path as context.
    pub fn open_as_is(path: &Path, busy_timeout_ms: u64, writable: bool) -> anyhow::Result<Db> {
        if let Some(url) = postgres_url(path) {
            return connect_postgres(url, busy_timeout_ms, !writable);
        }
        require_file(path)?;
        let mode = if writable {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        connect(path.as_os_str(), path, mode, busy_timeout_ms)
    }

    /// The schema version of an existing database, without migrating; 0
    /// for an empty PostgreSQL database.
    pub fn open_readonly_version(path: &Path) -> anyhow::Result<i64> {
        if let Some(url) = postgres_url(path) {
            return connect_postgres(url, 0, true)?.user_version();
        }
        connect(path.as_os_str(), path, OpenFlags::SQLITE_OPEN_READ_ONLY, 0)?.user_version()
    }

    /// The schema version of the database at `path`, `None` when there is
    /// none yet: no file, or a PostgreSQL database without orch's schema.
    pub fn existing_version(path: &Path) -> anyhow::Result<Option<i64>> {
        if postgres_url(path).is_none() && !path.exists() {
            return Ok(None);
        }
        let v = Db::open_readonly_version(path)?;
        Ok((postgres_url(path).is_none() || v > 0).then_some(v))
    }

    /// Whether a database exists at `path`: the file, or (PostgreSQL) a
    /// server that answers. Says nothing of its schema.
    pub fn exists(path: &Path) -> bool {
        match postgres_url(path) {
            // A server that does not answer "exists": opening it then
            // names the connection error.
            Some(_) => Db::open_readonly_version(path).map_or(true, |v| v > 0),
            None => path.is_file(),
        }
    }

    /// The dialect of this database.
    pub fn dialect(&self) -> Dialect {
        self.conn.dialect()
    }

    /// On PostgreSQL, ends this session once it has sat `ms` milliseconds
    /// inside a transaction with no statement running
    /// (`idle_in_transaction_session_timeout`; a session starts at 60 s): a
    /// process stopped mid-transaction (SIGSTOP, a host partitioned) then
    /// holds the write lock and its row locks no longer than that, so
    /// another host's reaper can rescue its jobs (DESIGN §10). Nothing on
    /// SQLite (a stopped writer there is one machine's problem).
    ///
    /// Errors: the database's.
    pub fn set_idle_in_transaction_timeout(&self, ms: u64) -> anyhow::Result<()> {
        if self.dialect() == Dialect::Postgres {
            self.conn.execute_batch(&format!(
                "SET idle_in_transaction_session_timeout = '{}ms'",
                ms.max(1)
            ))?;
        }
        Ok(())
    }

    /// Whether this store is shared by several hosts (PostgreSQL): tick
    /// locks are then lease rows, and liveness is judged by heartbeats.
    pub fn is_shared(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }

    /// The SQLite connection (pragmas, checkpoints). Panics on
    /// PostgreSQL: only SQLite-only code (the serve writer's checkpoints,
    /// benchmarks) calls it, after checking [`Db::dialect`].
    pub fn sqlite(&self) -> &Connection {
        self.conn.sqlite().expect("an SQLite database")
    }

    /// The database's schema version: `PRAGMA user_version` on SQLite,
    /// the `schema_version` row on PostgreSQL (0 when there is none).
    pub fn user_version(&self) -> anyhow::Result<i64> {
        match self.dialect() {
            Dialect::Sqlite => Ok(self
                .conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))?),
            Dialect::Postgres => {
                // Two statements: a query naming a missing table fails
                // when it is planned, whatever branch it would take.
                let exists: bool = self.conn.query_row(
                    "SELECT to_regclass('schema_version') IS NOT NULL",
                    [],
                    |r| r.get(0),
                )?;
                if !exists {
                    return Ok(0);
                }
                Ok(self.conn.query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                    [],
                    |r| r.get(0),
                )?)
            }
        }
    }

    /// Applies pending migrations in one exclusive transaction. Returns how
    /// many were applied (0 on an up-to-date database).
    pub fn migrate(&mut self) -> anyhow::Result<usize> {
        let current = self.user_version()?;
        let latest = not_newer_than_this_binary(current)?;
        if current == latest {
            return Ok(0);
        }
        if self.dialect() == Dialect::Postgres {
            return self.apply_migrations_pg();
        }
        // A migration that rebuilds a table (20: `inbox`) drops a table
        // other tables refer to; SQLite's procedure for that is foreign
        // keys off for the change (the pragma is a no-op inside a
        // transaction, so it is set before) and `foreign_key_check` before
        // the commit. They are on again whatever the outcome.
        self.sqlite().pragma_update(None, "foreign_keys", "OFF")?;
        let applied = self.apply_migrations();
        self.sqlite().pragma_update(None, "foreign_keys", "ON")?;
        applied
    }

    /// The body of [`Db::migrate`]: every pending migration in one
    /// exclusive transaction, committed only if it left no foreign key
    /// dangling that did not dangle before.
    fn apply_migrations(&mut self) -> anyhow::Result<usize> {
        let Conn::Sqlite(conn) = &mut self.conn else {
            unreachable!("SQLite migrations on SQLite");
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        let dangling = |tx: &rusqlite::Transaction| -> rusqlite::Result<i64> {
            tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
        };
        let dangling_before = dangling(&tx)?;
        // Re-read under the lock: another process may have migrated.
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let mut applied = 0;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)
                .with_context(|| format!("migration {}", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            applied += 1;
        }
        let dangling_after = dangling(&tx)?;
        if dangling_after > dangling_before {
            anyhow::bail!(
                "migrating to schema {}: {} row(s) would refer to rows that do not exist; nothing was changed",
                schema_version(),
                dangling_after - dangling_before
            );
        }
        tx.commit()?;
        Ok(applied)
    }

    /// PostgreSQL's migrations: in one transaction under
    /// [`PG_MIGRATE_LOCK`], the baseline (this schema as of SQLite's
    /// migration [`PG_BASELINE_VERSION`], DESIGN §10) on an empty
    /// database, then every later migration; DDL is transactional, so a
    /// failure changes nothing.
    fn apply_migrations_pg(&mut self) -> anyhow::Result<usize> {
        let open = Open {
            conn: &self.conn,
            done: false,
        };
        self.conn.execute_batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({PG_MIGRATE_LOCK})"
        ))?;
        // Re-read under the lock: another process may have migrated.
        let current = self.user_version()?;
        let mut applied = 0;
        if current == 0 {
            self.conn
                .execute_batch(PG_BASELINE)
                .context("the PostgreSQL baseline schema")?;
            applied += 1;
        }
        let from = (current as usize).max(PG_BASELINE_VERSION);
        for (i, sql) in PG_MIGRATIONS_AFTER
            .iter()
            .enumerate()
            .skip(from - PG_BASELINE_VERSION)
        {
            let version = PG_BASELINE_VERSION + i + 1;
            self.conn
                .execute_batch(sql)
                .with_context(|| format!("migration {version}"))?;
            self.conn
                .execute("UPDATE schema_version SET version=?1", [version as i64])?;
            applied += 1;
        }
        open.finish("COMMIT")?;
        Ok(applied)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits when it
    /// returns `Ok`; rolls back on `Err`. Inside [`Db::rehearse_all`] it
    /// is a savepoint of the rehearsal instead (released on `Ok`, rolled
    /// back on `Err`), so the rehearsed code path is the real one.
    pub fn write<T>(&self, f: impl FnOnce(&Tx) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.immediate(f, true)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction that is always rolled
    /// back: `--dry-run` runs the real code path and writes nothing.
    pub fn rehearse<T>(&self, f: impl FnOnce(&Tx) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.immediate(f, false)
    }

    /// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite; on
    /// PostgreSQL `BEGIN` and the write lock ([`PG_WRITE_LOCK`]), the
    /// same meaning: one writer at a time, waiting its turn.
    fn begin(&self) -> anyhow::Result<Open<'_>> {
        let open = Open {
            conn: &self.conn,
            done: false,
        };
        match self.dialect() {
            Dialect::Sqlite => self.conn.execute_batch("BEGIN IMMEDIATE")?,
            Dialect::Postgres => self.conn.execute_batch(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})"
            ))?,
        }
        Ok(open)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction (a savepoint inside a
    /// rehearsal) and commits it when `commit` and `f` succeeded; otherwise
    /// rolls it back. The one body of [`Db::write`] and [`Db::rehearse`].
    fn immediate<T>(
        &self,
        f: impl FnOnce(&Tx) -> anyhow::Result<T>,
        commit: bool,
    ) -> anyhow::Result<T> {
        if self.rehearsing.get() {
            return self.savepoint(f, !commit);
        }
        let open = self.begin()?;
        let sequences = if commit {
            Vec::new()
        } else {
            self.sequences()?
        };
        let out = f(&Tx {
            db: self,
            ended: Default::default(),
        });
        match (&out, commit) {
            (Ok(_), true) => open.finish("COMMIT")?,
            (Ok(_), false) => {
                self.restore_sequences(&sequences)?;
                open.finish("ROLLBACK")?
            }
            // `f`'s error is the one to report: SQLite may already
            // have rolled back (SQLITE_FULL, an I/O error).
            (Err(_), _) => drop(open.finish("ROLLBACK")),
        }
        out
    }

    /// Runs `f` — a whole pass that may write many times — inside one
    /// `BEGIN IMMEDIATE` transaction that is rolled back at the end: every
    /// [`Db::write`] in it becomes a savepoint, so later steps see earlier
    /// ones and nothing is committed. `--dry-run` of a multi-step command
    /// (ingest, deliver, events replay, work-once) runs the real code path
    /// this way. Code with effects outside the database asks
    /// [`Db::is_rehearsal`] and only reports what it would do.
    ///
    /// Errors: `f`'s error (after the rollback); database errors.
    pub fn rehearse_all<T>(&self, f: impl FnOnce(&Db) -> anyhow::Result<T>) -> anyhow::Result<T> {
        anyhow::ensure!(!self.rehearsing.get(), "a rehearsal is already running");
        let open = self.begin()?;
        let sequences = self.sequences()?;
        self.rehearsing.set(true);
        let out = f(self);
        self.rehearsing.set(false);
        self.restore_sequences(&sequences)?;
        open.finish("ROLLBACK")?;
        out
    }

    /// PostgreSQL's identity sequences and their last values (`None`: not
    /// used yet); empty on SQLite, whose rowids roll back with their rows.
    fn sequences(&self) -> anyhow::Result<Vec<(String, Option<i64>)>> {
        if self.dialect() != Dialect::Postgres {
            return Ok(Vec::new());
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT CAST(quote_ident(schemaname) || '.' || quote_ident(sequencename) AS TEXT), last_value \
                 FROM pg_sequences WHERE schemaname=current_schema()",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    /// Puts the sequences back where [`Db::sequences`] found them, before a
    /// rehearsal's rollback: a sequence is not transactional, and a dry
    /// run must leave the ids the real run will take (and say) alone. The
    /// rehearsal holds the write lock, so no other writer took one since.
    fn restore_sequences(&self, sequences: &[(String, Option<i64>)]) -> anyhow::Result<()> {
        for (name, last) in sequences {
            let (value, called) = last.map_or((1, false), |v| (v, true));
            self.conn.query_row(
                "SELECT setval(CAST(CAST(?1 AS TEXT) AS regclass), ?2, ?3)",
                crate::sql::params![name, value, called],
                |_| Ok(()),
            )?;
        }
        Ok(())
    }

    /// Whether this is a rehearsal ([`Db::rehearse_all`]): effects outside
    /// the database (git, HTTP, agents, files) must not happen.
    pub fn is_rehearsal(&self) -> bool {
        self.rehearsing.get()
    }

    fn savepoint<T>(
        &self,
        f: impl FnOnce(&Tx) -> anyhow::Result<T>,
        always_roll_back: bool,
    ) -> anyhow::Result<T> {
        self.conn.execute_batch("SAVEPOINT orch_step")?;
        let out = f(&Tx {
            db: self,
            ended: Default::default(),
        });
        if out.is_err() || always_roll_back {
            self.conn
                .execute_batch("ROLLBACK TO orch_step; RELEASE orch_step")?;
        } else {
            self.conn.execute_batch("RELEASE orch_step")?;
        }
        out
    }

    /// Runs `f` for real ([`Db::write`]) or as a rehearsal ([`Db::rehearse`]).
    pub fn write_or_rehearse<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&Tx) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if dry_run {
            self.rehearse(f)
        } else {
            self.write(f)
        }
    }

    /// The raw connection, for read-only queries.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// `PRAGMA integrity_check` and `PRAGMA foreign_key_check` results:
    /// `("ok", 0)` for a healthy database. PostgreSQL checks both on
    /// every write, so it is always `("ok", 0)` there.
    pub fn integrity(&self) -> anyhow::Result<(String, usize)> {
        if self.dialect() == Dialect::Postgres {
            return Ok(("ok".to_string(), 0));
        }
        let ok: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        let fk = self
            .conn
            .prepare("PRAGMA foreign_key_check")?
            .query_map([], |_| Ok(()))?
            .count();
        Ok((ok, fk))
    }
}

/// A PostgreSQL session for orch: `lock_timeout` at the busy timeout (a
/// lock not had by then is exit 75, as SQLITE_BUSY), and
/// `idle_in_transaction_session_timeout`, so a stopped host (SIGSTOP)
/// never holds row or advisory locks for long (DESIGN §10), and
/// `synchronous_commit = on` whatever the role or database says: a commit
/// (a delivery's 202 among them) is durable when it returns.
fn connect_postgres(url: &str, busy_timeout_ms: u64, read_only: bool) -> anyhow::Result<Db> {
    let conn = Conn::connect_postgres(url)
        .with_context(|| format!("connecting to PostgreSQL at {}", crate::sql::redact(url)))?;
    let lock = if busy_timeout_ms == 0 {
        "0".to_string()
    } else {
        format!("{busy_timeout_ms}ms")
    };
    conn.execute_batch(&format!(
        "SET lock_timeout = '{lock}'; SET idle_in_transaction_session_timeout = '60s'; \
         SET client_min_messages = warning; SET synchronous_commit = on{}",
        if read_only {
            "; SET default_transaction_read_only = on"
        } else {
            ""
        }
    ))?;
    Ok(Db {
        conn,
        rehearsing: Default::default(),
    })
}

/// Errors with [`Error::NotInitialised`] unless `path` is a file.
/// The one connection set-up of every `open`: `target` (a path, or a
/// `file:` URI with `SQLITE_OPEN_URI`) opened with `flags`, the busy
/// timeout, the statement cache, foreign keys, and `synchronous=FULL` on a
/// writable connection (a delivery is durable before the shim answers).
/// `path` names the database in errors.
fn connect(
    target: &std::ffi::OsStr,
    path: &Path,
    flags: OpenFlags,
    busy_timeout_ms: u64,
) -> anyhow::Result<Db> {
    let writable = flags.contains(OpenFlags::SQLITE_OPEN_READ_WRITE);
    let conn = Connection::open_with_flags(target, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| {
            format!(
                "opening database {}{}",
                path.display(),
                if writable { "" } else { " read-only" }
            )
        })?;
    conn.busy_timeout(Duration::from_millis(busy_timeout_ms))?;
    // The hot queries are `prepare_cached` statements; rusqlite's default
    // of 16 can be fewer than one worker cycle uses, and an LRU cache
    // smaller than a loop's working set misses on every statement.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if writable {
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(Db {
        conn: Conn::Sqlite(conn),
        rehearsing: Default::default(),
    })
}

fn require_file(path: &Path) -> anyhow::Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::NotInitialised {
            path: path.to_path_buf(),
        }
        .into())
    }
}

/// `path` for an SQLite `file:` URI: `%`, `?` and `#` escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Whether SQLite could not open the file or its WAL index (a read-only
/// folder without `-shm`).
fn is_cantopen(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| crate::sql::Error::test_cause(c, crate::sql::Error::is_cantopen))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A raw SQLite connection to a new database at `path` whose schema is
    /// that of migration `version` (applied one by one, as an older orch
    /// left it): where a migration test puts its old rows.
    pub(crate) fn sqlite_at_schema(path: &Path, version: usize) -> Connection {
        let c = Connection::open(path).unwrap();
        for sql in &MIGRATIONS[..version] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", version as i64)
            .unwrap();
        c
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = Db::open(&path, 1000).unwrap();
        assert_eq!(db.user_version().unwrap(), schema_version());
        assert_eq!(db.migrate().unwrap(), 0);
        drop(db);
        let db = Db::open(&path, 1000).unwrap();
        assert_eq!(db.integrity().unwrap(), ("ok".to_string(), 0));
    }

    /// Migration 20 rebuilds `inbox` without its list of sources: every
    /// row, id, index and the transitions that point at a row survive, a
    /// source the old schema refused is stored, and foreign keys hold.
    #[test]
    fn migration_20_keeps_the_inbox_and_drops_its_source_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let c = sqlite_at_schema(&path, 19);
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        c.execute_batch(
            "INSERT INTO projects (name, tracker, forge, default_branch, clone_url, synced_at_ms)
                 VALUES ('p','plane','local','main','/r',0);
             INSERT INTO tasks (id, project, tracker_issue_id, sequence, title, stage, version,
                                branch, worktree, created_at_ms, updated_at_ms)
                 VALUES (1,'p','i1',1,'t','todo',1,'b','/w',0,0);
             INSERT INTO inbox (id, source, event, delivery_id, body_sha256, headers, body,
                                received_at_ms, processed_at_ms, outcome)
                 VALUES (7,'plane','issue','d1','h1','{}',x'7b7d',5,6,'moved'),
                        (8,'gitea','pull_request','d2','h2','{}',x'7b7d',9,NULL,NULL);
             INSERT INTO transitions (task_id, from_stage, to_stage, version, actor, inbox_id, at_ms)
                 VALUES (1,NULL,'todo',1,'webhook',7,5);",
        )
        .unwrap();
        let refused = c.execute(
            "INSERT INTO inbox (source, event, delivery_id, body_sha256, headers, body, received_at_ms)
             VALUES ('linear','issue','d3','h3','{}',x'7b7d',10)",
            [],
        );
        assert!(refused.is_err(), "schema 19 refuses an unknown source");
        drop(c);

        let db = Db::open(&path, 1000).unwrap();
        assert_eq!(db.user_version().unwrap(), schema_version());
        assert_eq!(db.integrity().unwrap(), ("ok".to_string(), 0));
        let rows: Vec<(i64, String, String, Option<String>)> = db
            .conn
            .prepare("SELECT id, source, delivery_id, outcome FROM inbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (7, "plane".into(), "d1".into(), Some("moved".into())),
                (8, "gitea".into(), "d2".into(), None),
            ]
        );
        let via: String = db
            .conn
            .query_row(
                "SELECT i.delivery_id FROM transitions t JOIN inbox i ON i.id=t.inbox_id",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(via, "d1");
        let indexes: Vec<String> = db
            .conn
            .prepare("SELECT name FROM sqlite_schema WHERE type='index' AND tbl_name='inbox' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["inbox_hash", "inbox_pending"]);
        db.conn
            .execute(
                "INSERT INTO inbox (source, event, delivery_id, body_sha256, headers, body, received_at_ms)
                 VALUES ('linear','issue','d3','h3','{}',x'7b7d',10)",
                [],
            )
            .unwrap();
        let duplicate = db.conn.execute(
            "INSERT INTO inbox (source, event, delivery_id, body_sha256, headers, body, received_at_ms)
             VALUES ('plane','issue','d1','h9','{}',x'7b7d',11)",
            [],
        );
        assert!(duplicate.is_err(), "(source, delivery_id) stays unique");
        let dangling = db.conn.execute(
            "INSERT INTO transitions (task_id, to_stage, version, actor, inbox_id, at_ms)
             VALUES (1,'todo',2,'webhook',99,5)",
            [],
        );
        assert!(
            dangling.is_err(),
            "foreign keys are on again after migrating"
        );
    }

    /// Migration 21 reads the cause of each older transition from the
    /// reason text orch wrote for it (and, where the text is the person's,
    /// from its shape) once; what says nothing recognisable is `other`.
    #[test]
    fn migration_21_reads_old_transitions_causes_from_their_reasons() {
        use crate::model::TransitionCause as C;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let c = sqlite_at_schema(&path, 20);
        c.execute_batch(
            "INSERT INTO projects (name, tracker, forge, default_branch, clone_url, synced_at_ms) \
             VALUES ('p', 'local', 'local', 'main', '/r', 1);
             INSERT INTO tasks (project, tracker_issue_id, sequence, title, stage, version, branch, worktree, \
             created_at_ms, updated_at_ms) VALUES ('p', '1', 1, 't', 'deploy', 1, 'orch/p-1', '/w', 1, 1);",
        )
        .unwrap();
        let rows: &[(Option<&str>, &str, &str, &str, C)] = &[
            (
                None,
                "analysis",
                "webhook",
                "work item in progress",
                C::WorkItemStarted,
            ),
            (
                Some("analysis"),
                "architecture",
                "human",
                "approved by hand",
                C::ApprovedByHand,
            ),
            (
                Some("analysis"),
                "analysis",
                "webhook",
                "Rejected in the tracker",
                C::TrackerRejected,
            ),
            (
                Some("analysis"),
                "architecture",
                "reconciler",
                "Approved in the tracker",
                C::TrackerApproved,
            ),
            (
                Some("architecture"),
                "development",
                "worker",
                "architecture gate passed",
                C::GatePassed,
            ),
            (
                Some("development"),
                "review",
                "webhook",
                "CI success on abc",
                C::GatePassed,
            ),
            (
                Some("review"),
                "development",
                "worker",
                "changes requested: fix it",
                C::GateSentBack,
            ),
            (
                Some("development"),
                "development",
                "worker",
                "development job 4 failed after 3 attempts: boom",
                C::JobFailed,
            ),
            (
                Some("development"),
                "development",
                "reaper",
                "development job 4 could not be finished after 3 attempts: finalize failed: x",
                C::FinalizeFailed,
            ),
            (
                Some("development"),
                "development",
                "human",
                "retry by hand",
                C::RetriedByHand,
            ),
            (
                Some("review"),
                "testing",
                "reconciler",
                "reconcile: review gate passed",
                C::GatePassed,
            ),
            (
                Some("testing"),
                "deploy-staging",
                "human",
                "looks fine",
                C::AdvancedByHand,
            ),
            (
                Some("deploy-staging"),
                "deploy-staging",
                "worker",
                "main moved",
                C::Restage,
            ),
            (
                Some("deploy-staging"),
                "deploy",
                "human",
                "merge gate passed (by hand): main contains the tested head abc",
                C::MergedByHand,
            ),
            (
                Some("deploy"),
                "development",
                "human",
                "start over",
                C::RolledBackByHand,
            ),
            (
                Some("development"),
                "development",
                "human",
                "not wanted",
                C::Other,
            ),
        ];
        for (i, (from, to, actor, reason, _)) in rows.iter().enumerate() {
            c.execute(
                "INSERT INTO transitions (task_id, from_stage, to_stage, version, actor, reason, at_ms) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, 1)",
                rusqlite::params![from, to, i as i64 + 1, actor, reason],
            )
            .unwrap();
        }
        drop(c);
        let db = Db::open(&path, 1000).unwrap();
        let got: Vec<_> = db
            .transitions(1)
            .unwrap()
            .into_iter()
            .map(|t| (t.reason, t.cause))
            .collect();
        let want: Vec<_> = rows.iter().map(|r| (r.3.to_string(), r.4)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        drop(Db::open(&path, 1000).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = Db::open(&path, 1000).err().unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("99") && msg.contains(&schema_version().to_string()),
            "{msg}"
        );
    }
}
