//! Route: an agent reads the secrets file (or anything else holding the
//! webhook secret) and signs a forged tracker delivery with it, so that
//! ingest creates the task it chose. Closed by keeping secrets out of the
//! sandbox: they live in their own file (`/etc/orch/secrets.env`,
//! `root:root 0600`, read by systemd), which the sandbox hides by default
//! like every path in `ORCH_AGENT_SANDBOX_HIDE`; orch's own environment is
//! in another pid namespace and drops the secrets once read.

use super::Hostile;
use crate::util::{sign, unique_plane_delivery, PLANE_SECRET};

#[test]
fn an_agent_cannot_sign_a_forged_delivery_the_shim_would_take() {
    let Some(h) = Hostile::new() else { return };
    for tool in ["openssl", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success();
        assert!(found, "{tool} is needed by this test (.ci/run installs it)");
    }
    let server = h.sbx.serve();
    let id = h.sbx.add_issue("forger");
    let delivery = "forged-by-an-agent";
    let (_, body) = unique_plane_delivery(delivery);
    let body_file = h.sbx.dir.join("forged.json");
    std::fs::write(&body_file, &body).unwrap();
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    // Every place the secret could be read from; the first value found
    // signs the forgery. The shim's status code lands in the worktree. (No
    // braces: orch reads them as placeholders of the agent's argv.)
    let script = format!(
        "secret=$( (cat {secrets}; cat {dotenv}; \
         for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\"; done; env) 2>/dev/null \
         | sed -n 's/^ORCH_PLANE_WEBHOOK_SECRET=//p' | head -n 1)\n\
         sig=$(openssl dgst -sha256 -hmac \"$secret\" < {body} 2>/dev/null | sed 's/^.*= //')\n\
         curl -s -i -X POST \
         -H 'Content-Type: application/json' -H 'X-Plane-Event: issue' \
         -H 'X-Plane-Delivery: {delivery}' -H \"X-Plane-Signature: $sig\" \
         --data-binary @{body} http://{addr}/webhooks/plane | head -n 1 | cut -d ' ' -f 2 > forgery.txt\n\
         [ -n \"$secret\" ] && echo ' found a secret' >> forgery.txt\n\
         true",
        secrets = q(&h.secrets_file),
        dotenv = q(&h.sbx.dir.join(".env")),
        body = q(&body_file),
        addr = server.addr,
    );
    h.agent_runs_first("analyst", &script);
    let v = h.sbx.json(&["work-once"]);
    assert_eq!(v["finalized"]["to"], "architecture", "{v}");

    let answer = std::fs::read_to_string(h.sbx.worktree(id).join("forgery.txt")).unwrap();
    assert_eq!(
        answer.trim(),
        "401",
        "the agent found the secret and the shim took its forgery"
    );
    let stored = |sbx: &crate::util::Sandbox| {
        sbx.count(&format!(
            "SELECT COUNT(*) FROM inbox WHERE delivery_id='{delivery}'"
        ))
    };
    assert_eq!(stored(&h.sbx), 0, "the forgery was stored");
    h.sbx.ok(&["ingest"]);
    assert_eq!(h.sbx.count("SELECT COUNT(*) FROM tasks"), 1);

    // The same delivery signed with the real secret is taken: the agent
    // failed for want of the secret, not because the forgery was bad.
    let (code, text) = server
        .request(
            "POST",
            "/webhooks/plane",
            &[
                ("Content-Type", "application/json"),
                ("X-Plane-Event", "issue"),
                ("X-Plane-Delivery", delivery),
                ("X-Plane-Signature", &sign(PLANE_SECRET, &body)),
            ],
            &body,
        )
        .unwrap();
    assert_eq!(code, 202, "{text}");
    assert_eq!(stored(&h.sbx), 1);
    h.assert_no_leak();
}
