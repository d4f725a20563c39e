#!/usr/bin/env bash
# The benchmarks of issue 7, and issue 11's costs to Canvas's database: builds in Release, starts a throwaway
# PostgreSQL and the fast receiver (appointment-relay-receiver), runs the relay as a separate process, and
# measures capture overhead, end-to-end throughput, commit-to-receipt latency, backlog drain, the relay's CPU
# per event and peak RSS, the WAL and PostgreSQL CPU per delivered event, what retention leaves behind, the
# drain side by side with a build of an earlier commit, and the classifier alone. Prints one table (each
# figure beside its target) and writes it to bench/results/latest.md and a dated copy.
#   scripts/bench.sh            the full run (several minutes), build dir build-release (Release)
#   scripts/bench.sh --quick    tiny sizes, well under a minute, build dir build; results in a temporary folder;
#                               fails when an event is not delivered (scripts/test.sh runs it)
#   scripts/bench.sh --profile  also profiles the relay (perf record) during an extra, unmeasured drain
#   BENCH_BUILD_DIR=dir         use that build dir instead
#   BENCH_RESULTS_DIR=dir       write the full run's table there instead of bench/results (a trial run)
#   BENCH_BASELINE=commit       drain side by side with a build of that commit (default be1b492 in the full
#                               run, off in --quick; "off" skips it). Its git worktree and build stay in
#                               /tmp/ar-baseline-<commit> for the next run (git worktree remove --force DIR
#                               removes them).
#   BENCH_BASELINE_EVENTS=N, BENCH_BASELINE_ROUNDS=R   events per drain and drains per build in that comparison
#                               (default: the run's large drain, 3)
#   BENCH_DRAIN_EVENTS=N        the large drain's size, on which retention runs (default 100000; 2000 in --quick)
#   BENCH_STALLED_SECONDS=S, BENCH_STALLED_ROUNDS=R   scenario 12 (an endpoint beside a healthy, stalled,
#                               refused or paused one): stream length per run and rounds of the five runs
#                               (default 20 s, 3; 1.5 s, 2 in --quick)
#   BENCH_ONLY=stalled          run scenario 12 alone (its rows printed, nothing written to bench/results)
#   BENCH_ONLY=capture          run scenario 1 alone (capture overhead; durable rows too unless --quick)
#   BENCH_STALLED_CONFIGS="alone healthy paused"   with BENCH_ONLY=stalled: the configurations to run (alone
#                               and healthy always run: the ratios are over them)
#   BENCH_BIN_DIR=dir           take appointment-relay, appointment-relay-receiver, bench_producer and
#                               classifier_bench from dir instead of building them (a tree others build in:
#                               copies that no later build changes under the run); the build type is read
#                               from dir/CMakeCache.txt when dir is a build tree, else "unknown": put a copy
#                               of the tree's CMakeCache.txt beside copied binaries
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
quick=0
profile=0
for a in "$@"; do
  case "$a" in
  --quick) quick=1 ;;
  --profile) profile=1 ;;
  *) echo "usage: scripts/bench.sh [--quick] [--profile]" >&2; exit 2 ;;
  esac
done

if [ $quick -eq 1 ]; then
  build=${BENCH_BUILD_DIR:-build}
  build_type=RelWithDebInfo
  capture_seconds=1; capture_rounds=1
  latency_rate=300; latency_seconds=2
  stalled_seconds=1.5; stalled_rounds=2
  held_seconds=3; held_window=1
  flood_seconds=2; flood_warmup=0.5
  drain_small=500; drain_events=2000
  retention_quiet=1; retention_limit=7
  baseline=${BENCH_BASELINE:-off}
  bench_min_time=0.01
  wait_limit=60
else
  build=${BENCH_BUILD_DIR:-build-release}
  build_type=Release
  capture_seconds=8; capture_rounds=5
  latency_rate=300; latency_seconds=30
  stalled_seconds=20; stalled_rounds=3
  held_seconds=120; held_window=20
  flood_seconds=15; flood_warmup=2
  drain_small=20000; drain_events=100000
  retention_quiet=5; retention_limit=20
  baseline=${BENCH_BASELINE:-be1b492}
  bench_min_time=0.5
  wait_limit=300
fi
[ "$baseline" != off ] || baseline=""
drain_events=${BENCH_DRAIN_EVENTS:-$drain_events}
baseline_events=${BENCH_BASELINE_EVENTS:-$drain_events}
baseline_rounds=${BENCH_BASELINE_ROUNDS:-3}
stalled_seconds=${BENCH_STALLED_SECONDS:-$stalled_seconds}
stalled_rounds=${BENCH_STALLED_ROUNDS:-$stalled_rounds}
only=${BENCH_ONLY:-}
case "$only" in
'' | stalled | capture) ;;
*) echo "bench: BENCH_ONLY=$only: the scenarios that run alone are \"stalled\" and \"capture\"" >&2; exit 2 ;;
esac
[ -z "$only" ] || baseline=""

[ -n "${BENCH_SKIP_DEPS:-}" ] || scripts/install-deps.sh
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  bin_dir=$(cd "$BENCH_BIN_DIR" && pwd)
  relay=$bin_dir/appointment-relay
  receiver_bin=$bin_dir/appointment-relay-receiver
  producer=$bin_dir/bench_producer
  classifier_bench=$bin_dir/classifier_bench
  for b in "$relay" "$receiver_bin" "$producer"; do
    [ -x "$b" ] || { echo "bench: BENCH_BIN_DIR: no $b" >&2; exit 2; }
  done
  # The type of the build the binaries came from: a build tree has its CMakeCache.txt; copies do not.
  build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$bin_dir/CMakeCache.txt" 2>/dev/null || true)
  build_type=${build_type:-unknown}
else
  if [ ! -f "$build/CMakeCache.txt" ]; then
    # -Wno-restrict: g++ 12 at -O3 reports a false -Wrestrict inside libstdc++'s char_traits (config.cpp).
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=$build_type -DCMAKE_CXX_FLAGS=-Wno-restrict >/dev/null
  fi
  cmake --build "$build" -j "$(nproc)" --target appointment-relay appointment-relay-receiver bench_producer \
    $( [ -n "$(grep -s '^benchmark_DIR:PATH=/' "$build/CMakeCache.txt")" ] && echo classifier_bench ) >/dev/null
  build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
  relay=$root/$build/appointment-relay
  receiver_bin=$root/$build/appointment-relay-receiver
  producer=$root/$build/bench/bench_producer
  classifier_bench=$root/$build/bench/classifier_bench
fi

