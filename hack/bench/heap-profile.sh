#!/usr/bin/env bash
# Where the operator's memory per identity goes: builds the operator with jemalloc's heap
# profiler (cargo feature `heap-profile`, in a target directory of its own so the release
# binary is untouched), runs `make bench-scale` with it (no renewal wave), and prints the
# live heap of the last profile taken while N identities were cached, by the innermost
# function of this crate, kube-runtime or prometheus-client on each allocation's stack.
#
# Usage: hack/bench/heap-profile.sh [N]    (default 4000; about 10 minutes warm)
#
# Sampling (one sample per 1 KiB allocated on average) and the profiler's own bookkeeping
# make the process larger than a normal one: read the shares, not the RSS the bench
# prints. Writes bench/data/heap-<commit>-n<N>.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-4000}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator
target=$cache/target-heap-profile
label=$(git -C "$root" log -1 --format=%h -- src Cargo.toml Cargo.lock)
out=$root/bench/data/heap-$label-n$n.txt
say() { echo "heap-profile: $*" >&2; }

say "building the operator with the heap profiler ($target)"
# With symbols and line tables (the release profile strips them): the report names functions.
(cd "$root" && CARGO_TARGET_DIR=$target CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 \
  cargo build --quiet --release --features heap-profile --bin acs-identity-operator)
bin=$target/release/acs-identity-operator

# jemalloc's own report tool, from the source cargo fetched (it is not installed).
jeprof_in=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tikv-jemalloc-sys-*/jemalloc/bin/jeprof.in | tail -n 1)
work=$(mktemp -d "${TMPDIR:-/tmp}/acs-heap.XXXXXX")
trap 'rm -rf "$work"' EXIT
sed -e 's/@jemalloc_version@/5/' -e 's|@PERL@|/usr/bin/perl|' "$jeprof_in" >"$work/jeprof"
chmod +x "$work/jeprof"

say "running make bench-scale N=$n without the wave, profiling every 256 MiB allocated"
_RJEM_MALLOC_CONF="prof:true,lg_prof_sample:10,lg_prof_interval:28,prof_prefix:$work/op" \
  "$root/hack/bench/run.sh" --scale --n "$n" --skip wave --operator-bin "$bin" --label "heap-$label" \
  >"$work/bench.log" 2>&1 || { tail -n 20 "$work/bench.log" >&2; exit 1; }
# A profiled run's figures are not a measurement: its JSON goes, and the report is
# rendered again without it.
rm -f "$root/bench/data/heap-$label-scale-n$n.json"
python=$("$root/hack/bench/install.sh")
"$python" "$root/hack/bench/report.py" render "$root/bench/data" --out "$root/bench" >/dev/null

# The first process is the leader that created the fleet; its last profile is the one
# closest to N identities cached (before the restart phase stopped it).
first_pid=$(ls "$work" | sed -n 's/^op\.\([0-9]*\)\..*\.heap$/\1/p' | sort -n | head -n 1)
last=$(ls -v "$work"/op."$first_pid".*.heap | tail -n 1)
"$work/jeprof" --collapsed --inuse_space "$bin" "$last" 2>/dev/null >"$work/stacks"
python3 - "$work/stacks" "$n" <<'PY' | tee "$out"
import collections, re, sys
path, n = sys.argv[1], int(sys.argv[2])
ours = ("acs_identity_operator", "kube_runtime", "prometheus_client", "kube_client")
by_site = collections.Counter()
for line in open(path):
    stack, _, size = line.rstrip().rpartition(" ")
    frames = [re.sub(r"<[0-9a-f]{16}>", "", f).replace("[inline]", "") for f in stack.split(";")]
    mine = [f for f in frames if f.startswith(ours) or any("<" + o in f for o in ours)]
    site = " <- ".join(reversed(mine[-2:])) if mine else "(elsewhere)"
    by_site[site] += int(size)
total = sum(by_site.values())
print(f"live heap {total / 2**20:.1f} MiB with {n} identities ({total / n:.0f} B per identity, fixed part included)")
print()
print("| bytes per identity | share | innermost functions of ours on the stack |")
print("|---:|---:|---|")
for site, size in by_site.most_common(25):
    print(f"| {size / n:.0f} | {100 * size / total:.1f} % | {site[:160]} |")
PY
say "written to $out"
