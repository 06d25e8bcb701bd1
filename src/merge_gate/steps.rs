//! Steps 2–4 of the merge gate, shared by the job and the manual run:
//! catch the task branch up with main and push it, test the combined tree
//! once per sha, and move main to exactly the tested head; each step
//! reported as it happens (or, in a dry run, as it would).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tracing::info;

use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Job, Task};
#[cfg(doc)]
use crate::error::Error;
use crate::failpoint::failpoint;
use crate::git::{FastForward, RebaseOutcome, Repo};
use crate::process::RunSpec;

/// How often main may move under one gate run before it is deferred.
const MAX_CATCH_UPS: usize = 3;

/// The CI context under which the gate stores its test results.
const TEST_CONTEXT: &str = crate::db::ORCH_TEST_CONTEXT;

/// Moves the default branch to the worktree's head — the one forge-specific
/// step of the gate. The caller holds the merge lease and has tested
/// exactly this head.
///
/// The project's forge does it ([`crate::forge::Forge::merge_into_default`]):
/// the local forge by a non-forced fast-forward push
/// ([`Repo::fast_forward_default`]), Gitea by merging the PR through the
/// API with the project's `merge_style` on the tested head sha, each
/// answering with the same [`FastForward`] values.
///
/// Guarantees: idempotent (`AlreadyMerged` the second time); main moves
/// only to a descendant of itself.
/// Errors: git errors ([`Error::Subprocess`], [`Error::InvalidRef`]);
/// for Gitea, API errors and a merge Gitea refuses for now.
pub fn merge_into_default(
    ctx: &Ctx,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
) -> anyhow::Result<FastForward> {
    crate::forge::Forge::for_project(ctx, project).merge_into_default(project, repo, task)
}

/// The steps a run took (or, with `--dry-run`, would take), logged as they
/// happen. In a dry run every decision is made from the observed state as
/// in a real run; a step that would change git, origin or the database is
/// skipped and reported as `would …`.
pub(super) struct Steps {
    task_id: i64,
    pub(super) dry_run: bool,
    pub(super) list: Vec<String>,
}

impl Steps {
    pub(super) fn new(task_id: i64, dry_run: bool) -> Steps {
        Steps {
            task_id,
            dry_run,
            list: Vec::new(),
        }
    }

    /// A step that is the same in both modes (an observation, a decision).
    pub(super) fn push(&mut self, step: String) {
        if !self.dry_run {
            info!(target: "merge", task = self.task_id, "{step}");
        }
        self.list.push(step);
    }

    /// A side-effecting step: `done` after a real run took it, `would` in
    /// a dry run, which skips it.
    pub(super) fn did(&mut self, done: impl FnOnce() -> String, would: impl FnOnce() -> String) {
        let step = if self.dry_run { would() } else { done() };
        self.push(step);
    }

    /// A note only a dry run makes (what a real run does silently).
    pub(super) fn would(&mut self, step: String) {
        if self.dry_run {
            self.push(step);
        }
    }
}

/// How steps 2–4 ended.
pub(super) enum Merge {
    /// Origin's main contains the tested head `sha` (merged now or before;
    /// in a dry run: would).
    Merged { sha: String },
    /// Conflict or red tests: back to development with this reason; `log`
    /// is the red test run's own log (orch's path, for the feedback).
    Rollback {
        reason: String,
        log: Option<PathBuf>,
    },
    /// Main moved under every catch-up: try again later.
    MainMoving(String),
}

