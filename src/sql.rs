//! The dialect layer under the store: one connection type over SQLite
//! (`rusqlite`) and PostgreSQL (`postgres`), with rusqlite's shape
//! (`prepare_cached`, `query_row`, `query_map`, `execute`, `params!`,
//! `Row::get`, `.optional()`), so every query in `db` is written once and
//! runs on either (DESIGN §10 "PostgreSQL backend").
//!
//! Values are SQLite's five storage classes ([`Value`]: null, `i64`,
//! `f64`, text, bytes), which are all orch stores. On PostgreSQL a
//! parameter is encoded as the type the server inferred for it (an `i64`
//! into `INT4`, text into `JSONB`, …) and a column of any type orch's
//! schema or queries produce (`INT2/4/8`, `FLOAT4/8`, `NUMERIC` from
//! `SUM`, `BOOL` from a comparison, text types, `BYTEA`, `JSON(B)`) is read
//! back as one of the five. SQLite's `?N` parameters are rewritten to
//! PostgreSQL's `$N` once per statement (the statement cache is per
//! connection on both).
//!
//! A leaf: it knows no table. Errors keep the driver's own error, so
//! [`Error::is_constraint`] and [`Error::is_busy`] classify both.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;

use postgres::types::{FromSql as PgFromSql, IsNull, ToSql as PgToSql, Type};

/// Prepared statements kept per PostgreSQL connection before the cache is
/// emptied (statements built with `format!` are few and finite; this only
/// bounds a mistake).
const PG_STATEMENT_CACHE: usize = 512;

/// An error of the store: the driver's own, a value that does not read as
/// the asked type, or no row where one was required.
#[derive(Debug)]
pub enum Error {
    /// SQLite's error (`rusqlite`).
    Sqlite(rusqlite::Error),
    /// PostgreSQL's error (`postgres`).
    Postgres(postgres::Error),
    /// `query_row` found no row ([`OptionalExtension::optional`] makes it `None`).
    NoRows,
    /// Column `column` does not read as the asked type.
    Conversion {
        /// The column's index.
        column: usize,
        /// What went wrong.
        message: String,
    },
    /// A parameter that cannot be encoded (an integer beyond `i64`).
    Parameter(String),
    /// PostgreSQL refused to prepare a statement (a dialect bug: the
    /// statement is named, shortened).
    Prepare {
        /// The statement as orch wrote it.
        sql: String,
        /// The server's error.
        error: postgres::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sqlite(e) => e.fmt(f),
            Error::Postgres(e) => f.write_str(&pg_message(e)),
            Error::NoRows => f.write_str("query returned no rows"),
            Error::Conversion { column, message } => write!(f, "column {column}: {message}"),
            Error::Parameter(m) => write!(f, "parameter: {m}"),
            Error::Prepare { sql, error } => {
                let short: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
                let short: String = short.chars().take(600).collect();
                write!(f, "{} (preparing `{short}`)", pg_message(error))
            }
        }
    }
}

/// The server's message (not the driver's "db error"), with its detail.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {} ({d})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => e.to_string(),
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Sqlite(e) => e.source(),
            Error::Postgres(e) => e.source().filter(|_| e.as_db_error().is_none()),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => Error::NoRows,
            e => Error::Sqlite(e),
        }
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Postgres(e)
    }
}

impl Error {
    /// The SQLSTATE of a PostgreSQL error.
    fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres(e) | Error::Prepare { error: e, .. } => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// SQLite's error code, for this error or a raw `rusqlite` one.
    fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => Some(f.code),
            _ => None,
        }
    }

    /// A constraint was violated (UNIQUE, FOREIGN KEY, CHECK, NOT NULL):
    /// the same row conflicts the same way next time.
    pub fn is_constraint(&self) -> bool {
        match self.sqlite_code() {
            Some(code) => code == rusqlite::ErrorCode::ConstraintViolation,
            None => self.sqlstate().is_some_and(|s| s.starts_with("23")),
        }
    }

    /// Another writer holds what this one needs: SQLite busy/locked,
    /// PostgreSQL serialization failure (40001), deadlock (40P01), lock
    /// timeout (55P03) or an idle transaction timed out (25P03). Trying
    /// again later is the answer (exit 75).
    pub fn is_busy(&self) -> bool {
        match self.sqlite_code() {
            Some(code) => matches!(
                code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            None => matches!(self.sqlstate(), Some("40001" | "40P01" | "55P03" | "25P03")),
        }
    }

    /// SQLite could not open the file or its WAL index.
    pub fn is_cantopen(&self) -> bool {
        matches!(
            self.sqlite_code(),
            Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
        )
    }

    /// `test` of the store error `cause` is (one cause of an error
    /// chain): this layer's [`Error`], or a raw `rusqlite` error (orch's
    /// SQLite connections are opened and pragma'd through rusqlite
    /// itself). `false` for anything else.
    pub fn test_cause(cause: &(dyn StdError + 'static), test: fn(&Error) -> bool) -> bool {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return test(e);
        }
        match cause.downcast_ref::<rusqlite::Error>() {
            Some(rusqlite::Error::SqliteFailure(f, m)) => test(&Error::Sqlite(
                rusqlite::Error::SqliteFailure(*f, m.clone()),
            )),
            _ => false,
        }
    }
}

