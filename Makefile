# llm-mesh. `make setup` installs everything (idempotent, cached); `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
SLITHER_VENV := .venv-slither
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
# kubo (`ipfs`): build/bin/ipfs, linked by `make kubo` to an installed kubo or the pinned build.
export PATH := $(CURDIR)/build/bin:$(PATH)
# Slither builds into its own directory so it never races or cleans forge's normal output.
SLITHER_OUT := build/slither

.PHONY: help setup contracts test test-forge test-py slither lint gas snapshot devnet demo clean

help:
	@echo "make demo       the whole network end to end: chain, IPFS, the real model, three nodes, router, a user"
	@echo "make setup      install npm tools, the Python venv and slither (idempotent)"
	@echo "make test       forge tests, pytest, slither and the linters"
	@echo "make contracts  compile and refresh the committed artifacts in chain/artifacts"
	@echo "make gas        print settlement gas for batches of 1, 10 and 50 receipts"
	@echo "make snapshot   rewrite the committed gas snapshot (.gas-snapshot)"
	@echo "make devnet     a local chain with the contracts deployed and test accounts funded"
	@echo "                (NETWORK=1: the demo's whole network, nodes and router too, left running)"
	@echo "make kubo       put kubo (ipfs) in build/bin: an installed one, else the pinned build (cached)"
	@echo "make bench      benchmarks with ratios against their anchors (storage: verify, fetch; node: serving; payment; router)"

setup: node_modules/.installed $(VENV)/.installed $(SLITHER_VENV)/.installed

# `npm install` with the committed lock, not `npm ci`: forge and anvil list prebuilt binaries for
# every platform as optional dependencies, and a registry that lacks some of them leaves those out
# of the lock, which `npm ci` rejects. .ci/run fails if the lock file changes.
node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --prefer-offline
	@touch $@

# llama-cpp-python is built from source (PyPI has no Linux wheel) into a wheel directory of our own,
# keyed by version and build flags, so a wheel built with other flags (pip's own cache keeps one per
# source, whatever the flags) is never reused. On x86 the build leaves out llama.cpp's AMX kernels:
# on CPUs with AMX (Sapphire Rapids and later) they segfault in the first decode of a Q4_K model
# (llama.cpp issue 20824, reproduced here with Gemma 3 270M Q4_K_M); the AVX2/AVX-512 repacked
# kernels run instead.
LLAMA_CPP_VERSION := 0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CPP_FLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
LLAMA_CPP_WHEELS := $(HOME)/.cache/llm-mesh/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)$(if $(LLAMA_CPP_FLAGS),-noamx)

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	@if ! ls $(LLAMA_CPP_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  echo "setup: building llama-cpp-python $(LLAMA_CPP_VERSION) from source (~5 min on 2 cores, once)"; \
	  CMAKE_ARGS='-DCMAKE_C_FLAGS="$(LLAMA_CPP_FLAGS)" -DCMAKE_CXX_FLAGS="$(LLAMA_CPP_FLAGS)"' \
	    $(VENV)/bin/pip wheel --quiet --no-deps --no-cache-dir llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(LLAMA_CPP_WHEELS); \
	fi
	$(VENV)/bin/pip install --quiet --find-links $(LLAMA_CPP_WHEELS) -e '.[test]'
	@touch $@

# slither pins web3 6, the project needs web3 8: it gets a venv of its own.
$(SLITHER_VENV)/.installed: tools/slither-requirements.txt
	@test -x $(SLITHER_VENV)/bin/python || $(PYTHON) -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/pip install --quiet -r tools/slither-requirements.txt
	@touch $@

contracts: setup
	forge build
	$(VENV)/bin/python tools/export_artifacts.py

test: setup test-forge test-py slither lint

test-forge: node_modules/.installed
	forge test
	forge snapshot --check --match-path $(GAS_TESTS)

test-py: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

slither: node_modules/.installed $(SLITHER_VENV)/.installed
	@rm -rf $(SLITHER_OUT)  # stale build-info files would make slither read old source maps
	FOUNDRY_OUT=$(SLITHER_OUT)/out FOUNDRY_CACHE_PATH=$(SLITHER_OUT)/cache \
	  forge build --build-info --skip './contracts/test/**' >/dev/null
	$(SLITHER_VENV)/bin/slither . --config-file slither.config.json --foundry-out-directory $(SLITHER_OUT)/out

lint: $(VENV)/.installed node_modules/.installed
	forge fmt --check contracts
	forge lint contracts/src
	$(VENV)/bin/ruff check chain storage protocol node router scripts tests tools bench
	$(VENV)/bin/ruff format --check chain storage protocol node router scripts tests tools bench

GAS_TESTS := contracts/test/Gas.t.sol

gas: node_modules/.installed
	forge test --match-path $(GAS_TESTS) -vv

snapshot: node_modules/.installed
	forge snapshot --match-path $(GAS_TESTS)

devnet: setup
ifeq ($(NETWORK),1)
	$(VENV)/bin/python -m scripts.demo --keep-running
else
	$(VENV)/bin/python -m scripts.devnet
endif

demo: setup
	$(VENV)/bin/python -m scripts.demo

clean:
	rm -rf build crytic-export .pytest_cache

# kubo: an installed `ipfs` when there is one, else kubo at the version pinned in tools/kubo/go.mod,
# built once with Go (several minutes) and cached in ~/.cache/llm-mesh/kubo-<version>/ for later runs.
.PHONY: kubo bench bench-storage bench-node bench-payment bench-router
KUBO := build/bin/ipfs
setup: kubo
kubo: $(KUBO)
$(KUBO): tools/kubo/go.mod tools/kubo/go.sum tools/kubo/build.sh
	tools/kubo/build.sh $@

# Benchmarks print ratios against their anchors (measured side by side in one run).
bench: bench-storage bench-node bench-payment bench-router
bench-storage: $(VENV)/.installed $(KUBO)
	$(VENV)/bin/python bench/storage_bench.py
bench-node: $(VENV)/.installed
	$(VENV)/bin/python bench/node_bench.py
bench-payment: $(VENV)/.installed
	$(VENV)/bin/python -m bench.payment_bench
bench-router: $(VENV)/.installed $(KUBO)
	$(VENV)/bin/python -m bench.router_bench
