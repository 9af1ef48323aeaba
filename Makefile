# Two commands matter: `make demo` (the stack, seeded, with the Airflow UI) and `make test`.
# Everything runs from .venv, created from requirements*.txt pinned by constraints.txt.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := PYTHONPATH=plugins:. $(BIN)/python
STATE ?= .local
DEMO_CUSTOMERS ?= 2000
# `make demo EXECUTOR=celery WORKERS=2`: the Docker route's CeleryExecutor, with Redis and N workers.
EXECUTOR ?= local
WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv demo down status reset test test-fast lint format check lock bench

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# --compile-bytecode: the .pyc files that pip and the official Airflow image write (uv does not
# by default); without them every DAG-file parse compiles the Airflow modules it imports.
$(BIN)/.installed: requirements.txt requirements-dev.txt constraints.txt
	@command -v uv >/dev/null || $(PYTHON) -m pip install --quiet uv
	@test -x $(BIN)/python || uv venv --quiet --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install --quiet --compile-bytecode -r requirements-dev.txt -c constraints.txt
	@touch $@

venv: $(BIN)/.installed ## create/update the virtualenv (uv, pinned by constraints.txt)

demo: venv ## start PostgreSQL + S3 + Airflow on 127.0.0.1, seeded; prints the UI URL and login (EXECUTOR=celery WORKERS=2)
	@bash tools/system_packages.sh postgresql $(if $(filter celery,$(EXECUTOR)),redis)
	$(PY) -m tools.devstack up --state $(STATE) --customers $(DEMO_CUSTOMERS) --executor $(EXECUTOR) --workers $(WORKERS)

down: venv ## stop everything `make demo` started (by recorded PID)
	$(PY) -m tools.devstack down --state $(STATE)

reset: venv ## stop the demo, delete its data (database, S3 state, Airflow home) and start it again, freshly seeded
	$(PY) -m tools.devstack reset --state $(STATE)
	$(PY) -m tools.devstack up --state $(STATE) --customers $(DEMO_CUSTOMERS) --executor $(EXECUTOR) --workers $(WORKERS)

status: venv ## what is running
	$(PY) -m tools.devstack status --state $(STATE)

test: venv ## the whole test suite (starts and stops its own PostgreSQL and S3 servers)
	@bash tools/system_packages.sh postgresql chromium redis
	$(PY) -m pytest

test-fast: venv ## the tests without the full-stack smoke test and the bench
	@bash tools/system_packages.sh postgresql chromium
	$(PY) -m pytest -m "not stack and not bench"

bench: venv ## benchmark: limit vs pandas vs engine at 100k and 1M rows, parse times, full run
	@bash tools/system_packages.sh postgresql
	$(PY) -m bench.run

lint: venv ## ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

check: lint test ## lint + tests

lock: ## re-resolve constraints.txt from requirements*.txt
	uv pip compile --python $(PYTHON) --no-header requirements-dev.txt -o constraints.txt
