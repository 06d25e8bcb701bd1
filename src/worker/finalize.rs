//! Finalize: after a job's agent exited, the job's work reaches origin
//! (commit, push), the facts are read, `gate::decide` decides and one
//! transaction applies the outcome (DESIGN §4 "Job lifecycle"). Shared by
//! the worker and the reaper's Tier-2; it waits for nothing (CI and the
//! merge line are steps of their own).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tracing::{info, warn};

use super::name_failure;
use crate::clock::now_ms;
use crate::ctx::Ctx;
use crate::db::{Db, Job, Task};
use crate::error::is_permanent;
use crate::failpoint::failpoint;
use crate::fence;
use crate::pipeline::gate::{self, Gate};
use crate::pipeline::job::{self as jobs, Changed, Finalized};
use crate::pipeline::spend;
use crate::pipeline::{self, Actor, JobStatus, Move, Moved, Stage};

/// Finalizes running job `job_id` whose agent exit is recorded: commits
/// and pushes the worktree (git), reads the facts, decides through
/// `gate::decide` and applies the outcome in one transaction (DESIGN §4
/// "Job lifecycle"). It waits for nothing: at development with no CI
/// status yet the job finishes done and the task waits for CI
/// ([`crate::pipeline::ci`]). At deploy-staging a PASS finishes the job
/// with the task ready to merge, for the merge line
/// ([`crate::merge_gate::run_line`]) — or, where `[projects.staging]` is
/// set, awaiting the staging check of the pushed head, which the line's
/// first step runs ([`crate::staging::check_awaiting`]). Used by the
/// worker and by the reaper's Tier-2.
///
/// Recovery is bounded: each failed finalize of a job attempt is counted
/// (`jobs.finalize_failures`); at `ORCH_FINALIZE_MAX_ATTEMPTS`, or at once
/// for an error that cannot succeed on a retry ([`is_permanent`]), the job
/// fails and its task is escalated with the reason (one notification), and
/// this returns `Ok(Finalized::Failed)`.
///
/// Fenced (DESIGN §11 INV-10): `epoch` is the caller's claim (the
/// worker's own, the epoch the reaper planned on). Before each effect
/// outside the database — the commit into the worktree, the push, the
/// one transaction that queues its messages — the job must still be
/// running at that epoch; a stale epoch's finalize is refused and
/// recorded ([`fence::guard`]), returning [`Finalized::Refused`]. The
/// push carries the claim's lease (`jobs.claim_sha`,
/// `--force-with-lease`): origin's branch moved since the claim (another
/// epoch pushed) refuses it, recorded the same way, and the job fails at
/// once (never retried).
///
/// Guarantees: idempotent up to the terminal claim (a finalize of the
/// same epoch run again finds origin at its head: no push); the terminal
/// claim is one transaction, and an actor that loses it writes nothing.
/// Errors: database errors, and git errors below the cap (the job stays
/// `running` with its exit recorded, so the reaper's Tier-2 finishes it
/// later).
pub fn finalize(
    ctx: &Ctx,
    db: &Db,
    job_id: i64,
    epoch: i64,
    actor: Actor,
) -> anyhow::Result<Finalized> {
    let claim = fence::Claim { job_id, epoch };
    let err = match finalize_once(ctx, db, claim, actor) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    let Some(job) = db.job(job_id)?.filter(|j| fence::holds(j, claim)) else {
        return Err(err);
    };
    let reason = format!("finalize failed: {}", name_failure(&err));
    let cap = ctx.settings.finalize_max_attempts as i64;
    let permanent = is_permanent(&err);
    let policy = ctx.policy();
    let now = now_ms();
    let out = db.write(|tx| {
        let Some(n) = tx.note_finalize_failure(job.id, job.epoch, &reason)? else {
            return Ok(None);
        };
        if !permanent && n < cap {
            return Ok(Some((n, None)));
        }
        let why = if permanent {
            format!("{} job {} cannot finish: {reason}", job.stage, job.id)
        } else {
            format!(
                "{} job {} could not be finished after {n} attempts: {reason}",
                job.stage, job.id
            )
        };
        let f = jobs::fail_and_escalate(
            tx,
            policy,
            &job,
            &reason,
            why,
            pipeline::TransitionCause::FinalizeFailed,
            actor,
            now,
        )?;
        Ok(Some((n, Some(f))))
    })?;
    match out {
        Some((_, Some(f))) => {
            warn!(target: "worker", job = job.id, task = job.task_id, outcome = ?f, "finalize gave up");
            Ok(f)
        }
        Some((n, None)) => Err(err.context(format!("finalize attempt {n} of {cap} failed"))),
        None => Err(err),
    }
}

