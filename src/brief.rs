//! What one agent run is told (DESIGN §4 "Agents"): its argv, the prompt
//! fed on stdin and its environment, rendered from the role's templates
//! ([`crate::config::Config::prompt`]) with the work item, the verdict
//! words the stage accepts, absolute paths, and the feedback of earlier
//! rounds — why the task came back to this stage, why the last attempt
//! failed. The worker runs what [`render`] returns; `orch agents show`
//! prints the same thing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::warn;

use crate::config::TEMPLATE_VARS;
use crate::ctx::Ctx;
use crate::db::{Db, Job, Task};
use crate::error::Error;
use crate::pipeline::gate;
use crate::pipeline::{Stage, TransitionCause};

/// Longest feedback handed to an agent, in bytes (each part is bounded
/// too); the rest is cut with `…`.
const FEEDBACK_MAX_BYTES: usize = 8000;

/// A rendered run of one role on one task.
#[derive(Debug, Clone, Serialize)]
pub struct Brief {
    /// The agent's argv, placeholders rendered; an element that rendered
    /// empty because `{previous_session}` was empty is dropped with the
    /// flag before it.
    pub argv: Vec<String>,
    /// The prompt, fed on stdin.
    pub prompt: String,
    /// Environment set for the agent (`ORCH_*` first, then the agent's
    /// `env`); other `ORCH_*` variables are removed.
    pub env: Vec<(String, String)>,
    /// This run's own verdict folder (absolute), `{verdict_dir}`.
    pub verdict_dir: PathBuf,
    /// `{verdict_dir}/verdict.json`, `ORCH_VERDICT_FILE`.
    pub verdict_file: PathBuf,
    /// The agent's wall-clock limit in seconds.
    pub timeout_s: u64,
    /// The feedback part of the prompt (`""` on a first run).
    pub feedback: String,
    /// The role's previous session id on this task (a UUID), with
    /// `resume = true`: `{previous_session}`, and the session an ACP agent
    /// loads.
    pub previous_session: Option<String>,
}

/// Which run to render: a real job (its id and attempt), or a preview of
/// `stage` for `orch agents show` (`job` None: job id 0, attempt 1).
#[derive(Debug, Clone, Copy)]
pub struct RunOf<'a> {
    pub task: &'a Task,
    pub stage: Stage,
    pub role: &'a str,
    pub job: Option<&'a Job>,
}

