#!/usr/bin/env bash
# Installs what the project needs from package registries, idempotently, and fails with
# one clear line naming anything that cannot be installed here.
set -euo pipefail
say() { echo "deps: $*" >&2; }
die() { echo "deps: ERROR: $*" >&2; exit 1; }

need_apt=()
# lua5.1 runs the Argo CD health checks (hack/gitops/test-health.sh): Argo CD's
# interpreter, gopher-lua, is a Lua 5.1.
for pair in openssl:openssl curl:curl lua5.1:lua5.1; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# lua-yaml (lyaml) reads the health checks' YAML fixtures; it has no command to look for.
lua5.1 -e 'require("lyaml")' >/dev/null 2>&1 || need_apt+=(lua-yaml)
if ((${#need_apt[@]})); then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need_apt[*]} and no apt-get to install them"
  say "installing Debian packages: ${need_apt[*]}"
  sudo_cmd=""; [[ $(id -u) == 0 ]] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq >/dev/null && $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null ||
    die "apt-get install ${need_apt[*]} failed"
fi

command -v go >/dev/null 2>&1 || die "Go toolchain not found on PATH (needed to build the control plane); install Go >= 1.25"
command -v cargo >/dev/null 2>&1 || die "Rust toolchain (cargo) not found on PATH; install Rust >= 1.89"
command -v python3 >/dev/null 2>&1 || die "python3 not found (needed for the SDK compatibility tests)"
command -v node >/dev/null 2>&1 || die "node not found (needed for the JS SDK compatibility tests)"
command -v npm >/dev/null 2>&1 || die "npm not found (needed for the JS SDK compatibility tests)"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing: rustup component add clippy"
say "ok: go $(go env GOVERSION), $(cargo --version | cut -d' ' -f1-2), python $(python3 -c 'import platform;print(platform.python_version())'), node $(node --version)"
