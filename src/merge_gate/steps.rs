//! The merge gate: the deterministic (no LLM) sub-gate on deploy-staging →
//! deploy (DESIGN §7). Two branches that are each green can still break
//! main together; this gate makes that impossible and serialises merges.
//!
//! For a task whose deployer gave its staging verdict PASS (the worker, or
//! the reaper's Tier-2, calls [`gate_job`] from `worker::finalize`), or by
//! hand (`orch merge-gate --task ID`, [`run_by_hand`]):
//!
//! 1. take the repo's merge lease `merge:<repo>` (holder `task:<id>`, the
//!    job it acts for, an expiry `ORCH_MERGE_GATE_LEASE_TTL_S` away). Busy →
//!    the job is *deferred*, never waited for (see below);
//! 2. fetch; if the task branch does not contain origin's current main,
//!    rebase it onto main in its worktree and push it with
//!    `--force-with-lease=<branch>:<sha origin had>`. Only task branches are
//!    ever pushed here (`git::validate_task_branch` refuses `main`,
//!    `refs/heads/main`, `HEAD:main`, … before anything happens);
//! 3. run the project's test command on the combined tree (its timeout,
//!    one log per run under `<state>/logs/merge-task<id>-<sha>.log`; the
//!    result is stored as CI status `orch/test` of that sha, so a sha is
//!    tested once);
//! 4. green → [`merge_into_default`] moves main to exactly the tested sha
//!    (a fast-forward; origin refuses anything else), then the task moves to
//!    deploy. Conflict (the rebase is aborted, the worktree left clean) or
//!    red → roll back to development with the reason, counting a developer
//!    retry. Main moved meanwhile → catch up again, up to three times.
//!
//! The lease follows the task through the transition rule
//! ([`crate::pipeline::lease::follow_transition`], called by
//! `pipeline::apply`): deploy-staging → deploy hands it to the deploy job,
//! so merges *and deploys* of one repo are serialised; any other move
//! (deploy → done, a rollback, an escalation, a rerun) releases it. A Gitea
//! PR-merged delivery releases it from its holder
//! ([`crate::pipeline::lease::release_for_task`]), and `orch reap` releases
//! a stale one (expired, or its job no longer queued or running). Every
//! release is holder-aware: a tick that no longer holds a lease cannot
//! release the lease someone else took since.
//!
//! ## Deferral: only the merge is retried
//!
//! The deployer already ran and its verdict is recorded, so a busy lease
//! must not cost another agent run. The job goes back to `queued` with
//! `merge_pending` set, its exit code kept, the same attempt, and
//! `available_at` = now + `ORCH_MERGE_GATE_DEFER_S` · 2^defers (at most 16×).
//! The next worker to claim it skips the agent and runs `finalize`, which
//! runs this gate again. After `ORCH_MERGE_GATE_MAX_DEFERS` defers, the next
//! busy lease fails the job and escalates the task (through the transition
//! rule). Main moving three times under one gate run is deferred the same
//! way (and the lease released meanwhile).
//!
//! ## Crash policy
//!
//! Every step is idempotent and the lease is tied to the task, so whoever
//! finishes the job next simply runs the gate again:
//! - crash while the worker runs the gate (exit recorded, job running): the
//!   lease's job is still running, so the lease stays; the reaper's Tier-2
//!   finishes the job after `ORCH_REAPER_FINALIZE_GRACE_S`, renewing the
//!   lease as the same holder and continuing from wherever git is: a rebase
//!   left in progress is aborted (`Repo::ensure_worktree`), a rebased but
//!   unpushed branch is pushed with a lease on the sha origin has, a tested
//!   sha is not re-tested, an already fast-forwarded main is `AlreadyMerged`;
//! - crash between the merge and the transition: the next run finds main
//!   already containing the head and only applies the transition;
//! - a deferred job (`queued`, `merge_pending`) is ordinary queued work; the
//!   claim restarts the finalize grace;
//! - a manual run claims the stage's job as its own worker; killed, it is a
//!   dead worker: Tier-1 requeues the job (the lease stays with the queued
//!   job) or, for a deferred merge, Tier-2 finishes it;
//! - a lease nobody will come back for (its job ended, or it expired) is
//!   released by `orch reap`; `reconcile` never merges.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tracing::{info, warn};

