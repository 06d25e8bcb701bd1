//! Detached agent runs: a run that outlives every orch process (DESIGN §4
//! "Detached runs").
//!
//! The worker writes a [`Spec`] under orch's state directory (never where
//! an agent can write) and calls [`start`]: it starts `orch run-agent
//! --spec FILE` in a session of its own, which starts the supervisor
//! (`orch run-agent --spec FILE --supervise`) and exits at once — the
//! supervisor is nobody's child that dies with orch, its stdio is not the
//! worker's, and it is the leader of its own session and process group.
//! Both are this very binary (`/proc/self/exe`), so a binary replaced on
//! disk mid-run changes neither the spec's reader nor the records' writer.
//!
//! The supervisor ([`supervise`]) runs the agent exactly as
//! [`super::run`] does (its own process group, stdin the prompt file,
//! stdout and stderr the run's log, the role's timeout: TERM to the group,
//! KILL after the grace), and writes two records next to the log, each to
//! a temporary file, fsynced, renamed: [`Started`] (`job<N>-e<E>.run`,
//! supervisor and agent pid with their start times and the boot id) as
//! soon as the agent is spawned, and [`Exited`] (`job<N>-e<E>.exit`) once
//! it ended. Then it exits. Any later process judges the run from those
//! files and `/proc` alone ([`state`]).
//!
//! The agent keeps `PR_SET_PDEATHSIG` towards the supervisor: a supervisor
//! killed (or a reboot) ends its agent too, and the run is gone without an
//! exit record — a dead run, which the reaper's Tier-1 recovers.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{ExitKind, RunOutcome, RunSpec, Spawned};
use crate::failpoint::failpoint;

/// The [`Spec`] format this binary writes and reads.
pub const SPEC_VERSION: u32 = 1;

/// The largest spec or record file read back, in bytes.
const MAX_RECORD_BYTES: u64 = 4 << 20;

/// How often [`start`] looks for the supervisor's [`Started`] record.
const START_POLL: Duration = Duration::from_millis(10);

/// The files of one detached run (claim `epoch` of job `job_id`), all in
/// the logs folder next to the run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `job<N>-e<E>.spec`: what to run ([`Spec`]).
    pub spec: PathBuf,
    /// `job<N>-e<E>.run`: the [`Started`] record.
    pub started: PathBuf,
    /// `job<N>-e<E>.exit`: the [`Exited`] record.
    pub exit: PathBuf,
    /// `job<N>-e<E>.runner.log`: the supervisor's own messages.
    pub runner_log: PathBuf,
}

impl Paths {
    /// The files of claim `epoch` of job `job_id` in folder `dir`.
    pub fn new(dir: &Path, job_id: i64, epoch: i64) -> Paths {
        let f = |ext: &str| dir.join(format!("job{job_id}-e{epoch}.{ext}"));
        Paths {
            spec: f("spec"),
            started: f("run"),
            exit: f("exit"),
            runner_log: f("runner.log"),
        }
    }
}

/// What a detached run runs: a [`RunSpec`] (its argv already wrapped by
/// the sandbox), the claim it belongs to, where its records go, and the
/// caller's own `facts` (the worker's post-run facts, for whoever records
/// the run's end; the supervisor ignores them). Read back strictly: an
/// unknown field or another `version` is an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec<T> {
    pub version: u32,
    pub job_id: i64,
    pub epoch: i64,
    pub run: RunSpec,
    /// Where the [`Started`] record goes.
    pub started_path: PathBuf,
    /// Where the [`Exited`] record goes.
    pub exit_path: PathBuf,
    pub facts: T,
    /// How the supervisor heartbeats the job while the agent runs; `None`:
    /// it does not (a spec of an older orch).
    #[serde(default)]
    pub heartbeat: Option<Beat>,
}

/// What a supervisor needs to heartbeat its job ([`Spec::heartbeat`]):
/// while the agent runs it refreshes the job's heartbeat every `every_ms`
/// — only while the job runs the spec's claim (its epoch, `running`) —
/// so a run whose watcher died is judged live by the heartbeat alone, as
/// a host that shares the store judges it. A database it cannot reach
/// never stops the agent: it logs and tries again at the next beat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beat {
    /// The database target (`ORCH_DB`, as the worker read it; a path
    /// absolute).
    pub db: String,
    /// The database's busy timeout (`ORCH_BUSY_TIMEOUT_MS`), ms.
    pub busy_timeout_ms: u64,
    /// The heartbeat interval (`ORCH_HEARTBEAT_S`), ms.
    pub every_ms: u64,
}

