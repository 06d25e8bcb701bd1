//! How the suite reaches the staging instance: its shim over HTTP (signed
//! deliveries and the bodies they carry) and its database, read-only.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use std::time::Duration;

use super::{fail, infra, short, Outcome, Suite, PLANE};
use crate::db::{Db, InboxRow};
use crate::webhook::{self, Source};

/// An HTTP answer.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
}

impl Answer {
    pub(super) fn status_field(&self) -> &str {
        self.body
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub(super) fn detail(&self) -> &str {
        self.body
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub(super) fn describe(&self) -> String {
        let d = self.detail();
        if d.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {} ({})", self.status, short(d))
        }
    }
}

impl<'a> Suite<'a> {
    // -------------------------------------------------------------- HTTP

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.url.trim_end_matches('/'))
    }

    /// One request; `Err` is the transport failure (INFRA).
    pub(super) fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("Accept", "application/json");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req.body(body).map_err(|e| format!("bad request: {e}"))?;
        let mut resp = self.agent.run(req).map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| transport(&e))?;
        Ok(Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// Posts a delivery; answers from a 5xx are turned into `Err` too (the
    /// instance's environment failed).
    pub(super) fn post(
        &self,
        source: Source,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer, String> {
        let path = format!("/webhooks/{source}");
        let a = self.send("POST", &path, headers, body.to_vec())?;
        if a.status >= 500 {
            return Err(format!(
                "POST {path}: the instance answered {}",
                a.describe()
            ));
        }
        Ok(a)
    }

    /// Posts a new signed Plane delivery that the instance must store
    /// (202). A 401 means the checker's `ORCH_PLANE_WEBHOOK_SECRET` differs
    /// from the instance's; `what` names the delivery in the reason.
    pub(super) fn post_new_plane(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        what: &str,
    ) -> Result<(), Outcome> {
        let a = self.post(PLANE, headers, body).map_err(infra)?;
        if a.status == 401 {
            return Err(fail(format!(
                "the instance refused {what} signed with the checker's ORCH_PLANE_WEBHOOK_SECRET: {} — the secrets differ",
                a.describe()
            )));
        }
        if a.status != 202 {
            return Err(fail(format!("{what}: expected 202, got {}", a.describe())));
        }
        Ok(())
    }

    /// Posts a body over 1 MiB. On plain HTTP the request is written from
    /// a second thread while this one reads, so an answer the server sends
    /// before reading the whole body (and the connection reset after it)
    /// is still seen; `https://` goes through ureq.
    pub(super) fn post_oversize(
        &self,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let url = self.url("/webhooks/plane");
        let Some(rest) = url.strip_prefix("http://") else {
            return self.post(PLANE, headers, &body);
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let hostport = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let call = self.target.timeout.min(Duration::from_secs(30));
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("resolving {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolving {authority}: no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, call.min(Duration::from_secs(5)))
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        stream
            .set_read_timeout(Some(call))
            .and_then(|()| stream.set_write_timeout(Some(call)))
            .map_err(|e| e.to_string())?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let sender = std::thread::Builder::new()
            .name("orch-staging-upload".into())
            .spawn(move || {
                // The server may answer and close before it has read it all.
                let _ = writer
                    .write_all(head.as_bytes())
                    .and_then(|()| writer.write_all(&body));
            })
            .map_err(|e| format!("starting the upload thread: {e}"))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let read_error = loop {
            match stream.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
        };
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok());
        let Some(status) = status else {
            return Err(match read_error {
                Some(e) => format!("POST {path}: no answer: {e}"),
                None => format!("POST {path}: the connection closed without an answer"),
            });
        };
        let body = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b.trim()).ok())
            .unwrap_or(Value::Null);
        let a = Answer { status, body };
        if status >= 500 {
            return Err(format!(
                "POST {path}: the instance answered {}",
                a.describe()
            ));
        }
        Ok(a)
    }

    // ------------------------------------------------------ deliveries

    pub(super) fn secret(&self, source: Source) -> Option<&str> {
        source
            .secret(self.settings)
            .filter(|s| !s.trim().is_empty())
    }

    pub(super) fn delivery_id(&self, tag: &str) -> String {
        format!("staging-check-{}-{tag}", self.run_id)
    }

    /// The headers of a delivery of `source`, signed with `secret` when
    /// given.
    pub(super) fn headers(
        &self,
        source: Source,
        delivery: &str,
        body: &[u8],
        secret: Option<&str>,
    ) -> Vec<(String, String)> {
        let event = if source == PLANE { "issue" } else { "push" };
        let signature = secret.map(|s| webhook::sign(s, body));
        source.sender_headers(delivery, event, signature.as_deref())
    }

    /// A UUID-shaped id unique to this run and `tag`.
    pub(super) fn uuid(&self, tag: &str) -> String {
        let h = hex::encode(Sha256::digest(format!("{}:{tag}", self.run_id)));
        format!(
            "{}-{}-4{}-8{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    /// A Plane `issue` webhook body (the shape of
    /// `tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json`)
    /// for a work item of the sandbox project: `field` changed, the item in
    /// state `(id, name)`.
    pub(super) fn plane_issue(
        &self,
        tag: &str,
        field: &str,
        state: (&str, &str),
        sequence: i64,
    ) -> Vec<u8> {
        let project = self
            .project
            .as_ref()
            .map_or("", |p| p.tracker_project_id.as_str());
        let (state_id, state_name) = state;
        let new_value = if field == "state" { state_id } else { "high" };
        let v = json!({
            "event": "issue",
            "action": "updated",
            "webhook_id": self.uuid("webhook"),
            "workspace_id": self.uuid("workspace"),
            "data": {
                "id": self.uuid(tag),
                "labels": [],
                "assignees": [],
                "state": {"id": state_id, "name": state_name, "color": "#F59E0B", "group": "started"},
                "name": format!("orch staging-check {} ({tag})", self.run_id),
                "description_stripped": "A synthetic work item of orch staging-check; it is cancelled as soon as it appears.",
                "priority": "high",
                "sequence_id": sequence,
                "project": project,
                "workspace": self.uuid("workspace"),
                "parent": null,
            },
            "activity": {
                "field": field,
                "new_value": new_value,
                "old_value": null,
                "actor": {"id": self.uuid("actor"), "display_name": "orch-staging-check"},
            },
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// A harmless Plane body: a priority change, no pipeline action.
    pub(super) fn harmless(&self, tag: &str) -> Vec<u8> {
        self.plane_issue(tag, "priority", ("", ""), 1)
    }

    pub(super) fn gitea_body(&self, tag: &str) -> Vec<u8> {
        let repo = self.project.as_ref().map_or("", |p| p.repo.as_str());
        serde_json::to_vec(&json!({
            "ref": format!("refs/heads/orch/staging-check-{tag}"),
            "before": "0000000000000000000000000000000000000000",
            "after": "0000000000000000000000000000000000000000",
            "repository": {"full_name": repo},
        }))
        .unwrap_or_default()
    }

    // -------------------------------------------------------- database

    pub(super) fn open_db(&self, writable: bool) -> anyhow::Result<Db> {
        Db::open_as_is(&self.target.db, self.settings.busy_timeout_ms, writable)
    }

    /// Whether a delivery with this sender id was stored: `Ok(None)` when
    /// the database cannot be read (C3 says why).
    pub(super) fn stored(&self, source: Source, delivery: &str) -> Option<InboxRow> {
        let db = self.open_db(false).ok()?;
        db.delivery_by_sender_id(source.as_str(), delivery)
            .ok()
            .flatten()
    }
}

/// A transport error, in words.
fn transport(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::Timeout(t) => format!("timed out ({t:?})"),
        other => other.to_string(),
    }
}
