#!/usr/bin/env bash
# The relay's memory while it drains a backlog of N events (default 1,000,000): VmHWM one second after start
# and after the drain. Uses the Release binaries that scripts/bench.sh builds in build-release/.
#   bench/backlog_memory.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
B=build-release
work=$(mktemp -d /tmp/ar-million.XXXXXX); chmod 755 "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; scripts/pg-cluster.sh stop "$work/pg" >/dev/null 2>&1 || true' EXIT
server=$(scripts/pg-cluster.sh start "$work/pg")
psql -q "$server" -c "CREATE DATABASE m" >/dev/null
db="${server%/postgres}/m"
for f in sql/canvas/*.sql; do psql -q -v ON_ERROR_STOP=1 "$db" -f "$f" >/dev/null; done
APPOINTMENT_RELAY_DATABASE_URL="$db" $B/appointment-relay migrate >/dev/null
t0=$(date +%s)
$B/bench/bench_producer backlog --db "$db" --events "$N"
echo "inserted in $(( $(date +%s) - t0 )) s"
psql -q "$db" -c "VACUUM ANALYZE" >/dev/null
$B/appointment-relay-receiver --listen 127.0.0.1:0 --quiet >"$work/rx.out" 2>&1 &
for _ in $(seq 1 100); do grep -q listening "$work/rx.out" && break; sleep 0.05; done
port=$(sed -n 's/.* port \([0-9]*\)$/\1/p' "$work/rx.out")
APPOINTMENT_RELAY_DATABASE_URL="$db" APPOINTMENT_RELAY_ENDPOINT_URL="http://127.0.0.1:$port/" \
APPOINTMENT_RELAY_ADMIN_LISTEN="" APPOINTMENT_RELAY_LOG_LEVEL=warn $B/appointment-relay run >"$work/relay.log" 2>&1 &
rp=$!
sleep 1
echo "VmHWM after 1 s: $(grep VmHWM /proc/$rp/status)"
t0=$(date +%s)
while :; do
  n=$(psql -qtA "$db" -c "SELECT count(*) FROM appointment_relay.delivery WHERE state = 'delivered'")
  [ "$n" -ge "$N" ] && break
  [ $(( $(date +%s) - t0 )) -gt 600 ] && { echo "timeout at $n"; break; }
  sleep 2
done
echo "delivered $n in $(( $(date +%s) - t0 )) s; $(grep -E 'VmHWM|VmRSS' /proc/$rp/status | tr '\n' ' ')"
kill -TERM $rp; wait $rp || true
