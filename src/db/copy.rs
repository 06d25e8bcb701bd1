//! `orch migrate --from PATH`: copies an SQLite database into an
//! initialised, empty PostgreSQL one (DESIGN §10 "PostgreSQL backend").
//!
//! Raw `rusqlite` on the source (opened read-only, read in one read
//! transaction: one consistent snapshot even while another orch writes
//! to it) and raw `postgres` on the target (one transaction, holding the
//! migrate lock [`PG_MIGRATE_LOCK`] and then the write lock
//! [`PG_WRITE_LOCK`], so neither a migration nor any orch write runs
//! beside it). Every table is copied in foreign-key order
//! with its ids; each identity is then set past its largest id; row counts
//! are compared before the commit. A dry run does all of it and rolls
//! back. The SQLite file is never written, so going back is pointing
//! `ORCH_DB` at it again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use rusqlite::types::ValueRef;
use rusqlite::OpenFlags;

use super::{PG_MIGRATE_LOCK, PG_WRITE_LOCK};
use crate::error::Error;

/// How long the copy waits for its advisory locks (or any row lock)
/// before giving up with [`Error::DbBusy`] (exit 75).
const LOCK_TIMEOUT: &str = "10s";

/// Tables the target may hold rows in before the copy, because `orch
/// init` writes them: `meta` (the instance id, made with the schema) and
/// `projects` (the registry, synced from the config by every command).
/// Their rows are deleted and the source's copied, so the database keeps
/// the source's instance id (every dedupe key orch sent to a remote
/// service carries it).
const MADE_BY_INIT: &[&str] = &["meta", "projects"];

/// The PostgreSQL tables that are not orch's data and are not copied.
const NOT_COPIED: &[&str] = &["schema_version"];

/// What a copy did (or, in a dry run, would have done and rolled back).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// True when everything was rolled back.
    pub dry_run: bool,
    /// The schema version of both databases.
    pub schema_version: i64,
    /// Every table in the order it was copied (foreign-key order), with
    /// its row count (equal in both databases).
    pub tables: Vec<TableCopy>,
}

/// One table's part of a [`CopyReport`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
}

impl CopyReport {
    /// Rows copied over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// The four column types orch's PostgreSQL schema uses, by which each
/// SQLite value is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgType {
    BigInt,
    Double,
    Text,
    Bytea,
}

impl PgType {
    fn of(data_type: &str) -> Option<PgType> {
        match data_type {
            "bigint" => Some(PgType::BigInt),
            "double precision" => Some(PgType::Double),
            "text" => Some(PgType::Text),
            "bytea" => Some(PgType::Bytea),
            _ => None,
        }
    }

    fn pg_type(self) -> Type {
        match self {
            PgType::BigInt => Type::INT8,
            PgType::Double => Type::FLOAT8,
            PgType::Text => Type::TEXT,
            PgType::Bytea => Type::BYTEA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PgType::BigInt => "BIGINT",
            PgType::Double => "DOUBLE PRECISION",
            PgType::Text => "TEXT",
            PgType::Bytea => "BYTEA",
        }
    }
}

/// One value to bind, typed by its target column (NULL too: the
/// `postgres` crate checks each parameter's Rust type against the
/// column's).
#[derive(Debug)]
enum Cell {
    BigInt(Option<i64>),
    Double(Option<f64>),
    Text(Option<String>),
    Bytea(Option<Vec<u8>>),
}

impl Cell {
    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::BigInt(v) => v,
            Cell::Double(v) => v,
            Cell::Text(v) => v,
            Cell::Bytea(v) => v,
        }
    }
}

