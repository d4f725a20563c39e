#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build-fuzz/) and runs each for FUZZ_SECONDS (default 60) on its
# seed corpus tests/fuzz/corpus/<target>/. New inputs go to a temporary directory, not into the repository;
# a crash leaves its input in build-fuzz/findings/ and fails the script.
#   scripts/fuzz.sh [target...]      default: every target
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(config_fuzz outbox_row_fuzz)

CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAPPOINTMENT_RELAY_FUZZ=ON \
  -DAPPOINTMENT_RELAY_TESTS=OFF -DAPPOINTMENT_RELAY_BENCH=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]}"

mkdir -p build-fuzz/findings
for t in "${targets[@]}"; do
  work=$(mktemp -d /tmp/appointment-relay-fuzz.XXXXXX)
  echo "fuzz.sh: $t for ${seconds}s"
  if ! (cd build-fuzz/findings && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$root/build-fuzz/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "$work" "$root/tests/fuzz/corpus/$t" 2>"$work.log"); then
    tail -n 60 "$work.log" >&2
    echo "fuzz.sh: $t FAILED (input saved in build-fuzz/findings/)" >&2
    rm -rf "$work"
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added)|Done " "$work.log" || true
  rm -rf "$work" "$work.log"
done
echo "fuzz.sh: no crash"
