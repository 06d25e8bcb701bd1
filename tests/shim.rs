//! `orch serve` as a user's sender sees it — every answer, and nothing
//! stored for a rejected request — and as a hostile or unlucky client
//! does: slow or huge heads, stalled bodies, smuggling-shaped framing,
//! thousands of idle connections, running out of file descriptors,
//! SIGTERM under load, many clients at once. Raw `TcpStream` clients
//! against the built binary on loopback.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// A raw `POST /webhooks/plane`: `framing` header lines (each ending in
/// CRLF), the delivery's `headers`, `extra` raw header bytes, the blank
/// line, then `body` as given.
fn raw_post(framing: &str, headers: &[(String, String)], extra: &[u8], body: &[u8]) -> Vec<u8> {
    let mut raw = format!("POST /webhooks/plane HTTP/1.1\r\nHost: x\r\n{framing}").into_bytes();
    for (k, v) in headers {
        raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(extra);
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

/// Sends `raw` on a new connection; returns what came back until the
/// server closed it (or 10 s passed) and whether it closed.
fn send_raw(addr: &str, raw: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(raw).unwrap();
    read_until_closed(&mut s, Duration::from_secs(10))
}

fn inbox(sbx: &Sandbox) -> i64 {
    sbx.count("SELECT COUNT(*) FROM inbox")
}

#[test]
fn every_shim_answer_and_nothing_stored_for_a_rejected_request() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let body = fixture("plane/webhooks/issue-updated-state-in-progress.json");
    let plane = |sig: &str, b: &[u8], id: &str| {
        server
            .request(
                "POST",
                "/webhooks/plane",
                &[
                    ("X-Plane-Event", "issue"),
                    ("X-Plane-Delivery", id),
                    ("X-Plane-Signature", sig),
                ],
                b,
            )
            .unwrap()
    };

    // 401: missing and bad signatures
    let (s, b) = server
        .request(
            "POST",
            "/webhooks/plane",
            &[("X-Plane-Event", "issue"), ("X-Plane-Delivery", "x")],
            &body,
        )
        .unwrap();
    assert_eq!(s, 401, "{b}");
    assert_eq!(plane(&sign("wrong-secret", &body), &body, "x").0, 401);
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(plane(&sign(PLANE_SECRET, &body), &tampered, "x").0, 401);
    // 413: over 1 MiB
    let big = vec![b' '; (1 << 20) + 10];
    assert_eq!(plane(&sign(PLANE_SECRET, &big), &big, "x").0, 413);
    // 400: signed but not JSON
    let junk = b"this is not json".to_vec();
    let (s, b) = plane(&sign(PLANE_SECRET, &junk), &junk, "x");
    assert_eq!(s, 400, "{b}");
    // 404, 405
    assert_eq!(server.request("GET", "/nope", &[], b"").unwrap().0, 404);
    assert_eq!(
        server
            .request("GET", "/webhooks/plane", &[], b"")
            .unwrap()
            .0,
        405
    );
    assert_eq!(inbox(&sbx), 0, "nothing stored for rejected requests");

    // 202 once stored; 200 duplicate for a redelivery
    let (s, b) = plane(&sign(PLANE_SECRET, &body), &body, "first");
    assert_eq!(s, 202, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["inbox_id"], 1);
    let (s, b) = plane(&sign(PLANE_SECRET, &body), &body, "first");
    assert_eq!(s, 200);
    assert!(b.contains("duplicate"), "{b}");
    assert_eq!(
        plane(&sign(PLANE_SECRET, &body), &body, "plane-retry-new-id").0,
        200
    );
    assert_eq!(inbox(&sbx), 1);

    // Gitea, with its own secret and headers from the fixture
    let gbody = fixture("gitea/webhooks/status-success.json");
    let (s, b) = server
        .request(
            "POST",
            "/webhooks/gitea",
            &[
                ("X-Gitea-Event", "status"),
                ("X-Gitea-Event-Type", "status"),
                ("X-Gitea-Delivery", "g-1"),
                ("X-Gitea-Signature", &sign(GITEA_SECRET, &gbody)),
            ],
            &gbody,
        )
        .unwrap();
    assert_eq!(s, 202, "{b}");
    let (s, _) = server
        .request(
            "POST",
            "/webhooks/gitea",
            &[
                ("X-Gitea-Event-Type", "status"),
                ("X-Gitea-Delivery", "g-2"),
                ("X-Gitea-Signature", &sign(PLANE_SECRET, &gbody)),
            ],
            &gbody,
        )
        .unwrap();
    assert_eq!(s, 401, "the plane secret does not sign gitea deliveries");
    assert_eq!(inbox(&sbx), 2);

    // health and queue
    let (code, health) = server.request("GET", "/healthz", &[], b"").unwrap();
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["schema"], orch::db::schema_version(), "{health}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{health}");
    assert!(health["commit"].is_string(), "{health}");
    // The queue and the metrics are on the admin listener only.
    assert_eq!(server.request("GET", "/queue", &[], b"").unwrap().0, 404);
    assert_eq!(server.request("GET", "/metrics", &[], b"").unwrap().0, 404);
    let (s, b) = server.admin_get("/queue").unwrap();
    assert_eq!(s, 200);
    let q: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(q["inbox"]["pending"], 2, "{q}");
    let (s, metrics) = server.admin_get("/metrics").unwrap();
    assert_eq!(s, 200, "{metrics}");
    assert!(
        metrics.contains("orch_inbox_deliveries{state=\"pending\"} 2"),
        "{metrics}"
    );
    // What was refused is counted by the shim itself (it stores nothing).
    for (answer, n) in [
        ("accepted", 1),
        ("duplicate", 2),
        ("bad_signature", 3),
        ("too_large", 1),
    ] {
        assert!(
            metrics.contains(&format!(
                "orch_webhook_answers_total{{source=\"plane\",answer=\"{answer}\"}} {n}\n"
            )),
            "{answer}: {metrics}"
        );
    }
}