use crate::backoff::backoff_ms;
use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Job, Lease, LeaseAcquire, Task, Tx};
use crate::error::Error;
use crate::failpoint::failpoint;
use crate::git::{validate_task_branch, FastForward, RebaseOutcome, Repo};
use crate::pipeline::gate::Gate;
use crate::pipeline::job::{self as jobs, Changed, Finalized, How, JobChange};
use crate::pipeline::lease::{holder, release_for_task};
use crate::pipeline::{self, Actor, JobStatus, Move, Moved, Stage};
use crate::process::{self, RunSpec};

/// How often main may move under one gate run before it is deferred.
const MAX_CATCH_UPS: usize = 3;

/// The CI context under which the gate stores its test results.
const TEST_CONTEXT: &str = crate::db::ORCH_TEST_CONTEXT;

/// The name of the merge lease of `project`'s repository (`merge:<repo>`,
/// `merge:<project>` without a forge repo), or `None` when the project
/// merges without the lease (`ORCH_MERGE_GATE_ENABLED=false`, or the
/// project is not in a non-empty `ORCH_MERGE_GATE_REPOS`).
pub fn lease_name(ctx: &Ctx, project: &ProjectConfig) -> Option<String> {
    let s = &ctx.settings;
    if !s.merge_gate_enabled {
        return None;
    }
    let listed = s
        .merge_gate_repos
        .iter()
        .any(|r| *r == project.name || (!project.repo.is_empty() && *r == project.repo));
    if !s.merge_gate_repos.is_empty() && !listed {
        return None;
    }
    let repo = if project.repo.is_empty() {
        &project.name
    } else {
        &project.repo
    };
    Some(format!("merge:{repo}"))
}

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

/// What the gate decided for a finishing deploy-staging job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobGate {
    /// Apply this through the transition rule: `Pass` (merged),
    /// `Rollback` (conflict, red), `Fail` (refused branch name).
    Verdict(Gate),
    /// The gate settled the job itself: deferred, escalated at the defer
    /// cap, or lost the job to another actor.
    Settled(Finalized),
}

/// The gate for running job `job` of `task` at deploy-staging whose
/// staging verdict passed (called by `worker::finalize`, so by the worker
/// and the reaper's Tier-2). See the module documentation.
///
/// Guarantees: on `Verdict(Pass)` origin's main contains the task head,
/// which was tested on exactly that tree, and the task still holds the
/// lease (the transition hands it on); on a deferral the job's agent result
/// is kept. Safe to run again after a crash anywhere.
/// Errors: git, process and database errors; the lease is released first
/// and the job stays running, for the reaper's Tier-2.
///
/// `validated` is the revision the staging check validated (projects with
/// `[projects.staging]`): when the catch-up leaves another head, nothing
/// merges — the stage runs again (a rerun, not a developer retry), so the
/// deployer deploys the caught-up head and staging validates it first.
#[allow(clippy::too_many_arguments)]
pub fn gate_job(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    job: &Job,
    actor: Actor,
    validated: Option<&str>,
) -> anyhow::Result<JobGate> {
    if let Err(e) = validate_task_branch(&task.branch, &repo.branch_prefix, &project.default_branch)
    {
        return Ok(JobGate::Verdict(Gate::Fail(format!("merge gate: {e}"))));
    }
    let mut steps = Steps::new(task.id, false);
    let lease = lease_name(ctx, project);
    if let Some(name) = &lease {
        let now = now_ms();
        let ttl_ms = ctx.settings.merge_gate_lease_ttl_s as i64 * 1000;
        match db.write(|tx| tx.acquire_lease(name, &holder(task.id), Some(job.id), now, ttl_ms))? {
            LeaseAcquire::Acquired(l) => steps.push(took_lease(&l)),
            LeaseAcquire::Busy(l) => {
                return defer_job(
                    ctx,
                    db,
                    job,
                    actor,
                    "merge gate",
                    &busy_reason(&l),
                    Some(name),
                )
                .map(JobGate::Settled)
            }
        }
        failpoint("merge_gate.after_acquire");
    }
    match catch_up_test_merge(
        ctx,
        db,
        project,
        repo,
        task,
        Some(job),
        validated,
        &mut steps,
    ) {
        Ok(Merge::Merged { .. }) => Ok(JobGate::Verdict(Gate::Pass)),
        Ok(Merge::Rollback { reason, log }) => Ok(JobGate::Verdict(Gate::Rollback { reason, log })),
        Ok(Merge::MainMoving(reason)) => {
            give_back(db, lease.as_deref(), task, None)?;
            defer_job(ctx, db, job, actor, "merge gate", &reason, None).map(JobGate::Settled)
        }
        Ok(Merge::Restage(reason)) => {
            // The transition releases the lease (a rerun) and enqueues the
            // deployer again; the job finishes with it.
            let m = Move::new(task, Stage::DeployStaging, actor, reason).finishing(job.id);
            let moved = db.write(|tx| pipeline::apply(tx, ctx.policy(), &m, now_ms()))?;
            Ok(JobGate::Settled(match moved {
                Moved::Applied { escalated, .. } => Finalized::Advanced {
                    from: Stage::DeployStaging,
                    to: Stage::DeployStaging,
                    escalated,
                },
                Moved::Lost => Finalized::Lost,
            }))
        }
        Err(e) => {
            if let Err(e2) = give_back(db, lease.as_deref(), task, None) {
                warn!(target: "merge", task = task.id, error = %format!("{e2:#}"), "could not release the merge lease");
            }
            Err(e)
        }
    }
}

