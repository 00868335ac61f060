# draftlink: `make run` serves the default models; `make test` runs the whole test suite.
# Both create .venv and install what they need on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MODELS ?= qwen
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: venv proto test test-fast check fmt run fetch-models bench bench-codec bench-models images clean help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m common.protogen
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install draftlink with its dev tools

proto: $(STAMP) ## regenerate the gRPC stubs from proto/
	$(BIN)/python -m common.protogen

test: venv proto ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv proto ## unit + component tests only
	$(BIN)/python -m pytest -m 'not slow and not integration' $(PYTEST_ARGS)

check: venv proto ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: venv ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

fetch-models: venv ## download, verify and convert the default Qwen2.5-Coder pair (once)
	$(BIN)/python -m common.models.fetch

run: venv proto ## serve cloud + link + edge on loopback (MODELS=tiny for the tiny pair)
	@if [ "$(MODELS)" != "tiny" ]; then $(MAKE) --no-print-directory fetch-models; fi
	$(BIN)/python -m common.launch --models $(MODELS)

bench: venv proto ## headline benchmark: the qwen profile through the real processes
	$(MAKE) --no-print-directory fetch-models
	$(BIN)/draftlink-bench --profile qwen

bench-codec: venv proto ## codec speed and bits per token
	$(BIN)/python bench/codec_bench.py

bench-models: venv proto ## model forward times and agreement (needs fetch-models)
	$(BIN)/python bench/model_bench.py

images: venv ## build the cloud, edge and link images with podman, offline (deploy/README.md, "Podman")
	$(BIN)/python -m deploy.podman.images

clean: ## remove the venv and caches (not the model cache)
	rm -rf $(VENV) common/rpc/gen .mypy_cache .ruff_cache .pytest_cache .hypothesis
