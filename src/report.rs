//! The report orch writes after every agent run: role, outcome, links to
//! the branch, PR and commit, and a usage line.
//!
//! It is queued as outbox messages inside the transaction that finishes
//! the run's job ([`RunReport::queue`], called by the worker's finalize),
//! so a report exists exactly when the job's outcome does: one tracker
//! comment per run (key `task:<id>:job<j>:a<attempt>:report`), and for a
//! project whose forge has pull requests (Gitea) one PR comment per verdict-bearing run (review and
//! later). Links are rendered when the tracker comment is delivered, from
//! `ORCH_GITEA_PUBLIC_URL` and the PR orch knows by then.
//!
//! Usage arithmetic (Claude's result): the full input is `input_tokens +
//! cache_read_input_tokens + cache_creation_input_tokens`; the cached part
//! is the read plus the creation tokens; output and cost (USD) as
//! reported.

use crate::adapters::html_escape;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Job, RunUsage, Task, Tx};
use crate::forge::Forge;
use crate::outbox::{
    self, ForgeMessage, Message, Occasion, PrComment, Report, ReportVerdict, TrackerComment,
};
use crate::pipeline::job::Finalized;
use crate::pipeline::Stage;

pub use crate::outbox::Usage;

impl Usage {
    fn from_run(r: &RunUsage) -> Option<Usage> {
        r.usage_known.then_some(Usage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_input_tokens: r.cache_read_input_tokens,
            cache_creation_input_tokens: r.cache_creation_input_tokens,
            cost_usd: r.cost_usd,
        })
    }
}

/// One line for how a finalize ended, or `None` when nobody should hear
/// about it (the job was lost to another actor or cancelled).
pub fn outcome_text(f: &Finalized) -> Option<String> {
    Some(match f {
        Finalized::Advanced {
            from,
            to,
            escalated,
        } => {
            let mut s = if from == to {
                format!("{from} runs again")
            } else if *to == Stage::Development && *from != Stage::Architecture {
                format!("{from} returned the work to development")
            } else {
                format!("passed the {from} gate: {from} → {to}")
            };
            if *escalated {
                s += "; the task is escalated (needs a human)";
            }
            s
        }
        Finalized::Waiting { reason } => format!("done; the task waits: {reason}"),
        Finalized::Retrying {
            attempt, reason, ..
        } => {
            format!("failed: {reason}; retrying (attempt {attempt})")
        }
        Finalized::Failed { reason } => format!("failed: {reason}"),
        // A deferred merge reports when the job really finishes; a run
        // stopped by an account limit is told once, by the pause's
        // notification.
        Finalized::Cancelled { .. }
        | Finalized::Deferred { .. }
        | Finalized::Paused { .. }
        | Finalized::Lost
        | Finalized::Refused { .. } => return None,
    })
}

/// What the finalize knows about a run before its terminal transaction.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The branch head after the run's commit and push (successful runs).
    pub head: Option<String>,
}

impl RunReport {
    /// Reads the worktree's head for a run that exited 0 (read-only; a
    /// failure just leaves the commit link out).
    pub fn gather(ctx: &Ctx, task: &Task, job: &Job) -> RunReport {
        let worktree = std::path::Path::new(&task.worktree);
        let head = (job.exit_code == Some(0) && worktree.exists())
            .then(|| ctx.project(&task.project).ok())
            .flatten()
            .and_then(|p| ctx.repo(p).head_sha(worktree).ok());
        RunReport { head }
    }

