//! What the staging suite reports: its checks ([`CHECKS`]), each check's
//! outcome ([`Status`], [`Check`]), the verdict rule ([`verdict`]), the
//! waiver list, and the [`Report`] `orch staging-check` prints.

use serde::Serialize;

use crate::error::Error;

/// The checks, in report order: `(id, name, what a PASS proves)`.
pub const CHECKS: &[(&str, &str, &str)] = &[
    (
        "C1",
        "health",
        "GET /healthz answers 200 with the instance's version, git commit and schema version",
    ),
    (
        "C2",
        "provenance",
        "the instance's commit is --expect-revision (PASS when none is given)",
    ),
    (
        "C3",
        "schema",
        "the database is at the schema version the instance's binary expects",
    ),
    (
        "C4",
        "config",
        "the staging config loads, the sandbox project exists and receives Plane deliveries, \
         ORCH_PLANE_WEBHOOK_SECRET is set",
    ),
    (
        "C5",
        "unsigned",
        "an unsigned delivery (Plane and Gitea) is answered 401 and not stored",
    ),
    (
        "C6",
        "mis-signed",
        "a delivery signed with another secret (Plane and Gitea) is answered 401 and not stored",
    ),
    (
        "C7",
        "oversize",
        "a signed delivery over 1 MiB is answered 413 and not stored",
    ),
    (
        "C8",
        "redelivery",
        "a signed delivery is stored (202); the same delivery again, and Plane's retry with a \
         new id, are answered 200 duplicate and stored once",
    ),
    (
        "C9a",
        "end to end",
        "a signed synthetic In Progress delivery for the sandbox project (state id resolved \
         from the tracker) is accepted and creates the task within the timeout",
    ),
    (
        "C9b",
        "task set-up",
        "the synthetic task has its branch (on the forge, or in its worktree before the first \
         push) and its analyst job",
    ),
    (
        "C10",
        "cleanup",
        "the synthetic task is cancelled through the transition rule (actor human, reason \
         staging-check) before any agent ran on it",
    ),
];

/// The reason C10 records on the synthetic task's cancellation.
pub const CANCEL_REASON: &str = "staging-check";

/// A check's (or the verdict's) outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The instance does what the check asks.
    Pass,
    /// The code or its configuration is wrong.
    Fail,
    /// The environment failed, not the code: a connection refused or
    /// reset, a timeout, the tracker or forge unreachable or answering 5xx.
    Infra,
}

impl Status {
    /// `PASS`, `FAIL` or `INFRA`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Infra => "INFRA",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `C1` … `C10` (with `C9a`, `C9b`).
    pub id: &'static str,
    /// Short name (`health`, `provenance`, …).
    pub name: &'static str,
    pub status: Status,
    /// Why, in one line an operator can act on.
    pub reason: String,
    /// Wall time of the check, in milliseconds.
    pub duration_ms: u64,
    /// The check is INFRA and its id is in the waiver list.
    pub waived: bool,
}

/// A check a dry run did not run: what it would do.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub id: &'static str,
    pub name: &'static str,
    /// The check's contract ([`CHECKS`]), and for C9a the In Progress
    /// state it would send, as resolved now.
    pub would: String,
}

/// The suite's result: the machine verdict `orch staging-check --json`
/// prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Status,
    /// The shim URL checked.
    pub url: String,
    /// The sandbox project, when known.
    pub project: Option<String>,
    /// The revision validated: the git commit the instance reported
    /// (`None` when `/healthz` did not say).
    pub revision: Option<String>,
    /// The instance's version, from `/healthz`.
    pub version: Option<String>,
    /// `--expect-revision`, when given.
    pub expected_revision: Option<String>,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// Unix milliseconds.
    pub finished_at_ms: i64,
    /// The waiver list as applied.
    pub waived: Vec<String>,
    /// The synthetic task the suite created (and cancelled), if any.
    pub task_id: Option<i64>,
    /// Every check run, in [`CHECKS`] order (C1–C4 in a dry run).
    pub checks: Vec<Check>,
    /// A dry run: the verdict is over C1–C4 only.
    pub dry_run: bool,
    /// What a dry run left out: C5–C10, in order.
    pub planned: Vec<Planned>,
}

