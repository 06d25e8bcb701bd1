//! The `orch` binary: parse → context → dispatch → exit code. This is the
//! only place that turns errors into exit codes and text.

mod cli;
mod cmd;

use clap::Parser;

use orch::error::{exit, exit_code_for};

fn main() {
    // .env first, so clap's `env =` fallbacks and the settings see it; real
    // environment variables win over the file.
    let dotenv = dotenvy::dotenv();
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
    if let Err(e) = dotenv {
        if !e.not_found() {
            tracing::warn!("ignoring .env: {e}");
        }
    }
    orch::failpoint::setup();
    let code = match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code_for(&e);
            if code == exit::BUSY {
                tracing::info!("busy, exiting 75 so the next tick retries: {e:#}");
            } else {
                eprintln!("orch: error: {e:#}");
            }
            code
        }
    };
    std::process::exit(code);
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = std::env::var("ORCH_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // ureq logs request paths at trace level, and a Telegram bot token is
    // part of the path: never let ureq log at trace.
    let filter = match "ureq=debug".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .init();
}
