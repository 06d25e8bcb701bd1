#!/usr/bin/env bash
# soak.sh — chaos soak: run work-once loops, reap, reconcile, ci, ingest,
# deliver and the merge line concurrently on many tasks while SIGKILLing
# random orch processes; then let ordinary ticks recover and check the
# invariants
# (`orch check`). Exit 0 only when every task reached done (or was
# escalated with a reason) and no invariant is violated.
#
#   scripts/soak.sh                       # 20 s, 8 tasks, 3 workers
#   SOAK_SECONDS=600 SOAK_TASKS=40 SOAK_WORKERS=4 scripts/soak.sh
#
# Settings: SOAK_SECONDS (20), SOAK_TASKS (8), SOAK_WORKERS (3),
# SOAK_KILL_EVERY_MS (400, mean pause between kills), ORCH_BIN (default:
# build target/debug/orch), SOAK_DIR (default: a temp dir, removed on
# success).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${SOAK_SECONDS:-20}
tasks=${SOAK_TASKS:-8}
workers=${SOAK_WORKERS:-3}
kill_every_ms=${SOAK_KILL_EVERY_MS:-400}
if [ -z "${ORCH_BIN:-}" ]; then
  cargo build --quiet --manifest-path "$root/Cargo.toml"
  ORCH_BIN="$root/target/debug/orch"
fi
dir=${SOAK_DIR:-$(mktemp -d)}
mkdir -p "$dir"
# A private copy of the binary: the killer matches its path, so it never
# touches orch processes that are not this soak's (other tests, real ticks).
cp "$ORCH_BIN" "$dir/orch"
orch="$dir/orch"
"$root/scripts/make-sandbox" "$dir/sbx" >/dev/null
cd "$dir/sbx"
# shellcheck disable=SC1091
source ./orch.env
export ORCH_LOG=error
export ORCH_REAPER_FINALIZE_GRACE_S=1 ORCH_HEARTBEAT_STALE_S=5 ORCH_RECONCILE_GRACE_S=1
export ORCH_MAX_CONCURRENCY=$workers ORCH_JOB_MAX_ATTEMPTS=1000 ORCH_JOB_BACKOFF_S=0
export ORCH_AGENT_TIMEOUT_S=30 ORCH_KILL_GRACE_S=1
# The merge line runs in its own loop (killed like the rest); a staging
# deferral would retry at once and never escalate for waiting (like
# ORCH_JOB_MAX_ATTEMPTS above).
export ORCH_STAGING_CHECK_INFRA_BACKOFF_S=0 ORCH_STAGING_CHECK_MAX_INFRA=1000000
export FAKE_AGENT_SLEEP=${FAKE_AGENT_SLEEP:-0}
# Each task changes its own file: conflicts between tasks are the merge
# gate's tests, not the soak's.
export FAKE_AGENT_DEV_FILE="changes/task-%t.md"

"$orch" init >/dev/null
for i in $(seq "$tasks"); do
  "$orch" issue add --project widget --title "soak task $i" >/dev/null
done

stop="$dir/stop"
loop() { while [ ! -e "$stop" ]; do "$orch" "$@" >/dev/null 2>&1 || true; done; }
pids=()
for _ in $(seq "$workers"); do loop work-once 2>/dev/null & pids+=($!); done
loop reap 2>/dev/null & pids+=($!)
loop reconcile 2>/dev/null & pids+=($!)
loop ci 2>/dev/null & pids+=($!)
loop ingest 2>/dev/null & pids+=($!)
loop deliver 2>/dev/null & pids+=($!)
loop merge-gate 2>/dev/null & pids+=($!)

kills=0
end=$((SECONDS + seconds))
while [ $SECONDS -lt $end ]; do
  sleep "$(awk -v m="$kill_every_ms" 'BEGIN{srand(); printf "%.3f", rand()*2*m/1000}')"
  mapfile -t victims < <(pgrep -f "^$orch " || true)
  if [ ${#victims[@]} -gt 0 ]; then
    victim=${victims[$((RANDOM % ${#victims[@]}))]}
    kill -9 "$victim" 2>/dev/null && kills=$((kills + 1)) || true
  fi
done
touch "$stop"
wait "${pids[@]}" 2>/dev/null || true

# Recovery: nothing but the ordinary ticks.
for _ in $(seq 60); do
  "$orch" reap >/dev/null 2>&1 || true
  "$orch" tick >/dev/null 2>&1 || true
  open=$("$orch" --json task list | grep -c '"stage": "done"' || true)
  escalated=$("$orch" --json task list | grep -c '"escalated": true' || true)
  [ $((open + escalated)) -ge "$tasks" ] && break
  sleep 0.2
done
"$orch" reap >/dev/null 2>&1 || true

done_count=$("$orch" --json task list | grep -c '"stage": "done"' || true)
escalated=$("$orch" --json task list | grep -c '"escalated": true' || true)
echo "soak: ${seconds}s, $tasks tasks, $workers workers, $kills processes killed; done $done_count, escalated $escalated"
status=0
"$orch" check || status=$?
# No job left running after the reap (orch check above says so too).
if ! "$orch" --json status | grep -q '"running": \[\]'; then
  echo "soak: FAILED: a job is still running after the final reap" >&2
  status=1
fi
# Each done task's developer change is on main once: its own file, one
# line per developer run that reached main, never the same edit twice.
for id in $("$orch" --json task list | awk -F': ' '/"id"/ {gsub(/[^0-9]/, "", $2); print $2}'); do
  file="changes/task-$id.md"
  if git -C "$dir/sbx/origin.git" cat-file -e "main:$file" 2>/dev/null; then
    dups=$(git -C "$dir/sbx/origin.git" show "main:$file" | sort | uniq -d | wc -l)
    if [ "$dups" -gt 0 ]; then
      echo "soak: FAILED: task $id's change appears more than once on main ($file)" >&2
      status=1
    fi
  fi
done
# Every outbox message delivered (local routes: each exactly once).
if ! "$orch" --json status | grep -q '"outbox_dead": \[\]'; then
  echo "soak: FAILED: dead-lettered outbox messages" >&2
  status=1
fi
if [ $((done_count + escalated)) -lt "$tasks" ]; then
  echo "soak: FAILED: $((tasks - done_count - escalated)) task(s) neither done nor escalated" >&2
  "$orch" task list >&2
  status=1
fi
if [ $status -eq 0 ] && [ -z "${SOAK_DIR:-}" ]; then rm -rf "$dir"; else echo "soak: state kept in $dir" >&2; fi
exit $status
