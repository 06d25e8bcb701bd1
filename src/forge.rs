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
//! CI statuses arrive as `status` deliveries or are looked up once by
//! reconcile ([`Forge::ci_state`]) and stored in `ci_statuses` (the gate
//! only reads that table; nothing waits for them); the merge of
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
use crate::db::{Db, OutboxRow, Task, Tx};
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

    /// Whether orch runs the project's CI itself (the local forge: the
    /// test command, by the CI step `orch ci`); a remote forge's CI
    /// reports through `status` deliveries and [`Forge::ci_state`].
    pub fn runs_own_ci(&self) -> bool {
        matches!(self, Forge::Local)
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

    /// After the worker pushed `task`'s branch to `sha`, in finalize's one
    /// transaction `tx`: records `sha` as the branch's known head (so a
    /// later `status` delivery for that sha finds its task) and, on Gitea,
    /// queues the task's PR ([`OpenPr`], key `task:<id>:pr`; a second call
    /// is a no-op). No network I/O: the PR is opened by the outbox's
    /// delivery.
    ///
    /// Errors: database errors.
    pub fn record_push(
        &self,
        tx: &Tx,
        project: &ProjectConfig,
        task: &Task,
        sha: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        tx.upsert_branch_head(&project.name, &task.branch, sha, now)?;
        if self.has_pull_requests() {
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

/// The local forge's CI of `sha`, the head of `task`'s worktree: runs the
/// project's test command there ([`run_tests`], confined) with its output
/// in [`local_ci_log`]. Returns `(state, log)`, the state `success` or
/// `failure`; stores nothing (the CI step records the status and decides
/// the gate in one transaction, `crate::ci`).
///
/// Errors: the command cannot be started or was stopped by a signal.
pub fn run_local_ci(
    ctx: &Ctx,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    sha: &str,
) -> anyhow::Result<(&'static str, std::path::PathBuf)> {
    let worktree = Path::new(&task.worktree);
    let passed = run_tests(ctx, project, repo, worktree, &local_ci_name(task.id, sha))?;
    let state = if passed { "success" } else { "failure" };
    Ok((state, local_ci_log(ctx, task.id, sha)))
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
