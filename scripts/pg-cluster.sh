#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, benchmarks and the quickstart: its own data directory in a
# temporary folder, owned by the postgres user when run as root, on a free local port; never the machine's
# default cluster.
#   pg-cluster.sh start DIR     init + start; prints the server's URI (postgresql://...:PORT/postgres)
#   pg-cluster.sh stop DIR      stop and remove DIR
#   pg-cluster.sh restart DIR   restart (the same port)
set -euo pipefail
cmd=${1:?start|stop|restart}
dir=${2:?data directory}
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 30000))
    if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then echo "$p"; return; fi
  done
  echo "no free port" >&2; exit 1
}
case "$cmd" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir" && chmod 700 "$dir"
  as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  port=$(free_port)
  echo "$port" >"$dir/port"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir/port"
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200 -c shared_buffers=128MB" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "postgresql://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  if [ -d "$dir/data" ]; then as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
  ;;
restart)
  port=$(cat "$dir/port")
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -m fast \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200 -c shared_buffers=128MB" restart >/dev/null
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
