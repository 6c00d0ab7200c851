# stemfleet: `make demo` separates a generated clip on the embedded default; `make test` runs
# the whole suite (installs into .venv, starts its own Postgres and S3 endpoint).
.PHONY: install lint test demo clean

install:
	./scripts/install.sh

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# two pytest-xdist workers (each with its own Postgres, S3 endpoint and fakes on free ports), a
# test file at a time (its module fixtures are built once), the longest files first
# (tests/conftest.py LONGEST_FILES); PYTEST_WORKERS=0 runs in one process
PYTEST_WORKERS ?= 2

test: lint
	.venv/bin/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

demo: install
	./scripts/demo.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache

# The reliability suite (slow, not part of `make test`): CHAOS_ROUNDS=N, CHAOS_SEED=S.
.PHONY: chaos
chaos: install
	.venv/bin/python -m chaos $(CHAOS_ARGS)
