#!/bin/bash
# uapi-headers.sh - the newest Debian uapi headers (linux-libc-dev from trixie-backports,
# through the private apt root $CACHE/apt-trixie-backports that run-guest.sh uses for the
# newer arm64 kernels), extracted to $CACHE/uapi/<version>; prints that directory, whose
# usr/include holds linux/kvm.h and <triple>/asm/kvm.h for every architecture.  Used by
# tests/test_cdefs_headers.py (KVMDEV_NEWEST_UAPI) to check cdefs/ against a newer kernel
# than the host's linux-libc-dev.  Nothing is installed on the host.
#
# usage: tools/guests/uapi-headers.sh [--suite SUITE]   (default trixie-backports)
set -euo pipefail
SUITE=trixie-backports
[ "${1:-}" = --suite ] && SUITE=${2:?}
CACHE=${ARM64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arm64kvm}
SOURCES=${ARM64KVM_SOURCES:-/etc/apt/sources.list.d/debian.sources}
DEBARCH=arm64 APTD=$CACHE/apt-$SUITE APT_SUITE=$SUITE APT_OPTS=()
die() { echo "uapi-headers.sh: $*" >&2; exit "${2:-3}"; }
# shellcheck source=apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
setup_apt
aptq -q update >&2 || die "apt-get update ($SUITE) failed"
ver=$(acq show linux-libc-dev 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1)
[ -n "$ver" ] || die "no linux-libc-dev in $SUITE"
OUT=$CACHE/uapi/${ver//[^A-Za-z0-9.+-]/_}
if [ ! -f "$OUT/.complete" ]; then
  rm -rf "$OUT.tmp"; mkdir -p "$OUT.tmp"
  (cd "$OUT.tmp" && aptq download "linux-libc-dev=$ver" >&2) || die "apt-get download linux-libc-dev=$ver failed"
  dpkg-deb -x "$OUT.tmp"/linux-libc-dev_*.deb "$OUT.tmp"
  rm -f "$OUT.tmp"/*.deb
  echo "$ver" > "$OUT.tmp/version"
  touch "$OUT.tmp/.complete"
  rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
fi
echo "$OUT"
