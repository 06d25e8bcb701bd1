//! Runs in transient systemd units: one unit per agent run, started in the
//! service manager of the user orch runs as (`systemd --user`, kept alive
//! by `loginctl enable-linger`, which `scripts/install` sets), so that
//! stopping, restarting or upgrading any orch unit — or killing its `orch`
//! with SIGKILL — does not touch the run (DESIGN §4, "Detached runs").
//!
//! Why the user's own manager and not the system manager with a polkit
//! rule: polkit sees only an action, its unit name (systemd ≥ 257; none at
//! all for a transient unit before that) and a verb, never the transient
//! unit's properties, so a rule "orch may start `orch-run-*` units" lets
//! anything running as orch start one with `User=root`. The user manager
//! only ever runs units as that user: the grant gives orch nothing it did
//! not have. The sandbox hides the manager from agents (`/run/user`,
//! `sandbox::confinement`), else an agent could start a unit of its own
//! outside its sandbox, as orch.
//!
//! Everything goes through the manager's own tools (`systemd-run --user`,
//! `systemctl --user`), which reach the manager on its private socket
//! (`/run/user/<uid>/systemd/private`): no D-Bus session bus is needed.
//! Unit names are only those orch builds ([`UnitName`]): never from agent
//! text.
//!
//! Linux with systemd only; [`probe`] says whether this host can.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What every run unit's name starts with (`orch-run-job<id>-e<epoch>.service`).
pub const UNIT_PREFIX: &str = "orch-run-";

/// How long `systemd-run` and `systemctl show` may take before they are
/// killed and the call fails (the manager answers in milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of one run's transient unit:
/// `orch-run-job<job id>-e<epoch>.service`, both numbers positive and
/// without leading zeros. The only way to get one is [`UnitName::for_run`]
/// or [`UnitName::parse`] of such a name, so a name orch did not build
/// never reaches the manager.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitName(String);

impl UnitName {
    /// The unit of job `job`'s run of epoch `epoch`.
    ///
    /// Errors: a job id or epoch below 1 (a string, as [`UnitName::parse`]).
    pub fn for_run(job: i64, epoch: i64) -> Result<UnitName, String> {
        if job < 1 || epoch < 1 {
            return Err(format!(
                "no run unit for job {job} epoch {epoch}: both must be at least 1"
            ));
        }
        Ok(UnitName(format!("{UNIT_PREFIX}job{job}-e{epoch}.service")))
    }

    /// `name` if it is exactly what [`UnitName::for_run`] builds (e.g. read
    /// back from the database), else why not.
    pub fn parse(name: &str) -> Result<UnitName, String> {
        let bad =
            || format!("{name:?} is not an orch run unit (orch-run-job<id>-e<epoch>.service)");
        let rest = name
            .strip_prefix(UNIT_PREFIX)
            .and_then(|r| r.strip_prefix("job"))
            .and_then(|r| r.strip_suffix(".service"))
            .ok_or_else(bad)?;
        let (job, epoch) = rest.split_once("-e").ok_or_else(bad)?;
        match (number(job), number(epoch)) {
            (Some(j), Some(e)) => UnitName::for_run(j, e),
            _ => Err(bad()),
        }
    }

    /// The full name, `.service` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UnitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A positive decimal with no sign and no leading zero, as `i64`.
fn number(s: &str) -> Option<i64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    digits.then(|| s.parse().ok()).flatten()
}

/// What one run unit runs, and the limits it keeps whatever its program
/// does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    pub unit: UnitName,
    /// The program (an absolute path) and its arguments; none may hold
    /// `$`, which the manager would expand.
    pub argv: Vec<String>,
    /// Set in the unit (`--setenv`) on top of the manager's own
    /// environment; never a secret (see [`start_transient`]).
    pub env: Vec<(String, String)>,
    /// The working directory (absolute).
    pub cwd: PathBuf,
    /// The program's stdout and stderr are appended to this file
    /// (absolute, no whitespace); `None`: stdout discarded, stderr to the
    /// journal.
    pub output: Option<PathBuf>,
    /// The unit is stopped this long after it started (`RuntimeMaxSec=`):
    /// a backstop above the run's own timeout, which the program enforces
    /// (give it the timeout plus twice the grace plus a margin).
    pub runtime_max: Duration,
    /// On stop, every process of the unit gets SIGTERM, and SIGKILL this
    /// long after (`TimeoutStopSec=`, `KillMode=control-group`).
    pub stop_grace: Duration,
}

