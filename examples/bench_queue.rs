//! Benchmark of the job queue through orch's own code (issue 11): enqueue
//! N tasks as ingest does, then claim and complete every job through the
//! transition rule until each task is done; beside it, in the same run and
//! on the same disk, raw rusqlite claim+complete in the same mode.
//!
//! ```sh
//! cargo run --release --example bench_queue -- [--db PATH] [--n 1000] [--rounds 1]
//! ```
//!
//! What is measured:
//!
//! - **enqueue**: one `BEGIN IMMEDIATE` transaction per task holding
//!   `pipeline::create_task` (the task, its creation transition, the
//!   analyst job, the tracker comment in the outbox), after
//!   `Tx::sync_project`, as `orch ingest` does for a work item.
//! - **drain**: cycles until the queue is empty. A **cycle** is one job:
//!   transaction 1 claims it (`pipeline::job::claim_next`, as the worker
//!   does), transaction 2 completes it (`pipeline::apply` with a `Move` to
//!   the next stage finishing that job: CAS of the task, transition row,
//!   `running → done`, the next stage's job, outbox rows, the merge lease
//!   rule). A task goes analysis → architecture → … → deploy → done: 7
//!   cycles, 14 commits. No agent runs, no gate, no git: the store and the
//!   rules only.
//! - **raw**: the same numbers of tasks, cycles and transactions per
//!   cycle with plain rusqlite on a minimal schema (tasks, jobs, the same
//!   `(status, available_at_ms)` index): claim = one `UPDATE … WHERE id =
//!   (SELECT oldest queued) RETURNING`, complete = mark the job done, move
//!   the task, insert the next job. Same `journal_mode=WAL`, same
//!   `synchronous` as `Db::open` sets (read back from both connections and
//!   printed), same busy timeout.
//!
//! Each round builds both databases afresh (`PATH` and `PATH.raw.db`,
//! deleted afterwards unless `--keep`) and runs the two sides step by
//! step, alternating (an orch enqueue, a raw enqueue, …; an orch cycle, a
//! raw cycle, …, who goes first swapping each step), so the rest of a
//! shared machine — other processes' fsyncs above all — weighs on both
//! alike. A side's `enqueue_s` and `drain_s` are the sums of its own
//! steps' times. With several rounds the figures are medians. The last
//! line is JSON:
//! `{"enqueue_s", "drain_s", "done", "mode", "cycles", "cycles_per_s",
//! "raw": {…}, "ratio": orch cycles/s ÷ raw cycles/s, …}`.
//!
//! It measures; it asserts no time.
//!
//! ## PostgreSQL (issue 25)
//!
//! ```sh
//! scripts/pg-cluster start /var/tmp/orch-pg    # prints the URL
//! cargo run --release --example bench_queue -- --postgres URL [--n 1000] [--rounds 3] [--procs 1,2,4]
//! ```
//!
//! With `--postgres URL` both sides run on the PostgreSQL server of URL,
//! each round in two parts:
//!
//! - **one process, alternated**, as the SQLite mode: orch in a database
//!   of its own (`CREATE DATABASE orch_bench_<pid>_<k>` on that server,
//!   migrated by `Db::open`, dropped after the round) through the same
//!   `create_task`, `claim_next` and `apply` as on SQLite; raw on fresh
//!   minimal tables in a schema of its own in URL's database
//!   (`orch_bench_raw_<pid>`, dropped at the end); step by step,
//!   alternating, so the machine's noise hits both alike. The ratio is
//!   orch cycles/s ÷ raw cycles/s.
//! - **P worker processes** for each P in `--procs`: N tasks enqueued by
//!   this process, then P workers (this example again: `--pg-worker URL
//!   SCHEMA` for raw, `--orch-worker DB_URL` for orch), each with one
//!   connection, released together, each looping claim + complete until
//!   nothing is claimable; the figure is the cycles (claims) per second of
//!   wall time from the release to the last worker's end. Raw and orch
//!   drain in turn (who goes first swaps each round), orch again in a
//!   fresh database.
//!
//! Raw's claim is one transaction holding `UPDATE jobs … WHERE id =
//! (SELECT id … ORDER BY available_at_ms, id LIMIT 1 FOR UPDATE SKIP
//! LOCKED) RETURNING …`; a complete is one transaction marking the job
//! done, moving the task and inserting the next stage's job: the same 7
//! cycles and 14 commits per task as on SQLite. Orch's transactions are
//! its own (`Db::write`: `BEGIN`, then the one write lock
//! `pg_advisory_xact_lock`). Both sides `ANALYZE` their tables between
//! the enqueue and the drain, as autovacuum would on a live queue.
//! Durable: raw sessions set `synchronous_commit = on`, orch's session
//! must show it on (orch does not set it: the server's default), and the
//! run refuses a server with `fsync` off. After each drain the run checks
//! every task done and every job claimed exactly once (raw: a `claims`
//! counter; orch: `epoch = 1` and `status = 'done'`). The last line is
//! JSON, the SQLite mode's keys for the alternated part (`cycles_per_s`,
//! `raw`, `ratio`, …) plus `{"postgres": {"server", "fsync",
//! "synchronous_commit", "wal_sync_method", "cycles", "procs": {"1":
//! {"cycles_per_s", "enqueue_per_s", …, "orch": {…}, "ratio"}, …}}}`
//! (raw's figures per P, orch's beside them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use orch::config::Config;
use orch::db::{Db, ProjectRow};
use orch::pipeline::{self, Actor, Move, Moved, Policy, Stage, WorkItem};
use orch::sql::redact;
use orch::sql::Dialect;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::json;

/// Stages a task passes through (analysis … deploy): one job each.
const CYCLES_PER_TASK: usize = 7;

