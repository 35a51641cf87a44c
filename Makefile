# fulcrum: `make demo` runs the demo, `make test` runs everything CI runs.
# Builds share one target dir outside the clone so that CI and reruns stay incremental.
CARGO_TARGET_DIR ?= $(HOME)/.cache/fulcrum-target
export CARGO_TARGET_DIR
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN_DEBUG := $(CARGO_TARGET_DIR)/debug/fulcrum
BIN_RELEASE := $(CARGO_TARGET_DIR)/release/fulcrum

.PHONY: all setup test-tools bench-tools soak-tools build release demo test lint audit check-conf check-unit bench bench-select \
	soak cargo-deb cargo-deny deb package-test

all: build

# What building needs beyond Rust: cmake (pingora-core's zlib-ng build).
setup:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }

# What the tests use beyond Rust: promtool (Debian's prometheus package), curl, systemd-analyze,
# chromium (the status page, rendered headless), for the package test man (systemd-analyze
# verify looks the unit's man page up), redis-server (fleet-wide rate limits; tests/edge.rs
# starts its own on an ephemeral port) and pebble (the ACME server tests/acme.rs runs on
# 127.0.0.1).
test-tools:
	@command -v promtool >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 \
	  && command -v systemd-analyze >/dev/null 2>&1 && command -v man >/dev/null 2>&1 \
	  && command -v redis-server >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 \
	  && command -v pebble >/dev/null 2>&1 || { \
	  echo "installing promtool, curl, systemd-analyze, man, redis-server, chromium and pebble"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus curl systemd man-db redis-server chromium pebble; }

# cargo-deb, pinned (the package test packages the debug build, which later versions may refuse).
CARGO_DEB_VERSION := 3.8.0
cargo-deb:
	@cargo deb --version 2>/dev/null | grep -qx "cargo-deb $(CARGO_DEB_VERSION)" || { \
	  echo "installing cargo-deb $(CARGO_DEB_VERSION)"; \
	  cargo install cargo-deb --version $(CARGO_DEB_VERSION) --locked; }

build: setup
	cargo build

release: setup
	cargo build --release

demo: release
	$(BIN_RELEASE) demo

# The Debian package of the release build, in $(CARGO_TARGET_DIR)/debian/: the binary, the unit,
# /etc/fulcrum/fulcrum.yaml, logrotate, sysusers/tmpfiles, the man page, completions and the
# schema (generated from the binary by debian/assets.sh).
deb: release cargo-deb
	debian/assets.sh $(BIN_RELEASE) $(CARGO_TARGET_DIR)/release/pkg
	cargo deb --no-build --locked -o $(CARGO_TARGET_DIR)/debian/

# The package of the debug build installed into a throwaway root (dpkg --root), checked,
# upgraded, removed and purged: see tests/package.sh. About 5 s.
package-test: build cargo-deb test-tools
	tests/package.sh

# cargo-deny, pinned like cargo-deb (deny.toml is written for this version's format).
CARGO_DENY_VERSION := 0.20.2
cargo-deny:
	@cargo deny --version 2>/dev/null | grep -qx "cargo-deny $(CARGO_DENY_VERSION)" || { \
	  echo "installing cargo-deny $(CARGO_DENY_VERSION)"; \
	  cargo install cargo-deny --version $(CARGO_DENY_VERSION) --locked; }

# Formatting, clippy (with the [lints] table of Cargo.toml and clippy.toml), and the dependency
# graph: licences, duplicate versions, sources (deny.toml). Advisories: `make audit`.
lint: setup cargo-deny
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo deny --offline check licenses bans sources

# The RustSec advisories (fetches the database from GitHub: not in CI, whose machine reaches
# only package registries).
audit: cargo-deny
	cargo deny check advisories

check-conf: build
	@for f in conf/*.yaml; do $(BIN_DEBUG) -c $$f -t || exit 1; done

# The unit file: `systemd-analyze verify` clean and security exposure at most 1.5 (15 of 100),
# with ExecStart pointing at the binary just built (the package test checks the installed one,
# man page included).
check-unit: build test-tools
	@d=$$(mktemp -d) && sed "s#/usr/bin/fulcrum#$(BIN_DEBUG)#g" systemd/fulcrum.service > $$d/fulcrum.service \
	  && systemd-analyze verify --man=no $$d/fulcrum.service \
	  && systemd-analyze security --offline=true --threshold=15 $$d/fulcrum.service | tail -1 \
	  && rm -r $$d

test: lint check-conf check-unit test-tools package-test
	cargo test --all-targets --no-fail-fast

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
