# lmlab: bootstrap a virtual environment and run the workbook, the tests, the book, the benchmarks.
#
#   make lab      open the workbook in JupyterLab
#   make test     ruff + unit tests + every notebook (nbval) + browser tests
#   make book     execute the chapters and build the HTML book (book/_build/html)
#   make bench    run the training benchmark
#   make time-to-quality  the published CPU recipe against the quickstart's, to val loss 1.89
#   make time-notebooks  time every chapter on a cold cache (PROFILE=cpu|ci|gpu, RECORD=1,
#                 EXPLORERS=1: also every explorer's new settings)
#   make gpu-check  the CUDA tests, a smoke matrix and GPU benchmarks (exits 0 without a GPU)
#   make strip    strip outputs from the notebooks before committing
#   make clean    remove build outputs (keeps .venv)
#
# Variables: PYTHON (interpreter used to create .venv), TORCH_VERSION (installed only when the
# venv has no torch at all, so an existing CUDA/MPS build is kept), TORCH_PIP_ARGS (e.g.
# `--index-url https://download.pytorch.org/whl/cpu`), PYTEST_WORKERS, LMLAB_PROFILE.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VPY := $(BIN)/python
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
PIP_ARGS ?= --progress-bar off
STAMP := $(VENV)/.installed
BUILD_DIR ?= build
PYTEST_WORKERS ?= 2
# Threads per pytest worker: 2 workers x 1 thread fits a 2-core machine without oversubscription.
TEST_THREADS ?= 1
NOTEBOOK_DIR := $(wildcard notebooks)

# The corpus: tests and CI use ../shared/data when it is there; otherwise lmlab downloads and caches it.
ifneq ($(wildcard ../shared/data),)
export LMLAB_DATA_DIR ?= $(abspath ../shared/data)
endif

# Tests, notebook runs and the book build share one on-disk experiment cache, so the book's
# second execution of a chapter reuses what nbval already computed.
test test-unit test-browser book: export LMLAB_CACHE_DIR ?= $(CURDIR)/$(BUILD_DIR)/cache

# Print how long a stage took: $(call timed,NAME) after the command, in the same shell line.
timed = rc=$$?; echo "[timing] $(1): $$(( $$(date +%s) - t0 ))s"; exit $$rc

.PHONY: help install lab test test-lint test-unit test-browser book bench time-to-quality \
	time-notebooks gpu-check \
	strip clean distclean

help:
	@sed -n '2,12p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------------------------- bootstrap
$(VPY):
	$(PYTHON) -m venv $(VENV)

# Reinstalled only when pyproject.toml changes (or the stamp is deleted).
$(STAMP): pyproject.toml | $(VPY)
	@if $(VPY) -c "import torch" 2>/dev/null; then \
		echo "torch $$($(VPY) -c 'import torch; print(torch.__version__)') already in $(VENV): kept"; \
	else \
		$(VPY) -m pip install $(PIP_ARGS) $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"; \
	fi
	$(VPY) -m pip install $(PIP_ARGS) -e '.[dev]'
	@touch $@

install: $(STAMP)

# ------------------------------------------------------------------------------------ targets
# Registers the "Python (lmlab)" kernel for other JupyterLabs, then serves notebooks/ opening on
# the quickstart (tools/lab.py: --allow-root only as root, no browser without a display, the URL
# with its token printed last). LAB_ARGS go to JupyterLab, e.g. LAB_ARGS=--port=8899.
LAB_ARGS ?=
lab: $(STAMP)
	$(VPY) -m ipykernel install --user --name lmlab --display-name "Python (lmlab)"
	$(VPY) tools/lab.py $(LAB_ARGS)

test: test-lint test-unit test-browser

test-lint: $(STAMP)
	@t0=$$(date +%s); $(BIN)/ruff check . ; $(call timed,ruff)

test-unit: $(STAMP)
	@t0=$$(date +%s); \
	LMLAB_PROFILE=ci OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
	$(VPY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
		tests $(NOTEBOOK_DIR) -m "not browser" ; \
	$(call timed,unit tests + notebooks)

test-browser: $(STAMP)
	@t0=$$(date +%s); LMLAB_PROFILE=ci $(VPY) -m pytest tests/browser -m browser ; \
	$(call timed,browser tests)

book: $(STAMP)
	@t0=$$(date +%s); $(VPY) book/build.py ; $(call timed,book)

bench: $(STAMP)
	$(VPY) benchmarks/bench_train.py

# Each recipe in a one-thread process of its own, all at once (so under the same load), timed by
# its CPU clock; about 2.5 minutes of CPU for the published recipe. JSON in $(BUILD_DIR).
time-to-quality: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VPY) benchmarks/time_to_quality.py --parallel \
		--json $(BUILD_DIR)/time_to_quality.json

# On one CUDA GPU, under 8 minutes: tests marked `cuda`, the smoke matrix, the quickstart's gpu
# profile to val 1.47, GPT-2 124M throughput and MFU; JSON in $(BUILD_DIR)/gpu_check.json.
gpu-check: $(STAMP)
	$(VPY) benchmarks/gpu_check.py --json $(BUILD_DIR)/gpu_check.json

# Every chapter on a cold cache in one profile (PROFILE=ci|cpu|gpu): a table of wall time and
# asserts passed. RECORD=1 writes it into benchmarks/RESULTS.md and the README.
PROFILE ?= cpu
time-notebooks: $(STAMP)
	$(VPY) tools/time_notebooks.py --profile $(PROFILE) $(if $(RECORD),--record) \
		$(if $(EXPLORERS),--explorers)

# Outputs, execution counts and widget state (nbstripout's defaults), plus what papermill and the
# book build add to a notebook they executed.
STRIP_EXTRA_KEYS := metadata.papermill metadata.lmlab_book cell.metadata.papermill cell.metadata.execution

strip: $(STAMP)
	$(BIN)/nbstripout --extra-keys "$(STRIP_EXTRA_KEYS)" notebooks/*.ipynb

clean:
	rm -rf $(BUILD_DIR) book/_build test-artifacts .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) book/node_modules
