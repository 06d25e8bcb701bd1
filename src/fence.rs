//! INV-10's fence (DESIGN §11): every effect outside the database that a
//! job's run or its finalize makes — a commit into the worktree, a clone
//! view carried into the shared clone, a push, an outbox message, a write
//! into the worktree — is conditional on the claim that made it still
//! holding: the job `running` at the claim's epoch (`jobs.epoch`, one more
//! for every claim). A stale epoch's effect is refused and recorded, never
//! applied: a WARN line (`target: "fence"`), the counter
//! `fence.refused_total` (`orch metrics`) and a `fence_refusals` row that
//! `orch why <task>` shows.
//!
//! Also here: the run lock that binds a worktree to one epoch ([`RunLock`]).

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::config::Settings;
use crate::db::{Db, FenceRefusal, Job, Tx};
use crate::lock::LockGuard;
use crate::model::JobStatus;

/// The counter of refused effects (`orch metrics`:
/// `orch_fence_refused_total`).
pub const REFUSED_TOTAL: &str = "fence.refused_total";

/// A claim of a job: the job and the epoch the claim took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub job_id: i64,
    pub epoch: i64,
}

impl Claim {
    /// The claim `job` holds (its id and current epoch).
    pub fn of(job: &Job) -> Claim {
        Claim {
            job_id: job.id,
            epoch: job.epoch,
        }
    }
}

/// Whether `claim` still holds: `Ok(None)` when its job is running at its
/// epoch; `Ok(Some(job))` with the job as it is now when the claim is
/// stale (claimed again, requeued, finished, gone — a gone job reads as
/// stale with the claim's own row missing: `Err`).
///
/// Guarantees: read-only. Errors: database errors; the job does not
/// exist.
pub fn stale(db: &Db, claim: Claim) -> anyhow::Result<Option<Job>> {
    let job = db
        .job(claim.job_id)?
        .ok_or_else(|| anyhow::anyhow!("job {} does not exist", claim.job_id))?;
    Ok((!holds(&job, claim)).then_some(job))
}

/// Whether `job` (as read now) is running at `claim`'s epoch.
pub fn holds(job: &Job, claim: Claim) -> bool {
    job.status == JobStatus::Running && job.epoch == claim.epoch
}

/// Where a liveness judgement stands: the time now on both clocks and
/// this process's host id and boot id. A job's worker (`jobs.worker_host`,
/// `worker_boot`) is looked up in `/proc` only when it is of this host id
/// and this boot ([`Here::owns`]); any other job's worker is judged by its
/// heartbeat's age alone, and nothing of it is signalled. The one
/// judgement: the reaper, `orch check` and the adopter use it.
#[derive(Debug, Clone)]
pub struct Here {
    /// Wall clock, unix ms.
    pub wall_ms: i64,
    /// This boot's monotonic clock (`clock::boot_ms`), ms.
    pub boot_ms: i64,
    /// [`crate::process::host_id`].
    pub host_id: String,
    /// [`crate::process::boot_id`].
    pub boot_id: String,
}

impl Here {
    /// This process's vantage at wall time `wall_ms` (unix ms).
    pub fn at(wall_ms: i64) -> Here {
        Here {
            wall_ms,
            boot_ms: crate::clock::boot_ms(),
            host_id: crate::process::host_id(),
            boot_id: crate::process::boot_id(),
        }
    }

    /// Whether job `j`'s worker runs on this host id and this boot: the
    /// only jobs whose processes this process may look up or signal.
    pub fn owns(&self, j: &Job) -> bool {
        j.worker_host.as_deref() == Some(self.host_id.as_str())
            && j.worker_boot.as_deref() == Some(self.boot_id.as_str())
    }

    /// Milliseconds since the event job `j` recorded at wall time
    /// `wall_ms` and boot-clock time `boot_ms`: on the boot clock when the
    /// job's worker runs on this boot ([`Here::owns`]), so a jump of the
    /// wall clock does not count; else on the wall clock. Never negative.
    pub fn since(&self, j: &Job, wall_ms: i64, boot_ms: Option<i64>) -> i64 {
        let boot_ms = boot_ms.filter(|_| self.owns(j));
        crate::clock::elapsed_ms(wall_ms, boot_ms, self.wall_ms, self.boot_ms)
    }

