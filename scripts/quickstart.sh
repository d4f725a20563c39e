#!/usr/bin/env bash
# The whole relay working on a fresh Debian 12 machine, in a few minutes:
# installs the dependencies, builds, starts a throwaway PostgreSQL with the Canvas demo schema, migrates,
# starts the relay and the demo receiver, plays one patient's appointment life and shows the six payloads
# the receiver got (with their signatures checked). Stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Installing the dependencies (apt-get; nothing when they are there)"
scripts/install-deps.sh

say "Building (Release) into build-quickstart/"
cmake -S . -B build-quickstart -G Ninja -DCMAKE_BUILD_TYPE=Release -DAPPOINTMENT_RELAY_TESTS=OFF \
  -DAPPOINTMENT_RELAY_BENCH=OFF >/dev/null
cmake --build build-quickstart -j "$(nproc)" --target appointment-relay appointment-relay-receiver | tail -n 1
bin=build-quickstart

work=$(mktemp -d /tmp/appointment-relay-quickstart.XXXXXX)
chmod 755 "$work"  # the postgres user reaches its data directory inside
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg-cluster.sh stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Starting a throwaway PostgreSQL with the Canvas demo schema"
server=$(scripts/pg-cluster.sh start "$work/pg")
psql -q "$server" -c "CREATE DATABASE canvas" >/dev/null
db="${server%/postgres}/canvas"
for f in sql/canvas/*.sql; do psql -q -v ON_ERROR_STOP=1 "$db" -f "$f" >/dev/null; done
echo "database: $db"

say "appointment-relay migrate"
APPOINTMENT_RELAY_DATABASE_URL="$db" "$bin/appointment-relay" migrate

secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
say "Starting the demo receiver (checks every signature with the endpoint's secret)"
"$bin/appointment-relay-receiver" --listen 127.0.0.1:0 --secret "$secret" >"$work/receiver.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q 'listening' "$work/receiver.out" 2>/dev/null && break; sleep 0.05; done
port=$(sed -n 's/.* port \([0-9]*\)$/\1/p' "$work/receiver.out" | head -n 1)
echo "receiver: http://127.0.0.1:$port/canvas/appointments"

say "Starting the relay: appointment-relay run"
APPOINTMENT_RELAY_DATABASE_URL="$db" \
APPOINTMENT_RELAY_ENDPOINT_URL="http://127.0.0.1:$port/canvas/appointments" \
APPOINTMENT_RELAY_SIGNING_SECRET="$secret" \
APPOINTMENT_RELAY_ADMIN_LISTEN="127.0.0.1:0" \
  "$bin/appointment-relay" run >"$work/relay.log" 2>&1 &
pids+=($!)
# Active after database.leader_lease (5 s): a new leader waits that long before it sends (fencing).
for _ in $(seq 1 600); do grep -q 'this instance is active' "$work/relay.log" 2>/dev/null && break; sleep 0.05; done
sed 's/^/  relay | /' "$work/relay.log" | head -n 6

sql() { psql -qtA -v ON_ERROR_STOP=1 "$db" -c "$1"; }
say "Playing one patient's appointment life in the Canvas tables"
patient=$(sql "SELECT canvas_test.create_patient()")
first=$(sql "SELECT canvas_test.book_appointment($patient, '2021-12-24 21:30:00+00', 30)")
echo "booked appointment $first for patient $patient"
second=$(sql "SELECT canvas_test.reschedule($first, '2021-12-27 15:00:00+00', 45)")
echo "rescheduled: new appointment row $second"
sql "SELECT canvas_test.cancel($second)" >/dev/null && echo "cancelled"
sql "SELECT canvas_test.restore($second)" >/dev/null && echo "restored (reverted)"
sql "SELECT canvas_test.no_show($second)" >/dev/null && echo "marked no-show"
sql "SELECT canvas_test.check_in($second)" >/dev/null && echo "checked in"

say "What the receiver got"
for _ in $(seq 1 200); do [ "$(grep -c '^received' "$work/receiver.out")" -ge 6 ] && break; sleep 0.05; done
grep '^received' "$work/receiver.out" || true
got=$(grep -c '^received.*(signature ok)' "$work/receiver.out" || true)
say "The relay's log"
sed 's/^/  relay | /' "$work/relay.log"
if [ "$got" -ne 6 ]; then
  echo "quickstart: expected 6 signed payloads, got $got" >&2
  exit 1
fi
say "Done: 6 payloads delivered and verified; everything started is now stopped"
