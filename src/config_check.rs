//! What the configuration resolves to and whether it can work, before the
//! first job finds out: the tracker state ids per project (`orch config
//! show`) and the checks of `orch config check` — agent programs on PATH,
//! test commands startable, clone URLs reachable with their default branch,
//! and (online) the Plane states resolvable, Gitea's version, the
//! token's write scopes on each repository and whether the repository
//! allows the merges orch makes, and the Telegram bot and chat.
//! Where the installed units run orch, the state folder and every local
//! origin are checked as the units see them ([`UnitView`]): writable under
//! `ProtectSystem=strict` only inside `StateDirectory=` or `ReadWritePaths=`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapters::gitea::{self, Gitea, WriteScope};
use crate::adapters::telegram::Telegram;
use crate::config::{ForgeKind, NotifierKind, ProjectConfig, StateKind, TrackerKind, ROLES};
use crate::ctx::Ctx;
use crate::db::Db;

/// One tracker state of a project as orch resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedState {
    /// `in_progress`, `approved`, … (the `[projects.states]` key).
    pub kind: &'static str,
    /// The configured name (`[projects.state_names]` or the default).
    pub name: String,
    /// The id orch uses, when it is known without asking the tracker.
    pub id: Option<String>,
    /// Where the id comes from: `configured`, `cached` (Plane's list, in
    /// the database), `name` (the local tracker uses names), or
    /// `unresolved` (looked up by name in Plane at first use).
    pub from: &'static str,
}

/// The tracker states of project `p`, from the config and (when given) the
/// database's cache of Plane's states. Asks no one.
///
/// Errors: database errors.
pub fn resolved_states(p: &ProjectConfig, db: Option<&Db>) -> anyhow::Result<Vec<ResolvedState>> {
    let cached = match db {
        Some(db) if p.tracker == TrackerKind::Plane => db.cached_states(&p.name)?,
        _ => Vec::new(),
    };
    Ok(StateKind::ALL
        .into_iter()
        .map(|kind| {
            let name = p.state_names.get(kind).to_string();
            let (id, from) = if let Some(id) = crate::tracker::explicit_id(p, kind) {
                (Some(id.to_string()), "configured")
            } else if p.tracker == TrackerKind::Local {
                (Some(name.clone()), "name")
            } else if let Some(c) = cached
                .iter()
                .find(|c| c.name.trim().eq_ignore_ascii_case(name.trim()))
            {
                (Some(c.state_id.clone()), "cached")
            } else {
                (None, "unresolved")
            };
            ResolvedState {
                kind: kind.key(),
                name,
                id,
                from,
            }
        })
        .collect())
}

/// One check of `orch config check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `agent developer`, `project widget clone`.
    pub name: String,
    pub ok: bool,
    /// What was found: the program's path, the branch's sha, the error.
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, result: Result<String, String>) -> Check {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Check {
            name: name.into(),
            ok,
            detail,
        }
    }
}

