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
            .prepare(match db.dialect() {
                orch::sql::Dialect::Sqlite => {
                    "SELECT type||name||COALESCE(sql,'') FROM sqlite_master ORDER BY name"
                }
                orch::sql::Dialect::Postgres => {
                    "SELECT table_name||'.'||column_name||':'||data_type FROM information_schema.columns \
                     WHERE table_schema=current_schema() ORDER BY 1"
                }
            })
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

    sbx.set_schema_version(latest + 5);
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
    if skip_on_postgres("the file lock; on a shared store it is a lease (the next test)") {
        return;
    }
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let locks = std::path::PathBuf::from(&sbx.env["ORCH_STATE_DIR"]).join("locks");
    let held = orch::lock::try_tick_lock(&locks, "reap").unwrap();
    let out = sbx.orch().arg("reap").output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    drop(held);
    sbx.ok(&["reap"]);
}

/// Tick locks as lease rows (`ORCH_TICK_LOCKS=lease`, what a store shared
/// between hosts uses): while one `orch reap` holds `tick:reap` a second
/// exits 75 with the lock's line, naming the lease and its holder; the
/// lease is gone once the first finished; a dry run only looks.
#[test]
fn a_second_reap_while_one_holds_the_tick_lease_exits_75() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_TICK_LOCKS", "lease");
    sbx.ok(&["init"]);
    let lease = "SELECT COUNT(*) FROM leases WHERE name='tick:reap'";
    let mut first = sbx.spawn(
        &["reap"],
        &[("FAILPOINTS", "tick_lock.lease_taken=sleep(3000)")],
    );
    wait_until(20, "the first reap to take its lease", || {
        sbx.count(lease) == 1
    });
    let holder: String = sbx
        .db()
        .query_row(
            "SELECT holder FROM leases WHERE name='tick:reap'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        holder.rsplit(':').nth(1),
        Some(first.id().to_string().as_str()),
        "holder host:pid:start names the first reap: {holder}"
    );
    for args in [
        &["reap"][..],
        &["reap", "--dry-run"],
        &["tick", "--dry-run"],
    ] {
        let out = sbx.orch().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if args[0] == "tick" {
            // A tick skips a busy step and goes on.
            assert!(out.status.success(), "{args:?}: {stderr}");
            continue;
        }
        assert_eq!(out.status.code(), Some(75), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "another orch process holds the reap lock (lease tick:reap held by {holder}"
            )),
            "{stderr}"
        );
    }
    assert!(first.wait().unwrap().success());
    assert_eq!(sbx.count(lease), 0, "released when the pass ended");
    assert_eq!(sbx.count("SELECT COUNT(*) FROM leases"), 0);
    sbx.ok(&["reap"]);
    sbx.ok(&["tick"]);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM leases"), 0);
}

/// A tick lease whose holder was killed -9: on this host (its pid gone) the
/// next pass takes it over at once, as a file lock would be free; another
/// host's holds until its TTL (`ORCH_TICK_LEASE_TTL_S`) — the next pass
/// after it takes it over, and the reaper releases one nobody takes
/// (`release_stale_leases`).
#[test]
fn a_tick_lease_of_a_killed_holder_is_taken_over_after_its_ttl_and_reaped() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_TICK_LOCKS", "lease")
        .set("ORCH_TICK_LEASE_TTL_S", "60");
    sbx.ok(&["init"]);
    let killed = |args: &[&str], host: &str| {
        let out = sbx
            .orch()
            .args(args)
            .env("FAILPOINTS", "tick_lock.lease_taken=return")
            .env("ORCH_HOST_ID", host)
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGKILL),
            "{out:?}"
        );
    };
    // This host's: free at once.
    let here = orch::process::host_id();
    killed(&["ingest"], &here);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM leases"), 1);
    sbx.ok(&["ingest"]);
    assert_eq!(sbx.count("SELECT COUNT(*) FROM leases"), 0);
    // Host a's.
    killed(&["reconcile"], "host-a");
    killed(&["reap"], "host-a");
    assert_eq!(sbx.count("SELECT COUNT(*) FROM leases"), 2);
    // Within the TTL: busy.
    let out = sbx.orch().args(["reconcile"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    // Past it (the clock 61 s on): reap takes `tick:reap` over and
    // releases `tick:reconcile`.
    let later = [("ORCH_TEST_CLOCK_OFFSET_MS", "61000")];
    let out = sbx
        .orch()
        .args(["--json", "reap"])
        .envs(later)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<&str> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["result"].as_str())
        .collect();
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("released tick:reconcile held by ")),
        "{v}"
    );
    assert_eq!(sbx.count("SELECT COUNT(*) FROM leases"), 0, "{v}");
    sbx.ok(&["reconcile"]);
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

