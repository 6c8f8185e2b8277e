#!/bin/bash
# fuzz-arm64.sh - python -m kvmdev.fuzz on the real arm64 kernels (6.12 and 6.1,
# gic 3 and 2) under QEMU, differential against the mock of the same kernel and
# GIC.  Prints each guest's summary and every divergence (shrunk, as JSON).
#
# usage: tools/arm64/fuzz-arm64.sh [--combo K/G]... [--save-corpus DIR] [kvmdev.fuzz args]
#   default: every combination; --ops 10000 --differential
#   --save-corpus DIR: each diverging case, with the real kernel's outcomes, as DIR/<n>.json
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMBOS=() ARGS=() SAVE=
while [ $# -gt 0 ]; do
  case $1 in
    --combo) COMBOS+=("${2:?}"); shift 2;;
    --save-corpus) SAVE=${2:?}; shift 2;;
    *) ARGS+=("$1"); shift;;
  esac
done
[ ${#COMBOS[@]} -eq 0 ] && COMBOS=(6.12/3 6.12/2 6.1/3 6.1/2)
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--ops 10000 --differential)
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-fuzz.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
EXT=$("$HERE/build-ext.sh" | tail -1)
tar -C "$ROOT" --exclude=__pycache__ -cf - kvmdev | tar -C "$STAGE" -xf -
find "$STAGE/kvmdev" -name '*.so' -delete
cp "$EXT"/_kvm_*.cpython-311-aarch64-linux-gnu.so "$STAGE/kvmdev/"
rc=0
for c in "${COMBOS[@]}"; do
  k=${c%/*} g=${c#*/}
  "$HERE/run-guest.sh" --prepare --kernel "$k" >/dev/null 2>&1
  "$HERE/run-guest.sh" --kernel "$k" --gic "$g" --smp 1 --timeout 3000 --env PYTHONPATH=/work \
    --env PYTHONDONTWRITEBYTECODE=1 "$STAGE" -- \
    python3 -m kvmdev.fuzz --backend real --kernel "$k" --gic "$g" --corpus - "${ARGS[@]}" 2>&1 \
    | grep -E '^(real|INVARIANT|DIVERGENCE|  case|invariant|CORPUS)' > "$STAGE/out.txt" || rc=1
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
