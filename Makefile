# dmafile: `make demo` and `make test` work on a fresh Debian 12 machine.
# Downloads and builds are cached under .cache/ (DMAFILE_CACHE) and target/.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export DMAFILE_CACHE := $(CACHE)
export DMAFILE_PYTHON := $(CACHE)/venv/bin/python
CARGO ?= cargo
DEMO_SIZE ?= 256M
DEMO_FILE ?= $(CACHE)/demo/dataset.bin

.PHONY: all setup build demo test test-host lint clean

all: build

setup:
	scripts/setup.sh host

build: setup
	$(CARGO) build --release --workspace --locked

# Generates a deterministic pseudo-random dataset, streams it through the
# crc32c shader on the default GPU (lavapipe where there is none) and checks
# the result on the CPU.
demo: build
	scripts/demo.sh "$(DEMO_FILE)" "$(DEMO_SIZE)"

test: build test-host

test-host:
	$(CARGO) test --release --workspace --locked --no-fail-fast
	scripts/test-independent-crc.sh

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all -- --check

clean:
	$(CARGO) clean
