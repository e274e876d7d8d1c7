#!/usr/bin/env bash
# `make bench`: our operator and external-secrets side by side on one fresh local control
# plane with the ACS emulator (see docs/benchmarks.md).
#
# Usage: hack/bench/run.sh [--n N] [--operator-bin PATH --label NAME] [--skip LIST]
#                          [--reuse-peer JSON] [--keep] [--scale]
#   --n N              objects per workload (default 1000, or $N)
#   --operator-bin P   measure this operator binary (any commit) instead of building ours
#   --label NAME       name of the run in bench/results.md (default: the last commit
#                      that changed the operator's sources)
#   --skip LIST        phases to skip: raw,peer,ours,quota,wave,delete
#   --reuse-peer JSON  take the peer's figures from an earlier run's JSON (same N)
#   --keep             leave the control plane's directory (audit log, logs) behind
#   --period S         renewal / refresh period in seconds (default: the harness's)
#   --scale            ours alone with N identities (`make bench-scale`): memory per
#                      identity, restart, failover, the renewal wave after an outage
#   --no-admission-policy  leave out the chart's finalizer MutatingAdmissionPolicy (which
#                      the chart installs by default where the API exists), to measure an
#                      older cluster's cost: one more write per new identity
# With the peer, kube-apiserver's CPU profile of each creation phase is summarised in
# bench/data/<label>-n<N>-<ours|eso>-apiserver.txt (hack/bench/profile-summary.sh), next
# to the profile itself (.pprof).
# Writes bench/data/<label>-n<N>.json, regenerates bench/results.md and
# bench/ready-over-time.png, and prints the `bench:` (or `bench-scale:`) line last.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${N:-1000} operator_bin="" label="" skip="" reuse="" keep=0 scale=0 period="" policy=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --n) n=$2; shift 2 ;;
    --operator-bin) operator_bin=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --reuse-peer) reuse=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --scale) scale=1; shift ;;
    --period) period=$2; shift 2 ;;
    --no-admission-policy) policy=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "bench: $*" >&2; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }
[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$n'"

"$root/hack/deps.sh"
cp_bin=$("$root/hack/controlplane/build.sh") || die "building the control plane failed (see above)"
if ((scale)); then
  eso_bin="" eso_dir=""
else
  eso_bin=$("$here/build-eso.sh") || die "building external-secrets failed (see above)"
  eso_dir=$(dirname "$(dirname "$eso_bin")")
fi
python=$("$here/install.sh") || die "installing the report's Python packages failed (see above)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator/target}
say "building the harness and the emulator (release)"
(cd "$root" && cargo build --quiet --release --bin operator-bench --bin acs-emulator --bin acs-identity-operator) ||
  die "cargo build --release failed"
rel=$CARGO_TARGET_DIR/release
if [[ -z $operator_bin ]]; then
  operator_bin=$rel/acs-identity-operator
  # The last commit that changed what the operator is built from (not the bench's own files).
  label=${label:-$(git -C "$root" log -1 --format=%h -- src Cargo.toml Cargo.lock crds ':(exclude)src/bin/operator-bench')}
else
  [[ -x $operator_bin ]] || die "--operator-bin $operator_bin is not an executable"
  operator_bin=$(cd "$(dirname "$operator_bin")" && pwd)/$(basename "$operator_bin")
  [[ -n $label ]] || die "--operator-bin needs --label (the commit it was built from)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/acs-bench.XXXXXX")
