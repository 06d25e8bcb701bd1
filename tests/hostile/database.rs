//! Route: an agent talks to orch's database itself — on PostgreSQL over
//! the Unix socket its URL names (a socket with `trust` or peer
//! authentication needs no password) — and moves its own task. Closed by
//! the sandbox hiding the socket's folder, as it hides the SQLite file
//! (DESIGN §10). On SQLite the file's hiding is `write_outside`'s test.

use super::Hostile;

#[test]
fn an_agent_cannot_reach_a_postgresql_store_through_its_socket() {
    let Some(base) = crate::util::pg_base() else {
        eprintln!("skipped on SQLite: the database file's hiding is write_outside's test");
        return;
    };
    let Some(h) = Hostile::new() else { return };
    let url = h.sbx.db_path().to_string_lossy().into_owned();
    let socket_dir =
        orch::sql::postgres_socket_dir(&base).expect("the suite's cluster is on a socket");
    // Orch itself reaches it there (so only the sandbox stands between).
    assert!(socket_dir.is_dir(), "{}", socket_dir.display());
    h.sbx.add_issue("hostile");
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let script = format!(
        "ls -a {dir} > listing.txt 2>&1 || true\n\
         psql {url} -c \"UPDATE tasks SET stage='done'\" >> loot.txt 2>&1 \
         || echo 'database unreachable' >> loot.txt\n",
        dir = q(&socket_dir.display().to_string()),
        url = q(&url),
    );
    h.agent_runs_first("analyst", &script);
    let v = h.sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["to"], "architecture", "{v}");
    let listing = h.sbx.origin_git(&["show", "orch/widget-1:listing.txt"]);
    assert!(
        !listing.contains(".s.PGSQL"),
        "the agent saw the database's socket: {listing}"
    );
    let loot = h.sbx.origin_git(&["show", "orch/widget-1:loot.txt"]);
    assert!(loot.contains("database unreachable"), "{loot}");
    assert!(!loot.contains("UPDATE"), "the agent's UPDATE ran: {loot}");
    assert_eq!(h.sbx.stage(1), "architecture");
    h.assert_no_leak();
}