struct Args {
    db: Option<PathBuf>,
    n: usize,
    rounds: usize,
    keep: bool,
    profile: bool,
    /// `--postgres URL`: the raw PostgreSQL ceiling instead.
    postgres: Option<String>,
    /// Worker processes per PostgreSQL drain (`--procs 1,2,4`).
    procs: Vec<usize>,
    /// `--pg-worker URL SCHEMA`: this process is one of the raw drain's workers.
    pg_worker: Option<(String, String)>,
    /// `--orch-worker URL`: this process is one of orch's drain's workers.
    orch_worker: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        db: None,
        n: 1000,
        rounds: 1,
        keep: false,
        profile: false,
        postgres: None,
        procs: vec![1, 2, 4],
        pg_worker: None,
        orch_worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--db" => a.db = Some(PathBuf::from(value("--db")?)),
            "--n" => {
                let v = value("--n")?;
                a.n = v
                    .parse()
                    .with_context(|| format!("--n: not a number: {v:?}"))?;
            }
            "--rounds" => {
                let v = value("--rounds")?;
                a.rounds = v
                    .parse()
                    .with_context(|| format!("--rounds: not a number: {v:?}"))?;
            }
            "--keep" => a.keep = true,
            "--profile" => a.profile = true,
            "--postgres" => a.postgres = Some(value("--postgres")?),
            "--procs" => {
                let v = value("--procs")?;
                a.procs = v
                    .split(',')
                    .map(|p| p.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .ok()
                    .filter(|p: &Vec<usize>| !p.is_empty() && !p.contains(&0))
                    .with_context(|| format!("--procs: not a list of positive numbers: {v:?}"))?;
            }
            "--pg-worker" => {
                let url = value("--pg-worker")?;
                a.pg_worker = Some((url, value("--pg-worker")?));
            }
            "--orch-worker" => a.orch_worker = Some(value("--orch-worker")?),
            "-h" | "--help" => {
                println!(
                    "usage: bench_queue [--db PATH] [--n 1000] [--rounds 1] [--keep] [--profile]\n\
                     --db PATH: orch's database file (must not exist; the raw one is PATH.raw.db);\n\
                     \x20          default: a fresh temp folder\n\
                     --n N: tasks; each is 7 claim+complete cycles (14 commits)\n\
                     --rounds R: orch then raw, R times on fresh files; medians are reported\n\
                     --keep: keep the last round's databases\n\
                     --profile: no timing; count the WAL frames and statements of each claim\n\
                     \x20          and complete transaction (checkpoints off), print the\n\
                     \x20          statements of one claim and one complete with their query plans\n\
                     --postgres URL: on the PostgreSQL server of URL instead: orch (a fresh\n\
                     \x20          database per drain) against raw, one process alternated, then\n\
                     \x20          N tasks drained by each number of worker processes in --procs\n\
                     \x20          (default 1,2,4); R rounds, medians"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(
        a.n >= 1 && a.rounds >= 1,
        "--n and --rounds must be at least 1"
    );
    Ok(a)
}

/// One side's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    enqueue: Duration,
    drain: Duration,
    /// Time inside the claim transactions (begin to commit) while draining.
    claim: Duration,
    /// Time inside the complete transactions.
    complete: Duration,
    cycles: usize,
    done: usize,
}

impl Figures {
    fn cycles_per_s(&self) -> f64 {
        self.cycles as f64 / self.drain.as_secs_f64()
    }
    fn enqueue_per_s(&self, n: usize) -> f64 {
        n as f64 / self.enqueue.as_secs_f64()
    }
}

/// `<synchronous>/<journal_mode>` of a connection, e.g. `FULL/WAL`.
fn mode(conn: &Connection) -> anyhow::Result<String> {
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let sync = match sync {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "?",
    };
    Ok(format!("{sync}/{}", journal.to_uppercase()))
}

// ------------------------------------------------------------ orch

const CONFIG: &str = "[agents.default]\nargv = [\"true\"]\n\n[[projects]]\nname = \"bench\"\n\
    tracker = \"local\"\nforge = \"local\"\nclone_url = \"/nonexistent/bench.git\"\n\
    default_branch = \"main\"\ntest_command = [\"true\"]\n";

/// The timed steps of one side: enqueue a task, run a cycle.
trait Side {
    /// Enqueues work item `i` in one transaction.
    fn enqueue(&mut self, i: usize) -> anyhow::Result<()>;
    /// Between the enqueue and the drain: PostgreSQL sides `ANALYZE`
    /// their tables, as autovacuum would on a live queue (without
    /// statistics a fresh table's claim may not use the index); nothing
    /// on SQLite.
    fn settle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Claims a job (transaction 1): `(job, task, stage)`, `None` when the
    /// queue is empty.
    fn claim(&mut self) -> anyhow::Result<Option<Claimed>>;
    /// Completes a claimed job (transaction 2).
    fn complete(&mut self, c: Claimed) -> anyhow::Result<()>;
    /// Tasks done.
    fn done(&mut self) -> anyhow::Result<usize>;

    /// Claims a job and completes it, timing both transactions into `f`;
    /// `None` when the queue is empty (after the claim transaction).
    fn cycle(&mut self, f: &mut Figures) -> anyhow::Result<Option<()>> {
        let t = Instant::now();
        let claimed = self.claim()?;
        f.claim += t.elapsed();
        let Some(c) = claimed else { return Ok(None) };
        let t = Instant::now();
        self.complete(c)?;
        f.complete += t.elapsed();
        f.cycles += 1;
        Ok(Some(()))
    }
}

/// An SQLite side, for `--profile`: its connection.
trait Profiled: Side {
    fn conn(&self) -> &Connection;
}

/// A claimed job: `(job id, task id, stage number)` (the stage number is
/// the raw side's; orch reads its task).
type Claimed = (i64, i64, i64);

struct Orch {
    db: Db,
    config: Config,
    worktrees: PathBuf,
    worker: (String, i64, i64),
    policy: Policy,
}

impl Orch {
    /// Opens (creating and migrating) orch's database at `target` (an
    /// SQLite path or a PostgreSQL URL) and registers the project;
    /// `worktrees` only names the tasks' worktree paths (nothing is made
    /// there).
    fn open(target: &Path, worktrees: PathBuf) -> anyhow::Result<Orch> {
        let db = Db::open(target, 5000)?;
        let config = Config::parse(CONFIG)?;
        let p = &config.projects[0];
        db.write(|tx| tx.sync_project(&ProjectRow::of(p), orch::clock::now_ms()))?;
        Orch::with(db, config, worktrees)
    }

    /// A worker process's side (`--orch-worker`): the database another
    /// process made, opened as `orch work` opens it.
    fn attach(target: &Path) -> anyhow::Result<Orch> {
        let db = Db::open_existing(target, 5000)?;
        Orch::with(db, Config::parse(CONFIG)?, PathBuf::from("/nonexistent"))
    }

    fn with(db: Db, config: Config, worktrees: PathBuf) -> anyhow::Result<Orch> {
        Ok(Orch {
            db,
            config,
            worktrees,
            worker: orch::process::identity(),
            policy: Policy {
                max_developer_retries: 3,
            },
        })
    }

    /// SQLite: `<synchronous>/<journal_mode>`; PostgreSQL:
    /// `synchronous_commit=<value>` of orch's own session.
    fn mode(&self) -> anyhow::Result<String> {
        match self.db.dialect() {
            Dialect::Sqlite => mode(self.db.sqlite()),
            Dialect::Postgres => {
                let v: String = self.db.conn().query_row(
                    "SELECT current_setting('synchronous_commit')",
                    [],
                    |r| r.get(0),
                )?;
                Ok(format!("synchronous_commit={v}"))
            }
        }
    }
}

impl Side for Orch {
    fn enqueue(&mut self, i: usize) -> anyhow::Result<()> {
        let item = WorkItem {
            tracker_issue_id: format!("{i}"),
            sequence: i as i64,
            title: format!("Work item {i}"),
            body: "Make the widget faster.".into(),
        };
        let (_, created) = self.db.write(|tx| {
            pipeline::create_task(
                tx,
                &self.config.projects[0],
                &item,
                &self.worktrees,
                Actor::Webhook,
                orch::clock::now_ms(),
            )
        })?;
        ensure!(created, "work item {i} already had a task");
        Ok(())
    }

    fn claim(&mut self) -> anyhow::Result<Option<Claimed>> {
        let worker = (self.worker.0.as_str(), self.worker.1, self.worker.2);
        let claimed = self.db.write(|tx| {
            pipeline::job::claim_next(
                tx,
                &pipeline::spend::Limits {
                    global: u32::MAX,
                    ..Default::default()
                },
                None,
                None,
                worker,
                orch::clock::now_ms(),
            )
        })?;
        Ok(claimed.map(|j| (j.id, j.task_id, 0)))
    }

    fn complete(&mut self, (job, task, _): Claimed) -> anyhow::Result<()> {
        let moved = self.db.write(|tx| {
            let task = tx.task(task)?.context("task vanished")?;
            let epoch = tx.job(job)?.context("job vanished")?.epoch;
            let m = Move::new(
                &task,
                task.stage.next(),
                Actor::Worker,
                orch::pipeline::TransitionCause::GatePassed,
                "bench",
            )
            .finishing(job, epoch);
            pipeline::apply(tx, self.policy, &m, orch::clock::now_ms())
        })?;
        ensure!(matches!(moved, Moved::Applied { .. }), "job {job} lost");
        Ok(())
    }

    fn settle(&mut self) -> anyhow::Result<()> {
        if self.db.dialect() == Dialect::Postgres {
            self.db.conn().execute_batch("ANALYZE")?;
        }
        Ok(())
    }

    fn done(&mut self) -> anyhow::Result<usize> {
        Ok(self.db.conn().query_row(
            "SELECT COUNT(*) FROM tasks WHERE stage=?1",
            [Stage::Done],
            |r| r.get(0),
        )?)
    }
}

impl Profiled for Orch {
    fn conn(&self) -> &Connection {
        self.db.sqlite()
    }
}

// ------------------------------------------------------------ raw

const RAW_SCHEMA: &str = "
CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL, stage INTEGER NOT NULL,
                    version INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, stage INTEGER NOT NULL,
                   status TEXT NOT NULL, available_at_ms INTEGER NOT NULL, worker_pid INTEGER,
                   claimed_at_ms INTEGER, finished_at_ms INTEGER);
CREATE INDEX jobs_status ON jobs(status, available_at_ms);
";

struct Raw {
    conn: Connection,
    pid: i64,
}

impl Raw {
    fn mode(&self) -> anyhow::Result<String> {
        mode(&self.conn)
    }

