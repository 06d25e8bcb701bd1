//! The pipeline's vocabulary: [`Stage`], [`Actor`], [`TransitionCause`]
//! and [`JobStatus`].
//!
//! [`Stage::ALL`] is the one list of stages: their order (`<`, sorting,
//! [`Stage::next`]), names, the roles agents run as ([`ROLES`]) and every
//! list of stages elsewhere (settings keys, help texts, status order)
//! derive from it. Adding a stage is one line in `stages!` and one arm of
//! [`Stage::role`] here, then its gate in `pipeline::gate`.
//!
//! A leaf: every floor above speaks these types, and the database stores
//! them as their lowercase names (`deploy-staging`, `worker`, `queued`, …)
//! through `ToSql`/`FromSql`, so rows carry them typed and no stage or
//! status is compared as a string outside `db`. JSON output uses the same
//! names (`Serialize`).

use std::fmt;
use std::str::FromStr;

use crate::sql::{FromSql, ToSql, ValueRef};

/// Implements `Display`, `Serialize`, `ToSql` and `FromSql` for a type
/// with `as_str` and `FromStr<Err = String>`: stored and printed as its
/// name; an unknown stored name is a `FromSqlError` naming it.
macro_rules! named {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl ToSql for $t {
            fn to_sql(&self) -> Result<ValueRef<'_>, String> {
                Ok(ValueRef::Text(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn from_sql(v: ValueRef<'_>) -> Result<Self, String> {
                v.as_str()?.parse()
            }
        }
    };
}

/// Declares [`Stage`] from one list, in pipeline order: the variants, their
/// names, and [`Stage::ALL`]. The derived order (`<`, `>=`, sorting) is the
/// declaration order, so it is `ALL`'s order by construction; every list
/// and order of stages elsewhere derives from `ALL`.
macro_rules! stages {
    ($($variant:ident => $name:literal,)+) => {
        /// A pipeline stage; ordered as the pipeline runs ([`Stage::ALL`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Stage {
            $($variant,)+
        }

        impl Stage {
            /// Every stage in pipeline order: the one list of stages.
            pub const ALL: [Stage; [$($name),+].len()] = [$(Stage::$variant),+];

            /// The stage's name as stored and printed (`deploy-staging`, …).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Stage::$variant => $name,)+
                }
            }
        }
    };
}

stages! {
    Analysis => "analysis",
    Architecture => "architecture",
    Development => "development",
    Review => "review",
    Testing => "testing",
    DeployStaging => "deploy-staging",
    Deploy => "deploy",
    Done => "done",
}

impl Stage {
    /// The last stage (`Done`): nothing runs there and nothing follows.
    pub const LAST: Stage = Stage::ALL[Stage::ALL.len() - 1];

    /// The stage's place in [`Stage::ALL`], from 0.
    pub const fn position(self) -> usize {
        self as usize
    }

    /// The stage after this one (the last stays the last).
    pub fn next(self) -> Stage {
        Stage::ALL
            .get(self.position() + 1)
            .copied()
            .unwrap_or(Stage::LAST)
    }

    /// The role whose agent runs in this stage (`None` for `Done`).
    pub const fn role(self) -> Option<&'static str> {
        Some(match self {
            Stage::Analysis => "analyst",
            Stage::Architecture => "architect",
            Stage::Development => "developer",
            Stage::Review => "reviewer",
            Stage::Testing => "tester",
            Stage::DeployStaging | Stage::Deploy => "deployer",
            Stage::Done => return None,
        })
    }
}

/// The roles agents run as: those of [`Stage::ALL`], each once, in
/// pipeline order (`analyst`, `architect`, `developer`, `reviewer`,
/// `tester`, `deployer`). Derived at compile time, so a stage with a new
/// role adds the role here.
pub const ROLES: [&str; ROLE_TABLE.1] = {
    let mut out = [""; ROLE_TABLE.1];
    let mut i = 0;
    while i < out.len() {
        out[i] = ROLE_TABLE.0[i];
        i += 1;
    }
    out
};

/// The distinct roles of [`Stage::ALL`] in order (the rest of the array
/// empty), and how many there are.
const ROLE_TABLE: ([&str; Stage::ALL.len()], usize) = {
    let mut roles = [""; Stage::ALL.len()];
    let mut n = 0;
    let mut i = 0;
    while i < Stage::ALL.len() {
        if let Some(role) = Stage::ALL[i].role() {
            let mut seen = false;
            let mut j = 0;
            while j < n {
                seen |= same(roles[j], role);
                j += 1;
            }
            if !seen {
                roles[n] = role;
                n += 1;
            }
        }
        i += 1;
    }
    (roles, n)
};

/// `a == b`, at compile time.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Stage, String> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown stage {s:?}; expected one of {}",
                    Stage::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

named!(Stage);

