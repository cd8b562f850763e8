# writewatch: the two contract commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup build demo test test-core doc lint fmt bench bench-report probe clean

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

demo: setup
	$(CARGO) run --release --example uffd-demo

# All set-up and all tests. Fails if the probe says this kernel should support a feature
# that it does not (so no test can be skipped silently on a capable machine).
test: setup
	$(CARGO) run -q -p writewatch-cli -- probe --require-expected
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps -q

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

clean:
	$(CARGO) clean

# ---------------------------------------------------------------- benchmark report
# `make bench-report`: the fault_latency and cut benches in quick mode (WW_BENCH_QUICK=1,
# under 10 minutes on a 2-vCPU VM), then docs/benchmarks.md + docs/benchmarks-first-write.svg
# from criterion's results. Honours CARGO_TARGET_DIR (default: target).
BENCH_TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)
BENCH_CRITERION = $(BENCH_TARGET_DIR)/criterion

bench-report: setup
	rm -rf $(BENCH_CRITERION)/first_write_seq $(BENCH_CRITERION)/first_write_rand \
	  $(BENCH_CRITERION)/cut_256MiB $(BENCH_CRITERION)/cut_1GiB $(BENCH_CRITERION)/cut_4GiB \
	  $(BENCH_CRITERION)/writewatch-stats
	start=$$(date +%s); \
	WW_BENCH_QUICK=1 CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) $(CARGO) bench -p writewatch --bench fault_latency --bench cut \
	  && python3 scripts/bench-report.py --criterion $(BENCH_CRITERION) --out docs/benchmarks.md \
	       --svg docs/benchmarks-first-write.svg --runtime $$(( $$(date +%s) - start ))
