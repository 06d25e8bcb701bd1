//! The Gitea forge adapter (REST v1, `Authorization: token …`), per
//! `tests/fixtures/gitea/API.md` (Gitea 1.25).
//!
//! What orch does on Gitea, and how each step stays safe to repeat:
//!
//! - **Open the task's pull request** on its first push — an outbox
//!   message (`forge`/`open_pr`, key `task:<id>:pr`) queued by
//!   [`after_push`]. Delivery looks first (`GET /pulls/{base}/{head}`: the
//!   list API has no head filter), creates only when nothing is there, and
//!   counts a 409 "pull request already exists" as found.
//! - **Comment on the PR** (`forge`/`comment`): every body carries an
//!   invisible marker with the message's dedupe key; a send that may have
//!   reached Gitea before (a crash, a dropped answer) lists the PR's
//!   comments and reuses the one with the marker instead of posting again.
//! - **CI for the development gate**: the gate itself only reads
//!   `ci_statuses`. [`poll_ci`], called by the worker's finalize right
//!   after the push, polls the head's combined status for a bounded time
//!   (`ORCH_GITEA_CI_POLL_S`) and stores what it learns; a status that
//!   arrives later comes in as a `status` delivery (ingest) or is found by
//!   reconcile. A combined `state: ""` with `statuses: null` is "no status
//!   yet" — pending, never a failure.
//! - **Merge** at deploy-staging → deploy ([`merge`]) with the project's
//!   `merge_style` and `head_commit_id` (Gitea refuses if the head moved);
//!   a PR that GET shows merged is success, so a merge repeated after a
//!   crash is harmless.

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{encode_path, marker, required, AdapterError, Body, Http, Reply};
use crate::clock::now_ms;
use crate::config::{ForgeKind, MergeStyle, ProjectConfig};
use crate::ctx::Ctx;
use crate::db::{Db, OutboxRow, Task};

const SERVICE: &str = "gitea";

/// A pull request, per Gitea's REST `PullRequest` (fields orch reads).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PullRequest {
    pub number: i64,
    #[serde(default)]
    pub html_url: String,
    /// `open` or `closed` (a merged PR is `closed` + `merged`).
    pub state: String,
    #[serde(default)]
    pub merged: bool,
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    #[serde(default)]
    pub mergeable: bool,
    pub head: PrRef,
    pub base: PrRef,
}

/// One side of a pull request (`head` / `base`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PrRef {
    /// The branch name (`refs/pull/<n>/head` once the branch is deleted).
    #[serde(rename = "ref")]
    pub branch: String,
    pub sha: String,
}

/// The combined status of a ref, per Gitea's REST `CombinedStatus`: the
/// state key here is `state`, in each entry it is `status`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CombinedStatus {
    /// `success`, `failure`, `pending`, or `""` when there is no status.
    pub state: String,
    pub sha: String,
    /// `null` when there is no status.
    #[serde(default)]
    pub statuses: Option<Vec<CommitStatus>>,
}

/// One context's latest status, per Gitea's REST `CommitStatus`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CommitStatus {
    /// `pending|success|error|failure|warning|skipped` (key `status`).
    pub status: String,
    pub context: String,
    #[serde(default)]
    pub target_url: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A comment on an issue or PR, per Gitea's REST `Comment`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Comment {
    pub id: i64,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub html_url: String,
}

/// What a merge request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Merged now.
    Merged {
        number: i64,
        merge_commit: Option<String>,
    },
    /// GET shows the PR merged already (a repeated merge after a crash).
    AlreadyMerged {
        number: i64,
        merge_commit: Option<String>,
    },
    /// Gitea will not merge yet (405: mergeability check running, required
    /// checks or approvals missing); try again later.
    NotReady(String),
    /// The merge cannot apply as is (409: conflict, head out of date): the
    /// branch must be caught up with the base first.
    Conflict(String),
}

/// A Gitea API client. `Debug` leaves out the token.
pub struct Gitea {
    http: Http,
    api: String,
    auth: String,
}