/// One try of [`finalize`], without the failure accounting.
fn finalize_once(
    ctx: &Ctx,
    db: &Db,
    claim: fence::Claim,
    actor: Actor,
) -> anyhow::Result<Finalized> {
    let job = db.job(claim.job_id)?.context("no such job")?;
    if job.epoch != claim.epoch {
        let reason = fence::refuse(db, claim, "finalize", &job)?;
        return Ok(Finalized::Refused { reason });
    }
    if job.status != JobStatus::Running || job.exit_code.is_none() {
        return Ok(Finalized::Lost);
    }
    let task = db.task(job.task_id)?.context("job's task vanished")?;
    if task.stage != job.stage || task.version != job.task_version {
        let reason = format!(
            "task moved to {} v{} while the job ran",
            task.stage, task.version
        );
        let won = db.write(|tx| {
            jobs::finish(
                tx,
                job.id,
                Some(job.epoch),
                JobStatus::Cancelled,
                Some(&reason),
                now_ms(),
            )
        })?;
        return Ok(if won == Changed::Applied {
            Finalized::Cancelled { reason }
        } else {
            Finalized::Lost
        });
    }
    let stage = task.stage;
    let project = ctx.project(&task.project)?;
    let repo = ctx.repo(project);
    let worktree = PathBuf::from(&task.worktree);
    let agent_ok = job.exit_code == Some(0);

    // Git: the job's work reaches origin. Recreates a missing worktree and
    // aborts a rebase a crashed merge step left in progress; a no-op on a
    // healthy worktree.
    super::ensure_worktree(&repo, &worktree, &task.branch)?;
    // A file that still holds conflict markers is never committed: the run
    // failed, and the retry starts again from what was pushed.
    let marked = if agent_ok {
        repo.conflict_marked_files(&worktree)?
    } else {
        Vec::new()
    };
    let refused = (!marked.is_empty()).then(|| {
        format!(
            "conflict markers left in {}; nothing committed",
            marked.join(", ")
        )
    });
    if let Some(r) = &refused {
        warn!(target: "worker", job = job.id, reason = %r, "refusing to commit");
    }
    let pushed = if agent_ok && refused.is_none() {
        let run_id = db.last_run_for_job(job.id)?.map(|r| r.0).unwrap_or(0);
        let msg = format!(
            "{}({}): auto-commit from {} run_id={run_id}",
            job.role, task.project, job.role
        );
        if let Some(reason) = fence::guard(db, claim, "commit")? {
            return Ok(Finalized::Refused { reason });
        }
        repo.commit_all(&worktree, &msg)?;
        failpoint("finalize.after_commit");
        if let Some(reason) = fence::guard(db, claim, "push")? {
            return Ok(Finalized::Refused { reason });
        }
        let lease = job.claim_sha.as_deref();
        if let Err(moved) = push_task_branch(&repo, &worktree, &task.branch, stage, lease)? {
            let reason = format!(
                "job {} epoch {}: push refused, {moved}: another epoch (or someone else) pushed",
                job.id, job.epoch
            );
            let now = now_ms();
            db.write(|tx| fence::record_reason(tx, claim, "push", &job, reason.clone(), now))?;
            fence::warn_refused(claim, job.task_id, "push", &reason);
            return Err(crate::error::Error::Permanent(reason).into());
        }
        failpoint("finalize.after_push");
        Some(repo.head_sha(&worktree)?)
    } else {
        // A failed run's half-done edits are not committed: the retry
        // starts again from what was pushed.
        repo.discard_changes(&worktree)?;
        None
    };

    // Facts, then the decision. The model account's usage or rate limit
    // stopped the run: not the job's fault (requeued without an attempt;
    // the account pauses). A clean run ends the account's pause.
    let account = ctx.config.account(&job.role);
    let limit = if agent_ok {
        None
    } else {
        db.run_judgement(job.id)?.and_then(|j| j.limit)
    };
    if let Some((kind, reset)) = limit {
        let message = job_error_text(db, &job)?;
        let decision = Decision::Limit {
            kind,
            reset,
            message,
        };
        return apply(
            ctx, db, &task, &job, stage, None, &account, false, decision, actor,
        );
    }
    let clear_pause = agent_ok && db.pause(&account)?.is_some();
    // No waiting here: at development without a final CI status the gate
    // is Pending, the job finishes done and the task waits for the status
    // (a `status` delivery, reconcile, or `orch ci` records it and decides
    // again through `pipeline::ci::on_status`).
    let facts = gate::gather(db, project, &repo, &task)?;
    let verdict = match refused {
        Some(r) => Gate::Fail(r),
        None => gate::decide(stage, &facts),
    };
    let decision = if verdict == Gate::Pass && stage == Stage::DeployStaging {
        // A deployer PASS finishes the job: the task is ready to merge, or
        // with [projects.staging] awaits the staging check of the head it
        // passed (the merge line's step runs the suite, not finalize).
        let awaiting = match project.staging {
            Some(_) => Some(repo.head_sha(&worktree)?),
            None => None,
        };
        info!(target: "gate", task = task.id, stage = %stage, awaiting_staging = ?awaiting, "gate evaluated: ready to merge");
        Decision::Ready { awaiting }
    } else {
        info!(target: "gate", task = task.id, stage = %stage, verdict = %verdict, "gate evaluated");
        Decision::Gate(verdict)
    };
    failpoint("finalize.before_terminal_claim");
    let pushed = pushed.as_deref();
    apply(
        ctx,
        db,
        &task,
        &job,
        stage,
        pushed,
        &account,
        clear_pause,
        decision,
        actor,
    )
}