/// Runs the checks: every role's agent program on PATH (or an executable
/// path), every project's test command startable (its program on PATH; a
/// path relative to the worktree is only noted), clone URL reachable and
/// default branch present (`git ls-remote`), merges landing only the
/// tested tip (`merge_style`, [`crate::forge::Forge::lands_tested_tip`]).
/// With `online`, every Plane
/// project's states resolve by asking Plane (nothing is cached), Gitea
/// answers its version and the token holds `write:repository` and
/// `write:issue` on every Gitea project's repository (probes that create
/// nothing, see [`Gitea::has_write_scope`]), the repository allows the
/// project's `merge_style` and, when the merge line may batch, manual
/// merges (see `gitea_merge_settings`), and with `ORCH_NOTIFIER=telegram`
/// the bot token is valid and the bot can see its chat; `db` is the
/// read-only database when there is one.
///
/// Errors: none of its own: each failure is a failed [`Check`].
pub fn run(ctx: &Ctx, db: Option<&Db>, online: bool) -> Vec<Check> {
    let mut checks = Vec::new();
    let unit_view = UnitView::installed();
    checks.push(Check::new(
        "state dir writable",
        writable(&ctx.settings.state_dir, &unit_view),
    ));
    for role in ROLES {
        let result = match ctx.config.agent(role) {
            Err(e) => Err(e.to_string()),
            Ok(a) => program(&a.argv[0]).map(|p| {
                let priced = a
                    .model
                    .as_deref()
                    .is_some_and(|m| ctx.config.prices.contains_key(m));
                let cost = match a.kind {
                    crate::config::AgentKind::Codex if !priced => {
                        ", cost unknown (Codex reports none; set model and [prices.\"<model>\"])"
                    }
                    crate::config::AgentKind::Gemini => {
                        ", cost from [prices.\"<model>\"] per model it names, else unknown"
                    }
                    _ => "",
                };
                format!("{} (kind {}{cost})", p.display(), a.kind)
            }),
        };
        checks.push(Check::new(format!("agent {role}"), result));
    }
    for p in &ctx.config.projects {
        let test = match p.test_command.first() {
            None => Err("test_command is empty".to_string()),
            Some(prog) if !Path::new(prog).is_absolute() && prog.contains('/') => Ok(format!(
                "{prog} is relative to the task's worktree: checked when the tests run"
            )),
            Some(prog) => program(prog).map(|p| p.display().to_string()),
        };
        checks.push(Check::new(format!("project {} test command", p.name), test));
        let branch = ctx
            .repo(p)
            .ls_remote_branch(&p.default_branch)
            .map_err(|e| format!("{} is not reachable: {e:#}", p.clone_url))
            .and_then(|sha| match sha {
                Some(sha) => Ok(format!(
                    "{} has {} at {}",
                    p.clone_url,
                    p.default_branch,
                    &sha[..sha.len().min(12)]
                )),
                None => Err(format!(
                    "{} has no branch {:?} (default_branch)",
                    p.clone_url, p.default_branch
                )),
            });
        checks.push(Check::new(format!("project {} clone", p.name), branch));
        let forge = crate::forge::Forge::for_project(ctx, p);
        let landing = forge
            .lands_tested_tip(p)
            .map(|()| {
                format!(
                    "{}: main moves only to the merge line's tested tip",
                    forge.name()
                )
            })
            .map_err(|e| e.to_string());
        checks.push(Check::new(
            format!("project {} merge style", p.name),
            landing,
        ));
        if let Some(origin) = local_origin(&p.clone_url) {
            checks.push(Check::new(
                format!("project {} origin writable", p.name),
                writable(&origin, &unit_view),
            ));
        }
        let tracker = crate::tracker::Tracker::for_project(ctx, p);
        if online {
            if let Some(states) = tracker.check_states(ctx, db, p) {
                checks.push(Check::new(
                    format!("project {} {} states", p.name, tracker.name()),
                    states,
                ));
            }
        }
        if online && p.forge == ForgeKind::Gitea {
            checks.push(Check::new(
                format!("project {} gitea token", p.name),
                gitea_scopes(ctx, p),
            ));
            checks.extend(gitea_merge_settings(ctx, p));
        }
    }
    if online
        && ctx
            .config
            .projects
            .iter()
            .any(|p| p.forge == ForgeKind::Gitea)
    {
        checks.push(Check::new("gitea version", gitea_version(ctx)));
    }
    if online && ctx.settings.adapters.notifier == NotifierKind::Telegram {
        checks.push(Check::new("telegram bot", telegram_bot(ctx)));
    }
    checks
}

