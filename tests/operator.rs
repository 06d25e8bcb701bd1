//! The operator's CLI (issue 15): only `orch init` creates a database,
//! read commands need no write access, bad input is exit 2 with a message,
//! every writer has a `--dry-run` that changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::*;

/// Every row of every table, in a stable order: what a dry run must leave
/// unchanged.
pub fn dump(sbx: &Sandbox) -> String {
    let db = sbx.db();
    let tables = db.table_names().unwrap();
    let mut out = String::new();
    for t in tables {
        let mut st = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = st.column_count();
        let mut rows: Vec<String> = st
            .query_map([], |r| {
                let mut line = String::new();
                for i in 0..n {
                    let v: orch::sql::Value = r.get(i)?;
                    line += &format!("{v:?}|");
                }
                Ok(line)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out += &format!("== {t}\n{}\n", rows.join("\n"));
    }
    out
}

/// `orch ARGS` → (exit code, stdout, stderr).
pub fn run(sbx: &Sandbox, args: &[&str]) -> (i32, String, String) {
    let out = sbx.orch().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn before_init_every_command_but_init_exits_2_naming_the_database_and_creates_nothing() {
    let sbx = Sandbox::uninitialised();
    let db = sbx.db_path();
    for args in [
        &["status"][..],
        &["task", "list"],
        &["check"],
        &["usage"],
        &["metrics"],
        &["events", "list"],
        &["reap"],
        &["reconcile"],
        &["deliver"],
        &["ingest"],
        &["work-once"],
        &["tick"],
        &["issue", "add", "--project", "widget", "--title", "t"],
        &["task", "approve", "1"],
    ] {
        let (code, _, err) = run(&sbx, args);
        assert_eq!(code, 2, "orch {args:?}: {err}");
        assert!(
            err.contains(&format!("no database at {}", db.display()))
                && err.contains("run `orch init`"),
            "orch {args:?}: {err}"
        );
    }
    assert!(
        !Path::new(&sbx.env["ORCH_STATE_DIR"]).exists(),
        "no state folder was created"
    );

    // --db into a missing folder: the same error, nothing created.
    let (code, _, err) = run(&sbx, &["--db", "/nonexistent/dir/orch.db", "status"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no database at /nonexistent/dir/orch.db"),
        "{err}"
    );
    assert!(!Path::new("/nonexistent/dir").exists());
}

#[test]
fn without_a_config_file_a_command_exits_2_naming_it() {
    let mut sbx = Sandbox::uninitialised();
    sbx.env.remove("ORCH_CONFIG");
    // The default, ./orch.toml, does not exist either.
    std::fs::rename(sbx.dir.join("orch.toml"), sbx.dir.join("elsewhere.toml")).unwrap();
    let (code, _, err) = run(&sbx, &["status"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ORCH_CONFIG (orch.toml): no such file"),
        "{err}"
    );
    assert!(!sbx.dir.join("orch-state").exists());
    assert!(!Path::new(&sbx.env["ORCH_STATE_DIR"]).exists());
}

#[test]
fn a_config_without_projects_is_warned_about() {
    let mut sbx = Sandbox::new();
    let empty = sbx.dir.join("empty.toml");
    std::fs::write(&empty, "[agents.default]\nargv = [\"true\"]\n").unwrap();
    sbx.set("ORCH_CONFIG", empty.to_str().unwrap());
    let (code, _, err) = run(&sbx, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no projects configured in"), "{err}");
}

#[test]
fn an_old_schema_is_migrated_only_by_init() {
    let sbx = Sandbox::new();
    let latest = orch::db::schema_version();
    sbx.set_schema_version(latest - 1);
    let (code, _, err) = run(&sbx, &["task", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("has schema version {}", latest - 1))
            && err.contains("run `orch init` to migrate"),
        "{err}"
    );
}

/// Runs `orch ARGS` as an unprivileged user when the tests run as root
/// (root ignores file modes), else as is.
fn run_unprivileged(sbx: &Sandbox, args: &[&str]) -> (i32, String, String) {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut c = sbx.orch_std();
    let out = if root {
        let mut wrapped = std::process::Command::new("setpriv");
        wrapped
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                env!("CARGO_BIN_EXE_orch"),
            ])
            .args(args)
            .current_dir(&sbx.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&sbx.env);
        wrapped.output().unwrap()
    } else {
        c.args(args).output().unwrap()
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn read_commands_work_on_a_read_only_database_and_writers_fail_cleanly() {
    if skip_on_postgres("a read-only SQLite file and folder") {
        return;
    }
    let sbx = Sandbox::new();
    let task = sbx.add_issue("read me");
    let before = dump(&sbx);
    let state = std::path::PathBuf::from(&sbx.env["ORCH_STATE_DIR"]);
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // The sandbox and its temp folder traversable by the unprivileged user
    // (never the system temp dir itself: it must stay 1777).
    for a in sbx.dir.ancestors().take(2) {
        chmod(a, 0o755);
    }
    for entry in std::fs::read_dir(&state).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            chmod(&p, 0o444);
        }
    }
    chmod(&state, 0o555);
    let id = task.to_string();
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["task", "list"],
        &["task", "show", &id],
        &["events", "list"],
        &["usage"],
        &["metrics"],
        &["check"],
        &["why", &id],
        &["agents", "show", "developer"],
        &["config", "show"],
        &["usage", "--since", "1d"],
    ] {
        let (code, out, err) = run_unprivileged(&sbx, args);
        assert_eq!(
            code, 0,
            "orch {args:?} on a read-only database: {out}\n{err}"
        );
        assert!(!out.is_empty(), "orch {args:?} printed nothing");
    }
    let (_, list, _) = run_unprivileged(&sbx, &["task", "list"]);
    assert!(list.contains("read me"), "{list}");
    // config check reads the database too; its failures here are git's
    // refusal of an origin owned by another user ("dubious ownership") and
    // the state folder and origin this user cannot write.
    let (code, out, err) = run_unprivileged(&sbx, &["config", "check"]);
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        code == 0
            || failed
                .iter()
                .all(|l| l.contains("dubious ownership")
                    || l.contains("is not writable by this user")),
        "{out}\n{err}"
    );
    // A writer fails with an error, not a panic, and changes nothing.
    let (code, _, err) = run_unprivileged(&sbx, &["task", "cancel", &id]);
    assert_ne!(code, 0);
    assert!(!err.contains("panicked"), "{err}");
    chmod(&state, 0o755);
    assert_eq!(dump(&sbx), before);
}

#[test]
fn unknown_projects_roles_tasks_and_bind_addresses_exit_2_with_a_message() {
    let sbx = Sandbox::new();
    let (code, _, err) = run(&sbx, &["work-once", "--project", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no project \"nope\"") && err.contains("widget"),
        "{err}"
    );
    let (code, _, err) = run(&sbx, &["work-once", "--role", "bogus"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no role \"bogus\"") && err.contains("reviewer"),
        "{err}"
    );
    let (code, _, err) = run(&sbx, &["usage", "--task", "99"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no task 99"), "{err}");
    let (code, _, err) = run(&sbx, &["task", "show", "99"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no task 99"), "{err}");
    let (code, _, err) = run(&sbx, &["events", "replay", "99"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no delivery 99"), "{err}");

    let mut sbx = sbx;
    sbx.set("ORCH_BIND", "garbage");
    let (code, _, err) = run(&sbx, &["serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ORCH_BIND") && err.contains("\"garbage\""),
        "{err}"
    );
    let (code, _, err) = run(&sbx, &["serve", "--bind", "127.0.0.1:notaport"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bind"), "{err}");
}

#[test]
fn an_unknown_orch_variable_is_warned_about_with_the_likely_key() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MAX_CONCURENCY", "4");
    sbx.set("ORCH_WHATEVER", "1");
    let (code, _, err) = run(&sbx, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "ignoring unknown setting ORCH_MAX_CONCURENCY (did you mean ORCH_MAX_CONCURRENCY?)"
        ),
        "{err}"
    );
    assert!(
        err.contains("ignoring unknown setting ORCH_WHATEVER"),
        "{err}"
    );
    // The sandbox's own settings are all known.
    sbx.env.remove("ORCH_MAX_CONCURENCY");
    sbx.env.remove("ORCH_WHATEVER");
    let (_, _, err) = run(&sbx, &["status"]);
    assert!(!err.contains("unknown setting"), "{err}");
}

/// Runs `orch ARGS --dry-run` and then `orch ARGS`: the dry run changes
/// nothing (a dump of every table before and after) and prints what the
/// real run then prints, below its note; both exit alike. Returns the
/// real run's stdout.
fn rehearse_then_run(sbx: &Sandbox, args: &[&str]) -> String {
    let before = dump(sbx);
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let (dcode, dout, derr) = run(sbx, &dry);
    assert_eq!(dump(sbx), before, "orch {dry:?} wrote to the database");
    let (code, out, err) = run(sbx, args);
    assert_eq!(dcode, code, "orch {args:?}: {derr} / {err}");
    if code == 0 {
        let planned = dout
            .strip_prefix("dry run: nothing was written; the real run would do this:\n")
            .unwrap_or_else(|| panic!("orch {dry:?} says it is a dry run: {dout}"));
        assert_eq!(normalise(planned), normalise(&out), "orch {args:?}");
    } else {
        assert_eq!(derr, err, "orch {args:?}");
    }
    out
}

/// The words of a dry run's plan and of the real run's report, with the
/// tense made the same ("would create" / "created").
fn normalise(s: &str) -> String {
    s.replace("created local issue", "create local issue")
}

/// The subcommands (space-separated paths) listed in `orch [PATH…] --help`.
fn subcommands(sbx: &Sandbox, path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let (_, help, _) = run(sbx, &args);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// What only reads (or only prints), and serve, which is a process.
const READERS: [&str; 16] = [
    "serve",
    "status",
    "check",
    "task list",
    "task show",
    "events list",
    "outbox list",
    "agents show",
    "why",
    "usage",
    "logs",
    "metrics",
    "config show",
    "config check",
    "completions",
    "man",
];

#[test]
fn every_command_but_the_readers_has_a_dry_run() {
    let sbx = Sandbox::new();
    let mut commands = Vec::new();
    for top in subcommands(&sbx, &[]) {
        let subs = subcommands(&sbx, &[&top]);
        if subs.is_empty() {
            commands.push(top);
        } else {
            commands.extend(subs.iter().map(|s| format!("{top} {s}")));
        }
    }
    assert!(commands.len() > 25, "{commands:?}");
    let missing: Vec<&String> = commands
        .iter()
        .filter(|c| !READERS.contains(&c.as_str()))
        .filter(|c| {
            let mut args: Vec<&str> = c.split(' ').collect();
            args.push("--help");
            !run(&sbx, &args).1.contains("--dry-run")
        })
        .collect();
    assert!(missing.is_empty(), "writers without --dry-run: {missing:?}");
}

#[test]
fn every_manual_move_has_a_dry_run_that_writes_nothing_and_prints_what_the_move_does() {
    let sbx = Sandbox::new();
    sbx.add_issue("dry runs");
    for args in [
        &["task", "advance", "1", "--reason", "by hand"][..],
        &["task", "rollback", "1", "--reason", "again"],
        &["task", "retry", "1"],
        &["task", "cancel", "1", "--reason", "stop"],
        &["task", "retry", "1"], // refused: escalated
        &["task", "unblock", "1"],
        &["task", "approve", "1"], // no pipeline action
        &["task", "reject", "1", "--reason", "no"],
        &["task", "advance", "99"], // no such task
    ] {
        rehearse_then_run(&sbx, args);
    }
    let shown = sbx.ok(&["task", "show", "1"]);
    assert!(shown.contains("stop"), "{shown}");
}

#[test]
fn unpark_has_a_dry_run_that_writes_nothing_and_prints_what_the_unpark_does() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_BUDGET_DAY_USD", "0.01");
    sbx.add_issue("over the day");
    assert_eq!(sbx.json(&["work-once"])["result"], "idle");
    let parked = "SELECT COUNT(*) FROM tasks WHERE parked_at_ms IS NOT NULL";
    assert_eq!(sbx.count(parked), 1);
    rehearse_then_run(&sbx, &["task", "unpark", "99"]); // no such task
    let out = rehearse_then_run(&sbx, &["task", "unpark", "1"]);
    assert_eq!(
        out.trim(),
        "task 1: unparked; its next job runs regardless of the budgets"
    );
    assert_eq!(sbx.count(parked), 0);
    rehearse_then_run(&sbx, &["task", "unpark", "1"]); // not parked any more
}

#[test]
fn issue_add_ingest_replay_work_once_deliver_and_tick_rehearse_the_real_path() {
    let sbx = Sandbox::new();
    let out = rehearse_then_run(
        &sbx,
        &["issue", "add", "--project", "widget", "--title", "t"],
    );
    assert_eq!(out.trim(), "created local issue 1 → task 1");

    // The job it would claim and the argv it would run.
    let before = dump(&sbx);
    let (code, dry, err) = run(&sbx, &["work-once", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(dump(&sbx), before);
    let fake = format!("{ROOT}/scripts/fake-agent");
    assert!(
        dry.contains(&format!(
            "claim job 1 (task 1, analysis, role analyst, attempt 1) and run: {fake}"
        )),
        "{dry}"
    );
    let (code, dry_tick, err) = run(&sbx, &["tick", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(dump(&sbx), before);
    assert!(
        dry_tick.contains("work: would claim 1 job(s)") && dry_tick.contains(&fake),
        "{dry_tick}"
    );
    let ran = sbx.ok(&["work-once"]);
    assert!(
        ran.starts_with("job 1 (task 1, analysis): agent exited 0"),
        "{ran}"
    );

    // A delivery from a file, and its replay.
    let file = std::path::PathBuf::from(ROOT)
        .join("tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json");
    let f = file.to_str().unwrap();
    let out = rehearse_then_run(
        &sbx,
        &[
            "ingest", "--source", "plane", "--event", "issue", "--file", f,
        ],
    );
    assert!(out.starts_with("delivery 1: "), "{out}");
    rehearse_then_run(&sbx, &["events", "replay", "1"]);
    rehearse_then_run(&sbx, &["ingest"]);

    // deliver: the messages it would send are the ones the real pass sends.
    let (code, dry, err) = run(&sbx, &["deliver", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let would = dry
        .lines()
        .filter(|l| l.starts_with("send message"))
        .count();
    let real = sbx.json(&["deliver"]);
    let sent = real["delivered"].as_array().unwrap().len()
        + real["failed"].as_array().unwrap().len()
        + real["waiting"].as_array().unwrap().len();
    assert_eq!(would, sent, "{dry}\n{real}");
}

#[test]
fn init_dry_run_says_what_it_would_create_and_creates_nothing() {
    let sbx = Sandbox::uninitialised();
    let db = sbx.db_path();
    let (code, out, err) = run(&sbx, &["init", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "create {} (schema {})",
            db.display(),
            orch::db::schema_version()
        )),
        "{out}"
    );
    assert!(out.contains("create folder"), "{out}");
    assert!(!Path::new(&sbx.env["ORCH_STATE_DIR"]).exists());
    sbx.ok(&["init"]);
    let before = dump(&sbx);
    let (_, out, _) = run(&sbx, &["init", "--dry-run"]);
    assert!(
        out.contains("up to date") && !out.contains("create folder"),
        "{out}"
    );
    assert_eq!(dump(&sbx), before);
}

/// Text with its times made stable: every RFC 3339 stamp becomes `<time>`,
/// every relative time (`just now`, `3 s ago`, `in 2 min`) `<ago>`, every
/// short span (`ran 0 s`) `<span>`, and the sandbox's folder `<sbx>`.
fn stable(sbx: &Sandbox, text: &str) -> String {
    let mut s = text.replace(sbx.dir.to_str().unwrap(), "<sbx>");
    // RFC 3339: 2026-12-01T23:12:05Z or …+01:00
    let mut out: Vec<u8> = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let stamp = |len: usize| {
            i + len <= b.len()
                && b[i..i + 4].iter().all(u8::is_ascii_digit)
                && b[i + 4] == b'-'
                && b[i + 10] == b'T'
                && b[i + 13] == b':'
        };
        if stamp(20) && b[i + 19] == b'Z' {
            out.extend_from_slice(b"<time>");
            i += 20;
        } else if stamp(25) && (b[i + 19] == b'+' || b[i + 19] == b'-') {
            out.extend_from_slice(b"<time>");
            i += 25;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    s = String::from_utf8(out).unwrap();
    for unit in [" s", " min", " h"] {
        for n in (0..120).rev() {
            s = s
                .replace(&format!("{n}{unit} ago"), "<ago>")
                .replace(&format!("ran {n}{unit}"), "ran <span>");
        }
    }
    s.replace("just now", "<ago>")
}

#[test]
fn status_task_show_logs_and_usage_read_like_people_write() {
    let sbx = Sandbox::new();
    sbx.add_issue("Add a button");
    sbx.ok(&["work-once"]);
    let shown = stable(&sbx, &sbx.ok(&["task", "show", "1"]));
    let head: Vec<&str> = shown.lines().take(12).collect();
    assert_eq!(
        head.join("\n"),
        "\
task 1 [widget] Add a button
  stage architecture v2  branch orch/widget-1  worktree <sbx>/state/worktrees/widget/orch-widget-1
  created <time> (<ago>), last change <time> (<ago>)
  developer retries 0
transitions:
  v1   (new)           → analysis        human      <time>  work item in progress
  v2   analysis        → architecture    worker     <time>  analysis gate passed
jobs:
  job 1    analysis        done       attempt 1 epoch 1 exit 0, ran <span>, finished <ago>
    run by the supervisor runner
    log    <sbx>/state/logs/job1-a1.log
    prompt <sbx>/state/logs/job1-a1.prompt"
    );
    assert!(
        shown.ends_with(
            "next: job 2 is queued: the next `orch tick` (or `orch work-once`) runs it\n"
        ),
        "{shown}"
    );
    let v = sbx.json(&["task", "show", "1"]);
    assert!(v["task"]["created_at_ms"].is_i64(), "JSON keeps _ms: {v}");

    // The log of the run, by job id; --follow ends with the job.
    let log = sbx.ok(&["logs", "1"]);
    assert!(log.contains("\"type\":\"result\""), "{log}");
    assert_eq!(sbx.ok(&["logs", "1", "--follow"]), log);
    let (code, _, err) = run(&sbx, &["logs", "99"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no job 99"), "{err}");
    let (code, _, err) = run(&sbx, &["logs", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("job 2 attempt 1 has no log") && err.contains("queued"),
        "{err}"
    );

    // Escalated: status lists it with the command that moves it on.
    sbx.ok(&["task", "cancel", "1", "--reason", "stop here"]);
    // The host that ran the work-once (`hosts`), its id this machine's.
    let status = stable(&sbx, &sbx.ok(&["status"]))
        .replace(&orch::process::host_id(), "<host>")
        .replace(env!("CARGO_PKG_VERSION"), "<version>")
        .replace("seen just now", "seen <ago>");
    assert_eq!(
        status,
        "\
tasks:
  architecture    1  (escalated)
jobs: cancelled=1 done=1
host <host> (orch <version>) seen <ago>
inbox: pending=0 failing=0 dead=0
outbox: pending=6
counters: none
waiting for a human:
  task 1 [widget] Add a button at architecture, escalated: stop here (<ago>): orch task unblock 1
"
    );
    let shown = sbx.ok(&["task", "show", "1"]);
    assert!(
        shown.ends_with("next: escalated: orch task unblock 1\n"),
        "{shown}"
    );
    let doc = sbx.json(&["status"]);
    assert_eq!(doc["waiting"][0]["command"], "orch task unblock 1");

    // usage --since: the run is in the last hour, not in a span before it.
    let usage = sbx.ok(&["usage", "--since", "1h"]);
    assert!(usage.contains("analysis        analyst       1"), "{usage}");
    let v = sbx.json(&["usage", "--since", "1h"]);
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    let (code, _, err) = run(&sbx, &["usage", "--since", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected a span such as 90s"), "{err}");
}

/// The main error messages, word for word (stderr, one line each).
#[test]
fn the_main_error_messages_snapshot() {
    let sbx = Sandbox::uninitialised();
    let db = sbx.db_path();
    let (_, _, err) = run(&sbx, &["status"]);
    assert_eq!(
        err,
        format!(
            "orch: error: no database at {}: run `orch init` to create it (or point --db / ORCH_DB at it)\n",
            db.display()
        )
    );
    sbx.ok(&["init"]);
    let (_, _, err) = run(&sbx, &["task", "show", "7"]);
    assert_eq!(err, "orch: error: no task 7\n");
    let (_, _, err) = run(&sbx, &["work-once", "--role", "wizard"]);
    assert_eq!(
        err,
        "orch: error: no role \"wizard\"; roles are analyst, architect, developer, reviewer, tester, deployer\n"
    );
    let (_, _, err) = run(&sbx, &["--config", "/nonexistent/orch.toml", "status"]);
    assert_eq!(
        err,
        "orch: error: config: ORCH_CONFIG (/nonexistent/orch.toml): no such file: create it (README, \"Configuration\"; `scripts/install` writes a starting one) or point --config / ORCH_CONFIG at it\n"
    );
}

#[test]
fn config_show_names_each_setting_source_and_redacts_secrets() {
    let sbx = Sandbox::new();
    std::fs::write(sbx.dir.join(".env"), "ORCH_MAX_CONCURRENCY=5\n").unwrap();
    sbx.append_config(
        "\n[agents.reviewer]\nargv = [\"review-bot\", \"--verdict\", \"{verdict_file}\"]\n",
    );
    let out = sbx.ok(&["config", "show"]);
    let line = |key: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("ORCH_STATE_DIR"),
        format!("ORCH_STATE_DIR {} environment", sbx.env["ORCH_STATE_DIR"])
    );
    assert!(line("ORCH_MAX_CONCURRENCY").starts_with("ORCH_MAX_CONCURRENCY 5 .env ("));
    assert_eq!(
        line("ORCH_BUSY_TIMEOUT_MS"),
        "ORCH_BUSY_TIMEOUT_MS 5000 default"
    );
    assert_eq!(
        line("ORCH_PLANE_WEBHOOK_SECRET"),
        "ORCH_PLANE_WEBHOOK_SECRET [redacted] environment"
    );
    assert!(
        !out.contains(PLANE_SECRET) && !out.contains(GITEA_SECRET),
        "{out}"
    );
    assert_eq!(
        line("reviewer"),
        "reviewer [reviewer, claude-code] review-bot --verdict <verdict_file>"
    );
    assert!(line("developer").ends_with("scripts/fake-agent"));
    assert_eq!(
        line("in_progress"),
        "in_progress In Progress 3e237c0a-e2cb-4c24-bad9-ca246ba03ff2 (configured)"
    );
    assert_eq!(line("done"), "done Done Done (name)");
    let v = sbx.json(&["config", "show"]);
    assert_eq!(v["projects"][0]["name"], "widget");
    assert_eq!(v["projects"][0]["states"][0]["from"], "configured");
    assert!(v["settings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["key"] == "ORCH_MAX_CONCURRENCY" && s["value"] == "5"));

    // config check: the reviewer's program is missing → exit 3, named.
    let (code, out, err) = run(&sbx, &["config", "check"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("FAIL agent reviewer: review-bot is not on PATH"),
        "{out}"
    );
    assert!(out.contains("ok   agent developer: "), "{out}");
    assert!(out.contains("ok   project widget test command: "), "{out}");
    assert!(out.contains("ok   project widget clone: "), "{out}");
    assert!(out.ends_with("1 of 11 checks failed\n"), "{out}");
}

#[test]
fn config_check_finds_a_missing_default_branch_and_passes_a_good_config() {
    let sbx = Sandbox::new();
    let (code, out, err) = run(&sbx, &["config", "check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("all 11 checks passed\n"), "{out}");
    assert!(
        out.contains("ok   project widget origin writable: "),
        "{out}"
    );
    assert!(
        out.contains(
            "ok   project widget merge style: local forge: main moves only to the merge line's tested tip"
        ),
        "{out}"
    );
    let path = sbx.dir.join("orch.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        toml.replace("default_branch = \"main\"", "default_branch = \"trunk\""),
    )
    .unwrap();
    let (code, out, _) = run(&sbx, &["config", "check"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("FAIL project widget clone: ") && out.contains("has no branch \"trunk\""),
        "{out}"
    );
}

#[test]
fn a_number_that_is_nan_infinite_or_negative_is_a_config_error_naming_its_key() {
    let mut sbx = Sandbox::new();
    let path = sbx.dir.join("orch.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    // In orch.toml: `orch config check` and an ordinary tick both refuse.
    for (v, shown) in [("nan", "NaN"), ("inf", "inf"), ("-1", "-1")] {
        std::fs::write(
            &path,
            good.replace(
                "auto_approve_analysis = true",
                &format!("auto_approve_analysis = true\nbudget_day_usd = {v}"),
            ),
        )
        .unwrap();
        for args in [&["config", "check"][..], &["work-once"]] {
            let (code, out, err) = run(&sbx, args);
            assert_eq!(code, 2, "{args:?} {v}: {out}{err}");
            assert!(
                err.contains(&format!(
                    "projects[0].budget_day_usd: expected a finite number >= 0, got {shown}"
                )),
                "{args:?} {v}: {err}"
            );
        }
    }
    std::fs::write(&path, good).unwrap();
    // In the environment: the same.
    for v in ["nan", "inf", "-1"] {
        for key in ["ORCH_BUDGET_DAY_USD", "ORCH_AGENT_TIMEOUT_S"] {
            sbx.set(key, v);
            for args in [&["config", "check"][..], &["work-once"]] {
                let (code, out, err) = run(&sbx, args);
                assert_eq!(code, 2, "{key}={v} {args:?}: {out}{err}");
                assert!(
                    err.contains(&format!("{key}: expected a ")) && err.contains(v),
                    "{key}={v} {args:?}: {err}"
                );
            }
            sbx.set(key, "");
        }
    }
    let (code, out, err) = run(&sbx, &["config", "check"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// The installed settings file (`ORCH_ENV_FILE`, default
/// `/etc/orch/orch.env`) is what an operator's command reads when no
/// `.env` is found: the same database and config the units use, with
/// nothing typed; the environment wins over it, a `.env` replaces it, and
/// `config show` names it as the source.
#[test]
fn the_cli_reads_the_installed_settings_file_when_no_env_file_is_found() {
    let sbx = Sandbox::new();
    let installed = sbx.dir.join("installed-orch.env");
    std::fs::write(
        &installed,
        format!(
            "# as scripts/install writes it\nORCH_STATE_DIR={}\nORCH_CONFIG={}\n#ORCH_MAX_CONCURRENCY=2\nORCH_BUSY_TIMEOUT_MS=4000\n",
            sbx.state_dir().display(),
            sbx.dir.join("orch.toml").display()
        ),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = sbx.orch_std();
        c.env_remove("ORCH_STATE_DIR")
            .env_remove("ORCH_CONFIG")
            .env("ORCH_ENV_FILE", &installed)
            .current_dir(elsewhere.path())
            .args(args)
            .envs(env.iter().copied());
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cmd(&["status"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cmd(&["config", "show"], &[("ORCH_BUSY_TIMEOUT_MS", "3000")]);
    assert_eq!(code, 0, "{err}");
    let line = |key: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("ORCH_STATE_DIR"),
        format!(
            "ORCH_STATE_DIR {} {}",
            sbx.state_dir().display(),
            installed.display()
        )
    );
    assert_eq!(
        line("ORCH_BUSY_TIMEOUT_MS"),
        "ORCH_BUSY_TIMEOUT_MS 3000 environment"
    );
    // A .env replaces the installed file (a try-out instance never
    // inherits the installed paths): without its own paths there is no
    // config here.
    std::fs::write(elsewhere.path().join(".env"), "ORCH_MAX_CONCURRENCY=5\n").unwrap();
    let (code, _, err) = cmd(&["status"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ORCH_CONFIG (orch.toml)"), "{err}");
    std::fs::remove_file(elsewhere.path().join(".env")).unwrap();
    // ORCH_ENV_FILE= reads no file; a named file that is missing is said.
    let (code, _, err) = cmd(&["status"], &[("ORCH_ENV_FILE", "")]);
    assert_eq!(code, 2, "{err}");
    let (_, _, err) = cmd(&["status"], &[("ORCH_ENV_FILE", "/nonexistent/orch.env")]);
    assert!(
        err.contains("ignoring the settings file /nonexistent/orch.env"),
        "{err}"
    );
}

/// `orch status` and `orch metrics` list stages in pipeline order
/// (`Stage::ALL`), not by name: development before deploy.
#[test]
fn status_and_metrics_list_stages_in_pipeline_order() {
    let sbx = Sandbox::new();
    for (title, stage) in [("a", "deploy"), ("b", "development"), ("c", "review")] {
        let id = sbx.add_issue(title);
        sbx.db()
            .execute(
                "UPDATE tasks SET stage=?1 WHERE id=?2",
                orch::sql::params![stage, id],
            )
            .unwrap();
    }
    let status = sbx.ok(&["status"]);
    let at = |s: &str, needle: &str| {
        s.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in\n{s}"))
    };
    assert!(
        at(&status, "  development ") < at(&status, "  review ")
            && at(&status, "  review ") < at(&status, "  deploy "),
        "{status}"
    );
    let metrics = sbx.ok(&["metrics"]);
    assert!(
        at(&metrics, "orch_tasks{stage=\"development\"")
            < at(&metrics, "orch_tasks{stage=\"review\"")
            && at(&metrics, "orch_tasks{stage=\"review\"")
                < at(&metrics, "orch_tasks{stage=\"deploy\""),
        "{metrics}"
    );
}

/// `orch status` bounds its lists (issue 21): 20 entries and "… and N
/// more", the totals in `--json`; `--all` shows every one.
#[test]
fn status_bounds_its_lists_and_all_shows_every_entry() {
    let sbx = Sandbox::new();
    for i in 0..25 {
        sbx.add_issue(&format!("task {i}"));
    }
    sbx.db()
        .execute("UPDATE tasks SET escalated=1, escalated_reason='stuck'", [])
        .unwrap();
    let text = sbx.ok(&["status"]);
    assert_eq!(text.matches("orch task unblock").count(), 20, "{text}");
    assert!(
        text.contains("  … and 5 more (orch status --all)"),
        "{text}"
    );
    let doc = sbx.json(&["status"]);
    assert_eq!(doc["waiting"].as_array().unwrap().len(), 20);
    assert_eq!(doc["waiting_total"], 25);
    let all = sbx.ok(&["status", "--all"]);
    assert_eq!(all.matches("orch task unblock").count(), 25, "{all}");
    assert!(!all.contains("more (orch status --all)"), "{all}");
    let doc = sbx.json(&["status", "--all"]);
    assert_eq!(doc["waiting"].as_array().unwrap().len(), 25);
}
