//! The agent's private view of the shared clone: the refs, reflogs and
//! objects a sandboxed agent sees, and carrying its task branch back.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::names::validate_task_branch;
use super::run::{absolute, git_ok, run_git, utf8};
use super::Repo;
#[cfg(doc)]
use crate::error::Error;

/// What a sandboxed agent sees of the shared clone's refs, reflogs and
/// objects: private stand-ins that the sandbox binds over the clone's own
/// (DESIGN §4), so nothing the agent does there reaches another task.
///
/// - `refs/`: a copy of the clone's loose refs. Whatever the agent does to
///   a ref — another task's branch, a remote-tracking ref, `refs/stash` —
///   stays in the copy; [`Repo::apply_clone_view`] carries over one change,
///   the task branch's, by compare-and-swap. Packed refs are read from the
///   clone's `packed-refs`, which the agent sees read-only.
/// - `logs/`: empty (reflogs the agent writes are dropped).
/// - `objects/`: empty but for `info/alternates` naming `base-objects/`,
///   where the clone's object store is bound read-only: the agent reads
///   every object and writes new ones here. After the run orch *fetches*
///   the task branch from the view into the clone (the view is a bare
///   repository: `HEAD`, `refs/`, `objects/`), so only objects reachable
///   from the agent's branch arrive, each checked by git against its id;
///   an agent can neither delete nor corrupt an object another task's
///   history needs.
///
/// Serializable so a detached run's spec carries it to whoever records
/// the run's end (DESIGN §4 "Detached runs").
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneView {
    dir: PathBuf,
    branch: String,
    /// The branch's commit when the view was made.
    start: String,
    /// Every loose ref copied: its path under `refs/` → its content.
    snapshot: std::collections::BTreeMap<String, Vec<u8>>,
}

impl CloneView {
    /// The view's folder (gone once the view was applied).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The copy of `refs/`, to bind over `<clone>/refs`.
    pub fn refs_dir(&self) -> PathBuf {
        self.dir.join("refs")
    }

    /// The empty folder for reflogs, to bind over `<clone>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The private object store, to bind over `<clone>/objects`.
    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// Where the clone's object store is to be bound read-only (the
    /// private store's alternate).
    pub fn base_objects_dir(&self) -> PathBuf {
        self.dir.join("base-objects")
    }
}

/// What [`Repo::apply_clone_view`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ViewApplied {
    /// The task branch's new commit, when the agent moved it.
    pub moved_to: Option<String>,
    /// What was thrown away: refs other than the task branch the agent
    /// changed in its copy (names under `refs/`: `heads/orch/widget-2`,
    /// `stash`), and the task branch itself when the agent left something
    /// there that is not an object id.
    pub discarded: Vec<String>,
}

/// Most files read from a view's `refs/` (an agent could
/// create millions).
const MAX_VIEW_FILES: usize = 100_000;

/// Largest loose ref file read (an object id or `ref: …` line is tiny).
const MAX_REF_BYTES: u64 = 4096;