work=$(mktemp -d /tmp/appointment-relay-bench.XXXXXX)
pgdir=$(mktemp -d /tmp/appointment-relay-bench-pg.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
  scripts/pg-cluster.sh stop "$pgdir" || true
  [ -n "${BENCH_KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "bench: $*" >&2; }
fail() { echo "bench: FAILED: $*" >&2; exit 1; }

# The baseline: a build of an earlier commit from its own git worktree, with the same build type and flags.
baseline_relay=""
if [ -n "$baseline" ]; then
  baseline_commit=$(git -C "$root" rev-parse --verify --quiet "$baseline^{commit}") \
    || fail "no commit $baseline to compare with (BENCH_BASELINE=off skips the comparison)"
  baseline_tree=/tmp/ar-baseline-$baseline
  if [ -d "$baseline_tree" ]; then
    [ "$(git -C "$baseline_tree" rev-parse HEAD 2>/dev/null)" = "$baseline_commit" ] \
      || fail "$baseline_tree is not a worktree at $baseline: remove it"
  else
    git -C "$root" worktree prune
    git -C "$root" worktree add --detach "$baseline_tree" "$baseline_commit" >"$work/baseline-build.log" 2>&1 \
      || { cat "$work/baseline-build.log" >&2; fail "git worktree add $baseline_tree"; }
  fi
  baseline_build=$baseline_tree/build-bench-$build_type
  log "building $baseline ($build_type) in $baseline_build"
  { [ -f "$baseline_build/CMakeCache.txt" ] \
      || cmake -S "$baseline_tree" -B "$baseline_build" -G Ninja -DCMAKE_BUILD_TYPE=$build_type -DCMAKE_CXX_FLAGS=-Wno-restrict
    cmake --build "$baseline_build" -j "$(nproc)" --target appointment-relay
  } >>"$work/baseline-build.log" 2>&1 || { tail -n 30 "$work/baseline-build.log" >&2; fail "the build of $baseline"; }
  baseline_relay=$baseline_build/appointment-relay
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
"$producer" jitter --seconds 1 >"$work/jitter-start.result"
server=$(scripts/pg-cluster.sh start "$pgdir")
base=${server%/postgres}
log "PostgreSQL at $server, work in $work"

# The relay under test: the binary, its migrations, and the settings the build has. The baseline comparison
# swaps them; relay_env holds extra NAME=value settings for one run.
relay_bin=$relay
relay_sql=$root/sql
relay_lease=200ms  # empty for a build without the leadership lease
relay_env=()
use_current() { relay_bin=$relay; relay_sql=$root/sql; relay_lease=200ms; }
use_baseline() { relay_bin=$baseline_relay; relay_sql=$baseline_tree/sql; relay_lease=""; }

# new_db NAME [migrate]: a database with the Canvas schema, migrated when asked by the relay under test (each
# build its own migrations).
new_db() {
  psql -q "$server" -c "CREATE DATABASE $1" >/dev/null
  for f in sql/canvas/*.sql; do psql -q -v ON_ERROR_STOP=1 "$base/$1" -f "$f" >/dev/null; done
  if [ "${2:-}" = migrate ]; then
    APPOINTMENT_RELAY_DATABASE_URL="$base/$1" APPOINTMENT_RELAY_SQL_DIR="$relay_sql" APPOINTMENT_RELAY_LOG_LEVEL=warn \
      "$relay_bin" migrate >"$work/migrate-$1.log" 2>&1 || { cat "$work/migrate-$1.log" >&2; fail "migrate $1"; }
  fi
}
sql() { psql -qtA -v ON_ERROR_STOP=1 "$base/$1" -c "$2"; }
lsn() { sql "$1" "SELECT pg_current_wal_lsn()"; }
wal_bytes() { sql "$1" "SELECT pg_wal_lsn_diff('$3', '$2')"; }  # wal_bytes DB FROM TO
# The relay's admin port: it listens on port 0 (no port to race for), found among its sockets.
relay_admin_port() {
  ss -Hltnp 2>/dev/null | awk -v p="pid=$relay_pid," 'index($0, p) {n = split($4, a, ":"); print a[n]; exit}'
}
# Events delivered so far: the relay's count of 2xx answers, from its /metrics. Not a query on the database:
# it would add to the PostgreSQL CPU measured, and the delivery table no longer holds a row per delivered
# event. (The receiver writes its record only when it exits.) 0 until the admin server listens.
delivered() {
  [ -n "$admin_port" ] || { echo 0; return; }
  { curl -sf --max-time 2 "http://127.0.0.1:$admin_port/metrics" 2>/dev/null || true; } \
    | awk '/^appointment_relay_events_delivered_total[{ ]/ {s += $NF} END {printf "%d\n", s}'
}

# start_receiver RECORD: sets receiver_pid and receiver_port.
start_receiver() {
  local out=$work/receiver-$RANDOM.out
  : >"$out"
  "$receiver_bin" --listen 127.0.0.1:0 --quiet --record "$1" >"$out" 2>&1 &
  receiver_pid=$!
  pids+=("$receiver_pid")
  for _ in $(seq 1 100); do
    receiver_port=$(sed -n 's/.*listening on .* port \([0-9]*\).*/\1/p' "$out")
    [ -n "$receiver_port" ] && return 0
    sleep 0.05
  done
  cat "$out" >&2
  fail "the receiver did not start"
}
stop_receiver() {
  kill -TERM "$receiver_pid"
  wait "$receiver_pid" || fail "the receiver exited with $?"
}

# start_relay DB LOG [LEVEL]: sets relay_pid and relay_started_ns (admin_port: once wait_delivered found it).
start_relay() {
  admin_port=""
  relay_started_ns=$(date +%s%N)
  env ${relay_lease:+APPOINTMENT_RELAY_DATABASE_LEADER_LEASE=$relay_lease} "${relay_env[@]}" \
    APPOINTMENT_RELAY_DATABASE_URL="$base/$1" \
    APPOINTMENT_RELAY_SQL_DIR="$relay_sql" \
    APPOINTMENT_RELAY_ENDPOINT_URL="http://127.0.0.1:$receiver_port/webhooks" \
    APPOINTMENT_RELAY_ADMIN_LISTEN=127.0.0.1:0 \
    APPOINTMENT_RELAY_LOG_LEVEL=${3:-warn} \
    "$relay_bin" run >"$2" 2>&1 &
  relay_pid=$!
  pids+=("$relay_pid")
}
stop_relay() {
  kill -TERM "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" || log "the relay exited with $? (log: $(tail -n 3 "$1" | tr '\n' ' '))"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of all of a process's threads (voluntary and not): how often its threads slept and woke.
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
# PostgreSQL's CPU: the postmaster with its reaped children, plus its live children.
pg_ticks() {
  local pm
  pm=$(head -n 1 "$pgdir/data/postmaster.pid")
  { awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
    for c in $(ps -o pid= --ppid "$pm"); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
  } | awk '{s += $1} END {print s}'
}
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }  # all cores: user nice system irq softirq
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
tick=$(getconf CLK_TCK)

# wait_delivered DB N [INTERVAL]: until N events are delivered (fails after wait_limit seconds).
wait_delivered() {
  local deadline=$(($(date +%s) + wait_limit)) n
  while :; do
    [ -n "$admin_port" ] || admin_port=$(relay_admin_port)
    n=$(delivered)
    [ "$n" -ge "$2" ] && return 0
    kill -0 "$relay_pid" 2>/dev/null || fail "the relay died (log: $(tail -n 5 "$work/relay-$1.log" | tr '\n' ' '))"
    [ "$(date +%s)" -lt $deadline ] || fail "$1: only $n of $2 events delivered after ${wait_limit}s"
    sleep "${3:-0.05}"
  done
}
kv() { sed -n "s/^$2=//p" "$1"; }  # kv FILE KEY

# A first event through the whole pipeline: the relay is connected and listening once it is delivered.
warm_up() {
  sql "$1" "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + interval '1 day', 30)" >/dev/null
  wait_delivered "$1" 1 0.02
}

# ---------------------------------------------------------------------------------------------------------
# 12. One endpoint beside another in each of its states (issue 12): the latency of endpoint A (the default
#     endpoint, the fast receiver) at the steady rate, in five configurations: A alone; beside a healthy B (a
#     second fast receiver: what any second endpoint costs); beside a stalled B (a listener that accepts
#     connections and never reads or answers); beside a refused B (a closed port), its breaker open before
#     the stream (breaker_after 0s instead of 1 min, so that its 10 failures of the warm-up open it); beside
#     a paused B (a second fast receiver, paused with `appointment-relay pause` after the warm-up). A round
#     runs each configuration once, the order rotating per round, so that the machine's drift hits each alike;
#     the rows compare each configuration with A alone and with the healthy B of the same round.
st_warm=10
# The stalled B's timeout: short, so that its requests time out and go again several times in each stream
# (the default 10 s would fire at most once or twice in 20 s). In --quick, so that one cycle happens at all.
st_b_timeout=$([ $quick -eq 1 ] && echo 1s || echo 2s)
# stalled_listener: accepts connections and holds them, never reading: every request waits for its timeout.
# Perl, as perl-base is on every Debian system. Sets listener_pid and b_port.
stalled_listener() {
  local out=$work/listener-$RANDOM.out
  : >"$out"  # before the loop below reads it: the background job may not have opened it yet
  perl -MIO::Socket::INET -e '
    $| = 1;
    my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 256) or die "listen: $!";
    print $s->sockport, "\n";
    my @held;
    while (1) { my $c = $s->accept or do { sleep 1; next }; push @held, $c }' >"$out" 2>&1 &
  listener_pid=$!
  pids+=("$listener_pid")
  for _ in $(seq 1 100); do
    b_port=$(head -n 1 "$out")
    [ -n "$b_port" ] && return 0
    sleep 0.05
  done
  cat "$out" >&2
  fail "the stalled listener did not start"
}
# A port nobody listens on: bound by the kernel's choice, then closed.
closed_port() {
  perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1)->sockport, "\n"'
}
# metric NAME LABEL_MATCH: the sum of the relay's samples of NAME whose labels contain LABEL_MATCH.
metric() {
  { curl -sf --max-time 2 "http://127.0.0.1:$admin_port/metrics" 2>/dev/null || true; } \
    | awk -v n="$1" -v m="$2" 'index($0, n "{") == 1 && index($0, m) {s += $NF} END {printf "%d\n", s}'
}
# st_wait DB ENDPOINT N: until ENDPOINT (default: A; b) has N events delivered. Per endpoint, as a healthy B
# delivers too and wait_delivered counts every endpoint's.
st_wait() {
  local deadline=$(($(date +%s) + wait_limit)) n
  while :; do
    [ -n "$admin_port" ] || admin_port=$(relay_admin_port)
    n=$([ -n "$admin_port" ] && metric appointment_relay_events_delivered_total "endpoint=\"$2\"" || echo 0)
    [ "$n" -ge "$3" ] && return 0
    kill -0 "$relay_pid" 2>/dev/null || fail "the relay died (log: $(tail -n 5 "$work/relay-$1.log" | tr '\n' ' '))"
    [ "$(date +%s)" -lt $deadline ] || fail "$1: only $n of $3 events delivered to $2 after ${wait_limit}s"
    sleep 0.05
  done
}
# st_until DB WHAT LABEL_MATCH: until B's state gauge shows it (10 s at most).
st_until() {
  local deadline=$(($(date +%s) + 10))
  until [ "$(metric appointment_relay_endpoint_state "$3")" -eq 1 ]; do
    [ "$(date +%s)" -lt $deadline ] || fail "$1: endpoint b not $2 (log: $(tail -n 3 "$work/relay-$1.log" | tr '\n' ' '))"
    sleep 0.05
  done
}
# st_new_db NAME: a database copied from one made and migrated once (0.15 s instead of 0.9 s: --quick stays
# short).
st_template=""
st_new_db() {
  [ -n "$st_template" ] || { new_db st_template migrate; st_template=st_template; }
  psql -q "$server" -c "CREATE DATABASE $1 TEMPLATE $st_template" >/dev/null
}
# stalled_run CONFIG ROUND (one of st_configs): results in $work/st_CONFIG_ROUND.result (A's latency; the
# healthy B's in .b.result); sets st_cpu_us and st_b (what became of B).
stalled_run() {
  local c=$1 d=st_$1_$2 cpu0 cpu1 ctx0 ctx1 n listener_pid="" b_port a_pid a_port b_pid="" s
  st_new_db "$d"
  st_load+=" $(cut -d' ' -f1 /proc/loadavg)"
  start_receiver "$work/$d.received"
  a_pid=$receiver_pid a_port=$receiver_port
  # Shutdown does not wait for B's unanswered requests (the same setting in every configuration).
  relay_env=(APPOINTMENT_RELAY_RELAY_SHUTDOWN_TIMEOUT=0s)
  case $c in
  healthy | paused)
    start_receiver "$work/$d.b.received"
    b_pid=$receiver_pid b_port=$receiver_port receiver_pid=$a_pid receiver_port=$a_port ;;
  stalled)
    stalled_listener
    relay_env+=("APPOINTMENT_RELAY_ENDPOINTS_B_TIMEOUT=$st_b_timeout") ;;
  refused)
    b_port=$(closed_port)
    relay_env+=(APPOINTMENT_RELAY_ENDPOINTS_B_BREAKER_AFTER=0s) ;;
  esac
  [ "$c" = alone ] || relay_env+=(APPOINTMENT_RELAY_ENDPOINTS_B_URL="http://127.0.0.1:$b_port/webhooks")
  start_relay "$d" "$work/relay-$d.log"
  sql "$d" "SELECT canvas_test.book_appointment(canvas_test.create_patient(), now() + interval '1 day', 30)
            FROM generate_series(1, $st_warm)" >/dev/null
  st_wait "$d" default $st_warm
  case $c in
  healthy) st_wait "$d" b $st_warm ;;
  paused)
    st_wait "$d" b $st_warm
    env APPOINTMENT_RELAY_DATABASE_URL="$base/$d" APPOINTMENT_RELAY_ENDPOINT_URL="http://127.0.0.1:$a_port/webhooks" \
      "${relay_env[@]}" "$relay_bin" pause --endpoint b --reason bench >>"$work/pause-$d.log" 2>&1 \
      || { cat "$work/pause-$d.log" >&2; fail "$d: appointment-relay pause"; }
    st_until "$d" paused 'endpoint="b",state="paused"' ;;
  refused) st_until "$d" open 'endpoint="b",state="open"' ;;
  esac
  relay_env=()
  cpu0=$(cpu_ticks "$relay_pid"); ctx0=$(ctx_switches "$relay_pid")
  "$producer" stream --db "$base/$d" --rate $latency_rate --seconds "$stalled_seconds" --out "$work/$d.commits" \
    >"$work/$d.produced" || fail "producer (stream)"
  n=$(kv "$work/$d.produced" notifiable)
  st_wait "$d" default $((n + st_warm))
  [ "$c" = healthy ] && st_wait "$d" b $((n + st_warm))
  cpu1=$(cpu_ticks "$relay_pid"); ctx1=$(ctx_switches "$relay_pid")
  st_b=""
  if [ "$c" != alone ]; then
    for s in healthy failing open paused; do
      if [ "$(metric appointment_relay_endpoint_state "endpoint=\"b\",state=\"$s\"")" -eq 1 ]; then st_b=$s; fi
    done
    st_b="B $st_b, $(metric appointment_relay_events_captured_total 'endpoint="b"') events read, $(metric appointment_relay_delivery_attempts_total 'endpoint="b"') attempts, $(metric appointment_relay_retries_total 'endpoint="b"') retries"
  fi
  stop_relay "$work/relay-$d.log"
  stop_receiver
  if [ -n "$b_pid" ]; then receiver_pid=$b_pid; stop_receiver; fi
  if [ -n "$listener_pid" ]; then kill "$listener_pid"; wait "$listener_pid" 2>/dev/null || true; fi
  # Fails when an event did not reach A (or the healthy B).
  "$producer" latency --commits "$work/$d.commits" --received "$work/$d.received" >"$work/$d.result" \
    || { cat "$work/$d.result" >&2; fail "$d: events missing at endpoint A"; }
  if [ "$c" = healthy ]; then
    "$producer" latency --commits "$work/$d.commits" --received "$work/$d.b.received" >"$work/$d.b.result" \
      || { cat "$work/$d.b.result" >&2; fail "$d: events missing at endpoint B"; }
    st_b+="; B's own p50 $(kv "$work/$d.b.result" p50_us) p99 $(kv "$work/$d.b.result" p99_us) µs"
  fi
  psql -q "$server" -c "DROP DATABASE $d" >/dev/null
  st_cpu_us=$(awk -v t=$((cpu1 - cpu0)) -v n="$n" -v hz="$tick" 'BEGIN {printf "%.0f", t / hz * 1e6 / n}')
  st_ctx=$(awk -v c=$((ctx1 - ctx0)) -v n="$n" 'BEGIN {printf "%.2f", c / n}')
  log "   $c: $(grep -E '^(matched|missing|p50_us|p99_us|max_us)=' "$work/$d.result" | tr '\n' ' ')relay cpu/event ${st_cpu_us}us, context switches/event $st_ctx${st_b:+; $st_b}"
}
st_configs="alone healthy stalled refused paused"
if [ -n "${BENCH_STALLED_CONFIGS:-}" ]; then
  [ "$only" = stalled ] || { echo "bench: BENCH_STALLED_CONFIGS needs BENCH_ONLY=stalled" >&2; exit 2; }
  for c in $BENCH_STALLED_CONFIGS; do
    case " $st_configs " in *" $c "*) ;; *) echo "bench: BENCH_STALLED_CONFIGS: no configuration \"$c\" (one of $st_configs)" >&2; exit 2 ;; esac
  done
  st_configs="alone healthy $(printf '%s\n' $BENCH_STALLED_CONFIGS | grep -vx -e alone -e healthy | tr '\n' ' ')"
