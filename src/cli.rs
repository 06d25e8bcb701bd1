//! Command-line definitions (clap derive). Nothing here reaches the core:
//! `main.rs` turns these into calls.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use orch::webhook::Source;

/// orch drives work items through an AI-agent delivery pipeline, one
/// crash-safe, idempotent tick at a time.
///
/// Every command does one bounded unit of work against one SQLite file and
/// exits. Exit codes: 0 success (also "nothing to do"), 1 error, 2 usage or
/// config error, 3 a gate or check verdict is FAIL, 75 busy (another
/// instance holds the lock; retry on the next tick).
#[derive(Debug, Parser)]
#[command(name = "orch", version = version_line(), propagate_version = true)]
pub struct Cli {
    /// The database: an SQLite file, or a PostgreSQL URL (postgres://…,
    /// postgresql://…) [default: $ORCH_STATE_DIR/orch.db]
    #[arg(long, global = true, env = "ORCH_DB", value_name = "PATH|URL")]
    pub db: Option<PathBuf>,
    /// The TOML config with projects and agents [default: ./orch.toml]
    #[arg(long, global = true, env = "ORCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON on stdout (logs always go to stderr)
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (warnings and errors only)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// `orch --version`: `orch 0.1.0 (commit <sha>, schema <n>)` — the git
/// commit the binary was built from and the schema version it expects.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{} (commit {}, schema {})",
            orch::build_info::VERSION,
            orch::build_info::COMMIT,
            orch::db::schema_version()
        )
    })
}

