# `make run`: the worker with an embedded Temporal dev server and web UI.
# `make test`: lint, type-check and the whole test suite. Both set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

run: $(STAMP)
	$(PY) worker.py --dev

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

test: $(STAMP) system-deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	$(PY) bench/publish.py
	$(PY) bench/docker.py
	$(PY) bench/e2e.py
	$(PY) bench/latency.py

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
