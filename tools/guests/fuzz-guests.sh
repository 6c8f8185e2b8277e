#!/bin/bash
# fuzz-guests.sh - python -m kvmdev.fuzz on the real arm64 kernels (6.12, 6.1, 6.18, 7.3,
# gic 3 and 2) under QEMU, differential against the mock of the same kernel and
# GIC.  Prints each guest's summary and every divergence (shrunk, as JSON).
#
# usage: tools/guests/fuzz-guests.sh [--arch arm64|ppc64el] [--combo K/G]... [--save-corpus DIR] [kvmdev.fuzz args]
#   default: every combination; --ops 10000 --differential
#   --arch ppc64el: the one powerpc guest (6.1, KVM-HV, XICS) against the book3s mock
#   --save-corpus DIR: each diverging case, with the real kernel's outcomes, as DIR/<n>.json
#   --record FILE OUT: no fuzzing: run every case of the corpus FILE (a repository path) in each
#     guest and append its real outcomes, tagged with kernel and GIC, to OUT (JSON lines)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMBOS=() ARGS=() SAVE= RECORD_OUT= DEBARCH=${GUEST_ARCH:-arm64}
while [ $# -gt 0 ]; do
  case $1 in
    --arch) DEBARCH=${2:?}; shift 2;;
    --combo) COMBOS+=("${2:?}"); shift 2;;
    --save-corpus) SAVE=${2:?}; shift 2;;
    --record) ARGS=(--record "/work/${2:?}"); RECORD_OUT=${3:?}; shift 3;;
    *) ARGS+=("$1"); shift;;
  esac
done
case $DEBARCH in
  arm64) TRIPLE=aarch64-linux-gnu ELFMACHINE=AArch64; [ ${#COMBOS[@]} -eq 0 ] && COMBOS=(6.12/3 6.12/2 6.1/3 6.1/2 6.18/3 6.18/2 7.3/3 7.3/2);;
  ppc64el) TRIPLE=powerpc64le-linux-gnu ELFMACHINE=PowerPC64; COMBOS=(6.1/0);;
  *) echo "fuzz-guests.sh: --arch must be arm64 or ppc64el" >&2; exit 2;;
esac
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--ops 10000 --differential)
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-fuzz.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
PYTHON=${PYTHON:-python3} LOGS=$STAGE
die() { echo "fuzz-guests.sh: $*" >&2; exit "${2:-3}"; }
say() { echo "[fuzz-guests] $*" >&2; }
# shellcheck source=stage.sh
. "$HERE/stage.sh"
stage_kvmdev "$STAGE" kvmdev tests/fuzz_corpus
rc=0
for c in "${COMBOS[@]}"; do
  k=${c%/*} g=${c#*/}
  gicopt=(--gic "$g"); [ "$DEBARCH" = arm64 ] || gicopt=()
  "$HERE/run-guest.sh" --prepare --arch "$DEBARCH" --kernel "$k" >/dev/null 2>&1
  "$HERE/run-guest.sh" --arch "$DEBARCH" --kernel "$k" "${gicopt[@]}" --smp 1 --timeout 3000 --env PYTHONPATH=/work \
    --env PYTHONDONTWRITEBYTECODE=1 "$STAGE" -- \
    python3 -m kvmdev.fuzz --backend real --kernel "$k" "${gicopt[@]}" --corpus - "${ARGS[@]}" 2>&1 \
    | grep -E '^(real|INVARIANT|DIVERGENCE|  case|invariant|CORPUS|RECORD)' > "$STAGE/out.txt" || rc=1
  if [ -n "$RECORD_OUT" ]; then
    n=$(grep -c '^RECORD ' "$STAGE/out.txt" || true)
    grep '^RECORD ' "$STAGE/out.txt" | cut -c8- >> "$RECORD_OUT" || rc=1
    echo "$DEBARCH $k gic$g: $n cases recorded"
    continue
  fi
  grep -v '^CORPUS ' "$STAGE/out.txt" || true
  if [ -n "$SAVE" ]; then
    mkdir -p "$SAVE"
    n=$(ls "$SAVE" | wc -l)
    # no divergence is no CORPUS line: grep's status 1 must not end the run (set -e, pipefail)
    { grep '^CORPUS ' "$STAGE/out.txt" || true; } | cut -c8- | while IFS= read -r line; do
      n=$((n + 1)); printf '%s\n' "$line" > "$SAVE/$k-gic$g-$n.json"
    done
  fi
done
exit $rc
