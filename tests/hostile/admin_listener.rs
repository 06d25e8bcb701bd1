//! Route: an agent reaches `orch serve`'s admin listener (`GET /queue`,
//! the whole pipeline's state; `GET /metrics`) — the sandbox keeps the
//! network, and hammering `/queue` slowed the webhooks. Closed by where
//! the listener is (DESIGN §4 "Agent sandbox", issue 20 item 6): a Unix
//! socket in the state directory by default, which the sandbox hides with
//! the rest of that directory; on TCP only with a bearer token that lives
//! in the secrets, never in an agent's environment.

use super::Hostile;

/// What the agent tries, written into `admin-loot.txt` in its worktree
/// (orch commits and pushes it as the agent's work): the admin socket by
/// its path, the TCP `port` with curl (no token, a guessed one, and
/// whatever token it can find in its environment or in `/proc`), and the
/// same with bash's `/dev/tcp`.
fn probe(socket: &std::path::Path, port: u16) -> String {
    let sock = socket.display();
    format!(
        r#"
loot=admin-loot.txt
echo "== probe ran" >> $loot
ls -la '{sock}' >> $loot 2>&1
for p in queue metrics healthz; do
  curl -sS --max-time 5 --unix-socket '{sock}' "http://admin/$p" >> $loot 2>&1
done
tok=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | sed -n 's/^ORCH_ADMIN_TOKEN=//p' | head -1)
echo "== found token: [$tok] [$ORCH_ADMIN_TOKEN]" >> $loot
for p in queue metrics healthz; do
  curl -sS --max-time 5 "http://127.0.0.1:{port}/$p" >> $loot 2>&1
  curl -sS --max-time 5 -H 'Authorization: Bearer admin' "http://127.0.0.1:{port}/$p" >> $loot 2>&1
  curl -sS --max-time 5 -H "Authorization: Bearer $tok" "http://127.0.0.1:{port}/$p" >> $loot 2>&1
done
bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && printf "GET /queue HTTP/1.0\r\n\r\n" >&3 && timeout 5 cat <&3' >> $loot 2>&1
echo "== probe done" >> $loot
"#
    )
}

/// Runs the analyst stage with [`probe`] while `orch serve` runs, and
/// returns what the agent got.
fn agent_probes(h: &Hostile, port: u16) -> String {
    h.sbx.add_issue("hostile");
    let socket = h.sbx.state_dir().join("admin.sock");
    h.agent_runs_first("analyst", &probe(&socket, port));
    let server = h.sbx.serve();
    // The listener answers orch's operator, so there is something to steal.
    let (code, queue) = server.admin_get("/queue").unwrap();
    assert_eq!(code, 200, "{queue}");
    assert!(queue.contains("\"inbox\""), "{queue}");
    let v = h.sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["to"], "architecture", "{v}");
    drop(server);
    h.sbx.origin_git(&["show", "orch/widget-1:admin-loot.txt"])
}

/// Asserts the agent got nothing of the admin listener: no queue
/// document, no metrics, no health answer, no token.
fn assert_got_nothing(loot: &str, token: Option<&str>) {
    assert!(
        loot.contains("== probe ran") && loot.contains("== probe done"),
        "{loot}"
    );
    for sign in [
        "\"inbox\"",
        "\"stages\"",
        "orch_",
        "# TYPE",
        "orch serve is running",
        "\"schema\"",
    ] {
        assert!(!loot.contains(sign), "the agent read {sign:?}: {loot}");
    }
    assert!(loot.contains("== found token: [] []"), "{loot}");
    if let Some(t) = token {
        assert!(!loot.contains(t), "{loot}");
    }
}

#[test]
fn an_agent_cannot_reach_the_default_admin_socket() {
    let Some(h) = Hostile::new() else { return };
    // 8501: the TCP port the admin listener had by default before.
    let loot = agent_probes(&h, 8501);
    assert_got_nothing(&loot, None);
    // The socket is in the hidden state directory: not even its name.
    assert!(loot.contains("No such file or directory"), "{loot}");
    h.assert_no_leak();
}

#[test]
fn an_agent_cannot_use_a_tcp_admin_listener_without_its_token() {
    let Some(mut h) = Hostile::new() else { return };
    let token = "canary-admin-token-d09e";
    let port = crate::util::free_port();
    h.sbx.set("ORCH_ADMIN_BIND", &format!("127.0.0.1:{port}"));
    h.sbx.set("ORCH_ADMIN_TOKEN", token);
    let mut held = std::fs::read_to_string(&h.secrets_file).unwrap();
    held += &format!("ORCH_ADMIN_TOKEN={token}\n");
    std::fs::write(&h.secrets_file, held).unwrap();
    let loot = agent_probes(&h, port);
    assert_got_nothing(&loot, Some(token));
    // It reached the port and was refused.
    assert!(loot.contains("\"unauthorized\""), "{loot}");
    h.assert_no_leak();
    // The token is a secret like the others: in no file but the secrets
    // file (prompts, logs, worktrees, the database's pages).
    let out = std::process::Command::new("grep")
        .args(["-rlF", "--exclude=secrets.env", token])
        .arg(&h.sbx.dir)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "the admin token is in {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
