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

//!
//! Files: `steps` (steps 2–4: catch up, test, merge), `job` (the gate a
//! finishing deploy-staging job runs, and its deferral), `by_hand`
//! (`orch merge-gate --task ID`), `lease` (the merge lease as the gate
//! names, reports and gives it back).

mod by_hand;
mod job;
mod lease;
mod steps;

pub use by_hand::{release_by_hand, run_by_hand, ByHand, Report};
pub use job::{defer_job, gate_job, JobGate};
pub use lease::lease_name;
pub use steps::merge_into_default;
