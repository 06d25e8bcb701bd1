//! The Telegram notifier (Bot API `sendMessage`), per
//! `tests/fixtures/telegram/README.md`, and the two reads `orch config
//! check --online` makes of the bot (`getMe`) and its chat (`getChat`).
//!
//! Escalations, unblocks, failures and deploys are outbox messages on the
//! `notify` channel; with `ORCH_NOTIFIER=telegram` they are sent here as
//! plain text (no parse mode, so no markup can be rejected), link previews
//! off. A 429 carries `parameters.retry_after` (and usually a
//! `Retry-After` header); the outbox waits at least that long before the
//! next try.
//!
//! **What "exactly once" means here.** The Bot API offers no way to look
//! for a message already sent and no idempotency key, so a send that
//! reached Telegram but whose answer was lost (a crash between sending and
//! recording, a dropped connection, a timeout after the request was
//! written) is sent again on the next pass: notifications are delivered
//! *at least once*, and a duplicate is possible only after such an
//! ambiguous failure. Every other failure (connection refused, 4xx, 5xx)
//! is known not to have posted. The bot token is part of the URL path, so
//! neither URLs nor ureq's trace logs of them are ever written.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{enabled, required, AdapterError, Api, Reply};
use crate::config::{AdapterSettings, Secret};

const SERVICE: &str = "telegram";

/// The Bot API answer envelope: `{ok, result}` or
/// `{ok: false, error_code, description, parameters}`; `T` is the method's
/// result (`Message` for `sendMessage`).
#[derive(Debug, Clone, Deserialize)]
pub struct Answer<T = Message> {
    pub ok: bool,
    /// Missing in error answers (serde reads a missing `Option` as `None`).
    pub result: Option<T>,
    #[serde(default)]
    pub error_code: Option<i64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// `ResponseParameters`: `retry_after` (flood control) and
/// `migrate_to_chat_id` (the group became a supergroup) are read.
#[derive(Debug, Clone, Deserialize)]
pub struct Parameters {
    /// Seconds to wait before the next request (flood control).
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub migrate_to_chat_id: Option<i64>,
}

/// The sent message (only `message_id` is read).
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub message_id: i64,
    #[serde(default)]
    pub date: i64,
}

/// The bot, as `getMe` answers it (a `User`; the other fields are not
/// read). Shape: `tests/fixtures/telegram/getMe.200.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Bot {
    pub id: i64,
    #[serde(default)]
    pub is_bot: bool,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub username: Option<String>,
}

/// The chat, as `getChat` answers it (a `ChatFullInfo`; only these fields
/// are read). `kind` is `private`, `group`, `supergroup` or `channel`.
#[derive(Debug, Clone, Deserialize)]
pub struct Chat {
    pub id: i64,
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Groups, supergroups and channels.
    #[serde(default)]
    pub title: Option<String>,
    /// Private chats.
    #[serde(default)]
    pub first_name: Option<String>,
}

/// A Telegram bot posting to one chat. `Debug` and `Display` leave out
/// the URL, which holds the token.
pub struct Telegram {
    /// `<api>/bot<token>`
    api: Api,
    chat_id: Value,
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telegram")
            .field("chat_id", &self.chat_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "telegram bot (chat {})", self.chat_id)
    }
}

