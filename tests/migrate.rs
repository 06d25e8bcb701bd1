//! `orch migrate --from PATH` (issue 25): an SQLite database made by real
//! orch commands copied into a real PostgreSQL database. Skipped unless
//! `ORCH_TEST_PG` holds the URL of a server where the test may `CREATE
//! DATABASE` (`scripts/pg-cluster start DIR` makes one).

use std::path::{Path, PathBuf};

use crate::operator::run;
use crate::util::*;

/// A sandbox on SQLite whatever the suite runs on (`ORCH_DB` set to its
/// state folder's file), initialised; and that file's path.
fn sqlite_sandbox() -> (Sandbox, PathBuf) {
    let mut sbx = Sandbox::uninitialised();
    let path = sbx.state_dir().join("orch.db");
    sbx.set("ORCH_DB", path.to_str().unwrap());
    sbx.ok(&["init"]);
    (sbx, path)
}

/// A sandbox on PostgreSQL (its own database, dropped with it), made by
/// `orch init` when `init`; `None` (the test is skipped) when the suite
/// does not run on PostgreSQL.
fn postgres_sandbox(test: &str, init: bool) -> Option<(Sandbox, String)> {
    if pg_base().is_none() {
        eprintln!("{test}: skipped, ORCH_TEST_PG (a PostgreSQL URL) is not set");
        return None;
    }
    let sbx = if init {
        Sandbox::new()
    } else {
        Sandbox::uninitialised()
    };
    let url = sbx.db_path().to_str().unwrap().to_string();
    assert!(url.starts_with("postgres"), "{url}");
    Some((sbx, url))
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// The SQLite file and its WAL, byte for byte: what "left as it was"
/// compares.
fn file_bytes(path: &Path) -> (Vec<u8>, Option<Vec<u8>>) {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    (std::fs::read(path).unwrap(), std::fs::read(wal).ok())
}

/// The copied tables: every table but `schema_version`, by name.
fn pg_tables(c: &mut postgres::Client) -> Vec<String> {
    c.query(
        "SELECT table_name::text FROM information_schema.tables \
          WHERE table_schema = current_schema() AND table_name <> 'schema_version' ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Every row of `table` in both databases, each value rendered by its
/// PostgreSQL column's type, the rows sorted: equal when the copy is.
fn rows_of(
    lite: &rusqlite::Connection,
    c: &mut postgres::Client,
    table: &str,
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let columns: Vec<(String, String)> = c
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
              WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let list = columns
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {list} FROM \"{table}\"");
    let mut want: Vec<Vec<String>> = lite
        .prepare(&sql)
        .unwrap()
        .query_map([], |r| {
            let mut row = Vec::new();
            for (i, (_, ty)) in columns.iter().enumerate() {
                row.push(match ty.as_str() {
                    "bigint" => format!("{:?}", r.get::<_, Option<i64>>(i)?),
                    "double precision" => format!("{:?}", r.get::<_, Option<f64>>(i)?),
                    "text" => format!("{:?}", r.get::<_, Option<String>>(i)?),
                    "bytea" => format!("{:?}", r.get::<_, Option<Vec<u8>>>(i)?),
                    other => panic!("column type {other}"),
                });
            }
            Ok(row)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut got: Vec<Vec<String>> = c
        .query(&sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| match ty.as_str() {
                    "bigint" => format!("{:?}", r.get::<_, Option<i64>>(i)),
                    "double precision" => format!("{:?}", r.get::<_, Option<f64>>(i)),
                    "text" => format!("{:?}", r.get::<_, Option<String>>(i)),
                    "bytea" => format!("{:?}", r.get::<_, Option<Vec<u8>>>(i)),
                    other => panic!("column type {other}"),
                })
                .collect()
        })
        .collect();
    want.sort();
    got.sort();
    (want, got)
}

fn count_pg(c: &mut postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .unwrap()
        .get(0)
}

/// A body an older orch stored before deliveries had to be JSON: not
/// UTF-8, with a NUL.
const RAW_BODY: &[u8] = &[0xff, 0xfe, 0x00, b'{', 0x80, b'}', 0xc3];

/// An SQLite sandbox whose database real commands filled: two work items
/// run through the pipeline (tasks, jobs, transitions, runs, verdicts, the
/// merge line, outbox rows), a delivery ingested from a file, and one
/// inbox row with a non-UTF-8 body.
fn filled_sandbox() -> (Sandbox, PathBuf) {
    let (sbx, path) = sqlite_sandbox();
    sbx.add_issue("first");
    sbx.add_issue("second");
    sbx.ok(&["tick"]);
    let file =
        Path::new(ROOT).join("tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json");
    sbx.ok(&[
        "ingest",
        "--source",
        "plane",
        "--event",
        "issue",
        "--file",
        file.to_str().unwrap(),
    ]);
    let lite = rusqlite::Connection::open(&path).unwrap();
    lite.execute(
        "INSERT INTO inbox (source, event, delivery_id, body_sha256, headers, body, received_at_ms, \
         processed_at_ms, outcome) VALUES ('plane', 'issue', 'old-raw', 'h', '{}', ?1, 5, 6, 'ignored')",
        [RAW_BODY],
    )
    .unwrap();
    for table in [
        "tasks",
        "jobs",
        "transitions",
        "inbox",
        "outbox",
        "agent_runs",
    ] {
        let n: i64 = lite
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert!(n > 0, "the sandbox has {table} rows");
    }
    (sbx, path)
}

/// What `orch init` made on the target, changed so that its replacement
/// shows: the registry row's `claim_seq` becomes 99. Returns the target's
/// instance id.
fn mark_target(c: &mut postgres::Client) -> String {
    let marked = c
        .execute(
            "UPDATE projects SET claim_seq = 99 WHERE name = 'widget'",
            &[],
        )
        .unwrap();
    assert_eq!(marked, 1, "orch init synced the registry");
    c.query_one("SELECT value FROM meta WHERE key = 'instance_id'", &[])
        .unwrap()
        .get(0)
}

/// The copy of a database real commands filled: a dry run changes
/// nothing; the real one copies every row (values compared by type), ids,
/// the non-UTF-8 body byte for byte and the instance id, in foreign-key
/// order, and sets each identity past its largest id; the SQLite file is
/// left as it was; a second copy into the filled database is refused.
#[test]
fn migrate_copies_every_row_id_and_byte_and_dry_run_changes_nothing() {
    let Some((_target, url)) = postgres_sandbox("migrate_copies_every_row_id_and_byte", true)
    else {
        return;
    };
    let (sbx, path) = filled_sandbox();
    let from = path.to_str().unwrap();
    let before = file_bytes(&path);
    let mut c = connect(&url);
    let pg_instance = mark_target(&mut c);

    // Dry run: the same copy, rolled back.
    let (code, out, err) = run(
        &sbx,
        &[
            "--json",
            "migrate",
            "--from",
            from,
            "--db",
            &url,
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let dry: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["dry_run"], true);
    for table in pg_tables(&mut c) {
        let want = if ["meta", "projects"].contains(&table.as_str()) {
            1
        } else {
            0
        };
        assert_eq!(count_pg(&mut c, &table), want, "{table} after the dry run");
    }
    let kept: (String, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT value FROM meta), (SELECT claim_seq FROM projects)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(kept, (pg_instance.clone(), 99), "the dry run rolled back");

    // The copy.
    let (code, out, err) = run(&sbx, &["--json", "migrate", "--from", from, "--db", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let real: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(real["dry_run"], false);
    assert_eq!(
        real["tables"], dry["tables"],
        "the dry run reported the real copy"
    );
    assert_eq!(real["schema_version"], orch::db::schema_version());
    let lite = rusqlite::Connection::open(&path).unwrap();
    let tables = pg_tables(&mut c);
    assert_eq!(real["tables"].as_array().unwrap().len(), tables.len());
    let reported: std::collections::BTreeMap<String, i64> = real["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    for table in &tables {
        let (want, got) = rows_of(&lite, &mut c, table);
        assert_eq!(got, want, "rows of {table}");
        assert_eq!(
            reported[table],
            want.len() as i64,
            "{table}'s reported rows"
        );
    }
    let claim_seq: i64 = c
        .query_one("SELECT claim_seq FROM projects", &[])
        .unwrap()
        .get(0);
    assert_ne!(claim_seq, 99, "the registry is the source's");
    // Foreign-key order: a table is copied after those it refers to.
    let order: Vec<&str> = real["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    let at = |t: &str| order.iter().position(|x| *x == t).unwrap();
    assert!(
        at("projects") < at("tasks") && at("tasks") < at("jobs"),
        "{order:?}"
    );
    assert!(
        at("jobs") < at("transitions") && at("inbox") < at("transitions"),
        "{order:?}"
    );

    // The raw body byte for byte, and the source's instance id.
    let body: Vec<u8> = c
        .query_one("SELECT body FROM inbox WHERE delivery_id = 'old-raw'", &[])
        .unwrap()
        .get(0);
    assert_eq!(body, RAW_BODY);
    let lite_instance: String = lite
        .query_row("SELECT value FROM meta WHERE key='instance_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let instance: String = c
        .query_one("SELECT value FROM meta WHERE key = 'instance_id'", &[])
        .unwrap()
        .get(0);
    assert_eq!(instance, lite_instance);
    assert_ne!(instance, pg_instance);
    // Each identity goes on past the largest copied id.
    for table in ["tasks", "jobs", "inbox", "outbox", "transitions"] {
        let max: i64 = lite
            .query_row(&format!("SELECT max(id) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        let next: i64 = c
            .query_one(
                &format!("SELECT nextval(pg_get_serial_sequence('{table}', 'id'))"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(next, max + 1, "{table}'s next id");
    }
    drop(lite);
    assert!(
        file_bytes(&path) == before,
        "the SQLite file is left as it was"
    );

    // A second copy into the now filled database is refused, naming why.
    let (code, out, err) = run(&sbx, &["migrate", "--from", from, "--db", &url]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("not empty") && err.contains("tasks ("),
        "{err}"
    );
    for table in ["tasks", "inbox"] {
        assert_eq!(
            count_pg(&mut c, table),
            reported[table],
            "{table} unchanged"
        );
    }
}

/// What the copy refuses (exit 2, nothing changed): a --db that is not a
/// PostgreSQL URL, a target `orch init` has not made, a missing source, a
/// source at an older schema; a held migrate lock is exit 75; a value
/// that does not fit its column fails (exit 1) naming table, column and
/// row id, and rolls everything back.
#[test]
fn migrate_refuses_an_old_source_a_bare_target_and_a_value_that_does_not_fit() {
    let Some((target, url)) = postgres_sandbox("migrate_refuses", false) else {
        return;
    };
    let (sbx, path) = sqlite_sandbox();
    let task = sbx.add_issue("one");
    let from = path.to_str().unwrap();

    // --db is not a PostgreSQL URL.
    let (code, _, err) = run(&sbx, &["migrate", "--from", from, "--db", "/var/tmp/x.db"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ORCH_DB") && err.contains("not a PostgreSQL URL"),
        "{err}"
    );

    // The target has no schema yet.
    let (code, _, err) = run(&sbx, &["migrate", "--from", from, "--db", &url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not initialised"), "{err}");
    target.ok(&["init"]);
    let mut c = connect(&url);
    mark_target(&mut c);

    // No such source.
    let (code, _, err) = run(
        &sbx,
        &["migrate", "--from", "/var/tmp/no-such.db", "--db", &url],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no database at /var/tmp/no-such.db"), "{err}");

    // A source at an older schema version.
    let old = sbx.dir.join("old.db");
    std::fs::copy(&path, &old).unwrap();
    let older = orch::db::schema_version() - 1;
    rusqlite::Connection::open(&old)
        .unwrap()
        .pragma_update(None, "user_version", older)
        .unwrap();
    let (code, _, err) = run(
        &sbx,
        &["migrate", "--from", old.to_str().unwrap(), "--db", &url],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("schema version {older}")) && err.contains("orch init"),
        "{err}"
    );

    // Another migration holds the migrate lock: busy, exit 75, after the
    // copy's lock timeout.
    let mut holder = connect(&url);
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&orch::db::PG_MIGRATE_LOCK])
        .unwrap();
    let (code, _, err) = run(&sbx, &["migrate", "--from", from, "--db", &url]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("taking the migrate lock"), "{err}");
    drop(holder);

    // Text in a BIGINT column: named by table, column and row id; nothing
    // is committed.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE tasks SET sequence = 'soon' WHERE id = ?1", [task])
        .unwrap();
    let (code, _, err) = run(&sbx, &["migrate", "--from", from, "--db", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("table tasks, column sequence, row id {task}"))
            && err.contains("BIGINT"),
        "{err}"
    );
    for table in ["tasks", "jobs", "transitions"] {
        assert_eq!(count_pg(&mut c, table), 0, "{table} rolled back");
    }
    let claim_seq: i64 = c
        .query_one("SELECT claim_seq FROM projects", &[])
        .unwrap()
        .get(0);
    assert_eq!(claim_seq, 99, "the registry row the copy deleted is back");
}
