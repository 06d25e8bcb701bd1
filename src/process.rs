//! Runs an agent (or any long child) in its own process group, with a
//! wall-clock timeout, and answers "is that process still the one we
//! started?" for the reaper.
//!
//! Why this exists: an agent CLI spawns tools, shells and language servers.
//! Killing only the pid we started would leave those running (holding the
//! worktree, burning tokens). So the child becomes a process-group leader
//! (pgid == pid) and every kill here targets the whole group. A pid alone
//! is not an identity (pids are reused), so callers store the pair
//! (pid, start time from `/proc/<pid>/stat`) plus the machine's boot id.
//!
//! A worker stopped by SIGTERM (`systemctl stop`) or SIGINT stops its
//! child's group the way a timeout does ([`stop_on_signals`],
//! [`ExitKind::Stopped`]) instead of dying and leaving it behind.
//!
//! Linux only (`/proc`, `prctl`).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod detached;
pub mod systemd;

/// How often the wait loops poll (`try_wait`, group membership).
const POLL: Duration = Duration::from_millis(50);

/// What to run and how (serializable: a detached run's spec carries it,
/// [`detached::Spec`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// `argv[0]` is the program (looked up in `PATH` if it has no slash);
    /// no shell is involved.
    pub argv: Vec<String>,
    /// Working directory of the child.
    pub cwd: PathBuf,
    /// Variables added on top of the inherited environment (after
    /// `env_remove_prefix` is applied, so these always win).
    pub env: Vec<(String, String)>,
    /// Inherited variables whose name starts with this prefix are removed
    /// before `env` is applied, e.g. `Some("ORCH_")` so orch's own secrets
    /// never reach an agent.
    pub env_remove_prefix: Option<String>,
    /// File opened as the child's stdin; `None` means `/dev/null`.
    pub stdin_path: Option<PathBuf>,
    /// The child's stdout and stderr both go to this file (created if
    /// missing, appended to otherwise; its directory is created too).
    pub log_path: PathBuf,
    /// Wall-clock limit for the whole run, measured from spawn.
    pub timeout: Duration,
    /// After the timeout: SIGTERM to the group, wait up to this long for it
    /// to empty, then SIGKILL to the group.
    pub kill_grace: Duration,
}

/// Identity of a started process: the pid and its start time, field 22 of
/// `/proc/<pid>/stat` (clock ticks since boot). The pair survives pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spawned {
    pub pid: i32,
    pub start_time: u64,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal (not by our timeout).
    Signal(i32),
    /// Killed by us because `RunSpec::timeout` passed.
    TimedOut,
    /// Stopped by us (SIGTERM, grace, SIGKILL to the group) because this
    /// process got this signal after [`stop_on_signals`].
    Stopped(i32),
}

/// The signal that asked this process to stop (0: none yet).
static STOP: AtomicUsize = AtomicUsize::new(0);

/// From now on SIGTERM and SIGINT no longer kill this process: they are
/// recorded, and [`run`] stops its child's group and returns
/// [`ExitKind::Stopped`]; the caller records why and then calls
/// [`die_by`]. For the commands that run agents (`work-once`, `tick`).
///
/// Errors: the handler cannot be installed (signal-hook).
pub fn stop_on_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register_usize(sig, &STOP, sig as usize)?;
    }
    Ok(())
}

/// The signal that asked this process to stop, if one came since
/// [`stop_on_signals`].
pub fn stop_signal() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

/// The signal's name (`SIGTERM`), or its number.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGHUP => "SIGHUP".into(),
        _ => format!("signal {sig}"),
    }
}

/// Ends this process by `sig` with its default action, as if the handler
/// had never been installed: systemd (and a shell) see a death by SIGTERM,
/// a clean stop. Returns only if the signal does not end the process.
pub fn die_by(sig: i32) {
    // SAFETY: signal(2) with SIG_DFL and raise(3) touch no memory of ours.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Result of [`run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    pub exit: ExitKind,
    /// Wall time from spawn until the leader was reaped, in milliseconds.
    pub duration_ms: i64,
}

impl RunOutcome {
    /// Shell-style exit code: `Code(c)` → c, `Signal(s)` → 128 + s,
    /// `TimedOut` → 124 (as timeout(1)).
    pub fn exit_code(&self) -> i32 {
        match self.exit {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
            ExitKind::TimedOut => 124,
            ExitKind::Stopped(s) => 128 + s,
        }
    }
}

