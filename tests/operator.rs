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
    let tables: Vec<String> = {
        let mut st = db
            .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut out = String::new();
    for t in tables {
        let mut st = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = st.column_count();
        let mut rows: Vec<String> = st
            .query_map([], |r| {
                let mut line = String::new();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
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
    sbx.db()
        .pragma_update(None, "user_version", latest - 1)
        .unwrap();
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
    let sbx = Sandbox::new();
    let task = sbx.add_issue("read me");
    let before = dump(&sbx);
    let state = std::path::PathBuf::from(&sbx.env["ORCH_STATE_DIR"]);
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Every folder up to the sandbox traversable by the unprivileged user.
    for a in sbx.dir.ancestors().take(3) {
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
    ] {
        let (code, out, err) = run_unprivileged(&sbx, args);
        assert_eq!(code, 0, "orch {args:?} on a read-only database: {err}");
        assert!(!out.is_empty(), "orch {args:?} printed nothing");
    }
    let (_, list, _) = run_unprivileged(&sbx, &["task", "list"]);
    assert!(list.contains("read me"), "{list}");
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
