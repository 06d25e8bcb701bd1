//! Outbox messages, typed: what orch asks a tracker, a forge or a notifier
//! to do ([`Message`]), the one writer that queues them ([`queue`]) with
//! the dedupe-key rule of every kind ([`dedupe_key`]), and the one reader
//! that turns a row back into a message ([`Message::from_row`]).
//!
//! A message is written inside the transaction of the change that causes
//! it and delivered later by `orch deliver` (`crate::deliver`). The row
//! keeps the shape it has always had — `channel` and `kind` columns, a
//! JSON `payload` — so rows queued by an older orch deliver unchanged:
//!
//! | message | channel | kind | payload |
//! |---|---|---|---|
//! | [`TrackerState`] | `tracker` | `state` | `{"state": "needs_input"}` (a [`StateKind`] key) |
//! | [`TrackerComment`] | `tracker` | `comment` | `{"text": …}`, with `"report": {…}` for a run report ([`Report`]) |
//! | [`OpenPr`] | `forge` | `open_pr` | `{"branch", "base", "title", "body"}` |
//! | [`PrComment`] | `forge` | `comment` | `{"text": …}` |
//! | [`MarkMerged`] | `forge` | `mark_merged` | `{"branch", "merge_commit"}` |
//! | [`Notification`] | `notify` | a [`NotifyKind`] (`escalated`, …) | `{"text": …}` |
//!
//! A row that does not read as one of these is an error naming what is
//! wrong ([`Malformed`]); `orch deliver` dead-letters it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::StateKind;
use crate::db::{OutboxRow, Tx};

/// An outbox message: where it goes (the variant) and what it says.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// To the project's tracker (channel `tracker`).
    Tracker(TrackerMessage),
    /// To the project's forge (channel `forge`).
    Forge(ForgeMessage),
    /// To the notifier (channel `notify`).
    Notify(Notification),
}

/// A message to the tracker.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerMessage {
    /// Move the work item.
    State(TrackerState),
    /// Comment on the work item.
    Comment(TrackerComment),
}

/// A message to the forge.
#[derive(Debug, Clone, PartialEq)]
pub enum ForgeMessage {
    /// Open the task's pull request.
    OpenPr(OpenPr),
    /// Comment on the task's pull request.
    Comment(PrComment),
    /// Mark the task's pull request merged: its commits reached the
    /// default branch another way (the merge line landed it inside a
    /// batch whose tip task's PR was the one merged).
    MarkMerged(MarkMerged),
}

/// Move the task's work item to the project's state of this kind
/// (payload `{"state": "<key>"}`, e.g. `needs_input`, `done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerState {
    #[serde(with = "state_key")]
    pub state: StateKind,
}

/// A comment on the task's work item: its plain text and, for a run
/// report, the report the tracker renders richly (Plane HTML with links).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackerComment {
    pub text: String,
    /// Boxed: a plain comment stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<Report>>,
}

impl From<TrackerComment> for Message {
    /// The comment as the tracker message every writer queues.
    fn from(comment: TrackerComment) -> Message {
        Message::Tracker(TrackerMessage::Comment(comment))
    }
}

/// The report of one agent run, as a tracker comment carries it
/// (`crate::report` writes and renders it). Every field has a default, so
/// a report of an older shape still renders.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub role: String,
    /// The job's stage name (`review`, …).
    pub stage: String,
    pub job_id: i64,
    /// The run's attempt as counted toward the cap.
    pub attempt: i64,
    /// One line for how the run ended.
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub verdict: Option<ReportVerdict>,
    /// The permission denials, named (`Write /path`, …).
    pub permission_denials: Vec<String>,
    pub branch: String,
    /// The worktree's head after a run that exited 0.
    pub commit: Option<String>,
    /// `None`: the agent printed no result.
    pub usage: Option<Usage>,
}

/// A reviewer's or tester's verdict in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportVerdict {
    pub verdict: String,
    pub summary: String,
}

/// Token and cost numbers of one run (Claude's result shape).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    /// USD.
    pub cost_usd: f64,
}

