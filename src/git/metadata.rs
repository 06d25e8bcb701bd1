//! The check of a worktree's git metadata (an agent can write it) against
//! what `git worktree add` wrote, run before git touches a worktree: the
//! `.git` file, the admin folder's `commondir`, `gitdir` and `HEAD`, and a
//! rebase's `head-name` (DESIGN §11, invariant 8; see the module doc).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::names::validate_task_branch;
use super::run::{git_ok, run_git};
use super::Repo;
#[cfg(doc)]
use super::{audit, run::At};
use crate::error::Error;

/// A worktree of the clone whose git metadata [`Repo::check_worktree`]
/// checked against what orch wrote: git runs there with these paths given
/// explicitly ([`At::Worktree`]).
#[derive(Debug, Clone)]
pub(super) struct Worktree {
    /// The worktree, absolute.
    pub(super) path: PathBuf,
    /// Its admin folder, `<clone>/worktrees/<name>` (the clone's real path).
    pub(super) admin: PathBuf,
    /// The clone's real path: the common git directory.
    pub(super) common: PathBuf,
}

/// Largest git metadata file read (a `gitdir:` line, a ref name).
const MAX_META_BYTES: u64 = 4096;

/// The text of `path` when it is a regular file (not a symbolic link) of at
/// most [`MAX_META_BYTES`]; else what it is instead, phrased to follow the
/// file's name in a message ("is missing", "is a directory", …).
pub(super) fn read_plain_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("is missing".into()),
        Err(e) => return Err(format!("cannot be read ({e})")),
    };
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(path).unwrap_or_default();
        return Err(format!("is a symbolic link to {}", to.display()));
    }
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_META_BYTES {
        return Err(format!("is {} bytes long", meta.len()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_META_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("cannot be read ({e})"))?;
    Ok(text)
}

/// `text` for a message: quoted, escaped, at most 200 characters.
fn shown(text: &str) -> String {
    let t = text.strip_suffix('\n').unwrap_or(text);
    match t.char_indices().nth(200) {
        Some((end, _)) => format!("{:?}…", &t[..end]),
        None => format!("{t:?}"),
    }
}

/// The admin folder (`<clone>/worktrees/<name>`) that worktree
/// `worktree`'s `.git` file (a regular file) points to, canonical, when
/// that folder names the worktree back (its `gitdir` is `<worktree>/.git`)
/// and its `commondir` is `../..`; `None` otherwise. For the sandbox's
/// writable list, made right after a [`Repo`] method checked the worktree:
/// the back-reference keeps a `.git` changed since then from making some
/// other folder writable.
pub fn worktree_admin_dir(worktree: &Path) -> Option<PathBuf> {
    read_plain_file(&worktree.join(".git")).ok()?;
    let admin = Repo::worktree_gitdir(worktree)?.canonicalize().ok()?;
    let own = worktree.canonicalize().ok()?.join(".git");
    let back = read_plain_file(&admin.join("gitdir")).ok()?;
    let common = read_plain_file(&admin.join("commondir")).ok()?;
    (Path::new(back.trim_end()) == own && common.trim_end() == "../..").then_some(admin)
}

impl Repo {
    /// The admin directory a worktree's `.git` file points to, if it has
    /// one. Unchecked: for reading only ([`audit`], [`Repo::worktree_branch`],
    /// recognising an orphan); git runs only on [`Repo::check_worktree`]'s
    /// answer.
    pub(super) fn worktree_gitdir(worktree: &Path) -> Option<PathBuf> {
        let text = std::fs::read_to_string(worktree.join(".git")).ok()?;
        let dir = text.strip_prefix("gitdir:")?.trim();
        let dir = Path::new(dir);
        Some(if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            worktree.join(dir)
        })
    }

    /// Checks that `worktree` (absolute) is a worktree of this clone whose
    /// git metadata is what `git worktree add` wrote for it, and returns
    /// the paths git is then run with ([`At::Worktree`]):
    ///
    /// - `<worktree>/.git` is a regular file (not a directory, not a
    ///   symbolic link) holding exactly `gitdir: <clone>/worktrees/<name>`,
    ///   `<clone>` being the clone's real path;
    /// - that admin folder is a real directory (not a symbolic link);
    /// - its `commondir` holds `../..` (the clone) and its `gitdir` the
    ///   worktree's own `.git` (real path).
    ///
    /// Errors: [`Error::TamperedGitMetadata`] naming the first file that
    /// differs and what it held; an error when the clone is missing or the
    /// admin folder no longer exists (the clone was re-created).
    pub(super) fn check_worktree(&self, worktree: &Path) -> anyhow::Result<Worktree> {
        let clone = self
            .clone_dir
            .canonicalize()
            .with_context(|| format!("clone {} is missing", self.clone_dir.display()))?;
        let tampered = |file: PathBuf, found: String, expected: String| -> anyhow::Error {
            let e = Error::TamperedGitMetadata {
                worktree: worktree.to_path_buf(),
                file,
                found,
                expected,
            };
            tracing::error!(target: "git", error = %e, "refusing to run git in a worktree");
            e.into()
        };
        let worktrees = clone.join("worktrees");
        let dotgit = worktree.join(".git");
        let text = match read_plain_file(&dotgit) {
            Ok(text) => text,
            Err(found) => {
                return Err(tampered(
                    dotgit,
                    found,
                    format!("a file `gitdir: {}/<name>`", worktrees.display()),
                ))
            }
        };
        let named = text
            .strip_suffix('\n')
            .unwrap_or(&text)
            .strip_prefix("gitdir: ")
            .map(PathBuf::from)
            .filter(|p| {
                p.parent() == Some(worktrees.as_path())
                    && matches!(
                        p.components().next_back(),
                        Some(std::path::Component::Normal(_))
                    )
            });
        let Some(admin) = named else {
            return Err(tampered(
                dotgit,
                format!("says {}", shown(&text)),
                format!("`gitdir: {}/<name>`", worktrees.display()),
            ));
        };
        match std::fs::symlink_metadata(&admin) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(tampered(
                    admin,
                    "is not a directory".into(),
                    "the worktree's admin folder".into(),
                ))
            }
            Err(_) => bail!(
                "worktree {} points to {}, which no longer exists (was the clone re-created?)",
                worktree.display(),
                admin.display()
            ),
        }
        let commondir = admin.join("commondir");
        match read_plain_file(&commondir) {
            Ok(t) if t.strip_suffix('\n').unwrap_or(&t) == "../.." => {}
            Ok(t) => {
                return Err(tampered(
                    commondir,
                    format!("points to {}", shown(&t)),
                    format!("`../..` (the clone {})", clone.display()),
                ))
            }
            Err(found) => {
                return Err(tampered(
                    commondir,
                    found,
                    format!("`../..` (the clone {})", clone.display()),
                ))
            }
        }
        let own = worktree
            .canonicalize()
            .with_context(|| format!("resolving {}", worktree.display()))?
            .join(".git");
        let back = admin.join("gitdir");
        match read_plain_file(&back) {
            Ok(t) if Path::new(t.strip_suffix('\n').unwrap_or(&t)) == own => {}
            Ok(t) => {
                // When the worktree that folder names claims it back, it is
                // this worktree's `.git` that was pointed at another's.
                let other = Path::new(t.strip_suffix('\n').unwrap_or(&t));
                let claimed = read_plain_file(other).is_ok_and(|o| {
                    o.strip_suffix('\n').unwrap_or(&o) == format!("gitdir: {}", admin.display())
                });
                return Err(if claimed {
                    tampered(
                        dotgit,
                        format!(
                            "names {}, the admin folder of {}",
                            admin.display(),
                            other.parent().unwrap_or(other).display()
                        ),
                        format!(
                            "this worktree's own `gitdir: {}/<name>`",
                            worktrees.display()
                        ),
                    )
                } else {
                    tampered(
                        back,
                        format!("points to {}", shown(&t)),
                        format!("`{}`", own.display()),
                    )
                });
            }
            Err(found) => return Err(tampered(back, found, format!("`{}`", own.display()))),
        }
        Ok(Worktree {
            path: worktree.to_path_buf(),
            admin,
            common: clone,
        })
    }

    /// Refuses ([`Error::TamperedGitMetadata`]) a worktree whose `HEAD` is
    /// not the symbolic ref `refs/heads/<branch>`: orch commits and pushes
    /// only on the task's own branch.
    pub(super) fn check_head(wt: &Worktree, branch: &str) -> anyhow::Result<()> {
        let file = wt.admin.join("HEAD");
        let want = format!("ref: refs/heads/{branch}");
        match read_plain_file(&file) {
            Ok(t) if t.strip_suffix('\n').unwrap_or(&t) == want => Ok(()),
            found => {
                let found = match found {
                    Ok(t) => format!("says {}", shown(&t)),
                    Err(f) => f,
                };
                let e = Error::TamperedGitMetadata {
                    worktree: wt.path.clone(),
                    file,
                    found,
                    expected: format!("`{want}`"),
                };
                tracing::error!(target: "git", error = %e, "refusing to run git in a worktree");
                Err(e.into())
            }
        }
    }

    /// The branch the worktree at `worktree` has checked out; `None` when
    /// HEAD is detached or unreadable.
    ///
    /// Guarantees: read-only, and runs no git: it reads the `HEAD` file the
    /// worktree's `.git` names (for observing a worktree that is not this
    /// clone's, such as a staged instance's). Assumptions: no lock taken.
    /// Errors: none in practice (kept for callers).
    pub fn worktree_branch(worktree: &Path) -> anyhow::Result<Option<String>> {
        let dotgit = worktree.join(".git");
        let gitdir = if dotgit.is_dir() {
            dotgit
        } else {
            let Some(g) = Self::worktree_gitdir(worktree) else {
                return Ok(None);
            };
            g
        };
        Ok(read_plain_file(&gitdir.join("HEAD")).ok().and_then(|t| {
            t.trim_end()
                .strip_prefix("ref: refs/heads/")
                .map(str::to_string)
        }))
    }

    /// The branch `worktree` has checked out; `None` when HEAD is detached.
    pub(super) fn current_branch(wt: &Worktree) -> anyhow::Result<Option<String>> {
        let out = run_git(wt, &["symbolic-ref", "--quiet", "HEAD"])?;
        match out.code() {
            Some(0) => Ok(out
                .stdout
                .trim_end()
                .strip_prefix("refs/heads/")
                .map(str::to_string)),
            Some(1) => Ok(None),
            _ => Err(out.into_error().into()),
        }
    }

    pub(super) fn rebase_in_progress(admin_dir: &Path) -> bool {
        admin_dir.join("rebase-merge").exists() || admin_dir.join("rebase-apply").exists()
    }

    /// Abort a rebase a crashed orch left half-done, after
    /// [`Repo::check_rebase_state`]. Caller holds the worktree lock.
    pub(super) fn abort_stale_rebase(
        &self,
        wt: &Worktree,
        branch: Option<&str>,
    ) -> anyhow::Result<()> {
        if !Self::rebase_in_progress(&wt.admin) {
            return Ok(());
        }
        self.check_rebase_state(wt, branch)?;
        tracing::warn!(worktree = %wt.path.display(), "aborting a rebase left in progress");
        git_ok(wt, &["rebase", "--abort"])?;
        Ok(())
    }

    /// `git rebase --abort` moves the ref the rebase state's `head-name`
    /// names and checks it out, so that file (agent-writable, like the
    /// whole admin folder) must name the task branch: `branch` when the
    /// caller knows it, else any valid task branch.
    ///
    /// Errors: [`Error::TamperedGitMetadata`] for another `head-name`.
    pub(super) fn check_rebase_state(
        &self,
        wt: &Worktree,
        branch: Option<&str>,
    ) -> anyhow::Result<()> {
        for state in ["rebase-merge", "rebase-apply"] {
            if !wt.admin.join(state).exists() {
                continue;
            }
            let file = wt.admin.join(state).join("head-name");
            let found = read_plain_file(&file);
            let named = found.as_deref().ok().and_then(|t| {
                t.strip_suffix('\n')
                    .unwrap_or(t)
                    .strip_prefix("refs/heads/")
            });
            let ok = match (named, branch) {
                (Some(n), Some(b)) => n == b,
                (Some(n), None) => {
                    validate_task_branch(n, &self.branch_prefix, &self.default_branch).is_ok()
                }
                (None, _) => false,
            };
            if !ok {
                let e = Error::TamperedGitMetadata {
                    worktree: wt.path.clone(),
                    file,
                    found: match found {
                        Ok(t) => format!("says {}", shown(&t)),
                        Err(f) => f,
                    },
                    expected: branch.map_or_else(
                        || format!("`refs/heads/{}<name>`", self.branch_prefix),
                        |b| format!("`refs/heads/{b}`"),
                    ),
                };
                tracing::error!(target: "git", error = %e, "refusing to abort a rebase");
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::*;
    use std::process::Command;

    #[test]
    fn methods_refuse_a_directory_that_is_not_one_of_our_worktrees() {
        let f = fixture();
        f.repo.sync().unwrap();
        // The scratch clone is a git repo, but not a worktree of our clone.
        assert!(f.repo.commit_all(&f.scratch, "x").is_err());
        assert!(f.repo.head_sha(&f.scratch).is_err());
        assert!(f.repo.remove_worktree(&f.scratch).is_err());
        assert!(f.scratch.join(".git").exists());
    }

    /// The file a [`Error::TamperedGitMetadata`] in `err`'s chain names.
    fn tampered_file(err: &anyhow::Error) -> PathBuf {
        match err.chain().find_map(|c| c.downcast_ref::<Error>()) {
            Some(Error::TamperedGitMetadata { file, .. }) => file.clone(),
            _ => panic!("expected TamperedGitMetadata, got {err:#}"),
        }
    }

    #[test]
    fn a_worktree_whose_git_metadata_changed_is_refused_and_then_recreated() {
        let f = fixture();
        let (wt, _) = f.work(1, "a", "1");
        f.work(2, "a", "2");
        f.repo.push_branch(&wt, "orch/p-1").unwrap();
        let pushed = f.origin_sha("refs/heads/orch/p-1");
        let admin = f.at(&wt).admin;
        // A repository of the attacker's: a copy of the clone whose origin
        // is its own bare repository.
        let evil = f.root.join("evil.git");
        let target = f.root.join("evil-target.git");
        sh(&f.root, &["init", "-q", "--bare", "evil-target.git"]);
        let copy = Command::new("cp")
            .arg("-a")
            .arg(&f.repo.clone_dir)
            .arg(&evil)
            .status()
            .unwrap();
        assert!(copy.success());
        sh(
            &evil,
            &["config", "remote.origin.url", target.to_str().unwrap()],
        );
        let fake = f.root.join("fake");
        sh(&f.root, &["init", "-q", "fake"]);
        let other_branch = "ref: refs/heads/orch/p-2\n".to_string();
        type Tamper<'a> = Box<dyn Fn() + 'a>;
        let cases: Vec<(&str, PathBuf, Tamper)> = vec![
            (
                "commondir → the attacker's copy",
                admin.join("commondir"),
                Box::new(|| {
                    std::fs::write(admin.join("commondir"), format!("{}\n", evil.display()))
                        .unwrap()
                }),
            ),
            (
                "commondir removed (the admin folder a repository of its own)",
                admin.join("commondir"),
                Box::new(|| std::fs::remove_file(admin.join("commondir")).unwrap()),
            ),
            (
                "gitdir → elsewhere",
                admin.join("gitdir"),
                Box::new(|| {
                    std::fs::write(
                        admin.join("gitdir"),
                        format!("{}\n", fake.join(".git").display()),
                    )
                    .unwrap()
                }),
            ),
            (
                ".git → the attacker's worktree admin",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::write(
                        wt.join(".git"),
                        format!("gitdir: {}\n", evil.join("worktrees/orch-p-1").display()),
                    )
                    .unwrap()
                }),
            ),
            (
                ".git → another task's admin folder",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::write(
                        wt.join(".git"),
                        format!("gitdir: {}\n", f.at(&f.wt(2)).admin.display()),
                    )
                    .unwrap()
                }),
            ),
            (
                ".git a directory (a whole repository)",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::remove_file(wt.join(".git")).unwrap();
                    let c = Command::new("cp")
                        .arg("-a")
                        .arg(fake.join(".git"))
                        .arg(wt.join(".git"))
                        .status()
                        .unwrap();
                    assert!(c.success());
                }),
            ),
            (
                ".git a symbolic link",
                wt.join(".git"),
                Box::new(|| {
                    std::fs::remove_file(wt.join(".git")).unwrap();
                    std::os::unix::fs::symlink(fake.join(".git"), wt.join(".git")).unwrap();
                }),
            ),
            (
                "HEAD → another task's branch",
                admin.join("HEAD"),
                Box::new(|| std::fs::write(admin.join("HEAD"), &other_branch).unwrap()),
            ),
            (
                "a planted rebase whose head-name is another branch",
                admin.join("rebase-merge/head-name"),
                Box::new(|| {
                    std::fs::create_dir_all(admin.join("rebase-merge")).unwrap();
                    std::fs::write(
                        admin.join("rebase-merge/head-name"),
                        "refs/remotes/origin/main\n",
                    )
                    .unwrap();
                    std::fs::write(admin.join("rebase-merge/orig-head"), format!("{pushed}\n"))
                        .unwrap();
                }),
            ),
        ];
        for (what, file, tamper) in &cases {
            f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
            tamper();
            std::fs::write(wt.join("b"), what).unwrap();
            let err = f.repo.ensure_worktree(&wt, "orch/p-1").unwrap_err();
            assert_eq!(&tampered_file(&err), file, "{what}: {err:#}");
            assert!(crate::error::is_permanent(&err), "{what}");
            assert!(
                format!("{err:#}").contains("refusing to run git"),
                "{err:#}"
            );
            if !what.starts_with("HEAD") && !what.starts_with("a planted") {
                for err in [
                    f.repo.commit_all(&wt, "x").unwrap_err(),
                    f.repo.push_branch(&wt, "orch/p-1").unwrap_err(),
                    f.repo.head_sha(&wt).unwrap_err(),
                    f.repo.conflict_marked_files(&wt).unwrap_err(),
                    f.repo.discard_changes(&wt).unwrap_err(),
                    f.repo.is_ancestor(&wt, &pushed, &pushed).unwrap_err(),
                ] {
                    assert_eq!(&tampered_file(&err), file, "{what}: {err:#}");
                }
            }
            if what.starts_with("HEAD") {
                let err = f.repo.push_branch(&wt, "orch/p-1").unwrap_err();
                assert_eq!(&tampered_file(&err), file, "{what}: {err:#}");
            }
            // Nothing reached the attacker's repositories or origin.
            assert_eq!(sh(&target, &["for-each-ref"]), "", "{what}");
            assert_eq!(f.origin_sha("refs/heads/orch/p-1"), pushed, "{what}");
            // The next run throws the worktree away and re-creates it from
            // what origin has.
            assert!(
                f.repo.drop_tampered_worktree(&wt, "orch/p-1").unwrap(),
                "{what}"
            );
            f.repo.ensure_worktree(&wt, "orch/p-1").unwrap();
            assert_eq!(f.repo.head_sha(&wt).unwrap(), pushed, "{what}");
            assert!(!wt.join("b").exists(), "{what}");
            assert_eq!(
                f.at(&wt).admin,
                admin,
                "{what}: the admin folder's name is reused"
            );
            assert!(!f.repo.drop_tampered_worktree(&wt, "orch/p-1").unwrap());
        }
        assert!(f.scratch.join(".git").is_dir());
        // The other task's worktree was left alone throughout.
        f.repo.ensure_worktree(&f.wt(2), "orch/p-2").unwrap();
    }
}
