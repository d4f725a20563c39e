#!/usr/bin/env bash
# Builds the image with podman and runs the relay in it against a throwaway PostgreSQL on the host
# (host network): migrate, then run, with the demo receiver on the host; checks that a booked appointment
# arrives signed and that the container reports healthy (its HEALTHCHECK is `appointment-relay health`).
# Then builds the Debian package (scripts/package.sh) and installs it with apt in a clean debian:bookworm-slim
# container: `version`, `check-config` of the installed sample, `migrate` from the installed SQL, `health`
# against the running relay, and `systemd-analyze verify` of both installed units (with man-db, so that their
# Documentation= man pages must be installed too). Last, the compose demo's services as compose starts them,
# on the host's network: its database image (docker/postgres.Dockerfile, Debian's PostgreSQL), migrate, the
# relay and the demo receiver, which must get one appointment's six payloads. Takes minutes: not part of
# scripts/test.sh.
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

echo "== the compose demo's database image (docker/postgres.Dockerfile): one appointment's life, six payloads"
# podman-compose itself cannot run docker/compose.yaml here: the containers would talk over a bridge network
# (10.88.0.0/16), and this machine's tests keep to 127.0.0.1; Debian 12's podman-compose (1.0.3) also adds a
# bridge network to every container, even with network_mode: host. So the demo's services run here as
# compose would start them, on the host's network: its database image, migrate and the relay from the image,
# the demo receiver.
podman build -f docker/postgres.Dockerfile -t appointment-relay-demo-postgres:test . >/dev/null
demo_port=$((20000 + RANDOM % 20000))
podman run -d --name "$name-pg" appointment-relay-demo-postgres:test \
  postgres -c listen_addresses=127.0.0.1 -c port="$demo_port" -c unix_socket_directories=/tmp >/dev/null
podman run -d --name "$name-rx6" --entrypoint appointment-relay-receiver "$image" \
  --listen 127.0.0.1:0 --secret "$secret" >/dev/null
trap 'podman rm -f "$name-rx" "$name-pg" "$name-rx6" "$name-demo" >/dev/null 2>&1 || true; cleanup' EXIT
demo_db="postgresql://postgres:demo@127.0.0.1:$demo_port/canvas"
for _ in $(seq 1 100); do psql -qtA "$demo_db" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
for _ in $(seq 1 100); do podman logs "$name-rx6" 2>&1 | grep -q listening && break; sleep 0.1; done
rx6_port=$(podman logs "$name-rx6" 2>&1 | sed -n 's/.* port \([0-9]*\)$/\1/p' | head -n 1)
podman run --rm -e APPOINTMENT_RELAY_DATABASE_URL="$demo_db" "$image" migrate >/dev/null
demo_admin=$((20000 + RANDOM % 20000))
podman run -d --name "$name-demo" -e APPOINTMENT_RELAY_DATABASE_URL="$demo_db" \
  -e APPOINTMENT_RELAY_ENDPOINT_URL="http://127.0.0.1:$rx6_port/canvas/appointments" \
  -e APPOINTMENT_RELAY_SIGNING_SECRET="$secret" -e APPOINTMENT_RELAY_ADMIN_LISTEN="127.0.0.1:$demo_admin" \
  "$image" run >/dev/null
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$demo_admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sql() { psql -qtA -v ON_ERROR_STOP=1 "$demo_db" -c "$1"; }
patient=$(sql "SELECT canvas_test.create_patient()")
first=$(sql "SELECT canvas_test.book_appointment($patient, '2021-12-24 21:30:00+00', 30)")
second=$(sql "SELECT canvas_test.reschedule($first, '2021-12-27 15:00:00+00', 45)")
for step in cancel restore no_show check_in; do sql "SELECT canvas_test.$step($second)" >/dev/null; done
received() { podman logs "$name-rx6" 2>&1 | grep -c 'signature ok' || true; }
for _ in $(seq 1 150); do [ "$(received)" -ge 6 ] && break; sleep 0.2; done
podman logs "$name-rx6" 2>&1 | grep 'signature ok'
for kind in created rescheduled cancelled reverted no_show checked_in; do
  podman logs "$name-rx6" 2>&1 | grep 'signature ok' | grep -q "\"$kind\":true" \
    || { echo "container-test: no $kind payload at the receiver" >&2; podman logs "$name-demo" 2>&1 | tail -n 20 >&2; exit 1; }
done
[ "$(received)" -eq 6 ] || { echo "container-test: $(received) payloads, expected 6" >&2; exit 1; }
echo "demo database: six payloads delivered and verified"
podman stop -t 15 "$name" >/dev/null
podman logs "$name" 2>&1 | tail -n 3
echo "container-test: ok"
