# `make demo` and `make test` set everything up on a fresh machine: they create .venv when it is
# missing and reinstall only when pyproject.toml changed. `make demo` installs the package alone
# (TensorFlow, Keras, NumPy, pandas, matplotlib, nvidia-ml-py); `make test` adds the test tools,
# TensorBoard and the JAX and torch backends. A test install serves the demo too.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install test lint demo mutate clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,backends]"
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then \
		echo "$(VENV) already holds the test install, which includes the demo's"; \
	else \
		set -e; \
		test -x $(PY) || $(PYTHON) -m venv $(VENV); \
		$(PY) -m pip install --quiet --upgrade pip; \
		$(PY) -m pip install --quiet -e .; \
	fi
	touch $(DEMO_STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check gpu_watch tests benchmarks

test: lint
	$(PY) -m pytest

demo: $(DEMO_STAMP)
	$(PY) -m gpu_watch demo

# Mutation testing of verdict.py, timeline.py, nvml.py and causes.py with the fast tests that
# cover them, always from scratch: mutmut for the code in functions, then
# tests/mutation_constants.py for the numbers outside functions (see docs/mutation.md). Fails
# when mutmut fails, or a score is under the one docs/mutation.md states.
mutate: $(STAMP)
	rm -rf mutants && mkdir mutants
	$(VENV)/bin/mutmut run > mutants/run.log 2>&1 || { tail -n 30 mutants/run.log; exit 1; }
	$(PY) tests/mutation_score.py; scored=$$?; $(PY) tests/mutation_constants.py && exit $$scored

clean:
	rm -rf $(VENV) gpu_watch_logs .pytest_cache .ruff_cache
