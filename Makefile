# `make run`: the worker with an embedded Temporal dev server and web UI, and (rtjobs/dev/stack.py) Redis, a
# Docker engine and a demo engine image where none is configured or answering.
# `make test`: lint, type-check and the whole test suite. Both set everything up on a fresh machine.
# `make docs`: docs/configuration.md and the JSON Schemas in api/, generated from the code.
# `make format`: format and fix what ruff can (`make lint` checks; .pre-commit-config.yaml runs the same).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint format docs bench system-deps run-deps clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

run-deps:
	bash scripts/system-deps.sh run

# Byte-compiled once here: the workflow sandbox imports the workflow modules afresh for every workflow
# run, and where PYTHONDONTWRITEBYTECODE is set nothing else writes their .pyc (each run would compile).
BYTECODE := $(PY) -m compileall -q contract workflows activities rtjobs

run: $(STAMP) run-deps
	$(BYTECODE)
	$(PY) worker.py --dev

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

docs: $(STAMP)
	$(PY) scripts/gen_docs.py

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: $(STAMP) system-deps lint
	$(BYTECODE)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	$(PY) bench/publish.py
	$(PY) bench/docker.py
	$(PY) bench/e2e.py
	$(PY) bench/latency.py
	$(PY) bench/fleet_scale.py --budget-s 300 --ingest-budget-s 90

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
