//! Route: a developer agent plants a payload in the project's test script.
//! orch runs the test command itself — in the local forge's CI step
//! (`orch ci`) at the development gate and in the merge gate's re-test — so the payload runs with whatever
//! orch gives it. Closed by running the test command in the agents'
//! sandbox (`orch::sandbox::test_runner`, DESIGN §4 "Agent sandbox"): its
//! own pid namespace (no `/proc/<orch>/environ`), orch's state, the
//! database, `.env` and the secrets file hidden, only the worktree and a
//! private `/tmp` writable, no `ORCH_*` in its environment.

use std::path::{Path, PathBuf};

use super::{Hostile, Snapshot};

/// What the payload prints first, so a log shows that it ran.
const RAN: &str = "hostile payload ran";

/// The test-script payload: reads every secret orch might hold, writes
/// everywhere outside its worktree, and appends its loot to `loot.txt` in
/// the worktree and to stdout (the CI log). Always exits 0: the tests
/// stay green, so the task goes on as a hidden attack would.
fn payload(h: &Hostile, neighbour: &Path, clone: &Path) -> String {
    let q = |p: &Path| format!("'{}'", p.display());
    let state = h.sbx.state_dir();
    let mut s = format!("echo '{RAN}'\n");
    for src in [
        h.sbx.db_path(),
        h.sbx.dir.join(".env"),
        h.secrets_file.clone(),
    ] {
        s += &format!("cat {} >> loot.txt 2>/dev/null || true\n", q(&src));
    }
    s += "tr '\\0' '\\n' < /proc/$PPID/environ >> loot.txt 2>/dev/null || true\n";
    s += "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\" >> loot.txt 2>/dev/null || true; done\n";
    s += "env >> loot.txt\n";
    for t in [
        neighbour.join("README.md"),
        neighbour.join("planted.txt"),
        clone.join("hooks/post-checkout"),
        clone.join("hooks/pre-push"),
        clone.join("config"),
        h.outside.join("canary.txt"),
        h.outside.join("new.txt"),
        state.join("logs/planted.log"),
    ] {
        s += &format!("echo pwned >> {} 2>/dev/null || true\n", q(&t));
    }
    // A commit and a moved HEAD would change what orch pushes and merges
    // after the tests passed.
    s += "git -c user.name=x -c user.email=x@x commit -q --allow-empty -m hostile-planted-commit 2>/dev/null || true\n";
    s += "echo 'ref: refs/heads/main' > \"$(git rev-parse --git-dir)/HEAD\" 2>/dev/null || true\n";
    s += "cat loot.txt\nexit 0\n";
    s
}

#[test]
fn a_test_script_planted_by_an_agent_runs_confined_in_ci_and_in_the_merge_gate() {
    let Some(h) = Hostile::new() else { return };
    // A neighbour task goes through first: its worktree stays (done
    // worktrees are kept a day) as a target next to the hostile one.
    let neighbour_id = h.sbx.add_issue("neighbour");
    h.sbx.tick_until(60, |s| s.stage(neighbour_id) == "done");
    let neighbour = h.sbx.worktree(neighbour_id);
    let clone = h.sbx.state_dir().join("repos/widget");

    let id = h.sbx.add_issue("hostile");
    // The developer of the hostile task appends the payload to test.sh and
    // keeps the loot file out of git (it would be committed otherwise).
    let dev = format!(
        "if [ \"$ORCH_TASK_ID\" = {id} ]; then\n\
         cat >> test.sh <<'PAYLOAD'\n{}PAYLOAD\n\
         echo loot.txt >> .gitignore\nfi",
        payload(&h, &neighbour, &clone)
    );
    h.agent_runs_first("developer", &dev);
    let outside: Vec<PathBuf> = vec![
        neighbour.clone(),
        clone.join("hooks"),
        clone.join("config"),
        clone.join("info"),
        h.outside.clone(),
        h.sbx.dir.join("orch.toml"),
        h.sbx.dir.join(".env"),
        h.secrets_file.clone(),
    ];
    let roots: Vec<&Path> = outside.iter().map(PathBuf::as_path).collect();
    let before = Snapshot::of(&roots);

    // The local forge's CI step at the development gate runs the planted
    // script.
    for role in ["analyst", "architect", "developer"] {
        h.sbx.ok(&["work-once", "--role", role]);
    }
    h.sbx.ok(&["ci"]);
    assert_eq!(h.sbx.stage(id), "review", "{}", h.sbx.dump());
    let logs = h.sbx.state_dir().join("logs");
    let ci_log = read_log(&logs, &format!("ci-task{id}-"));
    assert!(
        ci_log.contains(RAN),
        "the payload did not run in CI: {ci_log}"
    );
    assert!(
        ci_log.contains("tests passed"),
        "the tests stayed green: {ci_log}"
    );
    let loot =
        String::from_utf8_lossy(&std::fs::read(h.sbx.worktree(id).join("loot.txt")).unwrap())
            .into_owned();
    assert!(loot.contains("PATH="), "the payload wrote its loot: {loot}");
    assert!(!loot.contains("SQLite format 3"), "it read the database");
    assert!(
        !loot.contains("ORCH_"),
        "orch's environment reached it: {loot}"
    );
    h.assert_no_leak();
    before.assert_unchanged(&Snapshot::of(&roots));

    // Main moves, so the merge gate's catch-up makes a new head that it
    // tests again: the payload runs a second time, there.
    for role in ["reviewer", "tester"] {
        h.sbx.ok(&["work-once", "--role", role]);
    }
    assert_eq!(h.sbx.stage(id), "deploy-staging", "{}", h.sbx.dump());
    h.sbx.push_to_main("README.md", "Someone else moved main.");
    h.sbx.tick_until(60, |s| s.stage(id) == "done");
    let merge_log = read_log(&logs, &format!("merge-task{id}-"));
    assert!(
        merge_log.contains(RAN),
        "the payload did not run in the merge gate: {merge_log}"
    );
    assert!(h
        .sbx
        .origin_git(&["show", "main:test.sh"])
        .contains("hostile payload ran"));
    assert!(!Path::new(&clone.join("hooks/pre-push")).exists());
    assert!(!h
        .sbx
        .origin_git(&["log", "--all", "--format=%s"])
        .contains("hostile-planted-commit"));
    before.assert_unchanged(&Snapshot::of(&roots));
    assert!(!logs.join("planted.log").exists());
    h.assert_no_leak();
    h.sbx.check_invariants();
}

