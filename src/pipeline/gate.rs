//! Quality gates: the read-only decision whether a task may leave its
//! stage (DESIGN §4).
//!
//! [`decide`] is a pure function of [`Facts`]; [`gather`] reads those facts
//! from the database and the task's worktree without changing anything.
//! The worker, the reaper (Tier-2), the reconciler and webhook handlers all
//! call the same two functions, so a stage is judged the same way whoever
//! looks.

use std::path::{Path, PathBuf};

use crate::config::ProjectConfig;
use crate::db::{Db, Task};
use crate::pipeline::{JobStatus, Stage};

/// A gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Leave the stage forward.
    Pass,
    /// Return to development (counts a developer retry), with the reason;
    /// `log` is the log of orch's own test run that failed (red local CI, a
    /// red merge-gate re-test), recorded with the move for the next
    /// developer's feedback. It never comes from text an agent wrote.
    Rollback {
        reason: String,
        log: Option<PathBuf>,
    },
    /// The stage's run failed (agent error, missing or wrong verdict,
    /// missing artifact, no change): run it again or escalate.
    Fail(String),
    /// The stage's run failed in a way a retry cannot fix (a model-API
    /// 400/401/403, an invalid configuration, a run that did nothing
    /// because its writes were denied): fail the job at once and escalate.
    FailFinal(String),
    /// Not decidable yet (CI pending, human approval outstanding, job still
    /// running).
    Pending(String),
}

/// `pass`, `rollback: …`, `fail: …`, `pending: …` (for logs).
impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gate::Pass => f.write_str("pass"),
            Gate::Rollback { reason, .. } => write!(f, "rollback: {reason}"),
            Gate::Fail(why) => write!(f, "fail: {why}"),
            Gate::FailFinal(why) => write!(f, "fail for good: {why}"),
            Gate::Pending(why) => write!(f, "pending: {why}"),
        }
    }
}

/// What the latest job of the task's current stage and version did.
#[derive(Debug, Clone, Default)]
pub struct JobFacts {
    /// `queued|running|done|failed|cancelled`.
    pub status: JobStatus,
    /// The agent's exit code, once recorded.
    pub exit_code: Option<i64>,
    /// Whether the agent's result said success (None: usage unknown).
    pub run_success: Option<bool>,
    /// The verdict the agent wrote: `(verdict, summary)`.
    pub verdict: Option<(String, String)>,
    /// Why the verdict file could not be used, if it was unreadable.
    pub verdict_error: Option<String>,
    /// Why the run failed (timeout, API error, crash), when orch judged it
    /// ([`crate::agent::run_error`]); runs recorded before that have none.
    pub run_error: Option<crate::agent::RunError>,
    /// The run's permission denials, named (`Write docs/x.md`).
    pub denials: Vec<String>,
    /// The branch head when the run started (before orch's own catch-up
    /// merge), for architecture and development: an unchanged head after
    /// the run means the run did nothing.
    pub base_sha: Option<String>,
}

impl Gate {
    /// A return to development for `reason`, with no test log.
    pub fn rollback(reason: impl Into<String>) -> Gate {
        Gate::Rollback {
            reason: reason.into(),
            log: None,
        }
    }
}

/// Everything a gate looks at.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The stage's job at the task's current version, if any.
    pub job: Option<JobFacts>,
    /// The project advances analysis without a human.
    pub auto_approve_analysis: bool,
    /// Architecture: the design folder exists at the branch head.
    pub design_exists: bool,
    /// Development: the branch head and its combined CI state
    /// (`success|failure|pending`, None when no status arrived yet).
    pub ci: Option<(String, Option<String>)>,
    /// Development: the log of orch's own test run on the branch head
    /// (local CI), as recorded in `ci_statuses` when orch ran the tests;
    /// `None` when a forge ran them.
    pub ci_log: Option<PathBuf>,
    /// Architecture and development: the branch head, when the worktree
    /// exists (compared with the run's [`JobFacts::base_sha`]).
    pub head: Option<String>,
}

/// The verdict words a stage accepts: `(pass, back)`; `back` returns the
/// task to development (review, testing, deploy-staging) or fails the run
/// (deploy). `None` for stages whose gate reads no verdict.
pub fn verdict_words(stage: Stage) -> Option<(&'static str, &'static str)> {
    match stage {
        Stage::Review => Some(("APPROVE", "REQUEST_CHANGES")),
        Stage::Testing | Stage::DeployStaging => Some(("PASS", "FAIL")),
        Stage::Deploy => Some(("DEPLOYED", "FAILED")),
        _ => None,
    }
}

/// `"VERDICT: summary"`, or just `"VERDICT"` when the summary is empty.
pub fn with_reason(head: &str, reason: &str) -> String {
    if reason.trim().is_empty() {
        head.to_string()
    } else {
        format!("{head}: {}", reason.trim())
    }
}