    /// Why the worker of running job `j` is gone, or `None` while it
    /// lives. A worker of this host and boot: its pid must live
    /// (`lives(pid, start_time)`, a `/proc` look-up the caller may cache)
    /// and its heartbeat be younger than `stale_ms`, measured on the boot
    /// clock. Any other worker (another host, or this host before a
    /// reboot): its heartbeat's age on the wall clock alone (the last
    /// heartbeat, else the claim).
    pub fn worker_gone(
        &self,
        j: &Job,
        stale_ms: i64,
        lives: &mut dyn FnMut(i64, i64) -> bool,
    ) -> Option<String> {
        if !self.owns(j) {
            let age = self.wall_ms - j.heartbeat_at_ms.or(j.claimed_at_ms).unwrap_or(0);
            let whose = match j.worker_host.as_deref() {
                Some(h) if h == self.host_id => "worker ran before a reboot".to_string(),
                Some(h) => format!("worker on host {h}"),
                None => "worker on an unrecorded host".to_string(),
            };
            return (age > stale_ms).then(|| format!("{whose}: heartbeat {}s old", age / 1000));
        }
        match (j.worker_pid, j.worker_start_time) {
            (Some(pid), Some(start)) if lives(pid, start) => {}
            (Some(pid), _) => return Some(format!("worker pid {pid} is gone")),
            _ => return Some("job has no worker identity".into()),
        }
        let age = match (j.heartbeat_at_ms, j.claimed_at_ms) {
            (Some(beat), _) => self.since(j, beat, j.heartbeat_boot_ms),
            (None, Some(claimed)) => self.since(j, claimed, j.claimed_boot_ms),
            (None, None) => self.wall_ms,
        };
        (age > stale_ms).then(|| format!("heartbeat {}s old", age / 1000))
    }
}

/// Whether job `j`'s worker runs on this host id and this boot
/// ([`Here::owns`], now).
pub fn owned_here(j: &Job) -> bool {
    Here::at(crate::clock::now_ms()).owns(j)
}

/// Who holds the job instead of a stale claim, for people: `epoch 2
/// holds the job`, `epoch 2 finished it (done)`, `the job was taken back
/// (queued for its next claim)`.
pub fn holder_text(now: &Job, claim: Claim) -> String {
    match now.status {
        JobStatus::Running => format!("epoch {} holds the job", now.epoch),
        JobStatus::Queued if now.epoch == claim.epoch => {
            "the job was taken back (queued for its next claim)".into()
        }
        JobStatus::Queued => format!(
            "epoch {} ran it; the job is queued for its next claim",
            now.epoch
        ),
        s if now.epoch == claim.epoch => format!("the job was finished ({s})"),
        s => format!("epoch {} finished it ({s})", now.epoch),
    }
}

/// The reason a stale claim's `effect` is refused: `job 12 epoch 1:
/// finalize refused, epoch 2 holds the job`.
pub fn refusal_text(claim: Claim, effect: &str, now: &Job) -> String {
    format!(
        "job {} epoch {}: {effect} refused, {}",
        claim.job_id,
        claim.epoch,
        holder_text(now, claim)
    )
}

/// Records that stale `claim`'s `effect` was refused, the job being
/// `now`: a `fence_refusals` row and one more `fence.refused_total`, in
/// `tx`. Returns the reason ([`refusal_text`]). The caller logs it
/// ([`warn_refused`]) once the transaction committed.
///
/// Errors: database errors.
pub fn record(
    tx: &Tx,
    claim: Claim,
    effect: &str,
    now: &Job,
    now_ms: i64,
) -> anyhow::Result<String> {
    let reason = refusal_text(claim, effect, now);
    record_reason(tx, claim, effect, now, reason, now_ms)
}

