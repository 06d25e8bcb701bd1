//! Benchmark of the idle ticks (issue 11): `orch reap` and `orch reconcile`
//! as whole processes over 10,000 tasks (9,000 done, 500 queued for
//! tomorrow, 500 running under a live worker), beside the `sqlite3`
//! command-line tool running what each tick reads. Driven by
//! `scripts/bench-idle-ticks.sh`, which builds the binaries, starts the
//! "worker" (a `sleep` process) and calls the two modes:
//!
//! ```sh
//! bench_idle --build DB --config orch.toml --worker-pid PID [--tasks 10000] [--queued 500] [--running 500]
//! bench_idle --measure --db DB --config orch.toml --state DIR --orch BIN [--sqlite3 sqlite3] [--runs 15]
//! ```
//!
//! `--build` writes a new database through orch's own write path, in
//! batches of 500 tasks per transaction: `Tx::sync_project`,
//! `pipeline::create_task`, then per stage `pipeline::job::claim_next` and
//! `pipeline::apply` with a `Move` finishing the job. A done task went
//! through all seven stages (7 jobs, 8 transitions, outbox rows); every
//! 20th task stops at a stage (spread over analysis … deploy) with its job
//! requeued for tomorrow (`job::change`, a retry with a day's backoff);
//! another every 20th stops at a stage with its job claimed by the worker
//! `PID` (boot id, pid, start time from `orch::process`) and that pid as
//! its agent, timeout a week. The file is checkpointed at the end.
//!
//! `--measure` runs, in rounds, `orch --db DB reap`, the sqlite3 tool on
//! the reap queries, `orch --db DB reconcile`, and the sqlite3 tool on the
//! reconcile queries — each a child process timed from spawn to exit, its
//! peak RSS from `wait4`'s rusage — after one untimed warm-up of each whose
//! output it prints. It prints medians, the ratio of each tick to its
//! sqlite3 twin, peak RSS, and whether the timed runs wrote anything (the
//! file and WAL sizes, the reconcile report count and the registry's sync
//! time, before and after).
//!
//! orch's children get a clean environment (`PATH`, `ORCH_STATE_DIR`,
//! `ORCH_CONFIG`, `ORCH_RECONCILE_PLANE_ENABLED=false`,
//! `ORCH_HEARTBEAT_STALE_S=604800` — the "live worker" heartbeats at build
//! time only, so a week keeps it fresh for the run) and run in the state
//! folder's parent, so no `.env` is read. Nothing leaves the machine: the
//! project uses the local tracker and forge.
//!
//! It measures; it asserts no time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use orch::config::Config;
use orch::db::{Db, ProjectRow, Tx};
use orch::pipeline::job::{self, Changed, How, JobChange};
use orch::pipeline::{self, Actor, JobStatus, Move, Moved, Policy, Stage, WorkItem};

/// Tasks per write transaction while building.
const BATCH: usize = 500;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The stages a task can stop at (the ones with a job): all but done.
const STAGES: &[Stage] = Stage::ALL.split_last().unwrap().1;

// ------------------------------------------------------------ arguments

#[derive(Default)]
struct Args {
    build: Option<PathBuf>,
    measure: bool,
    db: Option<PathBuf>,
    config: Option<PathBuf>,
    state: Option<PathBuf>,
    orch: Option<PathBuf>,
    sqlite3: String,
    worker_pid: Option<i32>,
    tasks: usize,
    queued: usize,
    running: usize,
    runs: usize,
}

const USAGE: &str = "usage:\n  \
    bench_idle --build DB --config FILE --worker-pid PID [--tasks 10000] [--queued 500] [--running 500]\n  \
    bench_idle --measure --db DB --config FILE --state DIR --orch BIN [--sqlite3 sqlite3] [--runs 15]\n\
    see scripts/bench-idle-ticks.sh, which runs both";

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        sqlite3: "sqlite3".into(),
        tasks: 10_000,
        queued: 500,
        running: 500,
        runs: 15,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        let num = |name: &str, v: String| -> anyhow::Result<usize> {
            v.parse()
                .with_context(|| format!("{name}: expected a number, got {v:?}"))
        };
        match flag.as_str() {
            "--build" => a.build = Some(value("--build")?.into()),
            "--measure" => a.measure = true,
            "--db" => a.db = Some(value("--db")?.into()),
            "--config" => a.config = Some(value("--config")?.into()),
            "--state" => a.state = Some(value("--state")?.into()),
            "--orch" => a.orch = Some(value("--orch")?.into()),
            "--sqlite3" => a.sqlite3 = value("--sqlite3")?,
            "--worker-pid" => {
                a.worker_pid = Some(num("--worker-pid", value("--worker-pid")?)? as i32)
            }
            "--tasks" => a.tasks = num("--tasks", value("--tasks")?)?,
            "--queued" => a.queued = num("--queued", value("--queued")?)?,
            "--running" => a.running = num("--running", value("--running")?)?,
            "--runs" => a.runs = num("--runs", value("--runs")?)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        a.build.is_some() != a.measure,
        "give exactly one of --build DB and --measure\n{USAGE}"
    );
    Ok(a)
}