/// Runs `spec` to completion.
///
/// Calls `on_spawn` once right after the spawn (the caller records the pid
/// in its database); if it returns `Err`, the group is SIGKILLed, the
/// leader reaped, and that error returned. Then waits, calling `on_tick`
/// roughly every `tick` (heartbeats); an `Err` from `on_tick` is logged with
/// `tracing::warn` and ignored. At `spec.timeout` the group gets SIGTERM,
/// then SIGKILL after `spec.kill_grace`, and the outcome is
/// [`ExitKind::TimedOut`]. When this process is asked to stop
/// ([`stop_on_signals`]), the group gets the same SIGTERM, grace, SIGKILL
/// and the outcome is [`ExitKind::Stopped`].
///
/// When the leader exits (or is killed at the timeout), whatever is still
/// in its process group gets SIGKILL: no grandchild survives the run. (A
/// grandchild that moved itself to another group or session escapes this;
/// agents are not expected to daemonize.) The pgid is the leader's pid; we
/// signal `-pgid` right after reaping the leader. Linux keeps a pid number
/// reserved while any process still uses it as its pgid, so the only
/// pid-reuse window is when the group is already empty *and* a new process
/// got that pid *and* made itself a group leader in those microseconds.
///
/// The child also gets `prctl(PR_SET_PDEATHSIG, SIGKILL)`: if this process
/// (more precisely, the thread calling `run`, which blocks here for the
/// child's whole life) dies, even by `kill -9`, the kernel kills the
/// leader. Its grandchildren are not covered; the reaper kills the group
/// from the recorded pid.
///
/// Errors: empty argv, the stdin or log file cannot be opened, the spawn
/// fails (program not found, bad cwd), `/proc/<pid>/stat` is unreadable,
/// `on_spawn` fails, or waiting on the child fails.
pub fn run(
    spec: &RunSpec,
    tick: Duration,
    on_spawn: impl FnOnce(&Spawned) -> anyhow::Result<()>,
    mut on_tick: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<RunOutcome> {
    let (mut child, pid, started) = spawn(spec, false, on_spawn)?;

    let mut last_tick = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                kill_now(&mut child, pid);
                return Err(anyhow::Error::new(e).context("waiting for child"));
            }
        }
        if started.elapsed() >= spec.timeout {
            break None;
        }
        if let Some(sig) = stop_signal() {
            tracing::warn!(
                pid,
                signal = %signal_name(sig),
                "asked to stop; stopping the process group"
            );
            terminate(&mut child, pid, spec.kill_grace)?;
            return Ok(RunOutcome {
                exit: ExitKind::Stopped(sig),
                duration_ms: started.elapsed().as_millis() as i64,
            });
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            if let Err(e) = on_tick() {
                tracing::warn!(pid, error = %format!("{e:#}"), "tick callback failed");
            }
        }
        std::thread::sleep(POLL);
    };

    let exit = match status {
        Some(status) => {
            // Leader reaped; clean up anything it left behind.
            signal_group(pid, libc::SIGKILL);
            exit_kind(status)
        }
        None => {
            tracing::warn!(
                pid,
                timeout_ms = spec.timeout.as_millis() as u64,
                "timed out; killing process group"
            );
            terminate(&mut child, pid, spec.kill_grace)?;
            ExitKind::TimedOut
        }
    };
    Ok(RunOutcome {
        exit,
        duration_ms: started.elapsed().as_millis() as i64,
    })
}

/// [`run`] for a child that speaks a protocol on its standard streams
/// (an Agent Client Protocol agent): its stdin and stdout are pipes handed
/// to `talk`, which runs on a thread of its own; stderr goes to the log;
/// `spec.stdin_path` is not used. Same process group, timeout, heartbeats
/// and "no survivor" as [`run`].
///
/// The run ends when the child exits, at the timeout (the outcome is
/// [`ExitKind::TimedOut`]), or when the child is still there
/// `spec.kill_grace` after `talk` returned (its stdin is closed by then):
/// its group gets SIGTERM, then SIGKILL after `spec.kill_grace`, and the
/// outcome says how it died. Killing the group closes the pipes, so a
/// `talk` blocked on them returns.
///
/// Returns `talk`'s value, or `None` when it did not return within
/// `spec.kill_grace` (at least a second) after the child was gone — a
/// process that left the group still holds the pipe; its thread is left
/// behind.
///
/// Errors: those of [`run`], and a thread that cannot be started.
pub fn run_piped<T: Send + 'static>(
    spec: &RunSpec,
    tick: Duration,
    on_spawn: impl FnOnce(&Spawned) -> anyhow::Result<()>,
    mut on_tick: impl FnMut() -> anyhow::Result<()>,
    talk: impl FnOnce(ChildStdin, ChildStdout) -> T + Send + 'static,
) -> anyhow::Result<(RunOutcome, Option<T>)> {
    let (mut child, pid, started) = spawn(spec, true, on_spawn)?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        kill_now(&mut child, pid);
        bail!("the child's stdin and stdout are not pipes");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    if let Err(e) = std::thread::Builder::new()
        .name(format!("talk-{pid}"))
        .spawn(move || {
            let _ = tx.send(talk(stdin, stdout));
        })
    {
        kill_now(&mut child, pid);
        return Err(anyhow::Error::new(e).context("starting the thread that talks to the child"));
    }

    let mut talked = None;
    let mut talk_ended: Option<Instant> = None;
    let mut last_tick = Instant::now();
    let exit = loop {
        if talked.is_none() {
            if let Ok(t) = rx.try_recv() {
                talked = Some(t);
                talk_ended = Some(Instant::now());
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                signal_group(pid, libc::SIGKILL);
                break exit_kind(status);
            }
            Ok(None) => {}
            Err(e) => {
                kill_now(&mut child, pid);
                return Err(anyhow::Error::new(e).context("waiting for child"));
            }
        }
        if started.elapsed() >= spec.timeout {
            tracing::warn!(
                pid,
                timeout_ms = spec.timeout.as_millis() as u64,
                "timed out; killing process group"
            );
            terminate(&mut child, pid, spec.kill_grace)?;
            break ExitKind::TimedOut;
        }
        if talk_ended.is_some_and(|t| t.elapsed() >= spec.kill_grace) {
            tracing::info!(
                pid,
                "the exchange ended and the child stayed; killing its group"
            );
            terminate(&mut child, pid, spec.kill_grace)?;
            let status = child.wait().context("waiting for killed child")?;
            break exit_kind(status);
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            if let Err(e) = on_tick() {
                tracing::warn!(pid, error = %format!("{e:#}"), "tick callback failed");
            }
        }
        std::thread::sleep(POLL);
    };
    if talked.is_none() {
        talked = rx
            .recv_timeout(spec.kill_grace.max(Duration::from_secs(1)))
            .ok();
    }
    Ok((
        RunOutcome {
            exit,
            duration_ms: started.elapsed().as_millis() as i64,
        },
        talked,
    ))
}

