//! Route: an agent rewrites its worktree's git metadata — in the shared
//! clone, its worktree's admin folder (`<clone>/worktrees/<name>/`,
//! writable in the sandbox so it can commit) holds `commondir` and
//! `gitdir`; in the worktree, `.git` names that folder — so that orch's own
//! git, run after the agent's, commits and pushes into a repository of the
//! agent's choosing. Closed in `src/git/metadata.rs` (`Repo::check_worktree`): orch
//! checks that metadata against what it wrote before every git call on a
//! worktree and runs git there with `--git-dir`/`--work-tree`/
//! `GIT_COMMON_DIR` of its own; a difference fails the job at once
//! (`Error::TamperedGitMetadata`, not retried), naming the file.

use std::path::{Path, PathBuf};

use super::{Hostile, Snapshot};

/// The shell lines that give the agent a repository of its own in its
/// worktree: `evil.git`, a bare copy of origin whose task branch is the
/// worktree's HEAD and whose `origin` is `loot.git`, an empty bare
/// repository that receives whatever orch would push. `$admin` is the
/// worktree's admin folder, as its `.git` names it.
const ATTACKER_REPOS: &str = r#"set -e
admin=$(sed 's/^gitdir: //' .git)
url=$(git config remote.origin.url)
branch=$(git symbolic-ref --short HEAD)
git clone -q --bare "$url" "$PWD/evil.git"
git init -q --bare "$PWD/loot.git"
git -C "$PWD/evil.git" config remote.origin.url "$PWD/loot.git"
git -C "$PWD/evil.git" update-ref "refs/heads/$branch" "$(git rev-parse HEAD)"
"#;

/// What each test sees: the sandbox, its worktree and the attacker's
/// push destination.
struct Attack {
    h: Hostile,
    wt: PathBuf,
    clone: PathBuf,
}

impl Attack {
    /// A sandbox with one task whose `role` agent runs `ATTACKER_REPOS`,
    /// then `tamper`, then does its ordinary work.
    fn new(role: &str, tamper: &str) -> Option<Attack> {
        let h = Hostile::new()?;
        h.sbx.add_issue("hostile");
        h.agent_runs_first(role, &format!("{ATTACKER_REPOS}{tamper}\nset +e"));
        let wt = h.sbx.worktree(1);
        let clone = h.sbx.state_dir().join("repos/widget");
        Some(Attack { h, wt, clone })
    }

    /// Runs the hostile job with `work-once` and asserts what a person
    /// checks: the attacker's `loot.git` got no ref and no object; origin's
    /// refs did not change (the run's work went nowhere); the job failed at
    /// once (attempt 1, not requeued) with a reason naming `file` and
    /// `points_to`; the clone's task branch did not move; no secret leaked;
    /// nothing outside the worktree changed.
    fn assert_refused(&self, stage: &str, file: &str, points_to: &str) {
        let h = &self.h;
        let outside = [&h.outside as &Path, &h.sbx.dir.join("orch.toml")];
        let before = Snapshot::of(&outside);
        let origin_refs = h.sbx.origin_git(&["for-each-ref"]);
        let v = h.sbx.json(&["work-once"]);
        // The attack was set up, and got nothing.
        let loot = self.wt.join("loot.git");
        assert!(
            loot.join("HEAD").is_file(),
            "the agent made {}",
            loot.display()
        );
        let git = |dir: &Path, args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(dir)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?} in {}", dir.display());
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            git(&loot, &["for-each-ref"]),
            "",
            "refs pushed to the attacker"
        );
        let objects = git(&loot, &["count-objects", "-v"]);
        assert!(
            objects.contains("count: 0\n") && objects.contains("in-pack: 0\n"),
            "objects pushed to the attacker: {objects}"
        );
        assert_eq!(
            h.sbx.origin_git(&["for-each-ref"]),
            origin_refs,
            "origin carries none of the refused run"
        );
        assert_eq!(v["finalized"]["action"], "failed", "{v}");
        let reason = v["finalized"]["reason"].as_str().unwrap();
        assert!(reason.contains("refusing to run git"), "{reason}");
        assert!(reason.contains(file), "names {file}: {reason}");
        assert!(reason.contains(points_to), "says {points_to}: {reason}");
        let (status, attempt): (String, i64) = h
            .sbx
            .db()
            .query_row(
                "SELECT status, attempt FROM jobs WHERE task_id=1 AND stage=?1",
                [stage],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((status.as_str(), attempt), ("failed", 1), "not retried");
        let main = h.sbx.origin_git(&["rev-parse", "main"]);
        let task_branch = git(&self.clone, &["rev-parse", "refs/heads/orch/widget-1"]);
        if stage == "analysis" {
            assert_eq!(task_branch.trim(), main.trim(), "the clone's branch stayed");
        }
        h.assert_no_leak();
        before.assert_unchanged(&Snapshot::of(&outside));
    }
}

