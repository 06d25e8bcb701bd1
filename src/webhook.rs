//! Webhook deliveries: authentic input only (DESIGN §11 item 7).
//!
//! Everything that enters the inbox comes through here, from `orch serve`
//! or `orch ingest --file`. Nothing is stored unless the sender's HMAC over
//! the *raw* body bytes verifies with the configured secret (compared in
//! constant time), the delivery carries its id and event headers, the body
//! is at most [`MAX_BODY_BYTES`] and is JSON within limits
//! ([`check_json`]). An unset secret
//! refuses every delivery of that source: unsigned input is never accepted.
//!
//! The rules here are the same for every sender; what differs (which
//! headers carry the id, the event and the signature, how a retry is
//! recognised) is each sender's [`WebhookSource`], in its tracker's or
//! forge's folder (`tracker::plane`, `forge::gitea`). [`SOURCES`] is the
//! registry: the routes `/webhooks/<name>`, `orch ingest --source` and the
//! inbox's `source` column take their names from it.
//!
//! The functions are pure (apart from [`store`], which writes one inbox row
//! in one `BEGIN IMMEDIATE` transaction) so the HTTP shim stays a thin
//! adapter and every rule is unit-tested against the recorded fixtures.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::db::{Db, NewDelivery, Recorded};
use crate::webhook_source::{Signature, WebhookSource};

/// Largest accepted request body (1 MiB); larger deliveries are refused.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Deepest nesting of arrays and objects a delivery body may have (Plane
/// and Gitea send a handful of levels).
pub const MAX_JSON_DEPTH: usize = 64;

