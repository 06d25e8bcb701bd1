#!/usr/bin/env bash
# demo.sh — watch orch take one work item from "In Progress" to a commit
# merged on main, with nothing but git: a sandbox with a bare origin, the
# local tracker and forge, and a scripted agent for every role.
#
#   scripts/demo.sh            # builds orch, runs the demo in ./demo-sandbox
#   DEMO_DIR=/tmp/x scripts/demo.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${DEMO_DIR:-$root/demo-sandbox}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building orch"
cargo build --quiet --manifest-path "$root/Cargo.toml"
orch="$root/target/debug/orch"

say "making the sandbox in $dir"
"$root/scripts/make-sandbox" "$dir" >/dev/null
cd "$dir"
# shellcheck disable=SC1091
source ./orch.env
export ORCH_LOG=${ORCH_LOG:-warn}
"$orch" init

# A free loopback port for the webhook listener; the admin one (/queue) is
# the Unix socket in the state directory.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
port=$(free_port 8500)
admin="${ORCH_STATE_DIR:-orch-state}/admin.sock"
say "starting orch serve on 127.0.0.1:$port (admin socket $admin)"
"$orch" serve --bind "127.0.0.1:$port" 2>"$dir/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

say "sending a signed Plane 'In Progress' delivery (tests/fixtures/plane)"
body="$root/tests/fixtures/plane/webhooks/issue-updated-state-in-progress.json"
sig=$(openssl dgst -sha256 -hmac "$ORCH_PLANE_WEBHOOK_SECRET" -r < "$body" | cut -d' ' -f1)
curl -sS -X POST "http://127.0.0.1:$port/webhooks/plane" \
  -H 'Content-Type: application/json' -H 'X-Plane-Event: issue' \
  -H "X-Plane-Delivery: $(cat /proc/sys/kernel/random/uuid)" \
  -H "X-Plane-Signature: $sig" --data-binary "@$body"
echo

say "running ticks until the task is done"
for i in $(seq 20); do
  "$orch" tick >/dev/null
  stage=$("$orch" --json task list | grep -o '"stage": *"[a-z-]*"' | head -1 | cut -d'"' -f4)
  echo "tick $i: task 1 is at ${stage:-?}"
  [ "$stage" = done ] && break
done

say "transitions"
"$orch" task show 1
say "main on origin"
git --git-dir "$dir/origin.git" log --oneline --first-parent main
say "usage"
"$orch" usage
say "queue"
curl -sS --unix-socket "$admin" http://orch/queue; echo
[ "$stage" = done ] || { echo "demo: the task did not reach done" >&2; exit 1; }
say "done: the sandbox stays in $dir"
