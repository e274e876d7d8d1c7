# Sourced: `podman` as this machine kind needs it (no ulimits to set, cgroupfs, runc),
# with its own storage under the cache, so builds never touch the machine's podman.
image_cache=${ACS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/acs-identity-operator}/image
mkdir -p "$image_cache"
podman_conf=$image_cache/containers.conf
[[ -f $podman_conf ]] ||
  printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' >"$podman_conf"
podman() {
  CONTAINERS_CONF=$podman_conf command podman --root "$image_cache/storage" --runroot "$image_cache/run" \
    --storage-driver vfs --cgroup-manager=cgroupfs --runtime runc "$@"
}
