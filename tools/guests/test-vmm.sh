#!/bin/bash
# test-vmm.sh - examples/vmm (an arm64 VMM on kvmdev) under REAL arm64 KVM, nested:
# each combination boots a Debian arm64 first-level guest (tools/guests/run-guest.sh:
# kernel 6.12 or 6.1 under qemu TCG with emulated EL2, GIC 3 + ITS or GIC 2), and
# in it examples/vmm/driver.py boots the second-level guest (Debian's arm64 6.12
# Image, the harness's cached one, with a busybox initramfs) on vmm.py with --smp 2,
# 256 MiB: shell prompt, commands typed, a live snapshot, a resume in a new process,
# a second snapshot/resume, PSCI SYSTEM_OFF.  One line per combination, e.g.
#   vmm 6.12 gic3: boot=30.1s snapshot=60.2MiB/5.1s restore=2.0s snapshot2=... restore2=... PASS [wall 140.2s]
# Exit status 0 only if every combination passed.
#
# usage: tools/guests/test-vmm.sh [--combo K/G]... [--kernel K]... [--gic G]... [--logs DIR]
#          [--timeout SEC] [--mem MB] [--smp N] [--console]
#   --mem  first-level guest RAM (default 1536: the 256 MiB guest and its resumed
#          copy (one at a time), two sparse snapshots in the tmpfs /work, the 44 MB Image)
#   --smp  first-level vCPUs (default 2)
# environment: ARM64KVM_CACHE, PYTHON (host python with cffi and pip), VMM_COMBOS="6.12/3 6.1/2"
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
DEBARCH=arm64 TRIPLE=aarch64-linux-gnu ELFMACHINE=AArch64 WHEELPLAT=manylinux2014_aarch64
CACHE=${ARM64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arm64kvm}
SOURCES=${ARM64KVM_SOURCES:-/etc/apt/sources.list.d/debian.sources}
FDT_REQ="fdt==0.3.3"        # the VMM's device-tree writer (pure Python)
INITRAMFS_RECIPE=1

die() { echo "test-vmm.sh: $*" >&2; exit "${2:-3}"; }
say() { echo "[test-vmm] $*" >&2; }

COMBOS=() KERNELS=() GICS=() LOGS=${VMM_LOGS:-} TIMEOUT=1500 MEM=1536 SMP=2 CONSOLE=0
while [ $# -gt 0 ]; do
  case $1 in
    --combo) COMBOS+=("${2:?}"); shift 2;;
    --kernel) KERNELS+=("${2:?}"); shift 2;;
    --gic) GICS+=("${2:?}"); shift 2;;
    --logs) LOGS=${2:?}; shift 2;;
    --timeout) TIMEOUT=${2:?}; shift 2;;
    --mem) MEM=${2:?}; shift 2;;
    --smp) SMP=${2:?}; shift 2;;
    --console) CONSOLE=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) die "unknown argument $1" 2;;
  esac
