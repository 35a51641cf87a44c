# fulcrum: `make demo` runs the demo, `make test` runs everything CI runs.
# Builds share one target dir outside the clone so that CI and reruns stay incremental.
CARGO_TARGET_DIR ?= $(HOME)/.cache/fulcrum-target
export CARGO_TARGET_DIR
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN_DEBUG := $(CARGO_TARGET_DIR)/debug/fulcrum
BIN_RELEASE := $(CARGO_TARGET_DIR)/release/fulcrum

.PHONY: all setup test-tools build release demo test lint check-conf bench bench-select

all: build

# What building needs beyond Rust: cmake (pingora-core's zlib-ng build).
setup:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }

# What the tests use beyond Rust: promtool (Debian's prometheus package) and curl.
test-tools:
	@command -v promtool >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 || { \
	  echo "installing promtool and curl"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq prometheus curl; }

build: setup
	cargo build

release: setup
	cargo build --release

demo: release
	$(BIN_RELEASE) demo

lint: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

check-conf: build
	@for f in conf/*.yaml; do $(BIN_DEBUG) -c $$f -t || exit 1; done

test: lint check-conf test-tools
	cargo test --all-targets

bench-select: setup
	cargo bench --bench select

bench: bench-select
