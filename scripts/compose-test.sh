#!/usr/bin/env bash
# End-to-end test of compose.yaml on a real container engine: builds the images, brings the stack
# up, waits on its healthchecks, drives intents with `quantumctl sim`, and checks what a user
# would: every service healthy, plans for every allowlisted symbol, ledgers created, Prometheus
# scraping all three services by name and evaluating the symbol-diversity rule, the services
# running as their ACL users (a forbidden write refused), a SIGKILLed service restarted by its
# restart policy with nothing lost or doubled (`quantumctl check`). Then the cluster variant
# (deploy/compose/cluster.yaml): six Redis nodes joined into a 3+3 cluster, the services on it
# with two stream shards and ACLs, every invariant holding and both shards used. Then `down -v`.
#
# Engine: the one `docker info` reaches, else a private dockerd (own socket, data root, exec root
# and pid file), stopped by its pid and its leftovers removed at the end, pass or fail.
# Images: with a registry reachable, the real compose.yaml; without one, deploy/compose/offline.yaml
# on a Debian base made here with mmdebstrap (Grafana and Jaeger are left out then).
# Installs docker.io, docker-compose and mmdebstrap from the OS packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=quantum-compose-test
TIMEOUT=${COMPOSE_TEST_TIMEOUT:-240}
ALLOWLIST=(BTCUSDT ETHUSDT SOLUSDT ZECUSDT WAVESUSDT BNBUSDT XRPUSDT ADAUSDT DOGEUSDT LINKUSDT AVAXUSDT)
OPS_PW=$(cat deploy/compose/secrets/ops-redis-password)
BRIDGE_PW=$(cat deploy/compose/secrets/bridge-redis-password)

say() { printf 'compose-test: %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  say "installing ${missing[*]} ..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/quantum-compose-test.XXXXXX)
own_engine=false
offline=false
# The URL quantumctl reaches the stack's Redis by (the cluster phase changes it).
CTL_URL=redis://redis:6379/0
links_before=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sort || true)
files=(-f compose.yaml)

compose() { docker-compose -p "$PROJECT" "${files[@]}" "$@"; }

cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && docker info >/dev/null 2>&1; then
    say "logs of the failed run:"
    compose logs --no-color --tail 40 2>&1 | sed 's/^/  /'
  fi
  compose down -v --rmi local --remove-orphans >/dev/null 2>&1
  docker rmi localhost/debian-base >/dev/null 2>&1
  if $own_engine; then
    if [ -s "$work/docker.pid" ]; then
      local pid
      pid=$(cat "$work/docker.pid")
      kill "$pid" 2>/dev/null
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null
    fi
    # Leftovers of the private engine: its mounts, its bridge links, its files.
    findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^(br-|veth|docker0)'); do
      grep -qx "$link" <<<"$links_before" || ip link delete "$link" 2>/dev/null
    done
  fi
  rm -rf "$work" .compose-bin
  if [ "$rc" -eq 0 ]; then say "PASS (stack down, nothing left behind)"; fi
  exit "$rc"
}
trap cleanup EXIT

# The engine.
if ! docker info >/dev/null 2>&1; then
  say "no reachable engine: starting a private dockerd in $work"
  export DOCKER_HOST="unix://$work/docker.sock"
  dockerd --host "$DOCKER_HOST" --data-root "$work/data" --exec-root "$work/exec" \
    --pidfile "$work/docker.pid" --bridge=none --iptables=false --ip6tables=false \
    >"$work/dockerd.log" 2>&1 &
  own_engine=true
  for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
  docker info >/dev/null 2>&1 || { cat "$work/dockerd.log"; fail "dockerd did not start"; }
fi

# The images.
if timeout 30 docker pull -q redis:7.2 >/dev/null 2>&1; then
  say "registry reachable: running compose.yaml as users do"
