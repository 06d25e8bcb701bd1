//! Benchmark of the webhook shim (`orch serve`, issue 11): how many signed,
//! unique deliveries per second it accepts durably on loopback, at what
//! latency, and how that compares with what SQLite alone does on the same
//! disk.
//!
//! ```sh
//! cargo run --release --example bench_shim -- [--requests 20000] [--conns 2,16] [--runs 3] [--dir PATH] [--log]
//! ```
//!
//! For each connection count it starts the shim in this process
//! (`orch::serve::start`, a fresh database in `--dir`, default the system
//! temp folder), builds every request up front (a Plane delivery with its
//! own id and body, signed with HMAC-SHA256), then lets that many client
//! threads send them over keep-alive connections as fast as the answers
//! come back. It reports accepted (202) requests per second, the p50 and p99
//! latency of a request (write to last byte of the answer), and, after a
//! graceful shutdown, the rows in the inbox divided by the 202s it got
//! (1.000 = every accepted delivery persisted, none stored unanswered), and
//! the CPU time of the whole process (server and clients) per request.
//!
//! Right before each load, on the same disk and with the same
//! `synchronous=FULL` connection (`Db::open`), the raw ceiling:
//! `Tx::record_delivery` with one commit per row, and with 100 rows per
//! commit. Each load is compared with the ceiling measured next to it (a
//! shared disk drifts between minutes); with `--runs N` every line is the
//! median of N such rounds.
//!
//! `--log` sends the shim's per-request log lines (info) to stderr; without
//! it the benchmark installs no log subscriber.
//!
//! It measures; it asserts nothing. Clients and server share the machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use hmac::{Hmac, Mac};
use orch::db::{Db, NewDelivery, Recorded};
use orch::serve::{QueueFn, ServeOptions};
use sha2::Sha256;

const SECRET: &str = "bench-secret";
const FIXTURE: &[u8] =
    include_bytes!("../tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json");