fi
st_has() { case " $st_configs " in *" $1 "*) return 0 ;; esac; return 1; }
# stalled_scenario: sets st_p50[CONFIG], st_p99[CONFIG], st_cpu[CONFIG] (medians of the rounds, µs),
# st_rounds[CONFIG] (each round's figures) and st_load (the 1-minute load average at each run's start).
declare -A st_p50=() st_p99=() st_cpu=() st_cpus=() st_rounds=() st_ctxs=() st_ctxm=()
st_load=""
stalled_scenario() {
  local r c k order
  local nc
  nc=$(echo $st_configs | wc -w)
  log "12. endpoint A at $latency_rate changes/s for ${stalled_seconds}s: alone, beside a healthy, stalled (timeout $st_b_timeout), refused or paused B; $stalled_rounds rounds"
  for r in $(seq 1 "$stalled_rounds"); do
    # The configuration that goes first rotates, so that none always follows the same one.
    k=$(((r - 1) % nc))
    order=$(echo $st_configs $st_configs | cut -d' ' -f$((k + 1))-$((k + nc)))
    log "   round $r: $order"
    for c in $order; do
      stalled_run "$c" "$r"
      st_cpus[$c]+=" $st_cpu_us"
      st_ctxs[$c]+=" $st_ctx"
      st_rounds[$c]+="; p50 $(kv "$work/st_${c}_$r.result" p50_us) p99 $(kv "$work/st_${c}_$r.result" p99_us) max $(kv "$work/st_${c}_$r.result" max_us) µs, relay $st_cpu_us µs/event${st_b:+, $st_b}"
    done
  done
  for c in $st_configs; do
    st_p50[$c]=$(for r in $(seq 1 "$stalled_rounds"); do kv "$work/st_${c}_$r.result" p50_us; done | st_median)
    st_p99[$c]=$(for r in $(seq 1 "$stalled_rounds"); do kv "$work/st_${c}_$r.result" p99_us; done | st_median)
    st_cpu[$c]=$(printf '%s\n' ${st_cpus[$c]} | st_median)
    st_ctxm[$c]=$(printf '%s\n' ${st_ctxs[$c]} | st_median)
    st_rounds[$c]=${st_rounds[$c]#; }
  done
  psql -q "$server" -c "DROP DATABASE $st_template" >/dev/null
}
st_median() { sort -g | awk '{v[NR] = $1} END {printf "%.1f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# st_ratio CONFIG REF KEY: CONFIG's KEY (p50_us, p99_us) over REF's in the same round, over the rounds:
# "x<median> (<lowest>-<highest>)".
st_ratio() {
  local r
  for r in $(seq 1 "$stalled_rounds"); do
    awk -v a="$(kv "$work/st_$2_$r.result" "$3")" -v b="$(kv "$work/st_$1_$r.result" "$3")" 'BEGIN {printf "%.4f\n", b / a}'
  done | sort -g \
    | awk '{v[NR] = $1} END {printf "x%.2f (%.2f-%.2f)", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR]}'
}
# The table's rows of scenario 12 (ms: defined with the table).
stalled_rows() {
  local c what
  echo "| 12 | endpoint A's latency at $latency_rate changes/s, p50 / p99, A alone (medians of $stalled_rounds rounds of ${stalled_seconds}s, each round every configuration once, the order rotating) | $(ms "${st_p50[alone]}") / $(ms "${st_p99[alone]}") | reported | | |"
  echo "| 12 | the same beside a healthy endpoint B (a second fast receiver: the cost of any second endpoint); per round over A alone, median (range) | $(ms "${st_p50[healthy]}") / $(ms "${st_p99[healthy]}"); p99 $(st_ratio healthy alone p99_us), p50 $(st_ratio healthy alone p50_us) of A alone | reported | | |"
  for c in stalled refused paused; do
    st_has $c || continue
    case $c in
    stalled) what="a stalled B (accepts connections, never answers; B's timeout $st_b_timeout, so that its requests time out and go again during the stream)" ;;
    refused) what="a refused B (closed port), its breaker open" ;;
    paused) what="a paused B (appointment-relay pause)" ;;
    esac
    echo "| 12 | the same beside $what; per round over beside the healthy B, and over A alone | $(ms "${st_p50[$c]}") / $(ms "${st_p99[$c]}"); p99 $(st_ratio $c healthy p99_us), p50 $(st_ratio $c healthy p50_us) of beside the healthy B; p99 $(st_ratio $c alone p99_us), p50 $(st_ratio $c alone p50_us) of A alone | p99 as beside the healthy B | | |"
  done
  echo "| 12 | relay CPU over the stream, per event of the stream (medians): A alone / beside B healthy / stalled / refused / paused | ${st_cpu[alone]} / ${st_cpu[healthy]} / ${st_cpu[stalled]:--} / ${st_cpu[refused]:--} / ${st_cpu[paused]:--} µs | | | |"
  echo "| 12 | the relay's context switches (all threads) over the stream, per event (medians): A alone / beside B healthy / stalled / refused / paused | ${st_ctxm[alone]} / ${st_ctxm[healthy]} / ${st_ctxm[stalled]:--} / ${st_ctxm[refused]:--} / ${st_ctxm[paused]:--} | | | |"
}
stalled_details() {
  local lo hi
  lo=$(printf '%s\n' $st_load | sort -g | head -n 1)
  hi=$(printf '%s\n' $st_load | sort -g | tail -n 1)
  echo "- Endpoint beside another (issue 12): each run a new database, the relay with endpoint A (the fast receiver) and, but for \"alone\", endpoint B (max_in_flight 16); $st_warm warm-up events, then the $latency_rate/s stream for ${stalled_seconds}s; A's commit-to-receipt latency as in row 3 (every event must reach A); relay shutdown_timeout 0s in all five; each round runs the five once, the first one rotating per round. Ratios: a configuration's p50 or p99 over that of A alone (or beside the healthy B) in the same round; median and range over the rounds. 1-minute load average at the start of each run: $lo to $hi (in order:$st_load). Per round, A alone: ${st_rounds[alone]}. Beside a healthy B (a second fast receiver on 127.0.0.1; it takes the whole stream too, its receiver's CPU on the same cores): ${st_rounds[healthy]}. Beside a stalled B (a listener that accepts and never reads; B's timeout $st_b_timeout, breaker_after the default 1 min, so B stays failing and retries): ${st_rounds[stalled]:-not run}. Beside a refused B (breaker_after 0s, so that its 10 failures of the warm-up open it; then only probes): ${st_rounds[refused]:-not run}. Beside a paused B (a second fast receiver; B takes the warm-up, then \`appointment-relay pause --endpoint b\` and the stream once the relay shows it paused): ${st_rounds[paused]:-not run}. B's state, attempts and retries: at the end of the stream."
}
if [ "$only" = stalled ]; then
  ms() { awk -v u="$1" 'BEGIN {printf "%.3f ms", u / 1000}'; }
  stalled_scenario
  report=$work/report.md
  {
    echo "# appointment-relay benchmarks: scenario 12 alone"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || echo " (modified)"), $build_type build."
    echo "Load average (1, 5, 15 min) at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (above 0.5: other work shared the machine)."
    echo "Scheduling delay before the run (a thread sleeping 1 ms wakes late by): p50 $(kv "$work/jitter-start.result" late_p50_us) µs, p99 $(kv "$work/jitter-start.result" late_p99_us) µs, max $(kv "$work/jitter-start.result" late_max_us) µs."
    echo
    echo "| # | measure | result | target | verdict | Node.js bar |"
    echo "| --- | --- | --- | --- | --- | --- |"
    stalled_rows
    echo
    stalled_details
  } >"$report"
  echo
  cat "$report"
  out=$(mktemp -d /tmp/appointment-relay-bench-only.XXXXXX)
  cp "$report" "$out/latest.md"
  log "scenario 12 alone: every event reached A; table in $out/latest.md"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# 1. Capture overhead: single-row insert transactions with and without the relay's triggers (no relay
