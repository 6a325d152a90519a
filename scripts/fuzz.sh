#!/usr/bin/env bash
# A long run of the injection properties (tests/injection.rs): random and
# hostile strings in every field an object can set, through build and render,
# plus nginx -t on configs built from accepted input; then the fast YAML
# reader against serde_yaml on CASES x 10 generated texts per property
# (src/source/yaml_fast.rs). Not part of CI's timed path.
# Usage: scripts/fuzz.sh [CASES]   (default 20000 per property; the
# nginx -t property runs a quarter as many, since each case starts nginx -t)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_nginx
cases=${1:-20000}
start=$SECONDS
PROPTEST_CASES=$cases cargo test --release --locked --test injection -- --test-threads=2
# The YAML properties run 2,000-4,000 cases at x1.
WICKET_YAML_FUZZ=$((cases * 10 / 4000 + 1)) cargo test --release --locked --lib yaml_fast -- --test-threads=2
echo "fuzz: $cases cases per property passed in $((SECONDS - start))s"