#[test]
fn an_agent_pointing_commondir_at_its_own_repository_fails_the_job_and_gets_nothing() {
    let Some(a) = Attack::new("analyst", r#"echo "$PWD/evil.git" > "$admin/commondir""#) else {
        return;
    };
    a.assert_refused("analysis", "commondir", "evil.git");
}

#[test]
fn an_agent_rewriting_gitdir_fails_the_job() {
    let Some(a) = Attack::new(
        "analyst",
        r#"mkdir -p "$PWD/elsewhere" && echo "$PWD/elsewhere/.git" > "$admin/gitdir""#,
    ) else {
        return;
    };
    a.assert_refused("analysis", "gitdir", "elsewhere/.git");
}

#[test]
fn an_agent_pointing_its_dot_git_file_at_its_own_repository_fails_the_job() {
    // A complete admin folder in the attacker's copy, so git follows it.
    let tamper = r#"
mkdir -p "$PWD/evil.git/worktrees/w"
cp "$admin/HEAD" "$admin/index" "$PWD/evil.git/worktrees/w/"
echo ../.. > "$PWD/evil.git/worktrees/w/commondir"
echo "$PWD/.git" > "$PWD/evil.git/worktrees/w/gitdir"
echo "gitdir: $PWD/evil.git/worktrees/w" > .git
"#;
    let Some(a) = Attack::new("analyst", tamper) else {
        return;
    };
    let wt = a.wt.display().to_string();
    a.assert_refused("analysis", &format!("{wt}/.git"), "evil.git/worktrees/w");
}

#[test]
fn an_agent_replacing_dot_git_with_a_repository_of_its_own_fails_the_job() {
    // A developer run: the task has been through analysis and architecture.
    let tamper = r#"
rm .git
git clone -q --no-checkout "$url" "$PWD/fake"
mv "$PWD/fake/.git" .git
rm -rf "$PWD/fake"
git --git-dir=.git config remote.origin.url "$PWD/loot.git"
git --git-dir=.git update-ref "refs/heads/$branch" "$(git --git-dir=.git rev-parse origin/main)"
git --git-dir=.git symbolic-ref HEAD "refs/heads/$branch"
git --git-dir=.git read-tree HEAD
"#;
    let Some(a) = Attack::new("developer", tamper) else {
        return;
    };
    for to in ["architecture", "development"] {
        let v = a.h.sbx.json(&["work-once"]);
        assert_eq!(v["finalized"]["to"], to, "{v}");
    }
    let wt = a.wt.display().to_string();
    a.assert_refused("development", &format!("{wt}/.git"), "is a directory");
}

#[test]
fn an_agent_turning_head_to_another_branch_fails_the_job() {
    let tamper = r#"echo "ref: refs/heads/main" > "$admin/HEAD""#;
    let Some(a) = Attack::new("analyst", tamper) else {
        return;
    };
    a.assert_refused("analysis", "HEAD", "refs/heads/main");
}

