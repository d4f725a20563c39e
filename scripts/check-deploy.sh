#!/usr/bin/env bash
# Checks of what deploy/ ships (ctest label "deploy": tests/deploy/CMakeLists.txt runs each subcommand):
#   check-deploy.sh npm-ci CACHE
#       installs deploy/kubernetes/validate's locked npm packages into CACHE (a build dir, not the tree);
#       again only when package.json or package-lock.json changed
#   check-deploy.sh rules
#       promtool check rules + promtool test rules; every alert has a test and a runbook section in
#       deploy/README.md
#   check-deploy.sh metrics CACHE RELAY RECEIVER
#       the dashboard parses, and every metric the dashboard and the rules use is exported by a live relay:
#       RELAY runs against a scratch database of the test PostgreSQL (APPOINTMENT_RELAY_TEST_DATABASE_URL)
#       with two endpoints on RECEIVER, one of which refuses its signature, delivers one appointment to the
#       first and dead-letters it on the second, and its /metrics is scraped
#   check-deploy.sh kubernetes CACHE [RELAY]
#       kubectl kustomize deploy/kubernetes, every rendered object validated offline against the Kubernetes
#       schemas (deploy/kubernetes/validate), and RELAY's check-config on the rendered ConfigMap and Secret
# APPOINTMENT_RELAY_TEST_BINARY, when set, is the relay (and the receiver beside it, when there is one).
# A missing tool or test database skips (exit 77), or fails when APPOINTMENT_RELAY_TEST_REQUIRE_DB=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
validate_dir=deploy/kubernetes/validate
dashboard=deploy/grafana/appointment-relay.json
rules=deploy/prometheus/alerts.yml
rules_test=deploy/prometheus/alerts_test.yml