/// The text of every log in `logs` whose name starts with `prefix`.
fn read_log(logs: &Path, prefix: &str) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(logs).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            text += &String::from_utf8_lossy(&std::fs::read(e.path()).unwrap());
        }
    }
    let names: Vec<_> = std::fs::read_dir(logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(!text.is_empty(), "no log {prefix}* among {names:?}");
    text
}

/// Without a sandbox (`ORCH_AGENT_SANDBOX=none`) the test command runs as
/// orch, in orch's pid namespace: what still keeps orch's secrets from it
/// is that orch is not dumpable (`/proc/<orch>/environ` holds the
/// environment orch was started with, secrets included, and is readable
/// by its user otherwise) and that its children get no `ORCH_*`. orch runs
/// as an unprivileged user here (root reads every process's environ).
#[test]
fn without_a_sandbox_the_test_command_cannot_read_orchs_environment() {
    if crate::util::skip_on_postgres(
        "orch runs as nobody here, and the test cluster's socket folder is its owner's only",
    ) {
        return;
    }
    let Some(mut h) = Hostile::new() else { return };
    h.sbx.set("ORCH_AGENT_SANDBOX", "none");
    let id = h.sbx.add_issue("unsandboxed");
    let dev = "cat >> test.sh <<'PAYLOAD'\n\
         tr '\\0' '\\n' < /proc/$PPID/environ >> loot.txt 2>&1 || echo 'environ denied' >> loot.txt\n\
         env >> loot.txt\nexit 0\nPAYLOAD\necho loot.txt >> .gitignore";
    h.agent_runs_first("developer", dev);
    const NOBODY: &str = "65534";
    for dir in [h.sbx._tmp.path(), h.fake_agent().parent().unwrap()] {
        let ok = std::process::Command::new("chown")
            .args([
                "-R",
                &format!("{NOBODY}:{NOBODY}"),
                &dir.display().to_string(),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {}", dir.display());
    }
    // The three runs, then the CI step that runs the test command.
    let steps: [&[&str]; 4] = [
        &["work-once", "--role", "analyst"],
        &["work-once", "--role", "architect"],
        &["work-once", "--role", "developer"],
        &["ci"],
    ];
    for step in steps {
        let out = std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
                env!("CARGO_BIN_EXE_orch"),
                "-q",
            ])
            .args(step)
            .current_dir(&h.sbx.dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &h.sbx.dir)
            .envs(&h.sbx.env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{step:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(h.sbx.stage(id), "review", "{}", h.sbx.dump());
    let loot =
        String::from_utf8_lossy(&std::fs::read(h.sbx.worktree(id).join("loot.txt")).unwrap())
            .into_owned();
    assert!(loot.contains("environ denied"), "{loot}");
    for s in Hostile::secret_values() {
        assert!(
            !loot.contains(s),
            "secret {s:?} read by the test command: {loot}"
        );
    }
    h.assert_no_leak();
}
