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

.PHONY: venv proto test test-fast check fmt run fetch-models bench bench-codec bench-models images clean help \
	bench-tiny bench-tiny-concurrency bench-wire bench-qwen-regime bench-qwen-sparse bench-qwen-streamed \
	bench-qwen-concurrency bench-guidellm device-check

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
	$(BIN)/python -m launcher --models $(MODELS)

bench: venv proto ## headline benchmark: the qwen profile through the real processes
	$(MAKE) --no-print-directory fetch-models
	$(BIN)/draftlink-bench --profile qwen

bench-tiny: venv proto ## tiny pair, powered grid + markov (20 prompts x 64 tokens, CIs)
	$(BIN)/draftlink-bench --profile tiny-power

bench-tiny-concurrency: venv proto ## tiny pair, 1/4/16/32 concurrent clients
	$(BIN)/draftlink-bench --profile tiny-concurrency

bench-wire: venv proto ## HTTP/2 frame anatomy, lean vs gRPC-default channel settings (tiny pair)
	$(BIN)/python -m bench.wire

bench-qwen-regime: venv proto ## Qwen: K-SQS vs C-SQS at T 0.4/1.0/1.3 (quiet machine)
	$(MAKE) --no-print-directory fetch-models
	$(BIN)/draftlink-bench --profile qwen-regime

bench-qwen-sparse: venv proto ## Qwen: sparse codecs vs best dense QS at 100 kbit/s and 1 Mbit/s
	$(MAKE) --no-print-directory fetch-models
	$(BIN)/draftlink-bench --profile qwen-sparse

bench-qwen-streamed: venv proto ## Qwen: serial vs streamed vs adaptive, fixed rate and Markov channels
	$(MAKE) --no-print-directory fetch-models
	$(BIN)/draftlink-bench --profile qwen-streamed

bench-qwen-concurrency: venv proto ## Qwen: 1/2/4/8 concurrent clients over 2 edges
	$(MAKE) --no-print-directory fetch-models
	$(BIN)/draftlink-bench --profile qwen-concurrency

bench-guidellm: ## guidellm (throwaway venv) against a running edge: make bench-guidellm URL=... TOK=...
	bench/guidellm.sh $(or $(URL),http://127.0.0.1:8000) $(or $(TOK),$(HOME)/.cache/draftlink/models/qwen2.5-coder-1.5b)

device-check: ## on a CUDA machine: Qwen pair batched, tokens/s at 1/8/32/64 sessions (DEVICE=cpu: dry run)
	bench/device_check.sh

bench-codec: venv proto ## codec speed and bits per token
	$(BIN)/python bench/codec_bench.py

bench-models: venv proto ## model forward times and agreement (needs fetch-models)
	$(BIN)/python bench/model_bench.py

images: venv ## build the cloud, edge and link images with podman, offline (deploy/README.md, "Podman")
	$(BIN)/python -m deploy.podman.images

clean: ## remove the venv and caches (not the model cache)
	rm -rf $(VENV) common/rpc/gen .mypy_cache .ruff_cache .pytest_cache .hypothesis