/// [`record`] with the reason given (a refusal that is not about the
/// job's row: origin refused the claim's push lease).
///
/// Errors: database errors.
pub fn record_reason(
    tx: &Tx,
    claim: Claim,
    effect: &str,
    now: &Job,
    reason: String,
    now_ms: i64,
) -> anyhow::Result<String> {
    tx.insert_fence_refusal(&FenceRefusal {
        job_id: claim.job_id,
        task_id: now.task_id,
        epoch: claim.epoch,
        current_epoch: now.epoch,
        effect: effect.to_string(),
        reason: reason.clone(),
        at_ms: now_ms,
    })?;
    tx.bump_counter(REFUSED_TOTAL, 1)?;
    Ok(reason)
}

/// The WARN line of a refusal an operator greps for (`target: "fence"`).
pub fn warn_refused(claim: Claim, task_id: i64, effect: &str, reason: &str) {
    warn!(target: "fence", job = claim.job_id, task = task_id, epoch = claim.epoch, effect, "{reason}");
}

/// Refuses stale `claim`'s `effect` (the job being `now`): records it
/// ([`record`]) in its own transaction and logs it. Returns the reason.
///
/// Errors: database errors.
pub fn refuse(db: &Db, claim: Claim, effect: &str, now: &Job) -> anyhow::Result<String> {
    let at = crate::clock::now_ms();
    let reason = db.write(|tx| record(tx, claim, effect, now, at))?;
    warn_refused(claim, now.task_id, effect, &reason);
    Ok(reason)
}

/// Turns `err`, when it is an outbox message refused because its claim
/// does not hold ([`crate::outbox::NotHeld`], the whole transaction rolled
/// back), into the fence's refusal: recorded and logged ([`refuse`]),
/// returning the reason. `Ok(None)` for any other error (the caller's to
/// report) and for a job that is gone (nothing to record it on).
///
/// Errors: database errors.
pub fn refuse_not_held(db: &Db, err: &anyhow::Error) -> anyhow::Result<Option<String>> {
    let Some(n) = err.downcast_ref::<crate::outbox::NotHeld>() else {
        return Ok(None);
    };
    let claim = Claim {
        job_id: n.job_id,
        epoch: n.epoch,
    };
    let Some(now) = db.job(n.job_id)? else {
        return Ok(None);
    };
    refuse(db, claim, &n.effect, &now).map(Some)
}

/// Checks `claim` before `effect`: `Ok(None)` when it holds (go on), or
/// `Ok(Some(reason))` after refusing and recording the effect
/// ([`refuse`]) when the claim is stale (do not act).
///
/// Errors: database errors.
pub fn guard(db: &Db, claim: Claim, effect: &str) -> anyhow::Result<Option<String>> {
    match stale(db, claim)? {
        None => Ok(None),
        Some(now) => refuse(db, claim, effect, &now).map(Some),
    }
}

/// The exclusive lock that binds a worktree to one epoch: held by
/// whoever holds the agent's lifetime there (the worker during its run
/// and finalize; a supervisor of a detached run takes the same flock on
/// [`lock_path`]). A run of another epoch that finds it held does not
/// use the worktree: it gets one of its own ([`epoch_worktree`]).
/// Released when dropped or when its holder dies.
#[derive(Debug)]
pub struct RunLock {
    _guard: LockGuard,
    /// The locked worktree.
    pub worktree: PathBuf,
}

/// The run lock file of `worktree` under orch's state directory
/// (`<state>/locks/run-<sanitised path>.lock`); the file names its holder.
pub fn lock_path(settings: &Settings, worktree: &Path) -> PathBuf {
    crate::lock::run_lock_path(&settings.locks_dir(), worktree)
}

