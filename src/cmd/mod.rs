//! One function per subcommand: build what the core needs from the
//! arguments, call it, print the result (text, or JSON with `--json`).

mod merge_gate;
mod task;

use std::io::Write;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::cli::{Cli, Command, EventsCommand, IngestArgs, IssueCommand};
use orch::config::Settings;
use orch::ctx::Ctx;
use orch::db::Db;
use orch::error::exit;
use orch::{deliver, ingest, reap, reconcile, status, worker};

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
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(s.as_bytes()).and_then(|_| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Runs the command and returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let settings = Settings::load(
        &|k| std::env::var(k).ok(),
        cli.db.clone(),
        cli.config.clone(),
    )?;
    let ctx = Ctx::load(settings)?;
    let json_mode = cli.json;
    let out = match cli.command {
        Command::Init => init(&ctx)?,
        Command::Serve { bind } => return serve(&ctx, bind).map(|_| exit::OK),
        Command::Ingest(args) => ingest_cmd(&ctx, args)?,
        Command::WorkOnce { role, project } => {
            let db = ctx.open_db()?;
            let o = worker::work_once(&ctx, &db, role.as_deref(), project.as_deref())?;
            let text = match &o {
                worker::WorkOutcome::Idle => "nothing runnable".to_string(),
                worker::WorkOutcome::Ran {
                    job_id,
                    task_id,
                    stage,
                    exit_code,
                    finalized,
                } => {
                    format!("job {job_id} (task {task_id}, {stage}): agent exited {exit_code}; {finalized:?}")
                }
            };
            Output {
                json: serde_json::to_value(&o)?,
                text,
            }
        }
        Command::Reconcile { dry_run } => {
            let _lock = ctx.tick_lock("reconcile")?;
            let db = ctx.open_db()?;
            let pass = reconcile::run(&ctx, &db, dry_run)?;
            reconcile_output(&pass, dry_run)?
        }
        Command::Reap { dry_run } => {
            let _lock = ctx.tick_lock("reap")?;
            let db = ctx.open_db()?;
            reap_cmd(&ctx, &db, dry_run)?
        }
        Command::Deliver => {
            let _lock = ctx.tick_lock("deliver")?;
            let db = ctx.open_db()?;
            let s = deliver::deliver_due(&ctx, &db, 1000)?;
            deliver_output(&s)?
        }
        Command::Tick { max_jobs } => tick(&ctx, max_jobs)?,
        Command::Status => {
            let db = ctx.open_db()?;
            let doc = status::document(&db)?;
            Output {
                text: status_text(&doc),
                json: doc,
            }
        }
        Command::MergeGate {
            task,
            dry_run,
            release,
        } => {
            let (out, code) = merge_gate::run(&ctx, task, dry_run, release)?;
            print(json_mode, &out)?;
            return Ok(code);
        }
        Command::Check => {
            let db = ctx.open_db()?;
            let boot = orch::process::boot_id();
            let live = |host: &str, pid: i64, start: i64| {
                host == boot && orch::process::is_alive(pid as i32, start as u64)
            };
            let violations = orch::check::run(&db, &live)?;
            let text = if violations.is_empty() {
                "all invariants hold".to_string()
            } else {
                violations
                    .iter()
                    .map(|v| format!("VIOLATED {}: {}\n", v.invariant, v.detail))
                    .collect()
            };
            print(
                json_mode,
                &Output {
                    json: json!({ "ok": violations.is_empty(), "violations": violations }),
                    text,
                },
            )?;
            return Ok(if violations.is_empty() {
                exit::OK
            } else {
                exit::VERDICT_FAIL
            });
        }
        Command::Task(c) => task::run(&ctx, c)?,
        Command::Issue(IssueCommand::Add {
            project,
            title,
            body,
        }) => {
            let db = ctx.open_db()?;
            let (issue, task) = ingest::add_local_issue(&ctx, &db, &project, &title, &body)?;
            Output {
                json: json!({ "issue_id": issue, "task_id": task }),
                text: format!("created local issue {issue} → task {task}"),
            }
        }
        Command::Events(c) => events(&ctx, c)?,
        Command::Usage { task } => usage(&ctx, task)?,
    };
    print(json_mode, &out)?;
    Ok(exit::OK)
}

