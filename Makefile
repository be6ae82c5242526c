# dmafile: `make demo` and `make test` work on a fresh Debian 12 machine.
# Downloads and builds are cached under .cache/ (DMAFILE_CACHE) and target/.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export DMAFILE_CACHE := $(CACHE)
export DMAFILE_PYTHON := $(CACHE)/venv/bin/python
CARGO ?= cargo
DEMO_SIZE ?= 256M
DEMO_FILE ?= $(CACHE)/demo/dataset.bin

.PHONY: all setup setup-guest build demo test test-host test-kmod test-guest lint clean

all: build

setup:
	scripts/setup.sh host

# The guest kernel (Debian's 6.12), qemu, virtme-ng and the filesystem tools.
setup-guest:
	scripts/setup.sh guest

build: setup
	$(CARGO) build --release --workspace --locked

# Generates a deterministic pseudo-random dataset, streams it through the
# crc32c shader on the default GPU (lavapipe where there is none) and checks
# the result on the CPU.
demo: build
	scripts/demo.sh "$(DEMO_FILE)" "$(DEMO_SIZE)"

test: setup-guest build test-host test-kmod test-guest

test-host:
	$(CARGO) test --release --workspace --locked --no-fail-fast
	scripts/test-independent-crc.sh

# checkpatch --strict and sparse on the kernel module.
test-kmod: setup-guest
	scripts/kmod-check.sh

# Boots the guest and runs tests/guest (TCG; DMAFILE_GUEST_KVM=1 for KVM).
test-guest: setup-guest
	tests/guest/run.sh

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all -- --check

clean:
	$(CARGO) clean
