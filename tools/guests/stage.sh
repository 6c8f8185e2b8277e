# stage.sh - the project tree a guest gets as /work, shared by test-guests.sh and
# test-vmm.sh (sourced; needs HERE, ROOT, PYTHON, DEBARCH, CACHE, TRIPLE, ELFMACHINE,
# WHEELPLAT, LOGS, die() and say()).

# stage_kvmdev STAGE [PATH...]: the guest's (aarch64 or powerpc64le) CPython 3.11
# builds of the cffi modules (tools/guests/build-ext.sh) and the project's PATHs
# (default: kvmdev tests examples cdefs pyproject.toml conftest.py README.md).
stage_kvmdev() {
  local stage=$1 p so ext; shift
  local paths=("$@")
  [ ${#paths[@]} -eq 0 ] && paths=(kvmdev tests examples cdefs pyproject.toml conftest.py README.md)
  ext=$("$HERE/build-ext.sh" --arch "$DEBARCH" 2> >(tee "$LOGS/build-ext.log" >&2) | tail -1) || die "build-ext.sh failed (log: $LOGS/build-ext.log)"
  [ -d "$ext" ] || die "build-ext.sh did not name its output dir"
  for p in "${paths[@]}"; do
    [ -e "$ROOT/$p" ] || continue
    tar -C "$ROOT" --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis -cf - "$p" | tar -C "$stage" -xf -
  done
  [ -d "$stage/kvmdev" ] || die "no kvmdev/ in $ROOT"
  find "$stage/kvmdev" -name '*.so' -delete          # the host's x86_64 builds
  cp "$ext"/_kvm_*.abi3.so "$stage/kvmdev/"
  check_objects "$stage"
  STAGED_EXT=$ext
  stage_pyc "$stage"
}

# run-guest.sh's options for copying a staged tree: its __pycache__ (stage_pyc) go in
STAGE_COPY_OPTS=(--no-default-excludes --exclude .git --exclude .pytest_cache --exclude .mypy_cache)

# stage_pyc DIR [PREFIX]: .pyc for DIR's Python files, compiled with the host's python3.11
# (the guests' CPython): the guests run with PYTHONDONTWRITEBYTECODE=1, so every process
# would compile kvmdev anew under TCG (seconds per VMM process start).  Unchecked-hash
# .pyc; PREFIX is the path the guest sees (default /work).
stage_pyc() {
  local dir=$1 prefix=${2:-/work} hostpy=/usr/bin/python3.11
  [ -x "$hostpy" ] || return 0
  "$hostpy" -m compileall -q --invalidation-mode unchecked-hash -s "$dir" -p "$prefix" "$dir" >/dev/null 2>&1 \
    || say "compileall of the staged tree reported errors (ignored)"
}

# stage_wheel STAGE WHEEL [PATH...]: kvmdev installed from WHEEL by unpacking it (a
# wheel is a zip laid out as site-packages) into STAGE/_wheel, and the project's PATHs
stage_wheel() {
  local stage=$1 wheel=$2 p; shift 2
  [ -f "$wheel" ] || die "no wheel $wheel"
  case $(basename "$wheel") in
    kvmdev-*-abi3-*_${WHEELPLAT##*_}.whl) ;;
    *) die "$(basename "$wheel") is not a kvmdev abi3 wheel for ${WHEELPLAT##*_}";;
  esac
  mkdir -p "$stage/_wheel"
  "$PYTHON" -m zipfile -e "$wheel" "$stage/_wheel"
  [ -f "$stage/_wheel/kvmdev/__init__.py" ] || die "$wheel has no kvmdev/"
  for p in "$@"; do
    [ -e "$ROOT/$p" ] || continue
    tar -C "$ROOT" --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis -cf - "$p" | tar -C "$stage" -xf -
  done
  check_objects "$stage"
  STAGED_EXT=$wheel
}

check_objects() {  # nothing but the guest's objects may go in
  local so
  while IFS= read -r -d '' so; do
    $TRIPLE-readelf -h "$so" 2>/dev/null | grep -qE "Machine:[[:space:]]+$ELFMACHINE" \
      || die "staged ${so#"$1"/} is not an $ELFMACHINE object"
  done < <(find "$1" -name '*.so' -print0)
}

# stage_pydeps STAGE "REQS": pure-Python (or the guest platform's) cp311 wheels from
# PyPI, cached under $CACHE/wheels, unpacked into STAGE/_pydeps; appends to the
# array GUEST_ENV the PYTHONPATH (and LD_LIBRARY_PATH) the guest needs.  "" or
# "none": nothing.
stage_pydeps() {
  local stage=$1 reqs=$2 key whl w
  [ -n "$reqs" ] && [ "$reqs" != none ] || return 0
  key=$(echo "recipe=2 $reqs $WHEELPLAT" | sha256sum | cut -c1-12)
  whl=$CACHE/wheels/$key
  if [ ! -f "$whl/.complete" ]; then
    say "downloading $WHEELPLAT/cp311 wheels for the guest: $reqs"
    w=$(mktemp -d "${TMPDIR:-/tmp}/kvmdev-wheels.XXXXXX")
    mkdir -p "$w/dl" "$w/site"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --disable-pip-version-check --only-binary=:all: \
      --platform $WHEELPLAT --python-version 3.11 --implementation cp --abi cp311 \
      -d "$w/dl" $reqs >&2 || { rm -rf "$w"; die "pip download $reqs failed"; }
    for f in "$w"/dl/*.whl; do "$PYTHON" -m zipfile -e "$f" "$w/site"; done
    # compiled wheels may need libgcc_s.so.1, which the guest's minimal userland
    # lacks: add the cross toolchain's (same gcc 12 build as bookworm's libgcc-s1)
    if find "$w/site" -name '*.so' -exec $TRIPLE-readelf -d {} + 2>/dev/null | grep -q 'libgcc_s\.so\.1'; then
      mkdir -p "$w/site/_lib"; cp /usr/$TRIPLE/lib/libgcc_s.so.1 "$w/site/_lib/"
    fi
    touch "$w/site/.complete"
    mkdir -p "$(dirname "$whl")"; rm -rf "$whl"; mv -T "$w/site" "$whl" 2>/dev/null || true; rm -rf "$w"
  fi
  mkdir -p "$stage/_pydeps"; cp -a "$whl"/. "$stage/_pydeps/"
  stage_pyc "$stage/_pydeps" /work/_pydeps
  local i
  for i in "${!GUEST_ENV[@]}"; do
    [[ ${GUEST_ENV[$i]} == PYTHONPATH=* ]] && GUEST_ENV[$i]="${GUEST_ENV[$i]}:/work/_pydeps"
  done
  [ -d "$stage/_pydeps/_lib" ] && GUEST_ENV+=(LD_LIBRARY_PATH=/work/_pydeps/_lib)
  return 0
}