/// `a, b or c`: a list of names for a help text, so the text follows the
/// list (the stages and roles come from `Stage::ALL`).
fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The stages an agent runs at, in order (`Stage::ALL` less `done`).
fn agent_stages() -> Vec<&'static str> {
    orch::model::Stage::ALL
        .into_iter()
        .filter(|s| s.role().is_some())
        .map(orch::model::Stage::as_str)
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or migrate the database and state folders (idempotent)
    ///
    /// The only command that creates or migrates a database: every other
    /// command opens it as it is and exits 2 when it is missing or old.
    Init {
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy an SQLite database into a new PostgreSQL one (--db / ORCH_DB)
    ///
    /// The target is the PostgreSQL database that --db / ORCH_DB names
    /// (postgres://… or postgresql://…), initialised by `orch init` and
    /// empty but for what init writes (the instance id and the project
    /// registry, both replaced by the source's). The source must be at this
    /// orch's schema (run `orch init` on it first). Every table is copied
    /// in one transaction, ids kept, blobs byte for byte; row counts are
    /// compared before the commit. The source is opened read-only and left
    /// as it was: going back is pointing ORCH_DB at it again. Stop orch's
    /// timers and `orch serve` first: what they write to the SQLite file
    /// after the copy's snapshot is not copied. Exit 0 copied (or would
    /// copy, with --dry-run); 2 refused (the source's schema, a target not
    /// initialised or not empty, ORCH_DB not a PostgreSQL URL), nothing
    /// changed; 75 another migration holds the lock; 1 the copy failed and
    /// was rolled back (a value that does not fit its column is named by
    /// table, column and row id).
    Migrate {
        /// The SQLite database file to copy from
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        /// Copy everything, compare the counts, then roll back: write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Webhook shim: verify signatures, store deliveries in the inbox, answer
    ///
    /// Routes: POST /webhooks/plane, POST /webhooks/gitea, GET /healthz
    /// (version, commit, schema), GET /queue (the `status --json`
    /// document). Runs no pipeline logic.
    Serve {
        /// Address to listen on [env: ORCH_BIND, default 127.0.0.1:8500]
        #[arg(long)]
        bind: Option<String>,
    },
    /// Turn stored deliveries into task and job changes, oldest first
    Ingest(IngestArgs),
    /// Claim at most one runnable job, run its agent, finalize it
    #[command(name = "work-once")]
    WorkOnce {
        // The roles, from `Stage::ALL`.
        #[arg(long, help = format!("Only claim jobs of this role: {}", one_of(&orch::config::ROLES)))]
        role: Option<String>,
        /// Only claim jobs of this project
        #[arg(long)]
        project: Option<String>,
        /// Print the job it would claim and the argv it would run; claim
        /// and run nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run one agent detached (internal: started by work-once)
    ///
    /// Without --supervise: starts the supervisor and exits at once. With
    /// it: runs the agent of the spec file to its end, writing its start
    /// and exit records next to its log (DESIGN §4 "Detached runs").
    #[command(name = "run-agent", hide = true)]
    RunAgent {
        /// The run's spec, written by orch under its state directory
        #[arg(long)]
        spec: std::path::PathBuf,
        /// Be the supervisor (run the agent) rather than start it
        #[arg(long)]
        supervise: bool,
    },
    /// One reconcile pass: advance tasks whose gate passed without an event
    Reconcile {
        /// Print what the pass would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// One CI pass of the local forge: test the development heads that wait
    ///
    /// Runs the project's test command (confined) on every development
    /// head of a local-forge project whose job finished and which has no
    /// CI status yet, records the result (context orch/test, with its log)
    /// and decides the task's development gate: green → review, red →
    /// back to development. One pass at a time (exit 75 when another runs);
    /// `orch tick` runs it too. Gitea projects' CI arrives as status
    /// webhooks and through reconcile.
    Ci {
        /// Only test heads of this project
        #[arg(long)]
        project: Option<String>,
        /// List the heads it would test; run and write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// One reaper pass: recover dead workers' jobs, finish abandoned
    /// finalizations, kill timed-out agents, release stale leases
    Reap {
        /// Print the plan; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the merge line: land the tasks ready to merge, in batches
    ///
    /// Without --task: first the staging check of each task awaiting it
    /// (projects with [projects.staging]: PASS makes the task ready, FAIL
    /// sends it back, INFRA retries later); then, for each project (or
    /// --project) with tasks ready to merge (a deployer PASS at
    /// deploy-staging, validated where staging is set), take the repo's merge
    /// lease, build main + T1 … Tk (each branch rebased onto the tip before
    /// it and pushed; a conflicting task goes back to development with the
    /// files), run the test command once on the tip, fast-forward main to
    /// the tested tip and move every landed task to deploy. A red batch is
    /// bisected: the culprit goes back with the failing log, the rest land.
    /// `orch tick` runs it too. Exit 0 (also when nothing is ready or the
    /// lease is busy); 1 when a project's line failed (git, the forge) —
    /// the other projects' lines still ran.
    ///
    /// With --task ID: the merge gate for that one task, by hand. Takes the
    /// lease, catches the task branch up with main (rebase, push with
    /// --force-with-lease), re-runs the test command, fast-forwards main,
    /// and moves the task to deploy (actor human). Stands in for the
    /// deployer's staging verdict. Exit 0 merged, 3 rolled back (conflict
    /// or red tests), 75 deferred (lease busy, job running, main moving;
    /// nothing changed).
    #[command(name = "merge-gate")]
    MergeGate {
        /// One task (at deploy-staging), by hand; without it, the line
        #[arg(long)]
        task: Option<i64>,
        /// The line for this project only
        #[arg(long, conflicts_with = "task")]
        project: Option<String>,
        /// Print the steps a real run would take; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Instead of running the gate, release the merge lease this task
        /// holds (for a stuck lease; `orch reap` releases stale ones)
        #[arg(long, requires = "task")]
        release: bool,
    },
    /// Run the staging suite against a staging instance of orch
    #[command(name = "staging-check", long_about = STAGING_CHECK_HELP)]
    StagingCheck(StagingCheckArgs),
    /// Send due outbox messages (tracker comments and states, notifications)
    Deliver {
        /// Print the messages it would send; send and write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// ingest, reap, reconcile, deliver, then work-once while jobs are
    /// runnable, then the merge line (for cron users and the demo)
    Tick {
        /// At most this many jobs in this tick
        #[arg(long, default_value_t = 100)]
        max_jobs: u32,
        /// Rehearse every step: the deliveries it would ingest, the reaper's
        /// plan, reconcile's moves, the messages it would send, the jobs it
        /// would claim and their argv; write, send and run nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Queue depth by stage, running jobs, leases, inbox and outbox backlog
    ///
    /// Lists (running jobs, tasks waiting for a human, parked tasks) show
    /// at most 20 entries each, then "… and N more"; `--all` shows every
    /// entry. The counts by stage and status are always whole.
    Status {
        /// Every entry of every list, however long
        #[arg(long)]
        all: bool,
    },
    /// Verify the invariants over the database (exit 3 when one is violated)
    ///
    /// Integrity and foreign keys, the schema version, legal and unique
    /// transitions, one active job per task, no running job without a live
    /// worker (run `orch reap` first), dead letters with their reasons.
    Check,
    /// Inspect tasks; the human gate; ad-hoc repair
    #[command(subcommand)]
    Task(TaskCommand),
    /// The local tracker
    #[command(subcommand)]
    Issue(IssueCommand),
    /// The inbox of webhook deliveries
    #[command(subcommand)]
    Events(EventsCommand),
    /// The outbox of side effects: list messages, send dead letters again
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// The agents: what a run of a role is told
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Why a task is where it is: its transitions with their causes, and
    /// the one thing it waits for
    ///
    /// Read-only (it never takes the write lock). The chain lists every
    /// transition with its cause: the job, its run and verdict (worker,
    /// reaper), the delivery (webhook), the reconcile pass (reconciler),
    /// the command (human). `waiting.kind` in --json is one of done,
    /// escalated, job_running, finalize_failed, merge_lease, parked,
    /// paused, job_queued, merge_line, failed_delivery, tracker, approval,
    /// gate. Exit 2
    /// when there is no such task.
    Why {
        /// The task id
        task: i64,
    },
    /// Tokens and cost per task, stage and role
    Usage {
        /// Only this task
        #[arg(long)]
        task: Option<i64>,
        /// Only runs started in this last span: 90s, 30m, 12h, 7d
        #[arg(long, value_name = "SPAN")]
        since: Option<String>,
    },
    /// The agent log of a job's run (its latest attempt by default)
    ///
    /// e.g. `orch logs 7 --follow` while job 7 runs; `orch task show ID`
    /// lists a task's jobs.
    Logs {
        /// The job id
        job: i64,
        /// This attempt instead of the latest
        #[arg(long)]
        attempt: Option<i64>,
        /// Keep printing what the agent appends until the job ends
        #[arg(long, short)]
        follow: bool,
    },
    /// Prometheus metrics of the pipeline (text format), to stdout or a file
    ///
    /// With --textfile the file is replaced atomically, for node exporter's
    /// textfile collector (e.g. --textfile /var/lib/node_exporter/orch.prom).
    Metrics {
        /// Write the metrics to this file instead of stdout
        #[arg(long, value_name = "PATH")]
        textfile: Option<std::path::PathBuf>,
    },
    /// The effective configuration, and checks that it can work
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    ///
    /// e.g. `orch completions bash > /usr/share/bash-completion/completions/orch`
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Print the man page orch(1), or write one page per subcommand
    ///
    /// Without `--dir`: orch(1) in roff on stdout. With `--dir DIR`:
    /// orch.1 and one page per subcommand (orch-status.1, orch-task-show.1,
    /// …) into DIR, every page orch(1) names, each with its options; prints
    /// the files written. `scripts/install` installs them in
    /// PREFIX/share/man/man1.
    Man {
        /// Write every page into this folder (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// With --dir: print the files it would write; write nothing
        #[arg(long, requires = "dir")]
        dry_run: bool,
    },
}

const STAGING_CHECK_HELP: &str = "\
Run the staging suite against a staging instance of orch.

The instance is its shim (--url) and, read-only, its database (--db) and
config (--config); run the check with the staging instance's environment
(its .env): deliveries are signed with ORCH_PLANE_WEBHOOK_SECRET and
ORCH_GITEA_WEBHOOK_SECRET as set here, so a secret that differs from the
instance's is a FAIL. The only write to the instance's database is C10.

Checks:
  C1   health       GET /healthz answers with version, commit and schema
  C2   provenance   that commit is --expect-revision (when given)
  C3   schema       the database is at the schema the instance expects
  C4   config       the config loads; the sandbox project (--project)
                    exists and receives Plane deliveries; the Plane
                    webhook secret is set
  C5   unsigned     an unsigned delivery is 401, nothing stored
  C6   mis-signed   a delivery signed with another secret is 401, nothing
                    stored
  C7   oversize     a delivery over 1 MiB is 413, nothing stored
  C8   redelivery   a delivery is 202 once, then 200 duplicate (also
                    Plane's retry with a new delivery id)
  C9a  end to end   a signed synthetic In Progress delivery for the
                    sandbox project (its state id resolved from the
                    tracker, never hard-coded) creates the task within
                    --timeout-s (the instance's ingest must be running)
  C9b  task set-up  the task has its branch and its analyst job
  C10  cleanup      the task is cancelled the moment it appears (actor
                    human, reason staging-check); no agent ran on it

Each check is PASS, FAIL or INFRA, with a reason and its duration. INFRA
means the environment failed, not the code: connection refused or reset,
timeouts, the tracker or forge unreachable or answering 5xx.

Verdict: PASS when no check FAILed and every INFRA check is waived
(--waive, ORCH_STAGING_WAIVE); FAIL when any check FAILed; INFRA
otherwise. A FAIL cannot be waived.

Exit codes: 0 PASS, 3 FAIL, 75 INFRA (retry later), 2 usage (a bad
argument, an unknown check id in --waive), 1 an error of the checker itself.

--json prints the machine verdict: {verdict, url, project, revision (the
commit validated), version, expected_revision, started_at_ms, finished_at_ms,
waived, task_id, checks: [{id, name, status, reason, duration_ms,
waived}]}.";

#[derive(Debug, Args)]
pub struct StagingCheckArgs {
    /// The staging instance's shim, e.g. http://127.0.0.1:8501
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The sandbox project [default: the config's only project]
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// The git commit the instance must run (full sha or a prefix of at
    /// least 7 hex digits)
    #[arg(long, value_name = "REV")]
    pub expect_revision: Option<String>,
    /// Checks whose INFRA does not hold the verdict back (comma list of
    /// ids, e.g. C9a,C9b)
    #[arg(
        long,
        env = "ORCH_STAGING_WAIVE",
        value_delimiter = ',',
        value_name = "CHECK,…"
    )]
    pub waive: Vec<String>,
    /// How long to wait for the instance (each HTTP call, capped at 30 s,
    /// and the synthetic task), in seconds
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_s: u64,
    /// Run only the checks that read (C1–C4) and list what C5–C10 would
    /// send and write; the verdict and exit code are C1–C4's
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Ingest at most this many deliveries
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// Store and ingest one delivery from a file: its sender
    #[arg(long, value_parser = source_parser(), requires_all = ["event", "file"])]
    pub source: Option<Source>,
    /// The event name of the delivery (Plane: issue; Gitea: push, status, …)
    #[arg(long, requires = "source")]
    pub event: Option<String>,
    /// The delivery's body (JSON)
    #[arg(long, requires = "source", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Print what ingesting would do; write nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// `--source`: one of the registered webhook senders
/// ([`orch::webhook::SOURCES`]), listed in `--help` and in the usage error.
fn source_parser() -> impl clap::builder::TypedValueParser<Value = Source> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(orch::webhook::SOURCES.iter().map(|s| s.as_str()))
        .try_map(|name| name.parse::<Source>())
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List tasks
    List,
    /// A task with its transitions, jobs, usage and messages
    Show { id: i64 },
    /// Approve the analysis (analysis → architecture)
    Approve {
        id: i64,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Reject the analysis and run it again
    Reject {
        id: i64,
        #[arg(long)]
        reason: String,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Move a task to its next stage by hand
    Advance {
        id: i64,
        #[arg(long, default_value = "advanced by hand")]
        reason: String,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Send a task back to development by hand
    Rollback {
        id: i64,
        #[arg(long)]
        reason: String,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the current stage's job again
    Retry {
        id: i64,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop all work on a task: cancel its jobs and escalate it
    Cancel {
        id: i64,
        #[arg(long, default_value = "cancelled by hand")]
        reason: String,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Clear an escalation and the developer retry count, and rerun the stage
    Unblock {
        id: i64,
        #[arg(long, default_value = "unblocked by hand")]
        reason: String,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// End a task's budget park: its next job runs once regardless of the
    /// budget ceilings (a parked task also resumes by itself when the day
    /// rolls over or the ceiling is raised)
    Unpark {
        id: i64,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum IssueCommand {
    /// Create a work item in the local tracker, already In Progress
    Add {
        #[arg(long)]
        project: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        body: String,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Stored deliveries, newest first
    List {
        /// Only failing and dead-lettered deliveries
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Make a delivery pending again and ingest it
    Replay {
        id: i64,
        /// Print what the real run would do; write nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Outbox messages (tracker states and comments, forge pull requests,
    /// notifications), newest first, with their status and last error
    List {
        /// Only dead-lettered messages
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send dead-lettered messages again, now
    ///
    /// Each message becomes pending with a new round of attempts and is
    /// sent at once (a message waits while an older one of its task and
    /// channel is pending; a send that fails again backs off as usual).
    /// The retry is recorded on the message (retries, retried_at_ms,
    /// retried_by: your login), counted (orch_outbox_retried_total) and
    /// logged. A tracker state that a newer delivered state superseded is
    /// refused (--all-dead skips it).
    /// Exit 0 when every retried message was delivered or waits its turn,
    /// 1 when a send failed again, 2 for an id that is not a dead letter.
    Retry {
        /// The dead letters to send again (`orch outbox list --dead`)
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        ids: Vec<i64>,
        /// Every dead letter
        #[arg(long)]
        all_dead: bool,
        /// Print what the real run would send; send and write nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Effective settings with their source (default, .env, environment;
    /// secrets redacted), each role's agent with its argv, the projects and
    /// their tracker state ids as resolved
    Show,
    /// Agent programs on PATH, test commands startable, clone URLs
    /// reachable with their default branch (exit 3 when a check fails)
    Check {
        /// Also ask the services: Plane states resolvable, Gitea's version
        /// and the token's write:repository and write:issue on each repo
        /// (probes that create nothing), the Telegram bot and its chat
        #[arg(long)]
        online: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Print the argv, environment and prompt a run of ROLE gets
    ///
    /// Rendered as the worker renders them: with --task, for that task at
    /// its stage (or --stage), feedback included; without, for an example
    /// task with <placeholder> values. Writes nothing.
    Show {
        // The roles, from `Stage::ALL`.
        #[arg(help = one_of(&orch::config::ROLES))]
        role: String,
        /// Render for this task
        #[arg(long)]
        task: Option<i64>,
        // The stages, from `Stage::ALL`.
        #[arg(long, help = format!(
            "The stage to render for: {} (the deployer runs at deploy-staging and deploy) \
             [default: the task's stage, else the role's first]",
            one_of(&agent_stages())
        ))]
        stage: Option<String>,
        /// Without --task: the project of the example [default: the first]
        #[arg(long)]
        project: Option<String>,
    },
}
