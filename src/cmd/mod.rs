//! One file per subcommand, each `run(&Ctx, args)`: build what the core
//! needs from the arguments, call it, return what to print. This file
//! holds only the [`Output`], [`print`] and the dispatch.

mod agents;
mod check;
mod ci;
mod config;
mod deliver;
mod docs;
mod events;
mod ingest;
mod init;
mod issue;
mod logs;
mod merge_gate;
mod metrics;
mod migrate;
mod outbox;
mod reap;
mod reconcile;
mod serve;
mod staging_check;
mod status;
mod task;
mod tick;
mod usage;
mod why;
mod work_once;

use std::io::Write;

use serde_json::Value;

use crate::cli::{Cli, Command};
use orch::config::Settings;
use orch::ctx::Ctx;
use orch::error::exit;

/// What a command prints: a JSON value for `--json`, a text for people.
pub struct Output {
    pub json: Value,
    pub text: String,
}

/// Prints to stdout; a closed pipe (`orch status | head`) is not an error.
pub fn print(json_mode: bool, out: &Output) -> anyhow::Result<()> {
    let s = if json_mode {
        format!("{}\n", serde_json::to_string_pretty(&out.json)?)
    } else if out.text.is_empty() || out.text.ends_with('\n') {
        out.text.clone()
    } else {
        format!("{}\n", out.text)
    };
    write_stdout(s.as_bytes())
}