#[test]
fn a_stalled_small_body_gets_408_and_the_shim_keeps_serving() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_SERVE_READ_TIMEOUT_MS", "700");
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let (headers, body) = unique_plane_delivery("stalled");
    let mut c = server.client().unwrap();
    let raw = raw_post(
        &format!("Content-Length: {}\r\n", body.len()),
        &headers,
        b"",
        b"",
    );
    let started = Instant::now();
    c.stream().write_all(&raw).unwrap();
    c.stream().write_all(&body[..10]).unwrap();
    let (out, closed) = read_until_closed(c.stream(), Duration::from_secs(10));
    let took = started.elapsed();
    let (code, json) = parse_answer(&out);
    assert_eq!(
        (code, json["status"].as_str()),
        (408, Some("timeout")),
        "{json}"
    );
    assert!(closed, "the connection stays open after the 408");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    // A trickle never idle, never done: the deadline is for the whole request.
    let mut c = server.client().unwrap();
    c.stream().write_all(&raw).unwrap();
    let started = Instant::now();
    let mut w = c.stream().try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for _ in 0..40 {
            thread::sleep(Duration::from_millis(50));
            if w.write_all(b" ").is_err() {
                break;
            }
        }
    });
    let (out, _) = read_until_closed(c.stream(), Duration::from_secs(10));
    assert_eq!(parse_answer(&out).0, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    trickle.join().unwrap();
    let (s, b) = server.post_plane(&body, "stalled");
    assert_eq!(s, 202, "{b}");
    assert_eq!(inbox(&sbx), 1);
}

