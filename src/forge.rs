//! The forge service: where a project's code lives, how its CI is read and
//! how it merges. [`Forge`] is the one place that knows the choice between
//! a local bare repository (CI = the project's test command, merge = a
//! fast-forward push) and Gitea (pull requests, commit statuses, merges
//! through the API); the worker, the merge gate, the reconciler and
//! `orch deliver` ask it, and never compare forge kinds themselves.
//!
//! What orch does on Gitea, and how each step stays safe to repeat, is
//! described in [`crate::adapters::gitea`]: the PR is opened by an outbox
//! message queued after the first push and looked up before it is
//! created; PR comments carry a hidden marker looked up before a re-post;
//! CI statuses are polled for a bounded time after a development push and
//! stored in `ci_statuses` (the gate only reads that table); the merge of
//! deploy-staging → deploy names the tested head sha, and a PR already
//! merged is success.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::adapters::gitea::{CombinedStatus, Gitea, Links, MergeOutcome, PullRequest};
use crate::adapters::{marker, AdapterError, Clients};
use crate::clock::now_ms;
use crate::config::{AdapterSettings, ForgeKind, ProjectConfig};
use crate::ctx::Ctx;
use crate::db::{Db, OutboxRow, Task};
use crate::git::{FastForward, Repo};
use crate::outbox::{self, ForgeMessage, Message, Occasion, OpenPr};
use crate::process::RunSpec;

/// A project's forge, chosen by `projects.forge`.
#[derive(Debug, Clone, Copy)]
pub enum Forge<'a> {
    /// A bare repository as origin: CI is the project's test command run
    /// by orch, a merge is a non-forced fast-forward push.
    Local,
    /// Gitea, through its REST client built from these settings.
    Gitea(&'a AdapterSettings),
}