    /// Queues the run's report in the job's terminal transaction `tx`: a
    /// tracker comment and, for a forge with pull requests at review or later, a PR
    /// comment. Nothing for a lost or cancelled finalize. Idempotent by
    /// key.
    ///
    /// Errors: database errors.
    pub fn queue(
        &self,
        tx: &Tx,
        ctx: &Ctx,
        task: &Task,
        job: &Job,
        finalized: &Finalized,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let Some(outcome) = outcome_text(finalized) else {
            return Ok(());
        };
        let run = tx.run_usage(job.id)?;
        let usage = run.as_ref().and_then(Usage::from_run);
        let verdict = tx.verdict_for_job(job.id)?;
        let run_no = run.as_ref().map_or(job.attempt, |r| r.attempt);
        let on = Occasion::Run {
            task_id: task.id,
            job_id: job.id,
            run: run_no,
            epoch: job.epoch,
        };
        // As counted toward the cap: runs an account limit stopped do not
        // count (the key keeps the run number: one report per run).
        let attempt = run_no - job.free_attempts;
        let title = format!(
            "{} run (job {}, attempt {attempt}): {outcome}",
            job.role, job.id
        );
        let verdict_line = verdict
            .as_ref()
            .map(|(v, s)| crate::pipeline::gate::with_reason(&format!("verdict {v}"), s));
        let denials = tx
            .run_judgement(job.id)?
            .map(|r| crate::agent::name_denials(&r.denials))
            .unwrap_or_default();
        let denials_line = (!denials.is_empty()).then(|| {
            format!(
                "permission denials ({}): {}",
                denials.len(),
                denials.join(", ")
            )
        });
        let usage_line = usage.map_or_else(
            || "usage: unknown (the agent printed no result)".to_string(),
            |u| format!("usage: {}", u.line()),
        );
        let mut text = title.clone();
        for line in [&verdict_line, &denials_line].into_iter().flatten() {
            text += &format!("\n{line}");
        }
        text += &format!("\nbranch {}", task.branch);
        if let Some(h) = &self.head {
            text += &format!(" · commit {}", short(h));
        }
        text += &format!("\n{usage_line}");
        let report = Report {
            role: job.role.clone(),
            stage: job.stage.to_string(),
            job_id: job.id,
            attempt,
            outcome: outcome.clone(),
            exit_code: run.as_ref().and_then(|r| r.exit_code),
            verdict: verdict.as_ref().map(|(v, s)| ReportVerdict {
                verdict: v.clone(),
                summary: s.clone(),
            }),
            permission_denials: denials,
            branch: task.branch.clone(),
            commit: self.head.clone(),
            usage,
        };
        let comment = TrackerComment {
            text,
            report: Some(Box::new(report)),
        };
        outbox::queue(tx, &on, &comment.into(), now_ms)?;
        let stage = Some(job.stage);
        let has_prs = ctx
            .project(&task.project)
            .is_ok_and(|p| Forge::for_project(ctx, p).has_pull_requests());
        if has_prs && stage.is_some_and(|s| s >= Stage::Review) {
            let mut md = format!(
                "**{}** run (job {}, attempt {attempt}): {outcome}",
                job.role, job.id
            );
            for line in [&verdict_line, &denials_line].into_iter().flatten() {
                md += &format!("\n\n{line}");
            }
            if let Some(h) = &self.head {
                md += &format!("\n\nat {h}");
            }
            md += &format!("\n\n{usage_line}");
            let comment = PrComment { text: md };
            outbox::queue(
                tx,
                &on,
                &Message::Forge(ForgeMessage::Comment(comment)),
                now_ms,
            )?;
        }
        Ok(())
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

/// The HTML of a tracker comment for Plane: a run report with its links
/// (rendered now, so the PR opened meanwhile is linked), or the comment's
/// text.
pub fn tracker_html(
    ctx: &Ctx,
    db: &Db,
    comment: &TrackerComment,
    task: &Task,
    project: &ProjectConfig,
) -> String {
    let Some(r) = &comment.report else {
        return crate::adapters::plane::text_html(&comment.text);
    };
    let mut html = format!(
        "<p><strong>{}</strong> run (job {}, attempt {}): {}</p>",
        html_escape(&r.role),
        r.job_id,
        r.attempt,
        html_escape(&r.outcome)
    );
    if let Some(v) = &r.verdict {
        html += &format!(
            "<p>Verdict <strong>{}</strong>: {}</p>",
            html_escape(&v.verdict),
            html_escape(&v.summary)
        );
    }
    let links = Forge::for_project(ctx, project).links(project);
    let a = |href: Option<String>, label: &str| match href {
        Some(h) => format!("<a href=\"{}\">{}</a>", html_escape(&h), html_escape(label)),
        None => html_escape(label),
    };
    let branch = &r.branch;
    let mut parts = vec![format!(
        "Branch {}",
        a(links.as_ref().map(|l| l.branch(branch)), branch)
    )];
    if let Ok(Some(pr)) = db.pull_request(task.id) {
        let href = links.as_ref().map(|l| l.pull(pr.number));
        parts.push(format!("PR {}", a(href, &format!("#{}", pr.number))));
    }
    if let Some(sha) = &r.commit {
        let href = links.as_ref().map(|l| l.commit(sha));
        parts.push(format!("commit {}", a(href, short(sha))));
    }
    html += &format!("<p>{}</p>", parts.join(" · "));
    html += &match &r.usage {
        Some(u) => format!("<p>Usage: {}</p>", html_escape(&u.line())),
        None => "<p>Usage: unknown (the agent printed no result)</p>".to_string(),
    };
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_arithmetic_matches_the_claude_fixture() {
        // tests/fixtures/claude/json/success.json
        let u = Usage {
            input_tokens: 8,
            output_tokens: 110,
            cache_read_input_tokens: 33204,
            cache_creation_input_tokens: 5722,
            cost_usd: 0.037_482_8,
        };
        assert_eq!(u.full_input(), 38934);
        assert_eq!(u.cached_input(), 38926);
        assert_eq!(
            u.line(),
            "input 38934 tokens (38926 cached: 33204 read, 5722 written) · output 110 tokens · cost $0.0375"
        );
    }

    #[test]
    fn outcomes_read_well_and_lost_runs_are_silent() {
        let adv = Finalized::Advanced {
            from: Stage::Review,
            to: Stage::Testing,
            escalated: false,
        };
        assert_eq!(
            outcome_text(&adv).unwrap(),
            "passed the review gate: review → testing"
        );
        let back = Finalized::Advanced {
            from: Stage::Review,
            to: Stage::Development,
            escalated: true,
        };
        assert!(outcome_text(&back)
            .unwrap()
            .contains("returned the work to development"));
        assert!(outcome_text(&back).unwrap().contains("escalated"));
        assert_eq!(outcome_text(&Finalized::Lost), None);
    }
}
