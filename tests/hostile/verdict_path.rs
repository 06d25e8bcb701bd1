//! Route: a verdict names a file and orch reads it. A reviewer's summary
//! is agent text, and it becomes the reason of the return to development;
//! orch used to take `… log /some/path` out of that reason and paste the
//! tail of the file into the next developer prompt. Closed by feedback
//! that shows only the test log orch recorded itself with the transition
//! (`transitions.log_path`, from the run it started), and only inside its
//! own log folder (`brief::read_log_tail`).

use std::path::{Path, PathBuf};

use super::Hostile;

/// A secret only a file beside the sandbox (outside every folder orch
/// or the agent uses) holds.
const OUTSIDE_SECRET: &str = "canary-outside-file-19be";

/// Every prompt file orch wrote (`<state>/logs/*.prompt`), with its text.
fn prompts(state: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(state.join("logs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "prompt") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((p, text));
        }
    }
    out
}

fn development_runs(h: &Hostile, task: i64) -> i64 {
    h.sbx
        .db()
        .query_row(
            "SELECT COUNT(*) FROM agent_runs WHERE task_id=?1 AND stage='development'",
            [task],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_summary_naming_a_file_never_brings_that_file_into_a_prompt_and_red_ci_still_shows_its_log() {
    let Some(mut h) = Hostile::new() else { return };
    h.sbx.set("ORCH_MAX_DEVELOPER_RETRIES", "2");
    let private = h.outside.join("private.txt");
    std::fs::write(&private, format!("OUTSIDE={OUTSIDE_SECRET}\n")).unwrap();
    // One task per file the reviewer names; the last one's developer
    // writes a line the project's tests reject (red CI).
    let named: Vec<PathBuf> = vec![
        PathBuf::from("/proc/self/environ"),
        h.sbx.db_path(),
        h.secrets_file.clone(),
        h.sbx.dir.join(".env"),
        private.clone(),
    ];
    let red = named.len() as i64 + 1;
    for i in 1..=red {
        assert_eq!(h.sbx.add_issue(&format!("task {i}")), i);
    }
    let mut cases = String::new();
    for (i, p) in named.iter().enumerate() {
        cases += &format!("  {}) p='{}' ;;\n", i + 1, p.display());
    }
    // The reviewer writes its own verdict (the fake agent writes none);
    // An argv template reads `{{` as a literal brace (`{{{{` in format!).
    h.sbx.set("FAKE_AGENT_VERDICT_REVIEWER", "none");
    h.agent_runs_first(
        "reviewer",
        &format!(
            r#"case "$ORCH_TASK_ID" in
{cases}  *) p='' ;;
esac
if [ -n "$p" ]; then
  printf '{{{{"verdict": "REQUEST_CHANGES", "summary": "The tests are flaky, see log %s for details; also log %s"}}}}\n' "$p" "$p" > "$ORCH_VERDICT_FILE"
else
  printf '{{{{"verdict": "APPROVE", "summary": "fine"}}}}\n' > "$ORCH_VERDICT_FILE"
fi"#
        ),
    );
    h.agent_runs_first(
        "developer",
        &format!(
            r#"if [ "$ORCH_TASK_ID" = {red} ]; then export FAKE_AGENT_DEV_LINE='- BROKEN on purpose'; fi"#
        ),
    );
    h.sbx
        .tick_until(40, |_| (1..=red).all(|t| development_runs(&h, t) >= 2));

    // The reasons do name the files: the attack was made.
    for (i, p) in named.iter().enumerate() {
        let task = i as i64 + 1;
        let came_back: String = h
            .sbx
            .db()
            .query_row(
                "SELECT reason FROM transitions WHERE task_id=?1 AND from_stage='review' \
                 AND to_stage='development' ORDER BY version LIMIT 1",
                [task],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            came_back.contains(&format!("log {}", p.display())),
            "{came_back}"
        );
        let prompt = h.sbx.prompt_of(task, "development");
        assert!(
            prompt.contains(&format!("see log {}", p.display())),
            "the summary reaches the developer: {prompt}"
        );
    }
    // No prompt quotes any file but a test log in orch's log folder, and
    // none holds a secret or the outside file's content.
    let logs = h.sbx.state_dir().join("logs");
    for (path, text) in prompts(&h.sbx.state_dir()) {
        for p in &named {
            assert!(
                !text.contains(&format!("The end of {}", p.display())),
                "{} quotes {}:\n{text}",
                path.display(),
                p.display()
            );
        }
        for (i, _) in text.match_indices("The end of ") {
            let quoted = &text[i + "The end of ".len()..];
            assert!(
                quoted.starts_with(&logs.display().to_string()),
                "{} quotes a file outside the log folder:\n{text}",
                path.display()
            );
        }
        for s in Hostile::secret_values().into_iter().chain([OUTSIDE_SECRET]) {
            assert!(!text.contains(s), "{} holds {s}", path.display());
        }
    }
    // Red CI still hands the real test log's tail to the next developer.
    let prompt = h.sbx.prompt_of(red, "development");
    let ci_log = logs.join(format!("ci-task{red}-"));
    assert!(
        prompt.contains("CI failed on ")
            && prompt.contains(&format!("The end of {}", ci_log.display()))
            && prompt.contains("FAIL: CHANGES.md has a BROKEN line"),
        "{prompt}"
    );
    h.assert_no_leak();
    h.sbx.check_invariants();
}
