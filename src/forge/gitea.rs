//! Gitea, the forge: what orch does there through [`crate::adapters::gitea`]
//! (open the task's PR once, comment on it once, poll and store CI
//! statuses, merge the PR on the tested head); and Gitea as a webhook
//! sender: the headers of its deliveries, its signature, and how a
//! `push`, `status` or `pull_request` delivery reads as an [`Event`]
//! (what ingest then does is ingest's). [`super::Forge`] dispatches here
//! for `forge = "gitea"`.
//!
//! Per `tests/fixtures/gitea/webhooks/`: `X-Gitea-Delivery` (a UUID),
//! `X-Gitea-Event-Type` (the exact type, e.g. `pull_request_sync`) with
//! `X-Gitea-Event` (the group) as the fallback, and `X-Gitea-Signature` =
//! `hex(HMAC-SHA256(secret, body))`, no prefix; only when that header is
//! absent, `X-Hub-Signature-256` = `"sha256=" + hex(...)`.

use crate::config::Settings;
use std::path::Path;

use serde_json::Value;
use tracing::{info, warn};

use crate::adapters::gitea::{CombinedStatus, Gitea, Links, MergeOutcome, PullRequest};
use crate::adapters::{marker, AdapterError};
use crate::clock::now_ms;
use crate::config::{AdapterSettings, ProjectConfig};
use crate::db::{Db, OutboxRow, Task};
use crate::git::{FastForward, Repo};
use crate::outbox::{ForgeMessage, MarkMerged};

use crate::webhook_source::{header, required, str_at, Event, Headers, Signature, WebhookSource};

/// Gitea's webhook deliveries (`/webhooks/gitea`, source `gitea`).
pub struct Webhook;

impl WebhookSource for Webhook {
    fn name(&self) -> &'static str {
        "gitea"
    }

    fn secret_setting(&self) -> &'static str {
        "ORCH_GITEA_WEBHOOK_SECRET"
    }

    fn secret<'s>(&self, settings: &'s Settings) -> Option<&'s str> {
        settings.gitea_webhook_secret.as_ref().map(|s| s.expose())
    }

    fn signature<'h>(&self, headers: &'h Headers) -> Result<Signature<'h>, String> {
        if let Some(hex) = header(headers, "X-Gitea-Signature") {
            return Ok(Signature {
                header: "X-Gitea-Signature",
                hex,
            });
        }
        let name = "X-Hub-Signature-256";
        let v = header(headers, name).ok_or_else(|| {
            "missing X-Gitea-Signature (or X-Hub-Signature-256) header".to_string()
        })?;
        let hex = v
            .strip_prefix("sha256=")
            .ok_or(format!("{name} does not start with \"sha256=\""))?;
        Ok(Signature { header: name, hex })
    }

    fn delivery_meta(&self, headers: &Headers) -> Result<(String, String), String> {
        let id = required(headers, "X-Gitea-Delivery")?;
        let event = match required(headers, "X-Gitea-Event-Type") {
            Ok(e) => e,
            Err(_) => required(headers, "X-Gitea-Event")
                .map_err(|_| "missing X-Gitea-Event-Type (or X-Gitea-Event) header")?,
        };
        Ok((id, event))
    }

    fn delivery_header(&self) -> &'static str {
        "x-gitea-delivery"
    }

    /// A `push` names the branch in `ref`, a `pull_request` as its head.
    fn about(&self, _tracker_issue_id: &str, branch: &str) -> Vec<(&'static str, String)> {
        vec![
            ("$.ref", format!("refs/heads/{branch}")),
            ("$.pull_request.head.ref", branch.to_string()),
        ]
    }

    /// `push` (a branch head), `status` (a commit's CI; the payload names
    /// no branch: fixtures README, surprise 1) and `pull_request` /
    /// `pull_request_sync` (PR bookkeeping) deliveries.
    fn parse(&self, event: &str, v: &Value) -> Result<Event, String> {
        if !matches!(
            event,
            "push" | "status" | "pull_request" | "pull_request_sync"
        ) {
            return Err(format!("gitea event {event:?} is not one orch acts on"));
        }
        let repo = str_at(v, &["repository", "full_name"])
            .ok_or("delivery has no repository.full_name")?
            .to_string();
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        match event {
            "push" => {
                let (Some(git_ref), Some(head)) = (text(v, "ref"), text(v, "after")) else {
                    return Err("push without ref/after".into());
                };
                Ok(Event::Push {
                    repo,
                    git_ref,
                    head,
                })
            }
            "status" => {
                let (Some(sha), Some(state)) = (text(v, "sha"), text(v, "state")) else {
                    return Err("status without sha/state".into());
                };
                Ok(Event::Status {
                    repo,
                    sha,
                    state,
                    context: text(v, "context").unwrap_or_else(|| "ci".into()),
                    url: text(v, "target_url").unwrap_or_default(),
                })
            }
            _ => {
                let pr = v.get("pull_request").unwrap_or(&Value::Null);
                let (Some(number), Some(head)) = (
                    pr.get("number").and_then(Value::as_i64),
                    str_at(pr, &["head", "ref"]),
                ) else {
                    return Err("pull_request without number/head.ref".into());
                };
                Ok(Event::PullRequest {
                    repo,
                    action: text(v, "action").unwrap_or_default(),
                    number,
                    head: head.to_string(),
                    merged: pr.get("merged").and_then(Value::as_bool).unwrap_or(false),
                    url: text(pr, "html_url").unwrap_or_default(),
                })
            }
        }
    }

    fn sender_headers(
        &self,
        delivery: &str,
        event: &str,
        signature: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut out = vec![
            ("X-Gitea-Delivery".to_string(), delivery.to_string()),
            ("X-Gitea-Event".to_string(), event.to_string()),
            ("X-Gitea-Event-Type".to_string(), event.to_string()),
        ];
        if let Some(sig) = signature {
            out.push(("X-Gitea-Signature".to_string(), sig.to_string()));
        }
        out
    }
}

