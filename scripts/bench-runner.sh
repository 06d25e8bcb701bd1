#!/usr/bin/env bash
# bench-runner.sh — per-run overhead of the detached runner (orch's own
# supervisor) beside the child runner, on this machine: for each runner,
# RUNS analysis jobs of a sandbox (scripts/make-sandbox: local tracker and
# forge, the scripted fake agent), each run by one `orch work-once`. The
# agent is wrapped by a script that stamps its start and its end
# (CLOCK_REALTIME, ms); the database gives the claim (`jobs.claimed_at_ms`),
# the exit's record (`exit_recorded_at_ms`) and the finalize
# (`finished_at_ms`). Prints the medians (and min/max) of
#   claim → agent start,  agent exit → exit recorded,  agent exit → finalized
# per runner. Both runners run unsandboxed (ORCH_AGENT_SANDBOX=none), so
# the figures are the runner's alone. It measures and prints; it asserts
# no time.
#
#   scripts/bench-runner.sh            # 15 runs per runner
#   RUNS=31 scripts/bench-runner.sh
#   KEEP=1 scripts/bench-runner.sh     # keep the sandboxes
#
# Honours CARGO_TARGET_DIR. Needs sqlite3 (apt-get install -y sqlite3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-15}
if ! command -v sqlite3 >/dev/null; then
  echo "bench-runner: the sqlite3 command-line tool is missing (apt-get install -y sqlite3)" >&2
  exit 1
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin orch
orch=${CARGO_TARGET_DIR:-$root/target}/release/orch
base=$(mktemp -d "${TMPDIR:-/tmp}/orch-bench-runner.XXXXXX")
cleanup() { if [ -z "${KEEP:-}" ]; then rm -rf "$base"; else echo "kept $base"; fi; }
trap cleanup EXIT

# The agent: stamps its start and end around the fake agent.
cat > "$base/stamped-agent" <<SH
#!/usr/bin/env bash
echo "\$ORCH_JOB_ID start \$(date +%s%3N)" >> "$base/stamps"
"$root/scripts/fake-agent"
code=\$?
echo "\$ORCH_JOB_ID end \$(date +%s%3N)" >> "$base/stamps"
exit \$code
SH
chmod +x "$base/stamped-agent"

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s (min %s, max %s)", m, a[1], a[NR]}'; }

for runner in child supervisor; do
  sbx="$base/$runner"
  "$root/scripts/make-sandbox" "$sbx" >/dev/null
  sed -i "s|argv = \[\"$root/scripts/fake-agent\"\]|argv = [\"$base/stamped-agent\"]|" "$sbx/orch.toml"
  : > "$base/stamps"
  (
    cd "$sbx"
    set -a; . ./orch.env; set +a
    export ORCH_AGENT_RUNNER=$runner ORCH_AGENT_SANDBOX=none ORCH_LOG=warn
    "$orch" init >/dev/null
    for i in $(seq "$runs"); do
      "$orch" issue add --project widget --title "bench $i" >/dev/null
      "$orch" work-once --role analyst >/dev/null
    done
    sqlite3 -separator ' ' "$ORCH_STATE_DIR/orch.db" \
      "SELECT id, claimed_at_ms, exit_recorded_at_ms, finished_at_ms FROM jobs WHERE stage='analysis' AND status='done' ORDER BY id" > "$base/jobs"
  )
  start_lat=(); rec_lat=(); fin_lat=()
  while read -r id claimed recorded finished; do
    s=$(awk -v j="$id" '$1==j && $2=="start" {print $3; exit}' "$base/stamps")
    e=$(awk -v j="$id" '$1==j && $2=="end" {print $3; exit}' "$base/stamps")
    [ -n "$s" ] && [ -n "$e" ] || continue
    start_lat+=($((s - claimed))); rec_lat+=($((recorded - e))); fin_lat+=($((finished - e)))
  done < "$base/jobs"
  echo "$runner runner, ${#start_lat[@]} runs (ms):"
  echo "  claim → agent start:        $(printf '%s\n' "${start_lat[@]}" | median)"
  echo "  agent exit → exit recorded: $(printf '%s\n' "${rec_lat[@]}" | median)"
  echo "  agent exit → finalized:     $(printf '%s\n' "${fin_lat[@]}" | median)"
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
