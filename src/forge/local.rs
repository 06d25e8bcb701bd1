//! The local forge: a bare repository as origin. CI is the project's
//! test command, run by orch once per head sha in the agents' sandbox and
//! stored as CI status `orch/test`; a merge is a non-forced fast-forward
//! push ([`crate::git::Repo::fast_forward_default`]). [`super::Forge`]
//! dispatches here for `forge = "local"`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tracing::info;

use crate::clock::now_ms;
use crate::config::ProjectConfig;
use crate::ctx::Ctx;
use crate::db::{Db, Task};
use crate::git::Repo;
use crate::process::RunSpec;

fn local_ci_name(task_id: i64, sha: &str) -> String {
    format!("ci-task{task_id}-{}", &sha[..sha.len().min(12)])
}

/// The log of the local forge's CI run of task `task_id` on `sha`
/// (`<logs>/ci-task<id>-<sha12>.log`; it exists once the tests ran).
pub fn local_ci_log(ctx: &Ctx, task_id: i64, sha: &str) -> std::path::PathBuf {
    ctx.log_path(&format!("{}.log", local_ci_name(task_id, sha)))
}

/// The local forge's CI: runs the project's test command on the worktree's
/// head once per sha and stores the result as CI status `orch/test`.
///
/// Guarantees: idempotent per sha (a stored status is not re-run).
pub(super) fn run_ci(
    ctx: &Ctx,
    db: &Db,
    project: &ProjectConfig,
    repo: &Repo,
    task: &Task,
) -> anyhow::Result<String> {
    let worktree = Path::new(&task.worktree);
    let sha = repo.head_sha(worktree)?;
    if let Some(state) = db.combined_ci_state(&project.name, &sha)? {
        return Ok(state);
    }
    let passed = run_tests(ctx, project, repo, worktree, &local_ci_name(task.id, &sha))?;
    let state = if passed { "success" } else { "failure" };
    // The run's own log, recorded by orch: the next developer's feedback
    // reads it from here, never from a path named in text.
    let log = local_ci_log(ctx, task.id, &sha);
    db.write(|tx| {
        tx.upsert_ci_status(
            &project.name,
            &sha,
            crate::db::ORCH_TEST_CONTEXT,
            state,
            "",
            Some(&log.to_string_lossy()),
            now_ms(),
        )
    })?;
    info!(target: "ci", task = task.id, sha = %sha, state, "local CI finished");
    Ok(state.to_string())
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