log() { echo "check-deploy: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
unavailable() {  # what is missing
  if [ "${APPOINTMENT_RELAY_TEST_REQUIRE_DB:-}" = 1 ]; then fail "$1 (scripts/install-deps.sh installs it)"; fi
  log "skipped: $1"
  exit 77
}
need() {  # tool, the Debian package that has it
  command -v "$1" >/dev/null 2>&1 || unavailable "no $1 (Debian package $2)"
}
node_modules() {  # cache: the packages npm-ci installed there
  [ -d "$1/node_modules/kubernetes-models" ] || fail "no npm packages in $1: run check-deploy.sh npm-ci $1 first"
  echo "$1/node_modules"
}

npm_ci() {
  local cache=${1:?usage: check-deploy.sh npm-ci CACHE} want
  need node nodejs
  need npm npm
  mkdir -p "$cache"
  cache=$(cd "$cache" && pwd)
  want=$(cat "$validate_dir/package.json" "$validate_dir/package-lock.json" | sha256sum | cut -d' ' -f1)
  if [ -d "$cache/node_modules" ] && [ "$(cat "$cache/.installed" 2>/dev/null)" = "$want" ]; then
    log "npm packages in $cache are up to date"
    return 0
  fi
  rm -f "$cache/.installed"
  cp "$validate_dir/package.json" "$validate_dir/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci in $cache"
  echo "$want" >"$cache/.installed"
  log "npm packages installed in $cache"
}

check_rules() {
  need promtool prometheus
  promtool check rules "$rules" || fail "promtool check rules $rules"
  promtool test rules "$rules_test" || fail "promtool test rules $rules_test"
  # Every alert: a unit test, the runbook annotation pointing at its section, and the section.
  local alerts missing=0 a anchor
  alerts=$(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$rules")
  [ -n "$alerts" ] || fail "no alert found in $rules"
  for a in $alerts; do
    anchor=$(echo "$a" | tr '[:upper:]' '[:lower:]')
    grep -Eq "^ *alertname: *$a *$" "$rules_test" || { log "$a: no test in $rules_test"; missing=1; }
    grep -q "runbook: \"deploy/README.md#$anchor\"" "$rules" || { log "$a: no runbook annotation #$anchor"; missing=1; }
    grep -q "^### $a\$" deploy/README.md || { log "$a: no section \"### $a\" in deploy/README.md"; missing=1; }
  done
  [ $missing -eq 0 ] || fail "alerts without a test, runbook annotation or runbook section"
  log "$(echo "$alerts" | wc -w) alerts: rules valid, unit tests passed, each tested and in the runbook"
}

check_metrics() {
  local cache=${1:?usage: check-deploy.sh metrics CACHE RELAY RECEIVER} relay=${2:?relay} receiver=${3:?receiver}
  if [ -n "${APPOINTMENT_RELAY_TEST_BINARY:-}" ]; then
    relay=$APPOINTMENT_RELAY_TEST_BINARY
    [ -x "$(dirname "$relay")/appointment-relay-receiver" ] && receiver=$(dirname "$relay")/appointment-relay-receiver
  fi
  need node nodejs
  need psql postgresql-client
  need curl curl
  [ -n "${APPOINTMENT_RELAY_TEST_DATABASE_URL:-}" ] || unavailable "APPOINTMENT_RELAY_TEST_DATABASE_URL is not set"
  local modules
  modules=$(node_modules "$cache")
  node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$dashboard" \
    || fail "$dashboard is not valid JSON"

  # Not local: the EXIT trap uses them after this function has returned.
  work=$(mktemp -d /tmp/appointment-relay-deploy.XXXXXX)
  db=ar_deploy_$$
  admin_url=$APPOINTMENT_RELAY_TEST_DATABASE_URL
  url=$(echo "$admin_url" | sed -E "s#^([a-z]+://[^/]*)/[^?]*#\1/$db#")
  relay_pid="" receiver_pid=""
  # shellcheck disable=SC2317  # called by the trap
  cleanup() {
    local p
    for p in $relay_pid $receiver_pid; do
      if kill "$p" 2>/dev/null; then wait "$p" 2>/dev/null || true; fi
    done
    psql -q "$admin_url" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$db'" \
      -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  psql -q -v ON_ERROR_STOP=1 "$admin_url" -c "CREATE DATABASE $db" >/dev/null
  for f in sql/canvas/*.sql; do psql -q -v ON_ERROR_STOP=1 "$url" -f "$f" >/dev/null; done
  APPOINTMENT_RELAY_DATABASE_URL=$url APPOINTMENT_RELAY_SQL_DIR=$root/sql APPOINTMENT_RELAY_LOG_LEVEL=warn \
    "$relay" migrate >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log" >&2; fail "migrate"; }

  local secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw port="" admin=""
  "$receiver" --listen 127.0.0.1:0 --secret "$secret" --quiet >"$work/receiver.out" 2>&1 &
  receiver_pid=$!
  for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on .* port \([0-9]*\).*/\1/p' "$work/receiver.out")
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { cat "$work/receiver.out" >&2; fail "the receiver did not start"; }
  # "refused" signs with another secret: the receiver answers 401, a dead letter at the first attempt.
  cat >"$work/relay.toml" <<EOF
[database]
poll_interval = "200ms"
leader_lease = "300ms"
[retry]
base_delay = "50ms"
max_delay = "200ms"
[admin]
listen = "127.0.0.1:0"
[endpoints.accepted]
url = "http://127.0.0.1:$port/canvas"
secrets = ["$secret"]
[endpoints.refused]
url = "http://127.0.0.1:$port/canvas"
secrets = ["whsec_Y2hhbmdlIG1lIQ=="]
EOF
  APPOINTMENT_RELAY_DATABASE_URL=$url APPOINTMENT_RELAY_SQL_DIR=$root/sql \
    "$relay" run --config "$work/relay.toml" >"$work/relay.log" 2>&1 &
  relay_pid=$!
  for _ in $(seq 1 200); do
    grep -q 'this instance is active' "$work/relay.log" && break
    kill -0 "$relay_pid" 2>/dev/null || break
    sleep 0.1
  done
  admin=$(sed -n 's/.*admin server on .* port \([0-9]*\).*/\1/p' "$work/relay.log" | head -n 1)
  grep -q 'this instance is active' "$work/relay.log" && [ -n "$admin" ] \
    || { tail -n 20 "$work/relay.log" >&2; fail "the relay did not become active"; }
  psql -q -v ON_ERROR_STOP=1 "$url" \
    -c "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + interval '1 day', 30)" >/dev/null
  # Until the per-endpoint series are there: a delivery to one endpoint, a dead letter on the other.
  local scrape=$work/metrics.txt
  for _ in $(seq 1 300); do
    curl -sf --max-time 2 "http://127.0.0.1:$admin/metrics" >"$scrape" || true
    grep -q '^appointment_relay_events_delivered_total{endpoint="accepted"' "$scrape" \
      && grep -q '^appointment_relay_dead_letters_total{endpoint="refused"' "$scrape" && break
    sleep 0.1
  done
  grep -q '^appointment_relay_events_delivered_total{endpoint="accepted"' "$scrape" \
    && grep -q '^appointment_relay_dead_letters_total{endpoint="refused"' "$scrape" \
    || { tail -n 20 "$work/relay.log" >&2; cat "$scrape" >&2; fail "no delivery and dead letter within 30 s"; }
  # The backlog gauges are read from the database once per poll interval (200 ms here).
  for _ in $(seq 1 30); do
    grep -q '^appointment_relay_backlog_events{' "$scrape" && break
    sleep 0.1
    curl -sf --max-time 2 "http://127.0.0.1:$admin/metrics" >"$scrape" || true
  done
  NODE_PATH=$modules node tests/deploy/metric_names.cjs --check "$scrape" "$dashboard" "$rules" \
    || fail "the dashboard or the rules use metrics that the relay does not export (above)"
}

check_kubernetes() {
  local cache=${1:?usage: check-deploy.sh kubernetes CACHE [RELAY]} relay=${2:-}
  [ -n "${APPOINTMENT_RELAY_TEST_BINARY:-}" ] && relay=$APPOINTMENT_RELAY_TEST_BINARY
  need kubectl "kubernetes-client (or kubectl)"
  need node nodejs
  local modules work
  modules=$(node_modules "$cache")
  work=$(mktemp -d /tmp/appointment-relay-deploy.XXXXXX)
  # shellcheck disable=SC2064  # expanded now, on purpose
  trap "rm -rf '$work'" EXIT
  kubectl kustomize deploy/kubernetes >"$work/rendered.yaml" 2>"$work/kustomize.err" \
    || { cat "$work/kustomize.err" >&2; fail "kubectl kustomize deploy/kubernetes"; }
  NODE_PATH=$modules node "$validate_dir/validate.cjs" "$work/rendered.yaml" --extract "$work/extracted" \
    || fail "the rendered manifests are not valid (above)"
  if [ -n "$relay" ]; then
    # The container's view: the ConfigMap's file and the Secret's variables, nothing else.
    local vars=() line
    while IFS= read -r line; do vars+=("$line"); done <"$work/extracted/env"
    # The admin token is the Secret's key admin-token mounted as a file: here, a file of the same content.
    local token
    token=$(sed -n 's/^ *admin-token: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$work/rendered.yaml" | head -n 1)
    [ -n "$token" ] || fail "the Secret has no admin-token"
    (umask 077 && printf '%s\n' "$token" >"$work/admin-token")
    sed -i "s#/run/secrets/appointment-relay/admin-token#$work/admin-token#" "$work/extracted/appointment-relay.toml"
    env -i PATH=/usr/bin:/bin "${vars[@]}" "$relay" check-config --config "$work/extracted/appointment-relay.toml" \
      >"$work/check-config.out" 2>&1 || { cat "$work/check-config.out" >&2; fail "check-config of the ConfigMap"; }
    log "check-config accepts the ConfigMap's appointment-relay.toml with the Secret's variables"
  fi
}

case "${1:-}" in
npm-ci) npm_ci "${@:2}" ;;
rules) check_rules ;;
metrics) check_metrics "${@:2}" ;;
kubernetes) check_kubernetes "${@:2}" ;;
*) echo "usage: scripts/check-deploy.sh npm-ci CACHE | rules | metrics CACHE RELAY RECEIVER | kubernetes CACHE [RELAY]" >&2; exit 2 ;;
esac
