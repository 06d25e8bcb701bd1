//! The Gitea REST client (v1, `Authorization: token …`), per
//! `tests/fixtures/gitea/API.md` (Gitea 1.25). It knows URLs, the token and
//! Gitea's shapes, nothing of orch's database: the steps below are driven
//! by [`crate::forge`].
//!
//! What orch does on Gitea, and how each step stays safe to repeat:
//!
//! - **Open the task's pull request** on its first push — an outbox
//!   message (`forge`/`open_pr`, key `task:<id>:pr`) queued by
//!   `Forge::record_push` in finalize's one write. Delivery looks first (`GET /pulls/{base}/{head}`: the
//!   list API has no head filter), creates only when nothing is there, and
//!   counts a 409 "pull request already exists" as found.
//! - **Comment on the PR** (`forge`/`comment`): every body carries an
//!   invisible marker with the message's dedupe key; a send that may have
//!   reached Gitea before (a crash, a dropped answer) lists the PR's
//!   comments and reuses the one with the marker instead of posting again.
//! - **CI for the development gate**: the gate itself only reads
//!   `ci_statuses`; the worker's finalize never waits for CI. A status
//!   comes in as a `status` delivery (ingest) or is found by reconcile,
//!   which asks once per pass for a waiting task (`Forge::ci_state`);
//!   either records it and decides the gate again. A combined `state: ""` with `statuses: null` is "no status
//!   yet" — pending, never a failure.
//! - **Merge** at deploy-staging → deploy (`Forge::merge_into_default`) with the project's
//!   `merge_style` and `head_commit_id` (Gitea refuses if the head moved);
//!   a PR that GET shows merged is success, so a merge repeated after a
//!   crash is harmless. The other PRs of a merge-line batch are marked
//!   merged (`Do: manually-merged`, [`Gitea::mark_merged`]) by an outbox
//!   message, equally idempotent.

use serde::Deserialize;
use serde_json::json;

use super::http::{enabled, encode_path, encode_query, required, AdapterError, Api, Reply};
use crate::config::{AdapterSettings, MergeStyle, Secret};

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

/// `merged #3 (abc123)`, `already merged #3`, `not ready: …`, `conflict: …`.
impl std::fmt::Display for MergeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MergeOutcome::Merged {
                number,
                merge_commit,
            } => {
                write!(
                    f,
                    "merged #{number} ({})",
                    merge_commit.as_deref().unwrap_or("-")
                )
            }
            MergeOutcome::AlreadyMerged { number, .. } => write!(f, "already merged #{number}"),
            MergeOutcome::NotReady(why) => write!(f, "not ready: {why}"),
            MergeOutcome::Conflict(why) => write!(f, "conflict: {why}"),
        }
    }
}

/// A Gitea API client. `Debug` leaves out the token.
#[derive(Debug)]
pub struct Gitea {
    api: Api,
}

impl Gitea {
    /// A client for the API at `<url>/api/v1` with `token`.
    pub fn new(s: &AdapterSettings, url: &str, token: &Secret) -> Gitea {
        Gitea {
            api: Api::new(
                SERVICE,
                s,
                format!("{}/api/v1", url.trim_end_matches('/')),
                Some((
                    "Authorization",
                    Secret::new(format!("token {}", token.expose())),
                )),
                vec![token.clone()],
            ),
        }
    }

    /// The client from the settings.
    ///
    /// Errors: [`AdapterError::Disabled`] when `ORCH_FORGE_ENABLED` is off,
    /// [`AdapterError::Config`] naming `ORCH_GITEA_URL` or
    /// `ORCH_GITEA_TOKEN` when missing.
    pub fn from_settings(s: &AdapterSettings) -> Result<Gitea, AdapterError> {
        enabled(s.forge_enabled, SERVICE, "ORCH_FORGE_ENABLED")?;
        let why = "for projects with forge = \"gitea\"";
        let url = required(&s.gitea_url, "ORCH_GITEA_URL", why)?;
        let token = required(&s.gitea_token, "ORCH_GITEA_TOKEN", why)?;
        Ok(Gitea::new(s, url, token))
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
        let r = self.api.call("GET", &path, None, op)?;
        match r.status {
            200 => r.json(SERVICE, op).map(Some),
            404 => Ok(None),
            _ => Err(r.into_status_error(SERVICE, op)),
        }
    }