#[test]
fn a_head_over_64_kib_is_431_without_reading_the_rest() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    // 100 MB of one header value, written until the server stops reading.
    let writer = thread::spawn(move || {
        let _ = w.write_all(b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nX-Huge: ");
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..(100 << 20) / chunk.len() {
            if w.write_all(&chunk).is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    let started = Instant::now();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(10));
    assert_eq!(
        parse_answer(&out).0,
        431,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(s);
    writer.join().unwrap();
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 << 20,
        "the server read on: the client wrote {sent} bytes"
    );
    assert_eq!(server.request("GET", "/healthz", &[], b"").unwrap().0, 200);
}

#[test]
fn slowloris_headers_are_cut_at_the_header_deadline() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_SERVE_HEADER_TIMEOUT_MS", "1000");
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    // One header byte every 100 ms, for up to 10 s.
    let drip = thread::spawn(move || {
        for _ in 0..100 {
            if stopped.load(Ordering::SeqCst) || w.write_all(b"X").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(8));
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    drip.join().unwrap();
    assert!(closed, "still open after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
    assert_eq!(server.request("GET", "/healthz", &[], b"").unwrap().0, 200);
}

#[test]
fn content_length_with_chunked_and_malformed_requests_are_400() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let (headers, body) = unique_plane_delivery("smuggled");
    let chunked = one_chunk(&body);
    for both in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let (out, closed) = send_raw(&server.addr, &raw_post(both, &headers, b"", &chunked));
        let (code, json) = parse_answer(&out);
        assert_eq!(
            (code, json["status"].as_str()),
            (400, Some("bad_request")),
            "{both}"
        );
        assert!(closed, "{both}: the connection stays open");
    }
    // The same delivery, chunked alone, is fine.
    let raw = raw_post(
        "Connection: close\r\nTransfer-Encoding: chunked\r\n",
        &headers,
        b"",
        &chunked,
    );
    let (out, _) = send_raw(&server.addr, &raw);
    assert_eq!(
        parse_answer(&out).0,
        202,
        "{}",
        String::from_utf8_lossy(&out)
    );

    // Chunked past 1 MiB: 413 once the limit is crossed.
    let big = vec![b' '; (1 << 20) + 10];
    let mut raw = b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Plane-Event: issue\r\nX-Plane-Delivery: big\r\n".to_vec();
    raw.extend_from_slice(
        format!("X-Plane-Signature: {}\r\n\r\n", sign(PLANE_SECRET, &big)).as_bytes(),
    );
    for part in big.chunks(64 * 1024) {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&raw);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(10));
    writer.join().unwrap();
    let (code, json) = parse_answer(&out);
    assert_eq!(
        (code, json["status"].as_str()),
        (413, Some("too_large")),
        "{json}"
    );

    // A garbage request line, and a header that is not UTF-8.
    let (out, closed) = send_raw(&server.addr, b"\x01\x02 nonsense\r\n\r\n");
    assert_eq!(
        parse_answer(&out).0,
        400,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(closed);
    let (headers, body) = unique_plane_delivery("latin1");
    let raw = raw_post(
        &format!("Connection: close\r\nContent-Length: {}\r\n", body.len()),
        &headers,
        b"X-Note: caf\xe9\r\n",
        &body,
    );
    let (out, _) = send_raw(&server.addr, &raw);
    let (code, json) = parse_answer(&out);
    assert_eq!(
        (code, json["status"].as_str()),
        (400, Some("bad_request")),
        "{json}"
    );
    assert_eq!(inbox(&sbx), 1, "only the plain chunked delivery is stored");
}

#[test]
fn two_thousand_idle_connections_do_not_keep_a_delivery_out_and_are_closed_at_the_deadline() {
    let limit = raise_open_files_limit();
    let idle_n = 2000.min(limit.saturating_sub(200) as usize);
    assert!(
        idle_n >= 500,
        "open-files limit {limit} is too low for this test"
    );
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_SERVE_HEADER_TIMEOUT_MS", "3000");
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..idle_n)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let (headers, body) = unique_plane_delivery("fresh");
    let mut c = server.client().unwrap();
    let (s, b, _) = c
        .request("POST", "/webhooks/plane", &headers, &body)
        .unwrap();
    assert_eq!(s, 202, "{b}");
    assert!(
        server.open_fds() >= idle_n,
        "the server holds {} descriptors, fewer than the {idle_n} idle connections",
        server.open_fds()
    );
    assert_eq!(inbox(&sbx), 1);
    drop(c);
    // Idle connections are closed once their head is overdue.
    for mut s in idle {
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(15));
        assert!(
            closed,
            "an idle connection is still open after {:?}",
            opened.elapsed()
        );
    }
    assert!(opened.elapsed() >= Duration::from_millis(2900));
}

#[test]
fn out_of_file_descriptors_the_shim_pauses_accepting_and_keeps_serving() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_SERVE_HEADER_TIMEOUT_MS", "1000");
    sbx.ok(&["init"]);
    let server = sbx.serve_with(Some(64));
    // Far more connections than the server has descriptors for; tiny_http's
    // accept thread died here and took the listener with it.
    let idle: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(&server.addr).ok())
        .collect();
    assert!(idle.len() > 100);
    let (headers, body) = unique_plane_delivery("after-emfile");
    let started = Instant::now();
    let mut c = server.client().unwrap();
    let (s, b, _) = c
        .request("POST", "/webhooks/plane", &headers, &body)
        .unwrap();
    assert_eq!(s, 202, "{b}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(inbox(&sbx), 1);
    drop(idle);
    assert_eq!(server.request("GET", "/healthz", &[], b"").unwrap().0, 200);
}

