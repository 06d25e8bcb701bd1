//! The local tracker: orch's own `local_issues` (`orch issue add`), whose
//! states are rows and whose comments are log lines. [`super::Tracker`]
//! dispatches here for `tracker = "local"`.

use std::collections::HashMap;

use tracing::info;

use super::TrackerItem;
use crate::clock::now_ms;
use crate::config::{ProjectConfig, StateKind};
use crate::db::{Db, OutboxRow, Task};
use crate::outbox::{TrackerMessage, TrackerState};
use crate::pipeline::WorkItem;

/// The project's local issues in a state orch knows, by issue id: a
/// configured name or a state key orch wrote (`needs_input`).
///
/// Errors: the database's, as text.
pub(super) fn items(
    db: &Db,
    project: &ProjectConfig,
) -> Result<HashMap<String, TrackerItem>, String> {
    let issues = db
        .local_issue_states(&project.name)
        .map_err(|e| e.to_string())?;
    Ok(issues
        .into_iter()
        .filter_map(|(id, state)| {
            let kind = kind(project, &state)?;
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

/// The id and name a delivery carries for a local issue entering `kind`:
/// the configured value of `[projects.states]` (its default is the
/// name), and the configured name of `[projects.state_names]`.
pub(super) fn delivery_state(project: &ProjectConfig, kind: StateKind) -> (String, String) {
    let name = project.state_names.get(kind).to_string();
    let st = &project.states;
    let id = match kind {
        StateKind::InProgress => Some(st.in_progress.clone()),
        StateKind::Approved => Some(st.approved.clone()),
        StateKind::Rejected => Some(st.rejected.clone()),
        StateKind::Blocked => st.blocked.clone(),
        StateKind::NeedsInput => st.needs_input.clone(),
        StateKind::Done => st.done.clone(),
    };
    (id.unwrap_or_else(|| name.clone()), name)
}

/// The local tracker: states of `local_issues`; comments are logged (the
/// outbox row itself is the record).
pub(super) fn deliver(
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
fn kind(project: &ProjectConfig, state: &str) -> Option<StateKind> {
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