impl std::fmt::Debug for Gitea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gitea")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl Gitea {
    /// A client for the API at `<url>/api/v1` with `token`.
    pub fn new(
        s: &crate::config::AdapterSettings,
        url: &str,
        token: &crate::config::Secret,
    ) -> Gitea {
        Gitea {
            http: Http::new(SERVICE, s, vec![token.clone()]),
            api: format!("{}/api/v1", url.trim_end_matches('/')),
            auth: format!("token {}", token.expose()),
        }
    }

    fn repo_path(repo: &str) -> Result<String, AdapterError> {
        match repo.split_once('/') {
            Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/') => Ok(format!(
                "repos/{}/{}",
                encode_path(o, false),
                encode_path(n, false)
            )),
            _ => Err(AdapterError::Config {
                key: "projects.repo".into(),
                message: format!("{repo:?}: expected owner/name for forge = \"gitea\""),
            }),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        op: &str,
    ) -> Result<Reply, AdapterError> {
        let url = format!("{}/{path}", self.api);
        let body = body.map_or(Body::None, Body::Json);
        self.http
            .send(method, &url, &[("Authorization", &self.auth)], body, op)
    }

    /// The PR from `head` into `base`, whatever its state
    /// (`GET /repos/{o}/{r}/pulls/{base}/{head}`); `None` on 404.
    pub fn find_pull(
        &self,
        repo: &str,
        base: &str,
        head: &str,
    ) -> Result<Option<PullRequest>, AdapterError> {
        let op = "find pull request";
        let path = format!(
            "{}/pulls/{}/{}",
            Self::repo_path(repo)?,
            encode_path(base, false),
            encode_path(head, true)
        );
        let r = self.call("GET", &path, None, op)?;
        match r.status {
            200 => r.json(SERVICE, op).map(Some),
            404 => Ok(None),
            _ => Err(r.into_status_error(SERVICE, op)),
        }
    }

    /// The PR number `number` (`GET /repos/{o}/{r}/pulls/{index}`).
    pub fn get_pull(&self, repo: &str, number: i64) -> Result<PullRequest, AdapterError> {
        let op = "get pull request";
        let r = self.call(
            "GET",
            &format!("{}/pulls/{number}", Self::repo_path(repo)?),
            None,
            op,
        )?;
        if r.status == 200 {
            r.json(SERVICE, op)
        } else {
            Err(r.into_status_error(SERVICE, op))
        }
    }

    /// Opens a PR (`POST /repos/{o}/{r}/pulls`). `Ok(None)` when Gitea
    /// answers 409: an open PR for this head and base exists.
    ///
    /// Errors: [`AdapterError::NotYet`] for 422 "no changes between the
    /// head and the base"; other statuses as [`AdapterError::Status`].
    pub fn create_pull(
        &self,
        repo: &str,
        base: &str,
        head: &str,
        title: &str,
        body: &str,
    ) -> Result<Option<PullRequest>, AdapterError> {
        let op = "create pull request";
        let req = json!({ "head": head, "base": base, "title": title, "body": body });
        let r = self.call(
            "POST",
            &format!("{}/pulls", Self::repo_path(repo)?),
            Some(&req),
            op,
        )?;
        match r.status {
            200 | 201 => r.json(SERVICE, op).map(Some),
            409 => Ok(None),
            422 => Err(AdapterError::NotYet {
                service: SERVICE,
                op: op.into(),
                message: r.error_text(),
            }),
            _ => Err(r.into_status_error(SERVICE, op)),
        }
    }

    /// The PR of `head` into `base`: the existing one (open or merged), or
    /// a new one. Never opens a second PR for the same head.
    pub fn ensure_pull(
        &self,
        repo: &str,
        base: &str,
        head: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, AdapterError> {
        if let Some(pr) = self.find_pull(repo, base, head)? {
            if pr.state == "open" || pr.merged {
                return Ok(pr);
            }
        }
        if let Some(pr) = self.create_pull(repo, base, head, title, body)? {
            return Ok(pr);
        }
        // 409: it exists after all (created concurrently, or the lookup
        // returned an older closed one).
        match self.find_pull(repo, base, head)? {
            Some(pr) => Ok(pr),
            None => Err(AdapterError::NotYet {
                service: SERVICE,
                op: "create pull request".into(),
                message: "Gitea says the PR exists but does not return it".into(),
            }),
        }
    }

    /// The combined status of `sha`
    /// (`GET /repos/{o}/{r}/commits/{ref}/status`).
    pub fn combined_status(&self, repo: &str, sha: &str) -> Result<CombinedStatus, AdapterError> {
        let op = "get combined status";
        let r = self.call(
            "GET",
            &format!(
                "{}/commits/{}/status",
                Self::repo_path(repo)?,
                encode_path(sha, false)
            ),
            None,
            op,
        )?;
        if r.status == 200 {
            r.json(SERVICE, op)
        } else {
            Err(r.into_status_error(SERVICE, op))
        }
    }

    /// All comments of PR (issue) `number`
    /// (`GET /repos/{o}/{r}/issues/{index}/comments`).
    pub fn list_comments(&self, repo: &str, number: i64) -> Result<Vec<Comment>, AdapterError> {
        let op = "list comments";
        let r = self.call(
            "GET",
            &format!("{}/issues/{number}/comments", Self::repo_path(repo)?),
            None,
            op,
        )?;
        if r.status == 200 {
            r.json(SERVICE, op)
        } else {
            Err(r.into_status_error(SERVICE, op))
        }
    }

    /// Posts a comment on PR (issue) `number`
    /// (`POST /repos/{o}/{r}/issues/{index}/comments`).
    pub fn create_comment(
        &self,
        repo: &str,
        number: i64,
        body: &str,
    ) -> Result<Comment, AdapterError> {
        let op = "create comment";
        let r = self.call(
            "POST",
            &format!("{}/issues/{number}/comments", Self::repo_path(repo)?),
            Some(&json!({ "body": body })),
            op,
        )?;
        if r.ok() {
            r.json(SERVICE, op)
        } else {
            Err(r.into_status_error(SERVICE, op))
        }
    }

    /// Merges PR `number` with `style`, only if its head is still
    /// `head_sha` (`POST /repos/{o}/{r}/pulls/{index}/merge`). A PR that is
    /// merged already (405 "already merged", or GET shows it) is
    /// [`MergeOutcome::AlreadyMerged`].
    pub fn merge_pull(
        &self,
        repo: &str,
        number: i64,
        style: MergeStyle,
        head_sha: &str,
    ) -> Result<MergeOutcome, AdapterError> {
        let op = "merge pull request";
        let req = json!({
            "Do": style.as_str(),
            "head_commit_id": head_sha,
            "delete_branch_after_merge": false,
            "force_merge": false,
            "merge_when_checks_succeed": false,
        });
        let r = self.call(
            "POST",
            &format!("{}/pulls/{number}/merge", Self::repo_path(repo)?),
            Some(&req),
            op,
        )?;
        let merged_now = |g: &Gitea| -> Result<Option<Option<String>>, AdapterError> {
            let pr = g.get_pull(repo, number)?;
            Ok(pr.merged.then_some(pr.merge_commit_sha))
        };
        match r.status {
            200 => Ok(MergeOutcome::Merged {
                number,
                merge_commit: merged_now(self)?.flatten(),
            }),
            405 | 409 => {
                // A repeated merge: Gitea says no because it is done.
                if let Some(merge_commit) = merged_now(self)? {
                    return Ok(MergeOutcome::AlreadyMerged {
                        number,
                        merge_commit,
                    });
                }
                let text = r.error_text();
                Ok(if r.status == 405 {
                    MergeOutcome::NotReady(text)
                } else {
                    MergeOutcome::Conflict(text)
                })
            }
            _ => Err(r.into_status_error(SERVICE, op)),
        }
    }
}

