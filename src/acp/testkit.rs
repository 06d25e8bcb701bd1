//! The unit tests' harness: scripts/fake-acp-agent run in a scenario
//! through [`super::run`], with its log and worktree kept for asserts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{run, Outcome, Permissions, Request};
use crate::process::{RunOutcome, RunSpec, Runner};

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fake-acp-agent");

pub(super) struct Ran {
    pub(super) out: RunOutcome,
    pub(super) outcome: Outcome,
    pub(super) log: String,
    pub(super) dir: tempfile::TempDir,
}

impl Ran {
    pub(super) fn wt(&self) -> PathBuf {
        self.dir.path().join("wt")
    }
}

pub(super) fn request(dir: &Path) -> Request {
    Request {
        prompt: "Create the file hello.txt in the current directory containing a short greeting, then say what you did.\n".into(),
        worktree: dir.join("wt"),
        resume: None,
        permissions: Permissions::default(),
        auth_method: Some("gemini-api-key".into()),
    }
}

/// Runs scripts/fake-acp-agent in scenario `scenario` through [`run`].
pub(super) fn ran(
    scenario: &str,
    env: &[(&str, &str)],
    edit: impl FnOnce(&mut Request),
    timeout: Duration,
) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("wt")).unwrap();
    let mut req = request(dir.path());
    edit(&mut req);
    let mut vars = vec![("FAKE_ACP_SCENARIO".to_string(), scenario.to_string())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let spec = RunSpec {
        argv: vec![FAKE.into()],
        cwd: dir.path().join("wt"),
        env: vars,
        env_remove_prefix: Some("FAKE_ACP_".into()),
        stdin_path: None,
        log_path: dir.path().join("logs/run.log"),
        timeout,
        kill_grace: Duration::from_millis(500),
    };
    let (out, outcome) = run(
        &Runner::Group,
        &spec,
        req,
        Duration::from_millis(100),
        |_| Ok(()),
        || Ok(()),
    )
    .unwrap();
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    Ran {
        out,
        outcome,
        log,
        dir,
    }
}

pub(super) fn ran_plain(scenario: &str) -> Ran {
    ran(scenario, &[], |_| {}, Duration::from_secs(30))
}

/// The fixture's `session/prompt` result of `scenario`.
pub(super) fn fixture_result(scenario: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/agents/acp/{scenario}.stdout"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["prompt_response"].clone()
}
