#!/bin/bash
# test-wheel.sh - the test suite against an INSTALLED kvmdev wheel (`make test-wheel`).
#
# For each interpreter: a fresh venv, `pip install WHEEL[test]`, and pytest run from a
# copy of tests/ and examples/ outside the checkout (so the source tree is not on
# sys.path), with KVMDEV_EXPECT_FROM=<the venv's site-packages>: tests/conftest.py stops
# the run unless kvmdev and its compiled module were imported from there.  Tests marked
# source_tree (cdefs/ against the kernel headers, README/docs execution, packaging) skip
# with their reason; they run in the in-tree run (make test).  Prints one line per
# interpreter with pytest's counts and the time of each step.
#
# usage: tools/test-wheel.sh [--wheel PATH] [--python PY]... [--smoke] [-- pytest args]
#   --wheel PATH   the wheel (default: the x86_64 manylinux wheel in dist/, make dist)
#   --python PY    an interpreter (repeatable); default: every pyenv CPython 3.10-3.13
#                  found (~/.pyenv/versions/3.1[0-3].*), else python3
#   --smoke        the full suite on the first interpreter only; on the others the smoke
#                  subset (SMOKE below: the metadata and console script, the compiled
#                  modules through the VM basics, the CLI, the pytest plugin), which is what
#                  differs between interpreters for one abi3 build (CI: to keep its cost down)
#   -k/-m/... and paths after --  go to pytest (a path replaces `tests`)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=(tests/test_packaging.py tests/test_vm_basics.py tests/test_cli.py tests/test_pytest_plugin.py)
WHL= PYS=() SMOKE_ON=0 PYARGS=()
die() { echo "test-wheel.sh: $*" >&2; exit 3; }
while [ $# -gt 0 ]; do
  case $1 in
    --wheel) WHL=${2:?}; shift 2;;
    --python) PYS+=("${2:?}"); shift 2;;
    --smoke) SMOKE_ON=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    --) shift; PYARGS+=("$@"); break;;
    *) PYARGS+=("$1"); shift;;
  esac
done
if [ -z "$WHL" ]; then
  WHL=$(ls "$ROOT"/dist/kvmdev-*-cp310-abi3-*manylinux*_x86_64.whl 2>/dev/null | tail -1) \
    || die "no x86_64 wheel in dist/ (make dist)"
fi
[ -f "$WHL" ] || die "no wheel $WHL"
WHL=$(cd "$(dirname "$WHL")" && pwd)/$(basename "$WHL")
if [ ${#PYS[@]} -eq 0 ]; then
  for v in 3.10 3.11 3.12 3.13; do
    p=$(ls -d "$HOME"/.pyenv/versions/$v.*/bin/python 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$p" ] && PYS+=("$p")
  done
  [ ${#PYS[@]} -gt 0 ] || PYS=(python3)
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-wheel-test.XXXXXX")
trap 'rm -rf "$W"' EXIT
chmod 755 "$W"   # world-readable like an installed package (a test drops to nobody and imports)
# the tests, the examples they run and the pytest configuration (pyproject.toml: markers),
# outside the checkout
mkdir -p "$W/tree"
tar -C "$ROOT" --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis -cf - tests examples pyproject.toml | tar -C "$W/tree" -xf -
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
T0=$(now) FAIL=0 LINES=()
echo "[test-wheel] $(basename "$WHL"); tests from $W/tree" >&2
for i in "${!PYS[@]}"; do
  PY=${PYS[$i]}
  ver=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') || die "$PY does not run"
  V=$W/venv-$ver
  t0=$(now)
  "$PY" -m venv "$V" || die "$PY -m venv failed"
  "$V/bin/python" -m pip install -q --disable-pip-version-check "$WHL[test]" > "$W/pip-$ver.log" 2>&1 \
    || { cat "$W/pip-$ver.log" >&2; die "pip install into the $ver venv failed"; }
  t1=$(now)
  site=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
  "$V/bin/kvmdev" --version > "$W/version" || die "the installed kvmdev console script failed on $ver"
  args=(-q -rs -p no:cacheprovider)
  what=full
  if [ ${#PYARGS[@]} -gt 0 ]; then
    args+=("${PYARGS[@]}"); has_path=0
    for a in "${PYARGS[@]}"; do [[ $a != -* ]] && [ -e "$W/tree/${a%%::*}" ] && has_path=1; done
    [ "$has_path" = 1 ] || args+=(tests)
    what=selected
  elif [ "$SMOKE_ON" = 1 ] && [ "$i" -gt 0 ]; then
    args+=("${SMOKE[@]}"); what=smoke
  else
    args+=(tests)
  fi
  rc=0
  (cd "$W/tree" && KVMDEV_EXPECT_FROM=$site "$V/bin/python" -m pytest "${args[@]}") > "$W/pytest-$ver.log" 2>&1 || rc=$?
  t2=$(now)
  summary=$(grep -E '^=*[[:space:]]*[0-9]+ (passed|failed|skipped|errors?)[^@]* in [0-9.]+s' "$W/pytest-$ver.log" \
            | tail -1 | sed -E 's/^=+ //; s/ =+$//' || true)
  from=$(sed -n 's/^kvmdev .* imported from \([^ ]*\) .*/\1/p' "$W/pytest-$ver.log" | head -1)
  line="CPython $ver ($what): ${summary:-no pytest summary} [$(cat "$W/version") from ${from:-?}; venv+install $(secs "$t0" "$t1")s, pytest $(secs "$t1" "$t2")s]"
  if [ "$rc" != 0 ]; then
    line="$line FAILED (exit $rc)"; FAIL=1
    # the first failure in full, then pytest's one-line summary of every failure and skip
    sed -n '/^=* FAILURES =*$/,/^___.*___$/p' "$W/pytest-$ver.log" | head -n 80
    sed -n '/short test summary info/,$p' "$W/pytest-$ver.log"
  fi
  echo "$line"
  LINES+=("$line")
done
echo "test-wheel: ${#PYS[@]} interpreter(s) in $(secs "$T0" "$(now)")s"
exit $FAIL
