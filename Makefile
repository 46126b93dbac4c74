# Set-up and everyday commands. Every target creates or refreshes the virtualenv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The browser of the Dagster UI test (tests/test_operator_view.py): Debian's package.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test soak dev bench lint schemas clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,trainer]'
	touch $(STAMP)

$(CHROMIUM):
	$(SUDO) apt-get install -y chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

## Run the main job end to end on the embedded defaults (SQLite, ./.brightrun/storage, local Dagster).
demo: $(STAMP) $(CHROMIUM)
	$(BIN)/brightrun demo

## Run the whole test suite (SQLite and PostgreSQL, local store and S3 over HTTP) in two worker
## processes (each with its own PostgreSQL database and S3 server); about 10 minutes on 2 cores.
test: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -q -n 2 --dist worksteal

## The crash suite at length, per backend: 200 random SIGKILLs of builds, 25 rounds of four
## killed `--wait` CLIs, 28 daemon runs with 21 workers killed (estimated at 40 minutes;
## docs/reliability.md).
soak: $(STAMP)
	BRIGHTRUN_SOAK_RANDOM_KILLS=200 BRIGHTRUN_SOAK_CLI_ROUNDS=25 BRIGHTRUN_SOAK_DAEMON_REQUESTS=28 \
		$(BIN)/pytest -q -s tests/test_crash.py tests/test_daemon_crash.py tests/test_concurrency.py

## The curators' console on http://127.0.0.1:8000 next to the Dagster UI + daemon (sensor and
## schedule running) on http://127.0.0.1:3000; Ctrl-C stops both.
dev: $(STAMP)
	$(BIN)/brightrun init
	$(BIN)/brightrun console --host 127.0.0.1 --port 8000 & console=$$!; \
	trap 'kill $$console 2>/dev/null' EXIT; \
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.brightrun/dagster} \
		$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Benchmarks (not part of the test suite): 80 to 40,000 conversations, 10,000 and 40,000 also
## through PostgreSQL on 127.0.0.1:5432; ~35 GB of disk, ~15 min; writes docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check .

## Regenerate the committed JSON Schemas after changing the models.
schemas: $(STAMP)
	$(BIN)/python -m brightrun_pipeline.schema_export

clean:
	rm -rf .brightrun