/// Converts one SQLite value for a column of type `ty`, or says why it
/// does not fit: an integer goes to BIGINT (and to DOUBLE PRECISION when
/// exact), a real to DOUBLE PRECISION, UTF-8 text without NUL to TEXT,
/// a blob (or text, as its bytes) to BYTEA byte for byte; NULL to any.
fn convert(ty: PgType, v: ValueRef<'_>) -> Result<Cell, String> {
    /// Integers a double holds exactly (2^53).
    const EXACT: i64 = 1 << 53;
    let text = |bytes: &[u8]| -> Result<String, String> {
        let s = std::str::from_utf8(bytes).map_err(|e| format!("text that is not UTF-8 ({e})"))?;
        if s.contains('\0') {
            return Err("text holding a NUL character, which PostgreSQL's TEXT cannot".into());
        }
        Ok(s.to_string())
    };
    let kind = |v: ValueRef<'_>| match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    };
    let cell = match (ty, v) {
        (PgType::BigInt, ValueRef::Null) => Cell::BigInt(None),
        (PgType::BigInt, ValueRef::Integer(i)) => Cell::BigInt(Some(i)),
        (PgType::Double, ValueRef::Null) => Cell::Double(None),
        (PgType::Double, ValueRef::Real(f)) => Cell::Double(Some(f)),
        (PgType::Double, ValueRef::Integer(i)) if (-EXACT..=EXACT).contains(&i) => {
            Cell::Double(Some(i as f64))
        }
        (PgType::Text, ValueRef::Null) => Cell::Text(None),
        (PgType::Text, ValueRef::Text(t)) => Cell::Text(Some(text(t)?)),
        (PgType::Bytea, ValueRef::Null) => Cell::Bytea(None),
        (PgType::Bytea, ValueRef::Blob(b) | ValueRef::Text(b)) => Cell::Bytea(Some(b.to_vec())),
        (ty, v) => {
            let shown = match v {
                ValueRef::Integer(i) => format!(" ({i})"),
                ValueRef::Real(f) => format!(" ({f})"),
                ValueRef::Text(t) => {
                    format!(" ({:?})", String::from_utf8_lossy(&t[..t.len().min(40)]))
                }
                _ => String::new(),
            };
            return Err(format!(
                "{}{shown}, which a {} column cannot hold",
                kind(v),
                ty.name()
            ));
        }
    };
    Ok(cell)
}

/// `"name"`: an SQL identifier, quoted (orch's names are plain; this is
/// for safety, not need).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copies the SQLite database at `sqlite` into the PostgreSQL database at
/// `pg_url` in one transaction (rolled back when `dry_run`), and reports
/// the rows per table.
///
/// Refuses, changing nothing: [`Error::NotInitialised`] when there is no
/// file at `sqlite`; [`Error::SchemaTooOld`] / [`Error::SchemaTooNew`] when
/// its `PRAGMA user_version` is not this binary's schema version;
/// [`Error::Usage`] when the PostgreSQL database has no `schema_version`
/// (not initialised), is at another version, or holds rows in any table
/// but those `orch init` writes (`meta`, `projects`: replaced), or when
/// the source has dangling foreign keys; [`Error::DbBusy`] when the
/// migrate or write lock stays held past 10 s. Fails (rolled back) when a value
/// does not fit its target column (the error names table, column and row
/// id), when the two schemas differ in tables or columns, or when the row
/// counts differ after the copy.
pub fn copy_sqlite_to_postgres(
    sqlite: &Path,
    pg_url: &str,
    dry_run: bool,
) -> anyhow::Result<CopyReport> {
    if !sqlite.is_file() {
        return Err(Error::NotInitialised {
            path: sqlite.to_path_buf(),
        }
        .into());
    }
    let src = rusqlite::Connection::open_with_flags(
        sqlite,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", sqlite.display()))?;
    // One read transaction: every table and count from one snapshot.
    src.execute_batch("BEGIN")
        .with_context(|| format!("reading {}", sqlite.display()))?;
    let version = check_source(&src, sqlite)?;

    let mut client = postgres::Client::connect(pg_url, postgres::NoTls)
        .with_context(|| format!("connecting to PostgreSQL at {}", crate::sql::redact(pg_url)))?;
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))?;
    for (key, name) in [(PG_MIGRATE_LOCK, "migrate"), (PG_WRITE_LOCK, "write")] {
        tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&key])
            .map_err(|e| busy_or(e, &format!("taking the {name} lock")))?;
    }
    check_target(&mut tx, version)?;

    let tables = copy_order(&src)?;
    let pg_tables = target_tables(&mut tx)?;
    let src_tables: BTreeSet<&String> = tables.iter().collect();
    let dst_tables: BTreeSet<&String> = pg_tables.keys().collect();
    if src_tables != dst_tables {
        anyhow::bail!(
            "the two schemas differ: tables only in SQLite {:?}, only in PostgreSQL {:?}",
            src_tables.difference(&dst_tables).collect::<Vec<_>>(),
            dst_tables.difference(&src_tables).collect::<Vec<_>>()
        );
    }
    for table in MADE_BY_INIT.iter().rev() {
        tx.execute(&format!("DELETE FROM {}", quote(table)), &[])?;
    }

    let mut report = CopyReport {
        dry_run,
        schema_version: version,
        tables: Vec::new(),
    };
    for table in &tables {
        let rows = copy_table(&src, &mut tx, table, &pg_tables[table])
            .with_context(|| format!("copying table {table}"))?;
        report.tables.push(TableCopy {
            table: table.clone(),
            rows,
        });
    }
    set_identities(&mut tx)?;
    for t in &report.tables {
        let table = quote(&t.table);
        let want: i64 =
            src.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        let got: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
            .get(0);
        if want != got || got as u64 != t.rows {
            anyhow::bail!(
                "table {}: {want} rows in SQLite, {got} in PostgreSQL after copying {}; nothing was committed",
                t.table,
                t.rows
            );
        }
    }
    if dry_run {
        tx.rollback()?;
    } else {
        tx.commit().context("committing the copy")?;
    }
    Ok(report)
}