/// Defers running deploy-staging job `job`'s gate (the merge gate's busy
/// lease or moving main, the staging check's INFRA; `what` names it), or
/// at the defer cap (`ORCH_MERGE_GATE_MAX_DEFERS`) fails it and escalates
/// the task. Not an attempt: the job is queued again with its agent's
/// result kept (`merge_pending`), so the next claim runs only the gates.
/// `lease`: the busy lease it waits for; its release wakes the job (and a
/// lease released before this transaction leaves the job runnable now).
/// One transaction; a lost claim writes nothing.
pub fn defer_job(
    ctx: &Ctx,
    db: &Db,
    job: &Job,
    actor: Actor,
    what: &str,
    reason: &str,
    lease: Option<&str>,
) -> anyhow::Result<Finalized> {
    let s = &ctx.settings;
    let now = now_ms();
    let out = db.write(|tx| {
        let cur = match tx.job(job.id)? {
            Some(j) if j.status == JobStatus::Running && j.attempt == job.attempt => j,
            _ => return Ok(Finalized::Lost),
        };
        if cur.merge_defers >= s.merge_gate_max_defers as i64 {
            let why = format!(
                "{what} deferred {} times (ORCH_MERGE_GATE_MAX_DEFERS): {reason}",
                cur.merge_defers
            );
            return jobs::fail_and_escalate(tx, ctx.policy(), job, &why, why.clone(), actor, now);
        }
        let base_ms = s.merge_gate_defer_s as i64 * 1000;
        let released_meanwhile = match lease {
            Some(name) => tx.lease(name)?.is_none(),
            None => false,
        };
        let at = if released_meanwhile {
            now
        } else {
            now + backoff_ms(base_ms, base_ms << 4, cur.merge_defers, None)
        };
        let c = JobChange {
            job_id: job.id,
            from: JobStatus::Running,
            to: JobStatus::Queued,
            attempt: Some(job.attempt),
            how: How::Defer {
                reason,
                available_at_ms: at,
                lease,
            },
        };
        if jobs::change(tx, &c, now)? == Changed::Lost {
            return Ok(Finalized::Lost);
        }
        tx.bump_counter("merge_gate.deferred_total", 1)?;
        Ok(Finalized::Deferred {
            defers: cur.merge_defers + 1,
            available_at_ms: at,
            reason: reason.to_string(),
        })
    })?;
    info!(target: "merge", job = job.id, task = job.task_id, outcome = %out, "merge not run now");
    Ok(out)
}

/// Why a lease is busy, for people.
fn busy_reason(l: &Lease) -> String {
    let left_s = (l.expires_at_ms - now_ms()).max(0) / 1000;
    format!(
        "merge lease {} is held by {}{} (expires in {left_s}s)",
        l.name,
        l.holder,
        l.job_id
            .map(|j| format!(" for job {j}"))
            .unwrap_or_default()
    )
}

