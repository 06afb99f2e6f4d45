# `make test` and `make demo` set everything up on a fresh machine: they create .venv when it is
# missing and reinstall only when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,backends]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check gpu_watch tests benchmarks

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m gpu_watch demo

clean:
	rm -rf $(VENV) gpu_watch_logs .pytest_cache .ruff_cache
