#!/bin/bash
# build-ext.sh - cross-build kvmdev's cffi extension modules for aarch64 (or, with
# --arch ppc64el, powerpc64le) on an x86_64 Debian host: abi3 modules (CPython 3.10's
# limited API, as cdefs/build.py asks), so the same build serves the test guests'
# CPython 3.11 and the aarch64 wheel (tools/build-dist.sh) for CPython 3.10 and later.
#
# usage: build-ext.sh [--arch arm64|ppc64el] [--out DIR] [--force] [--verbose]
#   Builds the same modules `pip install` builds (cdefs/build.py: make_ffi(arch)
#   for arch in ARCHES -> kvmdev._kvm_<arch>) from the C that cffi emits, with
#   <triple>-gcc against Debian's libpython3.11-dev headers of that architecture
#   (only the limited API is used), and names them _kvm_<arch>.abi3.so.
#   The last line of stdout is the directory holding the .so files.
#
# options:
#   --arch A     arm64 (default; env GUEST_ARCH) or ppc64el
#   --out DIR    also copy the .so files into DIR
#   --force      rebuild even if a cached build with the same inputs exists
#   --verbose    show the compiler command lines
#
# environment:
#   ARM64KVM_CACHE  cache dir (default ~/.cache/arm64kvm, shared with run-guest.sh;
#                   ppc64el: PPC64KVM_CACHE, ~/.cache/ppc64kvm).
#                   Headers: $ARM64KVM_CACHE/pyheaders/libpython3.11-dev_<version>/
#                   Modules: $ARM64KVM_CACHE/kvmdev-ext/<hash of all inputs>/
#   ARM64KVM_SOURCES deb822 sources file with the Debian archive URIs (as run-guest.sh)
#   PYTHON          host python with cffi (default python3)
#
# The arm64 headers come from the Debian arm64 archive through a *private* apt
# configuration (the one run-guest.sh uses, $ARM64KVM_CACHE/apt): no
# dpkg --add-architecture, nothing arm64 is installed on the host.  Host packages
# installed if missing: gcc-aarch64-linux-gnu (brings binutils-aarch64-linux-gnu
# and linux-libc-dev-arm64-cross), debian-archive-keyring, util-linux (flock).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SOURCES=${ARM64KVM_SOURCES:-/etc/apt/sources.list.d/debian.sources}
PYTHON=${PYTHON:-python3}
PYVER=3.11
HDRPKG=libpython$PYVER-dev
DEBARCH=${GUEST_ARCH:-arm64}

OUT= FORCE=0 VERBOSE=0
die() { echo "build-ext.sh: $*" >&2; exit "${2:-3}"; }
log() { echo "[build-ext] $*" >&2; }
while [ $# -gt 0 ]; do
  case $1 in
    --arch) DEBARCH=${2:?}; shift 2;;
    --out) OUT=${2:?}; shift 2;;
    --force) FORCE=1; shift;;
    --verbose|-v) VERBOSE=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) die "unknown argument $1" 2;;
  esac
done
case $DEBARCH in   # Debian architecture -> GNU triple, ELF machine, cache
  arm64) TRIPLE=aarch64-linux-gnu ELFMACHINE=AArch64
         CACHE=${ARM64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arm64kvm};;
  ppc64el) TRIPLE=powerpc64le-linux-gnu ELFMACHINE=PowerPC64
           CACHE=${PPC64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ppc64kvm};;
  *) die "--arch must be arm64 or ppc64el" 2;;
esac
CC=$TRIPLE-gcc
READELF=$TRIPLE-readelf
SOABI=abi3   # Py_LIMITED_API (cdefs/build.py): loads on any CPython >= 3.10

