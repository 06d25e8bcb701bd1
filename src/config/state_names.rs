//! The tracker states orch reads or sets: [`StateKind`], their configured
//! names ([`StateNames`]) and ids ([`TrackerStates`]).

use serde::Deserialize;

/// The tracker states orch reads or sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    InProgress,
    Approved,
    Rejected,
    Blocked,
    NeedsInput,
    Done,
}

impl StateKind {
    /// Every kind.
    pub const ALL: [StateKind; 6] = [
        StateKind::InProgress,
        StateKind::Approved,
        StateKind::Rejected,
        StateKind::Blocked,
        StateKind::NeedsInput,
        StateKind::Done,
    ];

    /// The config key (`in_progress`, `needs_input`, …), also the value of
    /// a tracker `state` outbox message.
    pub fn key(self) -> &'static str {
        match self {
            StateKind::InProgress => "in_progress",
            StateKind::Approved => "approved",
            StateKind::Rejected => "rejected",
            StateKind::Blocked => "blocked",
            StateKind::NeedsInput => "needs_input",
            StateKind::Done => "done",
        }
    }

    /// The kind of a config key.
    pub fn from_key(key: &str) -> Option<StateKind> {
        StateKind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// The state's default name.
    pub fn default_name(self) -> &'static str {
        match self {
            StateKind::InProgress => "In Progress",
            StateKind::Approved => "Approved",
            StateKind::Rejected => "Rejected",
            StateKind::Blocked => "Blocked",
            StateKind::NeedsInput => "Needs Input",
            StateKind::Done => "Done",
        }
    }
}

/// `[projects.state_names]`: the tracker's names of the states orch reads
/// or sets; resolved to ids through the tracker's API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateNames {
    /// Entering it creates the task (default `In Progress`).
    #[serde(default = "n_in_progress")]
    pub in_progress: String,
    /// Entering it approves the analysis (default `Approved`).
    #[serde(default = "n_approved")]
    pub approved: String,
    /// Entering it reruns the analysis (default `Rejected`).
    #[serde(default = "n_rejected")]
    pub rejected: String,
    /// A human stopped the item (default `Blocked`).
    #[serde(default = "n_blocked")]
    pub blocked: String,
    /// orch escalated the item (default `Needs Input`).
    #[serde(default = "n_needs_input")]
    pub needs_input: String,
    /// The item is deployed (default `Done`).
    #[serde(default = "n_done")]
    pub done: String,
}

fn n_in_progress() -> String {
    StateKind::InProgress.default_name().into()
}
fn n_approved() -> String {
    StateKind::Approved.default_name().into()
}
fn n_rejected() -> String {
    StateKind::Rejected.default_name().into()
}
fn n_blocked() -> String {
    StateKind::Blocked.default_name().into()
}
fn n_needs_input() -> String {
    StateKind::NeedsInput.default_name().into()
}
fn n_done() -> String {
    StateKind::Done.default_name().into()
}

impl Default for StateNames {
    fn default() -> Self {
        StateNames {
            in_progress: n_in_progress(),
            approved: n_approved(),
            rejected: n_rejected(),
            blocked: n_blocked(),
            needs_input: n_needs_input(),
            done: n_done(),
        }
    }
}

impl StateNames {
    /// The configured name of `kind`.
    pub fn get(&self, kind: StateKind) -> &str {
        match kind {
            StateKind::InProgress => &self.in_progress,
            StateKind::Approved => &self.approved,
            StateKind::Rejected => &self.rejected,
            StateKind::Blocked => &self.blocked,
            StateKind::NeedsInput => &self.needs_input,
            StateKind::Done => &self.done,
        }
    }
}

/// Tracker state ids (Plane state UUIDs) of one project. For the local
/// tracker they are the state names themselves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerStates {
    /// Entering this state creates the task (default `In Progress`).
    #[serde(default = "default_in_progress")]
    pub in_progress: String,
    /// Entering this state approves the analysis (default `Approved`).
    #[serde(default = "default_approved")]
    pub approved: String,
    /// Entering this state reruns the analysis (default `Rejected`).
    #[serde(default = "default_rejected")]
    pub rejected: String,
    /// Plane id of the Blocked state (default: resolved by name).
    #[serde(default)]
    pub blocked: Option<String>,
    /// Plane id of the Needs Input state (default: resolved by name).
    #[serde(default)]
    pub needs_input: Option<String>,
    /// Plane id of the Done state (default: resolved by name).
    #[serde(default)]
    pub done: Option<String>,
}

impl Default for TrackerStates {
    fn default() -> Self {
        TrackerStates {
            in_progress: default_in_progress(),
            approved: default_approved(),
            rejected: default_rejected(),
            blocked: None,
            needs_input: None,
            done: None,
        }
    }
}
fn default_in_progress() -> String {
    "In Progress".into()
}
fn default_approved() -> String {
    "Approved".into()
}
fn default_rejected() -> String {
    "Rejected".into()
}