impl Report {
    /// The checks that FAILed.
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }

    /// The checks that are INFRA and not waived.
    pub fn unwaived_infra(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Infra && !c.waived)
            .collect()
    }

    /// One line per check and the verdict, for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "orch staging-check {} (project {})\n",
            self.url,
            self.project.as_deref().unwrap_or("?")
        );
        for c in &self.checks {
            let status = if c.waived {
                "INFRA (waived)".to_string()
            } else {
                c.status.to_string()
            };
            out += &format!(
                "  {:<4} {:<12} {:<15} {:>6} ms  {}\n",
                c.id, c.name, status, c.duration_ms, c.reason
            );
        }
        for p in &self.planned {
            out += &format!("  {:<4} {:<12} would: {}\n", p.id, p.name, p.would);
        }
        out += &format!(
            "verdict{}: {} (revision {})\n",
            if self.dry_run { " of C1–C4" } else { "" },
            self.verdict,
            self.revision.as_deref().unwrap_or("unknown")
        );
        out
    }

    /// The failed checks as one feedback text: `C8 redelivery: <reason>`
    /// per line (the deploy-staging gate's rollback reason).
    pub fn failure_summary(&self) -> String {
        self.failed()
            .iter()
            .map(|c| format!("{} {}: {}", c.id, c.name, c.reason))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The verdict over `checks`: FAIL when any check FAILed; PASS when every
/// INFRA check is waived; INFRA otherwise.
pub fn verdict(checks: &[Check]) -> Status {
    if checks.iter().any(|c| c.status == Status::Fail) {
        Status::Fail
    } else if checks.iter().all(|c| c.status != Status::Infra || c.waived) {
        Status::Pass
    } else {
        Status::Infra
    }
}

/// Normalises a waiver list (`--waive`, `ORCH_STAGING_WAIVE`,
/// `[projects.staging].waive`): check ids, case-insensitive (`c9a` →
/// `C9a`), blanks ignored, duplicates dropped.
///
/// Errors: [`Error::Usage`] naming an id that is not a check.
pub fn parse_waivers<S: AsRef<str>>(list: &[S]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for item in list.iter().flat_map(|s| s.as_ref().split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((id, _, _)) = CHECKS
            .iter()
            .find(|(id, _, _)| id.eq_ignore_ascii_case(item))
        else {
            let ids: Vec<&str> = CHECKS.iter().map(|(id, _, _)| *id).collect();
            return Err(Error::Usage(format!(
                "cannot waive {item:?}: not a check; the checks are {}",
                ids.join(", ")
            )));
        };
        if !out.iter().any(|w| w == id) {
            out.push(id.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &'static str, status: Status, waived: bool) -> Check {
        Check {
            id,
            name: "x",
            status,
            reason: String::new(),
            duration_ms: 0,
            waived,
        }
    }

    #[test]
    fn the_verdict_rule() {
        use Status::*;
        assert_eq!(verdict(&[check("C1", Pass, false)]), Pass);
        assert_eq!(
            verdict(&[check("C1", Pass, false), check("C2", Infra, false)]),
            Infra
        );
        assert_eq!(
            verdict(&[check("C1", Infra, true), check("C2", Pass, false)]),
            Pass
        );
        assert_eq!(
            verdict(&[check("C1", Infra, false), check("C2", Fail, false)]),
            Fail,
            "a FAIL wins over INFRA"
        );
        assert_eq!(
            verdict(&[check("C1", Fail, true)]),
            Fail,
            "a FAIL cannot be waived"
        );
    }

    #[test]
    fn waivers_name_checks() {
        let w = parse_waivers(&["c1, C9A", "c1", ""]).unwrap();
        assert_eq!(w, ["C1", "C9a"]);
        let e = parse_waivers(&["C11"]).unwrap_err();
        assert!(e.to_string().contains("C11"), "{e}");
        assert!(matches!(e, Error::Usage(_)));
    }
}
