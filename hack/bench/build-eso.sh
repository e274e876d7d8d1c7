#!/usr/bin/env bash
# Builds the benchmark's peer, the external-secrets operator, from the Go module proxy into
# the cache beside the control-plane binaries. Idempotent (a finished build is reused) and
# flock-protected (parallel callers wait for one build). Prints the binary's path last.
#
# Why v0.16.2: the newest release whose stock controller is one Go module (main.go at its
# root, one `replace` of Masterminds/sprig to external-secrets/sprig v3.3.0) with every
# dependency served by the proxy; v1.x splits into local sub-modules the proxy cannot serve.
# Building inside the downloaded module directory keeps upstream's own go.mod, go.sum and
# replace line (a replace in a dependency would be ignored).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}
out=$cache_root/eso-$ESO_VERSION
bin=$out/bin/external-secrets
mkdir -p "$out/bin" "$out/logs"

say() { echo "eso-build: $*" >&2; }
die() { echo "eso-build: ERROR: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go toolchain not found on PATH; install Go >= 1.24 and retry"

exec 9>"$out/.lock"
flock 9

if [[ -x $bin && -f $out/.stamp && "$(cat "$out/.stamp")" == "$ESO_VERSION" ]]; then
  say "cached external-secrets $ESO_VERSION in $bin"
  echo "$bin"
  exit 0
fi

export CGO_ENABLED=0 GOTOOLCHAIN=${GOTOOLCHAIN:-local}
mod=github.com/external-secrets/external-secrets
say "downloading $mod@$ESO_VERSION through the Go module proxy"
dir=$(GOFLAGS=-mod=mod go mod download -json "$mod@$ESO_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[[ -n $dir && -f $dir/main.go ]] || die "could not download $mod@$ESO_VERSION through the Go module proxy"
say "building external-secrets $ESO_VERSION (several minutes on two cores; log: $out/logs/build.log)"
(cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .) \
  >"$out/logs/build.log" 2>&1 || die "building external-secrets failed; see $out/logs/build.log"
mv "$bin.tmp" "$bin"
install -m 0644 "$dir/deploy/crds/bundle.yaml" "$out/crds.yaml"
echo "$ESO_VERSION" >"$out/.stamp"
say "built external-secrets $ESO_VERSION into $bin"
echo "$bin"
