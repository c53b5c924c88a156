#!/usr/bin/env bash
# Operators' proof that the ledger-gate fix is live: seven checks over the bridge's log and
# the apply.plan stream. Exits 0 only when every check passes; otherwise exits 1 and names
# the failed checks.
#
# Usage: proof_intent_bridge_ledger_gate.sh [--log-file FILE | --unit UNIT] [--since WHEN]
#                                           [--min-symbols N] [--count N]
#   --log-file FILE   read the bridge's log from FILE
#   --unit UNIT       read it from journald (default when the unit is known to systemd:
#                     quantum-intent-bridge)
#   --since WHEN      journald time window (default: "24 hours ago")
#   --min-symbols N   symbol diversity needed in the last plans (default 2)
#   --count N         how many recent plans to inspect (default 200; per shard of apply.plan
#                     when the pipeline runs with STREAM_SHARDS > 1)
# Redis: REDIS_URL, or REDIS_HOST / REDIS_PORT / REDIS_DB (defaults 127.0.0.1 / 6379 / 0).
# With quantumctl installed (or QUANTUMCTL=<path>), it also prints the bridge's outcomes by reason
# and, for each allowlisted symbol without an EXECUTE plan, the `quantumctl why` verdict.
set -u -o pipefail

LOG_FILE=""
UNIT="quantum-intent-bridge"
UNIT_GIVEN=0
SINCE="24 hours ago"
MIN_SYMBOLS="${PROOF_MIN_SYMBOLS:-2}"
COUNT=200
BUILD_TAG="intent-bridge-ledger-open-v1"
PLAN_STREAM="quantum:stream:apply.plan"
LEDGER_PREFIX="quantum:position:ledger:"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --log-file) LOG_FILE="${2:-}"; shift 2 ;;
    --unit) UNIT="${2:-}"; UNIT_GIVEN=1; shift 2 ;;
    --since) SINCE="${2:-}"; shift 2 ;;
    --min-symbols) MIN_SYMBOLS="${2:-}"; shift 2 ;;
    --count) COUNT="${2:-}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

if ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-cli not found (apt-get install redis-tools)" >&2
  exit 2
fi
if [ -n "${REDIS_URL:-}" ]; then
  RCLI=(redis-cli --no-auth-warning -u "$REDIS_URL")
else
  RCLI=(redis-cli -h "${REDIS_HOST:-127.0.0.1}" -p "${REDIS_PORT:-6379}" -n "${REDIS_DB:-0}")
fi
rcli() { "${RCLI[@]}" "$@"; }

# --- the bridge's log -------------------------------------------------------------------
LOG_TEXT=""
if [ -n "$LOG_FILE" ]; then
  if [ ! -r "$LOG_FILE" ]; then echo "cannot read log file $LOG_FILE" >&2; exit 2; fi
  LOG_TEXT=$(cat "$LOG_FILE")
  LOG_SOURCE="file $LOG_FILE"
elif command -v journalctl >/dev/null 2>&1 && { [ "$UNIT_GIVEN" = 1 ] || systemctl cat "$UNIT" >/dev/null 2>&1; }; then
  LOG_TEXT=$(journalctl -u "$UNIT" --since "$SINCE" --no-pager -o cat 2>/dev/null)
  LOG_SOURCE="journald unit $UNIT since '$SINCE'"
else
  echo "no log source: pass --log-file FILE, or run the bridge under systemd (unit $UNIT)" >&2
  exit 2
fi
if ! rcli PING >/dev/null 2>&1; then
  echo "Redis is not reachable (REDIS_URL / REDIS_HOST / REDIS_PORT)" >&2
  exit 2
fi

# STREAM_SHARDS: apply.plan is split by symbol into this many streams (shard i > 0 is
# "$PLAN_STREAM:i"); the checks read every shard's recent plans together.
SHARDS=$(rcli GET quantum:config:stream_shards 2>/dev/null || true)
case "$SHARDS" in ''|*[!0-9]*|0) SHARDS=1 ;; esac
PLAN_STREAMS=("$PLAN_STREAM")
for ((i = 1; i < SHARDS; i++)); do PLAN_STREAMS+=("$PLAN_STREAM:$i"); done

echo "Intent bridge ledger-gate proof"
echo "  log:   $LOG_SOURCE"
if [ "$SHARDS" -gt 1 ]; then
  echo "  plans: last $COUNT of each of the $SHARDS shards of $PLAN_STREAM (STREAM_SHARDS=$SHARDS)"
else
  echo "  plans: last $COUNT of $PLAN_STREAM"
fi
echo