/// `Result` of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An owned value: one of SQLite's five storage classes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A borrowed value (a parameter, or a cell of a row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    /// The owned copy.
    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(t.to_string()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Integer(_) => "integer",
            ValueRef::Real(_) => "real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "blob",
        }
    }

    /// The text, or an error naming what the value is instead.
    pub fn as_str(&self) -> std::result::Result<&str, String> {
        match self {
            ValueRef::Text(t) => Ok(t),
            ValueRef::Blob(b) => std::str::from_utf8(b).map_err(|e| e.to_string()),
            v => Err(format!("expected text, found {}", v.kind())),
        }
    }
}

impl Value {
    /// The borrowed view.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// A type that is stored as a [`Value`] (a parameter).
pub trait ToSql {
    /// The value to bind; `Err` names why it cannot be stored.
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String>;
}

/// A type that reads from a [`ValueRef`] (a cell); `Err` says why not.
pub trait FromSql: Sized {
    fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String>;
}

macro_rules! int_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
                i64::try_from(*self)
                    .map(ValueRef::Integer)
                    .map_err(|_| format!("{} does not fit a 64-bit integer", self))
            }
        }
        impl FromSql for $t {
            fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String> {
                match v {
                    ValueRef::Integer(i) => <$t>::try_from(i)
                        .map_err(|_| format!("{i} is out of range for {}", stringify!($t))),
                    v => Err(format!("expected integer, found {}", v.kind())),
                }
            }
        }
    )*};
}
int_sql!(i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);

impl ToSql for bool {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(ValueRef::Integer(*self as i64))
    }
}
impl FromSql for bool {
    fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String> {
        <i64 as FromSql>::from_sql(v).map(|i| i != 0)
    }
}
impl ToSql for f64 {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(ValueRef::Real(*self))
    }
}
impl FromSql for f64 {
    fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String> {
        match v {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Integer(i) => Ok(i as f64),
            v => Err(format!("expected real, found {}", v.kind())),
        }
    }
}
impl ToSql for str {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(ValueRef::Text(self))
    }
}
impl ToSql for String {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(ValueRef::Text(self))
    }
}
impl FromSql for String {
    fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String> {
        v.as_str().map(str::to_string)
    }
}
impl ToSql for [u8] {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(ValueRef::Blob(self))
    }
}
impl ToSql for Vec<u8> {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(ValueRef::Blob(self))
    }
}
impl FromSql for Vec<u8> {
    fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String> {
        match v {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            ValueRef::Text(t) => Ok(t.as_bytes().to_vec()),
            v => Err(format!("expected blob, found {}", v.kind())),
        }
    }
}
impl ToSql for Value {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(self.as_ref())
    }
}
impl FromSql for Value {
    fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String> {
        Ok(v.to_owned())
    }
}
impl ToSql for ValueRef<'_> {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        Ok(*self)
    }
}
impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        (**self).to_sql()
    }
}
impl<T: ToSql> ToSql for Option<T> {
    fn to_sql(&self) -> std::result::Result<ValueRef<'_>, String> {
        match self {
            Some(v) => v.to_sql(),
            None => Ok(ValueRef::Null),
        }
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(v: ValueRef<'_>) -> std::result::Result<Self, String> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::from_sql(v).map(Some),
        }
    }
}

/// Parameters of a statement: `params![a, b]`, `[x, y]` (one type), `()`
/// or `[]` (none).
pub trait Params {
    /// The values in order (`?1` first).
    fn values(&self) -> Result<Vec<ValueRef<'_>>>;
}