// ------------------------------------------------------------ building

/// What the `j`-th task becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Done,
    /// Stopped at this stage, its job queued for tomorrow.
    Queued(Stage),
    /// Stopped at this stage, its job running under the live worker.
    Running(Stage),
}

/// Spreads `queued` and `running` tasks evenly among `tasks`: every
/// `tasks/queued`-th task from the first is queued, every
/// `tasks/running`-th from half that period on is running (the build checks
/// the counts, so a collision of the two spreads is an error, not a skew).
fn kind(j: usize, tasks: usize, queued: usize, running: usize) -> Kind {
    let every = |k: usize| tasks / k.max(1);
    let (q, r) = (every(queued), every(running));
    if queued > 0 && j.is_multiple_of(q) && j / q < queued {
        Kind::Queued(STAGES[(j / q) % 7])
    } else if running > 0 && j % r == r / 2 && j / r < running {
        Kind::Running(STAGES[(j / r) % 7])
    } else {
        Kind::Done
    }
}

/// Claims the one available job (this task's) as `worker` and checks it.
fn claim(tx: &Tx, task: i64, worker: (&str, i64, i64), at: i64) -> anyhow::Result<orch::db::Job> {
    let j = job::claim_next(
        tx,
        &pipeline::spend::Limits {
            global: u32::MAX,
            ..Default::default()
        },
        None,
        None,
        worker,
        at,
    )?
    .with_context(|| format!("no runnable job for task {task}"))?;
    ensure!(
        j.task_id == task,
        "claimed job {} of task {}, expected task {task}",
        j.id,
        j.task_id
    );
    Ok(j)
}

