//! init, config errors, help: what an operator meets first.

use crate::util::*;

#[test]
fn init_is_idempotent_and_a_newer_database_is_refused() {
    let sbx = Sandbox::uninitialised();
    let latest = orch::db::schema_version();
    let first = sbx.json(&["init"]);
    assert_eq!(first["schema_version"], latest);
    assert!(first["previous_version"].is_null());
    let dump = |sbx: &Sandbox| -> String {
        let db = sbx.db();
        let mut st = db
            .prepare("SELECT type||name||COALESCE(sql,'') FROM sqlite_master ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let schema = dump(&sbx);
    let second = sbx.json(&["init"]);
    assert_eq!(second["previous_version"], latest);
    assert_eq!(dump(&sbx), schema);
    assert!(sbx.ok(&["init"]).contains("is up to date"));

    sbx.db()
        .pragma_update(None, "user_version", latest + 5)
        .unwrap();
    let out = sbx.orch().args(["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "schema version {} is newer than this binary supports ({latest})",
            latest + 5
        )),
        "{err}"
    );
}

#[test]
fn bad_settings_and_config_name_the_key_and_exit_2() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_MAX_CONCURRENCY", "many");
    let out = sbx.orch().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORCH_MAX_CONCURRENCY"));

    let sbx = Sandbox::new();
    sbx.append_config("\n[agents.wizard]\nargv = [\"x\"]\n");
    let out = sbx.orch().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agents.wizard") && !err.contains("panicked"),
        "{err}"
    );

    let out = sbx.orch().args(["work-once", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_command_has_help() {
    let sbx = Sandbox::new();
    let top = sbx.ok(&["--help"]);
    for cmd in [
        "init",
        "serve",
        "ingest",
        "work-once",
        "reconcile",
        "reap",
        "deliver",
        "tick",
        "status",
        "task",
        "issue",
        "events",
        "usage",
        "logs",
        "config",
    ] {
        assert!(top.contains(cmd), "--help lists {cmd}");
        let help = sbx.ok(&[cmd, "--help"]);
        assert!(help.lines().count() > 3, "{cmd} --help: {help}");
    }
}

#[test]
fn a_second_reap_while_one_holds_the_lock_exits_75() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let locks = std::path::PathBuf::from(&sbx.env["ORCH_STATE_DIR"]).join("locks");
    let held = orch::lock::try_tick_lock(&locks, "reap").unwrap();
    let out = sbx.orch().arg("reap").output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    drop(held);
    sbx.ok(&["reap"]);
}

#[test]
fn check_reports_a_violated_invariant_with_exit_3() {
    let sbx = Sandbox::new();
    sbx.add_issue("t");
    assert!(sbx.ok(&["check"]).contains("all invariants hold"));
    // a second active job for the task, as a double enqueue would leave
    sbx.db()
        .execute("INSERT INTO jobs (task_id, stage, role, task_version, status, available_at_ms, created_at_ms) VALUES (1, 'analysis', 'analyst', 9, 'queued', 0, 0)", [])
        .unwrap();
    let out = sbx.orch().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("VIOLATED jobs: task 1 has 2 active jobs")
    );
}

#[test]
fn completions_and_the_man_page_need_no_config_or_database() {
    let mut sbx = Sandbox::uninitialised();
    // A config that does not exist would stop every other command.
    sbx.set("ORCH_CONFIG", "/nonexistent/orch.toml");
    let bash = sbx.ok(&["completions", "bash"]);
    assert!(
        bash.contains("work-once") && bash.contains("merge-gate"),
        "{bash}"
    );
    let zsh = sbx.ok(&["completions", "zsh"]);
    assert!(zsh.contains("#compdef orch"), "{zsh}");
    let man = sbx.ok(&["man"]);
    assert!(
        man.contains(".TH orch 1") && man.contains("reconcile"),
        "{man}"
    );
    assert!(!sbx.dir.join("orch-state").exists(), "nothing was created");
    assert!(!sbx.dir.join("state").exists(), "nothing was created");
    let out = sbx.orch().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