impl Telegram {
    /// A bot with `token` posting to `chat_id` (a number, or `@channel`)
    /// through the Bot API at `api_url`.
    pub fn new(s: &AdapterSettings, api_url: &str, token: &Secret, chat_id: &str) -> Self {
        let chat_id = chat_id
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(chat_id.trim()));
        Telegram {
            api: Api::new(
                SERVICE,
                s,
                format!("{}/bot{}", api_url.trim_end_matches('/'), token.expose()),
                None,
                vec![token.clone()],
            ),
            chat_id,
        }
    }

    /// The notifier from the settings.
    ///
    /// Errors: [`AdapterError::Disabled`] when `ORCH_NOTIFY_ENABLED` is
    /// off, [`AdapterError::Config`] naming `ORCH_TELEGRAM_BOT_TOKEN` or
    /// `ORCH_TELEGRAM_CHAT_ID` when missing.
    pub fn from_settings(s: &AdapterSettings) -> Result<Telegram, AdapterError> {
        enabled(s.notify_enabled, SERVICE, "ORCH_NOTIFY_ENABLED")?;
        let why = "with ORCH_NOTIFIER=telegram";
        let token = required(&s.telegram_bot_token, "ORCH_TELEGRAM_BOT_TOKEN", why)?;
        let chat = required(&s.telegram_chat_id, "ORCH_TELEGRAM_CHAT_ID", why)?;
        Ok(Telegram::new(s, &s.telegram_api_url, token, chat))
    }

    /// Sends `text` and returns the message id.
    ///
    /// Errors: transport errors; [`AdapterError::Status`] with the Bot
    /// API's `description` and, for 429, the wait from
    /// `parameters.retry_after` (or the `Retry-After` header);
    /// [`AdapterError::Malformed`] for an answer that is not the envelope.
    /// A text longer than Telegram's limit ([`MAX_TEXT`]) is trimmed with
    /// the cut marked ([`fit`]).
    pub fn send(&self, text: &str) -> Result<i64, AdapterError> {
        let op = "sendMessage";
        let req = json!({
            "chat_id": self.chat_id,
            "text": fit(text),
            "link_preview_options": { "is_disabled": true },
        });
        let r = self.api.call("POST", "sendMessage", Some(&req), op)?;
        parse_answer(r, op)
    }

    /// The bot the token belongs to (`getMe`).
    ///
    /// Errors: as [`Telegram::send`]; a revoked or unknown token is a 401
    /// `Unauthorized`.
    pub fn get_me(&self) -> Result<Bot, AdapterError> {
        let op = "getMe";
        parse(self.api.call("GET", "getMe", None, op)?, op)
    }

    /// The configured chat, as the bot sees it (`getChat`).
    ///
    /// Errors: as [`Telegram::send`]; a wrong chat id, or a chat the bot is
    /// not in, is a 400 `Bad Request: chat not found`.
    pub fn get_chat(&self) -> Result<Chat, AdapterError> {
        let op = "getChat";
        let req = json!({ "chat_id": self.chat_id });
        parse(self.api.call("POST", "getChat", Some(&req), op)?, op)
    }
}

/// Telegram's limit on a message text: 4,096 characters (counted here in
/// UTF-16 code units, which is never fewer than characters).
pub const MAX_TEXT: usize = 4096;

/// `text` if it fits in [`MAX_TEXT`]; otherwise its beginning and its end
/// (where an escalation's stderr tail is) around a marked cut:
/// `…\n[orch: N characters cut]\n…`.
pub fn fit(text: &str) -> std::borrow::Cow<'_, str> {
    let units = |s: &str| s.encode_utf16().count();
    if units(text) <= MAX_TEXT {
        return text.into();
    }
    let chars: Vec<char> = text.chars().collect();
    // Leave room for the marker; keep a third at the head, the rest at
    // the end. Char-wise, then shrink until it fits in UTF-16 units.
    let mut budget = MAX_TEXT - 64;
    loop {
        let head = budget / 3;
        let tail = budget - head;
        let cut = chars.len() - head - tail;
        let out: String = chars[..head]
            .iter()
            .chain(
                format!("\n[orch: {cut} characters cut]\n")
                    .chars()
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .chain(chars[chars.len() - tail..].iter())
            .collect();
        if units(&out) <= MAX_TEXT {
            return out.into();
        }
        budget -= budget / 8 + 1;
    }
}

/// Interprets a `sendMessage` answer: the sent message's id.
///
/// Errors: as [`parse`].
pub fn parse_answer(r: Reply, op: &str) -> Result<i64, AdapterError> {
    parse::<Message>(r, op).map(|m| m.message_id)
}

