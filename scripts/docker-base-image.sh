#!/usr/bin/env bash
# Make a local Python 3.11 base image from Debian's packages, for hosts that cannot pull
# python:3.11-slim (no registry, air-gapped): debootstrap bookworm (Debian 12 ships
# python3.11) into a folder, make a venv at /opt/python that is first on PATH (so `python`
# and `pip` work as in python:3.11-slim, outside Debian's externally-managed system Python),
# and `docker import` the folder as TAG. Use it with `--build-arg PYTHON_IMAGE=TAG`.
#
#   scripts/docker-base-image.sh [TAG]        (default deeplense-base:bookworm-py3.11)
#
# Needs root, debootstrap and a running Docker Engine. The Debian mirror is the host's own
# (first `URIs:`/`deb` line under /etc/apt), else debootstrap's default; DEBIAN_MIRROR=URL
# picks another. Takes a few minutes; the image is about 150 MB.
set -euo pipefail

tag=${1:-deeplense-base:bookworm-py3.11}
suite=bookworm
docker=${DOCKER:-docker}

[ "$(id -u)" -eq 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "apt-get install -y debootstrap" >&2; exit 1; }

host_mirror() {
  # The host's Debian mirror (deb822 .sources or one-line format), if it has one.
  local files=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  local file
  for file in "${files[@]}"; do
    [ -f "$file" ] || continue
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}
         /^deb / && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' \
      "$file"
  done | head -n 1
}
mirror=${DEBIAN_MIRROR:-$(host_mirror)}

root=$(mktemp -d /tmp/deeplense-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "debootstrap $suite minbase from ${mirror:-the default mirror of debootstrap}"
debootstrap --variant=minbase "$suite" "$root" ${mirror:+"$mirror"} >"$root.log" 2>&1 \
  || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# Python through apt inside the new system (debootstrap's own resolver misses some
# dependencies of python3.11-venv): bookworm and bookworm-updates from the same mirror.
# ca-certificates: pip inside a build can reach an HTTPS index; passwd (useradd) is in minbase.
uri=$(awk '/^deb / {print $2; exit}' "$root/etc/apt/sources.list")
printf 'deb %s %s main\n' "$uri" "$suite" "$uri" "$suite-updates" >"$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" apt-get update -qq
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
  python3.11 python3.11-venv ca-certificates >/dev/null
: >"$root/etc/resolv.conf"  # the engine writes its own at run time

# /opt/python: a venv with Debian's bundled pip (ensurepip), owned by root, world-readable.
chroot "$root" /usr/bin/python3.11 -m venv /opt/python
chroot "$root" /opt/python/bin/python -m pip --version
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb

tar --numeric-owner -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python"]' \
  --message "debootstrap $suite minbase + python3.11 venv at /opt/python" \
  - "$tag" >/dev/null
"$docker" run --rm "$tag" python -c 'import sys; print("base image", sys.version.split()[0])'
echo "$tag"
