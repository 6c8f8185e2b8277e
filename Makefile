# kvmdev developer targets.  `make example` and `make test` do all set-up on a fresh clone.
# Everything runs in a project virtual environment (.venv), created with whichever
# `python3` is first in PATH (or PYTHON=...); nothing is installed into that interpreter,
# so a PEP 668 distribution Python works as well as a pyenv or conda one.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# the stamp lives in the venv: it follows the interpreter it installed into
STAMP := $(VENV)/.kvmdev-install.stamp
# the tools/guests scripts take the host interpreter (cffi, pip download) from PYTHON
GUESTS := PYTHON=$(abspath $(VPY))

.PHONY: install venv test test-guarded example bench bench-arm64 test-arm64 test-arm64-guarded test-ppc64 test-vmm docs fuzz fuzz-api fuzz-chaos dist test-wheel test-arm64-wheel clean distclean

# a venv whose interpreter is gone (a removed pyenv version) is made anew
ifneq ($(shell $(VPY) -c 'import sys' 2>/dev/null && echo ok),ok)
$(STAMP): venv
endif

venv:
	@if ! $(VPY) -c 'import sys' 2>/dev/null; then \
	  rm -rf $(VENV); \
	  echo "creating $(VENV) with $$(command -v $(PYTHON) || echo $(PYTHON))"; \
	  $(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed: install your distribution's venv" \
	    "package (Debian/Ubuntu: python3-venv) or set PYTHON=/path/to/python3.10+" >&2; rm -rf $(VENV); exit 1; }; \
	fi

# kvmdev/_version.py: the editable install writes the version into its metadata
$(STAMP): pyproject.toml setup.py kvmdev/_version.py $(wildcard cdefs/*.h cdefs/*.c cdefs/*.ioctls cdefs/arch/* cdefs/build.py)
	@$(MAKE) --no-print-directory venv
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q -rs tests

# the whole suite in the buffer guard mode (kvmdev.backends.guard)
test-guarded: $(STAMP)
	KVMDEV_GUARD_BUFFERS=1 $(VPY) -m pytest -q -rs tests

example: $(STAMP)
	$(VPY) examples/hello.py

# text in bench/out/bench.txt (and on stdout), figures as JSON and the scale plot
# (bench/out/scale.png, with the optional `bench` extra: matplotlib) beside it
BENCH_OUT := bench/out
bench: SHELL := /bin/bash
bench: $(STAMP)
	@mkdir -p $(BENCH_OUT)
	@$(VPY) -c 'import matplotlib' 2>/dev/null || $(VPY) -m pip install -q --disable-pip-version-check 'matplotlib>=3.5' \
	  || echo "make bench: matplotlib (the bench extra) did not install: no plot"
	set -o pipefail; { \
	  $(VPY) bench/bench_run.py --json $(BENCH_OUT)/run.json && \
	  $(VPY) bench/bench_attr.py --json $(BENCH_OUT)/attr.json && \
	  $(VPY) bench/bench_gicstate.py --backend mock --vcpus 64 --irqs 992 && \
	  $(VPY) bench/bench_gicstate.py --backend mock --vcpus 512 --irqs 992 --repeats 3 && \
	  $(VPY) bench/bench_scale.py --json $(BENCH_OUT)/scale.json --png $(BENCH_OUT)/scale.png && \
	  $(GUESTS) bash tools/guests/bench-arm64.sh; } 2>&1 | tee $(BENCH_OUT)/bench.txt

# 100,000 operations per device type on each mock (arm64: each kernel and host GIC; powerpc:
# book3s and e500), 10,000 on the real x86 kernel (per device, and of the VM/vCPU ioctls:
# KVM_IOCTLS) and per device in each real arm64 guest and the ppc64el guest, differential
# against the mock there; then fuzz-chaos
fuzz: $(STAMP)
	for a in x86_64 s390; do $(VPY) -m kvmdev.fuzz --backend mock --arch $$a --ops 100000 || exit 1; done
	for p in book3s e500; do $(VPY) -m kvmdev.fuzz --backend mock --arch powerpc --ppc-platform $$p --ops 100000 || exit 1; done
	for k in 6.12 6.1 6.18 7.3; do for g in 3 2 5; do \
	  $(VPY) -m kvmdev.fuzz --backend mock --arch arm64 --kernel $$k --gic $$g --ops 100000 || exit 1; done; done
	$(VPY) -m kvmdev.fuzz --backend real --ops 10000 --differential
	$(MAKE) --no-print-directory fuzz-api
	$(MAKE) --no-print-directory fuzz-chaos
	$(GUESTS) bash tools/guests/fuzz-guests.sh --ops 10000 --differential
	$(GUESTS) bash tools/guests/fuzz-guests.sh --arch ppc64el --ops 10000 --differential

# every public method and settable attribute with hypothesis-drawn arguments (kvmdev.fuzz_api):
# 8,000 calls on each mock (arm64 with a working VGIC v3 + ITS and the snapshot calls) and
# 5,000 on the real x86 kernel; then with close() racing each call from another thread (600 on
# the arm64 mock, 800 on the real x86 kernel); about 8 minutes
fuzz-api: $(STAMP)
	for a in arm64 x86_64 s390 powerpc; do $(VPY) -m kvmdev.fuzz_api --arch $$a --examples 8000 --seed 11 || exit 1; done
	$(VPY) -m kvmdev.fuzz_api --arch arm64 --kernel 7.3 --examples 4000 --seed 12
	if [ "$$(uname -m)" = x86_64 ] && [ -w /dev/kvm ]; then $(VPY) -m kvmdev.fuzz_api --backend real --examples 5000 --seed 13; fi
	$(VPY) -m kvmdev.fuzz_api --arch arm64 --examples 600 --seed 14 --race-close
	if [ "$$(uname -m)" = x86_64 ] && [ -w /dev/kvm ]; then $(VPY) -m kvmdev.fuzz_api --backend real --examples 800 --seed 15 --race-close; fi

# signals and forks at random points (kvmdev.chaos), about 2 minutes: 3,000 operations on the
# mocks each with a SIGALRM whose handler raises KeyboardInterrupt (~45 s), 300 forks with three
# threads running kvmdev calls on the arm64 mock (~40 s) and, on an x86 host, the real kernel (~15 s)
fuzz-chaos: $(STAMP)
	$(VPY) -m kvmdev.chaos signals --rounds 3000
	$(VPY) -m kvmdev.chaos forks --rounds 300
	if [ "$$(uname -m)" = x86_64 ] && [ -w /dev/kvm ]; then $(VPY) -m kvmdev.chaos forks --rounds 300 --arch x86_64 --backend real; fi

docs: $(STAMP)
	$(VPY) tools/api_doc.py

# the release files in dist/: the sdist, and cp310-abi3 manylinux wheels for x86_64 and
# aarch64 (built from the sdist; aarch64 with the arm64 guests' cross toolchain)
DIST_STAMP := $(VENV)/.kvmdev-dist.stamp
$(DIST_STAMP): $(STAMP)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test,dist]'
	touch $(DIST_STAMP)

dist: $(DIST_STAMP)
	PYTHON=$(abspath $(VPY)) bash tools/build-dist.sh

# the suite against the installed x86_64 wheel, in a fresh venv per CPython 3.10-3.13
# (pyenv's); TEST_WHEEL_ARGS=--smoke: the full suite on the first, a smoke subset on the rest
test-wheel: dist
	bash tools/test-wheel.sh $(TEST_WHEEL_ARGS)

# the arm64-marked tests in the real arm64 guests from the aarch64 wheel (6.12, GIC v3;
# ARM64_COMBOS="6.12/3 6.1/2" for more)
ARM64_WHEEL_COMBOS ?= 6.12/3
test-arm64-wheel: dist
	$(GUESTS) bash tools/guests/test-guests.sh --jobs 1 --wheel "$$(ls dist/kvmdev-*-cp310-abi3-*manylinux*_aarch64.whl | tail -1)" \
	  $(foreach c,$(ARM64_WHEEL_COMBOS),--combo $(c))

test-arm64: $(STAMP)
	$(GUESTS) bash tools/guests/test-guests.sh

test-arm64-guarded: $(STAMP)
	KVMDEV_GUARD_BUFFERS=1 $(GUESTS) bash tools/guests/test-guests.sh

# examples/vmm boots Linux nested in the real arm64 guests (6.12/6.1 x GIC 3/2), snapshots
# it live and resumes it in a new process, twice; one summary line per combination
test-vmm: $(STAMP)
	$(GUESTS) bash tools/guests/test-vmm.sh

# the powerpc-marked tests in Debian's ppc64el kernel (KVM-HV on an emulated PowerNV POWER8)
test-ppc64: $(STAMP)
	$(GUESTS) bash tools/guests/test-guests.sh --arch ppc64el

clean:
	rm -rf build dist *.egg-info kvmdev/_kvm_*.so kvmdev/_kvm_*.c $(STAMP) $(DIST_STAMP) .install.stamp .pytest_cache

# clean, and the virtual environment too
distclean: clean
	rm -rf $(VENV)
