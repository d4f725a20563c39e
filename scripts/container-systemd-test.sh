#!/usr/bin/env bash
# The Debian package's systemd units under a real systemd: a debian:bookworm-slim container with systemd as
# PID 1 (podman --systemd=always), the package installed with apt, the relay against a throwaway PostgreSQL on
# the host and the demo receiver on the host (host network, 127.0.0.1 only). It checks:
#  - appointment-relay.service starts (Type=notify: `systemctl start` returns once READY=1 arrived) with its
#    secrets only in root's /etc/appointment-relay/credentials/ (0600, directory 0700), read through
#    LoadCredential= from /run/credentials/appointment-relay.service/ (the database URL named by
#    APPOINTMENT_RELAY_DATABASE_URL_FILE in /etc/appointment-relay/environment, the signing secret by
#    secret_file in the TOML file);
#  - a booked appointment arrives at the receiver with a valid signature;
#  - the process runs as a dynamic user (not root, no capabilities), which cannot read the credential files
#    in /etc but can read systemd's copies;
#  - journal priorities: the start line is at info, a failed attempt (an endpoint on a closed port) at
#    warning, its dead letter at err, and so is a reload of a broken TOML file, after which the relay keeps
#    running (`journalctl -p err` finds both, and neither the info nor the warning lines);
#  - appointment-relay@clinic2.service runs a second relay against a second database beside the first, with
#    its own credentials (clinic2.credentials/, clinic2.environment, clinic2.toml); with WatchdogSec=2 in a
#    drop-in, its pings keep systemd's watchdog fed for several periods, and the shipped WatchdogSec=30 does
#    not kill the first one during the test;
#  - `systemctl stop` ends both cleanly: STOPPING=1 reaches systemd, exit status 0, result success.
# Environment: DEB=path of the .deb (default: built by scripts/package.sh), RECEIVER=path of
# appointment-relay-receiver (default: built in the .deb's build directory). Takes about a minute once the
# package is built. Needs podman (../shared/tools/container-setup.sh) and PostgreSQL's server binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$(date +%s)

deb=${DEB:-}
[ -n "$deb" ] || deb=$(scripts/package.sh | tail -n 1)
[ -f "$deb" ] || { echo "container-systemd-test: no package at '$deb'" >&2; exit 2; }
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
receiver=${RECEIVER:-}
if [ -z "$receiver" ]; then
  # The package leaves the demo receiver out; the build that made the package has its target.
  cmake --build "$(dirname "$deb")" --target appointment-relay-receiver >/dev/null
  receiver=$(dirname "$deb")/appointment-relay-receiver
fi
[ -x "$receiver" ] || { echo "container-systemd-test: no receiver at '$receiver'" >&2; exit 2; }

work=$(mktemp -d /tmp/appointment-relay-systemd.XXXXXX)
chmod 755 "$work"
name=appointment-relay-systemd-$$
image=${SYSTEMD_IMAGE:-appointment-relay-systemd:test}
rx_pid=""
cleanup() {
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  [ -n "$rx_pid" ] && kill "$rx_pid" 2>/dev/null || true
  scripts/pg-cluster.sh stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

in_container() { podman exec "$name" "$@"; }
# The state of both units and their journal, then exit 1.
fail() {
  echo "container-systemd-test: FAILED: $*" >&2
  if podman container exists "$name" 2>/dev/null; then
    in_container systemctl status --no-pager appointment-relay appointment-relay@clinic2 2>&1 \
      | head -n 40 >&2 || true
    in_container journalctl --no-pager -n 60 -o short-monotonic \
      -u appointment-relay -u appointment-relay@clinic2 2>&1 | tail -n 60 >&2 || true
  fi
  exit 1
}
# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails after SECONDS.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (waited ${seconds} s)"
    sleep 0.2
  done
}
# journal_has UNIT PATTERN [journalctl options]: a line of UNIT's journal matches PATTERN (grep).
journal_has() {
  local unit=$1 pattern=$2
  shift 2
  in_container journalctl --no-pager -o cat -u "$unit" "$@" | grep -e "$pattern" >/dev/null
}
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 30000))
    if ! ss -Hltn "sport = :$p" 2>/dev/null | grep . >/dev/null; then echo "$p"; return; fi
  done
  echo "container-systemd-test: no free port" >&2
  exit 1
}

echo "== image: debian:bookworm-slim with systemd and $(basename "$deb")"
mkdir "$work/image"
cp "$deb" "$work/image/appointment-relay.deb"
cat >"$work/image/Containerfile" <<'EOF'
FROM docker.io/library/debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q >/dev/null \
 && apt-get install -y -q --no-install-recommends systemd systemd-sysv >/dev/null
