//! Benchmark of one `orch reconcile` pass (DESIGN §5, issue 5): what a
//! pass over 10,000 tasks with 1,000 active costs, and proof that it makes
//! no per-task tracker calls.
//!
//! ```sh
//! cargo run --release --example bench_reconcile -- [--tasks 10000] [--active 1000] [--runs 7] [--projects 5] [--new 1] [--keep]
//! scripts/bench-reconcile.sh            # the same, built in release mode
//! ```
//!
//! For each of two sizes (`--tasks`/10 with `--active`/10, then `--tasks`
//! with `--active`) it builds a fresh database in a temp folder through the
//! library's own write path (`pipeline::create_task`, `Tx::claim_next_job`,
//! `Tx::record_exit`, `Tx::insert_agent_run`, `Tx::insert_verdict`,
//! `pipeline::apply`, `Tx::finish_job`): done tasks carry their full
//! history (jobs, runs, verdicts, transitions, outbox rows), active ones a
//! realistic mix of states. It then times `reconcile::run_with` with
//! `dry_run = true` (the same code, rolled back, so every run sees the same
//! database) against a counting in-process tracker, runs one real pass and
//! reports what it changed, and prints the ratio of the two sizes' medians.
//!
//! It measures; it asserts no time. Worktree paths are left nonexistent so
//! `gate::gather` never runs git: the numbers are orch and SQLite, not git
//! (except `git check-ref-format`, which `pipeline::create_task` spawns for
//! each of the `--new` items per project F-2 would create).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use orch::config::StateKind;
use orch::config::{Config, ProjectConfig, Settings};
use orch::ctx::Ctx;
use orch::db::{Db, Job, RunRecord, Tx};
use orch::pipeline::{self, Actor, JobStatus, Move, Moved, Policy, Stage, WorkItem};
use orch::reconcile::{self, Pass, Tracker, TrackerItem};

/// The worker identity the builder claims jobs under.
const WORKER: (&str, i64, i64) = ("bench", 1, 1);
/// No concurrency limit: the bench claims whatever is runnable.
const UNLIMITED: orch::pipeline::spend::Limits = orch::pipeline::spend::Limits {
    global: u32::MAX,
    by_role: std::collections::BTreeMap::new(),
    by_project: std::collections::BTreeMap::new(),
    accounts: std::collections::BTreeMap::new(),
    budget: orch::pipeline::spend::Budget::none(orch::db::Measure::Usd),
    token_budget: orch::pipeline::spend::Budget::none(orch::db::Measure::Tokens),
};

struct Args {
    tasks: usize,
    active: usize,
    runs: usize,
    projects: usize,
    new: usize,
    keep: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        tasks: 10_000,
        active: 1_000,
        runs: 7,
        projects: 5,
        new: 1,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> anyhow::Result<usize> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name}: expected a number, got {v:?}"))
        };
        match flag.as_str() {
            "--tasks" => a.tasks = num("--tasks")?,
            "--active" => a.active = num("--active")?,
            "--runs" => a.runs = num("--runs")?,
            "--projects" => a.projects = num("--projects")?,
            "--new" => a.new = num("--new")?,
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench_reconcile [--tasks 10000] [--active 1000] [--runs 7] [--projects 5] [--new 1] [--keep]\n\
                     --new N: tracker items per project In Progress with no task (lost deliveries F-2 creates)\n\
                     --keep: keep the temp folder with both databases"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(
        a.tasks >= 10 && a.active >= 10 && a.active <= a.tasks,
        "need 10 <= --active <= --tasks"
    );
    ensure!(
        a.runs >= 1 && a.projects >= 1,
        "--runs and --projects must be >= 1"
    );
    Ok(a)
}

// ------------------------------------------------------------ the plan

/// What state an active task is left in (a done task is `Done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Done,
    /// Just entered `Stage`; its job is queued.
    Queued(Stage),
    /// Its agent is running.
    Running(Stage),
    /// Bounced review → development up to the retry cap: escalated.
    Escalated,
    /// Retries at the cap but not escalated (the cap was lowered after they
    /// were counted); at review with an approving verdict.
    RetryCap,
    /// The analysis job is done; a human has to approve.
    Analysis,
    /// The development job is done; CI unknown (no worktree) → Pending.
    DevPending,
    /// The architecture job is done; no design on the branch → Fail.
    ArchNoDesign,
    /// The stage's job is done with a passing verdict: F-1 advances it.
    GatePass(Stage),
    /// The stage's job is done with REQUEST_CHANGES / FAIL: not F-1's business.
    GateBack(Stage),
    /// deploy-staging passed; the merge gate (a worker step) is pending.
    StagingWaiting,
    /// A passing verdict, but the task changed within the grace period.
    Fresh(Stage),
}

