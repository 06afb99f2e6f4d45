# `make test` and `make demo` set everything up on a fresh machine: they create .venv when it is
# missing and reinstall only when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo mutate clean

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

# Mutation testing (mutmut) of verdict.py, timeline.py, nvml.py and causes.py with the fast tests
# that cover them: about 8 minutes from scratch on 2 cores, less when run again (unchanged
# functions keep their results). Prints the score per module; fails below the targets.
mutate: $(STAMP)
	$(VENV)/bin/mutmut run > /dev/null || true
	$(PY) tests/mutation_score.py

clean:
	rm -rf $(VENV) gpu_watch_logs .pytest_cache .ruff_cache