/// The Gitea client from the settings.
///
/// Errors: [`AdapterError::Disabled`] when `ORCH_FORGE_ENABLED` is off,
/// [`AdapterError::Config`] naming `ORCH_GITEA_URL` or `ORCH_GITEA_TOKEN`
/// when missing.
pub fn client(ctx: &Ctx) -> Result<Gitea, AdapterError> {
    let s = &ctx.settings.adapters;
    if !s.forge_enabled {
        return Err(AdapterError::Disabled {
            service: SERVICE,
            key: "ORCH_FORGE_ENABLED",
        });
    }
    let why = "for projects with forge = \"gitea\"";
    let url = required(&s.gitea_url, "ORCH_GITEA_URL", why)?;
    let token = required(&s.gitea_token, "ORCH_GITEA_TOKEN", why)?;
    Ok(Gitea::new(s, url, token))
}

/// Web links of a project's repository, from `ORCH_GITEA_PUBLIC_URL`.
#[derive(Debug, Clone)]
pub struct Links {
    base: String,
}

impl Links {
    /// Links for `project` when its forge is Gitea and a public URL is set.
    pub fn for_project(ctx: &Ctx, project: &ProjectConfig) -> Option<Links> {
        let url = ctx.settings.adapters.gitea_public_url.as_ref()?;
        (project.forge == ForgeKind::Gitea && !project.repo.is_empty()).then(|| Links {
            base: format!("{}/{}", url.trim_end_matches('/'), project.repo),
        })
    }
    /// `<public>/<owner>/<repo>/src/branch/<branch>`
    pub fn branch(&self, branch: &str) -> String {
        format!("{}/src/branch/{}", self.base, encode_path(branch, true))
    }
    /// `<public>/<owner>/<repo>/commit/<sha>`
    pub fn commit(&self, sha: &str) -> String {
        format!("{}/commit/{sha}", self.base)
    }
    /// `<public>/<owner>/<repo>/pulls/<n>`
    pub fn pull(&self, number: i64) -> String {
        format!("{}/pulls/{number}", self.base)
    }
}