    /// The open PR from `head` into `base` found by listing the open PRs
    /// into `base` (`GET /repos/{o}/{r}/pulls?state=open&base_branch=…`,
    /// every page; Gitea has no head filter, so `head.ref` is compared
    /// here). For a Gitea older than 1.22, which lacks the base/head route
    /// of [`Gitea::find_pull`] (it answers 404 there).
    pub fn find_open_pull_listed(
        &self,
        repo: &str,
        base: &str,
        head: &str,
    ) -> Result<Option<PullRequest>, AdapterError> {
        const LIMIT: usize = 50;
        for page in 1..=20 {
            let path = format!(
                "{}/pulls?state=open&base_branch={}&sort=recentupdate&page={page}&limit={LIMIT}",
                Self::repo_path(repo)?,
                encode_query(base)
            );
            let prs: Vec<PullRequest> = self.api.json("GET", &path, None, "list pull requests")?;
            if let Some(pr) = prs
                .iter()
                .find(|p| p.head.branch == head && p.base.branch == base)
            {
                return Ok(Some(pr.clone()));
            }
            if prs.len() < LIMIT {
                break;
            }
        }
        Ok(None)
    }

    /// The PR number `number` (`GET /repos/{o}/{r}/pulls/{index}`).
    pub fn get_pull(&self, repo: &str, number: i64) -> Result<PullRequest, AdapterError> {
        let path = format!("{}/pulls/{number}", Self::repo_path(repo)?);
        self.api.json("GET", &path, None, "get pull request")
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
        let r = self.api.call(
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
        // returned an older closed one, or — Gitea < 1.22 — the base/head
        // lookup does not exist: then the open PRs are listed).
        if let Some(pr) = self.find_pull(repo, base, head)? {
            return Ok(pr);
        }
        match self.find_open_pull_listed(repo, base, head)? {
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
        let path = format!(
            "{}/commits/{}/status",
            Self::repo_path(repo)?,
            encode_path(sha, false)
        );
        self.api.json("GET", &path, None, "get combined status")
    }

    /// All comments of PR (issue) `number`
    /// (`GET /repos/{o}/{r}/issues/{index}/comments`).
    pub fn list_comments(&self, repo: &str, number: i64) -> Result<Vec<Comment>, AdapterError> {
        let path = format!("{}/issues/{number}/comments", Self::repo_path(repo)?);
        self.api.json("GET", &path, None, "list comments")
    }

    /// Posts a comment on PR (issue) `number`
    /// (`POST /repos/{o}/{r}/issues/{index}/comments`).
    pub fn create_comment(
        &self,
        repo: &str,
        number: i64,
        body: &str,
    ) -> Result<Comment, AdapterError> {
        let path = format!("{}/issues/{number}/comments", Self::repo_path(repo)?);
        self.api.json(
            "POST",
            &path,
            Some(&json!({ "body": body })),
            "create comment",
        )
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
        let r = self.post_merge(repo, number, &req, op)?;
        match r.status {
            200 => Ok(MergeOutcome::Merged {
                number,
                merge_commit: {
                    let pr = self.get_pull(repo, number)?;
                    pr.merged.then_some(pr.merge_commit_sha).flatten()
                },
            }),
            // A repeated merge: Gitea says no because it is done.
            405 | 409 => self.refused_merge(repo, number, r),
            _ => Err(r.into_status_error(SERVICE, op)),
        }
    }

    /// Marks PR `number` merged by `merge_commit` (40 hex, a commit the
    /// base branch holds), without merging anything: `POST
    /// /repos/{o}/{r}/pulls/{index}/merge` with `{"Do": "manually-merged",
    /// "MergeCommitID": …}`. Gitea checks the repository allows that style
    /// ("Allow to mark pull request as merged manually"; else 405), that
    /// the commit is a full sha it has (else 409 "Wrong commit ID") and
    /// that the base branch contains it (else 409). A PR that is merged
    /// already (by orch before, or by Gitea's own detection of a manual
    /// merge) is [`MergeOutcome::AlreadyMerged`].
    pub fn mark_merged(
        &self,
        repo: &str,
        number: i64,
        merge_commit: &str,
    ) -> Result<MergeOutcome, AdapterError> {
        let op = "mark pull request merged";
        let req = json!({ "Do": "manually-merged", "MergeCommitID": merge_commit });
        let r = self.post_merge(repo, number, &req, op)?;
        match r.status {
            200 => Ok(MergeOutcome::Merged {
                number,
                merge_commit: Some(merge_commit.to_string()),
            }),
            405 | 409 => self.refused_merge(repo, number, r),
            _ => Err(r.into_status_error(SERVICE, op)),
        }
    }

    /// `POST /repos/{o}/{r}/pulls/{number}/merge` with `req` (a merge or
    /// a mark-as-merged); the reply whatever its status.
    fn post_merge(
        &self,
        repo: &str,
        number: i64,
        req: &serde_json::Value,
        op: &str,
    ) -> Result<Reply, AdapterError> {
        self.api.call(
            "POST",
            &format!("{}/pulls/{number}/merge", Self::repo_path(repo)?),
            Some(req),
            op,
        )
    }

    /// What a 405 or 409 to a merge of PR `number` means: the PR is merged
    /// already (a repeat; Gitea says no because it is done) →
    /// [`MergeOutcome::AlreadyMerged`]; else 405 → `NotReady` and 409 →
    /// `Conflict`, with Gitea's message.
    fn refused_merge(
        &self,
        repo: &str,
        number: i64,
        r: Reply,
    ) -> Result<MergeOutcome, AdapterError> {
        let pr = self.get_pull(repo, number)?;
        if pr.merged {
            return Ok(MergeOutcome::AlreadyMerged {
                number,
                merge_commit: pr.merge_commit_sha,
            });
        }
        let text = r.error_text();
        Ok(if r.status == 405 {
            MergeOutcome::NotReady(text)
        } else {
            MergeOutcome::Conflict(text)
        })
    }
}

/// A repository's pull-request merge settings, per Gitea's REST
/// `Repository` (`GET /repos/{o}/{r}`; the fields orch reads). Each is
/// `None` when the answer lacks it: an older Gitea (`allow_fast_forward_only_merge`
/// came with the fast-forward-only style in 1.22).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RepoMergeSettings {
    /// `owner/name`.
    #[serde(default)]
    pub full_name: String,
    pub allow_merge_commits: Option<bool>,
    pub allow_rebase: Option<bool>,
    pub allow_rebase_explicit: Option<bool>,
    pub allow_squash_merge: Option<bool>,
    pub allow_fast_forward_only_merge: Option<bool>,
    /// "Allow to mark pull request as merged manually": what
    /// [`Gitea::mark_merged`] needs (else 405).
    pub allow_manual_merge: Option<bool>,
    /// Gitea marks a PR merged by itself when its head reaches the base.
    pub autodetect_manual_merge: Option<bool>,
}

impl RepoMergeSettings {
    /// Whether the repository allows merging with `style` (Gitea's
    /// `IsMergeStyleAllowed`), with the `allow_*` field that says so;
    /// `None` for the answer when the field is missing.
    pub fn allows(&self, style: MergeStyle) -> (&'static str, Option<bool>) {
        match style {
            MergeStyle::Merge => ("allow_merge_commits", self.allow_merge_commits),
            MergeStyle::Rebase => ("allow_rebase", self.allow_rebase),
            MergeStyle::RebaseMerge => ("allow_rebase_explicit", self.allow_rebase_explicit),
            MergeStyle::Squash => ("allow_squash_merge", self.allow_squash_merge),
            MergeStyle::FastForwardOnly => (
                "allow_fast_forward_only_merge",
                self.allow_fast_forward_only_merge,
            ),
        }
    }
}

impl Gitea {
    /// `repo`'s merge settings (`GET /repos/{o}/{r}`).
    ///
    /// Errors: transport, non-2xx (404: no such repository, or the
    /// token's user cannot see it) and malformed answers.
    pub fn repo_merge_settings(&self, repo: &str) -> Result<RepoMergeSettings, AdapterError> {
        self.api
            .json("GET", &Self::repo_path(repo)?, None, "get repository")
    }
}

/// A write scope of a Gitea access token that orch needs on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteScope {
    /// `write:repository`: open and merge pull requests.
    Repository,
    /// `write:issue`: comment on pull requests.
    Issue,
}

