#!/usr/bin/env bash
# Prepares a Debian host (as root) for `make image` and `make compose-test`: podman with runc,
# debootstrap for the base image, python3-venv for the pinned podman-compose, curl and jq.
# Sets podman's runtime to runc when no runtime is configured: Debian's default, crun, fails
# on hosts with hybrid cgroups ("cgroups in hybrid mode not supported"); runc works on both.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "setup-host.sh: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
missing=()
for tool in podman runc debootstrap curl jq; do command -v "$tool" >/dev/null || missing+=("$tool"); done
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
conf=/etc/containers/containers.conf
if ! grep -qs '^[[:space:]]*runtime[[:space:]]*=' "$conf"; then
  mkdir -p /etc/containers
  if grep -qs '^\[engine\]' "$conf"; then
    sed -i '/^\[engine\]/a runtime = "runc"' "$conf"
  else
    printf '[engine]\nruntime = "runc"\n' >>"$conf"
  fi
  echo "setup-host.sh: $conf: runtime = \"runc\""
fi
podman --version
