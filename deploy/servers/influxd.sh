#!/usr/bin/env bash
# Builds InfluxDB OSS 2 (`influxd`) from source into a cache keyed by version, for the tests.
#
#   deploy/servers/influxd.sh            # prints the binary's path; builds it first if missing
#
# Sources come through the Go module proxy (influxdb and flux) and the Rust crate registry
# (libflux's crates). Nothing is done when the binary for INFLUXD_VERSION is already cached.
# Cold: ~8 minutes on 2 cores (459 s measured), ~2.7 GB of disk (Go and cargo caches included).
#
# Environment:
#   RUNWATCH_SERVERS_CACHE  cache root (default ~/.cache/runwatch/servers)
#   INFLUXD_VERSION         the release to build (default: versions.env, which compose matches)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
INFLUXD_VERSION="${INFLUXD_VERSION:-$(sed -n 's/^INFLUXD_VERSION=//p' "$here/versions.env")}"
CACHE_ROOT="${RUNWATCH_SERVERS_CACHE:-$HOME/.cache/runwatch/servers}"
PREFIX="$CACHE_ROOT/influxd-$INFLUXD_VERSION"
BINARY="$PREFIX/bin/influxd"

if [ -x "$BINARY" ] && "$BINARY" version >/dev/null 2>&1; then
  echo "$BINARY"
  exit 0
fi

log() { echo "influxd.sh: $*" >&2; }
need() { command -v "$1" >/dev/null || { log "missing '$1' ($2)"; exit 1; }; }
need go "Go toolchain"
need cargo "Rust toolchain (rustup)"
need pkg-config "Debian package pkg-config"
need cc "a C compiler"

started=$(date +%s)
work="$CACHE_ROOT/build/influxd-$INFLUXD_VERSION"
rm -rf "$work"
mkdir -p "$work" "$PREFIX/bin"

module_dir() {  # module@version -> its read-only directory in the Go module cache
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

log "fetching influxdb v$INFLUXD_VERSION through the Go module proxy"
influx_src=$(module_dir "github.com/influxdata/influxdb/v2@v$INFLUXD_VERSION")
[ -n "$influx_src" ] || { log "could not download influxdb v$INFLUXD_VERSION"; exit 1; }
flux_version=$(awk '$1 == "github.com/influxdata/flux" { print $2; exit }' "$influx_src/go.mod")
log "influxdb v$INFLUXD_VERSION pins flux $flux_version"
flux_src=$(module_dir "github.com/influxdata/flux@$flux_version")
[ -n "$flux_src" ] || { log "could not download flux $flux_version"; exit 1; }

# The module cache is read-only: build from writable copies.
cp -r "$influx_src" "$work/influxdb"
mkdir -p "$work/flux"  # libflux's build script reads the Flux stdlib from ../stdlib
cp -r "$flux_src/libflux" "$flux_src/stdlib" "$work/flux/"
chmod -R u+w "$work"

log "building libflux (cargo, release)"
# flux pins an old Rust channel that cannot be downloaded here, and its crates deny warnings
# that newer compilers raise: build with the installed toolchain, warnings left as warnings.
rust_toolchain=$(rustup show active-toolchain 2>/dev/null | awk '{ print $1 }')
(
  cd "$work/flux/libflux"
  RUSTUP_TOOLCHAIN="${rust_toolchain:-stable}" RUSTFLAGS="--cap-lints=warn" \
    cargo build --release --quiet -p flux
)
mkdir -p "$work/pkgconfig/lib"
cp "$work/flux/libflux/target/release/libflux.a" "$work/pkgconfig/lib/"
# A hand-written flux.pc replaces InfluxData's pkg-config wrapper: only the static library is
# offered, so influxd links libflux in and needs no shared object at run time.
cat >"$work/pkgconfig/flux.pc" <<EOF
Name: flux
Description: The Flux language library (libflux)
Version: ${flux_version#v}
Cflags: -I$work/flux/libflux/include
Libs: -L$work/pkgconfig/lib -lflux -ldl -lpthread -lm
EOF

log "building influxd (go build; no web UI assets)"
(
  cd "$work/influxdb"
  PKG_CONFIG_PATH="$work/pkgconfig" CGO_ENABLED=1 GOFLAGS=-mod=mod \
    go build -trimpath -tags sqlite_foreign_keys,sqlite_json \
    -ldflags "-s -w -X main.version=$INFLUXD_VERSION -X main.commit=module-proxy" \
    -o "$PREFIX/bin/influxd.partial" ./cmd/influxd
)
mv "$PREFIX/bin/influxd.partial" "$BINARY"
"$BINARY" version >&2
rm -rf "$work"
log "built in $(( $(date +%s) - started )) s"
echo "$BINARY"