/// After the worker pushed `task`'s branch: records the pushed head as the
/// branch's known head (so a later `status` delivery for that sha finds
/// its task) and, for a Gitea project, queues the task's PR
/// (`forge`/`open_pr`, key `task:<id>:pr`; a second call is a no-op).
///
/// Errors: git and database errors.
pub fn after_push(
    db: &Db,
    project: &ProjectConfig,
    repo: &crate::git::Repo,
    task: &Task,
) -> anyhow::Result<()> {
    let sha = repo.head_sha(std::path::Path::new(&task.worktree))?;
    let now = now_ms();
    db.write(|tx| {
        tx.upsert_branch_head(&project.name, &task.branch, &sha, now)?;
        if project.forge == ForgeKind::Gitea {
            let mut body = format!(
                "Work item {} of project {}, opened by orch (task {}).",
                task.tracker_issue_id, project.name, task.id
            );
            if !task.body.trim().is_empty() {
                body = format!("{}\n\n{body}", task.body.trim());
            }
            tx.insert_outbox(
                &format!("task:{}:pr", task.id),
                Some(task.id),
                "forge",
                "open_pr",
                &json!({
                    "branch": task.branch,
                    "base": project.default_branch,
                    "title": format!("{} (orch task {})", task.title, task.id),
                    "body": body,
                }),
                now,
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

/// One look at the forge's combined status of the worktree's head, for the
/// reconciler, whose development gate would otherwise wait for a `status`
/// delivery that was lost. One API call; the statuses are stored in
/// `ci_statuses` when `store` (not in a dry run). Returns `(sha, combined
/// state)`, the state `""` when the forge has no status for the sha.
///
/// Errors: the head cannot be read, or Gitea cannot be asked.
pub fn check_ci_once(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &crate::git::Repo,
    task: &Task,
    store: bool,
) -> anyhow::Result<(String, String)> {
    let sha = repo.head_sha(std::path::Path::new(&task.worktree))?;
    let g = client(ctx).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cs = g
        .combined_status(&project.repo, &sha)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if store {
        store_statuses(db, project, &sha, &cs)?;
    }
    Ok((sha, cs.state))
}

/// The bounded CI poll of the worker's finalize for a fresh development
/// head of a Gitea project: polls the combined status of the worktree's
/// head every `ORCH_GITEA_CI_POLL_INTERVAL_MS` for up to
/// `ORCH_GITEA_CI_POLL_S` (at least once), storing every context's status
/// in `ci_statuses`, until the combined state is final (success, failure,
/// error). Never fails: a Gitea that cannot be asked is logged and left to
/// `status` deliveries and reconcile.
pub fn poll_ci(ctx: &Ctx, db: &Db, project: &ProjectConfig, repo: &crate::git::Repo, task: &Task) {
    if project.forge != ForgeKind::Gitea {
        return;
    }
    let sha = match repo.head_sha(std::path::Path::new(&task.worktree)) {
        Ok(s) => s,
        Err(e) => {
            warn!(target: "ci", task = task.id, error = %format!("{e:#}"), "cannot read the head to poll CI");
            return;
        }
    };
    let g = match client(ctx) {
        Ok(g) => g,
        Err(e) => {
            warn!(target: "ci", task = task.id, error = %e, "not polling Gitea CI");
            return;
        }
    };
    let s = &ctx.settings.adapters;
    let deadline = now_ms() + (s.gitea_ci_poll_s * 1000) as i64;
    let interval = s.gitea_ci_poll_interval_ms as i64;
    loop {
        let mut wait = interval;
        match g.combined_status(&project.repo, &sha) {
            Ok(cs) => {
                let stored = store_statuses(db, project, &sha, &cs);
                if let Err(e) = stored {
                    warn!(target: "ci", task = task.id, error = %format!("{e:#}"), "could not store CI status");
                    return;
                }
                if matches!(cs.state.as_str(), "success" | "failure" | "error") {
                    info!(target: "ci", task = task.id, sha = %sha, state = %cs.state, "Gitea CI finished");
                    return;
                }
            }
            Err(e) if e.retryable() => {
                warn!(target: "ci", task = task.id, error = %e, "Gitea CI poll failed; retrying");
                if let Some(ms) = e.retry_after_ms() {
                    wait = wait.max(ms as i64);
                }
            }
            Err(e) => {
                warn!(target: "ci", task = task.id, error = %e, "Gitea CI poll failed");
                return;
            }
        }
        if now_ms() + wait > deadline {
            info!(target: "ci", task = task.id, sha = %sha, "no final CI status yet; a status delivery or reconcile will pick it up");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(wait as u64));
    }
}

/// Stores every context of a combined status as a CI status of `sha`.
pub fn store_statuses(
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
                now,
            )?;
        }
        Ok(())
    })
}

/// Delivers a `forge` outbox message of `task`: `open_pr` (payload
/// `{branch, base, title, body}`) or `comment` (payload `{text}`, posted
/// on the task's PR with the dedupe-key marker). `sends_before` > 0 means
/// an earlier send may have reached Gitea: look before posting. Returns
/// the remote id (PR number, comment id).
pub fn deliver(
    db: &Db,
    g: &Gitea,
    msg: &OutboxRow,
    task: &Task,
    project: &ProjectConfig,
    sends_before: i64,
) -> Result<String, AdapterError> {
    let text = |k: &str| msg.payload.get(k).and_then(Value::as_str).unwrap_or("");
    match msg.kind.as_str() {
        "open_pr" => {
            let base = Some(text("base"))
                .filter(|b| !b.is_empty())
                .unwrap_or(&project.default_branch);
            let branch = Some(text("branch"))
                .filter(|b| !b.is_empty())
                .unwrap_or(&task.branch);
            let pr = g.ensure_pull(&project.repo, base, branch, text("title"), text("body"))?;
            record_pull(db, task, &pr);
            info!(target: "forge", task = task.id, pr = pr.number, "pull request open");
            Ok(pr.number.to_string())
        }
        "comment" => {
            let number = pull_number(g, db, task, project)?;
            let mark = marker(&msg.dedupe_key);
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
            let body = format!("{}\n\n{mark}", text("text"));
            let c = g.create_comment(&project.repo, number, &body)?;
            Ok(c.id.to_string())
        }
        other => Err(AdapterError::Rejected {
            service: SERVICE,
            op: format!("deliver {other}"),
            message: format!("unknown forge message kind {other:?}"),
        }),
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

fn pull_number(
    g: &Gitea,
    db: &Db,
    task: &Task,
    project: &ProjectConfig,
) -> Result<i64, AdapterError> {
    if let Ok(Some(pr)) = db.pull_request(task.id) {
        return Ok(pr.number);
    }
    match g.find_pull(&project.repo, &project.default_branch, &task.branch)? {
        Some(pr) => {
            record_pull(db, task, &pr);
            Ok(pr.number)
        }
        None => Err(AdapterError::NotYet {
            service: SERVICE,
            op: "comment".into(),
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
pub fn merge(
    ctx: &Ctx,
    project: &ProjectConfig,
    task: &Task,
    head_sha: &str,
) -> Result<MergeOutcome, AdapterError> {
    let g = client(ctx)?;
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
            service: SERVICE,
            op: "merge pull request".into(),
            message: format!("PR #{} was closed without merging", pr.number),
        });
    }
    let out = g.merge_pull(&project.repo, pr.number, project.merge_style, head_sha)?;
    info!(target: "merge", task = task.id, pr = pr.number, outcome = ?out, "Gitea merge");
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
pub fn merge_into_default(
    ctx: &Ctx,
    project: &ProjectConfig,
    task: &Task,
    head_sha: &str,
) -> anyhow::Result<crate::git::FastForward> {
    use crate::git::FastForward;
    match merge(ctx, project, task, head_sha) {
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

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gitea/api")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn parses_pull_requests() {
        let pr: PullRequest =
            serde_json::from_slice(&fixture("create-pull-request.201.json")).unwrap();
        assert_eq!(pr.number, 7);
        assert_eq!(pr.state, "open");
        assert!(!pr.merged);
        assert_eq!(pr.head.branch, "orch/ORCH-42-add-retry");
        assert_eq!(pr.base.branch, "main");
        assert_eq!(pr.html_url, "https://gitea.example.com/acme/widget/pulls/7");
        let pr: PullRequest =
            serde_json::from_slice(&fixture("get-pull-request.200.json")).unwrap();
        assert_eq!(pr.number, 7);
        let merged: PullRequest =
            serde_json::from_slice(&fixture("get-pull-request-merged.200.json")).unwrap();
        assert!(merged.merged);
        assert_eq!(merged.state, "closed");
        assert_eq!(
            merged.merge_commit_sha.as_deref(),
            Some("9ea412184b0f7bbaed4b87e23a5c32a3288febc3")
        );
        let list: Vec<PullRequest> =
            serde_json::from_slice(&fixture("list-pull-requests.200.json")).unwrap();
        assert!(!list.is_empty());
    }

    #[test]
    fn parses_combined_statuses_including_none() {
        let none: CombinedStatus =
            serde_json::from_slice(&fixture("combined-status-none.200.json")).unwrap();
        assert_eq!(none.state, "");
        assert_eq!(none.statuses, None);
        for (file, state) in [
            ("combined-status-success.200.json", "success"),
            ("combined-status-pending.200.json", "pending"),
            ("combined-status-failure.200.json", "failure"),
        ] {
            let cs: CombinedStatus = serde_json::from_slice(&fixture(file)).unwrap();
            assert_eq!(cs.state, state, "{file}");
            let st = cs.statuses.unwrap();
            assert!(!st.is_empty());
            assert!(st
                .iter()
                .all(|s| !s.status.is_empty() && !s.context.is_empty()));
        }
        let list: Vec<CommitStatus> =
            serde_json::from_slice(&fixture("list-statuses.200.json")).unwrap();
        assert!(!list.is_empty());
        let one: CommitStatus = serde_json::from_slice(&fixture("create-status.201.json")).unwrap();
        assert!(!one.context.is_empty());
    }

    #[test]
    fn parses_comments_and_errors() {
        let c: Comment = serde_json::from_slice(&fixture("create-issue-comment.201.json")).unwrap();
        assert_eq!(c.id, 211);
        assert!(c.body.contains("CI is green"));
        for (file, status, text) in [
            (
                "error-409-pr-exists.409.json",
                409,
                "pull request already exists",
            ),
            ("error-422-no-changes.422.json", 422, "There are no changes"),
            (
                "error-405-try-later.405.json",
                405,
                "Please try again later",
            ),
            (
                "error-405-not-ready.405.json",
                405,
                "Not all required status checks",
            ),
            ("error-404.404.json", 404, "not found"),
        ] {
            let r = Reply {
                status,
                body: fixture(file),
                ..Reply::default()
            };
            assert!(r.error_text().contains(text), "{file}: {}", r.error_text());
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let s = crate::config::AdapterSettings::load(&|_| None).unwrap();
        let g = Gitea::new(&s, "http://g", &crate::config::Secret::new("tok-SECRET"));
        assert!(!format!("{g:?}").contains("SECRET"), "{g:?}");
        let p = super::super::plane::Plane::new(
            &s,
            "http://p",
            "acme",
            &crate::config::Secret::new("plane-SECRET"),
        );
        assert!(!format!("{p:?}").contains("SECRET"), "{p:?}");
        assert_eq!(
            g.http.scrub("error for token tok-SECRET at /x"),
            "error for token [redacted] at /x"
        );
    }

    #[test]
    fn repo_paths_and_links() {
        assert_eq!(
            Gitea::repo_path("acme/widget").unwrap(),
            "repos/acme/widget"
        );
        assert!(matches!(
            Gitea::repo_path("widget"),
            Err(AdapterError::Config { .. })
        ));
        let l = Links {
            base: "https://g.example/acme/widget".into(),
        };
        assert_eq!(
            l.branch("orch/widget-1"),
            "https://g.example/acme/widget/src/branch/orch/widget-1"
        );
        assert_eq!(l.pull(7), "https://g.example/acme/widget/pulls/7");
        assert_eq!(l.commit("abc"), "https://g.example/acme/widget/commit/abc");
    }
}
