# dmafile: `make demo` and `make test` work on a fresh Debian 12 machine.
# Downloads and builds are cached under .cache/ (DMAFILE_CACHE) and target/.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export DMAFILE_CACHE := $(CACHE)
export DMAFILE_PYTHON := $(CACHE)/venv/bin/python
CARGO ?= cargo
DEMO_SIZE ?= 256M
DEMO_FILE ?= $(CACHE)/demo/dataset.bin

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include

.PHONY: all setup setup-guest build install demo test test-host test-kmod test-guest test-guest-6.1 test-guest-debug fuzz debug-kernel lint clean

all: build

setup:
	scripts/setup.sh host

# The guest kernel (Debian's 6.12), qemu, virtme-ng and the filesystem tools.
setup-guest:
	scripts/setup.sh guest

build: setup
	$(CARGO) build --release --workspace --locked

# The C ABI: libdmafile.so (soname libdmafile.so.0), dmafile.h and
# dmafile.pc under $(DESTDIR)$(PREFIX) (docs/integration.md, "C").
install:
	$(CARGO) build --release -p dmafile-capi --locked
	scripts/install-capi.sh "$(PREFIX)" "$(LIBDIR)" "$(INCLUDEDIR)"

# Generates a deterministic pseudo-random dataset, streams it through the
# crc32c shader on the default GPU (lavapipe where there is none) and checks
# the result on the CPU.
demo: build
	scripts/demo.sh "$(DEMO_FILE)" "$(DEMO_SIZE)"

test: setup-guest build test-host test-kmod test-guest test-guest-6.1 test-guest-debug

test-host:
	scripts/shaders.sh --check
	$(CARGO) test --release --workspace --locked --no-fail-fast
	scripts/test-independent-crc.sh
	CARGO=$(CARGO) scripts/test-capi.sh
	CARGO=$(CARGO) scripts/test-wgpu.sh
	scripts/package-check.sh
	python3 scripts/module-cycles.py
	$(CARGO) clippy --release --workspace --all-targets --locked -- -D warnings
	CARGO=$(CARGO) scripts/test-validation.sh

# checkpatch --strict and sparse on the kernel module.
test-kmod: setup-guest
	scripts/kmod-check.sh

# Boots the guest and runs tests/guest (TCG; DMAFILE_GUEST_KVM=1 for KVM),
# with a short fuzz run (tests/guest/fuzz.rs).
test-guest: setup-guest
	DMAFILE_FUZZ_SECS=$${DMAFILE_FUZZ_SECS:-10} tests/guest/run.sh

# The module's own tests (no vkms, no CLI streaming) on bookworm's 6.1, the
# oldest kernel the module supports, DKMS install included.
GUEST_6_1_TESTS := query refuse/ ioctl/ content/ coherence/ status/ vgem/ write/ readonly/ \
	noexec cpu-access lifetimes/ races/ dax/ fuzz install/
test-guest-6.1: setup-guest
	DMAFILE_GUEST_KERNEL=6.1 DMAFILE_FUZZ_SECS=$${DMAFILE_FUZZ_SECS:-10} tests/guest/run.sh $(GUEST_6_1_TESTS)

# The same tests and a longer fuzz run under the debug build of the same
# kernel (KASAN, lockdep, kmemleak, DMA-API debug, UBSAN, ...), which the
# first run builds (about 25 CPU-minutes) and caches in /var/cache/dmafile.
test-guest-debug: setup-guest debug-kernel
	DMAFILE_GUEST_KERNEL=debug DMAFILE_FUZZ_SECS=$${DMAFILE_FUZZ_SECS:-60} tests/guest/run.sh

debug-kernel: setup-guest
	scripts/debug-kernel.sh >/dev/null

# The fuzzer alone under the debug kernel, for as long as asked:
#   make fuzz FUZZ_SECS=3600 [FUZZ_SEED=n]
FUZZ_SECS ?= 600
fuzz: setup-guest debug-kernel
	DMAFILE_GUEST_KERNEL=debug DMAFILE_FUZZ_SECS=$(FUZZ_SECS) $(if $(FUZZ_SEED),DMAFILE_FUZZ_SEED=$(FUZZ_SEED)) \
		DMAFILE_GUEST_TIMEOUT=$$(( $(FUZZ_SECS) + 1200 )) tests/guest/run.sh fuzz

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all -- --check

clean:
	$(CARGO) clean
