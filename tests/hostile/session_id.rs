//! Route: a crafted session id. The session id of an agent's result JSON
//! goes into the next run's argv (`--resume {previous_session}` with
//! `resume = true`); orch took it as printed, so an id such as
//! `--dangerously-skip-permissions` became a flag of its own. Closed by
//! `agent::is_session_id`: only a UUID is stored (anything else is dropped
//! with a warning naming the job) and only a UUID is rendered (a database
//! from before may hold anything), and `brief::render_argv` refuses an
//! element that agent text turns into a flag.

use super::Hostile;

/// The crafted ids, one per task (task `i + 1` prints `CRAFTED[i]`).
fn crafted() -> Vec<String> {
    vec![
        "--dangerously-skip-permissions".into(),
        "x --resume y".into(),
        "../../etc/passwd".into(),
        format!("{}-{}", "a".repeat(8), "b".repeat(4000)),
    ]
}

/// The argv of every development run of `task`, in order.
fn dev_argvs(h: &Hostile, task: i64) -> Vec<Vec<String>> {
    let db = h.sbx.db();
    let mut st = db
        .prepare("SELECT argv FROM agent_runs WHERE task_id=?1 AND stage='development' ORDER BY id")
        .unwrap();
    st.query_map([task], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|a| serde_json::from_str(&a.unwrap()).unwrap())
        .collect()
}

/// The arguments the developer's script got after `/bin/sh -c SCRIPT sh`.
fn args_of(argv: &[String]) -> &[String] {
    &argv[4..]
}

#[test]
fn a_crafted_session_id_never_reaches_the_next_runs_argv_and_a_real_one_still_does() {
    let Some(mut h) = Hostile::new() else { return };
    // One rework per task: the reviewer asks for a line once.
    h.sbx.set("FAKE_AGENT_REQUIRE_LINE", "- reviewed");
    let crafted = crafted();
    let valid = crafted.len() as i64 + 1;
    for i in 1..=valid {
        assert_eq!(h.sbx.add_issue(&format!("task {i}")), i);
    }
    let mut cases = String::new();
    for (i, id) in crafted.iter().enumerate() {
        cases += &format!("  {}) id='{id}' ;;\n", i + 1);
    }
    // The developer runs the fake agent, then prints a result of its own
    // with the crafted id last (orch reads the last result line); the last
    // task's developer prints only the fake agent's (a real UUID).
    let fake = h.fake_agent();
    let script = format!(
        r#"case "$ORCH_TASK_ID" in
{cases}  *) exec '{fake}' ;;
esac
'{fake}'
printf '{{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"done","session_id":"%s"}}\n' "$id"
"#,
        fake = fake.display()
    );
    // An argv template reads `{{` as a literal brace.
    let script = script.replace('{', "{{").replace('}', "}}");
    let argv = serde_json::to_string(&[
        "/bin/sh",
        "-c",
        &script,
        "sh",
        "--resume",
        "{previous_session}",
    ])
    .unwrap();
    h.sbx.append_config(&format!(
        "\n[agents.developer]\nargv = {argv}\nresume = true\n"
    ));

    let mut stderr = String::new();
    for _ in 0..40 {
        if (1..=valid).all(|t| dev_argvs(&h, t).len() >= 2) {
            break;
        }
        let out = h.sbx.orch().arg("tick").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        stderr += &String::from_utf8_lossy(&out.stderr);
    }

    for (i, id) in crafted.iter().enumerate() {
        let task = i as i64 + 1;
        let runs = dev_argvs(&h, task);
        assert!(runs.len() >= 2, "task {task}: {runs:?}");
        for argv in &runs {
            // Nothing was resumed (the only id the agent gave was
            // crafted): no element after the script's own.
            assert_eq!(argv[..2], ["/bin/sh", "-c"], "task {task}: {argv:?}");
            assert_eq!(argv[3], "sh", "task {task}: {argv:?}");
            assert!(
                args_of(argv).is_empty(),
                "task {task}'s developer got {:?}",
                args_of(argv)
            );
        }
        let stored: i64 = h
            .sbx
            .db()
            .query_row(
                "SELECT COUNT(*) FROM agent_runs WHERE task_id=?1 AND session_id IS NOT NULL",
                [task],
                |r| r.get(0),
            )
            .unwrap();
        let dev_stored: i64 = h
            .sbx
            .db()
            .query_row(
                "SELECT COUNT(*) FROM agent_runs WHERE task_id=?1 AND stage='development' AND session_id IS NOT NULL",
                [task],
                |r| r.get(0),
            )
            .unwrap();
        assert!(stored > 0, "the other roles' ids are kept");
        assert_eq!(dev_stored, 0, "task {task}: a crafted id was stored");
        let job: i64 = h
            .sbx
            .db()
            .query_row(
                "SELECT job_id FROM agent_runs WHERE task_id=?1 AND stage='development' ORDER BY id LIMIT 1",
                [task],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            stderr.lines().any(|l| l.contains("not a UUID")
                && l.contains(&format!("job={job}"))
                && l.contains(&id[..id.len().min(20)])),
            "no warning names job {job}:\n{stderr}"
        );
    }
    // The real id still travels: the rework resumes the first run's session.
    let first: String = h
        .sbx
        .db()
        .query_row(
            "SELECT session_id FROM agent_runs WHERE task_id=?1 AND stage='development' ORDER BY id LIMIT 1",
            [valid],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        first.len() == 36 && first.matches('-').count() == 4,
        "{first}"
    );
    let runs = dev_argvs(&h, valid);
    assert!(args_of(&runs[0]).is_empty(), "{:?}", runs[0]);
    assert_eq!(args_of(&runs[1]), ["--resume".to_string(), first.clone()]);

    // A database from before the check may hold a crafted id: rendering
    // refuses it too (`agents show` renders what the worker runs).
    let db = h.sbx.db();
    db.execute(
        "UPDATE agent_runs SET session_id='--dangerously-skip-permissions' \
         WHERE task_id=?1 AND stage='development'",
        [valid],
    )
    .unwrap();
    let out = h
        .sbx
        .orch()
        .args([
            "--json",
            "agents",
            "show",
            "developer",
            "--task",
            &valid.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let argv: Vec<String> = serde_json::from_value(shown["argv"].clone()).unwrap();
    assert!(args_of(&argv).is_empty(), "{argv:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a UUID") && err.contains("dangerously"),
        "{err}"
    );
    h.assert_no_leak();
    h.sbx.check_invariants();
}
