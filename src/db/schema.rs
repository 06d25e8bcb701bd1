//! The append-only list of schema migrations. Entry `i` brings the
//! database from `PRAGMA user_version = i` to `i + 1`. Never edit or
//! reorder an entry; add a new one.
//!
//! Times are unix milliseconds in `*_ms` columns.

/// Migrations in order; `MIGRATIONS.len()` is the schema version this
/// binary writes.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
CREATE TABLE projects (
    name               TEXT PRIMARY KEY,
    tracker            TEXT NOT NULL,
    tracker_project_id TEXT NOT NULL DEFAULT '',
    forge              TEXT NOT NULL,
    repo               TEXT NOT NULL DEFAULT '',
    default_branch     TEXT NOT NULL,
    clone_url          TEXT NOT NULL,
    synced_at_ms       INTEGER NOT NULL
);

CREATE TABLE local_issues (
    id            INTEGER PRIMARY KEY,
    project       TEXT NOT NULL REFERENCES projects(name),
    title         TEXT NOT NULL,
    body          TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE tasks (
    id                INTEGER PRIMARY KEY,
    project           TEXT NOT NULL REFERENCES projects(name),
    tracker_issue_id  TEXT NOT NULL,
    sequence          INTEGER NOT NULL,
    title             TEXT NOT NULL,
    body              TEXT NOT NULL DEFAULT '',
    stage             TEXT NOT NULL,
    version           INTEGER NOT NULL,
    branch            TEXT NOT NULL,
    worktree          TEXT NOT NULL,
    developer_retries INTEGER NOT NULL DEFAULT 0,
    escalated         INTEGER NOT NULL DEFAULT 0,
    escalated_reason  TEXT,
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    UNIQUE (project, tracker_issue_id),
    UNIQUE (branch)
);
CREATE INDEX tasks_stage ON tasks(stage, escalated);

CREATE TABLE transitions (
    id         INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL REFERENCES tasks(id),
    from_stage TEXT,
    to_stage   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    actor      TEXT NOT NULL CHECK (actor IN ('worker','reaper','reconciler','webhook','human')),
    job_id     INTEGER REFERENCES jobs(id),
    reason     TEXT NOT NULL DEFAULT '',
    at_ms      INTEGER NOT NULL,
    UNIQUE (task_id, version)
);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    task_id             INTEGER NOT NULL REFERENCES tasks(id),
    stage               TEXT NOT NULL,
    role                TEXT NOT NULL,
    task_version        INTEGER NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('queued','running','done','failed','cancelled')),
    attempt             INTEGER NOT NULL DEFAULT 1,
    available_at_ms     INTEGER NOT NULL,
    worker_host         TEXT,
    worker_pid          INTEGER,
    worker_start_time   INTEGER,
    agent_pid           INTEGER,
    agent_start_time    INTEGER,
    claimed_at_ms       INTEGER,
    heartbeat_at_ms     INTEGER,
    timeout_s           INTEGER,
    exit_code           INTEGER,
    exit_recorded_at_ms INTEGER,
    last_error          TEXT,
    created_at_ms       INTEGER NOT NULL,
    finished_at_ms      INTEGER,
    UNIQUE (task_id, stage, task_version)
);
CREATE INDEX jobs_status ON jobs(status, available_at_ms);

CREATE TABLE agent_runs (
    id                          INTEGER PRIMARY KEY,
    job_id                      INTEGER NOT NULL REFERENCES jobs(id),
    task_id                     INTEGER NOT NULL REFERENCES tasks(id),
    stage                       TEXT NOT NULL,
    role                        TEXT NOT NULL,
    attempt                     INTEGER NOT NULL,
    pid                         INTEGER,
    argv                        TEXT NOT NULL,
    exit_code                   INTEGER,
    duration_ms                 INTEGER,
    success                     INTEGER,
    usage_known                 INTEGER NOT NULL DEFAULT 0,
    input_tokens                INTEGER NOT NULL DEFAULT 0,
    output_tokens               INTEGER NOT NULL DEFAULT 0,
    cache_read_input_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd                    REAL NOT NULL DEFAULT 0,
    session_id                  TEXT,
    permission_denials          TEXT,
    log_path                    TEXT NOT NULL,
    started_at_ms               INTEGER NOT NULL,
    UNIQUE (job_id, attempt)
);

