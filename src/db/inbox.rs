//! The inbox (`inbox`): deliveries as received, until ingested or
//! dead-lettered.

use crate::sql::{params, OptionalExtension};
use serde::Serialize;

use super::{Db, Tx};
use crate::webhook_source::{CommentQuery, Dedupe};

/// A stored delivery (without its body).
#[derive(Debug, Clone, Serialize)]
pub struct InboxRow {
    pub id: i64,
    pub source: String,
    pub event: String,
    pub delivery_id: String,
    pub received_at_ms: i64,
    pub processed_at_ms: Option<i64>,
    pub outcome: Option<String>,
    pub attempts: i64,
    pub error: Option<String>,
    pub dead: bool,
}

/// A stored delivery's routing and exact body bytes.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: String,
    pub event: String,
    pub body: Vec<u8>,
    pub processed: bool,
}

/// A stored delivery's id, routing and exact body bytes.
#[derive(Debug, Clone)]
pub struct StoredDelivery {
    pub id: i64,
    pub source: String,
    pub event: String,
    pub body: Vec<u8>,
}

/// A new delivery for the inbox, as the shim or `ingest --file` received
/// it.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The sender's name (`webhook::SOURCES`: `plane`, `gitea`); the
    /// store keeps it as given.
    pub source: String,
    /// How a redelivery of this source is recognised (the source's rule).
    pub dedupe: Dedupe,
    /// The sender's event name (`X-Plane-Event`, `X-Gitea-Event-Type`).
    pub event: String,
    /// The sender's delivery id (`X-Plane-Delivery`, `X-Gitea-Delivery`).
    pub delivery_id: String,
    /// Request headers as a JSON object (secrets removed by the caller).
    pub headers: serde_json::Value,
    /// The exact body bytes.
    pub body: Vec<u8>,
}

/// Whether [`Tx::record_delivery`] stored a new row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored as inbox row `id`.
    Stored(i64),
    /// A redelivery of inbox row `id`; nothing stored.
    Duplicate(i64),
}

const INBOX_COLS: &str =
    "id, source, event, delivery_id, received_at_ms, processed_at_ms, outcome, \
     attempts, error, dead";

fn inbox_row(r: &crate::sql::Row) -> crate::sql::Result<InboxRow> {
    Ok(InboxRow {
        id: r.get(0)?,
        source: r.get(1)?,
        event: r.get(2)?,
        delivery_id: r.get(3)?,
        received_at_ms: r.get(4)?,
        processed_at_ms: r.get(5)?,
        outcome: r.get(6)?,
        attempts: r.get(7)?,
        error: r.get(8)?,
        dead: r.get(9)?,
    })
}