/// `reason`, followed by the run's permission denials when it had any.
/// A run that did not do its work because its writes were denied: the
/// agent's permissions are its configuration (`--allowedTools`, the
/// permission mode), the same on every attempt, so a retry is denied again
/// — it fails at once, as a model-API 400 does, naming the denials.
fn denied(reason: String, denials: &[String]) -> Gate {
    Gate::FailFinal(format!(
        "{}; the agent's permissions deny the same on a retry",
        with_denials(reason, denials)
    ))
}

fn with_denials(reason: String, denials: &[String]) -> String {
    if denials.is_empty() {
        reason
    } else {
        format!(
            "{reason}; {} permission denial(s): {}",
            denials.len(),
            denials.join(", ")
        )
    }
}

/// The design artifact folder of a task, relative to the repository root.
pub fn design_dir(task_id: i64) -> String {
    format!("docs/work-items/{task_id}")
}

/// Decides whether a task at `stage` may leave it.
pub fn decide(stage: Stage, f: &Facts) -> Gate {
    if stage == Stage::Done {
        return Gate::Pending("done".into());
    }
    let job = match &f.job {
        None => return Gate::Pending(format!("no {stage} job at this version")),
        Some(j) => j,
    };
    match job.status {
        JobStatus::Queued => return Gate::Pending("job queued".into()),
        JobStatus::Running if job.exit_code.is_none() => {
            return Gate::Pending("agent running".into())
        }
        JobStatus::Cancelled => return Gate::Pending("job cancelled".into()),
        JobStatus::Failed => return Gate::Fail("job failed".into()),
        _ => {}
    }
    let denials = &job.denials;
    if let Some(e) = &job.run_error {
        let reason = with_denials(e.reason.clone(), denials);
        return if e.retryable {
            Gate::Fail(reason)
        } else {
            Gate::FailFinal(reason)
        };
    }
    match (job.exit_code, job.run_success) {
        (Some(c), _) if c != 0 => return Gate::Fail(format!("agent exited with code {c}")),
        (_, Some(false)) => return Gate::Fail("agent reported an error result".into()),
        _ => {}
    }
    let verdict = || -> Result<(&str, &str), Gate> {
        if let Some(e) = &job.verdict_error {
            return Err(Gate::Fail(with_denials(
                format!("unreadable verdict: {e}"),
                denials,
            )));
        }
        job.verdict
            .as_ref()
            .map(|(v, s)| (v.as_str(), s.as_str()))
            .ok_or_else(|| {
                if denials.is_empty() {
                    Gate::Fail("the agent wrote no verdict".to_string())
                } else {
                    denied(
                        "the agent wrote no verdict (a write was denied)".to_string(),
                        denials,
                    )
                }
            })
    };
    let (pass, back) = verdict_words(stage).unwrap_or(("", ""));
    let judged = || match verdict() {
        Err(g) => g,
        Ok((v, _)) if v == pass => Gate::Pass,
        Ok((v, s)) if v == back => Gate::rollback(with_reason(v, s)),
        Ok((v, _)) => Gate::Fail(format!(
            "verdict {v} is not valid for {stage} (expected {pass} or {back})"
        )),
    };
    let unchanged = matches!(stage, Stage::Architecture | Stage::Development)
        && job.base_sha.is_some()
        && job.base_sha == f.head;
    if unchanged {
        let sha = f.head.as_deref().unwrap_or_default();
        let why = format!(
            "no change: the run left the branch at {}",
            &sha[..sha.len().min(12)]
        );
        return if denials.is_empty() {
            Gate::Fail(why)
        } else {
            denied(why, denials)
        };
    }
    match stage {
        Stage::Analysis if f.auto_approve_analysis => Gate::Pass,
        Stage::Analysis => Gate::Pending("awaiting human approval of the analysis".into()),
        Stage::Architecture if f.design_exists => Gate::Pass,
        Stage::Architecture => Gate::Fail(with_denials(
            "no design folder docs/work-items/<task id>/ at the branch head".to_string(),
            denials,
        )),
        Stage::Development => match &f.ci {
            None => Gate::Pending("branch head unknown".into()),
            Some((sha, state)) => match state.as_deref() {
                Some("success") => Gate::Pass,
                Some("failure") => Gate::Rollback {
                    reason: format!("CI failed on {sha}"),
                    log: f.ci_log.clone(),
                },
                Some(other) => Gate::Pending(format!("CI {other} on {sha}")),
                None => Gate::Pending(format!("no CI status for {sha} yet")),
            },
        },
        Stage::Review | Stage::Testing | Stage::DeployStaging => judged(),
        Stage::Deploy => match verdict() {
            Err(g) => g,
            Ok((v, _)) if v == pass => Gate::Pass,
            Ok((v, s)) => Gate::Fail(with_reason(v, s)),
        },
        Stage::Done => unreachable!("handled above"),
    }
}

