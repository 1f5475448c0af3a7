#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian bookworm packages alone, for hosts that reach a Debian
# mirror but no container registry (so `python:3.11-slim-bookworm` cannot be pulled).
#
#   docker/build-base-debian.sh [TAG]        # default tag: resnet-serve/base:bookworm
#   docker/build-base-debian.sh --print-mirror   # only print the Debian mirror it would use, then exit
#
# Needs root, debootstrap and a running Docker engine. Takes 2-4 minutes; the image is ~150 MB.
# Pass the result to the image builds with `--build-arg BASE_IMAGE=<TAG>`.
# Environment: DEBIAN_MIRROR (a Debian archive URL; skips the detection), APT_ETC_DIR (default /etc/apt:
# where sources.list and sources.list.d/ are read from).
set -Eeuo pipefail
# Any command that fails under `set -e` says so (it used to exit 2 without a word).
trap 'echo "build-base-debian.sh: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

# The first enabled `deb` archive whose URI ends in /debian, in apt's own reading order: sources.list,
# then sources.list.d/ alphabetically, one-line `.list` files and deb822 `.sources` files (the only form
# a Debian 12 install has) alike. Prints nothing when there is none; a missing file is not an error.
apt_debian_mirror() {
    local etc="$1" file
    local -a files=()
    [[ -f "$etc/sources.list" ]] && files+=("$etc/sources.list")
    for file in "$etc"/sources.list.d/*; do
        [[ -f "$file" && ( "$file" == *.list || "$file" == *.sources ) ]] && files+=("$file")
    done
    ((${#files[@]} > 0)) || return 0
    awk '
        function flush(    n, k, uri) {
            if (types ~ /(^| )deb( |$)/ && enabled != "no") {
                n = split(uris, uri, " ")
                for (k = 1; k <= n; k++) if (uri[k] ~ /\/debian\/?$/) { print uri[k]; found = 1; exit }
            }
            types = ""; uris = ""; enabled = ""; key = ""
        }
        FNR == 1 { flush() }
        { sub(/\r$/, "") }
        FILENAME ~ /\.sources$/ {                 # deb822: "Key: value" stanzas split by blank lines
            if ($0 ~ /^[ \t]*#/) next
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            if ($0 ~ /^[ \t]/) value = $0        # a continuation line of the previous field
            else {
                colon = index($0, ":")
                if (!colon) next
                key = tolower(substr($0, 1, colon - 1)); value = substr($0, colon + 1)
            }
            if (key == "types") types = types " " value
            else if (key == "uris") uris = uris " " value
            else if (key == "enabled") { gsub(/[ \t]/, "", value); enabled = tolower(value) }
            next
        }
        {                                         # one-line: deb [options] URI suite components
            sub(/#.*/, "")
            if ($1 != "deb") next
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($i ~ /\/debian\/?$/) { print $i; found = 1; exit }
        }
        END { if (!found) flush() }
    ' "${files[@]}"
}

TAG="resnet-serve/base:bookworm"
PRINT_MIRROR=0
case "${1:-}" in
    --print-mirror) PRINT_MIRROR=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    "") ;;
    -*) echo "build-base-debian.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) TAG="$1" ;;
esac

APT_ETC="${APT_ETC_DIR:-/etc/apt}"
if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
    MIRROR="$DEBIAN_MIRROR"
else
    MIRROR="$(apt_debian_mirror "$APT_ETC")"
    if [[ -z "$MIRROR" ]]; then
        echo "build-base-debian.sh: no Debian archive (an enabled 'deb' URI ending in /debian) in" \
            "$APT_ETC/sources.list or $APT_ETC/sources.list.d/*.list|*.sources;" \
            "set DEBIAN_MIRROR to a Debian archive URL, e.g. DEBIAN_MIRROR=http://deb.debian.org/debian" >&2
        exit 1
    fi
fi
if ((PRINT_MIRROR)); then
    echo "$MIRROR"
    exit 0
fi
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