fn init(ctx: &Ctx) -> anyhow::Result<Output> {
    ctx.ensure_state_dirs()?;
    let before = if ctx.settings.db_path.exists() {
        Some(Db::open_readonly_version(&ctx.settings.db_path)?)
    } else {
        None
    };
    let db = ctx.open_db()?;
    let version = db.user_version()?;
    let text = match before {
        Some(v) if v == version => format!(
            "database {} is up to date (schema {version})",
            ctx.settings.db_path.display()
        ),
        Some(v) => format!(
            "migrated {} from schema {v} to {version}",
            ctx.settings.db_path.display()
        ),
        None => format!(
            "created {} (schema {version})",
            ctx.settings.db_path.display()
        ),
    };
    Ok(Output {
        json: json!({
            "db": ctx.settings.db_path, "state_dir": ctx.settings.state_dir,
            "schema_version": version, "previous_version": before,
            "projects": ctx.config.projects.iter().map(|p| &p.name).collect::<Vec<_>>(),
        }),
        text,
    })
}

fn serve(ctx: &Ctx, bind: Option<String>) -> anyhow::Result<()> {
    // Creates and migrates the database before the first request arrives.
    drop(ctx.open_db()?);
    let mut opts = orch::serve::ServeOptions::from_settings(&ctx.settings);
    if let Some(bind) = bind {
        opts.bind = bind;
    }
    let (db_path, timeout) = (ctx.settings.db_path.clone(), ctx.settings.busy_timeout_ms);
    let queue: orch::serve::QueueFn =
        std::sync::Arc::new(move || status::document(&Db::open(&db_path, timeout)?));
    orch::serve::run_forever(opts, queue)
}

fn ingest_cmd(ctx: &Ctx, args: IngestArgs) -> anyhow::Result<Output> {
    let _lock = ctx.tick_lock("ingest")?;
    let db = ctx.open_db()?;
    if let (Some(source), Some(event), Some(file)) = (args.source, args.event, args.file) {
        let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let source = match source {
            crate::cli::SourceArg::Plane => orch::webhook::Source::Plane,
            crate::cli::SourceArg::Gitea => orch::webhook::Source::Gitea,
        };
        let delivery = format!("file:{}", orch::webhook::body_sha256(&body));
        let recorded = orch::webhook::store(
            &db,
            source,
            &event,
            &delivery,
            &[],
            &body,
            orch::clock::now_ms(),
        )
        .with_context(|| format!("storing {}", file.display()))?;
        let (id, outcome) = match recorded {
            orch::db::Recorded::Stored(id) => (id, ingest::ingest_one(ctx, &db, id)?),
            orch::db::Recorded::Duplicate(id) => (
                id,
                format!("duplicate of delivery {id}; not ingested again"),
            ),
        };
        return Ok(Output {
            json: json!({ "inbox_id": id, "outcome": outcome }),
            text: format!("delivery {id}: {outcome}"),
        });
    }
    let s = ingest::ingest_pending(ctx, &db, args.limit)?;
    let mut text = String::new();
    for (id, o) in &s.processed {
        text += &format!("delivery {id}: {o}\n");
    }
    for (id, e) in &s.failed {
        text += &format!("delivery {id}: FAILED: {e}\n");
    }
    if text.is_empty() {
        text = "no pending deliveries".into();
    }
    Ok(Output {
        json: serde_json::to_value(&s)?,
        text,
    })
}

fn reap_cmd(ctx: &Ctx, db: &Db, dry_run: bool) -> anyhow::Result<Output> {
    let plan = reap::plan(ctx, db, orch::clock::now_ms())?;
    if dry_run {
        let text = if plan.is_empty() {
            "nothing to reap".to_string()
        } else {
            plan.iter().map(|a| format!("would {a}\n")).collect()
        };
        return Ok(Output {
            json: json!({ "dry_run": true, "actions": plan }),
            text,
        });
    }
    let done = reap::execute(ctx, db, plan)?;
    let text = if done.is_empty() {
        "nothing to reap".to_string()
    } else {
        done.iter()
            .map(|d| format!("{}: {}\n", d.action, d.result))
            .collect()
    };
    Ok(Output {
        json: json!({ "dry_run": false, "actions": done }),
        text,
    })
}