#    running: the triggers' cost alone).
log "1. capture overhead (pgbench, ${capture_rounds}x${capture_seconds}s each way, synchronous_commit off)"
cat >"$work/appointment.sql" <<'EOF'
\set n random(50001, 400000)
INSERT INTO api_appointment (patient_id, note_id, start_time, duration_minutes, status) VALUES (1 + :n % 1000, :n, now() + interval '1 day', 30, 'confirmed');
EOF
cat >"$work/state.sql" <<'EOF'
\set n random(1, 50000)
\set s random(1, 4)
INSERT INTO api_notestatechangeevent (note_id, state) VALUES (:n, (ARRAY['CLD', 'RVT', 'CVD', 'NSW'])[:s]);
EOF
for d in cap_plain cap_relay; do
  new_db $d
  sql $d "INSERT INTO api_patient (key) SELECT md5(g::text) FROM generate_series(1, 1000) g;
          INSERT INTO api_note (patient_id) SELECT 1 + g % 1000 FROM generate_series(1, 400000) g;
          INSERT INTO api_appointment (patient_id, note_id, start_time, duration_minutes, status)
            SELECT 1 + g % 1000, g, now(), 30, 'confirmed' FROM generate_series(1, 50000) g;" >/dev/null
  psql -q "$base/$d" -c "VACUUM ANALYZE" >/dev/null
done
new_db_migrate_only() {
  APPOINTMENT_RELAY_DATABASE_URL="$base/$1" APPOINTMENT_RELAY_LOG_LEVEL=warn "$relay" migrate >"$work/migrate-$1.log" 2>&1 \
    || { cat "$work/migrate-$1.log" >&2; fail "migrate $1"; }
}
new_db_migrate_only cap_relay
# pgb DB [synchronous_commit] [clients] -> tps. A checkpoint first, so that none lands in one run and not the
# other.
pgb() {
  psql -q "$server" -c "CHECKPOINT" >/dev/null
  PGOPTIONS="-c synchronous_commit=${2:-off}" pgbench -n -f "$work/appointment.sql@1" -f "$work/state.sql@1" \
    -T "$capture_seconds" -c "${3:-2}" -j "${3:-2}" "$base/$1" 2>&1 | tee -a "$work/pgbench.log" | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
# What the triggers read before they notify (migration 0008): 0 while the relay reads on its own timer, as it
# does whenever changes come faster than 640/s (pgbench's rates here are far above); 1 while it waits for
# notifications (below 320/s): then every captured transaction notifies, and a notifying transaction commits
# alone (PostgreSQL holds a cluster-wide lock from its notify until its commit is flushed).
listening() { sql cap_relay "SELECT setval('appointment_relay.listening', $1)" >/dev/null; }
# pgb3 SYNC CLIENTS: one run each of no triggers, triggers with notifications off, triggers with them on.
pgb3() {
  local p r n
  p=$(pgb cap_plain "$1" "$2")
  listening 0
  r=$(pgb cap_relay "$1" "$2")
  listening 1
  n=$(pgb cap_relay "$1" "$2")
  echo "$p $r $n"
}
median() { sort -n | awk '{v[NR] = $1} END {printf "%.0f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (1 - b / a) * 100}'; }
# capture_set SYNC CLIENTS ROUNDS -> three lines: the tps of each round without triggers, with the
# notifications off, with them on.
capture_set() {
  local p r n ps="" rs="" ns=""
  for _ in $(seq 1 "$3"); do
    read -r p r n < <(pgb3 "$1" "$2")
    ps+=" $p"; rs+=" $r"; ns+=" $n"
  done
  printf '%s\n%s\n%s\n' "${ps# }" "${rs# }" "${ns# }"
}
med() { printf '%s\n' $1 | median; }
{ read -r plain_runs; read -r relay_runs; read -r notify_runs; } < <(capture_set off 2 "$capture_rounds")
outbox_rows=$(sql cap_relay "SELECT count(*) FROM appointment_relay.outbox")
[ "$outbox_rows" -gt 0 ] || fail "the triggers captured nothing in cap_relay"
plain=$(med "$plain_runs")
with=$(med "$relay_runs")
with_notify=$(med "$notify_runs")
overhead=$(pct "$plain" "$with")
overhead_notify=$(pct "$plain" "$with_notify")
sync_note=""
sync_overhead=""
if [ $quick -eq 0 ]; then  # the same with durable commits (Canvas's setting): bound by the disk's flush time
  { read -r sp_runs; read -r sr_runs; read -r sn_runs; } < <(capture_set on 2 "$capture_rounds")
  sync_plain=$(med "$sp_runs")
  sync_relay=$(med "$sr_runs")
  sync_notify=$(med "$sn_runs")
  sync_overhead=$(pct "$sync_plain" "$sync_relay")
  sync_overhead_notify=$(pct "$sync_plain" "$sync_notify")
  # Eight writers, as a clinic's application servers would be: where commits would share flushes.
  { read -r c8p_runs; read -r c8r_runs; read -r c8n_runs; } < <(capture_set on 8 3)
  c8_plain=$(med "$c8p_runs")
  c8_relay=$(med "$c8r_runs")
  c8_notify=$(med "$c8n_runs")
  sync_note="Durable commits (synchronous_commit on, fsync on), 2 clients: tps without triggers $sp_runs; with, notifications off $sr_runs; on $sn_runs. 8 clients (3 rounds): without $c8p_runs; off $c8r_runs; on $c8n_runs."
fi
log "   without triggers $plain_runs tps, with $relay_runs tps (notifications off), $notify_runs (on): overhead $overhead%, $overhead_notify%"
if [ "$only" = capture ]; then
  v10() { awk -v v="$1" 'BEGIN {print v <= 10 ? "met" : "**missed**"}'; }
  echo
  echo "# appointment-relay benchmarks: scenario 1 alone"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown). Load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| # | measure | result | target | verdict |"
  echo "| --- | --- | --- | --- | --- |"
  if [ -n "$sync_overhead" ]; then
    echo "| 1 | capture overhead, durable commits, 2 clients, notifications off (the relay reading on its timer) | $sync_overhead % ($sync_relay vs $sync_plain tps) | at most 10 % | $(v10 "$sync_overhead") |"
    echo "| 1 | the same with notifications on | $sync_overhead_notify % ($sync_notify tps) | reported | |"
    echo "| 1 | the same with 8 clients: notifications off / on | $(pct "$c8_plain" "$c8_relay") % / $(pct "$c8_plain" "$c8_notify") % ($c8_relay / $c8_notify vs $c8_plain tps) | reported | |"
  fi
  echo "| 1 | capture overhead, synchronous_commit off, notifications off / on | $overhead % / $overhead_notify % ($with / $with_notify vs $plain tps) | reported | |"
  echo
  echo "synchronous_commit off, tps without triggers: $plain_runs; with, notifications off: $relay_runs; on: $notify_runs. $sync_note"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# 3. Latency (and the CPU per event under a steady stream): 300 changes/s on one connection.