const ALL_BUT_DONE: [Stage; 7] = [
    Stage::Analysis,
    Stage::Architecture,
    Stage::Development,
    Stage::Review,
    Stage::Testing,
    Stage::DeployStaging,
    Stage::Deploy,
];
const PASSABLE: [Stage; 3] = [Stage::Review, Stage::Testing, Stage::Deploy];

/// The mix slot (0..100) of the `i`-th active task: each block of 100
/// active tasks fills every slot once, in an order that also spreads a
/// smaller set over the mix.
fn slot(i: usize) -> usize {
    (i * 37) % 100
}

/// The kind of an active task in mix slot `r`: a fixed mix per 100.
fn active_kind(r: usize) -> Kind {
    match r {
        0..18 => Kind::Queued(ALL_BUT_DONE[r % 7]),
        18..26 => Kind::Running(ALL_BUT_DONE[r % 7]),
        26..34 => Kind::Escalated,
        34..36 => Kind::RetryCap,
        36..50 => Kind::Analysis,
        50..60 => Kind::DevPending,
        60..64 => Kind::ArchNoDesign,
        64..84 => Kind::GatePass(PASSABLE[r % 3]),
        84..93 => Kind::GateBack(PASSABLE[r % 2]),
        93..96 => Kind::StagingWaiting,
        _ => Kind::Fresh(PASSABLE[r % 3]),
    }
}

/// What the tracker shows for the `i`-th active task (in slot `r`):
/// Approved for two analysis tasks per 100, Needs Input for escalated ones
/// (orch set it), else 10 % Blocked, 5 % Needs Input, the rest In Progress
/// (exactly so within every kind of 20 slots, e.g. the passing gates).
fn active_tracker_state(i: usize, r: usize, kind: Kind) -> StateKind {
    if kind == Kind::Escalated {
        return StateKind::NeedsInput;
    }
    if kind == Kind::Analysis && matches!(r, 36 | 37) {
        return StateKind::Approved;
    }
    match (i * 7) % 20 {
        0 | 1 => StateKind::Blocked,
        2 => StateKind::NeedsInput,
        _ => StateKind::InProgress,
    }
}

struct Planned {
    project: usize,
    sequence: i64,
    issue_id: String,
    kind: Kind,
    tracker: StateKind,
}

fn issue_id(project: usize, sequence: i64) -> String {
    format!("{project:08x}-0000-4000-8000-{sequence:012x}")
}