    /// Opens a raw connection the way `Db::open` does: WAL, `synchronous`
    /// copied from orch's connection (`sync`), the same busy timeout.
    fn open(path: &Path, sync: &str) -> anyhow::Result<Raw> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_millis(5000))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", sync)?;
        conn.execute_batch(RAW_SCHEMA)?;
        Ok(Raw {
            conn,
            pid: std::process::id() as i64,
        })
    }
}

impl Side for Raw {
    fn enqueue(&mut self, i: usize) -> anyhow::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let t = orch::clock::now_ms();
        tx.prepare_cached(
            "INSERT INTO tasks (title, stage, version, updated_at_ms) VALUES (?1, 0, 1, ?2)",
        )?
        .execute(params![format!("Work item {i}"), t])?;
        let task = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT INTO jobs (task_id, stage, status, available_at_ms) VALUES (?1, 0, 'queued', ?2)",
        )?
        .execute(params![task, t])?;
        tx.commit()?;
        Ok(())
    }

    fn claim(&mut self) -> anyhow::Result<Option<Claimed>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let claimed: Option<Claimed> = tx
            .prepare_cached(
                "UPDATE jobs SET status='running', worker_pid=?2, claimed_at_ms=?1 WHERE id = \
                 (SELECT id FROM jobs WHERE status='queued' AND available_at_ms<=?1 \
                  ORDER BY available_at_ms, id LIMIT 1) RETURNING id, task_id, stage",
            )?
            .query_row(params![orch::clock::now_ms(), self.pid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        tx.commit()?;
        Ok(claimed)
    }

    fn complete(&mut self, (job, task, stage): Claimed) -> anyhow::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = orch::clock::now_ms();
        let n = tx
            .prepare_cached(
                "UPDATE jobs SET status='done', finished_at_ms=?2 WHERE id=?1 AND status='running'",
            )?
            .execute(params![job, at])?;
        ensure!(n == 1, "raw job {job} was not running");
        tx.prepare_cached(
            "UPDATE tasks SET stage=stage+1, version=version+1, updated_at_ms=?3 WHERE id=?1 AND stage=?2",
        )?
        .execute(params![task, stage, at])?;
        if stage + 1 < CYCLES_PER_TASK as i64 {
            tx.prepare_cached(
                "INSERT INTO jobs (task_id, stage, status, available_at_ms) VALUES (?1, ?2, 'queued', ?3)",
            )?
            .execute(params![task, stage + 1, at])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn done(&mut self) -> anyhow::Result<usize> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM tasks WHERE stage=?1",
            [CYCLES_PER_TASK as i64],
            |r| r.get(0),
        )?)
    }
}