/// What finalize decided for a finishing job.
enum Decision {
    /// The model account's limit stopped the run: requeue the job without
    /// an attempt and pause the account ([`spend::pause_for_limit`]).
    Limit {
        kind: crate::agent::LimitKind,
        reset: Option<i64>,
        message: String,
    },
    /// A deployer PASS at deploy-staging: the job is done and the task
    /// ready to merge, or (`awaiting`, where `[projects.staging]` is set)
    /// awaiting the staging check of that revision, the head it passed.
    Ready { awaiting: Option<String> },
    /// The stage gate's answer.
    Gate(Gate),
}

/// The latest run's error text of `job` (its judgement's reason), or a
/// generic one.
fn job_error_text(db: &Db, job: &Job) -> anyhow::Result<String> {
    Ok(db
        .run_judgement(job.id)?
        .and_then(|j| j.error)
        .map_or_else(|| "the agent's account hit its limit".into(), |e| e.reason))
}

/// Pushes the task branch unless origin already has the worktree's head
/// (a finalize of the same epoch run again: no push).
///
/// `lease` is the claim's (`jobs.claim_sha`: origin's branch when the run
/// started, '' for none; `None` when not recorded). With a lease the push
/// is `--force-with-lease=<branch>:<lease>`, and origin's branch found
/// elsewhere than the lease — another epoch, or someone, pushed since the
/// claim — is `Ok(Err(what moved))`, nothing pushed (INV-10).
///
/// orch rewrites a task branch in one place only: the merge step of
/// deploy-staging rebases it onto main. A crash between that rebase and its
/// push leaves a local branch that is a rebase of origin's; in that stage
/// (only) the branch is replaced under the lease (without one, on the sha
/// just seen). Everywhere else a non-fast-forward is an error, so a commit
/// someone else pushed to the branch is never overwritten.
fn push_task_branch(
    repo: &crate::git::Repo,
    worktree: &Path,
    branch: &str,
    stage: Stage,
    lease: Option<&str>,
) -> anyhow::Result<Result<(), String>> {
    let head = repo.head_sha(worktree)?;
    let remote = repo.remote_branch_sha(branch)?;
    if remote.as_deref() == Some(head.as_str()) {
        return Ok(Ok(()));
    }
    let rewrite = |r: &str| -> anyhow::Result<bool> {
        Ok(stage == Stage::DeployStaging && !repo.is_ancestor(worktree, r, &head)?)
    };
    let Some(lease) = lease else {
        return match remote {
            Some(r) if rewrite(&r)? => {
                warn!(target: "worker", branch, remote = %r, head = %head, "origin has the branch before a rebase; replacing it");
                repo.push_branch_force_with_lease(worktree, branch, &r)
            }
            _ => repo.push_branch(worktree, branch),
        }
        .map(Ok);
    };
    let expected = Some(lease).filter(|l| !l.is_empty());
    let moved = |now: Option<&str>| {
        format!(
            "origin's {branch} moved since the claim ({} → {})",
            expected.map_or("absent", short),
            now.map_or("deleted", short)
        )
    };
    if remote.as_deref() != expected {
        return Ok(Err(moved(remote.as_deref())));
    }
    let pushed = match &remote {
        // Not a rewrite: origin refuses a non-fast-forward.
        Some(r) if !rewrite(r)? && !repo.is_ancestor(worktree, r, &head)? => {
            repo.push_branch(worktree, branch)
        }
        Some(r) if rewrite(r)? => {
            warn!(target: "worker", branch, remote = %r, head = %head, "origin has the branch before a rebase; replacing it under the claim's lease");
            repo.push_branch_leased(worktree, branch, expected)
        }
        _ => repo.push_branch_leased(worktree, branch, expected),
    };
    match pushed {
        Ok(()) => Ok(Ok(())),
        Err(e) => {
            // Origin refused the lease: the branch moved between the read
            // above and the push.
            let now = repo.remote_branch_sha(branch)?;
            if now.as_deref() != expected && now.as_deref() != Some(head.as_str()) {
                return Ok(Err(moved(now.as_deref())));
            }
            Err(e)
        }
    }
}