impl<T> Spec<T> {
    /// A spec for `run` of claim `epoch` of job `job_id`, its records at
    /// `paths`.
    pub fn new(run: RunSpec, job_id: i64, epoch: i64, paths: &Paths, facts: T) -> Spec<T> {
        Spec {
            version: SPEC_VERSION,
            job_id,
            epoch,
            run,
            started_path: paths.started.clone(),
            exit_path: paths.exit.clone(),
            facts,
            heartbeat: None,
        }
    }

    /// This spec, its supervisor heartbeating the job as `beat` says.
    pub fn with_heartbeat(mut self, beat: Beat) -> Spec<T> {
        self.heartbeat = Some(beat);
        self
    }
}

/// Reads the spec at `path` strictly.
///
/// Errors: unreadable, larger than 4 MiB, not JSON of this shape, or of
/// another [`SPEC_VERSION`].
pub fn read_spec<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Spec<T>> {
    let spec: Spec<T> = read_json(path)?;
    if spec.version != SPEC_VERSION {
        bail!(
            "{}: spec version {} (this orch reads {SPEC_VERSION})",
            path.display(),
            spec.version
        );
    }
    Ok(spec)
}

/// The supervisor's record, written as soon as the agent is spawned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Started {
    pub job_id: i64,
    pub epoch: i64,
    /// The supervisor (its own session and process group).
    pub supervisor: Spawned,
    /// The agent (its own process group).
    pub agent: Spawned,
    /// The machine's boot id ([`super::boot_id`]): after a reboot the
    /// pids mean nothing.
    pub boot_id: String,
    /// Wall time of the spawn, unix ms.
    pub at_ms: i64,
}

impl Started {
    /// The handle stored on the job (`jobs.run_handle`):
    /// `<supervisor pid>:<its start time>:<boot id>`.
    pub fn handle(&self) -> String {
        format!(
            "{}:{}:{}",
            self.supervisor.pid, self.supervisor.start_time, self.boot_id
        )
    }
}

/// How long after its spec was written a run with neither a handle nor a
/// start record counts as starting (its worker died while starting it),
/// not as gone: longer than any [`start`] waits.
const STARTING_GRACE: Duration = Duration::from_secs(60);

/// The run's handle: `handle` (`jobs.run_handle`) when given, else the one
/// its start record names (its worker died before recording it).
pub fn handle_of(paths: &Paths, handle: Option<&str>) -> Option<String> {
    match handle.filter(|h| !h.is_empty()) {
        Some(h) => Some(h.to_string()),
        None => read_started(paths).map(|s| s.handle()),
    }
}

/// The run's start record, if it is there and reads.
pub fn read_started(paths: &Paths) -> Option<Started> {
    read_json(&paths.started).ok()
}

/// A supervisor as `jobs.run_handle` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    pub supervisor: Spawned,
    pub boot_id: String,
}

impl Handle {
    /// Parses [`Started::handle`]'s text; `None` when it is not that shape.
    pub fn parse(s: &str) -> Option<Handle> {
        let mut it = s.splitn(3, ':');
        let pid = it.next()?.parse().ok().filter(|p: &i32| *p > 1)?;
        let start_time = it.next()?.parse().ok()?;
        let boot_id = it.next()?.to_string();
        Some(Handle {
            supervisor: Spawned { pid, start_time },
            boot_id,
        })
    }

    /// Whether the supervisor still runs: on this boot, its pid alive
    /// with the recorded start time.
    pub fn alive(&self) -> bool {
        self.boot_id == super::boot_id()
            && super::is_alive(self.supervisor.pid, self.supervisor.start_time)
    }
}

/// How a detached run ended, as the supervisor saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exited {
    pub job_id: i64,
    pub epoch: i64,
    /// `code`, `signal`, `timed_out`, `stopped` (the supervisor was asked
    /// to stop: SIGTERM to it stops the agent's group), or `not_started`
    /// (the spawn failed: `error` says why).
    pub exit: String,
    /// The exit status for `code`.
    pub code: Option<i32>,
    /// The signal for `signal` and `stopped`.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// From spawn until the agent was reaped, in milliseconds.
    pub duration_ms: i64,
    pub agent: Option<Spawned>,
    pub error: Option<String>,
}

