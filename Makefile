# Ballast — the two commands a newcomer needs: `make up` and `make test`.
# Everything else (the virtualenv, the native build, Debian packages) is set up on demand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NATIVE_SOURCES := $(wildcard native/*.pyx native/*.pxd native/*.c native/*.h)

.PHONY: up test lint typecheck pytest bench debian-packages native clean

up: $(STAMP)
	$(VENV)/bin/ballast up $(ARGS)

test: debian-packages $(STAMP) native lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[test,bench]' --no-build-isolation
	$(PY) benchmarks/erasure.py
	$(PY) benchmarks/checksums.py
	$(PY) benchmarks/transport.py
	$(PY) benchmarks/silo.py
	$(PY) benchmarks/kv.py
	$(PY) benchmarks/s3.py
	$(PY) benchmarks/repair.py

debian-packages:
	@bash .ci/debian-packages

# The native extension is rebuilt in place whenever its sources change.
native: $(STAMP) native/.built
native/.built: $(NATIVE_SOURCES) setup.py
	$(PY) setup.py --quiet build_ext --inplace
	@touch $@

$(STAMP): pyproject.toml setup.py
	@bash .ci/debian-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip setuptools wheel 'Cython>=3.0'
	$(VENV)/bin/pip install --quiet --no-build-isolation -e '.[test]'
	@touch native/.built
	@touch $@

clean:
	rm -rf build native/*.so native/_reed_solomon.c native/_checksums.c native/_xsalsa20.c native/.built $(VENV)