fn bind<'a>(p: &'a dyn ToSql) -> Result<ValueRef<'a>> {
    p.to_sql().map_err(Error::Parameter)
}

impl Params for [&dyn ToSql] {
    fn values(&self) -> Result<Vec<ValueRef<'_>>> {
        self.iter().map(|p| bind(*p)).collect()
    }
}
impl Params for &[&dyn ToSql] {
    fn values(&self) -> Result<Vec<ValueRef<'_>>> {
        self.iter().map(|p| bind(*p)).collect()
    }
}
/// `[]`: no parameters (a type of its own, so `[]` needs no annotation).
impl Params for [&dyn ToSql; 0] {
    fn values(&self) -> Result<Vec<ValueRef<'_>>> {
        Ok(Vec::new())
    }
}
macro_rules! array_params {
    ($($n:literal)+) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn values(&self) -> Result<Vec<ValueRef<'_>>> {
                self.iter().map(|p| bind(p)).collect()
            }
        }
        impl<T: ToSql> Params for &[T; $n] {
            fn values(&self) -> Result<Vec<ValueRef<'_>>> {
                self.iter().map(|p| bind(p)).collect()
            }
        }
    )+};
}
array_params!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
impl<T: ToSql> Params for Vec<T> {
    fn values(&self) -> Result<Vec<ValueRef<'_>>> {
        self.iter().map(|p| bind(p)).collect()
    }
}
impl Params for () {
    fn values(&self) -> Result<Vec<ValueRef<'_>>> {
        Ok(Vec::new())
    }
}

/// `params![a, b, …]`: a slice of parameters of any [`ToSql`] types.
#[macro_export]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::sql::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::sql::ToSql),+] as &[&dyn $crate::sql::ToSql] };
}
pub use crate::sql_params as params;