impl Usage {
    /// Input including the cache: input + cache read + cache creation.
    pub fn full_input(&self) -> i64 {
        self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
    }
    /// The cached part of the input: cache read + cache creation.
    pub fn cached_input(&self) -> i64 {
        self.cache_read_input_tokens + self.cache_creation_input_tokens
    }
    /// `input 38934 tokens (38926 cached: 33204 read, 5722 written) ·
    /// output 110 tokens · cost $0.0375`
    pub fn line(&self) -> String {
        format!(
            "input {} tokens ({} cached: {} read, {} written) · output {} tokens · cost ${:.4}",
            self.full_input(),
            self.cached_input(),
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
            self.output_tokens,
            self.cost_usd
        )
    }
}

/// Open a pull request of `branch` into `base` (an empty one: the task's
/// branch, the project's default branch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPr {
    pub branch: String,
    pub base: String,
    pub title: String,
    pub body: String,
}

/// A comment (Markdown) on the task's pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrComment {
    pub text: String,
}

/// Mark the pull request of `branch` merged by `merge_commit`, a commit
/// (40 hex) that the default branch holds and that contains the branch's
/// head (Gitea: `POST …/pulls/{n}/merge` with `Do: manually-merged`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkMerged {
    pub branch: String,
    pub merge_commit: String,
}

/// A notification for people; its kind is the row's `kind` column, its
/// payload `{"text": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub kind: NotifyKind,
    pub text: String,
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    /// A task escalated to a human (logged at WARN by the log notifier).
    Escalated,
    /// A task deployed and done.
    Deployed,
    /// reconcile moved a task on.
    Unblocked,
    /// A task parked by a budget.
    Parked,
    /// An agent account paused by its limit.
    Paused,
}

impl NotifyKind {
    /// Every kind.
    pub const ALL: [NotifyKind; 5] = [
        NotifyKind::Escalated,
        NotifyKind::Deployed,
        NotifyKind::Unblocked,
        NotifyKind::Parked,
        NotifyKind::Paused,
    ];

    /// The row's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Escalated => "escalated",
            NotifyKind::Deployed => "deployed",
            NotifyKind::Unblocked => "unblocked",
            NotifyKind::Parked => "parked",
            NotifyKind::Paused => "paused",
        }
    }
}

/// The payload of a notification.
#[derive(Serialize, Deserialize)]
struct Text {
    text: String,
}

/// A row that is not a message this orch knows: its channel, kind and
/// why. Displayed as `malformed <channel>/<kind> message: <why>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub channel: String,
    pub kind: String,
    pub why: String,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed {}/{} message: {}",
            self.channel, self.kind, self.why
        )
    }
}

impl std::error::Error for Malformed {}

