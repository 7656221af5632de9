# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: install run test lint format bench chaos lock clean

# The marker file makes `install` a no-op until the lock file changes.
$(VENV)/.installed: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	touch $@

install: $(VENV)/.installed

# Migrates, loads the demo (or BOTS_CONFIG) and runs every process in the foreground.
run: install
	HA_DEV=1 PORT=$(PORT) $(BIN)/python manage.py ha_run

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Measures against the simulator on its own database (BENCH_DATABASE_URL, default
# ha_bench on the local PostgreSQL); writes docs/BENCHMARKS.md. BENCH_ARGS="--only detection --quick".
bench: install
	HA_DEV=1 $(BIN)/python manage.py ha_bench $(BENCH_ARGS)

# Runs the product on PostgreSQL + Redis of its own (CHAOS_DATABASE_URL, default ha_chaos on
# the local PostgreSQL; CHAOS_REDIS_URL, default redis://127.0.0.1:6379/3), injects faults from
# a seed and reconciles every message; writes docs/RELIABILITY.md. It restarts those servers.
# CHAOS_ARGS="--short" for the CI size, "--seed N" to replay a run's faults.
chaos: install
	HA_DEV=1 $(BIN)/python manage.py ha_chaos $(CHAOS_ARGS)

# Regenerates requirements.lock from pyproject.toml with pip-tools.
lock: install
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache
