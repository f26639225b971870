#!/usr/bin/env bash
# Makes the image deploy/Dockerfile's runtime stage starts FROM, debian:bookworm-slim, on a
# machine where no registry can be pulled from: a minimal Debian bookworm from Debian's own
# archive (debootstrap, as root), imported into podman. Does nothing when the image exists.
#   deploy/podman/base-image.sh            (behind `make image`)
# Needs: podman, debootstrap (apt-get install -y podman runc debootstrap).
set -euo pipefail
image=${BASE_IMAGE:-debian:bookworm-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$image"; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base-image.sh: needs debootstrap (apt-get install -y debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "base-image.sh: debootstrap needs root" >&2; exit 1; }
root=$(mktemp -d /tmp/murmur-rootfs.XXXXXX)
cleanup() {
  # debootstrap mounts /proc and /sys inside while it runs; never delete through a mount.
  for m in proc sys; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
echo "base-image.sh: debootstrap --variant=minbase bookworm (about a minute)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Like the official slim image: no apt lists, no caches.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* -c . \
  | podman import --change 'CMD ["bash"]' - "$image"
echo "base-image.sh: imported $image"
