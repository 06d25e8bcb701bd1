//! `orch reconcile`: level-triggered repair of what a lost event left
//! behind (DESIGN §5). It acts on observed state, never on the event that
//! should have woken it, and every action goes through the same handlers
//! and the same transition rule as the event would have.
//!
//! A pass, in order:
//!
//! - **F-2, tracker side** (`ORCH_RECONCILE_PLANE_ENABLED`): per project
//!   whose tracker is Plane, list the work items (all pages, once per pass)
//!   and replay those in In Progress / Approved / Rejected through
//!   `ingest::on_work_item`, the handler webhooks use. One failing project
//!   or item never stops the pass.
//! - **F-3**: a Gitea `status` delivery whose sha matched no branch head is
//!   attributed to the project's single development-stage task (zero or
//!   several candidates: left alone, and the reason is reported), then
//!   replayed through ingest.
//! - **F-1, gate side**: tasks not done, not escalated, with no queued or
//!   running job and unchanged for `grace_for_stage(stage)` get their gate
//!   evaluated read-only; `Pass` advances them with actor `reconciler`;
//!   at development a red CI status (`Rollback`) sends the task back
//!   through the rule a `status` delivery uses
//!   ([`crate::pipeline::ci::on_status`]); `Fail`/`Pending` leave them,
//!   silently. The guards, each a silent skip,
//!   in this order: analysis (a human gate, never advanced here); the
//!   developer retry count at `ORCH_MAX_DEVELOPER_RETRIES`; the tracker
//!   shows the item Blocked or Needs Input; the tracker errs or the project
//!   is unknown (counted as blocked). The networked guard runs only for
//!   tasks whose gate passed, and reads the project's one listing, so a
//!   pass makes no per-task network calls
//!   (`ORCH_RECONCILE_SKIP_BLOCKED_ENABLED=false` turns off only it).
//!
//! Every unblock logs one line, bumps `reconcile.unblocked_total` and
//! queues one notification. The pass report is stored for `orch status`
//! and `GET /queue` when it differs from the last one stored (an idle pass
//! writes nothing; the `reconcile` tick stamp says when it last ran).
//! `--dry-run` runs the same code in transactions that are rolled back
//! and writes nothing. Each phase reports exactly the actions a real pass
//! would take, but a later phase does not see an
//! earlier phase's rehearsed changes (a task F-2 would create is not there
//! for F-1 to skip), and rehearsed new tasks all show the next free id.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::{ProjectConfig, StateKind};
use crate::ctx::Ctx;
use crate::db::Db;
use crate::outbox::{self, Message, Notification, NotifyKind, Occasion};
use crate::pipeline::ci::CiDecision;
use crate::pipeline::gate::{self, Gate};
use crate::pipeline::{self, Actor, Move, Moved, Stage};
pub use crate::tracker::TrackerItem;
use crate::webhook::Source;
use crate::webhook_source::Event;

/// What the reconciler asks the tracker: a project's whole listing.
/// [`run_with`] calls it at most once per project per pass, so a pass makes
/// no per-task tracker calls whatever the implementation.
pub trait Tracker {
    /// The project's work items in a state orch knows (In Progress,
    /// Approved, Rejected, Blocked, Needs Input, Done), by tracker issue
    /// id. `Err` is a tracker error, with its message.
    fn items(
        &mut self,
        ctx: &Ctx,
        db: &Db,
        project: &ProjectConfig,
    ) -> Result<HashMap<String, TrackerItem>, String>;
}

/// The real trackers ([`crate::tracker::Tracker`]): Plane through its
/// client, the local tracker from the database.
#[derive(Default)]
pub struct LiveTracker {
    /// A dry run: what the listing learns (state ids) is not cached.
    pub read_only: bool,
}

impl Tracker for LiveTracker {
    fn items(
        &mut self,
        ctx: &Ctx,
        db: &Db,
        project: &ProjectConfig,
    ) -> Result<HashMap<String, TrackerItem>, String> {
        crate::tracker::Tracker::for_project(ctx, project).items(ctx, db, project, !self.read_only)
    }
}

