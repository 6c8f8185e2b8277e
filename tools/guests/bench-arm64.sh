#!/bin/bash
# bench-arm64.sh - run bench/bench_run.py and bench/bench_gicstate.py on the real
# arm64 kernels (Debian 6.12 and 6.1 under qemu-system-aarch64 TCG, --gic 3: VGIC
# v3 + ITS), with their C baselines bench/run_loop.c and bench/gic_replay.c
# cross-built here for aarch64.
#
# usage: tools/guests/bench-arm64.sh [--kernel 6.12|6.1]... [bench_gicstate.py args]
#   default kernels: 6.12 and 6.1, one after the other (benchmarks share no CPU);
#   default bench args: --vcpus 512 --irqs 992 --repeats 3 (the largest VGIC v3)
# Prints the benchmark's table for each kernel.  Exit status 0 when every run
# printed its table.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KERNELS=() ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --kernel) KERNELS+=("${2:?}"); shift 2;;
    *) ARGS+=("$1"); shift;;
  esac
done
[ ${#KERNELS[@]} -eq 0 ] && KERNELS=(6.12 6.1)
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--vcpus 512 --irqs 992 --repeats 3)   # 512: the most vCPUs a VGIC v3 takes

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-bench.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
DEBARCH=arm64 TRIPLE=aarch64-linux-gnu ELFMACHINE=AArch64 PYTHON=${PYTHON:-python3} LOGS=$STAGE
die() { echo "bench-arm64.sh: $*" >&2; exit "${2:-3}"; }
say() { echo "[bench-arm64] $*" >&2; }
# shellcheck source=stage.sh
. "$HERE/stage.sh"
stage_kvmdev "$STAGE" kvmdev bench
aarch64-linux-gnu-gcc -O2 -Wall -shared -fPIC -o "$STAGE/bench/gic_replay.aarch64.so" "$ROOT/bench/gic_replay.c"
aarch64-linux-gnu-gcc -O2 -Wall -o "$STAGE/bench/run_loop.aarch64" "$ROOT/bench/run_loop.c"
# the run loop (bench_run.py against run_loop.c) before the GIC: short samples, a TCG
# guest's exits are ~100x slower than x86's
RUN_ARGS=(--rounds 5 --repeats 2 --sample-ms 50)

rc=0
for k in "${KERNELS[@]}"; do
  "$HERE/run-guest.sh" --prepare --kernel "$k" >/dev/null 2>&1 || { echo "bench-arm64: guest $k unavailable" >&2; rc=1; continue; }
  "$HERE/run-guest.sh" --kernel "$k" --gic 3 --smp 1 --timeout 1200 --env PYTHONPATH=/work --env PYTHONDONTWRITEBYTECODE=1 \
    "$STAGE" -- sh -c "python3 bench/bench_run.py --c-loop bench/run_loop.aarch64 ${RUN_ARGS[*]} && \
      python3 bench/bench_gicstate.py --backend real --c-replay bench/gic_replay.aarch64.so ${ARGS[*]}" \
    2>&1 | grep -E "^(kvmdev bench|\(|GIC save|  |gic_replay|Traceback|[A-Za-z]*Error)" || rc=1
done
exit $rc
