#!/usr/bin/env bash
# bench-why.sh — build in release mode, build the reconcile benchmark's
# 10,000-task database (examples/bench_reconcile.rs --keep), then time
# `orch why` on it (examples/bench_why.rs). It measures and prints; it
# asserts no time. Extra arguments go to bench_why (e.g. --calls 50).
# Honours CARGO_TARGET_DIR. Takes about a minute on a 2-core machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin orch --example bench_reconcile --example bench_why
kept=$(cargo run --release --quiet --manifest-path "$root/Cargo.toml" --example bench_reconcile -- --runs 1 --keep | sed -n 's/^kept //p')
trap 'rm -rf "$kept"' EXIT
cargo run --release --quiet --manifest-path "$root/Cargo.toml" --example bench_why -- --dir "$kept/size-10000" "$@"