/// How an agent or the project's test command (code the agents may have
/// written; `sandbox` builds both confinements) is run: the one runner
/// interface. Every runner keeps the
/// contract of [`run`] (own process group, timeout, heartbeats, no
/// survivor); they differ in what the child can see. This is the seam where
/// `systemd-run` or a cluster scheduler plugs in later (DESIGN §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// The child runs as orch does, in its own process group ([`run`]).
    Group,
    /// The child runs under bubblewrap with [`Confinement`].
    Bwrap(Confinement),
}

/// What a bubblewrap-confined child sees: the whole filesystem read-only,
/// `/tmp` a private empty tmpfs, its own pid namespace (no other process,
/// so no `/proc/<pid>/environ` of orch), the network unchanged; then, in
/// this order, `hidden_dirs` replaced by empty tmpfs, `hidden_files` by
/// `/dev/null`, `readonly` bound back read-only, `writable` bound back
/// read-write, and last each `overlays` source bound read-write at its
/// destination (later binds win, so a writable path inside a hidden or
/// read-only one is reachable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    pub hidden_dirs: Vec<PathBuf>,
    pub hidden_files: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
    /// The child sees each source at its destination (e.g. a private
    /// copy of a folder over the original); bound last, in order.
    pub overlays: Vec<Bind>,
}

/// One bind of [`Confinement::overlays`]: `source` (a host path) seen at
/// `destination`, read-write or read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub writable: bool,
}

impl Bind {
    /// `source` read-write at `destination`.
    pub fn writable(source: PathBuf, destination: PathBuf) -> Bind {
        Bind {
            source,
            destination,
            writable: true,
        }
    }

    /// `source` read-only at `destination`.
    pub fn readonly(source: PathBuf, destination: PathBuf) -> Bind {
        Bind {
            source,
            destination,
            writable: false,
        }
    }
}

impl Confinement {
    /// The `bwrap` argv that runs `spec.argv` confined, in `spec.cwd`.
    /// Paths that do not exist are left out (bwrap cannot bind them).
    pub fn wrap(&self, spec: &RunSpec) -> Vec<String> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut a: Vec<String> = [
            "bwrap",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
        ]
        .map(String::from)
        .to_vec();
        for d in self.hidden_dirs.iter().filter(|d| d.is_dir()) {
            a.extend(["--tmpfs".into(), s(d)]);
        }
        for f in self.hidden_files.iter().filter(|f| f.exists()) {
            a.extend(["--ro-bind".into(), "/dev/null".into(), s(f)]);
        }
        for p in self.readonly.iter().filter(|p| p.exists()) {
            a.extend(["--ro-bind".into(), s(p), s(p)]);
        }
        // The program itself stays runnable wherever it lives, e.g. a
        // checkout under the host's /tmp, which the private /tmp hides.
        if let Some(program) = spec
            .argv
            .first()
            .map(Path::new)
            .filter(|p| p.is_absolute() && p.is_file())
        {
            a.extend(["--ro-bind".into(), s(program), s(program)]);
        }
        for p in self.writable.iter().filter(|p| p.exists()) {
            a.extend(["--bind".into(), s(p), s(p)]);
        }
        // A destination inside a hidden folder is made by bwrap.
        for b in self.overlays.iter().filter(|b| b.source.exists()) {
            let op = if b.writable { "--bind" } else { "--ro-bind" };
            a.extend([op.into(), s(&b.source), s(&b.destination)]);
        }
        a.extend([
            "--setenv".into(),
            "TMPDIR".into(),
            "/tmp".into(),
            "--chdir".into(),
            s(&spec.cwd),
            "--".into(),
        ]);
        a.extend(spec.argv.iter().cloned());
        a
    }
}

