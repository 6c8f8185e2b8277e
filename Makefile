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

.PHONY: install venv test test-guarded example bench bench-arm64 test-arm64 test-arm64-guarded test-ppc64 docs fuzz clean distclean

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

$(STAMP): pyproject.toml setup.py $(wildcard cdefs/*.h cdefs/*.c cdefs/*.ioctls cdefs/arch/* cdefs/build.py)
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

bench: $(STAMP)
	$(VPY) bench/bench_attr.py
	$(VPY) bench/bench_gicstate.py --backend mock --vcpus 64 --irqs 992
	$(GUESTS) bash tools/guests/bench-arm64.sh

# 100,000 operations per device type on each mock (arm64: each kernel and host GIC; powerpc:
# book3s and e500), 10,000 on the real x86 kernel and per device in each real arm64 guest and
# the ppc64el guest, differential against the mock there
fuzz: $(STAMP)
	for a in x86_64 s390; do $(VPY) -m kvmdev.fuzz --backend mock --arch $$a --ops 100000 || exit 1; done
	for p in book3s e500; do $(VPY) -m kvmdev.fuzz --backend mock --arch powerpc --ppc-platform $$p --ops 100000 || exit 1; done
	for k in 6.12 6.1 6.18 7.3; do for g in 3 2 5; do \
	  $(VPY) -m kvmdev.fuzz --backend mock --arch arm64 --kernel $$k --gic $$g --ops 100000 || exit 1; done; done
	$(VPY) -m kvmdev.fuzz --backend real --ops 10000 --differential
	$(GUESTS) bash tools/guests/fuzz-guests.sh --ops 10000 --differential
	$(GUESTS) bash tools/guests/fuzz-guests.sh --arch ppc64el --ops 10000 --differential

docs: $(STAMP)
	$(VPY) tools/api_doc.py

test-arm64: $(STAMP)
	$(GUESTS) bash tools/guests/test-guests.sh

test-arm64-guarded: $(STAMP)
	KVMDEV_GUARD_BUFFERS=1 $(GUESTS) bash tools/guests/test-guests.sh

# the powerpc-marked tests in Debian's ppc64el kernel (KVM-HV on an emulated PowerNV POWER8)
test-ppc64: $(STAMP)
	$(GUESTS) bash tools/guests/test-guests.sh --arch ppc64el

clean:
	rm -rf build *.egg-info kvmdev/_kvm_*.so kvmdev/_kvm_*.c $(STAMP) .install.stamp .pytest_cache

# clean, and the virtual environment too
distclean: clean
	rm -rf $(VENV)
