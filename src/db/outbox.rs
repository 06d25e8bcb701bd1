//! The outbox (`outbox`): side effects written in the transaction that
//! caused them, delivered later with a send counter, backoff and dead
//! letters.

use crate::sql::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Db, Tx};

/// An outbox message.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub dedupe_key: String,
    pub task_id: Option<i64>,
    pub channel: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub remote_id: Option<String>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    /// How many times it was sent again by hand (`orch outbox retry`).
    pub retries: i64,
    /// The last such retry (unix ms), if any.
    pub retried_at_ms: Option<i64>,
    /// Who asked for the last retry: the operator's login.
    pub retried_by: Option<String>,
    /// The claim the row was queued for: (job id, epoch) — migration 26;
    /// `None` for a row not tied to a job's run. `orch deliver` never
    /// sends a row whose job has been claimed again since.
    pub claim: Option<(i64, i64)>,
}

pub(super) const OUTBOX_COLS: &str =
    "id, dedupe_key, task_id, channel, kind, payload, status, attempts, \
    next_attempt_at_ms, last_error, remote_id, created_at_ms, delivered_at_ms, \
    retries, retried_at_ms, retried_by, job_id, job_epoch";

pub(super) fn outbox_row(r: &Row) -> crate::sql::Result<OutboxRow> {
    let payload: String = r.get(5)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        dedupe_key: r.get(1)?,
        task_id: r.get(2)?,
        channel: r.get(3)?,
        kind: r.get(4)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_attempt_at_ms: r.get(8)?,
        last_error: r.get(9)?,
        remote_id: r.get(10)?,
        created_at_ms: r.get(11)?,
        delivered_at_ms: r.get(12)?,
        retries: r.get(13)?,
        retried_at_ms: r.get(14)?,
        retried_by: r.get(15)?,
        claim: match (r.get::<_, Option<i64>>(16)?, r.get::<_, Option<i64>>(17)?) {
            (Some(j), Some(e)) => Some((j, e)),
            _ => None,
        },
    })
}

/// The longest wait before an outbox message's next attempt (6 h): the
/// backoff is at most 1 h 15 min, and a `Retry-After` beyond this is cut
/// to it. A next attempt further ahead was set before the clock went back
/// ([`Db::due_outbox`]).
pub const MAX_RETRY_WAIT_MS: i64 = 6 * 3_600_000;

