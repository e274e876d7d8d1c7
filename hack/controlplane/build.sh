#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kubectl and helm from pinned Go
# module versions into a cache outside the repository. Idempotent: a finished build is
# reused. Nothing is downloaded except through the Go module proxy.
#
# Why wrapper modules: k8s.io/kubernetes (and etcd's server module) point their sibling
# modules at local paths with `replace`, which `go install pkg@version` refuses. A tiny
# module of our own requires the upstream module and replaces each staging module with
# its published version instead.
#
# Usage: build.sh [--node]
#   --node  also build the node's kubelet, kube-scheduler and kube-proxy (same wrapper
#           module, same version stamps) and the pause program of its sandbox image
set -euo pipefail
with_node=0
[[ ${1:-} != --node ]] || with_node=1

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}
out=$cache_root/k8s-$K8S_VERSION
bin=$out/bin
logdir=$out/logs
mkdir -p "$bin" "$logdir"

say() { echo "controlplane-build: $*" >&2; }
die() { echo "controlplane-build: ERROR: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go toolchain not found on PATH; install Go >= 1.25 (e.g. apt-get install golang-go, or the machine's /usr/local/go) and retry"

# One build at a time: test binaries started in parallel all call this script.
exec 9>"$out/.lock"
flock 9

NODE_CMDS="kubelet kube-scheduler kube-proxy"

# Bump when a recipe below changes, so cached binaries are rebuilt.
HELM_RECIPE=2 # 2: helm's offline default Kubernetes version is the pinned one
stamp=$bin/.stamp
want_stamp="$K8S_VERSION etcd=$ETCD_VERSION helm=$HELM_VERSION/$HELM_RECIPE"
all_built() { local b; for b in "$@"; do [[ -x $bin/$b ]] || return 1; done; }
# shellcheck disable=SC2086 # NODE_CMDS is a list of words
if [[ -f $stamp && "$(cat "$stamp")" == "$want_stamp" ]] &&
  all_built etcd kube-apiserver kube-controller-manager kubectl helm &&
  { ((!with_node)) || all_built $NODE_CMDS pause; }; then
  say "cached binaries for $want_stamp in $bin"
  echo "$bin"
  exit 0
fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# --- Kubernetes -------------------------------------------------------------------
# build_kube CMD...: builds the named k8s.io/kubernetes/cmd/ programs into $bin.
build_kube() {
  local src=$out/src/kubernetes minor major staging
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$src"
  local upstream_mod
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $upstream_mod ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION through the Go module proxy"
  {
    echo "module acs-identity-operator/controlplane"
    echo
    grep -E '^go [0-9]' "$upstream_mod"
    # godebug settings change runtime behaviour; keep upstream's (single line or block).
    awk '/^godebug \(/{p=1} p{print} p&&/^\)/{p=0} /^godebug [^(]/{print}' "$upstream_mod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    grep -oE 'k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$upstream_mod" |
      awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$src/go.mod"
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  say "resolving Kubernetes $K8S_VERSION modules (log: $logdir/kube-tidy.log)"
  (cd "$src" && go mod tidy) >"$logdir/kube-tidy.log" 2>&1 || die "go mod tidy for Kubernetes failed; see $logdir/kube-tidy.log"
  local date ld="" pkg
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date -X $pkg.gitCommit=module-$K8S_VERSION"
  done
  local cmd
  for cmd in "$@"; do
    say "building $cmd $K8S_VERSION (log: $logdir/$cmd.log)"
    (cd "$src" && go build -trimpath -tags selinux,notest -ldflags "-s -w $ld" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") \
      >"$logdir/$cmd.log" 2>&1 || die "building $cmd failed; see $logdir/$cmd.log"
    mv "$bin/$cmd.tmp" "$bin/$cmd"
  done
}

# --- pause: the sandbox (infra) container's only program -------------------------------
# A node needs a sandbox image; registry.k8s.io/pause is out of reach, so the sandbox
# image is built locally around this static program (hack/node/pause/).
build_pause() {
  say "building pause (log: $logdir/pause.log)"
  (cd "$here/../node/pause" && go build -trimpath -ldflags "-s -w" -o "$bin/pause.tmp" .) \
    >"$logdir/pause.log" 2>&1 || die "building pause failed; see $logdir/pause.log"
  mv "$bin/pause.tmp" "$bin/pause"
}

# --- etcd ---------------------------------------------------------------------------
build_etcd() {
  local src=$out/src/etcd
  mkdir -p "$src"
  cat >"$src/go.mod" <<GOMOD
module acs-identity-operator/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  say "building etcd $ETCD_VERSION (log: $logdir/etcd.log)"
  (cd "$src" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3) \
    >"$logdir/etcd.log" 2>&1 || die "building etcd failed; see $logdir/etcd.log"
  mv "$bin/etcd.tmp" "$bin/etcd"
}

# --- helm ---------------------------------------------------------------------------
build_helm() {
  local src=$out/src/helm
  mkdir -p "$src"
  cat >"$src/go.mod" <<GOMOD
module acs-identity-operator/helm

go 1.24

require helm.sh/helm/v3 $HELM_VERSION
GOMOD
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO
  local minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  # Without these, `helm template` and `helm lint` assume Kubernetes v1.20 and reject
  # charts that require a newer one (ours says kubeVersion >= 1.30).
  local p
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
  done
  say "building helm $HELM_VERSION (log: $logdir/helm.log)"
  (cd "$src" && go mod tidy && go build -trimpath -ldflags "$ld" -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm) \
    >"$logdir/helm.log" 2>&1 || die "building helm failed; see $logdir/helm.log"
  mv "$bin/helm.tmp" "$bin/helm"
}

if [[ -f $stamp && "$(cat "$stamp")" != *"/$HELM_RECIPE" ]]; then rm -f "$bin/helm"; fi
rm -f "$stamp"
[[ -x $bin/etcd ]] || build_etcd
[[ -x $bin/kube-apiserver && -x $bin/kube-controller-manager && -x $bin/kubectl ]] ||
  build_kube kube-apiserver kube-controller-manager kubectl
if ((with_node)); then
  node_missing=()
  for b in $NODE_CMDS; do [[ -x $bin/$b ]] || node_missing+=("$b"); done
  ((${#node_missing[@]} == 0)) || build_kube "${node_missing[@]}"
  [[ -x $bin/pause ]] || build_pause
fi
[[ -x $bin/helm ]] || build_helm
echo "$want_stamp" >"$stamp"
say "built $want_stamp into $bin"
echo "$bin"