/// Whether bubblewrap works on this machine: `bwrap` is installed and a
/// probe run with the options [`Confinement::wrap`] uses exits 0 (user
/// namespaces may be disabled in a container). Asked once per process;
/// `Err` says why not.
pub fn bwrap_usable() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let probe = RunSpec {
                argv: vec!["true".into()],
                cwd: PathBuf::from("/"),
                env: vec![],
                env_remove_prefix: None,
                stdin_path: None,
                log_path: PathBuf::new(),
                timeout: Duration::from_secs(10),
                kill_grace: Duration::from_secs(1),
            };
            let argv = Confinement::default().wrap(&probe);
            match Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!(
                    "bwrap probe failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!("bwrap cannot be started: {e}")),
            }
        })
        .clone()
}

impl Runner {
    /// Runs `spec` as [`run`] does, confined as this runner says.
    ///
    /// Errors: those of [`run`].
    pub fn run(
        &self,
        spec: &RunSpec,
        tick: Duration,
        on_spawn: impl FnOnce(&Spawned) -> anyhow::Result<()>,
        on_tick: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<RunOutcome> {
        run(&self.wrapped(spec)?, tick, on_spawn, on_tick)
    }

    /// Runs `spec` as [`run_piped`] does, confined as this runner says.
    ///
    /// Errors: those of [`run_piped`].
    pub fn run_piped<T: Send + 'static>(
        &self,
        spec: &RunSpec,
        tick: Duration,
        on_spawn: impl FnOnce(&Spawned) -> anyhow::Result<()>,
        on_tick: impl FnMut() -> anyhow::Result<()>,
        talk: impl FnOnce(ChildStdin, ChildStdout) -> T + Send + 'static,
    ) -> anyhow::Result<(RunOutcome, Option<T>)> {
        run_piped(&self.wrapped(spec)?, tick, on_spawn, on_tick, talk)
    }

    /// `spec` as this runner starts it: under bubblewrap, its argv wrapped
    /// (what a detached run's supervisor runs).
    ///
    /// Errors: under bubblewrap, a program that is not an executable file.
    pub fn wrapped(&self, spec: &RunSpec) -> anyhow::Result<RunSpec> {
        match self {
            Runner::Group => Ok(spec.clone()),
            Runner::Bwrap(c) => {
                // bwrap itself starts; a missing program would only show
                // as its exit 1. Refuse it here, as a spawn would.
                let program = spec.argv.first().map(String::as_str).unwrap_or_default();
                if !program.is_empty() && !runnable(program, &spec.cwd) {
                    bail!(
                        "spawning {:?} in {}: {program}: no such executable file",
                        spec.argv,
                        spec.cwd.display()
                    );
                }
                Ok(RunSpec {
                    argv: c.wrap(spec),
                    ..spec.clone()
                })
            }
        }
    }

    /// `"bwrap"` or `"none"`, as `ORCH_AGENT_SANDBOX` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Runner::Group => "none",
            Runner::Bwrap(_) => "bwrap",
        }
    }
}