CREATE TABLE verdicts (
    id       INTEGER PRIMARY KEY,
    task_id  INTEGER NOT NULL REFERENCES tasks(id),
    stage    TEXT NOT NULL,
    job_id   INTEGER REFERENCES jobs(id),
    source   TEXT NOT NULL,
    verdict  TEXT NOT NULL,
    summary  TEXT NOT NULL DEFAULT '',
    at_ms    INTEGER NOT NULL
);
CREATE INDEX verdicts_task ON verdicts(task_id, stage, id);

CREATE TABLE inbox (
    id              INTEGER PRIMARY KEY,
    source          TEXT NOT NULL CHECK (source IN ('plane','gitea')),
    event           TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    body_sha256     TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body            BLOB NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    processed_at_ms INTEGER,
    outcome         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    dead            INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, delivery_id)
);
CREATE INDEX inbox_pending ON inbox(processed_at_ms, dead, id);
CREATE INDEX inbox_hash ON inbox(source, body_sha256);

CREATE TABLE ci_statuses (
    id         INTEGER PRIMARY KEY,
    project    TEXT NOT NULL,
    sha        TEXT NOT NULL,
    context    TEXT NOT NULL,
    state      TEXT NOT NULL,
    target_url TEXT NOT NULL DEFAULT '',
    at_ms      INTEGER NOT NULL,
    UNIQUE (project, sha, context)
);

CREATE TABLE branch_heads (
    project TEXT NOT NULL,
    branch  TEXT NOT NULL,
    sha     TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    PRIMARY KEY (project, branch)
);

CREATE TABLE leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    job_id        INTEGER,
    acquired_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY,
    dedupe_key         TEXT NOT NULL UNIQUE,
    task_id            INTEGER REFERENCES tasks(id),
    channel            TEXT NOT NULL CHECK (channel IN ('tracker','forge','notify')),
    kind               TEXT NOT NULL,
    payload            TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','delivered','dead')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    remote_id          TEXT,
    created_at_ms      INTEGER NOT NULL,
    delivered_at_ms    INTEGER
);
CREATE INDEX outbox_due ON outbox(status, next_attempt_at_ms);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
    // 2: outside adapters (Plane, Gitea, Telegram). `outbox.sends` counts
    // send attempts that may have reached the remote side (bumped before
    // each send), so a retry knows to look before re-posting;
    // `tracker_states` caches Plane state ids per project (resolved by
    // name); `pull_requests` remembers the forge PR of each task.
    r#"
ALTER TABLE outbox ADD COLUMN sends INTEGER NOT NULL DEFAULT 0;

CREATE TABLE tracker_states (
    project       TEXT NOT NULL,
    state_id      TEXT NOT NULL,
    name          TEXT NOT NULL,
    state_group   TEXT NOT NULL DEFAULT '',
    fetched_at_ms INTEGER NOT NULL,
    PRIMARY KEY (project, state_id)
);

CREATE TABLE pull_requests (
    task_id     INTEGER PRIMARY KEY REFERENCES tasks(id),
    number      INTEGER NOT NULL,
    html_url    TEXT NOT NULL DEFAULT '',
    head_branch TEXT NOT NULL,
    merged      INTEGER NOT NULL DEFAULT 0,
    at_ms       INTEGER NOT NULL
);
"#,
    // 3: the merge gate (DESIGN §7). A deploy-staging job whose merge was
    // deferred (the repo's merge lease was busy) goes back to `queued` with
    // `merge_pending = 1`: its agent's exit and verdict stand, and the next
    // claim runs only the merge. `merge_defers` counts the defers toward
    // `ORCH_MERGE_GATE_MAX_DEFERS`.
    r#"
ALTER TABLE jobs ADD COLUMN merge_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN merge_defers INTEGER NOT NULL DEFAULT 0;
"#,
    // 4: the reconciler's pass reports (the last 100), for `orch status`
    // and `GET /queue`; `report` is the pass's JSON.
    r#"
CREATE TABLE reconcile_passes (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    report TEXT NOT NULL
);
"#,
    // 5: every gate evaluation reads a job's verdict; without this index
    // that was a scan of all verdicts (the reconcile benchmark's main cost).
    r#"
