# kvmdev developer targets.  `make test` and `make example` do all set-up on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .install.stamp

.PHONY: install test example bench bench-arm64 test-arm64 docs clean

$(STAMP): pyproject.toml setup.py $(wildcard cdefs/*.h cdefs/*.c cdefs/*.ioctls cdefs/arch/* cdefs/build.py)
	$(PIP) install -q --root-user-action=ignore -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest -q -rs tests

example: $(STAMP)
	$(PYTHON) examples/hello.py

bench: $(STAMP)
	$(PYTHON) bench/bench_attr.py
	$(PYTHON) bench/bench_gicstate.py --backend mock --vcpus 64 --irqs 992
	bash tools/arm64/bench-arm64.sh

docs: $(STAMP)
	$(PYTHON) tools/api_doc.py

test-arm64: $(STAMP)
	bash tools/arm64/test-arm64.sh

clean:
	rm -rf build *.egg-info kvmdev/_kvm_*.so kvmdev/_kvm_*.c $(STAMP) .pytest_cache