/// Renders the run. `notes` are extra feedback orch found while preparing
/// the worktree (e.g. the files a catch-up merge left conflicted).
///
/// Errors: [`Error::Config`] for an unknown project, a role without an
/// agent, or a template that does not render; database errors.
pub fn render(ctx: &Ctx, db: &Db, run: RunOf<'_>, notes: &[String]) -> anyhow::Result<Brief> {
    let RunOf {
        task,
        stage,
        role,
        job,
    } = run;
    let project = ctx.project(&task.project)?;
    let agent = ctx.config.agent(role)?;
    let (job_id, attempt) = job.map_or((0, 1), |j| (j.id, j.attempt));
    let verdict_dir = ctx.settings.job_verdict_dir(job_id, attempt);
    let verdict_file = verdict_dir.join("verdict.json");
    let worktree = absolute(Path::new(&task.worktree))?;
    let mut feedback = feedback(ctx, db, task, stage, job)?;
    for n in notes {
        push_part(&mut feedback, n);
    }
    let feedback = crate::agent::bounded(&feedback, FEEDBACK_MAX_BYTES);
    let previous_session = if agent.resume {
        // Stored ids were checked when stored; a database from before that
        // check may still hold anything the agent printed.
        match session_to_resume(db, task, role, job)? {
            Some(id) if crate::agent::is_session_id_of(agent.kind, &id) => id,
            Some(id) => {
                warn!(target: "brief", task = task.id, role, job = job_id, kind = %agent.kind, session_id = ?crate::agent::bounded(&id, 80), "the stored session id is not {}: not resumed", crate::agent::session_id_shape(agent.kind));
                String::new()
            }
            None => String::new(),
        }
    } else {
        String::new()
    };
    let limits = crate::pipeline::spend::Limits::new(&ctx.settings, &ctx.config);
    let now = crate::clock::now_ms();
    let budget_left = crate::pipeline::spend::budget_left(db, &limits.budget, task, now)?;
    let tokens_left = crate::pipeline::spend::budget_left(db, &limits.token_budget, task, now)?;
    let vars: BTreeMap<&str, String> = [
        (
            "budget_left",
            budget_left.map_or_else(|| "unlimited".into(), |l| format!("{l:.2}")),
        ),
        ("task_id", task.id.to_string()),
        ("project", task.project.clone()),
        ("title", task.title.clone()),
        ("body", task.body.clone()),
        ("stage", stage.to_string()),
        ("role", role.to_string()),
        ("branch", task.branch.clone()),
        ("worktree", worktree.to_string_lossy().into_owned()),
        ("verdict_file", verdict_file.to_string_lossy().into_owned()),
        ("verdict_dir", verdict_dir.to_string_lossy().into_owned()),
        ("feedback", feedback.clone()),
        ("attempt", attempt.to_string()),
        ("verdicts", verdicts(stage)),
        ("default_branch", project.default_branch.clone()),
        ("test_command", shell_join(&project.test_command)),
        ("work_dir", gate::design_dir(task.id)),
        ("previous_session", previous_session.clone()),
        (
            "tracker_link",
            crate::tracker::Tracker::for_project(ctx, project)
                .work_item_link(project, &task.tracker_issue_id)
                .unwrap_or_else(|| "none".into()),
        ),
    ]
    .into_iter()
    .collect();
    debug_assert!(TEMPLATE_VARS.iter().all(|k| vars.contains_key(k)));
    let argv = render_argv(&agent.argv, &vars)
        .map_err(|(i, m)| Error::config(format!("agents.{role}.argv[{i}]"), m))?;
    let prompt = crate::agent::render(&ctx.config.prompt(role)?, &vars)
        .map_err(|m| Error::config(format!("agents.{role}.prompt"), m))?;
    let mut env: Vec<(String, String)> = vec![
        ("ORCH_TASK_ID".into(), task.id.to_string()),
        ("ORCH_STAGE".into(), stage.to_string()),
        ("ORCH_ROLE".into(), role.to_string()),
        ("ORCH_JOB_ID".into(), job_id.to_string()),
        ("ORCH_ATTEMPT".into(), attempt.to_string()),
        (
            "ORCH_VERDICT_FILE".into(),
            verdict_file.to_string_lossy().into_owned(),
        ),
    ];
    if let Some(l) = budget_left {
        env.push(("ORCH_BUDGET_USD_LEFT".into(), format!("{l:.2}")));
    }
    if let Some(l) = tokens_left {
        env.push(("ORCH_BUDGET_TOKENS_LEFT".into(), format!("{l:.0}")));
    }
    env.extend(agent.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(Brief {
        argv,
        prompt,
        env,
        verdict_dir,
        verdict_file,
        timeout_s: agent.timeout_s.unwrap_or(ctx.settings.agent_timeout_s),
        feedback,
        previous_session: (!previous_session.is_empty()).then_some(previous_session),
    })
}

/// `path` made absolute against orch's current directory.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| anyhow::anyhow!("cannot make {} absolute: {e}", path.display()))
}
/// The session a run of `role` on `task` resumes (with `resume = true`):
/// the one recorded on `job` while its last run went — a run killed with
/// its worker and requeued resumes where it was —, else the role's latest
/// session on the task; never one the CLI said it no longer has.
fn session_to_resume(
    db: &Db,
    task: &Task,
    role: &str,
    job: Option<&Job>,
) -> anyhow::Result<Option<String>> {
    if let Some(id) = job.map(|j| db.job_session(j.id)).transpose()?.flatten() {
        return Ok(Some(id));
    }
    db.last_session(task.id, role)
}

/// The placeholders whose values carry text an agent wrote: a reviewer's
/// summary in `{feedback}`, the session id of its result in
/// `{previous_session}`.
const AGENT_TEXT_VARS: [&str; 2] = ["feedback", "previous_session"];

/// Renders each argv element; an element that uses `{previous_session}`
/// and renders empty is dropped together with the element before it (its
/// flag, e.g. `--resume`). An element whose template does not start with
/// `-` but which renders to one that does, through a placeholder that
/// carries agent text ([`AGENT_TEXT_VARS`]), is refused: no value from an
/// agent's output becomes a flag of its own. Errors: `(index, message)`.
fn render_argv(
    argv: &[String],
    vars: &BTreeMap<&str, String>,
) -> Result<Vec<String>, (usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::with_capacity(argv.len());
    for (i, a) in argv.iter().enumerate() {
        let r = crate::agent::render(a, vars).map_err(|m| (i, m))?;
        let from_agent = AGENT_TEXT_VARS
            .iter()
            .find(|v| a.contains(&format!("{{{v}}}")));
        if let Some(v) = from_agent.filter(|_| r.starts_with('-') && !a.starts_with('-')) {
            return Err((
                i,
                format!(
                    "renders to {:?}, a flag made of agent text ({{{v}}}): refused",
                    crate::agent::bounded(&r, 60)
                ),
            ));
        }
        if r.is_empty() && a.contains("{previous_session}") {
            if out.last().is_some_and(|(j, _)| j + 1 == i) {
                out.pop();
            }
            continue;
        }
        out.push((i, r));
    }
    Ok(out.into_iter().map(|(_, a)| a).collect())
}

