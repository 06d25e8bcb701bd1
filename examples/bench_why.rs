//! Benchmark of `orch why TASK` (issue 16): what answering costs on a
//! 10,000-task database. It measures; it asserts no time.
//!
//! ```sh
//! cargo run --release --example bench_reconcile -- --keep      # builds size-1000/ and size-10000/, prints "kept DIR"
//! cargo run --release --example bench_why -- --dir DIR/size-10000 [--calls 20]
//! scripts/bench-why.sh                                         # both, built in release mode
//! ```
//!
//! The database is the reconcile benchmark's (`examples/bench_reconcile.rs`
//! builds it through the library's own write path: done tasks with their
//! full history, active ones in a realistic mix of states, and one real
//! reconcile pass recorded). This program opens it read-only, as
//! `orch why` does, and
//! 1. runs [`orch::why::explain`] for every task, reporting the median,
//!    99th percentile and maximum, and the count per `waiting.kind`;
//! 2. runs the real binary (`orch --json why ID`, next to this example in
//!    the target folder) `--calls` times for one task of each waiting kind
//!    and reports the wall-clock time per call (process start, config and
//!    database open included).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use orch::db::Db;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let mut dir: Option<PathBuf> = None;
    let mut calls = 20usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--dir" => dir = Some(it.next().context("--dir needs a value")?.into()),
            "--calls" => {
                calls = it
                    .next()
                    .context("--calls needs a value")?
                    .parse()
                    .context("--calls: expected a number")?
            }
            "-h" | "--help" => {
                println!("usage: bench_why --dir DIR [--calls 20]\n  DIR: a size-N folder kept by `bench_reconcile --keep` (orch.toml, state/orch.db)");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let dir = dir.context("--dir is required (see --help)")?;
    let db_path = dir.join("state/orch.db");
    let db = Db::open_read_only(&db_path, 5000)?;
    // The defaults (the finalize cap and the reaper's grace are all `why`
    // reads of them).
    let settings = orch::config::Settings::load(&|_| None, Some(db_path.clone()), None)?;
    let ids: Vec<i64> = db.tasks()?.into_iter().map(|t| t.id).collect();
    println!(
        "orch why benchmark: {} tasks in {} ({} MB); build: {}",
        ids.len(),
        db_path.display(),
        std::fs::metadata(&db_path)?.len() / 1_000_000,
        if cfg!(debug_assertions) {
            "debug (numbers are not representative)"
        } else {
            "release"
        }
    );

    // 1. In process, every task.
    let mut times = Vec::with_capacity(ids.len());
    let mut kinds: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    let mut longest_chain = 0;
    for &id in &ids {
        let t0 = Instant::now();
        let why = orch::why::explain(&db, id, &settings, &|role| role.to_string())?
            .context("task vanished")?;
        times.push(t0.elapsed());
        let v = serde_json::to_value(&why.waiting)?;
        let kind = v["kind"].as_str().unwrap_or("?").to_string();
        kinds.entry(kind).or_insert((0, id)).0 += 1;
        longest_chain = longest_chain.max(why.chain.len());
    }
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "explain() over every task: median {}, p99 {}, max {}, total {} (longest chain {longest_chain} transitions)",
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(*times.last().unwrap()),
        ms(times.iter().sum())
    );
    println!(
        "waiting kinds: {}",
        kinds
            .iter()
            .map(|(k, (n, _))| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    // 2. The real binary, one task per waiting kind.
    let exe = std::env::current_exe()?;
    let orch = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("orch"))
        .filter(|p| p.is_file())
        .context("no orch binary next to this example (cargo build --release first)")?;
    for (kind, (_, id)) in &kinds {
        let mut walls = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t0 = Instant::now();
            let out = Command::new(&orch)
                .args(["--json", "why", &id.to_string()])
                .env("ORCH_STATE_DIR", dir.join("state"))
                .env("ORCH_CONFIG", dir.join("orch.toml"))
                .env("ORCH_DB", &db_path)
                .output()?;
            walls.push(t0.elapsed());
            if !out.status.success() {
                bail!(
                    "orch why {id} exited {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        walls.sort();
        println!(
            "orch --json why {id} ({kind}): median {}, max {} over {calls} calls",
            ms(walls[walls.len() / 2]),
            ms(*walls.last().unwrap())
        );
    }
    Ok(())
}
