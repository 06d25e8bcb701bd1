//! Two orch hosts on one PostgreSQL (issue 25 §3, DESIGN §10 "Hosts"):
//! the chaos test. Two "hosts" on this machine share one database, one
//! origin and one config; each has its own host id, state folder (clones,
//! worktrees, logs, locks) and its own `orch tick` loops. Both are killed
//! -9 mid-run, then one is stopped (SIGSTOP of every process it has) for
//! longer than the heartbeat timeout: the other rescues its jobs under a
//! new epoch, and when the stopped one resumes, nothing of its old epochs
//! reaches anything. Runs only on PostgreSQL (`ORCH_TEST_PG`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::*;

/// Tasks driven to done.
const TASKS: i64 = 6;
/// `orch tick` loops per host.
const LOOPS: usize = 2;
/// How long the whole run may take before the test fails with the state.
const BOUND: Duration = Duration::from_secs(240);
/// `ORCH_HEARTBEAT_STALE_S` of both hosts.
const STALE_S: u64 = 6;
/// The environment variable (not `ORCH_*`: agents keep it) that marks
/// every process of a host, so the test finds them all in `/proc`.
const MARK: &str = "CHAOS_HOST";

/// One host: its sandbox handle (the shared database, origin and config;
/// its own state folder and host id), the file its agents record their
/// starts in, and whether its loops may start new commands.
struct Host {
    id: &'static str,
    sbx: Sandbox,
    /// Its state folder, seen by its commands at `sbx.state_dir()`.
    own_state: PathBuf,
    /// `FAKE_AGENT_PIDFILE`: one agent pid a line.
    pids: PathBuf,
    /// `FAKE_AGENT_RESUME_LOG`: `job<N>-a<attempt> …`, a line per start.
    starts: PathBuf,
    paused: Arc<AtomicBool>,
}

impl Host {
    /// Host `id` of the shared sandbox `base`: its own state folder
    /// `<sandbox>/<state>`, which its commands see at the sandbox's state
    /// path (`ORCH_STATE_DIR`), as two machines each have their own
    /// `/var/lib/orch`: a mount namespace of its own (bubblewrap) binds it
    /// there. (The database's `tasks.worktree` is an absolute path, so hosts
    /// share the state folder's path, not its contents.)
    fn new(base: &Sandbox, id: &'static str, state: &str) -> Host {
        let mut sbx = base.alias();
        let pids = base.dir.join(format!("agent-pids-{id}"));
        let starts = base.dir.join(format!("agent-starts-{id}"));
        sbx.set("ORCH_HOST_ID", id)
            .set(MARK, id)
            .set("FAKE_AGENT_PIDFILE", pids.to_str().unwrap())
            .set("FAKE_AGENT_RESUME_LOG", starts.to_str().unwrap());
        let own_state = base.dir.join(state);
        std::fs::create_dir_all(&own_state).unwrap();
        Host {
            id,
            sbx,
            own_state,
            pids,
            starts,
            paused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Another handle on this host (for a loop's thread).
    fn alias(&self) -> Host {
        Host {
            id: self.id,
            sbx: self.sbx.alias(),
            own_state: self.own_state.clone(),
            pids: self.pids.clone(),
            starts: self.starts.clone(),
            paused: self.paused.clone(),
        }
    }

    /// `orch ARGS` on this host (in its mount namespace).
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.sbx.orch_at(Path::new("bwrap"));
        c.args(["--dev-bind", "/", "/", "--bind"])
            .arg(&self.own_state)
            .arg(self.sbx.state_dir())
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_orch"))
            .args(args);
        c
    }

    /// Runs `orch ARGS` on this host, asserting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}: orch {args:?} exited {:?}\n{}{}",
            self.id,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// This host's logs folder, as the test sees it.
    fn logs(&self) -> PathBuf {
        self.own_state.join("logs")
    }
}

/// What the loops saw: every command's end that was neither a success nor
/// a busy (75) nor a kill by this test.
#[derive(Default)]
struct Seen {
    ticks: usize,
    busy: usize,
    killed: usize,
    failures: Vec<String>,
}

/// A loop of `orch tick` on `host` until `stop`; no new command while
/// `paused` (a stopped host starts nothing).
fn tick_loop(
    host: Host,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    tag: String,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let err = host.sbx.dir.join(format!("{tag}.stderr"));
        while !stop.load(Ordering::SeqCst) {
            if paused.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let Ok(out) = host.cmd(&["tick"]).output() else {
                return;
            };
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            s.ticks += 1;
            match out.status.code() {
                Some(0) => {}
                Some(75) => s.busy += 1,
                // bwrap answers for its orch killed by this test: 128 + 9.
                None | Some(137) => s.killed += 1,
                Some(c) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    s.failures
                        .push(format!("{tag}: exit {c}: {}", stderr.trim()));
                }
            }
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&err)
            {
                let _ = f.write_all(&out.stderr);
            }
        }
    })
}