fn build(args: &Args, path: &Path) -> anyhow::Result<()> {
    ensure!(
        !path.exists(),
        "{} exists: --build writes a new database",
        path.display()
    );
    ensure!(
        args.queued + args.running <= args.tasks / 2,
        "--queued + --running must be at most half of --tasks"
    );
    let config_path = args.config.as_ref().context("--build needs --config")?;
    let config = Config::load(config_path, true)?;
    let project = config
        .projects
        .first()
        .context("the config has no project")?;
    let pid = args.worker_pid.context("--build needs --worker-pid")?;
    let start = orch::process::proc_start_time(pid)
        .with_context(|| format!("worker pid {pid} is not running"))?;
    let boot = orch::process::boot_id();
    let live = (boot.as_str(), pid as i64, start as i64);
    let me = orch::process::identity();
    let me = (me.0.as_str(), me.1, me.2);
    let policy = Policy {
        max_developer_retries: 3,
    };
    let worktrees = path.with_extension("worktrees");

    let db = Db::open(path, 5000)?;
    let now = orch::clock::now_ms();
    db.write(|tx| tx.sync_project(&ProjectRow::of(project), now))?;
    // History an hour ago and earlier, one ms per step.
    let mut t = now - 3600 * 1000 - (args.tasks as i64) * 20;
    let started = Instant::now();
    let mut counts = [0usize; 3];
    for chunk in (0..args.tasks).collect::<Vec<_>>().chunks(BATCH) {
        db.write(|tx| {
            for &j in chunk {
                let k = kind(j, args.tasks, args.queued, args.running);
                t += 1;
                let item = WorkItem {
                    tracker_issue_id: format!("{}", j + 1),
                    sequence: j as i64 + 1,
                    title: format!("Work item {}", j + 1),
                    body: "Make the widget faster.".into(),
                };
                let (id, created) =
                    pipeline::create_task(tx, project, &item, &worktrees, Actor::Webhook, t)?;
                ensure!(created, "work item {} already had a task", j + 1);
                let stop = match k {
                    Kind::Done => Stage::Done,
                    Kind::Queued(s) | Kind::Running(s) => s,
                };
                loop {
                    let task = tx.task(id)?.context("task vanished")?;
                    if task.stage == stop {
                        break;
                    }
                    t += 1;
                    let jb = claim(tx, id, me, t)?;
                    let m = Move::new(
                        &task,
                        task.stage.next(),
                        Actor::Worker,
                        orch::pipeline::TransitionCause::GatePassed,
                        "bench build",
                    )
                    .finishing(jb.id, jb.epoch);
                    ensure!(
                        matches!(pipeline::apply(tx, policy, &m, t)?, Moved::Applied { .. }),
                        "task {id}: move lost"
                    );
                }
                match k {
                    Kind::Done => counts[0] += 1,
                    Kind::Queued(_) => {
                        let jb = claim(tx, id, me, t)?;
                        let c = JobChange {
                            job_id: jb.id,
                            from: JobStatus::Running,
                            to: JobStatus::Queued,
                            epoch: Some(jb.epoch),
                            how: How::Retry {
                                error: "bench: retry tomorrow",
                                available_at_ms: now + DAY_MS,
                            },
                        };
                        ensure!(job::change(tx, &c, t)? == Changed::Applied, "requeue lost");
                        counts[1] += 1;
                    }
                    Kind::Running(_) => {
                        // Claimed now (a fresh heartbeat) by the live worker.
                        let jb = claim(tx, id, live, now)?;
                        tx.set_job_agent(jb.id, jb.attempt, pid as i64, start as i64, 7 * 86_400)?;
                        counts[2] += 1;
                    }
                }
            }
            Ok(())
        })?;
    }
    db.conn()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .context("checkpointing")?;
    let count =
        |sql: &str| -> anyhow::Result<i64> { Ok(db.conn().query_row(sql, [], |r| r.get(0))?) };
    println!(
        "built {} in {:.1} s: {} tasks ({} done, {} queued for tomorrow, {} running under pid {pid}), \
         {} jobs ({} queued, {} running), {} transitions, {} outbox rows, {:.1} MB",
        path.display(),
        started.elapsed().as_secs_f64(),
        count("SELECT COUNT(*) FROM tasks")?,
        counts[0],
        counts[1],
        counts[2],
        count("SELECT COUNT(*) FROM jobs")?,
        count("SELECT COUNT(*) FROM jobs WHERE status='queued'")?,
        count("SELECT COUNT(*) FROM jobs WHERE status='running'")?,
        count("SELECT COUNT(*) FROM transitions")?,
        count("SELECT COUNT(*) FROM outbox")?,
        std::fs::metadata(path)?.len() as f64 / 1e6,
    );
    ensure!(
        counts[1] == args.queued && counts[2] == args.running,
        "spread missed: {} queued, {} running",
        counts[1],
        counts[2]
    );
    Ok(())
}

// ------------------------------------------------------------ measuring

/// What `Db::open` sets on every connection (the sqlite3 twins set it too).
const OPEN: &str =
    "PRAGMA busy_timeout=5000;\nPRAGMA journal_mode=WAL;\nPRAGMA synchronous=FULL;\n\
    PRAGMA foreign_keys=ON;\nPRAGMA user_version;\n";

/// What an idle `orch reap` reads (`Db::jobs_with_status(Running)`,
/// `Db::stale_leases`), as of this commit's `src/db/`.
fn reap_sql(now: i64) -> String {
    format!(
        "{OPEN}SELECT id, task_id, stage, role, task_version, status, attempt, available_at_ms, \
         worker_host, worker_pid, worker_start_time, agent_pid, agent_start_time, claimed_at_ms, \
         heartbeat_at_ms, timeout_s, exit_code, exit_recorded_at_ms, last_error, created_at_ms, finished_at_ms, \
         merge_pending, merge_defers FROM jobs WHERE status='running' ORDER BY id;\n\
         SELECT name, holder, job_id, acquired_at_ms, expires_at_ms FROM leases WHERE \
         (leases.expires_at_ms < {now} OR (leases.job_id IS NOT NULL AND NOT EXISTS \
         (SELECT 1 FROM jobs WHERE jobs.id = leases.job_id AND jobs.status IN ('queued','running')))) ORDER BY name;\n"
    )
}