# latency_run DB LEVEL SECONDS [HOLD]: sets stream_cpu_us, stream_pg_us and lat_hwm; results in $work/DB.result.
# HOLD=hold: one Canvas write (an outbox id and a transaction id) stays open for the whole stream, committed
# after it (issue 16: reads must not grow with the age of the oldest open transaction).
latency_run() {
  local d=$1 cpu0 cpu1 pg0 pg1 n held_pid="" expect_extra=1
  new_db "$d" migrate
  start_receiver "$work/$d.received"
  start_relay "$d" "$work/relay-$d.log" "$2"
  warm_up "$d"
  if [ "${4:-}" = hold ]; then
    psql -qtA -v ON_ERROR_STOP=1 "$base/$d" >/dev/null 2>"$work/$d.held.err" <<SQL &
BEGIN;
SELECT canvas_test.book_appointment(canvas_test.create_patient(), '2021-12-24 21:30+00', 30);
SELECT pg_sleep($3 + 3);
COMMIT;
SQL
    held_pid=$!
    pids+=("$held_pid")
    sleep 1
  fi
  cpu0=$(cpu_ticks "$relay_pid")
  pg0=$(pg_ticks)
  "$producer" stream --db "$base/$d" --rate $latency_rate --seconds "$3" --out "$work/$d.commits" \
    >"$work/$d.produced" || fail "producer (stream)"
  n=$(kv "$work/$d.produced" notifiable)
  wait_delivered "$d" $((n + 1)) 0.05
  cpu1=$(cpu_ticks "$relay_pid")
  pg1=$(pg_ticks)
  lat_hwm=$(hwm_kb "$relay_pid")
  if [ -n "$held_pid" ]; then
    wait "$held_pid" || { cat "$work/$d.held.err" >&2; fail "the held transaction failed"; }
    wait_delivered "$d" $((n + 2)) 0.05  # the held event too, once committed
  fi
  stop_relay "$work/relay-$d.log"
  stop_receiver
  psql -qtA -F $'\t' "$base/$d" -c "SELECT id, (extract(epoch FROM captured_at) * 1e6)::bigint FROM appointment_relay.outbox" \
    >"$work/$d.captured"
  "$producer" latency --commits "$work/$d.commits" --received "$work/$d.received" --captured "$work/$d.captured" \
    ${5:+--window "$5"} >"$work/$d.result" \
    || { cat "$work/$d.result" >&2; fail "latency: events missing"; }
  stream_cpu_us=$(awk -v t=$((cpu1 - cpu0)) -v n="$n" -v hz="$tick" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  stream_pg_us=$(awk -v t=$((pg1 - pg0)) -v n="$n" -v hz="$tick" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  log "   $(tr '\n' ' ' <"$work/$d.result") cpu/event ${stream_cpu_us}us"
}
log "3. latency: $latency_rate changes/s for ${latency_seconds}s"
latency_run lat warn $latency_seconds
lat_n=$(kv "$work/lat.produced" notifiable)
lat_pg_us=$stream_pg_us
saved_cpu=$stream_cpu_us; saved_hwm=$lat_hwm
log "3b. the same at log level info (the default: one info line per delivered event), ${latency_seconds}s"
latency_run lat_info info "$latency_seconds"
info_cpu_us=$stream_cpu_us; info_hwm=$lat_hwm
stream_cpu_us=$saved_cpu; lat_hwm=$saved_hwm
log "3c. the same for ${held_seconds}s with one Canvas transaction held open throughout"
latency_run held warn "$held_seconds" hold "$held_window"
held_pg_us=$stream_pg_us; held_hwm=$lat_hwm; held_cpu_us=$stream_cpu_us
held_windows=$(grep '^window_' "$work/held.result" | sed 's/^window_[0-9]*=//' | tr '\n' ';' | sed 's/;$//; s/;/; /g')
stream_cpu_us=$saved_cpu; lat_hwm=$saved_hwm
stalled_scenario

# ---------------------------------------------------------------------------------------------------------
# 2. End-to-end throughput: two producer connections flat out while the relay delivers.
log "2. throughput: 2 connections flat out for ${flood_seconds}s"
new_db flood migrate
start_receiver "$work/flood.received"
start_relay flood "$work/relay-flood.log"
warm_up flood
cpu0=$(cpu_ticks "$relay_pid"); pg0=$(pg_ticks); busy0=$(busy_ticks); t0=$(date +%s%N)
"$producer" flood --db "$base/flood" --connections 2 --seconds $flood_seconds --out "$work/flood.commits" \
  >"$work/flood.produced" || fail "producer (flood)"
flood_n=$(kv "$work/flood.produced" notifiable)
wait_delivered flood $((flood_n + 1)) 0.05
cpu1=$(cpu_ticks "$relay_pid"); pg1=$(pg_ticks); busy1=$(busy_ticks); t1=$(date +%s%N)
flood_split=$(awk -v w=$((t1 - t0)) -v r=$((cpu1 - cpu0)) -v p=$((pg1 - pg0)) -v b=$((busy1 - busy0)) \
  -v hz="$tick" -v n="$(nproc)" 'BEGIN {s = w / 1e9 * hz / 100; printf "relay %.0f %%, PostgreSQL %.0f %%, whole machine %.0f %% (of %d %%)", r / s, p / s, b / s, n * 100}')
flood_hwm=$(hwm_kb "$relay_pid")
stop_relay "$work/relay-flood.log"
stop_receiver
"$producer" throughput --commits "$work/flood.commits" --received "$work/flood.received" \
  --warmup-seconds $flood_warmup >"$work/flood.result" || { cat "$work/flood.result" >&2; fail "throughput: events missing"; }
flood_cpu_us=$(awk -v t=$((cpu1 - cpu0)) -v n="$flood_n" -v hz="$tick" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
log "   $(tr '\n' ' ' <"$work/flood.result") cpu/event ${flood_cpu_us}us"

# ---------------------------------------------------------------------------------------------------------
# 4. Backlog drain (and CPU per event while draining, peak RSS, PostgreSQL's CPU and WAL per event): N pending
#    events, then the relay starts.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
# wal_summary FROM TO N OUT [UNIT]: pg_waldump's statistics of that WAL into OUT; prints the four largest
# resource managers' bytes divided by N, and the full-page images' within them. Nothing without pg_waldump.
wal_summary() {
  [ -x "$pg_bin/pg_waldump" ] || return 0
  "$pg_bin/pg_waldump" --stats -p "$pgdir/data/pg_wal" -s "$1" -e "$2" >"$4" 2>&1 || return 0
  awk -v n="$3" -v unit="${5:-B}" '{gsub(/[()]/, " ")}
    NF == 9 && $2 ~ /^[0-9]+$/ && $8 > 0 {c[$1] = $8}
    $1 == "Total" {fpi = $5}
    END {sep = ""
         for (j = 0; j < 4; j++) { m = 0; for (i in c) if (c[i] > m && !(i in u)) { m = c[i]; b = i }
                                   if (m > 0) { u[b] = 1; printf "%s%s %.1f %s", sep, b, m / n, unit; sep = ", " } }
         printf "; full-page images %.1f %s of them", fpi / n, unit}' "$4" 2>/dev/null || true
}
# drain NAME EVENTS [profile]: with the relay under test; sets drain_rate, drain_rate_first, drain_cpu_us,
# drain_pg_us, drain_wal_b, drain_wal_receipt_b, drain_wal_note, drain_hwm, drain_split, drain_insert_s.
drain() {
  local d=$1 n=$2
  new_db "$d" migrate
  "$producer" backlog --db "$base/$d" --events "$n" >"$work/$d.produced" || fail "producer (backlog)"
  drain_insert_s=$(kv "$work/$d.produced" seconds)
  # Vacuumed, so that the relay's reads find no page to prune (pruning writes WAL) and its inserts no
  # hint bits to set; then a checkpoint, so that every run starts equal and the relay's first write to each
  # page costs its full-page image, as in production, where a backlog is older than the last checkpoint.
  psql -q "$base/$d" -c "VACUUM ANALYZE" >/dev/null
  psql -q "$base/$d" -c "CHECKPOINT" >/dev/null
  start_receiver "$work/$d.received"
  local pg0 busy0 t0 pg1 busy1 t1 relay_t recv_t lsn0 lsn1 lsn2
  lsn0=$(lsn "$d")
  pg0=$(pg_ticks); busy0=$(busy_ticks)
  start_relay "$d" "$work/relay-$d.log"
  t0=$relay_started_ns
  if [ "${3:-}" = profile ]; then
    perf record -F 1999 -p "$relay_pid" -o "$work/perf.data" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  wait_delivered "$d" "$n" 0.1
  t1=$(date +%s%N); relay_t=$(cpu_ticks "$relay_pid"); recv_t=$(cpu_ticks "$receiver_pid")
  pg1=$(pg_ticks); busy1=$(busy_ticks)
  lsn1=$(lsn "$d")
  drain_cpu_us=$(awk -v t="$relay_t" -v n="$n" -v hz="$tick" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  drain_pg_us=$(awk -v t=$((pg1 - pg0)) -v n="$n" -v hz="$tick" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  drain_hwm=$(hwm_kb "$relay_pid")
  # Who used the CPU from relay start until all was delivered, in % of one core.
  drain_split=$(awk -v w=$((t1 - t0)) -v r="$relay_t" -v p=$((pg1 - pg0)) -v c="$recv_t" -v b=$((busy1 - busy0)) \
    -v hz="$tick" -v n="$(nproc)" 'BEGIN {s = w / 1e9 * hz / 100; printf "relay %.0f %%, PostgreSQL %.0f %%, receiver %.0f %%, whole machine %.0f %% (of %d %%) over %.2f s", r / s, p / s, c / s, b / s, n * 100, w / 1e9}')
  [ "${3:-}" = profile ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  stop_relay "$work/relay-$d.log"
  # The WAL measured ends here, after the relay's exit: the last outcomes, recorded after the last receipt
  # (on the way out at the latest), are part of delivering. It stops as soon as all is received.
  lsn2=$(lsn "$d")
  stop_receiver
  drain_wal_receipt_b=$(awk -v b="$(wal_bytes "$d" "$lsn0" "$lsn1")" -v n="$n" 'BEGIN {printf "%.1f", b / n}')
  drain_wal_b=$(awk -v b="$(wal_bytes "$d" "$lsn0" "$lsn2")" -v n="$n" 'BEGIN {printf "%.1f", b / n}')
  drain_wal_note=$(wal_summary "$lsn0" "$lsn2" "$n" "$work/wal-$d.txt")
  [ -z "$drain_wal_note" ] || drain_wal_note="per event: $drain_wal_note"
  "$producer" drain --received "$work/$d.received" --since "$relay_started_ns" --expect "$n" >"$work/$d.result" \
    || { cat "$work/$d.result" >&2; fail "drain: events missing"; }
  drain_rate=$(kv "$work/$d.result" per_s)
  drain_rate_first=$(kv "$work/$d.result" per_s_from_first)
  log "   $(tr '\n' ' ' <"$work/$d.result") cpu/event ${drain_cpu_us}us (incl. start-up), VmHWM ${drain_hwm} kB"
  log "   PostgreSQL ${drain_pg_us}us and WAL ${drain_wal_b} B per event (${drain_wal_receipt_b} B at the last receipt; $drain_wal_note)"
  log "   CPU over the drain: $drain_split"
}
log "4. backlog drain: $drain_small then $drain_events pending events"
drain drain_small $drain_small
small_rate=$drain_rate; small_cpu_us=$drain_cpu_us; small_hwm=$drain_hwm
drain drain_big $drain_events
big_insert_s=$drain_insert_s; big_split=$drain_split
big_rate=$drain_rate; big_cpu_us=$drain_cpu_us; big_hwm=$drain_hwm
big_pg_us=$drain_pg_us; big_wal_b=$drain_wal_b; big_wal_receipt_b=$drain_wal_receipt_b; big_wal_note=$drain_wal_note

# ---------------------------------------------------------------------------------------------------------
# 7. Retention: the relay restarted on the drained database with a retention of 1 s. It purges 5 s after it
#    becomes active, then every minute: the wait ends when the outbox is empty, when it has not shrunk for
#    retention_quiet seconds after it began to, or after retention_limit seconds.
# The outbox's live rows from the statistics (a count would read the purged pages, prune them and so write
# WAL and remove dead tuples itself); partitions included, a dropped one gone from the sum.
outbox_live() {
  sql "$1" "SELECT coalesce(sum(s.n_live_tup), 0) FROM pg_partition_tree('appointment_relay.outbox') t
            JOIN pg_stat_user_tables s ON s.relid = t.relid"
}
# retention DB: sets ret_removed, ret_rows, ret_seconds, ret_wal_b, ret_wal_per, ret_dead, ret_dead_tables,
# ret_vacuums, ret_wal_note.
retention() {
  local d=$1 lsn0 lsn1 live last t_start t_shrunk="" now since rows1
  # The drain's dead tuples are vacuumed first: what is counted after is what the removal left. The
  # checkpoint: rows past retention are older than the last checkpoint in production, so a removal that
  # writes to their pages pays a full-page image for each.
  psql -q "$base/$d" -c "VACUUM ANALYZE" >/dev/null
  psql -q "$base/$d" -c "CHECKPOINT" >/dev/null
  ret_rows=$(sql "$d" "SELECT count(*) FROM appointment_relay.outbox")
  since=$(sql "$d" "SELECT now()")
  start_receiver "$work/$d-retention.received"
  lsn0=$(lsn "$d")
  relay_env=(APPOINTMENT_RELAY_DATABASE_RETENTION=1s)
  start_relay "$d" "$work/relay-$d-retention.log"
  relay_env=()
  t_start=$(date +%s%N)
  last=$ret_rows
  while :; do
    sleep 0.25
    kill -0 "$relay_pid" 2>/dev/null || fail "the relay died (log: $(tail -n 5 "$work/relay-$d-retention.log" | tr '\n' ' '))"
    live=$(outbox_live "$d"); now=$(date +%s%N)
    if [ "$live" -lt "$last" ]; then last=$live; t_shrunk=$now; fi
    [ "$live" -eq 0 ] && break
    [ -n "$t_shrunk" ] && [ $((now - t_shrunk)) -ge $((retention_quiet * 1000000000)) ] && break
    [ $((now - t_start)) -lt $((retention_limit * 1000000000)) ] || break
  done
  lsn1=$(lsn "$d")
  ret_seconds=$(awk -v w=$((now - relay_started_ns)) 'BEGIN {printf "%.1f", w / 1e9}')
  stop_relay "$work/relay-$d-retention.log"
  stop_receiver
  # The relay's statistics reach the shared ones when its backends exit.
  for _ in $(seq 1 50); do
    [ "$(sql "$d" "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")" -eq 0 ] && break
    sleep 0.1
  done
  sql "$d" "SELECT pg_stat_force_next_flush()" >/dev/null
  sleep 0.5
  ret_dead=$(sql "$d" "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE schemaname = 'appointment_relay'")
  ret_dead_tables=$(sql "$d" "SELECT coalesce(string_agg(relname || ' ' || n_dead_tup, ', ' ORDER BY n_dead_tup DESC), 'none')
                              FROM pg_stat_user_tables WHERE schemaname = 'appointment_relay' AND n_dead_tup > 0")
  ret_vacuums=$(sql "$d" "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'appointment_relay'
                          AND greatest(last_vacuum, last_autovacuum) > '$since'")
  rows1=$(sql "$d" "SELECT count(*) FROM appointment_relay.outbox")  # last: it may prune
  ret_removed=$((ret_rows - rows1))
  ret_wal_b=$(wal_bytes "$d" "$lsn0" "$lsn1")
  ret_wal_per=n/a
  [ "$ret_removed" -le 0 ] || ret_wal_per=$(awk -v b="$ret_wal_b" -v n="$ret_removed" 'BEGIN {printf "%.1f", b / n}')
  ret_wal_note=$(wal_summary "$lsn0" "$lsn1" 1024 "$work/wal-$d-retention.txt" kB)
  log "   removed $ret_removed of $ret_rows outbox rows in ${ret_seconds}s: WAL $ret_wal_b B ($ret_wal_per B per row; ${ret_wal_note:-no pg_waldump}), dead tuples left $ret_dead ($ret_dead_tables), tables vacuumed meanwhile $ret_vacuums"
}
log "7. retention: the relay restarted with a retention of 1 s on the drained $drain_events events"
retention drain_big

# ---------------------------------------------------------------------------------------------------------
# 8. The drain side by side with a build of an earlier commit, alternating, each database migrated by the
#    build that drains it.
if [ -n "$baseline" ]; then
  log "8. drain of $baseline_events events, $baseline_rounds rounds, $baseline against this build"
  median_f() { sort -g | awk -v f="${1:-%.1f}" '{v[NR] = $1} END {printf f, NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
  declare -A cmp=()  # "b.rate" (the baseline's), "c.rate" (this build's), ...: the rounds' figures
  for r in $(seq 1 "$baseline_rounds"); do
    # ABBA: the build that drains first alternates, so that a drift of the machine favours neither.
    if [ $((r % 2)) -eq 1 ]; then order="b c"; else order="c b"; fi
    for who in $order; do
      if [ "$who" = b ]; then use_baseline; log "   round $r: $baseline"; else use_current; log "   round $r: this build"; fi
      drain "cmp_${who}_$r" "$baseline_events"
      psql -q "$server" -c "DROP DATABASE cmp_${who}_$r" >/dev/null
      cmp[$who.rate]+=" $drain_rate"; cmp[$who.first]+=" $drain_rate_first"; cmp[$who.cpu]+=" $drain_cpu_us"
      cmp[$who.pg]+=" $drain_pg_us"; cmp[$who.wal]+=" $drain_wal_b"
    done
  done
  use_current
  cmp_m() { printf '%s\n' ${cmp[$1]} | median_f "${2:-%.1f}"; }
  cmp_b_rate_m=$(cmp_m b.rate %.0f); cmp_b_first_m=$(cmp_m b.first %.0f); cmp_b_cpu_m=$(cmp_m b.cpu); cmp_b_pg_m=$(cmp_m b.pg); cmp_b_wal_m=$(cmp_m b.wal)
  cmp_c_rate_m=$(cmp_m c.rate %.0f); cmp_c_first_m=$(cmp_m c.first %.0f); cmp_c_cpu_m=$(cmp_m c.cpu); cmp_c_pg_m=$(cmp_m c.pg); cmp_c_wal_m=$(cmp_m c.wal)
  cmp_rate_x=$(awk -v c="$cmp_c_rate_m" -v b="$cmp_b_rate_m" 'BEGIN {printf "%.2f", c / b}')
  cmp_cpu_x=$(awk -v c="$cmp_c_cpu_m" -v b="$cmp_b_cpu_m" 'BEGIN {printf "%.2f", c / b}')
  cmp_pg_x=$(awk -v c="$cmp_c_pg_m" -v b="$cmp_b_pg_m" 'BEGIN {printf "%.2f", c / b}')
  cmp_wal_x=$(awk -v c="$cmp_c_wal_m" -v b="$cmp_b_wal_m" 'BEGIN {printf "%.2f", c / b}')
  log "   medians, $baseline vs this build: ${cmp_b_rate_m} vs ${cmp_c_rate_m}/s (x$cmp_rate_x), relay ${cmp_b_cpu_m} vs ${cmp_c_cpu_m} us (x$cmp_cpu_x), PostgreSQL ${cmp_b_pg_m} vs ${cmp_c_pg_m} us (x$cmp_pg_x), WAL ${cmp_b_wal_m} vs ${cmp_c_wal_m} B (x$cmp_wal_x)"
fi

# ---------------------------------------------------------------------------------------------------------
# 6. The classifier alone.
classifier_ns=n/a
if [ -x "$classifier_bench" ]; then
  log "6. classifier (Google Benchmark)"
  "$classifier_bench" --benchmark_min_time=$bench_min_time --benchmark_format=console >"$work/classifier.txt" 2>/dev/null \
    || fail "classifier_bench"
  classifier_ns=$(awk '$1 == "BM_created" {print $4}' "$work/classifier.txt")  # CPU time
fi

profile_note=""
if [ $profile -eq 1 ]; then
  if command -v perf >/dev/null; then
    log "profile: perf record on the relay during an extra drain of $drain_events events"
    drain drain_profile $drain_events profile
    { echo "perf record -F 1999 -p <relay> during a drain of $drain_events events ($build_type build); self time."
      echo; echo "== by shared object"
      perf report -i "$work/perf.data" --stdio --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+$//' | head -n 15
      echo; echo "== by symbol (at least 0.7 %)"
      perf report -i "$work/perf.data" --stdio --sort dso,symbol --percent-limit 0.7 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | cut -c1-240 | head -n 80
    } >"$work/profile-drain.txt" || true
    profile_note="profile-drain.txt"
  else
    log "profile: perf not installed, skipped"
  fi
fi

# ---------------------------------------------------------------------------------------------------------
# The table.
lat_p50=$(kv "$work/lat.result" p50_us); lat_p99=$(kv "$work/lat.result" p99_us); lat_max=$(kv "$work/lat.result" max_us)
ratio=$(kv "$work/flood.result" ratio)
ms() { awk -v u="$1" 'BEGIN {printf "%.3f ms", u / 1000}'; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f MB", k / 1024}'; }
verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {ok = (op == "<=") ? v <= t : v >= t; print ok ? "met" : "**missed**"}'; }
info_p50=$(kv "$work/lat_info.result" p50_us); info_p99=$(kv "$work/lat_info.result" p99_us)
# The figures against an earlier build: only with the comparison.
if [ -n "$baseline" ]; then
  vs_rate="$cmp_c_rate_m vs $cmp_b_rate_m events/s: x$cmp_rate_x"; vs_rate_v=$(verdict "$cmp_rate_x" ">=" 1.5)
  vs_cpu="$cmp_c_cpu_m µs vs $cmp_b_cpu_m µs: x$cmp_cpu_x"; vs_cpu_v=$(verdict "$cmp_cpu_x" "<=" 1)
  vs_pg="$cmp_c_pg_m µs vs $cmp_b_pg_m µs: x$cmp_pg_x"; vs_pg_v=$(verdict "$cmp_pg_x" "<=" 0.5)
  vs_wal="$cmp_c_wal_m B vs $cmp_b_wal_m B: x$cmp_wal_x"
else
  vs_rate="(no baseline run)"; vs_cpu=$vs_rate; vs_pg=$vs_rate; vs_wal=$vs_rate; vs_rate_v=n/a; vs_cpu_v=n/a; vs_pg_v=n/a
fi
baseline_name=${baseline:-be1b492}
ret_verdict=$([ "$ret_wal_per" = n/a ] && echo "n/a (nothing removed)" || verdict "$ret_wal_per" "<=" 20)
peak_hwm=$small_hwm
for h in "$big_hwm" "$lat_hwm" "$info_hwm" "$flood_hwm"; do [ "$h" -gt "$peak_hwm" ] && peak_hwm=$h; done
hwm_growth=$(awk -v a="$small_hwm" -v b="$big_hwm" 'BEGIN {printf "%.1f", (b - a) / 1024}')

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem=$(awk '/^MemTotal/ {printf "%.1f GB", $2 / 1048576}' /proc/meminfo)
pg_version=$(sql postgres "SHOW server_version")
when=$(date -u +%Y-%m-%dT%H:%M:%SZ)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit (modified)"
mode=$([ $quick -eq 1 ] && echo "quick (tiny sizes: a smoke run, not a measurement)" || echo full)

report=$work/report.md
{
  echo "# appointment-relay benchmarks"
  echo
  echo "$when, commit $commit, $build_type build, run: $mode."
  echo
  echo "Machine: $(nproc) cores ($cpu_model), $mem RAM, Linux $(uname -r), PostgreSQL $pg_version (fsync on,"
  echo "throwaway cluster); PostgreSQL, producer, relay and receiver share the cores. Load average (1, 5, 15 min)"
  echo "at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (above 0.5: other work shared the machine)."
  echo "Scheduling delay before the run (a thread sleeping 1 ms wakes late by): p50 $(kv "$work/jitter-start.result" late_p50_us) µs, p99 $(kv "$work/jitter-start.result" late_p99_us) µs, max $(kv "$work/jitter-start.result" late_max_us) µs."
  echo
  echo "| # | measure | result | target | verdict | Node.js bar |"
  echo "| --- | --- | --- | --- | --- | --- |"
  if [ -n "$sync_overhead" ]; then
    echo "| 1 | capture overhead: insert tps with triggers vs without, durable commits (synchronous_commit on, Canvas's setting), 2 clients, the relay reading on its timer (notifications off, as above 640 changes/s) | $sync_overhead % ($sync_relay vs $sync_plain tps) | at most 10 % | $(verdict "$sync_overhead" "<=" 10) | |"
    echo "| 1 | the same with notifications on (the relay waiting for them, below 320 changes/s) | $sync_overhead_notify % ($sync_notify tps) | reported | | |"
    echo "| 1 | the same with 8 clients: notifications off / on | $(pct "$c8_plain" "$c8_relay") % / $(pct "$c8_plain" "$c8_notify") % ($c8_relay / $c8_notify vs $c8_plain tps) | reported | | |"
  fi
  echo "| 1 | capture overhead, synchronous_commit off (CPU-bound: the triggers' own cost), notifications off / on | $overhead % / $overhead_notify % ($with / $with_notify vs $plain tps) | reported | | |"
  echo "| 2 | throughput: delivered/s over committed notifiable/s, 2 producers flat out | $ratio ($(kv "$work/flood.result" delivered_per_s) vs $(kv "$work/flood.result" committed_per_s) per s) | at least 0.98 | $(verdict "$ratio" ">=" 0.98) | |"
  echo "| 3 | latency at $latency_rate changes/s, commit to receipt, p50, relay at log level warn | $(ms "$lat_p50") | at most 0.5 ms | $(verdict "$lat_p50" "<=" 500) | 0.6-1.1 ms |"
  echo "| 3 | the same at log level info (the default) | $(ms "$info_p50") | at most 0.5 ms | $(verdict "$info_p50" "<=" 500) | |"
  echo "| 3 | latency p99, log level warn | $(ms "$lat_p99") | at most 2 ms | $(verdict "$lat_p99" "<=" 2000) | 3.4-4.5 ms |"
  echo "| 3 | latency p99, log level info | $(ms "$info_p99") | at most 2 ms | $(verdict "$info_p99" "<=" 2000) | |"
  echo "| 3 | latency max, warn / info | $(ms "$lat_max") / $(ms "$(kv "$work/lat_info.result" max_us)") | | | |"
  echo "| 3 | the same from the trigger's clock (before COMMIT), p50 / p99 / max | $(ms "$(kv "$work/lat.result" capture_p50_us)") / $(ms "$(kv "$work/lat.result" capture_p99_us)") / $(ms "$(kv "$work/lat.result" capture_max_us)") | | | |"
  echo "| 3c | latency with one Canvas transaction held open for ${held_seconds}s, per ${held_window}s window of commit time | $held_windows | flat | | p50 1.5 ms, p99 5 ms |"
  echo "| 3c | PostgreSQL CPU per event: plain stream vs with the held transaction | $lat_pg_us µs vs $held_pg_us µs | no growth | | |"
  echo "| 3c | relay CPU per event and VmHWM with the held transaction | $held_cpu_us µs, $(mb "$held_hwm") | flat | | |"
  stalled_rows
  echo "| 4 | backlog drain, $drain_events events, from relay start | $big_rate events/s | at least 30,000/s | $(verdict "$big_rate" ">=" 30000) | 10,000-14,000/s |"
  echo "| 4 | backlog drain against $baseline_name, same run, $baseline_events events, median of $baseline_rounds each | $vs_rate | at least x1.5 | $vs_rate_v | |"
  echo "| 5 | relay CPU per event while draining | $big_cpu_us µs | at most 15 µs | $(verdict "$big_cpu_us" "<=" 15) | 50-85 µs |"
  echo "| 5 | relay CPU per event while draining, against $baseline_name (as above) | $vs_cpu | not worse (x1 at most) | $vs_cpu_v | |"
  echo "| 5 | relay CPU per event, steady stream ($latency_rate/s) | $stream_cpu_us µs | below 270 µs | $(verdict "$stream_cpu_us" "<=" 270) | 270-300 µs |"
  echo "| 5 | relay peak RSS (VmHWM), largest of the measured runs | $(mb "$peak_hwm") | at most 20 MB | $(verdict "$((peak_hwm / 1024))" "<=" 20) | 92-147 MB |"
  echo "| 5 | peak RSS flat: backlog $drain_small vs $drain_events | $(mb "$small_hwm") vs $(mb "$big_hwm") (+$hwm_growth MB) | flat | $(verdict "$hwm_growth" "<=" 2) | |"
  echo "| 6 | classifier alone, created payload (JSON included) | $classifier_ns ns/change | | | |"
  echo "| 11 | WAL per delivered event while draining $drain_events events (relay start to its exit after the last receipt) | $big_wal_b B | at most 60 B | $(verdict "$big_wal_b" "<=" 60) | |"
  echo "| 11 | PostgreSQL CPU per delivered event while draining $drain_events events | $big_pg_us µs | | | |"
  echo "| 11 | PostgreSQL CPU per event while draining, against $baseline_name (as row 4) | $vs_pg | at most x0.5 | $vs_pg_v | |"
  echo "| 11 | WAL per event while draining, against $baseline_name (as row 4) | $vs_wal | reported | | |"
  echo "| 11 | retention: WAL per removed outbox row | $ret_wal_per$([ "$ret_wal_per" = n/a ] || echo " B") ($ret_removed of $ret_rows rows removed in $ret_seconds s, $ret_wal_b B of WAL) | at most 20 B | $ret_verdict | |"
  echo "| 11 | retention: dead tuples left in appointment_relay's tables | $ret_dead | none | $(verdict "$ret_dead" "<=" 0) | |"
  echo
  echo "Details:"
  echo
  echo "- Capture: pgbench -c 2 -j 2, ${capture_seconds}s per run, ${capture_rounds} alternating rounds (medians in the table), single-row inserts (half api_appointment, half api_notestatechangeevent with CLD/RVT/CVD/NSW), the target row with durable commits (Canvas's setting, where the flush wait dominates), the reported row with synchronous_commit off, so that the transactions' own work is measured and not the disk's flush time (the stricter measure: a flush-bound rate hides the triggers); a CHECKPOINT before each run; no relay running (the triggers' cost alone), the triggers' notifications set off and on by hand (\`appointment_relay.listening\`, migration 0008) as the relay sets them by the rate of changes. synchronous_commit off, tps without triggers: $plain_runs; with, notifications off: $relay_runs; on: $notify_runs. $sync_note"
  echo "- Latency: $(kv "$work/lat.produced" changes) changes, $lat_n notifiable (cycle per appointment: created, BKD, cancelled, reverted, rescheduled, checked_in); p90 $(ms "$(kv "$work/lat.result" p90_us)"), mean $(ms "$(kv "$work/lat.result" mean_us)"), min $(ms "$(kv "$work/lat.result" min_us)") (negative: the webhook arrived before the producer, descheduled after its COMMIT returned, read its clock; the row above measures from the capturing trigger's clock_timestamp() instead, which is before the COMMIT and its WAL flush); missing $(kv "$work/lat.result" missing), duplicates $(kv "$work/lat.result" duplicates). Commit time: producer's clock right after COMMIT returns; receipt: the receiver's clock when the request is read. At log level info (a run of the same length and rate, one info line per delivered event to a file): p90 $(ms "$(kv "$work/lat_info.result" p90_us)"), relay CPU $info_cpu_us µs per event, VmHWM $(mb "$info_hwm")."
  echo "- Throughput: $(kv "$work/flood.produced" changes) changes, $flood_n notifiable in $(kv "$work/flood.produced" seconds)s; window from ${flood_warmup}s after the first commit to the last; last receipt $(kv "$work/flood.result" catch_up_ms) ms after the last commit; latency under this load p50 $(ms "$(kv "$work/flood.result" p50_us)"), p99 $(ms "$(kv "$work/flood.result" p99_us)"); relay CPU $flood_cpu_us µs per event; CPU use over the run (% of one core): $flood_split; VmHWM $(mb "$flood_hwm")."
  echo "- Drain: $drain_events events (half created, half cancelled), inserted in ${big_insert_s}s in transactions of 10,000 rows before the relay starts; rate = events / (last receipt - relay start), start-up included; from the first receipt: $(kv "$work/drain_big.result" per_s_from_first)/s; first receipt $(kv "$work/drain_big.result" first_receipt_ms) ms after start. CPU from relay start to the last 2xx: $big_split. Smaller backlog ($drain_small): $small_rate/s, $small_cpu_us µs per event. CPU per event: the relay's whole utime+stime (start-up included) over the events."
  stalled_details
  echo "- Steady stream: relay CPU (utime+stime) over the stream divided by its $lat_n notifiable events; VmHWM $(mb "$lat_hwm")."
  echo "- What the relay costs the database (issue 11; method in notes.md). Drain of $drain_events events: WAL from just before the relay starts (after VACUUM ANALYZE and a CHECKPOINT) to its exit, stopped as soon as the last event was received (its last outcome writes included), $big_wal_b B per event${big_wal_note:+ ($big_wal_note)}; to the last receipt, $big_wal_receipt_b B. PostgreSQL CPU: every postgres process's utime+stime over the same span, over the events. Events counted delivered by the relay's /metrics (2xx answers), checked against the receiver's record. Retention: the relay restarted with database.retention 1 s after a VACUUM ANALYZE and a CHECKPOINT; WAL from just before its start to the end of the wait (outbox empty, or no shrinking for ${retention_quiet}s after it began, or ${retention_limit}s): $ret_wal_b B for $ret_removed rows${ret_wal_note:+ ($ret_wal_note)}; dead tuples (pg_stat_user_tables after the relay's backends exited): $ret_dead_tables; tables of the schema vacuumed meanwhile: $ret_vacuums."
  [ -n "$baseline" ] && echo "- Against $baseline ($build_type build of its own git worktree, same flags; its databases migrated by it): $baseline_rounds drains of $baseline_events events each, alternating (ABBA), one database each; the table gives medians. Per round, $baseline then this build: events/s ${cmp[b.rate]# } vs ${cmp[c.rate]# }; from the first receipt ${cmp[b.first]# } vs ${cmp[c.first]# } (medians $cmp_b_first_m vs $cmp_c_first_m); relay µs/event ${cmp[b.cpu]# } vs ${cmp[c.cpu]# }; PostgreSQL µs/event ${cmp[b.pg]# } vs ${cmp[c.pg]# }; WAL B/event ${cmp[b.wal]# } vs ${cmp[c.wal]# }. This build starts sending a lease (200 ms here) after it takes the leadership lock; $baseline has no lease."
  echo "- Relay at log level warn except where info is said. Classifier: BM_created of bench/classifier_bench.cpp:"
  echo
  echo '```'
  grep -E '^(BM_|Benchmark|-)' "$work/classifier.txt" 2>/dev/null || echo "(classifier_bench not built: Google Benchmark missing)"
  echo '```'
  [ -n "$profile_note" ] && echo && echo "Profile of the relay during a drain (perf record, self time): [profile-drain.txt](profile-drain.txt)."
  [ $quick -eq 0 ] && echo && echo "What bounds the missed targets, with the evidence, and what would move them: [notes.md](notes.md)."
} >"$report"

echo
cat "$report"
if [ $quick -eq 0 ]; then
  results=${BENCH_RESULTS_DIR:-bench/results}
  mkdir -p "$results"
  stamp=$(date -u +%Y-%m-%d-%H%M)
  cp "$report" "$results/latest.md"
  cp "$report" "$results/$stamp.md"
  [ -n "$profile_note" ] && cp "$work/profile-drain.txt" "$results/profile-drain.txt"
  log "results written to $results/latest.md and $results/$stamp.md"
else
  out=$(mktemp -d /tmp/appointment-relay-bench-quick.XXXXXX)
  cp "$report" "$out/latest.md"
  log "quick run: every event delivered; table in $out/latest.md"
fi