cp_dir=$work/cp
cleanup() {
  "$root/hack/controlplane/down.sh" --dir "$cp_dir" --quiet >/dev/null 2>&1 || true
  if ((keep)); then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cp "$here/audit-policy.yaml" "$work/audit-policy.yaml"
export KUBE_APISERVER_EXTRA_ARGS="--audit-policy-file=$work/audit-policy.yaml --audit-log-path=$work/audit.log \
 --audit-log-mode=batch --audit-log-batch-max-wait=1s --audit-log-batch-buffer-size=200000 --audit-log-maxsize=100000"
kcfg_line=$("$root/hack/controlplane/up.sh" --dir "$cp_dir" --owner-pid $$ | tail -n 1)
admin_kubeconfig=${kcfg_line#export KUBECONFIG=}
pki=$cp_dir/pki
api=$(sed -n 's/^ *server: //p' "$admin_kubeconfig")

# Each operator gets its own client certificate, so the audit log tells them apart
# (system:masters: RBAC is not what is measured here).
client_kubeconfig() { # user
  local user=$1
  (cd "$pki" &&
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=$user" -keyout "$user.key" -out "$user.csr" &&
    printf 'extendedKeyUsage=clientAuth\n' >"$user.ext" &&
    openssl x509 -req -in "$user.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile "$user.ext" -out "$user.crt") \
    >"$work/pki-$user.log" 2>&1 || die "client certificate for $user failed; see $work/pki-$user.log"
  cat >"$work/$user.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: $api, certificate-authority: $pki/ca.crt}}]
users: [{name: $user, user: {client-certificate: $pki/$user.crt, client-key: $pki/$user.key}}]
contexts: [{name: local, context: {cluster: local, user: $user}}]
current-context: local
KC
  echo "$work/$user.kubeconfig"
}
ours_kc=$(client_kubeconfig bench-acs-identity-operator)
eso_kc=$(client_kubeconfig bench-external-secrets)

kubectl=("$cp_bin/kubectl" --kubeconfig "$admin_kubeconfig")
say "installing our CRDs and external-secrets' CRDs (server-side)"
"${kubectl[@]}" apply --server-side -f "$root/crds/" >/dev/null
[[ -z $eso_dir ]] || "${kubectl[@]}" apply --server-side -f "$eso_dir/crds.yaml" >/dev/null
"${kubectl[@]}" wait --for condition=established --timeout=60s crd --all >/dev/null
if ((policy)); then
  # What `helm install` of the chart adds on this cluster: the finalizer policy, for every
  # namespace (the bench's identities are the only CommunicationIdentities here).
  say "installing the chart's finalizer MutatingAdmissionPolicy"
  "$cp_bin/helm" template bench "$root/charts/acs-identity-operator" \
    --show-only templates/mutatingadmissionpolicy.yaml \
    --api-versions admissionregistration.k8s.io/v1/MutatingAdmissionPolicy |
    "${kubectl[@]}" apply -f - >/dev/null || die "installing the finalizer policy failed"
  # The API server applies a new policy once its informer has it: wait until a dry-run
  # create comes back with the finalizer, so that no measured identity is created before.
  probe='{"apiVersion":"acs-operator.dev/v1alpha1","kind":"CommunicationIdentity","metadata":{"name":"policy-probe","namespace":"default"},
    "spec":{"serviceRef":{"kind":"CommunicationService","name":"acs"},"scopes":["chat"],"tokenLifetime":"1h"}}'
  for ((i = 0; ; i++)); do
    got=$("${kubectl[@]}" create --dry-run=server -o 'jsonpath={.metadata.finalizers}' -f - <<<"$probe" 2>/dev/null || true)
    [[ $got == *acs-operator.dev/cleanup* ]] && break
    ((i < 60)) || die "the finalizer policy did not take effect within 30 s"
    sleep 0.5
  done
fi

mkdir -p "$root/bench/data"
out=$root/bench/data/$label-n$n.json
((scale)) && out=$root/bench/data/$label-scale-n$n.json
args=(--n "$n" --kubeconfig "$admin_kubeconfig" --operator-bin "$operator_bin" --operator-kubeconfig "$ours_kc"
  --emulator-bin "$rel/acs-emulator" --audit-log "$work/audit.log" --work-dir "$work/logs" --out "$out")
pid_of() { awk -v n="$1" '$2==n{print $1}' "$cp_dir/pids"; }
args+=(--apiserver-pid "$(pid_of kube-apiserver)" --etcd-pid "$(pid_of etcd)")
[[ -n $skip ]] && args+=(--skip "$skip")
((scale)) && args+=(--scale)
[[ -n $period ]] && args+=(--period "$period")
((scale)) || { mkdir -p "$work/profiles" && args+=(--apiserver-profile "$work/profiles"); }
if [[ -z $reuse && ,$skip, != *,peer,* && $scale == 0 ]]; then
  args+=(--eso-bin "$eso_bin" --eso-kubeconfig "$eso_kc")
fi
say "running: operator-bench ${args[*]}"
"$rel/operator-bench" "${args[@]}" >&2 || die "the benchmark failed; logs in $work/logs (rerun with --keep to keep them)"

cmd="make bench N=$n"
((scale)) && cmd="make bench-scale N=$n"
[[ $operator_bin == "$rel/acs-identity-operator" ]] || cmd="hack/bench/run.sh --n $n --operator-bin <acs-identity-operator built at $label> --label $label"
if ((!policy)); then
  if [[ $cmd == make* ]]; then cmd+=" BENCH_ARGS=--no-admission-policy"; else cmd+=" --no-admission-policy"; fi
fi
for prof in "$work"/profiles/*.pprof; do
  [[ -s $prof ]] || continue
  who=$(basename "$prof" -create.pprof)
  # Kept next to the JSON (gzipped protobuf, a few hundred KiB) for `go tool pprof`, with
  # a summary of where kube-apiserver's time went while serving each operator.
  cp "$prof" "${out%.json}-$who-apiserver.pprof"
  "$here/profile-summary.sh" "$cp_bin/kube-apiserver" "$prof" >"${out%.json}-$who-apiserver.txt" ||
    say "summarising $prof failed"
done
"$python" "$here/report.py" annotate "$out" --label "$label" --command "$cmd" --admission-policy "$policy" \
  --k8s "$("${kubectl[@]}" version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n 1)" \
  --eso "$(if [[ -n $eso_dir ]]; then cat "$eso_dir/.stamp"; else echo "not run"; fi)" ${reuse:+--reuse-peer "$reuse"}
"$python" "$here/report.py" render "$root/bench/data" --out "$root/bench"
"$python" "$here/report.py" line "$out"