COPY appointment-relay.deb /tmp/
RUN apt-get install -y -q --no-install-recommends /tmp/appointment-relay.deb >/dev/null \
 && rm -rf /var/lib/apt/lists/* /tmp/appointment-relay.deb
EOF
podman build -q -t "$image" "$work/image" >/dev/null

echo "== PostgreSQL (two Canvas databases) and the receiver on the host"
server=$(scripts/pg-cluster.sh start "$work/pg")
db1="${server%/postgres}/canvas"
db2="${server%/postgres}/canvas2"
for db in "$db1" "$db2"; do
  psql -q "$server" -c "CREATE DATABASE ${db##*/}" >/dev/null
  for f in sql/canvas/*.sql; do psql -q -v ON_ERROR_STOP=1 "$db" -f "$f" >/dev/null; done
done
secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
"$receiver" --listen 127.0.0.1:0 --secret "$secret" >"$work/rx.log" 2>&1 &
rx_pid=$!
wait_until 10 "the receiver did not start" grep -q ' port [0-9]*$' "$work/rx.log"
rx_port=$(sed -n 's/.* port \([0-9]*\)$/\1/p' "$work/rx.log" | head -n 1)
admin1=$(free_port)
admin2=$(free_port)
[ "$admin1" != "$admin2" ] || admin2=$((admin1 + 1))

echo "== boot systemd in the container"
# Why these options, found by trying the unit without them:
#  --cap-add SYS_ADMIN: systemd sets up each sandboxed service's mount namespace (ProtectSystem=,
#    PrivateTmp=, PrivateDevices=, the credentials directory...); without the capability the unit fails with
#    226/NAMESPACE "Failed to set up mount namespacing: Operation not supported". Podman's default seccomp
#    profile lets mount() through once the capability is there: no --privileged needed.
#  mount --make-rshared /: systemd builds the credentials directory in a mount namespace of its own and moves
#    it to /run/credentials/UNIT, which reaches PID 1's namespace only through shared propagation. On a host,
#    PID 1 makes / shared at boot; in a container it leaves the propagation to the container manager, and
#    podman's is private, so the service would find an empty root-only directory (Permission denied).
#  --network host: the relay reaches PostgreSQL and the receiver on 127.0.0.1, and nothing else.
podman run -d --name "$name" --systemd=always --cap-add SYS_ADMIN --network host "$image" \
  sh -c 'mount --make-rshared / && exec /sbin/init' >/dev/null
# Until PID 1 is systemd and listening, systemctl answers nothing: ask again.
deadline=$((SECONDS + 90))
while :; do
  boot_state=$(timeout 30 podman exec "$name" systemctl is-system-running --wait 2>/dev/null || true)
  case "$boot_state" in running | degraded) break ;; esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    podman logs "$name" 2>&1 | tail -n 20 >&2
    fail "systemd did not finish booting in 90 s ('$boot_state')"
  fi
  sleep 0.5
done
[ "$boot_state" = running ] || in_container systemctl --failed --no-pager >&2
echo "systemd $(in_container systemctl --version | head -n 1 | cut -d' ' -f2): $boot_state"

echo "== migrate both databases with the installed binary and SQL"
in_container env APPOINTMENT_RELAY_DATABASE_URL="$db1" appointment-relay migrate >/dev/null
in_container env APPOINTMENT_RELAY_DATABASE_URL="$db2" appointment-relay migrate >/dev/null

echo "== appointment-relay.service: configuration, credentials"
podman exec -i -e DB1="$db1" -e DB2="$db2" -e SECRET="$secret" -e RX_PORT="$rx_port" \
  -e ADMIN1="$admin1" -e ADMIN2="$admin2" "$name" bash -euo pipefail <<'EOF'
cd /etc/appointment-relay
test "$(stat -c '%a %U' credentials)" = "700 root"  # as the package made it
install -d -m 0700 clinic2.credentials
(
  umask 077
  printf '%s\n' "$DB1" >credentials/database-url
  printf '%s\n' "$SECRET" >credentials/receiver
  printf '%s\n' "$DB2" >clinic2.credentials/database-url
  printf '%s\n' "$SECRET" >clinic2.credentials/receiver
)
# The environment file names the database URL's credential; the TOML file the signing secret's.
echo "APPOINTMENT_RELAY_DATABASE_URL_FILE=/run/credentials/appointment-relay.service/secret_database-url" \
  >environment
# One endpoint at the receiver, one at a closed port: its attempts fail, and after two it is dead-lettered.
cat >appointment-relay.toml <<TOML
[database]
poll_interval = "1s"
[admin]
listen = "127.0.0.1:$ADMIN1"
[retry]
base_delay = "200ms"
max_attempts = 2
[endpoints.main]
url = "http://127.0.0.1:$RX_PORT/canvas"
secret_file = "/run/credentials/appointment-relay.service/secret_receiver"
[endpoints.closed]
url = "http://127.0.0.1:1/canvas"
secret_file = "/run/credentials/appointment-relay.service/secret_receiver"
TOML
# The instance: both secrets named in its environment file.
creds=/run/credentials/appointment-relay@clinic2.service
cat >clinic2.environment <<ENV
APPOINTMENT_RELAY_DATABASE_URL_FILE=$creds/secret_database-url
APPOINTMENT_RELAY_ENDPOINTS_CLINIC2_SECRETS_FILE=$creds/secret_receiver
ENV
cat >clinic2.toml <<TOML
[database]
poll_interval = "1s"
[admin]
listen = "127.0.0.1:$ADMIN2"
[endpoints.clinic2]
url = "http://127.0.0.1:$RX_PORT/clinic2"
TOML
chmod 0644 appointment-relay.toml clinic2.toml environment clinic2.environment
EOF

echo "== systemctl start appointment-relay"
timeout 60 podman exec "$name" systemctl start appointment-relay \
  || fail "systemctl start appointment-relay failed or took over 60 s (READY=1 never came?)"
[ "$(in_container systemctl is-active appointment-relay)" = active ] || fail "appointment-relay is not active"
status=$(in_container systemctl show -p StatusText --value appointment-relay)
[ "$status" = "active: delivering" ] || fail "the daemon's STATUS= is '$status', not 'active: delivering'"
main_pid=$(in_container systemctl show -p MainPID --value appointment-relay)
echo "active, MainPID $main_pid, status '$status'"

echo "== a booked appointment arrives signed"
psql -qtA -v ON_ERROR_STOP=1 "$db1" \
  -c "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)" >/dev/null
wait_until 20 "no signed webhook from appointment-relay.service at the receiver" \
  grep -q '_main (signature ok) .*"created":true' "$work/rx.log"
grep '_main (signature ok)' "$work/rx.log" | cut -c 1-120

echo "== a dynamic user that cannot read the credentials in /etc"
uid=$(in_container stat -c %u "/proc/$main_pid")
gid=$(in_container stat -c %g "/proc/$main_pid")
# systemd allocates dynamic users from 61184-65519.
if [ "$uid" -lt 61184 ] || [ "$uid" -gt 65519 ]; then
  fail "the relay runs as uid $uid, not a dynamic user"
fi
caps=$(in_container awk '/^CapEff/ {print $2}' "/proc/$main_pid/status")
[ "$caps" = 0000000000000000 ] || fail "the relay has capabilities $caps"
as_relay() { in_container setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all "$@"; }
if as_relay cat /etc/appointment-relay/credentials/database-url >/dev/null 2>&1; then
  fail "uid $uid can read /etc/appointment-relay/credentials/database-url"
fi
if as_relay ls /etc/appointment-relay/credentials >/dev/null 2>&1; then
  fail "uid $uid can list /etc/appointment-relay/credentials"
fi
# The same uid reads systemd's copies: the check above can tell the two apart.
as_relay cat /run/credentials/appointment-relay.service/secret_database-url >/dev/null \
  || fail "uid $uid cannot read its credential copy in /run/credentials/appointment-relay.service"
echo "uid $uid (dynamic), no capabilities; /etc/appointment-relay/credentials: permission denied"

echo "== journal priorities"
journal_has appointment-relay "info appointment-relay .* starting (pid $main_pid)" -p info \
  || fail "journalctl -p info has no start line"
wait_until 20 "journalctl -p err has no dead letter of endpoint closed" \
  journal_has appointment-relay 'error dead letter .*endpoint=closed' -p err
journal_has appointment-relay 'warning retry .*endpoint=closed attempt=1' -p warning \
  || fail "journalctl -p warning has no failed attempt of endpoint closed"
if journal_has appointment-relay 'warning retry\|starting (pid' -p err; then
  fail "journalctl -p err shows lines logged at warning or info (no syslog priority on them?)"
fi
in_container cp /etc/appointment-relay/appointment-relay.toml /root/good.toml
in_container sh -c 'echo "[database" >>/etc/appointment-relay/appointment-relay.toml'
timeout 30 podman exec "$name" systemctl reload appointment-relay || fail "systemctl reload failed"
wait_until 10 "journalctl -p err has no line for the broken reload" \
  journal_has appointment-relay 'error configuration reload failed' -p err
in_container journalctl --no-pager -o cat -u appointment-relay -p err | cut -c 1-150
[ "$(in_container systemctl is-active appointment-relay)" = active ] || fail "inactive after a broken reload"
[ "$(in_container systemctl show -p MainPID --value appointment-relay)" = "$main_pid" ] \
  || fail "the relay was restarted by a broken reload"
in_container cp /root/good.toml /etc/appointment-relay/appointment-relay.toml
timeout 30 podman exec "$name" systemctl reload appointment-relay || fail "systemctl reload failed"
wait_until 10 "the good configuration was not reloaded" \
  journal_has appointment-relay 'info configuration reloaded' -p info
echo "priorities: info start line, warning attempt, err dead letter and broken reload; still running"

echo "== appointment-relay@clinic2.service: a second database"
# A short watchdog period, so that the test outlasts several: the relay pings at half of it.
dropin=/etc/systemd/system/appointment-relay@clinic2.service.d
in_container sh -c "mkdir -p $dropin && printf '[Service]\nWatchdogSec=2\n' >$dropin/watchdog.conf"
in_container systemctl daemon-reload
timeout 60 podman exec "$name" systemctl start appointment-relay@clinic2 \
  || fail "systemctl start appointment-relay@clinic2 failed or took over 60 s"
clinic2_pid=$(in_container systemctl show -p MainPID --value appointment-relay@clinic2)
psql -qtA -v ON_ERROR_STOP=1 "$db2" \
  -c "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now(), 30)" >/dev/null
wait_until 20 "no signed webhook from appointment-relay@clinic2.service at the receiver" \
  grep -q '_clinic2 (signature ok) .*"created":true' "$work/rx.log"
grep '_clinic2 (signature ok)' "$work/rx.log" | cut -c 1-120
ping1=$(in_container systemctl show -p WatchdogTimestampMonotonic --value appointment-relay@clinic2)
sleep 5  # more than two watchdog periods
ping2=$(in_container systemctl show -p WatchdogTimestampMonotonic --value appointment-relay@clinic2)
[ "$ping2" -gt "$ping1" ] || fail "no WATCHDOG=1 from appointment-relay@clinic2 in 5 s"
for unit in appointment-relay appointment-relay@clinic2; do
  [ "$(in_container systemctl is-active "$unit")" = active ] || fail "$unit is not active"
  [ "$(in_container systemctl show -p NRestarts --value "$unit")" = 0 ] || fail "$unit was restarted"
done
[ "$(in_container systemctl show -p MainPID --value appointment-relay@clinic2)" = "$clinic2_pid" ] \
  || fail "appointment-relay@clinic2 has a new MainPID"
[ "$(in_container systemctl show -p WatchdogUSec --value appointment-relay)" = 30s ] \
  || fail "appointment-relay.service's watchdog is not the shipped 30 s"
[ "$(in_container systemctl show -p WatchdogTimestampMonotonic --value appointment-relay)" -gt 0 ] \
  || fail "no WATCHDOG=1 from appointment-relay.service"
for unit in appointment-relay appointment-relay@clinic2; do
  if journal_has "$unit" 'Watchdog timeout'; then fail "$unit: a watchdog timeout"; fi
done
echo "both active; clinic2's watchdog (2 s) fed, no restart"

echo "== systemctl stop"
# PID 1 logs each notification it gets at debug level.
in_container systemd-analyze log-level debug
timeout 60 podman exec "$name" systemctl stop appointment-relay appointment-relay@clinic2 \
  || fail "systemctl stop failed or took over 60 s"
# systemd forgets a stopped unit's exit status when it collects the unit, at once: the journal keeps it.
for unit in appointment-relay appointment-relay@clinic2; do
  wait_until 10 "$unit: no 'Deactivated successfully' in its journal after stop" \
    journal_has "$unit" 'Deactivated successfully'
  [ "$(in_container systemctl is-active "$unit")" = inactive ] || fail "$unit is not inactive after stop"
  log=$(in_container journalctl --no-pager -o cat -u "$unit")
  for line in "Got notification message from PID [0-9]* (STOPPING=1)" \
    "Main process exited, code=exited, status=0/SUCCESS" "Deactivated successfully" "info stopped$"; do
    grep "$line" <<<"$log" >/dev/null || fail "$unit: no '$line' in its journal after stop"
  done
  if grep "Failed with result" <<<"$log" >/dev/null; then fail "$unit failed"; fi
  echo "$unit: STOPPING=1, exit status 0, deactivated successfully"
done

echo "container-systemd-test: ok ($(($(date +%s) - started)) s)"