/// Reads the facts for `task`'s current stage. Read-only: it runs `git`
/// only to read the worktree's HEAD.
pub fn gather(
    db: &Db,
    project: &ProjectConfig,
    repo: &crate::git::Repo,
    task: &Task,
) -> anyhow::Result<Facts> {
    let stage = task.stage;
    let job = db.latest_job_at(task, task.stage)?;
    let job = match job {
        None => None,
        Some(j) => {
            let run = db.last_run_for_job(j.id)?;
            let judged = db.run_judgement(j.id)?;
            let verdict = db.verdict_for_job(j.id)?;
            let (verdict, verdict_error) = match verdict {
                Some((v, s)) if v == "UNREADABLE" => (None, Some(s)),
                other => (other, None),
            };
            Some(JobFacts {
                status: j.status,
                exit_code: j.exit_code,
                run_success: run.and_then(|r| r.1),
                verdict,
                verdict_error,
                run_error: judged.as_ref().and_then(|r| r.error.clone()),
                denials: judged
                    .as_ref()
                    .map(|r| crate::agent::name_denials(&r.denials))
                    .unwrap_or_default(),
                base_sha: judged.and_then(|r| r.base_sha),
            })
        }
    };
    let worktree = Path::new(&task.worktree);
    let mut facts = Facts {
        job,
        auto_approve_analysis: project.auto_approve_analysis,
        ..Facts::default()
    };
    match stage {
        Stage::Architecture if worktree.exists() => {
            facts.design_exists = repo.exists_at_head(worktree, &design_dir(task.id))?;
            facts.head = Some(repo.head_sha(worktree)?);
        }
        Stage::Development if worktree.exists() => {
            let sha = repo.head_sha(worktree)?;
            facts.head = Some(sha.clone());
            let state = db.combined_ci_state(&project.name, &sha)?;
            facts.ci_log = db.ci_log_path(&project.name, &sha)?.map(PathBuf::from);
            facts.ci = Some((sha, state));
        }
        _ => {}
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done_job(verdict: Option<&str>) -> Facts {
        Facts {
            job: Some(JobFacts {
                status: JobStatus::Running,
                exit_code: Some(0),
                run_success: Some(true),
                verdict: verdict.map(|v| (v.to_string(), "because".to_string())),
                ..JobFacts::default()
            }),
            ..Facts::default()
        }
    }

    #[test]
    fn review_verdicts() {
        assert_eq!(
            decide(Stage::Review, &done_job(Some("APPROVE"))),
            Gate::Pass
        );
        assert!(matches!(
            decide(Stage::Review, &done_job(Some("REQUEST_CHANGES"))),
            Gate::Rollback { .. }
        ));
        assert!(matches!(
            decide(Stage::Review, &done_job(None)),
            Gate::Fail(_)
        ));
        assert!(matches!(
            decide(Stage::Review, &done_job(Some("PASS"))),
            Gate::Fail(_)
        ));
    }

    #[test]
    fn failed_agent_fails_the_gate_even_with_a_good_verdict() {
        let mut f = done_job(Some("APPROVE"));
        f.job.as_mut().unwrap().exit_code = Some(1);
        assert!(matches!(decide(Stage::Review, &f), Gate::Fail(_)));
        let mut f = done_job(Some("APPROVE"));
        f.job.as_mut().unwrap().run_success = Some(false);
        assert!(matches!(decide(Stage::Review, &f), Gate::Fail(_)));
    }

    #[test]
    fn analysis_waits_for_a_human_unless_auto_approved() {
        let mut f = done_job(None);
        assert!(matches!(decide(Stage::Analysis, &f), Gate::Pending(_)));
        f.auto_approve_analysis = true;
        assert_eq!(decide(Stage::Analysis, &f), Gate::Pass);
    }

    #[test]
    fn development_follows_ci() {
        let mut f = done_job(None);
        f.ci = Some(("abc".into(), None));
        assert!(matches!(decide(Stage::Development, &f), Gate::Pending(_)));
        f.ci = Some(("abc".into(), Some("success".into())));
        assert_eq!(decide(Stage::Development, &f), Gate::Pass);
        f.ci = Some(("abc".into(), Some("failure".into())));
        assert!(matches!(
            decide(Stage::Development, &f),
            Gate::Rollback { log: None, .. }
        ));
        f.ci_log = Some("/state/logs/ci-task1-abc.log".into());
        assert_eq!(
            decide(Stage::Development, &f),
            Gate::Rollback {
                reason: "CI failed on abc".into(),
                log: Some("/state/logs/ci-task1-abc.log".into()),
            }
        );
    }

    #[test]
    fn running_agent_is_pending_and_deploy_needs_deployed() {
        let mut f = done_job(Some("DEPLOYED"));
        assert_eq!(decide(Stage::Deploy, &f), Gate::Pass);
        f.job.as_mut().unwrap().exit_code = None;
        assert!(matches!(decide(Stage::Deploy, &f), Gate::Pending(_)));
        assert!(matches!(
            decide(Stage::Deploy, &done_job(Some("FAILED"))),
            Gate::Fail(_)
        ));
    }
}