impl WriteScope {
    /// Gitea's name of the scope (`write:repository`, `write:issue`).
    pub fn name(self) -> &'static str {
        match self {
            WriteScope::Repository => "write:repository",
            WriteScope::Issue => "write:issue",
        }
    }
}

impl Gitea {
    /// The server's version (`GET /version`: `{"version": "1.25.4"}`).
    ///
    /// Errors: transport, non-2xx and malformed answers.
    pub fn version(&self) -> Result<String, AdapterError> {
        #[derive(Deserialize)]
        struct ServerVersion {
            version: String,
        }
        let v: ServerVersion = self.api.json("GET", "version", None, "get version")?;
        Ok(v.version)
    }

    /// Whether the token has `scope` on `repo`, found without changing
    /// anything: a POST with an empty JSON body to a route of that scope
    /// (`/pulls` for `write:repository`, `/issues/0/comments` for
    /// `write:issue`). Gitea checks the token's scope on the route group
    /// before the route binds its body, so the answer is 403 "token does
    /// not have at least one of required scope(s)" without the scope and
    /// 422 (a required field missing) with it; nothing is created either
    /// way (`tests/fixtures/gitea/api/README.md`). A token without scopes
    /// (Gitea < 1.19) passes.
    ///
    /// Errors: any other answer, as [`AdapterError::Status`]: 401 (token
    /// refused), 404 (no such repository, or the token's user cannot see
    /// it), 423 (archived); a 2xx as [`AdapterError::Malformed`].
    pub fn has_write_scope(&self, repo: &str, scope: WriteScope) -> Result<bool, AdapterError> {
        let route = match scope {
            WriteScope::Repository => "pulls",
            WriteScope::Issue => "issues/0/comments",
        };
        let path = format!("{}/{route}", Self::repo_path(repo)?);
        let op = format!("probe {}", scope.name());
        let r = self.api.call("POST", &path, Some(&json!({})), &op)?;
        match r.status {
            422 => Ok(true),
            403 if r.error_text().contains("required scope") => Ok(false),
            s if r.ok() => Err(AdapterError::Malformed {
                service: SERVICE,
                op,
                message: format!("an empty body was accepted ({s}): not the Gitea API?"),
            }),
            _ => Err(r.into_status_error(SERVICE, &op)),
        }
    }
}

