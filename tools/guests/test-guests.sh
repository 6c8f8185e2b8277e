#!/bin/bash
# test-guests.sh - run kvmdev's arm64-marked tests against REAL arm64 KVM: Debian
# arm64 kernels (bookworm's 6.1 and 6.12, trixie-backports' newer series) booted under qemu-system-aarch64 TCG with emulated EL2
# (tools/guests/run-guest.sh), with the cffi modules cross-built for aarch64
# (tools/guests/build-ext.sh); with --arch ppc64el the powerpc-marked tests against
# REAL powerpc KVM (see below).  On x86 the same tests run on the mocks.
#
# usage: tools/guests/test-guests.sh [options] [pytest args...]
#   Runs `python3 -m pytest -q -rs -p no:cacheprovider -m arm64 tests <pytest args>`
#   with PYTHONPATH=/work KVMDEV_BACKEND=real KVMDEV_ARM64_GIC=<3|2> in each guest, for every combination
#   of kernel (6.12, 6.1, 6.18, 7.3) and GIC (--gic 3: VGIC v3 + ITS; --gic 2: VGIC v2), and
#   prints one line per combination, e.g.
#     arm64 6.12 gic3: 42 passed, 3 skipped in 12.3s  [kernel 6.12.117+deb12-arm64, wall 25.1s]
#   Exit status 0 only if every combination ran and pytest passed (a run that
#   collects no test, exit 5, fails).  Arguments that are not options below go to
#   pytest (also everything after --); a path argument replaces the default `tests`.
#
#   With --arch ppc64el (env GUEST_ARCH): the powerpc-marked tests in one guest,
#   Debian's ppc64el 6.1 kernel on an emulated PowerNV POWER8 (KVM-HV, XICS), e.g.
#     ppc64el 6.1: 9 passed in 20.1s  [kernel 6.1.0-50-powerpc64le, wall 45.0s]
#
# options:
#   --arch arm64|ppc64el  the guests (default arm64)
#   --kernel SERIES       only this kernel series, any Debian arm64 one (run-guest.sh --kernel),
#                         e.g. 6.1, 6.12, 6.18, 7.3 (repeatable)  env ARM64_KERNELS="6.12 6.1 6.18 7.3"
#   --gic 3|2             only this GIC (repeatable)               env ARM64_GICS="3 2"
#   --combo K/G           only this combination, e.g. 6.1/2 or 6.12-gic3 (repeatable)
#                                                                  env ARM64_COMBOS="6.12/3 6.1/2"
#   --jobs N              guests run at the same time (default: number of host CPUs)
#                                                                  env ARM64_JOBS
#   --smp N               vCPUs of each emulated machine (default 1)  env ARM64_SMP
#   --mem MB              RAM of each emulated machine (default 2048)
#   --console             also stream the guest consoles to the terminal
#   --logs DIR            keep logs in DIR (default: a new mktemp dir)  env ARM64_LOGS
#   --timeout SEC         limit per guest (default 900)            env ARM64_TIMEOUT
#   --wheel PATH          test an installed kvmdev: the wheel (make dist's aarch64 one, or
#                         ppc64le) unpacked onto the guest's PYTHONPATH (/work/_wheel) instead
#                         of kvmdev/ from this checkout with build-ext.sh's modules; the guest
#                         gets tests/, examples/ and pyproject.toml (pytest's configuration)
#                         only, and KVMDEV_EXPECT_FROM=/work/_wheel makes pytest stop unless
#                         kvmdev was imported from the wheel (tests/conftest.py)
#
# Speed (2-CPU host, 4 short runs): --jobs 2 --smp 1 took 17 s; --jobs 1 took 32 s
# with --smp 1 or 2; --jobs 2 --smp 2 took 29 s; --jobs 4 --smp 1 took 20 s.  TCG
# runs each emulated CPU on a host thread, and pytest in the guest is one thread, so
# one-CPU guests, one per host CPU, are the fastest.
#   -h|--help
#
# environment:
#   ARM64_PYTEST_ARGS   extra pytest args (word-split), e.g. for
#                         make test-arm64 ARM64_PYTEST_ARGS="-k vfio" ARM64_COMBOS=6.12/3
#   ARM64_PIP           pure-Python requirements to add in the guest from PyPI wheels
#                       (cached); default: "hypothesis" and the VMM's "fdt" if tests/
#                       imports them, else none.
#                       Set to "none" to disable.
#   ARM64KVM_CACHE      cache dir shared with run-guest.sh / build-ext.sh (~/.cache/arm64kvm)
#   PYTHON              host python with cffi (default python3)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
DEBARCH=${GUEST_ARCH:-arm64}

