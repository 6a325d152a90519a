# The two commands: `make demo` runs the demo, `make test` runs every test.
# Both install what they need on a fresh Debian machine.

.PHONY: demo test lint ci

demo:
	scripts/demo.sh

test:
	scripts/install-test-deps.sh
	cargo test --locked

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

ci: lint test