/// Whether `program` names an executable file: a path with a slash
/// relative to `cwd`, else a name looked up in `PATH` (as `execvp` does).
fn runnable(program: &str, cwd: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return is_exec(&cwd.join(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| is_exec(&d.join(program)))
}

/// Builds the command for `spec`; the child's environment is `inherited`
/// minus `env_remove_prefix` plus `spec.env`. `piped`: stdin and stdout
/// are pipes (for [`run_piped`]) and only stderr goes to the log.
fn command(
    spec: &RunSpec,
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    piped: bool,
) -> anyhow::Result<Command> {
    let Some((program, args)) = spec.argv.split_first() else {
        bail!("empty argv");
    };
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(&spec.cwd).env_clear();
    for (key, value) in inherited {
        let drop = spec
            .env_remove_prefix
            .as_deref()
            .is_some_and(|p| key.as_encoded_bytes().starts_with(p.as_bytes()));
        if !drop {
            cmd.env(key, value);
        }
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));

    let stdin = match &spec.stdin_path {
        _ if piped => Stdio::piped(),
        Some(path) => Stdio::from(
            File::open(path).with_context(|| format!("opening stdin file {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating log directory {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .with_context(|| format!("opening log file {}", spec.log_path.display()))?;
    if piped {
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(log);
    } else {
        let log2 = log.try_clone().context("duplicating log file handle")?;
        cmd.stdin(stdin).stdout(log).stderr(log2);
    }

    cmd.process_group(0);
    die_with_parent(&mut cmd);
    Ok(cmd)
}

/// Makes the child of `cmd` die with SIGKILL when this process (more
/// precisely the spawning thread) dies, even by `kill -9`
/// (`prctl(PR_SET_PDEATHSIG)`), and refuses to start it when we died
/// between fork and exec. Used for agents and for git: a crashed orch
/// leaves no child working on a worktree whose lock it no longer holds.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec, so it may
    // only call async-signal-safe functions and must not allocate: prctl(2)
    // and getppid(2) are plain syscalls, and `io::Error::last_os_error` /
    // `from_raw_os_error` only wrap an integer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died between fork and prctl: the signal will never
            // come, so do not start an orphan.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Spawns `spec` (its stdin and stdout piped when `piped`), reads the
/// child's identity and hands it to `on_spawn`: the child, its pid and
/// when it started. The child is killed when its identity cannot be read
/// or `on_spawn` fails.
fn spawn(
    spec: &RunSpec,
    piped: bool,
    on_spawn: impl FnOnce(&Spawned) -> anyhow::Result<()>,
) -> anyhow::Result<(Child, i32, Instant)> {
    let mut cmd = command(spec, std::env::vars_os(), piped)?;
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {:?} in {}", spec.argv, spec.cwd.display()))?;
    // pids fit in i32 (pid_max <= 2^22).
    let pid = child.id() as i32;
    // The child is not reaped yet, so /proc/<pid> exists (maybe as a zombie).
    let spawned = match proc_start_time(pid) {
        Some(start_time) => Spawned { pid, start_time },
        None => {
            kill_now(&mut child, pid);
            bail!("cannot read /proc/{pid}/stat of the process just spawned");
        }
    };
    if let Err(e) = on_spawn(&spawned) {
        kill_now(&mut child, pid);
        return Err(e);
    }
    Ok((child, pid, started))
}

fn exit_kind(status: ExitStatus) -> ExitKind {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Code(code),
        (None, Some(sig)) => ExitKind::Signal(sig),
        (None, None) => ExitKind::Code(-1), // not reachable on Unix
    }
}

/// SIGKILL the group of our own child `child` (pgid `pgid`) and reap it.
fn kill_now(child: &mut Child, pgid: i32) {
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait();
}

/// [`kill_group`] for our own child: also reaps the leader while waiting
/// (an unreaped zombie leader would keep the group non-empty).
fn terminate(child: &mut Child, pgid: i32, grace: Duration) -> anyhow::Result<()> {
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut reaped = false;
    while Instant::now() < deadline {
        if !reaped {
            reaped = child.try_wait().context("waiting for child")?.is_some();
        }
        if reaped && !group_exists(pgid) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    signal_group(pgid, libc::SIGKILL);
    if !reaped {
        child.wait().context("waiting for killed child")?;
    }
    Ok(())
}

/// Sends `sig` to process group `pgid`; true when it was delivered to at
/// least one process. Refuses pgid <= 1 (`kill(-1)` means "every process")
/// and our own group.
fn signal_group(pgid: i32, sig: libc::c_int) -> bool {
    // SAFETY: getpgrp has no preconditions.
    if pgid <= 1 || pgid == unsafe { libc::getpgrp() } {
        tracing::warn!(pgid, "refusing to signal process group");
        return false;
    }
    // SAFETY: kill(2) with a negative pid signals a group; no memory is
    // involved. pgid > 1 was checked above.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Terminates process group `pgid`: SIGTERM, poll (every 50 ms) until the
/// group is empty or `grace` passed, then SIGKILL.
///
/// Returns whether anything was signalled (false when the group did not
/// exist; ESRCH is not an error). Refuses pgid <= 1 and the caller's own
/// group (returns false). The caller must make sure the pgid is still the
/// process it means (see [`is_alive`]). A zombie member that nobody reaps
/// keeps the group non-empty, so this may wait the full `grace`.
pub fn kill_group(pgid: i32, grace: Duration) -> bool {
    if !signal_group(pgid, libc::SIGTERM) {
        return false;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && group_exists(pgid) {
        std::thread::sleep(POLL);
    }
    signal_group(pgid, libc::SIGKILL);
    true
}

/// Parses a `/proc/<pid>/stat` line into (state, start time in clock ticks
/// since boot). Fields are read after the last `)`, since the command name
/// (field 2) may contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace(); // starts at field 3
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start_time))
}

fn read_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Start time of `pid`: field 22 of `/proc/<pid>/stat`, in clock ticks
/// since boot. `None` if there is no such process (or it is unreadable).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|(_, start)| start)
}

/// True when process `pid` exists, is not a zombie (state `Z`/`X` counts as
/// dead), and started at `start_time` (so a reused pid is not mistaken for
/// the original).
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    matches!(read_stat(pid), Some((state, start)) if start == start_time && !matches!(state, 'Z' | 'X'))
}

/// This machine's boot id (`/proc/sys/kernel/random/boot_id`, trimmed),
/// the worker host identity: after a reboot, recorded pids mean nothing.
/// Returns `"unknown"` (with a warning) if the file is unreadable.
pub fn boot_id() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read boot id");
            "unknown".to_string()
        }
    }
}

/// This machine's host id (`ORCH_HOST_ID`; default the first line of
/// `/etc/machine-id`, else the boot id, [`boot_id`]): recorded on every
/// claim (`jobs.host_id`). The reaper judges a job claimed under another
/// host id by its heartbeat's age on the wall clock alone and never kills
/// processes there (DESIGN §6); two host ids on one machine are how a test
/// plays a partition. An empty value counts as unset.
pub fn host_id() -> String {
    if let Some(id) = std::env::var("ORCH_HOST_ID")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    {
        return id;
    }
    static MACHINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            std::fs::read_to_string("/etc/machine-id")
                .ok()
                .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(boot_id)
        })
        .clone()
}

/// This process's identity as a job's worker: (host id, pid, process
/// start time), as recorded on a claimed job (`worker_host`, `worker_pid`,
/// `worker_start_time`; the claim records [`boot_id`] beside them in
/// `worker_boot`).
pub fn identity() -> (String, i64, i64) {
    let me = current_process();
    (host_id(), me.pid as i64, me.start_time as i64)
}