impl Repo {
    /// Makes the view of task branch `branch` in `dir` (emptied first):
    /// the clone's loose refs copied under the clone lock (lock files and
    /// symlinks left out), an empty `logs/`, an empty `objects/` whose
    /// alternate is `base-objects/`.
    ///
    /// Errors: [`Error::InvalidRef`] for a refused branch name; a branch
    /// that does not exist yet (the worktree is made first); I/O errors.
    pub fn clone_view(&self, dir: &Path, branch: &str) -> anyhow::Result<CloneView> {
        validate_task_branch(branch, &self.branch_prefix, &self.default_branch)?;
        let _clone = self.lock_clone()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        let snapshot = read_view_files(&self.clone_dir.join("refs"), MAX_REF_BYTES)?;
        let view = CloneView {
            dir: absolute(dir)?,
            branch: branch.to_string(),
            start: Self::resolve_ref(&self.clone_dir, &format!("refs/heads/{branch}"))?
                .with_context(|| format!("branch {branch} does not exist in the clone"))?,
            snapshot,
        };
        for d in [
            view.refs_dir(),
            view.logs_dir(),
            view.objects_dir().join("info"),
            view.objects_dir().join("pack"),
            view.base_objects_dir(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        self.write_view_repo_files(&view)?;
        for (name, content) in &view.snapshot {
            let path = view.refs_dir().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(view)
    }

    /// The files that make the view a bare repository orch can fetch from
    /// and the agent's git can use: `HEAD` (the task branch) and the
    /// private store's `info/alternates` — `base-objects/` (the clone's
    /// store as the sandbox binds it) and the clone's store by its own
    /// path (which is how the host sees it; inside the sandbox that path
    /// is the private store itself, and git skips an alternate that is its
    /// own object directory).
    fn write_view_repo_files(&self, view: &CloneView) -> anyhow::Result<()> {
        std::fs::write(
            view.dir.join("HEAD"),
            format!("ref: refs/heads/{}\n", view.branch),
        )?;
        let store = absolute(&self.clone_dir.join("objects"))?;
        std::fs::write(
            view.objects_dir().join("info/alternates"),
            format!("{}\n{}\n", utf8(&view.base_objects_dir())?, utf8(&store)?),
        )?;
        Ok(())
    }

    /// After the agent's run: when the agent moved the task branch in
    /// `view` to an object id, fetches that branch from the view into the
    /// clone (so exactly the objects it needs arrive, verified by git),
    /// checks that it names a commit, and moves the real branch there only
    /// if it is still where the view began (`git update-ref <ref> <new>
    /// <old>`); then deletes the view. Every other change in the view is
    /// reported in [`ViewApplied::discarded`] and dropped.
    ///
    /// Nothing is carried over from a run that changed its worktree's git
    /// metadata: `worktree` (the run's) is checked first
    /// (`Repo::check_worktree`, and its `HEAD` must still be the task
    /// branch).
    ///
    /// Errors: [`Error::TamperedGitMetadata`]; the fetch fails (a corrupt
    /// or missing object); the real branch moved during the run (someone
    /// else wrote it); a view with more than 100,000 files in `refs/`; git
    /// and I/O errors. The view is deleted either way.
    pub fn apply_clone_view(
        &self,
        view: CloneView,
        worktree: &Path,
    ) -> anyhow::Result<ViewApplied> {
        let result = absolute(worktree)
            .and_then(|w| self.check_worktree(&w))
            .and_then(|wt| Self::check_head(&wt, &view.branch))
            .and_then(|()| self.apply_clone_view_inner(&view));
        let _ = std::fs::remove_dir_all(&view.dir);
        result
    }

    fn apply_clone_view_inner(&self, view: &CloneView) -> anyhow::Result<ViewApplied> {
        let own = format!("heads/{}", view.branch);
        let after = read_view_files(&view.refs_dir(), MAX_REF_BYTES)?;
        let mut applied = ViewApplied::default();
        for name in view.snapshot.keys().chain(after.keys()) {
            if *name != own
                && view.snapshot.get(name) != after.get(name)
                && !applied.discarded.contains(name)
            {
                applied.discarded.push(name.clone());
            }
        }
        let candidate = after
            .get(&own)
            .filter(|content| Some(*content) != view.snapshot.get(&own));
        let Some(content) = candidate else {
            return Ok(applied);
        };
        let new = match parse_object_id(content) {
            Some(new) if new == view.start => return Ok(applied),
            Some(new) => new,
            None => {
                applied.discarded.push(own);
                return Ok(applied);
            }
        };
        let reference = format!("refs/{own}");
        let _clone = self.lock_clone()?;
        // The agent could have rewritten these in its view: write them anew.
        self.write_view_repo_files(view)?;
        git_ok(
            &self.clone_dir,
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                utf8(&view.dir)?,
                &reference,
            ],
        )
        .with_context(|| format!("fetching the agent's {reference} from its view"))?;
        if !self.is_commit(&new)? {
            applied.discarded.push(own);
            return Ok(applied);
        }
        git_ok(
            &self.clone_dir,
            &["update-ref", &reference, &new, &view.start],
        )
        .with_context(|| {
            format!("{reference} moved during the agent's run; its commit {new} is not applied")
        })?;
        applied.moved_to = Some(new);
        Ok(applied)
    }

    /// After a sandboxed run, whose private object store is gone: when the
    /// worktree's index names an object the clone lacks (the agent staged
    /// files into its private store and did not commit them) or holds
    /// unmerged entries, resets the index to `HEAD`, so the next
    /// [`Repo::commit_all`] adds the files from the worktree again. The
    /// worktree's files are not touched. Returns whether it reset.
    /// Holds the worktree lock.
    ///
    /// Errors: not a worktree of this clone; git errors.
    pub fn repair_index(&self, worktree: &Path) -> anyhow::Result<bool> {
        let worktree = absolute(worktree)?;
        let _wt = self.lock(&worktree)?;
        let wt = self.check_worktree(&worktree)?;
        Self::clear_stale_index_lock(&wt)?;
        if run_git(&wt, &["write-tree"])?.success() {
            return Ok(false);
        }
        git_ok(&wt, &["read-tree", "HEAD"])?;
        Ok(true)
    }

    /// Whether `id` (a full object id) names a commit in the clone.
    fn is_commit(&self, id: &str) -> anyhow::Result<bool> {
        let out = run_git(&self.clone_dir, &["cat-file", "-t", id])?;
        Ok(out.success() && out.stdout.trim() == "commit")
    }
}

/// The regular files under `root` (symlinks and other kinds left out), as
/// `/`-separated paths relative to it.
///
/// Errors: more than [`MAX_VIEW_FILES`] entries; I/O errors.
fn walk_regular_files(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            seen += 1;
            if seen > MAX_VIEW_FILES {
                bail!("more than {MAX_VIEW_FILES} files under {}", root.display());
            }
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                if let Some(name) = path.strip_prefix(root).ok().and_then(Path::to_str) {
                    out.push(name.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// The loose refs under `root`: path relative to it → content; lock
/// files, symlinks and files over `max_bytes` left out.
///
/// Errors: as [`walk_regular_files`].
fn read_view_files(
    root: &Path,
    max_bytes: u64,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    for name in walk_regular_files(root)? {
        let path = root.join(&name);
        if name.ends_with(".lock") || std::fs::metadata(&path)?.len() > max_bytes {
            continue;
        }
        out.insert(name, std::fs::read(&path)?);
    }
    Ok(out)
}

/// A loose ref's object id (40 or 64 lowercase hex digits and a newline);
/// `None` for a symbolic ref or anything else.
fn parse_object_id(content: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(content).ok()?;
    let id = s.strip_suffix('\n').unwrap_or(s);
    ((id.len() == 40 || id.len() == 64)
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::*;
    use crate::git::run::{run_git_env, At, COMMIT_CONFIG};

    #[test]
    fn a_clone_view_carries_over_only_the_task_branch_and_new_objects() {
        let f = fixture();
        let (wt1, wt2) = (f.wt(1), f.wt(2));
        f.repo.ensure_worktree(&wt1, "orch/p-1").unwrap();
        f.repo.ensure_worktree(&wt2, "orch/p-2").unwrap();
        let clone = f.repo.clone_dir.clone();
        let real = |b: &str| {
            Repo::resolve_ref(&clone, &format!("refs/heads/{b}"))
                .unwrap()
                .unwrap()
        };
        let (p1, p2) = (real("orch/p-1"), real("orch/p-2"));
        let dir = f.root.join("views/task-1");
        // What an agent's git does in its view: commit on its branch (the
        // commit object lands in the private store, reading the clone's
        // through its alternates, as in the sandbox), move another task's
        // branch, stash, plant a file in the object store.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let private = view.objects_dir();
        let in_view = |args: &[&str]| {
            let mut full: Vec<&str> = COMMIT_CONFIG.to_vec();
            full.extend_from_slice(args);
            run_git_env(
                At::Worktree(&f.at(&wt1)),
                &full,
                &[("GIT_OBJECT_DIRECTORY", private.to_str().unwrap())],
            )
            .unwrap()
            .ok()
            .unwrap()
            .trim()
            .to_string()
        };
        let commit = in_view(&["commit-tree", "-p", "HEAD", "-m", "agent", "HEAD^{tree}"]);
        assert!(
            !f.repo.is_commit(&commit).unwrap(),
            "not in the clone's store yet"
        );
        std::fs::write(
            view.refs_dir().join("heads/orch/p-1"),
            format!("{commit}\n"),
        )
        .unwrap();
        std::fs::write(
            view.refs_dir().join("heads/orch/p-2"),
            format!("{commit}\n"),
        )
        .unwrap();
        std::fs::write(view.refs_dir().join("stash"), format!("{commit}\n")).unwrap();
        std::fs::write(private.join("evil.sh"), "#!/bin/sh\n").unwrap();
        let applied = f.repo.apply_clone_view(view, &wt1).unwrap();
        assert_eq!(applied.moved_to.as_deref(), Some(commit.as_str()));
        assert_eq!(applied.discarded, ["heads/orch/p-2", "stash"]);
        assert_eq!(real("orch/p-1"), commit);
        assert!(f.repo.is_commit(&commit).unwrap(), "fetched into the clone");
        assert_eq!(real("orch/p-2"), p2, "another task's branch is untouched");
        assert!(!clone.join("objects/evil.sh").exists());
        assert!(!dir.exists(), "the view is removed");
        assert_ne!(p1, commit);

        // A corrupt object under the branch: the fetch refuses it, nothing
        // moves, nothing of it reaches the clone's store.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let fake = format!("ab{}", "c".repeat(38));
        std::fs::create_dir_all(view.objects_dir().join("ab")).unwrap();
        std::fs::write(
            view.objects_dir().join("ab").join("c".repeat(38)),
            "garbage",
        )
        .unwrap();
        std::fs::write(view.refs_dir().join("heads/orch/p-1"), format!("{fake}\n")).unwrap();
        let err = f.repo.apply_clone_view(view, &wt1).unwrap_err();
        assert!(
            format!("{err:#}").contains("fetching the agent's"),
            "{err:#}"
        );
        assert_eq!(real("orch/p-1"), commit);
        assert!(!clone.join("objects/ab").join("c".repeat(38)).exists());
        assert!(!dir.exists(), "the view is removed after a failure too");

        // Something that is not a commit on the branch is not applied.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let blob = sh(&f.at(&wt1), &["hash-object", "-w", "README"]);
        std::fs::write(view.refs_dir().join("heads/orch/p-1"), format!("{blob}\n")).unwrap();
        let applied = f.repo.apply_clone_view(view, &wt1).unwrap();
        assert_eq!(applied.moved_to, None);
        assert_eq!(applied.discarded, ["heads/orch/p-1"]);
        assert_eq!(real("orch/p-1"), commit);

        // The real branch moved during the run: the view is not applied.
        let view = f.repo.clone_view(&dir, "orch/p-1").unwrap();
        let other = sh(
            &f.at(&wt1),
            &["commit-tree", "-p", "HEAD", "-m", "agent 2", "HEAD^{tree}"],
        );
        std::fs::write(view.refs_dir().join("heads/orch/p-1"), format!("{other}\n")).unwrap();
        std::fs::write(wt1.join("README"), "moved by someone else\n").unwrap();
        let moved = f.repo.commit_all(&wt1, "someone else").unwrap().unwrap();
        let err = f.repo.apply_clone_view(view, &wt1).unwrap_err();
        assert!(
            format!("{err:#}").contains("moved during the agent's run"),
            "{err:#}"
        );
        assert_eq!(real("orch/p-1"), moved);
    }
}