/// Gitea's version, with what orch does differently on an old one.
fn gitea_version(ctx: &Ctx) -> Result<String, String> {
    let g = Gitea::from_settings(&ctx.settings.adapters).map_err(|e| e.to_string())?;
    let v = g.version().map_err(|e| e.to_string())?;
    Ok(match gitea::parse_version(&v) {
        None => format!("Gitea {v} (a version orch cannot read; assumed current)"),
        Some(n) if n < (1, 22, 0) => {
            format!("Gitea {v} (older than 1.22: open pull requests are found by listing them)")
        }
        Some(_) => format!("Gitea {v}"),
    })
}

/// The token's write scopes on project `p`'s repository.
fn gitea_scopes(ctx: &Ctx, p: &ProjectConfig) -> Result<String, String> {
    let g = Gitea::from_settings(&ctx.settings.adapters).map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    for scope in [WriteScope::Repository, WriteScope::Issue] {
        if !g
            .has_write_scope(&p.repo, scope)
            .map_err(|e| e.to_string())?
        {
            missing.push(scope.name());
        }
    }
    if missing.is_empty() {
        Ok(format!("write:repository and write:issue on {}", p.repo))
    } else {
        Err(format!(
            "ORCH_GITEA_TOKEN lacks {} on {} (a token needs write:repository and write:issue)",
            missing.join(" and "),
            p.repo
        ))
    }
}

/// Whether project `p`'s repository lets orch merge as configured: its
/// `merge_style` allowed (the tip PR of a merge, [`Gitea::merge_pull`]),
/// and, when the merge line may batch (`ORCH_MERGE_LINE_BATCH_MAX` > 1),
/// manual merges allowed (the batch's other PRs, [`Gitea::mark_merged`]).
/// Two checks; one failed check when the repository cannot be read. A
/// field the answer lacks (an older Gitea) is noted, not failed.
fn gitea_merge_settings(ctx: &Ctx, p: &ProjectConfig) -> Vec<Check> {
    const WHERE: &str = "(Gitea: repository settings → Pull Requests)";
    let repo = match Gitea::from_settings(&ctx.settings.adapters)
        .and_then(|g| g.repo_merge_settings(&p.repo))
    {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::new(
                format!("project {} gitea repository", p.name),
                Err(e.to_string()),
            )]
        }
    };
    let style = p.merge_style;
    let setting = format!("projects.{}.merge_style = {:?}", p.name, style.as_str());
    let what = match style {
        crate::config::MergeStyle::Merge => "merge commits",
        crate::config::MergeStyle::Rebase => "rebase merges",
        crate::config::MergeStyle::RebaseMerge => "rebase merges with a merge commit",
        crate::config::MergeStyle::Squash => "squash merges",
        crate::config::MergeStyle::FastForwardOnly => "fast-forward-only merges",
    };
    let merge = match repo.allows(style) {
        (field, Some(true)) => Ok(format!("{setting}: {} allows it ({field})", p.repo)),
        (_, Some(false)) => Err(format!(
            "{setting} but {} does not allow {what} {WHERE}",
            p.repo
        )),
        (field, None) => Ok(format!(
            "{setting}: Gitea does not say whether {} allows it (no {field}: an older Gitea; \
             fast-forward-only needs 1.22)",
            p.repo
        )),
    };
    let batch_max = ctx.settings.merge_line_batch_max;
    let batches = format!("ORCH_MERGE_LINE_BATCH_MAX = {batch_max}");
    let manual = match repo.allow_manual_merge {
        Some(true) => Ok(format!(
            "{} allows marking pull requests merged manually (a batch's other PRs)",
            p.repo
        )),
        _ if batch_max <= 1 => Ok(format!(
            "not needed: {batches} (every merge is one PR's own)"
        )),
        Some(false) => Err(format!(
            "{batches} but {} does not allow marking pull requests merged manually: \
             a batch's other PRs would dead-letter; allow it {WHERE} or set \
             ORCH_MERGE_LINE_BATCH_MAX=1 (one PR a merge)",
            p.repo
        )),
        None => Ok(format!(
            "{batches}: Gitea does not say whether {} allows marking pull requests merged \
             manually (no allow_manual_merge: an older Gitea); if not, a batch's other PRs \
             dead-letter",
            p.repo
        )),
    };
    vec![
        Check::new(format!("project {} gitea merge style", p.name), merge),
        Check::new(format!("project {} gitea manual merge", p.name), manual),
    ]
}