CREATE INDEX verdicts_job ON verdicts(job_id, id);
"#,
    // 6: bounded recovery (issue 12). `finalize_failures` counts failed
    // finalizes of the job's current attempt (Tier-2 and the worker's own);
    // at `ORCH_FINALIZE_MAX_ATTEMPTS` the job fails and its task is
    // escalated instead of being retried on every reap for ever.
    r#"
ALTER TABLE jobs ADD COLUMN finalize_failures INTEGER NOT NULL DEFAULT 0;
"#,
    // 7: the database's instance id (issue 12), made once when the
    // database is created (`orch init`): every dedupe key orch sends to a
    // remote service (Plane `external_id`, the Gitea comment marker) carries
    // it, so two orch instances posting to one Plane project (staging beside
    // production, or a re-initialised database whose task ids restart at 1)
    // never take each other's comments for their own.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('instance_id', lower(hex(randomblob(8))));
"#,
    // 8: honest run outcomes (issue 10). `error` is orch's judgement of a failed run
    // (timeout, model-API error, crash) and `retryable` whether another
    // attempt can help; `base_sha` is the branch head the run started on,
    // so a run that changed nothing is seen as such.
    r#"
ALTER TABLE agent_runs ADD COLUMN error TEXT;
ALTER TABLE agent_runs ADD COLUMN retryable INTEGER NOT NULL DEFAULT 1;
ALTER TABLE agent_runs ADD COLUMN base_sha TEXT;
-- The merge lease a deferred merge waits for: its release makes the job
-- runnable at once (the growing delay stays as the fallback).
ALTER TABLE jobs ADD COLUMN deferred_on TEXT;
"#,
    // 9: `orch why` (issue 16). The inbox row (delivery) whose ingest
    // made a transition, so a webhook move names the delivery that caused
    // it; NULL for every other actor and for rows older than this column.
    r#"
ALTER TABLE transitions ADD COLUMN inbox_id INTEGER REFERENCES inbox(id);
"#,
    // 10: fair claims across projects (issue 16). `claim_seq` orders the
    // projects by their last claim (0: never): the claim tries the project
    // claimed longest ago first, so a busy project cannot starve the others.
    r#"
ALTER TABLE projects ADD COLUMN claim_seq INTEGER NOT NULL DEFAULT 0;
"#,
    // 11: usage and rate limits (issue 16). A run stopped by the account's
    // limit records it (`limit_kind` usage|rate, `limit_reset_ms` when the
    // CLI said); its job is requeued under a new attempt number that does
    // not count toward `ORCH_JOB_MAX_ATTEMPTS` (`free_attempts`); `pauses`
    // holds one row per paused account (the role's agent, or its
    // `account`): no job of it is claimed before `until_ms`. `strikes`
    // counts the pauses since the account's last clean run (the backoff's
    // exponent); a clean run deletes the row.
    r#"
ALTER TABLE agent_runs ADD COLUMN limit_kind TEXT;
ALTER TABLE agent_runs ADD COLUMN limit_reset_ms INTEGER;
ALTER TABLE jobs ADD COLUMN free_attempts INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pauses (
    account  TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    reason   TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    strikes  INTEGER NOT NULL DEFAULT 1
);
"#,
    // 12: budgets (issue 16). A task whose next job would pass a budget
    // ceiling is *parked* (`parked_at_ms`, `parked_reason`): not claimed,
    // not failed, no attempt; the claim checks again each time, so it
    // resumes when the day rolls over or the ceiling is raised.
    // `budget_waived`: `orch task unpark` lets its next job run once
    // regardless. The indexes serve the spend sums and the role medians.
    r#"
ALTER TABLE tasks ADD COLUMN parked_at_ms INTEGER;
ALTER TABLE tasks ADD COLUMN parked_reason TEXT;
ALTER TABLE tasks ADD COLUMN budget_waived INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tasks_parked ON tasks(parked_at_ms) WHERE parked_at_ms IS NOT NULL;
CREATE INDEX agent_runs_started ON agent_runs(started_at_ms);
CREATE INDEX agent_runs_task ON agent_runs(task_id);
CREATE INDEX agent_runs_role ON agent_runs(role, id);
"#,
    // 13: fewer pages per move (issue 11's claim + complete goal). No query
    // searches `tasks_stage`: the only ones that read it are whole-table
    // counts for `orch status` and `/metrics` (a covering scan instead of
    // a table scan), while every stage change rewrote its entry — about one
    // WAL page per move, measured by `bench_queue --profile`.
    r#"
