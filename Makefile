# The README's two commands: `make run` starts the whole stack locally, `make test` passes the suite.
# Both set everything up first on a fresh machine (venv, pinned requirements, Azurite from npm).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
# checkov pins its own dependency tree, so it lives in a venv of its own (infra tests call it).
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed
# The cold-start benchmark's peer app (msgraph-sdk) gets a venv of its own too.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
# Debian's chromium for the browser test (Playwright drives it through executable_path; no download).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo )

.PHONY: setup run test lint bench clean test-live test-live-clean

setup: $(PY_STAMP) $(NPM_STAMP) $(INFRA_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt local/emulator/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(INFRA_STAMP): infra/requirements.txt
	test -x $(INFRA_VENV)/bin/python || $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r infra/requirements.txt
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: setup
	$(PY) -m local.run

# Style, the layer contract (import-linter, pyproject.toml) and strict types on the pure core.
lint: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy

test: lint $(CHROMIUM)
	$(PY) -m pytest

$(CHROMIUM):
	$(SUDO)apt-get update
	$(SUDO)apt-get install -y --no-install-recommends chromium

# The go-live check against a deployment and a test user of a real tenant (docs/go-live.md). It reads
# LIVE_SERVICE_URL, LIVE_CRM_SHARED_SECRET, LIVE_CLIENT_ID, LIVE_TEST_USER, optional LIVE_TENANT (and
# LIVE_CRM_CALLBACK_SECRET + LIVE_CALLBACK_LISTEN to receive callbacks). make test runs the same suite
# against the local stack (tests/live/test_live_local.py).
test-live: setup
	$(PY) -m tests.live

# Remove what a crashed or killed live check left: Remove sync for its CRM user, then every event tagged
# [live-check] in the test user's calendar.
test-live-clean: setup
	$(PY) -m tests.live clean

$(BENCH_STAMP): bench/requirements-peer.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements-peer.txt
	touch $@

bench: setup $(BENCH_STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(INFRA_VENV) $(BENCH_VENV) node_modules .local .pytest_cache .ruff_cache .hypothesis