/// Who performs a transition (the `transitions.actor` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Worker,
    Reaper,
    Reconciler,
    Webhook,
    Human,
}

impl Actor {
    /// Every actor.
    pub const ALL: [Actor; 5] = [
        Actor::Worker,
        Actor::Reaper,
        Actor::Reconciler,
        Actor::Webhook,
        Actor::Human,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Worker => "worker",
            Actor::Reaper => "reaper",
            Actor::Reconciler => "reconciler",
            Actor::Webhook => "webhook",
            Actor::Human => "human",
        }
    }
}

impl FromStr for Actor {
    type Err = String;
    fn from_str(s: &str) -> Result<Actor, String> {
        Actor::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown actor {s:?}"))
    }
}

named!(Actor);

/// What made a transition (the `transitions.cause` column, migration 21):
/// with the [`Actor`], the typed answer to "why did this task move" that
/// `orch why` and the developer's feedback read. The `reason` stored beside
/// it is text for people; no code decides anything from that text.
///
/// Stored and printed as the kebab-case name given on each variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionCause {
    /// `work-item-started`: a work item entered In Progress (webhook,
    /// reconcile, `orch issue add`): the task was created at analysis.
    WorkItemStarted,
    /// `gate-passed`: the stage's gate passed (a finishing job, a CI
    /// webhook, reconcile): on to the next stage.
    GatePassed,
    /// `gate-sent-back`: the gate sent the work back to development (red
    /// CI, changes requested, a red merge re-test, a merge conflict): a
    /// developer retry, escalating at the retry cap.
    GateSentBack,
    /// `restage`: the merge gate reruns deploy-staging (main moved under
    /// the tested head).
    Restage,
    /// `job-failed`: the stage's job failed for good (attempt cap, an error
    /// no retry can fix, the merge gate's defer cap, a staging check that
    /// could not run): the task is escalated.
    JobFailed,
    /// `finalize-failed`: finishing the job failed for good or too often
    /// (`ORCH_FINALIZE_MAX_ATTEMPTS`): the task is escalated.
    FinalizeFailed,
    /// `tracker-approved`: the tracker's Approved state approved the
    /// analysis.
    TrackerApproved,
    /// `tracker-rejected`: the tracker's Rejected state reran the analysis.
    TrackerRejected,
    /// `approved-by-hand`: `orch task approve`.
    ApprovedByHand,
    /// `rejected-by-hand`: `orch task reject`.
    RejectedByHand,
    /// `advanced-by-hand`: `orch task advance`.
    AdvancedByHand,
    /// `rolled-back-by-hand`: `orch task rollback`.
    RolledBackByHand,
    /// `retried-by-hand`: `orch task retry`.
    RetriedByHand,
    /// `cancelled-by-hand`: `orch task cancel` (escalated, no next job).
    CancelledByHand,
    /// `unblocked-by-hand`: `orch task unblock`.
    UnblockedByHand,
    /// `merged-by-hand`: the merge gate run by hand (`orch merge-gate
    /// --task`) merged the task.
    MergedByHand,
    /// `other`: a row from before migration 21 whose reason text and shape
    /// said nothing recognisable.
    Other,
}

impl TransitionCause {
    /// Every cause.
    pub const ALL: [TransitionCause; 17] = [
        TransitionCause::WorkItemStarted,
        TransitionCause::GatePassed,
        TransitionCause::GateSentBack,
        TransitionCause::Restage,
        TransitionCause::JobFailed,
        TransitionCause::FinalizeFailed,
        TransitionCause::TrackerApproved,
        TransitionCause::TrackerRejected,
        TransitionCause::ApprovedByHand,
        TransitionCause::RejectedByHand,
        TransitionCause::AdvancedByHand,
        TransitionCause::RolledBackByHand,
        TransitionCause::RetriedByHand,
        TransitionCause::CancelledByHand,
        TransitionCause::UnblockedByHand,
        TransitionCause::MergedByHand,
        TransitionCause::Other,
    ];

