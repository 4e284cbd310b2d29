# offbyone: every target sets itself up first (make setup is idempotent and quick once done).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PYTHON ?= python3
# CPU machines get the CPU build of torch. On a laptop where PyPI would hand out the CUDA build,
# add: TORCH_CPU_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION      ?= 2.13.0
TORCH_CPU_PIP_ARGS ?=
TORCH_GPU_PIP_ARGS ?=
PYTEST_ARGS        ?=

.PHONY: help setup test test-all data clean

help:
	@echo "make test       the fast test suite (sets itself up on first use)"
	@echo "make test-all   the fast and the slow tests"
	@echo "make data       prepare the Shakespeare corpus (data/shakespeare_char)"
	@echo "make setup      create $(VENV) and install everything"
	@echo "make clean      remove runs and build outputs (keeps $(VENV) and data)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if nvidia-smi >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: installing the CUDA build of torch==$(TORCH_VERSION)"; \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_GPU_PIP_ARGS); \
	else \
	  echo "no NVIDIA GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_CPU_PIP_ARGS); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

data: $(STAMP)
	$(PY) -m offbyone.data --corpus shakespeare --data-root data

clean:
	rm -rf runs build paper/generated .pytest_cache
