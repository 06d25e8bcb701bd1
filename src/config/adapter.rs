//! The outside adapters' settings: [`AdapterSettings`] and where the admin
//! listener listens ([`AdminBind`]).

use std::path::PathBuf;

use super::*;
use crate::error::Error;

/// The admin listener's socket file in the state directory, when
/// `ORCH_ADMIN_BIND` is unset.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Where `orch serve`'s admin listener listens (`ORCH_ADMIN_BIND`).
///
/// Syntax: unset is the Unix socket `<state_dir>/admin.sock` (hidden from
/// agents with the rest of the state directory); set but empty (or
/// blank) is no admin listener; `unix:/abs/path` or an absolute path
/// `/abs/path` is a Unix socket there; `IP:PORT` (`127.0.0.1:8501`,
/// `[::1]:8501`) is TCP, which `orch serve` only starts with
/// `ORCH_ADMIN_TOKEN` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBind {
    /// A Unix socket at this absolute path (mode 0660).
    Socket(PathBuf),
    /// TCP on this address; every request needs the bearer token.
    Tcp(std::net::SocketAddr),
}

impl AdminBind {
    /// Parses an `ORCH_ADMIN_BIND` value (surrounding blanks ignored):
    /// `Ok(None)` for a blank one (off).
    ///
    /// Errors (the message to show after the key): a relative or empty
    /// socket path, or a value that is neither a path nor `IP:PORT`.
    pub fn parse(value: &str) -> Result<Option<AdminBind>, String> {
        let v = value.trim();
        if v.is_empty() {
            return Ok(None);
        }
        if let Some(path) = v.strip_prefix("unix:").or(v.starts_with('/').then_some(v)) {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{v:?}: a Unix socket needs an absolute path (unix:/path/admin.sock)"
                ));
            }
            if path.file_name().is_none() {
                return Err(format!("{v:?}: the socket path names no file"));
            }
            return Ok(Some(AdminBind::Socket(path)));
        }
        match v.parse::<std::net::SocketAddr>() {
            Ok(addr) => Ok(Some(AdminBind::Tcp(addr))),
            Err(_) => Err(format!(
                "{v:?} is neither IP:PORT (e.g. 127.0.0.1:8501) nor a Unix socket (unix:/abs/path or /abs/path); empty turns the admin listener off"
            )),
        }
    }
}

