# kvmdev developer targets.  `make test` and `make example` do all set-up on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .install.stamp

.PHONY: install test test-guarded example bench bench-arm64 test-arm64 test-arm64-guarded test-ppc64 docs fuzz clean

$(STAMP): pyproject.toml setup.py $(wildcard cdefs/*.h cdefs/*.c cdefs/*.ioctls cdefs/arch/* cdefs/build.py)
	$(PIP) install -q --root-user-action=ignore -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest -q -rs tests

# the whole suite in the buffer guard mode (kvmdev.backends.guard)
test-guarded: $(STAMP)
	KVMDEV_GUARD_BUFFERS=1 $(PYTHON) -m pytest -q -rs tests

example: $(STAMP)
	$(PYTHON) examples/hello.py

bench: $(STAMP)
	$(PYTHON) bench/bench_attr.py
	$(PYTHON) bench/bench_gicstate.py --backend mock --vcpus 64 --irqs 992
	bash tools/guests/bench-arm64.sh

# 100,000 operations per device type on each mock (arm64: each kernel and host GIC; powerpc:
# book3s and e500), 10,000 on the real x86 kernel and per device in each real arm64 guest and
# the ppc64el guest, differential against the mock there
fuzz: $(STAMP)
	for a in x86_64 s390; do $(PYTHON) -m kvmdev.fuzz --backend mock --arch $$a --ops 100000 || exit 1; done
	for p in book3s e500; do $(PYTHON) -m kvmdev.fuzz --backend mock --arch powerpc --ppc-platform $$p --ops 100000 || exit 1; done
	for k in 6.12 6.1; do for g in 3 2 5; do \
	  $(PYTHON) -m kvmdev.fuzz --backend mock --arch arm64 --kernel $$k --gic $$g --ops 100000 || exit 1; done; done
	$(PYTHON) -m kvmdev.fuzz --backend real --ops 10000 --differential
	bash tools/guests/fuzz-guests.sh --ops 10000 --differential
	bash tools/guests/fuzz-guests.sh --arch ppc64el --ops 10000 --differential

docs: $(STAMP)
	$(PYTHON) tools/api_doc.py

test-arm64: $(STAMP)
	bash tools/guests/test-guests.sh

test-arm64-guarded: $(STAMP)
	KVMDEV_GUARD_BUFFERS=1 bash tools/guests/test-guests.sh

# the powerpc-marked tests in Debian's ppc64el kernel (KVM-HV on an emulated PowerNV POWER8)
test-ppc64: $(STAMP)
	bash tools/guests/test-guests.sh --arch ppc64el

clean:
	rm -rf build *.egg-info kvmdev/_kvm_*.so kvmdev/_kvm_*.c $(STAMP) .pytest_cache
