//! Build script: records the git commit the binary is built from as
//! `ORCH_GIT_COMMIT` (`orch --version`, `GET /healthz`, and the revision
//! `orch staging-check` validates). `ORCH_BUILD_COMMIT` in the build
//! environment wins (an image built from a tarball, without `.git`);
//! otherwise `git rev-parse HEAD`; otherwise `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=ORCH_BUILD_COMMIT");
    let explicit = std::env::var("ORCH_BUILD_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let commit = explicit
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .filter(|c| c.chars().all(|ch| ch.is_ascii_hexdigit()) || c == "unknown")
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it
    // points to (a commit) and packed-refs. In a worktree the git dir and
    // the common dir differ.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) {
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        let common = git(&["rev-parse", "--git-common-dir"])
            .map(PathBuf::from)
            .unwrap_or_else(|| git_dir.clone());
        println!(
            "cargo:rerun-if-changed={}",
            common.join("packed-refs").display()
        );
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", common.join(r).display());
        }
    }
    println!("cargo:rustc-env=ORCH_GIT_COMMIT={commit}");
}
