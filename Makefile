# continuonbrain workbook. Every target builds .venv from requirements.lock first when needed.
#   make playbook   run every playbook step on the local profile (outputs/<run_id>/)
#   make test       everything CI runs: generated code and notebooks in sync, docs (which executes every notebook), pytest
#   make nbtest     nbdev_test on every notebook (make docs runs them the same way)
#   make lab        JupyterLab on the project with the .venv kernel
#   make docs       the static docs site in _docs/
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
export PYTHONDONTWRITEBYTECODE := 1
# One JAX compilation cache for every process of a test run (notebooks, CLI subprocesses, both pytest workers): the same
# small models are compiled by dozens of processes. `make test` starts it empty. No size limit: with one, JAX locks the
# folder and lists all of it on every write (thousands of entries: slower than no cache). Unlocked, a reader that meets
# an entry still being written gets a warning and compiles (JAX catches the error).
JAX_CACHE := $(CURDIR)/.jax-cache
TEST_ENV := JAX_COMPILATION_CACHE_DIR=$(JAX_CACHE) JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

.PHONY: setup playbook test lab docs lint export readme clean-nbs check-sync check-clean nbtest pytest browser jemalloc lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: the workbook needs CPython 3.11" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Debian's packages: headless Chromium for the docs and page tests, and jemalloc, which the WaveCore training commands
# restart under (nbs/00_config.ipynb, "The allocator for training").
JEMALLOC := /usr/lib/$(shell uname -m)-linux-gnu/libjemalloc.so.2
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v chromium >/dev/null || { echo "chromium could not be installed" >&2; exit 1; }

jemalloc:
	@test -f $(JEMALLOC) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null; }
	@test -f $(JEMALLOC) || { echo "libjemalloc2 could not be installed ($(JEMALLOC) is missing)" >&2; exit 1; }

playbook: $(STAMP)
	$(BIN)/continuon playbook --profile local

# Regenerate continuonbrain/ and README.md from the notebooks.
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/python -m continuonbrain.rlds.schema --write
	$(BIN)/python -m continuonbrain.docsite --readme-only

clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean

check-sync: $(STAMP)
	$(BIN)/python scripts/check_unchanged.py --why "continuonbrain/ or README.md did not match the notebooks: run 'make export' and commit" \
		continuonbrain README.md -- $(MAKE) --no-print-directory export

check-clean: $(STAMP)
	$(BIN)/python scripts/check_unchanged.py --why "notebooks were not clean: run 'make clean-nbs' and commit" nbs -- $(BIN)/nbdev_clean

nbtest: $(STAMP) jemalloc
	$(TEST_ENV) $(BIN)/nbdev_test --n_workers 2 --timing

docs: $(STAMP) jemalloc
	$(TEST_ENV) $(BIN)/python -m continuonbrain.docsite --out _docs

lint: $(STAMP)
	$(BIN)/ruff check continuonbrain tests scripts

# Two workers (pytest-xdist); each test module runs whole in one of them, so its session fixtures are built once there.
# --durations: the slowest tests, printed by every run (CI must stay under 25 minutes on a fresh clone).
# (Not --dist loadgroup: with pytest 9, xdist 3.8's groups are ignored and a module's tests were split over both workers.)
PYTEST_WORKERS ?= 2
pytest: $(STAMP) browser jemalloc
	$(TEST_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=25

test: $(STAMP) browser jemalloc
	rm -rf $(JAX_CACHE)
	$(MAKE) --no-print-directory check-sync
	$(MAKE) --no-print-directory check-clean
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory pytest

lab: $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name continuonbrain --display-name "continuonbrain (.venv, Python 3.11)"
	$(BIN)/jupyter lab --notebook-dir=. $(ALLOW_ROOT)

lock:
	rm -rf /tmp/continuon-lock && $(PYTHON) -m venv /tmp/continuon-lock
	/tmp/continuon-lock/bin/pip install --quiet -r requirements.in
	/tmp/continuon-lock/bin/pip check
	{ echo "# Exact versions installed into .venv by make (pip install --no-deps -r requirements.lock)."; \
	  echo "# Regenerate with 'make lock' after editing requirements.in. Python 3.11, Linux x86_64/aarch64."; \
	  /tmp/continuon-lock/bin/pip freeze --all | grep -v '^pip=='; } > requirements.lock

clean:
	rm -rf _proc _docs .pytest_cache
