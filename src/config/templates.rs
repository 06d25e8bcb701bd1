//! Prompt and argv templates: the built-in prompts ([`default_prompt`]),
//! the placeholders ([`TEMPLATE_VARS`]) and [`render`].

use std::collections::BTreeMap;

/// The opening of every built-in prompt: the work item and the ground rules.
const PROMPT_HEAD: &str = "You are the {role} of project {project}, run headless by orch at stage {stage} (attempt {attempt}) of work item {task_id}: {title}

{body}

Work item link: {tracker_link}

Your working directory is the git worktree {worktree}, on branch {branch}. orch commits and pushes what you change there when you finish: do not commit, push or switch branches yourself. The work item's folder is {work_dir}/ (relative to the worktree). The project's test command is: {test_command}

";

/// The feedback section of every built-in prompt.
const PROMPT_FEEDBACK: &str =
    "Feedback on earlier runs of this work item (act on it first; empty on a first run):
{feedback}

";

/// The closing of the built-in prompts of roles whose gate reads a verdict.
const PROMPT_VERDICT: &str = "Finish by writing your verdict as one JSON object {{\"verdict\": \"...\", \"summary\": \"...\"}} to {verdict_file}. At this stage the verdict is {verdicts}. The summary says why, in words the next agent can act on (what to change, which test fails).
";

/// Each role's job and what its gate checks.
fn role_brief(role: &str) -> &'static str {
    match role {
        "analyst" => "Your job: analyse the request. Write {work_dir}/analysis.md: the problem, what is in and out of scope, acceptance criteria, open questions. Do not change code. Gate: a person approves your analysis (or rejects it with a comment, and you run again).

",
        "architect" => "Your job: design the change. Read {work_dir}/analysis.md and the code. Write {work_dir}/design.md: the approach, the files to change, the tests to add. Do not change code. Gate: orch checks that {work_dir}/ exists at the branch head and that your run changed the branch (a run that changes nothing fails).

",
        "developer" => "Your job: implement the change described in {work_dir}/design.md and {work_dir}/analysis.md, with tests. Gate: your run must change the branch (a run that changes nothing fails), and the test command must pass on the branch head. If files hold conflict markers (<<<<<<<, =======, >>>>>>>), resolve them: orch refuses to commit a file that still holds them.

",
        "reviewer" => "Your job: review the change, the diff `git diff origin/{default_branch}...HEAD`, against {work_dir}/design.md and {work_dir}/analysis.md. Do not change files. Gate: your verdict; REQUEST_CHANGES sends the work back to the developer with your summary.

",
        "tester" => "Your job: test the change, the diff `git diff origin/{default_branch}...HEAD`: run the test command and check the acceptance criteria in {work_dir}/analysis.md. Do not change files. Gate: your verdict; FAIL sends the work back to the developer with your summary.

",
        _ => "Your job: decide whether the change is ready at stage {stage}. At deploy-staging orch merges the branch into {default_branch} after your pass, testing the combined tree first; at deploy, confirm that it is deployed. Do not change files. Gate: your verdict.

",
    }
}

/// The built-in prompt template of `role` (used when its agent entry sets
/// no `prompt`): the work item, the role's job and what its gate checks,
/// where earlier stages' outputs are, the test command, the feedback and,
/// for roles whose gate reads one, the verdict words and file.
pub fn default_prompt(role: &str) -> String {
    let verdict = match role {
        "reviewer" | "tester" | "deployer" => PROMPT_VERDICT,
        _ => "You write no verdict file at this stage.\n",
    };
    format!(
        "{PROMPT_HEAD}{}{PROMPT_FEEDBACK}{verdict}",
        role_brief(role)
    )
}

