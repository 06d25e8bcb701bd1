//! The notifier service: where escalations, unblocks, failures and deploys
//! (`notify` outbox messages) go. [`Notifier`] is the one place that knows
//! the choice `ORCH_NOTIFIER` makes between a log line and a Telegram
//! chat; `orch deliver` asks it, and never compares notifier kinds itself.

use tracing::{info, warn};

use crate::adapters::{AdapterError, Clients};
use crate::config::{AdapterSettings, NotifierKind, ProjectConfig};
use crate::ctx::Ctx;
use crate::db::{OutboxRow, Task};
use crate::outbox::{Notification, NotifyKind};
use crate::tracker::Tracker;

/// The configured notifier.
#[derive(Debug, Clone, Copy)]
pub enum Notifier<'a> {
    /// A log line (target `notify`).
    Log,
    /// A Telegram chat, through the Bot API client built from these
    /// settings: at least once (see [`crate::adapters::telegram`]).
    Telegram(&'a AdapterSettings),
}

impl<'a> Notifier<'a> {
    /// The notifier `ORCH_NOTIFIER` names.
    pub fn from_settings(ctx: &'a Ctx) -> Notifier<'a> {
        match ctx.settings.adapters.notifier {
            NotifierKind::Log => Notifier::Log,
            NotifierKind::Telegram => Notifier::Telegram(&ctx.settings.adapters),
        }
    }

    /// A short name for logs and for grouping deliveries (`log`,
    /// `telegram`).
    pub fn name(&self) -> &'static str {
        match self {
            Notifier::Log => "log",
            Notifier::Telegram(_) => "telegram",
        }
    }

    /// Whether the notifier is an outside service (its deliveries are
    /// announced before sending).
    pub fn is_remote(&self) -> bool {
        matches!(self, Notifier::Telegram(_))
    }

    /// Sends a notification (`msg` is its row): its text, prefixed
    /// `orch: ` and followed by the work item's link when the task's
    /// tracker has one. Returns the remote message id (Telegram).
    ///
    /// Errors: [`AdapterError`]s of the Telegram client.
    pub fn send(
        &self,
        ctx: &Ctx,
        clients: &Clients,
        msg: &OutboxRow,
        note: &Notification,
        task: Option<&Task>,
        project: Option<&ProjectConfig>,
    ) -> Result<Option<String>, AdapterError> {
        let text = &note.text;
        let kind = note.kind.as_str();
        match self {
            Notifier::Log => {
                // An escalation needs a human: WARN, so `-q` still shows it.
                if note.kind == NotifyKind::Escalated {
                    warn!(target: "notify", key = %msg.dedupe_key, kind, "{text}");
                } else {
                    info!(target: "notify", key = %msg.dedupe_key, kind, "{text}");
                }
                Ok(None)
            }
            Notifier::Telegram(s) => {
                let t = clients.telegram(s)?;
                let mut body = format!("orch: {text}");
                if let (Some(task), Some(project)) = (task, project) {
                    let tracker = Tracker::for_project(ctx, project);
                    if let Some(link) = tracker.work_item_link(project, &task.tracker_issue_id) {
                        body += &format!("\n{link}");
                    }
                }
                t.send(&body).map(|id| Some(id.to_string()))
            }
        }
    }
}
