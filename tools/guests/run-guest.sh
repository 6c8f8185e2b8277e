#!/bin/bash
# run-guest.sh - run a command inside a real arm64 Linux guest (Debian 12 kernel,
# KVM built in) under qemu-system-aarch64 TCG with emulated EL2, so that the
# guest has a working /dev/kvm (VHE) with the in-kernel vGIC (v2 or v3 + ITS).
# kvmdev's own copy of the shared arm64-kvm boot harness (run-arm64.sh); used by
# tools/guests/test-guests.sh.  Its cache (~/.cache/arm64kvm) is the same one.
#
# usage: run-guest.sh [options] <host-dir> -- <command...>
#   <host-dir> is copied into the guest at /work (cwd of the command).
#   Exit status = guest command's exit status (parsed from a sentinel line),
#   124 on timeout, 125 if the guest died without reporting a status,
#   2 on usage error, 3 on setup failure.
#
# options:
#   --gic 2|3          GIC version of the emulated machine (default 3; 3 adds an ITS)
#   --smp N            vCPUs of the emulated machine (default 2)
#   --mem MB           guest RAM (default 2048)
#   --timeout SEC      wall-clock limit for the qemu run (default 600)
#   --kernel SERIES    Debian arm64 kernel series, e.g. 6.1, 6.12, 6.18, 7.3 (default 6.12):
#                      6.1 and 6.12 from bookworm/bookworm-security as their meta packages
#                      name them; any other series is the newest of that series in
#                      trixie-backports (its own private apt root, $CACHE/apt-trixie-backports;
#                      from 6.19 on the image is linux-binary-<abi>, the config linux-base-<abi>).
#                      The guest userland stays bookworm's.  A fetched kernel stays cached
#                      in $CACHE/kernel-SERIES (remove it to take a newer point release).
#   --arch arm64|ppc64el  the guest (default arm64; env GUEST_ARCH).  ppc64el boots
#                      Debian's powerpc64le 6.1 kernel on an emulated PowerNV POWER8
#                      (qemu-system-ppc64 -M powernv8, hypervisor mode), loads its
#                      kvm and kvm-hv modules: /dev/kvm is KVM-HV, XICS (--gic is ignored)
#   --env K=V          export K=V to the command (repeatable)
#   --exclude PATTERN  tar --exclude pattern for the copy of <host-dir> (repeatable);
#                      defaults: .git __pycache__ .pytest_cache .mypy_cache
#   --no-default-excludes
#   --verbose          show kernel boot messages and KVM/GIC lines of dmesg
#   --prepare          only fetch/build the cache, do not boot (no <host-dir> needed)
#   -h|--help
#
# environment:
#   ARM64KVM_CACHE     cache dir (default ~/.cache/arm64kvm)
#   ARM64KVM_SOURCES   deb822 sources file to take the Debian archive URIs from
#                      (default: the host's /etc/apt/sources.list.d/debian.sources)
#   ARM64KVM_QEMU_EXTRA extra qemu arguments (word-split)
#
# Everything downloaded for the guest comes from the Debian arm64 archive via a
# *private* apt configuration under $ARM64KVM_CACHE/apt (no dpkg --add-architecture,
# nothing arm64 is installed on the host).  Host packages installed if missing:
# qemu-system-arm cpio (and python3.11-minimal for .pyc precompilation).
set -euo pipefail

RECIPE_VERSION=6   # bump to force a rebuild of the cached base initramfs
SOURCES=${ARM64KVM_SOURCES:-/etc/apt/sources.list.d/debian.sources}

GIC=3 SMP=2 MEM=2048 TIMEOUT=600 KSERIES=6.12 VERBOSE=0 PREPARE=0 DEBARCH=${GUEST_ARCH:-arm64}
ENVS=() EXCLUDES=() DEFAULT_EXCLUDES=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "run-guest.sh: $*" >&2; exit "${2:-3}"; }
log() { echo "[run-guest] $*" >&2; }