/// Each project's listing, fetched at most once per pass.
struct Listings<'a> {
    tracker: &'a mut dyn Tracker,
    cache: HashMap<String, Result<HashMap<String, TrackerItem>, String>>,
}

impl Listings<'_> {
    fn get(
        &mut self,
        ctx: &Ctx,
        db: &Db,
        project: &ProjectConfig,
    ) -> &Result<HashMap<String, TrackerItem>, String> {
        self.cache
            .entry(project.name.clone())
            .or_insert_with(|| self.tracker.items(ctx, db, project))
    }
}

/// What a pass saw and did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Pass {
    pub at_ms: i64,
    pub dry_run: bool,
    /// False when `ORCH_RECONCILE_ENABLED=false` stopped the pass.
    pub enabled: bool,
    /// Tasks whose gate was evaluated (F-1).
    pub examined: usize,
    /// `(task id, from, to)` advanced by F-1.
    pub unblocked: Vec<(i64, String, String)>,
    /// `(task id, reason)` sent back to development by F-1 because their
    /// head's CI is red (a status the forge reported and whose delivery
    /// was lost), through the rule a `status` delivery uses.
    pub ci_failed: Vec<(i64, String)>,
    /// Skipped tasks by reason (`analysis is a human gate`, `developer
    /// retry cap reached`, `tracker shows Blocked`, `tracker error`, …).
    pub skipped: BTreeMap<String, Vec<i64>>,
    /// F-2: `(project, tracker issue id, outcome)` of replayed work items.
    pub replayed: Vec<(String, String, String)>,
    /// F-3: `(inbox id, outcome)` of orphan CI statuses looked at.
    pub attributed: Vec<(i64, String)>,
    /// `(project, error)` of projects whose tracker failed this pass.
    pub errors: Vec<(String, String)>,
    /// Tracker listings fetched (one per project at most).
    pub tracker_listings: usize,
}

impl Pass {
    fn skip(&mut self, task: i64, reason: Skip) {
        self.skipped
            .entry(reason.as_str().to_string())
            .or_default()
            .push(task);
    }
}

/// Why the gate side (F-1) left a task alone: the keys of
/// [`Pass::skipped`], stored in the pass report as their text
/// ([`Skip::as_str`]) and read back by `orch why` ([`FromStr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    HumanGate,
    RetryCap,
    NotInRegistry,
    MergeGate,
    TrackerError,
    TrackerBlocked,
    TrackerNeedsInput,
}

impl Skip {
    /// Every reason.
    pub const ALL: [Skip; 7] = [
        Skip::HumanGate,
        Skip::RetryCap,
        Skip::NotInRegistry,
        Skip::MergeGate,
        Skip::TrackerError,
        Skip::TrackerBlocked,
        Skip::TrackerNeedsInput,
    ];

    /// The text of the reason, as the pass report stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::HumanGate => "analysis is a human gate",
            Skip::RetryCap => "developer retry cap reached",
            Skip::NotInRegistry => "project not in the registry (counted as blocked)",
            Skip::MergeGate => "deploy-staging advances through the merge gate",
            Skip::TrackerError => "tracker error (counted as blocked)",
            Skip::TrackerBlocked => "tracker shows Blocked",
            Skip::TrackerNeedsInput => "tracker shows Needs Input",
        }
    }

    /// The task waits for the tracker (an item Blocked or Needs Input
    /// there, or a tracker that failed): what `orch why` names as its wait.
    pub fn is_tracker(self) -> bool {
        matches!(
            self,
            Skip::TrackerError | Skip::TrackerBlocked | Skip::TrackerNeedsInput
        )
    }
}

impl FromStr for Skip {
    type Err = String;
    fn from_str(s: &str) -> Result<Skip, String> {
        Skip::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown reconcile skip reason {s:?}"))
    }
}

