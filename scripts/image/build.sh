#!/usr/bin/env bash
# Image step (build stage): the release binary of wicket, installed into
# OUT (default /out). Runs in the rust image from the repository root.
#
#   build.sh [OUT]
#
# CI builds wicket with `cargo test` instead (debug); this is the same
# command with --release.
set -euo pipefail
out=${1:-/out}
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin wicket
mkdir -p "$out"
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/wicket" "$out/wicket"
# The release profile keeps line tables for profiling (about 100 MB); the
# image keeps the symbols only.
strip --strip-debug "$out/wicket"
"$out/wicket" --version