while [ $# -gt 0 ]; do
  case $1 in
    --gic) GIC=${2:?}; shift 2;;
    --smp) SMP=${2:?}; shift 2;;
    --mem) MEM=${2:?}; shift 2;;
    --timeout) TIMEOUT=${2:?}; shift 2;;
    --kernel) KSERIES=${2:?}; shift 2;;
    --arch) DEBARCH=${2:?}; shift 2;;
    --env) ENVS+=("${2:?}"); shift 2;;
    --exclude) EXCLUDES+=("${2:?}"); shift 2;;
    --no-default-excludes) DEFAULT_EXCLUDES=0; shift;;
    --verbose|-v) VERBOSE=1; shift;;
    --prepare) PREPARE=1; shift;;
    -h|--help) usage; exit 0;;
    --) break;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2;;
    *) break;;
  esac
done
case $GIC in 2|3) ;; *) die "--gic must be 2 or 3" 2;; esac
[[ $KSERIES =~ ^[1-9][0-9]*\.[0-9]+$ ]] || die "--kernel must be a kernel series such as 6.12 or 7.3" 2
case $DEBARCH in
  arm64) CACHE=${ARM64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arm64kvm} QEMU_BIN=qemu-system-aarch64 QEMU_PKG=qemu-system-arm;;
  ppc64el) CACHE=${PPC64KVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ppc64kvm} QEMU_BIN=qemu-system-ppc64 QEMU_PKG=qemu-system-ppc
           [ "$KSERIES" = 6.1 ] || die "ppc64el: only the 6.1 kernel (bookworm main) is wired up" 2;;
  *) die "--arch must be arm64 or ppc64el" 2;;
esac
[[ $SMP =~ ^[0-9]+$ && $SMP -ge 1 ]] || die "--smp must be a positive integer" 2
[ "$GIC" = 2 ] && [ "$SMP" -gt 8 ] && die "GICv2 supports at most 8 vCPUs" 2