/// The placeholders agent argv and prompt templates may use. Every path is
/// absolute:
/// `{task_id}`, `{project}`, `{title}`, `{body}`, `{stage}`, `{role}`,
/// `{branch}`, `{worktree}` (the task's worktree, the agent's cwd),
/// `{verdict_file}` (`{verdict_dir}/verdict.json`), `{verdict_dir}` (this
/// run's own folder `<state>/verdicts/job<N>-a<k>/`), `{feedback}` (why
/// the task came back or the last attempt failed; empty on a first run),
/// `{attempt}` (1, 2, …), `{verdicts}` (the verdict words this stage
/// accepts, e.g. `PASS or FAIL`), `{default_branch}`, `{test_command}`
/// (the project's test argv, shell-quoted), `{work_dir}`
/// (`docs/work-items/<task_id>`, relative to the worktree),
/// `{previous_session}` (the role's previous session id on this task, of
/// the shape its agent kind uses, with `resume = true`; else empty, and an argv element that is
/// empty because of it is dropped with the flag before it),
/// `{tracker_link}` (the work item's web link, or `none`),
/// `{budget_left}` (dollars the task may still spend under the budget
/// ceilings, e.g. `1.25`, or `unlimited` without one; also
/// `ORCH_BUDGET_USD_LEFT`; tokens left under the token ceilings are in
/// `ORCH_BUDGET_TOKENS_LEFT`).
pub const TEMPLATE_VARS: [&str; 19] = [
    "task_id",
    "project",
    "title",
    "body",
    "stage",
    "role",
    "branch",
    "worktree",
    "verdict_file",
    "verdict_dir",
    "feedback",
    "attempt",
    "verdicts",
    "default_branch",
    "test_command",
    "work_dir",
    "previous_session",
    "tracker_link",
    "budget_left",
];

/// Every template variable as its own placeholder (`{task_id}` → `<task_id>`):
/// how `orch config show` renders an agent's argv and config validation
/// tries a template.
pub fn example_vars() -> BTreeMap<&'static str, String> {
    TEMPLATE_VARS
        .iter()
        .map(|k| (*k, format!("<{k}>")))
        .collect()
}

/// Renders `template`, replacing each `{name}` with `vars[name]`; `{{` and
/// `}}` are literal braces. No whitespace is trimmed inside braces.
///
/// Errors (a message naming the placeholder or position; never panics): an
/// unknown or empty placeholder, an unclosed `{`, or a lone `}`.
pub fn render(template: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let pos = template.len() - rest.len() + i; // byte offset, for messages
        let brace = &rest[i..];
        if let Some(after) = brace.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = brace.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if brace.starts_with('}') {
            return Err(format!(
                "unmatched '}}' at byte {pos} (write '}}}}' for a literal brace)"
            ));
        } else {
            // `brace` is `{name}...`: the name ends at the next brace, which
            // must be a `}`.
            let inner = &brace[1..];
            let end = inner
                .find(['{', '}'])
                .filter(|&j| inner[j..].starts_with('}'))
                .ok_or_else(|| {
                    format!("unclosed '{{' at byte {pos} (write '{{{{' for a literal brace)")
                })?;
            let name = &inner[..end];
            let value = vars.get(name).ok_or_else(|| {
                if name.is_empty() {
                    format!("empty placeholder {{}} at byte {pos}")
                } else {
                    let known: Vec<_> = vars.keys().copied().collect();
                    format!(
                        "unknown placeholder {{{name}}} at byte {pos} (known: {})",
                        known.join(", ")
                    )
                }
            })?;
            out.push_str(value);
            rest = &inner[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ROLES};

    #[test]
    fn every_built_in_prompt_renders_and_names_its_gate() {
        let vars = example_vars();
        for role in ROLES {
            let p = render(&default_prompt(role), &vars).unwrap();
            assert!(
                p.contains("<feedback>") && p.contains("<test_command>"),
                "{role}"
            );
            let verdict = matches!(role, "reviewer" | "tester" | "deployer");
            assert_eq!(p.contains("<verdict_file>"), verdict, "{role}");
            assert_eq!(p.contains("<verdicts>"), verdict, "{role}");
        }
        assert!(default_prompt("architect").contains("{work_dir}/design.md"));
        assert!(default_prompt("reviewer").contains("git diff origin/{default_branch}...HEAD"));
        // An entry without a prompt gets its role's; `default`'s own prompt
        // applies to the roles without an entry.
        let c = Config::parse(
            "[agents.default]\nargv = [\"x\"]\nprompt = \"do {role}\"\n[agents.tester]\nargv = [\"y\"]\n",
        )
        .unwrap();
        assert_eq!(c.prompt("analyst").unwrap(), "do {role}");
        assert_eq!(c.prompt("tester").unwrap(), default_prompt("tester"));
    }
}