fn took_lease(l: &Lease) -> String {
    format!(
        "took lease {} (holder {}{}, expires in {}s)",
        l.name,
        l.holder,
        l.job_id.map(|j| format!(", job {j}")).unwrap_or_default(),
        (l.expires_at_ms - l.acquired_at_ms) / 1000
    )
}

fn would_take_lease(l: &Lease) -> String {
    format!(
        "would take lease {} (holder {}{}, for {}s)",
        l.name,
        l.holder,
        l.job_id.map(|j| format!(", job {j}")).unwrap_or_default(),
        (l.expires_at_ms - l.acquired_at_ms) / 1000
    )
}

/// Releases the task's lease `lease` (holder-aware) and gives back the job
/// a manual run claimed, in one transaction.
fn give_back(
    db: &Db,
    lease: Option<&str>,
    task: &Task,
    claimed: Option<(&Job, (i64, i64))>,
) -> anyhow::Result<()> {
    db.write(|tx| {
        if let Some(name) = lease {
            tx.release_lease(name, &holder(task.id))?;
        }
        if let Some((job, (pid, start))) = claimed {
            let c = JobChange {
                job_id: job.id,
                from: JobStatus::Running,
                to: JobStatus::Queued,
                attempt: Some(job.attempt),
                how: How::Unclaim {
                    pid,
                    start_time: start,
                },
            };
            jobs::change(tx, &c, now_ms())?;
        }
        Ok(())
    })
}

/// The steps a run took (or, with `--dry-run`, would take), logged as they
/// happen. In a dry run every decision is made from the observed state as
/// in a real run; a step that would change git, origin or the database is
/// skipped and reported as `would …`.
struct Steps {
    task_id: i64,
    dry_run: bool,
    list: Vec<String>,
}

impl Steps {
    fn new(task_id: i64, dry_run: bool) -> Steps {
        Steps {
            task_id,
            dry_run,
            list: Vec::new(),
        }
    }

    /// A step that is the same in both modes (an observation, a decision).
    fn push(&mut self, step: String) {
        if !self.dry_run {
            info!(target: "merge", task = self.task_id, "{step}");
        }
        self.list.push(step);
    }

    /// A side-effecting step: `done` after a real run took it, `would` in
    /// a dry run, which skips it.
    fn did(&mut self, done: impl FnOnce() -> String, would: impl FnOnce() -> String) {
        let step = if self.dry_run { would() } else { done() };
        self.push(step);
    }

    /// A note only a dry run makes (what a real run does silently).
    fn would(&mut self, step: String) {
        if self.dry_run {
            self.push(step);
        }
    }
}

