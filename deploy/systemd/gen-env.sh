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
    # One block per option (clap may spread an option over several lines).
    "$bin/$1" --help | awk '
      function flush(   name, def, desc) {
        if (block !~ /\[env: /) return
        match(block, /\[env: [A-Z_]+/); name = substr(block, RSTART + 6, RLENGTH - 6)
        def = ""; if (match(block, /\[default: [^]]*\]/)) def = substr(block, RSTART + 10, RLENGTH - 11)
        desc = block; sub(/ *(\[env: |\[default: |Possible values:).*$/, "", desc)
        gsub(/ +/, " ", desc); sub(/^ /, "", desc)
        print "# " desc
        if (name == "REDIS_PASSWORD") { print "# REDIS_PASSWORD: never here; use the credential."; print ""; return }
        print "#" name "=" def; print ""
      }
      /^ *--?[a-zA-Z]/ { flush(); block = ""; next }
      { block = block " " $0 }
      END { flush() }'
    echo "# OpenTelemetry traces: off unless an endpoint is set (OTLP http/protobuf, e.g. http://127.0.0.1:4318)."
    echo "# The other standard OTEL_* variables apply too (see --help)."
    echo "#OTEL_EXPORTER_OTLP_ENDPOINT="
    echo "#OTEL_SERVICE_NAME=$1"
  } > "$here/env/$2"
done
