# Model Health Warehouse: set-up, main job, tests.
#   make demo   - create .venv if needed, then run the main job end to end on the embedded defaults
#   make test   - create .venv if needed, then run the test suite
#   make test-fast - the suite without the real-service tests (Spark, Superset, Airflow server, torchrun)
#                 and the other slow ones: the loop to run while changing code (README: Set-up)
# Everything else here is plumbing those two commands need.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# pip's configured find-links folder holds torch's CPU wheel on this machine kind; uv ignores pip's
# config, so we hand it the folder explicitly, and only where it exists (elsewhere torch comes from PyPI).
WHEELS  := $(shell pip config get global.find-links 2>/dev/null || echo /opt/wheels)
FL      := $(if $(wildcard $(WHEELS)/torch-*),--find-links $(WHEELS),)
UV      := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: setup demo test test-fast bench lock clean setup-bi lock-bi superset chromium

setup: $(BIN)/.installed

$(UV):
	$(PY) -m pip install --user --quiet "uv==0.13.9"

# The core lock is compiled on Linux x86-64 / CPython 3.11 with the torch line left out: torch is
# installed on its own so that its CPU wheel (here) or its CUDA wheels (on GPU machines) both resolve.
# --compile-bytecode (sync: the whole venv; install: what it installs): uv writes no .pyc by default, and where Python may
# not write them either (PYTHONDONTWRITEBYTECODE, a read-only venv) every process compiled every module
# it imported from source: 0.7 s of `mhw query`'s start-up, seconds for Airflow's (bench/RESULTS.md).
# editable_mode=compat: the repo is one path in a .pth; setuptools' default puts an import hook there that
# every Python process of the venv imports first (~25 ms: most of `python -c pass`). compileall: the
# repo's own modules, for the same reason as --compile-bytecode (~20 ms of `mhw query`).
$(BIN)/.installed: requirements/core.lock pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PY) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python --compile-bytecode requirements/core.lock
	$(UV) pip install --quiet --python $(BIN)/python --compile-bytecode $(FL) "torch==2.13.0"
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e . --config-settings editable_mode=compat
	$(BIN)/python -m compileall -q mhw model warehouse pipelines
	touch $@

# Seeded with the current lock, so adding a package moves no other pin (uv prefers the output file's versions).
lock: | $(UV)
	cp requirements/core.lock requirements/core.lock.tmp
	$(UV) pip compile --quiet --python-version 3.11 $(FL) requirements/core.in -o requirements/core.lock.tmp
	grep -v '^torch==' requirements/core.lock.tmp > requirements/core.lock && rm requirements/core.lock.tmp

demo: setup setup-bi
	$(BIN)/python -m pipelines.demo

test: setup setup-bi
	$(BIN)/python -m pytest -q --durations=25

# The markers are registered in pyproject.toml ([tool.pytest.ini_options]); tests/ marks by module.
# -n auto: one pytest-xdist worker per core (the fast tests share nothing but the venv).
FAST := not spark and not superset and not airflow_server and not ddp and not slow

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto -m "$(FAST)"

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
	$(UV) pip sync --quiet --python $(BI_BIN)/python --compile-bytecode requirements/bi.lock
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
