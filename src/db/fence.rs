//! The record of refused effects (DESIGN §11 INV-10): each time a stale
//! claim — an epoch the job has left — tried an effect outside the
//! database and was refused, one row (`fence_refusals`, migration 26).
//! Written only by `crate::fence::refuse`.

use crate::sql::params;

use super::{Db, Tx};

/// One refused effect of a stale claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FenceRefusal {
    pub job_id: i64,
    pub task_id: i64,
    /// The stale claim's epoch.
    pub epoch: i64,
    /// The job's epoch when the effect was refused.
    pub current_epoch: i64,
    /// What was refused: `finalize`, `commit`, `clone view`, `push`, an
    /// outbox message's kind (`outbox comment`, …).
    pub effect: String,
    /// One line for people: `job 12 epoch 1: finalize refused, epoch 2
    /// holds the job`.
    pub reason: String,
    /// Unix ms.
    pub at_ms: i64,
}

impl Tx<'_> {
    /// Appends one refusal.
    pub(crate) fn insert_fence_refusal(&self, r: &FenceRefusal) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO fence_refusals (job_id, task_id, epoch, current_epoch, effect, reason, at_ms) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7)",
            )?
            .execute(params![
                r.job_id,
                r.task_id,
                r.epoch,
                r.current_epoch,
                r.effect,
                r.reason,
                r.at_ms
            ])?;
        Ok(())
    }
}

impl Db {
    /// Task `task_id`'s refused effects, oldest first.
    pub fn fence_refusals(&self, task_id: i64) -> anyhow::Result<Vec<FenceRefusal>> {
        let mut st = self.conn.prepare_cached(
            "SELECT job_id, task_id, epoch, current_epoch, effect, reason, at_ms \
             FROM fence_refusals WHERE task_id=?1 ORDER BY id",
        )?;
        let rows = st.query_map([task_id], |r| {
            Ok(FenceRefusal {
                job_id: r.get(0)?,
                task_id: r.get(1)?,
                epoch: r.get(2)?,
                current_epoch: r.get(3)?,
                effect: r.get(4)?,
                reason: r.get(5)?,
                at_ms: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
