#!/usr/bin/env bash
# Builds the workspace and runs the deadlock-and-fix demo on a throwaway redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --release --workspace --locked
exec target/release/quantumctl demo "$@"