/// Web links of the project's branches, commits and PRs, when
/// `ORCH_GITEA_PUBLIC_URL` is set and the project names its repository.
pub(super) fn links(s: &AdapterSettings, project: &ProjectConfig) -> Option<Links> {
    let url = s.gitea_public_url.as_ref()?;
    (!project.repo.is_empty()).then(|| Links::new(url, &project.repo))
}

/// One look at the forge's combined status of the worktree's head, for the
/// reconciler, whose development gate would otherwise wait for a `status`
/// delivery that was lost. One API call; the statuses are stored in
/// `ci_statuses` when `store` (not in a dry run). Returns `(sha, combined
/// state)`, the state `""` when the forge has no status for the sha.
///
/// Errors: the head cannot be read, or Gitea cannot be asked.
pub(super) fn check_ci_once(
    s: &AdapterSettings,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    store: bool,
) -> anyhow::Result<(String, String)> {
    let sha = repo.head_sha(Path::new(&task.worktree))?;
    let g = Gitea::from_settings(s).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cs = g
        .combined_status(&project.repo, &sha)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if store {
        store_statuses(db, project, &sha, &cs)?;
    }
    Ok((sha, cs.state))
}

/// Stores every context of a combined status as a CI status of `sha`.
fn store_statuses(
    db: &Db,
    project: &ProjectConfig,
    sha: &str,
    cs: &CombinedStatus,
) -> anyhow::Result<()> {
    let statuses = cs.statuses.as_deref().unwrap_or_default();
    if statuses.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    db.write(|tx| {
        for st in statuses {
            tx.upsert_ci_status(
                &project.name,
                sha,
                &st.context,
                &st.status,
                st.target_url.as_deref().unwrap_or(""),
                None,
                now,
            )?;
        }
        Ok(())
    })
}

/// Delivers a forge message of `task` to Gitea (`msg` is its row): open
/// the PR, comment on it with the dedupe-key marker, or mark it merged. `sends_before` > 0 means
/// an earlier send may have reached Gitea: look before posting. Returns
/// the remote id (PR number, comment id).
pub(super) fn deliver(
    db: &Db,
    g: &Gitea,
    msg: &OutboxRow,
    message: &ForgeMessage,
    task: &Task,
    project: &ProjectConfig,
    sends_before: i64,
) -> Result<String, AdapterError> {
    match message {
        ForgeMessage::OpenPr(open) => {
            let base = Some(open.base.as_str())
                .filter(|b| !b.is_empty())
                .unwrap_or(&project.default_branch);
            let branch = Some(open.branch.as_str())
                .filter(|b| !b.is_empty())
                .unwrap_or(&task.branch);
            let pr = g.ensure_pull(&project.repo, base, branch, &open.title, &open.body)?;
            record_pull(db, task, &pr);
            info!(target: "forge", task = task.id, pr = pr.number, "pull request open");
            Ok(pr.number.to_string())
        }
        ForgeMessage::Comment(comment) => {
            let number = pull_number(g, db, task, project, "comment")?;
            let key = db
                .remote_dedupe_key(msg)
                .map_err(|e| AdapterError::Transport {
                    service: "gitea",
                    op: "read instance id".into(),
                    message: format!("{e:#}"),
                })?;
            let mark = marker(&key);
            if sends_before > 0 {
                if let Some(c) = g
                    .list_comments(&project.repo, number)?
                    .into_iter()
                    .find(|c| c.body.contains(&mark))
                {
                    info!(target: "forge", key = %msg.dedupe_key, comment = c.id, "comment was already posted");
                    return Ok(c.id.to_string());
                }
            }
            let body = format!("{}\n\n{mark}", comment.text);
            let c = g.create_comment(&project.repo, number, &body)?;
            Ok(c.id.to_string())
        }
        ForgeMessage::MarkMerged(m) => mark_merged(g, db, task, project, m),
    }
}

