//! Fake Gitea, Plane and Telegram servers on loopback, speaking the shapes
//! of `tests/fixtures/{gitea,plane,telegram}` and recording every request
//! (method, path with query, headers, body), so a test can assert the
//! exact sequence of calls and that nothing else was called.
//!
//! The servers are a few lines of HTTP/1.1 over `std::net` rather than
//! tiny_http: a test must be able to drop a connection *after* the fake
//! applied the request (a comment stored, no answer sent), which tiny_http
//! does not allow (an unanswered request gets an automatic 500). Every
//! answer closes its connection.
//!
//! Faults are scripted per route ([`Fault`]): an HTTP status with a body
//! and headers (5xx, 429 with `Retry-After`), a dropped connection before
//! or after applying the request, a slow answer (past the client's
//! timeout), or a malformed JSON body after applying the request.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::fixture;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// `"METHOD /path"` (no query).
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(status: u16, v: &Value) -> Resp {
        Resp {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(v).unwrap(),
        }
    }
    pub fn empty(status: u16) -> Resp {
        Resp {
            status,
            headers: vec![],
            body: vec![],
        }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// What the fake does with a request, after the route logic.
pub enum Outcome {
    Answer(Resp),
    /// Close the connection without answering.
    Drop,
    /// Sleep, then answer.
    Slow(Duration, Resp),
}

/// A scripted fault for the next request matching a route.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status, body and headers; the request is not
    /// applied.
    Status(u16, Value, Vec<(String, String)>),
    /// Close the connection without applying the request.
    Drop,
    /// Apply the request, then close the connection without answering.
    DropAfterApply,
    /// Apply the request, then answer after this many milliseconds.
    SlowAfterApply(u64),
    /// Apply the request, then answer 200 with a body that is not JSON.
    MalformedAfterApply,
}

/// Faults waiting for their route: `(method, path substring, fault)`.
#[derive(Default)]
pub struct Faults(Mutex<VecDeque<(String, String, Fault)>>);

impl Faults {
    pub fn push(&self, method: &str, path_contains: &str, f: Fault) {
        self.0
            .lock()
            .unwrap()
            .push_back((method.into(), path_contains.into(), f));
    }
    fn take(&self, r: &Req) -> Option<Fault> {
        let mut q = self.0.lock().unwrap();
        let i = q
            .iter()
            .position(|(m, p, _)| *m == r.method && r.path().contains(p.as_str()))?;
        q.remove(i).map(|x| x.2)
    }
}

/// Runs the route handler under the scripted faults. `apply` performs
/// the request and returns the normal answer.
pub fn with_faults(faults: &Faults, r: &Req, apply: impl FnOnce() -> Resp) -> Outcome {
    match faults.take(r) {
        None => Outcome::Answer(apply()),
        Some(Fault::Status(s, body, headers)) => {
            let mut resp = Resp::json(s, &body);
            resp.headers.extend(headers);
            Outcome::Answer(resp)
        }
        Some(Fault::Drop) => Outcome::Drop,
        Some(Fault::DropAfterApply) => {
            apply();
            Outcome::Drop
        }
        Some(Fault::SlowAfterApply(ms)) => Outcome::Slow(Duration::from_millis(ms), apply()),
        Some(Fault::MalformedAfterApply) => {
            apply();
            Outcome::Answer(Resp {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: b"{\"id\": 12, \"body\": \"trunc".to_vec(),
            })
        }
    }
}

type Handler = Arc<dyn Fn(&Req) -> Outcome + Send + Sync>;