/// `tasks` tasks over `projects` projects (by a multiplicative hash, so
/// the evenly spaced active tasks do not all land in one project),
/// `active` of them spread evenly among the done ones.
fn plan(tasks: usize, active: usize, projects: usize) -> Vec<Planned> {
    let mut seq = vec![0i64; projects];
    (0..tasks)
        .map(|j| {
            let project =
                (((j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % projects as u64) as usize;
            seq[project] += 1;
            let is_active = (j + 1) * active / tasks != j * active / tasks;
            let (kind, tracker) = if is_active {
                let i = j * active / tasks;
                let kind = active_kind(slot(i));
                (kind, active_tracker_state(i, slot(i), kind))
            } else {
                (Kind::Done, StateKind::Done)
            };
            Planned {
                project,
                sequence: seq[project],
                issue_id: issue_id(project, seq[project]),
                kind,
                tracker,
            }
        })
        .collect()
}

// ------------------------------------------------------------ building

fn verdict_for(stage: Stage, pass: bool) -> Option<&'static str> {
    match (stage, pass) {
        (Stage::Review, true) => Some("APPROVE"),
        (Stage::Review, false) => Some("REQUEST_CHANGES"),
        (Stage::Testing | Stage::DeployStaging, true) => Some("PASS"),
        (Stage::Testing | Stage::DeployStaging, false) => Some("FAIL"),
        (Stage::Deploy, true) => Some("DEPLOYED"),
        (Stage::Deploy, false) => Some("FAILED"),
        _ => None,
    }
}

/// Claims the task's queued job (the only runnable one at `at`) and
/// records a successful agent run with `verdict`, as the worker does.
fn run_agent(tx: &Tx, task_id: i64, verdict: Option<&str>, at: i64) -> anyhow::Result<Job> {
    let job = pipeline::job::claim_next(tx, &UNLIMITED, None, None, WORKER, at)?
        .with_context(|| format!("no runnable job for task {task_id}"))?;
    ensure!(
        job.task_id == task_id,
        "claimed job {} of task {}, expected one of task {task_id}",
        job.id,
        job.task_id
    );
    tx.record_exit(job.id, job.attempt, 0, at)?;
    tx.insert_agent_run(
        &job,
        &RunRecord {
            pid: Some(4242),
            argv: vec!["claude".into(), "-p".into()],
            exit_code: 0,
            duration_ms: 60_000,
            success: Some(true),
            usage: Some((12_000, 3_000, 9_000, 1_000)),
            cost_usd: Some(0.12),
            session_id: Some(format!("session-{}", job.id)),
            permission_denials: None,
            log_path: format!("logs/job-{}-1.log", job.id),
            started_at_ms: at - 60_000,
            error: None,
            base_sha: None,
            limit: None,
            ..RunRecord::default()
        },
    )?;
    if let Some(v) = verdict {
        tx.insert_verdict(
            task_id,
            job.stage,
            Some(job.id),
            "agent",
            v,
            "bench verdict",
            at,
        )?;
    }
    Ok(job)
}

/// One stage change through the transition rule.
#[allow(clippy::too_many_arguments)]
fn advance(
    tx: &Tx,
    policy: Policy,
    task_id: i64,
    to: Stage,
    job: Option<i64>,
    developer_retry: bool,
    actor: Actor,
    at: i64,
) -> anyhow::Result<()> {
    let task = tx.task(task_id)?.context("task vanished")?;
    let cause = if developer_retry {
        pipeline::TransitionCause::GateSentBack
    } else {
        pipeline::TransitionCause::GatePassed
    };
    let mut m = Move::new(&task, to, actor, cause, "bench");
    m.job_id = job;
    m.developer_retry = developer_retry;
    match pipeline::apply(tx, policy, &m, at)? {
        Moved::Applied { .. } => Ok(()),
        Moved::Lost => bail!("task {task_id}: {} → {to} lost", task.stage),
    }
}

fn stage_of(tx: &Tx, task_id: i64) -> anyhow::Result<Stage> {
    let task = tx.task(task_id)?.context("task vanished")?;
    Ok(task.stage)
}

/// Walks a task forward to `target` as the worker (and, for analysis, a
/// human) would: every stage's job runs and passes. Steps happen at `*t`
/// (advanced by one ms each); the move into `target` at `last_at` if given.
fn walk(
    tx: &Tx,
    policy: Policy,
    id: i64,
    target: Stage,
    t: &mut i64,
    last_at: Option<i64>,
) -> anyhow::Result<()> {
    loop {
        let stage = stage_of(tx, id)?;
        if stage == target {
            return Ok(());
        }
        *t += 1;
        let job = run_agent(tx, id, verdict_for(stage, true), *t)?;
        let next = stage.next();
        let at = last_at.filter(|_| next == target).unwrap_or(*t);
        if stage == Stage::Analysis {
            pipeline::job::finish(tx, job.id, None, JobStatus::Done, None, *t)?;
            advance(tx, policy, id, next, None, false, Actor::Human, at)?;
        } else {
            advance(tx, policy, id, next, Some(job.id), false, Actor::Worker, at)?;
        }
    }
}

/// `n` round trips review → development (REQUEST_CHANGES), each counting a
/// developer retry under `policy`; the last at `last_at` if given.
fn bounce(
    tx: &Tx,
    policy: Policy,
    id: i64,
    n: usize,
    t: &mut i64,
    last_at: Option<i64>,
) -> anyhow::Result<()> {
    for k in 0..n {
        walk(tx, policy, id, Stage::Review, t, None)?;
        *t += 1;
        let job = run_agent(tx, id, verdict_for(Stage::Review, false), *t)?;
        let at = last_at.filter(|_| k + 1 == n).unwrap_or(*t);
        advance(
            tx,
            policy,
            id,
            Stage::Development,
            Some(job.id),
            true,
            Actor::Worker,
            at,
        )?;
    }
    Ok(())
}

/// Times the builder uses: history long ago, active tasks' last change an
/// hour ago (past the grace), "fresh" ones ten seconds ago.
struct Times {
    history: i64,
    active: i64,
    fresh: i64,
}

fn build_task(ctx: &Ctx, tx: &Tx, p: &Planned, times: &Times, t: &mut i64) -> anyhow::Result<()> {
    let policy = ctx.policy();
    let project = &ctx.config.projects[p.project];
    let item = WorkItem {
        tracker_issue_id: p.issue_id.clone(),
        sequence: p.sequence,
        title: format!("Work item {} of {}", p.sequence, project.name),
        body: "Make the widget faster.".into(),
    };
    let created_at = match p.kind {
        Kind::Queued(Stage::Analysis) | Kind::Running(Stage::Analysis) | Kind::Analysis => {
            times.active
        }
        _ => {
            *t += 1;
            *t
        }
    };
    let (id, created) = pipeline::create_task(
        tx,
        project,
        &item,
        &ctx.settings.worktrees_dir(),
        Actor::Webhook,
        created_at,
    )?;
    ensure!(created, "task for {} existed", p.issue_id);
    // A stage's job finished (done) at `at`, without the event that should
    // have moved the task.
    let finished = |s: Stage, pass: bool, at: i64, t: &mut i64| -> anyhow::Result<()> {
        walk(tx, policy, id, s, t, Some(at))?;
        let job = run_agent(tx, id, verdict_for(s, pass), at)?;
        pipeline::job::finish(tx, job.id, None, JobStatus::Done, None, at)?;
        Ok(())
    };
    match p.kind {
        Kind::Done => walk(tx, policy, id, Stage::Done, t, None)?,
        Kind::Queued(s) => walk(tx, policy, id, s, t, Some(times.active))?,
        Kind::Running(s) => {
            walk(tx, policy, id, s, t, Some(times.active))?;
            let job = pipeline::job::claim_next(tx, &UNLIMITED, None, None, WORKER, times.active)?
                .context("no job to claim")?;
            ensure!(job.task_id == id, "claimed a job of task {}", job.task_id);
            tx.set_job_agent(job.id, job.attempt, 4242, 1, 3600)?;
        }
        Kind::Escalated => bounce(
            tx,
            policy,
            id,
            policy.max_developer_retries as usize,
            t,
            Some(times.active),
        )?,
        Kind::RetryCap => {
            let lenient = Policy {
                max_developer_retries: policy.max_developer_retries + 10,
            };
            bounce(
                tx,
                lenient,
                id,
                policy.max_developer_retries as usize,
                t,
                None,
            )?;
            finished(Stage::Review, true, times.active, t)?;
        }
        Kind::Analysis => finished(Stage::Analysis, true, times.active, t)?,
        Kind::DevPending => finished(Stage::Development, true, times.active, t)?,
        Kind::ArchNoDesign => finished(Stage::Architecture, true, times.active, t)?,
        Kind::GatePass(s) => finished(s, true, times.active, t)?,
        Kind::GateBack(s) => finished(s, false, times.active, t)?,
        Kind::StagingWaiting => finished(Stage::DeployStaging, true, times.active, t)?,
        Kind::Fresh(s) => finished(s, true, times.fresh, t)?,
    }
    Ok(())
}

/// Builds the database: every task but the queued-job ones first (each
/// walk claims only its own jobs), then those, whose last job is enqueued
/// at `times.active`, after every earlier claim.
fn build(ctx: &Ctx, db: &Db, plan: &[Planned], times: &Times) -> anyhow::Result<()> {
    let (first, last): (Vec<&Planned>, Vec<&Planned>) = plan
        .iter()
        .partition(|p| !matches!(p.kind, Kind::Queued(_)));
    let mut t = times.history;
    for chunk in first.chunks(500).chain(last.chunks(500)) {
        db.write(|tx| {
            for p in chunk {
                build_task(ctx, tx, p, times, &mut t)
                    .with_context(|| format!("building {:?} task {}", p.kind, p.issue_id))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

// ------------------------------------------------------------ the tracker

/// A tracker that answers from a synthetic listing and counts what the
/// reconciler asks. Like `LiveTracker` it serves every call after a
/// project's first from the pass's cache (a clone of the listing);
/// `fetched` counts the first calls — what would reach the network.
struct CountingTracker<'a> {
    listings: &'a HashMap<String, HashMap<String, TrackerItem>>,
    calls: BTreeMap<String, usize>,
    fetched: BTreeMap<String, usize>,
}

impl<'a> CountingTracker<'a> {
    fn new(listings: &'a HashMap<String, HashMap<String, TrackerItem>>) -> Self {
        CountingTracker {
            listings,
            calls: BTreeMap::new(),
            fetched: BTreeMap::new(),
        }
    }
    fn calls(&self) -> usize {
        self.calls.values().sum()
    }
    fn fetched(&self) -> usize {
        self.fetched.values().sum()
    }
}

impl Tracker for CountingTracker<'_> {
    fn items(
        &mut self,
        _ctx: &Ctx,
        _db: &Db,
        project: &ProjectConfig,
    ) -> Result<HashMap<String, TrackerItem>, String> {
        let calls = self.calls.entry(project.name.clone()).or_default();
        *calls += 1;
        if *calls == 1 {
            *self.fetched.entry(project.name.clone()).or_default() += 1;
        }
        self.listings
            .get(&project.name)
            .cloned()
            .ok_or_else(|| format!("unknown project {}", project.name))
    }
}

/// Every planned task's item in its tracker state (Done ones too: the
/// live Plane listing asks for every state orch knows), plus `new` items
/// per project In Progress with no task (lost deliveries F-2 repairs).
fn listings(
    ctx: &Ctx,
    plan: &[Planned],
    new: usize,
) -> HashMap<String, HashMap<String, TrackerItem>> {
    let mut out: HashMap<String, HashMap<String, TrackerItem>> = HashMap::new();
    let mut next_seq = vec![0i64; ctx.config.projects.len()];
    let mut add = |project: usize, sequence: i64, id: String, kind: StateKind| {
        let name = &ctx.config.projects[project].name;
        out.entry(name.clone()).or_default().insert(
            id.clone(),
            TrackerItem {
                kind,
                state_name: kind.default_name().to_string(),
                item: WorkItem {
                    tracker_issue_id: id,
                    sequence,
                    title: format!("Work item {sequence} of {name}"),
                    body: String::new(),
                },
            },
        );
    };
    for p in plan {
        next_seq[p.project] = next_seq[p.project].max(p.sequence);
        add(p.project, p.sequence, p.issue_id.clone(), p.tracker);
    }
    for (project, last) in next_seq.into_iter().enumerate() {
        for k in 1..=new as i64 {
            add(
                project,
                last + k,
                issue_id(project, last + k),
                StateKind::InProgress,
            );
        }
    }
    out
}

// ------------------------------------------------------------ setup

/// A bare origin with one seed commit on `main`, made once.
fn make_origin(dir: &Path) -> anyhow::Result<PathBuf> {
    let origin = dir.join("origin.git");
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed)?;
    std::fs::write(seed.join("README.md"), "bench seed\n")?;
    let git = |cwd: &Path, args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@example.invalid",
            ])
            .args(args)
            .current_dir(cwd)
            .output()
            .context("running git")?;
        ensure!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    git(
        dir,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            "origin.git",
        ],
    )?;
    git(&seed, &["init", "--quiet", "--initial-branch=main"])?;
    git(&seed, &["add", "README.md"])?;
    git(&seed, &["commit", "--quiet", "-m", "seed"])?;
    git(
        &seed,
        &["push", "--quiet", origin.to_str().context("path")?, "main"],
    )?;
    Ok(origin)
}

