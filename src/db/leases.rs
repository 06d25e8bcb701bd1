//! Named leases that span ticks (`leases`; DESIGN §7, migration 3): the
//! merge gate's per-repository lease.
//!
//! A lease row is `(name, holder, job_id, acquired_at_ms, expires_at_ms)`.
//! It is *stale* — free for anyone to take, and released by the reaper —
//! when it expired (or was acquired before the wall clock went back), or
//! when it names a job that is no longer `queued` or
//! `running` (done, failed, cancelled, or gone). A queued job still counts
//! as a live holder: the merge lease passes from a task's deploy-staging
//! job to its queued deploy job, and a job requeued after its worker died
//! still holds it for its next run. The predicate lives in [`stale`], the
//! one definition the acquire, the reaper's plan and its release share.

use crate::sql::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Db, Tx};

/// A lease row (e.g. `merge:<repo>`); times in unix ms.
#[derive(Debug, Clone, Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub job_id: Option<i64>,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The SQL predicate "lease row `leases` is stale at `now`", with `now`
/// bound to the parameter `now_param` (e.g. `?1`). A lease acquired
/// "after now" was taken before the wall clock went back
/// (`clock::set_in_the_future`): stale too, so a clock set back never
/// makes a lease outlast its length by more than `clock::STEP_SLACK_MS`.
pub(super) fn stale(now_param: &str) -> String {
    let slack = crate::clock::STEP_SLACK_MS;
    format!(
        "(leases.expires_at_ms < {now_param} OR leases.acquired_at_ms > {now_param} + {slack} \
         OR (leases.job_id IS NOT NULL AND NOT EXISTS \
         (SELECT 1 FROM jobs WHERE jobs.id = leases.job_id AND jobs.status IN ('queued','running'))))"
    )
}

pub(super) const LEASE_COLS: &str = "name, holder, job_id, acquired_at_ms, expires_at_ms";

pub(super) fn lease_row(r: &Row) -> crate::sql::Result<Lease> {
    Ok(Lease {
        name: r.get(0)?,
        holder: r.get(1)?,
        job_id: r.get(2)?,
        acquired_at_ms: r.get(3)?,
        expires_at_ms: r.get(4)?,
    })
}

/// The answer of [`Tx::acquire_lease`].
#[derive(Debug, Clone)]
pub enum LeaseAcquire {
    /// The caller holds the lease now (taken, taken over, or renewed).
    Acquired(Lease),
    /// Someone else holds it; nothing was written.
    Busy(Lease),
}

