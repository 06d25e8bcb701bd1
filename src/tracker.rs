//! The tracker service: where a project's work items live, and what orch
//! does there. [`Tracker`] is the one place that knows the choice between
//! orch's own `local_issues` and Plane; everything above asks it to set a
//! state, post a comment, list work items by state, resolve state ids or
//! link a work item, and never compares tracker kinds itself.
//!
//! Plane state ids are never hard-coded: an explicit id in
//! `[projects.states]` wins; otherwise the name from
//! `[projects.state_names]` is resolved against Plane's states, cached per
//! project in `tracker_states` and refreshed after
//! `ORCH_PLANE_STATE_CACHE_S`, when a name is missing from the cache, and
//! when Plane refuses a cached id.

use std::collections::HashMap;

use tracing::{info, warn};

use crate::adapters::plane::{Issue, Plane};
use crate::adapters::{marker, AdapterError, Clients};
use crate::clock::now_ms;
use crate::config::{AdapterSettings, ProjectConfig, StateKind, TrackerKind};
use crate::ctx::Ctx;
use crate::db::{CachedState, Db, OutboxRow, Task};
use crate::outbox::{TrackerComment, TrackerMessage, TrackerState};
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
        let Tracker::Plane(s) = self else {
            return None;
        };
        let base = s.plane_public_url.as_ref()?;
        let slug = s.plane_workspace.as_ref()?;
        Some(format!(
            "{}/{}/projects/{}/issues/{}",
            base.trim_end_matches('/'),
            slug,
            project.tracker_project_id,
            issue_id
        ))
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
            Tracker::Plane(_) => {
                let items = list_work_items(ctx, db, project, &StateKind::ALL, persist)
                    .map_err(|e| e.to_string())?;
                Ok(items
                    .into_iter()
                    .map(|(kind, i)| {
                        let item = WorkItem {
                            tracker_issue_id: i.id.clone(),
                            sequence: i.sequence_id,
                            title: i.name.clone(),
                            body: String::new(),
                        };
                        let state_name = i.state_name().unwrap_or(kind.default_name()).to_string();
                        (
                            i.id.clone(),
                            TrackerItem {
                                kind,
                                state_name,
                                item,
                            },
                        )
                    })
                    .collect())
            }
            Tracker::Local => {
                // orch's own `local_issues`, whose state is a configured
                // name or a state key orch wrote (`needs_input`).
                let issues = db
                    .local_issue_states(&project.name)
                    .map_err(|e| e.to_string())?;
                Ok(issues
                    .into_iter()
                    .filter_map(|(id, state)| {
                        let kind = local_kind(project, &state)?;
                        let item = WorkItem {
                            tracker_issue_id: id.to_string(),
                            sequence: id,
                            title: String::new(),
                            body: String::new(),
                        };
                        Some((
                            id.to_string(),
                            TrackerItem {
                                kind,
                                state_name: state,
                                item,
                            },
                        ))
                    })
                    .collect())
            }
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
                local_deliver(db, msg, message, task).map_err(|e| AdapterError::Transport {
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
                deliver_plane(
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
        let name = project.state_names.get(kind).to_string();
        match self {
            Tracker::Plane(s) => {
                let plane = Plane::from_settings(s)?;
                let id = resolve_state(ctx, db, &plane, project, kind, true, false)?;
                Ok((id, name))
            }
            Tracker::Local => {
                let st = &project.states;
                let id = match kind {
                    StateKind::InProgress => Some(st.in_progress.clone()),
                    StateKind::Approved => Some(st.approved.clone()),
                    StateKind::Rejected => Some(st.rejected.clone()),
                    StateKind::Blocked => st.blocked.clone(),
                    StateKind::NeedsInput => st.needs_input.clone(),
                    StateKind::Done => st.done.clone(),
                };
                Ok((id.unwrap_or_else(|| name.clone()), name))
            }
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

/// The local tracker: states of `local_issues`; comments are logged (the
/// outbox row itself is the record).
fn local_deliver(
    db: &Db,
    msg: &OutboxRow,
    message: &TrackerMessage,
    task: Option<&Task>,
) -> anyhow::Result<()> {
    match message {
        TrackerMessage::State(TrackerState { state }) => {
            let state = state.key();
            let Some(t) = task else {
                info!(target: "tracker", key = %msg.dedupe_key, "state → {state} (its task is gone)");
                return Ok(());
            };
            // Tasks created from a Plane delivery have no local issue:
            // their state change is only logged.
            let issue = t.tracker_issue_id.parse::<i64>().ok();
            let known = issue
                .map(|i| db.local_issue_state(i))
                .transpose()?
                .flatten()
                .is_some();
            if known {
                db.write(|tx| {
                    tx.set_local_issue_state(issue.unwrap_or_default(), state, now_ms())
                })?;
            }
            info!(target: "tracker", key = %msg.dedupe_key, task = t.id, "state → {state}");
        }
        TrackerMessage::Comment(c) => {
            info!(target: "tracker", key = %msg.dedupe_key, "comment: {}", c.text);
        }
    }
    Ok(())
}

/// The kind of a local issue's state: a state key orch wrote, a default
/// name, or the project's configured in-progress/approved/rejected name.
fn local_kind(project: &ProjectConfig, state: &str) -> Option<StateKind> {
    let s = state.trim();
    StateKind::ALL.into_iter().find(|k| {
        s.eq_ignore_ascii_case(k.key())
            || s.eq_ignore_ascii_case(k.default_name())
            || match k {
                StateKind::InProgress => s == project.states.in_progress,
                StateKind::Approved => s == project.states.approved,
                StateKind::Rejected => s == project.states.rejected,
                _ => false,
            }
    })
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

fn same_name(a: &str, b: &str) -> bool {
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

fn no_project_id(project: &ProjectConfig) -> AdapterError {
    AdapterError::Config {
        key: format!("projects.{}.tracker_project_id", project.name),
        message: "required for tracker = \"plane\"".into(),
    }
}

/// Fetches the project's states from Plane and, with `persist`, replaces
/// the cache (a `--dry-run` reads but never writes).
pub fn refresh_states(
    db: &Db,
    plane: &Plane,
    project: &ProjectConfig,
    persist: bool,
) -> Result<Vec<CachedState>, AdapterError> {
    if project.tracker_project_id.is_empty() {
        return Err(no_project_id(project));
    }
    let states = plane.list_states(&project.tracker_project_id)?;
    let rows: Vec<(String, String, String)> = states
        .into_iter()
        .map(|s| (s.id, s.name, s.group))
        .collect();
    let now = now_ms();
    if persist {
        if let Err(e) = db.write(|tx| tx.replace_tracker_states(&project.name, &rows, now)) {
            warn!(target: "plane", project = %project.name, error = %format!("{e:#}"), "could not cache states");
        }
    }
    info!(target: "plane", project = %project.name, states = rows.len(), "refreshed the state cache");
    Ok(rows
        .into_iter()
        .map(|(state_id, name, group)| CachedState {
            state_id,
            name,
            group,
            fetched_at_ms: now,
        })
        .collect())
}

/// The Plane state id of `kind` for `project`: the explicit id from
/// `[projects.states]`, else the cached id of the configured name (fetched
/// again when stale, missing, or with `force_refresh`; what is fetched is
/// cached only with `persist`).
///
/// Errors: [`AdapterError::Rejected`] when the project has no state of that
/// name; the API's errors.
pub fn resolve_state(
    ctx: &Ctx,
    db: &Db,
    plane: &Plane,
    project: &ProjectConfig,
    kind: StateKind,
    force_refresh: bool,
    persist: bool,
) -> Result<String, AdapterError> {
    if let Some(id) = explicit_id(project, kind) {
        return Ok(id.to_string());
    }
    let name = project.state_names.get(kind);
    let find = |states: &[CachedState]| {
        states
            .iter()
            .find(|s| same_name(&s.name, name))
            .map(|s| s.state_id.clone())
    };
    if !force_refresh {
        let max_age = (ctx.settings.adapters.plane_state_cache_s * 1000) as i64;
        let cached = db.cached_states(&project.name).unwrap_or_default();
        let fresh = cached
            .first()
            .is_some_and(|c| now_ms() - c.fetched_at_ms <= max_age);
        if fresh {
            if let Some(id) = find(&cached) {
                return Ok(id);
            }
        }
    }
    let states = refresh_states(db, plane, project, persist)?;
    find(&states).ok_or_else(|| AdapterError::Rejected {
        service: "plane",
        op: "resolve state".into(),
        message: format!(
            "project {} has no state named {name:?} in Plane; create it, or set \
             [projects.state_names].{key} (or an id in [projects.states].{key})",
            project.name,
            key = kind.key()
        ),
    })
}

/// The project's work items currently in one of `kinds`, from every page
/// of Plane's issue list, filtered client-side (the API has no state
/// filter). For the reconciler's tracker side; with `persist` false (a dry
/// run) the state ids it resolves are not cached.
///
/// Errors: settings, state resolution and API errors.
pub fn list_work_items(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    kinds: &[StateKind],
    persist: bool,
) -> Result<Vec<(StateKind, Issue)>, AdapterError> {
    let plane = Plane::from_settings(&ctx.settings.adapters)?;
    if project.tracker_project_id.is_empty() {
        return Err(no_project_id(project));
    }
    let mut ids = Vec::new();
    for &kind in kinds {
        ids.push((
            kind,
            resolve_state(ctx, db, &plane, project, kind, false, persist)?,
        ));
    }
    let issues = plane.list_issues(&project.tracker_project_id)?;
    Ok(issues
        .into_iter()
        .filter_map(|i| {
            let kind = ids
                .iter()
                .find(|(_, id)| id == i.state_id())
                .map(|(k, _)| *k)?;
            Some((kind, i))
        })
        .collect())
}

/// Delivers a tracker message of `task` to Plane (`msg` is its row): a
/// state moves the work item; a comment (text or a run report) is posted
/// once.
/// `sends_before` > 0 means an earlier send may have reached Plane: look
/// before posting. Returns the remote id (state id, comment id). The
/// client is passed in so the caller can see its rate-limit window.
#[allow(clippy::too_many_arguments)]
fn deliver_plane(
    ctx: &Ctx,
    db: &Db,
    plane: &Plane,
    msg: &OutboxRow,
    message: &TrackerMessage,
    task: &Task,
    project: &ProjectConfig,
    sends_before: i64,
    comment_html: &dyn Fn(&TrackerComment) -> String,
) -> Result<String, AdapterError> {
    if project.tracker_project_id.is_empty() {
        return Err(no_project_id(project));
    }
    let pid = &project.tracker_project_id;
    let issue = &task.tracker_issue_id;
    match message {
        TrackerMessage::State(TrackerState { state: kind }) => {
            let kind = *kind;
            let id = resolve_state(ctx, db, plane, project, kind, false, true)?;
            match plane.set_state(pid, issue, &id) {
                Err(e) if e.status() == Some(400) && explicit_id(project, kind).is_none() => {
                    // The cached id may be stale (state deleted and
                    // recreated): refresh once.
                    warn!(target: "plane", task = task.id, error = %e, "Plane refused the cached state id; refreshing");
                    let id = resolve_state(ctx, db, plane, project, kind, true, true)?;
                    plane.set_state(pid, issue, &id)?;
                    Ok(id)
                }
                Err(e) => Err(e),
                Ok(()) => Ok(id),
            }
        }
        TrackerMessage::Comment(comment) => {
            // Keyed by instance too: another orch posting to this Plane
            // project never has the same external_id.
            let key = &db
                .remote_dedupe_key(msg)
                .map_err(|e| AdapterError::Transport {
                    service: "plane",
                    op: "read instance id".into(),
                    message: format!("{e:#}"),
                })?;
            let find = || -> Result<Option<String>, AdapterError> {
                let mark = marker(key);
                Ok(plane
                    .list_comments(pid, issue)?
                    .into_iter()
                    .find(|c| {
                        c.external_id.as_deref() == Some(key.as_str())
                            || c.comment_html.contains(&mark)
                    })
                    .map(|c| c.id))
            };
            if sends_before > 0 {
                if let Some(id) = find()? {
                    info!(target: "plane", key = %key, comment = %id, "comment was already posted");
                    return Ok(id);
                }
            }
            let html = comment_html(comment);
            match plane.create_comment(pid, issue, &html, key)? {
                Some(c) => Ok(c.id),
                None => Ok(find()?.unwrap_or_else(|| format!("external_id:{key}"))),
            }
        }
    }
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