/// The running chaos: the loops and what they saw. Dropped (the test
/// over, or failed), it stops the loops, resumes what it stopped and kills
/// every process of both hosts, so nothing outlives the test.
struct Chaos {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    loops: Vec<std::thread::JoinHandle<()>>,
    stopped: BTreeSet<i32>,
}

impl Chaos {
    /// Stops the loops (each ends its command first).
    fn stop_loops(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in self.loops.drain(..) {
            let _ = l.join();
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        cont(&self.stopped);
        for _ in 0..3 {
            for host in ["host-a", "host-b"] {
                for (pid, _) in processes_of(host) {
                    // SAFETY: kill(2) on a process this test's commands started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop_loops();
    }
}

/// Pids of the processes marked as `host`'s (`CHAOS_HOST`), with whether
/// each is the orch binary.
fn processes_of(host: &str) -> Vec<(i32, bool)> {
    let orch = std::fs::canonicalize(env!("CARGO_BIN_EXE_orch")).unwrap();
    let want = format!("{MARK}={host}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|v| v == want.as_bytes()) || !pid_alive(pid) {
            continue;
        }
        let is_orch = std::fs::read_link(e.path().join("exe")).is_ok_and(|x| x == orch);
        out.push((pid, is_orch));
    }
    out
}

/// SIGKILL to every orch process of `host` (its loops' commands,
/// workers, supervisors); returns how many.
fn kill_orch_of(host: &str) -> usize {
    let mut n = 0;
    for (pid, is_orch) in processes_of(host) {
        // SAFETY: kill(2) on a process this test's commands started.
        if is_orch && unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            n += 1;
        }
    }
    n
}

/// SIGSTOP to every process of `host`, again until a sweep finds no
/// process not yet stopped (a stopped process starts no other); returns
/// the stopped pids.
fn stop_all_of(host: &str) -> BTreeSet<i32> {
    let mut stopped = BTreeSet::new();
    let mut quiet = 0;
    while quiet < 5 {
        let fresh: Vec<i32> = processes_of(host)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !stopped.contains(p))
            .collect();
        if fresh.is_empty() {
            quiet += 1;
        } else {
            quiet = 0;
        }
        for pid in fresh {
            // SAFETY: kill(2) on a process this test's commands started.
            if unsafe { libc::kill(pid, libc::SIGSTOP) } == 0 {
                stopped.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    stopped
}

fn cont(pids: &BTreeSet<i32>) {
    for pid in pids {
        // SAFETY: kill(2) on a process this test stopped.
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
}

/// `(job, epoch)` of every detached run started on a host: its
/// `job<N>-e<E>.run` records.
fn run_records(logs: &Path) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name
            .strip_prefix("job")
            .and_then(|r| r.strip_suffix(".run"))
        else {
            continue;
        };
        let Some((job, epoch)) = rest.split_once("-e") else {
            continue;
        };
        if let (Ok(j), Ok(e)) = (job.parse(), epoch.parse()) {
            out.push((j, e));
        }
    }
    out
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The state to show when the run does not finish or an assertion fails.
fn state(a: &Host) -> String {
    let jobs = {
        let db = a.sbx.db();
        let mut st = db
            .prepare("SELECT id, task_id, stage, status, attempt, epoch, host_id, last_error FROM jobs ORDER BY id")
            .unwrap();
        st.query_map([], |r| {
            Ok(format!(
                "job {} task {} {} {} a{} e{} on {:?}: {:?}",
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .join("\n")
    };
    let status = a.cmd(&["status"]).output().unwrap();
    format!(
        "{jobs}\n--- orch status\n{}",
        String::from_utf8_lossy(&status.stdout)
    )
}

/// Waits up to `BOUND` from `start` for `cond`, failing with the state.
fn wait_or_fail(start: Instant, a: &Host, what: &str, mut cond: impl FnMut() -> bool) {
    while !cond() {
        assert!(
            start.elapsed() < BOUND,
            "not finished in {BOUND:?}: {what}\n{}",
            state(a)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_hosts_on_one_postgres_survive_kill_9_and_a_stopped_host_and_finish_every_task_once() {
    if pg_base().is_none() {
        eprintln!("skipped: the two-host chaos test needs PostgreSQL (set ORCH_TEST_PG)");
        return;
    }
    let mut base = Sandbox::new_in(Path::new("/var/tmp/orch-tests"));
    base.set("ORCH_AGENT_SANDBOX", "none")
        .set("ORCH_MAX_CONCURRENCY", "8")
        .set("ORCH_HEARTBEAT_S", "1")
        .set("ORCH_HEARTBEAT_STALE_S", &STALE_S.to_string())
        // Above any pass's length here, and the stop's. With a 5 s lease
        // this test once saw two hosts' merge lines rebase one branch at
        // once (the merge lease's holder was the line, not a host); the
        // holder is `merge-line@<host id>` now, but the short lease is not
        // tried again here: an expired tick lease still doubles passes.
        .set("ORCH_TICK_LEASE_TTL_S", "30")
        .set("ORCH_REAPER_FINALIZE_GRACE_S", "2")
        .set("FAKE_AGENT_SLEEP", "1")
        // Each task its own file: concurrent tasks do not conflict on main.
        .set("FAKE_AGENT_DEV_FILE", "changes/task-%t.md");
    for role in [
        "ANALYST",
        "ARCHITECT",
        "DEVELOPER",
        "REVIEWER",
        "TESTER",
        "DEPLOYER",
    ] {
        base.set(&format!("ORCH_MAX_CONCURRENCY_{role}"), "8");
    }
    let a = Host::new(&base, "host-a", "state-a");
    let b = Host::new(&base, "host-b", "state-b");
    for h in [&a, &b] {
        h.ok(&["init"]);
    }
    for i in 1..=TASKS {
        let v = a.json(&[
            "issue",
            "add",
            "--project",
            "widget",
            "--title",
            &format!("chaos {i}"),
        ]);
        assert_eq!(v["task_id"], i, "{v}");
    }

    if let Err(e) = orch::process::bwrap_usable() {
        eprintln!("skipped: each host needs a mount namespace of its own (bubblewrap): {e}");
        return;
    }
    let mut chaos = Chaos {
        stop: Arc::new(AtomicBool::new(false)),
        seen: Arc::new(Mutex::new(Seen::default())),
        loops: Vec::new(),
        stopped: BTreeSet::new(),
    };
    for h in [&a, &b] {
        for n in 0..LOOPS {
            chaos.loops.push(tick_loop(
                h.alias(),
                h.paused.clone(),
                chaos.stop.clone(),
                chaos.seen.clone(),
                format!("{}-loop{n}", h.id),
            ));
        }
    }
    let start = Instant::now();
    let count = |sql: &str| a.sbx.count(sql);
    let running_on = |host: &str| {
        count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE status='running' AND host_id='{host}' AND run_handle IS NOT NULL"
        ))
    };

    // Chaos 1: kill -9 of every orch process of both hosts at once, while
    // detached runs go on both; the loops start again at once.
    wait_or_fail(start, &a, "a detached run on each host", || {
        running_on("host-a") > 0 && running_on("host-b") > 0
    });
    let killed_at = orch::clock::now_ms();
    let killed = kill_orch_of("host-a") + kill_orch_of("host-b");
    assert!(killed >= 2, "killed {killed} orch processes");
    eprintln!("chaos: killed -9 {killed} orch processes of both hosts");

    // Chaos 2: host b stopped, every process of it (loops' commands,
    // workers, supervisors, agents), with a run of its going, for longer
    // than the heartbeat timeout; host a's reaper rescues its jobs.
    wait_or_fail(start, &a, "a detached run on host b after the kill", || {
        count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE status='running' AND host_id='host-b' \
             AND run_handle IS NOT NULL AND exit_code IS NULL AND claimed_at_ms>{killed_at}"
        )) > 0
    });
    b.paused.store(true, Ordering::SeqCst);
    chaos.stopped = stop_all_of("host-b");
    for pid in &chaos.stopped {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        eprintln!(
            "chaos: stopped {pid}: {}",
            String::from_utf8_lossy(&cmd).replace('\0', " ")
        );
    }
    let stopped = chaos.stopped.clone();
    let held: Vec<(i64, i64)> = {
        let db = a.sbx.db();
        let mut st = db
            .prepare("SELECT id, epoch FROM jobs WHERE status='running' AND host_id='host-b'")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let stopped_at = Instant::now();
    eprintln!(
        "chaos: stopped {} processes of host b holding jobs {held:?}",
        stopped.len()
    );
    let rescued = |held: &[(i64, i64)]| {
        held.iter()
            .filter(|(job, epoch)| {
                count(&format!(
                    "SELECT COUNT(*) FROM jobs WHERE id={job} AND (epoch>{epoch} OR status='queued')"
                )) == 1
            })
            .count()
    };
    let mut timed_out = false;
    while rescued(&held) < held.len() || stopped_at.elapsed() < Duration::from_secs(STALE_S * 2) {
        if stopped_at.elapsed() > Duration::from_secs(60) {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rescue_took = stopped_at.elapsed();
    let state_when_stopped = state(&a);
    cont(&stopped);
    chaos.stopped.clear();
    b.paused.store(false, Ordering::SeqCst);
    assert!(
        !timed_out,
        "host a did not rescue host b's jobs {held:?} in 60 s\n{state_when_stopped}"
    );
    eprintln!("chaos: host b's jobs rescued, resumed after {rescue_took:?}");

    // Everything finishes.
    let done = || count("SELECT COUNT(*) FROM tasks WHERE stage='done'") == TASKS;
    wait_or_fail(start, &a, "every task done", done);
    // Whatever is still going (a resumed old epoch finalizing, a report to
    // deliver) ends before the loops stop.
    wait_or_fail(start, &a, "no job running, nothing to deliver", || {
        count("SELECT COUNT(*) FROM jobs WHERE status IN ('running','queued')") == 0
            && count("SELECT COUNT(*) FROM outbox WHERE status='pending'") == 0
    });
    chaos.stop_loops();
    let took = start.elapsed();
    let seen = chaos.seen.lock().unwrap();
    eprintln!(
        "chaos: done in {took:?}: {} ticks, {} busy, {} killed, {} failed",
        seen.ticks,
        seen.busy,
        seen.killed,
        seen.failures.len()
    );
    for f in &seen.failures {
        eprintln!("  {f}");
    }
    assert!(
        !seen.failures.iter().any(|f| f.contains("panicked")),
        "a command panicked: {:?}",
        seen.failures
    );
    drop(seen);
    assert_outcome(&a, &b);
}

/// What a user sees once the run is over.
fn assert_outcome(a: &Host, b: &Host) {
    // Every task done, seen from either host.
    for h in [a, b] {
        let v = h.json(&["task", "list"]);
        let stages: Vec<&str> = v
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|t| t["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages, vec!["done"; TASKS as usize], "{}: {v}", h.id);
    }

    // 0 duplicate claims: no (job, epoch) started a run on both hosts or
    // twice, and no agent ran twice for one attempt of a job.
    let mut claims: BTreeMap<(i64, i64), Vec<&str>> = BTreeMap::new();
    for h in [a, b] {
        for c in run_records(&h.logs()) {
            claims.entry(c).or_default().push(h.id);
        }
    }
    let twice: Vec<_> = claims.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "claims run twice: {twice:?}");
    let mut starts: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut pids = 0;
    for h in [a, b] {
        for l in lines(&h.starts) {
            let run = l.split_whitespace().next().unwrap().to_string();
            starts.entry(run).or_default().push(h.id);
        }
        pids += lines(&h.pids).len();
    }
    let twice: Vec<_> = starts.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "an attempt's agent started twice: {twice:?}"
    );
    let agent_starts: usize = starts.values().map(Vec::len).sum();
    assert_eq!(agent_starts, pids, "every agent start recorded");
    let epochs = a.sbx.count("SELECT SUM(epoch) FROM jobs") as usize;
    assert!(
        agent_starts <= epochs,
        "{agent_starts} agent starts, only {epochs} claims"
    );
    let by_b_after_rescue = b_ran_something(b);
    eprintln!(
        "chaos: {} claims with a run ({} on host b), {agent_starts} agent starts, {epochs} claims in all",
        claims.len(),
        by_b_after_rescue
    );

    // 0 outside effects of a stale epoch: each task's change is on main
    // once, each stage entered once, each run's report queued once.
    // (A task sent back to development — its review, its merge — has a
    // line for each development job: a stale epoch's line repeats one.)
    for task in 1..=TASKS {
        let file = a
            .sbx
            .origin_git(&["show", &format!("main:changes/task-{task}.md")]);
        let mine: Vec<&str> = file
            .lines()
            .filter(|l| l.starts_with(&format!("- task {task}: ")))
            .collect();
        let distinct: BTreeSet<&&str> = mine.iter().collect();
        let dev_jobs = a.sbx.count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE task_id={task} AND stage='development' AND status='done'"
        ));
        assert!(
            distinct.len() == mine.len() && mine.len() as i64 == dev_jobs,
            "task {task}'s change on main, {dev_jobs} development job(s) done:\n{file}\n{:?}",
            a.sbx.transitions(task)
        );
    }
    let again = a.sbx.count(
        "SELECT COUNT(*) FROM (SELECT job_id FROM transitions WHERE job_id IS NOT NULL GROUP BY job_id HAVING COUNT(*)>1) AS d",
    );
    assert_eq!(again, 0, "a job moved its task twice:\n{}", a.sbx.dump());
    let mut reports: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    {
        let db = a.sbx.db();
        let mut st = db
            .prepare("SELECT dedupe_key, status, sends FROM outbox ORDER BY id")
            .unwrap();
        let rows: Vec<(String, String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let resent: Vec<_> = rows.iter().filter(|r| r.2 > 1).collect();
        // At least once: a send cut by kill -9 or the stop (and its
        // deliver lease taken over) may be sent again, no more.
        assert!(resent.len() <= 2, "outbox rows sent again: {resent:?}");
        for (key, status, _) in &rows {
            assert_eq!(status, "delivered", "{key}");
            // task:T:jobJ:aA:eE:KIND
            let parts: Vec<&str> = key.split(':').collect();
            if parts.len() == 6 && parts[2].starts_with("job") {
                reports
                    .entry((
                        parts[2].to_string(),
                        parts[3].to_string(),
                        parts[5].to_string(),
                    ))
                    .or_default()
                    .push(parts[4].to_string());
            }
        }
    }
    let twice: Vec<_> = reports.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "one run's message queued by two epochs: {twice:?}"
    );

    // A fence refusal, if any, shows in `orch why`.
    let refusals: Vec<(i64, String)> = {
        let db = a.sbx.db();
        let mut st = db
            .prepare(
                "SELECT j.task_id, f.reason FROM fence_refusals f JOIN jobs j ON j.id=f.job_id",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    eprintln!("chaos: {} fence refusals", refusals.len());
    for (task, reason) in &refusals {
        let why = a.ok(&["why", &task.to_string()]);
        assert!(why.contains(reason.as_str()), "{reason}\n{why}");
    }

    // The shared store is sound from either host.
    b.ok(&["check"]);
    a.ok(&["check"]);
    a.sbx.check_invariants();
    let v = a.json(&["status"]);
    let mut hosts: Vec<&str> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["host-a", "host-b"], "{v}");
}

/// How many runs host b's records name (for the log line).
fn b_ran_something(b: &Host) -> usize {
    run_records(&b.logs()).len()
}
