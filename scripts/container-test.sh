#!/usr/bin/env bash
# Builds the image with podman and runs the relay in it against a throwaway PostgreSQL on the host
# (host network): migrate, then run, with the demo receiver on the host; checks that a booked appointment
# arrives signed and that the container reports healthy. Takes minutes: not part of scripts/test.sh.
# Needs ../shared/tools/container-setup.sh (or Docker-compatible podman) once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=${IMAGE:-appointment-relay:test}
# Docker image format: the OCI format has no HEALTHCHECK.
podman build --format docker -f docker/Dockerfile -t "$image" .

work=$(mktemp -d /tmp/appointment-relay-container.XXXXXX)
chmod 755 "$work"
name=appointment-relay-test-$$
cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  [ -n "${receiver:-}" ] && kill "$receiver" 2>/dev/null || true
  scripts/pg-cluster.sh stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
server=$(scripts/pg-cluster.sh start "$work/pg")
psql -q "$server" -c "CREATE DATABASE canvas" >/dev/null
db="${server%/postgres}/canvas"
for f in sql/canvas/*.sql; do psql -q -v ON_ERROR_STOP=1 "$db" -f "$f" >/dev/null; done

secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
podman run --rm --entrypoint appointment-relay-receiver "$image" --help >/dev/null
podman run --rm -e APPOINTMENT_RELAY_DATABASE_URL="$db" "$image" migrate
podman run -d --name "$name-rx" --entrypoint appointment-relay-receiver "$image" \
  --listen 127.0.0.1:0 --secret "$secret" >/dev/null
trap 'podman rm -f "$name-rx" >/dev/null 2>&1 || true; cleanup' EXIT
for _ in $(seq 1 100); do podman logs "$name-rx" 2>&1 | grep -q listening && break; sleep 0.1; done
port=$(podman logs "$name-rx" 2>&1 | sed -n 's/.* port \([0-9]*\)$/\1/p' | head -n 1)
admin_port=$((20000 + RANDOM % 20000))
podman run -d --name "$name" -e APPOINTMENT_RELAY_DATABASE_URL="$db" \
  -e APPOINTMENT_RELAY_ENDPOINT_URL="http://127.0.0.1:$port/canvas" -e APPOINTMENT_RELAY_SIGNING_SECRET="$secret" \
  -e APPOINTMENT_RELAY_ADMIN_LISTEN="127.0.0.1:$admin_port" "$image" run >/dev/null
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
psql -qtA "$db" -c "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)" >/dev/null
for _ in $(seq 1 100); do podman logs "$name-rx" 2>&1 | grep -q 'signature ok' && break; sleep 0.1; done
podman logs "$name-rx" 2>&1 | grep 'signature ok'
podman healthcheck run "$name" || { echo "container-test: the HEALTHCHECK failed" >&2; exit 1; }
echo "container healthy"
podman stop -t 15 "$name" >/dev/null
podman logs "$name" 2>&1 | tail -n 3
echo "container-test: ok"