/// Marks the PR of a task that landed inside a merge-line batch (not as
/// its tip) merged by `m.merge_commit`. Already merged (a repeat, or
/// Gitea's own manual-merge detection) is success; no PR for the branch,
/// closed without merging, the style not allowed (405) or a commit Gitea
/// refuses (409) are [`AdapterError::Rejected`]: a dead letter with the
/// reason, logged by `orch deliver`.
///
/// No PR is not "not yet": the task's `open_pr` message comes first (per
/// task and channel, a message waits while an earlier one is pending), so
/// when this one is sent that one was delivered or dead-lettered, and the
/// PR will not appear by waiting.
fn mark_merged(
    g: &Gitea,
    db: &Db,
    task: &Task,
    project: &ProjectConfig,
    m: &MarkMerged,
) -> Result<String, AdapterError> {
    let op = "mark pull request merged";
    let rejected = |message: String| AdapterError::Rejected {
        service: "gitea",
        op: op.into(),
        message,
    };
    let number = match pull_number(g, db, task, project, op) {
        Err(AdapterError::NotYet { .. }) => {
            return Err(rejected(format!(
                "no pull request for {} into {} on {}: nothing to mark merged (its changes \
                 are on {} at {}; its PR was never opened — see its open_pr message — or is gone)",
                m.branch,
                project.default_branch,
                project.repo,
                project.default_branch,
                m.merge_commit
            )))
        }
        found => found?,
    };
    let pr = g.get_pull(&project.repo, number)?;
    if !pr.merged {
        if pr.state != "open" {
            return Err(rejected(format!(
                "PR #{number} of {} was closed without merging",
                m.branch
            )));
        }
        match g.mark_merged(&project.repo, number, &m.merge_commit)? {
            MergeOutcome::Merged { .. } | MergeOutcome::AlreadyMerged { .. } => {}
            MergeOutcome::NotReady(why) | MergeOutcome::Conflict(why) => {
                return Err(rejected(format!(
                    "Gitea will not mark PR #{number} merged by {}: {why}",
                    m.merge_commit
                )))
            }
        }
    }
    info!(target: "merge", task = task.id, pr = number, merge_commit = %m.merge_commit, already = pr.merged, "PR marked merged (landed in a merge-line batch)");
    record_pull_merged(db, task, number, &pr.html_url);
    Ok(number.to_string())
}

fn record_pull_merged(db: &Db, task: &Task, number: i64, url: &str) {
    let r =
        db.write(|tx| tx.upsert_pull_request(task.id, number, url, &task.branch, true, now_ms()));
    if let Err(e) = r {
        warn!(target: "forge", task = task.id, error = %format!("{e:#}"), "could not record the pull request");
    }
}

fn record_pull(db: &Db, task: &Task, pr: &PullRequest) {
    let r = db.write(|tx| {
        tx.upsert_pull_request(
            task.id,
            pr.number,
            &pr.html_url,
            &task.branch,
            pr.merged,
            now_ms(),
        )
    });
    if let Err(e) = r {
        warn!(target: "forge", task = task.id, error = %format!("{e:#}"), "could not record the pull request");
    }
}

/// The number of `task`'s PR (stored, else looked up); `op` names the
/// delivery that needs it in the not-yet error.
fn pull_number(
    g: &Gitea,
    db: &Db,
    task: &Task,
    project: &ProjectConfig,
    op: &str,
) -> Result<i64, AdapterError> {
    if let Ok(Some(pr)) = db.pull_request(task.id) {
        return Ok(pr.number);
    }
    let found = match g.find_pull(&project.repo, &project.default_branch, &task.branch)? {
        // Gitea < 1.22 has no base/head lookup: list the open PRs.
        None => g.find_open_pull_listed(&project.repo, &project.default_branch, &task.branch)?,
        found => found,
    };
    match found {
        Some(pr) => {
            record_pull(db, task, &pr);
            Ok(pr.number)
        }
        None => Err(AdapterError::NotYet {
            service: "gitea",
            op: op.into(),
            message: format!("no pull request for {} yet", task.branch),
        }),
    }
}

