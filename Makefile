# Every README command is a target here; `make help` lists them.
SHELL := /bin/bash
PY ?= .venv/bin/python
RUNTIME_STAMP := .venv/.installed-runtime
VENV_STAMP := .venv/.installed
# The torch the tests run on; the Dockerfile's TORCH_VERSION must match (tests/test_compose.py).
TORCH_PIN ?= torch==2.13.0
# One stamp per pin: another TORCH_PIN (e.g. `make serve TORCH_PIN=torch` on a GPU machine)
# has no stamp yet, so torch is reinstalled.
TORCH_STAMP := .venv/.torch-$(shell printf '%s' '$(TORCH_PIN)' | tr -c 'A-Za-z0-9.+-' '_')
# Exact versions of every other dependency, shared with the Dockerfile (scripts/lock_constraints.py).
CONSTRAINTS := constraints.txt
# pytest-xdist workers for `make test` (auto: one per core).
TEST_WORKERS ?= auto
DATASET ?= model_a
PRESET ?= small
PORT ?= 8000
# The checkpoint set `make serve` serves; empty = the service's default, the shipped Model R set
# (app/settings.py). CHECKPOINTS=checkpoints/model_a serves the study's Model A physics.
CHECKPOINTS ?=
# Address `make serve` listens on: this machine only. HOST=0.0.0.0 serves the network (set
# DEEPLENSE_API_KEY then, README). Not `?=`: a shell's own HOST variable must not decide.
HOST = 127.0.0.1

.DEFAULT_GOAL := help
.PHONY: help install serve test test-fast fuzz lint format lock simulate reproduce bench bench-sim bench-train bench-serve bench-load docker-test clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(TORCH_STAMP):
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement can pull multi-GB CUDA wheels.
	# --force-reinstall: another build of the same version (CPU -> CUDA) replaces the old one.
	rm -f .venv/.torch-*
	$(PY) -m pip install -q --force-reinstall --constraint $(CONSTRAINTS) '$(TORCH_PIN)'
	touch $@

$(RUNTIME_STAMP): pyproject.toml $(CONSTRAINTS) $(TORCH_STAMP)
	$(PY) -m pip install -q --constraint $(CONSTRAINTS) -e .
	touch $@

$(VENV_STAMP): $(RUNTIME_STAMP) scripts/install-system-deps.sh
	$(PY) -m pip install -q --constraint $(CONSTRAINTS) -e '.[train,dev]'
	bash scripts/install-system-deps.sh
	touch $@

install: $(VENV_STAMP) ## .venv with CPU torch, the project and its train/dev extras, Chromium and docker-compose (for the tests)

serve: $(RUNTIME_STAMP) ## install the service's dependencies and serve the shipped Model R set (for real images) on 127.0.0.1:8000 (PORT=8001, HOST=0.0.0.0, CHECKPOINTS=checkpoints/model_a)
	$(PY) -m training serve --host $(HOST) --port $(PORT) $(if $(CHECKPOINTS),--checkpoints $(CHECKPOINTS))

test: $(VENV_STAMP) lint ## lint (ruff, mypy) then run the whole test suite
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-fast: $(VENV_STAMP) ## the test suite without lint
	$(PY) -m pytest -q -x -n $(TEST_WORKERS)

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

lock: $(VENV_STAMP) ## rewrite constraints.txt from the installed versions (after changing a dependency)
	$(PY) scripts/lock_constraints.py

reproduce: $(VENV_STAMP) ## simulate, fit every model, evaluate (DATASET=model_a|model_b PRESET=small|cpu|full|release|study)
	bash scripts/reproduce.sh $(DATASET) $(PRESET)

bench: bench-sim bench-train bench-serve bench-load ## every benchmark

bench-sim: $(VENV_STAMP) ## simulated images/s per class
	$(PY) bench/bench_simulate.py

bench-train: $(VENV_STAMP) ## training images/s per model on the current device
	$(PY) bench/bench_train.py

bench-serve: $(VENV_STAMP) ## raw model vs HTTP throughput and latency on loopback
	$(PY) bench/bench_serve.py

bench-load: $(VENV_STAMP) ## shedding under overload: answers by status, goodput, latency, RSS, idle time (LensFit and a CNN)
	$(PY) bench/bench_load.py

docker-test: $(VENV_STAMP) ## build the CPU image without registries, run it, compare its scores with this host's (slow; DOCKER_BUILDKIT=1 for BuildKit)
	PY=$(PY) bash scripts/docker-test.sh

clean: ## remove caches (never data/, runs/ or checkpoints/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
