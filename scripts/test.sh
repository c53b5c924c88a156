#!/usr/bin/env bash
# Runs every test: formatting, lints, unit/property tests, the system tests against real
# redis-server processes (installed from the OS packages when missing), and the compose stack
# on a real container engine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
# A clean clone gains nothing from incremental caches; they only double target/'s size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The system tests start the real service binaries, which `cargo test` alone does not (re)build.
# --all-targets builds them with the same features as the tests, so nothing is compiled twice.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked
# compose.yaml started for real on a container engine (a private dockerd when none is reachable).
scripts/compose-test.sh
