#!/usr/bin/env bash
# Makes a stand-in for the Dockerfile's base image (FROM python:3.11.x-slim-bookworm) from Debian with debootstrap, for
# podman on machines that reach Debian's and Python's package registries but no container registry (CI here). Does
# nothing when an image of that name is already in podman's store (pulled, or made by an earlier run). Run as root.
#
# The stand-in has what the Dockerfile relies on: python, pip and venv (Debian's Python 3.11, not the official image's
# own build, so the patch release differs), ca-certificates, passwd (useradd), python and pip on PATH with /usr/sbin,
# and pip allowed to install into the system Python as in the official image. The host's local CAs are copied in: pip in
# the build must trust whatever the host's TLS traffic is re-signed by (a sandbox's egress proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:/usr/sbin:/sbin"  # debootstrap and chroot, for a shell without them on PATH

base=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' Dockerfile | head -n 1)
suite=${base##*-slim-}
case "$base" in
  python:3.11.*-slim-*) ;;
  *) echo "podman-base.sh: cannot make a stand-in for FROM $base" >&2; exit 2;;
esac
# The name `FROM python:...` resolves to (containers' short-name alias for the official image).
name="docker.io/library/${base%%@*}"

if podman image exists "$name"; then
  echo "podman-base.sh: $name is in podman's store; nothing to do"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/podman-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd \
  "$suite" "$rootfs" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
# The label goes on to every image built on it: one can tell a stand-in build from a real one.
tar -C "$rootfs" --numeric-owner -c . | podman import \
  --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.opencontainers.image.description=stand-in for $base made by .ci/podman-base.sh" \
  --message "stand-in for $base: Debian $suite (debootstrap)" - "$name" >/dev/null
echo "podman-base.sh: made $name (Debian $suite, $(chroot "$rootfs" python3 --version 2>&1))"