#[test]
fn sigterm_finishes_the_requests_in_flight_and_loses_no_202() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_SERVE_READ_TIMEOUT_MS", "5000");
    sbx.ok(&["init"]);
    let mut server = sbx.serve();
    // One request in flight for sure: its head and half its body are sent
    // before the signal, the rest after.
    let (slow_headers, slow_body) = unique_plane_delivery("in-flight");
    let mut slow = server.client().unwrap();
    let mut head = format!(
        "POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        slow_body.len()
    );
    for (k, v) in &slow_headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    slow.stream().write_all(head.as_bytes()).unwrap();
    let half = slow_body.len() / 2;
    slow.stream().write_all(&slow_body[..half]).unwrap();

    let accepted = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let others = Arc::new(Mutex::new(Vec::<u16>::new()));
    let addr = server.addr.clone();
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let (accepted, others, addr) = (accepted.clone(), others.clone(), addr.clone());
            thread::spawn(move || {
                let mut n = 0;
                'outer: loop {
                    let Ok(mut c) = Client::connect(&addr) else {
                        break;
                    };
                    loop {
                        let id = format!("term-{t}-{n}");
                        n += 1;
                        let (h, b) = unique_plane_delivery(&id);
                        match c.request("POST", "/webhooks/plane", &h, &b) {
                            Ok((202, body, closes)) => {
                                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                                accepted
                                    .lock()
                                    .unwrap()
                                    .push((id, v["inbox_id"].as_i64().unwrap()));
                                if closes {
                                    continue 'outer;
                                }
                            }
                            Ok((code, _, _)) => {
                                others.lock().unwrap().push(code);
                                break 'outer;
                            }
                            Err(_) => continue 'outer,
                        }
                    }
                }
            })
        })
        .collect();
    wait_until(30, "100 deliveries accepted", || {
        accepted.lock().unwrap().len() >= 100
    });
    // SIGTERM while the slow request is still open.
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // The rest of the body goes out once the server has taken the signal.
    let log = sbx.dir.join("serve.stderr");
    wait_until(20, "the server to log that it is stopping", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stopping: no new connections")
    });
    slow.stream().write_all(&slow_body[half..]).unwrap();
    let (s, b, closes) = slow.read_answer().unwrap();
    assert_eq!(s, 202, "the request in flight at SIGTERM: {b}");
    assert!(
        closes,
        "a draining server closes the connection after the answer"
    );
    let code = server.wait_exit(30);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        others.lock().unwrap().is_empty(),
        "answers other than 202: {:?}",
        others.lock().unwrap()
    );
    let mut accepted = accepted.lock().unwrap().clone();
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    accepted.push(("in-flight".into(), v["inbox_id"].as_i64().unwrap()));
    let db = sbx.db();
    for (id, inbox_id) in &accepted {
        let stored: String = db
            .query_row(
                "SELECT delivery_id FROM inbox WHERE id=?1",
                [inbox_id],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("202 for {id} as inbox {inbox_id}, not in the db: {e}"));
        assert_eq!(&stored, id);
    }
    assert_eq!(inbox(&sbx), accepted.len() as i64, "rows without a 202");
}