/// How steps 2–4 ended.
enum Merge {
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
    /// The caught-up head is not the revision staging validated: run the
    /// stage again (pushed, nothing tested or merged).
    Restage(String),
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Steps 2–4 of the gate for `task`, whose lease (if any) the caller holds
/// and whose job (if any) it runs; `job` gets heartbeats while tests run.
///
/// With `steps.dry_run` it fetches, rebases, pushes, tests and merges
/// nothing: origin is read with `git ls-remote`, the worktree (or, when it
/// does not exist yet, origin's branch) and the stored test results are
/// read, and each step reports what it would do.
#[allow(clippy::too_many_arguments)]
fn catch_up_test_merge(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    job: Option<&Job>,
    validated: Option<&str>,
    steps: &mut Steps,
) -> anyhow::Result<Merge> {
    let worktree = Path::new(&task.worktree);
    let default = project.default_branch.as_str();
    let branch = task.branch.as_str();
    let dry = steps.dry_run;
    for _ in 0..MAX_CATCH_UPS {
        let (main, pushed) = if dry {
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
        // A dry run does not create the worktree: origin's branch stands in.
        let before = if dry && !worktree.exists() {
            pushed
                .clone()
                .with_context(|| format!("{branch} has no worktree and is not on origin"))?
        } else {
            repo.head_sha(worktree)?
        };
        let rebased = if dry {
            let dir = if worktree.exists() {
                worktree
            } else {
                repo.clone_dir.as_path()
            };
            let contains = dir.exists() && repo.is_ancestor(dir, &main, &before).unwrap_or(false);
            if contains {
                steps.push(format!("{branch} contains {default}: no rebase needed"));
            } else {
                steps.push(format!(
                    "would rebase {branch} ({}) onto {default} ({}) in {}; a conflict would abort the rebase and roll back to development",
                    short(&before),
                    short(&main),
                    worktree.display()
                ));
            }
            !contains
        } else {
            match repo.rebase_onto_default(worktree)? {
                RebaseOutcome::Conflict { files } => {
                    let files = files.join(", ");
                    steps.push(format!(
                        "rebase of {branch} onto {default} ({}) conflicts in {files}; aborted, worktree clean at {}",
                        short(&main),
                        short(&before)
                    ));
                    return Ok(Merge::Rollback {
                        reason: format!(
                            "merge gate: rebase onto {default} ({}) conflicts in {files}",
                            short(&main)
                        ),
                        log: None,
                    });
                }
                RebaseOutcome::UpToDate => {
                    steps.push(format!("{branch} contains {default}: no rebase needed"));
                    false
                }
                RebaseOutcome::Rebased { new_head } => {
                    steps.push(format!(
                        "rebased {branch} onto {default}: {} → {}",
                        short(&before),
                        short(&new_head)
                    ));
                    true
                }
            }
        };
        if dry && rebased {
            // The rebased head is unknown until the rebase runs.
            steps.push(match &pushed {
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
            return Ok(Merge::Merged { sha: before });
        }
        if !dry {
            failpoint("merge_gate.after_rebase");
        }
        sync_branch(repo, worktree, branch, pushed.as_deref(), &before, steps)?;
        if let Some(validated) = validated.filter(|_| !dry) {
            let head = repo.head_sha(worktree)?;
            if head != validated {
                steps.push(format!(
                    "{branch} is now at {}, not the revision staging validated ({}): staging runs again first",
                    short(&head),
                    short(validated)
                ));
                return Ok(Merge::Restage(format!(
                    "merge gate: {branch} caught up with {default} ({} → {}); staging validates the new head before it merges",
                    short(validated),
                    short(&head)
                )));
            }
        }
        let (sha, green, log) = retest(ctx, db, project, repo, task, &before, job, steps)?;
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
        match merge_into_default(ctx, project, repo, task)? {
            FastForward::Merged { sha } => {
                steps.push(format!("fast-forwarded {default} to {}", short(&sha)));
                return Ok(Merge::Merged { sha });
            }
            FastForward::AlreadyMerged => {
                steps.push(format!("{default} already contains {}", short(&sha)));
                return Ok(Merge::Merged { sha });
            }
            FastForward::NotFastForward => steps.push(format!(
                "{default} moved during the gate; catching up again"
            )),
        }
    }
    Ok(Merge::MainMoving(format!(
        "{default} kept moving; not merged after {MAX_CATCH_UPS} catch-ups"
    )))
}

/// Makes origin's task branch equal the worktree's head after the
/// catch-up: nothing when it already is, a plain push when origin's is an
/// ancestor, else — after a rebase, or a crash between a rebase and its
/// push — a push with `--force-with-lease` on the sha origin had, but only
/// when that sha is what the worktree rebased (`before`, or its
/// `ORIG_HEAD`): a commit someone else pushed is never overwritten. A dry
/// run decides the same and pushes nothing; its head is `before` (no
/// rebase ran), read from origin when there is no worktree yet.
fn sync_branch(
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
#[allow(clippy::too_many_arguments)]
fn retest(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    head: &str,
    job: Option<&Job>,
    steps: &mut Steps,
) -> anyhow::Result<(String, bool, PathBuf)> {
    let worktree = Path::new(&task.worktree);
    let sha = if steps.dry_run {
        head.to_string()
    } else {
        repo.head_sha(worktree)?
    };
    let log = ctx.log_path(&format!("merge-task{}-{}.log", task.id, short(&sha)));
    if let Some(state) = db.ci_status(&project.name, &sha, TEST_CONTEXT)? {
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
                    db.write(|tx| tx.heartbeat(j.id, j.attempt, now_ms()))?;
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

// ------------------------------------------------------------ by hand

/// What `orch merge-gate --task ID` did or, with `--dry-run`, would do.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub task_id: i64,
    pub dry_run: bool,
    /// The merge lease used, `None` when the project merges without one.
    pub lease: Option<String>,
    /// One line per step, in order ("would …" with `--dry-run`).
    pub steps: Vec<String>,
    #[serde(flatten)]
    pub result: ByHand,
}

/// How a manual run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ByHand {
    /// Origin's main contains the tested head `sha`; the task moved to
    /// deploy (now at `version`). Exit 0.
    Merged { sha: String, version: i64 },
    /// A conflict or red tests: the task went back to development (and is
    /// escalated when that reached the retry cap). Exit 3.
    RolledBack { reason: String, escalated: bool },
    /// Nothing changed: the lease is busy, the task's job is running, or
    /// main kept moving. Exit 75; run it again later.
    Deferred { reason: String },
    /// `--dry-run`: `would` is `merge`, `roll back` or `defer`. Exit 0.
    Planned { would: String },
}

/// Whom the manual run's claim found.
enum Claim {
    /// Claimed: the lease taken (`None` without the gate) and the stage's
    /// job (`None` when the task has no active job).
    Ok {
        lease: Option<Lease>,
        job: Option<Job>,
    },
    JobRunning(Job),
    Busy(Lease),
    Moved,
}

/// The manual run's claim, inside `tx`: the task unchanged, the stage's
/// queued job claimed by `me` (boot id, pid, start time) and the lease
/// taken — both or neither.
fn claim(
    tx: &Tx,
    task: &Task,
    lease: Option<&str>,
    me: (&str, i64, i64),
    now: i64,
    ttl_ms: i64,
) -> anyhow::Result<Claim> {
    match tx.task(task.id)? {
        Some(t) if t.stage == task.stage && t.version == task.version && !t.escalated => {}
        _ => return Ok(Claim::Moved),
    }
    let job = tx
        .active_jobs(task.id)?
        .into_iter()
        .find(|j| j.stage == task.stage && j.task_version == task.version);
    if let Some(j) = job.as_ref().filter(|j| j.status == JobStatus::Running) {
        return Ok(Claim::JobRunning(j.clone()));
    }
    let taken = match lease {
        Some(name) => {
            let job_id = job.as_ref().map(|j| j.id);
            match tx.acquire_lease(name, &holder(task.id), job_id, now, ttl_ms)? {
                LeaseAcquire::Busy(l) => return Ok(Claim::Busy(l)),
                LeaseAcquire::Acquired(l) => Some(l),
            }
        }
        None => None,
    };
    let claimed = match job {
        Some(j) => Some(
            jobs::claim(tx, j.id, me, now)?
                .context("the task's queued job vanished inside a transaction")?,
        ),
        None => None,
    };
    Ok(Claim::Ok {
        lease: taken,
        job: claimed,
    })
}

/// `orch merge-gate --task ID [--dry-run]`: runs the gate for a task at
/// deploy-staging now, as a human.
///
/// A manual run stands in for the staging verdict: it does not wait for
/// the deployer (an operator who runs it vouches for staging). It claims
/// the stage's queued job (so no worker runs it meanwhile; a deferred
/// merge's job, or one whose deployer has not run yet) together with the
/// lease — both or neither — then catches up, re-tests and merges. Pass →
/// deploy-staging → deploy with actor `human`, finishing the claimed job
/// (the lease passes to the deploy job); conflict or red → development with
/// actor `human`, counting a developer retry. A busy lease, a running job,
/// or main moving changes nothing (the claim is given back).
///
/// `dry_run` takes the same path: the claim and the transition are
/// rehearsed in transactions that are rolled back ([`Db::rehearse`]), the
/// git steps are decided from what origin (`git ls-remote`), the worktree
/// and the stored test results show, and nothing is fetched, rebased,
/// pushed, tested or merged; the steps say what a real run would do.
///
/// Errors: [`Error::Usage`] for an unknown task, one not at
/// deploy-staging, or an escalated one; [`Error::InvalidRef`] when the
/// task's branch is not a task branch (e.g. `main`), before anything is
/// done; git, process and database errors (the lease and the job are given
/// back first).
pub fn run_by_hand(ctx: &Ctx, db: &Db, task_id: i64, dry_run: bool) -> anyhow::Result<Report> {
    let task = db
        .task(task_id)?
        .ok_or_else(|| Error::Usage(format!("no task {task_id}")))?;
    if task.stage != Stage::DeployStaging {
        return Err(Error::Usage(format!(
            "task {task_id} is at {}; the merge gate runs for a task at deploy-staging",
            task.stage
        ))
        .into());
    }
    if task.escalated {
        return Err(Error::Usage(format!(
            "task {task_id} is escalated ({}); `orch task unblock {task_id}` first",
            task.escalated_reason.as_deref().unwrap_or("")
        ))
        .into());
    }
    let project = ctx.project(&task.project)?;
    let repo = ctx.repo(project);
    validate_task_branch(&task.branch, &repo.branch_prefix, &project.default_branch)?;
    let lease = lease_name(ctx, project);
    let mut steps = Steps::new(task.id, dry_run);
    let result = by_hand(ctx, db, project, &repo, &task, lease.as_deref(), &mut steps)?;
    Ok(Report {
        task_id,
        dry_run,
        lease,
        steps: steps.list,
        result,
    })
}

fn by_hand(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    lease: Option<&str>,
    steps: &mut Steps,
) -> anyhow::Result<ByHand> {
    let dry = steps.dry_run;
    let (host, pid, start) = process::identity();
    let now = now_ms();
    let ttl_ms = ctx.settings.merge_gate_lease_ttl_s as i64 * 1000;
    let claim_in = |tx: &Tx| claim(tx, task, lease, (&host, pid, start), now, ttl_ms);
    let deferred = |steps: &mut Steps, reason: String| {
        if steps.dry_run {
            steps.push(format!("would defer (exit 75), changing nothing: {reason}"));
            ByHand::Planned {
                would: "defer".into(),
            }
        } else {
            steps.push(format!("deferred: {reason}"));
            ByHand::Deferred { reason }
        }
    };
    let job = match db.write_or_rehearse(dry, claim_in)? {
        Claim::Moved => {
            return Err(
                Error::Usage(format!("task {} changed meanwhile; look again", task.id)).into(),
            )
        }
        Claim::JobRunning(j) => {
            let reason = format!(
                "job {} ({}) is running under worker pid {}; its worker runs the merge gate",
                j.id,
                j.stage,
                j.worker_pid.unwrap_or(0)
            );
            return Ok(deferred(steps, reason));
        }
        Claim::Busy(l) => return Ok(deferred(steps, busy_reason(&l))),
        Claim::Ok { lease: taken, job } => {
            match &taken {
                Some(l) => steps.did(|| took_lease(l), || would_take_lease(l)),
                None => steps.would(
                    "would merge without a lease (the merge gate is off for this project)".into(),
                ),
            }
            job
        }
    };
    match &job {
        Some(j) if j.merge_pending => steps.did(
            || format!("claimed job {} (a deferred merge: its deployer's verdict stands)", j.id),
            || format!("would claim job {} (a deferred merge: its deployer's verdict stands)", j.id),
        ),
        Some(j) => steps.did(
            || format!("claimed job {}: its deployer will not run (this manual merge stands in for the staging verdict)", j.id),
            || format!("would claim job {}: its deployer would not run (a manual merge stands in for the staging verdict)", j.id),
        ),
        None => steps.did(
            || "the task has no active job; merging without one".into(),
            || "the task has no active job; would merge without one".into(),
        ),
    }
    let claimed = job.as_ref().map(|j| (j, (pid, start)));
    let worktree = Path::new(&task.worktree);
    let merged = if dry {
        if !worktree.exists() {
            steps.push(format!(
                "would create the worktree {} from origin's {}",
                worktree.display(),
                task.branch
            ));
        }
        catch_up_test_merge(ctx, db, project, repo, task, job.as_ref(), None, steps)
    } else {
        failpoint("merge_gate.after_acquire");
        repo.ensure_worktree(worktree, &task.branch).and_then(|()| {
            catch_up_test_merge(ctx, db, project, repo, task, job.as_ref(), None, steps)
        })
    };
    let merged = match merged {
        Ok(m) => m,
        Err(e) => {
            if !dry {
                if let Err(e2) = give_back(db, lease, task, claimed) {
                    warn!(target: "merge", task = task.id, error = %format!("{e2:#}"), "could not give back the lease and job");
                }
            }
            return Err(e);
        }
    };
    let default = &project.default_branch;
    let (to, reason, retry) = match &merged {
        Merge::MainMoving(reason) | Merge::Restage(reason) => {
            give_back(db, lease, task, claimed)?;
            steps.push(format!("deferred: {reason}; lease and job given back"));
            return Ok(ByHand::Deferred {
                reason: reason.clone(),
            });
        }
        Merge::Merged { sha } => (
            Stage::Deploy,
            format!(
                "merge gate passed (by hand): {default} contains the tested head {}",
                short(sha)
            ),
            false,
        ),
        Merge::Rollback { reason, .. } => (Stage::Development, reason.clone(), true),
    };
    let mut m = Move::new(task, to, Actor::Human, reason.clone());
    if let Merge::Rollback { log, .. } = &merged {
        m.log_path = log.clone();
    }
    m.job_id = job.as_ref().map(|j| j.id);
    m.developer_retry = retry;
    let now = now_ms();
    let moved = if dry {
        // The claim was rolled back: rehearse it again, then the move.
        db.rehearse(|tx| match claim_in(tx)? {
            Claim::Ok { .. } => pipeline::apply(tx, ctx.policy(), &m, now),
            _ => Ok(Moved::Lost),
        })?
    } else {
        db.write(|tx| pipeline::apply(tx, ctx.policy(), &m, now))?
    };
    let Moved::Applied {
        version,
        next_job,
        escalated,
    } = moved
    else {
        return Err(Error::Usage(format!(
            "task {} changed meanwhile; the gate's git work stands, the transition was not applied",
            task.id
        ))
        .into());
    };
    match merged {
        Merge::Merged { sha } => {
            steps.did(
                || format!(
                    "moved deploy-staging → deploy (actor human, v{version}){}",
                    match (lease, next_job) {
                        (Some(_), Some(j)) => format!("; lease handed to deploy job {j}"),
                        _ => String::new(),
                    }
                ),
                || format!(
                    "would move deploy-staging → deploy (actor human){}; a conflict or red tests would roll back to development (actor human) instead, counting a developer retry",
                    if lease.is_some() { " and hand the lease to the deploy job" } else { "" }
                ),
            );
            Ok(if dry {
                ByHand::Planned {
                    would: "merge".into(),
                }
            } else {
                ByHand::Merged { sha, version }
            })
        }
        _ => {
            steps.did(
                || format!(
                    "rolled back to development (actor human, v{version}), a developer retry counted{}{}",
                    if lease.is_some() { "; lease released" } else { "" },
                    if escalated { "; task escalated" } else { "" }
                ),
                || format!(
                    "would roll back to development (actor human), counting a developer retry{}{}",
                    if lease.is_some() { "; would release the lease" } else { "" },
                    if escalated { "; would escalate the task" } else { "" }
                ),
            );
            Ok(if dry {
                ByHand::Planned {
                    would: "roll back".into(),
                }
            } else {
                ByHand::RolledBack { reason, escalated }
            })
        }
    }
}

/// `orch merge-gate --task ID --release`: releases the lease task `task_id`
/// holds (an operator's repair for a stuck lease; `orch reap` releases
/// stale ones by itself). With `dry_run`, only names it. Returns the
/// released (or releasable) lease names.
///
/// Errors: [`Error::Usage`] for an unknown task; database errors.
pub fn release_by_hand(db: &Db, task_id: i64, dry_run: bool) -> anyhow::Result<Vec<String>> {
    if db.task(task_id)?.is_none() {
        return Err(Error::Usage(format!("no task {task_id}")).into());
    }
    if dry_run {
        let me = holder(task_id);
        return Ok(db
            .leases()?
            .into_iter()
            .filter(|l| l.holder == me)
            .map(|l| l.name)
            .collect());
    }
    let released = db.write(|tx| release_for_task(tx, task_id))?;
    for name in &released {
        info!(target: "merge", task = task_id, lease = %name, "lease released by hand");
    }
    Ok(released)
}