/// What an idle `orch reconcile` reads (`Db::orphan_status_deliveries`,
/// `Db::unfinished_tasks_without_active_jobs`,
/// `Db::last_reconcile_pass`).
fn reconcile_sql(now: i64) -> String {
    format!(
        "{OPEN}SELECT id, body FROM inbox WHERE source='gitea' AND event='status' AND received_at_ms>={} \
         AND outcome LIKE 'no pipeline action: sha % matches no known branch head%' ORDER BY id;\n\
         SELECT id, project, tracker_issue_id, sequence, title, body, stage, version, branch, worktree, \
         developer_retries, escalated, escalated_reason, created_at_ms, updated_at_ms, \
         parked_at_ms, parked_reason, budget_waived FROM tasks WHERE unfinished=1 AND NOT EXISTS \
         (SELECT 1 FROM jobs j WHERE j.task_id=tasks.id AND j.status IN ('queued','running')) ORDER BY id;\n\
         SELECT report FROM reconcile_passes ORDER BY id DESC LIMIT 1;\n",
        now - DAY_MS
    )
}

/// One child run: wall time from spawn to reaped exit, and peak RSS.
struct Run {
    wall: Duration,
    max_rss_kb: i64,
    status: i32,
}

/// Spawns `cmd` (stdout and stderr to `out`, or discarded) and waits for
/// it with `wait4`, which returns the child's own rusage.
fn run(cmd: &mut Command, out: Option<&Path>) -> anyhow::Result<Run> {
    let (stdout, stderr) = match out {
        Some(p) => {
            let f = std::fs::File::create(p)?;
            (Stdio::from(f.try_clone()?), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let started = Instant::now();
    let child = cmd
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped (`child` is never waited
    // on by std); the pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    ensure!(
        r == pid,
        "wait4({pid}): {}",
        std::io::Error::last_os_error()
    );
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok(Run {
        wall,
        max_rss_kb: usage.ru_maxrss,
        status: code,
    })
}

/// Makes a fresh command for one run.
type MakeCmd = Box<dyn Fn() -> anyhow::Result<Command>>;

struct Subject {
    name: &'static str,
    cmd: MakeCmd,
    runs: Vec<Run>,
}

fn median_ms(runs: &[Run]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| r.wall.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let k = v.len();
    if k % 2 == 1 {
        v[k / 2]
    } else {
        (v[k / 2 - 1] + v[k / 2]) / 2.0
    }
}

/// The file sizes and reconcile report count: what would show a write.
fn footprint(db: &Path) -> anyhow::Result<(u64, u64, i64, i64)> {
    let wal = {
        let mut p = db.as_os_str().to_owned();
        p.push("-wal");
        std::fs::metadata(PathBuf::from(p))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let passes: i64 = conn.query_row("SELECT COUNT(*) FROM reconcile_passes", [], |r| r.get(0))?;
    let synced: i64 = conn.query_row("SELECT MAX(synced_at_ms) FROM projects", [], |r| r.get(0))?;
    Ok((std::fs::metadata(db)?.len(), wal, passes, synced))
}

fn measure(args: &Args) -> anyhow::Result<()> {
    let db = args.db.clone().context("--measure needs --db")?;
    let config = args.config.clone().context("--measure needs --config")?;
    let state = args.state.clone().context("--measure needs --state")?;
    let orch_bin = args.orch.clone().context("--measure needs --orch")?;
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let work = state
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let now = orch::clock::now_ms();
    let reap_file = work.join("reap.sql");
    let reconcile_file = work.join("reconcile.sql");
    std::fs::write(&reap_file, reap_sql(now))?;
    std::fs::write(&reconcile_file, reconcile_sql(now))?;

    let orch_cmd = |sub: &'static str| {
        let (bin, db, config, state, work) = (
            orch_bin.clone(),
            db.clone(),
            config.clone(),
            state.clone(),
            work.clone(),
        );
        Box::new(move || {
            let mut c = Command::new(&bin);
            c.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("ORCH_STATE_DIR", &state)
                .env("ORCH_CONFIG", &config)
                .env("ORCH_RECONCILE_PLANE_ENABLED", "false")
                .env("ORCH_HEARTBEAT_STALE_S", "604800")
                .current_dir(&work)
                .arg("--db")
                .arg(&db)
                .arg(sub);
            Ok(c)
        }) as MakeCmd
    };
    let sqlite_cmd = |file: PathBuf| {
        let (bin, db, work) = (args.sqlite3.clone(), db.clone(), work.clone());
        Box::new(move || {
            let mut c = Command::new(&bin);
            c.current_dir(&work)
                .args(["-init", "/dev/null", "-bail"])
                .arg(&db)
                .stdin(
                    std::fs::File::open(&file)
                        .with_context(|| format!("opening {}", file.display()))?,
                );
            Ok(c)
        }) as MakeCmd
    };
    let mut subjects = vec![
        Subject {
            name: "orch reap",
            cmd: orch_cmd("reap"),
            runs: vec![],
        },
        Subject {
            name: "sqlite3 (reap's reads)",
            cmd: sqlite_cmd(reap_file),
            runs: vec![],
        },
        Subject {
            name: "orch reconcile",
            cmd: orch_cmd("reconcile"),
            runs: vec![],
        },
        Subject {
            name: "sqlite3 (reconcile's reads)",
            cmd: sqlite_cmd(reconcile_file),
            runs: vec![],
        },
    ];

    // Warm-up: one untimed run of each, output shown.
    for s in &subjects {
        let out = work.join("warmup.out");
        let r = run(&mut (s.cmd)()?, Some(&out))?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!(
            "warm-up {} (exit {}): {}{}",
            s.name,
            r.status,
            lines
                .iter()
                .take(3)
                .copied()
                .collect::<Vec<_>>()
                .join(" | "),
            if lines.len() > 3 {
                format!(" | … ({} lines)", lines.len())
            } else {
                String::new()
            }
        );
        ensure!(r.status == 0, "{} failed: {text}", s.name);
    }
    let before = footprint(&db)?;
    let started = Instant::now();
    for round in 0..args.runs {
        // Rotate the order so no subject always follows the same one.
        let n = subjects.len();
        for k in 0..n {
            let s = &mut subjects[(round + k) % n];
            let r = run(&mut (s.cmd)()?, None)?;
            ensure!(r.status == 0, "{} exited {}", s.name, r.status);
            s.runs.push(r);
        }
    }
    let elapsed = started.elapsed();
    let after = footprint(&db)?;

    println!(
        "{} timed runs of each, interleaved, in {:.1} s:",
        args.runs,
        elapsed.as_secs_f64()
    );
    let mut ratios = Vec::new();
    for pair in subjects.chunks(2) {
        let (o, q) = (&pair[0], &pair[1]);
        let (mo, mq) = (median_ms(&o.runs), median_ms(&q.runs));
        let rss =
            |s: &Subject| s.runs.iter().map(|r| r.max_rss_kb).max().unwrap_or(0) as f64 / 1024.0;
        let min = |s: &Subject| {
            s.runs
                .iter()
                .map(|r| r.wall.as_secs_f64() * 1e3)
                .fold(f64::INFINITY, f64::min)
        };
        println!(
            "  {:<28} median {:>7.2} ms (min {:>6.2}), peak RSS {:>5.1} MB",
            o.name,
            mo,
            min(o),
            rss(o)
        );
        println!(
            "  {:<28} median {:>7.2} ms (min {:>6.2}), peak RSS {:>5.1} MB",
            q.name,
            mq,
            min(q),
            rss(q)
        );
        println!(
            "  => {} / sqlite3 = {:.2}x (ceiling 2x: {:.2} of it), peak RSS {:.1} MB (ceiling 10 MB: {:.2} of it)",
            o.name,
            mo / mq,
            mo / mq / 2.0,
            rss(o),
            rss(o) / 10.0
        );
        ratios.push(serde_json::json!({
            "tick": o.name,
            "median_ms": mo,
            "sqlite3_median_ms": mq,
            "ratio": mo / mq,
            "peak_rss_mb": rss(o),
            "sqlite3_peak_rss_mb": rss(q),
        }));
    }
    println!(
        "database during the timed runs: file {} → {} bytes, WAL {} → {} bytes, reconcile reports {} → {}, \
         registry synced_at_ms {} → {} ({})",
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2,
        before.3,
        after.3,
        if before == after {
            "nothing written"
        } else {
            "CHANGED (a reconcile report is kept at most once a minute)"
        }
    );
    println!(
        "{}",
        serde_json::json!({ "runs": args.runs, "ticks": ratios, "unchanged": before == after })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    match &args.build {
        Some(path) => build(&args, path),
        None => measure(&args),
    }
}