/// The bot behind `ORCH_TELEGRAM_BOT_TOKEN` and the chat it posts to.
fn telegram_bot(ctx: &Ctx) -> Result<String, String> {
    let t = Telegram::from_settings(&ctx.settings.adapters).map_err(|e| e.to_string())?;
    let bot = t
        .get_me()
        .map_err(|e| format!("ORCH_TELEGRAM_BOT_TOKEN: {e}"))?;
    let chat = t
        .get_chat()
        .map_err(|e| format!("ORCH_TELEGRAM_CHAT_ID: {e}"))?;
    let name = bot.username.map_or(bot.first_name, |u| format!("@{u}"));
    let title = chat.title.or(chat.first_name).unwrap_or_default();
    Ok(format!(
        "{name} posts to {} {title:?} ({})",
        chat.kind, chat.id
    ))
}

/// Where `name` runs from: an executable path as given (when it has a
/// `/`), else the first executable of that name on `PATH`.
/// The folder of a local origin: an absolute path or a `file://` URL
/// (`/srv/git/widget.git`); `None` for a URL with a host or `user@host:`.
pub fn local_origin(clone_url: &str) -> Option<PathBuf> {
    let path = clone_url.strip_prefix("file://").unwrap_or(clone_url);
    Path::new(path).is_absolute().then(|| PathBuf::from(path))
}

/// The unit that runs orch's git and agents (`orch-worker@.service`) as
/// systemd has it loaded: what it lets orch write. Read with `systemctl
/// show`, so `orch config check` run by hand sees the sandbox the worker
/// (and the reaper's finalize retries) will have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitView {
    /// The unit asked about; `None` when no orch unit is installed here
    /// (or systemd cannot be asked), and then only this process's own
    /// access is checked.
    pub unit: Option<String>,
    /// `ProtectSystem=` (`strict` makes all but the paths below read-only).
    pub protect_system: String,
    /// `/var/lib/<StateDirectory>` and every `ReadWritePaths=` entry.
    pub writable: Vec<PathBuf>,
}

impl UnitView {
    /// The installed worker unit's view: from `systemctl show
    /// orch-worker@1.service` when it is loaded; when this process runs
    /// inside an orch unit (`INVOCATION_ID` is set), its own access
    /// already is the unit's view and nothing is asked.
    pub fn installed() -> UnitView {
        const UNIT: &str = "orch-worker@1.service";
        if std::env::var_os("INVOCATION_ID").is_some() {
            return UnitView::default();
        }
        let out = std::process::Command::new("systemctl")
            .args([
                "show",
                UNIT,
                "--property=LoadState,ProtectSystem,ReadWritePaths,StateDirectory",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                UnitView::parse(UNIT, &String::from_utf8_lossy(&o.stdout)).unwrap_or_default()
            }
            _ => UnitView::default(),
        }
    }

