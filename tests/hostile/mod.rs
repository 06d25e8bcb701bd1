//! The hostile-agent suite (issue 20; DESIGN §11 INV-8): one test per
//! route by which what an agent leaves behind — worktree files (the test
//! script), its verdict and summary, its result JSON, its exit, the git
//! metadata of its worktree — could run or be read with orch's privileges.
//!
//! Every test runs in a sandbox under `/var/tmp` (a sandboxed agent's
//! `/tmp` is a private tmpfs: an attack aimed there hides everything and
//! proves nothing) with bubblewrap required, and ends by asserting what a
//! person would check: no secret value in any prompt, log, commit, tracker
//! comment, database row or file outside the worktrees
//! ([`Hostile::assert_no_leak`]), and nothing outside the worktree changed
//! ([`Snapshot`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::util::Sandbox;

mod admin_listener;
mod database;
mod git_metadata;
mod secrets_file;
mod service_manager;
mod session_id;
mod test_script;
mod verdict_path;
mod write_outside;

/// Where hostile sandboxes live: not `/tmp` (see the module doc).
pub const BASE: &str = "/var/tmp/orch-tests";

/// The secret values the sandbox's orch holds, each recognisable in any
/// text. Every one is in orch's environment; the `.env` and the secrets
/// file hold some of them too.
pub const SECRETS: &[(&str, &str)] = &[
    ("ORCH_PLANE_WEBHOOK_SECRET", crate::util::PLANE_SECRET),
    ("ORCH_GITEA_WEBHOOK_SECRET", crate::util::GITEA_SECRET),
    ("ORCH_GITEA_TOKEN", "canary-gitea-token-6f1d"),
    ("ORCH_PLANE_API_KEY", "canary-plane-key-92ab"),
    ("ORCH_TELEGRAM_BOT_TOKEN", "canary-telegram-token-3c77"),
];

/// A secret that only the `.env` file in orch's working directory holds.
pub const ENV_FILE_SECRET: &str = "canary-dotenv-5e0a";

/// A secret that only the secrets file (`secrets.env`, listed in
/// `ORCH_AGENT_SANDBOX_HIDE`) holds.
pub const SECRETS_FILE_SECRET: &str = "canary-secrets-file-a41c";

/// A sandbox whose agents run under bubblewrap, whose orch holds every
/// [`SECRETS`] value, with a `.env` and a secrets file on disk, and a
/// canary folder outside everything orch or the agent should write.
pub struct Hostile {
    pub sbx: Sandbox,
    /// A folder the agent must not be able to write or read into:
    /// `<sbx>/outside/` with one file, `canary.txt`.
    pub outside: PathBuf,
    /// The secrets file (`<sbx>/secrets.env`, mode 0600).
    pub secrets_file: PathBuf,
    /// Holds the copy of `scripts/fake-agent` that hostile scripts end
    /// with (outside `/tmp`, so the sandbox shows it).
    agent_dir: tempfile::TempDir,
}