impl Message {
    /// The row's `channel` column: `tracker`, `forge` or `notify`.
    pub fn channel(&self) -> &'static str {
        match self {
            Message::Tracker(_) => "tracker",
            Message::Forge(_) => "forge",
            Message::Notify(_) => "notify",
        }
    }

    /// The row's `kind` column (see the module's table).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Tracker(TrackerMessage::State(_)) => "state",
            Message::Tracker(TrackerMessage::Comment(_)) => "comment",
            Message::Forge(ForgeMessage::OpenPr(_)) => "open_pr",
            Message::Forge(ForgeMessage::Comment(_)) => "comment",
            Message::Forge(ForgeMessage::MarkMerged(_)) => "mark_merged",
            Message::Notify(n) => n.kind.as_str(),
        }
    }

    /// The row's `payload`: the message's fields as JSON.
    pub fn payload(&self) -> Value {
        let v = match self {
            Message::Tracker(TrackerMessage::State(m)) => serde_json::to_value(m),
            Message::Tracker(TrackerMessage::Comment(m)) => serde_json::to_value(m),
            Message::Forge(ForgeMessage::OpenPr(m)) => serde_json::to_value(m),
            Message::Forge(ForgeMessage::Comment(m)) => serde_json::to_value(m),
            Message::Forge(ForgeMessage::MarkMerged(m)) => serde_json::to_value(m),
            Message::Notify(n) => serde_json::to_value(Text {
                text: n.text.clone(),
            }),
        };
        // Plain structs of strings and numbers always serialize.
        v.unwrap_or(Value::Null)
    }

    /// Reads a row's channel, kind and payload back into a message.
    ///
    /// Errors: [`Malformed`] for an unknown channel or kind, or a payload
    /// without the message's fields (or not JSON at all).
    pub fn parse(channel: &str, kind: &str, payload: &Value) -> Result<Message, Malformed> {
        let bad = |why: String| Malformed {
            channel: channel.to_string(),
            kind: kind.to_string(),
            why,
        };
        fn fields<T: for<'de> Deserialize<'de>>(payload: &Value) -> Result<T, String> {
            T::deserialize(payload).map_err(|e| format!("payload {payload}: {e}"))
        }
        Ok(match (channel, kind) {
            ("tracker", "state") => {
                Message::Tracker(TrackerMessage::State(fields(payload).map_err(bad)?))
            }
            ("tracker", "comment") => {
                Message::Tracker(TrackerMessage::Comment(fields(payload).map_err(bad)?))
            }
            ("forge", "open_pr") => {
                Message::Forge(ForgeMessage::OpenPr(fields(payload).map_err(bad)?))
            }
            ("forge", "comment") => {
                Message::Forge(ForgeMessage::Comment(fields(payload).map_err(bad)?))
            }
            ("forge", "mark_merged") => {
                Message::Forge(ForgeMessage::MarkMerged(fields(payload).map_err(bad)?))
            }
            ("notify", kind) => {
                let kind = NotifyKind::ALL
                    .into_iter()
                    .find(|k| k.as_str() == kind)
                    .ok_or_else(|| bad("unknown notification kind".into()))?;
                let Text { text } = fields(payload).map_err(bad)?;
                Message::Notify(Notification { kind, text })
            }
            ("tracker" | "forge", _) => return Err(bad("unknown kind".into())),
            _ => return Err(bad("unknown channel".into())),
        })
    }

    /// Reads an outbox row into its message ([`Message::parse`]).
    ///
    /// Errors: [`Malformed`].
    pub fn from_row(row: &OutboxRow) -> Result<Message, Malformed> {
        Message::parse(&row.channel, &row.kind, &row.payload)
    }
}

/// What caused a message: it names the row's task and, with the message's
/// kind, makes its dedupe key ([`dedupe_key`]). One occasion writes at
/// most one message of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occasion<'a> {
    /// Task `task_id` reached `version`: a transition, or the task's
    /// creation (version 1).
    Transition { task_id: i64, version: i64 },
    /// reconcile moved task `task_id` on to `version` (its notification
    /// beside the transition's own messages).
    Reconcile { task_id: i64, version: i64 },
    /// Task `task_id` was parked at `since_ms`.
    Park { task_id: i64, since_ms: i64 },
    /// Agent account `account` was paused at `since_ms`, stopping a job of
    /// task `task_id`.
    Pause {
        account: &'a str,
        since_ms: i64,
        task_id: i64,
    },
    /// Run `run` (the job's attempt number, counting free ones) of job
    /// `job_id` of task `task_id`, under the claim of `epoch`, ended. Its
    /// rows carry that claim: `orch deliver` never sends one once the job
    /// was claimed again (DESIGN §11 INV-10).
    Run {
        task_id: i64,
        job_id: i64,
        run: i64,
        epoch: i64,
    },
    /// Task `task_id`'s branch was pushed (every push; the first queues).
    Push { task_id: i64 },
}

