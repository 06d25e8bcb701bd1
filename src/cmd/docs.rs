//! `orch completions SHELL` and `orch man`: documentation generated from the
//! clap definitions in `cli.rs`, so it never drifts from the real flags.
//! Neither needs settings, a config or a database.

use clap::CommandFactory;

use super::write_stdout;
use crate::cli::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "orch", &mut out);
    write_stdout(&out)
}

/// Writes the man page (roff, section 1) to stdout.
pub fn man() -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    write_stdout(&out)
}