die() { echo "test-guests.sh: $*" >&2; exit "${2:-3}"; }
say() { echo "[test-guests] $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

KERNELS=() GICS=() COMBOS=() PYARGS=() GUEST_OPTS=() WHEEL=
JOBS=${ARM64_JOBS:-$(nproc 2>/dev/null || echo 1)} SMP=${ARM64_SMP:-1} CONSOLE=0 LOGS=${ARM64_LOGS:-} TIMEOUT=${ARM64_TIMEOUT:-900}
while [ $# -gt 0 ]; do
  case $1 in
    --kernel) KERNELS+=("${2:?}"); shift 2;;
    --arch) DEBARCH=${2:?}; shift 2;;
    --gic) GICS+=("${2:?}"); shift 2;;
    --combo) COMBOS+=("${2:?}"); shift 2;;
    --jobs) JOBS=${2:?}; shift 2;;
    --console) CONSOLE=1; shift;;
    --logs) LOGS=${2:?}; shift 2;;
    --timeout) TIMEOUT=${2:?}; shift 2;;
    --smp) SMP=${2:?}; shift 2;;
    --wheel) WHEEL=${2:?}; shift 2;;
    --mem) GUEST_OPTS+=("$1" "${2:?}"); shift 2;;
    -h|--help) usage; exit 0;;
    --) shift; PYARGS+=("$@"); break;;
    *) PYARGS+=("$1"); shift;;
  esac