struct Args {
    requests: usize,
    conns: Vec<usize>,
    runs: usize,
    dir: PathBuf,
    log: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        requests: 20_000,
        conns: vec![2, 16],
        runs: 3,
        dir: std::env::temp_dir(),
        log: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--requests" => a.requests = value("--requests")?.parse()?,
            "--conns" => {
                a.conns = value("--conns")?
                    .split(',')
                    .map(|c| c.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--runs" => a.runs = value("--runs")?.parse()?,
            "--dir" => a.dir = PathBuf::from(value("--dir")?),
            "--log" => a.log = true,
            "-h" | "--help" => {
                println!("usage: bench_shim [--requests 20000] [--conns 2,16] [--runs 3] [--dir PATH] [--log]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(a.requests >= 100, "--requests must be at least 100");
    ensure!(a.runs >= 1, "--runs must be at least 1");
    ensure!(
        !a.conns.is_empty() && a.conns.iter().all(|c| *c >= 1),
        "--conns needs counts >= 1"
    );
    Ok(a)
}

/// The delivery body with `id` in it (unique body, unique hash).
fn body_for(id: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(FIXTURE).expect("fixture is JSON");
    v["bench_delivery"] = serde_json::Value::String(id.to_string());
    serde_json::to_vec(&v).expect("serialises")
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// One complete keep-alive request for delivery `id`.
fn request(id: &str) -> Vec<u8> {
    let body = body_for(id);
    let mut raw = format!(
        "POST /webhooks/plane HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         X-Plane-Event: issue\r\nX-Plane-Delivery: {id}\r\nX-Plane-Signature: {}\r\n\
         Content-Length: {}\r\n\r\n",
        sign(&body),
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    raw
}

/// Reads one answer from `s` (framed by `Content-Length`); returns its
/// status. `buf` keeps bytes of a following answer (there are none: one
/// request at a time).
fn read_status(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        ensure!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?.to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        ensure!(n > 0, "the server closed the connection mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

/// One round: accepted/s, the load, raw 1/commit and 100/commit rows/s.
type Round = (f64, Load, f64, f64);

struct Load {
    accepted: usize,
    other: usize,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    persisted: i64,
    cpu_us_per_req: f64,
}

/// User + system CPU time of this process so far, µs.
fn cpu_us() -> f64 {
    // SAFETY: getrusage writes only the struct passed.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn run_load(dir: &Path, conns: usize, requests: usize, run: usize) -> anyhow::Result<Load> {
    let db_path = dir.join(format!("shim-{conns}-{run}.db"));
    let opts = ServeOptions {
        admin_bind: None,
        admin_token: None,
        bind: "127.0.0.1:0".into(),
        threads: 0,
        read_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(5),
        max_connections: 4096,
        max_header_bytes: 65_536,
        webhook_secrets: orch::webhook::SOURCES
            .iter()
            .map(|s| (s.as_str(), SECRET.to_string()))
            .collect(),
        db_path: db_path.clone(),
        busy_timeout_ms: 5_000,
    };
    let queue: QueueFn = Arc::new(|| Ok(serde_json::Value::Null));
    let admin = orch::serve::Admin {
        queue,
        metrics: Arc::new(|| Ok(String::new())),
    };
    let server = orch::serve::start(opts, admin)?;
    let addr = server.addr();
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..requests)
            .map(|i| request(&format!("bench-{conns}-{i}")))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_us();
    let started = Instant::now();
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            let (reqs, next) = (reqs.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<(usize, usize, Vec<u64>)> {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let (mut accepted, mut other, mut lat) = (0, 0, Vec::new());
                let mut buf = Vec::with_capacity(1024);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = reqs.get(i) else { break };
                    let t = Instant::now();
                    s.write_all(req)?;
                    let status = read_status(&mut s, &mut buf)?;
                    lat.push(t.elapsed().as_micros() as u64);
                    if status == 202 {
                        accepted += 1;
                    } else {
                        other += 1;
                    }
                }
                Ok((accepted, other, lat))
            })
        })
        .collect();
    let (mut accepted, mut other, mut lat) = (0, 0, Vec::with_capacity(requests));
    for c in clients {
        let (a, o, l) = c.join().expect("client thread")?;
        accepted += a;
        other += o;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_us_per_req = (cpu_us() - cpu_before) / requests as f64;
    server.shutdown()?;
    lat.sort_unstable();
    let persisted: i64 =
        Db::open(&db_path, 5_000)?
            .conn()
            .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))?;
    Ok(Load {
        accepted,
        other,
        secs,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        persisted,
        cpu_us_per_req,
    })
}

/// Rows per second of `Tx::record_delivery` straight on SQLite, `per_commit`
/// rows in each `BEGIN IMMEDIATE` transaction.
fn raw_ceiling(dir: &Path, per_commit: usize, rows: usize, tag: &str) -> anyhow::Result<f64> {
    let path = dir.join(format!("raw-{per_commit}-{tag}.db"));
    let db = Db::open(&path, 5_000)?;
    let deliveries: Vec<(NewDelivery, String)> = (0..rows)
        .map(|i| {
            let id = format!("raw-{per_commit}-{i}");
            let body = body_for(&id);
            let hash = orch::webhook::body_sha256(&body);
            let headers = serde_json::json!({
                "Host": "bench", "Content-Type": "application/json",
                "X-Plane-Event": "issue", "X-Plane-Delivery": id,
            });
            (
                NewDelivery {
                    source: "plane".into(),
                    dedupe: orch::webhook_source::Dedupe::ByIdOrBody,
                    event: "issue".into(),
                    delivery_id: id,
                    headers,
                    body,
                },
                hash,
            )
        })
        .collect();
    let started = Instant::now();
    for batch in deliveries.chunks(per_commit) {
        let now = orch::clock::now_ms();
        db.write(|tx| {
            for (d, hash) in batch {
                let r = tx.record_delivery(d, hash, now)?;
                ensure!(matches!(r, Recorded::Stored(_)), "unexpected {r:?}");
            }
            Ok(())
        })?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {kernel}")
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.log {
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(std::io::stderr)
            .init();
    }
    let tmp = tempfile::Builder::new()
        .prefix("bench-shim-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("making a temp folder in {}", args.dir.display()))?;
    println!("machine: {}", machine());
    println!(
        "disk: {} (synchronous=FULL, WAL); {} signed unique Plane deliveries of ~{} bytes per load, {} round(s); per-request log {}",
        tmp.path().display(),
        args.requests,
        request("bench-x").len(),
        args.runs,
        if args.log { "on (stderr)" } else { "off" }
    );
    println!();
    println!(
        "{:>5}  {:>10}  {:>7}  {:>7}  {:>9}  {:>17}  {:>11}  {:>13}  {:>11}  {:>13}",
        "conns",
        "accepted/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/req",
        "persisted/accepted",
        "raw 1/commit",
        "raw 100/commit",
        "vs 1/commit",
        "vs 100/commit"
    );
    for &conns in &args.conns {
        let mut rounds = Vec::new();
        for run in 0..args.runs {
            let tag = format!("{conns}-{run}");
            let one = raw_ceiling(tmp.path(), 1, (args.requests / 10).clamp(500, 2_000), &tag)?;
            let hundred = raw_ceiling(tmp.path(), 100, args.requests, &tag)?;
            let l = run_load(tmp.path(), conns, args.requests, run)?;
            let rate = l.accepted as f64 / l.secs;
            if args.runs > 1 {
                println!(
                    "  run {}: {rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} µs CPU/request, {} / {} persisted, raw {one:.0} and {hundred:.0} rows/s{}",
                    run + 1,
                    l.p50_us as f64 / 1000.0,
                    l.p99_us as f64 / 1000.0,
                    l.cpu_us_per_req,
                    l.persisted,
                    l.accepted,
                    if l.other > 0 {
                        format!(", {} answers other than 202", l.other)
                    } else {
                        String::new()
                    }
                );
            }
            rounds.push((rate, l, one, hundred));
        }
        let median = |f: &dyn Fn(&Round) -> f64| -> f64 {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let persisted: i64 = rounds.iter().map(|r| r.1.persisted).sum();
        let accepted: usize = rounds.iter().map(|r| r.1.accepted).sum();
        let other: usize = rounds.iter().map(|r| r.1.other).sum();
        println!(
            "{:>5}  {:>10.0}  {:>7.2}  {:>7.2}  {:>10.0}  {:>9} / {:<6}  {:>11.0}  {:>13.0}  {:>10.2}x  {:>12.2}x{}",
            conns,
            median(&|r| r.0),
            median(&|r| r.1.p50_us as f64) / 1000.0,
            median(&|r| r.1.p99_us as f64) / 1000.0,
            median(&|r| r.1.cpu_us_per_req),
            persisted,
            accepted,
            median(&|r| r.2),
            median(&|r| r.3),
            median(&|r| r.0 / r.2),
            median(&|r| r.0 / r.3),
            if other > 0 {
                format!("  ({other} answers other than 202)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
