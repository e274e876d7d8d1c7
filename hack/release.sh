#!/usr/bin/env bash
# `make release`: every artifact of a release, versioned from Cargo.toml, in one folder.
#
#   dist/<version>/
#     acs-identity-operator-<version>.oci.tar     the image (podman load / docker load),
#                                                 tagged <chart image.repository>:<version>
#     acs-identity-operator-<version>.tgz         the Helm chart (version = appVersion = <version>)
#     kubectl-acs-<version>-linux-<arch>          the CLI (kubectl plugin)
#     acs-identity-operator-<version>.cdx.json    CycloneDX 1.5 SBOM of the binaries' crates
#                                                 (hack/release/sbom.py, from cargo metadata
#                                                 and Cargo.lock)
#     SHA256SUMS                                  sha256sum -c SHA256SUMS
#
# Refuses to run when the chart's appVersion or version differ from the crate's version
# (the image default of the chart is <repository>:<appVersion>), so the chart installed
# from the folder runs the image in it.
#
# Usage: hack/release.sh [--skip-image]   (--skip-image: no podman here; everything else)
# Last stdout line: the folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
say() { echo "release: $*" >&2; }
die() { echo "release: ERROR: $*" >&2; exit 1; }

skip_image=0
case ${1:-} in
  --skip-image) skip_image=1 ;;
  "") ;;
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

cd "$root"
version=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="acs-identity-operator"))')
chart=charts/acs-identity-operator
chart_field() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" "$chart/Chart.yaml"; }
[[ $(chart_field appVersion) == "$version" ]] || die "$chart/Chart.yaml appVersion is '$(chart_field appVersion)', the crate is $version: set both to one version"
[[ $(chart_field version) == "$version" ]] || die "$chart/Chart.yaml version is '$(chart_field version)', the crate is $version"
repository=$(sed -n '/^image:/,/^[^ ]/s/^  repository: *\(.*\)$/\1/p' "$chart/values.yaml")
tag=$(sed -n '/^image:/,/^[^ ]/s/^  tag: *"\{0,1\}\([^"]*\)"\{0,1\}.*$/\1/p' "$chart/values.yaml")
[[ -z $tag || $tag == "$version" ]] || die "$chart/values.yaml image.tag is '$tag': leave it empty (appVersion) or set $version"
[[ -n $repository ]] || die "no image.repository in $chart/values.yaml"

dist=$root/dist/$version
rm -rf "$dist"
mkdir -p "$dist"
arch=$(uname -m)
case $arch in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac

say "$version: binaries (cargo build --release --locked, as the Dockerfile)"
cargo build --release --locked --quiet --bin acs-identity-operator --bin kubectl-acs
install -m 0755 "$CARGO_TARGET_DIR/release/kubectl-acs" "$dist/kubectl-acs-$version-linux-$arch"

if ((skip_image)); then
  say "--skip-image: no image archive"
else
  say "image $repository:$version (hack/image/build.sh)"
  # The build's context and log in a scratch folder of our own, not the shared
  # `make image` one another checkout may be using.
  work=$(mktemp -d "${TMPDIR:-/tmp}/acs-release-image.XXXXXX")
  archive=$(ACS_IMAGE_OUT=$work "$root/hack/image/build.sh" --image "$repository:$version" | tail -n 1)
  mv "$archive" "$dist/acs-identity-operator-$version.oci.tar"
  rm -rf "$work"
fi

say "chart (helm package --version $version --app-version $version)"
bin=$("$root/hack/controlplane/build.sh" 2>/dev/null | tail -n 1)
"$bin/helm" package "$chart" --version "$version" --app-version "$version" -d "$dist" >/dev/null

say "SBOM (CycloneDX 1.5 from cargo metadata and Cargo.lock)"
triple=$(rustc -vV | sed -n 's/^host: //p')
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) \
  cargo metadata --format-version 1 --locked --filter-platform "$triple" |
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) \
    python3 "$root/hack/release/sbom.py" Cargo.lock >"$dist/acs-identity-operator-$version.cdx.json"

(cd "$dist" && sha256sum -- * | grep -v ' SHA256SUMS$' >SHA256SUMS)
say "done: $(cd "$dist" && ls | tr '\n' ' ')"
echo "$dist"