DROP INDEX tasks_stage;
"#,
    // 14: the reaper removes the worktrees of tasks done for a while
    // (`ORCH_WORKTREE_KEEP_S`); it finds them on disk and looks each up by
    // its path. A worktree's path never changes after the task is made, so
    // the index costs nothing on the hot path.
    r#"
CREATE INDEX tasks_worktree ON tasks(worktree);
"#,
    // 15: clock jumps (issue 20). The worker's readings of its boot's
    // monotonic clock (`clock::boot_ms`; the boot is `worker_host`) beside
    // the wall times of the claim, the heartbeat and the agent's exit, so
    // the reaper measures a run, a heartbeat's age and the finalize grace
    // on a clock a jump of the wall clock does not move.
    // `scheduled_at_ms`: when `available_at_ms` was last set; a queued job
    // scheduled more than `clock::STEP_SLACK_MS` after now was queued
    // before the clock went back and may be claimed. `jobs_scheduled`
    // holds only queued jobs and finds those few without a scan.
    r#"
ALTER TABLE jobs ADD COLUMN claimed_boot_ms INTEGER;
ALTER TABLE jobs ADD COLUMN heartbeat_boot_ms INTEGER;
ALTER TABLE jobs ADD COLUMN exit_boot_ms INTEGER;
ALTER TABLE jobs ADD COLUMN scheduled_at_ms INTEGER;
UPDATE jobs SET scheduled_at_ms=created_at_ms WHERE status='queued';
CREATE INDEX jobs_scheduled ON jobs(scheduled_at_ms) WHERE status='queued';
"#,
    // 16: feedback never opens a path taken from agent text (issue 20).
    // `ci_statuses.log_path`: the log of a test run orch itself ran (local
    // CI, the merge gate's re-test; NULL for statuses a forge reported).
    // `transitions.log_path`: the log of the test run that sent the task
    // back to development (red CI, a red re-test), written by orch from the
    // former; the next developer's feedback shows its tail.
    r#"
ALTER TABLE ci_statuses ADD COLUMN log_path TEXT;
ALTER TABLE transitions ADD COLUMN log_path TEXT;
"#,
    // 17: `orch outbox retry` (issue 21). A dead letter sent again by hand
    // keeps its audit on its row: how many times (`retries`), the last
    // time (`retried_at_ms`) and by whom (`retried_by`, the operator's
    // login). `attempts` starts again from 0 for the new round of sends.
    r#"
ALTER TABLE outbox ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN retried_at_ms INTEGER;
ALTER TABLE outbox ADD COLUMN retried_by TEXT;
"#,
    // 18: agent kinds (issue 26). `kind`: the CLI that ran (`claude-code`,
    // `codex`, …). `cost_known`: whether `cost_usd` is a cost (reported by
    // the CLI or priced from `[prices]`) rather than 0 for unknown; runs
    // from before had a cost exactly when their usage was known (Claude
    // Code reports both). `cumulative_usage`: the CLI's own session total
    // as JSON `{input_tokens, output_tokens, cache_read_input_tokens,
    // cache_creation_input_tokens}` where it reports one instead of the
    // run's (Codex after `exec resume`); the session's next run is diffed
    // against it, found by `agent_runs_cumulative`.
    r#"
ALTER TABLE agent_runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'claude-code';
ALTER TABLE agent_runs ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 0;
UPDATE agent_runs SET cost_known=usage_known;
ALTER TABLE agent_runs ADD COLUMN cumulative_usage TEXT;
CREATE INDEX agent_runs_cumulative ON agent_runs(session_id, id) WHERE cumulative_usage IS NOT NULL;
"#,
    // 19: an idle reconcile reads only the unfinished tasks (issue 21).
    // `unfinished` is 1 while the task is not done and NULL once it is;
    // `tasks_unfinished` holds only those rows, so `Db::unfinished_tasks`
    // reads them through it instead of the whole table. The triggers keep
    // it equal to `stage<>'done'` from every write path, and touch the row
    // only when a task enters or leaves done: a partial index on `stage`
    // itself would be rewritten by every move (one WAL page a move, the
    // cost migration 13 removed), while this one is written twice in a
    // task's life. A move's own UPDATE never names `unfinished`.
    r#"
