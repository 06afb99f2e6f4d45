# `make demo` and `make test` set everything up on a fresh machine: they create .venv when it is
# missing and reinstall only when pyproject.toml changed. `make demo` installs the package with
# its TensorFlow extra (Keras, NumPy, pandas, matplotlib, nvidia-ml-py and TensorFlow); `make
# test` adds the JAX and torch backends, the test tools and TensorBoard. A test install serves
# the demo too. The installs are editable, so tests and the demo run the working tree; pip runs
# with -qq, which still prints errors but not setuptools' notice about editable installs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PIP_QUIET := -qq

# `make test-keras-oldest`: the Keras-facing tests (the callback, the logs keys, where step 0
# ran, what feeds fit, the reads of Keras' private state) against the oldest Keras that pyproject.toml allows, in a venv of its own,
# with the oldest TensorFlow the tensorflow extra allows (and torch, for its DataLoader).
KERAS_OLDEST := $(shell sed -n 's/^ *"keras>=\([0-9.]*\)".*/\1/p' pyproject.toml)
TENSORFLOW_OLDEST := 2.16.2
OLDEST_VENV ?= .venv-keras-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_STAMP := $(OLDEST_VENV)/.installed
KERAS_TESTS := tests/test_callback.py tests/test_logs_keys.py tests/test_remedy_facts.py \
	tests/test_keras_internals.py

.PHONY: install test lint demo mutate test-keras-oldest clean prometheus-tools chromium

$(STAMP): pyproject.toml
	@echo "make test: installing gpu-watch with TensorFlow, JAX, torch and the test tools into" \
		"$(VENV) (about 3.9 GB; 1.5 to 4 minutes with the wheels at hand, more to download" \
		"them). For torch's CPU build, not PyPI's CUDA build of several GB more, set" \
		"PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu first."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	@$(PY) -m pip install $(PIP_QUIET) -e ".[test]"
	@touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then \
		echo "$(VENV) already holds the test install, which includes the demo's"; \
	else \
		set -e; \
		echo "make demo: installing gpu-watch with TensorFlow, Keras, pandas and matplotlib" \
			"into $(VENV) (about 2.3 GB, most of it TensorFlow; about a minute with the" \
			"wheels at hand, more to download them), then training a small CNN for under" \
			"a minute"; \
		test -x $(PY) || $(PYTHON) -m venv $(VENV); \
		$(PY) -m pip install $(PIP_QUIET) --upgrade pip; \
		$(PY) -m pip install $(PIP_QUIET) -e ".[tensorflow]"; \
	fi
	@touch $(DEMO_STAMP)

$(OLDEST_STAMP): pyproject.toml Makefile
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(OLDEST_PY) -m pip install $(PIP_QUIET) -e ".[tensorflow,torch]" "keras==$(KERAS_OLDEST)" \
		"tensorflow==$(TENSORFLOW_OLDEST)" "torch==2.13.0" "pytest>=8" "hypothesis>=6.100"
	touch $(OLDEST_STAMP)

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
		echo "make test: installing Debian's prometheus and prometheus-pushgateway with apt-get" \
			"(about 110 MB), for the exporters' tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus prometheus-pushgateway; \
	else \
		echo "prometheus, promtool or prometheus-pushgateway is missing and cannot be installed" \
			"here (needs root and apt-get): their tests will skip"; \
	fi

# Headless Chromium (Debian's package, about 360 MB with its libraries), which opens report.html
# in tests/test_report_page.py: installed the same way. Elsewhere those tests skip and say why;
# under CI=true they fail instead.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make test: installing Debian's chromium with apt-get (about 360 MB), to open" \
			"report.html in the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium; \
	else \
		echo "chromium is missing and cannot be installed here (needs root and apt-get):" \
			"the report.html browser tests will skip"; \
	fi

test: lint prometheus-tools chromium
	$(PY) -m pytest

test-keras-oldest: $(OLDEST_STAMP)
	$(OLDEST_PY) -c "import keras; assert keras.__version__ == '$(KERAS_OLDEST)', keras.__version__"
	$(OLDEST_PY) -m pytest -p no:cacheprovider $(KERAS_TESTS)

demo: $(DEMO_STAMP)
	@$(PY) -m gpu_watch demo

# Mutation testing of the rules and the readings they stand on (pyproject.toml's
# [tool.mutmut] only_mutate: the judging/ and sensing/ modules listed there) with the fast tests
# that cover them, always from scratch: mutmut for the code in functions, then
# tests/mutation_constants.py for the numbers outside functions (see docs/mutation.md). Fails
# when mutmut fails, or a score is under the one docs/mutation.md states.
mutate: $(STAMP)
	rm -rf mutants && mkdir mutants
	$(VENV)/bin/mutmut run > mutants/run.log 2>&1 || { tail -n 30 mutants/run.log; exit 1; }
	$(PY) tests/mutation_score.py; scored=$$?; $(PY) tests/mutation_constants.py && exit $$scored

clean:
	rm -rf $(VENV) $(OLDEST_VENV) gpu_watch_logs .pytest_cache .ruff_cache