/// Runs one pass against the live trackers. See the module docs.
///
/// Assumptions: the caller holds the `reconcile` tick lock.
pub fn run(ctx: &Ctx, db: &Db, dry_run: bool) -> anyhow::Result<Pass> {
    let mut tracker = LiveTracker { read_only: dry_run };
    let pass = run_with(ctx, db, &mut tracker, dry_run)?;
    if !dry_run && ctx.settings.reconcile_enabled {
        let report = serde_json::to_value(&pass)?;
        if worth_recording(db.last_reconcile_pass()?.as_ref(), &report) {
            db.write(|tx| tx.record_reconcile_pass(pass.at_ms, &report))?;
        }
    }
    Ok(pass)
}

/// Whether a pass's report is kept: when it differs from the last one
/// recorded apart from its time (or none is). An idle pass therefore
/// writes nothing to the database — no commit, no fsync, no growth; when
/// it last ran is the `reconcile` tick stamp ([`Ctx::mark_tick_ok`]), which
/// `orch status` shows beside the last recorded report.
fn worth_recording(last: Option<&serde_json::Value>, report: &serde_json::Value) -> bool {
    let Some(last) = last else { return true };
    let without_time = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("at_ms");
        }
        v
    };
    without_time(last) != without_time(report)
}

/// Runs one pass against `tracker` (tests and the benchmark count its
/// calls).
pub fn run_with(
    ctx: &Ctx,
    db: &Db,
    tracker: &mut dyn Tracker,
    dry_run: bool,
) -> anyhow::Result<Pass> {
    let mut pass = Pass {
        at_ms: now_ms(),
        dry_run,
        enabled: ctx.settings.reconcile_enabled,
        ..Pass::default()
    };
    if !ctx.settings.reconcile_enabled {
        return Ok(pass);
    }
    let mut listings = Listings {
        tracker,
        cache: HashMap::new(),
    };
    if ctx.settings.reconcile_plane_enabled {
        tracker_side(ctx, db, &mut listings, dry_run, &mut pass)?;
    }
    orphan_statuses(ctx, db, dry_run, &mut pass)?;
    gate_side(ctx, db, &mut listings, dry_run, &mut pass)?;
    pass.tracker_listings = listings.cache.len();
    Ok(pass)
}

