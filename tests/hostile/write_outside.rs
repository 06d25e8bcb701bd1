//! Route: an agent writes outside its worktree — into another task's
//! worktree, the shared clone's hooks and config, orch's state, a folder
//! beside the sandbox — and reads what orch keeps there. Closed by the
//! bubblewrap sandbox (DESIGN §4 "Agent sandbox"): the filesystem is
//! read-only but for the worktree, the verdict folder and a private /tmp;
//! the state directory, the database, `.env` and the secrets file are
//! hidden.

use super::{Hostile, Snapshot};

#[test]
fn an_agent_writing_outside_its_worktree_changes_nothing_there_and_reads_no_secret() {
    let Some(h) = Hostile::new() else { return };
    h.sbx.add_issue("hostile");
    h.sbx.add_issue("neighbour");
    let state = h.sbx.state_dir();
    let wt2 = h.sbx.worktree(2);
    let clone = state.join("repos/widget");
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    let targets = [
        wt2.join("README.md"),
        wt2.join("planted.txt"),
        clone.join("hooks/post-checkout"),
        clone.join("config"),
        clone.join("info/attributes"),
        h.outside.join("canary.txt"),
        h.outside.join("new.txt"),
        h.sbx.dir.join("orch.toml"),
        h.sbx.dir.join(".env"),
        h.secrets_file.clone(),
        h.sbx.db_path(),
        state.join("logs/planted.log"),
    ];
    let mut script = String::new();
    for t in &targets {
        script += &format!("echo pwned >> {} 2>/dev/null || true\n", q(t));
    }
    // Whatever it can read of orch's secrets goes into its worktree, from
    // where orch would commit and push it.
    for src in [
        h.sbx.dir.join(".env"),
        h.secrets_file.clone(),
        h.sbx.db_path(),
    ] {
        script += &format!("cat {} >> loot.txt 2>/dev/null || true\n", q(&src));
    }
    script += "cat /proc/[0-9]*/environ >> loot.txt 2>/dev/null || true\n";
    script += "env >> loot.txt\n";
    h.agent_runs_first("analyst", &script);
    let watched = [
        wt2.clone(),
        clone.join("hooks"),
        clone.join("config"),
        clone.join("info"),
        h.outside.clone(),
        h.sbx.dir.join("orch.toml"),
        h.sbx.dir.join(".env"),
        h.secrets_file.clone(),
    ];
    let watched: Vec<&std::path::Path> = watched.iter().map(|p| p.as_path()).collect();
    let before = Snapshot::of(&watched);
    let v = h.sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["to"], "architecture", "{v}");
    let after = Snapshot::of(&watched);
    before.assert_unchanged(&after);
    assert!(!state.join("logs/planted.log").exists());
    // The loot was committed and pushed (it is the agent's work) and holds
    // no secret.
    let loot = h.sbx.origin_git(&["show", "orch/widget-1:loot.txt"]);
    assert!(loot.contains("ORCH_TASK_ID="), "{loot}");
    h.assert_no_leak();
    h.sbx.tick_until(60, |s| s.stage(1) == "done");
    h.assert_no_leak();
    h.sbx.check_invariants();
}