# Recent plans as "SYMBOL SIDE DECISION" lines. redis-cli prints one value per line: an entry
# id, then field/value pairs; plan entries always start with plan_id.
PLANS=$(for stream in "${PLAN_STREAMS[@]}"; do rcli XREVRANGE "$stream" + - COUNT "$COUNT"; done | awk '
  { line[NR] = $0 }
  END {
    i = 1
    while (i <= NR) {
      if (line[i] ~ /^[0-9]+-[0-9]+$/ && line[i + 1] == "plan_id") {
        if (sym != "") print sym, side, dec
        sym = ""; side = ""; dec = ""; i++; continue
      }
      k = line[i]; v = line[i + 1]
      if (k == "symbol") sym = v; else if (k == "side") side = v; else if (k == "decision") dec = v
      i += 2
    }
    if (sym != "") print sym, side, dec
  }')

count_lines() { if [ -z "$1" ]; then echo 0; else printf '%s\n' "$1" | grep -c "$2"; fi; }

FAILED=()
N=0
check() { # check NAME PASS(0/1) DETAIL
  N=$((N + 1))
  if [ "$2" = 0 ]; then
    printf '[%d/7] PASS  %s: %s\n' "$N" "$1" "$3"
  else
    printf '[%d/7] FAIL  %s: %s\n' "$N" "$1" "$3"
    FAILED+=("$N ($1)")
  fi
}

# 1. build tag
if printf '%s\n' "$LOG_TEXT" | grep -qF "[$BUILD_TAG]"; then
  check "build tag" 0 "$BUILD_TAG logged"
else
  check "build tag" 1 "no 'Intent Bridge ... [$BUILD_TAG]' line: the fixed build is not running"
fi

# 2. require-ledger-for-open is false (the most recent start decides)
LAST_MODE=$(printf '%s\n' "$LOG_TEXT" | grep -o 'Require ledger for OPEN: [A-Za-z]*' | tail -n 1 | awk '{print $NF}')
if [ "$(printf '%s' "$LAST_MODE" | tr 'A-Z' 'a-z')" = "false" ]; then
  check "require ledger for OPEN" 0 "false (default mode)"
else
  check "require ledger for OPEN" 1 "last start logged '${LAST_MODE:-nothing}', expected false"
fi

# 3. LEDGER_MISSING_OPEN lines
MISSING_OPEN=$(count_lines "$LOG_TEXT" "LEDGER_MISSING_OPEN allowed: symbol=")
if [ "$MISSING_OPEN" -gt 0 ]; then
  check "LEDGER_MISSING_OPEN" 0 "$MISSING_OPEN opening BUYs published without a ledger"
else
  check "LEDGER_MISSING_OPEN" 1 "no 'LEDGER_MISSING_OPEN allowed' lines: new symbols are not opening"
fi

# 4. BUY plans in apply.plan
BUYS=$(count_lines "$PLANS" " BUY ")
if [ "$BUYS" -gt 0 ]; then
  check "BUY plans" 0 "$BUYS BUY plans in the last $COUNT"
else
  check "BUY plans" 1 "no BUY plan in the last $COUNT plans"
fi

# 5. SELLs stay blocked without a ledger: every SELL plan's symbol has a ledger
SELL_SKIPS=$(count_lines "$LOG_TEXT" "SELL but ledger unknown")
BAD_SELLS=""
for sym in $(printf '%s\n' "$PLANS" | awk '$2 == "SELL" {print $1}' | sort -u); do
  if [ "$(rcli EXISTS "$LEDGER_PREFIX$sym")" != "1" ]; then BAD_SELLS="$BAD_SELLS $sym"; fi
done
if [ -z "$BAD_SELLS" ]; then
  check "SELL blocked without ledger" 0 "every SELL plan has a ledger; $SELL_SKIPS SELLs skipped for missing ledger"
else
  check "SELL blocked without ledger" 1 "SELL plans published for symbols with no ledger:$BAD_SELLS"
fi

# 6. symbol diversity
DISTINCT=$(printf '%s\n' "$PLANS" | awk 'NF {print $1}' | sort -u | grep -c . || true)
SYMS=$(printf '%s\n' "$PLANS" | awk 'NF {print $1}' | sort | uniq -c | sort -rn | awk '{printf "%s%s=%s", sep, $2, $1; sep=","}')
if [ "$DISTINCT" -ge "$MIN_SYMBOLS" ]; then
  check "symbol diversity" 0 "$DISTINCT symbols in the last $COUNT plans ($SYMS)"
else
  check "symbol diversity" 1 "$DISTINCT symbols in the last $COUNT plans, need $MIN_SYMBOLS (${SYMS:-none})"
fi

# 7. EXECUTE vs BLOCKED
EXECUTE=$(printf '%s\n' "$PLANS" | awk '$3 == "EXECUTE"' | grep -c . || true)
BLOCKED=$(printf '%s\n' "$PLANS" | awk '$3 == "BLOCKED"' | grep -c . || true)
if [ "$EXECUTE" -gt 0 ]; then
  check "EXECUTE vs BLOCKED" 0 "EXECUTE=$EXECUTE BLOCKED=$BLOCKED"
else
  check "EXECUTE vs BLOCKED" 1 "EXECUTE=0 BLOCKED=$BLOCKED: nothing is being executed"
fi

# --- explanations (quantumctl status / why, when quantumctl is installed) -------------------
# The same answers the grep recipes in docs/operations.md give, one command each.
QCTL="${QUANTUMCTL:-$(command -v quantumctl || true)}"
if [ -n "$QCTL" ]; then
  echo
  "$QCTL" status 2>/dev/null | sed -n '/^BRIDGE OUTCOMES/,/^$/p' | sed '/^$/d'
  ALLOW=$(rcli HGET quantum:config:intent_bridge allowlist 2>/dev/null | tr ',' ' ')
  QUIET=""
  for sym in $ALLOW; do
    printf '%s\n' "$PLANS" | awk -v s="$sym" '$1 == s && $3 == "EXECUTE" {found=1} END {exit !found}' || QUIET="$QUIET $sym"
  done
  if [ -n "$QUIET" ]; then
    echo "Allowlisted symbols without an EXECUTE plan in the last $COUNT (quantumctl why <SYMBOL>):"
    for sym in $QUIET; do "$QCTL" why "$sym" 2>/dev/null | tail -n 1 | sed 's/^/  /'; done
  fi
fi

echo
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "PROOF PASSED: 7/7 checks"
  exit 0
fi
echo "PROOF FAILED: $((7 - ${#FAILED[@]}))/7 checks passed; failed: ${FAILED[*]}"
exit 1