/// Takes `worktree`'s run lock for `claim` without waiting. `Err(held_by)`
/// (the holder's own line, e.g. `job 12 epoch 1 host a pid 345`) when it
/// is held.
///
/// Errors: I/O errors.
pub fn try_lock(
    settings: &Settings,
    worktree: &Path,
    claim: Claim,
) -> anyhow::Result<Result<RunLock, String>> {
    let holder = format!(
        "job {} epoch {} host {} pid {}",
        claim.job_id,
        claim.epoch,
        crate::process::host_id(),
        std::process::id()
    );
    Ok(
        crate::lock::try_run_lock(&lock_path(settings, worktree), Some(&holder))?.map(|g| {
            RunLock {
                _guard: g,
                worktree: worktree.to_path_buf(),
            }
        }),
    )
}

/// Whether `worktree`'s run lock is free now (nobody holds it). Takes
/// and drops it, keeping what its last holder wrote.
///
/// Errors: I/O errors.
pub fn is_free(settings: &Settings, worktree: &Path) -> anyhow::Result<bool> {
    let path = lock_path(settings, worktree);
    if !path.exists() {
        return Ok(true);
    }
    Ok(crate::lock::try_run_lock(&path, None)?.is_ok())
}

/// The job that last held `worktree`'s run lock, as its holder line names
/// it (`job 12 epoch 1 host a pid 345` → 12); `None` when no run held it
/// or the line does not read.
pub fn last_holder_job(settings: &Settings, worktree: &Path) -> Option<i64> {
    let line = std::fs::read_to_string(lock_path(settings, worktree)).ok()?;
    line.strip_prefix("job ")?.split(' ').next()?.parse().ok()
}

/// The worktree of `claim` when the task's own is held by another run:
/// `<task worktree, without an earlier epoch suffix>-j<job>e<epoch>`, a
/// fresh path no other claim uses.
pub fn epoch_worktree(task_worktree: &Path, claim: Claim) -> PathBuf {
    let name = task_worktree
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = match name.rsplit_once("-j") {
        Some((b, suffix))
            if suffix
                .split_once('e')
                .is_some_and(|(j, e)| is_number(j) && is_number(e)) =>
        {
            b.to_string()
        }
        _ => name,
    };
    task_worktree.with_file_name(format!("{base}-j{}e{}", claim.job_id, claim.epoch))
}