/// `.optional()` on a `query_row` result: no row is `Ok(None)`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A column index: a position (from 0) or a name.
pub trait RowIndex {
    fn index(&self, row: &Row<'_>) -> Result<usize>;
}
impl RowIndex for usize {
    fn index(&self, row: &Row<'_>) -> Result<usize> {
        if *self < row.len() {
            Ok(*self)
        } else {
            Err(Error::Conversion {
                column: *self,
                message: format!("no such column (the row has {})", row.len()),
            })
        }
    }
}
impl RowIndex for &str {
    fn index(&self, row: &Row<'_>) -> Result<usize> {
        let found = match row {
            Row::Sqlite(r) => r.as_ref().column_index(self).ok(),
            Row::Postgres(r) => r.columns().iter().position(|c| c.name() == *self),
        };
        found.ok_or_else(|| Error::Conversion {
            column: 0,
            message: format!("no column named {self}"),
        })
    }
}

/// One row of a result.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    fn len(&self) -> usize {
        match self {
            Row::Sqlite(r) => r.as_ref().column_count(),
            Row::Postgres(r) => r.len(),
        }
    }

    /// Cell `idx` as its storage class.
    pub fn get_ref<I: RowIndex>(&self, idx: I) -> Result<ValueRef<'_>> {
        let i = idx.index(self)?;
        match self {
            Row::Sqlite(r) => Ok(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => ValueRef::Null,
                rusqlite::types::ValueRef::Integer(v) => ValueRef::Integer(v),
                rusqlite::types::ValueRef::Real(v) => ValueRef::Real(v),
                rusqlite::types::ValueRef::Text(t) => {
                    ValueRef::Text(std::str::from_utf8(t).map_err(|e| Error::Conversion {
                        column: i,
                        message: e.to_string(),
                    })?)
                }
                rusqlite::types::ValueRef::Blob(b) => ValueRef::Blob(b),
            }),
            Row::Postgres(r) => {
                r.try_get::<_, PgCell>(i)
                    .map(|c| c.0)
                    .map_err(|e| Error::Conversion {
                        column: i,
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Cell `idx` read as `T`: `Err` when it does not read as one.
    pub fn get<I: RowIndex, T: FromSql>(&self, idx: I) -> Result<T> {
        let i = idx.index(self)?;
        T::from_sql(self.get_ref(i)?).map_err(|message| Error::Conversion { column: i, message })
    }
}

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A PostgreSQL session and its statement cache.
pub struct PgConn {
    client: postgres::Client,
    cache: HashMap<String, postgres::Statement>,
    /// Inside a transaction block (`BEGIN` … `COMMIT`/`ROLLBACK` through
    /// [`Conn::execute_batch`]): a statement that fails to prepare there
    /// would abort the transaction, so a trial preparation is wrapped in a
    /// savepoint.
    in_transaction: bool,
}

impl PgConn {
    /// `sql` prepared untyped (the server deduces every parameter's
    /// type); inside a transaction within a savepoint, so that a failure
    /// leaves the transaction usable.
    fn try_prepare(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        self.guarded(|c| prepare_wide(c, sql))
    }

    /// `f` (a preparation), inside a savepoint when in a transaction: a
    /// failure leaves the transaction usable.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        if !self.in_transaction {
            return f(&mut self.client);
        }
        self.client.batch_execute("SAVEPOINT orch_prepare")?;
        let out = f(&mut self.client);
        self.client.batch_execute(if out.is_ok() {
            "RELEASE orch_prepare"
        } else {
            "ROLLBACK TO orch_prepare; RELEASE orch_prepare"
        })?;
        out
    }

    fn remember(&mut self, sql: &str, stmt: &postgres::Statement) {
        if self.cache.len() >= PG_STATEMENT_CACHE {
            self.cache.clear();
        }
        self.cache.insert(sql.to_string(), stmt.clone());
    }

    /// `sql` prepared with its parameters typed by `values` (integer
    /// `INT8`, real `FLOAT8`, text `TEXT`, bytes `BYTEA`; a null left to
    /// the server, or `TEXT` when the server cannot type it either), and
    /// cached.
    fn prepare_typed(&mut self, sql: &str, values: &[ValueRef<'_>]) -> Result<postgres::Statement> {
        let unspecified = Type::new(
            "unspecified".into(),
            0,
            postgres::types::Kind::Pseudo,
            "pg_catalog".into(),
        );
        let types = |null: &Type| -> Vec<Type> {
            values
                .iter()
                .map(|v| match v {
                    ValueRef::Null => null.clone(),
                    ValueRef::Integer(_) => Type::INT8,
                    ValueRef::Real(_) => Type::FLOAT8,
                    ValueRef::Text(_) => Type::TEXT,
                    ValueRef::Blob(_) => Type::BYTEA,
                })
                .collect()
        };
        let text = dollar_params(sql);
        let stmt = match self.guarded(|c| c.prepare_typed(&text, &types(&unspecified))) {
            Err(e) if untyped_parameter(&e) => {
                self.guarded(|c| c.prepare_typed(&text, &types(&Type::TEXT)))
            }
            other => other,
        }
        .map_err(|error| Error::Prepare {
            sql: sql.to_string(),
            error,
        })?;
        self.remember(sql, &stmt);
        Ok(stmt)
    }
}

/// `sql` prepared untyped, then again with every parameter the
/// server typed as a narrower integer (`?1 + 100` makes `?1` an
/// `INT4`) typed `INT8`: orch's integers are 64-bit (times in ms).
fn prepare_wide(
    client: &mut postgres::Client,
    sql: &str,
) -> Result<postgres::Statement, postgres::Error> {
    let text = dollar_params(sql);
    let stmt = client.prepare(&text)?;
    if !stmt
        .params()
        .iter()
        .any(|t| *t == Type::INT4 || *t == Type::INT2)
    {
        return Ok(stmt);
    }
    let wide: Vec<Type> = stmt
        .params()
        .iter()
        .map(|t| match *t {
            Type::INT4 | Type::INT2 => Type::INT8,
            _ => t.clone(),
        })
        .collect();
    client.prepare_typed(&text, &wide)
}

/// Whether preparing failed only because a parameter's type could not be
/// deduced (42P18), was deduced two ways (42P08), or was deduced as one
/// that does not fit where it is used (42804, 42883).
fn untyped_parameter(e: &postgres::Error) -> bool {
    matches!(
        e.code().map(|c| c.code()),
        Some("42P18" | "42P08" | "42804" | "42883")
    )
}

/// A PostgreSQL statement: prepared, or to be prepared at its first run.
pub enum PgStmt {
    Ready(postgres::Statement),
    Deferred(String),
}

/// One connection: SQLite or PostgreSQL.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PgConn>>),
}

impl From<rusqlite::Connection> for Conn {
    fn from(c: rusqlite::Connection) -> Self {
        Conn::Sqlite(c)
    }
}