impl Db {
    /// Outbox messages of a task (all when `task_id` is None), oldest first.
    pub fn outbox(&self, task_id: Option<i64>) -> anyhow::Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE CAST(?1 AS BIGINT) IS NULL OR task_id=?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([task_id], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Outbox messages due for delivery at `now_ms`, oldest first: their
    /// next attempt is due, or further ahead than [`MAX_RETRY_WAIT_MS`]
    /// plus `clock::STEP_SLACK_MS` — set before the wall clock went back,
    /// so a clock set back never holds the outbox up.
    pub fn due_outbox(&self, now_ms: i64, limit: i64) -> anyhow::Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE status='pending' \
             AND (next_attempt_at_ms<=?1 OR next_attempt_at_ms>?1 + ?3) ORDER BY id LIMIT ?2"
        ))?;
        let ahead = MAX_RETRY_WAIT_MS + crate::clock::STEP_SLACK_MS;
        let rows = stmt.query_map(params![now_ms, limit, ahead], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many sends of outbox message `id` were started (0 for a
    /// message never sent, or an unknown id).
    pub fn outbox_sends(&self, id: i64) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT sends FROM outbox WHERE id=?1", [id], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// Whether an older message of the same task and channel than `id` is
    /// still pending (backing off or waiting): per task and channel,
    /// messages are delivered in order.
    pub fn earlier_pending(
        &self,
        id: i64,
        task_id: Option<i64>,
        channel: &str,
    ) -> anyhow::Result<bool> {
        let Some(task_id) = task_id else {
            return Ok(false);
        };
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE task_id=?1 AND channel=?2 AND id<?3 \
             AND status='pending')",
            params![task_id, channel, id],
            |r| r.get(0),
        )?)
    }

    /// Outbox message `id`, if there is one.
    pub fn outbox_message(&self, id: i64) -> anyhow::Result<Option<OutboxRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {OUTBOX_COLS} FROM outbox WHERE id=?1"))?
            .query_row([id], outbox_row)
            .optional()?)
    }

    /// Outbox messages of every status, newest first, at most `limit`
    /// (`orch outbox list`).
    pub fn recent_outbox(&self, limit: i64) -> anyhow::Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The id of a newer tracker-state message of the same task as `msg`
    /// that was delivered: sending `msg` now would move the tracker item
    /// back to an older state. `None` for any other message.
    pub fn outbox_superseded_by(&self, msg: &OutboxRow) -> anyhow::Result<Option<i64>> {
        if msg.channel != "tracker" || msg.kind != "state" {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT MIN(id) FROM outbox WHERE task_id=?1 AND channel='tracker' \
                 AND kind='state' AND id>?2 AND status='delivered'",
                params![msg.task_id, msg.id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Dead-lettered outbox messages, newest first, at most `limit`.
    pub fn dead_outbox(&self, limit: i64) -> anyhow::Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE status='dead' ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Db {
    /// This database's instance id (16 hex digits, made when the database
    /// was created; migration 7).
    pub fn instance_id(&self) -> anyhow::Result<String> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key='instance_id'", [], |r| {
                r.get(0)
            })?)
    }

    /// The dedupe key of `msg` as remote services see it:
    /// `<instance id>:<dedupe key>`, unique across orch instances.
    pub fn remote_dedupe_key(&self, msg: &OutboxRow) -> anyhow::Result<String> {
        Ok(format!("{}:{}", self.instance_id()?, msg.dedupe_key))
    }
}