fn make_ctx(dir: &Path, origin: &Path, projects: usize) -> anyhow::Result<Ctx> {
    let mut toml = String::from("[agents.default]\nargv = [\"claude\", \"-p\"]\n");
    for k in 0..projects {
        toml.push_str(&format!(
            "\n[[projects]]\nname = \"bench{k}\"\ntracker = \"plane\"\n\
             tracker_project_id = \"{k:08x}-1111-4000-8000-000000000000\"\nforge = \"local\"\n\
             repo = \"bench/bench{k}\"\nclone_url = {origin:?}\ntest_command = [\"true\"]\n",
            origin = origin.display().to_string(),
        ));
    }
    let config_path = dir.join("orch.toml");
    std::fs::write(&config_path, &toml)?;
    let env: BTreeMap<&str, String> = [
        ("ORCH_STATE_DIR", dir.join("state").display().to_string()),
        ("ORCH_MAX_DEVELOPER_RETRIES", "3".into()),
        ("ORCH_RECONCILE_GRACE_S", "300".into()),
    ]
    .into_iter()
    .collect();
    let lookup = move |k: &str| env.get(k).cloned();
    let settings = Settings::load(&lookup, Some(dir.join("state/orch.db")), Some(config_path))?;
    let config = Config::parse(&toml)?;
    Ok(Ctx { settings, config })
}

