//! Test fixture: a sandbox made by `scripts/make-sandbox` (a bare git
//! origin seeded with a project whose tests really run, a registry, the
//! fake agent for every role) in a temp dir, an `orch` command bound to
//! it, and helpers to read its database, sign deliveries, talk HTTP and
//! wait for conditions with a deadline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use hmac::{Hmac, Mac};
use orch::sql::Conn;
use sha2::Sha256;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Where `scripts/fake-agent` and `scripts/fake-acp-agent` read the agent
/// CLIs' captured output.
pub const AGENT_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agents");
pub const PLANE_SECRET: &str = "sandbox-plane-secret";
pub const GITEA_SECRET: &str = "sandbox-gitea-secret";

/// A fixture file's bytes (`tests/fixtures/<rel>`).
pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(ROOT).join("tests/fixtures").join(rel)).unwrap()
}

/// `hex(HMAC-SHA256(secret, body))`, as Plane and Gitea sign.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Polls `cond` every 50 ms until it holds or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Sandbox {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    /// The sandbox's own PostgreSQL database, dropped with it, when the
    /// suite runs on PostgreSQL ([`pg_base`]).
    pg: Option<PgDb>,
}

/// The PostgreSQL server the suite runs against: `ORCH_TEST_PG`, a URL of
/// a database on a server where the suite may `CREATE DATABASE` (CI's
/// throw-away cluster, `scripts/pg-cluster`). Unset: SQLite.
pub fn pg_base() -> Option<String> {
    std::env::var("ORCH_TEST_PG").ok().filter(|u| !u.is_empty())
}

/// Whether the suite runs on PostgreSQL. A test about SQLite's own file
/// (permissions, WAL, a database copied by path) returns early on it,
/// saying so: `if util::skip_on_postgres("why") { return; }`.
pub fn skip_on_postgres(why: &str) -> bool {
    if pg_base().is_some() {
        eprintln!("skipped on PostgreSQL: {why}");
        return true;
    }
    false
}

/// A database of its own on the suite's PostgreSQL server.
struct PgDb {
    base: String,
    name: String,
    url: String,
}

