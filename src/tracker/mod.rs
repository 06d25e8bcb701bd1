//! The tracker service: where a project's work items live, and what orch
//! does there. [`Tracker`] is the one place that knows the choice between
//! orch's own `local_issues` and Plane; everything above asks it to set a
//! state, post a comment, list work items by state, resolve state ids or
//! link a work item, and never compares tracker kinds itself.
//!
//! A tracker is this folder: the enum dispatch here, with the state
//! vocabulary every kind shares ([`explicit_id`], [`state_is`]), and each
//! kind in its own file — `local` (orch's `local_issues`) and `plane`
//! (Plane through its REST client, and its webhook deliveries). Adding a
//! tracker is a file here, its arm in [`Tracker`], and its entry in
//! `webhook::SOURCES`.

mod local;
pub mod plane;

pub use plane::{list_work_items, refresh_states, resolve_state};

use std::collections::HashMap;

use crate::adapters::{AdapterError, Clients};
use crate::config::{AdapterSettings, ProjectConfig, StateKind, TrackerKind};
use crate::ctx::Ctx;
use crate::db::{CachedState, Db, OutboxRow, Task};
use crate::outbox::{TrackerComment, TrackerMessage};
use crate::pipeline::WorkItem;

/// A project's tracker, chosen by `projects.tracker`.
#[derive(Debug, Clone, Copy)]
pub enum Tracker<'a> {
    /// orch's own `local_issues` (`orch issue add`): states are rows,
    /// comments are log lines.
    Local,
    /// Plane, through its REST client built from these settings.
    Plane(&'a AdapterSettings),
}

/// A work item as the tracker shows it.
#[derive(Debug, Clone)]
pub struct TrackerItem {
    pub kind: StateKind,
    /// The state's name, for reasons and outcomes.
    pub state_name: String,
    pub item: WorkItem,
}