/// The verdict words `stage` accepts, for `{verdicts}`: `PASS or FAIL`;
/// `none` for stages whose gate reads no verdict.
pub fn verdicts(stage: Stage) -> String {
    match gate::verdict_words(stage) {
        Some((pass, back)) => format!("{pass} or {back}"),
        None => "none (this stage reads no verdict)".into(),
    }
}

/// argv joined for a person or a shell: elements with spaces or quotes in
/// single quotes.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn push_part(out: &mut String, part: &str) {
    if part.trim().is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(part.trim());
}

/// The feedback for a run of `task` at `stage`: why the task is at this
/// stage again (the reason of the transition into its current version,
/// when that was a rerun or a return to development — a review's or
/// test's summary, a merge-gate conflict with its files, red tests with the
/// tail of their log, a rejection comment), and, from the second attempt
/// on, why the previous attempt failed. `""` on a first run.
///
/// The test log whose tail is shown is the one orch recorded with the
/// transition (`transitions.log_path`, [`crate::pipeline::Move::log_path`])
/// and only when it lies in orch's own log folder ([`read_log_tail`]):
/// a reason or summary carries agent text, and orch never opens a path
/// named there (DESIGN §11 INV-8).
///
/// Errors: database errors.
pub fn feedback(
    ctx: &Ctx,
    db: &Db,
    task: &Task,
    stage: Stage,
    job: Option<&Job>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let came_back = db
        .transitions(task.id)?
        .into_iter()
        .rev()
        .find(|t| t.version == task.version)
        .filter(|t| {
            t.to_stage == stage
                && t.from_stage.is_some_and(|from| from >= stage)
                && !t.reason.trim().is_empty()
        });
    if let Some(t) = came_back {
        let from = t.from_stage.unwrap_or(stage);
        // A rejection in the tracker: what the person wrote there, from
        // the comment deliveries since the rejected run began.
        if t.cause == TransitionCause::TrackerRejected {
            let since = db
                .transitions(task.id)?
                .into_iter()
                .rev()
                .find(|p| p.version < t.version)
                .map_or(0, |p| p.at_ms);
            let mut latest = None;
            for source in crate::webhook::SOURCES {
                if let Some(q) = source.comments() {
                    latest = latest.or(db.latest_tracker_comment(
                        source.as_str(),
                        &q,
                        &task.tracker_issue_id,
                        since,
                    )?);
                }
            }
            if let Some(html) = latest {
                let comment = html_to_text(&html);
                if !comment.is_empty() {
                    push_part(
                        &mut out,
                        &format!("The comment in the tracker with the rejection: {comment}"),
                    );
                }
            }
        }
        let head = if from == stage {
            format!("This {stage} runs again ({} decided): ", t.actor)
        } else {
            format!("The work came back from {from} to {stage}: ")
        };
        push_part(&mut out, &format!("{head}{}", t.reason.trim()));
        if let Some(log) = t.log_path.as_deref() {
            match read_log_tail(&ctx.settings.logs_dir(), Path::new(log)) {
                Ok(tail) => push_part(&mut out, &tail),
                Err(why) => {
                    warn!(target: "brief", task = task.id, log, why = %why, "test log left out of the feedback");
                }
            }
        }
    }
    if let Some(j) = job.filter(|j| j.attempt > 1) {
        if let Some(e) = j.last_error.as_deref().filter(|e| !e.trim().is_empty()) {
            push_part(
                &mut out,
                &format!("Attempt {} of this run failed: {}", j.attempt - 1, e.trim()),
            );
        }
    }
    Ok(out)
}

/// How much of the end of a test log [`read_log_tail`] reads, in bytes.
const LOG_READ_MAX_BYTES: u64 = 64 * 1024;

/// `The end of <log>:` and the bounded tail (30 lines, 3000 bytes) of the
/// test log `log`, which must be a regular file inside `logs_dir` once
/// every symlink is resolved; the last component is opened without
/// following a symlink. Reads at most the last `LOG_READ_MAX_BYTES` (64 KiB).
///
/// Errors (the caller leaves the tail out): a path outside `logs_dir`, a
/// missing or unreadable file, a non-regular file, an empty tail.
pub fn read_log_tail(logs_dir: &Path, log: &Path) -> Result<String, String> {
    use crate::untrusted;
    let real = untrusted::beneath(logs_dir, log)?;
    let bytes = untrusted::open_regular(&real)
        .and_then(|f| untrusted::read_bounded(f, LOG_READ_MAX_BYTES, true))
        .map_err(|e| format!("{}: {e}", real.display()))?;
    let tail = crate::agent::tail(&String::from_utf8_lossy(&bytes), 30, 3000);
    if tail.trim().is_empty() {
        return Err(format!("{} is empty", real.display()));
    }
    Ok(format!("The end of {}:\n{tail}", log.display()))
}