# ------------------------------------------------------------------ host tools
ensure_host_tools() {
  local missing=()
  command -v $CC >/dev/null || missing+=(gcc-$TRIPLE)
  command -v $READELF >/dev/null || missing+=(binutils-$TRIPLE)
  [ -e /usr/$TRIPLE/include/stdlib.h ] || missing+=(libc6-dev-$DEBARCH-cross)
  command -v flock >/dev/null || missing+=(util-linux)
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
  [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing host packages: ${missing[*]}"
    [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
      || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
      || die "apt-get install ${missing[*]} failed"
  fi
  "$PYTHON" -c 'import cffi' 2>/dev/null || die "$PYTHON cannot import cffi (run 'make install' first)"
}

# ------------------------------------------- private guest-architecture apt root
# The apt root run-guest.sh uses (apt.sh), so the package lists are shared.
APTD=$CACHE/apt
APT_OPTS=()
# shellcheck source=apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"   # setup_apt, aptq, acq

pkg_version() {  # candidate version of $HDRPKG in the private lists (empty if unknown)
  acq policy "$HDRPKG" 2>/dev/null | sed -n 's/^  Candidate: \(.*\)$/\1/p' | grep -v '(none)' || true
}

# Unpack Debian's arm64 libpython3.11-dev into $CACHE/pyheaders/<pkg>_<version>
# (cached by version); sets HDR.
APT_UPDATED=0
fetch_headers() {
  local ver
  ver=$(pkg_version)
  if [ -z "$ver" ]; then
    log "apt-get update (private $DEBARCH apt root $APTD)"
    aptq -q update >&2 || die "apt-get update failed"; APT_UPDATED=1
    ver=$(pkg_version)
    [ -n "$ver" ] || die "$HDRPKG ($DEBARCH) not found in the Debian archive"
  fi
  HDR=$CACHE/pyheaders/${HDRPKG}_${ver//:/%3a}
  [ -f "$HDR/.complete" ] && return 0
  log "downloading $HDRPKG $ver ($DEBARCH)"
  local tmp=$HDR.tmp
  rm -rf "$tmp"; mkdir -p "$tmp/deb"
  if ! (cd "$tmp/deb" && aptq -q download "$HDRPKG=$ver" >&2); then
    [ "$APT_UPDATED" = 1 ] && die "apt-get download $HDRPKG failed"
    log "download failed; apt-get update and retry"      # stale lists (superseded version)
    aptq -q update >&2 || die "apt-get update failed"; APT_UPDATED=1
    rm -rf "$tmp"; fetch_headers; return
  fi
  dpkg-deb -x "$tmp"/deb/*.deb "$tmp/root" || die "dpkg-deb -x failed"
  [ -f "$tmp/root/usr/include/$TRIPLE/python$PYVER/pyconfig.h" ] \
    || die "$HDRPKG $ver has no usr/include/$TRIPLE/python$PYVER/pyconfig.h"
  basename "$tmp"/deb/*.deb > "$tmp/root/.package"
  rm -rf "$tmp/deb"
  touch "$tmp/root/.complete"
  rm -rf "$HDR"; mkdir -p "$(dirname "$HDR")"; mv "$tmp/root" "$HDR"; rm -rf "$tmp"
}

# Guard against building with the host's (x86_64) Python headers: every Python
# header the compiler resolves must come from $HDR, including the target's pyconfig.h.
check_headers() {
  local deps
  deps=$(printf '#include <Python.h>\n' | $CC "${INC[@]}" -x c -M - 2>&1) || die "preprocessing Python.h failed: $deps"
  deps=$(tr ' \\' '\n\n' <<<"$deps" | grep -E '\.h$' || true)
  grep -qx "$HDR/usr/include/$TRIPLE/python$PYVER/pyconfig.h" <<<"$deps" \
    || die "Python.h did not resolve to the $DEBARCH pyconfig.h under $HDR"
  local bad
  bad=$(grep -iE 'python3' <<<"$deps" | grep -v "^$HDR/" || true)
  [ -z "$bad" ] || die "Python headers resolved outside $HDR: $bad"
}

# The modules must be ELF64 shared objects of the target exporting PyInit__kvm_<arch>.
check_so() {
  local so=$1 mod=$2
  $READELF -h "$so" | grep -qE "Machine:[[:space:]]+$ELFMACHINE" || die "$so is not $ELFMACHINE"
  $READELF -h "$so" | grep -qE 'Class:[[:space:]]+ELF64' || die "$so is not ELF64"
  $READELF -h "$so" | grep -qE 'Type:[[:space:]]+DYN' || die "$so is not a shared object"
  $READELF --dyn-syms -W "$so" | grep -qE "[[:space:]]PyInit_$mod\$" || die "$so does not export PyInit_$mod"
}

# ----------------------------------------------------------------------- main
ensure_host_tools
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9                      # the private apt root is shared with run-guest.sh
setup_apt
fetch_headers
flock -u 9
INC=(-I"$HDR/usr/include/python$PYVER" -I"$HDR/usr/include")
check_headers

# key = every input of the build
KEY=$( {
  echo "recipe=2 soabi=$SOABI hdr=$(cat "$HDR/.package")"
  $CC --version | head -1
  "$PYTHON" -c 'import cffi, sys; print("cffi", cffi.__version__, sys.version_info[:2])'
  sha256sum < "$0"
  (cd "$ROOT" && find cdefs -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)
EXT=$CACHE/kvmdev-ext/$KEY

if [ "$FORCE" = 1 ] || [ ! -f "$EXT/.complete" ]; then
  log "building $TRIPLE modules ($(cat "$HDR/.package"))"
  W=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-ext.XXXXXX")
  trap 'rm -rf "$W"' EXIT
  # emit the C of every module exactly as setup.py's cffi_modules would build it;
  # each line of flags.txt: <module basename> <extra_compile_args...>
  (cd "$ROOT" && "$PYTHON" - "$W" <<'EOF'
import sys, pathlib
sys.path.insert(0, "cdefs")
import build
out = pathlib.Path(sys.argv[1])
with open(out / "flags.txt", "w") as f:
    for arch in build.ARCHES:
        ffi = build.make_ffi(arch)
        modname, _src, _ext, kwds = ffi._assigned_source
        base = modname.rsplit(".", 1)[-1]
        ffi.emit_c_code(str(out / f"{base}.c"))
        unsupported = set(kwds) - {"extra_compile_args"}
        if unsupported:
            sys.exit(f"build-ext: set_source() options not handled here: {sorted(unsupported)}")
        print(base, *kwds.get("extra_compile_args", []), file=f)
EOF
  ) >/dev/null || die "emitting the cffi C sources failed"
  pids=()
  while read -r base flags; do
    # shellcheck disable=SC2206
    cmd=($CC -shared -fPIC -O2 $flags "${INC[@]}" -o "$W/$base.$SOABI.so" "$W/$base.c")
    [ "$VERBOSE" = 1 ] && log "${cmd[*]}"
    "${cmd[@]}" 2>"$W/$base.err" &
    pids+=("$!:$base")
  done < "$W/flags.txt"
  for p in "${pids[@]}"; do
    wait "${p%%:*}" || { cat "$W/${p#*:}.err" >&2; die "compiling ${p#*:} failed"; }
    [ -s "$W/${p#*:}.err" ] && [ "$VERBOSE" = 1 ] && cat "$W/${p#*:}.err" >&2
  done
  while read -r base _; do check_so "$W/$base.$SOABI.so" "$base"; done < "$W/flags.txt"
  mkdir -p "$(dirname "$EXT")"
  T=$(mktemp -d "$EXT.tmp.XXXXXX")
  cp "$W"/*."$SOABI".so "$T/"
  touch "$T/.complete"
  rm -rf "$EXT"
  mv -T "$T" "$EXT" 2>/dev/null || rm -rf "$T"   # a concurrent build of the same inputs won
else
  log "cached: $EXT"
fi

# keep the 8 most recently used builds
touch "$EXT"
find "$CACHE/kvmdev-ext" -mindepth 1 -maxdepth 1 -type d ! -name '*.tmp.*' -printf '%T@ %p\n' \
  | sort -rn | tail -n +9 | cut -d' ' -f2- | while IFS= read -r d; do rm -rf "$d"; done

if [ -n "$OUT" ]; then
  mkdir -p "$OUT"
  cp "$EXT"/*."$SOABI".so "$OUT/"
  echo "$OUT"
else
  echo "$EXT"
fi