    /// The stored name (`gate-passed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionCause::WorkItemStarted => "work-item-started",
            TransitionCause::GatePassed => "gate-passed",
            TransitionCause::GateSentBack => "gate-sent-back",
            TransitionCause::Restage => "restage",
            TransitionCause::JobFailed => "job-failed",
            TransitionCause::FinalizeFailed => "finalize-failed",
            TransitionCause::TrackerApproved => "tracker-approved",
            TransitionCause::TrackerRejected => "tracker-rejected",
            TransitionCause::ApprovedByHand => "approved-by-hand",
            TransitionCause::RejectedByHand => "rejected-by-hand",
            TransitionCause::AdvancedByHand => "advanced-by-hand",
            TransitionCause::RolledBackByHand => "rolled-back-by-hand",
            TransitionCause::RetriedByHand => "retried-by-hand",
            TransitionCause::CancelledByHand => "cancelled-by-hand",
            TransitionCause::UnblockedByHand => "unblocked-by-hand",
            TransitionCause::MergedByHand => "merged-by-hand",
            TransitionCause::Other => "other",
        }
    }

    /// The `orch` command a human runs to make a move with this cause;
    /// `None` for the causes no human command makes.
    pub fn command(self) -> Option<&'static str> {
        Some(match self {
            TransitionCause::ApprovedByHand => "orch task approve",
            TransitionCause::RejectedByHand => "orch task reject",
            TransitionCause::AdvancedByHand => "orch task advance",
            TransitionCause::RolledBackByHand => "orch task rollback",
            TransitionCause::RetriedByHand => "orch task retry",
            TransitionCause::CancelledByHand => "orch task cancel",
            TransitionCause::UnblockedByHand => "orch task unblock",
            TransitionCause::MergedByHand => "orch merge-gate",
            _ => return None,
        })
    }
}

impl FromStr for TransitionCause {
    type Err = String;
    fn from_str(s: &str) -> Result<TransitionCause, String> {
        TransitionCause::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown transition cause {s:?}"))
    }
}

named!(TransitionCause);

/// The status of a job (the `jobs.status` column). Its legal changes are
/// the edges of `pipeline::job`. The default is `Queued`, the status
/// a job is enqueued with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JobStatus {
    #[default]
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Done,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The stored name (`queued`, `running`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Queued or running: the job still holds its task's stage.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<JobStatus, String> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job status {s:?}"))
    }
}

named!(JobStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_sqlite_and_json() {
        let c = crate::sql::Conn::from(rusqlite::Connection::open_in_memory().unwrap());
        for s in Stage::ALL {
            let back: Stage = c.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        let st: JobStatus = c.query_row("SELECT 'queued'", [], |r| r.get(0)).unwrap();
        assert_eq!(st, JobStatus::Queued);
        let a: Actor = c.query_row("SELECT 'reaper'", [], |r| r.get(0)).unwrap();
        assert_eq!(a, Actor::Reaper);
        for cause in TransitionCause::ALL {
            let back: TransitionCause = c.query_row("SELECT ?1", [cause], |r| r.get(0)).unwrap();
            assert_eq!(back, cause);
        }
        assert_eq!(
            serde_json::to_string(&Stage::DeployStaging).unwrap(),
            "\"deploy-staging\""
        );
    }

    #[test]
    fn stage_all_is_the_one_order_of_stages() {
        // next() walks ALL in order and stops at the last.
        let mut walked = vec![Stage::ALL[0]];
        while *walked.last().unwrap() != Stage::LAST {
            walked.push(walked.last().unwrap().next());
            assert!(walked.len() <= Stage::ALL.len(), "{walked:?}");
        }
        assert_eq!(walked, Stage::ALL);
        assert_eq!(Stage::LAST.next(), Stage::LAST);
        assert_eq!(Stage::LAST, Stage::Done);
        // The order (<, sorting) and the position are ALL's.
        for (i, s) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(s.position(), i, "{s}");
            assert!(Stage::ALL[..i].iter().all(|earlier| *earlier < s), "{s}");
        }
        let mut sorted = Stage::ALL;
        sorted.reverse();
        sorted.sort();
        assert_eq!(sorted, Stage::ALL);
        // Each name parses back to its stage, and names are distinct.
        for s in Stage::ALL {
            assert_eq!(s.to_string().parse::<Stage>(), Ok(s));
        }
        let err = "limbo".parse::<Stage>().unwrap_err();
        assert!(
            err.ends_with("expected one of analysis, architecture, development, review, testing, deploy-staging, deploy, done"),
            "{err}"
        );
        // Only the last stage runs no agent.
        for s in Stage::ALL {
            assert_eq!(s.role().is_none(), s == Stage::LAST, "{s}");
        }
    }

    #[test]
    fn the_roles_are_the_stages_roles_each_once_in_order() {
        assert_eq!(
            ROLES,
            [
                "analyst",
                "architect",
                "developer",
                "reviewer",
                "tester",
                "deployer"
            ]
        );
        let mut want: Vec<&str> = Vec::new();
        for role in Stage::ALL.into_iter().filter_map(Stage::role) {
            if !want.contains(&role) {
                want.push(role);
            }
        }
        assert_eq!(ROLES.to_vec(), want);
        assert!(!same("deployer", "deploy") && same("tester", "tester"));
    }

    #[test]
    fn an_unknown_stored_name_is_an_error_naming_it() {
        let c = crate::sql::Conn::from(rusqlite::Connection::open_in_memory().unwrap());
        let err = c
            .query_row("SELECT 'limbo'", [], |r| r.get::<_, Stage>(0))
            .unwrap_err();
        assert!(err.to_string().contains("limbo"), "{err}");
    }
}