    /// Reads `systemctl show` output (`KEY=VALUE` lines); `None` unless
    /// `LoadState=loaded`. `ReadWritePaths=` entries may carry systemd's
    /// `-`/`+` prefixes, which are dropped.
    pub fn parse(unit: &str, show: &str) -> Option<UnitView> {
        let mut view = UnitView {
            unit: Some(unit.to_string()),
            ..UnitView::default()
        };
        let mut loaded = false;
        for line in show.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "LoadState" => loaded = v == "loaded",
                "ProtectSystem" => view.protect_system = v.to_string(),
                "ReadWritePaths" => view.writable.extend(
                    v.split_whitespace()
                        .map(|p| PathBuf::from(p.trim_start_matches(['-', '+']))),
                ),
                "StateDirectory" => view
                    .writable
                    .extend(v.split_whitespace().map(|d| Path::new("/var/lib").join(d))),
                _ => {}
            }
        }
        loaded.then_some(view)
    }

    /// Whether the unit may write `path` ([`Path::starts_with`]: whole
    /// components), or what to change so it may.
    pub fn may_write(&self, path: &Path) -> Result<(), String> {
        let Some(unit) = &self.unit else {
            return Ok(());
        };
        if self.protect_system != "strict" || self.writable.iter().any(|w| path.starts_with(w)) {
            return Ok(());
        }
        Err(format!(
            "{} is read-only for {unit} (ProtectSystem=strict; it may write only {}): \
             put it under /var/lib/orch, or let the units write its folder with \
             `scripts/install --origin-dir {}` (a ReadWritePaths= drop-in) and `systemctl daemon-reload`",
            path.display(),
            self.writable
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            path.parent().unwrap_or(path).display()
        ))
    }
}

/// Whether `path` is writable: by the installed units ([`UnitView`]) and
/// by this process (`access(2)`, which also sees read-only mounts: inside
/// a unit it is the unit's view). A path that does not exist yet is
/// judged by its nearest existing folder.
fn writable(path: &Path, view: &UnitView) -> Result<String, String> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    view.may_write(&path)?;
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", existing.display()))?;
    // SAFETY: access(2) reads the NUL-terminated path and nothing else.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(format!(
            "{} is not writable by this user: {}",
            existing.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(match &view.unit {
        Some(unit) => format!("{} (writable for {unit} too)", path.display()),
        None => format!(
            "{} (no installed orch unit to ask: checked as this user)",
            path.display()
        ),
    })
}

fn program(name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if runnable(&p) {
            Ok(p)
        } else {
            Err(format!("{name} is not an executable file"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| runnable(p))
        .ok_or_else(|| format!("{name} is not on PATH"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_local_origin_outside_what_the_unit_may_write_is_named_with_the_fix() {
        let show = "LoadState=loaded\nProtectSystem=strict\nReadWritePaths=-/srv/git /data/x\nStateDirectory=orch orch/home\n";
        let view = super::UnitView::parse("orch-worker@1.service", show).unwrap();
        assert_eq!(
            view.writable,
            ["/srv/git", "/data/x", "/var/lib/orch", "/var/lib/orch/home"]
                .map(std::path::PathBuf::from)
        );
        assert!(view
            .may_write(std::path::Path::new("/srv/git/widget.git"))
            .is_ok());
        assert!(view
            .may_write(std::path::Path::new("/var/lib/orch/state"))
            .is_ok());
        let e = view
            .may_write(std::path::Path::new("/srv/gitx/widget.git"))
            .unwrap_err();
        assert!(
            e.contains("read-only for orch-worker@1.service")
                && e.contains("scripts/install --origin-dir /srv/gitx"),
            "{e}"
        );
        // Not installed: nothing to judge but this process's own access.
        assert_eq!(super::UnitView::parse("x", "LoadState=not-found\n"), None);
        assert!(super::UnitView::default()
            .may_write(std::path::Path::new("/anything"))
            .is_ok());
        assert_eq!(
            super::local_origin("file:///srv/git/w.git"),
            Some("/srv/git/w.git".into())
        );
        assert_eq!(super::local_origin("git@host:acme/w.git"), None);
        assert_eq!(super::local_origin("https://host/acme/w.git"), None);
    }

    use super::*;

    #[test]
    fn programs_are_found_on_path_or_refused_by_name() {
        assert!(program("sh").is_ok());
        assert_eq!(
            program("no-such-program-xyz").unwrap_err(),
            "no-such-program-xyz is not on PATH"
        );
        assert_eq!(
            program("/nonexistent/agent").unwrap_err(),
            "/nonexistent/agent is not an executable file"
        );
    }
}
