# kasbah: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (scripts/setup.sh is idempotent).

SHELL := /bin/bash
export XDG_RUNTIME_DIR ?= /tmp/kasbah-xdg-$(shell id -u)

.PHONY: setup demo test lint bench bench-minilm bench-gpu

setup:
	@mkdir -p -m 0700 "$(XDG_RUNTIME_DIR)"
	@./scripts/setup.sh

## Build the CLI and guests; run the hello pipeline and the hostile suite.
demo: setup
	./scripts/demo.sh

## Every test of the workspace (guest components are built once, by the tests).
test: setup
	cargo test

## Formatting and lints, as CI checks them.
lint:
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

## Benchmarks (release build, several minutes the first time).
bench: setup
	cargo bench -p kasbah-tests --bench overhead

## all-MiniLM-L6-v2 through kasbah vs sentence-transformers on torch CPU (release build;
## installs sentence-transformers into a venv the first time unless MINILM_PYTHON is set).
bench-minilm: setup
	./scripts/bench-minilm.sh

## The GPU benches as one script for a machine with a real GPU (lavapipe otherwise): the adapters
## wgpu sees, MiniLM at batches 1/32/256 (first vs warm runs, fixed cost), the small host-call bench.
## GPU=NAME picks the adapter by a substring of its name.
bench-gpu: setup
	./scripts/gpu-bench.sh $(GPU)
