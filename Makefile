# fulcrum: `make demo` runs the demo, `make test` runs everything CI runs.
# Builds share one target dir outside the clone so that CI and reruns stay incremental.
CARGO_TARGET_DIR ?= $(HOME)/.cache/fulcrum-target
export CARGO_TARGET_DIR
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN_DEBUG := $(CARGO_TARGET_DIR)/debug/fulcrum
BIN_RELEASE := $(CARGO_TARGET_DIR)/release/fulcrum

.PHONY: all setup test-tools bench-tools soak-tools build release demo test lint check-conf check-unit bench bench-select soak

all: build

# What building needs beyond Rust: cmake (pingora-core's zlib-ng build).
setup:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }

# What the tests use beyond Rust: promtool (Debian's prometheus package), curl, systemd-analyze.
test-tools:
	@command -v promtool >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 \
	  && command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "installing promtool, curl and systemd-analyze"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq prometheus curl systemd; }

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

# The unit file: `systemd-analyze verify` clean and security exposure at most 2.0 (20 of 100),
# with ExecStart pointing at the binary just built.
check-unit: build test-tools
	@d=$$(mktemp -d) && sed "s#/usr/local/bin/fulcrum#$(BIN_DEBUG)#g" systemd/fulcrum.service > $$d/fulcrum.service \
	  && systemd-analyze verify $$d/fulcrum.service \
	  && systemd-analyze security --offline=true --threshold=20 $$d/fulcrum.service | tail -1 \
	  && rm -r $$d

test: lint check-conf check-unit test-tools
	cargo test --all-targets

bench-select: setup
	cargo bench --bench select --bench affinity

# What the load benchmark compares against: Debian's nginx and HAProxy, and wrk (openssl makes
# the certificate for the idle TLS connections).
bench-tools:
	@command -v nginx >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || { \
	  echo "installing nginx, haproxy, wrk and openssl"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx haproxy wrk openssl; }

# The load benchmark against nginx and HAProxy (about 8 minutes), then the micro-benchmarks.
bench: release bench-tools
	python3 benches/load.py $(BIN_RELEASE)
	$(MAKE) bench-select

# What the soak needs: Python 3 (standard library only; its backends and clients are Python).
soak-tools:
	@command -v python3 >/dev/null 2>&1 || { \
	  echo "installing python3"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3; }

# The soak (not in CI): 1,000 SIGHUP reloads, a backend killed and restarted every few seconds,
# a slow-client swarm and 100 graceful upgrades, all under load (about 14 minutes, loopback
# only, every phase bounded). Fails on any failed request or RSS that keeps growing.
# `make soak SOAK_ARGS=--quick` runs a 2-minute version.
soak: release soak-tools
	python3 benches/soak.py $(BIN_RELEASE) $(SOAK_ARGS)