/// Whether `worktree` is a claim's own worktree ([`epoch_worktree`]'s
/// `-j<job>e<epoch>` suffix).
pub fn is_epoch_worktree(worktree: &Path) -> bool {
    worktree
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .and_then(|n| {
            n.rsplit_once("-j").and_then(|(_, suffix)| {
                suffix
                    .split_once('e')
                    .map(|(j, e)| is_number(j) && is_number(e))
            })
        })
        .unwrap_or(false)
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running job claimed at wall time 1,000 s by `host`/`boot`,
    /// worker pid 7 started at 70, last heartbeat at `beat_ms`.
    fn running(host: &str, boot: Option<&str>, beat_ms: i64) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db"), 5000).unwrap();
        db.conn()
            .execute_batch(&format!(
                "INSERT INTO projects (name, tracker, forge, default_branch, clone_url, synced_at_ms) \
                 VALUES ('p', 'local', 'local', 'main', '/r', 1);
                 INSERT INTO tasks (project, tracker_issue_id, sequence, title, stage, version, branch, \
                 worktree, created_at_ms, updated_at_ms) VALUES ('p', '1', 1, 't', 'development', 1, 'b', '/w', 1, 1);
                 INSERT INTO jobs (id, task_id, stage, role, task_version, status, available_at_ms, \
                 created_at_ms, worker_host, worker_boot, worker_pid, worker_start_time, claimed_at_ms, \
                 heartbeat_at_ms, host_id, epoch) VALUES (1, 1, 'development', 'developer', 1, 'running', 1, 1, \
                 '{host}', {}, 7, 70, 1000000, {beat_ms}, '{host}', 1);",
                boot.map_or("NULL".to_string(), |b| format!("'{b}'"))
            ))
            .unwrap();
        db.job(1).unwrap().unwrap()
    }

    #[test]
    fn only_a_job_of_this_host_and_boot_is_looked_up_in_proc() {
        let here = Here {
            wall_ms: 1_100_000,
            boot_ms: 5_000,
            host_id: "a".into(),
            boot_id: "boot1".into(),
        };
        let stale_ms = 60_000;
        let looked = std::cell::RefCell::new(Vec::new());
        let mut lives = |pid: i64, start: i64| {
            looked.borrow_mut().push((pid, start));
            false
        };
        // Another host, fresh heartbeat (10 s): alive, nothing looked up.
        let other = running("b", Some("boot1"), 1_090_000);
        assert!(!here.owns(&other));
        assert_eq!(here.worker_gone(&other, stale_ms, &mut lives), None);
        // Another host, heartbeat 100 s old: gone, by its age alone.
        let other = running("b", Some("boot1"), 1_000_000);
        assert_eq!(
            here.worker_gone(&other, stale_ms, &mut lives).as_deref(),
            Some("worker on host b: heartbeat 100s old")
        );
        // This host before a reboot: its heartbeat too, not /proc.
        let rebooted = running("a", Some("boot0"), 1_090_000);
        assert_eq!(here.worker_gone(&rebooted, stale_ms, &mut lives), None);
        let rebooted = running("a", Some("boot0"), 1_000_000);
        assert_eq!(
            here.worker_gone(&rebooted, stale_ms, &mut lives).as_deref(),
            Some("worker ran before a reboot: heartbeat 100s old")
        );
        // No boot recorded (a claim before migration 26): heartbeat only.
        let unknown = running("a", None, 1_090_000);
        assert!(!here.owns(&unknown));
        assert_eq!(here.worker_gone(&unknown, stale_ms, &mut lives), None);
        assert!(looked.borrow().is_empty(), "{looked:?}");
        // This host and boot: its pid is looked up, and it is dead.
        let mine = running("a", Some("boot1"), 1_090_000);
        assert!(here.owns(&mine));
        assert_eq!(
            here.worker_gone(&mine, stale_ms, &mut lives).as_deref(),
            Some("worker pid 7 is gone")
        );
        assert_eq!(*looked.borrow(), vec![(7, 70)]);
        // Alive, with a fresh heartbeat: alive.
        assert_eq!(here.worker_gone(&mine, stale_ms, &mut |_, _| true), None);
    }

    #[test]
    fn an_epoch_worktree_replaces_an_earlier_suffix_and_keeps_the_folder() {
        let c = Claim {
            job_id: 12,
            epoch: 3,
        };
        assert_eq!(
            epoch_worktree(Path::new("/s/worktrees/widget/task-4"), c),
            Path::new("/s/worktrees/widget/task-4-j12e3")
        );
        assert_eq!(
            epoch_worktree(Path::new("/s/worktrees/widget/task-4-j9e2"), c),
            Path::new("/s/worktrees/widget/task-4-j12e3")
        );
        // Not an epoch suffix: kept.
        assert_eq!(
            epoch_worktree(Path::new("/w/my-jet"), c),
            Path::new("/w/my-jet-j12e3")
        );
    }

    #[test]
    fn a_held_run_lock_names_its_holder_and_frees_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_string_lossy().into_owned();
        let lookup = |k: &str| (k == "ORCH_STATE_DIR").then(|| state.clone());
        let settings = Settings::load(&lookup, None, None).unwrap();
        let wt = dir.path().join("wt");
        let c = Claim {
            job_id: 1,
            epoch: 1,
        };
        let held = try_lock(&settings, &wt, c).unwrap().unwrap();
        assert!(!is_free(&settings, &wt).unwrap());
        let busy = try_lock(&settings, &wt, Claim { epoch: 2, ..c })
            .unwrap()
            .unwrap_err();
        assert!(busy.starts_with("job 1 epoch 1 host "), "{busy}");
        drop(held);
        assert!(is_free(&settings, &wt).unwrap());
        // A look whether it is free keeps the last holder's line.
        assert_eq!(last_holder_job(&settings, &wt), Some(1));
        assert_eq!(last_holder_job(&settings, &dir.path().join("never")), None);
    }
}
