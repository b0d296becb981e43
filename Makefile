# `make demo` and `make test` work on a fresh machine: both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test-deps demo test test-pi bench clean

setup: $(STAMP)

# torch is installed first and pinned: the CPU wheel 2.13.0 is on this disk;
# an unpinned torch would make pip download a CUDA build.
# setuptools tells every editable install of a package-dir layout like ours that it is one
# ("Editable installation."): informational, no configuration turns it off, so it is filtered.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e '.[all,dev]' torch==2.13.0
	touch $(STAMP)

demo: setup
	$(BIN)/edgeport demo

# The SSH tests start a real OpenSSH server on 127.0.0.1 (Debian's openssh-server).
test-deps:
	@[ -x /usr/sbin/sshd ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; } || \
	  echo "openssh-server is not installed (needs root): the SSH tests will be skipped"

test: setup test-deps
	$(BIN)/python -m pytest -q -m "not pi_emulated" --durations=12

# An emulated Raspberry Pi (aarch64 Debian under qemu-user, ~5 min to build the first time, then
# cached in ~/.cache/edgeport/emulated-pi) reached over SSH; needs root.
test-pi: setup test-deps
	bash devices/emulated_pi/pi.sh build
	EDGEPORT_REQUIRE_PI=1 $(BIN)/python -m pytest -q -m pi_emulated

bench: setup
	$(BIN)/python benchmarks/openvino_vs_benchmark_app.py
	$(BIN)/python benchmarks/real_models.py

clean:
	rm -rf $(VENV) runs .pytest_cache