/// Whether `target` (an `ORCH_DB` value) names a PostgreSQL database:
/// `postgres://…` or `postgresql://…`.
pub fn is_postgres_url(target: &str) -> bool {
    target.starts_with("postgres://") || target.starts_with("postgresql://")
}

/// The Unix socket folder a PostgreSQL URL connects through: a host that
/// is a percent-encoded absolute path (`postgres://u@%2Frun%2Fpg/db`) or a
/// `host=/dir` parameter. `None` for a TCP host. The agent sandbox hides it
/// (an agent must not reach orch's database).
pub fn postgres_socket_dir(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.split_once("://")?.1;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let decode = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let from_query = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("host="))
        .map(decode);
    let authority = main.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = decode(host.rsplit_once(':').map_or(host, |(h, _)| h));
    [from_query, Some(host)]
        .into_iter()
        .flatten()
        .find(|h| h.starts_with('/'))
        .map(std::path::PathBuf::from)
}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = main.split_at(main.find('/').unwrap_or(main.len()));
    let authority = match authority.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let query = query.map(|q| {
        let kept: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => kv.to_string(),
            })
            .collect();
        format!("?{}", kept.join("&"))
    });
    format!("{scheme}://{authority}{path}{}", query.unwrap_or_default())
}

/// A database target for people: an SQLite path as it is, a PostgreSQL
/// URL with its password replaced by `***` ([`redact`]).
pub fn shown(target: &std::path::Path) -> String {
    match target.to_str() {
        Some(t) if is_postgres_url(t) => redact(t),
        _ => target.display().to_string(),
    }
}

impl Conn {
    /// Connects to PostgreSQL at `url` (libpq's URL form; a Unix socket is
    /// `?host=/dir`), without TLS (a socket or loopback; see README).
    pub fn connect_postgres(url: &str) -> Result<Conn> {
        let client = postgres::Client::connect(url, postgres::NoTls)?;
        Ok(Conn::Postgres(Box::new(RefCell::new(PgConn {
            client,
            cache: HashMap::new(),
            in_transaction: false,
        }))))
    }

    /// Opens `target`: a PostgreSQL URL ([`is_postgres_url`]) or an
    /// SQLite file (created if missing), with `busy_timeout_ms` as SQLite's
    /// busy timeout or PostgreSQL's `lock_timeout`. For tools and tests;
    /// orch itself opens through `db::Db`.
    pub fn open(target: &str, busy_timeout_ms: u64) -> Result<Conn> {
        if is_postgres_url(target) {
            let c = Conn::connect_postgres(target)?;
            c.execute_batch(&format!("SET lock_timeout = '{busy_timeout_ms}ms'"))?;
            return Ok(c);
        }
        let c = rusqlite::Connection::open(target)?;
        c.busy_timeout(std::time::Duration::from_millis(busy_timeout_ms))?;
        Ok(Conn::Sqlite(c))
    }

    /// The names of the database's own tables, sorted.
    pub fn table_names(&self) -> Result<Vec<String>> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            }
            Dialect::Postgres => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema=current_schema() AND table_type='BASE TABLE' ORDER BY 1"
            }
        };
        self.prepare(sql)?.query_map([], |r| r.get(0))?.collect()
    }

    /// The dialect of this connection.
    pub fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection (pragmas, checkpoints), `None` on PostgreSQL.
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres(_) => None,
        }
    }

    /// A statement, prepared once per connection and kept.
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        match self {
            Conn::Sqlite(c) => Ok(Stmt::Sqlite(SqliteStmt::Cached(c.prepare_cached(sql)?))),
            Conn::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                if let Some(s) = pg.cache.get(sql) {
                    return Ok(Stmt::Postgres(self, PgStmt::Ready(s.clone())));
                }
                match pg.try_prepare(sql) {
                    Ok(stmt) => {
                        pg.remember(sql, &stmt);
                        Ok(Stmt::Postgres(self, PgStmt::Ready(stmt)))
                    }
                    // The server could not type a parameter from the
                    // statement alone (`CASE WHEN … THEN ?5`, `?2 IS
                    // NULL`): it is prepared at its first run, typed by
                    // the values it is given.
                    Err(e) if untyped_parameter(&e) => {
                        Ok(Stmt::Postgres(self, PgStmt::Deferred(sql.to_string())))
                    }
                    Err(error) => Err(Error::Prepare {
                        sql: sql.to_string(),
                        error,
                    }),
                }
            }
        }
    }

    /// A statement prepared for this use only (SQLite); cached on
    /// PostgreSQL as every statement is.
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>> {
        match self {
            Conn::Sqlite(c) => Ok(Stmt::Sqlite(SqliteStmt::Plain(c.prepare(sql)?))),
            Conn::Postgres(_) => self.prepare_cached(sql),
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.prepare(sql)?.execute(params)
    }

    /// The first row of one statement through `f`; [`Error::NoRows`] when
    /// there is none.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare(sql)?.query_row(params, f)
    }

    /// Runs statements separated by `;`, without parameters (simple
    /// query protocol on PostgreSQL).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let out = pg.client.batch_execute(sql);
                let head = sql.trim_start().to_ascii_uppercase();
                if head.starts_with("BEGIN") {
                    pg.in_transaction = out.is_ok();
                } else if head.starts_with("COMMIT")
                    || (head.starts_with("ROLLBACK") && !head.starts_with("ROLLBACK TO"))
                {
                    pg.in_transaction = false;
                }
                Ok(out?)
            }
        }
    }
}

