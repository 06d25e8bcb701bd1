//! Every git invocation orch makes, in one place.
//!
//! Why one module: the default branch is the one thing orch must never
//! damage (DESIGN §11, invariant 6). Keeping every git call here means the
//! rules that protect it — task branches only carry the `orch/` prefix,
//! pushes never force except with an explicit lease on a task branch, the
//! default branch only moves by a non-forced fast-forward push — are
//! enforced and tested in a single module.
//!
//! How git is run: the `git` binary via [`std::process::Command`] with
//! explicit arguments, never a shell; stdin is `/dev/null`, and an explicit
//! minimal environment ([`KEPT_ENV`] from orch's own, nothing else: no
//! `ORCH_*` secret, no `GIT_DIR`-style redirection) plus
//! `GIT_TERMINAL_PROMPT=0` (a missing credential fails instead of
//! hanging) and `LC_ALL=C` (stable messages).
//!
//! Nothing an agent writes runs with orch's privileges (DESIGN §11,
//! invariant 8): an agent can write into the shared clone, so every call
//! passes `-c core.hooksPath=/dev/null -c core.fsmonitor=false
//! -c protocol.ext.allow=never` (no hook, no fsmonitor, no `ext::` remote
//! ever runs), and before running git in a repository orch reads that
//! repository's own config files (`config`, `config.worktree`, includes not
//! followed) and refuses with [`Error::UnsafeGitConfig`] when one sets a key
//! that makes git run a program ([`is_program_key`]: `core.sshCommand`,
//! `core.pager`, `credential.helper`, filter/diff/merge drivers,
//! `include.path`, …). orch never writes such keys into a clone; an
//! operator who needs one sets it in the orch user's global git config,
//! which orch trusts.
//!
//! An agent can also write its worktree's git metadata: the worktree's
//! `.git` file and, in the clone, the worktree's admin folder
//! (`<clone>/worktrees/<name>/`, writable in the sandbox so the agent can
//! commit), whose `commondir` says where the refs, objects and config are.
//! Rewritten, they would point orch's own commit and push at a repository
//! of the agent's choosing. So orch never follows them:
//! `Repo::check_worktree`, which every method runs before git touches a
//! worktree, compares them with what `git worktree add` wrote — `.git` a
//! regular file `gitdir: <clone>/worktrees/<name>` (not a directory, not a
//! symbolic link), `commondir` `../..`, `gitdir` the worktree's own `.git`
//! — and git then runs there with `--git-dir <admin> --work-tree
//! <worktree>` and `GIT_COMMON_DIR=<clone>` from that check, never reading
//! `.git` or `commondir` itself (so a check and the git after it cannot
//! disagree). Where the branch is known, the admin folder's `HEAD` must be
//! the task branch (before a push, and in [`Repo::ensure_worktree`]), and a
//! rebase left in progress is aborted only when its `head-name` is a task
//! branch (`git rebase --abort` moves and checks out that ref). The admin
//! folder's own `config` and `objects/info/alternates` are not read by git
//! when the common dir is given; its `config.worktree` is checked for
//! program-running keys like the clone's `config`. Any difference is
//! [`Error::TamperedGitMetadata`], naming the file and what it held: the
//! job fails at once ([`crate::error::is_permanent`]), and the next run of the task
//! re-creates the worktree from origin's branch
//! ([`Repo::drop_tampered_worktree`]). Every other git call runs in a
//! repository orch made (the bare clone, a clone view) and is refused for
//! a directory whose `.git` is a file.
//!
//! Commits and rebases pass `-c user.name=orch -c user.email=orch@localhost
//! -c commit.gpgsign=false -c rerere.enabled=false` so they work on a
//! machine with no git identity or signing key, and a conflict is never
//! silently auto-resolved.
//! Every failure is [`Error::Subprocess`] with the argv, the exit status and
//! the last ~2 KiB of stderr; refused names are [`Error::InvalidRef`].
//!
//! Layout: one bare clone per project at `<state_dir>/repos/<project>`
//! (remote `origin`, remote-tracking refs under `refs/remotes/origin/*`,
//! local branches only for task branches) and one worktree per task at
//! `<state_dir>/worktrees/<project>/<branch with / replaced by ->`.
//!
//! Locks (DESIGN §3): methods take the path locks they need themselves, in
//! the fixed order worktree → clone, and release them before returning.
//! The locks are flock(2) on separate open files, which is not re-entrant:
//! a caller must NOT already hold `path_lock` on the same worktree or clone
//! when calling a method of [`Repo`], or it deadlocks with itself.
//!
//! Files: `run` (running git), `safety` (program-running config, the
//! hooks probe), `names` (branch name and rev checks), `repo` ([`Repo`]:
//! locks, clone and fetch, refs, stale locks), `metadata` (the worktree
//! metadata check), `worktree` (a task worktree's life), `commit`
//! (commit and push), `merge` (rebase, merge in, fast-forward the default
//! branch), `view` (the agent's view of the clone).
//!
//! [`Error::UnsafeGitConfig`]: crate::error::Error::UnsafeGitConfig
//! [`Error::TamperedGitMetadata`]: crate::error::Error::TamperedGitMetadata
//! [`Error::Subprocess`]: crate::error::Error::Subprocess
//! [`Error::InvalidRef`]: crate::error::Error::InvalidRef

mod commit;
mod merge;
mod metadata;
mod names;
mod repo;
mod run;
mod safety;
mod view;
mod worktree;

pub use merge::{FastForward, MergeIn, RebaseOutcome};
pub use metadata::worktree_admin_dir;
pub use names::{validate_branch_name, validate_task_branch};
pub use repo::Repo;
pub use run::{redact_url, KEPT_ENV};
pub use safety::{audit, is_program_key, probe_hooks_off};
pub use view::{CloneView, ViewApplied};

#[cfg(test)]
mod fixture;
