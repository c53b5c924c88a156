#!/usr/bin/env bash
# The fault suite (issue 8): under a steady flow of intents, two instances of every service on a
# throwaway redis-server (AOF, appendfsync always), >= 100 SIGKILLs at random, a bridge paused past
# the reclaim age, a Redis restart and one poison entry per stream; then the exactly-once
# invariants, each PASS or FAIL. Exits non-zero when one fails. Arguments go to
# `quantumctl faults` (--kills, --intents, --rate, --replicas, --seed, --venue live, --cluster
# for a 3+3 Redis Cluster whose apply.plan primary dies under flow); --release builds and runs
# the release binaries. The test command runs a short form (ctl/tests/faults.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
profile=debug
args=()
for arg in "$@"; do
  if [ "$arg" = "--release" ]; then profile=release; else args+=("$arg"); fi
done
if [ "$profile" = release ]; then
  cargo build --release --workspace --locked
else
  cargo build --workspace --locked
fi
exec "target/$profile/quantumctl" faults "${args[@]}"