ALTER TABLE tasks ADD COLUMN unfinished INTEGER DEFAULT 1;
UPDATE tasks SET unfinished=NULL WHERE stage='done';
CREATE INDEX tasks_unfinished ON tasks(id) WHERE unfinished=1;
CREATE TRIGGER tasks_unfinished_insert AFTER INSERT ON tasks WHEN new.stage='done'
BEGIN
    UPDATE tasks SET unfinished=NULL WHERE id=new.id;
END;
CREATE TRIGGER tasks_unfinished_update AFTER UPDATE OF stage ON tasks
WHEN (old.stage='done') IS NOT (new.stage='done')
BEGIN
    UPDATE tasks SET unfinished=CASE WHEN new.stage='done' THEN NULL ELSE 1 END WHERE id=new.id;
END;
"#,
    // 20: the store names no webhook source (issue 22). Which sources
    // exist is the code's registry (`webhook::source`), checked where a
    // name comes in (a route, `orch ingest --source`); a new tracker or
    // forge needs no migration. SQLite cannot drop a CHECK in place, so
    // the table is rebuilt with every row, id and index: `transitions.inbox_id`
    // refers to it by name and finds the new table (the runner turns
    // foreign keys off for the rebuild and checks them before commit).
    r#"
CREATE TABLE inbox_new (
    id              INTEGER PRIMARY KEY,
    source          TEXT NOT NULL,
    event           TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    body_sha256     TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body            BLOB NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    processed_at_ms INTEGER,
    outcome         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    dead            INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, delivery_id)
);
INSERT INTO inbox_new (id, source, event, delivery_id, body_sha256, headers, body,
                       received_at_ms, processed_at_ms, outcome, attempts, error, dead)
SELECT id, source, event, delivery_id, body_sha256, headers, body,
       received_at_ms, processed_at_ms, outcome, attempts, error, dead FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;
CREATE INDEX inbox_pending ON inbox(processed_at_ms, dead, id);
CREATE INDEX inbox_hash ON inbox(source, body_sha256);
"#,
    // 21: a typed transition cause (issue 22 item 4). `cause` says what
    // made the move (`gate-passed`, `approved-by-hand`, …: the names of
    // `model::TransitionCause`); `orch why` and the developer's feedback
    // read it instead of the reason text, which stays for people. Older
    // rows are read from their reason text and shape once, here; what
    // says nothing recognisable is `other`. Names are checked in code
    // (`FromSql`), not by a CHECK, so a new cause needs no table rebuild.
    r#"
ALTER TABLE transitions ADD COLUMN cause TEXT NOT NULL DEFAULT 'other';
UPDATE transitions SET cause = CASE
    WHEN from_stage IS NULL THEN 'work-item-started'
    WHEN actor = 'human' AND reason = 'approved by hand' THEN 'approved-by-hand'
    WHEN actor = 'human' AND reason = 'retry by hand' THEN 'retried-by-hand'
    WHEN actor = 'human' AND reason LIKE 'merge gate passed (by hand)%' THEN 'merged-by-hand'
    WHEN actor IN ('webhook','reconciler') AND reason LIKE '% in the tracker'
         AND from_stage = 'analysis' AND to_stage = 'architecture' THEN 'tracker-approved'
    WHEN actor IN ('webhook','reconciler') AND reason LIKE '% in the tracker'
         AND from_stage = 'analysis' AND to_stage = 'analysis' THEN 'tracker-rejected'
    WHEN actor <> 'human' AND (reason LIKE '% job % cannot finish: %'
         OR reason LIKE '% job % could not be finished after %') THEN 'finalize-failed'
    WHEN actor <> 'human' AND (reason LIKE '% job % failed after % attempts: %'
         OR reason LIKE '% job % failed (not retried): %'
         OR reason LIKE '% job % cannot run: %'
         OR reason LIKE '% deferred % times (ORCH_MERGE_GATE_MAX_DEFERS)%'
         OR reason LIKE 'staging check not run: %') THEN 'job-failed'
    WHEN actor <> 'human' AND from_stage || '>' || to_stage IN (
         'analysis>architecture', 'architecture>development', 'development>review',
         'review>testing', 'testing>deploy-staging', 'deploy-staging>deploy',
         'deploy>done') THEN 'gate-passed'
    WHEN actor <> 'human' AND to_stage = 'development' THEN 'gate-sent-back'
    WHEN actor IN ('worker','reaper') AND from_stage = 'deploy-staging'
         AND to_stage = 'deploy-staging' THEN 'restage'
    WHEN actor = 'human' AND from_stage || '>' || to_stage IN (
         'analysis>architecture', 'architecture>development', 'development>review',
         'review>testing', 'testing>deploy-staging', 'deploy-staging>deploy') THEN 'advanced-by-hand'
    WHEN actor = 'human' AND to_stage = 'development' AND from_stage <> 'development'
         THEN 'rolled-back-by-hand'
    ELSE 'other'