impl Hostile {
    /// The sandbox, or `None` (the test is skipped, saying so) when
    /// bubblewrap does not work on this machine. Under CI (`CI` set) a
    /// missing bubblewrap fails the test instead: `.ci/run` installs it.
    pub fn new() -> Option<Hostile> {
        if let Err(why) = orch::process::bwrap_usable() {
            assert!(
                std::env::var_os("CI").is_none(),
                "bubblewrap must work under CI: {why}"
            );
            eprintln!("SKIPPED: bubblewrap does not work here: {why}");
            return None;
        }
        let mut sbx = Sandbox::new_in(Path::new(BASE));
        sbx.set("ORCH_AGENT_SANDBOX", "bwrap");
        for (k, v) in SECRETS {
            sbx.set(k, v);
        }
        // The settings file keeps the settings; the secrets move to the
        // secrets file, as `scripts/install` lays them out.
        let settings = sbx.dir.join("orch.env");
        let kept: String = std::fs::read_to_string(&settings)
            .unwrap()
            .lines()
            .filter(|l| !SECRETS.iter().any(|(k, _)| l.contains(k)))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&settings, kept).unwrap();
        let secrets_file = sbx.dir.join("secrets.env");
        let mut held = format!("ORCH_SECRETS_CANARY={SECRETS_FILE_SECRET}\n");
        for (k, v) in SECRETS {
            held += &format!("{k}={v}\n");
        }
        std::fs::write(&secrets_file, held).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secrets_file, std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        sbx.set(
            "ORCH_AGENT_SANDBOX_HIDE",
            &secrets_file.display().to_string(),
        );
        std::fs::write(
            sbx.dir.join(".env"),
            format!("ORCH_DOTENV_CANARY={ENV_FILE_SECRET}\n"),
        )
        .unwrap();
        let outside = sbx.dir.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("canary.txt"), "untouched\n").unwrap();
        let agent_dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fake-agent"),
            agent_dir.path().join("fake-agent"),
        )
        .unwrap();
        Some(Hostile {
            sbx,
            outside,
            secrets_file,
            agent_dir,
        })
    }

    /// Every secret value the sandbox holds ([`SECRETS`], the `.env`'s and
    /// the secrets file's).
    pub fn secret_values() -> Vec<&'static str> {
        SECRETS
            .iter()
            .map(|(_, v)| *v)
            .chain([ENV_FILE_SECRET, SECRETS_FILE_SECRET])
            .collect()
    }

    /// The path of the fake agent copy (absolute, visible in the sandbox).
    pub fn fake_agent(&self) -> PathBuf {
        self.agent_dir.path().join("fake-agent")
    }

    /// Makes `role`'s agent run `script` in `/bin/sh` first, then `exec`
    /// the fake agent (so the stage's real work and verdict still happen,
    /// as a hostile agent would hide its attack in a good run).
    pub fn agent_runs_first(&self, role: &str, script: &str) {
        let full = format!("{script}\nexec '{}'\n", self.fake_agent().display());
        let argv = serde_json::to_string(&["/bin/sh", "-c", &full]).unwrap();
        self.sbx
            .append_config(&format!("\n[agents.{role}]\nargv = {argv}\n"));
    }

    /// Asserts that no secret value appears anywhere a person or a later
    /// agent could read it: every file under the sandbox (prompts, agent
    /// and CI logs, the clone, worktrees, the outside folder) except the
    /// `.env` and the secrets file themselves, every column of every row
    /// of the database (tracker comments and notifications are outbox
    /// rows), and every object of the origin and of the shared clones
    /// (commits, trees, blobs), read through git because objects are
    /// compressed on disk.
    pub fn assert_no_leak(&self) {
        let secrets = Hostile::secret_values();
        let skip = [self.sbx.dir.join(".env"), self.secrets_file.clone()];
        let mut files = Vec::new();
        walk(&self.sbx.dir, &mut files);
        for f in files.iter().filter(|f| !skip.contains(f)) {
            let Ok(bytes) = std::fs::read(f) else {
                continue;
            };
            for s in &secrets {
                assert!(
                    !contains(&bytes, s.as_bytes()),
                    "secret {s:?} leaked into {}",
                    f.display()
                );
            }
        }
        let db = self.sbx.db();
        for t in db.table_names().unwrap() {
            let mut st = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
            let n = st.column_count();
            let cells = st
                .query_map([], |r| {
                    Ok((0..n)
                        .filter_map(|i| match r.get_ref(i).unwrap() {
                            orch::sql::ValueRef::Text(t) => Some(t.as_bytes().to_vec()),
                            orch::sql::ValueRef::Blob(b) => Some(b.to_vec()),
                            _ => None,
                        })
                        .collect::<Vec<_>>())
                })
                .unwrap();
            for bytes in cells.flat_map(Result::unwrap) {
                for s in &secrets {
                    assert!(
                        !contains(&bytes, s.as_bytes()),
                        "secret {s:?} leaked into table {t}"
                    );
                }
            }
        }
        let mut repos = vec![self.sbx.origin()];
        if let Ok(rd) = std::fs::read_dir(self.sbx.state_dir().join("repos")) {
            repos.extend(rd.map(|e| e.unwrap().path()));
        }
        for repo in repos {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(["cat-file", "--batch-all-objects", "--batch"])
                .output()
                .unwrap();
            assert!(out.status.success(), "git cat-file in {}", repo.display());
            for s in &secrets {
                assert!(
                    !contains(&out.stdout, s.as_bytes()),
                    "secret {s:?} leaked into a git object of {}",
                    repo.display()
                );
            }
        }
    }
}

/// What a set of folders and files holds: each file's path, mode and
/// content hash (symlinks by their target). Taken before an attack and
/// compared after it: the attack changed nothing there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<PathBuf, String>);

impl Snapshot {
    /// The snapshot of `roots` (folders walked recursively; a missing
    /// root is recorded as missing).
    pub fn of(roots: &[&Path]) -> Snapshot {
        use std::os::unix::fs::PermissionsExt;
        let mut files = Vec::new();
        let mut map = BTreeMap::new();
        for r in roots {
            if !r.exists() {
                map.insert(r.to_path_buf(), "missing".into());
            }
            walk(r, &mut files);
        }
        for f in files {
            let meta = std::fs::symlink_metadata(&f).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&f).unwrap().display())
            } else {
                let bytes = std::fs::read(&f).unwrap_or_default();
                format!(
                    "{:o} {:x}",
                    meta.permissions().mode(),
                    Sha256::digest(&bytes)
                )
            };
            map.insert(f, what);
        }
        Snapshot(map)
    }

    /// Asserts `later` equals this snapshot, naming every path added,
    /// removed or changed.
    pub fn assert_unchanged(&self, later: &Snapshot) {
        let mut diff = Vec::new();
        for (p, v) in &self.0 {
            match later.0.get(p) {
                None => diff.push(format!("removed {}", p.display())),
                Some(w) if w != v => diff.push(format!("changed {}", p.display())),
                _ => {}
            }
        }
        for p in later.0.keys().filter(|p| !self.0.contains_key(*p)) {
            diff.push(format!("added {}", p.display()));
        }
        assert!(diff.is_empty(), "outside the worktree: {diff:#?}");
    }
}

/// Every file (and symlink) under `root`, or `root` itself when it is a
/// file; symlinks are not followed.
fn walk(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return;
    };
    if !meta.is_dir() {
        out.push(root.to_path_buf());
        return;
    }
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        walk(&e.path(), out);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