/// Merges `task`'s PR for deploy-staging → deploy, with the project's
/// `merge_style`, only if the PR's head is still `head_sha` (the head the
/// merge gate tested). Opens the PR first if it does not exist. A PR
/// already merged is success.
///
/// Errors: [`AdapterError`]s of the calls; a PR closed without merging is
/// [`AdapterError::Rejected`].
fn merge_pull(
    s: &AdapterSettings,
    project: &ProjectConfig,
    task: &Task,
    head_sha: &str,
) -> Result<MergeOutcome, AdapterError> {
    let g = Gitea::from_settings(s)?;
    let title = format!("{} (orch task {})", task.title, task.id);
    let pr = g.ensure_pull(
        &project.repo,
        &project.default_branch,
        &task.branch,
        &title,
        "Opened by orch for the merge.",
    )?;
    if pr.merged {
        return Ok(MergeOutcome::AlreadyMerged {
            number: pr.number,
            merge_commit: pr.merge_commit_sha,
        });
    }
    if pr.state != "open" {
        return Err(AdapterError::Rejected {
            service: "gitea",
            op: "merge pull request".into(),
            message: format!("PR #{} was closed without merging", pr.number),
        });
    }
    let out = g.merge_pull(&project.repo, pr.number, project.merge_style, head_sha)?;
    info!(target: "merge", task = task.id, pr = pr.number, outcome = %out, "Gitea merge");
    Ok(out)
}

/// The merge gate's forge step for a Gitea project
/// (`merge_gate::merge_into_default`), in the gate's terms: merged or
/// already merged as such; a 409 (conflict, head out of date: the base
/// moved) as `NotFastForward`, so the gate catches up and tests again.
///
/// Errors: Gitea refusing for now (405: checks running or missing,
/// approvals) and transport errors are errors: the job stays running with
/// its exit recorded and the reaper's Tier-2 runs the gate again later.
pub(super) fn merge_into_default(
    s: &AdapterSettings,
    project: &ProjectConfig,
    task: &Task,
    head_sha: &str,
) -> anyhow::Result<crate::git::FastForward> {
    match merge_pull(s, project, task, head_sha) {
        Ok(MergeOutcome::Merged { merge_commit, .. }) => Ok(FastForward::Merged {
            sha: merge_commit.unwrap_or_else(|| head_sha.to_string()),
        }),
        Ok(MergeOutcome::AlreadyMerged { .. }) => Ok(FastForward::AlreadyMerged),
        Ok(MergeOutcome::Conflict(why)) => {
            warn!(target: "merge", task = task.id, why = %why, "Gitea cannot merge as is; catching up");
            Ok(FastForward::NotFastForward)
        }
        Ok(MergeOutcome::NotReady(why)) => Err(anyhow::anyhow!(
            "Gitea will not merge the PR of {} yet: {why}",
            task.branch
        )),
        Err(e) => Err(e.into_anyhow()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/gitea/webhooks/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn push_status_and_pull_request_deliveries_read_as_events() {
        let Event::Push { git_ref, head, .. } = Webhook.parse("push", &fixture("push")).unwrap()
        else {
            panic!("not a push")
        };
        assert!(git_ref.starts_with("refs/heads/") && head.len() == 40);
        let Event::Status { state, sha, .. } =
            Webhook.parse("status", &fixture("status-success")).unwrap()
        else {
            panic!("not a status")
        };
        assert_eq!((state.as_str(), sha.len()), ("success", 40));
        let Event::PullRequest { merged, action, .. } = Webhook
            .parse("pull_request", &fixture("pull_request-closed-merged"))
            .unwrap()
        else {
            panic!("not a pull request")
        };
        assert!(merged && action == "closed");
        assert_eq!(
            Webhook
                .parse("workflow_job", &fixture("workflow_job-queued"))
                .unwrap_err(),
            "gitea event \"workflow_job\" is not one orch acts on"
        );
        assert_eq!(
            Webhook.parse("status", &serde_json::json!({})).unwrap_err(),
            "delivery has no repository.full_name"
        );
    }
}