pub(super) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Steps 2–4 of the gate for `task`, whose lease (if any) the caller holds
/// and whose job (if any) it runs; `job` gets heartbeats while tests run.
///
/// With `steps.dry_run` it fetches, rebases, pushes, tests and merges
/// nothing: origin is read with `git ls-remote`, the worktree (or, when it
/// does not exist yet, origin's branch) and the stored test results are
/// read, and each step reports what it would do.
///
/// Each round: [`observe_origin`], [`rebase`] (a dry run that would rebase
/// ends in [`plan_after_rebase`]), [`sync_branch`], [`retest`], [`merge_tested`]; main moving under it starts the
/// next round, at most [`MAX_CATCH_UPS`].
#[allow(clippy::too_many_arguments)]
pub(super) fn catch_up_test_merge(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    job: Option<&Job>,
    steps: &mut Steps,
) -> anyhow::Result<Merge> {
    let worktree = Path::new(&task.worktree);
    let default = project.default_branch.as_str();
    let branch = task.branch.as_str();
    let dry = steps.dry_run;
    for _ in 0..MAX_CATCH_UPS {
        let (main, pushed) = observe_origin(repo, default, branch, steps)?;
        // A dry run does not create the worktree: origin's branch stands in.
        let before = if dry && !worktree.exists() {
            pushed
                .clone()
                .with_context(|| format!("{branch} has no worktree and is not on origin"))?
        } else {
            repo.head_sha(worktree)?
        };
        let rebased = match rebase(repo, worktree, default, branch, &main, &before, steps)? {
            ControlFlow::Break(rollback) => return Ok(rollback),
            ControlFlow::Continue(rebased) => rebased,
        };
        if dry && rebased {
            return Ok(plan_after_rebase(
                ctx,
                project,
                task,
                pushed.as_deref(),
                before,
                steps,
            ));
        }
        if !dry {
            failpoint("merge_gate.after_rebase");
        }
        sync_branch(repo, worktree, branch, pushed.as_deref(), &before, steps)?;
        let (sha, green, log) = retest(ctx, db, project, repo, task, &before, job, true, steps)?;
        if !green {
            return Ok(Merge::Rollback {
                reason: format!(
                    "merge gate: tests fail on the combined tree {} ({branch} on top of {default} at {}); log {}",
                    short(&sha),
                    short(&main),
                    log.display()
                ),
                log: Some(log),
            });
        }
        if dry {
            if main == sha {
                steps.push(format!("{default} already contains {}", short(&sha)));
            } else {
                steps.push(format!(
                    "would fast-forward {default} from {} to {}",
                    short(&main),
                    short(&sha)
                ));
            }
            return Ok(Merge::Merged { sha });
        }
        failpoint("merge_gate.before_merge");
        if repo.head_sha(worktree)? != sha {
            steps.push(format!("{branch} moved while it was tested; again"));
            continue;
        }
        if let Some(merged) = merge_tested(ctx, project, repo, task, &sha, steps)? {
            return Ok(merged);
        }
    }
    Ok(Merge::MainMoving(format!(
        "{default} kept moving; not merged after {MAX_CATCH_UPS} catch-ups"
    )))
}

/// Step 2's look at origin: where its `default` and `branch` are (fetched
/// first; a dry run reads them with `git ls-remote`), as
/// `(main, pushed)`.
///
/// Errors: origin has no `default`; git errors.
pub(super) fn observe_origin(
    repo: &Repo,
    default: &str,
    branch: &str,
    steps: &mut Steps,
) -> anyhow::Result<(String, Option<String>)> {
    let (main, pushed) = if steps.dry_run {
        (
            repo.ls_remote_branch(default)?,
            repo.ls_remote_branch(branch)?,
        )
    } else {
        (
            repo.remote_branch_sha(default)?,
            repo.remote_branch_sha(branch)?,
        )
    };
    let main = main.with_context(|| format!("origin has no default branch {default:?}"))?;
    let at = |sha: &Option<String>| sha.as_deref().map_or("(not on origin)", short).to_string();
    steps.did(
        || {
            format!(
                "fetched origin: {default} at {}, {branch} at {}",
                short(&main),
                at(&pushed)
            )
        },
        || {
            format!(
                "would fetch origin: {default} is at {}, {branch} at {}",
                short(&main),
                at(&pushed)
            )
        },
    );
    Ok((main, pushed))
}

/// Step 2's rebase of `branch` (at `before`) onto origin's `default` (at
/// `main`) in `worktree`: `Continue(rebased)`, whether the branch moved
/// (in a dry run: would move); `Break(Merge::Rollback)` on a conflict
/// (the rebase aborted, the worktree clean). A dry run rebases nothing and
/// reads the ancestry in the worktree, or in the clone when there is none.
fn rebase(
    repo: &Repo,
    worktree: &Path,
    default: &str,
    branch: &str,
    main: &str,
    before: &str,
    steps: &mut Steps,
) -> anyhow::Result<ControlFlow<Merge, bool>> {
    if steps.dry_run {
        let dir = if worktree.exists() {
            worktree
        } else {
            repo.clone_dir.as_path()
        };
        let contains = dir.exists() && repo.is_ancestor(dir, main, before).unwrap_or(false);
        if contains {
            steps.push(format!("{branch} contains {default}: no rebase needed"));
        } else {
            steps.push(format!(
                "would rebase {branch} ({}) onto {default} ({}) in {}; a conflict would abort the rebase and roll back to development",
                short(before),
                short(main),
                worktree.display()
            ));
        }
        return Ok(ControlFlow::Continue(!contains));
    }
    Ok(match repo.rebase_onto_default(worktree)? {
        RebaseOutcome::Conflict { files } => {
            let files = files.join(", ");
            steps.push(format!(
                "rebase of {branch} onto {default} ({}) conflicts in {files}; aborted, worktree clean at {}",
                short(main),
                short(before)
            ));
            ControlFlow::Break(Merge::Rollback {
                reason: format!(
                    "merge gate: rebase onto {default} ({}) conflicts in {files}",
                    short(main)
                ),
                log: None,
            })
        }
        RebaseOutcome::UpToDate => {
            steps.push(format!("{branch} contains {default}: no rebase needed"));
            ControlFlow::Continue(false)
        }
        RebaseOutcome::Rebased { new_head } => {
            steps.push(format!(
                "rebased {branch} onto {default}: {} → {}",
                short(before),
                short(&new_head)
            ));
            ControlFlow::Continue(true)
        }
    })
}

