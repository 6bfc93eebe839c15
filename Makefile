# interpddpm: `make book` builds the book, `make test` runs every check.
# Both create the virtual environment .venv first when it is missing (or pyproject.toml changed).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed before everything else so that pip takes this pinned wheel (the CPU build
# where one is available locally) and no dependency pulls a multi-GB CUDA build instead.
TORCH_VERSION ?= 2.13.0
# Profile of `make book`: smoke, cpu, gpu, paper or auto (gpu with CUDA, else cpu).
PROFILE ?= auto
# Edition of `make book`: teacher (solutions folded on the page, _build/html) or student (no
# solution: _build/student/html, and the chapters to hand out in _build/student/notebooks).
EDITION ?= teacher
STAMP := .make/venv-installed
CHROMIUM ?= /usr/bin/chromium
PYTEST_ARGS ?=
# Two pytest-xdist workers; tests/conftest.py keeps what shares an expensive fixture (the smoke
# book with the notebooks, the installed wheel) in one worker and queues those first.
# XDIST= runs the suite in one process.
XDIST ?= -n 2 --dist loadscope

.PHONY: help venv book test lint browser artifacts dist clean distclean

help: ## list the targets
	@echo "Usage: make <target> [PROFILE=smoke|cpu|gpu|paper|auto] [EDITION=teacher|student] [RETRAIN=1]"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[book,test]"
	@mkdir -p $(dir $@) && touch $@

venv: $(STAMP) ## create or update .venv (torch first, then the package with its extras)

# RETRAIN=1 trains every run here, the cpu profile's recorded baseline (book/data/runs-cpu)
# included: INTERPDDPM_RUNS_FROM=none
RETRAIN ?=
book: $(STAMP) ## execute the notebooks (PROFILE=auto, RETRAIN=1) and build the book into _build/html (EDITION=student: _build/student)
	$(if $(RETRAIN),INTERPDDPM_RUNS_FROM=none )$(PY) -m interpddpm.cli book --profile $(PROFILE) --edition $(EDITION)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

# Headless Chromium renders the built pages in the book test. Installing it is best effort:
# without it the test fails loudly (set INTERPDDPM_ALLOW_NO_BROWSER=1 to skip it instead).
browser: ## install Chromium with apt-get when it is missing
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } \
	      || echo "warning: could not install chromium; the book test will fail"; \
	  else \
	    echo "warning: no apt-get to install chromium; the book test will fail"; \
	  fi; \
	fi

test: $(STAMP) browser ## ruff, unit tests, every notebook (nbval, smoke profile), the book
	$(VENV)/bin/ruff check .
	INTERPDDPM_PROFILE=smoke $(PY) -m pytest tests --nbval-lax notebooks $(XDIST) --durations=15 $(PYTEST_ARGS)

# The artifact cache of one profile (trained models, samples, tables), packed so that another
# machine loads the models instead of training them (`interpddpm artifacts unpack FILE`).
artifacts: $(STAMP) ## pack _artifacts/<PROFILE> into dist/interpddpm-artifacts-<PROFILE>.tar.gz
	$(PY) -m interpddpm.cli artifacts pack --profile $(PROFILE)

# A wheel of the library for a machine that cannot reach the repository (Colab with the wheel
# on Drive: set INTERPDDPM_SOURCE to its path before the first cell runs).
dist: $(STAMP) ## build the wheel dist/interpddpm-<version>-py3-none-any.whl
	$(PY) -m pip wheel --no-deps --no-build-isolation -q -w dist .
	@ls dist/*.whl

clean: ## remove build outputs and caches (keeps .venv and _artifacts)
	rm -rf _build .pytest_cache .ruff_cache .hypothesis build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## also remove .venv and the artifact cache _artifacts
	rm -rf $(VENV) .make _artifacts *.egg-info
