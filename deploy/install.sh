#!/usr/bin/env bash
# Installs the pipeline on a systemd host; safe to run again (upgrades binaries and units,
# never touches existing configuration or credentials).
#
# Usage: deploy/install.sh [--bin-dir DIR] [--root DIR] [--no-start]
#   --bin-dir DIR   where the built binaries are (default: target/release)
#   --root DIR      install under DIR instead of / (packaging, tests); skips user creation
#                   and systemctl
#   --no-start      install only; do not enable or restart the services
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BIN_DIR="$here/../target/release"
ROOT=""
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --root) ROOT="${2%/}"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

SERVICES=(quantum-intent-bridge quantum-intent-executor quantum-ledger)
declare -A ENV_FILE=([quantum-intent-bridge]=intent-bridge.env [quantum-intent-executor]=intent-executor.env [quantum-ledger]=ledger.env)

for svc in "${SERVICES[@]}" quantumctl; do
  [ -x "$BIN_DIR/$svc" ] || { echo "missing $BIN_DIR/$svc: run cargo build --release --workspace first" >&2; exit 1; }
done

if [ -z "$ROOT" ] && ! id quantum >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin quantum
  echo "created system user quantum"
fi

install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/etc/systemd/system" "$ROOT/usr/local/share/doc/quantum" \
  "$ROOT/usr/local/share/quantum"
install -d -m 0750 "$ROOT/etc/quantum"
install -d -m 0700 "$ROOT/etc/quantum/credentials"

changed=0
put() { # put MODE SRC DEST: copy only when different, so a re-run changes nothing
  if ! cmp -s "$2" "$3"; then install -m "$1" "$2" "$3"; changed=1; echo "installed $3"; fi
}
for svc in "${SERVICES[@]}" quantumctl; do put 0755 "$BIN_DIR/$svc" "$ROOT/usr/local/bin/$svc"; done
for svc in "${SERVICES[@]}"; do
  put 0644 "$here/systemd/$svc.service" "$ROOT/etc/systemd/system/$svc.service"
  env="${ENV_FILE[$svc]}"
  put 0644 "$here/systemd/env/$env" "$ROOT/usr/local/share/quantum/$env.example"
  if [ ! -e "$ROOT/etc/quantum/$env" ]; then
    install -m 0640 "$here/systemd/env/$env" "$ROOT/etc/quantum/$env"; changed=1; echo "created $ROOT/etc/quantum/$env"
  fi
  cred="$ROOT/etc/quantum/credentials/$svc.redis-password"
  if [ ! -e "$cred" ]; then
    install -m 0600 /dev/null "$cred"; changed=1
    echo "created empty $cred: put the service's Redis password in it (see deploy/redis/README.md)"
  fi
done
put 0644 "$here/systemd/env/quantum.env" "$ROOT/usr/local/share/quantum/quantum.env.example"
if [ ! -e "$ROOT/etc/quantum/quantum.env" ]; then
  install -m 0640 "$here/systemd/env/quantum.env" "$ROOT/etc/quantum/quantum.env"; changed=1; echo "created $ROOT/etc/quantum/quantum.env"
  # Upgrade: the bridge's old allowlist becomes the one every service reads (the executor
  # reads it too now, and would otherwise trade only the default).
  old=$(sed -n 's/^INTENT_BRIDGE_ALLOWLIST=//p' "$ROOT/etc/quantum/intent-bridge.env" 2>/dev/null | tail -n 1)
  if [ -n "$old" ]; then
    printf '# Migrated from INTENT_BRIDGE_ALLOWLIST in intent-bridge.env by install.sh.\nSYMBOL_ALLOWLIST=%s\n' "$old" >> "$ROOT/etc/quantum/quantum.env"
    echo "migrated INTENT_BRIDGE_ALLOWLIST=$old to SYMBOL_ALLOWLIST in $ROOT/etc/quantum/quantum.env"
  fi
fi
for cred in binance-api-key binance-api-secret; do
  f="$ROOT/etc/quantum/credentials/$cred"
  [ -e "$f" ] || { install -m 0600 /dev/null "$f"; changed=1; echo "created empty $f (needed only with INTENT_EXECUTOR_MODE=live)"; }
done
put 0644 "$here/redis/users.acl" "$ROOT/usr/local/share/quantum/users.acl"
for doc in "$here"/../docs/*.md; do put 0644 "$doc" "$ROOT/usr/local/share/doc/quantum/$(basename "$doc")"; done
put 0755 "$here/../proofs/proof_intent_bridge_ledger_gate.sh" "$ROOT/usr/local/bin/proof_intent_bridge_ledger_gate.sh"

if [ -z "$ROOT" ]; then
  chown -R root:quantum "$ROOT/etc/quantum"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$START" = 1 ]; then
      systemctl enable "${SERVICES[@]}" >/dev/null
      if [ "$changed" = 1 ]; then systemctl restart "${SERVICES[@]}"; else systemctl start "${SERVICES[@]}"; fi
      echo "services enabled and running: systemctl status ${SERVICES[*]}"
    fi
  fi
fi
[ "$changed" = 1 ] || echo "nothing to do: already installed and up to date"