/// The first 10 characters of a sha, for people.
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

/// Finalize's one write: in one transaction, records the pushed head
/// (`pushed`, through [`crate::forge::Forge::record_push`]: the branch's
/// known head and, on a forge with pull requests, the PR's outbox
/// message), ends `account`'s pause after a clean run (`clear_pause`),
/// and applies `decision` — a limit pause, the task ready to merge (the
/// job done, its merge-line row written), or the gate's answer through
/// the transition rule — with the run's report queued.
///
/// Errors: database errors.
#[allow(clippy::too_many_arguments)]
fn apply(
    ctx: &Ctx,
    db: &Db,
    task: &Task,
    job: &Job,
    stage: Stage,
    pushed: Option<&str>,
    account: &str,
    clear_pause: bool,
    decision: Decision,
    actor: Actor,
) -> anyhow::Result<Finalized> {
    let now = now_ms();
    let policy = ctx.policy();
    let project = ctx.project(&task.project)?;
    let forge = crate::forge::Forge::for_project(ctx, project);
    // The run's report (tracker comment, PR comment) is written in the same
    // transaction that finishes the job.
    let report = crate::report::RunReport::gather(ctx, task, job);
    let finalized = db.write(|tx| {
        if let Some(sha) = pushed {
            forge.record_push(tx, project, task, sha, now)?;
        }
        if clear_pause {
            tx.clear_pause(account)?;
        }
        let verdict = match &decision {
            Decision::Limit {
                kind,
                reset,
                message,
            } => {
                let settings = &ctx.settings;
                return spend::pause_for_limit(
                    tx, settings, job, account, *kind, *reset, message, now,
                );
            }
            Decision::Ready { awaiting } => {
                let done = jobs::finish(tx, job.id, Some(job.epoch), JobStatus::Done, None, now)?;
                if done != Changed::Applied {
                    return Ok(Finalized::Lost);
                }
                tx.line_enter(
                    task.id,
                    &task.project,
                    task.version,
                    awaiting.as_deref(),
                    now,
                )?;
                let reason = match awaiting {
                    Some(rev) => crate::merge_gate::awaiting_staging(rev),
                    None => crate::merge_gate::READY.to_string(),
                };
                let finalized = Finalized::Waiting { reason };
                report.queue(tx, ctx, task, job, &finalized, now)?;
                return Ok(finalized);
            }
            Decision::Gate(v) => v,
        };
        let finalized = match verdict {
            Gate::Pass | Gate::Rollback { .. } => {
                let (to, reason, retry, log) = match verdict {
                    Gate::Rollback { reason, log } => {
                        (Stage::Development, reason.clone(), true, log.clone())
                    }
                    _ => (stage.next(), format!("{stage} gate passed"), false, None),
                };
                let cause = if retry {
                    pipeline::TransitionCause::GateSentBack
                } else {
                    pipeline::TransitionCause::GatePassed
                };
                let mut m = Move::new(task, to, actor, cause, reason).finishing(job.id, job.epoch);
                m.developer_retry = retry;
                m.log_path = log;
                match pipeline::apply(tx, policy, &m, now)? {
                    Moved::Applied { escalated, .. } => Finalized::Advanced {
                        from: stage,
                        to,
                        escalated,
                    },
                    Moved::Lost => Finalized::Lost,
                }
            }
            Gate::Pending(reason) => {
                let done = jobs::finish(tx, job.id, Some(job.epoch), JobStatus::Done, None, now)?;
                if done == Changed::Applied {
                    Finalized::Waiting {
                        reason: reason.clone(),
                    }
                } else {
                    Finalized::Lost
                }
            }
            Gate::Fail(reason) => {
                jobs::retry_or_fail(tx, policy, &ctx.settings, job, reason, actor, now)?
            }
            Gate::FailFinal(reason) => {
                let why = format!(
                    "{} job {} failed (not retried): {reason}",
                    job.stage, job.id
                );
                jobs::fail_and_escalate(
                    tx,
                    policy,
                    job,
                    reason,
                    why,
                    pipeline::TransitionCause::JobFailed,
                    actor,
                    now,
                )?
            }
        };
        report.queue(tx, ctx, task, job, &finalized, now)?;
        Ok(finalized)
    })?;
    if clear_pause {
        info!(target: "worker", account = %account, "a clean run cleared the account's pause");
    }
    if let Finalized::Paused { .. } = &finalized {
        warn!(target: "worker", job = job.id, account = %account, outcome = %finalized, "dispatch paused");
    }
    Ok(finalized)
}
