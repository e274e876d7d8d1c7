#!/usr/bin/env bash
# Builds promtool and prometheus from the pinned Go module version (versions.env) into a
# cache outside the repository, the same way hack/controlplane/build.sh builds the control
# plane. Idempotent: a finished build is reused. Nothing is downloaded except through the
# Go module proxy. cmd/prometheus is built without the web UI's assets (they are not in the
# module); the HTTP API, which the tests use, works without them.
#
# Prints the bin directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}
out=$cache_root/prometheus-$PROMETHEUS_VERSION
bin=$out/bin
logdir=$out/logs
mkdir -p "$bin" "$logdir"

say() { echo "prometheus-build: $*" >&2; }
die() { echo "prometheus-build: ERROR: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go toolchain not found on PATH; install Go >= 1.25 and retry"

# One build at a time: test binaries started in parallel all call this script.
exec 9>"$out/.lock"
flock 9

# Bump when the recipe below changes, so cached binaries are rebuilt.
RECIPE=1
stamp=$bin/.stamp
want_stamp="prometheus=$PROMETHEUS_MODULE_VERSION/$RECIPE"
if [[ -f $stamp && "$(cat "$stamp")" == "$want_stamp" && -x $bin/promtool && -x $bin/prometheus ]]; then
  say "cached promtool and prometheus $PROMETHEUS_VERSION in $bin"
  echo "$bin"
  exit 0
fi
rm -f "$stamp"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# A wrapper module (as for the control plane): upstream's go.mod may carry replace
# directives, which `go install pkg@version` refuses.
src=$out/src
mkdir -p "$src"
upstream_mod=$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f $upstream_mod ]] || die "could not download github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION through the Go module proxy"
{
  echo "module acs-identity-operator/prometheus"
  echo
  grep -E '^go [0-9]' "$upstream_mod"
  awk '/^godebug \(/{p=1} p{print} p&&/^\)/{p=0} /^godebug [^(]/{print}' "$upstream_mod"
  echo
  echo "require github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION"
} >"$src/go.mod"
cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
GO
say "resolving Prometheus $PROMETHEUS_VERSION modules (log: $logdir/tidy.log)"
(cd "$src" && go mod tidy) >"$logdir/tidy.log" 2>&1 || die "go mod tidy for Prometheus failed; see $logdir/tidy.log"

v=github.com/prometheus/common/version
ld="-s -w -X $v.Version=$PROMETHEUS_VERSION -X $v.Revision=module-$PROMETHEUS_MODULE_VERSION"
ld+=" -X $v.Branch=release -X $v.BuildUser=acs-identity-operator -X $v.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"
for cmd in promtool prometheus; do
  [[ -x $bin/$cmd ]] && continue
  say "building $cmd $PROMETHEUS_VERSION (log: $logdir/$cmd.log)"
  (cd "$src" && go build -trimpath -tags netgo -ldflags "$ld" -o "$bin/$cmd.tmp" "github.com/prometheus/prometheus/cmd/$cmd") \
    >"$logdir/$cmd.log" 2>&1 || die "building $cmd failed; see $logdir/$cmd.log"
  mv "$bin/$cmd.tmp" "$bin/$cmd"
done
echo "$want_stamp" >"$stamp"
say "built promtool and prometheus $PROMETHEUS_VERSION into $bin"
echo "$bin"
