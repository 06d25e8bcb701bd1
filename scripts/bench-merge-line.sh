#!/usr/bin/env bash
# bench-merge-line.sh — merges per hour of the merge line (issue 23),
# serial (ORCH_MERGE_LINE_BATCH_MAX=1, today's one-at-a-time gate) against
# batched (ORCH_MERGE_LINE_BATCH_MAX=KMAX), on the same workload: N tasks
# made ready through the real pipeline (scripts/make-sandbox, the fake
# agent, a real git origin), then a test command that takes T seconds and
# fails for FAIL_PCT % of the tasks (their file holds BENCHFAIL). For each
# mode it times `orch merge-gate` until the line is empty, prints the tasks
# landed, the test runs, and merges per hour, then the ratio; and checks
# that every first-parent commit of main passes the test command. It
# measures and prints; it asserts no time (exit 1 only when main has a red
# commit or a mode lands nothing).
#
#   scripts/bench-merge-line.sh            # N=12 T=2 FAIL_PCT=10 KMAX=8
#   N=24 T=1 scripts/bench-merge-line.sh
#
# The merge lease is off (ORCH_MERGE_GATE_ENABLED=false) in both modes: a
# landing hands it to the deploy job, and no deployer runs here.
# Honours CARGO_TARGET_DIR. Takes about 3 minutes on a 2-core machine
# (making the tasks ready dominates; only the line is timed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${N:-12} t=${T:-2} pct=${FAIL_PCT:-10} kmax=${KMAX:-8}
cargo build --quiet --manifest-path "$root/Cargo.toml" --bin orch
orch=${CARGO_TARGET_DIR:-$root/target}/debug/orch
nfail=$(( (n * pct + 50) / 100 ))
# The failing tasks, spread evenly (for N=12 and one failing: task 6).
fails() { local i=$1; (( (i * nfail + n / 2) / n > ((i - 1) * nfail + n / 2) / n )); }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
check="if grep -qs BENCHFAIL f*.md; then echo 'FAIL: a BENCHFAIL task'; exit 1; fi; sh test.sh"

stage_of() { "$orch" -q task show "$1" 2>/dev/null | sed -n 's/^  stage \([a-z-]*\) .*/\1/p'; }

run_mode() { # NAME KMAX → prints "landed tests seconds"
  local name=$1 k=$2 dir=$work/$1
  "$root/scripts/make-sandbox" "$dir" >/dev/null
  # shellcheck disable=SC1091
  source "$dir/orch.env"
  export ORCH_MERGE_GATE_ENABLED=false ORCH_MERGE_LINE_BATCH_MAX=$k
  "$orch" -q init >/dev/null
  for i in $(seq "$n"); do
    "$orch" -q issue add --project widget --title "bench task $i" >/dev/null
    local line="- task $i"
    fails "$i" && line="BENCHFAIL in task $i"
    for _ in 1 2 3 4 5 6 7 8; do
      [ "$(stage_of "$i")" = deploy-staging ] && break
      for role in analyst architect developer reviewer tester; do
        FAKE_AGENT_DEV_FILE="f$i.md" FAKE_AGENT_DEV_LINE="$line" "$orch" -q work-once --role "$role" >/dev/null
      done
      "$orch" -q ci >/dev/null  # the local forge's CI of the development head
    done
    "$orch" -q work-once --role deployer >/dev/null
  done
  # From now on the test command takes T seconds and fails for BENCHFAIL.
  sed -i "s|^test_command = .*|test_command = [\"sh\", \"-c\", \"sleep $t; $check\"]|" "$ORCH_CONFIG"
  local ready start end
  ready=$("$orch" status | sed -n 's/^merge line widget: \([0-9]*\) waiting.*/\1/p')
  local out=$dir/line.jsonl
  start=$(date +%s.%N)
  for _ in $(seq $(( 2 * n + 3 ))); do
    local o
    o=$("$orch" -q --json merge-gate)
    echo "$o" >> "$out"
    grep -q '"projects": \[\]' <<<"$o" && break
  done
  end=$(date +%s.%N)
  local landed tests
  landed=$("$orch" metrics | sed -n 's/^orch_merge_line_landed_total \([0-9]*\)$/\1/p')
  tests=$(grep -o '"tests": [0-9]*' "$out" | awk -F': ' '{ t += $2 } END { print t + 0 }')
  echo "$name: $ready ready, $landed landed, $(awk -v s="$start" -v e="$end" 'BEGIN{printf "%.1f", e-s}') s, $tests test runs" >&2
  # Every first-parent commit of main passes the test command.
  local clone=$dir/history
  git clone -q "$dir/origin.git" "$clone"
  local red=0
  for sha in $(git -C "$clone" rev-list --first-parent main); do
    git -C "$clone" checkout -q --detach "$sha"
    (cd "$clone" && sh -c "$check" >/dev/null 2>&1) || { echo "$name: main's commit $sha is red" >&2; red=1; }
  done
  echo "$landed $(awk -v s="$start" -v e="$end" 'BEGIN{print e-s}') $red"
}

echo "merge line benchmark: N=$n ready tasks, test command $t s, $nfail failing ($pct %), batched KMAX=$kmax"
read -r s_landed s_secs s_red < <(run_mode serial 1)
read -r b_landed b_secs b_red < <(run_mode batched "$kmax")
per_hour() { awk -v l="$1" -v s="$2" 'BEGIN{printf "%.0f", l * 3600 / s}'; }
s_rate=$(per_hour "$s_landed" "$s_secs"); b_rate=$(per_hour "$b_landed" "$b_secs")
printf '%-8s %7s %9s %14s\n' mode landed seconds merges/hour
printf '%-8s %7s %9.1f %14s\n' serial "$s_landed" "$s_secs" "$s_rate"
printf '%-8s %7s %9.1f %14s\n' batched "$b_landed" "$b_secs" "$b_rate"
awk -v a="$b_rate" -v b="$s_rate" 'BEGIN{printf "ratio batched/serial: %.2fx (goal >= 2x)\n", a / b}'
if [ "$s_red$b_red" = 00 ]; then
  echo "main green at every first-parent commit in both modes"
else
  echo "main has a red first-parent commit" >&2; exit 1
fi
[ "$s_landed" -gt 0 ] && [ "$b_landed" -gt 0 ] || { echo "a mode landed nothing" >&2; exit 1; }