/// Interprets a Bot API answer: its `result` as `T`.
///
/// Errors: [`AdapterError::Status`] with the `description` (and, for 429,
/// the wait from `parameters.retry_after` or the `Retry-After` header) for
/// `ok: false` or a non-2xx status; [`AdapterError::Malformed`] for an
/// answer that is not the envelope or has no `result`.
pub fn parse<T: DeserializeOwned>(r: Reply, op: &str) -> Result<T, AdapterError> {
    let answer: Result<Answer<T>, _> = serde_json::from_slice(&r.body);
    match answer {
        Ok(Answer {
            ok: true,
            result: Some(m),
            ..
        }) if r.ok() => Ok(m),
        Ok(a) if !r.ok() || !a.ok => {
            let retry_after_ms = a
                .parameters
                .as_ref()
                .and_then(|p| p.retry_after)
                .map(|s| s * 1000)
                .or(r.retry_after_ms);
            let status = if r.ok() {
                a.error_code
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(500)
            } else {
                r.status
            };
            let mut message = a.description.unwrap_or_else(|| r.error_text());
            // A basic group upgraded to a supergroup has a new id for good.
            if let Some(id) = a.parameters.as_ref().and_then(|p| p.migrate_to_chat_id) {
                message += &format!(" (its id is now {id}: set ORCH_TELEGRAM_CHAT_ID={id})");
            }
            Err(AdapterError::Status {
                service: SERVICE,
                op: op.into(),
                status,
                message,
                retry_after_ms,
            })
        }
        Ok(_) => Err(AdapterError::Malformed {
            service: SERVICE,
            op: op.into(),
            message: "ok answer without a result".into(),
        }),
        Err(_) if !r.ok() => Err(r.into_status_error(SERVICE, op)),
        Err(e) => Err(AdapterError::Malformed {
            service: SERVICE,
            op: op.into(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(name: &str) -> Reply {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/telegram");
        let headers = std::fs::read_to_string(dir.join(format!("{name}.headers"))).unwrap();
        let status = headers
            .lines()
            .find_map(|l| l.strip_prefix("Status: "))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        let retry_after_ms = headers
            .lines()
            .find_map(|l| l.strip_prefix("Retry-After: "))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|s| s * 1000);
        Reply {
            status,
            retry_after_ms,
            body: std::fs::read(dir.join(format!("{name}.json"))).unwrap(),
            ..Reply::default()
        }
    }

    #[test]
    fn a_text_over_4096_is_trimmed_with_the_cut_marked_keeping_head_and_tail() {
        assert_eq!(fit("short"), "short");
        let exact = "x".repeat(MAX_TEXT);
        assert_eq!(fit(&exact), exact);
        let long = format!("HEAD{}TAIL", "é".repeat(10_000));
        let out = fit(&long);
        assert!(out.encode_utf16().count() <= MAX_TEXT, "{}", out.len());
        assert!(out.starts_with("HEAD") && out.ends_with("TAIL"));
        assert!(out.contains(" characters cut]"), "{out}");
        // Astral characters count twice in UTF-16.
        let emoji = "🦀".repeat(5000);
        assert!(fit(&emoji).encode_utf16().count() <= MAX_TEXT);
    }

    #[test]
    fn success_answers_give_the_message_id() {
        assert_eq!(parse_answer(reply("sendMessage.200"), "x").unwrap(), 4711);
        assert_eq!(
            parse_answer(reply("sendMessage-private.200"), "x").unwrap(),
            88
        );
    }

    #[test]
    fn get_me_and_get_chat_answers_give_the_bot_and_the_chat() {
        let bot: Bot = parse(reply("getMe.200"), "getMe").unwrap();
        assert_eq!(bot.id, 7123456789);
        assert!(bot.is_bot);
        assert_eq!(bot.username.as_deref(), Some("orch_pipeline_bot"));
        let chat: Chat = parse(reply("getChat.200"), "getChat").unwrap();
        assert_eq!(chat.id, -1001234567890);
        assert_eq!(chat.kind, "supergroup");
        assert_eq!(chat.title.as_deref(), Some("Delivery pipeline"));
        let e = parse::<Chat>(reply("error-400-migrated"), "getChat").unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert!(!e.retryable());
        assert!(
            e.to_string()
                .contains("its id is now -1001234567890: set ORCH_TELEGRAM_CHAT_ID=-1001234567890"),
            "{e}"
        );
        let e = parse::<Chat>(reply("error-400-chat-not-found"), "getChat").unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert!(e.to_string().contains("chat not found"), "{e}");
    }

    #[test]
    fn errors_are_classified_and_429_carries_retry_after() {
        let e = parse_answer(reply("error-429-flood"), "x").unwrap_err();
        assert!(e.retryable());
        assert_eq!(e.retry_after_ms(), Some(35_000));
        assert!(e.to_string().contains("retry after 35"), "{e}");
        for name in [
            "error-400-chat-not-found",
            "error-400-text-empty",
            "error-401-unauthorized",
            "error-401-invalid-token",
            "error-403-blocked",
            "error-404-method",
        ] {
            let e = parse_answer(reply(name), "x").unwrap_err();
            assert!(!e.retryable(), "{name}: {e}");
            assert!(
                e.status().is_some_and(|s| (400..500).contains(&s)),
                "{name}"
            );
        }
        let garbage = Reply {
            status: 200,
            body: b"<html>".to_vec(),
            ..Reply::default()
        };
        assert!(parse_answer(garbage, "x").unwrap_err().retryable());
    }

    #[test]
    fn the_request_matches_the_fixture_shape_and_hides_the_token() {
        let s = AdapterSettings::load(&|_| None).unwrap();
        let t = Telegram::new(&s, "http://x", &Secret::new("123:SECRET"), "-1001234567890");
        assert_eq!(t.chat_id, json!(-1001234567890i64));
        assert!(!format!("{t:?}").contains("SECRET"));
        assert!(!t.to_string().contains("SECRET"));
        let fixture: Value = serde_json::from_slice(
            &std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/telegram/sendMessage.request.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(fixture["chat_id"], t.chat_id);
        let t = Telegram::new(&s, "http://x", &Secret::new("1:a"), "@orch_channel");
        assert_eq!(t.chat_id, json!("@orch_channel"));
    }
}
