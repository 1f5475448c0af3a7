#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian bookworm packages alone, for hosts that reach a Debian
# mirror but no container registry (so `python:3.11-slim-bookworm` cannot be pulled).
#
#   docker/build-base-debian.sh [TAG]        # default tag: resnet-serve/base:bookworm
#
# Needs root, debootstrap and a running Docker engine. Takes 2-4 minutes; the image is ~150 MB.
# Pass the result to the image builds with `--build-arg BASE_IMAGE=<TAG>`.
set -euo pipefail

TAG="${1:-resnet-serve/base:bookworm}"
# The mirror: DEBIAN_MIRROR, else the first Debian archive this host's apt already uses.
MIRROR="${DEBIAN_MIRROR:-$(grep -hoE '^(URIs:|deb) +[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n 1)}"
[[ -n "$MIRROR" ]] || { echo "build-base-debian.sh: set DEBIAN_MIRROR to a Debian archive URL" >&2; exit 1; }
# What the Dockerfiles need from a base: python3 with venv, CA certificates, and nothing else.
PACKAGES="python3,python3-venv,ca-certificates"

if [[ $(id -u) -ne 0 ]]; then
    echo "build-base-debian.sh: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "build-base-debian.sh: install debootstrap first" >&2; exit 1; }

ROOTFS="$(mktemp -d /tmp/resnet-serve-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

echo "build-base-debian.sh: debootstrap bookworm ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >/dev/null

# Same trimming the official slim images do: no apt lists, docs, man pages or caches in the layer.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +

tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "Debian bookworm minbase + python3 (debootstrap)" \
    - "$TAG" >/dev/null
echo "build-base-debian.sh: built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | numfmt --to=iec))"