/// The source's schema version, refused unless it is this binary's; and
/// no dangling foreign key (PostgreSQL would refuse the row).
fn check_source(src: &rusqlite::Connection, path: &Path) -> anyhow::Result<i64> {
    let version: i64 = src.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = super::schema_version();
    if version > latest {
        return Err(Error::SchemaTooNew {
            db: version,
            binary: latest,
        }
        .into());
    }
    if version < latest {
        return Err(Error::SchemaTooOld {
            path: path.to_path_buf(),
            db: version,
            binary: latest,
        }
        .into());
    }
    let dangling: Vec<String> = src
        .prepare("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check LIMIT 5")?
        .query_map([], |r| {
            Ok(format!(
                "{} row {} (→ {})",
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?.unwrap_or(-1),
                r.get::<_, String>(2)?
            ))
        })?
        .collect::<Result<_, _>>()?;
    if !dangling.is_empty() {
        return Err(Error::Usage(format!(
            "{} has rows that refer to rows that do not exist ({}), which PostgreSQL refuses; \
             `orch check` lists them",
            path.display(),
            dangling.join(", ")
        ))
        .into());
    }
    Ok(version)
}

/// Refuses a target that is not initialised, not at `version`, or holds
/// rows (beyond [`MADE_BY_INIT`]).
fn check_target(tx: &mut postgres::Transaction, version: i64) -> anyhow::Result<()> {
    let initialised: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .get(0);
    if !initialised {
        return Err(Error::Usage(
            "the PostgreSQL database is not initialised (no schema_version table): \
             run `orch init` with ORCH_DB set to it first"
                .into(),
        )
        .into());
    }
    let target: Vec<i64> = tx
        .query("SELECT version FROM schema_version", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if target != [version] {
        return Err(Error::Usage(format!(
            "the PostgreSQL database is at schema version {target:?}, the SQLite file and this orch at {version}: \
             run `orch init` with ORCH_DB set to it first"
        ))
        .into());
    }
    let mut busy = Vec::new();
    for table in target_tables(tx)?.keys() {
        if MADE_BY_INIT.contains(&table.as_str()) {
            continue;
        }
        let rows: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {}", quote(table)), &[])?
            .get(0);
        if rows > 0 {
            busy.push(format!("{table} ({rows} rows)"));
        }
    }
    if !busy.is_empty() {
        return Err(Error::Usage(format!(
            "the PostgreSQL database is not empty: {}; migrate copies only into a new database",
            busy.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// The target's tables (less [`NOT_COPIED`]): name → its columns in
/// order, with their types.
fn target_tables(
    tx: &mut postgres::Transaction,
) -> anyhow::Result<BTreeMap<String, Vec<(String, PgType)>>> {
    let mut tables: BTreeMap<String, Vec<(String, PgType)>> = BTreeMap::new();
    for r in tx.query(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text \
           FROM information_schema.columns c \
           JOIN information_schema.tables t \
             ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
          WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
          ORDER BY c.table_name, c.ordinal_position",
        &[],
    )? {
        let (table, column, data_type): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if NOT_COPIED.contains(&table.as_str()) {
            continue;
        }
        let ty = PgType::of(&data_type).with_context(|| {
            format!("PostgreSQL column {table}.{column} has type {data_type}, not one orch copies")
        })?;
        tables.entry(table).or_default().push((column, ty));
    }
    Ok(tables)
}

/// The source's tables in foreign-key order: every table after the
/// tables it refers to (ties by name, so the order is stable).
fn copy_order(src: &rusqlite::Connection) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = src
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in &names {
        let parents: BTreeSet<String> = src
            .prepare("SELECT \"table\" FROM pragma_foreign_key_list(?1)")?
            .query_map([name], |r| r.get::<_, String>(0))?
            .collect::<Result<BTreeSet<_>, _>>()?
            .into_iter()
            .filter(|p| p != name && names.contains(p))
            .collect();
        needs.insert(name.clone(), parents);
    }
    let mut order: Vec<String> = Vec::new();
    while !needs.is_empty() {
        let ready: Vec<String> = needs
            .iter()
            .filter(|(_, parents)| parents.iter().all(|p| order.contains(p)))
            .map(|(name, _)| name.clone())
            .collect();
        if ready.is_empty() {
            anyhow::bail!(
                "the foreign keys of tables {:?} form a cycle: no copy order",
                needs.keys().collect::<Vec<_>>()
            );
        }
        for name in ready {
            needs.remove(&name);
            order.push(name);
        }
    }
    Ok(order)
}

/// Copies every row of `table` (ordered by rowid) with one binary `COPY`,
/// each value bound by its target column's type; returns the rows copied.
fn copy_table(
    src: &rusqlite::Connection,
    tx: &mut postgres::Transaction,
    table: &str,
    columns: &[(String, PgType)],
) -> anyhow::Result<u64> {
    let src_columns: BTreeSet<String> = src
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let dst_columns: BTreeSet<String> = columns.iter().map(|(c, _)| c.clone()).collect();
    if src_columns != dst_columns {
        anyhow::bail!(
            "the two schemas differ: columns only in SQLite {:?}, only in PostgreSQL {:?}",
            src_columns.difference(&dst_columns).collect::<Vec<_>>(),
            dst_columns.difference(&src_columns).collect::<Vec<_>>()
        );
    }
    let list = columns
        .iter()
        .map(|(c, _)| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let types: Vec<Type> = columns.iter().map(|(_, ty)| ty.pg_type()).collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {} ({list}) FROM STDIN (FORMAT binary)",
            quote(table)
        ))
        .context("starting COPY")?;
    // Dropped unfinished (an error below), the COPY is aborted and the
    // transaction with it.
    let mut sink = BinaryCopyInWriter::new(sink, &types);
    let mut select = src.prepare(&format!(
        "SELECT rowid, {list} FROM {} ORDER BY rowid",
        quote(table)
    ))?;
    let mut rows = select.query([])?;
    let mut read = 0u64;
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        let mut cells = Vec::with_capacity(columns.len());
        for (i, (column, ty)) in columns.iter().enumerate() {
            let cell = convert(*ty, row.get_ref(i + 1)?).map_err(|why| {
                anyhow::anyhow!("table {table}, column {column}, row id {rowid}: {why}")
            })?;
            cells.push(cell);
        }
        let params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::as_param).collect();
        sink.write(&params)
            .with_context(|| format!("table {table}, row id {rowid}"))?;
        read += 1;
    }
    // Constraint violations (a key, a foreign key) are reported here, by
    // PostgreSQL, with the offending key.
    let copied = sink.finish()?;
    if copied != read {
        anyhow::bail!("read {read} rows from SQLite but PostgreSQL took {copied}");
    }
    Ok(copied)
}

/// Sets every identity column's sequence to its table's largest value, so
/// the next row PostgreSQL numbers follows the copied ones.
fn set_identities(tx: &mut postgres::Transaction) -> anyhow::Result<()> {
    let identities: Vec<(String, String)> = tx
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
              WHERE table_schema = current_schema() AND is_identity = 'YES'",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (table, column) in identities {
        // setval(seq, NULL) is a no-op (strict): an empty table keeps 1.
        tx.query_one(
            &format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), max({})) FROM {}",
                quote(&column),
                quote(&table)
            ),
            &[&quote(&table), &column],
        )
        .with_context(|| format!("setting the identity of {table}.{column}"))?;
    }
    Ok(())
}

