# Developer entry points.  On a fresh Debian/Ubuntu machine, from the repo root:
#   make test    install what is missing, then run the test suite
#   make run     install, create the dev tokens, serve config/dev.toml
#   make bench   install (with the bench extra), then run the benchmarks
# Installing is idempotent and stamped: the second run only checks timestamps.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
CONFIG ?= config/dev.toml
PYTEST_ARGS ?=
BENCH_ARGS ?=

VENV := .venv
STATE := state
# softhsm2 + libnss3 (softoken) are the dev/test tokens; libnss3-tools has
# certutil; opensc has pkcs11-tool for poking at tokens by hand; chromium
# renders /docs headless in the tests; wrk is the benchmarks' HTTPS load generator
# (its smoke test runs in make test); e2fsprogs has chattr (make stress).
APT_PACKAGES := softhsm2 libnss3 libnss3-tools opensc chromium wrk e2fsprogs

SYSTEM_STAMP := $(STATE)/.stamp-system-packages
VENV_PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.stamp-pip-test
BENCH_STAMP := $(VENV)/.stamp-pip-bench

.PHONY: help install test run tokens bench stress clean distclean
# A failed recipe must not leave a stamp that claims success.
.DELETE_ON_ERROR:

help:
	@echo "make test   [PYTEST_ARGS=...]  install what is missing, run the tests"
	@echo "make run    [CONFIG=...]       install, create dev tokens, serve (default $(CONFIG))"
	@echo "make tokens [CONFIG=...]       install, create dev tokens only"
	@echo "make bench  [BENCH_ARGS=...]   install with the bench extra, run python -m bench"
	@echo "make stress [PYTEST_ARGS=...]  the reliability suite at full size (tests/stress; make test runs it reduced)"
	@echo "make install                   only install (apt packages, $(VENV), pip -e)"
	@echo "make clean | distclean         remove caches | also $(VENV) and $(STATE) (dev tokens!)"

install: $(SYSTEM_STAMP) $(PIP_STAMP)

# apt packages, only those missing; apt-get update only if something is.
# Re-checked when this Makefile changes (the package list lives here).
$(SYSTEM_STAMP): Makefile
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  status="$$(dpkg -s "$$pkg" 2>/dev/null | sed -n 's/^Status: //p' || true)"; \
	  [ "$$status" = "install ok installed" ] || missing="$$missing $$pkg"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3 python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "missing:$$missing; no apt-get here: install them, then touch $@" >&2; exit 1; \
	  fi; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null; then sudo="sudo"; \
	  else echo "missing:$$missing; run as root or install sudo" >&2; exit 1; fi; \
	  echo "apt-get install:$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(STATE)
	@touch $@

# Order-only: a re-check of the apt packages must not recreate the venv.
$(VENV_PY): | $(SYSTEM_STAMP)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "Python >= 3.11 is required ($(PYTHON) is $$($(PYTHON) -V 2>&1)); try PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(PIP_STAMP): pyproject.toml | $(VENV_PY)
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

$(BENCH_STAMP): pyproject.toml | $(VENV_PY)
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	@touch $@

test: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

tokens: install
	$(VENV)/bin/gateway tokens init --config $(CONFIG)

run: tokens
	$(VENV)/bin/gateway serve --config $(CONFIG)

bench: install $(BENCH_STAMP)
	@if [ ! -f bench/__main__.py ]; then echo "no bench/ package (bench/__main__.py) yet" >&2; exit 1; fi
	$(VENV_PY) -m bench $(BENCH_ARGS)

# The reliability suite (tests/stress, docs/reliability.md) at full size; make test runs it reduced.
stress: install
	GATEWAY_STRESS=full $(VENV)/bin/pytest -q tests/stress $(PYTEST_ARGS)

clean:
	rm -rf .pytest_cache build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(STATE)
