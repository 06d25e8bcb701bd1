//! The pipeline's vocabulary: [`Stage`], [`Actor`] and [`JobStatus`].
//!
//! A leaf: every floor above speaks these types, and the database stores
//! them as their lowercase names (`deploy-staging`, `worker`, `queued`, …)
//! through `ToSql`/`FromSql`, so rows carry them typed and no stage or
//! status is compared as a string outside `db`. JSON output uses the same
//! names (`Serialize`).

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

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
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }
    };
}

/// A pipeline stage, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Analysis,
    Architecture,
    Development,
    Review,
    Testing,
    DeployStaging,
    Deploy,
    Done,
}

impl Stage {
    /// Every stage in pipeline order.
    pub const ALL: [Stage; 8] = [
        Stage::Analysis,
        Stage::Architecture,
        Stage::Development,
        Stage::Review,
        Stage::Testing,
        Stage::DeployStaging,
        Stage::Deploy,
        Stage::Done,
    ];

    /// The stage's name as stored and printed (`deploy-staging`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Analysis => "analysis",
            Stage::Architecture => "architecture",
            Stage::Development => "development",
            Stage::Review => "review",
            Stage::Testing => "testing",
            Stage::DeployStaging => "deploy-staging",
            Stage::Deploy => "deploy",
            Stage::Done => "done",
        }
    }

    /// The stage after this one (`Done` stays `Done`).
    pub fn next(self) -> Stage {
        let i = Stage::ALL.iter().position(|s| *s == self).unwrap_or(7);
        Stage::ALL[(i + 1).min(7)]
    }

    /// The role whose agent runs in this stage (`None` for `Done`).
    pub fn role(self) -> Option<&'static str> {
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
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for s in Stage::ALL {
            let back: Stage = c.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        let st: JobStatus = c.query_row("SELECT 'queued'", [], |r| r.get(0)).unwrap();
        assert_eq!(st, JobStatus::Queued);
        let a: Actor = c.query_row("SELECT 'reaper'", [], |r| r.get(0)).unwrap();
        assert_eq!(a, Actor::Reaper);
        assert_eq!(
            serde_json::to_string(&Stage::DeployStaging).unwrap(),
            "\"deploy-staging\""
        );
    }

    #[test]
    fn an_unknown_stored_name_is_an_error_naming_it() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let err = c
            .query_row("SELECT 'limbo'", [], |r| r.get::<_, Stage>(0))
            .unwrap_err();
        assert!(err.to_string().contains("limbo"), "{err}");
    }
}