else
  say "no registry reachable: deploy/compose/offline.yaml on a local Debian base; Grafana and Jaeger are left out of this run (no Debian package)"
  files+=(-f deploy/compose/offline.yaml)
  offline=true
  mmdebstrap --quiet --variant=minbase \
    --include=ca-certificates,curl,passwd,redis-server,redis-tools,prometheus \
    bookworm "$work/base.tar" >"$work/mmdebstrap.log" 2>&1 || { tail -20 "$work/mmdebstrap.log"; fail "mmdebstrap"; }
  docker import "$work/base.tar" localhost/debian-base >/dev/null
  rm -f "$work/base.tar"
  # The host's binaries (the test command has built them), without their debug info.
  profile=${QUANTUM_COMPOSE_PROFILE:-debug}
  [ -x "target/$profile/quantumctl" ] || cargo build --workspace --bins --locked
  mkdir -p .compose-bin
  for b in quantum-intent-bridge quantum-intent-executor quantum-ledger quantumctl; do
    objcopy --strip-debug "target/$profile/$b" ".compose-bin/$b"
  done
fi
compose build --quiet >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; fail "image build"; }

# Up, and wait on the healthchecks.
compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(compose ps -q "$1")" 2>/dev/null; }
wait_healthy() {
  local deadline=$((SECONDS + TIMEOUT))
  for service in "$@"; do
    until [ "$(health "$service")" = healthy ]; do
      [ $SECONDS -lt $deadline ] || fail "$service is $(health "$service"), not healthy, after ${TIMEOUT}s"
      sleep 1
    done
  done
}
wait_healthy redis bridge executor ledger
say "healthy: redis bridge executor ledger"

rcli() { compose exec -T redis redis-cli --no-auth-warning "$@"; }
ops() { rcli --user quantum-ops --pass "$OPS_PW" "$@"; }
ctl() {
  compose run --rm -T --no-deps --entrypoint quantumctl sim "$@" \
    --redis-url "$CTL_URL" --redis-username quantum-ops \
    --redis-password-file /run/secrets/ops-redis-password
}
wait_until() { # what, command...
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what not reached after ${TIMEOUT}s"
    sleep 1
  done
}

# Intents, and a service killed among them: restarted by its restart policy.
ctl sim --count 330 --rate 40 --format mixed --sell-every 3 >"$work/sim.log" 2>&1 &
sim_pid=$!
executor=$(compose ps -q executor)
sleep 3
kill -9 "$(docker inspect -f '{{.State.Pid}}' "$executor")"
say "SIGKILLed the executor's process"
restarted() { [ "$(docker inspect -f '{{.RestartCount}}' "$executor")" -ge 1 ]; }
wait_until "the executor restarted by its restart policy" restarted
wait_healthy executor
say "executor restarted ($(docker inspect -f '{{.RestartCount}}' "$executor") restart) and healthy"
wait "$sim_pid" || { cat "$work/sim.log"; fail "quantumctl sim"; }