// ------------------------------------------------------------ measuring

struct Timed {
    median: Duration,
    min: Duration,
    max: Duration,
    pass: Pass,
    calls: usize,
    fetched: usize,
    calls_by_project: BTreeMap<String, usize>,
}

/// One untimed warm-up pass, then `runs` timed dry-run passes.
fn time_passes(
    ctx: &Ctx,
    db: &Db,
    listings: &HashMap<String, HashMap<String, TrackerItem>>,
    runs: usize,
) -> anyhow::Result<Timed> {
    reconcile::run_with(ctx, db, &mut CountingTracker::new(listings), true)?;
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let mut tracker = CountingTracker::new(listings);
        let start = Instant::now();
        let pass = reconcile::run_with(ctx, db, &mut tracker, true)?;
        times.push(start.elapsed());
        last = Some((pass, tracker.calls(), tracker.fetched(), tracker.calls));
    }
    times.sort();
    let (pass, calls, fetched, calls_by_project) = last.context("no runs")?;
    Ok(Timed {
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
        pass,
        calls,
        fetched,
        calls_by_project,
    })
}

/// The median time of cloning each project's listing as often as a pass
/// called `items()` for it: the price of the trait returning an owned map
/// (`LiveTracker` clones its cached listing on every call, too).
fn time_clones(
    listings: &HashMap<String, HashMap<String, TrackerItem>>,
    calls: &BTreeMap<String, usize>,
    runs: usize,
) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            for (project, n) in calls {
                for _ in 0..*n {
                    std::hint::black_box(listings.get(project).cloned());
                }
            }
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn count(db: &Db, table: &str) -> anyhow::Result<i64> {
    Ok(db
        .conn()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
}

/// F-2 outcomes by class.
fn replay_classes(pass: &Pass) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for (_, _, outcome) in &pass.replayed {
        let class = if outcome.starts_with("created task") {
            "create a task"
        } else if outcome.contains("analysis approved") {
            "approve an analysis"
        } else if outcome.contains("analysis rejected") {
            "rerun an analysis"
        } else if outcome.starts_with("error") {
            "error"
        } else {
            "no pipeline action"
        };
        *m.entry(class).or_default() += 1;
    }
    m
}

