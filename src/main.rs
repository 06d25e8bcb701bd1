//! The `orch` binary: parse → context → dispatch → exit code. This is the
//! only place that turns errors into exit codes and text.

mod cli;
mod cmd;

use clap::Parser;

use orch::error::{exit, exit_code_for};

fn main() {
    // First: nothing of the same user reads this process's environment or
    // memory through /proc (DESIGN §11 INV-8).
    if let Err(e) = orch::process::make_undumpable() {
        eprintln!("orch: warning: prctl(PR_SET_DUMPABLE, 0) failed: {e}");
    }
    // The settings file first (`.env`, else the installed
    // /etc/orch/orch.env), so clap's `env =` fallbacks and the settings see
    // it; real environment variables win over the file.
    // Which settings came from the environment, before the file adds its
    // own (for `orch config show`).
    let from_env: std::collections::BTreeSet<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("ORCH_"))
        .collect();
    let file = orch::config::load_settings_file();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    if let Some(problem) = &file.problem {
        tracing::warn!("{problem}");
    }
    orch::failpoint::setup();
    let sources = cmd::Sources {
        from_env,
        dotenv: file.path.clone(),
        dropped: Default::default(),
    };
    let code = match cmd::run(cli, &sources) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code_for(&e);
            if code == exit::BUSY {
                tracing::info!("busy, exiting 75 so the next tick retries: {e:#}");
            } else {
                // In the journal at error priority (LogLevelMax=notice keeps it).
                let priority = if stderr_is_journal() { "<3>" } else { "" };
                eprintln!("{priority}orch: error: {e:#}");
            }
            code
        }
    };
    // A worker asked to stop (work-once, tick) has recorded why; it ends
    // by that signal, as systemd and a shell expect of a stopped process.
    if let Some(sig) = orch::process::stop_signal() {
        orch::process::die_by(sig);
    }
    std::process::exit(code);
}

/// Logs go to stderr, one line per event: plain text without colour unless
/// stderr is a terminal, or JSON with `ORCH_LOG_FORMAT=json`. The level
/// comes from `-q`/`-v`, or `ORCH_LOG` (`RUST_LOG`) as an `EnvFilter`.
fn init_logging(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let asked = std::env::var("ORCH_LOG")
        .ok()
        .map(|f| ("ORCH_LOG", f))
        .or_else(|| std::env::var("RUST_LOG").ok().map(|f| ("RUST_LOG", f)));
    let mut problems = Vec::new();
    let filter = match &asked {
        Some((key, f)) => EnvFilter::try_new(f).unwrap_or_else(|e| {
            problems.push(format!("ignoring {key}={f:?} ({e}); logging at {default}"));
            EnvFilter::new(default)
        }),
        None => EnvFilter::new(default),
    };
    // ureq logs request paths at trace level, and a Telegram bot token is
    // part of the path: never let ureq log at trace.
    let filter = match "ureq=debug".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    let format = std::env::var("ORCH_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(OneLine {
            journal: stderr_is_journal(),
            prefix: "",
        })
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal());
    match format.as_str() {
        "json" => builder.json().init(),
        "" | "text" => builder.init(),
        other => {
            builder.init();
            problems.push(format!(
                "ignoring ORCH_LOG_FORMAT={other:?}: expected text or json"
            ));
        }
    }
    for p in problems {
        tracing::warn!("{p}");
    }
}

/// Whether stderr is the journal's stream (`JOURNAL_STREAM=<dev>:<ino>`,
/// set by systemd, names stderr's own file): as under the units.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(m) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", m.dev(), m.ino())
}

/// stderr, where each event stays one line: a newline inside a message or
/// field (a multi-line comment, a stderr tail) is written as `\n`. When
/// stderr is the journal, each line starts with its syslog priority
/// (`<3>` error, `<4>` warning, `<5>` notice for INFO, `<7>` debug), which
/// journald reads as the line's priority: a tick's summary of what it
/// changed is a notice, so the units' `LogLevelMax=notice` keeps it while
/// dropping systemd's own per-tick Starting/Finished lines (info).
struct OneLine {
    journal: bool,
    prefix: &'static str,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OneLine {
    type Writer = OneLine;
    fn make_writer(&'a self) -> OneLine {
        OneLine {
            journal: self.journal,
            prefix: "",
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> OneLine {
        use tracing::Level;
        let prefix = match *meta.level() {
            _ if !self.journal => "",
            Level::ERROR => "<3>",
            Level::WARN => "<4>",
            Level::INFO => "<5>",
            _ => "<7>",
        };
        OneLine {
            journal: self.journal,
            prefix,
        }
    }
}

impl std::io::Write for OneLine {
    /// The formatter hands over each event whole, ending in its newline.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let mut line = Vec::with_capacity(buf.len() + 8);
        line.extend_from_slice(self.prefix.as_bytes());
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(b),
            }
        }
        line.push(b'\n');
        std::io::stderr().lock().write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
