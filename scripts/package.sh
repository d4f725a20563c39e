#!/usr/bin/env bash
# Builds the Debian package (CPack, cmake/packaging.cmake) and checks it with lintian; prints the .deb's path
# on the last line.
#   scripts/package.sh                    a Release build of its own in build-package/, with Debian's
#                                         hardening flags (dpkg-buildflags): the package to ship
#   scripts/package.sh --build-dir DIR    packages an existing build (scripts/test.sh: its normal build), to
#                                         check the package's contents and lintian without a second build
# lintian must find nothing but what cmake/debian/lintian-overrides explains; in --build-dir mode the
# hardening tags are left out too, since a test build is not built with dpkg-buildflags.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build_dir=""
reuse=""
case "${1:-}" in
  "") ;;
  --build-dir)
    build_dir=${2:?usage: $0 [--build-dir DIR]}
    reuse=1
    ;;
  *) echo "usage: $0 [--build-dir DIR]" >&2; exit 2 ;;
esac

# The build's own dependencies, and the packaging tools: scdoc (man pages), dpkg-dev (dpkg-shlibdeps for
# Depends, dpkg-buildflags), file (CPack finds the binaries to run dpkg-shlibdeps on), lintian.
scripts/install-deps.sh --build
missing=()
for p in scdoc dpkg-dev file lintian; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "package: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

lintian_extra=()
if [ -z "$build_dir" ]; then
  build_dir=build-package
  # Debian's hardening flags (fortify, stack protector, relro, bindnow) on top of the Release build.
  export DEB_BUILD_MAINT_OPTIONS=hardening=+all
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAPPOINTMENT_RELAY_TESTS=OFF \
    -DAPPOINTMENT_RELAY_BENCH=OFF -DCMAKE_INSTALL_PREFIX=/usr \
    -DCMAKE_CXX_FLAGS="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CXXFLAGS)" \
    -DCMAKE_EXE_LINKER_FLAGS="$(dpkg-buildflags --get LDFLAGS)" >/dev/null
else
  [ -f "$build_dir/CMakeCache.txt" ] || { echo "package: $build_dir is not a configured build" >&2; exit 2; }
  # Re-run the configuration: scdoc may have been installed since (the man pages are built only with it).
  cmake "$build_dir" >/dev/null
  lintian_extra=(--suppress-tags hardening-no-fortify-functions,hardening-no-relro,hardening-no-bindnow,hardening-no-pie)
fi
grep -q '^SCDOC:FILEPATH=/' "$build_dir/CMakeCache.txt" || { echo "package: scdoc not found" >&2; exit 1; }
cmake --build "$build_dir" --target appointment-relay man_pages debian_changelog
rm -f "$build_dir"/appointment-relay_*.deb
(cd "$build_dir" && cpack -G DEB >/dev/null)
deb=$(ls "$build_dir"/appointment-relay_*.deb)

echo "== $deb"
if [ -z "$reuse" ]; then
  dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
  dpkg-deb --contents "$deb" | awk '{print $1, $6}'
fi
# An error or a warning fails the script; informational tags are printed (each one explained in the overrides).
lintian --fail-on error,warning --info --display-info "${lintian_extra[@]}" "$deb"
echo "package: lintian found nothing that is not explained in cmake/debian/lintian-overrides"
echo "$root/$deb"
