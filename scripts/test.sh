#!/usr/bin/env bash
# The test command: installs the dependencies, builds, starts a throwaway PostgreSQL, runs every test in a
# normal build and again under AddressSanitizer + UndefinedBehaviorSanitizer, then fuzzes (scripts/fuzz.sh). Non-zero on any failure.
#   scripts/test.sh            everything
#   scripts/test.sh --quick    the normal build only (a developer's loop), no fuzzing
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
quick=0
[ "${1:-}" = "--quick" ] && quick=1
jobs=$(nproc)

scripts/install-deps.sh

pgdir=$(mktemp -d /tmp/appointment-relay-pg.XXXXXX)
cleanup() { scripts/pg-cluster.sh stop "$pgdir" || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
server=$(scripts/pg-cluster.sh start "$pgdir")
export APPOINTMENT_RELAY_TEST_SERVER_URL="$server"
export APPOINTMENT_RELAY_TEST_DATABASE_URL="${server%/postgres}/relay_test"
export APPOINTMENT_RELAY_TEST_PGDIR="$pgdir"
export APPOINTMENT_RELAY_TEST_REQUIRE_DB=1
psql -q "$server" -c "CREATE DATABASE relay_test" >/dev/null
echo "test.sh: PostgreSQL at $APPOINTMENT_RELAY_TEST_DATABASE_URL"

run_suite() {  # build-dir, extra cmake args...
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  # One test at a time: one of them restarts the PostgreSQL server under everyone's feet.
  (cd "$dir" && ctest --output-on-failure --timeout 300)
}

echo "== normal build"
run_suite build
echo "== benchmark smoke run (scripts/bench.sh --quick: tiny sizes, checks that every event is delivered)"
BENCH_SKIP_DEPS=1 BENCH_BUILD_DIR=build scripts/bench.sh --quick
echo "== Debian package of the normal build (cpack, lintian; scripts/package.sh builds the one to ship)"
scripts/package.sh --build-dir build
if [ $quick -eq 0 ]; then
  echo "== AddressSanitizer + UndefinedBehaviorSanitizer build"
  # At -O1: the sanitizers find the same faults, the build is much faster on 2 cores.
  ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS="suppressions=$root/tests/lsan.supp" UBSAN_OPTIONS=print_stacktrace=1 \
    run_suite build-asan -DAPPOINTMENT_RELAY_SANITIZE=ON -DAPPOINTMENT_RELAY_BENCH=OFF \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g -DNDEBUG"
  echo "== libFuzzer: config parser, outbox row decoding + classifier (60 s each)"
  scripts/fuzz.sh
fi
echo "test.sh: all tests passed"
