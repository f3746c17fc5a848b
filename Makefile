# careloop — two commands: `make run` (set up and serve) and `make test` (set up and pass the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench bench-issue16 bench-scheduler clean demo fuzz assets

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

## Set up and run the whole test suite on SQLite and, at the same time, on PostgreSQL when
## CARELOOP_TEST_POSTGRES_URL is set (HAPI sandbox and PostgreSQL tests run where available; never skipped under CI).
## PYTEST_ARGS go to both passes, e.g. make test PYTEST_ARGS='-x --durations=20'.
PYTEST_ARGS ?=
test: install
	$(BIN)/ruff check middleware
	$(BIN)/mypy
	$(BIN)/lint-imports
	bash tests/run_backends.sh $(BIN)/python $(PYTEST_ARGS)

## A local webhook receiver that shows what a downstream tool would get.
sink: install
	$(BIN)/careloop sink

## Send the bundled synthetic sample messages to a running careloop over MLLP.
demo: install
	$(BIN)/careloop send --samples

## Coverage-guided fuzzing of the HL7 path (atheris) for FUZZ_SECONDS (default 600); crashes land in .careloop/fuzz/.
FUZZ_SECONDS ?= 600
FUZZ_DIR     := .careloop/fuzz
fuzz: install
	$(BIN)/python -m pip install -q -e '.[fuzz]'
	@mkdir -p $(FUZZ_DIR)/corpus
	$(BIN)/python tests/fuzz/atheris_hl7.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=8192 \
	  -timeout=20 -artifact_prefix=$(FUZZ_DIR)/ -print_final_stats=1 \
	  $(FUZZ_DIR)/corpus tests/fixtures/hl7 tests/fixtures/hostile

## Re-create the console's vendored front-end files (htmx) from the npm registry: the pinned versions of
## middleware/console/static/vendor/ASSETS.json, tarball integrity and file sha256 checked. Needs npm and the
## network; nothing else does (`make run` serves the files shipped in the package).
assets: install
	$(BIN)/python -m middleware.console.vendor

bench: install
	$(BIN)/python bench/run_all.py

# issue 16: its five benchmarks in one sitting, each beside its peer (~30 minutes on 2 cores); output in bench/results/issue16_*.txt
bench-issue16: install
	$(BIN)/python bench/issue16.py

# issue 16, target 5: the scheduler at 10,000,000 pending triggers (10–20 minutes per backend on 2 cores; ~4-5 GB of
# disk, removed after). PostgreSQL runs when CARELOOP_TEST_POSTGRES_URL names a server it may create a database on.
bench-scheduler: install
	$(BIN)/python bench/scheduler_10m.py --backend sqlite --pending 10000000 | tee bench/results/scheduler_10m_sqlite.txt
	@if [ -n "$$CARELOOP_TEST_POSTGRES_URL" ]; then \
	  $(BIN)/python bench/scheduler_10m.py --backend postgresql --pending 10000000 --peer-pending 0 \
	    | tee bench/results/scheduler_10m_postgresql.txt; fi

clean:
	rm -rf $(VENV) .careloop .pytest_cache
