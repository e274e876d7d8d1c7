#!/usr/bin/env bash
# `make image`: builds the operator image offline as localhost/acs-identity-operator:dev.
#
# The Dockerfile stays the published recipe (builder stage, then distroless). Its base
# images cannot be pulled here, so this script builds the same image FROM scratch: it
# reads the Dockerfile's final stage (the binaries it copies from the builder, LABEL,
# ENV, USER, EXPOSE, ENTRYPOINT, CMD) and renders a Containerfile with exactly those,
# over a root filesystem that holds what distroless/cc gives: glibc and libgcc (the
# host's Debian bookworm ones, as in distroless/cc-debian12), CA certificates, an
# nsswitch.conf for DNS, /etc/passwd with nonroot 65532, and /tmp. An instruction this
# script does not know fails the build, so the two recipes cannot drift apart silently.
#
# Usage: hack/image/build.sh [--image NAME:TAG] [--import-into NODE_DIR] [--check [--dockerfile PATH]]
#   --image NAME:TAG        name the image (default localhost/acs-identity-operator:dev);
#                           the archive is then acs-identity-operator-TAG.oci.tar
#                           (`make release` passes the chart's repository and the crate version)
#   --import-into NODE_DIR  also load the image into that running node's containerd
#   --check                 only check that the Dockerfile's final stage can be mirrored
#                           (no build); --dockerfile checks another file (tests)
# Last stdout line: the path of the OCI archive (podman load / docker load ready).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
IMAGE=localhost/acs-identity-operator:dev
out=${ACS_IMAGE_OUT:-$cache/image}  # build context, log and archive
archive=$out/acs-identity-operator-dev.oci.tar

say() { echo "image: $*" >&2; }
die() { echo "image: ERROR: $*" >&2; exit 1; }

import_into="" check=0 dockerfile=$root/Dockerfile
while [[ $# -gt 0 ]]; do
  case $1 in
    --import-into) import_into=$2; shift 2 ;;
    --image)
      [[ ${2:-} =~ ^[a-z0-9./_-]+(:[0-9]+)?[a-z0-9./_-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--image wants NAME:TAG, got '${2:-}'"
      IMAGE=$2; archive=$out/acs-identity-operator-${2##*:}.oci.tar; shift 2 ;;
    --check) check=1; shift ;;
    --dockerfile) dockerfile=$2; shift 2 ;;
    *) echo "image: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

# --- the Dockerfile's final stage -> binaries to copy and image settings -------------
# Prints "BIN name dest" for each COPY --from=builder, then the config lines verbatim.
render_stage() {
  python3 - "$dockerfile" <<'PY'
import re, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
builder_bins = set()
for l in lines[:last_from]:
    builder_bins.update(re.findall(r"--bin\s+(\S+)", l))
for l in lines[last_from + 1:]:
    word = l.split()[0].upper()
    if word == "COPY":
        m = re.fullmatch(r"COPY\s+--from=builder\s+/(\S+)\s+(/\S+)", l)
        if not m or m.group(1) not in builder_bins:
            sys.exit(f"Dockerfile: final-stage line not understood by hack/image/build.sh: {l}")
        print(f"BIN {m.group(1)} {m.group(2)}")
    elif word in ("LABEL", "ENV", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "WORKDIR"):
        print(re.sub(r"\s+", " ", l))
    else:
        sys.exit(f"Dockerfile: final-stage instruction {word} not understood by hack/image/build.sh: {l}")
PY
}
stage=$(render_stage) || die "cannot mirror the Dockerfile (see the line above)"
mapfile -t bins < <(awk '$1=="BIN"{print $2}' <<<"$stage")
grep -q '^USER 65532' <<<"$stage" || die "the Dockerfile's final stage must run as USER 65532"
if ((check)); then
  say "ok: the Dockerfile's final stage is mirrored (binaries: ${bins[*]})"
  exit 0
fi

# --- build ---------------------------------------------------------------------------
"$root/hack/node/deps.sh" || die "podman is needed to build the image (see the line above)"
mkdir -p "$out"
log=$out/build.log
: >"$log"
bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
say "cargo build --release --locked ${bin_args[*]} (log: $log)"
(cd "$root" && cargo build --release --locked "${bin_args[@]}") >>"$log" 2>&1 ||
  die "cargo build of the image's binaries failed; log: $log"

ctx=$out/context
rm -rf "$ctx"
mkdir -p "$ctx/rootfs"/{etc/ssl/certs,tmp,home/nonroot}
chmod 1777 "$ctx/rootfs/tmp"
rootfs=$ctx/rootfs
copy_with_libs() { # file dest: the file, and every shared library it loads, at their paths
  install -D -m 0755 "$1" "$rootfs$2"
  local lib
  for lib in $(ldd "$1" | grep -oE '/[^ ]+\.so[^ ]*'); do
    [[ -e $rootfs$lib ]] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}
while read -r _ name dest; do
  copy_with_libs "$CARGO_TARGET_DIR/release/$name" "$dest"
done < <(grep '^BIN ' <<<"$stage")
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || die "no CA bundle at /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates)"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
# As distroless: root, nobody and nonroot; glibc resolves host names from files, then DNS.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chown 65532:65532 "$rootfs/home/nonroot"
{
  echo "FROM scratch"
  echo "COPY rootfs/ /"
  grep -v '^BIN ' <<<"$stage"
} >"$ctx/Containerfile"

# shellcheck source=podman.sh
. "$root/hack/image/podman.sh"
say "podman build -t $IMAGE (log: $log)"
podman build --pull=never --network=none -t "$IMAGE" -f "$ctx/Containerfile" "$ctx" >>"$log" 2>&1 ||
  die "podman build failed; log: $log"
rm -f "$archive.tmp"
podman save --format oci-archive -o "$archive.tmp" "$IMAGE" >>"$log" 2>&1 || die "podman save failed; log: $log"
# docker load wants a manifest.json next to the OCI index; add one so both load it.
python3 "$root/hack/image/add-docker-manifest.py" "$archive.tmp" "$IMAGE" >>"$log" 2>&1 ||
  die "writing the archive's docker manifest failed; log: $log"
mv "$archive.tmp" "$archive"
podman image prune -f >>"$log" 2>&1 || true

size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
say "built $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes) uncompressed; archive $(du -h "$archive" | cut -f1)"
if [[ -n $import_into ]]; then
  "$root/hack/node/import-image.sh" "$import_into" "$archive" || die "importing into the node at $import_into failed"
fi
echo "$archive"