fn join<K: std::fmt::Display, V: std::fmt::Display>(m: impl IntoIterator<Item = (K, V)>) -> String {
    let parts: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

fn mix_label(k: Kind) -> &'static str {
    match k {
        Kind::Done => "done",
        Kind::Queued(_) => "job queued",
        Kind::Running(_) => "agent running",
        Kind::Escalated => "escalated",
        Kind::RetryCap => "retry cap, not escalated",
        Kind::Analysis => "analysis awaiting a human",
        Kind::DevPending => "development, CI unknown",
        Kind::ArchNoDesign => "architecture, no design",
        Kind::GatePass(_) => "gate passes (review/testing/deploy)",
        Kind::GateBack(_) => "gate says back/fail",
        Kind::StagingWaiting => "deploy-staging, merge pending",
        Kind::Fresh(_) => "within the grace period",
    }
}

/// Runs one size; returns the median pass time, and the median with an
/// index on verdicts(job_id) when the schema lacks one.
fn bench_size(
    root: &Path,
    origin: &Path,
    args: &Args,
    tasks: usize,
    active: usize,
) -> anyhow::Result<(Duration, Option<Duration>)> {
    let dir = root.join(format!("size-{tasks}"));
    std::fs::create_dir_all(&dir)?;
    let ctx = make_ctx(&dir, origin, args.projects)?;
    let db = ctx.init_db()?; // a fresh database, as `orch init` makes it
    println!(
        "== {tasks} tasks, {active} active, {} projects (tracker = \"plane\", forge = \"local\") ==",
        args.projects
    );

    let plan = plan(tasks, active, args.projects);
    let now = orch::clock::now_ms();
    let times = Times {
        history: now - 14 * 24 * 3600 * 1000,
        active: now - 3600 * 1000,
        fresh: now - 10 * 1000,
    };
    let started = Instant::now();
    build(&ctx, &db, &plan, &times)?;
    let built = started.elapsed();
    db.conn().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    let db_bytes = std::fs::metadata(&ctx.settings.db_path)?.len();
    println!(
        "database: built in {:.1} s, {:.1} MB: {} tasks, {} transitions, {} jobs, {} agent runs, {} verdicts, {} outbox rows",
        built.as_secs_f64(),
        db_bytes as f64 / 1e6,
        count(&db, "tasks")?,
        count(&db, "transitions")?,
        count(&db, "jobs")?,
        count(&db, "agent_runs")?,
        count(&db, "verdicts")?,
        count(&db, "outbox")?,
    );
    let mut mix: BTreeMap<&str, usize> = BTreeMap::new();
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for p in plan.iter().filter(|p| p.kind != Kind::Done) {
        *mix.entry(mix_label(p.kind)).or_default() += 1;
        *states.entry(p.tracker.default_name()).or_default() += 1;
    }
    println!("active mix: {}", join(&mix));
    let new_per_project = args.new;
    let listings = listings(&ctx, &plan, new_per_project);
    println!(
        "tracker listing: {} items per project; active tasks show {}; plus {new_per_project} In Progress item(s) per project with no task (lost deliveries)",
        listings.values().map(HashMap::len).max().unwrap_or(0),
        join(&states),
    );

    let t = time_passes(&ctx, &db, &listings, args.runs)?;
    let p = &t.pass;
    println!(
        "pass (reconcile::run_with, dry_run = true, {} timed runs after 1 warm-up): median {}, min {}, max {}",
        args.runs,
        ms(t.median),
        ms(t.min),
        ms(t.max)
    );
    let mut f1_only = ctx.clone();
    f1_only.settings.reconcile_plane_enabled = false;
    let f1 = time_passes(&f1_only, &db, &listings, args.runs)?;
    let mut no_f1 = ctx.clone();
    no_f1.settings.reconcile_grace_s = 10 * 365 * 24 * 3600;
    no_f1.settings.reconcile_grace_by_stage.clear();
    let f2 = time_passes(&no_f1, &db, &listings, args.runs)?;
    println!("  breakdown (medians of the same dry-run pass with parts switched off, and one part alone):");
    println!(
        "    F-1 + F-3 (ORCH_RECONCILE_PLANE_ENABLED=false): {} (tracker listings fetched: {}, lazily, for the passing gates)",
        ms(f1.median),
        f1.fetched
    );
    println!(
        "    F-2 + F-3 + reading every task (grace set so F-1 examines none): {}",
        ms(f2.median)
    );
    println!(
        "    cloning the tracker's answer for the pass's {} items() calls, alone: {}",
        t.calls,
        ms(time_clones(&listings, &t.calls_by_project, args.runs))
    );
    // What-if: `Db::verdict_for_job` (gate::gather, per examined task)
    // filters verdicts on job_id, which the shipped schema does not index.
    let what_if = if indexed(&db, "verdicts", "job_id")? {
        println!("  verdicts.job_id is indexed by the schema: no what-if needed");
        None
    } else {
        db.conn()
            .execute_batch("CREATE INDEX bench_verdicts_job ON verdicts(job_id, id)")?;
        let w = time_passes(&ctx, &db, &listings, args.runs)?;
        let w1 = time_passes(&f1_only, &db, &listings, args.runs)?;
        db.conn().execute_batch("DROP INDEX bench_verdicts_job")?;
        println!(
            "  what-if, with an index on verdicts(job_id) (not in the schema; dropped again): median {} (F-1 + F-3: {})",
            ms(w.median),
            ms(w1.median)
        );
        Some(w.median)
    };
    println!(
        "  per task: {:.1} µs per task in the database, {:.1} µs per active task",
        t.median.as_secs_f64() * 1e6 / tasks as f64,
        t.median.as_secs_f64() * 1e6 / active as f64
    );
    println!("  tasks examined (gate evaluated): {}", p.examined);
    println!("  unblocked (would advance): {}", p.unblocked.len());
    println!(
        "  skipped by reason: {}",
        join(p.skipped.iter().map(|(k, v)| (k, v.len())))
    );
    println!(
        "  F-2 replayed {} tracker items: {}; tracker errors: {}",
        p.replayed.len(),
        join(replay_classes(p)),
        p.errors.len()
    );
    println!(
        "  tracker: {} listings per pass (<= {} projects), {} items() calls ({} served from the pass cache), 0 per-task tracker calls",
        t.fetched,
        args.projects,
        t.calls,
        t.calls - t.fetched
    );
    ensure!(t.fetched <= args.projects, "more listings than projects");

    // One real pass: what it changes, and whether the dry run predicted it.
    let before = (count(&db, "transitions")?, count(&db, "outbox")?);
    let mut tracker = CountingTracker::new(&listings);
    let started = Instant::now();
    let real = reconcile::run_with(&ctx, &db, &mut tracker, false)?;
    let real_time = started.elapsed();
    let after = (count(&db, "transitions")?, count(&db, "outbox")?);
    let created = real
        .replayed
        .iter()
        .filter(|r| r.2.starts_with("created task"))
        .count();
    println!(
        "real pass (dry_run = false, once): {}{}",
        ms(real_time),
        if created > 0 {
            format!(" -- includes git clone/fetch + worktree for the {created} task(s) F-2 created")
        } else {
            String::new()
        }
    );
    println!(
        "  changed: {} tasks advanced by F-1, F-2 {}; {} transitions and {} outbox rows written; listings {}",
        real.unblocked.len(),
        join(replay_classes(&real).into_iter().filter(|(k, _)| *k != "no pipeline action")),
        after.0 - before.0,
        after.1 - before.1,
        tracker.fetched()
    );
    let yes = |b: bool| if b { "yes" } else { "NO" };
    // A dry run rolls every replay back, so each task it would create gets
    // the same next id: compare outcomes without created tasks' ids.
    let unnumbered = |o: &str| {
        if o.starts_with("created task ") {
            "created task #".to_string()
        } else {
            o.to_string()
        }
    };
    let differing: Vec<String> = p
        .replayed
        .iter()
        .zip(&real.replayed)
        .filter(|(d, r)| (&d.0, &d.1, unnumbered(&d.2)) != (&r.0, &r.1, unnumbered(&r.2)))
        .map(|(d, r)| format!("{} {}: dry run {:?}, real {:?}", d.0, d.1, d.2, r.2))
        .collect();
    println!(
        "  the dry run predicted it: unblocked {}, F-2 outcomes {}, skipped {}",
        yes(real.unblocked == p.unblocked),
        if real.replayed.len() != p.replayed.len() || !differing.is_empty() {
            "NO"
        } else if real.replayed != p.replayed {
            "yes, but the dry run numbers every task it would create with the same next id"
        } else {
            "yes"
        },
        if real.skipped == p.skipped {
            "yes".to_string()
        } else {
            let reasons: std::collections::BTreeSet<&String> =
                p.skipped.keys().chain(real.skipped.keys()).collect();
            let n = |m: &BTreeMap<String, Vec<i64>>, k: &String| m.get(k).map_or(0, Vec::len);
            let diffs: Vec<String> = reasons
                .into_iter()
                .filter(|k| p.skipped.get(*k) != real.skipped.get(*k))
                .map(|k| {
                    format!(
                        "{k:?} dry run {}, real {}",
                        n(&p.skipped, k),
                        n(&real.skipped, k)
                    )
                })
                .collect();
            format!(
                "differs ({}): a dry run rolls F-2 back, so F-1 still sees what F-2 would have moved",
                diffs.join("; ")
            )
        }
    );
    let next = reconcile::run_with(&ctx, &db, &mut CountingTracker::new(&listings), true)?;
    for d in differing.iter().take(3) {
        println!("    F-2 outcome differs: {d}");
    }
    println!(
        "  the next pass (dry run) would unblock {} and examine {}",
        next.unblocked.len(),
        next.examined
    );
    println!();
    Ok((t.median, what_if))
}

