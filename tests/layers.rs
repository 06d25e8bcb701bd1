//! The house's rules, checked: the floors and the writers.
//!
//! Floors: no import cycle among the top-level modules of the library
//! (`src/*.rs`, `src/<dir>/`), and every module imports only from its own
//! floor or the floors below it (DESIGN §14). A module's imports are the
//! `crate::<module>` paths in its non-test code (comments and
//! `#[cfg(test)]` items are left out). The binary (`main.rs`, `cli.rs`,
//! `cmd/`) sits on top and is not part of the graph.
//!
//! Writers: one place per rule (DESIGN §14). Only the transition rule
//! (`src/pipeline/mod.rs`) runs the store methods that write a task's
//! stage, append a transition or enqueue a job; only the job-status rule
//! (`src/pipeline/job.rs`) runs those that change a job's status; and no
//! SQL that does either is written outside the store (`src/db/`). The
//! store methods are found from their SQL, so a new one is covered
//! without naming it here. Only `outbox::queue` inserts outbox rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module name → the top-level modules it refers to.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The end (exclusive) of the string, byte-string, raw-string or char
/// literal that starts at `b[i]`, or `None` when none starts there (a
/// lifetime `'a` is not a literal).
fn literal_end(b: &[char], i: usize) -> Option<usize> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if i > 0 && ident(b[i - 1]) {
        return None; // inside an identifier (`for`, `br` is checked below)
    }
    let mut j = i;
    if b[j] == 'b' {
        j += 1;
    }
    if j < b.len() && b[j] == 'r' {
        // A raw string: r"…", r#"…"#, br##"…"##.
        let mut k = j + 1;
        while k < b.len() && b[k] == '#' {
            k += 1;
        }
        if k < b.len() && b[k] == '"' {
            let hashes = k - j - 1;
            let mut m = k + 1;
            while m < b.len() {
                if b[m] == '"'
                    && b[m + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == '#')
                        .count()
                        == hashes
                {
                    return Some(m + 1 + hashes);
                }
                m += 1;
            }
            return Some(b.len());
        }
        return None;
    }
    match b.get(j) {
        Some('"') => {
            let mut m = j + 1;
            while m < b.len() && b[m] != '"' {
                m += if b[m] == '\\' { 2 } else { 1 };
            }
            Some((m + 1).min(b.len()))
        }
        Some('\'') if b.get(j + 1) == Some(&'\\') => {
            // An escape: `'\''`, `'\n'`, `'\u{7f}'`.
            let mut m = j + 3;
            while m < b.len() && b[m] != '\'' {
                m += 1;
            }
            Some((m + 1).min(b.len()))
        }
        Some('\'') if b.get(j + 2) == Some(&'\'') => Some(j + 3),
        _ => None,
    }
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// items: each such item (a test module, a test-only function or import)
/// is left out from its attribute to its end — its closing `}` or its
/// `;` — and the code after it is kept, wherever in the file it sits.
/// String literals are kept as written; line breaks are kept.
fn code_of(text: &str) -> String {
    const TEST_ATTR: &str = "#[cfg(test)]";
    let b: Vec<char> = text.chars().collect();
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| b.get(i + k) == Some(&c));
    let mut out = String::new();
    // Inside a test-only item: the bracket depth within it.
    let mut skipping: Option<i32> = None;
    let mut i = 0;
    while i < b.len() {
        if at(i, "//") {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if at(i, "/*") {
            let mut depth = 0;
            while i < b.len() {
                if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        if let Some(end) = literal_end(&b, i) {
            if skipping.is_none() {
                out.extend(&b[i..end]);
            } else {
                out.extend(b[i..end].iter().filter(|c| **c == '\n'));
            }
            i = end;
            continue;
        }
        let c = b[i];
        match skipping.as_mut() {
            None if at(i, TEST_ATTR) => {
                skipping = Some(0);
                i += TEST_ATTR.len();
                continue;
            }
            None => out.push(c),
            Some(depth) => {
                match c {
                    '{' | '(' | '[' => *depth += 1,
                    '}' | ')' | ']' => {
                        *depth -= 1;
                        if *depth < 0 {
                            // The end of the block around the item.
                            out.push(c);
                            skipping = None;
                        } else if *depth == 0 && c == '}' {
                            skipping = None;
                        }
                    }
                    ';' | ',' if *depth == 0 => skipping = None,
                    '\n' => out.push(c),
                    _ => {}
                }
            }
        }
        i += 1;
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named by `crate::x` and `crate::{x, y::z}` paths.
fn referenced_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `mycrate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // A group: the first identifier of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        found.insert(ident_at(&group[j..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
    found
}

fn library_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "cli" | "cmd") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let refs = referenced_modules(&code_of(&text));
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(refs.into_iter().filter(|m| *m != module));
    }
    graph
}

/// One cycle of the graph, as a path that ends where it starts.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::OnPath);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if !graph.contains_key(next) {
                continue; // not a module of this crate (e.g. a macro path)
            }
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| n == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, graph, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The floors, lowest first. A new module must be given a floor here.
const FLOORS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "model",
            "config",
            "error",
            "clock",
            "lock",
            "git",
            "process",
            "sandbox",
            "agent",
            "failpoint",
            "backoff",
            "build_info",
            "untrusted",
            "acp",
            "webhook_source",
            "sql",
        ],
    ),
    ("store", &["db"]),
    ("core", &["pipeline", "ctx", "outbox", "fence"]),
    ("clients", &["adapters"]),
    ("services", &["forge", "tracker", "notifier"]),
    (
        "features",
        &[
            "tick",
            "brief",
            "ci",
            "ingest",
            "worker",
            "reap",
            "reconcile",
            "why",
            "deliver",
            "merge_gate",
            "serve",
            "webhook",
            "report",
            "status",
            "check",
            "metrics",
            "staging",
            "config_check",
        ],
    ),
];

fn floor_of(module: &str) -> Option<(usize, &'static str)> {
    FLOORS
        .iter()
        .enumerate()
        .find(|(_, (_, mods))| mods.contains(&module))
        .map(|(i, (name, _))| (i, *name))
}

#[test]
fn every_module_imports_only_from_its_floor_or_below() {
    let graph = library_graph();
    let mut wrong = Vec::new();
    for (module, imports) in &graph {
        let Some((floor, floor_name)) = floor_of(module) else {
            wrong.push(format!(
                "{module} has no floor: add it to FLOORS in tests/layers.rs"
            ));
            continue;
        };
        for import in imports.iter().filter(|m| graph.contains_key(*m)) {
            let (to, to_name) = floor_of(import).unwrap_or((usize::MAX, "no floor"));
            if to > floor {
                wrong.push(format!(
                    "{module} ({floor_name}) imports {import} ({to_name}), a floor above it"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_import_cycle_among_library_modules() {
    let graph = library_graph();
    assert!(graph.len() > 10, "found too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle among src/ modules: {}\n(full graph: {graph:#?})",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_reads_grouped_imports() {
    let code = code_of(
        "use crate::{a, b::{c, d}, e as f};\nlet x = crate::g::h(); // crate::commented\n\
         #[cfg(test)]\nmod tests { use crate::z; }\n",
    );
    let refs: Vec<_> = referenced_modules(&code).into_iter().collect();
    assert_eq!(refs, ["a", "b", "e", "g"]);
    // A test-only item in the middle of a file hides only itself: the code
    // after it is read, braces in its strings and chars do not end it early.
    let code = code_of(
        "use crate::a;\n#[cfg(test)]\nfn helper() { let _ = (\"}\", '}', r#\"{\"#); crate::x::y(); }\n\
         #[cfg(test)]\nuse crate::w;\nfn later() { crate::b::c(\"http://x\"); crate::d::e(); }\n\
         #[cfg(test)]\nmod tests { use crate::z; }\nconst C: &str = crate::f::G;\n",
    );
    let refs: Vec<_> = referenced_modules(&code).into_iter().collect();
    assert_eq!(refs, ["a", "b", "d", "f"], "{code}");
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph.entry(from.into()).or_default().insert(to.into());
        graph.entry(to.into()).or_default();
    }
    let cycle = find_cycle(&graph).expect("a → b → c → a");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
}

/// Every `.rs` file of the library and the binary under `src/`, as its
/// path (`src/pipeline/mod.rs`) and its code without comments and test
/// items.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, code_of(&std::fs::read_to_string(&f).unwrap()))
        })
        .collect()
}

/// The string literals of `code`, each with the name of the function it
/// sits in (`""` before the first `fn`).
fn literals_by_fn(code: &str) -> Vec<(String, String)> {
    let b: Vec<char> = code.chars().collect();
    let mut func = String::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = literal_end(&b, i) {
            out.push((func.clone(), b[i..end].iter().collect()));
            i = end;
            continue;
        }
        let starts_word = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == '_');
        if starts_word && b[i..].starts_with(&['f', 'n', ' ']) {
            let rest: String = b[i + 3..].iter().take(80).collect();
            func = ident_at(rest.trim_start()).to_string();
        }
        i += 1;
    }
    out
}

/// A statement as matched: upper case, line continuations and runs of
/// white space as one space, no space around `=`.
fn normalize_sql(literal: &str) -> String {
    literal
        .replace('\\', " ")
        .to_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" =", "=")
        .replace("= ", "=")
}

/// A write a rule owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Write {
    /// `UPDATE tasks SET … stage=…`, `INSERT INTO tasks`, `DELETE FROM tasks`.
    TaskStage,
    /// `INSERT INTO transitions`, `DELETE FROM transitions`.
    Transition,
    /// `INSERT INTO jobs`: a job is born queued, by a transition.
    NewJob,
    /// `UPDATE jobs SET … status=…`, `DELETE FROM jobs`.
    JobStatus,
}

/// Each write, the one file whose code may run it, and that rule's name.
const OWNERS: &[(Write, &str, &str)] = &[
    (
        Write::TaskStage,
        "src/pipeline/mod.rs",
        "the transition rule",
    ),
    (
        Write::Transition,
        "src/pipeline/mod.rs",
        "the transition rule",
    ),
    (Write::NewJob, "src/pipeline/mod.rs", "the transition rule"),
    (
        Write::JobStatus,
        "src/pipeline/job.rs",
        "the job-status rule",
    ),
];

/// The writes a statement makes that a rule owns.
fn writes_of(sql: &str) -> Vec<Write> {
    let insert_into = |t: &str| {
        (sql.contains("INSERT") || sql.contains("REPLACE"))
            && (sql.contains(&format!("INTO {t} ")) || sql.contains(&format!("INTO {t}(")))
    };
    let deletes = |t: &str| {
        sql.contains(&format!("DELETE FROM {t} ")) || sql.ends_with(&format!("DELETE FROM {t}"))
    };
    let sets = |t: &str, col: &str| {
        sql.split(&format!("UPDATE {t} SET ")).skip(1).any(|rest| {
            let clause = rest.split(" WHERE ").next().unwrap_or(rest);
            clause
                .split(',')
                .any(|a| a.trim_start().starts_with(&format!("{col}=")))
        })
    };
    let mut w = Vec::new();
    if sets("TASKS", "STAGE") || insert_into("TASKS") || deletes("TASKS") {
        w.push(Write::TaskStage);
    }
    if insert_into("TRANSITIONS") || deletes("TRANSITIONS") {
        w.push(Write::Transition);
    }
    if insert_into("JOBS") {
        w.push(Write::NewJob);
    }
    if sets("JOBS", "STATUS") || deletes("JOBS") {
        w.push(Write::JobStatus);
    }
    w
}

/// Whether `code` calls method or function `name` (`.name(`, `::name(`,
/// `.name::<`, or names it as a value `::name`).
fn calls(code: &str, name: &str) -> bool {
    [".", "::"].iter().any(|sep| {
        code.match_indices(&format!("{sep}{name}")).any(|(i, m)| {
            let after = code[i + m.len()..].chars().next();
            !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && (sep == &"::" || matches!(after, Some('(' | ':')))
        })
    })
}

/// Checks the writer rules over `files` (path, code without comments and
/// test items). Returns the violations, and the store methods found for
/// each write.
fn rule_violations(files: &[(String, String)]) -> (Vec<String>, BTreeMap<Write, BTreeSet<String>>) {
    let mut wrong = Vec::new();
    let mut writers: BTreeMap<Write, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in files {
        // Migrations are one-time data changes that no code calls.
        if path == "src/db/schema.rs" {
            continue;
        }
        for (func, literal) in literals_by_fn(code) {
            for w in writes_of(&normalize_sql(&literal)) {
                if path.starts_with("src/db/") && !func.is_empty() {
                    writers.entry(w).or_default().insert(func.clone());
                } else {
                    wrong.push(format!(
                        "{path} (in or after fn {func}) runs SQL that writes {w:?}: only the store (src/db/) runs SQL, and only {} calls it: {literal}",
                        OWNERS.iter().find(|o| o.0 == w).unwrap().2
                    ));
                }
            }
        }
    }
    for (path, code) in files {
        for (w, owner, rule) in OWNERS {
            for method in writers.get(w).into_iter().flatten() {
                if path != owner && calls(code, method) {
                    wrong.push(format!(
                        "{path} calls {method}, which writes {w:?}: only {rule} ({owner}) may; go through it"
                    ));
                }
            }
        }
    }
    (wrong, writers)
}

#[test]
fn only_the_transition_rule_moves_tasks_and_only_the_job_rule_changes_job_status() {
    let (wrong, writers) = rule_violations(&sources());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The scan sees the store: each write has its methods.
    for (w, _, _) in OWNERS {
        assert!(
            writers.get(w).is_some_and(|m| !m.is_empty()),
            "no store method found for {w:?}: {writers:?}"
        );
    }
    assert!(
        writers[&Write::TaskStage].contains("cas_task"),
        "{writers:?}"
    );
    assert!(
        writers[&Write::JobStatus].contains("finish_job"),
        "{writers:?}"
    );
}

/// The writer check fails on what it guards: a feature calling a store
/// method that changes job status, and SQL that moves a task outside the
/// store — and a test-only call does not count.
#[test]
fn the_writer_check_names_a_writer_outside_its_rule() {
    let file = |path: &str, text: &str| (path.to_string(), code_of(text));
    let files = [
        file(
            "src/db/jobs.rs",
            "impl Tx { pub fn finish_job(&self, id: i64) { self.conn.execute(\n\
             \"UPDATE jobs SET status=?2, \\\n finished_at_ms=?3 WHERE id=?1\", []); } }",
        ),
        file("src/pipeline/job.rs", "fn change(tx: &Tx) { tx.finish_job(1) }"),
        file(
            "src/reconcile.rs",
            "fn pass(tx: &Tx) { tx\n    .finish_job(2); }\n\
             #[cfg(test)]\nmod tests { fn t(tx: &Tx) { tx.finish_job(3) } }",
        ),
        file("src/worker.rs", "fn f(c: &Connection) { c.execute(\"update tasks set stage = 'done' where id=1\", []); }"),
        file("src/why.rs", "#[cfg(test)]\nfn t(tx: &Tx) { tx.finish_job(3) }\nfn g() {}"),
    ];
    let (wrong, writers) = rule_violations(&files);
    assert_eq!(
        writers[&Write::JobStatus],
        BTreeSet::from(["finish_job".to_string()])
    );
    assert_eq!(wrong.len(), 2, "{wrong:#?}");
    assert!(
        wrong[0].starts_with("src/worker.rs (in or after fn f) runs SQL that writes TaskStage"),
        "{wrong:#?}"
    );
    assert!(
        wrong[1].starts_with("src/reconcile.rs calls finish_job, which writes JobStatus"),
        "{wrong:#?}"
    );
}

/// The files of `src/` (relative path with `/`, text) that write outbox
/// rows other than through `outbox::queue`: a call of the store's
/// `insert_outbox` outside `src/outbox.rs` (and its definition's own file,
/// `src/db/outbox.rs`), or SQL inserting into `outbox` outside the store.
/// Comments are left out; test code is not (a test writes rows the way
/// orch does, or by SQL in `tests/`).
fn outbox_writers_outside_the_outbox(files: &[(String, String)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (rel, text) in files {
        for (n, line) in text.lines().enumerate() {
            let code = match line.find("//") {
                Some(i) => &line[..i],
                None => line,
            };
            let sql = code.to_ascii_lowercase();
            let calls = code.contains("insert_outbox")
                && !matches!(rel.as_str(), "outbox.rs" | "db/outbox.rs");
            let inserts = (sql.contains("into outbox") || sql.contains("into \"outbox\""))
                && rel != "db/outbox.rs";
            if calls || inserts {
                wrong.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    wrong
}

#[test]
fn only_the_outbox_module_inserts_outbox_rows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy();
            (rel.replace('\\', "/"), std::fs::read_to_string(p).unwrap())
        })
        .collect();
    assert!(files.iter().any(|(rel, _)| rel == "outbox.rs"));
    let wrong = outbox_writers_outside_the_outbox(&files);
    assert!(
        wrong.is_empty(),
        "outbox rows are written only by orch::outbox::queue (typed message, derived key):\n{}",
        wrong.join("\n")
    );

    // The check sees a stray write, by call or by SQL, and not a comment.
    let stray = |rel: &str, text: &str| {
        outbox_writers_outside_the_outbox(&[(rel.to_string(), text.to_string())])
    };
    assert_eq!(
        stray("report.rs", "    tx.insert_outbox(&k, None)?;").len(),
        1
    );
    assert_eq!(
        stray("db/jobs.rs", "\"insert or ignore INTO outbox (x)\"").len(),
        1
    );
    assert_eq!(stray("outbox.rs", "\"INSERT INTO outbox (x)\"").len(), 1);
    assert!(stray("report.rs", "// tx.insert_outbox is the store's").is_empty());
    assert!(stray("outbox.rs", "    tx.insert_outbox(&k, None)?;").is_empty());
    assert!(stray("db/outbox.rs", "\"INSERT INTO outbox (x)\"").is_empty());
}
