//! Group commit: the one thread that stores deliveries.
//!
//! Every request handler sends its delivery here and awaits the answer.
//! The writer takes the first waiting delivery, then every other one that
//! is already queued (those that arrived while the previous commit ran, up
//! to [`MAX_BATCH`]), and stores them all with [`Tx::record_delivery`] in
//! one `BEGIN IMMEDIATE` transaction on its own connection, opened by
//! [`Db::open`] (`synchronous=FULL`: the commit is on disk when it
//! returns). Only then does each handler get its answer, so a 202 is never
//! sent for a delivery that a power cut could take back.
//!
//! Deduplication stays exact: the deliveries of a batch are recorded one
//! after the other in the same transaction, so the second of two identical
//! deliveries sees the first (one `Stored`, one `Duplicate`), as it would
//! across batches. A database error fails the whole batch (rolled back,
//! nothing stored): each of its requests gets `Err` (the shim answers 503).
//!
//! One writer instead of one connection per worker: SQLite has a single
//! write lock anyway, and several connections fighting over `BEGIN
//! IMMEDIATE` turned into "database is locked" answers under load.
//!
//! Checkpoints: the writer's connection does not checkpoint the WAL
//! itself (`wal_autocheckpoint=0`); a second thread with its own connection
//! runs a passive checkpoint whenever the writer has stored about
//! [`CHECKPOINT_BYTES`] since the last one, so copying pages into the
//! database file never delays a batch. Durability is unchanged: every
//! commit is synced to the WAL before anyone is answered.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::thread::{self, JoinHandle};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

use crate::db::{Db, NewDelivery, Recorded};

/// Most deliveries stored in one transaction.
pub const MAX_BATCH: usize = 1024;

/// Deliveries waiting for the writer before senders wait for room.
const QUEUE: usize = 4096;

/// Delivery bytes (bodies and headers) the writer stores between two
/// checkpoints: about SQLite's default of 1,000 WAL pages.
const CHECKPOINT_BYTES: usize = 4 << 20;

/// One delivery and where its outcome goes.
struct Pending {
    delivery: NewDelivery,
    body_sha256: String,
    reply: oneshot::Sender<Result<Recorded, String>>,
}

/// The handle the request handlers share. Dropping every clone lets the
/// writer finish what is queued and exit.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
}

/// The writer thread (and its checkpointer); [`WriterThread::join`] waits
/// for both after every [`Writer`] clone is gone.
pub struct WriterThread {
    writer: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
}

impl WriterThread {
    /// Waits until the writer has stored every queued delivery and exited.
    pub fn join(self) {
        let _ = self.writer.join();
        let _ = self.checkpointer.join();
    }
}

/// Opens the writer's and the checkpointer's connections to `db_path` and
/// starts both threads.
///
/// Errors: the database cannot be opened (or migrated), or a thread cannot
/// be started.
pub fn start(db_path: &Path, busy_timeout_ms: u64) -> anyhow::Result<(Writer, WriterThread)> {
    let db = open_writer_db(db_path, busy_timeout_ms)?;
    let checkpoint_db = Db::open(db_path, busy_timeout_ms)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (pages_tx, pages_rx) = std_mpsc::channel::<()>();
    let checkpointer = thread::Builder::new()
        .name("orch-serve-checkpoint".into())
        .spawn(move || checkpoint_loop(&checkpoint_db, &pages_rx))
        .context("starting the checkpoint thread")?;
    let writer = thread::Builder::new()
        .name("orch-serve-writer".into())
        .spawn(move || write_loop(&db, rx, &pages_tx))
        .context("starting the writer thread")?;
    Ok((
        Writer { tx },
        WriterThread {
            writer,
            checkpointer,
        },
    ))
}

/// The writer's connection: WAL, `synchronous=FULL` (set by `Db::open`
/// today; the 202 contract rests on it, so the writer sets it itself), no
/// checkpoints of its own.
fn open_writer_db(db_path: &Path, busy_timeout_ms: u64) -> anyhow::Result<Db> {
    let db = Db::open(db_path, busy_timeout_ms)?;
    if db.dialect() == crate::sql::Dialect::Postgres {
        // `synchronous_commit` is the server's and stays on (DESIGN §10);
        // WAL and checkpoints are the server's own.
        return Ok(db);
    }
    db.sqlite()
        .pragma_update(None, "synchronous", "FULL")
        .context("setting synchronous=FULL on the writer's connection")?;
    let mode: String = db
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "the inbox database is in {mode} mode, not WAL"
    );
    db.sqlite()
        .pragma_update(None, "wal_autocheckpoint", 0)
        .context("turning off the writer's own checkpoints")?;
    Ok(db)
}

impl Writer {
    /// Stores `delivery` in the next group commit and returns its outcome
    /// once that commit is on disk: `Stored(id)` or `Duplicate(id)` (a
    /// redelivery: same delivery id, or for Plane the same body hash).
    ///
    /// Errors: the batch's transaction failed (nothing of it was stored) or
    /// the writer is gone; the text says why.
    pub async fn store(
        &self,
        delivery: NewDelivery,
        body_sha256: String,
    ) -> Result<Recorded, String> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            delivery,
            body_sha256,
            reply,
        };
        if self.tx.send(pending).await.is_err() {
            return Err("the writer has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the writer dropped the delivery".into()))
    }
}