/// Whether some index of `table` starts with `column`.
fn indexed(db: &Db, table: &str, column: &str) -> anyhow::Result<bool> {
    let mut list = db.conn().prepare(&format!("PRAGMA index_list({table})"))?;
    let names: Vec<String> = list
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<_, _>>()?;
    for name in names {
        let first: Option<String> = db
            .conn()
            .query_row(&format!("PRAGMA index_info({name:?})"), [], |r| r.get(2))
            .ok();
        if first.as_deref() == Some(column) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let root = std::env::temp_dir().join(format!("orch-bench-reconcile-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = (|| -> anyhow::Result<()> {
        let origin = make_origin(&root)?;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        println!("orch reconcile benchmark: one pass of reconcile::run_with over a fresh database per size");
        println!(
            "machine: {cpus} CPUs ({model}); build: {}",
            if cfg!(debug_assertions) {
                "debug (numbers are not representative)"
            } else {
                "release"
            }
        );
        println!("notes:");
        println!("  - timed passes use dry_run = true: the real code path in transactions that are rolled back, so every run sees the same database");
        println!("  - the tasks' worktree paths do not exist, so gate::gather never runs git (architecture: no design -> Fail, development: head unknown -> Pending): this measures orch + SQLite, not git;");
        println!("    the one git process in a timed pass is `git check-ref-format`, which pipeline::create_task spawns for each task F-2 would create (--new per project)");
        println!("  - forge = \"local\": the Gitea CI look-up F-1 makes for a development task whose gate is Pending (one forge call per such task) is not exercised");
        println!("  - the tracker is an in-process fake that counts calls; it has no per-task method (reconcile::Tracker has only items(), one listing per project), F-2 lists each plane project once, F-1 consults the listing only for tasks whose gate passed");
        println!();
        let small = bench_size(&root, &origin, &args, args.tasks / 10, args.active / 10)?;
        let large = bench_size(&root, &origin, &args, args.tasks, args.active)?;
        println!("== scaling ==");
        println!(
            "median pass: {} tasks {}, {} tasks {}: ratio {:.1}x for 10x the tasks",
            args.tasks / 10,
            ms(small.0),
            args.tasks,
            ms(large.0),
            large.0.as_secs_f64() / small.0.as_secs_f64()
        );
        if let (Some(s), Some(l)) = (small.1, large.1) {
            println!(
                "what-if, with an index on verdicts(job_id): {} -> {}: ratio {:.1}x",
                ms(s),
                ms(l),
                l.as_secs_f64() / s.as_secs_f64()
            );
        }
        Ok(())
    })();
    if args.keep {
        println!("kept {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}