/// `threads` clients post `n` unique deliveries between them over
/// keep-alive connections; returns every status.
fn post_concurrently(server: &Server, prefix: &str, threads: usize, n: usize) -> Vec<u16> {
    let next = Arc::new(AtomicUsize::new(0));
    let codes = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, codes, addr, prefix) = (
                next.clone(),
                codes.clone(),
                server.addr.clone(),
                prefix.to_string(),
            );
            thread::spawn(move || {
                let mut c = Client::connect(&addr).unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    let (h, b) = unique_plane_delivery(&format!("{prefix}-{i}"));
                    let (s, _, closes) = c.request("POST", "/webhooks/plane", &h, &b).unwrap();
                    codes.lock().unwrap().push(s);
                    if closes {
                        c = Client::connect(&addr).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let codes = codes.lock().unwrap().clone();
    codes
}

#[test]
fn sixteen_clients_post_2000_unique_deliveries_and_all_are_stored_once() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let codes = post_concurrently(&server, "fresh", 16, 2000);
    assert_eq!(codes.len(), 2000);
    assert!(
        codes.iter().all(|c| *c == 202),
        "not all 202: {:?}",
        codes.iter().filter(|c| **c != 202).collect::<Vec<_>>()
    );
    assert_eq!(inbox(&sbx), 2000);
    assert_eq!(
        sbx.count("SELECT COUNT(DISTINCT delivery_id) FROM inbox"),
        2000
    );
}

#[test]
fn with_50000_deliveries_stored_2000_more_are_stored_once_each() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    // Seeded in one statement: fast even in a debug build.
    let db = sbx.db();
    let (hash, body) = match db.dialect() {
        orch::sql::Dialect::Sqlite => ("printf('%064x', i)", "'{\"seed\":' || i || '}'"),
        orch::sql::Dialect::Postgres => (
            "lpad(to_hex(i), 64, '0')",
            "convert_to('{\"seed\":' || i || '}', 'UTF8')",
        ),
    };
    let seeded = db
        .execute(
            &format!(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 49999) \
                 INSERT INTO inbox (source, event, delivery_id, body_sha256, headers, body, received_at_ms, processed_at_ms, outcome) \
                 SELECT 'plane', 'issue', 'seed-' || i, {hash}, '{{}}', {body}, 1, 2, 'seeded' FROM n"
            ),
            [],
        )
        .unwrap();
    drop(db);
    assert_eq!(seeded, 50_000);
    let server = sbx.serve();
    let started = Instant::now();
    let codes = post_concurrently(&server, "more", 16, 2000);
    let took = started.elapsed();
    assert!(codes.iter().all(|c| *c == 202), "not all 202");
    assert_eq!(inbox(&sbx), 52_000);
    // A redelivery is still found among 52,000 rows.
    let (h, b) = unique_plane_delivery("more-7");
    let mut c = server.client().unwrap();
    let (s, body, _) = c.request("POST", "/webhooks/plane", &h, &b).unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(
        took < Duration::from_secs(60),
        "2,000 deliveries took {took:?}"
    );
}

#[test]
fn one_delivery_posted_by_50_clients_at_once_is_one_row() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let (h, b) = unique_plane_delivery("same-for-all");
    let gate = Arc::new(Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (h, b, gate, addr) = (h.clone(), b.clone(), gate.clone(), server.addr.clone());
            thread::spawn(move || {
                let mut c = Client::connect(&addr).unwrap();
                gate.wait();
                let (s, body, _) = c.request("POST", "/webhooks/plane", &h, &b).unwrap();
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                (s, v["inbox_id"].as_i64().unwrap())
            })
        })
        .collect();
    let answers: Vec<(u16, i64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        answers.iter().filter(|a| a.0 == 202).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.0 == 200).count(),
        49,
        "{answers:?}"
    );
    assert!(answers.iter().all(|a| a.1 == answers[0].1), "{answers:?}");
    assert_eq!(inbox(&sbx), 1);
}

#[test]
fn a_second_sigterm_stops_waiting_for_the_requests_in_flight() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let mut server = sbx.serve();
    // A request that would hold the drain for the whole read deadline.
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.write_all(b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    wait_until(10, "the slow request to reach the server", || {
        server.request("GET", "/healthz", &[], b"").is_ok()
    });
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    wait_until(10, "the listener to close", || {
        TcpStream::connect(&server.addr).is_err()
    });
    let started = Instant::now();
    assert_eq!(server.terminate(5), Some(1));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(inbox(&sbx), 0);
}

#[test]
fn a_client_that_never_reads_its_answers_is_cut_off() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_SERVE_READ_TIMEOUT_MS", "1000");
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let mut s = small_window_connect(&server.addr);
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    // Pipelined requests, answers never read: the server's writes stall
    // once both socket buffers are full (a long unknown path makes long
    // 404s, so that takes fewer requests).
    let one = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200));
    let batch = one.repeat(1000).into_bytes();
    let started = Instant::now();
    let err = loop {
        if let Err(e) = s.write_all(&batch) {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still writing after a minute"
        );
    };
    assert!(
        !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the server kept the connection and stopped reading: {err}"
    );
    assert_eq!(server.request("GET", "/healthz", &[], b"").unwrap().0, 200);
}

