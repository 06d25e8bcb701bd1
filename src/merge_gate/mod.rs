//! The merge gate: the deterministic (no LLM) sub-gate on deploy-staging →
//! deploy (DESIGN §7). Two branches that are each green can still break
//! main together; this gate makes that impossible and serialises merges.
//!
//! Two ways in:
//!
//! - **the merge line** ([`run_line`], `orch merge-gate`, `orch tick`, its
//!   own timer): a deployer PASS at deploy-staging finishes its job with
//!   the task *ready to merge* (`worker::finalize` writes the `merge_line`
//!   row with the job's finish). The line takes the repo's merge lease and
//!   lands ready tasks in batches — `main + T1 … Tk` built, tested once,
//!   main fast-forwarded to the tested tip, a red batch bisected; see
//!   `line` for the steps and the crash policy;
//! - **by hand** ([`run_by_hand`], `orch merge-gate --task ID`): one task,
//!   as a human who vouches for staging: take the lease (holder
//!   `task:<id>`) with the stage's queued job, catch the branch up with
//!   main (rebase, push with `--force-with-lease=<branch>:<sha origin
//!   had>`), re-test, fast-forward main, move to deploy.
//!
//! Only task branches are ever pushed (`git::validate_task_branch` refuses
//! `main`, `refs/heads/main`, `HEAD:main`, … before anything happens).
//! Test results are stored as CI status `orch/test` of the sha, one log per
//! run under `<state>/logs/merge-task<id>-<sha>.log`; the line never reuses
//! a stored pass.
//!
//! The lease follows the task through the transition rule
//! ([`crate::pipeline::lease::follow_transition`], called by
//! `pipeline::apply`): deploy-staging → deploy hands it to the deploy job
//! (the line passes its lease to the last task it landed first), so merges
//! *and deploys* of one repo are serialised; any other move releases it. A
//! Gitea PR-merged delivery releases it from its holder
//! ([`crate::pipeline::lease::release_for_task`]), and `orch reap`
//! releases a stale one (expired, or its job no longer queued or running).
//! Every release is holder-aware.
//!
//! Where `[projects.staging]` is set, the deployer's PASS leaves the task
//! *awaiting the staging check* of the head it passed; the line's first
//! step ([`crate::staging::check_awaiting`]) validates that revision
//! before the task becomes ready.
//!
//! Files: `line` (the merge line), `steps` (catch up, test, merge: shared
//! by the line and the manual run), `by_hand`
//! (`orch merge-gate --task ID`), `lease` (the merge lease as the gate
//! names, reports and gives it back).

mod by_hand;
mod lease;
mod line;
mod steps;

pub use by_hand::{release_by_hand, run_by_hand, ByHand, Report};
pub use lease::lease_name;
pub use line::{
    awaiting_staging, batch_size, line_holder, run_line, BatchReport, LineReport, READY,
};
pub use steps::merge_into_default;