impl Occasion<'_> {
    /// The task the message belongs to (deliveries of one task and
    /// channel keep their order).
    pub fn task_id(&self) -> i64 {
        match *self {
            Occasion::Transition { task_id, .. }
            | Occasion::Reconcile { task_id, .. }
            | Occasion::Park { task_id, .. }
            | Occasion::Pause { task_id, .. }
            | Occasion::Run { task_id, .. }
            | Occasion::Push { task_id } => task_id,
        }
    }

    /// The claim (job id, epoch) whose run the message belongs to: a run
    /// report's. `None` for the rest, none of which a stale claim can
    /// write (the PR opening is per branch, once, not per run).
    pub fn claim(&self) -> Option<(i64, i64)> {
        match *self {
            Occasion::Run { job_id, epoch, .. } => Some((job_id, epoch)),
            _ => None,
        }
    }
}

/// The dedupe key of `message` written for `on`: a second write with the
/// same key is a no-op, so each occasion sends each kind once. The keys
/// orch writes (`<t>` task, `<v>` version, `<j>` job, `<r>` run):
///
/// | occasion | message | key |
/// |---|---|---|
/// | transition | tracker comment / tracker state / notification | `task:<t>:v<v>:comment` / `…:state` / `…:notify` |
/// | reconcile | notification (`unblocked`) | `task:<t>:v<v>:reconcile` |
/// | park | notification (`parked`) / tracker comment | `park:<t>:<since>:notify` / `…:comment` |
/// | pause | notification (`paused`) | `pause:<account>:<since>` |
/// | run | tracker comment (report) / PR comment | `task:<t>:job<j>:a<r>:e<e>:report` / `…:report:pr` (`<e>` the claim's epoch) |
/// | push | open PR | `task:<t>:pr` |
/// | transition (the merge line's landing) | mark PR merged | `task:<t>:v<v>:mark_merged` |
///
/// Any other pair appends the message's kind name (`state`, `comment`,
/// `notify`, `open_pr`, `pr_comment`, `mark_merged`) to the occasion's key, so it never
/// meets a key above.
pub fn dedupe_key(on: &Occasion, message: &Message) -> String {
    let name = match message {
        Message::Tracker(TrackerMessage::State(_)) => "state",
        Message::Tracker(TrackerMessage::Comment(_)) => "comment",
        Message::Forge(ForgeMessage::OpenPr(_)) => "open_pr",
        Message::Forge(ForgeMessage::Comment(_)) => "pr_comment",
        Message::Forge(ForgeMessage::MarkMerged(_)) => "mark_merged",
        Message::Notify(_) => "notify",
    };
    match *on {
        Occasion::Transition { task_id, version } => format!("task:{task_id}:v{version}:{name}"),
        Occasion::Reconcile { task_id, version } => {
            let base = format!("task:{task_id}:v{version}:reconcile");
            match message {
                Message::Notify(_) => base,
                _ => format!("{base}:{name}"),
            }
        }
        Occasion::Park { task_id, since_ms } => format!("park:{task_id}:{since_ms}:{name}"),
        Occasion::Pause {
            account, since_ms, ..
        } => {
            let base = format!("pause:{account}:{since_ms}");
            match message {
                Message::Notify(_) => base,
                _ => format!("{base}:{name}"),
            }
        }
        Occasion::Run {
            task_id,
            job_id,
            run,
            epoch,
        } => {
            let base = format!("task:{task_id}:job{job_id}:a{run}:e{epoch}:report");
            match message {
                Message::Tracker(TrackerMessage::Comment(_)) => base,
                Message::Forge(ForgeMessage::Comment(_)) => format!("{base}:pr"),
                _ => format!("{base}:{name}"),
            }
        }
        Occasion::Push { task_id } => match message {
            Message::Forge(ForgeMessage::OpenPr(_)) => format!("task:{task_id}:pr"),
            _ => format!("task:{task_id}:push:{name}"),
        },
    }
}

/// Queues `message` for `on` in `tx` — the one way outbox rows are
/// written (`tests/layers.rs` checks it): the channel, kind and payload
/// come from the message, the task and the dedupe key from the occasion
/// ([`dedupe_key`]). A second write with the same key is a no-op. Returns
/// whether a row was inserted.
///
/// Errors: database errors.
pub fn queue(tx: &Tx, on: &Occasion, message: &Message, now_ms: i64) -> anyhow::Result<bool> {
    tx.insert_outbox(
        &dedupe_key(on, message),
        Some(on.task_id()),
        message.channel(),
        message.kind(),
        &message.payload(),
        on.claim(),
        now_ms,
    )
}