impl PgDb {
    fn create(base: &str) -> PgDb {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "orch_t{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let c = Conn::open(base, 10_000).unwrap();
        c.execute_batch(&format!("CREATE DATABASE {name}")).unwrap();
        let (path, query) = match base.split_once('?') {
            Some((p, q)) => (p, format!("?{q}")),
            None => (base, String::new()),
        };
        let (server, _) = path.rsplit_once('/').unwrap();
        let url = format!("{server}/{name}{query}");
        PgDb {
            base: base.to_string(),
            name,
            url,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(c) = Conn::open(&self.base, 10_000) {
            let _ = c.execute_batch(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

impl Sandbox {
    /// Where `serve` will put the admin listener, from the sandbox's
    /// `ORCH_ADMIN_BIND` and `ORCH_ADMIN_TOKEN` (unset: the socket in the
    /// state directory).
    pub fn admin(&self) -> Admin {
        match self.env.get("ORCH_ADMIN_BIND").map(|v| v.trim()) {
            None => Admin::Socket(self.state_dir().join("admin.sock")),
            Some("") => Admin::Off,
            Some(v) if v.starts_with('/') => Admin::Socket(v.into()),
            Some(v) if v.starts_with("unix:") => Admin::Socket(v["unix:".len()..].into()),
            Some(v) => Admin::Tcp {
                addr: v.to_string(),
                token: self
                    .env
                    .get("ORCH_ADMIN_TOKEN")
                    .cloned()
                    .unwrap_or_default(),
            },
        }
    }

    /// A sandbox with its database created (`orch init`).
    pub fn new() -> Sandbox {
        Sandbox::new_in(&std::env::temp_dir())
    }

    /// A sandbox with its database created, in a fresh temp dir under
    /// `base` (e.g. outside `/tmp`, which a sandboxed agent sees as an
    /// empty private dir).
    pub fn new_in(base: &Path) -> Sandbox {
        let sbx = Sandbox::uninitialised_in(base);
        sbx.ok(&["init"]);
        sbx
    }

    /// A sandbox before `orch init`: no state folder, no database.
    pub fn uninitialised() -> Sandbox {
        Sandbox::uninitialised_in(&std::env::temp_dir())
    }

    fn uninitialised_in(base: &Path) -> Sandbox {
        std::fs::create_dir_all(base).unwrap();
        let tmp = tempfile::tempdir_in(base).unwrap();
        let dir = tmp.path().join("sbx");
        let out = StdCommand::new(Path::new(ROOT).join("scripts/make-sandbox"))
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-sandbox: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut env = BTreeMap::new();
        for line in std::fs::read_to_string(dir.join("orch.env"))
            .unwrap()
            .lines()
        {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                env.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        // The scripted agents read their captures from the checkout: a
        // checkout under /tmp (CI may clone there) is hidden by the agent
        // sandbox's private /tmp, so the captures are bound in, beside
        // the fake agent's session store (orch.env).
        let writable = env
            .get("ORCH_AGENT_SANDBOX_WRITABLE")
            .map_or(AGENT_FIXTURES.to_string(), |w| {
                format!("{AGENT_FIXTURES}:{w}")
            });
        env.insert("ORCH_AGENT_SANDBOX_WRITABLE".to_string(), writable);
        let pg = pg_base().map(|base| PgDb::create(&base));
        if let Some(pg) = &pg {
            env.insert("ORCH_DB".to_string(), pg.url.clone());
        }
        Sandbox {
            _tmp: tmp,
            dir,
            env,
            pg,
        }
    }

    /// A second handle on this sandbox (same folder, database and
    /// settings), whose settings can be changed apart; dropping it drops
    /// nothing.
    pub fn alias(&self) -> Sandbox {
        Sandbox {
            _tmp: tempfile::tempdir().unwrap(),
            dir: self.dir.clone(),
            env: self.env.clone(),
            pg: None,
        }
    }

    /// Writes the database's schema version (`PRAGMA user_version`, or
    /// PostgreSQL's `schema_version` row), to fake an older or newer orch.
    pub fn set_schema_version(&self, v: i64) {
        let db = self.db();
        match db.dialect() {
            orch::sql::Dialect::Sqlite => db.execute_batch(&format!("PRAGMA user_version = {v}")),
            orch::sql::Dialect::Postgres => db
                .execute("UPDATE schema_version SET version=?1", [v])
                .map(drop),
        }
        .unwrap();
    }

    /// Sets (or overrides) an environment variable for every later command.
    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// Appends TOML to the sandbox config (e.g. a `[agents.reviewer]`).
    pub fn append_config(&self, toml: &str) {
        let p = self.dir.join("orch.toml");
        let mut s = std::fs::read_to_string(&p).unwrap();
        s.push_str(toml);
        std::fs::write(p, s).unwrap();
    }

    fn apply_env(&self, c: &mut StdCommand) {
        c.current_dir(&self.dir);
        for (k, _) in std::env::vars() {
            if k.starts_with("ORCH_")
                || k.starts_with("FAKE_AGENT_")
                || k == "RUST_LOG"
                || k == "FAILPOINTS"
            {
                c.env_remove(k);
            }
        }
        // Never the host's installed /etc/orch/orch.env: the sandbox's
        // settings alone.
        c.env("ORCH_ENV_FILE", "");
        c.envs(&self.env);
    }

    /// An `orch` command in the sandbox.
    pub fn orch(&self) -> Command {
        let mut c = StdCommand::new(env!("CARGO_BIN_EXE_orch"));
        self.apply_env(&mut c);
        Command::from_std(c)
    }

    /// A raw `std::process::Command` for the `orch` binary at `bin` (a
    /// copy, e.g. to replace it mid-run), in the sandbox.
    pub fn orch_at(&self, bin: &Path) -> StdCommand {
        let mut c = StdCommand::new(bin);
        self.apply_env(&mut c);
        c
    }

    /// A raw `std::process::Command` for `orch` (for background children).
    pub fn orch_std(&self) -> StdCommand {
        let mut c = StdCommand::new(env!("CARGO_BIN_EXE_orch"));
        self.apply_env(&mut c);
        c
    }

    /// Runs `orch ARGS` and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.orch().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "orch {args:?} exited {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `orch --json ARGS`, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// The state folder (a relative `ORCH_STATE_DIR` is relative to the
    /// sandbox, where every `orch` runs).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(&self.env["ORCH_STATE_DIR"])
    }

    /// The database: the SQLite file in the state folder, or (on
    /// PostgreSQL) the sandbox's own database's URL, as `ORCH_DB` takes it.
    pub fn db_path(&self) -> PathBuf {
        match (&self.pg, self.env.get("ORCH_DB")) {
            (Some(pg), _) => PathBuf::from(&pg.url),
            // An alias of a sandbox on PostgreSQL: the same database.
            (None, Some(url)) if orch::sql::is_postgres_url(url) => PathBuf::from(url),
            (None, _) => self.state_dir().join("orch.db"),
        }
    }

    /// The prompt file of the latest run of task `task`'s `stage` job
    /// (`<state>/logs/job<N>-a<k>.prompt`).
    pub fn prompt_of(&self, task: i64, stage: &str) -> String {
        let (job, attempt): (i64, i64) = self
            .db()
            .query_row(
                "SELECT job_id, attempt FROM agent_runs WHERE task_id=?1 AND stage=?2 ORDER BY id DESC LIMIT 1",
                orch::sql::params![task, stage],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        self.prompt_of_run(job, attempt)
    }

    /// The prompt file of run `attempt` of job `job`.
    pub fn prompt_of_run(&self, job: i64, attempt: i64) -> String {
        let p = self
            .state_dir()
            .join("logs")
            .join(format!("job{job}-a{attempt}.prompt"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The worktree of task `id`.
    pub fn worktree(&self, id: i64) -> PathBuf {
        PathBuf::from(
            self.json(&["task", "show", &id.to_string()])["task"]["worktree"]
                .as_str()
                .unwrap(),
        )
    }

    /// The reason of task `id`'s latest transition.
    pub fn last_reason(&self, id: i64) -> String {
        self.db()
            .query_row(
                "SELECT reason FROM transitions WHERE task_id=?1 ORDER BY version DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }

    pub fn origin(&self) -> PathBuf {
        self.dir.join("origin.git")
    }

    /// A read connection to the sandbox database.
    pub fn db(&self) -> Conn {
        Conn::open(self.db_path().to_str().unwrap(), 5_000).unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// `orch issue add --project widget --title TITLE`; returns the task id.
    pub fn add_issue(&self, title: &str) -> i64 {
        let v = self.json(&["issue", "add", "--project", "widget", "--title", title]);
        v["task_id"].as_i64().unwrap()
    }

    /// `orch work-once` killed (failpoint `worker.after_exit_recorded`,
    /// the `testing` feature) once its agent's exit is recorded: its job
    /// is left running, to be finalized.
    pub fn work_once_dying_after_the_exit(&self) {
        let out = self
            .orch()
            .args(["work-once"])
            .env("FAILPOINTS", "worker.after_exit_recorded=return")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "killed by the failpoint");
    }

    /// An in-process context on the sandbox's settings.
    pub fn ctx(&self) -> orch::ctx::Ctx {
        let env = self.env.clone();
        let settings = orch::config::Settings::load(&|k| env.get(k).cloned(), None, None).unwrap();
        orch::ctx::Ctx::load(settings).unwrap()
    }

    /// Starts `orch ARGS` in the background with `env` added (stdout
    /// discarded, stderr piped: read it with `wait_with_output`).
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        self.orch_std()
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `git --git-dir origin.git ARGS` → trimmed stdout.
    pub fn origin_git(&self, args: &[&str]) -> String {
        let origin = self.origin();
        let mut a = vec!["--git-dir", origin.to_str().unwrap()];
        a.extend_from_slice(args);
        git_in(&self.dir, &a)
    }

    /// Runs `orch reap` and asserts its first action requeued a job for
    /// `attempt` (Tier-1: its worker is gone).
    pub fn reap_requeues(&self, attempt: i64) {
        let done = self.json(&["reap"]);
        assert!(
            done["actions"][0]["result"]
                .as_str()
                .unwrap()
                .starts_with(&format!("requeued for attempt {attempt}")),
            "{done}"
        );
    }

    /// The stage of task `id`.
    pub fn stage(&self, id: i64) -> String {
        self.db()
            .query_row("SELECT stage FROM tasks WHERE id=?1", [id], |r| r.get(0))
            .unwrap()
    }

    /// `(from, to, actor)` of task `id`'s transitions in order.
    pub fn transitions(&self, id: i64) -> Vec<(Option<String>, String, String)> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT from_stage, to_stage, actor FROM transitions WHERE task_id=?1 ORDER BY version")
            .unwrap();
        st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Runs `orch tick` until `done` holds or `max` ticks passed.
    pub fn tick_until(&self, max: usize, mut done: impl FnMut(&Sandbox) -> bool) {
        for _ in 0..max {
            if done(self) {
                return;
            }
            self.ok(&["tick"]);
        }
        assert!(
            done(self),
            "condition not reached after {max} ticks\n{}",
            self.dump()
        );
    }

    /// Starts `orch serve` on a free loopback port and waits for /healthz.
    /// Its admin listener is the sandbox's `ORCH_ADMIN_BIND` (by default
    /// the socket `<state_dir>/admin.sock`; TCP with `ORCH_ADMIN_TOKEN`).
    pub fn serve(&self) -> Server {
        self.serve_with(None)
    }

    /// [`Sandbox::serve`], optionally with `RLIMIT_NOFILE` (soft and hard)
    /// set to `open_files` in the server process.
    pub fn serve_with(&self, open_files: Option<u64>) -> Server {
        use std::os::unix::process::CommandExt;
        let addr = format!("127.0.0.1:{}", free_port());
        let admin = self.admin();
        let mut cmd = self.orch_std();
        let log = self.dir.join("serve.stderr");
        cmd.args(["serve", "--bind", &addr])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(n) = open_files {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let mut server = Server { child, addr, admin };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(server.request("GET", "/healthz", &[], b""), Ok((200, _))) {
            let exited = server.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "orch serve did not answer /healthz ({exited:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Pushes a commit that appends `line` to `file` on origin's main, as
    /// another developer would.
    pub fn push_to_main(&self, file: &str, line: &str) {
        let scratch = self.dir.join("other-dev");
        let _ = std::fs::remove_dir_all(&scratch);
        git_in(
            &self.dir,
            &[
                "clone",
                "-q",
                self.origin().to_str().unwrap(),
                scratch.to_str().unwrap(),
            ],
        );
        let path = scratch.join(file);
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        git_in(&scratch, &["add", "-A"]);
        git_in(
            &scratch,
            &[
                "-c",
                "user.name=o",
                "-c",
                "user.email=o@x",
                "commit",
                "-qm",
                "another change on main",
            ],
        );
        git_in(&scratch, &["push", "-q", "origin", "HEAD:main"]);
    }

    /// Every table's rows, one line each (`table: v|v|…`), plus origin's
    /// refs: what "writes nothing" compares.
    pub fn dump(&self) -> String {
        let db = self.db();
        let tables = db.table_names().unwrap();
        let mut out = String::new();
        for t in tables {
            let mut st = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
            let n = st.column_count();
            let mut rows: Vec<String> = st
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| match r.get_ref(i).unwrap() {
                            orch::sql::ValueRef::Text(t) => t.chars().take(80).collect(),
                            orch::sql::ValueRef::Blob(b) => {
                                String::from_utf8_lossy(b).chars().take(80).collect()
                            }
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            // Sorted: the same rows in the same order on either backend.
            rows.sort();
            for row in rows {
                out += &format!("{t}: {row}\n");
            }
        }
        out += &self.origin_git(&["for-each-ref"]);
        out
    }

    /// Checks the invariants of DESIGN §11 that hold for any finished run:
    /// integrity, no duplicate transition, legal stage paths, no job
    /// running without a worker, at most one job per (task, stage, version).
    pub fn check_invariants(&self) {
        let db = self.db();
        if db.dialect() == orch::sql::Dialect::Sqlite {
            let ok: String = db
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
            let fk = db
                .prepare("PRAGMA foreign_key_check")
                .unwrap()
                .query_map([], |_| Ok(()))
                .unwrap()
                .count();
            assert_eq!(fk, 0, "foreign key violations");
        }
        let order = [
            "analysis",
            "architecture",
            "development",
            "review",
            "testing",
            "deploy-staging",
            "deploy",
            "done",
        ];
        let idx = |s: &str| order.iter().position(|x| *x == s).unwrap();
        let mut st = db.prepare("SELECT task_id, version, from_stage, to_stage FROM transitions ORDER BY task_id, version").unwrap();
        let rows: Vec<(i64, i64, Option<String>, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut last: Option<(i64, i64, String)> = None;
        for (task, version, from, to) in rows {
            match &last {
                Some((t, v, prev_to)) if *t == task => {
                    assert_eq!(version, v + 1, "task {task}: versions skip or repeat");
                    assert_eq!(
                        from.as_deref(),
                        Some(prev_to.as_str()),
                        "task {task}: transition does not start where the last ended"
                    );
                    let (f, t2) = (idx(from.as_deref().unwrap()), idx(&to));
                    let legal = t2 == f + 1 || t2 == f || (to == "development" && f > 2 && f < 7);
                    assert!(legal, "task {task}: illegal transition {from:?} → {to}");
                }
                _ => {
                    assert_eq!(
                        version, 1,
                        "task {task}: first transition must be version 1"
                    );
                    assert!(from.is_none());
                }
            }
            last = Some((task, version, to));
        }
        let dup: i64 = db
            .query_row("SELECT COUNT(*) FROM (SELECT 1 FROM jobs GROUP BY task_id, stage, task_version HAVING COUNT(*)>1) AS d", [], |r| r.get(0))
            .unwrap();
        assert_eq!(dup, 0);
        let out = self.orch().args(["check"]).output().unwrap();
        assert!(
            out.status.success(),
            "orch check: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A running `orch serve`; killed on drop.
/// A port on 127.0.0.1 that was free a moment ago (the OS's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub child: Child,
    /// The webhook listener.
    pub addr: String,
    /// The admin listener (`/queue`, `/metrics`).
    pub admin: Admin,
}

/// Where a test's `orch serve` has its admin listener.
#[derive(Debug, Clone)]
pub enum Admin {
    /// None (`ORCH_ADMIN_BIND` set but empty).
    Off,
    /// A Unix socket (the default: `<state_dir>/admin.sock`).
    Socket(PathBuf),
    /// TCP at `addr`; requests carry `Authorization: Bearer <token>`.
    Tcp { addr: String, token: String },
}

impl Server {
    /// Sends one HTTP/1.1 request to the webhook listener; returns
    /// (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        request_to(&self.addr, method, path, headers, body)
    }

    /// A GET to the admin listener (with the bearer token on TCP); returns
    /// (status, body).
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        match &self.admin {
            Admin::Off => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no admin listener",
            )),
            Admin::Socket(p) => admin_socket_get(p, path),
            Admin::Tcp { addr, token } => {
                let auth = format!("Bearer {token}");
                request_to(addr, "GET", path, &[("Authorization", &auth)], b"")
            }
        }
    }
}

/// A GET over the Unix socket at `socket`; returns (status, body).
pub fn admin_socket_get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(&mut s, "admin", "GET", path, &[], b"")
}

/// Sends one HTTP/1.1 request to `addr`; returns (status, body).
pub fn request_to(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(&mut s, addr, method, path, headers, body)
}

/// One request on an open connection, read until the server closes it.
fn exchange(
    s: &mut (impl Read + Write),
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    {
        let addr = host;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            addr,
            body.len()
        );
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Server {
    /// Posts a Plane delivery signed with the sandbox secret.
    pub fn post_plane(&self, body: &[u8], delivery: &str) -> (u16, String) {
        let sig = sign(PLANE_SECRET, body);
        self.request(
            "POST",
            "/webhooks/plane",
            &[
                ("Content-Type", "application/json"),
                ("X-Plane-Event", "issue"),
                ("X-Plane-Delivery", delivery),
                ("X-Plane-Signature", &sig),
            ],
            body,
        )
        .unwrap()
    }
}

impl Server {
    /// A keep-alive connection to the server.
    pub fn client(&self) -> std::io::Result<Client> {
        Client::connect(&self.addr)
    }

    /// Sends SIGTERM and waits up to `secs` for the exit; returns the exit
    /// code (`None`: killed by a signal).
    pub fn terminate(&mut self, secs: u64) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(secs)
    }

    /// Waits up to `secs` for the server to exit; returns the exit code
    /// (`None`: killed by a signal).
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "orch serve still running {secs} s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open file descriptors of the server process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// A signed Plane delivery `(headers, body)` that no other delivery
/// shares: its id is `id`, and the body (built from the In Progress fixture)
/// carries `id` too, so the body hash is unique as well.
pub fn unique_plane_delivery(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(
        "plane/webhooks/issue-updated-state-in-progress.json",
    ))
    .unwrap();
    v["test_delivery"] = serde_json::Value::String(id.to_string());
    let body = serde_json::to_vec(&v).unwrap();
    let headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("X-Plane-Event".to_string(), "issue".to_string()),
        ("X-Plane-Delivery".to_string(), id.to_string()),
        ("X-Plane-Signature".to_string(), sign(PLANE_SECRET, &body)),
    ];
    (headers, body)
}

/// A minimal HTTP/1.1 keep-alive client on one connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one request (with `Content-Length`) and reads the answer:
    /// `(status, body, the server closes the connection)`.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, bool)> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        let mut raw = req.into_bytes();
        raw.extend_from_slice(body);
        self.stream.write_all(&raw)?;
        self.read_answer()
    }

    /// Reads one answer (its body framed by `Content-Length`).
    pub fn read_answer(&mut self) -> std::io::Result<(u16, String, bool)> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed mid-answer");
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(eof());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let closes = head.lines().any(|l| l.trim() == "connection: close");
        while self.buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(eof());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).to_string();
        self.buf.drain(..head_end + len);
        Ok((status, body, closes))
    }

    /// The raw stream (to send partial requests).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Reads from `s` until the peer closes it, an error, or `limit` passes:
/// `(bytes, closed)`.
pub fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return (out, false);
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false)
            }
            Err(_) => return (out, true),
        }
    }
}

/// The status code and JSON body of a raw answer (0 and `Null` if none).
pub fn parse_answer(raw: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (as `orch
/// serve` does); returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    orch::serve::raise_open_files_limit().expect("getrlimit(RLIMIT_NOFILE)")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Is a process with this pid alive (and not a zombie)?
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit_once(')').map(|x| x.1.trim_start().chars().next()),
            Some(Some('Z')) | Some(Some('X'))
        ),
        Err(_) => false,
    }
}

/// `git -C DIR ARGS`, asserting success; returns trimmed stdout.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = StdCommand::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `sh test.sh` on every commit of origin's main first-parent history.
pub fn assert_main_always_green(sbx: &Sandbox) {
    let clone = sbx.dir.join("history-check");
    let _ = std::fs::remove_dir_all(&clone);
    let out = StdCommand::new("git")
        .arg("clone")
        .arg("-q")
        .arg(sbx.origin())
        .arg(&clone)
        .output()
        .unwrap();
    assert!(out.status.success());
    let commits = sbx.origin_git(&["rev-list", "--first-parent", "main"]);
    assert!(commits.lines().count() > 1);
    for sha in commits.lines() {
        git_in(&clone, &["checkout", "-q", "--detach", sha]);
        let t = StdCommand::new("sh")
            .arg("test.sh")
            .current_dir(&clone)
            .output()
            .unwrap();
        assert!(
            t.status.success(),
            "main's commit {sha} is red: {}",
            String::from_utf8_lossy(&t.stderr)
        );
    }
}
