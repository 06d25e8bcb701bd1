//! `orch staging-check`: the staging suite (DESIGN §8), which replaces the
//! old `staging_check.py`.
//!
//! A numbered suite of checks against a *staging instance* of orch: its
//! shim URL and — read-only — its database and config for what HTTP does
//! not show. The old script's incidents are the requirements: it
//! hard-coded a tracker state id (the instance rightly answered "no
//! pipeline action" and the suite reported a false FAILED), it failed the
//! verdict on infrastructure faults like on real bugs, and it validated a
//! staging image built from a stale commit. So here every tracker state id
//! is resolved through [`Tracker`], every check tells the environment
//! (INFRA) from the code (FAIL), and the verdict names the exact revision
//! it validated.
//!
//! The checks ([`CHECKS`]): C1 health (`/healthz`: version, commit,
//! schema), C2 provenance (that commit is the expected revision), C3 schema
//! (the database is at the schema the instance's binary expects), C4
//! config (loads; the sandbox project exists and can receive Plane
//! deliveries; the webhook secret is set), C5–C8 the shim's contract
//! (unsigned and mis-signed 401, oversize 413, a redelivery 200 duplicate,
//! nothing stored for the rejected ones), C9a a signed synthetic *In
//! Progress* delivery for the sandbox project creates the task within the
//! timeout, C9b the task has its branch and its analyst job, C10 the task
//! is cancelled through the transition rule (actor `human`, reason
//! `staging-check`) the moment it appears, so staging runs no agent on it.
//!
//! Deliveries are signed with the secrets of the checker's own environment
//! (`ORCH_PLANE_WEBHOOK_SECRET`, `ORCH_GITEA_WEBHOOK_SECRET`): a secret
//! that differs from the instance's is a FAIL, not a crash. The only write
//! to the instance's database is C10's cancellation; the only deliveries
//! the instance stores are C8's harmless redelivery probe (Plane
//! `issue`/`priority`, "no pipeline action") and C9a's synthetic work item.
//!
//! Verdict ([`verdict`]): PASS when no check FAILed and every INFRA check
//! is waived; FAIL when any check FAILed; INFRA otherwise.
//!
//! Files: `report` (the checks, their outcomes, the verdict rule, the
//! report), `suite` (running the checks against an instance; its
//! `instance` reaches the shim and the database), `gate` (the staging
//! check of a task awaiting it in the merge line: the line's first step).
//!
//! [`Tracker`]: crate::tracker::Tracker

mod gate;
mod report;
mod suite;

pub use gate::check_awaiting;
pub use report::{parse_waivers, verdict, Check, Planned, Report, Status, CANCEL_REASON, CHECKS};
pub use suite::{run, Target};