plan_symbols() { ops XRANGE quantum:stream:apply.plan - + | grep -A1 -x symbol | grep -vx -e symbol -e -- | sort -u; }
every_symbol_planned() { [ "$(plan_symbols | grep -cxF -f <(printf '%s\n' "${ALLOWLIST[@]}"))" -eq ${#ALLOWLIST[@]} ]; }
wait_until "plans for every allowlisted symbol" every_symbol_planned
say "plans for all ${#ALLOWLIST[@]} allowlisted symbols"
ledgers() { for s in "${ALLOWLIST[@]}"; do [ "$(ops EXISTS "quantum:position:ledger:$s")" = 1 ] || return 1; done; }
wait_until "a ledger for every allowlisted symbol" ledgers
say "ledgers created for all ${#ALLOWLIST[@]} symbols"

# Nothing lost or doubled: stop the stack's own intent source, then the invariants.
compose stop sim >/dev/null 2>&1
ctl check --wait 120 >"$work/check.log" 2>&1 || { cat "$work/check.log"; fail "exactly-once invariants"; }
grep -E "^(flow|PASS|FAIL|not idle)" "$work/check.log" | sed 's/^/  /'

# Prometheus, by its HTTP API: the three services up (scraped by name), the diversity rule read.
prom() { compose exec -T prometheus curl -fsS --get "http://127.0.0.1:9090/api/v1/query" --data-urlencode "query=$1"; }
all_up() { [ "$(prom 'count(up{job=~"quantum-.*"} == 1)' | grep -o '"value":\[[^]]*"3"\]' || true)" != "" ]; }
wait_until "Prometheus sees up=1 for the three services" all_up
say "Prometheus: up=1 for quantum-intent-bridge, quantum-intent-executor, quantum-ledger"
diversity() { prom 'quantum:plan_symbols:5m' | grep '"value":\[[^]]*"[1-9][0-9]*"\]' >/dev/null; }
wait_until "Prometheus evaluating the symbol-diversity rule" diversity
say "Prometheus: quantum:plan_symbols:5m = $(prom 'quantum:plan_symbols:5m' | grep -o '"value":\[[^]]*\]' | head -1)"

# The ACL users: the services log in as theirs, the default user is off, a forbidden write fails.
for s in bridge executor ledger; do
  compose logs --no-color "$s" >"$work/$s.log" 2>&1
  grep -q "Redis: redis://redis:6379/0 as quantum-$s" "$work/$s.log" || fail "$s does not log in as quantum-$s"
done
unauthenticated=$(rcli PING 2>&1 || true)
grep -q NOAUTH <<<"$unauthenticated" || fail "the default user is not off: PING answered $unauthenticated"
denied=$(rcli --user quantum-bridge --pass "$BRIDGE_PW" HSET quantum:position:ledger:BTCUSDT position_amt 999 2>&1)
grep -q NOPERM <<<"$denied" || fail "the bridge could write a ledger: $denied"
say "services run as their ACL users; the bridge's write to a ledger is refused (NOPERM)"

# --- The cluster variant (deploy/compose/cluster.yaml): the same pipeline on a 3+3 Redis
# Cluster, two stream shards, every commit waiting for a replica, ACLs on every node. ---------
compose down -v --remove-orphans >/dev/null 2>&1
files+=(-f deploy/compose/cluster.yaml)
if $offline; then export REDIS_IMAGE=localhost/debian-base; fi
CTL_URL="redis-cluster://redis:6379?node=redis-2:6379&node=redis-3:6379"
compose up -d >"$work/up-cluster.log" 2>&1 || { cat "$work/up-cluster.log"; fail "compose up (cluster)"; }
wait_healthy redis redis-2 redis-3 redis-4 redis-5 redis-6 bridge executor ledger
compose logs --no-color redis-cluster >"$work/redis-cluster.log" 2>&1
grep -q "cluster ok: 3 primaries, 3 replicas" "$work/redis-cluster.log" || fail "the cluster was not joined"
say "cluster: 3 primaries and 3 replicas joined; bridge, executor and ledger healthy on it"
compose stop sim >/dev/null 2>&1
ctl sim --count 200 --rate 50 --format mixed --sell-every 3 >"$work/sim-cluster.log" 2>&1 || { cat "$work/sim-cluster.log"; fail "quantumctl sim (cluster)"; }
ctl check --wait 120 >"$work/check-cluster.log" 2>&1 || { cat "$work/check-cluster.log"; fail "exactly-once invariants (cluster)"; }
grep -E "^(flow|shards|PASS|FAIL|not idle)" "$work/check-cluster.log" | sed 's/^/  /'
# Both shards of each per-symbol stream carried entries.
shards=$(grep "^shards: " "$work/check-cluster.log" || true)
for stream in apply.plan apply.result ledger.commit; do
  for name in "quantum:stream:$stream" "quantum:stream:$stream:1"; do
    grep -Eq "(: |, )$name [1-9]" <<<"$shards" || fail "$name carried no entry: ${shards:-no shards line}"
  done
done
for s in bridge executor ledger; do
  compose logs --no-color "$s" >"$work/$s-cluster.log" 2>&1
  grep -q "Stream shards: 2" "$work/$s-cluster.log" || fail "$s does not run two stream shards"
done
say "cluster: every invariant holds, both shards of apply.plan, apply.result and ledger.commit used"
