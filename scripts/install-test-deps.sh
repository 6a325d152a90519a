#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: nginx from
# Debian's packages. Idempotent: does nothing when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_nginx
echo "nginx: $(find_nginx) ($("$(find_nginx)" -v 2>&1))" >&2