/// [`Error::DbBusy`] for a lock wait that timed out (55P03) or a deadlock
/// (40P01); any other error with `what` as context.
fn busy_or(e: postgres::Error, what: &str) -> anyhow::Error {
    use postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
            Error::DbBusy(format!("{what}: {e}")).into()
        }
        _ => anyhow::Error::new(e).context(what.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bound_by_the_target_column() {
        let fits = |ty, v| convert(ty, v).map(|c| format!("{c:?}"));
        assert_eq!(
            fits(PgType::BigInt, ValueRef::Integer(7)).unwrap(),
            "BigInt(Some(7))"
        );
        assert_eq!(
            fits(PgType::Double, ValueRef::Integer(2)).unwrap(),
            "Double(Some(2.0))"
        );
        assert_eq!(
            fits(PgType::Bytea, ValueRef::Blob(&[0xff, 0, 0x80])).unwrap(),
            "Bytea(Some([255, 0, 128]))"
        );
        assert_eq!(fits(PgType::Text, ValueRef::Null).unwrap(), "Text(None)");
        let refused = fits(PgType::BigInt, ValueRef::Text(b"soon")).unwrap_err();
        assert!(
            refused.contains("text") && refused.contains("BIGINT"),
            "{refused}"
        );
        assert!(fits(PgType::BigInt, ValueRef::Real(1.5)).is_err());
        assert!(fits(PgType::Double, ValueRef::Integer(i64::MAX)).is_err());
        assert!(fits(PgType::Text, ValueRef::Blob(b"x")).is_err());
        assert!(fits(PgType::Text, ValueRef::Text(&[0xff]))
            .unwrap_err()
            .contains("UTF-8"));
        assert!(fits(PgType::Text, ValueRef::Text(b"a\0b"))
            .unwrap_err()
            .contains("NUL"));
    }
}
