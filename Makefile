# GeoZarr pipeline: `make demo` runs the chain on embedded defaults, `make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python
UV := $(PYTHON) -m uv
# Debian packages of the real services the tests start (and the browser for the map test).
APT_PACKAGES := rabbitmq-server postgresql postgresql-15-postgis-3 chromium chromium-driver fonts-liberation
PYTEST_ARGS ?=

.PHONY: help setup setup-system setup-python lint format test test-fast demo clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F ':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup-system: ## Install the Debian packages of the local services (needs root)
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
		echo "stopping the system-wide RabbitMQ and PostgreSQL the install started (tests run their own)"; \
		service rabbitmq-server stop >/dev/null 2>&1 || true; \
		service postgresql stop >/dev/null 2>&1 || true; \
		epmd -kill >/dev/null 2>&1 || true; \
	fi

setup-python: ## Install uv and the locked Python environment
	@$(PYTHON) -m pip install -q uv==0.13.9
	$(UV) sync --frozen --all-packages

setup: setup-system setup-python ## Everything a fresh machine needs

lint: ## ruff (lint + format check) and mypy strict
	$(UV) run ruff check shared local functions tests
	$(UV) run ruff format --check shared local functions tests
	$(UV) run mypy shared/src local/src functions

format: ## Apply ruff fixes and formatting
	$(UV) run ruff check --fix shared local functions tests
	$(UV) run ruff format shared local functions tests

test: setup lint ## Set up, lint and run the whole test suite
	$(UV) run pytest $(PYTEST_ARGS)

test-fast: setup-python ## Every test that needs no service or process, in-process
	$(UV) run pytest -m "not service" -q $(PYTEST_ARGS)

demo: setup ## Synthesize a sample, run the chain on the local stack, print the result
	$(UV) run geozarr-pipeline demo $(DEMO_ARGS)

clean: ## Remove local data and caches
	rm -rf data artifacts .pytest_cache .mypy_cache .ruff_cache