impl Exited {
    fn of(job_id: i64, epoch: i64, outcome: &RunOutcome, agent: Option<Spawned>) -> Exited {
        let (exit, code, signal) = match outcome.exit {
            ExitKind::Code(c) => ("code", Some(c), None),
            ExitKind::Signal(s) => ("signal", None, Some(s)),
            ExitKind::TimedOut => ("timed_out", None, None),
            ExitKind::Stopped(s) => ("stopped", None, Some(s)),
        };
        Exited {
            job_id,
            epoch,
            exit: exit.into(),
            code,
            signal,
            timed_out: outcome.exit == ExitKind::TimedOut,
            duration_ms: outcome.duration_ms,
            agent,
            error: None,
        }
    }

    /// The outcome as [`super::run`] would have returned it; a run that
    /// never started reads as exit 127 (a shell's "not found").
    ///
    /// Errors: an `exit` word this binary does not know, or a word
    /// without its number.
    pub fn outcome(&self) -> anyhow::Result<RunOutcome> {
        let exit = match (self.exit.as_str(), self.code, self.signal) {
            ("code", Some(c), _) => ExitKind::Code(c),
            ("signal", _, Some(s)) => ExitKind::Signal(s),
            ("timed_out", ..) => ExitKind::TimedOut,
            ("stopped", _, Some(s)) => ExitKind::Stopped(s),
            ("not_started", ..) => ExitKind::Code(127),
            (other, ..) => bail!("exit record says {other:?} without its number"),
        };
        Ok(RunOutcome {
            exit,
            duration_ms: self.duration_ms,
        })
    }
}

/// Where a detached run stands, judged from its records and `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// It ended: its exit record.
    Exited(Exited),
    /// Its supervisor still runs.
    Running,
    /// Its supervisor is gone and left no exit record (killed, a reboot):
    /// why it counts as gone.
    Gone(String),
}

/// Where the run of claim `epoch` of job `job_id` (supervisor `handle`,
/// `jobs.run_handle`, else its start record's) stands. The exit record is
/// read first and again after a dead supervisor is seen, so a run that
/// ends between the two looks is never taken for gone. A run with no
/// handle and no start record whose spec is younger than a minute is
/// starting: [`State::Running`].
///
/// Errors: an exit record that cannot be read or parsed, or is another
/// claim's.
pub fn state(
    paths: &Paths,
    job_id: i64,
    epoch: i64,
    handle: Option<&str>,
) -> anyhow::Result<State> {
    if let Some(e) = read_exit(paths, job_id, epoch)? {
        return Ok(State::Exited(e));
    }
    let handle = handle_of(paths, handle);
    let why = match handle.as_deref().map(|h| (h, Handle::parse(h))) {
        Some((_, Some(h))) if h.alive() => return Ok(State::Running),
        Some((_, Some(h))) if h.boot_id != super::boot_id() => {
            "its supervisor ran before a reboot or on another host".to_string()
        }
        Some((_, Some(h))) => format!("its supervisor pid {} is gone", h.supervisor.pid),
        Some((h, None)) => format!("its handle {h:?} names no supervisor"),
        None if starting(paths) => return Ok(State::Running),
        None => "it never started".to_string(),
    };
    match read_exit(paths, job_id, epoch)? {
        Some(e) => Ok(State::Exited(e)),
        None => Ok(State::Gone(format!("{why}, without an exit record"))),
    }
}

/// Where the run of claim `epoch` of job `job_id` stands, by its runner
/// (`jobs.runner`): a run in a transient unit (`systemd`) by
/// [`unit_state`], any other by [`state`] (supervisor `handle`).
///
/// Errors: those of [`state`] and [`unit_state`].
pub fn state_by_runner(
    paths: &Paths,
    job_id: i64,
    epoch: i64,
    runner: Option<&str>,
    handle: Option<&str>,
) -> anyhow::Result<State> {
    if runner == Some("systemd") {
        unit_state(paths, job_id, epoch)
    } else {
        state(paths, job_id, epoch, handle)
    }
}