impl std::fmt::Display for AdminBind {
    /// The value in `ORCH_ADMIN_BIND`'s syntax (`unix:/path` or `IP:PORT`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminBind::Socket(p) => write!(f, "unix:{}", p.display()),
            AdminBind::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Settings of the outside adapters (`ORCH_*` environment variables), part
/// of [`Settings`]. Durations carry their unit in the name.
#[derive(Debug, Clone)]
pub struct AdapterSettings {
    /// `ORCH_GITEA_URL`: Gitea's root URL (`https://gitea.example.com`);
    /// the API is `<url>/api/v1`.
    pub gitea_url: Option<String>,
    /// `ORCH_GITEA_TOKEN`: access token (scopes `write:repository`,
    /// `write:issue`), sent as `Authorization: token …`.
    pub gitea_token: Option<Secret>,
    /// `ORCH_GITEA_PUBLIC_URL` (default `ORCH_GITEA_URL`): base of the
    /// branch, PR and commit links orch writes into comments.
    pub gitea_public_url: Option<String>,
    /// `ORCH_PLANE_URL`: Plane's root URL; the API is `<url>/api/v1`.
    pub plane_url: Option<String>,
    /// `ORCH_PLANE_API_KEY`: personal access token, sent as `X-API-Key`.
    pub plane_api_key: Option<Secret>,
    /// `ORCH_PLANE_WORKSPACE`: the workspace slug (`acme`).
    pub plane_workspace: Option<String>,
    /// `ORCH_PLANE_PUBLIC_URL` (default `ORCH_PLANE_URL`): base of work
    /// item links in notifications.
    pub plane_public_url: Option<String>,
    /// `ORCH_PLANE_STATE_CACHE_S` (default 3600): age after which the
    /// cached Plane state ids of a project are fetched again.
    pub plane_state_cache_s: u64,
    /// `ORCH_NOTIFIER` (default `log`): `log` or `telegram`.
    pub notifier: NotifierKind,
    /// `ORCH_TELEGRAM_BOT_TOKEN`: the bot token (it is part of every URL).
    pub telegram_bot_token: Option<Secret>,
    /// `ORCH_TELEGRAM_CHAT_ID`: chat id (`-100…`) or `@channelname`.
    pub telegram_chat_id: Option<String>,
    /// `ORCH_TELEGRAM_API_URL` (default `https://api.telegram.org`).
    pub telegram_api_url: String,
    /// `ORCH_HTTP_CONNECT_TIMEOUT_MS` (default 5000): TCP/TLS connect limit.
    pub http_connect_timeout_ms: u64,
    /// `ORCH_HTTP_TIMEOUT_MS` (default 30000): limit for one whole call.
    pub http_timeout_ms: u64,
    /// `ORCH_HTTP_MAX_WAIT_S` (default 10): the longest a synchronous
    /// caller (a listing, the CI poll) sleeps for a rate limit before it
    /// gives up with the retryable error.
    pub http_max_wait_s: u64,
    /// `ORCH_TRACKER_ENABLED` (default true): kill switch of the Plane
    /// adapter; when off, tracker messages wait in the outbox.
    pub tracker_enabled: bool,
    /// `ORCH_FORGE_ENABLED` (default true): kill switch of the Gitea
    /// adapter; when off, forge messages wait, the CI poll is skipped and
    /// merges wait.
    pub forge_enabled: bool,
    /// `ORCH_NOTIFY_ENABLED` (default true): kill switch of the Telegram
    /// notifier; when off, notifications wait in the outbox.
    pub notify_enabled: bool,
}

impl AdapterSettings {
    /// Reads the adapter settings through `get` (blank values count as
    /// unset).
    ///
    /// Errors: [`Error::Config`] naming the first key with a bad value.
    pub fn load(get: &dyn Fn(&str) -> Option<String>) -> Result<AdapterSettings, Error> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let num = |key: &str, default: u64, min: u64| setting_num(&get, key, default, min);
        let flag = |key: &str, default: bool| setting_flag(&get, key, default);
        let url = |key: &str| -> Result<Option<String>, Error> {
            match get(key) {
                None => Ok(None),
                Some(v) if v.starts_with("http://") || v.starts_with("https://") => {
                    Ok(Some(v.trim_end_matches('/').to_string()))
                }
                Some(v) => Err(Error::config(
                    key,
                    format!("expected an http:// or https:// URL, got {v:?}"),
                )),
            }
        };
        let notifier = match get("ORCH_NOTIFIER") {
            None => NotifierKind::Log,
            Some(v) => v.parse().map_err(|m| Error::config("ORCH_NOTIFIER", m))?,
        };
        let gitea_url = url("ORCH_GITEA_URL")?;
        let plane_url = url("ORCH_PLANE_URL")?;
        Ok(AdapterSettings {
            gitea_public_url: url("ORCH_GITEA_PUBLIC_URL")?.or_else(|| gitea_url.clone()),
            gitea_url,
            gitea_token: get("ORCH_GITEA_TOKEN").map(Secret::new),
            plane_public_url: url("ORCH_PLANE_PUBLIC_URL")?.or_else(|| plane_url.clone()),
            plane_url,
            plane_api_key: get("ORCH_PLANE_API_KEY").map(Secret::new),
            plane_workspace: get("ORCH_PLANE_WORKSPACE"),
            plane_state_cache_s: num("ORCH_PLANE_STATE_CACHE_S", 3600, 0)?,
            notifier,
            telegram_bot_token: get("ORCH_TELEGRAM_BOT_TOKEN").map(Secret::new),
            telegram_chat_id: get("ORCH_TELEGRAM_CHAT_ID"),
            telegram_api_url: url("ORCH_TELEGRAM_API_URL")?
                .unwrap_or_else(|| "https://api.telegram.org".into()),
            http_connect_timeout_ms: num("ORCH_HTTP_CONNECT_TIMEOUT_MS", 5000, 1)?,
            http_timeout_ms: num("ORCH_HTTP_TIMEOUT_MS", 30_000, 1)?,
            http_max_wait_s: num("ORCH_HTTP_MAX_WAIT_S", 10, 0)?,
            tracker_enabled: flag("ORCH_TRACKER_ENABLED", true)?,
            forge_enabled: flag("ORCH_FORGE_ENABLED", true)?,
            notify_enabled: flag("ORCH_NOTIFY_ENABLED", true)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_env as env;

    #[test]
    fn admin_bind_is_a_socket_in_the_state_dir_by_default_tcp_or_a_path_when_set() {
        let load = |pairs: &[(&str, &str)]| Settings::load(&env(pairs), None, None);
        let s = load(&[("ORCH_STATE_DIR", "/srv/st")]).unwrap();
        assert_eq!(
            s.admin_bind,
            Some(AdminBind::Socket("/srv/st/admin.sock".into()))
        );
        assert_eq!(load(&[("ORCH_ADMIN_BIND", "")]).unwrap().admin_bind, None);
        assert_eq!(load(&[("ORCH_ADMIN_BIND", "  ")]).unwrap().admin_bind, None);
        assert_eq!(
            load(&[("ORCH_ADMIN_BIND", "127.0.0.1:9000")])
                .unwrap()
                .admin_bind,
            Some(AdminBind::Tcp("127.0.0.1:9000".parse().unwrap()))
        );
        assert_eq!(
            load(&[("ORCH_ADMIN_BIND", "[::1]:9000")])
                .unwrap()
                .admin_bind,
            Some(AdminBind::Tcp("[::1]:9000".parse().unwrap()))
        );
        for v in ["unix:/run/orch/admin.sock", "/run/orch/admin.sock"] {
            assert_eq!(
                load(&[("ORCH_ADMIN_BIND", v)]).unwrap().admin_bind,
                Some(AdminBind::Socket("/run/orch/admin.sock".into())),
                "{v}"
            );
        }
        for bad in [
            "unix:admin.sock",
            "unix:",
            "localhost",
            "127.0.0.1",
            "127.0.0.1:99999",
            "admin.sock",
            "http://127.0.0.1:8501",
        ] {
            let e = load(&[("ORCH_ADMIN_BIND", bad)]).unwrap_err();
            assert!(
                e.to_string().starts_with("config: ORCH_ADMIN_BIND: "),
                "{bad}: {e}"
            );
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{bad}");
        }
        // The token is a secret: never printed.
        let s = load(&[("ORCH_ADMIN_TOKEN", "tok-admin-1")]).unwrap();
        assert_eq!(
            s.admin_token.as_ref().map(Secret::expose),
            Some("tok-admin-1")
        );
        assert!(!format!("{s:?}").contains("tok-admin-1"));
    }

    #[test]
    fn settings_defaults_redaction_and_errors() {
        let s = AdapterSettings::load(&env(&[
            ("ORCH_GITEA_URL", "https://gitea.example.com/"),
            ("ORCH_GITEA_TOKEN", "tok-123"),
            ("ORCH_TELEGRAM_BOT_TOKEN", "123:abc"),
            ("ORCH_PLANE_API_KEY", "plane_api_x"),
        ]))
        .unwrap();
        assert_eq!(s.gitea_url.as_deref(), Some("https://gitea.example.com"));
        assert_eq!(s.gitea_public_url, s.gitea_url);
        assert_eq!(s.notifier, NotifierKind::Log);
        assert!(s.tracker_enabled && s.forge_enabled && s.notify_enabled);
        let dbg = format!("{s:?}");
        for secret in ["tok-123", "123:abc", "plane_api_x"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        let e = AdapterSettings::load(&env(&[("ORCH_NOTIFIER", "pager")])).unwrap_err();
        assert!(e.to_string().contains("ORCH_NOTIFIER"), "{e}");
        let e = AdapterSettings::load(&env(&[("ORCH_PLANE_URL", "plane.local")])).unwrap_err();
        assert!(e.to_string().contains("ORCH_PLANE_URL"), "{e}");
        let e = AdapterSettings::load(&env(&[("ORCH_FORGE_ENABLED", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("ORCH_FORGE_ENABLED"), "{e}");
    }
}
