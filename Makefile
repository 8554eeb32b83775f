# featdb: `make demo` runs the main job end to end; `make test` runs the tests.
# Both create .venv when it is missing or older than pyproject.toml.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
BIN     := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-slow test-dist lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[gnn,dev,bench,pyg]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/featdb demo --store .demo-store

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)  # the long runs: crash trials, the state machine, 2 simulated machines (root), ...
	$(BIN)/python -m pytest -m slow

test-dist: $(STAMP)  # 2 simulated machines (root: network namespaces); also in `make test PYTEST_ARGS=`
	$(BIN)/python -m pytest -m dist tests/test_distributed_sim.py

lint: $(STAMP)
	$(BIN)/ruff check featdb trainer tests tools
	$(BIN)/ruff format --check featdb trainer tests tools
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo-store .pytest_cache