/// [`state`] for a run in a transient unit (`jobs.runner` `systemd`): the
/// exit record, else what the service manager says of the unit
/// `orch-run-job<N>-e<E>.service` — no pid or boot id compared. A unit's
/// own view of `/proc` can hide the supervisor (`ProtectProc=invisible`
/// hides a non-dumpable process) and show another boot id than the
/// supervisor's (a container's boot id is not what a new `/proc` mount
/// shows), so the manager's word is the only one that holds. A manager
/// that cannot be asked counts as running: the run is watched, never
/// started again, and the reaper's timeout backstop still ends it.
///
/// Errors: those of [`read_exit`].
pub fn unit_state(paths: &Paths, job_id: i64, epoch: i64) -> anyhow::Result<State> {
    use super::systemd::{self, UnitName, UnitState};
    if let Some(e) = read_exit(paths, job_id, epoch)? {
        return Ok(State::Exited(e));
    }
    let unit = UnitName::for_run(job_id, epoch).map_err(anyhow::Error::msg)?;
    let why = match systemd::unit_state(&unit) {
        UnitState::Active => return Ok(State::Running),
        UnitState::Unknown(why) => {
            tracing::warn!(target: "worker", job = job_id, epoch, unit = %unit, why = %why, "cannot ask the service manager about the run's unit; taking it as running");
            return Ok(State::Running);
        }
        UnitState::Finished if starting(paths) && read_started(paths).is_none() => {
            return Ok(State::Running)
        }
        UnitState::Finished => format!("its unit {unit} is gone"),
    };
    match read_exit(paths, job_id, epoch)? {
        Some(e) => Ok(State::Exited(e)),
        None => Ok(State::Gone(format!("{why}, without an exit record"))),
    }
}

/// Whether the run of claim `epoch` of job `job_id` (runner `runner`,
/// supervisor `handle`) may still be going: its unit is active (or the
/// manager cannot be asked), or its supervisor lives. No record read.
pub fn may_run(job_id: i64, epoch: i64, runner: Option<&str>, handle: Option<&str>) -> bool {
    use super::systemd::{self, UnitName, UnitState};
    if runner == Some("systemd") {
        return UnitName::for_run(job_id, epoch)
            .is_ok_and(|u| systemd::unit_state(&u) != UnitState::Finished);
    }
    handle.and_then(Handle::parse).is_some_and(|h| h.alive())
}

/// Whether the spec at `paths.spec` was written less than
/// [`STARTING_GRACE`] ago.
fn starting(paths: &Paths) -> bool {
    std::fs::metadata(&paths.spec)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < STARTING_GRACE)
}

/// The exit record at `paths.exit`, if there is one.
///
/// Errors: it cannot be read or parsed, or it names another job or epoch.
pub fn read_exit(paths: &Paths, job_id: i64, epoch: i64) -> anyhow::Result<Option<Exited>> {
    if !paths.exit.exists() {
        return Ok(None);
    }
    let e: Exited = read_json(&paths.exit)?;
    if (e.job_id, e.epoch) != (job_id, epoch) {
        bail!(
            "{}: the exit record is job {} epoch {}, not job {job_id} epoch {epoch}",
            paths.exit.display(),
            e.job_id,
            e.epoch
        );
    }
    Ok(Some(e))
}