impl Db {
    /// The lease `name`, if anyone holds it.
    pub fn lease(&self, name: &str) -> anyhow::Result<Option<Lease>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {LEASE_COLS} FROM leases WHERE name=?1"))?
            .query_row([name], lease_row)
            .optional()?)
    }

    /// All leases, by name.
    pub fn leases(&self) -> anyhow::Result<Vec<Lease>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {LEASE_COLS} FROM leases ORDER BY name"))?;
        let rows = stmt.query_map([], lease_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Leases that are stale at `now_ms` (see the module documentation):
    /// what `orch reap` would release. Read-only.
    pub fn stale_leases(&self, now_ms: i64) -> anyhow::Result<Vec<Lease>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {LEASE_COLS} FROM leases WHERE {} ORDER BY name",
            stale("?1")
        ))?;
        let rows = stmt.query_map([now_ms], lease_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Tx<'_> {
    /// Takes lease `name` for `holder` (on behalf of `job_id`) until
    /// `now_ms + ttl_ms`: inserts it when free, takes it over when it is
    /// stale, renews it (new `job_id`, `acquired_at_ms` and expiry) when
    /// `holder` already holds it.
    ///
    /// Guarantees: one statement inside the caller's `IMMEDIATE`
    /// transaction, so two acquirers can never both win; a busy lease is
    /// returned unchanged and nothing is written.
    pub fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        job_id: Option<i64>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> anyhow::Result<LeaseAcquire> {
        let n = self
            .conn
            .prepare_cached(&format!(
                "INSERT INTO leases (name, holder, job_id, acquired_at_ms, expires_at_ms) \
                 VALUES (?1,?2,?3,?4,?5) ON CONFLICT(name) DO UPDATE SET holder=excluded.holder, \
                 job_id=excluded.job_id, acquired_at_ms=excluded.acquired_at_ms, \
                 expires_at_ms=excluded.expires_at_ms \
                 WHERE leases.holder=excluded.holder OR {}",
                stale("?4")
            ))?
            .execute(params![name, holder, job_id, now_ms, now_ms + ttl_ms])?;
        let current = self
            .lease(name)?
            .ok_or_else(|| anyhow::anyhow!("lease {name} vanished inside a transaction"))?;
        Ok(if n == 1 {
            LeaseAcquire::Acquired(current)
        } else {
            LeaseAcquire::Busy(current)
        })
    }

    /// Releases lease `name` if, and only if, `holder` holds it. Returns
    /// whether a row was deleted.
    pub fn release_lease(&self, name: &str, holder: &str) -> anyhow::Result<bool> {
        let released = self
            .conn
            .prepare_cached("DELETE FROM leases WHERE name=?1 AND holder=?2")?
            .execute(params![name, holder])?
            == 1;
        if released {
            self.wake_deferred_on(name)?;
        }
        Ok(released)
    }

    /// Releases every lease `holder` holds. Returns their names.
    pub fn release_leases_held_by(&self, holder: &str) -> anyhow::Result<Vec<String>> {
        let names: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare_cached("DELETE FROM leases WHERE holder=?1 RETURNING name")?;
            let rows = stmt.query_map([holder], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for name in &names {
            self.wake_deferred_on(name)?;
        }
        Ok(names)
    }

    /// Makes the queued merges deferred on lease `name` runnable at once
    /// (`available_at_ms = 0`, so they also come first in line): every
    /// release of a lease calls it, so a deferred merge never sleeps while
    /// its lease is free.
    fn wake_deferred_on(&self, name: &str) -> anyhow::Result<usize> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE jobs SET available_at_ms=0 \
                 WHERE status='queued' AND merge_pending=1 AND deferred_on=?1",
            )?
            .execute([name])?)
    }

    /// Passes the leases `holder` holds to job `job_id`, renewing them for
    /// the TTL they were granted with (`expires - acquired`). Returns how
    /// many leases moved.
    pub fn hand_over_leases(
        &self,
        holder: &str,
        job_id: i64,
        now_ms: i64,
    ) -> anyhow::Result<usize> {
        Ok(self.conn
            .prepare_cached(
                "UPDATE leases SET job_id=?2, expires_at_ms=?3 + (expires_at_ms - acquired_at_ms), \
                 acquired_at_ms=?3 WHERE holder=?1",
            )?
            .execute(params![holder, job_id, now_ms])?)
    }

    /// Passes lease `name` from `from` to `to` (the merge line hands its
    /// lease to the task whose move into deploy takes it on). Returns
    /// whether `from` held it.
    pub fn transfer_lease(&self, name: &str, from: &str, to: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached("UPDATE leases SET holder=?3 WHERE name=?1 AND holder=?2")?
            .execute(params![name, from, to])?
            == 1)
    }

    /// Releases the leases that are stale at `now_ms` (expired, or their
    /// job is no longer queued or running). Returns the released
    /// `(name, holder)` pairs.
    pub fn release_stale_leases(&self, now_ms: i64) -> anyhow::Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "DELETE FROM leases WHERE {} RETURNING name, holder",
            stale("?1")
        ))?;
        let released: Vec<(String, String)> = {
            let rows = stmt.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (name, _) in &released {
            self.wake_deferred_on(name)?;
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1000).unwrap();
        (dir, db)
    }

    #[test]
    fn a_lease_has_one_holder_and_only_its_holder_releases_it() {
        let (_d, db) = db();
        let got = db
            .write(|tx| tx.acquire_lease("merge:a/b", "task:1", None, 1_000, 10_000))
            .unwrap();
        assert!(matches!(got, LeaseAcquire::Acquired(_)));
        let busy = db
            .write(|tx| tx.acquire_lease("merge:a/b", "task:2", None, 2_000, 10_000))
            .unwrap();
        match busy {
            LeaseAcquire::Busy(l) => assert_eq!(l.holder, "task:1"),
            other => panic!("{other:?}"),
        }
        // The holder renews; someone else cannot release it.
        let renewed = db
            .write(|tx| tx.acquire_lease("merge:a/b", "task:1", None, 3_000, 10_000))
            .unwrap();
        assert!(matches!(renewed, LeaseAcquire::Acquired(l) if l.expires_at_ms == 13_000));
        assert!(!db
            .write(|tx| tx.release_lease("merge:a/b", "task:2"))
            .unwrap());
        assert!(db
            .write(|tx| tx.release_lease("merge:a/b", "task:1"))
            .unwrap());
        assert!(db.lease("merge:a/b").unwrap().is_none());
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_reaped() {
        let (_d, db) = db();
        db.write(|tx| tx.acquire_lease("merge:a/b", "task:1", None, 1_000, 10_000))
            .unwrap();
        assert!(db.stale_leases(5_000).unwrap().is_empty());
        assert_eq!(db.stale_leases(11_001).unwrap().len(), 1);
        let got = db
            .write(|tx| tx.acquire_lease("merge:a/b", "task:2", None, 11_001, 10_000))
            .unwrap();
        assert!(matches!(got, LeaseAcquire::Acquired(l) if l.holder == "task:2"));
        // The old holder's late release does nothing.
        assert!(!db
            .write(|tx| tx.release_lease("merge:a/b", "task:1"))
            .unwrap());
        let released = db.write(|tx| tx.release_stale_leases(99_999)).unwrap();
        assert_eq!(
            released,
            vec![("merge:a/b".to_string(), "task:2".to_string())]
        );
    }

    #[test]
    fn hand_over_keeps_the_granted_ttl() {
        let (_d, db) = db();
        db.write(|tx| tx.acquire_lease("merge:a/b", "task:1", None, 1_000, 10_000))
            .unwrap();
        assert_eq!(
            db.write(|tx| tx.hand_over_leases("task:1", 7, 5_000))
                .unwrap(),
            1
        );
        let l = db.lease("merge:a/b").unwrap().unwrap();
        assert_eq!(
            (l.job_id, l.acquired_at_ms, l.expires_at_ms),
            (Some(7), 5_000, 15_000)
        );
        // job 7 does not exist: the lease is stale by its job.
        assert_eq!(db.stale_leases(6_000).unwrap().len(), 1);
    }
}
