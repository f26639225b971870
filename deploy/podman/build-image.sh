#!/usr/bin/env bash
# Builds deploy/Dockerfile into an image with podman, from the murmur binary this machine
# built (target/release/murmur), for machines where no Rust image can be pulled:
#   deploy/podman/build-image.sh [IMAGE] [podman build options…]    (behind `make image`)
# The Dockerfile's `prebuilt` target takes deploy/prebuilt/murmur instead of
# compiling; everything else (the runtime stage, user, ports, health check) is the image
# `docker build -f deploy/Dockerfile .` makes. The binary must run on Debian bookworm
# (glibc 2.36): build it on bookworm or older.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-murmur:latest}
shift || true
bin=${MURMUR_BIN:-target/release/murmur}
[ -x "$bin" ] || { echo "build-image.sh: no $bin; run cargo build --release -p murmur first" >&2; exit 1; }
deploy/podman/base-image.sh
mkdir -p deploy/prebuilt
# Gone again after the build: a plain `docker build` would copy it into its builder stage.
trap 'rm -rf deploy/prebuilt' EXIT
# A hard link, not a 100 MB copy; relinked every time, since cargo replaces the file.
ln -f "$bin" deploy/prebuilt/murmur 2>/dev/null || cp "$bin" deploy/prebuilt/murmur
# --format docker keeps HEALTHCHECK (the OCI format has no field for it).
podman build --format docker -f deploy/Dockerfile --target prebuilt \
  -t "$image" "$@" .
