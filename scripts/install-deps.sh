#!/usr/bin/env bash
# Installs what the build, the tests and the daemon need, from Debian 12's packages.
# Idempotent, and quiet when everything is there. Used by scripts/test.sh, the quickstart and the Dockerfile.
#   scripts/install-deps.sh           build + test + runtime
#   scripts/install-deps.sh --build   what the build needs (the Dockerfile's build stage)
#   scripts/install-deps.sh --runtime only what the daemon needs to run
set -euo pipefail
runtime=(libboost-system1.74.0 libpqxx-6.4 libspdlog1.10 libtomlplusplus3 libssl3 libsystemd0 ca-certificates)
build=(g++ cmake ninja-build pkg-config make libboost-dev libboost-system-dev nlohmann-json3-dev libspdlog-dev
  libpqxx-dev libssl-dev libtomlplusplus-dev libsystemd-dev)
test=(libgtest-dev libgmock-dev libbenchmark-dev postgresql postgresql-contrib openssl curl procps iproute2 clang
  libclang-rt-14-dev prometheus nodejs
  chromium  # the admin status page in a real browser (tests/faults/admin_api_test.cpp)
  scdoc dpkg-dev file lintian bash-completion)  # the Debian package's check (scripts/package.sh --build-dir)
want=("${runtime[@]}")
case "${1:-}" in
  --runtime) ;;
  --build) want+=("${build[@]}") ;;
  "") want+=("${build[@]}" "${test[@]}") ;;
  *) echo "usage: $0 [--build|--runtime]" >&2; exit 2 ;;
esac
# kubectl and npm for the deploy/ checks: Debian's kubernetes-client and npm, unless a kubectl or an npm is
# there already (another package of it, e.g. Node.js's own npm, would conflict with Debian's).
if [ -z "${1:-}" ]; then
  command -v kubectl >/dev/null || want+=(kubernetes-client)
  command -v npm >/dev/null || want+=(npm)
fi
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