/// `orch man --dir` (issue 21): one page per subcommand; every page a page
/// names exists, and each subcommand's page has every option its --help
/// shows. The pages walk the same tree `--help` does.
#[test]
fn the_man_pages_name_only_pages_that_exist_and_each_has_its_options() {
    let mut sbx = Sandbox::uninitialised();
    sbx.set("ORCH_CONFIG", "/nonexistent/orch.toml");
    let dir = sbx.dir.join("man1");
    let dry = sbx.ok(&["man", "--dir", dir.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("would write") && !dir.exists(), "{dry}");
    let listed = sbx.json(&["man", "--dir", dir.to_str().unwrap()]);
    let pages: Vec<String> = listed["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(pages.len() > 30, "{pages:?}");
    let page = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    // Every `orch-…(1)` any page names is a file.
    let mut named = std::collections::BTreeSet::new();
    for p in &pages {
        let text = page(p).replace("\\-", "-");
        for (i, _) in text.match_indices("orch-") {
            let rest = &text[i..];
            if let Some(end) = rest.find("(1)") {
                let name = &rest[..end];
                if name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    named.insert(format!("{name}.1"));
                }
            }
        }
    }
    assert!(named.contains("orch-task-show.1"), "{named:?}");
    for n in &named {
        assert!(
            pages.contains(n) && dir.join(n).is_file(),
            "{n} is named but missing"
        );
    }
    // Each page carries the options of its command's --help.
    for p in &pages {
        let path: Vec<&str> = p.trim_end_matches(".1").split('-').skip(1).collect();
        // Subcommand names themselves contain dashes (work-once,
        // merge-gate): find the split whose --help succeeds.
        let Some(args) = command_path(&sbx, &path) else {
            panic!("no command for page {p}");
        };
        let mut help_args = args.clone();
        help_args.push("--help".into());
        let out = sbx.orch().args(&help_args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let text = page(p).replace("\\-", "-");
        for opt in help
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches([',', '.', ')', '=', '\'']))
            .map(|w| w.split(['=', '<', '[']).next().unwrap())
            .filter(|w| {
                w.chars()
                    .skip(2)
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        {
            assert!(text.contains(opt), "{p} lacks {opt} (from {help_args:?})");
        }
    }
}

/// The argv for a page's words, joining words into dashed subcommand names
/// (`work once` → `work-once`) where `--help` says that is the command.
fn command_path(sbx: &Sandbox, words: &[&str]) -> Option<Vec<String>> {
    command_path_under(sbx, Vec::new(), words)
}

/// [`command_path`] below the command `prefix`.
fn command_path_under(sbx: &Sandbox, prefix: Vec<String>, words: &[&str]) -> Option<Vec<String>> {
    let mut help = prefix.clone();
    help.push("--help".into());
    if !sbx.orch().args(&help).output().unwrap().status.success() {
        return None;
    }
    if words.is_empty() {
        return Some(prefix);
    }
    for take in (1..=words.len()).rev() {
        let mut next = prefix.clone();
        next.push(words[..take].join("-"));
        if let Some(found) = command_path_under(sbx, next, &words[take..]) {
            return Some(found);
        }
    }
    None
}