/// Runs `ATTACKER_REPOS` and `tamper` in worktree `wt` as the agent would
/// have (here after the agent's run: the metadata is found changed when
/// the job is finished by someone else).
fn tamper_after_the_run(wt: &Path, tamper: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{ATTACKER_REPOS}{tamper}"))
        .current_dir(wt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `git --git-dir DIR ARGS`, stdout.
fn git_dir(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?} in {}", dir.display());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_reaper_finishing_a_job_refuses_a_changed_worktree_at_once() {
    let Some(mut h) = Hostile::new() else { return };
    h.sbx.add_issue("dies finalizing");
    h.sbx.work_once_dying_after_the_exit();
    let wt = h.sbx.worktree(1);
    tamper_after_the_run(&wt, r#"echo "$PWD/evil.git" > "$admin/commondir""#);
    let origin_refs = h.sbx.origin_git(&["for-each-ref"]);
    h.sbx.set("ORCH_REAPER_FINALIZE_GRACE_S", "0");
    let done = h.sbx.json(&["reap"]);
    let result = done["actions"][0]["result"].as_str().unwrap_or_default();
    assert!(
        result.contains("refusing to run git") && result.contains("commondir"),
        "{done}"
    );
    assert_eq!(
        h.sbx.count(
            "SELECT COUNT(*) FROM jobs WHERE status='failed' AND attempt=1 AND finalize_failures=1"
        ),
        1,
        "failed at the first try, not retried: {}",
        h.sbx.dump()
    );
    assert_eq!(git_dir(&wt.join("loot.git"), &["for-each-ref"]), "");
    assert_eq!(h.sbx.origin_git(&["for-each-ref"]), origin_refs);
    h.assert_no_leak();
}

/// Takes a new task ("merge me", task 1) to deploy-staging: each role
/// runs in turn, with the CI step between rounds.
fn to_deploy_staging(h: &Hostile) {
    h.sbx.add_issue("merge me");
    for _ in 0..10 {
        if h.sbx.stage(1) == "deploy-staging" {
            break;
        }
        for role in ["analyst", "architect", "developer", "reviewer", "tester"] {
            h.sbx.ok(&["work-once", "--role", role]);
        }
        h.sbx.ok(&["ci"]);
    }
}

#[test]
fn the_merge_gate_refuses_a_changed_worktree_and_main_does_not_move() {
    let Some(h) = Hostile::new() else { return };
    to_deploy_staging(&h);
    assert_eq!(h.sbx.stage(1), "deploy-staging");
    let wt = h.sbx.worktree(1);
    tamper_after_the_run(&wt, r#"echo "$PWD/evil.git" > "$admin/commondir""#);
    let origin_refs = h.sbx.origin_git(&["for-each-ref"]);
    let out = h
        .sbx
        .orch_std()
        .args(["merge-gate", "--task", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to run git") && err.contains("commondir"),
        "{err}"
    );
    assert_eq!(git_dir(&wt.join("loot.git"), &["for-each-ref"]), "");
    assert_eq!(
        h.sbx.origin_git(&["for-each-ref"]),
        origin_refs,
        "main did not move"
    );
    h.assert_no_leak();
}

#[test]
fn the_merge_line_sends_back_a_task_whose_worktree_changed_and_main_does_not_move() {
    let Some(h) = Hostile::new() else { return };
    to_deploy_staging(&h);
    // The deployer passes: the task is ready to merge. Then its worktree's
    // git metadata is changed before the line builds it.
    h.sbx.ok(&["work-once", "--role", "deployer"]);
    assert_eq!(h.sbx.stage(1), "deploy-staging");
    let wt = h.sbx.worktree(1);
    tamper_after_the_run(&wt, r#"echo "$PWD/evil.git" > "$admin/commondir""#);
    let origin_refs = h.sbx.origin_git(&["for-each-ref"]);
    let v = h.sbx.json(&["merge-gate"]);
    let b = &v["projects"][0]["batches"][0];
    assert_eq!(b["sent_back"][0][0], 1, "{v}");
    let reason = h.sbx.last_reason(1);
    assert!(
        reason.contains("refusing to run git") && reason.contains("commondir"),
        "{reason}"
    );
    assert_eq!(h.sbx.stage(1), "development");
    assert_eq!(git_dir(&wt.join("loot.git"), &["for-each-ref"]), "");
    assert_eq!(
        h.sbx.origin_git(&["for-each-ref"]),
        origin_refs,
        "main did not move"
    );
    h.assert_no_leak();
}

#[test]
fn after_a_refused_run_the_next_run_starts_from_a_re_created_worktree() {
    let Some(h) = Hostile::new() else { return };
    h.sbx.add_issue("hostile once");
    // Only the first run attacks; the run after it is an honest one.
    h.agent_runs_first(
        "analyst",
        &format!(
            "if [ \"$ORCH_JOB_ID\" = 1 ]; then\n{ATTACKER_REPOS}echo \"$PWD/evil.git\" > \"$admin/commondir\"\nset +e\nfi"
        ),
    );
    let v = h.sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["action"], "failed", "{v}");
    let wt = h.sbx.worktree(1);
    assert!(wt.join("evil.git").is_dir());
    h.sbx.ok(&["task", "unblock", "1"]);
    let v = h.sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["to"], "architecture", "{v}");
    assert!(!wt.join("evil.git").exists(), "the worktree was re-created");
    let files = h
        .sbx
        .origin_git(&["ls-tree", "-r", "--name-only", "orch/widget-1"]);
    assert!(files.contains("analysis.md"), "{files}");
    assert!(
        !files.contains("evil.git"),
        "nothing of the refused run: {files}"
    );
    h.assert_no_leak();
    h.sbx.check_invariants();
}
