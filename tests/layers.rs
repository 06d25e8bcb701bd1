//! The house stays acyclic: no import cycle among the top-level modules of
//! the library (`src/*.rs`, `src/<dir>/`), and every module imports only
//! from its own floor or the floors below it (README "Layout"). A module's
//! imports are the `crate::<module>` paths in its non-test code (comments
//! and `#[cfg(test)]` modules are left out). The binary (`main.rs`,
//! `cli.rs`, `cmd/`) sits on top and is not part of the graph.

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

/// The code of a file without comments and without its `#[cfg(test)]`
/// items (everything from the first `#[cfg(test)]` line on: test modules
/// sit at the end of a file in this crate).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
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
        ],
    ),
    ("store", &["db"]),
    ("core", &["pipeline", "ctx", "outbox"]),
    ("clients", &["adapters"]),
    ("services", &["forge", "tracker", "notifier"]),
    (
        "features",
        &[
            "tick",
            "brief",
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
