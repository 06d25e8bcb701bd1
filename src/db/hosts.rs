//! Hosts (`hosts`, migration 28; DESIGN §10 "Hosts"): one row per host id
//! that ran `work-once`, `tick` or `reap`, refreshed by each. What
//! `orch status` lists; a job's own liveness stays its heartbeat.

use crate::sql::{params, Row};
use serde::Serialize;

use super::{Db, Tx};

/// A host row; `seen_at_ms` is unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// The host id (`ORCH_HOST_ID`, [`crate::process::host_id`]).
    pub id: String,
    /// Its boot id when last seen.
    pub boot_id: Option<String>,
    /// The orch version it ran when last seen.
    pub version: Option<String>,
    /// When it was last seen (unix ms).
    pub seen_at_ms: Option<i64>,
}

fn host_row(r: &Row) -> crate::sql::Result<Host> {
    Ok(Host {
        id: r.get(0)?,
        boot_id: r.get(1)?,
        version: r.get(2)?,
        seen_at_ms: r.get(3)?,
    })
}

impl Db {
    /// Every host, the most recently seen first. Read-only.
    ///
    /// Errors: database errors.
    pub fn hosts(&self) -> anyhow::Result<Vec<Host>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, boot_id, version, seen_at_ms FROM hosts ORDER BY seen_at_ms DESC, id",
        )?;
        let rows = stmt.query_map([], host_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that this host ([`crate::process::host_id`], its boot id
    /// and this binary's version) was seen at `now_ms` (unix ms): the one
    /// refresh of its `hosts` row, called by `work-once`, `tick` and
    /// `reap`. A write transaction of its own.
    ///
    /// Errors: database errors.
    pub fn mark_host_seen(&self, now_ms: i64) -> anyhow::Result<()> {
        let (id, boot) = (crate::process::host_id(), crate::process::boot_id());
        self.write(|tx| tx.upsert_host(&id, &boot, crate::build_info::VERSION, now_ms))
    }
}

impl Tx<'_> {
    /// Inserts or refreshes host `id`'s row.
    ///
    /// Errors: database errors.
    pub fn upsert_host(
        &self,
        id: &str,
        boot_id: &str,
        version: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO hosts (id, boot_id, version, seen_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(id) DO UPDATE SET boot_id=excluded.boot_id, version=excluded.version, \
                 seen_at_ms=excluded.seen_at_ms",
            )?
            .execute(params![id, boot_id, version, now_ms])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_seen_again_is_refreshed_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 5000).unwrap();
        assert!(db.hosts().unwrap().is_empty());
        db.write(|tx| tx.upsert_host("a", "boot1", "0.1.0", 1_000))
            .unwrap();
        db.write(|tx| tx.upsert_host("b", "boot2", "0.1.0", 2_000))
            .unwrap();
        db.write(|tx| tx.upsert_host("a", "boot3", "0.2.0", 3_000))
            .unwrap();
        let hosts = db.hosts().unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            hosts[0],
            Host {
                id: "a".into(),
                boot_id: Some("boot3".into()),
                version: Some("0.2.0".into()),
                seen_at_ms: Some(3_000),
            }
        );
        assert_eq!(hosts[1].id, "b");
    }

    /// Migration 28 moves an old claim's boot id (then in `worker_host`)
    /// to `worker_boot` and makes `worker_host` the claim's host id, so
    /// the judgement of `fence::Here::owns` holds across the upgrade; a
    /// claim that recorded no host id gets no worker host.
    #[test]
    fn migration_28_moves_the_boot_id_to_worker_boot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let c = crate::db::tests::sqlite_at_schema(&path, 27);
        c.execute_batch(
            "INSERT INTO projects (name, tracker, forge, default_branch, clone_url, synced_at_ms) \
             VALUES ('p', 'local', 'local', 'main', '/r', 1);
             INSERT INTO tasks (project, tracker_issue_id, sequence, title, stage, version, branch, worktree, \
             created_at_ms, updated_at_ms) VALUES ('p', '1', 1, 't', 'development', 1, 'orch/p-1', '/w', 1, 1);
             INSERT INTO jobs (id, task_id, stage, role, task_version, status, available_at_ms, created_at_ms, \
             worker_host, worker_pid, worker_start_time, host_id) VALUES \
             (1, 1, 'development', 'developer', 1, 'running', 1, 1, 'boot-a', 10, 20, 'host-a'), \
             (2, 1, 'analysis', 'analyst', 1, 'running', 1, 1, 'boot-b', 11, 21, NULL), \
             (3, 1, 'review', 'reviewer', 1, 'queued', 1, 1, NULL, NULL, NULL, 'host-a');",
        )
        .unwrap();
        drop(c);
        let db = Db::open(&path, 5000).unwrap();
        let row = |id: i64| {
            let j = db.job(id).unwrap().unwrap();
            (j.worker_host, j.worker_boot)
        };
        assert_eq!(row(1), (Some("host-a".into()), Some("boot-a".into())));
        assert_eq!(row(2), (None, Some("boot-b".into())));
        assert_eq!(row(3), (None, None));
        assert!(db.hosts().unwrap().is_empty());
    }
}