impl<'a> Forge<'a> {
    /// The forge of `project`.
    pub fn for_project(ctx: &'a Ctx, project: &ProjectConfig) -> Forge<'a> {
        Forge::of(ctx, Some(project))
    }

    /// The forge of an outbox message's project; the local forge when the
    /// message has no (known) project.
    pub fn of(ctx: &'a Ctx, project: Option<&ProjectConfig>) -> Forge<'a> {
        match project.map(|p| p.forge) {
            Some(ForgeKind::Gitea) => Forge::Gitea(&ctx.settings.adapters),
            Some(ForgeKind::Local) | None => Forge::Local,
        }
    }

    /// A short name for logs and for grouping deliveries (`local forge`,
    /// `gitea`).
    pub fn name(&self) -> &'static str {
        match self {
            Forge::Local => "local forge",
            Forge::Gitea(_) => "gitea",
        }
    }

    /// Whether the forge is an outside service (its deliveries are
    /// announced before sending).
    pub fn is_remote(&self) -> bool {
        matches!(self, Forge::Gitea(_))
    }

    /// Whether the forge has pull requests (run reports are also posted
    /// on the task's PR).
    pub fn has_pull_requests(&self) -> bool {
        matches!(self, Forge::Gitea(_))
    }

    /// Web links of the project's branches, commits and PRs, when the
    /// forge has a web UI and `ORCH_GITEA_PUBLIC_URL` is set.
    pub fn links(&self, project: &ProjectConfig) -> Option<Links> {
        let Forge::Gitea(s) = self else {
            return None;
        };
        let url = s.gitea_public_url.as_ref()?;
        (!project.repo.is_empty()).then(|| Links::new(url, &project.repo))
    }

    /// After the worker pushed `task`'s branch: records the pushed head as
    /// the branch's known head (so a later `status` delivery for that sha
    /// finds its task) and, on Gitea, queues the task's PR
    /// ([`OpenPr`], key `task:<id>:pr`; a second call is a no-op).
    ///
    /// Errors: git and database errors.
    pub fn after_push(
        &self,
        db: &Db,
        project: &ProjectConfig,
        repo: &Repo,
        task: &Task,
    ) -> anyhow::Result<()> {
        let sha = repo.head_sha(Path::new(&task.worktree))?;
        let now = now_ms();
        let open_pr = self.has_pull_requests();
        db.write(|tx| {
            tx.upsert_branch_head(&project.name, &task.branch, &sha, now)?;
            if open_pr {
                let mut body = format!(
                    "Work item {} of project {}, opened by orch (task {}).",
                    task.tracker_issue_id, project.name, task.id
                );
                if !task.body.trim().is_empty() {
                    body = format!("{}\n\n{body}", task.body.trim());
                }
                let pr = OpenPr {
                    branch: task.branch.clone(),
                    base: project.default_branch.clone(),
                    title: format!("{} (orch task {})", task.title, task.id),
                    body,
                };
                outbox::queue(
                    tx,
                    &Occasion::Push { task_id: task.id },
                    &Message::Forge(ForgeMessage::OpenPr(pr)),
                    now,
                )?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// CI of a fresh development head, in the worker's finalize after the
    /// push. Local: runs the project's test command once per sha and
    /// stores the result (`orch/test`). Gitea: polls the head's combined
    /// status for up to `ORCH_GITEA_CI_POLL_S`, storing what it learns;
    /// never fails (what it does not learn comes as a `status` delivery or
    /// is found by reconcile).
    ///
    /// Errors (local only): git, process and database errors.
    pub fn ci_after_push(
        &self,
        ctx: &Ctx,
        db: &Db,
        project: &ProjectConfig,
        repo: &Repo,
        task: &Task,
    ) -> anyhow::Result<()> {
        match self {
            Forge::Local => run_local_ci(ctx, db, project, repo, task).map(|_| ()),
            Forge::Gitea(s) => {
                poll_ci(s, db, project, repo, task);
                Ok(())
            }
        }
    }

    /// One look at the forge's CI of the worktree's head, for the
    /// reconciler (whose development gate would otherwise wait for a
    /// `status` delivery that was lost): `Some((sha, combined state))`,
    /// the state `""` when the forge has no status for the sha; the
    /// statuses are stored when `store` (not in a dry run). `None` for the
    /// local forge, whose CI orch runs itself.
    ///
    /// Errors: the head cannot be read, or the forge cannot be asked.
    pub fn ci_state(
        &self,
        db: &Db,
        project: &ProjectConfig,
        repo: &Repo,
        task: &Task,
        store: bool,
    ) -> anyhow::Result<Option<(String, String)>> {
        match self {
            Forge::Local => Ok(None),
            Forge::Gitea(s) => check_ci_once(s, db, project, repo, task, store).map(Some),
        }
    }

    /// Moves the default branch to the worktree's head, the one
    /// forge-specific step of the merge gate. Local: a non-forced
    /// fast-forward push ([`Repo::fast_forward_default`]). Gitea: merges
    /// the task's PR with the project's `merge_style` on the tested head
    /// sha (opening the PR first if needed); merged or already merged as
    /// such, a 409 (conflict, head out of date: the base moved) as
    /// [`FastForward::NotFastForward`] so the gate catches up and tests
    /// again.
    ///
    /// Guarantees: idempotent (`AlreadyMerged` the second time).
    /// Errors: git errors; for Gitea, API errors and a merge Gitea refuses
    /// for now (405: checks running or missing, approvals).
    pub fn merge_into_default(
        &self,
        project: &ProjectConfig,
        repo: &Repo,
        task: &Task,
    ) -> anyhow::Result<FastForward> {
        match self {
            Forge::Local => repo.fast_forward_default(Path::new(&task.worktree)),
            Forge::Gitea(s) => {
                let head = repo.head_sha(Path::new(&task.worktree))?;
                gitea_merge_into_default(s, project, task, &head)
            }
        }
    }

    /// Delivers a forge message (`msg` is its row): on Gitea an [`OpenPr`]
    /// or a [`PrComment`](crate::outbox::PrComment) (posted on the task's
    /// PR with the dedupe-key marker); the local forge has nothing to send. `sends_before` > 0 means an earlier send may
    /// have reached the forge: look before posting. Returns the remote id
    /// (PR number, comment id).
    ///
    /// Errors: [`AdapterError`]s; a Gitea message whose task or project is
    /// gone is [`AdapterError::Rejected`].
    #[allow(clippy::too_many_arguments)]
    pub fn deliver(
        &self,
        db: &Db,
        clients: &Clients,
        msg: &OutboxRow,
        message: &ForgeMessage,
        task: Option<&Task>,
        project: Option<&ProjectConfig>,
        sends_before: i64,
    ) -> Result<Option<String>, AdapterError> {
        match self {
            Forge::Local => {
                info!(target: "forge", key = %msg.dedupe_key, kind = %msg.kind, "local forge: nothing to send");
                Ok(None)
            }
            Forge::Gitea(s) => {
                let (Some(task), Some(project)) = (task, project) else {
                    return Err(crate::tracker::gone("gitea", msg));
                };
                let g = clients.gitea(s)?;
                deliver_gitea(db, g, msg, message, task, project, sends_before).map(Some)
            }
        }
    }
}

/// One look at the forge's combined status of the worktree's head, for the
/// reconciler, whose development gate would otherwise wait for a `status`
/// delivery that was lost. One API call; the statuses are stored in
/// `ci_statuses` when `store` (not in a dry run). Returns `(sha, combined
/// state)`, the state `""` when the forge has no status for the sha.
///
/// Errors: the head cannot be read, or Gitea cannot be asked.
fn check_ci_once(
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

/// The bounded CI poll of the worker's finalize for a fresh development
/// head of a Gitea project: polls the combined status of the worktree's
/// head every `ORCH_GITEA_CI_POLL_INTERVAL_MS` for up to
/// `ORCH_GITEA_CI_POLL_S` (at least once), storing every context's status
/// in `ci_statuses`, until the combined state is final (success, failure,
/// error). Never fails: a Gitea that cannot be asked is logged and left to
/// `status` deliveries and reconcile.
fn poll_ci(s: &AdapterSettings, db: &Db, project: &ProjectConfig, repo: &Repo, task: &Task) {
    let sha = match repo.head_sha(Path::new(&task.worktree)) {
        Ok(s) => s,
        Err(e) => {
            warn!(target: "ci", task = task.id, error = %format!("{e:#}"), "cannot read the head to poll CI");
            return;
        }
    };
    let g = match Gitea::from_settings(s) {
        Ok(g) => g,
        Err(e) => {
            warn!(target: "ci", task = task.id, error = %e, "not polling Gitea CI");
            return;
        }
    };
    // This process's own span: on the monotonic clock, which no change of
    // the wall clock stretches or cuts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(s.gitea_ci_poll_s);
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
        if std::time::Instant::now() + std::time::Duration::from_millis(wait as u64) > deadline {
            info!(target: "ci", task = task.id, sha = %sha, "no final CI status yet; a status delivery or reconcile will pick it up");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(wait as u64));
    }
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
/// the PR, or comment on it with the dedupe-key marker. `sends_before` > 0 means
/// an earlier send may have reached Gitea: look before posting. Returns
/// the remote id (PR number, comment id).
fn deliver_gitea(
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
            let number = pull_number(g, db, task, project)?;
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
fn gitea_merge_into_default(
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

fn local_ci_name(task_id: i64, sha: &str) -> String {
    format!("ci-task{task_id}-{}", &sha[..sha.len().min(12)])
}

/// The log of the local forge's CI run of task `task_id` on `sha`
/// (`<logs>/ci-task<id>-<sha12>.log`; it exists once the tests ran).
pub fn local_ci_log(ctx: &Ctx, task_id: i64, sha: &str) -> std::path::PathBuf {
    ctx.log_path(&format!("{}.log", local_ci_name(task_id, sha)))
}

/// The local forge's CI: runs the project's test command on the worktree's
/// head once per sha and stores the result as CI status `orch/test`.
///
/// Guarantees: idempotent per sha (a stored status is not re-run).
fn run_local_ci(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
) -> anyhow::Result<String> {
    let worktree = Path::new(&task.worktree);
    let sha = repo.head_sha(worktree)?;
    if let Some(state) = db.combined_ci_state(&project.name, &sha)? {
        return Ok(state);
    }
    let passed = run_tests(ctx, project, repo, worktree, &local_ci_name(task.id, &sha))?;
    let state = if passed { "success" } else { "failure" };
    // The run's own log, recorded by orch: the next developer's feedback
    // reads it from here, never from a path named in text.
    let log = local_ci_log(ctx, task.id, &sha);
    db.write(|tx| {
        tx.upsert_ci_status(
            &project.name,
            &sha,
            crate::db::ORCH_TEST_CONTEXT,
            state,
            "",
            Some(&log.to_string_lossy()),
            now_ms(),
        )
    })?;
    info!(target: "ci", task = task.id, sha = %sha, state, "local CI finished");
    Ok(state.to_string())
}

/// Runs the project's test command in `dir` (a worktree of `repo`) with
/// its timeout, confined as agents are ([`crate::sandbox::test_runner`]):
/// it is code the agents may have written. The output goes to
/// `<logs>/<name>.log`. Returns whether it exited 0.
///
/// Errors: the command cannot be started; `ORCH_AGENT_SANDBOX=bwrap` and
/// bubblewrap does not work here.
pub fn run_tests(
    ctx: &Ctx,
    project: &ProjectConfig,
    repo: &Repo,
    dir: &Path,
    name: &str,
) -> anyhow::Result<bool> {
    let runner = crate::sandbox::test_runner(&ctx.settings, &repo.clone_dir, dir)?;
    let spec = RunSpec {
        argv: project.test_command.clone(),
        cwd: dir.to_path_buf(),
        env: vec![],
        env_remove_prefix: Some("ORCH_".into()),
        stdin_path: None,
        log_path: ctx.log_path(&format!("{name}.log")),
        timeout: Duration::from_secs(project.test_timeout_s),
        kill_grace: Duration::from_secs(ctx.settings.kill_grace_s),
    };
    let out = runner
        .run(&spec, Duration::from_millis(200), |_| Ok(()), || Ok(()))
        .with_context(|| {
            format!(
                "test command {:?} cannot be started (projects.{}.test_command)",
                project.test_command, project.name
            )
        })?;
    if let crate::process::ExitKind::Stopped(sig) = out.exit {
        // Not a red run: the worker is stopping; the next attempt re-tests.
        anyhow::bail!(
            "test command stopped by {}: the worker is stopping",
            crate::process::signal_name(sig)
        );
    }
    Ok(out.exit_code() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};
    use crate::notifier::Notifier;
    use crate::tracker::Tracker;

    fn ctx(env: &[(&str, &str)]) -> Ctx {
        let env: std::collections::BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = Settings::load(&|k| env.get(k).cloned(), None, None).unwrap();
        let config = Config::parse(
            "[[projects]]\nname = \"loc\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n\
             [[projects]]\nname = \"remote\"\nforge = \"gitea\"\nrepo = \"acme/widget\"\n\
             tracker = \"plane\"\ntracker_project_id = \"p1\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n",
        )
        .unwrap();
        Ctx { settings, config }
    }

    #[test]
    fn each_service_follows_the_projects_choice() {
        let ctx = ctx(&[
            ("ORCH_GITEA_PUBLIC_URL", "https://g.example"),
            ("ORCH_PLANE_PUBLIC_URL", "https://p.example"),
            ("ORCH_PLANE_WORKSPACE", "acme"),
            ("ORCH_NOTIFIER", "telegram"),
        ]);
        let (loc, remote) = (&ctx.config.projects[0], &ctx.config.projects[1]);

        let f = Forge::for_project(&ctx, loc);
        assert!(!f.is_remote() && !f.has_pull_requests() && f.links(loc).is_none());
        assert!(!Forge::of(&ctx, None).is_remote());
        let f = Forge::for_project(&ctx, remote);
        assert!(f.is_remote() && f.has_pull_requests());
        assert_eq!(
            f.links(remote).unwrap().pull(7),
            "https://g.example/acme/widget/pulls/7"
        );

        let t = Tracker::for_project(&ctx, loc);
        assert!(t.takes_local_issues() && !t.is_remote());
        assert_eq!(t.work_item_link(loc, "1"), None);
        let t = Tracker::for_project(&ctx, remote);
        assert!(!t.takes_local_issues() && t.is_remote());
        assert_eq!(
            t.work_item_link(remote, "i9").as_deref(),
            Some("https://p.example/acme/projects/p1/issues/i9")
        );

        assert!(Notifier::from_settings(&ctx).is_remote());
        assert!(!Notifier::from_settings(&self::ctx(&[])).is_remote());
    }
}