impl Db {
    /// Inbox rows, newest first; only unprocessed-and-failed or dead ones
    /// with `failed_only`.
    pub fn inbox(&self, failed_only: bool, limit: i64) -> anyhow::Result<Vec<InboxRow>> {
        let filter = if failed_only {
            "WHERE dead=1 OR (processed_at_ms IS NULL AND error IS NOT NULL)"
        } else {
            ""
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {INBOX_COLS} FROM inbox {filter} ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], inbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stored delivery of `source` with the sender's `delivery_id`,
    /// if any.
    pub fn delivery_by_sender_id(
        &self,
        source: &str,
        delivery_id: &str,
    ) -> anyhow::Result<Option<InboxRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {INBOX_COLS} FROM inbox WHERE source=?1 AND delivery_id=?2"),
                params![source, delivery_id],
                inbox_row,
            )
            .optional()?)
    }

    /// Inbox row `id` (without its body), if it exists.
    pub fn inbox_row(&self, id: i64) -> anyhow::Result<Option<InboxRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {INBOX_COLS} FROM inbox WHERE id=?1"))?
            .query_row([id], inbox_row)
            .optional()?)
    }

    /// Failed (unprocessed with an error) or dead deliveries about one
    /// work item, newest first: those of a source whose JSON body has, at
    /// a path, a value given in `about` as `(source, JSON path, value)`
    /// (each source says which: `WebhookSource::about`; Plane's `data.id`
    /// is the work item, Gitea's `ref` or pull request head the branch).
    /// Bodies that are not JSON match nothing; an empty `about` matches
    /// nothing.
    pub fn failed_deliveries_for(
        &self,
        about: &[(&str, &str, String)],
    ) -> anyhow::Result<Vec<InboxRow>> {
        if about.is_empty() {
            return Ok(Vec::new());
        }
        let (json, at) = self.json_lookup();
        let terms = vec![format!("(source=? AND {at}=?)"); about.len()].join(" OR ");
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {INBOX_COLS} FROM ( \
               SELECT *, {json} AS j \
               FROM inbox WHERE dead=1 OR (processed_at_ms IS NULL AND error IS NOT NULL)) AS d \
             WHERE j IS NOT NULL AND ({terms}) \
             ORDER BY id DESC"
        ))?;
        let args: Vec<&str> = about
            .iter()
            .flat_map(|(source, path, value)| [*source, *path, value.as_str()])
            .collect();
        let rows = stmt.query_map(args, inbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The HTML of the newest comment a person wrote on work item
    /// `tracker_issue_id` since `since_ms`, as deliveries of `source`
    /// carried it where `q` says (Plane: `issue_comment`,
    /// `data.comment_html`; comments orch posted itself and deleted ones
    /// left out). `None` when there is none.
    pub fn latest_tracker_comment(
        &self,
        source: &str,
        q: &CommentQuery,
        tracker_issue_id: &str,
        since_ms: i64,
    ) -> anyhow::Result<Option<String>> {
        let (json, at) = self.json_lookup();
        let absent: String = q
            .absent
            .iter()
            .map(|_| format!(" AND {at} IS NULL"))
            .collect();
        let html = at.replacen('?', "?1", 1);
        let item = at.replacen('?', "?5", 1);
        let sql = format!(
            "SELECT {html} FROM ( \
               SELECT id, {json} AS j \
               FROM inbox WHERE source=?2 AND event=?3 AND received_at_ms>=?4) AS d \
             WHERE j IS NOT NULL AND {item}=?6{absent} \
             ORDER BY id DESC LIMIT 1"
        );
        use crate::sql::Value as Sql;
        let text = |s: &str| Sql::Text(s.to_string());
        let args = [
            text(q.html_path),
            text(source),
            text(q.event),
            Sql::Integer(since_ms),
            text(q.item_path),
            text(tracker_issue_id),
        ]
        .into_iter()
        .chain(q.absent.iter().map(|p| text(p)));
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(args.collect::<Vec<_>>(), |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// How a lookup in delivery bodies reads, in this database's dialect:
    /// the body as JSON (`NULL` when it is not UTF-8 JSON), and the text
    /// at a JSON path given as the next parameter (`$.data.id`) in that
    /// JSON (`j`). PostgreSQL's `orch_json` is the baseline's function that
    /// answers `NULL` for a body that does not parse.
    fn json_lookup(&self) -> (&'static str, &'static str) {
        match self.dialect() {
            crate::sql::Dialect::Sqlite => (
                "CASE WHEN json_valid(CAST(body AS TEXT)) THEN CAST(body AS TEXT) END",
                "json_extract(j, ?)",
            ),
            crate::sql::Dialect::Postgres => (
                "orch_json(body)",
                "(jsonb_path_query_first(j, CAST(CAST(? AS TEXT) AS jsonpath)) #>> '{}')",
            ),
        }
    }

    /// Inbox ids still to ingest (not processed, not dead), oldest first.
    pub fn pending_deliveries(&self, limit: i64) -> anyhow::Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM inbox WHERE processed_at_ms IS NULL AND dead=0 ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `(pending, failed_retrying, dead)` counts of the inbox.
    pub fn inbox_counts(&self) -> anyhow::Result<(i64, i64, i64)> {
        Ok(self.conn.query_row(
            "SELECT \
               COALESCE(SUM(CASE WHEN processed_at_ms IS NULL AND dead=0 THEN 1 ELSE 0 END),0), \
               COALESCE(SUM(CASE WHEN processed_at_ms IS NULL AND dead=0 AND error IS NOT NULL THEN 1 ELSE 0 END),0), \
               COALESCE(SUM(dead),0) FROM inbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// CI status deliveries (of any source) received since `since_ms`
    /// whose sha matched no known branch head, as ingest's outcome says
    /// (reconcile F-3), oldest first.
    pub fn orphan_status_deliveries(&self, since_ms: i64) -> anyhow::Result<Vec<StoredDelivery>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, source, event, body FROM inbox WHERE received_at_ms>=?1 \
             AND outcome LIKE 'no pipeline action: sha % matches no known branch head%' ORDER BY id",
        )?;
        let rows = stmt.query_map([since_ms], |r| {
            Ok(StoredDelivery {
                id: r.get(0)?,
                source: r.get(1)?,
                event: r.get(2)?,
                body: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The routing and body of inbox row `id`.
    pub fn delivery(&self, id: i64) -> anyhow::Result<Option<Delivery>> {
        Ok(self
            .conn
            .query_row(
                "SELECT source, event, body, processed_at_ms IS NOT NULL FROM inbox WHERE id=?1",
                [id],
                |r| {
                    Ok(Delivery {
                        source: r.get(0)?,
                        event: r.get(1)?,
                        body: r.get(2)?,
                        processed: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }
}

/// A redelivery by its sender's delivery id (`UNIQUE (source, delivery_id)`).
const DEDUPE_BY_ID: &str = "SELECT id FROM inbox WHERE source=?1 AND delivery_id=?2";
/// A redelivery by its body hash (index `inbox_hash`), for a source whose
/// retries carry a new delivery id ([`Dedupe::ByIdOrBody`]: Plane).
const DEDUPE_BY_HASH: &str =
    "SELECT id FROM inbox WHERE source=?1 AND body_sha256=?2 ORDER BY id LIMIT 1";

impl Tx<'_> {
    /// Stores a delivery unless it is a redelivery: the same
    /// `(source, delivery_id)`, or, when the source's rule is
    /// [`Dedupe::ByIdOrBody`] (Plane's retries carry a new id), the same
    /// body hash.
    pub fn record_delivery(
        &self,
        d: &NewDelivery,
        body_sha256: &str,
        now_ms: i64,
    ) -> anyhow::Result<Recorded> {
        // Two lookups, each on an index (`UNIQUE (source, delivery_id)`,
        // `inbox_hash`): one query with an OR cannot use either and reads
        // every stored delivery of the source inside the write transaction.
        let mut existing: Option<i64> = self
            .conn
            .prepare_cached(DEDUPE_BY_ID)?
            .query_row(params![d.source, d.delivery_id], |r| r.get(0))
            .optional()?;
        if existing.is_none() && d.dedupe == Dedupe::ByIdOrBody {
            existing = self
                .conn
                .prepare_cached(DEDUPE_BY_HASH)?
                .query_row(params![d.source, body_sha256], |r| r.get(0))
                .optional()?;
        }
        if let Some(id) = existing {
            return Ok(Recorded::Duplicate(id));
        }
        let id = self.conn.prepare_cached(
            "INSERT INTO inbox (source, event, delivery_id, body_sha256, headers, body, received_at_ms) \
             VALUES (?1,?2,?3,?4,?5,?6,?7) RETURNING id",
        )?
        .query_row(params![
            d.source,
            d.event,
            d.delivery_id,
            body_sha256,
            d.headers.to_string(),
            d.body,
            now_ms
        ], |r| r.get(0))?;
        Ok(Recorded::Stored(id))
    }

    /// Marks inbox row `id` processed with `outcome`.
    pub fn mark_delivery_processed(
        &self,
        id: i64,
        outcome: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn.prepare_cached(
            "UPDATE inbox SET processed_at_ms=?2, outcome=?3, attempts=attempts+1, error=NULL WHERE id=?1",
        )?
        .execute(params![id, now_ms, outcome])?;
        Ok(())
    }

    /// Records a failed ingest attempt of inbox row `id`; dead-letters it
    /// once `attempts` reaches `max_attempts`. Returns whether it is dead.
    pub fn mark_delivery_failed(
        &self,
        id: i64,
        error: &str,
        max_attempts: u32,
    ) -> anyhow::Result<bool> {
        self.conn
            .prepare_cached(
                "UPDATE inbox SET attempts=attempts+1, error=?2, dead=CASE WHEN attempts+1>=?3 THEN 1 ELSE 0 END WHERE id=?1",
            )?
            .execute(params![id, error, max_attempts])?;
        Ok(self
            .conn
            .query_row("SELECT dead FROM inbox WHERE id=?1", [id], |r| r.get(0))?)
    }

    /// Makes inbox row `id` pending again (for `orch events replay`).
    pub fn reset_delivery(&self, id: i64) -> anyhow::Result<bool> {
        Ok(self.conn
            .prepare_cached(
                "UPDATE inbox SET processed_at_ms=NULL, outcome=NULL, error=NULL, dead=0, attempts=0 WHERE id=?1",
            )?
            .execute([id])?
            == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan's detail lines for `sql`.
    fn plan(db: &Db, sql: &str) -> String {
        let mut stmt = db
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let args: Vec<&str> = std::iter::repeat_n("x", stmt.parameter_count()).collect();
        let rows = stmt.query_map(args, |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn redelivery_lookups_use_an_index_not_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        // The index must be searched on both columns, not on the source
        // alone (which reads every delivery of that source).
        for (sql, key) in [
            (DEDUPE_BY_ID, "delivery_id=?"),
            (DEDUPE_BY_HASH, "body_sha256=?"),
        ] {
            let p = plan(&db, sql);
            assert!(p.contains("INDEX") && p.contains(key), "{sql}: {p}");
            assert!(
                !p.contains("SCAN") && !p.contains("TEMP B-TREE"),
                "{sql}: {p}"
            );
        }
        let old = "SELECT id FROM inbox WHERE source=?1 AND (delivery_id=?2 OR (?1='plane' AND body_sha256=?3)) ORDER BY id LIMIT 1";
        assert!(
            !plan(&db, old).contains("delivery_id=?"),
            "the check tells the old query apart"
        );
    }

    /// The store follows the source's rule, not its name: a source that
    /// dedupes by body (Plane) finds a retry with a new id; one that
    /// dedupes by id only (Gitea) stores it.
    #[test]
    fn a_retry_is_a_duplicate_by_body_only_where_the_source_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        let d = |source: &str, id: &str, dedupe| NewDelivery {
            source: source.into(),
            dedupe,
            event: "issue".into(),
            delivery_id: id.into(),
            headers: serde_json::json!({}),
            body: b"{}".to_vec(),
        };
        let by_body = |id| d("by-body", id, Dedupe::ByIdOrBody);
        let by_id = |id| d("by-id", id, Dedupe::ById);
        let rec = |n: &NewDelivery| db.write(|tx| tx.record_delivery(n, "h1", 1)).unwrap();
        let first = rec(&by_body("a"));
        assert!(matches!(first, Recorded::Stored(_)));
        let Recorded::Stored(id) = first else {
            unreachable!()
        };
        assert_eq!(rec(&by_body("b")), Recorded::Duplicate(id));
        assert_eq!(rec(&by_body("a")), Recorded::Duplicate(id));
        let Recorded::Stored(g) = rec(&by_id("a")) else {
            panic!("by-id a stored")
        };
        assert!(matches!(rec(&by_id("b")), Recorded::Stored(_)));
        assert_eq!(rec(&by_id("a")), Recorded::Duplicate(g));
    }
}
