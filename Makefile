# Every README command is a target here; `make help` lists them.
SHELL := /bin/bash
PY ?= .venv/bin/python
RUNTIME_STAMP := .venv/.installed-runtime
VENV_STAMP := .venv/.installed
TORCH_PIN ?= torch==2.13.0
DATASET ?= model_a
PRESET ?= small
PORT ?= 8000

.DEFAULT_GOAL := help
.PHONY: help install serve test test-fast fuzz lint format simulate reproduce bench bench-sim bench-train bench-serve clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(RUNTIME_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# The pinned CPU build first: a bare `torch` requirement would pull multi-GB CUDA wheels.
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV_STAMP): $(RUNTIME_STAMP) scripts/install-system-deps.sh
	$(PY) -m pip install -q -e '.[train,dev]'
	bash scripts/install-system-deps.sh
	touch $@

install: $(VENV_STAMP) ## .venv with CPU torch, the project and its train/dev extras, Chromium and docker-compose (for the tests)

serve: $(RUNTIME_STAMP) ## install the service's dependencies and run it on port 8000 (shipped Model A checkpoints)
	$(PY) -m uvicorn app.main:app --host 0.0.0.0 --port $(PORT)

test: $(VENV_STAMP) lint ## lint (ruff, mypy) then run the whole test suite
	$(PY) -m pytest -q

test-fast: $(VENV_STAMP) ## the test suite without lint
	$(PY) -m pytest -q -x

FUZZ_CASES ?= 5000
FUZZ_EXAMPLES ?= 2000
fuzz: $(VENV_STAMP) ## 5000 mutated uploads and 2000 schemathesis requests (FUZZ_CASES=, FUZZ_EXAMPLES=); `make test` runs a few hundred
	DEEPLENSE_FUZZ_CASES=$(FUZZ_CASES) DEEPLENSE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/fuzz

lint: $(VENV_STAMP) ## ruff check, ruff format --check, mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(VENV_STAMP) ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

reproduce: $(VENV_STAMP) ## simulate, fit all four models, evaluate (DATASET=model_a|model_b PRESET=small|cpu|full)
	bash scripts/reproduce.sh $(DATASET) $(PRESET)

bench: bench-sim bench-train bench-serve ## every benchmark

bench-sim: $(VENV_STAMP) ## simulated images/s per class
	$(PY) bench/bench_simulate.py

bench-train: $(VENV_STAMP) ## training images/s per model on the current device
	$(PY) bench/bench_train.py

bench-serve: $(VENV_STAMP) ## raw model vs HTTP throughput and latency on loopback
	$(PY) bench/bench_serve.py

clean: ## remove caches (never data/, runs/ or checkpoints/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