/// What [`unit_state`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    /// Loaded and active, starting or stopping: its processes may run.
    Active,
    /// Not loaded (finished and collected, or never started), inactive or
    /// failed: no process of it is left.
    Finished,
    /// The manager could not be asked; why.
    Unknown(String),
}

/// Whether runs can be started in transient units here, asked once per
/// process: systemd is PID 1 (`/run/systemd/system` exists), this user's
/// service manager outlives sessions (linger on), runs and answers on its
/// private socket, and `systemd-run` is installed. `Err` says why not and
/// what to do.
pub fn probe() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE.get_or_init(probe_now).clone()
}

fn probe_now() -> Result<(), String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Err("systemd is not PID 1 here (no /run/systemd/system)".into());
    }
    let uid = uid();
    let user = user_name(uid).unwrap_or_else(|| uid.to_string());
    if !Path::new("/var/lib/systemd/linger").join(&user).exists() {
        return Err(format!(
            "linger is off for user {user}: its service manager would stop with its last session \
             (loginctl enable-linger {user}; scripts/install does it)"
        ));
    }
    let private = runtime_dir().join("systemd/private");
    if !private.exists() {
        return Err(format!(
            "{} is missing: the service manager of user {user} is not running, or this unit does \
             not see /run/user (ProtectHome=yes; scripts/install's drop-in binds the folder)",
            private.display()
        ));
    }
    if !super::runnable("systemd-run", Path::new("/")) {
        return Err("systemd-run is not on PATH".into());
    }
    let mut cmd = systemctl();
    cmd.args(["show", "--property=Version"]);
    match call(cmd, CALL_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "systemctl --user does not answer ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("systemctl --user: {e:#}")),
    }
}

