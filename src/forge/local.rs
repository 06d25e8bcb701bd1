//! The local forge: a bare repository as origin. CI is the project's
//! test command, run in the agents' sandbox by the CI step (`crate::ci`
//! records it as CI status `orch/test`); a merge is a non-forced fast-forward
//! push ([`crate::git::Repo::fast_forward_default`]). [`super::Forge`]
//! dispatches here for `forge = "local"`.

use std::path::Path;
use std::time::Duration;

use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::Task;
use crate::git::Repo;
use crate::process::RunSpec;
use anyhow::Context as _;

fn local_ci_name(task_id: i64, sha: &str) -> String {
    format!("ci-task{task_id}-{}", &sha[..sha.len().min(12)])
}

/// The log of the local forge's CI run of task `task_id` on `sha`
/// (`<logs>/ci-task<id>-<sha12>.log`; it exists once the tests ran).
pub fn local_ci_log(ctx: &Ctx, task_id: i64, sha: &str) -> std::path::PathBuf {
    ctx.log_path(&format!("{}.log", local_ci_name(task_id, sha)))
}

/// The local forge's CI of `sha`, the head of `task`'s worktree: runs the
/// project's test command there ([`run_tests`], confined) with its output
/// in [`local_ci_log`]. Returns `(state, log)`, the state `success` or
/// `failure`; stores nothing (the CI step records the status and decides
/// the gate in one transaction, `crate::ci`).
///
/// Errors: the command cannot be started or was stopped by a signal.
pub fn run_local_ci(
    ctx: &Ctx,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
    sha: &str,
) -> anyhow::Result<(&'static str, std::path::PathBuf)> {
    let worktree = Path::new(&task.worktree);
    let passed = run_tests(ctx, project, repo, worktree, &local_ci_name(task.id, sha))?;
    let state = if passed { "success" } else { "failure" };
    Ok((state, local_ci_log(ctx, task.id, sha)))
}

/// Runs the project's test command in `dir` (a worktree of `repo`) with
/// its timeout, confined as agents are ([`crate::sandbox::test_runner`]):
/// it is code the agents may have written. The output goes to
/// `<logs>/<name>.log`. Returns whether it exited 0.
///
/// Errors: the command cannot be started; `ORCH_AGENT_SANDBOX=bwrap` and
/// bubblewrap does not work here.
pub fn run_tests(
    ctx: &Ctx,
    project: &ProjectConfig,
    repo: &Repo,
    dir: &Path,
    name: &str,
) -> anyhow::Result<bool> {
    let runner = crate::sandbox::test_runner(&ctx.settings, &repo.clone_dir, dir)?;
    let spec = RunSpec {
        argv: project.test_command.clone(),
        cwd: dir.to_path_buf(),
        env: vec![],
        env_remove_prefix: Some("ORCH_".into()),
        stdin_path: None,
        log_path: ctx.log_path(&format!("{name}.log")),
        timeout: Duration::from_secs(project.test_timeout_s),
        kill_grace: Duration::from_secs(ctx.settings.kill_grace_s),
    };
    let out = runner
        .run(&spec, Duration::from_millis(200), |_| Ok(()), || Ok(()))
        .with_context(|| {
            format!(
                "test command {:?} cannot be started (projects.{}.test_command)",
                project.test_command, project.name
            )
        })?;
    if let crate::process::ExitKind::Stopped(sig) = out.exit {
        // Not a red run: the worker is stopping; the next attempt re-tests.
        anyhow::bail!(
            "test command stopped by {}: the worker is stopping",
            crate::process::signal_name(sig)
        );
    }
    Ok(out.exit_code() == 0)
}