/// A dry run whose branch would be rebased: the rebased head is unknown
/// until the rebase runs, so the push, the test and the fast-forward are
/// only named; the plan counts as merged at `before`.
fn plan_after_rebase(
    ctx: &Ctx,
    project: &ProjectConfig,
    task: &Task,
    pushed: Option<&str>,
    before: String,
    steps: &mut Steps,
) -> Merge {
    let branch = task.branch.as_str();
    let default = project.default_branch.as_str();
    steps.push(match pushed {
        Some(r) => format!(
            "would push {branch} with --force-with-lease={branch}:{}",
            short(r)
        ),
        None => format!("would push {branch}"),
    });
    steps.push(format!(
        "would run the test command {} on the rebased tree",
        test_command(ctx, project, task)
    ));
    steps.push(format!("would fast-forward {default} to the tested head"));
    Merge::Merged { sha: before }
}

/// Step 4: moves main to the tested head `sha` ([`merge_into_default`]):
/// `Some(Merged)` when origin's main now contains it, `None` when main
/// moved during the gate (catch up again).
fn merge_tested(
    ctx: &Ctx,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    sha: &str,
    steps: &mut Steps,
) -> anyhow::Result<Option<Merge>> {
    let default = project.default_branch.as_str();
    Ok(match merge_into_default(ctx, project, repo, task)? {
        FastForward::Merged { sha } => {
            steps.push(format!("fast-forwarded {default} to {}", short(&sha)));
            Some(Merge::Merged { sha })
        }
        FastForward::AlreadyMerged => {
            steps.push(format!("{default} already contains {}", short(sha)));
            Some(Merge::Merged {
                sha: sha.to_string(),
            })
        }
        FastForward::NotFastForward => {
            steps.push(format!(
                "{default} moved during the gate; catching up again"
            ));
            None
        }
    })
}

/// Makes origin's task branch equal the worktree's head after the
/// catch-up: nothing when it already is, a plain push when origin's is an
/// ancestor, else — after a rebase, or a crash between a rebase and its
/// push — a push with `--force-with-lease` on the sha origin had, but only
/// when that sha is what the worktree rebased (`before`, or its
/// `ORIG_HEAD`): a commit someone else pushed is never overwritten. A dry
/// run decides the same and pushes nothing; its head is `before` (no
/// rebase ran), read from origin when there is no worktree yet.
pub(super) fn sync_branch(
    repo: &Repo,
    worktree: &Path,
    branch: &str,
    pushed: Option<&str>,
    before: &str,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let head = if steps.dry_run {
        before.to_string()
    } else {
        repo.head_sha(worktree)?
    };
    let dir = if worktree.exists() {
        worktree
    } else {
        repo.clone_dir.as_path()
    };
    let plain = || format!("pushed {branch} ({})", short(&head));
    let would_plain = || format!("would push {branch} ({})", short(&head));
    let Some(remote) = pushed else {
        if !steps.dry_run {
            repo.push_branch(worktree, branch)?;
        }
        steps.did(plain, would_plain);
        return Ok(());
    };
    if remote == head {
        return Ok(());
    }
    // A dry run fetched nothing, so origin's sha may be unknown here.
    let contained = if steps.dry_run {
        repo.is_ancestor(dir, remote, &head).unwrap_or(false)
    } else {
        repo.is_ancestor(dir, remote, &head)?
    };
    if contained {
        if !steps.dry_run {
            repo.push_branch(worktree, branch)?;
        }
        steps.did(plain, would_plain);
        return Ok(());
    }
    let rebased_from_it = remote == before
        || repo.is_ancestor(dir, remote, before).unwrap_or(false)
        || repo.is_ancestor(dir, remote, "ORIG_HEAD").unwrap_or(false);
    if !rebased_from_it {
        anyhow::bail!(
            "origin's {branch} is at {remote}, which the worktree ({head}) neither contains nor rebased; refusing to overwrite it"
        );
    }
    if !steps.dry_run {
        repo.push_branch_force_with_lease(worktree, branch, remote)?;
    }
    let lease = format!("--force-with-lease={branch}:{}", short(remote));
    steps.did(
        || format!("pushed {branch} ({}) with {lease}", short(&head)),
        || format!("would push {branch} ({}) with {lease}", short(&head)),
    );
    Ok(())
}

