#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine:
# - nginx from Debian's packages;
# - a real kube-apiserver and etcd, built from the Kubernetes Go modules and
#   cached outside the repo (tools/apiserver/build.sh; about 5 minutes the
#   first time on 2 cores, instant afterwards).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_nginx
echo "nginx: $(find_nginx) ($("$(find_nginx)" -v 2>&1))" >&2
command -v go >/dev/null || { echo "error: Go is needed to build the test API server" >&2; exit 1; }
echo "test API server: $(tools/apiserver/build.sh)" >&2