END;
"#,
    // 22: the merge line (issue 23). One row per task that a deployer
    // PASS at deploy-staging made ready to merge, at the task's version
    // `task_version`. `state`: `staging` (awaiting the staging check of
    // revision `validated`, the head the deployer passed, where the
    // project has `[projects.staging]`; an INFRA answer counts
    // `staging_defers` and retries at `staging_at_ms`), `ready` (waiting
    // in the line), `batched`
    // (in batch `batch_id` at `position`, 1-based, being built, tested or
    // fast-forwarded), `split` (its batch was red and bisection ran out of
    // its cap: it goes alone next), `landed` (main contains it; the task
    // moved to deploy), `sent_back` (a conflict or red tests sent it back
    // to development; `reason` says why). `validated`: the revision the
    // staging check validates (`staging`) or validated (after), when the
    // project has `[projects.staging]`.
    // `base`: the commit the line last rebased the task's branch onto
    // (the tip of the tasks ahead of it), so that a rebuild onto another
    // tip replays only the task's own commits. `merge_batches`: one row a
    // batch (`building`, then `landed` — main moved to `tip` — `split` or
    // `done`), `tests` the test runs it took. A row is written in the
    // transaction that finishes the deployer's job and changed in the
    // transactions that move the task.
    r#"
CREATE TABLE merge_line (
    task_id        INTEGER PRIMARY KEY REFERENCES tasks(id),
    project        TEXT NOT NULL,
    task_version   INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('staging','ready','batched','split','landed','sent_back')),
    batch_id       INTEGER,
    position       INTEGER,
    validated      TEXT,
    base           TEXT,
    reason         TEXT,
    ready_at_ms    INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    landed_at_ms   INTEGER,
    staging_defers INTEGER NOT NULL DEFAULT 0,
    staging_at_ms  INTEGER
);
CREATE INDEX merge_line_waiting ON merge_line(project, ready_at_ms) WHERE state IN ('ready','batched','split');
CREATE TABLE merge_batches (
    id             INTEGER PRIMARY KEY,
    project        TEXT NOT NULL,
    size           INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('building','landed','split','done')),
    tip            TEXT,
    tests          INTEGER NOT NULL DEFAULT 0,
    created_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER
);
"#,
    // 23: claim epochs (DESIGN §11 INV-10). `epoch` counts the claims of a
    // job: every `queued → running` takes the next one, so each claim —
    // also a claim by hand given back and claimed again at the same
    // attempt — has its own number, and everything the run or its
    // finalize does outside the database is conditional on it still being
    // current. Jobs claimed before this migration keep epoch 0 until
    // their next claim.
    r#"
ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
"#,
    // 24: resume across a rescue (DESIGN §4 "Agents"). `jobs.session_id`:
    // the agent CLI's session id of the job's latest run, recorded as soon
    // as the CLI prints it (its first event under stream-json), by the
    // claim of that epoch only, so a run killed with its worker can be
    // resumed by the next claim. `gone_sessions`: ids the CLI said it no
    // longer has ("No conversation found with session ID"); never offered
    // to `{previous_session}` again.
    r#"
