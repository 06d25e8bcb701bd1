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
//!
//! A forge is this folder: the enum dispatch here, and each kind in its
//! own file — `local` (a bare repository; CI run by orch) and `gitea`
//! (through its REST client, and its webhook deliveries). Adding a forge
//! is a file here, its arm in [`Forge`], and its entry in
//! `webhook::SOURCES`.

pub mod gitea;
mod local;

pub use local::{local_ci_log, run_local_ci, run_tests};

use std::path::Path;

use tracing::info;

use crate::adapters::gitea::Links;
use crate::adapters::{AdapterError, Clients};
use crate::config::{AdapterSettings, ForgeKind, MergeStyle, ProjectConfig};
use crate::ctx::Ctx;
use crate::db::{Db, OutboxRow, Task, Tx};
use crate::git::{FastForward, Repo};
use crate::outbox::{self, ForgeMessage, Message, Occasion, OpenPr};

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
        match self {
            Forge::Gitea(s) => gitea::links(s, project),
            Forge::Local => None,
        }
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
            Forge::Gitea(s) => gitea::check_ci_once(s, db, project, repo, task, store).map(Some),
        }
    }

    /// Whether a merge through this forge with `project`'s `merge_style`
    /// moves main to exactly the commit the merge line tested (DESIGN §7,
    /// "main only moves by fast-forward to a tested tip"). The local forge
    /// always does (a non-forced fast-forward push). On Gitea only
    /// `fast-forward-only` does (Gitea refuses when main moved; needs
    /// Gitea ≥ 1.22): `merge` and `rebase-merge` write a merge commit and
    /// `squash` a new commit on main, and `rebase` replays the branch onto
    /// whatever main holds when Gitea merges — `head_commit_id` guards the
    /// PR's head, not the base, so a main that moved after the line's
    /// build would get a tree nobody tested, and a merge cannot be undone.
    /// Checked by `orch config check`, by the merge line and the by-hand
    /// gate before anything happens, and by [`Forge::merge_into_default`].
    ///
    /// Errors: [`crate::error::Error::Config`] naming the project's
    /// `merge_style` setting and why.
    pub fn lands_tested_tip(&self, project: &ProjectConfig) -> Result<(), crate::error::Error> {
        let style = project.merge_style;
        match self {
            Forge::Local => Ok(()),
            Forge::Gitea(_) if style == MergeStyle::FastForwardOnly => Ok(()),
            Forge::Gitea(_) => {
                let writes = match style {
                    MergeStyle::Rebase => {
                        "replays the branch onto whatever main holds when it merges"
                    }
                    MergeStyle::Squash => "writes a new squashed commit on main",
                    _ => "writes a merge commit on main",
                };
                Err(crate::error::Error::config(
                    format!("projects.{}.merge_style", project.name),
                    format!(
                        "{:?}: Gitea {writes}, a tree the merge line never tested if main moved \
                         after its build; project {} merges nothing until it is \
                         \"fast-forward-only\" (Gitea 1.22 or later)",
                        style.as_str(),
                        project.name
                    ),
                ))
            }
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
    /// Guarantees: idempotent (`AlreadyMerged` the second time); main ends
    /// on the tested head or does not move ([`Forge::lands_tested_tip`]).
    /// Errors: a `merge_style` refused by [`Forge::lands_tested_tip`]
    /// (nothing is sent); git errors; for Gitea, API errors and a merge
    /// Gitea refuses for now (405: checks running or missing, approvals).
    pub fn merge_into_default(
        &self,
        project: &ProjectConfig,
        repo: &Repo,
        task: &Task,
    ) -> anyhow::Result<FastForward> {
        self.lands_tested_tip(project)?;
        match self {
            Forge::Local => repo.fast_forward_default(Path::new(&task.worktree)),
            Forge::Gitea(s) => {
                let head = repo.head_sha(Path::new(&task.worktree))?;
                gitea::merge_into_default(s, project, task, &head)
            }
        }
    }

    /// Delivers a forge message (`msg` is its row): on Gitea an [`OpenPr`],
    /// a [`PrComment`](crate::outbox::PrComment) (posted on the task's
    /// PR with the dedupe-key marker) or a
    /// [`MarkMerged`](crate::outbox::MarkMerged) (the PR of a task that
    /// landed inside a merge-line batch, marked merged); the local forge
    /// has nothing to send. `sends_before` > 0 means an earlier send may
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
                gitea::deliver(db, g, msg, message, task, project, sends_before).map(Some)
            }
        }
    }
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