HOSTDIR= CMD=()
if [ "$PREPARE" = 0 ]; then
  [ $# -ge 1 ] || { usage >&2; exit 2; }
  HOSTDIR=$1; shift
  [ -d "$HOSTDIR" ] || die "host dir '$HOSTDIR' not found" 2
  HOSTDIR=$(cd "$HOSTDIR" && pwd)
  [ "${1:-}" = -- ] || die "expected -- after <host-dir>" 2
  shift
  [ $# -ge 1 ] || die "no command given" 2
  CMD=("$@")
fi

# ------------------------------------------------------------------ host tools
ensure_host_tools() {
  local missing=()
  command -v $QEMU_BIN >/dev/null || missing+=($QEMU_PKG)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v flock >/dev/null || missing+=(util-linux)
  [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  [ -x /usr/bin/python3.11 ] || missing+=(python3.11-minimal)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing host packages: ${missing[*]}"
    [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
      || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
      || die "apt-get install ${missing[*]} failed"
  fi
}

# ----------------------------------------------- private guest-architecture apt root
APTD=$CACHE/apt
APT_OPTS=()
# shellcheck source=apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"   # setup_apt, aptq, acq

# Guest userland (resolved by hand from `apt-cache depends`; optional stdlib
# modules whose libs are left out: _dbm(libdb5.3) _curses(libncursesw6)
# readline(libreadline8) nis(libnsl2,libtirpc3)).
USER_PKGS=(
  busybox-static
  libc6 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libexpat1 zlib1g libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libcrypt1
  python3-cffi-backend python3-cffi python3-pycparser python3-ply
  python3-pytest python3-pluggy python3-py python3-iniconfig python3-packaging
  python3-attr python3-more-itertools python3-pkg-resources
  python3-psutil
)

KDIR=$CACHE/kernel-$KSERIES
BASE=$CACHE/base.cpio
BASE_STAMP=$CACHE/base.stamp

# ppc64el: the 6.1 kernel (vmlinux) and its KVM modules, loaded by /init in this order
PPC_MODULES=(kvm.ko kvm-hv.ko)
fetch_kernel_ppc64el() {
  [ -s "$KDIR/vmlinuz" ] && [ -s "$KDIR/pkg" ] && return 0
  local abi deb m
  abi=$(acq depends linux-image-powerpc64le | sed -n 's/^  Depends: \(linux-image-[0-9][^ ]*-powerpc64le\)$/\1/p' | head -1)
  [ -n "$abi" ] || die "could not resolve the kernel package from linux-image-powerpc64le"
  log "downloading kernel $abi"
  rm -rf "$KDIR.tmp"; mkdir -p "$KDIR.tmp/modules"
  (cd "$KDIR.tmp" && aptq download "$abi" >&2) || die "apt-get download $abi failed"
  deb=$(ls "$KDIR.tmp"/*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR.tmp" ./boot ./lib/modules
  cp "$KDIR.tmp"/boot/vmlinux-* "$KDIR.tmp/vmlinuz"
  cp "$KDIR.tmp"/boot/config-* "$KDIR.tmp/config"
  grep -q '^CONFIG_KVM_BOOK3S_64_HV=m' "$KDIR.tmp/config" || die "$abi: no KVM-HV module"
  for m in "${PPC_MODULES[@]}"; do
    cp "$KDIR.tmp"/lib/modules/*/kernel/arch/powerpc/kvm/"$m" "$KDIR.tmp/modules/" || die "$abi: no $m"
  done
  basename "$deb" > "$KDIR.tmp/pkg"
  rm -rf "$KDIR.tmp/boot" "$KDIR.tmp/lib" "$deb"
  rm -rf "$KDIR"; mv "$KDIR.tmp" "$KDIR"
}

# the suite of a kernel series: bookworm's two series from the bookworm root, any other from
# trixie-backports (6.16 and later), each suite in its own private apt root
kernel_suite() { case $1 in 6.1|6.12) echo bookworm;; *) echo trixie-backports;; esac; }

# newest trixie-backports ABI of series $1 (e.g. 6.18 -> 6.18.15+deb13-arm64), from the
# image package names (linux-image-<abi>[-unsigned] before 6.19, linux-binary-[unsigned-]<abi> after)
newest_abi() {
  local re=${1//./\\.}
  acq pkgnames linux- | sed -nE "s/^linux-(image|binary)-(unsigned-)?(${re}\.[0-9]+\+[a-z0-9.~]+-arm64)(-unsigned)?$/\3/p" \
    | sort -uV | tail -1
}

fetch_kernel() {
  [ "$DEBARCH" = ppc64el ] && { fetch_kernel_ppc64el; return; }
  [ -s "$KDIR/vmlinuz" ] && [ -s "$KDIR/pkg" ] && return 0
  local meta abi pkg cfgpkg deb names p
  rm -rf "$KDIR.tmp"; mkdir -p "$KDIR.tmp"
  if [ "$(kernel_suite "$KSERIES")" = bookworm ]; then
    # 6.12: linux-6.12 from bookworm-security; 6.1: bookworm's default linux-image-arm64
    if [ "$KSERIES" = 6.1 ]; then meta=linux-image-arm64; else meta=linux-image-6.12-arm64; fi
    abi=$(acq depends "$meta" | sed -n 's/^  Depends: \(linux-image-[0-9][^ ]*-arm64\)$/\1/p' | head -1)
    [ -n "$abi" ] || die "could not resolve kernel package from $meta"
    pkg=$abi-unsigned cfgpkg=
    log "downloading kernel $pkg"
    (cd "$KDIR.tmp" && aptq download "$pkg" >&2) || die "apt-get download $pkg failed"
  else
    # its own apt root, in a subshell: the bookworm root stays the one of the base initramfs
    ( APTD=$CACHE/apt-trixie-backports APT_SUITE=trixie-backports
      setup_apt
      log "apt-get update (private $DEBARCH apt root $APTD)"
      aptq -q update >&2 || die "apt-get update ($APT_SUITE) failed"
      abi=$(newest_abi "$KSERIES")
      [ -n "$abi" ] || die "no $KSERIES.y arm64 kernel in $APT_SUITE" 2
      names=$(acq pkgnames "linux-" | grep -F -- "$abi")
      pkg=
      for p in "linux-binary-unsigned-$abi" "linux-binary-$abi" "linux-image-$abi-unsigned" "linux-image-$abi"; do
        grep -qxF -- "$p" <<<"$names" && { pkg=$p; break; }
      done
      [ -n "$pkg" ] || die "no image package for $abi"
      cfgpkg=; grep -qxF -- "linux-base-$abi" <<<"$names" && cfgpkg=linux-base-$abi
      log "downloading kernel $pkg ${cfgpkg:+and $cfgpkg }($APT_SUITE)"
      cd "$KDIR.tmp" && aptq download "$pkg" $cfgpkg >&2 || die "apt-get download $pkg $cfgpkg failed"
    ) || exit $?
    pkg=$(cd "$KDIR.tmp" && ls linux-binary-*.deb linux-image-*.deb 2>/dev/null | head -1 || true)
    [ -n "$pkg" ] || die "no kernel package downloaded for $KSERIES"
  fi
  # /boot/vmlinuz-<abi> and /boot/config-<abi> before 6.19; /usr/lib/modules/<abi>/vmlinuz[.unsigned]
  # and .../config from 6.19 on (tar fails on the patterns a package does not have: ignored)
  for deb in "$KDIR.tmp"/*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR.tmp" --wildcards './boot/vmlinuz-*' './boot/config-*' \
      './usr/lib/modules/*/vmlinuz*' './usr/lib/modules/*/config' 2>/dev/null || true
  done
  deb=$(cd "$KDIR.tmp" && ls linux-binary-*.deb linux-image-*.deb 2>/dev/null | head -1 || true)
  p=$(ls "$KDIR.tmp"/boot/vmlinuz-* "$KDIR.tmp"/usr/lib/modules/*/vmlinuz* 2>/dev/null | head -1 || true)
  [ -n "$p" ] || die "$deb: no vmlinuz in /boot or /usr/lib/modules"
  cp "$p" "$KDIR.tmp/vmlinuz"
  p=$(ls "$KDIR.tmp"/boot/config-* "$KDIR.tmp"/usr/lib/modules/*/config 2>/dev/null | head -1 || true)
  [ -n "$p" ] || die "$KSERIES: no kernel config in the kernel packages"
  cp "$p" "$KDIR.tmp/config"
  grep -q '^CONFIG_KVM=y' "$KDIR.tmp/config" || die "$deb: CONFIG_KVM is not =y"
  echo "$deb" > "$KDIR.tmp/pkg"
  rm -rf "$KDIR.tmp/boot" "$KDIR.tmp/usr" "$KDIR.tmp"/*.deb
  rm -rf "$KDIR"; mv "$KDIR.tmp" "$KDIR"
}

write_init() {
  cat > "$1" <<'EOF'
#!/bin/busybox sh
# arm64kvm base initramfs /init
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /sbin /usr/sbin /usr/bin
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb USER=root LOGNAME=root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# a cgroup-v1 memory controller, for the tests that need a memory limit (ENOMEM)
mount -t tmpfs cgroup /sys/fs/cgroup 2>/dev/null && mkdir -p /sys/fs/cgroup/memory \
  && mount -t cgroup -o memory memory /sys/fs/cgroup/memory 2>/dev/null
NONCE=$(cat /arm64kvm/nonce 2>/dev/null || echo none)
echo "@@INIT uptime=$(cut -d' ' -f1 /proc/uptime) $(uname -r) $(uname -m)@@"
for m in $(cat /arm64kvm/modules 2>/dev/null); do insmod "/arm64kvm/$m" || echo "@@INSMOD $m failed@@"; done
if [ -c /dev/kvm ]; then echo "@@KVM /dev/kvm present@@"; else echo "@@KVM /dev/kvm MISSING@@"; fi
if grep -qw arm64kvm.verbose /proc/cmdline; then
  uname -a
  dmesg | grep -iE 'kvm|vgic|GICv|ITS|hyp|Linux version'
fi
rc=0
if [ -f /arm64kvm/cmd.sh ]; then
  [ -f /arm64kvm/env.sh ] && . /arm64kvm/env.sh
  cd /work 2>/dev/null || cd /
  /bin/sh /arm64kvm/cmd.sh </dev/null
  rc=$?
  cd /
else
  echo "@@NO COMMAND@@"
fi
echo "@@END uptime=$(cut -d' ' -f1 /proc/uptime)@@"
echo "@@EXIT-$NONCE=$rc@@"
sync
poweroff -f
sleep 10
EOF
  chmod 755 "$1"
}

build_base() {
  local want have
  want="recipe=$RECIPE_VERSION $(printf '%s ' "${USER_PKGS[@]}")"
  have=$(cat "$BASE_STAMP" 2>/dev/null || true)
  [ -s "$BASE" ] && [ "$have" = "$want" ] && return 0
  log "building base initramfs"
  local W=$CACHE/build
  rm -rf "$W"; mkdir -p "$W/debs" "$W/root"
  (cd "$W/debs" && aptq download "${USER_PKGS[@]}" >&2) || die "apt-get download of guest packages failed"
  for d in "$W"/debs/*.deb; do dpkg-deb -x "$d" "$W/root"; done
  (cd "$W/debs" && ls *.deb) > "$W/root/.arm64kvm-packages"
  cd "$W/root"
  rm -rf usr/share/doc usr/share/man usr/share/lintian usr/share/initramfs-tools usr/share/binfmts \
         usr/lib/binfmt.d usr/lib/*-linux-gnu/gconv
  ln -sf python3.11 usr/bin/python3
  ln -sf python3 usr/bin/python
  mkdir -p proc sys dev tmp run root work arm64kvm sbin usr/sbin usr/local/bin etc
  printf 'root:x:0:0:root:/root:/bin/sh\n' > etc/passwd
  printf 'root:x:0:\n' > etc/group
  write_init init
  # .pyc are architecture independent: precompile with the host's python3.11
  # (same magic number) so the guest does not compile the stdlib on every boot.
  local hostpy=/usr/bin/python3.11 gmagic hmagic
  gmagic=$(sed -n 's/^MAGIC_NUMBER = (\([0-9]*\)).*/\1/p' usr/lib/python3.11/importlib/_bootstrap_external.py)
  hmagic=$("$hostpy" -c 'import importlib.util as u; print(int.from_bytes(u.MAGIC_NUMBER[:2], "little"))' 2>/dev/null || true)
  if [ -n "$gmagic" ] && [ "$gmagic" = "$hmagic" ]; then
    local jobs=()   # -j0 needs concurrent.futures (not in python3.11-minimal)
    "$hostpy" -c 'import concurrent.futures' 2>/dev/null && jobs=(-j0)
    "$hostpy" -m compileall -q "${jobs[@]}" --invalidation-mode unchecked-hash -s "$PWD" -p / \
      "$PWD/usr/lib/python3.11" "$PWD/usr/lib/python3/dist-packages" >/dev/null || log "compileall reported errors (ignored)"
  else
    log "WARNING: host python magic ($hmagic) != guest ($gmagic); not precompiling .pyc"
  fi
  find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet > "$BASE.tmp"
  cd "$CACHE"
  mv "$BASE.tmp" "$BASE"
  echo "$want" > "$BASE_STAMP"
  rm -rf "$W"
  cd "$ORIG_PWD"
}

prepare_cache() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  ensure_host_tools
  setup_apt
  if [ ! -s "$KDIR/vmlinuz" ] || [ ! -s "$BASE" ] || [ "$(cat "$BASE_STAMP" 2>/dev/null)" != "recipe=$RECIPE_VERSION $(printf '%s ' "${USER_PKGS[@]}")" ]; then
    log "apt-get update (private $DEBARCH apt root $APTD)"
    aptq -q update >&2 || die "apt-get update failed"
    fetch_kernel
    build_base
  fi
  flock -u 9
}

ORIG_PWD=$PWD
prepare_cache
cd "$ORIG_PWD"
if [ "$PREPARE" = 1 ]; then
  log "cache ready: $KDIR/vmlinuz ($(cat "$KDIR/pkg")), $BASE"
  exit 0
fi

# ------------------------------------------------------------- per-run initrd
RUNDIR=$(mktemp -d "${TMPDIR:-/tmp}/arm64kvm-run.XXXXXX")
cleanup() { rm -rf "$RUNDIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$RUNDIR/root/work" "$RUNDIR/root/arm64kvm"
if [ "$DEBARCH" = ppc64el ]; then
  cp "$KDIR"/modules/*.ko "$RUNDIR/root/arm64kvm/"
  printf '%s\n' "${PPC_MODULES[@]}" > "$RUNDIR/root/arm64kvm/modules"
fi
TAR_EX=()
[ "$DEFAULT_EXCLUDES" = 1 ] && EXCLUDES+=(.git __pycache__ .pytest_cache .mypy_cache)
for e in "${EXCLUDES[@]}"; do TAR_EX+=("--exclude=$e"); done
tar -C "$HOSTDIR" "${TAR_EX[@]}" -cf - . | tar -C "$RUNDIR/root/work" -xf - || die "copying $HOSTDIR failed"

q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
NONCE=$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n')
echo "$NONCE" > "$RUNDIR/root/arm64kvm/nonce"
{
  for kv in "${ENVS[@]}"; do
    [[ $kv == *=* ]] || die "--env needs K=V" 2
    printf 'export %s=%s\n' "${kv%%=*}" "$(q "${kv#*=}")"
  done
} > "$RUNDIR/root/arm64kvm/env.sh"
{
  echo 'cd /work'
  line=; for a in "${CMD[@]}"; do line+="$(q "$a") "; done
  echo "$line"
} > "$RUNDIR/root/arm64kvm/cmd.sh"
(cd "$RUNDIR/root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) > "$RUNDIR/extra.cpio"
cat "$BASE" "$RUNDIR/extra.cpio" > "$RUNDIR/initrd.cpio"
rm -f "$RUNDIR/extra.cpio"

MACHINE="virt,virtualization=on,gic-version=$GIC"
[ "$GIC" = 3 ] && MACHINE+=",its=on"
APPEND="console=ttyAMA0 rdinit=/init panic=-1 oops=panic"
if [ "$VERBOSE" = 1 ]; then APPEND+=" arm64kvm.verbose"; else APPEND+=" quiet loglevel=3"; fi

# -cpu max,pauth-impdef=on: QARMA pointer-auth emulation roughly doubles TCG run time.
QEMU=(qemu-system-aarch64 -M "$MACHINE" -cpu max,pauth-impdef=on -accel tcg,thread=multi
  -smp "$SMP" -m "$MEM" -display none -monitor none -serial stdio -nic none -no-reboot
  -kernel "$KDIR/vmlinuz" -initrd "$RUNDIR/initrd.cpio" -append "$APPEND")
if [ "$DEBARCH" = ppc64el ]; then
  # PowerNV runs the kernel in hypervisor mode (skiboot firmware), so kvm-hv loads;
  # POWER8: the host interrupt controller is XICS (POWER9's XIVE would give XICS-on-XIVE)
  APPEND=${APPEND/console=ttyAMA0/console=hvc0}
  QEMU=(qemu-system-ppc64 -M powernv8 -cpu POWER8 -accel tcg,thread=multi -smp "$SMP" -m "$MEM"
    -display none -monitor none -serial stdio -nic none -no-reboot
    -kernel "$KDIR/vmlinuz" -initrd "$RUNDIR/initrd.cpio" -append "$APPEND")
fi
# shellcheck disable=SC2206
[ -n "${ARM64KVM_QEMU_EXTRA:-}" ] && QEMU+=($ARM64KVM_QEMU_EXTRA)

LOG=$RUNDIR/console.log
[ "$VERBOSE" = 1 ] && log "${QEMU[*]}"
set +e
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null 2>&1 | sed -u 's/\r$//' | tee "$LOG"
st=("${PIPESTATUS[@]}")
set -e
qrc=${st[0]}
rc=$(grep -ao "@@EXIT-$NONCE=[0-9]*@@" "$LOG" | tail -1 | sed 's/.*=\([0-9]*\)@@/\1/' || true)
if [ -n "$rc" ]; then exit "$rc"; fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then log "TIMEOUT after ${TIMEOUT}s"; exit 124; fi
log "guest ended without an exit sentinel (qemu rc=$qrc)"
exit 125