done
# shellcheck disable=SC2206
[ ${#COMBOS[@]} -eq 0 ] && [ -n "${VMM_COMBOS:-}" ] && COMBOS=($VMM_COMBOS)
[ ${#KERNELS[@]} -eq 0 ] && KERNELS=(6.12 6.1)
[ ${#GICS[@]} -eq 0 ] && GICS=(3 2)
RUNS=()
if [ ${#COMBOS[@]} -gt 0 ]; then
  for c in "${COMBOS[@]}"; do
    [[ $c =~ ^(6\.12|6\.1)[/:,\ _-](gic)?([23])$ ]] || die "bad combination '$c' (want e.g. 6.12/3)" 2
    RUNS+=("${BASH_REMATCH[1]} ${BASH_REMATCH[3]}")
  done
else
  for k in "${KERNELS[@]}"; do for g in "${GICS[@]}"; do RUNS+=("$k $g"); done; done
fi

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
T0=$(now)
if [ -z "$LOGS" ]; then LOGS=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-vmm.XXXXXX"); else mkdir -p "$LOGS"; LOGS=$(cd "$LOGS" && pwd); fi
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-vmm-stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# the first-level kernels, and 6.12's Image for the second level
for k in $(printf '%s\n' "${RUNS[@]}" | cut -d' ' -f1 | sort -u) 6.12; do
  "$HERE/run-guest.sh" --prepare --kernel "$k" 2>>"$LOGS/prepare.log" || die "run-guest.sh --prepare --kernel $k failed (log: $LOGS/prepare.log)"
done
IMAGE=$CACHE/kernel-6.12/vmlinuz

# the second level's initramfs: Debian's arm64 busybox-static, cached per package version
APTD=$CACHE/apt APT_OPTS=()
# shellcheck source=apt.sh
. "$HERE/apt.sh"
exec 9>"$CACHE/.lock"; flock 9
setup_apt
BBDIR=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-busybox.XXXXXX")
(cd "$BBDIR" && aptq download busybox-static >/dev/null 2>&1) \
  || { aptq -q update >&2 && (cd "$BBDIR" && aptq download busybox-static >&2); } || die "apt-get download busybox-static failed"
DEB=$(ls "$BBDIR"/busybox-static_*.deb)
INITRD=$CACHE/vmm/initramfs-r$INITRAMFS_RECIPE-$(basename "$DEB" .deb).cpio.gz
if [ ! -s "$INITRD" ]; then
  say "building $INITRD"
  mkdir -p "$CACHE/vmm" "$BBDIR/x"; dpkg-deb -x "$DEB" "$BBDIR/x"
  "$PYTHON" "$ROOT/examples/vmm/initramfs.py" "$BBDIR/x/bin/busybox" "$INITRD.tmp" && mv "$INITRD.tmp" "$INITRD"
fi
flock -u 9; exec 9>&-
rm -rf "$BBDIR"

# the tree the first-level guests get as /work: kvmdev (aarch64 modules), the example, fdt
# shellcheck source=stage.sh
. "$HERE/stage.sh"
stage_kvmdev "$STAGE" kvmdev examples
GUEST_ENV=(PYTHONPATH=/work)
stage_pydeps "$STAGE" "$FDT_REQ"
mkdir -p "$STAGE/_vmm"
cp "$IMAGE" "$STAGE/_vmm/Image"; cp "$INITRD" "$STAGE/_vmm/initramfs.cpio.gz"
ENV_OPTS=()
for e in "${GUEST_ENV[@]}" PYTHONDONTWRITEBYTECODE=1; do ENV_OPTS+=(--env "$e"); done
say "stage $STAGE ($(du -sh "$STAGE" | cut -f1)); logs $LOGS; ${#RUNS[@]} run(s), one at a time"

FAIL=0 LINES=()
for r in "${RUNS[@]}"; do
  read -r k g <<<"$r"
  n=$k-gic$g t0=$(now) rc=0
  say "starting $n"
  cmd=("$HERE/run-guest.sh" --kernel "$k" --gic "$g" --smp "$SMP" --mem "$MEM" --timeout "$TIMEOUT" "${ENV_OPTS[@]}"
       "${STAGE_COPY_OPTS[@]}" "$STAGE" -- python3 examples/vmm/driver.py --kernel _vmm/Image --initrd _vmm/initramfs.cpio.gz --gic "$g" --smp 2 --mem 256)
  if [ "$CONSOLE" = 1 ]; then
    set +e; "${cmd[@]}" 2>&1 | sed -u "s/^/[$n] /" | tee "$LOGS/$n.log"; rc=${PIPESTATUS[0]}; set -e
    sed -i "s/^\[$n\] //" "$LOGS/$n.log"
  else
    "${cmd[@]}" >"$LOGS/$n.log" 2>&1 || rc=$?
  fi
  wall=$(secs "$t0" "$(now)")
  res=$(sed -n 's/^@@VMM \(.*\)@@\r\{0,1\}$/\1/p' "$LOGS/$n.log" | tail -1)
  krel=$(sed -n 's/^@@INIT uptime=[^ ]* \([^ ]*\) .*@@$/\1/p' "$LOGS/$n.log" | head -1)
  if [ "$rc" = 0 ] && [[ $res == *PASS ]]; then
    LINES+=("vmm $k gic$g: $res [first level ${krel:-?}, wall ${wall}s]")
  else
    FAIL=1
    LINES+=("vmm $k gic$g: ${res:-no result, FAIL} (exit $rc) [first level ${krel:-?}, wall ${wall}s, log $LOGS/$n.log]")
  fi
  say "${LINES[-1]}"
done
printf '%s\n' "${LINES[@]}"
echo "vmm: ${#RUNS[@]} run(s) in $(secs "$T0" "$(now)")s, logs in $LOGS"
if [ "$FAIL" = 1 ]; then
  for r in "${RUNS[@]}"; do
    read -r k g <<<"$r"
    grep -q 'PASS@@' "$LOGS/$k-gic$g.log" 2>/dev/null && continue
    echo "==== tail of $LOGS/$k-gic$g.log"; grep -av '^@@' "$LOGS/$k-gic$g.log" | tail -n 60
  done
  exit 1
fi
