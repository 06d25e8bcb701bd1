//! Route: an agent reaches the service manager of the user orch runs as
//! (`systemd --user`) or that user's session bus, and starts a unit of its
//! own — as orch, outside its sandbox, with orch's state, database and
//! worktrees in reach. orch starts agent runs as units of that manager
//! (`process::systemd`, DESIGN §4 "Detached runs"), so the manager is
//! there on every installed host. Closed by the sandbox: `/run/user` and
//! `$XDG_RUNTIME_DIR`, where the manager's private socket and the bus
//! live, are hidden (`sandbox::manager_dirs`).
//!
//! The manager here is a stand-in: listening sockets where the real ones
//! are (`$XDG_RUNTIME_DIR/systemd/private` and `…/bus`, the folder under
//! the test's sandbox, as orch's environment names it). A connection to
//! either — by `systemd-run --user`, `systemctl --user` or a raw client —
//! is what the agent must never make.

use std::os::unix::net::UnixListener;

use super::Hostile;

/// What the agent tries, written into `manager-loot.txt` in its worktree
/// (orch commits and pushes it as the agent's work).
const PROBE: &str = r#"
loot=manager-loot.txt
echo "== probe ran" >> $loot
echo "runtime dir: [$XDG_RUNTIME_DIR]" >> $loot
ls -la "$XDG_RUNTIME_DIR" "$XDG_RUNTIME_DIR/systemd" /run/user "/run/user/$(id -u)" >> $loot 2>&1
for s in "$XDG_RUNTIME_DIR/systemd/private" "$XDG_RUNTIME_DIR/bus" "/run/user/$(id -u)/systemd/private" "/run/user/$(id -u)/bus"; do
  curl -sS --max-time 2 --unix-socket "$s" http://manager/ >> $loot 2>&1
done
timeout 5 systemd-run --user --collect --unit=orch-run-job999-e1 /bin/sh -c 'cat /etc/passwd' >> $loot 2>&1
timeout 5 systemctl --user start orch-worker@1.service >> $loot 2>&1
echo "== probe done" >> $loot
"#;

#[test]
fn an_agent_cannot_reach_its_users_service_manager() {
    let Some(mut h) = Hostile::new() else { return };
    let runtime = h.sbx.dir.join("runtime");
    std::fs::create_dir_all(runtime.join("systemd")).unwrap();
    let manager = UnixListener::bind(runtime.join("systemd/private")).unwrap();
    let bus = UnixListener::bind(runtime.join("bus")).unwrap();
    manager.set_nonblocking(true).unwrap();
    bus.set_nonblocking(true).unwrap();
    h.sbx.set("XDG_RUNTIME_DIR", &runtime.display().to_string());

    h.sbx.add_issue("hostile");
    h.agent_runs_first("analyst", PROBE);
    let v = h.sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["to"], "architecture", "{v}");
    let loot = h
        .sbx
        .origin_git(&["show", "orch/widget-1:manager-loot.txt"]);
    assert!(
        loot.contains("== probe ran") && loot.contains("== probe done"),
        "{loot}"
    );
    // The agent was told where the manager is, and found nothing there.
    assert!(
        loot.contains(&format!("runtime dir: [{}]", runtime.display())),
        "{loot}"
    );
    assert!(loot.contains("No such file or directory"), "{loot}");
    for (name, listener) in [("the manager", &manager), ("the bus", &bus)] {
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept on {name}'s socket: {e}"),
            Ok(_) => panic!("the agent connected to {name}'s socket:\n{loot}"),
        }
    }
    h.assert_no_leak();
}
