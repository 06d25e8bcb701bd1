//! `orch serve` as a user's sender sees it: every answer, and nothing
//! stored for a rejected request.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::util::*;

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
    assert_eq!(server.request("GET", "/healthz", &[], b"").unwrap().0, 200);
    let (s, b) = server.request("GET", "/queue", &[], b"").unwrap();
    assert_eq!(s, 200);
    let q: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(q["inbox"]["pending"], 2, "{q}");
}

#[test]
fn a_client_that_sends_its_body_too_slowly_is_cut_off_and_the_shim_keeps_serving() {
    let mut sbx = Sandbox::new();
    sbx.set("ORCH_SERVE_READ_TIMEOUT_MS", "500")
        .set("ORCH_SERVE_THREADS", "1");
    sbx.ok(&["init"]);
    let server = sbx.serve();
    let started = Instant::now();
    let mut slow = std::net::TcpStream::connect(&server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // tiny_http itself buffers bodies of up to 1 KiB before a worker sees
    // them, so the slow client announces a larger one.
    slow.write_all(b"POST /webhooks/plane HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nX-Plane-Event: issue\r\nX-Plane-Delivery: slow\r\nX-Plane-Signature: 00\r\n\r\n0123456789").unwrap();
    let mut resp = Vec::new();
    let _ = slow.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off near the deadline, took {:?}",
        started.elapsed()
    );
    // the only worker is free again
    assert_eq!(server.request("GET", "/healthz", &[], b"").unwrap().0, 200);
    assert_eq!(inbox(&sbx), 0);
}
