//! Queries of the merge gate (DESIGN §7, migration 3): named leases that
//! span ticks, and the deploy-staging jobs whose merge is deferred.
//!
//! A lease row is `(name, holder, job_id, acquired_at_ms, expires_at_ms)`.
//! It is *stale* — free for anyone to take, and released by the reaper —
//! when it expired, or when it names a job that is no longer `queued` or
//! `running` (done, failed, cancelled, or gone). A queued job still counts
//! as a live holder: the merge lease passes from a task's deploy-staging
//! job to its queued deploy job, and a job requeued after its worker died
//! still holds it for its next run. The predicate lives in [`stale`], the
//! one definition the acquire, the reaper's plan and its release share.

use rusqlite::{params, OptionalExtension, Row};

use super::{job_row, Db, Job, Lease, Tx, JOB_COLS};

/// The SQL predicate "lease row `leases` is stale at `now`", with `now`
/// bound to the parameter `now_param` (e.g. `?1`).
fn stale(now_param: &str) -> String {
    format!(
        "(leases.expires_at_ms < {now_param} OR (leases.job_id IS NOT NULL AND NOT EXISTS \
         (SELECT 1 FROM jobs WHERE jobs.id = leases.job_id AND jobs.status IN ('queued','running'))))"
    )
}

const LEASE_COLS: &str = "name, holder, job_id, acquired_at_ms, expires_at_ms";

fn lease_row(r: &Row) -> rusqlite::Result<Lease> {
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

    /// The state of CI context `context` for `sha` of `project`, if stored.
    pub fn ci_status(
        &self,
        project: &str,
        sha: &str,
        context: &str,
    ) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT state FROM ci_statuses WHERE project=?1 AND sha=?2 AND context=?3",
            )?
            .query_row(params![project, sha, context], |r| r.get(0))
            .optional()?)
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
        Ok(self
            .conn
            .prepare_cached("DELETE FROM leases WHERE name=?1 AND holder=?2")?
            .execute(params![name, holder])?
            == 1)
    }

    /// Releases every lease `holder` holds. Returns their names.
    pub fn release_leases_held_by(&self, holder: &str) -> anyhow::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM leases WHERE holder=?1 RETURNING name")?;
        let rows = stmt.query_map([holder], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
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

    /// Releases the leases that are stale at `now_ms` (expired, or their
    /// job is no longer queued or running). Returns the released
    /// `(name, holder)` pairs.
    pub fn release_stale_leases(&self, now_ms: i64) -> anyhow::Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "DELETE FROM leases WHERE {} RETURNING name, holder",
            stale("?1")
        ))?;
        let rows = stmt.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Defers the merge of running job `id` (claim `attempt`, agent exit
    /// recorded): back to `queued` at `available_at_ms` with
    /// `merge_pending`, one more `merge_defers`, the same attempt, and its
    /// exit code kept, so the next claim runs only the merge. Returns false
    /// (and changes nothing) when the job is no longer running under that
    /// attempt.
    pub fn defer_merge_job(
        &self,
        id: i64,
        attempt: i64,
        reason: &str,
        available_at_ms: i64,
    ) -> anyhow::Result<bool> {
        let n = self.conn
            .prepare_cached(
                "UPDATE jobs SET status='queued', merge_pending=1, merge_defers=merge_defers+1, \
                 available_at_ms=?3, last_error=?2, worker_host=NULL, worker_pid=NULL, \
                 worker_start_time=NULL, agent_pid=NULL, agent_start_time=NULL, claimed_at_ms=NULL, \
                 heartbeat_at_ms=NULL \
                 WHERE id=?1 AND status='running' AND attempt=?4 AND exit_code IS NOT NULL",
            )?
            .execute(params![id, reason, available_at_ms, attempt])?;
        Ok(n == 1)
    }

    /// Claims queued job `id` for the caller's process (`orch merge-gate`
    /// by hand), like [`Tx::claim_next_job`] does for a worker but ignoring
    /// `available_at_ms` and the concurrency limit. Returns the job, or
    /// `None` when it was not queued.
    pub fn claim_job(
        &self,
        id: i64,
        worker: (&str, i64, i64),
        now_ms: i64,
    ) -> anyhow::Result<Option<Job>> {
        let (host, pid, start) = worker;
        let n = self.conn
            .prepare_cached(
                "UPDATE jobs SET status='running', worker_host=?2, worker_pid=?3, worker_start_time=?4, \
                 claimed_at_ms=?5, heartbeat_at_ms=?5, agent_pid=NULL, agent_start_time=NULL, \
                 exit_code=CASE WHEN merge_pending=1 THEN exit_code END, \
                 exit_recorded_at_ms=CASE WHEN merge_pending=1 THEN ?5 END \
                 WHERE id=?1 AND status='queued'",
            )?
            .execute(params![id, host, pid, start, now_ms])?;
        if n == 0 {
            return Ok(None);
        }
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id=?1"))?
            .query_row([id], job_row)
            .optional()?)
    }

    /// Gives back a job claimed with [`Tx::claim_job`]: `queued` again with
    /// its attempt, available at once, if it is still running under this
    /// claim (`attempt` and the worker `pid`, `start_time`). Returns whether
    /// it was given back.
    pub fn unclaim_job(
        &self,
        id: i64,
        attempt: i64,
        pid: i64,
        start_time: i64,
    ) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE jobs SET status='queued', worker_host=NULL, worker_pid=NULL, \
                 worker_start_time=NULL, claimed_at_ms=NULL, heartbeat_at_ms=NULL \
                 WHERE id=?1 AND status='running' AND attempt=?2 AND worker_pid=?3 \
                 AND worker_start_time=?4",
            )?
            .execute(params![id, attempt, pid, start_time])?
            == 1)
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
