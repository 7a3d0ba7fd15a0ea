# Model Health Warehouse: set-up, main job, tests.
#   make demo   - create .venv if needed, then run the main job end to end on the embedded defaults
#   make test   - create .venv if needed, then run the test suite
# Everything else here is plumbing those two commands need.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# pip's configured find-links folder holds torch's CPU wheel on this machine kind; uv ignores pip's
# config, so we hand it the folder explicitly, and only where it exists (elsewhere torch comes from PyPI).
WHEELS  := $(shell pip config get global.find-links 2>/dev/null || echo /opt/wheels)
FL      := $(if $(wildcard $(WHEELS)/torch-*),--find-links $(WHEELS),)
UV      := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: setup demo test bench lock clean

setup: $(BIN)/.installed

$(UV):
	$(PY) -m pip install --user --quiet "uv==0.13.9"

# The core lock is compiled on Linux x86-64 / CPython 3.11 with the torch line left out: torch is
# installed on its own so that its CPU wheel (here) or its CUDA wheels (on GPU machines) both resolve.
$(BIN)/.installed: requirements/core.lock pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PY) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python requirements/core.lock
	$(UV) pip install --quiet --python $(BIN)/python $(FL) "torch==2.13.0"
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

lock: | $(UV)
	$(UV) pip compile --quiet --python-version 3.11 $(FL) requirements/core.in -o requirements/core.lock.tmp
	grep -v '^torch==' requirements/core.lock.tmp > requirements/core.lock && rm requirements/core.lock.tmp

demo: setup
	$(BIN)/python -m pipelines.demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .venv-bi .mhw
