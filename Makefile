# `make demo` and `make test` set everything up on a fresh machine: they create .venv when it is
# missing and reinstall only when pyproject.toml changed. `make demo` installs the package alone
# (TensorFlow, Keras, NumPy, pandas, matplotlib, nvidia-ml-py); `make test` adds the test tools,
# TensorBoard and the JAX and torch backends. A test install serves the demo too.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install test lint demo mutate clean prometheus-tools

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

# Prometheus' server, promtool and the Pushgateway, which the exporters' tests run (Debian's
# packages): installed when missing where this runs as root with apt-get, as CI does. Elsewhere
# those tests skip and say why; under CI=true they fail instead.
prometheus-tools:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null \
		&& command -v prometheus-pushgateway >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus prometheus-pushgateway; \
	else \
		echo "prometheus, promtool or prometheus-pushgateway is missing and cannot be installed" \
			"here (needs root and apt-get): their tests will skip"; \
	fi

test: lint prometheus-tools
	$(PY) -m pytest

demo: $(DEMO_STAMP)
	$(PY) -m gpu_watch demo

# Mutation testing (mutmut) of verdict.py, timeline.py, nvml.py and causes.py with the fast tests
# that cover them: about 8 minutes from scratch on 2 cores, less when run again (unchanged
# functions keep their results). Prints the score per module; fails below the targets.
mutate: $(STAMP)
	$(VENV)/bin/mutmut run > /dev/null || true
	$(PY) tests/mutation_score.py

clean:
	rm -rf $(VENV) gpu_watch_logs .pytest_cache .ruff_cache