/// One count of a tick's summary line: `(name, count, acted)`; `acted`
/// counts raise the line to INFO (the tick changed something).
pub type Count = (&'static str, usize, bool);

/// Ends a successful tick: stamps its last success (for `orch metrics`)
/// and logs its one summary line with its counts and duration — INFO when
/// it acted, DEBUG when it did nothing (so an idle tick is silent at the
/// default level, and cron mails nothing).
pub fn finish_tick(ctx: &Ctx, tick: &str, started: std::time::Instant, counts: &[Count]) {
    if let Err(e) = ctx.mark_tick_ok(tick) {
        tracing::warn!(target: "tick", tick, error = %format!("{e:#}"), "could not stamp the tick's success");
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let text = counts
        .iter()
        .map(|(name, n, _)| format!("{name}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    if counts.iter().any(|(_, n, acted)| *acted && *n > 0) {
        tracing::info!(target: "tick", tick, duration_ms, "{tick}: {text}");
    } else {
        tracing::debug!(target: "tick", tick, duration_ms, "{tick}: {text}");
    }
}

/// Runs `f` for real, or — with `dry_run` — as a rehearsal
/// ([`orch::db::Db::rehearse_all`]): the same code path, every write rolled
/// back at the end, nothing outside the database touched.
pub fn run_or_rehearse<T>(
    db: &orch::db::Db,
    dry_run: bool,
    f: impl FnOnce(&orch::db::Db) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if dry_run {
        db.rehearse_all(f)
    } else {
        f(db)
    }
}

/// The first line of a dry run's text: nothing was written.
pub const DRY_RUN_NOTE: &str = "dry run: nothing was written; the real run would do this:\n";

/// Writes `bytes` to stdout; a closed pipe (`orch man | head`) is not an
/// error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Where the environment's settings came from: the `ORCH_*` keys set
/// before the settings file was read, the file read (a `.env`, or the
/// installed `/etc/orch/orch.env`; if any), and the secret
/// keys removed from the environment once read ([`drop_secrets`]).
pub struct Sources {
    pub from_env: std::collections::BTreeSet<String>,
    pub dotenv: Option<std::path::PathBuf>,
    pub dropped: std::collections::BTreeSet<String>,
}

/// Removes every secret setting (`ORCH_*_SECRET`, `_TOKEN`, `_API_KEY`)
/// from this process's environment once the settings hold them: nothing
/// orch starts inherits them, and `/proc/<pid>/environ` — which shows the
/// environment orch was started with, not this one — is unreadable to
/// others anyway ([`orch::process::make_undumpable`]). Returns the keys
/// removed that had a value (`config show` reports them as set). Call
/// while the process is single-threaded.
fn drop_secrets() -> std::collections::BTreeSet<String> {
    let mut set = std::collections::BTreeSet::new();
    for (key, value) in std::env::vars_os() {
        let Ok(key) = key.into_string() else { continue };
        if key.starts_with("ORCH_") && orch::config::is_secret(&key) {
            if !value.to_string_lossy().trim().is_empty() {
                set.insert(key.clone());
            }
            std::env::remove_var(&key);
        }
    }
    set
}

/// Runs the command, prints its output and returns the exit code.
pub fn run(cli: Cli, sources: &Sources) -> anyhow::Result<i32> {
    for (name, near) in
        orch::config::unknown_keys(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    {
        match near {
            Some(k) => tracing::warn!("ignoring unknown setting {name} (did you mean {k}?)"),
            None => tracing::warn!("ignoring unknown setting {name}"),
        }
    }
    // Documentation needs no settings, database or config.
    match cli.command {
        Command::Completions { shell } => return docs::completions(shell).map(|()| exit::OK),
        Command::Man { dir, dry_run } => {
            return docs::man(dir.as_deref(), dry_run, cli.json).map(|()| exit::OK)
        }
        // A detached run's supervisor reads its spec only: no settings,
        // database or config, so an upgrade or a broken config cannot
        // touch a run that goes on.
        Command::RunAgent { spec, supervise } => {
            return orch::process::detached::run_agent_command(
                &spec,
                supervise,
                orch::worker::supervisor_heartbeat,
            )
            .map(|()| exit::OK)
        }
        _ => {}
    }
    let settings = Settings::load(
        &|k| std::env::var(k).ok(),
        cli.db.clone(),
        cli.config.clone(),
    )?;
    let sources = &Sources {
        dropped: drop_secrets(),
        from_env: sources.from_env.clone(),
        dotenv: sources.dotenv.clone(),
    };
    if let Command::StagingCheck(args) = cli.command {
        // The staging config is checked (C4), not required to load.
        let (out, code) = staging_check::run(&settings, args)?;
        print(cli.json, &out)?;
        return Ok(code);
    }
    let ctx = Ctx::load(settings)?;
    if ctx.config.projects.is_empty() {
        tracing::warn!(
            "no projects configured in {}: add a [[projects]] entry (README, \"Configuration\")",
            ctx.settings.config_path.display()
        );
    }
    let (out, code) = match cli.command {
        Command::Init { dry_run } => (init::run(&ctx, dry_run)?, exit::OK),
        Command::Migrate { from, dry_run } => (migrate::run(&ctx, &from, dry_run)?, exit::OK),
        Command::Serve { bind } => return serve::run(&ctx, bind).map(|()| exit::OK),
        Command::Ingest(args) => (ingest::run(&ctx, args)?, exit::OK),
        Command::WorkOnce {
            role,
            project,
            dry_run,
        } => (
            work_once::run(&ctx, role.as_deref(), project.as_deref(), dry_run)?,
            exit::OK,
        ),
        Command::Reconcile { dry_run } => (reconcile::run(&ctx, dry_run)?, exit::OK),
        Command::Ci { project, dry_run } => (ci::run(&ctx, project.as_deref(), dry_run)?, exit::OK),
        Command::Reap { dry_run } => (reap::run(&ctx, dry_run)?, exit::OK),
        Command::Deliver { dry_run } => (deliver::run(&ctx, dry_run)?, exit::OK),
        Command::Tick { max_jobs, dry_run } => (tick::run(&ctx, max_jobs, dry_run)?, exit::OK),
        Command::Status { all } => (status::run(&ctx, all)?, exit::OK),
        Command::MergeGate {
            task: Some(task),
            dry_run,
            release,
            ..
        } => merge_gate::run(&ctx, task, dry_run, release)?,
        Command::MergeGate {
            task: None,
            project,
            dry_run,
            ..
        } => merge_gate::line(&ctx, project.as_deref(), dry_run)?,
        Command::Check => check::run(&ctx)?,
        Command::Task(c) => (task::run(&ctx, c)?, exit::OK),
        Command::Issue(c) => (issue::run(&ctx, c)?, exit::OK),
        Command::Events(c) => (events::run(&ctx, c)?, exit::OK),
        Command::Agents(c) => (agents::run(&ctx, c)?, exit::OK),
        Command::Outbox(c) => outbox::run(&ctx, c)?,
        Command::Usage { task, since } => (usage::run(&ctx, task, since.as_deref())?, exit::OK),
        Command::Config(c) => config::run(&ctx, c, sources)?,
        Command::Logs {
            job,
            attempt,
            follow,
        } => match logs::run(&ctx, job, attempt, follow, cli.json)? {
            Some(out) => (out, exit::OK),
            None => return Ok(exit::OK),
        },
        Command::Why { task } => (why::run(&ctx, task)?, exit::OK),
        Command::Metrics { textfile } => (metrics::run(&ctx, textfile.as_deref())?, exit::OK),
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::RunAgent { .. }
        | Command::StagingCheck(_) => {
            unreachable!("dispatched before the context loads")
        }
    };
    print(cli.json, &out)?;
    Ok(code)
}