/// (pid, start time) of the current process; start time 0 if `/proc` is
/// unreadable.
pub fn current_process() -> Spawned {
    let pid = std::process::id() as i32;
    Spawned {
        pid,
        start_time: proc_start_time(pid).unwrap_or(0),
    }
}

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): its
/// `/proc/<pid>/environ`, `mem` and `fd/` become root's, so a process of
/// the same user — a test command or agent run unconfined, or one that
/// escaped its sandbox — cannot read orch's secrets there or attach to it.
/// No core dumps either. Children are not affected (`execve` resets it).
///
/// Errors: the `prctl` call fails (it does not on Linux).
pub fn make_undumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no
    // memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Does any process (zombies included) exist in process group `pgid`?
/// (`kill(-pgid, 0)` succeeds or fails with EPERM.) False for pgid <= 0.
pub fn group_exists(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks existence/permission; nothing is sent.
    let rc = unsafe { libc::kill(-pgid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn bwrap_argv_hides_then_binds_back_and_skips_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("state/wt")).unwrap();
        std::fs::write(d.join("secret.env"), "x").unwrap();
        let c = Confinement {
            hidden_dirs: vec![d.join("state")],
            hidden_files: vec![d.join("secret.env"), d.join("missing.env")],
            readonly: vec![],
            writable: vec![d.join("state/wt"), d.join("nowhere")],
            overlays: vec![
                Bind::writable(d.join("state/view"), d.join("state/wt")),
                Bind::writable(d.join("nowhere"), d.join("state/wt")),
                Bind::readonly(d.join("state/wt"), d.join("state/view/base")),
            ],
        };
        std::fs::create_dir_all(d.join("state/view")).unwrap();
        let mut sp = spec(d, "true");
        sp.cwd = d.join("state/wt");
        let argv = c.wrap(&sp);
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let at = |needle: &[String]| {
            argv.windows(needle.len())
                .position(|w| w == needle)
                .unwrap_or_else(|| panic!("{needle:?} not in {argv:?}"))
        };
        let hide = at(&["--tmpfs".into(), s(&d.join("state"))]);
        let null = at(&[
            "--ro-bind".into(),
            "/dev/null".into(),
            s(&d.join("secret.env")),
        ]);
        let back = at(&[
            "--bind".into(),
            s(&d.join("state/wt")),
            s(&d.join("state/wt")),
        ]);
        let over = at(&[
            "--bind".into(),
            s(&d.join("state/view")),
            s(&d.join("state/wt")),
        ]);
        let ro = at(&[
            "--ro-bind".into(),
            s(&d.join("state/wt")),
            s(&d.join("state/view/base")),
        ]);
        assert!(
            hide < back && null < back && back < over && over < ro,
            "{argv:?}"
        );
        assert!(!argv
            .iter()
            .any(|a| a.contains("missing.env") || a.contains("nowhere")));
        let dashdash = argv.iter().position(|a| a == "--").unwrap();
        assert_eq!(argv[dashdash + 1..], ["/bin/sh", "-c", "true"]);
        assert!(argv.contains(&"--unshare-pid".to_string()));
    }

    #[test]
    fn the_bwrap_runner_runs_confined_or_the_probe_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        if let Err(why) = bwrap_usable() {
            eprintln!("SKIPPED: bubblewrap does not work here: {why}");
            return;
        }
        let d = dir.path();
        std::fs::create_dir_all(d.join("work")).unwrap();
        std::fs::write(d.join("secret"), "hunter2").unwrap();
        let runner = Runner::Bwrap(Confinement {
            hidden_files: vec![d.join("secret")],
            writable: vec![d.join("work"), d.join("logs")],
            ..Confinement::default()
        });
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let mut sp = spec(
            d,
            &format!(
                "cat {0}/secret; echo made > {0}/work/out; echo no > {0}/outside; echo pid $$",
                d.display()
            ),
        );
        sp.cwd = d.join("work");
        let out = runner
            .run(&sp, Duration::from_millis(50), |_| Ok(()), || Ok(()))
            .unwrap();
        assert_eq!(
            out.exit,
            ExitKind::Code(0),
            "{}",
            std::fs::read_to_string(&sp.log_path).unwrap_or_default()
        );
        let log = std::fs::read_to_string(&sp.log_path).unwrap();
        assert!(!log.contains("hunter2"), "{log}");
        assert_eq!(
            std::fs::read_to_string(d.join("work/out")).unwrap(),
            "made\n"
        );
        assert!(!d.join("outside").exists(), "{log}");
    }

    #[test]
    fn the_bwrap_runner_refuses_a_missing_program_as_a_spawn_would() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Runner::Bwrap(Confinement::default());
        for program in [
            "/nonexistent/run-tests",
            "./run-tests",
            "no-such-program-here",
        ] {
            let mut sp = spec(dir.path(), "");
            sp.argv = vec![program.into()];
            let err = runner
                .run(&sp, Duration::from_millis(50), |_| Ok(()), || Ok(()))
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("no such executable file"),
                "{err:#}"
            );
        }
        assert!(runnable("sh", dir.path()));
    }

    /// A checkout under the host's `/tmp` (CI may clone there): the agent
    /// program stays runnable though the sandbox's `/tmp` is private.
    #[test]
    fn a_program_under_the_host_tmp_runs_confined() {
        if let Err(why) = bwrap_usable() {
            eprintln!("SKIPPED: bubblewrap does not work here: {why}");
            return;
        }
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let program = d.join("agent.sh");
        std::fs::write(&program, "#!/bin/sh\necho ran confined\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = Runner::Bwrap(Confinement {
            writable: vec![d.join("logs")],
            ..Confinement::default()
        });
        let mut sp = spec(d, "");
        sp.argv = vec![program.to_string_lossy().into_owned()];
        sp.cwd = PathBuf::from("/");
        let out = runner
            .run(&sp, Duration::from_millis(50), |_| Ok(()), || Ok(()))
            .unwrap();
        let log = std::fs::read_to_string(&sp.log_path).unwrap_or_default();
        assert_eq!(out.exit, ExitKind::Code(0), "{log}");
        assert!(log.contains("ran confined"), "{log}");
    }

    fn spec(dir: &Path, script: &str) -> RunSpec {
        RunSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            cwd: dir.to_path_buf(),
            env: vec![],
            env_remove_prefix: None,
            stdin_path: None,
            log_path: dir.join("logs/run.log"),
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_millis(300),
        }
    }

    fn run_quiet(spec: &RunSpec) -> RunOutcome {
        run(spec, Duration::from_secs(1), |_| Ok(()), || Ok(())).unwrap()
    }

    /// Gone or a zombie (the test's init may not reap orphans promptly).
    fn dead(pid: i32) -> bool {
        !matches!(read_stat(pid), Some((s, _)) if !matches!(s, 'Z' | 'X'))
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn read_pid(path: &Path) -> i32 {
        let mut pid = None;
        wait_until("pid file", || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        });
        pid.unwrap()
    }

    #[test]
    fn records_exit_code_and_logs_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "echo to-out; echo to-err >&2; exit 7");
        let mut seen = None;
        let out = run(
            &s,
            Duration::from_secs(1),
            |sp| {
                seen = Some(*sp);
                Ok(())
            },
            || Ok(()),
        )
        .unwrap();
        assert_eq!(out.exit, ExitKind::Code(7));
        assert_eq!(out.exit_code(), 7);
        let sp = seen.unwrap();
        assert!(sp.pid > 0 && sp.start_time > 0);
        let log = std::fs::read_to_string(&s.log_path).unwrap();
        assert!(log.contains("to-out") && log.contains("to-err"), "{log}");
    }

    #[test]
    fn signal_exit_and_exit_code_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_quiet(&spec(dir.path(), "kill -9 $$"));
        assert_eq!(out.exit, ExitKind::Signal(9));
        assert_eq!(out.exit_code(), 137);
        let t = RunOutcome {
            exit: ExitKind::TimedOut,
            duration_ms: 0,
        };
        assert_eq!(t.exit_code(), 124);
    }

    #[test]
    fn stdin_file_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), "hello prompt\n").unwrap();
        let mut s = spec(dir.path(), "read line; echo \"got $line\"");
        s.stdin_path = Some(dir.path().join("in.txt"));
        assert_eq!(run_quiet(&s).exit, ExitKind::Code(0));
        let log = std::fs::read_to_string(&s.log_path).unwrap();
        assert!(log.contains("got hello prompt"), "{log}");
    }

    #[test]
    fn env_prefix_removed_before_added_vars() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(
            dir.path(),
            "echo \"secret=${ORCH_SECRET_TOKEN-unset} task=${ORCH_TASK_ID-unset} keep=${KEEP_ME-unset}\"",
        );
        s.env_remove_prefix = Some("ORCH_".into());
        s.env = vec![("ORCH_TASK_ID".into(), "T-1".into())];
        let inherited = [
            ("ORCH_SECRET_TOKEN", "hunter2"),
            ("ORCH_TASK_ID", "stale"),
            ("KEEP_ME", "yes"),
            ("PATH", "/usr/bin:/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let status = command(&s, inherited, false).unwrap().status().unwrap();
        assert!(status.success());
        let log = std::fs::read_to_string(&s.log_path).unwrap();
        assert_eq!(log.trim(), "secret=unset task=T-1 keep=yes");
    }

    #[test]
    fn timeout_kills_leader_and_grandchild() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "sleep 300 & echo $! > child.pid; sleep 300");
        s.timeout = Duration::from_secs(1);
        let mut leader = None;
        let out = run(
            &s,
            Duration::from_millis(10),
            |sp| {
                leader = Some(*sp);
                Ok(())
            },
            || Ok(()),
        )
        .unwrap();
        assert_eq!(out.exit, ExitKind::TimedOut);
        assert!(out.duration_ms >= 1000, "{out:?}");
        let leader = leader.unwrap();
        assert!(!is_alive(leader.pid, leader.start_time));
        let child = read_pid(&dir.path().join("child.pid"));
        wait_until("grandchild dead", || dead(child));
    }

    #[test]
    fn leftover_background_child_is_killed_after_exit() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "sleep 300 & echo $! > child.pid; exit 0");
        assert_eq!(run_quiet(&s).exit, ExitKind::Code(0));
        let child = read_pid(&dir.path().join("child.pid"));
        wait_until("background child dead", || dead(child));
    }

    #[test]
    fn on_spawn_error_kills_and_returns_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "sleep 300");
        let mut pid = 0;
        let err = run(
            &s,
            Duration::from_secs(1),
            |sp| {
                pid = sp.pid;
                anyhow::bail!("db said no")
            },
            || Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("db said no"));
        wait_until("leader dead", || dead(pid));
    }

    #[test]
    fn on_tick_is_called_and_errors_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "sleep 0.3");
        let mut ticks = 0;
        let out = run(
            &s,
            Duration::from_millis(50),
            |_| Ok(()),
            || {
                ticks += 1;
                anyhow::bail!("heartbeat failed")
            },
        )
        .unwrap();
        assert_eq!(out.exit, ExitKind::Code(0));
        assert!(ticks >= 2, "ticks = {ticks}");
    }

    #[test]
    fn spawn_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "");
        s.argv = vec![];
        assert!(run_quiet_err(&s).contains("empty argv"));
        s.argv = vec!["/nonexistent/agent".into()];
        assert!(run_quiet_err(&s).contains("/nonexistent/agent"));
    }

    #[test]
    fn run_piped_talks_to_the_child_and_ends_with_it() {
        use std::io::{BufRead as _, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "echo to-err >&2; cat");
        s.stdin_path = Some(dir.path().join("never-opened"));
        let (out, talked) = run_piped(
            &s,
            Duration::from_millis(50),
            |_| Ok(()),
            || Ok(()),
            |mut stdin, stdout| {
                stdin.write_all(b"ping\n").unwrap();
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .unwrap();
                line
            },
        )
        .unwrap();
        assert_eq!(talked.as_deref(), Some("ping\n"));
        assert_eq!(out.exit, ExitKind::Code(0));
        let log = std::fs::read_to_string(&s.log_path).unwrap();
        assert_eq!(log, "to-err\n", "stdout is the pipe, stderr the log");
    }

    #[test]
    fn run_piped_kills_a_child_that_stays_after_the_talk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(
            dir.path(),
            "trap '' TERM; sleep 300 & echo $! > child.pid; sleep 300",
        );
        s.timeout = Duration::from_secs(60);
        let (out, talked) = run_piped(
            &s,
            Duration::from_millis(50),
            |_| Ok(()),
            || Ok(()),
            |_stdin, _stdout| 7,
        )
        .unwrap();
        assert_eq!(talked, Some(7));
        assert_eq!(out.exit, ExitKind::Signal(libc::SIGKILL));
        assert!(out.duration_ms < 10_000, "{out:?}");
        let child = read_pid(&dir.path().join("child.pid"));
        wait_until("grandchild dead", || dead(child));
    }

    #[test]
    fn run_piped_times_out_and_the_blocked_talk_returns() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "sleep 300");
        s.timeout = Duration::from_secs(1);
        let (out, talked) = run_piped(
            &s,
            Duration::from_millis(50),
            |_| Ok(()),
            || Ok(()),
            |_stdin, mut stdout| {
                let mut all = Vec::new();
                stdout.read_to_end(&mut all).map(|_| all.len()).ok()
            },
        )
        .unwrap();
        assert_eq!(out.exit, ExitKind::TimedOut);
        assert_eq!(talked, Some(Some(0)));
    }

    fn run_quiet_err(s: &RunSpec) -> String {
        format!(
            "{:#}",
            run(s, Duration::from_secs(1), |_| Ok(()), || Ok(())).unwrap_err()
        )
    }

    #[test]
    fn liveness_and_identity() {
        let me = current_process();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(is_alive(me.pid, me.start_time));
        assert!(!is_alive(me.pid, me.start_time + 1));
        assert!(!is_alive(-5, 0));
        assert_eq!(proc_start_time(0), None);
        assert!(!boot_id().is_empty());
        assert_eq!(boot_id(), boot_id().trim());
        assert!(!group_exists(0));
        // SAFETY: getpgrp has no preconditions.
        assert!(group_exists(unsafe { libc::getpgrp() }));
        assert!(!kill_group(1, Duration::ZERO));
    }

    #[test]
    fn kill_group_terminates_a_foreign_group() {
        let dir = tempfile::tempdir().unwrap();
        // A group whose leader we do not wait on, as the reaper sees it.
        let s = spec(dir.path(), "sleep 300");
        let mut child = command(&s, std::env::vars_os(), false)
            .unwrap()
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let reaper = std::thread::spawn(move || child.wait().unwrap());
        wait_until("group exists", || group_exists(pgid));
        assert!(kill_group(pgid, Duration::from_secs(2)));
        let status = reaper.join().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        wait_until("group gone", || !group_exists(pgid));
        assert!(!kill_group(pgid, Duration::ZERO));
    }

    #[test]
    fn parse_stat_handles_odd_comm() {
        let line = "4242 (my (weird) name) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        let zombie = "7 (a) b) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(zombie), Some(('Z', 55)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }
}
