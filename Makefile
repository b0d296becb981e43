# `make demo` and `make test` work on a fresh machine: both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is installed first and pinned: the CPU wheel 2.13.0 is on this disk;
# an unpinned torch would make pip download a CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all,dev]' torch==2.13.0
	touch $(STAMP)

demo: setup
	$(BIN)/edgeport demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/openvino_vs_benchmark_app.py

clean:
	rm -rf $(VENV) runs .pytest_cache