enum SqliteStmt<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Plain(rusqlite::Statement<'c>),
}

impl<'c> std::ops::DerefMut for SqliteStmt<'c> {
    fn deref_mut(&mut self) -> &mut rusqlite::Statement<'c> {
        match self {
            SqliteStmt::Cached(s) => s,
            SqliteStmt::Plain(s) => s,
        }
    }
}
impl<'c> std::ops::Deref for SqliteStmt<'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &rusqlite::Statement<'c> {
        match self {
            SqliteStmt::Cached(s) => s,
            SqliteStmt::Plain(s) => s,
        }
    }
}

/// A prepared statement of a [`Conn`].
pub enum Stmt<'c> {
    #[allow(private_interfaces)]
    Sqlite(SqliteStmt<'c>),
    Postgres(&'c Conn, PgStmt),
}

/// Binds SQLite parameters by position.
fn sqlite_bind(stmt: &mut rusqlite::Statement<'_>, values: &[ValueRef<'_>]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        let v = match *v {
            ValueRef::Null => rusqlite::types::ValueRef::Null,
            ValueRef::Integer(x) => rusqlite::types::ValueRef::Integer(x),
            ValueRef::Real(x) => rusqlite::types::ValueRef::Real(x),
            ValueRef::Text(t) => rusqlite::types::ValueRef::Text(t.as_bytes()),
            ValueRef::Blob(b) => rusqlite::types::ValueRef::Blob(b),
        };
        stmt.raw_bind_parameter(i + 1, rusqlite::types::ToSqlOutput::Borrowed(v))?;
    }
    Ok(())
}

