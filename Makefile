# The newcomer's commands:  `make demo` (the fleet at work) and `make test` (everything CI runs).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_ARGS ?=
## Test processes (pytest-xdist); timing-sensitive scenarios share one of them (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST  := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

.PHONY: install tools services lint typecheck test test-fast demo schemas lock clean bench

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

services:
	bash scripts/ensure-services.sh

## Debian tools some tests use (amqp-publish, promtool); installed when missing.
tools:
	bash scripts/ensure-tools.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## Everything CI runs: set-up, services, linters, type checks, the whole test suite.
test: install tools services lint typecheck
	$(PYTEST)

## The fast tier: skips scenarios marked slow.
test-fast: install tools services lint typecheck
	$(PYTEST) -m "not slow"

## The fleet at work on a realistic workload, checked against the database (fleet demo --help).
demo: install services
	$(BIN)/fleet demo $(DEMO_ARGS)

## Benchmarks (never part of `make test`, ~9 min): the fleet against its baselines in one run
## (throughput ratios, message age), publisher throughput, envelope sealing and opening.
## BENCH_ARGS="--park 50000" adds worker memory with parked retries; "--quick" is a smoke run.
## Results go to bench/results/*.json; bench/README.md explains them.
BENCH_ARGS ?=
bench: install services
	$(BIN)/python -m bench.ratios $(BENCH_ARGS)
	$(BIN)/python -m bench.publish
	$(BIN)/python -m bench.envelope

## Regenerate the committed JSON Schemas after changing a contract.
schemas: install
	$(BIN)/fleet schema export docs/schemas

## Re-pin dependencies after editing pyproject.toml.
lock: install
	$(BIN)/pip-compile --quiet --allow-unsafe --extra dev --generate-hashes --strip-extras -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
