# fulcrum: `make demo` runs the demo, `make test` runs everything CI runs.
# Builds share one target dir outside the clone so that CI and reruns stay incremental.
CARGO_TARGET_DIR ?= $(HOME)/.cache/fulcrum-target
export CARGO_TARGET_DIR
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN_DEBUG := $(CARGO_TARGET_DIR)/debug/fulcrum
BIN_RELEASE := $(CARGO_TARGET_DIR)/release/fulcrum

.PHONY: all setup test-tools bench-tools soak-tools build release demo test lint audit check-conf check-unit bench bench-select \
	soak cargo-deb cargo-deny deb package-test callgrind-tools callgrind vendor-test

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
	# --no-deps: fulcrum only, not the vendored Pingora crates (vendor/PATCHES.md)
	cargo clippy --all-targets --no-deps -- -D warnings
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

test: lint check-conf check-unit test-tools package-test vendor-test
	cargo test --all-targets --no-fail-fast

bench-select: setup
	cargo bench --bench select --bench affinity

# What the load benchmark compares against: Debian's nginx and HAProxy, and its clients: wrk,
# openssl (the certificate for the TLS runs, and s_time for the TLS handshakes) and h2load
# (nghttp2-client, HTTP/2 over TLS).
bench-tools:
	@command -v nginx >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 || { \
	  echo "installing nginx, haproxy, wrk, openssl and nghttp2-client"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx haproxy wrk openssl nghttp2-client; }

# The load benchmark against nginx and HAProxy (about 20 minutes), then the micro-benchmarks.
bench: release bench-tools
	python3 benches/load.py $(BIN_RELEASE)
	$(MAKE) bench-select

# What the instruction count needs: valgrind, h2load (nghttp2-client) and nginx (the backends).
callgrind-tools:
	@command -v valgrind >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || { \
	  echo "installing valgrind, nghttp2-client and nginx"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq valgrind nghttp2-client nginx; }

# User-space instructions per proxied keep-alive request (callgrind, release build): N and 2N
# requests, the difference over N, so start-up and warm-up cancel. Robust to machine load,
# unlike CPU time; the measure behind vendor/PATCHES.md. About 2 minutes.
# `make callgrind CALLGRIND_ARGS="--requests 8000 --repeat 3"` for more.
callgrind: release callgrind-tools
	python3 benches/callgrind.py $(BIN_RELEASE) $(CALLGRIND_ARGS)

# The vendored Pingora crates' own unit tests (vendor/PATCHES.md), run against each other with
# fulcrum's TLS backend (rustls) in vendor/'s own workspace and lockfile (Pingora's published
# one, plus its dev-dependencies). Skipped: the 25 tests that reach the Internet (1.1.1.1,
# one.one.one.one, a black-hole address) or read tests/keys/, which the crates.io package does
# not ship, and `test_rx_timestamp`, which waits for the kernel with a 100 us sleep and failed
# once under load. Part of `make test`: building their dev-dependencies costs about 7
# CPU-minutes once (incremental after that); the run itself takes about 30 s.
VENDOR_TEST_SKIP := \
	connectors::http::tests::test_connect_h1 connectors::http::tests::test_connect_h2 \
	connectors::http::tests::test_connect_h2_fallback_h1_reuse connectors::http::tests::test_connect_prefer_h1 \
	connectors::http::tests::test_custom_client_custom_upstream \
	connectors::http::tests::test_custom_client_non_custom_upstream \
	connectors::http::v1::tests::test_connect connectors::http::v1::tests::test_connect_tls \
	connectors::http::v1::tests::test_reuse_rejects_fd_mismatch \
	connectors::http::v2::tests::test_connect_h1 connectors::http::v2::tests::test_connect_h2 \
	connectors::http::v2::tests::test_h2_multiple_stream connectors::http::v2::tests::test_h2_reuse_rejects_fd_mismatch \
	connectors::http::v2::tests::test_h2_single_stream connectors::l4::tests::test_conn_error_addr_not_avail \
	connectors::l4::tests::test_conn_timeout connectors::tests::test_conn_timeout \
	protocols::l4::stream::tests::test_rx_timestamp \
	connectors::tests::test_conn_timeout_with_offload connectors::tests::test_connect_tls \
	connectors::tests::test_do_connect_with_total_timeout connectors::tests::test_tls_connect_timeout_supersedes_total \
	listeners::test::test_listen_tls listeners::test::test_listen_tls_with_offload \
	listeners::tls::rustls::tests::test_from_server_config_handshake \
	protocols::tls::rustls::server::tests::test_handshake_complete_callback
vendor-test: setup
	cd vendor && cargo test --locked --lib -p pingora-core -p pingora-http -p pingora-proxy --features pingora-proxy/rustls \
	  -- --exact $(foreach t,$(VENDOR_TEST_SKIP),--skip $(t))

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