/// A comment's HTML (Plane's `comment_html`) as plain text: tags dropped,
/// paragraphs and line breaks kept as newlines, the common entities
/// decoded.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('>') else {
            rest = &rest[i..];
            break;
        };
        let tag = rest[i + 1..i + j]
            .trim_start_matches('/')
            .to_ascii_lowercase();
        if tag.starts_with("br") || tag.starts_with("p") || tag.starts_with("li") {
            out.push('\n');
        }
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    let text = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(session: &str) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("previous_session", session.to_string()),
            ("x", "X".to_string()),
        ])
    }

    #[test]
    fn an_empty_previous_session_drops_its_flag() {
        let argv: Vec<String> = ["claude", "-p", "--resume", "{previous_session}", "{x}"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            render_argv(&argv, &vars("")).unwrap(),
            vec!["claude", "-p", "X"]
        );
        assert_eq!(
            render_argv(&argv, &vars("s-1")).unwrap(),
            vec!["claude", "-p", "--resume", "s-1", "X"]
        );
        let err = render_argv(&["{nope}".to_string()], &vars("")).unwrap_err();
        assert_eq!(err.0, 0);
    }

    #[test]
    fn a_test_log_is_read_only_inside_the_log_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("state/logs");
        std::fs::create_dir_all(&logs).unwrap();
        let outside = tmp.path().join("secret.env");
        std::fs::write(&outside, "TOKEN=s3cret\n").unwrap();
        let log = logs.join("ci-task1-abc.log");
        let mut text = "x".repeat(200_000);
        text.push_str("\nFAIL: CHANGES.md has a BROKEN line\n");
        std::fs::write(&log, &text).unwrap();
        let tail = read_log_tail(&logs, &log).unwrap();
        assert!(tail.starts_with("The end of "), "{tail}");
        assert!(
            tail.ends_with("FAIL: CHANGES.md has a BROKEN line"),
            "{tail}"
        );
        assert!(tail.len() < 3200, "{}", tail.len());

        std::os::unix::fs::symlink(&outside, logs.join("link.log")).unwrap();
        let refused = [
            outside.clone(),
            logs.join("../../secret.env"),
            logs.join("link.log"),
            logs.clone(),
            logs.join("missing.log"),
            std::path::PathBuf::from("/proc/self/environ"),
            std::path::PathBuf::from("/etc/passwd"),
        ];
        for p in refused {
            let r = read_log_tail(&logs, &p);
            assert!(r.is_err(), "{} was read: {r:?}", p.display());
        }
        std::fs::create_dir(logs.join("dir.log")).unwrap();
        assert!(read_log_tail(&logs, &logs.join("dir.log")).is_err());
        std::fs::write(logs.join("empty.log"), "\n\n").unwrap();
        assert!(read_log_tail(&logs, &logs.join("empty.log")).is_err());
    }

    #[test]
    fn agent_text_never_renders_to_a_flag_of_its_own() {
        let argv: Vec<String> = ["claude", "--resume", "{previous_session}"]
            .map(String::from)
            .to_vec();
        let err = render_argv(&argv, &vars("--dangerously-skip-permissions")).unwrap_err();
        assert_eq!(err.0, 2, "{err:?}");
        assert!(err.1.contains("{previous_session}"), "{err:?}");
        // Inside an element that is a flag already, a value stays a value.
        let argv = vec!["--resume={previous_session}".to_string()];
        assert_eq!(
            render_argv(&argv, &vars("-x")).unwrap(),
            vec!["--resume=-x"]
        );
        // Text that is not an agent's may start with a dash (`{x}`).
        let mut v = vars("");
        v.insert("x", "-X".into());
        assert_eq!(render_argv(&["{x}".to_string()], &v).unwrap(), vec!["-X"]);
        v.insert("feedback", "-rf".into());
        assert!(render_argv(&["{feedback}".to_string()], &v).is_err());
    }

    #[test]
    fn verdict_words_per_stage_and_shell_join() {
        assert_eq!(verdicts(Stage::DeployStaging), "PASS or FAIL");
        assert_eq!(verdicts(Stage::Deploy), "DEPLOYED or FAILED");
        assert_eq!(verdicts(Stage::Review), "APPROVE or REQUEST_CHANGES");
        assert!(verdicts(Stage::Development).starts_with("none"));
        assert_eq!(
            shell_join(&["sh".into(), "test.sh".into(), "a b".into(), "it's".into()]),
            r"sh test.sh 'a b' 'it'\''s'"
        );
    }
}
