# Key vault: build entry points.
#
#   make run    install what is missing, provision the token, serve on 127.0.0.1:50051
#   make test   install what is missing, run the test suite against a real SoftHSM2 token
#               (the store suites run on SQLite and on a throwaway PostgreSQL cluster)
#
# Every target installs its own prerequisites (SoftHSM2 from Debian's packages, a virtual
# environment in .venv, the generated gRPC code in vault/gen), so both work on a fresh machine.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV := .venv
LOCAL_CONFIG := vault.toml
VENV_PY := $(VENV)/bin/python
VAULTCTL := $(VENV)/bin/vaultctl
# Stamps record that a step ran against the current inputs, so make repeats it only when
# pyproject.toml (dependencies) or a .proto file changes.
VENV_STAMP = $(VENV)/.installed-$(PYTHON_VERSION)
PROTO_STAMP := vault/gen/.stamp
# Directories too: adding or deleting a .proto changes its directory's modification time.
PROTO_FILES := $(shell find proto -mindepth 1 \( -name '*.proto' -o -type d \) 2>/dev/null)

# The interpreter that creates the virtual environment: PYTHON= when given, else the newest
# supported one that runs (a pyenv shim of a version not selected is found on PATH but fails
# to run, so each is tried, not merely looked up).
SUPPORTED_PYTHON := (3, 11) <= sys.version_info[:2] <= (3, 13)
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for candidate in $(PYTHON_CANDIDATES); do \
	if "$$candidate" -c 'import sys; sys.exit(0 if $(SUPPORTED_PYTHON) else 1)' >/dev/null 2>&1; \
	then command -v "$$candidate"; break; fi; done)
endif
# major.minor of PYTHON; part of the venv stamp's name, so another PYTHON= rebuilds .venv.
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# Root (as in CI) installs directly; anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

PYTEST_ARGS ?=
# Test processes (pytest-xdist): most of a test's time is spent waiting for servers and the
# token, not computing, so more processes than cores shortens the run. Each process has its own
# token and session server; a test file stays in one process (its module fixtures are built once).
TEST_WORKERS ?= 4
BENCH_ARGS ?=

.PHONY: help setup softhsm postgresql check-python venv proto run token-init test bench lint clean \
	distclean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 20

setup: softhsm venv proto ## Install everything run and test need (idempotent)

softhsm: ## Install SoftHSM2 from Debian's packages unless softhsm2-util is present
	@if command -v softhsm2-util >/dev/null 2>&1; then \
		echo "softhsm2: $$(command -v softhsm2-util)"; \
	else \
		echo "softhsm2-util not found: installing Debian's softhsm2"; \
		$(APT_GET) update; \
		$(APT_GET) install -y --no-install-recommends softhsm2; \
	fi

# Only the tests need it: each test process starts a throwaway cluster of its own
# (tests/support/postgres.py). Debian puts the server programs in /usr/lib/postgresql/<major>/bin,
# off PATH; the cluster the package may create and start is not used.
postgresql: ## Install PostgreSQL from Debian's packages unless its server programs are present
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		echo "postgresql: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)"; \
	else \
		echo "PostgreSQL's initdb not found: installing Debian's postgresql"; \
		$(APT_GET) update; \
		$(APT_GET) install -y --no-install-recommends postgresql; \
	fi

check-python: ## Check that a supported Python (3.11 to 3.13) is available
	@if [ -z "$(PYTHON)" ]; then \
		echo "no Python 3.11 to 3.13 found ($(PYTHON_CANDIDATES)); give one: make PYTHON=..." >&2; \
		exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if $(SUPPORTED_PYTHON) else 1)' || { \
		echo "$(PYTHON) is $$($(PYTHON) --version 2>&1); Python 3.11 to 3.13 is required" >&2; \
		exit 1; }

venv: $(VENV_STAMP) ## Create .venv and install the project with its server and dev extras

$(VENV_STAMP): pyproject.toml | check-python
	@# Debian splits venv/ensurepip into its own package; install it only when it is missing.
	@if [ ! -x $(VENV_PY) ] && ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		$(APT_GET) update; \
		$(APT_GET) install -y --no-install-recommends python$$version-venv; \
	fi
	@# A venv of another Python version, or one whose interpreter no longer runs, is rebuilt.
	@if [ -e $(VENV) ] && [ "$$($(VENV_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
			2>/dev/null)" != "$(PYTHON_VERSION)" ]; then \
		echo "$(VENV) is not a working Python $(PYTHON_VERSION) environment: recreating it"; \
		rm -rf $(VENV); fi
	@# A failed step removes .venv, so the next run starts afresh instead of reusing a
	@# half-installed environment that looks ready.
	@if [ ! -x $(VENV_PY) ]; then \
		echo "creating $(VENV) with $(PYTHON) (Python $(PYTHON_VERSION))"; \
		$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; fi
	@echo "+ pip install -e '.[server,dev]'"
	@$(VENV_PY) -m pip install --quiet --disable-pip-version-check --no-input -e '.[server,dev]' || { \
		echo "installing into $(VENV) failed: removed it, so the next run starts clean" >&2; \
		rm -rf $(VENV); exit 1; }
	@rm -f $(VENV)/.installed $(VENV)/.installed-*
	@touch $@

proto: $(PROTO_STAMP) ## Generate the gRPC code from proto/ into vault/gen/

$(PROTO_STAMP): $(PROTO_FILES) scripts/gen_proto.py $(VENV_STAMP)
	$(VENV_PY) scripts/gen_proto.py
	@touch $@

# token init reads no terminal here: a new development token gets a generated SO PIN, kept
# outside the data directory (README, What make run does); `vaultctl token init` run by hand
# on a terminal asks for one instead.
run: setup $(LOCAL_CONFIG) ## Provision the token (idempotent) and serve on settings.server.listen
	$(VAULTCTL) token init </dev/null
	exec $(VAULTCTL) serve

token-init: setup $(LOCAL_CONFIG) ## Only provision the token (idempotent)
	$(VAULTCTL) token init </dev/null

# The checkout's settings file, made once and then left to its owner: the server and vaultctl,
# started in any directory of the checkout, find it and so agree on the data directory (its
# relative paths are relative to the file) and the address.
$(LOCAL_CONFIG):
	@printf '%s\n' \
		'# Settings of this checkout'"'"'s development vault, created by `make run` if missing.' \
		'# vaultctl and the server read it from any directory of the checkout; relative' \
		'# paths are relative to this file. Settings: see README.md, "Configuration".' \
		'data_dir = ".vault-data"' \
		'' \
		'[server]' \
		'listen = "127.0.0.1:50051"' > $@
	@echo "created $@ (data_dir and server.listen of this checkout's vault)"

test: setup postgresql ## Run the test suite (pass options with PYTEST_ARGS='-k sign -x')
	$(VENV_PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: setup ## Run the benchmark; writes bench/results.json and bench/concurrency.png (options: BENCH_ARGS='--bucket-objects 1000')
	$(VENV_PY) -m bench $(BENCH_ARGS)

lint: venv proto ## ruff check, ruff format --check and mypy (all three run; any failure fails)
	@status=0; \
	echo "+ ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "+ ruff format --check ."; $(VENV)/bin/ruff format --check . || status=1; \
	echo "+ mypy"; $(VENV)/bin/mypy || status=1; \
	exit $$status

clean: ## Remove the venv, generated code, caches and bench results (keeps .vault-data)
	rm -rf $(VENV) vault/gen .mypy_cache .ruff_cache .pytest_cache bench/results.json bench/concurrency.png \
		build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean ## clean, and also delete .vault-data (the token, its PINs and the store)
	rm -rf .vault-data
