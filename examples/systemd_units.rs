//! `process::systemd` against a real systemd: run by `scripts/boot-test`
//! inside its container, as the orch user, in the worker unit's own
//! sandbox (an instance of `orch-worker@.service` whose ExecStart is this
//! program), where PID 1 is systemd and `scripts/install` turned linger on.
//! This machine's PID 1 is not systemd, so the unit tests can only check
//! the names and the argv; this checks what the manager does with them.
//!
//! ```sh
//! systemd_units --dir DIR [--wait]
//! ```
//!
//! Prints one `ok …` line per check and exits 0 (with `--wait`: sleeps
//! instead, until its unit is stopped), or prints `FAIL …` and exits 1.
//! It leaves `orch-run-job900001-e3.service` (a `sleep 600`) running: the
//! boot test checks that it outlives the stop of the unit that started
//! it, then stops it. `DIR` (writable, absent from the sandbox's hidden
//! folders) receives what the sandboxed run saw.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use orch::process::systemd::{self, UnitName, UnitSpec, UnitState};
use orch::process::{Confinement, RunSpec};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let dir = match args.iter().position(|a| a == "--dir") {
        Some(i) if i + 1 < args.len() => PathBuf::from(&args[i + 1]),
        _ => {
            eprintln!("usage: systemd_units --dir DIR [--wait]");
            return ExitCode::from(2);
        }
    };
    match check(&dir, args.iter().any(|a| a == "--wait")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("FAIL {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn unit(epoch: i64) -> UnitName {
    UnitName::for_run(900001, epoch).expect("a valid run")
}

fn check(dir: &Path, wait: bool) -> anyhow::Result<()> {
    let grace = Duration::from_secs(2);
    let unit_spec = |unit: &UnitName, argv: &[String], output: Option<PathBuf>| UnitSpec {
        unit: unit.clone(),
        argv: argv.to_vec(),
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        cwd: dir.to_path_buf(),
        output,
        runtime_max: Duration::from_secs(900),
        stop_grace: grace,
    };
    std::fs::create_dir_all(dir)?;
    systemd::probe().map_err(|why| anyhow::anyhow!("probe: {why}"))?;
    println!("ok probe: transient units of this user's manager can be started");

    // A run that goes on: active, a second start of the same name refused,
    // stopped, then collected.
    let sleeper = unit(1);
    let sleep = vec!["/bin/sleep".to_string(), "600".to_string()];
    systemd::start_transient(&unit_spec(&sleeper, &sleep, None))?;
    expect(&sleeper, UnitState::Active)?;
    println!("ok {sleeper} started and active");
    let again = systemd::start_transient(&unit_spec(&sleeper, &sleep, None));
    anyhow::ensure!(again.is_err(), "a second start of {sleeper} was accepted");
    println!(
        "ok a second start of {sleeper} is refused: {:#}",
        again.unwrap_err()
    );
    anyhow::ensure!(systemd::stop_unit(&sleeper, grace)?, "stop said not loaded");
    expect(&sleeper, UnitState::Finished)?;
    anyhow::ensure!(
        !systemd::stop_unit(&sleeper, grace)?,
        "a second stop found it loaded"
    );
    println!("ok {sleeper} stopped, collected; a second stop finds nothing");

    // A run confined as agents are (bubblewrap, the managers' folders
    // hidden), in a unit: it runs, sees no manager, finishes and is
    // collected.
    let seen = dir.join("seen.txt");
    let _ = std::fs::remove_file(&seen);
    let probe = String::from(
        "id -un; ls /run/user/$(id -u)/systemd/private >/dev/null 2>&1 && echo manager: REACHABLE || echo manager: hidden; \
         timeout 5 systemd-run --user --collect /bin/true >/dev/null 2>&1 && echo systemd-run: STARTED || echo systemd-run: refused"
    );
    // In a script: a unit's arguments carry no `$` (start_transient
    // refuses what the manager would expand).
    let script = dir.join("probe.sh");
    std::fs::write(&script, format!("{probe}\n"))?;
    let spec = RunSpec {
        argv: vec!["/bin/sh".into(), script.display().to_string()],
        cwd: dir.to_path_buf(),
        env: vec![],
        env_remove_prefix: None,
        stdin_path: None,
        log_path: PathBuf::new(),
        timeout: Duration::from_secs(60),
        kill_grace: Duration::from_secs(2),
    };
    let confined = Confinement {
        hidden_dirs: orch::sandbox::manager_dirs(std::env::var_os("XDG_RUNTIME_DIR")),
        writable: vec![dir.to_path_buf()],
        ..Confinement::default()
    }
    .wrap(&spec);
    let bwrap = which("bwrap")?;
    let mut argv = vec![bwrap.display().to_string()];
    argv.extend(confined.into_iter().skip(1));
    let agent = unit(2);
    systemd::start_transient(&unit_spec(&agent, &argv, Some(seen.clone())))?;
    expect(&agent, UnitState::Finished)?;
    let saw = std::fs::read_to_string(&seen).unwrap_or_default();
    anyhow::ensure!(
        saw.contains("manager: hidden") && saw.contains("systemd-run: refused"),
        "the sandboxed run in {agent} saw: {saw:?}"
    );
    println!(
        "ok {agent}: a sandboxed run in a unit ran and did not reach the manager ({})",
        saw.trim().replace('\n', "; ")
    );

    // Left running for the boot test: it must outlive this program's unit.
    let left = unit(3);
    systemd::start_transient(&unit_spec(&left, &sleep, None))?;
    expect(&left, UnitState::Active)?;
    println!("ok {left} started; left running");
    if wait {
        // Until the boot test stops this program's unit: the run must stay.
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    Ok(())
}

/// Polls `unit` until it is in `want` (at most 20 s).
fn expect(unit: &UnitName, want: UnitState) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = systemd::unit_state(unit);
        if got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{unit} is {got:?}, not {want:?}, after 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `name` on PATH.
fn which(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} is not on PATH"))
}
