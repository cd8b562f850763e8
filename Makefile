# writewatch: the two contract commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup build demo test test-core doc lint fmt bench bench-redis bench-report probe clean

all: build

# bindgen (used by the userfaultfd crate's -sys build) needs libclang at build time.
setup:
	@if ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* /usr/lib/*/libclang.so* >/dev/null 2>&1 \
	   || ldconfig -p | grep -qE 'libclang(-[0-9.]+)?\.so'; then \
	  echo "setup: libclang present"; \
	else \
	  echo "setup: libclang missing; installing libclang1 with apt-get"; \
	  if [ "$$(id -u)" != 0 ]; then echo "setup: need root (or run: sudo apt-get install -y libclang1)"; exit 1; fi; \
	  (apt-get install -y -q libclang1 >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q libclang1 >/dev/null)) \
	    && echo "setup: libclang1 installed"; \
	fi

build: setup
	$(CARGO) build --workspace --all-targets

# The object-storage tests (crates/writewatch-checkpoint/tests/object_*.rs) and bench run
# against a real local S3 server, s3s-fs from crates.io, which they start on a loopback port
# and stop themselves. Installed once with cargo (about 8 minutes of compilation on the
# reference machine), then found on PATH or in ~/.cargo/bin and not rebuilt.
S3S_FS_VERSION ?= 0.14.1
# The az:// tests (tests/azurite.rs) run against Azurite, the Azure Blob emulator from npm,
# pinned, installed once into target/azurite with `@azure/storage-blob` (which creates the
# containers) and not reinstalled when present (about 15 s with the npm registry reachable).
# The tests start one server per test binary on a loopback port and stop it themselves.
AZURITE_VERSION ?= 3.35.0
AZURITE_DIR := target/azurite
.PHONY: azurite azurite-test
azurite:
	@if [ -x $(AZURITE_DIR)/node_modules/.bin/azurite-blob ] && [ -d $(AZURITE_DIR)/node_modules/@azure/storage-blob ]; then \
	  echo "azurite: Azurite present"; \
	elif ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then \
	  echo "azurite: node and npm are needed to install Azurite (the Azure Blob emulator the az:// tests run against): install Node.js >= 18 with npm (e.g. apt-get install nodejs npm), then re-run" >&2; exit 1; \
	else \
	  echo "azurite: installing azurite@$(AZURITE_VERSION) into $(AZURITE_DIR) (npm)"; \
	  npm install --no-audit --no-fund --loglevel=error --prefix $(AZURITE_DIR) azurite@$(AZURITE_VERSION) @azure/storage-blob@12 >/dev/null; \
	fi

# Only the az:// tests (they are also part of `make test`).
azurite-test: azurite
	$(CARGO) build -q --workspace --bins --examples
	$(CARGO) test -p writewatch --test azurite

.PHONY: s3-server
s3-server:
	@if command -v s3s-fs >/dev/null 2>&1 || [ -x "$$HOME/.cargo/bin/s3s-fs" ]; then \
	  echo "s3-server: s3s-fs present"; \
	else \
	  echo "s3-server: installing s3s-fs $(S3S_FS_VERSION) (cargo install, a few minutes)"; \
	  $(CARGO) install -q s3s-fs --version $(S3S_FS_VERSION) --features binary --locked; \
	fi

demo: setup
	$(CARGO) run --release --example uffd-demo

# All set-up and all tests. Fails if the probe says this kernel should support a feature
# that it does not (so no test can be skipped silently on a capable machine).
test: setup s3-server azurite
	$(CARGO) run -q -p writewatch-cli -- probe --require-expected
	$(CARGO) build -q --workspace --bins --examples   # tests/demo_dir.rs, demo_s3.rs, azurite.rs run target/debug/examples/uffd-demo and target/debug/writewatch
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc
	$(CARGO) run -q --example kv-checkpoint -- --quick
	$(CARGO) run -q --example arena-checkpoint -- --quick
	$(CARGO) run -q --example fuzz-reset -- --quick
	$(CARGO) run -q --example dirty-rate -- --quick
	$(CARGO) run -q --example cow-fork -- --quick
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --lib -q   # --lib: the CLI binary `writewatch` and the facade library share a doc directory (rustdoc output collision, a race)

doc: setup
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

probe: setup
	$(CARGO) run -q -p writewatch-cli -- probe

bench: setup
	$(CARGO) bench --workspace

# Issue 16: dump Debian's redis-server (>= 1 GiB, under redis-benchmark SET load); installs
# redis-server and redis-tools from the distribution's packages if missing. Needs root.
bench-redis: setup
	@command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || \
	  (apt-get install -y -q redis-server redis-tools >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q redis-server redis-tools >/dev/null))
	$(CARGO) bench -p writewatch-process --bench redis

clean:
	$(CARGO) clean

# ---------------------------------------------------------------- benchmark report
# `make bench-report`: the fault_latency, cut and scaling benches in quick mode (WW_BENCH_QUICK=1,
# about 10 minutes on a 2-vCPU VM), then docs/benchmarks.md + docs/benchmarks-first-write.svg
# from criterion's results, with the scaling bench's tables in their own section. Honours CARGO_TARGET_DIR (default: target).
BENCH_TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)
BENCH_CRITERION = $(BENCH_TARGET_DIR)/criterion

bench-report: setup
	rm -rf $(BENCH_CRITERION)/first_write_seq $(BENCH_CRITERION)/first_write_rand \
	  $(BENCH_CRITERION)/cut_256MiB $(BENCH_CRITERION)/cut_1GiB $(BENCH_CRITERION)/cut_4GiB \
	  $(BENCH_CRITERION)/writewatch-stats
	start=$$(date +%s); \
	WW_BENCH_QUICK=1 CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) $(CARGO) bench -p writewatch --bench fault_latency --bench cut \
	  && WW_BENCH_QUICK=1 CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) $(CARGO) bench -p writewatch --bench scaling \
	       > $(BENCH_TARGET_DIR)/scaling.md \
	  && python3 scripts/bench-report.py --criterion $(BENCH_CRITERION) --out docs/benchmarks.md \
	       --svg docs/benchmarks-first-write.svg --scaling $(BENCH_TARGET_DIR)/scaling.md \
	       --runtime $$(( $$(date +%s) - start ))

# ---------------------------------------------------------------- reliability (docs/reliability.md)
# `make test` already runs the stress binary (tests/stress, a workspace member) in its short
# mode, plus the misbehaviour, fault-injection, model-check and property tests.
.PHONY: stress fuzz miri model loom tsan
FUZZ_SECONDS ?= 120

# Long mode: every suite at acceptance volume (>= 1e6 writes, >= 100 cuts, >= 100 SIGKILLs),
# each under its own watchdog; prints one summary line per suite. About 3 minutes here.
stress: setup
	WW_STRESS=long $(CARGO) test -q -p writewatch-stress --test stress
	$(CARGO) test -q -p writewatch-core --test misbehaviour --test fault_injection --test page_state_model
	PROPTEST_CASES=20000 $(CARGO) test -q -p writewatch-stress --test dirtyset_props --test parsers_fuzz
	$(CARGO) bench -q -p writewatch --bench rollback

# cargo-fuzz on the checkpoint parsers (needs nightly + cargo-fuzz). Without them, runs the
# same harness through proptest for a large bounded number of cases and says so.
fuzz:
	@if $(CARGO) +nightly fuzz --version >/dev/null 2>&1; then \
	  cd crates/writewatch-checkpoint/fuzz && $(CARGO) +nightly fuzz run parsers -- -max_total_time=$(FUZZ_SECONDS); \
	else \
	  echo "fuzz: cargo-fuzz is not available here (needs a nightly toolchain and 'cargo install cargo-fuzz');"; \
	  echo "fuzz: running the same harness (tests/stress/src/parsers.rs) as a proptest with 200000 cases instead"; \
	  PROPTEST_CASES=200000 $(CARGO) test -q -p writewatch-stress --test parsers_fuzz; \
	fi

# Miri on the pure data-structure tests (DirtySet properties, the page-state model).
miri:
	@if $(CARGO) +nightly miri --version >/dev/null 2>&1; then \
	  MIRIFLAGS=-Zmiri-disable-isolation PROPTEST_CASES=8 $(CARGO) +nightly miri test -p writewatch-stress --test dirtyset_props && \
	  $(CARGO) +nightly miri test -p writewatch-core --test page_state_model; \
	else \
	  echo "miri: cannot run here: the nightly toolchain has no miri component (rustup +nightly component add miri needs network access to static.rust-lang.org, which the reference machine does not have)."; \
	  echo "miri: the same tests run natively in 'make test' (dirtyset_props, page_state_model)."; \
	fi

# Exhaustive explicit-state model check of the per-page view protocol (the loom substitute:
# the real View type is private and the engine's races involve the kernel, not only atomics).
model:
	$(CARGO) test -q -p writewatch-core --test page_state_model -- --nocapture
loom: model

# ThreadSanitizer needs nightly with rust-src (-Zbuild-std); says why when it cannot run.
tsan:
	@if rustup component list --toolchain nightly --installed 2>/dev/null | grep -q rust-src; then \
	  RUSTFLAGS=-Zsanitizer=thread $(CARGO) +nightly test -Zbuild-std --target x86_64-unknown-linux-gnu -p writewatch-stress --test dirtyset_props; \
	else \
	  echo "tsan: cannot run here: nightly has no rust-src component (needed for -Zbuild-std) and it cannot be downloaded; use 'make model' (explicit-state model check) instead."; \
	fi