impl<'a> Tracker<'a> {
    /// The tracker of `project`.
    pub fn for_project(ctx: &'a Ctx, project: &ProjectConfig) -> Tracker<'a> {
        Tracker::of(ctx, Some(project))
    }

    /// The tracker of an outbox message's project; the local tracker when
    /// the message has no (known) project.
    pub fn of(ctx: &'a Ctx, project: Option<&ProjectConfig>) -> Tracker<'a> {
        match project.map(|p| p.tracker) {
            Some(TrackerKind::Plane) => Tracker::Plane(&ctx.settings.adapters),
            Some(TrackerKind::Local) | None => Tracker::Local,
        }
    }

    /// A short name for logs and for grouping deliveries (`local tracker`,
    /// `plane`).
    pub fn name(&self) -> &'static str {
        match self {
            Tracker::Local => "local tracker",
            Tracker::Plane(_) => "plane",
        }
    }

    /// Whether the tracker is an outside service: its deliveries are
    /// announced before sending, and the reconciler replays its listing
    /// (the local tracker's items are created by orch itself).
    pub fn is_remote(&self) -> bool {
        matches!(self, Tracker::Plane(_))
    }

    /// Whether work items are created with `orch issue add` (the local
    /// tracker); a remote tracker's items are created there.
    pub fn takes_local_issues(&self) -> bool {
        matches!(self, Tracker::Local)
    }

    /// The web link of a work item (Plane, from `ORCH_PLANE_PUBLIC_URL`
    /// and `ORCH_PLANE_WORKSPACE`); `None` for the local tracker or when
    /// unset.
    pub fn work_item_link(&self, project: &ProjectConfig, issue_id: &str) -> Option<String> {
        match self {
            Tracker::Plane(s) => plane::work_item_link(s, project, issue_id),
            Tracker::Local => None,
        }
    }

    /// The project's work items in a state orch knows (In Progress,
    /// Approved, Rejected, Blocked, Needs Input, Done), by tracker issue
    /// id: Plane's whole listing, or the local issues. With `persist` false
    /// (a dry run) what the listing learns (state ids) is not cached.
    ///
    /// Errors: the tracker's error, as text.
    pub fn items(
        &self,
        ctx: &Ctx,
        db: &Db,
        project: &ProjectConfig,
        persist: bool,
    ) -> Result<HashMap<String, TrackerItem>, String> {
        match self {
            Tracker::Plane(_) => plane::items(ctx, db, project, persist),
            Tracker::Local => local::items(db, project),
        }
    }

    /// Delivers a tracker message (`msg` is its row): a
    /// [`TrackerState`](crate::outbox::TrackerState) moves the work item;
    /// a [`TrackerComment`] (text or a run report, whose Plane HTML
    /// `comment_html` renders) posts a comment once. `sends_before` > 0 means an earlier send may
    /// have reached the tracker: look before posting. Returns the remote
    /// id (state id, comment id), `None` for the local tracker. Plane's
    /// client comes from `clients`, so the caller can see its rate-limit
    /// window ([`Tracker::exhausted`]).
    ///
    /// Errors: [`AdapterError`]s; a Plane message whose task or project is
    /// gone is [`AdapterError::Rejected`].
    #[allow(clippy::too_many_arguments)]
    pub fn deliver(
        &self,
        ctx: &Ctx,
        db: &Db,
        clients: &Clients,
        msg: &OutboxRow,
        message: &TrackerMessage,
        task: Option<&Task>,
        project: Option<&ProjectConfig>,
        sends_before: i64,
        comment_html: &dyn Fn(&TrackerComment) -> String,
    ) -> Result<Option<String>, AdapterError> {
        match self {
            Tracker::Local => {
                local::deliver(db, msg, message, task).map_err(|e| AdapterError::Transport {
                    service: "local",
                    op: "tracker".into(),
                    message: format!("{e:#}"),
                })?;
                Ok(None)
            }
            Tracker::Plane(s) => {
                let (Some(task), Some(project)) = (task, project) else {
                    return Err(gone("plane", msg));
                };
                let plane = clients.plane(s)?;
                plane::deliver(
                    ctx,
                    db,
                    plane,
                    msg,
                    message,
                    task,
                    project,
                    sends_before,
                    comment_html,
                )
                .map(Some)
            }
        }
    }

    /// The state a delivery from this tracker carries for a work item
    /// entering `kind`, as `(id, name)`, resolved the way the instance
    /// matches it and never hard-coded: Plane — the explicit id of
    /// `[projects.states]`, else the id Plane's states API lists for the
    /// configured name (fetched afresh, not cached: `db` is only read);
    /// the local tracker — the configured value of `[projects.states]`
    /// (its default is the name). The name is the configured one of
    /// `[projects.state_names]`. For `orch staging-check`'s synthetic
    /// delivery.
    ///
    /// Errors: [`AdapterError`]s (Plane settings, transport, no state of
    /// that name).
    pub fn delivery_state(
        &self,
        ctx: &Ctx,
        db: &Db,
        project: &ProjectConfig,
        kind: StateKind,
    ) -> Result<(String, String), AdapterError> {
        match self {
            Tracker::Plane(s) => plane::delivery_state(ctx, db, s, project, kind),
            Tracker::Local => Ok(local::delivery_state(project, kind)),
        }
    }

    /// For `orch config check --online`: every state orch reads or sets
    /// resolved by asking the tracker (not cached), as `key=id …`, or why
    /// not; `None` for a tracker that has nothing to ask (local: its
    /// states are the configured names).
    pub fn check_states(
        &self,
        ctx: &Ctx,
        db: Option<&Db>,
        project: &ProjectConfig,
    ) -> Option<Result<String, String>> {
        match self {
            Tracker::Plane(s) => Some(plane::check_states(ctx, db, s, project)),
            Tracker::Local => None,
        }
    }

    /// Whether the tracker's rate-limit window is exhausted (Plane, as the
    /// last answer in `clients` said): its route waits for the next pass.
    pub fn exhausted(&self, clients: &Clients) -> bool {
        matches!(self, Tracker::Plane(_)) && clients.plane_exhausted()
    }
}

/// The error of a remote message whose task or project is gone.
pub(crate) fn gone(service: &'static str, msg: &OutboxRow) -> AdapterError {
    AdapterError::Rejected {
        service,
        op: format!("deliver {}", msg.kind),
        message: "the message's task or its project is gone".into(),
    }
}

/// The id `[projects.states]` sets explicitly for `kind`, if any. For
/// in_progress/approved/rejected (which default to their names, the local
/// tracker's ids) a value equal to the default or configured name is a
/// name, not an explicit id.
pub fn explicit_id(project: &ProjectConfig, kind: StateKind) -> Option<&str> {
    let s = &project.states;
    let v = match kind {
        StateKind::InProgress => Some(s.in_progress.as_str()),
        StateKind::Approved => Some(s.approved.as_str()),
        StateKind::Rejected => Some(s.rejected.as_str()),
        StateKind::Blocked => s.blocked.as_deref(),
        StateKind::NeedsInput => s.needs_input.as_deref(),
        StateKind::Done => s.done.as_deref(),
    }?;
    let v = v.trim();
    (!v.is_empty() && v != kind.default_name() && v != project.state_names.get(kind)).then_some(v)
}

/// Whether two state names are the same (trimmed, any case).
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Whether a state (`state_id`, and its name when the payload carries one)
/// is the project's `kind`: the explicit id if one is configured, else the
/// configured name, else the id cached for that name.
pub fn state_is(
    project: &ProjectConfig,
    cached: &[CachedState],
    kind: StateKind,
    state_id: &str,
    state_name: Option<&str>,
) -> bool {
    if let Some(id) = explicit_id(project, kind) {
        return state_id == id;
    }
    let name = project.state_names.get(kind);
    if state_name.is_some_and(|n| same_name(n, name)) {
        return true;
    }
    !state_id.is_empty()
        && cached
            .iter()
            .any(|c| c.state_id == state_id && same_name(&c.name, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(extra: &str) -> ProjectConfig {
        let cfg = crate::config::Config::parse(&format!(
            "[[projects]]\nname = \"w\"\ntracker = \"plane\"\ntracker_project_id = \"p\"\n\
             clone_url = \"x\"\ntest_command = [\"true\"]\n{extra}"
        ))
        .unwrap();
        cfg.projects[0].clone()
    }

    #[test]
    fn explicit_ids_win_over_names_and_the_cache() {
        let cached = vec![CachedState {
            state_id: "id-np".into(),
            name: "needs input".into(),
            group: "started".into(),
            fetched_at_ms: 0,
        }];
        let p = project("");
        assert_eq!(explicit_id(&p, StateKind::InProgress), None);
        assert!(state_is(
            &p,
            &[],
            StateKind::InProgress,
            "x",
            Some("In Progress")
        ));
        assert!(!state_is(&p, &[], StateKind::InProgress, "x", Some("Todo")));
        assert!(state_is(&p, &cached, StateKind::NeedsInput, "id-np", None));
        assert!(!state_is(&p, &cached, StateKind::Done, "id-np", None));

        let p = project("[projects.states]\nin_progress = \"uuid-1\"\ndone = \"uuid-d\"\n");
        assert_eq!(explicit_id(&p, StateKind::InProgress), Some("uuid-1"));
        assert_eq!(explicit_id(&p, StateKind::Done), Some("uuid-d"));
        assert!(state_is(
            &p,
            &[],
            StateKind::InProgress,
            "uuid-1",
            Some("Whatever")
        ));
        assert!(
            !state_is(&p, &[], StateKind::InProgress, "other", Some("In Progress")),
            "an explicit id wins over the name"
        );

        let p = project("[projects.state_names]\nneeds_input = \"Waiting for human\"\n");
        assert_eq!(
            p.state_names.get(StateKind::NeedsInput),
            "Waiting for human"
        );
        assert!(state_is(
            &p,
            &[],
            StateKind::NeedsInput,
            "z",
            Some("waiting for HUMAN")
        ));
    }
}