/// Starts `spec.argv` in `spec.cwd` as the transient unit `spec.unit` of
/// this user's service manager and returns once the program was executed
/// (`Type=exec`): the unit is collected when it ends, failed or not
/// (`--collect`); nobody waits for it. Besides [`UnitSpec`]'s limits, the
/// unit runs with no new privileges, a seccomp filter of the worker unit's
/// system calls (`@system-service @mount @setuid`: the sandbox's
/// bubblewrap still works), `UMask=0077` and the journal at notice (quiet
/// when all is well, as the orch units).
///
/// Unit properties, `spec.env` among them, can be read by every process of
/// this user that reaches the manager, so secrets do not go there (they go
/// in a file only orch reads, e.g. the run's spec): a name ending in
/// `_SECRET`, `_TOKEN`, `_KEY` or `_PASSWORD` is refused.
///
/// Errors: a refused spec ([`transient_argv`]); `systemd-run` cannot be
/// started, takes longer than 30 s, or fails — e.g. a unit of that name
/// already exists, or the program cannot be executed — with its message.
pub fn start_transient(spec: &UnitSpec) -> anyhow::Result<()> {
    let args = transient_argv(spec)?;
    let unit = &spec.unit;
    let mut cmd = Command::new("systemd-run");
    cmd.args(&args).env("XDG_RUNTIME_DIR", runtime_dir());
    let out = call(cmd, CALL_TIMEOUT).context("running systemd-run --user")?;
    if !out.status.success() {
        bail!(
            "systemd-run --user --unit={unit} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tracing::info!(target: "systemd", unit = %unit, program = %spec.argv[0], "run started in a transient unit");
    Ok(())
}

/// The arguments of `systemd-run` (after the program name) that
/// [`start_transient`] runs.
///
/// Errors: an empty argv, a program that is not an absolute path, an
/// argument holding `$` (the manager would expand it as a variable), a
/// relative `cwd`, an output file that is relative or holds whitespace, an
/// environment name that is not `[A-Za-z_][A-Za-z0-9_]*` or that names a
/// secret (see [`start_transient`]), a value holding a newline.
pub fn transient_argv(spec: &UnitSpec) -> anyhow::Result<Vec<String>> {
    let unit = &spec.unit;
    let Some(program) = spec.argv.first() else {
        bail!("{unit}: empty argv");
    };
    if !Path::new(program).is_absolute() {
        bail!("{unit}: the program must be an absolute path, not {program:?}");
    }
    if let Some(a) = spec.argv.iter().find(|a| a.contains('$')) {
        bail!("{unit}: argument {a:?} holds '$', which systemd would expand");
    }
    if !spec.cwd.is_absolute() {
        bail!(
            "{unit}: the working directory must be absolute, not {}",
            spec.cwd.display()
        );
    }
    let output = match &spec.output {
        None => None,
        Some(p) => {
            let text = p.to_string_lossy();
            if !p.is_absolute() || text.chars().any(char::is_whitespace) {
                bail!(
                    "{unit}: the output file must be absolute and without whitespace, not {}",
                    p.display()
                );
            }
            Some(text.into_owned())
        }
    };
    let secret = ["_SECRET", "_TOKEN", "_KEY", "_PASSWORD"];
    let mut setenv = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        let valid = k
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if k.is_empty() || !valid {
            bail!("{unit}: {k:?} is not an environment variable name");
        }
        if secret.iter().any(|s| k.to_ascii_uppercase().ends_with(s)) {
            bail!("{unit}: {k} looks like a secret; unit properties are readable by every process of this user, so pass it in a file only orch reads");
        }
        if v.contains('\n') {
            bail!("{unit}: the value of {k} holds a newline");
        }
        setenv.push(format!("--setenv={k}={v}"));
    }
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let mut a: Vec<String> = vec![
        "--user".into(),
        format!("--unit={unit}"),
        format!("--description=orch run {unit}"),
        "--collect".into(),
        "--quiet".into(),
        "--service-type=exec".into(),
        format!("--working-directory={}", spec.cwd.display()),
        "--property=KillMode=control-group".into(),
        format!("--property=TimeoutStopSec={}", ms(spec.stop_grace)),
        format!("--property=RuntimeMaxSec={}", ms(spec.runtime_max)),
        "--property=NoNewPrivileges=yes".into(),
        "--property=RestrictSUIDSGID=yes".into(),
        "--property=LockPersonality=yes".into(),
        "--property=RestrictRealtime=yes".into(),
        "--property=SystemCallArchitectures=native".into(),
        "--property=SystemCallFilter=@system-service @mount @setuid".into(),
        "--property=UMask=0077".into(),
    ];
    match output {
        Some(path) => a.extend([
            format!("--property=StandardOutput=append:{path}"),
            format!("--property=StandardError=append:{path}"),
        ]),
        None => a.extend([
            "--property=StandardOutput=null".into(),
            "--property=StandardError=journal".into(),
        ]),
    }
    a.push("--property=LogLevelMax=notice".into());
    a.extend(setenv);
    a.push("--".into());
    a.extend(spec.argv.iter().cloned());
    Ok(a)
}

/// Whether `unit`'s processes may still run ([`UnitState::Active`]), or
/// none is left ([`UnitState::Finished`]: a run unit is collected when it
/// ends, so a finished run and one never started look alike — the run's
/// exit record tells them apart). [`UnitState::Unknown`] when the manager
/// cannot be asked: a caller judging liveness treats it as "maybe alive".
pub fn unit_state(unit: &UnitName) -> UnitState {
    let mut cmd = systemctl();
    cmd.args(["show", "--property=LoadState,ActiveState", unit.as_str()]);
    match call(cmd, CALL_TIMEOUT) {
        Ok(out) if out.status.success() => parse_state(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => UnitState::Unknown(format!(
            "systemctl --user show {unit} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => UnitState::Unknown(format!("systemctl --user show {unit}: {e:#}")),
    }
}

/// The state `systemctl show --property=LoadState,ActiveState` printed.
fn parse_state(shown: &str) -> UnitState {
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
    };
    match (field("LoadState"), field("ActiveState")) {
        (Some("not-found"), _) | (_, Some("inactive" | "failed")) => UnitState::Finished,
        (Some(_), Some("active" | "activating" | "deactivating" | "reloading" | "refreshing")) => {
            UnitState::Active
        }
        _ => UnitState::Unknown(format!("unexpected state: {}", shown.trim())),
    }
}

/// Stops `unit`: SIGTERM to every process of it, SIGKILL after its
/// `TimeoutStopSec=`; returns once they are gone. `Ok(false)` when it was
/// not loaded (already finished), `Ok(true)` when it was stopped.
///
/// Errors: `systemctl` cannot be started, has not returned after
/// `grace` plus 30 s, or fails otherwise, with its message.
pub fn stop_unit(unit: &UnitName, grace: Duration) -> anyhow::Result<bool> {
    let mut cmd = systemctl();
    cmd.args(["stop", unit.as_str()]);
    let out = call(cmd, grace + CALL_TIMEOUT).with_context(|| format!("stopping {unit}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            tracing::info!(target: "systemd", unit = %unit, "run unit stopped");
            Ok(true)
        }
        // systemctl's "not loaded" (LSB 5: program is not installed).
        Some(5) if stderr.contains("not loaded") => Ok(false),
        _ => bail!(
            "systemctl --user stop {unit} failed ({}): {}",
            out.status,
            stderr.trim()
        ),
    }
}

/// The path a run unit should start this very binary by: `/proc/self/exe`'s
/// target (a unit cannot be given `/proc/self/exe`, which the manager
/// would resolve to itself), without the ` (deleted)` the kernel appends
/// once an upgrade replaced the file — the unit then starts the new binary
/// at the same path, which reads the run's versioned spec.
///
/// Errors: `/proc/self/exe` cannot be read.
pub fn this_binary() -> anyhow::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe").context("reading /proc/self/exe")?;
    Ok(without_deleted(exe))
}

fn without_deleted(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

/// `/run/user/<uid>`: the runtime folder of this user's service manager
/// (what `user-runtime-dir@.service` makes), whatever `XDG_RUNTIME_DIR`
/// says; the sandbox hides it.
pub fn runtime_dir() -> PathBuf {
    PathBuf::from(format!("/run/user/{}", uid()))
}

fn uid() -> u32 {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The login name of `uid` from the password database.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right size; on
    // success `result` points at `pwd`, whose strings live in `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buf`, alive here.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `systemctl --user --quiet --no-pager` with the runtime folder set.
fn systemctl() -> Command {
    let mut cmd = Command::new("systemctl");
    cmd.args(["--user", "--no-pager", "--no-ask-password"])
        .env("XDG_RUNTIME_DIR", runtime_dir());
    cmd
}

/// Runs `cmd` (stdin `/dev/null`, output captured) and waits at most
/// `limit`; past it the child is killed and the call fails.
fn call(mut cmd: Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{:?} did not return within {} s",
                cmd.get_program(),
                limit.as_secs()
            );
        }
        std::thread::sleep(super::POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_only_those_orch_builds() {
        let u = UnitName::for_run(42, 3).unwrap();
        assert_eq!(u.as_str(), "orch-run-job42-e3.service");
        assert_eq!(UnitName::parse(u.as_str()), Ok(u));
        assert!(UnitName::for_run(0, 1).is_err());
        assert!(UnitName::for_run(1, -1).is_err());
        for bad in [
            "",
            "orch-run-job42-e3",
            "orch-run-job42-e3.service ",
            "orch-run-job-e3.service",
            "orch-run-job42-e.service",
            "orch-run-job042-e3.service",
            "orch-run-job42-e0.service",
            "orch-run-job+42-e3.service",
            "orch-run-job42-e3-e4.service",
            "orch-run-job42-e3.scope",
            "orch-worker@1.service",
            "orch-run-job42-e3.service/../x",
            "orch-run-job99999999999999999999-e1.service",
            "ORCH-RUN-JOB42-E3.service",
        ] {
            let err = UnitName::parse(bad).unwrap_err();
            assert!(err.contains("is not an orch run unit"), "{bad:?}: {err}");
        }
    }

    fn spec(argv: &[&str], env: &[(&str, &str)], cwd: &str) -> UnitSpec {
        UnitSpec {
            unit: UnitName::for_run(7, 2).unwrap(),
            argv: s(argv),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: PathBuf::from(cwd),
            output: None,
            runtime_max: Duration::from_secs(3720),
            stop_grace: Duration::from_millis(2500),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_argv_names_the_unit_its_limits_and_the_program_last() {
        let argv = [
            "/usr/local/bin/orch",
            "run-agent",
            "--spec",
            "/var/lib/orch/state/x.spec",
        ];
        let env = [("HOME", "/var/lib/orch/home"), ("PATH", "/usr/bin:/bin")];
        let mut spec = spec(&argv, &env, "/var/lib/orch");
        let a = transient_argv(&spec).unwrap();
        assert_eq!(
            a,
            s(&[
                "--user",
                "--unit=orch-run-job7-e2.service",
                "--description=orch run orch-run-job7-e2.service",
                "--collect",
                "--quiet",
                "--service-type=exec",
                "--working-directory=/var/lib/orch",
                "--property=KillMode=control-group",
                "--property=TimeoutStopSec=2500ms",
                "--property=RuntimeMaxSec=3720000ms",
                "--property=NoNewPrivileges=yes",
                "--property=RestrictSUIDSGID=yes",
                "--property=LockPersonality=yes",
                "--property=RestrictRealtime=yes",
                "--property=SystemCallArchitectures=native",
                "--property=SystemCallFilter=@system-service @mount @setuid",
                "--property=UMask=0077",
                "--property=StandardOutput=null",
                "--property=StandardError=journal",
                "--property=LogLevelMax=notice",
                "--setenv=HOME=/var/lib/orch/home",
                "--setenv=PATH=/usr/bin:/bin",
                "--",
                "/usr/local/bin/orch",
                "run-agent",
                "--spec",
                "/var/lib/orch/state/x.spec",
            ])
        );
        assert!(!a.iter().any(|x| x == "--wait"), "nobody waits for the run");
        // With an output file, the program's streams go there.
        spec.output = Some(PathBuf::from("/var/lib/orch/state/logs/job7-e2.runner.log"));
        let b = transient_argv(&spec).unwrap();
        let streams: Vec<&String> = b.iter().filter(|x| x.contains("Standard")).collect();
        assert_eq!(
            streams,
            [
                "--property=StandardOutput=append:/var/lib/orch/state/logs/job7-e2.runner.log",
                "--property=StandardError=append:/var/lib/orch/state/logs/job7-e2.runner.log"
            ]
        );
        assert_eq!(b.len(), a.len());
    }

    #[test]
    fn what_the_manager_would_misread_is_refused() {
        let cwd = "/var/lib/orch";
        let err = |argv: &[&str], env: &[(&str, &str)], cwd: &str| {
            format!("{:#}", transient_argv(&spec(argv, env, cwd)).unwrap_err())
        };
        assert!(err(&[], &[], cwd).contains("empty argv"));
        assert!(err(&["orch", "run-agent"], &[], cwd).contains("absolute path"));
        assert!(err(&["/bin/orch", "--spec", "/x/$HOME"], &[], cwd).contains("holds '$'"));
        assert!(err(&["/bin/orch"], &[], "state").contains("must be absolute"));
        assert!(
            err(&["/bin/orch"], &[("A=B", "c")], cwd).contains("not an environment variable name")
        );
        assert!(
            err(&["/bin/orch"], &[("1A", "c")], cwd).contains("not an environment variable name")
        );
        assert!(err(&["/bin/orch"], &[("", "c")], cwd).contains("not an environment variable name"));
        for secret in [
            "ORCH_GITEA_TOKEN",
            "ORCH_PLANE_WEBHOOK_SECRET",
            "ANTHROPIC_API_KEY",
            "db_password",
            "OPENAI_KEY",
        ] {
            assert!(
                err(&["/bin/orch"], &[(secret, "x")], cwd).contains("looks like a secret"),
                "{secret}"
            );
        }
        assert!(err(&["/bin/orch"], &[("A", "x\ny")], cwd).contains("newline"));
        for output in ["logs/x.log", "/var/lib/orch/a b.log"] {
            let mut bad = spec(&["/bin/orch"], &[], cwd);
            bad.output = Some(PathBuf::from(output));
            let e = format!("{:#}", transient_argv(&bad).unwrap_err());
            assert!(e.contains("output file must be absolute"), "{output}: {e}");
        }
    }

    #[test]
    fn a_replaced_binary_is_started_by_its_path() {
        assert_eq!(
            without_deleted(PathBuf::from("/usr/local/bin/orch (deleted)")),
            PathBuf::from("/usr/local/bin/orch")
        );
        assert_eq!(
            without_deleted(PathBuf::from("/usr/local/bin/orch")),
            PathBuf::from("/usr/local/bin/orch")
        );
        assert!(this_binary().unwrap().is_absolute());
    }

    #[test]
    fn states_from_what_systemctl_shows() {
        let st = |s: &str| parse_state(s);
        assert_eq!(
            st("LoadState=loaded\nActiveState=active\n"),
            UnitState::Active
        );
        assert_eq!(
            st("ActiveState=deactivating\nLoadState=loaded\n"),
            UnitState::Active
        );
        assert_eq!(
            st("LoadState=loaded\nActiveState=activating\n"),
            UnitState::Active
        );
        assert_eq!(
            st("LoadState=not-found\nActiveState=inactive\n"),
            UnitState::Finished
        );
        assert_eq!(
            st("LoadState=loaded\nActiveState=failed\n"),
            UnitState::Finished
        );
        assert_eq!(
            st("LoadState=loaded\nActiveState=inactive\n"),
            UnitState::Finished
        );
        assert!(matches!(st(""), UnitState::Unknown(_)));
        assert!(matches!(
            st("LoadState=loaded\nActiveState=maybe\n"),
            UnitState::Unknown(_)
        ));
    }

    #[test]
    fn no_systemd_here_is_said_not_guessed() {
        // This machine's PID 1 is not systemd (the boot test runs the real
        // thing): the probe must say so rather than pass.
        if Path::new("/run/systemd/system").is_dir() {
            return;
        }
        let why = probe().unwrap_err();
        assert!(why.contains("systemd is not PID 1"), "{why}");
        assert_eq!(runtime_dir(), PathBuf::from(format!("/run/user/{}", uid())));
    }
}