/// A connection whose receive buffer is 4 KiB (set before connecting, so
/// the kernel does not grow it): it fills after a few answers.
fn small_window_connect(addr: &str) -> TcpStream {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor we own; `sockaddr_in` is
    // filled in full before use, and the descriptor goes to a TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = addr.port().to_be();
        sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
        let rc = libc::connect(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// Duplicates the listening TCP socket on `port` out of process `pid`
/// (`pidfd_getfd`, Linux 5.6+; a parent may take its child's descriptors)
/// and shuts it down under the process: its `accept(2)` then fails as for a
/// socket that died. `Err` says why this machine cannot.
fn shut_down_listener_of(pid: u32, port: u16) -> Result<(), String> {
    // SAFETY: plain syscalls on descriptors this function owns and closes;
    // the getsockopt/getsockname buffers are local and sized as passed.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
        if pidfd < 0 {
            return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
        }
        let mut result = Err(format!(
            "no listening socket on port {port} in process {pid}"
        ));
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())? {
            let Some(n) = entry.ok().and_then(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|s| s.parse::<libc::c_int>().ok())
            }) else {
                continue;
            };
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, n, 0) as libc::c_int;
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::ENOSYS) {
                    result = Err(format!("pidfd_getfd: {e}"));
                    break;
                }
                continue;
            }
            let mut listening: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            let mut slen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let is_ours = libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut listening as *mut libc::c_int).cast(),
                &mut len,
            ) == 0
                && listening == 1
                && libc::getsockname(fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut slen)
                    == 0
                && u16::from_be(sin.sin_port) == port;
            if is_ours {
                libc::shutdown(fd, libc::SHUT_RDWR);
                result = Ok(());
            }
            libc::close(fd);
            if is_ours {
                break;
            }
        }
        libc::close(pidfd);
        result
    }
}

#[test]
fn a_listening_socket_that_dies_under_the_shim_ends_it_non_zero_naming_why() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = sbx.dir.join("serve.log");
    let mut child = sbx
        .orch_std()
        .args(["serve", "--bind", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        thread::sleep(Duration::from_millis(20));
    }
    if let Err(why) = shut_down_listener_of(child.id(), port) {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("SKIPPED: cannot take the listening socket out of the process here: {why}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "serve kept running without a listener: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "exit {status:?}: {text}");
    assert!(text.contains("the listening socket failed"), "{text}");
}

#[test]
fn signed_bodies_that_are_not_json_within_limits_are_400_and_not_stored() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("deep", deep, "nesting deeper than 64 levels"),
        (
            "utf8",
            b"{\"title\": \"caf\xe9 \xff\xfe\"}".to_vec(),
            "invalid unicode code point",
        ),
        (
            "inf",
            br#"{"estimate": 1e999}"#.to_vec(),
            "number out of range",
        ),
        (
            "surrogate",
            br#"{"title": "\ud800", "x": 1}"#.to_vec(),
            "hex escape",
        ),
    ];
    for (id, body, why) in &cases {
        let (code, answer) = server.post_plane(body, &format!("bad-{id}"));
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            (code, v["status"].as_str()),
            (400, Some("bad_json")),
            "{id}: {v}"
        );
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("body is not valid JSON: ") && detail.contains(why),
            "{id}: {detail}"
        );
    }
    assert_eq!(inbox(&sbx), 0, "nothing stored");
    // Unsigned, the same bodies are 401: the signature is checked first.
    let (code, _) = server
        .request(
            "POST",
            "/webhooks/plane",
            &[
                ("X-Plane-Event", "issue"),
                ("X-Plane-Delivery", "unsigned"),
                ("X-Plane-Signature", &"0".repeat(64)),
            ],
            &cases[0].1,
        )
        .unwrap();
    assert_eq!(code, 401);
    // `orch ingest --file` holds bodies to the same rule (exit 1, nothing
    // stored).
    let file = sbx.dir.join("deep.json");
    std::fs::write(&file, &cases[0].1).unwrap();
    let out = sbx
        .orch_std()
        .args(["ingest", "--source", "plane", "--event", "issue"])
        .arg("--file")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nesting deeper"),
        "{err}"
    );
    assert_eq!(inbox(&sbx), 0);
}