impl Stmt<'_> {
    /// Runs `f` with the client and the statement, prepared now (typed
    /// by `values`) if it was deferred.
    fn pg<T>(
        &mut self,
        values: &[ValueRef<'_>],
        f: impl FnOnce(&mut postgres::Client, &postgres::Statement) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let Stmt::Postgres(Conn::Postgres(pg), s) = self else {
            unreachable!("a PostgreSQL statement of a PostgreSQL connection");
        };
        let mut pg = pg.borrow_mut();
        if let PgStmt::Deferred(sql) = s {
            *s = PgStmt::Ready(pg.prepare_typed(sql, values)?);
        }
        let PgStmt::Ready(stmt) = s else {
            unreachable!("prepared above");
        };
        Ok(f(&mut pg.client, stmt)?)
    }

    /// Runs the statement; returns the rows it changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        let values = params.values()?;
        match self {
            Stmt::Sqlite(s) => {
                sqlite_bind(s, &values)?;
                Ok(s.raw_execute()?)
            }
            Stmt::Postgres(..) => {
                let args: Vec<&(dyn PgToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
                let n = self.pg(&values, |c, s| c.execute(s, &args))?;
                Ok(n as usize)
            }
        }
    }

    /// The first row through `f`; [`Error::NoRows`] when there is none.
    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let values = params.values()?;
        match self {
            Stmt::Sqlite(s) => {
                sqlite_bind(s, &values)?;
                let mut rows = s.raw_query();
                match rows.next()? {
                    Some(r) => f(&Row::Sqlite(r)),
                    None => Err(Error::NoRows),
                }
            }
            Stmt::Postgres(..) => {
                let args: Vec<&(dyn PgToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
                let rows = self.pg(&values, |c, s| c.query(s, &args))?;
                match rows.first() {
                    Some(r) => f(&Row::Postgres(r)),
                    None => Err(Error::NoRows),
                }
            }
        }
    }

    /// Every row through `f`, read to the end before the first is mapped.
    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let values = params.values()?;
        let mut out = Vec::new();
        match self {
            Stmt::Sqlite(s) => {
                sqlite_bind(s, &values)?;
                let mut rows = s.raw_query();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r)));
                }
            }
            Stmt::Postgres(..) => {
                let args: Vec<&(dyn PgToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
                let rows = self.pg(&values, |c, s| c.query(s, &args))?;
                out.extend(rows.iter().map(|r| f(&Row::Postgres(r))));
            }
        }
        Ok(out.into_iter())
    }

    /// Whether the statement returns at least one row.
    pub fn exists<P: Params>(&mut self, params: P) -> Result<bool> {
        self.query_row(params, |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    /// How many columns the statement's rows have.
    pub fn column_count(&self) -> usize {
        match self {
            Stmt::Sqlite(s) => s.column_count(),
            Stmt::Postgres(_, PgStmt::Ready(s)) => s.columns().len(),
            Stmt::Postgres(_, PgStmt::Deferred(_)) => 0,
        }
    }

    /// How many parameters the statement takes.
    pub fn parameter_count(&self) -> usize {
        match self {
            Stmt::Sqlite(s) => s.parameter_count(),
            Stmt::Postgres(_, PgStmt::Ready(s)) => s.params().len(),
            Stmt::Postgres(_, PgStmt::Deferred(sql)) => dollar_params(sql).matches('$').count(),
        }
    }
}

/// SQLite's `?N` (and a bare `?`) as PostgreSQL's `$N`, outside quoted
/// strings and identifiers.
pub fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut next = 1;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                out.push('$');
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    next = digits.parse::<usize>().unwrap_or(0) + 1;
                    out.push_str(&digits);
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// `v` encoded as `ty` (PostgreSQL's binary form).
fn put<T: PgToSql>(
    v: T,
    ty: &Type,
    out: &mut postgres::types::private::BytesMut,
) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
    v.to_sql(ty, out)
}

/// Cell `raw` of type `ty` read as `T`.
fn take<'a, T: PgFromSql<'a>>(
    ty: &Type,
    raw: &'a [u8],
) -> std::result::Result<T, Box<dyn StdError + Sync + Send>> {
    T::from_sql(ty, raw)
}