/// A sender of webhook deliveries: one entry of [`SOURCES`], compared
/// and shown by its name (`plane`, `gitea`). Its rules (headers,
/// signature, redeliveries) are its [`WebhookSource`], in its tracker's or
/// forge's folder.
#[derive(Clone, Copy)]
pub struct Source(&'static dyn WebhookSource);

/// Every sender orch accepts deliveries from, in the order `--help` and
/// errors list them. A new tracker or forge adds its [`WebhookSource`]
/// here; the route `/webhooks/<name>`, `orch ingest --source <name>` and
/// the inbox follow from it.
pub static SOURCES: &[Source] = &[
    Source(&crate::tracker::plane::Webhook),
    Source(&crate::forge::gitea::Webhook),
];

impl Source {
    /// The source implemented by `rules` (for code that plays one sender,
    /// such as `orch staging-check`).
    pub const fn new(rules: &'static dyn WebhookSource) -> Source {
        Source(rules)
    }

    /// The registered source named `name` (exactly, lowercase), if any.
    pub fn named(name: &str) -> Option<Source> {
        SOURCES.iter().copied().find(|s| s.name() == name)
    }

    /// The source's name (the inbox `source` column).
    pub fn as_str(self) -> &'static str {
        self.0.name()
    }

    /// The names of every registered source, `"plane, gitea"`.
    pub fn names() -> String {
        SOURCES
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::ops::Deref for Source {
    type Target = dyn WebhookSource;

    fn deref(&self) -> &(dyn WebhookSource + 'static) {
        self.0
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Source {}

impl std::hash::Hash for Source {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({})", self.as_str())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = String;

    /// A registered source by name, trimmed, any case. Errors: `unknown
    /// source "x"; expected plane or gitea` (listing [`SOURCES`]).
    fn from_str(s: &str) -> Result<Source, String> {
        Source::named(&s.trim().to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<_> = SOURCES.iter().map(|s| s.as_str()).collect();
            let expected = match names.split_last() {
                Some((last, [])) => last.to_string(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => "none".to_string(),
            };
            format!("unknown source {s:?}; expected {expected}")
        })
    }
}

/// Why [`store`] refused a delivery (the caller answers 400, not 503).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The body is not valid JSON, or nests deeper than
    /// [`MAX_JSON_DEPTH`], or holds a number out of range.
    #[error("body is not valid JSON: {0}")]
    BadJson(String),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body of {0} bytes exceeds the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
}

/// Verifies the sender's signature over the raw body bytes, in constant
/// time: the source says where it is ([`WebhookSource::signature`]:
/// Plane's `X-Plane-Signature`, Gitea's `X-Gitea-Signature` or
/// `X-Hub-Signature-256`), and it must be `hex(HMAC-SHA256(secret,
/// body))`.
///
/// Header names are matched case-insensitively. A missing header, an empty
/// value, non-hex, a wrong length or a mismatch is an `Err` with the
/// reason; so is an empty `secret` (unsigned input is never accepted).
pub fn verify_signature(
    source: Source,
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), String> {
    if secret.trim().is_empty() {
        return Err(format!(
            "no webhook secret configured for {source}; set {}",
            source.secret_setting()
        ));
    }
    let Signature {
        header: name,
        hex: hex_sig,
    } = source.signature(headers)?;
    if hex_sig.is_empty() {
        return Err(format!(
            "{name} is empty (the sender has no secret configured)"
        ));
    }
    let sig = hex::decode(hex_sig).map_err(|_| format!("{name} is not hex"))?;
    if sig.len() != 32 {
        return Err(format!(
            "{name} has {} bytes, expected 32 (HMAC-SHA256)",
            sig.len()
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| format!("bad webhook secret: {e}"))?;
    mac.update(body);
    mac.verify_slice(&sig)
        .map_err(|_| format!("{name} does not match the body"))
}

/// `hex(HMAC-SHA256(secret, body))`: the signature Plane sends as
/// `X-Plane-Signature` and Gitea as `X-Gitea-Signature` (no prefix), which
/// [`verify_signature`] checks. For senders orch plays itself
/// (`orch staging-check`).
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts a key of any length; `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The delivery id and event name of a delivery, from the headers the
/// source names ([`WebhookSource::delivery_meta`]; Plane:
/// `X-Plane-Delivery`, `X-Plane-Event`. Gitea: `X-Gitea-Delivery`,
/// `X-Gitea-Event-Type` falling back to `X-Gitea-Event`). A missing or
/// empty header is an `Err` naming it.
pub fn delivery_meta(
    source: Source,
    headers: &[(String, String)],
) -> Result<(String, String), String> {
    source.delivery_meta(headers)
}

/// Lowercase hex SHA-256 of the body.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Whether a header must not be kept: signatures and credentials.
fn is_secret_header(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    (n.starts_with("x-") && n.contains("-signature"))
        || n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
}

/// The headers worth keeping in the inbox, as a JSON object `{name:
/// value}`: everything except signatures (`X-*-Signature*`),
/// `Authorization`, `Proxy-Authorization` and `Cookie`. A repeated header's
/// values are joined with `", "`.
pub fn stored_headers(headers: &[(String, String)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        if is_secret_header(name) {
            continue;
        }
        let name = name.trim();
        let value = value.trim();
        match map.get_mut(name) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(value);
            }
            _ => {
                map.insert(
                    name.to_string(),
                    serde_json::Value::String(value.to_string()),
                );
            }
        }
    }
    serde_json::Value::Object(map)
}

/// Parses the headers-file format: one `Name: value` per line (LF or
/// CRLF). Blank lines and lines without a `:` are skipped; names and values
/// are trimmed.
pub fn parse_header_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            Some((name.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Checks that a delivery body is JSON orch can hold and read back: UTF-8,
/// one JSON value (RFC 8259) and nothing after it, arrays and objects
/// nested at most [`MAX_JSON_DEPTH`] deep, every number a finite `f64` or
/// an integer that fits 64 bits, and no unpaired surrogate escape
/// (`"\ud800"`) in a string. The parse is serde_json's, streaming, with
/// no tree built; the depth limit bounds its recursion, so no input can
/// exhaust the stack.
///
/// Errors: [`Rejection::BadJson`] with serde_json's reason and position
/// (e.g. `invalid unicode code point`, `number out of range`,
/// `lone leading surrogate in hex escape`, `nesting deeper than 64
/// levels`).
pub fn check_json(body: &[u8]) -> Result<(), Rejection> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    JsonCheck(MAX_JSON_DEPTH)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| Rejection::BadJson(e.to_string()))
}

/// [`check_json`]'s visitor: the levels of nesting still allowed.
struct JsonCheck(usize);

impl<'de> serde::de::DeserializeSeed<'de> for JsonCheck {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl JsonCheck {
    /// The level below this one, or the error when there is none.
    fn deeper<E: serde::de::Error>(&self) -> Result<JsonCheck, E> {
        match self.0 {
            0 => Err(E::custom(format!(
                "nesting deeper than {MAX_JSON_DEPTH} levels"
            ))),
            n => Ok(JsonCheck(n - 1)),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(JsonCheck(inner.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while map.next_key_seed(JsonCheck(0))?.is_some() {
            map.next_value_seed(JsonCheck(inner.0))?;
        }
        Ok(())
    }
}

/// Validates and stores one delivery: the body must be at most
/// [`MAX_BODY_BYTES`] (else [`Rejection::TooLarge`]) and JSON within
/// limits ([`check_json`], else `Err(`[`Rejection::BadJson`]`)`; nothing
/// written); then one `BEGIN
/// IMMEDIATE` transaction records it unless it is a redelivery (same
/// delivery id; for a source that dedupes by body, such as Plane, also
/// the same body hash). The signature must
/// have been verified by the caller ([`verify_signature`]).
///
/// Returns [`Recorded::Stored`] or [`Recorded::Duplicate`]; when this
/// returns `Ok` the row is committed. Other errors are database errors
/// (the sender may retry; nothing was stored).
pub fn store(
    db: &Db,
    source: Source,
    event: &str,
    delivery_id: &str,
    headers: &[(String, String)],
    body: &[u8],
    now_ms: i64,
) -> anyhow::Result<Recorded> {
    if body.len() > MAX_BODY_BYTES {
        // The shim caps the body while reading; `ingest --file` relies on this.
        return Err(Rejection::TooLarge(body.len()).into());
    }
    check_json(body)?;
    let delivery = NewDelivery {
        source: source.as_str().to_string(),
        dedupe: source.dedupe(),
        event: event.to_string(),
        delivery_id: delivery_id.to_string(),
        headers: stored_headers(headers),
        body: body.to_vec(),
    };
    let hash = body_sha256(body);
    db.write(|tx| tx.record_delivery(&delivery, &hash, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook_source::header;

    const PLANE: Source = Source::new(&crate::tracker::plane::Webhook);
    const GITEA: Source = Source::new(&crate::forge::gitea::Webhook);

    const SECRET: &str = "fixture-secret";

    #[test]
    fn check_json_refuses_what_is_not_json_within_limits() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        let deep_objects =
            |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes();
        assert!(check_json(&deep(MAX_JSON_DEPTH)).is_ok());
        assert!(check_json(&deep_objects(MAX_JSON_DEPTH)).is_ok());
        for body in [
            br#"{"a": [1, -2, 3.5e10, "x\u00e9\ud83d\ude00", null, true]}"#.to_vec(),
            "{\"caf\u{e9}\": \"\u{1F600}\"}".as_bytes().to_vec(),
            b"18446744073709551615".to_vec(),
            b"-9223372036854775808".to_vec(),
            b"1e308".to_vec(),
        ] {
            assert!(
                check_json(&body).is_ok(),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        let bad: Vec<(Vec<u8>, &str)> = vec![
            (deep(MAX_JSON_DEPTH + 1), "nesting deeper than 64 levels"),
            (
                deep_objects(MAX_JSON_DEPTH + 1),
                "nesting deeper than 64 levels",
            ),
            (deep(100_000), "nesting deeper than 64 levels"),
            (
                b"{\"a\": \"\xff\xfe\"}".to_vec(),
                "invalid unicode code point",
            ),
            (b"\xef\xbb\xbf{}".to_vec(), "expected value"),
            (b"[1e999]".to_vec(), "number out of range"),
            (b"-1e999".to_vec(), "number out of range"),
            (
                br#"{"a": "\ud800"}"#.to_vec(),
                "unexpected end of hex escape",
            ),
            (
                br#"{"a": "\ud800x"}"#.to_vec(),
                "unexpected end of hex escape",
            ),
            // serde_json names a lone trailing surrogate a "leading" one.
            (br#"["\udc00x"]"#.to_vec(), "lone leading surrogate"),
            (br#"["\ud800\u0041"]"#.to_vec(), "lone leading surrogate"),
            (br#"{"\ud800": 1}"#.to_vec(), "unexpected end of hex escape"),
            (b"{} {}".to_vec(), "trailing characters"),
            (b"".to_vec(), "EOF"),
            (b"NaN".to_vec(), "expected value"),
        ];
        for (body, want) in bad {
            let e = check_json(&body).unwrap_err().to_string();
            assert!(
                e.starts_with("body is not valid JSON: ") && e.contains(want),
                "{}: {e}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
        }
    }

    /// (name, body, headers) of every recorded delivery.
    fn fixtures() -> Vec<(Source, &'static str, &'static [u8], &'static str)> {
        macro_rules! fx {
            ($src:expr, $dir:literal, $name:literal) => {
                (
                    $src,
                    $name,
                    &include_bytes!(concat!(
                        "../tests/fixtures/",
                        $dir,
                        "/webhooks/",
                        $name,
                        ".json"
                    ))[..],
                    include_str!(concat!(
                        "../tests/fixtures/",
                        $dir,
                        "/webhooks/",
                        $name,
                        ".headers"
                    )),
                )
            };
        }
        vec![
            fx!(PLANE, "plane", "issue-updated-state-in-progress"),
            fx!(PLANE, "plane", "issue-updated-state-approved"),
            fx!(PLANE, "plane", "issue-updated-state-rejected"),
            fx!(PLANE, "plane", "issue_comment-created"),
            fx!(PLANE, "plane", "issue-created"),
            fx!(GITEA, "gitea", "issue_comment-pr-created"),
            fx!(GITEA, "gitea", "pull_request-closed-merged"),
            fx!(GITEA, "gitea", "pull_request-closed-unmerged"),
            fx!(GITEA, "gitea", "pull_request-opened"),
            fx!(GITEA, "gitea", "pull_request-synchronized"),
            fx!(GITEA, "gitea", "push"),
            fx!(GITEA, "gitea", "status-failure"),
            fx!(GITEA, "gitea", "status-pending"),
            fx!(GITEA, "gitea", "status-success"),
            fx!(GITEA, "gitea", "workflow_job-completed"),
            fx!(GITEA, "gitea", "workflow_job-queued"),
            fx!(GITEA, "gitea", "workflow_run-completed"),
        ]
    }

    #[test]
    fn every_fixture_directory_file_is_covered() {
        for dir in ["plane", "gitea"] {
            let path = format!(
                "{}/tests/fixtures/{dir}/webhooks",
                env!("CARGO_MANIFEST_DIR")
            );
            let on_disk = std::fs::read_dir(&path)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .and_then(|x| x.to_str())
                        == Some("json")
                })
                .count();
            let covered = fixtures()
                .iter()
                .filter(|(s, ..)| s.as_str() == dir)
                .count();
            assert_eq!(on_disk, covered, "{path}");
        }
    }

    #[test]
    fn all_fixture_signatures_verify() {
        for (src, name, body, headers) in fixtures() {
            let h = parse_header_lines(headers);
            verify_signature(src, SECRET, &h, body).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (id, event) = delivery_meta(src, &h).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!id.is_empty() && !event.is_empty(), "{name}");
            serde_json::from_slice::<serde_json::Value>(body).unwrap();
        }
    }

    #[test]
    fn sign_reproduces_the_senders_signatures() {
        for (src, name, body, headers) in fixtures() {
            let h = parse_header_lines(headers);
            let want = header(&h, "X-Plane-Signature")
                .or_else(|| header(&h, "X-Gitea-Signature"))
                .unwrap_or_else(|| panic!("{name}: no signature header"));
            assert_eq!(sign(SECRET, body), want, "{name}");
            let ours = vec![(
                if src == PLANE {
                    "X-Plane-Signature"
                } else {
                    "X-Gitea-Signature"
                }
                .to_string(),
                sign(SECRET, body),
            )];
            assert!(verify_signature(src, SECRET, &ours, body).is_ok(), "{name}");
        }
    }

    #[test]
    fn flipped_byte_wrong_secret_and_missing_header_fail() {
        for (src, name, body, headers) in fixtures() {
            let h = parse_header_lines(headers);
            let mut bad = body.to_vec();
            bad[body.len() / 2] ^= 0x01;
            assert!(verify_signature(src, SECRET, &h, &bad).is_err(), "{name}");
            let mut extra = body.to_vec();
            extra.push(b'\n');
            assert!(verify_signature(src, SECRET, &h, &extra).is_err(), "{name}");
            assert!(
                verify_signature(src, "other-secret", &h, body).is_err(),
                "{name}"
            );
            let stripped: Vec<_> = h
                .iter()
                .filter(|(n, _)| !n.to_ascii_lowercase().contains("signature"))
                .cloned()
                .collect();
            let err = verify_signature(src, SECRET, &stripped, body).unwrap_err();
            assert!(err.contains("missing"), "{name}: {err}");
        }
    }

    #[test]
    fn empty_secret_refuses() {
        let (src, _, body, headers) = fixtures()[0];
        let h = parse_header_lines(headers);
        let err = verify_signature(src, "", &h, body).unwrap_err();
        assert_eq!(
            err,
            "no webhook secret configured for plane; set ORCH_PLANE_WEBHOOK_SECRET"
        );
        assert!(verify_signature(GITEA, "  ", &h, body)
            .unwrap_err()
            .contains("ORCH_GITEA_WEBHOOK_SECRET"));
    }

    fn gitea_status() -> (Vec<(String, String)>, &'static [u8]) {
        let (_, _, body, headers) = fixtures()
            .into_iter()
            .find(|f| f.1 == "status-success")
            .unwrap();
        (parse_header_lines(headers), body)
    }

    #[test]
    fn gitea_hub_signature_256_fallback() {
        let (h, body) = gitea_status();
        let only_hub: Vec<_> = h
            .iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                n != "x-gitea-signature" && n != "x-gogs-signature" && n != "x-hub-signature"
            })
            .cloned()
            .collect();
        verify_signature(GITEA, SECRET, &only_hub, body).unwrap();
        // Without the prefix it is refused.
        let no_prefix: Vec<_> = only_hub
            .iter()
            .map(|(n, v)| (n.clone(), v.trim_start_matches("sha256=").to_string()))
            .collect();
        assert!(verify_signature(GITEA, SECRET, &no_prefix, body).is_err());
        // A wrong X-Hub-Signature-256 fails too.
        let mut bad = body.to_vec();
        bad[10] ^= 1;
        assert!(verify_signature(GITEA, SECRET, &only_hub, &bad).is_err());
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let (h, body) = gitea_status();
        let lower: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        verify_signature(GITEA, SECRET, &lower, body).unwrap();
        assert_eq!(
            delivery_meta(GITEA, &lower).unwrap(),
            (
                "54762d50-c37c-4e30-a274-139b1b32d516".to_string(),
                "status".to_string()
            )
        );
    }

    #[test]
    fn malformed_signatures_fail() {
        let (h, body) = gitea_status();
        let with = |v: &str| -> Vec<(String, String)> {
            vec![("X-Gitea-Signature".to_string(), v.to_string())]
        };
        let good = header(&h, "X-Gitea-Signature").unwrap().to_string();
        verify_signature(GITEA, SECRET, &with(&good), body).unwrap();
        verify_signature(GITEA, SECRET, &with(&good.to_uppercase()), body).unwrap();
        for bad in [
            "",
            "zz",
            &good[..62],
            &format!("{good}00"),
            &format!("sha256={good}"),
        ] {
            assert!(
                verify_signature(GITEA, SECRET, &with(bad), body).is_err(),
                "{bad:?}"
            );
        }
        // An empty X-Gitea-Signature is not rescued by X-Hub-Signature-256.
        let mut both = with("");
        both.push(("X-Hub-Signature-256".to_string(), format!("sha256={good}")));
        assert!(verify_signature(GITEA, SECRET, &both, body).is_err());
    }

    #[test]
    fn delivery_meta_reads_and_names_missing_headers() {
        let (src, _, _, headers) = fixtures()[0];
        let h = parse_header_lines(headers);
        assert_eq!(
            delivery_meta(src, &h).unwrap(),
            (
                "6ab712c5-df1f-4e11-b965-123cce86db73".to_string(),
                "issue".to_string()
            )
        );
        let err = delivery_meta(src, &[]).unwrap_err();
        assert!(err.contains("X-Plane-Delivery"), "{err}");
        let only_id = vec![("X-Plane-Delivery".to_string(), "x".to_string())];
        assert!(delivery_meta(src, &only_id)
            .unwrap_err()
            .contains("X-Plane-Event"));

        // Gitea: the exact type wins; the group is the fallback.
        let sync = fixtures()
            .into_iter()
            .find(|f| f.1 == "pull_request-synchronized")
            .unwrap();
        let h = parse_header_lines(sync.3);
        assert_eq!(delivery_meta(GITEA, &h).unwrap().1, "pull_request_sync");
        let group_only: Vec<_> = h
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("X-Gitea-Event-Type"))
            .cloned()
            .collect();
        assert_eq!(delivery_meta(GITEA, &group_only).unwrap().1, "pull_request");
        assert!(delivery_meta(GITEA, &[])
            .unwrap_err()
            .contains("X-Gitea-Delivery"));
    }

    #[test]
    fn stored_headers_drop_secrets() {
        let (h, _) = gitea_status();
        let mut h = h;
        h.push(("Authorization".into(), "token abc".into()));
        h.push(("cookie".into(), "a=b".into()));
        let v = stored_headers(&h);
        let obj = v.as_object().unwrap();
        assert_eq!(
            obj["X-Gitea-Delivery"],
            "54762d50-c37c-4e30-a274-139b1b32d516"
        );
        assert_eq!(obj["X-Gitea-Event-Type"], "status");
        for k in obj.keys() {
            let k = k.to_ascii_lowercase();
            assert!(
                !k.contains("signature") && k != "authorization" && k != "cookie",
                "{k}"
            );
        }
        assert!(!v.to_string().contains("7109c2388b2b1ffdc47c"));
    }

    #[test]
    fn parse_header_lines_handles_crlf_and_junk() {
        let h = parse_header_lines("A: 1\r\n\r\nnot a header\nB:two: parts \n: x\n");
        assert_eq!(
            h,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "two: parts".to_string())
            ]
        );
    }

    #[test]
    fn body_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            body_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn source_round_trips() {
        for s in [PLANE, GITEA] {
            assert_eq!(s.as_str().parse::<Source>().unwrap(), s);
        }
        assert_eq!(
            "github".parse::<Source>().unwrap_err(),
            "unknown source \"github\"; expected plane or gitea"
        );
        assert_eq!(" Plane ".parse::<Source>().unwrap(), PLANE);
    }

    #[test]
    fn store_records_once_and_rejects_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 5_000).unwrap();
        let (src, _, body, headers) = fixtures()[0];
        let h = parse_header_lines(headers);
        let (id, event) = delivery_meta(src, &h).unwrap();
        let first = store(&db, src, &event, &id, &h, body, 1).unwrap();
        let Recorded::Stored(row) = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            store(&db, src, &event, &id, &h, body, 2).unwrap(),
            Recorded::Duplicate(row)
        );
        // A Plane retry: new delivery id, same body.
        assert_eq!(
            store(&db, src, &event, "new-id", &h, body, 3).unwrap(),
            Recorded::Duplicate(row)
        );
        let err = store(&db, src, &event, "other", &h, b"{not json", 4).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<Rejection>(),
            Some(Rejection::BadJson(_))
        ));
        let (headers_json, n): (String, i64) = db
            .conn()
            .query_row("SELECT max(headers), count(*) FROM inbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(n, 1);
        assert!(!headers_json.to_ascii_lowercase().contains("signature"));
    }
}
