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

.PHONY: setup demo test bench lock clean setup-bi lock-bi superset chromium

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

demo: setup setup-bi
	$(BIN)/python -m pipelines.demo

test: setup setup-bi
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .venv-bi .mhw

# --- Dashboards (Superset) -------------------------------------------------------------------------
# Superset 6.1 needs SQLAlchemy < 2 (the core venv has Airflow 3, SQLAlchemy 2), so it gets its own
# venv, .venv-bi, from requirements/bi.lock; the tests drive it from the core venv by subprocess.
#   make superset  - start Superset on 127.0.0.1:8088 with the dashboards of dashboards/assets
BI_VENV := .venv-bi
BI_BIN  := $(BI_VENV)/bin

setup-bi: $(BI_BIN)/.installed chromium

$(BI_BIN)/.installed: requirements/bi.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PY) $(BI_VENV)
	$(UV) pip sync --quiet --python $(BI_BIN)/python requirements/bi.lock
	touch $@

# Debian's headless chromium for Playwright (never `playwright install`, which downloads a browser).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install -y chromium chromium-driver'" >&2; fi; \
	fi

lock-bi: | $(UV)
	$(UV) pip compile --quiet --python-version 3.11 requirements/bi.in -o requirements/bi.lock

superset: setup-bi
	$(BI_BIN)/python -m dashboards.serve
