#!/usr/bin/env bash
# bench-reconcile.sh — build the reconcile benchmark (examples/bench_reconcile.rs)
# in release mode and print its report: the cost of one `orch reconcile`
# pass over a 1,000- and a 10,000-task database, and the tracker calls it
# makes. It measures and prints; it asserts no time.
#
#   scripts/bench-reconcile.sh                                  # 10,000 tasks, 1,000 active, 7 runs
#   scripts/bench-reconcile.sh --tasks 20000 --active 2000 --runs 9 --projects 5 [--keep]
#
# Arguments go to the example (see its --help). Honours CARGO_TARGET_DIR.
# Building the two databases takes about 40 s on a 2-core machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --example bench_reconcile
exec cargo run --release --quiet --manifest-path "$root/Cargo.toml" --example bench_reconcile -- "$@"
