# Two commands a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA_DIR ?= ./streamvault-data
PYTEST_ARGS ?=

.PHONY: run test bench lint clean venv install install-test

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Non-editable installs: what runs is what a user installs (the tests import the installed package).
install: $(VENV)/bin/activate
	$(PIP) install -q .
	$(PIP) install -q --no-deps --force-reinstall .

install-test: $(VENV)/bin/activate
	$(PIP) install -q ".[test]"
	$(PIP) install -q --no-deps --force-reinstall .

run: install
	$(VENV)/bin/streamvault standalone --data-dir $(DATA_DIR)

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/bin/activate
	$(PIP) install -q ".[perf]"
	$(PIP) install -q --no-deps --force-reinstall .
	$(PY) perf/bench_append.py

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