fn write_loop(db: &Db, mut rx: mpsc::Receiver<Pending>, pages: &std_mpsc::Sender<()>) {
    let mut batch = Vec::with_capacity(64);
    let mut since_checkpoint = 0usize;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        since_checkpoint += batch
            .iter()
            .map(|p| p.delivery.body.len() + 256)
            .sum::<usize>();
        let now = crate::clock::now_ms();
        let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store_batch(db, &batch, now)
        }))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the writer panicked storing a batch")));
        match stored {
            Ok(outcomes) => {
                for (p, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = p.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                tracing::error!(target: "webhook", error = %text, deliveries = batch.len(), "storing a batch failed; nothing of it stored");
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(text.clone()));
                }
            }
        }
        if since_checkpoint >= CHECKPOINT_BYTES {
            since_checkpoint = 0;
            let _ = pages.send(());
        }
    }
}

/// Records every delivery of `batch`, in order, in one `BEGIN IMMEDIATE`
/// transaction: all committed (`Ok`, one outcome each) or none (`Err`).
fn store_batch(db: &Db, batch: &[Pending], now_ms: i64) -> anyhow::Result<Vec<Recorded>> {
    db.write(|tx| {
        batch
            .iter()
            .map(|p| tx.record_delivery(&p.delivery, &p.body_sha256, now_ms))
            .collect()
    })
}

fn checkpoint_loop(db: &Db, wake: &std_mpsc::Receiver<()>) {
    if db.dialect() == crate::sql::Dialect::Postgres {
        while wake.recv().is_ok() {}
        return;
    }
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        if let Err(e) = db
            .conn()
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(target: "webhook", error = %e, "WAL checkpoint failed; retrying after the next batches");
        }
    }
    // Leave the WAL as short as we can for the next opener.
    let _ = db
        .conn()
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, body: &str) -> Pending {
        Pending {
            delivery: NewDelivery {
                source: "plane".into(),
                dedupe: crate::webhook_source::Dedupe::ByIdOrBody,
                event: "issue".into(),
                delivery_id: id.into(),
                headers: serde_json::json!({}),
                body: body.as_bytes().to_vec(),
            },
            body_sha256: crate::webhook::body_sha256(body.as_bytes()),
            reply: oneshot::channel().0,
        }
    }

    fn rows(db: &Db) -> i64 {
        db.conn()
            .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_writer_connection_syncs_every_commit_and_leaves_checkpoints_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_writer_db(&dir.path().join("orch.db"), 1_000).unwrap();
        let get = |pragma: &str| -> String {
            db.conn()
                .query_row(&format!("PRAGMA {pragma}"), [], |r| {
                    r.get::<_, crate::sql::Value>(0)
                })
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(get("synchronous"), "Integer(2)", "FULL");
        assert_eq!(get("journal_mode"), "Text(\"wal\")");
        assert_eq!(get("wal_autocheckpoint"), "Integer(0)");
    }

    #[test]
    fn a_batch_deduplicates_inside_itself_and_against_earlier_batches() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 1_000).unwrap();
        let first = store_batch(&db, &[delivery("a", r#"{"n":1}"#)], 1).unwrap();
        let Recorded::Stored(a) = first[0] else {
            panic!("{first:?}")
        };
        let out = store_batch(
            &db,
            &[
                delivery("b", r#"{"n":2}"#),
                delivery("b", r#"{"n":2}"#), // same id and body
                delivery("c", r#"{"n":2}"#), // Plane retry: new id, same body
                delivery("a", r#"{"n":3}"#), // an earlier batch's id
                delivery("d", r#"{"n":1}"#), // an earlier batch's body
                delivery("e", r#"{"n":5}"#),
            ],
            2,
        )
        .unwrap();
        let Recorded::Stored(b) = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            out[1..],
            [
                Recorded::Duplicate(b),
                Recorded::Duplicate(b),
                Recorded::Duplicate(a),
                Recorded::Duplicate(a),
                Recorded::Stored(b + 1),
            ]
        );
        assert_eq!(rows(&db), 3);
    }

    #[test]
    fn a_database_error_fails_the_whole_batch_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (writer, thread) = start(&path, 100).unwrap();
        // Hold the write lock longer than the writer's busy timeout.
        let holder = Db::open(&path, 100).unwrap();
        holder.conn().execute_batch("BEGIN IMMEDIATE").unwrap();
        let send = |id: &str| {
            let p = delivery(id, &format!(r#"{{"id":"{id}"}}"#));
            writer.store(p.delivery, p.body_sha256)
        };
        let (x, y) = rt.block_on(async { tokio::join!(send("x"), send("y")) });
        assert!(x.is_err() && y.is_err(), "{x:?} {y:?}");
        holder.conn().execute_batch("ROLLBACK").unwrap();
        assert_eq!(rows(&holder), 0);
        // The same deliveries are stored once the lock is gone.
        let x = rt.block_on(send("x")).unwrap();
        assert!(matches!(x, Recorded::Stored(_)), "{x:?}");
        assert_eq!(rows(&holder), 1);
        drop(writer);
        thread.join();
    }
}