fn reconcile_output(pass: &reconcile::Pass, dry_run: bool) -> anyhow::Result<Output> {
    let would = if dry_run { "would " } else { "" };
    let mut text = String::new();
    if !pass.enabled {
        text += "reconcile is disabled (ORCH_RECONCILE_ENABLED=false)\n";
    }
    for (project, item, outcome) in &pass.replayed {
        text += &format!("{would}replay {project} work item {item}: {outcome}\n");
    }
    for (project, error) in &pass.errors {
        text += &format!("tracker of {project} failed: {error}\n");
    }
    for (inbox, outcome) in &pass.attributed {
        text += &format!("orphan CI status (delivery {inbox}): {outcome}\n");
    }
    text += &format!("examined {} task(s)\n", pass.examined);
    for (id, from, to) in &pass.unblocked {
        text += &format!("{would}advance task {id}: {from} → {to}\n");
    }
    for (why, ids) in &pass.skipped {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        text += &format!("skipped ({why}): task {}\n", ids.join(", "));
    }
    Ok(Output {
        json: serde_json::to_value(pass)?,
        text,
    })
}

fn deliver_output(s: &deliver::DeliverSummary) -> anyhow::Result<Output> {
    Ok(Output {
        json: serde_json::to_value(s)?,
        text: format!(
            "delivered {}, failed {}, dead-lettered {}, waiting {}, deferred {}",
            s.delivered.len(),
            s.failed.len(),
            s.dead_lettered.len(),
            s.waiting.len(),
            s.deferred.len()
        ),
    })
}

