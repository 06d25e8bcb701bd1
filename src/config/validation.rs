//! Loading the config file: parsing, TOML errors keyed by their dotted
//! path, and the checks [`Config::load`] runs.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::error::Error;

/// A TOML error as [`Error::Config`]: keyed by the dotted path of the
/// offending `key = value` line (`projects[0].tracker`) when the error
/// points at one, else by `toml` with the parser's whole message.
fn toml_error(text: &str, e: &toml::de::Error) -> Error {
    match e.span().and_then(|span| key_at(text, span.start)) {
        Some(key) => Error::config(key, e.message().replace('\n', " ").trim().to_string()),
        None => Error::config("toml", e.to_string().replace('\n', " ").trim().to_string()),
    }
}

/// The dotted path (`projects[1].state_names.done`) of the `key = value`
/// line holding byte `pos` of `text`, or `None` when that line is no
/// assignment.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let line_start = text.get(..pos)?.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..].lines().next()?.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with(['[', '#']) {
        return None;
    }
    let mut table = String::new();
    let mut arrays: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text[..line_start].lines().map(str::trim) {
        if let Some((h, _)) = l.strip_prefix("[[").and_then(|h| h.split_once("]]")) {
            let h = h.trim();
            let n = arrays.entry(h).and_modify(|n| *n += 1).or_insert(0);
            table = format!("{h}[{n}]");
        } else if let Some((h, _)) = l.strip_prefix('[').and_then(|h| h.split_once(']')) {
            let h = h.trim();
            table = match h.split_once('.') {
                Some((array, rest)) if arrays.contains_key(array) => {
                    format!("{array}[{}].{rest}", arrays[array])
                }
                _ => h.to_string(),
            };
        }
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}
impl Config {
    /// Reads and validates the config file. A missing file is an empty
    /// config unless `explicit` (then it is an error).
    ///
    /// Errors: [`Error::Config`] naming the file and the offending key.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, Error> {
        let key = format!("ORCH_CONFIG ({})", path.display());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(e) => return Err(Error::config(key, format!("cannot read: {e}"))),
        };
        Config::parse(&text).map_err(|e| match e {
            Error::Config { key: k, message } => Error::config(format!("{key}: {k}"), message),
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, Error> {
        let cfg: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), Error> {
        for role in self.agents.keys() {
            if role != "default" && !ROLES.contains(&role.as_str()) {
                return Err(Error::config(
                    format!("agents.{role}"),
                    format!(
                        "unknown role; expected default or one of {}",
                        ROLES.join(", ")
                    ),
                ));
            }
        }
        for (role, a) in &self.agents {
            if a.argv.is_empty() || a.argv[0].trim().is_empty() {
                return Err(Error::config(
                    format!("agents.{role}.argv"),
                    "must name a program",
                ));
            }
            if a.kind != AgentKind::Acp && (a.permissions.is_some() || a.auth_method.is_some()) {
                return Err(Error::config(
                    format!("agents.{role}"),
                    "permissions and auth_method apply to an ACP agent only (kind = \"acp\")",
                ));
            }
            if a.timeout_s == Some(0) {
                return Err(Error::config(
                    format!("agents.{role}.timeout_s"),
                    "must be at least 1",
                ));
            }
            let vars = example_vars();
            for (i, arg) in a.argv.iter().enumerate() {
                render(arg, &vars)
                    .map_err(|m| Error::config(format!("agents.{role}.argv[{i}]"), m))?;
            }
            if let Some(prompt) = &a.prompt {
                render(prompt, &vars)
                    .map_err(|m| Error::config(format!("agents.{role}.prompt"), m))?;
            }
        }
        for (model, p) in &self.prices {
            let fields = [
                ("input_usd_per_mtok", Some(p.input_usd_per_mtok)),
                ("output_usd_per_mtok", Some(p.output_usd_per_mtok)),
                ("cache_read_usd_per_mtok", p.cache_read_usd_per_mtok),
                ("cache_write_usd_per_mtok", p.cache_write_usd_per_mtok),
            ];
            for (field, v) in fields {
                if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                    return Err(Error::config(
                        format!("prices.{model:?}.{field}"),
                        format!("expected a price >= 0 in dollars per million tokens, got {v}"),
                    ));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.projects.iter().enumerate() {
            let k = |f: &str| format!("projects[{i}].{f}");
            let valid_name = !p.name.is_empty()
                && p.name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(Error::config(
                    k("name"),
                    format!("{:?} must match [A-Za-z0-9][A-Za-z0-9_-]*", p.name),
                ));
            }
            if !seen.insert(p.name.clone()) {
                return Err(Error::config(
                    k("name"),
                    format!("duplicate project {:?}", p.name),
                ));
            }
            if p.clone_url.trim().is_empty() {
                return Err(Error::config(k("clone_url"), "must not be empty"));
            }
            match p.test_command.first() {
                Some(prog) if !prog.trim().is_empty() && !prog.contains('\0') => {}
                _ => return Err(Error::config(k("test_command"), "must name a program")),
            }
            if let Err(e) = crate::git::validate_branch_name(&p.default_branch) {
                let reason = match e {
                    Error::InvalidRef { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(Error::config(
                    k("default_branch"),
                    format!(
                        "{:?} is not a valid branch name: {reason}",
                        p.default_branch
                    ),
                ));
            }
            if p.default_branch == "orch" || p.default_branch.starts_with("orch/") {
                return Err(Error::config(
                    k("default_branch"),
                    format!(
                        "{:?} is inside orch's task branch prefix \"orch/\"",
                        p.default_branch
                    ),
                ));
            }
            if p.forge == ForgeKind::Gitea
                && p.repo.split('/').filter(|s| !s.is_empty()).count() != 2
            {
                return Err(Error::config(
                    k("repo"),
                    format!("{:?}: expected owner/name when forge = \"gitea\"", p.repo),
                ));
            }
            if p.tracker == TrackerKind::Plane && p.tracker_project_id.is_empty() {
                return Err(Error::config(
                    k("tracker_project_id"),
                    "required when tracker = \"plane\"",
                ));
            }
            if p.test_timeout_s == 0 {
                return Err(Error::config(k("test_timeout_s"), "must be at least 1"));
            }
            if let Some(st) = &p.staging {
                if !(st.url.starts_with("http://") || st.url.starts_with("https://")) {
                    return Err(Error::config(
                        k("staging.url"),
                        format!("expected an http:// or https:// URL, got {:?}", st.url),
                    ));
                }
                if st.timeout_s == 0 {
                    return Err(Error::config(k("staging.timeout_s"), "must be at least 1"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_env as env;

    #[test]
    fn an_acp_agent_takes_permissions_and_an_auth_method_and_only_it_does() {
        let c = Config::parse(
            "[agents.developer]\nargv = [\"gemini\", \"--acp\"]\nkind = \"acp\"\n\
             auth_method = \"gemini-api-key\"\npermissions = \"deny\"\nresume = true\n",
        )
        .unwrap();
        let a = c.agent("developer").unwrap();
        assert!(a.kind == AgentKind::Acp && a.resume);
        assert_eq!(a.permissions, Some(Permissions::Deny));
        assert_eq!(a.auth_method.as_deref(), Some("gemini-api-key"));
        let e = Config::parse("[agents.developer]\nargv = [\"x\"]\npermissions = \"allow\"\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("agents.developer") && e.to_string().contains("kind = \"acp\""),
            "{e}"
        );
        let e = Config::parse(
            "[agents.developer]\nargv = [\"x\"]\nkind = \"acp\"\npermissions = \"sometimes\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = Config::parse(
            "[[projects]]\nname = \"bad name\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("projects[0].name"), "{e}");
        let e = Config::parse("[agents.wizard]\nargv = [\"x\"]\n").unwrap_err();
        assert!(e.to_string().contains("agents.wizard"), "{e}");
        let e = Config::parse("[agents.default]\nargv = [\"x\", \"{nope}\"]\n").unwrap_err();
        assert!(e.to_string().contains("agents.default.argv[1]"), "{e}");
        let e = Config::parse("[[projects]]\nnme = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("nme"), "{e}");
    }

    #[test]
    fn test_command_and_default_branch_are_validated_at_load() {
        let parse = |extra: &str| {
            Config::parse(&format!(
                "[[projects]]\nname = \"a\"\nclone_url = \"x\"\n{extra}\n"
            ))
        };
        parse("test_command = [\"true\"]\ndefault_branch = \"trunk\"").unwrap();
        for (extra, key, why) in [
            (
                "test_command = [\"\"]",
                "projects[0].test_command",
                "must name a program",
            ),
            (
                "test_command = [\"  \", \"x\"]",
                "projects[0].test_command",
                "must name a program",
            ),
            (
                "test_command = []",
                "projects[0].test_command",
                "must name a program",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"\"",
                "projects[0].default_branch",
                "empty branch name",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"a..b\"",
                "projects[0].default_branch",
                "contains \"..\"",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"orch/main\"",
                "projects[0].default_branch",
                "task branch prefix",
            ),
            (
                "test_command = [\"true\"]\ndefault_branch = \"main.lock\"",
                "projects[0].default_branch",
                "ends with \".lock\"",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains(why), "{extra}: {msg}");
            assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        }
    }

    #[test]
    fn service_kinds_fail_at_load_naming_key_and_values() {
        let project = |extra: &str| {
            Config::parse(&format!(
                "[[projects]]\nname = \"a\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n\
                 [[projects]]\nname = \"b\"\nclone_url = \"x\"\ntest_command = [\"true\"]\n{extra}"
            ))
        };
        let p = project("").unwrap();
        assert_eq!(p.projects[1].tracker, TrackerKind::Local);
        assert_eq!(p.projects[1].forge, ForgeKind::Local);
        assert_eq!(p.projects[1].merge_style, MergeStyle::FastForwardOnly);
        let p =
            project("merge_style = \"rebase-merge\"\nforge = \"gitea\"\nrepo = \"o/n\"\n").unwrap();
        assert_eq!(p.projects[1].merge_style, MergeStyle::RebaseMerge);
        assert_eq!(p.projects[1].forge, ForgeKind::Gitea);
        for (extra, want) in [
            ("tracker = \"plain\"", "config: projects[1].tracker: \"plain\": expected local or plane"),
            ("forge = \"github\"", "config: projects[1].forge: \"github\": expected local or gitea"),
            (
                "merge_style = \"ff\"",
                "config: projects[1].merge_style: \"ff\": expected one of merge, rebase, rebase-merge, squash, fast-forward-only",
            ),
        ] {
            assert_eq!(project(extra).unwrap_err().to_string(), want);
        }
        let e = project("[projects.state_names]\ndone = 3\n").unwrap_err();
        assert!(
            e.to_string().contains("projects[1].state_names.done"),
            "{e}"
        );
        let e = Settings::load(&env(&[("ORCH_NOTIFIER", "pager")]), None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config: ORCH_NOTIFIER: \"pager\": expected log or telegram"
        );
    }

    #[test]
    fn the_staging_checks_infra_settings_are_read_by_their_new_names_and_their_old_ones() {
        let load = |pairs: &[(&str, &str)]| {
            let s = Settings::load(&env(pairs), None, None).unwrap();
            (s.staging_infra_backoff_s, s.staging_max_infra)
        };
        assert_eq!(load(&[]), (30, 24));
        let old = [
            ("ORCH_MERGE_GATE_DEFER_S", "5"),
            ("ORCH_MERGE_GATE_MAX_DEFERS", "6"),
        ];
        assert_eq!(load(&old), (5, 6), "the old names are still read");
        let both = [
            old[0],
            old[1],
            ("ORCH_STAGING_CHECK_INFRA_BACKOFF_S", "7"),
            ("ORCH_STAGING_CHECK_MAX_INFRA", "8"),
        ];
        assert_eq!(load(&both), (7, 8), "the new names win");
        let e =
            Settings::load(&env(&[("ORCH_MERGE_GATE_DEFER_S", "soon")]), None, None).unwrap_err();
        assert!(e.to_string().contains("ORCH_MERGE_GATE_DEFER_S"), "{e}");
        let known = crate::config::known_keys();
        for k in [
            "ORCH_STAGING_CHECK_INFRA_BACKOFF_S",
            "ORCH_STAGING_CHECK_MAX_INFRA",
            "ORCH_MERGE_GATE_DEFER_S",
            "ORCH_MERGE_GATE_MAX_DEFERS",
        ] {
            assert!(known.contains(k), "{k} is a known setting");
        }
    }
}
