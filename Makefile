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