/// The test command as people read it: argv, timeout and log pattern.
fn test_command(ctx: &Ctx, project: &ProjectConfig, task: &Task) -> String {
    format!(
        "{:?} (timeout {}s, log {})",
        project.test_command,
        project.test_timeout_s,
        ctx.log_path(&format!("merge-task{}-<sha>.log", task.id))
            .display()
    )
}

/// Step 3: the project's test command on the worktree's head, once per sha
/// (the result is stored as CI status `orch/test`). Returns the sha,
/// whether it passed, and the log path. Refreshes `job`'s heartbeat while
/// the tests run. A dry run looks up `head` (the head it observed) and
/// runs nothing: an unknown result counts as green for the plan.
/// `reuse`: whether a stored result of the sha stands (the by-hand gate);
/// the merge line passes false, so a pass is never reused.
#[allow(clippy::too_many_arguments)]
pub(super) fn retest(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    head: &str,
    job: Option<&Job>,
    reuse: bool,
    steps: &mut Steps,
) -> anyhow::Result<(String, bool, PathBuf)> {
    let worktree = Path::new(&task.worktree);
    let sha = if steps.dry_run {
        head.to_string()
    } else {
        repo.head_sha(worktree)?
    };
    let log = ctx.log_path(&format!("merge-task{}-{}.log", task.id, short(&sha)));
    let stored = if reuse {
        db.ci_status(&project.name, &sha, TEST_CONTEXT)?
    } else {
        None
    };
    if let Some(state) = stored {
        if state == "success" || state == "failure" {
            steps.push(format!(
                "tests already ran on {}: {state} (not run again)",
                short(&sha)
            ));
            // The log of the run that decided, as orch recorded it.
            let ran = db.ci_log_path(&project.name, &sha)?.map(PathBuf::from);
            return Ok((sha, state == "success", ran.unwrap_or(log)));
        }
    }
    if steps.dry_run {
        steps.push(format!(
            "would run the test command {} on {}",
            test_command(ctx, project, task),
            short(&sha)
        ));
        return Ok((sha, true, log));
    }
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let spec = RunSpec {
        argv: project.test_command.clone(),
        cwd: worktree.to_path_buf(),
        env: vec![],
        env_remove_prefix: Some("ORCH_".into()),
        stdin_path: None,
        log_path: log.clone(),
        timeout: Duration::from_secs(project.test_timeout_s),
        kill_grace: Duration::from_secs(ctx.settings.kill_grace_s),
    };
    // Code the agents may have written: confined as they are.
    let runner = crate::sandbox::test_runner(&ctx.settings, &repo.clone_dir, worktree)?;
    // On the monotonic clock: a wall clock set back does not stop the beats.
    let beat_every = Duration::from_secs(ctx.settings.heartbeat_s);
    let mut last_beat = std::time::Instant::now();
    let out = runner
        .run(
            &spec,
            Duration::from_millis(200),
            |_| Ok(()),
            || {
                if let Some(j) = job.filter(|_| last_beat.elapsed() >= beat_every) {
                    last_beat = std::time::Instant::now();
                    db.write(|tx| tx.heartbeat(j.id, j.epoch, now_ms()))?;
                }
                Ok(())
            },
        )
        .with_context(|| format!("running test command {:?}", project.test_command))?;
    let green = out.exit_code() == 0;
    let state = if green { "success" } else { "failure" };
    let log_path = log.to_string_lossy();
    db.write(|tx| {
        tx.upsert_ci_status(
            &project.name,
            &sha,
            TEST_CONTEXT,
            state,
            "",
            Some(&log_path),
            now_ms(),
        )
    })?;
    steps.push(format!(
        "ran the test command {:?} on {}: {} (exit {}); log {}",
        project.test_command,
        short(&sha),
        if green { "passed" } else { "FAILED" },
        out.exit_code(),
        log.display()
    ));
    Ok((sha, green, log))
}