impl Profiled for Raw {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// One round: both sides step by step, alternating (orch first on odd
/// steps, raw first on even ones), so a disk or CPU hiccup from the rest
/// of the machine hits both alike. Each side's time is the sum of its own
/// steps.
fn round(orch: &mut dyn Side, raw: &mut dyn Side, n: usize) -> anyhow::Result<(Figures, Figures)> {
    let (mut o, mut r) = (Figures::default(), Figures::default());
    for i in 1..=n {
        let (a, b): (&mut dyn Side, &mut dyn Side) = if i % 2 == 1 {
            (&mut *orch, &mut *raw)
        } else {
            (&mut *raw, &mut *orch)
        };
        let t = Instant::now();
        a.enqueue(i)?;
        let ta = t.elapsed();
        let t = Instant::now();
        b.enqueue(i)?;
        let tb = t.elapsed();
        let (to, tr) = if i % 2 == 1 { (ta, tb) } else { (tb, ta) };
        o.enqueue += to;
        r.enqueue += tr;
    }
    orch.settle()?;
    raw.settle()?;
    let (mut orch_open, mut raw_open) = (true, true);
    let mut step = 0usize;
    while orch_open || raw_open {
        step += 1;
        let order: [bool; 2] = if step % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for is_orch in order {
            if is_orch && orch_open {
                let t = Instant::now();
                orch_open = orch.cycle(&mut o)?.is_some();
                o.drain += t.elapsed();
            } else if !is_orch && raw_open {
                let t = Instant::now();
                raw_open = raw.cycle(&mut r)?.is_some();
                r.drain += t.elapsed();
            }
        }
    }
    o.done = orch.done()?;
    r.done = raw.done()?;
    Ok((o, r))
}

// ------------------------------------------------------------ profile

/// SQL of the statements run on the profiled connections, in order
/// (`--profile`; both sides share the trace callback, and run one at a
/// time).
static TRACED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn trace(e: rusqlite::trace::TraceEvent<'_>) {
    if let rusqlite::trace::TraceEvent::Stmt(_, sql) = e {
        if let Ok(mut v) = TRACED.lock() {
            v.push(sql.to_string());
        }
    }
}

fn traced() -> Vec<String> {
    TRACED
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

/// Frames and statements of one kind of transaction (claim or complete).
#[derive(Default)]
struct Tally {
    frames: Vec<u64>,
    statements: Vec<usize>,
    /// The statements of the first one.
    first: Vec<String>,
    /// How many frames wrote each page (number), over all of them.
    pages: std::collections::BTreeMap<u32, u64>,
}

impl Tally {
    /// One transaction: the WAL bytes it appended (whole frames of
    /// `page` bytes plus a 24-byte header starting with the page number)
    /// and its statements.
    fn add(&mut self, wal: &[u8], page: usize, statements: Vec<String>) {
        let frames = wal.chunks(page + 24).filter(|f| f.len() >= 4);
        let mut n = 0;
        for f in frames {
            *self
                .pages
                .entry(u32::from_be_bytes([f[0], f[1], f[2], f[3]]))
                .or_default() += 1;
            n += 1;
        }
        self.frames.push(n);
        self.statements.push(statements.len());
        if self.first.is_empty() {
            self.first = statements;
        }
    }

    /// Frames per transaction by b-tree (table or index, `dbstat`'s
    /// `names` of each page), most first.
    fn by_btree(&self, names: &std::collections::HashMap<u32, String>) -> String {
        let mut by: std::collections::BTreeMap<&str, u64> = Default::default();
        for (p, n) in &self.pages {
            *by.entry(names.get(p).map_or("(free or new)", String::as_str))
                .or_default() += n;
        }
        let mut by: Vec<_> = by.into_iter().collect();
        by.sort_by_key(|b| std::cmp::Reverse(b.1));
        let k = self.frames.len().max(1) as f64;
        by.iter()
            .map(|(name, n)| format!("{name} {:.2}", *n as f64 / k))
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn show(&self, what: &str) -> String {
        let k = self.frames.len().max(1) as f64;
        let f: u64 = self.frames.iter().sum();
        let st: usize = self.statements.iter().sum();
        format!(
            "{what}: {:.2} WAL frames per commit ({}–{}), {:.2} statements per transaction",
            f as f64 / k,
            self.frames.iter().min().unwrap_or(&0),
            self.frames.iter().max().unwrap_or(&0),
            st as f64 / k
        )
    }
}

/// `--profile`: each side on its own fresh file with checkpoints off, so
/// the WAL only grows; a commit's frames are its growth ÷ (page size + 24).
/// Prints the frames and statements per claim and per complete, then the
/// statements of one claim and one complete with their query plans.
fn profile(path: &Path, raw_path: &Path, n: usize) -> anyhow::Result<()> {
    let mut orch = Orch::open(path, path.with_extension("worktrees"))?;
    let sync = orch.mode()?.split('/').next().unwrap_or("FULL").to_string();
    let mut raw = Raw::open(raw_path, &sync)?;
    let sides: [(&str, &mut dyn Profiled, &Path); 2] =
        [("orch", &mut orch, path), ("raw", &mut raw, raw_path)];
    for (name, side, file) in sides {
        for i in 1..=n {
            side.enqueue(i)?;
        }
        // An empty WAL that only grows from here: a commit's frames are its
        // growth.
        side.conn().pragma_update(None, "wal_autocheckpoint", 0)?;
        side.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let page: u64 = side
            .conn()
            .query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mut wal = file.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let appended = |from: u64| -> anyhow::Result<Vec<u8>> {
            use std::io::{Read, Seek};
            let mut f = std::fs::File::open(&wal)?;
            f.seek(std::io::SeekFrom::Start(from))?;
            let mut out = Vec::new();
            f.read_to_end(&mut out)?;
            Ok(out)
        };
        side.conn().trace_v2(
            rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
            Some(trace),
        );
        let (mut claims, mut completes) = (Tally::default(), Tally::default());
        traced();
        let page = page as usize;
        loop {
            let before = size();
            let claimed = side.claim()?;
            claims.add(&appended(before)?, page, traced());
            let Some(c) = claimed else { break };
            let before = size();
            side.complete(c)?;
            completes.add(&appended(before)?, page, traced());
        }
        side.conn()
            .trace_v2(rusqlite::trace::TraceEventCodes::empty(), None);
        ensure!(side.done()? == n, "{name}: not every task is done");
        let names: std::collections::HashMap<u32, String> = {
            let mut stmt = side.conn().prepare("SELECT pageno, name FROM dbstat")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        println!(
            "{name} ({} cycles, page size {page}):",
            completes.frames.len()
        );
        println!("  {}", claims.show("claim"));
        println!("    by b-tree: {}", claims.by_btree(&names));
        println!("  {}", completes.show("complete"));
        println!("    by b-tree: {}", completes.by_btree(&names));
        for (what, t) in [("claim", &claims), ("complete", &completes)] {
            println!("  statements of the first {what}:");
            for sql in &t.first {
                println!("    {sql}");
                let upper = sql.trim_start().to_uppercase();
                if ["BEGIN", "COMMIT", "SAVEPOINT", "RELEASE"]
                    .iter()
                    .any(|k| upper.starts_with(k))
                {
                    continue;
                }
                let mut stmt = side.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
                let plan: Vec<String> = stmt
                    .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))?
                    .collect::<Result<_, _>>()?;
                for step in plan {
                    println!("        plan: {step}");
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------ postgres

/// The raw PostgreSQL side's tables: the raw SQLite side's, with a
/// `claims` counter per job (every claim adds one; the check after a drain
/// wants exactly one) and the queue index ending in `id` so the claim's
/// `ORDER BY available_at_ms, id` is read from it in order (SQLite's index
/// holds the rowid anyway).
const PG_SCHEMA: &str = "
DROP TABLE IF EXISTS jobs, tasks;
CREATE TABLE tasks (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title TEXT NOT NULL,
                    stage BIGINT NOT NULL, version BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL);
CREATE TABLE jobs (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, task_id BIGINT NOT NULL,
                   stage BIGINT NOT NULL, status TEXT NOT NULL, available_at_ms BIGINT NOT NULL,
                   worker_pid BIGINT, claimed_at_ms BIGINT, finished_at_ms BIGINT,
                   claims BIGINT NOT NULL DEFAULT 0);
CREATE INDEX jobs_status ON jobs(status, available_at_ms, id);
";

const PG_CLAIM: &str = "UPDATE jobs SET status='running', worker_pid=$2, claimed_at_ms=$1, \
     claims=claims+1 WHERE id = (SELECT id FROM jobs WHERE status='queued' AND available_at_ms<=$1 \
     ORDER BY available_at_ms, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, task_id, stage";

/// Connects to `url` with `synchronous_commit = on` (whatever the server's
/// default) and `search_path` set to `schema` when given.
fn pg_connect(url: &str, schema: Option<&str>) -> anyhow::Result<postgres::Client> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .with_context(|| format!("connecting to {url}"))?;
    client.batch_execute("SET synchronous_commit = on")?;
    if let Some(s) = schema {
        client.batch_execute(&format!("SET search_path = {s}"))?;
    }
    Ok(client)
}

/// One raw connection and its prepared statements (a worker process's, or
/// the enqueuing and alternating side's).
struct PgRaw {
    client: postgres::Client,
    add_task: postgres::Statement,
    claim: postgres::Statement,
    done: postgres::Statement,
    advance: postgres::Statement,
    next: postgres::Statement,
    pid: i64,
}

impl PgRaw {
    fn open(url: &str, schema: &str) -> anyhow::Result<PgRaw> {
        let mut client = pg_connect(url, Some(schema))?;
        let add_task = client.prepare(
            "INSERT INTO tasks (title, stage, version, updated_at_ms) VALUES ($1, 0, 1, $2) RETURNING id",
        )?;
        let claim = client.prepare(PG_CLAIM)?;
        let done = client.prepare(
            "UPDATE jobs SET status='done', finished_at_ms=$2 WHERE id=$1 AND status='running'",
        )?;
        let advance = client.prepare(
            "UPDATE tasks SET stage=stage+1, version=version+1, updated_at_ms=$3 \
             WHERE id=$1 AND stage=$2",
        )?;
        let next = client.prepare(
            "INSERT INTO jobs (task_id, stage, status, available_at_ms) VALUES ($1, $2, 'queued', $3)",
        )?;
        Ok(PgRaw {
            client,
            add_task,
            claim,
            done,
            advance,
            next,
            pid: std::process::id() as i64,
        })
    }
}

impl Side for PgRaw {
    /// One transaction: the task and its first job.
    fn enqueue(&mut self, i: usize) -> anyhow::Result<()> {
        let mut tx = self.client.transaction()?;
        let at = orch::clock::now_ms();
        let task: i64 = tx
            .query_one(&self.add_task, &[&format!("Work item {i}"), &at])?
            .get(0);
        tx.execute(&self.next, &[&task, &0i64, &at])?;
        tx.commit()?;
        Ok(())
    }

    fn settle(&mut self) -> anyhow::Result<()> {
        self.client.batch_execute("ANALYZE tasks; ANALYZE jobs")?;
        Ok(())
    }

    /// Transaction 1: claims the oldest queued job, `None` when none is.
    fn claim(&mut self) -> anyhow::Result<Option<Claimed>> {
        let mut tx = self.client.transaction()?;
        let row = tx.query_opt(&self.claim, &[&orch::clock::now_ms(), &self.pid])?;
        tx.commit()?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Transaction 2: the job done, the task moved, the next stage's job.
    fn complete(&mut self, (job, task, stage): Claimed) -> anyhow::Result<()> {
        let mut tx = self.client.transaction()?;
        let at = orch::clock::now_ms();
        let n = tx.execute(&self.done, &[&job, &at])?;
        ensure!(n == 1, "raw job {job} was not running");
        tx.execute(&self.advance, &[&task, &stage, &at])?;
        if stage + 1 < CYCLES_PER_TASK as i64 {
            tx.execute(&self.next, &[&task, &(stage + 1), &at])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn done(&mut self) -> anyhow::Result<usize> {
        let sql = format!("SELECT COUNT(*) FROM tasks WHERE stage={CYCLES_PER_TASK}");
        Ok(self.client.query_one(&sql, &[])?.get::<_, i64>(0) as usize)
    }
}

/// A worker process's body (`--pg-worker URL SCHEMA` for the raw side,
/// `--orch-worker URL` for orch's): say `ready`, wait for `go` on stdin,
/// cycle until nothing is claimable, print `{"cycles", "claim_s",
/// "complete_s"}`.
fn worker(side: &mut dyn Side) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    ensure!(go.trim() == "go", "expected go on stdin, got {go:?}");
    let mut f = Figures::default();
    while side.cycle(&mut f)?.is_some() {}
    writeln!(
        out,
        "{}",
        json!({"cycles": f.cycles, "claim_s": f.claim.as_secs_f64(), "complete_s": f.complete.as_secs_f64()})
    )?;
    Ok(())
}

/// Drains a queue with `procs` worker processes (this example again,
/// with `worker_args`), each started and connected before all are
/// released together: their summed cycles and transaction times, `drain`
/// being the wall time from the release to the last one's report.
fn drain_with(worker_args: &[&str], procs: usize) -> anyhow::Result<Figures> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for _ in 0..procs {
        let mut child = Command::new(&exe)
            .args(worker_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a worker process")?;
        let mut out = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut ready = String::new();
        out.read_line(&mut ready)?;
        ensure!(ready.trim() == "ready", "a worker did not start: {ready:?}");
        workers.push((child, out));
    }
    let mut f = Figures::default();
    let t = Instant::now();
    for (child, _) in &mut workers {
        writeln!(child.stdin.as_mut().context("worker stdin")?, "go")?;
    }
    for (_, out) in &mut workers {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("a worker's report: {line:?}"))?;
        f.cycles += v["cycles"].as_u64().unwrap_or(0) as usize;
        f.claim += Duration::from_secs_f64(v["claim_s"].as_f64().unwrap_or(0.0));
        f.complete += Duration::from_secs_f64(v["complete_s"].as_f64().unwrap_or(0.0));
    }
    f.drain = t.elapsed();
    for (mut child, _) in workers {
        let status = child.wait()?;
        ensure!(status.success(), "a worker failed: {status}");
    }
    Ok(f)
}

/// `SELECT COUNT(*) …` through `admin`.
fn pg_count(admin: &mut postgres::Client, sql: &str) -> anyhow::Result<usize> {
    Ok(admin.query_one(sql, &[])?.get::<_, i64>(0) as usize)
}

/// One raw drain with `procs` worker processes on freshly built tables in
/// `schema` (`admin`'s `search_path`): the enqueue time (this process)
/// and [`drain_with`]'s figures; then every task must be done and every
/// job claimed exactly once.
fn pg_round(
    admin: &mut postgres::Client,
    url: &str,
    schema: &str,
    n: usize,
    procs: usize,
) -> anyhow::Result<Figures> {
    admin.batch_execute(PG_SCHEMA)?;
    let mut q = PgRaw::open(url, schema)?;
    let t = Instant::now();
    for i in 1..=n {
        q.enqueue(i)?;
    }
    let enqueue = t.elapsed();
    q.settle()?;
    drop(q);
    let mut f = drain_with(&["--pg-worker", url, schema], procs)?;
    f.enqueue = enqueue;
    f.done = pg_count(
        admin,
        &format!("SELECT COUNT(*) FROM tasks WHERE stage={CYCLES_PER_TASK}"),
    )?;
    let jobs = pg_count(admin, "SELECT COUNT(*) FROM jobs")?;
    let twice = pg_count(admin, "SELECT COUNT(*) FROM jobs WHERE claims<>1")?;
    ensure!(
        f.done == n && jobs == n * CYCLES_PER_TASK && f.cycles == jobs && twice == 0,
        "raw, {procs} worker(s): {} of {n} tasks done, {} cycles, {jobs} jobs, {twice} not claimed exactly once",
        f.done,
        f.cycles
    );
    Ok(f)
}

/// A database of its own for one orch round, on the server of `url`
/// (`CREATE DATABASE`), dropped (`WITH (FORCE)`) when this is.
struct PgDatabase {
    base: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(base: &str, name: String) -> anyhow::Result<PgDatabase> {
        pg_connect(base, None)?.batch_execute(&format!("CREATE DATABASE {name}"))?;
        // The URL's path is the database: swap it, keep the query.
        let (path, query) = match base.split_once('?') {
            Some((p, q)) => (p, format!("?{q}")),
            None => (base, String::new()),
        };
        let (server, _) = path
            .rsplit_once('/')
            .filter(|(s, _)| s.contains("://") && !s.ends_with('/'))
            .with_context(|| format!("{}: no database name to replace", redact(base)))?;
        Ok(PgDatabase {
            base: base.to_string(),
            url: format!("{server}/{name}{query}"),
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut c) = pg_connect(&self.base, None) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Fresh database names for orch's rounds: `orch_bench_<pid>_<k>`.
fn next_db_name() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "orch_bench_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// Every task done and every job claimed exactly once (one epoch) and
/// done, in orch's database behind `o`.
fn check_orch(o: &mut Orch, n: usize, cycles: usize, what: &str) -> anyhow::Result<usize> {
    let done = o.done()?;
    let count = |sql: &str| -> anyhow::Result<usize> {
        Ok(o.db.conn().query_row(sql, [], |r| r.get::<_, i64>(0))? as usize)
    };
    let jobs = count("SELECT COUNT(*) FROM jobs")?;
    let odd = count("SELECT COUNT(*) FROM jobs WHERE epoch<>1 OR status<>'done'")?;
    ensure!(
        done == n && jobs == n * CYCLES_PER_TASK && cycles == jobs && odd == 0,
        "orch, {what}: {done} of {n} tasks done, {cycles} cycles, {jobs} jobs, \
         {odd} not claimed exactly once or not done"
    );
    Ok(done)
}

/// One orch drain with `procs` worker processes (`--orch-worker`) in a
/// fresh database: N tasks enqueued here through `pipeline::create_task`,
/// then each worker loops `claim_next` + `pipeline::apply` until nothing
/// is runnable.
fn pg_orch_round(url: &str, n: usize, procs: usize) -> anyhow::Result<Figures> {
    let db = PgDatabase::create(url, next_db_name())?;
    let mut o = Orch::open(Path::new(&db.url), bench_worktrees())?;
    ensure_durable(&o)?;
    let t = Instant::now();
    for i in 1..=n {
        o.enqueue(i)?;
    }
    let enqueue = t.elapsed();
    o.settle()?;
    let mut f = drain_with(&["--orch-worker", &db.url], procs)?;
    f.enqueue = enqueue;
    f.done = check_orch(&mut o, n, f.cycles, &format!("{procs} worker(s)"))?;
    drop(o);
    drop(db);
    Ok(f)
}

/// The worktree folder orch's PostgreSQL side names in its tasks (nothing
/// is created there).
fn bench_worktrees() -> PathBuf {
    std::env::temp_dir().join("orch-bench-queue-worktrees")
}

/// Refuses an orch session without `synchronous_commit = on`.
fn ensure_durable(o: &Orch) -> anyhow::Result<String> {
    let mode = o.mode()?;
    ensure!(
        mode == "synchronous_commit=on",
        "orch's session has {mode}: its figures would not be durable ones"
    );
    Ok(mode)
}

/// One alternated round on PostgreSQL, as the SQLite mode's: orch in a
/// fresh database, raw on fresh tables in `schema`, one process, step by
/// step.
fn pg_alternated(
    admin: &mut postgres::Client,
    url: &str,
    schema: &str,
    n: usize,
) -> anyhow::Result<(Figures, Figures)> {
    let db = PgDatabase::create(url, next_db_name())?;
    let mut o = Orch::open(Path::new(&db.url), bench_worktrees())?;
    ensure_durable(&o)?;
    admin.batch_execute(PG_SCHEMA)?;
    let mut raw = PgRaw::open(url, schema)?;
    let (fo, fr) = round(&mut o, &mut raw, n)?;
    check_orch(&mut o, n, fo.cycles, "one process, alternated")?;
    let jobs = pg_count(admin, "SELECT COUNT(*) FROM jobs WHERE claims=1")?;
    ensure!(
        fr.done == n && jobs == n * CYCLES_PER_TASK && fr.cycles == jobs,
        "raw, alternated: {} of {n} tasks done, {} cycles, {jobs} jobs claimed once",
        fr.done,
        fr.cycles
    );
    drop(raw);
    drop(o);
    drop(db);
    Ok((fo, fr))
}

/// Median over rounds of `f`.
fn med_of(figures: &[Figures], f: impl Fn(&Figures) -> f64) -> f64 {
    median(figures.iter().map(f).collect())
}

/// A side's medians as JSON: `cycles_per_s`, `enqueue_per_s`, `drain_s`,
/// and the claim and complete transactions' mean times in ms (per cycle
/// and process).
fn pg_figures(figures: &[Figures], n: usize) -> serde_json::Value {
    let per = |d: fn(&Figures) -> Duration| {
        med_of(figures, |f| {
            d(f).as_secs_f64() * 1e3 / f.cycles.max(1) as f64
        })
    };
    json!({
        "cycles_per_s": med_of(figures, Figures::cycles_per_s),
        "enqueue_per_s": med_of(figures, |f| f.enqueue_per_s(n)),
        "drain_s": med_of(figures, |f| f.drain.as_secs_f64()),
        "claim_tx_ms": per(|f| f.claim),
        "complete_tx_ms": per(|f| f.complete),
    })
}

/// `--postgres URL`: orch against the raw ceiling, one process
/// alternated, then each number of worker processes.
fn pg_main(args: &Args, url: &str) -> anyhow::Result<()> {
    let mut admin = pg_connect(url, None)?;
    let show = |c: &mut postgres::Client, what: &str| -> anyhow::Result<String> {
        Ok(c.query_one(&format!("SHOW {what}"), &[])?.get(0))
    };
    let server = show(&mut admin, "server_version")?;
    let fsync = show(&mut admin, "fsync")?;
    let sync_commit = show(&mut admin, "synchronous_commit")?;
    let wal_sync = show(&mut admin, "wal_sync_method")?;
    ensure!(
        fsync == "on",
        "the server runs with fsync={fsync}: its figures would not be durable ones"
    );
    ensure!(
        sync_commit == "on",
        "synchronous_commit is {sync_commit} after setting it on"
    );
    let schema = format!("orch_bench_raw_{}", std::process::id());
    println!(
        "PostgreSQL queue benchmark, orch and raw: {} tasks x {CYCLES_PER_TASK} claim+complete cycles, \
         {} round(s), worker processes {:?}, build {}",
        args.n,
        args.rounds,
        args.procs,
        if cfg!(debug_assertions) {
            "debug (numbers are not representative)"
        } else {
            "release"
        }
    );
    println!(
        "server {server}: fsync={fsync}, synchronous_commit={sync_commit} (raw: set by each session; \
         orch: the server's default, checked), wal_sync_method={wal_sync}; raw schema {schema}, \
         orch in a fresh database per drain (orch_bench_{}_<k>)",
        std::process::id()
    );
    admin.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path = {schema}"
    ))?;
    /// Per round: the alternated pair, then per P (raw, orch).
    type Rounds = (
        Vec<(Figures, Figures)>,
        Vec<(usize, Vec<(Figures, Figures)>)>,
    );
    let run = |admin: &mut postgres::Client| -> anyhow::Result<Rounds> {
        let mut pairs = Vec::new();
        let mut by: Vec<(usize, Vec<(Figures, Figures)>)> =
            args.procs.iter().map(|&p| (p, Vec::new())).collect();
        for r in 1..=args.rounds {
            let (o, raw) = pg_alternated(admin, url, &schema, args.n)?;
            println!(
                "round {r}, one process, alternated: orch / raw = {:.2} (cycles/s), {:.2} (enqueue)",
                o.cycles_per_s() / raw.cycles_per_s(),
                o.enqueue_per_s(args.n) / raw.enqueue_per_s(args.n)
            );
            line("orch", args.n, &o);
            line("raw", args.n, &raw);
            pairs.push((o, raw));
            for (p, figures) in &mut by {
                // Who drains first swaps each round.
                let (raw, o) = if r % 2 == 1 {
                    let raw = pg_round(admin, url, &schema, args.n, *p)?;
                    (raw, pg_orch_round(url, args.n, *p)?)
                } else {
                    let o = pg_orch_round(url, args.n, *p)?;
                    (pg_round(admin, url, &schema, args.n, *p)?, o)
                };
                println!(
                    "round {r}, {p} worker process(es): orch / raw = {:.2} (cycles/s)",
                    o.cycles_per_s() / raw.cycles_per_s()
                );
                line("orch", args.n, &o);
                line("raw", args.n, &raw);
                figures.push((raw, o));
            }
        }
        // The claim's plan on the last drained tables (analysed): it should
        // read the queue index, not scan the queue.
        let plan: Vec<String> = admin
            .query(&format!("EXPLAIN {PG_CLAIM}"), &[&0i64, &0i64])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        println!("raw claim plan:\n  {}", plan.join("\n  "));
        Ok((pairs, by))
    };
    let out = run(&mut admin);
    let dropped = admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
    let (pairs, by) = out?;
    dropped?;

    let orch1: Vec<Figures> = pairs.iter().map(|p| p.0).collect();
    let raw1: Vec<Figures> = pairs.iter().map(|p| p.1).collect();
    let ratio = median(
        pairs
            .iter()
            .map(|(o, r)| o.cycles_per_s() / r.cycles_per_s())
            .collect(),
    );
    let enqueue_ratio = median(
        pairs
            .iter()
            .map(|(o, r)| o.enqueue_per_s(args.n) / r.enqueue_per_s(args.n))
            .collect(),
    );
    println!(
        "one process, alternated: median orch {:.0} cycles/s, raw {:.0}: orch / raw = {ratio:.2} \
         (goal >= 0.80); enqueue {enqueue_ratio:.2}",
        med_of(&orch1, Figures::cycles_per_s),
        med_of(&raw1, Figures::cycles_per_s),
    );
    let one = |side: usize| {
        by.iter().find(|(p, _)| *p == 1).map(|(_, f)| {
            median(
                f.iter()
                    .map(|pair| if side == 0 { pair.0 } else { pair.1 }.cycles_per_s())
                    .collect(),
            )
        })
    };
    let (raw_one, orch_one) = (one(0), one(1));
    let mut procs = serde_json::Map::new();
    for (p, figures) in &by {
        let raw: Vec<Figures> = figures.iter().map(|f| f.0).collect();
        let orch: Vec<Figures> = figures.iter().map(|f| f.1).collect();
        let (rc, oc) = (
            med_of(&raw, Figures::cycles_per_s),
            med_of(&orch, Figures::cycles_per_s),
        );
        let times = |o: Option<f64>, c: f64| {
            o.map_or(String::new(), |o| format!(", {:.2}x one process", c / o))
        };
        let ratio = median(
            figures
                .iter()
                .map(|(r, o)| o.cycles_per_s() / r.cycles_per_s())
                .collect(),
        );
        println!(
            "{p} worker process(es): median raw {rc:.0} cycles/s{}, orch {oc:.0}{}; orch / raw = {ratio:.2}",
            times(raw_one, rc),
            times(orch_one, oc)
        );
        let mut v = pg_figures(&raw, args.n);
        v["orch"] = pg_figures(&orch, args.n);
        v["ratio"] = json!(ratio);
        procs.insert(p.to_string(), v);
    }
    let mut orch = pg_figures(&orch1, args.n);
    orch["raw"] = pg_figures(&raw1, args.n);
    let report = json!({
        "postgres": {
            "server": server,
            "fsync": fsync,
            "synchronous_commit": sync_commit,
            "wal_sync_method": wal_sync,
            "tasks": args.n,
            "cycles": args.n * CYCLES_PER_TASK,
            "rounds": args.rounds,
            "procs": procs,
        },
        "enqueue_s": med_of(&orch1, |f| f.enqueue.as_secs_f64()),
        "drain_s": med_of(&orch1, |f| f.drain.as_secs_f64()),
        "done": args.n,
        "mode": "synchronous_commit=on",
        "cycles": args.n * CYCLES_PER_TASK,
        "cycles_per_s": med_of(&orch1, Figures::cycles_per_s),
        "raw": {
            "enqueue_s": med_of(&raw1, |f| f.enqueue.as_secs_f64()),
            "drain_s": med_of(&raw1, |f| f.drain.as_secs_f64()),
            "done": args.n,
            "cycles_per_s": med_of(&raw1, Figures::cycles_per_s),
        },
        "ratio": ratio,
        "enqueue_ratio": enqueue_ratio,
        "rounds": args.rounds,
    });
    println!("{report}");
    Ok(())
}

// ------------------------------------------------------------ report

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let k = v.len();
    if k % 2 == 1 {
        v[k / 2]
    } else {
        (v[k / 2 - 1] + v[k / 2]) / 2.0
    }
}

fn line(label: &str, n: usize, f: &Figures) {
    println!(
        "  {label:<4} enqueue {:>7.3} s ({:>6.0} tasks/s)  drain {:>7.3} s: {} cycles, {:>6.0} cycles/s \
         (claim tx {:.3} ms, complete tx {:.3} ms per cycle), {} of {n} tasks done",
        f.enqueue.as_secs_f64(),
        f.enqueue_per_s(n),
        f.drain.as_secs_f64(),
        f.cycles,
        f.cycles_per_s(),
        f.claim.as_secs_f64() * 1e3 / f.cycles.max(1) as f64,
        f.complete.as_secs_f64() * 1e3 / f.cycles.max(1) as f64,
        f.done,
    );
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some((url, schema)) = &args.pg_worker {
        return worker(&mut PgRaw::open(url, schema)?);
    }
    if let Some(url) = &args.orch_worker {
        return worker(&mut Orch::attach(Path::new(url))?);
    }
    if let Some(url) = &args.postgres {
        return pg_main(&args, url);
    }
    let temp = match &args.db {
        Some(_) => None,
        None => {
            let d = std::env::temp_dir().join(format!("orch-bench-queue-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            Some(d)
        }
    };
    let path = match (&args.db, &temp) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join("orch.db"),
        (None, None) => unreachable!(),
    };
    ensure!(
        !path.exists(),
        "{} exists: give a path to a new file (the benchmark deletes its databases between rounds)",
        path.display()
    );
    let mut raw_path = path.as_os_str().to_owned();
    raw_path.push(".raw.db");
    let raw_path = PathBuf::from(raw_path);
    ensure!(!raw_path.exists(), "{} exists", raw_path.display());

    println!(
        "orch queue benchmark: {} tasks x {CYCLES_PER_TASK} claim+complete cycles, {} round(s), build {}",
        args.n,
        args.rounds,
        if cfg!(debug_assertions) {
            "debug (numbers are not representative)"
        } else {
            "release"
        }
    );
    println!(
        "databases: {} and {} (same folder, same disk)",
        path.display(),
        raw_path.display()
    );
    // The databases, their worktrees and the temp folder, unless --keep.
    let clean_up = || {
        if !args.keep {
            remove_db(&path);
            remove_db(&raw_path);
            let _ = std::fs::remove_dir_all(path.with_extension("worktrees"));
            if let Some(d) = &temp {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    };
    if args.profile {
        let out = profile(&path, &raw_path, args.n);
        clean_up();
        return out;
    }
    let mut rounds = Vec::new();
    let mut modes = (String::new(), String::new());
    for r in 1..=args.rounds {
        remove_db(&path);
        remove_db(&raw_path);
        let mut orch = Orch::open(&path, path.with_extension("worktrees"))?;
        let orch_mode = orch.mode()?;
        let sync = orch_mode.split('/').next().unwrap_or("FULL").to_string();
        let mut raw = Raw::open(&raw_path, &sync)?;
        let raw_mode = raw.mode()?;
        ensure!(
            orch_mode == raw_mode,
            "modes differ: orch {orch_mode}, raw {raw_mode}"
        );
        let (o, raw) = round(&mut orch, &mut raw, args.n)?;
        ensure!(
            o.done == args.n && raw.done == args.n && o.cycles == raw.cycles,
            "round {r}: orch did {} tasks in {} cycles, raw {} in {}",
            o.done,
            o.cycles,
            raw.done,
            raw.cycles
        );
        println!(
            "round {r} ({orch_mode}): orch / raw = {:.2} (cycles/s), {:.2} (enqueue)",
            o.cycles_per_s() / raw.cycles_per_s(),
            o.enqueue_per_s(args.n) / raw.enqueue_per_s(args.n)
        );
        line("orch", args.n, &o);
        line("raw", args.n, &raw);
        modes = (orch_mode, raw_mode);
        rounds.push((o, raw));
    }
    clean_up();
    let med = |f: &dyn Fn(&(Figures, Figures)) -> f64| median(rounds.iter().map(f).collect());
    let cycles = rounds[0].0.cycles;
    let report = json!({
        "enqueue_s": med(&|r| r.0.enqueue.as_secs_f64()),
        "drain_s": med(&|r| r.0.drain.as_secs_f64()),
        "done": args.n,
        "mode": modes.0,
        "cycles": cycles,
        "cycles_per_s": med(&|r| r.0.cycles_per_s()),
        "raw": {
            "enqueue_s": med(&|r| r.1.enqueue.as_secs_f64()),
            "drain_s": med(&|r| r.1.drain.as_secs_f64()),
            "done": args.n,
            "mode": modes.1,
            "cycles": cycles,
            "cycles_per_s": med(&|r| r.1.cycles_per_s()),
        },
        "ratio": med(&|r| r.0.cycles_per_s() / r.1.cycles_per_s()),
        "enqueue_ratio": med(&|r| r.0.enqueue_per_s(args.n) / r.1.enqueue_per_s(args.n)),
        "rounds": args.rounds,
    });
    println!("{report}");
    Ok(())
}