/// `(major, minor, patch)` of a Gitea version string: `1.25.4`,
/// `1.22.0+dev-12-gabcdef`, or Forgejo's `11.0.1+gitea-1.22.0` (the Gitea
/// version it is compatible with). `None` for anything else.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.split_once("+gitea-").map_or(v, |(_, g)| g);
    let core = v.split(['+', '-']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Web links of a repository on Gitea's web UI.
#[derive(Debug, Clone)]
pub struct Links {
    base: String,
}

impl Links {
    /// Links of repository `repo` (`owner/name`) under the public URL
    /// `public_url` (`ORCH_GITEA_PUBLIC_URL`).
    pub fn new(public_url: &str, repo: &str) -> Links {
        Links {
            base: format!("{}/{}", public_url.trim_end_matches('/'), repo),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::http::Reply;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gitea/api")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn parses_versions_including_dev_builds_and_forgejo() {
        let v: serde_json::Value = serde_json::from_slice(&fixture("version.200.json")).unwrap();
        assert_eq!(
            parse_version(v["version"].as_str().unwrap()),
            Some((1, 25, 4))
        );
        assert_eq!(parse_version("1.22.0+dev-12-gabcdef"), Some((1, 22, 0)));
        assert_eq!(parse_version("11.0.1+gitea-1.22.0"), Some((1, 22, 0)));
        assert_eq!(parse_version("1.21"), Some((1, 21, 0)));
        assert_eq!(parse_version("main"), None);
        assert_eq!(parse_version(""), None);
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
        let s = AdapterSettings::load(&|_| None).unwrap();
        let g = Gitea::new(&s, "http://g", &Secret::new("tok-SECRET"));
        assert!(!format!("{g:?}").contains("SECRET"), "{g:?}");
        let p =
            super::super::plane::Plane::new(&s, "http://p", "acme", &Secret::new("plane-SECRET"));
        assert!(!format!("{p:?}").contains("SECRET"), "{p:?}");
        assert_eq!(
            g.api.scrub("error for token tok-SECRET at /x"),
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