done
# shellcheck disable=SC2206
[ -n "${ARM64_PYTEST_ARGS:-}" ] && PYARGS+=($ARM64_PYTEST_ARGS)
# shellcheck disable=SC2206
[ ${#KERNELS[@]} -eq 0 ] && KERNELS=(${ARM64_KERNELS:-6.12 6.1 6.18 7.3})
# shellcheck disable=SC2206
[ ${#GICS[@]} -eq 0 ] && GICS=(${ARM64_GICS:-3 2})
# shellcheck disable=SC2206
[ ${#COMBOS[@]} -eq 0 ] && [ -n "${ARM64_COMBOS:-}" ] && COMBOS=($ARM64_COMBOS)
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer" 2
GUEST_OPTS+=(--smp "$SMP" --arch "$DEBARCH")
# per guest architecture: cache, GNU triple, ELF machine, pytest marker, wheel platform
case $DEBARCH in
  arm64) CACHE=${ARM64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arm64kvm}
         TRIPLE=aarch64-linux-gnu ELFMACHINE=AArch64 MARK=arm64 WHEELPLAT=manylinux2014_aarch64;;
  ppc64el) CACHE=${PPC64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ppc64kvm}
           TRIPLE=powerpc64le-linux-gnu ELFMACHINE=PowerPC64 MARK=powerpc WHEELPLAT=manylinux2014_ppc64le
           KERNELS=(6.1) GICS=(0) COMBOS=();;   # one guest: Debian's 6.1 on PowerNV POWER8
  *) die "--arch must be arm64 or ppc64el" 2;;
esac

# the list of "kernel gic" pairs to run
RUNS=()
if [ ${#COMBOS[@]} -gt 0 ]; then
  for c in "${COMBOS[@]}"; do
    [[ $c =~ ^([1-9][0-9]*\.[0-9]+)[/:,\ _-](gic)?([23])$ ]] || die "bad combination '$c' (want e.g. 6.12/3 or 7.3-gic2)" 2
    RUNS+=("${BASH_REMATCH[1]} ${BASH_REMATCH[3]}")
  done
else
  for k in "${KERNELS[@]}"; do
    [[ $k =~ ^[1-9][0-9]*\.[0-9]+$ ]] || die "--kernel must be a kernel series such as 6.12 or 7.3" 2
    for g in "${GICS[@]}"; do
      case $DEBARCH/$g in arm64/2|arm64/3|arm64/gic2|arm64/gic3|ppc64el/0) ;; *) die "--gic must be 3 or 2" 2;; esac
      RUNS+=("$k ${g#gic}")
    done
  done
fi

[ "$JOBS" -gt ${#RUNS[@]} ] && JOBS=${#RUNS[@]}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
T0=$(now)

# ------------------------------------------------------------- logs, staging
if [ -z "$LOGS" ]; then
  LOGS=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-$MARK.XXXXXX")
else
  mkdir -p "$LOGS"; LOGS=$(cd "$LOGS" && pwd)
fi
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-arm64-stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
trap 'exit 130' INT TERM

# 1-3. the staged tree the guests get as /work (tools/guests/stage.sh): the guest's
# abi3 builds of the cffi modules with kvmdev/tests/examples, or (--wheel) the wheel
# unpacked as site-packages with the tests beside it (no kvmdev/ or cdefs/ of this
# checkout reaches the guest); then optional PyPI wheels
# shellcheck source=stage.sh
. "$HERE/stage.sh"
GUEST_ENV=(PYTHONPATH=/work)
if [ -z "$WHEEL" ]; then
  stage_kvmdev "$STAGE"
else
  stage_wheel "$STAGE" "$WHEEL" tests examples pyproject.toml
  GUEST_ENV=(PYTHONPATH=/work/_wheel KVMDEV_EXPECT_FROM=/work/_wheel)
fi
PIP_REQS=${ARM64_PIP:-}
if [ -z "$PIP_REQS" ] && [ -d "$ROOT/tests" ] \
   && grep -rqsE '^[[:space:]]*(import|from)[[:space:]]+hypothesis' --include='*.py' "$ROOT/tests"; then
  # the version the host's tests use, if it has one
  hv=$("$PYTHON" -c 'import hypothesis; print(hypothesis.__version__)' 2>/dev/null || true)
  PIP_REQS=hypothesis${hv:+==$hv}
fi
# the VMM example's device-tree writer (tests/test_vmm_example.py)
if [ -z "${ARM64_PIP:-}" ] && grep -rqsE 'importorskip\("fdt"\)|^import fdt' --include='*.py' "$ROOT/tests"; then
  PIP_REQS="${PIP_REQS:+$PIP_REQS }$(sed -n 's/^FDT_REQ="\([^"]*\)".*/\1/p' "$HERE/test-vmm.sh")"
fi
stage_pydeps "$STAGE" "$PIP_REQS"

# the buffer guard mode reaches the guests too (make test-arm64-guarded)
[ -n "${KVMDEV_GUARD_BUFFERS:-}" ] && GUEST_ENV+=(KVMDEV_GUARD_BUFFERS="$KVMDEV_GUARD_BUFFERS")
ENV_OPTS=()
for e in "${GUEST_ENV[@]}"; do ENV_OPTS+=(--env "$e"); done

# pytest: `tests` unless a path was given
HAS_PATH=0
for a in ${PYARGS[@]+"${PYARGS[@]}"}; do
  [[ $a != -* ]] && [ -e "$ROOT/${a%%::*}" ] && HAS_PATH=1
done
PYTEST=(python3 -m pytest -q -rs -p no:cacheprovider -m "$MARK")
# --wheel puts kvmdev's dist-info on the path, so pytest would load its pytest11 plugin, which
# the staged-tree runs never load (no dist-info there): keep both runs alike.  (With it, the
# plugin's fd-leak check reports vCPU fds still referenced after 10 real-arm64 tests.)
[ -n "$WHEEL" ] && PYTEST+=(-p no:kvmdev)
[ "$HAS_PATH" = 0 ] && PYTEST+=(tests)
PYTEST+=(${PYARGS[@]+"${PYARGS[@]}"})
say "stage $STAGE ($(du -sh "$STAGE" | cut -f1)), modules from $STAGED_EXT"
say "guest command: ${PYTEST[*]}"
say "logs: $LOGS; ${#RUNS[@]} run(s), $JOBS at a time, --smp $SMP"

# ------------------------------------------------------------------ the runs
# fetch/build the guest caches once, before guests start in parallel
for k in $(for r in "${RUNS[@]}"; do echo "${r% *}"; done | sort -u); do
  "$HERE/run-guest.sh" --prepare --arch "$DEBARCH" --kernel "$k" 2>>"$LOGS/prepare.log" \
    || die "run-guest.sh --prepare --kernel $k failed (log: $LOGS/prepare.log)"
done
name_of() { set -- $1; if [ "$DEBARCH" = arm64 ]; then echo "$1-gic$2"; else echo "$DEBARCH-$1"; fi; }
run_one() {  # "<kernel> <gic>"
  local k g n t0 rc=0
  read -r k g <<<"$1"
  n=$(name_of "$1")
  t0=$(now)
  say "starting $n"
  local gicopt=(--gic "$g" --env KVMDEV_ARM64_GIC="$g")
  [ "$DEBARCH" = arm64 ] || gicopt=()
  local cmd=("$HERE/run-guest.sh" --kernel "$k" "${gicopt[@]}" --timeout "$TIMEOUT" ${GUEST_OPTS[@]+"${GUEST_OPTS[@]}"}
    "${ENV_OPTS[@]}" --env KVMDEV_BACKEND=real --env PYTHONDONTWRITEBYTECODE=1
    "${STAGE_COPY_OPTS[@]}" "$STAGE" -- "${PYTEST[@]}")
  if [ "$CONSOLE" = 1 ]; then
    set +e
    "${cmd[@]}" 2>&1 | sed -u "s/^/[$n] /" | tee "$LOGS/$n.log"
    rc=${PIPESTATUS[0]}
    set -e
    sed -i "s/^\[$n\] //" "$LOGS/$n.log"
  else
    "${cmd[@]}" >"$LOGS/$n.log" 2>&1 || rc=$?
  fi
  echo "$rc $(secs "$t0" "$(now)")" > "$LOGS/$n.rc"
  say "$n finished: exit $rc, $(secs "$t0" "$(now)")s"
}

report_one() {  # prints the line of one run; returns 1 if it failed
  local k g n rc wall summary krel kvm status=0 label
  read -r k g <<<"$1"
  n=$(name_of "$1")
  label="arm64 $k gic$g"; [ "$DEBARCH" = arm64 ] || label="$DEBARCH $k"
  read -r rc wall < "$LOGS/$n.rc"
  summary=$(grep -aE '^=*[[:space:]]*(no tests ran|[0-9]+ (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?))[^@]* in [0-9.]+s' \
            "$LOGS/$n.log" | tail -1 | sed -E 's/^=+ //; s/ =+$//' || true)
  krel=$(sed -n 's/^@@INIT uptime=[^ ]* \([^ ]*\) .*@@$/\1/p' "$LOGS/$n.log" | head -1)
  kvm=$(grep -aq '^@@KVM /dev/kvm present@@' "$LOGS/$n.log" && echo "" || echo ", NO /dev/kvm")
  local tail="[kernel ${krel:-?}$kvm, wall ${wall}s]"
  case $rc in   # run-guest.sh's own statuses
    124) rc="124: guest timed out";; 125) rc="125: guest died without a status";;
    3) [ -z "$summary" ] && rc="3: run-guest.sh setup failed";;
  esac
  if [ -z "$summary" ]; then
    echo "$label: FAILED: no pytest summary line (exit $rc) $tail"; status=1
  elif [ "$rc" = 5 ]; then
    echo "$label: FAILED: no tests collected: $summary $tail"; status=1
  elif [ "$rc" != 0 ]; then
    echo "$label: FAILED (exit $rc): $summary $tail"; status=1
  else
    echo "$label: $summary $tail"
  fi
  return $status
}

# Every run goes to the background (also with --jobs 1) so that INT/TERM reach
# this script at once; the handler ends the runs' process trees (qemu runs in
# `timeout`'s own process group, out of reach of a terminal's ^C).
tree() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree "$c"; done; echo "$1"; }
pids=()
on_signal() {
  trap - INT TERM
  local p all=()
  for p in ${pids[@]+"${pids[@]}"}; do all+=($(tree "$p")); done
  [ ${#all[@]} -gt 0 ] && kill -TERM "${all[@]}" 2>/dev/null
  say "interrupted; logs in $LOGS"
  exit 130
}
trap on_signal INT TERM
for r in "${RUNS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run_one "$r" &
  pids+=($!)
done
wait

# ------------------------------------------------------------------ summary
FAIL=0
for r in "${RUNS[@]}"; do
  n=$(name_of "$r")
  if ! line=$(report_one "$r"); then
    FAIL=1
    echo "$line"
    echo "     log: $LOGS/$n.log"
  else
    echo "$line"
  fi
done
echo "$DEBARCH: ${#RUNS[@]} run(s) in $(secs "$T0" "$(now)")s, logs in $LOGS"
if [ "$FAIL" = 1 ]; then
  # the end of each failed run, for CI logs
  for r in "${RUNS[@]}"; do
    n=$(name_of "$r")
    report_one "$r" >/dev/null && continue
    read -r rc _ < "$LOGS/$n.rc"
    [ "$rc" = 5 ] && continue            # "no tests collected" says it all
    echo "==== tail of $LOGS/$n.log"
    grep -av '^@@' "$LOGS/$n.log" | tail -n 40
  done
  exit 1
fi