/// F-2: replay the tracker's In Progress / Approved / Rejected items.
fn tracker_side(
    ctx: &Ctx,
    db: &Db,
    listings: &mut Listings,
    dry_run: bool,
    pass: &mut Pass,
) -> anyhow::Result<()> {
    for project in ctx
        .config
        .projects
        .iter()
        .filter(|p| crate::tracker::Tracker::for_project(ctx, p).is_remote())
    {
        let items = match listings.get(ctx, db, project) {
            Ok(items) => items,
            Err(e) => {
                warn!(target: "reconcile", project = %project.name, error = %e, "tracker listing failed; skipping the project");
                pass.errors.push((project.name.clone(), e.clone()));
                continue;
            }
        };
        let mut items: Vec<&TrackerItem> = items
            .values()
            .filter(|i| {
                matches!(
                    i.kind,
                    StateKind::InProgress | StateKind::Approved | StateKind::Rejected
                )
            })
            .collect();
        items.sort_by_key(|i| i.item.sequence);
        for i in items {
            let now = now_ms();
            let handled = db.write_or_rehearse(dry_run, |tx| {
                crate::ingest::on_work_item(
                    ctx,
                    tx,
                    project,
                    &i.item,
                    i.kind,
                    &i.state_name,
                    Actor::Reconciler,
                    now,
                )
            });
            match handled {
                Ok(h) => {
                    if h.outcome.changed_pipeline() {
                        info!(target: "reconcile", project = %project.name, item = %i.item.tracker_issue_id, outcome = %h.outcome, "replayed work item");
                    }
                    if let (Some(task), false) = (h.created_task, dry_run) {
                        crate::ingest::prepare_worktree(ctx, db, task);
                    }
                    pass.replayed.push((
                        project.name.clone(),
                        i.item.tracker_issue_id.clone(),
                        h.outcome.to_string(),
                    ));
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    warn!(target: "reconcile", project = %project.name, item = %i.item.tracker_issue_id, error = %msg, "replay failed");
                    pass.replayed.push((
                        project.name.clone(),
                        i.item.tracker_issue_id.clone(),
                        format!("error: {msg}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// F-3: attribute CI statuses whose sha matched no branch head (received
/// in the last day) to the project's single development-stage task, then
/// replay them through ingest.
fn orphan_statuses(ctx: &Ctx, db: &Db, dry_run: bool, pass: &mut Pass) -> anyhow::Result<()> {
    const LOOKBACK_MS: i64 = 24 * 3600 * 1000;
    let orphans = db.orphan_status_deliveries(now_ms() - LOOKBACK_MS)?;
    if orphans.is_empty() {
        return Ok(());
    }
    let tasks = db.unfinished_tasks()?;
    for crate::db::StoredDelivery {
        id: inbox_id,
        source,
        event,
        body,
    } in orphans
    {
        // The sender reads its own body, as ingest had it read.
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        let Some(Ok(Event::Status { repo, sha, .. })) =
            Source::named(&source).map(|s| s.parse(&event, &v))
        else {
            continue;
        };
        let sha = sha.as_str();
        let Some(project) = ctx.config.projects.iter().find(|p| p.repo == repo) else {
            continue;
        };
        let candidates: Vec<_> = tasks
            .iter()
            .filter(|t| t.project == project.name && t.stage == Stage::Development && !t.escalated)
            .collect();
        let outcome = match candidates.as_slice() {
            [task] => {
                let now = now_ms();
                if dry_run {
                    format!(
                        "would attribute {sha} to task {} ({})",
                        task.id, task.branch
                    )
                } else {
                    db.write(|tx| {
                        tx.upsert_branch_head(&project.name, &task.branch, sha, now)?;
                        tx.reset_delivery(inbox_id)
                    })?;
                    let replay = crate::ingest::ingest_one(ctx, db, inbox_id)?;
                    info!(target: "reconcile", delivery = inbox_id, task = task.id, sha, "attributed an orphan CI status");
                    format!("attributed {sha} to task {}: {replay}", task.id)
                }
            }
            [] => format!("left {sha}: no development-stage task in {}", project.name),
            many => format!(
                "left {sha}: {} development-stage tasks in {} (ambiguous)",
                many.len(),
                project.name
            ),
        };
        pass.attributed.push((inbox_id, outcome));
    }
    Ok(())
}

/// F-1: advance tasks whose gate passes without the event that should
/// have said so.
fn gate_side(
    ctx: &Ctx,
    db: &Db,
    listings: &mut Listings,
    dry_run: bool,
    pass: &mut Pass,
) -> anyhow::Result<()> {
    let now = now_ms();
    let max_retries = ctx.settings.max_developer_retries as i64;
    for task in db.unfinished_tasks_without_active_jobs()? {
        let stage = task.stage;
        if stage == Stage::Done || task.escalated {
            continue;
        }
        if now - task.updated_at_ms < ctx.settings.grace_for_stage(stage) as i64 * 1000 {
            continue;
        }
        // Guards, each a silent skip, in order.
        if stage == Stage::Analysis {
            pass.skip(task.id, Skip::HumanGate);
            continue;
        }
        if task.developer_retries >= max_retries {
            pass.skip(task.id, Skip::RetryCap);
            continue;
        }
        let Some(project) = ctx.config.project(&task.project) else {
            pass.skip(task.id, Skip::NotInRegistry);
            continue;
        };
        pass.examined += 1;
        let repo = ctx.repo(project);
        let mut facts = gate::gather(db, project, &repo, &task)?;
        let mut verdict = gate::decide(stage, &facts);
        // A remote forge's CI result lives at the forge (the local forge's
        // is stored by orch): when the gate waits for a status whose
        // delivery may have been lost, ask once.
        if stage == Stage::Development && matches!(verdict, Gate::Pending(_)) {
            let forge = crate::forge::Forge::for_project(ctx, project);
            match forge.ci_state(db, project, &repo, &task, !dry_run) {
                Ok(None) => {}
                Ok(Some((sha, state))) => {
                    if dry_run {
                        let state = if state == "error" {
                            "failure".to_string()
                        } else {
                            state
                        };
                        facts.ci = Some((sha, Some(state).filter(|s| !s.is_empty())));
                    } else {
                        facts = gate::gather(db, project, &repo, &task)?;
                    }
                    verdict = gate::decide(stage, &facts);
                }
                Err(e) => {
                    warn!(target: "reconcile", task = task.id, error = %format!("{e:#}"), "could not ask the forge for CI")
                }
            }
        }
        if stage == Stage::Development && matches!(verdict, Gate::Rollback { .. }) {
            // Red CI: the task goes back to development through the one
            // rule for a recorded CI status.
            let decision = db.write_or_rehearse(dry_run, |tx| {
                let Some(current) = tx.task(task.id)? else {
                    return Ok(None);
                };
                let d = pipeline::ci::on_status(
                    tx,
                    ctx.policy(),
                    project,
                    &repo,
                    &current,
                    pipeline::ci::RecordedBy {
                        actor: Actor::Reconciler,
                        job: None,
                    },
                    now,
                )?;
                Ok(Some(d))
            })?;
            if let Some(CiDecision::Moved { why, .. }) = decision {
                if !dry_run {
                    info!(target: "reconcile", task = task.id, reason = %why, "CI red: back to development");
                }
                pass.ci_failed.push((task.id, why));
            }
            continue;
        }
        if verdict != Gate::Pass {
            continue;
        }
        if stage == Stage::DeployStaging {
            // The merge is the merge line's step (`orch merge-gate`, under
            // the merge lease), never the reconciler's: a passing
            // deploy-staging gate without a job means the deployer's job
            // finished with the task in the line (ready, or awaiting its
            // staging check); `orch why` names where.
            pass.skip(task.id, Skip::MergeGate);
            continue;
        }
        if ctx.settings.reconcile_skip_blocked_enabled {
            match listings.get(ctx, db, project) {
                Err(_) => {
                    pass.skip(task.id, Skip::TrackerError);
                    continue;
                }
                Ok(items) => match items.get(&task.tracker_issue_id).map(|i| i.kind) {
                    Some(StateKind::Blocked) => {
                        pass.skip(task.id, Skip::TrackerBlocked);
                        continue;
                    }
                    Some(StateKind::NeedsInput) => {
                        pass.skip(task.id, Skip::TrackerNeedsInput);
                        continue;
                    }
                    _ => {}
                },
            }
        }
        let to = stage.next();
        let m = Move::new(
            &task,
            to,
            Actor::Reconciler,
            pipeline::TransitionCause::GatePassed,
            format!("reconcile: {stage} gate passed"),
        );
        let moved = db.write_or_rehearse(dry_run, |tx| {
            let moved = pipeline::apply(tx, ctx.policy(), &m, now)?;
            if let Moved::Applied { version, .. } = moved {
                tx.bump_counter("reconcile.unblocked_total", 1)?;
                let note = Notification {
                    kind: NotifyKind::Unblocked,
                    text: format!(
                        "reconcile unblocked task {} ({}): {stage} → {to}",
                        task.id, task.title
                    ),
                };
                let on = Occasion::Reconcile {
                    task_id: task.id,
                    version,
                };
                outbox::queue(tx, &on, &Message::Notify(note), now)?;
            }
            Ok(moved)
        })?;
        if let Moved::Applied { .. } = moved {
            if !dry_run {
                info!(target: "reconcile", task = task.id, from = %stage, to = %to, "unblocked");
            }
            pass.unblocked
                .push((task.id, stage.to_string(), to.to_string()));
        }
    }
    Ok(())
}
