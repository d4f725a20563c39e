#!/usr/bin/env bash
# Builds the image with podman and runs the relay in it against a throwaway PostgreSQL on the host
# (host network): migrate, then run, with the demo receiver on the host; checks that a booked appointment
# arrives signed and that the container reports healthy (its HEALTHCHECK is `appointment-relay health`).
# Then builds the Debian package (scripts/package.sh) and installs it with apt in a clean debian:bookworm-slim
# container: `version`, `check-config` of the installed sample, `migrate` from the installed SQL, `health`
# against the running relay, and `systemd-analyze verify` of both installed units (with man-db, so that their
# Documentation= man pages must be installed too). Then the compose demo, docker/compose.yaml, brought up
# with podman-compose on the host's network: its database image (docker/postgres.Dockerfile, Debian's
# PostgreSQL), migrate, the relay and the demo receiver, which must get one appointment's six payloads; then
# down. Then the package's units under a real systemd: scripts/container-systemd-test.sh. Takes minutes: not
# part of scripts/test.sh.
# Needs ../shared/tools/container-setup.sh (or Docker-compatible podman) once, and podman-compose.
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

echo "== the Debian package in a clean debian:bookworm-slim"
deb=$(scripts/package.sh | tail -n 1)
psql -q "$server" -c "CREATE DATABASE canvas_pkg" >/dev/null
pkg_db="${server%/postgres}/canvas_pkg"
for f in sql/canvas/*.sql; do psql -q -v ON_ERROR_STOP=1 "$pkg_db" -f "$f" >/dev/null; done
podman run --rm -v "$(dirname "$deb"):/pkg:ro" -e DEB="/pkg/$(basename "$deb")" \
  -e PKG_DB="$pkg_db" -e ADMIN="127.0.0.1:$admin_port" docker.io/library/debian:bookworm-slim bash -euo pipefail -c '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # The package alone first: its Depends must be enough to run it.
    apt-get install -y -q --no-install-recommends "$DEB" >/dev/null
    echo "installed: $(dpkg-query -W appointment-relay)"
    appointment-relay version
    appointment-relay check-config --config /etc/appointment-relay/appointment-relay.toml > /tmp/effective.toml
    head -n 1 /tmp/effective.toml
    test "$(stat -c %a /etc/appointment-relay/credentials)" = 700
    APPOINTMENT_RELAY_DATABASE_URL="$PKG_DB" appointment-relay migrate
    appointment-relay health --admin "$ADMIN"
    if appointment-relay health --admin 127.0.0.1:1; then echo "health: 0 with nothing listening" >&2; exit 1; fi
    apt-get install -y -q --no-install-recommends systemd man-db >/dev/null
    systemd-analyze verify appointment-relay.service appointment-relay@clinic-a.service
    echo "systemd-analyze verify: both units clean, man pages found"
    man -w appointment-relay appointment-relay.toml
    test -s /usr/share/bash-completion/completions/appointment-relay
  '
echo "package: ok"

echo "== the compose demo (docker/compose.yaml) with podman-compose: one appointment's life, six payloads"
command -v podman-compose >/dev/null || { echo "container-test: podman-compose is needed (apt-get install podman-compose)" >&2; exit 1; }
# Every service of the demo is on the host's network (network_mode: host) and listens on 127.0.0.1. Debian 12's
# podman-compose (1.0.3) adds "--net PROJECT_default --network-alias SERVICE" to every container all the same,
# which podman refuses beside the host's network: docker/podman-host-network, given as its podman, drops them.
project=appointment-relay-demo-test-$$
# Ports of our own (the host's, as the services are on its network), not the file's defaults, which a demo
# left running may hold.
base=$((20000 + RANDOM % 20000))
export DEMO_DB_PORT=$base DEMO_RECEIVER_PORT=$((base + 1)) DEMO_ADMIN_PORT=$((base + 2))
compose() { podman-compose --podman-path "$root/docker/podman-host-network" -f docker/compose.yaml -p "$project" "$@"; }
trap 'compose down >/dev/null 2>&1 || true; podman rm -f "$name-rx" >/dev/null 2>&1 || true; cleanup' EXIT
# --build: images of the current sources (the layers cached by the build above make it quick); in Docker's
# format, so that the relay's image keeps its HEALTHCHECK. podman-compose's status says nothing of the
# containers it started: they are checked below.
compose --podman-build-args=--format=docker up -d --build >"$work/compose-up.log" 2>&1 \
  || { tail -n 30 "$work/compose-up.log" >&2; exit 1; }
# podman-compose 1.0.3 starts the services in depends_on order without waiting for the conditions: migrate
# retries until the database answers, the relay reconnects until it is migrated.
healthy() { podman healthcheck run "${project}_$1_1" >/dev/null 2>&1; }
for _ in $(seq 1 150); do healthy postgres && break; sleep 0.2; done
healthy postgres || { echo "container-test: the demo database is not healthy" >&2; exit 1; }
migrated=$(podman wait "${project}_migrate_1")
[ "$migrated" = 0 ] || { echo "container-test: migrate exited $migrated" >&2; podman logs "${project}_migrate_1" >&2; exit 1; }
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$DEMO_ADMIN_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$DEMO_ADMIN_PORT/readyz" >/dev/null \
  || { echo "container-test: the demo relay is not ready" >&2; podman logs "${project}_relay_1" 2>&1 | tail -n 20 >&2; exit 1; }
healthy relay || { echo "container-test: the demo relay's HEALTHCHECK failed" >&2; exit 1; }
podman logs "${project}_receiver_1" 2>&1 | grep -q "listening on 127.0.0.1:$DEMO_RECEIVER_PORT " \
  || { echo "container-test: the demo receiver is not listening" >&2; exit 1; }
podman ps --filter "label=io.podman.compose.project=$project" --format '{{.Names}} {{.Status}}'
demo_db="postgresql://postgres:demo@127.0.0.1:$DEMO_DB_PORT/canvas"
sql() { psql -qtA -v ON_ERROR_STOP=1 "$demo_db" -c "$1"; }
patient=$(sql "SELECT canvas_test.create_patient()")
first=$(sql "SELECT canvas_test.book_appointment($patient, '2021-12-24 21:30:00+00', 30)")
second=$(sql "SELECT canvas_test.reschedule($first, '2021-12-27 15:00:00+00', 45)")
for step in cancel restore no_show check_in; do sql "SELECT canvas_test.$step($second)" >/dev/null; done
payloads() { podman logs "${project}_receiver_1" 2>&1 | grep 'signature ok' || true; }
for _ in $(seq 1 150); do [ "$(payloads | wc -l)" -ge 6 ] && break; sleep 0.2; done
payloads
for kind in created rescheduled cancelled reverted no_show checked_in; do
  payloads | grep -q "\"$kind\":true" || {
    echo "container-test: no $kind payload at the receiver" >&2
    podman logs "${project}_relay_1" 2>&1 | tail -n 20 >&2
    exit 1
  }
done
[ "$(payloads | wc -l)" -eq 6 ] || { echo "container-test: $(payloads | wc -l) payloads, expected 6" >&2; exit 1; }
compose down >"$work/compose-down.log" 2>&1
left=$(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}')
[ -z "$left" ] || { echo "container-test: left after podman-compose down: $left" >&2; exit 1; }
trap 'podman rm -f "$name-rx" >/dev/null 2>&1 || true; cleanup' EXIT
echo "compose demo: six payloads delivered and verified, and down again"
podman stop -t 15 "$name" >/dev/null
podman logs "$name" 2>&1 | tail -n 3
echo "container-test: ok"

# The package's systemd units under a real systemd (PID 1 in a container): scripts/container-systemd-test.sh.
DEB="$deb" scripts/container-systemd-test.sh
