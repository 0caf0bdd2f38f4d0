# One command sets up and tests (`make test`); one reproduces Figure 1 (`make reproduce`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The data-dir setting: where <dir>/mnist/*.gz live. Taken from the environment; otherwise
# ../shared/data when that folder exists. Without it, the data is downloaded into the cache
# (~/.cache/adamjax) where the network allows, and tests that need it are skipped otherwise.
ifeq ($(origin ADAMJAX_DATA_DIR),undefined)
  ifneq ($(wildcard ../shared/data/.),)
    ADAMJAX_DATA_DIR := $(abspath ../shared/data)
    export ADAMJAX_DATA_DIR
  endif
endif
OUT ?= runs
# PyTorch (the CPU wheel this machine class holds) is an extra reference in tests and benchmarks.
EXTRAS ?= all,torch

.PHONY: install test lint docs dist reproduce reproduce-all paper bench clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy adamjax experiments benchmarks

# The API reference from the docstrings (Sphinx); any warning fails the build.
docs: install
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# The sdist and the wheel users install (dist/); the wheel is built from the sdist, in an
# isolated build environment as pip would (tests/test_packaging.py installs them outside the repo).
dist: install
	rm -rf dist
	$(PY) -m build --outdir dist
	@ls -l dist

reproduce: install
	$(PY) -m experiments fig1_logreg --quick --out $(OUT)/fig1_logreg

reproduce-all: install
	for name in fig1_logreg fig2_mlp fig4_bias_correction fig3_cnn; do \
	  $(PY) -m experiments $$name --quick --out $(OUT)/$$name || exit 1; done

# The paper's MNIST figures at the paper's scale on this machine (hours on a CPU: Figure 2 took
# 3.7 h on 2 cores). Resumable: after a stop, the same command continues where it was.
paper: install
	for name in fig2_mlp fig4_bias_correction fig1_logreg; do \
	  nice -n 10 $(PY) -m experiments $$name --out $(OUT)/paper/$$name --resume || exit 1; done

bench: install
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache docs/_build
