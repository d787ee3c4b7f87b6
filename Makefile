# One target per thing CI does, so CI and a person run the same commands.
# `make run` and `make test` are the README's two commands.

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORTICO := target/debug/portico

.PHONY: deps build run test fmt fmt-check lint check-config ci

## deps: what a fresh Debian machine with Rust lacks (pingora-core builds zlib-ng with cmake)
deps:
	@command -v cargo >/dev/null || { echo "portico needs Rust: install it with rustup first" >&2; exit 1; }
	@command -v cmake >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }

build: deps
	cargo build --bin portico --example demo_origins

## run: the demo origins on 127.0.0.1:3001-3003 and portico on conf/portico.yaml (Ctrl-C stops both)
run: build
	@./target/debug/examples/demo_origins & origins=$$!; \
	trap 'kill $$origins 2>/dev/null' EXIT INT TERM; \
	$(PORTICO) -c conf/portico.yaml

## test: every test (unit and integration: the real binary against real servers on loopback)
test: deps
	cargo test --tests

fmt:
	cargo fmt

fmt-check:
	cargo fmt --check

lint: deps
	cargo clippy --all-targets -- -D warnings

## check-config: `portico -t` on every file in conf/
check-config: deps
	cargo build --bin portico
	@for f in conf/*.yaml; do echo "$$f"; $(PORTICO) -t -c "$$f" || exit 1; done

ci: fmt-check lint check-config test