#[test]
fn a_transfer_encoding_other_than_chunked_alone_is_400() {
    let sbx = Sandbox::new();
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let (headers, body) = unique_plane_delivery("codings");
    let chunked = one_chunk(&body);
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
    ] {
        let (out, closed) = send_raw(&server.addr, &raw_post(te, &headers, b"", &chunked));
        let (code, json) = parse_answer(&out);
        assert_eq!(
            (code, json["status"].as_str()),
            (400, Some("bad_request")),
            "{te}: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(
            json["detail"]
                .as_str()
                .unwrap()
                .contains("Transfer-Encoding"),
            "{te}: {json}"
        );
        assert!(closed, "{te}: the connection stays open");
    }
    assert_eq!(inbox(&sbx), 0);
    // `chunked` alone, in any case, is fine.
    let raw = raw_post(
        "Connection: close\r\nTransfer-Encoding: Chunked\r\n",
        &headers,
        b"",
        &chunked,
    );
    let (out, _) = send_raw(&server.addr, &raw);
    assert_eq!(
        parse_answer(&out).0,
        202,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(inbox(&sbx), 1);
}

#[test]
fn the_admin_listener_is_a_socket_in_the_state_dir_or_tcp_with_a_bearer_token() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut sbx = Sandbox::new();
    sbx.ok(&["init"]);
    // The default: the socket in the state directory, mode 0660.
    let server = sbx.serve();
    let sock = sbx.state_dir().join("admin.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let (code, q) = admin_socket_get(&sock, "/queue").unwrap();
    assert_eq!(code, 200, "{q}");
    let q: serde_json::Value = serde_json::from_str(&q).unwrap();
    assert!(q["inbox"].is_object(), "{q}");
    let (code, m) = admin_socket_get(&sock, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        m.contains("# TYPE orch_webhook_answers_total counter"),
        "{m}"
    );
    // Stopped by SIGKILL, it leaves its socket behind; the next start
    // replaces it.
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(sock.exists());
    let server = sbx.serve();
    assert_eq!(admin_socket_get(&sock, "/healthz").unwrap().0, 200);
    // A second shim does not take over a live socket.
    let out = sbx
        .orch_std()
        .args(["serve", "--bind", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is in use") && err.contains("ORCH_ADMIN_BIND"),
        "{err}"
    );
    assert_eq!(admin_socket_get(&sock, "/healthz").unwrap().0, 200);
    drop(server);

    // TCP: only with a token, and then only with it.
    let admin = format!("127.0.0.1:{}", free_port());
    sbx.set("ORCH_ADMIN_BIND", &admin);
    let (code, _, err) = run_orch(&sbx, &["serve", "--bind", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("config: ORCH_ADMIN_TOKEN"), "{err}");
    // The other commands do not need the token (the operator's shell
    // may not hold it).
    assert_eq!(run_orch(&sbx, &["status"]).0, 0);
    sbx.set("ORCH_ADMIN_TOKEN", "admin-canary-token-77aa");
    let server = sbx.serve();
    for path in ["/queue", "/metrics", "/healthz"] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer admin-canary-token-77a"),
            Some("Basic YWRtaW4="),
        ] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let (code, body) = request_to(&admin, "GET", path, &headers, b"").unwrap();
            assert_eq!(code, 401, "{path} {auth:?}: {body}");
            assert!(!body.contains("orch_") && !body.contains("inbox"), "{body}");
        }
    }
    let (code, q) = server.admin_get("/queue").unwrap();
    assert_eq!(code, 200, "{q}");
    assert!(q.contains("\"inbox\""), "{q}");
    let (code, m) = server.admin_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(m.contains("orch_webhook_answers_total"), "{m}");
    assert!(!sock.exists() || admin_socket_get(&sock, "/queue").is_err());
    drop(server);

    // A bad ORCH_ADMIN_BIND is a configuration error of every command.
    for bad in ["localhost", "unix:admin.sock", "127.0.0.1:99999"] {
        sbx.set("ORCH_ADMIN_BIND", bad);
        for cmd in [&["serve"][..], &["status"][..]] {
            let (code, _, err) = run_orch(&sbx, cmd);
            assert_eq!(code, 2, "{bad} {cmd:?}: {err}");
            assert!(err.contains("config: ORCH_ADMIN_BIND"), "{bad}: {err}");
        }
    }
}

/// Runs orch to the end: (exit code, stdout, stderr).
fn run_orch(sbx: &Sandbox, args: &[&str]) -> (i32, String, String) {
    let out = sbx.orch_std().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `body` as a chunked message body: one chunk, then the last (empty) one.
fn one_chunk(body: &[u8]) -> Vec<u8> {
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    chunked
}