/// Starts the run `spec` describes, detached: writes the spec (mode 0600)
/// to `paths.spec`, starts `orch run-agent` in a new session with stdin
/// `/dev/null` and stdout and stderr appended to `paths.runner_log`, and
/// waits up to `wait` for the supervisor's [`Started`] record.
///
/// Errors: the spec cannot be written; records of this claim exist
/// already; `/proc/self/exe` cannot be started or exits non-zero; the
/// agent could not be spawned (the supervisor's `not_started` record:
/// its error); no record within `wait` (the supervisor is then killed).
pub fn start<T: Serialize>(
    spec: &Spec<T>,
    paths: &Paths,
    wait: Duration,
) -> anyhow::Result<Started> {
    write_new_spec(spec, paths)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&paths.runner_log)
        .with_context(|| format!("opening {}", paths.runner_log.display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = Command::new("/proc/self/exe");
    // `ps` shows `orch run-agent --spec …` (the program is this binary).
    cmd.arg0("orch")
        .arg("run-agent")
        .arg("--spec")
        .arg(&paths.spec)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd
        .status()
        .context("starting the run's supervisor (/proc/self/exe run-agent)")?;
    if !status.success() {
        bail!(
            "the run's launcher exited {status}: {}",
            tail(&paths.runner_log)
        );
    }
    wait_started(spec, paths, wait)
}

/// [`start`] in a transient systemd unit of orch's own user manager
/// ([`super::systemd`], unit `orch-run-job<N>-e<E>.service`): the unit runs
/// the supervisor itself (`orch run-agent --spec FILE --supervise`, the
/// binary at [`super::systemd::this_binary`]), with `env` set in the unit
/// (the manager's environment is not the worker's), its output appended to
/// `paths.runner_log`, and stopped by the manager at `runtime_max` at the
/// latest. The records, and so the liveness and adoption, are the
/// supervisor's.
///
/// Errors: those of [`start`]; the unit cannot be started.
pub fn start_unit<T: Serialize>(
    spec: &Spec<T>,
    paths: &Paths,
    env: Vec<(String, String)>,
    runtime_max: Duration,
    wait: Duration,
) -> anyhow::Result<Started> {
    use super::systemd;
    let unit = systemd::UnitName::for_run(spec.job_id, spec.epoch).map_err(anyhow::Error::msg)?;
    write_new_spec(spec, paths)?;
    let program = systemd::this_binary()?;
    let unit_spec = systemd::UnitSpec {
        unit,
        argv: vec![
            program.to_string_lossy().into_owned(),
            "run-agent".into(),
            "--spec".into(),
            paths.spec.to_string_lossy().into_owned(),
            "--supervise".into(),
        ],
        env,
        cwd: PathBuf::from("/"),
        output: Some(paths.runner_log.clone()),
        runtime_max,
        stop_grace: Duration::from_millis(spec.run.kill_grace.as_millis() as u64 * 2),
    };
    systemd::start_transient(&unit_spec)?;
    wait_started(spec, paths, wait)
}

/// Writes `spec` to `paths.spec` (mode 0600) for a claim never started.
///
/// Errors: records of this claim exist already; the write fails.
fn write_new_spec<T: Serialize>(spec: &Spec<T>, paths: &Paths) -> anyhow::Result<()> {
    if paths.started.exists() || paths.exit.exists() {
        bail!(
            "{} or {} exists already: this claim was started before",
            paths.started.display(),
            paths.exit.display()
        );
    }
    write_json_atomic(&paths.spec, spec)
}

/// Waits up to `wait` for the supervisor's start record of `spec`'s run.
///
/// Errors: the agent could not be spawned (the `not_started` record's
/// error); no record within `wait`; a record of another claim.
fn wait_started<T>(spec: &Spec<T>, paths: &Paths, wait: Duration) -> anyhow::Result<Started> {
    let deadline = Instant::now() + wait;
    loop {
        if paths.started.exists() {
            let s: Started = read_json(&paths.started)?;
            if (s.job_id, s.epoch) != (spec.job_id, spec.epoch) {
                bail!("{}: another claim's record", paths.started.display());
            }
            return Ok(s);
        }
        if let Some(e) = read_exit(paths, spec.job_id, spec.epoch)? {
            bail!(
                "{}",
                e.error
                    .unwrap_or_else(|| format!("the agent ended before it started: {}", e.exit))
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the run's supervisor wrote no start record within {} ms: {}",
                wait.as_millis(),
                tail(&paths.runner_log)
            );
        }
        std::thread::sleep(START_POLL);
    }
}

/// `orch run-agent --spec FILE`: without `supervise`, starts the
/// supervisor (this binary again, with `--supervise`) and returns at once;
/// with it, is the supervisor ([`supervise`]).
///
/// Errors: the supervisor cannot be started; those of [`supervise`].
pub fn run_agent_command(spec: &Path, supervise_it: bool, beat: BeatFn) -> anyhow::Result<()> {
    if supervise_it {
        return supervise(spec, beat);
    }
    Command::new("/proc/self/exe")
        .arg0("orch")
        .arg("run-agent")
        .arg("--spec")
        .arg(spec)
        .arg("--supervise")
        .current_dir("/")
        .spawn()
        .context("starting the supervisor")?;
    Ok(())
}

/// Renames a run's records (spec, start and exit records, runner log)
/// out of the way, each with `.<tag>` appended, so the same claim can
/// start its run again (a resume the CLI refused). A file that is not
/// there is skipped.
///
/// Errors: a rename fails.
pub fn set_aside(paths: &Paths, tag: &str) -> anyhow::Result<()> {
    for p in [&paths.spec, &paths.started, &paths.exit, &paths.runner_log] {
        if p.exists() {
            let mut to = p.as_os_str().to_owned();
            to.push(format!(".{tag}"));
            std::fs::rename(p, &to).with_context(|| format!("renaming {}", p.display()))?;
        }
    }
    Ok(())
}

/// The supervisor: runs the agent of the spec at `spec_path` to its end
/// as [`super::run`] does, writing the [`Started`] and [`Exited`]
/// records. SIGTERM or SIGINT stop the agent's group (TERM, grace, KILL)
/// and end in an `exit: "stopped"` record. A spawn that fails ends in a
/// `not_started` record naming the error.
///
/// Errors: the spec cannot be read; the exit record cannot be written.
pub fn supervise(spec_path: &Path, beat_fn: BeatFn) -> anyhow::Result<()> {
    // Our own session and process group: the reaper stops a run by its
    // supervisor's group.
    // SAFETY: setsid(2) has no memory effects; failing (already a group
    // leader) leaves us in the launcher's fresh session, which is fine.
    unsafe {
        libc::setsid();
    }
    let spec: Spec<serde::de::IgnoredAny> = read_spec(spec_path)?;
    super::stop_on_signals().context("installing the stop handler")?;
    let me = super::current_process();
    let mut agent = None;
    let mut beats = None;
    let result = super::run(
        &spec.run,
        Duration::from_millis(200),
        |s| {
            agent = Some(*s);
            // After the spawn: no thread of ours is about at the fork.
            beats = spec
                .heartbeat
                .clone()
                .map(|b| Heartbeats::start(b, spec.job_id, spec.epoch, beat_fn));
            write_json_atomic(
                &spec.started_path,
                &Started {
                    job_id: spec.job_id,
                    epoch: spec.epoch,
                    supervisor: me,
                    agent: *s,
                    boot_id: super::boot_id(),
                    at_ms: crate::clock::now_ms(),
                },
            )
        },
        || Ok(()),
    );
    drop(beats);
    failpoint("supervisor.after_agent_exit");
    let exited = match result {
        Ok(outcome) => Exited::of(spec.job_id, spec.epoch, &outcome, agent),
        Err(e) => Exited {
            job_id: spec.job_id,
            epoch: spec.epoch,
            exit: "not_started".into(),
            code: None,
            signal: None,
            timed_out: false,
            duration_ms: 0,
            agent,
            error: Some(format!("{e:#}")),
        },
    };
    write_json_atomic(&spec.exit_path, &exited)?;
    failpoint("supervisor.after_exit_record");
    Ok(())
}

/// The supervisor's heartbeat thread ([`Beat`]); dropping it stops the
/// thread and waits for it (at most one write in flight).
struct Heartbeats {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    /// Starts heartbeating claim `epoch` of job `job_id` as `beat` says,
    /// each beat written by `beat_fn`.
    fn start(beat: Beat, job_id: i64, epoch: i64, beat_fn: BeatFn) -> Heartbeats {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat_loop(&beat, job_id, epoch, &stopped, beat_fn))
            .map_err(|e| tracing::warn!(target: "worker", job = job_id, epoch, error = %e, "cannot start the heartbeat thread; the run goes on without it"))
            .ok();
        Heartbeats {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes one heartbeat of a supervisor: `(what the spec says of it, job
/// id, epoch)` → whether the claim is still current (`Ok(false)`: a stale
/// claim, nothing written). The store is a floor
/// above this module, so the caller (`orch run-agent`) hands the writer
/// in: `worker::supervisor_heartbeat`.
pub type BeatFn = fn(&Beat, i64, i64) -> anyhow::Result<bool>;

/// Every `beat.every_ms` until `stopped` fires (or its sender is gone):
/// refreshes the heartbeat of claim `epoch` of job `job_id`. A claim no
/// longer current ends the loop, said once in the log; a database error
/// is logged (once per run of failures) and the next beat tries again.
fn heartbeat_loop(
    beat: &Beat,
    job_id: i64,
    epoch: i64,
    stopped: &std::sync::mpsc::Receiver<()>,
    beat_fn: BeatFn,
) {
    use std::sync::mpsc::RecvTimeoutError;
    use tracing::{info, warn};
    let every = Duration::from_millis(beat.every_ms.max(100));
    let mut failing = false;
    loop {
        match stopped.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match beat_fn(beat, job_id, epoch) {
            Ok(true) => {
                if failing {
                    info!(target: "worker", job = job_id, epoch, "heartbeat written again");
                }
                failing = false;
            }
            Ok(false) => {
                warn!(target: "worker", job = job_id, epoch, "the job no longer runs this claim: this supervisor writes no more heartbeats");
                return;
            }
            Err(e) => {
                if !failing {
                    warn!(target: "worker", job = job_id, epoch, error = %format!("{e:#}"), "cannot write the job's heartbeat; the run goes on, the next beat tries again");
                }
                failing = true;
            }
        }
    }
}

/// Stops a detached run: its supervisor's group (after checking the
/// supervisor is still the process `handle` names), then the agent's
/// group (`agent`, pid and start time as recorded: only a group that is
/// still ours or whose leader is gone). TERM, `grace`, KILL each.
/// Returns whether anything was signalled.
pub fn stop(handle: Option<&str>, agent: Option<Spawned>, grace: Duration) -> bool {
    let mut any = false;
    if let Some(h) = handle.and_then(Handle::parse).filter(Handle::alive) {
        any |= super::kill_group(h.supervisor.pid, grace);
    }
    if let Some(a) = agent {
        let ours_or_free = super::proc_start_time(a.pid).is_none_or(|start| start == a.start_time);
        if ours_or_free && super::group_exists(a.pid) {
            any |= super::kill_group(a.pid, grace);
        }
    }
    any
}

/// [`stop`], and for a run in a transient unit (`runner` `systemd`) its
/// unit `orch-run-job<N>-e<E>.service` too: the manager signals its whole
/// cgroup, which holds every process of the run, also one that left both
/// groups or that this process's `/proc` does not show. Returns whether
/// anything was signalled or stopped; a unit that could not be stopped is
/// logged.
pub fn stop_by_runner(
    job_id: i64,
    epoch: i64,
    runner: Option<&str>,
    handle: Option<&str>,
    agent: Option<Spawned>,
    grace: Duration,
) -> bool {
    use super::systemd::{self, UnitName};
    let mut any = stop(handle, agent, grace);
    if runner == Some("systemd") {
        if let Ok(unit) = UnitName::for_run(job_id, epoch) {
            match systemd::stop_unit(&unit, grace) {
                Ok(was) => any |= was,
                Err(e) => {
                    tracing::warn!(target: "worker", job = job_id, epoch, unit = %unit, error = %format!("{e:#}"), "could not stop the run's unit")
                }
            }
        }
    }
    any
}

/// Writes `value` as JSON to `path` atomically: a temporary file in the
/// same folder (mode 0600), fsynced, renamed over `path`, the folder
/// fsynced.
///
/// Errors: any of those steps.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(value)?)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Reads a record or spec at `path` strictly (at most 4 MiB, no symlink).
fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = crate::untrusted::open_regular(path)
        .and_then(|f| crate::untrusted::read_bounded(f, MAX_RECORD_BYTES, false))
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The last line of a runner log, for an error.
fn tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().last().map(str::to_string))
        .unwrap_or_else(|| "(its log is empty)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Job 1 running at claim epoch 2 in a fresh database at `path`, its
    /// heartbeat at 5 ms.
    fn job_at_epoch_2(path: &Path) {
        let db = crate::db::Db::open(path, 5000).unwrap();
        db.conn()
            .execute_batch(
                "INSERT INTO projects (name, tracker, forge, default_branch, clone_url, synced_at_ms) \
                 VALUES ('p', 'local', 'local', 'main', '/r', 1);
                 INSERT INTO tasks (project, tracker_issue_id, sequence, title, stage, version, branch, \
                 worktree, created_at_ms, updated_at_ms) VALUES ('p', '1', 1, 't', 'analysis', 1, 'b', '/w', 1, 1);
                 INSERT INTO jobs (id, task_id, stage, role, task_version, status, available_at_ms, \
                 created_at_ms, heartbeat_at_ms, epoch) VALUES (1, 1, 'analysis', 'analyst', 1, 'running', \
                 1, 1, 5, 2);",
            )
            .unwrap();
    }

    #[test]
    fn a_supervisor_heartbeats_only_its_own_claim_and_a_lost_database_stops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        job_at_epoch_2(&path);
        let beat = |db: &Path| Beat {
            db: db.to_string_lossy().into_owned(),
            busy_timeout_ms: 1000,
            every_ms: 100,
        };
        let heartbeat = || -> i64 {
            let db = crate::db::Db::open_existing(&path, 1000).unwrap();
            db.job(1).unwrap().unwrap().heartbeat_at_ms.unwrap()
        };
        // A stale claim (epoch 1): its first beat writes nothing and ends
        // the loop by itself.
        let (_stop, stopped) = std::sync::mpsc::channel();
        heartbeat_loop(
            &beat(&path),
            1,
            1,
            &stopped,
            crate::worker::supervisor_heartbeat,
        );
        assert_eq!(heartbeat(), 5);
        // The current claim: beats until stopped.
        let b = beat(&path);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            heartbeat_loop(&b, 1, 2, &stopped, crate::worker::supervisor_heartbeat)
        });
        std::thread::sleep(Duration::from_millis(350));
        drop(stop);
        t.join().unwrap();
        assert!(heartbeat() > 5);
        // No database there: it goes on beating (and failing) until stopped.
        let b = beat(&dir.path().join("gone.db"));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            heartbeat_loop(&b, 1, 2, &stopped, crate::worker::supervisor_heartbeat)
        });
        std::thread::sleep(Duration::from_millis(350));
        assert!(!t.is_finished());
        drop(stop);
        t.join().unwrap();
        assert!(!dir.path().join("gone.db").exists(), "nothing created");
    }

    #[test]
    fn a_handle_round_trips_and_junk_is_no_handle() {
        let s = Started {
            job_id: 3,
            epoch: 2,
            supervisor: Spawned {
                pid: 4242,
                start_time: 99,
            },
            agent: Spawned {
                pid: 4243,
                start_time: 100,
            },
            boot_id: "abc-def".into(),
            at_ms: 1,
        };
        let h = Handle::parse(&s.handle()).unwrap();
        assert_eq!(h.supervisor, s.supervisor);
        assert_eq!(h.boot_id, "abc-def");
        for junk in ["", "1:2:x", "x:2:b", "5", "5:x:b"] {
            assert_eq!(Handle::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_run_in_a_unit_is_judged_by_its_exit_record_or_its_unit_never_by_a_pid() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), 7, 2);
        // A supervisor that is gone: a child already reaped.
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let dead = format!("{pid}:1:{}", super::super::boot_id());
        match state_by_runner(&paths, 7, 2, Some("supervisor"), Some(&dead)).unwrap() {
            State::Gone(why) => assert!(why.contains("supervisor pid"), "{why}"),
            other => panic!("a dead supervisor is gone: {other:?}"),
        }
        // The same dead pid says nothing of a run in a unit: only its
        // unit (absent here, or no manager to ask) does.
        match state_by_runner(&paths, 7, 2, Some("systemd"), Some(&dead)).unwrap() {
            State::Gone(why) => assert!(why.contains("orch-run-job7-e2.service"), "{why}"),
            State::Running => {}
            State::Exited(e) => panic!("no exit record was written: {e:?}"),
        }
        let o = RunOutcome {
            exit: ExitKind::Code(0),
            duration_ms: 5,
        };
        write_json_atomic(&paths.exit, &Exited::of(7, 2, &o, None)).unwrap();
        for runner in ["systemd", "supervisor"] {
            match state_by_runner(&paths, 7, 2, Some(runner), Some(&dead)).unwrap() {
                State::Exited(e) => assert_eq!(e.outcome().unwrap(), o),
                other => panic!("{runner}: an exit record is the end: {other:?}"),
            }
        }
    }

    #[test]
    fn an_exit_record_reads_back_as_the_outcome_and_unknown_words_are_errors() {
        let o = RunOutcome {
            exit: ExitKind::Signal(9),
            duration_ms: 5,
        };
        let e = Exited::of(1, 1, &o, None);
        assert_eq!(e.outcome().unwrap(), o);
        let t = Exited::of(
            1,
            1,
            &RunOutcome {
                exit: ExitKind::TimedOut,
                duration_ms: 5,
            },
            None,
        );
        assert!(t.timed_out);
        assert_eq!(t.outcome().unwrap().exit, ExitKind::TimedOut);
        let bad = Exited {
            exit: "vanished".into(),
            ..e
        };
        assert!(bad.outcome().is_err());
    }

    #[test]
    fn a_spec_with_an_unknown_field_or_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), 1, 1);
        let run = RunSpec {
            argv: vec!["true".into()],
            cwd: "/".into(),
            env: vec![],
            env_remove_prefix: None,
            stdin_path: None,
            log_path: dir.path().join("log"),
            timeout: Duration::from_secs(1),
            kill_grace: Duration::from_secs(1),
        };
        let spec = Spec::new(run.clone(), 1, 1, &paths, 7u8);
        write_json_atomic(&paths.spec, &spec).unwrap();
        let back: Spec<u8> = read_spec(&paths.spec).unwrap();
        assert_eq!(back.run, run);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&paths.spec).unwrap()).unwrap();
        v["extra"] = 1.into();
        std::fs::write(&paths.spec, v.to_string()).unwrap();
        assert!(read_spec::<u8>(&paths.spec).is_err());
        v.as_object_mut().unwrap().remove("extra");
        v["version"] = 99.into();
        std::fs::write(&paths.spec, v.to_string()).unwrap();
        assert!(read_spec::<u8>(&paths.spec).is_err());
    }
}