/// Serde for a [`StateKind`] as its key (`needs_input`, …).
mod state_key {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::StateKind;

    pub fn serialize<S: Serializer>(k: &StateKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.key())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StateKind, D::Error> {
        let key = String::deserialize(d)?;
        StateKind::from_key(&key)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown tracker state {key:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(s: &str) -> String {
        s.to_string()
    }

    /// Every message orch writes, with the payload the untyped code wrote
    /// for it (`json!` as the writers had it): the row is the same.
    fn messages_and_old_payloads() -> Vec<(Message, &'static str, &'static str, Value)> {
        let report = Report {
            role: text("reviewer"),
            stage: text("review"),
            job_id: 7,
            attempt: 1,
            outcome: text("succeeded"),
            exit_code: Some(0),
            verdict: Some(ReportVerdict {
                verdict: text("approve"),
                summary: text("fine"),
            }),
            permission_denials: vec![text("Write /x")],
            branch: text("orch/w-1"),
            commit: None,
            usage: Some(Usage {
                input_tokens: 8,
                output_tokens: 110,
                cache_read_input_tokens: 33204,
                cache_creation_input_tokens: 5722,
                cost_usd: 0.5,
            }),
        };
        vec![
            (
                Message::Tracker(TrackerMessage::State(TrackerState {
                    state: StateKind::NeedsInput,
                })),
                "tracker",
                "state",
                json!({ "state": "needs_input" }),
            ),
            (
                Message::Tracker(TrackerMessage::Comment(TrackerComment {
                    text: text("orch: a → b"),
                    report: None,
                })),
                "tracker",
                "comment",
                json!({ "text": "orch: a → b" }),
            ),
            (
                Message::Tracker(TrackerMessage::Comment(TrackerComment {
                    text: text("reviewer run"),
                    report: Some(Box::new(report)),
                })),
                "tracker",
                "comment",
                json!({ "text": "reviewer run", "report": {
                    "role": "reviewer",
                    "stage": "review",
                    "job_id": 7,
                    "attempt": 1,
                    "outcome": "succeeded",
                    "exit_code": 0,
                    "verdict": { "verdict": "approve", "summary": "fine" },
                    "permission_denials": ["Write /x"],
                    "branch": "orch/w-1",
                    "commit": null,
                    "usage": {
                        "input_tokens": 8,
                        "output_tokens": 110,
                        "cache_read_input_tokens": 33204,
                        "cache_creation_input_tokens": 5722,
                        "cost_usd": 0.5,
                    },
                }}),
            ),
            (
                Message::Forge(ForgeMessage::OpenPr(OpenPr {
                    branch: text("orch/w-1"),
                    base: text("main"),
                    title: text("t"),
                    body: text("b"),
                })),
                "forge",
                "open_pr",
                json!({ "branch": "orch/w-1", "base": "main", "title": "t", "body": "b" }),
            ),
            (
                Message::Forge(ForgeMessage::Comment(PrComment {
                    text: text("**x**"),
                })),
                "forge",
                "comment",
                json!({ "text": "**x**" }),
            ),
            (
                Message::Notify(Notification {
                    kind: NotifyKind::Paused,
                    text: text("paused"),
                }),
                "notify",
                "paused",
                json!({ "text": "paused" }),
            ),
            (
                Message::Forge(ForgeMessage::MarkMerged(MarkMerged {
                    branch: text("orch/w-1"),
                    merge_commit: "a".repeat(40),
                })),
                "forge",
                "mark_merged",
                json!({ "branch": "orch/w-1", "merge_commit": "a".repeat(40) }),
            ),
        ]
    }

    #[test]
    fn rows_keep_the_untyped_shape_and_read_back() {
        for (m, channel, kind, old) in messages_and_old_payloads() {
            assert_eq!((m.channel(), m.kind()), (channel, kind));
            assert_eq!(m.payload(), old, "{m:?}");
            assert_eq!(m.payload().to_string(), old.to_string(), "same text");
            assert_eq!(Message::parse(channel, kind, &old), Ok(m));
        }
        for k in NotifyKind::ALL {
            let m = Message::parse("notify", k.as_str(), &json!({ "text": "x" })).unwrap();
            assert_eq!(m.kind(), k.as_str());
        }
    }

    #[test]
    fn a_row_that_is_no_message_is_malformed_and_says_why() {
        let why = |c: &str, k: &str, p: Value| Message::parse(c, k, &p).unwrap_err().to_string();
        let e = why("tracker", "state", json!({ "state": "sideways" }));
        assert!(
            e.starts_with("malformed tracker/state message:") && e.contains("\"sideways\""),
            "{e}"
        );
        let e = why("forge", "open_pr", json!({ "branch": "b" }));
        assert!(e.contains("missing field `base`"), "{e}");
        assert!(why("notify", "x", json!({ "text": "t" })).contains("unknown notification kind"));
        assert!(why("forge", "merge", json!({})).contains("unknown kind"));
        assert!(why("pager", "x", json!({})).contains("unknown channel"));
        let e = why("tracker", "comment", Value::String("not json".into()));
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn dedupe_keys_are_the_ones_the_writers_always_wrote() {
        let msgs: Vec<Message> = messages_and_old_payloads()
            .into_iter()
            .map(|m| m.0)
            .collect();
        let [state, comment, report, open_pr, pr_comment, notify, mark_merged] = &msgs[..] else {
            panic!()
        };
        let t = Occasion::Transition {
            task_id: 3,
            version: 4,
        };
        assert_eq!(dedupe_key(&t, comment), "task:3:v4:comment");
        assert_eq!(dedupe_key(&t, state), "task:3:v4:state");
        assert_eq!(dedupe_key(&t, notify), "task:3:v4:notify");
        assert_eq!(dedupe_key(&t, mark_merged), "task:3:v4:mark_merged");
        let r = Occasion::Reconcile {
            task_id: 3,
            version: 4,
        };
        assert_eq!(dedupe_key(&r, notify), "task:3:v4:reconcile");
        let p = Occasion::Park {
            task_id: 3,
            since_ms: 99,
        };
        assert_eq!(dedupe_key(&p, notify), "park:3:99:notify");
        assert_eq!(dedupe_key(&p, comment), "park:3:99:comment");
        let a = Occasion::Pause {
            account: "main",
            since_ms: 99,
            task_id: 3,
        };
        assert_eq!(dedupe_key(&a, notify), "pause:main:99");
        assert_eq!(a.task_id(), 3);
        let run = Occasion::Run {
            task_id: 3,
            job_id: 7,
            run: 2,
            epoch: 5,
        };
        assert_eq!(dedupe_key(&run, report), "task:3:job7:a2:e5:report");
        assert_eq!(dedupe_key(&run, pr_comment), "task:3:job7:a2:e5:report:pr");
        assert_eq!(run.claim(), Some((7, 5)));
        // Another claim's report of the same run number is another message.
        let again = Occasion::Run {
            task_id: 3,
            job_id: 7,
            run: 2,
            epoch: 6,
        };
        assert_ne!(dedupe_key(&again, report), dedupe_key(&run, report));
        let push = Occasion::Push { task_id: 3 };
        assert_eq!(dedupe_key(&push, open_pr), "task:3:pr");
        // Pairs no writer makes today still get keys of their own.
        let mut keys = std::collections::BTreeSet::new();
        for on in [t, r, p, a, run, push] {
            for m in &msgs[..] {
                if !matches!(m, Message::Tracker(TrackerMessage::Comment(c)) if c.report.is_some())
                {
                    assert!(keys.insert(dedupe_key(&on, m)), "{on:?} {m:?}");
                }
            }
        }
    }
}
