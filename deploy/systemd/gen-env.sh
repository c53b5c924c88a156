#!/usr/bin/env bash
# Regenerates env/*.env from the binaries' --help, so the example env files list every setting
# with its default (a test fails when they drift). Usage: deploy/systemd/gen-env.sh [BIN_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin="${1:-$here/../../target/debug}"
for spec in "quantum-intent-bridge intent-bridge.env" "quantum-intent-executor intent-executor.env" "quantum-ledger ledger.env"; do
  set -- $spec
  {
    echo "# $1 settings"
    echo "# Installed as /etc/quantum/$2 (deploy/install.sh never overwrites an existing one)."
    echo "# Every setting with its default; uncomment to change. Secrets do not belong here: the"
    echo "# Redis password comes from the redis-password credential (LoadCredential= in the unit)."
    echo
    "$bin/$1" --help | awk '
      /\[env: / {
        line = $0
        match(line, /\[env: [A-Z_]+/); name = substr(line, RSTART + 6, RLENGTH - 6)
        def = ""; if (match(line, /\[default: [^]]*\]/)) def = substr(line, RSTART + 10, RLENGTH - 11)
        desc = line; sub(/^ +/, "", desc); sub(/ \[env: .*$/, "", desc)
        print "# " desc
        if (name == "REDIS_PASSWORD") { print "# REDIS_PASSWORD: never here; use the credential."; print ""; next }
        print "#" name "=" def; print ""
      }'
  } > "$here/env/$2"
done