/// One tick for cron users: each step under its own lock; a busy step is
/// skipped, not fatal.
fn tick(ctx: &Ctx, max_jobs: u32) -> anyhow::Result<Output> {
    let db = ctx.open_db()?;
    let mut report = serde_json::Map::new();
    let mut text = String::new();
    let mut step =
        |name: &str, f: &mut dyn FnMut() -> anyhow::Result<Output>| -> anyhow::Result<()> {
            let lock = match ctx.tick_lock(name) {
                Ok(l) => l,
                Err(e) if orch::error::exit_code_for(&e) == exit::BUSY => {
                    report.insert(name.into(), json!("busy"));
                    text += &format!("{name}: busy, skipped\n");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let out = f()?;
            drop(lock);
            text += &format!("{name}: {}\n", out.text.trim_end().replace('\n', "\n  "));
            report.insert(name.into(), out.json);
            Ok(())
        };
    step("ingest", &mut || {
        let s = ingest::ingest_pending(ctx, &db, 1000)?;
        Ok(Output {
            text: format!("{} processed, {} failed", s.processed.len(), s.failed.len()),
            json: serde_json::to_value(&s)?,
        })
    })?;
    step("reap", &mut || reap_cmd(ctx, &db, false))?;
    step("reconcile", &mut || {
        reconcile_output(&reconcile::run(ctx, &db, false)?, false)
    })?;
    step("deliver", &mut || {
        deliver_output(&deliver::deliver_due(ctx, &db, 1000)?)
    })?;
    let mut jobs = Vec::new();
    for _ in 0..max_jobs {
        match worker::work_once(ctx, &db, None, None)? {
            worker::WorkOutcome::Idle => break,
            ran => jobs.push(ran),
        }
    }
    text += &format!("work: ran {} job(s)\n", jobs.len());
    report.insert("work".into(), serde_json::to_value(&jobs)?);
    if !jobs.is_empty() {
        // Deliver what the jobs just wrote; busy means another deliver runs.
        if let Ok(_lock) = ctx.tick_lock("deliver") {
            if let Err(e) = deliver::deliver_due(ctx, &db, 1000) {
                tracing::warn!(target: "deliver", error = %format!("{e:#}"), "delivery after the jobs failed; the next tick retries");
            }
        }
    }
    Ok(Output {
        json: Value::Object(report),
        text,
    })
}

fn status_text(doc: &Value) -> String {
    let mut t = String::new();
    t += "tasks:\n";
    for s in doc["tasks"].as_array().into_iter().flatten() {
        t += &format!(
            "  {:<15} {:>5}{}\n",
            s["stage"].as_str().unwrap_or(""),
            s["count"],
            if s["escalated"].as_bool() == Some(true) {
                "  (escalated)"
            } else {
                ""
            }
        );
    }
    let map = |v: &Value| -> String {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    };
    t += &format!("jobs: {}\n", map(&doc["jobs"]));
    for r in doc["running"].as_array().into_iter().flatten() {
        t += &format!(
            "  running job {} task {} {} attempt {} for {}s\n",
            r["job_id"],
            r["task_id"],
            r["stage"].as_str().unwrap_or(""),
            r["attempt"],
            r["age_s"]
        );
    }
    for l in doc["leases"].as_array().into_iter().flatten() {
        let left_s =
            (l["expires_at_ms"].as_i64().unwrap_or(0) - doc["now_ms"].as_i64().unwrap_or(0)) / 1000;
        t += &format!(
            "lease {} held by {}{}, expires in {left_s}s\n",
            l["name"].as_str().unwrap_or(""),
            l["holder"].as_str().unwrap_or(""),
            l["job_id"]
                .as_i64()
                .map(|j| format!(" for job {j}"))
                .unwrap_or_default()
        );
    }
    t += &format!(
        "inbox: pending={} failing={} dead={}\n",
        doc["inbox"]["pending"], doc["inbox"]["failing"], doc["inbox"]["dead"]
    );
    t += &format!("outbox: {}\n", map(&doc["outbox"]));
    for d in doc["outbox_dead"].as_array().into_iter().flatten() {
        t += &format!(
            "  dead letter {} {} after {} attempt(s): {}\n",
            d["id"],
            d["key"].as_str().unwrap_or(""),
            d["attempts"],
            d["error"].as_str().unwrap_or("")
        );
    }
    t += &format!("counters: {}\n", map(&doc["counters"]));
    let last = &doc["reconcile_last_pass"];
    if last.is_object() {
        t += &format!(
            "reconcile: last pass at {} ms: examined {}, unblocked {}, replayed {}, skipped {}\n",
            last["at_ms"],
            last["examined"],
            last["unblocked"],
            last["replayed"],
            map(&last["skipped"])
        );
    }
    t
}

fn events(ctx: &Ctx, c: EventsCommand) -> anyhow::Result<Output> {
    match c {
        EventsCommand::List { failed, limit } => {
            let db = ctx.open_db()?;
            let rows = db.inbox(failed, limit)?;
            let text = if rows.is_empty() {
                "no deliveries".to_string()
            } else {
                rows.iter()
                    .map(|r| {
                        let state = if r.dead {
                            format!(
                                "DEAD after {} attempts: {}",
                                r.attempts,
                                r.error.as_deref().unwrap_or("")
                            )
                        } else if let Some(o) = &r.outcome {
                            o.clone()
                        } else if let Some(e) = &r.error {
                            format!("failing ({} attempts): {e}", r.attempts)
                        } else {
                            "pending".into()
                        };
                        format!(
                            "{:>5} {:<5} {:<14} {}  {}\n",
                            r.id, r.source, r.event, r.delivery_id, state
                        )
                    })
                    .collect()
            };
            Ok(Output {
                json: serde_json::to_value(&rows)?,
                text,
            })
        }
        EventsCommand::Replay { id } => {
            let _lock = ctx.tick_lock("ingest")?;
            let db = ctx.open_db()?;
            if !db.write(|tx| tx.reset_delivery(id))? {
                return Err(orch::error::Error::Usage(format!("no delivery {id}")).into());
            }
            let outcome = ingest::ingest_one(ctx, &db, id)?;
            Ok(Output {
                json: json!({ "inbox_id": id, "outcome": outcome }),
                text: format!("delivery {id}: {outcome}"),
            })
        }
    }
}

fn usage(ctx: &Ctx, task: Option<i64>) -> anyhow::Result<Output> {
    let db = ctx.open_db()?;
    let rows = db.usage(task)?;
    let mut text = format!(
        "{:>5} {:<15} {:<10} {:>4} {:>12} {:>10} {:>12} {:>10}\n",
        "task", "stage", "role", "runs", "input(full)", "cached", "output", "cost_usd"
    );
    let (mut tin, mut tout, mut tcost) = (0, 0, 0.0);
    for r in &rows {
        let full = r.input_tokens + r.cache_read_input_tokens + r.cache_creation_input_tokens;
        tin += full;
        tout += r.output_tokens;
        tcost += r.cost_usd;
        text += &format!(
            "{:>5} {:<15} {:<10} {:>4} {:>12} {:>10} {:>12} {:>10.4}{}{}\n",
            r.task_id,
            r.stage,
            r.role,
            r.runs,
            full,
            r.cache_read_input_tokens + r.cache_creation_input_tokens,
            r.output_tokens,
            r.cost_usd,
            if r.unknown_usage_runs > 0 {
                format!("  ({} run(s) usage unknown)", r.unknown_usage_runs)
            } else {
                String::new()
            },
            if r.permission_denials > 0 {
                format!("  ({} permission denial(s))", r.permission_denials)
            } else {
                String::new()
            },
        );
    }
    text += &format!(
        "total: input {tin} tokens (incl. cache), output {tout} tokens, cost ${tcost:.4}\n"
    );
    Ok(Output {
        json: json!({ "rows": rows, "total": { "input_tokens_full": tin, "output_tokens": tout, "cost_usd": tcost } }),
        text,
    })
}