impl Tx<'_> {
    /// Writes an outbox row; a second write with the same `dedupe_key` is
    /// a no-op. Returns whether a row was inserted. Only
    /// `crate::outbox::queue` calls it (`tests/layers.rs` checks), which
    /// derives every column from a typed message.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_outbox(
        &self,
        dedupe_key: &str,
        task_id: Option<i64>,
        channel: &str,
        kind: &str,
        payload: &serde_json::Value,
        claim: Option<(i64, i64)>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self.conn
            .prepare_cached(
                "INSERT INTO outbox (dedupe_key, task_id, channel, kind, payload, next_attempt_at_ms, created_at_ms, job_id, job_epoch) \
                 VALUES (?1,?2,?3,?4,?5,?6,?6,?7,?8) ON CONFLICT(dedupe_key) DO NOTHING",
            )?
            .execute(params![
                dedupe_key,
                task_id,
                channel,
                kind,
                payload.to_string(),
                now_ms,
                claim.map(|c| c.0),
                claim.map(|c| c.1)
            ])?;
        Ok(n == 1)
    }

    /// Marks an outbox message delivered (with the remote id, if any).
    pub fn mark_outbox_delivered(
        &self,
        id: i64,
        remote_id: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn.prepare_cached(
            "UPDATE outbox SET status='delivered', attempts=attempts+1, remote_id=COALESCE(?2, remote_id), \
             delivered_at_ms=?3, last_error=NULL WHERE id=?1 AND status='pending'",
        )?
        .execute(params![id, remote_id, now_ms])?;
        Ok(())
    }

    /// Records a failed delivery attempt: retry at `next_attempt_at_ms`
    /// (at most [`MAX_RETRY_WAIT_MS`] from now), or dead-letter when
    /// `dead`.
    pub fn mark_outbox_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_at_ms: i64,
        dead: bool,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE outbox SET attempts=attempts+1, last_error=?2, next_attempt_at_ms=?3, \
             status=CASE WHEN ?4 THEN 'dead' ELSE status END WHERE id=?1 AND status='pending'",
            )?
            .execute(params![id, error, next_attempt_at_ms, dead])?;
        Ok(())
    }

    /// Starts a send of pending outbox message `id`: bumps its `sends`
    /// counter and returns the value before, i.e. how many earlier sends
    /// may have reached the remote side. `None` when the message is no
    /// longer pending (another pass delivered or dead-lettered it).
    pub fn begin_outbox_send(&self, id: i64) -> anyhow::Result<Option<i64>> {
        Ok(self.conn
            .prepare_cached(
                "UPDATE outbox SET sends=sends+1 WHERE id=?1 AND status='pending' RETURNING sends-1",
            )?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// Makes dead letter `id` pending again, due at `now_ms`, with a new
    /// round of attempts; records the retry on the row (`retries`,
    /// `retried_at_ms`, `retried_by` = `by`). The dead-letter reason stays
    /// in `last_error` until a send replaces or clears it. Returns false
    /// when `id` is not a dead letter (nothing changed).
    pub fn retry_dead_outbox(&self, id: i64, by: &str, now_ms: i64) -> anyhow::Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET status='pending', attempts=0, next_attempt_at_ms=?2, \
                 retries=retries+1, retried_at_ms=?2, retried_by=?3 WHERE id=?1 AND status='dead'",
            )?
            .execute(params![id, now_ms, by])?;
        Ok(n == 1)
    }

    /// Records why pending message `id` waits (no adapter, a kill switch,
    /// missing settings) without counting an attempt.
    pub fn mark_outbox_waiting(&self, id: i64, reason: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached("UPDATE outbox SET last_error=?2 WHERE id=?1 AND status='pending'")?
            .execute(params![id, reason])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_set_before_the_clock_went_back_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        let t = 1_800_000_000_000i64;
        let hour = 3_600_000;
        db.write(|tx| {
            tx.insert_outbox("k", None, "notify", "x", &serde_json::json!({}), None, t)?;
            Ok(())
        })
        .unwrap();
        let id = db.due_outbox(t, 10).unwrap()[0].id;
        db.write(|tx| tx.mark_outbox_failed(id, "busy", t + hour, false))
            .unwrap();
        let due = |now: i64| db.due_outbox(now, 10).unwrap().len();
        assert_eq!(due(t), 0, "in its backoff");
        assert_eq!(due(t + hour), 1);
        // The clock went back a day: the retry was set "in the future",
        // further than any wait orch sets.
        assert_eq!(due(t - 24 * hour), 1);
        // Back by less than the longest wait: it waits out its length
        // plus the step at most.
        assert_eq!(due(t - hour), 0);
        assert_eq!(
            due(t + hour - MAX_RETRY_WAIT_MS - crate::clock::STEP_SLACK_MS - 1),
            1
        );
    }

    #[test]
    fn send_counter_state_cache_and_pull_requests() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        db.write(|tx| {
            tx.insert_outbox("k", None, "notify", "x", &serde_json::json!({}), None, 1)?;
            Ok(())
        })
        .unwrap();
        let id: i64 = db
            .conn()
            .query_row("SELECT id FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(db.write(|tx| tx.begin_outbox_send(id)).unwrap(), Some(0));
        assert_eq!(db.write(|tx| tx.begin_outbox_send(id)).unwrap(), Some(1));
        assert_eq!(db.outbox_sends(id).unwrap(), 2);
        db.write(|tx| tx.mark_outbox_failed(id, "boom", 0, true))
            .unwrap();
        assert_eq!(db.write(|tx| tx.begin_outbox_send(id)).unwrap(), None);
        assert_eq!(
            db.dead_outbox(10).unwrap()[0].last_error.as_deref(),
            Some("boom")
        );

        let states = vec![
            ("a".to_string(), "Done".to_string(), "completed".to_string()),
            (
                "b".to_string(),
                "Needs Input".to_string(),
                "started".to_string(),
            ),
        ];
        db.write(|tx| tx.replace_tracker_states("p", &states, 5))
            .unwrap();
        db.write(|tx| tx.replace_tracker_states("p", &states[..1], 6))
            .unwrap();
        let cached = db.cached_states("p").unwrap();
        assert_eq!(cached.len(), 1);
        assert_eq!(cached[0].fetched_at_ms, 6);
        assert!(db.pull_request(1).unwrap().is_none());
    }
}
