# careloop — two commands: `make run` (set up and serve) and `make test` (set up and pass the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench clean demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## Set up and run careloop on SQLite with the bundled mappings (HTTP :8080, MLLP :2575).
run: install
	$(BIN)/careloop mappings validate mappings
	$(BIN)/careloop serve

## Set up and run the whole test suite (HAPI sandbox and PostgreSQL tests run where available; never skipped under CI).
test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

## A local webhook receiver that shows what a downstream tool would get.
sink: install
	$(BIN)/careloop sink

## Send the bundled synthetic sample messages to a running careloop over MLLP.
demo: install
	$(BIN)/careloop send --samples

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .careloop .pytest_cache
