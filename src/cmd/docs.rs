//! `orch completions SHELL` and `orch man`: documentation generated from the
//! clap definitions in `cli.rs`, so it never drifts from the real flags.
//! Neither needs settings, a config or a database.
//! `orch man --dir DIR` writes one page per subcommand (clap_mangen).

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory;

use super::write_stdout;
use crate::cli::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "orch", &mut out);
    write_stdout(&out)
}

/// The command the man pages describe: `orch help` is left out (it has
/// no page; `--help` is on every page's options).
fn man_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The pages of `cmd` and its subcommands, depth first, each with its
/// file name (`orch.1`, `orch-task-show.1`).
fn pages(cmd: &clap::Command, out: &mut Vec<(String, clap_mangen::Man)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, out);
    }
    let man = clap_mangen::Man::new(cmd.clone());
    out.push((man.get_filename(), man));
}

/// `orch man`: orch(1) in roff on stdout; with `dir`, every page (orch.1
/// and one per subcommand, as `clap_mangen::generate_to` names them) into
/// `dir`, then the list of files (`--json`: `{"dir", "pages": [..]}`);
/// `dry_run` lists them and writes nothing.
///
/// Errors: `dir` cannot be created or a page written.
pub fn man(dir: Option<&Path>, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let cmd = man_command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return write_stdout(&out);
    };
    let mut all = Vec::new();
    pages(&cmd, &mut all);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    if !dry_run {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the man page folder {}", dir.display()))?;
        for (name, man) in &all {
            let path = dir.join(name);
            let mut roff = Vec::new();
            man.render(&mut roff)?;
            std::fs::write(&path, roff)
                .with_context(|| format!("writing the man page {}", path.display()))?;
        }
    }
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let text = if json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": dir, "dry_run": dry_run, "pages": names
            }))?
        )
    } else {
        let verb = if dry_run { "would write" } else { "wrote" };
        names
            .iter()
            .map(|n| format!("{verb} {}\n", dir.join(n).display()))
            .collect()
    };
    write_stdout(text.as_bytes())
}
