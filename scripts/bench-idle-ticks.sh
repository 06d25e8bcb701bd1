#!/usr/bin/env bash
# bench-idle-ticks.sh — time an idle `orch reap` and `orch reconcile` as
# whole processes over 10,000 tasks (9,000 done, 500 queued for tomorrow,
# 500 running under a live worker), beside the sqlite3 command-line tool
# running what each tick reads. Prints medians, the ratio to sqlite3 and
# peak RSS (from wait4's rusage of each child: no `time` package needed).
# It measures and prints; it asserts no time. See examples/bench_idle.rs.
#
#   scripts/bench-idle-ticks.sh                 # 15 interleaved runs of each
#   RUNS=31 scripts/bench-idle-ticks.sh [--tasks 20000 --queued 1000 --running 1000]
#   KEEP=1 scripts/bench-idle-ticks.sh          # keep the sandbox folder
#
# Arguments go to the builder (`bench_idle --build`). Honours
# CARGO_TARGET_DIR. Needs the sqlite3 command-line tool
# (`apt-get install -y sqlite3`). Nothing leaves the machine: the project
# uses the local tracker and forge, and ORCH_RECONCILE_PLANE_ENABLED=false.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-15}
sqlite3=${SQLITE3:-sqlite3}
if ! command -v "$sqlite3" >/dev/null; then
  echo "bench-idle-ticks: the sqlite3 command-line tool is missing (apt-get install -y sqlite3)" >&2
  exit 1
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin orch --example bench_idle
target=${CARGO_TARGET_DIR:-$root/target}/release

dir=$(mktemp -d "${TMPDIR:-/tmp}/orch-bench-idle.XXXXXX")
worker=
cleanup() {
  if [ -n "$worker" ]; then kill "$worker" 2>/dev/null || true; fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$dir"; else echo "kept $dir"; fi
}
trap cleanup EXIT

cat > "$dir/orch.toml" <<TOML
[agents.default]
argv = ["true"]

[[projects]]
name = "bench"
tracker = "local"
forge = "local"
clone_url = "$dir/origin.git"
default_branch = "main"
test_command = ["true"]
TOML
mkdir -p "$dir/state"

# The live worker the 500 running jobs name (boot id, pid, start time).
sleep 100000 &
worker=$!

echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')); $(df -h --output=source,fstype "$dir" | tail -1 | tr -s ' ')"
echo "sqlite3 $("$sqlite3" --version | cut -d' ' -f1); load before: $(uptime | sed 's/.*load average/load average/')"
"$target/examples/bench_idle" --build "$dir/state/orch.db" --config "$dir/orch.toml" --worker-pid "$worker" "$@"
"$target/examples/bench_idle" --measure --db "$dir/state/orch.db" --config "$dir/orch.toml" \
  --state "$dir/state" --orch "$target/orch" --sqlite3 "$sqlite3" --runs "$runs"
echo "load after: $(uptime | sed 's/.*load average/load average/')"
