//! Which branch names and revs orch hands to git: the checks a name
//! passes before it goes into a refspec or a rev ([`Error::InvalidRef`]
//! otherwise).

use crate::error::Error;

pub(super) fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::InvalidRef {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Checks every branch name orch puts into a refspec or rev must pass:
/// a plain short branch name that git accepts, with no revision syntax.
///
/// Errors: [`Error::InvalidRef`] naming the first reason found;
/// [`Error::Subprocess`] only if git cannot be started.
pub fn validate_branch_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid(name, "empty branch name"));
    }
    if name.starts_with('-') {
        return Err(invalid(name, "starts with '-'"));
    }
    if name.starts_with("refs/") {
        return Err(invalid(
            name,
            "is a full ref name (starts with \"refs/\"); expected a short branch name",
        ));
    }
    for pat in ["..", ":", "^", "~", "@{", "\\", "?", "*", "["] {
        if name.contains(pat) {
            return Err(invalid(name, format!("contains {pat:?}")));
        }
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(name, "contains whitespace or a control character"));
    }
    if name == "HEAD" {
        return Err(invalid(name, "is HEAD"));
    }
    // The rest of git-check-ref-format(1), checked here rather than by
    // spawning git: this runs inside write transactions (task creation).
    if name == "@" {
        return Err(invalid(name, "is \"@\""));
    }
    if name.ends_with('.') {
        return Err(invalid(name, "ends with '.'"));
    }
    for component in name.split('/') {
        if component.is_empty() {
            return Err(invalid(name, "starts or ends with '/' or contains \"//\""));
        }
        if component.starts_with('.') {
            return Err(invalid(name, "has a path component that starts with '.'"));
        }
        if component.ends_with(".lock") {
            return Err(invalid(
                name,
                "has a path component that ends with \".lock\"",
            ));
        }
    }
    Ok(())
}

/// Validates a task branch name before orch creates, pushes or checks it
/// out.
///
/// A valid name starts with `branch_prefix` (and has something after it),
/// contains no `..`, `:`, `^`, `~`, `@{`, `\`, glob characters, whitespace
/// or control characters, does not start with `-` or `refs/`, is neither
/// `HEAD` nor `default_branch`, and follows the rest of
/// git-check-ref-format(1) for `--branch` (no component starting with `.`
/// or ending with `.lock`, no empty component, no trailing `.`, not `@`).
///
/// Guarantees: pure: no process, no repository, nothing written (it runs
/// inside write transactions). Assumptions: none; no lock.
/// Errors: [`Error::InvalidRef`] naming the first reason found.
pub fn validate_task_branch(
    name: &str,
    branch_prefix: &str,
    default_branch: &str,
) -> Result<(), Error> {
    if name == default_branch {
        return Err(invalid(name, "is the default branch"));
    }
    if name == "HEAD" {
        return Err(invalid(name, "is HEAD"));
    }
    if !name.starts_with(branch_prefix) || name.len() == branch_prefix.len() {
        return Err(invalid(
            name,
            format!("does not start with the task branch prefix {branch_prefix:?}"),
        ));
    }
    validate_branch_name(name)
}

/// A full 40- (SHA-1) or 64- (SHA-256) hex object id.
pub(super) fn validate_sha(sha: &str) -> Result<(), Error> {
    if (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid(sha, "expected a full hexadecimal object id"))
    }
}

/// A rev handed to git as a positional argument must not look like an
/// option.
pub(super) fn validate_rev(rev: &str) -> Result<(), Error> {
    if rev.is_empty() || rev.starts_with('-') {
        Err(invalid(rev, "empty or starts with '-'"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::run::{run_git_env, At};

    #[test]
    fn validate_task_branch_accepts_prefixed_and_refuses_the_rest() {
        validate_task_branch("orch/p-1", "orch/", "main").unwrap();
        for bad in [
            "main",
            "HEAD",
            "refs/heads/main",
            "refs/heads/orch/p-1",
            "HEAD:main",
            "orch/../main",
            "orch/p-1:main",
            "feature/x",
            "orch/",
            "-orch/p-1",
            "orch/p 1",
            "orch/p~1",
            "orch/p^1",
            "orch/p@{1}",
            "orch/p*",
            "orch/p.lock",
            "orch//p",
            "orch/p/",
            "",
        ] {
            let err = validate_task_branch(bad, "orch/", "main").unwrap_err();
            assert!(matches!(err, Error::InvalidRef { .. }), "{bad:?}: {err}");
        }
        // A misconfigured prefix can never make the default branch valid.
        assert!(validate_task_branch("main", "ma", "main").is_err());
    }

    /// The in-process check agrees with `git check-ref-format --branch`
    /// on every name git itself refuses or accepts here.
    #[test]
    fn branch_names_are_judged_as_git_judges_them() {
        for name in [
            "orch/p-1",
            "orch/p.1",
            "orch/.p",
            "orch/p.",
            "orch/p.lock",
            "orch/p.lock.x",
            "orch//p",
            "orch/p/",
            "/orch/p",
            "orch/p..1",
            "orch/@",
            "orch/a@b",
            "orch/p\x7f",
            "orch/é",
            "orch/p{1}",
            "orch/p@{1}",
            "orch/a/.b/c",
            "orch/x.lock/y",
        ] {
            let git =
                run_git_env(At::Nowhere, &["check-ref-format", "--branch", name], &[]).unwrap();
            let git_ok = git.success() && git.stdout.trim_end_matches('\n') == name;
            let ours = validate_branch_name(name);
            assert_eq!(
                ours.is_ok(),
                git_ok,
                "{name:?}: ours {ours:?}, git accepts: {git_ok}"
            );
        }
        // Stricter than `--branch`, which reads a lone "@" as HEAD.
        assert!(validate_branch_name("@").is_err());
    }
}