impl PgToSql for ValueRef<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let mismatch = || -> Box<dyn StdError + Sync + Send> {
            format!("a {} value for a parameter of type {ty}", self.kind()).into()
        };
        match *self {
            ValueRef::Null => Ok(IsNull::Yes),
            ValueRef::Integer(i) => match *ty {
                Type::INT8 => put(i, ty, out),
                Type::INT4 => put(i32::try_from(i)?, ty, out),
                Type::INT2 => put(i16::try_from(i)?, ty, out),
                Type::FLOAT8 => put(i as f64, ty, out),
                Type::FLOAT4 => put(i as f32, ty, out),
                Type::BOOL => put(i != 0, ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    put(i.to_string(), &Type::TEXT, out)
                }
                _ => Err(mismatch()),
            },
            ValueRef::Real(f) => match *ty {
                Type::FLOAT8 => put(f, ty, out),
                Type::FLOAT4 => put(f as f32, ty, out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => put(f.to_string(), &Type::TEXT, out),
                _ => Err(mismatch()),
            },
            ValueRef::Text(t) => match *ty {
                Type::BYTEA => put(t.as_bytes(), ty, out),
                Type::JSONB => {
                    // jsonb's binary form: version 1, then the text.
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(t.as_bytes());
                    Ok(IsNull::No)
                }
                Type::INT8 => put(t.parse::<i64>().map_err(|_| mismatch())?, ty, out),
                _ => {
                    out.extend_from_slice(t.as_bytes());
                    Ok(IsNull::No)
                }
            },
            ValueRef::Blob(b) => match *ty {
                Type::BYTEA => put(b, ty, out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => {
                    put(std::str::from_utf8(b)?, &Type::TEXT, out)
                }
                _ => Err(mismatch()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A PostgreSQL cell read as its storage class.
struct PgCell<'a>(ValueRef<'a>);

impl<'a> PgFromSql<'a> for PgCell<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(PgCell(match *ty {
            Type::INT8 => ValueRef::Integer(take::<i64>(ty, raw)?),
            Type::INT4 => ValueRef::Integer(take::<i32>(ty, raw)? as i64),
            Type::INT2 => ValueRef::Integer(take::<i16>(ty, raw)? as i64),
            Type::OID => ValueRef::Integer(take::<u32>(ty, raw)? as i64),
            Type::BOOL => ValueRef::Integer(take::<bool>(ty, raw)? as i64),
            Type::FLOAT8 => ValueRef::Real(take::<f64>(ty, raw)?),
            Type::FLOAT4 => ValueRef::Real(take::<f32>(ty, raw)? as f64),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => ValueRef::Blob(raw),
            Type::JSONB => ValueRef::Text(std::str::from_utf8(raw.get(1..).unwrap_or_default())?),
            _ => ValueRef::Text(std::str::from_utf8(raw)?),
        }))
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(PgCell(ValueRef::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A `NUMERIC` in PostgreSQL's binary form (what `SUM` of a `BIGINT`
/// returns): an integer when it has no fraction digits, else a real.
fn numeric(raw: &[u8]) -> std::result::Result<ValueRef<'static>, Box<dyn StdError + Sync + Send>> {
    let word = |i: usize| -> std::result::Result<i16, Box<dyn StdError + Sync + Send>> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a short NUMERIC".into())
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
    if sign == 0xC000 {
        return Ok(ValueRef::Real(f64::NAN));
    }
    let mut value = 0f64;
    let mut int: i128 = 0;
    for i in 0..ndigits as usize {
        let d = word(4 + i)? as i128;
        let exp = weight as i32 - i as i32;
        value += d as f64 * 10000f64.powi(exp);
        if exp >= 0 {
            int = int.saturating_add(d.saturating_mul(10000i128.saturating_pow(exp as u32)));
        }
    }
    let negative = sign == 0x4000;
    if dscale == 0 {
        let int = if negative { -int } else { int };
        return i64::try_from(int)
            .map(ValueRef::Integer)
            .map_err(|_| "a NUMERIC beyond 64 bits".into());
    }
    Ok(ValueRef::Real(if negative { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_params("SELECT ?1, '?', \"a?\" FROM t WHERE a=?2 AND b=?"),
            "SELECT $1, '?', \"a?\" FROM t WHERE a=$2 AND b=$3"
        );
    }

    #[test]
    fn a_socket_folder_is_read_from_either_form_of_url() {
        assert_eq!(
            postgres_socket_dir("postgres://orch@%2Fvar%2Ftmp%2Fpg%2Fsock:5432/orch"),
            Some("/var/tmp/pg/sock".into())
        );
        assert_eq!(
            postgres_socket_dir("postgresql://orch:pw@/orch?host=/run/postgresql"),
            Some("/run/postgresql".into())
        );
        assert_eq!(
            postgres_socket_dir("postgres://orch:pw@db.lan:5432/orch"),
            None
        );
    }

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redact("postgres://orch:s3cr@t@db.lan:5432/orch"),
            "postgres://orch:***@db.lan:5432/orch"
        );
        assert_eq!(
            redact("postgresql://orch@/orch?host=/run/pg&password=hunter2"),
            "postgresql://orch@/orch?host=/run/pg&password=***"
        );
        let plain = "postgres://orch@%2Fvar%2Frun:5432/orch";
        assert_eq!(redact(plain), plain);
        assert_eq!(
            shown(std::path::Path::new("/var/lib/orch/orch.db")),
            "/var/lib/orch/orch.db"
        );
    }

    #[test]
    fn sqlite_round_trip_through_the_layer() {
        let c = Conn::from(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b BLOB, f REAL)")
            .unwrap();
        let n = c
            .execute(
                "INSERT INTO t (a, b, f) VALUES (?1, ?2, ?3)",
                params!["x", vec![0xffu8, 0], 1.5],
            )
            .unwrap();
        assert_eq!(n, 1);
        let got: (String, Vec<u8>, f64, Option<i64>) = c
            .query_row("SELECT a, b, f, NULL FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!(got, ("x".into(), vec![0xff, 0], 1.5, None));
        let none = c
            .query_row("SELECT a FROM t WHERE id=?1", [9], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .unwrap();
        assert_eq!(none, None);
        let err = c
            .query_row("SELECT a FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(err.to_string().contains("expected integer"), "{err}");
    }
}