ALTER TABLE jobs ADD COLUMN session_id TEXT;
CREATE TABLE gone_sessions (
    task_id    INTEGER NOT NULL REFERENCES tasks(id),
    role       TEXT NOT NULL,
    session_id TEXT NOT NULL,
    job_id     INTEGER NOT NULL REFERENCES jobs(id),
    at_ms      INTEGER NOT NULL,
    PRIMARY KEY (task_id, role, session_id)
);
"#,
    // 25: `merge_line.built`, the head the line last rebased the task's
    // branch to (recorded with `base`, before the push): a rebase of
    // `validated`, or of an earlier `built`. At the next build the
    // branch's head must be one of the two (or what a rebase of them
    // started from) — else it is content staging never validated and the
    // task goes back to deploy-staging (DESIGN §7, "someone else pushed to
    // a task branch").
    r#"
ALTER TABLE merge_line ADD COLUMN built TEXT;
"#,
    // 26: the fence of every outside effect (DESIGN §11 INV-10).
    // `jobs.claim_sha`: origin's head of the task branch when the claim's
    // run started (after the worktree was synced), the lease of its push
    // (`--force-with-lease=<branch>:<claim_sha>`); '' when origin had no
    // such branch (the lease: the ref is absent), NULL when not recorded
    // (a claim of an older orch, a deferred merge: the push is unleased
    // as before). `jobs.host_id`: the claimer's `ORCH_HOST_ID`; the reaper
    // judges a job of another host by its heartbeat alone and kills
    // nothing there. `outbox.job_id`/`job_epoch`: the claim a row was
    // queued for; `orch deliver` dead-letters a row whose job has since
    // been claimed again. `fence_refusals`: each effect a stale claim
    // tried and was refused (one row per refusal; `orch why` lists them),
    // a table rather than a column because one job can have several
    // stale claims, each refused at several effects.
    r#"
ALTER TABLE jobs ADD COLUMN claim_sha TEXT;
ALTER TABLE jobs ADD COLUMN host_id TEXT;
ALTER TABLE outbox ADD COLUMN job_id INTEGER;
ALTER TABLE outbox ADD COLUMN job_epoch INTEGER;
CREATE TABLE fence_refusals (
    id            INTEGER PRIMARY KEY,
    job_id        INTEGER NOT NULL REFERENCES jobs(id),
    task_id       INTEGER NOT NULL REFERENCES tasks(id),
    epoch         INTEGER NOT NULL,
    current_epoch INTEGER NOT NULL,
    effect        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    at_ms         INTEGER NOT NULL
);
CREATE INDEX fence_refusals_task ON fence_refusals(task_id);
"#,
    // 27: detached runs (DESIGN §4 "Detached runs"). `jobs.runner` names
    // how the current claim's agent runs (`child`, `supervisor`,
    // `systemd`; NULL before it started) and `jobs.run_handle` how to find
    // it again (a supervisor's `pid:start:boot`, a unit's name), both
    // cleared by every claim; a run records which runner ran it and
    // whether another process than the one that started it recorded its
    // end (`adopted`).
    r#"
ALTER TABLE jobs ADD COLUMN runner TEXT;
ALTER TABLE jobs ADD COLUMN run_handle TEXT;
ALTER TABLE agent_runs ADD COLUMN runner TEXT;
ALTER TABLE agent_runs ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0;
"#,
    // 28: hosts (DESIGN §10 "Hosts"). From now on `jobs.worker_host` holds
    // the worker's host id (`ORCH_HOST_ID`) and the new `jobs.worker_boot`
    // its boot id; every liveness judgement looks in `/proc` only for a
    // job of its own host id and boot (`fence::Here::owns`) and judges any
    // other by its heartbeat's age alone. Rows claimed before held the
    // boot id in `worker_host`: it moves to `worker_boot`, and
    // `worker_host` becomes the claim's `host_id` (migration 26) — so a
    // job claimed by this host on this boot is still this host's after the
    // upgrade. A claim older than migration 26 (no `host_id`) gets no
    // worker host: judged by its heartbeat alone, never signalled.
    // `hosts`: one row per host id, upserted by `work-once`, `tick` and
    // `reap` (its boot id, orch version and when it was last seen, unix
    // ms), listed by `orch status`.
    r#"
ALTER TABLE jobs ADD COLUMN worker_boot TEXT;
UPDATE jobs SET worker_boot = worker_host, worker_host = host_id WHERE worker_host IS NOT NULL;
CREATE TABLE hosts (
    id         TEXT PRIMARY KEY,
    boot_id    TEXT,
    version    TEXT,
    seen_at_ms INTEGER
);
"#,
];
