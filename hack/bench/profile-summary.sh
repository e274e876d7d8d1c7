#!/usr/bin/env bash
# What kube-apiserver spent its CPU on, from one CPU profile: the share of the samples
# under each part of the request path that differs between operators, then the top
# functions by own time.
#
# Usage: hack/bench/profile-summary.sh KUBE_APISERVER_BINARY PROFILE.pprof
#
# A share is of all samples in the profile (the harness's own creates and watches are
# in both operators' profiles); the parts overlap (a status write includes its CEL rules
# and its managedFields update), so they do not add up to 100 %.
set -euo pipefail
bin=$1 prof=$2
command -v go >/dev/null || { echo "profile-summary: go is not on PATH (go tool pprof reads the profile)" >&2; exit 1; }

# name|regular expression of a function on the stack (go tool pprof -focus)
buckets=(
  "request handlers (all API requests)|finisher.finishRequest|server.director.ServeHTTP"
  "custom resource status writes (PATCH/PUT .../status)|customresource.\(\*StatusREST\)\.Update"
  "  JSON patch applied to the stored object|handlers.\(\*jsonPatcher\)"
  "  CRD CEL validation rules|apiserver/schema/cel.\(\*Validator\)"
  "  status schema validation|customresource.statusStrategy.ValidateUpdate"
  "creates (Secrets, Events, custom resources)|registry.\(\*Store\)\.Create$"
  "MutatingAdmissionPolicy (the finalizer)|admission/plugin/policy/mutating"
  "managedFields bookkeeping|managedfields/internal"
  "reads (GET)|handlers.GetResource|registry.\(\*Store\)\.Get$"
  "lists (LIST)|handlers.ListResource|registry.\(\*Store\)\.(GetList|List)$"
  "watch fan-out to clients|handlers.serveWatch|WatchServer|cacher.\(\*cacheWatcher\)"
  "etcd watch decoding|etcd3.\(\*watchChan\)"
  "audit logging|pkg/audit\.|plugin/pkg/audit"
  "TLS|crypto/tls"
  "Go garbage collector|runtime.gcBgMarkWorker"
)

total=$({ go tool pprof -top -nodecount=1 "$bin" "$prof" 2>/dev/null || true; } |
  sed -n 's/.*Total samples = \([0-9.]*\)\(m\?s\).*/\1 \2/p')
[[ -n $total ]] || { echo "profile-summary: cannot read $prof" >&2; exit 1; }
read -r t unit <<<"$total"
[[ $unit == ms ]] && t=$(awk -v t="$t" 'BEGIN{print t/1000}')
printf 'kube-apiserver CPU profile: %s s of samples\n\n' "$t"
printf '| %-52s | %8s | %6s |\n' "part of the request path" "CPU s" "share"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "----------" "--------"
for b in "${buckets[@]}"; do
  name=${b%%|*} re=${b#*|}
  # "Showing nodes accounting for 2.21s, 19.84% of 11.14s total" with the focus applied
  # counts the samples whose stack has a matching function.
  s=$({ go tool pprof -top -nodefraction=0 -edgefraction=0 -nodecount=1000000 -focus "$re" "$bin" "$prof" 2>/dev/null || true; } |
    sed -n 's/^Showing nodes accounting for \([0-9.]*\)\(m\?s\), \([0-9.]*%\).*/\1 \2 \3/p')
  read -r v u pct <<<"${s:-0 s 0%}"
  [[ $u == ms ]] && v=$(awk -v v="$v" 'BEGIN{print v/1000}')
  printf '| %-52s | %8.2f | %6s |\n' "$name" "$v" "$pct"
done
printf '\nTop functions by own time:\n\n'
go tool pprof -top -nodecount=25 "$bin" "$prof" 2>/dev/null | sed -n '/flat%/,$p'