/// A loopback HTTP server recording every request.
pub struct FakeServer {
    pub addr: String,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&Req) -> Outcome + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log: Arc<Mutex<Vec<Req>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (log, handler) = (log2.clone(), handler.clone());
                std::thread::spawn(move || serve_one(conn, &log, &*handler));
            }
        });
        FakeServer { addr, log, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    /// `"METHOD /path"` of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Req::line).collect()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve_one(
    conn: TcpStream,
    log: &Mutex<Vec<Req>>,
    handler: &(dyn Fn(&Req) -> Outcome + Send + Sync),
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let req = Req {
        method,
        target,
        headers,
        body,
    };
    log.lock().unwrap().push(req.clone());
    let mut conn = conn;
    let resp = match handler(&req) {
        Outcome::Drop => {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        Outcome::Slow(d, r) => {
            std::thread::sleep(d);
            r
        }
        Outcome::Answer(r) => r,
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&resp.body);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

fn reason(s: u16) -> &'static str {
    match s {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture(rel)).unwrap()
}

// ------------------------------------------------------------------ Gitea

pub const GITEA_TOKEN: &str = "gitea-test-token-0123";

/// A pull request in the fake Gitea.
#[derive(Debug, Clone)]
pub struct FakePr {
    pub number: i64,
    pub head: String,
    pub base: String,
    pub title: String,
    pub merged: bool,
    pub merge_commit: Option<String>,
    pub merge_body: Option<Value>,
}

/// The fake Gitea's state.
#[derive(Debug, Default)]
pub struct GiteaState {
    pub prs: Vec<FakePr>,
    /// PR number → comments `(id, body)`.
    pub comments: BTreeMap<i64, Vec<(i64, String)>>,
    /// sha → `(context, status)` entries.
    pub statuses: BTreeMap<String, Vec<(String, String)>>,
    /// Answer GET status with success for any sha from this call on.
    pub success_after_polls: Option<usize>,
    pub polls: usize,
    pub next_comment: i64,
    /// A Gitea older than 1.22: no `GET pulls/{base}/{head}` route.
    pub before_1_22: bool,
    /// The token's scopes (`write:repository`, …); `None`: all of them.
    pub scopes: Option<Vec<&'static str>>,
    /// `GET /version`'s answer instead of the fixture's.
    pub version: Option<String>,
    /// Fields of the repository (`GET /repos/acme/widget`) that differ
    /// from the fixture's, e.g. `allow_squash_merge: false`; `null`
    /// drops the field (an older Gitea). The fake's repository allows
    /// manual merges unless set here; the merge route refuses a style
    /// the repository does not allow, as Gitea does.
    pub repo_settings: BTreeMap<&'static str, Value>,
}

impl GiteaState {
    /// The repository as `GET /repos/acme/widget` answers it.
    pub fn repository(&self) -> Value {
        let mut v = fixture_json("gitea/api/get-repository.200.json");
        v["allow_manual_merge"] = json!(true);
        let obj = v.as_object_mut().unwrap();
        for (k, val) in &self.repo_settings {
            if val.is_null() {
                obj.remove(*k);
            } else {
                obj.insert(k.to_string(), val.clone());
            }
        }
        v
    }

    /// Whether the repository allows merging with `Do` style `style`
    /// (Gitea's `IsMergeStyleAllowed`: a missing field is not allowed).
    fn style_allowed(&self, style: &str) -> bool {
        let field = match style {
            "merge" => "allow_merge_commits",
            "rebase" => "allow_rebase",
            "rebase-merge" => "allow_rebase_explicit",
            "squash" => "allow_squash_merge",
            "fast-forward-only" => "allow_fast_forward_only_merge",
            "manually-merged" => "allow_manual_merge",
            _ => return false,
        };
        self.repository()[field] == json!(true)
    }
}

/// A fake Gitea for repo `acme/widget` (REST v1), backed by the sandbox's
/// bare origin for branch heads and merges.
pub struct FakeGitea {
    pub server: FakeServer,
    pub state: Arc<Mutex<GiteaState>>,
    pub faults: Arc<Faults>,
}

fn git(origin: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(origin)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn gitea_pr_json(pr: &FakePr, origin: &Path) -> Value {
    let mut v = fixture_json(if pr.merged {
        "gitea/api/get-pull-request-merged.200.json"
    } else {
        "gitea/api/create-pull-request.201.json"
    });
    let url = format!("https://gitea.example.com/acme/widget/pulls/{}", pr.number);
    v["number"] = json!(pr.number);
    v["url"] = json!(url);
    v["html_url"] = json!(url);
    v["title"] = json!(pr.title);
    v["head"]["ref"] = json!(pr.head);
    v["head"]["label"] = json!(pr.head);
    v["head"]["sha"] =
        json!(git(origin, &["rev-parse", &format!("refs/heads/{}", pr.head)]).unwrap_or_default());
    v["base"]["ref"] = json!(pr.base);
    v["base"]["label"] = json!(pr.base);
    v["merge_commit_sha"] = json!(pr.merge_commit);
    v
}

fn gitea_not_found() -> Resp {
    Resp::json(404, &fixture_json("gitea/api/error-404.404.json"))
}

impl FakeGitea {
    pub fn start(origin: PathBuf) -> FakeGitea {
        let state: Arc<Mutex<GiteaState>> = Arc::default();
        let faults: Arc<Faults> = Arc::default();
        let (st, fl) = (state.clone(), faults.clone());
        let server = FakeServer::start(move |r| {
            if r.header("Authorization") != Some(&format!("token {GITEA_TOKEN}")) {
                return Outcome::Answer(Resp::json(
                    401,
                    &json!({"message": "token is required", "url": "https://gitea.example.com/api/swagger"}),
                ));
            }
            with_faults(&fl, r, || gitea_route(&st, &origin, r))
        });
        FakeGitea {
            server,
            state,
            faults,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn comments(&self, pr: i64) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .comments
            .get(&pr)
            .map(|c| c.iter().map(|x| x.1.clone()).collect())
            .unwrap_or_default()
    }
}

/// Gitea's 422 for a body without a required field (`[Head]: Required`).
fn gitea_required(field: &str) -> Resp {
    let mut v = fixture_json("gitea/api/error-422-required.422.json");
    v["message"] = json!(format!("[{field}]: Required"));
    Resp::json(422, &v)
}

fn gitea_route(st: &Mutex<GiteaState>, origin: &Path, r: &Req) -> Resp {
    if (r.method.as_str(), r.path()) == ("GET", "/api/v1/version") {
        let mut v = fixture_json("gitea/api/version.200.json");
        if let Some(version) = &st.lock().unwrap().version {
            v["version"] = json!(version);
        }
        return Resp::json(200, &v);
    }
    if (r.method.as_str(), r.path()) == ("GET", "/api/v1/repos/acme/widget") {
        return Resp::json(200, &st.lock().unwrap().repository());
    }
    let Some(rest) = r.path().strip_prefix("/api/v1/repos/acme/widget/") else {
        return gitea_not_found();
    };
    let mut s = st.lock().unwrap();
    let segs: Vec<&str> = rest.split('/').collect();
    // The route group's scope check runs first: writes to pulls need
    // write:repository, to issues (comments) write:issue.
    let scope = match segs[0] {
        "issues" => "write:issue",
        _ => "write:repository",
    };
    if r.method != "GET" && s.scopes.as_ref().is_some_and(|have| !have.contains(&scope)) {
        let mut v = fixture_json("gitea/api/error-403-token-scope.403.json");
        v["message"] = json!(format!(
            "token does not have at least one of required scope(s): [{scope}]"
        ));
        return Resp::json(403, &v);
    }
    match (r.method.as_str(), segs.as_slice()) {
        ("POST", ["pulls"]) => {
            let b = r.json();
            for (key, field) in [("head", "Head"), ("base", "Base"), ("title", "Title")] {
                if b[key].as_str().unwrap_or("").is_empty() {
                    return gitea_required(field);
                }
            }
            let (head, base) = (
                b["head"].as_str().unwrap_or("").to_string(),
                b["base"].as_str().unwrap_or("").to_string(),
            );
            if git(origin, &["rev-parse", &format!("refs/heads/{head}")]).is_none() {
                return gitea_not_found();
            }
            if s.prs
                .iter()
                .any(|p| p.head == head && p.base == base && !p.merged)
            {
                return Resp::json(409, &fixture_json("gitea/api/error-409-pr-exists.409.json"));
            }
            let pr = FakePr {
                number: 7 + s.prs.len() as i64,
                head,
                base,
                title: b["title"].as_str().unwrap_or("").into(),
                merged: false,
                merge_commit: None,
                merge_body: None,
            };
            s.prs.push(pr.clone());
            Resp::json(201, &gitea_pr_json(&pr, origin))
        }
        ("GET", ["pulls", n]) if n.parse::<i64>().is_ok() => {
            let n: i64 = n.parse().unwrap();
            match s.prs.iter().find(|p| p.number == n) {
                Some(p) => Resp::json(200, &gitea_pr_json(p, origin)),
                None => gitea_not_found(),
            }
        }
        ("POST", ["pulls", n, "merge"]) => {
            let n: i64 = n.parse().unwrap_or(0);
            let b = r.json();
            let Some(i) = s.prs.iter().position(|p| p.number == n) else {
                return gitea_not_found();
            };
            if s.prs[i].merged {
                return Resp::json(
                    405,
                    &json!({"message": "The PR is already merged", "url": "https://gitea.example.com/api/swagger"}),
                );
            }
            let base_ref = format!("refs/heads/{}", s.prs[i].base);
            let style = b["Do"].as_str().unwrap_or("");
            if !s.style_allowed(style) {
                return Resp::json(
                    405,
                    &json!({"message": format!("{style} is not allowed an allowed merge style for this repository"), "url": "https://gitea.example.com/api/swagger"}),
                );
            }
            if style == "manually-merged" {
                // Gitea's MergedManually: the commit a full sha it has,
                // on the base branch; nothing is merged.
                let commit = b["MergeCommitID"].as_str().unwrap_or("");
                let base = git(origin, &["rev-parse", &base_ref]).unwrap_or_default();
                if commit.len() != 40
                    || git(origin, &["cat-file", "-e", &format!("{commit}^{{commit}}")]).is_none()
                    || git(origin, &["merge-base", "--is-ancestor", commit, &base]).is_none()
                {
                    // The Go error struct, as Gitea answers it.
                    return Resp::json(409, &json!({}));
                }
                s.prs[i].merged = true;
                s.prs[i].merge_commit = Some(commit.to_string());
                s.prs[i].merge_body = Some(b);
                return Resp::empty(200);
            }
            let head_ref = format!("refs/heads/{}", s.prs[i].head);
            let head = git(origin, &["rev-parse", &head_ref]).unwrap_or_default();
            if b["head_commit_id"].as_str() != Some(head.as_str()) {
                return Resp::json(
                    409,
                    &json!({"message": "head out of date", "url": "https://gitea.example.com/api/swagger"}),
                );
            }
            let base = git(origin, &["rev-parse", &base_ref]).unwrap_or_default();
            if git(origin, &["merge-base", "--is-ancestor", &base, &head]).is_none() {
                return Resp::json(
                    405,
                    &json!({"message": "The head branch is behind the base branch", "url": "https://gitea.example.com/api/swagger"}),
                );
            }
            git(origin, &["update-ref", &base_ref, &head, &base]).expect("fast-forward main");
            s.prs[i].merged = true;
            s.prs[i].merge_commit = Some(head);
            s.prs[i].merge_body = Some(b);
            Resp::empty(200)
        }
        ("GET", ["pulls"]) => {
            // The open PRs into `base_branch` (API.md §3; no head filter).
            let base = r.query("base_branch");
            let list: Vec<Value> = s
                .prs
                .iter()
                .filter(|p| !p.merged && base.as_deref().is_none_or(|b| b == p.base))
                .map(|p| gitea_pr_json(p, origin))
                .collect();
            Resp::json(200, &json!(list))
        }
        ("GET", ["pulls", base, head @ ..]) if !s.before_1_22 => {
            let head = head.join("/");
            match s
                .prs
                .iter()
                .rev()
                .find(|p| p.base == *base && p.head == head)
            {
                Some(p) => Resp::json(200, &gitea_pr_json(p, origin)),
                None => gitea_not_found(),
            }
        }
        ("GET", ["commits", sha, "status"]) => {
            s.polls += 1;
            if s.success_after_polls.is_some_and(|n| s.polls >= n) {
                s.statuses
                    .entry(sha.to_string())
                    .or_insert_with(|| vec![("CI / test (push)".into(), "success".into())]);
            }
            match s.statuses.get(*sha) {
                None => {
                    let mut v = fixture_json("gitea/api/combined-status-none.200.json");
                    v["sha"] = json!(sha);
                    Resp::json(200, &v)
                }
                Some(list) => {
                    let mut v = fixture_json("gitea/api/combined-status-success.200.json");
                    let template = v["statuses"][0].clone();
                    let entries: Vec<Value> = list
                        .iter()
                        .map(|(c, st)| {
                            let mut e = template.clone();
                            e["context"] = json!(c);
                            e["status"] = json!(st);
                            e
                        })
                        .collect();
                    let combined = if list.iter().any(|x| x.1 == "failure" || x.1 == "error") {
                        "failure"
                    } else if list.iter().all(|x| x.1 == "success") {
                        "success"
                    } else {
                        "pending"
                    };
                    v["state"] = json!(combined);
                    v["sha"] = json!(sha);
                    v["total_count"] = json!(entries.len());
                    v["statuses"] = json!(entries);
                    Resp::json(200, &v)
                }
            }
        }
        ("GET", ["issues", n, "comments"]) => {
            let n: i64 = n.parse().unwrap_or(0);
            let list: Vec<Value> = s
                .comments
                .get(&n)
                .into_iter()
                .flatten()
                .map(|(id, body)| gitea_comment(n, *id, body))
                .collect();
            Resp::json(200, &json!(list))
        }
        ("POST", ["issues", n, "comments"]) => {
            let n: i64 = n.parse().unwrap_or(0);
            if r.json()["body"].as_str().unwrap_or("").is_empty() {
                return gitea_required("Body");
            }
            if !s.prs.iter().any(|p| p.number == n) {
                return gitea_not_found();
            }
            s.next_comment += 1;
            let id = 210 + s.next_comment;
            let body = r.json()["body"].as_str().unwrap_or("").to_string();
            s.comments.entry(n).or_default().push((id, body.clone()));
            Resp::json(201, &gitea_comment(n, id, &body))
        }
        _ => gitea_not_found(),
    }
}

fn gitea_comment(pr: i64, id: i64, body: &str) -> Value {
    let mut v = fixture_json("gitea/api/create-issue-comment.201.json");
    v["id"] = json!(id);
    v["body"] = json!(body);
    v["html_url"] = json!(format!(
        "https://gitea.example.com/acme/widget/pulls/{pr}#issuecomment-{id}"
    ));
    v["pull_request_url"] = json!(format!("https://gitea.example.com/acme/widget/pulls/{pr}"));
    v
}

// ------------------------------------------------------------------ Plane

pub const PLANE_KEY: &str = "plane_api_testkey0123";
pub const PLANE_PROJECT: &str = "cf85e055-76eb-4023-839c-9c8cdb44fd2b";
pub const PLANE_ISSUE: &str = "b2ec7265-54a6-4ae7-9ab1-a4bf993a9690";
pub const NEEDS_INPUT_ID: &str = "7d1c55b4-2a2f-4d4e-9d4a-2f0b3c1d6e01";
pub const BLOCKED_ID: &str = "7d1c55b4-2a2f-4d4e-9d4a-2f0b3c1d6e02";

/// A comment in the fake Plane.
#[derive(Debug, Clone)]
pub struct FakeComment {
    pub id: String,
    pub issue: String,
    pub html: String,
    pub external_id: Option<String>,
}

/// The fake Plane's state.
#[derive(Debug)]
pub struct PlaneState {
    pub states: Vec<Value>,
    pub issues: Vec<Value>,
    pub comments: Vec<FakeComment>,
    /// Largest page the fake serves (the real default/max is 1000).
    pub max_page: usize,
    /// `X-RateLimit-Remaining` to send (None: the header is left out).
    pub remaining: Option<i64>,
    /// An older Plane: only the legacy `issues` routes exist, the
    /// `work-items` ones answer 404.
    pub legacy_only: bool,
}

/// A fake Plane workspace `acme` with the fixture project, its states
/// (plus "Needs Input" and "Blocked") and work items.
pub struct FakePlane {
    pub server: FakeServer,
    pub state: Arc<Mutex<PlaneState>>,
    pub faults: Arc<Faults>,
}

impl FakePlane {
    pub fn start() -> FakePlane {
        let mut states: Vec<Value> = fixture_json("plane/api/list-states.200.json")["results"]
            .as_array()
            .unwrap()
            .clone();
        for (id, name, seq) in [
            (NEEDS_INPUT_ID, "Needs Input", 45000.0),
            (BLOCKED_ID, "Blocked", 46000.0),
        ] {
            let mut s = states[2].clone();
            s["id"] = json!(id);
            s["name"] = json!(name);
            s["slug"] = json!(name.to_lowercase().replace(' ', "-"));
            s["sequence"] = json!(seq);
            states.push(s);
        }
        let mut issues: Vec<Value> = Vec::new();
        for f in ["list-issues.page1.200.json", "list-issues.page3.200.json"] {
            issues.extend(
                fixture_json(&format!("plane/api/{f}"))["results"]
                    .as_array()
                    .unwrap()
                    .clone(),
            );
        }
        let state = Arc::new(Mutex::new(PlaneState {
            states,
            issues,
            comments: vec![],
            max_page: 1000,
            remaining: Some(59),
            legacy_only: false,
        }));
        let faults: Arc<Faults> = Arc::default();
        let (st, fl) = (state.clone(), faults.clone());
        let server = FakeServer::start(move |r| {
            match r.header("X-API-Key") {
                None => {
                    return Outcome::Answer(Resp::json(
                        401,
                        &fixture_json("plane/api/error-401-missing-key.401.json"),
                    ))
                }
                Some(k) if k != PLANE_KEY => {
                    return Outcome::Answer(Resp::json(
                        403,
                        &fixture_json("plane/api/error-403-bad-key.403.json"),
                    ))
                }
                _ => {}
            }
            let out = with_faults(&fl, r, || plane_route(&st, r));
            let remaining = st.lock().unwrap().remaining;
            let add = |resp: Resp| match remaining {
                Some(n) if resp.status != 429 => resp
                    .with_header("X-RateLimit-Remaining", &n.to_string())
                    .with_header("X-RateLimit-Reset", &(unix_now() + 60).to_string()),
                _ => resp,
            };
            match out {
                Outcome::Answer(resp) => Outcome::Answer(add(resp)),
                Outcome::Slow(d, resp) => Outcome::Slow(d, add(resp)),
                Outcome::Drop => Outcome::Drop,
            }
        });
        FakePlane {
            server,
            state,
            faults,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn comments(&self) -> Vec<FakeComment> {
        self.state.lock().unwrap().comments.clone()
    }

    /// The state id of work item `issue`.
    pub fn issue_state(&self, issue: &str) -> String {
        let s = self.state.lock().unwrap();
        s.issues
            .iter()
            .find(|i| i["id"] == issue)
            .map(|i| i["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    pub fn state_id(&self, name: &str) -> String {
        let s = self.state.lock().unwrap();
        s.states
            .iter()
            .find(|x| x["name"] == name)
            .map(|x| x["id"].as_str().unwrap().to_string())
            .unwrap()
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn plane_page(items: &[Value], r: &Req, max_page: usize) -> Resp {
    let per_page = r
        .query("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1000)
        .min(max_page)
        .max(1);
    let cursor = r
        .query("cursor")
        .unwrap_or_else(|| format!("{per_page}:0:0"));
    let page: usize = cursor
        .split(':')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let start = (page * per_page).min(items.len());
    let end = (start + per_page).min(items.len());
    let total = items.len();
    Resp::json(
        200,
        &json!({
            "grouped_by": null,
            "sub_grouped_by": null,
            "total_count": total,
            "next_cursor": format!("{per_page}:{}:0", page + 1),
            "prev_cursor": format!("{per_page}:{}:1", page as i64 - 1),
            "next_page_results": end < total,
            "prev_page_results": page > 0,
            "count": end - start,
            "total_pages": total.div_ceil(per_page),
            "total_results": total,
            "extra_stats": null,
            "results": items[start..end],
        }),
    )
}

fn plane_not_found() -> Resp {
    Resp::json(404, &fixture_json("plane/api/error-404.404.json"))
}

fn plane_route(st: &Mutex<PlaneState>, r: &Req) -> Resp {
    let prefix = format!("/api/v1/workspaces/acme/projects/{PLANE_PROJECT}/");
    let Some(rest) = r.path().strip_prefix(&prefix) else {
        return plane_not_found();
    };
    let mut s = st.lock().unwrap();
    let mut segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    // Every work-item route exists twice (API.md): `work-items` (current)
    // and `issues` (deprecated); an older Plane has only the latter.
    if segs[0] == "work-items" {
        if s.legacy_only {
            return plane_not_found();
        }
        segs[0] = "issues";
    }
    match (r.method.as_str(), segs.as_slice()) {
        ("GET", ["states"]) => plane_page(&s.states.clone(), r, s.max_page),
        ("GET", ["issues"]) => plane_page(&s.issues.clone(), r, s.max_page),
        ("PATCH", ["issues", id]) => {
            let state = r.json()["state"].as_str().unwrap_or("").to_string();
            if !s.states.iter().any(|x| x["id"] == state.as_str()) {
                return Resp::json(
                    400,
                    &json!({"state": [format!("Invalid pk \"{state}\" - object does not exist.")]}),
                );
            }
            let Some(issue) = s.issues.iter_mut().find(|i| i["id"] == *id) else {
                return plane_not_found();
            };
            issue["state"] = json!(state);
            let mut v = fixture_json("plane/api/patch-issue-state.200.json");
            v["id"] = json!(id);
            v["state"] = json!(state);
            Resp::json(200, &v)
        }
        ("GET", ["issues", id, "comments"]) => {
            let list: Vec<Value> = s
                .comments
                .iter()
                .filter(|c| c.issue == *id)
                .map(plane_comment)
                .collect();
            plane_page(&list, r, s.max_page)
        }
        ("POST", ["issues", id, "comments"]) => {
            if !s.issues.iter().any(|i| i["id"] == *id) {
                return plane_not_found();
            }
            let b = r.json();
            let ext = b["external_id"].as_str().map(String::from);
            if ext.is_some()
                && s.comments
                    .iter()
                    .any(|c| c.issue == *id && c.external_id == ext)
            {
                return Resp::json(
                    409,
                    &json!({"error": "Comment with the same external id and external source already exists"}),
                );
            }
            let c = FakeComment {
                id: format!("c207762a-17bd-4be0-94f0-{:012x}", s.comments.len() + 1),
                issue: id.to_string(),
                html: b["comment_html"].as_str().unwrap_or("").to_string(),
                external_id: ext,
            };
            s.comments.push(c.clone());
            Resp::json(201, &plane_comment(&c))
        }
        _ => plane_not_found(),
    }
}

fn plane_comment(c: &FakeComment) -> Value {
    let mut v = fixture_json("plane/api/create-comment.201.json");
    v["id"] = json!(c.id);
    v["comment_html"] = json!(c.html);
    v["issue"] = json!(c.issue);
    v["external_source"] = json!(c.external_id.as_ref().map(|_| "orch"));
    v["external_id"] = json!(c.external_id);
    v
}

// ------------------------------------------------------------------ Telegram

pub const TELEGRAM_TOKEN: &str = "7123456789:AAHtestTOKENtestTOKENtest";
pub const TELEGRAM_CHAT: &str = "-1001234567890";

/// A fake Bot API server for one bot.
pub struct FakeTelegram {
    pub server: FakeServer,
    pub sent: Arc<Mutex<Vec<String>>>,
    pub faults: Arc<Faults>,
}

fn telegram_file(name: &str) -> Value {
    fixture_json(&format!("telegram/{name}.json"))
}

impl FakeTelegram {
    pub fn start() -> FakeTelegram {
        let sent: Arc<Mutex<Vec<String>>> = Arc::default();
        let faults: Arc<Faults> = Arc::default();
        let (st, fl) = (sent.clone(), faults.clone());
        let server = FakeServer::start(move |r| {
            let Some(method) = r.path().strip_prefix(&format!("/bot{TELEGRAM_TOKEN}/")) else {
                return Outcome::Answer(Resp::json(401, &telegram_file("error-401-unauthorized")));
            };
            let chat_found = |b: &Value| b["chat_id"].as_i64() == TELEGRAM_CHAT.parse::<i64>().ok();
            match method {
                "getMe" => return Outcome::Answer(Resp::json(200, &telegram_file("getMe.200"))),
                "getChat" if chat_found(&r.json()) => {
                    return Outcome::Answer(Resp::json(200, &telegram_file("getChat.200")))
                }
                "getChat" => {
                    return Outcome::Answer(Resp::json(
                        400,
                        &telegram_file("error-400-chat-not-found"),
                    ))
                }
                "sendMessage" => {}
                _ => return Outcome::Answer(Resp::json(404, &telegram_file("error-404-method"))),
            }
            with_faults(&fl, r, || {
                let b = r.json();
                if !chat_found(&b) {
                    return Resp::json(400, &telegram_file("error-400-chat-not-found"));
                }
                let text = b["text"].as_str().unwrap_or("").to_string();
                if text.is_empty() {
                    return Resp::json(400, &telegram_file("error-400-text-empty"));
                }
                // The Bot API's limit (README: 1–4096 characters).
                if text.encode_utf16().count() > 4096 {
                    let mut v = telegram_file("error-400-text-empty");
                    v["description"] = json!("Bad Request: message is too long");
                    return Resp::json(400, &v);
                }
                let mut s = st.lock().unwrap();
                s.push(text.clone());
                let mut v = telegram_file("sendMessage.200");
                v["result"]["message_id"] = json!(4710 + s.len() as i64);
                v["result"]["text"] = json!(text);
                Resp::json(200, &v)
            })
        });
        FakeTelegram {
            server,
            sent,
            faults,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

/// The 429 flood answer of the fixtures (body and `Retry-After` header).
pub fn telegram_flood(retry_after: u64) -> Fault {
    let mut body = telegram_file("error-429-flood");
    body["parameters"]["retry_after"] = json!(retry_after);
    body["description"] = json!(format!("Too Many Requests: retry after {retry_after}"));
    Fault::Status(
        429,
        body,
        vec![("Retry-After".into(), retry_after.to_string())],
    )
}

/// Plane's 429 (body from the fixtures, DRF's `Retry-After`).
pub fn plane_rate_limited(retry_after: u64) -> Fault {
    Fault::Status(
        429,
        fixture_json("plane/api/error-429.429.json"),
        vec![("Retry-After".into(), retry_after.to_string())],
    )
}

/// A sandbox whose project `widget` uses the fake Plane as its tracker
/// (state ids resolved by name, no `[projects.states]`) and the local
/// forge, with no reconcile grace.
pub fn sandbox_with_plane() -> (crate::util::Sandbox, FakePlane) {
    let mut sbx = crate::util::Sandbox::new();
    let path = sbx.dir.join("orch.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    let cfg = cfg[..cfg.find("[projects.states]").unwrap()]
        .replace("tracker = \"local\"", "tracker = \"plane\"");
    std::fs::write(&path, cfg).unwrap();
    let plane = FakePlane::start();
    sbx.set("ORCH_PLANE_URL", &plane.url())
        .set("ORCH_PLANE_API_KEY", PLANE_KEY)
        .set("ORCH_PLANE_WORKSPACE", "acme")
        .set("ORCH_PLANE_STATE_CACHE_S", "86400")
        .set("ORCH_HTTP_CONNECT_TIMEOUT_MS", "1000")
        .set("ORCH_HTTP_TIMEOUT_MS", "2000")
        .set("ORCH_RECONCILE_GRACE_S", "0");
    (sbx, plane)
}
